//! The connections: one writer thread with group commit, a pool of readers.

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use super::{SharedError, sqlite_error};
use crate::{Error, Result};

/// Most jobs committed in one transaction.
const MAX_BATCH: usize = 512;

/// A write job with its result type erased, so one channel carries all.
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
        let work = self.work.take().expect("a job runs once");
        let result = work(conn);
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

/// The single writer: a thread owning the write connection.
#[derive(Debug)]
pub(super) struct Writer {
    sender: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    pub(super) fn spawn(conn: Connection) -> Result<Self> {
        let (sender, receiver) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("smalltalk-sqlite-writer".into())
            .spawn(move || write_loop(&conn, &receiver))
            .map_err(|source| Error::Io {
                path: PathBuf::from("<writer thread>"),
                source,
            })?;
        Ok(Self {
            sender: Mutex::new(Some(sender)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Runs `work` in the next group-committed transaction; resolves after
    /// the commit.
    pub(super) async fn write<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (reply, response) = oneshot::channel();
        let job: Job = Box::new(TypedJob {
            work: Some(work),
            result: None,
            reply,
        });
        {
            let sender = self
                .sender
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let sender = sender.as_ref().ok_or(Error::Closed)?;
            sender.send(job).map_err(|_| Error::Closed)?;
        }
        response.await.map_err(|_| Error::Closed)?
    }

    /// Stops accepting jobs, lets queued ones finish, joins the thread.
    pub(super) async fn shutdown(&self) -> Result<()> {
        drop(
            self.sender
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take(),
        );
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(thread) = thread {
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .map_err(|join| Error::Backend {
                    backend: "sqlite",
                    source: Box::new(join),
                })?
                .map_err(|_| Error::Backend {
                    backend: "sqlite",
                    source: "the writer thread panicked".into(),
                })?;
        }
        Ok(())
    }
}

fn write_loop(conn: &Connection, receiver: &mpsc::Receiver<Job>) {
    while let Ok(first) = receiver.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        commit_batch(conn, jobs);
    }
}

/// Runs `jobs` in one transaction and replies only after the commit. With
/// several jobs, each runs in its own savepoint so one failing job does not
/// undo the others; a lone job needs none (its failure rolls back).
fn commit_batch(conn: &Connection, mut jobs: Vec<Job>) {
    // IMMEDIATE takes the write lock up front, so the busy timeout applies
    // and other processes writing the same file queue instead of failing.
    if let Err(error) = execute(conn, "BEGIN IMMEDIATE") {
        let error = SharedError::new(error);
        jobs.into_iter().for_each(|job| job.finish(Some(&error)));
        return;
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

/// Read connections, opened on demand and kept for reuse.
#[derive(Debug)]
pub(super) struct Readers {
    path: PathBuf,
    busy_timeout: Duration,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
}

impl Readers {
    pub(super) fn new(path: PathBuf, busy_timeout: Duration, max_idle: usize) -> Arc<Self> {
        Arc::new(Self {
            path,
            busy_timeout,
            idle: Mutex::new(Vec::new()),
            max_idle,
        })
    }

    fn take(&self) -> Result<Connection> {
        if let Some(conn) = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop()
        {
            return Ok(conn);
        }
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sqlite_error)?;
        conn.busy_timeout(self.busy_timeout).map_err(sqlite_error)?;
        Ok(conn)
    }

    fn put(&self, conn: Connection) {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }

    /// Runs `work` on a reader connection on the blocking pool.
    pub(super) async fn read<T, F>(self: &Arc<Self>, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let readers = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let conn = readers.take()?;
            let result = work(&conn);
            readers.put(conn);
            result
        })
        .await
        .map_err(|join| Error::Backend {
            backend: "sqlite",
            source: Box::new(join),
        })?
    }

    pub(super) fn clear(&self) {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clear();
    }
}
