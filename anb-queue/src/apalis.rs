//! An [apalis](https://github.com/apalis-dev/apalis) 1.x backend over a [`Queue`]: apalis
//! workers, middleware and handlers on any of this crate's engines.
//!
//! [`ApalisBackend<J>`] implements apalis-core's [`Backend`] and [`BackendConfig`] for the jobs
//! of type `J` in a queue, so `WorkerBuilder::new(..).backend(ApalisBackend::<J>::new(queue))`
//! runs jobs enqueued with [`Queue::enqueue`] with apalis's runtime, beside or instead of
//! [`anb_queue::Worker`]s on the same queue. It is also a [`TaskSink`](apalis_core::backend::TaskSink) (through
//! apalis-core's blanket implementation over [`futures::Sink`]), so apalis code can enqueue
//! through it with `push`, `push_bulk` or `push_task`.
//!
//! How apalis's notions map onto the queue:
//!
//! | apalis | anb-queue |
//! |---|---|
//! | handler returns `Ok` | the job is completed (deleted, in batches) |
//! | handler returns any other error, or panics | retried with [`RetryBackoff`] until `J::MAX_ATTEMPTS`, then dead-lettered with the error |
//! | [`AbortError`] (or [`JobError::permanent`]) | dead-lettered at once |
//! | [`RetryAfterError`] | retried after its duration (while attempts remain) |
//! | [`DeferredError`] | retried at once, counting the attempt |
//! | [`Attempt`](apalis_core::task::attempt::Attempt) while the handler runs | the queue's attempt, from 1 |
//! | `TaskBuilder::max_attempts` / `run_after` when pushing | the job's attempts / delay (whole seconds) |
//! | worker stop ([`WorkerContext::stop`]) | no new claims; running jobs finish; claimed jobs not yet started are released |
//!
//! [`anb_queue::Worker`]: crate::Worker

use std::{
    collections::VecDeque,
    fmt,
    marker::PhantomData,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use apalis_core::{
    backend::{
        Backend, BackendConfig, Metrics, ResumeAbandoned, StatType, Statistic, finalize::Ephemeral,
    },
    error::{AbortError, BoxDynError, DeferredError, RetryAfterError},
    layers::{Layer, Service},
    task::{
        Task, builder::TaskBuilder, data::MissingDataError, from_request::FromRequest,
        task_id::TaskId,
    },
    worker::context::WorkerContext,
};
use futures::{FutureExt, Sink, future::BoxFuture};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    backend::{ClaimRequest, ClaimedJob, JobId, Lease, NewJob, WorkSignal, now_ms},
    error::{JobError, QueueError},
    job::{Job, JobContext},
    queue::Queue,
    runtime::{
        Ended, Failure, LeaseRuntime, Maintenance, RunningJob, record_duration, shutdown_schedule,
    },
    stats::PollCounter,
    worker::{RetryBackoff, idle_wait},
};

/// How an [`ApalisBackend`] claims and holds jobs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ApalisConfig {
    /// How long a claimed job stays leased without a heartbeat; leases are renewed every
    /// third of it while jobs run (default 30 s).
    pub lease: Duration,
    /// The most jobs claimed in one round trip (default 10). Claimed jobs wait in the backend
    /// (leased, renewed) until apalis has a free slot for them, so keep this at or below the
    /// worker's `.concurrency(..)`.
    pub batch_size: usize,
    /// How failed attempts are spaced (default: 1 s doubling up to 10 min, with jitter).
    pub retry_backoff: RetryBackoff,
    /// How long running jobs get once the apalis worker begins to stop (default 30 s), as
    /// [`Worker::shutdown_grace`](crate::Worker::shutdown_grace): handlers are told at once,
    /// cancelled with [`CancelReason::Shutdown`](crate::CancelReason) near the end, aborted
    /// at the end, and such jobs are released without counting the attempt.
    pub shutdown_grace: Duration,
    /// How long one attempt may run for job types without their own
    /// [`Job::TIMEOUT`] (default: no limit), as [`Worker::timeout`](crate::Worker::timeout).
    pub timeout: Option<Duration>,
}

