//! The SQLite backend: the same semantics as PostgreSQL on one file, with WAL journaling,
//! one writing connection, millisecond scheduling and in-process wake-ups.
//!
//! Its operations run in the SQL core shared with PostgreSQL ([`SqlBackend`],
//! `sql/backend.rs`); this module holds what is SQLite's own: opening the file, the schema
//! and its migrations, inserting jobs (transactionally too), the statements ([`SQL`]) and
//! [`SqliteDialect`].

use std::{
    future::Future,
    str::FromStr,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use sqlx::{
    Connection as _, Executor, Sqlite, SqliteConnection, SqlitePool,
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteQueryResult,
        SqliteSynchronous,
    },
};
use tokio::sync::watch;

use crate::{
    backend::{BackendKind, ClaimRequest, ClaimedJob, JobId, Lease, NewJob, WorkSignal, now_ms},
    error::QueueError,
    sql::{At, Dialect, SqlBackend, SqlQuery, Statements, millis, row_id},
    unique::Enqueued,
};

/// See the PostgreSQL backend: every step keeps the table usable by the previous version.
const SCHEMA_VERSION: i64 = 7;

const SCHEMA_V1: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS anb_queue_jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        payload TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'ready' CHECK (state IN ('ready', 'running', 'dead')),
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL,
        run_at INTEGER NOT NULL,
        enqueued_at INTEGER NOT NULL,
        locked_by TEXT,
        locked_until INTEGER,
        progress INTEGER,
        last_error TEXT,
        dead_at INTEGER
    )",
    "CREATE INDEX IF NOT EXISTS anb_queue_jobs_ready ON anb_queue_jobs (run_at, id) WHERE state = 'ready'",
    "CREATE INDEX IF NOT EXISTS anb_queue_jobs_running ON anb_queue_jobs (locked_until) WHERE state = 'running'",
    "CREATE INDEX IF NOT EXISTS anb_queue_jobs_dead ON anb_queue_jobs (dead_at) WHERE state = 'dead'",
];

/// Version 2: a lease token per claim (see the PostgreSQL backend's `SCHEMA_V2`).
const SCHEMA_V2: &[&str] = &["ALTER TABLE anb_queue_jobs ADD COLUMN lease_token TEXT"];

/// Version 3: the ready index leads with the job name (see the PostgreSQL backend's
/// `SCHEMA_V4`); version 2's statements are served by it too.
const SCHEMA_V3: &[&str] = &[
    "CREATE INDEX IF NOT EXISTS anb_queue_jobs_ready_by_name
     ON anb_queue_jobs (name, run_at, id) WHERE state = 'ready'",
    "DROP INDEX IF EXISTS anb_queue_jobs_ready",
];

/// Version 4: unique jobs, as in the PostgreSQL backend's `SCHEMA_V5`: a key held while
/// unfinished in the job's row under a partial unique index, a period key in a table of its
/// own that outlives the row.
const SCHEMA_V4: &[&str] = &[
    "ALTER TABLE anb_queue_jobs ADD COLUMN unique_key TEXT",
    "CREATE UNIQUE INDEX IF NOT EXISTS anb_queue_jobs_unique
     ON anb_queue_jobs (name, unique_key) WHERE unique_key IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS anb_queue_unique_keys (
        name TEXT NOT NULL,
        unique_key TEXT NOT NULL,
        job_id INTEGER NOT NULL,
        unique_until INTEGER NOT NULL,
        PRIMARY KEY (name, unique_key)
    ) WITHOUT ROWID",
];

/// Version 5: cancellation, as in the PostgreSQL backend's `SCHEMA_V6`.
const SCHEMA_V5: &[&str] =
    &["ALTER TABLE anb_queue_jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0"];

/// Version 6: priorities, as in the PostgreSQL backend's `SCHEMA_V7`.
const SCHEMA_V6: &[&str] = &[
    "ALTER TABLE anb_queue_jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
    "CREATE INDEX IF NOT EXISTS anb_queue_jobs_ready_by_priority
     ON anb_queue_jobs (name, priority, run_at, id) WHERE state = 'ready'",
    "DROP INDEX IF EXISTS anb_queue_jobs_ready_by_name",
];

