//! MP4 fixtures made at test time with the `ffmpeg` tool: a synthetic test
//! pattern, tiny bitrate and few frames per second so each takes a moment to
//! make and weighs a few hundred kilobytes.

use std::path::PathBuf;
use std::process::Command;

use tokio::sync::OnceCell;

/// A video to generate.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub width: u32,
    pub height: u32,
    pub seconds: u32,
}

/// Portrait full HD, 21 s: valid (the shorter side is 1080).
pub const VALID_PORTRAIT: Spec = Spec {
    width: 1080,
    height: 1920,
    seconds: 21,
};
/// Landscape full HD, 8 s: too short.
pub const TOO_SHORT: Spec = Spec {
    width: 1920,
    height: 1080,
    seconds: 8,
};
/// Landscape full HD, 65 s: too long.
pub const TOO_LONG: Spec = Spec {
    width: 1920,
    height: 1080,
    seconds: 65,
};
/// 720p, 21 s: resolution too low.
pub const LOW_RESOLUTION: Spec = Spec {
    width: 1280,
    height: 720,
    seconds: 21,
};

/// The bytes of the MP4 file for `spec`, generated once per test process.
pub async fn mp4(spec: Spec) -> Vec<u8> {
    static CACHE: [OnceCell<Vec<u8>>; 4] = [
        OnceCell::const_new(),
        OnceCell::const_new(),
        OnceCell::const_new(),
        OnceCell::const_new(),
    ];
    let slot = match (spec.width, spec.height, spec.seconds) {
        (1080, 1920, 21) => 0,
        (1920, 1080, 8) => 1,
        (1920, 1080, 65) => 2,
        _ => 3,
    };
    CACHE[slot]
        .get_or_init(|| async move {
            tokio::task::spawn_blocking(move || generate(spec))
                .await
                .unwrap()
        })
        .await
        .clone()
}

fn generate(spec: Spec) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("fixture.mp4");
    let source = format!(
        "testsrc2=size={}x{}:rate=2:duration={}",
        spec.width, spec.height, spec.seconds
    );
    let output = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg(&source)
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-b:v",
            "40k",
        ])
        .arg(&path)
        .output()
        .expect("the `ffmpeg` tool must be installed to make test videos (apt-get install ffmpeg)");
    assert!(
        output.status.success(),
        "ffmpeg failed for {spec:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read(&path).unwrap()
}
