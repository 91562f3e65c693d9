//! The cases of the suite, one `pub async fn` each, written once for every backend. A case
//! panics when the backend breaks a promise; [`crate::conformance_suite!`] turns each into a
//! test.

mod cancel;
mod priority;
mod queues;
mod rate_limit;
mod unique;

use std::{
    collections::HashSet,
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anb_queue::{
    CancelReason, Job, JobContext, JobError, Queue, QueueError, QueueStats, Worker,
    backend::ClaimRequest,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};

pub use cancel::*;
pub use priority::*;
pub use queues::*;
pub use rate_limit::*;
pub use unique::*;

use crate::{
    Fixture,
    jobs::{Echo, Flaky, LastChance, Slow, Unhandled},
    support::{
        RunningWorker, claim_one, fast_retries, is_empty, recording_worker, stats, wait_until,
    },
};

/// Every job enqueued is handled once, with the payload it was enqueued with.
pub async fn delivers_jobs_with_their_payload(fx: &impl Fixture) {
    let queue = fx.queue().await;
    let sent: Vec<Echo> = (0..3)
        .map(|n| Echo {
            n,
            text: format!("héllo {n}"),
        })
        .collect();
    for job in &sent {
        queue.enqueue(job).await.unwrap();
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let worker = RunningWorker::spawn(recording_worker(&queue, seen.clone()));
    wait_until("3 jobs handled", 60, || async {
        seen.lock().unwrap().len() >= 3
    })
    .await;
    wait_until("queue empty", 60, || is_empty(&queue)).await;
    worker.stop().await;
    let seen: HashSet<Echo> = seen.lock().unwrap().iter().cloned().collect();
    assert_eq!(seen, sent.into_iter().collect());
}

/// A payload is opaque JSON text: whatever serde writes arrives as it was sent, on every
/// backend. PostgreSQL's `jsonb` refused `\u0000` (a NUL in a string), so such a job could
/// not be enqueued there.
pub async fn payloads_arrive_exactly_as_sent(fx: &impl Fixture) {
    let queue = fx.queue().await;
    let texts = [
        "nul \u{0} inside".to_owned(),
        "\u{0}".to_owned(),
        "quotes \" and backslash \\ and emoji 🏀".to_owned(),
        "control \u{1} \u{1f} tab\tnewline\n".to_owned(),
        "é".repeat(20_000),
    ];
    let sent: Vec<Echo> = texts
        .iter()
        .enumerate()
        .map(|(n, text)| Echo {
            n: n as u32,
            text: text.clone(),
        })
        .collect();
    queue.enqueue(&sent[0]).await.unwrap();
    queue.enqueue_bulk(&sent[1..]).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let worker = RunningWorker::spawn(recording_worker(&queue, seen.clone()));
    wait_until("every job handled", 60, || async {
        seen.lock().unwrap().len() >= sent.len()
    })
    .await;
    worker.stop().await;
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_by_key(|job| job.n);
    assert_eq!(seen, sent);
}

/// A bulk enqueue stores every job, and each is handled exactly once by three competing
/// workers.
pub async fn bulk_enqueue_delivers_every_job_once(fx: &impl Fixture) {
    let queue = fx.queue().await;
    let jobs: Vec<Echo> = (0..500)
        .map(|n| Echo {
            n,
            text: String::new(),
        })
        .collect();
    let ids = queue.enqueue_bulk(&jobs).await.unwrap();
    assert_eq!(ids.len(), 500);
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        500,
        "ids are distinct"
    );
    assert_eq!(stats(&queue).await.ready, 500);

    // Three workers, each on its own handle (its own connections), compete for the backlog.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for _ in 0..3 {
        let handle = fx.queue().await;
        workers.push(RunningWorker::spawn(
            recording_worker(&handle, seen.clone()).concurrency(8),
        ));
    }
    wait_until("500 jobs handled", 120, || async {
        seen.lock().unwrap().len() >= 500
    })
    .await;
    wait_until("queue empty", 60, || is_empty(&queue)).await;
    for worker in workers {
        worker.stop().await;
    }
    let numbers: Vec<u32> = seen.lock().unwrap().iter().map(|job| job.n).collect();
    assert_eq!(
        numbers.iter().collect::<HashSet<_>>().len(),
        500,
        "every job delivered"
    );
    let repeats = numbers.len() - 500;
    if fx.capabilities().may_redeliver {
        assert!(repeats <= 5, "{repeats} of 500 jobs delivered twice");
    } else {
        assert_eq!(repeats, 0, "no job delivered twice");
    }
}

/// A delayed job is not handled before its time, and is handled soon after it.
pub async fn delayed_job_waits_for_its_time(fx: &impl Fixture) {
    let queue = fx.queue().await;
    let enqueued = Instant::now();
    queue
        .enqueue_in(
            &Echo {
                n: 1,
                text: "later".into(),
            },
            Duration::from_millis(1500),
        )
        .await
        .unwrap();
    queue
        .enqueue(&Echo {
            n: 2,
            text: "now".into(),
        })
        .await
        .unwrap();
    let counts = stats(&queue).await;
    assert_eq!((counts.ready, counts.delayed), (1, 1));

    let started = Arc::new(Mutex::new(Vec::new()));
    let worker = RunningWorker::spawn(Worker::new(queue.clone()).handle({
        let started = started.clone();
        move |job: Echo, _ctx: JobContext| {
            let started = started.clone();
            async move {
                started.lock().unwrap().push((job.n, Instant::now()));
                Ok(())
            }
        }
    }));
    wait_until("both jobs handled", 60, || async {
        started.lock().unwrap().len() >= 2
    })
    .await;
    worker.stop().await;
    let started = started.lock().unwrap().clone();
    assert_eq!(started[0].0, 2, "the due job runs first");
    let delayed_wait = started[1].1 - enqueued;
    // Allow for the database clock's millisecond rounding; the wait must not be cut short.
    assert!(
        delayed_wait >= Duration::from_millis(1490),
        "delayed job started after {delayed_wait:?}, before its 1.5 s delay"
    );
}

