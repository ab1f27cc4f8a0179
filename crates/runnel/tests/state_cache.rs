//! The repository's aggregate-state cache: a command on a cached aggregate reads nothing,
//! and the cache stays correct when another writer (another repository, another process)
//! appends behind it: on the in-memory store and on PostgreSQL.

mod pg_schema;
mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use runnel::core::{
    async_trait, AppendResult, DomainEvent, EventFilter, EventStore, ExpectedRevision, NewEvent,
    Position, ReadStream, RecordedEvent, StoreError, StoreLimits, StreamInfo, StreamName,
};
use runnel::{Aggregate, CommandEnvelope, Repository, RetryPolicy};
use runnel_testkit::InMemoryStore;
use serde::{Deserialize, Serialize};
use support::{counter_upcasters, Counter, CounterCommand};
use tokio::sync::Semaphore;

/// Aggregates the tests' caches hold.
const CACHE_ENTRIES: usize = 16;

/// The in-memory store, counting `read_stream` calls (the loads' reads) and appends; with
/// [`CountingReads::gated`] every append waits for a permit of `gate`.
#[derive(Clone)]
struct CountingReads {
    inner: InMemoryStore,
    reads: Arc<AtomicU64>,
    appends: Arc<AtomicU64>,
    gate: Arc<Semaphore>,
}

impl Default for CountingReads {
    fn default() -> Self {
        CountingReads {
            inner: InMemoryStore::new(),
            reads: Arc::default(),
            appends: Arc::default(),
            gate: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
        }
    }
}

impl CountingReads {
    /// Appends wait until the test adds permits to `gate`.
    fn gated() -> Self {
        CountingReads {
            gate: Arc::new(Semaphore::new(0)),
            ..CountingReads::default()
        }
    }
}

#[async_trait]
impl EventStore for CountingReads {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        self.appends.fetch_add(1, Ordering::SeqCst);
        self.gate.acquire().await.expect("never closed").forget();
        self.inner.append(stream, expected, events).await
    }
    async fn read_stream(
        &self,
        stream: &StreamName,
        options: ReadStream,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read_stream(stream, options).await
    }
    async fn read_all(
        &self,
        after: Position,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_all(after, filter, limit).await
    }
    async fn read_by_type(
        &self,
        event_type: &str,
        since: runnel::core::chrono::DateTime<runnel::core::chrono::Utc>,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner
            .read_by_type(event_type, since, after, limit)
            .await
    }
    async fn stream_revision(&self, stream: &StreamName) -> Result<Option<u64>, StoreError> {
        self.inner.stream_revision(stream).await
    }
    async fn list_streams(
        &self,
        category: Option<&str>,
        after: Option<&StreamName>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>, StoreError> {
        self.inner.list_streams(category, after, limit).await
    }
    async fn head_position(&self) -> Result<Position, StoreError> {
        self.inner.head_position().await
    }
    async fn wait_for_events(
        &self,
        after: Position,
        max_wait: std::time::Duration,
    ) -> Result<(), StoreError> {
        self.inner.wait_for_events(after, max_wait).await
    }
    fn limits(&self) -> &StoreLimits {
        self.inner.limits()
    }
}

fn counters(store: Arc<dyn EventStore>, cache: bool) -> Repository<Counter> {
    let repo = Repository::<Counter>::new(store)
        .with_upcasters(Arc::new(counter_upcasters()))
        .with_retry_policy(RetryPolicy::no_retry());
    if cache {
        repo.with_state_cache(CACHE_ENTRIES)
    } else {
        repo
    }
}

fn add(n: u64) -> CommandEnvelope<CounterCommand> {
    CommandEnvelope::new(CounterCommand::Add(n))
}

