//! apalis workers over this crate's backends: the same behaviour tests on every engine (one
//! `apalis_suite!` line per backend at the bottom), through `anb_queue::apalis::ApalisBackend`.

mod support;

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anb_queue::{
    CancelReason, Job, JobContext, JobError, Queue, QueueError, QueueStats, RetryBackoff, Worker,
    apalis::ApalisBackend,
};
use apalis::prelude::*;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use support::{RunningWorker, TestDb, wait_until};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

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

/// An apalis worker running in the background until stopped.
struct RunningApalis {
    stop: CancellationToken,
    handle: JoinHandle<Result<(), WorkerError>>,
}

type StopSignal = BoxFuture<'static, Result<(), WorkerError>>;

impl RunningApalis {
    /// Starts `run(stop signal)`, typically `|until| worker.run_until(until)`.
    fn spawn<Run, Fut>(run: Run) -> Self
    where
        Run: FnOnce(StopSignal) -> Fut,
        Fut: Future<Output = Result<(), WorkerError>> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let until: StopSignal = Box::pin({
            let stop = stop.clone();
            async move {
                stop.cancelled().await;
                Ok(())
            }
        });
        let handle = tokio::spawn(run(until));
        Self { stop, handle }
    }

    /// Stops the worker (apalis's graceful stop) and waits for it to return.
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("apalis worker stops within 60 s")
            .expect("apalis worker task does not panic")
            .expect("apalis worker returns Ok");
    }
}

/// What handlers record: per job, the attempt the queue and apalis each report.
#[derive(Debug, Default)]
struct Seen {
    echoes: Mutex<Vec<Echo>>,
    attempts: Mutex<Vec<(u32, usize)>>,
}

async fn record_echo(job: Echo, attempt: Attempt, seen: Data<Arc<Seen>>) -> Result<(), JobError> {
    seen.attempts.lock().unwrap().push((0, attempt.current()));
    seen.echoes.lock().unwrap().push(job);
    Ok(())
}

async fn apalis_delivers_every_job_once_with_its_payload(db: &TestDb) {
    let queue = db.queue().await;
    let sent: Vec<Echo> = (0..200)
        .map(|n| Echo {
            n,
            text: format!("héllo {n}"),
        })
        .collect();
    queue.enqueue_bulk(&sent).await.unwrap();
    let seen = Arc::new(Seen::default());
    let worker = RunningApalis::spawn(|until| {
        WorkerBuilder::new("echo")
            .backend(ApalisBackend::<Echo>::new(queue.clone()).batch_size(8))
            .data(seen.clone())
            .concurrency(8)
            .build(record_echo)
            .run_until(until)
    });
    wait_until("200 jobs handled", 120, || async {
        seen.echoes.lock().unwrap().len() >= 200
    })
    .await;
    wait_until("queue empty", 60, || is_empty(&queue)).await;
    worker.stop().await;
    let echoes = seen.echoes.lock().unwrap().clone();
    assert_eq!(echoes.len(), 200, "no job delivered twice");
    assert_eq!(
        echoes.into_iter().collect::<HashSet<_>>(),
        sent.into_iter().collect::<HashSet<_>>()
    );
    assert!(
        seen.attempts
            .lock()
            .unwrap()
            .iter()
            .all(|&(_, apalis_attempt)| apalis_attempt == 1),
        "apalis sees each job's first attempt as attempt 1"
    );
}

/// Fails the first `fail_attempts` attempts with a retryable `JobError`.
async fn flaky_job_error(
    job: Flaky,
    ctx: JobContext,
    attempt: Attempt,
    seen: Data<Arc<Seen>>,
) -> Result<(), JobError> {
    seen.attempts
        .lock()
        .unwrap()
        .push((ctx.attempt(), attempt.current()));
    if ctx.attempt() <= job.fail_attempts {
        return Err(JobError::retryable(format!(
            "boom on attempt {}",
            ctx.attempt()
        )));
    }
    Ok(())
}

