//! `anb-api`: the REST API, configured from `ANB_*` environment variables.

use anyhow::Context;
use clap::{Parser, Subcommand};

/// The ANB Rising Stars REST API.
///
/// Configuration comes from environment variables (and a `.env` file):
/// ANB_DATABASE_URL, ANB_QUEUE_URL, ANB_STORAGE_URL, ANB_S3_PATH_STYLE,
/// ANB_JWT_SECRET, ANB_HTTP_ADDR and the AWS SDK's standard AWS_* settings;
/// rate limits, trusted proxies and upload limits from ANB_RATE_LIMIT_*,
/// ANB_TRUSTED_PROXIES and ANB_UPLOAD_* (see the crate documentation).
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
    /// Apply the database migrations and exit.
    Migrate,
    /// Print the OpenAPI document to standard output.
    Openapi,
}

fn main() -> anyhow::Result<()> {
    // Stopping must not wait on blocking work still running (see `runtime`).
    anb_api::runtime::block_on(run(Cli::parse()), anb_api::runtime::TEARDOWN)?
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::Openapi) = cli.command {
        print!("{}", anb_api::openapi_json());
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // A `.env` file is for local use; real environments set variables.
    let _ = dotenvy::dotenv();
    let settings = anb_core::config::Settings::from_env()?;
    let api_settings = anb_api::ApiSettings::from_env()?;
    let http_addr = settings.http_addr;
    let state = anb_api::AppState::connect(settings, api_settings)
        .await
        .context("connecting to the database, storage and queue")?;
    if let Some(Command::Migrate) = cli.command {
        state
            .migrate()
            .await
            .context("applying the database migrations")?;
        tracing::info!("migrations applied");
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("binding ANB_HTTP_ADDR={http_addr}"))?;
    anb_api::serve(listener, state, shutdown_signal()).await?;
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
