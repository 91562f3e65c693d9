//! The worker runtime: claims jobs, runs their handlers concurrently, records outcomes,
//! renews leases, recovers jobs of dead workers and shuts down gracefully.

use std::{
    any::Any,
    collections::{HashMap, HashSet},
    fmt,
    future::Future,
    panic::AssertUnwindSafe,
    pin::pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{FutureExt, future::BoxFuture};
use rand::Rng;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    backend::{ClaimRequest, ClaimedJob, JobId, SharedBackend},
    error::{JobError, QueueError},
    job::{Job, JobContext},
    queue::Queue,
    sqlite::now_ms,
};

type HandlerFn =
    Arc<dyn Fn(String, JobContext) -> BoxFuture<'static, Result<(), JobError>> + Send + Sync>;

/// How failed attempts are spaced: exponential backoff with jitter.
///
/// The wait after attempt `n` is `base × 2^(n-1)`, capped at `max`, then drawn uniformly from
/// its upper half, so retries of jobs that failed together spread out.
#[derive(Debug, Clone, Copy)]
pub struct RetryBackoff {
    /// The wait after the first failure (before jitter).
    pub base: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Default for RetryBackoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            max: Duration::from_secs(600),
        }
    }
}

impl RetryBackoff {
    /// The wait before retrying after failed attempt `attempt` (from 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(31);
        let full = self
            .base
            .saturating_mul(1u32 << exponent)
            .min(self.max)
            .max(Duration::from_millis(1));
        let half = full / 2;
        let jitter_ms = rand::rng().random_range(0..=half.as_millis().max(1) as u64);
        half + Duration::from_millis(jitter_ms)
    }
}

/// Runs the handlers of a queue's jobs.
///
/// ```no_run
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] struct Resize { image: String }
/// # impl anb_queue::Job for Resize { const NAME: &'static str = "resize"; }
/// # async fn example(queue: anb_queue::Queue) -> Result<(), anb_queue::QueueError> {
/// use anb_queue::{JobContext, JobError, Worker};
///
/// Worker::new(queue)
///     .concurrency(4)
///     .handle(|job: Resize, _ctx: JobContext| async move {
///         if job.image.is_empty() {
///             return Err(JobError::permanent("no image"));
///         }
///         Ok(())
///     })
///     .run_until(anb_queue::shutdown_signal())
///     .await
/// # }
/// ```
pub struct Worker {
    queue: Queue,
    handlers: HashMap<&'static str, HandlerFn>,
    name: String,
    concurrency: usize,
    lease: Duration,
    shutdown_grace: Duration,
    backoff: RetryBackoff,
    stats_interval: Duration,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.name)
            .field("jobs", &self.handlers.keys().collect::<Vec<_>>())
            .field("concurrency", &self.concurrency)
            .field("lease", &self.lease)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker for `queue`, with defaults: 16 concurrent jobs, 30 s leases renewed every
    /// 10 s, 30 s shutdown grace, retries after 1 s doubling up to 10 min.
    pub fn new(queue: Queue) -> Self {
        Self {
            queue,
            handlers: HashMap::new(),
            name: "worker".to_owned(),
            concurrency: 16,
            lease: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            backoff: RetryBackoff::default(),
            stats_interval: Duration::from_secs(15),
        }
    }

    /// Names the worker in logs and lease owners.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// How many jobs run at once.
    pub fn concurrency(mut self, jobs: usize) -> Self {
        self.concurrency = jobs.max(1);
        self
    }

    /// How long a job stays leased without a heartbeat. The worker renews leases every third
    /// of this; a crashed worker's jobs are redelivered once it runs out.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(300));
        self
    }

    /// How long running jobs get to finish after shutdown begins; the rest are released
    /// back to the queue without counting the attempt.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// How retries are spaced.
    pub fn retry_backoff(mut self, backoff: RetryBackoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// How often queue depth gauges are refreshed.
    pub fn stats_interval(mut self, interval: Duration) -> Self {
        self.stats_interval = interval.max(Duration::from_millis(100));
        self
    }

    /// Registers the handler of job type `J` (named by the closure's argument type).
    ///
    /// A handler's error decides the job's fate: a retryable [`JobError`] (what `?` gives)
    /// retries it with backoff until [`Job::MAX_ATTEMPTS`], then dead-letters it; a permanent
    /// one dead-letters it at once. A panic counts as a retryable error. A payload that no
    /// longer deserializes is dead-lettered.
    pub fn handle<J, F, Fut>(mut self, handler: F) -> Self
    where
        J: Job,
        F: Fn(J, JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), JobError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let erased: HandlerFn = Arc::new(move |payload: String, ctx: JobContext| {
            match serde_json::from_str::<J>(&payload) {
                Ok(job) => handler(job, ctx).boxed(),
                Err(error) => {
                    let error = JobError::permanent(format!(
                        "payload does not deserialize as {}: {error}",
                        J::NAME
                    ));
                    async move { Err(error) }.boxed()
                }
            }
        });
        self.handlers.insert(J::NAME, erased);
        self
    }

    /// Runs until `shutdown` completes, then stops claiming, lets running jobs finish within
    /// the grace period, releases the rest and returns.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), QueueError> {
        if self.handlers.is_empty() {
            return Err(QueueError::NoHandlers);
        }
        let runtime = Runtime::start(self).await?;
        runtime.run(shutdown).await
    }
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM: pass it to [`Worker::run_until`].
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// State shared by the claim loop, the job tasks and the background tasks.
struct Shared {
    backend: SharedBackend,
    handlers: HashMap<&'static str, HandlerFn>,
    names: Vec<&'static str>,
    owner: String,
    lease: Duration,
    backoff: RetryBackoff,
    /// Jobs leased to this worker and not yet settled in the backend.
    in_flight: Mutex<HashSet<JobId>>,
    /// Fired when shutdown begins, so handlers can notice.
    stopping: CancellationToken,
}

