//! `TestApp`: the real API on 127.0.0.1 port 0 over a fresh database,
//! storage and queue, with helpers that speak in intents.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

use anb_api::settings::{RateLimits, UploadLimits};
use anb_api::{ApiSettings, AppState, JobDelivery};
use anb_core::config::Settings;
use anb_core::db::Database;
use anb_core::storage::{S3Storage, Storage};
use anb_queue::Queue;
use reqwest::multipart::{Form, Part};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::broker::{Broker, TestBroker};

/// Which services back the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded default: SQLite, its SQL queue, a local directory.
    Embedded,
    /// PostgreSQL with its SQL queue, and S3 on the S3-compatible server.
    PostgresS3,
}

pub const JWT_SECRET: &str = "test-secret-of-more-than-32-bytes-for-hs256";

pub fn postgres_url() -> String {
    std::env::var("ANB_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn aws_endpoint() -> String {
    std::env::var("ANB_TEST_AWS_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4566".into())
}

fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ) + &uuid::Uuid::new_v4().simple().to_string()[..8]
}

/// Builds a [`TestApp`].
#[derive(Debug)]
pub struct TestAppBuilder {
    backend: Backend,
    rate_limits: RateLimits,
    upload: UploadLimits,
    uploads: anb_api::settings::UploadPolicy,
    trusted_proxies: Vec<ipnet::IpNet>,
    password_hash_queue: usize,
    password_hash_queue_per_client: Option<std::num::NonZeroUsize>,
    broker: Option<Broker>,
    transport: anb_api::transport::TransportLimits,
    database_through: Option<std::net::SocketAddr>,
    storage_through: Option<std::net::SocketAddr>,
    cors_origins: Vec<String>,
    statement_timeout_secs: Option<u64>,
    rankings_cache: std::time::Duration,
}

impl TestAppBuilder {
    /// How long a rankings page is kept (default: the platform's default).
    pub fn rankings_cache(mut self, age: std::time::Duration) -> Self {
        self.rankings_cache = age;
        self
    }

    /// `ANB_DB_STATEMENT_TIMEOUT_SECS` for the app's database pool.
    pub fn statement_timeout_secs(mut self, secs: u64) -> Self {
        self.statement_timeout_secs = Some(secs);
        self
    }

    /// Origins allowed to call the API from a browser.
    pub fn cors_origins(mut self, origins: &[&str]) -> Self {
        self.cors_origins = origins.iter().map(|o| o.to_string()).collect();
        self
    }

    /// The connection timeouts and lingering close of the server.
    pub fn transport(mut self, limits: anb_api::transport::TransportLimits) -> Self {
        self.transport = limits;
        self
    }

    /// Reaches the database through `addr` (a gate the test controls)
    /// instead of directly. PostgreSQL only.
    pub fn database_through(mut self, addr: std::net::SocketAddr) -> Self {
        self.database_through = Some(addr);
        self
    }

    /// Reaches the S3-compatible server through `addr`. S3 only.
    pub fn storage_through(mut self, addr: std::net::SocketAddr) -> Self {
        self.storage_through = Some(addr);
        self
    }

    /// Puts the queue on a fresh queue of `broker` instead of the database:
    /// uploads then go through the outbox and its relay.
    pub fn broker(mut self, broker: Broker) -> Self {
        self.broker = Some(broker);
        self
    }

    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    pub fn rate_limits(mut self, limits: RateLimits) -> Self {
        self.rate_limits = limits;
        self
    }

    pub fn upload_limits(mut self, limits: UploadLimits) -> Self {
        self.upload = limits;
        self
    }

    /// The per-player upload rate, quota, retries and clean-up (by default
    /// none of the limits, and no clean-up loop).
    pub fn upload_policy(mut self, policy: anb_api::settings::UploadPolicy) -> Self {
        self.uploads = policy;
        self
    }

    /// How many logins and sign-ups may wait for a hashing slot.
    pub fn password_hash_queue(mut self, queue: usize) -> Self {
        self.password_hash_queue = queue;
        self
    }

    /// How many logins and sign-ups one client may have waiting for or
    /// using a hashing slot (0: no bound, as by default here).
    pub fn password_hash_queue_per_client(mut self, per_client: usize) -> Self {
        self.password_hash_queue_per_client = std::num::NonZeroUsize::new(per_client);
        self
    }

    pub fn trusted_proxies(mut self, proxies: &[&str]) -> Self {
        self.trusted_proxies = proxies.iter().map(|p| p.parse().unwrap()).collect();
        self
    }

