//! How the suite reaches a backend: a fixture opens a fresh queue per case and says what the
//! backend promises beyond the core.

use std::future::Future;

use anb_queue::Queue;

/// The environment variable that carries a queue URL to the worker process of the
/// killed-worker case, read by the default [`Fixture::open_in_child`].
pub const CHILD_QUEUE_URL: &str = "ANB_QUEUE_TESTKIT_CHILD_URL";

/// A backend under test. The suite makes one fixture per case with [`Fixture::fresh`], opens
/// queues on it, and calls [`Fixture::cleanup`] when the case passed.
pub trait Fixture: Sized + Send + Sync + 'static {
    /// A fresh, empty queue that no other case uses (a new database, key prefix or queue).
    fn fresh() -> impl Future<Output = Self> + Send;

    /// A handle to the fixture's queue. Cases call it more than once, for several producers
    /// or workers; every handle must reach the same jobs.
    fn queue(&self) -> impl Future<Output = Queue> + Send;

    /// What the backend promises beyond the core; [`Capabilities::full`] by default.
    fn capabilities(&self) -> Capabilities {
        Capabilities::full()
    }

    /// The environment a worker in another process needs to reach this queue through
    /// [`Fixture::open_in_child`], or `None` (the default) when the queue lives inside one
    /// process: then the killed-worker case has nothing to check and passes.
    ///
    /// A URL backend returns `[(CHILD_QUEUE_URL, url)]` plus its credentials.
    fn child_env(&self) -> Option<Vec<(String, String)>> {
        None
    }

    /// Opens the queue inside the worker process that [`Fixture::child_env`] describes. By
    /// default `Queue::connect` on the URL in [`CHILD_QUEUE_URL`].
    fn open_in_child() -> impl Future<Output = Queue> + Send {
        async {
            let url = std::env::var(CHILD_QUEUE_URL)
                .unwrap_or_else(|_| panic!("{CHILD_QUEUE_URL} is not set in the worker process"));
            Queue::connect(&url)
                .await
                .unwrap_or_else(|error| panic!("connect to {url}: {error}"))
        }
    }

    /// Removes what the case left behind (a database, keys, queues). Nothing by default.
    fn cleanup(self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// What a backend offers beyond the core the suite always checks. For each capability
/// declared absent, the cases check instead that the backend refuses the operation with
/// `QueueError::UnsupportedByBackend` and stores nothing, so a declaration cannot hide a bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// `Queue::enqueue_unique` holds a key while the job is unfinished or for a period.
    pub unique_jobs: bool,
    /// `Queue::cancel` and `Queue::cancel_unique` remove a waiting job and stop a running one.
    pub cancellation: bool,
    /// A worker runs several named queues (`Worker::queue`), each claiming only its own job
    /// names (`Backend::claims_by_name`).
    pub named_queues: bool,
    /// Claims take due jobs highest priority first (`Job::PRIORITY`,
    /// `EnqueueOptions::priority`).
    pub priorities: bool,
    /// `Worker::rate_limit` limits a named queue's job starts across every worker sharing
    /// the backend (`Backend::take_permits`).
    pub global_rate_limit: bool,
    /// `Queue::job`, `requeue_dead`, `prune_dead` and paging of `dead_jobs_after` past the first
    /// page, and the worker's pruning of dead jobs.
    pub operator_calls: bool,
    /// `QueueStats::oldest_ready_age` is measured (SQS has no such attribute).
    pub oldest_ready_age: bool,
    /// A receive that a killed worker's open request took may count as an attempt, so a job
    /// redelivered after the kill may come as its third attempt rather than its second (SQS
    /// long polls).
    pub lost_receives_count: bool,
    /// The backend may deliver a job twice even when no worker fails (SQS standard queues
    /// promise at-least-once delivery and occasionally hand a message to two consumers).
    /// Cases with competing workers then accept a few repeats (at most 1 %) instead of none.
    pub may_redeliver: bool,
}

impl Capabilities {
    /// Everything: what the SQL and Redis backends offer.
    pub const fn full() -> Self {
        Self {
            unique_jobs: true,
            cancellation: true,
            named_queues: true,
            priorities: true,
            global_rate_limit: true,
            operator_calls: true,
            oldest_ready_age: true,
            lost_receives_count: false,
            may_redeliver: false,
        }
    }

    /// With or without unique jobs.
    pub const fn unique_jobs(mut self, yes: bool) -> Self {
        self.unique_jobs = yes;
        self
    }

    /// With or without cancellation.
    pub const fn cancellation(mut self, yes: bool) -> Self {
        self.cancellation = yes;
        self
    }

    /// With or without several named queues in one worker.
    pub const fn named_queues(mut self, yes: bool) -> Self {
        self.named_queues = yes;
        self
    }

    /// With or without priorities.
    pub const fn priorities(mut self, yes: bool) -> Self {
        self.priorities = yes;
        self
    }

    /// With or without a global rate limit per named queue.
    pub const fn global_rate_limit(mut self, yes: bool) -> Self {
        self.global_rate_limit = yes;
        self
    }

    /// With or without the operator calls.
    pub const fn operator_calls(mut self, yes: bool) -> Self {
        self.operator_calls = yes;
        self
    }

    /// With or without the oldest ready job's age in the statistics.
    pub const fn oldest_ready_age(mut self, yes: bool) -> Self {
        self.oldest_ready_age = yes;
        self
    }

    /// Whether a job may be delivered twice without a failure.
    pub const fn may_redeliver(mut self, yes: bool) -> Self {
        self.may_redeliver = yes;
        self
    }

    /// Whether a killed worker's lost receive may count as an attempt.
    pub const fn lost_receives_count(mut self, yes: bool) -> Self {
        self.lost_receives_count = yes;
        self
    }
}
