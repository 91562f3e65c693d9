//! `anb-api` and `anb-worker` deployed as an operator deploys them: two separate processes
//! configured only by the environment variables of SPEC §7, sharing a fresh PostgreSQL database,
//! a fresh S3 bucket and a fresh queue on SQS or on Redis, driven over HTTP alone.
//!
//! Needs the test services (PostgreSQL at `ANB_TEST_POSTGRES_URL`, an S3 and SQS compatible
//! server at `ANB_TEST_AWS_ENDPOINT`, Redis at `ANB_TEST_REDIS_URL`; the defaults are local)
//! and FFmpeg's `ffmpeg` and `ffprobe` tools, which make the upload and check the result.
//!
//! These tests live in the `anb` package because it is the one that sits above both the API and
//! the worker; the processes they start are the `anb-api` and `anb-worker` executables
//! themselves (see [`executables`]).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long the API may take to answer after its process starts.
const STARTUP: Duration = Duration::from_secs(60);
/// How long an upload may take to be processed (a slow, shared machine included).
const PROCESSING: Duration = Duration::from_secs(600);
/// How long a process may take to exit after SIGTERM. The worker is idle by then, so it
/// has nothing to drain; the bound is far below its 30 s grace.
const SHUTDOWN: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// The executables

/// Paths of the `anb-api` and `anb-worker` executables of this build.
#[derive(Debug)]
struct Executables {
    api: PathBuf,
    worker: PathBuf,
}

/// The `anb-api` and `anb-worker` executables, built once per test run.
///
/// Cargo hands a test `CARGO_BIN_EXE_<name>` only for the binaries of its own package, and
/// these two belong to other packages. Guessing their place in the target directory could run
/// stale binaries (`cargo test -p anb` does not rebuild them), so the test asks Cargo itself:
/// `cargo build --bins -p anb-api -p anb-worker` with this test executable's target directory
/// and profile. After `cargo test --workspace` that is a no-op that only reports the paths;
/// otherwise it builds them first. Cargo releases its build lock before it runs tests, so the
/// nested build does not wait on the outer one. (Cross-compiled runs, `--target <triple>`, are
/// not supported: the target directory is derived from the host layout.)
fn executables() -> &'static Executables {
    static BUILT: OnceLock<Executables> = OnceLock::new();
    BUILT.get_or_init(|| {
        // <target dir>/<profile dir>/deps/<this test executable>
        let test_exe = std::env::current_exe().expect("the test executable's path");
        let profile_dir = test_exe
            .parent()
            .and_then(Path::parent)
            .expect("the test executable sits in <target>/<profile>/deps");
        let target_dir = profile_dir.parent().expect("a target directory");
        let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
            Some("debug") => "dev",
            Some(other) => other,
            None => panic!("unexpected profile directory {}", profile_dir.display()),
        };
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        // Cargo gives this test its package's CARGO_PKG_*, CARGO_MANIFEST_DIR… Build scripts
        // watch some of them (ring's does), so passing them on would make the nested build and
        // the next outer one each see "changed" variables and rebuild half the dependencies.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_CFG_")
                || name.starts_with("CARGO_MANIFEST_")
                || matches!(
                    &*name,
                    "CARGO_CRATE_NAME"
                        | "CARGO_BIN_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_TARGET_TMPDIR"
                        | "CARGO_RUSTC_CURRENT_DIR"
                        | "OUT_DIR"
                )
            {
                build.env_remove(&*name);
            }
        }
        let output = build
            .args([
                "build",
                "--locked",
                "--bins",
                "-p",
                "anb-api",
                "-p",
                "anb-worker",
            ])
            .args([
                "--message-format",
                "json-render-diagnostics",
                "--profile",
                profile,
            ])
            .arg("--manifest-path")
            .arg(&manifest)
            .arg("--target-dir")
            .arg(target_dir)
            .output()
            .expect("run cargo to build anb-api and anb-worker");
        assert!(
            output.status.success(),
            "building anb-api and anb-worker failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut api = None;
        let mut worker = None;
        for line in output.stdout.split(|byte| *byte == b'\n') {
            let Ok(message) = serde_json::from_slice::<Value>(line) else {
                continue;
            };
            let Some(executable) = message["executable"].as_str() else {
                continue;
            };
            match message["target"]["name"].as_str() {
                Some("anb-api") => api = Some(PathBuf::from(executable)),
                Some("anb-worker") => worker = Some(PathBuf::from(executable)),
                _ => {}
            }
        }
        Executables {
            api: api.expect("cargo reported the anb-api executable"),
            worker: worker.expect("cargo reported the anb-worker executable"),
        }
    })
}

// ---------------------------------------------------------------------------
// The services behind the processes