impl Shared {
    fn settle(&self, id: &JobId) {
        self.in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(id);
    }

    fn in_flight_ids(&self) -> Vec<JobId> {
        self.in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

struct Runtime {
    shared: Arc<Shared>,
    concurrency: usize,
    shutdown_grace: Duration,
    stats_interval: Duration,
    queue: Queue,
}

impl Runtime {
    async fn start(worker: Worker) -> Result<Self, QueueError> {
        let backend = worker.queue.backend().clone();
        let mut names: Vec<&'static str> = worker.handlers.keys().copied().collect();
        names.sort_unstable();
        let owner = format!("{}-{}", worker.name, uuid::Uuid::new_v4());
        Ok(Self {
            shared: Arc::new(Shared {
                backend,
                handlers: worker.handlers,
                names,
                owner,
                lease: worker.lease,
                backoff: worker.backoff,
                in_flight: Mutex::new(HashSet::new()),
                stopping: CancellationToken::new(),
            }),
            concurrency: worker.concurrency,
            shutdown_grace: worker.shutdown_grace,
            stats_interval: worker.stats_interval,
            queue: worker.queue,
        })
    }

    async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), QueueError> {
        let shared = self.shared.clone();
        let mut signal = shared.backend.subscribe().await?;
        tracing::info!(owner = %shared.owner, jobs = ?shared.names, concurrency = self.concurrency, "worker started");

        let background = CancellationToken::new();
        let (completed_tx, completed_rx) = mpsc::unbounded_channel::<JobId>();
        let completer = tokio::spawn(complete_in_batches(shared.clone(), completed_rx));
        let heartbeat = tokio::spawn(renew_leases(shared.clone(), background.clone()));
        let maintenance = tokio::spawn(maintain(
            shared.clone(),
            self.queue.clone(),
            self.stats_interval,
            background.clone(),
        ));

        let slots = Arc::new(Semaphore::new(self.concurrency));
        let mut tasks = JoinSet::new();
        let mut shutdown = pin!(shutdown.fuse());
        let poll_interval = shared.backend.idle_poll_interval();
        let polls = self.queue.poll_counter().clone();

        loop {
            while tasks.try_join_next().is_some() {}
            let first = tokio::select! {
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                () = &mut shutdown => break,
            };
            let permits = gather_slots(&slots, first, self.concurrency).await;
            // Mark the signal seen before claiming: a wake-up during the claim is not lost.
            signal.borrow_and_update();
            let request = ClaimRequest {
                names: &shared.names,
                max: permits.len(),
                owner: &shared.owner,
                lease: shared.lease,
            };
            // Raced against shutdown: a broker's claim may long-poll for many seconds.
            let claim = shared.backend.claim(request);
            tokio::pin!(claim);
            let claim = tokio::select! {
                claim = &mut claim => claim,
                () = &mut shutdown => {
                    // A quick claim may finish: its jobs go back at once rather than wait
                    // for their leases to run out. A long poll is abandoned (the backend
                    // gives back what it still receives).
                    if let Ok(Ok(claimed)) = tokio::time::timeout(Duration::from_secs(1), claim).await {
                        let ids: Vec<JobId> = claimed.into_iter().map(|job| job.id).collect();
                        if !ids.is_empty() && let Err(error) = shared.backend.release(&shared.owner, &ids).await {
                            tracing::warn!(%error, "releasing jobs claimed during shutdown failed; their leases will expire");
                        }
                    }
                    break;
                }
            };
            let claimed = match claim {
                Ok(claimed) => {
                    polls.claimed(claimed.len());
                    claimed
                }
                Err(error) => {
                    tracing::warn!(%error, "claiming jobs failed; retrying in 1 s");
                    drop(permits);
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        () = &mut shutdown => break,
                    }
                }
            };
            if claimed.is_empty() {
                drop(permits);
                polls.checked_due();
                let wait = idle_wait(
                    shared.backend.next_due_in(&shared.names).await,
                    poll_interval,
                );
                tokio::select! {
                    changed = signal.changed() => {
                        if changed.is_err() {
                            // The wake-up source is gone; fall back to polling.
                            tokio::time::sleep(wait).await;
                        }
                    }
                    () = tokio::time::sleep(wait) => {}
                    () = &mut shutdown => break,
                }
                continue;
            }
            {
                let mut in_flight = shared
                    .in_flight
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                in_flight.extend(claimed.iter().map(|job| job.id.clone()));
            }
            for (job, permit) in claimed.into_iter().zip(permits) {
                tasks.spawn(run_job(shared.clone(), job, permit, completed_tx.clone()));
            }
        }

        tracing::info!(owner = %shared.owner, running = tasks.len(), "worker stopping");
        shared.stopping.cancel();
        let grace = tokio::time::sleep(self.shutdown_grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                joined = tasks.join_next() => if joined.is_none() { break },
                () = &mut grace => {
                    tracing::warn!(unfinished = tasks.len(), "shutdown grace period over; releasing unfinished jobs");
                    tasks.abort_all();
                    while tasks.join_next().await.is_some() {}
                    break;
                }
            }
        }
        // Flush completions first, so only truly unfinished jobs are released.
        drop(completed_tx);
        let _ = completer.await;
        let unfinished = shared.in_flight_ids();
        let outcome = release_unfinished(&shared.backend, &shared.owner, &unfinished, |id| {
            shared.settle(id)
        })
        .await;
        background.cancel();
        let _ = heartbeat.await;
        let _ = maintenance.await;
        tracing::info!(owner = %shared.owner, released = unfinished.len(), "worker stopped");
        outcome
    }
}

