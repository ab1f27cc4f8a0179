//! One consumer of a group: a long-polling task feeding a bounded stream, and the
//! acknowledger behind each delivery.
//!
//! SQS FIFO hands a group's messages out in order and hands out nothing more of a message
//! group (= key) while one of its messages is in flight, to any consumer. One
//! `ReceiveMessage` call may still return several messages of the same message group at
//! once; this consumer then delivers only the first and holds the rest (still in flight,
//! so no other consumer gets them) in a per-key lane, surfacing the next one when the
//! previous is acked. A nack makes the held ones visible again first, so SQS restarts the
//! key from the nacked message.
//!
//! A message this consumer holds but has not yielded yet (waiting in the stream's buffer or
//! in a lane) keeps its lease: a keeper task renews it before it runs out, so a consumer
//! that falls behind neither burns receive counts (which lead to the dead-letter queue)
//! nor yields a copy SQS has already handed out again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_sqs::types::{ChangeMessageVisibilityBatchRequestEntry, MessageSystemAttributeName};
use futures_util::Stream;
use runnel_core::bus::{Acknowledger, Delivery, DeliveryStream, SubscribeOptions, NACK_DELAY_MAX};
use runnel_core::{BusError, GroupName, Message, TopicName};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::bus::{visibility_seconds, Clients, AWS_BATCH_MAX};
use crate::codec;
use crate::error::{code_of, map_sdk};

/// First pause after a failed receive; doubles up to [`RECEIVE_BACKOFF_MAX`].
pub const RECEIVE_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest pause between failed receives (the broker is down: keep trying, slowly).
pub const RECEIVE_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A held message is surfaced only if its lease has at least this much left; otherwise
/// the key is handed back to SQS (its lease may already be gone).
pub const HELD_LEASE_MARGIN: Duration = Duration::from_millis(500);
/// Pause after a short poll (`wait_seconds=0`) that returned nothing, so an idle consumer
/// does not call `ReceiveMessage` in a tight loop.
pub const SHORT_POLL_IDLE_PAUSE: Duration = Duration::from_millis(200);
/// Extra time the HTTP call of a long poll may take beyond the poll itself.
const RECEIVE_CALL_SLACK: Duration = Duration::from_secs(10);
/// Bounds of the keeper's period (a quarter of the visibility timeout, within these).
pub const LEASE_KEEPER_TICK_MIN: Duration = Duration::from_millis(250);
pub const LEASE_KEEPER_TICK_MAX: Duration = Duration::from_secs(5);

/// Shortest time one attempt of a lease renewal may take (otherwise one keeper tick).
pub const RENEWAL_ATTEMPT_TIMEOUT_MIN: Duration = Duration::from_secs(1);

/// How often the keeper looks at the leases of unyielded messages; each one it finds with
/// less than `visibility - tick` left is renewed to the full visibility timeout, so an
/// unyielded message always has at least `visibility - 2 * tick` left.
pub(crate) fn keeper_tick(visibility: Duration) -> Duration {
    (visibility / 4).clamp(LEASE_KEEPER_TICK_MIN, LEASE_KEEPER_TICK_MAX)
}

/// A received message this consumer holds (delivered or waiting in its lane).
struct Lease {
    message: Message,
    receipt: String,
    group_id: String,
    attempt: u32,
    /// When the current visibility timeout ends.
    lease_until: Instant,
    permit: OwnedSemaphorePermit,
}

/// A key this consumer holds: its delivered head's lane. The epoch tells a lane apart from
/// an older one of the same key whose lease SQS already ended (the key was handed out
/// again), so a late settlement of the old head cannot advance the new lane.
struct Lane {
    epoch: u64,
    held: VecDeque<Lease>,
}

/// The lease of a head handed to the stream and not yet yielded.
struct Buffered {
    receipt: String,
    lease_until: Instant,
}

