//! A corpus of what phones record (HEVC, 10-bit HDR, 60/50/24 fps, B-frames, 4K, portrait and
//! every rotation, variable frame rate, an edit list, full-range YUV, an odd size), generated
//! with the `ffmpeg` tool, each transcoded and its output checked with `ffprobe`: 1280×720
//! yuv420p, the frame rate chosen from the source, BT.709 colour tags, no audio, the expected
//! length, the picture upright.
//!
//! All cases run in one test so the fixtures are made once and the cases run one after the
//! other (each encode already uses every core); a table of outcomes is printed at the end.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anb_worker::TranscodeOptions;
use anb_worker::art::{BALL_ORANGE, BUMPER_NAVY};
use common::*;
use serde_json::Value;

/// Every fixture lasts this long: short, so the corpus stays cheap.
const SECONDS: u32 = 4;
/// The two bumpers.
const BUMPERS: f64 = 4.0;

struct Case {
    name: &'static str,
    /// lavfi source (size, rate and duration included).
    source: String,
    /// Encoder and muxer arguments.
    encode: Vec<&'static str>,
    /// A display rotation to set afterwards (stream copy with `rotate` metadata).
    rotate: Option<u32>,
    /// Cut the start off with stream copy, which leaves an edit list.
    edit_list: bool,
    /// The output frame rate the rule must choose.
    expected_fps: u32,
    /// The source length in seconds.
    expected_seconds: f64,
    /// Compare the orientation with the `ffmpeg` tool's own auto-rotation.
    check_orientation: bool,
    /// The source is HDR: tone mapping must have run.
    hdr: bool,
}

fn case(name: &'static str, source: String, encode: &[&'static str], fps: u32) -> Case {
    Case {
        name,
        source,
        encode: encode.to_vec(),
        rotate: None,
        edit_list: false,
        expected_fps: fps,
        expected_seconds: f64::from(SECONDS),
        check_orientation: false,
        hdr: false,
    }
}

fn testsrc(size: &str, rate: u32) -> String {
    format!("testsrc2=size={size}:rate={rate}:duration={SECONDS}")
}

/// A still card whose stored top-left quadrant is white, the rest black: where the white
/// quadrant ends up tells how the picture was turned.
fn quadrant_card(size: &str) -> String {
    let (width, height) = size.split_once('x').unwrap();
    let (width, height): (u32, u32) = (width.parse().unwrap(), height.parse().unwrap());
    format!(
        "color=c=black:size={size}:rate=30:duration={SECONDS},drawbox=x=0:y=0:w={}:h={}:color=white:t=fill",
        width / 2,
        height / 2
    )
}

const X264: [&str; 8] = [
    "-c:v",
    "libx264",
    "-preset",
    "ultrafast",
    "-crf",
    "35",
    "-pix_fmt",
    "yuv420p",
];

