//! SQLite-specific behaviour beyond the shared contract: file permissions,
//! several writers on one file, schema and format versions, URL options.

use std::sync::Arc;
use std::time::Duration;

use smalltalk_storage::sqlite::{SqliteOptions, SqliteStore, Synchronous};
use smalltalk_storage::{AppendGuard, Error, Expected, SessionStore, StoreAdmin, open};
use smalltalk_types::{Message, Role, Session, SessionId, Timestamp};

fn new_session() -> Session {
    Session::new(
        SessionId::new(),
        Timestamp::now(),
        Duration::from_secs(3600),
    )
}

#[cfg(unix)]
#[tokio::test]
async fn database_and_wal_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/private.db");
    let store = SqliteStore::open(&path).await.unwrap();
    store
        .save_session(&new_session(), Expected::Absent)
        .await
        .unwrap();
    // A reader connection creates the shared-memory file too.
    assert_eq!(store.stats().await.unwrap().sessions, 1);
    for suffix in ["", "-wal", "-shm"] {
        let file = format!("{}{suffix}", path.display());
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file} has mode {mode:o}");
    }
    let dir_mode = std::fs::metadata(path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);
}

/// Separate stores on one file have separate connections and writer
/// threads, exactly as separate processes do: all writes land, none fails
/// with "database is locked".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_writers_on_one_file_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let session = new_session();
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(Arc::new(SqliteStore::open(&path).await.unwrap()));
    }
    stores[0]
        .save_session(&session, Expected::Absent)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for (writer, store) in stores.iter().enumerate() {
        let store = Arc::clone(store);
        tasks.push(tokio::spawn(async move {
            for index in 0..50 {
                let message =
                    Message::new(Role::User, format!("{writer}:{index}"), Timestamp::now());
                store
                    .append_messages(session.id, &[message], AppendGuard::NONE)
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stored = stores[3].get_session(session.id).await.unwrap().unwrap();
    assert_eq!(stored.messages.len(), 200);
    assert_eq!(stored.version, 1, "appends leave the header version");
}

/// A database a newer release migrated: used as it is when its recorded
/// floor (the oldest release that may use it) is not above this release,
/// refused when it is.
#[tokio::test]
async fn a_newer_schema_is_used_down_to_its_floor_and_refused_below() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.db");
    SqliteStore::open(&path)
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let (known, floor, by): (i64, String, String) = conn
        .query_row(
            "SELECT (SELECT user_version FROM pragma_user_version),
                    (SELECT value FROM smalltalk_schema WHERE name = 'readable_from'),
                    (SELECT value FROM smalltalk_schema WHERE name = 'migrated_by')",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .unwrap();
    let floor: i64 = floor.parse().unwrap();
    assert!((1..=known).contains(&floor), "floor {floor} of {known}");
    assert_eq!(by, env!("CARGO_PKG_VERSION"));
    // A newer release added an additive migration: this one goes on.
    conn.execute_batch(&format!(
        "PRAGMA user_version = {}; CREATE TABLE from_the_future (x INTEGER);",
        known + 1
    ))
    .unwrap();
    drop(conn);
    let store = SqliteStore::open(&path).await.unwrap();
    let session = new_session();
    store
        .save_session(&session, Expected::Absent)
        .await
        .unwrap();
    assert!(store.get_session(session.id).await.unwrap().is_some());
    store.close().await.unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    assert_eq!(version, known + 1, "the newer schema is left as it was");
    // The newer release marked its schema unusable by older ones.
    conn.execute_batch(&format!(
        "PRAGMA user_version = 99; UPDATE smalltalk_schema SET value = '{}' WHERE name = 'readable_from';",
        known + 1
    ))
    .unwrap();
    drop(conn);
    let opened = SqliteStore::open(&path).await;
    assert!(
        matches!(
            opened,
            Err(Error::SchemaTooNew { found: 99, supported, readable_from })
                if supported as i64 == known && readable_from as i64 == known + 1
        ),
        "{opened:?}"
    );
}

#[tokio::test]
async fn a_record_from_a_newer_release_is_refused_not_misread() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("format.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let session = new_session();
    store
        .save_session(&session, Expected::Absent)
        .await
        .unwrap();
    store.close().await.unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let header: Vec<u8> = conn
        .query_row("SELECT header FROM sessions", [], |row| row.get(0))
        .unwrap();
    let mut value: serde_json::Value = serde_json::from_slice(&header).unwrap();
    value["formatVersion"] = 2.into();
    conn.execute(
        "UPDATE sessions SET header = ?1",
        [serde_json::to_vec(&value).unwrap()],
    )
    .unwrap();
    drop(conn);
    let store = SqliteStore::open(&path).await.unwrap();
    let read = store.get_session(session.id).await;
    assert!(
        matches!(
            read,
            Err(Error::Domain(
                smalltalk_types::Error::UnsupportedFormatVersion { found: 2, .. }
            ))
        ),
        "{read:?}"
    );
}

#[tokio::test]
async fn urls_open_the_right_backend_or_fail_with_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("url.db");
    let store = open(&format!(
        "sqlite://{}?synchronous=full&busy_timeout_ms=250",
        path.display()
    ))
    .await
    .unwrap();
    assert_eq!(store.backend().as_str(), "sqlite");
    assert_eq!(
        open("memory://").await.unwrap().backend().as_str(),
        "memory"
    );
    for bad in [
        "no-scheme",
        "ftp://x",
        "memory://something",
        "sqlite://",
        "sqlite://x.db?synchronous=sometimes",
        "sqlite://x.db?unknown=1",
        "sqlite://x.db?busy_timeout_ms=soon",
        "sqlite://x.db?novalue",
    ] {
        let opened = open(bad).await;
        assert!(
            matches!(opened, Err(Error::InvalidUrl { .. })),
            "{bad}: {opened:?}"
        );
    }
}

#[tokio::test]
async fn full_synchronous_mode_stores_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        synchronous: Synchronous::Full,
        ..Default::default()
    };
    let store = SqliteStore::open_with(dir.path().join("full.db"), options)
        .await
        .unwrap();
    let session = new_session();
    store
        .save_session(&session, Expected::Absent)
        .await
        .unwrap();
    assert!(store.has_session(session.id).await.unwrap());
}

#[tokio::test]
async fn a_directory_is_not_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let opened = SqliteStore::open(dir.path()).await;
    assert!(
        matches!(opened, Err(Error::Backend { .. } | Error::Io { .. })),
        "{opened:?}"
    );
}