/// Fails the first `fail_attempts` attempts with a plain apalis error.
async fn flaky_boxed(
    job: Flaky,
    ctx: JobContext,
    seen: Data<Arc<Seen>>,
) -> Result<(), BoxDynError> {
    seen.attempts.lock().unwrap().push((ctx.attempt(), 0));
    if ctx.attempt() <= job.fail_attempts {
        return Err(format!("boom on attempt {}", ctx.attempt()).into());
    }
    Ok(())
}

/// Fails with apalis's `AbortError`: no retry can help.
async fn flaky_abort(
    job: Flaky,
    ctx: JobContext,
    seen: Data<Arc<Seen>>,
) -> Result<(), BoxDynError> {
    seen.attempts.lock().unwrap().push((ctx.attempt(), 0));
    if ctx.attempt() <= job.fail_attempts {
        return Err(AbortError::new(format!("boom on attempt {}", ctx.attempt())).into());
    }
    Ok(())
}

/// Panics on the first attempt.
async fn flaky_panic(
    _job: Flaky,
    ctx: JobContext,
    seen: Data<Arc<Seen>>,
) -> Result<(), BoxDynError> {
    seen.attempts.lock().unwrap().push((ctx.attempt(), 0));
    assert!(ctx.attempt() > 1, "first attempt panics");
    Ok(())
}

fn queue_attempts(seen: &Seen) -> Vec<u32> {
    seen.attempts
        .lock()
        .unwrap()
        .iter()
        .map(|&(ours, _)| ours)
        .collect()
}

async fn apalis_error_is_retried_with_the_queue_backoff(db: &TestDb) {
    let queue = db.queue().await;
    queue.enqueue(&Flaky { fail_attempts: 2 }).await.unwrap();
    let seen = Arc::new(Seen::default());
    let worker = RunningApalis::spawn(|until| {
        WorkerBuilder::new("flaky")
            .backend(ApalisBackend::<Flaky>::new(queue.clone()).retry_backoff(fast_retries()))
            .data(seen.clone())
            .build(flaky_job_error)
            .run_until(until)
    });
    wait_until("third attempt", 60, || async {
        seen.attempts.lock().unwrap().len() >= 3
    })
    .await;
    wait_until("queue empty", 60, || is_empty(&queue)).await;
    worker.stop().await;
    assert_eq!(
        *seen.attempts.lock().unwrap(),
        vec![(1, 1), (2, 2), (3, 3)],
        "the queue's attempt and apalis's agree"
    );
}

async fn exhausted_attempts_dead_letter_with_the_last_error(db: &TestDb) {
    let queue = db.queue().await;
    queue.enqueue(&Flaky { fail_attempts: 99 }).await.unwrap();
    let seen = Arc::new(Seen::default());
    let worker = RunningApalis::spawn(|until| {
        WorkerBuilder::new("flaky")
            .backend(ApalisBackend::<Flaky>::new(queue.clone()).retry_backoff(fast_retries()))
            .data(seen.clone())
            .build(flaky_boxed)
            .run_until(until)
    });
    wait_until("job dead", 60, || async { stats(&queue).await.dead == 1 }).await;
    worker.stop().await;
    assert_eq!(
        queue_attempts(&seen),
        vec![1, 2, 3],
        "MAX_ATTEMPTS = 3, no more"
    );
    let dead = queue.dead_jobs(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].name, "flaky");
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(dead[0].last_error.as_deref(), Some("boom on attempt 3"));
    let counts = stats(&queue).await;
    assert_eq!((counts.ready, counts.in_flight, counts.delayed), (0, 0, 0));
}

async fn abort_error_dead_letters_at_once(db: &TestDb) {
    let queue = db.queue().await;
    queue.enqueue(&Flaky { fail_attempts: 99 }).await.unwrap();
    let seen = Arc::new(Seen::default());
    let worker = RunningApalis::spawn(|until| {
        WorkerBuilder::new("flaky")
            .backend(ApalisBackend::<Flaky>::new(queue.clone()).retry_backoff(fast_retries()))
            .data(seen.clone())
            .build(flaky_abort)
            .run_until(until)
    });
    wait_until("job dead", 60, || async { stats(&queue).await.dead == 1 }).await;
    worker.stop().await;
    assert_eq!(queue_attempts(&seen), vec![1]);
    let dead = queue.dead_jobs(10).await.unwrap();
    assert_eq!(dead[0].last_error.as_deref(), Some("boom on attempt 1"));
}

