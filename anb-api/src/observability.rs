//! Request ids, request logs and Prometheus metrics for every request, and
//! the last stop for errors: whatever fails below becomes a problem response.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use poem::http::HeaderValue;
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};
use tracing::Instrument;

use crate::error::problem_response_at;

/// Header carrying the request id, in and out.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The id of the current request, in the request's extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The process-wide Prometheus recorder, installed on first use. If another
/// part of the process installed a global recorder first, the API keeps its
/// own (unregistered) one so `/metrics` still answers.
pub fn prometheus_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0,
                ])
                .expect("static, non-empty buckets");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; API metrics go to it");
            }
            handle
        })
        .clone()
}

/// Logs, times and counts each request under a request id.
#[derive(Debug, Clone)]
pub struct Observability {
    known_routes: Arc<HashSet<String>>,
}

impl Observability {
    /// `routes` are the templates the app serves (`/api/videos/{video_id}`);
    /// metrics label requests with them, and anything else as `unmatched`.
    pub fn new(routes: impl IntoIterator<Item = String>) -> Self {
        let known_routes = routes
            .into_iter()
            .map(|route| template_label(&route))
            .collect();
        Self {
            known_routes: Arc::new(known_routes),
        }
    }
}

impl<E: Endpoint> Middleware<E> for Observability {
    type Output = ObservabilityEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        ObservabilityEndpoint {
            inner,
            known_routes: self.known_routes.clone(),
        }
    }
}

#[derive(Debug)]
pub struct ObservabilityEndpoint<E> {
    inner: E,
    known_routes: Arc<HashSet<String>>,
}

impl<E: Endpoint> Endpoint for ObservabilityEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let request_id = req
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|id| {
                !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())
            })
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        req.extensions_mut().insert(RequestId(request_id.clone()));
        let method = req.method().to_string();
        let path = req.uri().path().to_owned();
        let span = tracing::info_span!("http", %request_id, %method, %path);
        let started = Instant::now();

        let mut response = async {
            let response = match self.inner.call(req).await {
                Ok(output) => output.into_response(),
                Err(error) => problem_response_at(&path, error),
            };
            tracing::info!(
                status = response.status().as_u16(),
                elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                "request"
            );
            response
        }
        .instrument(span)
        .await;

        let status = response.status();
        let route = route_label(&path, &self.known_routes);
        let labels = [
            ("method", method),
            ("route", route),
            ("status", status.as_u16().to_string()),
        ];
        metrics::counter!("http_requests_total", &labels).increment(1);
        metrics::histogram!("http_request_duration_seconds", &labels)
            .record(started.elapsed().as_secs_f64());
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(REQUEST_ID_HEADER, value);
        }
        Ok(response)
    }
}

/// A template with its parameters named alike: `/api/videos/{video_id}`
/// becomes `/api/videos/{id}`.
fn template_label(template: &str) -> String {
    template
        .split('/')
        .map(|segment| {
            if segment.starts_with('{') || segment.starts_with(':') || segment.starts_with('*') {
                "{id}"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// A low-cardinality label for a path: ids become `{id}`, and paths the app
/// does not serve (scanners, typos) collapse into `unmatched`.
fn route_label(path: &str, known_routes: &HashSet<String>) -> String {
    let mut label = String::with_capacity(path.len());
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        label.push('/');
        let is_word = segment.len() <= 16
            && segment
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'-' || b == b'_' || b == b'.');
        label.push_str(if is_word { segment } else { "{id}" });
    }
    if label.is_empty() {
        label.push('/');
    }
    if known_routes.contains(&label) {
        label
    } else if path.starts_with("/media/") {
        "/media/{id}".to_owned()
    } else if path.starts_with("/docs") {
        "/docs".to_owned()
    } else {
        "unmatched".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_hide_ids_and_unknown_paths() {
        let known: HashSet<String> = [
            "/api/public/videos/{video_id}/vote",
            "/api/videos/{video_id}",
            "/health",
        ]
        .iter()
        .map(|t| template_label(t))
        .collect();
        assert_eq!(
            route_label(
                "/api/public/videos/0193a0f6-1111-7000-8000-000000000000/vote",
                &known
            ),
            "/api/public/videos/{id}/vote"
        );
        assert_eq!(route_label("/api/videos/42", &known), "/api/videos/{id}");
        assert_eq!(route_label("/wp-admin/install.php", &known), "unmatched");
        assert_eq!(route_label("/api/x9f8e7", &known), "unmatched");
        assert_eq!(route_label("/health", &known), "/health");
    }
}
