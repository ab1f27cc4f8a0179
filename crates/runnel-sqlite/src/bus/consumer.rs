//! One consumer of a group: claims ready rows in batches (never more than its free
//! `max_in_flight` slots), hands them out one by one, and sleeps between claims until a
//! wake-up, the next row's visibility time, or the polling interval — whichever is first.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use runnel_core::bus::{Acknowledger, Delivery, DeliveryStream, SubscribeOptions, NACK_DELAY_MAX};
use runnel_core::{BusError, GroupName, Message, TopicName};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::queue::{self, Lease, Settle};
use super::{duration_micros, BusInner, CLAIM_BATCH_MAX, ERROR_BACKOFF};

/// A claimed row not yet handed to the application. It holds one in-flight slot.
struct Buffered {
    lease: Lease,
    message: Message,
    lease_until: i64,
    permit: OwnedSemaphorePermit,
}

pub(crate) struct Consumer {
    bus: Arc<BusInner>,
    topic: TopicName,
    group: GroupName,
    group_id: i64,
    owner: Arc<str>,
    ack_timeout_micros: i64,
    /// One permit per delivery this consumer may hold unsettled (`max_in_flight`).
    slots: Arc<Semaphore>,
    buffer: VecDeque<Buffered>,
    wake: watch::Receiver<u64>,
    /// The last claim failed: wait [`ERROR_BACKOFF`] before the next.
    backoff: bool,
    closed: bool,
}

impl Consumer {
    pub fn new(
        bus: Arc<BusInner>,
        topic: TopicName,
        group: GroupName,
        group_id: i64,
        options: &SubscribeOptions,
        wake: watch::Receiver<u64>,
    ) -> Self {
        Consumer {
            bus,
            topic,
            group,
            group_id,
            owner: Arc::from(runnel_core::uuid::Uuid::now_v7().to_string()),
            ack_timeout_micros: duration_micros(options.ack_timeout),
            slots: Arc::new(Semaphore::new(options.max_in_flight)),
            buffer: VecDeque::new(),
            wake,
            backoff: false,
            closed: false,
        }
    }

    pub fn into_stream(self) -> DeliveryStream {
        Box::pin(futures_util::stream::unfold(self, |mut c| async move {
            let item = c.next().await?;
            Some((item, c))
        }))
    }

