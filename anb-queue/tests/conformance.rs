//! The conformance suite of `anb-queue-testkit`, run against each backend of this crate the
//! way an outside backend runs it against itself: one [`Fixture`] and one
//! `conformance_suite!` line per backend. Below them, the cases that belong to these
//! backends only (enqueue inside the caller's SQL transaction, schema upgrades, each
//! engine's own polling and failure modes).

mod support;

use std::{
    collections::HashSet,
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use anb_queue::{Job, JobContext, JobError, Queue, QueueError, Worker, backend::ClaimRequest};
use anb_queue_testkit::{
    Capabilities, Fixture, conformance_suite,
    jobs::{Echo, Flaky, LastChance, Slow},
    support::{
        RunningWorker, claim_one, fast_retries, is_empty, recording_worker, stats, wait_until,
    },
};
use support::TestDb;

/// A fixture per backend: a fresh database, key prefix or SQS queue for each case.
macro_rules! fixture {
    ($fixture:ident, $open:ident, $capabilities:expr) => {
        struct $fixture(TestDb);

        impl Fixture for $fixture {
            async fn fresh() -> Self {
                Self(TestDb::$open().await)
            }

            async fn queue(&self) -> Queue {
                self.0.queue().await
            }

            fn capabilities(&self) -> Capabilities {
                $capabilities
            }

            fn child_env(&self) -> Option<Vec<(String, String)>> {
                Some(self.0.child_env())
            }

            async fn cleanup(self) {
                self.0.cleanup().await
            }
        }
    };
}

fixture!(Postgres, postgres, Capabilities::full());
fixture!(Sqlite, sqlite, Capabilities::full());
fixture!(Redis, redis, Capabilities::full());
fixture!(RedisCluster, redis_cluster, Capabilities::full());
// A standard SQS queue cannot deduplicate, cancel a message (only the consumer holding it
// may delete it), keep a counter its workers share (a global rate limit), look a message up
// by id, page or prune its dead-letter queue, or tell the oldest message's age (a CloudWatch
// metric); a long poll still open when its worker died may count a receive; it delivers at
// least once, and competing consumers occasionally both get a message (seen: 1 of 500 on a
// loaded machine).
fixture!(
    Sqs,
    sqs,
    Capabilities::full()
        .unique_jobs(false)
        .cancellation(false)
        .named_queues(false)
        .priorities(false)
        .global_rate_limit(false)
        .operator_calls(false)
        .oldest_ready_age(false)
        .lost_receives_count(true)
        .may_redeliver(true)
);

conformance_suite!(postgres, Postgres);
conformance_suite!(sqlite, Sqlite);
conformance_suite!(redis, Redis);
conformance_suite!(redis_cluster, RedisCluster);
conformance_suite!(sqs, Sqs);

async fn transactional_enqueue_commits_and_rolls_back_with_the_caller(db: &TestDb) {
    let queue = db.queue().await;
    let job = Echo {
        n: 1,
        text: "tx".into(),
    };
    if !db.engine.joins_sql_transactions() {
        // A broker cannot take part in the caller's SQL transaction: `enqueue_tx` must refuse
        // rather than enqueue outside it.
        let error = db
            .enqueue_with_business_write(&queue, std::slice::from_ref(&job), true)
            .await
            .unwrap_err();
        assert!(
            matches!(error, QueueError::TransactionMismatch { .. }),
            "{error:?}"
        );
        assert_eq!(stats(&queue).await.ready, 0, "nothing enqueued");
        return;
    }
    db.enqueue_with_business_write(&queue, std::slice::from_ref(&job), false)
        .await
        .unwrap();
    assert_eq!(db.business_rows().await, 0);
    assert_eq!(
        stats(&queue).await.ready,
        0,
        "rolled back with the business write"
    );
    // A bulk large enough to be split into several statements rolls back whole too.
    let many: Vec<Echo> = (0..2000)
        .map(|n| Echo {
            n,
            text: "bulk".repeat(8),
        })
        .collect();
    let ids = db
        .enqueue_with_business_write(&queue, &many, false)
        .await
        .unwrap();
    assert_eq!(ids.len(), 2000);
    assert_eq!(stats(&queue).await.ready, 0, "bulk rolled back whole");
    db.enqueue_with_business_write(&queue, std::slice::from_ref(&job), true)
        .await
        .unwrap();
    assert_eq!(db.business_rows().await, 1);
    assert_eq!(
        stats(&queue).await.ready,
        1,
        "committed with the business write"
    );

    let seen = Arc::new(Mutex::new(Vec::new()));
    let worker = RunningWorker::spawn(recording_worker(&queue, seen.clone()));
    wait_until("job handled", 60, || async {
        !seen.lock().unwrap().is_empty()
    })
    .await;
    worker.stop().await;
    assert_eq!(*seen.lock().unwrap(), vec![job]);
}
/// Enqueue inside the caller's SQL transaction: the queue's own database commits and rolls
/// back with the caller; a broker refuses rather than enqueue outside the transaction.
mod transactional {
    macro_rules! on {
        ($($backend:ident),*) => {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $backend() {
                    let db = crate::support::TestDb::$backend().await;
                    crate::transactional_enqueue_commits_and_rolls_back_with_the_caller(&db).await;
                    db.cleanup().await;
                }
            )*
        };
    }
    on!(postgres, sqlite, redis, redis_cluster, sqs);
}

