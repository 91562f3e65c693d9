//! Valid uploads come out in the showcase format.

mod common;

use common::*;

/// Output frame rate (of 30 fps sources) and bumper length of the default options.
const FPS: f64 = 30.0;
const BUMPERS: f64 = 4.0;

fn video_stream(probe: &serde_json::Value) -> &serde_json::Value {
    let streams = probe["streams"].as_array().unwrap();
    assert_eq!(
        streams.len(),
        1,
        "exactly one stream (no audio): {streams:#?}"
    );
    let stream = &streams[0];
    assert_eq!(stream["codec_type"], "video");
    stream
}

fn assert_showcase_video(path: &std::path::Path, expected_seconds: f64) {
    assert_showcase_video_at(path, expected_seconds, FPS);
}

fn assert_showcase_video_at(path: &std::path::Path, expected_seconds: f64, fps: f64) {
    let probe = probe(path);
    let stream = video_stream(&probe);
    assert_eq!(stream["codec_name"], "h264");
    assert_eq!(stream["pix_fmt"], "yuv420p");
    assert_eq!(
        (stream["width"].as_u64(), stream["height"].as_u64()),
        (Some(1280), Some(720))
    );
    assert_eq!(stream["sample_aspect_ratio"], "1:1");
    let rate = format!("{fps}/1");
    assert_eq!(stream["r_frame_rate"], rate.as_str());
    assert_eq!(stream["avg_frame_rate"], rate.as_str());
    let duration = number(&stream["duration"]);
    assert!(
        (duration - expected_seconds).abs() <= 1.0 / fps + 1e-6,
        "duration {duration} s, expected {expected_seconds} s ± one frame"
    );
    assert_eq!(
        packet_durations(path).len(),
        1,
        "every frame lasts the same (constant frame rate)"
    );
    let boxes = top_level_boxes(path);
    let moov = boxes.iter().position(|b| b == "moov").expect("a moov box");
    let mdat = boxes.iter().position(|b| b == "mdat").expect("an mdat box");
    assert!(
        moov < mdat,
        "index before media data (fast start): {boxes:?}"
    );
}

#[test]
fn a_long_landscape_upload_is_cut_to_30_seconds_with_bumpers_watermark_and_thumbnail() {
    let dir = tempfile::tempdir().unwrap();
    // 35 s at 25 fps with an audio track: trimmed, kept at 25 fps, audio dropped.
    let input = dir.path().join("landscape.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=1920x1080:rate=25:duration=35",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:duration=35",
        "-pix_fmt",
        "yuv420p",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-crf",
        "40",
        "-c:a",
        "aac",
        "-shortest",
        input.to_str().unwrap(),
    ]);
    let output = dir.path().join("out.mp4");
    let thumbnail = dir.path().join("thumb.jpg");

    let (result, progress) = transcode(&input, &output, Some(&thumbnail));
    let report = result.expect("a valid upload transcodes");

    assert_eq!(report.source.width, 1920);
    assert_eq!(report.source.height, 1080);
    assert_eq!(report.frame_rate, 25, "a 25 fps source stays at 25 fps");
    assert_eq!(report.source_frames, 750, "exactly 30 s at 25 fps");
    assert_eq!(report.frames, 750 + 2 * 50, "plus two 2 s bumpers");
    assert_showcase_video_at(&output, 30.0 + BUMPERS, 25.0);

    assert_eq!(progress.last(), Some(&100), "progress ends at 100");
    assert!(
        progress.len() > 50,
        "progress reported along the way: {progress:?}"
    );
    assert!(
        progress.windows(2).all(|w| w[0] < w[1]),
        "progress only grows"
    );

    // The bumpers are the navy card; the main part carries the orange-balled watermark.
    for at in [0.5, 30.0 + BUMPERS - 0.5] {
        let rgb = frame_at(&output, at, "rgb24");
        let corner = &rgb[(5 * 1280 + 5) * 3..][..3];
        assert!(
            corner[0] < 40 && corner[1] < 60 && (40..110).contains(&corner[2]),
            "bumper at {at} s is navy, got {corner:?}"
        );
    }
    let rgb = frame_at(&output, 12.0, "rgb24");
    // A point on the ball of the watermark (top-right corner; see art::watermark).
    let (x, y) = (1280 - 24 - 142 + 6 + 14, 24 + 6 + 30);
    let ball = &rgb[(y * 1280 + x) * 3..][..3];
    assert!(
        ball[0] > 180 && ball[0] as i32 - ball[2] as i32 > 100,
        "watermark ball is orange, got {ball:?}"
    );

    let jpeg = std::fs::read(&thumbnail).unwrap();
    assert_eq!(&jpeg[..2], &[0xFF, 0xD8], "JPEG start-of-image marker");
    assert_eq!(
        &jpeg[jpeg.len() - 2..],
        &[0xFF, 0xD9],
        "JPEG end-of-image marker"
    );
    assert_eq!(report.thumbnail_bytes, Some(jpeg.len() as u64));
    let thumb_probe = probe(&thumbnail);
    let thumb = &thumb_probe["streams"][0];
    assert_eq!(thumb["codec_name"], "mjpeg");
    assert_eq!(
        (thumb["width"].as_u64(), thumb["height"].as_u64()),
        (Some(1280), Some(720))
    );
}

