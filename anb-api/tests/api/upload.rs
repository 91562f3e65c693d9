//! Contract row 3's failures: wrong type, too large, too short or long, too
//! low a resolution, bad title, no token. None leaves a row, a job or an
//! object behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anb_api::settings::UploadLimits;
use futures::StreamExt;
use reqwest::multipart::{Form, Part};
use serde_json::Value;

use crate::fixtures;
use crate::harness::{Player, TestApp, assert_problem};

/// Nothing from rejected uploads: no video listed, no job queued, no file
/// in storage.
pub async fn assert_nothing_left(app: &TestApp, player: &Player) {
    let list: Vec<Value> = app
        .get("/api/videos", Some(&player.token))
        .await
        .json()
        .await
        .unwrap();
    assert!(list.is_empty(), "{list:?}");
    assert_eq!(app.state.queue.stats().await.unwrap().ready, 0);
    let local = app.state.storage.as_local().unwrap();
    let mut stack = vec![local.root().to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                panic!("object left in storage: {}", entry.path().display());
            }
        }
    }
}

#[tokio::test]
async fn content_that_is_not_mp4_is_refused_whatever_its_name() {
    let app = TestApp::spawn().await;
    let player = app.player().await;
    let response = app
        .upload(
            Some(&player.token),
            b"GIF89a definitely not a video".repeat(1000),
            "Un título válido",
            None,
        )
        .await;
    assert_problem(response, 400, "invalid_file_type").await;
    assert_nothing_left(&app, &player).await;
}

#[tokio::test]
async fn too_short_too_long_and_low_resolution_videos_are_refused() {
    let app = TestApp::spawn().await;
    let player = app.player().await;
    let cases = [
        (fixtures::TOO_SHORT, "duration_out_of_range"),
        (fixtures::TOO_LONG, "duration_out_of_range"),
        (fixtures::LOW_RESOLUTION, "resolution_too_low"),
    ];
    for (spec, code) in cases {
        let bytes = fixtures::mp4(spec).await;
        let response = app
            .upload(Some(&player.token), bytes, "Un título válido", None)
            .await;
        assert_problem(response, 400, code).await;
    }
    assert_nothing_left(&app, &player).await;
}

#[tokio::test]
async fn bad_titles_and_flags_are_refused_per_field() {
    let app = TestApp::spawn().await;
    let player = app.player().await;
    let bytes = fixtures::mp4(fixtures::VALID_PORTRAIT).await;
    for title in ["", "abc", &"x".repeat(101)] {
        let response = app
            .upload(Some(&player.token), bytes.clone(), title, None)
            .await;
        let problem = assert_problem(response, 400, "validation_failed").await;
        assert_eq!(problem["errors"][0]["field"], "title");
    }
    let response = app
        .upload(
            Some(&player.token),
            bytes.clone(),
            "Un título válido",
            Some("maybe"),
        )
        .await;
    let problem = assert_problem(response, 400, "validation_failed").await;
    assert_eq!(problem["errors"][0]["field"], "is_public");

    let no_file = app
        .client
        .post(app.url("/api/videos/upload"))
        .bearer_auth(&player.token)
        .multipart(Form::new().text("title", "Un título válido"))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(no_file, 400, "validation_failed").await;
    assert_eq!(problem["errors"][0]["field"], "video_file");
    assert_nothing_left(&app, &player).await;
}

#[tokio::test]
async fn upload_without_a_token_is_401() {
    let app = TestApp::spawn().await;
    let bytes = fixtures::mp4(fixtures::VALID_PORTRAIT).await;
    assert_problem(
        app.upload(None, bytes, "Un título válido", None).await,
        401,
        "missing_token",
    )
    .await;
}

/// A body of `size` zero bytes made on the fly, never held in memory;
/// `produced` counts the bytes the client actually took from it.
fn zeros(size: u64, produced: Arc<AtomicU64>) -> reqwest::Body {
    const CHUNK: usize = 256 * 1024;
    let chunks = size.div_ceil(CHUNK as u64);
    let stream = futures::stream::iter(0..chunks).map(move |i| {
        let len = if i + 1 == chunks {
            size - i * CHUNK as u64
        } else {
            CHUNK as u64
        };
        produced.fetch_add(len, Ordering::Relaxed);
        Ok::<_, std::io::Error>(bytes::Bytes::from(vec![0u8; len as usize]))
    });
    reqwest::Body::wrap_stream(stream)
}

#[tokio::test]
async fn a_file_over_100_mb_is_cut_off_while_streaming() {
    let app = TestApp::spawn().await;
    let player = app.player().await;
    // No length declared: the server can only find out by counting. The
    // body is three times the limit so that reading it all would show.
    let produced = Arc::new(AtomicU64::new(0));
    let size = 300 * 1024 * 1024;
    let part = Part::stream(zeros(size, produced.clone())).file_name("big.mp4");
    let form = Form::new()
        .text("title", "Un título válido")
        .part("video_file", part);
    let response = app
        .client
        .post(app.url("/api/videos/upload"))
        .bearer_auth(&player.token)
        .multipart(form)
        .timeout(Duration::from_secs(300))
        .send()
        .await;
    match response {
        Ok(response) => {
            assert_problem(response, 400, "file_too_large").await;
        }
        // The server may close the connection before the client has
        // finished sending; that is the cut-off this test is about.
        Err(error) => assert!(
            error.is_request() || error.is_body(),
            "unexpected error: {error:?}"
        ),
    }
    let sent = produced.load(Ordering::Relaxed);
    assert!(
        sent < 200 * 1024 * 1024,
        "the server read {sent} bytes: not cut off at 100 MB"
    );
    assert_nothing_left(&app, &player).await;
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_refused_before_reading() {
    let app = TestApp::builder()
        .upload_limits(UploadLimits {
            max_bytes: 1024 * 1024,
            ..UploadLimits::default()
        })
        .spawn()
        .await;
    let player = app.player().await;
    let big = Part::bytes(vec![0u8; 2 * 1024 * 1024]).file_name("big.mp4");
    let form = Form::new()
        .text("title", "Un título válido")
        .part("video_file", big);
    let response = app
        .client
        .post(app.url("/api/videos/upload"))
        .bearer_auth(&player.token)
        .multipart(form)
        .send()
        .await;
    if let Ok(response) = response {
        assert_problem(response, 400, "file_too_large").await;
    }
    assert_nothing_left(&app, &player).await;
}
