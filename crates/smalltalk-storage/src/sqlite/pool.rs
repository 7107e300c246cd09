//! The connections: the write connection with group commit, a background
//! checkpointer, and a pool of read connections.
//!
//! **Where the work runs.** On this project's reference machine (2 vCPUs),
//! handing work to another thread and back costs 70-100 us, several times a
//! whole small SQLite transaction (20-30 us). So the fast paths run inline on
//! the caller's thread, and work moves to another thread only when it could
//! take long:
//!
//! - writes commit inline without waiting for locks; if another process
//!   holds the write lock, the batch moves to a thread of its own that waits
//!   up to the busy timeout;
//! - WAL checkpoints (where `synchronous=NORMAL` syncs to disk) run on a
//!   background checkpointer thread, never inside a caller's commit;
//! - small reads run inline; large ones (see `INLINE_READ_LIMIT` in
//!   `store.rs`) run on tokio's blocking pool.
//!
//! **Group commit, leader-based.** A writer queues its job, then tries to
//! take the write connection. Whoever gets it (the leader) commits
//! everything queued (up to 512 jobs) in one transaction and answers every
//! job after the commit; callers that did not get it wait for that answer.
//! An inline leader commits one batch; if more is queued it hands the rest
//! to a thread of its own, so no caller's thread runs more than one batch
//! of others' work.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use super::{SharedError, is_busy, sqlite_error};
use crate::{Error, Result};

/// Most jobs committed in one transaction.
const MAX_BATCH: usize = 512;

/// Batches an inline leader commits before handing the rest to another
/// thread: one, so a caller pays for at most one batch of others' work.
const LEADER_BATCHES: usize = 1;

/// Commits between two looks at the WAL's size.
const CHECKPOINT_EVERY_COMMITS: u64 = 32;

/// WAL size above which the checkpointer is nudged.
const CHECKPOINT_WAL_BYTES: u64 = 4 * 1024 * 1024;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking job cannot leave shared data half-updated: the queue is
    // only pushed and drained, and an open transaction is rolled back by the
    // next leader.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A write job with its result type erased, so one queue carries all.
trait ErasedJob: Send {
    /// Runs the work inside the open transaction; `true` if it succeeded.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Delivers the outcome once the transaction has ended.
    fn finish(self: Box<Self>, commit_error: Option<&SharedError>);
}

struct TypedJob<T, F> {
    work: Option<F>,
    result: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> ErasedJob for TypedJob<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T> + Send + 'static,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        // A panicking job fails alone (its savepoint rolls back); the
        // leader, and the jobs after it, go on.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(conn)))
            .unwrap_or_else(|_| {
                Err(Error::Backend {
                    backend: "sqlite",
                    source: "a write job panicked".into(),
                })
            });
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, commit_error: Option<&SharedError>) {
        let outcome = match (commit_error, self.result) {
            (Some(error), _) => Err(error.to_error()),
            (None, Some(result)) => result,
            (None, None) => Err(Error::Closed),
        };
        // The caller may have gone away; its write still happened.
        let _ = self.reply.send(outcome);
    }
}

type Job = Box<dyn ErasedJob>;

/// Whether a leader may wait for another process's write lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// On a caller's thread: never wait; hand off instead.
    Inline,
    /// On a thread of its own: wait up to the busy timeout.
    Dedicated,
}

