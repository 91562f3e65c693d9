//! Pushes no-op jobs through one backend with `anb-queue` and, in the same run, with plain
//! apalis (`apalis-postgres` / `apalis-sqlite` as published, with their defaults and tuned as
//! in their examples), and prints throughput, enqueue→start latency and the ratios.
//!
//! ```sh
//! cargo run --release -p anb-queue --example bench -- --backend postgres --jobs 20000
//! cargo run --release -p anb-queue --example bench -- --backend sqlite --jobs 20000
//! cargo run --release -p anb-queue --example bench -- --backend redis --jobs 100000
//! cargo run --release -p anb-queue --example bench -- --backend sqs --jobs 1000 --workers 4
//! cargo run --release -p anb-queue --example bench -- --backend postgres --adapter --skip-apalis
//! ```
//!
//! `--unique` measures unique jobs instead (PostgreSQL, SQLite or Redis): `--jobs`
//! enqueues, one by one from `--concurrency` tasks at once, of which 10 % repeat the key of
//! another (in shuffled order, so a repeat often races its original); once with keys held
//! while unfinished (enqueued before a worker runs), once with keys held for an hour while
//! a worker drains the queue alongside. It prints enqueues per second, jobs processed per
//! second, the duplicates the queue reported and the duplicates that got through (jobs run
//! for a key beyond its first; the aim is 0).
//!
//! ```sh
//! cargo run --release -p anb-queue --example bench -- --backend postgres --unique --jobs 100000
//! ```
//!
//! `--adapter` adds a run of an apalis worker over this crate's backend
//! (`anb_queue::apalis::ApalisBackend`, jobs pushed through its apalis sink), to compare
//! apalis's worker runtime with this crate's `Worker` on the same storage.
//!
//! Redis runs anb-queue only (under a fresh key prefix). SQS is measured in requests, not
//! speed (an SQS-compatible test server is no speed reference): a burst of `--jobs` is
//! bulk-enqueued and drained by `--workers` workers, each with its own connection, and the
//! SQS API requests per job are counted (the floor is 0.3: one batched send, receive and
//! delete per 10 jobs).
//!
//! Every system gets a fresh database. Phases: enqueue one by one; bulk enqueue (chunks of
//! 1,000); process the whole backlog with `--concurrency` handlers (stopped at
//! `--time-limit` for slow systems, the rate counts what was done by then); then
//! enqueue→start latency with an idle worker, jobs sent one at a time 2 ms apart.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use sqlx::{Connection, PgConnection};

#[path = "support/sqs.rs"]
mod sqs_support;
use sqs_support::{create_sqs_queue, sqs_client};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    Postgres,
    Sqlite,
    Redis,
    Sqs,
}

#[derive(Debug, Parser)]
struct Args {
    /// Which backend to measure.
    #[arg(long, value_enum, default_value = "postgres")]
    backend: BackendArg,
    /// Jobs in the backlog (bulk-enqueued, then processed).
    #[arg(long, default_value_t = 20_000)]
    jobs: u64,
    /// Jobs enqueued one by one.
    #[arg(long, default_value_t = 2_000)]
    one_by_one: u64,
    /// Jobs in the latency phase.
    #[arg(long, default_value_t = 500)]
    latency_jobs: u64,
    /// Jobs in the latency phase of apalis with its defaults (each may wait ~30 s).
    #[arg(long, default_value_t = 20)]
    apalis_default_latency_jobs: u64,
    /// Handlers running at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Longest a processing or latency phase may run.
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    /// Server for the PostgreSQL runs (a fresh database is created on it per system).
    #[arg(
        long,
        env = "ANB_TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    postgres_url: String,
    /// Measure only anb-queue (and the adapter, with `--adapter`).
    #[arg(long)]
    skip_apalis: bool,
    /// Also run an apalis worker over anb-queue's backend (PostgreSQL, SQLite or Redis).
    #[arg(long)]
    adapter: bool,
    /// Server for the Redis run (a fresh key prefix is used).
    #[arg(
        long,
        env = "ANB_TEST_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis_url: String,
    /// SQS-compatible endpoint for the SQS run (static test credentials, us-east-1).
    #[arg(
        long,
        env = "ANB_TEST_AWS_ENDPOINT",
        default_value = "http://127.0.0.1:4566"
    )]
    aws_endpoint: String,
    /// Workers draining the SQS burst, each with `--concurrency` handlers.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Measure unique jobs (10 % duplicates) instead of the no-op throughput.
    #[arg(long)]
    unique: bool,
}

