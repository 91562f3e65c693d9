#![doc = include_str!("../README.md")]

use std::future::Future;
use std::time::Duration;

use poem::listener::{Acceptor, TcpAcceptor};
use poem::{EndpointExt, Route, Server, get};
use poem_openapi::OpenApiService;

pub mod body_limit;
pub mod error;
pub mod headers;
pub mod media_check;
pub mod observability;
pub mod rate_limit;
mod relay;
pub mod routes;
pub mod runtime;
pub mod security;
pub mod settings;
pub mod state;
mod sweep;
pub mod transport;
pub mod upload;
pub mod web;

pub use settings::ApiSettings;
pub use state::{AppState, JobDelivery, StartupError};

/// Title of the OpenAPI document.
pub const API_TITLE: &str = "ANB Rising Stars Showcase API";

/// How long in-flight requests may run after shutdown is requested.
const GRACE_PERIOD: Duration = Duration::from_secs(10);

/// The OpenAPI service: every documented operation of the API.
pub fn api_service() -> OpenApiService<routes::Apis, ()> {
    OpenApiService::new(routes::apis(), API_TITLE, env!("CARGO_PKG_VERSION")).description(
        "Players sign up and upload skill videos; the public votes; rankings per city. \
         Errors are RFC 9457 problem documents (`application/problem+json`) with a stable `code`.",
    )
}

/// The OpenAPI document as pretty JSON, as served at `/openapi.json` and
/// checked in under `openapi/`: poem-openapi's, with what it cannot say
/// itself added — a form takes no field but those it declares
/// (`additionalProperties: false`, as the upload reader refuses any other).
pub fn openapi_json() -> String {
    use std::sync::OnceLock;
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT
        .get_or_init(|| {
            let mut spec: serde_json::Value = serde_json::from_str(&api_service().spec())
                .expect("the generated document is JSON");
            close_forms(&mut spec);
            let mut json = serde_json::to_string_pretty(&spec).expect("a JSON value serializes");
            json.push('\n');
            json
        })
        .clone()
}

/// Sets `additionalProperties: false` on every multipart form schema.
fn close_forms(spec: &mut serde_json::Value) {
    let operations = spec["paths"]
        .as_object_mut()
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(serde_json::Value::as_object_mut)
        .flat_map(|operations| operations.values_mut());
    for operation in operations {
        if let Some(schema) = operation
            .pointer_mut("/requestBody/content/multipart~1form-data/schema")
            .and_then(serde_json::Value::as_object_mut)
        {
            schema.insert("additionalProperties".into(), false.into());
        }
    }
}

/// Serves [`openapi_json`].
#[poem::handler]
fn openapi_document() -> poem::Response {
    poem::Response::builder()
        .content_type("application/json; charset=utf-8")
        .body(openapi_json())
}

/// The path templates of the document (`/api/videos/{video_id}`…).
fn documented_paths() -> Vec<String> {
    let spec: serde_json::Value =
        serde_json::from_str(&api_service().spec()).expect("the generated document is JSON");
    spec["paths"]
        .as_object()
        .map(|paths| paths.keys().cloned().collect())
        .unwrap_or_default()
}

/// The whole HTTP application over `state`: the API, local media, the
/// document and interactive docs, and the web app at `/`, with request ids,
/// metrics, client-IP resolution and problem-details errors on every route.
pub fn app(state: AppState) -> impl poem::Endpoint {
    let api = api_service();
    let docs = api.swagger_ui();
    let trusted_proxies = state.api.trusted_proxies.clone();
    let cors = headers::cors(&state.api.cors_origins);
    let body_limits = body_limit::BodyLimits {
        default: body_limit::JSON_BODY_LIMIT,
        upload_path: "/api/videos/upload",
        upload: state
            .api
            .upload
            .max_bytes
            .saturating_add(upload::FORM_OVERHEAD),
        upload_file: state.api.upload.max_bytes,
    };
    let observability = observability::Observability::new(
        documented_paths()
            .into_iter()
            .chain([
                "/openapi.json".to_owned(),
                "/media/{key}".to_owned(),
                "/api/videos/uploads/{upload_id}/content".to_owned(),
            ])
            .chain(web::PAGES.iter().map(|page| (*page).to_owned())),
    );
    let routes = web::routes(Route::new().nest("/", api))
        .at("/media/*key", get(routes::media::media))
        .at(
            "/api/videos/uploads/:upload_id/content",
            poem::put(routes::direct_uploads::put_content),
        )
        .nest("/docs", docs)
        .at("/openapi.json", get(openapi_document));
    web::with_root_page(routes)
        .data(state)
        .with(body_limits)
        .with(rate_limit::ClientIpMiddleware {
            trusted_proxies: trusted_proxies.clone(),
        })
        .with(observability)
        .with_if(cors.is_some(), cors.unwrap_or_default())
        .with(headers::SecurityHeaders { trusted_proxies })
}

/// Serves the application on an already bound listener until `shutdown`
/// resolves, then lets in-flight requests finish (up to 10 s). When uploads
/// write their jobs into the outbox, the outbox relay runs beside the server
/// and stops after it, so the jobs of the last requests are published too.
/// Connections get the default [`TransportLimits`](transport::TransportLimits).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    serve_with(
        listener,
        state,
        transport::TransportLimits::default(),
        shutdown,
    )
    .await
}

/// [`serve`] with the given connection timeouts and lingering close.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: AppState,
    limits: transport::TransportLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let connections = transport::Connections::default();
    let acceptor = transport::GuardedAcceptor::new(
        TcpAcceptor::from_tokio(listener)?,
        limits,
        connections.clone(),
    );
    tracing::info!(addr = ?acceptor.local_addr(), "API listening");
    let relay = relay::spawn(&state);
    let sweep = sweep::spawn(&state);
    let app = app(state).with(transport::TrackRequests { connections });
    let served = Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(app, shutdown, Some(GRACE_PERIOD))
        .await;
    if let Some(relay) = relay {
        relay.stop().await;
    }
    if let Some(sweep) = sweep {
        sweep.stop().await;
    }
    served
}