/// Version 7: global rate limits per named queue, as in the PostgreSQL backend's
/// `SCHEMA_V8` (windows by the host's clock, which every process on the file shares).
const SCHEMA_V7: &[&str] = &["CREATE TABLE IF NOT EXISTS anb_queue_rate_limits (
        queue TEXT PRIMARY KEY,
        window_start INTEGER NOT NULL,
        used INTEGER NOT NULL,
        granted INTEGER NOT NULL
    ) WITHOUT ROWID"];

/// Takes permits as the PostgreSQL backend's `TAKE_PERMITS` does, at the time `?5`: queue
/// `?1`, want `?2`, `?3` per `?4` ms. The write lock orders concurrent takes.
const TAKE_PERMITS: &str = "INSERT INTO anb_queue_rate_limits (queue, window_start, used, granted)
     VALUES (?1, ?5 - ?5 % ?4, min(?2, ?3), min(?2, ?3))
     ON CONFLICT (queue) DO UPDATE SET
        window_start = max(window_start, excluded.window_start),
        used = CASE
            WHEN excluded.window_start > window_start THEN excluded.used
            WHEN excluded.window_start = window_start THEN used + max(min(?2, ?3 - used), 0)
            ELSE used END,
        granted = CASE
            WHEN excluded.window_start > window_start THEN excluded.granted
            WHEN excluded.window_start = window_start THEN max(min(?2, ?3 - used), 0)
            ELSE 0 END
     RETURNING granted, window_start, window_start + ?4 - ?5 AS wait_ms";

/// Whether a job of the given names (`?2`, a JSON array) is due at `?1`: one probe of the
/// ready index per name and priority. An idle worker asks this instead of claiming, since a
/// claim takes the write lock.
const ANY_DUE: &str =
    "SELECT EXISTS (SELECT 1 FROM json_each(?2) AS n, json_each('[0,1,2,3,4,5,6,7,8,9]') AS p
        WHERE EXISTS (SELECT 1 FROM anb_queue_jobs AS j
            WHERE j.state = 'ready' AND j.name = n.value AND j.priority = p.value
                AND j.run_at <= ?1))";

/// Claims the jobs due at `?3` of the names in `?4`, highest priority first, then oldest due:
/// per name and priority, the first `?5` entries of its range of the ready index, then the
/// first `?5` of those.
const CLAIM: &str = "UPDATE anb_queue_jobs
     SET state = 'running', attempts = attempts + 1, locked_by = ?1, locked_until = ?2,
         lease_token = ?6
     WHERE id IN (
        SELECT c.id FROM json_each(?4) AS n
        JOIN json_each('[0,1,2,3,4,5,6,7,8,9]') AS p
        JOIN anb_queue_jobs AS c ON c.id IN (
            SELECT j.id FROM anb_queue_jobs AS j
            WHERE j.state = 'ready' AND j.name = n.value AND j.priority = p.value
                AND j.run_at <= ?3
            ORDER BY j.run_at, j.id
            LIMIT ?5)
        ORDER BY c.priority, c.run_at, c.id
        LIMIT ?5
     )
     RETURNING id, name, payload, attempts, max_attempts, enqueued_at AS enqueued_at_ms,
         cancel_requested";

/// The earliest `run_at` of a ready job of the names in `?1`: the first entry of each (name,
/// priority) range of the ready index.
const NEXT_DUE: &str = "SELECT min((
        SELECT j.run_at FROM anb_queue_jobs AS j
        WHERE j.state = 'ready' AND j.name = n.value AND j.priority = p.value
        ORDER BY j.run_at LIMIT 1))
     FROM json_each(?1) AS n, json_each('[0,1,2,3,4,5,6,7,8,9]') AS p";

