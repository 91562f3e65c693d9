//! The conformance suite: every semantic the queue promises, written once and run against
//! every backend (one `conformance_suite!` line per backend at the bottom).

mod support;
#[path = "conformance/unique.rs"]
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
    CancelReason, Job, JobContext, JobError, Queue, QueueError, QueueStats, RetryBackoff, Worker,
    backend::{ClaimRequest, ClaimedJob},
};
use serde::{Deserialize, Serialize};
use support::{Engine, RunningWorker, TestDb, wait_until};
use tokio::io::{AsyncBufReadExt, BufReader};
use unique::*;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Echo {
    n: u32,
    text: String,
}

impl Job for Echo {
    const NAME: &'static str = "echo";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Flaky {
    fail_attempts: u32,
}

impl Job for Flaky {
    const NAME: &'static str = "flaky";
    const MAX_ATTEMPTS: u32 = 3;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Slow {
    millis: u64,
}

impl Job for Slow {
    const NAME: &'static str = "slow";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Unhandled;

impl Job for Unhandled {
    const NAME: &'static str = "unhandled";
}

fn fast_retries() -> RetryBackoff {
    RetryBackoff {
        base: Duration::from_millis(20),
        max: Duration::from_millis(100),
    }
}

async fn stats(queue: &Queue) -> QueueStats {
    queue.stats().await.expect("stats")
}

async fn is_empty(queue: &Queue) -> bool {
    let stats = stats(queue).await;
    (stats.ready, stats.in_flight, stats.delayed, stats.dead) == (0, 0, 0, 0)
}

/// Records the payloads a handler saw.
fn recording_worker(queue: &Queue, seen: Arc<Mutex<Vec<Echo>>>) -> Worker {
    Worker::new(queue.clone()).handle(move |job: Echo, _ctx: JobContext| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push(job);
            Ok(())
        }
    })
}

