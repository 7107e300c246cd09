//! [`BackgroundTask`]: the one convention for work a component runs in the
//! background (session maintenance and flushing, health sweeps).

use std::future::Future;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Tasks a component runs in the background, held by the caller.
///
/// - Dropping it aborts the tasks at once (possibly mid-run): nothing runs
///   behind a caller that let go of it.
/// - [`shutdown`](Self::shutdown) asks them to stop between runs and
///   waits, so a pass under way completes first.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use smalltalk_types::BackgroundTask;
///
/// let mut task = BackgroundTask::new("ticker");
/// task.spawn(|mut stop| async move {
///     loop {
///         tokio::select! {
///             () = stop.stopped() => return,
///             () = tokio::time::sleep(std::time::Duration::from_millis(10)) => {}
///         }
///     }
/// });
/// task.shutdown().await;
/// # }
/// ```
#[derive(Debug)]
pub struct BackgroundTask {
    name: &'static str,
    handles: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

/// Handed to each background task: resolves once
/// [`BackgroundTask::shutdown`] is called.
#[derive(Debug, Clone)]
pub struct StopSignal(watch::Receiver<bool>);

impl StopSignal {
    /// Waits until a stop is requested (at once if it was already).
    pub async fn stopped(&mut self) {
        // An error means the BackgroundTask is gone: stop too.
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// Whether a stop was requested.
    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }
}

impl BackgroundTask {
    /// No tasks yet; `name` appears in logs.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            handles: Vec::new(),
            stop: watch::Sender::new(false),
        }
    }

    /// Spawns `task` on the current tokio runtime, with the signal it
    /// should stop on.
    pub fn spawn<F, Fut>(&mut self, task: F)
    where
        F: FnOnce(StopSignal) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let signal = StopSignal(self.stop.subscribe());
        self.handles.push(tokio::spawn(task(signal)));
    }

    /// Its name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Whether every task has returned (or none was spawned).
    pub fn is_finished(&self) -> bool {
        self.handles.iter().all(JoinHandle::is_finished)
    }

    /// Stops the tasks at once (the same as dropping it).
    pub fn stop(self) {}

    /// Asks the tasks to stop between runs and waits for them. A task that
    /// panicked is logged at ERROR.
    ///
    /// Cancel-safe: if this future is dropped before the tasks end (say,
    /// under a timeout), the ones still running are aborted, as on drop.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while let Some(handle) = self.handles.last_mut() {
            let ended = handle.await;
            self.handles.pop();
            if let Err(error) = ended {
                if error.is_panic() {
                    tracing::error!(task = self.name, "a background task panicked");
                }
            }
        }
    }
}

impl Drop for BackgroundTask {
    fn drop(&mut self) {
        self.handles.iter().for_each(JoinHandle::abort);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn shutdown_lets_the_run_under_way_finish() {
        let runs = Arc::new(AtomicU32::new(0));
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let (release_tx, release) = tokio::sync::oneshot::channel::<()>();
        let mut task = BackgroundTask::new("test");
        let counted = Arc::clone(&runs);
        task.spawn(|mut stop| async move {
            let _ = started_tx.send(());
            let _ = release.await;
            counted.fetch_add(1, Ordering::SeqCst);
            stop.stopped().await;
        });
        started.await.unwrap();
        let shutdown = tokio::spawn(task.shutdown());
        release_tx.send(()).unwrap();
        shutdown.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1, "the run completed");
    }

    #[tokio::test]
    async fn a_shutdown_given_up_on_still_aborts() {
        let (alive_tx, mut alive) = tokio::sync::mpsc::channel::<()>(1);
        let mut task = BackgroundTask::new("test");
        // Ignores the stop signal.
        task.spawn(|_| async move {
            let _keep = alive_tx;
            std::future::pending::<()>().await;
        });
        let gave_up =
            tokio::time::timeout(std::time::Duration::from_millis(1), task.shutdown()).await;
        assert!(gave_up.is_err());
        assert!(alive.recv().await.is_none(), "aborted with the shutdown");
    }

    #[tokio::test]
    async fn dropping_aborts() {
        let (alive_tx, mut alive) = tokio::sync::mpsc::channel::<()>(1);
        let mut task = BackgroundTask::new("test");
        task.spawn(|_| async move {
            let _keep = alive_tx;
            std::future::pending::<()>().await;
        });
        assert!(!task.is_finished());
        drop(task);
        // The sender is dropped with the aborted task.
        assert!(alive.recv().await.is_none());
    }
}
