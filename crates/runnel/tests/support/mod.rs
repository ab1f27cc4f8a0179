//! Shared test fixtures: a tiny `Counter` aggregate and a store whose appends can be
//! disturbed with concurrent writers and transient failures at exact points.

#![allow(dead_code)] // each test binary uses a different part

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use runnel::core::codec;
use runnel::core::{
    async_trait, AppendResult, DomainEvent, EventId, EventStore, ExpectedRevision, Metadata,
    NewEvent, ReadStream, RecordedEvent, Snapshot, SnapshotStore, StoreError, StreamName,
};
use runnel::{Aggregate, UpcastError, Upcasters};
use runnel_testkit::append_hook::{AppendHook, HookedAppends};
use runnel_testkit::InMemoryStore;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counter {
    pub value: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum CounterCommand {
    Add(u64),
    Refuse,
}

/// `Added` is at schema version 2: version 1 called the field `n`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CounterEvent {
    Added { amount: u64 },
}

impl DomainEvent for CounterEvent {
    fn event_type(&self) -> &'static str {
        "Added"
    }
    fn schema_version(_: &str) -> u32 {
        2
    }
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("the counter refuses")]
pub struct Refused;

impl Aggregate for Counter {
    const TYPE: &'static str = "Counter";
    type Command = CounterCommand;
    type Event = CounterEvent;
    type Error = Refused;

    fn handle(&self, command: CounterCommand) -> Result<Vec<CounterEvent>, Refused> {
        match command {
            CounterCommand::Add(0) => Ok(vec![]),
            CounterCommand::Add(amount) => Ok(vec![CounterEvent::Added { amount }]),
            CounterCommand::Refuse => Err(Refused),
        }
    }

    fn apply(&mut self, CounterEvent::Added { amount }: &CounterEvent) {
        self.value += amount;
    }
}

/// The upcaster for `Added` v1 (`{"n": ..}`) → v2 (`{"amount": ..}`).
pub fn counter_upcasters() -> Upcasters {
    let mut up = Upcasters::new();
    up.register("Added", 1, |mut v: Value| {
        let obj = v.as_object_mut().ok_or_else(UpcastError::not_an_object)?;
        let n = obj
            .remove("n")
            .ok_or_else(|| UpcastError::missing_field("n"))?;
        obj.insert("amount".into(), n);
        Ok(v)
    })
    .unwrap();
    up
}

/// A current-version `Added` event, as a rival writer would append it.
pub fn added(amount: u64) -> NewEvent {
    codec::encode(&CounterEvent::Added { amount }, Metadata::default()).unwrap()
}

/// The store the repository tests disturb: an `InMemoryStore` whose appends go through
/// [`Disturbances`].
pub type DisturbedStore = HookedAppends<InMemoryStore, Disturbances>;

/// A fresh in-memory store with no disturbance armed.
pub fn disturbed_store() -> DisturbedStore {
    HookedAppends::new(Arc::new(InMemoryStore::new()), Disturbances::default())
}

/// Disturbances of the next appends:
/// * `race_next(n)`: before each of the next `n` appends, a rival writer appends
///   `Added { amount: 100 }` to the same stream, so the append conflicts;
/// * `lose_ack_next(n)`: the next `n` appends land, then report `Unavailable` (a lost
///   acknowledgement);
/// * `fail_next(n)`: the next `n` appends fail with `Unavailable` without landing.
///
/// Every append call's event ids are recorded. Clones share their state.
#[derive(Clone, Default)]
pub struct Disturbances {
    race: Arc<AtomicU32>,
    lose_ack: Arc<AtomicU32>,
    fail: Arc<AtomicU32>,
    append_calls: Arc<Mutex<Vec<Vec<EventId>>>>,
}

pub const RIVAL_AMOUNT: u64 = 100;

impl Disturbances {
    pub fn race_next(&self, n: u32) {
        self.race.store(n, Ordering::SeqCst);
    }
    pub fn lose_ack_next(&self, n: u32) {
        self.lose_ack.store(n, Ordering::SeqCst);
    }
    pub fn fail_next(&self, n: u32) {
        self.fail.store(n, Ordering::SeqCst);
    }
    pub fn append_calls(&self) -> Vec<Vec<EventId>> {
        self.append_calls.lock().unwrap().clone()
    }
}

fn take_one(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

#[async_trait]
impl AppendHook for Disturbances {
    async fn append<S: EventStore + ?Sized>(
        &self,
        inner: &S,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        self.append_calls
            .lock()
            .unwrap()
            .push(events.iter().map(|e| e.id).collect());
        if take_one(&self.fail) {
            return Err(StoreError::Unavailable("injected: connection reset".into()));
        }
        if take_one(&self.race) {
            inner
                .append(stream, ExpectedRevision::Any, vec![added(RIVAL_AMOUNT)])
                .await?;
        }
        let result = inner.append(stream, expected, events).await?;
        if take_one(&self.lose_ack) {
            return Err(StoreError::Unavailable("injected: ack lost".into()));
        }
        Ok(result)
    }
}

/// A snapshot store that is down.
pub struct BrokenSnapshots;

#[async_trait]
impl SnapshotStore for BrokenSnapshots {
    async fn save_snapshot(&self, _: Snapshot) -> Result<(), StoreError> {
        Err(StoreError::Unavailable(
            "injected: snapshot store down".into(),
        ))
    }
    async fn load_snapshot(&self, _: &StreamName) -> Result<Option<Snapshot>, StoreError> {
        Err(StoreError::Unavailable(
            "injected: snapshot store down".into(),
        ))
    }
    async fn delete_snapshot(&self, _: &StreamName) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Every event of `stream`, oldest first.
pub async fn stored(store: &dyn EventStore, stream: &str) -> Vec<RecordedEvent> {
    store
        .read_stream(&StreamName::new(stream).unwrap(), ReadStream::forward(1000))
        .await
        .unwrap()
}
