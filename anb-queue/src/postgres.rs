//! The PostgreSQL backend: one table, `FOR UPDATE SKIP LOCKED` claims in batches,
//! `LISTEN/NOTIFY` wake-ups, millisecond scheduling and leases renewed by heartbeat.
//!
//! Its operations run in the SQL core shared with SQLite ([`SqlBackend`], `sql/backend.rs`);
//! this module holds what is PostgreSQL's own: the schema and its migrations, inserting
//! jobs (transactionally too), the statements ([`SQL`]) and [`PostgresDialect`].

use std::{
    future::Future,
    sync::{Arc, Weak},
    time::Duration,
};

use sqlx::{
    Connection as _, Executor, PgConnection, PgPool, Postgres,
    postgres::{PgListener, PgPoolOptions, PgQueryResult},
};
use tokio::sync::{OnceCell, watch};

use crate::{
    backend::{
        BackendKind, ClaimRequest, ClaimedJob, JobId, Lease, NewJob, UNIQUE_ATTEMPTS, WorkSignal,
    },
    error::QueueError,
    sql::{At, Dialect, SqlBackend, SqlQuery, Statements, millis, row_id},
    unique::Enqueued,
};

/// The channel the insert trigger notifies.
const CHANNEL: &str = "anb_queue";

/// The schema version this build writes; `setup` upgrades older ones step by step.
///
/// Every step must leave the table usable by the code of the version before it, since
/// workers of both run side by side during a rolling deploy: add nullable columns and
/// indexes, never rename or drop. Old code's `setup` leaves a newer version alone.
const SCHEMA_VERSION: i32 = 8;

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

/// Version 4: the ready index leads with the job name. A claim names the jobs its worker
/// handles; over `(run_at, id)` a claim for a rare name walked every other name's backlog
/// (3,001 rows read to find one job behind 3,000 of another name). Code of version 3 still
/// works on it: its `name = ANY(..) ORDER BY run_at, id` is served by this index too.
const SCHEMA_V4: &[&str] = &[
    "CREATE INDEX IF NOT EXISTS anb_queue_jobs_ready_by_name
     ON anb_queue_jobs (name, run_at, id) WHERE state = 'ready'",
    "DROP INDEX IF EXISTS anb_queue_jobs_ready",
];

/// Version 5: unique jobs. A key held while the job is unfinished lives in the job's own row
/// (`unique_key`), under a partial unique index over the rows that have one, so jobs without
/// a key never touch it; the delete that completes a job frees its key at no extra cost, and
/// dead-lettering clears it. A key held for a period must outlive its job's row, so it lives
/// in `anb_queue_unique_keys` with its expiry (`unique_until`): completing and dead-lettering
/// never write that table. Code of version 4 never writes either; a keyed job that a
/// version-4 worker dead-letters keeps its key until it is pruned.
const SCHEMA_V5: &[&str] = &[
    "ALTER TABLE anb_queue_jobs ADD COLUMN IF NOT EXISTS unique_key TEXT",
    "CREATE UNIQUE INDEX IF NOT EXISTS anb_queue_jobs_unique
     ON anb_queue_jobs (name, unique_key) WHERE unique_key IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS anb_queue_unique_keys (
        name TEXT NOT NULL,
        unique_key TEXT NOT NULL,
        job_id BIGINT NOT NULL,
        unique_until TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (name, unique_key)
    )",
];

/// Version 6: cancellation. A running job that is cancelled is flagged for its worker, which
/// reads the flag when it renews the lease. Code of version 5 ignores the column: a job it
/// runs is not stopped, and a flagged job it claims again runs (an older worker only misses
/// cancellations, nothing else changes for it).
const SCHEMA_V6: &[&str] = &[
    "ALTER TABLE anb_queue_jobs ADD COLUMN IF NOT EXISTS cancel_requested BOOLEAN NOT NULL DEFAULT false",
];

/// Version 7: priorities. The ready index leads with the name and then the priority, so a
/// claim probes each (name, priority) range for its due head, highest priority first, and
/// no probe reads past another priority's rows or a range's delayed ones. Code of version 6
/// still works on it: it inserts priority 0 (the column's default), and its claims, which
/// order by due time alone, are served by this index's name prefix (reading the name's whole
/// ready range, slower on a deep backlog, until its workers are replaced).
const SCHEMA_V7: &[&str] = &[
    "ALTER TABLE anb_queue_jobs ADD COLUMN IF NOT EXISTS priority SMALLINT NOT NULL DEFAULT 0",
    "CREATE INDEX IF NOT EXISTS anb_queue_jobs_ready_by_priority
     ON anb_queue_jobs (name, priority, run_at, id) WHERE state = 'ready'",
    "DROP INDEX IF EXISTS anb_queue_jobs_ready_by_name",
];

