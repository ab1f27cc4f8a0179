//! The projection proofs (issue: projections and read models) on the embedded SQLite
//! store and on PostgreSQL: rebuilds without downtime, failing events
//! paused or parked, the lease moving on a kill, read-your-writes, replaying handlers that
//! cannot send, partitions. The kill -9 proof is `projection_kill.rs`.

mod projection_support;

use projection_support::scenarios;

macro_rules! proofs {
    ($backend:ident, $stores:expr) => {
        mod $backend {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rebuild_switches_without_downtime() {
                let Some(stores) = $stores else { return };
                scenarios::rebuild_switches_without_downtime(stores).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn failing_event_pauses_or_parks_never_skips() {
                let Some(stores) = $stores else { return };
                scenarios::failing_event_pauses_or_parks_never_skips(stores).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_failing_statement_faults_on_its_event() {
                let Some(stores) = $stores else { return };
                scenarios::a_failing_statement_faults_on_its_event(stores).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn projection_lease_moves_to_another_process_on_kill() {
                let Some(stores) = $stores else { return };
                scenarios::projection_lease_moves_to_another_process_on_kill(stores).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn query_waits_for_its_command_position() {
                let Some(stores) = $stores else { return };
                scenarios::query_waits_for_its_command_position(stores).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn replaying_handler_cannot_send_messages() {
                let Some(stores) = $stores else { return };
                scenarios::replaying_handler_cannot_send_messages(stores).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn inline_projection_commits_with_the_append() {
                let Some(stores) = $stores else { return };
                scenarios::inline_projection_commits_with_the_append(stores).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn partitions_apply_every_stream_in_order() {
                let Some(stores) = $stores else { return };
                scenarios::partitions_apply_every_stream_in_order(stores).await;
            }
        }
    };
}

proofs!(sqlite, Some(projection_support::sqlite()));
proofs!(postgres, projection_support::postgres().await);

/// A projection registered on the application runs as a task: events appended through
/// the store reach the read model, and a query can wait for its own write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_runs_its_projections() {
    use std::sync::Arc;
    use std::time::Duration;

    use runnel::app::App;
    use runnel::connect::SettingsInputs;
    use runnel::core::{ExpectedRevision, NewEvent, StreamName};

    let dir = tempfile::tempdir().unwrap();
    let settings = SettingsInputs::default()
        .db("--db", Some(dir.path().join("app.db")))
        .resolve()
        .unwrap();
    let mut app = App::connect(&settings).await.unwrap();
    app.projection(Arc::new(projection_support::Counting::new(1)));
    assert!(app.task_names().contains(&"projection:stream_counts:v1"));
    let running = app.start().await.unwrap();
    let position = running
        .stores()
        .events
        .append(
            &StreamName::new("Acct-9").unwrap(),
            ExpectedRevision::Any,
            vec![NewEvent::json("Posted", &serde_json::json!({}))],
        )
        .await
        .unwrap()
        .position;
    runnel::projection::wait_for_position(
        &*running.stores().projections,
        projection_support::NAME,
        position,
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    let report = running.shutdown(Duration::from_secs(20)).await;
    assert!(report.all_stopped_in_time(), "{report:?}");
}

/// Counts the lease claims a runner makes and passes everything to the real store.
struct CountingClaims {
    inner: std::sync::Arc<dyn runnel::core::projection::ProjectionStore>,
    claims: std::sync::atomic::AtomicU64,
}

#[async_trait::async_trait]
impl runnel::core::projection::ProjectionStore for CountingClaims {
    fn dialect(&self) -> runnel::core::projection::Dialect {
        self.inner.dialect()
    }
    async fn register(
        &self,
        spec: &runnel::core::projection::VersionSpec,
    ) -> Result<runnel::core::projection::VersionRole, runnel::core::StoreError> {
        self.inner.register(spec).await
    }
    async fn states(
        &self,
        name: Option<&str>,
    ) -> Result<Vec<runnel::core::projection::ProjectionState>, runnel::core::StoreError> {
        self.inner.states(name).await
    }
    async fn claim(
        &self,
        name: &str,
        version: u32,
        partition: u32,
        owner: &str,
        now: chrono::DateTime<chrono::Utc>,
        lease: std::time::Duration,
    ) -> Result<Option<runnel::core::projection::ProjectionState>, runnel::core::StoreError> {
        self.claims
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner
            .claim(name, version, partition, owner, now, lease)
            .await
    }
    async fn release(
        &self,
        name: &str,
        version: u32,
        partition: u32,
        owner: &str,
    ) -> Result<(), runnel::core::StoreError> {
        self.inner.release(name, version, partition, owner).await
    }
    async fn commit_batch(
        &self,
        batch: runnel::core::projection::Batch,
        lease_until: chrono::DateTime<chrono::Utc>,
    ) -> Result<runnel::core::projection::BatchOutcome, runnel::core::StoreError> {
        self.inner.commit_batch(batch, lease_until).await
    }
    async fn set_status(
        &self,
        name: &str,
        version: u32,
        partition: Option<u32>,
        status: runnel::core::projection::ProjectionStatus,
        error: Option<(runnel::core::Position, String)>,
    ) -> Result<u64, runnel::core::StoreError> {
        self.inner
            .set_status(name, version, partition, status, error)
            .await
    }
    async fn skip_failed(
        &self,
        name: &str,
        version: u32,
        partition: u32,
    ) -> Result<bool, runnel::core::StoreError> {
        self.inner.skip_failed(name, version, partition).await
    }
    async fn switch(&self, name: &str, version: u32) -> Result<(), runnel::core::StoreError> {
        self.inner.switch(name, version).await
    }
    async fn drop_version(&self, name: &str, version: u32) -> Result<(), runnel::core::StoreError> {
        self.inner.drop_version(name, version).await
    }
    async fn rebuild(
        &self,
        name: &str,
    ) -> Result<runnel::core::projection::RebuildStarted, runnel::core::StoreError> {
        self.inner.rebuild(name).await
    }
    async fn set_topic_source(
        &self,
        source: &runnel::core::projection::TopicSource,
    ) -> Result<(), runnel::core::StoreError> {
        self.inner.set_topic_source(source).await
    }
    async fn topic_sources(
        &self,
        name: Option<&str>,
    ) -> Result<Vec<runnel::core::projection::TopicSource>, runnel::core::StoreError> {
        self.inner.topic_sources(name).await
    }
    async fn commit_message(
        &self,
        commit: runnel::core::projection::MessageCommit,
    ) -> Result<runnel::core::projection::MessageOutcome, runnel::core::StoreError> {
        self.inner.commit_message(commit).await
    }
}

/// Catching up, a runner claims its lease once and then lets each batch's commit (which
/// checks and renews the lease) carry it, instead of a claim — a write transaction — per
/// batch; caught up, it claims again before looking for more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catching_up_runner_claims_its_lease_once_not_per_batch() {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use runnel::core::{ExpectedRevision, NewEvent, StreamName};
    use runnel::projection::{ProjectionRunner, RunnerOptions};

    let stores = projection_support::sqlite();
    for s in 0..10 {
        let events = (0..100)
            .map(|i| NewEvent::json("Posted", &serde_json::json!({ "i": i })))
            .collect();
        stores
            .events
            .append(
                &StreamName::new(format!("Acct-{s}")).unwrap(),
                ExpectedRevision::Any,
                events,
            )
            .await
            .unwrap();
    }
    let counting = Arc::new(CountingClaims {
        inner: Arc::clone(&stores.projections),
        claims: Default::default(),
    });
    let runner = ProjectionRunner::new(
        Arc::new(projection_support::Counting::new(1)),
        counting.clone(),
        Arc::clone(&stores.events),
        RunnerOptions {
            batch_events: 100,
            ..RunnerOptions::default()
        },
    );
    assert_eq!(runner.catch_up().await.unwrap(), 1_000);
    // One claim for the first of the ten batches, one for the look that finds nothing.
    assert_eq!(counting.claims.load(Ordering::Relaxed), 2);
    let rows = (stores.query)("SELECT 'applied', count(*) FROM applied".into()).await;
    assert_eq!(rows, vec![("applied".to_string(), 1_000)]);

    // Caught up, every look claims again (the role or status may have changed meanwhile).
    runner.catch_up().await.unwrap();
    assert_eq!(counting.claims.load(Ordering::Relaxed), 3);
}