    pub async fn spawn(self) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let media_dir = dir.path().join("media");
        let (database_url, storage_url) = match self.backend {
            Backend::Embedded => (
                format!("sqlite://{}", dir.path().join("anb.db").display()),
                media_dir.display().to_string(),
            ),
            Backend::PostgresS3 => (
                fresh_postgres_database().await,
                format!("s3://{}", unique_name("anb-api-test-")),
            ),
        };
        let database_url = match self.database_through {
            Some(gate) => {
                let mut url = url::Url::parse(&database_url).unwrap();
                url.set_host(Some(&gate.ip().to_string())).unwrap();
                url.set_port(Some(gate.port())).unwrap();
                url.to_string()
            }
            None => database_url,
        };
        let broker = match self.broker {
            Some(kind) => Some(TestBroker::start(kind).await),
            None => None,
        };
        let mut vars: HashMap<&str, String> = HashMap::from([
            ("ANB_DATABASE_URL", database_url.clone()),
            ("ANB_STORAGE_URL", storage_url),
            ("ANB_JWT_SECRET", JWT_SECRET.to_owned()),
            ("ANB_HTTP_ADDR", "127.0.0.1:0".to_owned()),
        ]);
        if let Some(broker) = &broker {
            vars.insert("ANB_QUEUE_URL", broker.app_url());
        }
        if let Some(secs) = self.statement_timeout_secs {
            vars.insert("ANB_DB_STATEMENT_TIMEOUT_SECS", secs.to_string());
        }
        let settings = Settings::from_lookup(|var| vars.get(var).cloned()).unwrap();
        let api = ApiSettings {
            rankings_cache: self.rankings_cache,
            rate_limits: self.rate_limits,
            trusted_proxies: self.trusted_proxies,
            upload: self.upload,
            uploads: self.uploads,
            cors_origins: self.cors_origins,
            password_hash_queue: self.password_hash_queue,
            password_hash_queue_per_client: self.password_hash_queue_per_client,
        };
        let db = Database::connect_with(&database_url, &settings.pool)
            .await
            .unwrap_or_else(|e| panic!("database {database_url} unreachable: {e}"));
        let storage = match &settings.storage_url {
            anb_core::config::StorageUrl::S3 { bucket, .. } => {
                Storage::S3(fresh_s3_bucket(bucket, self.storage_through).await)
            }
            anb_core::config::StorageUrl::Local(_) => {
                Storage::from_url(&settings.storage_url, false, JWT_SECRET.as_bytes())
                    .await
                    .unwrap()
            }
        };
        let (queue, delivery) = match &broker {
            None => {
                let queue = match &db {
                    Database::Postgres(pool) => {
                        Queue::from_postgres_pool(pool.clone()).await.unwrap()
                    }
                    Database::Sqlite(pool) => Queue::from_sqlite_pool(pool.clone()).await.unwrap(),
                };
                (queue, JobDelivery::SameDatabase)
            }
            Some(broker) => (
                broker.app_queue().await,
                JobDelivery::Outbox(db.outbox().await.unwrap()),
            ),
        };
        let state = AppState::new(settings, api, db, storage, queue, delivery);
        state.migrate().await.unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let server_state = state.clone();
        let transport = self.transport;
        let server = tokio::spawn(async move {
            anb_api::serve_with(listener, server_state, transport, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        TestApp {
            base,
            client: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(120))
                .build()
                .unwrap(),
            state,
            stop: Some(stop),
            server: Some(server),
            broker,
            _dir: dir,
        }
    }
}

/// A fresh, empty PostgreSQL database; fails loudly if the server is down.
async fn fresh_postgres_database() -> String {
    use sqlx::Connection;
    let admin_url = postgres_url();
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL at {admin_url} (ANB_TEST_POSTGRES_URL) is not reachable: {e}")
        });
    let name = unique_name("anb_api_test_");
    // The name is made here of letters, digits and underscores only.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let mut url = url::Url::parse(&admin_url).unwrap();
    url.set_path(&name);
    url.to_string()
}

/// A fresh bucket on the S3-compatible server; fails loudly if it is down.
/// The storage reaches the server through `through` when given.
async fn fresh_s3_bucket(bucket: &str, through: Option<std::net::SocketAddr>) -> S3Storage {
    let client = s3_client(&aws_endpoint());
    client
        .create_bucket()
        .bucket(bucket)
        .send()
        .await
        .unwrap_or_else(|e| panic!("S3-compatible server at {} (ANB_TEST_AWS_ENDPOINT) refused to create a bucket: {e:?}", aws_endpoint()));
    match through {
        Some(gate) => S3Storage::new(s3_client(&format!("http://{gate}")), bucket, ""),
        None => S3Storage::new(client, bucket, ""),
    }
}

fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// The API on a real port.
#[derive(Debug)]
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    /// The broker holding the queue, when not the database.
    pub broker: Option<TestBroker>,
    _dir: tempfile::TempDir,
}

/// A signed-up, logged-in player.
#[derive(Debug, Clone)]
pub struct Player {
    pub user_id: String,
    pub email: String,
    pub password: String,
    pub token: String,
}

