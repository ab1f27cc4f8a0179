//! The handler's publisher: stamps correlation and causation onto everything a handler
//! publishes and holds it until the attempt succeeds (an in-memory outbox), so a failed
//! attempt publishes nothing and a retried one does not publish twice.

use std::fmt;
use std::sync::Mutex;

use async_trait::async_trait;
use runnel_core::bus::Publisher;
use runnel_core::message::{BusError, Message, TopicName, PUBLISH_BATCH_MAX};

use super::context::{lock, HandlerContext};
use super::error::RouterFailure;

/// Most messages one attempt may publish (they are held in memory until it succeeds).
pub const EFFECTS_PER_ATTEMPT_MAX: usize = 1000;

/// Publishes a handler's effects: see [`HandlerContext::publisher`].
#[derive(Clone)]
pub struct EffectPublisher {
    ctx: HandlerContext,
}

impl fmt::Debug for EffectPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EffectPublisher")
            .field("cause", &self.ctx.message().id)
            .finish()
    }
}

impl EffectPublisher {
    pub(crate) fn new(ctx: HandlerContext) -> Self {
        EffectPublisher { ctx }
    }

    /// `message` with this handler's correlation, causation, trace context and user id,
    /// where it has none of its own. The trace context is the current span's (the
    /// handler's, a child of the delivered message's context) when an OpenTelemetry layer
    /// is installed, else the delivered message's own, carried on as it is.
    pub fn stamp(&self, mut message: Message) -> Message {
        if message.traceparent.is_none() {
            crate::trace::stamp_message(&tracing::Span::current(), &mut message);
        }
        let meta = self.ctx.effect_metadata();
        if message.correlation_id.is_none() {
            message.correlation_id = meta.correlation_id;
        }
        if message.causation_id.is_none() {
            message.causation_id = meta.causation_id;
        }
        if message.traceparent.is_none() {
            message.traceparent = meta.traceparent;
            message.tracestate = meta.tracestate;
        }
        if let Some(user) = meta.user_id {
            message.headers.entry("userid".to_string()).or_insert(user);
        }
        message
    }

    /// Stamps `messages` and holds them until the attempt succeeds. Outside an attempt
    /// (after the handler returned, or on a context no handler service is running) they
    /// are refused.
    pub(crate) fn stage(
        &self,
        topic: &TopicName,
        messages: Vec<Message>,
    ) -> Result<(), RouterFailure> {
        if self.ctx.publisher_arc().is_none() {
            return Err(RouterFailure::NoPublisher);
        }
        let Some(buffer) = self.ctx.effects() else {
            return Err(RouterFailure::PublishedAfterReturn);
        };
        let stamped: Vec<Message> = messages.into_iter().map(|m| self.stamp(m)).collect();
        // Checked now, while the handler can still see the error; payload size is the
        // transport's own limit and is checked when publishing.
        for m in &stamped {
            m.validate(usize::MAX)
                .map_err(RouterFailure::InvalidEffect)?;
        }
        buffer.push(topic.clone(), stamped)
    }
}

#[async_trait]
impl Publisher for EffectPublisher {
    /// Holds the messages until the attempt succeeds (see [`HandlerContext::publisher`]);
    /// returns once they are staged, not once the bus accepted them.
    async fn publish(&self, topic: &TopicName, messages: Vec<Message>) -> Result<(), BusError> {
        self.stage(topic, messages)
            .map_err(|e| BusError::InvalidArgument(e.to_string()))
    }
}

/// The messages one attempt published, held until it succeeds.
#[derive(Debug, Default)]
pub(crate) struct EffectBuffer {
    state: Mutex<EffectState>,
}

#[derive(Debug, Default)]
struct EffectState {
    batches: Vec<(TopicName, Vec<Message>)>,
    count: usize,
    /// Set when the attempt ended: later publishes (from tasks the handler spawned) fail.
    closed: bool,
}

impl EffectBuffer {
    fn push(&self, topic: TopicName, messages: Vec<Message>) -> Result<(), RouterFailure> {
        let mut state = lock(&self.state);
        if state.closed {
            return Err(RouterFailure::PublishedAfterReturn);
        }
        let count = state.count.saturating_add(messages.len());
        if count > EFFECTS_PER_ATTEMPT_MAX {
            return Err(RouterFailure::TooManyEffects {
                limit: EFFECTS_PER_ATTEMPT_MAX,
            });
        }
        state.count = count;
        state.batches.push((topic, messages));
        Ok(())
    }

    /// Closes the buffer and returns what it holds.
    fn close(&self) -> Vec<(TopicName, Vec<Message>)> {
        let mut state = lock(&self.state);
        state.closed = true;
        std::mem::take(&mut state.batches)
    }

    /// Closes the buffer, dropping what it holds (the attempt failed).
    pub(crate) fn discard(&self) {
        drop(self.close());
    }

    /// Closes the buffer and publishes what it holds, in order.
    pub(crate) async fn flush(
        &self,
        publisher: Option<&dyn Publisher>,
    ) -> Result<usize, RouterFailure> {
        let batches = self.close();
        if batches.is_empty() {
            return Ok(0);
        }
        let Some(publisher) = publisher else {
            return Err(RouterFailure::NoPublisher);
        };
        let mut published = 0;
        for (topic, messages) in batches {
            for chunk in messages.chunks(PUBLISH_BATCH_MAX) {
                publisher
                    .publish(&topic, chunk.to_vec())
                    .await
                    .map_err(RouterFailure::EffectsNotPublished)?;
                published += chunk.len();
            }
        }
        Ok(published)
    }
}
