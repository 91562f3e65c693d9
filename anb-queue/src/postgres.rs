//! The PostgreSQL backend: one table, `FOR UPDATE SKIP LOCKED` claims in batches,
//! `LISTEN/NOTIFY` wake-ups, millisecond scheduling and leases renewed by heartbeat.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use async_trait::async_trait;
use sqlx::{
    Connection as _, PgConnection, PgPool, Row,
    postgres::{PgListener, PgPoolOptions},
};
use tokio::sync::{OnceCell, watch};

use crate::{
    backend::claim_token,
    backend::{
        Backend, BackendKind, ClaimRequest, ClaimedJob, DeadJob, JobId, JobInfo, Lease, NewJob,
        WorkSignal,
    },
    error::QueueError,
    sql::{lost_leases, millis, row_id, sql_state},
    stats::QueueStats,
};

/// The channel the insert trigger notifies.
const CHANNEL: &str = "anb_queue";

/// The schema version this build writes; `setup` upgrades older ones step by step.
///
/// Every step must leave the table usable by the code of the version before it, since
/// workers of both run side by side during a rolling deploy: add nullable columns and
/// indexes, never rename or drop. Old code's `setup` leaves a newer version alone.
const SCHEMA_VERSION: i32 = 3;

/// Arbitrary constant key for the advisory lock that serializes concurrent `setup`s.
const SETUP_LOCK_KEY: i64 = 0x616e_625f_7175_6575; // "anb_queu"

/// Version 1 of the schema. Idempotent, so a half-applied run can simply run again.
const SCHEMA_V1: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS anb_queue_jobs (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        name TEXT NOT NULL,
        payload JSONB NOT NULL,
        state TEXT NOT NULL DEFAULT 'ready' CHECK (state IN ('ready', 'running', 'dead')),
        attempts INT NOT NULL DEFAULT 0,
        max_attempts INT NOT NULL,
        run_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        enqueued_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        locked_by TEXT,
        locked_until TIMESTAMPTZ,
        progress SMALLINT,
        last_error TEXT,
        dead_at TIMESTAMPTZ
    )",
    "CREATE INDEX IF NOT EXISTS anb_queue_jobs_ready ON anb_queue_jobs (run_at, id) WHERE state = 'ready'",
    "CREATE INDEX IF NOT EXISTS anb_queue_jobs_running ON anb_queue_jobs (locked_until) WHERE state = 'running'",
    "CREATE INDEX IF NOT EXISTS anb_queue_jobs_dead ON anb_queue_jobs (dead_at) WHERE state = 'dead'",
    "CREATE OR REPLACE FUNCTION anb_queue_notify() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN PERFORM pg_notify('anb_queue', ''); RETURN NULL; END $$",
    // Statement level: a bulk insert notifies once, and a transactional enqueue notifies
    // at commit (PostgreSQL delivers notifications only then).
    "DROP TRIGGER IF EXISTS anb_queue_jobs_notify ON anb_queue_jobs",
    "CREATE TRIGGER anb_queue_jobs_notify AFTER INSERT ON anb_queue_jobs
     FOR EACH STATEMENT EXECUTE FUNCTION anb_queue_notify()",
];

/// Version 2: a lease token per claim, so lease operations are fenced by claim, not only by
/// worker. Code of version 1 ignores the column (its claims leave it as it is; it checks
/// `locked_by`, which differs between workers, so neither version can settle the other's
/// claim).
const SCHEMA_V2: &[&str] =
    &["ALTER TABLE anb_queue_jobs ADD COLUMN IF NOT EXISTS lease_token TEXT"];

/// Version 3: payloads are stored as the text they were given. `jsonb` refuses `\u0000`
/// (which JSON allows and serde writes for a NUL in a string), so such a job failed on
/// PostgreSQL only; the queue never looks inside a payload. Code of version 2 still works
/// on it: its `p::jsonb` is assigned to the text column by PostgreSQL's I/O cast, and it
/// reads `payload::text`.
const SCHEMA_V3: &[&str] = &["ALTER TABLE anb_queue_jobs ALTER COLUMN payload TYPE TEXT"];