fn corpus() -> Vec<Case> {
    let hevc = [
        "-c:v",
        "libx265",
        "-preset",
        "ultrafast",
        "-crf",
        "35",
        "-pix_fmt",
        "yuv420p",
        "-x265-params",
        "log-level=error",
        "-tag:v",
        "hvc1",
    ];
    let hevc_hdr = [
        "-c:v",
        "libx265",
        "-preset",
        "ultrafast",
        "-crf",
        "35",
        "-pix_fmt",
        "yuv420p10le",
        "-x265-params",
        "log-level=error:colorprim=bt2020:transfer=smpte2084:colormatrix=bt2020nc",
        "-color_primaries",
        "bt2020",
        "-color_trc",
        "smpte2084",
        "-colorspace",
        "bt2020nc",
        "-tag:v",
        "hvc1",
    ];
    let mut cases = vec![
        // x264's defaults: B-frames (three), CABAC, an audio track to drop.
        case(
            "h264 B-frames + audio",
            testsrc("1920x1080", 30),
            &[
                "-c:v", "libx264", "-preset", "veryfast", "-crf", "35", "-pix_fmt", "yuv420p",
                "-c:a", "aac",
            ],
            30,
        ),
        case("hevc main", testsrc("1920x1080", 30), &hevc, 30),
        Case {
            hdr: true,
            ..case(
                "hevc main 10 hdr (pq)",
                testsrc("1920x1080", 30),
                &hevc_hdr,
                30,
            )
        },
        case("h264 60 fps", testsrc("1920x1080", 60), &X264, 30),
        case("h264 50 fps", testsrc("1920x1080", 50), &X264, 25),
        case("h264 24 fps", testsrc("1920x1080", 24), &X264, 24),
        case("h264 4k", testsrc("3840x2160", 30), &X264, 30),
        Case {
            check_orientation: true,
            ..case("portrait 1080x1920", quadrant_card("1080x1920"), &X264, 30)
        },
        case(
            "variable frame rate",
            format!(
                "{},select='not(eq(mod(n\\,5)\\,2))*not(eq(mod(n\\,7)\\,3))'",
                testsrc("1920x1080", 30)
            ),
            &[
                "-fps_mode",
                "vfr",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-crf",
                "35",
                "-pix_fmt",
                "yuv420p",
            ],
            30,
        ),
        Case {
            edit_list: true,
            expected_seconds: f64::from(SECONDS) - 1.5,
            ..case(
                "edit list",
                testsrc("1920x1080", 30),
                &[
                    "-c:v",
                    "libx264",
                    "-preset",
                    "ultrafast",
                    "-crf",
                    "35",
                    "-pix_fmt",
                    "yuv420p",
                    "-g",
                    "30",
                ],
                30,
            )
        },
        case(
            "yuvj420p (full range)",
            testsrc("1920x1080", 30),
            &[
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-crf",
                "35",
                "-pix_fmt",
                "yuvj420p",
            ],
            30,
        ),
        case(
            "h264 4:4:4",
            testsrc("1921x1081", 30),
            &[
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-crf",
                "35",
                "-pix_fmt",
                "yuv444p",
            ],
            30,
        ),
    ];
    for rotation in [90, 180, 270] {
        cases.push(Case {
            rotate: Some(rotation),
            check_orientation: true,
            ..case(
                match rotation {
                    90 => "rotation 90",
                    180 => "rotation 180",
                    _ => "rotation 270",
                },
                quadrant_card("1920x1080"),
                &X264,
                30,
            )
        });
    }
    cases
}

fn make_fixture(dir: &Path, case: &Case, index: usize) -> PathBuf {
    let path = dir.join(format!("case{index}.mp4"));
    let mut args = vec!["-f", "lavfi", "-i", &case.source];
    let audio = format!("sine=frequency=440:duration={SECONDS}");
    if case.encode.contains(&"-c:a") {
        args.extend(["-f", "lavfi", "-i", &audio]);
    }
    args.extend(case.encode.iter().copied());
    let encoded = if case.rotate.is_some() || case.edit_list {
        dir.join(format!("case{index}-plain.mp4"))
    } else {
        path.clone()
    };
    args.push(encoded.to_str().unwrap());
    ffmpeg(&args);
    if let Some(rotation) = case.rotate {
        let metadata = format!("rotate={rotation}");
        ffmpeg(&[
            "-i",
            encoded.to_str().unwrap(),
            "-c",
            "copy",
            "-metadata:s:v:0",
            &metadata,
            path.to_str().unwrap(),
        ]);
    }
    if case.edit_list {
        // Starting between keyframes: the copy keeps the GOP's start and an edit list hides it.
        ffmpeg(&[
            "-ss",
            "1.5",
            "-i",
            encoded.to_str().unwrap(),
            "-c",
            "copy",
            path.to_str().unwrap(),
        ]);
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            bytes.windows(4).any(|window| window == b"elst"),
            "the fixture has an edit list"
        );
    }
    path
}