/// Another process holds the write lock: writes wait for it off the
/// caller's thread and then succeed. On this single-threaded runtime, a
/// write that waited on the caller's thread would stall the test itself
/// (the lock is released by this very task) until the busy timeout failed it.
#[tokio::test(flavor = "current_thread")]
async fn writes_wait_for_another_process_holding_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locked.db");
    let store = Arc::new(SqliteStore::open(&path).await.unwrap());
    let session = new_session();
    store
        .save_session(&session, Expected::Absent)
        .await
        .unwrap();

    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut pending = Vec::new();
    for index in 0..3 {
        let store = Arc::clone(&store);
        pending.push(tokio::spawn(async move {
            let message = Message::new(Role::User, format!("m{index}"), Timestamp::now());
            store
                .append_messages(session.id, &[message], AppendGuard::NONE)
                .await
        }));
    }
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert!(
        pending.iter().all(|task| !task.is_finished()),
        "no write can commit while the lock is held"
    );
    other.execute_batch("COMMIT").unwrap();
    for task in pending {
        task.await.unwrap().unwrap();
    }
    assert_eq!(
        store
            .get_session(session.id)
            .await
            .unwrap()
            .unwrap()
            .messages
            .len(),
        3
    );
}

/// A lock held past the busy timeout fails the write with a transient,
/// typed error, and the write does not land later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_past_the_busy_timeout_is_a_transient_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("timeout.db");
    let options = SqliteOptions {
        busy_timeout: Duration::from_millis(50),
        ..Default::default()
    };
    let store = SqliteStore::open_with(&path, options).await.unwrap();
    let session = new_session();
    store
        .save_session(&session, Expected::Absent)
        .await
        .unwrap();
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let message = Message::new(Role::User, "late", Timestamp::now());
    let result = store
        .append_messages(session.id, &[message], AppendGuard::NONE)
        .await;
    assert!(
        matches!(&result, Err(error @ Error::Unavailable { .. }) if error.is_transient()),
        "{result:?}"
    );
    other.execute_batch("COMMIT").unwrap();
    let stored = store.get_session(session.id).await.unwrap().unwrap();
    assert!(stored.messages.is_empty());
    assert_eq!(stored.version, 1);
    // The store is still usable.
    store
        .append_messages(
            session.id,
            &[Message::new(Role::User, "ok", Timestamp::now())],
            AppendGuard::NONE,
        )
        .await
        .unwrap();
}

