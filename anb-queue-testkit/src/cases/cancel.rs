//! Cancellation: the cases of the conformance suite for `Queue::cancel` and
//! `Queue::cancel_unique`.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anb_queue::{CancelReason, Cancelled, JobContext, JobError, Queue, QueueError, Unique, Worker};

use crate::{
    Fixture,
    jobs::Echo,
    support::{RunningWorker, claim_one, is_empty, recording_worker, stats, wait_until},
};

fn echo(n: u32) -> Echo {
    Echo {
        n,
        text: "cancel".into(),
    }
}

/// Runs a worker until the queue is empty, and a moment more (a job wrongly left behind
/// would run then); returns the numbers of the jobs it ran.
async fn drain(queue: &Queue) -> Vec<u32> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let worker = RunningWorker::spawn(recording_worker(queue, seen.clone()));
    wait_until("queue empty", 60, || is_empty(queue)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    worker.stop().await;
    seen.lock().unwrap().iter().map(|job| job.n).collect()
}

/// A backend without cancellation (SQS) refuses a cancel, and the job still runs. Returns
/// whether the backend cancels. Either way it says what it was declared to do.
async fn cancels_jobs(fx: &impl Fixture, queue: &Queue) -> bool {
    assert_eq!(
        queue.supports_cancel(),
        fx.capabilities().cancellation,
        "Backend::supports_cancel disagrees with the declared capability"
    );
    if fx.capabilities().cancellation {
        return true;
    }
    let id = queue.enqueue(&echo(1)).await.unwrap();
    let error = queue.cancel(&id).await.unwrap_err();
    assert!(
        matches!(
            error,
            QueueError::UnsupportedByBackend {
                operation: "cancelling a job",
                ..
            }
        ),
        "{error:?}"
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let worker = RunningWorker::spawn(recording_worker(queue, seen.clone()));
    wait_until("the job ran", 60, || async {
        !seen.lock().unwrap().is_empty()
    })
    .await;
    worker.stop().await;
    false
}

/// A waiting job, due or delayed, that is cancelled is deleted: no worker runs it, a lookup
/// no longer finds it, a second cancel finds nothing, and a unique key it held is free.
pub async fn a_cancelled_waiting_job_is_removed_and_never_runs(fx: &impl Fixture) {
    let queue = fx.queue().await;
    if !cancels_jobs(fx, &queue).await {
        return;
    }
    let due = queue.enqueue(&echo(1)).await.unwrap();
    let delayed = queue
        .enqueue_in(&echo(2), Duration::from_secs(3600))
        .await
        .unwrap();
    let kept = queue.enqueue(&echo(3)).await.unwrap();
    // Another handle, as another process would cancel.
    let other = fx.queue().await;
    assert_eq!(other.cancel(&due).await.unwrap(), Cancelled::Removed);
    assert_eq!(other.cancel(&delayed).await.unwrap(), Cancelled::Removed);
    assert_eq!(other.cancel(&due).await.unwrap(), Cancelled::NotFound);
    if fx.capabilities().operator_calls {
        assert_eq!(queue.job(&due).await.unwrap(), None);
        assert_eq!(queue.job(&delayed).await.unwrap(), None);
        assert!(queue.job(&kept).await.unwrap().is_some());
    }
    let counts = stats(&queue).await;
    assert_eq!((counts.ready, counts.delayed), (1, 0), "{counts:?}");

    assert_eq!(
        drain(&queue).await,
        vec![3],
        "only the job not cancelled ran"
    );
    assert_eq!(queue.cancel(&kept).await.unwrap(), Cancelled::NotFound);

    if fx.capabilities().unique_jobs {
        let keyed = queue
            .enqueue_unique(&echo(4), Unique::key("video:4"))
            .await
            .unwrap();
        assert_eq!(
            other.cancel_unique::<Echo>("video:4").await.unwrap(),
            Cancelled::Removed
        );
        assert_eq!(
            other.cancel_unique::<Echo>("video:4").await.unwrap(),
            Cancelled::NotFound
        );
        let again = queue
            .enqueue_unique(&echo(4), Unique::key("video:4"))
            .await
            .unwrap();
        assert!(!again.duplicate, "the cancelled job's key is free");
        assert_ne!(again.id, keyed.id);
        let by_args = Unique::by_args().key_for(&echo(4)).unwrap();
        assert_eq!(
            queue.cancel_unique::<Echo>(&by_args).await.unwrap(),
            Cancelled::NotFound,
            "no job holds that key"
        );
    }
}

/// A running job cancelled from another handle has its handler's token fired with
/// `CancelReason::Cancelled` at the next heartbeat; the handler is not aborted, and whatever
/// it returns (here a retryable failure) the job is removed and not run again.
pub async fn a_cancelled_running_job_is_told_to_stop_and_removed_whatever_it_returns(
    fx: &impl Fixture,
) {
    let queue = fx.queue().await;
    if !cancels_jobs(fx, &queue).await {
        return;
    }
    let id = queue.enqueue(&echo(1)).await.unwrap();
    let started = Arc::new(tokio::sync::Notify::new());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let worker = RunningWorker::spawn(
        Worker::new(queue.clone())
            // A heartbeat every 300 ms.
            .lease(Duration::from_millis(900))
            .handle({
                let (started, seen) = (started.clone(), seen.clone());
                move |_job: Echo, ctx: JobContext| {
                    let (started, seen) = (started.clone(), seen.clone());
                    async move {
                        started.notify_one();
                        ctx.cancelled().await;
                        // Not aborted: it may take its time to clean up.
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                        seen.lock()
                            .unwrap()
                            .push((ctx.attempt(), ctx.cancel_reason()));
                        Err::<(), _>(JobError::retryable("stopped: cancelled"))
                    }
                }
            }),
    );
    started.notified().await;
    let other = fx.queue().await;
    assert_eq!(other.cancel(&id).await.unwrap(), Cancelled::Requested);
    wait_until("the handler ended", 60, || async {
        !seen.lock().unwrap().is_empty()
    })
    .await;
    wait_until("queue empty", 60, || is_empty(&queue)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    worker.stop().await;
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(1, Some(CancelReason::Cancelled))],
        "ran once, told it was cancelled, not retried"
    );
    let counts = stats(&queue).await;
    assert_eq!((counts.ready, counts.delayed, counts.dead), (0, 0, 0));
    assert_eq!(queue.cancel(&id).await.unwrap(), Cancelled::NotFound);
}