/// Rolling deploy across PostgreSQL schema version 3 (payload `jsonb` → `text`): a queue of
/// version 2 with a job in it is upgraded by a new worker's `setup`, and the statements of
/// version 2's code (its insert casts to `jsonb`, its claim reads `payload::text`) still
/// work on the upgraded table beside the new code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_schema_3_upgrades_a_version_2_queue_and_version_2_statements_still_work() {
    use sqlx::Connection;
    let db = TestDb::postgres().await;
    drop(db.queue().await);
    // Back to version 2 as it was: a jsonb payload, with one job written by version 2's insert.
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let old_insert = "INSERT INTO anb_queue_jobs (name, payload, max_attempts, run_at)
         SELECT n, p::jsonb, m, now() + d * interval '1 millisecond'
         FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::int8[]) AS t(n, p, m, d)
         RETURNING id";
    for statement in [
        "ALTER TABLE anb_queue_jobs ALTER COLUMN payload TYPE JSONB USING payload::jsonb",
        "UPDATE anb_queue_schema SET version = 2",
    ] {
        sqlx::query(statement).execute(&mut conn).await.unwrap();
    }
    let before = serde_json::to_string(&Echo {
        n: 1,
        text: "written by version 2".into(),
    })
    .unwrap();
    let insert_one = |payload: String| {
        sqlx::query(old_insert)
            .bind(vec![Echo::NAME.to_owned()])
            .bind(vec![payload])
            .bind(vec![5_i32])
            .bind(vec![0_i64])
    };
    insert_one(before).execute(&mut conn).await.unwrap();

    // A new worker's queue upgrades it; version 2's insert still works, and so does a
    // payload that jsonb refused.
    let queue = db.queue().await;
    let version: i32 = sqlx::query_scalar("SELECT max(version) FROM anb_queue_schema")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(version, 8, "upgraded to the current version");
    let during = serde_json::to_string(&Echo {
        n: 2,
        text: "written by version 2 after the upgrade".into(),
    })
    .unwrap();
    insert_one(during).execute(&mut conn).await.unwrap();
    let nul = Echo {
        n: 3,
        text: "nul \u{0}".into(),
    };
    queue.enqueue(&nul).await.unwrap();
    let old_read: Vec<String> =
        sqlx::query_scalar("SELECT payload::text FROM anb_queue_jobs ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(old_read.len(), 3, "{old_read:?}");

    let seen = Arc::new(Mutex::new(Vec::new()));
    let worker = RunningWorker::spawn(recording_worker(&queue, seen.clone()));
    wait_until("three jobs handled", 60, || async {
        seen.lock().unwrap().len() >= 3
    })
    .await;
    worker.stop().await;
    let mut seen: Vec<u32> = seen.lock().unwrap().iter().map(|job| job.n).collect();
    seen.sort_unstable();
    assert_eq!(seen, vec![1, 2, 3]);
    conn.close().await.unwrap();
    db.cleanup().await;
}

