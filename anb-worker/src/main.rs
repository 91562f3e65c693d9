//! `anb-worker`: the processing worker, configured from `ANB_*` environment variables.

use clap::Parser;

/// The ANB Rising Stars processing worker.
///
/// Configuration comes from the same environment variables as anb-api:
/// ANB_DATABASE_URL, ANB_QUEUE_URL, ANB_STORAGE_URL, ANB_S3_PATH_STYLE,
/// ANB_JWT_SECRET and the AWS SDK's standard AWS_* settings.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    let settings = anb_core::config::Settings::from_env()?;
    anyhow::bail!(
        "the transcoding pipeline is not part of this build yet (queue {})",
        settings.queue_url
    )
}
