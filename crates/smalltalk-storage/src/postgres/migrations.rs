//! The PostgreSQL schema's migrations (see `crate::compat` for what
//! `readable_from` promises).

use crate::compat::Migration;

/// Migrations in order; never edit a released entry, append a new one.
pub(super) const MIGRATIONS: &[Migration] = &[
    // 1: sessions, their messages, key-value entries.
    Migration {
        sql: r#"CREATE TABLE sessions (
        id            TEXT COLLATE "C" PRIMARY KEY,
        state         TEXT NOT NULL,
        version       BIGINT NOT NULL,
        created_at    BIGINT NOT NULL,
        updated_at    BIGINT NOT NULL,
        expires_at    BIGINT NOT NULL,
        message_count BIGINT NOT NULL,
        message_bytes BIGINT NOT NULL,
        header        BYTEA NOT NULL
    );
    CREATE INDEX sessions_by_created ON sessions (created_at, id);
    CREATE INDEX sessions_by_state ON sessions (state, created_at, id);
    CREATE INDEX sessions_by_expiry ON sessions (expires_at);
    CREATE TABLE messages (
        session_id TEXT COLLATE "C" NOT NULL,
        seq        BIGINT NOT NULL,
        meta       BYTEA NOT NULL,
        content    BYTEA NOT NULL,
        PRIMARY KEY (session_id, seq)
    );
    CREATE TABLE kv (
        key        TEXT COLLATE "C" PRIMARY KEY,
        value      BYTEA NOT NULL,
        updated_at BIGINT NOT NULL,
        expires_at BIGINT
    );
    CREATE INDEX kv_by_updated ON kv (updated_at);
    CREATE INDEX kv_by_expiry ON kv (expires_at) WHERE expires_at IS NOT NULL;"#,
        readable_from: 1,
    },
    // 2: the event log, its head (the newest position ever assigned; its
    //    row lock orders appenders, so positions follow commit order) and
    //    subscriber cursors.
    Migration {
        sql: r#"CREATE TABLE event_log_head (
        id   INTEGER PRIMARY KEY CHECK (id = 1),
        last BIGINT NOT NULL
    );
    INSERT INTO event_log_head (id, last) VALUES (1, 0);
    CREATE TABLE events (
        position        BIGINT PRIMARY KEY,
        event_id        TEXT COLLATE "C" NOT NULL,
        topic           TEXT COLLATE "C" NOT NULL,
        event_type      TEXT NOT NULL,
        publisher       TEXT NOT NULL,
        priority        TEXT NOT NULL,
        session_id      TEXT COLLATE "C",
        conversation_id TEXT COLLATE "C",
        timestamp       BIGINT NOT NULL,
        body            BYTEA NOT NULL
    );
    CREATE INDEX events_by_time ON events (timestamp);
    CREATE TABLE event_cursors (
        subscriber TEXT COLLATE "C" PRIMARY KEY,
        position   BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );"#,
        readable_from: 2,
    },
    // 3: every append notifies listeners of the new newest position, on a
    //    channel per schema; delivered at commit, so never early.
    Migration {
        sql: r#"CREATE FUNCTION smalltalk_notify_events() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('smalltalk_events_' || current_schema(), NEW.last::text);
        RETURN NEW;
    END
    $$;
    CREATE TRIGGER event_log_head_notify AFTER UPDATE ON event_log_head
        FOR EACH ROW EXECUTE FUNCTION smalltalk_notify_events();"#,
        readable_from: 3,
    },
    // 4: how far the log was while the subscriber was there (NULL for
    //    cursors stored before: read as their position).
    Migration {
        sql: r#"ALTER TABLE event_cursors ADD COLUMN live_until BIGINT;"#,
        readable_from: 4,
    },
    // 5: versioned records: the revision counter (its row lock orders
    //    writers, so revisions follow commit order) and compaction point,
    //    one row per version of a key, each key's latest version (its
    //    head), leases; every new revision notifies listeners.
    Migration {
        sql: r#"CREATE TABLE state_meta (
        id               INTEGER PRIMARY KEY CHECK (id = 1),
        revision         BIGINT NOT NULL,
        compact_revision BIGINT NOT NULL,
        last_lease       BIGINT NOT NULL
    );
    INSERT INTO state_meta (id, revision, compact_revision, last_lease) VALUES (1, 0, 0, 0);
    CREATE TABLE state_versions (
        key             TEXT COLLATE "C" NOT NULL,
        revision        BIGINT NOT NULL,
        kind            TEXT NOT NULL,
        value           BYTEA,
        create_revision BIGINT NOT NULL,
        version         BIGINT NOT NULL,
        lease           BIGINT,
        author          TEXT,
        timestamp       BIGINT NOT NULL,
        PRIMARY KEY (key, revision)
    );
    CREATE INDEX state_versions_by_revision ON state_versions (revision, key);
    CREATE TABLE state_keys (
        key             TEXT COLLATE "C" PRIMARY KEY,
        live            BOOLEAN NOT NULL,
        mod_revision    BIGINT NOT NULL,
        create_revision BIGINT NOT NULL,
        version         BIGINT NOT NULL,
        lease           BIGINT,
        trimmed_below   BIGINT
    );
    CREATE INDEX state_keys_by_lease ON state_keys (lease) WHERE lease IS NOT NULL;
    CREATE TABLE state_leases (
        id         BIGINT PRIMARY KEY,
        ttl        BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE FUNCTION smalltalk_notify_state() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.revision <> OLD.revision THEN
            PERFORM pg_notify('smalltalk_state_' || current_schema(), NEW.revision::text);
        END IF;
        RETURN NEW;
    END
    $$;
    CREATE TRIGGER state_meta_notify AFTER UPDATE ON state_meta
        FOR EACH ROW EXECUTE FUNCTION smalltalk_notify_state();"#,
        readable_from: 5,
    },
    // 6: what imports brought in (`smalltalk import`), keyed by the id
    //    the record had where it came from, so running an import again
    //    brings in nothing twice. Additive: older releases never read it.
    Migration {
        sql: r#"CREATE TABLE imports (
        kind        TEXT COLLATE "C" NOT NULL,
        original_id TEXT COLLATE "C" NOT NULL,
        target_id   TEXT COLLATE "C" NOT NULL,
        source      TEXT NOT NULL,
        imported_at BIGINT NOT NULL,
        PRIMARY KEY (kind, original_id)
    );"#,
        readable_from: 5,
    },
];
