//! [`App::topic_projection`]: a projection fed from a bus topic, run as a consumer.

use std::sync::Arc;

use super::{stopped_by_itself, App};
use crate::bus::BoxError;
use crate::consumer::Consumer;
use crate::projection::{
    register_topic_projection, topic_consumer, TopicProjection, TopicProjectionOptions,
};

impl App {
    /// Registers a topic projection with default [`TopicProjectionOptions`]; see
    /// [`App::topic_projection_with`].
    pub fn topic_projection(&mut self, projection: Arc<dyn TopicProjection>) -> &mut Self {
        self.topic_projection_with(projection, TopicProjectionOptions::default())
    }

    /// Registers a projection fed from a bus topic (task `projection:{name}:v{version}`,
    /// like [`App::projection`]): at each (re)start it records the projection's topic
    /// source and registers its version's tables, then consumes
    /// [`topic`](TopicProjection::topic) in [`group`](TopicProjection::group) on the
    /// application's bus from the earliest message the topic holds, each message's writes
    /// committed with its id in the projection's inbox. Failing messages are retried
    /// (`options.retry`), then stored in the application's dead letters.
    /// Several processes may register it: the group shares the messages among them.
    pub fn topic_projection_with(
        &mut self,
        projection: Arc<dyn TopicProjection>,
        options: TopicProjectionOptions,
    ) -> &mut Self {
        let name = format!("projection:{}:v{}", projection.name(), projection.version());
        let (topic, group) = (projection.topic(), projection.group());
        self.record(|c| {
            c.receiver(
                &topic,
                &group,
                crate::catalog::ReceiverKind::TopicProjection,
            )
            .map(drop)
        });
        let store = Arc::clone(&self.stores.projections);
        let subscriber = Arc::clone(&self.bus.subscriber);
        let publisher = Arc::clone(&self.bus.publisher);
        let dead_letters = Arc::clone(&self.stores.dead_letters);
        let grace = self.consumer_grace;
        self.task(name, move |shutdown| {
            let projection = Arc::clone(&projection);
            let store = Arc::clone(&store);
            let subscriber = Arc::clone(&subscriber);
            let publisher = Arc::clone(&publisher);
            let dead_letters = Arc::clone(&dead_letters);
            let options = options.clone();
            async move {
                let generation = register_topic_projection(&*projection, &*store).await?;
                let builder = Consumer::builder(subscriber, projection.topic(), projection.group())
                    .publisher(publisher)
                    .dead_letters(dead_letters);
                let builder = topic_consumer(builder, projection, store, generation, &options);
                let mut handle = builder.start().await?;
                tokio::select! {
                    _ = shutdown.requested() => {
                        let report = handle.shutdown(grace).await?;
                        tracing::debug!(?report, "topic projection stopped");
                        Ok::<(), BoxError>(())
                    }
                    stopped = handle.stopped() => Err(stopped_by_itself(stopped)),
                }
            }
        })
    }
}