struct Shared {
    clients: Arc<Clients>,
    queue_url: String,
    topic: TopicName,
    group: GroupName,
    visibility: Duration,
    /// Message groups with a delivered head, and their received successors.
    lanes: Mutex<HashMap<String, Lane>>,
    next_epoch: AtomicU64,
    /// Heads in the stream's buffer, by token (removed when yielded or found lost).
    buffered: Mutex<HashMap<u64, Buffered>>,
    next_token: AtomicU64,
    /// Held while changing visibility in ways that must not overtake each other: the
    /// keeper's renewals against a nack, an extension or a lane's release (a renewal that
    /// landed after a nack's "visible now" would block the key for a whole lease).
    visibility_ops: tokio::sync::Mutex<()>,
    tx: mpsc::Sender<Result<Pending, BusError>>,
}

/// Starts consuming `queue_url`.
pub(crate) fn start(
    clients: Arc<Clients>,
    wait_seconds: u32,
    topic: TopicName,
    group: GroupName,
    queue_url: String,
    options: SubscribeOptions,
) -> DeliveryStream {
    // Never full: every item holds one of max_in_flight permits (errors are rare extras).
    let (tx, rx) = mpsc::channel(options.max_in_flight + AWS_BATCH_MAX);
    let visibility = Duration::from_secs(visibility_seconds(options.ack_timeout) as u64);
    let shared = Arc::new(Shared {
        clients,
        queue_url,
        topic,
        group,
        visibility,
        lanes: Mutex::new(HashMap::new()),
        next_epoch: AtomicU64::new(1),
        buffered: Mutex::new(HashMap::new()),
        next_token: AtomicU64::new(1),
        visibility_ops: tokio::sync::Mutex::new(()),
        tx,
    });
    let permits = Arc::new(Semaphore::new(options.max_in_flight));
    let poller = tokio::spawn(poll(shared.clone(), permits, wait_seconds));
    let keeper = tokio::spawn(keep_leases(shared.clone()));
    Box::pin(SubscriptionStream {
        shared,
        rx,
        poller,
        keeper,
    })
}

/// A head waiting in the stream's buffer; its lease is in `Shared::buffered` under `token`.
struct Pending {
    delivery: Delivery,
    token: u64,
    group_id: String,
    epoch: u64,
}

struct SubscriptionStream {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Result<Pending, BusError>>,
    poller: tokio::task::JoinHandle<()>,
    keeper: tokio::task::JoinHandle<()>,
}

impl SubscriptionStream {
    /// Whether `p` may be yielded: SQS has not handed its key out again since it was
    /// received, and its lease has time left. A stale one is dropped instead, which hands
    /// its key's held successors back to SQS in order.
    fn is_current(&self, p: &Pending) -> bool {
        let lease = lock(&self.shared.buffered).remove(&p.token);
        let Some(lease) = lease else {
            // The keeper found its receipt no longer valid.
            return false;
        };
        // A newer lane of the key means SQS handed the key out again: this lease ended.
        let same_lane = lock(&self.shared.lanes)
            .get(&p.group_id)
            .is_some_and(|l| l.epoch == p.epoch);
        same_lane && lease.lease_until > Instant::now() + HELD_LEASE_MARGIN
    }
}

