//! What the worker tells Prometheus, and the small HTTP server that answers it.
//!
//! The job code records through the `metrics` facade, so inside `anb serve` the figures land
//! in the API's `/metrics`; the standalone worker installs its own recorder and serves
//! `/metrics` and `/health` on `ANB_WORKER_METRICS_ADDR` ([`serve`]).
//!
//! | metric | kind | meaning |
//! |---|---|---|
//! | `anb_worker_jobs_total{outcome}` | counter | jobs handled, by outcome (`processed`, `rejected`, `skipped`, `deleted`, `repaired`, `retry`, `interrupted`) |
//! | `anb_worker_encodes_total` | counter | transcodes started (a repaired or retried video counts again) |
//! | `anb_worker_encodes_running` | gauge | transcodes running now |
//! | `anb_worker_encode_seconds` | histogram | wall time of each finished transcode |
//! | `anb_worker_encode_frames_per_second` | gauge | frames per second of the last finished transcode |
//! | `anb_worker_purge_passes_total{result}` | counter | passes finishing deletions ([`crate::purge`]), by result (`ok`, `failed`) |
//! | `anb_worker_videos_purged_total` | counter | deleted videos whose objects and row the purge removed |
//! | `anb_queue_jobs{state}`, `anb_queue_oldest_ready_age_seconds` | gauges | queue depth (ready, in flight, delayed, dead), refreshed by the queue's worker |

use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use poem::listener::TcpAcceptor;
use poem::web::Json;
use poem::{EndpointExt, Route, Server, get, handler};

/// Encode-time histogram buckets, in seconds: a 30 s clip takes tens of seconds on 2 vCPUs.
const ENCODE_BUCKETS: [f64; 10] = [5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 300.0, 600.0];

/// Installs the process-wide Prometheus recorder and returns its handle.
pub fn install_recorder() -> Result<PrometheusHandle, String> {
    let recorder = PrometheusBuilder::new()
        .set_buckets(&ENCODE_BUCKETS)
        .map_err(|error| error.to_string())?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|error| error.to_string())?;
    // Keep the histogram's summary of old samples bounded.
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(5));
                upkeep.run_upkeep();
            }
        })
        .map_err(|error| error.to_string())?;
    Ok(handle)
}

/// Serves `GET /metrics` (Prometheus text format) and `GET /health` on `listener` until
/// `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let app = Route::new()
        .at("/metrics", get(render_metrics))
        .at("/health", get(health))
        .data(handle);
    let acceptor = TcpAcceptor::from_tokio(listener)?;
    Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(app, shutdown, Some(Duration::from_secs(1)))
        .await
}

#[handler]
fn render_metrics(handle: poem::web::Data<&PrometheusHandle>) -> poem::Response {
    poem::Response::builder()
        .content_type("text/plain; version=0.0.4")
        .body(handle.render())
}

#[handler]
fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Records a job's outcome.
pub(crate) fn job_done(outcome: &'static str) {
    metrics::counter!("anb_worker_jobs_total", "outcome" => outcome).increment(1);
}

/// Records a purge pass: its report, or `None` when it failed.
pub(crate) fn purge_pass(report: Option<&anb_core::videos::PurgeReport>) {
    let result = if report.is_some() { "ok" } else { "failed" };
    metrics::counter!("anb_worker_purge_passes_total", "result" => result).increment(1);
    if let Some(report) = report {
        metrics::counter!("anb_worker_videos_purged_total").increment(report.purged as u64);
    }
}

/// Counts a transcode as running until dropped.
pub(crate) struct EncodeRunning;

impl EncodeRunning {
    pub(crate) fn start() -> Self {
        metrics::counter!("anb_worker_encodes_total").increment(1);
        metrics::gauge!("anb_worker_encodes_running").increment(1.0);
        Self
    }
}

impl Drop for EncodeRunning {
    fn drop(&mut self) {
        metrics::gauge!("anb_worker_encodes_running").decrement(1.0);
    }
}

/// Records a finished transcode.
pub(crate) fn encode_finished(report: &crate::TranscodeReport) {
    let seconds = report.elapsed.as_secs_f64();
    metrics::histogram!("anb_worker_encode_seconds").record(seconds);
    if seconds > 0.0 {
        metrics::gauge!("anb_worker_encode_frames_per_second").set(report.frames as f64 / seconds);
    }
}
