//! Hostile media: files built to cost far more than a real clip fail permanently, before they
//! cost it, with a reason the player can read.

mod common;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anb_worker::{InputBounds, Rejection, TranscodeOptions};
use common::*;

/// Transcodes `input` with `options`, expecting a permanent rejection and nothing left behind.
fn rejection_with(dir: &Path, input: &Path, options: &TranscodeOptions) -> Rejection {
    let output = dir.join("out.mp4");
    let thumbnail = dir.join("thumb.jpg");
    let cancel = AtomicBool::new(false);
    let result = anb_worker::transcode(input, &output, Some(&thumbnail), options, |_| {}, &cancel);
    let error = result.expect_err("the upload is refused");
    assert!(error.is_permanent(), "{error:?} is permanent");
    assert!(
        !output.exists() && !thumbnail.exists(),
        "nothing left behind"
    );
    error.rejection().cloned().unwrap()
}

/// The showcase rules with a small minimum duration, so the fixtures can be short.
fn short_clip_options() -> TranscodeOptions {
    let mut options = fast_options();
    options.limits.min_duration = Duration::from_secs(1);
    options.limits.min_short_side = 100;
    options
}

#[test]
fn a_frame_beyond_the_maximum_size_is_refused_before_decoding() {
    let dir = tempfile::tempdir().unwrap();
    // One 4352×4352 frame: larger than any phone records, small on disk.
    let input = video_fixture(dir.path(), "huge.mp4", "color", (4352, 4352), 1, 2, &[]);
    let rejection = rejection_with(dir.path(), &input, &short_clip_options());
    assert_eq!(
        rejection,
        Rejection::FrameTooLarge {
            width: 4352,
            height: 4352,
            max_width: 4096,
            max_height: 4096,
        }
    );
    assert_eq!(
        rejection.to_string(),
        "the video is 4352×4352; it must be at most 4096×4096 pixels"
    );
}

#[test]
fn a_frame_area_beyond_the_maximum_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = video_fixture(dir.path(), "wide.mp4", "color", (640, 480), 1, 2, &[]);
    let options = TranscodeOptions {
        bounds: InputBounds {
            max_pixels: 640 * 480 - 1,
            ..InputBounds::default()
        },
        ..short_clip_options()
    };
    let rejection = rejection_with(dir.path(), &input, &options);
    assert!(
        matches!(rejection, Rejection::TooManyPixels { .. }),
        "{rejection:?}"
    );
}

#[test]
fn a_frame_rate_beyond_the_maximum_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = video_fixture(dir.path(), "fast.mp4", "color", (320, 240), 1000, 2, &[]);
    let rejection = rejection_with(dir.path(), &input, &short_clip_options());
    assert_eq!(
        rejection,
        Rejection::FrameRateTooHigh {
            rate: 1000,
            maximum: 240
        }
    );
    assert_eq!(
        rejection.to_string(),
        "the video runs at 1000 frames per second; it must be at most 240"
    );
}

#[test]
fn more_decoded_frames_than_the_maximum_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = video_fixture(dir.path(), "many.mp4", "color", (320, 240), 30, 3, &[]);
    let options = TranscodeOptions {
        bounds: InputBounds {
            max_frames: 50,
            ..InputBounds::default()
        },
        ..short_clip_options()
    };
    let rejection = rejection_with(dir.path(), &input, &options);
    assert_eq!(rejection, Rejection::TooManyFrames { maximum: 50 });
}

#[test]
fn a_job_over_its_wall_time_budget_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = video_fixture(dir.path(), "slow.mp4", "testsrc2", (320, 240), 30, 3, &[]);
    let options = TranscodeOptions {
        bounds: InputBounds {
            wall_time_per_second: 0,
            min_wall_time: Duration::ZERO,
            ..InputBounds::default()
        },
        ..short_clip_options()
    };
    let rejection = rejection_with(dir.path(), &input, &options);
    assert_eq!(
        rejection,
        Rejection::TooCostly {
            budget: Duration::ZERO
        }
    );
    assert_eq!(
        rejection.to_string(),
        "processing the video took longer than the 0 s allowed for it"
    );
}

#[test]
fn an_hls_playlist_named_mp4_is_not_opened() {
    let dir = tempfile::tempdir().unwrap();
    // A real segment beside it: a demuxer that followed the playlist would find a video.
    video_fixture(
        dir.path(),
        "segment.ts",
        "color",
        (1920, 1080),
        30,
        21,
        &["-f", "mpegts"],
    );
    let input = dir.path().join("playlist.mp4");
    std::fs::write(
        &input,
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:21\n#EXTINF:21.0,\nsegment.ts\n#EXT-X-ENDLIST\n",
    )
    .unwrap();
    let rejection = rejection_with(dir.path(), &input, &fast_options());
    assert_eq!(rejection, Rejection::NotMp4);
    assert_eq!(rejection.to_string(), "the file is not an MP4 or MOV video");
}

#[test]
fn a_matroska_file_named_mp4_is_not_opened() {
    let dir = tempfile::tempdir().unwrap();
    // Matroska, renamed: only the MOV/MP4 demuxer may open uploads.
    let input = video_fixture(
        dir.path(),
        "clip.mp4",
        "color",
        (1920, 1080),
        30,
        21,
        &["-f", "matroska"],
    );
    let rejection = rejection_with(dir.path(), &input, &fast_options());
    assert_eq!(rejection, Rejection::NotMp4);
}

#[test]
fn the_defaults_accept_what_phones_record() {
    let bounds = InputBounds::default();
    for (width, height) in [(3840, 2160), (2160, 3840), (4096, 2160)] {
        assert!(width <= bounds.max_width && height <= bounds.max_height);
        assert!(u64::from(width) * u64::from(height) <= bounds.max_pixels);
    }
    assert!(bounds.max_frame_rate >= 240);
}