/// A handler that fails its first `fail_attempts` attempts and records each attempt number.
fn flaky_worker(queue: &Queue, attempts: Arc<Mutex<Vec<u32>>>, permanent: bool) -> Worker {
    Worker::new(queue.clone())
        .retry_backoff(fast_retries())
        .handle(move |job: Flaky, ctx: JobContext| {
            let attempts = attempts.clone();
            async move {
                attempts.lock().unwrap().push(ctx.attempt());
                if ctx.attempt() <= job.fail_attempts {
                    let message = format!("boom on attempt {}", ctx.attempt());
                    return Err(if permanent {
                        JobError::permanent(message)
                    } else {
                        JobError::retryable(message)
                    });
                }
                Ok(())
            }
        })
}

/// A running job shows the progress its handler reported, and a retried one waits with
/// its attempt counted and the error it failed with, as the operator calls read them
/// (where the backend declares them; their refusal is checked by
/// [`operators_look_up_page_requeue_and_prune_jobs`]).
pub async fn a_job_shows_its_progress_while_running_and_its_error_while_waiting(fx: &impl Fixture) {
    if !fx.capabilities().operator_calls {
        return;
    }
    let queue = fx.queue().await;
    let id = queue.enqueue(&Flaky { fail_attempts: 1 }).await.unwrap();
    let fail = Arc::new(tokio::sync::Notify::new());
    let worker = RunningWorker::spawn(Worker::new(queue.clone()).handle({
        let fail = fail.clone();
        move |_job: Flaky, ctx: JobContext| {
            let fail = fail.clone();
            async move {
                ctx.report_progress(40).await.map_err(JobError::retryable)?;
                fail.notified().await;
                Err(JobError::retryable("the partner answered 503")
                    .retry_after(Duration::from_secs(3600)))
            }
        }
    }));
    wait_until("progress 40 stored", 60, || async {
        queue
            .job(&id)
            .await
            .unwrap()
            .is_some_and(|info| info.progress == Some(40))
    })
    .await;
    let running = queue.job(&id).await.unwrap().unwrap();
    assert_eq!(
        (running.state, running.attempts),
        (anb_queue::JobState::Running, 1)
    );
    fail.notify_one();
    wait_until("retry waiting", 60, || async {
        queue
            .job(&id)
            .await
            .unwrap()
            .is_some_and(|info| info.state == anb_queue::JobState::Delayed)
    })
    .await;
    worker.stop().await;
    let waiting = queue.job(&id).await.unwrap().unwrap();
    assert_eq!(
        (waiting.attempts, waiting.last_error.as_deref()),
        (1, Some("the partner answered 503"))
    );
}

/// A retryable failure is retried, attempt by attempt, until the handler succeeds.
pub async fn retryable_failure_is_retried_until_success(fx: &impl Fixture) {
    let queue = fx.queue().await;
    queue.enqueue(&Flaky { fail_attempts: 2 }).await.unwrap();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let worker = RunningWorker::spawn(flaky_worker(&queue, attempts.clone(), false));
    wait_until("third attempt", 60, || async {
        attempts.lock().unwrap().len() >= 3
    })
    .await;
    wait_until("queue empty", 60, || is_empty(&queue)).await;
    worker.stop().await;
    assert_eq!(*attempts.lock().unwrap(), vec![1, 2, 3]);
}

/// A job that fails every attempt ends in the dead letters with its last error.
pub async fn exhausted_retries_dead_letter_with_last_error(fx: &impl Fixture) {
    let queue = fx.queue().await;
    let before = epoch_ms();
    queue.enqueue(&Flaky { fail_attempts: 99 }).await.unwrap();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let worker = RunningWorker::spawn(flaky_worker(&queue, attempts.clone(), false));
    wait_until("job dead", 60, || async { stats(&queue).await.dead == 1 }).await;
    worker.stop().await;
    assert_eq!(
        *attempts.lock().unwrap(),
        vec![1, 2, 3],
        "MAX_ATTEMPTS = 3, no more"
    );
    let dead = queue.dead_jobs(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].name, "flaky");
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(dead[0].last_error.as_deref(), Some("boom on attempt 3"));
    // When it died, by the store's clock (a second of slack for a server's own clock).
    assert!(
        (before - 1_000..=epoch_ms() + 1_000).contains(&dead[0].dead_at_ms),
        "died at {} ms, the test ran from {before} ms",
        dead[0].dead_at_ms
    );
    let counts = stats(&queue).await;
    assert_eq!((counts.ready, counts.in_flight, counts.delayed), (0, 0, 0));
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Sleepy {
    snoozes: u32,
}

impl Job for Sleepy {
    const NAME: &'static str = "sleepy";
    // One attempt: a snooze that counted it would dead-letter the job.
    const MAX_ATTEMPTS: u32 = 1;
}

const SNOOZE: Duration = Duration::from_millis(300);

/// The runs a handler recorded: the attempt of each, and when it started.
type Runs = Arc<Mutex<Vec<(u32, Instant)>>>;

/// Runs `worker` until its handler recorded `count` runs and the queue is empty; returns
/// the attempts of the runs and the gaps between them.
async fn attempts_and_gaps(
    queue: &Queue,
    worker: Worker,
    runs: &Runs,
    count: usize,
) -> (Vec<u32>, Vec<Duration>) {
    let worker = RunningWorker::spawn(worker);
    wait_until("every run", 60, || async {
        runs.lock().unwrap().len() >= count
    })
    .await;
    wait_until("queue empty", 60, || is_empty(queue)).await;
    worker.stop().await;
    let runs = runs.lock().unwrap().clone();
    let attempts = runs.iter().map(|(attempt, _)| *attempt).collect();
    let gaps = runs.windows(2).map(|pair| pair[1].1 - pair[0].1).collect();
    (attempts, gaps)
}

