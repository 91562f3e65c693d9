//! Operations: health, readiness, metrics, docs, request ids, unknown
//! routes, signed media links and shutdown.

use reqwest::StatusCode;
use serde_json::Value;

use crate::harness::{TestApp, assert_problem};

#[tokio::test]
async fn health_ready_docs_and_spec_answer_and_server_stops_on_signal() {
    let app = TestApp::spawn().await;
    let health = app.get("/health", None).await;
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(health.json::<Value>().await.unwrap()["status"], "ok");

    let ready = app.get("/ready", None).await;
    assert_eq!(ready.status(), StatusCode::OK);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["database"], "ok");
    assert_eq!(ready["queue"], "ok");
    assert_eq!(ready["storage"], "ok");

    let spec = app.get("/openapi.json", None).await;
    assert_eq!(spec.status(), StatusCode::OK);
    let spec: Value = spec.json().await.unwrap();
    assert!(spec["paths"]["/api/auth/signup"]["post"].is_object());
    let docs = app.get("/docs", None).await;
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(
        docs.text()
            .await
            .unwrap()
            .to_lowercase()
            .contains("swagger")
    );

    let base = app.base.clone();
    app.stop().await;
    assert!(reqwest::get(format!("{base}/health")).await.is_err());
}

#[tokio::test]
async fn ready_is_503_when_the_database_is_gone() {
    let app = TestApp::spawn().await;
    app.state.db.close().await;
    let ready = app.get("/ready", None).await;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        ready.json::<Value>().await.unwrap()["database"],
        "unavailable"
    );
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let app = TestApp::spawn().await;
    let unknown = format!("/api/videos/{}", uuid::Uuid::now_v7());
    app.get(&unknown, None).await;
    app.get("/health", None).await;
    let metrics = app.get("/metrics", None).await;
    assert_eq!(metrics.status(), StatusCode::OK);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("http_requests_total"), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("http_requests_total")
            && l.contains("route=\"/api/videos/{id}\"")
            && l.contains("status=\"401\"")),
        "{text}"
    );
    assert!(text.contains("http_request_duration_seconds"));
}

#[tokio::test]
async fn request_ids_are_echoed_or_made() {
    let app = TestApp::spawn().await;
    let given = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "trace-me-123")
        .send()
        .await
        .unwrap();
    assert_eq!(given.headers()["x-request-id"], "trace-me-123");
    let made = app.get("/health", None).await;
    let id = made.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems_too() {
    let app = TestApp::spawn().await;
    assert_problem(app.get("/api/nothing-here", None).await, 404, "not_found").await;
    let wrong_method = app
        .client
        .put(app.url("/api/auth/login"))
        .send()
        .await
        .unwrap();
    assert_problem(wrong_method, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn media_links_work_only_as_signed() {
    let app = TestApp::spawn().await;
    let owner = app.player().await;
    let video_id = app.uploaded_video(&owner, true).await;
    let detail: Value = app
        .get(&format!("/api/videos/{video_id}"), Some(&owner.token))
        .await
        .json()
        .await
        .unwrap();
    let url = app.url(detail["original_url"].as_str().unwrap());

    let ranged = app
        .client
        .get(&url)
        .header("range", "bytes=0-7")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(ranged.bytes().await.unwrap().len(), 8);

    let tampered = url.replace("sig=", "sig=AAAA");
    assert_problem(
        app.client.get(tampered).send().await.unwrap(),
        404,
        "media_not_found",
    )
    .await;
    let unsigned = url.split('?').next().unwrap().to_owned();
    assert_problem(
        app.client.get(unsigned).send().await.unwrap(),
        404,
        "media_not_found",
    )
    .await;
}
