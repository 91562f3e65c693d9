//! The web app beside the API: its pages get the HTML shell, its assets are
//! versioned and cached, and `/api` keeps answering problem+json.

use reqwest::StatusCode;

use crate::harness::{TestApp, assert_problem};

#[tokio::test]
async fn every_page_of_the_app_gets_the_shell_with_its_security_headers() {
    let app = TestApp::spawn().await;
    for page in anb_api::web::PAGES {
        let response = app.get(page, None).await;
        assert_eq!(response.status(), StatusCode::OK, "{page}");
        let headers = response.headers().clone();
        assert_eq!(
            headers["content-type"], "text/html; charset=utf-8",
            "{page}"
        );
        assert_eq!(headers["cache-control"], "no-cache", "{page}");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert!(headers.contains_key("referrer-policy"));
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self';"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        let html = response.text().await.unwrap();
        let version = anb_api::web::assets_version();
        assert!(
            html.contains(&format!("src=\"/assets/{version}/app.js\"")),
            "{html}"
        );
        assert!(!html.contains("{{ASSETS}}"));
    }
}

#[tokio::test]
async fn assets_are_served_under_their_version_only_and_cached_for_long() {
    let app = TestApp::spawn().await;
    let version = anb_api::web::assets_version();
    let script = app
        .get(&format!("/assets/{version}/pages/gallery.js"), None)
        .await;
    assert_eq!(script.status(), StatusCode::OK);
    assert_eq!(
        script.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(
        script.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert!(script.headers().contains_key("content-security-policy"));
    let css = app.get(&format!("/assets/{version}/app.css"), None).await;
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");

    // Another build's version, or a file that is not there: not found.
    assert_problem(
        app.get("/assets/0123456789ab/app.js", None).await,
        404,
        "not_found",
    )
    .await;
    assert_problem(
        app.get(&format!("/assets/{version}/nada.js"), None).await,
        404,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn paths_the_app_does_not_declare_stay_problem_json() {
    let app = TestApp::spawn().await;
    for path in ["/api/no-existe", "/no-existe", "/galeria/otra"] {
        let response = app.get(path, None).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{path}"
        );
    }
    // The API's own routes are untouched.
    assert_eq!(app.get("/health", None).await.status(), StatusCode::OK);
    assert_problem(app.get("/api/videos", None).await, 401, "missing_token").await;
}
