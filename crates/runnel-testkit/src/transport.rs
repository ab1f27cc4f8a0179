//! The transport conformance suite: one check per behaviour promised by the
//! [`Publisher`] and [`Subscriber`] trait docs in `runnel_core::bus`. A transport — the
//! embedded bus on SQLite or PostgreSQL, or a broker — is done when it passes all of them.
//!
//! Use the [`transport_conformance!`](crate::transport_conformance) macro in the
//! transport's `tests/` folder. It expands to one `#[test]` per check, named after the
//! behaviour it proves, each on a fresh transport from the factory in its own
//! multi-threaded tokio runtime:
//!
//! ```ignore
//! // crates/runnel-sqlite/tests/bus_conformance.rs
//! runnel_testkit::transport_conformance!(async {
//!     let store = runnel_sqlite::SqliteStore::open_temporary().expect("open");
//!     let bus = runnel_sqlite::bus::SqliteBus::new(store, Default::default()).expect("bus");
//!     runnel_testkit::transport::TransportUnderTest::from_bus(bus)
//! });
//! ```
//!
//! The factory returns a [`TransportUnderTest`] — or `Option<TransportUnderTest>`, where
//! `None` means the transport's service is not configured: the check prints `SKIPPED` and
//! passes, unless `RUNNEL_REQUIRE_SERVICES=1` is set, in which case it fails.
//!
//! A transport that can connect several independent clients (as separate processes would)
//! should add them with [`TransportUnderTest::with_subscriber`]: checks that use several
//! consumers of one group put them on different clients in turn, and the consumer-crash
//! check redelivers to a client other than the one that crashed.
//!
//! Timing: every wait has a deadline ([`DELIVERY_WAIT_DEADLINE`]). Redelivery checks use
//! a short ack timeout ([`SHORT_ACK_TIMEOUT`]) and nack delay ([`NACK_DELAY`]) in whole
//! seconds, the granularity of the coarsest broker (SQS). The only fixed durations are the
//! windows in which a check asserts that *nothing* arrives: [`QUIET_WINDOW`], and once
//! [`EXTEND_QUIET_WINDOW`], which must outlast the ack timeout to show an extension works.
//! Each check uses its own freshly named topics and groups, so transports that cannot
//! isolate checks otherwise (a shared broker) still run them independently.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use runnel_core::bus::{
    Delivery, DeliveryStream, Publisher, StartPosition, SubscribeOptions, Subscriber,
    MAX_IN_FLIGHT_MAX, NACK_DELAY_MAX,
};
use runnel_core::chrono::{DateTime, Utc};
use runnel_core::message::{MESSAGE_PAYLOAD_MAX_DEFAULT, PUBLISH_BATCH_MAX};
use runnel_core::{BusError, GroupName, Message, TopicName};
use serde_json::json;

use crate::harness::{within_for, Must};

/// Longest wait for one expected delivery (including a redelivery after
/// [`SHORT_ACK_TIMEOUT`] or [`NACK_DELAY`]).
pub const DELIVERY_WAIT_DEADLINE: Duration = Duration::from_secs(15);
/// Longest one whole check may run before it fails as hung.
pub const CHECK_DEADLINE: Duration = Duration::from_secs(180);
/// How long a check watches for something that must not happen (a duplicate, a message
/// of a blocked key, a delivery beyond `max_in_flight`).
pub const QUIET_WINDOW: Duration = Duration::from_millis(300);
/// The ack timeout of checks that wait for a redelivery.
pub const SHORT_ACK_TIMEOUT: Duration = Duration::from_secs(1);
/// The delay of the delayed-nack checks.
pub const NACK_DELAY: Duration = Duration::from_secs(1);
/// How much earlier than its timeout or delay a redelivery may be observed: covers the
/// gap between the transport starting its clock (at the claim, at the nack) and the check
/// starting its own (after receiving, before nacking), and clock granularity.
pub const TIMING_TOLERANCE: Duration = Duration::from_millis(100);
/// How long the extension check watches for a redelivery that must not come: longer
/// than [`SHORT_ACK_TIMEOUT`], shorter than the extension.
pub const EXTEND_QUIET_WINDOW: Duration = Duration::from_millis(1_600);
/// How far the extension check extends a delivery.
pub const EXTENSION: Duration = Duration::from_secs(4);
/// Messages published by the fan-out and load-sharing checks.
pub const MESSAGES_PER_CHECK: usize = 40;
/// Ack timeout of the slow-application check; it stops reading for [`FALLING_BEHIND_FOR`].
pub const FALLING_BEHIND_ACK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the slow-application check does not read: more than three ack timeouts.
pub const FALLING_BEHIND_FOR: Duration = Duration::from_secs(10);
/// Consumers sharing one group in the load-sharing check.
pub const CONSUMERS_PER_GROUP: usize = 3;

// ---------------------------------------------------------------------------------------
// The transport under test
// ---------------------------------------------------------------------------------------

/// One fresh, isolated transport for one check: a publisher, one or more subscribers (on
/// independent clients where the transport can), and the payload limit it was built with.
///
/// ```
/// # fn demo<B: runnel_core::bus::Publisher + runnel_core::bus::Subscriber>(bus: B, other: B) {
/// use std::sync::Arc;
/// use runnel_testkit::transport::TransportUnderTest;
/// let under_test = TransportUnderTest::from_bus(bus)
///     .with_subscriber(Arc::new(other))
///     .with_max_payload_bytes(256 * 1024);
/// # }
/// ```
#[derive(Clone)]
pub struct TransportUnderTest {
    publisher: Arc<dyn Publisher>,
    subscribers: Vec<Arc<dyn Subscriber>>,
    max_payload_bytes: usize,
    earliest_unsupported: Option<String>,
}

impl TransportUnderTest {
    /// A transport with one publisher and one subscriber, and the default payload limit
    /// ([`MESSAGE_PAYLOAD_MAX_DEFAULT`]).
    pub fn new(publisher: Arc<dyn Publisher>, subscriber: Arc<dyn Subscriber>) -> Self {
        TransportUnderTest {
            publisher,
            subscribers: vec![subscriber],
            max_payload_bytes: MESSAGE_PAYLOAD_MAX_DEFAULT,
            earliest_unsupported: None,
        }
    }

    /// A transport whose one client both publishes and subscribes.
    pub fn from_bus<B: Publisher + Subscriber>(bus: B) -> Self {
        let bus = Arc::new(bus);
        Self::new(bus.clone(), bus)
    }

