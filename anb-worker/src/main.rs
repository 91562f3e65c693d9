//! `anb-worker`: the processing worker.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use anb_worker::EncoderArgs;
use anyhow::Context;
use clap::{Args, Parser, Subcommand};

/// The ANB Rising Stars processing worker.
///
/// Without a subcommand it consumes transcode jobs (`run`), configured from the
/// same environment variables as anb-api: ANB_DATABASE_URL, ANB_QUEUE_URL,
/// ANB_STORAGE_URL, ANB_S3_PATH_STYLE, ANB_JWT_SECRET and the AWS SDK's
/// standard AWS_* settings. Uploads are checked against the API's limits,
/// ANB_UPLOAD_MAX_BYTES, ANB_UPLOAD_MIN_SECONDS, ANB_UPLOAD_MAX_SECONDS and
/// ANB_UPLOAD_MIN_SHORT_SIDE (for `transcode` too), and bounded by ANB_WORKER_MAX_WIDTH,
/// ANB_WORKER_MAX_HEIGHT, ANB_WORKER_MAX_PIXELS, ANB_WORKER_MAX_FPS, ANB_WORKER_MAX_FRAMES,
/// ANB_WORKER_WALL_TIME_PER_SECOND and ANB_WORKER_WALL_TIME_MIN.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Transcode one local file into the showcase format (the same pipeline the
    /// worker runs on uploads), e.g. for operators and benchmarks.
    Transcode(TranscodeArgs),
    /// Write the ANB artwork the pipeline draws (watermark.png, bumper.png) into a directory.
    ExportArt {
        /// Directory to write into (created if missing).
        directory: PathBuf,
    },
    /// Consume transcode jobs from the queue named by ANB_QUEUE_URL until SIGTERM (the default).
    Run(RunArgs),
    /// Inspect and repair the queue named by ANB_QUEUE_URL (else ANB_DATABASE_URL): job
    /// counts, dead jobs, one job, requeue, prune. Exits with status 1 on any failure.
    Queue(anb_worker::operator::QueueArgs),
}

#[derive(Debug, Parser)]
struct DefaultRun {
    #[command(flatten)]
    args: RunArgs,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Jobs transcoded at once (default: one per two cores).
    #[arg(long, env = "ANB_WORKER_CONCURRENCY")]
    concurrency: Option<usize>,
    /// Seconds running jobs may take to finish after SIGTERM before they are released.
    #[arg(long, env = "ANB_WORKER_SHUTDOWN_GRACE", default_value_t = 30)]
    shutdown_grace: u64,
    /// Seconds between passes removing what deleted videos left in storage, one pass per
    /// interval across all workers (each worker on SQS); 0: this worker schedules none.
    #[arg(long, env = "ANB_WORKER_PURGE_INTERVAL", default_value_t = 300)]
    purge_interval: u64,
    /// Seconds between passes marking failed the videos whose job was dead-lettered (0: never).
    #[arg(long, env = "ANB_WORKER_RECONCILE_INTERVAL", default_value_t = 60)]
    reconcile_interval: u64,
    /// Address to serve Prometheus `/metrics` and `/health` on, e.g. 0.0.0.0:9100 (off when unset).
    #[arg(long, env = "ANB_WORKER_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Seconds a claimed job stays leased without a heartbeat; a killed worker's job runs again
    /// elsewhere about this long after.
    #[arg(long, env = "ANB_WORKER_LEASE", default_value_t = 30)]
    lease: u64,
    #[command(flatten)]
    encoder: EncoderArgs,
}

