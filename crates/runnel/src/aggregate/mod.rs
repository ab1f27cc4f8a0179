//! Event-sourced aggregates: the [`Aggregate`] trait and the [`Repository`] that loads
//! them, runs their commands and stores their events.

mod error;
mod outcome;
mod repository;
mod snapshot_policy;
mod state_cache;

pub use error::RepositoryError;
pub use outcome::{ExecuteOutcome, Loaded};
pub use repository::{Repository, GROUP_COMMANDS_MAX, GROUP_EVENTS_MAX, LOAD_PAGE_EVENTS};
// The policy is shared with the consumer router's retry layer; it lives in `crate::retry`.
pub use crate::retry::RetryPolicy;
pub use snapshot_policy::SnapshotPolicy;

use runnel_core::DomainEvent;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A consistency boundary whose state is the fold of its events.
///
/// Three things make an aggregate: a type name, a decision (`handle`: command → events or
/// an error, never a side effect) and a state transition (`apply`: event → new state,
/// never failing). The [`Repository`] does everything else: loading, appending with
/// optimistic concurrency, retrying conflicts, snapshots and upcasting.
///
/// The state must be `Default` (the state before the first event) and serde-serializable
/// (snapshots). Bump [`Aggregate::SNAPSHOT_VERSION`] whenever the state's serialized shape
/// changes: older snapshots are then ignored and the state is rebuilt from events.
///
/// ```
/// use runnel::Aggregate;
/// use runnel::core::DomainEvent;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Default, Serialize, Deserialize)]
/// struct Counter {
///     value: u64,
/// }
///
/// enum CounterCommand {
///     Add(u64),
/// }
///
/// #[derive(Debug, PartialEq, Serialize, Deserialize)]
/// enum CounterEvent {
///     Added { amount: u64 },
/// }
///
/// impl DomainEvent for CounterEvent {
///     fn event_type(&self) -> &'static str {
///         "Added"
///     }
/// }
///
/// #[derive(Debug, thiserror::Error)]
/// enum CounterError {
///     #[error("adding {0} would overflow the counter")]
///     Overflow(u64),
/// }
///
/// impl Aggregate for Counter {
///     const TYPE: &'static str = "Counter";
///     type Command = CounterCommand;
///     type Event = CounterEvent;
///     type Error = CounterError;
///
///     fn handle(&self, command: CounterCommand) -> Result<Vec<CounterEvent>, CounterError> {
///         match command {
///             CounterCommand::Add(0) => Ok(vec![]), // nothing to record
///             CounterCommand::Add(n) => match self.value.checked_add(n) {
///                 Some(_) => Ok(vec![CounterEvent::Added { amount: n }]),
///                 None => Err(CounterError::Overflow(n)),
///             },
///         }
///     }
///
///     fn apply(&mut self, event: &CounterEvent) {
///         match event {
///             CounterEvent::Added { amount } => self.value += amount,
///         }
///     }
/// }
///
/// let mut counter = Counter::default();
/// for event in counter.handle(CounterCommand::Add(2)).unwrap() {
///     counter.apply(&event);
/// }
/// assert_eq!(counter.value, 2);
/// assert!(counter.handle(CounterCommand::Add(u64::MAX)).is_err());
/// ```
pub trait Aggregate: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The aggregate type's name. It is also the stream category: the events of the
    /// aggregate with id `id` live in stream `{TYPE}-{id}`.
    const TYPE: &'static str;

    /// The version of the state's serialized shape, stored with every snapshot. A snapshot
    /// of any other version is ignored on load.
    const SNAPSHOT_VERSION: u32 = 1;

    /// What the aggregate can be asked to do.
    type Command: Send + 'static;

    /// What the aggregate records.
    type Event: DomainEvent;

    /// Why the aggregate refuses a command.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Decides what happens: the events a command produces in the current state, or why it
    /// is refused. An empty list means "nothing to do"; nothing is appended.
    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Moves the state forward by one event. Events are facts: this must not fail.
    fn apply(&mut self, event: &Self::Event);
}