#[tokio::test]
async fn a_command_on_a_cached_aggregate_reads_nothing() {
    let store = CountingReads::default();
    let cached = counters(Arc::new(store.clone()), true);
    cached.execute("a", add(1)).await.unwrap();
    let reads = store.reads.load(Ordering::SeqCst);
    for n in 2..=4 {
        let outcome = cached.execute("a", add(n)).await.unwrap();
        assert_eq!(outcome.attempts, 1);
    }
    assert_eq!(
        store.reads.load(Ordering::SeqCst),
        reads,
        "commands on the cached aggregate must not read its events"
    );
    assert_eq!(cached.load("a").await.unwrap().state.value, 10);

    // Without the cache every command replays the stream.
    let plain = counters(Arc::new(store.clone()), false);
    let before = store.reads.load(Ordering::SeqCst);
    plain.execute("a", add(1)).await.unwrap();
    assert_eq!(store.reads.load(Ordering::SeqCst), before + 1);
}

/// A door that refuses to open twice: whether `Open` is refused depends on the state, so a
/// stale cached state would give the wrong answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Door {
    open: bool,
}

#[derive(Clone, Debug)]
enum DoorCommand {
    Open,
    Close,
}

#[derive(Debug, Serialize, Deserialize)]
enum DoorEvent {
    Opened,
    Closed,
}

