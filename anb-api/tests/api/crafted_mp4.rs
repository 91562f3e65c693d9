//! Uploads whose MP4 boxes are crafted to break a parser: sizes of zero,
//! sizes smaller than a header or past the parent, deep nesting, floods of
//! boxes, truncation, an overflowing duration. Each is refused with its exact
//! status and code, leaves nothing behind, and the server answers at once
//! afterwards.

use std::time::Duration;

use reqwest::multipart::{Form, Part};

use crate::fixtures;
use crate::harness::{Player, TestApp, assert_problem};
use crate::upload::assert_nothing_left;

/// A box of `kind` holding `payload`.
fn mp4_box(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(payload.len() + 8)
        .unwrap()
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(payload);
    out
}

/// A box header declaring `size` bytes, with nothing after it.
fn header(size: u32, kind: &[u8; 4]) -> Vec<u8> {
    [size.to_be_bytes().as_slice(), kind].concat()
}

fn ftyp() -> Vec<u8> {
    mp4_box(b"ftyp", b"isom\0\0\0\0")
}

/// The crafted files, by what is wrong with them.
fn crafted_files() -> Vec<(&'static str, Vec<u8>)> {
    let mut nested = mp4_box(b"free", b"");
    for _ in 0..64 {
        nested = mp4_box(b"udta", &nested);
    }
    let mut large_size_too_small = header(1, b"moov");
    large_size_too_small.extend_from_slice(&8u64.to_be_bytes());
    vec![
        // 32 bytes: the file that made the parser loop forever on one core.
        (
            "zero-size first child of moov",
            [ftyp(), header(16, b"moov"), header(0, b"mvhd")].concat(),
        ),
        (
            "zero-size child deep inside trak",
            [
                ftyp(),
                mp4_box(
                    b"moov",
                    &mp4_box(b"trak", &mp4_box(b"mdia", &header(0, b"minf"))),
                ),
            ]
            .concat(),
        ),
        (
            "child shorter than its own header",
            [
                ftyp(),
                mp4_box(b"moov", &[header(4, b"free"), vec![0; 8]].concat()),
            ]
            .concat(),
        ),
        (
            "child larger than its parent",
            [ftyp(), mp4_box(b"moov", &header(4096, b"trak"))].concat(),
        ),
        (
            "top-level box larger than the file",
            [ftyp(), header(u32::MAX, b"moov")].concat(),
        ),
        (
            "64-bit size below 16",
            [ftyp(), large_size_too_small].concat(),
        ),
        (
            "64 levels of nesting",
            [ftyp(), mp4_box(b"moov", &nested)].concat(),
        ),
        (
            "a flood of 20 000 empty boxes",
            [
                ftyp(),
                mp4_box(b"moov", &mp4_box(b"free", b"").repeat(20_000)),
            ]
            .concat(),
        ),
        (
            "sample description shorter than its entry count",
            [
                ftyp(),
                mp4_box(b"moov", &mp4_box(b"trak", &mp4_box(b"stsd", &[0; 4]))),
            ]
            .concat(),
        ),
        (
            "meta box that is neither ISO nor QuickTime",
            [
                ftyp(),
                mp4_box(b"moov", &mp4_box(b"meta", b"\x01\0\0\0junkjunk")),
            ]
            .concat(),
        ),
        ("no ftyp first", [mp4_box(b"moov", b""), ftyp()].concat()),
        ("ftyp only", ftyp()),
        ("a lone header", header(8, b"ftyp")[..6].to_vec()),
    ]
}

/// Uploads `bytes`, failing if no answer comes (a hung check).
async fn upload_within(app: &TestApp, player: &Player, bytes: Vec<u8>) -> reqwest::Response {
    let form = Form::new().text("title", "Jugada de prueba").part(
        "video_file",
        Part::bytes(bytes)
            .file_name("clip.mp4")
            .mime_str("video/mp4")
            .unwrap(),
    );
    app.client
        .post(app.url("/api/videos/upload"))
        .bearer_auth(&player.token)
        .multipart(form)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("the upload got no answer")
}

