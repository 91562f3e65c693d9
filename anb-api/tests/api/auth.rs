//! Contract rows 1 and 2 (sign-up, login), the profile, tokens and login limits.

use anb_api::settings::{LoginBackoff, RateLimits};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{TestApp, assert_problem};

#[tokio::test]
async fn signup_creates_the_user_and_login_returns_a_bearer_token() {
    let app = TestApp::spawn().await;
    let response = app
        .signup(&TestApp::signup_body("  Ana.Gomez@Example.COM ", "Bogotá"))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    assert!(body["message"].is_string());
    let user_id = body["user_id"].as_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&user_id).is_ok());

    // Stored lower-cased: any case logs in.
    let response = app.login("ANA.gomez@example.com", "a-long-password").await;
    assert_eq!(response.status(), StatusCode::OK);
    let token: Value = response.json().await.unwrap();
    assert_eq!(token["token_type"], "Bearer");
    assert_eq!(token["expires_in"], 3600);
    let access = token["access_token"].as_str().unwrap();

    let me = app.get("/api/auth/me", Some(access)).await;
    assert_eq!(me.status(), StatusCode::OK);
    let me: Value = me.json().await.unwrap();
    assert_eq!(me["user_id"], user_id.as_str());
    assert_eq!(me["email"], "ana.gomez@example.com");
    assert_eq!(me["city"], "Bogotá");
    assert!(me.get("password").is_none() && me.get("password_hash").is_none());
    assert!(me["created_at"].as_str().unwrap().ends_with('Z'), "{me}");
}

#[tokio::test]
async fn signup_reports_every_invalid_field() {
    let app = TestApp::spawn().await;
    let body = json!({
        "first_name": "A",
        "last_name": "Gómez",
        "email": "not-an-email",
        "password1": "short",
        "password2": "short",
        "city": "Bogotá",
        "country": "C",
    });
    let problem = assert_problem(app.signup(&body).await, 400, "validation_failed").await;
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    for field in ["first_name", "email", "password1", "country"] {
        assert!(fields.contains(&field), "{field} missing from {problem}");
    }
    assert!(!fields.contains(&"last_name"));
}

#[tokio::test]
async fn signup_with_different_passwords_or_taken_email_is_400() {
    let app = TestApp::spawn().await;
    let mut body = TestApp::signup_body("dup@example.com", "Cali");
    body["password2"] = "another-long-password".into();
    let problem = assert_problem(app.signup(&body).await, 400, "passwords_differ").await;
    assert_eq!(problem["errors"][0]["field"], "password2");

    let body = TestApp::signup_body("dup@example.com", "Cali");
    assert_eq!(app.signup(&body).await.status(), StatusCode::CREATED);
    let again = TestApp::signup_body("DUP@example.com", "Cali");
    assert_problem(app.signup(&again).await, 400, "duplicate_email").await;
}