/// The committer thread's doorbell.
#[derive(Debug, Default)]
struct Handoff {
    state: Mutex<HandoffState>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct HandoffState {
    started: bool,
    /// A hand-off not yet taken.
    pending: bool,
    exit: bool,
}

impl Handoff {
    /// The committer thread: leads each hand-off, parked in between, until
    /// the writer shuts down or is dropped.
    fn serve(&self, writer: &std::sync::Weak<Writer>) {
        loop {
            {
                let mut state = lock(&self.state);
                while !state.pending && !state.exit {
                    state = self
                        .wake
                        .wait(state)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                if state.exit && !state.pending {
                    return;
                }
                state.pending = false;
            }
            match writer.upgrade() {
                Some(writer) => writer.lead(Placement::Dedicated),
                None => return,
            }
        }
    }

    fn stop(&self) {
        lock(&self.state).exit = true;
        self.wake.notify_all();
    }
}

/// The write side.
pub(super) struct Writer {
    /// Held by the current leader; `None` once closed.
    conn: Mutex<Option<Connection>>,
    /// Jobs waiting for the next commit.
    queue: Mutex<VecDeque<Job>>,
    /// Set while a dedicated leader thread runs; inline callers then leave
    /// the queue to it.
    dedicated_active: AtomicBool,
    /// Wakes the committer thread (started on the first hand-off, then
    /// parked between hand-offs: starting a thread per hand-off cost more
    /// than the commits it took over).
    handoff: Arc<Handoff>,
    busy_timeout: Duration,
    checkpointer: Checkpointer,
    commits: AtomicU64,
    wal_path: PathBuf,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("wal_path", &self.wal_path)
            .finish_non_exhaustive()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // The committer thread holds only a weak reference: let it go.
        self.handoff.stop();
    }
}

impl Writer {
    /// Takes over `conn` (already configured with `wal_autocheckpoint=0`).
    pub(super) fn new(
        conn: Connection,
        path: PathBuf,
        busy_timeout: Duration,
    ) -> Result<Arc<Self>> {
        let checkpointer = Checkpointer::spawn(path.clone(), busy_timeout)?;
        let mut wal_path = path.into_os_string();
        wal_path.push("-wal");
        Ok(Arc::new(Self {
            conn: Mutex::new(Some(conn)),
            queue: Mutex::new(VecDeque::new()),
            dedicated_active: AtomicBool::new(false),
            handoff: Arc::default(),
            busy_timeout,
            checkpointer,
            commits: AtomicU64::new(0),
            wal_path: wal_path.into(),
        }))
    }

    /// Runs `work` in the next group-committed transaction; resolves after
    /// the commit.
    pub(super) async fn write<T, F>(self: &Arc<Self>, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (reply, response) = oneshot::channel();
        lock(&self.queue).push_back(Box::new(TypedJob {
            work: Some(work),
            result: None,
            reply,
        }));
        if !self.dedicated_active.load(Ordering::SeqCst) {
            self.lead(Placement::Inline);
        }
        response.await.map_err(|_| Error::Closed)?
    }

    /// Commits what is queued. Inline, takes the connection only if free and
    /// returns at once otherwise: the leader holding it looks at the queue
    /// again after letting go, so no job is left behind. Dedicated, waits for
    /// the connection and keeps going until the queue is empty.
    fn lead(self: &Arc<Self>, placement: Placement) {
        loop {
            let conn = match placement {
                // A dedicated leader must not give up: callers rely on it.
                Placement::Dedicated => lock(&self.conn),
                Placement::Inline => match self.conn.try_lock() {
                    Ok(conn) => conn,
                    Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                    Err(TryLockError::WouldBlock) => return,
                },
            };
            let mut batches = 0;
            let mut hand_off = false;
            loop {
                let jobs: Vec<Job> = {
                    let mut queue = lock(&self.queue);
                    let take = queue.len().min(MAX_BATCH);
                    queue.drain(..take).collect()
                };
                if jobs.is_empty() {
                    break;
                }
                let Some(open) = conn.as_ref() else {
                    jobs.into_iter().for_each(|job| job.finish(None));
                    continue;
                };
                if let Err(jobs) = commit_batch(open, jobs, placement, self.busy_timeout) {
                    // Another process holds the write lock: wait for it on a
                    // thread of our own, not on the caller's.
                    let mut queue = lock(&self.queue);
                    jobs.into_iter().rev().for_each(|job| queue.push_front(job));
                    hand_off = true;
                    break;
                }
                self.after_commit();
                batches += 1;
                if batches == LEADER_BATCHES && placement == Placement::Inline {
                    // More queued meanwhile: the committer thread takes it.
                    // Nothing: done here, no hand-off.
                    hand_off = !lock(&self.queue).is_empty();
                    break;
                }
            }
            drop(conn);
            if hand_off {
                self.spawn_dedicated();
                return;
            }
            if placement == Placement::Dedicated {
                // Clear before looking, so a caller that saw the flag set
                // queued its job before our look below.
                self.dedicated_active.store(false, Ordering::SeqCst);
            }
            if lock(&self.queue).is_empty() {
                return;
            }
            if placement == Placement::Dedicated {
                self.dedicated_active.store(true, Ordering::SeqCst);
            } else if batches > 0 {
                // A job arrived between our last look and letting go; this
                // caller already ran its one batch: the committer takes it.
                self.spawn_dedicated();
                return;
            }
            // A job arrived between our last look and letting go: lead again.
        }
    }