/// Version 8: global rate limits per named queue. One row per limited queue holds the
/// current window (its start, in milliseconds since the Unix epoch by the server's clock) and
/// the permits taken from it; `granted` is what the last take granted (the upsert's way of
/// returning it). Only a table is added: code of version 7 never reads or writes it (its
/// workers are not limited, so a limit holds once every worker runs version 8).
const SCHEMA_V8: &[&str] = &["CREATE TABLE IF NOT EXISTS anb_queue_rate_limits (
        queue TEXT PRIMARY KEY,
        window_start BIGINT NOT NULL,
        used BIGINT NOT NULL,
        granted BIGINT NOT NULL
    )"];

/// Takes up to `$2` permits from the current window of queue `$1`'s limit of `$3` per `$4`
/// ms, in one upsert (the row lock orders concurrent takes): a newer window starts over, the
/// current one grants what is left, and a take whose clock read an older window than the
/// row's (it waited for the lock across a boundary) gets nothing. Returns `granted,
/// window_start, wait_ms`.
const TAKE_PERMITS: &str = "WITH w AS (
        SELECT ms, ms - ms % $4 AS start
        FROM (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8 AS ms) AS clock
     ),
     taken AS (
        INSERT INTO anb_queue_rate_limits AS r (queue, window_start, used, granted)
        SELECT $1, w.start, least($2, $3), least($2, $3) FROM w
        ON CONFLICT (queue) DO UPDATE SET
            window_start = greatest(r.window_start, EXCLUDED.window_start),
            used = CASE
                WHEN EXCLUDED.window_start > r.window_start THEN EXCLUDED.used
                WHEN EXCLUDED.window_start = r.window_start
                    THEN r.used + greatest(least($2, $3 - r.used), 0)
                ELSE r.used END,
            granted = CASE
                WHEN EXCLUDED.window_start > r.window_start THEN EXCLUDED.granted
                WHEN EXCLUDED.window_start = r.window_start
                    THEN greatest(least($2, $3 - r.used), 0)
                ELSE 0 END
        RETURNING r.granted, r.window_start
     )
     SELECT taken.granted, taken.window_start, taken.window_start + $4 - w.ms AS wait_ms
     FROM taken, w";

/// Inserts a job whose key is held while it is unfinished, unless a live job of its name
/// holds the key: then the holder's id. `ON CONFLICT` waits for a concurrent insert of the
/// key to commit or roll back. The holder is read in the statement's snapshot, so a holder
/// committed meanwhile (or one completed since the conflict) reads as no row: try again.
const INSERT_UNIQUE: &str = "WITH inserted AS (
        INSERT INTO anb_queue_jobs (name, payload, max_attempts, run_at, unique_key, priority)
        VALUES ($1, $2, $3, now() + $4 * interval '1 millisecond', $5, $7)
        ON CONFLICT (name, unique_key) WHERE unique_key IS NOT NULL DO NOTHING
        RETURNING id
     )
     SELECT id, false AS duplicate FROM inserted
     UNION ALL
     SELECT id, true FROM anb_queue_jobs
     WHERE name = $1 AND unique_key = $5 AND NOT EXISTS (SELECT 1 FROM inserted)";

/// Takes a period key (a fresh one, or one whose period is over) for a new job's id drawn
/// from the jobs' sequence, and inserts the job only if the key was taken; else reads the
/// holder (trying again as above when that read comes back empty).
const INSERT_FOR_PERIOD: &str = "WITH new_job AS (
        SELECT nextval(pg_get_serial_sequence('anb_queue_jobs', 'id')) AS id
     ),
     taken AS (
        INSERT INTO anb_queue_unique_keys AS k (name, unique_key, job_id, unique_until)
        SELECT $1, $5, id, now() + $6 * interval '1 millisecond' FROM new_job
        ON CONFLICT (name, unique_key) DO UPDATE
        SET job_id = EXCLUDED.job_id, unique_until = EXCLUDED.unique_until
        WHERE k.unique_until <= now()
        RETURNING job_id
     ),
     inserted AS (
        INSERT INTO anb_queue_jobs (id, name, payload, max_attempts, run_at, priority)
        OVERRIDING SYSTEM VALUE
        SELECT job_id, $1, $2, $3, now() + $4 * interval '1 millisecond', $7 FROM taken
        RETURNING id
     )
     SELECT id, false AS duplicate FROM inserted
     UNION ALL
     SELECT job_id, true FROM anb_queue_unique_keys
     WHERE name = $1 AND unique_key = $5 AND NOT EXISTS (SELECT 1 FROM taken)";

