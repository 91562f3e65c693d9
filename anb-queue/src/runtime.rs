//! The lease runtime: what happens to a claimed job between its claim and its settlement,
//! shared by [`Worker`](crate::Worker) and the apalis adapter so both follow one set of
//! rules.
//!
//! - every held job's lease is renewed by one heartbeat; a lease reported lost fires the
//!   job's cancellation with [`CancelReason::LeaseLost`] and its outcome is not recorded;
//!   a job reported cancelled fires it with [`CancelReason::Cancelled`], and is removed
//!   whatever its handler returns (its handler is not aborted);
//! - a handler runs until it returns, or until it is aborted: a short moment after a
//!   [`CancelReason::Timeout`] or [`CancelReason::LeaseLost`], or at the end of the
//!   shutdown grace period;
//! - shutdown ([`LeaseRuntime::begin_shutdown`]) is first only a notice; near the end of the
//!   grace ([`release_margin`]) running jobs are cancelled with [`CancelReason::Shutdown`],
//!   and such a job is released without counting the attempt, whatever its handler returns;
//! - a handler that ran to an outcome without being cancelled keeps its attempt: its
//!   completion or failure is recorded (retrying the write a few times); when that keeps
//!   failing the job is settled locally (no longer renewed), so its lease lapses and
//!   recovery counts the attempt.

use std::{
    any::Any,
    collections::HashMap,
    future::Future,
    panic::AssertUnwindSafe,
    pin::pin,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use futures::FutureExt;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use crate::{
    backend::{ClaimedJob, JobId, Lease, SharedBackend},
    error::{JobError, QueueError},
    job::{CancelReason, Cancellation, JobContext},
    queue::Queue,
    worker::RetryBackoff,
};

/// How long a handler may go on after a timeout or a lost lease cancelled it.
pub(crate) const ABORT_AFTER_CANCEL: Duration = Duration::from_secs(1);

/// How many times an outcome's write is tried before the job is settled locally.
const RECORD_ATTEMPTS: u32 = 3;

/// The pause between tries of an outcome's write.
const RECORD_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// How long dead jobs are kept unless a worker is told otherwise: a week, as River keeps
/// discarded jobs.
pub(crate) const DEFAULT_DEAD_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The background upkeep a worker runs beside its handlers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Maintenance {
    /// How often the queue depth gauges are refreshed (`None`: the backend's default).
    pub(crate) stats_interval: Option<Duration>,
    /// Dead jobs older than this are deleted (`None`: kept until an operator prunes them).
    pub(crate) dead_retention: Option<Duration>,
}

impl Default for Maintenance {
    fn default() -> Self {
        Self {
            stats_interval: None,
            dead_retention: Some(DEFAULT_DEAD_RETENTION),
        }
    }
}

/// How long before the end of the shutdown grace running handlers are cancelled: enough for
/// a cooperative handler to return and be released within the grace.
pub(crate) fn release_margin(grace: Duration) -> Duration {
    (grace / 4).min(Duration::from_secs(5))
}

/// A handler's failure as the queue records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) retryable: bool,
    /// Set when the handler asked for a delay before the retry.
    pub(crate) delay: Option<Duration>,
    /// The handler put the job off ([`JobError::snooze`]): not a failure, and not an attempt.
    pub(crate) snoozed: bool,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn retryable(message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            delay: None,
            snoozed: false,
            message: message.into(),
        }
    }
}

impl From<JobError> for Failure {
    fn from(error: JobError) -> Self {
        Self {
            retryable: error.is_retryable(),
            delay: error.delay(),
            snoozed: error.is_snooze(),
            message: error.message().to_owned(),
        }
    }
}

/// How a handler's run ended.
#[derive(Debug)]
pub(crate) enum Ended<T> {
    /// It returned (a panic is `Err` with its message).
    Returned(Result<T, String>),
    /// It was aborted: after a timeout or lost lease, or at the end of the shutdown grace.
    Aborted,
}

/// What the runtime keeps about a job it holds.
#[derive(Debug, Clone)]
struct Held {
    cancel: Cancellation,
    /// Fired at the end of the shutdown grace: the handler is dropped.
    abort: CancellationToken,
    /// Its outcome is being written (or waits in the completer's batch): the lease is still
    /// renewed until the write lands, but a renewal that finds it gone is that write having
    /// landed first (a completion deletes the job), not a lost lease.
    settling: bool,
}

