//! One worker on a queue with nothing to do, for measuring what idling costs.
//!
//! ```sh
//! cargo run -p anb-queue --example idle_worker -- postgres://postgres@127.0.0.1/idle 30
//! ```
//!
//! Runs for the given seconds (default 30), then prints how often it claimed.

use std::time::Duration;

use anb_queue::{Job, JobContext, Queue, Worker};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Nothing;

impl Job for Nothing {
    const NAME: &'static str = "idle_worker.nothing";
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .ok_or("usage: idle_worker <queue URL> [seconds]")?;
    let seconds: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(30);
    let queue = Queue::connect(&url).await?;
    Worker::new(queue.clone())
        .handle(|_job: Nothing, _ctx: JobContext| async { Ok(()) })
        .run_until(tokio::time::sleep(Duration::from_secs(seconds)))
        .await?;
    let polls = queue.poll_counts();
    println!(
        "{seconds} s idle: {} claims ({} empty), {} due checks",
        polls.claims, polls.empty_claims, polls.due_checks
    );
    Ok(())
}
