//! The saga proofs (issue: durable sagas), each on the embedded SQLite store and on
//! PostgreSQL: crash at every commit boundary, compensation in reverse, parked failed
//! compensations, duplicate and late replies, durable timers, racing starts, takeover of
//! a killed process's instances, and refusal of unknown definition versions. The
//! scenarios live in `saga_support/scenarios.rs`; over a real bus, see `saga_bus.rs`.

mod saga_support;

use saga_support::scenarios;

macro_rules! proofs {
    ($backend:ident, $stores:expr) => {
        mod $backend {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn saga_resumes_after_kill_at_every_commit_boundary() {
                if $stores.is_none() {
                    return;
                }
                scenarios::resumes_after_kill_at_every_commit_boundary(|| async {
                    $stores.expect("the backend")
                })
                .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn compensation_runs_in_reverse_after_a_step_fails() {
                let Some(stores) = $stores else { return };
                scenarios::compensation_runs_in_reverse_after_a_step_fails(stores).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn failed_compensation_is_parked_and_surfaced() {
                let Some(stores) = $stores else { return };
                scenarios::failed_compensation_is_parked_and_surfaced(stores).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn duplicate_reply_has_one_effect() {
                let Some(stores) = $stores else { return };
                scenarios::duplicate_reply_has_one_effect(stores).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn late_reply_after_timeout_is_not_applied() {
                let Some(stores) = $stores else { return };
                scenarios::late_reply_after_timeout_is_not_applied(stores).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn timers_fire_after_restart() {
                let Some(stores) = $stores else { return };
                scenarios::timers_fire_after_restart(stores).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn racing_start_events_create_one_instance() {
                let Some(stores) = $stores else { return };
                scenarios::racing_start_events_create_one_instance(stores).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn instances_of_a_killed_process_are_taken_over() {
                let Some(stores) = $stores else { return };
                scenarios::instances_of_a_killed_process_are_taken_over(stores).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_killed_runtime_is_taken_over_within_ten_seconds() {
                let Some(stores) = $stores else { return };
                scenarios::a_killed_runtime_is_taken_over_within_ten_seconds(stores).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn process_manager_correlates_times_and_finishes() {
                let Some(stores) = $stores else { return };
                scenarios::process_manager_correlates_times_and_finishes(stores).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn finished_instances_are_purged_after_the_retention() {
                let Some(stores) = $stores else { return };
                scenarios::finished_instances_are_purged_after_the_retention(stores).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn unknown_definition_version_is_refused() {
                let Some(stores) = $stores else { return };
                scenarios::unknown_definition_version_is_refused(stores).await;
            }
        }
    };
}

proofs!(sqlite, Some(saga_support::sqlite()));
proofs!(postgres, saga_support::postgres().await);
