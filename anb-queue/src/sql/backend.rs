//! The SQL backends' one implementation of [`Backend`]: each operation's flow, written once
//! over a [`Dialect`] that holds the statements and what else differs by engine.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, Pool, Row as _, Type};

use super::{
    STATS_EXACT_UP_TO,
    dialect::{At, Dialect, SqlQuery},
    lost_leases, row_id, sql_state,
};
use crate::{
    backend::{
        Backend, BackendKind, Cancelled, ClaimRequest, ClaimedJob, DeadJob, JobId, JobInfo,
        JobState, Lease, NewJob, Renewal, WorkSignal, claim_token, refuse_unique,
    },
    error::QueueError,
    priority::Priority,
    rate_limit::{Permits, RateLimit},
    stats::QueueStats,
    unique::Enqueued,
};

/// How many times a cancel looks again for a job that changed state under it.
const CANCEL_ATTEMPTS: usize = 20;

/// A row of a dialect's engine.
type RowOf<D> = <<D as Dialect>::Db as Database>::Row;

/// A SQL backend: PostgreSQL's or SQLite's, by its dialect.
#[derive(Debug)]
pub(crate) struct SqlBackend<D: Dialect> {
    /// Enqueues and operator reads (a job, dead jobs, requeueing and pruning them).
    pool: Pool<D::Db>,
    /// Lease operations and the workers' reads (claims, due times, stats); the same pool as
    /// `pool` where the engine has no sessions tuned for them.
    leases: Pool<D::Db>,
    /// The engine's own state.
    dialect: D,
}

impl<D: Dialect> SqlBackend<D> {
    /// A backend over these pools (see the fields).
    pub(crate) fn with_pools(pool: Pool<D::Db>, leases: Pool<D::Db>, dialect: D) -> Self {
        Self {
            pool,
            leases,
            dialect,
        }
    }
}