    /// Adds another subscriber on an independent client of the same transport (as another
    /// process would connect). Consumers in checks rotate over the subscribers.
    pub fn with_subscriber(mut self, subscriber: Arc<dyn Subscriber>) -> Self {
        self.subscribers.push(subscriber);
        self
    }

    /// The payload limit the transport was built with.
    pub fn with_max_payload_bytes(mut self, max_payload_bytes: usize) -> Self {
        self.max_payload_bytes = max_payload_bytes;
        self
    }

    /// Declares that this deployment of the transport cannot replay retained messages to a
    /// new group (`StartPosition::Earliest`), naming why — for a server that lacks the
    /// broker feature the transport relies on (e.g. a local emulator). The Earliest check
    /// then proves the other half of the contract instead: such a subscription is refused
    /// with an error (never silently started at the latest message), and `Latest` works.
    /// Only for a gap of the server under test, found by probing it, never to skip a
    /// transport's own bug.
    pub fn with_earliest_unsupported(mut self, reason: impl Into<String>) -> Self {
        self.earliest_unsupported = Some(reason.into());
        self
    }

    /// The publisher.
    pub fn publisher(&self) -> &Arc<dyn Publisher> {
        &self.publisher
    }

    /// The subscriber for the `consumer`-th consumer of a check (rotating over those
    /// added).
    pub fn subscriber(&self, consumer: usize) -> &Arc<dyn Subscriber> {
        &self.subscribers[consumer % self.subscribers.len()]
    }

    /// The payload limit.
    pub fn max_payload_bytes(&self) -> usize {
        self.max_payload_bytes
    }
}

/// What a transport factory may return: a [`TransportUnderTest`], or an `Option` of one
/// where `None` skips the check because the transport's service is not configured.
pub trait IntoTransportUnderTest {
    /// The transport, or `None` to skip.
    fn into_transport_under_test(self) -> Option<TransportUnderTest>;
}

impl IntoTransportUnderTest for TransportUnderTest {
    fn into_transport_under_test(self) -> Option<TransportUnderTest> {
        Some(self)
    }
}

impl IntoTransportUnderTest for Option<TransportUnderTest> {
    fn into_transport_under_test(self) -> Option<TransportUnderTest> {
        self
    }
}

// ---------------------------------------------------------------------------------------
// Running the suite
// ---------------------------------------------------------------------------------------

/// Runs every check, each on a fresh transport from `make_transport`, one after another.
/// Call it from a multi-threaded tokio test. Prefer
/// [`transport_conformance!`](crate::transport_conformance), which reports each check as
/// its own test.
pub async fn run_transport_suite<F, Fut>(make_transport: F)
where
    F: Fn() -> Fut,
    Fut: Future,
    Fut::Output: IntoTransportUnderTest,
{
    crate::__transport_checks!(__suite_run_all(
        "transport conformance",
        transport,
        IntoTransportUnderTest::into_transport_under_test,
        CHECK_DEADLINE,
        make_transport
    ));
}

/// The names of every check, in the order the suite runs them.
pub fn check_names() -> &'static [&'static str] {
    crate::__transport_checks!(__suite_check_names())
}

/// One `#[test]` per transport conformance check, each on a fresh transport.
///
/// Pass either an `async` block or an expression that can be called with no arguments and
/// returns a future (a closure or a `fn`). It is evaluated once per test and must produce
/// a fresh [`TransportUnderTest`] — or `Option<TransportUnderTest>`, where `None` skips
/// (see the [module docs](crate::transport)).
///
/// ```ignore
/// // tests/bus_conformance.rs
/// async fn fresh_transport() -> Option<runnel_testkit::transport::TransportUnderTest> {
///     /* None: the broker is not configured */
/// }
/// runnel_testkit::transport_conformance!(fresh_transport);
/// ```
#[macro_export]
macro_rules! transport_conformance {
    ($($factory:tt)+) => {
        $crate::__suite_conformance!(__transport_checks (
            transport,
            $crate::transport::IntoTransportUnderTest::into_transport_under_test,
            $crate::transport::CHECK_DEADLINE
        ) $($factory)+);
    };
}

