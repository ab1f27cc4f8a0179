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
