//! Test fixtures: a fresh database per test on each engine, and small helpers.

#![allow(dead_code)]

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use anb_queue::{Job, JobId, Queue, QueueError};
use sqlx::{Connection, PgConnection, SqliteConnection};
use tokio::task::JoinHandle;

/// Which engine a test database runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Postgres,
    Sqlite,
    Redis,
    Sqs,
}

impl Engine {
    /// Whether jobs can be enqueued inside the caller's SQL transaction (the queue lives in
    /// that database).
    pub fn joins_sql_transactions(self) -> bool {
        matches!(self, Engine::Postgres | Engine::Sqlite)
    }
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

    /// A queue under a fresh key prefix on the Redis server at `ANB_TEST_REDIS_URL`.
    pub async fn redis() -> Self {
        let server = redis_url();
        let client =
            ::redis::Client::open(server.as_str()).expect("ANB_TEST_REDIS_URL is a Redis URL");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|error| {
                panic!("Redis is not reachable at {server} (set ANB_TEST_REDIS_URL): {error}")
            });
        let _: () = ::redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .unwrap_or_else(|error| panic!("Redis at {server} does not answer PING: {error}"));
        let queue = format!("test-{}", uuid::Uuid::new_v4().simple());
        let separator = if server.contains('?') { '&' } else { '?' };
        Self {
            engine: Engine::Redis,
            url: format!("{server}{separator}queue={queue}"),
            admin_url: Some(server),
            database: Some(queue),
            _dir: Some(tempfile::tempdir().expect("create a temporary directory")),
        }
    }

    /// A queue under a fresh key prefix on the Redis Cluster at `ANB_TEST_REDIS_CLUSTER_URL`
    /// (a seed node's URL with `?cluster=true`).
    pub async fn redis_cluster() -> Self {
        let server = redis_cluster_url();
        let mut conn = cluster_connection(&server).await.unwrap_or_else(|error| {
            panic!(
                "the Redis Cluster is not reachable at {server} (set ANB_TEST_REDIS_CLUSTER_URL): {error}"
            )
        });
        let info: String = ::redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut conn)
            .await
            .unwrap_or_else(|error| panic!("CLUSTER INFO at {server}: {error}"));
        assert!(
            info.contains("cluster_state:ok"),
            "the Redis Cluster at {server} is not ok: {info}"
        );
        let queue = format!("test-{}", uuid::Uuid::new_v4().simple());
        Self {
            engine: Engine::Redis,
            url: format!("{server}&queue={queue}"),
            admin_url: Some(server),
            database: Some(queue),
            _dir: Some(tempfile::tempdir().expect("create a temporary directory")),
        }
    }

    /// A fresh queue, with a dead-letter queue by redrive policy, on the SQS-compatible
    /// server at `ANB_TEST_AWS_ENDPOINT`.
    pub async fn sqs() -> Self {
        let endpoint = aws_endpoint();
        let client = sqs_client(&endpoint);
        let name = format!("anb-test-{}", uuid::Uuid::new_v4().simple());
        let dead_letters = client
            .create_queue()
            .queue_name(format!("{name}-dlq"))
            .send()
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "SQS is not reachable at {endpoint} (set ANB_TEST_AWS_ENDPOINT): {}",
                    aws_sdk_sqs::error::DisplayErrorContext(error)
                )
            });
        let dead_letters_url = dead_letters.queue_url().unwrap().to_owned();
        let arn = client
            .get_queue_attributes()
            .queue_url(&dead_letters_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .expect("read the dead-letter queue's ARN")
            .attributes()
            .and_then(|attributes| {
                attributes
                    .get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                    .cloned()
            })
            .expect("a queue ARN");
        let queue = client
            .create_queue()
            .queue_name(&name)
            .attributes(
                aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
                format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"10"}}"#),
            )
            .send()
            .await
            .expect("create the test queue");
        Self {
            engine: Engine::Sqs,
            url: queue.queue_url().unwrap().to_owned(),
            admin_url: Some(endpoint),
            database: Some(dead_letters_url),
            _dir: Some(tempfile::tempdir().expect("create a temporary directory")),
        }
    }

    /// What a child process needs in its environment to reach the queue: the URL for the
    /// test kit's `Queue::connect` in the child, and credentials for SQS.
    pub fn child_env(&self) -> Vec<(String, String)> {
        let mut env = vec![(
            anb_queue_testkit::CHILD_QUEUE_URL.to_owned(),
            self.url.clone(),
        )];
        if self.engine == Engine::Sqs {
            for (name, value) in [
                ("AWS_ACCESS_KEY_ID", "test"),
                ("AWS_SECRET_ACCESS_KEY", "test"),
                ("AWS_REGION", "us-east-1"),
            ] {
                env.push((name.to_owned(), value.to_owned()));
            }
        }
        env
    }

    /// Where the business table of [`TestDb::enqueue_with_business_write`] lives: the
    /// queue's own database, or a SQLite file next to a broker.
    fn business_url(&self) -> String {
        match (self.engine, &self._dir) {
            (Engine::Postgres | Engine::Sqlite, _) => self.url.clone(),
            (_, Some(dir)) => format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("business.db").display()
            ),
            (_, None) => unreachable!("broker test databases keep a directory"),
        }
    }

    pub async fn queue(&self) -> Queue {
        if self.engine == Engine::Sqs {
            let endpoint = self.admin_url.as_deref().unwrap_or_default();
            return Queue::from_sqs_client(sqs_client(endpoint), &self.url)
                .await
                .unwrap_or_else(|error| panic!("open {}: {error}", self.url));
        }
        Queue::connect(&self.url)
            .await
            .unwrap_or_else(|error| panic!("connect to {}: {error}", self.url))
    }

    /// Writes a business row and enqueues `jobs` in one transaction (one job through
    /// `enqueue_tx`, more through `enqueue_bulk_tx`), then commits or rolls back.
    pub async fn enqueue_with_business_write<J: Job>(
        &self,
        queue: &Queue,
        jobs: &[J],
        commit: bool,
    ) -> Result<Vec<JobId>, QueueError> {
        let business_url = self.business_url();
        match self.engine {
            Engine::Postgres => {
                let mut conn = PgConnection::connect(&business_url)
                    .await
                    .expect("the business write");
                sqlx::query("CREATE TABLE IF NOT EXISTS orders (id BIGSERIAL PRIMARY KEY)")
                    .execute(&mut conn)
                    .await
                    .expect("the business write");
                let mut tx = conn.begin().await.expect("the business write");
                sqlx::query("INSERT INTO orders DEFAULT VALUES")
                    .execute(&mut *tx)
                    .await
                    .expect("the business write");
                let ids = match jobs {
                    [job] => vec![queue.enqueue_tx(&mut *tx, job).await?],
                    _ => queue.enqueue_bulk_tx(&mut *tx, jobs).await?,
                };
                if commit {
                    tx.commit().await.expect("the business write");
                } else {
                    tx.rollback().await.expect("the business write");
                }
                Ok(ids)
            }
            Engine::Sqlite | Engine::Redis | Engine::Sqs => {
                let mut conn = SqliteConnection::connect(&business_url)
                    .await
                    .expect("the business write");
                sqlx::query("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY)")
                    .execute(&mut conn)
                    .await
                    .expect("the business write");
                let mut tx = conn.begin().await.expect("the business write");
                sqlx::query("INSERT INTO orders DEFAULT VALUES")
                    .execute(&mut *tx)
                    .await
                    .expect("the business write");
                let ids = match jobs {
                    [job] => vec![queue.enqueue_tx(&mut *tx, job).await?],
                    _ => queue.enqueue_bulk_tx(&mut *tx, jobs).await?,
                };
                if commit {
                    tx.commit().await.expect("the business write");
                } else {
                    tx.rollback().await.expect("the business write");
                }
                Ok(ids)
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
            Engine::Sqlite | Engine::Redis | Engine::Sqs => {
                let mut conn = SqliteConnection::connect(&self.business_url())
                    .await
                    .unwrap();
                sqlx::query_scalar("SELECT count(*) FROM orders")
                    .fetch_one(&mut conn)
                    .await
                    .unwrap()
            }
        }
    }

    /// The members of one of a Redis queue's sets (`suffix` after the queue's key prefix),
    /// read straight from the server.
    pub async fn redis_set_members(&self, suffix: &str) -> Vec<String> {
        let (Some(server), Some(queue)) = (&self.admin_url, &self.database) else {
            panic!("not a Redis test queue");
        };
        let command = ::redis::cmd("SMEMBERS")
            .arg(format!("anb_queue:{{{queue}}}:{suffix}"))
            .clone();
        let mut members: Vec<String> = if server.contains("cluster=true") {
            let mut conn = cluster_connection(server).await.expect("the Redis Cluster");
            command.query_async(&mut conn).await.expect("SMEMBERS")
        } else {
            let client = ::redis::Client::open(server.as_str()).expect("a Redis URL");
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .expect("Redis");
            command.query_async(&mut conn).await.expect("SMEMBERS")
        };
        members.sort();
        members
    }

    /// Drops the PostgreSQL database or the Redis keys (the SQLite directory goes with `self`).
    pub async fn cleanup(self) {
        if self.engine == Engine::Redis {
            if let (Some(server), Some(queue)) = (&self.admin_url, &self.database) {
                if server.contains("cluster=true") {
                    delete_redis_cluster_keys(server, queue).await;
                } else {
                    delete_redis_keys(server, &format!("anb_queue:{{{queue}}}:*")).await;
                }
            }
            return;
        }
        if self.engine == Engine::Sqs {
            if let (Some(endpoint), Some(dead_letters_url)) = (&self.admin_url, &self.database) {
                let client = sqs_client(endpoint);
                for queue_url in [&self.url, dead_letters_url] {
                    let _ = client.delete_queue().queue_url(queue_url).send().await;
                }
            }
            return;
        }
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

pub fn aws_endpoint() -> String {
    std::env::var("ANB_TEST_AWS_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4566".to_owned())
}

/// A client for the test SQS server: static credentials, region us-east-1.
pub fn sqs_client(endpoint: &str) -> aws_sdk_sqs::Client {
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test",
            "test",
            None,
            None,
            "anb-queue-tests",
        ))
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

pub fn redis_cluster_url() -> String {
    std::env::var("ANB_TEST_REDIS_CLUSTER_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:7101?cluster=true".to_owned())
}

/// A cluster connection through the seed node of a `…?cluster=true` URL.
pub async fn cluster_connection(
    server: &str,
) -> ::redis::RedisResult<::redis::cluster_async::ClusterConnection> {
    let seed = server.split('?').next().unwrap_or(server);
    ::redis::cluster::ClusterClient::new(vec![seed])?
        .get_async_connection()
        .await
}

/// Deletes a queue's keys on a cluster (KEYS goes to every master; a test queue is small).
async fn delete_redis_cluster_keys(server: &str, queue: &str) {
    let Ok(mut conn) = cluster_connection(server).await else {
        return;
    };
    let Ok(keys): Result<Vec<String>, _> = ::redis::cmd("KEYS")
        .arg(format!("anb_queue:{{{queue}}}:*"))
        .query_async(&mut conn)
        .await
    else {
        return;
    };
    // One hash tag: one slot, so one UNLINK per batch.
    for batch in keys.chunks(1000) {
        let _: Result<(), _> = ::redis::cmd("UNLINK")
            .arg(batch)
            .query_async(&mut conn)
            .await;
    }
}

pub fn redis_url() -> String {
    std::env::var("ANB_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

async fn delete_redis_keys(server: &str, pattern: &str) {
    let Ok(client) = ::redis::Client::open(server) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let mut cursor: u64 = 0;
    loop {
        let Ok((next, keys)): Result<(u64, Vec<String>), _> = ::redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
        else {
            return;
        };
        if !keys.is_empty() {
            let _: Result<(), _> = ::redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut conn)
                .await;
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

#[allow(unused_imports)]
pub use anb_queue_testkit::support::{RunningWorker, wait_until};

/// A TCP gate in front of a server, which a test can close (cutting every connection through
/// it and refusing new ones) and open again: an outage of a real server, seen only by the
/// clients connected through the gate.
pub struct TcpGate {
    pub port: u16,
    open: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: JoinHandle<()>,
}

impl TcpGate {
    /// Starts a gate on a free local port, forwarding to `target` (`host:port`).
    pub async fn start(target: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let target = target.to_owned();
        let accept = tokio::spawn({
            let (open, connections) = (open.clone(), connections.clone());
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !open.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let target = target.clone();
                    let pipe = tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    connections.lock().unwrap().push(pipe.abort_handle());
                }
            }
        });
        Self {
            port,
            open,
            connections,
            accept,
        }
    }

    /// Cuts every connection through the gate and refuses new ones until [`TcpGate::open`].
    pub fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpGate {
    fn drop(&mut self) {
        self.accept.abort();
        self.close();
    }
}
