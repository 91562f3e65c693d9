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

mod ack;
mod config;
mod sink;
mod stream;
#[cfg(test)]
mod tests;

use self::stream::{Shared, State};
pub use self::{
    ack::{AckLayer, AckService},
    config::ApalisConfig,
};

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
                        snoozed: false,
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
