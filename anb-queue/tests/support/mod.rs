//! Test fixtures: a fresh database per test on each engine, and small helpers.

#![allow(dead_code)]

use std::{future::Future, time::Duration};

use anb_queue::{Job, JobId, Queue, QueueError, Worker};
use sqlx::{Connection, PgConnection, SqliteConnection};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Which engine a test database runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Postgres,
    Sqlite,
}

/// A throw-away database: a fresh PostgreSQL database, or a SQLite file in a temporary directory.
#[derive(Debug)]
pub struct TestDb {
    pub engine: Engine,
    pub url: String,
    admin_url: Option<String>,
    database: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

pub fn postgres_admin_url() -> String {
    std::env::var("ANB_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

impl TestDb {
    pub async fn postgres() -> Self {
        let admin_url = postgres_admin_url();
        let mut admin = PgConnection::connect(&admin_url).await.unwrap_or_else(|error| {
            panic!("PostgreSQL is not reachable at {admin_url} (set ANB_TEST_POSTGRES_URL): {error}")
        });
        let database = format!("anb_queue_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&mut admin)
            .await
            .expect("create the test database");
        let mut url = url::Url::parse(&admin_url).expect("ANB_TEST_POSTGRES_URL is a URL");
        url.set_path(&database);
        Self {
            engine: Engine::Postgres,
            url: url.to_string(),
            admin_url: Some(admin_url),
            database: Some(database),
            _dir: None,
        }
    }

    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let url = format!("sqlite://{}", dir.path().join("queue.db").display());
        Self {
            engine: Engine::Sqlite,
            url,
            admin_url: None,
            database: None,
            _dir: Some(dir),
        }
    }

    pub async fn queue(&self) -> Queue {
        Queue::connect(&self.url)
            .await
            .unwrap_or_else(|error| panic!("connect to {}: {error}", self.url))
    }

    /// Writes a business row and enqueues `job` in one transaction, then commits or rolls back.
    pub async fn enqueue_with_business_write<J: Job>(
        &self,
        queue: &Queue,
        job: &J,
        commit: bool,
    ) -> Result<JobId, QueueError> {
        match self.engine {
            Engine::Postgres => {
                let mut conn = PgConnection::connect(&self.url).await?;
                sqlx::query("CREATE TABLE IF NOT EXISTS orders (id BIGSERIAL PRIMARY KEY)")
                    .execute(&mut conn)
                    .await?;
                let mut tx = conn.begin().await?;
                sqlx::query("INSERT INTO orders DEFAULT VALUES")
                    .execute(&mut *tx)
                    .await?;
                let id = queue.enqueue_tx(&mut *tx, job).await?;
                if commit {
                    tx.commit().await?;
                } else {
                    tx.rollback().await?;
                }
                Ok(id)
            }
            Engine::Sqlite => {
                let mut conn = SqliteConnection::connect(&self.url).await?;
                sqlx::query("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY)")
                    .execute(&mut conn)
                    .await?;
                let mut tx = conn.begin().await?;
                sqlx::query("INSERT INTO orders DEFAULT VALUES")
                    .execute(&mut *tx)
                    .await?;
                let id = queue.enqueue_tx(&mut *tx, job).await?;
                if commit {
                    tx.commit().await?;
                } else {
                    tx.rollback().await?;
                }
                Ok(id)
            }
        }
    }

    /// How many business rows were committed.
    pub async fn business_rows(&self) -> i64 {
        match self.engine {
            Engine::Postgres => {
                let mut conn = PgConnection::connect(&self.url).await.unwrap();
                sqlx::query_scalar("SELECT count(*) FROM orders")
                    .fetch_one(&mut conn)
                    .await
                    .unwrap()
            }
            Engine::Sqlite => {
                let mut conn = SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::query_scalar("SELECT count(*) FROM orders")
                    .fetch_one(&mut conn)
                    .await
                    .unwrap()
            }
        }
    }

    /// Drops the PostgreSQL database (the SQLite directory goes with `self`).
    pub async fn cleanup(self) {
        if let (Some(admin_url), Some(database)) = (&self.admin_url, &self.database)
            && let Ok(mut admin) = PgConnection::connect(admin_url).await
        {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await;
        }
    }
}

/// A worker running in the background until stopped.
pub struct RunningWorker {
    stop: CancellationToken,
    handle: JoinHandle<Result<(), QueueError>>,
}

impl RunningWorker {
    pub fn spawn(worker: Worker) -> Self {
        let stop = CancellationToken::new();
        let handle = tokio::spawn(worker.run_until(stop.clone().cancelled_owned()));
        Self { stop, handle }
    }

    /// Signals shutdown and waits for the worker to return.
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("worker stops within 60 s")
            .expect("worker task does not panic")
            .expect("worker returns Ok");
    }
}

/// Polls `condition` every 20 ms until it holds; panics after `seconds` seconds.
pub async fn wait_until<F, Fut>(what: &str, seconds: u64, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {seconds} s waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
