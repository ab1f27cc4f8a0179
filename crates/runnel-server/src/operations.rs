//! Background operations: long admin work (retrying thousands of dead letters) runs on its
//! own task, reports progress at `GET /admin/operations/{id}` and can be cancelled with
//! `POST /admin/operations/{id}/cancel`.
//!
//! Bounded: at most [`RUNNING_MAX`] run at once (429 beyond) and the [`RETAINED_MAX`]
//! newest are kept, finished ones dropped oldest first.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::watch;
use uuid::Uuid;

/// Most operations running at once.
pub const RUNNING_MAX: usize = 4;
/// Most operations kept (running or finished); the oldest finished ones go first.
pub const RETAINED_MAX: usize = 100;

/// Where an operation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

/// What an operation has done so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// Items selected when it started.
    pub total: u64,
    /// Items done successfully (for a retry: published again).
    pub succeeded: u64,
    /// Items passed over, with why for the first few in `errors`.
    pub skipped: u64,
}

/// One operation as `GET /admin/operations/{id}` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct OperationView {
    pub id: Uuid,
    /// What it does, e.g. `dead-letters.retry`.
    pub kind: &'static str,
    pub status: OperationStatus,
    pub progress: Progress,
    /// The key that started it.
    pub started_by: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The request that started it (filter, target, rate).
    pub request: serde_json::Value,
    /// Why it failed, or the reasons for skipped items (the first few).
    pub errors: Vec<String>,
}

struct Entry {
    view: OperationView,
    cancel: watch::Sender<bool>,
}

/// The operations of one server.
#[derive(Clone, Default)]
pub struct Operations {
    entries: Arc<Mutex<VecDeque<Entry>>>,
}

/// Why an operation could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{RUNNING_MAX} operations are running already; wait for one to finish or cancel one")]
    TooMany,
}

/// The running side of an operation: report progress, learn of cancellation, finish.
pub struct OperationHandle {
    id: Uuid,
    operations: Operations,
    cancelled: watch::Receiver<bool>,
}

impl Operations {
    /// Registers a running operation; the caller runs it and reports through the handle.
    pub fn start(
        &self,
        kind: &'static str,
        started_by: &str,
        request: serde_json::Value,
        total: u64,
    ) -> Result<(OperationView, OperationHandle), StartError> {
        let mut entries = self.entries.lock().expect("operations lock");
        let running = entries
            .iter()
            .filter(|e| e.view.status == OperationStatus::Running)
            .count();
        if running >= RUNNING_MAX {
            return Err(StartError::TooMany);
        }
        while entries.len() >= RETAINED_MAX {
            match entries
                .iter()
                .position(|e| e.view.status != OperationStatus::Running)
            {
                Some(i) => {
                    entries.remove(i);
                }
                None => break,
            }
        }
        let (cancel, cancelled) = watch::channel(false);
        let view = OperationView {
            id: Uuid::now_v7(),
            kind,
            status: OperationStatus::Running,
            progress: Progress {
                total,
                ..Progress::default()
            },
            started_by: started_by.to_string(),
            started_at: Utc::now(),
            finished_at: None,
            request,
            errors: Vec::new(),
        };
        entries.push_back(Entry {
            view: view.clone(),
            cancel,
        });
        let handle = OperationHandle {
            id: view.id,
            operations: self.clone(),
            cancelled,
        };
        Ok((view, handle))
    }

    /// One operation.
    pub fn get(&self, id: Uuid) -> Option<OperationView> {
        let entries = self.entries.lock().expect("operations lock");
        entries
            .iter()
            .find(|e| e.view.id == id)
            .map(|e| e.view.clone())
    }

    /// Every retained operation, newest first.
    pub fn list(&self) -> Vec<OperationView> {
        let entries = self.entries.lock().expect("operations lock");
        entries.iter().rev().map(|e| e.view.clone()).collect()
    }

    /// Asks a running operation to stop; `None` if there is no such operation. A finished
    /// operation is returned as it is.
    pub fn cancel(&self, id: Uuid) -> Option<OperationView> {
        let entries = self.entries.lock().expect("operations lock");
        let entry = entries.iter().find(|e| e.view.id == id)?;
        if entry.view.status == OperationStatus::Running {
            let _ = entry.cancel.send(true);
        }
        Some(entry.view.clone())
    }

    fn update(&self, id: Uuid, f: impl FnOnce(&mut OperationView)) {
        let mut entries = self.entries.lock().expect("operations lock");
        if let Some(entry) = entries.iter_mut().find(|e| e.view.id == id) {
            f(&mut entry.view);
        }
    }
}

/// Most error texts an operation keeps.
pub const ERRORS_KEPT_MAX: usize = 20;

impl OperationHandle {
    /// The operation's id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// Records progress.
    pub fn progress(&self, progress: Progress) {
        self.operations.update(self.id, |v| v.progress = progress);
    }

    /// Whether a cancel was asked for.
    pub fn is_cancelled(&self) -> bool {
        *self.cancelled.borrow()
    }

    /// A receiver that turns `true` on cancel (to wait on).
    pub fn cancelled(&self) -> watch::Receiver<bool> {
        self.cancelled.clone()
    }

    /// Ends the operation: `status`, with error texts (the first [`ERRORS_KEPT_MAX`]).
    pub fn finish(self, status: OperationStatus, errors: Vec<String>) {
        self.operations.update(self.id, |v| {
            v.status = status;
            v.finished_at = Some(Utc::now());
            v.errors = errors.into_iter().take(ERRORS_KEPT_MAX).collect();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_operations_are_bounded_and_finished_ones_are_evicted_first() {
        let ops = Operations::default();
        let mut handles = Vec::new();
        for _ in 0..RUNNING_MAX {
            handles.push(ops.start("t", "k", serde_json::Value::Null, 1).unwrap().1);
        }
        assert!(matches!(
            ops.start("t", "k", serde_json::Value::Null, 1),
            Err(StartError::TooMany)
        ));
        handles
            .pop()
            .unwrap()
            .finish(OperationStatus::Succeeded, vec![]);
        let (_, h) = ops.start("t", "k", serde_json::Value::Null, 1).unwrap();
        h.finish(OperationStatus::Succeeded, vec![]);
        for h in handles {
            h.finish(OperationStatus::Cancelled, vec![]);
        }
        for _ in 0..RETAINED_MAX + 10 {
            let (_, h) = ops.start("t", "k", serde_json::Value::Null, 1).unwrap();
            h.finish(OperationStatus::Succeeded, vec![]);
        }
        assert_eq!(ops.list().len(), RETAINED_MAX);
    }

    #[test]
    fn cancel_reaches_the_handle() {
        let ops = Operations::default();
        let (view, h) = ops.start("t", "k", serde_json::Value::Null, 1).unwrap();
        assert!(!h.is_cancelled());
        assert_eq!(
            ops.cancel(view.id).unwrap().status,
            OperationStatus::Running
        );
        assert!(h.is_cancelled());
        assert!(ops.cancel(Uuid::now_v7()).is_none());
    }
}
