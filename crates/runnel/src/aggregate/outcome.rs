//! What loading an aggregate and running a command return.

use runnel_core::{Position, StreamName};
use serde::{Deserialize, Serialize};

/// An aggregate's current state and the stream revision it includes.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded<A> {
    pub state: A,
    /// The revision of the last event folded into `state` (`None`: the stream does not
    /// exist and `state` is the default).
    pub revision: Option<u64>,
}

impl<A> Loaded<A> {
    /// Whether the aggregate has any events.
    pub fn exists(&self) -> bool {
        self.revision.is_some()
    }
}

/// The result of a command the aggregate accepted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecuteOutcome<E> {
    /// The aggregate's stream.
    pub stream: StreamName,
    /// The stream's revision after the command (`None`: the stream still does not exist,
    /// because the command produced no events for a new aggregate).
    pub revision: Option<u64>,
    /// The global position of the last event of the commit that stored the command's
    /// events (`None`: nothing was appended). With the state cache several commands on one
    /// aggregate may share a commit, so this can be after the command's own last event.
    /// Wait for a projection to reach it to read your own write.
    pub position: Option<Position>,
    /// The events the command produced and the store now holds, in order. Empty when the
    /// aggregate decided there was nothing to do; then nothing was appended.
    pub events: Vec<E>,
    /// How many times the command was handled (1 unless concurrency conflicts were retried).
    pub attempts: u32,
}

impl<E> ExecuteOutcome<E> {
    /// Whether anything was appended.
    pub fn appended(&self) -> bool {
        !self.events.is_empty()
    }
}