async fn delivers_jobs_with_their_payload(db: &TestDb) {
    let queue = db.queue().await;
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
async fn payloads_arrive_exactly_as_sent(db: &TestDb) {
    let queue = db.queue().await;
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

async fn bulk_enqueue_delivers_every_job_once(db: &TestDb) {
    let queue = db.queue().await;
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

    let seen = Arc::new(Mutex::new(Vec::new()));
    let worker = RunningWorker::spawn(recording_worker(&queue, seen.clone()).concurrency(8));
    wait_until("500 jobs handled", 120, || async {
        seen.lock().unwrap().len() >= 500
    })
    .await;
    wait_until("queue empty", 60, || is_empty(&queue)).await;
    worker.stop().await;
    let numbers: Vec<u32> = seen.lock().unwrap().iter().map(|job| job.n).collect();
    assert_eq!(numbers.len(), 500, "no job delivered twice");
    assert_eq!(numbers.iter().collect::<HashSet<_>>().len(), 500);
}

async fn delayed_job_waits_for_its_time(db: &TestDb) {
    let queue = db.queue().await;
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

async fn retryable_failure_is_retried_until_success(db: &TestDb) {
    let queue = db.queue().await;
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

async fn exhausted_retries_dead_letter_with_last_error(db: &TestDb) {
    let queue = db.queue().await;
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
async fn a_snoozed_job_runs_again_later_without_counting_the_attempt(db: &TestDb) {
    let queue = db.queue().await;
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
async fn a_failure_retries_after_the_delay_its_handler_chose(db: &TestDb) {
    let queue = db.queue().await;
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

async fn permanent_failure_dead_letters_at_once(db: &TestDb) {
    let queue = db.queue().await;
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
async fn operators_look_up_page_requeue_and_prune_jobs(db: &TestDb) {
    let queue = db.queue().await;
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

    if queue.kind() == anb_queue::BackendKind::Sqs {
        let unsupported = |result: Result<(), QueueError>| {
            assert!(
                matches!(
                    result,
                    Err(QueueError::UnsupportedByBackend { backend: "sqs", .. })
                ),
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
async fn dead_jobs_past_the_retention_are_pruned_by_the_worker(db: &TestDb) {
    let queue = db.queue().await;
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
    if queue.kind() == anb_queue::BackendKind::Sqs {
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

async fn panicking_handler_is_retried(db: &TestDb) {
    let queue = db.queue().await;
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

async fn undecodable_payload_is_dead_lettered(db: &TestDb) {
    #[derive(Serialize, Deserialize)]
    struct OldEcho {
        number: String,
    }
    impl Job for OldEcho {
        const NAME: &'static str = "echo";
    }
    let queue = db.queue().await;
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

async fn stats_count_jobs_by_state(db: &TestDb) {
    let queue = db.queue().await;
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
    if db.engine != Engine::Sqs {
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

async fn concurrency_is_bounded(db: &TestDb) {
    let queue = db.queue().await;
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

async fn heartbeat_keeps_a_long_job_leased(db: &TestDb) {
    let queue = db.queue().await;
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

async fn shutdown_lets_running_jobs_finish(db: &TestDb) {
    let queue = db.queue().await;
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

async fn shutdown_releases_jobs_still_running_after_the_grace_period(db: &TestDb) {
    let queue = db.queue().await;
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

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LastChance;

impl Job for LastChance {
    const NAME: &'static str = "last_chance";
    const MAX_ATTEMPTS: u32 = 1;
}

/// What a cooperative handler saw during a shutdown.
#[derive(Debug, Default)]
struct ShutdownView {
    /// Per run: the attempt, whether the cancel token had fired a moment after shutdown
    /// began, and the reason it fired with in the end.
    runs: Mutex<Vec<(u32, bool, Option<CancelReason>)>>,
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

async fn shutdown_cancels_handlers_near_the_end_of_the_grace_and_gives_the_attempt_back(
    db: &TestDb,
) {
    let queue = db.queue().await;
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

/// Claims `name` jobs as `owner` until one comes (the queue recovering expired leases
/// meanwhile, as workers do).
async fn claim_one(queue: &Queue, owner: &str, lease: Duration) -> ClaimedJob {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let claimed = queue
            .backend()
            .claim(ClaimRequest {
                names: &["echo"],
                max: 1,
                owner,
                lease,
            })
            .await
            .unwrap();
        if let Some(job) = claimed.into_iter().next() {
            return job;
        }
        assert!(Instant::now() < deadline, "no job to claim within 60 s");
        queue.backend().recover_expired().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn a_stale_claim_cannot_touch_the_job_claimed_again(db: &TestDb) {
    let queue = db.queue().await;
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

async fn a_lost_lease_cancels_the_handler_and_its_outcome_is_not_recorded(db: &TestDb) {
    let queue = db.queue().await;
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

async fn a_job_past_its_timeout_is_cancelled_aborted_and_failed(db: &TestDb) {
    let queue = db.queue().await;
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

async fn transactional_enqueue_commits_and_rolls_back_with_the_caller(db: &TestDb) {
    let queue = db.queue().await;
    let job = Echo {
        n: 1,
        text: "tx".into(),
    };
    if !db.engine.joins_sql_transactions() {
        // A broker cannot take part in the caller's SQL transaction: `enqueue_tx` must refuse
        // rather than enqueue outside it.
        let error = db
            .enqueue_with_business_write(&queue, std::slice::from_ref(&job), true)
            .await
            .unwrap_err();
        assert!(
            matches!(error, QueueError::TransactionMismatch { .. }),
            "{error:?}"
        );
        assert_eq!(stats(&queue).await.ready, 0, "nothing enqueued");
        return;
    }
    db.enqueue_with_business_write(&queue, std::slice::from_ref(&job), false)
        .await
        .unwrap();
    assert_eq!(db.business_rows().await, 0);
    assert_eq!(
        stats(&queue).await.ready,
        0,
        "rolled back with the business write"
    );
    // A bulk large enough to be split into several statements rolls back whole too.
    let many: Vec<Echo> = (0..2000)
        .map(|n| Echo {
            n,
            text: "bulk".repeat(8),
        })
        .collect();
    let ids = db
        .enqueue_with_business_write(&queue, &many, false)
        .await
        .unwrap();
    assert_eq!(ids.len(), 2000);
    assert_eq!(stats(&queue).await.ready, 0, "bulk rolled back whole");
    db.enqueue_with_business_write(&queue, std::slice::from_ref(&job), true)
        .await
        .unwrap();
    assert_eq!(db.business_rows().await, 1);
    assert_eq!(
        stats(&queue).await.ready,
        1,
        "committed with the business write"
    );

    let seen = Arc::new(Mutex::new(Vec::new()));
    let worker = RunningWorker::spawn(recording_worker(&queue, seen.clone()));
    wait_until("job handled", 60, || async {
        !seen.lock().unwrap().is_empty()
    })
    .await;
    worker.stop().await;
    assert_eq!(*seen.lock().unwrap(), vec![job]);
}

async fn an_idle_worker_does_not_spin(db: &TestDb) {
    let queue = db.queue().await;
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

/// Env var that turns [`crash_helper_worker_process`] into a worker child process.
const CRASH_CHILD_URL: &str = "ANB_QUEUE_CRASH_CHILD_URL";

async fn job_of_a_killed_worker_process_is_completed_by_another(db: &TestDb) {
    let queue = db.queue().await;
    queue.enqueue(&Slow { millis: 600_000 }).await.unwrap();

    // A worker in its own process takes the job, then dies by SIGKILL mid-job.
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_helper_worker_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_CHILD_URL, &db.url)
        .envs(db.child_env())
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
    let expected = if queue.kind() == anb_queue::BackendKind::Sqs {
        2..=3
    } else {
        2..=2
    };
    assert!(
        attempts.len() == 1 && expected.contains(&attempts[0]),
        "redelivered once, as attempt {expected:?}: {attempts:?}"
    );
}

/// Not a test of its own: the worker process that `job_of_a_killed_worker_process_...`
/// starts (this test binary, running only this function, with the URL in the environment).
#[tokio::test]
async fn crash_helper_worker_process() {
    let Ok(url) = std::env::var(CRASH_CHILD_URL) else {
        return;
    };
    let queue = Queue::connect(&url).await.unwrap();
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

macro_rules! conformance_suite {
    ($backend:ident) => {
        mod $backend {
            conformance_suite!(@cases $backend:
                delivers_jobs_with_their_payload,
                payloads_arrive_exactly_as_sent,
                bulk_enqueue_delivers_every_job_once,
                delayed_job_waits_for_its_time,
                retryable_failure_is_retried_until_success,
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
                a_lost_lease_cancels_the_handler_and_its_outcome_is_not_recorded,
                a_job_past_its_timeout_is_cancelled_aborted_and_failed,
                transactional_enqueue_commits_and_rolls_back_with_the_caller,
                job_of_a_killed_worker_process_is_completed_by_another,
                an_idle_worker_does_not_spin,
                a_unique_key_is_held_while_the_job_is_unfinished,
                a_period_key_stays_held_after_the_job_completed_until_it_expires,
                concurrent_unique_enqueues_store_one_job,
                dead_lettering_frees_a_unique_key,
            );
        }
    };
    (@cases $backend:ident: $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let db = crate::support::TestDb::$backend().await;
                crate::$case(&db).await;
                db.cleanup().await;
            }
        )*
    };
}

conformance_suite!(postgres);
conformance_suite!(sqlite);
conformance_suite!(redis);
conformance_suite!(redis_cluster);
conformance_suite!(sqs);

/// Rolling deploy across PostgreSQL schema version 3 (payload `jsonb` → `text`): a queue of
/// version 2 with a job in it is upgraded by a new worker's `setup`, and the statements of
/// version 2's code (its insert casts to `jsonb`, its claim reads `payload::text`) still
/// work on the upgraded table beside the new code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_schema_3_upgrades_a_version_2_queue_and_version_2_statements_still_work() {
    use sqlx::Connection;
    let db = TestDb::postgres().await;
    drop(db.queue().await);
    // Back to version 2 as it was: a jsonb payload, with one job written by version 2's insert.
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let old_insert = "INSERT INTO anb_queue_jobs (name, payload, max_attempts, run_at)
         SELECT n, p::jsonb, m, now() + d * interval '1 millisecond'
         FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::int8[]) AS t(n, p, m, d)
         RETURNING id";
    for statement in [
        "ALTER TABLE anb_queue_jobs ALTER COLUMN payload TYPE JSONB USING payload::jsonb",
        "UPDATE anb_queue_schema SET version = 2",
    ] {
        sqlx::query(statement).execute(&mut conn).await.unwrap();
    }
    let before = serde_json::to_string(&Echo {
        n: 1,
        text: "written by version 2".into(),
    })
    .unwrap();
    let insert_one = |payload: String| {
        sqlx::query(old_insert)
            .bind(vec![Echo::NAME.to_owned()])
            .bind(vec![payload])
            .bind(vec![5_i32])
            .bind(vec![0_i64])
    };
    insert_one(before).execute(&mut conn).await.unwrap();

    // A new worker's queue upgrades it; version 2's insert still works, and so does a
    // payload that jsonb refused.
    let queue = db.queue().await;
    let version: i32 = sqlx::query_scalar("SELECT max(version) FROM anb_queue_schema")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(version, 5, "upgraded to the current version");
    let during = serde_json::to_string(&Echo {
        n: 2,
        text: "written by version 2 after the upgrade".into(),
    })
    .unwrap();
    insert_one(during).execute(&mut conn).await.unwrap();
    let nul = Echo {
        n: 3,
        text: "nul \u{0}".into(),
    };
    queue.enqueue(&nul).await.unwrap();
    let old_read: Vec<String> =
        sqlx::query_scalar("SELECT payload::text FROM anb_queue_jobs ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(old_read.len(), 3, "{old_read:?}");

    let seen = Arc::new(Mutex::new(Vec::new()));
    let worker = RunningWorker::spawn(recording_worker(&queue, seen.clone()));
    wait_until("three jobs handled", 60, || async {
        seen.lock().unwrap().len() >= 3
    })
    .await;
    worker.stop().await;
    let mut seen: Vec<u32> = seen.lock().unwrap().iter().map(|job| job.n).collect();
    seen.sort_unstable();
    assert_eq!(seen, vec![1, 2, 3]);
    conn.close().await.unwrap();
    db.cleanup().await;
}

/// Rolling deploy across PostgreSQL schema version 4 (the ready index leads with the job
/// name): a version-3 queue, with its `(run_at, id)` index and a job in it, is upgraded by
/// a new worker's `setup`, and version 3's claim statement still claims on the new index
/// beside the new code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_schema_4_keeps_version_3_claims_working() {
    use sqlx::Connection;
    let db = TestDb::postgres().await;
    drop(db.queue().await);
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    for statement in [
        "DROP INDEX anb_queue_jobs_ready_by_name",
        "CREATE INDEX anb_queue_jobs_ready ON anb_queue_jobs (run_at, id) WHERE state = 'ready'",
        "UPDATE anb_queue_schema SET version = 3",
    ] {
        sqlx::query(statement).execute(&mut conn).await.unwrap();
    }
    let old_claim = "WITH picked AS (
            SELECT id FROM anb_queue_jobs
            WHERE state = 'ready' AND run_at <= now() AND name = ANY($1)
            ORDER BY run_at, id LIMIT $2 FOR UPDATE SKIP LOCKED
         )
         UPDATE anb_queue_jobs AS j
         SET state = 'running', attempts = j.attempts + 1, locked_by = 'v3', lease_token = 't',
             locked_until = clock_timestamp() + interval '1 minute'
         FROM picked WHERE j.id = picked.id
         RETURNING j.payload::text";
    let queue = db.queue().await;
    let version: i32 = sqlx::query_scalar("SELECT max(version) FROM anb_queue_schema")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(version, 5, "upgraded to the current version");
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE tablename = 'anb_queue_jobs' ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(
        indexes.contains(&"anb_queue_jobs_ready_by_name".to_owned()),
        "{indexes:?}"
    );
    assert!(
        !indexes.contains(&"anb_queue_jobs_ready".to_owned()),
        "{indexes:?}"
    );
    for n in 1..=2 {
        queue
            .enqueue(&Echo {
                n,
                text: "after the upgrade".into(),
            })
            .await
            .unwrap();
    }
    // An old worker claims one; a new one handles the other.
    let claimed: Vec<String> = sqlx::query_scalar(old_claim)
        .bind(vec![Echo::NAME.to_owned()])
        .bind(1_i64)
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let worker = RunningWorker::spawn(recording_worker(&queue, seen.clone()));
    wait_until("the new worker handles the other job", 60, || async {
        !seen.lock().unwrap().is_empty()
    })
    .await;
    worker.stop().await;
    let old: Echo = serde_json::from_str(&claimed[0]).unwrap();
    let new: Vec<u32> = seen.lock().unwrap().iter().map(|job| job.n).collect();
    assert_eq!(new.len(), 1);
    assert_ne!(new[0], old.n);
    conn.close().await.unwrap();
    db.cleanup().await;
}

/// The SQS requests of one operation that `queue` has sent so far.
fn sqs_requests(queue: &Queue, operation: &str) -> u64 {
    queue
        .requests_by_operation()
        .unwrap()
        .get(operation)
        .copied()
        .unwrap_or(0)
}

/// An idle SQS worker refreshes its queue depth gauges once a minute, not every 15 s: each
/// refresh is two billed `GetQueueAttributes` (the queue and its dead letters), which were
/// a third of an idle worker's requests and 0.03 requests per job of a 1,000-job burst. The
/// first refresh comes within the first minute, not at start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_idle_worker_reads_queue_statistics_once_a_minute() {
    let db = TestDb::sqs().await;
    let queue = Queue::connect(&format!("{}?wait_seconds=1", db.url))
        .await
        .unwrap();
    let attribute_reads = |queue: &Queue| sqs_requests(queue, "GetQueueAttributes");
    let at_connect = attribute_reads(&queue);
    let worker = RunningWorker::spawn(recording_worker(&queue, Arc::default()));
    // The gauges are first read at a random point of the first minute.
    wait_until("the first statistics", 75, || async {
        attribute_reads(&queue) >= at_connect + 2
    })
    .await;
    let after_first = attribute_reads(&queue);
    tokio::time::sleep(Duration::from_secs(16)).await;
    let idle = attribute_reads(&queue) - after_first;
    worker.stop().await;
    assert_eq!(idle, 0, "{idle} GetQueueAttributes in 16 idle seconds");
    db.cleanup().await;
}

/// With short polling (`wait_seconds=0`) an idle SQS worker pauses between empty receives
/// instead of sending them back to back (each is billed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_short_polling_idle_worker_pauses_between_empty_receives() {
    let db = TestDb::sqs().await;
    let queue = Queue::connect(&format!("{}?wait_seconds=0", db.url))
        .await
        .unwrap();
    let receives = |queue: &Queue| sqs_requests(queue, "ReceiveMessage");
    let worker = RunningWorker::spawn(recording_worker(&queue, Arc::default()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = receives(&queue);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = receives(&queue) - before;
    // Still claims: a job enqueued now is taken within the pause.
    queue
        .enqueue(&Echo {
            n: 1,
            text: "after the idle time".into(),
        })
        .await
        .unwrap();
    wait_until("the job taken", 30, || is_empty(&queue)).await;
    worker.stop().await;
    assert!(idle <= 6, "{idle} receives in 3 idle seconds");
    db.cleanup().await;
}

/// SQLite has one write lock per file: idle workers polling for jobs of other processes must
/// not take it, or every poll queues behind (and ahead of) the writers they wait for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_idle_polling_takes_no_write_lock() {
    use sqlx::Connection;
    let db = TestDb::sqlite().await;
    let queue = db.queue().await;
    let worker = RunningWorker::spawn(recording_worker(&queue, Arc::default()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Another process's transaction holds the write lock meanwhile.
    let mut writer = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut writer)
        .await
        .unwrap();
    let before = queue.poll_counts();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = queue.poll_counts();
    sqlx::query("ROLLBACK").execute(&mut writer).await.unwrap();
    worker.stop().await;
    let claims = after.claims - before.claims;
    assert!(
        claims >= 5,
        "idle claims went on while another writer held the lock: {claims} in 2 s"
    );
    db.cleanup().await;
}

/// A failure that cannot be recorded (the queue unreachable through a closed gate) is tried
/// a few times, then the job is no longer renewed: its lease lapses and recovery counts the
/// attempt (here the last, so the job is dead), instead of the job staying leased until the
/// worker stops and a release giving the attempt back.
async fn an_unrecordable_failure_lets_the_lease_lapse_and_counts_the_attempt(
    db: TestDb,
    outage: Duration,
) {
    let direct = db.queue().await;
    let mut gated_url = url::Url::parse(&db.url).unwrap();
    let target = format!(
        "{}:{}",
        gated_url.host_str().unwrap(),
        gated_url.port().unwrap()
    );
    let gate = support::TcpGate::start(&target).await;
    gated_url.set_port(Some(gate.port)).unwrap();
    let gated = Queue::connect(gated_url.as_str()).await.unwrap();
    direct.enqueue(&LastChance).await.unwrap();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let (started, gate_closed) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let worker = RunningWorker::spawn(Worker::new(gated).lease(Duration::from_secs(1)).handle({
        let (attempts, started, gate_closed) =
            (attempts.clone(), started.clone(), gate_closed.clone());
        move |_job: LastChance, ctx: JobContext| {
            let (attempts, started, gate_closed) =
                (attempts.clone(), started.clone(), gate_closed.clone());
            async move {
                attempts.lock().unwrap().push(ctx.attempt());
                started.notify_one();
                gate_closed.notified().await;
                Err(JobError::retryable(
                    "failed while the queue was unreachable",
                ))
            }
        }
    }));
    started.notified().await;
    gate.close();
    gate_closed.notify_one();
    // Long enough for every try of the write to fail (each waits for its client's timeout).
    tokio::time::sleep(outage).await;
    gate.open();
    wait_until("job dead", 60, || async { stats(&direct).await.dead == 1 }).await;
    worker.stop().await;
    assert_eq!(*attempts.lock().unwrap(), vec![1], "never run again");
    let dead = direct.dead_jobs(1).await.unwrap();
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap_or_default()
            .starts_with("lease expired"),
        "dead by the lapsed lease: {dead:?}"
    );
    db.cleanup().await;
}

mod unrecordable_failure {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let db = crate::support::TestDb::postgres().await;
        let outage = std::time::Duration::from_secs(12);
        crate::an_unrecordable_failure_lets_the_lease_lapse_and_counts_the_attempt(db, outage)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis() {
        let db = crate::support::TestDb::redis().await;
        let outage = std::time::Duration::from_secs(36);
        crate::an_unrecordable_failure_lets_the_lease_lapse_and_counts_the_attempt(db, outage)
            .await;
    }
}

/// Redis: the set of job names that stats walks forgets a name once none of its jobs waits,
/// and every way a job comes back (retry, release, an expired lease, a requeued dead job)
/// adds its name again, so stats never loses a job.
async fn redis_names_set_forgets_idle_names_and_keeps_returning_ones(db: TestDb) {
    let queue = db.queue().await;
    let backend = queue.backend().clone();
    let owner = "worker-1";
    let echo = || vec!["echo".to_owned()];
    let id = queue
        .enqueue(&Echo {
            n: 1,
            text: "returns".into(),
        })
        .await
        .unwrap();
    assert_eq!(db.redis_set_members("names").await, echo());

    // Leased: nothing of "echo" waits, so stats forgets the name; the retry brings it back.
    let job = claim_one(&queue, owner, Duration::from_secs(60)).await;
    assert_eq!(job.id, id);
    assert_eq!(stats(&queue).await.in_flight, 1);
    assert!(db.redis_set_members("names").await.is_empty(), "pruned");
    backend
        .retry(owner, &job.lease(), Duration::ZERO, "again")
        .await
        .unwrap();
    assert_eq!(db.redis_set_members("names").await, echo(), "after retry");
    assert_eq!(stats(&queue).await.ready, 1, "the retried job is counted");

    // Released after stats forgot the name.
    let job = claim_one(&queue, owner, Duration::from_secs(60)).await;
    assert_eq!(stats(&queue).await.ready, 0);
    assert!(db.redis_set_members("names").await.is_empty(), "pruned");
    backend
        .release(owner, std::slice::from_ref(&job.lease()))
        .await
        .unwrap();
    assert_eq!(stats(&queue).await.ready, 1, "the released job is counted");

    // Its lease expires after stats forgot the name.
    claim_one(&queue, owner, Duration::from_millis(300)).await;
    assert_eq!(stats(&queue).await.ready, 0);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(backend.recover_expired().await.unwrap(), 1);
    assert_eq!(stats(&queue).await.ready, 1, "the recovered job is counted");

    // Dead, then requeued after stats forgot the name.
    let job = claim_one(&queue, owner, Duration::from_secs(60)).await;
    backend
        .dead_letter(owner, &job.lease(), "poison")
        .await
        .unwrap();
    let dead = stats(&queue).await;
    assert_eq!((dead.ready, dead.dead), (0, 1));
    assert!(db.redis_set_members("names").await.is_empty(), "pruned");
    assert_eq!(
        queue.requeue_dead(std::slice::from_ref(&id)).await.unwrap(),
        1
    );
    assert_eq!(stats(&queue).await.ready, 1, "the requeued job is counted");

    // A delayed job keeps its name; a completed one leaves none behind.
    queue
        .enqueue_in(
            &Echo {
                n: 2,
                text: "later".into(),
            },
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
    let job = claim_one(&queue, owner, Duration::from_secs(60)).await;
    assert_eq!(job.id, id);
    backend
        .complete(owner, std::slice::from_ref(&job.lease()))
        .await
        .unwrap();
    let left = stats(&queue).await;
    assert_eq!((left.ready, left.in_flight, left.delayed), (0, 0, 1));
    assert_eq!(db.redis_set_members("names").await, echo(), "delayed");
    db.cleanup().await;
}

/// A Redis server of this test's own, stopped when dropped.
struct OwnRedis {
    process: std::process::Child,
    port: u16,
}

impl OwnRedis {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let process = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let server = Self { process, port };
        wait_until("the test's own Redis answers", 10, || async {
            server.connection().await.is_some()
        })
        .await;
        server
    }

    async fn connection(&self) -> Option<::redis::aio::MultiplexedConnection> {
        let client = ::redis::Client::open(format!("redis://127.0.0.1:{}", self.port)).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        let _: String = ::redis::cmd("PING").query_async(&mut conn).await.ok()?;
        Some(conn)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Redis: a bulk enqueue that runs the server out of memory part way says which jobs were
/// stored (the chunks before the refused one, all claimable) instead of a plain error that
/// reads as "none".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_bulk_enqueue_out_of_memory_part_way_says_which_jobs_were_stored() {
    const JOBS: u32 = 10_000;
    let server = OwnRedis::start().await;
    let mut conn = server.connection().await.unwrap();
    let info: String = ::redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await
        .unwrap();
    let used: u64 = info
        .lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap();
    // Room for a few of the ten 1,000-job chunks, not for all of them.
    let _: () = ::redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(used + 1_500_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    let queue = Queue::connect(&format!("redis://127.0.0.1:{}?queue=oom", server.port))
        .await
        .unwrap();
    let jobs: Vec<Echo> = (0..JOBS)
        .map(|n| Echo {
            n,
            text: "x".repeat(300),
        })
        .collect();
    let error = queue.enqueue_bulk(&jobs).await.unwrap_err();
    let QueueError::PartlyEnqueued { ids, reason } = error else {
        panic!("expected a partial enqueue, got {error}");
    };
    assert_eq!(ids.len(), JOBS as usize);
    let stored = ids.iter().take_while(|id| id.is_some()).count();
    assert!(
        ids[stored..].iter().all(Option::is_none),
        "stored jobs after a refused one"
    );
    assert!(
        stored > 0 && stored < JOBS as usize && stored % 1_000 == 0,
        "{stored} stored"
    );
    assert!(reason.contains("OOM"), "{reason}");
    assert_eq!(stats(&queue).await.ready, stored as u64);
}

/// Redis: a bulk enqueue larger than one script's chunk stores every job with a distinct id,
/// and each is claimed exactly once.
async fn redis_bulk_enqueue_past_one_chunk_is_claimed_exactly_once(db: TestDb) {
    const JOBS: u32 = 2_500;
    let queue = db.queue().await;
    let jobs: Vec<Echo> = (0..JOBS)
        .map(|n| Echo {
            n,
            text: String::new(),
        })
        .collect();
    let ids = queue.enqueue_bulk(&jobs).await.unwrap();
    assert_eq!(ids.len(), JOBS as usize);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), JOBS as usize);
    assert_eq!(stats(&queue).await.ready, u64::from(JOBS));
    let mut claimed = Vec::new();
    loop {
        let batch = queue
            .backend()
            .claim(ClaimRequest {
                names: &["echo"],
                max: 500,
                owner: "worker-1",
                lease: Duration::from_secs(60),
            })
            .await
            .unwrap();
        if batch.is_empty() {
            break;
        }
        claimed.extend(batch);
    }
    assert_eq!(
        claimed.len(),
        JOBS as usize,
        "every job claimed, none twice"
    );
    let claimed_ids: HashSet<_> = claimed.iter().map(|job| job.id.clone()).collect();
    assert_eq!(claimed_ids, ids.into_iter().collect::<HashSet<_>>());
    let numbers: HashSet<u32> = claimed
        .iter()
        .map(|job| serde_json::from_str::<Echo>(&job.payload).unwrap().n)
        .collect();
    assert_eq!(
        numbers,
        (0..JOBS).collect::<HashSet<_>>(),
        "every payload once"
    );
    db.cleanup().await;
}

mod redis_only {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn names_set_on_redis() {
        let db = crate::support::TestDb::redis().await;
        crate::redis_names_set_forgets_idle_names_and_keeps_returning_ones(db).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn names_set_on_redis_cluster() {
        let db = crate::support::TestDb::redis_cluster().await;
        crate::redis_names_set_forgets_idle_names_and_keeps_returning_ones(db).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bulk_enqueue_past_one_chunk_on_redis() {
        let db = crate::support::TestDb::redis().await;
        crate::redis_bulk_enqueue_past_one_chunk_is_claimed_exactly_once(db).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bulk_enqueue_past_one_chunk_on_redis_cluster() {
        let db = crate::support::TestDb::redis_cluster().await;
        crate::redis_bulk_enqueue_past_one_chunk_is_claimed_exactly_once(db).await;
    }
}

/// Middleware: tower layers around every handler of a worker. Backend-independent, so run
/// on the embedded backend.
mod middleware {
    use super::*;
    use anb_queue::middleware::{JobRequest, JobService};
    use tower::{ServiceExt, layer::layer_fn, limit::ConcurrencyLimitLayer, timeout::TimeoutLayer};

    /// A layer that logs `label job-name` before calling the service inside it.
    fn recording_layer(
        label: &'static str,
        log: Arc<Mutex<Vec<String>>>,
    ) -> impl tower::Layer<JobService, Service = JobService> + Send + Sync + 'static {
        layer_fn(move |inner: JobService| {
            let log = log.clone();
            JobService::new(tower::service_fn(move |request: JobRequest| {
                log.lock()
                    .unwrap()
                    .push(format!("{label} {}", request.name()));
                inner.clone().oneshot(request)
            }))
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn layers_wrap_every_handler_the_first_added_outermost() {
        let db = TestDb::sqlite().await;
        let queue = db.queue().await;
        queue
            .enqueue(&Echo {
                n: 1,
                text: "a".into(),
            })
            .await
            .unwrap();
        queue.enqueue(&Flaky { fail_attempts: 0 }).await.unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let handled = log.clone();
        let worker = Worker::new(queue.clone())
            .concurrency(1)
            .layer(recording_layer("outer", log.clone()))
            .layer(recording_layer("inner", log.clone()))
            .handle(move |job: Echo, _ctx: JobContext| {
                let handled = handled.clone();
                async move {
                    handled
                        .lock()
                        .unwrap()
                        .push(format!("handler {}", job.text));
                    Ok(())
                }
            })
            .handle(|_job: Flaky, _ctx: JobContext| async { Ok(()) });
        let worker = RunningWorker::spawn(worker);
        wait_until("both jobs done", 60, || is_empty(&queue)).await;
        worker.stop().await;
        let log = log.lock().unwrap().clone();
        let echo: Vec<&String> = log.iter().filter(|line| !line.ends_with("flaky")).collect();
        assert_eq!(echo, ["outer echo", "inner echo", "handler a"]);
        assert!(
            log.contains(&"outer flaky".to_owned()) && log.contains(&"inner flaky".to_owned()),
            "{log:?}"
        );
        db.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_concurrency_limit_layer_bounds_the_jobs_running_at_once() {
        let db = TestDb::sqlite().await;
        let queue = db.queue().await;
        let jobs: Vec<Slow> = (0..8).map(|_| Slow { millis: 150 }).collect();
        queue.enqueue_bulk(&jobs).await.unwrap();
        let running = Arc::new(AtomicU32::new(0));
        let most = Arc::new(AtomicU32::new(0));
        let (now, peak) = (running.clone(), most.clone());
        let worker = Worker::new(queue.clone())
            .concurrency(8)
            .layer(ConcurrencyLimitLayer::new(2))
            .handle(move |job: Slow, _ctx: JobContext| {
                let (now, peak) = (now.clone(), peak.clone());
                async move {
                    let at_once = now.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(at_once, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(job.millis)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                }
            });
        let worker = RunningWorker::spawn(worker);
        wait_until("every job done", 60, || is_empty(&queue)).await;
        worker.stop().await;
        assert_eq!(
            most.load(Ordering::SeqCst),
            2,
            "8 claimed at once, 2 let through the layer"
        );
        db.cleanup().await;
    }

    /// A layer's own error (a timeout) fails the attempt retryably with its text; a
    /// handler's error passes through the layers as the handler meant it (permanent here).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_layer_error_retries_and_a_handler_error_passes_through_unchanged() {
        let db = TestDb::sqlite().await;
        let queue = db.queue().await;
        queue.enqueue(&Flaky { fail_attempts: 0 }).await.unwrap();
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let seen = attempts.clone();
        let worker = Worker::new(queue.clone())
            .retry_backoff(fast_retries())
            .layer(TimeoutLayer::new(Duration::from_millis(200)))
            .handle(move |_job: Flaky, ctx: JobContext| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(ctx.attempt());
                    if ctx.attempt() == 1 {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        return Ok(());
                    }
                    Err(JobError::permanent("no retry can fix this"))
                }
            });
        let worker = RunningWorker::spawn(worker);
        wait_until("job dead", 60, || async { stats(&queue).await.dead == 1 }).await;
        worker.stop().await;
        assert_eq!(
            *attempts.lock().unwrap(),
            vec![1, 2],
            "timed out once (retried), then permanent"
        );
        let dead = queue.dead_jobs(10).await.unwrap();
        assert_eq!(dead[0].attempts, 2);
        assert_eq!(dead[0].last_error.as_deref(), Some("no retry can fix this"));
        db.cleanup().await;
    }
}
