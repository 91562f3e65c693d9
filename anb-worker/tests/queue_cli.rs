//! `anb-worker queue …` as an operator runs it: the real binary against a real SQLite file, a
//! fresh PostgreSQL database and a fresh queue on Redis, with jobs enqueued and dead-lettered
//! through the queue's own API.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use anb_queue::backend::ClaimRequest;
use anb_queue::{Job, JobId, Queue};
use common::sqs_queue;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Connection;

/// A job the tests enqueue; no worker ever runs it.
#[derive(Debug, Serialize, Deserialize)]
struct Report {
    n: u32,
}

impl Job for Report {
    const NAME: &'static str = "report";
}

/// Runs `anb-worker queue ARGS` on the queue at `url`, with no other setting but test
/// credentials for an SQS-compatible server.
fn queue_cli(url: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_anb-worker"));
    command
        .arg("queue")
        .args(args)
        .env_remove("ANB_DATABASE_URL")
        .env_remove("ANB_QUEUE_URL")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("RUST_LOG")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1");
    if let Some(url) = url {
        command.env("ANB_QUEUE_URL", url);
    }
    command.output().expect("run anb-worker")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs a command that must succeed and returns what it printed.
fn ok(url: &str, args: &[&str]) -> String {
    let output = queue_cli(Some(url), args);
    assert!(
        output.status.success(),
        "`queue {}` failed: {}{}",
        args.join(" "),
        stdout(&output),
        stderr(&output)
    );
    assert!(stderr(&output).is_empty(), "{}", stderr(&output));
    stdout(&output)
}

/// Runs a command with `--json` that must succeed and returns its document.
fn ok_json(url: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let text = ok(url, &all);
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("not JSON ({error}): {text}"))
}

/// Runs a command that must fail with status 1 and one line on stderr, and returns that line.
fn fails(url: Option<&str>, args: &[&str]) -> String {
    let output = queue_cli(url, args);
    assert_eq!(
        output.status.code(),
        Some(1),
        "`queue {}`: {}{}",
        args.join(" "),
        stdout(&output),
        stderr(&output)
    );
    let message = stderr(&output);
    assert_eq!(message.lines().count(), 1, "one line: {message}");
    assert!(message.starts_with("error: "), "{message}");
    assert!(!message.contains("panicked"), "{message}");
    message
}

/// Every line of a table fits a terminal of 100 columns.
fn assert_fits(table: &str) {
    for line in table.lines() {
        assert!(
            line.chars().count() <= 100,
            "{} columns: {line}",
            line.chars().count()
        );
    }
}

/// Claims up to `count` report jobs and dead-letters each with its own error; returns their ids.
async fn kill(queue: &Queue, count: usize, error: impl Fn(usize) -> String) -> Vec<JobId> {
    let backend = queue.backend();
    let claimed = backend
        .claim(ClaimRequest {
            names: &[Report::NAME],
            max: count,
            owner: "operator-test",
            lease: Duration::from_secs(60),
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), count);
    let mut ids = Vec::new();
    for (i, job) in claimed.iter().enumerate() {
        backend
            .dead_letter("operator-test", &job.lease(), &error(i))
            .await
            .unwrap();
        ids.push(job.id.clone());
    }
    ids
}

fn counts(stats: &Value) -> (u64, u64, u64, u64) {
    let count = |key: &str| {
        stats[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key}: {stats}"))
    };
    (
        count("ready"),
        count("delayed"),
        count("in_flight"),
        count("dead"),
    )
}