const INSERT_JOBS: &str =
    "INSERT INTO anb_queue_jobs (name, payload, max_attempts, run_at, priority)
     SELECT n, p, m, now() + d * interval '1 millisecond', r
     FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::int8[], $5::int2[])
        WITH ORDINALITY AS t(n, p, m, d, r, o)
     ORDER BY o
     RETURNING id";

/// Claims the due jobs of the given names, highest priority first, then oldest due: per
/// name, one probe of the ready index (`name, priority, run_at, id`) per priority, in order,
/// until `$2` jobs are found (the executor pulls the priorities one at a time and stops at
/// the limit), so a claim reads none of another name's backlog, nor a lower priority's when a
/// higher one has enough. Each probe locks at most `$2` rows; the outer order and limit keep
/// the first `$2` of them (the others are unlocked when the statement's transaction ends).
/// `generate_series(0, 9)` is every priority level ([`Priority`](crate::Priority)).
const CLAIM: &str = "WITH picked AS (
        SELECT c.id FROM UNNEST($1::text[]) AS n(name)
        CROSS JOIN LATERAL (
            SELECT d.id, d.priority, d.run_at FROM generate_series(0, 9) AS p(priority)
            CROSS JOIN LATERAL (
                SELECT j.id, j.priority, j.run_at FROM anb_queue_jobs AS j
                WHERE j.state = 'ready' AND j.name = n.name AND j.priority = p.priority
                    AND j.run_at <= now()
                ORDER BY j.run_at, j.id
                LIMIT $2
                FOR UPDATE SKIP LOCKED
            ) AS d
            LIMIT $2
        ) AS c
        ORDER BY c.priority, c.run_at, c.id
        LIMIT $2
     )
     UPDATE anb_queue_jobs AS j
     SET state = 'running', attempts = j.attempts + 1, locked_by = $3, lease_token = $5,
         locked_until = clock_timestamp() + $4 * interval '1 millisecond'
     WHERE j.id = ANY(ARRAY(SELECT id FROM picked))
     RETURNING j.id, j.name, j.payload::text AS payload, j.attempts, j.max_attempts,
         (extract(epoch FROM j.enqueued_at) * 1000)::int8 AS enqueued_at_ms, j.cancel_requested";

/// Milliseconds until the next ready job of the given names is due (negative when one is
/// overdue, NULL when none waits): the first entry of each (name, priority) range of the
/// ready index.
///
/// No `greatest(0, …)` here: PostgreSQL's `greatest` skips NULL arguments, so over an empty
/// queue it turned "nothing waits" into "due now" and idle workers claimed in a tight loop.
const NEXT_DUE: &str = "SELECT ceil(extract(epoch FROM min(first.run_at) - now()) * 1000)::int8
     FROM UNNEST($1::text[]) AS n(name)
     CROSS JOIN generate_series(0, 9) AS p(priority)
     CROSS JOIN LATERAL (
        SELECT j.run_at FROM anb_queue_jobs AS j
        WHERE j.state = 'ready' AND j.name = n.name AND j.priority = p.priority
        ORDER BY j.run_at
        LIMIT 1
     ) AS first";

/// The queue's stats without a table scan: the distinct names of ready jobs by a skip scan
/// of the ready index, then capped index range counts per name and priority (the `ORDER BY`
/// in each capped subquery keeps the planner on the index).
const STATS: &str = "WITH RECURSIVE names(name) AS (
        (SELECT name FROM anb_queue_jobs WHERE state = 'ready' ORDER BY name LIMIT 1)
        UNION ALL
        SELECT (SELECT j.name FROM anb_queue_jobs AS j
                WHERE j.state = 'ready' AND j.name > names.name ORDER BY j.name LIMIT 1)
        FROM names WHERE names.name IS NOT NULL
     ),
     per_name AS (
        SELECT
            (SELECT count(*) FROM (SELECT 1 FROM generate_series(0, 9) AS p(priority)
                CROSS JOIN LATERAL (SELECT 1 FROM anb_queue_jobs AS j
                    WHERE j.state = 'ready' AND j.name = names.name
                        AND j.priority = p.priority AND j.run_at <= now()
                    ORDER BY j.run_at LIMIT $1) AS q
                LIMIT $1) AS r) AS ready,
            (SELECT count(*) FROM (SELECT 1 FROM generate_series(0, 9) AS p(priority)
                CROSS JOIN LATERAL (SELECT 1 FROM anb_queue_jobs AS j
                    WHERE j.state = 'ready' AND j.name = names.name
                        AND j.priority = p.priority AND j.run_at > now()
                    ORDER BY j.run_at LIMIT $1) AS q
                LIMIT $1) AS d) AS delayed,
            (SELECT min(q.run_at) FROM generate_series(0, 9) AS p(priority)
                CROSS JOIN LATERAL (SELECT j.run_at FROM anb_queue_jobs AS j
                    WHERE j.state = 'ready' AND j.name = names.name
                        AND j.priority = p.priority
                    ORDER BY j.run_at LIMIT 1) AS q) AS first_run_at
        FROM names WHERE names.name IS NOT NULL
     )
     SELECT
        coalesce((SELECT sum(ready) FROM per_name), 0)::int8 AS ready,
        coalesce((SELECT sum(delayed) FROM per_name), 0)::int8 AS delayed,
        (SELECT count(*) FROM (SELECT 1 FROM anb_queue_jobs
            WHERE state = 'running' ORDER BY locked_until LIMIT $1) AS f)::int8 AS in_flight,
        (SELECT count(*) FROM (SELECT 1 FROM anb_queue_jobs
            WHERE state = 'dead' ORDER BY dead_at LIMIT $1) AS x)::int8 AS dead,
        coalesce((SELECT greatest(extract(epoch FROM now() - min(first_run_at)) * 1000, 0)
            FROM per_name), 0)::int8 AS oldest_ms";