impl Default for ApalisConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            batch_size: 10,
            retry_backoff: RetryBackoff::default(),
            shutdown_grace: Duration::from_secs(30),
            timeout: None,
        }
    }
}

/// apalis-core's backend traits over a [`Queue`], for the jobs of type `J`.
///
/// ```no_run
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] struct Transcode { video_id: i64 }
/// # impl anb_queue::Job for Transcode { const NAME: &'static str = "transcode"; }
/// # async fn example(queue: anb_queue::Queue) -> Result<(), Box<dyn std::error::Error>> {
/// use anb_queue::{JobError, apalis::ApalisBackend};
/// use apalis_core::worker::builder::WorkerBuilder;
///
/// async fn transcode(job: Transcode) -> Result<(), JobError> {
///     if job.video_id < 0 {
///         return Err(JobError::permanent("no such video")); // dead-lettered at once
///     }
///     Ok(())
/// }
///
/// WorkerBuilder::new("transcode")
///     .backend(ApalisBackend::<Transcode>::new(queue))
///     .build(transcode)
///     .run()
///     .await?;
/// # Ok(()) }
/// ```
///
/// A clone shares the queue and the configuration but not the claims: give each apalis worker
/// its own clone, and use any clone as a sink.
pub struct ApalisBackend<J> {
    queue: Queue,
    config: ApalisConfig,
    shared: Option<Arc<Shared>>,
    state: State,
    /// Claimed jobs not yet handed to apalis (leased and renewed all the same).
    buffer: VecDeque<ClaimedJob>,
    /// Dead-lettering of undecodable payloads and releases of jobs of other names.
    side_tasks: Vec<JoinHandle<()>>,
    sink_buffer: Vec<NewJob>,
    sink_flush: Option<BoxFuture<'static, Result<(), QueueError>>>,
    _job: PhantomData<fn() -> J>,
}

impl<J> fmt::Debug for ApalisBackend<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApalisBackend")
            .field("job", &std::any::type_name::<J>())
            .field("queue", &self.queue.kind())
            .field("config", &self.config)
            .field(
                "owner",
                &self.shared.as_ref().map(|shared| &shared.runtime.owner),
            )
            .field("state", &self.state)
            .field("buffered", &self.buffer.len())
            .finish_non_exhaustive()
    }
}

impl<J> Clone for ApalisBackend<J> {
    fn clone(&self) -> Self {
        Self::with_config(self.queue.clone(), self.config.clone())
    }
}

impl<J> ApalisBackend<J> {
    /// An apalis backend for the jobs of type `J` in `queue`, with the default configuration.
    pub fn new(queue: Queue) -> Self {
        Self::with_config(queue, ApalisConfig::default())
    }

    /// An apalis backend with the given configuration (a lease of at least 300 ms, batches
    /// of at least one job).
    pub fn with_config(queue: Queue, mut config: ApalisConfig) -> Self {
        config.lease = config.lease.max(Duration::from_millis(300));
        config.batch_size = config.batch_size.max(1);
        Self {
            queue,
            config,
            shared: None,
            state: State::Idle,
            buffer: VecDeque::new(),
            side_tasks: Vec::new(),
            sink_buffer: Vec::new(),
            sink_flush: None,
            _job: PhantomData,
        }
    }

    /// How long a claimed job stays leased without a heartbeat (at least 300 ms).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease.max(Duration::from_millis(300));
        self
    }

    /// The most jobs claimed in one round trip (at least 1).
    pub fn batch_size(mut self, jobs: usize) -> Self {
        self.config.batch_size = jobs.max(1);
        self
    }

    /// How failed attempts are spaced.
    pub fn retry_backoff(mut self, backoff: RetryBackoff) -> Self {
        self.config.retry_backoff = backoff;
        self
    }

    /// How long running jobs get once the worker begins to stop
    /// ([`ApalisConfig::shutdown_grace`]).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.config.shutdown_grace = grace;
        self
    }

    /// How long one attempt may run ([`ApalisConfig::timeout`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = Some(timeout);
        self
    }

    /// The queue this backend runs on.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// The state shared with the acknowledgement middleware, created for the first worker
    /// that uses this backend.
    fn shared_for(&mut self, worker: &WorkerContext) -> Arc<Shared> {
        self.shared
            .get_or_insert_with(|| {
                Arc::new(Shared {
                    runtime: LeaseRuntime::new(
                        self.queue.backend().clone(),
                        format!("{}-{}", worker.name(), uuid::Uuid::new_v4()),
                        self.config.lease,
                        self.config.retry_backoff,
                    ),
                    polls: self.queue.poll_counter().clone(),
                    shutdown_grace: self.config.shutdown_grace,
                })
            })
            .clone()
    }
}

