//! What one SQL engine brings to the shared core: its statements, the encoding of the
//! parameters they share, its wake-ups, and the few steps whose flow is its own.

use std::{fmt, future::Future, time::Duration};

use sqlx::{Database, Decode, Executor, IntoArguments, Pool, Type};

use crate::{
    backend::{BackendKind, ClaimRequest, ClaimedJob, JobId, Lease, NewJob, WorkSignal},
    error::QueueError,
    unique::Enqueued,
};

/// A statement being bound, on the engine `DB`.
pub(crate) type SqlQuery<DB> = sqlx::query::Query<'static, DB, <DB as Database>::Arguments>;

/// A time a statement takes, relative to now.
///
/// PostgreSQL statements read the server's clock (`now()`, `clock_timestamp()`) and take
/// only the offset, in milliseconds, or nothing for now itself; SQLite has no clock type, so
/// its statements take the time itself, in milliseconds since the Unix epoch by the host's
/// clock (see [`now_ms`](crate::backend::now_ms)).
#[derive(Debug, Clone, Copy)]
pub(crate) enum At {
    /// Now.
    Now,
    /// This long from now (a due time, a lease's end).
    In(Duration),
    /// This long ago (a cut-off for pruning).
    Ago(Duration),
}

/// The statements the core runs, by operation.
///
/// Every engine's statement takes its parameters in the order listed with it, the order
/// the core binds them in; a kind of parameter may take several placeholders, or none, on
/// one engine (see [`Dialect`]'s `bind_*` methods). Statements that return rows name the
/// columns listed here.
#[derive(Debug)]
pub(crate) struct Statements {
    /// Claims due jobs: [`Dialect::bind_claim`]'s parameters. Returns `id, name, payload,
    /// attempts, max_attempts, enqueued_at_ms, cancel_requested` of each job it leased.
    pub(crate) claim: &'static str,
    /// Deletes finished jobs: leases, owner.
    pub(crate) complete: &'static str,
    /// Makes a job claimable again keeping its error: lease, owner, `At` (its due time),
    /// error.
    pub(crate) retry: &'static str,
    /// Moves a job to the dead letters and frees its unique key: lease, owner, `At::Now`,
    /// error.
    pub(crate) dead_letter: &'static str,
    /// Makes jobs claimable again and gives their attempt back: leases, owner, `At` (their
    /// due time).
    pub(crate) give_back: &'static str,
    /// Extends leases: leases, owner, `At` (the leases' end). Returns the row id, lease
    /// token and `cancel_requested` flag of each job it extended.
    pub(crate) extend: &'static str,
    /// Stores a job's progress and extends its lease: lease, owner, percent (`i16`), `At`
    /// (the lease's end).
    pub(crate) progress: &'static str,
    /// Returns jobs whose lease ran out to the queue, or to the dead letters on their last
    /// attempt: `At::Now`.
    pub(crate) recover_expired: &'static str,
    /// When the next ready job of some names is due: names. Returns one value in the
    /// engine's time form (see [`Dialect::until`]), NULL when none waits.
    pub(crate) next_due: &'static str,
    /// The queue's counts: `At::Now`, the cap of each count. Returns `ready, delayed,
    /// in_flight, dead, oldest_ms`.
    pub(crate) stats: &'static str,
    /// One job: its row id, `At::Now`. Returns `name, state, later` (whether it is due
    /// after now), `attempts, max_attempts, last_error, progress`.
    pub(crate) job: &'static str,
    /// The newest dead jobs: the most to return. Returns `id, name, payload, attempts,
    /// last_error, dead_at_ms`.
    pub(crate) dead_jobs: &'static str,
    /// The newest dead jobs older than one of them: its row id, the most to return. Returns
    /// the columns of [`dead_jobs`](Self::dead_jobs).
    pub(crate) dead_jobs_after: &'static str,
    /// Puts dead jobs back, due now: row ids, `At::Now`.
    pub(crate) requeue_dead: &'static str,
    /// Deletes a waiting job (cancelled before it ran): its row id.
    pub(crate) cancel_waiting: &'static str,
    /// Flags a running job as cancelled: its row id.
    pub(crate) cancel_running: &'static str,
    /// The row id of the job holding a unique key: name, key. Returns one `id`, or no row.
    pub(crate) unique_holder: &'static str,
    /// Deletes period keys whose period is over: `At::Now`.
    pub(crate) prune_unique_keys: &'static str,
    /// Deletes dead jobs that died before a time: `At::Ago`.
    pub(crate) prune_dead: &'static str,
    /// Takes permits from the current window of a named queue's rate limit: queue, want,
    /// the window's permits, the period in milliseconds (all `i64`), `At::Now`. Returns
    /// `granted, window_start, wait_ms` (milliseconds until the window ends).
    pub(crate) take_permits: &'static str,
    /// Gives unused permits back to their window if it is still the current one: queue,
    /// window start, count (all but the queue `i64`).
    pub(crate) return_permits: &'static str,
}