/// Each name once: a repeated name would make a claim probe (and lock) its rows twice.
fn distinct_names<'a>(names: &[&'a str]) -> Vec<&'a str> {
    let mut distinct = names.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    distinct
}

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
        let steps = [
            (1, SCHEMA_V1),
            (2, SCHEMA_V2),
            (3, SCHEMA_V3),
            (4, SCHEMA_V4),
            (5, SCHEMA_V5),
            (6, SCHEMA_V6),
            (7, SCHEMA_V7),
            (8, SCHEMA_V8),
        ];
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

/// Inserts a job with a unique key on any connection (see
/// [`Backend::enqueue_unique`](crate::backend::Backend::enqueue_unique)).
pub(crate) async fn insert_unique_job(
    conn: &mut PgConnection,
    job: &NewJob,
) -> Result<Enqueued, QueueError> {
    let Some(unique) = &job.unique else {
        let id = insert_statement(conn, std::slice::from_ref(job))
            .await?
            .remove(0);
        return Ok(Enqueued {
            id,
            duplicate: false,
        });
    };
    let statement = match unique.period {
        None => INSERT_UNIQUE,
        Some(_) => INSERT_FOR_PERIOD,
    };
    for _ in 0..UNIQUE_ATTEMPTS {
        let row: Option<(i64, bool)> = sqlx::query_as(statement)
            .bind(job.name)
            .bind(&job.payload)
            .bind(i32::try_from(job.max_attempts).unwrap_or(i32::MAX))
            .bind(millis(job.delay))
            .bind(&unique.key)
            .bind(unique.period.map_or(0, millis))
            .bind(i16::from(job.priority.level()))
            .fetch_optional(&mut *conn)
            .await
            .map_err(QueueError::from_sqlx)?;
        if let Some((id, duplicate)) = row {
            return Ok(Enqueued {
                id: JobId(id.to_string()),
                duplicate,
            });
        }
    }
    Err(QueueError::UniqueKeyContended {
        job: job.name,
        key: unique.key.clone(),
    })
}