impl Stream for SubscriptionStream {
    type Item = Result<Delivery, BusError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            return match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(p))) => {
                    if !self.is_current(&p) {
                        drop(p);
                        continue;
                    }
                    Poll::Ready(Some(Ok(p.delivery)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

impl Drop for SubscriptionStream {
    fn drop(&mut self) {
        // Messages received but not delivered come back after their visibility timeout.
        self.poller.abort();
        self.keeper.abort();
    }
}

/// A per-call override of the SDK's attempt timeout.
fn attempt_timeout(timeout: Duration) -> aws_sdk_sqs::config::Builder {
    aws_sdk_sqs::config::Config::builder().timeout_config(
        aws_sdk_sqs::config::timeout::TimeoutConfig::builder()
            .operation_attempt_timeout(timeout)
            .build(),
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind: keep going with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn lock_lanes(shared: &Shared) -> std::sync::MutexGuard<'_, HashMap<String, Lane>> {
    lock(&shared.lanes)
}

async fn poll(shared: Arc<Shared>, permits: Arc<Semaphore>, wait_seconds: u32) {
    let mut backoff = RECEIVE_BACKOFF_MIN;
    loop {
        let Ok(first) = permits.clone().acquire_owned().await else {
            return;
        };
        let mut held = vec![first];
        while held.len() < AWS_BATCH_MAX {
            match permits.clone().try_acquire_owned() {
                Ok(p) => held.push(p),
                Err(_) => break,
            }
        }
        if shared.tx.is_closed() {
            return;
        }
        let call_timeout = Duration::from_secs(u64::from(wait_seconds)) + RECEIVE_CALL_SLACK;
        let received = shared
            .clients
            .sqs
            .receive_message()
            .queue_url(&shared.queue_url)
            .max_number_of_messages(held.len() as i32)
            .wait_time_seconds(wait_seconds as i32)
            .visibility_timeout(shared.visibility.as_secs() as i32)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .customize()
            .config_override(attempt_timeout(call_timeout))
            .send()
            .await;
        let received_at = Instant::now();
        let out = match received {
            Ok(out) => {
                backoff = RECEIVE_BACKOFF_MIN;
                out
            }
            Err(e) => {
                let err = map_sdk("sqs:ReceiveMessage", e);
                tracing::warn!(group = %shared.group, error = %err, ?backoff, "receive failed; retrying");
                if !err.is_transient() && shared.tx.try_send(Err(err)).is_err() {
                    return;
                }
                drop(held);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECEIVE_BACKOFF_MAX);
                continue;
            }
        };
        if wait_seconds == 0 && out.messages().is_empty() {
            drop(held);
            tokio::time::sleep(SHORT_POLL_IDLE_PAUSE).await;
            continue;
        }
        // Keys opened by this receive: later messages of theirs in it wait in the lane.
        let mut opened: HashSet<String> = HashSet::new();
        for m in out.messages().iter() {
            let Some(permit) = held.pop() else {
                // SQS never returns more than asked; if it did, the extra comes back later.
                tracing::warn!("sqs:ReceiveMessage returned more messages than asked for");
                break;
            };
            let receipt = m.receipt_handle().unwrap_or_default().to_string();
            let sys = m.attributes();
            let attempt = sys
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(1)
                .max(1);
            let attrs = m
                .message_attributes()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| v.string_value().map(|s| (k.clone(), s.to_string())));
            let message = match codec::decode(m.body().unwrap_or_default(), attrs) {
                Ok(message) => message,
                Err(e) => {
                    // Not a CloudEvent: it stays in flight and, after max_receive_count
                    // receives, SQS moves it to the dead-letter queue.
                    tracing::error!(group = %shared.group, error = %e, "undecodable message; it will reach the dead-letter queue");
                    drop(permit);
                    if shared.tx.try_send(Err(e)).is_err() {
                        return;
                    }
                    continue;
                }
            };
            let group_id = sys
                .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                .cloned()
                .unwrap_or_else(|| codec::encode_group_id(&message));
            let lease = Lease {
                message,
                receipt,
                group_id,
                attempt,
                lease_until: received_at + shared.visibility,
                permit,
            };
            let deliver_now = {
                let mut lanes = lock_lanes(&shared);
                if opened.contains(&lease.group_id) {
                    if let Some(lane) = lanes.get_mut(&lease.group_id) {
                        lane.held.push_back(lease);
                        None
                    } else {
                        // The lane closed meanwhile (its head was nacked): SQS hands the
                        // key out again from its head; let this lease lapse.
                        None
                    }
                } else {
                    // A key SQS hands out anew: any older lane of it lost its lease (the
                    // head timed out), so that lane is replaced.
                    let epoch = shared.next_epoch.fetch_add(1, Ordering::Relaxed);
                    opened.insert(lease.group_id.clone());
                    lanes.insert(
                        lease.group_id.clone(),
                        Lane {
                            epoch,
                            held: VecDeque::new(),
                        },
                    );
                    Some((lease, epoch))
                }
            };
            if let Some((lease, epoch)) = deliver_now {
                if !deliver(&shared, lease, epoch) {
                    return;
                }
            }
        }
    }
}

/// Hands `lease` to the stream; false when the stream is gone.
fn deliver(shared: &Arc<Shared>, lease: Lease, epoch: u64) -> bool {
    let Lease {
        message,
        receipt,
        group_id,
        attempt,
        lease_until,
        permit,
    } = lease;
    let token = shared.next_token.fetch_add(1, Ordering::Relaxed);
    lock(&shared.buffered).insert(
        token,
        Buffered {
            receipt: receipt.clone(),
            lease_until,
        },
    );
    let ack = SqsAcknowledger {
        shared: shared.clone(),
        group_id: group_id.clone(),
        epoch,
        state: Mutex::new(Some(Held {
            receipt,
            _permit: permit,
        })),
    };
    let delivery = Delivery::new(
        message,
        shared.topic.clone(),
        shared.group.clone(),
        attempt,
        Box::new(ack),
    );
    let pending = Pending {
        delivery,
        token,
        group_id,
        epoch,
    };
    let sent = shared.tx.try_send(Ok(pending));
    if sent.is_err() {
        lock(&shared.buffered).remove(&token);
    }
    match sent {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            debug_assert!(false, "the delivery channel is sized for max_in_flight");
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

struct Held {
    receipt: String,
    /// Freed (letting the poller receive one more) when the delivery is settled or dropped.
    _permit: OwnedSemaphorePermit,
}

struct SqsAcknowledger {
    shared: Arc<Shared>,
    group_id: String,
    epoch: u64,
    state: Mutex<Option<Held>>,
}

impl SqsAcknowledger {
    fn take(&self) -> Result<Held, BusError> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| BusError::DeliveryLost(self.group_id.clone()))
    }

    fn put_back(&self, held: Held) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = Some(held);
    }

    async fn set_visibility(&self, receipt: &str, seconds: i32) -> Result<(), BusError> {
        change_visibility(&self.shared, receipt, seconds).await
    }
}

async fn change_visibility(shared: &Shared, receipt: &str, seconds: i32) -> Result<(), BusError> {
    shared
        .clients
        .sqs
        .change_message_visibility()
        .queue_url(&shared.queue_url)
        .receipt_handle(receipt)
        .visibility_timeout(seconds)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| match code_of(&e).as_deref() {
            Some(c) if is_lost_code(c) => BusError::DeliveryLost(c.to_string()),
            _ => map_sdk("sqs:ChangeMessageVisibility", e),
        })
}