#[derive(Debug, Default)]
struct HeldJobs {
    /// By lease, not by job id: a job whose lease ran out may be held again by a newer
    /// claim of this same worker, beside the older claim's handler still running.
    jobs: HashMap<Lease, Held>,
    /// Set once the runtime gave back what it held: later claims give back their own.
    closed: bool,
}

enum Completion {
    Done(Lease),
    /// Answered once every completion sent before it is recorded.
    Flush(oneshot::Sender<()>),
}

/// A job whose handler is about to run (or runs): what the runtime needs to settle it.
#[derive(Debug, Clone)]
pub(crate) struct RunningJob {
    pub(crate) lease: Lease,
    pub(crate) name: &'static str,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    pub(crate) timeout: Option<Duration>,
    cancel: Cancellation,
    abort: CancellationToken,
}

/// The lease runtime of one worker (a [`Worker`](crate::Worker) or an apalis worker).
pub(crate) struct LeaseRuntime {
    pub(crate) backend: SharedBackend,
    pub(crate) owner: String,
    pub(crate) lease: Duration,
    pub(crate) backoff: RetryBackoff,
    held: Mutex<HeldJobs>,
    completions: mpsc::UnboundedSender<Completion>,
    completions_rx: Mutex<Option<mpsc::UnboundedReceiver<Completion>>>,
    /// Fired when shutdown begins (informational, [`JobContext::is_shutting_down`]).
    stopping: CancellationToken,
}