#[test]
fn a_portrait_upload_is_pillarboxed_and_kept_whole_when_shorter_than_30_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let input = video_fixture(
        dir.path(),
        "portrait.mp4",
        "testsrc2",
        (1080, 1920),
        10,
        22,
        &[],
    );
    let output = dir.path().join("out.mp4");

    let (result, progress) = transcode(&input, &output, None);
    let report = result.expect("a valid portrait upload transcodes");
    assert_eq!(report.thumbnail_bytes, None);
    assert_eq!(progress.last(), Some(&100));
    assert_showcase_video(&output, 22.0 + BUMPERS);

    // 1080×1920 fits as 406×720 in the middle; the sides are black.
    let gray = frame_at(&output, 10.0, "gray");
    assert_eq!(gray.len(), 1280 * 720);
    let column_mean = |x: usize| {
        // Rows clear of the watermark in the top-right corner.
        (100..700)
            .map(|y| f64::from(gray[y * 1280 + x]))
            .sum::<f64>()
            / 600.0
    };
    for x in (0..420).chain(860..1280).step_by(7) {
        let mean = column_mean(x);
        assert!(mean < 24.0, "column {x} is black (mean luma {mean})");
    }
    let centre: f64 = (500..780).map(column_mean).sum::<f64>() / 280.0;
    assert!(
        centre > 40.0,
        "the picture is in the middle (mean luma {centre})"
    );
}

