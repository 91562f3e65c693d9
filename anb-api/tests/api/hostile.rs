//! Hostile input over real HTTP: broken and deceptive JSON, wrong types,
//! every kind of bad token, path and SQL strings in text fields and path
//! parameters, and pagination and city edge cases.
//!
//! Every case asserts its exact status and `code`, that the answer is a
//! Spanish problem document (no framework English), that nothing was stored
//! for a refused input, and that the server still answers at once after it.

use reqwest::{Method, Response};
use serde_json::{Value, json};

use crate::harness::{TestApp, assert_problem};

/// Words of the framework's English messages that must never reach a client.
const ENGLISH: &[&str] = &[
    "parse", "error", "Expected", "occurred", "failed", "request", "payload", "invalid",
];

/// A problem whose texts are ours: Spanish, no framework English.
async fn assert_spanish_problem(response: Response, status: u16, code: &str) -> Value {
    let problem = assert_problem(response, status, code).await;
    let mut texts = vec![
        problem["title"].as_str().unwrap().to_owned(),
        problem["detail"].as_str().unwrap().to_owned(),
    ];
    for error in problem["errors"].as_array().unwrap() {
        texts.push(error["message"].as_str().unwrap().to_owned());
    }
    for text in texts {
        for word in ENGLISH {
            assert!(!text.contains(word), "English {word:?} in {problem}");
        }
    }
    problem
}

/// The fields named by a validation problem.
fn fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect()
}

async fn user_count(app: &TestApp) -> i64 {
    match &app.state.db {
        anb_core::db::Database::Sqlite(pool) => sqlx::query_scalar("SELECT count(*) FROM users")
            .fetch_one(pool)
            .await
            .unwrap(),
        anb_core::db::Database::Postgres(pool) => sqlx::query_scalar("SELECT count(*) FROM users")
            .fetch_one(pool)
            .await
            .unwrap(),
    }
}

/// The server still answers, at once, after a hostile request.
async fn assert_still_answering(app: &TestApp) {
    let health = app
        .client
        .get(app.url("/health"))
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await
        .expect("the server answers after a hostile request");
    assert_eq!(health.status(), 200);
}

async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> Response {
    let mut request = app.client.request(method, app.url(path)).body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    request.send().await.unwrap()
}

fn valid_signup() -> Value {
    TestApp::signup_body("hostile@example.com", "Bogotá")
}

fn signup_with(field: &str, value: Value) -> Value {
    let mut body = valid_signup();
    body[field] = value;
    body
}

fn signup_without(field: &str) -> Value {
    let mut body = valid_signup();
    body.as_object_mut().unwrap().remove(field);
    body
}

// ------------------------------------------------------------ broken bodies

/// Bodies that are not one JSON object of the declared type, sent to both
/// JSON operations: (what, content type, body, status, code).
/// (what, content type, body, status, code).
type BrokenBody = (
    &'static str,
    Option<&'static str>,
    Vec<u8>,
    u16,
    &'static str,
);