impl std::fmt::Debug for LeaseRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseRuntime")
            .field("owner", &self.owner)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl LeaseRuntime {
    pub(crate) fn new(
        backend: SharedBackend,
        owner: String,
        lease: Duration,
        backoff: RetryBackoff,
    ) -> Arc<Self> {
        let (completions, completions_rx) = mpsc::unbounded_channel();
        Arc::new(Self {
            backend,
            owner,
            lease,
            backoff,
            held: Mutex::new(HeldJobs::default()),
            completions,
            completions_rx: Mutex::new(Some(completions_rx)),
            stopping: CancellationToken::new(),
        })
    }

    fn held(&self) -> MutexGuard<'_, HeldJobs> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Holds freshly claimed jobs (the heartbeat renews them from now on); `false` when the
    /// runtime is already closed, and then the caller gives them back.
    pub(crate) fn hold(&self, jobs: &[ClaimedJob]) -> bool {
        let mut held = self.held();
        if held.closed {
            return false;
        }
        for job in jobs {
            held.jobs.insert(
                job.lease(),
                Held {
                    cancel: Cancellation::default(),
                    abort: CancellationToken::new(),
                    settling: false,
                },
            );
        }
        true
    }

    /// Removes the claimed jobs that were cancelled while an earlier attempt ran
    /// ([`ClaimedJob::cancel_requested`]) without running them, and returns the others.
    pub(crate) async fn discard_cancelled(&self, claimed: Vec<ClaimedJob>) -> Vec<ClaimedJob> {
        if !claimed.iter().any(|job| job.cancel_requested) {
            return claimed;
        }
        let (cancelled, run): (Vec<_>, Vec<_>) =
            claimed.into_iter().partition(|job| job.cancel_requested);
        let leases: Vec<Lease> = cancelled.iter().map(ClaimedJob::lease).collect();
        match self.backend.complete(&self.owner, &leases).await {
            Ok(()) => {
                for job in &cancelled {
                    tracing::info!(job.name = %job.name, job.id = %job.id, "job cancelled: removed");
                    metrics::counter!("anb_queue_jobs_total", "job" => job.name.clone(), "outcome" => "cancelled")
                        .increment(1);
                }
            }
            // Their leases run out and the next claim finds them again.
            Err(error) => {
                tracing::warn!(%error, jobs = leases.len(), "removing cancelled jobs failed")
            }
        }
        run
    }

    /// Forgets a job held under `lease` (settled in the backend, or given up locally).
    fn settle(&self, lease: &Lease) {
        self.held().jobs.remove(lease);
    }

    /// Marks a held job whose outcome is about to be written (see [`Held::settling`]).
    fn settling(&self, lease: &Lease) {
        if let Some(job) = self.held().jobs.get_mut(lease) {
            job.settling = true;
        }
    }

    fn held_leases(&self) -> Vec<Lease> {
        self.held().jobs.keys().cloned().collect()
    }

    /// The number of jobs held (claimed and not yet settled).
    pub(crate) fn held_count(&self) -> usize {
        self.held().jobs.len()
    }

    /// Prepares a held job's run: its context for the handler and its settlement state.
    pub(crate) fn start(
        &self,
        job: &ClaimedJob,
        name: &'static str,
        timeout: Option<Duration>,
    ) -> (RunningJob, JobContext) {
        let lease = job.lease();
        let held = self.held().jobs.get(&lease).cloned();
        let (cancel, abort) = match held {
            Some(held) => (held.cancel, held.abort),
            None => (Cancellation::default(), CancellationToken::new()),
        };
        let context = JobContext {
            id: job.id.clone(),
            name,
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            owner: self.owner.clone(),
            lease: lease.clone(),
            duration: self.lease,
            backend: self.backend.clone(),
            stopping: self.stopping.clone(),
            cancel: cancel.clone(),
        };
        let running = RunningJob {
            lease,
            name,
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            timeout,
            cancel,
            abort,
        };
        (running, context)
    }

    /// Tells handlers the worker is shutting down (they may go on).
    pub(crate) fn begin_shutdown(&self) {
        self.stopping.cancel();
    }

    /// Fires every held job's cancellation with `reason`.
    pub(crate) fn cancel_all(&self, reason: CancelReason) {
        for job in self.held().jobs.values() {
            job.cancel.fire(reason);
        }
    }

    /// Aborts every running handler (the end of the shutdown grace): each is released.
    pub(crate) fn abort_all(&self) {
        for job in self.held().jobs.values() {
            job.cancel.fire(CancelReason::Shutdown);
            job.abort.cancel();
        }
    }

    /// Runs a handler's future until it returns, or until it is aborted (see the module
    /// documentation). A panic is caught and returned as its message.
    pub(crate) async fn run_handler<T>(
        &self,
        job: &RunningJob,
        handler: impl Future<Output = T>,
    ) -> Ended<T> {
        let mut handler = pin!(AssertUnwindSafe(handler).catch_unwind());
        let far = tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let timeout_at = job
            .timeout
            .map_or(far, |timeout| tokio::time::Instant::now() + timeout);
        let mut abort_at = far;
        let mut cancel_seen = false;
        loop {
            tokio::select! {
                biased;
                result = &mut handler => {
                    return Ended::Returned(result.map_err(|panic| panic_message(panic.as_ref())));
                }
                () = job.abort.cancelled() => return Ended::Aborted,
                () = tokio::time::sleep_until(abort_at), if abort_at < far => return Ended::Aborted,
                () = job.cancel.fired(), if !cancel_seen => {
                    cancel_seen = true;
                    // A shutdown cancel waits for the end of the grace (`abort`), and a
                    // cancelled job's handler decides how to stop; the others give the
                    // handler a moment of its own.
                    if !matches!(job.cancel.reason(), Some(CancelReason::Shutdown | CancelReason::Cancelled)) {
                        abort_at = tokio::time::Instant::now() + ABORT_AFTER_CANCEL;
                    }
                }
                () = tokio::time::sleep_until(timeout_at), if timeout_at < far && !cancel_seen => {
                    job.cancel.fire(CancelReason::Timeout);
                }
            }
        }
    }

    /// Settles a job whose handler ended with `outcome`; returns the outcome's metric label
    /// (`completed`, `retried`, `snoozed`, `dead`, `released`, `lost`).
    pub(crate) async fn finish(
        &self,
        job: &RunningJob,
        outcome: Ended<Result<(), Failure>>,
    ) -> &'static str {
        let result = match (job.cancel.reason(), outcome) {
            (Some(CancelReason::Shutdown), _) => return self.release_now(job).await,
            (Some(CancelReason::Cancelled), _) => {
                tracing::info!(job.name = job.name, job.id = %job.lease.id, "job cancelled: removed");
                return self.remove(job, "cancelled");
            }
            (Some(CancelReason::LeaseLost), _) => {
                tracing::warn!(job.name = job.name, job.id = %job.lease.id, "the job's lease was lost; its outcome is not recorded");
                self.settle(&job.lease);
                return "lost";
            }
            (Some(CancelReason::Timeout), Ended::Returned(Ok(Ok(())))) => Ok(()),
            (Some(CancelReason::Timeout), _) => Err(Failure::retryable(format!(
                "timed out after {:?}",
                job.timeout.unwrap_or_default()
            ))),
            (_, Ended::Returned(Ok(result))) => result,
            (_, Ended::Returned(Err(panic))) => Err(Failure::retryable(panic)),
            // Aborted without a reason does not happen (aborts fire a reason first); treat
            // it as a shutdown.
            (_, Ended::Aborted) => return self.release_now(job).await,
        };
        match result {
            Ok(()) => {
                tracing::debug!(job.name = job.name, job.id = %job.lease.id, "job completed");
                self.remove(job, "completed")
            }
            Err(failure) => self.record_failure(job, failure).await,
        }
    }

    /// Hands a finished job to the completer, which deletes it in a batch; returns `label`,
    /// or `lost` when the completer is gone (the job's lease then lapses).
    fn remove(&self, job: &RunningJob, label: &'static str) -> &'static str {
        self.settling(&job.lease);
        if self
            .completions
            .send(Completion::Done(job.lease.clone()))
            .is_ok()
        {
            label
        } else {
            self.settle(&job.lease);
            "lost"
        }
    }

    /// Retries or dead-letters a failed job, trying the write a few times; when it keeps
    /// failing, stops holding the job so its lease lapses and recovery counts the attempt.
    async fn record_failure(&self, job: &RunningJob, failure: Failure) -> &'static str {
        if failure.snoozed {
            return self
                .snooze(job, failure.delay.unwrap_or_default(), &failure.message)
                .await;
        }
        let retry = failure.retryable && job.attempt < job.max_attempts;
        let delay = failure
            .delay
            .unwrap_or_else(|| self.backoff.delay(job.attempt));
        if retry {
            tracing::warn!(
                job.name = job.name, job.id = %job.lease.id, job.attempt = job.attempt,
                error = %failure.message, retry_in_ms = delay.as_millis() as u64,
                "job failed; will retry"
            );
        } else {
            tracing::error!(
                job.name = job.name, job.id = %job.lease.id, job.attempt = job.attempt,
                error = %failure.message, "job failed; dead-lettered"
            );
        }
        self.write_outcome(job, "recording the failure", || async {
            if retry {
                self.backend
                    .retry(&self.owner, &job.lease, delay, &failure.message)
                    .await
            } else {
                self.backend
                    .dead_letter(&self.owner, &job.lease, &failure.message)
                    .await
            }
        })
        .await;
        if retry { "retried" } else { "dead" }
    }

    /// Puts a job off for `delay` without counting its attempt. A backend that cannot give
    /// attempts back retries it instead (the attempt counts), and says so in the log. When
    /// the write keeps failing the lease is left to lapse, as for a failure.
    async fn snooze(&self, job: &RunningJob, delay: Duration, message: &str) -> &'static str {
        tracing::debug!(
            job.name = job.name, job.id = %job.lease.id, job.attempt = job.attempt,
            snooze_ms = delay.as_millis() as u64, "job snoozed"
        );
        self.write_outcome(job, "snoozing the job", || async {
            match self.backend.snooze(&self.owner, &job.lease, delay).await {
                Err(QueueError::UnsupportedByBackend { backend, .. }) => {
                    tracing::warn!(
                        job.name = job.name, job.id = %job.lease.id, backend,
                        "this backend cannot snooze a job; retrying it, and the attempt counts"
                    );
                    self.backend
                        .retry(&self.owner, &job.lease, delay, message)
                        .await
                }
                written => written,
            }
        })
        .await;
        "snoozed"
    }

    /// Writes a job's outcome with `write`, trying a few times while it fails, then stops
    /// holding the job; when every try failed, its lease lapses and recovery counts the attempt.
    async fn write_outcome<F, Fut>(&self, job: &RunningJob, what: &str, write: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(), QueueError>>,
    {
        self.settling(&job.lease);
        for attempt in 1..=RECORD_ATTEMPTS {
            match write().await {
                Ok(()) => break,
                Err(error) if attempt < RECORD_ATTEMPTS => {
                    tracing::warn!(job.id = %job.lease.id, %error, "{what} failed; trying again");
                    tokio::time::sleep(RECORD_RETRY_PAUSE).await;
                }
                Err(error) => tracing::error!(
                    job.id = %job.lease.id, %error,
                    "{what} failed; the job's lease is left to run out, and the attempt counts"
                ),
            }
        }
        self.settle(&job.lease);
    }

    /// Gives a job back at once without counting the attempt.
    async fn release_now(&self, job: &RunningJob) -> &'static str {
        self.settling(&job.lease);
        match self
            .backend
            .release(&self.owner, std::slice::from_ref(&job.lease))
            .await
        {
            Ok(()) => {
                self.settle(&job.lease);
                metrics::counter!("anb_queue_jobs_released_total").increment(1);
            }
            // Still held: released again when the runtime closes.
            Err(error) => {
                tracing::warn!(job.id = %job.lease.id, %error, "releasing the job failed")
            }
        }
        "released"
    }

    /// Gives back a claimed job this worker has no handler for.
    pub(crate) async fn release_stranger(&self, job: &ClaimedJob) {
        tracing::warn!(job.name = %job.name, job.id = %job.id, "no handler for this job here; releasing it");
        let lease = job.lease();
        if let Err(error) = self
            .backend
            .release(&self.owner, std::slice::from_ref(&lease))
            .await
        {
            tracing::warn!(%error, "releasing a job without handler failed; its lease will expire");
        }
        self.settle(&lease);
        metrics::counter!("anb_queue_jobs_total", "job" => "unknown", "outcome" => "released")
            .increment(1);
    }

    /// Waits until every completion sent so far is recorded.
    pub(crate) async fn flush_completions(&self) {
        let (flushed, on_flushed) = oneshot::channel();
        if self.completions.send(Completion::Flush(flushed)).is_ok() {
            let _ = on_flushed.await;
        }
    }

    /// Closes the runtime (later claims give back their own jobs) and releases every job it
    /// still holds, without counting their attempts.
    pub(crate) async fn release_unfinished(&self) -> Result<usize, QueueError> {
        let unfinished: Vec<Lease> = {
            let mut held = self.held();
            held.closed = true;
            held.jobs.keys().cloned().collect()
        };
        if unfinished.is_empty() {
            return Ok(0);
        }
        match self.backend.release(&self.owner, &unfinished).await {
            Ok(()) => {
                unfinished.iter().for_each(|lease| self.settle(lease));
                metrics::counter!("anb_queue_jobs_released_total")
                    .increment(unfinished.len() as u64);
                Ok(unfinished.len())
            }
            Err(error) => {
                tracing::error!(%error, "releasing unfinished jobs failed; their leases will expire");
                Err(error)
            }
        }
    }

    /// Starts the completer, the heartbeat and the maintenance (recovery of dead workers'
    /// jobs, queue depth gauges every `stats_interval`). They stop when `stop` fires, the
    /// completer after recording what it was sent.
    pub(crate) fn spawn_background(
        self: &Arc<Self>,
        queue: Queue,
        maintenance: Maintenance,
        stop: CancellationToken,
    ) -> Vec<JoinHandle<()>> {
        let mut handles = Vec::new();
        let completions = self
            .completions_rx
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(completions) = completions {
            handles.push(tokio::spawn(complete_in_batches(
                self.clone(),
                completions,
                stop.clone(),
            )));
        }
        handles.push(tokio::spawn(renew_leases(self.clone(), stop.clone())));
        handles.push(tokio::spawn(maintain(
            self.clone(),
            queue,
            maintenance,
            stop,
        )));
        handles
    }

    /// Renews every held lease once; fires the cancellation of the jobs whose lease is lost.
    async fn renew(&self) {
        let held = self.held_leases();
        if held.is_empty() {
            return;
        }
        match self.backend.renew(&self.owner, &held, self.lease).await {
            Ok(renewal) => {
                let held = self.held();
                // A job settled meanwhile, or whose outcome is being written, was found gone
                // because that write landed first: its handler is done, nothing is lost.
                let lost: Vec<&Lease> = renewal
                    .lost
                    .iter()
                    .filter(|lease| held.jobs.get(lease).is_some_and(|job| !job.settling))
                    .collect();
                if !lost.is_empty() {
                    let ids: Vec<&JobId> = lost.iter().map(|lease| &lease.id).collect();
                    tracing::warn!(jobs = ?ids, "leases lost: another claim may run these jobs");
                }
                let fired = lost
                    .into_iter()
                    .map(|lease| (lease, CancelReason::LeaseLost))
                    .chain(
                        renewal
                            .cancelled
                            .iter()
                            .map(|lease| (lease, CancelReason::Cancelled)),
                    );
                for (lease, reason) in fired {
                    if let Some(job) = held.jobs.get(lease) {
                        job.cancel.fire(reason);
                    }
                }
            }
            Err(error) => tracing::warn!(%error, jobs = held.len(), "renewing leases failed"),
        }
    }
}

pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned());
    format!("handler panicked: {detail}")
}

/// Deletes completed jobs in batches: whatever finished while the previous batch was being
/// written goes in the next one, so the backend sees few requests under load.
async fn complete_in_batches(
    runtime: Arc<LeaseRuntime>,
    mut completions: mpsc::UnboundedReceiver<Completion>,
    stop: CancellationToken,
) {
    const MAX_BATCH: usize = 1000;
    let batching = runtime.backend.completion_batching();
    let mut received = Vec::with_capacity(MAX_BATCH);
    loop {
        let count = tokio::select! {
            count = completions.recv_many(&mut received, MAX_BATCH) => count,
            () = stop.cancelled() => {
                // Record what is already queued, then stop.
                while let Ok(completion) = completions.try_recv() {
                    received.push(completion);
                }
                record_completions(&runtime, &mut received).await;
                return;
            }
        };
        if count == 0 {
            return;
        }
        if let Some((full, linger)) = batching {
            // Top up a partial batch for a moment (a flush or a stop ends the wait).
            let deadline = tokio::time::Instant::now() + linger;
            loop {
                let done = received
                    .iter()
                    .filter(|completion| matches!(completion, Completion::Done(_)))
                    .count();
                let flushing = received
                    .iter()
                    .any(|completion| matches!(completion, Completion::Flush(_)));
                if done % full == 0 || flushing || stop.is_cancelled() {
                    break;
                }
                let missing = full - done % full;
                let more = tokio::time::timeout_at(
                    deadline,
                    completions.recv_many(&mut received, missing),
                );
                if !matches!(more.await, Ok(received) if received > 0) {
                    break;
                }
            }
        }
        record_completions(&runtime, &mut received).await;
    }
}