impl<J: Job> ApalisBackend<J> {
    /// Turns a claimed job into an apalis task, or settles it at once when it cannot run here
    /// (another job's name on a broker that cannot filter, or a payload that no longer
    /// deserializes).
    fn task_of(&mut self, shared: &Arc<Shared>, job: ClaimedJob) -> Option<Task<J>> {
        let runtime = shared.runtime.clone();
        if job.name != J::NAME {
            self.side_tasks.push(tokio::spawn(async move {
                runtime.release_stranger(&job).await;
            }));
            return None;
        }
        let (running, context) = runtime.start(&job, J::NAME, J::TIMEOUT.or(self.config.timeout));
        let args = match serde_json::from_str::<J>(&job.payload) {
            Ok(args) => args,
            Err(error) => {
                let message = format!("payload does not deserialize as {}: {error}", J::NAME);
                self.side_tasks.push(tokio::spawn(async move {
                    let failure = Failure {
                        retryable: false,
                        delay: None,
                        message,
                    };
                    let outcome = runtime
                        .finish(&running, Ended::Returned(Ok(Err(failure))))
                        .await;
                    metrics::counter!("anb_queue_jobs_total", "job" => J::NAME, "outcome" => outcome)
                        .increment(1);
                }));
                return None;
            }
        };
        let waited_ms = now_ms().saturating_sub(job.enqueued_at_ms).max(0);
        metrics::histogram!("anb_queue_job_wait_seconds", "job" => J::NAME)
            .record(waited_ms as f64 / 1000.0);
        Some(
            TaskBuilder::new(args)
                .task_id(TaskId::from_string(job.id.0))
                // apalis counts an attempt as the handler starts, so it starts one below.
                .attempt(job.attempt.saturating_sub(1) as usize)
                .max_attempts(job.max_attempts as usize)
                .lock_by(Some(runtime.owner.clone()))
                .data(running)
                .data(context)
                .build(),
        )
    }
}

/// Where a backend is in its life as a worker's task source.
enum State {
    /// Not yet polled by a worker (or only used as a sink).
    Idle,
    /// Subscribing to wake-ups and starting the background tasks.
    Starting(BoxFuture<'static, Result<Session, QueueError>>),
    /// Claiming and handing out jobs.
    Running(Session),
    /// Giving back what was not run and stopping the background tasks (in a task of its
    /// own, so that dropping the worker then cancels no query half-way).
    Closing(JoinHandle<Result<(), QueueError>>),
    /// Done: yields no more jobs.
    Closed,
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Idle => "Idle",
            State::Starting(_) => "Starting",
            State::Running(_) => "Running",
            State::Closing(_) => "Closing",
            State::Closed => "Closed",
        })
    }
}

/// A running worker's claim loop and background tasks.
struct Session {
    signal: WorkSignal,
    fetch: Fetch,
    background: CancellationToken,
    handles: Vec<JoinHandle<()>>,
}