/// Rolling deploy across PostgreSQL schema version 4 (the ready index leads with the job
/// name): a version-3 queue, with its `(run_at, id)` index and a job in it, is upgraded by
/// a new worker's `setup`, and version 3's claim statement still claims on the new index
/// beside the new code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_schema_4_keeps_version_3_claims_working() {
    use sqlx::Connection;
    let db = TestDb::postgres().await;
    drop(db.queue().await);
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    for statement in [
        "DROP INDEX anb_queue_jobs_ready_by_priority",
        "CREATE INDEX anb_queue_jobs_ready ON anb_queue_jobs (run_at, id) WHERE state = 'ready'",
        "UPDATE anb_queue_schema SET version = 3",
    ] {
        sqlx::query(statement).execute(&mut conn).await.unwrap();
    }
    let old_claim = "WITH picked AS (
            SELECT id FROM anb_queue_jobs
            WHERE state = 'ready' AND run_at <= now() AND name = ANY($1)
            ORDER BY run_at, id LIMIT $2 FOR UPDATE SKIP LOCKED
         )
         UPDATE anb_queue_jobs AS j
         SET state = 'running', attempts = j.attempts + 1, locked_by = 'v3', lease_token = 't',
             locked_until = clock_timestamp() + interval '1 minute'
         FROM picked WHERE j.id = picked.id
         RETURNING j.payload::text";
    let queue = db.queue().await;
    let version: i32 = sqlx::query_scalar("SELECT max(version) FROM anb_queue_schema")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(version, 8, "upgraded to the current version");
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE tablename = 'anb_queue_jobs' ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(
        indexes.contains(&"anb_queue_jobs_ready_by_priority".to_owned()),
        "{indexes:?}"
    );
    for replaced in ["anb_queue_jobs_ready", "anb_queue_jobs_ready_by_name"] {
        assert!(!indexes.contains(&replaced.to_owned()), "{indexes:?}");
    }
    for n in 1..=2 {
        queue
            .enqueue(&Echo {
                n,
                text: "after the upgrade".into(),
            })
            .await
            .unwrap();
    }
    // An old worker claims one; a new one handles the other.
    let claimed: Vec<String> = sqlx::query_scalar(old_claim)
        .bind(vec![Echo::NAME.to_owned()])
        .bind(1_i64)
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let worker = RunningWorker::spawn(recording_worker(&queue, seen.clone()));
    wait_until("the new worker handles the other job", 60, || async {
        !seen.lock().unwrap().is_empty()
    })
    .await;
    worker.stop().await;
    let old: Echo = serde_json::from_str(&claimed[0]).unwrap();
    let new: Vec<u32> = seen.lock().unwrap().iter().map(|job| job.n).collect();
    assert_eq!(new.len(), 1);
    assert_ne!(new[0], old.n);
    conn.close().await.unwrap();
    db.cleanup().await;
}

/// Rolling deploy across PostgreSQL schema version 7 (priorities): version 6's insert and
/// claim statements still work on the upgraded table beside the new code. An old insert's
/// job gets priority 0; an old claim, which orders by due time alone, still claims through
/// the new index's name prefix; a new worker handles the rest in priority order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_schema_7_keeps_version_6_inserts_and_claims_working() {
    use sqlx::Connection;
    let db = TestDb::postgres().await;
    let queue = db.queue().await;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let old_insert = "INSERT INTO anb_queue_jobs (name, payload, max_attempts, run_at)
         SELECT n, p, m, now() + d * interval '1 millisecond'
         FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::int8[]) WITH ORDINALITY AS t(n, p, m, d, o)
         ORDER BY o
         RETURNING id";
    let old_claim = "WITH picked AS (
            SELECT c.id FROM UNNEST($1::text[]) AS n(name)
            CROSS JOIN LATERAL (
                SELECT j.id, j.run_at FROM anb_queue_jobs AS j
                WHERE j.state = 'ready' AND j.name = n.name AND j.run_at <= now()
                ORDER BY j.run_at, j.id
                LIMIT $2
                FOR UPDATE SKIP LOCKED
            ) AS c
            ORDER BY c.run_at, c.id
            LIMIT $2
         )
         UPDATE anb_queue_jobs AS j
         SET state = 'running', attempts = j.attempts + 1, locked_by = 'v6', lease_token = 't',
             locked_until = clock_timestamp() + interval '1 minute'
         WHERE j.id = ANY(ARRAY(SELECT id FROM picked))
         RETURNING j.payload::text";
    let payload = |n: u32| {
        serde_json::to_string(&Echo {
            n,
            text: "written by version 6".into(),
        })
        .unwrap()
    };
    sqlx::query(old_insert)
        .bind(vec![Echo::NAME.to_owned(); 2])
        .bind(vec![payload(1), payload(2)])
        .bind(vec![5_i32; 2])
        .bind(vec![0_i64; 2])
        .execute(&mut conn)
        .await
        .unwrap();
    let priorities: Vec<i16> =
        sqlx::query_scalar("SELECT priority FROM anb_queue_jobs ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(priorities, [0, 0]);
    let claimed: Vec<String> = sqlx::query_scalar(old_claim)
        .bind(vec![Echo::NAME.to_owned()])
        .bind(1_i64)
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let old: Echo = serde_json::from_str(&claimed[0]).unwrap();
    assert_eq!(old.n, 1, "the old claim takes the oldest due job");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let worker = RunningWorker::spawn(recording_worker(&queue, seen.clone()));
    wait_until("the new worker handles the other job", 60, || async {
        !seen.lock().unwrap().is_empty()
    })
    .await;
    worker.stop().await;
    let new: Vec<u32> = seen.lock().unwrap().iter().map(|job| job.n).collect();
    assert_eq!(new, [2]);
    conn.close().await.unwrap();
    db.cleanup().await;
}

