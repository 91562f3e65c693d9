//! The `anb-worker` program on its own: it processes an upload and serves `/metrics` and
//! `/health` over HTTP on `ANB_WORKER_METRICS_ADDR`.

mod common;

use std::time::{Duration, Instant};

use anb_core::domain::VideoStatus;
use anb_queue::Queue;
use common::platform::platform;
use common::process::WorkerProcess;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_process_serves_metrics_and_health() {
    let platform = platform().await;
    let player = platform.player().await;
    let job = platform.upload(&player, 21, (1920, 1080)).await;
    let queue = Queue::connect(&platform.url).await.unwrap();
    queue.enqueue(&job).await.unwrap();

    let mut worker = WorkerProcess::start(&platform, "worker", &[]);
    let (status, body) = worker.get("/health");
    assert_eq!(status, 200);
    assert!(body.contains("\"ok\""), "{body}");

    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let video = platform.db.find_video(job.video_id).await.unwrap().unwrap();
        if video.status.is_final() {
            assert_eq!(video.status, VideoStatus::Processed, "{video:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not processed: {}",
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The outcome is counted right after the video is marked processed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while worker.metric("anb_worker_jobs_total{outcome=\"processed\"}") < 1.0 {
        assert!(Instant::now() < deadline, "{}", worker.get("/metrics").1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, metrics) = worker.get("/metrics");
    let value = |sample: &str| common::process::metric_value(&metrics, sample);
    assert_eq!(value("anb_worker_encodes_total"), 1.0, "{metrics}");
    assert_eq!(value("anb_worker_encode_seconds_count"), 1.0, "{metrics}");
    assert_eq!(value("anb_worker_encodes_running"), 0.0, "{metrics}");
    assert!(
        value("anb_worker_encode_frames_per_second") > 0.0,
        "{metrics}"
    );
    // The queue depth gauges are refreshed every 15 s, first at a random point of the first
    // interval.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = worker.get("/metrics");
        if metrics.contains("anb_queue_jobs{state=\"ready\"}") {
            break;
        }
        assert!(Instant::now() < deadline, "no queue depth: {metrics}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(worker.get("/nowhere").0, 404);

    worker.signal("TERM");
    assert!(worker.exit_within(Duration::from_secs(60)).success());
}

/// A player deletes a video while the worker encodes it. The queue is the database, so the
/// API's deletion cancels the transcode through the queue (the worker does not watch the row
/// then): the handler is told at the next lease renewal, the encode stops, nothing it wrote
/// stays, and the job is removed, not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_video_mid_encode_cancels_its_transcode_through_the_queue() {
    let platform = platform().await;
    let player = platform.player().await;
    let job = platform.upload(&player, 21, (1920, 1080)).await;
    let queue = Queue::connect(&platform.url).await.unwrap();
    queue.enqueue_unique(&job, job.unique()).await.unwrap();

    // A 3 s lease: renewed, and cancellations read, every second.
    let mut worker = WorkerProcess::start(
        &platform,
        "worker",
        &[
            ("ANB_WORKER_LEASE", "3"),
            ("ANB_WORKER_PURGE_INTERVAL", "0"),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let video = platform.db.find_video(job.video_id).await.unwrap().unwrap();
        if video.status == VideoStatus::Processing && video.progress_percent >= 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no progress: {video:?}\n{}",
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anb_core::videos::delete_video(
        &platform.db,
        &platform.storage,
        &queue,
        player.id,
        job.video_id,
    )
    .await
    .unwrap();

    let deadline = Instant::now() + Duration::from_secs(120);
    while worker.metric("anb_worker_jobs_total{outcome=\"deleted\"}") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the transcode did not stop: {}",
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for_empty_queue(&queue).await;
    assert_eq!(
        worker.metric("anb_queue_jobs_total{job=\"anb.transcode_video\",outcome=\"cancelled\"}"),
        1.0,
        "the queue's cancellation stopped it: {}",
        worker.log_text()
    );
    assert_eq!(
        worker.metric("anb_worker_encode_seconds_count"),
        0.0,
        "no encode ran to its end"
    );
    assert_eq!(worker.metric("anb_worker_encodes_running"), 0.0);
    let stats = queue.stats().await.unwrap();
    assert_eq!(
        (stats.ready, stats.delayed, stats.dead),
        (0, 0, 0),
        "{stats:?}"
    );
    let keys = anb_core::storage::VideoKeys::new(job.video_id.into());
    assert!(!platform.storage.exists(&keys.processed()).await.unwrap());
    assert!(!platform.storage.exists(&keys.thumbnail()).await.unwrap());
    worker.signal("TERM");
    assert!(worker.exit_within(Duration::from_secs(60)).success());
}

async fn wait_for_empty_queue(queue: &Queue) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = queue.stats().await.unwrap();
        if stats.ready + stats.in_flight + stats.delayed == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{stats:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