/// What the core asks of an engine's sqlx driver: connections that run statements, and the
/// types it binds and reads (row ids and counts as `i64`, progress as `i16`, text, flags).
/// The PostgreSQL and SQLite drivers provide them all; Rust does not infer such bounds from
/// [`Dialect`], so the [`Backend`] impl below repeats them.
impl<D: Dialect> SqlBackend<D>
where
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    for<'q> i64: Encode<'q, D::Db> + Decode<'q, D::Db> + Type<D::Db>,
    for<'q> i16: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> &'q str: Encode<'q, D::Db> + Type<D::Db> + ColumnIndex<RowOf<D>>,
    for<'r> String: Decode<'r, D::Db> + Type<D::Db>,
    for<'r> bool: Decode<'r, D::Db> + Type<D::Db>,
    usize: ColumnIndex<RowOf<D>>,
{
    /// Makes leased jobs claimable after `delay` and gives their attempt back (a release,
    /// or a snooze); wakes idle workers when they are due at once (a later due time is
    /// found by the workers' next-due timer).
    async fn give_back(
        &self,
        owner: &str,
        leases: &[Lease],
        delay: Duration,
    ) -> Result<(), QueueError> {
        let query = D::bind_leases(sqlx::query(D::SQL.give_back), leases).bind(owner);
        let given_back = D::bind_time(query, At::In(delay))
            .execute(&self.leases)
            .await
            .map_err(QueueError::from_sqlx)?;
        if D::rows_affected(&given_back) > 0 && delay.is_zero() {
            self.wake().await?;
        }
        Ok(())
    }

    /// Tells idle workers that jobs are due now: a notification through the engine, or a
    /// signal to this process's workers.
    async fn wake(&self) -> Result<(), QueueError> {
        D::notify(&self.pool).await?;
        self.dialect.wake_local();
        Ok(())
    }

    /// An `attempts` or `max_attempts` column.
    fn attempts(row: &RowOf<D>, column: &str) -> Result<u32, sqlx::Error> {
        Ok(row
            .try_get::<D::Attempts, _>(column)?
            .try_into()
            .unwrap_or(0))
    }

    /// A claimed job from a row of [`Statements::claim`](super::dialect::Statements::claim).
    fn claimed_job(row: &RowOf<D>, token: &str) -> Result<ClaimedJob, sqlx::Error> {
        Ok(ClaimedJob {
            id: JobId(row.try_get::<i64, _>("id")?.to_string()),
            name: row.try_get("name")?,
            payload: row.try_get("payload")?,
            attempt: Self::attempts(row, "attempts")?,
            max_attempts: Self::attempts(row, "max_attempts")?,
            enqueued_at_ms: row.try_get("enqueued_at_ms")?,
            token: token.to_owned(),
            cancel_requested: row.try_get("cancel_requested")?,
        })
    }

    /// A job's state from a row of [`Statements::job`](super::dialect::Statements::job).
    fn job_info(id: i64, row: &RowOf<D>) -> Result<JobInfo, sqlx::Error> {
        let state: String = row.try_get("state")?;
        Ok(JobInfo {
            id: JobId(id.to_string()),
            name: row.try_get("name")?,
            state: sql_state(&state, row.try_get("later")?),
            attempts: Self::attempts(row, "attempts")?,
            max_attempts: Self::attempts(row, "max_attempts")?,
            last_error: row.try_get("last_error")?,
            progress: row
                .try_get::<Option<D::Progress>, _>("progress")?
                .and_then(|p| p.try_into().ok()),
            // A small integer column, as `progress` is.
            priority: row
                .try_get::<D::Progress, _>("priority")?
                .try_into()
                .ok()
                .and_then(|level: u8| Priority::try_from(level).ok())
                .unwrap_or_default(),
        })
    }

    /// A dead job from a row of `id, name, payload, attempts, last_error, dead_at_ms`.
    fn dead_job(row: &RowOf<D>) -> Result<DeadJob, sqlx::Error> {
        Ok(DeadJob {
            id: JobId(row.try_get::<i64, _>("id")?.to_string()),
            name: row.try_get("name")?,
            payload: row.try_get("payload")?,
            attempts: Self::attempts(row, "attempts")?,
            last_error: row.try_get("last_error")?,
            dead_at_ms: row.try_get::<Option<i64>, _>("dead_at_ms")?.unwrap_or(0),
        })
    }

    /// Dead jobs from the rows of a dead-jobs statement.
    async fn dead_jobs_of(&self, query: SqlQuery<D::Db>) -> Result<Vec<DeadJob>, QueueError> {
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(QueueError::from_sqlx)?;
        rows.iter()
            .map(Self::dead_job)
            .collect::<Result<_, _>>()
            .map_err(QueueError::from_sqlx)
    }
}