/// One SQL engine under the shared core ([`SqlBackend`](super::SqlBackend)).
///
/// The core writes each operation's flow once (lease-token fencing, lost-lease reporting,
/// wake-ups, row decoding, error mapping); a dialect holds what differs between engines:
/// the statements, how their parameters are encoded (PostgreSQL arrays, SQLite JSON text,
/// the clock), how workers are woken (PostgreSQL `NOTIFY`, SQLite an in-process signal),
/// and the steps that are its own (inserting jobs, the claim's parameters, subscribing).
/// Its value holds the engine's per-backend state (a listener, an idle flag).
pub(crate) trait Dialect: fmt::Debug + Send + Sync + Sized + 'static {
    /// The sqlx database.
    type Db: Database<Arguments: IntoArguments<Self::Db>>;
    /// How the `attempts` and `max_attempts` columns decode.
    type Attempts: for<'r> Decode<'r, Self::Db> + Type<Self::Db> + TryInto<u32>;
    /// How the `progress` column decodes.
    type Progress: for<'r> Decode<'r, Self::Db> + Type<Self::Db> + TryInto<u8>;

    /// Which engine this is.
    const KIND: BackendKind;
    /// The statements.
    const SQL: Statements;
    /// How long a worker idles between claims when no wake-up arrives.
    const IDLE_POLL_INTERVAL: Duration;

    /// Binds a set of leases (a batch operation's).
    fn bind_leases(query: SqlQuery<Self::Db>, leases: &[Lease]) -> SqlQuery<Self::Db>;

    /// Binds one lease, by its row id and token.
    fn bind_lease(query: SqlQuery<Self::Db>, id: i64, token: &str) -> SqlQuery<Self::Db>;

    /// Binds a set of row ids.
    fn bind_ids(query: SqlQuery<Self::Db>, ids: &[i64]) -> SqlQuery<Self::Db>;

    /// Binds a set of job names.
    fn bind_names(query: SqlQuery<Self::Db>, names: &[&str]) -> SqlQuery<Self::Db>;

    /// Binds a time (see [`At`]).
    fn bind_time(query: SqlQuery<Self::Db>, at: At) -> SqlQuery<Self::Db>;

    /// Binds the claim statement's parameters: the request and the claim's lease token.
    fn bind_claim(
        query: SqlQuery<Self::Db>,
        request: &ClaimRequest<'_>,
        token: &str,
    ) -> SqlQuery<Self::Db>;

    /// How long from now a time that a statement returned in the engine's form is; zero
    /// when it is past.
    fn until(time: i64) -> Duration;

    /// How many rows a statement wrote.
    fn rows_affected(result: &<Self::Db as Database>::QueryResult) -> u64;

    /// Stores jobs through the pool, all or none (see [`Backend::enqueue`](crate::backend::Backend::enqueue)).
    fn insert(
        pool: &Pool<Self::Db>,
        jobs: &[NewJob],
    ) -> impl Future<Output = Result<Vec<JobId>, QueueError>> + Send;

    /// Stores a job with a unique key on a connection (see
    /// [`Backend::enqueue_unique`](crate::backend::Backend::enqueue_unique)).
    fn insert_unique(
        conn: &mut <Self::Db as Database>::Connection,
        job: &NewJob,
    ) -> impl Future<Output = Result<Enqueued, QueueError>> + Send;

    /// Whether a claim for these names is worth running; `false` answers it with no jobs.
    fn may_claim(
        &self,
        pool: &Pool<Self::Db>,
        names: &[&'static str],
    ) -> impl Future<Output = Result<bool, QueueError>> + Send;

    /// Learns what a claim leased.
    fn claimed(&self, jobs: &[ClaimedJob]);

    /// Notifies the engine's listeners that jobs are due, with a statement on `executor`
    /// (inside a transaction, delivered at its commit); nothing on an engine without
    /// notifications.
    fn notify<'e, E>(executor: E) -> impl Future<Output = Result<(), QueueError>> + Send
    where
        E: Executor<'e, Database = Self::Db> + 'e;

    /// Wakes this process's idle workers, on an engine whose listeners no statement
    /// reaches; nothing otherwise.
    fn wake_local(&self);

    /// A signal of new work for a worker.
    fn subscribe(
        &self,
        pool: &Pool<Self::Db>,
    ) -> impl Future<Output = Result<WorkSignal, QueueError>> + Send;
}
