//! The transactional outbox, on both engines it can live in (PostgreSQL, SQLite): a job
//! committed with the caller's writes reaches the broker even though the broker was down at
//! commit time, a rolled-back job never does, a commit wakes the relay, and relays working
//! side by side publish each job once; a job the broker refuses dies with its reason while
//! the others flow, failed publishes are retried with backoff and counted, dead jobs can be
//! requeued, and an upgraded table keeps working beside relays of the first release. Unique
//! keys: a period key is held by the outbox itself (one job reaches SQS, however many
//! concurrent transactions enqueue it), a key held while unfinished is enforced by a Redis
//! target and refused, as a dead entry with its reason, by an SQS one.

mod support;

use std::{
    collections::HashMap,
    str::FromStr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anb_queue::{
    Job, JobContext, Outbox, OutboxEnqueued, Priority, Queue, QueueError, Relay, RetryBackoff,
    Unique, Worker, backend::ClaimRequest,
};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sqlx::{
    PgPool, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions},
};
use support::{Engine, RunningWorker, TestDb, aws_endpoint, sqs_client, wait_until};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Transcode {
    video_id: i64,
}

impl Job for Transcode {
    const NAME: &'static str = "transcode";
}

/// A job that may wait: a lower priority than the default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Backfill {
    video_id: i64,
}

impl Job for Backfill {
    const NAME: &'static str = "backfill";
    const PRIORITY: Priority = Priority::new(6);
}

/// The application's database, with its own `videos` table beside the outbox.
#[derive(Debug)]
enum AppDb {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl AppDb {
    async fn open(database: &TestDb) -> Self {
        let app = match database.engine {
            Engine::Postgres => Self::Postgres(PgPool::connect(&database.url).await.unwrap()),
            Engine::Sqlite => {
                // As an application opens its file: WAL, several connections, waiting for
                // the writer rather than failing.
                let options = SqliteConnectOptions::from_str(&database.url)
                    .unwrap()
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(Duration::from_secs(30));
                Self::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(4)
                        .connect_with(options)
                        .await
                        .unwrap(),
                )
            }
            other => unreachable!("an outbox lives in a SQL database, not {other:?}"),
        };
        let create = "CREATE TABLE videos (id BIGINT PRIMARY KEY)";
        match &app {
            Self::Postgres(pool) => sqlx::query(create).execute(pool).await.map(drop),
            Self::Sqlite(pool) => sqlx::query(create).execute(pool).await.map(drop),
        }
        .unwrap();
        app
    }

    async fn outbox(&self) -> Outbox {
        match self {
            Self::Postgres(pool) => Outbox::setup(pool.clone()).await,
            Self::Sqlite(pool) => Outbox::setup(pool.clone()).await,
        }
        .unwrap()
    }

    /// Records a video and writes its job into the outbox in one transaction, then commits
    /// or rolls back.
    async fn insert_video(&self, outbox: &Outbox, video_id: i64, commit: bool) {
        self.insert_video_with(outbox, video_id, &Transcode { video_id }, commit)
            .await;
    }

    /// Like [`AppDb::insert_video`], with the job given; returns the outbox entry's id.
    async fn insert_video_with<J: Job>(
        &self,
        outbox: &Outbox,
        video_id: i64,
        job: &J,
        commit: bool,
    ) -> i64 {
        let insert = "INSERT INTO videos (id) VALUES ($1)";
        match self {
            Self::Postgres(pool) => {
                let mut tx = pool.begin().await.unwrap();
                sqlx::query(insert)
                    .bind(video_id)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                let id = outbox.enqueue_tx(&mut *tx, job).await.unwrap();
                if commit {
                    tx.commit().await.unwrap();
                } else {
                    tx.rollback().await.unwrap();
                }
                id
            }
            Self::Sqlite(pool) => {
                let mut tx = pool.begin().await.unwrap();
                sqlx::query(insert)
                    .bind(video_id)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                let id = outbox.enqueue_tx(&mut *tx, job).await.unwrap();
                if commit {
                    tx.commit().await.unwrap();
                } else {
                    tx.rollback().await.unwrap();
                }
                id
            }
        }
    }

    /// Writes `job` into the outbox with `unique` in a transaction of its own, then commits
    /// or rolls back.
    async fn enqueue_unique<J: Job>(
        &self,
        outbox: &Outbox,
        job: &J,
        unique: Unique,
        commit: bool,
    ) -> OutboxEnqueued {
        macro_rules! in_tx {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await.unwrap();
                let enqueued = outbox
                    .enqueue_unique_tx(&mut *tx, job, unique)
                    .await
                    .unwrap();
                if commit {
                    tx.commit().await.unwrap();
                } else {
                    tx.rollback().await.unwrap();
                }
                enqueued
            }};
        }
        match self {
            Self::Postgres(pool) => in_tx!(pool),
            Self::Sqlite(pool) => in_tx!(pool),
        }
    }

    /// How many period keys the outbox holds (expired or not).
    async fn unique_key_rows(&self) -> i64 {
        let sql = "SELECT count(*) FROM anb_queue_outbox_unique";
        match self {
            Self::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
            Self::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
        }
        .unwrap()
    }

    async fn close(&self) {
        match self {
            Self::Postgres(pool) => pool.close().await,
            Self::Sqlite(pool) => pool.close().await,
        }
    }
}

async fn test_db(engine: Engine) -> TestDb {
    match engine {
        Engine::Postgres => TestDb::postgres().await,
        Engine::Sqlite => TestDb::sqlite().await,
        other => unreachable!("no outbox on {other:?}"),
    }
}

/// A port on which nothing listens yet: the broker, as the relay sees it, is down.
async fn unused_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// Brings the broker "up" on `port`: forwards every connection to the real SQS server.
async fn forward(port: u16, target: String) -> tokio::task::JoinHandle<()> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the forwarding port again");
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}

/// A worker on `queue` recording every job it is given.
fn recording_worker(queue: &Queue, seen: Arc<Mutex<Vec<Transcode>>>) -> RunningWorker {
    RunningWorker::spawn(Worker::new(queue.clone()).concurrency(8).handle(
        move |job: Transcode, _ctx: JobContext| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(job);
                Ok(())
            }
        },
    ))
}

/// How many times each video's job arrived.
fn deliveries(seen: &[Transcode]) -> HashMap<i64, usize> {
    let mut counts = HashMap::new();
    for job in seen {
        *counts.entry(job.video_id).or_default() += 1;
    }
    counts
}