/// A job of the unique benchmark: its key's number.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Keyed {
    key: u64,
}

impl anb_queue::Job for Keyed {
    const NAME: &'static str = "keyed";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Noop {
    /// Microseconds since the Unix epoch when the job was enqueued.
    sent_at_us: u64,
}

impl anb_queue::Job for Noop {
    const NAME: &'static str = "noop";
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_micros() as u64)
        .unwrap_or(0)
}

/// What the handlers share: how many ran, and their enqueue→start latencies.
#[derive(Debug)]
struct Tally {
    handled: AtomicU64,
    latencies_us: Mutex<Histogram<u64>>,
}

impl Tally {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            handled: AtomicU64::new(0),
            latencies_us: Mutex::new(Histogram::new(3).expect("histogram")),
        })
    }

    fn record(&self, job: &Noop) {
        let latency = now_us().saturating_sub(job.sent_at_us).max(1);
        let _ = self.latencies_us.lock().unwrap().record(latency);
        self.handled.fetch_add(1, Ordering::SeqCst);
    }

    fn reset(&self) {
        self.handled.store(0, Ordering::SeqCst);
        self.latencies_us.lock().unwrap().reset();
    }

    async fn wait_for(&self, count: u64, limit: Duration) -> (u64, Duration) {
        let started = Instant::now();
        while self.handled.load(Ordering::SeqCst) < count && started.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (self.handled.load(Ordering::SeqCst), started.elapsed())
    }

    fn percentiles(&self) -> Option<(Duration, Duration)> {
        let histogram = self.latencies_us.lock().unwrap();
        (!histogram.is_empty()).then(|| {
            (
                Duration::from_micros(histogram.value_at_quantile(0.5)),
                Duration::from_micros(histogram.value_at_quantile(0.99)),
            )
        })
    }
}

#[derive(Debug, Default, Clone)]
struct Figures {
    enqueue_one_per_s: f64,
    enqueue_bulk_per_s: f64,
    processed_per_s: f64,
    processed_note: String,
    latency: Option<(Duration, Duration)>,
    latency_note: String,
}

fn rate(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

fn chunks(count: u64) -> Vec<Vec<Noop>> {
    let jobs: Vec<Noop> = (0..count)
        .map(|_| Noop {
            sent_at_us: now_us(),
        })
        .collect();
    jobs.chunks(1000).map(<[Noop]>::to_vec).collect()
}

/// A fresh database for one system: a PostgreSQL database, a SQLite file or a Redis key
/// prefix.
struct Scratch {
    url: String,
    admin: Option<(String, String)>,
    redis_prefix: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl Scratch {
    async fn new(args: &Args) -> anyhow::Result<Self> {
        match args.backend {
            BackendArg::Postgres => {
                let name = format!("anb_queue_bench_{}", uuid::Uuid::new_v4().simple());
                let mut admin = PgConnection::connect(&args.postgres_url)
                    .await
                    .with_context(|| {
                        format!("PostgreSQL not reachable at {}", args.postgres_url)
                    })?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut admin)
                    .await?;
                let mut url = url::Url::parse(&args.postgres_url)?;
                url.set_path(&name);
                Ok(Self {
                    url: url.to_string(),
                    admin: Some((args.postgres_url.clone(), name)),
                    redis_prefix: None,
                    _dir: None,
                })
            }
            BackendArg::Sqlite => {
                let dir = tempfile::tempdir()?;
                let url = format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("bench.db").display()
                );
                Ok(Self {
                    url,
                    admin: None,
                    redis_prefix: None,
                    _dir: Some(dir),
                })
            }
            BackendArg::Redis => {
                let name = format!("bench-{}", uuid::Uuid::new_v4().simple());
                let separator = if args.redis_url.contains('?') {
                    '&'
                } else {
                    '?'
                };
                Ok(Self {
                    url: format!("{}{separator}queue={name}", args.redis_url),
                    admin: None,
                    redis_prefix: Some((args.redis_url.clone(), format!("anb_queue:{{{name}}}:*"))),
                    _dir: None,
                })
            }
            BackendArg::Sqs => anyhow::bail!("the SQS run creates its own queues"),
        }
    }

    async fn drop_database(self) {
        if let Some((server, pattern)) = &self.redis_prefix {
            let _ = delete_redis_keys(server, pattern).await;
        }
        if let Some((admin_url, name)) = &self.admin
            && let Ok(mut admin) = PgConnection::connect(admin_url).await
        {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await;
        }
    }
}

