//! The consumer router end to end on PostgreSQL: the real table-queue bus, the
//! transactional inbox (the handler's SQL in the inbox's transaction) and the dead-letter
//! store, in a fresh schema per test (`RUNNEL_TEST_POSTGRES_URL`). The same scenarios as
//! `e2e_sqlite`, from `e2e_support/scenarios.rs`.

mod e2e_support;

use e2e_support::postgres::PostgresBackend;
use e2e_support::scenarios;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_message_dead_lettered_after_max_attempts_without_blocking_other_keys() {
    let Some(backend) = PostgresBackend::new().await else {
        return;
    };
    scenarios::poison_message_dead_lettered_after_max_attempts_without_blocking_other_keys(
        backend.clone(),
    )
    .await;
    backend.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_delivery_has_single_effect() {
    let Some(backend) = PostgresBackend::new().await else {
        return;
    };
    scenarios::duplicate_delivery_has_single_effect(backend.clone()).await;
    backend.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_round_trip() {
    let Some(backend) = PostgresBackend::new().await else {
        return;
    };
    scenarios::dlq_replay_round_trip(backend.clone()).await;
    backend.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_is_kept_end_to_end_under_concurrency_with_retries() {
    let Some(backend) = PostgresBackend::new().await else {
        return;
    };
    scenarios::per_key_order_is_kept_end_to_end_under_concurrency_with_retries(backend.clone())
        .await;
    backend.drop_schema().await;
}
