//! The consumer that `tests/e2e_crash.rs` kills with SIGKILL mid-batch and restarts.
//!
//! Usage: `runnel-consumer-crash-child <db> <topic> <group> <handler-delay-ms>`
//!
//! It consumes `<topic>` as `<group>` from the SQLite file `<db>` through the consumer
//! router with the default layer stack, the SQLite transactional inbox and the SQLite
//! dead-letter store — what an embedded application runs. For every message its handler
//! waits `<handler-delay-ms>` (so a kill lands while many messages are in flight), then
//! writes one row to its own table `effects` through the inbox scope, so the row and the
//! processed mark commit together. Once the group has nothing left to consume it shuts
//! down gracefully, prints `done acked=<n>` and exits 0.
//!
//! Two things only a crash test needs:
//! * after each commit the inbox waits [`AFTER_COMMIT_DELAY`] before the router acks — a
//!   slow acknowledgement, as over a network to a broker — so most kills land between a
//!   commit and its ack, the window the inbox exists for;
//! * every redelivery it receives is printed as `redelivered <message id> <attempt>`, so
//!   the test can tell the duplicates the inbox absorbed (a redelivered message whose
//!   effect a killed process had committed).
//!
//! The test, not this program, checks the outcome: one effect row per message, per-key
//! order, no dead letters.

use std::error::Error;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use runnel::async_trait;
use runnel::consumer::inbox::SqliteInboxScope;
use runnel::consumer::inbox::{Inbox, InboxBegin, InboxCommit, InboxError, InboxKey};
use runnel::consumer::{Consumer, HandlerContext, HandlerError};
use runnel::core::bus::{DeliveryStream, StartPosition, SubscribeOptions, Subscriber};
use runnel::core::{BusError, GroupName, StoreError, TopicName};
use runnel::sqlite::bus::{BusOptions, SqliteBus};
use runnel::sqlite::rusqlite::params;
use runnel::sqlite::{SqliteDeadLetters, SqliteInbox, SqliteStore};

/// A lease the test's restarts wait out: short, so a killed consumer's in-flight messages
/// come back quickly, and far above the handler's few milliseconds.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// Below the ack timeout (so a stuck attempt fails before the message is redelivered),
/// and generous, so a slow CI machine never times out a healthy handler into a dead letter.
const HANDLER_TIMEOUT: Duration = Duration::from_millis(1500);
/// Attempts running at once: many keys in flight when the kill comes.
const MAX_CONCURRENCY: usize = 16;
/// Deliveries held at once.
const MAX_IN_FLIGHT: usize = 64;
/// How often the child looks whether the group's backlog is empty, and notices messages.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Time in-flight deliveries get at the final graceful shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long the inbox holds an attempt between its commit and the ack (see the module doc).
const AFTER_COMMIT_DELAY: Duration = Duration::from_millis(20);
/// Longest handler delay accepted on the command line.
const HANDLER_DELAY_MAX_MS: u64 = 1000;

const USAGE: &str = "usage: runnel-consumer-crash-child <db> <topic> <group> <handler-delay-ms>";

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("crash child: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crash child: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Args {
    db: String,
    topic: TopicName,
    group: GroupName,
    handler_delay: Duration,
}

fn parse_args() -> Result<Args, Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [db, topic, group, delay_ms] = args.as_slice() else {
        return Err(USAGE.into());
    };
    let delay_ms: u64 = delay_ms
        .parse()
        .map_err(|e| format!("handler delay {delay_ms:?}: {e}; {USAGE}"))?;
    if delay_ms > HANDLER_DELAY_MAX_MS {
        return Err(format!("handler delay above {HANDLER_DELAY_MAX_MS} ms").into());
    }
    Ok(Args {
        db: db.clone(),
        topic: TopicName::new(topic.as_str())?,
        group: GroupName::new(group.as_str())?,
        handler_delay: Duration::from_millis(delay_ms),
    })
}

/// The SQLite inbox, with a pause after each commit before the router may ack.
struct SlowAckInbox(SqliteInbox);

#[async_trait]
impl Inbox for SlowAckInbox {
    type Scope = SqliteInboxScope;

    async fn begin(&self, key: &InboxKey) -> Result<InboxBegin<SqliteInboxScope>, InboxError> {
        Inbox::begin(&self.0, key).await
    }

