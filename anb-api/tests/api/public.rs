//! Contract rows 7–9: the public list, votes and rankings, and my votes.

use anb_api::settings::{Rate, RateLimits};
use reqwest::StatusCode;
use serde_json::Value;

use crate::harness::{Backend, TestApp, assert_problem};

#[tokio::test]
async fn public_list_shows_published_videos_with_player_and_votes() {
    let app = TestApp::spawn().await;
    let empty = app.get("/api/public/videos", None).await;
    assert_eq!(empty.status(), StatusCode::OK);
    assert_eq!(empty.headers()["x-total-count"], "0");
    assert_eq!(empty.text().await.unwrap(), "[]");

    let (owner, video_id) = app.published_video().await;
    let unprocessed_owner = app.player().await;
    app.uploaded_video(&unprocessed_owner, true).await;
    let voter = app.player().await;
    assert_eq!(
        app.vote(Some(&voter.token), &video_id).await.status(),
        StatusCode::OK
    );

    // Optional authentication: with or without a token.
    for token in [None, Some(voter.token.as_str())] {
        let response = app.get("/api/public/videos", token).await;
        assert_eq!(response.headers()["x-total-count"], "1");
        let list: Vec<Value> = response.json().await.unwrap();
        assert_eq!(list.len(), 1);
        let video = &list[0];
        assert_eq!(video["video_id"], video_id.as_str());
        assert_eq!(video["player_id"], owner.user_id.as_str());
        assert_eq!(video["player_name"], "Ana Gómez");
        assert_eq!(video["city"], "Bogotá");
        assert_eq!(video["votes"], 1);
        let playable = app.url(video["processed_url"].as_str().unwrap());
        assert_eq!(
            app.client.get(playable).send().await.unwrap().status(),
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn bad_pagination_is_400() {
    let app = TestApp::spawn().await;
    for query in ["page=0", "limit=0", "limit=101", "page=abc", "limit=-3"] {
        for path in ["/api/public/videos", "/api/public/rankings"] {
            let response = app.get(&format!("{path}?{query}"), None).await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}?{query}");
            let problem: Value = response.json().await.unwrap();
            assert!(
                ["invalid_query", "malformed_request"].contains(&problem["code"].as_str().unwrap()),
                "{problem}"
            );
        }
    }
    assert_problem(
        app.get("/api/public/rankings?city=%21%21%21", None).await,
        400,
        "invalid_query",
    )
    .await;
}

#[tokio::test]
async fn voting_rules_and_messages() {
    let app = TestApp::spawn().await;
    let (owner, video_id) = app.published_video().await;
    let voter = app.player().await;

    let response = app.vote(Some(&voter.token), &video_id).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap()["message"],
        "Voto registrado exitosamente."
    );

    let again = assert_problem(
        app.vote(Some(&voter.token), &video_id).await,
        400,
        "already_voted",
    )
    .await;
    assert_eq!(again["detail"], "Ya has votado por este video.");
    assert_problem(
        app.vote(Some(&owner.token), &video_id).await,
        400,
        "own_video",
    )
    .await;
    assert_problem(app.vote(None, &video_id).await, 401, "missing_token").await;

    let unpublished = app.uploaded_video(&owner, true).await;
    assert_problem(
        app.vote(Some(&voter.token), &unpublished).await,
        404,
        "video_not_found",
    )
    .await;
    assert_problem(
        app.vote(Some(&voter.token), &uuid::Uuid::now_v7().to_string())
            .await,
        404,
        "video_not_found",
    )
    .await;
    assert_problem(
        app.vote(Some(&voter.token), "not-an-id").await,
        404,
        "video_not_found",
    )
    .await;

    let mine: Vec<Value> = app
        .get("/api/me/votes", Some(&voter.token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(mine, vec![Value::from(video_id.as_str())]);
    assert_eq!(
        app.get("/api/me/votes", Some(&owner.token))
            .await
            .text()
            .await
            .unwrap(),
        "[]"
    );
    assert_problem(app.get("/api/me/votes", None).await, 401, "missing_token").await;
}

async fn concurrent_duplicate_votes_count_once(backend: Backend) {
    let app = TestApp::builder().backend(backend).spawn().await;
    let (_, video_id) = app.published_video().await;
    let voter = app.player().await;
    let attempts =
        futures::future::join_all((0..10).map(|_| app.vote(Some(&voter.token), &video_id))).await;
    let mut ok = 0;
    for response in attempts {
        match response.status().as_u16() {
            200 => ok += 1,
            400 => {
                assert_problem(response, 400, "already_voted").await;
            }
            other => panic!(
                "unexpected status {other}: {}",
                response.text().await.unwrap()
            ),
        }
    }
    assert_eq!(ok, 1);
    let list: Vec<Value> = app
        .get("/api/public/videos", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list[0]["votes"], 1);
}

#[tokio::test]
async fn concurrent_duplicate_votes_count_once_on_sqlite() {
    concurrent_duplicate_votes_count_once(Backend::Embedded).await;
}

#[tokio::test]
async fn concurrent_duplicate_votes_count_once_on_postgres() {
    concurrent_duplicate_votes_count_once(Backend::PostgresS3).await;
}

#[tokio::test]
async fn rankings_order_players_by_votes_and_filter_by_normalised_city() {
    // This test reads the ranking right after changing it; pages kept for a moment are
    // tested on their own (`a_vote_shows_in_the_cached_rankings_within_one_second`).
    let app = TestApp::builder()
        .rankings_cache(std::time::Duration::ZERO)
        .spawn()
        .await;
    assert_eq!(
        app.get("/api/public/rankings", None)
            .await
            .text()
            .await
            .unwrap(),
        "[]"
    );

    let bogota = app.player_in("Bogotá").await;
    let bogota_video = app.uploaded_video(&bogota, true).await;
    app.process(&bogota_video).await;
    let cali = app.player_in("Cali").await;
    let cali_video = app.uploaded_video(&cali, true).await;
    app.process(&cali_video).await;

    for _ in 0..2 {
        let voter = app.player().await;
        assert_eq!(
            app.vote(Some(&voter.token), &cali_video).await.status(),
            200
        );
    }
    let voter = app.player().await;
    assert_eq!(
        app.vote(Some(&voter.token), &bogota_video).await.status(),
        200
    );

    let all: Vec<Value> = app
        .get("/api/public/rankings", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0]["position"], 1);
    assert_eq!(all[0]["player_id"], cali.user_id.as_str());
    assert_eq!(all[0]["votes"], 2);
    assert_eq!(all[0]["username"], "Ana Gómez");
    assert_eq!(all[0]["city"], "Cali");
    assert_eq!(all[1]["position"], 2);
    assert_eq!(all[1]["player_id"], bogota.user_id.as_str());

    for filter in ["bogota", "BOGOTÁ", "%20Bogot%C3%A1%20"] {
        let only: Vec<Value> = app
            .get(&format!("/api/public/rankings?city={filter}"), None)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(only.len(), 1, "{filter}");
        assert_eq!(only[0]["player_id"], bogota.user_id.as_str());
        assert_eq!(only[0]["position"], 1);
    }
    let second_page: Vec<Value> = app
        .get("/api/public/rankings?page=2&limit=1", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(second_page.len(), 1);
    assert_eq!(second_page[0]["position"], 2);
}

/// Rankings pages are served from memory for a moment, within the rule that a
/// vote shows within one second: at the longest age allowed, a request sent a
/// second after the vote sees it.
#[tokio::test]
async fn a_vote_shows_in_the_cached_rankings_within_one_second() {
    let app = TestApp::builder()
        .rankings_cache(std::time::Duration::from_secs(1))
        .spawn()
        .await;
    let (_, video_id) = app.published_video().await;
    let voter = app.player().await;
    let votes_of_the_leader = || async {
        let ranking: Vec<Value> = app
            .get("/api/public/rankings", None)
            .await
            .json()
            .await
            .unwrap();
        ranking[0]["votes"].as_i64().unwrap()
    };
    assert_eq!(votes_of_the_leader().await, 0);
    assert_eq!(app.vote(Some(&voter.token), &video_id).await.status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(1050)).await;
    assert_eq!(votes_of_the_leader().await, 1);
}

#[tokio::test]
async fn votes_are_rate_limited_per_user_and_per_client_ip() {
    let app = TestApp::builder()
        .rate_limits(RateLimits {
            vote_per_user: Some(Rate::per_minute(2)),
            vote_per_ip: Some(Rate::per_minute(3)),
            ..RateLimits::unlimited()
        })
        .trusted_proxies(&["127.0.0.1/32"])
        .spawn()
        .await;
    let mut videos = Vec::new();
    for _ in 0..4 {
        videos.push(app.published_video().await.1);
    }
    let voter = app.player().await;
    assert_eq!(
        vote_from(&app, &voter.token, &videos[0], "198.51.100.1")
            .await
            .status(),
        200
    );
    assert_eq!(
        vote_from(&app, &voter.token, &videos[1], "198.51.100.2")
            .await
            .status(),
        200
    );
    let limited = vote_from(&app, &voter.token, &videos[2], "198.51.100.3").await;
    assert!(limited.headers().contains_key("retry-after"));
    assert_problem(limited, 429, "rate_limited").await;

    // Per IP, keyed on the forwarded client address behind the trusted proxy.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let other = app.player().await;
        statuses.push(
            vote_from(&app, &other.token, &videos[3], "203.0.113.50")
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
}

async fn vote_from(
    app: &TestApp,
    token: &str,
    video_id: &str,
    client_ip: &str,
) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/api/public/videos/{video_id}/vote")))
        .bearer_auth(token)
        .header("x-forwarded-for", client_ip)
        .send()
        .await
        .unwrap()
}