fn is_lost_code(code: &str) -> bool {
    code.contains("ReceiptHandleIsInvalid")
        || code.contains("MessageNotInflight")
        || code.contains("InvalidParameterValue")
}

/// Makes every held successor of `group_id` visible again and forgets the lane, so SQS
/// restarts the key from its first unsettled message.
async fn release_lane(shared: &Shared, group_id: &str, epoch: u64) {
    let _ops = shared.visibility_ops.lock().await;
    release_lane_locked(shared, group_id, epoch).await;
}

/// [`release_lane`] for a caller already holding `visibility_ops`.
async fn release_lane_locked(shared: &Shared, group_id: &str, epoch: u64) {
    let held: Vec<Lease> = {
        let mut lanes = lock_lanes(shared);
        if lanes.get(group_id).is_some_and(|l| l.epoch == epoch) {
            lanes
                .remove(group_id)
                .map(|l| Vec::from(l.held))
                .unwrap_or_default()
        } else {
            Vec::new()
        }
    };
    for lease in held {
        if let Err(e) = change_visibility(shared, &lease.receipt, 0).await {
            // Its lease ends on its own; SQS then hands the key out again in order.
            tracing::debug!(error = %e, "releasing a held message failed");
        }
    }
}

/// Where an unyielded lease lives.
enum Holder {
    /// A head in the stream's buffer, by token.
    Buffered(u64),
    /// A successor held in a key's lane.
    Lane { group_id: String, epoch: u64 },
}

struct Due {
    holder: Holder,
    receipt: String,
}

/// Renews the leases of messages received but not yet yielded, so they stay this
/// consumer's however long the application takes to get to them. Yielded deliveries are
/// left alone: their lease is the handler's ack timeout.
async fn keep_leases(shared: Arc<Shared>) {
    let tick = keeper_tick(shared.visibility);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if shared.tx.is_closed() {
            return;
        }
        let _ops = shared.visibility_ops.lock().await;
        let due = due_leases(&shared, tick);
        for chunk in due.chunks(AWS_BATCH_MAX) {
            renew(&shared, chunk).await;
        }
    }
}