/// The SQS requests of one operation that `queue` has sent so far.
fn sqs_requests(queue: &Queue, operation: &str) -> u64 {
    queue
        .requests_by_operation()
        .unwrap()
        .get(operation)
        .copied()
        .unwrap_or(0)
}

/// An idle SQS worker refreshes its queue depth gauges once a minute, not every 15 s: each
/// refresh is two billed `GetQueueAttributes` (the queue and its dead letters), which were
/// a third of an idle worker's requests and 0.03 requests per job of a 1,000-job burst. The
/// first refresh comes within the first minute, not at start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_idle_worker_reads_queue_statistics_once_a_minute() {
    let db = TestDb::sqs().await;
    let queue = Queue::connect(&format!("{}?wait_seconds=1", db.url))
        .await
        .unwrap();
    let attribute_reads = |queue: &Queue| sqs_requests(queue, "GetQueueAttributes");
    let at_connect = attribute_reads(&queue);
    let worker = RunningWorker::spawn(recording_worker(&queue, Arc::default()));
    // The gauges are first read at a random point of the first minute.
    wait_until("the first statistics", 75, || async {
        attribute_reads(&queue) >= at_connect + 2
    })
    .await;
    let after_first = attribute_reads(&queue);
    tokio::time::sleep(Duration::from_secs(16)).await;
    let idle = attribute_reads(&queue) - after_first;
    worker.stop().await;
    assert_eq!(idle, 0, "{idle} GetQueueAttributes in 16 idle seconds");
    db.cleanup().await;
}

/// With short polling (`wait_seconds=0`) an idle SQS worker pauses between empty receives
/// instead of sending them back to back (each is billed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_short_polling_idle_worker_pauses_between_empty_receives() {
    let db = TestDb::sqs().await;
    let queue = Queue::connect(&format!("{}?wait_seconds=0", db.url))
        .await
        .unwrap();
    let receives = |queue: &Queue| sqs_requests(queue, "ReceiveMessage");
    let worker = RunningWorker::spawn(recording_worker(&queue, Arc::default()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = receives(&queue);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = receives(&queue) - before;
    // Still claims: a job enqueued now is taken within the pause.
    queue
        .enqueue(&Echo {
            n: 1,
            text: "after the idle time".into(),
        })
        .await
        .unwrap();
    wait_until("the job taken", 30, || is_empty(&queue)).await;
    worker.stop().await;
    assert!(idle <= 6, "{idle} receives in 3 idle seconds");
    db.cleanup().await;
}

/// SQLite has one write lock per file: idle workers polling for jobs of other processes must
/// not take it, or every poll queues behind (and ahead of) the writers they wait for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_idle_polling_takes_no_write_lock() {
    use sqlx::Connection;
    let db = TestDb::sqlite().await;
    let queue = db.queue().await;
    let worker = RunningWorker::spawn(recording_worker(&queue, Arc::default()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Another process's transaction holds the write lock meanwhile.
    let mut writer = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut writer)
        .await
        .unwrap();
    let before = queue.poll_counts();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = queue.poll_counts();
    sqlx::query("ROLLBACK").execute(&mut writer).await.unwrap();
    worker.stop().await;
    let claims = after.claims - before.claims;
    assert!(
        claims >= 5,
        "idle claims went on while another writer held the lock: {claims} in 2 s"
    );
    db.cleanup().await;
}

/// A failure that cannot be recorded (the queue unreachable through a closed gate) is tried
/// a few times, then the job is no longer renewed: its lease lapses and recovery counts the
/// attempt (here the last, so the job is dead), instead of the job staying leased until the
/// worker stops and a release giving the attempt back.
async fn an_unrecordable_failure_lets_the_lease_lapse_and_counts_the_attempt(
    db: TestDb,
    outage: Duration,
) {
    let direct = db.queue().await;
    let mut gated_url = url::Url::parse(&db.url).unwrap();
    let target = format!(
        "{}:{}",
        gated_url.host_str().unwrap(),
        gated_url.port().unwrap()
    );
    let gate = support::TcpGate::start(&target).await;
    gated_url.set_port(Some(gate.port)).unwrap();
    let gated = Queue::connect(gated_url.as_str()).await.unwrap();
    direct.enqueue(&LastChance).await.unwrap();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let (started, gate_closed) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let worker = RunningWorker::spawn(Worker::new(gated).lease(Duration::from_secs(1)).handle({
        let (attempts, started, gate_closed) =
            (attempts.clone(), started.clone(), gate_closed.clone());
        move |_job: LastChance, ctx: JobContext| {
            let (attempts, started, gate_closed) =
                (attempts.clone(), started.clone(), gate_closed.clone());
            async move {
                attempts.lock().unwrap().push(ctx.attempt());
                started.notify_one();
                gate_closed.notified().await;
                Err(JobError::retryable(
                    "failed while the queue was unreachable",
                ))
            }
        }
    }));
    started.notified().await;
    gate.close();
    gate_closed.notify_one();
    // Long enough for every try of the write to fail (each waits for its client's timeout).
    tokio::time::sleep(outage).await;
    gate.open();
    wait_until("job dead", 60, || async { stats(&direct).await.dead == 1 }).await;
    worker.stop().await;
    assert_eq!(*attempts.lock().unwrap(), vec![1], "never run again");
    let dead = direct.dead_jobs(1).await.unwrap();
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap_or_default()
            .starts_with("lease expired"),
        "dead by the lapsed lease: {dead:?}"
    );
    db.cleanup().await;
}