async fn panicking_handler_is_a_failed_attempt(db: &TestDb) {
    let queue = db.queue().await;
    queue.enqueue(&Flaky { fail_attempts: 1 }).await.unwrap();
    let seen = Arc::new(Seen::default());
    let worker = RunningApalis::spawn(|until| {
        WorkerBuilder::new("flaky")
            .backend(ApalisBackend::<Flaky>::new(queue.clone()).retry_backoff(fast_retries()))
            .data(seen.clone())
            .build(flaky_panic)
            .run_until(until)
    });
    wait_until("second attempt", 60, || async {
        seen.attempts.lock().unwrap().len() >= 2
    })
    .await;
    wait_until("queue empty", 60, || is_empty(&queue)).await;
    worker.stop().await;
    assert_eq!(queue_attempts(&seen), vec![1, 2]);
}

async fn retry_after_error_waits_its_duration(db: &TestDb) {
    async fn busy_once(
        _job: Flaky,
        ctx: JobContext,
        seen: Data<Arc<Started>>,
    ) -> Result<(), BoxDynError> {
        seen.0.0.lock().unwrap().push(Instant::now());
        if ctx.attempt() == 1 {
            return Err(RetryAfterError::new("busy", Duration::from_secs(2)).into());
        }
        Ok(())
    }
    #[derive(Debug, Default)]
    struct Started(Mutex<Vec<Instant>>);

    let queue = db.queue().await;
    queue.enqueue(&Flaky { fail_attempts: 1 }).await.unwrap();
    let started = Arc::new(Started::default());
    let worker = RunningApalis::spawn(|until| {
        WorkerBuilder::new("busy")
            // The queue's own backoff would retry within 100 ms.
            .backend(ApalisBackend::<Flaky>::new(queue.clone()).retry_backoff(fast_retries()))
            .data(started.clone())
            .build(busy_once)
            .run_until(until)
    });
    wait_until("second attempt", 60, || async {
        started.0.lock().unwrap().len() >= 2
    })
    .await;
    wait_until("queue empty", 60, || is_empty(&queue)).await;
    worker.stop().await;
    let started = started.0.lock().unwrap().clone();
    let waited = started[1] - started[0];
    // A lower bound only: the retry must not come before the handler's 2 s (SQS rounds
    // visibility to whole seconds; the database clocks to milliseconds).
    assert!(
        waited >= Duration::from_millis(1900),
        "retried after {waited:?}, before the 2 s the handler asked for"
    );
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
    let seen = Arc::new(Seen::default());
    let worker = RunningApalis::spawn(|until| {
        WorkerBuilder::new("echo")
            .backend(ApalisBackend::<Echo>::new(queue.clone()))
            .data(seen.clone())
            .build(record_echo)
            .run_until(until)
    });
    wait_until("job dead", 60, || async { stats(&queue).await.dead == 1 }).await;
    worker.stop().await;
    assert!(seen.echoes.lock().unwrap().is_empty());
    let dead = queue.dead_jobs(1).await.unwrap();
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("does not deserialize"),
        "{dead:?}"
    );
}

/// Counts finished jobs; each waits for the worker's stop notice before finishing.
#[derive(Debug, Default)]
struct StopProbe {
    started: tokio::sync::Notify,
    finished: AtomicU32,
}

