//! Test wiring: the order application over an in-memory store, and a store wrapper that
//! lets a test slip a rival command in just before the next append.

#![allow(dead_code)] // each test binary uses a different part

use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use order_fulfillment::{order_repository, register, upcasters, Order, OrderLine, PlaceOrder};
use runnel::core::{
    async_trait, AppendResult, EventStore, ExpectedRevision, NewEvent, ReadStream, RecordedEvent,
    SnapshotStore, StoreError, StreamName,
};
use runnel::{CommandBus, QueryBus, Repository, RetryPolicy};
use runnel_testkit::append_hook::{AppendHook, HookedAppends};
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
    let hooked = hooked_store(store.clone());
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

/// An `InMemoryStore` whose next append first runs a one-shot hook
/// ([`BeforeNextAppend`]), so a test can commit a rival write between a command's load and
/// its append.
pub type HookedStore = HookedAppends<InMemoryStore, BeforeNextAppend>;

/// `store`, with no hook armed yet.
pub fn hooked_store(store: InMemoryStore) -> HookedStore {
    HookedAppends::new(Arc::new(store), BeforeNextAppend::default())
}

/// A one-shot hook run just before the next append goes through. Clones share it.
#[derive(Clone, Default)]
pub struct BeforeNextAppend {
    hook: Arc<Mutex<Option<BoxFuture<'static, ()>>>>,
}

impl BeforeNextAppend {
    pub fn before_next_append(&self, hook: BoxFuture<'static, ()>) {
        *self.hook.lock().unwrap() = Some(hook);
    }
}

#[async_trait]
impl AppendHook for BeforeNextAppend {
    async fn append<S: EventStore + ?Sized>(
        &self,
        inner: &S,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        // Taken out before running, so appends made by the hook itself pass straight through.
        let hook = self.hook.lock().unwrap().take();
        if let Some(hook) = hook {
            hook.await;
        }
        inner.append(stream, expected, events).await
    }
}

/// The URL in `var` (a real service's), or `None` after a loud SKIPPED — a failure under
/// `RUNNEL_REQUIRE_SERVICES=1`, where no backend test may skip.
pub fn service_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("RUNNEL_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "{var} is not set but RUNNEL_REQUIRE_SERVICES=1"
            );
            eprintln!("SKIPPED: {var} is not set");
            None
        }
    }
}

/// `url` with subject and stream prefixes of its own (`{prefix}{tag}`), so concurrent
/// tests on one NATS server do not share topics.
pub fn nats_bus_of_its_own(url: &str, prefix: &str) -> String {
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let tag = &tag[tag.len() - 12..];
    let sep = if url.contains('?') { '&' } else { '?' };
    format!(
        "{url}{sep}subject_prefix={prefix}{tag}&stream_prefix={}{tag}",
        prefix.to_uppercase()
    )
}

/// The stdout of a command that must have succeeded (its stderr in the failure message).
pub fn success_stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The one-line JSON summary of a demo that must have succeeded.
pub fn demo_summary(out: &std::process::Output) -> serde_json::Value {
    let stdout = success_stdout(out);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON summary: {stdout}");
    serde_json::from_str(lines[0]).unwrap()
}

/// The demo's fixed mix of failures over orders 0..60: 56 confirmed, 3 compensated (one out
/// of stock, two declined), 1 dead-lettered, every order verified.
pub fn assert_fixed_mix_of_60(v: &serde_json::Value) {
    assert_eq!(v["verified"], 60, "{v}");
    assert_eq!(v["confirmed"], 56, "{v}");
    assert_eq!(v["compensated"], 3, "{v}");
    assert_eq!(v["dead_lettered"], 1, "{v}");
}
