//! The transcode job against a real SQLite database, its SQL queue and local storage: what the
//! worker does with an upload the API recorded.

mod common;

use std::time::{Duration, Instant};

use anb_core::domain::VideoStatus;
use anb_core::storage::VideoKeys;
use anb_queue::Queue;
use anb_worker::Rejection;
use anb_worker::job::{Outcome, WorkerConfig};
use common::platform::platform;
use common::{fast_options, probe};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_is_processed_through_the_queue_and_redelivery_does_not_reencode() {
    let platform = platform().await;
    let player = platform.player().await;
    let job = platform.upload(&player, 21, (1920, 1080)).await;
    let queue = Queue::connect(&platform.url).await.unwrap();
    queue.enqueue(&job).await.unwrap();

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = WorkerConfig {
        concurrency: 1,
        transcode: fast_options(),
        ..Default::default()
    };
    let worker = tokio::spawn(anb_worker::job::run(
        platform.db.clone(),
        platform.storage.clone(),
        queue.clone(),
        config,
        async {
            let _ = stopped.await;
        },
    ));

    let deadline = Instant::now() + Duration::from_secs(600);
    let video = loop {
        let video = platform.db.find_video(job.video_id).await.unwrap().unwrap();
        if matches!(video.status, VideoStatus::Processed | VideoStatus::Failed) {
            break video;
        }
        assert!(
            Instant::now() < deadline,
            "not processed in time: {video:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();

    assert_eq!(video.status, VideoStatus::Processed, "{video:?}");
    assert_eq!(video.progress_percent, 100);
    assert!(video.processed_at.is_some());
    assert!(
        video.is_published(),
        "a public upload is published once processed"
    );
    let keys = VideoKeys::new(job.video_id.into());
    assert_eq!(
        video.processed_key.as_deref(),
        Some(keys.processed().as_str())
    );
    let local = platform.storage.as_local().unwrap();
    let output = local.file_path(&keys.processed()).await.unwrap();
    let info = probe(&output);
    assert_eq!(info["streams"][0]["width"], 1280);
    assert_eq!(info["streams"][0]["height"], 720);
    assert!(platform.storage.exists(&keys.thumbnail()).await.unwrap());
    assert!(
        platform.storage.exists(&keys.original()).await.unwrap(),
        "the original is kept"
    );
    assert_eq!(queue.stats().await.unwrap().ready, 0);

    // A redelivered job finds the output in place and does no work.
    let modified = std::fs::metadata(&output).unwrap().modified().unwrap();
    let outcome = platform.jobs().process(&job, None).await.unwrap();
    assert_eq!(outcome, Outcome::Skipped("already processed"));
    assert_eq!(
        std::fs::metadata(&output).unwrap().modified().unwrap(),
        modified
    );
}

#[tokio::test]
async fn a_short_upload_fails_permanently_with_its_reason() {
    let platform = platform().await;
    let player = platform.player().await;
    let job = platform.upload(&player, 10, (1920, 1080)).await;

    let outcome = platform.jobs().process(&job, None).await.unwrap();
    let Outcome::Rejected(reason) = outcome else {
        panic!("expected a rejection, got {outcome:?}")
    };
    assert!(reason.contains("at least 20"), "{reason}");

    let video = platform.db.find_video(job.video_id).await.unwrap().unwrap();
    assert_eq!(video.status, VideoStatus::Failed);
    assert_eq!(video.failure_reason.as_deref(), Some(reason.as_str()));
    let keys = VideoKeys::new(job.video_id.into());
    assert!(!platform.storage.exists(&keys.processed()).await.unwrap());
}

#[tokio::test]
async fn a_deleted_video_is_skipped_and_not_resurrected() {
    let platform = platform().await;
    let player = platform.player().await;
    let job = platform.upload(&player, 21, (1080, 1920)).await;
    platform
        .db
        .delete_video(player.id, job.video_id)
        .await
        .unwrap();

    let outcome = platform.jobs().process(&job, None).await.unwrap();
    assert_eq!(outcome, Outcome::Skipped("the video was deleted"));
    assert!(
        platform
            .db
            .find_video(job.video_id)
            .await
            .unwrap()
            .is_none()
    );
    let keys = VideoKeys::new(job.video_id.into());
    assert!(!platform.storage.exists(&keys.processed()).await.unwrap());
}

#[tokio::test]
async fn raised_limits_refuse_an_upload_the_defaults_accept() {
    let platform = platform().await;
    let player = platform.player().await;
    // 21 s at 1920×1080 meets the default rules.
    let job = platform.upload(&player, 21, (1920, 1080)).await;

    let jobs = platform.jobs_with_limits(&[("ANB_UPLOAD_MIN_SECONDS", "25")]);
    let outcome = jobs.process(&job, None).await.unwrap();
    let Outcome::Rejected(reason) = outcome else {
        panic!("expected a rejection, got {outcome:?}")
    };
    assert!(reason.contains("at least 25 s"), "{reason}");
    let video = platform.db.find_video(job.video_id).await.unwrap().unwrap();
    assert_eq!(video.status, VideoStatus::Failed);
    assert_eq!(video.failure_reason.as_deref(), Some(reason.as_str()));
    let keys = VideoKeys::new(job.video_id.into());
    assert!(!platform.storage.exists(&keys.processed()).await.unwrap());
}

#[tokio::test]
async fn an_original_above_the_size_limit_is_refused_before_transcoding() {
    let platform = platform().await;
    let player = platform.player().await;
    let job = platform.upload(&player, 21, (1920, 1080)).await;
    let keys = VideoKeys::new(job.video_id.into());
    let size = platform.storage.size(&keys.original()).await.unwrap();

    let limit = (size - 1).to_string();
    let jobs = platform.jobs_with_limits(&[("ANB_UPLOAD_MAX_BYTES", &limit)]);
    let outcome = jobs.process(&job, None).await.unwrap();
    let expected = Rejection::TooLarge {
        bytes: size,
        maximum: size - 1,
    };
    assert_eq!(outcome, Outcome::Rejected(expected.to_string()));
    let video = platform.db.find_video(job.video_id).await.unwrap().unwrap();
    assert_eq!(video.status, VideoStatus::Failed);
    assert_eq!(video.progress_percent, 0, "no encoding started");
}
