//! The I/O behind one consumer: the poller (calls `ReceiveMessage` while permits are
//! free, long-polling only while the application waits, and feeds the book), the keeper (renews the leases of unyielded messages),
//! and the visibility changes that advance or release a group's line.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{ChangeMessageVisibilityBatchRequestEntry, MessageSystemAttributeName};
use runnel_core::bus::Delivery;
use runnel_core::{BusError, GroupName, TopicName};
use runnel_transport_kit::{EntryId, Handout, Shared};
use tokio::sync::{mpsc, Semaphore};

use super::demand::Demand;
use super::state::{Item, Received, SqsState};
use super::{Held, SqsAcknowledger};
use crate::bus::{Clients, AWS_BATCH_MAX};
use crate::codec;
use crate::error::{code_of, map_sdk};

/// First pause after a failed receive; doubles up to [`RECEIVE_BACKOFF_MAX`].
pub const RECEIVE_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest pause between failed receives (the broker is down: keep trying, slowly).
pub const RECEIVE_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Pause after a short poll (`wait=0s`) that returned nothing, so an idle consumer
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

/// What the consumer's tasks and acknowledgers share.
pub(crate) struct Consumer {
    pub clients: Arc<Clients>,
    pub queue_url: String,
    pub topic: TopicName,
    pub group: GroupName,
    pub visibility: Duration,
    pub state: Arc<Shared<SqsState>>,
    /// Held while changing visibility in ways that must not overtake each other: the
    /// keeper's renewals against a nack, an extension or a line's release (a renewal that
    /// landed after a nack's "visible now" would block the key for a whole lease).
    pub visibility_ops: tokio::sync::Mutex<()>,
    /// Whether the application waits for a delivery (only then may a long poll run).
    pub demand: Demand,
    pub tx: mpsc::Sender<Result<Handout, BusError>>,
    /// How this subscription reads messages.
    pub envelope: runnel_core::envelope::Envelope,
}

/// A per-call override of the SDK's attempt timeout.
fn attempt_timeout(timeout: Duration) -> aws_sdk_sqs::config::Builder {
    aws_sdk_sqs::config::Config::builder().timeout_config(
        aws_sdk_sqs::config::timeout::TimeoutConfig::builder()
            .operation_attempt_timeout(timeout)
            .build(),
    )
}

pub(super) async fn poll(shared: Arc<Consumer>, permits: Arc<Semaphore>, wait_seconds: u32) {
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
        // A long poll only for an application that waits: one still open when the
        // consumer stops would take the next message for nobody (see `demand`). Ahead of
        // the application, a short poll prefetches what is already there.
        let waiting = shared.demand.is_waiting();
        let wait_seconds_now = if waiting { wait_seconds } else { 0 };
        let call_timeout = Duration::from_secs(u64::from(wait_seconds_now)) + RECEIVE_CALL_SLACK;
        let received = shared
            .clients
            .sqs
            .receive_message()
            .queue_url(&shared.queue_url)
            .max_number_of_messages(held.len() as i32)
            .wait_time_seconds(wait_seconds_now as i32)
            .visibility_timeout(shared.visibility.as_secs() as i32)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
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
                if !err.is_transient() && !hand_error(&shared, err) {
                    return;
                }
                drop(held);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECEIVE_BACKOFF_MAX);
                continue;
            }
        };
        if out.messages().is_empty() {
            drop(held);
            if !waiting {
                // Nothing to prefetch: wait for the application to ask.
                tokio::select! {
                    _ = shared.demand.until_waiting() => {}
                    _ = shared.tx.closed() => return,
                }
            } else if wait_seconds == 0 {
                tokio::time::sleep(SHORT_POLL_IDLE_PAUSE).await;
            }
            continue;
        }
        // Keys opened by this receive: later messages of theirs in it wait in the line.
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
            let facts = codec::broker_facts(m, shared.topic.as_str());
            let message = match codec::decode(
                m.body().unwrap_or_default(),
                attrs,
                &shared.envelope,
                facts,
            ) {
                Ok(message) => message,
                Err(e) => {
                    // Not a message the envelope reads: it stays in flight and, after max_deliveries
                    // receives, SQS moves it to the dead-letter queue.
                    tracing::error!(group = %shared.group, error = %e, "undecodable message; it will reach the dead-letter queue");
                    drop(permit);
                    if !hand_error(&shared, e) {
                        return;
                    }
                    continue;
                }
            };
            let group_id = sys
                .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                .cloned()
                .unwrap_or_else(|| codec::encode_group_id(&message));
            let item = Item {
                message: Some(message),
                receipt,
                lease_until: received_at + shared.visibility,
                permit: Some(permit),
                epoch: 0,
            };
            let opens = opened.insert(group_id.clone());
            let received = shared.state.lock().receive(&group_id, opens, attempt, item);
            if let Received::Head(id) = received {
                if !deliver(&shared, id) {
                    return;
                }
            }
        }
    }
}

/// Hands an error to the stream; false when the stream is gone.
fn hand_error(shared: &Consumer, err: BusError) -> bool {
    // Before it is queued, as in `deliver`.
    shared.demand.met();
    shared.tx.try_send(Err(err)).is_ok()
}