    /// Hands the queue to the committer thread, starting it the first
    /// time.
    fn spawn_dedicated(self: &Arc<Self>) {
        self.dedicated_active.store(true, Ordering::SeqCst);
        let mut state = lock(&self.handoff.state);
        if !state.started {
            let (writer, handoff) = (Arc::downgrade(self), Arc::clone(&self.handoff));
            let spawned = std::thread::Builder::new()
                .name("smalltalk-sqlite-commit".into())
                .spawn(move || handoff.serve(&writer));
            if spawned.is_err() {
                // No thread to be had: wait right here rather than drop jobs.
                drop(state);
                self.lead(Placement::Dedicated);
                return;
            }
            state.started = true;
        }
        state.pending = true;
        drop(state);
        self.handoff.wake.notify_one();
    }

    fn after_commit(&self) {
        let commits = self.commits.fetch_add(1, Ordering::Relaxed) + 1;
        if commits % CHECKPOINT_EVERY_COMMITS == 0 {
            let wal_bytes = std::fs::metadata(&self.wal_path)
                .map(|meta| meta.len())
                .unwrap_or(0);
            if wal_bytes > CHECKPOINT_WAL_BYTES {
                self.checkpointer.nudge();
            }
        }
    }

    /// Commits what is queued, then closes the connection and stops the
    /// checkpointer; later jobs fail with [`Error::Closed`].
    pub(super) async fn shutdown(self: &Arc<Self>) -> Result<()> {
        let writer = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let mut conn = lock(&writer.conn);
            let jobs: Vec<Job> = lock(&writer.queue).drain(..).collect();
            writer.checkpointer.stop();
            writer.handoff.stop();
            if let Some(open) = conn.as_ref() {
                if !jobs.is_empty() {
                    // Waiting is allowed here: shutdown runs on the blocking pool.
                    let _ = commit_batch(open, jobs, Placement::Dedicated, writer.busy_timeout);
                }
                // Fold the WAL into the database and empty it, so nothing
                // deleted (an invalidated session's content) stays in it.
                // A read still running (or the checkpointer thread) is
                // waited for, as long as a write would wait.
                let _ = open.busy_timeout(writer.busy_timeout);
                match open.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                    row.get::<_, i64>(0)
                }) {
                    Ok(0) => {}
                    Ok(_) => tracing::warn!(
                        backend = "sqlite",
                        "the WAL could not be emptied at close: another connection is reading"
                    ),
                    Err(error) => {
                        tracing::warn!(backend = "sqlite", %error, "checkpoint at close failed")
                    }
                }
            }
            *conn = None;
            // Writes that queued while the above ran: closed, not left
            // waiting for a leader. Later ones lead, find no connection and
            // are answered the same way.
            writer.dedicated_active.store(false, Ordering::SeqCst);
            let late: Vec<Job> = lock(&writer.queue).drain(..).collect();
            late.into_iter().for_each(|job| job.finish(None));
        })
        .await
        .map_err(|join| Error::Backend {
            backend: "sqlite",
            source: Box::new(join),
        })
    }
}

/// Runs `jobs` in one transaction and answers them after the commit. With
/// several jobs each runs in its own savepoint, so one failing job does not
/// undo the others; a lone job needs none (its failure rolls back).
///
/// Inline, the write lock is not waited for: if another process holds it
/// the jobs come back untouched as `Err`.
fn commit_batch(
    conn: &Connection,
    mut jobs: Vec<Job>,
    placement: Placement,
    busy_timeout: Duration,
) -> Result<(), Vec<Job>> {
    if !conn.is_autocommit() {
        // A previous leader panicked mid-transaction: undo its leftovers.
        let _ = execute(conn, "ROLLBACK");
    }
    let wait = if placement == Placement::Inline {
        Duration::ZERO
    } else {
        busy_timeout
    };
    let begin = conn
        .busy_timeout(wait)
        .and_then(|()| execute(conn, "BEGIN IMMEDIATE"));
    match begin {
        Err(error) if placement == Placement::Inline && is_busy(&error) => return Err(jobs),
        Err(error) => {
            let error = SharedError::new(error);
            jobs.into_iter().for_each(|job| job.finish(Some(&error)));
            return Ok(());
        }
        Ok(()) => {}
    }
    let outcome = if let [job] = jobs.as_mut_slice() {
        if job.run(conn) {
            execute(conn, "COMMIT")
        } else {
            execute(conn, "ROLLBACK")
        }
    } else {
        run_in_savepoints(conn, &mut jobs).and_then(|()| execute(conn, "COMMIT"))
    };
    match outcome {
        Ok(()) => jobs.into_iter().for_each(|job| job.finish(None)),
        Err(error) => {
            let _ = execute(conn, "ROLLBACK");
            let error = SharedError::new(error);
            jobs.into_iter().for_each(|job| job.finish(Some(&error)));
        }
    }
    Ok(())
}

