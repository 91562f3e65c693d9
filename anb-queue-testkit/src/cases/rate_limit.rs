//! The global rate limit: the case of the conformance suite for `Worker::rate_limit`.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anb_queue::{Job, JobContext, Queue, QueueError, RateLimit, Worker};
use serde::{Deserialize, Serialize};

use crate::{
    Fixture,
    support::{RunningWorker, is_empty, stats, wait_until},
};

/// A quick job of a rate-limited queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Paced {
    n: u32,
}

impl Job for Paced {
    const NAME: &'static str = "paced";
    const QUEUE: &'static str = "paced";
}

/// Starts per window.
const PERMITS: u32 = 5;
/// The window.
const PERIOD: Duration = Duration::from_secs(1);
/// Jobs to run: six windows' worth.
const JOBS: u32 = 30;

/// When each job started, and on which worker.
type Starts = Arc<Mutex<Vec<(Instant, usize)>>>;

/// A worker whose `paced` queue has room for 8 jobs at once, limited to 5 starts a second.
fn paced_worker(queue: &Queue, worker: usize, starts: Starts) -> Worker {
    Worker::new(queue.clone())
        .queue(Paced::QUEUE, 8)
        .rate_limit(Paced::QUEUE, RateLimit::per(PERMITS, PERIOD))
        .handle(move |_job: Paced, _ctx: JobContext| {
            let starts = starts.clone();
            async move {
                starts.lock().unwrap().push((Instant::now(), worker));
                Ok(())
            }
        })
}

/// The backend's counter itself: takes from one window grant at most its permits in all,
/// from any handle, and permits given back can be taken again in the same window; another
/// named queue has its own count, and a limit's own permits bound a take however many are
/// asked for. (An hour's window, so that the checks fall in one window; they start over in
/// the rare case one ends meanwhile.) A backend without the counter refuses.
pub async fn rate_limit_permits_are_counted_per_window_and_given_back(fx: &impl Fixture) {
    let queue = fx.queue().await;
    let backend = queue.backend();
    let limit = RateLimit::per(3, Duration::from_secs(3600));
    if !fx.capabilities().global_rate_limit {
        assert!(!backend.supports_global_rate_limit());
        let error = backend.take_permits("paced", 1, limit).await.unwrap_err();
        assert!(
            matches!(error, QueueError::UnsupportedByBackend { .. }),
            "{error:?}"
        );
        return;
    }
    assert!(backend.supports_global_rate_limit());
    let other = fx.queue().await;
    for attempt in 1..=3 {
        let first = backend.take_permits("paced", 2, limit).await.unwrap();
        let second = other
            .backend()
            .take_permits("paced", 2, limit)
            .await
            .unwrap();
        let third = backend.take_permits("paced", 5, limit).await.unwrap();
        other
            .backend()
            .return_permits("paced", second, 1)
            .await
            .unwrap();
        let again = backend.take_permits("paced", 5, limit).await.unwrap();
        let emptied = other
            .backend()
            .take_permits("paced", 1, limit)
            .await
            .unwrap();
        let elsewhere = backend.take_permits("other", 9, limit).await.unwrap();
        let windows = [&first, &second, &third, &again, &emptied, &elsewhere];
        if windows.iter().any(|taken| taken.window != first.window) {
            assert!(attempt < 3, "the window kept changing: {windows:?}");
            continue;
        }
        assert_eq!(
            [first.granted, second.granted, third.granted],
            [2, 1, 0],
            "three permits, taken by two handles"
        );
        assert_eq!(
            (again.granted, emptied.granted),
            (1, 0),
            "the one given back"
        );
        assert_eq!(elsewhere.granted, 3, "another queue counts its own");
        assert!(
            third.window_ends_in <= limit.period() && third.window_ends_in > Duration::ZERO,
            "{third:?}"
        );
        let start = Duration::from_millis(u64::try_from(first.window).unwrap());
        assert_eq!(
            start.as_millis() % limit.period().as_millis(),
            0,
            "windows are aligned to the epoch"
        );
        return;
    }
}

/// Two workers, each on its own handle and each with room for more jobs than the limit,
/// share a limit of 5 starts per 1 s window: 30 quick jobs take at least six windows, which
/// one worker's limit alone (or a limit counted per process, 10 per window between them)
/// would not. The windows are fixed, aligned by the backend's clock: the first job starts in
/// some window after the workers started, and the 26th to 30th in the sixth window or later,
/// so the last start comes more than four periods after the workers started; and eleven jobs
/// in a row span three windows, more than a period (less the time from a claim to its
/// handler's start, allowed up to three quarters of a period). Once the jobs are done the
/// limited workers idle without spinning. A backend without a counter its workers share
/// (SQS) refuses the limit before claiming anything.
pub async fn a_rate_limit_holds_across_workers(fx: &impl Fixture) {
    let queue = fx.queue().await;
    if !fx.capabilities().global_rate_limit {
        queue.enqueue(&Paced { n: 0 }).await.unwrap();
        let error = paced_worker(&queue, 0, Arc::default())
            .run_until(std::future::pending())
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                QueueError::UnsupportedByBackend {
                    operation: "a global rate limit",
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(stats(&queue).await.ready, 1, "nothing claimed");
        return;
    }
    let jobs: Vec<Paced> = (0..JOBS).map(|n| Paced { n }).collect();
    queue.enqueue_bulk(&jobs).await.unwrap();
    let starts: Starts = Arc::default();
    let began = Instant::now();
    let mut handles = Vec::new();
    let mut workers = Vec::new();
    for worker in 0..2 {
        let handle = fx.queue().await;
        workers.push(RunningWorker::spawn(paced_worker(
            &handle,
            worker,
            starts.clone(),
        )));
        handles.push(handle);
    }
    wait_until("every job started", 120, || async {
        starts.lock().unwrap().len() >= JOBS as usize
    })
    .await;
    wait_until("queue empty", 60, || is_empty(&queue)).await;
    // Idle and limited: the lanes look for due jobs, and take no permits until one is due.
    let before = handles[0].poll_counts();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = handles[0].poll_counts();
    for worker in workers {
        worker.stop().await;
    }
    let mut starts = starts.lock().unwrap().clone();
    starts.sort_unstable_by_key(|(at, _)| *at);
    assert_eq!(starts.len(), JOBS as usize, "each job started once");
    let windows = JOBS.div_ceil(PERMITS);
    let last = starts[starts.len() - 1].0 - began;
    // Less a little for reading the clocks.
    let least = PERIOD * (windows - 2) - Duration::from_millis(100);
    let per_worker: Vec<usize> = (0..2)
        .map(|worker| starts.iter().filter(|(_, w)| *w == worker).count())
        .collect();
    assert!(
        last >= least,
        "the last of {JOBS} jobs started {last:?} after the workers, before {least:?}: more than \
         {PERMITS} per {PERIOD:?} started (by worker: {per_worker:?})"
    );
    let run = 2 * PERMITS as usize + 1;
    for (first, later) in starts.iter().zip(starts.iter().skip(run - 1)) {
        let span = later.0 - first.0;
        assert!(
            span >= PERIOD / 4,
            "{run} jobs started within {span:?}: more than {PERMITS} per {PERIOD:?} window"
        );
    }
    let claims = after.claims - before.claims;
    let checks = after.due_checks - before.due_checks;
    assert!(
        claims <= 40 && checks <= 40,
        "an idle rate-limited worker made {claims} claims and {checks} due checks in 3 s"
    );
}
