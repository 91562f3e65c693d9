//! Direct uploads over real HTTP: the client sends the file to the bucket
//! (the S3-compatible server) with the presigned `PUT` the API hands out, or
//! to the API itself with local storage, then asks the API to complete.

use std::time::Duration;

use anb_api::settings::UploadPolicy;
use anb_core::db::UploadQuota;
use anb_core::domain::VideoId;
use anb_core::storage::{ObjectKey, Storage, VideoKeys};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use crate::fixtures;
use crate::harness::{Backend, Player, TestApp, assert_problem};

fn policy() -> UploadPolicy {
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

/// `POST /api/videos/uploads` announcing `size` bytes.
async fn create(app: &TestApp, player: &Player, size: u64) -> Response {
    app.post_json(
        "/api/videos/uploads",
        Some(&player.token),
        &json!({ "title": "Mi jugada directa", "size_bytes": size, "is_public": false }),
    )
    .await
}

async fn created(response: Response) -> Value {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

/// Sends `bytes` the way the answer says, as a browser would: no
/// `Authorization`, the answer's headers, the body's own length.
async fn put_file(app: &TestApp, upload: &Value, bytes: Vec<u8>) -> Response {
    assert_eq!(upload["method"], "PUT");
    let url = upload["url"].as_str().unwrap();
    let url = if url.starts_with('/') {
        app.url(url)
    } else {
        url.to_owned()
    };
    let mut request = app.client.put(url).body(bytes);
    for (name, value) in upload["headers"].as_object().unwrap() {
        request = request.header(name, value.as_str().unwrap());
    }
    request.send().await.unwrap()
}

async fn complete(app: &TestApp, player: &Player, upload: &Value) -> Response {
    let path = upload["complete_url"].as_str().unwrap();
    app.post_json(path, Some(&player.token), &json!({})).await
}

fn original_of(upload: &Value) -> ObjectKey {
    let id: VideoId = upload["upload_id"].as_str().unwrap().parse().unwrap();
    VideoKeys::new(id.as_uuid()).original()
}

fn upload_id(upload: &Value) -> VideoId {
    upload["upload_id"].as_str().unwrap().parse().unwrap()
}

async fn happy_path(backend: Backend) {
    let app = app_on(backend, policy()).await;
    let player = app.player().await;
    let bytes = fixtures::mp4(fixtures::VALID_PORTRAIT).await;
    let upload = created(create(&app, &player, bytes.len() as u64).await).await;
    let key = original_of(&upload);
    assert_eq!(upload["headers"]["content-type"], "video/mp4", "{upload}");

    // Recorded as in progress from creation: the sweep leaves it alone,
    // even with no grace at all, while it has not expired.
    let put = put_file(&app, &upload, bytes.clone()).await;
    assert_eq!(
        put.status(),
        StatusCode::OK,
        "{}",
        put.text().await.unwrap()
    );
    let report = anb_core::uploads::sweep(&app.state.db, &app.state.storage, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!((report.stale_uploads, report.orphaned_folders), (0, 0));
    assert!(app.state.storage.exists(&key).await.unwrap());

    let response = complete(&app, &player, &upload).await;
    assert!(response.headers().get("idempotent-replayed").is_none());
    let answer = created(response).await;
    assert_eq!(answer["video_id"], upload["upload_id"]);
    assert!(answer["task_id"].as_str().is_some_and(|t| !t.is_empty()));
    assert_eq!(app.state.queue.stats().await.unwrap().ready, 1);

    let videos: Vec<Value> = app
        .get("/api/videos", Some(&player.token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(videos.len(), 1, "{videos:?}");
    assert_eq!(videos[0]["video_id"], upload["upload_id"]);
    assert_eq!(videos[0]["status"], "uploaded");
    assert_eq!(videos[0]["is_public"], false);
    assert_eq!(videos[0]["title"], "Mi jugada directa");
    assert_eq!(
        app.state.storage.size(&key).await.unwrap(),
        bytes.len() as u64
    );

    // Completing again answers the same video, and queues nothing more.
    let again = complete(&app, &player, &upload).await;
    assert_eq!(
        again
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap().to_owned()),
        Some("true".to_owned())
    );
    let again = created(again).await;
    assert_eq!(again["video_id"], answer["video_id"]);
    assert_eq!(again["task_id"], answer["task_id"]);
    assert_eq!(app.state.queue.stats().await.unwrap().ready, 1);

    // Another player's completion of it finds nothing.
    let other = app.player().await;
    assert_problem(
        complete(&app, &other, &upload).await,
        404,
        "upload_not_found",
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_direct_upload_to_s3_becomes_a_video_with_its_job() {
    happy_path(Backend::PostgresS3).await;
}

#[tokio::test]
async fn a_direct_upload_to_local_storage_goes_through_the_api() {
    happy_path(Backend::Embedded).await;
}

/// What the S3-compatible server does with a presigned `PUT` whose body is
/// not the signed size, and what the completion does about it.
#[tokio::test]
async fn a_larger_or_different_file_than_announced_is_refused_and_removed() {
    let app = app_on(Backend::PostgresS3, policy()).await;
    let player = app.player().await;
    let bytes = fixtures::mp4(fixtures::VALID_PORTRAIT).await;

    // Larger than announced. S3 itself refuses the body (the length is a
    // signed header); the stand-in server stores it, so the completion must
    // catch it.
    let upload = created(create(&app, &player, bytes.len() as u64 - 1000).await).await;
    let url = upload["url"].as_str().unwrap();
    assert!(
        url.contains("X-Amz-SignedHeaders=content-length%3Bcontent-type%3Bhost"),
        "length and type are signed: {url}"
    );
    let put = put_file(&app, &upload, bytes.clone()).await;
    let put_status = put.status();
    eprintln!(
        "S3-compatible server answered a PUT larger than signed with {put_status}: {}",
        put.text().await.unwrap()
    );
    if put_status.is_success() {
        assert!(
            app.state
                .storage
                .exists(&original_of(&upload))
                .await
                .unwrap()
        );
    }
    let refused = complete(&app, &player, &upload).await;
    if put_status.is_success() {
        assert_problem(refused, 400, "upload_size_mismatch").await;
    } else {
        assert_problem(refused, 409, "upload_not_received").await;
    }
    if put_status.is_success() {
        assert!(
            !app.state
                .storage
                .exists(&original_of(&upload))
                .await
                .unwrap()
        );
        // The upload ended with its refusal.
        assert_problem(
            complete(&app, &player, &upload).await,
            404,
            "upload_not_found",
        )
        .await;
        assert!(
            app.state
                .db
                .pending_upload(upload_id(&upload))
                .await
                .unwrap()
                .is_none()
        );
    }

    // The announced size, other content: not a video.
    let junk = vec![b'x'; bytes.len()];
    let upload = created(create(&app, &player, junk.len() as u64).await).await;
    let put = put_file(&app, &upload, junk).await;
    assert_eq!(put.status(), StatusCode::OK);
    assert_problem(
        complete(&app, &player, &upload).await,
        400,
        "invalid_file_type",
    )
    .await;
    assert!(
        !app.state
            .storage
            .exists(&original_of(&upload))
            .await
            .unwrap()
    );

    // The announced size, a video outside the limits.
    let low = fixtures::mp4(fixtures::LOW_RESOLUTION).await;
    let upload = created(create(&app, &player, low.len() as u64).await).await;
    assert_eq!(put_file(&app, &upload, low).await.status(), StatusCode::OK);
    assert_problem(
        complete(&app, &player, &upload).await,
        400,
        "resolution_too_low",
    )
    .await;
    assert!(
        !app.state
            .storage
            .exists(&original_of(&upload))
            .await
            .unwrap()
    );

    let videos: Vec<Value> = app
        .get("/api/videos", Some(&player.token))
        .await
        .json()
        .await
        .unwrap();
    assert!(videos.is_empty(), "{videos:?}");
    assert_eq!(app.state.queue.stats().await.unwrap().ready, 0);
    app.stop().await;
}

async fn completion_before_the_file(backend: Backend) {
    let app = app_on(backend, policy()).await;
    let player = app.player().await;
    let bytes = fixtures::mp4(fixtures::VALID_PORTRAIT).await;
    let upload = created(create(&app, &player, bytes.len() as u64).await).await;
    let early = complete(&app, &player, &upload).await;
    assert!(early.headers().get("retry-after").is_some());
    assert_problem(early, 409, "upload_not_received").await;
    // Nothing was lost: send the file, then complete.
    assert_eq!(
        put_file(&app, &upload, bytes).await.status(),
        StatusCode::OK
    );
    created(complete(&app, &player, &upload).await).await;
    app.stop().await;
}

#[tokio::test]
async fn completing_before_the_file_is_stored_is_a_conflict_on_s3() {
    completion_before_the_file(Backend::PostgresS3).await;
}

#[tokio::test]
async fn completing_before_the_file_is_stored_is_a_conflict_on_local_storage() {
    completion_before_the_file(Backend::Embedded).await;
}

#[tokio::test]
async fn unknown_and_malformed_upload_ids_are_not_found() {
    let app = app_on(Backend::Embedded, policy()).await;
    let player = app.player().await;
    for id in [uuid::Uuid::new_v4().to_string(), "not-a-uuid".to_owned()] {
        let response = app
            .post_json(
                &format!("/api/videos/uploads/{id}/complete"),
                Some(&player.token),
                &json!({}),
            )
            .await;
        assert_problem(response, 404, "upload_not_found").await;
    }
    let response = app
        .post_json(
            &format!("/api/videos/uploads/{}/complete", uuid::Uuid::new_v4()),
            None,
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    app.stop().await;
}

#[tokio::test]
async fn the_quota_and_the_size_limit_are_enforced_at_creation() {
    let app = app_on(
        Backend::PostgresS3,
        UploadPolicy {
            quota: UploadQuota {
                max_bytes: Some(3_000_000),
                max_videos: Some(2),
            },
            ..policy()
        },
    )
    .await;
    let player = app.player().await;
    let max = app.state.api.upload.max_bytes;
    assert_problem(create(&app, &player, max + 1).await, 400, "file_too_large").await;
    assert_problem(create(&app, &player, 0).await, 400, "validation_failed").await;

    // An upload in progress counts against the quota from its creation.
    created(create(&app, &player, 2_000_000).await).await;
    assert_problem(
        create(&app, &player, 1_500_000).await,
        403,
        "upload_quota_exceeded",
    )
    .await;
    created(create(&app, &player, 500_000).await).await;
    assert_problem(create(&app, &player, 1).await, 403, "upload_quota_exceeded").await;
    // Another player's quota is their own.
    let other = app.player().await;
    created(create(&app, &other, 2_000_000).await).await;
    app.stop().await;
}

#[tokio::test]
async fn the_per_player_rate_applies_to_direct_uploads() {
    use anb_api::settings::Rate;
    let app = app_on(
        Backend::Embedded,
        UploadPolicy {
            rate_per_user: Some(Rate {
                count: std::num::NonZeroU32::new(2).unwrap(),
                period: Duration::from_secs(3600),
            }),
            ..policy()
        },
    )
    .await;
    let player = app.player().await;
    created(create(&app, &player, 1000).await).await;
    created(create(&app, &player, 1000).await).await;
    let limited = create(&app, &player, 1000).await;
    assert!(limited.headers().get("retry-after").is_some());
    assert_problem(limited, 429, "rate_limited").await;
    app.stop().await;
}

async fn expiry(backend: Backend) {
    let app = app_on(
        backend,
        UploadPolicy {
            presign_ttl: Duration::from_secs(1),
            ..policy()
        },
    )
    .await;
    let player = app.player().await;
    let bytes = fixtures::mp4(fixtures::VALID_PORTRAIT).await;
    let late = created(create(&app, &player, bytes.len() as u64).await).await;
    let abandoned = created(create(&app, &player, bytes.len() as u64).await).await;
    assert_eq!(
        put_file(&app, &late, bytes.clone()).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        put_file(&app, &abandoned, bytes.clone()).await.status(),
        StatusCode::OK
    );
    // Within its expiry nothing goes, even with no grace.
    let report = anb_core::uploads::sweep(&app.state.db, &app.state.storage, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(report.stale_uploads, 0);

    // The URL's lifetime, then as long again for completing.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let put_late = put_file(&app, &late, bytes.clone()).await;
    eprintln!("a PUT past the URL's expiry got {}", put_late.status());
    if matches!(app.state.storage, Storage::Local(_)) {
        assert_problem(put_late, 404, "upload_not_found").await;
    }
    assert_problem(complete(&app, &player, &late).await, 410, "upload_expired").await;
    assert!(!app.state.storage.exists(&original_of(&late)).await.unwrap());

    // The one nobody completes: the sweep takes it, once its grace passed.
    let report =
        anb_core::uploads::sweep(&app.state.db, &app.state.storage, Duration::from_secs(3600))
            .await
            .unwrap();
    assert_eq!(report.stale_uploads, 0);
    let report = anb_core::uploads::sweep(&app.state.db, &app.state.storage, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(report.stale_uploads, 1);
    assert!(
        !app.state
            .storage
            .exists(&original_of(&abandoned))
            .await
            .unwrap()
    );
    assert_problem(
        complete(&app, &player, &abandoned).await,
        404,
        "upload_not_found",
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn expired_uploads_are_refused_then_swept_on_s3() {
    expiry(Backend::PostgresS3).await;
}

#[tokio::test]
async fn expired_uploads_are_refused_then_swept_on_local_storage() {
    expiry(Backend::Embedded).await;
}

#[tokio::test]
async fn the_local_put_takes_only_the_signed_announced_file() {
    let app = app_on(Backend::Embedded, policy()).await;
    let player = app.player().await;
    let bytes = fixtures::mp4(fixtures::VALID_PORTRAIT).await;
    let upload = created(create(&app, &player, bytes.len() as u64).await).await;
    let url = upload["url"].as_str().unwrap().to_owned();
    let id = upload["upload_id"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("/api/videos/uploads/{id}/content?expires=")),
        "{url}"
    );

    // Longer and shorter bodies than announced.
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0; 10]);
    assert_problem(
        put_file(&app, &upload, longer).await,
        400,
        "upload_size_mismatch",
    )
    .await;
    assert_problem(
        put_file(&app, &upload, bytes[..bytes.len() - 1].to_vec()).await,
        400,
        "upload_size_mismatch",
    )
    .await;
    // Another type.
    let response = app
        .client
        .put(app.url(&url))
        .header("content-type", "application/octet-stream")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_problem(response, 415, "unsupported_media_type").await;
    // A tampered signature, or another upload's.
    let tampered = url.replace("sig=", "sig=A");
    let response = app
        .client
        .put(app.url(&tampered))
        .header("content-type", "video/mp4")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_problem(response, 404, "upload_not_found").await;
    let other = created(create(&app, &player, bytes.len() as u64).await).await;
    let other_id = other["upload_id"].as_str().unwrap();
    let response = app
        .client
        .put(app.url(&url.replace(id, other_id)))
        .header("content-type", "video/mp4")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_problem(response, 404, "upload_not_found").await;
    assert!(
        !app.state
            .storage
            .exists(&original_of(&upload))
            .await
            .unwrap()
    );
    assert!(
        !app.state
            .storage
            .exists(&original_of(&other))
            .await
            .unwrap()
    );

    // The right file, then the upload is completed: the URL takes no more.
    assert_eq!(
        put_file(&app, &upload, bytes.clone()).await.status(),
        StatusCode::OK
    );
    created(complete(&app, &player, &upload).await).await;
    assert_problem(
        put_file(&app, &upload, bytes).await,
        404,
        "upload_not_found",
    )
    .await;

    // Not a video: refused, removed.
    let junk = vec![0u8; 4096];
    let upload = created(create(&app, &player, junk.len() as u64).await).await;
    assert_eq!(put_file(&app, &upload, junk).await.status(), StatusCode::OK);
    assert_problem(
        complete(&app, &player, &upload).await,
        400,
        "invalid_file_type",
    )
    .await;
    assert!(
        !app.state
            .storage
            .exists(&original_of(&upload))
            .await
            .unwrap()
    );
    app.stop().await;
}

/// The bucket's CORS rule as `infra/cloudformation/anb.yaml` declares it:
/// browser `PUT`s from the site's origin with the signed `Content-Type`.
fn cors_rule(origin: &str) -> aws_sdk_s3::types::CorsConfiguration {
    use aws_sdk_s3::types::{CorsConfiguration, CorsRule};
    CorsConfiguration::builder()
        .cors_rules(
            CorsRule::builder()
                .allowed_origins(origin)
                .allowed_methods("PUT")
                .allowed_headers("content-type")
                .expose_headers("ETag")
                .max_age_seconds(3000)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_buckets_cors_rule_answers_the_browsers_preflight() {
    let app = app_on(Backend::PostgresS3, policy()).await;
    let Storage::S3(s3) = &app.state.storage else {
        unreachable!("an S3 app")
    };
    let site = "https://anb.example.com";
    s3.client()
        .put_bucket_cors()
        .bucket(s3.bucket())
        .cors_configuration(cors_rule(site))
        .send()
        .await
        .unwrap();
    let player = app.player().await;
    let upload = created(create(&app, &player, 1000).await).await;
    let url = upload["url"].as_str().unwrap();

    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, url)
            .header("origin", origin)
            .header("access-control-request-method", "PUT")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let allowed = preflight(site).await.unwrap();
    eprintln!(
        "preflight from the site: {} {:?}",
        allowed.status(),
        allowed.headers()
    );
    assert!(allowed.status().is_success());
    assert_eq!(
        allowed
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap()),
        Some(site)
    );
    let methods = allowed
        .headers()
        .get("access-control-allow-methods")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(methods.contains("PUT"), "{methods}");

    // Another origin is refused (403, as S3 does). (A bucket with no rule at
    // all the stand-in server lets any origin through, unlike S3, so only a
    // rule that refuses can be tested.) The stand-in server still
    // echoes the origin in `Access-Control-Allow-Origin` on every answer (its
    // own server-wide CORS layer), so the status is what tells here; S3
    // itself sends no CORS headers then.
    let foreign = preflight("https://evil.example.net").await.unwrap();
    eprintln!(
        "preflight from another origin: {} {:?}",
        foreign.status(),
        foreign.headers()
    );
    assert_eq!(foreign.status(), StatusCode::FORBIDDEN);
    app.stop().await;
}

#[tokio::test]
async fn a_wrong_method_names_the_upload_routes_own_methods() {
    let app = app_on(Backend::Embedded, policy()).await;
    let id = uuid::Uuid::new_v4();
    for (method, path, allow) in [
        (
            reqwest::Method::GET,
            "/api/videos/uploads".to_owned(),
            "POST",
        ),
        (
            reqwest::Method::GET,
            format!("/api/videos/uploads/{id}/complete"),
            "POST",
        ),
        (
            reqwest::Method::POST,
            format!("/api/videos/uploads/{id}/content"),
            "PUT",
        ),
    ] {
        let response = app
            .client
            .request(method.clone(), app.url(&path))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response
                .headers()
                .get("allow")
                .map(|v| v.to_str().unwrap().to_owned()),
            Some(allow.to_owned()),
            "{method} {path}"
        );
        assert_problem(response, 405, "method_not_allowed").await;
    }
    app.stop().await;
}
