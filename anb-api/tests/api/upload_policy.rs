//! Uploads beyond the file's own limits: retries under an `Idempotency-Key`,
//! the per-player rate and quota, and the clean-up of uploads that never
//! became videos — on the embedded default (SQLite, local directory) and on
//! PostgreSQL with S3.

use std::time::Duration;

use anb_api::settings::{Rate, UploadPolicy};
use anb_core::db::{
    FinishedUpload, IdempotencyKey, NewVideo, UploadBegun, UploadQuota, UploadStart,
};
use anb_core::domain::{UserId, VideoId, VideoTitle};
use anb_core::storage::{ObjectKey, VideoKeys};
use reqwest::multipart::{Form, Part};
use reqwest::{Response, StatusCode};
use serde_json::Value;

use crate::fixtures;
use crate::harness::{Backend, Player, TestApp, assert_problem};

fn no_limits() -> UploadPolicy {
    UploadPolicy {
        sweep_interval: None,
        ..UploadPolicy::unlimited()
    }
}

async fn app_on(backend: Backend, policy: UploadPolicy) -> TestApp {
    TestApp::builder()
        .backend(backend)
        .upload_policy(policy)
        .spawn()
        .await
}

/// Uploads the valid fixture with `title`, under `key` if given.
async fn upload_with_key(
    app: &TestApp,
    player: &Player,
    key: Option<&str>,
    title: &str,
) -> Response {
    let bytes = fixtures::mp4(fixtures::VALID_PORTRAIT).await;
    let form = Form::new()
        .text("title", title.to_owned())
        .part("video_file", Part::bytes(bytes).file_name("clip.mp4"));
    let mut request = app
        .client
        .post(app.url("/api/videos/upload"))
        .bearer_auth(&player.token)
        .multipart(form);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    request.send().await.unwrap()
}

async fn created(response: Response) -> (Value, Option<String>) {
    let status = response.status();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    (body, replayed)
}

async fn videos_of(app: &TestApp, player: &Player) -> Vec<Value> {
    app.get("/api/videos", Some(&player.token))
        .await
        .json()
        .await
        .unwrap()
}

/// The video folders in storage.
async fn stored_folders(app: &TestApp) -> Vec<String> {
    let mut folders: Vec<String> = app
        .state
        .storage
        .list(&ObjectKey::parse("videos").unwrap())
        .await
        .unwrap()
        .into_iter()
        .filter_map(|o| o.key.as_str().split('/').nth(1).map(str::to_owned))
        .collect();
    folders.sort();
    folders.dedup();
    folders
}

async fn retried_uploads_return_the_first_answer(backend: Backend) {
    let app = app_on(backend, no_limits()).await;
    let player = app.player().await;
    let key = uuid::Uuid::new_v4().to_string();

    let (first, replayed) =
        created(upload_with_key(&app, &player, Some(&key), "Mi mejor jugada").await).await;
    assert_eq!(replayed, None, "a first answer is not a replay");
    // The client lost the 201 and sends the same request again.
    let (again, replayed) =
        created(upload_with_key(&app, &player, Some(&key), "Mi mejor jugada").await).await;
    assert_eq!(again["video_id"], first["video_id"]);
    assert_eq!(again["task_id"], first["task_id"]);
    assert_eq!(replayed.as_deref(), Some("true"));

    // One video, one job, one stored original.
    let videos = videos_of(&app, &player).await;
    assert_eq!(videos.len(), 1, "{videos:?}");
    assert_eq!(videos[0]["video_id"], first["video_id"]);
    assert_eq!(videos[0]["status"], "uploaded");
    assert_eq!(app.state.queue.stats().await.unwrap().ready, 1);
    assert_eq!(
        stored_folders(&app).await,
        [first["video_id"].as_str().unwrap()]
    );

    // The same key with another form is refused, and stores nothing.
    let other = upload_with_key(&app, &player, Some(&key), "Otra jugada distinta").await;
    let problem = assert_problem(other, 422, "idempotency_key_reused").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("clave de idempotencia"),
        "{problem}"
    );
    assert_eq!(videos_of(&app, &player).await.len(), 1);

    // Keys are the player's own: another player's upload under the same key
    // is a new video.
    let stranger = app.player().await;
    let (theirs, replayed) =
        created(upload_with_key(&app, &stranger, Some(&key), "Mi mejor jugada").await).await;
    assert_ne!(theirs["video_id"], first["video_id"]);
    assert_eq!(replayed, None);

    // Without a key every upload is a new video.
    created(upload_with_key(&app, &player, None, "Mi mejor jugada").await).await;
    created(upload_with_key(&app, &player, None, "Mi mejor jugada").await).await;
    assert_eq!(videos_of(&app, &player).await.len(), 3);
    assert_eq!(app.state.queue.stats().await.unwrap().ready, 4);
}

