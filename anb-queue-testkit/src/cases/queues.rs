//! Named queues: the cases of the conformance suite for `Worker::queue`.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anb_queue::{Job, JobContext, QueueError, Worker};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::{
    Fixture,
    support::{RunningWorker, is_empty, stats, wait_until},
};

/// A job of the default queue that runs until the case lets it go.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Backlog {
    n: u32,
}

impl Job for Backlog {
    const NAME: &'static str = "backlog";
}

/// A short job of its own queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Express {
    n: u32,
}

impl Job for Express {
    const NAME: &'static str = "express";
    const QUEUE: &'static str = "express";
}

/// Jobs running now and the most seen at once.
#[derive(Debug, Default)]
struct Running {
    now: AtomicUsize,
    most: AtomicUsize,
}

impl Running {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A worker with a named queue runs that queue's jobs with their own concurrency beside the
/// default queue's: a full default queue (one slot, a backlog that does not finish) holds up
/// none of them, and neither queue runs more at once than its own limit. A job type whose
/// queue the worker does not declare is refused before anything is claimed. A backend whose
/// claims cannot choose by name (SQS) refuses several named queues in one worker.
pub async fn named_queues_run_with_their_own_concurrency(fx: &impl Fixture) {
    let queue = fx.queue().await;
    let undeclared = Worker::new(queue.clone())
        .handle(|_job: Express, _ctx: JobContext| async { Ok(()) })
        .run_until(std::future::pending())
        .await
        .unwrap_err();
    assert!(
        matches!(
            undeclared,
            QueueError::UndeclaredQueue {
                queue: "express",
                job: "express"
            }
        ),
        "{undeclared:?}"
    );
    let backlog_running = Arc::new(Running::default());
    let express_running = Arc::new(Running::default());
    let release = Arc::new(Notify::new());
    let express_done = Arc::new(Mutex::new(Vec::new()));
    let worker = Worker::new(queue.clone())
        .concurrency(1)
        .queue("express", 2)
        .handle({
            let (running, release) = (backlog_running.clone(), release.clone());
            move |_job: Backlog, _ctx: JobContext| {
                let (running, release) = (running.clone(), release.clone());
                async move {
                    running.enter();
                    release.notified().await;
                    running.leave();
                    Ok(())
                }
            }
        })
        .handle({
            let (running, done) = (express_running.clone(), express_done.clone());
            move |job: Express, _ctx: JobContext| {
                let (running, done) = (running.clone(), done.clone());
                async move {
                    running.enter();
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    running.leave();
                    done.lock().unwrap().push(job.n);
                    Ok(())
                }
            }
        });
    if !fx.capabilities().named_queues {
        let error = worker.run_until(std::future::pending()).await.unwrap_err();
        assert!(
            matches!(
                error,
                QueueError::UnsupportedByBackend {
                    operation: "several named queues in one worker",
                    ..
                }
            ),
            "{error:?}"
        );
        return;
    }
    for n in 0..3 {
        queue.enqueue(&Backlog { n }).await.unwrap();
    }
    for n in 0..6 {
        queue.enqueue(&Express { n }).await.unwrap();
    }
    let worker = RunningWorker::spawn(worker);
    wait_until(
        "the express queue drained beside the stuck backlog",
        60,
        || async { express_done.lock().unwrap().len() == 6 },
    )
    .await;
    assert_eq!(
        backlog_running.most.load(Ordering::SeqCst),
        1,
        "the default queue runs one at a time"
    );
    // The express jobs' completions settle in the background; the backlog still waits.
    wait_until(
        "only the backlog left: one running, two waiting",
        60,
        || async {
            let counts = stats(&queue).await;
            (counts.ready, counts.in_flight) == (2, 1)
        },
    )
    .await;
    let most = express_running.most.load(Ordering::SeqCst);
    assert!(
        most <= 2,
        "the express queue ran {most} at once, above its 2"
    );
    // Let the backlog go, one at a time.
    for _ in 0..3 {
        release.notify_one();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_until("queue empty", 60, || async {
        release.notify_one();
        is_empty(&queue).await
    })
    .await;
    worker.stop().await;
    assert_eq!(backlog_running.most.load(Ordering::SeqCst), 1);
}