/// Hands the ready head `id` to the stream; false when the stream is gone.
fn deliver(shared: &Arc<Consumer>, id: EntryId) -> bool {
    let Some(out) = shared.state.lock().hand_out(id) else {
        return true;
    };
    let Some(group_id) = shared
        .state
        .lock()
        .book
        .get(id)
        .and_then(|e| e.key().cloned().map(|k| (k, e.item.epoch)))
    else {
        return true;
    };
    let (group_id, epoch) = group_id;
    let ack = SqsAcknowledger {
        consumer: shared.clone(),
        id,
        token: out.handed.token,
        group_id,
        epoch,
        state: std::sync::Mutex::new(Some(Held {
            receipt: out.receipt,
            _permit: out.permit,
        })),
    };
    let delivery = Delivery::new(
        out.message,
        shared.topic.clone(),
        shared.group.clone(),
        out.handed.attempt,
        Box::new(ack),
    );
    let handout = Handout {
        id,
        token: out.handed.token,
        delivery,
    };
    // Before it is queued: the application may take it and ask again at once.
    shared.demand.met();
    match shared.tx.try_send(Ok(handout)) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            debug_assert!(false, "the delivery channel is sized for max_in_flight");
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

pub(super) async fn change_visibility(
    shared: &Consumer,
    receipt: &str,
    seconds: i32,
) -> Result<(), BusError> {
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

pub(super) fn is_lost_code(code: &str) -> bool {
    code.contains("ReceiptHandleIsInvalid")
        || code.contains("MessageNotInflight")
        || code.contains("InvalidParameterValue")
}

/// Makes every held successor of `group_id` visible again and forgets the line, so SQS
/// restarts the key from its first unsettled message.
pub(super) async fn release_line(shared: &Consumer, group_id: &str, epoch: u64) {
    let _ops = shared.visibility_ops.lock().await;
    release_line_locked(shared, group_id, epoch).await;
}

/// [`release_line`] for a caller already holding `visibility_ops`.
pub(super) async fn release_line_locked(shared: &Consumer, group_id: &str, epoch: u64) {
    let held = shared.state.lock().release(group_id, epoch);
    for receipt in held {
        if let Err(e) = change_visibility(shared, &receipt, 0).await {
            // Its lease ends on its own; SQS then hands the key out again in order.
            tracing::debug!(error = %e, "releasing a held message failed");
        }
    }
}

/// Renews the leases of messages received but not yet yielded, so they stay this
/// consumer's however long the application takes to get to them. Yielded deliveries are
/// left alone: their lease is the handler's ack timeout.
pub(super) async fn keep_leases(shared: Arc<Consumer>) {
    let tick = keeper_tick(shared.visibility);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if shared.tx.is_closed() {
            return;
        }
        let _ops = shared.visibility_ops.lock().await;
        let renew_before = Instant::now() + shared.visibility.saturating_sub(tick);
        let due = shared.state.lock().due_leases(renew_before);
        for chunk in due.chunks(AWS_BATCH_MAX) {
            renew(&shared, chunk).await;
        }
    }
}

/// Renews up to ten leases in one `ChangeMessageVisibilityBatch`. A failed call is retried
/// on the next tick; a receipt SQS no longer honours marks its message lost, so it is
/// never yielded (the stream drops it, a lane hands its key back to SQS).
async fn renew(shared: &Consumer, chunk: &[(EntryId, String)]) {
    let seconds = shared.visibility.as_secs() as i32;
    let entries = chunk
        .iter()
        .enumerate()
        .map(|(i, d)| {
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(&d.1)
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
            shared
                .state
                .lock()
                .set_lease(d.0, &d.1, Some(until), Instant::now());
        }
    }
    for failed in out.failed() {
        let Some(d) = entry(failed.id()) else {
            continue;
        };
        if is_lost_code(failed.code()) {
            shared
                .state
                .lock()
                .set_lease(d.0, &d.1, None, Instant::now());
        } else {
            tracing::warn!(group = %shared.group, code = failed.code(), "renewing a held lease failed; retrying next tick");
        }
    }
}

/// After the head `(id, token)` of `group_id` was deleted: surface the line's next held
/// message (its lease refreshed first), or hand the line back to SQS.
pub(super) async fn advance(
    shared: &Arc<Consumer>,
    id: EntryId,
    token: u64,
    group_id: &str,
    epoch: u64,
) {
    let next = shared.state.lock().acked(id, token, Instant::now());
    // Another line of the key (or none, or nothing more in it): nothing to surface.
    let Some((next, receipt, fresh)) = next else {
        return;
    };
    let refreshing_at = Instant::now();
    let refreshed = fresh
        && change_visibility(shared, &receipt, shared.visibility.as_secs() as i32)
            .await
            .is_ok();
    if refreshed {
        shared.state.lock().set_lease(
            next,
            &receipt,
            Some(refreshing_at + shared.visibility),
            Instant::now(),
        );
        if !deliver(shared, next) {
            shared.state.lock().release(group_id, epoch);
        }
    } else {
        // The lease may be gone: hand the rest of the key back to SQS, in order.
        release_line(shared, group_id, epoch).await;
    }
}
