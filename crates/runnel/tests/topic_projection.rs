//! Projections fed from a bus topic, wired on the application (`App::topic_projection`),
//! on SQLite with the embedded bus, on PostgreSQL with its embedded bus, and on SQLite
//! with NATS JetStream: each message
//! takes effect once (a republished duplicate, a redelivery after a commit whose ack was
//! lost), a failing statement rolls the whole message back and the message is
//! dead-lettered after its retries while later messages go on, a topic projection is
//! shown without a position and refused a rebuild, and a new version started beside a
//! process running the old one takes over (SQLite and PostgreSQL). The kill -9 proof is
//! `topic_projection_kill.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use runnel::app::{App, RunningApp};
use runnel::connect::{Settings, SettingsInputs, StoreBackend};
use runnel::consumer::layers::InboxLayer;
use runnel::consumer::{HandlerContext, HandlerService, Outcome};
use runnel::core::dead_letter::DeadLetterFilter;
use runnel::core::projection::{Dialect, ProjectionState, ProjectionStore};
use runnel::core::{Message, StoreError, TopicName};
use runnel::projection::{
    admin, register_topic_projection, ProjectionError, TopicProjection, TopicProjectionHandler,
    TopicProjectionInbox, TopicProjectionOptions, Writes,
};
use runnel::retry::RetryPolicy;
use tower::{Layer, ServiceExt};

const DEADLINE: Duration = Duration::from_secs(30);
const NAME: &str = "shipments";
const TOPIC: &str = "shipping.ShipmentCreated";

/// Keeps the carrier of each order's shipment and how many messages touched it (`n`: a
/// second application of one message shows as 2), and logs each message applied (its
/// first statement, so a failing second statement must take it back too). A message whose
/// carrier is null breaks `carrier NOT NULL`; a payload that is not JSON cannot be read.
struct Shipments;

impl TopicProjection for Shipments {
    fn name(&self) -> &str {
        NAME
    }
    fn tables(&self) -> Vec<String> {
        vec!["shipments".into(), "shipment_log".into()]
    }
    fn schema(&self, _: Dialect) -> Vec<String> {
        vec![
            "CREATE TABLE {shipments} (order_id TEXT PRIMARY KEY, carrier TEXT NOT NULL, \
             n BIGINT NOT NULL)"
                .into(),
            "CREATE TABLE {shipment_log} (message_id TEXT PRIMARY KEY, order_id TEXT NOT NULL)"
                .into(),
        ]
    }
    fn topic(&self) -> TopicName {
        TopicName::new(TOPIC).unwrap()
    }
    fn apply(&self, message: &Message, out: &mut Writes) -> Result<(), ProjectionError> {
        let body: serde_json::Value = serde_json::from_slice(&message.payload)?;
        let order = body["order_id"].as_str().unwrap_or_default().to_string();
        out.execute(
            "INSERT INTO {shipment_log} (message_id, order_id) VALUES ($1, $2)",
            vec![message.id.clone().into(), order.clone().into()],
        );
        out.execute(
            "INSERT INTO {shipments} (order_id, carrier, n) VALUES ($1, $2, 1) \
             ON CONFLICT (order_id) DO UPDATE SET carrier = excluded.carrier, \
             n = {shipments}.n + 1",
            vec![
                order.into(),
                body["carrier"].as_str().map(str::to_string).into(),
            ],
        );
        Ok(())
    }
}

/// A projection of `$all` that wants the topic projection's name.
struct SameNameFromAll;

impl runnel::projection::Projection for SameNameFromAll {
    fn name(&self) -> &str {
        NAME
    }
    fn tables(&self) -> Vec<String> {
        vec!["other".into()]
    }
    fn schema(&self, _: Dialect) -> Vec<String> {
        vec!["CREATE TABLE {other} (id TEXT PRIMARY KEY)".into()]
    }
    fn apply(
        &self,
        _: &runnel::core::RecordedEvent,
        _: &mut Writes,
    ) -> Result<(), ProjectionError> {
        Ok(())
    }
}

fn shipment(id: &str, order: &str, carrier: Option<&str>) -> Message {
    let mut m = Message::json(
        "ShipmentCreated",
        &serde_json::json!({"order_id": order, "carrier": carrier}),
    )
    .with_key("one-key");
    m.id = id.to_string();
    m
}