/// Unyielded leases with less than `visibility - tick` left.
fn due_leases(shared: &Shared, tick: Duration) -> Vec<Due> {
    let renew_before = Instant::now() + shared.visibility.saturating_sub(tick);
    let mut due: Vec<Due> = lock(&shared.buffered)
        .iter()
        .filter(|(_, b)| b.lease_until < renew_before)
        .map(|(token, b)| Due {
            holder: Holder::Buffered(*token),
            receipt: b.receipt.clone(),
        })
        .collect();
    for (group_id, lane) in lock_lanes(shared).iter() {
        due.extend(
            lane.held
                .iter()
                .filter(|l| l.lease_until < renew_before)
                .map(|l| Due {
                    holder: Holder::Lane {
                        group_id: group_id.clone(),
                        epoch: lane.epoch,
                    },
                    receipt: l.receipt.clone(),
                }),
        );
    }
    due
}

/// Renews up to ten leases in one `ChangeMessageVisibilityBatch`. A failed call is retried
/// on the next tick; a receipt SQS no longer honours marks its message lost, so it is
/// never yielded (the stream drops it, a lane hands its key back to SQS).
async fn renew(shared: &Shared, chunk: &[Due]) {
    let seconds = shared.visibility.as_secs() as i32;
    let entries = chunk
        .iter()
        .enumerate()
        .map(|(i, d)| {
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(&d.receipt)
                .visibility_timeout(seconds)
                .build()
        })
        .collect::<Result<Vec<_>, _>>();
    let entries = match entries {
        Ok(entries) => entries,
        Err(e) => {
            tracing::error!(error = %e, "building a lease renewal failed");
            return;
        }
    };
    // A renewal that hangs (the endpoint is unreachable) must not outlive the leases it
    // renews, nor hold `visibility_ops` (nacks, extensions) for the SDK's long default.
    let renewal_timeout = keeper_tick(shared.visibility).max(RENEWAL_ATTEMPT_TIMEOUT_MIN);
    let sent_at = Instant::now();
    let out = shared
        .clients
        .sqs
        .change_message_visibility_batch()
        .queue_url(&shared.queue_url)
        .set_entries(Some(entries))
        .customize()
        .config_override(attempt_timeout(renewal_timeout))
        .send()
        .await;
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            let err = map_sdk("sqs:ChangeMessageVisibilityBatch", e);
            tracing::warn!(group = %shared.group, error = %err, "renewing held leases failed; retrying next tick");
            return;
        }
    };
    let entry = |id: &str| id.parse::<usize>().ok().and_then(|i| chunk.get(i));
    let until = sent_at + shared.visibility;
    for ok in out.successful() {
        if let Some(d) = entry(ok.id()) {
            set_lease(shared, d, Some(until));
        }
    }
    for failed in out.failed() {
        let Some(d) = entry(failed.id()) else {
            continue;
        };
        if is_lost_code(failed.code()) {
            set_lease(shared, d, None);
        } else {
            tracing::warn!(group = %shared.group, code = failed.code(), "renewing a held lease failed; retrying next tick");
        }
    }
}

/// Records a renewed lease (`Some(until)`) or a lost one (`None`).
fn set_lease(shared: &Shared, due: &Due, until: Option<Instant>) {
    match &due.holder {
        Holder::Buffered(token) => {
            let mut buffered = lock(&shared.buffered);
            match until {
                Some(until) => {
                    if let Some(b) = buffered.get_mut(token) {
                        b.lease_until = until;
                    }
                }
                None => {
                    buffered.remove(token);
                }
            }
        }
        Holder::Lane { group_id, epoch } => {
            let mut lanes = lock_lanes(shared);
            if let Some(lane) = lanes.get_mut(group_id).filter(|l| l.epoch == *epoch) {
                for l in lane.held.iter_mut().filter(|l| l.receipt == due.receipt) {
                    // A lost one looks expired: advancing to it hands the key back instead.
                    l.lease_until = until.unwrap_or_else(Instant::now);
                }
            }
        }
    }
}