#[tokio::test]
async fn retried_uploads_return_the_first_answer_on_the_embedded_default() {
    retried_uploads_return_the_first_answer(Backend::Embedded).await;
}

#[tokio::test]
async fn retried_uploads_return_the_first_answer_on_postgres_and_s3() {
    retried_uploads_return_the_first_answer(Backend::PostgresS3).await;
}

#[tokio::test]
async fn an_answer_is_kept_only_until_its_key_expires() {
    let app = app_on(
        Backend::Embedded,
        UploadPolicy {
            idempotency_ttl: Duration::from_millis(300),
            ..no_limits()
        },
    )
    .await;
    let player = app.player().await;
    let (first, _) =
        created(upload_with_key(&app, &player, Some("k-1"), "Mi mejor jugada").await).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (later, replayed) =
        created(upload_with_key(&app, &player, Some("k-1"), "Mi mejor jugada").await).await;
    assert_ne!(later["video_id"], first["video_id"]);
    assert_eq!(replayed, None);
}

#[tokio::test]
async fn a_malformed_idempotency_key_is_refused_by_name() {
    let app = app_on(Backend::Embedded, no_limits()).await;
    let player = app.player().await;
    for key in ["con espacio", &"k".repeat(256), "clave-ñ"] {
        let response = upload_with_key(&app, &player, Some(key), "Mi mejor jugada").await;
        let problem = assert_problem(response, 400, "validation_failed").await;
        assert_eq!(
            problem["errors"][0]["field"], "Idempotency-Key",
            "{problem}"
        );
    }
    // Two lines of the header are two keys: which one would the retry mean?
    let bytes = fixtures::mp4(fixtures::VALID_PORTRAIT).await;
    let response = app
        .client
        .post(app.url("/api/videos/upload"))
        .bearer_auth(&player.token)
        .header("Idempotency-Key", "one")
        .header("Idempotency-Key", "two")
        .multipart(
            Form::new()
                .text("title", "Mi mejor jugada")
                .part("video_file", Part::bytes(bytes).file_name("clip.mp4")),
        )
        .send()
        .await
        .unwrap();
    let problem = assert_problem(response, 400, "validation_failed").await;
    assert_eq!(
        problem["errors"][0]["field"], "Idempotency-Key",
        "{problem}"
    );
    crate::upload::assert_nothing_left(&app, &player).await;

    // Path and SQL text is just an opaque key.
    let hostile = "../../etc/passwd';DELETE/**/FROM/**/videos;--";
    let (first, _) =
        created(upload_with_key(&app, &player, Some(hostile), "Mi mejor jugada").await).await;
    let (again, replayed) =
        created(upload_with_key(&app, &player, Some(hostile), "Mi mejor jugada").await).await;
    assert_eq!(again["video_id"], first["video_id"]);
    assert_eq!(replayed.as_deref(), Some("true"));
    assert_eq!(videos_of(&app, &player).await.len(), 1);
}

#[tokio::test]
async fn uploads_beyond_the_per_player_rate_get_429_with_retry_after() {
    let app = app_on(
        Backend::Embedded,
        UploadPolicy {
            rate_per_user: Some(Rate {
                count: 2.try_into().unwrap(),
                period: Duration::from_secs(3600),
            }),
            ..no_limits()
        },
    )
    .await;
    let player = app.player().await;
    for _ in 0..2 {
        let response = app
            .upload(
                Some(&player.token),
                b"not a video".to_vec(),
                "Mi mejor jugada",
                None,
            )
            .await;
        assert_problem(response, 400, "invalid_file_type").await;
    }
    let response = app
        .upload(
            Some(&player.token),
            b"not a video".to_vec(),
            "Mi mejor jugada",
            None,
        )
        .await;
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=1800).contains(&retry_after), "{retry_after}");
    let problem = assert_problem(response, 429, "rate_limited").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .starts_with("Demasiadas")
    );
    // The rate is per player.
    let other = app.player().await;
    let response = app
        .upload(
            Some(&other.token),
            b"not a video".to_vec(),
            "Mi mejor jugada",
            None,
        )
        .await;
    assert_problem(response, 400, "invalid_file_type").await;
}

