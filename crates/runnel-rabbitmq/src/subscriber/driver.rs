//! The task behind one subscription: it consumes from the group's queue into the shared
//! book, hands out what the book allows, runs the book's timers, and resubscribes with
//! back-off when the channel or connection is lost.

use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use runnel_core::bus::{Delivery, StartPosition, SubscribeOptions};
use runnel_core::{BusError, GroupName, TopicName};
use runnel_transport_kit::{sleep_until, Handout, Shared};
use tokio::sync::mpsc;

use super::state::RabbitState;
use super::RabbitAcknowledger;
use crate::codec::{broker_attempt, from_amqp};
use crate::connection::{Backoff, Link};
use crate::error::from_lapin;
use crate::topology::{declare_group, group_queue_name};

/// The broker prefetch of a subscription: `max_in_flight` deliveries for the
/// application plus as many again of look-ahead, so a blocked key's held messages do
/// not stall other keys while the window lasts.
fn prefetch(max_in_flight: usize) -> u16 {
    u16::try_from(max_in_flight.saturating_mul(2)).unwrap_or(u16::MAX)
}

/// One consumer on one channel.
pub(super) struct Session {
    channel: Channel,
    consumer: Consumer,
}

pub(super) async fn open_session(
    link: &Link,
    topic: &TopicName,
    group: &GroupName,
    start: StartPosition,
    max_in_flight: usize,
) -> Result<Session, BusError> {
    let connection = link.connection().await?;
    declare_group(
        &connection,
        topic,
        group,
        start == StartPosition::Earliest,
        link.options(),
    )
    .await?;
    let channel = connection.create_channel().await.map_err(from_lapin)?;
    channel
        .basic_qos(prefetch(max_in_flight), BasicQosOptions::default())
        .await
        .map_err(from_lapin)?;
    let tag = format!("runnel-{}", runnel_core::uuid::Uuid::now_v7().simple());
    let consumer = channel
        .basic_consume(
            &group_queue_name(topic, group),
            &tag,
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(from_lapin)?;
    Ok(Session { channel, consumer })
}

pub(super) struct Driver {
    pub link: Arc<Link>,
    pub topic: TopicName,
    pub group: GroupName,
    pub options: SubscribeOptions,
    pub out: mpsc::Sender<Result<Handout, BusError>>,
    pub shared: Arc<Shared<RabbitState>>,
}

impl Driver {
    pub async fn run(self, first: Session) {
        let mut session = Some(first);
        loop {
            let Some(current) = session.as_mut() else {
                match self.reconnect().await {
                    Some(s) => session = Some(s),
                    None => return,
                }
                continue;
            };
            self.dispatch();
            let timer = self.shared.lock().book.next_timer();
            tokio::select! {
                _ = self.out.closed() => {
                    // The stream was dropped: closing the channel returns every
                    // unacknowledged message to the queue for the next consumer.
                    let _ = current.channel.close(200, "subscription dropped").await;
                    return;
                }
                _ = self.shared.woken() => {}
                delivery = current.consumer.next() => match delivery {
                    Some(Ok(d)) => self.accept(d).await,
                    Some(Err(e)) => {
                        tracing::warn!(topic = %self.topic, group = %self.group, error = %e, "consumer lost; reconnecting");
                        self.shared.lock().book.clear();
                        session = None;
                    }
                    None => {
                        tracing::warn!(topic = %self.topic, group = %self.group, "consumer cancelled; reconnecting");
                        self.shared.lock().book.clear();
                        session = None;
                    }
                },
                _ = sleep_until(timer) => {
                    self.shared.lock().book.fire_timers(Instant::now());
                }
            }
        }
    }

    /// Opens a new session with back-off; `None` once the stream was dropped. Settlements
    /// of deliveries from the lost channel fail meanwhile (the book was cleared).
    async fn reconnect(&self) -> Option<Session> {
        let mut backoff = Backoff::new(self.link.options());
        loop {
            let attempt = open_session(
                &self.link,
                &self.topic,
                &self.group,
                StartPosition::Latest,
                self.options.max_in_flight,
            );
            tokio::select! {
                _ = self.out.closed() => return None,
                result = attempt => match result {
                    Ok(s) => {
                        tracing::info!(topic = %self.topic, group = %self.group, "consumer reconnected");
                        return Some(s);
                    }
                    Err(BusError::Closed) => {
                        // The bus was closed: the subscription ends.
                        let _ = self.out.try_send(Err(BusError::Closed));
                        return None;
                    }
                    Err(e) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(topic = %self.topic, group = %self.group, error = %e, ?delay, "resubscribing failed");
                        tokio::select! {
                            _ = self.out.closed() => return None,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                },
            }
        }
    }

    async fn accept(&self, delivery: lapin::message::Delivery) {
        let attempt = broker_attempt(&delivery.properties, delivery.redelivered);
        let envelope = self
            .options
            .envelope
            .as_ref()
            .unwrap_or(&self.link.options().envelope);
        match from_amqp(
            &delivery.properties,
            delivery.data,
            envelope,
            self.topic.as_str(),
        ) {
            Ok(message) => self.shared.lock().accept(delivery.acker, message, attempt),
            Err(e) => {
                // Not a message this envelope reads: straight to the dead-letter queue.
                tracing::warn!(topic = %self.topic, group = %self.group, error = %e, "unreadable message dead-lettered");
                let _ = delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await;
            }
        }
    }

    /// Hands out what the book allows while the stream has room.
    fn dispatch(&self) {
        let mut st = self.shared.lock();
        while let Some(h) = st.book.hand_out() {
            let Some(entry) = st.book.get(h.id) else {
                continue;
            };
            let message = entry.item.message.clone();
            let acker = RabbitAcknowledger {
                shared: self.shared.clone(),
                id: h.id,
                token: h.token,
                message_id: message.id.clone(),
            };
            let delivery = Delivery::new(
                message,
                self.topic.clone(),
                self.group.clone(),
                h.attempt,
                Box::new(acker),
            );
            let handout = Handout {
                id: h.id,
                token: h.token,
                delivery,
            };
            if self.out.try_send(Ok(handout)).is_err() {
                // The application has not read what it was given; try again later.
                st.book.undo_hand_out(h.id, h.token);
                return;
            }
        }
    }
}