/// A handler that snoozes puts its job off for the delay it names, and the attempt does
/// not count: a job allowed one attempt snoozes three times, runs each time as attempt 1,
/// and completes.
pub async fn a_snoozed_job_runs_again_later_without_counting_the_attempt(fx: &impl Fixture) {
    let queue = fx.queue().await;
    queue.enqueue(&Sleepy { snoozes: 3 }).await.unwrap();
    let runs = Runs::default();
    let recorded = runs.clone();
    let worker = Worker::new(queue.clone()).handle(move |job: Sleepy, ctx: JobContext| {
        let runs = recorded.clone();
        async move {
            let mut runs = runs.lock().unwrap();
            runs.push((ctx.attempt(), Instant::now()));
            if runs.len() as u32 <= job.snoozes {
                return Err(JobError::snooze(SNOOZE));
            }
            Ok(())
        }
    });
    let (attempts, gaps) = attempts_and_gaps(&queue, worker, &runs, 4).await;
    assert_eq!(attempts, vec![1, 1, 1, 1], "a snooze is not an attempt");
    // A few milliseconds of slack for the store's clock against this process's.
    for gap in gaps {
        assert!(
            gap >= SNOOZE - Duration::from_millis(20),
            "ran again after {gap:?}, snoozed for {SNOOZE:?}"
        );
    }
    assert_eq!(stats(&queue).await.dead, 0);
}

/// A retryable failure with its own delay is retried after that delay instead of the
/// worker's back-off, and the attempt counts.
pub async fn a_failure_retries_after_the_delay_its_handler_chose(fx: &impl Fixture) {
    let queue = fx.queue().await;
    queue.enqueue(&Flaky { fail_attempts: 1 }).await.unwrap();
    let runs = Runs::default();
    let recorded = runs.clone();
    let chosen = Duration::from_millis(700);
    let worker = Worker::new(queue.clone())
        .retry_backoff(fast_retries())
        .handle(move |job: Flaky, ctx: JobContext| {
            let runs = recorded.clone();
            async move {
                runs.lock().unwrap().push((ctx.attempt(), Instant::now()));
                if ctx.attempt() <= job.fail_attempts {
                    return Err(JobError::retryable("come back later").retry_after(chosen));
                }
                Ok(())
            }
        });
    let (attempts, gaps) = attempts_and_gaps(&queue, worker, &runs, 2).await;
    assert_eq!(attempts, vec![1, 2]);
    let gap = gaps[0];
    // The worker's back-off would have retried within 100 ms.
    assert!(
        gap >= chosen - Duration::from_millis(20),
        "retried after {gap:?}, asked for {chosen:?}"
    );
}

/// Milliseconds since the Unix epoch, now.
fn epoch_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

/// A permanent failure dead-letters the job at once, without further attempts.
pub async fn permanent_failure_dead_letters_at_once(fx: &impl Fixture) {
    let queue = fx.queue().await;
    queue.enqueue(&Flaky { fail_attempts: 99 }).await.unwrap();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let worker = RunningWorker::spawn(flaky_worker(&queue, attempts.clone(), true));
    wait_until("job dead", 60, || async { stats(&queue).await.dead == 1 }).await;
    worker.stop().await;
    assert_eq!(*attempts.lock().unwrap(), vec![1]);
    let dead = queue.dead_jobs(10).await.unwrap();
    assert_eq!(dead[0].last_error.as_deref(), Some("boom on attempt 1"));
}

