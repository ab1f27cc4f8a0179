//! The PostgreSQL processor store: the shared conformance suite, a transition's outbox rows
//! committing (or not) with it, and two processes sharing one schema racing creates of one
//! correlation key and claims of the same due timers. Every test runs in a fresh schema,
//! dropped with the test's last handle.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::SchemaGuard;
use runnel_core::async_trait;
use runnel_core::outbox::{OutboxMessage, OutboxStore};
use runnel_core::processor::{
    CommitOutcome, DueTimer, ExpectedInstance, HistoryRecord, InstanceFilter, InstanceRecord,
    ProcessorStore, StatusCount, TimerRecord, TimerSpec, Transition,
};
use runnel_core::{Message, StoreError, TopicName};
use runnel_postgres::sqlx::{self, AssertSqlSafe};
use runnel_postgres::{PostgresOptions, PostgresOutbox, PostgresProcessorStore, PostgresStore};
use runnel_testkit::processors::{transition, KIND};

/// Racing tasks per process in the create race.
const CREATE_RACERS_PER_PROCESS: usize = 16;
/// Due timers the two claimers split.
const RACED_TIMERS: usize = 200;
/// Timers per instance in the claim race (within `TIMERS_PER_TRANSITION_MAX`).
const TIMERS_PER_INSTANCE: usize = 20;
/// Timers one claim takes: small, so the claimers take many turns against each other.
const CLAIM_BATCH: usize = 7;
/// A lease no test outlives.
const LEASE_LONG: Duration = Duration::from_secs(60);

async fn connect(url: &str, schema: &str) -> PostgresStore {
    PostgresStore::connect_with(
        PostgresOptions::new(url.to_string())
            .schema(schema.to_string())
            .pool_size(8),
    )
    .await
    .expect("connect to the test PostgreSQL")
}

/// A processor store in a fresh schema that drops the schema when the last handle goes.
struct SchemaProcessors {
    processors: PostgresProcessorStore,
    // Declared last: dropped after the store.
    _schema: SchemaGuard,
}

async fn schema_processors() -> Option<Arc<SchemaProcessors>> {
    let url = common::postgres_url()?;
    let schema = common::fresh_schema();
    let guard = SchemaGuard::new(&url, &schema);
    let store = connect(&url, &schema).await;
    Some(Arc::new(SchemaProcessors {
        processors: PostgresProcessorStore::new(store),
        _schema: guard,
    }))
}