/// What an operator does with one queue: stats, the dead letters listed and paged, one
/// job shown, requeued by id and all at once, pruned by age, and each mistake refused.
async fn operator_commands(url: &str, backend: &str) {
    let queue = Queue::connect(url).await.unwrap();
    let empty = ok_json(url, &["stats"]);
    assert_eq!(empty["backend"], backend, "{empty}");
    assert_eq!(counts(&empty), (0, 0, 0, 0));
    assert_eq!(ok(url, &["dead"]), "no dead jobs\n");

    let ready = queue
        .enqueue_bulk(&[Report { n: 1 }, Report { n: 2 }, Report { n: 3 }])
        .await
        .unwrap();
    let delayed = queue
        .enqueue_in(&Report { n: 4 }, Duration::from_secs(3600))
        .await
        .unwrap();
    let before = SystemTime::now() - Duration::from_secs(1);
    let long_error = format!(
        "the encoder gave up: {}",
        "no space left on device ".repeat(20)
    );
    let dead = kill(&queue, 2, |i| {
        if i == 0 {
            long_error.clone()
        } else {
            format!("boom {i}")
        }
    })
    .await;
    let alive = ready.iter().find(|id| !dead.contains(id)).unwrap().clone();
    let after = SystemTime::now() + Duration::from_secs(1);

    let stats = ok_json(url, &["stats"]);
    assert_eq!(counts(&stats), (1, 1, 0, 2), "{stats}");
    assert!(
        stats["oldest_ready_age_seconds"].as_f64().is_some(),
        "{stats}"
    );
    let table = ok(url, &["stats"]);
    assert_fits(&table);
    for row in ["ready", "delayed", "in flight", "dead"] {
        assert!(table.contains(row), "{table}");
    }
    assert!(table.contains("the oldest ready job has waited"), "{table}");

    // The dead letters, newest first, with what an operator needs to decide.
    let listed = ok_json(url, &["dead"]);
    let jobs = listed["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2, "{listed}");
    assert_eq!(listed["next_after"], Value::Null);
    let ids: Vec<&str> = jobs.iter().map(|job| job["id"].as_str().unwrap()).collect();
    let mut expected: Vec<&str> = dead.iter().map(JobId::as_str).collect();
    expected.sort_unstable();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, expected);
    for job in jobs {
        assert_eq!(job["name"], "report");
        assert_eq!(job["attempts"], 1);
        assert!(job["payload"]["n"].is_u64(), "{job}");
        let died = humantime::parse_rfc3339(job["dead_at"].as_str().unwrap()).unwrap();
        assert!(before <= died && died <= after, "{job}");
        let error = job["last_error"].as_str().unwrap();
        assert!(error == long_error || error == "boom 1", "{job}");
    }
    let table = ok(url, &["dead"]);
    assert_fits(&table);
    for id in &dead {
        assert!(table.contains(id.as_str()), "{table}");
    }
    assert!(table.contains("boom 1"), "{table}");
    assert!(table.contains("the encoder gave up"), "{table}");

    // Paged: one at a time, the second page after the first's id.
    let first = ok_json(url, &["dead", "--limit", "1"]);
    let first_id = first["jobs"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(first_id, ids[0]);
    assert_eq!(first["next_after"], first_id.as_str());
    assert!(ok(url, &["dead", "--limit", "1"]).contains(&format!("--after {first_id}")));
    let second = ok_json(url, &["dead", "--limit", "1", "--after", &first_id]);
    assert_eq!(second["jobs"][0]["id"], ids[1], "{second}");
    let last = ok_json(url, &["dead", "--after", ids[1]]);
    assert_eq!(last["jobs"], serde_json::json!([]), "{last}");
    assert_eq!(last["next_after"], Value::Null);
    assert!(
        ok(url, &["dead", "--after", ids[1]])
            .starts_with(&format!("no dead jobs after {}", ids[1]))
    );

    // One job, in each of its states.
    let shown = ok_json(url, &["show", dead[0].as_str()]);
    assert_eq!(shown["state"], "dead", "{shown}");
    assert_eq!(shown["last_error"], long_error.as_str());
    assert_eq!(
        (shown["attempts"].as_u64(), shown["max_attempts"].as_u64()),
        (Some(1), Some(u64::from(Report::MAX_ATTEMPTS)))
    );
    assert_eq!(shown["priority"], 0, "{shown}");
    assert_eq!(
        ok_json(url, &["show", delayed.as_str()])["state"],
        "delayed"
    );
    let table = ok(url, &["show", dead[0].as_str()]);
    assert_fits(&table);
    assert!(table.contains("no space left on device"), "{table}");
    let message = fails(Some(url), &["show", "999999999"]);
    assert!(message.contains("no job 999999999"), "{message}");

    // Requeued by id: the dead one goes back; an id that is not dead is named and fails the
    // command, without stopping the others.
    let output = queue_cli(
        Some(url),
        &["requeue", dead[0].as_str(), alive.as_str(), "424242"],
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert_eq!(stdout(&output), "requeued 1 dead job\n");
    let message = stderr(&output);
    assert!(
        message.contains(&format!("{alive} (ready, not dead)")),
        "{message}"
    );
    assert!(message.contains("424242 (no such job)"), "{message}");
    assert_eq!(ok_json(url, &["show", dead[0].as_str()])["state"], "ready");
    assert_eq!(counts(&ok_json(url, &["stats"])), (2, 1, 0, 1));

    // All of them.
    let requeued = ok_json(url, &["requeue", "--all"]);
    assert_eq!(requeued["requeued"], 1, "{requeued}");
    assert_eq!(counts(&ok_json(url, &["stats"])), (3, 1, 0, 0));

    // Pruned by age: none died an hour ago; after a second, all that died before it have.
    kill(&queue, 3, |i| format!("boom again {i}")).await;
    let message = fails(Some(url), &["prune", "--older-than", "7 fortnights"]);
    assert!(message.contains("invalid --older-than"), "{message}");
    assert_eq!(
        ok(url, &["prune", "--older-than", "1h"]),
        "pruned 0 dead jobs that died more than 1h ago\n"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let pruned = ok_json(url, &["prune", "--older-than", "1s"]);
    assert_eq!(pruned["pruned"], 3, "{pruned}");
    assert_eq!(counts(&ok_json(url, &["stats"])), (0, 1, 0, 0));

    // Cancelled: the delayed job is removed; a running one is flagged for its worker; an
    // id that is neither is named and fails the command, after the others were cancelled.
    let running = queue.enqueue(&Report { n: 5 }).await.unwrap();
    let held = queue
        .backend()
        .claim(ClaimRequest {
            names: &[Report::NAME],
            max: 1,
            owner: "operator-test",
            lease: Duration::from_secs(60),
        })
        .await
        .unwrap();
    assert_eq!(held[0].id, running);
    let output = queue_cli(
        Some(url),
        &[
            "cancel",
            delayed.as_str(),
            running.as_str(),
            "424242",
            "--json",
        ],
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let cancelled: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(
        cancelled["cancelled"],
        serde_json::json!([
            {"id": delayed.as_str(), "outcome": "removed"},
            {"id": running.as_str(), "outcome": "requested"},
            {"id": "424242", "outcome": "not_found"},
        ]),
        "{cancelled}"
    );
    let message = stderr(&output);
    assert!(
        message.contains("1 of the ids given were not cancelled: 424242"),
        "{message}"
    );
    assert_eq!(counts(&ok_json(url, &["stats"])), (0, 0, 1, 0));
    let renewal = queue
        .backend()
        .renew("operator-test", &[held[0].lease()], Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        renewal.cancelled,
        vec![held[0].lease()],
        "the worker is told"
    );
    let table = ok(url, &["cancel", running.as_str()]);
    assert_fits(&table);
    assert!(table.contains("its handler is told to stop"), "{table}");
}

#[tokio::test]
async fn operators_inspect_and_repair_a_sqlite_queue() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("queue.db").display());
    // The file exists once a queue was opened on it (the platform creates it).
    Queue::connect(&url).await.unwrap();
    operator_commands(&url, "sqlite").await;
}

#[tokio::test]
async fn operators_inspect_and_repair_a_postgres_queue() {
    let admin = std::env::var("ANB_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let mut connection = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|error| panic!("PostgreSQL is not reachable at {admin}: {error}"));
    let database = format!("anb_worker_cli_{}", uuid::Uuid::new_v4().simple());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .execute(&mut connection)
        .await
        .unwrap();
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path(&database);
    operator_commands(url.as_str(), "postgres").await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {database} WITH (FORCE)"
    )))
    .execute(&mut connection)
    .await
    .unwrap();
}