const INSERT_JOBS: &str = "INSERT INTO anb_queue_jobs (name, payload, max_attempts, run_at)
     SELECT n, p, m, now() + d * interval '1 millisecond'
     FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::int8[]) WITH ORDINALITY AS t(n, p, m, d, o)
     ORDER BY o
     RETURNING id";

/// Creates or upgrades the queue's tables. Versioned in `anb_queue_schema`, not in sqlx's
/// `_sqlx_migrations`, so the queue coexists with an application's own migrations.
pub(crate) async fn setup(pool: &PgPool) -> Result<(), QueueError> {
    let mut tx = pool.begin().await.map_err(QueueError::from_sqlx)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SETUP_LOCK_KEY)
        .execute(&mut *tx)
        .await
        .map_err(QueueError::from_sqlx)?;
    sqlx::query("CREATE TABLE IF NOT EXISTS anb_queue_schema (version INT NOT NULL)")
        .execute(&mut *tx)
        .await
        .map_err(QueueError::from_sqlx)?;
    let version: Option<i32> = sqlx::query_scalar("SELECT max(version) FROM anb_queue_schema")
        .fetch_one(&mut *tx)
        .await
        .map_err(QueueError::from_sqlx)?;
    let version = version.unwrap_or(0);
    if version < SCHEMA_VERSION {
        let steps = [(1, SCHEMA_V1), (2, SCHEMA_V2), (3, SCHEMA_V3)];
        for (_, statements) in steps.iter().filter(|(step, _)| *step > version) {
            for statement in *statements {
                sqlx::query(*statement)
                    .execute(&mut *tx)
                    .await
                    .map_err(QueueError::from_sqlx)?;
            }
        }
        sqlx::query("DELETE FROM anb_queue_schema")
            .execute(&mut *tx)
            .await
            .map_err(QueueError::from_sqlx)?;
        sqlx::query("INSERT INTO anb_queue_schema (version) VALUES ($1)")
            .bind(SCHEMA_VERSION)
            .execute(&mut *tx)
            .await
            .map_err(QueueError::from_sqlx)?;
    }
    tx.commit().await.map_err(QueueError::from_sqlx)?;
    Ok(())
}

/// Budget, in bytes of job name and payload, for one insert statement.
///
/// sqlx 0.9.0 no longer sets `TCP_NODELAY` (sqlx issue #4335, fixed upstream but not
/// released). A message the client writes as more than one TCP segment (over TLS: anything
/// past one 16 KiB record) then waits for the server's delayed ACK, 40 ms on Linux, which
/// made a 1,000-job bulk enqueue take 50 ms instead of 8 ms. Statements that stay within
/// one record avoid the stall; a bulk enqueue becomes several of them in one transaction.
const STATEMENT_BYTES: usize = 12 * 1024;

/// Inserts jobs on any connection, typically the caller's open transaction: all of them or,
/// on error, none (a statement split runs inside a transaction, or a savepoint when the
/// caller already has one open).
pub(crate) async fn insert_jobs(
    conn: &mut PgConnection,
    jobs: &[NewJob],
) -> Result<Vec<JobId>, QueueError> {
    let statements = split_by_size(jobs, STATEMENT_BYTES);
    if statements.len() <= 1 {
        return insert_statement(conn, jobs).await;
    }
    let mut tx = conn.begin().await.map_err(QueueError::from_sqlx)?;
    let mut ids = Vec::with_capacity(jobs.len());
    for statement in statements {
        ids.extend(insert_statement(&mut tx, statement).await?);
    }
    tx.commit().await.map_err(QueueError::from_sqlx)?;
    Ok(ids)
}