/// The shortest wait after a claim that found nothing. A job reported due now may be
/// locked by a competing claim for a moment; re-claiming at once would spin.
const MIN_IDLE_WAIT: Duration = Duration::from_millis(10);

/// How long to wait for work after an empty claim, given when the next delayed job is due:
/// at most the poll interval (wake-ups cut it short), at least [`MIN_IDLE_WAIT`].
pub(crate) fn idle_wait(
    next_due: Result<Option<Duration>, QueueError>,
    poll_interval: Duration,
) -> Duration {
    match next_due {
        Ok(Some(due)) => due.min(poll_interval),
        Ok(None) | Err(_) => poll_interval,
    }
    .max(MIN_IDLE_WAIT)
}

/// How long the claim loop waits for more free slots before claiming a small batch.
const BATCH_WINDOW: Duration = Duration::from_millis(2);

/// Collects free slots for one claim. With short jobs, slots free one by one; claiming for
/// each would cost a round trip per job, so wait briefly until half the slots are free.
/// With long jobs the wait is at most `BATCH_WINDOW`, nothing next to the job itself.
async fn gather_slots(
    slots: &Arc<Semaphore>,
    first: OwnedSemaphorePermit,
    concurrency: usize,
) -> Vec<OwnedSemaphorePermit> {
    let target = concurrency.div_ceil(2);
    let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
    let mut permits = vec![first];
    loop {
        while let Ok(permit) = slots.clone().try_acquire_owned() {
            permits.push(permit);
        }
        if permits.len() >= target {
            return permits;
        }
        match tokio::time::timeout_at(deadline, slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permits.push(permit),
            _ => return permits,
        }
    }
}

