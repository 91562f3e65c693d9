//! Unique jobs: the cases of the conformance suite for `Queue::enqueue_unique`.

use std::{sync::Arc, time::Duration};

use anb_queue::{Enqueued, Job, JobContext, Queue, QueueError, Unique, Worker};
use serde::{Deserialize, Serialize};

use crate::{
    Fixture,
    jobs::Echo,
    support::{RunningWorker, claim_one, stats, wait_until},
};

/// Another job name, to show that keys are per name.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Other {
    n: u32,
}

impl Job for Other {
    const NAME: &'static str = "other";
}

fn echo(n: u32) -> Echo {
    Echo {
        n,
        text: "unique".into(),
    }
}

/// A backend without unique jobs (SQS: a standard queue cannot deduplicate) refuses a unique
/// enqueue, and a plain enqueue of a job that carries a key, and stores nothing. Returns
/// whether the backend claims unique jobs. Either way the backend says what it was declared
/// to do (`Queue::supports_unique_jobs`, which periodic jobs rely on).
async fn claims_unique_jobs(fx: &impl Fixture, queue: &Queue) -> bool {
    assert_eq!(
        queue.supports_unique_jobs(),
        fx.capabilities().unique_jobs,
        "Backend::supports_unique disagrees with the declared capability"
    );
    if fx.capabilities().unique_jobs {
        return true;
    }
    let error = queue
        .enqueue_unique(&echo(1), Unique::key("k"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            QueueError::UnsupportedByBackend {
                operation: "unique jobs",
                ..
            }
        ),
        "{error:?}"
    );
    let plain = queue
        .backend()
        .enqueue(&[anb_queue::backend::NewJob {
            name: "echo",
            payload: "{}".into(),
            max_attempts: 1,
            delay: Duration::ZERO,
            priority: anb_queue::Priority::HIGHEST,
            unique: Some(anb_queue::UniqueKey {
                key: "k".into(),
                period: None,
            }),
        }])
        .await
        .unwrap_err();
    assert!(
        matches!(plain, QueueError::UniqueKeyNotEnforced { job: "echo" }),
        "{plain:?}"
    );
    assert_eq!(stats(queue).await.ready, 0, "nothing enqueued");
    false
}

/// Runs a worker until the queue holds no job.
async fn drain(queue: &Queue) {
    let worker = RunningWorker::spawn(
        Worker::new(queue.clone())
            .handle(|_job: Echo, _ctx: JobContext| async { Ok(()) })
            .handle(|_job: Other, _ctx: JobContext| async { Ok(()) }),
    );
    wait_until("queue empty", 60, || async {
        let stats = stats(queue).await;
        (stats.ready, stats.in_flight, stats.delayed) == (0, 0, 0)
    })
    .await;
    worker.stop().await;
}