/// The queue's stats without a table scan, counts capped at `?2` per name and state (see
/// the PostgreSQL backend's `STATS`).
const STATS: &str = "WITH RECURSIVE names(name) AS (
        SELECT (SELECT name FROM anb_queue_jobs WHERE state = 'ready' ORDER BY name LIMIT 1)
        UNION ALL
        SELECT (SELECT j.name FROM anb_queue_jobs AS j
                WHERE j.state = 'ready' AND j.name > names.name ORDER BY j.name LIMIT 1)
        FROM names WHERE names.name IS NOT NULL
     ),
     per_name AS (
        SELECT
            min(?2, (SELECT sum((SELECT count(*) FROM (SELECT 1 FROM anb_queue_jobs AS q
                WHERE q.state = 'ready' AND q.name = names.name AND q.priority = p.value
                    AND q.run_at <= ?1
                ORDER BY q.run_at LIMIT ?2))) FROM json_each('[0,1,2,3,4,5,6,7,8,9]') AS p)) AS ready,
            min(?2, (SELECT sum((SELECT count(*) FROM (SELECT 1 FROM anb_queue_jobs AS q
                WHERE q.state = 'ready' AND q.name = names.name AND q.priority = p.value
                    AND q.run_at > ?1
                ORDER BY q.run_at LIMIT ?2))) FROM json_each('[0,1,2,3,4,5,6,7,8,9]') AS p)) AS delayed,
            (SELECT min((SELECT q.run_at FROM anb_queue_jobs AS q
                WHERE q.state = 'ready' AND q.name = names.name AND q.priority = p.value
                ORDER BY q.run_at LIMIT 1)) FROM json_each('[0,1,2,3,4,5,6,7,8,9]') AS p) AS first_run_at
        FROM names WHERE names.name IS NOT NULL
     )
     SELECT
        coalesce((SELECT sum(ready) FROM per_name), 0) AS ready,
        coalesce((SELECT sum(delayed) FROM per_name), 0) AS delayed,
        (SELECT count(*) FROM (SELECT 1 FROM anb_queue_jobs
            WHERE state = 'running' ORDER BY locked_until LIMIT ?2)) AS in_flight,
        (SELECT count(*) FROM (SELECT 1 FROM anb_queue_jobs
            WHERE state = 'dead' ORDER BY dead_at LIMIT ?2)) AS dead,
        coalesce((SELECT max(?1 - min(first_run_at), 0) FROM per_name), 0) AS oldest_ms";

/// Leases as a JSON array of `[row id, token]` pairs, so one statement can take a whole
/// batch through `json_each`.
fn json_ids(leases: &[Lease]) -> String {
    let numbers: Vec<(i64, &str)> = leases
        .iter()
        .filter_map(|lease| Some((row_id(lease)?, lease.token.as_str())))
        .collect();
    serde_json::to_string(&numbers).unwrap_or_else(|_| "[]".to_owned())
}

fn json_names(names: &[&str]) -> String {
    serde_json::to_string(names).unwrap_or_else(|_| "[]".to_owned())
}

/// Opens a pool on the file named by `url`, created if missing.
pub(crate) async fn connect(url: &str) -> Result<SqlitePool, QueueError> {
    let options = SqliteConnectOptions::from_str(url)
        .map_err(QueueError::from_sqlx)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10));
    // SQLite takes one writer at a time; one connection queues our writes in the pool instead
    // of in busy-retry loops.
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .map_err(QueueError::from_sqlx)?;
    Ok(pool)
}

/// Creates or upgrades the queue's tables, versioned in `anb_queue_schema`.
pub(crate) async fn setup(pool: &SqlitePool) -> Result<(), QueueError> {
    let mut conn = pool.acquire().await.map_err(QueueError::from_sqlx)?;
    // IMMEDIATE takes the write lock up front, so two processes cannot interleave the DDL.
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *conn)
        .await
        .map_err(QueueError::from_sqlx)?;
    let outcome = async {
        sqlx::query("CREATE TABLE IF NOT EXISTS anb_queue_schema (version INTEGER NOT NULL)")
            .execute(&mut *conn)
            .await?;
        let version: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM anb_queue_schema")
            .fetch_one(&mut *conn)
            .await?;
        let version = version.unwrap_or(0);
        if version < SCHEMA_VERSION {
            // One transaction: a step is applied whole or not at all.
            let steps = [
                (1, SCHEMA_V1),
                (2, SCHEMA_V2),
                (3, SCHEMA_V3),
                (4, SCHEMA_V4),
                (5, SCHEMA_V5),
                (6, SCHEMA_V6),
                (7, SCHEMA_V7),
            ];
            for (_, statements) in steps.iter().filter(|(step, _)| *step > version) {
                for statement in *statements {
                    sqlx::query(*statement).execute(&mut *conn).await?;
                }
            }
            sqlx::query("DELETE FROM anb_queue_schema")
                .execute(&mut *conn)
                .await?;
            sqlx::query("INSERT INTO anb_queue_schema (version) VALUES (?)")
                .bind(SCHEMA_VERSION)
                .execute(&mut *conn)
                .await?;
        }
        Ok::<_, sqlx::Error>(())
    }
    .await;
    match outcome {
        Ok(()) => {
            sqlx::query("COMMIT")
                .execute(&mut *conn)
                .await
                .map_err(QueueError::from_sqlx)?;
            Ok(())
        }
        Err(error) => {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            Err(QueueError::from_sqlx(error))
        }
    }
}