async fn run_job(
    shared: Arc<Shared>,
    job: ClaimedJob,
    permit: OwnedSemaphorePermit,
    completed: mpsc::UnboundedSender<JobId>,
) {
    let Some((&name, handler)) = shared.handlers.get_key_value(job.name.as_str()) else {
        // SQL backends only hand out registered names; a broker queue shared by several job
        // types cannot filter, so give the job back for a worker that handles it.
        tracing::warn!(job.name = %job.name, job.id = %job.id, "no handler for this job; releasing it");
        drop(permit);
        if let Err(error) = shared
            .backend
            .release(&shared.owner, std::slice::from_ref(&job.id))
            .await
        {
            tracing::warn!(%error, "releasing a job without handler failed; its lease will expire");
        }
        shared.settle(&job.id);
        metrics::counter!("anb_queue_jobs_total", "job" => "unknown", "outcome" => "released")
            .increment(1);
        return;
    };
    let span =
        tracing::info_span!("job", job.name = name, job.id = %job.id, job.attempt = job.attempt);
    let waited_ms = now_ms().saturating_sub(job.enqueued_at_ms).max(0);
    metrics::histogram!("anb_queue_job_wait_seconds", "job" => name)
        .record(waited_ms as f64 / 1000.0);
    let ctx = JobContext {
        id: job.id.clone(),
        name,
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        owner: shared.owner.clone(),
        lease: shared.lease,
        backend: shared.backend.clone(),
        shutdown: shared.stopping.child_token(),
    };
    let started = Instant::now();
    let result = AssertUnwindSafe(handler(job.payload, ctx))
        .catch_unwind()
        .instrument(span.clone())
        .await
        .unwrap_or_else(|panic| Err(JobError::retryable(panic_message(panic.as_ref()))));
    metrics::histogram!("anb_queue_job_duration_seconds", "job" => name)
        .record(started.elapsed().as_secs_f64());
    // The slot frees as soon as the handler is done; settling goes on in the background.
    drop(permit);

    let outcome = match result {
        Ok(()) => {
            span.in_scope(|| tracing::debug!("job completed"));
            // The completer settles it (in a batch) and takes it out of `in_flight`.
            if completed.send(job.id.clone()).is_ok() {
                "completed"
            } else {
                "released"
            }
        }
        Err(error) => {
            let retry = error.is_retryable() && job.attempt < job.max_attempts;
            let settled = if retry {
                let delay = shared.backoff.delay(job.attempt);
                span.in_scope(|| {
                    tracing::warn!(
                        error = error.message(),
                        retry_in_ms = delay.as_millis() as u64,
                        "job failed; will retry"
                    )
                });
                shared
                    .backend
                    .retry(&shared.owner, &job.id, delay, error.message())
                    .await
            } else {
                span.in_scope(|| {
                    tracing::error!(error = error.message(), "job failed; dead-lettered")
                });
                shared
                    .backend
                    .dead_letter(&shared.owner, &job.id, error.message())
                    .await
            };
            match settled {
                Ok(()) => shared.settle(&job.id),
                Err(error) => span.in_scope(|| {
                    tracing::error!(%error, "recording the failure failed; the lease will expire and the job run again")
                }),
            }
            if retry { "retried" } else { "dead" }
        }
    };
    metrics::counter!("anb_queue_jobs_total", "job" => name, "outcome" => outcome).increment(1);
}