/// A unique key is held while its job is queued, delayed or running, per job name, and free
/// once it completed.
pub async fn a_unique_key_is_held_while_the_job_is_unfinished(fx: &impl Fixture) {
    let queue = fx.queue().await;
    if !claims_unique_jobs(fx, &queue).await {
        return;
    }
    let first = queue
        .enqueue_unique(&echo(1), Unique::key("video:1"))
        .await
        .unwrap();
    assert!(!first.duplicate);
    // The same key while it waits: the first job's id, nothing stored; also when delayed.
    let again = queue
        .enqueue_unique(&echo(2), Unique::key("video:1"))
        .await
        .unwrap();
    assert_eq!(
        again,
        Enqueued {
            id: first.id.clone(),
            duplicate: true
        }
    );
    let later = queue
        .enqueue_unique_in(&echo(3), Unique::key("video:1"), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(later.id, first.id);
    assert!(later.duplicate);
    // Another key, and the same key under another job name, are other jobs.
    let other_key = queue
        .enqueue_unique(&echo(4), Unique::key("video:2"))
        .await
        .unwrap();
    let other_name = queue
        .enqueue_unique(&Other { n: 1 }, Unique::key("video:1"))
        .await
        .unwrap();
    assert!(!other_key.duplicate && !other_name.duplicate);
    assert_ne!(other_key.id, first.id);
    assert_ne!(other_name.id, first.id);
    // By args: the same payload is the same job.
    let by_args = queue
        .enqueue_unique(&echo(9), Unique::by_args())
        .await
        .unwrap();
    let same_args = queue
        .enqueue_unique(&echo(9), Unique::by_args())
        .await
        .unwrap();
    assert_eq!(
        (same_args.id.clone(), same_args.duplicate),
        (by_args.id, true)
    );
    assert_eq!(
        stats(&queue).await.ready,
        4,
        "video:1, video:2, other, args"
    );

    // Running: still held.
    let claimed = claim_one(&queue, "worker-1", Duration::from_secs(30)).await;
    let held = queue
        .enqueue_unique(&echo(5), Unique::key("video:1"))
        .await
        .unwrap();
    assert_eq!(
        (held.id.clone(), held.duplicate),
        (claimed.id.clone(), true)
    );
    assert_eq!(claimed.id, first.id, "the oldest echo job is the first one");
    // Completed: free again, for a new job.
    queue
        .backend()
        .complete("worker-1", &[claimed.lease()])
        .await
        .unwrap();
    let fresh = queue
        .enqueue_unique(&echo(6), Unique::key("video:1"))
        .await
        .unwrap();
    assert!(!fresh.duplicate);
    assert_ne!(fresh.id, first.id);
    // A plain enqueue is not unique, and never looks at keys.
    queue.enqueue(&echo(7)).await.unwrap();
    drain(&queue).await;
    let after_worker = queue
        .enqueue_unique(&echo(8), Unique::key("video:1"))
        .await
        .unwrap();
    assert!(!after_worker.duplicate, "the worker's completion freed it");
}

/// A key held for a period stays held after its job completed, until the period is over.
pub async fn a_period_key_stays_held_after_the_job_completed_until_it_expires(fx: &impl Fixture) {
    let queue = fx.queue().await;
    if !claims_unique_jobs(fx, &queue).await {
        return;
    }
    let period = Duration::from_secs(2);
    let unique = || Unique::key("report").for_period(period);
    let first = queue.enqueue_unique(&echo(1), unique()).await.unwrap();
    assert!(!first.duplicate);
    drain(&queue).await;
    // Completed, yet held: the same id, nothing stored.
    let again = queue.enqueue_unique(&echo(2), unique()).await.unwrap();
    assert_eq!(
        (again.id.clone(), again.duplicate),
        (first.id.clone(), true)
    );
    assert_eq!(stats(&queue).await.ready, 0);
    // A key held while unfinished is another scope of the same name: it does not meet it.
    let unfinished = queue
        .enqueue_unique(&echo(3), Unique::key("report-2"))
        .await
        .unwrap();
    assert!(!unfinished.duplicate);
    // Once the period is over, the key is free for a new job, which holds it in turn.
    wait_until("the period is over", 30, || async {
        let next = queue.enqueue_unique(&echo(4), unique()).await.unwrap();
        !next.duplicate
    })
    .await;
    let held = queue.enqueue_unique(&echo(5), unique()).await.unwrap();
    assert!(held.duplicate);
    assert_ne!(held.id, first.id);
    assert_eq!(
        stats(&queue).await.ready,
        2,
        "report-2 and the second report"
    );
    // The expired keys' sweep (run with the pruning of dead jobs, an operator call) leaves
    // held keys alone.
    if fx.capabilities().operator_calls {
        queue.prune_dead(Duration::from_secs(3600)).await.unwrap();
    }
    assert!(
        queue
            .enqueue_unique(&echo(6), unique())
            .await
            .unwrap()
            .duplicate
    );
}

/// Enqueues of one key from many tasks with their own connections store exactly one job, for
/// each scope.
pub async fn concurrent_unique_enqueues_store_one_job(fx: &impl Fixture) {
    let queue = fx.queue().await;
    if !claims_unique_jobs(fx, &queue).await {
        return;
    }
    for unique in [
        Unique::key("race"),
        Unique::key("race-period").for_period(Duration::from_secs(3600)),
    ] {
        // Each task with a queue of its own (its own connections), as separate processes.
        let mut queues = Vec::new();
        for _ in 0..20 {
            queues.push(fx.queue().await);
        }
        let start = Arc::new(tokio::sync::Barrier::new(queues.len()));
        let tasks: Vec<_> = queues
            .into_iter()
            .enumerate()
            .map(|(n, queue)| {
                let (start, unique) = (start.clone(), unique.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    queue.enqueue_unique(&echo(n as u32), unique).await
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap().unwrap());
        }
        let new: Vec<&Enqueued> = outcomes.iter().filter(|e| !e.duplicate).collect();
        assert_eq!(new.len(), 1, "exactly one stored: {outcomes:?}");
        assert!(
            outcomes.iter().all(|e| e.id == new[0].id),
            "every duplicate names the one stored: {outcomes:?}"
        );
    }
    assert_eq!(stats(&queue).await.ready, 2, "one job per key");
}

/// Dead-lettering, by the handler or by a lease that ran out on the last attempt, frees the
/// key.
pub async fn dead_lettering_frees_a_unique_key(fx: &impl Fixture) {
    let queue = fx.queue().await;
    if !claims_unique_jobs(fx, &queue).await {
        return;
    }
    let first = queue
        .enqueue_unique(&echo(1), Unique::key("doomed"))
        .await
        .unwrap();
    let claimed = claim_one(&queue, "worker-1", Duration::from_secs(30)).await;
    assert_eq!(claimed.id, first.id);
    queue
        .backend()
        .dead_letter("worker-1", &claimed.lease(), "no retry fixes this")
        .await
        .unwrap();
    let fresh = queue
        .enqueue_unique(&echo(2), Unique::key("doomed"))
        .await
        .unwrap();
    assert!(!fresh.duplicate, "a dead job holds no key");
    // So does a lease that runs out on the last attempt (Echo has the default 5 attempts):
    // the fresh job dies by recovery after its attempts, and frees the key too.
    let mut last = None;
    for _ in 0..Echo::MAX_ATTEMPTS {
        let claimed = claim_one(&queue, "worker-2", Duration::from_millis(1)).await;
        assert_eq!(claimed.id, fresh.id);
        last = Some(claimed);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(last.is_some());
    wait_until(
        "the last lease expired into the dead letters",
        30,
        || async {
            queue.backend().recover_expired().await.unwrap();
            stats(&queue).await.dead == 2
        },
    )
    .await;
    let third = queue
        .enqueue_unique(&echo(3), Unique::key("doomed"))
        .await
        .unwrap();
    assert!(!third.duplicate, "a job dead by recovery holds no key");
    if !fx.capabilities().operator_calls {
        return;
    }
    // A requeued dead job (an operator call) runs without its key: it does not meet the
    // live holder.
    assert_eq!(queue.requeue_dead(&[first.id, fresh.id]).await.unwrap(), 2);
    assert_eq!(stats(&queue).await.ready, 3);
    let holder = queue
        .enqueue_unique(&echo(4), Unique::key("doomed"))
        .await
        .unwrap();
    assert_eq!((holder.id, holder.duplicate), (third.id, true));
}