fn broken_bodies() -> Vec<BrokenBody> {
    let json = Some("application/json");
    vec![
        ("empty body", json, vec![], 400, "malformed_json"),
        ("blank body", json, b"  \n ".to_vec(), 400, "malformed_json"),
        (
            "truncated JSON",
            json,
            br#"{"email": "a@"#.to_vec(),
            400,
            "malformed_json",
        ),
        (
            "not JSON",
            json,
            b"email=a@example.com".to_vec(),
            400,
            "malformed_json",
        ),
        (
            "trailing garbage",
            json,
            br#"{} {}"#.to_vec(),
            400,
            "malformed_json",
        ),
        ("a list", json, b"[]".to_vec(), 400, "malformed_json"),
        (
            "a string",
            json,
            br#""hola""#.to_vec(),
            400,
            "malformed_json",
        ),
        ("null", json, b"null".to_vec(), 400, "malformed_json"),
        ("a number", json, b"12345".to_vec(), 400, "malformed_json"),
        (
            "deeply nested lists",
            json,
            "[".repeat(20_000).into_bytes(),
            400,
            "malformed_json",
        ),
        (
            "deeply nested objects",
            json,
            r#"{"a":"#.repeat(10_000).into_bytes(),
            400,
            "malformed_json",
        ),
        (
            "a body over the JSON limit",
            json,
            "[".repeat(100_000).into_bytes(),
            413,
            "payload_too_large",
        ),
        (
            "invalid UTF-8",
            json,
            b"{\"email\": \"\xff\xfe\"}".to_vec(),
            400,
            "malformed_json",
        ),
        (
            "text/plain",
            Some("text/plain"),
            b"{}".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "form-encoded",
            Some("application/x-www-form-urlencoded"),
            b"email=a".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "JSON look-alike",
            Some("application/jsonx"),
            b"{}".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "no content type",
            None,
            b"{}".to_vec(),
            415,
            "unsupported_media_type",
        ),
    ]
}

#[tokio::test]
async fn broken_bodies_are_spanish_problems_and_store_nothing() {
    let app = TestApp::spawn().await;
    let mut cases = 0;
    for path in ["/api/auth/signup", "/api/auth/login"] {
        for (what, content_type, body, status, code) in broken_bodies() {
            let response = send(&app, Method::POST, path, content_type, body).await;
            let problem = assert_spanish_problem(response, status, code).await;
            assert!(fields(&problem).is_empty(), "{path} {what}: {problem}");
            assert_eq!(user_count(&app).await, 0, "{path} {what}");
            assert_still_answering(&app).await;
            cases += 1;
        }
    }
    assert_eq!(cases, 34);
}

// ------------------------------------------------- wrong types and fields

/// Sign-up bodies with one member at fault: (what, body, field).
fn wrong_signups() -> Vec<(&'static str, Value, &'static str)> {
    vec![
        ("missing city", signup_without("city"), "city"),
        ("missing email", signup_without("email"), "email"),
        (
            "missing password2",
            signup_without("password2"),
            "password2",
        ),
        (
            "null first_name",
            signup_with("first_name", Value::Null),
            "first_name",
        ),
        (
            "number as first_name",
            signup_with("first_name", json!(12345)),
            "first_name",
        ),
        (
            "bool as last_name",
            signup_with("last_name", json!(true)),
            "last_name",
        ),
        (
            "list as email",
            signup_with("email", json!(["a@example.com"])),
            "email",
        ),
        (
            "object as city",
            signup_with("city", json!({"name": "Cali"})),
            "city",
        ),
        (
            "number as password1",
            signup_with("password1", json!(12345678)),
            "password1",
        ),
        (
            "float as country",
            signup_with("country", json!(1.5)),
            "country",
        ),
        (
            "oversized first_name",
            signup_with("first_name", json!("A".repeat(5_000))),
            "first_name",
        ),
        (
            "oversized email",
            signup_with(
                "email",
                json!(format!("{}@example.com", "a".repeat(10_000))),
            ),
            "email",
        ),
        (
            "oversized password",
            signup_with("password1", json!("p".repeat(10_000))),
            "password1",
        ),
        (
            "invalid email",
            signup_with("email", json!("not-an-email")),
            "email",
        ),
        (
            "city without a letter",
            signup_with("city", json!("--")),
            "city",
        ),
        (
            "city of digits",
            signup_with("city", json!("12345")),
            "city",
        ),
        (
            "zero-width name",
            signup_with("first_name", json!("\u{200B}\u{200B}\u{200B}")),
            "first_name",
        ),
        (
            "format-characters-only surname",
            signup_with("last_name", json!("\u{200D}\u{FEFF}\u{2060}\u{200E}")),
            "last_name",
        ),
        (
            "zero-width city",
            signup_with("city", json!("\u{200B}\u{200C}\u{200B}")),
            "city",
        ),
        (
            "control characters",
            signup_with("country", json!("Col\u{0}ombia")),
            "country",
        ),
        (
            "line break in a name",
            signup_with("first_name", json!("Ana\nMaría")),
            "first_name",
        ),
        (
            "one-letter name",
            signup_with("first_name", json!("A")),
            "first_name",
        ),
    ]
}