async fn record_completions(runtime: &LeaseRuntime, received: &mut Vec<Completion>) {
    let mut batch = Vec::new();
    let mut flushes = Vec::new();
    for completion in received.drain(..) {
        match completion {
            Completion::Done(lease) => batch.push(lease),
            Completion::Flush(flushed) => flushes.push(flushed),
        }
    }
    if !batch.is_empty() {
        for attempt in 1..=RECORD_ATTEMPTS {
            match runtime.backend.complete(&runtime.owner, &batch).await {
                Ok(()) => break,
                Err(error) if attempt < RECORD_ATTEMPTS => {
                    tracing::warn!(%error, jobs = batch.len(), "recording completions failed; retrying");
                    tokio::time::sleep(RECORD_RETRY_PAUSE).await;
                }
                Err(error) => {
                    // They ran to an outcome: not released, so their attempt counts when
                    // their leases run out and they run again.
                    tracing::error!(%error, jobs = batch.len(), "recording completions failed; these jobs will run again");
                }
            }
        }
        for lease in &batch {
            runtime.settle(lease);
        }
    }
    for flushed in flushes {
        let _ = flushed.send(());
    }
}

/// Renews the leases of every held job, every third of the lease.
async fn renew_leases(runtime: Arc<LeaseRuntime>, stop: CancellationToken) {
    // The first renewal is a third of a lease after the start, not at once: a heartbeat
    // task scheduled late must not renew a lease its handler has just shortened or let go.
    let period = runtime.lease / 3;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => runtime.renew().await,
            () = stop.cancelled() => return,
        }
    }
}