/// The operator calls: a job looked up by id in each state, dead jobs paged through,
/// requeued with a fresh set of attempts, and pruned by age. SQS has none of these but
/// the first page (its API has no lookup by id; its dead-letter queue is redriven and
/// expires by itself) and says so with `UnsupportedByBackend`.
pub async fn operators_look_up_page_requeue_and_prune_jobs(fx: &impl Fixture) {
    let queue = fx.queue().await;
    let doomed = queue
        .enqueue_bulk(&[
            Flaky { fail_attempts: 1 },
            Flaky { fail_attempts: 1 },
            Flaky { fail_attempts: 1 },
        ])
        .await
        .unwrap();
    let ready = queue
        .enqueue(&Echo {
            n: 1,
            text: "waits".into(),
        })
        .await
        .unwrap();
    let delayed = queue
        .enqueue_in(
            &Echo {
                n: 2,
                text: "later".into(),
            },
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let worker = RunningWorker::spawn(flaky_worker(&queue, attempts.clone(), true));
    wait_until("three jobs dead", 60, || async {
        stats(&queue).await.dead == 3
    })
    .await;
    worker.stop().await;

    if !fx.capabilities().operator_calls {
        let unsupported = |result: Result<(), QueueError>| {
            assert!(
                matches!(result, Err(QueueError::UnsupportedByBackend { .. })),
                "{result:?}"
            )
        };
        unsupported(queue.job(&ready).await.map(drop));
        unsupported(queue.requeue_dead(&doomed).await.map(drop));
        unsupported(queue.prune_dead(Duration::ZERO).await.map(drop));
        // The first page is a peek of the dead-letter queue; later pages cannot be asked for.
        queue.dead_jobs_after(None, 10).await.unwrap();
        let after = anb_queue::JobId::new(doomed[0].as_str());
        unsupported(queue.dead_jobs_after(Some(&after), 10).await.map(drop));
        return;
    }

    let info = queue
        .job(&doomed[0])
        .await
        .unwrap()
        .expect("a dead job is stored");
    assert_eq!(
        (
            info.state,
            info.attempts,
            info.max_attempts,
            info.name.as_str()
        ),
        (anb_queue::JobState::Dead, 1, 3, "flaky")
    );
    assert_eq!(info.last_error.as_deref(), Some("boom on attempt 1"));
    let info = queue.job(&ready).await.unwrap().unwrap();
    assert_eq!(
        (info.state, info.attempts, info.last_error),
        (anb_queue::JobState::Ready, 0, None)
    );
    let info = queue.job(&delayed).await.unwrap().unwrap();
    assert_eq!(info.state, anb_queue::JobState::Delayed);
    for missing in ["999999999", "no-such-id"] {
        assert_eq!(
            queue.job(&anb_queue::JobId::new(missing)).await.unwrap(),
            None
        );
    }

    // Two pages of two cover the three dead jobs once each, newest first.
    let first = queue.dead_jobs_after(None, 2).await.unwrap();
    let second = queue.dead_jobs_after(Some(&first[1].id), 2).await.unwrap();
    assert_eq!((first.len(), second.len()), (2, 1));
    let paged: HashSet<_> = first
        .iter()
        .chain(&second)
        .map(|job| job.id.clone())
        .collect();
    assert_eq!(paged, doomed.iter().cloned().collect::<HashSet<_>>());
    assert_eq!(
        first.iter().map(|job| &job.id).collect::<Vec<_>>(),
        queue
            .dead_jobs(2)
            .await
            .unwrap()
            .iter()
            .map(|job| &job.id)
            .collect::<Vec<_>>()
    );

    // Requeued: only the dead one of the two ids; it runs again from attempt 1.
    assert_eq!(
        queue
            .requeue_dead(&[doomed[0].clone(), ready.clone()])
            .await
            .unwrap(),
        1
    );
    let info = queue.job(&doomed[0]).await.unwrap().unwrap();
    assert_eq!((info.state, info.attempts), (anb_queue::JobState::Ready, 0));
    assert_eq!(stats(&queue).await.dead, 2);
    let worker = RunningWorker::spawn(flaky_worker(&queue, attempts.clone(), true));
    wait_until("the requeued job dead again", 60, || async {
        stats(&queue).await.dead == 3
    })
    .await;
    worker.stop().await;
    assert_eq!(*attempts.lock().unwrap(), vec![1, 1, 1, 1]);

    // Pruned by age: none died an hour ago; all have died by now.
    assert_eq!(
        queue.prune_dead(Duration::from_secs(3600)).await.unwrap(),
        0
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(queue.prune_dead(Duration::ZERO).await.unwrap(), 3);
    assert_eq!(stats(&queue).await.dead, 0);
    assert_eq!(queue.job(&doomed[1]).await.unwrap(), None);
    assert_eq!(
        queue.job(&ready).await.unwrap().map(|job| job.state),
        Some(anb_queue::JobState::Ready),
        "pruning leaves live jobs alone"
    );
}

/// A worker deletes dead jobs past its retention; with the default (a week) a fresh dead
/// job stays. SQS keeps dead letters by its dead-letter queue's retention instead.
pub async fn dead_jobs_past_the_retention_are_pruned_by_the_worker(fx: &impl Fixture) {
    let queue = fx.queue().await;
    queue.enqueue(&Flaky { fail_attempts: 1 }).await.unwrap();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let worker = RunningWorker::spawn(flaky_worker(&queue, attempts.clone(), true));
    wait_until("job dead", 60, || async { stats(&queue).await.dead == 1 }).await;
    // The default retention keeps it through the worker's upkeep.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    worker.stop().await;
    assert_eq!(
        stats(&queue).await.dead,
        1,
        "kept under the default retention"
    );
    if !fx.capabilities().operator_calls {
        return;
    }
    let worker = RunningWorker::spawn(
        flaky_worker(&queue, attempts, true).dead_retention(Some(Duration::from_secs(2))),
    );
    wait_until("dead job pruned", 30, || async {
        stats(&queue).await.dead == 0
    })
    .await;
    worker.stop().await;
}

/// A handler that panics fails its attempt like an error, and the job is retried.
pub async fn panicking_handler_is_retried(fx: &impl Fixture) {
    let queue = fx.queue().await;
    queue.enqueue(&Flaky { fail_attempts: 1 }).await.unwrap();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let worker = RunningWorker::spawn(
        Worker::new(queue.clone())
            .retry_backoff(fast_retries())
            .handle({
                let attempts = attempts.clone();
                move |_job: Flaky, ctx: JobContext| {
                    let attempts = attempts.clone();
                    async move {
                        attempts.lock().unwrap().push(ctx.attempt());
                        assert!(ctx.attempt() > 1, "first attempt panics");
                        Ok(())
                    }
                }
            }),
    );
    wait_until("second attempt", 60, || async {
        attempts.lock().unwrap().len() >= 2
    })
    .await;
    wait_until("queue empty", 60, || is_empty(&queue)).await;
    worker.stop().await;
    assert_eq!(*attempts.lock().unwrap(), vec![1, 2]);
}

/// A payload that no longer decodes as its job type is dead-lettered, not retried, and the
/// worker carries on.
pub async fn undecodable_payload_is_dead_lettered(fx: &impl Fixture) {
    #[derive(Serialize, Deserialize)]
    struct OldEcho {
        number: String,
    }
    impl Job for OldEcho {
        const NAME: &'static str = "echo";
    }
    let queue = fx.queue().await;
    queue
        .enqueue(&OldEcho { number: "x".into() })
        .await
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let worker = RunningWorker::spawn(recording_worker(&queue, seen.clone()));
    wait_until("job dead", 60, || async { stats(&queue).await.dead == 1 }).await;
    worker.stop().await;
    assert!(seen.lock().unwrap().is_empty());
    let dead = queue.dead_jobs(1).await.unwrap();
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("does not deserialize")
    );
}

/// Statistics count jobs ready, running, delayed and dead (and the oldest ready age where
/// declared).
pub async fn stats_count_jobs_by_state(fx: &impl Fixture) {
    let queue = fx.queue().await;
    assert_eq!(stats(&queue).await, QueueStats::default());
    // One dead...
    queue.enqueue(&Flaky { fail_attempts: 99 }).await.unwrap();
    let worker = RunningWorker::spawn(flaky_worker(&queue, Arc::default(), true));
    wait_until("one dead", 60, || async { stats(&queue).await.dead == 1 }).await;
    worker.stop().await;
    // ...one held by a worker whose only slot it fills, so the worker claims nothing else
    // (a broker such as SQS cannot leave a worker's unknown job names unreceived)...
    queue.enqueue(&Slow { millis: 600_000 }).await.unwrap();
    let release = Arc::new(tokio::sync::Notify::new());
    let worker = RunningWorker::spawn(Worker::new(queue.clone()).concurrency(1).handle({
        let release = release.clone();
        move |_job: Slow, _ctx: JobContext| {
            let release = release.clone();
            async move {
                release.notified().await;
                Ok(())
            }
        }
    }));
    wait_until("one in flight", 60, || async {
        stats(&queue).await.in_flight == 1
    })
    .await;
    // ...two ready, one delayed.
    queue.enqueue(&Unhandled).await.unwrap();
    queue.enqueue(&Unhandled).await.unwrap();
    queue
        .enqueue_in(&Unhandled, Duration::from_secs(3600))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let counts = stats(&queue).await;
    assert_eq!(
        (counts.ready, counts.in_flight, counts.delayed, counts.dead),
        (2, 1, 1, 1)
    );
    // SQS reports the oldest message's age only as a CloudWatch metric, not as a queue
    // attribute, so its backend leaves it at zero.
    if fx.capabilities().oldest_ready_age {
        assert!(
            counts.oldest_ready_age >= Duration::from_millis(50),
            "oldest ready job waited {:?}",
            counts.oldest_ready_age
        );
    }
    release.notify_one();
    wait_until("slow job done", 60, || async {
        stats(&queue).await.in_flight == 0
    })
    .await;
    worker.stop().await;
}

/// A worker never runs more jobs at once than its concurrency.
pub async fn concurrency_is_bounded(fx: &impl Fixture) {
    let queue = fx.queue().await;
    let jobs: Vec<Slow> = (0..9).map(|_| Slow { millis: 200 }).collect();
    queue.enqueue_bulk(&jobs).await.unwrap();
    let running = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicU32::new(0));
    let worker = RunningWorker::spawn(Worker::new(queue.clone()).concurrency(3).handle({
        let (running, peak, done) = (running.clone(), peak.clone(), done.clone());
        move |job: Slow, _ctx: JobContext| {
            let (running, peak, done) = (running.clone(), peak.clone(), done.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(job.millis)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                done.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }
    }));
    wait_until("9 jobs done", 60, || async {
        done.load(Ordering::SeqCst) >= 9
    })
    .await;
    worker.stop().await;
    assert_eq!(peak.load(Ordering::SeqCst), 3, "runs 3 at once, never more");
}

/// A job that runs longer than its lease keeps it through heartbeats and runs once.
pub async fn heartbeat_keeps_a_long_job_leased(fx: &impl Fixture) {
    let queue = fx.queue().await;
    // Runs for three leases; a second worker is waiting to steal it if the lease lapses.
    queue.enqueue(&Slow { millis: 6000 }).await.unwrap();
    let runs = Arc::new(Mutex::new(Vec::new()));
    let worker = |name: &str| {
        let runs = runs.clone();
        Worker::new(queue.clone())
            .name(name)
            .lease(Duration::from_secs(2))
            .handle(move |job: Slow, ctx: JobContext| {
                let runs = runs.clone();
                async move {
                    runs.lock().unwrap().push(ctx.attempt());
                    ctx.report_progress(10).await?;
                    tokio::time::sleep(Duration::from_millis(job.millis / 2)).await;
                    ctx.extend_lease(Duration::from_secs(3)).await?;
                    ctx.report_progress(60).await?;
                    tokio::time::sleep(Duration::from_millis(job.millis / 2)).await;
                    Ok(())
                }
            })
    };
    let first = RunningWorker::spawn(worker("first"));
    let second = RunningWorker::spawn(worker("second"));
    wait_until("job done", 60, || is_empty(&queue)).await;
    // A lapsed lease would have shown as a second run (attempt 2) before the queue emptied.
    first.stop().await;
    second.stop().await;
    assert_eq!(
        *runs.lock().unwrap(),
        vec![1],
        "ran once, never redelivered"
    );
}

/// Shutdown stops claiming and lets running jobs finish within the grace period.
pub async fn shutdown_lets_running_jobs_finish(fx: &impl Fixture) {
    let queue = fx.queue().await;
    queue.enqueue(&Slow { millis: 500 }).await.unwrap();
    let started = Arc::new(tokio::sync::Notify::new());
    let finished = Arc::new(AtomicBool::new(false));
    let worker = RunningWorker::spawn(
        Worker::new(queue.clone())
            .shutdown_grace(Duration::from_secs(30))
            .handle({
                let (started, finished) = (started.clone(), finished.clone());
                move |job: Slow, ctx: JobContext| {
                    let (started, finished) = (started.clone(), finished.clone());
                    async move {
                        started.notify_one();
                        ctx.shutdown_requested().await;
                        tokio::time::sleep(Duration::from_millis(job.millis)).await;
                        // The grace is there to be used: nothing asked it to stop.
                        assert!(!ctx.is_cancelled(), "cancelled at shutdown start");
                        finished.store(true, Ordering::SeqCst);
                        Ok(())
                    }
                }
            }),
    );
    started.notified().await;
    worker.stop().await;
    assert!(
        finished.load(Ordering::SeqCst),
        "the running job finished before the worker returned"
    );
    assert!(
        is_empty(&queue).await,
        "and was recorded as done: {:?}",
        stats(&queue).await
    );
}

/// A job still running when the grace period ends is released without counting the attempt, and
/// runs again.
pub async fn shutdown_releases_jobs_still_running_after_the_grace_period(fx: &impl Fixture) {
    let queue = fx.queue().await;
    queue.enqueue(&Slow { millis: 600_000 }).await.unwrap();
    let started = Arc::new(tokio::sync::Notify::new());
    let worker = RunningWorker::spawn(
        Worker::new(queue.clone())
            .shutdown_grace(Duration::from_millis(300))
            .handle({
                let started = started.clone();
                move |job: Slow, _ctx: JobContext| {
                    let started = started.clone();
                    async move {
                        started.notify_one();
                        tokio::time::sleep(Duration::from_millis(job.millis)).await;
                        Ok(())
                    }
                }
            }),
    );
    started.notified().await;
    worker.stop().await;
    let counts = stats(&queue).await;
    assert_eq!(
        (counts.ready, counts.in_flight),
        (1, 0),
        "released at once, not left leased"
    );

    // The next worker gets it as attempt 1 again: a release is not a failure.
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let worker = RunningWorker::spawn(Worker::new(queue.clone()).handle({
        let attempts = attempts.clone();
        move |_job: Slow, ctx: JobContext| {
            let attempts = attempts.clone();
            async move {
                attempts.lock().unwrap().push(ctx.attempt());
                Ok(())
            }
        }
    }));
    wait_until("queue empty", 60, || is_empty(&queue)).await;
    worker.stop().await;
    assert_eq!(*attempts.lock().unwrap(), vec![1]);
}

/// What a cooperative handler saw during a shutdown.
#[derive(Debug, Default)]
struct ShutdownView {
    /// Per run: the attempt, whether the cancel token had fired a moment after shutdown
    /// began, and the reason it fired with in the end.
    runs: Mutex<Vec<(u32, bool, Option<CancelReason>)>>,
}

/// A worker that dies during a job's last attempt (its lease never renewed, completed or
/// given back) costs the job that attempt: once the lease runs out the job goes to the dead
/// letters, and no other worker runs it again.
pub async fn a_job_whose_last_attempt_crashed_is_dead_lettered_not_run_again(fx: &impl Fixture) {
    let queue = fx.queue().await;
    queue.enqueue(&LastChance).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let claimed = queue
            .backend()
            .claim(ClaimRequest {
                names: &[LastChance::NAME],
                max: 1,
                owner: "a-worker-that-dies",
                lease: Duration::from_secs(1),
            })
            .await
            .unwrap();
        if !claimed.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "no job to claim within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let runs = Arc::new(AtomicU32::new(0));
    let worker = RunningWorker::spawn(
        Worker::new(queue.clone())
            .lease(Duration::from_secs(1))
            .handle({
                let runs = runs.clone();
                move |_job: LastChance, _ctx: JobContext| {
                    let runs = runs.clone();
                    async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    }
                }
            }),
    );
    wait_until("the crashed job dead", 90, || async {
        stats(&queue).await.dead == 1
    })
    .await;
    worker.stop().await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "not run again after its last attempt"
    );
    let counts = stats(&queue).await;
    assert_eq!((counts.ready, counts.in_flight, counts.delayed), (0, 0, 0));
}

