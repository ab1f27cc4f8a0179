//! The consumer router end to end on the embedded backend: the real SQLite bus, the
//! SQLite transactional inbox and the SQLite dead-letter store, all in one file. The
//! scenarios are in `e2e_support/scenarios.rs` and run on PostgreSQL too (`e2e_postgres`).

mod e2e_support;

use e2e_support::scenarios;
use e2e_support::sqlite::SqliteBackend;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_message_dead_lettered_after_max_attempts_without_blocking_other_keys() {
    scenarios::poison_message_dead_lettered_after_max_attempts_without_blocking_other_keys(
        SqliteBackend::new().await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_delivery_has_single_effect() {
    scenarios::duplicate_delivery_has_single_effect(SqliteBackend::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_round_trip() {
    scenarios::dlq_replay_round_trip(SqliteBackend::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_is_kept_end_to_end_under_concurrency_with_retries() {
    scenarios::per_key_order_is_kept_end_to_end_under_concurrency_with_retries(
        SqliteBackend::new().await,
    )
    .await;
}