async fn bench_anb_queue(args: &Args) -> anyhow::Result<Figures> {
    use anb_queue::{JobContext, Queue, Worker};

    let scratch = Scratch::new(args).await?;
    let queue = Queue::connect(&scratch.url).await?;
    let mut figures = Figures::default();

    let started = Instant::now();
    for _ in 0..args.one_by_one {
        queue
            .enqueue(&Noop {
                sent_at_us: now_us(),
            })
            .await?;
    }
    figures.enqueue_one_per_s = rate(args.one_by_one, started.elapsed());

    let batches = chunks(args.jobs);
    let started = Instant::now();
    for batch in &batches {
        queue.enqueue_bulk(batch).await?;
    }
    figures.enqueue_bulk_per_s = rate(args.jobs, started.elapsed());

    let tally = Tally::new();
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = Worker::new(queue.clone())
        .concurrency(args.concurrency)
        .handle({
            let tally = tally.clone();
            move |job: Noop, _ctx: JobContext| {
                let tally = tally.clone();
                async move {
                    tally.record(&job);
                    Ok(())
                }
            }
        });
    let running = tokio::spawn(worker.run_until(stop.clone().cancelled_owned()));
    let backlog = args.jobs + args.one_by_one;
    let (done, elapsed) = tally
        .wait_for(backlog, Duration::from_secs(args.time_limit))
        .await;
    figures.processed_per_s = rate(done, elapsed);
    figures.processed_note = format!("{done}/{backlog} in {:.1} s", elapsed.as_secs_f64());

    figures.latency = measure_latency(args.latency_jobs, args.time_limit, &tally, |job| {
        let queue = queue.clone();
        async move {
            queue.enqueue(&job).await?;
            Ok(())
        }
    })
    .await?;
    figures.latency_note = format!("{} jobs", args.latency_jobs);
    stop.cancel();
    running.await??;
    let stats = queue.stats().await?;
    anyhow::ensure!(
        stats.ready + stats.in_flight + stats.dead == 0,
        "jobs left over: {stats:?}"
    );
    drop(queue);
    scratch.drop_database().await;
    Ok(figures)
}

/// What one scope of the unique benchmark measured.
struct UniqueFigures {
    enqueue_per_s: f64,
    processed_per_s: f64,
    reported_duplicates: u64,
    got_through: u64,
}

/// The keys of `jobs` enqueues, 10 % of them repeats of another, in shuffled order.
fn keys_with_duplicates(jobs: u64) -> Vec<u64> {
    use rand::seq::SliceRandom;
    let distinct = jobs - jobs / 10;
    let mut keys: Vec<u64> = (0..distinct).chain(0..jobs / 10).collect();
    keys.shuffle(&mut rand::rng());
    keys
}