async fn finish_after_stop(
    job: Slow,
    ctx: JobContext,
    probe: Data<Arc<StopProbe>>,
) -> Result<(), JobError> {
    probe.started.notify_one();
    ctx.shutdown_requested().await;
    tokio::time::sleep(Duration::from_millis(job.millis)).await;
    probe.finished.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

async fn stop_lets_the_running_job_finish_and_releases_claimed_ones(db: &TestDb) {
    let queue = db.queue().await;
    let jobs: Vec<Slow> = (0..3).map(|_| Slow { millis: 300 }).collect();
    queue.enqueue_bulk(&jobs).await.unwrap();
    let probe = Arc::new(StopProbe::default());
    let worker = RunningApalis::spawn(|until| {
        WorkerBuilder::new("slow")
            // Claims all three, runs one: two wait in the backend, leased.
            .backend(ApalisBackend::<Slow>::new(queue.clone()).batch_size(3))
            .data(probe.clone())
            .concurrency(1)
            .build(finish_after_stop)
            .run_until(until)
    });
    probe.started.notified().await;
    worker.stop().await;
    assert_eq!(
        probe.finished.load(Ordering::SeqCst),
        1,
        "the running job finished before the worker returned, and no other started"
    );
    let counts = stats(&queue).await;
    assert_eq!(
        (counts.ready, counts.in_flight, counts.dead),
        (2, 0, 0),
        "the finished job is recorded, the two never started are back at once"
    );

    // Released, not failed: the next worker (this crate's own) gets them as attempt 1.
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
    assert_eq!(*attempts.lock().unwrap(), vec![1, 1]);
}

#[derive(Debug, Default)]
struct CancelProbe {
    started: tokio::sync::Notify,
    seen: Mutex<Vec<(bool, Option<CancelReason>)>>,
}

async fn wait_for_cancel(
    _job: Slow,
    ctx: JobContext,
    probe: Data<Arc<CancelProbe>>,
) -> Result<(), JobError> {
    probe.started.notify_one();
    ctx.shutdown_requested().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cancelled_early = ctx.is_cancelled();
    ctx.cancelled().await;
    probe
        .seen
        .lock()
        .unwrap()
        .push((cancelled_early, ctx.cancel_reason()));
    Err(JobError::retryable("stopped by the shutdown"))
}

async fn stop_cancels_a_running_handler_near_the_end_of_the_grace_and_releases_it(db: &TestDb) {
    let queue = db.queue().await;
    queue.enqueue(&Slow { millis: 0 }).await.unwrap();
    let probe = Arc::new(CancelProbe::default());
    let worker = RunningApalis::spawn(|until| {
        WorkerBuilder::new("cooperative")
            .backend(
                ApalisBackend::<Slow>::new(queue.clone()).shutdown_grace(Duration::from_secs(2)),
            )
            .data(probe.clone())
            .build(wait_for_cancel)
            .run_until(until)
    });
    probe.started.notified().await;
    worker.stop().await;
    assert_eq!(
        *probe.seen.lock().unwrap(),
        vec![(false, Some(CancelReason::Shutdown))],
        "not cancelled as the stop began, then cancelled for the shutdown"
    );
    let counts = stats(&queue).await;
    assert_eq!(
        (counts.ready, counts.in_flight, counts.dead),
        (1, 0, 0),
        "released, whatever the handler returned"
    );
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
    assert_eq!(
        *attempts.lock().unwrap(),
        vec![1],
        "the attempt was given back"
    );
}

async fn dropped_worker_gives_its_job_back(db: &TestDb) {
    async fn hang(_job: Slow, probe: Data<Arc<StopProbe>>) -> Result<(), JobError> {
        probe.started.notify_one();
        std::future::pending::<()>().await;
        Ok(())
    }
    let queue = db.queue().await;
    queue.enqueue(&Slow { millis: 0 }).await.unwrap();
    let probe = Arc::new(StopProbe::default());
    let worker = RunningApalis::spawn(|until| {
        WorkerBuilder::new("hang")
            .backend(ApalisBackend::<Slow>::new(queue.clone()))
            .data(probe.clone())
            .build(hang)
            .run_until(until)
    });
    probe.started.notified().await;
    assert_eq!(stats(&queue).await.in_flight, 1);
    // Cancelled, not stopped: the worker future is dropped mid-job (a lease is 30 s here).
    worker.handle.abort();
    let _ = worker.handle.await;
    // SQS gives it back once the worker's abandoned long poll (up to 20 s) has ended.
    wait_until("job released", 60, || async {
        let counts = stats(&queue).await;
        (counts.ready, counts.in_flight) == (1, 0)
    })
    .await;
}

async fn heartbeat_keeps_a_long_job_leased(db: &TestDb) {
    async fn long(job: Slow, ctx: JobContext, runs: Data<Arc<Seen>>) -> Result<(), JobError> {
        runs.attempts.lock().unwrap().push((ctx.attempt(), 0));
        ctx.report_progress(10).await?;
        tokio::time::sleep(Duration::from_millis(job.millis)).await;
        Ok(())
    }
    let queue = db.queue().await;
    // Runs for three leases; a second worker is waiting to take it if the lease lapses.
    queue.enqueue(&Slow { millis: 6000 }).await.unwrap();
    let runs = Arc::new(Seen::default());
    let spawn = |name: &'static str| {
        RunningApalis::spawn(|until| {
            WorkerBuilder::new(name)
                .backend(ApalisBackend::<Slow>::new(queue.clone()).lease(Duration::from_secs(2)))
                .data(runs.clone())
                .build(long)
                .run_until(until)
        })
    };
    let first = spawn("first");
    let second = spawn("second");
    wait_until("job done", 60, || is_empty(&queue)).await;
    first.stop().await;
    second.stop().await;
    assert_eq!(
        queue_attempts(&runs),
        vec![1],
        "ran once, never redelivered"
    );
}

