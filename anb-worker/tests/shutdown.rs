//! A shutdown is never the video's failure: the `anb-worker` program stopped with SIGTERM
//! in the middle of an encode, more times than the job has attempts, gives the job back
//! each time without counting the attempt, and the video still ends `processed`. Between
//! runs the video waits `uploaded` with progress 0: it shows `processing` only while an
//! attempt runs, and each attempt's progress starts again from 0.

mod common;

use std::time::{Duration, Instant};

use anb_core::domain::VideoStatus;
use anb_core::jobs::TranscodeVideo;
use anb_queue::{Job, Queue};
use common::platform::platform;
use common::process::WorkerProcess;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_encode_more_often_than_the_attempts_still_ends_processed() {
    let platform = platform().await;
    let player = platform.player().await;
    let job = platform.upload(&player, 21, (1920, 1080)).await;
    let queue = Queue::connect(&platform.url).await.unwrap();
    queue.enqueue(&job).await.unwrap();

    for round in 1..=TranscodeVideo::MAX_ATTEMPTS + 1 {
        // A short grace, so the encode cannot finish within it and must be given back.
        let mut worker = WorkerProcess::start(
            &platform,
            &format!("interrupted-{round}"),
            &[("ANB_WORKER_SHUTDOWN_GRACE", "1")],
        );
        let deadline = Instant::now() + Duration::from_secs(300);
        while worker.metric("anb_worker_encodes_running") < 1.0 {
            assert!(
                Instant::now() < deadline,
                "round {round}: no encode started: {}",
                worker.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The attempt claimed the video and records its progress from 0; wait for some, so
        // that giving the job back visibly resets it.
        loop {
            let video = platform.db.find_video(job.video_id).await.unwrap().unwrap();
            assert_eq!(
                video.status,
                VideoStatus::Processing,
                "round {round}: {video:?}\n{}",
                worker.log_text()
            );
            if video.progress_percent >= 5 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: no progress: {}",
                worker.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        worker.signal("TERM");
        assert!(
            worker.exit_within(Duration::from_secs(60)).success(),
            "round {round}: {}",
            worker.log_text()
        );
        let video = platform.db.find_video(job.video_id).await.unwrap().unwrap();
        assert_eq!(
            (video.status, video.progress_percent),
            (VideoStatus::Uploaded, 0),
            "round {round}: the released video waits, its progress back to 0: {video:?}\n{}",
            worker.log_text()
        );
        let stats = queue.stats().await.unwrap();
        assert_eq!(stats.dead, 0, "round {round}: {}", worker.log_text());
        assert_eq!(stats.ready, 1, "round {round}: the job is given back");
    }

    let mut worker = WorkerProcess::start(&platform, "finishing", &[]);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let video = platform.db.find_video(job.video_id).await.unwrap().unwrap();
        if video.status.is_final() {
            assert_eq!(
                video.status,
                VideoStatus::Processed,
                "{video:?}\n{}",
                worker.log_text()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not processed: {}",
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(queue.stats().await.unwrap().dead, 0);
    worker.signal("TERM");
    assert!(worker.exit_within(Duration::from_secs(60)).success());
}
