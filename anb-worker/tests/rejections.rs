//! Uploads outside the rules fail permanently with a readable reason;
//! cancellation and I/O failures are told apart from them.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use anb_worker::{Rejection, TranscodeError};
use common::*;

/// Transcodes `input` expecting a permanent rejection; checks nothing is left behind.
fn rejection_of(dir: &Path, input: &Path) -> Rejection {
    let output = dir.join("out.mp4");
    let thumbnail = dir.join("thumb.jpg");
    let (result, _) = transcode(input, &output, Some(&thumbnail));
    let error = result.expect_err("the upload is refused");
    assert!(error.is_permanent(), "{error:?} is permanent");
    assert!(!output.exists(), "no output is left behind");
    assert!(!thumbnail.exists(), "no thumbnail is left behind");
    error.rejection().cloned().unwrap()
}

#[test]
fn a_ten_second_upload_is_too_short() {
    let dir = tempfile::tempdir().unwrap();
    let input = video_fixture(dir.path(), "short.mp4", "color", (1920, 1080), 10, 10, &[]);
    let rejection = rejection_of(dir.path(), &input);
    assert!(
        matches!(rejection, Rejection::TooShort { .. }),
        "{rejection:?}"
    );
    assert_eq!(
        rejection.to_string(),
        "the video is 10.0 s long; it must be at least 20 s"
    );
}

#[test]
fn a_65_second_upload_is_too_long() {
    let dir = tempfile::tempdir().unwrap();
    let input = video_fixture(dir.path(), "long.mp4", "color", (1920, 1080), 2, 65, &[]);
    let rejection = rejection_of(dir.path(), &input);
    assert!(
        matches!(rejection, Rejection::TooLong { .. }),
        "{rejection:?}"
    );
    assert!(
        rejection.to_string().contains("at most 60 s"),
        "{rejection}"
    );
}

#[test]
fn a_720p_upload_is_below_1080p() {
    let dir = tempfile::tempdir().unwrap();
    let input = video_fixture(dir.path(), "720p.mp4", "color", (1280, 720), 10, 25, &[]);
    let rejection = rejection_of(dir.path(), &input);
    assert_eq!(
        rejection,
        Rejection::ResolutionTooLow {
            width: 1280,
            height: 720,
            minimum_short_side: 1080
        }
    );
    assert!(rejection.to_string().contains("1280×720"), "{rejection}");
}

#[test]
fn an_audio_only_file_has_no_video_stream() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("audio.m4a");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:duration=25",
        "-c:a",
        "aac",
        input.to_str().unwrap(),
    ]);
    let rejection = rejection_of(dir.path(), &input);
    assert_eq!(rejection, Rejection::NoVideoStream);
    assert_eq!(rejection.to_string(), "the file has no video stream");
}

#[test]
fn a_truncated_file_without_its_index_is_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    // Without fast start the index (moov) is at the end: cutting the file loses it.
    let whole = video_fixture(
        dir.path(),
        "whole.mp4",
        "testsrc2",
        (1920, 1080),
        5,
        25,
        &[],
    );
    let bytes = std::fs::read(&whole).unwrap();
    let input = dir.path().join("truncated.mp4");
    std::fs::write(&input, &bytes[..bytes.len() / 2]).unwrap();
    let rejection = rejection_of(dir.path(), &input);
    assert!(
        matches!(rejection, Rejection::Unreadable { .. }),
        "{rejection:?}"
    );
    assert!(
        rejection
            .to_string()
            .starts_with("the file is not a readable video")
    );
}

#[test]
fn a_truncated_file_with_its_index_at_the_front_stops_early() {
    let dir = tempfile::tempdir().unwrap();
    // With fast start the index survives the cut, so the damage shows only while decoding.
    let whole = video_fixture(
        dir.path(),
        "whole.mp4",
        "testsrc2",
        (1920, 1080),
        5,
        25,
        &["-movflags", "+faststart"],
    );
    let bytes = std::fs::read(&whole).unwrap();
    let input = dir.path().join("truncated.mp4");
    std::fs::write(&input, &bytes[..bytes.len() / 2]).unwrap();
    let rejection = rejection_of(dir.path(), &input);
    assert!(
        matches!(rejection, Rejection::Truncated { .. }),
        "{rejection:?}"
    );
    assert!(
        rejection.to_string().contains("truncated or corrupt"),
        "{rejection}"
    );
}