fn fast_retries() -> TopicProjectionOptions {
    TopicProjectionOptions {
        retry: RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        },
        ..TopicProjectionOptions::default()
    }
}

/// Rows of `(text, bigint)` from the store's database; `{s}` in `sql` is the schema
/// prefix of the read model's views (empty on SQLite).
async fn rows(app: &RunningApp, sql: &str) -> Vec<(String, i64)> {
    match app.stores().backend() {
        StoreBackend::Sqlite(store) => {
            let sql = sql.replace("{s}", "");
            store
                .read_with(move |conn| {
                    let failed =
                        |e: runnel::sqlite::rusqlite::Error| StoreError::Backend(e.to_string());
                    let mut stmt = conn.prepare(&sql).map_err(failed)?;
                    let rows = stmt
                        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                        .map_err(failed)?;
                    rows.collect::<Result<Vec<_>, _>>().map_err(failed)
                })
                .await
                .unwrap()
        }
        StoreBackend::Postgres(store) => {
            let sql = sql.replace("{s}", &format!("\"{}\".", store.schema()));
            runnel::postgres::sqlx::query_as(runnel::postgres::sqlx::AssertSqlSafe(sql))
                .fetch_all(store.pool())
                .await
                .unwrap()
        }
        _ => panic!("no test queries for this backend"),
    }
}

async fn state(store: &dyn ProjectionStore) -> ProjectionState {
    store
        .states(Some(NAME))
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.role == runnel::core::projection::VersionRole::Current)
        .expect("registered")
}

/// Waits until `events_applied` reaches `n`, or fails at the deadline.
async fn wait_applied(store: &dyn ProjectionStore, n: u64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let applied = match store.states(Some(NAME)).await.unwrap().first() {
            Some(s) => s.events_applied,
            None => 0,
        };
        assert!(applied <= n, "applied {applied} messages, more than {n}");
        if applied == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the projection applied {applied} of {n} messages within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn started(settings: &Settings, options: TopicProjectionOptions) -> RunningApp {
    let mut app = App::connect(settings).await.unwrap();
    app.topic_projection_with(Arc::new(Shipments), options);
    assert_eq!(app.task_names(), ["projection:shipments:v1"]);
    app.start().await.unwrap()
}

/// Dead letters of the projection's topic and group.
async fn dead_letters(app: &RunningApp) -> u64 {
    let filter = DeadLetterFilter {
        topic: Some(TopicName::new(TOPIC).unwrap()),
        group: Some(Shipments.group()),
        ..DeadLetterFilter::default()
    };
    app.stores().dead_letters.count(&filter).await.unwrap()
}

async fn publish(app: &RunningApp, messages: Vec<Message>) {
    app.bus()
        .publisher
        .publish(&TopicName::new(TOPIC).unwrap(), messages)
        .await
        .unwrap();
}

/// A message published twice (a producer's retry) and delivered twice applies once; the
/// projection counts messages, has no checkpoint, and is shown reading its topic.
async fn duplicate_delivery_applies_once(settings: Settings) {
    let app = started(&settings, TopicProjectionOptions::default()).await;
    let store = Arc::clone(&app.stores().projections);
    // One key: handled in this order, so once m-2 is applied the duplicate was handled.
    publish(
        &app,
        vec![
            shipment("m-1", "o-1", Some("ups")),
            shipment("m-1", "o-1", Some("ups")),
            shipment("m-2", "o-2", Some("dhl")),
        ],
    )
    .await;
    wait_applied(&*store, 2).await;
    assert_eq!(
        rows(
            &app,
            "SELECT order_id, n FROM {s}shipments ORDER BY order_id"
        )
        .await,
        vec![("o-1".to_string(), 1), ("o-2".to_string(), 1)]
    );
    let s = state(&*store).await;
    assert_eq!((s.events_applied, s.checkpoint.get()), (2, 0));
    assert_eq!(
        dead_letters(&app).await,
        0,
        "the duplicate was acknowledged, not failed (its log row would have broken the key)"
    );

    let status = admin::status(&*store, &*app.stores().events, Some(NAME))
        .await
        .unwrap();
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].topic.as_deref(), Some(TOPIC));
    assert_eq!((status[0].checkpoint, status[0].lag_events), (0, 0));
    assert_eq!(status[0].events_applied, 2);
    let waited = runnel::projection::wait_for_position(
        &*store,
        NAME,
        runnel::core::Position(1),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(waited, runnel::projection::WaitError::ReadsTopic { .. }),
        "{waited:?}"
    );
    let runner = runnel::projection::ProjectionRunner::new(
        Arc::new(SameNameFromAll),
        Arc::clone(&store),
        Arc::clone(&app.stores().events),
        runnel::projection::RunnerOptions::default(),
    );
    let refused = runner.register().await.unwrap_err();
    assert!(refused.to_string().contains("reads topic"), "{refused}");
    let report = app.shutdown(DEADLINE).await;
    assert!(report.all_stopped_in_time(), "{report:?}");
    assert_eq!(report.restarts(), 0, "{report:?}");
}

