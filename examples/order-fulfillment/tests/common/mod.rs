//! Test wiring: the order application over an in-memory store, and a store wrapper that
//! lets a test slip a rival command in just before the next append.

#![allow(dead_code)] // each test binary uses a different part

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use order_fulfillment::{order_repository, register, upcasters, Order, OrderLine, PlaceOrder};
use runnel::core::{
    async_trait, AppendResult, EventFilter, EventStore, ExpectedRevision, NewEvent, Position,
    ReadStream, RecordedEvent, SnapshotStore, StoreError, StoreLimits, StreamInfo, StreamName,
};
use runnel::{CommandBus, QueryBus, Repository, RetryPolicy};
use runnel_testkit::InMemoryStore;

pub struct App {
    pub store: InMemoryStore,
    pub hooked: HookedStore,
    pub repository: Repository<Order>,
    pub commands: CommandBus,
    pub queries: QueryBus,
}

/// The order application over a fresh in-memory store (events and snapshots), with
/// immediate retries so tests never wait on backoff.
pub fn app() -> App {
    let store = InMemoryStore::new();
    let hooked = HookedStore::new(store.clone());
    let snapshots: Arc<dyn SnapshotStore> = Arc::new(store.clone());
    let repository = order_repository(
        Arc::new(hooked.clone()),
        Some(snapshots),
        Arc::new(upcasters().unwrap()),
    )
    .with_retry_policy(RetryPolicy::immediate(5));
    let (commands, queries) = (CommandBus::new(), QueryBus::new());
    register(&commands, &queries, repository.clone()).unwrap();
    App {
        store,
        hooked,
        repository,
        commands,
        queries,
    }
}

pub fn place(order_id: &str) -> PlaceOrder {
    PlaceOrder {
        order_id: order_id.into(),
        customer_id: "cust-1".into(),
        items: vec![
            OrderLine::new("sku-apple", 3, 120),
            OrderLine::new("sku-pear", 1, 250),
        ],
        shipping_address: "1 Dock Road, Hull".into(),
        billing_address: None,
    }
}

/// Every stored event of `stream`, oldest first.
pub async fn stored(store: &InMemoryStore, stream: &str) -> Vec<RecordedEvent> {
    store
        .read_stream(&StreamName::new(stream).unwrap(), ReadStream::forward(1000))
        .await
        .unwrap()
}

pub fn types(events: &[RecordedEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event_type.as_str()).collect()
}

/// An `InMemoryStore` that runs a one-shot hook just before the next append goes through,
/// so a test can commit a rival write between a command's load and its append.
#[derive(Clone)]
pub struct HookedStore {
    inner: InMemoryStore,
    hook: Arc<Mutex<Option<BoxFuture<'static, ()>>>>,
}

impl HookedStore {
    pub fn new(inner: InMemoryStore) -> Self {
        HookedStore {
            inner,
            hook: Arc::default(),
        }
    }

    pub fn before_next_append(&self, hook: BoxFuture<'static, ()>) {
        *self.hook.lock().unwrap() = Some(hook);
    }
}

#[async_trait]
impl EventStore for HookedStore {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        // Taken out before running, so appends made by the hook itself pass straight through.
        let hook = self.hook.lock().unwrap().take();
        if let Some(hook) = hook {
            hook.await;
        }
        self.inner.append(stream, expected, events).await
    }
    async fn read_stream(
        &self,
        stream: &StreamName,
        options: ReadStream,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_stream(stream, options).await
    }
    async fn read_all(
        &self,
        after: Position,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_all(after, filter, limit).await
    }
    async fn read_by_type(
        &self,
        event_type: &str,
        since: chrono::DateTime<chrono::Utc>,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner
            .read_by_type(event_type, since, after, limit)
            .await
    }
    async fn stream_revision(&self, stream: &StreamName) -> Result<Option<u64>, StoreError> {
        self.inner.stream_revision(stream).await
    }
    async fn list_streams(
        &self,
        category: Option<&str>,
        after: Option<&StreamName>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>, StoreError> {
        self.inner.list_streams(category, after, limit).await
    }
    async fn head_position(&self) -> Result<Position, StoreError> {
        self.inner.head_position().await
    }
    async fn wait_for_events(&self, after: Position, max_wait: Duration) -> Result<(), StoreError> {
        self.inner.wait_for_events(after, max_wait).await
    }
    fn limits(&self) -> &StoreLimits {
        self.inner.limits()
    }
}