/// The list of checks, handed to `$callback` after its argument. The one place a new check
/// must be registered.
#[doc(hidden)]
#[macro_export]
macro_rules! __transport_checks {
    ($callback:ident $args:tt) => {
        $crate::$callback! { $args;
            publish_then_consume_round_trips_every_field,
            every_group_receives_every_message,
            within_a_group_each_message_goes_to_one_consumer,
            unacked_delivery_comes_back_after_ack_timeout,
            messages_waiting_for_a_slow_application_keep_their_leases,
            nack_redelivers_with_incremented_attempt,
            nack_with_delay_redelivers_after_the_delay_not_before,
            extend_keeps_a_delivery_from_coming_back,
            dropped_consumer_deliveries_are_redelivered_to_another,
            a_group_resumes_inside_a_published_batch,
            per_key_order_is_kept_across_redeliveries,
            different_keys_are_not_blocked_by_an_unacked_key,
            start_earliest_sees_retained_messages_and_latest_does_not,
            oversized_payload_is_rejected_naming_claim_check,
            invalid_names_and_messages_are_rejected,
            max_in_flight_bounds_unacked_deliveries,
            publish_batch_keeps_order,
        }
    };
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

#[track_caller]
fn expect_err<T>(what: &str, result: Result<T, BusError>) -> BusError {
    match result {
        Ok(_) => panic!("{what}: expected an error, got Ok"),
        Err(e) => e,
    }
}

/// A topic name no other check (or earlier run on a shared broker) uses.
fn fresh_topic(what: &str) -> TopicName {
    let name = format!("conformance.{what}.{}", uuid::Uuid::now_v7().simple());
    TopicName::new(name).unwrap_or_else(|e| panic!("test topic name: {e}"))
}

fn fresh_group(what: &str) -> GroupName {
    let name = format!("{what}-{}", uuid::Uuid::now_v7().simple());
    GroupName::new(name).unwrap_or_else(|e| panic!("test group name: {e}"))
}

fn options(max_in_flight: usize, ack_timeout: Duration, start: StartPosition) -> SubscribeOptions {
    SubscribeOptions {
        max_in_flight,
        ack_timeout,
        start,
        ..Default::default()
    }
}

/// Message number `n` (in the payload and a header), with an optional ordering key.
fn numbered(n: usize, key: Option<&str>) -> Message {
    let m = Message::json("ConformanceTested", &json!({ "n": n }))
        .with_header("conformance-n", n.to_string());
    match key {
        Some(k) => m.with_key(k),
        None => m,
    }
}

#[track_caller]
fn number_of(m: &Message) -> usize {
    let v = m
        .payload_json()
        .unwrap_or_else(|e| panic!("message {} payload is not JSON: {e}", m.id));
    v["n"]
        .as_u64()
        .unwrap_or_else(|| panic!("message {} carries no number: {v}", m.id)) as usize
}

async fn subscribe(
    t: &TransportUnderTest,
    consumer: usize,
    topic: &TopicName,
    group: &GroupName,
    options: SubscribeOptions,
) -> DeliveryStream {
    t.subscriber(consumer)
        .subscribe(topic, group, options)
        .await
        .must(&format!("subscribe {group} to {topic}"))
}

async fn publish(t: &TransportUnderTest, topic: &TopicName, messages: Vec<Message>) {
    let count = messages.len();
    t.publisher()
        .publish(topic, messages)
        .await
        .must(&format!("publish {count} messages to {topic}"))
}

async fn next_delivery(stream: &mut DeliveryStream, what: &str) -> Delivery {
    match within_for(DELIVERY_WAIT_DEADLINE, what, stream.next()).await {
        Some(Ok(d)) => d,
        Some(Err(e)) => panic!("{what}: the subscription failed: {e} ({e:?})"),
        None => panic!("{what}: the subscription ended"),
    }
}

/// The next delivery from whichever of `streams` has one first, with its index.
async fn next_from_any(streams: &mut [DeliveryStream], what: &str) -> (usize, Delivery) {
    let next = futures_util::future::select_all(streams.iter_mut().map(|s| s.next()));
    match within_for(DELIVERY_WAIT_DEADLINE, what, next).await {
        (Some(Ok(d)), i, _) => (i, d),
        (Some(Err(e)), i, _) => panic!("{what}: consumer {i} failed: {e} ({e:?})"),
        (None, i, _) => panic!("{what}: consumer {i}'s subscription ended"),
    }
}

async fn ack(d: Delivery, what: &str) {
    let id = d.message.id.clone();
    d.ack().await.must(&format!("{what}: ack {id}"))
}

/// Asserts none of `streams` yields anything during [`QUIET_WINDOW`].
async fn assert_quiet(streams: &mut [DeliveryStream], what: &str) {
    assert_quiet_for(streams, QUIET_WINDOW, what).await
}

async fn assert_quiet_for(streams: &mut [DeliveryStream], window: Duration, what: &str) {
    let next = futures_util::future::select_all(streams.iter_mut().map(|s| s.next()));
    if let Ok((item, i, _)) = tokio::time::timeout(window, next).await {
        let shown = match item {
            Some(Ok(d)) => format!(
                "message n={:?} id {} attempt {}",
                d.message.payload_json().ok().map(|v| v["n"].clone()),
                d.message.id,
                d.attempt
            ),
            Some(Err(e)) => format!("error {e}"),
            None => "the end of the subscription".into(),
        };
        panic!("{what}: expected nothing within {window:?}, but consumer {i} got {shown}");
    }
}

/// Receives `count` deliveries, acking each, and returns their messages in arrival order.
async fn take_and_ack(stream: &mut DeliveryStream, count: usize, what: &str) -> Vec<Message> {
    let mut got = Vec::with_capacity(count);
    for i in 0..count {
        let d = next_delivery(stream, &format!("{what} (message {} of {count})", i + 1)).await;
        let m = d.message.clone();
        ack(d, what).await;
        got.push(m);
    }
    got
}

fn ids(messages: &[Message]) -> Vec<String> {
    messages.iter().map(|m| m.id.clone()).collect()
}

// ---------------------------------------------------------------------------------------
// Round trip and fan-out
// ---------------------------------------------------------------------------------------

/// Every field of a message arrives exactly as published — CloudEvents attributes,
/// extensions (the W3C `traceparent` and `tracestate` among them), free headers (extension-named and not), the key, JSON and binary payload
/// bytes — with the topic, the group and attempt 1. (The bus first answers a ping.)
pub async fn publish_then_consume_round_trips_every_field(t: TransportUnderTest) {
    // A live connection answers the readiness ping (`/readyz` of `runnel serve`).
    t.publisher().ping().await.expect("the bus answers a ping");
    let topic = fresh_topic("roundtrip");
    let group = fresh_group("roundtrip");
    let mut s = subscribe(&t, 0, &topic, &group, SubscribeOptions::default()).await;

    let time: DateTime<Utc> = DateTime::parse_from_rfc3339("2026-11-22T10:00:00.123456Z")
        .expect("a valid test time")
        .with_timezone(&Utc);
    let mut full = Message::json(
        "OrderPlaced",
        &json!({"order": 7, "note": "ünïcødé ✓", "lines": [1, 2, 3]}),
    )
    .with_key("Order-7")
    .with_subject("Order-7")
    .with_header("tenant", "acme")
    .with_header("x-app-header", "some value")
    .with_header("userid", "u-42");
    full.source = "urn:runnel:conformance".into();
    full.time = Some(time);
    full.correlation_id = Some("corr-1".into());
    full.causation_id = Some("cmd-1".into());
    // The W3C trace context (parent and vendor state) round-trips on every transport.
    full.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
    full.tracestate = Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE".into());

    let mut binary = Message::json("BlobStored", &json!(null)).with_key("Blob-1");
    binary.content_type = "application/octet-stream".into();
    binary.payload = (0..=255u8).rev().chain(0..=255u8).collect();
    binary.time = None;

    let mut minimal = Message::json("Pinged", &json!({})).with_key("Ping-1");
    minimal.time = None;
    minimal.payload = Vec::new();

    let sent = vec![full, binary, minimal];
    publish(&t, &topic, sent.clone()).await;

    let mut got: HashMap<String, Delivery> = HashMap::new();
    for i in 0..sent.len() {
        let d = next_delivery(&mut s, &format!("round-trip message {}", i + 1)).await;
        assert!(
            got.insert(d.message.id.clone(), d).is_none(),
            "a message was delivered twice"
        );
    }
    for m in &sent {
        let d = got
            .remove(&m.id)
            .unwrap_or_else(|| panic!("message {} ({}) was not delivered", m.id, m.event_type));
        assert_eq!(&d.message, m, "{} did not round-trip exactly", m.event_type);
        assert_eq!(d.topic, topic, "delivery topic");
        assert_eq!(d.group, group, "delivery group");
        assert_eq!(d.attempt, 1, "first delivery attempt");
        ack(d, "round trip").await;
    }
    assert_quiet(std::slice::from_mut(&mut s), "after acking every message").await;
}

/// Every group subscribed to a topic receives every message published to it.
pub async fn every_group_receives_every_message(t: TransportUnderTest) {
    let topic = fresh_topic("fanout");
    let groups: Vec<GroupName> = (0..3).map(|i| fresh_group(&format!("fanout{i}"))).collect();
    let mut streams = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        streams.push(subscribe(&t, i, &topic, g, SubscribeOptions::default()).await);
    }
    let sent: Vec<Message> = (0..MESSAGES_PER_CHECK)
        .map(|n| numbered(n, Some(&format!("key-{}", n % 4))))
        .collect();
    publish(&t, &topic, sent.clone()).await;
    let expected: HashSet<String> = ids(&sent).into_iter().collect();
    for (g, s) in groups.iter().zip(streams.iter_mut()) {
        let got = take_and_ack(s, sent.len(), &format!("group {g}")).await;
        let got_ids: HashSet<String> = ids(&got).into_iter().collect();
        assert_eq!(got_ids.len(), sent.len(), "group {g} got a duplicate");
        assert_eq!(got_ids, expected, "group {g} did not get every message");
    }
    assert_quiet(&mut streams, "after every group consumed everything").await;
}

