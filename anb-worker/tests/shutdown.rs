//! The `anb-worker` program stopped in the middle of an encode, as scale-in, deploys and
//! crashes stop it.
//!
//! A shutdown is never the video's failure: the program stopped with SIGTERM
//! in the middle of an encode, more times than the job has attempts, gives the job back
//! each time without counting the attempt, and the video still ends `processed`. Between
//! runs the video waits `uploaded` with progress 0: it shows `processing` only while an
//! attempt runs, and each attempt's progress starts again from 0.
//!
//! A killed worker (SIGKILL: out of memory, a lost instance) leaves no object behind, and its
//! job runs again elsewhere once its lease expires: the video ends `processed` after exactly
//! one further encode.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anb_core::domain::VideoStatus;
use anb_core::jobs::TranscodeVideo;
use anb_core::storage::VideoKeys;
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

    // The purge, a periodic job of the same queue, is off: the queue holds only the transcode.
    let no_purge = ("ANB_WORKER_PURGE_INTERVAL", "0");
    for round in 1..=TranscodeVideo::MAX_ATTEMPTS + 1 {
        // A short grace, so the encode cannot finish within it and must be given back.
        let mut worker = WorkerProcess::start(
            &platform,
            &format!("interrupted-{round}"),
            &[("ANB_WORKER_SHUTDOWN_GRACE", "1"), no_purge],
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

    let mut worker = WorkerProcess::start(&platform, "finishing", &[no_purge]);
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

/// Every file under `dir`, relative to it, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(next) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path.strip_prefix(dir).unwrap().to_owned());
            }
        }
    }
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_encode_ends_processed_after_exactly_one_more_encode() {
    let platform = platform().await;
    let player = platform.player().await;
    let job = platform.upload(&player, 21, (1920, 1080)).await;
    let queue = Queue::connect(&platform.url).await.unwrap();
    queue.enqueue(&job).await.unwrap();
    let keys = VideoKeys::new(job.video_id.into());
    let media = platform.dir.path().join("media");
    let original = PathBuf::from(keys.original().as_str());
    // A short lease, so the killed worker's job is recovered within seconds.
    let work = platform.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let work_dir = work.to_str().unwrap();
    // The purge, a periodic job of the same queue, is off: the queue holds only the transcode.
    let settings = [
        ("ANB_WORKER_LEASE", "3"),
        ("TMPDIR", work_dir),
        ("ANB_WORKER_PURGE_INTERVAL", "0"),
    ];

    let killed = WorkerProcess::start(&platform, "killed", &settings);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let video = platform.db.find_video(job.video_id).await.unwrap().unwrap();
        if video.status == VideoStatus::Processing && video.progress_percent >= 5 {
            break;
        }
        assert!(
            !video.status.is_final() && Instant::now() < deadline,
            "no encode under way: {video:?}\n{}",
            killed.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(killed.metric("anb_worker_encodes_running"), 1.0);
    killed.signal("KILL");
    let mut killed = killed;
    assert!(!killed.exit_within(Duration::from_secs(30)).success());

    // Nothing of the unfinished encode reached storage: only the original is there.
    assert_eq!(files_under(&media), std::slice::from_ref(&original));
    assert!(!platform.storage.exists(&keys.processed()).await.unwrap());
    assert!(!platform.storage.exists(&keys.thumbnail()).await.unwrap());
    let video = platform.db.find_video(job.video_id).await.unwrap().unwrap();
    assert_eq!(video.status, VideoStatus::Processing, "{video:?}");

    let mut survivor = WorkerProcess::start(&platform, "survivor", &settings);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        // The queue first, then the video: a job gone from the queue finished its video.
        let stats = queue.stats().await.unwrap();
        let video = platform.db.find_video(job.video_id).await.unwrap().unwrap();
        assert!(
            video.status.is_final() || stats.ready + stats.in_flight + stats.delayed > 0,
            "the job left the queue, the video unfinished: {video:?} {stats:?}\n{}",
            survivor.log_text()
        );
        if video.status.is_final() {
            assert_eq!(
                (video.status, video.progress_percent),
                (VideoStatus::Processed, 100),
                "{video:?}\n{}",
                survivor.log_text()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not processed: {video:?}\n{}",
            survivor.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The outcome is counted right after the video is marked processed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while survivor.metric("anb_worker_jobs_total{outcome=\"processed\"}") < 1.0 {
        assert!(Instant::now() < deadline, "{}", survivor.get("/metrics").1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let a duplicate delivery, if there were one, show up before counting.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, metrics) = survivor.get("/metrics");
    let value = |sample: &str| common::process::metric_value(&metrics, sample);
    assert_eq!(value("anb_worker_encodes_total"), 1.0, "{metrics}");
    assert_eq!(value("anb_worker_encodes_running"), 0.0, "{metrics}");
    assert_eq!(
        value("anb_worker_jobs_total{outcome=\"processed\"}"),
        1.0,
        "{metrics}"
    );
    let stats = queue.stats().await.unwrap();
    assert_eq!(
        (stats.ready, stats.in_flight, stats.delayed, stats.dead),
        (0, 0, 0, 0),
        "{stats:?}"
    );

    // Exactly the three objects, complete: no partial upload left aside.
    let mut expected = vec![
        original,
        PathBuf::from(keys.processed().as_str()),
        PathBuf::from(keys.thumbnail().as_str()),
    ];
    expected.sort();
    assert_eq!(files_under(&media), expected);
    let output = media.join(keys.processed().as_str());
    let probed = common::probe(&output);
    assert_eq!(probed["streams"][0]["codec_name"], "h264", "{probed}");
    assert!(
        common::number(&probed["format"]["duration"]) > 20.0,
        "{probed}"
    );

    survivor.signal("TERM");
    assert!(survivor.exit_within(Duration::from_secs(60)).success());
}