fn run_in_savepoints(conn: &Connection, jobs: &mut [Job]) -> rusqlite::Result<()> {
    for job in jobs {
        execute(conn, "SAVEPOINT job")?;
        if job.run(conn) {
            execute(conn, "RELEASE job")?;
        } else {
            execute(conn, "ROLLBACK TO job")?;
            execute(conn, "RELEASE job")?;
        }
    }
    Ok(())
}

/// Runs a statement through the statement cache (no re-parsing per commit).
fn execute(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// A thread that copies the WAL back into the database when nudged, so no
/// caller's commit pays for it.
struct Checkpointer {
    nudges: Mutex<Option<SyncSender<()>>>,
}

impl Checkpointer {
    fn spawn(path: PathBuf, busy_timeout: Duration) -> Result<Self> {
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sqlite_error)?;
        conn.busy_timeout(busy_timeout).map_err(sqlite_error)?;
        let (sender, receiver) = mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("smalltalk-sqlite-checkpoint".into())
            .spawn(move || {
                while receiver.recv().is_ok() {
                    if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        tracing::warn!(backend = "sqlite", %error, "WAL checkpoint failed; will retry");
                    }
                }
            })
            .map_err(|source| Error::Io { path, source })?;
        Ok(Self {
            nudges: Mutex::new(Some(sender)),
        })
    }

    fn nudge(&self) {
        if let Some(sender) = lock(&self.nudges).as_ref() {
            // Full means a checkpoint is already pending.
            if let Err(TrySendError::Disconnected(())) = sender.try_send(()) {
                tracing::warn!(backend = "sqlite", "the checkpointer thread has stopped");
            }
        }
    }

    fn stop(&self) {
        lock(&self.nudges).take();
    }
}

/// Read connections, opened on demand, at most `max_open` at once, and up
/// to `max_idle` kept for reuse.
#[derive(Debug)]
pub(super) struct Readers {
    path: PathBuf,
    busy_timeout: Duration,
    state: Mutex<ReaderState>,
    freed: Condvar,
    max_idle: usize,
    max_open: usize,
}

#[derive(Debug, Default)]
struct ReaderState {
    idle: Vec<Connection>,
    /// Connections open, idle or in use.
    open: usize,
    /// Set by `clear` (the store closed): nothing is lent or kept any more.
    closed: bool,
}

/// A reader connection on loan: goes back to the pool (or is closed) when
/// dropped, whatever happened to the work, panics included.
struct Lent<'a> {
    readers: &'a Readers,
    conn: Option<Connection>,
}

impl std::ops::Deref for Lent<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
            .as_ref()
            .unwrap_or_else(|| unreachable!("lent until dropped"))
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if !conn.is_autocommit() {
                // Work that failed or panicked mid-transaction.
                let _ = conn.execute_batch("ROLLBACK");
            }
            self.readers.put(conn);
        }
    }
}