async fn a_job_committed_while_the_broker_is_down_arrives_once_it_is_back(engine: Engine) {
    let broker = TestDb::sqs().await;
    let database = test_db(engine).await;
    let app = AppDb::open(&database).await;
    let outbox = app.outbox().await;

    // The relay reaches SQS through a port where nothing listens yet.
    let port = unused_port().await;
    let relay_endpoint = format!("http://127.0.0.1:{port}");
    let queue_url = broker.url.clone();
    let stop_relay = CancellationToken::new();
    let relay = tokio::spawn(
        outbox
            .relay(move || {
                let (client, queue_url) = (sqs_client(&relay_endpoint), queue_url.clone());
                async move { Queue::from_sqs_client(client, &queue_url).await }
            })
            .max_backoff(Duration::from_millis(500))
            .run_until(stop_relay.clone().cancelled_owned()),
    );

    // Committed while the broker is down; and one rolled back, which must never arrive.
    app.insert_video(&outbox, 1, true).await;
    app.insert_video(&outbox, 2, false).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        outbox.pending().await.unwrap(),
        1,
        "kept while the broker is down"
    );
    let consumer_queue = broker.queue().await;
    assert_eq!(consumer_queue.stats().await.unwrap().ready, 0);

    // The broker comes back.
    let target = url::Url::parse(&aws_endpoint()).unwrap();
    let target = format!(
        "{}:{}",
        target.host_str().unwrap(),
        target.port_or_known_default().unwrap()
    );
    let forwarder = forward(port, target).await;

    let seen = Arc::new(Mutex::new(Vec::new()));
    let worker = recording_worker(&consumer_queue, seen.clone());
    wait_until("the job arrives", 120, || async {
        !seen.lock().unwrap().is_empty()
    })
    .await;
    wait_until("the outbox is drained", 60, || async {
        outbox.pending().await.unwrap() == 0
    })
    .await;
    // Room for a duplicate (a publish retried after the broker had accepted it) to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    worker.stop().await;
    stop_relay.cancel();
    relay.await.unwrap().unwrap();
    forwarder.abort();

    let seen = seen.lock().unwrap().clone();
    let duplicates = seen.len().saturating_sub(1);
    println!(
        "outbox on {engine:?}, broker down at commit: job delivered {} time(s), {duplicates} duplicate(s)",
        seen.len()
    );
    assert_eq!(
        seen,
        vec![Transcode { video_id: 1 }],
        "the committed job arrives exactly once, the rolled-back one never"
    );
    app.close().await;
    database.cleanup().await;
    broker.cleanup().await;
}

async fn relays_side_by_side_publish_every_job_once(engine: Engine) {
    const JOBS: i64 = 250;
    let broker = TestDb::redis().await;
    let database = test_db(engine).await;
    let app = AppDb::open(&database).await;
    let outbox = app.outbox().await;
    let consumer_queue = broker.queue().await;

    // Two relays, as two API instances would run, both started before the jobs commit.
    let stop_relays = CancellationToken::new();
    let relays: Vec<_> = (0..2)
        .map(|_| {
            let url = broker.url.clone();
            tokio::spawn(
                outbox
                    .relay(move || {
                        let url = url.clone();
                        async move { Queue::connect(&url).await }
                    })
                    .run_until(stop_relays.clone().cancelled_owned()),
            )
        })
        .collect();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let worker = recording_worker(&consumer_queue, seen.clone());

    for video_id in 1..=JOBS {
        app.insert_video(&outbox, video_id, true).await;
    }
    app.insert_video(&outbox, JOBS + 1, false).await;
    wait_until("every job arrives", 120, || async {
        deliveries(&seen.lock().unwrap()).len() == JOBS as usize
    })
    .await;
    wait_until("the outbox is drained", 60, || async {
        outbox.pending().await.unwrap() == 0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    worker.stop().await;
    stop_relays.cancel();
    for relay in relays {
        relay.await.unwrap().unwrap();
    }

    let seen = seen.lock().unwrap().clone();
    let counts = deliveries(&seen);
    let duplicates = seen.len() - counts.len();
    println!(
        "outbox on {engine:?}, two relays: {} jobs delivered {} times, {duplicates} duplicate(s)",
        counts.len(),
        seen.len()
    );
    assert!(
        !counts.contains_key(&(JOBS + 1)),
        "a rolled-back job arrived"
    );
    assert!(
        (1..=JOBS).all(|id| counts.get(&id) == Some(&1)),
        "{counts:?}"
    );
    assert_eq!(duplicates, 0);
    app.close().await;
    database.cleanup().await;
    broker.cleanup().await;
}

async fn a_commit_wakes_the_relay_without_polling(engine: Engine) {
    let broker = TestDb::redis().await;
    let database = test_db(engine).await;
    let app = AppDb::open(&database).await;
    let outbox = app.outbox().await;
    let consumer_queue = broker.queue().await;
    let url = broker.url.clone();
    let stop_relay = CancellationToken::new();
    // Polling effectively off: only the wake-up (NOTIFY on PostgreSQL, in-process on
    // SQLite) can bring the relay to the jobs.
    let relay = tokio::spawn(
        outbox
            .relay(move || {
                let url = url.clone();
                async move { Queue::connect(&url).await }
            })
            .poll_interval(Duration::from_secs(3600))
            .run_until(stop_relay.clone().cancelled_owned()),
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let worker = recording_worker(&consumer_queue, seen.clone());
    // Let the relay settle into its wait first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for video_id in 1..=3 {
        app.insert_video(&outbox, video_id, true).await;
        wait_until("the job arrives", 60, || async {
            deliveries(&seen.lock().unwrap()).contains_key(&video_id)
        })
        .await;
    }
    worker.stop().await;
    stop_relay.cancel();
    relay.await.unwrap().unwrap();
    assert_eq!(outbox.pending().await.unwrap(), 0);
    app.close().await;
    database.cleanup().await;
    broker.cleanup().await;
}

async fn a_connection_of_another_engine_is_refused(engine: Engine) {
    let database = test_db(engine).await;
    let app = AppDb::open(&database).await;
    let outbox = app.outbox().await;
    let job = Transcode { video_id: 1 };
    // The other engine's connection: the job would not commit with the caller's writes.
    let refused = match engine {
        Engine::Postgres => {
            use sqlx::Connection;
            let mut other = sqlx::SqliteConnection::connect("sqlite::memory:")
                .await
                .unwrap();
            outbox.enqueue_tx(&mut other, &job).await
        }
        _ => {
            let pool = PgPool::connect(&support::postgres_admin_url())
                .await
                .unwrap();
            let mut other = pool.acquire().await.unwrap();
            outbox.enqueue_tx(&mut *other, &job).await
        }
    };
    assert!(
        matches!(refused, Err(QueueError::TransactionMismatch { .. })),
        "{refused:?}"
    );
    assert_eq!(outbox.pending().await.unwrap(), 0);
    app.close().await;
    database.cleanup().await;
}

/// A job of the same name as [`Transcode`] and too large for a queue that takes messages of
/// at most [`SMALL_MESSAGE_LIMIT`] bytes: if it were ever delivered, the worker would record
/// its video like any other.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OversizedTranscode {
    video_id: i64,
    padding: String,
}

impl Job for OversizedTranscode {
    const NAME: &'static str = "transcode";
}

/// The smallest `MaximumMessageSize` SQS allows.
const SMALL_MESSAGE_LIMIT: usize = 1024;

/// A fresh SQS queue that takes messages of at most [`SMALL_MESSAGE_LIMIT`] bytes.
async fn sqs_with_small_messages() -> TestDb {
    let broker = TestDb::sqs().await;
    sqs_client(&aws_endpoint())
        .set_queue_attributes()
        .queue_url(&broker.url)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::MaximumMessageSize,
            SMALL_MESSAGE_LIMIT.to_string(),
        )
        .send()
        .await
        .expect("lower the queue's message size limit");
    broker
}