async fn apalis_sink_enqueues_into_the_queue(db: &TestDb) {
    let queue = db.queue().await;
    let mut sink = ApalisBackend::<Echo>::new(queue.clone());
    let echo = |n: u32| Echo {
        n,
        text: format!("pushed {n}"),
    };
    sink.push(echo(0)).await.unwrap();
    sink.push_bulk((1..=20).map(echo).collect()).await.unwrap();
    sink.push_task(TaskBuilder::new(echo(21)).run_in_seconds(3600).build())
        .await
        .unwrap();
    let refused = sink
        .push_task(TaskBuilder::new(echo(22)).idempotency_key("once").build())
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            TaskSinkError::PushError(QueueError::Unsupported { .. })
        ),
        "{refused:?}"
    );
    let counts = stats(&queue).await;
    assert_eq!((counts.ready, counts.delayed), (21, 1));
    let statistics = sink.fetch_by_queue().await.unwrap();
    let ready = statistics
        .iter()
        .find(|stat| stat.title == "Ready")
        .unwrap();
    assert_eq!(ready.value, "21");

    // Any worker of the queue runs them: this crate's own here.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let worker = RunningWorker::spawn(Worker::new(queue.clone()).handle({
        let seen = seen.clone();
        move |job: Echo, _ctx: JobContext| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(job.n);
                Ok(())
            }
        }
    }));
    wait_until("21 jobs handled", 60, || async {
        seen.lock().unwrap().len() >= 21
    })
    .await;
    worker.stop().await;
    let mut numbers = seen.lock().unwrap().clone();
    numbers.sort_unstable();
    assert_eq!(numbers, (0..=20).collect::<Vec<_>>());
    assert_eq!(
        stats(&queue).await.delayed,
        1,
        "the delayed one still waits"
    );
}

macro_rules! apalis_suite {
    ($backend:ident) => {
        mod $backend {
            apalis_suite!(@cases $backend:
                apalis_delivers_every_job_once_with_its_payload,
                apalis_error_is_retried_with_the_queue_backoff,
                exhausted_attempts_dead_letter_with_the_last_error,
                abort_error_dead_letters_at_once,
                panicking_handler_is_a_failed_attempt,
                retry_after_error_waits_its_duration,
                undecodable_payload_is_dead_lettered,
                stop_lets_the_running_job_finish_and_releases_claimed_ones,
                dropped_worker_gives_its_job_back,
                stop_cancels_a_running_handler_near_the_end_of_the_grace_and_releases_it,
                heartbeat_keeps_a_long_job_leased,
                apalis_sink_enqueues_into_the_queue,
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

apalis_suite!(postgres);
apalis_suite!(sqlite);
apalis_suite!(redis);
apalis_suite!(sqs);