/// Splits `jobs` into runs whose names and payloads add up to at most `budget` bytes (a
/// job larger than that gets a run of its own).
fn split_by_size(jobs: &[NewJob], budget: usize) -> Vec<&[NewJob]> {
    let mut runs = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (index, job) in jobs.iter().enumerate() {
        // Per row, besides the text: five array element headers, an int4, an int8, an int2.
        let size = job.name.len() + job.payload.len() + 34;
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
    let priorities: Vec<i16> = jobs
        .iter()
        .map(|job| i16::from(job.priority.level()))
        .collect();
    let ids: Vec<i64> = sqlx::query_scalar(INSERT_JOBS)
        .bind(&names)
        .bind(&payloads)
        .bind(&max_attempts)
        .bind(&delays)
        .bind(&priorities)
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

/// The statements of the operations the SQL core runs (see [`Statements`] for what each
/// takes). Sets of leases arrive as parallel arrays for `UNNEST`, one lease as its id and
/// token; times as offsets from the server's clock, in milliseconds.
const SQL: Statements = Statements {
    claim: CLAIM,
    complete: "DELETE FROM anb_queue_jobs AS j USING UNNEST($1::int8[], $2::text[]) AS l(id, token)
        WHERE j.id = l.id AND j.lease_token = l.token AND j.locked_by = $3
          AND j.state = 'running'",
    retry: "UPDATE anb_queue_jobs
        SET state = 'ready', run_at = clock_timestamp() + $4 * interval '1 millisecond',
            locked_by = NULL, locked_until = NULL, last_error = $5
        WHERE id = $1 AND lease_token = $2 AND locked_by = $3 AND state = 'running'",
    dead_letter: "UPDATE anb_queue_jobs
        SET state = 'dead', dead_at = now(), locked_by = NULL, locked_until = NULL,
            last_error = $4, unique_key = NULL
        WHERE id = $1 AND lease_token = $2 AND locked_by = $3 AND state = 'running'",
    give_back: "UPDATE anb_queue_jobs AS j
        SET state = 'ready', run_at = clock_timestamp() + $4 * interval '1 millisecond',
            attempts = greatest(j.attempts - 1, 0), locked_by = NULL, locked_until = NULL
        FROM UNNEST($1::int8[], $2::text[]) AS l(id, token)
        WHERE j.id = l.id AND j.lease_token = l.token AND j.locked_by = $3
          AND j.state = 'running'",
    extend: "UPDATE anb_queue_jobs AS j
        SET locked_until = clock_timestamp() + $4 * interval '1 millisecond'
        FROM UNNEST($1::int8[], $2::text[]) AS l(id, token)
        WHERE j.id = l.id AND j.lease_token = l.token AND j.locked_by = $3
          AND j.state = 'running'
        RETURNING j.id, l.token, j.cancel_requested",
    progress: "UPDATE anb_queue_jobs
        SET progress = $4, locked_until = clock_timestamp() + $5 * interval '1 millisecond'
        WHERE id = $1 AND lease_token = $2 AND locked_by = $3 AND state = 'running'",
    recover_expired: "WITH expired AS (
            SELECT id FROM anb_queue_jobs
            WHERE state = 'running' AND locked_until < now()
            FOR UPDATE SKIP LOCKED
        )
        UPDATE anb_queue_jobs AS j
        SET state = CASE WHEN j.attempts >= j.max_attempts THEN 'dead' ELSE 'ready' END,
            dead_at = CASE WHEN j.attempts >= j.max_attempts THEN now() END,
            unique_key = CASE WHEN j.attempts < j.max_attempts THEN j.unique_key END,
            run_at = now(), locked_by = NULL, locked_until = NULL,
            last_error = 'lease expired: the worker stopped renewing it (crashed or stalled)'
        FROM expired WHERE j.id = expired.id",
    next_due: NEXT_DUE,
    stats: STATS,
    job: "SELECT id, name, state, run_at > now() AS later, attempts, max_attempts,
            last_error, progress, priority
        FROM anb_queue_jobs WHERE id = $1",
    dead_jobs: "SELECT id, name, payload::text AS payload, attempts, last_error,
            (extract(epoch FROM dead_at) * 1000)::int8 AS dead_at_ms
        FROM anb_queue_jobs
        WHERE state = 'dead' ORDER BY dead_at DESC, id DESC LIMIT $1",
    dead_jobs_after: "SELECT j.id, j.name, j.payload::text AS payload, j.attempts, j.last_error,
            (extract(epoch FROM j.dead_at) * 1000)::int8 AS dead_at_ms
        FROM anb_queue_jobs j, anb_queue_jobs c
        WHERE c.id = $1 AND c.state = 'dead' AND j.state = 'dead'
          AND (j.dead_at, j.id) < (c.dead_at, c.id)
        ORDER BY j.dead_at DESC, j.id DESC LIMIT $2",
    requeue_dead: "UPDATE anb_queue_jobs
        SET state = 'ready', attempts = 0, run_at = now(), dead_at = NULL,
            locked_by = NULL, locked_until = NULL, lease_token = NULL, cancel_requested = false
        WHERE id = ANY($1) AND state = 'dead'",
    // A key held while unfinished frees with the row it lives in.
    cancel_waiting: "DELETE FROM anb_queue_jobs WHERE id = $1 AND state = 'ready'",
    cancel_running: "UPDATE anb_queue_jobs SET cancel_requested = true
        WHERE id = $1 AND state = 'running'",
    unique_holder: "SELECT id FROM anb_queue_jobs WHERE name = $1 AND unique_key = $2
        UNION ALL
        SELECT job_id FROM anb_queue_unique_keys WHERE name = $1 AND unique_key = $2
        LIMIT 1",
    prune_unique_keys: "DELETE FROM anb_queue_unique_keys WHERE unique_until <= now()",
    prune_dead: "DELETE FROM anb_queue_jobs
        WHERE state = 'dead' AND dead_at < now() - $1 * interval '1 millisecond'",
    take_permits: TAKE_PERMITS,
    return_permits: "UPDATE anb_queue_rate_limits SET used = greatest(used - $3, 0)
        WHERE queue = $1 AND window_start = $2",
};

/// The PostgreSQL backend: the SQL core over [`PostgresDialect`].
pub(crate) type PostgresBackend = SqlBackend<PostgresDialect>;

/// Settings of the lease pool's sessions (see [`PostgresBackend::new`]).
const LEASE_SESSION_SETTINGS: [(&str, &str); 3] = [
    ("synchronous_commit", "off"),
    ("enable_bitmapscan", "off"),
    ("enable_seqscan", "off"),
];

impl PostgresBackend {
    /// A backend that enqueues and reads through `pool` (durable commits) and runs lease
    /// operations (claim, complete, retry, ...) on a pool of its own, with the same connect
    /// options, whose sessions commit with `synchronous_commit = off`: losing the last of
    /// them in a database crash only means a job runs again, which at-least-once delivery
    /// allows, and it spares a disk flush per claimed batch.
    pub(crate) fn new(pool: PgPool) -> Self {
        // The queue table churns faster than autovacuum refreshes its statistics; with stale
        // ones (say, right after a bulk enqueue) the planner bitmap-scans and sorts the whole
        // ready set for every claim (16 ms for 20k jobs) instead of walking the ready index in
        // order (0.1 ms). Every plan of these queries is an index walk, so forbid the others.
        let options = (*pool.connect_options())
            .clone()
            .options(LEASE_SESSION_SETTINGS);
        // A lease operation that cannot get a connection soon fails, rather than waiting the
        // default 30 s: the runtime retries it a few times, then lets the lease lapse.
        let leases = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with(options);
        Self::with_pools(pool, leases, PostgresDialect::default())
    }
}

/// PostgreSQL's part of the SQL core: [`SQL`], arrays for sets of values, the server's
/// clock, and `LISTEN/NOTIFY` wake-ups.
#[derive(Debug, Default)]
pub(crate) struct PostgresDialect {
    /// Started by the first worker; the listening task stops once the backend is dropped.
    wake: OnceCell<Arc<watch::Sender<u64>>>,
}

impl Dialect for PostgresDialect {
    type Db = Postgres;
    type Attempts = i32;
    type Progress = i16;

    const KIND: BackendKind = BackendKind::Postgres;
    const SQL: Statements = SQL;
    // LISTEN/NOTIFY wakes workers; polling only covers a lost notification.
    const IDLE_POLL_INTERVAL: Duration = Duration::from_secs(1);

    fn bind_leases(query: SqlQuery<Postgres>, leases: &[Lease]) -> SqlQuery<Postgres> {
        let (ids, tokens) = lease_columns(leases);
        query.bind(ids).bind(tokens)
    }

    fn bind_lease(query: SqlQuery<Postgres>, id: i64, token: &str) -> SqlQuery<Postgres> {
        query.bind(id).bind(token)
    }

    fn bind_ids(query: SqlQuery<Postgres>, ids: &[i64]) -> SqlQuery<Postgres> {
        query.bind(ids)
    }

    fn bind_names(query: SqlQuery<Postgres>, names: &[&str]) -> SqlQuery<Postgres> {
        query.bind(distinct_names(names))
    }

    fn bind_time(query: SqlQuery<Postgres>, at: At) -> SqlQuery<Postgres> {
        match at {
            At::Now => query,
            At::In(offset) | At::Ago(offset) => query.bind(millis(offset)),
        }
    }

    fn bind_claim(
        query: SqlQuery<Postgres>,
        request: &ClaimRequest<'_>,
        token: &str,
    ) -> SqlQuery<Postgres> {
        query
            .bind(distinct_names(request.names))
            .bind(i64::try_from(request.max).unwrap_or(i64::MAX))
            .bind(request.owner)
            .bind(millis(request.lease))
            .bind(token)
    }

    /// `time` is milliseconds from now ([`NEXT_DUE`]), negative when it is past. The clamp
    /// to zero happens here, where NULL stays `None`.
    fn until(time: i64) -> Duration {
        Duration::from_millis(u64::try_from(time.max(0)).unwrap_or(0))
    }

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }

    async fn insert(pool: &PgPool, jobs: &[NewJob]) -> Result<Vec<JobId>, QueueError> {
        let mut conn = pool.acquire().await.map_err(QueueError::from_sqlx)?;
        insert_jobs(&mut conn, jobs).await
    }

    fn insert_unique(
        conn: &mut PgConnection,
        job: &NewJob,
    ) -> impl Future<Output = Result<Enqueued, QueueError>> + Send {
        insert_unique_job(conn, job)
    }

    /// Always: a claim that finds nothing costs an index probe per name, and takes no lock.
    async fn may_claim(&self, _pool: &PgPool, _names: &[&'static str]) -> Result<bool, QueueError> {
        Ok(true)
    }

    fn claimed(&self, _jobs: &[ClaimedJob]) {}

    async fn notify<'e, E>(executor: E) -> Result<(), QueueError>
    where
        E: Executor<'e, Database = Postgres> + 'e,
    {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(CHANNEL)
            .execute(executor)
            .await
            .map_err(QueueError::from_sqlx)?;
        Ok(())
    }

    /// Nothing: this process's workers listen like any other's.
    fn wake_local(&self) {}

    /// Starts the LISTEN connection the first time a worker asks for wake-ups.
    async fn subscribe(&self, pool: &PgPool) -> Result<WorkSignal, QueueError> {
        let sender = self
            .wake
            .get_or_try_init(|| async {
                let mut listener = PgListener::connect_with(pool)
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
}

#[cfg(test)]
mod tests {
    use sqlx::Row;

    use super::*;

    fn job(payload_bytes: usize) -> NewJob {
        NewJob {
            name: "job",
            payload: "x".repeat(payload_bytes),
            max_attempts: 1,
            delay: Duration::ZERO,
            priority: crate::Priority::HIGHEST,
            unique: None,
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

    /// A fresh database on the server at `ANB_TEST_POSTGRES_URL`, with the queue's schema.
    async fn fresh_database() -> (PgPool, String, String) {
        let admin_url = std::env::var("ANB_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let admin = PgPool::connect(&admin_url).await.unwrap_or_else(|error| {
            panic!(
                "PostgreSQL is not reachable at {admin_url} (set ANB_TEST_POSTGRES_URL): {error}"
            )
        });
        let database = format!("anb_queue_unit_{}", uuid::Uuid::new_v4().simple());
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let mut url = url::Url::parse(&admin_url).unwrap();
        url.set_path(&database);
        let pool = PgPool::connect(url.as_str()).await.unwrap();
        setup(&pool).await.unwrap();
        (pool, admin_url, database)
    }

    async fn drop_database(pool: PgPool, admin_url: &str, database: &str) {
        pool.close().await;
        let admin = PgPool::connect(admin_url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
        )))
        .execute(&admin)
        .await
        .unwrap();
    }

    /// Rows the plan read from the jobs table: returned and filtered out, over every loop.
    fn rows_read(plan: &serde_json::Value) -> f64 {
        // The update node reports the rows it wrote, which its scan below already counted.
        let own = if plan["Relation Name"] == "anb_queue_jobs" && plan["Node Type"] != "ModifyTable"
        {
            let number = |key: &str| plan[key].as_f64().unwrap_or(0.0);
            (number("Actual Rows") + number("Rows Removed by Filter")) * number("Actual Loops")
        } else {
            0.0
        };
        let children = plan["Plans"]
            .as_array()
            .map_or(0.0, |plans| plans.iter().map(rows_read).sum());
        own + children
    }

    /// Runs `EXPLAIN ANALYZE` of a statement in a transaction it rolls back, on a lease
    /// session (the settings the backend's statements run with).
    async fn rows_read_by(
        pool: &PgPool,
        statement: &str,
        bind: impl FnOnce(
            sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
        )
            -> sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> f64 {
        let mut tx = pool.begin().await.unwrap();
        for (setting, value) in LEASE_SESSION_SETTINGS {
            sqlx::query("SELECT set_config($1, $2, true)")
                .bind(setting)
                .bind(value)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        let explain = format!("EXPLAIN (ANALYZE, FORMAT JSON) {statement}");
        let query = bind(sqlx::query(sqlx::AssertSqlSafe(explain.as_str())));
        let row = query.fetch_one(&mut *tx).await.unwrap();
        // A `json` column; its wire form is the text itself.
        let plan: String = row.try_get_unchecked(0).unwrap();
        let plan: serde_json::Value = serde_json::from_str(&plan).unwrap();
        tx.rollback().await.unwrap();
        rows_read(&plan[0]["Plan"])
    }

    async fn insert_many(pool: &PgPool, name: &str, count: i32, delay_ms: i64) {
        insert_at_priority(pool, name, count, delay_ms, 0).await;
    }

    async fn insert_at_priority(
        pool: &PgPool,
        name: &str,
        count: i32,
        delay_ms: i64,
        priority: i16,
    ) {
        sqlx::query(
            "INSERT INTO anb_queue_jobs (name, payload, max_attempts, run_at, priority)
             SELECT $1, '{}', 5, now() + $3 * interval '1 millisecond', $4
             FROM generate_series(1, $2)",
        )
        .bind(name)
        .bind(count)
        .bind(delay_ms)
        .bind(priority)
        .execute(pool)
        .await
        .unwrap();
    }

    fn claim_of_ten(
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(vec!["job"])
            .bind(10_i64)
            .bind("owner")
            .bind(30_000_i64)
            .bind("token")
    }

    /// A claim reads the due head of each priority in order: neither the delayed jobs of a
    /// higher priority nor the backlog of a lower one once the higher has enough. Ordered by
    /// `priority, run_at` over one range, it read all 3,000 delayed jobs to claim one.
    #[tokio::test]
    async fn a_claim_reads_no_delayed_jobs_and_no_lower_priority_it_does_not_take() {
        let (pool, admin_url, database) = fresh_database().await;
        insert_at_priority(&pool, "job", 3_000, 3_600_000, 0).await;
        insert_at_priority(&pool, "job", 3_000, -60_000, 9).await;
        insert_at_priority(&pool, "job", 10, -1_000, 4).await;
        sqlx::query("ANALYZE anb_queue_jobs")
            .execute(&pool)
            .await
            .unwrap();
        // Ten of priority 4 fill the claim: priority 9's backlog is not read. (Each job
        // claimed is read twice: by its probe, and by the update that leases it.)
        let read = rows_read_by(&pool, CLAIM, claim_of_ten).await;
        assert!(read <= 21.0, "the claim read {read} rows of the jobs table");
        let rows = claim_of_ten(sqlx::query(CLAIM))
            .fetch_all(&pool)
            .await
            .unwrap();
        let ids: Vec<i64> = rows.iter().map(|row| row.get("id")).collect();
        let priorities: Vec<i16> =
            sqlx::query_scalar("SELECT priority FROM anb_queue_jobs WHERE id = ANY($1)")
                .bind(&ids)
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(priorities, vec![4; 10]);
        // With priority 4 taken, the next claim goes on to priority 9.
        let read = rows_read_by(&pool, CLAIM, claim_of_ten).await;
        assert!(read <= 21.0, "the claim read {read} rows of the jobs table");
        let due = rows_read_by(&pool, NEXT_DUE, |query| query.bind(vec!["job"])).await;
        assert!(due <= 10.0, "the due check read {due} rows");
        drop_database(pool, &admin_url, &database).await;
    }

    /// `generate_series(0, 9)` in the statements is every priority level.
    #[test]
    fn the_statements_probe_every_priority_level() {
        let levels = format!(
            "generate_series({}, {})",
            crate::Priority::HIGHEST.level(),
            crate::Priority::LOWEST.level()
        );
        for statement in [CLAIM, NEXT_DUE, STATS] {
            assert!(statement.contains(&levels), "{statement}");
        }
    }

    /// Before the ready index led with the name, a claim for a rare job name walked the
    /// other names' backlog in `run_at` order: 3,001 rows read to claim one job.
    #[tokio::test]
    async fn a_claim_for_a_rare_name_reads_none_of_another_names_backlog() {
        let (pool, admin_url, database) = fresh_database().await;
        insert_many(&pool, "busy", 3_000, -60_000).await;
        insert_many(&pool, "rare", 1, 0).await;
        sqlx::query("ANALYZE anb_queue_jobs")
            .execute(&pool)
            .await
            .unwrap();
        let read = rows_read_by(&pool, CLAIM, |query| {
            query
                .bind(vec!["rare"])
                .bind(10_i64)
                .bind("owner")
                .bind(30_000_i64)
                .bind("token")
        })
        .await;
        assert!(read <= 2.0, "the claim read {read} rows of the jobs table");
        let due = rows_read_by(&pool, NEXT_DUE, |query| query.bind(vec!["rare"])).await;
        assert!(due <= 1.0, "the due check read {due} rows");
        drop_database(pool, &admin_url, &database).await;
    }

    /// Stats over a backlog larger than the cap read about the cap's worth of index entries
    /// and report the cap, instead of counting the whole table.
    #[tokio::test]
    async fn stats_read_a_bounded_number_of_rows() {
        let (pool, admin_url, database) = fresh_database().await;
        insert_many(&pool, "a", 2_000, -1_000).await;
        insert_many(&pool, "b", 2_000, 3_600_000).await;
        sqlx::query("ANALYZE anb_queue_jobs")
            .execute(&pool)
            .await
            .unwrap();
        let cap = 100_i64;
        let read = rows_read_by(&pool, STATS, |query| query.bind(cap)).await;
        assert!(
            read <= 8.0 * cap as f64,
            "stats read {read} rows for a cap of {cap}"
        );
        let row = sqlx::query(STATS).bind(cap).fetch_one(&pool).await.unwrap();
        let ready: i64 = row.try_get("ready").unwrap();
        let delayed: i64 = row.try_get("delayed").unwrap();
        let oldest_ms: i64 = row.try_get("oldest_ms").unwrap();
        assert_eq!((ready, delayed), (cap, cap));
        assert!(oldest_ms >= 1_000, "{oldest_ms}");
        // Under the cap every count is exact.
        let row = sqlx::query(STATS)
            .bind(10_000_i64)
            .fetch_one(&pool)
            .await
            .unwrap();
        let ready: i64 = row.try_get("ready").unwrap();
        let delayed: i64 = row.try_get("delayed").unwrap();
        assert_eq!((ready, delayed), (2_000, 2_000));
        drop_database(pool, &admin_url, &database).await;
    }
}
