//! Finishing deletions whose object removal failed: the worker's purge on a real SQLite
//! database, its SQL queue and local storage, in process and as two worker processes.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anb_core::storage::VideoKeys;
use anb_queue::Queue;
use anb_worker::job::WorkerConfig;
use anb_worker::purge::{PurgeReport, purge_deleted_videos};
use common::platform::platform;
use common::process::WorkerProcess;

#[tokio::test]
async fn objects_left_by_a_deletion_are_removed_then_the_row() {
    let platform = platform().await;
    let player = platform.player().await;
    let deleted = platform.upload(&player, 1, (320, 240)).await;
    let kept = platform.upload(&player, 1, (320, 240)).await;
    let keys = VideoKeys::new(deleted.video_id.into());
    // An output the row does not name (the video was deleted before it was recorded): only
    // the removal of the whole folder finds it.
    let stray = keys.processed();
    let stray_file = platform.dir.path().join("stray.mp4");
    std::fs::write(&stray_file, b"partial output").unwrap();
    platform
        .storage
        .upload_file(&stray, &stray_file)
        .await
        .unwrap();

    // The deletion took the video out of service, but its objects could not be removed then.
    platform
        .db
        .delete_video(player.id, deleted.video_id)
        .await
        .unwrap();
    assert_eq!(
        platform.db.videos_awaiting_purge(10).await.unwrap().len(),
        1
    );

    let report = purge_deleted_videos(&platform.db, &platform.storage)
        .await
        .unwrap();
    assert_eq!(
        report,
        PurgeReport {
            purged: 1,
            deferred: 0
        }
    );
    assert!(!platform.storage.exists(&keys.original()).await.unwrap());
    assert!(!platform.storage.exists(&stray).await.unwrap());
    assert!(
        platform
            .db
            .videos_awaiting_purge(10)
            .await
            .unwrap()
            .is_empty()
    );
    // A live video is not touched.
    let kept_keys = VideoKeys::new(kept.video_id.into());
    assert!(
        platform
            .storage
            .exists(&kept_keys.original())
            .await
            .unwrap()
    );
    assert!(
        platform
            .db
            .find_video(kept.video_id)
            .await
            .unwrap()
            .is_some()
    );

    // Nothing is left to do.
    let again = purge_deleted_videos(&platform.db, &platform.storage)
        .await
        .unwrap();
    assert_eq!(again, PurgeReport::default());
}