/// Rows per multi-row insert: 6 bound values each, well under SQLite's variable limit.
const ROWS_PER_STATEMENT: usize = 200;

/// Inserts jobs on any connection, typically the caller's open transaction.
pub(crate) async fn insert_jobs(
    conn: &mut SqliteConnection,
    jobs: &[NewJob],
) -> Result<Vec<JobId>, QueueError> {
    let now = now_ms();
    let mut ids = Vec::with_capacity(jobs.len());
    for statement in jobs.chunks(ROWS_PER_STATEMENT) {
        let mut insert = sqlx::QueryBuilder::new(
            "INSERT INTO anb_queue_jobs (name, payload, max_attempts, run_at, enqueued_at, priority) ",
        );
        insert.push_values(statement, |mut row, job| {
            row.push_bind(job.name)
                .push_bind(job.payload.as_str())
                .push_bind(i64::from(job.max_attempts))
                .push_bind(now.saturating_add(millis(job.delay)))
                .push_bind(now)
                .push_bind(i64::from(job.priority.level()));
        });
        insert.push(" RETURNING id");
        let mut inserted: Vec<i64> = insert
            .build_query_scalar()
            .fetch_all(&mut *conn)
            .await
            .map_err(QueueError::from_sqlx)?;
        // RETURNING's row order is unspecified; AUTOINCREMENT ids grow in VALUES order.
        inserted.sort_unstable();
        ids.extend(inserted.into_iter().map(|id| JobId(id.to_string())));
    }
    Ok(ids)
}

/// Inserts a job with a unique key on any connection (see
/// [`Backend::enqueue_unique`](crate::backend::Backend::enqueue_unique)), within a
/// transaction (a savepoint in the caller's). Its first statement writes, so the transaction
/// holds the file's write lock before it reads who holds the key: no other writer can take
/// or free the key in between.
pub(crate) async fn insert_unique_job(
    conn: &mut SqliteConnection,
    job: &NewJob,
) -> Result<Enqueued, QueueError> {
    let Some(unique) = &job.unique else {
        let id = insert_jobs(conn, std::slice::from_ref(job))
            .await?
            .remove(0);
        return Ok(Enqueued {
            id,
            duplicate: false,
        });
    };
    let mut tx = conn.begin().await.map_err(QueueError::from_sqlx)?;
    let now = now_ms();
    let enqueued = match unique.period {
        None => {
            let inserted: Option<i64> = sqlx::query_scalar(
                "INSERT INTO anb_queue_jobs
                     (name, payload, max_attempts, run_at, enqueued_at, unique_key, priority)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (name, unique_key) WHERE unique_key IS NOT NULL DO NOTHING
                 RETURNING id",
            )
            .bind(job.name)
            .bind(&job.payload)
            .bind(i64::from(job.max_attempts))
            .bind(now.saturating_add(millis(job.delay)))
            .bind(now)
            .bind(&unique.key)
            .bind(i64::from(job.priority.level()))
            .fetch_optional(&mut *tx)
            .await
            .map_err(QueueError::from_sqlx)?;
            match inserted {
                Some(id) => (id, false),
                None => (
                    sqlx::query_scalar(
                        "SELECT id FROM anb_queue_jobs WHERE name = ?1 AND unique_key = ?2",
                    )
                    .bind(job.name)
                    .bind(&unique.key)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(QueueError::from_sqlx)?,
                    true,
                ),
            }
        }
        Some(period) => {
            // The key first, with a placeholder holder, so the first statement is the write.
            let taken: Option<i64> = sqlx::query_scalar(
                "INSERT INTO anb_queue_unique_keys (name, unique_key, job_id, unique_until)
                 VALUES (?1, ?2, 0, ?3)
                 ON CONFLICT (name, unique_key) DO UPDATE
                 SET job_id = 0, unique_until = excluded.unique_until
                 WHERE unique_until <= ?4
                 RETURNING 1",
            )
            .bind(job.name)
            .bind(&unique.key)
            .bind(now.saturating_add(millis(period)))
            .bind(now)
            .fetch_optional(&mut *tx)
            .await
            .map_err(QueueError::from_sqlx)?;
            let key_holder = "SELECT job_id FROM anb_queue_unique_keys
                 WHERE name = ?1 AND unique_key = ?2";
            if taken.is_some() {
                let id = insert_jobs(&mut tx, std::slice::from_ref(job)).await?;
                let id: i64 = id[0].0.parse().unwrap_or_default();
                sqlx::query(
                    "UPDATE anb_queue_unique_keys SET job_id = ?3
                     WHERE name = ?1 AND unique_key = ?2",
                )
                .bind(job.name)
                .bind(&unique.key)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(QueueError::from_sqlx)?;
                (id, false)
            } else {
                let holder: i64 = sqlx::query_scalar(key_holder)
                    .bind(job.name)
                    .bind(&unique.key)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(QueueError::from_sqlx)?;
                (holder, true)
            }
        }
    };
    tx.commit().await.map_err(QueueError::from_sqlx)?;
    Ok(Enqueued {
        id: JobId(enqueued.0.to_string()),
        duplicate: enqueued.1,
    })
}

