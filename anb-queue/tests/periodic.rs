//! Periodic jobs on every backend with unique keys (PostgreSQL, SQLite, Redis, Redis Cluster):
//! several workers on one queue enqueue each tick once, a restart replays no missed tick (the
//! latest one only when asked), and SQS refuses periodic jobs before claiming anything.

mod support;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anb_queue::{CatchUp, Job, JobContext, PeriodicJob, Queue, QueueError, Schedule, Tick, Worker};
use serde::{Deserialize, Serialize};
use support::{RunningWorker, TestDb, wait_until};

/// A periodic job that carries its tick, so runs can be counted per tick.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Beat {
    tick_ms: u64,
}

impl Job for Beat {
    const NAME: &'static str = "beat";
}

const SECOND_MS: u64 = 1000;

/// Runs of each tick, by tick (Unix ms).
#[derive(Clone, Default)]
struct Runs(Arc<Mutex<BTreeMap<u64, u32>>>);

impl Runs {
    fn snapshot(&self) -> BTreeMap<u64, u32> {
        self.0.lock().unwrap().clone()
    }

    fn ticks_after(&self, after_ms: u64) -> Vec<u64> {
        self.snapshot()
            .into_keys()
            .filter(|tick| *tick > after_ms)
            .collect()
    }
}

fn every_second() -> PeriodicJob {
    PeriodicJob::new(Schedule::every(Duration::from_secs(1)), |tick: Tick| Beat {
        tick_ms: tick.unix_ms(),
    })
}