    async fn next(&mut self) -> Option<Result<Delivery, BusError>> {
        if self.closed {
            return None;
        }
        if std::mem::take(&mut self.backoff) {
            tokio::time::sleep(ERROR_BACKOFF).await;
        }
        loop {
            let now = self.bus.now_micros();
            while let Some(mut b) = self.buffer.pop_front() {
                let renew_below =
                    now.saturating_add(self.ack_timeout_micros - self.ack_timeout_micros / 4);
                if b.lease_until >= renew_below {
                    return Some(Ok(self.deliver(b)));
                }
                // It waited here while the application was busy: the handler's ack timeout
                // starts now, so the lease is renewed first. The renewal holds only if no
                // other consumer claimed the row since (same owner, same attempt), even
                // when the lease already ran out, so the attempt is not counted twice.
                let visible_at = now.saturating_add(self.ack_timeout_micros);
                match self
                    .bus
                    .settle(&self.topic, b.lease.clone(), Settle::Extend { visible_at })
                    .await
                {
                    Ok(settled) if settled.held => {
                        b.lease_until = visible_at;
                        return Some(Ok(self.deliver(b)));
                    }
                    // Claimed by another consumer: dropping it frees the slot.
                    Ok(_) => {}
                    Err(e) => {
                        self.buffer.push_front(b);
                        self.backoff = true;
                        return Some(Err(e));
                    }
                }
            }
            // Back-pressure: wait until the application settles something.
            let Ok(first) = self.slots.clone().acquire_owned().await else {
                self.closed = true;
                return None;
            };
            let mut permits = vec![first];
            while permits.len() < CLAIM_BATCH_MAX {
                match self.slots.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            // Mark every wake-up so far as seen before looking, so a commit that lands
            // after the look still wakes the wait below.
            self.wake.borrow_and_update();
            match self.claim(permits.len(), now).await {
                Err(e) => {
                    self.backoff = true;
                    self.closed = matches!(e, BusError::Closed);
                    return Some(Err(e));
                }
                Ok(Claim::Claimed { rows, lease_until }) => {
                    debug_assert!(rows.len() <= permits.len());
                    for (row, permit) in rows.into_iter().zip(permits) {
                        self.buffer.push_back(Buffered {
                            lease: row.lease,
                            message: row.message,
                            lease_until,
                            permit,
                        });
                    }
                }
                Ok(Claim::Idle { next_visible }) => {
                    drop(permits);
                    self.idle(next_visible).await;
                }
            }
        }
    }

    /// Claims up to `limit` rows, first probing on a read connection so an idle consumer
    /// never occupies the writer.
    async fn claim(&self, limit: usize, now: i64) -> Result<Claim, BusError> {
        let group_id = self.group_id;
        let next_visible = self
            .bus
            .store
            .read(move |conn| queue::next_visible(conn, group_id))
            .await?;
        match next_visible {
            Some(t) if t <= now => {}
            _ => return Ok(Claim::Idle { next_visible }),
        }
        let owner = self.owner.clone();
        let bus = self.bus.clone();
        let ack_timeout = self.ack_timeout_micros;
        let rows = self
            .bus
            .store
            .submit(0, crate::store::keep_all, move |conn, _| {
                let now = bus.now_micros();
                let lease_until = now.saturating_add(ack_timeout);
                let rows = queue::claim(conn, group_id, &owner, now, lease_until, limit)?;
                if rows.is_empty() {
                    // Another consumer took them first.
                    let next_visible = queue::next_visible(conn, group_id)?;
                    Ok(Claim::Idle { next_visible })
                } else {
                    Ok(Claim::Claimed { rows, lease_until })
                }
            })
            .await?;
        Ok(rows)
    }

    /// Waits for a wake-up, the next row's visibility time, or the polling interval.
    async fn idle(&mut self, next_visible: Option<i64>) {
        let poll = self.bus.options.poll_interval;
        let wait = match next_visible {
            Some(t) => {
                let micros = t.saturating_sub(self.bus.now_micros()).max(0) as u64;
                // A millisecond more: waking just before the row is visible would find
                // nothing and sleep again.
                (Duration::from_micros(micros) + Duration::from_millis(1)).min(poll)
            }
            None => poll,
        };
        tokio::select! {
            changed = self.wake.changed() => {
                if changed.is_err() {
                    // The store is going away; fall back to plain polling.
                    tokio::time::sleep(wait).await;
                }
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }

    fn deliver(&self, b: Buffered) -> Delivery {
        let attempt = u32::try_from(b.lease.attempt).unwrap_or(u32::MAX);
        Delivery::new(
            b.message,
            self.topic.clone(),
            self.group.clone(),
            attempt,
            Box::new(SqliteAcknowledger {
                bus: self.bus.clone(),
                topic: self.topic.clone(),
                group: self.group.clone(),
                lease: b.lease,
                _slot: b.permit,
            }),
        )
    }
}

enum Claim {
    /// Leased until `lease_until` (µs).
    Claimed {
        rows: Vec<queue::Claimed>,
        lease_until: i64,
    },
    Idle {
        next_visible: Option<i64>,
    },
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        // Rows claimed but never handed out go back at once rather than after the ack
        // timeout. Best effort: without a runtime they simply time out.
        let leases: Vec<Lease> = self.buffer.drain(..).map(|b| b.lease).collect();
        let bus = self.bus.clone();
        let topic = self.topic.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                for lease in leases {
                    let now = bus.now_micros();
                    let _ = bus
                        .settle(&topic, lease, Settle::Release { visible_at: now })
                        .await;
                }
            });
        }
    }
}

/// Settles one delivery. Holds the consumer's in-flight slot until it is dropped.
struct SqliteAcknowledger {
    bus: Arc<BusInner>,
    topic: TopicName,
    group: GroupName,
    lease: Lease,
    _slot: OwnedSemaphorePermit,
}

impl SqliteAcknowledger {
    async fn settle(&self, how: impl FnOnce(i64) -> Settle) -> Result<(), BusError> {
        let now = self.bus.now_micros();
        let settled = self
            .bus
            .settle(&self.topic, self.lease.clone(), how(now))
            .await?;
        if settled.held {
            Ok(())
        } else {
            Err(BusError::DeliveryLost(format!(
                "message #{} of topic {} for group {} (attempt {})",
                self.lease.seq, self.topic, self.group, self.lease.attempt
            )))
        }
    }
}

#[async_trait]
impl Acknowledger for SqliteAcknowledger {
    async fn ack(&self) -> Result<(), BusError> {
        self.settle(|_| Settle::Ack).await
    }

    async fn nack(&self, delay: Option<Duration>) -> Result<(), BusError> {
        let delay = delay.unwrap_or_default();
        check_delay("nack delay", delay)?;
        let delay = duration_micros(delay);
        self.settle(|now| Settle::Nack {
            visible_at: now.saturating_add(delay),
        })
        .await
    }

    async fn extend(&self, by: Duration) -> Result<(), BusError> {
        check_delay("extension", by)?;
        let by = duration_micros(by);
        self.settle(|now| Settle::Extend {
            visible_at: now.saturating_add(by),
        })
        .await
    }
}

fn check_delay(what: &str, d: Duration) -> Result<(), BusError> {
    if d > NACK_DELAY_MAX {
        return Err(BusError::InvalidArgument(format!(
            "{what} {d:?} is over the {NACK_DELAY_MAX:?} maximum"
        )));
    }
    Ok(())
}