/// The claim loop's step. Queries run in tasks of their own: a worker dropped mid-claim must
/// not cancel a query half-way (sqlx may then lose the connection, and a SQLite queue has
/// only one).
enum Fetch {
    /// Nothing in progress: claim next.
    Idle,
    Claiming(JoinHandle<Result<Vec<ClaimedJob>, QueueError>>),
    /// Nothing was due: wait for a wake-up, the next due job or the poll interval.
    Waiting(BoxFuture<'static, ()>),
}

/// What the worker, its middleware and its background tasks share.
struct Shared {
    runtime: Arc<LeaseRuntime>,
    polls: Arc<PollCounter>,
    shutdown_grace: Duration,
}

/// Starts a worker's session: the wake-up subscription and the background tasks.
async fn start(
    shared: Arc<Shared>,
    worker: WorkerContext,
    queue: Queue,
) -> Result<Session, QueueError> {
    let runtime = &shared.runtime;
    let signal = runtime.backend.subscribe().await?;
    let background = CancellationToken::new();
    let mut handles = runtime.spawn_background(queue, Maintenance::default(), background.clone());
    handles.push(tokio::spawn(watch_stop(
        shared.clone(),
        worker,
        background.clone(),
    )));
    tracing::info!(owner = %runtime.owner, "apalis worker started on anb-queue");
    Ok(Session {
        signal,
        fetch: Fetch::Idle,
        background,
        handles,
    })
}

/// Claims up to `max` jobs and holds them (so the heartbeat renews them). A claim that ends
/// after its session closed (a long poll outliving the worker) gives its jobs back.
async fn claim(
    shared: Arc<Shared>,
    name: &'static str,
    max: usize,
) -> Result<Vec<ClaimedJob>, QueueError> {
    let runtime = &shared.runtime;
    let names = [name];
    let claimed = runtime
        .backend
        .claim(ClaimRequest {
            names: &names,
            max,
            owner: &runtime.owner,
            lease: runtime.lease,
        })
        .await?;
    shared.polls.claimed(claimed.len());
    if runtime.hold(&claimed) {
        return Ok(claimed);
    }
    let leases: Vec<Lease> = claimed.iter().map(ClaimedJob::lease).collect();
    if !leases.is_empty()
        && let Err(error) = runtime.backend.release(&runtime.owner, &leases).await
    {
        tracing::warn!(%error, "releasing jobs claimed during shutdown failed; their leases will expire");
    }
    Ok(Vec::new())
}

/// Waits until new work may be due: a wake-up from the engine, the next delayed job, or the
/// backend's poll interval.
async fn wait_for_work(shared: Arc<Shared>, name: &'static str, mut signal: WorkSignal) {
    let backend = shared.runtime.backend.clone();
    let poll_interval = backend.idle_poll_interval();
    shared.polls.checked_due();
    let next_due = tokio::spawn(async move { backend.next_due_in(&[name]).await });
    let wait = idle_wait(next_due.await.unwrap_or(Ok(None)), poll_interval);
    tokio::select! {
        changed = signal.changed() => {
            if changed.is_err() {
                // The wake-up source is gone; fall back to polling.
                tokio::time::sleep(wait).await;
            }
        }
        () = tokio::time::sleep(wait) => {}
    }
}

/// Ends a session: waits briefly for a claim in progress, records outstanding completions,
/// releases every job still held (claimed but never run) without counting the attempt, and
/// stops the background tasks.
async fn close(
    shared: Arc<Shared>,
    session: Session,
    side_tasks: Vec<JoinHandle<()>>,
) -> Result<(), QueueError> {
    let Session {
        fetch,
        background,
        handles,
        ..
    } = session;
    let stop_background = background.drop_guard();
    let runtime = &shared.runtime;
    runtime.begin_shutdown();
    if let Fetch::Claiming(claim) = fetch {
        // A quick claim may finish, and its jobs are released below; a long poll is left to
        // finish on its own, and gives back what it receives.
        let _ = tokio::time::timeout(Duration::from_secs(1), claim).await;
    }
    for side_task in side_tasks {
        let _ = side_task.await;
    }
    runtime.flush_completions().await;
    let outcome = runtime.release_unfinished().await;
    drop(stop_background);
    for handle in handles {
        let _ = handle.await;
    }
    tracing::info!(owner = %runtime.owner, released = outcome.as_ref().copied().unwrap_or(0), "apalis worker on anb-queue stopped");
    outcome.map(drop)
}

/// apalis signals a stop only through its worker context's state: looks at it often, and
/// once the worker is stopping runs the shutdown rules of the lease runtime (notice now,
/// cancel near the end of the grace, abort at its end).
async fn watch_stop(shared: Arc<Shared>, worker: WorkerContext, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                if worker.is_shutting_down() {
                    break;
                }
            }
            () = stop.cancelled() => return,
        }
    }
    shared.runtime.begin_shutdown();
    tokio::select! {
        () = shutdown_schedule(&shared.runtime, shared.shutdown_grace) => {}
        () = stop.cancelled() => {}
    }
}

