//! Small helpers the cases share, public for a backend's own extra tests.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anb_queue::{
    JobContext, Queue, QueueError, QueueStats, RetryBackoff, Worker,
    backend::{ClaimRequest, ClaimedJob},
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::jobs::Echo;

/// A retry back-off of 20–100 ms, so that retry cases finish quickly.
pub fn fast_retries() -> RetryBackoff {
    RetryBackoff {
        base: Duration::from_millis(20),
        max: Duration::from_millis(100),
    }
}

/// The queue's statistics; panics when the backend cannot give them.
pub async fn stats(queue: &Queue) -> QueueStats {
    queue.stats().await.expect("stats")
}

/// Whether no job is ready, running, delayed or dead.
pub async fn is_empty(queue: &Queue) -> bool {
    let stats = stats(queue).await;
    (stats.ready, stats.in_flight, stats.delayed, stats.dead) == (0, 0, 0, 0)
}

/// A worker that records the [`Echo`] payloads its handler saw.
pub fn recording_worker(queue: &Queue, seen: Arc<Mutex<Vec<Echo>>>) -> Worker {
    Worker::new(queue.clone()).handle(move |job: Echo, _ctx: JobContext| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push(job);
            Ok(())
        }
    })
}

/// Claims one [`Echo`] job straight from the backend, as worker `owner` with a lease of
/// `lease`, recovering expired leases between tries; panics after 60 s without one.
pub async fn claim_one(queue: &Queue, owner: &str, lease: Duration) -> ClaimedJob {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let claimed = queue
            .backend()
            .claim(ClaimRequest {
                names: &["echo"],
                max: 1,
                owner,
                lease,
            })
            .await
            .unwrap();
        if let Some(job) = claimed.into_iter().next() {
            return job;
        }
        assert!(Instant::now() < deadline, "no job to claim within 60 s");
        queue.backend().recover_expired().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A worker running in the background until stopped.
#[derive(Debug)]
pub struct RunningWorker {
    stop: CancellationToken,
    handle: JoinHandle<Result<(), QueueError>>,
}

impl RunningWorker {
    /// Runs `worker` on a task of its own.
    pub fn spawn(worker: Worker) -> Self {
        let stop = CancellationToken::new();
        let handle = tokio::spawn(worker.run_until(stop.clone().cancelled_owned()));
        Self { stop, handle }
    }

    /// Signals shutdown and waits for the worker to return; panics unless it returns `Ok`
    /// within 60 s.
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("worker stops within 60 s")
            .expect("worker task does not panic")
            .expect("worker returns Ok");
    }
}

/// Polls `condition` every 20 ms until it holds; panics after `seconds` seconds.
pub async fn wait_until<F, Fut>(what: &str, seconds: u64, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {seconds} s waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
