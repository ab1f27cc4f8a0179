//! [`PostgresBackend`]: runnel-bus-engine's backend in the store's schema. Each call is one
//! statement (or one PL/pgSQL function call) on the pool; the functions that need the
//! topic or key locks are in the migrations. Concurrent publishes share transactions
//! (`batch.rs`). Wake-ups reach other processes through `NOTIFY` on the bus channel, sent
//! after the commit (`notifier.rs`); this process's consumers watch the bus's own
//! [`BusSignals`], which the engine and the `LISTEN` task bump.

use std::sync::Arc;

use runnel_bus_engine::{
    after, BusBackend, BusOptions, BusSignals, Claim, ClaimRequest, EncodedMessage, GroupBacklog,
    Settle, Settled, SWEEP_BATCH_MAX,
};
use runnel_core::bus::StartPosition;
use runnel_core::chrono::{DateTime, Utc};
use runnel_core::{BusError, GroupName, TopicName};

use super::batch::{
    take_acks, take_publishes, GroupCommit, PublishCall, WriteFn, ACKS_PER_TRANSACTION_MAX,
};
use super::notifier::Notifier;
use super::queue::{Lease, Statements};
use crate::store::PostgresStore;

/// A consumer group's ids (an ack takes the topic's lock, keyed by its id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GroupIds {
    pub topic_id: i64,
    pub group_id: i64,
}

pub(crate) struct PostgresBackend {
    store: PostgresStore,
    options: BusOptions,
    sql: Arc<Statements>,
    publishes: GroupCommit<PublishCall, ()>,
    acks: GroupCommit<Lease, i32>,
    notifier: Notifier,
    signals: Arc<BusSignals>,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for PostgresBackend {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PostgresBackend {
    pub fn new(
        store: PostgresStore,
        options: BusOptions,
        channel: String,
        signals: Arc<BusSignals>,
        listener: tokio::task::JoinHandle<()>,
    ) -> Self {
        let sql = Arc::new(Statements::new(store.schema()));
        let publishes = publish_commits(&sql, &store, &options);
        let acks = ack_commits(&sql, &store);
        let notifier = Notifier::start(store.pool().clone(), channel);
        PostgresBackend {
            sql,
            publishes,
            acks,
            notifier,
            store,
            options,
            signals,
            listener,
        }
    }

    pub fn store(&self) -> &PostgresStore {
        &self.store
    }

    pub fn schema(&self) -> &str {
        self.sql.schema()
    }

    fn now(&self) -> DateTime<Utc> {
        self.options.clock.now()
    }
}

impl BusBackend for PostgresBackend {
    type Group = GroupIds;
    type Lease = Lease;

    fn options(&self) -> &BusOptions {
        &self.options
    }

    fn signals(&self) -> &BusSignals {
        &self.signals
    }

    async fn publish(
        &self,
        topic: &TopicName,
        messages: Vec<EncodedMessage>,
    ) -> Result<(), BusError> {
        self.publishes
            .run(PublishCall::new(topic.as_str(), messages))
            .await?;
        // Committed: other processes may look now (the engine wakes this one's).
        self.notifier.notify(topic.as_str());
        Ok(())
    }

    async fn ensure_group(
        &self,
        topic: &TopicName,
        group: &GroupName,
        start: StartPosition,
    ) -> Result<GroupIds, BusError> {
        let (topic_id, group_id) = self
            .sql
            .subscribe(
                self.store.pool(),
                topic.as_str(),
                group.as_str(),
                start,
                self.now(),
            )
            .await?;
        Ok(GroupIds { topic_id, group_id })
    }

    /// Claims at once (`SKIP LOCKED` makes an empty claim cheap); when nothing was ready,
    /// learns when the next head will be.
    async fn claim(&self, request: ClaimRequest<'_, GroupIds>) -> Result<Claim<Lease>, BusError> {
        let lease_until = after(request.now, request.ack_timeout);
        let pool = self.store.pool();
        let ids = *request.group;
        let rows = self
            .sql
            .claim(
                pool,
                ids.topic_id,
                ids.group_id,
                request.owner,
                request.now,
                lease_until,
                request.limit,
            )
            .await?;
        if rows.is_empty() {
            let next_visible = self.sql.next_visible(pool, ids.group_id).await?;
            Ok(Claim::Idle { next_visible })
        } else {
            Ok(Claim::Claimed { rows, lease_until })
        }
    }

    async fn settle(
        &self,
        topic: &TopicName,
        lease: &Lease,
        how: Settle,
    ) -> Result<Settled, BusError> {
        let settled = if how == Settle::Ack {
            // 0: lease lost; 1: acknowledged; 2: and the key's next row is the head.
            let outcome = self.acks.run(lease.clone()).await?;
            Settled {
                held: outcome > 0,
                wake: outcome == 2,
            }
        } else {
            self.sql
                .settle(self.store.pool(), lease, how, self.now())
                .await?
        };
        if settled.wake {
            self.notifier.notify(topic.as_str());
        }
        Ok(settled)
    }

    async fn sweep(&self, cutoff: DateTime<Utc>) -> Result<usize, BusError> {
        Ok(self
            .sql
            .sweep(self.store.pool(), cutoff, SWEEP_BATCH_MAX)
            .await?)
    }

    async fn delete_group(&self, topic: &TopicName, group: &GroupName) -> Result<bool, BusError> {
        Ok(self
            .sql
            .delete_group(self.store.pool(), topic.as_str(), group.as_str())
            .await?)
    }

    async fn backlog(
        &self,
        topic: &TopicName,
        group: &GroupName,
        now: DateTime<Utc>,
    ) -> Result<Option<GroupBacklog>, BusError> {
        let backlog = self
            .sql
            .backlog(self.store.pool(), topic.as_str(), group.as_str(), now)
            .await?;
        Ok(backlog.map(|(pending, in_flight)| GroupBacklog::new(pending, in_flight)))
    }
}

/// Publishes through group commit: one `bus_publish` per transaction, the waiting calls of
/// one topic up to the options' publish size.
fn publish_commits(
    sql: &Arc<Statements>,
    store: &PostgresStore,
    options: &BusOptions,
) -> GroupCommit<PublishCall, ()> {
    let (sql, pool, clock) = (
        Arc::clone(sql),
        store.pool().clone(),
        Arc::clone(&options.clock),
    );
    let write: WriteFn<PublishCall, ()> = Arc::new(move |calls| {
        let (sql, pool, clock) = (Arc::clone(&sql), pool.clone(), Arc::clone(&clock));
        Box::pin(async move {
            let result = sql.publish(&pool, &calls, clock.now()).await;
            vec![result; calls.len()]
        })
    });
    GroupCommit::new(take_publishes, options.max_publish_bytes, write)
}

/// Acks through group commit: one `bus_ack_rows` per transaction.
fn ack_commits(sql: &Arc<Statements>, store: &PostgresStore) -> GroupCommit<Lease, i32> {
    let (sql, pool) = (Arc::clone(sql), store.pool().clone());
    let write: WriteFn<Lease, i32> = Arc::new(move |leases| {
        let (sql, pool) = (Arc::clone(&sql), pool.clone());
        Box::pin(async move {
            match sql.ack_many(&pool, &leases).await {
                Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e); leases.len()],
            }
        })
    });
    GroupCommit::new(take_acks, ACKS_PER_TRANSACTION_MAX, write)
}
