//! Settles one delivery through the engine: ack, nack with a delay, extend. Holds the
//! consumer's in-flight slot until it is dropped, so a consumer never has more than
//! `max_in_flight` deliveries unsettled.

use std::time::Duration;

use runnel_core::bus::{Acknowledger, NACK_DELAY_MAX};
use runnel_core::chrono::{DateTime, Utc};
use runnel_core::{async_trait, BusError, GroupName, TopicName};
use tokio::sync::OwnedSemaphorePermit;

use crate::backend::{BusBackend, Lease, Settle};
use crate::engine::BusEngine;
use crate::time::after;

pub(crate) struct EngineAcknowledger<B: BusBackend> {
    engine: BusEngine<B>,
    topic: TopicName,
    group: GroupName,
    lease: B::Lease,
    _slot: OwnedSemaphorePermit,
}

impl<B: BusBackend> EngineAcknowledger<B> {
    pub fn new(
        engine: BusEngine<B>,
        topic: TopicName,
        group: GroupName,
        lease: B::Lease,
        slot: OwnedSemaphorePermit,
    ) -> Self {
        EngineAcknowledger {
            engine,
            topic,
            group,
            lease,
            _slot: slot,
        }
    }

    async fn settle(&self, how: impl FnOnce(DateTime<Utc>) -> Settle) -> Result<(), BusError> {
        let now = self.engine.now();
        let settled = self
            .engine
            .settle(&self.topic, &self.lease, how(now))
            .await?;
        if settled.held {
            Ok(())
        } else {
            Err(BusError::DeliveryLost(format!(
                "message #{} of topic {} for group {} (attempt {})",
                self.lease.seq(),
                self.topic,
                self.group,
                self.lease.attempt()
            )))
        }
    }
}

#[async_trait]
impl<B: BusBackend> Acknowledger for EngineAcknowledger<B> {
    async fn ack(&self) -> Result<(), BusError> {
        self.settle(|_| Settle::Ack).await
    }

    async fn nack(&self, delay: Option<Duration>) -> Result<(), BusError> {
        let delay = delay.unwrap_or_default();
        check_delay("nack delay", delay)?;
        self.settle(|now| Settle::Nack {
            visible_at: after(now, delay),
        })
        .await
    }

    async fn extend(&self, by: Duration) -> Result<(), BusError> {
        check_delay("extension", by)?;
        self.settle(|now| Settle::Extend {
            visible_at: after(now, by),
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