/// A worker whose `LastChance` handler waits for the runtime to cancel it, then fails.
fn cooperative_worker(
    queue: &Queue,
    view: Arc<ShutdownView>,
    started: Arc<tokio::sync::Notify>,
) -> Worker {
    Worker::new(queue.clone())
        .shutdown_grace(Duration::from_secs(2))
        .handle(move |_job: LastChance, ctx: JobContext| {
            let (view, started) = (view.clone(), started.clone());
            async move {
                started.notify_one();
                ctx.shutdown_requested().await;
                // Shutdown began: the handler may go on, nothing is cancelled yet.
                tokio::time::sleep(Duration::from_millis(300)).await;
                let cancelled_early = ctx.is_cancelled();
                ctx.cancelled().await;
                view.runs.lock().unwrap().push((
                    ctx.attempt(),
                    cancelled_early,
                    ctx.cancel_reason(),
                ));
                Err(JobError::retryable("stopped by the shutdown"))
            }
        })
}

/// Near the end of the grace period shutdown fires the handler's token (reason: shutdown);
/// a handler that stops then is released with its attempt given back, even on its last one.
pub async fn shutdown_cancels_handlers_near_the_end_of_the_grace_and_gives_the_attempt_back(
    fx: &impl Fixture,
) {
    let queue = fx.queue().await;
    queue.enqueue(&LastChance).await.unwrap();
    let view = Arc::new(ShutdownView::default());
    // The job is on its last (only) attempt: three shutdowns in a row must not kill it.
    for round in 1..=3 {
        let started = Arc::new(tokio::sync::Notify::new());
        let worker =
            RunningWorker::spawn(cooperative_worker(&queue, view.clone(), started.clone()));
        tokio::time::timeout(Duration::from_secs(60), started.notified())
            .await
            .unwrap_or_else(|_| panic!("round {round}: the job starts"));
        worker.stop().await;
        let counts = stats(&queue).await;
        assert_eq!(
            (counts.ready, counts.in_flight, counts.dead),
            (1, 0, 0),
            "round {round}: released, not dead-lettered nor left leased"
        );
    }
    assert_eq!(
        *view.runs.lock().unwrap(),
        vec![(1, false, Some(CancelReason::Shutdown)); 3],
        "each run was attempt 1, not cancelled as shutdown began, then cancelled for it"
    );
    // And it still completes.
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let worker = RunningWorker::spawn(Worker::new(queue.clone()).handle({
        let attempts = attempts.clone();
        move |_job: LastChance, ctx: JobContext| {
            let attempts = attempts.clone();
            async move {
                attempts.lock().unwrap().push(ctx.attempt());
                Ok(())
            }
        }
    }));
    wait_until("queue empty", 60, || is_empty(&queue)).await;
    worker.stop().await;
    assert_eq!(*attempts.lock().unwrap(), vec![1]);
}

