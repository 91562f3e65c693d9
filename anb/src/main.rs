//! `anb`: the whole platform in one process on its embedded default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

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
    /// Run the API and (unless `--no-worker`) the transcoding worker in this process.
    Serve(ServeArgs),
    /// Inspect and repair the platform's job queue (in its data directory): job counts,
    /// dead jobs, one job, requeue, prune. Exits with status 1 on any failure.
    Queue(PlatformQueueArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Directory for the database, the media files and the generated secret.
    #[arg(long, default_value = "./anb-data")]
    data_dir: PathBuf,
    /// Leave the transcoding worker out: uploads are accepted and queued,
    /// nothing processes them (capacity tests of the web tier alone).
    #[arg(long)]
    no_worker: bool,
    /// The built-in worker's encoder settings, as for `anb-worker run`.
    #[command(flatten)]
    encoder: anb_worker::EncoderArgs,
}

#[derive(Debug, Args)]
struct PlatformQueueArgs {
    /// The platform's data directory, as given to `anb serve`.
    #[arg(long, default_value = "./anb-data", global = true)]
    data_dir: PathBuf,
    #[command(flatten)]
    queue: anb_worker::operator::QueueArgs,
}

fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Serve(args) => {
            // Stopping must not wait on blocking work still running (a stuck check
            // or transcode step): the runtime's teardown is bounded.
            anb_api::runtime::block_on(serve(args), anb_api::runtime::TEARDOWN)??;
            Ok(ExitCode::SUCCESS)
        }
        Command::Queue(args) => Ok(queue(&args)),
    }
}

/// An operator command on the queue in the data directory, which it never creates.
fn queue(args: &PlatformQueueArgs) -> ExitCode {
    let database = anb_core::config::Settings::embedded_database_path(&args.data_dir);
    if !database.exists() {
        eprintln!(
            "error: no platform data in {}: `anb serve --data-dir {}` creates it",
            args.data_dir.display(),
            args.data_dir.display()
        );
        return ExitCode::FAILURE;
    }
    anb_worker::operator::run(&format!("sqlite://{}", database.display()), &args.queue)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let ServeArgs {
        addr,
        data_dir,
        no_worker,
        encoder,
    } = args;
    let settings = anb_core::config::Settings::embedded(&data_dir, addr)
        .with_context(|| format!("preparing the data directory {}", data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(settings.http_addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    tracing::info!(data_dir = %data_dir.display(), "embedded platform starting on http://{addr}");
    let api_settings = anb_api::ApiSettings::from_env()?;
    // The worker applies the limits the API checks uploads against (ANB_UPLOAD_*).
    let worker_config = anb_worker::job::WorkerConfig {
        transcode: encoder.apply(anb_worker::TranscodeOptions {
            limits: api_settings.upload.clone(),
            bounds: anb_worker::InputBounds::from_env()?,
            ..Default::default()
        }),
        // The API then cancels a deleted video's transcode through the queue.
        deletion_poll: (!settings.queue_in_database()).then_some(anb_worker::job::DELETION_POLL),
        ..Default::default()
    };
    let state = anb_api::AppState::connect(settings, api_settings)
        .await
        .context("opening the embedded database, queue and storage")?;
    state
        .migrate()
        .await
        .context("applying the database migrations")?;
    // The worker runs beside the API on the same database, queue and storage, so an
    // upload is processed with nothing else started.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let worker = (!no_worker).then(|| {
        tokio::spawn(anb_worker::job::run(
            state.db.clone(),
            state.storage.clone(),
            state.queue.clone(),
            worker_config,
            until_stopped(stopped.clone()),
        ))
    });
    if no_worker {
        tracing::info!("the worker is left out: uploads stay queued");
    }
    let api = anb_api::serve(listener, state, until_stopped(stopped));
    tokio::pin!(api);
    tokio::select! {
        served = &mut api => served?,
        () = shutdown_signal() => {
            stop.send_replace(true);
            api.await?;
        }
    }
    // The API stopped (on a signal or an error): drain the worker too.
    stop.send_replace(true);
    if let Some(worker) = worker {
        worker.await.context("the worker task panicked")??;
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks the definitions (unique names and groups, flattened subcommands) only
    /// when a command line is parsed; this parses none.
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