async fn uploads_past_the_quota_are_refused(backend: Backend) {
    let size = fixtures::mp4(fixtures::VALID_PORTRAIT).await.len() as u64;
    // Room for two videos by count, and for one and a half by bytes.
    let app = app_on(
        backend,
        UploadPolicy {
            quota: UploadQuota {
                max_bytes: Some(size * 3 / 2),
                max_videos: Some(2),
            },
            ..no_limits()
        },
    )
    .await;
    let player = app.player().await;
    let (first, _) = created(upload_with_key(&app, &player, None, "Mi mejor jugada").await).await;
    let second = upload_with_key(&app, &player, None, "Mi mejor jugada").await;
    let problem = assert_problem(second, 403, "upload_quota_exceeded").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("cuota"),
        "{problem}"
    );
    assert_eq!(videos_of(&app, &player).await.len(), 1);
    assert_eq!(
        stored_folders(&app).await.len(),
        1,
        "nothing stored for the refusal"
    );

    // Deleting frees the room.
    let id = first["video_id"].as_str().unwrap();
    let deleted = app
        .delete(&format!("/api/videos/{id}"), Some(&player.token))
        .await;
    assert_eq!(deleted.status(), StatusCode::OK);
    created(upload_with_key(&app, &player, None, "Mi mejor jugada").await).await;

    // The count: with bytes unlimited, a third live video is one too many.
    let app = app_on(
        Backend::Embedded,
        UploadPolicy {
            quota: UploadQuota {
                max_bytes: None,
                max_videos: Some(2),
            },
            ..no_limits()
        },
    )
    .await;
    let player = app.player().await;
    for _ in 0..2 {
        created(upload_with_key(&app, &player, None, "Mi mejor jugada").await).await;
    }
    let third = upload_with_key(&app, &player, None, "Mi mejor jugada").await;
    let problem = assert_problem(third, 403, "upload_quota_exceeded").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("máximo de 2 videos"),
        "{problem}"
    );
}

#[tokio::test]
async fn uploads_past_the_quota_are_refused_on_the_embedded_default() {
    uploads_past_the_quota_are_refused(Backend::Embedded).await;
}

#[tokio::test]
async fn uploads_past_the_quota_are_refused_on_postgres_and_s3() {
    uploads_past_the_quota_are_refused(Backend::PostgresS3).await;
}

/// Stores a stand-in original for `video`.
async fn store_original(app: &TestApp, video: VideoId) -> ObjectKey {
    let key = VideoKeys::new(video.as_uuid()).original();
    app.state
        .storage
        .upload(&key, &b"an original"[..], 1 << 20)
        .await
        .unwrap();
    key
}