/// A claim whose lease expired cannot complete, retry, release or extend the job claimed again
/// since: leases are fenced per claim.
pub async fn a_stale_claim_cannot_touch_the_job_claimed_again(fx: &impl Fixture) {
    let queue = fx.queue().await;
    let backend = queue.backend().clone();
    queue
        .enqueue(&Echo {
            n: 1,
            text: "fenced".into(),
        })
        .await
        .unwrap();
    let owner = "worker-1";
    let first = claim_one(&queue, owner, Duration::from_millis(500)).await;
    assert_eq!(first.attempt, 1);
    // Its lease runs out (no heartbeat), and the same worker claims the job again.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let second = claim_one(&queue, owner, Duration::from_secs(60)).await;
    assert_eq!((second.id.clone(), second.attempt), (first.id.clone(), 2));
    let (old, new) = (first.lease(), second.lease());
    assert_ne!(old, new, "each claim has a lease of its own");

    // Everything the first attempt still does is a no-op for the second.
    assert_eq!(
        backend
            .extend(owner, std::slice::from_ref(&old), Duration::from_secs(60))
            .await
            .unwrap(),
        vec![old.clone()],
        "extend reports the old lease lost"
    );
    backend
        .progress(owner, &old, 50, Duration::from_secs(60))
        .await
        .unwrap();
    backend
        .complete(owner, std::slice::from_ref(&old))
        .await
        .unwrap();
    backend
        .retry(owner, &old, Duration::ZERO, "stale")
        .await
        .unwrap();
    backend
        .release(owner, std::slice::from_ref(&old))
        .await
        .unwrap();
    backend.dead_letter(owner, &old, "stale").await.unwrap();
    let counts = stats(&queue).await;
    assert_eq!(
        (counts.ready, counts.in_flight, counts.delayed, counts.dead),
        (0, 1, 0, 0),
        "the second claim still holds the only copy of the job"
    );
    assert!(
        backend
            .extend(owner, std::slice::from_ref(&new), Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty(),
        "the current lease is not lost"
    );
    backend
        .complete(owner, std::slice::from_ref(&new))
        .await
        .unwrap();
    assert!(is_empty(&queue).await, "{:?}", stats(&queue).await);
}

/// A handler whose lease is lost is cancelled, and its outcome is not recorded over the new
/// claim's.
pub async fn a_lost_lease_cancels_the_handler_and_its_outcome_is_not_recorded(fx: &impl Fixture) {
    let queue = fx.queue().await;
    queue
        .enqueue(&Echo {
            n: 1,
            text: "lost".into(),
        })
        .await
        .unwrap();
    let first_gave_up = Arc::new(tokio::sync::Notify::new());
    let second_started = Arc::new(tokio::sync::Notify::new());
    let lease_dropped = Arc::new(tokio::sync::Notify::new());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let worker = RunningWorker::spawn(
        Worker::new(queue.clone())
            .concurrency(2)
            // A heartbeat every 40 s: it does not renew the lease this test lets lapse.
            .lease(Duration::from_secs(120))
            .handle({
                let (first_gave_up, second_started, lease_dropped, seen) = (
                    first_gave_up.clone(),
                    second_started.clone(),
                    lease_dropped.clone(),
                    seen.clone(),
                );
                let queue = queue.clone();
                move |_job: Echo, ctx: JobContext| {
                    let (first_gave_up, second_started, lease_dropped, seen, queue) = (
                        first_gave_up.clone(),
                        second_started.clone(),
                        lease_dropped.clone(),
                        seen.clone(),
                        queue.clone(),
                    );
                    async move {
                        if ctx.attempt() == 1 {
                            // Let the lease lapse at once; the job comes back to this worker.
                            ctx.extend_lease(Duration::from_millis(1)).await?;
                            lease_dropped.notify_one();
                            second_started.notified().await;
                            let extended = ctx.extend_lease(Duration::from_secs(60)).await;
                            assert!(
                                matches!(extended, Err(QueueError::LeaseLost { .. })),
                                "{extended:?}"
                            );
                            seen.lock().unwrap().push((1, ctx.cancel_reason()));
                            first_gave_up.notify_one();
                            // Whatever it returns now is not recorded.
                            return Ok(());
                        }
                        second_started.notify_one();
                        first_gave_up.notified().await;
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        let counts = queue.stats().await.unwrap();
                        seen.lock()
                            .unwrap()
                            .push((ctx.attempt(), ctx.cancel_reason()));
                        assert_eq!(
                            (counts.in_flight, counts.ready),
                            (1, 0),
                            "the first attempt's outcome did not settle the second's job"
                        );
                        Ok(())
                    }
                }
            }),
    );
    lease_dropped.notified().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    queue.backend().recover_expired().await.unwrap();
    wait_until("job done", 60, || is_empty(&queue)).await;
    worker.stop().await;
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(1, Some(CancelReason::LeaseLost)), (2, None)]
    );
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Hang;