/// Gives the jobs a stopping worker still holds back to the queue, settling each on
/// success; on failure their leases expire and they run again elsewhere.
pub(crate) async fn release_unfinished(
    backend: &SharedBackend,
    owner: &str,
    unfinished: &[JobId],
    settle: impl Fn(&JobId),
) -> Result<(), QueueError> {
    if unfinished.is_empty() {
        return Ok(());
    }
    match backend.release(owner, unfinished).await {
        Ok(()) => {
            unfinished.iter().for_each(settle);
            metrics::counter!("anb_queue_jobs_released_total").increment(unfinished.len() as u64);
            Ok(())
        }
        Err(error) => {
            tracing::error!(%error, "releasing unfinished jobs failed; their leases will expire");
            Err(error)
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
/// written goes in the next one, so the database sees few statements under load.
async fn complete_in_batches(shared: Arc<Shared>, mut completed: mpsc::UnboundedReceiver<JobId>) {
    const MAX_BATCH: usize = 1000;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let batching = shared.backend.completion_batching();
    while completed.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if let Some((full, linger)) = batching {
            // Top up a partial batch for a moment; a closed channel (shutdown) ends the wait.
            let deadline = tokio::time::Instant::now() + linger;
            while batch.len() % full != 0 {
                let missing = full - batch.len() % full;
                let more =
                    tokio::time::timeout_at(deadline, completed.recv_many(&mut batch, missing));
                if !matches!(more.await, Ok(received) if received > 0) {
                    break;
                }
            }
        }
        let mut attempts = 0;
        loop {
            attempts += 1;
            match shared.backend.complete(&shared.owner, &batch).await {
                Ok(()) => break,
                Err(error) if attempts < 3 => {
                    tracing::warn!(%error, jobs = batch.len(), "recording completions failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => {
                    tracing::error!(%error, jobs = batch.len(), "recording completions failed; these jobs will run again");
                    break;
                }
            }
        }
        for id in batch.drain(..) {
            shared.settle(&id);
        }
    }
}

/// Renews the leases of every job this worker holds, every third of the lease.
async fn renew_leases(shared: Arc<Shared>, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(shared.lease / 3);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => return,
        }
        let held = shared.in_flight_ids();
        if held.is_empty() {
            continue;
        }
        if let Err(error) = shared
            .backend
            .extend(&shared.owner, &held, shared.lease)
            .await
        {
            tracing::warn!(%error, jobs = held.len(), "renewing leases failed");
        }
    }
}

/// Recovers jobs whose worker died, and refreshes the queue depth gauges.
async fn maintain(
    shared: Arc<Shared>,
    queue: Queue,
    stats_interval: Duration,
    stop: CancellationToken,
) {
    // Expired leases are looked for about twice per lease, so a crashed worker's job waits
    // at most about 1.5 leases.
    let mut recover_ticks = tokio::time::interval((shared.lease / 2).min(Duration::from_secs(15)));
    recover_ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stats_ticks = tokio::time::interval(stats_interval);
    stats_ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = recover_ticks.tick() => {
                match shared.backend.recover_expired().await {
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
            () = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_jitter_and_caps() {
        let backoff = RetryBackoff {
            base: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        };
        for _ in 0..100 {
            let first = backoff.delay(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = backoff.delay(3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let capped = backoff.delay(30);
            assert!(capped >= Duration::from_millis(500) && capped <= Duration::from_millis(1000));
        }
    }
}
