//! Outages: the API's database or storage behind a TCP gate the test opens
//! and closes (the shared servers themselves are never touched). While the
//! gate is closed the API answers 503 with `Retry-After` within a few
//! seconds; once it reopens, the API recovers without a restart.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::fixtures;
use crate::harness::{Backend, TestApp, assert_problem};

/// A TCP proxy to `target` that the test can close (every connection
/// through it is cut, new ones are hung up at once) and reopen.
#[derive(Debug)]
pub struct Gate {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    /// Bumped on every close: connections opened before it end.
    generation: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    pub async fn to(target: &str) -> Self {
        let target: SocketAddr = tokio::net::lookup_host(target)
            .await
            .unwrap()
            .next()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let (generation, _) = watch::channel(0u64);
        let task = tokio::spawn({
            let open = open.clone();
            let generation = generation.clone();
            async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    if !open.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let mut closed = generation.subscribe();
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(target).await else {
                            return;
                        };
                        let (mut client, mut server) = (client, server);
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = closed.changed() => {}
                        }
                    });
                }
            }
        });
        Self {
            addr,
            open,
            generation,
            task,
        }
    }

    pub fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn reopen(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Asserts a 503 outage answer with its `Retry-After`.
async fn assert_unavailable(response: reqwest::Response) {
    if response.status() != 503 {
        panic!(
            "not an outage answer: {} {}",
            response.status(),
            response.text().await.unwrap()
        );
    }
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .expect("a 503 says when to retry")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after > 0);
    let body = assert_problem(response, 503, "service_unavailable").await;
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("no está disponible"), "{detail}");
}

/// Retries `request` until it gives `status`, for at most `patience`.
async fn eventually<F, Fut>(patience: Duration, status: StatusCode, request: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = reqwest::Response>,
{
    let started = Instant::now();
    loop {
        let response = request().await;
        if response.status() == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < patience,
            "still {} after {patience:?}: {}",
            response.status(),
            response.text().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn postgres_host_port() -> String {
    let url = url::Url::parse(&crate::harness::postgres_url()).unwrap();
    format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432))
}

#[tokio::test]
async fn a_database_outage_answers_503_quickly_and_recovers_without_restart() {
    let gate = Gate::to(&postgres_host_port()).await;
    let app = TestApp::builder()
        .backend(Backend::PostgresS3)
        .database_through(gate.addr)
        .spawn()
        .await;
    let player = app.player().await;
    let list = || async {
        app.client
            .get(app.url("/api/videos"))
            .bearer_auth(&player.token)
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .expect("no answer during the outage")
    };
    assert_eq!(list().await.status(), 200);

    gate.close();
    let started = Instant::now();
    assert_unavailable(list().await).await;
    let first = started.elapsed();
    let started = Instant::now();
    let login = app
        .client
        .post(app.url("/api/auth/login"))
        .json(&serde_json::json!({"email": player.email, "password": player.password}))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap();
    assert_unavailable(login).await;
    println!(
        "database outage: 503 after {first:?} (authenticated list), {:?} (log-in)",
        started.elapsed()
    );
    // Liveness does not depend on the database; readiness says it is down.
    assert_eq!(app.get("/health", None).await.status(), 200);
    assert_eq!(app.get("/ready", None).await.status(), 503);

    gate.reopen();
    let recovered = eventually(Duration::from_secs(30), StatusCode::OK, list).await;
    println!("database outage: recovered {recovered:?} after the gate reopened");
}

#[tokio::test]
async fn a_storage_outage_answers_503_and_keeps_nothing() {
    let endpoint = url::Url::parse(&crate::harness::aws_endpoint()).unwrap();
    let gate = Gate::to(&format!(
        "{}:{}",
        endpoint.host_str().unwrap(),
        endpoint.port_or_known_default().unwrap()
    ))
    .await;
    let app = TestApp::builder()
        .backend(Backend::PostgresS3)
        .storage_through(gate.addr)
        .spawn()
        .await;
    let player = app.player().await;
    let video = fixtures::mp4(fixtures::VALID_PORTRAIT).await;

    gate.close();
    let started = Instant::now();
    let response = app
        .upload(Some(&player.token), video.clone(), "Jugada en apagón", None)
        .await;
    println!("storage outage: 503 after {:?}", started.elapsed());
    assert_unavailable(response).await;
    let list: Vec<serde_json::Value> = app
        .get("/api/videos", Some(&player.token))
        .await
        .json()
        .await
        .unwrap();
    assert!(list.is_empty(), "{list:?}");

    gate.reopen();
    let response = app
        .upload(Some(&player.token), video, "Jugada tras el apagón", None)
        .await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
}

/// How long a request may take past the statement timeout before the test
/// calls it a hang: the hashing of a sign-up, the round trips, a slow CI.
const TIMEOUT_SLACK: Duration = Duration::from_secs(2);

#[tokio::test]
async fn a_statement_stuck_behind_a_lock_answers_503_after_the_statement_timeout_on_postgres() {
    use sqlx::Connection;
    let app = TestApp::builder()
        .backend(Backend::PostgresS3)
        .statement_timeout_secs(1)
        .spawn()
        .await;
    let player = app.player().await;
    let list = || async {
        app.client
            .get(app.url("/api/videos"))
            .bearer_auth(&player.token)
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .expect("no answer while the table is locked")
    };
    assert_eq!(list().await.status(), 200);

    // Another client holds the users table, which authenticating reads.
    let mut holder = sqlx::PgConnection::connect(app.state.settings.database_url.as_str())
        .await
        .unwrap();
    let mut lock = holder.begin().await.unwrap();
    sqlx::query("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();

    let started = Instant::now();
    let response = list().await;
    let waited = started.elapsed();
    println!("table locked: answered after {waited:?} (statement timeout 1 s)");
    assert_unavailable(response).await;
    assert!(
        waited < Duration::from_secs(1) + TIMEOUT_SLACK,
        "answered after {waited:?}"
    );

    lock.rollback().await.unwrap();
    assert_eq!(list().await.status(), 200);
}

#[tokio::test]
async fn a_write_waiting_for_another_writer_answers_503_after_the_busy_timeout_on_sqlite() {
    use sqlx::Connection;
    let app = TestApp::builder()
        .backend(Backend::Embedded)
        .statement_timeout_secs(1)
        .spawn()
        .await;
    let app = &app;
    let signup = |n: u32| async move {
        app.client
            .post(app.url("/api/auth/signup"))
            .json(&TestApp::signup_body(
                &format!("writer{n}-{}@example.com", uuid::Uuid::new_v4().simple()),
                "Medellín",
            ))
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .expect("no answer while another connection writes")
    };
    assert_eq!(signup(0).await.status(), 201);

    // Another connection to the same file takes the write lock and keeps it.
    let mut holder = sqlx::SqliteConnection::connect(app.state.settings.database_url.as_str())
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .unwrap();

    let started = Instant::now();
    let response = signup(1).await;
    let waited = started.elapsed();
    println!("write lock held: answered after {waited:?} (busy timeout 1 s)");
    assert_unavailable(response).await;
    assert!(
        waited < Duration::from_secs(1) + TIMEOUT_SLACK,
        "answered after {waited:?}"
    );

    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    assert_eq!(signup(2).await.status(), 201);
}
