//! The application with a topic projection that `tests/topic_projection_kill.rs` kills
//! with SIGKILL mid-stream and restarts.
//!
//! Usage: `runnel-topic-projection-crash-child <db> <messages>`
//!
//! It runs the topic projection `key_counts` (one row per message key counting its
//! messages, and one row per applied message id in `applied`, whose primary key makes a
//! second application of a message fail) over the SQLite file `<db>` and its embedded bus,
//! until `<messages>` messages are applied; then it shuts down, prints `done` and exits 0.
//! Deliveries it held when killed come back after its short ack timeout.

use std::error::Error;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use runnel::app::App;
use runnel::connect::{open_bus, open_stores, OpenMode, StoreUrl};
use runnel::core::bus::{StartPosition, SubscribeOptions};
use runnel::core::projection::Dialect;
use runnel::core::{Message, TopicName};
use runnel::projection::{ProjectionError, TopicProjection, TopicProjectionOptions, Writes};

const USAGE: &str = "usage: runnel-topic-projection-crash-child <db> <messages>";
/// The topic the test publishes to.
const TOPIC: &str = "crash.Counted";
/// Deliveries held by a killed child come back after this long.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

struct KeyCounts;

impl TopicProjection for KeyCounts {
    fn name(&self) -> &str {
        "key_counts"
    }
    fn tables(&self) -> Vec<String> {
        vec!["counts".into(), "applied".into()]
    }
    fn schema(&self, _: Dialect) -> Vec<String> {
        vec![
            "CREATE TABLE {counts} (key TEXT PRIMARY KEY, n BIGINT NOT NULL)".into(),
            "CREATE TABLE {applied} (message_id TEXT PRIMARY KEY)".into(),
        ]
    }
    fn topic(&self) -> TopicName {
        TopicName::new(TOPIC).expect("a valid topic")
    }
    fn apply(&self, message: &Message, out: &mut Writes) -> Result<(), ProjectionError> {
        out.execute(
            "INSERT INTO {counts} (key, n) VALUES ($1, 1) \
             ON CONFLICT (key) DO UPDATE SET n = {counts}.n + 1",
            vec![message.key.clone().unwrap_or_default().into()],
        );
        out.execute(
            "INSERT INTO {applied} (message_id) VALUES ($1)",
            vec![message.id.clone().into()],
        );
        Ok(())
    }
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("topic projection crash child: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("topic projection crash child: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, db, messages] = &args[..] else {
        return Err(USAGE.into());
    };
    let total: u64 = messages.parse().map_err(|_| USAGE)?;
    let stores = open_stores(&StoreUrl::sqlite(db), OpenMode::CreateIfMissing).await?;
    let bus = open_bus(&runnel::connect::BusUrl::Embedded, &stores).await?;
    let mut app = App::with(stores, bus);
    app.topic_projection_with(
        Arc::new(KeyCounts),
        TopicProjectionOptions {
            subscribe: SubscribeOptions {
                start: StartPosition::Earliest,
                ack_timeout: ACK_TIMEOUT,
                ..SubscribeOptions::default()
            },
            ..TopicProjectionOptions::default()
        },
    );
    let running = app.start().await?;
    let projections = Arc::clone(&running.stores().projections);
    loop {
        let applied = projections
            .states(Some("key_counts"))
            .await?
            .first()
            .map_or(0, |s| s.events_applied);
        if applied >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let report = running.shutdown(Duration::from_secs(10)).await;
    if !report.all_stopped_in_time() {
        return Err(format!("shutdown: {report:?}").into());
    }
    println!("done");
    Ok(())
}