#[tokio::test]
async fn a_video_whose_objects_cannot_be_removed_keeps_its_row_until_they_can() {
    let platform = platform().await;
    let player = platform.player().await;
    let job = platform.upload(&player, 1, (320, 240)).await;
    let keys = VideoKeys::new(job.video_id.into());
    platform
        .db
        .delete_video(player.id, job.video_id)
        .await
        .unwrap();

    // Storage refuses the removal: a directory stands where the original's file was.
    let local = platform.storage.as_local().unwrap();
    let original = local.file_path(&keys.original()).await.unwrap();
    std::fs::remove_file(&original).unwrap();
    std::fs::create_dir(&original).unwrap();
    std::fs::write(original.join("blocker"), b"").unwrap();

    let report = purge_deleted_videos(&platform.db, &platform.storage)
        .await
        .unwrap();
    assert_eq!(
        report,
        PurgeReport {
            purged: 0,
            deferred: 1
        }
    );
    assert_eq!(
        platform.db.videos_awaiting_purge(10).await.unwrap().len(),
        1
    );

    // Once storage cooperates, the next pass finishes the deletion.
    std::fs::remove_dir_all(&original).unwrap();
    let report = purge_deleted_videos(&platform.db, &platform.storage)
        .await
        .unwrap();
    assert_eq!(report.purged, 1);
    assert!(
        platform
            .db
            .videos_awaiting_purge(10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn the_running_worker_purges_periodically() {
    let platform = platform().await;
    let player = platform.player().await;
    let job = platform.upload(&player, 1, (320, 240)).await;
    let keys = VideoKeys::new(job.video_id.into());
    let queue = Queue::connect(&platform.url).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(anb_worker::job::run(
        platform.db.clone(),
        platform.storage.clone(),
        queue,
        WorkerConfig {
            concurrency: 1,
            purge_interval: Some(Duration::from_millis(200)),
            ..Default::default()
        },
        async {
            let _ = stopped.await;
        },
    ));

    // Deleted while the worker runs (most likely after its first pass).
    tokio::time::sleep(Duration::from_millis(300)).await;
    platform
        .db
        .delete_video(player.id, job.video_id)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !platform
        .db
        .videos_awaiting_purge(10)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the deleted video was not purged within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!platform.storage.exists(&keys.original()).await.unwrap());
    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// Two worker processes on one queue, purging every second: the purge is a periodic job of
/// the queue, so the two together run one pass per tick, not one each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_purge_once_per_tick_between_them() {
    let platform = platform().await;
    let player = platform.player().await;
    let job = platform.upload(&player, 1, (320, 240)).await;
    let keys = VideoKeys::new(job.video_id.into());
    // Every pass counted below comes from a tick from this second on.
    let first_tick_ms = now_ms() / 1000 * 1000;
    let every_second = [("ANB_WORKER_PURGE_INTERVAL", "1")];
    let mut first = WorkerProcess::start(&platform, "first", &every_second);
    let mut second = WorkerProcess::start(&platform, "second", &every_second);
    let passes = |first: &WorkerProcess, second: &WorkerProcess| {
        let sample = "anb_worker_purge_passes_total{result=\"ok\"}";
        first.metric(sample) + second.metric(sample)
    };

    platform
        .db
        .delete_video(player.id, job.video_id)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while passes(&first, &second) < 6.0 {
        assert!(
            Instant::now() < deadline,
            "six passes did not run within 60 s: {}\n{}",
            first.log_text(),
            second.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let passes = passes(&first, &second);
    let ticks = (now_ms() / 1000 * 1000 - first_tick_ms) / 1000 + 1;
    assert!(
        passes <= ticks as f64,
        "{passes} passes in {ticks} ticks: the workers purged on their own"
    );
    assert!(
        platform
            .db
            .videos_awaiting_purge(10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(!platform.storage.exists(&keys.original()).await.unwrap());

    for worker in [&first, &second] {
        worker.signal("TERM");
    }
    for worker in [&mut first, &mut second] {
        assert!(worker.exit_within(Duration::from_secs(60)).success());
    }
}

/// On SQS, which has no unique keys, the purge cannot be a periodic job: each worker runs its
/// own passes, and deleted videos are purged all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqs_each_worker_purges_on_its_own() {
    let platform = platform().await;
    let player = platform.player().await;
    let job = platform.upload(&player, 1, (320, 240)).await;
    let keys = VideoKeys::new(job.video_id.into());
    let (client, url) = common::sqs_queue().await;
    let queue = Queue::from_sqs_client(client.clone(), &url).await.unwrap();
    assert!(!queue.supports_unique_jobs());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(anb_worker::job::run(
        platform.db.clone(),
        platform.storage.clone(),
        queue,
        WorkerConfig {
            concurrency: 1,
            purge_interval: Some(Duration::from_millis(200)),
            reconcile_interval: None,
            ..Default::default()
        },
        async {
            let _ = stopped.await;
        },
    ));

    platform
        .db
        .delete_video(player.id, job.video_id)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !platform
        .db
        .videos_awaiting_purge(10)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(
            !worker.is_finished(),
            "the worker stopped: {:?}",
            worker.await
        );
        assert!(
            Instant::now() < deadline,
            "the deleted video was not purged within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!platform.storage.exists(&keys.original()).await.unwrap());
    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();
    common::delete_sqs_queue(&client, &url).await;
}

/// The purge runs in a queue of its own: with the worker's one transcode slot busy encoding,
/// a deleted video is still purged at the next tick, long before the encode ends. In one
/// queue with the transcodes, the pass waited behind every transcode ahead of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_pass_does_not_wait_behind_a_running_transcode() {
    let platform = platform().await;
    let player = platform.player().await;
    let encoding = platform.upload(&player, 21, (1920, 1080)).await;
    let deleted = platform.upload(&player, 1, (320, 240)).await;
    let queue = Queue::connect(&platform.url).await.unwrap();
    queue.enqueue(&encoding).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(anb_worker::job::run(
        platform.db.clone(),
        platform.storage.clone(),
        queue,
        WorkerConfig {
            concurrency: 1,
            purge_interval: Some(Duration::from_millis(500)),
            transcode: common::fast_options(),
            ..Default::default()
        },
        async {
            let _ = stopped.await;
        },
    ));
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let video = platform
            .db
            .find_video(encoding.video_id)
            .await
            .unwrap()
            .unwrap();
        if video.status == anb_core::domain::VideoStatus::Processing && video.progress_percent >= 5
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the encode did not start: {video:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    platform
        .db
        .delete_video(player.id, deleted.video_id)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !platform
        .db
        .videos_awaiting_purge(10)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the deleted video was not purged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let video = platform
        .db
        .find_video(encoding.video_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        video.status,
        anb_core::domain::VideoStatus::Processing,
        "purged while the transcode still ran: {video:?}"
    );
    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();
}