/// Consumers sharing a group split its messages: each message is handled by exactly one
/// of them (no consumer sees a message another one acknowledged).
pub async fn within_a_group_each_message_goes_to_one_consumer(t: TransportUnderTest) {
    let topic = fresh_topic("shared");
    let group = fresh_group("shared");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, String)>(MESSAGES_PER_CHECK * 4);
    let mut tasks = Vec::new();
    for consumer in 0..CONSUMERS_PER_GROUP {
        let mut s = subscribe(&t, consumer, &topic, &group, SubscribeOptions::default()).await;
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(item) = s.next().await {
                let d = item.unwrap_or_else(|e| panic!("consumer {consumer} failed: {e}"));
                let id = d.message.id.clone();
                d.ack()
                    .await
                    .unwrap_or_else(|e| panic!("consumer {consumer}: ack {id}: {e}"));
                if tx.send((consumer, id)).await.is_err() {
                    return;
                }
            }
        }));
    }
    drop(tx);
    let sent: Vec<Message> = (0..MESSAGES_PER_CHECK).map(|n| numbered(n, None)).collect();
    publish(&t, &topic, sent.clone()).await;

    let mut seen: HashMap<String, Vec<usize>> = HashMap::new();
    within_for(
        DELIVERY_WAIT_DEADLINE,
        "every message to reach some consumer",
        async {
            while seen.len() < sent.len() {
                let (consumer, id) = rx.recv().await.expect("a consumer task ended early");
                seen.entry(id).or_default().push(consumer);
            }
        },
    )
    .await;
    // Anything more would be a second delivery of an acknowledged message.
    if let Ok(Some((consumer, id))) = tokio::time::timeout(QUIET_WINDOW, rx.recv()).await {
        panic!(
            "message {id} was delivered again to consumer {consumer} after {:?} handled it",
            seen.get(&id)
        );
    }
    for task in &tasks {
        task.abort();
    }
    for m in &sent {
        let by = seen
            .get(&m.id)
            .unwrap_or_else(|| panic!("message {} was never delivered", m.id));
        assert_eq!(by.len(), 1, "message {} went to consumers {by:?}", m.id);
    }
}

// ---------------------------------------------------------------------------------------
// Acknowledgement, redelivery, delay
// ---------------------------------------------------------------------------------------

/// A delivery neither acked nor nacked comes back (same message, attempt 2) once the ack
/// timeout has passed, not before; acking the redelivery settles it for good.
pub async fn unacked_delivery_comes_back_after_ack_timeout(t: TransportUnderTest) {
    let topic = fresh_topic("acktimeout");
    let group = fresh_group("acktimeout");
    let opts = options(4, SHORT_ACK_TIMEOUT, StartPosition::Latest);
    let mut s = subscribe(&t, 0, &topic, &group, opts).await;
    let sent = numbered(1, Some("k"));
    publish(&t, &topic, vec![sent.clone()]).await;

    let first = next_delivery(&mut s, "the first delivery").await;
    let received_at = Instant::now();
    assert_eq!(first.message, sent);
    assert_eq!(first.attempt, 1);
    // Held, not settled: it must come back after the ack timeout.
    let again = next_delivery(&mut s, "the redelivery after the ack timeout").await;
    let elapsed = received_at.elapsed();
    assert_eq!(
        again.message, sent,
        "the redelivery carries the same message"
    );
    assert_eq!(again.attempt, 2, "the redelivery's attempt");
    assert!(
        elapsed + TIMING_TOLERANCE >= SHORT_ACK_TIMEOUT,
        "redelivered after {elapsed:?}, before the {SHORT_ACK_TIMEOUT:?} ack timeout"
    );
    ack(again, "the redelivery").await;
    // The stale delivery may be refused (its lease moved on) but must not resurrect it.
    match first.ack().await {
        Ok(()) | Err(BusError::DeliveryLost(_)) => {}
        Err(e) => panic!("acking a superseded delivery: expected Ok or DeliveryLost, got {e:?}"),
    }
    assert_quiet(std::slice::from_mut(&mut s), "after acking the redelivery").await;
}

