//! `anb`: the whole platform in one process on its embedded default.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// The ANB Rising Stars platform on its embedded default: SQLite, its SQL
/// queue and local storage, all under one data directory.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the API, the worker and the web pages in this process.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
        /// Directory for the database, the media files and the generated secret.
        #[arg(long, default_value = "./anb-data")]
        data_dir: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Serve { addr, data_dir } => {
            let settings = anb_core::config::Settings::embedded(&data_dir, addr)
                .with_context(|| format!("preparing the data directory {}", data_dir.display()))?;
            let listener = tokio::net::TcpListener::bind(settings.http_addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            tracing::info!(data_dir = %data_dir.display(), "embedded platform starting on http://{addr}");
            let state = anb_api::AppState::connect(settings, anb_api::ApiSettings::from_env()?)
                .await
                .context("opening the embedded database, queue and storage")?;
            state
                .migrate()
                .await
                .context("applying the database migrations")?;
            anb_api::serve(listener, state, shutdown_signal()).await?;
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown signal received");
}