impl<J: Job> Backend for ApalisBackend<J> {
    type Task = Task<J>;
    type Error = QueueError;

    fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        loop {
            match &mut self.state {
                State::Idle => {
                    let shared = self.shared_for(worker);
                    self.state =
                        State::Starting(start(shared, worker.clone(), self.queue.clone()).boxed());
                }
                State::Starting(starting) => match starting.poll_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(session)) => self.state = State::Running(session),
                    Poll::Ready(Err(error)) => {
                        self.state = State::Closed;
                        return Poll::Ready(Err(error));
                    }
                },
                State::Running(_) | State::Closing(_) | State::Closed => {
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        match Backend::poll_ready(self, cx, worker) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(error)) => return Poll::Ready(Some(Err(error))),
            Poll::Ready(Ok(())) => {}
        }
        let Some(shared) = self.shared.clone() else {
            return Poll::Ready(None);
        };
        self.side_tasks.retain(|task| !task.is_finished());
        loop {
            if let Some(job) = self.buffer.pop_front() {
                if let Some(task) = self.task_of(&shared, job) {
                    return Poll::Ready(Some(Ok(task)));
                }
                continue;
            }
            let State::Running(session) = &mut self.state else {
                return Poll::Ready(None);
            };
            match &mut session.fetch {
                Fetch::Idle => {
                    // Mark the signal seen before claiming: a wake-up during the claim is not lost.
                    session.signal.borrow_and_update();
                    session.fetch = Fetch::Claiming(tokio::spawn(claim(
                        shared.clone(),
                        J::NAME,
                        self.config.batch_size,
                    )));
                }
                Fetch::Claiming(claiming) => match claiming.poll_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(Ok(claimed))) if claimed.is_empty() => {
                        session.fetch = Fetch::Waiting(
                            wait_for_work(shared.clone(), J::NAME, session.signal.clone()).boxed(),
                        );
                    }
                    Poll::Ready(Ok(Ok(claimed))) => {
                        self.buffer.extend(claimed);
                        session.fetch = Fetch::Idle;
                    }
                    Poll::Ready(Ok(Err(error))) => {
                        // A database or broker blip must not end the apalis worker.
                        tracing::warn!(%error, "claiming jobs failed; retrying in 1 s");
                        session.fetch =
                            Fetch::Waiting(tokio::time::sleep(Duration::from_secs(1)).boxed());
                    }
                    Poll::Ready(Err(error)) => {
                        tracing::error!(%error, "the claim task failed; retrying in 1 s");
                        session.fetch =
                            Fetch::Waiting(tokio::time::sleep(Duration::from_secs(1)).boxed());
                    }
                },
                Fetch::Waiting(waiting) => match waiting.poll_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => session.fetch = Fetch::Idle,
                },
            }
        }
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        loop {
            match std::mem::replace(&mut self.state, State::Closed) {
                State::Idle | State::Closed => return Poll::Ready(Ok(())),
                State::Starting(mut starting) => match starting.poll_unpin(cx) {
                    Poll::Pending => {
                        self.state = State::Starting(starting);
                        return Poll::Pending;
                    }
                    Poll::Ready(Ok(session)) => self.state = State::Running(session),
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                },
                State::Running(session) => {
                    let Some(shared) = self.shared.clone() else {
                        return Poll::Ready(Ok(()));
                    };
                    // Buffered jobs are held: `close` releases them.
                    self.buffer.clear();
                    let side_tasks = std::mem::take(&mut self.side_tasks);
                    self.state = State::Closing(tokio::spawn(close(shared, session, side_tasks)));
                }
                State::Closing(mut closing) => match closing.poll_unpin(cx) {
                    Poll::Pending => {
                        self.state = State::Closing(closing);
                        return Poll::Pending;
                    }
                    Poll::Ready(Ok(outcome)) => return Poll::Ready(outcome),
                    Poll::Ready(Err(error)) => {
                        tracing::error!(%error, "closing the apalis worker's session failed");
                        return Poll::Ready(Ok(()));
                    }
                },
            }
        }
    }
}