/// A message whose second statement fails writes nothing — not even its first
/// statement's row — is retried, then dead-lettered under the projection's topic and
/// group; the messages after it on the same key are applied. A bad payload is
/// dead-lettered at once. A rebuild or a pause is refused, naming the topic.
async fn failing_statement_rolls_back_and_dead_letters(settings: Settings) {
    let app = started(&settings, fast_retries()).await;
    let store = Arc::clone(&app.stores().projections);
    let mut unreadable = shipment("m-bad-json", "o-x", Some("ups"));
    unreadable.payload = b"{not json".to_vec();
    publish(
        &app,
        vec![
            shipment("m-1", "o-1", Some("ups")),
            shipment("m-poison", "o-9", None),
            unreadable,
            shipment("m-2", "o-2", Some("dhl")),
        ],
    )
    .await;
    wait_applied(&*store, 2).await;
    assert_eq!(
        rows(
            &app,
            "SELECT message_id, CAST(0 AS BIGINT) FROM {s}shipment_log ORDER BY message_id"
        )
        .await,
        vec![("m-1".to_string(), 0), ("m-2".to_string(), 0)],
        "the failing message's first statement was rolled back"
    );
    let filter = DeadLetterFilter {
        topic: Some(TopicName::new(TOPIC).unwrap()),
        group: Some(Shipments.group()),
        ..DeadLetterFilter::default()
    };
    let letters = app
        .stores()
        .dead_letters
        .list(&filter, None, 10)
        .await
        .unwrap();
    let mut ids: Vec<&str> = letters.iter().map(|d| d.message.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["m-bad-json", "m-poison"]);
    let poison = letters.iter().find(|d| d.message.id == "m-poison").unwrap();
    assert_eq!(poison.failures.len(), 3, "retried, then dead-lettered");
    assert!(
        poison.failures[0].error.contains("statement 1 failed"),
        "{:?}",
        poison.failures
    );
    let unreadable = letters
        .iter()
        .find(|d| d.message.id == "m-bad-json")
        .unwrap();
    assert_eq!(unreadable.failures.len(), 1, "permanent: no retries");

    for refused in [
        admin::rebuild(&*store, NAME).await.map(|_| ()).unwrap_err(),
        admin::pause(&*store, NAME).await.map(|_| ()).unwrap_err(),
        admin::skip(&*store, NAME).await.map(|_| ()).unwrap_err(),
    ] {
        let text = refused.to_string();
        assert!(text.contains(TOPIC), "{text}");
    }
    let e = store.rebuild(NAME).await.unwrap_err();
    assert!(e.to_string().contains("cannot be rebuilt"), "{e}");
    assert_eq!(store.states(Some(NAME)).await.unwrap().len(), 1);
    let report = app.shutdown(DEADLINE).await;
    assert!(report.all_stopped_in_time(), "{report:?}");
}