/// The statements of the operations the SQL core runs (see [`Statements`] for what each
/// takes). Sets of leases arrive as JSON arrays of `[row id, token]` pairs for `json_each`,
/// one lease as such an array of one; times as milliseconds since the Unix epoch.
const SQL: Statements = Statements {
    claim: CLAIM,
    complete: "DELETE FROM anb_queue_jobs
        WHERE (id, lease_token) IN (SELECT value ->> 0, value ->> 1 FROM json_each(?1))
          AND locked_by = ?2 AND state = 'running'",
    retry: "UPDATE anb_queue_jobs
        SET state = 'ready', run_at = ?3, locked_by = NULL, locked_until = NULL, last_error = ?4
        WHERE (id, lease_token) IN (SELECT value ->> 0, value ->> 1 FROM json_each(?1))
          AND locked_by = ?2 AND state = 'running'",
    dead_letter: "UPDATE anb_queue_jobs
        SET state = 'dead', dead_at = ?3, locked_by = NULL, locked_until = NULL, last_error = ?4,
            unique_key = NULL
        WHERE (id, lease_token) IN (SELECT value ->> 0, value ->> 1 FROM json_each(?1))
          AND locked_by = ?2 AND state = 'running'",
    give_back: "UPDATE anb_queue_jobs
        SET state = 'ready', run_at = ?3, attempts = max(attempts - 1, 0),
            locked_by = NULL, locked_until = NULL
        WHERE (id, lease_token) IN (SELECT value ->> 0, value ->> 1 FROM json_each(?1))
          AND locked_by = ?2 AND state = 'running'",
    extend: "UPDATE anb_queue_jobs SET locked_until = ?3
        WHERE (id, lease_token) IN (SELECT value ->> 0, value ->> 1 FROM json_each(?1))
          AND locked_by = ?2 AND state = 'running'
        RETURNING id, lease_token, cancel_requested",
    progress: "UPDATE anb_queue_jobs SET progress = ?3, locked_until = ?4
        WHERE (id, lease_token) IN (SELECT value ->> 0, value ->> 1 FROM json_each(?1))
          AND locked_by = ?2 AND state = 'running'",
    recover_expired: "UPDATE anb_queue_jobs
        SET state = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'ready' END,
            dead_at = CASE WHEN attempts >= max_attempts THEN ?1 END,
            unique_key = CASE WHEN attempts < max_attempts THEN unique_key END,
            run_at = ?1, locked_by = NULL, locked_until = NULL,
            last_error = 'lease expired: the worker stopped renewing it (crashed or stalled)'
        WHERE state = 'running' AND locked_until < ?1",
    next_due: NEXT_DUE,
    stats: STATS,
    job: "SELECT id, name, state, run_at > ?2 AS later, attempts, max_attempts, last_error,
            progress, priority
        FROM anb_queue_jobs WHERE id = ?1",
    dead_jobs: "SELECT id, name, payload, attempts, last_error, dead_at AS dead_at_ms
        FROM anb_queue_jobs
        WHERE state = 'dead' ORDER BY dead_at DESC, id DESC LIMIT ?1",
    dead_jobs_after:
        "SELECT j.id, j.name, j.payload, j.attempts, j.last_error, j.dead_at AS dead_at_ms
        FROM anb_queue_jobs j, anb_queue_jobs c
        WHERE c.id = ?1 AND c.state = 'dead' AND j.state = 'dead'
          AND (j.dead_at < c.dead_at OR (j.dead_at = c.dead_at AND j.id < c.id))
        ORDER BY j.dead_at DESC, j.id DESC LIMIT ?2",
    requeue_dead: "UPDATE anb_queue_jobs
        SET state = 'ready', attempts = 0, run_at = ?2, dead_at = NULL,
            locked_by = NULL, locked_until = NULL, lease_token = NULL, cancel_requested = 0
        WHERE id IN (SELECT value FROM json_each(?1)) AND state = 'dead'",
    cancel_waiting: "DELETE FROM anb_queue_jobs WHERE id = ?1 AND state = 'ready'",
    cancel_running: "UPDATE anb_queue_jobs SET cancel_requested = 1
        WHERE id = ?1 AND state = 'running'",
    unique_holder: "SELECT id FROM anb_queue_jobs WHERE name = ?1 AND unique_key = ?2
        UNION ALL
        SELECT job_id FROM anb_queue_unique_keys WHERE name = ?1 AND unique_key = ?2
        LIMIT 1",
    prune_unique_keys: "DELETE FROM anb_queue_unique_keys WHERE unique_until <= ?1",
    prune_dead: "DELETE FROM anb_queue_jobs WHERE state = 'dead' AND dead_at < ?1",
    take_permits: TAKE_PERMITS,
    return_permits: "UPDATE anb_queue_rate_limits SET used = max(used - ?3, 0)
        WHERE queue = ?1 AND window_start = ?2",
};