impl<J> Drop for ApalisBackend<J> {
    /// A worker dropped without closing (its future cancelled, a monitor's shutdown timeout)
    /// releases the jobs it still holds, in the background, so they need not wait for their
    /// leases to run out. Without a Tokio runtime left to run that, the leases run out.
    fn drop(&mut self) {
        let state = std::mem::replace(&mut self.state, State::Closed);
        let (State::Running(session), Some(shared)) = (state, self.shared.clone()) else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let side_tasks = std::mem::take(&mut self.side_tasks);
                runtime.spawn(async move {
                    let _ = close(shared, session, side_tasks).await;
                });
            }
            Err(_) => session.background.cancel(),
        }
    }
}

impl<J: Job> BackendConfig for ApalisBackend<J> {
    type Args = J;
    type Id = JobId;
    /// Tasks are decoded by the backend itself (a payload that no longer decodes is
    /// dead-lettered, not an error that would end the worker), so apalis uses it as is.
    type Kind = Ephemeral;
    type Config = ApalisConfig;
    type Layer = AckLayer;

    fn config(&self) -> &Self::Config {
        &self.config
    }

    fn middleware(&mut self, worker: &mut WorkerContext) -> Self::Layer {
        AckLayer {
            shared: self.shared_for(worker),
        }
    }
}

/// Records each task's outcome in the queue: the middleware an [`ApalisBackend`] puts
/// around the worker's service (outside the user's own layers, so an in-process `.retry(..)`
/// layer is one attempt here).
#[derive(Clone)]
pub struct AckLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for AckLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AckLayer")
            .field("owner", &self.shared.runtime.owner)
            .finish()
    }
}

impl<S> Layer<S> for AckLayer {
    type Service = AckService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AckService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`AckLayer`].
#[derive(Clone)]
pub struct AckService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> fmt::Debug for AckService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AckService")
            .field("owner", &self.shared.runtime.owner)
            .finish_non_exhaustive()
    }
}

impl<S, Args> Service<Task<Args>> for AckService<S>
where
    S: Service<Task<Args>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxDynError>,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxDynError;
    type Future = BoxFuture<'static, Result<S::Response, BoxDynError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, task: Task<Args>) -> Self::Future {
        let running = task.data().get::<RunningJob>().cloned();
        let handled = self.inner.call(task);
        let shared = self.shared.clone();
        async move {
            let Some(running) = running else {
                // Not a job of ours (pushed into the worker by other means): nothing to record.
                return handled.await.map_err(Into::into);
            };
            let runtime = shared.runtime.clone();
            let started = Instant::now();
            let handled = handled.map(|result| result.map_err(Into::<BoxDynError>::into));
            let ended = runtime.run_handler(&running, handled).await;
            record_duration(running.name, started);
            // The handler's own answer for apalis, and the queue's view of it.
            let (answer, ended) = match ended {
                Ended::Returned(Ok(Ok(response))) => (Ok(response), Ended::Returned(Ok(Ok(())))),
                Ended::Returned(Ok(Err(error))) => {
                    let failure = Failure::of(error.as_ref());
                    (Err(error), Ended::Returned(Ok(Err(failure))))
                }
                Ended::Returned(Err(panic)) => (
                    Err(Box::new(HandlerPanicked(panic.clone())) as BoxDynError),
                    Ended::Returned(Err(panic)),
                ),
                Ended::Aborted => (Err(Box::new(HandlerAborted) as BoxDynError), Ended::Aborted),
            };
            // In a task of its own, so the outcome is recorded even if the worker is dropped
            // meanwhile.
            let name = running.name;
            let outcome = tokio::spawn(async move { runtime.finish(&running, ended).await })
                .await
                .unwrap_or("released");
            metrics::counter!("anb_queue_jobs_total", "job" => name, "outcome" => outcome)
                .increment(1);
            answer
        }
        .boxed()
    }
}