#[tokio::test]
async fn wrong_types_and_values_name_their_field_and_store_nothing() {
    let app = TestApp::spawn().await;
    let mut cases = 0;
    for (what, body, field) in wrong_signups() {
        let problem =
            assert_spanish_problem(app.signup(&body).await, 400, "validation_failed").await;
        assert_eq!(fields(&problem), [field], "{what}: {problem}");
        assert_eq!(user_count(&app).await, 0, "{what}");
        assert_still_answering(&app).await;
        cases += 1;
    }
    // Log-in: wrong types are refused by name too, never coerced.
    for (body, field) in [
        (
            json!({"email": 12345, "password": "a-long-password"}),
            "email",
        ),
        (
            json!({"email": "a@example.com", "password": 12345678}),
            "password",
        ),
        (json!({"email": "a@example.com"}), "password"),
        (json!({"password": "a-long-password"}), "email"),
        (json!({"email": null, "password": null}), "email"),
    ] {
        let response = app.post_json("/api/auth/login", None, &body).await;
        let problem = assert_spanish_problem(response, 400, "validation_failed").await;
        assert_eq!(fields(&problem)[0], field, "{body}: {problem}");
        assert_still_answering(&app).await;
        cases += 1;
    }
    assert_eq!(cases, 27);
    // And a correct body, with a charset, still signs up.
    let response = send(
        &app,
        Method::POST,
        "/api/auth/signup",
        Some("application/json; charset=utf-8"),
        valid_signup().to_string(),
    )
    .await;
    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn a_sign_up_missing_city_says_so_in_spanish() {
    let app = TestApp::spawn().await;
    let problem = assert_spanish_problem(
        app.signup(&signup_without("city")).await,
        400,
        "validation_failed",
    )
    .await;
    assert_eq!(
        problem["errors"],
        json!([{"field": "city", "message": "es obligatorio"}])
    );
}

// ---------------------------------------------------------------- tokens

#[tokio::test]
async fn every_token_defect_is_401_and_nothing_else() {
    let app = TestApp::spawn().await;
    let player = app.player().await;
    let other_keys = anb_core::auth::TokenKeys::new(
        &anb_core::config::JwtSecret::parse("S", &"another-secret-".repeat(3)).unwrap(),
    );
    let forged = other_keys.issue(&player.user_id).unwrap().token;
    let expired = app
        .state
        .tokens
        .issue_at(&player.user_id, 1_000_000_000)
        .unwrap()
        .token;
    let unsigned = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let claims = b64.encode(
            json!({"sub": player.user_id, "iss": "anb-rising-stars", "aud": "anb-api",
                   "iat": 1_900_000_000u64, "exp": 4_000_000_000u64})
            .to_string(),
        );
        format!("{header}.{claims}.")
    };
    let wrong_audience = jwt_hs256(
        crate::harness::JWT_SECRET,
        &json!({"sub": player.user_id, "iss": "anb-rising-stars", "aud": "someone-else",
                "iat": now(), "exp": now() + 600}),
    );
    let wrong_issuer = jwt_hs256(
        crate::harness::JWT_SECRET,
        &json!({"sub": player.user_id, "iss": "elsewhere", "aud": "anb-api",
                "iat": now(), "exp": now() + 600}),
    );
    let not_a_user = jwt_hs256(
        crate::harness::JWT_SECRET,
        &json!({"sub": "'; DROP TABLE users; --", "iss": "anb-rising-stars", "aud": "anb-api",
                "iat": now(), "exp": now() + 600}),
    );
    let huge = format!(
        "{}.{}.{}",
        "a".repeat(6000),
        "b".repeat(6000),
        "c".repeat(4000)
    );
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("none", None, "missing_token"),
        ("empty bearer", Some("Bearer ".into()), "missing_token"),
        (
            "other scheme",
            Some(format!("Basic {}", "YTpi")),
            "missing_token",
        ),
        (
            "token without scheme",
            Some(player.token.clone()),
            "missing_token",
        ),
        ("garbage", Some("Bearer not.a.jwt".into()), "invalid_token"),
        ("forged", Some(format!("Bearer {forged}")), "invalid_token"),
        (
            "expired",
            Some(format!("Bearer {expired}")),
            "invalid_token",
        ),
        (
            "alg none",
            Some(format!("Bearer {unsigned}")),
            "invalid_token",
        ),
        (
            "wrong audience",
            Some(format!("Bearer {wrong_audience}")),
            "invalid_token",
        ),
        (
            "wrong issuer",
            Some(format!("Bearer {wrong_issuer}")),
            "invalid_token",
        ),
        (
            "subject not a user id",
            Some(format!("Bearer {not_a_user}")),
            "invalid_token",
        ),
        ("huge", Some(format!("Bearer {huge}")), "invalid_token"),
    ];
    let count = cases.len();
    for (what, authorization, code) in cases {
        for path in ["/api/auth/me", "/api/videos", "/api/me/votes"] {
            let mut request = app.client.get(app.url(path));
            if let Some(authorization) = &authorization {
                request = request.header("authorization", authorization);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.headers()["www-authenticate"], "Bearer", "{what}");
            assert_spanish_problem(response, 401, code).await;
        }
        assert_still_answering(&app).await;
    }
    assert_eq!(count, 12);
    // The real token still works.
    assert_eq!(
        app.get("/api/auth/me", Some(&player.token)).await.status(),
        200
    );
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token over arbitrary claims.
fn jwt_hs256(secret: &str, claims: &Value) -> String {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signing_input = format!(
        "{}.{}",
        b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        b64.encode(claims.to_string())
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        b64.encode(mac.finalize().into_bytes())
    )
}