/// An explicit checkpoint folds the WAL into the database file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_truncates_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let mut session = new_session();
    session.messages.push(Message::new(
        Role::User,
        "x".repeat(256 * 1024),
        Timestamp::now(),
    ));
    store
        .save_session(&session, Expected::Absent)
        .await
        .unwrap();
    let wal = format!("{}-wal", path.display());
    assert!(std::fs::metadata(&wal).unwrap().len() > 256 * 1024);
    store.checkpoint().await.unwrap();
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
    assert!(std::fs::metadata(&path).unwrap().len() > 256 * 1024);
    assert_eq!(
        store
            .get_session(session.id)
            .await
            .unwrap()
            .unwrap()
            .messages
            .len(),
        1
    );
}

/// Headers over the threshold are stored gzip-compressed; small ones stay
/// plain JSON, readable with any SQL tool.
#[tokio::test]
async fn large_headers_are_stored_compressed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("compressed.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let small = new_session();
    let mut large = new_session();
    let text = "all work and no play makes jack a dull boy ".repeat(5_000);
    large.metadata.insert("notes".into(), text.into());
    store.save_session(&small, Expected::Absent).await.unwrap();
    store.save_session(&large, Expected::Absent).await.unwrap();
    store.close().await.unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let header = |id: SessionId| -> Vec<u8> {
        conn.query_row(
            "SELECT header FROM sessions WHERE id = ?1",
            [id.to_string()],
            |row| row.get(0),
        )
        .unwrap()
    };
    assert_eq!(header(small.id).first(), Some(&b'{'));
    let compressed = header(large.id);
    assert_eq!(&compressed[..2], &[0x1f, 0x8b], "gzip magic");
    assert!(
        compressed.len() < smalltalk_storage::codec::COMPRESS_ABOVE / 4,
        "{}",
        compressed.len()
    );
    drop(conn);
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(
        store.get_session(large.id).await.unwrap().unwrap().metadata,
        large.metadata
    );
}

/// A message row damaged behind the store's back: the read names the
/// session and the message's position instead of failing opaquely; a
/// damaged header is named too, and an id column that is not a UUID is a
/// typed error, not a panic.
#[tokio::test]
async fn a_tampered_row_is_named_by_the_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tampered.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let session = smalltalk_storage::contract::sessions::stored_with_messages(&store, 3).await;
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("UPDATE messages SET meta = x'7b6e6f7420' WHERE seq = 1", [])
        .unwrap();
    let read = store.get_session(session.id).await;
    assert!(
        matches!(&read, Err(Error::Undecodable { id, sequence: Some(1), .. }) if *id == session.id),
        "{read:?}"
    );
    conn.execute("UPDATE sessions SET header = x'5b5b'", [])
        .unwrap();
    let read = store.get_session_header(session.id).await;
    assert!(
        matches!(&read, Err(Error::Undecodable { sequence: None, .. })),
        "{read:?}"
    );
    conn.execute("UPDATE sessions SET id = 'not-a-uuid'", [])
        .unwrap();
    let listed = store.list_sessions(&Default::default()).await;
    assert!(matches!(listed, Err(Error::Domain(_))), "{listed:?}");
}

/// The pragmas docs/storage.md promises are set on the write connection:
/// checkpoints never run inside a caller's commit, the WAL is cut back
/// after one, deleted content is overwritten.
#[tokio::test]
async fn the_documented_pragmas_are_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("pragmas.db"))
        .await
        .unwrap();
    let settings = store.settings().await.unwrap();
    assert_eq!(settings.journal_mode, "wal");
    assert_eq!(settings.synchronous, Synchronous::Normal);
    assert_eq!(settings.wal_autocheckpoint, 0);
    assert_eq!(
        settings.journal_size_limit,
        smalltalk_storage::sqlite::JOURNAL_SIZE_LIMIT as i64
    );
    assert!(settings.secure_delete);
}

/// Closing the store folds the WAL into the database and empties it.
#[tokio::test]
async fn close_leaves_no_wal_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("closed.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let session = new_session();
    store
        .save_session(&session, Expected::Absent)
        .await
        .unwrap();
    let wal = dir.path().join("closed.db-wal");
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);
    store.close().await.unwrap();
    let left = std::fs::metadata(&wal).map_or(0, |meta| meta.len());
    assert_eq!(left, 0, "the WAL is empty (or gone) after close");
    let store = SqliteStore::open(&path).await.unwrap();
    assert!(store.has_session(session.id).await.unwrap());
}