impl Job for Hang {
    const NAME: &'static str = "hang";
    const MAX_ATTEMPTS: u32 = 2;
    const TIMEOUT: Option<Duration> = Some(Duration::from_millis(300));
}

/// A job past its timeout has its cancellation token fired, is aborted if it does not stop, and
/// fails its attempt.
pub async fn a_job_past_its_timeout_is_cancelled_aborted_and_failed(fx: &impl Fixture) {
    let queue = fx.queue().await;
    queue.enqueue(&Hang).await.unwrap();
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let worker = RunningWorker::spawn(
        Worker::new(queue.clone())
            .retry_backoff(fast_retries())
            // The job type's own timeout wins over the worker's.
            .timeout(Duration::from_secs(600))
            .handle({
                let reasons = reasons.clone();
                move |_job: Hang, ctx: JobContext| {
                    let reasons = reasons.clone();
                    async move {
                        ctx.cancelled().await;
                        reasons
                            .lock()
                            .unwrap()
                            .push((ctx.attempt(), ctx.cancel_reason()));
                        // Told to stop, it hangs on: the runtime aborts it.
                        std::future::pending::<()>().await;
                        Ok(())
                    }
                }
            }),
    );
    wait_until("job dead", 60, || async { stats(&queue).await.dead == 1 }).await;
    worker.stop().await;
    assert_eq!(
        *reasons.lock().unwrap(),
        vec![
            (1, Some(CancelReason::Timeout)),
            (2, Some(CancelReason::Timeout))
        ],
        "each attempt timed out, and the first one was retried"
    );
    let dead = queue.dead_jobs(1).await.unwrap();
    assert_eq!(dead[0].last_error.as_deref(), Some("timed out after 300ms"));
}

