//! The engine's consumer loop over an in-memory backend: per-key heads, leases with owner
//! and attempt, a hand-driven clock. Proves what the engine itself decides (renewal before
//! a row is handed out, release on drop, back-pressure), independent of any SQL.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use runnel_bus_engine::{
    after, BusBackend, BusEngine, BusOptions, BusSignals, Claim, ClaimRequest, ClaimedRow,
    EncodedMessage, GroupBacklog, Lease, Settle, Settled,
};
use runnel_core::bus::{DeliveryStream, StartPosition, SubscribeOptions};
use runnel_core::chrono::{DateTime, Utc};
use runnel_core::uuid::Uuid;
use runnel_core::{BusError, Clock, GroupName, Message, TopicName};

const DEADLINE: Duration = Duration::from_secs(10);

/// A clock that moves only when told.
struct HandClock(Mutex<DateTime<Utc>>);

impl HandClock {
    fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *now = after(*now, by);
    }
}

impl Clock for HandClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Clone, Debug)]
struct Row {
    seq: i64,
    key: Option<Vec<u8>>,
    message: Message,
    visible_at: DateTime<Utc>,
    attempt: u32,
    owner: Option<Uuid>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct MemLease {
    seq: i64,
    owner: Uuid,
    attempt: u32,
}

impl Lease for MemLease {
    fn seq(&self) -> i64 {
        self.seq
    }
    fn attempt(&self) -> u32 {
        self.attempt
    }
}

#[derive(Default)]
struct State {
    next_seq: i64,
    /// One group only: what it still has to consume.
    queue: Vec<Row>,
    settles: Vec<Settle>,
    claim_limits: Vec<usize>,
}

struct MemBackend {
    options: BusOptions,
    signals: BusSignals,
    state: Mutex<State>,
}

impl MemBackend {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn is_head(queue: &[Row], row: &Row) -> bool {
    match &row.key {
        None => true,
        Some(k) => queue
            .iter()
            .filter(|r| r.key.as_ref() == Some(k))
            .all(|r| r.seq >= row.seq),
    }
}

impl BusBackend for MemBackend {
    type Group = ();
    type Lease = MemLease;

    fn options(&self) -> &BusOptions {
        &self.options
    }

    fn signals(&self) -> &BusSignals {
        &self.signals
    }

    async fn publish(&self, _: &TopicName, messages: Vec<EncodedMessage>) -> Result<(), BusError> {
        let now = self.options.clock.now();
        let mut state = self.state();
        for m in messages {
            state.next_seq += 1;
            let seq = state.next_seq;
            let message = runnel_bus_engine::decode_message(seq, m.envelope.as_bytes(), m.payload)?;
            state.queue.push(Row {
                seq,
                key: m.ordering_key,
                message,
                visible_at: now,
                attempt: 0,
                owner: None,
            });
        }
        Ok(())
    }

    async fn ensure_group(
        &self,
        _: &TopicName,
        _: &GroupName,
        _: StartPosition,
    ) -> Result<(), BusError> {
        Ok(())
    }

    async fn claim(&self, request: ClaimRequest<'_, ()>) -> Result<Claim<MemLease>, BusError> {
        let now = self.options.clock.now();
        let lease_until = after(now, request.ack_timeout);
        let mut state = self.state();
        state.claim_limits.push(request.limit);
        let ready: Vec<i64> = state
            .queue
            .iter()
            .filter(|r| r.visible_at <= now && is_head(&state.queue, r))
            .map(|r| r.seq)
            .take(request.limit)
            .collect();
        if ready.is_empty() {
            let next_visible = state
                .queue
                .iter()
                .filter(|r| is_head(&state.queue, r))
                .map(|r| r.visible_at)
                .min();
            return Ok(Claim::Idle { next_visible });
        }
        let mut rows = Vec::new();
        for r in state.queue.iter_mut().filter(|r| ready.contains(&r.seq)) {
            r.attempt += 1;
            r.owner = Some(request.owner);
            r.visible_at = lease_until;
            rows.push(ClaimedRow {
                lease: MemLease {
                    seq: r.seq,
                    owner: request.owner,
                    attempt: r.attempt,
                },
                message: r.message.clone(),
            });
        }
        Ok(Claim::Claimed { rows, lease_until })
    }

