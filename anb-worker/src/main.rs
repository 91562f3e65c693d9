//! `anb-worker`: the processing worker.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use anb_worker::{TranscodeOptions, X264_PRESETS};
use anyhow::Context;
use clap::{Args, Parser, Subcommand};

/// The ANB Rising Stars processing worker.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    /// Consume transcode jobs from the queue named by ANB_QUEUE_URL (not wired yet).
    Run,
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
    /// x264 preset.
    #[arg(long, env = "ANB_X264_PRESET", default_value = "veryfast", value_parser = clap::builder::PossibleValuesParser::new(X264_PRESETS))]
    preset: String,
    /// x264 constant rate factor (0–51).
    #[arg(long, env = "ANB_X264_CRF", default_value_t = 23)]
    crf: u8,
    /// x264 threads (0: chosen by x264 from the CPU count).
    #[arg(long, env = "ANB_ENCODER_THREADS", default_value_t = 0)]
    encoder_threads: usize,
    /// Decoder threads (the decoder already runs beside the encoder).
    #[arg(long, env = "ANB_DECODER_THREADS", default_value_t = 1)]
    decoder_threads: usize,
    /// Decoded frames queued between the decoder and the encoder (bounds memory).
    #[arg(long, env = "ANB_DECODED_FRAME_QUEUE", default_value_t = 4)]
    decoded_frame_queue: usize,
    /// Print no progress.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Transcode(args) => transcode(&args),
        Command::ExportArt { directory } => export_art(&directory),
        Command::Run => Err(anyhow::anyhow!(
            "consuming jobs from the queue is not wired into this build yet; use `anb-worker transcode`"
        )),
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
    let options = TranscodeOptions {
        x264_preset: args.preset.clone(),
        crf: args.crf,
        encoder_threads: args.encoder_threads,
        decoder_threads: args.decoder_threads,
        decoded_frame_queue: args.decoded_frame_queue,
        ..TranscodeOptions::default()
    };
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
