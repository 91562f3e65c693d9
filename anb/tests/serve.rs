//! `anb serve` as a user runs it: a real process on a free port, with nothing else started.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// An `anb serve` process on a free port and a fresh data directory, stopped with SIGTERM.
struct Served {
    child: Child,
    base: String,
    data_dir: tempfile::TempDir,
}

impl Served {
    async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// `anb serve` with `extra` arguments after the address and data directory.
    async fn start_with(extra: &[&str]) -> Self {
        Self::start_with_env(extra, &[]).await
    }

    /// `anb serve` with `extra` arguments and only the environment variables `env`.
    async fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(env!("CARGO_BIN_EXE_anb"))
            .args(["serve", "--addr", &addr, "--data-dir"])
            .arg(data_dir.path())
            .args(extra)
            .env_clear()
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let base = format!("http://{addr}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while reqwest::get(format!("{base}/health")).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "anb serve did not answer within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            child,
            base,
            data_dir,
        }
    }

    /// SIGTERM, then the exit status must be success.
    fn stop(mut self) {
        Command::new("kill")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "anb serve exited with {exit}");
    }
}

impl Drop for Served {
    /// A test that fails before `stop` must not leave the server running (holding its port
    /// and the output the test harness is read through).
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test]
async fn serve_answers_health_on_the_embedded_default() {
    let served = Served::start().await;
    let response = reqwest::get(format!("{}/health", served.base))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(served.data_dir.path().join("jwt-secret").exists());
    served.stop();
}

/// A 21 s portrait 1080×1920 clip made with the `ffmpeg` tool.
fn upload_fixture(dir: &std::path::Path) -> Vec<u8> {
    let path = dir.join("clip.mp4");
    let status = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostdin",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg("testsrc2=size=1080x1920:rate=30:duration=21")
        .args([
            "-pix_fmt",
            "yuv420p",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-crf",
            "40",
        ])
        .arg(&path)
        .status()
        .expect("cannot run ffmpeg (install FFmpeg's tools)");
    assert!(status.success());
    std::fs::read(path).unwrap()
}

/// Signs a player up, logs in and uploads a valid clip: (token, video id).
async fn sign_up_and_upload(served: &Served, http: &reqwest::Client) -> (String, String) {
    let base = &served.base;
    let signup = json!({
        "first_name": "Mateo", "last_name": "Rojas", "email": "mateo@example.org",
        "password1": "a long password", "password2": "a long password",
        "city": "Medellín", "country": "Colombia",
    });
    let response = http
        .post(format!("{base}/api/auth/signup"))
        .json(&signup)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let login = json!({"email": "mateo@example.org", "password": "a long password"});
    let response = http
        .post(format!("{base}/api/auth/login"))
        .json(&login)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let token = response.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();

    let form = reqwest::multipart::Form::new()
        .text("title", "Doble crossover")
        .part(
            "video_file",
            reqwest::multipart::Part::bytes(upload_fixture(served.data_dir.path()))
                .file_name("clip.mp4")
                .mime_str("video/mp4")
                .unwrap(),
        );
    let response = http
        .post(format!("{base}/api/videos/upload"))
        .bearer_auth(&token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let video_id = response.json::<Value>().await.unwrap()["video_id"]
        .as_str()
        .unwrap()
        .to_owned();

    (token, video_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_processes_an_upload_with_its_in_process_worker() {
    // The built-in worker takes its encoder settings from the environment, as anb-worker does.
    let served = Served::start_with_env(
        &[],
        &[("ANB_X264_PRESET", "ultrafast"), ("ANB_X264_CRF", "30")],
    )
    .await;
    let base = &served.base;
    let http = reqwest::Client::new();

    let (token, video_id) = sign_up_and_upload(&served, &http).await;

    // The worker inside the same process picks the job up; no other service runs.
    let deadline = Instant::now() + Duration::from_secs(600);
    let video = loop {
        let video: Value = http
            .get(format!("{base}/api/videos/{video_id}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if video["status"] == "processed" || video["status"] == "failed" {
            break video;
        }
        assert!(
            Instant::now() < deadline,
            "not processed within 600 s: {video}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(video["status"], "processed", "{video}");

    // The processed URL is playable: an MP4 served by the API.
    let url = video["processed_url"].as_str().unwrap();
    let url = if url.starts_with('/') {
        format!("{base}{url}")
    } else {
        url.to_owned()
    };
    let media = http.get(url).send().await.unwrap();
    assert_eq!(media.status(), 200);
    let bytes = media.bytes().await.unwrap();
    assert_eq!(&bytes[4..8], b"ftyp", "not an MP4");
    // x264 writes its settings into the stream: ultrafast turns CABAC off (veryfast, the
    // default, keeps it on), and the rate factor is the one configured.
    let settings = x264_settings(&bytes);
    assert!(settings.contains(" cabac=0 "), "{settings}");
    assert!(settings.contains(" crf=30.0 "), "{settings}");

    // Public by default: it is listed for voting.
    let public: Value = http
        .get(format!("{base}/api/public/videos"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        public
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["video_id"] == video_id.as_str()),
        "{public}"
    );
    served.stop();
}

/// The encoder settings x264 writes into its first SEI message ("x264 - core … options: …").
fn x264_settings(mp4: &[u8]) -> String {
    let marker = b"options: ";
    let start = mp4
        .windows(marker.len())
        .position(|window| window == marker)
        .expect("no x264 settings in the stream");
    let end = mp4[start..]
        .iter()
        .position(|&byte| byte == 0)
        .map_or(mp4.len(), |offset| start + offset);
    format!("{} ", String::from_utf8_lossy(&mp4[start..end]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_the_worker_accepts_uploads_and_leaves_them_queued() {
    let served = Served::start_with(&["--no-worker"]).await;
    let http = reqwest::Client::new();
    let (token, video_id) = sign_up_and_upload(&served, &http).await;

    // With the worker in the process a clip this small starts processing at
    // once; left out, the video stays as uploaded.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let video: Value = http
        .get(format!("{}/api/videos/{video_id}", served.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(video["status"], "uploaded", "{video}");
    // Its transcode job waits in the platform's queue, as `anb queue` shows beside the
    // running server.
    let stats = Command::new(env!("CARGO_BIN_EXE_anb"))
        .args(["queue", "stats", "--json", "--data-dir"])
        .arg(served.data_dir.path())
        .output()
        .unwrap();
    assert!(stats.status.success(), "{stats:?}");
    let stats: Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(
        (stats["ready"].as_u64(), stats["dead"].as_u64()),
        (Some(1), Some(0)),
        "{stats}"
    );
    served.stop();
}