#[tokio::test]
async fn operators_inspect_and_repair_a_redis_queue() {
    let server =
        std::env::var("ANB_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let separator = if server.contains('?') { '&' } else { '?' };
    let url = format!(
        "{server}{separator}queue=cli-{}",
        uuid::Uuid::new_v4().simple()
    );
    operator_commands(&url, "redis").await;
}

/// A queue that cannot be opened, or is not configured, is one line and status 1, and a
/// SQLite file that does not exist is not created.
#[test]
fn a_queue_out_of_reach_or_missing_is_one_line_and_status_1() {
    // The pool retries a refused connection until the command's time to open runs out.
    let message = fails(
        Some("postgres://postgres:s3cret@127.0.0.1:1/anb"),
        &["stats"],
    );
    assert!(
        message.contains("the queue at postgres://postgres:***@127.0.0.1:1/anb did not answer"),
        "{message}"
    );
    assert!(!message.contains("s3cret"), "{message}");
    let message = fails(Some("redis://127.0.0.1:1/0"), &["dead", "--json"]);
    assert!(
        message.contains("the queue at redis://127.0.0.1:1/0 did not answer"),
        "{message}"
    );
    let message = fails(Some("amqp://127.0.0.1"), &["stats"]);
    assert!(
        message.contains("cannot open the queue at amqp://127.0.0.1"),
        "{message}"
    );

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here.db");
    let message = fails(Some(&format!("sqlite://{}", missing.display())), &["stats"]);
    assert!(message.contains("does not exist"), "{message}");
    assert!(
        !missing.exists(),
        "the operator commands never create a queue"
    );

    let message = fails(None, &["stats"]);
    assert!(message.contains("ANB_QUEUE_URL"), "{message}");
}

/// SQS lists its dead letters and counts them; what its API cannot do (look a job up, page,
/// requeue, prune) is refused with what to do instead, status 1 and no panic.
#[tokio::test]
async fn on_sqs_operators_list_dead_jobs_and_are_told_what_it_cannot_do() {
    let (client, url) = sqs_queue().await;
    let queue = Queue::from_sqs_client(client, &url).await.unwrap();
    queue.enqueue(&Report { n: 1 }).await.unwrap();
    let dead = kill(&queue, 1, |_| "boom on SQS".to_owned()).await;

    queue.enqueue(&Report { n: 2 }).await.unwrap();
    let stats = ok_json(&url, &["stats"]);
    assert_eq!(stats["backend"], "sqs");
    assert_eq!(
        (stats["ready"].as_u64(), stats["dead"].as_u64()),
        (Some(1), Some(1)),
        "{stats}"
    );
    // SQS's attributes have no age of the oldest message: unknown, not zero.
    assert_eq!(stats["oldest_ready_age_seconds"], Value::Null, "{stats}");
    let table = ok(&url, &["stats"]);
    assert!(table.contains("not known on this backend"), "{table}");
    let listed = ok_json(&url, &["dead"]);
    assert_eq!(listed["jobs"][0]["last_error"], "boom on SQS", "{listed}");
    assert_eq!(listed["jobs"][0]["name"], "report");

    for (args, says) in [
        (
            vec!["show", dead[0].as_str()],
            "looking a job up by id is not available on the sqs backend",
        ),
        (
            vec!["dead", "--after", dead[0].as_str()],
            "paging through dead jobs is not available on the sqs backend",
        ),
        (
            vec!["requeue", "--all"],
            "redrive its dead-letter queue instead",
        ),
        (
            vec!["requeue", dead[0].as_str()],
            "requeueing dead jobs is not available on the sqs backend",
        ),
        (vec!["prune", "--older-than", "7d"], "retention period"),
        (
            vec!["cancel", dead[0].as_str()],
            "cancelling a job is not available on the sqs backend",
        ),
    ] {
        let message = fails(Some(&url), &args);
        assert!(message.contains(says), "{args:?}: {message}");
    }
}
