//! Operations: liveness, readiness and metrics.

use std::time::Duration;

use poem::web::Data;
use poem_openapi::payload::{Json, PlainText};
use poem_openapi::{ApiResponse, Object, OpenApi};

use crate::routes::ApiTags;
use crate::state::AppState;

/// Operations for load balancers, orchestrators and monitoring.
#[derive(Debug)]
pub struct HealthApi;

/// The process is up.
#[derive(Debug, Object)]
pub struct Health {
    /// Always `ok` when the process answers.
    pub status: String,
    /// Version of the running build.
    pub version: String,
}

/// Whether each dependency answered.
#[derive(Debug, Object)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    pub status: String,
    /// `ok` or `unavailable`.
    pub database: String,
    pub queue: String,
    pub storage: String,
}

#[derive(Debug, ApiResponse)]
pub enum ReadyResponse {
    /// Database, queue and storage all answered.
    #[oai(status = 200)]
    Ready(Json<Readiness>),
    /// At least one dependency did not answer in time.
    #[oai(status = 503)]
    Unavailable(Json<Readiness>),
}

/// How long a dependency may take to answer a readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

async fn probe<E: std::fmt::Display>(
    name: &str,
    check: impl Future<Output = Result<(), E>>,
) -> bool {
    match tokio::time::timeout(PROBE_TIMEOUT, check).await {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            tracing::warn!(dependency = name, %error, "readiness probe failed");
            false
        }
        Err(_) => {
            tracing::warn!(dependency = name, "readiness probe timed out");
            false
        }
    }
}

#[OpenApi(tag = "ApiTags::Operations")]
impl HealthApi {
    /// Liveness: answers 200 while the process is running.
    #[oai(path = "/health", method = "get", operation_id = "health")]
    async fn health(&self) -> Json<Health> {
        Json(Health {
            status: "ok".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        })
    }

    /// Readiness: 200 when the database, the queue and the storage answer.
    #[oai(path = "/ready", method = "get", operation_id = "ready")]
    async fn ready(&self, state: Data<&AppState>) -> ReadyResponse {
        let (database, queue, storage) = tokio::join!(
            probe("database", state.db.ping()),
            probe("queue", async { state.queue.stats().await.map(|_| ()) }),
            probe("storage", state.storage.check()),
        );
        let word = |ok: bool| if ok { "ok" } else { "unavailable" }.to_owned();
        let all = database && queue && storage;
        let body = Readiness {
            status: if all { "ready" } else { "unavailable" }.to_owned(),
            database: word(database),
            queue: word(queue),
            storage: word(storage),
        };
        if all {
            ReadyResponse::Ready(Json(body))
        } else {
            ReadyResponse::Unavailable(Json(body))
        }
    }

    /// Prometheus metrics (text exposition format): HTTP requests by route
    /// and status, latencies, and the queue's depth.
    #[oai(path = "/metrics", method = "get", operation_id = "metrics")]
    async fn metrics(&self, state: Data<&AppState>) -> PlainText<String> {
        // Refreshes the queue gauges; a slow queue must not stall scrapes.
        let _ = tokio::time::timeout(PROBE_TIMEOUT, state.queue.stats()).await;
        PlainText(state.metrics.render())
    }
}
