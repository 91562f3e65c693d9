//! The transactional outbox: a job committed with the caller's writes reaches the broker
//! even though the broker was down at commit time.

mod support;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anb_queue::{Job, JobContext, Outbox, Queue, Worker};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use support::{RunningWorker, TestDb, aws_endpoint, sqs_client, wait_until};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Transcode {
    video_id: i64,
}

impl Job for Transcode {
    const NAME: &'static str = "transcode";
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

async fn insert_video(pool: &PgPool, video_id: i64, job: &Transcode, commit: bool) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO videos (id) VALUES ($1)")
        .bind(video_id)
        .execute(&mut *tx)
        .await
        .unwrap();
    Outbox::enqueue_tx(&mut tx, job).await.unwrap();
    if commit {
        tx.commit().await.unwrap();
    } else {
        tx.rollback().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_committed_while_the_broker_is_down_arrives_once_it_is_back() {
    let broker = TestDb::sqs().await;
    let database = TestDb::postgres().await;
    let pool = PgPool::connect(&database.url).await.unwrap();
    sqlx::query("CREATE TABLE videos (id BIGINT PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    let outbox = Outbox::setup(pool.clone()).await.unwrap();

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
    insert_video(&pool, 1, &Transcode { video_id: 1 }, true).await;
    insert_video(&pool, 2, &Transcode { video_id: 2 }, false).await;
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
    let worker = RunningWorker::spawn(Worker::new(consumer_queue.clone()).handle({
        let seen = seen.clone();
        move |job: Transcode, _ctx: JobContext| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(job);
                Ok(())
            }
        }
    }));
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
        "outbox relay: job delivered {} time(s), {duplicates} duplicate(s)",
        seen.len()
    );
    assert!(
        seen.iter().all(|job| job.video_id == 1),
        "only the committed job arrives: {seen:?}"
    );
    assert!(!seen.is_empty());
    pool.close().await;
    database.cleanup().await;
    broker.cleanup().await;
}