/// The SQLite backend: the SQL core over [`SqliteDialect`].
pub(crate) type SqliteBackend = SqlBackend<SqliteDialect>;

impl SqliteBackend {
    /// A backend on `pool`, for enqueues and lease operations alike (SQLite takes one writer
    /// at a time: a pool of its own would only queue behind the same lock).
    pub(crate) fn new(pool: SqlitePool) -> Self {
        let dialect = SqliteDialect {
            wake: watch::channel(0).0,
            idle: AtomicBool::new(false),
        };
        Self::with_pools(pool.clone(), pool, dialect)
    }
}

/// SQLite's part of the SQL core: [`SQL`], JSON text for sets of values, the host's clock,
/// and in-process wake-ups.
#[derive(Debug)]
pub(crate) struct SqliteDialect {
    wake: watch::Sender<u64>,
    /// Set when the last claim found nothing: the next one first looks with a read, which
    /// in WAL mode takes no lock, so idle workers polling every 100 ms do not queue for the
    /// file's single write lock ahead of the enqueues they wait for.
    idle: AtomicBool,
}

impl Dialect for SqliteDialect {
    type Db = Sqlite;
    type Attempts = i64;
    type Progress = i64;

    const KIND: BackendKind = BackendKind::Sqlite;
    const SQL: Statements = SQL;
    // Wake-ups reach this process's workers at once; this bounds the latency for jobs
    // enqueued by another process on the same file.
    const IDLE_POLL_INTERVAL: Duration = Duration::from_millis(100);

    fn bind_leases(query: SqlQuery<Sqlite>, leases: &[Lease]) -> SqlQuery<Sqlite> {
        query.bind(json_ids(leases))
    }

    fn bind_lease(query: SqlQuery<Sqlite>, id: i64, token: &str) -> SqlQuery<Sqlite> {
        query.bind(serde_json::to_string(&[(id, token)]).unwrap_or_else(|_| "[]".to_owned()))
    }

    fn bind_ids(query: SqlQuery<Sqlite>, ids: &[i64]) -> SqlQuery<Sqlite> {
        query.bind(serde_json::to_string(ids).unwrap_or_else(|_| "[]".to_owned()))
    }

    fn bind_names(query: SqlQuery<Sqlite>, names: &[&str]) -> SqlQuery<Sqlite> {
        query.bind(json_names(names))
    }

    fn bind_time(query: SqlQuery<Sqlite>, at: At) -> SqlQuery<Sqlite> {
        query.bind(match at {
            At::Now => now_ms(),
            At::In(offset) => now_ms().saturating_add(millis(offset)),
            At::Ago(offset) => now_ms().saturating_sub(millis(offset)),
        })
    }

    fn bind_claim(
        query: SqlQuery<Sqlite>,
        request: &ClaimRequest<'_>,
        token: &str,
    ) -> SqlQuery<Sqlite> {
        let now = now_ms();
        query
            .bind(request.owner)
            .bind(now.saturating_add(millis(request.lease)))
            .bind(now)
            .bind(json_names(request.names))
            .bind(i64::try_from(request.max).unwrap_or(i64::MAX))
            .bind(token)
    }

