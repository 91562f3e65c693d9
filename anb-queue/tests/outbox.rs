//! The transactional outbox, on both engines it can live in (PostgreSQL, SQLite): a job
//! committed with the caller's writes reaches the broker even though the broker was down at
//! commit time, a rolled-back job never does, a commit wakes the relay, and relays working
//! side by side publish each job once.

mod support;

use std::{
    collections::HashMap,
    str::FromStr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anb_queue::{Job, JobContext, Outbox, Queue, QueueError, Worker};
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
        let job = Transcode { video_id };
        let insert = "INSERT INTO videos (id) VALUES ($1)";
        match self {
            Self::Postgres(pool) => {
                let mut tx = pool.begin().await.unwrap();
                sqlx::query(insert)
                    .bind(video_id)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                outbox.enqueue_tx(&mut *tx, &job).await.unwrap();
                if commit {
                    tx.commit().await.unwrap();
                } else {
                    tx.rollback().await.unwrap();
                }
            }
            Self::Sqlite(pool) => {
                let mut tx = pool.begin().await.unwrap();
                sqlx::query(insert)
                    .bind(video_id)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                outbox.enqueue_tx(&mut *tx, &job).await.unwrap();
                if commit {
                    tx.commit().await.unwrap();
                } else {
                    tx.rollback().await.unwrap();
                }
            }
        }
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
            async fn relays_side_by_side_publish_every_job_once() {
                super::relays_side_by_side_publish_every_job_once($engine).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_commit_wakes_the_relay_without_polling() {
                super::a_commit_wakes_the_relay_without_polling($engine).await;
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