/// Splits `jobs` into runs whose names and payloads add up to at most `budget` bytes (a
/// job larger than that gets a run of its own).
fn split_by_size(jobs: &[NewJob], budget: usize) -> Vec<&[NewJob]> {
    let mut runs = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (index, job) in jobs.iter().enumerate() {
        // Per row, besides the text: four array element headers, an int4 and an int8.
        let size = job.name.len() + job.payload.len() + 28;
        if index > start && bytes + size > budget {
            runs.push(&jobs[start..index]);
            (start, bytes) = (index, 0);
        }
        bytes += size;
    }
    if start < jobs.len() {
        runs.push(&jobs[start..]);
    }
    runs
}

async fn insert_statement(
    conn: &mut PgConnection,
    jobs: &[NewJob],
) -> Result<Vec<JobId>, QueueError> {
    let names: Vec<&str> = jobs.iter().map(|job| job.name).collect();
    let payloads: Vec<&str> = jobs.iter().map(|job| job.payload.as_str()).collect();
    let max_attempts: Vec<i32> = jobs
        .iter()
        .map(|job| i32::try_from(job.max_attempts).unwrap_or(i32::MAX))
        .collect();
    let delays: Vec<i64> = jobs.iter().map(|job| millis(job.delay)).collect();
    let ids: Vec<i64> = sqlx::query_scalar(INSERT_JOBS)
        .bind(&names)
        .bind(&payloads)
        .bind(&max_attempts)
        .bind(&delays)
        .fetch_all(conn)
        .await
        .map_err(QueueError::from_sqlx)?;
    Ok(ids.into_iter().map(|id| JobId(id.to_string())).collect())
}

/// Leases as parallel arrays of row ids and tokens (for `UNNEST`).
fn lease_columns(leases: &[Lease]) -> (Vec<i64>, Vec<&str>) {
    leases
        .iter()
        .filter_map(|lease| Some((row_id(lease)?, lease.token.as_str())))
        .unzip()
}

/// The PostgreSQL backend.
#[derive(Debug)]
pub(crate) struct PostgresBackend {
    /// Enqueues and reads: durable commits.
    pool: PgPool,
    /// Lease operations (claim, complete, retry, ...) commit with `synchronous_commit = off`:
    /// losing the last of them in a database crash only means a job runs again, which
    /// at-least-once delivery allows, and it spares a disk flush per claimed batch.
    leases: PgPool,
    /// Started by the first worker; the listening task stops once the backend is dropped.
    wake: OnceCell<Arc<watch::Sender<u64>>>,
}

impl PostgresBackend {
    pub(crate) fn new(pool: PgPool) -> Self {
        // The queue table churns faster than autovacuum refreshes its statistics; with stale
        // ones (say, right after a bulk enqueue) the planner bitmap-scans and sorts the whole
        // ready set for every claim (16 ms for 20k jobs) instead of walking the ready index in
        // order (0.1 ms). Every plan of these queries is an index walk, so forbid the others.
        let options = (*pool.connect_options())
            .clone()
            .options([("synchronous_commit", "off"), ("enable_bitmapscan", "off")]);
        // A lease operation that cannot get a connection soon fails, rather than waiting the
        // default 30 s: the runtime retries it a few times, then lets the lease lapse.
        let leases = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with(options);
        Self {
            pool,
            leases,
            wake: OnceCell::new(),
        }
    }