/// A crash between a message's commit and its ack: the message was applied (run here
/// through the consumer's own inbox layer and handler, never acked on the bus), then the
/// bus delivers it again to a restarted application — a no-op — and the next message
/// applies.
async fn redelivery_after_the_commit_is_a_no_op(settings: Settings) {
    // The "process before the crash": registers and commits m-1 without any bus.
    {
        let stores = runnel::connect::open_stores(
            &settings.store,
            runnel::connect::OpenMode::CreateIfMissing,
        )
        .await
        .unwrap();
        let projection: Arc<dyn TopicProjection> = Arc::new(Shipments);
        let generation = register_topic_projection(&*projection, &*stores.projections)
            .await
            .unwrap();
        let inbox = TopicProjectionInbox::new(
            NAME,
            generation,
            Arc::clone(&stores.projections),
            runnel::core::projection::TOPIC_INBOX_KEEP_DEFAULT,
        );
        let service = InboxLayer::new(inbox).layer(HandlerService::new(
            TopicProjectionHandler::new(Arc::clone(&projection)),
        ));
        let ctx = HandlerContext::detached(
            shipment("m-1", "o-1", Some("ups")),
            projection.topic(),
            projection.group(),
        );
        assert_eq!(service.oneshot(ctx).await.unwrap(), Outcome::Handled);
        assert_eq!(state(&*stores.projections).await.events_applied, 1);
    }
    // The restarted application gets m-1 again (never acked), then m-2.
    let app = started(&settings, TopicProjectionOptions::default()).await;
    let store = Arc::clone(&app.stores().projections);
    publish(
        &app,
        vec![
            shipment("m-1", "o-1", Some("ups")),
            shipment("m-2", "o-1", Some("fedex")),
        ],
    )
    .await;
    wait_applied(&*store, 2).await;
    assert_eq!(
        rows(&app, "SELECT carrier, n FROM {s}shipments").await,
        vec![("fedex".to_string(), 2)],
        "m-1 once, m-2 once"
    );
    assert_eq!(dead_letters(&app).await, 0, "the redelivery was a no-op");
    let report = app.shutdown(DEADLINE).await;
    assert!(report.all_stopped_in_time(), "{report:?}");
}

/// Version 2 of [`Shipments`] (same tables and SQL, new generation).
struct ShipmentsV2;

impl TopicProjection for ShipmentsV2 {
    fn name(&self) -> &str {
        Shipments.name()
    }
    fn version(&self) -> u32 {
        2
    }
    fn tables(&self) -> Vec<String> {
        Shipments.tables()
    }
    fn schema(&self, dialect: Dialect) -> Vec<String> {
        Shipments.schema(dialect)
    }
    fn topic(&self) -> TopicName {
        Shipments.topic()
    }
    fn apply(&self, message: &Message, out: &mut Writes) -> Result<(), ProjectionError> {
        Shipments.apply(message, out)
    }
}