/// Every lease operation names the owner and the claim's token, and is a no-op for a job
/// that claim no longer holds (see the [`Backend`] contract): each statement's `WHERE`
/// matches the row id, the lease token, the owner and `state = 'running'`.
#[async_trait]
impl<D: Dialect> Backend for SqlBackend<D>
where
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    for<'q> i64: Encode<'q, D::Db> + Decode<'q, D::Db> + Type<D::Db>,
    for<'q> i16: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> &'q str: Encode<'q, D::Db> + Type<D::Db> + ColumnIndex<RowOf<D>>,
    for<'r> String: Decode<'r, D::Db> + Type<D::Db>,
    for<'r> bool: Decode<'r, D::Db> + Type<D::Db>,
    usize: ColumnIndex<RowOf<D>>,
{
    fn kind(&self) -> BackendKind {
        D::KIND
    }

    fn supports_priorities(&self) -> bool {
        true
    }

    fn supports_unique(&self) -> bool {
        true
    }

    async fn enqueue(&self, jobs: &[NewJob]) -> Result<Vec<JobId>, QueueError> {
        refuse_unique(jobs)?;
        let ids = D::insert(&self.pool, jobs).await?;
        // PostgreSQL's insert trigger notifies listeners at commit.
        self.dialect.wake_local();
        Ok(ids)
    }

    async fn enqueue_unique(&self, job: &NewJob) -> Result<Enqueued, QueueError> {
        let mut conn = self.pool.acquire().await.map_err(QueueError::from_sqlx)?;
        let enqueued = D::insert_unique(&mut conn, job).await?;
        if !enqueued.duplicate {
            self.dialect.wake_local();
        }
        Ok(enqueued)
    }

    async fn claim(&self, request: ClaimRequest<'_>) -> Result<Vec<ClaimedJob>, QueueError> {
        if !self.dialect.may_claim(&self.leases, request.names).await? {
            return Ok(Vec::new());
        }
        let token = claim_token();
        let rows = D::bind_claim(sqlx::query(D::SQL.claim), &request, &token)
            .fetch_all(&self.leases)
            .await
            .map_err(QueueError::from_sqlx)?;
        let mut jobs = rows
            .iter()
            .map(|row| Self::claimed_job(row, &token))
            .collect::<Result<Vec<_>, _>>()
            .map_err(QueueError::from_sqlx)?;
        // UPDATE ... RETURNING does not keep the statement's order.
        jobs.sort_by_key(|job| job.id.0.parse::<i64>().unwrap_or(i64::MAX));
        self.dialect.claimed(&jobs);
        Ok(jobs)
    }

    async fn complete(&self, owner: &str, leases: &[Lease]) -> Result<(), QueueError> {
        D::bind_leases(sqlx::query(D::SQL.complete), leases)
            .bind(owner)
            .execute(&self.leases)
            .await
            .map_err(QueueError::from_sqlx)?;
        Ok(())
    }

    async fn retry(
        &self,
        owner: &str,
        lease: &Lease,
        delay: Duration,
        error: &str,
    ) -> Result<(), QueueError> {
        let Some(id) = row_id(lease) else {
            return Ok(());
        };
        let query = D::bind_lease(sqlx::query(D::SQL.retry), id, &lease.token).bind(owner);
        D::bind_time(query, At::In(delay))
            .bind(error)
            .execute(&self.leases)
            .await
            .map_err(QueueError::from_sqlx)?;
        Ok(())
    }

    async fn dead_letter(&self, owner: &str, lease: &Lease, error: &str) -> Result<(), QueueError> {
        let Some(id) = row_id(lease) else {
            return Ok(());
        };
        let query = D::bind_lease(sqlx::query(D::SQL.dead_letter), id, &lease.token).bind(owner);
        D::bind_time(query, At::Now)
            .bind(error)
            .execute(&self.leases)
            .await
            .map_err(QueueError::from_sqlx)?;
        Ok(())
    }

    async fn release(&self, owner: &str, leases: &[Lease]) -> Result<(), QueueError> {
        self.give_back(owner, leases, Duration::ZERO).await
    }

    async fn snooze(&self, owner: &str, lease: &Lease, delay: Duration) -> Result<(), QueueError> {
        self.give_back(owner, std::slice::from_ref(lease), delay)
            .await
    }

    async fn extend(
        &self,
        owner: &str,
        leases: &[Lease],
        lease: Duration,
    ) -> Result<Vec<Lease>, QueueError> {
        Ok(self.renew(owner, leases, lease).await?.lost)
    }

    async fn renew(
        &self,
        owner: &str,
        leases: &[Lease],
        lease: Duration,
    ) -> Result<Renewal, QueueError> {
        let query = D::bind_leases(sqlx::query(D::SQL.extend), leases).bind(owner);
        let rows = D::bind_time(query, At::In(lease))
            .fetch_all(&self.leases)
            .await
            .map_err(QueueError::from_sqlx)?;
        let extended = rows
            .iter()
            .map(|row| {
                Ok((
                    row.try_get::<i64, _>(0)?,
                    row.try_get::<String, _>(1)?,
                    row.try_get::<bool, _>(2)?,
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(QueueError::from_sqlx)?;
        let cancelled = extended
            .iter()
            .filter(|(_, _, cancelled)| *cancelled)
            .map(|(id, token, _)| Lease {
                id: JobId(id.to_string()),
                token: token.clone(),
            })
            .collect();
        let extended: Vec<(i64, String)> = extended
            .into_iter()
            .map(|(id, token, _)| (id, token))
            .collect();
        Ok(Renewal {
            lost: lost_leases(leases, &extended),
            cancelled,
        })
    }

    fn supports_global_rate_limit(&self) -> bool {
        true
    }

    async fn take_permits(
        &self,
        queue: &str,
        want: u32,
        limit: RateLimit,
    ) -> Result<Permits, QueueError> {
        let query = sqlx::query(D::SQL.take_permits)
            .bind(queue)
            .bind(i64::from(want))
            .bind(i64::from(limit.permits()))
            .bind(limit.period_ms());
        let row = D::bind_time(query, At::Now)
            .fetch_one(&self.leases)
            .await
            .map_err(QueueError::from_sqlx)?;
        let column = |index: usize| row.try_get::<i64, _>(index).map_err(QueueError::from_sqlx);
        Ok(Permits {
            granted: u32::try_from(column(0)?.max(0)).unwrap_or(0),
            window: column(1)?,
            window_ends_in: Duration::from_millis(u64::try_from(column(2)?).unwrap_or(0)),
        })
    }

    async fn return_permits(
        &self,
        queue: &str,
        permits: Permits,
        unused: u32,
    ) -> Result<(), QueueError> {
        if unused == 0 {
            return Ok(());
        }
        sqlx::query(D::SQL.return_permits)
            .bind(queue)
            .bind(permits.window)
            .bind(i64::from(unused))
            .execute(&self.leases)
            .await
            .map_err(QueueError::from_sqlx)?;
        Ok(())
    }

    fn supports_cancel(&self) -> bool {
        true
    }

    async fn cancel(&self, id: &JobId) -> Result<Cancelled, QueueError> {
        let Ok(id) = id.as_str().parse::<i64>() else {
            return Ok(Cancelled::NotFound);
        };
        // A job changing state under the two statements (claimed between them, or given
        // back) is seen by neither: look again while it is still waiting or running.
        for _ in 0..CANCEL_ATTEMPTS {
            let removed = sqlx::query(D::SQL.cancel_waiting)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(QueueError::from_sqlx)?;
            if D::rows_affected(&removed) > 0 {
                return Ok(Cancelled::Removed);
            }
            let flagged = sqlx::query(D::SQL.cancel_running)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(QueueError::from_sqlx)?;
            if D::rows_affected(&flagged) > 0 {
                return Ok(Cancelled::Requested);
            }
            let state = self.job(&JobId(id.to_string())).await?.map(|job| job.state);
            if matches!(state, None | Some(JobState::Dead)) {
                return Ok(Cancelled::NotFound);
            }
        }
        Err(QueueError::CancelContended {
            job: id.to_string(),
        })
    }

    async fn unique_holder(&self, name: &str, key: &str) -> Result<Option<JobId>, QueueError> {
        let row = sqlx::query(D::SQL.unique_holder)
            .bind(name)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(QueueError::from_sqlx)?;
        row.map(|row| row.try_get::<i64, _>(0).map(|id| JobId(id.to_string())))
            .transpose()
            .map_err(QueueError::from_sqlx)
    }

    async fn progress(
        &self,
        owner: &str,
        lease: &Lease,
        percent: u8,
        duration: Duration,
    ) -> Result<(), QueueError> {
        let Some(id) = row_id(lease) else {
            return Ok(());
        };
        let query = D::bind_lease(sqlx::query(D::SQL.progress), id, &lease.token)
            .bind(owner)
            .bind(i16::from(percent));
        D::bind_time(query, At::In(duration))
            .execute(&self.leases)
            .await
            .map_err(QueueError::from_sqlx)?;
        Ok(())
    }

    async fn recover_expired(&self) -> Result<u64, QueueError> {
        let recovered = D::bind_time(sqlx::query(D::SQL.recover_expired), At::Now)
            .execute(&self.leases)
            .await
            .map_err(QueueError::from_sqlx)?;
        let recovered = D::rows_affected(&recovered);
        if recovered > 0 {
            self.wake().await?;
        }
        Ok(recovered)
    }

    async fn next_due_in(&self, names: &[&'static str]) -> Result<Option<Duration>, QueueError> {
        let row = D::bind_names(sqlx::query(D::SQL.next_due), names)
            .fetch_one(&self.leases)
            .await
            .map_err(QueueError::from_sqlx)?;
        let due: Option<i64> = row.try_get(0).map_err(QueueError::from_sqlx)?;
        Ok(due.map(D::until))
    }

    async fn subscribe(&self) -> Result<WorkSignal, QueueError> {
        self.dialect.subscribe(&self.pool).await
    }

    fn idle_poll_interval(&self) -> Duration {
        D::IDLE_POLL_INTERVAL
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let row = D::bind_time(sqlx::query(D::SQL.stats), At::Now)
            .bind(STATS_EXACT_UP_TO)
            .fetch_one(&self.leases)
            .await
            .map_err(QueueError::from_sqlx)?;
        let count = |column: &str| -> Result<u64, QueueError> {
            let count: i64 = row.try_get(column).map_err(QueueError::from_sqlx)?;
            Ok(u64::try_from(count).unwrap_or(0))
        };
        Ok(QueueStats {
            ready: count("ready")?,
            in_flight: count("in_flight")?,
            delayed: count("delayed")?,
            dead: count("dead")?,
            oldest_ready_age: Duration::from_millis(count("oldest_ms")?),
        })
    }

    async fn job(&self, id: &JobId) -> Result<Option<JobInfo>, QueueError> {
        let Ok(id) = id.as_str().parse::<i64>() else {
            return Ok(None);
        };
        let row = D::bind_time(sqlx::query(D::SQL.job).bind(id), At::Now)
            .fetch_optional(&self.pool)
            .await
            .map_err(QueueError::from_sqlx)?;
        row.map(|row| Self::job_info(id, &row))
            .transpose()
            .map_err(QueueError::from_sqlx)
    }

    async fn dead_jobs_after(
        &self,
        after: Option<&JobId>,
        limit: usize,
    ) -> Result<Vec<DeadJob>, QueueError> {
        let Some(after) = after else {
            return self.dead_jobs(limit).await;
        };
        let Ok(after) = after.as_str().parse::<i64>() else {
            return Ok(Vec::new());
        };
        let query = sqlx::query(D::SQL.dead_jobs_after)
            .bind(after)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX));
        self.dead_jobs_of(query).await
    }

    async fn requeue_dead(&self, ids: &[JobId]) -> Result<u64, QueueError> {
        let ids: Vec<i64> = ids
            .iter()
            .filter_map(|id| id.as_str().parse().ok())
            .collect();
        let mut tx = self.pool.begin().await.map_err(QueueError::from_sqlx)?;
        let query = D::bind_ids(sqlx::query(D::SQL.requeue_dead), &ids);
        let requeued = D::bind_time(query, At::Now)
            .execute(&mut *tx)
            .await
            .map_err(QueueError::from_sqlx)?;
        let requeued = D::rows_affected(&requeued);
        if requeued > 0 {
            // Workers listen for inserts; an update wakes them this way, at the commit.
            D::notify(&mut *tx).await?;
        }
        tx.commit().await.map_err(QueueError::from_sqlx)?;
        if requeued > 0 {
            self.dialect.wake_local();
        }
        Ok(requeued)
    }

    async fn prune_dead(&self, older_than: Duration) -> Result<u64, QueueError> {
        // Period keys whose period is over hold nothing; a worker's periodic prune sweeps them.
        D::bind_time(sqlx::query(D::SQL.prune_unique_keys), At::Now)
            .execute(&self.pool)
            .await
            .map_err(QueueError::from_sqlx)?;
        let pruned = D::bind_time(sqlx::query(D::SQL.prune_dead), At::Ago(older_than))
            .execute(&self.pool)
            .await
            .map_err(QueueError::from_sqlx)?;
        Ok(D::rows_affected(&pruned))
    }

    async fn dead_jobs(&self, limit: usize) -> Result<Vec<DeadJob>, QueueError> {
        let query = sqlx::query(D::SQL.dead_jobs).bind(i64::try_from(limit).unwrap_or(i64::MAX));
        self.dead_jobs_of(query).await
    }
}
