//! A producer and a worker on one queue.
//!
//! ```sh
//! cargo run -p anb-queue --example basic -- sqlite://basic-example.db
//! cargo run -p anb-queue --example basic -- postgres://postgres@127.0.0.1/postgres
//! ```
//!
//! Enqueues a few jobs (now, delayed, one doomed), processes them, prints the queue's
//! statistics, and stops on Ctrl-C or once everything is settled.

use std::time::Duration;

use anb_queue::{Job, JobContext, JobError, Queue, Worker};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct ResizeImage {
    path: String,
    width: u32,
}

impl Job for ResizeImage {
    const NAME: &'static str = "resize_image";
    const MAX_ATTEMPTS: u32 = 3;
}

async fn resize(job: ResizeImage, ctx: JobContext) -> Result<(), JobError> {
    if job.width == 0 {
        return Err(JobError::permanent(format!(
            "{}: width must be positive",
            job.path
        )));
    }
    for step in 1..=4u8 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        ctx.report_progress(step * 25).await?;
    }
    println!(
        "resized {} to {} px (attempt {})",
        job.path,
        job.width,
        ctx.attempt()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "sqlite://basic-example.db".to_owned());
    let queue = Queue::connect(&url).await?;

    queue
        .enqueue_bulk(&[
            ResizeImage {
                path: "a.png".into(),
                width: 640,
            },
            ResizeImage {
                path: "b.png".into(),
                width: 1280,
            },
        ])
        .await?;
    queue
        .enqueue_in(
            &ResizeImage {
                path: "c.png".into(),
                width: 320,
            },
            Duration::from_millis(500),
        )
        .await?;
    queue
        .enqueue(&ResizeImage {
            path: "d.png".into(),
            width: 0,
        })
        .await?;

    let settled = {
        let queue = queue.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                match queue.stats().await {
                    Ok(stats) if stats.ready + stats.in_flight + stats.delayed == 0 => break,
                    _ => {}
                }
            }
        }
    };
    Worker::new(queue.clone())
        .concurrency(2)
        .handle(resize)
        .run_until(async {
            tokio::select! {
                () = settled => {}
                () = anb_queue::shutdown_signal() => {}
            }
        })
        .await?;

    println!("{:?}", queue.stats().await?);
    for dead in queue.dead_jobs(10).await? {
        println!(
            "dead: {} {} ({:?})",
            dead.name, dead.payload, dead.last_error
        );
    }
    Ok(())
}