/// Mean luma of each quadrant (top-left, top-right, bottom-left, bottom-right) of a gray image.
fn quadrants(gray: &[u8], width: usize, height: usize) -> [f64; 4] {
    let mut sums = [0f64; 4];
    for y in 0..height {
        for x in 0..width {
            let quadrant = usize::from(y >= height / 2) * 2 + usize::from(x >= width / 2);
            sums[quadrant] += f64::from(gray[y * width + x]);
        }
    }
    sums.map(|sum| sum / (width * height / 4) as f64)
}

fn brightest(values: [f64; 4]) -> usize {
    (0..4)
        .max_by(|a, b| values[*a].total_cmp(&values[*b]))
        .unwrap()
}

/// The picture region of a showcase frame holding a source of this display aspect.
fn picture_crop(display_width: u32, display_height: u32) -> String {
    let (width, height) = if display_width * 720 >= display_height * 1280 {
        (1280, (1280 * display_height / display_width) / 2 * 2)
    } else {
        ((720 * display_width / display_height) / 2 * 2, 720)
    };
    format!(
        "crop={}:{}:{}:{}",
        width - 16,
        height - 16,
        (1280 - width) / 4 * 2 + 8,
        (720 - height) / 4 * 2 + 8
    )
}

fn gray_thumbnail(input: &Path, seek: Option<f64>, filter: &str) -> Vec<u8> {
    let seek = seek.map(|at| at.to_string());
    let mut args = Vec::new();
    if let Some(at) = &seek {
        args.extend(["-ss", at.as_str()]);
    }
    let filter = format!("{filter}scale=64:64");
    args.extend([
        "-i",
        input.to_str().unwrap(),
        "-frames:v",
        "1",
        "-vf",
        &filter,
        "-f",
        "rawvideo",
        "-pix_fmt",
        "gray",
        "-",
    ]);
    ffmpeg(&args)
}

fn rgb_near(actual: &[u8], expected: [u8; 3], tolerance: i32) -> bool {
    actual
        .iter()
        .zip(expected)
        .all(|(a, e)| (i32::from(*a) - i32::from(e)).abs() <= tolerance)
}

/// Every check of one case; the problems found, empty when it passed.
fn check(
    case: &Case,
    input: &Path,
    output: &Path,
    report: &anb_worker::TranscodeReport,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut expect = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };
    let probe = probe(output);
    let streams = probe["streams"].as_array().unwrap();
    expect(
        streams.len() == 1,
        format!("{} streams (audio kept?)", streams.len()),
    );
    let video: &Value = &streams[0];
    expect(
        video["codec_name"] == "h264",
        format!("codec {}", video["codec_name"]),
    );
    expect(
        video["width"] == 1280 && video["height"] == 720,
        format!("size {}×{}", video["width"], video["height"]),
    );
    expect(
        video["pix_fmt"] == "yuv420p",
        format!("pix_fmt {}", video["pix_fmt"]),
    );
    let rate = format!("{}/1", case.expected_fps);
    expect(
        video["r_frame_rate"] == rate.as_str() && video["avg_frame_rate"] == rate.as_str(),
        format!(
            "rate {} / {}, expected {rate}",
            video["r_frame_rate"], video["avg_frame_rate"]
        ),
    );
    for (field, expected) in [
        ("color_primaries", "bt709"),
        ("color_transfer", "bt709"),
        ("color_space", "bt709"),
        ("color_range", "tv"),
    ] {
        expect(
            video[field] == expected,
            format!("{field} {}", video[field]),
        );
    }
    let duration = number(&video["duration"]);
    let expected = case.expected_seconds + BUMPERS;
    expect(
        (duration - expected).abs() <= 1.5 / f64::from(case.expected_fps),
        format!("duration {duration:.3} s, expected {expected:.3} s"),
    );
    expect(
        packet_durations(output).len() == 1,
        "frames of unequal length".into(),
    );
    if case.hdr {
        expect(report.tone_mapped, "HDR source not tone-mapped".into());
    }
    if case.check_orientation {
        let upright = gray_thumbnail(input, None, "");
        let (width, height) = match report.source.rotation {
            90 | 270 => (report.source.height, report.source.width),
            _ => (report.source.width, report.source.height),
        };
        let crop = format!("{},", picture_crop(width, height));
        let ours = gray_thumbnail(output, Some(BUMPERS / 2.0 + 1.0), &crop);
        let (expected, got) = (
            brightest(quadrants(&upright, 64, 64)),
            brightest(quadrants(&ours, 64, 64)),
        );
        expect(
            expected == got,
            format!("white quadrant at {got}, the ffmpeg tool shows it at {expected}"),
        );
    }
    problems
}