/// After the head of `group_id` was acked: surface the next held message, or close the lane.
async fn advance(shared: &Arc<Shared>, group_id: &str, epoch: u64) {
    let next = {
        let mut lanes = lock_lanes(shared);
        match lanes.get_mut(group_id) {
            Some(lane) if lane.epoch == epoch => match lane.held.pop_front() {
                Some(next) => next,
                None => {
                    lanes.remove(group_id);
                    return;
                }
            },
            // Another lane of the key (or none): not ours to advance.
            _ => return,
        }
    };
    let fresh_enough = next.lease_until > Instant::now() + HELD_LEASE_MARGIN;
    let refreshing_at = Instant::now();
    let refreshed = fresh_enough
        && change_visibility(shared, &next.receipt, shared.visibility.as_secs() as i32)
            .await
            .is_ok();
    if refreshed {
        let mut next = next;
        next.lease_until = refreshing_at + shared.visibility;
        if !deliver(shared, next, epoch) {
            lock_lanes(shared).remove(group_id);
        }
    } else {
        // The lease may be gone: hand the rest of the key back to SQS, in order.
        drop(next);
        release_lane(shared, group_id, epoch).await;
    }
}

#[async_trait]
impl Acknowledger for SqsAcknowledger {
    async fn ack(&self) -> Result<(), BusError> {
        let held = self.take()?;
        let result = self
            .shared
            .clients
            .sqs
            .delete_message()
            .queue_url(&self.shared.queue_url)
            .receipt_handle(&held.receipt)
            .send()
            .await;
        match result {
            Ok(_) => {
                drop(held);
                advance(&self.shared, &self.group_id, self.epoch).await;
                Ok(())
            }
            Err(e) => {
                let code = code_of(&e);
                let err = map_sdk("sqs:DeleteMessage", e);
                if code.as_deref().is_some_and(is_lost_code) {
                    drop(held);
                    release_lane(&self.shared, &self.group_id, self.epoch).await;
                    return Err(BusError::DeliveryLost(self.group_id.clone()));
                }
                // Still held: the caller may ack again.
                self.put_back(held);
                Err(err)
            }
        }
    }

    async fn nack(&self, delay: Option<Duration>) -> Result<(), BusError> {
        let held = self.take()?;
        let _ops = self.shared.visibility_ops.lock().await;
        release_lane_locked(&self.shared, &self.group_id, self.epoch).await;
        let seconds = delay.map(visibility_seconds).unwrap_or(0);
        // Visibility = the delay: SQS FIFO keeps the key blocked meanwhile, then hands this
        // message out again first, its receive count (the attempt) one higher.
        let result = self.set_visibility(&held.receipt, seconds).await;
        drop(held);
        result
    }

    async fn extend(&self, by: Duration) -> Result<(), BusError> {
        if by > NACK_DELAY_MAX {
            return Err(BusError::InvalidArgument(format!(
                "an extension of {by:?} is over the {NACK_DELAY_MAX:?} maximum"
            )));
        }
        let receipt = match &*self.state.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(h) => h.receipt.clone(),
            None => return Err(BusError::DeliveryLost(self.group_id.clone())),
        };
        let seconds = visibility_seconds(by);
        let _ops = self.shared.visibility_ops.lock().await;
        let until = Instant::now() + Duration::from_secs(seconds as u64);
        self.set_visibility(&receipt, seconds).await?;
        // The held successors of the key must not time out behind it either.
        let receipts: Vec<String> = lock_lanes(&self.shared)
            .get(&self.group_id)
            .filter(|lane| lane.epoch == self.epoch)
            .map(|lane| lane.held.iter().map(|l| l.receipt.clone()).collect())
            .unwrap_or_default();
        for r in receipts {
            if change_visibility(&self.shared, &r, seconds).await.is_ok() {
                if let Some(lane) = lock_lanes(&self.shared).get_mut(&self.group_id) {
                    for l in lane.held.iter_mut().filter(|l| l.receipt == r) {
                        l.lease_until = until;
                    }
                }
            }
        }
        Ok(())
    }
}

impl Drop for SqsAcknowledger {
    fn drop(&mut self) {
        let unsettled = self.state.get_mut().map(|s| s.is_some()).unwrap_or(false);
        if !unsettled {
            return;
        }
        // Dropped without a settlement (a crashed handler): the message itself comes back
        // after its visibility timeout; hand the key's held successors back now so they
        // follow it in order.
        let shared = self.shared.clone();
        let group_id = std::mem::take(&mut self.group_id);
        let epoch = self.epoch;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { release_lane(&shared, &group_id, epoch).await });
        }
    }
}