static PLAYER_COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestApp {
    /// On the embedded default, with no rate limits.
    pub async fn spawn() -> Self {
        Self::builder().spawn().await
    }

    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            backend: Backend::Embedded,
            rate_limits: RateLimits::unlimited(),
            upload: UploadLimits::default(),
            uploads: anb_api::settings::UploadPolicy {
                sweep_interval: None,
                ..anb_api::settings::UploadPolicy::unlimited()
            },
            trusted_proxies: Vec::new(),
            // Tests that flood on purpose set their own.
            password_hash_queue: usize::MAX,
            password_hash_queue_per_client: None,
            broker: None,
            transport: anb_api::transport::TransportLimits::default(),
            database_through: None,
            storage_through: None,
            cors_origins: Vec::new(),
            statement_timeout_secs: None,
            rankings_cache: anb_core::rankings::DEFAULT_CACHE_AGE,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stops the server (and the outbox relay) and waits until it has
    /// stopped; removes the broker's queue.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap();
        }
        if let Some(broker) = self.broker.take() {
            broker.cleanup().await;
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        let mut request = self.client.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    pub async fn post_json(&self, path: &str, token: Option<&str>, body: &Value) -> Response {
        let mut request = self.client.post(self.url(path)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> Response {
        let mut request = self.client.delete(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    pub fn signup_body(email: &str, city: &str) -> Value {
        json!({
            "first_name": "Ana",
            "last_name": "Gómez",
            "email": email,
            "password1": "a-long-password",
            "password2": "a-long-password",
            "city": city,
            "country": "Colombia",
        })
    }

    pub async fn signup(&self, body: &Value) -> Response {
        self.post_json("/api/auth/signup", None, body).await
    }

    pub async fn login(&self, email: &str, password: &str) -> Response {
        self.post_json(
            "/api/auth/login",
            None,
            &json!({"email": email, "password": password}),
        )
        .await
    }

    /// Signs up and logs in a new player of `city`.
    pub async fn player_in(&self, city: &str) -> Player {
        let n = PLAYER_COUNTER.fetch_add(1, Ordering::Relaxed);
        let email = format!("player{n}-{}@example.com", uuid::Uuid::new_v4().simple());
        let response = self.signup(&Self::signup_body(&email, city)).await;
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "{}",
            response.text().await.unwrap()
        );
        let user_id = response.json::<Value>().await.unwrap()["user_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let response = self.login(&email, "a-long-password").await;
        assert_eq!(response.status(), StatusCode::OK);
        let token = response.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        Player {
            user_id,
            email,
            password: "a-long-password".into(),
            token,
        }
    }

    pub async fn player(&self) -> Player {
        self.player_in("Bogotá").await
    }

    /// Uploads `bytes` as `video_file`.
    pub async fn upload(
        &self,
        token: Option<&str>,
        bytes: Vec<u8>,
        title: &str,
        is_public: Option<&str>,
    ) -> Response {
        let mut form = Form::new().text("title", title.to_owned()).part(
            "video_file",
            Part::bytes(bytes)
                .file_name("clip.mp4")
                .mime_str("video/mp4")
                .unwrap(),
        );
        if let Some(is_public) = is_public {
            form = form.text("is_public", is_public.to_owned());
        }
        let mut request = self
            .client
            .post(self.url("/api/videos/upload"))
            .multipart(form);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    /// Uploads a valid video and returns its id.
    pub async fn uploaded_video(&self, player: &Player, is_public: bool) -> String {
        let bytes = crate::fixtures::mp4(crate::fixtures::VALID_PORTRAIT).await;
        let response = self
            .upload(
                Some(&player.token),
                bytes,
                "Mi mejor jugada",
                Some(if is_public { "true" } else { "false" }),
            )
            .await;
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "{}",
            response.text().await.unwrap()
        );
        response.json::<Value>().await.unwrap()["video_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Does what the worker does when it finishes: outputs stored, video
    /// processed (and published if its owner asked).
    pub async fn process(&self, video_id: &str) {
        use anb_core::db::ProcessedOutputs;
        use anb_core::storage::VideoKeys;
        let id: anb_core::domain::VideoId = video_id.parse().unwrap();
        let keys = VideoKeys::new(id.as_uuid());
        for key in [keys.processed(), keys.thumbnail()] {
            self.state
                .storage
                .upload(&key, &b"processed output"[..], 1 << 20)
                .await
                .unwrap();
        }
        self.state.db.start_processing(id).await.unwrap();
        self.state
            .db
            .mark_processed(
                id,
                &ProcessedOutputs {
                    processed_key: keys.processed().as_str().to_owned(),
                    thumbnail_key: keys.thumbnail().as_str().to_owned(),
                },
            )
            .await
            .unwrap();
    }

    /// A published video of a new player, ready for votes.
    pub async fn published_video(&self) -> (Player, String) {
        let owner = self.player().await;
        let video_id = self.uploaded_video(&owner, true).await;
        self.process(&video_id).await;
        (owner, video_id)
    }

    pub async fn vote(&self, token: Option<&str>, video_id: &str) -> Response {
        self.post_json(
            &format!("/api/public/videos/{video_id}/vote"),
            token,
            &json!({}),
        )
        .await
    }
}

/// Asserts a problem response: status, content type and stable code.
pub async fn assert_problem(response: Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "status");
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body: Value = response.json().await.unwrap();
    assert_eq!(content_type, "application/problem+json", "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status, "{body}");
    for member in ["type", "title", "detail"] {
        assert!(body[member].is_string(), "problem lacks {member}: {body}");
    }
    body
}