/// Each outage is about twice the time the runtime's tries of the write take on an idle
/// machine (three tries, each waiting out its client's timeout: 3 s for a PostgreSQL pool,
/// 10 s for Redis): with less, a loaded machine still had a try in flight when the gate
/// reopened, the write landed, and the job died by its handler's error instead.
mod unrecordable_failure {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let db = crate::support::TestDb::postgres().await;
        let outage = std::time::Duration::from_secs(20);
        crate::an_unrecordable_failure_lets_the_lease_lapse_and_counts_the_attempt(db, outage)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis() {
        let db = crate::support::TestDb::redis().await;
        let outage = std::time::Duration::from_secs(60);
        crate::an_unrecordable_failure_lets_the_lease_lapse_and_counts_the_attempt(db, outage)
            .await;
    }
}

/// Redis: the set of job names that stats walks forgets a name once none of its jobs waits,
/// and every way a job comes back (retry, release, an expired lease, a requeued dead job)
/// adds its name again, so stats never loses a job.
async fn redis_names_set_forgets_idle_names_and_keeps_returning_ones(db: TestDb) {
    let queue = db.queue().await;
    let backend = queue.backend().clone();
    let owner = "worker-1";
    let echo = || vec!["echo".to_owned()];
    let id = queue
        .enqueue(&Echo {
            n: 1,
            text: "returns".into(),
        })
        .await
        .unwrap();
    assert_eq!(db.redis_set_members("names").await, echo());

    // Leased: nothing of "echo" waits, so stats forgets the name; the retry brings it back.
    let job = claim_one(&queue, owner, Duration::from_secs(60)).await;
    assert_eq!(job.id, id);
    assert_eq!(stats(&queue).await.in_flight, 1);
    assert!(db.redis_set_members("names").await.is_empty(), "pruned");
    backend
        .retry(owner, &job.lease(), Duration::ZERO, "again")
        .await
        .unwrap();
    assert_eq!(db.redis_set_members("names").await, echo(), "after retry");
    assert_eq!(stats(&queue).await.ready, 1, "the retried job is counted");

    // Released after stats forgot the name.
    let job = claim_one(&queue, owner, Duration::from_secs(60)).await;
    assert_eq!(stats(&queue).await.ready, 0);
    assert!(db.redis_set_members("names").await.is_empty(), "pruned");
    backend
        .release(owner, std::slice::from_ref(&job.lease()))
        .await
        .unwrap();
    assert_eq!(stats(&queue).await.ready, 1, "the released job is counted");

    // Its lease expires after stats forgot the name.
    claim_one(&queue, owner, Duration::from_millis(300)).await;
    assert_eq!(stats(&queue).await.ready, 0);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(backend.recover_expired().await.unwrap(), 1);
    assert_eq!(stats(&queue).await.ready, 1, "the recovered job is counted");

    // Dead, then requeued after stats forgot the name.
    let job = claim_one(&queue, owner, Duration::from_secs(60)).await;
    backend
        .dead_letter(owner, &job.lease(), "poison")
        .await
        .unwrap();
    let dead = stats(&queue).await;
    assert_eq!((dead.ready, dead.dead), (0, 1));
    assert!(db.redis_set_members("names").await.is_empty(), "pruned");
    assert_eq!(
        queue.requeue_dead(std::slice::from_ref(&id)).await.unwrap(),
        1
    );
    assert_eq!(stats(&queue).await.ready, 1, "the requeued job is counted");

    // A delayed job keeps its name; a completed one leaves none behind.
    queue
        .enqueue_in(
            &Echo {
                n: 2,
                text: "later".into(),
            },
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
    let job = claim_one(&queue, owner, Duration::from_secs(60)).await;
    assert_eq!(job.id, id);
    backend
        .complete(owner, std::slice::from_ref(&job.lease()))
        .await
        .unwrap();
    let left = stats(&queue).await;
    assert_eq!((left.ready, left.in_flight, left.delayed), (0, 0, 1));
    assert_eq!(db.redis_set_members("names").await, echo(), "delayed");
    db.cleanup().await;
}

/// A Redis server of this test's own, stopped when dropped.
struct OwnRedis {
    process: std::process::Child,
    port: u16,
}

impl OwnRedis {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let process = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let server = Self { process, port };
        wait_until("the test's own Redis answers", 10, || async {
            server.connection().await.is_some()
        })
        .await;
        server
    }

    async fn connection(&self) -> Option<::redis::aio::MultiplexedConnection> {
        let client = ::redis::Client::open(format!("redis://127.0.0.1:{}", self.port)).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        let _: String = ::redis::cmd("PING").query_async(&mut conn).await.ok()?;
        Some(conn)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Redis: a bulk enqueue that runs the server out of memory part way says which jobs were
/// stored (the chunks before the refused one, all claimable) instead of a plain error that
/// reads as "none".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_bulk_enqueue_out_of_memory_part_way_says_which_jobs_were_stored() {
    const JOBS: u32 = 10_000;
    let server = OwnRedis::start().await;
    let mut conn = server.connection().await.unwrap();
    let info: String = ::redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await
        .unwrap();
    let used: u64 = info
        .lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap();
    // Room for a few of the ten 1,000-job chunks, not for all of them.
    let _: () = ::redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(used + 1_500_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    let queue = Queue::connect(&format!("redis://127.0.0.1:{}?queue=oom", server.port))
        .await
        .unwrap();
    let jobs: Vec<Echo> = (0..JOBS)
        .map(|n| Echo {
            n,
            text: "x".repeat(300),
        })
        .collect();
    let error = queue.enqueue_bulk(&jobs).await.unwrap_err();
    let QueueError::PartlyEnqueued { ids, reason } = error else {
        panic!("expected a partial enqueue, got {error}");
    };
    assert_eq!(ids.len(), JOBS as usize);
    let stored = ids.iter().take_while(|id| id.is_some()).count();
    assert!(
        ids[stored..].iter().all(Option::is_none),
        "stored jobs after a refused one"
    );
    assert!(
        stored > 0 && stored < JOBS as usize && stored % 1_000 == 0,
        "{stored} stored"
    );
    assert!(reason.contains("OOM"), "{reason}");
    assert_eq!(stats(&queue).await.ready, stored as u64);
}

/// Redis: a bulk enqueue larger than one script's chunk stores every job with a distinct id,
/// and each is claimed exactly once.
async fn redis_bulk_enqueue_past_one_chunk_is_claimed_exactly_once(db: TestDb) {
    const JOBS: u32 = 2_500;
    let queue = db.queue().await;
    let jobs: Vec<Echo> = (0..JOBS)
        .map(|n| Echo {
            n,
            text: String::new(),
        })
        .collect();
    let ids = queue.enqueue_bulk(&jobs).await.unwrap();
    assert_eq!(ids.len(), JOBS as usize);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), JOBS as usize);
    assert_eq!(stats(&queue).await.ready, u64::from(JOBS));
    let mut claimed = Vec::new();
    loop {
        let batch = queue
            .backend()
            .claim(ClaimRequest {
                names: &["echo"],
                max: 500,
                owner: "worker-1",
                lease: Duration::from_secs(60),
            })
            .await
            .unwrap();
        if batch.is_empty() {
            break;
        }
        claimed.extend(batch);
    }
    assert_eq!(
        claimed.len(),
        JOBS as usize,
        "every job claimed, none twice"
    );
    let claimed_ids: HashSet<_> = claimed.iter().map(|job| job.id.clone()).collect();
    assert_eq!(claimed_ids, ids.into_iter().collect::<HashSet<_>>());
    let numbers: HashSet<u32> = claimed
        .iter()
        .map(|job| serde_json::from_str::<Echo>(&job.payload).unwrap().n)
        .collect();
    assert_eq!(
        numbers,
        (0..JOBS).collect::<HashSet<_>>(),
        "every payload once"
    );
    db.cleanup().await;
}