/// A handler's error as the queue records it.
impl Failure {
    fn of(error: &(dyn std::error::Error + 'static)) -> Self {
        if let Some(abort) = error.downcast_ref::<AbortError>() {
            return Self {
                retryable: false,
                delay: None,
                message: describe_cause(abort),
            };
        }
        if let Some(retry_after) = error.downcast_ref::<RetryAfterError>() {
            return Self {
                retryable: true,
                delay: Some(retry_after.get_duration()),
                message: describe_cause(retry_after),
            };
        }
        if let Some(deferred) = error.downcast_ref::<DeferredError>() {
            return Self {
                retryable: true,
                delay: Some(Duration::ZERO),
                message: describe_cause(deferred),
            };
        }
        Self {
            retryable: true,
            delay: None,
            message: describe(error),
        }
    }
}

/// The message of an apalis wrapper error's cause (without the wrapper's own prefix).
fn describe_cause(wrapper: &dyn std::error::Error) -> String {
    wrapper
        .source()
        .map(describe)
        .unwrap_or_else(|| wrapper.to_string())
}

/// An error and its causes, joined with `": "`.
fn describe(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// The error an aborted handler's attempt ends with (cancelled and not returning in time).
#[derive(Debug, thiserror::Error)]
#[error("the handler was aborted after being cancelled")]
struct HandlerAborted;

/// The error a panicking handler's attempt ends with.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct HandlerPanicked(String);

/// A [`JobError`]'s message as a standard error, so it can travel as apalis's `BoxDynError`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct HandlerFailed(String);

/// Lets apalis handlers return `Result<_, JobError>`: a permanent error becomes an
/// [`AbortError`] (dead-lettered at once), a retryable one a plain error (retried).
impl From<JobError> for BoxDynError {
    fn from(error: JobError) -> Self {
        let failed = HandlerFailed(error.message().to_owned());
        if error.is_retryable() {
            Box::new(failed)
        } else {
            Box::new(AbortError::new(failed))
        }
    }
}

/// Lets apalis handlers take the job's [`JobContext`] as an argument (attempt, progress,
/// lease extension, shutdown notice).
impl<Args: Sync> FromRequest<Task<Args>> for JobContext {
    type Error = MissingDataError;

    async fn from_request(task: &Task<Args>) -> Result<Self, Self::Error> {
        task.data().get_checked::<JobContext>().cloned()
    }
}

/// Enqueues apalis tasks as jobs of type `J` (what makes [`ApalisBackend`] a
/// [`TaskSink`](apalis_core::backend::TaskSink)): `push_bulk` and streams are written in
/// batches of up to 1,000, each all or none.
///
/// Kept from the task: its arguments, `max_attempts` (else `J::MAX_ATTEMPTS`) and `run_at`
/// (a delay, in apalis's whole seconds). Ignored: a task id (the queue assigns ids), the
/// priority and metadata. Refused: an idempotency key, which the queue cannot enforce.
impl<J: Job> Sink<Task<J>> for ApalisBackend<J> {
    type Error = QueueError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.sink_buffer.len() >= SINK_BATCH || self.sink_flush.is_some() {
            return Sink::poll_flush(self, cx);
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, task: Task<J>) -> Result<(), Self::Error> {
        let job = new_job(&task)?;
        self.get_mut().sink_buffer.push(job);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        loop {
            if let Some(flush) = &mut this.sink_flush {
                let outcome = std::task::ready!(flush.poll_unpin(cx));
                this.sink_flush = None;
                outcome?;
            }
            if this.sink_buffer.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let take = this.sink_buffer.len().min(SINK_BATCH);
            let jobs: Vec<NewJob> = this.sink_buffer.drain(..take).collect();
            let backend = this.queue.backend().clone();
            this.sink_flush = Some(async move { backend.enqueue(&jobs).await.map(drop) }.boxed());
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Sink::poll_flush(self, cx)
    }
}

/// The most jobs the sink writes in one enqueue.
const SINK_BATCH: usize = 1000;

fn new_job<J: Job>(task: &Task<J>) -> Result<NewJob, QueueError> {
    if task.idempotency_key().is_some() {
        return Err(QueueError::Unsupported {
            what: "apalis idempotency keys",
        });
    }
    let payload = serde_json::to_string(&task.args).map_err(|source| QueueError::Serialize {
        job: J::NAME,
        source,
    })?;
    let max_attempts = task
        .max_attempts()
        .map(|attempts| u32::try_from(attempts).unwrap_or(u32::MAX))
        .unwrap_or(J::MAX_ATTEMPTS)
        .max(1);
    let delay = task
        .run_at()
        .map(|run_at_s| {
            let due_ms = i64::try_from(run_at_s)
                .unwrap_or(i64::MAX / 1000)
                .saturating_mul(1000);
            Duration::from_millis(due_ms.saturating_sub(now_ms()).max(0) as u64)
        })
        .unwrap_or_default();
    Ok(NewJob {
        name: J::NAME,
        payload,
        max_attempts,
        delay,
    })
}

/// Jobs whose worker died (their lease ran out) go back to the queue, or to the dead letters
/// on their last attempt; the count is returned. Workers already do this periodically.
impl<J: Job> ResumeAbandoned for ApalisBackend<J> {
    fn resume_abandoned(&mut self) -> impl Future<Output = Result<usize, Self::Error>> + Send {
        let backend = self.queue.backend().clone();
        async move {
            let recovered = backend.recover_expired().await?;
            Ok(usize::try_from(recovered).unwrap_or(usize::MAX))
        }
    }
}

/// The queue's [`QueueStats`](crate::QueueStats) as apalis statistics. A queue is one apalis
/// queue, so both methods report the same.
impl<J: Job> Metrics for ApalisBackend<J> {
    fn global(&self) -> impl Future<Output = Result<Vec<Statistic>, Self::Error>> + Send {
        self.fetch_by_queue()
    }

    fn fetch_by_queue(&self) -> impl Future<Output = Result<Vec<Statistic>, Self::Error>> + Send {
        let queue = self.queue.clone();
        async move {
            let stats = queue.stats().await?;
            let statistic =
                |title: &str, stat_type: StatType, value: String, priority: u64| Statistic {
                    title: title.to_owned(),
                    stat_type,
                    value,
                    priority: Some(priority),
                };
            Ok(vec![
                statistic("Ready", StatType::Number, stats.ready.to_string(), 1),
                statistic(
                    "In flight",
                    StatType::Number,
                    stats.in_flight.to_string(),
                    2,
                ),
                statistic("Delayed", StatType::Number, stats.delayed.to_string(), 3),
                statistic("Dead", StatType::Number, stats.dead.to_string(), 4),
                statistic(
                    "Oldest ready job age (s)",
                    StatType::Decimal,
                    format!("{:.3}", stats.oldest_ready_age.as_secs_f64()),
                    5,
                ),
            ])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apalis_errors_map_to_queue_outcomes() {
        let abort = AbortError::new(HandlerFailed("bad input".into()));
        let failure = Failure::of(&abort);
        assert!(!failure.retryable);
        assert_eq!(failure.message, "bad input");

        let later = RetryAfterError::new("busy", Duration::from_secs(7));
        let failure = Failure::of(&later);
        assert!(failure.retryable);
        assert_eq!(failure.delay, Some(Duration::from_secs(7)));
        assert_eq!(failure.message, "busy");

        let deferred = DeferredError::new("not yet");
        let failure = Failure::of(&deferred);
        assert_eq!(
            (failure.retryable, failure.delay),
            (true, Some(Duration::ZERO))
        );

        let plain = std::io::Error::other("connection reset");
        let failure = Failure::of(&plain);
        assert!(failure.retryable && failure.delay.is_none());
        assert_eq!(failure.message, "connection reset");
    }

    #[test]
    fn job_errors_keep_their_kind_through_apalis() {
        let permanent: BoxDynError = JobError::permanent("no such video").into();
        let failure = Failure::of(permanent.as_ref());
        assert!(!failure.retryable);
        assert_eq!(failure.message, "no such video");

        let retryable: BoxDynError = JobError::retryable("storage down").into();
        let failure = Failure::of(retryable.as_ref());
        assert!(failure.retryable);
        assert_eq!(failure.message, "storage down");
    }
}