// ------------------------------------------------- path and SQL strings

const NASTY: &[&str] = &[
    "'; DROP TABLE users; --",
    "Robert'); DELETE FROM videos; --",
    "\" OR \"1\"=\"1",
    "../../../etc/passwd",
    "..\\..\\windows\\win.ini",
    "%2e%2e%2fetc%2fpasswd",
    "<script>alert(1)</script>",
    "${jndi:ldap://example.com/a}",
];

#[tokio::test]
async fn path_and_sql_strings_in_text_fields_are_stored_verbatim_and_harm_nothing() {
    let app = TestApp::spawn().await;
    let mut cases = 0;
    for (i, nasty) in NASTY.iter().enumerate() {
        for field in ["first_name", "last_name", "city", "country"] {
            let email = format!("nasty{i}-{field}@example.com");
            let mut body = TestApp::signup_body(&email, "Cali");
            body[field] = json!(nasty);
            let response = app.signup(&body).await;
            assert_eq!(response.status(), 201, "{field} = {nasty}");
            let login = app.login(&email, "a-long-password").await;
            let token: Value = login.json().await.unwrap();
            let me: Value = app
                .get("/api/auth/me", token["access_token"].as_str())
                .await
                .json()
                .await
                .unwrap();
            assert_eq!(me[field], *nasty, "{field} comes back as it was sent");
            cases += 1;
        }
        // As an e-mail address it is refused (and as the login's too).
        let mut body = TestApp::signup_body("x@example.com", "Cali");
        body["email"] = json!(nasty);
        let problem =
            assert_spanish_problem(app.signup(&body).await, 400, "validation_failed").await;
        assert_eq!(fields(&problem), ["email"]);
        let login = app.login(nasty, "a-long-password").await;
        assert_spanish_problem(login, 401, "invalid_credentials").await;
        cases += 2;
    }
    assert_eq!(user_count(&app).await, NASTY.len() as i64 * 4);
    assert_eq!(cases, 48);
    assert_still_answering(&app).await;
}