#[test]
fn a_file_that_is_not_a_video_is_not_an_mp4() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("notes.mp4");
    std::fs::write(
        &input,
        "these are not the frames you are looking for\n".repeat(500),
    )
    .unwrap();
    let rejection = rejection_of(dir.path(), &input);
    assert_eq!(rejection, Rejection::NotMp4);
}

#[test]
fn a_missing_input_is_a_retryable_io_failure() {
    let dir = tempfile::tempdir().unwrap();
    let (result, _) = transcode(
        &dir.path().join("absent.mp4"),
        &dir.path().join("out.mp4"),
        None,
    );
    let error = result.expect_err("nothing to read");
    assert!(!error.is_permanent(), "{error:?} is retryable");
    assert!(matches!(error, TranscodeError::Io { .. }), "{error:?}");
}

#[test]
fn raising_the_cancel_flag_stops_the_transcode_and_removes_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = video_fixture(dir.path(), "valid.mp4", "color", (1920, 1080), 10, 25, &[]);
    let output = dir.path().join("out.mp4");
    let thumbnail = dir.path().join("thumb.jpg");
    let cancel = AtomicBool::new(false);
    let mut last = 0;
    let result = anb_worker::transcode(
        &input,
        &output,
        Some(&thumbnail),
        &fast_options(),
        |percent| {
            last = percent;
            if percent >= 20 {
                cancel.store(true, Ordering::Relaxed);
            }
        },
        &cancel,
    );
    let error = result.expect_err("cancelled");
    assert!(matches!(error, TranscodeError::Cancelled), "{error:?}");
    assert!(
        last < 30,
        "stopped soon after the flag was raised (at {last}%)"
    );
    assert!(!output.exists() && !thumbnail.exists(), "outputs removed");
}

#[test]
fn the_command_line_reports_a_rejection_with_its_own_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let input = video_fixture(dir.path(), "short.mp4", "color", (1920, 1080), 10, 10, &[]);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_anb-worker"))
        .args(["transcode", "--quiet"])
        .arg(&input)
        .arg(dir.path().join("out.mp4"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("rejected: the video is 10.0 s long"),
        "{stderr}"
    );
}

#[test]
fn the_command_line_applies_the_upload_limits_of_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    // 21 s at 1080p: accepted by the default rules.
    let input = video_fixture(dir.path(), "clip.mp4", "color", (1920, 1080), 10, 21, &[]);
    let run = |vars: &[(&str, &str)]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_anb-worker"))
            .args(["transcode", "--quiet", "--preset", "ultrafast"])
            .arg(&input)
            .arg(dir.path().join("out.mp4"))
            .env_remove("ANB_UPLOAD_MAX_BYTES")
            .env_remove("ANB_UPLOAD_MIN_SECONDS")
            .env_remove("ANB_UPLOAD_MAX_SECONDS")
            .env_remove("ANB_UPLOAD_MIN_SHORT_SIDE")
            .envs(vars.iter().copied())
            .output()
            .unwrap()
    };

    let output = run(&[("ANB_UPLOAD_MIN_SECONDS", "25")]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("rejected: the video is 21.0 s long; it must be at least 25 s"),
        "{stderr}"
    );

    let output = run(&[("ANB_UPLOAD_MIN_SHORT_SIDE", "1440")]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("its shorter side must be at least 1440 pixels"),
        "{stderr}"
    );

    let output = run(&[("ANB_UPLOAD_MAX_BYTES", "1000")]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("it must be at most 1000 bytes"), "{stderr}");

    // A malformed limit stops the command, naming the variable.
    let output = run(&[("ANB_UPLOAD_MAX_SECONDS", "a minute")]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("ANB_UPLOAD_MAX_SECONDS is invalid"),
        "{stderr}"
    );
    assert!(!dir.path().join("out.mp4").exists());
}