    async fn commit(
        &self,
        key: &InboxKey,
        scope: SqliteInboxScope,
    ) -> Result<InboxCommit, InboxError> {
        let committed = self.0.commit(key, scope).await?;
        tokio::time::sleep(AFTER_COMMIT_DELAY).await;
        Ok(committed)
    }
}

/// The bus, printing each redelivery it hands out.
struct PrintingSubscriber(SqliteBus);

#[async_trait]
impl Subscriber for PrintingSubscriber {
    async fn subscribe(
        &self,
        topic: &TopicName,
        group: &GroupName,
        options: SubscribeOptions,
    ) -> Result<DeliveryStream, BusError> {
        let deliveries = self.0.subscribe(topic, group, options).await?;
        Ok(Box::pin(deliveries.inspect(|delivery| {
            if let Ok(d) = delivery {
                if d.attempt > 1 {
                    // stdout is line-buffered: each line is out before a kill can cut it.
                    println!("redelivered {} {}", d.message.id, d.attempt);
                }
            }
        })))
    }
}

async fn run() -> Result<(), Box<dyn Error>> {
    let args = parse_args()?;
    let store = SqliteStore::open(&args.db)?;
    // The application's own table. No unique constraint on the message id on purpose: a
    // second effect must show up as a second row, not be hidden by a constraint.
    store
        .unit_of_work(|uow| {
            uow.connection()
                .execute(
                    "CREATE TABLE IF NOT EXISTS effects (\
                       seq INTEGER PRIMARY KEY AUTOINCREMENT, \
                       message_id TEXT NOT NULL, \
                       key TEXT NOT NULL, \
                       n INTEGER NOT NULL, \
                       pid INTEGER NOT NULL)",
                    [],
                )
                .map_err(|e| StoreError::Backend(e.to_string()))
        })
        .await?;
    let bus = SqliteBus::new(
        store.clone(),
        BusOptions::default().poll_interval(POLL_INTERVAL),
    )?;

    let delay = args.handler_delay;
    let subscriber = Arc::new(PrintingSubscriber(bus.clone()));
    let consumer = Consumer::builder(subscriber, args.topic.clone(), args.group.clone())
        .handler(move |ctx: HandlerContext| async move {
            // Slow-ish, so a kill finds many attempts between "handled" and "acked".
            tokio::time::sleep(delay).await;
            let body: serde_json::Value = ctx.json()?;
            let n = body["n"]
                .as_i64()
                .ok_or_else(|| HandlerError::permanent("the payload has no number `n`"))?;
            let key = ctx
                .message()
                .ordering_key()
                .ok_or_else(|| HandlerError::permanent("the message has no key"))?
                .to_owned();
            let id = ctx.message().id.clone();
            let pid = i64::from(std::process::id());
            ctx.scope::<SqliteInboxScope>().await?.write(move |uow| {
                uow.connection().execute(
                    "INSERT INTO effects (message_id, key, n, pid) VALUES (?1, ?2, ?3, ?4)",
                    params![id, key, n, pid],
                )?;
                Ok(())
            })
        })
        .inbox(Arc::new(SlowAckInbox(SqliteInbox::new(store.clone()))))
        .dead_letters(Arc::new(SqliteDeadLetters::new(store.clone())))
        .subscribe_options(SubscribeOptions {
            max_in_flight: MAX_IN_FLIGHT,
            ack_timeout: ACK_TIMEOUT,
            // The first run creates the group over everything already published.
            start: StartPosition::Earliest,
            ..Default::default()
        })
        .handler_timeout(HANDLER_TIMEOUT)
        .max_concurrency(MAX_CONCURRENCY)
        .start()
        .await?;

    // Done when the group has nothing left: every message handled (or found handled) and
    // acked. Killed runs never get here.
    loop {
        let backlog = bus
            .group_backlog(&args.topic, &args.group)
            .await?
            .ok_or("the consumer group vanished")?;
        if backlog.pending == 0 {
            break;
        }
        if consumer.is_finished() {
            return Err("the consumer stopped with messages left".into());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let report = consumer.shutdown(SHUTDOWN_GRACE).await?;
    println!("done acked={}", report.acked);
    Ok(())
}
