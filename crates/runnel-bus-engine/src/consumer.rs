//! One consumer of a group: claims ready rows in batches (never more than its free
//! `max_in_flight` slots), hands them out one by one — renewing a row's lease first if it
//! waited in the book while the application was busy — and sleeps between claims until a
//! wake-up, the next row's visibility time, or the polling interval, whichever is first.

use std::sync::Arc;

use runnel_core::bus::{Delivery, DeliveryStream, SubscribeOptions};
use runnel_core::chrono::{DateTime, Utc};
use runnel_core::uuid::Uuid;
use runnel_core::{BusError, GroupName, TopicName};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::acknowledger::EngineAcknowledger;
use crate::backend::{BusBackend, Claim, ClaimRequest, Lease, Settle};
use crate::book::{idle_wait, Buffered, ClaimBook, Handout};
use crate::engine::BusEngine;
use crate::{CLAIM_BATCH_MAX, ERROR_BACKOFF};

type Book<B> = ClaimBook<<B as BusBackend>::Lease, OwnedSemaphorePermit>;

pub(crate) struct Consumer<B: BusBackend> {
    engine: BusEngine<B>,
    topic: TopicName,
    group: GroupName,
    group_id: B::Group,
    owner: Uuid,
    options: SubscribeOptions,
    /// One permit per delivery this consumer may hold unsettled (`max_in_flight`).
    slots: Arc<Semaphore>,
    book: Book<B>,
    wake: watch::Receiver<u64>,
    /// The last claim failed: wait [`ERROR_BACKOFF`] before the next.
    backoff: bool,
    closed: bool,
}

impl<B: BusBackend> Consumer<B> {
    pub fn new(
        engine: BusEngine<B>,
        topic: TopicName,
        group: GroupName,
        group_id: B::Group,
        options: SubscribeOptions,
        wake: watch::Receiver<u64>,
    ) -> Self {
        Consumer {
            engine,
            topic,
            group,
            group_id,
            owner: Uuid::now_v7(),
            slots: Arc::new(Semaphore::new(options.max_in_flight)),
            book: ClaimBook::new(options.max_in_flight, options.ack_timeout),
            options,
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
            let now = self.engine.now();
            while let Some(handout) = self.book.next(now) {
                let (row, visible_at) = match handout {
                    Handout::Ready(row) => return Some(Ok(self.deliver(row))),
                    Handout::Renew { row, visible_at } => (row, visible_at),
                };
                // The renewal holds only if no other consumer claimed the row since (same
                // owner, same attempt), even when the lease already ran out, so the
                // attempt is not counted twice.
                match self
                    .engine
                    .settle(&self.topic, &row.lease, Settle::Extend { visible_at })
                    .await
                {
                    Ok(settled) if settled.held => {
                        return Some(Ok(self.deliver(Book::<B>::renewed(row, visible_at))));
                    }
                    // Claimed by another consumer: dropping it frees the slot.
                    Ok(_) => {}
                    Err(e) => {
                        self.book.put_back(row);
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
            let request = ClaimRequest {
                group: &self.group_id,
                owner: self.owner,
                limit: permits.len(),
                now,
                ack_timeout: self.options.ack_timeout,
            };
            match self.engine.backend().claim(request).await {
                Err(e) => {
                    self.backoff = true;
                    self.closed = matches!(e, BusError::Closed);
                    return Some(Err(e));
                }
                Ok(Claim::Claimed { rows, lease_until }) => {
                    // Spare permits (fewer rows than asked for) are freed here.
                    drop(self.book.admit(rows, lease_until, permits));
                }
                Ok(Claim::Idle { next_visible }) => {
                    drop(permits);
                    self.idle(next_visible).await;
                }
            }
        }
    }

    /// Waits for a wake-up, the next row's visibility time, or the polling interval.
    async fn idle(&mut self, next_visible: Option<DateTime<Utc>>) {
        let wait = idle_wait(
            next_visible,
            self.engine.now(),
            self.engine.options().poll_interval,
        );
        tokio::select! {
            changed = self.wake.changed() => {
                if changed.is_err() {
                    // The signals are going away; fall back to plain polling.
                    tokio::time::sleep(wait).await;
                }
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }

    fn deliver(&self, row: Buffered<B::Lease, OwnedSemaphorePermit>) -> Delivery {
        let attempt = row.lease.attempt();
        Delivery::new(
            row.message,
            self.topic.clone(),
            self.group.clone(),
            attempt,
            Box::new(EngineAcknowledger::new(
                self.engine.clone(),
                self.topic.clone(),
                self.group.clone(),
                row.lease,
                row.slot,
            )),
        )
    }
}

impl<B: BusBackend> Drop for Consumer<B> {
    fn drop(&mut self) {
        if self.book.is_empty() {
            return;
        }
        // Rows claimed but never handed out go back at once rather than after the ack
        // timeout. Best effort: without a runtime they simply time out.
        let leases = self.book.drain_leases();
        let engine = self.engine.clone();
        let topic = self.topic.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                for lease in leases {
                    let visible_at = engine.now();
                    let _ = engine
                        .settle(&topic, &lease, Settle::Release { visible_at })
                        .await;
                }
            });
        }
    }
}