async fn the_sweep_removes_what_never_became_a_video(backend: Backend) {
    let app = app_on(backend, no_limits()).await;
    let player = app.player().await;
    let owner: UserId = player.user_id.parse().unwrap();
    let kept = app.uploaded_video(&player, false).await;

    // An original stored with no row at all (a process that died between the
    // storage write and its record, before records existed, or a bug).
    let orphan = VideoId::new();
    store_original(&app, orphan).await;
    // An upload recorded as in progress whose process died after storing.
    let stale = VideoId::new();
    let stale_key = VideoKeys::new(stale.as_uuid()).original();
    let begun = app
        .state
        .db
        .begin_upload(&UploadStart {
            video_id: stale,
            owner_id: owner,
            original_key: stale_key.as_str().to_owned(),
            original_bytes: 11,
            idempotency: Some(IdempotencyKey {
                key: "stale-key".into(),
                fingerprint: "f".into(),
            }),
            quota: UploadQuota::default(),
        })
        .await
        .unwrap();
    assert_eq!(begun, UploadBegun::Started);
    store_original(&app, stale).await;
    // A deleted video waiting for its purge is the purge's business.
    let deleted = app.uploaded_video(&player, false).await;
    app.state
        .db
        .delete_video(owner, deleted.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(stored_folders(&app).await.len(), 4);

    // Within the grace period nothing goes.
    let report =
        anb_core::uploads::sweep(&app.state.db, &app.state.storage, Duration::from_secs(3600))
            .await
            .unwrap();
    assert_eq!((report.stale_uploads, report.orphaned_folders), (0, 0));
    assert_eq!(stored_folders(&app).await.len(), 4);

    // Past it, the orphan and the stale upload go; videos stay.
    let report = anb_core::uploads::sweep(&app.state.db, &app.state.storage, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!((report.stale_uploads, report.orphaned_folders), (1, 1));
    let mut expected = vec![kept.clone(), deleted.clone()];
    expected.sort();
    assert_eq!(stored_folders(&app).await, expected);
    assert!(!app.state.db.video_folder_in_use(stale).await.unwrap());

    // The stale upload's commit, arriving late, is refused rather than
    // recording a video without its original.
    let mut tx = app.state.db.begin().await.unwrap();
    let late = tx
        .finish_upload(&FinishedUpload {
            video: NewVideo {
                id: stale,
                owner_id: owner,
                title: VideoTitle::parse("Una subida tardía").unwrap(),
                is_public: false,
                original_key: stale_key.as_str().to_owned(),
            },
            original_bytes: 11,
            task_id: "1".into(),
            idempotency: None,
        })
        .await;
    assert!(
        matches!(late, Err(anb_core::db::DbError::UploadAbandoned)),
        "{late:?}"
    );
    drop(tx);

    // The kept video still plays its original.
    let detail: Value = app
        .get(&format!("/api/videos/{kept}"), Some(&player.token))
        .await
        .json()
        .await
        .unwrap();
    assert!(detail["original_url"].is_string(), "{detail}");
}

#[tokio::test]
async fn the_sweep_removes_what_never_became_a_video_on_the_local_directory() {
    the_sweep_removes_what_never_became_a_video(Backend::Embedded).await;
}

#[tokio::test]
async fn the_sweep_removes_what_never_became_a_video_on_s3() {
    the_sweep_removes_what_never_became_a_video(Backend::PostgresS3).await;
}

/// Objects listed per page in the paged sweep test: folders of two and
/// three objects straddle page boundaries.
const SMALL_PAGE: usize = 3;

/// The stored keys, sorted.
async fn stored_keys(app: &TestApp) -> Vec<String> {
    let mut keys: Vec<String> = app
        .state
        .storage
        .list(&ObjectKey::parse("videos").unwrap())
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key.as_str().to_owned())
        .collect();
    keys.sort();
    keys
}

async fn a_sweep_over_several_pages_removes_exactly_the_orphans(backend: Backend) {
    let app = app_on(backend, no_limits()).await;
    let player = app.player().await;
    // Live videos with their original, processed output and thumbnail.
    let mut kept = Vec::new();
    for _ in 0..3 {
        let video = app.uploaded_video(&player, false).await;
        app.process(&video).await;
        kept.push(video);
    }
    // Orphans of one and of two objects, among them in key order.
    let mut orphans = Vec::new();
    for n in 0..6 {
        let orphan = VideoId::new();
        store_original(&app, orphan).await;
        if n % 2 == 0 {
            app.state
                .storage
                .upload(
                    &VideoKeys::new(orphan.as_uuid()).processed(),
                    &b"a partial output"[..],
                    1 << 20,
                )
                .await
                .unwrap();
        }
        orphans.push(orphan);
    }
    let kept_keys: Vec<String> = {
        let mut keys = stored_keys(&app).await;
        keys.retain(|key| kept.iter().any(|video| key.contains(video.as_str())));
        keys
    };
    assert_eq!(kept_keys.len(), 9);
    assert_eq!(stored_folders(&app).await.len(), 9);

    // The listing the sweep reads does come in several pages.
    let mut pages = app
        .state
        .storage
        .list_pages(&ObjectKey::parse("videos").unwrap(), SMALL_PAGE);
    let mut sizes = Vec::new();
    while let Some(page) = pages.next_page().await.unwrap() {
        sizes.push(page.len());
    }
    assert!(sizes.iter().all(|&size| size <= SMALL_PAGE), "{sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), 9 + 9, "{sizes:?}");

    let report = anb_core::uploads::sweep_in_pages(
        &app.state.db,
        &app.state.storage,
        Duration::ZERO,
        SMALL_PAGE,
    )
    .await
    .unwrap();
    assert_eq!(report.orphaned_folders, 6, "{report:?}");
    assert_eq!(stored_keys(&app).await, kept_keys);
    for orphan in orphans {
        assert!(!app.state.db.video_folder_in_use(orphan).await.unwrap());
    }
}

#[tokio::test]
async fn a_sweep_over_several_pages_removes_exactly_the_orphans_on_the_local_directory() {
    a_sweep_over_several_pages_removes_exactly_the_orphans(Backend::Embedded).await;
}

#[tokio::test]
async fn a_sweep_over_several_pages_removes_exactly_the_orphans_on_s3() {
    a_sweep_over_several_pages_removes_exactly_the_orphans(Backend::PostgresS3).await;
}

#[tokio::test]
async fn the_api_runs_the_sweep_periodically() {
    let app = app_on(
        Backend::Embedded,
        UploadPolicy {
            sweep_interval: Some(Duration::from_millis(200)),
            sweep_grace: Duration::ZERO,
            ..UploadPolicy::unlimited()
        },
    )
    .await;
    let orphan = VideoId::new();
    store_original(&app, orphan).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !stored_folders(&app).await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the orphan is still stored after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The pass counts what it removed once it is done.
    let counted = |metrics: &str| {
        metrics
            .lines()
            .any(|l| l.starts_with("anb_upload_cleanup_removed_total{what=\"orphaned_folder\"} 1"))
    };
    loop {
        let metrics = app.get("/metrics", None).await.text().await.unwrap();
        if counted(&metrics) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The use case's failure path: the original is stored, then the commit
/// fails (here: a video row with that id already exists). The original and
/// the record in progress are removed; nothing is queued.
async fn a_failed_commit_leaves_neither_original_nor_record(backend: Backend) {
    use anb_core::uploads::{CheckedUpload, UploadTargets, store_upload};
    let app = app_on(backend, no_limits()).await;
    let player = app.player().await;
    let owner: UserId = player.user_id.parse().unwrap();
    let taken = VideoId::new();
    app.state
        .db
        .insert_video(&NewVideo {
            id: taken,
            owner_id: owner,
            title: VideoTitle::parse("Ya existe").unwrap(),
            is_public: false,
            original_key: "videos/elsewhere/original.mp4".into(),
        })
        .await
        .unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), b"checked bytes").unwrap();
    let original = VideoKeys::new(taken.as_uuid()).original();
    let result = store_upload(
        UploadTargets {
            db: &app.state.db,
            storage: &app.state.storage,
            queue: &app.state.queue,
            delivery: &app.state.delivery,
        },
        CheckedUpload {
            start: UploadStart {
                video_id: taken,
                owner_id: owner,
                original_key: original.as_str().to_owned(),
                original_bytes: 13,
                idempotency: None,
                quota: UploadQuota::default(),
            },
            file: file.path(),
            title: VideoTitle::parse("Mi mejor jugada").unwrap(),
            is_public: true,
            answer_ttl: Duration::from_secs(60),
        },
    )
    .await;
    assert!(result.is_err(), "{result:?}");
    assert!(!app.state.storage.exists(&original).await.unwrap());
    let far_future = anb_core::db::now() + Duration::from_secs(3600);
    assert!(
        app.state
            .db
            .stale_uploads(far_future, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(app.state.queue.stats().await.unwrap().ready, 0);
}

#[tokio::test]
async fn a_failed_commit_leaves_neither_original_nor_record_on_the_embedded_default() {
    a_failed_commit_leaves_neither_original_nor_record(Backend::Embedded).await;
}

#[tokio::test]
async fn a_failed_commit_leaves_neither_original_nor_record_on_postgres_and_s3() {
    a_failed_commit_leaves_neither_original_nor_record(Backend::PostgresS3).await;
}