/// An idle worker polls a bounded number of times (claims and due checks counted over 3 s, not
/// timed).
pub async fn an_idle_worker_does_not_spin(fx: &impl Fixture) {
    let queue = fx.queue().await;
    let worker = RunningWorker::spawn(recording_worker(&queue, Arc::default()));
    // Let it start (subscribe, first claims), then count what 3 idle seconds cost.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = queue.poll_counts();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = queue.poll_counts();
    worker.stop().await;
    let claims = after.claims - before.claims;
    let checks = after.due_checks - before.due_checks;
    // Every backend polls at most ten times a second when nothing wakes it (SQLite, for
    // jobs of other processes); the others once a second or a long poll.
    assert!(
        claims <= 40 && checks <= 40,
        "an idle worker made {claims} claims and {checks} due checks in 3 s"
    );
    assert_eq!(after.claims - after.empty_claims, 0, "nothing to claim");
}

/// Set (to `1`) in the environment of the worker process the killed-worker case starts.
const CHILD_MARKER: &str = "ANB_QUEUE_TESTKIT_CHILD";

/// A worker in its own process takes a job and is killed by SIGKILL mid-job: the lease lapses
/// and another worker completes the job, as its next attempt, exactly once. `child_test` is
/// the libtest name of a test that runs [`child_worker_process`] for the same fixture.
/// Without [`Fixture::child_env`] the queue lives in one process, and there is nothing to check.
pub async fn job_of_a_killed_worker_process_is_completed_by_another<F: Fixture>(
    fx: &F,
    child_test: &str,
) {
    let Some(child_env) = fx.child_env() else {
        return;
    };
    let queue = fx.queue().await;
    queue.enqueue(&Slow { millis: 600_000 }).await.unwrap();

    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([child_test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_MARKER, "1")
        .envs(child_env)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the worker process");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let started = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            // libtest may print its own "test ... " on the same line first.
            if let Some((_, attempt)) = line.split_once("CHILD STARTED JOB attempt=") {
                return attempt.trim().parse::<u32>().unwrap();
            }
        }
        panic!("the worker process exited without starting the job");
    })
    .await
    .expect("the worker process starts the job within 120 s");
    assert_eq!(started, 1);
    child.start_kill().unwrap(); // SIGKILL: no shutdown code runs
    let status = child.wait().await.unwrap();
    assert!(!status.success(), "killed, not exited: {status:?}");
    assert_eq!(
        stats(&queue).await.in_flight,
        1,
        "still leased to the dead worker"
    );

    let attempts = Arc::new(Mutex::new(Vec::new()));
    let worker = RunningWorker::spawn(
        Worker::new(queue.clone())
            .lease(Duration::from_secs(1))
            .handle({
                let attempts = attempts.clone();
                move |_job: Slow, ctx: JobContext| {
                    let attempts = attempts.clone();
                    async move {
                        attempts.lock().unwrap().push(ctx.attempt());
                        Ok(())
                    }
                }
            }),
    );
    wait_until("job completed by the second worker", 60, || {
        is_empty(&queue)
    })
    .await;
    worker.stop().await;
    let attempts = attempts.lock().unwrap().clone();
    // On SQS the killed process's last long poll stays open on the server and can take the
    // redelivery into a closed connection: SQS counts that receive, so the job may come to
    // the other worker as its third attempt. It still runs exactly once more.
    let expected = if fx.capabilities().lost_receives_count {
        2..=3
    } else {
        2..=2
    };
    assert!(
        attempts.len() == 1 && expected.contains(&attempts[0]),
        "redelivered once, as attempt {expected:?}: {attempts:?}"
    );
}

/// The worker process of [`job_of_a_killed_worker_process_is_completed_by_another`]: when
/// started by that case, opens the queue with [`Fixture::open_in_child`] and runs a worker
/// with a 1 s lease until it is killed; otherwise returns at once.
pub async fn child_worker_process<F: Fixture>() {
    if std::env::var_os(CHILD_MARKER).is_none() {
        return;
    }
    let queue = F::open_in_child().await;
    Worker::new(queue)
        .lease(Duration::from_secs(1))
        .handle(|job: Slow, ctx: JobContext| async move {
            println!("CHILD STARTED JOB attempt={}", ctx.attempt());
            tokio::time::sleep(Duration::from_millis(job.millis)).await;
            Ok(())
        })
        .run_until(std::future::pending())
        .await
        .unwrap();
}