/// Waits until generation `version` has applied `n` messages.
async fn wait_generation(store: &dyn ProjectionStore, version: u32, n: u64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let applied = store
            .states(Some(NAME))
            .await
            .unwrap()
            .into_iter()
            .find(|s| s.version == version)
            .map_or(0, |s| s.events_applied);
        if applied >= n {
            assert_eq!(applied, n, "generation {version} applied too many");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "generation {version} applied {applied} of {n} messages within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A new version, started beside a process still running the old one (a rolling deploy),
/// becomes current with new tables; messages the old process receives from then on are
/// handed back to the bus (its generation is retired) and applied by the new one.
async fn a_new_version_takes_over_and_the_old_process_hands_messages_back(settings: Settings) {
    let old = started(&settings, TopicProjectionOptions::default()).await;
    let store = Arc::clone(&old.stores().projections);
    publish(&old, vec![shipment("m-1", "o-1", Some("ups"))]).await;
    wait_generation(&*store, 1, 1).await;

    let mut app = App::connect(&settings).await.unwrap();
    app.topic_projection(Arc::new(ShipmentsV2));
    let new = app.start().await.unwrap();
    let deadline = Instant::now() + DEADLINE;
    while state(&*store).await.version != 2 {
        assert!(
            Instant::now() < deadline,
            "version 2 did not become current"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    publish(
        &old,
        (2..=5)
            .map(|i| shipment(&format!("m-{i}"), &format!("o-{i}"), Some("dhl")))
            .collect(),
    )
    .await;
    wait_generation(&*store, 2, 4).await;
    wait_generation(&*store, 1, 1).await;
    assert_eq!(
        rows(
            &old,
            "SELECT order_id, n FROM {s}shipments ORDER BY order_id"
        )
        .await,
        (2..=5).map(|i| (format!("o-{i}"), 1)).collect::<Vec<_>>(),
        "the plain names show version 2, which applied what came after it started"
    );
    assert_eq!(dead_letters(&old).await, 0);
    for app in [new, old] {
        let report = app.shutdown(DEADLINE).await;
        assert!(report.all_stopped_in_time(), "{report:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_takes_over_and_the_old_process_hands_messages_back_on_postgres() {
    let Some((settings, _schema)) = postgres_settings() else {
        return;
    };
    a_new_version_takes_over_and_the_old_process_hands_messages_back(settings).await;
}

// ---------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------

fn sqlite_settings(dir: &tempfile::TempDir) -> Settings {
    SettingsInputs::default()
        .db("--db", Some(dir.path().join("app.db")))
        .resolve()
        .unwrap()
}

/// Drops the test's schema when it goes.
struct DropSchema {
    url: String,
    schema: String,
}

impl Drop for DropSchema {
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use runnel::postgres::sqlx::{self, Connection};
                if let Ok(mut conn) = sqlx::PgConnection::connect(&url).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        });
        let _ = dropped.join();
    }
}

/// Settings for a fresh schema `tproj_{uuid}` (the embedded bus on PostgreSQL), or `None`
/// (skipped; a failure under `RUNNEL_REQUIRE_SERVICES=1`).
fn postgres_settings() -> Option<(Settings, DropSchema)> {
    let url = match std::env::var("RUNNEL_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            assert!(
                std::env::var("RUNNEL_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "RUNNEL_TEST_POSTGRES_URL is not set but RUNNEL_REQUIRE_SERVICES=1"
            );
            eprintln!("SKIPPED: RUNNEL_TEST_POSTGRES_URL is not set");
            return None;
        }
    };
    let schema = format!("tproj_{}", uuid::Uuid::now_v7().simple());
    let separator = if url.contains('?') { '&' } else { '?' };
    let settings = SettingsInputs::default()
        .store("--store", Some(format!("{url}{separator}schema={schema}")))
        .resolve()
        .unwrap();
    Some((settings, DropSchema { url, schema }))
}

/// Settings for SQLite with a NATS bus of its own (subject and stream prefixes, so runs
/// and concurrent tests do not share topics or groups), or `None` (skipped; a failure
/// under `RUNNEL_REQUIRE_SERVICES=1`).
fn nats_settings(dir: &tempfile::TempDir) -> Option<Settings> {
    let url = match std::env::var("RUNNEL_TEST_NATS_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            assert!(
                std::env::var("RUNNEL_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "RUNNEL_TEST_NATS_URL is not set but RUNNEL_REQUIRE_SERVICES=1"
            );
            eprintln!("SKIPPED: RUNNEL_TEST_NATS_URL is not set");
            return None;
        }
    };
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let tag = &tag[tag.len() - 12..];
    let separator = if url.contains('?') { '&' } else { '?' };
    let bus = format!("{url}{separator}subject_prefix=tproj{tag}&stream_prefix=TPROJ{tag}");
    Some(
        SettingsInputs::default()
            .db("--db", Some(dir.path().join("app.db")))
            .bus("--bus", Some(bus))
            .resolve()
            .unwrap(),
    )
}

macro_rules! on_every_backend {
    ($($scenario:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let dir = tempfile::tempdir().unwrap();
                    super::$scenario(super::sqlite_settings(&dir)).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let Some((settings, _schema)) = super::postgres_settings() else { return };
                    super::$scenario(settings).await;
                }
            )+
        }
        mod sqlite_over_nats {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let dir = tempfile::tempdir().unwrap();
                    let Some(settings) = super::nats_settings(&dir) else { return };
                    super::$scenario(settings).await;
                }
            )+
        }
    };
}

on_every_backend!(
    duplicate_delivery_applies_once,
    failing_statement_rolls_back_and_dead_letters,
    redelivery_after_the_commit_is_a_no_op,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_takes_over_and_the_old_process_hands_messages_back_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    a_new_version_takes_over_and_the_old_process_hands_messages_back(sqlite_settings(&dir)).await;
}
