//! Liveness of the process.

use poem_openapi::{Object, OpenApi, payload::Json};

/// Operations for load balancers and orchestrators.
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

#[OpenApi]
impl HealthApi {
    /// Liveness: answers 200 while the process is running.
    #[oai(path = "/health", method = "get", operation_id = "health")]
    async fn health(&self) -> Json<Health> {
        Json(Health {
            status: "ok".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        })
    }
}
