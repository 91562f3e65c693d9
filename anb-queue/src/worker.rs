//! The worker runtime: claims jobs and runs their handlers concurrently; the lease runtime
//! ([`crate::runtime`]) records outcomes, renews leases, recovers jobs of dead workers and
//! applies the shutdown rules.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{FutureExt, future::BoxFuture};
use rand::Rng;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use tower::{BoxError, Layer, Service};

use crate::{
    backend::{ClaimRequest, ClaimedJob, Lease, now_ms},
    error::{JobError, QueueError},
    job::{DEFAULT_QUEUE, Job, JobContext},
    middleware::{JobRequest, JobService, WrapFn, layered, wrap_fn},
    periodic::{self, PeriodicJob},
    queue::Queue,
    rate_limit::{Permits, RateLimit},
    runtime::{Ended, Failure, LeaseRuntime, Maintenance, record_duration, shutdown_schedule},
};

pub(crate) type HandlerFn =
    Arc<dyn Fn(String, JobContext) -> BoxFuture<'static, Result<(), JobError>> + Send + Sync>;

/// A registered handler and what its job type says about running it.
struct Handler {
    name: &'static str,
    queue: &'static str,
    timeout: Option<Duration>,
    run: HandlerFn,
}

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
    handlers: HashMap<&'static str, Handler>,
    name: String,
    concurrency: usize,
    lease: Duration,
    shutdown_grace: Duration,
    backoff: RetryBackoff,
    maintenance: Maintenance,
    timeout: Option<Duration>,
    layers: Vec<WrapFn>,
    periodic: Vec<PeriodicJob>,
    /// Named queues declared with [`Worker::queue`], and their concurrency.
    queues: HashMap<&'static str, usize>,
    /// Global rate limits by named queue ([`Worker::rate_limit`]).
    rate_limits: HashMap<&'static str, RateLimit>,
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
            .field("timeout", &self.timeout)
            .field("dead_retention", &self.maintenance.dead_retention)
            .field("layers", &self.layers.len())
            .field("periodic", &self.periodic)
            .field("queues", &self.queues)
            .field("rate_limits", &self.rate_limits)
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
            maintenance: Maintenance::default(),
            timeout: None,
            layers: Vec::new(),
            periodic: Vec::new(),
            queues: HashMap::new(),
            rate_limits: HashMap::new(),
        }
    }

    /// Names the worker in logs and lease owners.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// How many jobs of the default queue ([`DEFAULT_QUEUE`]) run at once.
    pub fn concurrency(mut self, jobs: usize) -> Self {
        self.concurrency = jobs.max(1);
        self
    }

    /// Runs the jobs of the named queue `queue` (the job types whose [`Job::QUEUE`] it is)
    /// with a concurrency of their own, beside the default queue's: a backlog in one queue
    /// never holds up another's jobs. Each named queue claims on its own, only its job
    /// names, with the indexes the claims already use (jobs are stored by name; the queue a
    /// job runs in is its type's). Declare every queue the registered job types name;
    /// [`Worker::run_until`] refuses a job type whose queue is not declared
    /// ([`QueueError::UndeclaredQueue`]). Declaring [`DEFAULT_QUEUE`] sets
    /// [`Worker::concurrency`].
    ///
    /// On SQS, whose receive cannot choose messages by name, one SQS queue holds one named
    /// queue: open a [`Queue`] on each and run a worker per queue; a worker with several
    /// named queues on SQS is refused ([`QueueError::UnsupportedByBackend`]).
    ///
    /// ```no_run
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize)] struct Transcode { video_id: i64 }
    /// # #[derive(Serialize, Deserialize)] struct Cleanup {}
    /// use anb_queue::{Job, JobContext, Worker};
    ///
    /// impl Job for Transcode {
    ///     const NAME: &'static str = "transcode";
    ///     const QUEUE: &'static str = "media";
    /// }
    /// impl Job for Cleanup {
    ///     const NAME: &'static str = "cleanup";
    ///     const QUEUE: &'static str = "maintenance";
    /// }
    /// # async fn example(queue: anb_queue::Queue) -> Result<(), anb_queue::QueueError> {
    /// // Two transcodes at once, and a cleanup never waits behind them.
    /// Worker::new(queue)
    ///     .queue("media", 2)
    ///     .queue("maintenance", 1)
    ///     .handle(|_job: Transcode, _ctx: JobContext| async move { Ok(()) })
    ///     .handle(|_job: Cleanup, _ctx: JobContext| async move { Ok(()) })
    ///     .run_until(anb_queue::shutdown_signal())
    ///     .await
    /// # }
    /// ```
    pub fn queue(mut self, queue: &'static str, concurrency: usize) -> Self {
        if queue == DEFAULT_QUEUE {
            self.concurrency = concurrency.max(1);
        } else {
            self.queues.insert(queue, concurrency.max(1));
        }
        self
    }

    /// Limits how many jobs of the named queue `queue` (or [`DEFAULT_QUEUE`]) start, across
    /// every worker process that shares the backend: at most `limit.permits()` starts per
    /// window of `limit.period()`. Declaring a queue's limit again replaces it; a limit on a
    /// queue this worker has no handler for does nothing here.
    ///
    /// The windows are fixed: aligned to the Unix epoch by the backend's clock (PostgreSQL's
    /// and Redis's server clock; on SQLite the host's, which every process on the file
    /// shares), each granting at most `permits` starts in all. It is not a sliding window: up
    /// to twice `permits` may start within one period across a window boundary (the end of
    /// one window and the start of the next). The count is of claims, not of handlers
    /// entered: a job counts when its worker claims it, so a retry counts again and a job
    /// claimed and then given back (a shutdown) used its permit. Before each claim the queue's
    /// lane takes as many permits as it has free slots (at most `permits`) and claims at most
    /// that many jobs; what the claim did not use goes back to the window, unless the window
    /// ended meanwhile. A lane with no permit left sleeps until the window ends (at most a
    /// second at a time, to pick up permits other workers gave back), so a limited worker
    /// does not poll faster than an unlimited one; an idle lane takes permits only once a
    /// job is due. Every worker of a queue should declare the same limit: each take is
    /// checked against its own worker's. A limit per process instead (which every backend
    /// offers) is a [`Worker::layer`] of `tower::limit::RateLimitLayer`.
    ///
    /// The count lives in the backend: a table on PostgreSQL and SQLite, a key per window on
    /// Redis. SQS keeps no counter workers could share, so [`Worker::run_until`] refuses a
    /// rate limit there ([`QueueError::UnsupportedByBackend`]) rather than enforce it per
    /// process.
    ///
    /// ```no_run
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize)] struct Notify { user_id: i64 }
    /// use std::time::Duration;
    /// use anb_queue::{Job, JobContext, RateLimit, Worker};
    ///
    /// impl Job for Notify {
    ///     const NAME: &'static str = "notify";
    ///     const QUEUE: &'static str = "mail";
    /// }
    /// # async fn example(queue: anb_queue::Queue) -> Result<(), anb_queue::QueueError> {
    /// // However many workers run, at most 10 mails start per second.
    /// Worker::new(queue)
    ///     .queue("mail", 4)
    ///     .rate_limit("mail", RateLimit::per(10, Duration::from_secs(1)))
    ///     .handle(|_job: Notify, _ctx: JobContext| async move { Ok(()) })
    ///     .run_until(anb_queue::shutdown_signal())
    ///     .await
    /// # }
    /// ```
    pub fn rate_limit(mut self, queue: &'static str, limit: RateLimit) -> Self {
        self.rate_limits.insert(queue, limit);
        self
    }

    /// How long a job stays leased without a heartbeat. The worker renews leases every third
    /// of this; a crashed worker's jobs are redelivered once it runs out.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(300));
        self
    }

    /// How long running jobs get to finish after shutdown begins (default 30 s).
    ///
    /// When shutdown begins the worker stops claiming and handlers are told so
    /// ([`JobContext::is_shutting_down`]) but go on. Near the end of the grace (a margin of
    /// a quarter of it, at most 5 s) the handlers still running are cancelled
    /// ([`JobContext::cancelled`], [`CancelReason::Shutdown`](crate::CancelReason)); at its
    /// end the rest are aborted. Both kinds are released back to the queue without counting
    /// the attempt.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// How long one attempt of a job may run, for job types without their own
    /// [`Job::TIMEOUT`] (default: no limit). On timeout the handler is cancelled with
    /// [`CancelReason::Timeout`](crate::CancelReason), aborted a moment later if it has not
    /// returned, and the attempt fails retryably with "timed out after …".
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How retries are spaced.
    pub fn retry_backoff(mut self, backoff: RetryBackoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// How often queue depth gauges are refreshed (default: every 15 s; every 60 s on SQS,
    /// where each refresh is two billed requests and the counts are approximate). The first
    /// refresh comes at a random point of the first interval, so workers started together
    /// do not read together.
    pub fn stats_interval(mut self, interval: Duration) -> Self {
        self.maintenance.stats_interval = Some(interval.max(Duration::from_millis(100)));
        self
    }

    /// How long dead jobs are kept before this worker deletes them (default: 7 days;
    /// `None` keeps them until [`Queue::prune_dead`]). Pruning runs a few times per
    /// period, at most hourly; backends that cannot prune (SQS, whose dead-letter queue
    /// expires messages by its retention period) skip it.
    pub fn dead_retention(mut self, retention: Option<Duration>) -> Self {
        self.maintenance.dead_retention = retention;
        self
    }

    /// Wraps every handler of this worker in a [tower] layer (middleware: a concurrency or
    /// rate limit across its handlers, a timeout, tracing). The first layer added is the
    /// outermost. A handler's own [`JobError`] passes through the layers unchanged; any
    /// other error a layer returns fails the attempt retryably. See [`crate::middleware`].
    ///
    /// ```no_run
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize)] struct Resize { image: String }
    /// # impl anb_queue::Job for Resize { const NAME: &'static str = "resize"; }
    /// # async fn example(queue: anb_queue::Queue) -> Result<(), anb_queue::QueueError> {
    /// use std::time::Duration;
    /// use anb_queue::{JobContext, Worker};
    ///
    /// Worker::new(queue)
    ///     .concurrency(16)
    ///     // However many jobs run, at most 2 resizes talk to the image service at once.
    ///     .layer(tower::limit::ConcurrencyLimitLayer::new(2))
    ///     .handle(|job: Resize, _ctx: JobContext| async move { Ok(()) })
    ///     .run_until(anb_queue::shutdown_signal())
    ///     .await
    /// # }
    /// ```
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<JobService> + Send + Sync + 'static,
        L::Service: Service<JobRequest, Response = ()> + Clone + Send + Sync + 'static,
        <L::Service as Service<JobRequest>>::Error: Into<BoxError>,
        <L::Service as Service<JobRequest>>::Future: Send + 'static,
    {
        self.layers.push(wrap_fn(layer));
        self
    }

    /// Registers the handler of job type `J` (named by the closure's argument type).
    ///
    /// A handler's error decides the job's fate: a retryable [`JobError`] (what `?` gives)
    /// retries it with backoff until [`Job::MAX_ATTEMPTS`], then dead-letters it; a permanent
    /// one dead-letters it at once; [`JobError::snooze`] puts the job off without counting
    /// the attempt. A panic counts as a retryable error. A payload that no longer
    /// deserializes is dead-lettered.
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
        self.handlers.insert(
            J::NAME,
            Handler {
                name: J::NAME,
                queue: J::QUEUE,
                timeout: J::TIMEOUT,
                run: erased,
            },
        );
        self
    }

    /// Enqueues a job at every tick of a schedule while this worker runs (see
    /// [`PeriodicJob`]). Every worker that registers it enqueues each tick, and a unique key
    /// per tick lets only the first through, so a tick runs once however many workers there
    /// are; the job then runs like any other, on whichever worker claims it (register its
    /// handler with [`Worker::handle`] as usual). A periodic job with the name of one
    /// registered before replaces it.
    ///
    /// The scheduler starts with the worker and stops when shutdown begins. It never replays
    /// the ticks that passed while it was not running (at most the latest one, with
    /// [`CatchUp::Latest`](crate::CatchUp::Latest)); when the host stalls past a tick it
    /// enqueues only the latest one due; an enqueue that fails is retried with backoff until
    /// the next tick comes due.
    ///
    /// Periodic jobs need unique keys: on a backend without them (SQS)
    /// [`Worker::run_until`] returns [`QueueError::UnsupportedByBackend`] before claiming
    /// anything.
    ///
    /// ```no_run
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize)] struct Cleanup {}
    /// # impl anb_queue::Job for Cleanup { const NAME: &'static str = "cleanup"; }
    /// # async fn example(queue: anb_queue::Queue) -> Result<(), anb_queue::QueueError> {
    /// use std::time::Duration;
    /// use anb_queue::{JobContext, PeriodicJob, Schedule, Worker};
    ///
    /// Worker::new(queue)
    ///     .handle(|_job: Cleanup, _ctx: JobContext| async move { Ok(()) })
    ///     .periodic(PeriodicJob::new(Schedule::every(Duration::from_secs(300)), |_tick| Cleanup {}))
    ///     .run_until(anb_queue::shutdown_signal())
    ///     .await
    /// # }
    /// ```
    pub fn periodic(mut self, job: PeriodicJob) -> Self {
        self.periodic
            .retain(|registered| registered.periodic_name() != job.periodic_name());
        self.periodic.push(job);
        self
    }

    /// Runs until `shutdown` completes, then stops claiming, lets running jobs finish within
    /// the grace period, releases the rest and returns.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), QueueError> {
        if self.handlers.is_empty() {
            return Err(QueueError::NoHandlers);
        }
        if !self.periodic.is_empty() {
            periodic::check_supported(&self.queue)?;
        }
        if let Some(handler) = self.handlers.values().find(|handler| {
            handler.queue != DEFAULT_QUEUE && !self.queues.contains_key(handler.queue)
        }) {
            return Err(QueueError::UndeclaredQueue {
                queue: handler.queue,
                job: handler.name,
            });
        }
        if !self.rate_limits.is_empty() && !self.queue.backend().supports_global_rate_limit() {
            return Err(self.queue.backend().unsupported("a global rate limit"));
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

/// What the claim loop and the job tasks share.
struct Shared {
    runtime: Arc<LeaseRuntime>,
    handlers: HashMap<&'static str, Handler>,
    /// The worker's timeout, for jobs without their own [`Job::TIMEOUT`].
    timeout: Option<Duration>,
}

struct Runtime {
    shared: Arc<Shared>,
    lanes: Vec<Lane>,
    shutdown_grace: Duration,
    maintenance: Maintenance,
    queue: Queue,
    periodic: Vec<PeriodicJob>,
}

impl Runtime {
    async fn start(worker: Worker) -> Result<Self, QueueError> {
        let backend = worker.queue.backend().clone();
        let mut lanes: Vec<Lane> = Vec::new();
        for handler in worker.handlers.values() {
            match lanes.iter_mut().find(|lane| lane.queue == handler.queue) {
                Some(lane) => lane.names.push(handler.name),
                None => lanes.push(Lane {
                    queue: handler.queue,
                    names: vec![handler.name],
                    concurrency: worker
                        .queues
                        .get(handler.queue)
                        .copied()
                        .unwrap_or(worker.concurrency),
                    rate_limit: worker.rate_limits.get(handler.queue).copied(),
                }),
            }
        }
        for lane in &mut lanes {
            lane.names.sort_unstable();
        }
        lanes.sort_unstable_by_key(|lane| lane.queue);
        if lanes.len() > 1 && !backend.claims_by_name() {
            return Err(backend.unsupported("several named queues in one worker"));
        }
        let owner = format!("{}-{}", worker.name, uuid::Uuid::new_v4());
        Ok(Self {
            shared: Arc::new(Shared {
                runtime: LeaseRuntime::new(backend, owner, worker.lease, worker.backoff),
                handlers: if worker.layers.is_empty() {
                    worker.handlers
                } else {
                    worker
                        .handlers
                        .into_iter()
                        .map(|(name, handler)| {
                            let run = layered(handler.run, &worker.layers);
                            (name, Handler { run, ..handler })
                        })
                        .collect()
                },
                timeout: worker.timeout,
            }),
            lanes,
            shutdown_grace: worker.shutdown_grace,
            maintenance: worker.maintenance,
            queue: worker.queue,
            periodic: worker.periodic,
        })
    }

    async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), QueueError> {
        let shared = self.shared.clone();
        let runtime = shared.runtime.clone();
        let backend = runtime.backend.clone();
        let signal = backend.subscribe().await?;
        let queues: Vec<String> = self
            .lanes
            .iter()
            .map(|lane| {
                format!(
                    "{} ({} at once): {}",
                    lane.queue,
                    lane.concurrency,
                    lane.names.join(", ")
                )
            })
            .collect();
        tracing::info!(owner = %runtime.owner, ?queues, "worker started");

        let background = CancellationToken::new();
        let handles =
            runtime.spawn_background(self.queue.clone(), self.maintenance, background.clone());
        // Stopped as soon as shutdown begins: no tick is enqueued by a worker going away.
        let schedulers_stop = CancellationToken::new();
        let schedulers = periodic::spawn_schedulers(
            std::mem::take(&mut self.periodic),
            &self.queue,
            &schedulers_stop,
        );

        let tasks = Arc::new(std::sync::Mutex::new(JoinSet::new()));
        let stop = CancellationToken::new();
        let lanes = std::mem::take(&mut self.lanes);
        let claiming = futures::future::join_all(lanes.into_iter().map(|lane| {
            claim_loop(
                shared.clone(),
                lane,
                signal.clone(),
                stop.clone(),
                self.queue.poll_counter().clone(),
                tasks.clone(),
            )
        }));
        tokio::join!(claiming, async {
            shutdown.await;
            stop.cancel();
        });
        let mut tasks = std::mem::take(&mut *lock(&tasks));
        // Stop claiming; running handlers go on through the grace period, told only that
        // shutdown began, and are cancelled near its end (see `LeaseRuntime`).
        tracing::info!(owner = %runtime.owner, running = tasks.len(), "worker stopping");
        schedulers_stop.cancel();
        runtime.begin_shutdown();
        let schedule = shutdown_schedule(&runtime, self.shutdown_grace);
        tokio::pin!(schedule);
        let mut schedule_done = false;
        loop {
            tokio::select! {
                joined = tasks.join_next() => if joined.is_none() { break },
                () = &mut schedule, if !schedule_done => schedule_done = true,
                // Aborted handlers release their jobs at once; a task stuck past that is
                // cut off, and what it held is released below.
                () = tokio::time::sleep(Duration::from_secs(30)), if schedule_done => {
                    tasks.abort_all();
                    while tasks.join_next().await.is_some() {}
                    break;
                }
            }
        }
        // Flush completions first, so only truly unfinished jobs are released.
        runtime.flush_completions().await;
        let outcome = runtime.release_unfinished().await;
        background.cancel();
        for handle in handles.into_iter().chain(schedulers) {
            let _ = handle.await;
        }
        tracing::info!(owner = %runtime.owner, released = outcome.as_ref().copied().unwrap_or(0), "worker stopped");
        outcome.map(drop)
    }
}