#[tokio::test]
async fn path_and_sql_strings_in_path_parameters_are_404() {
    let app = TestApp::spawn().await;
    let player = app.player().await;
    let mut cases = 0;
    for nasty in NASTY
        .iter()
        .chain(&["00000000-0000-0000-0000-00000000000g", "1", " "])
    {
        let id = urlencode(nasty);
        for (method, path) in [
            (Method::GET, format!("/api/videos/{id}")),
            (Method::DELETE, format!("/api/videos/{id}")),
            (Method::POST, format!("/api/videos/{id}/publish")),
            (Method::POST, format!("/api/public/videos/{id}/vote")),
        ] {
            let response = app
                .client
                .request(method.clone(), app.url(&path))
                .bearer_auth(&player.token)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            // A value with a slash leaves the route: "not found" either way.
            let code = if status == 404 && nasty.contains('/') {
                response_code(response).await
            } else {
                assert_spanish_problem(response, 404, "video_not_found").await;
                "video_not_found".to_owned()
            };
            assert!(
                ["video_not_found", "not_found"].contains(&code.as_str()),
                "{method} {path}: {code}"
            );
            cases += 1;
        }
    }
    assert_eq!(cases, 44);
    assert_still_answering(&app).await;
}

async fn response_code(response: Response) -> String {
    assert_eq!(response.status(), 404);
    let problem: Value = response.json().await.unwrap();
    problem["code"].as_str().unwrap().to_owned()
}