/// A worker that records each `Beat` it runs, with or without the periodic job.
fn worker(queue: Queue, runs: &Runs, name: &str, periodic: Option<PeriodicJob>) -> Worker {
    let runs = runs.clone();
    let worker = Worker::new(queue)
        .name(name)
        .concurrency(2)
        .shutdown_grace(Duration::from_secs(5))
        .handle(move |beat: Beat, _ctx: JobContext| {
            let runs = runs.clone();
            async move {
                *runs.0.lock().unwrap().entry(beat.tick_ms).or_default() += 1;
                Ok(())
            }
        });
    match periodic {
        Some(periodic) => worker.periodic(periodic),
        None => worker,
    }
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// Sleeps until the wall clock is `offset_ms` into a second, so a moment the test takes
/// lies far from the ticks on either side.
async fn sleep_to_offset_in_second(offset_ms: u64) {
    let into = now_ms() % SECOND_MS;
    let wait = (offset_ms + SECOND_MS - into) % SECOND_MS;
    tokio::time::sleep(Duration::from_millis(wait)).await;
}

/// Runs what the stopped periodic workers left queued, with a plain worker.
async fn drain(db: &TestDb, runs: &Runs) {
    let queue = db.queue().await;
    let drainer = RunningWorker::spawn(worker(queue.clone(), runs, "drainer", None));
    wait_until("the queue is drained", 30, || async {
        let stats = queue.stats().await.unwrap();
        (stats.ready, stats.in_flight, stats.delayed) == (0, 0, 0)
    })
    .await;
    drainer.stop().await;
}

/// Every tick in `runs` ran once, and the ticks are consecutive seconds.
fn assert_each_tick_once_without_gaps(runs: &BTreeMap<u64, u32>) {
    let doubles: Vec<_> = runs.iter().filter(|(_, count)| **count != 1).collect();
    assert!(
        doubles.is_empty(),
        "ticks that ran more than once: {doubles:?}"
    );
    let ticks: Vec<u64> = runs.keys().copied().collect();
    assert!(
        ticks.iter().all(|tick| tick % SECOND_MS == 0),
        "ticks are whole seconds since the epoch: {ticks:?}"
    );
    let gaps: Vec<_> = ticks
        .windows(2)
        .filter(|pair| pair[1] - pair[0] != SECOND_MS)
        .collect();
    assert!(
        gaps.is_empty(),
        "ticks missing between: {gaps:?} (all: {ticks:?})"
    );
}

async fn three_workers_enqueue_each_tick_once(db: &TestDb) {
    assert!(db.queue().await.supports_unique_jobs());
    let runs = Runs::default();
    let mut workers = Vec::new();
    for name in ["first", "second", "third"] {
        let queue = db.queue().await;
        workers.push(RunningWorker::spawn(worker(
            queue,
            &runs,
            name,
            Some(every_second()),
        )));
    }
    wait_until("six ticks ran", 30, || async { runs.snapshot().len() >= 6 }).await;
    for worker in workers {
        worker.stop().await;
    }
    drain(db, &runs).await;
    let runs = runs.snapshot();
    assert!(runs.len() >= 6, "{runs:?}");
    assert_each_tick_once_without_gaps(&runs);
}

/// Runs one worker with the periodic job until two ticks ran, stops it, waits while three
/// ticks pass, and starts another with `catch_up`, half a second into a second. Returns when
/// the stopped worker stopped, when the other started, and the runs.
async fn restart_after_three_missed_ticks(db: &TestDb, catch_up: CatchUp) -> (u64, u64, Runs) {
    let runs = Runs::default();
    let before = RunningWorker::spawn(worker(
        db.queue().await,
        &runs,
        "before",
        Some(every_second()),
    ));
    wait_until("two ticks ran", 30, || async { runs.snapshot().len() >= 2 }).await;
    before.stop().await;
    let stopped_ms = now_ms();
    tokio::time::sleep(Duration::from_millis(3 * SECOND_MS)).await;
    sleep_to_offset_in_second(500).await;
    let restarted_ms = now_ms();
    let after = RunningWorker::spawn(worker(
        db.queue().await,
        &runs,
        "after",
        Some(every_second().catch_up(catch_up)),
    ));
    wait_until("two ticks after the restart ran", 30, || async {
        runs.ticks_after(restarted_ms).len() >= 2
    })
    .await;
    after.stop().await;
    drain(db, &runs).await;
    (stopped_ms, restarted_ms, runs)
}

async fn a_restart_does_not_replay_missed_ticks(db: &TestDb) {
    let (stopped_ms, restarted_ms, runs) =
        restart_after_three_missed_ticks(db, CatchUp::None).await;
    let after_stop = runs.ticks_after(stopped_ms);
    assert!(
        after_stop.iter().all(|tick| *tick > restarted_ms),
        "ticks missed while no worker ran were replayed: {after_stop:?} (stopped at {stopped_ms}, restarted at {restarted_ms})"
    );
    // The first tick is the next one to come.
    assert_eq!(
        after_stop.first(),
        Some(&(restarted_ms / SECOND_MS * SECOND_MS + SECOND_MS))
    );
    let runs = runs.snapshot();
    assert!(runs.values().all(|count| *count == 1), "{runs:?}");
}

async fn catch_up_latest_runs_only_the_latest_missed_tick(db: &TestDb) {
    let (stopped_ms, restarted_ms, runs) =
        restart_after_three_missed_ticks(db, CatchUp::Latest).await;
    let after_stop = runs.ticks_after(stopped_ms);
    let latest_missed = restarted_ms / SECOND_MS * SECOND_MS;
    assert!(
        latest_missed - stopped_ms > 2 * SECOND_MS,
        "three ticks were missed"
    );
    assert_eq!(
        after_stop.first(),
        Some(&latest_missed),
        "only the latest missed tick is caught up (stopped at {stopped_ms}, restarted at {restarted_ms}): {after_stop:?}"
    );
    assert_each_tick_once_without_gaps(
        &runs
            .snapshot()
            .into_iter()
            .filter(|(tick, _)| *tick >= latest_missed)
            .collect(),
    );

    // Restarting right after a tick ran: catching up finds that tick's key held, and the
    // tick does not run twice.
    sleep_to_offset_in_second(200).await;
    let just_ran = now_ms() / SECOND_MS * SECOND_MS;
    let again = RunningWorker::spawn(worker(
        db.queue().await,
        &runs,
        "again",
        Some(every_second().catch_up(CatchUp::Latest)),
    ));
    wait_until("the tick before the restart ran", 30, || async {
        runs.snapshot().contains_key(&just_ran)
    })
    .await;
    again.stop().await;
    let second = RunningWorker::spawn(worker(
        db.queue().await,
        &runs,
        "second",
        Some(every_second().catch_up(CatchUp::Latest)),
    ));
    wait_until("a tick after the second restart ran", 30, || async {
        !runs.ticks_after(just_ran + SECOND_MS).is_empty()
    })
    .await;
    second.stop().await;
    drain(db, &runs).await;
    let runs = runs.snapshot();
    assert_eq!(runs.get(&just_ran), Some(&1), "{runs:?}");
    assert!(runs.values().all(|count| *count == 1), "{runs:?}");
}

macro_rules! periodic_suite {
    ($($backend:ident),* $(,)?) => {
        $(
            mod $backend {
                periodic_suite!(@cases $backend:
                    three_workers_enqueue_each_tick_once,
                    a_restart_does_not_replay_missed_ticks,
                    catch_up_latest_runs_only_the_latest_missed_tick,
                );
            }
        )*
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

periodic_suite!(postgres, sqlite, redis, redis_cluster);

/// The database away for three ticks: the enqueues of those ticks fail (and are retried until
/// the next tick comes due), and once it is back the scheduler goes on with every tick, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_ticks_go_on_after_an_outage() {
    let db = TestDb::postgres().await;
    let mut gated_url = url::Url::parse(&db.url).unwrap();
    let target = format!(
        "{}:{}",
        gated_url.host_str().unwrap(),
        gated_url.port().unwrap()
    );
    let gate = support::TcpGate::start(&target).await;
    gated_url.set_port(Some(gate.port)).unwrap();
    let gated = Queue::connect(gated_url.as_str()).await.unwrap();
    let runs = Runs::default();
    let running = RunningWorker::spawn(worker(gated, &runs, "gated", Some(every_second())));
    wait_until("two ticks ran", 30, || async { runs.snapshot().len() >= 2 }).await;

    sleep_to_offset_in_second(500).await;
    gate.close();
    tokio::time::sleep(Duration::from_secs(3)).await;
    gate.open();
    let reopened_ms = now_ms();
    wait_until("three ticks after the outage ran", 60, || async {
        runs.ticks_after(reopened_ms).len() >= 3
    })
    .await;
    running.stop().await;
    drain(&db, &runs).await;

    let after_outage: BTreeMap<u64, u32> = runs
        .snapshot()
        .into_iter()
        .filter(|(tick, _)| *tick > reopened_ms)
        .collect();
    assert_each_tick_once_without_gaps(&after_outage);
    let runs = runs.snapshot();
    assert!(runs.values().all(|count| *count == 1), "{runs:?}");
    db.cleanup().await;
}

/// SQS cannot deduplicate a tick: a worker with a periodic job refuses to start, before it
/// sends a single request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_refuses_periodic_jobs_before_claiming() {
    let db = TestDb::sqs().await;
    let queue = db.queue().await;
    assert!(!queue.supports_unique_jobs());
    let runs = Runs::default();
    let sent = queue.requests_sent();
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        worker(queue.clone(), &runs, "sqs", Some(every_second())).run_until(std::future::pending()),
    )
    .await
    .expect("the worker refuses at once instead of running");
    assert!(
        matches!(
            outcome,
            Err(QueueError::UnsupportedByBackend { backend: "sqs", .. })
        ),
        "{outcome:?}"
    );
    assert_eq!(queue.requests_sent(), sent);
    db.cleanup().await;
}
