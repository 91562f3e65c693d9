#![doc = include_str!("../README.md")]

use std::future::Future;

use poem::listener::{Acceptor, TcpAcceptor};
use poem::middleware::Tracing;
use poem::{EndpointExt, Route, Server};
use poem_openapi::OpenApiService;

pub mod routes;

/// Title of the OpenAPI document.
pub const API_TITLE: &str = "ANB Rising Stars Showcase API";

/// The OpenAPI service: every documented operation of the API.
pub fn api_service() -> OpenApiService<routes::health::HealthApi, ()> {
    OpenApiService::new(
        routes::health::HealthApi,
        API_TITLE,
        env!("CARGO_PKG_VERSION"),
    )
}

/// The OpenAPI document as pretty JSON, as checked in under `openapi/`.
pub fn openapi_json() -> String {
    let mut json = api_service().spec();
    json.push('\n');
    json
}

/// The whole HTTP application: the API, its document and interactive docs.
pub fn app() -> impl poem::Endpoint {
    let api = api_service();
    let docs = api.swagger_ui();
    let spec = api.spec_endpoint();
    Route::new()
        .nest("/", api)
        .nest("/docs", docs)
        .at("/openapi.json", spec)
        .with(Tracing)
}

/// Serves the application on an already bound listener until `shutdown`
/// resolves, then lets in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let acceptor = TcpAcceptor::from_tokio(listener)?;
    tracing::info!(addr = ?acceptor.local_addr(), "API listening");
    Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(app(), shutdown, Some(std::time::Duration::from_secs(10)))
        .await
}