mod redis_only {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn names_set_on_redis() {
        let db = crate::support::TestDb::redis().await;
        crate::redis_names_set_forgets_idle_names_and_keeps_returning_ones(db).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn names_set_on_redis_cluster() {
        let db = crate::support::TestDb::redis_cluster().await;
        crate::redis_names_set_forgets_idle_names_and_keeps_returning_ones(db).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bulk_enqueue_past_one_chunk_on_redis() {
        let db = crate::support::TestDb::redis().await;
        crate::redis_bulk_enqueue_past_one_chunk_is_claimed_exactly_once(db).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bulk_enqueue_past_one_chunk_on_redis_cluster() {
        let db = crate::support::TestDb::redis_cluster().await;
        crate::redis_bulk_enqueue_past_one_chunk_is_claimed_exactly_once(db).await;
    }
}

/// Middleware: tower layers around every handler of a worker. Backend-independent, so run
/// on the embedded backend.
mod middleware {
    use super::*;
    use anb_queue::middleware::{JobRequest, JobService};
    use tower::{ServiceExt, layer::layer_fn, limit::ConcurrencyLimitLayer, timeout::TimeoutLayer};

    /// A layer that logs `label job-name` before calling the service inside it.
    fn recording_layer(
        label: &'static str,
        log: Arc<Mutex<Vec<String>>>,
    ) -> impl tower::Layer<JobService, Service = JobService> + Send + Sync + 'static {
        layer_fn(move |inner: JobService| {
            let log = log.clone();
            JobService::new(tower::service_fn(move |request: JobRequest| {
                log.lock()
                    .unwrap()
                    .push(format!("{label} {}", request.name()));
                inner.clone().oneshot(request)
            }))
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn layers_wrap_every_handler_the_first_added_outermost() {
        let db = TestDb::sqlite().await;
        let queue = db.queue().await;
        queue
            .enqueue(&Echo {
                n: 1,
                text: "a".into(),
            })
            .await
            .unwrap();
        queue.enqueue(&Flaky { fail_attempts: 0 }).await.unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let handled = log.clone();
        let worker = Worker::new(queue.clone())
            .concurrency(1)
            .layer(recording_layer("outer", log.clone()))
            .layer(recording_layer("inner", log.clone()))
            .handle(move |job: Echo, _ctx: JobContext| {
                let handled = handled.clone();
                async move {
                    handled
                        .lock()
                        .unwrap()
                        .push(format!("handler {}", job.text));
                    Ok(())
                }
            })
            .handle(|_job: Flaky, _ctx: JobContext| async { Ok(()) });
        let worker = RunningWorker::spawn(worker);
        wait_until("both jobs done", 60, || is_empty(&queue)).await;
        worker.stop().await;
        let log = log.lock().unwrap().clone();
        let echo: Vec<&String> = log.iter().filter(|line| !line.ends_with("flaky")).collect();
        assert_eq!(echo, ["outer echo", "inner echo", "handler a"]);
        assert!(
            log.contains(&"outer flaky".to_owned()) && log.contains(&"inner flaky".to_owned()),
            "{log:?}"
        );
        db.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_concurrency_limit_layer_bounds_the_jobs_running_at_once() {
        let db = TestDb::sqlite().await;
        let queue = db.queue().await;
        let jobs: Vec<Slow> = (0..8).map(|_| Slow { millis: 150 }).collect();
        queue.enqueue_bulk(&jobs).await.unwrap();
        let running = Arc::new(AtomicU32::new(0));
        let most = Arc::new(AtomicU32::new(0));
        let (now, peak) = (running.clone(), most.clone());
        let worker = Worker::new(queue.clone())
            .concurrency(8)
            .layer(ConcurrencyLimitLayer::new(2))
            .handle(move |job: Slow, _ctx: JobContext| {
                let (now, peak) = (now.clone(), peak.clone());
                async move {
                    let at_once = now.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(at_once, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(job.millis)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                }
            });
        let worker = RunningWorker::spawn(worker);
        wait_until("every job done", 60, || is_empty(&queue)).await;
        worker.stop().await;
        assert_eq!(
            most.load(Ordering::SeqCst),
            2,
            "8 claimed at once, 2 let through the layer"
        );
        db.cleanup().await;
    }

    /// A layer's own error (a timeout) fails the attempt retryably with its text; a
    /// handler's error passes through the layers as the handler meant it (permanent here).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_layer_error_retries_and_a_handler_error_passes_through_unchanged() {
        let db = TestDb::sqlite().await;
        let queue = db.queue().await;
        queue.enqueue(&Flaky { fail_attempts: 0 }).await.unwrap();
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let seen = attempts.clone();
        let worker = Worker::new(queue.clone())
            .retry_backoff(fast_retries())
            .layer(TimeoutLayer::new(Duration::from_millis(200)))
            .handle(move |_job: Flaky, ctx: JobContext| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(ctx.attempt());
                    if ctx.attempt() == 1 {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        return Ok(());
                    }
                    Err(JobError::permanent("no retry can fix this"))
                }
            });
        let worker = RunningWorker::spawn(worker);
        wait_until("job dead", 60, || async { stats(&queue).await.dead == 1 }).await;
        worker.stop().await;
        assert_eq!(
            *attempts.lock().unwrap(),
            vec![1, 2],
            "timed out once (retried), then permanent"
        );
        let dead = queue.dead_jobs(10).await.unwrap();
        assert_eq!(dead[0].attempts, 2);
        assert_eq!(dead[0].last_error.as_deref(), Some("no retry can fix this"));
        db.cleanup().await;
    }
}

/// Rolling deploy across the rate-limit schema step (PostgreSQL version 8, SQLite version 7),
/// which only adds `anb_queue_rate_limits`: a queue of the version before, with a job in it,
/// is upgraded by a new worker's `setup`, the job is still claimed, and the new table counts
/// permits.
mod rate_limit_schema {
    use std::time::Duration;

    use anb_queue::RateLimit;
    use anb_queue_testkit::support::claim_one;

    use crate::{Echo, TestDb, support::Engine};

    async fn upgrades(db: TestDb, older: i64, current: i64) {
        drop(db.queue().await);
        let downgrade = [
            "DROP TABLE anb_queue_rate_limits".to_owned(),
            format!("UPDATE anb_queue_schema SET version = {older}"),
        ];
        // Downgrades on a connection of the engine's own, enqueues one job on the old
        // schema, then lets a new queue's `setup` upgrade it; the queue and the version.
        macro_rules! downgrade_then_upgrade {
            ($connection:ty, $version:ty) => {{
                use sqlx::Connection;
                let mut conn = <$connection>::connect(&db.url).await.unwrap();
                for statement in &downgrade {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone()))
                        .execute(&mut conn)
                        .await
                        .unwrap();
                }
                let queue = db.queue().await;
                queue
                    .enqueue(&Echo {
                        n: 1,
                        text: "before".into(),
                    })
                    .await
                    .unwrap();
                drop(queue);
                let upgraded = db.queue().await;
                let version: $version =
                    sqlx::query_scalar("SELECT max(version) FROM anb_queue_schema")
                        .fetch_one(&mut conn)
                        .await
                        .unwrap();
                (upgraded, i64::from(version))
            }};
        }
        let (queue, version) = match db.engine {
            Engine::Postgres => downgrade_then_upgrade!(sqlx::PgConnection, i32),
            _ => downgrade_then_upgrade!(sqlx::SqliteConnection, i64),
        };
        assert_eq!(version, current, "upgraded to the current version");
        let claimed = claim_one(&queue, "new", Duration::from_secs(30)).await;
        assert!(claimed.payload.contains("before"), "{}", claimed.payload);
        let taken = queue
            .backend()
            .take_permits("default", 4, RateLimit::per(3, Duration::from_secs(3600)))
            .await
            .unwrap();
        assert_eq!(taken.granted, 3);
        db.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        upgrades(TestDb::postgres().await, 7, 8).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        upgrades(TestDb::sqlite().await, 6, 7).await;
    }
}