/// An application that stops reading for more than three ack timeouts still gets every
/// message exactly once, each on its first attempt and in per-key order: the ack timeout
/// of a message starts when the application receives it, so messages the transport
/// fetched ahead and holds for the application (buffered, or behind their key's
/// unsettled head) must not expire and come back meanwhile.
pub async fn messages_waiting_for_a_slow_application_keep_their_leases(t: TransportUnderTest) {
    const KEYS: usize = 4;
    let topic = fresh_topic("behind");
    let group = fresh_group("behind");
    let opts = options(64, FALLING_BEHIND_ACK_TIMEOUT, StartPosition::Latest);
    let mut s = subscribe(&t, 0, &topic, &group, opts).await;
    let sent: Vec<Message> = (0..KEYS * 5)
        .map(|n| numbered(n, Some(&format!("key-{}", n % KEYS))))
        .collect();
    publish(&t, &topic, sent.clone()).await;

    // The first delivery shows the consumer is fetching; the rest wait behind it.
    let first = next_delivery(&mut s, "the first delivery").await;
    assert_eq!(first.attempt, 1, "the first delivery's attempt");
    let mut got = vec![first.message.clone()];
    ack(first, "the first delivery").await;

    // The application falls behind: nothing reads the stream for several ack timeouts.
    tokio::time::sleep(FALLING_BEHIND_FOR).await;

    while got.len() < sent.len() {
        let what = format!(
            "delivery {} of {} after falling behind",
            got.len() + 1,
            sent.len()
        );
        let d = next_delivery(&mut s, &what).await;
        assert_eq!(
            d.attempt,
            1,
            "message n={} came back while it waited for the application",
            number_of(&d.message)
        );
        got.push(d.message.clone());
        ack(d, &what).await;
    }
    let unique: HashSet<String> = ids(&got).into_iter().collect();
    assert_eq!(unique.len(), got.len(), "a message was delivered twice");
    assert_eq!(
        unique,
        ids(&sent).into_iter().collect::<HashSet<_>>(),
        "every message"
    );
    for key in 0..KEYS {
        let of_key: Vec<usize> = got
            .iter()
            .map(number_of)
            .filter(|n| n % KEYS == key)
            .collect();
        let mut in_order = of_key.clone();
        in_order.sort_unstable();
        assert_eq!(of_key, in_order, "key-{key} in publish order");
    }
    // Nothing comes back once everything is acked, not even after an ack timeout.
    assert_quiet_for(
        std::slice::from_mut(&mut s),
        FALLING_BEHIND_ACK_TIMEOUT + Duration::from_secs(1),
        "after every message was acked",
    )
    .await;
}

/// A nack without delay makes the message come back at once, each time with the attempt
/// number one higher.
pub async fn nack_redelivers_with_incremented_attempt(t: TransportUnderTest) {
    let topic = fresh_topic("nack");
    let group = fresh_group("nack");
    let mut s = subscribe(&t, 0, &topic, &group, SubscribeOptions::default()).await;
    let sent = numbered(1, Some("k"));
    publish(&t, &topic, vec![sent.clone()]).await;
    for attempt in 1..=3u32 {
        let d = next_delivery(&mut s, &format!("delivery attempt {attempt}")).await;
        assert_eq!(
            d.message, sent,
            "attempt {attempt} carries the same message"
        );
        assert_eq!(d.attempt, attempt, "the attempt number");
        if attempt < 3 {
            d.nack(None).await.must("nack without delay");
        } else {
            ack(d, "the last attempt").await;
        }
    }
    assert_quiet(std::slice::from_mut(&mut s), "after the ack").await;
}

/// A nack with a delay makes the message come back after the delay — not before — with
/// the attempt number increased.
pub async fn nack_with_delay_redelivers_after_the_delay_not_before(t: TransportUnderTest) {
    let topic = fresh_topic("nackdelay");
    let group = fresh_group("nackdelay");
    let mut s = subscribe(&t, 0, &topic, &group, SubscribeOptions::default()).await;
    let sent = numbered(1, Some("k"));
    publish(&t, &topic, vec![sent.clone()]).await;
    let d = next_delivery(&mut s, "the first delivery").await;
    assert_eq!(d.attempt, 1);
    let nacked_at = Instant::now();
    d.nack(Some(NACK_DELAY)).await.must("nack with a delay");
    let again = next_delivery(&mut s, "the delayed redelivery").await;
    let elapsed = nacked_at.elapsed();
    assert!(
        elapsed + TIMING_TOLERANCE >= NACK_DELAY,
        "redelivered {elapsed:?} after a nack delayed by {NACK_DELAY:?}"
    );
    assert_eq!(again.message, sent);
    assert_eq!(again.attempt, 2, "the delayed redelivery's attempt");
    ack(again, "the delayed redelivery").await;
    assert_quiet(std::slice::from_mut(&mut s), "after the ack").await;
}

/// Extending a delivery keeps it from coming back after the ack timeout; it can then
/// still be acknowledged.
pub async fn extend_keeps_a_delivery_from_coming_back(t: TransportUnderTest) {
    let topic = fresh_topic("extend");
    let group = fresh_group("extend");
    let opts = options(4, SHORT_ACK_TIMEOUT, StartPosition::Latest);
    let mut s = subscribe(&t, 0, &topic, &group, opts).await;
    publish(&t, &topic, vec![numbered(1, Some("k"))]).await;
    let d = next_delivery(&mut s, "the delivery").await;
    d.extend(EXTENSION).await.must("extend");
    // Longer than the ack timeout: without the extension it would be back by now.
    assert_quiet_for(
        std::slice::from_mut(&mut s),
        EXTEND_QUIET_WINDOW,
        "while the extended delivery is held",
    )
    .await;
    ack(d, "the extended delivery").await;
    assert_quiet(std::slice::from_mut(&mut s), "after the ack").await;
}

/// A consumer that crashes (its stream and its unacknowledged deliveries dropped) loses
/// nothing: another consumer of the group gets those messages, as redeliveries.
pub async fn dropped_consumer_deliveries_are_redelivered_to_another(t: TransportUnderTest) {
    let topic = fresh_topic("crash");
    let group = fresh_group("crash");
    let opts = options(8, SHORT_ACK_TIMEOUT, StartPosition::Latest);
    let mut crashing = subscribe(&t, 0, &topic, &group, opts.clone()).await;
    let sent: Vec<Message> = (0..3)
        .map(|n| numbered(n, Some(&format!("k{n}"))))
        .collect();
    publish(&t, &topic, sent.clone()).await;
    let mut held = Vec::new();
    for i in 0..sent.len() {
        held.push(next_delivery(&mut crashing, &format!("crashing consumer, message {i}")).await);
    }
    // The crash: nothing is acknowledged, everything is dropped.
    drop(held);
    drop(crashing);

    let mut survivor = subscribe(&t, 1, &topic, &group, opts).await;
    let mut got = HashSet::new();
    for i in 0..sent.len() {
        let d = next_delivery(&mut survivor, &format!("survivor, redelivery {i}")).await;
        assert!(
            d.attempt >= 2,
            "a message the crashed consumer held comes back as a redelivery, got attempt {}",
            d.attempt
        );
        assert!(got.insert(d.message.id.clone()), "a duplicate redelivery");
        ack(d, "survivor").await;
    }
    let expected: HashSet<String> = ids(&sent).into_iter().collect();
    assert_eq!(got, expected, "every message the crashed consumer held");
    assert_quiet(
        std::slice::from_mut(&mut survivor),
        "after the survivor acked",
    )
    .await;
}

