//! Contract rows 3–6 (upload success, list, detail, delete), publish, and
//! the main flow on PostgreSQL + S3.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::fixtures;
use crate::harness::{Backend, TestApp, assert_problem};

#[tokio::test]
async fn upload_stores_the_video_and_queues_its_processing() {
    let app = TestApp::spawn().await;
    let player = app.player().await;
    let bytes = fixtures::mp4(fixtures::VALID_PORTRAIT).await;
    let response = app
        .upload(
            Some(&player.token),
            bytes.clone(),
            "Triple en el último segundo",
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["message"],
        "Video subido correctamente. Procesamiento en curso."
    );
    assert!(!body["task_id"].as_str().unwrap().is_empty());
    let video_id = body["video_id"].as_str().unwrap();

    let detail: Value = app
        .get(&format!("/api/videos/{video_id}"), Some(&player.token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(detail["status"], "uploaded");
    assert_eq!(detail["is_public"], true, "is_public defaults to true");
    assert_eq!(detail["published"], false);
    assert_eq!(detail["votes"], 0);
    assert!(detail["processed_url"].is_null());

    // The original is kept unchanged and playable through its signed URL.
    let original_url = detail["original_url"].as_str().unwrap();
    let original = app.client.get(app.url(original_url)).send().await.unwrap();
    assert_eq!(original.status(), StatusCode::OK);
    assert_eq!(original.headers()["content-type"], "video/mp4");
    assert_eq!(original.bytes().await.unwrap().as_ref(), bytes.as_slice());

    // Exactly one job is waiting for the worker.
    let stats = app.state.queue.stats().await.unwrap();
    assert_eq!(stats.ready, 1, "{stats:?}");
}

#[tokio::test]
async fn own_videos_are_listed_newest_first_and_empty_is_an_empty_array() {
    let app = TestApp::spawn().await;
    let player = app.player().await;
    let empty = app.get("/api/videos", Some(&player.token)).await;
    assert_eq!(empty.status(), StatusCode::OK);
    assert_eq!(empty.text().await.unwrap(), "[]");

    let first = app.uploaded_video(&player, true).await;
    let second = app.uploaded_video(&player, false).await;
    app.process(&first).await;
    let someone_else = app.player().await;
    app.uploaded_video(&someone_else, true).await;

    let list: Vec<Value> = app
        .get("/api/videos", Some(&player.token))
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list
        .iter()
        .map(|v| v["video_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [second.as_str(), first.as_str()]);
    let processed = &list[1];
    assert_eq!(processed["status"], "processed");
    assert!(processed["processed_at"].as_str().unwrap().ends_with('Z'));
    assert!(
        processed["processed_url"]
            .as_str()
            .unwrap()
            .starts_with("/media/")
    );
    for field in ["title", "uploaded_at", "processed_at", "processed_url"] {
        assert!(list[0].get(field).is_some(), "{field}");
    }
    assert!(list[0]["uploaded_at"].as_str().unwrap().ends_with('Z'));
    assert!(list[0]["processed_url"].is_null());

    assert_problem(app.get("/api/videos", None).await, 401, "missing_token").await;
}

#[tokio::test]
async fn the_list_tells_progress_failure_thumbnail_publication_and_votes() {
    let app = TestApp::spawn().await;
    let player = app.player().await;
    let published = app.uploaded_video(&player, true).await;
    let private = app.uploaded_video(&player, false).await;
    let failing = app.uploaded_video(&player, false).await;
    let encoding = app.uploaded_video(&player, false).await;
    app.process(&published).await;
    app.process(&private).await;
    let id = |raw: &str| raw.parse::<anb_core::domain::VideoId>().unwrap();
    app.state.db.start_processing(id(&encoding)).await.unwrap();
    app.state
        .db
        .update_progress(id(&encoding), 42)
        .await
        .unwrap();
    let reason = anb_core::domain::FailureReason::new("El video no se pudo decodificar.");
    app.state
        .db
        .mark_failed(id(&failing), &reason)
        .await
        .unwrap();
    let voter = app.player().await;
    assert_eq!(app.vote(Some(&voter.token), &published).await.status(), 200);

    let list: Vec<Value> = app
        .get("/api/videos", Some(&player.token))
        .await
        .json()
        .await
        .unwrap();
    let by_id = |wanted: &str| {
        list.iter()
            .find(|v| v["video_id"] == wanted)
            .unwrap_or_else(|| panic!("{wanted} listed"))
    };
    let v = by_id(&published);
    assert_eq!(
        (
            &v["published"],
            &v["is_public"],
            &v["votes"],
            &v["progress_percent"]
        ),
        (&json!(true), &json!(true), &json!(1), &json!(100)),
        "{v}"
    );
    assert!(v["thumbnail_url"].as_str().unwrap().starts_with("/media/"));
    assert!(v["failure_reason"].is_null());
    let v = by_id(&private);
    assert_eq!(
        (&v["published"], &v["is_public"]),
        (&json!(false), &json!(false))
    );
    let v = by_id(&encoding);
    assert_eq!(
        (&v["status"], &v["progress_percent"]),
        (&json!("processing"), &json!(42))
    );
    assert!(v["thumbnail_url"].is_null());
    let v = by_id(&failing);
    assert_eq!(v["status"], "failed");
    assert_eq!(v["failure_reason"], "El video no se pudo decodificar.");
}

#[tokio::test]
async fn video_detail_is_for_its_owner_only() {
    let app = TestApp::spawn().await;
    let owner = app.player().await;
    let video_id = app.uploaded_video(&owner, true).await;
    let path = format!("/api/videos/{video_id}");
    assert_eq!(
        app.get(&path, Some(&owner.token)).await.status(),
        StatusCode::OK
    );

    let stranger = app.player().await;
    assert_problem(
        app.get(&path, Some(&stranger.token)).await,
        403,
        "not_owner",
    )
    .await;
    assert_problem(app.get(&path, None).await, 401, "missing_token").await;
    let unknown = format!("/api/videos/{}", uuid::Uuid::now_v7());
    assert_problem(
        app.get(&unknown, Some(&owner.token)).await,
        404,
        "video_not_found",
    )
    .await;
    assert_problem(
        app.get("/api/videos/not-an-id", Some(&owner.token)).await,
        404,
        "video_not_found",
    )
    .await;
    assert_problem(
        app.get("/api/videos/12345", Some(&owner.token)).await,
        404,
        "video_not_found",
    )
    .await;
}

#[tokio::test]
async fn deleting_removes_the_video_and_its_objects() {
    let app = TestApp::spawn().await;
    let owner = app.player().await;
    let video_id = app.uploaded_video(&owner, false).await;
    app.process(&video_id).await;
    let path = format!("/api/videos/{video_id}");
    let detail: Value = app
        .get(&path, Some(&owner.token))
        .await
        .json()
        .await
        .unwrap();
    let original_url = app.url(detail["original_url"].as_str().unwrap());

    let stranger = app.player().await;
    assert_problem(
        app.delete(&path, Some(&stranger.token)).await,
        403,
        "not_owner",
    )
    .await;
    assert_problem(app.delete(&path, None).await, 401, "missing_token").await;

    let response = app.delete(&path, Some(&owner.token)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["message"], "El video ha sido eliminado exitosamente.");
    assert_eq!(body["video_id"], video_id.as_str());

    assert_problem(
        app.get(&path, Some(&owner.token)).await,
        404,
        "video_not_found",
    )
    .await;
    assert_problem(
        app.delete(&path, Some(&owner.token)).await,
        404,
        "video_not_found",
    )
    .await;
    assert_problem(
        app.delete("/api/videos/nope", Some(&owner.token)).await,
        404,
        "video_not_found",
    )
    .await;
    // The stored original is gone too.
    let gone = app.client.get(original_url).send().await.unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn published_videos_cannot_be_deleted_and_private_ones_can_be_published() {
    let app = TestApp::spawn().await;
    let (owner, published) = app.published_video().await;
    let path = format!("/api/videos/{published}");
    assert_problem(
        app.delete(&path, Some(&owner.token)).await,
        400,
        "video_published",
    )
    .await;

    let private = app.uploaded_video(&owner, false).await;
    app.process(&private).await;
    let public: Vec<Value> = app
        .get("/api/public/videos", None)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        !public.iter().any(|v| v["video_id"] == private.as_str()),
        "private stays unlisted"
    );

    let stranger = app.player().await;
    let publish = format!("/api/videos/{private}/publish");
    assert_problem(
        app.post_json(&publish, Some(&stranger.token), &Value::Null)
            .await,
        403,
        "not_owner",
    )
    .await;
    let response = app
        .post_json(&publish, Some(&owner.token), &Value::Null)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let detail: Value = response.json().await.unwrap();
    assert_eq!(detail["published"], true);
    let public: Vec<Value> = app
        .get("/api/public/videos", None)
        .await
        .json()
        .await
        .unwrap();
    assert!(public.iter().any(|v| v["video_id"] == private.as_str()));
}

#[tokio::test]
async fn main_flow_on_postgres_and_s3() {
    let app = TestApp::builder()
        .backend(Backend::PostgresS3)
        .spawn()
        .await;
    let owner = app.player_in("São Paulo").await;
    let bytes = fixtures::mp4(fixtures::VALID_PORTRAIT).await;
    let response = app
        .upload(
            Some(&owner.token),
            bytes.clone(),
            "Clavada de campeonato",
            None,
        )
        .await;
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "{}",
        response.text().await.unwrap()
    );
    let video_id = response.json::<Value>().await.unwrap()["video_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.state.queue.stats().await.unwrap().ready, 1);

    // The original is on S3, reachable through a presigned URL.
    let detail: Value = app
        .get(&format!("/api/videos/{video_id}"), Some(&owner.token))
        .await
        .json()
        .await
        .unwrap();
    let presigned = detail["original_url"].as_str().unwrap();
    assert!(
        presigned.starts_with("http") && presigned.contains("X-Amz-Signature"),
        "{presigned}"
    );
    let original = reqwest::get(presigned).await.unwrap();
    assert_eq!(original.status(), StatusCode::OK);
    assert_eq!(original.bytes().await.unwrap().as_ref(), bytes.as_slice());

    // Rejected uploads leave nothing behind.
    let short = fixtures::mp4(fixtures::TOO_SHORT).await;
    assert_problem(
        app.upload(Some(&owner.token), short, "Muy corto este", None)
            .await,
        400,
        "duration_out_of_range",
    )
    .await;
    let list: Vec<Value> = app
        .get("/api/videos", Some(&owner.token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 1);

    app.process(&video_id).await;
    let voter = app.player_in("Cali").await;
    assert_eq!(
        app.vote(Some(&voter.token), &video_id).await.status(),
        StatusCode::OK
    );
    assert_problem(
        app.vote(Some(&voter.token), &video_id).await,
        400,
        "already_voted",
    )
    .await;

    let rankings: Vec<Value> = app
        .get("/api/public/rankings?city=SAO%20PAULO", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rankings.len(), 1);
    assert_eq!(rankings[0]["player_id"], owner.user_id.as_str());
    assert_eq!(rankings[0]["votes"], 1);

    let public: Vec<Value> = app
        .get("/api/public/videos", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(public[0]["video_id"], video_id.as_str());
    assert!(
        public[0]["processed_url"]
            .as_str()
            .unwrap()
            .contains("X-Amz-Signature")
    );

    let ready = app.get("/ready", None).await;
    assert_eq!(ready.status(), StatusCode::OK);
    app.stop().await;
}

/// A processed video of `owner` with an extra object in its folder that its
/// row does not name (an output written just before a deletion), so a
/// deletion must sweep the folder, not only the recorded keys.
async fn video_with_a_stray_object(app: &TestApp, owner: &crate::harness::Player) -> String {
    let video_id = app.uploaded_video(owner, false).await;
    app.process(&video_id).await;
    let keys = anb_core::storage::VideoKeys::new(video_id.parse().unwrap());
    let stray =
        anb_core::storage::ObjectKey::parse(format!("{}/partial.mp4", keys.folder())).unwrap();
    app.state
        .storage
        .upload(&stray, &b"partial output"[..], 1 << 20)
        .await
        .unwrap();
    assert_eq!(stored_objects(app, &video_id).await.len(), 4);
    video_id
}

/// The objects stored under the video's folder.
async fn stored_objects(app: &TestApp, video_id: &str) -> Vec<String> {
    let keys = anb_core::storage::VideoKeys::new(video_id.parse().unwrap());
    let mut objects: Vec<String> = app
        .state
        .storage
        .list(keys.folder())
        .await
        .unwrap()
        .into_iter()
        .map(|object| object.key.as_str().to_owned())
        .collect();
    objects.sort();
    objects
}

/// What is left of a deleted video: its objects, and whether any row (live,
/// deleted or in progress) still names it.
async fn remains(app: &TestApp, video_id: &str) -> (Vec<String>, bool) {
    let id: anb_core::domain::VideoId = video_id.parse().unwrap();
    (
        stored_objects(app, video_id).await,
        app.state.db.video_folder_in_use(id).await.unwrap(),
    )
}

/// The API's delete and the worker's purge of a deletion whose objects could
/// not be removed at once end in the same state, on both backends: no object
/// and no row.
async fn both_deletion_paths_leave_no_objects_and_no_rows(backend: Backend) {
    let app = TestApp::builder().backend(backend).spawn().await;
    let owner = app.player().await;
    let by_api = video_with_a_stray_object(&app, &owner).await;
    let by_purge = video_with_a_stray_object(&app, &owner).await;

    let response = app
        .delete(&format!("/api/videos/{by_api}"), Some(&owner.token))
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    // The other deletion took its video out of service, but storage failed
    // then: the worker's periodic purge finishes it.
    let owner_id = owner.user_id.parse().unwrap();
    app.state
        .db
        .delete_video(owner_id, by_purge.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(remains(&app, &by_purge).await.0.len(), 4);
    let report = anb_core::videos::purge_deleted_videos(&app.state.db, &app.state.storage)
        .await
        .unwrap();
    assert_eq!(report.purged, 1, "{report:?}");

    let nothing = (Vec::new(), false);
    assert_eq!(
        remains(&app, &by_api).await,
        nothing,
        "after the API's delete"
    );
    assert_eq!(remains(&app, &by_purge).await, nothing, "after the purge");
    assert!(
        app.state
            .db
            .videos_awaiting_purge(10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn both_deletion_paths_leave_no_objects_and_no_rows_on_the_embedded_default() {
    both_deletion_paths_leave_no_objects_and_no_rows(Backend::Embedded).await;
}

#[tokio::test]
async fn both_deletion_paths_leave_no_objects_and_no_rows_on_postgres_and_s3() {
    both_deletion_paths_leave_no_objects_and_no_rows(Backend::PostgresS3).await;
}
