//! Security headers on every answer, HSTS behind an HTTPS proxy, no caching
//! of what belongs to the caller, and CORS only for configured origins.

use crate::harness::TestApp;

#[tokio::test]
async fn every_answer_carries_the_security_headers() {
    let app = TestApp::spawn().await;
    let player = app.player().await;
    for response in [
        app.get("/health", None).await,
        app.get("/api/public/rankings", None).await,
        app.get("/api/auth/me", None).await,  // 401
        app.get("/no/such/page", None).await, // 404
    ] {
        let headers = response.headers();
        assert_eq!(headers["x-content-type-options"], "nosniff", "{headers:?}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{headers:?}");
        // Plain HTTP from an untrusted peer: no HSTS.
        assert!(!headers.contains_key("strict-transport-security"));
    }
    // The token and the profile are never cached.
    let login = app.login(&player.email, &player.password).await;
    assert_eq!(login.status(), 200);
    assert_eq!(login.headers()["cache-control"], "no-store");
    let me = app.get("/api/auth/me", Some(&player.token)).await;
    assert_eq!(me.status(), 200);
    assert_eq!(me.headers()["cache-control"], "no-store");
    // A forwarded protocol from an untrusted peer is not believed.
    let response = app
        .client
        .get(app.url("/health"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert!(!response.headers().contains_key("strict-transport-security"));
}

#[tokio::test]
async fn hsts_is_sent_behind_a_trusted_https_proxy() {
    let app = TestApp::builder()
        .trusted_proxies(&["127.0.0.1/32"])
        .spawn()
        .await;
    let response = app
        .client
        .get(app.url("/health"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["strict-transport-security"],
        "max-age=31536000"
    );
}

#[tokio::test]
async fn cross_origin_calls_are_allowed_only_for_configured_origins() {
    let preflight = |app: &TestApp, origin: &str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/api/auth/login"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    // None by default.
    let app = TestApp::spawn().await;
    let response = preflight(&app, "https://app.example.com").await.unwrap();
    assert!(
        !response
            .headers()
            .contains_key("access-control-allow-origin"),
        "{:?}",
        response.headers()
    );
    // The configured origin, and only it.
    let app = TestApp::builder()
        .cors_origins(&["https://app.example.com"])
        .spawn()
        .await;
    let response = preflight(&app, "https://app.example.com").await.unwrap();
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let response = preflight(&app, "https://evil.example").await.unwrap();
    assert!(
        !response
            .headers()
            .contains_key("access-control-allow-origin")
    );
    let response = app
        .client
        .get(app.url("/health"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
}