/// A group whose consumer stops after handling the first part of one published batch
/// resumes, on its next consumer, at the first message it did not handle: the rest of the
/// batch arrives in order and nothing of it is skipped. A Kafka-protocol broker stores one
/// produce request as one record batch, so the next consumer starts from a committed
/// offset inside that batch (the partition of a killed member moving to a survivor).
pub async fn a_group_resumes_inside_a_published_batch(t: TransportUnderTest) {
    const SENT: usize = 8;
    const HANDLED: usize = 4;
    let topic = fresh_topic("resume");
    let group = fresh_group("resume");
    let opts = options(1, SHORT_ACK_TIMEOUT, StartPosition::Latest);
    let mut first = subscribe(&t, 0, &topic, &group, opts.clone()).await;
    let sent: Vec<Message> = (0..SENT).map(|n| numbered(n, Some("Order-1"))).collect();
    publish(&t, &topic, sent).await;
    for n in 0..HANDLED {
        let d = next_delivery(&mut first, &format!("first consumer, message {n}")).await;
        assert_eq!(
            number_of(&d.message),
            n,
            "the key's messages in publish order"
        );
        ack(d, "first consumer").await;
    }
    // The consumer stops; whatever it was handed beyond the acked prefix goes unacked.
    drop(first);

    let mut next = subscribe(&t, 1, &topic, &group, opts).await;
    for n in HANDLED..SENT {
        let d = next_delivery(
            &mut next,
            &format!("next consumer, message {n} of the partly handled batch"),
        )
        .await;
        assert_eq!(
            number_of(&d.message),
            n,
            "the rest of the batch, in order, from the first unhandled message"
        );
        ack(d, "next consumer").await;
    }
    assert_quiet(
        std::slice::from_mut(&mut next),
        "after the rest of the batch",
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// Ordering
// ---------------------------------------------------------------------------------------

/// Messages of one key reach the group in publish order, and the key's next message is
/// not delivered — to any consumer of the group — while an earlier one is unacknowledged,
/// nacked or delayed.
pub async fn per_key_order_is_kept_across_redeliveries(t: TransportUnderTest) {
    let topic = fresh_topic("keyorder");
    let group = fresh_group("keyorder");
    let mut streams = vec![
        subscribe(
            &t,
            0,
            &topic,
            &group,
            options(8, Duration::from_secs(30), StartPosition::Latest),
        )
        .await,
        subscribe(
            &t,
            1,
            &topic,
            &group,
            options(8, Duration::from_secs(30), StartPosition::Latest),
        )
        .await,
    ];
    let sent: Vec<Message> = (0..5).map(|n| numbered(n, Some("Order-1"))).collect();
    publish(&t, &topic, sent.clone()).await;

    let mut handled = Vec::new();
    // Message 0: nacked, nacked with a delay, then acked; nothing else of the key meanwhile.
    let (_, d) = next_from_any(&mut streams, "message 0").await;
    assert_eq!((number_of(&d.message), d.attempt), (0, 1));
    assert_quiet(&mut streams, "while message 0 of the key is unacknowledged").await;
    d.nack(None).await.must("nack message 0");
    let (_, d) = next_from_any(&mut streams, "message 0 after a nack").await;
    assert_eq!(
        (number_of(&d.message), d.attempt),
        (0, 2),
        "after a nack the same message comes first, not the key's next"
    );
    d.nack(Some(NACK_DELAY))
        .await
        .must("nack message 0 with a delay");
    assert_quiet(&mut streams, "while message 0 of the key is delayed").await;
    let (_, d) = next_from_any(&mut streams, "message 0 after the delay").await;
    assert_eq!((number_of(&d.message), d.attempt), (0, 3));
    handled.push(number_of(&d.message));
    ack(d, "message 0").await;

    for n in 1..sent.len() {
        let (_, d) = next_from_any(&mut streams, &format!("message {n}")).await;
        handled.push(number_of(&d.message));
        if n == 2 {
            // Hold it briefly: message 3 must wait for it.
            assert_quiet(&mut streams, "while message 2 of the key is unacknowledged").await;
        }
        ack(d, &format!("message {n}")).await;
    }
    assert_eq!(
        handled,
        vec![0, 1, 2, 3, 4],
        "the key's messages in publish order"
    );
    assert_quiet(&mut streams, "after every message was acked").await;
}

/// A key whose message is unacknowledged (or delayed) blocks only itself: other keys'
/// messages keep flowing.
pub async fn different_keys_are_not_blocked_by_an_unacked_key(t: TransportUnderTest) {
    let topic = fresh_topic("keyparallel");
    let group = fresh_group("keyparallel");
    let mut s = subscribe(
        &t,
        0,
        &topic,
        &group,
        options(16, Duration::from_secs(30), StartPosition::Latest),
    )
    .await;
    let a = [numbered(0, Some("A")), numbered(1, Some("A"))];
    let b = [numbered(10, Some("B")), numbered(11, Some("B"))];
    let c = [numbered(20, Some("C"))];
    publish(
        &t,
        &topic,
        vec![
            a[0].clone(),
            a[1].clone(),
            b[0].clone(),
            b[1].clone(),
            c[0].clone(),
        ],
    )
    .await;

    let others: HashSet<String> = b.iter().chain(c.iter()).map(|m| m.id.clone()).collect();
    let mut others_done: Vec<usize> = Vec::new();
    let mut held_a = None;
    // Hold A's first message unacknowledged while every B and C message is handled.
    while held_a.is_none() || others_done.len() < others.len() {
        let d = next_delivery(&mut s, "messages of keys A, B and C").await;
        if d.message.id == a[0].id {
            assert!(held_a.is_none(), "A's first message was delivered twice");
            held_a = Some(d);
        } else if others.contains(&d.message.id) {
            others_done.push(number_of(&d.message));
            ack(d, "B or C").await;
        } else {
            panic!(
                "message n={} was delivered while A's first message is unacknowledged",
                number_of(&d.message)
            );
        }
    }
    let pos = |n: usize| others_done.iter().position(|&x| x == n);
    assert!(pos(10) < pos(11), "key B out of order: {others_done:?}");
    // Delayed now, A still blocks only itself.
    let held_a = held_a.expect("A's first message");
    held_a
        .nack(Some(Duration::from_secs(60)))
        .await
        .must("nack A's first message with a long delay");
    assert_quiet(
        std::slice::from_mut(&mut s),
        "while key A's head is delayed",
    )
    .await;
    publish(&t, &topic, vec![numbered(12, Some("B"))]).await;
    let d = next_delivery(&mut s, "a new B message while A is delayed").await;
    assert_eq!(number_of(&d.message), 12);
    ack(d, "the new B message").await;
}

/// A group created with `StartPosition::Earliest` receives the messages the transport
/// retained from before it existed; one created with `Latest` only later ones.
pub async fn start_earliest_sees_retained_messages_and_latest_does_not(t: TransportUnderTest) {
    let topic = fresh_topic("start");
    let before: Vec<Message> = (0..3).map(|n| numbered(n, Some("k"))).collect();
    publish(&t, &topic, before.clone()).await;

    if let Some(reason) = t.earliest_unsupported.clone() {
        eprintln!("NOTE: this server cannot replay retained messages ({reason}): checking that Earliest is refused and Latest works");
        let refused = t
            .subscriber(0)
            .subscribe(
                &topic,
                &fresh_group("earliest"),
                options(8, Duration::from_secs(30), StartPosition::Earliest),
            )
            .await;
        assert!(
            refused.is_err(),
            "a transport that declares Earliest unsupported must refuse it, not start elsewhere"
        );
        let mut late = subscribe(
            &t,
            1,
            &topic,
            &fresh_group("latest"),
            options(8, Duration::from_secs(30), StartPosition::Latest),
        )
        .await;
        assert_quiet(
            std::slice::from_mut(&mut late),
            "the latest group before any new message",
        )
        .await;
        let after = numbered(3, Some("k"));
        publish(&t, &topic, vec![after.clone()]).await;
        let got = take_and_ack(&mut late, 1, "the latest group's first message").await;
        assert_eq!(
            got[0].id, after.id,
            "the latest group starts after its creation"
        );
        return;
    }

    let early_group = fresh_group("earliest");
    let late_group = fresh_group("latest");
    let mut early = subscribe(
        &t,
        0,
        &topic,
        &early_group,
        options(8, Duration::from_secs(30), StartPosition::Earliest),
    )
    .await;
    let mut late = subscribe(
        &t,
        1,
        &topic,
        &late_group,
        options(8, Duration::from_secs(30), StartPosition::Latest),
    )
    .await;

    let got = take_and_ack(
        &mut early,
        before.len(),
        "the earliest group's retained messages",
    )
    .await;
    assert_eq!(
        ids(&got),
        ids(&before),
        "retained messages in publish order"
    );
    assert_quiet(
        std::slice::from_mut(&mut late),
        "the latest group before any new message",
    )
    .await;

    let after = numbered(3, Some("k"));
    publish(&t, &topic, vec![after.clone()]).await;
    let got_late = take_and_ack(&mut late, 1, "the latest group's first message").await;
    assert_eq!(
        got_late[0].id, after.id,
        "the latest group starts after its creation"
    );
    let got_early = take_and_ack(&mut early, 1, "the earliest group's new message").await;
    assert_eq!(got_early[0].id, after.id);
    assert_quiet(&mut [early, late], "after both groups consumed everything").await;
}

// ---------------------------------------------------------------------------------------
// Limits and bad input
// ---------------------------------------------------------------------------------------

/// A payload over the limit is rejected with `PayloadTooLarge` naming the claim-check
/// option, and the whole publish writes nothing; a payload at the limit is accepted.
pub async fn oversized_payload_is_rejected_naming_claim_check(t: TransportUnderTest) {
    let topic = fresh_topic("oversized");
    let group = fresh_group("oversized");
    let mut s = subscribe(&t, 0, &topic, &group, SubscribeOptions::default()).await;
    let limit = t.max_payload_bytes();
    let sized = |n: usize, bytes: usize| {
        let mut m = numbered(n, None);
        m.content_type = "application/octet-stream".into();
        m.payload = vec![b'x'; bytes];
        m
    };

    let err = expect_err(
        "publishing one payload over the limit",
        t.publisher()
            .publish(&topic, vec![sized(1, limit + 1)])
            .await,
    );
    match &err {
        BusError::PayloadTooLarge {
            size_bytes,
            limit_bytes,
            ..
        } => {
            assert_eq!(*size_bytes, limit + 1);
            assert_eq!(*limit_bytes, limit);
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    assert!(
        err.to_string().contains("claim-check") || err.to_string().contains("claim_check"),
        "the error names the claim-check option: {err}"
    );
    let small = numbered(2, None);
    let err = expect_err(
        "publishing a batch with one oversized message",
        t.publisher()
            .publish(&topic, vec![small.clone(), sized(3, limit + 1)])
            .await,
    );
    assert!(matches!(err, BusError::PayloadTooLarge { .. }), "{err:?}");

    let at_limit = sized(4, limit);
    publish(&t, &topic, vec![at_limit.clone()]).await;
    let d = next_delivery(&mut s, "the message at the limit").await;
    assert_eq!(
        d.message.id, at_limit.id,
        "the first delivery is the accepted message: nothing of the rejected publishes was written"
    );
    assert_eq!(d.message.payload.len(), limit);
    ack(d, "the message at the limit").await;
    assert_quiet(std::slice::from_mut(&mut s), "after the accepted message").await;
}

/// Invalid names, messages, batches, options and settle arguments are typed errors that
/// change nothing.
pub async fn invalid_names_and_messages_are_rejected(t: TransportUnderTest) {
    for bad in ["", "has space", ".dot-first", "slash/inside", "ünïcode"] {
        assert!(
            matches!(TopicName::new(bad), Err(BusError::InvalidName { .. })),
            "topic name {bad:?}"
        );
        assert!(
            matches!(GroupName::new(bad), Err(BusError::InvalidName { .. })),
            "group name {bad:?}"
        );
    }
    let long = "x".repeat(runnel_core::message::BUS_NAME_LEN_MAX + 1);
    assert!(TopicName::new(long.as_str()).is_err());
    assert!(serde_json::from_str::<TopicName>("\"bad name\"").is_err());

    let topic = fresh_topic("invalid");
    let group = fresh_group("invalid");
    let mut s = subscribe(
        &t,
        0,
        &topic,
        &group,
        options(4, SHORT_ACK_TIMEOUT, StartPosition::Latest),
    )
    .await;

    let mut bad_messages = Vec::new();
    bad_messages.push(("an empty id", numbered(1, None).with_id("")));
    let mut m = numbered(2, None);
    m.event_type = String::new();
    bad_messages.push(("an empty type", m));
    let mut m = numbered(3, None);
    m.source = String::new();
    bad_messages.push(("an empty source", m));
    bad_messages.push((
        "a header name with a space",
        numbered(4, None).with_header("bad name", "v"),
    ));
    for (what, m) in bad_messages {
        let err = expect_err(
            what,
            t.publisher()
                .publish(&topic, vec![numbered(0, None), m])
                .await,
        );
        assert!(
            matches!(err, BusError::InvalidMessage { .. }),
            "{what}: expected InvalidMessage, got {err:?}"
        );
    }
    let too_many: Vec<Message> = (0..=PUBLISH_BATCH_MAX).map(|n| numbered(n, None)).collect();
    let err = expect_err(
        "a batch over the limit",
        t.publisher().publish(&topic, too_many).await,
    );
    assert!(matches!(err, BusError::TooManyMessages { .. }), "{err:?}");

    for (what, opts) in [
        (
            "max_in_flight 0",
            options(0, SHORT_ACK_TIMEOUT, StartPosition::Latest),
        ),
        (
            "max_in_flight over the maximum",
            options(
                MAX_IN_FLIGHT_MAX + 1,
                SHORT_ACK_TIMEOUT,
                StartPosition::Latest,
            ),
        ),
        (
            "an ack timeout under 100 ms",
            options(4, Duration::from_millis(10), StartPosition::Latest),
        ),
    ] {
        let err = expect_err(
            what,
            t.subscriber(0)
                .subscribe(&topic, &group, opts)
                .await
                .map(|_| ()),
        );
        assert!(
            matches!(err, BusError::InvalidArgument(_)),
            "{what}: {err:?}"
        );
    }

    // Nothing of the above was written: the first delivery is this sentinel.
    let sentinel = numbered(100, None);
    publish(&t, &topic, vec![sentinel.clone()]).await;
    let d = next_delivery(&mut s, "the sentinel").await;
    assert_eq!(
        d.message.id, sentinel.id,
        "a rejected publish wrote something"
    );
    let too_long = NACK_DELAY_MAX + Duration::from_secs(1);
    let err = expect_err("extending past the maximum", d.extend(too_long).await);
    assert!(matches!(err, BusError::InvalidArgument(_)), "{err:?}");
    // The rejected extension left the delivery as it was: it can be nacked, and an
    // over-long nack through the settling handle is refused too.
    let (_, handle) = d.into_parts();
    let err = expect_err(
        "a nack delay past the maximum",
        handle.nack(Some(too_long)).await,
    );
    assert!(matches!(err, BusError::InvalidArgument(_)), "{err:?}");
    // Refused means unsettled: the sentinel comes back after the ack timeout.
    let again = next_delivery(&mut s, "the sentinel after the refused nack").await;
    assert_eq!(again.message.id, sentinel.id);
    assert_eq!(again.attempt, 2);
    ack(again, "the sentinel").await;
    assert_quiet(std::slice::from_mut(&mut s), "after the sentinel").await;
}

/// A consumer never holds more than `max_in_flight` unacknowledged deliveries; each
/// settlement lets exactly one more through.
pub async fn max_in_flight_bounds_unacked_deliveries(t: TransportUnderTest) {
    const MAX_IN_FLIGHT: usize = 3;
    const MESSAGES: usize = 10;
    let topic = fresh_topic("inflight");
    let group = fresh_group("inflight");
    let mut s = subscribe(
        &t,
        0,
        &topic,
        &group,
        options(
            MAX_IN_FLIGHT,
            Duration::from_secs(30),
            StartPosition::Latest,
        ),
    )
    .await;
    let sent: Vec<Message> = (0..MESSAGES).map(|n| numbered(n, None)).collect();
    publish(&t, &topic, sent.clone()).await;

    let mut held = std::collections::VecDeque::new();
    for i in 0..MAX_IN_FLIGHT {
        held.push_back(next_delivery(&mut s, &format!("in-flight delivery {i}")).await);
    }
    assert_quiet(
        std::slice::from_mut(&mut s),
        "with max_in_flight deliveries unacknowledged",
    )
    .await;
    let mut done = HashSet::new();
    while done.len() < MESSAGES {
        let d = held.pop_front().expect("a held delivery");
        assert!(
            done.insert(d.message.id.clone()),
            "message {} delivered twice",
            d.message.id
        );
        ack(d, "a held delivery").await;
        if done.len() + held.len() < MESSAGES {
            held.push_back(next_delivery(&mut s, "the delivery one ack lets through").await);
            assert_quiet(std::slice::from_mut(&mut s), "at max_in_flight again").await;
        }
    }
    assert_eq!(done, ids(&sent).into_iter().collect::<HashSet<_>>());
}

/// One publish call's messages of one key arrive in the order of the batch, and a later
/// batch's after an earlier one's.
pub async fn publish_batch_keeps_order(t: TransportUnderTest) {
    const PER_BATCH: usize = 50;
    let topic = fresh_topic("batchorder");
    let group = fresh_group("batchorder");
    let mut s = subscribe(
        &t,
        0,
        &topic,
        &group,
        options(16, Duration::from_secs(30), StartPosition::Latest),
    )
    .await;
    let key = |n: usize| if n % 2 == 0 { "left" } else { "right" };
    for batch in 0..2 {
        let msgs: Vec<Message> = (batch * PER_BATCH..(batch + 1) * PER_BATCH)
            .map(|n| numbered(n, Some(key(n))))
            .collect();
        publish(&t, &topic, msgs).await;
    }
    let got = take_and_ack(&mut s, 2 * PER_BATCH, "both batches").await;
    let mut per_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for m in &got {
        let n = number_of(m);
        assert_eq!(m.key.as_deref(), Some(key(n)), "message {n}'s key");
        per_key.entry(key(n)).or_default().push(n);
    }
    for (k, ns) in &per_key {
        let expected: Vec<usize> = (0..2 * PER_BATCH).filter(|&n| key(n) == *k).collect();
        assert_eq!(ns, &expected, "key {k} in publish order");
    }
    assert_quiet(std::slice::from_mut(&mut s), "after both batches").await;
}