#[async_trait]
impl ProcessorStore for SchemaProcessors {
    async fn commit(&self, transition: Transition) -> Result<CommitOutcome, StoreError> {
        self.processors.commit(transition).await
    }
    async fn load(&self, kind: &str, id: &str) -> Result<Option<InstanceRecord>, StoreError> {
        self.processors.load(kind, id).await
    }
    async fn find_by_correlation(
        &self,
        kind: &str,
        correlation: &str,
    ) -> Result<Option<InstanceRecord>, StoreError> {
        self.processors.find_by_correlation(kind, correlation).await
    }
    async fn claim_due_timers(
        &self,
        kind: &str,
        versions: &[u32],
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<DueTimer>, StoreError> {
        self.processors
            .claim_due_timers(kind, versions, owner, now, lease, limit)
            .await
    }
    async fn extend_timer_lease(
        &self,
        id: u64,
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.processors.extend_timer_lease(id, owner, until).await
    }
    async fn release_timer(
        &self,
        id: u64,
        owner: &str,
        due: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.processors.release_timer(id, owner, due).await
    }
    async fn delete_timer(&self, id: u64, owner: &str) -> Result<(), StoreError> {
        self.processors.delete_timer(id, owner).await
    }
    async fn next_due(&self, kind: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.processors.next_due(kind).await
    }
    async fn list(&self, filter: &InstanceFilter) -> Result<Vec<InstanceRecord>, StoreError> {
        self.processors.list(filter).await
    }
    async fn count_by_status(&self) -> Result<Vec<StatusCount>, StoreError> {
        self.processors.count_by_status().await
    }
    async fn history(
        &self,
        kind: &str,
        id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        self.processors.history(kind, id, after_seq, limit).await
    }
    async fn timers(&self, kind: &str, id: &str) -> Result<Vec<TimerRecord>, StoreError> {
        self.processors.timers(kind, id).await
    }
    async fn purge_finished(
        &self,
        kind: Option<&str>,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, StoreError> {
        self.processors.purge_finished(kind, before, limit).await
    }
}

runnel_testkit::processor_store_conformance!(schema_processors);

/// Two processes on one fresh schema: two stores, each with its own pool.
struct SharedSchema {
    processes: [PostgresProcessorStore; 2],
    _schema: SchemaGuard,
}

async fn shared_schema() -> Option<SharedSchema> {
    let url = common::postgres_url()?;
    let schema = common::fresh_schema();
    let guard = SchemaGuard::new(&url, &schema);
    let first = PostgresProcessorStore::new(connect(&url, &schema).await);
    let second = PostgresProcessorStore::new(connect(&url, &schema).await);
    Some(SharedSchema {
        processes: [first, second],
        _schema: guard,
    })
}

fn payment_command() -> OutboxMessage {
    OutboxMessage::new(
        TopicName::new("payments.commands").expect("a valid topic"),
        Message::json("ChargePayment", &serde_json::json!({"amount": 3})),
    )
}

async fn outbox_rows(store: &PostgresStore) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {}.outbox_messages",
        store.schema()
    )))
    .fetch_one(store.pool())
    .await
    .expect("count the outbox rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_messages_commit_with_the_transition_or_not_at_all() {
    let Some(t) = schema_processors().await else {
        return;
    };
    let store = t.processors.store();
    let mut create = transition("i", ExpectedInstance::New, 0);
    create.outbox = vec![payment_command()];
    assert_eq!(
        t.commit(create).await.expect("commit"),
        CommitOutcome::Committed { version: 1 }
    );
    assert_eq!(outbox_rows(store).await, 1);

    let mut stale = transition("i", ExpectedInstance::Version(5), 1);
    stale.outbox = vec![payment_command()];
    assert_eq!(
        t.commit(stale).await.expect("commit"),
        CommitOutcome::Conflict { actual: Some(1) }
    );
    let mut again = transition("i", ExpectedInstance::New, 1);
    again.outbox = vec![payment_command()];
    assert_eq!(
        t.commit(again).await.expect("commit"),
        CommitOutcome::Conflict { actual: Some(1) }
    );
    assert_eq!(
        outbox_rows(store).await,
        1,
        "a refused transition sends nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_transition_wakes_waiting_relays() {
    let Some(t) = schema_processors().await else {
        return;
    };
    let relay = PostgresOutbox::new(t.processors.store().clone())
        .await
        .expect("outbox");
    let waiter = tokio::spawn(async move {
        let started = std::time::Instant::now();
        relay
            .wait_for_messages(Duration::from_secs(30))
            .await
            .expect("wait");
        started.elapsed()
    });
    // The relay listens from `new` on, so this NOTIFY reaches it whether or not it has
    // begun waiting; without it the waiter would sleep its whole 30 s.
    let mut create = transition("i", ExpectedInstance::New, 0);
    create.outbox = vec![payment_command()];
    t.commit(create).await.expect("commit");
    let waited = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("woken well before the 30 s poll")
        .expect("join");
    assert!(
        waited < Duration::from_secs(10),
        "woken by NOTIFY, not the poll"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_creates_of_one_correlation_key_across_processes_make_one_instance() {
    let Some(shared) = shared_schema().await else {
        return;
    };
    let start = Arc::new(tokio::sync::Barrier::new(2 * CREATE_RACERS_PER_PROCESS));
    let mut racers = Vec::new();
    for (p, process) in shared.processes.iter().enumerate() {
        for n in 0..CREATE_RACERS_PER_PROCESS {
            let (process, start) = (process.clone(), start.clone());
            racers.push(tokio::spawn(async move {
                let mut t = transition(&format!("p{p}-{n}"), ExpectedInstance::New, 0);
                t.correlation = Some("order-1".into());
                start.wait().await;
                process.commit(t).await
            }));
        }
    }
    let mut won = 0;
    let mut taken = Vec::new();
    for racer in racers {
        match racer
            .await
            .expect("racer task")
            .expect("a create never errors")
        {
            CommitOutcome::Committed { version } => {
                assert_eq!(version, 1);
                won += 1;
            }
            CommitOutcome::CorrelationTaken { id } => taken.push(id),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(won, 1, "exactly one create commits");
    let instances = shared.processes[0]
        .list(&InstanceFilter {
            kind: Some(KIND.into()),
            limit: 100,
            ..InstanceFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(instances.len(), 1, "one instance: {instances:?}");
    let winner = &instances[0].id;
    assert_eq!(taken.len(), 2 * CREATE_RACERS_PER_PROCESS - 1);
    assert!(
        taken.iter().all(|id| id == winner),
        "every loser learns the winner {winner}: {taken:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_claimers_across_processes_split_due_timers_without_overlap() {
    let Some(shared) = shared_schema().await else {
        return;
    };
    let now = Utc::now();
    for i in 0..RACED_TIMERS / TIMERS_PER_INSTANCE {
        let mut t = transition(&format!("i-{i}"), ExpectedInstance::New, 0);
        t.schedule = (0..TIMERS_PER_INSTANCE)
            .map(|n| TimerSpec {
                name: format!("t-{n}"),
                due: now - chrono::Duration::seconds(1 + n as i64),
                payload: b"{}".to_vec(),
                leased_to: None,
            })
            .collect();
        assert_eq!(
            shared.processes[0].commit(t).await.expect("create"),
            CommitOutcome::Committed { version: 1 }
        );
    }
    let start = Arc::new(tokio::sync::Barrier::new(2));
    let mut claimers = Vec::new();
    for (p, process) in shared.processes.iter().enumerate() {
        let (process, start) = (process.clone(), start.clone());
        claimers.push(tokio::spawn(async move {
            let owner = format!("claimer-{p}");
            let mut claimed = Vec::new();
            start.wait().await;
            loop {
                let batch = process
                    .claim_due_timers(KIND, &[1], &owner, now, LEASE_LONG, CLAIM_BATCH)
                    .await
                    .expect("claim");
                if batch.is_empty() {
                    return claimed;
                }
                assert!(batch.iter().all(|t| t.leased_until > now));
                claimed.extend(batch.into_iter().map(|t| t.id));
            }
        }));
    }
    let mut sets = Vec::new();
    for claimer in claimers {
        let ids = claimer.await.expect("claimer task");
        let set: BTreeSet<u64> = ids.iter().copied().collect();
        assert_eq!(set.len(), ids.len(), "one claimer got a timer twice");
        sets.push(set);
    }
    assert!(
        sets[0].is_disjoint(&sets[1]),
        "both claimers got {:?}",
        sets[0].intersection(&sets[1]).collect::<Vec<_>>()
    );
    assert_eq!(
        sets[0].len() + sets[1].len(),
        RACED_TIMERS,
        "together they claimed every due timer"
    );
    let left = shared.processes[0]
        .claim_due_timers(KIND, &[1], "late", now, LEASE_LONG, CLAIM_BATCH)
        .await
        .expect("claim");
    assert!(left.is_empty(), "all leased: {left:?}");
}