/// A named queue of a worker ([`Worker::queue`]): the job names it claims, and how many of
/// them run at once.
#[derive(Debug)]
struct Lane {
    queue: &'static str,
    names: Vec<&'static str>,
    concurrency: usize,
    /// The queue's global rate limit ([`Worker::rate_limit`]).
    rate_limit: Option<RateLimit>,
}

/// The running tasks of every lane, spawned by their claim loops.
type Tasks = Arc<std::sync::Mutex<JoinSet<()>>>;

fn lock(tasks: &Tasks) -> std::sync::MutexGuard<'_, JoinSet<()>> {
    tasks
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Claims the jobs of one lane while it has free slots, until `stop`, and spawns each into
/// `tasks`.
async fn claim_loop(
    shared: Arc<Shared>,
    lane: Lane,
    mut signal: crate::backend::WorkSignal,
    stop: CancellationToken,
    polls: Arc<crate::stats::PollCounter>,
    tasks: Tasks,
) {
    let runtime = &shared.runtime;
    let backend = runtime.backend.clone();
    let poll_interval = backend.idle_poll_interval();
    let slots = Arc::new(Semaphore::new(lane.concurrency));
    tracing::debug!(queue = lane.queue, jobs = ?lane.names, concurrency = lane.concurrency, rate_limit = ?lane.rate_limit, "claiming");
    // Whether the last claim found nothing: a rate-limited lane then takes permits only once
    // a job is due, so an idle lane does not take (and give back) permits at every poll.
    let mut idle = false;
    loop {
        while lock(&tasks).try_join_next().is_some() {}
        let first = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = stop.cancelled() => break,
        };
        let mut permits = gather_slots(&slots, first, lane.concurrency).await;
        // Mark the signal seen before claiming: a wake-up during the claim is not lost.
        signal.borrow_and_update();
        let mut taken: Option<Permits> = None;
        if let Some(limit) = lane.rate_limit {
            if idle {
                let next_due = backend.next_due_in(&lane.names).await;
                if !matches!(next_due, Ok(Some(due)) if due.is_zero()) {
                    drop(permits);
                    polls.checked_due();
                    let wait = idle_wait(next_due, poll_interval);
                    if wait_for_work(&mut signal, wait, &stop).await {
                        break;
                    }
                    continue;
                }
            }
            let want = u32::try_from(permits.len())
                .unwrap_or(u32::MAX)
                .min(limit.permits());
            match backend.take_permits(lane.queue, want, limit).await {
                Ok(granted) if granted.granted == 0 => {
                    drop(permits);
                    // Until the window ends, or a second to pick up permits given back.
                    let wait = granted
                        .window_ends_in
                        .clamp(MIN_IDLE_WAIT, RATE_LIMITED_RECHECK);
                    tracing::trace!(queue = lane.queue, ?wait, "rate limit reached");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => continue,
                        () = stop.cancelled() => break,
                    }
                }
                Ok(granted) => {
                    permits.truncate(granted.granted as usize);
                    taken = Some(granted);
                }
                Err(error) => {
                    tracing::warn!(%error, queue = lane.queue, "taking rate limit permits failed; retrying in 1 s");
                    drop(permits);
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        () = stop.cancelled() => break,
                    }
                }
            }
        }
        let request = ClaimRequest {
            names: &lane.names,
            max: permits.len(),
            owner: &runtime.owner,
            lease: runtime.lease,
        };
        // Raced against shutdown: a broker's claim may long-poll for many seconds.
        let claim = backend.claim(request);
        tokio::pin!(claim);
        let claim = tokio::select! {
            claim = &mut claim => claim,
            () = stop.cancelled() => {
                // A quick claim may finish: its jobs go back at once rather than wait
                // for their leases to run out. A long poll is abandoned (the backend
                // gives back what it still receives).
                if let Ok(Ok(claimed)) = tokio::time::timeout(Duration::from_secs(1), claim).await {
                    let leases: Vec<Lease> = claimed.iter().map(ClaimedJob::lease).collect();
                    if !leases.is_empty() && let Err(error) = backend.release(&runtime.owner, &leases).await {
                        tracing::warn!(%error, "releasing jobs claimed during shutdown failed; their leases will expire");
                    }
                }
                break;
            }
        };
        if let Some(taken) = taken {
            let used = claim.as_ref().map_or(0, Vec::len);
            let unused = taken
                .granted
                .saturating_sub(u32::try_from(used).unwrap_or(u32::MAX));
            if unused > 0
                && let Err(error) = backend.return_permits(lane.queue, taken, unused).await
            {
                tracing::warn!(%error, queue = lane.queue, unused, "giving back unused rate limit permits failed; they are lost for this window");
            }
        }
        let claimed = match claim {
            Ok(claimed) => {
                polls.claimed(claimed.len());
                idle = claimed.is_empty();
                claimed
            }
            Err(error) => {
                tracing::warn!(%error, "claiming jobs failed; retrying in 1 s");
                drop(permits);
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = stop.cancelled() => break,
                }
            }
        };
        if claimed.is_empty() {
            drop(permits);
            polls.checked_due();
            let wait = idle_wait(backend.next_due_in(&lane.names).await, poll_interval);
            if wait_for_work(&mut signal, wait, &stop).await {
                break;
            }
            continue;
        }
        let claimed = runtime.discard_cancelled(claimed).await;
        runtime.hold(&claimed);
        for (job, permit) in claimed.into_iter().zip(permits) {
            lock(&tasks).spawn(run_job(shared.clone(), job, permit));
        }
    }
}

