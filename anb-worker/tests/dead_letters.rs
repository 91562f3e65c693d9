//! Every way a transcode job can end in the dead letters leaves its video `failed` with a reason,
//! and a processed video that lost its output is encoded again.

mod common;

use std::time::{Duration, Instant};

use anb_core::db::Database;
use anb_core::domain::VideoStatus;
use anb_core::jobs::TranscodeVideo;
use anb_core::storage::VideoKeys;
use anb_queue::{Job, JobContext, Queue, Worker};
use anb_worker::job::{Outcome, WorkerConfig};
use common::platform::platform;
use common::{fast_options, probe};

const LEASE: Duration = Duration::from_millis(400);

/// A worker that claims the job, marks the video `processing` as the real handler does, and is
/// then killed: its runtime (claim loop, heartbeat, everything) stops at once, without releasing
/// or failing the job, as when the process is killed or the machine lost.
fn claim_and_die(url: &str) {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let db = Database::connect(&url).await.unwrap();
            let queue = Queue::connect(&url).await.unwrap();
            let (claimed, was_claimed) = tokio::sync::mpsc::unbounded_channel();
            let worker = Worker::new(queue)
                .lease(LEASE)
                .concurrency(1)
                .handle(move |job: TranscodeVideo, _ctx: JobContext| {
                    let (db, claimed) = (db.clone(), claimed.clone());
                    async move {
                        db.start_processing(job.video_id).await.unwrap();
                        let _ = claimed.send(());
                        std::future::pending::<()>().await;
                        Ok(())
                    }
                })
                .run_until(std::future::pending());
            let mut was_claimed = was_claimed;
            tokio::select! {
                _ = worker => panic!("the worker stopped by itself"),
                _ = was_claimed.recv() => {}
            }
        });
        runtime.shutdown_background();
    })
    .join()
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_worker_dies_on_every_attempt_leaves_its_video_failed() {
    let platform = platform().await;
    let player = platform.player().await;
    let job = platform.upload(&player, 21, (1920, 1080)).await;
    let queue = Queue::connect(&platform.url).await.unwrap();
    queue.enqueue(&job).await.unwrap();

    // Each attempt's worker dies mid-job; the next one recovers the expired lease and claims
    // the job again, until the queue gives up on it.
    for _ in 0..TranscodeVideo::MAX_ATTEMPTS {
        claim_and_die(&platform.url);
        let video = platform.db.find_video(job.video_id).await.unwrap().unwrap();
        assert_eq!(video.status, VideoStatus::Processing);
    }

    // The real worker: it recovers the last lease (dead-lettering the job) and reconciles.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = WorkerConfig {
        concurrency: 1,
        lease: LEASE,
        reconcile_interval: Some(Duration::from_millis(200)),
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
    let deadline = Instant::now() + Duration::from_secs(60);
    let video = loop {
        let video = platform.db.find_video(job.video_id).await.unwrap().unwrap();
        if video.status != VideoStatus::Processing || Instant::now() > deadline {
            break video;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();

    assert_eq!(video.status, VideoStatus::Failed, "{video:?}");
    assert_eq!(
        video.failure_reason.as_deref(),
        Some(
            "processing failed after 5 attempts: the worker stopped before finishing \
             (it crashed or ran out of time)"
        )
    );
    assert_eq!(queue.stats().await.unwrap().dead, 1);
}

#[tokio::test]
async fn a_reconcile_pass_leaves_videos_without_dead_jobs_alone() {
    let platform = platform().await;
    let player = platform.player().await;
    let job = platform.upload(&player, 21, (1920, 1080)).await;
    let queue = Queue::connect(&platform.url).await.unwrap();
    queue.enqueue(&job).await.unwrap();
    platform.db.start_processing(job.video_id).await.unwrap();

    let report = anb_worker::reconcile::fail_dead_lettered(&platform.db, &queue)
        .await
        .unwrap();
    assert_eq!(report.failed, 0);
    let video = platform.db.find_video(job.video_id).await.unwrap().unwrap();
    assert_eq!(video.status, VideoStatus::Processing);
}

#[tokio::test]
async fn a_processed_video_whose_output_is_gone_is_encoded_again() {
    let platform = platform().await;
    let player = platform.player().await;
    let job = platform.upload(&player, 21, (1920, 1080)).await;
    let jobs = platform.jobs();
    assert_eq!(jobs.process(&job, None).await.unwrap(), Outcome::Processed);
    let before = platform.db.find_video(job.video_id).await.unwrap().unwrap();

    let keys = VideoKeys::new(job.video_id.into());
    platform.storage.delete(&keys.processed()).await.unwrap();
    platform.storage.delete(&keys.thumbnail()).await.unwrap();

    assert_eq!(jobs.process(&job, None).await.unwrap(), Outcome::Repaired);
    let local = platform.storage.as_local().unwrap();
    let output = local.file_path(&keys.processed()).await.unwrap();
    let info = probe(&output);
    assert_eq!(info["streams"][0]["width"], 1280);
    assert!(platform.storage.exists(&keys.thumbnail()).await.unwrap());
    let after = platform.db.find_video(job.video_id).await.unwrap().unwrap();
    assert_eq!(after.status, VideoStatus::Processed);
    assert_eq!(after.processed_at, before.processed_at);
    assert!(after.is_published());

    // With the output back, a further delivery does nothing.
    assert_eq!(
        jobs.process(&job, None).await.unwrap(),
        Outcome::Skipped("already processed")
    );
}
