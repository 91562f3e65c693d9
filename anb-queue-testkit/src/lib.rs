#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod cases;
mod fixture;
pub mod jobs;
pub mod support;

use std::future::Future;

pub use fixture::{CHILD_QUEUE_URL, Capabilities, Fixture};

/// Runs one case the way the suite does: on a fresh multi-threaded Tokio runtime with two
/// worker threads, so that handlers, heartbeats and the case itself run side by side.
pub fn run<F: Future>(case: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime")
        .block_on(case)
}

/// The libtest name of the worker-process test that [`conformance_suite!`] writes next to
/// the killed-worker case: the module path without the crate's name.
#[doc(hidden)]
pub fn child_test_name(module_path: &str) -> String {
    let module = module_path.split_once("::").map_or("", |(_, rest)| rest);
    format!("{module}::child_worker_process")
}

/// Writes the whole conformance suite, one `#[test]` per case, into a module `$name`, for the
/// backend whose [`Fixture`] is `$fixture` (a type path; the module sees its parent's
/// names). Run it with `cargo test`; each case opens its own fresh queue.
///
/// ```ignore
/// anb_queue_testkit::conformance_suite!(my_backend, MyFixture);
/// ```
#[macro_export]
macro_rules! conformance_suite {
    ($name:ident, $fixture:ty) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $crate::conformance_suite!(@cases $fixture:
                delivers_jobs_with_their_payload,
                payloads_arrive_exactly_as_sent,
                bulk_enqueue_delivers_every_job_once,
                delayed_job_waits_for_its_time,
                retryable_failure_is_retried_until_success,
                a_job_shows_its_progress_while_running_and_its_error_while_waiting,
                exhausted_retries_dead_letter_with_last_error,
                permanent_failure_dead_letters_at_once,
                a_snoozed_job_runs_again_later_without_counting_the_attempt,
                a_failure_retries_after_the_delay_its_handler_chose,
                operators_look_up_page_requeue_and_prune_jobs,
                dead_jobs_past_the_retention_are_pruned_by_the_worker,
                panicking_handler_is_retried,
                undecodable_payload_is_dead_lettered,
                stats_count_jobs_by_state,
                concurrency_is_bounded,
                heartbeat_keeps_a_long_job_leased,
                shutdown_lets_running_jobs_finish,
                shutdown_releases_jobs_still_running_after_the_grace_period,
                shutdown_cancels_handlers_near_the_end_of_the_grace_and_gives_the_attempt_back,
                a_stale_claim_cannot_touch_the_job_claimed_again,
                a_job_whose_last_attempt_crashed_is_dead_lettered_not_run_again,
                a_lost_lease_cancels_the_handler_and_its_outcome_is_not_recorded,
                a_job_past_its_timeout_is_cancelled_aborted_and_failed,
                an_idle_worker_does_not_spin,
                a_unique_key_is_held_while_the_job_is_unfinished,
                a_period_key_stays_held_after_the_job_completed_until_it_expires,
                concurrent_unique_enqueues_store_one_job,
                dead_lettering_frees_a_unique_key,
                a_cancelled_waiting_job_is_removed_and_never_runs,
                a_cancelled_running_job_is_told_to_stop_and_removed_whatever_it_returns,
                a_job_cancelled_while_running_is_not_run_again_after_its_release,
                named_queues_run_with_their_own_concurrency,
                due_jobs_run_highest_priority_first,
                rate_limit_permits_are_counted_per_window_and_given_back,
                a_rate_limit_holds_across_workers,
            );

            #[test]
            fn job_of_a_killed_worker_process_is_completed_by_another() {
                $crate::run(async {
                    let fixture = <$fixture as $crate::Fixture>::fresh().await;
                    let child = $crate::child_test_name(module_path!());
                    $crate::cases::job_of_a_killed_worker_process_is_completed_by_another(
                        &fixture, &child,
                    )
                    .await;
                    $crate::Fixture::cleanup(fixture).await;
                });
            }

            /// Not a case of its own: the worker process the killed-worker case starts (this
            /// test binary running only this test). Without its environment it returns at once.
            #[test]
            fn child_worker_process() {
                $crate::run($crate::cases::child_worker_process::<$fixture>());
            }
        }
    };
    (@cases $fixture:ty: $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::run(async {
                    let fixture = <$fixture as $crate::Fixture>::fresh().await;
                    $crate::cases::$case(&fixture).await;
                    $crate::Fixture::cleanup(fixture).await;
                });
            }
        )*
    };
}
