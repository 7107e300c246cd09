//! One committer per store and kind of write: concurrent writers on this
//! node queue jobs, and one task runs every job queued (up to
//! [`MAX_BATCH`]) in one transaction (or, when it is one statement, in that
//! statement alone), so a burst of writers pays one
//! commit (one WAL flush) instead of one each.
//!
//! The batch's [`BatchWork`] decides how jobs run inside the transaction
//! (the state store plans them in order against the rows it read once, and
//! writes them all with one statement). A batch holds at most
//! [`MAX_BATCH`] jobs and [`MAX_BATCH_BYTES`] of their data. If the work
//! fails before the commit, the transaction rolls back; unless the failure
//! is transient (the server is unreachable: every job gets it at once),
//! each job runs again in a transaction of its own, so one bad job cannot
//! fail the others. If the commit itself fails, every job gets the error:
//! its outcome is unknown, and running it again could apply it twice.

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use super::pg_error;
use crate::Result;

/// Most jobs in one transaction.
pub(super) const MAX_BATCH: usize = 256;

/// Most bytes of job data in one transaction (a job alone may exceed it):
/// far below PostgreSQL's 1 GiB message limit.
pub(super) const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

/// How a batch of jobs runs inside one transaction.
#[async_trait]
pub(super) trait BatchWork: Send + Sync + 'static {
    /// One caller's request.
    type Job: Send + Sync + 'static;
    /// Its answer.
    type Output: Send + 'static;

    /// How many bytes a job carries, for the batch's byte cap.
    fn job_bytes(job: &Self::Job) -> usize;

    /// Whether `run` would send `jobs` as one statement: then no explicit
    /// transaction is opened (one statement is atomic), saving its
    /// `BEGIN` and `COMMIT` round trips. A statement that fails wrote
    /// nothing; one cut off by a lost connection has an unknown outcome,
    /// as a failed `COMMIT` has.
    fn one_statement(&self, _jobs: &[Self::Job]) -> bool {
        false
    }

    /// Runs `jobs` in order on `conn`: inside an open transaction, or
    /// alone when [`one_statement`](Self::one_statement) says so. `Ok` holds
    /// each job's outcome (a job that fails must have written nothing);
    /// `Err` rolls the whole batch back.
    async fn run(
        &self,
        conn: &mut sqlx::PgConnection,
        jobs: &[Self::Job],
    ) -> Result<Vec<Result<Self::Output>>>;
}

type Queued<W> = (
    <W as BatchWork>::Job,
    oneshot::Sender<Result<<W as BatchWork>::Output>>,
);

/// Queues jobs for the committer task; the task ends when this is dropped.
pub(super) struct Committer<W: BatchWork> {
    queue: mpsc::UnboundedSender<Queued<W>>,
}

impl<W: BatchWork> std::fmt::Debug for Committer<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer").finish_non_exhaustive()
    }
}

impl<W: BatchWork> Committer<W> {
    /// Starts the committer task on the current runtime.
    pub(super) fn start(pool: PgPool, work: W) -> Self {
        let (queue, jobs) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, Arc::new(work), jobs));
        Self { queue }
    }

    /// Queues `job` and waits for its commit.
    pub(super) async fn submit(&self, job: W::Job) -> Result<W::Output> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((job, reply))
            .map_err(|_| crate::Error::Closed)?;
        answer.await.unwrap_or(Err(crate::Error::Closed))
    }
}

async fn run<W: BatchWork>(
    pool: PgPool,
    work: Arc<W>,
    mut queue: mpsc::UnboundedReceiver<Queued<W>>,
) {
    let mut carry: Option<Queued<W>> = None;
    loop {
        let first = match carry.take() {
            Some(first) => first,
            None => match queue.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        let mut bytes = W::job_bytes(&first.0);
        let (mut jobs, mut replies) = (vec![first.0], vec![first.1]);
        while jobs.len() < MAX_BATCH {
            let Ok(next) = queue.try_recv() else { break };
            bytes += W::job_bytes(&next.0);
            if bytes > MAX_BATCH_BYTES {
                carry = Some(next);
                break;
            }
            jobs.push(next.0);
            replies.push(next.1);
        }
        match commit(&pool, &*work, &jobs).await {
            Ok(outcomes) => answer(replies, outcomes),
            // A failure one job may have caused: each runs alone, so it
            // fails alone. A transient failure (the server is down) would
            // fail them all again, one timeout each: it is answered at once.
            Err(Failure::BeforeCommit(error))
                if jobs.len() > 1
                    && !error.is_transient()
                    && !matches!(error, crate::Error::Closed) =>
            {
                for (job, reply) in jobs.iter().zip(replies) {
                    let outcome = match commit(&pool, &*work, std::slice::from_ref(job)).await {
                        Ok(mut outcomes) => outcomes.pop().unwrap_or(Err(crate::Error::Closed)),
                        Err(Failure::BeforeCommit(error) | Failure::AtCommit(error)) => Err(error),
                    };
                    let _ = reply.send(outcome);
                }
            }
            Err(Failure::BeforeCommit(error) | Failure::AtCommit(error)) => {
                let mut replies = replies.into_iter();
                if let Some(first) = replies.next() {
                    for reply in replies {
                        let _ = reply.send(Err(shared(&error)));
                    }
                    let _ = first.send(Err(error));
                }
            }
        }
    }
}

fn answer<O>(replies: Vec<oneshot::Sender<Result<O>>>, outcomes: Vec<Result<O>>) {
    let mut outcomes = outcomes.into_iter();
    for reply in replies {
        // The caller may have gone away; its write still happened.
        let _ = reply.send(outcomes.next().unwrap_or(Err(crate::Error::Closed)));
    }
}

/// Another job's copy of a batch's error: the same kind, the text of the
/// cause.
fn shared(error: &crate::Error) -> crate::Error {
    match error {
        crate::Error::Closed => crate::Error::Closed,
        crate::Error::Unavailable { backend, source } => crate::Error::Unavailable {
            backend,
            source: source.to_string().into(),
        },
        other => crate::Error::Backend {
            backend: "postgres",
            source: other.to_string().into(),
        },
    }
}

enum Failure {
    BeforeCommit(crate::Error),
    AtCommit(crate::Error),
}

async fn commit<W: BatchWork>(
    pool: &PgPool,
    work: &W,
    jobs: &[W::Job],
) -> std::result::Result<Vec<Result<W::Output>>, Failure> {
    if work.one_statement(jobs) {
        let mut conn = pool
            .acquire()
            .await
            .map_err(|error| Failure::BeforeCommit(pg_error(error)))?;
        return work.run(&mut conn, jobs).await.map_err(|error| {
            // Cut off: it may have committed.
            if error.is_transient() {
                Failure::AtCommit(error)
            } else {
                Failure::BeforeCommit(error)
            }
        });
    }
    let mut tx = pool
        .begin()
        .await
        .map_err(|error| Failure::BeforeCommit(pg_error(error)))?;
    let outcomes = work
        .run(&mut tx, jobs)
        .await
        .map_err(Failure::BeforeCommit)?;
    tx.commit()
        .await
        .map_err(|error| Failure::AtCommit(pg_error(error)))?;
    Ok(outcomes)
}
