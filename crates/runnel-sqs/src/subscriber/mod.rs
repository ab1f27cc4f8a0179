//! One consumer of a group: a long-polling driver task feeding a bounded stream
//! ([`driver`]), the kit's per-key book of what it holds ([`state`]), and the
//! acknowledger behind each delivery.
//!
//! SQS FIFO hands a group's messages out in order and hands out nothing more of a message
//! group (= key) while one of its messages is in flight, to any consumer. One
//! `ReceiveMessage` call may still return several messages of the same message group at
//! once; this consumer then delivers only the first and holds the rest (still in flight,
//! so no other consumer gets them) in the group's line, surfacing the next one when the
//! previous is acked. A nack makes the held ones visible again first, so SQS restarts the
//! key from the nacked message.
//!
//! A message this consumer holds but has not yielded yet (waiting in the stream's buffer or
//! in a line) keeps its lease: a keeper task renews it before it runs out, so a consumer
//! that falls behind neither burns receive counts (which lead to the dead-letter queue)
//! nor yields a copy SQS has already handed out again.
//!
//! A long poll runs only while the application waits on the stream ([`demand`]): SQS
//! keeps serving a long poll whose client has gone, so one left open by a consumer that
//! stopped would take the next message for nobody, hiding it for a visibility timeout.

mod demand;
mod driver;
mod state;

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::Stream;
use runnel_core::bus::{Acknowledger, Delivery, DeliveryStream, SubscribeOptions};
use runnel_core::{BusError, GroupName, TopicName};
use runnel_transport_kit::{check_extension, handout_stream, EntryId, Shared};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::bus::{visibility_seconds, Clients, AWS_BATCH_MAX};
use crate::error::{code_of, map_sdk};
use demand::Demand;
use driver::{
    advance, change_visibility, is_lost_code, release_line, release_line_locked, Consumer,
};
use state::SqsState;

/// Starts consuming `queue_url`.
pub(crate) fn start(
    clients: Arc<Clients>,
    wait_seconds: u32,
    topic: TopicName,
    group: GroupName,
    queue_url: String,
    options: SubscribeOptions,
    envelope: runnel_core::envelope::Envelope,
) -> DeliveryStream {
    // Never full: every item holds one of max_in_flight permits (errors are rare extras).
    let (tx, rx) = mpsc::channel(options.max_in_flight + AWS_BATCH_MAX);
    let visibility = Duration::from_secs(visibility_seconds(options.ack_timeout) as u64);
    let state = Shared::new(SqsState::new());
    let consumer = Arc::new(Consumer {
        clients,
        queue_url,
        topic,
        group,
        visibility,
        state: state.clone(),
        visibility_ops: tokio::sync::Mutex::new(()),
        demand: Demand::new(),
        tx,
        envelope,
    });
    let permits = Arc::new(Semaphore::new(options.max_in_flight));
    let poller = tokio::spawn(driver::poll(consumer.clone(), permits, wait_seconds));
    let keeper = tokio::spawn(driver::keep_leases(consumer.clone()));
    Box::pin(Asking {
        deliveries: handout_stream(rx, state, Tasks { poller, keeper }),
        consumer,
    })
}

/// The delivery stream, telling the poller when the application waits on it.
struct Asking {
    deliveries: DeliveryStream,
    consumer: Arc<Consumer>,
}

impl Stream for Asking {
    type Item = Result<Delivery, BusError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = self.deliveries.as_mut().poll_next(cx);
        match next {
            Poll::Pending => self.consumer.demand.wanted(),
            Poll::Ready(_) => self.consumer.demand.met(),
        }
        next
    }
}

/// The driver's tasks, aborted with the stream. Messages received but not delivered come
/// back after their visibility timeout.
struct Tasks {
    poller: tokio::task::JoinHandle<()>,
    keeper: tokio::task::JoinHandle<()>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.poller.abort();
        self.keeper.abort();
    }
}

struct Held {
    receipt: String,
    /// Freed (letting the poller receive one more) when the delivery is settled or dropped.
    _permit: Option<OwnedSemaphorePermit>,
}

struct SqsAcknowledger {
    consumer: Arc<Consumer>,
    id: EntryId,
    token: u64,
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
}

#[async_trait]
impl Acknowledger for SqsAcknowledger {
    async fn ack(&self) -> Result<(), BusError> {
        let held = self.take()?;
        let c = &self.consumer;
        let result = c
            .clients
            .sqs
            .delete_message()
            .queue_url(&c.queue_url)
            .receipt_handle(&held.receipt)
            .send()
            .await;
        match result {
            Ok(_) => {
                drop(held);
                advance(c, self.id, self.token, &self.group_id, self.epoch).await;
                Ok(())
            }
            Err(e) => {
                let code = code_of(&e);
                let err = map_sdk("sqs:DeleteMessage", e);
                if code.as_deref().is_some_and(is_lost_code) {
                    drop(held);
                    release_line(c, &self.group_id, self.epoch).await;
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
        let _ops = self.consumer.visibility_ops.lock().await;
        release_line_locked(&self.consumer, &self.group_id, self.epoch).await;
        let seconds = delay.map(visibility_seconds).unwrap_or(0);
        // Visibility = the delay: SQS FIFO keeps the key blocked meanwhile, then hands this
        // message out again first, its receive count (the attempt) one higher.
        let result = change_visibility(&self.consumer, &held.receipt, seconds).await;
        drop(held);
        result
    }

    async fn extend(&self, by: Duration) -> Result<(), BusError> {
        check_extension(by)?;
        let receipt = match &*self.state.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(h) => h.receipt.clone(),
            None => return Err(BusError::DeliveryLost(self.group_id.clone())),
        };
        let seconds = visibility_seconds(by);
        let c = &self.consumer;
        let _ops = c.visibility_ops.lock().await;
        let until = std::time::Instant::now() + Duration::from_secs(seconds as u64);
        change_visibility(c, &receipt, seconds).await?;
        // The held successors of the key must not time out behind it either.
        let held = c.state.lock().held_receipts(&self.group_id, self.epoch);
        for (id, r) in held {
            if change_visibility(c, &r, seconds).await.is_ok() {
                c.state
                    .lock()
                    .set_lease(id, &r, Some(until), std::time::Instant::now());
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
        // Dropped without a settlement (a crashed handler, or a stale hand-out the stream
        // skipped): the message itself comes back after its visibility timeout; hand the
        // key's held successors back now so they follow it in order.
        let consumer = self.consumer.clone();
        let group_id = std::mem::take(&mut self.group_id);
        let epoch = self.epoch;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { release_line(&consumer, &group_id, epoch).await });
        }
    }
}