/// Each storage URL form: `sqlite:///absolute/path`, `sqlite://relative/path`
/// (from the working directory), percent-encoded paths and options, and
/// a broken encoding refused with a typed error.
#[tokio::test]
async fn every_sqlite_url_form_opens_the_file_it_names() {
    let dir = tempfile::tempdir().unwrap();
    // Absolute: three slashes.
    let absolute = dir.path().join("abs.db");
    let url = format!("sqlite://{}", absolute.display());
    assert!(url.starts_with("sqlite:///"));
    open(&url).await.unwrap().close().await.unwrap();
    assert!(absolute.exists());

    // Percent-encoded: a space in a directory name, an encoded option.
    let spaced = dir.path().join("with space").join("enc.db");
    let encoded = spaced.display().to_string().replace(' ', "%20");
    let store = open(&format!("sqlite://{encoded}?synchronous=%46ULL"))
        .await
        .unwrap();
    store.close().await.unwrap();
    assert!(spaced.exists(), "the decoded path was used");

    // Relative: from the working directory, here up to `/` and down into
    // the temporary directory.
    let cwd = std::env::current_dir().unwrap();
    let up = "../".repeat(cwd.components().count() - 1);
    let target = dir.path().join("rel.db");
    let relative = format!(
        "{up}{}",
        target.display().to_string().trim_start_matches('/')
    );
    assert!(!relative.starts_with('/'));
    open(&format!("sqlite://{relative}"))
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    assert!(target.exists(), "{}", target.display());

    let broken = open("sqlite://bad%FF.db").await;
    assert!(
        matches!(broken, Err(Error::InvalidUrl { .. })),
        "{broken:?}"
    );
}

/// However many reads run at once, at most `max_readers` connections are
/// open (counted as the process's descriptors on the file): short reads
/// that find none free move to the blocking pool and wait there, and every
/// read still answers.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_connections_stay_within_the_cap() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        max_readers: 2,
        max_idle_readers: 8,
        ..Default::default()
    };
    let file = dir.path().join("capped.db");
    // Descriptors of this process on the database file itself (not its WAL).
    let open_files = {
        let file = file.clone();
        move || {
            std::fs::read_dir("/proc/self/fd")
                .map(|entries| {
                    entries
                        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
                        .filter(|target| *target == file)
                        .count()
                })
                .unwrap_or(0)
        }
    };
    let store = Arc::new(SqliteStore::open_with(&file, options).await.unwrap());
    // Long enough that its read goes to the blocking pool.
    let long =
        smalltalk_storage::contract::sessions::stored_with_messages(store.as_ref(), 2000).await;
    let short =
        smalltalk_storage::contract::sessions::stored_with_messages(store.as_ref(), 2).await;
    let most = Arc::new(AtomicUsize::new(0));
    let reads: Vec<_> = (0..200)
        .map(|n| {
            let (store, most, open_files) =
                (Arc::clone(&store), Arc::clone(&most), open_files.clone());
            tokio::spawn(async move {
                let id = if n % 2 == 0 { long.id } else { short.id };
                let read = store.get_session(id).await.unwrap().unwrap();
                most.fetch_max(open_files(), Ordering::Relaxed);
                read.messages.len()
            })
        })
        .collect();
    for (n, read) in reads.into_iter().enumerate() {
        let expected = if n % 2 == 0 { 2000 } else { 2 };
        assert_eq!(read.await.unwrap(), expected);
    }
    // What the process really has open on the file: the write connection,
    // the checkpointer's, and at most two readers.
    let most = most.load(Ordering::Relaxed);
    assert!(
        (3..=4).contains(&most),
        "{most} connections open on the file"
    );
    assert!(store.reader_connections() <= 2);
    let refused = SqliteStore::open_with(
        dir.path().join("none.db"),
        SqliteOptions {
            max_readers: 0,
            ..Default::default()
        },
    )
    .await;
    assert!(
        matches!(
            refused,
            Err(Error::Domain(smalltalk_types::Error::InvalidConfig {
                field: "max_readers",
                ..
            }))
        ),
        "{refused:?}"
    );
}