#[test]
fn phone_footage_comes_out_in_the_showcase_format() {
    let dir = tempfile::tempdir().unwrap();
    let mut options: TranscodeOptions = fast_options();
    options.limits.min_duration = Duration::from_secs(1);
    let cancel = AtomicBool::new(false);

    let mut table = Vec::new();
    let mut failures = Vec::new();
    for (index, case) in corpus().iter().enumerate() {
        let input = make_fixture(dir.path(), case, index);
        let output = dir.path().join(format!("case{index}-out.mp4"));
        let started = Instant::now();
        let result = anb_worker::transcode(&input, &output, None, &options, |_| {}, &cancel);
        let elapsed = started.elapsed();
        let (outcome, problems) = match &result {
            Ok(report) => {
                let problems = check(case, &input, &output, report);
                let probe = probe(&output);
                let video = &probe["streams"][0];
                (
                    format!(
                        "{}×{} {} rot {} → {} {} {}/{}/{} {} {:.2} s{}",
                        report.source.width,
                        report.source.height,
                        report.source.codec,
                        report.source.rotation,
                        video["r_frame_rate"].as_str().unwrap_or("?"),
                        video["pix_fmt"].as_str().unwrap_or("?"),
                        video["color_primaries"].as_str().unwrap_or("?"),
                        video["color_transfer"].as_str().unwrap_or("?"),
                        video["color_space"].as_str().unwrap_or("?"),
                        video["color_range"].as_str().unwrap_or("?"),
                        number(&video["duration"]),
                        if report.tone_mapped {
                            " tone-mapped"
                        } else {
                            ""
                        },
                    ),
                    problems,
                )
            }
            Err(error) => (format!("error: {error}"), vec![format!("failed: {error}")]),
        };
        let verdict = if problems.is_empty() { "ok" } else { "FAIL" };
        table.push(format!(
            "| {} | {outcome} | {verdict} | {:.1} s |",
            case.name,
            elapsed.as_secs_f64()
        ));
        if !problems.is_empty() {
            failures.push(format!("{}: {}", case.name, problems.join("; ")));
        }
        if index == 0 && result.is_ok() {
            // The artwork keeps its colours under the BT.709 tags (converted with that matrix).
            let rgb = frame_at(&output, 0.5, "rgb24");
            let corner = &rgb[(5 * 1280 + 5) * 3..][..3];
            let navy = [BUMPER_NAVY.0[0], BUMPER_NAVY.0[1], BUMPER_NAVY.0[2]];
            if !rgb_near(corner, navy, 6) {
                failures.push(format!(
                    "bumper navy decodes as {corner:?}, drawn as {navy:?}"
                ));
            }
            let rgb = frame_at(&output, 3.0, "rgb24");
            let (x, y) = (1280 - 24 - 142 + 6 + 14, 24 + 6 + 30);
            let ball = &rgb[(y * 1280 + x) * 3..][..3];
            let orange = [BALL_ORANGE.0[0], BALL_ORANGE.0[1], BALL_ORANGE.0[2]];
            if !rgb_near(ball, orange, 12) {
                failures.push(format!(
                    "watermark orange decodes as {ball:?}, drawn as {orange:?}"
                ));
            }
        }
        let _ = std::fs::remove_file(&input);
        let _ = std::fs::remove_file(&output);
    }
    println!("| case | source → output | outcome | transcode |\n|---|---|---|---|");
    for row in &table {
        println!("{row}");
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
