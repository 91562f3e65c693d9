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