    async fn settle(
        &self,
        _: &TopicName,
        lease: &MemLease,
        how: Settle,
    ) -> Result<Settled, BusError> {
        let now = self.options.clock.now();
        let mut state = self.state();
        state.settles.push(how);
        let Some(i) = state.queue.iter().position(|r| {
            r.seq == lease.seq && r.owner == Some(lease.owner) && r.attempt == lease.attempt
        }) else {
            return Ok(Settled::LOST);
        };
        let wake = match how {
            Settle::Ack => {
                state.queue.remove(i);
                true
            }
            Settle::Nack { visible_at } => {
                state.queue[i].visible_at = visible_at;
                state.queue[i].owner = None;
                visible_at <= now
            }
            Settle::Extend { visible_at } => {
                state.queue[i].visible_at = visible_at;
                false
            }
            Settle::Release { visible_at } => {
                state.queue[i].visible_at = visible_at;
                state.queue[i].owner = None;
                state.queue[i].attempt -= 1;
                true
            }
        };
        Ok(Settled { held: true, wake })
    }

    async fn sweep(&self, _: DateTime<Utc>) -> Result<usize, BusError> {
        Ok(0)
    }

    async fn delete_group(&self, _: &TopicName, _: &GroupName) -> Result<bool, BusError> {
        Ok(true)
    }