#[tokio::test]
async fn concurrent_duplicate_signups_give_one_201_and_only_400s() {
    let app = TestApp::spawn().await;
    let body = TestApp::signup_body("race@example.com", "Medellín");
    let attempts = futures::future::join_all((0..8).map(|_| app.signup(&body))).await;
    let mut created = 0;
    for response in attempts {
        match response.status().as_u16() {
            201 => created += 1,
            400 => {
                assert_problem(response, 400, "duplicate_email").await;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(created, 1);
}

#[tokio::test]
async fn login_with_bad_credentials_is_the_same_401_whatever_the_cause() {
    let app = TestApp::spawn().await;
    let player = app.player().await;
    let wrong_password = assert_problem(
        app.login(&player.email, "not-the-password").await,
        401,
        "invalid_credentials",
    )
    .await;
    let unknown_email = assert_problem(
        app.login("nobody@example.com", "a-long-password").await,
        401,
        "invalid_credentials",
    )
    .await;
    assert_eq!(wrong_password, unknown_email);
}

#[tokio::test]
async fn logins_beyond_the_hashing_slots_wait_their_turn() {
    // Password checks run one per CPU at a time; four times as many logins
    // at once all get their answer, none an error.
    let app = TestApp::spawn().await;
    let player = app.player().await;
    let cpus = std::thread::available_parallelism().unwrap().get();
    let app = &app;
    let attempts = (0..4 * cpus).map(|i| {
        let email = if i % 4 == 3 {
            "nobody@example.com"
        } else {
            player.email.as_str()
        };
        let password = if i % 4 == 2 {
            "not-the-password"
        } else {
            player.password.as_str()
        };
        async move { (i, app.login(email, password).await.status()) }
    });
    for (i, status) in futures::future::join_all(attempts).await {
        let expected = if i % 4 < 2 {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        };
        assert_eq!(status, expected, "login {i}");
    }
}

#[tokio::test]
async fn malformed_login_is_400() {
    let app = TestApp::spawn().await;
    let missing_password = app
        .post_json("/api/auth/login", None, &json!({"email": "a@example.com"}))
        .await;
    let problem = assert_problem(missing_password, 400, "validation_failed").await;
    assert_eq!(problem["errors"][0]["field"], "password", "{problem}");
    let not_json = app
        .client
        .post(app.url("/api/auth/login"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_problem(not_json, 400, "malformed_json").await;
}

#[tokio::test]
async fn missing_forged_or_foreign_tokens_are_401() {
    let app = TestApp::spawn().await;
    assert_problem(app.get("/api/auth/me", None).await, 401, "missing_token").await;
    assert_problem(
        app.get("/api/auth/me", Some("not.a.jwt")).await,
        401,
        "invalid_token",
    )
    .await;

    // Signed with another secret.
    let other = anb_core::auth::TokenKeys::new(
        &anb_core::config::JwtSecret::parse("S", &"another-secret-".repeat(3)).unwrap(),
    );
    let player = app.player().await;
    let foreign = other.issue(&player.user_id).unwrap().token;
    assert_problem(
        app.get("/api/auth/me", Some(&foreign)).await,
        401,
        "invalid_token",
    )
    .await;

    // Ours, but for a user that does not exist (e.g. deleted).
    let ghost = app
        .state
        .tokens
        .issue(&uuid::Uuid::now_v7().to_string())
        .unwrap()
        .token;
    assert_problem(
        app.get("/api/auth/me", Some(&ghost)).await,
        401,
        "invalid_token",
    )
    .await;

    // Ours, expired.
    let expired = app
        .state
        .tokens
        .issue_at(
            &player.user_id,
            time::OffsetDateTime::now_utc().unix_timestamp() as u64 - 7200,
        )
        .unwrap()
        .token;
    let response = app.get("/api/auth/me", Some(&expired)).await;
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_problem(response, 401, "invalid_token").await;
}

/// Logs in from `ip`, as a trusted proxy (the test client on 127.0.0.1)
/// forwarding that client would.
async fn login_from(app: &TestApp, ip: &str, email: &str, password: &str) -> reqwest::Response {
    app.client
        .post(app.url("/api/auth/login"))
        .header("x-forwarded-for", ip)
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn failed_logins_back_off_per_account_and_address_without_locking_the_owner_out() {
    let app = TestApp::builder()
        .rate_limits(RateLimits {
            login_backoff: Some(LoginBackoff { free_failures: 3 }),
            ..RateLimits::unlimited()
        })
        .trusted_proxies(&["127.0.0.1/32"])
        .spawn()
        .await;
    let player = app.player().await;
    let (attacker, home) = ("203.0.113.9", "198.51.100.7");
    // Successful logins never count: the owner logs in as often as they like.
    for _ in 0..5 {
        let ok = login_from(&app, home, &player.email, &player.password).await;
        assert_eq!(ok.status(), 200);
    }
    for _ in 0..3 {
        let wrong = login_from(&app, attacker, &player.email, "wrong-password").await;
        assert_problem(wrong, 401, "invalid_credentials").await;
    }
    // The fourth attempt from that address waits, even with the right password.
    let limited = login_from(&app, attacker, &player.email, &player.password).await;
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    assert_problem(limited, 429, "rate_limited").await;
    // The owner, from their own address, is not locked out.
    let ok = login_from(&app, home, &player.email, &player.password).await;
    assert_eq!(ok.status(), 200);
    // Neither is another account from the attacker's address.
    let other = app.player().await;
    let ok = login_from(&app, attacker, &other.email, &other.password).await;
    assert_eq!(ok.status(), 200);
    // The address in other letter case is the same account, and the same wait.
    let limited = login_from(&app, attacker, &player.email.to_uppercase(), "x").await;
    assert_problem(limited, 429, "rate_limited").await;
}

#[tokio::test]
async fn a_login_flood_beyond_the_hashing_line_is_shed_with_503_and_retry_after() {
    let app = TestApp::builder().password_hash_queue(0).spawn().await;
    let player = app.player().await;
    let attempts = (0..24).map(|_| app.login(&player.email, "wrong-password"));
    let responses = futures::future::join_all(attempts).await;
    let mut shed = 0;
    for response in responses {
        match response.status().as_u16() {
            401 => {}
            503 => {
                assert_eq!(response.headers()["retry-after"], "1");
                assert_problem(response, 503, "overloaded").await;
                shed += 1;
            }
            other => panic!("unexpected {other}: {}", response.text().await.unwrap()),
        }
    }
    assert!(
        shed > 0,
        "with no waiting line, concurrent logins beyond the slots are shed"
    );
    // Once the flood is over, logins are served again.
    assert_eq!(
        app.login(&player.email, &player.password).await.status(),
        200
    );
}

#[tokio::test]
async fn one_client_flooding_log_in_gets_429_and_another_client_still_logs_in() {
    // The production line: 16 waiting at most, 2 places per client.
    let app = TestApp::builder()
        .password_hash_queue(16)
        .password_hash_queue_per_client(2)
        .trusted_proxies(&["127.0.0.1/32"])
        .spawn()
        .await;
    let player = app.player().await;
    let (flooder, home) = ("203.0.113.9", "198.51.100.7");
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let (client, url) = (app.client.clone(), app.url("/api/auth/login"));
        let email = player.email.clone();
        flood.spawn(async move {
            client
                .post(url)
                .header("x-forwarded-for", flooder)
                .json(&json!({"email": email, "password": "wrong-password"}))
                .send()
                .await
                .unwrap()
        });
    }
    // The first answer back means the flood has reached the line.
    let mut answers = vec![flood.join_next().await.unwrap().unwrap()];
    let ok = login_from(&app, home, &player.email, &player.password).await;
    assert_eq!(
        ok.status(),
        200,
        "the other client's log-in: {}",
        ok.text().await.unwrap()
    );
    answers.extend(flood.join_all().await);
    let mut refused = 0;
    for answer in answers {
        match answer.status().as_u16() {
            401 => {}
            429 => {
                assert_eq!(answer.headers()["retry-after"], "1");
                assert_problem(answer, 429, "too_many_in_progress").await;
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", answer.text().await.unwrap()),
        }
    }
    assert!(
        refused >= 20,
        "the flooding client holds two places at most: {refused} of 40 refused"
    );
    assert_eq!(app.state.passwords.held_by(flooder.parse().unwrap()), 0);
    // Once its own are done, the flooding address logs in again.
    let ok = login_from(&app, flooder, &player.email, &player.password).await;
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn a_flood_from_many_addresses_is_still_shed_by_the_whole_line() {
    let app = TestApp::builder()
        .password_hash_queue(0)
        .password_hash_queue_per_client(2)
        .trusted_proxies(&["127.0.0.1/32"])
        .spawn()
        .await;
    let player = app.player().await;
    let attempts = (0..24).map(|i| {
        let (app, email) = (&app, player.email.clone());
        async move { login_from(app, &format!("198.18.0.{i}"), &email, "wrong-password").await }
    });
    let mut shed = 0;
    for response in futures::future::join_all(attempts).await {
        match response.status().as_u16() {
            401 => {}
            503 => {
                assert_problem(response, 503, "overloaded").await;
                shed += 1;
            }
            other => panic!("unexpected {other}: {}", response.text().await.unwrap()),
        }
    }
    assert!(
        shed > 0,
        "one log-in per address: the bound per client never applies, the whole line's does"
    );
}

/// Logs in twice, logs one token out, and checks that it is refused on every
/// authenticated endpoint while the other keeps working.
async fn logout_revokes_only_the_presented_token(app: TestApp) {
    let player = app.player().await;
    let second = app.login(&player.email, &player.password).await;
    let second: Value = second.json().await.unwrap();
    let kept = second["access_token"].as_str().unwrap().to_owned();
    let video_id = app.uploaded_video(&player, false).await;

    let response = app
        .post_json("/api/auth/logout", Some(&player.token), &json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["message"], "Sesión cerrada exitosamente.");

    let revoked = Some(player.token.as_str());
    for path in [
        "/api/auth/me".to_owned(),
        "/api/videos".to_owned(),
        format!("/api/videos/{video_id}"),
        "/api/me/votes".to_owned(),
    ] {
        assert_problem(app.get(&path, revoked).await, 401, "invalid_token").await;
    }
    assert_problem(
        app.delete(&format!("/api/videos/{video_id}"), revoked)
            .await,
        401,
        "invalid_token",
    )
    .await;
    assert_problem(
        app.post_json(
            &format!("/api/videos/{video_id}/publish"),
            revoked,
            &json!({}),
        )
        .await,
        401,
        "invalid_token",
    )
    .await;
    let clip = crate::fixtures::mp4(crate::fixtures::VALID_PORTRAIT).await;
    assert_problem(
        app.upload(revoked, clip, "Otra jugada", None).await,
        401,
        "invalid_token",
    )
    .await;
    assert_problem(
        app.post_json("/api/auth/logout", revoked, &json!({})).await,
        401,
        "invalid_token",
    )
    .await;

    // The same player's other session is untouched.
    assert_eq!(app.get("/api/auth/me", Some(&kept)).await.status(), 200);
    assert_eq!(app.get("/api/videos", Some(&kept)).await.status(), 200);
}

#[tokio::test]
async fn logout_revokes_only_the_presented_token_on_sqlite() {
    logout_revokes_only_the_presented_token(TestApp::spawn().await).await;
}

#[tokio::test]
async fn logout_revokes_only_the_presented_token_on_postgres_and_s3() {
    let app = TestApp::builder()
        .backend(crate::harness::Backend::PostgresS3)
        .spawn()
        .await;
    logout_revokes_only_the_presented_token(app).await;
}

#[tokio::test]
async fn logout_without_a_token_is_401() {
    let app = TestApp::spawn().await;
    assert_problem(
        app.post_json("/api/auth/logout", None, &json!({})).await,
        401,
        "missing_token",
    )
    .await;
}
