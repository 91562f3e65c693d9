//! Fixtures made with the `ffmpeg` tool from lavfi test sources, and checks with `ffprobe`.
#![allow(dead_code)]

pub mod platform;
pub mod process;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;

use anb_worker::{TranscodeError, TranscodeOptions, TranscodeReport};
use serde_json::Value;

/// Options for tests: the showcase rules, the fastest encoder preset.
pub fn fast_options() -> TranscodeOptions {
    TranscodeOptions {
        x264_preset: "ultrafast".into(),
        ..TranscodeOptions::default()
    }
}

fn run_tool(tool: &str, args: &[&str]) -> std::process::Output {
    let output = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("cannot run `{tool}` (install FFmpeg's tools): {error}"));
    assert!(
        output.status.success(),
        "`{tool} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs `ffmpeg` quietly with `args`, failing the test if it fails.
pub fn ffmpeg(args: &[&str]) -> Vec<u8> {
    let mut all = vec!["-hide_banner", "-loglevel", "error", "-nostdin", "-y"];
    all.extend_from_slice(args);
    run_tool("ffmpeg", &all).stdout
}

/// A video of `width`×`height` at `rate` fps lasting `seconds`, with moving
/// test-card content (`testsrc2`) or a flat colour (`color`, cheaper), encoded
/// fast and small. `extra` goes before the output name (e.g. `-movflags +faststart`).
pub fn video_fixture(
    dir: &Path,
    name: &str,
    source: &str,
    (width, height): (u32, u32),
    rate: u32,
    seconds: u32,
    extra: &[&str],
) -> PathBuf {
    let path = dir.join(name);
    let lavfi = format!("{source}=size={width}x{height}:rate={rate}:duration={seconds}");
    let mut args = vec![
        "-f",
        "lavfi",
        "-i",
        &lavfi,
        "-pix_fmt",
        "yuv420p",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-crf",
        "40",
    ];
    args.extend_from_slice(extra);
    args.push(path.to_str().unwrap());
    ffmpeg(&args);
    path
}

/// `ffprobe`'s JSON view of a file: streams and format.
pub fn probe(path: &Path) -> Value {
    let out = run_tool(
        "ffprobe",
        &[
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_streams",
            "-show_format",
            path.to_str().unwrap(),
        ],
    );
    serde_json::from_slice(&out.stdout).expect("ffprobe prints JSON")
}

/// Distinct packet durations of the first video stream (one value: constant frame rate).
pub fn packet_durations(path: &Path) -> Vec<String> {
    let out = run_tool(
        "ffprobe",
        &[
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "packet=duration",
            "-of",
            "csv=p=0",
            path.to_str().unwrap(),
        ],
    );
    let mut durations: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| line.trim().to_owned())
        .filter(|line| !line.is_empty())
        .collect();
    durations.sort();
    durations.dedup();
    durations
}

/// The names of an MP4's top-level boxes in file order.
pub fn top_level_boxes(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let mut boxes = Vec::new();
    let mut at = 0usize;
    while at + 8 <= bytes.len() {
        let size32 = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as u64;
        let kind = String::from_utf8_lossy(&bytes[at + 4..at + 8]).into_owned();
        let size = match size32 {
            0 => (bytes.len() - at) as u64,
            1 => u64::from_be_bytes(bytes[at + 8..at + 16].try_into().unwrap()),
            n => n,
        };
        boxes.push(kind);
        assert!(size >= 8, "malformed box size at {at}");
        at += size as usize;
    }
    boxes
}

/// One decoded frame at `seconds` as packed pixels (`gray` or `rgb24`), 1280×720.
pub fn frame_at(path: &Path, seconds: f64, pixel_format: &str) -> Vec<u8> {
    let at = format!("{seconds}");
    ffmpeg(&[
        "-ss",
        &at,
        "-i",
        path.to_str().unwrap(),
        "-frames:v",
        "1",
        "-f",
        "rawvideo",
        "-pix_fmt",
        pixel_format,
        "-",
    ])
}

/// Runs the pipeline with fast options, recording progress.
pub fn transcode(
    input: &Path,
    output: &Path,
    thumbnail: Option<&Path>,
) -> (Result<TranscodeReport, TranscodeError>, Vec<u8>) {
    let mut seen = Vec::new();
    let cancel = AtomicBool::new(false);
    let result = anb_worker::transcode(
        input,
        output,
        thumbnail,
        &fast_options(),
        |percent| seen.push(percent),
        &cancel,
    );
    (result, seen)
}

/// A float field of ffprobe's JSON (ffprobe prints numbers as strings).
pub fn number(value: &Value) -> f64 {
    value
        .as_str()
        .unwrap_or_else(|| panic!("expected a number string, got {value}"))
        .parse()
        .unwrap()
}

/// A fresh SQS queue with its dead-letter queue on the server at `ANB_TEST_AWS_ENDPOINT`: a
/// client of that server and the queue's URL. [`delete_sqs_queue`] removes both.
pub async fn sqs_queue() -> (aws_sdk_sqs::Client, String) {
    use aws_sdk_sqs::types::QueueAttributeName;
    let endpoint = std::env::var("ANB_TEST_AWS_ENDPOINT")
        .unwrap_or_else(|_| "http://127.0.0.1:4566".to_owned());
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .endpoint_url(&endpoint)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .build();
    let client = aws_sdk_sqs::Client::from_conf(config);
    let name = format!("anb-worker-{}", uuid::Uuid::new_v4().simple());
    let dead_letters = client
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .send()
        .await
        .unwrap_or_else(|error| panic!("SQS is not reachable at {endpoint}: {error}"));
    let arn = client
        .get_queue_attributes()
        .queue_url(dead_letters.queue_url().unwrap())
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .and_then(|attributes| attributes.get(&QueueAttributeName::QueueArn).cloned())
        .unwrap();
    let queue = client
        .create_queue()
        .queue_name(&name)
        .attributes(
            QueueAttributeName::RedrivePolicy,
            format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"10"}}"#),
        )
        .send()
        .await
        .unwrap();
    (client, queue.queue_url().unwrap().to_owned())
}

/// Deletes a queue made by [`sqs_queue`] and its dead-letter queue.
pub async fn delete_sqs_queue(client: &aws_sdk_sqs::Client, url: &str) {
    for queue_url in [url.to_owned(), format!("{url}-dlq")] {
        let _ = client.delete_queue().queue_url(queue_url).send().await;
    }
}