/// A job cancelled while running whose attempt ended before its worker heard of it (here:
/// given back, as at a shutdown) is removed by the next claim that finds it, never run; a
/// dead job cannot be cancelled.
pub async fn a_job_cancelled_while_running_is_not_run_again_after_its_release(fx: &impl Fixture) {
    let queue = fx.queue().await;
    if !cancels_jobs(fx, &queue).await {
        return;
    }
    let id = queue.enqueue(&echo(1)).await.unwrap();
    let held = claim_one(&queue, "gone-worker", Duration::from_secs(60)).await;
    assert_eq!(held.id, id);
    assert!(!held.cancel_requested);
    assert_eq!(queue.cancel(&id).await.unwrap(), Cancelled::Requested);
    // The heartbeat reports it.
    let renewal = queue
        .backend()
        .renew("gone-worker", &[held.lease()], Duration::from_secs(60))
        .await
        .unwrap();
    assert!(renewal.lost.is_empty(), "{renewal:?}");
    assert_eq!(renewal.cancelled, vec![held.lease()]);
    queue
        .backend()
        .release("gone-worker", &[held.lease()])
        .await
        .unwrap();
    queue.enqueue(&echo(2)).await.unwrap();

    assert_eq!(
        drain(&queue).await,
        vec![2],
        "the cancelled job did not run again"
    );

    // A dead job is past cancelling.
    let doomed = queue.enqueue(&echo(3)).await.unwrap();
    let held = claim_one(&queue, "gone-worker", Duration::from_secs(60)).await;
    assert_eq!(held.id, doomed);
    queue
        .backend()
        .dead_letter("gone-worker", &held.lease(), "broken")
        .await
        .unwrap();
    assert_eq!(queue.cancel(&doomed).await.unwrap(), Cancelled::NotFound);
    assert_eq!(stats(&queue).await.dead, 1);
}
