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
            async fn partitions_apply_every_stream_in_order() {
                let Some(stores) = $stores else { return };
                scenarios::partitions_apply_every_stream_in_order(stores).await;
            }
        }
    };
}

proofs!(sqlite, Some(projection_support::sqlite()));
proofs!(postgres, projection_support::postgres().await);