async fn bench_unique(args: &Args, for_period: bool) -> anyhow::Result<UniqueFigures> {
    use anb_queue::{JobContext, Queue, Unique, Worker};
    use std::collections::HashMap;

    let scratch = Scratch::new(args).await?;
    let queue = Queue::connect(&scratch.url).await?;
    let runs: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    let worker = Worker::new(queue.clone())
        .concurrency(args.concurrency)
        .handle({
            let runs = runs.clone();
            move |job: Keyed, _ctx: JobContext| {
                let runs = runs.clone();
                async move {
                    *runs.lock().unwrap().entry(job.key).or_default() += 1;
                    Ok(())
                }
            }
        });
    let stop = tokio_util::sync::CancellationToken::new();
    // Keys held for a period are enqueued while a worker drains the queue; keys held while
    // unfinished before it starts (a key whose job already finished is free again, so a
    // repeat then would rightly be a new job).
    let mut worker = Some(worker);
    let mut running = None;
    if for_period && let Some(worker) = worker.take() {
        running = Some(tokio::spawn(
            worker.run_until(stop.clone().cancelled_owned()),
        ));
    }
    let keys = Arc::new(keys_with_duplicates(args.jobs));
    let next = Arc::new(AtomicU64::new(0));
    let duplicates = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (queue, keys, next, duplicates) = (
                queue.clone(),
                keys.clone(),
                next.clone(),
                duplicates.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(&key) = keys.get(index) else {
                        return Ok::<_, anb_queue::QueueError>(());
                    };
                    let unique = if for_period {
                        Unique::key(format!("k{key}")).for_period(Duration::from_secs(3600))
                    } else {
                        Unique::key(format!("k{key}"))
                    };
                    if queue
                        .enqueue_unique(&Keyed { key }, unique)
                        .await?
                        .duplicate
                    {
                        duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let enqueue_per_s = rate(args.jobs, started.elapsed());
    if let Some(worker) = worker.take() {
        running = Some(tokio::spawn(
            worker.run_until(stop.clone().cancelled_owned()),
        ));
    }
    let distinct = args.jobs - args.jobs / 10;
    let deadline = Instant::now() + Duration::from_secs(args.time_limit.max(600));
    loop {
        let stats = queue.stats().await?;
        if stats.ready + stats.in_flight + stats.delayed == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Processing ran from the first enqueue (period) or from the end of the enqueues.
    let processed_per_s = rate(
        runs.lock().unwrap().values().sum(),
        if for_period {
            started.elapsed()
        } else {
            started
                .elapsed()
                .saturating_sub(Duration::from_secs_f64(args.jobs as f64 / enqueue_per_s))
        },
    );
    stop.cancel();
    if let Some(running) = running {
        running.await??;
    }
    let (keys_run, got_through) = {
        let runs = runs.lock().unwrap();
        (
            runs.len() as u64,
            runs.values().map(|count| count - 1).sum(),
        )
    };
    anyhow::ensure!(keys_run == distinct, "{keys_run} of {distinct} keys ran");
    drop(queue);
    scratch.drop_database().await;
    Ok(UniqueFigures {
        enqueue_per_s,
        processed_per_s,
        reported_duplicates: duplicates.load(Ordering::Relaxed),
        got_through,
    })
}

async fn run_unique_bench(args: &Args, backend: &str) -> anyhow::Result<()> {
    println!(
        "backend {backend}: {} unique enqueues ({} repeats of another key), {} at once",
        args.jobs,
        args.jobs / 10,
        args.concurrency
    );
    println!(
        "{:<34} {:>11} {:>11} {:>11} {:>13}",
        "scope", "enqueue/s", "processed/s", "duplicates", "got through"
    );
    for for_period in [false, true] {
        let figures = bench_unique(args, for_period).await?;
        println!(
            "{:<34} {:>11.0} {:>11.0} {:>11} {:>13}",
            if for_period {
                "for a period (worker alongside)"
            } else {
                "while unfinished (then drained)"
            },
            figures.enqueue_per_s,
            figures.processed_per_s,
            figures.reported_duplicates,
            figures.got_through
        );
    }
    Ok(())
}

async fn delete_redis_keys(server: &str, pattern: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(server)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            let _: () = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut conn)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// A burst of `--jobs` bulk-enqueued, drained by `--workers` workers: SQS requests per job.
async fn bench_sqs_requests(args: &Args) -> anyhow::Result<()> {
    use anb_queue::{JobContext, Queue, Worker};

    let client = sqs_client(&args.aws_endpoint);
    let (queue_url, dead_letters_url) = create_sqs_queue(&client, "anb-bench").await?;
    let producer = Queue::from_sqs_client(client.clone(), &queue_url).await?;
    let setup_requests = producer.requests_sent().unwrap_or(0);
    let jobs: Vec<Noop> = (0..args.jobs)
        .map(|_| Noop {
            sent_at_us: now_us(),
        })
        .collect();
    let started = Instant::now();
    for batch in jobs.chunks(1000) {
        producer.enqueue_bulk(batch).await?;
    }
    let enqueue_elapsed = started.elapsed();
    let sent_requests = producer.requests_sent().unwrap_or(0) - setup_requests;

    let tally = Tally::new();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut queues = Vec::new();
    let mut running = Vec::new();
    for index in 0..args.workers {
        let queue = Queue::from_sqs_client(client.clone(), &queue_url).await?;
        let baseline = queue.requests_sent().unwrap_or(0);
        let worker = Worker::new(queue.clone())
            .name(format!("bench-{index}"))
            .concurrency(args.concurrency)
            .handle({
                let tally = tally.clone();
                move |job: Noop, _ctx: JobContext| {
                    let tally = tally.clone();
                    async move {
                        tally.record(&job);
                        Ok(())
                    }
                }
            });
        running.push(tokio::spawn(
            worker.run_until(stop.clone().cancelled_owned()),
        ));
        queues.push((queue, baseline));
    }
    let (done, elapsed) = tally
        .wait_for(args.jobs, Duration::from_secs(args.time_limit))
        .await;
    // Let the last batched deletes go out before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let worker_requests: u64 = queues
        .iter()
        .map(|(queue, baseline)| queue.requests_sent().unwrap_or(0) - baseline)
        .sum();
    stop.cancel();
    for worker in running {
        worker.await??;
    }
    let stats = producer.stats().await?;
    let total = sent_requests + worker_requests;
    println!(
        "SQS burst: {done}/{} jobs drained by {} workers × {} handlers in {:.1} s (bulk enqueue {:.1} s)",
        args.jobs,
        args.workers,
        args.concurrency,
        elapsed.as_secs_f64(),
        enqueue_elapsed.as_secs_f64()
    );
    println!(
        "SQS API requests: {sent_requests} to enqueue + {worker_requests} by the workers (receive, delete, visibility, statistics) = {total}, {:.3} per job (floor 0.3)",
        total as f64 / args.jobs.max(1) as f64
    );
    let mut by_operation = producer.requests_by_operation().unwrap_or_default();
    for (queue, _) in &queues {
        for (operation, count) in queue.requests_by_operation().unwrap_or_default() {
            *by_operation.entry(operation).or_default() += count;
        }
    }
    let breakdown: Vec<String> = by_operation
        .iter()
        .map(|(operation, count)| format!("{operation} {count}"))
        .collect();
    println!("by operation (setup included): {}", breakdown.join(", "));
    println!("left over: {stats:?}");
    for url in [&queue_url, &dead_letters_url] {
        let _ = client.delete_queue().queue_url(url).send().await;
    }
    if done > args.jobs {
        // At-least-once: a message whose visibility ran out on a slow server comes again.
        println!(
            "{} handled twice (at-least-once redelivery)",
            done - args.jobs
        );
    }
    anyhow::ensure!(done >= args.jobs, "not every job was handled in time");
    Ok(())
}

/// Sends `count` jobs one at a time, 2 ms apart, to an idle worker and returns the p50/p99 of
/// enqueue→start.
async fn measure_latency<F, Fut>(
    count: u64,
    time_limit: u64,
    tally: &Tally,
    mut send: F,
) -> anyhow::Result<Option<(Duration, Duration)>>
where
    F: FnMut(Noop) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    // Let the worker go idle first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    tally.reset();
    for _ in 0..count {
        send(Noop {
            sent_at_us: now_us(),
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tally.wait_for(count, Duration::from_secs(time_limit)).await;
    Ok(tally.percentiles())
}

/// The apalis runs, one macro for both backends: their storage types differ, not the steps.
macro_rules! bench_apalis {
    ($args:expr, $tally:expr, $make_storage:expr, $build_worker:expr, $latency_jobs:expr) => {{
        use apalis::prelude::*;
        let args: &Args = $args;
        let tally: Arc<Tally> = $tally;
        let mut figures = Figures::default();
        let mut storage = $make_storage;

        let started = Instant::now();
        for _ in 0..args.one_by_one {
            storage
                .push(Noop {
                    sent_at_us: now_us(),
                })
                .await
                .map_err(|error| anyhow::anyhow!("apalis push: {error}"))?;
        }
        figures.enqueue_one_per_s = rate(args.one_by_one, started.elapsed());

        let batches = chunks(args.jobs);
        let started = Instant::now();
        for batch in batches {
            storage
                .push_bulk(batch)
                .await
                .map_err(|error| anyhow::anyhow!("apalis push_bulk: {error}"))?;
        }
        figures.enqueue_bulk_per_s = rate(args.jobs, started.elapsed());

        let stop = Arc::new(tokio::sync::Notify::new());
        let worker = $build_worker(storage.clone(), tally.clone());
        let running = tokio::spawn({
            let stop = stop.clone();
            worker.run_until(async move {
                stop.notified().await;
                Ok::<(), WorkerError>(())
            })
        });
        let backlog = args.jobs + args.one_by_one;
        let (done, elapsed) = tally
            .wait_for(backlog, Duration::from_secs(args.time_limit))
            .await;
        figures.processed_per_s = rate(done, elapsed);
        figures.processed_note = format!("{done}/{backlog} in {:.1} s", elapsed.as_secs_f64());

        if done == backlog {
            let latency_jobs: u64 = $latency_jobs;
            figures.latency = measure_latency(latency_jobs, args.time_limit, &tally, |job| {
                let mut storage = storage.clone();
                async move {
                    storage
                        .push(job)
                        .await
                        .map_err(|error| anyhow::anyhow!("apalis push: {error}"))
                }
            })
            .await?;
            let handled = tally.handled.load(Ordering::SeqCst);
            figures.latency_note = format!("{handled}/{latency_jobs} jobs started");
        } else {
            figures.latency_note = "skipped: backlog not drained in time".to_owned();
        }
        stop.notify_one();
        let _ = tokio::time::timeout(Duration::from_secs(10), running).await;
        Ok::<Figures, anyhow::Error>(figures)
    }};
}

async fn apalis_handler(
    job: Noop,
    tally: apalis::prelude::Data<Arc<Tally>>,
) -> Result<(), apalis::prelude::BoxDynError> {
    tally.record(&job);
    Ok(())
}

async fn bench_apalis_postgres(args: &Args, tuned: bool) -> anyhow::Result<Figures> {
    use apalis_postgres::{Config, PostgresStorage};

    let scratch = Scratch::new(args).await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(10)
        .connect(&scratch.url)
        .await?;
    PostgresStorage::setup(&pool).await?;
    let tally = Tally::new();
    let concurrency = args.concurrency;
    let figures = if tuned {
        // As in apalis-postgres's `basic` example: bigger batches, 1 s heartbeat, LISTEN/NOTIFY.
        let config = Config::default()
            .queue("bench")
            .batch_size(100)
            .lock_tasks(false)
            .heartbeat_interval(Duration::from_secs(1))
            .missed_heartbeats(10);
        bench_apalis!(
            args,
            tally,
            PostgresStorage::<Noop>::new(&pool).with_config(config.clone()),
            |_storage: PostgresStorage<Noop>, tally: Arc<Tally>| {
                WorkerBuilder::new("apalis-tuned")
                    .backend(
                        PostgresStorage::<Noop>::new(&pool)
                            .with_config(config.clone())
                            .with_pubsub(),
                    )
                    .data(tally)
                    .concurrency(concurrency)
                    .parallelize(tokio::spawn)
                    .build(apalis_handler)
            },
            args.latency_jobs
        )?
    } else {
        bench_apalis!(
            args,
            tally,
            PostgresStorage::<Noop>::new(&pool),
            |storage: PostgresStorage<Noop>, tally: Arc<Tally>| {
                WorkerBuilder::new("apalis-defaults")
                    .backend(storage)
                    .data(tally)
                    .concurrency(concurrency)
                    .build(apalis_handler)
            },
            args.apalis_default_latency_jobs
        )?
    };
    pool.close().await;
    scratch.drop_database().await;
    Ok(figures)
}

async fn bench_apalis_sqlite(args: &Args, tuned: bool) -> anyhow::Result<Figures> {
    use apalis_sqlite::{Config, SqliteStorage};

    let scratch = Scratch::new(args).await?;
    let tally = Tally::new();
    let concurrency = args.concurrency;
    let figures = if tuned {
        // As in apalis-sqlite's `realtime` example: an update hook wakes the worker.
        let (pool, listener) = SqliteStorage::connect_with_callback(&scratch.url)?;
        SqliteStorage::setup(&pool).await?;
        let config = Config::default()
            .queue("bench")
            .batch_size(100)
            .lock_tasks(false);
        let listener = Mutex::new(Some(listener));
        bench_apalis!(
            args,
            tally,
            SqliteStorage::<Noop>::new(&pool).with_config(config.clone()),
            |storage: SqliteStorage<Noop>, tally: Arc<Tally>| {
                let listener = listener.lock().unwrap().take().expect("one worker");
                WorkerBuilder::new("apalis-tuned")
                    .backend(storage.with_callback(listener))
                    .data(tally)
                    .concurrency(concurrency)
                    .parallelize(tokio::spawn)
                    .build(apalis_handler)
            },
            args.latency_jobs
        )?
    } else {
        let pool = sqlx::SqlitePool::connect(&scratch.url).await?;
        SqliteStorage::setup(&pool).await?;
        bench_apalis!(
            args,
            tally,
            SqliteStorage::<Noop>::new(&pool),
            |storage: SqliteStorage<Noop>, tally: Arc<Tally>| {
                WorkerBuilder::new("apalis-defaults")
                    .backend(storage)
                    .data(tally)
                    .concurrency(concurrency)
                    .build(apalis_handler)
            },
            args.apalis_default_latency_jobs
        )?
    };
    Ok(figures)
}

/// apalis's worker over anb-queue's storage: the same steps as the published apalis backends,
/// with `ApalisBackend` as the storage (claims of up to `--concurrency` jobs).
async fn bench_apalis_adapter(args: &Args) -> anyhow::Result<Figures> {
    use anb_queue::{Queue, apalis::ApalisBackend};

    let scratch = Scratch::new(args).await?;
    let queue = Queue::connect(&scratch.url).await?;
    let tally = Tally::new();
    let concurrency = args.concurrency;
    let figures = bench_apalis!(
        args,
        tally,
        ApalisBackend::<Noop>::new(queue.clone()).batch_size(concurrency),
        |storage: ApalisBackend<Noop>, tally: Arc<Tally>| {
            WorkerBuilder::new("apalis-on-anb-queue")
                .backend(storage)
                .data(tally)
                .concurrency(concurrency)
                .build(apalis_handler)
        },
        args.latency_jobs
    )?;
    let stats = queue.stats().await?;
    anyhow::ensure!(
        stats.ready + stats.in_flight + stats.dead == 0,
        "jobs left over: {stats:?}"
    );
    drop(queue);
    scratch.drop_database().await;
    Ok(figures)
}

fn print_row(name: &str, figures: &Figures) {
    let latency = figures
        .latency
        .map(|(p50, p99)| format!("{:>9.1} / {:>9.1} ms", ms(p50), ms(p99)))
        .unwrap_or_else(|| format!("{:>24}", "—"));
    println!(
        "{name:<28} {:>11.0} {:>11.0} {:>11.0} {latency}   ({}; latency: {})",
        figures.enqueue_one_per_s,
        figures.enqueue_bulk_per_s,
        figures.processed_per_s,
        figures.processed_note,
        figures.latency_note
    );
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn print_ratios(name: &str, ours: &Figures, theirs: &Figures) {
    let latency = match (ours.latency, theirs.latency) {
        (Some((our_p50, our_p99)), Some((their_p50, their_p99))) => format!(
            "p50 {:.1}× lower, p99 {:.1}× lower",
            ms(their_p50) / ms(our_p50).max(1e-3),
            ms(their_p99) / ms(our_p99).max(1e-3)
        ),
        _ => "latency not comparable".to_owned(),
    };
    println!(
        "anb-queue vs {name:<18} enqueue one {:.2}×, bulk {:.2}×, processed {:.2}×, {latency}",
        ours.enqueue_one_per_s / theirs.enqueue_one_per_s.max(1e-9),
        ours.enqueue_bulk_per_s / theirs.enqueue_bulk_per_s.max(1e-9),
        ours.processed_per_s / theirs.processed_per_s.max(1e-9),
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()))
        .init();
    let args = Args::parse();
    let backend = match args.backend {
        BackendArg::Postgres => "postgres",
        BackendArg::Sqlite => "sqlite",
        BackendArg::Redis => "redis",
        BackendArg::Sqs => return bench_sqs_requests(&args).await,
    };
    if args.unique {
        return run_unique_bench(&args, backend).await;
    }
    println!(
        "backend {backend}: {} one-by-one, {} bulk backlog, {} concurrent, no-op jobs",
        args.one_by_one, args.jobs, args.concurrency
    );

    let ours = bench_anb_queue(&args).await?;
    let mut others = Vec::new();
    // apalis is compared on the SQL backends only.
    if !args.skip_apalis && matches!(args.backend, BackendArg::Postgres | BackendArg::Sqlite) {
        for tuned in [false, true] {
            let figures = match args.backend {
                BackendArg::Postgres => bench_apalis_postgres(&args, tuned).await?,
                BackendArg::Sqlite => bench_apalis_sqlite(&args, tuned).await?,
                BackendArg::Redis | BackendArg::Sqs => unreachable!("filtered above"),
            };
            let name = format!(
                "apalis-{backend} {}",
                if tuned { "tuned" } else { "defaults" }
            );
            others.push((name, figures));
        }
    }

    if args.adapter {
        let figures = bench_apalis_adapter(&args).await?;
        others.push(("apalis on anb-queue".to_owned(), figures));
    }

    println!();
    println!(
        "{:<28} {:>11} {:>11} {:>11} {:>24}",
        "system", "enqueue/s", "bulk/s", "processed/s", "enqueue→start p50 / p99"
    );
    print_row(&format!("anb-queue {backend}"), &ours);
    for (name, figures) in &others {
        print_row(name, figures);
    }
    println!();
    for (name, figures) in &others {
        print_ratios(name, &ours, figures);
    }
    Ok(())
}