fn urlencode(raw: &str) -> String {
    url::form_urlencoded::byte_serialize(raw.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
        .replace("%2F", "/")
}

// ------------------------------------------------- pagination and cities

#[tokio::test]
async fn pagination_edge_cases_are_400_naming_the_parameter() {
    let app = TestApp::spawn().await;
    let mut cases = 0;
    for path in ["/api/public/videos", "/api/public/rankings"] {
        for (query, field) in [
            ("page=0", "page"),
            ("page=-1", "page"),
            ("page=abc", "page"),
            ("page=1.5", "page"),
            ("page=", "page"),
            ("page=2147483648", "page"),
            ("page=99999999999999999999999", "page"),
            ("page=1%3B%20DROP%20TABLE%20videos", "page"),
            ("limit=0", "limit"),
            ("limit=101", "limit"),
            ("limit=-5", "limit"),
            ("limit=1e2", "limit"),
            ("limit=%00", "limit"),
        ] {
            let response = app.get(&format!("{path}?{query}"), None).await;
            let problem = assert_spanish_problem(response, 400, "invalid_query").await;
            assert_eq!(fields(&problem), [field], "{path}?{query}");
            cases += 1;
        }
        for query in [
            "page=2147483647",
            "limit=100",
            "limit=1",
            "page=1&limit=20",
            "unknown=1",
        ] {
            let response = app.get(&format!("{path}?{query}"), None).await;
            assert_eq!(response.status(), 200, "{path}?{query}");
            assert_eq!(response.text().await.unwrap(), "[]", "{path}?{query}");
            cases += 1;
        }
    }
    assert_eq!(cases, 36);
    assert_still_answering(&app).await;
}

#[tokio::test]
async fn city_filter_edge_cases() {
    let app = TestApp::spawn().await;
    let (owner, video_id) = app.published_video().await;
    let voter = app.player().await;
    assert_eq!(app.vote(Some(&voter.token), &video_id).await.status(), 200);
    let mut cases = 0;
    // Refused: nothing to compare, or too long.
    for city in ["!!!", "--", "%E2%80%8B%E2%80%8B", &"a".repeat(101)] {
        let response = app
            .get(&format!("/api/public/rankings?city={city}"), None)
            .await;
        let problem = assert_spanish_problem(response, 400, "invalid_query").await;
        assert_eq!(fields(&problem), ["city"], "{city}");
        cases += 1;
    }
    // Found: any case, accents, NFC or NFD, surrounding space or invisible padding.
    for city in [
        "bogota",
        "BOGOTÁ",
        "Bogota%CC%81",
        "%20Bogot%C3%A1%20",
        "%E2%80%8BBogot%C3%A1",
    ] {
        let ranking: Vec<Value> = app
            .get(&format!("/api/public/rankings?city={city}"), None)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(ranking.len(), 1, "{city}");
        assert_eq!(ranking[0]["player_id"], owner.user_id.as_str());
        cases += 1;
    }
    // Not found, but a valid filter: an empty page.
    for city in ["' OR 1=1 --", "..%2F..%2Fetc", "Cali"] {
        let response = app
            .get(&format!("/api/public/rankings?city={city}"), None)
            .await;
        assert_eq!(response.status(), 200, "{city}");
        assert_eq!(response.text().await.unwrap(), "[]", "{city}");
        cases += 1;
    }
    assert_eq!(cases, 12);
    assert_still_answering(&app).await;
}

// ----------------------------------------------------------- e-mail spellings

#[tokio::test]
async fn nfc_and_nfd_spellings_of_one_email_are_one_account() {
    let app = TestApp::spawn().await;
    let composed = "jos\u{e9}@example.com";
    let decomposed = "JOSE\u{301}@example.com";
    let response = app.signup(&TestApp::signup_body(composed, "Cali")).await;
    assert_eq!(response.status(), 201);
    let again = app.signup(&TestApp::signup_body(decomposed, "Cali")).await;
    assert_spanish_problem(again, 400, "duplicate_email").await;
    assert_eq!(user_count(&app).await, 1);
    let login = app.login(decomposed, "a-long-password").await;
    assert_eq!(login.status(), 200);
}

// ------------------------------------------------------- forwarded clients

#[tokio::test]
async fn an_unreadable_forwarded_for_never_makes_the_proxy_the_client() {
    let app = TestApp::builder()
        .rate_limits(anb_api::settings::RateLimits {
            login_per_ip: Some(anb_api::settings::Rate::per_minute(2)),
            ..anb_api::settings::RateLimits::unlimited()
        })
        .trusted_proxies(&["127.0.0.1/32"])
        .spawn()
        .await;
    let login = |forwarded: &'static str| {
        app.client
            .post(app.url("/api/auth/login"))
            .header("x-forwarded-for", forwarded)
            .json(&json!({"email": "nobody@example.com", "password": "whatever-password"}))
            .send()
    };
    // The client wrote `X-Forwarded-For: x`; the proxy appended its address:
    // the client is still 198.51.100.7, whose bucket empties after two.
    for _ in 0..2 {
        assert_eq!(login("x, 198.51.100.7").await.unwrap().status(), 401);
    }
    let limited = login("x, 198.51.100.7").await.unwrap();
    assert_spanish_problem(limited, 429, "rate_limited").await;
    // The same client cannot step out of its bucket with more garbage.
    let limited = login("garbage, 198.51.100.7").await.unwrap();
    assert_spanish_problem(limited, 429, "rate_limited").await;
    // No readable client address at all: refused, not counted as the proxy.
    for forwarded in ["x", "198.51.100.7, x", "unknown"] {
        let refused = login(forwarded).await.unwrap();
        assert_spanish_problem(refused, 400, "invalid_forwarded_for").await;
    }
    // The proxy's own bucket (no header) is untouched by all this.
    let direct = app
        .client
        .post(app.url("/api/auth/login"))
        .json(&json!({"email": "nobody@example.com", "password": "whatever-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 401);
}
