//! Priorities: the case of the conformance suite for `Job::PRIORITY` and
//! `EnqueueOptions::priority`.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anb_queue::{EnqueueOptions, Job, JobContext, Priority, Queue, QueueError, Worker};
use serde::{Deserialize, Serialize};

use crate::{
    Fixture,
    support::{RunningWorker, is_empty, wait_until},
};

/// A job of the default priority, unless its enqueue gives another.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ranked {
    n: u32,
}

impl Job for Ranked {
    const NAME: &'static str = "ranked";
}

/// A job type whose jobs may wait: priority 7 unless its enqueue says otherwise.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Bulk {
    n: u32,
}

impl Job for Bulk {
    const NAME: &'static str = "bulk";
    const PRIORITY: Priority = Priority::new(7);
}

fn at(priority: u8) -> EnqueueOptions {
    EnqueueOptions::new().priority(Priority::new(priority))
}

/// A backend without priorities (SQS) refuses every priority but the default, from a job
/// type or an enqueue, and stores nothing; a job of the default priority still goes in.
async fn refuses_priorities(queue: &Queue) {
    let refused = |error: QueueError| {
        assert!(
            matches!(
                error,
                QueueError::UnsupportedByBackend {
                    operation: "job priorities",
                    ..
                }
            ),
            "{error:?}"
        );
    };
    refused(
        queue
            .enqueue_with(&Ranked { n: 1 }, at(3))
            .await
            .unwrap_err(),
    );
    refused(queue.enqueue(&Bulk { n: 1 }).await.unwrap_err());
    refused(
        queue
            .enqueue_bulk(&[Bulk { n: 2 }, Bulk { n: 3 }])
            .await
            .unwrap_err(),
    );
    assert!(is_empty(queue).await, "a refused job was stored");
    queue
        .enqueue_with(&Bulk { n: 4 }, at(0))
        .await
        .expect("the default priority is always accepted");
}

/// Due jobs run highest priority first, across job names, whatever order they were
/// enqueued in, and oldest first within a priority; a job type's priority
/// (`Job::PRIORITY`) applies unless its enqueue gives another. Priority orders only what is
/// due: a delayed job of the highest priority does not hold up lower ones meanwhile, and
/// runs once its time comes.
pub async fn due_jobs_run_highest_priority_first(fx: &impl Fixture) {
    let queue = fx.queue().await;
    assert_eq!(
        queue.supports_priorities(),
        fx.capabilities().priorities,
        "Backend::supports_priorities disagrees with the declared capability"
    );
    if !fx.capabilities().priorities {
        refuses_priorities(&queue).await;
        return;
    }
    // Lowest first, so that the order they run in is not the order they were enqueued in.
    queue
        .enqueue_bulk(&[Bulk { n: 1 }, Bulk { n: 2 }])
        .await
        .unwrap();
    let lowest = queue.enqueue_with(&Ranked { n: 9 }, at(9)).await.unwrap();
    queue.enqueue_with(&Ranked { n: 5 }, at(5)).await.unwrap();
    queue.enqueue_with(&Bulk { n: 3 }, at(2)).await.unwrap();
    let delayed_by = Duration::from_millis(1_500);
    let enqueued = Instant::now();
    queue
        .enqueue_with(&Ranked { n: 100 }, at(0).delay(delayed_by))
        .await
        .unwrap();
    let default = queue.enqueue(&Ranked { n: 0 }).await.unwrap();
    queue.enqueue(&Ranked { n: 1 }).await.unwrap();
    if fx.capabilities().operator_calls {
        for (id, priority) in [
            (&lowest.id, Priority::LOWEST),
            (&default, Priority::HIGHEST),
        ] {
            let info = queue.job(id).await.unwrap().expect("the job is stored");
            assert_eq!(info.priority, priority, "{info:?}");
        }
    }
    let ran = Arc::new(Mutex::new(Vec::new()));
    let record = |kind: &'static str| {
        let ran = ran.clone();
        move |n: u32| {
            ran.lock().unwrap().push((kind, n, enqueued.elapsed()));
        }
    };
    let (ranked, bulk) = (record("ranked"), record("bulk"));
    // One at a time, so the order of the runs is the order of the claims.
    let worker = Worker::new(queue.clone())
        .concurrency(1)
        .handle(move |job: Ranked, _ctx: JobContext| {
            ranked(job.n);
            async { Ok(()) }
        })
        .handle(move |job: Bulk, _ctx: JobContext| {
            bulk(job.n);
            async { Ok(()) }
        });
    let worker = RunningWorker::spawn(worker);
    wait_until("every job ran", 60, || is_empty(&queue)).await;
    worker.stop().await;
    let ran = ran.lock().unwrap().clone();
    let order: Vec<(&str, u32)> = ran.iter().map(|(kind, n, _)| (*kind, *n)).collect();
    assert_eq!(
        order,
        [
            ("ranked", 0),
            ("ranked", 1),
            ("bulk", 3),
            ("ranked", 5),
            ("bulk", 1),
            ("bulk", 2),
            ("ranked", 9),
            ("ranked", 100),
        ],
        "the order the jobs ran in"
    );
    let delayed_ran_at = ran.last().unwrap().2;
    assert!(
        delayed_ran_at >= delayed_by,
        "the delayed job ran after {delayed_ran_at:?}, before its delay of {delayed_by:?}"
    );
}
