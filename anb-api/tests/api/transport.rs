//! The edge under hostile transport: oversized and endless bodies, hostile
//! multipart forms, slow clients, and answers given before the body was read.
//! Raw TCP where the case needs bytes no HTTP client would send.

use std::time::{Duration, Instant};

use anb_api::settings::UploadLimits;
use anb_api::transport::TransportLimits;
use reqwest::multipart::{Form, Part};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::fixtures;
use crate::harness::{TestApp, assert_problem};
use crate::upload::assert_nothing_left;

/// Short timeouts, so slow clients are cut off within a test's patience.
fn short_timeouts() -> TransportLimits {
    TransportLimits {
        idle: Duration::from_secs(2),
        header: Duration::from_secs(1),
        body_window: Duration::from_secs(1),
        body_min_bytes: 1024,
        ..TransportLimits::default()
    }
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Reads until the server closes the connection (or `patience` runs out,
/// which fails the test): what it sent.
async fn read_until_closed(stream: &mut TcpStream, patience: Duration) -> Vec<u8> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(patience, async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server kept the connection open for {patience:?}"
    );
    received
}

/// The status and the JSON body of a raw HTTP/1.1 answer.
fn parse_answer(raw: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(raw);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    let body = if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        // One chunk: its size line, the data.
        body.split("\r\n").nth(1).unwrap_or_default().to_owned()
    } else {
        body.to_owned()
    };
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_declared_10_mb_json_body_is_refused_with_413_unread() {
    let app = TestApp::spawn().await;
    let password = "x".repeat(10 * 1024 * 1024);
    let response = app
        .client
        .post(app.url("/api/auth/login"))
        .json(&serde_json::json!({"email": "ana@example.com", "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    assert_problem(response, 413, "payload_too_large").await;
    // And on sign-up, with a body that stops only at the limit.
    let body = serde_json::json!({"first_name": "a".repeat(200 * 1024)});
    let response = app.post_json("/api/auth/signup", None, &body).await;
    assert_problem(response, 413, "payload_too_large").await;
    assert_eq!(app.get("/health", None).await.status(), 200);
}

#[tokio::test]
async fn a_chunked_json_body_is_cut_off_at_the_limit() {
    let app = TestApp::spawn().await;
    // 10 MB in 64 KiB chunks, no Content-Length.
    let chunks = (0..160).map(|i| {
        let chunk = if i == 0 {
            b"{\"email\":\"ana@example.com\",\"password\":\"".to_vec()
        } else {
            vec![b'x'; 64 * 1024]
        };
        Ok::<_, std::io::Error>(chunk)
    });
    let response = app
        .client
        .post(app.url("/api/auth/login"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_problem(response, 413, "payload_too_large").await;
}

/// A valid upload form with `extra` parts added after the file.
fn form_with(video: Vec<u8>, extra: &[(&'static str, String)]) -> Form {
    let mut form = Form::new().text("title", "Jugada de prueba").part(
        "video_file",
        Part::bytes(video)
            .file_name("clip.mp4")
            .mime_str("video/mp4")
            .unwrap(),
    );
    for (name, value) in extra {
        form = form.text(*name, value.clone());
    }
    form
}

#[tokio::test]
async fn hostile_multipart_forms_are_refused_and_leave_nothing() {
    let app = TestApp::spawn().await;
    let player = app.player().await;
    let video = fixtures::mp4(fixtures::VALID_PORTRAIT).await;
    let cases: Vec<(&str, Form, &str, Option<&str>)> = vec![
        (
            "unknown field",
            form_with(video.clone(), &[("comment", "hola".into())]),
            "validation_failed",
            Some("comment"),
        ),
        (
            "repeated title",
            form_with(video.clone(), &[("title", "Otro título".into())]),
            "validation_failed",
            Some("title"),
        ),
        (
            "repeated file",
            form_with(video.clone(), &[]).part(
                "video_file",
                Part::bytes(video.clone()).file_name("again.mp4"),
            ),
            "validation_failed",
            Some("video_file"),
        ),
        (
            "text field of 1 MB",
            form_with(video.clone(), &[("is_public", "t".repeat(1 << 20))]),
            "validation_failed",
            Some("is_public"),
        ),
        (
            "part header of 1 MB",
            form_with(video.clone(), &[]).part(
                "is_public",
                Part::text("true").file_name("n".repeat(1 << 20)),
            ),
            "malformed_request",
            None,
        ),
    ];
    for (what, form, code, field) in cases {
        let response = app
            .client
            .post(app.url("/api/videos/upload"))
            .bearer_auth(&player.token)
            .multipart(form)
            .send()
            .await
            .unwrap();
        let body = assert_problem(response, 400, code).await;
        if let Some(field) = field {
            assert_eq!(body["errors"][0]["field"], field, "{what}: {body}");
        }
    }
    assert_nothing_left(&app, &player).await;
}

#[tokio::test]
async fn a_chunked_upload_is_cut_off_at_the_limit_whatever_its_fields() {
    let app = TestApp::builder()
        .upload_limits(UploadLimits {
            max_bytes: 1024 * 1024,
            ..UploadLimits::default()
        })
        .spawn()
        .await;
    let player = app.player().await;
    // 8 MB of multipart with no Content-Length, and nothing but the file.
    let boundary = "hostile-boundary";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"video_file\"; filename=\"a.mp4\"\r\n\r\n"
    );
    let chunks = std::iter::once(head.into_bytes())
        .chain((0..128).map(|_| vec![0u8; 64 * 1024]))
        .map(Ok::<_, std::io::Error>);
    let response = app
        .client
        .post(app.url("/api/videos/upload"))
        .bearer_auth(&player.token)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_problem(response, 400, "file_too_large").await;
    assert_nothing_left(&app, &player).await;
}

/// Sends `bytes` one at a time, `gap` apart, until the server closes the
/// connection: how many went out, and what the server answered.
async fn trickle(stream: TcpStream, bytes: &[u8], gap: Duration) -> (usize, Vec<u8>) {
    let (mut reader, mut writer) = stream.into_split();
    let closed = tokio::spawn(async move {
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break answer,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    });
    let mut sent = 0;
    for byte in bytes {
        if closed.is_finished() || writer.write_all(&[*byte]).await.is_err() {
            break;
        }
        sent += 1;
        tokio::time::sleep(gap).await;
    }
    let answer = tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("the server kept the connection open")
        .unwrap();
    (sent, answer)
}

#[tokio::test]
async fn a_slow_loris_is_disconnected_within_the_header_timeout() {
    let app = TestApp::builder().transport(short_timeouts()).spawn().await;
    let head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let started = Instant::now();
    // Four header bytes a second: the head would take about 17 s.
    let (sent, answer) = trickle(connect(&app).await, head, Duration::from_millis(250)).await;
    println!(
        "slow loris cut off after {:?} and {sent} bytes (header timeout 1 s)",
        started.elapsed()
    );
    assert!(sent < head.len(), "the whole head went through");
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    // The server itself is fine.
    assert_eq!(app.get("/health", None).await.status(), 200);
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let app = TestApp::builder().transport(short_timeouts()).spawn().await;
    // Silent from the start.
    let mut silent = connect(&app).await;
    read_until_closed(&mut silent, Duration::from_secs(15)).await;
    // Silent after one answered request (keep-alive).
    let mut kept = connect(&app).await;
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut kept, Duration::from_secs(15)).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"));
}

#[tokio::test]
async fn a_trickling_body_is_disconnected_by_the_minimum_progress() {
    let app = TestApp::builder().transport(short_timeouts()).spawn().await;
    let mut stream = connect(&app).await;
    stream
        .write_all(
            b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 300\r\n\r\n",
        )
        .await
        .unwrap();
    // Ten body bytes a second, far below the 1 KiB a second required: the
    // body would take 30 s.
    let body = [b' '; 300];
    let (sent, _) = trickle(stream, &body, Duration::from_millis(100)).await;
    assert!(sent < body.len(), "the whole body went through");
}

#[tokio::test]
async fn a_chunked_flood_gets_its_413_and_the_connection_closes() {
    let app = TestApp::builder().transport(short_timeouts()).spawn().await;
    let stream = connect(&app).await;
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(
            b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .await
        .unwrap();
    // Endless 4 KiB chunks, as fast as the server takes them, for at most
    // 20 s.
    let flood = tokio::spawn(async move {
        let mut chunk = format!("{:x}\r\n", 4096).into_bytes();
        chunk.extend_from_slice(&[b' '; 4096]);
        chunk.extend_from_slice(b"\r\n");
        let mut sent: u64 = 0;
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            if writer.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len() as u64;
        }
        sent
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = [0u8; 8192];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the flood's connection stayed open");
    let (status, body) = parse_answer(&answer);
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&answer));
    assert_eq!(body["code"], "payload_too_large");
    let sent = flood.await.unwrap();
    println!("chunked flood: {sent} bytes sent before the server closed");
}

/// What a browser does: the whole body goes out without `Expect:
/// 100-continue`, and only then is the answer read.
async fn send_whole_then_read(app: &TestApp, head: String, body_len: usize) -> Vec<u8> {
    let mut stream = connect(app).await;
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'v'; 1 << 20];
    let mut left = body_len;
    while left > 0 {
        let n = left.min(chunk.len());
        stream.write_all(&chunk[..n]).await.unwrap_or_else(|e| {
            panic!(
                "sending the body failed after {} bytes: {e}",
                body_len - left
            )
        });
        left -= n;
    }
    read_until_closed(&mut stream, Duration::from_secs(30)).await
}

#[tokio::test]
async fn an_early_answer_reaches_a_client_still_sending_its_body() {
    let app = TestApp::spawn().await;
    // A 48 MB upload with a bad token: refused before the body is read.
    let body_len = 48 * 1024 * 1024;
    let head = format!(
        "POST /api/videos/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer not-a-token\r\n\
         Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {body_len}\r\n\r\n"
    );
    let answer = send_whole_then_read(&app, head, body_len).await;
    let (status, body) = parse_answer(&answer);
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&answer));
    assert_eq!(body["code"], "invalid_token");
    // A 10 MB log-in: refused by its size before it is read.
    let body_len = 10 * 1024 * 1024;
    let head = format!(
        "POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {body_len}\r\n\r\n"
    );
    let answer = send_whole_then_read(&app, head, body_len).await;
    let (status, body) = parse_answer(&answer);
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&answer));
    assert_eq!(body["code"], "payload_too_large");
}
