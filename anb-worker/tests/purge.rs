//! Finishing deletions whose object removal failed: the worker's purge task on a real SQLite
//! database and local storage.

mod common;

use std::time::{Duration, Instant};

use anb_core::storage::VideoKeys;
use anb_queue::Queue;
use anb_worker::job::WorkerConfig;
use anb_worker::purge::{PurgeReport, purge_deleted_videos};
use common::platform::platform;

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
