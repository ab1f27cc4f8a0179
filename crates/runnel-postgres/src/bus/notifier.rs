//! Wake-ups for other processes, sent after the commit that made a row claimable rather
//! than inside it: PostgreSQL queues a transaction's notifications under one database-wide
//! lock held until its commit (WAL flush included), so a `NOTIFY` in every publish or ack
//! would make their commits take turns. Here one task per bus sends them, coalesced: the
//! topics named since its last statement go out in one `pg_notify` statement, committed
//! without waiting for the WAL flush (a notification is not data; one lost in a crash is
//! covered by the consumers' polling, as are those lost while this task cannot reach the
//! server). When the bus is dropped the task sends what is left and ends.

use std::collections::BTreeSet;

use sqlx::PgPool;
use tokio::sync::mpsc;

use crate::error_map::map_sqlx;

/// Topics to notify, filled by publishes, acks and nacks.
#[derive(Clone)]
pub(crate) struct Notifier {
    topics: mpsc::UnboundedSender<String>,
}

impl Notifier {
    /// Starts the task that notifies `channel` on `pool`.
    pub fn start(pool: PgPool, channel: String) -> Self {
        let (topics, pending) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, channel, pending));
        Notifier { topics }
    }

    /// Tells the other processes' consumers of `topic` to look (soon, after this returns).
    pub fn notify(&self, topic: &str) {
        // Only fails once the task is gone (the runtime is shutting down).
        let _ = self.topics.send(topic.to_string());
    }
}

async fn run(pool: PgPool, channel: String, mut pending: mpsc::UnboundedReceiver<String>) {
    // The setting is local to the statement's own transaction.
    let sql = "SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, t) \
               FROM unnest($2::text[]) AS t";
    while let Some(first) = pending.recv().await {
        if pool.is_closed() {
            return;
        }
        let mut topics = BTreeSet::from([first]);
        while let Ok(more) = pending.try_recv() {
            topics.insert(more);
        }
        let topics: Vec<String> = topics.into_iter().collect();
        if let Err(e) = sqlx::query(sql)
            .bind(&channel)
            .bind(&topics)
            .execute(&pool)
            .await
            .map_err(map_sqlx)
        {
            tracing::warn!(error = %e, ?topics, "bus NOTIFY failed; consumers elsewhere will poll");
        }
    }
}