impl Readers {
    pub(super) fn new(
        path: PathBuf,
        busy_timeout: Duration,
        max_idle: usize,
        max_open: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            path,
            busy_timeout,
            state: Mutex::default(),
            freed: Condvar::new(),
            max_idle: max_idle.min(max_open),
            max_open,
        })
    }

    /// An idle connection, or a new one if fewer than `max_open` are open;
    /// `None` if all are in use. Never waits.
    fn try_take(&self) -> Option<Result<Lent<'_>>> {
        let mut state = lock(&self.state);
        if state.closed {
            return Some(Err(Error::Closed));
        }
        let lent = |conn| Lent {
            readers: self,
            conn: Some(conn),
        };
        if let Some(conn) = state.idle.pop() {
            return Some(Ok(lent(conn)));
        }
        if state.open >= self.max_open {
            return None;
        }
        state.open += 1;
        drop(state);
        let opened = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sqlite_error);
        match opened {
            Ok(conn) => Some(Ok(lent(conn))),
            Err(error) => {
                lock(&self.state).open -= 1;
                self.freed.notify_one();
                Some(Err(error))
            }
        }
    }

    /// A connection, waiting for one to be put back if `max_open` are in
    /// use (on the blocking pool only).
    fn take_waiting(&self) -> Result<Lent<'_>> {
        loop {
            if let Some(conn) = self.try_take() {
                return conn;
            }
            let state = lock(&self.state);
            if !state.closed && state.idle.is_empty() && state.open >= self.max_open {
                drop(
                    self.freed
                        .wait(state)
                        .unwrap_or_else(|poisoned| poisoned.into_inner()),
                );
            }
        }
    }

    fn put(&self, conn: Connection) {
        let mut state = lock(&self.state);
        if !state.closed && state.idle.len() < self.max_idle {
            state.idle.push(conn);
        } else {
            state.open -= 1;
            drop(state);
            drop(conn);
        }
        self.freed.notify_one();
    }

    /// Runs short `work` on the caller's thread, if a connection is free
    /// and the database is not locked: `None` when it would have to wait
    /// for either (run it with [`blocking`](Self::blocking) then).
    pub(super) fn try_inline<T>(
        &self,
        work: &impl Fn(&Connection) -> Result<T>,
    ) -> Option<Result<T>> {
        let conn = match self.try_take()? {
            Ok(conn) => conn,
            Err(error) => return Some(Err(error)),
        };
        let result = conn
            .busy_timeout(Duration::ZERO)
            .map_err(sqlite_error)
            .and_then(|()| work(&conn));
        drop(conn);
        match result {
            Err(Error::Unavailable { .. }) => None,
            done => Some(done),
        }
    }

    /// Runs possibly long `work` on a reader connection on the blocking
    /// pool, waiting for a free connection and for locks as configured.
    pub(super) async fn blocking<T, F>(self: &Arc<Self>, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let readers = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let conn = readers.take_waiting()?;
            conn.busy_timeout(readers.busy_timeout)
                .map_err(sqlite_error)
                .and_then(|()| work(&conn))
        })
        .await
        .map_err(|join| Error::Backend {
            backend: "sqlite",
            source: Box::new(join),
        })?
    }

    /// Connections open now, idle or in use.
    pub(super) fn open_connections(&self) -> usize {
        lock(&self.state).open
    }

    /// Closes the idle connections and lends no more (the store closed);
    /// connections still on loan close when they come back, and waiters
    /// get [`Error::Closed`].
    pub(super) fn clear(&self) {
        let mut state = lock(&self.state);
        let closed = state.idle.len();
        state.idle.clear();
        state.open -= closed;
        state.closed = true;
        drop(state);
        self.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::thread::ThreadId;

    use super::*;

    /// With three batches queued, the caller that leads inline commits the
    /// first and leaves the rest to a thread of its own.
    #[test]
    fn an_inline_leader_commits_one_batch_then_hands_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leader.db");
        let conn =
            super::super::open_writer(&path, &super::super::SqliteOptions::default()).unwrap();
        let writer = Writer::new(conn, path, Duration::from_secs(5)).unwrap();
        let ran_on: Arc<Mutex<Vec<ThreadId>>> = Arc::default();
        let mut answers = Vec::new();
        for _ in 0..3 * MAX_BATCH {
            let (reply, answer) = oneshot::channel();
            let ran_on = Arc::clone(&ran_on);
            let work = move |_: &Connection| -> Result<()> {
                lock(&ran_on).push(std::thread::current().id());
                Ok(())
            };
            lock(&writer.queue).push_back(Box::new(TypedJob {
                work: Some(work),
                result: None,
                reply,
            }));
            answers.push(answer);
        }
        writer.lead(Placement::Inline);
        for answer in answers {
            answer.blocking_recv().unwrap().unwrap();
        }
        let ran_on = lock(&ran_on);
        let here = std::thread::current().id();
        assert_eq!(ran_on.len(), 3 * MAX_BATCH);
        assert_eq!(
            ran_on.iter().filter(|thread| **thread == here).count(),
            MAX_BATCH,
            "the caller's thread ran exactly one batch"
        );
    }

    /// A write with nothing else queued commits on the caller's thread and
    /// wakes no committer thread.
    #[test]
    fn a_lone_write_stays_on_the_callers_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lone.db");
        let conn =
            super::super::open_writer(&path, &super::super::SqliteOptions::default()).unwrap();
        let writer = Writer::new(conn, path, Duration::from_secs(5)).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let here = std::thread::current().id();
        for _ in 0..3 {
            let ran_on = runtime
                .block_on(writer.write(|_| Ok(std::thread::current().id())))
                .unwrap();
            assert_eq!(ran_on, here);
        }
        assert!(!lock(&writer.handoff.state).started, "no committer thread");
    }
}