    /// `time` is a `run_at`, in milliseconds since the Unix epoch.
    fn until(time: i64) -> Duration {
        Duration::from_millis(u64::try_from(time.saturating_sub(now_ms())).unwrap_or(0))
    }

    fn rows_affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }

    /// In one transaction, since a large batch takes several statements.
    async fn insert(pool: &SqlitePool, jobs: &[NewJob]) -> Result<Vec<JobId>, QueueError> {
        let mut tx = pool.begin().await.map_err(QueueError::from_sqlx)?;
        let ids = insert_jobs(&mut tx, jobs).await?;
        tx.commit().await.map_err(QueueError::from_sqlx)?;
        Ok(ids)
    }

    fn insert_unique(
        conn: &mut SqliteConnection,
        job: &NewJob,
    ) -> impl Future<Output = Result<Enqueued, QueueError>> + Send {
        insert_unique_job(conn, job)
    }

    /// After a claim that found nothing, only when a read finds a job due (see `idle`).
    async fn may_claim(
        &self,
        pool: &SqlitePool,
        names: &[&'static str],
    ) -> Result<bool, QueueError> {
        if !self.idle.load(Ordering::Relaxed) {
            return Ok(true);
        }
        sqlx::query_scalar(ANY_DUE)
            .bind(now_ms())
            .bind(json_names(names))
            .fetch_one(pool)
            .await
            .map_err(QueueError::from_sqlx)
    }

    fn claimed(&self, jobs: &[ClaimedJob]) {
        self.idle.store(jobs.is_empty(), Ordering::Relaxed);
    }

    /// Nothing: SQLite has no notifications ([`Dialect::wake_local`] wakes this process's
    /// workers; others find the jobs on their next poll).
    async fn notify<'e, E>(_executor: E) -> Result<(), QueueError>
    where
        E: Executor<'e, Database = Sqlite> + 'e,
    {
        Ok(())
    }

    /// Workers in other processes find the job on their next poll.
    fn wake_local(&self) {
        self.wake
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    async fn subscribe(&self, _pool: &SqlitePool) -> Result<WorkSignal, QueueError> {
        Ok(self.wake.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use sqlx::Row;

    use super::*;

    /// The plan lines of `statement` that read the jobs table.
    async fn plan_lines(pool: &SqlitePool, statement: &str) -> Vec<String> {
        let explain = format!("EXPLAIN QUERY PLAN {statement}");
        let rows = sqlx::query(sqlx::AssertSqlSafe(explain.as_str()))
            .fetch_all(pool)
            .await
            .unwrap();
        rows.iter()
            .map(|row| row.try_get::<String, _>("detail").unwrap())
            .filter(|detail| {
                ["SCAN ", "SEARCH "].iter().any(|verb| {
                    ["anb_queue_jobs", "j ", "c "]
                        .iter()
                        .any(|table| detail.starts_with(&format!("{verb}{table}")))
                })
            })
            .collect()
    }

    /// Before the ready index led with the name, a claim (and an idle worker's due check)
    /// searched by `run_at` alone and read every other name's due jobs; a stats read scanned
    /// the table. Each (name, priority) is one range: the statements list every level.
    #[tokio::test]
    async fn every_polling_statement_searches_by_name_and_none_scans_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("queue.db").display());
        let pool = connect(&url).await.unwrap();
        setup(&pool).await.unwrap();
        for statement in [ANY_DUE, CLAIM, NEXT_DUE] {
            let lines = plan_lines(&pool, statement).await;
            assert!(!lines.is_empty(), "{statement}");
            for line in &lines {
                let by_name =
                    line.contains("anb_queue_jobs_ready_by_priority (name=? AND priority=?");
                let by_id = line.contains("INTEGER PRIMARY KEY");
                assert!(by_name || by_id, "{line}\nin the plan of {statement}");
            }
        }
        let levels = serde_json::to_string(
            &crate::Priority::all()
                .map(crate::Priority::level)
                .collect::<Vec<_>>(),
        )
        .unwrap();
        for statement in [ANY_DUE, CLAIM, NEXT_DUE, STATS] {
            assert!(statement.contains(&levels), "{statement}");
        }
        let lines = plan_lines(&pool, STATS).await;
        assert!(!lines.is_empty());
        for line in &lines {
            assert!(line.contains("INDEX"), "{line}\nin the plan of the stats");
        }
    }
}
