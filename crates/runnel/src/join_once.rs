//! [`JoinOnce`]: a spawned task's outcome that can be waited for more than once.

use tokio::task::JoinHandle;

/// A spawned task whose end can be awaited from a `select!` (cancel-safe) and again
/// afterwards: a `JoinHandle` may be polled to completion only once, so the first wait
/// that sees the task end keeps its outcome for every later one. A panic or an abort is
/// kept as its message.
#[derive(Debug)]
pub(crate) struct JoinOnce<T> {
    handle: JoinHandle<T>,
    done: Option<Result<T, String>>,
}

impl<T: Clone> JoinOnce<T> {
    pub(crate) fn new(handle: JoinHandle<T>) -> Self {
        JoinOnce { handle, done: None }
    }

    /// Waits until the task ends; its outcome, or why it did not finish.
    pub(crate) async fn join(&mut self) -> Result<T, String> {
        if self.done.is_none() {
            // Cancel-safe: nothing is stored until the handle has completed, and the
            // outcome is stored in the same poll that completes it.
            let joined = (&mut self.handle).await.map_err(|e| e.to_string());
            self.done = Some(joined);
        }
        self.done
            .clone()
            .unwrap_or_else(|| Err("the task's outcome was lost".into()))
    }

    /// Whether the task has ended.
    pub(crate) fn is_finished(&self) -> bool {
        self.done.is_some() || self.handle.is_finished()
    }

    /// Stops the task at once.
    pub(crate) fn abort(&self) {
        self.handle.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_outcome_is_kept_for_every_wait_after_the_first() {
        let mut task = JoinOnce::new(tokio::spawn(async { 7 }));
        assert_eq!(task.join().await, Ok(7));
        assert!(task.is_finished());
        assert_eq!(task.join().await, Ok(7));
    }

    #[tokio::test]
    async fn a_panic_is_kept_as_its_message() {
        let mut task = JoinOnce::new(tokio::spawn(async {
            panic!("boom");
        }));
        let err: Result<(), String> = task.join().await;
        assert!(err.unwrap_err().contains("panicked"));
    }

    #[tokio::test]
    async fn a_wait_cancelled_by_select_loses_nothing() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut task = JoinOnce::new(tokio::spawn(async move {
            let _ = rx.await;
            3
        }));
        tokio::select! {
            _ = task.join() => panic!("the task cannot have ended yet"),
            _ = tokio::task::yield_now() => {}
        }
        tx.send(()).unwrap();
        assert_eq!(task.join().await, Ok(3));
    }
}
