//! Scale-out: three `order-fulfillment run` processes on one PostgreSQL schema and one
//! broker share the order flow under load. Orders are placed with `POST /orders`,
//! round-robin across the live processes. In the middle of the load the process running
//! the order summaries' projection is killed with SIGKILL; what it held — projection
//! leases, claimed outbox rows, saga timers, its consumers' deliveries and group leases —
//! must run again elsewhere within [`TAKEOVER_MAX`]. At the end every order is confirmed
//! or cancelled exactly once, its saga finished, the payment ledger charged it at most once
//! (refunded iff cancelled after the charge), each order's events follow the aggregate's
//! life, and the read model equals a recomputation from the event store. It runs on NATS,
//! on NATS with partitioned groups, and on Kafka, each bus with names of the run's own.
//! The harness is shared with the `scale_out` example that `scripts/scale-out.sh` runs.

#[path = "../examples/scale_out/harness.rs"]
mod harness;

use std::path::Path;
use std::time::Duration;

use harness::{Cluster, Load, TAKEOVER_MAX};

/// Service processes sharing the store and the broker.
const PROCESSES: usize = 3;
/// Orders placed in all.
const ORDERS: usize = 300;
/// The process is killed once this many orders are placed (the load goes on after).
const KILL_AFTER_ORDERS: usize = 100;
/// Concurrent HTTP clients placing orders.
const CLIENTS: usize = 4;
/// Pause of each client between two orders (about 40 orders/s in all: well below what
/// the processes handle, so an order stuck behind the killed process stands out).
const CLIENT_PAUSE: Duration = Duration::from_millis(100);
/// How long the load may take to reach the kill.
const KILL_DEADLINE: Duration = Duration::from_secs(60);
/// How long every order may take to reach its final state after the last placement.
const SETTLE_DEADLINE: Duration = Duration::from_secs(120);

fn service_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("RUNNEL_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "{var} is not set but RUNNEL_REQUIRE_SERVICES=1"
            );
            eprintln!("SKIPPED: {var} is not set");
            None
        }
    }
}

async fn killed_process_work_is_taken_over(pg: &str, bus: &str) {
    let bin = Path::new(env!("CARGO_BIN_EXE_order-fulfillment"));
    let mut cluster = Cluster::start(bin, pg, bus, PROCESSES).await.unwrap();
    let load = Load::new(
        ORDERS,
        cluster.processes.iter().map(|p| p.base.clone()).collect(),
        Some(CLIENT_PAUSE),
    );
    let clients = load.spawn_clients(CLIENTS);

    let deadline = tokio::time::Instant::now() + KILL_DEADLINE;
    while load.placed_count() < KILL_AFTER_ORDERS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the load did not get going:\n{}",
            cluster.tails()
        );
        tokio::time::sleep(harness::POLL).await;
    }
    let (victim, held, takeover) = harness::kill_and_watch(&mut cluster, &load).await.unwrap();
    eprintln!("takeover after the kill: {takeover:?}");
    assert!(
        !held.projections.is_empty(),
        "the killed process held no projection lease, so the test proves less: {held:?}"
    );
    let done = takeover.done().unwrap_or_else(|| {
        panic!(
            "the killed process's work was not running elsewhere after {:?}: {takeover:?}\n{}",
            harness::WATCH_DEADLINE,
            cluster.tails()
        )
    });
    assert!(
        done < TAKEOVER_MAX,
        "takeover took {done:?} (bound {TAKEOVER_MAX:?}): {takeover:?}"
    );

    harness::join_clients(clients).await.unwrap();
    let orders = load.placed();
    assert_eq!(orders.len(), ORDERS);
    if let Err(e) = harness::settle(&cluster, &orders, SETTLE_DEADLINE, |_| {}).await {
        panic!("{e:#}\n{}", cluster.tails());
    }
    for (i, p) in cluster.processes.iter_mut().enumerate() {
        assert!(i == victim || p.alive(), "process {i} died:\n{}", p.tail());
    }
    let verified = harness::verify(&cluster, &orders).await.unwrap();
    eprintln!("{ORDERS} orders final, each exactly once: {verified:?}; takeover {done:?}");
    cluster.finish().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_process_work_is_taken_over_within_10s() {
    let (Some(pg), Some(nats)) = (
        service_url("RUNNEL_TEST_POSTGRES_URL"),
        service_url("RUNNEL_TEST_NATS_URL"),
    ) else {
        return;
    };
    killed_process_work_is_taken_over(&pg, &harness::nats_bus(&nats)).await;
}

/// The same kill on NATS with every topic in six partitions: the killed process's
/// partitions move to the survivors (after the lease) and its deliveries come again there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_process_work_is_taken_over_within_10s_on_partitioned_nats() {
    let (Some(pg), Some(nats)) = (
        service_url("RUNNEL_TEST_POSTGRES_URL"),
        service_url("RUNNEL_TEST_NATS_URL"),
    ) else {
        return;
    };
    killed_process_work_is_taken_over(&pg, &harness::nats_bus_partitioned(&nats, 6)).await;
}

/// The same kill on Kafka: the killed member leaves its groups when its session times out
/// and the survivors are assigned its partitions, from the last committed offsets. (The
/// tests' broker is tansu built by scripts/services.sh with the group-coordinator and
/// fetch fixes of scripts/tansu-group-fix.py and scripts/tansu-fetch-fix.py: without
/// them a dead member's partitions could stay unassigned for minutes, and the records
/// after a committed offset inside a record batch were never delivered again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_process_work_is_taken_over_within_10s_on_kafka() {
    let (Some(pg), Some(brokers)) = (
        service_url("RUNNEL_TEST_POSTGRES_URL"),
        service_url("RUNNEL_TEST_KAFKA_BROKERS"),
    ) else {
        return;
    };
    killed_process_work_is_taken_over(&pg, &harness::kafka_bus(&brokers)).await;
}