impl DomainEvent for DoorEvent {
    fn event_type(&self) -> &'static str {
        match self {
            DoorEvent::Opened => "Opened",
            DoorEvent::Closed => "Closed",
        }
    }
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("the door is already {0}")]
struct AlreadyThere(&'static str);

impl Aggregate for Door {
    const TYPE: &'static str = "Door";
    type Command = DoorCommand;
    type Event = DoorEvent;
    type Error = AlreadyThere;

    fn handle(&self, command: DoorCommand) -> Result<Vec<DoorEvent>, AlreadyThere> {
        match (command, self.open) {
            (DoorCommand::Open, true) => Err(AlreadyThere("open")),
            (DoorCommand::Open, false) => Ok(vec![DoorEvent::Opened]),
            (DoorCommand::Close, false) => Err(AlreadyThere("closed")),
            (DoorCommand::Close, true) => Ok(vec![DoorEvent::Closed]),
        }
    }

    fn apply(&mut self, event: &DoorEvent) {
        self.open = matches!(event, DoorEvent::Opened);
    }
}

fn doors(store: Arc<dyn EventStore>, cache: bool) -> Repository<Door> {
    let repo = Repository::<Door>::new(store).with_retry_policy(RetryPolicy::no_retry());
    if cache {
        repo.with_state_cache(CACHE_ENTRIES)
    } else {
        repo
    }
}

#[tokio::test]
async fn a_refusal_from_a_stale_cached_state_is_checked_against_the_store() {
    let store: Arc<dyn EventStore> = Arc::new(InMemoryStore::new());
    let cached = doors(Arc::clone(&store), true);
    let elsewhere = doors(store, false);
    cached
        .execute("d", CommandEnvelope::new(DoorCommand::Open))
        .await
        .unwrap();
    // Another writer closes the door behind the cache's back.
    elsewhere
        .execute("d", CommandEnvelope::new(DoorCommand::Close))
        .await
        .unwrap();
    // The cached state says "open" and would refuse; the store says closed.
    let outcome = cached
        .execute("d", CommandEnvelope::new(DoorCommand::Open))
        .await
        .expect("the door is closed in the store, so it opens");
    assert_eq!(outcome.revision, Some(3));
    assert!(cached.load("d").await.unwrap().state.open);
    // And a refusal that the store confirms is returned.
    let err = cached
        .execute("d", CommandEnvelope::new(DoorCommand::Open))
        .await
        .unwrap_err();
    assert_eq!(err.domain(), Some(&AlreadyThere("open")));
}

#[tokio::test]
async fn another_process_appending_behind_the_cache_on_postgres_is_folded_in() {
    let Some((store, guard)) = pg_schema::fresh_store("t", 4).await else {
        return;
    };
    // A second store on the same schema: another process's connections and appender.
    let other = runnel::postgres::PostgresStore::connect_with(
        runnel::postgres::PostgresOptions::new(
            std::env::var("RUNNEL_TEST_POSTGRES_URL").expect("set when a store was made"),
        )
        .schema(guard.schema.clone())
        .pool_size(2),
    )
    .await
    .unwrap();
    let cached = counters(Arc::new(store), true);
    let elsewhere = counters(Arc::new(other), false);
    cached.execute("a", add(1)).await.unwrap();
    elsewhere.execute("a", add(10)).await.unwrap();
    elsewhere.execute("a", add(100)).await.unwrap();
    // Retries are off: the stale cached try is refused by the store and does not count.
    let outcome = cached.execute("a", add(1000)).await.unwrap();
    assert_eq!(outcome.revision, Some(4));
    assert_eq!(outcome.attempts, 1);
    assert_eq!(cached.load("a").await.unwrap().state.value, 1111);
    assert_eq!(elsewhere.load("a").await.unwrap().state.value, 1111);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writers_on_one_cached_aggregate_never_conflict_on_postgres() {
    const WRITERS: u64 = 8;
    const COMMANDS: u64 = 10;
    let Some((store, _guard)) = pg_schema::fresh_store("t", 8).await else {
        return;
    };
    // Retries are off: in one process, commands on one aggregate wait for each other
    // rather than conflict, so every one of them must succeed on its first try.
    let cached = counters(Arc::new(store), true);
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let repo = cached.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..COMMANDS {
                let outcome = repo.execute("hot", add(1)).await.unwrap();
                assert_eq!(outcome.attempts, 1);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let loaded = cached.load("hot").await.unwrap();
    assert_eq!(loaded.state.value, WRITERS * COMMANDS);
    assert_eq!(loaded.revision, Some(WRITERS * COMMANDS));
    let fresh = counters(cached.event_store().clone(), false);
    assert_eq!(
        fresh.load("hot").await.unwrap().state.value,
        WRITERS * COMMANDS
    );
}

/// Lets every task that can run do so until `done` holds (a current-thread runtime runs
/// the ready tasks before the yielding one), failing after a bounded number of rounds.
async fn run_others_until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("{what} did not happen");
}

/// A counter command running in a task of its own.
type CounterCommandTask = tokio::task::JoinHandle<
    Result<
        runnel::ExecuteOutcome<support::CounterEvent>,
        runnel::RepositoryError<support::Refused>,
    >,
>;

/// A gated store, a cached counter repository on it, and the task of a first `add(1)` on
/// aggregate "hot" whose append is held at the gate, so the next commands queue behind it.
async fn first_add_held_at_the_gate() -> (CountingReads, Repository<Counter>, CounterCommandTask) {
    let store = CountingReads::gated();
    let repo = counters(Arc::new(store.clone()), true);
    let first = tokio::spawn({
        let repo = repo.clone();
        async move { repo.execute("hot", add(1)).await }
    });
    run_others_until("the first append", || {
        store.appends.load(Ordering::SeqCst) == 1
    })
    .await;
    (store, repo, first)
}

#[tokio::test]
async fn commands_waiting_on_one_aggregate_share_one_commit_and_keep_their_own_answers() {
    let (store, repo, first) = first_add_held_at_the_gate().await;
    let commands = vec![
        add(2),
        CommandEnvelope::new(CounterCommand::Refuse),
        add(3),
        add(0),
        add(4),
    ];
    let ids: Vec<String> = commands
        .iter()
        .map(|c| c.command_id.as_str().to_owned())
        .collect();
    let mut waiting = Vec::new();
    for command in commands {
        let repo = repo.clone();
        waiting.push(tokio::spawn(
            async move { repo.execute("hot", command).await },
        ));
    }
    // Let them all queue, then open the gate.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    store.gate.add_permits(100);
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.revision, Some(1));
    let mut answers = Vec::new();
    for w in waiting {
        answers.push(w.await.unwrap());
    }
    assert_eq!(
        store.appends.load(Ordering::SeqCst),
        2,
        "the five waiting commands are appended in one commit"
    );
    let appended: Vec<_> = [&answers[0], &answers[2], &answers[4]]
        .iter()
        .map(|a| a.as_ref().expect("appended").clone())
        .collect();
    assert_eq!(
        appended.iter().map(|o| o.revision).collect::<Vec<_>>(),
        vec![Some(2), Some(3), Some(4)],
        "each command's revision is its own, in arrival order"
    );
    assert!(appended.iter().all(|o| o.attempts == 1));
    assert!(
        appended.iter().all(|o| o.position == appended[2].position),
        "one commit: one position, the commit's last"
    );
    assert!(
        answers[1].as_ref().unwrap_err().is_domain(),
        "the refusal stays a refusal"
    );
    let nothing = answers[3].as_ref().expect("an empty result is no error");
    assert!(!nothing.appended());
    assert_eq!(nothing.revision, Some(3), "the revision it was judged at");
    // Every event carries the metadata of the command that produced it.
    let events = store
        .inner
        .read_stream(&appended[0].stream, ReadStream::forward(10))
        .await
        .unwrap();
    let causes: Vec<_> = events
        .iter()
        .map(|e| {
            e.metadata
                .causation_id
                .clone()
                .expect("caused by its command")
        })
        .collect();
    assert_eq!(
        causes[1..],
        [ids[0].clone(), ids[2].clone(), ids[4].clone()]
    );
    assert_eq!(repo.load("hot").await.unwrap().state.value, 10);
}

#[tokio::test]
async fn a_caller_that_goes_away_mid_commit_leaves_every_other_command_answered() {
    let (store, repo, first) = first_add_held_at_the_gate().await;
    let mut waiting = Vec::new();
    for n in [10, 100] {
        let repo = repo.clone();
        waiting.push(tokio::spawn(
            async move { repo.execute("hot", add(n)).await },
        ));
    }
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    // The first caller goes away while its commit is in flight.
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    store.gate.add_permits(100);
    for w in waiting {
        assert_eq!(w.await.unwrap().unwrap().attempts, 1);
    }
    // Its command ran all the same: the commit was already under way.
    assert_eq!(repo.load("hot").await.unwrap().state.value, 111);
}

#[tokio::test]
async fn a_group_judged_on_a_stale_cached_state_runs_again_on_the_stored_one() {
    let store = CountingReads::gated();
    let cached = doors(Arc::new(store.clone()), true);
    let elsewhere = doors(Arc::new(store.inner.clone()), false);
    store.gate.add_permits(1);
    cached
        .execute("d", CommandEnvelope::new(DoorCommand::Open))
        .await
        .unwrap();
    // A close is held at the gate while an open and a close queue behind it.
    let close_first = tokio::spawn({
        let repo = cached.clone();
        async move {
            repo.execute("d", CommandEnvelope::new(DoorCommand::Close))
                .await
        }
    });
    run_others_until("the held close's append", || {
        store.appends.load(Ordering::SeqCst) == 2
    })
    .await;
    let mut group = Vec::new();
    for command in [DoorCommand::Open, DoorCommand::Close] {
        let repo = cached.clone();
        group.push(tokio::spawn(async move {
            repo.execute("d", CommandEnvelope::new(command)).await
        }));
    }
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    // The held close commits; the group runs on the cached state it left ("closed"): open
    // then close, held at the gate in turn.
    store.gate.add_permits(1);
    run_others_until("the group's append", || {
        store.appends.load(Ordering::SeqCst) == 3
    })
    .await;
    // Another writer opens the door before the group commits.
    elsewhere
        .execute("d", CommandEnvelope::new(DoorCommand::Open))
        .await
        .unwrap();
    store.gate.add_permits(100);
    assert_eq!(close_first.await.unwrap().unwrap().revision, Some(2));
    // On the stored state ("open") the group's open is refused and its close closes.
    let open = group.remove(0).await.unwrap().unwrap_err();
    assert_eq!(open.domain(), Some(&AlreadyThere("open")));
    let close = group
        .remove(0)
        .await
        .unwrap()
        .expect("closes the door opened elsewhere");
    assert_eq!((close.revision, close.attempts), (Some(4), 1));
    assert!(!cached.load("d").await.unwrap().state.open);
}
