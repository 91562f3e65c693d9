//! `anb-api`: the REST API, configured from `ANB_*` environment variables.

use anyhow::Context;
use clap::{Parser, Subcommand};

/// The ANB Rising Stars REST API.
///
/// Configuration comes from environment variables (and a `.env` file):
/// ANB_DATABASE_URL, ANB_QUEUE_URL, ANB_STORAGE_URL, ANB_S3_PATH_STYLE,
/// ANB_JWT_SECRET, ANB_HTTP_ADDR and the AWS SDK's standard AWS_* settings.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Print the OpenAPI document to standard output.
    Openapi,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Openapi) = cli.command {
        print!("{}", anb_api::openapi_json());
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let settings = anb_core::config::Settings::from_env()?;
    let listener = tokio::net::TcpListener::bind(settings.http_addr)
        .await
        .with_context(|| format!("binding ANB_HTTP_ADDR={}", settings.http_addr))?;
    anb_api::serve(listener, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown signal received");
}
