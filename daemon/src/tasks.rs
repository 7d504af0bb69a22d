//! A daemon's long-lived tasks, named and supervised: a task that ends before shutdown —
//! with an error, a panic, or simply returning — stops the whole daemon with a non-zero
//! exit, so systemd restarts it instead of leaving a process that answers while doing
//! nothing.

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::task::{Id, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

/// Why a supervised task set stopped a daemon.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// A task returned an error.
    #[error("task {name} failed: {error}")]
    Failed {
        /// The task's name.
        name: &'static str,
        /// Its error.
        error: String,
    },
    /// A task panicked.
    #[error("task {name} panicked: {message}")]
    Panicked {
        /// The task's name.
        name: &'static str,
        /// The panic's message.
        message: String,
    },
    /// A task returned before shutdown, though it should run until then.
    #[error("task {name} ended before shutdown")]
    Ended {
        /// The task's name.
        name: &'static str,
    },
}

/// Named tasks that run until `shutdown`; see the module documentation.
#[derive(Debug)]
pub struct Tasks {
    set: JoinSet<Result<(), String>>,
    names: HashMap<Id, &'static str>,
    shutdown: CancellationToken,
}

impl Tasks {
    /// An empty set; `shutdown` is the daemon's token, cancelled when a task fails.
    pub fn new(shutdown: CancellationToken) -> Tasks {
        Tasks {
            set: JoinSet::new(),
            names: HashMap::new(),
            shutdown,
        }
    }

    /// Spawns `task` under `name`. It should run until the shutdown token is cancelled.
    pub fn spawn<F, E>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Display,
    {
        let handle = self
            .set
            .spawn(async move { task.await.map_err(|e| e.to_string()) });
        self.names.insert(handle.id(), name);
    }

    /// Spawns `task`, which cannot fail but must not end before shutdown either.
    pub fn spawn_infallible<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn(name, async move {
            task.await;
            Ok::<(), std::convert::Infallible>(())
        });
    }

    /// Waits until shutdown, or until a task ends first: then logs which one and why,
    /// cancels shutdown (the other tasks stop) and returns the failure.
    pub async fn supervise(&mut self) -> Result<(), TaskError> {
        let ended = tokio::select! {
            biased;
            () = self.shutdown.cancelled() => return Ok(()),
            ended = self.set.join_next_with_id() => ended,
        };
        let Some(ended) = ended else {
            // No task at all: nothing to supervise until shutdown.
            self.shutdown.cancelled().await;
            return Ok(());
        };
        // A task may see the token and end before this select does.
        let stopping = self.shutdown.is_cancelled();
        let Some(failure) = self.failure(ended, stopping) else {
            return Ok(());
        };
        error!(error = %failure, "a daemon task ended: stopping");
        self.shutdown.cancel();
        Err(failure)
    }

    /// After shutdown: waits up to `grace` for every task to end, then aborts the rest (a
    /// server whose open requests did not finish: logged, not a failure). Returns the
    /// first failure among them, if any.
    pub async fn join(mut self, grace: Duration) -> Result<(), TaskError> {
        self.shutdown.cancel();
        let mut first = None;
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            match tokio::time::timeout_at(deadline, self.set.join_next_with_id()).await {
                Ok(None) => break,
                Ok(Some(ended)) => {
                    if let Some(failure) = self.failure(ended, true) {
                        error!(error = %failure, "a daemon task failed while stopping");
                        first.get_or_insert(failure);
                    }
                }
                Err(_) => {
                    let mut names: Vec<&'static str> = self.names.values().copied().collect();
                    names.sort_unstable();
                    warn!(tasks = ?names, ?grace, "tasks did not stop in time; aborting them");
                    self.set.abort_all();
                    break;
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// What a task's end means; `None` for a clean end during shutdown.
    fn failure(
        &mut self,
        ended: Result<(Id, Result<(), String>), JoinError>,
        stopping: bool,
    ) -> Option<TaskError> {
        match ended {
            Ok((id, result)) => {
                let name = self.names.remove(&id).unwrap_or("unknown");
                match result {
                    Err(error) => Some(TaskError::Failed { name, error }),
                    Ok(()) if stopping => None,
                    Ok(()) => Some(TaskError::Ended { name }),
                }
            }
            Err(e) => {
                let name = self.names.remove(&e.id()).unwrap_or("unknown");
                if e.is_cancelled() {
                    return (!stopping).then_some(TaskError::Ended { name });
                }
                Some(TaskError::Panicked {
                    name,
                    message: panic_message(e),
                })
            }
        }
    }
}

fn panic_message(e: JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into()),
        Err(e) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn until_shutdown(shutdown: CancellationToken) -> Result<(), String> {
        shutdown.cancelled().await;
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_stops_the_daemon_and_is_named() {
        let shutdown = CancellationToken::new();
        let mut tasks = Tasks::new(shutdown.clone());
        tasks.spawn("reconcile", until_shutdown(shutdown.clone()));
        tasks.spawn_infallible("gossip", async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            panic!("socket gone");
        });
        let failure = tasks.supervise().await.expect_err("a task died");
        assert_eq!(
            failure,
            TaskError::Panicked {
                name: "gossip",
                message: "socket gone".into()
            }
        );
        assert!(shutdown.is_cancelled(), "the other tasks are told to stop");
        tasks
            .join(Duration::from_secs(1))
            .await
            .expect("the others stop cleanly");
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_or_an_early_return_stops_the_daemon() {
        let shutdown = CancellationToken::new();
        let mut tasks = Tasks::new(shutdown.clone());
        tasks.spawn("link", async { Err::<(), _>("refused") });
        assert_eq!(
            tasks.supervise().await,
            Err(TaskError::Failed {
                name: "link",
                error: "refused".into()
            })
        );

        let shutdown = CancellationToken::new();
        let mut tasks = Tasks::new(shutdown.clone());
        tasks.spawn_infallible("routing", async {});
        assert_eq!(
            tasks.supervise().await,
            Err(TaskError::Ended { name: "routing" })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_clean_shutdown_is_ok_and_a_task_outliving_the_grace_is_aborted() {
        let shutdown = CancellationToken::new();
        let mut tasks = Tasks::new(shutdown.clone());
        tasks.spawn("reconcile", until_shutdown(shutdown.clone()));
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            trigger.cancel();
        });
        tasks.supervise().await.expect("shutdown is not a failure");
        tasks.join(Duration::from_secs(1)).await.expect("clean");

        let shutdown = CancellationToken::new();
        let mut tasks = Tasks::new(shutdown.clone());
        tasks.spawn_infallible("server", std::future::pending());
        shutdown.cancel();
        tasks.supervise().await.expect("shutdown");
        let started = tokio::time::Instant::now();
        tasks
            .join(Duration::from_secs(2))
            .await
            .expect("a task that outlives the grace is aborted, not a failure");
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }
}
