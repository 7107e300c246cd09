//! The SQLite schema's migrations (see `crate::compat` for what
//! `readable_from` promises).

use crate::compat::Migration;

/// Migrations in order; `PRAGMA user_version` records how many ran. Never
/// edit a released entry: append a new one.
///
/// The tables are ordinary rowid tables, not `WITHOUT ROWID`: rows are
/// often over 1 KB (message content, headers with agent state), and a
/// `WITHOUT ROWID` b-tree spills such rows into overflow pages, which made a
/// conversation of 1 KB messages take 4.6 times its content on disk.
pub(super) const MIGRATIONS: &[Migration] = &[
    // 1: sessions, their messages, key-value entries.
    Migration {
        sql: "CREATE TABLE sessions (
        id            TEXT PRIMARY KEY NOT NULL,
        state         TEXT NOT NULL,
        version       INTEGER NOT NULL,
        created_at    INTEGER NOT NULL,
        updated_at    INTEGER NOT NULL,
        expires_at    INTEGER NOT NULL,
        message_count INTEGER NOT NULL,
        message_bytes INTEGER NOT NULL,
        header        BLOB NOT NULL
     );
     CREATE INDEX sessions_by_created ON sessions (created_at, id);
     CREATE INDEX sessions_by_state ON sessions (state, created_at, id);
     CREATE INDEX sessions_by_expiry ON sessions (expires_at);
     CREATE TABLE messages (
        session_id TEXT NOT NULL,
        seq        INTEGER NOT NULL,
        meta       BLOB NOT NULL,
        content    BLOB NOT NULL,
        PRIMARY KEY (session_id, seq)
     );
     CREATE TABLE kv (
        key        TEXT PRIMARY KEY NOT NULL,
        value      BLOB NOT NULL,
        updated_at INTEGER NOT NULL,
        expires_at INTEGER
     );
     CREATE INDEX kv_by_updated ON kv (updated_at);
     CREATE INDEX kv_by_expiry ON kv (expires_at) WHERE expires_at IS NOT NULL;",
        readable_from: 1,
    },
    // 2: the event log, its head (the newest position ever assigned) and
    //    subscriber cursors.
    Migration {
        sql: "CREATE TABLE event_log_head (
        id   INTEGER PRIMARY KEY CHECK (id = 1),
        last INTEGER NOT NULL
     );
     INSERT INTO event_log_head (id, last) VALUES (1, 0);
     CREATE TABLE events (
        position        INTEGER PRIMARY KEY,
        event_id        TEXT NOT NULL,
        topic           TEXT NOT NULL,
        event_type      TEXT NOT NULL,
        publisher       TEXT NOT NULL,
        priority        TEXT NOT NULL,
        session_id      TEXT,
        conversation_id TEXT,
        timestamp       INTEGER NOT NULL,
        body            BLOB NOT NULL
     );
     CREATE INDEX events_by_time ON events (timestamp);
     CREATE TABLE event_cursors (
        subscriber TEXT PRIMARY KEY NOT NULL,
        position   INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
     );",
        readable_from: 2,
    },
    // 3: how far the log was while the subscriber was there (NULL for
    //    cursors stored before: read as their position).
    Migration {
        sql: "ALTER TABLE event_cursors ADD COLUMN live_until INTEGER;",
        readable_from: 3,
    },
    // 4: versioned records: the revision counter and compaction point, one
    //    row per version of a key, each key's latest version (its head), and
    //    leases.
    Migration {
        sql: "CREATE TABLE state_meta (
        id               INTEGER PRIMARY KEY CHECK (id = 1),
        revision         INTEGER NOT NULL,
        compact_revision INTEGER NOT NULL,
        last_lease       INTEGER NOT NULL
     );
     INSERT INTO state_meta (id, revision, compact_revision, last_lease) VALUES (1, 0, 0, 0);
     CREATE TABLE state_versions (
        key             TEXT NOT NULL,
        revision        INTEGER NOT NULL,
        kind            TEXT NOT NULL,
        value           BLOB,
        create_revision INTEGER NOT NULL,
        version         INTEGER NOT NULL,
        lease           INTEGER,
        author          TEXT,
        timestamp       INTEGER NOT NULL,
        PRIMARY KEY (key, revision)
     );
     CREATE INDEX state_versions_by_revision ON state_versions (revision, key);
     CREATE TABLE state_keys (
        key             TEXT PRIMARY KEY NOT NULL,
        live            INTEGER NOT NULL,
        mod_revision    INTEGER NOT NULL,
        create_revision INTEGER NOT NULL,
        version         INTEGER NOT NULL,
        lease           INTEGER,
        trimmed_below   INTEGER
     );
     CREATE INDEX state_keys_by_lease ON state_keys (lease) WHERE lease IS NOT NULL;
     CREATE TABLE state_leases (
        id         INTEGER PRIMARY KEY,
        ttl        INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
     );",
        readable_from: 4,
    },
    // 5: what imports brought in (`smalltalk import`), keyed by the id
    //    the record had where it came from, so running an import again
    //    brings in nothing twice. Additive: older releases never read it.
    Migration {
        sql: "CREATE TABLE imports (
        kind        TEXT NOT NULL,
        original_id TEXT NOT NULL,
        target_id   TEXT NOT NULL,
        source      TEXT NOT NULL,
        imported_at INTEGER NOT NULL,
        PRIMARY KEY (kind, original_id)
     );",
        readable_from: 4,
    },
];