/// Which broker carries the transcode jobs.
#[derive(Debug, Clone, Copy)]
enum Broker {
    Sqs,
    Redis,
}

fn var_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn aws_endpoint() -> String {
    var_or("ANB_TEST_AWS_ENDPOINT", "http://127.0.0.1:4566")
}

/// Credentials and region for the S3/SQS-compatible test server.
fn aws_settings() -> [(&'static str, String); 3] {
    [
        ("AWS_ACCESS_KEY_ID", var_or("AWS_ACCESS_KEY_ID", "test")),
        (
            "AWS_SECRET_ACCESS_KEY",
            var_or("AWS_SECRET_ACCESS_KEY", "test"),
        ),
        ("AWS_REGION", var_or("AWS_REGION", "us-east-1")),
    ]
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// A fresh database, bucket and queue, and the environment naming them.
struct Services {
    env: Vec<(&'static str, String)>,
    admin_url: String,
    database: String,
    sqs_queues: Vec<String>,
}

impl Services {
    async fn create(broker: Broker) -> Self {
        let (admin_url, database, database_url) = fresh_postgres_database().await;
        let bucket = fresh_bucket().await;
        let (queue_url, sqs_queues) = match broker {
            Broker::Sqs => {
                let (name, urls) = fresh_sqs_queue().await;
                (format!("sqs://{name}"), urls)
            }
            Broker::Redis => {
                let server = var_or("ANB_TEST_REDIS_URL", "redis://127.0.0.1:6379");
                let separator = if server.contains('?') { '&' } else { '?' };
                let queue = unique("e2e-");
                (format!("{server}{separator}queue={queue}"), Vec::new())
            }
        };
        let secret: String = unique("jwt-secret-for-the-deployment-test-");
        let mut env = vec![
            ("ANB_DATABASE_URL", database_url),
            ("ANB_QUEUE_URL", queue_url),
            ("ANB_STORAGE_URL", format!("s3://{bucket}")),
            ("ANB_S3_PATH_STYLE", "true".to_owned()),
            ("ANB_JWT_SECRET", secret),
            ("AWS_ENDPOINT_URL", aws_endpoint()),
            // Operators' choices for a small test machine: one job at a time, the fastest
            // x264 preset.
            ("ANB_WORKER_CONCURRENCY", "1".to_owned()),
            ("ANB_X264_PRESET", "ultrafast".to_owned()),
            ("RUST_LOG", var_or("RUST_LOG", "info")),
        ];
        env.extend(aws_settings());
        Self {
            env,
            admin_url,
            database,
            sqs_queues,
        }
    }

    /// Drops the database and deletes the queues (the bucket stays with the test server).
    async fn remove(self) {
        use sqlx::Connection;
        if let Ok(mut admin) = sqlx::PgConnection::connect(&self.admin_url).await {
            let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.database);
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
                .execute(&mut admin)
                .await;
        }
        let client = sqs_client();
        for url in self.sqs_queues {
            let _ = client.delete_queue().queue_url(url).send().await;
        }
    }
}

/// Creates a database on the test server; returns the admin URL, its name and its URL.
async fn fresh_postgres_database() -> (String, String, String) {
    use sqlx::Connection;
    let admin_url = var_or(
        "ANB_TEST_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    );
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|error| {
            panic!(
                "PostgreSQL is not reachable at {admin_url} (set ANB_TEST_POSTGRES_URL): {error}"
            )
        });
    let database = unique("anb_deployment_");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .execute(&mut admin)
        .await
        .expect("create the test database");
    let mut url = url::Url::parse(&admin_url).expect("ANB_TEST_POSTGRES_URL is a URL");
    url.set_path(&database);
    (admin_url, database, url.to_string())
}

fn test_credentials() -> aws_sdk_s3::config::Credentials {
    let [(_, key), (_, secret), _] = aws_settings();
    aws_sdk_s3::config::Credentials::new(key, secret, None, None, "anb-deployment-test")
}

fn test_region() -> aws_sdk_s3::config::Region {
    let [_, _, (_, region)] = aws_settings();
    aws_sdk_s3::config::Region::new(region)
}

async fn fresh_bucket() -> String {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(test_region())
        .endpoint_url(aws_endpoint())
        .credentials_provider(test_credentials())
        .force_path_style(true)
        .build();
    let bucket = unique("anb-deployment-");
    aws_sdk_s3::Client::from_conf(config)
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap_or_else(|error| {
            panic!(
                "cannot create a bucket at {} (set ANB_TEST_AWS_ENDPOINT): {}",
                aws_endpoint(),
                aws_sdk_s3::error::DisplayErrorContext(error)
            )
        });
    bucket
}

fn sqs_client() -> aws_sdk_sqs::Client {
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(test_region())
        .endpoint_url(aws_endpoint())
        .credentials_provider(test_credentials())
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

/// A queue with its dead-letter queue, as `infra/` provisions them; returns the queue's
/// name and both queue URLs.
async fn fresh_sqs_queue() -> (String, Vec<String>) {
    use aws_sdk_sqs::types::QueueAttributeName;
    let client = sqs_client();
    let name = unique("anb-deployment-");
    let dead_letters = client
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .send()
        .await
        .unwrap_or_else(|error| {
            panic!(
                "SQS is not reachable at {} (set ANB_TEST_AWS_ENDPOINT): {}",
                aws_endpoint(),
                aws_sdk_sqs::error::DisplayErrorContext(error)
            )
        });
    let dead_letters_url = dead_letters.queue_url().unwrap().to_owned();
    let arn = client
        .get_queue_attributes()
        .queue_url(&dead_letters_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("read the dead-letter queue's ARN")
        .attributes()
        .and_then(|attributes| attributes.get(&QueueAttributeName::QueueArn).cloned())
        .expect("a queue ARN");
    let queue = client
        .create_queue()
        .queue_name(&name)
        .attributes(
            QueueAttributeName::RedrivePolicy,
            format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"5"}}"#),
        )
        .send()
        .await
        .expect("create the queue");
    let queue_url = queue.queue_url().unwrap().to_owned();
    (name, vec![queue_url, dead_letters_url])
}

// ---------------------------------------------------------------------------
// The processes

/// A child process whose output goes to a log file. Dropping it kills the process if it still
/// runs (a failed test leaves nothing behind) and, when a test is failing, prints its log.
struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn start(
        name: &'static str,
        program: &Path,
        args: &[&str],
        env: &[(&'static str, String)],
        dir: &Path,
    ) -> Self {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        // Nothing but the settings an operator gives; PATH only so the AWS SDK and the
        // runtime find nothing surprising missing.
        let child = Command::new(program)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env.iter().map(|(key, value)| (key, value)))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", program.display()));
        Self { name, child, log }
    }

    /// Sends SIGTERM.
    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "could not signal {}", self.name);
    }

    /// Waits for the process to exit, at most `bound`.
    async fn exit_within(&mut self, bound: Duration) -> ExitStatus {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {bound:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn print_log(&self) {
        let Ok(file) = std::fs::File::open(&self.log) else {
            return;
        };
        let lines: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
        let start = lines.len().saturating_sub(80);
        eprintln!("---- last lines of {} ----", self.name);
        for line in &lines[start..] {
            eprintln!("{line}");
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            self.print_log();
        }
    }
}

/// Runs `anb-api migrate` to completion, as a deployment does before starting the API.
async fn migrate(env: &[(&'static str, String)], dir: &Path) {
    let mut migrate = Process::start(
        "anb-api migrate",
        &executables().api,
        &["migrate"],
        env,
        dir,
    );
    let status = migrate.exit_within(STARTUP).await;
    assert!(status.success(), "anb-api migrate exited with {status}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------
// The player, over HTTP

/// A 21 s landscape 1920×1080 clip made with the `ffmpeg` tool.
fn upload_fixture(dir: &Path) -> Vec<u8> {
    let path = dir.join("clip.mp4");
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
        .args([
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1920x1080:rate=30:duration=21",
        ])
        .args([
            "-pix_fmt",
            "yuv420p",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
        ])
        .args(["-crf", "40"])
        .arg(&path)
        .status()
        .expect("cannot run ffmpeg (install FFmpeg's tools)");
    assert!(status.success(), "ffmpeg could not make the fixture");
    std::fs::read(path).unwrap()
}

/// `ffprobe`'s JSON view of a file's streams.
fn probe(path: &Path) -> Value {
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-print_format", "json", "-show_streams"])
        .arg(path)
        .output()
        .expect("cannot run ffprobe (install FFmpeg's tools)");
    assert!(
        output.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

struct Player {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Player {
    async fn sign_up_and_log_in(base: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        let email = format!("{}@example.org", unique("player-"));
        let signup = json!({
            "first_name": "Valentina", "last_name": "Ríos", "email": email,
            "password1": "a long password", "password2": "a long password",
            "city": "Cali", "country": "Colombia",
        });
        let response = http
            .post(format!("{base}/api/auth/signup"))
            .json(&signup)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        let login = json!({"email": email, "password": "a long password"});
        let response = http
            .post(format!("{base}/api/auth/login"))
            .json(&login)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
        let token = response.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .expect("an access token")
            .to_owned();
        Self {
            http,
            base: base.to_owned(),
            token,
        }
    }

    /// Uploads the clip; returns the id of the video it created, found in the player's list.
    async fn upload(&self, title: &str, clip: Vec<u8>) -> String {
        let form = reqwest::multipart::Form::new()
            .text("title", title.to_owned())
            .part(
                "video_file",
                reqwest::multipart::Part::bytes(clip)
                    .file_name("clip.mp4")
                    .mime_str("video/mp4")
                    .unwrap(),
            );
        let response = self
            .http
            .post(format!("{}/api/videos/upload", self.base))
            .bearer_auth(&self.token)
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        let accepted: Value = response.json().await.unwrap();
        assert!(accepted["task_id"].is_string(), "{accepted}");

        let videos = self.get("/api/videos").await;
        let videos = videos.as_array().expect("a list of videos");
        assert_eq!(videos.len(), 1, "{videos:?}");
        assert_eq!(videos[0]["title"], title);
        videos[0]["video_id"].as_str().unwrap().to_owned()
    }

    async fn get(&self, path: &str) -> Value {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    /// Polls the video until it is processed or failed.
    async fn wait_until_done(&self, video_id: &str) -> Value {
        let deadline = Instant::now() + PROCESSING;
        loop {
            let video = self.get(&format!("/api/videos/{video_id}")).await;
            if video["status"] == "processed" || video["status"] == "failed" {
                return video;
            }
            assert!(
                Instant::now() < deadline,
                "not processed within {PROCESSING:?}: {video}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

// ---------------------------------------------------------------------------
// The tests

/// Sign-up, login, an upload processed by the separate worker process, the processed video
/// fetched through the URL the API hands out, and a clean SIGTERM shutdown of both processes;
/// then the database and queues go, whatever the outcome.
async fn an_upload_is_processed_across_processes(broker: Broker) {
    let executables = tokio::task::spawn_blocking(executables).await.unwrap();
    let services = Services::create(broker).await;
    // On a task of its own so that a failure still reaches the clean-up below.
    let outcome = tokio::spawn(upload_and_shut_down(executables, services.env.clone())).await;
    services.remove().await;
    if let Err(failure) = outcome {
        std::panic::resume_unwind(failure.into_panic());
    }
}

async fn upload_and_shut_down(
    executables: &'static Executables,
    mut env: Vec<(&'static str, String)>,
) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    env.push(("ANB_HTTP_ADDR", format!("127.0.0.1:{port}")));

    migrate(&env, dir.path()).await;
    let mut worker = Process::start("anb-worker", &executables.worker, &[], &env, dir.path());
    let mut api = Process::start("anb-api", &executables.api, &[], &env, dir.path());
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + STARTUP;
    while reqwest::get(format!("{base}/health")).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "anb-api did not answer within {STARTUP:?}"
        );
        assert!(
            api.child.try_wait().unwrap().is_none(),
            "anb-api exited at start-up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "anb-worker exited at start-up"
    );

    let player = Player::sign_up_and_log_in(&base).await;
    let video_id = player
        .upload("Tiro de tres en Cali", upload_fixture(dir.path()))
        .await;
    let video = player.wait_until_done(&video_id).await;
    assert_eq!(video["status"], "processed", "{video}");

    // The processed video is served straight from S3 through a presigned URL.
    let url = video["processed_url"].as_str().expect("a processed URL");
    assert!(
        url.starts_with(&aws_endpoint()),
        "a presigned URL on the S3 server, got {url}"
    );
    let response = reqwest::get(url).await.unwrap();
    assert_eq!(response.status(), 200, "GET {url}");
    let processed = dir.path().join("processed.mp4");
    std::fs::write(&processed, response.bytes().await.unwrap()).unwrap();
    let streams = probe(&processed)["streams"].clone();
    let streams = streams.as_array().expect("streams");
    assert_eq!(streams.len(), 1, "one video stream, no audio: {streams:?}");
    assert_eq!(streams[0]["codec_name"], "h264");
    assert_eq!(streams[0]["width"], 1280);
    assert_eq!(streams[0]["height"], 720);

    // SIGTERM stops both cleanly.
    worker.terminate();
    api.terminate();
    let worker_exit = worker.exit_within(SHUTDOWN).await;
    let api_exit = api.exit_within(SHUTDOWN).await;
    assert!(
        worker_exit.success(),
        "anb-worker exited with {worker_exit}"
    );
    assert!(api_exit.success(), "anb-api exited with {api_exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_and_worker_processes_on_postgres_s3_and_sqs() {
    an_upload_is_processed_across_processes(Broker::Sqs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_and_worker_processes_on_postgres_s3_and_redis() {
    an_upload_is_processed_across_processes(Broker::Redis).await;
}