/// Recovers jobs whose worker died, refreshes the queue depth gauges, and deletes dead jobs
/// past their retention.
async fn maintain(
    runtime: Arc<LeaseRuntime>,
    queue: Queue,
    maintenance: Maintenance,
    stop: CancellationToken,
) {
    // Pruning runs a few times per retention period, at most hourly, first after one period
    // (not at start-up, where many workers may start at once).
    let retention = maintenance.dead_retention;
    let prune_every = retention.map_or(Duration::from_secs(3600), |age| {
        (age / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600))
    });
    let mut prune_ticks =
        tokio::time::interval_at(tokio::time::Instant::now() + prune_every, prune_every);
    prune_ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stats_interval = maintenance
        .stats_interval
        .unwrap_or_else(|| runtime.backend.stats_interval());
    // Expired leases are looked for about twice per lease, so a crashed worker's job waits
    // at most about 1.5 leases.
    let mut recover_ticks = tokio::time::interval((runtime.lease / 2).min(Duration::from_secs(15)));
    recover_ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first refresh comes at a random point of the first interval, not at start-up:
    // workers started together (a scale-out, a deploy) spread their reads instead of sending
    // them at once and at every interval after, and a short burst right after start-up pays
    // for none (on SQS each refresh is two billed requests).
    let first_stats = stats_interval.mul_f64(rand::random::<f64>());
    let mut stats_ticks =
        tokio::time::interval_at(tokio::time::Instant::now() + first_stats, stats_interval);
    stats_ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = recover_ticks.tick() => {
                match runtime.backend.recover_expired().await {
                    Ok(0) => {}
                    Ok(recovered) => {
                        tracing::warn!(recovered, "recovered jobs whose lease expired");
                        metrics::counter!("anb_queue_jobs_recovered_total").increment(recovered);
                    }
                    Err(error) => tracing::warn!(%error, "recovering expired leases failed"),
                }
            }
            _ = stats_ticks.tick() => {
                if let Err(error) = queue.stats().await {
                    tracing::warn!(%error, "reading queue statistics failed");
                }
            }
            _ = prune_ticks.tick(), if retention.is_some() => {
                let age = retention.unwrap_or(DEFAULT_DEAD_RETENTION);
                match runtime.backend.prune_dead(age).await {
                    Ok(0) | Err(QueueError::UnsupportedByBackend { .. }) => {}
                    Ok(pruned) => {
                        tracing::info!(pruned, retention_s = age.as_secs(), "deleted dead jobs past their retention");
                        metrics::counter!("anb_queue_dead_pruned_total").increment(pruned);
                    }
                    Err(error) => tracing::warn!(%error, "pruning dead jobs failed"),
                }
            }
            () = stop.cancelled() => return,
        }
    }
}

/// Runs the shutdown schedule of a grace period: at `grace - margin` cancels every running
/// job with [`CancelReason::Shutdown`], at `grace` aborts the rest. Returns when both are
/// done (callers race it against their handlers finishing).
pub(crate) async fn shutdown_schedule(runtime: &LeaseRuntime, grace: Duration) {
    tokio::time::sleep(grace.saturating_sub(release_margin(grace))).await;
    if runtime.held_count() > 0 {
        tracing::info!(
            running = runtime.held_count(),
            "shutdown grace nearly over; cancelling running jobs"
        );
    }
    runtime.cancel_all(CancelReason::Shutdown);
    tokio::time::sleep(release_margin(grace)).await;
    if runtime.held_count() > 0 {
        tracing::warn!(
            unfinished = runtime.held_count(),
            "shutdown grace period over; aborting and releasing unfinished jobs"
        );
    }
    runtime.abort_all();
}

/// Records a handler's duration.
pub(crate) fn record_duration(name: &'static str, started: Instant) {
    metrics::histogram!("anb_queue_job_duration_seconds", "job" => name)
        .record(started.elapsed().as_secs_f64());
}
