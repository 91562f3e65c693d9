//! The transcode job against a real SQLite database, its SQL queue and local storage: what the
//! worker does with an upload the API recorded.

mod common;

use std::time::{Duration, Instant};

use anb_core::config::StorageUrl;
use anb_core::db::{Database, NewVideo, User};
use anb_core::domain::{SignUp, SignUpForm, VideoId, VideoStatus, VideoTitle};
use anb_core::jobs::TranscodeVideo;
use anb_core::storage::{Storage, VideoKeys};
use anb_queue::Queue;
use anb_worker::job::{Outcome, TranscodeJobs, WorkerConfig};
use common::{fast_options, probe, video_fixture};

struct Platform {
    dir: tempfile::TempDir,
    db: Database,
    storage: Storage,
    url: String,
}

async fn platform() -> Platform {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("anb.db").display());
    let db = Database::connect(&url).await.unwrap();
    db.migrate().await.unwrap();
    let storage = Storage::from_url(
        &StorageUrl::Local(dir.path().join("media")),
        false,
        b"a test secret of at least thirty-two bytes",
    )
    .await
    .unwrap();
    Platform {
        dir,
        db,
        storage,
        url,
    }
}

impl Platform {
    async fn player(&self) -> User {
        let form = SignUpForm {
            first_name: "Lucía".into(),
            last_name: "Gómez".into(),
            email: "lucia@example.org".into(),
            password1: "a long password".into(),
            password2: "a long password".into(),
            city: "Bogotá".into(),
            country: "Colombia".into(),
        };
        self.db
            .create_user(&SignUp::parse(&form).unwrap(), "not-a-real-hash")
            .await
            .unwrap()
    }

    /// Stores a generated upload and records it, as the API does.
    async fn upload(&self, owner: &User, seconds: u32, size: (u32, u32)) -> TranscodeVideo {
        let id = VideoId::new();
        let fixture = video_fixture(
            self.dir.path(),
            &format!("{id}.mp4"),
            "color",
            size,
            30,
            seconds,
            &[],
        );
        let key = VideoKeys::new(id.into()).original();
        self.storage.upload_file(&key, &fixture).await.unwrap();
        self.db
            .insert_video(&NewVideo {
                id,
                owner_id: owner.id,
                title: VideoTitle::parse("Crossover drill").unwrap(),
                is_public: true,
                original_key: key.as_str().to_owned(),
            })
            .await
            .unwrap();
        TranscodeVideo {
            video_id: id,
            original_key: key.as_str().to_owned(),
        }
    }

    fn jobs(&self) -> TranscodeJobs {
        TranscodeJobs::new(self.db.clone(), self.storage.clone(), fast_options())
    }
}

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