/// The server still answers a request of its own at once.
async fn assert_still_answering(app: &TestApp, player: &Player) {
    let response = app
        .client
        .get(app.url("/api/videos"))
        .bearer_auth(&player.token)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("the server stopped answering");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn crafted_box_trees_are_refused_and_the_server_keeps_answering() {
    let app = TestApp::spawn().await;
    let player = app.player().await;
    let cases = crafted_files();
    assert!(cases.len() >= 13);
    for (what, bytes) in cases {
        let response = upload_within(&app, &player, bytes).await;
        let status = response.status();
        let body = assert_problem(response, 400, "invalid_file_type").await;
        assert_eq!(status, 400, "{what}: {body}");
        assert_still_answering(&app, &player).await;
    }
    assert_nothing_left(&app, &player).await;
}

#[tokio::test]
async fn a_truncated_video_is_refused() {
    let app = TestApp::spawn().await;
    let player = app.player().await;
    let whole = fixtures::mp4(fixtures::VALID_PORTRAIT).await;
    for cut in [whole.len() / 2, whole.len() - 3, 40] {
        let response = upload_within(&app, &player, whole[..cut].to_vec()).await;
        assert_problem(response, 400, "invalid_file_type").await;
    }
    assert_still_answering(&app, &player).await;
    assert_nothing_left(&app, &player).await;
}

/// The video with its `mdhd` rewritten as version 1 (64-bit times) holding
/// the duration `duration` makes of the original one; the parents' sizes
/// grow with it. The fixture's `moov` follows
/// its `mdat`, so no chunk offset moves.
fn with_mdhd_duration(file: &[u8], duration: impl Fn(u64) -> u64 + Copy) -> Vec<u8> {
    fn rewrite(bytes: &[u8], duration: impl Fn(u64) -> u64 + Copy) -> Vec<u8> {
        let mut out = Vec::new();
        let mut offset = 0;
        while offset < bytes.len() {
            let size = u32::from_be_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
            assert!(size >= 8, "the fixture uses 32-bit box sizes");
            let kind: [u8; 4] = bytes[offset + 4..offset + 8].try_into().unwrap();
            let payload = &bytes[offset + 8..offset + size];
            match &kind {
                b"moov" | b"trak" | b"mdia" => {
                    out.extend(mp4_box(&kind, &rewrite(payload, duration)));
                }
                b"mdhd" => {
                    assert_eq!(payload[0], 0, "the fixture writes version 0");
                    let timescale = &payload[12..16];
                    let original = u32::from_be_bytes(payload[16..20].try_into().unwrap());
                    let language = &payload[20..24];
                    let mut v1 = vec![1, 0, 0, 0];
                    v1.extend_from_slice(&[0; 16]); // creation and modification times
                    v1.extend_from_slice(timescale);
                    v1.extend_from_slice(&duration(u64::from(original)).to_be_bytes());
                    v1.extend_from_slice(language);
                    out.extend(mp4_box(b"mdhd", &v1));
                }
                _ => out.extend_from_slice(&bytes[offset..offset + size]),
            }
            offset += size;
        }
        out
    }
    rewrite(file, duration)
}

#[tokio::test]
async fn an_overflowing_track_duration_is_refused_as_out_of_range() {
    let app = TestApp::spawn().await;
    let player = app.player().await;
    let valid = fixtures::mp4(fixtures::VALID_PORTRAIT).await;
    for duration in [u64::MAX, u64::MAX / 1000, 1 << 45] {
        let crafted = with_mdhd_duration(&valid, |_| duration);
        assert_eq!(crafted.len(), valid.len() + 12);
        let response = upload_within(&app, &player, crafted).await;
        assert_problem(response, 400, "duration_out_of_range").await;
    }
    assert_still_answering(&app, &player).await;
    assert_nothing_left(&app, &player).await;
    // The same rewrite keeping the true duration is still a valid video:
    // the refusals above are the duration's alone.
    let control = with_mdhd_duration(&valid, |original| original);
    let response = upload_within(&app, &player, control).await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
}