/// Waits for a wake-up, at most `wait`; `true` when `stop` fired instead.
async fn wait_for_work(
    signal: &mut crate::backend::WorkSignal,
    wait: Duration,
    stop: &CancellationToken,
) -> bool {
    tokio::select! {
        changed = signal.changed() => {
            if changed.is_err() {
                // The wake-up source is gone; fall back to polling.
                tokio::time::sleep(wait).await;
            }
            false
        }
        () = tokio::time::sleep(wait) => false,
        () = stop.cancelled() => true,
    }
}

/// The longest a lane whose rate limit is used up sleeps before asking again: permits that
/// other workers' claims did not use come back to the window.
const RATE_LIMITED_RECHECK: Duration = Duration::from_secs(1);

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

async fn run_job(shared: Arc<Shared>, job: ClaimedJob, permit: OwnedSemaphorePermit) {
    let runtime = &shared.runtime;
    let Some(handler) = shared.handlers.get(job.name.as_str()) else {
        // SQL backends only hand out registered names; a broker queue shared by several job
        // types cannot filter, so give the job back for a worker that handles it.
        drop(permit);
        runtime.release_stranger(&job).await;
        return;
    };
    let name = handler.name;
    let span =
        tracing::info_span!("job", job.name = name, job.id = %job.id, job.attempt = job.attempt);
    let waited_ms = now_ms().saturating_sub(job.enqueued_at_ms).max(0);
    metrics::histogram!("anb_queue_job_wait_seconds", "job" => name)
        .record(waited_ms as f64 / 1000.0);
    let (running, ctx) = runtime.start(&job, name, handler.timeout.or(shared.timeout));
    let started = Instant::now();
    let ended = runtime
        .run_handler(&running, (handler.run)(job.payload, ctx))
        .instrument(span.clone())
        .await;
    record_duration(name, started);
    // The slot frees as soon as the handler is done; settling goes on meanwhile.
    drop(permit);
    let ended = match ended {
        Ended::Returned(Ok(result)) => Ended::Returned(Ok(result.map_err(Failure::from))),
        Ended::Returned(Err(panic)) => Ended::Returned(Err(panic)),
        Ended::Aborted => Ended::Aborted,
    };
    let outcome = runtime.finish(&running, ended).instrument(span).await;
    metrics::counter!("anb_queue_jobs_total", "job" => name, "outcome" => outcome).increment(1);
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