/// Sets the display matrix of an MP4's (only) track to a quarter turn
/// clockwise, as phones record portrait video: landscape pixels plus rotation.
fn rotate_quarter_turn(path: &std::path::Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let tkhd = bytes
        .windows(4)
        .position(|window| window == b"tkhd")
        .expect("a track header");
    assert_eq!(bytes[tkhd + 4], 0, "version 0 track header");
    // Type, version/flags, times, track id, reserved, duration, reserved,
    // layer, group, volume, reserved: the matrix follows 40 bytes after the type.
    let matrix = tkhd + 4 + 40;
    let height = 1080u32 << 16;
    let entries: [u32; 9] = [0, 0x0001_0000, 0, 0xFFFF_0000, 0, 0, height, 0, 0x4000_0000];
    for (index, entry) in entries.iter().enumerate() {
        bytes[matrix + index * 4..matrix + index * 4 + 4].copy_from_slice(&entry.to_be_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_rotated_phone_video_is_turned_upright_and_pillarboxed() {
    let dir = tempfile::tempdir().unwrap();
    let input = video_fixture(
        dir.path(),
        "phone.mp4",
        "testsrc2",
        (1920, 1080),
        5,
        21,
        &[],
    );
    rotate_quarter_turn(&input);
    let info = anb_worker::inspect(&input, &fast_options()).unwrap();
    assert_eq!(info.rotation, 90);

    let output = dir.path().join("out.mp4");
    let (result, _) = transcode(&input, &output, None);
    result.expect("a rotated upload transcodes");
    assert_showcase_video(&output, 21.0 + BUMPERS);

    // Upright it is 1080×1920, so it fits as a 406×720 column in the middle.
    let gray = frame_at(&output, 10.0, "gray");
    let column_mean = |x: usize| {
        (100..700)
            .map(|y| f64::from(gray[y * 1280 + x]))
            .sum::<f64>()
            / 600.0
    };
    for x in (0..420).chain(860..1280).step_by(7) {
        let mean = column_mean(x);
        assert!(mean < 24.0, "column {x} is black (mean luma {mean})");
    }
    let centre: f64 = (500..780).map(column_mean).sum::<f64>() / 280.0;
    assert!(
        centre > 40.0,
        "the picture is in the middle (mean luma {centre})"
    );
}

/// Four flat quadrants, their colours as RGB.
const CARD: [[u8; 3]; 4] = [[200, 60, 40], [40, 170, 70], [50, 70, 200], [220, 200, 60]];

/// A 21 s, 5 fps 1920×1080 card of [`CARD`]'s quadrants, converted to YUV by `to_yuv` and
/// encoded with `tags`.
fn colour_card(
    dir: &std::path::Path,
    name: &str,
    to_yuv: &str,
    tags: &[&str],
) -> std::path::PathBuf {
    let path = dir.join(name);
    let quadrant = |[r, g, b]: [u8; 3]| {
        format!("color=c=0x{r:02X}{g:02X}{b:02X}:size=960x540:rate=5:duration=21,format=rgb24")
    };
    let lavfi = format!(
        "{};{};{};{};[a][b]hstack[top];[c][d]hstack[bottom];[top][bottom]vstack,{to_yuv}",
        quadrant(CARD[0]) + "[a]",
        quadrant(CARD[1]) + "[b]",
        quadrant(CARD[2]) + "[c]",
        quadrant(CARD[3]) + "[d]",
    );
    let mut args = vec![
        "-filter_complex",
        &lavfi,
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-qp",
        "0",
    ];
    args.extend_from_slice(tags);
    args.push(path.to_str().unwrap());
    ffmpeg(&args);
    path
}

#[test]
fn bt601_sources_come_out_tagged_bt709_with_their_colours() {
    let dir = tempfile::tempdir().unwrap();
    let sources = [
        (
            "smpte170m.mp4",
            "scale=out_color_matrix=bt601:out_range=tv,format=yuv420p",
            &[
                "-colorspace",
                "smpte170m",
                "-color_primaries",
                "smpte170m",
                "-color_trc",
                "smpte170m",
                "-color_range",
                "tv",
            ][..],
        ),
        (
            "bt470bg-full-range.mp4",
            "scale=out_color_matrix=bt601:out_range=pc,format=yuvj420p",
            &[
                "-colorspace",
                "bt470bg",
                "-color_primaries",
                "bt470bg",
                "-color_trc",
                "gamma28",
                "-color_range",
                "pc",
            ][..],
        ),
        // Untagged: BT.601 is what decoders assume.
        (
            "untagged.mp4",
            "scale=out_color_matrix=bt601:out_range=tv,format=yuv420p",
            &[][..],
        ),
    ];
    for (name, to_yuv, tags) in sources {
        let input = colour_card(dir.path(), name, to_yuv, tags);
        let output = dir.path().join(format!("out-{name}"));
        let (result, _) = transcode(&input, &output, None);
        result.unwrap_or_else(|error| panic!("{name}: {error}"));
        assert_showcase_video(&output, 21.0 + BUMPERS);
        let probe = probe(&output);
        let stream = video_stream(&probe);
        for (field, expected) in [
            ("color_space", "bt709"),
            ("color_primaries", "bt709"),
            ("color_transfer", "bt709"),
            ("color_range", "tv"),
        ] {
            assert_eq!(stream[field], expected, "{name}: {field}");
        }
        // Decoded as its BT.709 tags say, each quadrant's middle shows the source's colour.
        let rgb = frame_at(&output, 10.0, "rgb24");
        for (quadrant, expected) in CARD.iter().enumerate() {
            let (x, y) = (320 + 640 * (quadrant % 2), 180 + 360 * (quadrant / 2));
            let got = &rgb[(y * 1280 + x) * 3..][..3];
            let off = got
                .iter()
                .zip(expected)
                .map(|(a, e)| (i32::from(*a) - i32::from(*e)).abs())
                .max()
                .unwrap();
            assert!(
                off <= 6,
                "{name}: quadrant {quadrant} is {got:?}, the source {expected:?}"
            );
        }
    }
}