    async fn backlog(
        &self,
        _: &TopicName,
        _: &GroupName,
        now: DateTime<Utc>,
    ) -> Result<Option<GroupBacklog>, BusError> {
        let state = self.state();
        let in_flight = state
            .queue
            .iter()
            .filter(|r| r.owner.is_some() && r.visible_at > now)
            .count() as u64;
        Ok(Some(GroupBacklog::new(state.queue.len() as u64, in_flight)))
    }
}

struct Fixture {
    clock: Arc<HandClock>,
    engine: BusEngine<MemBackend>,
    topic: TopicName,
    group: GroupName,
}

fn fixture() -> Result<Fixture, BusError> {
    let clock = Arc::new(HandClock(Mutex::new(Utc::now())));
    let options = BusOptions::default().clock(clock.clone());
    let engine = BusEngine::new(MemBackend {
        options,
        signals: BusSignals::default(),
        state: Mutex::default(),
    })?;
    Ok(Fixture {
        clock,
        engine,
        topic: TopicName::new("orders")?,
        group: GroupName::new("billing")?,
    })
}

fn message(n: u32, key: &str) -> Message {
    Message::json("Numbered", &serde_json::json!({ "n": n })).with_key(key)
}

async fn next(stream: &mut DeliveryStream) -> Result<runnel_core::bus::Delivery, BusError> {
    tokio::time::timeout(DEADLINE, stream.next())
        .await
        .map_err(|_| BusError::Unavailable("no delivery before the deadline".into()))?
        .ok_or(BusError::Closed)?
}

fn options(max_in_flight: usize) -> SubscribeOptions {
    SubscribeOptions {
        max_in_flight,
        ack_timeout: Duration::from_secs(40),
        ..SubscribeOptions::default()
    }
}

#[tokio::test]
async fn a_key_is_handed_out_in_publish_order_one_at_a_time() -> Result<(), BusError> {
    let f = fixture()?;
    let mut stream = f.engine.subscribe(&f.topic, &f.group, options(8)).await?;
    let batch = vec![message(1, "a"), message(2, "a"), message(3, "b")];
    f.engine.publish(&f.topic, batch).await?;
    let first = next(&mut stream).await?;
    let other = next(&mut stream).await?;
    assert_eq!(
        first.message.payload_json().ok(),
        Some(serde_json::json!({"n": 1}))
    );
    assert_eq!(
        other.message.payload_json().ok(),
        Some(serde_json::json!({"n": 3}))
    );
    // Key a's second message waits for the first's ack.
    assert!(stream.next().now_or_never().is_none());
    first.ack().await?;
    let second = next(&mut stream).await?;
    assert_eq!(
        second.message.payload_json().ok(),
        Some(serde_json::json!({"n": 2}))
    );
    Ok(())
}

#[tokio::test]
async fn a_row_that_waited_is_renewed_before_it_is_handed_out() -> Result<(), BusError> {
    let f = fixture()?;
    let mut stream = f.engine.subscribe(&f.topic, &f.group, options(8)).await?;
    f.engine
        .publish(&f.topic, vec![message(1, "a"), message(2, "b")])
        .await?;
    let first = next(&mut stream).await?;
    assert!(
        f.engine.backend().state().settles.is_empty(),
        "no renewal for a prompt hand-out"
    );
    // The application is busy with the first for over a quarter of the ack timeout.
    f.clock.advance(Duration::from_secs(11));
    let second = next(&mut stream).await?;
    let expected = after(f.engine.now(), Duration::from_secs(40));
    assert_eq!(
        f.engine.backend().state().settles,
        vec![Settle::Extend {
            visible_at: expected
        }]
    );
    assert_eq!(second.attempt, 1, "a renewed row keeps its first attempt");
    first.ack().await?;
    second.ack().await?;
    assert_eq!(
        f.engine.group_backlog(&f.topic, &f.group).await?,
        Some(GroupBacklog::default())
    );
    Ok(())
}

#[tokio::test]
async fn a_row_claimed_elsewhere_while_it_waited_is_dropped_not_delivered() -> Result<(), BusError>
{
    let f = fixture()?;
    let mut stream = f.engine.subscribe(&f.topic, &f.group, options(8)).await?;
    f.engine
        .publish(&f.topic, vec![message(1, "a"), message(2, "b")])
        .await?;
    let first = next(&mut stream).await?;
    // Both leases run out and another consumer claims both rows.
    f.clock.advance(Duration::from_secs(41));
    let Claim::Claimed { rows, .. } = f
        .engine
        .backend()
        .claim(ClaimRequest {
            group: &(),
            owner: Uuid::now_v7(),
            limit: 2,
            now: f.engine.now(),
            ack_timeout: Duration::from_secs(40),
        })
        .await?
    else {
        panic!("the expired row is claimable");
    };
    assert_eq!(rows.len(), 2, "both leases ran out");
    // Our consumer's renewal fails, so it does not deliver the row; nothing else is ready.
    assert!(stream.next().now_or_never().is_none());
    assert!(
        matches!(first.ack().await, Err(BusError::DeliveryLost(_))),
        "its lease ran out too"
    );
    Ok(())
}

#[tokio::test]
async fn a_consumer_never_holds_more_than_max_in_flight() -> Result<(), BusError> {
    let f = fixture()?;
    let mut stream = f.engine.subscribe(&f.topic, &f.group, options(2)).await?;
    let batch = (1..=5).map(|n| message(n, &format!("k{n}"))).collect();
    f.engine.publish(&f.topic, batch).await?;
    let a = next(&mut stream).await?;
    let b = next(&mut stream).await?;
    // Both slots are taken: the stream waits for a settle without claiming.
    assert!(stream.next().now_or_never().is_none());
    assert!(f
        .engine
        .backend()
        .state()
        .claim_limits
        .iter()
        .all(|&l| l <= 2));
    a.ack().await?;
    let c = next(&mut stream).await?;
    drop(b);
    drop(c);
    let d = next(&mut stream).await?;
    d.ack().await?;
    Ok(())
}

#[tokio::test]
async fn rows_never_handed_out_are_released_when_the_stream_is_dropped() -> Result<(), BusError> {
    let f = fixture()?;
    let mut stream = f.engine.subscribe(&f.topic, &f.group, options(8)).await?;
    f.engine
        .publish(
            &f.topic,
            vec![message(1, "a"), message(2, "b"), message(3, "c")],
        )
        .await?;
    let first = next(&mut stream).await?;
    drop(stream);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let releases = f
            .engine
            .backend()
            .state()
            .settles
            .iter()
            .filter(|s| matches!(s, Settle::Release { .. }))
            .count();
        if releases == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the two buffered rows were not released"
        );
        tokio::task::yield_now().await;
    }
    // Released rows are claimable at once, on their first attempt again.
    let mut again = f.engine.subscribe(&f.topic, &f.group, options(8)).await?;
    let next_one = next(&mut again).await?;
    assert_eq!(next_one.attempt, 1);
    first.ack().await?;
    Ok(())
}
