//! With the queue on a broker (SQS, Redis) rather than in the database, an
//! upload writes its job into the outbox in the transaction that records the
//! video, and the relay running beside the server publishes it: the upload
//! succeeds even while the broker is unreachable, and its job follows once
//! the broker is back.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::broker::Broker;
use crate::fixtures;
use crate::harness::{Backend, TestApp, assert_problem};
use crate::upload::assert_nothing_left;

/// Polls `condition` every 50 ms until it holds; panics after `seconds`.
async fn wait_until<F, Fut>(what: &str, seconds: u64, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {seconds} s waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Jobs written by uploads and not yet published.
async fn outbox_pending(app: &TestApp) -> u64 {
    match &app.state.delivery {
        anb_api::JobDelivery::Outbox(outbox) => outbox.pending().await.unwrap(),
        anb_api::JobDelivery::SameDatabase => panic!("this app has no outbox"),
    }
}

async fn upload(app: &TestApp, token: &str) -> Value {
    let bytes = fixtures::mp4(fixtures::VALID_PORTRAIT).await;
    let response = app
        .upload(Some(token), bytes, "Gol de media cancha", None)
        .await;
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "{}",
        response.text().await.unwrap()
    );
    response.json().await.unwrap()
}

async fn an_upload_is_relayed_to_the_broker(backend: Backend, broker: Broker) {
    let app = TestApp::builder()
        .backend(backend)
        .broker(broker)
        .spawn()
        .await;
    let consumer = app.broker.as_ref().unwrap().consumer().await;
    let player = app.player().await;

    let body = upload(&app, &player.token).await;
    assert_eq!(
        body["message"],
        "Video subido correctamente. Procesamiento en curso."
    );
    assert!(!body["task_id"].as_str().unwrap().is_empty());
    let video_id = body["video_id"].as_str().unwrap().to_owned();

    wait_until("the job reaches the broker", 60, || async {
        !consumer.video_ids().is_empty()
    })
    .await;
    wait_until("the outbox is drained", 30, || async {
        outbox_pending(&app).await == 0
    })
    .await;
    assert_eq!(consumer.stop().await, [video_id]);
    app.stop().await;
}

async fn an_upload_while_the_broker_is_down_succeeds_and_its_job_follows(
    backend: Backend,
    broker: Broker,
) {
    let app = TestApp::builder()
        .backend(backend)
        .broker(broker)
        .spawn()
        .await;
    let gate = &app.broker.as_ref().unwrap().gate;
    let player = app.player().await;

    gate.close().await;
    let ready = app.get("/ready", None).await;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json::<Value>().await.unwrap()["queue"], "unavailable");

    let body = upload(&app, &player.token).await;
    let video_id = body["video_id"].as_str().unwrap().to_owned();
    let detail: Value = app
        .get(&format!("/api/videos/{video_id}"), Some(&player.token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(detail["status"], "uploaded");

    // Nothing reaches the broker while it is down; the job waits.
    let consumer = app.broker.as_ref().unwrap().consumer().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        outbox_pending(&app).await,
        1,
        "kept while the broker is down"
    );
    assert!(consumer.video_ids().is_empty());

    gate.open().await;
    let reopened = std::time::Instant::now();
    wait_until(
        "the job reaches the broker once it is back",
        120,
        || async { !consumer.video_ids().is_empty() },
    )
    .await;
    let after = reopened.elapsed();
    wait_until("the outbox is drained", 30, || async {
        outbox_pending(&app).await == 0
    })
    .await;
    // Room for a duplicate to show.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let delivered = consumer.stop().await;
    println!(
        "upload while {broker:?} was down: job delivered {} time(s), {} ms after the broker was back",
        delivered.len(),
        after.as_millis()
    );
    assert_eq!(delivered, [video_id]);
    // The relay opens a fresh connection after a failure; `/ready` probes the
    // state's own, which the Redis client reopens on its own, slower schedule
    // (the first retry after a second, the next ones a minute apart).
    if broker == Broker::Sqs {
        assert_eq!(app.get("/ready", None).await.status(), StatusCode::OK);
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_reaches_sqs_through_the_outbox() {
    an_upload_is_relayed_to_the_broker(Backend::Embedded, Broker::Sqs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_reaches_redis_through_the_outbox_on_postgres_and_s3() {
    an_upload_is_relayed_to_the_broker(Backend::PostgresS3, Broker::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_while_sqs_is_unreachable_succeeds_and_its_job_follows() {
    an_upload_while_the_broker_is_down_succeeds_and_its_job_follows(Backend::Embedded, Broker::Sqs)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_while_redis_is_unreachable_succeeds_on_postgres_and_s3() {
    an_upload_while_the_broker_is_down_succeeds_and_its_job_follows(
        Backend::PostgresS3,
        Broker::Redis,
    )
    .await;
}

/// If the video and its job cannot be committed together, neither is, and
/// the stored original is removed.
#[tokio::test]
async fn an_outbox_that_cannot_be_written_fails_the_upload_and_leaves_nothing() {
    let app = TestApp::builder().broker(Broker::Sqs).spawn().await;
    let player = app.player().await;
    let anb_core::db::Database::Sqlite(pool) = &app.state.db else {
        unreachable!("the embedded default runs on SQLite")
    };
    sqlx::query("DROP TABLE anb_queue_outbox")
        .execute(pool)
        .await
        .unwrap();

    let bytes = fixtures::mp4(fixtures::VALID_PORTRAIT).await;
    let response = app
        .upload(Some(&player.token), bytes, "Gol de media cancha", None)
        .await;
    assert_problem(response, 500, "internal_error").await;
    assert_nothing_left(&app, &player).await;
    app.stop().await;
}