    /// Starts the LISTEN connection the first time a worker asks for wake-ups.
    async fn listener(&self) -> Result<WorkSignal, QueueError> {
        let sender = self
            .wake
            .get_or_try_init(|| async {
                let mut listener = PgListener::connect_with(&self.pool)
                    .await
                    .map_err(QueueError::from_sqlx)?;
                listener
                    .listen(CHANNEL)
                    .await
                    .map_err(QueueError::from_sqlx)?;
                let sender = Arc::new(watch::channel(0u64).0);
                let signal: Weak<watch::Sender<u64>> = Arc::downgrade(&sender);
                tokio::spawn(async move {
                    loop {
                        // `recv` reconnects by itself after a lost connection; wake workers
                        // either way, since notifications may have been missed meanwhile.
                        let received = listener.recv().await;
                        let Some(signal) = signal.upgrade() else {
                            break;
                        };
                        signal.send_modify(|count| *count = count.wrapping_add(1));
                        if let Err(error) = received {
                            tracing::warn!(%error, "queue notification listener failed; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                });
                Ok::<_, QueueError>(sender)
            })
            .await?;
        Ok(sender.subscribe())
    }

    async fn notify(&self) -> Result<(), QueueError> {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(CHANNEL)
            .execute(&self.pool)
            .await
            .map_err(QueueError::from_sqlx)?;
        Ok(())
    }
}

#[async_trait]
impl Backend for PostgresBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Postgres
    }

    async fn enqueue(&self, jobs: &[NewJob]) -> Result<Vec<JobId>, QueueError> {
        let mut conn = self.pool.acquire().await.map_err(QueueError::from_sqlx)?;
        insert_jobs(&mut conn, jobs).await
    }

    async fn claim(&self, request: ClaimRequest<'_>) -> Result<Vec<ClaimedJob>, QueueError> {
        let token = claim_token();
        let rows = sqlx::query(
            "WITH picked AS (
                SELECT id FROM anb_queue_jobs
                WHERE state = 'ready' AND run_at <= now() AND name = ANY($1)
                ORDER BY run_at, id
                LIMIT $2
                FOR UPDATE SKIP LOCKED
             )
             UPDATE anb_queue_jobs AS j
             SET state = 'running', attempts = j.attempts + 1, locked_by = $3, lease_token = $5,
                 locked_until = clock_timestamp() + $4 * interval '1 millisecond'
             FROM picked WHERE j.id = picked.id
             RETURNING j.id, j.name, j.payload::text AS payload, j.attempts, j.max_attempts,
                 (extract(epoch FROM j.enqueued_at) * 1000)::int8 AS enqueued_at_ms",
        )
        .bind(request.names)
        .bind(i64::try_from(request.max).unwrap_or(i64::MAX))
        .bind(request.owner)
        .bind(millis(request.lease))
        .bind(&token)
        .fetch_all(&self.leases)
        .await
        .map_err(QueueError::from_sqlx)?;
        let mut jobs = rows
            .into_iter()
            .map(|row| {
                Ok(ClaimedJob {
                    id: JobId(row.try_get::<i64, _>("id")?.to_string()),
                    name: row.try_get("name")?,
                    payload: row.try_get("payload")?,
                    attempt: u32::try_from(row.try_get::<i32, _>("attempts")?).unwrap_or(0),
                    max_attempts: u32::try_from(row.try_get::<i32, _>("max_attempts")?)
                        .unwrap_or(0),
                    enqueued_at_ms: row.try_get("enqueued_at_ms")?,
                    token: token.clone(),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(QueueError::from_sqlx)?;
        // UPDATE ... RETURNING does not keep the CTE's order.
        jobs.sort_by_key(|job| job.id.0.parse::<i64>().unwrap_or(i64::MAX));
        Ok(jobs)
    }

    async fn complete(&self, owner: &str, leases: &[Lease]) -> Result<(), QueueError> {
        let (ids, tokens) = lease_columns(leases);
        sqlx::query(
            "DELETE FROM anb_queue_jobs AS j USING UNNEST($1::int8[], $2::text[]) AS l(id, token)
             WHERE j.id = l.id AND j.lease_token = l.token AND j.locked_by = $3
               AND j.state = 'running'",
        )
        .bind(&ids)
        .bind(&tokens)
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
        sqlx::query(
            "UPDATE anb_queue_jobs
             SET state = 'ready', run_at = clock_timestamp() + $4 * interval '1 millisecond',
                 locked_by = NULL, locked_until = NULL, last_error = $5
             WHERE id = $1 AND lease_token = $2 AND locked_by = $3 AND state = 'running'",
        )
        .bind(id)
        .bind(&lease.token)
        .bind(owner)
        .bind(millis(delay))
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
        sqlx::query(
            "UPDATE anb_queue_jobs
             SET state = 'dead', dead_at = now(), locked_by = NULL, locked_until = NULL,
                 last_error = $4
             WHERE id = $1 AND lease_token = $2 AND locked_by = $3 AND state = 'running'",
        )
        .bind(id)
        .bind(&lease.token)
        .bind(owner)
        .bind(error)
        .execute(&self.leases)
        .await
        .map_err(QueueError::from_sqlx)?;
        Ok(())
    }

    async fn release(&self, owner: &str, leases: &[Lease]) -> Result<(), QueueError> {
        let (ids, tokens) = lease_columns(leases);
        let released = sqlx::query(
            "UPDATE anb_queue_jobs AS j
             SET state = 'ready', run_at = now(), attempts = greatest(j.attempts - 1, 0),
                 locked_by = NULL, locked_until = NULL
             FROM UNNEST($1::int8[], $2::text[]) AS l(id, token)
             WHERE j.id = l.id AND j.lease_token = l.token AND j.locked_by = $3
               AND j.state = 'running'",
        )
        .bind(&ids)
        .bind(&tokens)
        .bind(owner)
        .execute(&self.leases)
        .await
        .map_err(QueueError::from_sqlx)?;
        if released.rows_affected() > 0 {
            self.notify().await?;
        }
        Ok(())
    }

    async fn extend(
        &self,
        owner: &str,
        leases: &[Lease],
        lease: Duration,
    ) -> Result<Vec<Lease>, QueueError> {
        let (ids, tokens) = lease_columns(leases);
        let extended: Vec<(i64, String)> = sqlx::query_as(
            "UPDATE anb_queue_jobs AS j
             SET locked_until = clock_timestamp() + $4 * interval '1 millisecond'
             FROM UNNEST($1::int8[], $2::text[]) AS l(id, token)
             WHERE j.id = l.id AND j.lease_token = l.token AND j.locked_by = $3
               AND j.state = 'running'
             RETURNING j.id, l.token",
        )
        .bind(&ids)
        .bind(&tokens)
        .bind(owner)
        .bind(millis(lease))
        .fetch_all(&self.leases)
        .await
        .map_err(QueueError::from_sqlx)?;
        Ok(lost_leases(leases, &extended))
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
        sqlx::query(
            "UPDATE anb_queue_jobs
             SET progress = $4, locked_until = clock_timestamp() + $5 * interval '1 millisecond'
             WHERE id = $1 AND lease_token = $2 AND locked_by = $3 AND state = 'running'",
        )
        .bind(id)
        .bind(&lease.token)
        .bind(owner)
        .bind(i16::from(percent))
        .bind(millis(duration))
        .execute(&self.leases)
        .await
        .map_err(QueueError::from_sqlx)?;
        Ok(())
    }

    async fn recover_expired(&self) -> Result<u64, QueueError> {
        let recovered = sqlx::query(
            "WITH expired AS (
                SELECT id FROM anb_queue_jobs
                WHERE state = 'running' AND locked_until < now()
                FOR UPDATE SKIP LOCKED
             )
             UPDATE anb_queue_jobs AS j
             SET state = CASE WHEN j.attempts >= j.max_attempts THEN 'dead' ELSE 'ready' END,
                 dead_at = CASE WHEN j.attempts >= j.max_attempts THEN now() END,
                 run_at = now(), locked_by = NULL, locked_until = NULL,
                 last_error = 'lease expired: the worker stopped renewing it (crashed or stalled)'
             FROM expired WHERE j.id = expired.id",
        )
        .execute(&self.leases)
        .await
        .map_err(QueueError::from_sqlx)?
        .rows_affected();
        if recovered > 0 {
            self.notify().await?;
        }
        Ok(recovered)
    }

    async fn next_due_in(&self, names: &[&'static str]) -> Result<Option<Duration>, QueueError> {
        // No `greatest(0, …)` here: PostgreSQL's `greatest` skips NULL arguments, so over an
        // empty queue it turned "nothing waits" into "due now" and idle workers claimed in a
        // tight loop. The clamp to zero happens below, where NULL stays `None`.
        let wait_ms: Option<i64> = sqlx::query_scalar(
            "SELECT ceil(extract(epoch FROM min(run_at) - now()) * 1000)::int8
             FROM anb_queue_jobs WHERE state = 'ready' AND name = ANY($1)",
        )
        .bind(names)
        .fetch_one(&self.leases)
        .await
        .map_err(QueueError::from_sqlx)?;
        Ok(wait_ms.map(|ms| Duration::from_millis(u64::try_from(ms.max(0)).unwrap_or(0))))
    }

    async fn subscribe(&self) -> Result<WorkSignal, QueueError> {
        self.listener().await
    }

    fn idle_poll_interval(&self) -> Duration {
        // LISTEN/NOTIFY wakes workers; polling only covers a lost notification.
        Duration::from_secs(1)
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let row = sqlx::query(
            "SELECT
                count(*) FILTER (WHERE state = 'ready' AND run_at <= now()) AS ready,
                count(*) FILTER (WHERE state = 'running') AS in_flight,
                count(*) FILTER (WHERE state = 'ready' AND run_at > now()) AS delayed,
                count(*) FILTER (WHERE state = 'dead') AS dead,
                coalesce(extract(epoch FROM now() - min(run_at)
                    FILTER (WHERE state = 'ready' AND run_at <= now())) * 1000, 0)::int8 AS oldest_ms
             FROM anb_queue_jobs",
        )
        .fetch_one(&self.pool)
        .await.map_err(QueueError::from_sqlx)?;
        let count = |column: &str| -> Result<u64, sqlx::Error> {
            Ok(u64::try_from(row.try_get::<i64, _>(column)?).unwrap_or(0))
        };
        Ok(QueueStats {
            ready: count("ready").map_err(QueueError::from_sqlx)?,
            in_flight: count("in_flight").map_err(QueueError::from_sqlx)?,
            delayed: count("delayed").map_err(QueueError::from_sqlx)?,
            dead: count("dead").map_err(QueueError::from_sqlx)?,
            oldest_ready_age: Duration::from_millis(
                count("oldest_ms").map_err(QueueError::from_sqlx)?,
            ),
        })
    }

    async fn job(&self, id: &JobId) -> Result<Option<JobInfo>, QueueError> {
        let Ok(id) = id.as_str().parse::<i64>() else {
            return Ok(None);
        };
        let row = sqlx::query(
            "SELECT id, name, state, run_at > now() AS later, attempts, max_attempts,
                    last_error, progress
             FROM anb_queue_jobs WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(QueueError::from_sqlx)?;
        let Some(row) = row else { return Ok(None) };
        let state: String = row.try_get("state").map_err(QueueError::from_sqlx)?;
        Ok(Some(JobInfo {
            id: JobId(id.to_string()),
            name: row.try_get("name").map_err(QueueError::from_sqlx)?,
            state: sql_state(&state, row.try_get("later").map_err(QueueError::from_sqlx)?),
            attempts: u32::try_from(
                row.try_get::<i32, _>("attempts")
                    .map_err(QueueError::from_sqlx)?,
            )
            .unwrap_or(0),
            max_attempts: u32::try_from(
                row.try_get::<i32, _>("max_attempts")
                    .map_err(QueueError::from_sqlx)?,
            )
            .unwrap_or(0),
            last_error: row.try_get("last_error").map_err(QueueError::from_sqlx)?,
            progress: row
                .try_get::<Option<i16>, _>("progress")
                .map_err(QueueError::from_sqlx)?
                .and_then(|p| u8::try_from(p).ok()),
        }))
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
        let rows = sqlx::query(
            "SELECT j.id, j.name, j.payload::text AS payload, j.attempts, j.last_error
             FROM anb_queue_jobs j, anb_queue_jobs c
             WHERE c.id = $1 AND c.state = 'dead' AND j.state = 'dead'
               AND (j.dead_at, j.id) < (c.dead_at, c.id)
             ORDER BY j.dead_at DESC, j.id DESC LIMIT $2",
        )
        .bind(after)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(QueueError::from_sqlx)?;
        rows.iter().map(dead_job).collect()
    }

    async fn requeue_dead(&self, ids: &[JobId]) -> Result<u64, QueueError> {
        let ids: Vec<i64> = ids
            .iter()
            .filter_map(|id| id.as_str().parse().ok())
            .collect();
        let mut tx = self.pool.begin().await.map_err(QueueError::from_sqlx)?;
        let requeued = sqlx::query(
            "UPDATE anb_queue_jobs
             SET state = 'ready', attempts = 0, run_at = now(), dead_at = NULL,
                 locked_by = NULL, locked_until = NULL, lease_token = NULL
             WHERE id = ANY($1) AND state = 'dead'",
        )
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .map_err(QueueError::from_sqlx)?
        .rows_affected();
        if requeued > 0 {
            // Workers listen for inserts; an update wakes them this way.
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(CHANNEL)
                .execute(&mut *tx)
                .await
                .map_err(QueueError::from_sqlx)?;
        }
        tx.commit().await.map_err(QueueError::from_sqlx)?;
        Ok(requeued)
    }

    async fn prune_dead(&self, older_than: Duration) -> Result<u64, QueueError> {
        Ok(sqlx::query(
            "DELETE FROM anb_queue_jobs
             WHERE state = 'dead' AND dead_at < now() - $1 * interval '1 millisecond'",
        )
        .bind(millis(older_than))
        .execute(&self.pool)
        .await
        .map_err(QueueError::from_sqlx)?
        .rows_affected())
    }

    async fn dead_jobs(&self, limit: usize) -> Result<Vec<DeadJob>, QueueError> {
        let rows = sqlx::query(
            "SELECT id, name, payload::text AS payload, attempts, last_error FROM anb_queue_jobs
             WHERE state = 'dead' ORDER BY dead_at DESC, id DESC LIMIT $1",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(QueueError::from_sqlx)?;
        rows.iter().map(dead_job).collect()
    }
}

/// A dead job from a row of `id, name, payload, attempts, last_error`.
fn dead_job(row: &sqlx::postgres::PgRow) -> Result<DeadJob, QueueError> {
    Ok(DeadJob {
        id: JobId(
            row.try_get::<i64, _>("id")
                .map_err(QueueError::from_sqlx)?
                .to_string(),
        ),
        name: row.try_get("name").map_err(QueueError::from_sqlx)?,
        payload: row.try_get("payload").map_err(QueueError::from_sqlx)?,
        attempts: u32::try_from(
            row.try_get::<i32, _>("attempts")
                .map_err(QueueError::from_sqlx)?,
        )
        .unwrap_or(0),
        last_error: row.try_get("last_error").map_err(QueueError::from_sqlx)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(payload_bytes: usize) -> NewJob {
        NewJob {
            name: "job",
            payload: "x".repeat(payload_bytes),
            max_attempts: 1,
            delay: Duration::ZERO,
        }
    }

    #[test]
    fn splits_bulk_inserts_by_size_keeping_order_and_every_job() {
        let jobs: Vec<NewJob> = (0..10).map(|n| job(100 * n)).collect();
        let runs = split_by_size(&jobs, 1000);
        assert!(runs.len() > 1);
        assert!(runs.iter().all(|run| {
            run.len() == 1 || run.iter().map(|j| j.payload.len() + 31).sum::<usize>() <= 1000
        }));
        let rejoined: Vec<usize> = runs.concat().iter().map(|j| j.payload.len()).collect();
        assert_eq!(rejoined, (0..10).map(|n| 100 * n).collect::<Vec<_>>());
    }

    #[test]
    fn an_oversized_job_gets_a_statement_of_its_own() {
        let jobs = [job(10), job(5000), job(10)];
        let runs = split_by_size(&jobs, 1000);
        assert_eq!(
            runs.iter().map(|run| run.len()).collect::<Vec<_>>(),
            [1, 1, 1]
        );
        assert_eq!(split_by_size(&jobs[..1], 1000).len(), 1);
        assert!(split_by_size(&[], 1000).is_empty());
    }
}