#[derive(Debug, Args)]
struct TranscodeArgs {
    /// The upload to transcode.
    input: PathBuf,
    /// Where to write the MP4.
    output: PathBuf,
    /// Where to write the JPEG thumbnail.
    #[arg(long)]
    thumbnail: Option<PathBuf>,
    #[command(flatten)]
    encoder: EncoderArgs,
    /// Print no progress.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Some(Command::Transcode(args)) => transcode(&args),
        Some(Command::ExportArt { directory }) => export_art(&directory),
        Some(Command::Run(args)) => run(&args),
        Some(Command::Queue(args)) => Ok(queue(&args)),
        // No subcommand: run with the defaults and the environment's settings.
        None => run(&DefaultRun::parse_from(["anb-worker"]).args),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Exit status for an upload the rules refuse, distinct from other failures.
const EXIT_REJECTED: u8 = 2;

fn transcode(args: &TranscodeArgs) -> anyhow::Result<ExitCode> {
    // FFmpeg's informational chatter (x264 statistics) is not for operators.
    ffmpeg_next::util::log::set_level(ffmpeg_next::util::log::Level::Error);
    let options = args.encoder.options()?;
    let cancel = AtomicBool::new(false);
    let quiet = args.quiet;
    // Redraw one line on a terminal; elsewhere (logs) a line every 10 %.
    let interactive = std::io::stderr().is_terminal();
    let result = anb_worker::transcode(
        &args.input,
        &args.output,
        args.thumbnail.as_deref(),
        &options,
        |percent| {
            if quiet {
            } else if interactive {
                eprint!("\rprogress: {percent:>3}%");
                if percent == 100 {
                    eprintln!();
                }
            } else if percent % 10 == 0 {
                eprintln!("progress: {percent}%");
            }
        },
        &cancel,
    );
    match result {
        Ok(report) => {
            println!(
                "{}: {}×{} {:.1} s {} → {} ({} frames, {:.1} s, {} bytes) in {:.2} s",
                args.input.display(),
                report.source.width,
                report.source.height,
                report.source.duration.as_secs_f64(),
                report.source.codec,
                args.output.display(),
                report.frames,
                report.duration.as_secs_f64(),
                report.output_bytes,
                report.elapsed.as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(error) if error.is_permanent() => {
            eprintln!("\nrejected: {error}");
            Ok(ExitCode::from(EXIT_REJECTED))
        }
        Err(error) => Err(error).context(format!("transcoding {}", args.input.display())),
    }
}

/// Consumes transcode jobs until SIGTERM or Ctrl-C, then drains.
fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    ffmpeg_next::util::log::set_level(ffmpeg_next::util::log::Level::Error);
    let settings = anb_core::config::Settings::from_env()?;
    let mut config = anb_worker::job::WorkerConfig {
        shutdown_grace: std::time::Duration::from_secs(args.shutdown_grace),
        purge_interval: (args.purge_interval > 0)
            .then(|| std::time::Duration::from_secs(args.purge_interval)),
        reconcile_interval: (args.reconcile_interval > 0)
            .then(|| std::time::Duration::from_secs(args.reconcile_interval)),
        lease: std::time::Duration::from_secs(args.lease.max(1)),
        transcode: args.encoder.options()?,
        ..Default::default()
    };
    if let Some(concurrency) = args.concurrency {
        config.concurrency = concurrency.max(1);
    }
    // The API then cancels a deleted video's transcode through the queue.
    if settings.queue_in_database() {
        config.deletion_poll = None;
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        // Serving from the start (before connecting), so a stuck start-up shows as a live
        // process without metrics rather than a dead one.
        let (stop_metrics, metrics_stopped) = tokio::sync::watch::channel(false);
        let metrics = match args.metrics_addr {
            Some(addr) => {
                let handle = anb_worker::observability::install_recorder()
                    .map_err(|error| anyhow::anyhow!("installing the metrics recorder: {error}"))?;
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding ANB_WORKER_METRICS_ADDR {addr}"))?;
                tracing::info!(%addr, "serving /metrics and /health");
                let mut stopped = metrics_stopped;
                Some(tokio::spawn(anb_worker::observability::serve(
                    listener,
                    handle,
                    async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    },
                )))
            }
            None => None,
        };
        let (db, storage, queue) = anb_worker::job::connect(&settings).await?;
        let worked =
            anb_worker::job::run(db, storage, queue, config, anb_queue::shutdown_signal()).await;
        stop_metrics.send_replace(true);
        if let Some(metrics) = metrics {
            let _ = metrics.await;
        }
        worked?;
        Ok(ExitCode::SUCCESS)
    })
}

/// An operator command on the configured queue; it needs no setting but the queue's.
fn queue(args: &anb_worker::operator::QueueArgs) -> ExitCode {
    match anb_core::config::Settings::queue_url_from_env() {
        Ok(url) => anb_worker::operator::run(&url, args),
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn export_art(directory: &Path) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(directory)
        .with_context(|| format!("creating {}", directory.display()))?;
    let pieces = [
        (
            "watermark.png",
            anb_worker::art::watermark(anb_worker::art::WATERMARK_HEIGHT),
        ),
        (
            "bumper.png",
            anb_worker::art::bumper_card(anb_worker::OUTPUT_WIDTH, anb_worker::OUTPUT_HEIGHT),
        ),
    ];
    for (name, image) in pieces {
        let path = directory.join(name);
        let bytes = anb_worker::png(&image).context("encoding PNG")?;
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks the definitions (unique names and groups, flattened subcommands) only
    /// when a command line is parsed; this parses none.
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
        super::DefaultRun::command().debug_assert();
    }
}