/// A Redis server of the test's own, on a free port, that can be made to refuse every
/// write for a while (`maxmemory` below what it uses, as a full Redis does) and recover.
struct PrivateRedis {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PrivateRedis {
    async fn start() -> Self {
        let port = unused_port().await;
        let dir = tempfile::tempdir().unwrap();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let redis = Self {
            child,
            port,
            _dir: dir,
        };
        wait_until("the private Redis answers", 30, || async {
            redis.connection().await.is_some()
        })
        .await;
        redis
    }

    /// The URL of a fresh queue on this server.
    fn queue_url(&self) -> String {
        format!(
            "redis://127.0.0.1:{}?queue=outbox-{}",
            self.port,
            uuid::Uuid::new_v4().simple()
        )
    }

    async fn connection(&self) -> Option<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", self.port)).ok()?;
        client.get_multiplexed_async_connection().await.ok()
    }

    /// Makes every write fail with `OOM`, or lets writes through again.
    async fn refuse_writes(&self, refuse: bool) {
        let mut conn = self.connection().await.expect("the private Redis answers");
        let limit = if refuse { "1" } else { "0" };
        let () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(limit)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How [`spawn_relay`]'s relays open their queue.
type Connect = Box<dyn FnMut() -> BoxFuture<'static, Result<Queue, QueueError>> + Send + Sync>;

/// A relay publishing `outbox` to the queue at `url`, configured by `configure`, until
/// `stop` is cancelled.
fn spawn_relay(
    outbox: &Outbox,
    url: String,
    stop: &CancellationToken,
    configure: impl FnOnce(Relay<Connect>) -> Relay<Connect>,
) -> tokio::task::JoinHandle<Result<(), QueueError>> {
    let connect: Connect = Box::new(move || {
        let url = url.clone();
        Box::pin(async move { Queue::connect(&url).await })
    });
    tokio::spawn(configure(outbox.relay(connect)).run_until(stop.clone().cancelled_owned()))
}

async fn a_poison_job_dies_with_its_reason_and_every_other_job_is_delivered_once(engine: Engine) {
    let broker = sqs_with_small_messages().await;
    let database = test_db(engine).await;
    let app = AppDb::open(&database).await;
    let outbox = app.outbox().await;

    // Written before the relay starts, so the poison job sits inside the first batch, among
    // jobs of lower and higher ids.
    let mut poison_id = 0;
    for video_id in 1..=25 {
        if video_id == 13 {
            let poison = OversizedTranscode {
                video_id,
                padding: "x".repeat(2 * SMALL_MESSAGE_LIMIT),
            };
            poison_id = app
                .insert_video_with(&outbox, video_id, &poison, true)
                .await;
        } else {
            app.insert_video(&outbox, video_id, true).await;
        }
    }
    let queue_url = broker.url.clone();
    let stop_relay = CancellationToken::new();
    let relay = tokio::spawn(
        outbox
            .relay(move || {
                let (client, queue_url) = (sqs_client(&aws_endpoint()), queue_url.clone());
                async move { Queue::from_sqs_client(client, &queue_url).await }
            })
            .run_until(stop_relay.clone().cancelled_owned()),
    );
    let consumer_queue = broker.queue().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let worker = recording_worker(&consumer_queue, seen.clone());
    wait_until("every other job arrives", 120, || async {
        deliveries(&seen.lock().unwrap()).len() == 24
    })
    .await;
    wait_until("the poison job is dead", 60, || async {
        outbox.dead_count().await.unwrap() == 1
    })
    .await;
    assert_eq!(outbox.pending().await.unwrap(), 0, "nothing else waits");
    // Room for a duplicate to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    worker.stop().await;
    stop_relay.cancel();
    relay.await.unwrap().unwrap();

    let counts = deliveries(&seen.lock().unwrap());
    println!("outbox on {engine:?}, one poison job among 25: {counts:?}");
    assert!(!counts.contains_key(&13), "the oversized job never arrives");
    assert!(
        (1..=25)
            .filter(|id| *id != 13)
            .all(|id| counts.get(&id) == Some(&1)),
        "every other job arrives exactly once: {counts:?}"
    );
    let dead = outbox.dead_entries(10, None).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let entry = &dead[0];
    assert_eq!((entry.id, entry.name.as_str()), (poison_id, "transcode"));
    assert_eq!(entry.publish_attempts, 1, "refused for good: dead at once");
    assert!(entry.dead_at_ms.is_some());
    let reason = entry.last_error.as_deref().unwrap_or_default();
    assert!(
        reason.contains(&format!("limit of {SMALL_MESSAGE_LIMIT} bytes")),
        "{reason}"
    );
    assert!(outbox.pending_entries(10, None).await.unwrap().is_empty());
    app.close().await;
    database.cleanup().await;
    broker.cleanup().await;
}

async fn a_broker_failing_for_a_while_gets_every_job_once_after_backoff(engine: Engine) {
    const JOBS: i64 = 40;
    let redis = PrivateRedis::start().await;
    let url = redis.queue_url();
    let database = test_db(engine).await;
    let app = AppDb::open(&database).await;
    let outbox = app.outbox().await;

    redis.refuse_writes(true).await;
    let stop_relay = CancellationToken::new();
    let relay = spawn_relay(&outbox, url.clone(), &stop_relay, |relay| {
        relay
            .max_backoff(Duration::from_millis(200))
            .retry_backoff(RetryBackoff {
                base: Duration::from_millis(200),
                max: Duration::from_secs(1),
            })
    });
    for video_id in 1..=JOBS {
        app.insert_video(&outbox, video_id, true).await;
    }
    // Every job is tried, fails, keeps the broker's error and waits for a later attempt.
    wait_until("every job has failed twice", 60, || async {
        let waiting = outbox.pending_entries(1000, None).await.unwrap();
        waiting.len() == JOBS as usize
            && waiting.iter().all(|entry| {
                entry.publish_attempts >= 2
                    && entry
                        .last_error
                        .as_deref()
                        .is_some_and(|error| error.contains("OOM"))
            })
    })
    .await;
    let waiting = outbox.pending_entries(1000, None).await.unwrap();
    let backing_off = waiting
        .iter()
        .filter(|entry| entry.next_attempt_at_ms.is_some())
        .count();
    println!(
        "outbox on {engine:?}, broker refusing writes: {backing_off} of {} jobs waiting for a retry, attempts {:?}",
        waiting.len(),
        waiting
            .iter()
            .map(|entry| entry.publish_attempts)
            .collect::<Vec<_>>()
    );
    assert!(
        backing_off > 0,
        "a failed job waits before its next attempt"
    );
    assert_eq!(
        outbox.dead_count().await.unwrap(),
        0,
        "no job dies meanwhile"
    );

    redis.refuse_writes(false).await;
    let consumer_queue = Queue::connect(&url).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let worker = recording_worker(&consumer_queue, seen.clone());
    wait_until("every job arrives", 60, || async {
        deliveries(&seen.lock().unwrap()).len() == JOBS as usize
    })
    .await;
    wait_until("the outbox is drained", 30, || async {
        outbox.pending().await.unwrap() == 0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    worker.stop().await;
    stop_relay.cancel();
    relay.await.unwrap().unwrap();

    let seen = seen.lock().unwrap().clone();
    let counts = deliveries(&seen);
    assert!(
        (1..=JOBS).all(|id| counts.get(&id) == Some(&1)),
        "every job exactly once: {counts:?}"
    );
    assert_eq!(seen.len(), JOBS as usize, "no duplicate");
    assert_eq!(outbox.dead_count().await.unwrap(), 0);
    app.close().await;
    database.cleanup().await;
}

async fn jobs_failing_every_attempt_die_and_come_back_when_requeued(engine: Engine) {
    const JOBS: i64 = 5;
    let redis = PrivateRedis::start().await;
    let url = redis.queue_url();
    let database = test_db(engine).await;
    let app = AppDb::open(&database).await;
    let outbox = app.outbox().await;

    redis.refuse_writes(true).await;
    let stop_relay = CancellationToken::new();
    let relay = spawn_relay(&outbox, url.clone(), &stop_relay, |relay| {
        relay
            .max_publish_attempts(3)
            .max_backoff(Duration::from_millis(100))
            .retry_backoff(RetryBackoff {
                base: Duration::from_millis(50),
                max: Duration::from_millis(100),
            })
    });
    for video_id in 1..=JOBS {
        app.insert_video(&outbox, video_id, true).await;
    }
    wait_until("every job is dead", 60, || async {
        outbox.dead_count().await.unwrap() == JOBS as u64
    })
    .await;
    assert_eq!(outbox.pending().await.unwrap(), 0);
    let dead = outbox.dead_entries(2, None).await.unwrap();
    let rest = outbox
        .dead_entries(10, dead.last().map(|entry| entry.id))
        .await
        .unwrap();
    assert_eq!((dead.len(), rest.len()), (2, 3), "paged by id");
    for entry in dead.iter().chain(&rest) {
        assert_eq!(entry.publish_attempts, 3, "{entry:?}");
        assert!(
            entry
                .last_error
                .as_deref()
                .is_some_and(|error| error.contains("OOM")),
            "{entry:?}"
        );
    }

    // The broker recovers; an operator gives the dead jobs back, some by id, then the rest.
    redis.refuse_writes(false).await;
    let consumer_queue = Queue::connect(&url).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let worker = recording_worker(&consumer_queue, seen.clone());
    let first: Vec<i64> = dead.iter().map(|entry| entry.id).collect();
    assert_eq!(outbox.requeue_dead(&first).await.unwrap(), 2);
    assert_eq!(
        outbox.requeue_dead(&first).await.unwrap(),
        0,
        "no longer dead"
    );
    wait_until("the requeued jobs arrive", 60, || async {
        deliveries(&seen.lock().unwrap()).len() == 2
    })
    .await;
    assert_eq!(outbox.dead_count().await.unwrap(), 3);
    assert_eq!(outbox.requeue_all_dead().await.unwrap(), 3);
    wait_until("every job arrives", 60, || async {
        deliveries(&seen.lock().unwrap()).len() == JOBS as usize
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    worker.stop().await;
    stop_relay.cancel();
    relay.await.unwrap().unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), JOBS as usize, "each exactly once: {seen:?}");
    assert_eq!(outbox.dead_count().await.unwrap(), 0);
    assert_eq!(outbox.pending().await.unwrap(), 0);
    app.close().await;
    database.cleanup().await;
}

/// The outbox table as the first release created it, and the statements its relays run.
mod first_release {
    pub const POSTGRES_TABLE: &str = "CREATE TABLE IF NOT EXISTS anb_queue_outbox (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        name TEXT NOT NULL,
        payload TEXT NOT NULL,
        max_attempts BIGINT NOT NULL,
        not_before_ms BIGINT NOT NULL,
        created_at_ms BIGINT NOT NULL,
        claimed_until_ms BIGINT,
        publish_attempts BIGINT NOT NULL DEFAULT 0,
        last_error TEXT
    )";
    pub const SQLITE_TABLE: &str = "CREATE TABLE IF NOT EXISTS anb_queue_outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        payload TEXT NOT NULL,
        max_attempts INTEGER NOT NULL,
        not_before_ms INTEGER NOT NULL,
        created_at_ms INTEGER NOT NULL,
        claimed_until_ms INTEGER,
        publish_attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
    )";
    pub const POSTGRES_INSERT: &str = "INSERT INTO anb_queue_outbox
        (name, payload, max_attempts, not_before_ms, created_at_ms)
        VALUES ($1, $2, $3, $4, $5) RETURNING id";
    pub const SQLITE_INSERT: &str = "INSERT INTO anb_queue_outbox
        (name, payload, max_attempts, not_before_ms, created_at_ms)
        VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id";
    pub const POSTGRES_CLAIM: &str = "UPDATE anb_queue_outbox
         SET claimed_until_ms = $2, publish_attempts = publish_attempts + 1
         WHERE id IN (
            SELECT id FROM anb_queue_outbox
            WHERE claimed_until_ms IS NULL OR claimed_until_ms < $1
            ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED
         )
         RETURNING id";
    pub const SQLITE_CLAIM: &str = "UPDATE anb_queue_outbox
         SET claimed_until_ms = ?2, publish_attempts = publish_attempts + 1
         WHERE id IN (
            SELECT id FROM anb_queue_outbox
            WHERE claimed_until_ms IS NULL OR claimed_until_ms < ?1
            ORDER BY id LIMIT ?3
         )
         RETURNING id";
    pub const RELEASE: &str =
        "UPDATE anb_queue_outbox SET claimed_until_ms = NULL, last_error = 'old' WHERE id = $1";
}

impl AppDb {
    /// Runs the first release's DDL and statements on this database.
    async fn first_release_table(&self) {
        match self {
            Self::Postgres(pool) => sqlx::query(first_release::POSTGRES_TABLE)
                .execute(pool)
                .await
                .map(drop),
            Self::Sqlite(pool) => sqlx::query(first_release::SQLITE_TABLE)
                .execute(pool)
                .await
                .map(drop),
        }
        .unwrap();
    }

    async fn first_release_insert(&self, video_id: i64) -> i64 {
        let payload = serde_json::to_string(&Transcode { video_id }).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        match self {
            Self::Postgres(pool) => sqlx::query_scalar(first_release::POSTGRES_INSERT)
                .bind("transcode")
                .bind(payload)
                .bind(3_i64)
                .bind(now)
                .bind(now)
                .fetch_one(pool)
                .await
                .unwrap(),
            Self::Sqlite(pool) => sqlx::query_scalar(first_release::SQLITE_INSERT)
                .bind("transcode")
                .bind(payload)
                .bind(3_i64)
                .bind(now)
                .bind(now)
                .fetch_one(pool)
                .await
                .unwrap(),
        }
    }

    /// What a relay of the first release claims now; it then gives the rows back.
    async fn first_release_claim(&self) -> Vec<i64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let claimed: Vec<i64> = match self {
            Self::Postgres(pool) => sqlx::query_scalar(first_release::POSTGRES_CLAIM)
                .bind(now)
                .bind(now + 60_000)
                .bind(100_i64)
                .fetch_all(pool)
                .await
                .unwrap(),
            Self::Sqlite(pool) => sqlx::query_scalar(first_release::SQLITE_CLAIM)
                .bind(now)
                .bind(now + 60_000)
                .bind(100_i64)
                .fetch_all(pool)
                .await
                .unwrap(),
        };
        for id in &claimed {
            match self {
                Self::Postgres(pool) => sqlx::query(first_release::RELEASE)
                    .bind(id)
                    .execute(pool)
                    .await
                    .map(drop),
                Self::Sqlite(pool) => sqlx::query(first_release::RELEASE)
                    .bind(id)
                    .execute(pool)
                    .await
                    .map(drop),
            }
            .unwrap();
        }
        claimed
    }
}

async fn an_upgraded_outbox_works_beside_relays_of_the_first_release(engine: Engine) {
    let redis = PrivateRedis::start().await;
    let url = redis.queue_url();
    let database = test_db(engine).await;
    let app = AppDb::open(&database).await;

    // A database the first release set up, with jobs waiting in it.
    app.first_release_table().await;
    let dying = app.first_release_insert(1).await;
    let backing_off = app.first_release_insert(2).await;
    let outbox = app.outbox().await;
    let _again = app.outbox().await;
    assert_eq!(outbox.pending().await.unwrap(), 2, "upgraded in place");

    // A new relay kills one job and leaves the other waiting for a retry a minute away.
    redis.refuse_writes(true).await;
    let stop_relay = CancellationToken::new();
    let relay = spawn_relay(&outbox, url.clone(), &stop_relay, |relay| {
        relay.max_publish_attempts(1)
    });
    wait_until("both jobs are dead", 60, || async {
        outbox.dead_count().await.unwrap() == 2
    })
    .await;
    stop_relay.cancel();
    relay.await.unwrap().unwrap();
    assert_eq!(outbox.requeue_dead(&[backing_off]).await.unwrap(), 1);
    let stop_relay = CancellationToken::new();
    let relay = spawn_relay(&outbox, url.clone(), &stop_relay, |relay| {
        relay.retry_backoff(RetryBackoff {
            base: Duration::from_secs(120),
            max: Duration::from_secs(120),
        })
    });
    wait_until("the requeued job was tried again", 60, || async {
        outbox
            .pending_entries(10, None)
            .await
            .unwrap()
            .iter()
            .any(|entry| entry.id == backing_off && entry.publish_attempts == 1)
    })
    .await;
    stop_relay.cancel();
    relay.await.unwrap().unwrap();

    // A relay of the first release, still running during the deploy, writes a job and
    // claims: it takes that job only, neither the dead one nor the one waiting for its retry.
    let written_by_old = app.first_release_insert(3).await;
    assert_eq!(app.first_release_claim().await, vec![written_by_old]);

    // The broker recovers and the dead job is given back: the new relay publishes both jobs
    // that are due, once each; the one waiting for its retry is still waiting.
    redis.refuse_writes(false).await;
    assert_eq!(outbox.requeue_dead(&[dying]).await.unwrap(), 1);
    let consumer_queue = Queue::connect(&url).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let worker = recording_worker(&consumer_queue, seen.clone());
    let stop_relay = CancellationToken::new();
    let relay = spawn_relay(&outbox, url.clone(), &stop_relay, |relay| relay);
    wait_until("the due jobs arrive", 60, || async {
        deliveries(&seen.lock().unwrap()).len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    worker.stop().await;
    stop_relay.cancel();
    relay.await.unwrap().unwrap();
    let counts = deliveries(&seen.lock().unwrap());
    assert_eq!(counts, HashMap::from([(1, 1), (3, 1)]));
    let waiting = outbox.pending_entries(10, None).await.unwrap();
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert_eq!(waiting[0].id, backing_off);
    assert!(waiting[0].next_attempt_at_ms.is_some());
    assert_eq!(outbox.dead_count().await.unwrap(), 0);
    app.close().await;
    database.cleanup().await;
}

/// A relay publishing `outbox` to the SQS queue at `queue_url`, until `stop` is cancelled.
fn spawn_sqs_relay(
    outbox: &Outbox,
    queue_url: String,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<Result<(), QueueError>> {
    tokio::spawn(
        outbox
            .relay(move || {
                let (client, queue_url) = (sqs_client(&aws_endpoint()), queue_url.clone());
                async move { Queue::from_sqs_client(client, &queue_url).await }
            })
            .run_until(stop.clone().cancelled_owned()),
    )
}

const HOUR: Duration = Duration::from_secs(3600);

async fn a_period_key_is_held_by_the_outbox_and_one_job_reaches_sqs(engine: Engine) {
    let broker = TestDb::sqs().await;
    let database = test_db(engine).await;
    let app = AppDb::open(&database).await;
    let outbox = app.outbox().await;
    let hourly = |video_id: i64| Unique::key(format!("video:{video_id}")).for_period(HOUR);

    // A transaction that rolls back takes no key.
    let rolled_back = app
        .enqueue_unique(&outbox, &Transcode { video_id: 1 }, hourly(1), false)
        .await;
    assert!(!rolled_back.duplicate);
    let first = app
        .enqueue_unique(&outbox, &Transcode { video_id: 1 }, hourly(1), true)
        .await;
    assert!(!first.duplicate, "the rolled-back enqueue holds no key");
    for _ in 0..2 {
        let again = app
            .enqueue_unique(&outbox, &Transcode { video_id: 1 }, hourly(1), true)
            .await;
        assert_eq!(
            again,
            OutboxEnqueued {
                id: first.id,
                duplicate: true
            }
        );
    }
    let other = app
        .enqueue_unique(&outbox, &Transcode { video_id: 2 }, hourly(2), true)
        .await;
    assert!(!other.duplicate && other.id != first.id);
    assert_eq!(outbox.pending().await.unwrap(), 2, "one entry per key");
    let waiting = outbox.pending_entries(10, None).await.unwrap();
    assert_eq!(waiting[0].unique_key.as_deref(), Some("video:1"));
    // A relay of the first release, still running during a deploy, would publish a keyed
    // entry without its key: it never takes one.
    assert_eq!(app.first_release_claim().await, Vec::<i64>::new());

    let stop_relay = CancellationToken::new();
    let relay = spawn_sqs_relay(&outbox, broker.url.clone(), &stop_relay);
    let consumer_queue = broker.queue().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let worker = recording_worker(&consumer_queue, seen.clone());
    wait_until("both jobs arrive", 120, || async {
        deliveries(&seen.lock().unwrap()).len() == 2
    })
    .await;
    wait_until("the outbox is drained", 60, || async {
        outbox.pending().await.unwrap() == 0
    })
    .await;
    // Published and gone from the outbox, the key is still held for its period.
    let after = app
        .enqueue_unique(&outbox, &Transcode { video_id: 1 }, hourly(1), true)
        .await;
    assert_eq!(
        after,
        OutboxEnqueued {
            id: first.id,
            duplicate: true
        }
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    worker.stop().await;
    stop_relay.cancel();
    relay.await.unwrap().unwrap();

    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        deliveries(&seen),
        HashMap::from([(1, 1), (2, 1)]),
        "one job per key reaches SQS: {seen:?}"
    );
    assert_eq!(outbox.dead_count().await.unwrap(), 0);
    app.close().await;
    database.cleanup().await;
    broker.cleanup().await;
}

async fn a_period_key_is_free_once_its_period_is_over_and_then_pruned(engine: Engine) {
    let broker = TestDb::redis().await;
    let database = test_db(engine).await;
    let app = AppDb::open(&database).await;
    let outbox = app.outbox().await;
    let brief = || Unique::key("video:1").for_period(Duration::from_millis(300));
    let job = Transcode { video_id: 1 };

    let first = app.enqueue_unique(&outbox, &job, brief(), true).await;
    let again = app.enqueue_unique(&outbox, &job, brief(), true).await;
    assert!(!first.duplicate && again.duplicate && again.id == first.id);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let later = app.enqueue_unique(&outbox, &job, brief(), true).await;
    assert!(!later.duplicate && later.id != first.id, "{later:?}");
    assert_eq!(outbox.pending().await.unwrap(), 2);
    assert_eq!(
        app.unique_key_rows().await,
        1,
        "the expired key was replaced"
    );

    // Keys nobody enqueues again are pruned by the relay once expired.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let stop_relay = CancellationToken::new();
    let relay = spawn_relay(&outbox, broker.url.clone(), &stop_relay, |relay| relay);
    wait_until("expired keys are pruned", 30, || async {
        app.unique_key_rows().await == 0
    })
    .await;
    wait_until("the outbox is drained", 30, || async {
        outbox.pending().await.unwrap() == 0
    })
    .await;
    stop_relay.cancel();
    relay.await.unwrap().unwrap();
    assert_eq!(broker.queue().await.stats().await.unwrap().ready, 2);
    app.close().await;
    database.cleanup().await;
    broker.cleanup().await;
}

async fn concurrent_period_enqueues_of_one_key_store_one_entry(engine: Engine) {
    const TASKS: usize = 32;
    let database = test_db(engine).await;
    let app = match engine {
        // One connection per task, so that every transaction is open at once.
        Engine::Postgres => AppDb::Postgres(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(TASKS as u32)
                .connect(&database.url)
                .await
                .unwrap(),
        ),
        _ => AppDb::open(&database).await,
    };
    let app = Arc::new(app);
    let outbox = app.outbox().await;
    let start = Arc::new(tokio::sync::Barrier::new(TASKS));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (app, outbox, start) = (app.clone(), outbox.clone(), start.clone());
            tokio::spawn(async move {
                let unique = Unique::key("video:1").for_period(HOUR);
                let job = Transcode { video_id: 1 };
                macro_rules! in_tx {
                    ($pool:expr) => {{
                        let mut tx = $pool.begin().await.unwrap();
                        // Every transaction open before any enqueues (where a connection
                        // per task lets them be).
                        if matches!(&*app, AppDb::Postgres(_)) {
                            start.wait().await;
                        }
                        let enqueued = outbox
                            .enqueue_unique_tx(&mut *tx, &job, unique)
                            .await
                            .unwrap();
                        // Held open a while, so the others meet an uncommitted key.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        tx.commit().await.unwrap();
                        enqueued
                    }};
                }
                match &*app {
                    AppDb::Postgres(pool) => in_tx!(pool),
                    AppDb::Sqlite(pool) => in_tx!(pool),
                }
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    let fresh: Vec<_> = answers.iter().filter(|answer| !answer.duplicate).collect();
    assert_eq!(fresh.len(), 1, "{answers:?}");
    assert!(
        answers.iter().all(|answer| answer.id == fresh[0].id),
        "{answers:?}"
    );
    assert_eq!(outbox.pending().await.unwrap(), 1);
    assert_eq!(app.unique_key_rows().await, 1);
    app.close().await;
    database.cleanup().await;
}

async fn a_key_held_while_unfinished_is_enforced_by_redis_through_the_relay(engine: Engine) {
    let broker = TestDb::redis().await;
    let database = test_db(engine).await;
    let app = AppDb::open(&database).await;
    let outbox = app.outbox().await;
    let consumer_queue = broker.queue().await;
    let stop_relay = CancellationToken::new();
    let relay = spawn_relay(&outbox, broker.url.clone(), &stop_relay, |relay| relay);
    let job = Transcode { video_id: 1 };

    let first = app
        .enqueue_unique(&outbox, &job, Unique::key("video:1"), true)
        .await;
    assert!(!first.duplicate);
    wait_until("the first job is published", 60, || async {
        outbox.pending().await.unwrap() == 0
    })
    .await;
    // The outbox cannot tell whether the first job has finished: it writes the entry, and
    // Redis, which holds the key until the job finishes, answers it is a duplicate.
    let second = app
        .enqueue_unique(&outbox, &job, Unique::key("video:1"), true)
        .await;
    assert!(!second.duplicate && second.id != first.id, "{second:?}");
    wait_until("the second entry is settled", 60, || async {
        outbox.pending().await.unwrap() == 0
    })
    .await;
    assert_eq!(
        outbox.dead_count().await.unwrap(),
        0,
        "a duplicate is published"
    );
    assert_eq!(
        consumer_queue.stats().await.unwrap().ready,
        1,
        "one job on Redis"
    );
    let direct = consumer_queue
        .enqueue_unique(&job, Unique::key("video:1"))
        .await
        .unwrap();
    assert!(direct.duplicate, "Redis holds the key: {direct:?}");

    // A period key is held on Redis as well as in the outbox.
    let hourly = Unique::key("video:2").for_period(HOUR);
    let periodic = Transcode { video_id: 2 };
    app.enqueue_unique(&outbox, &periodic, hourly.clone(), true)
        .await;
    wait_until("the period-keyed job is published", 60, || async {
        outbox.pending().await.unwrap() == 0
    })
    .await;
    let direct = consumer_queue
        .enqueue_unique(&periodic, hourly)
        .await
        .unwrap();
    assert!(direct.duplicate, "Redis holds the period key: {direct:?}");
    stop_relay.cancel();
    relay.await.unwrap().unwrap();
    assert_eq!(consumer_queue.stats().await.unwrap().ready, 2);
    app.close().await;
    database.cleanup().await;
    broker.cleanup().await;
}

async fn a_key_held_while_unfinished_dies_in_the_outbox_when_relayed_to_sqs(engine: Engine) {
    let broker = TestDb::sqs().await;
    let database = test_db(engine).await;
    let app = AppDb::open(&database).await;
    let outbox = app.outbox().await;

    let keyed = app
        .enqueue_unique(
            &outbox,
            &Transcode { video_id: 1 },
            Unique::key("video:1"),
            true,
        )
        .await;
    app.insert_video(&outbox, 2, true).await;
    app.enqueue_unique(
        &outbox,
        &Transcode { video_id: 3 },
        Unique::key("video:3").for_period(HOUR),
        true,
    )
    .await;
    let stop_relay = CancellationToken::new();
    let relay = spawn_sqs_relay(&outbox, broker.url.clone(), &stop_relay);
    let consumer_queue = broker.queue().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let worker = recording_worker(&consumer_queue, seen.clone());
    wait_until("the other jobs arrive", 120, || async {
        deliveries(&seen.lock().unwrap()).len() >= 2
    })
    .await;
    wait_until("the keyed job is dead", 60, || async {
        outbox.dead_count().await.unwrap() == 1
    })
    .await;
    assert_eq!(outbox.pending().await.unwrap(), 0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    worker.stop().await;
    stop_relay.cancel();
    relay.await.unwrap().unwrap();

    assert_eq!(
        deliveries(&seen.lock().unwrap()),
        HashMap::from([(2, 1), (3, 1)]),
        "the keyed job is never published without its key"
    );
    let dead = outbox.dead_entries(10, None).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].id, keyed.id);
    assert_eq!(dead[0].unique_key.as_deref(), Some("video:1"));
    assert_eq!(
        dead[0].publish_attempts, 1,
        "refused for good: dead at once"
    );
    let reason = dead[0].last_error.as_deref().unwrap_or_default();
    assert!(
        reason.contains("sqs") && reason.contains("unique key") && reason.contains("unfinished"),
        "{reason}"
    );

    // Given back, it waits for a relay of this release with no claim, still out of reach
    // of older relays, and a relay to Redis publishes it with its key.
    assert_eq!(outbox.requeue_dead(&[keyed.id]).await.unwrap(), 1);
    let waiting = outbox.pending_entries(10, None).await.unwrap();
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert_eq!(waiting[0].next_attempt_at_ms, None, "{waiting:?}");
    assert_eq!(app.first_release_claim().await, Vec::<i64>::new());
    let redis = TestDb::redis().await;
    let stop_relay = CancellationToken::new();
    let relay = spawn_relay(&outbox, redis.url.clone(), &stop_relay, |relay| relay);
    wait_until("the requeued job is published", 60, || async {
        outbox.pending().await.unwrap() == 0
    })
    .await;
    stop_relay.cancel();
    relay.await.unwrap().unwrap();
    let redis_queue = redis.queue().await;
    let direct = redis_queue
        .enqueue_unique(&Transcode { video_id: 1 }, Unique::key("video:1"))
        .await
        .unwrap();
    assert!(direct.duplicate, "published with its key: {direct:?}");
    app.close().await;
    database.cleanup().await;
    broker.cleanup().await;
    redis.cleanup().await;
}

/// A job's priority travels with its outbox entry: a Redis target runs it in priority order
/// (the default-priority job written after it is claimed first) and shows it; an SQS target,
/// which has no priorities, never gets it out of order: the entry dies with its reason while
/// the default-priority job is delivered.
async fn a_job_keeps_its_priority_through_the_outbox_and_sqs_refuses_it(engine: Engine) {
    let database = test_db(engine).await;
    let app = AppDb::open(&database).await;
    let outbox = app.outbox().await;
    app.insert_video_with(&outbox, 1, &Backfill { video_id: 1 }, true)
        .await;
    app.insert_video(&outbox, 2, true).await;

    let redis = TestDb::redis().await;
    let stop_relay = CancellationToken::new();
    let relay = spawn_relay(&outbox, redis.url.clone(), &stop_relay, |relay| relay);
    wait_until("both jobs are published", 60, || async {
        outbox.pending().await.unwrap() == 0
    })
    .await;
    stop_relay.cancel();
    relay.await.unwrap().unwrap();
    let redis_queue = redis.queue().await;
    let claimed = redis_queue
        .backend()
        .claim(ClaimRequest {
            names: &[Backfill::NAME, Transcode::NAME],
            max: 2,
            owner: "test",
            lease: Duration::from_secs(60),
        })
        .await
        .unwrap();
    let names: Vec<&str> = claimed.iter().map(|job| job.name.as_str()).collect();
    assert_eq!(names, [Transcode::NAME, Backfill::NAME], "priority order");
    let backfill = redis_queue.job(&claimed[1].id).await.unwrap().unwrap();
    assert_eq!(backfill.priority, Priority::new(6));

    app.insert_video_with(&outbox, 3, &Backfill { video_id: 3 }, true)
        .await;
    app.insert_video(&outbox, 4, true).await;
    let sqs = TestDb::sqs().await;
    let stop_relay = CancellationToken::new();
    let relay = spawn_sqs_relay(&outbox, sqs.url.clone(), &stop_relay);
    let consumer_queue = sqs.queue().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let worker = recording_worker(&consumer_queue, seen.clone());
    wait_until("the default-priority job arrives", 120, || async {
        !seen.lock().unwrap().is_empty()
    })
    .await;
    wait_until("the lower-priority job is dead", 60, || async {
        outbox.dead_count().await.unwrap() == 1
    })
    .await;
    worker.stop().await;
    stop_relay.cancel();
    relay.await.unwrap().unwrap();
    assert_eq!(deliveries(&seen.lock().unwrap()), HashMap::from([(4, 1)]));
    let dead = outbox.dead_entries(10, None).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].name, Backfill::NAME);
    let reason = dead[0].last_error.as_deref().unwrap_or_default();
    assert!(
        reason.contains("sqs") && reason.contains("priority 6"),
        "{reason}"
    );
    app.close().await;
    database.cleanup().await;
    redis.cleanup().await;
    sqs.cleanup().await;
}

/// Runs every case above on one engine.
macro_rules! outbox_suite {
    ($module:ident, $engine:expr) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_job_committed_while_the_broker_is_down_arrives_once_it_is_back() {
                super::a_job_committed_while_the_broker_is_down_arrives_once_it_is_back($engine)
                    .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_job_keeps_its_priority_through_the_outbox_and_sqs_refuses_it() {
                super::a_job_keeps_its_priority_through_the_outbox_and_sqs_refuses_it($engine)
                    .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn relays_side_by_side_publish_every_job_once() {
                super::relays_side_by_side_publish_every_job_once($engine).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_commit_wakes_the_relay_without_polling() {
                super::a_commit_wakes_the_relay_without_polling($engine).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_poison_job_dies_with_its_reason_and_every_other_job_is_delivered_once() {
                super::a_poison_job_dies_with_its_reason_and_every_other_job_is_delivered_once(
                    $engine,
                )
                .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_broker_failing_for_a_while_gets_every_job_once_after_backoff() {
                super::a_broker_failing_for_a_while_gets_every_job_once_after_backoff($engine)
                    .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn jobs_failing_every_attempt_die_and_come_back_when_requeued() {
                super::jobs_failing_every_attempt_die_and_come_back_when_requeued($engine).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn an_upgraded_outbox_works_beside_relays_of_the_first_release() {
                super::an_upgraded_outbox_works_beside_relays_of_the_first_release($engine).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_period_key_is_held_by_the_outbox_and_one_job_reaches_sqs() {
                super::a_period_key_is_held_by_the_outbox_and_one_job_reaches_sqs($engine).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_period_key_is_free_once_its_period_is_over_and_then_pruned() {
                super::a_period_key_is_free_once_its_period_is_over_and_then_pruned($engine).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_period_enqueues_of_one_key_store_one_entry() {
                super::concurrent_period_enqueues_of_one_key_store_one_entry($engine).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_key_held_while_unfinished_is_enforced_by_redis_through_the_relay() {
                super::a_key_held_while_unfinished_is_enforced_by_redis_through_the_relay($engine)
                    .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_key_held_while_unfinished_dies_in_the_outbox_when_relayed_to_sqs() {
                super::a_key_held_while_unfinished_dies_in_the_outbox_when_relayed_to_sqs($engine)
                    .await;
            }

            #[tokio::test]
            async fn a_connection_of_another_engine_is_refused() {
                super::a_connection_of_another_engine_is_refused($engine).await;
            }
        }
    };
}

outbox_suite!(postgres, Engine::Postgres);
outbox_suite!(sqlite, Engine::Sqlite);
