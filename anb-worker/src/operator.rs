//! Operator commands for the job queue: `anb-worker queue …`, and the same under `anb queue …`
//! for the embedded platform.
//!
//! [`QueueArgs`] is the command line (a clap subcommand both binaries flatten); [`run`] opens
//! the queue, carries out one command and prints a table, or one JSON document with `--json`.
//! Every failure (an unknown id, a bad duration, a queue out of reach, an operation the
//! backend does not offer) is one line on stderr and exit status 1.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anb_queue::{
    BackendKind, Cancelled, DeadJob, JobId, JobInfo, JobState, Queue, QueueError, QueueStats,
};
use clap::{Args, Subcommand};
use comfy_table::{ColumnConstraint, ContentArrangement, Table, Width, presets};
use serde_json::{Value, json};

/// The widest a table is drawn, so it reads in a terminal of 100 columns.
pub const TABLE_WIDTH: u16 = 100;

/// How long opening the queue may take before the command gives up (a PostgreSQL server
/// that refuses connections is retried by the pool until then).
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// The most characters of a last error a table row shows (`show` prints it whole).
const ERROR_IN_ROW: usize = 240;

/// Dead jobs read and requeued per request by `requeue --all`.
const PAGE: usize = 1_000;

/// `queue` and its subcommands.
#[derive(Debug, Args)]
pub struct QueueArgs {
    /// Print one JSON document (for scripts) instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: QueueCommand,
}

/// What an operator can do with the queue.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Jobs by state (ready, delayed, in flight, dead) and how long the oldest ready job
    /// has waited.
    Stats,
    /// Dead jobs, newest first: id, name, attempts, when it died, its last error.
    Dead {
        /// How many to list.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
        /// List the ones after this job id (the last of the previous page).
        #[arg(long, value_name = "ID")]
        after: Option<String>,
    },
    /// One job: its state, attempts, last error and progress.
    Show {
        /// The job's id, as `dead` lists it.
        id: String,
    },
    /// Puts dead jobs back in the queue, due now, with a fresh set of attempts.
    Requeue {
        /// The dead jobs' ids.
        #[arg(
            value_name = "ID",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        ids: Vec<String>,
        /// Every dead job.
        #[arg(long)]
        all: bool,
    },
    /// Cancels jobs: a waiting one is removed and never runs; a running one's handler is told
    /// to stop at its worker's next lease renewal, and the job is then removed.
    Cancel {
        /// The jobs' ids.
        #[arg(value_name = "ID", required = true)]
        ids: Vec<String>,
    },
    /// Deletes the dead jobs that died longer ago than a duration.
    Prune {
        /// How long ago, e.g. `7d`, `24h`, `90min`, `1h 30m`.
        #[arg(long, value_name = "DURATION")]
        older_than: String,
    },
}

/// Why an operator command failed; its message is one line for the terminal.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The queue's file does not exist (a SQLite URL): nothing to inspect, and none is made.
    #[error("no queue at {path}: the file does not exist")]
    NoQueueFile {
        /// The file the URL names.
        path: String,
    },
    /// The queue could not be opened.
    #[error("cannot open the queue at {queue}: {error}")]
    Open {
        /// The queue's URL, without its password.
        queue: String,
        /// Why.
        error: QueueError,
    },
    /// The queue did not answer in time.
    #[error("the queue at {queue} did not answer within {} s", after.as_secs())]
    Timeout {
        /// The queue's URL, without its password.
        queue: String,
        /// How long it was given.
        after: Duration,
    },
    /// The queue refused or failed the operation.
    #[error("{0}")]
    Queue(QueueError),
    /// The backend does not offer the operation (SQS: see the crate README's table).
    #[error("{error}; {hint}")]
    Unsupported {
        /// The queue's answer.
        error: QueueError,
        /// What to do instead.
        hint: &'static str,
    },
    /// No job has this id.
    #[error("no job {0} in the queue")]
    NotFound(String),
    /// `--older-than` is not a duration.
    #[error("invalid --older-than {value:?}: {reason} (expected e.g. 7d, 24h or 90min)")]
    BadDuration {
        /// What was given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Some of the ids given to `cancel` were not waiting or running.
    #[error("{} of the ids given were not cancelled: {} (finished, dead or unknown)", .0.len(), .0.join(", "))]
    NotCancelled(Vec<String>),
    /// Some of the ids given to `requeue` were not dead jobs.
    #[error("{} of the ids given were not requeued: {}", .0.len(), describe_skipped(.0))]
    NotRequeued(Vec<Skipped>),
    /// The output could not be written.
    #[error("writing the output: {0}")]
    Output(#[from] io::Error),
}

/// An id `requeue` left alone, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The id as given.
    pub id: String,
    /// Why it was not requeued: no such job, or its state.
    pub reason: String,
}

fn describe_skipped(skipped: &[Skipped]) -> String {
    skipped
        .iter()
        .map(|skip| format!("{} ({})", skip.id, skip.reason))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs one operator command on the queue at `url`, printing its result to stdout and any
/// failure to stderr as one line; returns the exit status (1 on failure).
pub fn run(url: &str, args: &QueueArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&format!("starting the async runtime: {error}")),
    };
    let outcome = runtime.block_on(async {
        let queue = open(url).await?;
        let mut stdout = io::stdout().lock();
        execute(&queue, args, &mut stdout).await
    });
    // Background tasks of a client (a Redis connection manager) must not hold the exit up.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        // `… | head` closing the pipe early is not a failure.
        Err(OperatorError::Output(error)) if error.kind() == io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(error) => fail(&error.to_string()),
    }
}

fn fail(message: &str) -> ExitCode {
    // One line, whatever a driver put in its message.
    let line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    eprintln!("error: {line}");
    ExitCode::FAILURE
}

/// Opens the queue at `url` for operator commands. Unlike [`Queue::connect`], it never
/// creates a SQLite file: a path that does not exist is an error.
pub async fn open(url: &str) -> Result<Queue, OperatorError> {
    if let Some(path) = sqlite_path(url)
        && !std::path::Path::new(path).exists()
    {
        return Err(OperatorError::NoQueueFile {
            path: path.to_owned(),
        });
    }
    match tokio::time::timeout(OPEN_TIMEOUT, Queue::connect(url)).await {
        Ok(Ok(queue)) => Ok(queue),
        Ok(Err(error)) => Err(OperatorError::Open {
            queue: redact(url),
            error,
        }),
        Err(_) => Err(OperatorError::Timeout {
            queue: redact(url),
            after: OPEN_TIMEOUT,
        }),
    }
}

/// The file a `sqlite:` URL names, unless it is an in-memory database.
fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then_some(path)
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        Err(_) => "<unparseable URL>".to_owned(),
    }
}

/// Carries out one command on `queue`, writing its table or JSON document to `out`.
pub async fn execute(
    queue: &Queue,
    args: &QueueArgs,
    out: &mut impl Write,
) -> Result<(), OperatorError> {
    let json = args.json;
    match &args.command {
        QueueCommand::Stats => {
            let stats = queue.stats().await.map_err(OperatorError::Queue)?;
            // SQS has no attribute for it (only CloudWatch's ApproximateAgeOfOldestMessage).
            let oldest = (queue.kind() != BackendKind::Sqs).then_some(stats.oldest_ready_age);
            emit(out, json, stats_json(queue, &stats, oldest), || {
                stats_table(&stats, oldest)
            })
        }
        QueueCommand::Dead { limit, after } => {
            let limit = *limit as usize;
            let after = after.as_deref().map(JobId::new);
            let jobs = queue
                .dead_jobs_after(after.as_ref(), limit)
                .await
                .map_err(|error| {
                    unsupported(error, "this backend lists the first page of dead jobs only")
                })?;
            let next = (jobs.len() == limit)
                .then(|| jobs.last().map(|job| job.id.to_string()))
                .flatten();
            emit(out, json, dead_json(&jobs, next.as_deref()), || {
                if jobs.is_empty()
                    && let Some(after) = &after
                {
                    // The job paged from may have been requeued or pruned since.
                    format!("no dead jobs after {after} (a dead job's id, as `dead` lists)\n")
                } else {
                    dead_table(&jobs, next.as_deref())
                }
            })
        }
        QueueCommand::Show { id } => {
            let info = queue
                .job(&JobId::new(id.as_str()))
                .await
                .map_err(|error| {
                    unsupported(
                        error,
                        "its API has no lookup by id: list the dead jobs with `dead`",
                    )
                })?
                .ok_or_else(|| OperatorError::NotFound(id.clone()))?;
            emit(out, json, job_json(&info), || job_table(&info))
        }
        QueueCommand::Requeue { ids, all } => {
            let (requeued, skipped) = requeue(queue, ids, *all).await?;
            emit(out, json, requeue_json(requeued, &skipped), || {
                format!("requeued {requeued} dead {}\n", jobs_word(requeued))
            })?;
            if skipped.is_empty() {
                Ok(())
            } else {
                Err(OperatorError::NotRequeued(skipped))
            }
        }
        QueueCommand::Cancel { ids } => {
            let mut outcomes = Vec::with_capacity(ids.len());
            for id in ids {
                let outcome = queue
                    .cancel(&JobId::new(id.as_str()))
                    .await
                    .map_err(|error| unsupported(error, CANCEL_HINT))?;
                outcomes.push((id.as_str(), outcome));
            }
            emit(out, json, cancel_json(&outcomes), || {
                cancel_table(&outcomes)
            })?;
            let missed: Vec<String> = outcomes
                .iter()
                .filter(|(_, outcome)| *outcome == Cancelled::NotFound)
                .map(|(id, _)| (*id).to_owned())
                .collect();
            if missed.is_empty() {
                Ok(())
            } else {
                Err(OperatorError::NotCancelled(missed))
            }
        }
        QueueCommand::Prune { older_than } => {
            let age = parse_age(older_than)?;
            let pruned = queue
                .prune_dead(age)
                .await
                .map_err(|error| unsupported(error, PRUNE_HINT))?;
            let shown = humantime::format_duration(age).to_string();
            emit(
                out,
                json,
                json!({"pruned": pruned, "older_than_seconds": age.as_secs_f64()}),
                || {
                    format!(
                        "pruned {pruned} dead {} that died more than {shown} ago\n",
                        jobs_word(pruned)
                    )
                },
            )
        }
    }
}

const REQUEUE_HINT: &str =
    "redrive its dead-letter queue instead (the console, or StartMessageMoveTask)";
const CANCEL_HINT: &str = "an SQS message is deleted only by the consumer holding it: let the job run, or purge the queue";
const PRUNE_HINT: &str = "the dead-letter queue's message retention period removes old dead jobs";

/// An unsupported operation with what to do instead; other errors as they are.
fn unsupported(error: QueueError, hint: &'static str) -> OperatorError {
    if matches!(error, QueueError::UnsupportedByBackend { .. }) {
        OperatorError::Unsupported { error, hint }
    } else {
        OperatorError::Queue(error)
    }
}

fn jobs_word(count: u64) -> &'static str {
    if count == 1 { "job" } else { "jobs" }
}

/// Parses `--older-than`: humantime's durations (`7d`, `24h`, `1h 30m`).
pub fn parse_age(value: &str) -> Result<Duration, OperatorError> {
    humantime::parse_duration(value.trim()).map_err(|error| OperatorError::BadDuration {
        value: value.to_owned(),
        reason: error.to_string(),
    })
}

/// Requeues the dead jobs among `ids` (or every dead job), returning how many were requeued
/// and the ids that were not dead jobs.
async fn requeue(
    queue: &Queue,
    ids: &[String],
    all: bool,
) -> Result<(u64, Vec<Skipped>), OperatorError> {
    // A backend without requeueing (SQS) says so before anything is read: an empty requeue
    // touches nothing where it is offered.
    queue
        .requeue_dead(&[])
        .await
        .map_err(|error| unsupported(error, REQUEUE_HINT))?;
    let (targets, skipped) = if all {
        (all_dead_ids(queue).await?, Vec::new())
    } else {
        let mut targets = Vec::new();
        let mut skipped = Vec::new();
        let mut seen = BTreeSet::new();
        for id in ids.iter().filter(|id| seen.insert(id.as_str())) {
            let job = JobId::new(id.as_str());
            match queue.job(&job).await.map_err(OperatorError::Queue)? {
                Some(info) if info.state == JobState::Dead => targets.push(job),
                Some(info) => skipped.push(Skipped {
                    id: id.clone(),
                    reason: format!("{}, not dead", info.state.as_str()),
                }),
                None => skipped.push(Skipped {
                    id: id.clone(),
                    reason: "no such job".to_owned(),
                }),
            }
        }
        (targets, skipped)
    };
    let mut requeued = 0;
    for chunk in targets.chunks(PAGE) {
        requeued += queue
            .requeue_dead(chunk)
            .await
            .map_err(OperatorError::Queue)?;
    }
    Ok((requeued, skipped))
}

/// Every dead job's id, read a page at a time before any is requeued (a requeued job leaves
/// the dead letters, and with it the place the next page starts from).
async fn all_dead_ids(queue: &Queue) -> Result<Vec<JobId>, OperatorError> {
    let mut ids = Vec::new();
    let mut seen = BTreeSet::new();
    let mut after: Option<JobId> = None;
    loop {
        let page = queue
            .dead_jobs_after(after.as_ref(), PAGE)
            .await
            .map_err(OperatorError::Queue)?;
        let full = page.len() == PAGE;
        after = page.last().map(|job| job.id.clone());
        ids.extend(
            page.into_iter()
                .map(|job| job.id)
                .filter(|id| seen.insert(id.clone())),
        );
        if !full {
            return Ok(ids);
        }
    }
}

/// Writes the JSON document, or the table `text` draws.
fn emit(
    out: &mut impl Write,
    json: bool,
    document: Value,
    text: impl FnOnce() -> String,
) -> Result<(), OperatorError> {
    if json {
        serde_json::to_writer_pretty(&mut *out, &document).map_err(io::Error::from)?;
        writeln!(out)?;
    } else {
        out.write_all(text().as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_style(presets::ASCII_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_width(TABLE_WIDTH)
        .set_header(header.to_vec());
    table
}

fn stats_json(queue: &Queue, stats: &QueueStats, oldest: Option<Duration>) -> Value {
    json!({
        "backend": queue.kind().as_str(),
        "ready": stats.ready,
        "delayed": stats.delayed,
        "in_flight": stats.in_flight,
        "dead": stats.dead,
        "oldest_ready_age_seconds": oldest.map(|age| age.as_secs_f64()),
    })
}

/// The stats as a table of jobs by state, and the oldest ready job's wait (`None` where the
/// backend does not know it).
pub fn stats_table(stats: &QueueStats, oldest: Option<Duration>) -> String {
    let mut table = table(&["state", "jobs"]);
    for (state, jobs) in [
        ("ready", stats.ready),
        ("delayed", stats.delayed),
        ("in flight", stats.in_flight),
        ("dead", stats.dead),
    ] {
        table.add_row(vec![state.to_owned(), jobs.to_string()]);
    }
    let wait = match oldest {
        _ if stats.ready == 0 => "no job is ready".to_owned(),
        Some(age) => format!(
            "the oldest ready job has waited {}",
            humantime::format_duration(Duration::from_secs(age.as_secs()))
        ),
        None => "how long the oldest ready job has waited is not known on this backend".to_owned(),
    };
    format!("{table}\n{wait}\n")
}

/// When a dead job died, as RFC 3339 UTC to the second.
fn died_at(job: &DeadJob) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(job.dead_at_ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

fn dead_json(jobs: &[DeadJob], next: Option<&str>) -> Value {
    let jobs: Vec<Value> = jobs
        .iter()
        .map(|job| {
            json!({
                "id": job.id.as_str(),
                "name": job.name,
                "attempts": job.attempts,
                "last_error": job.last_error,
                "dead_at": died_at(job),
                "payload": serde_json::from_str::<Value>(&job.payload)
                    .unwrap_or_else(|_| Value::String(job.payload.clone())),
            })
        })
        .collect();
    json!({ "jobs": jobs, "next_after": next })
}

/// The dead jobs as a table, with how to ask for the next page when this one is full.
pub fn dead_table(jobs: &[DeadJob], next: Option<&str>) -> String {
    if jobs.is_empty() {
        return "no dead jobs\n".to_owned();
    }
    let mut table = table(&["id", "name", "attempts", "died (UTC)", "last error"]);
    // Ids and times are copied and compared whole: never wrapped.
    table.set_constraints([
        ColumnConstraint::ContentWidth,
        ColumnConstraint::LowerBoundary(Width::Fixed(8)),
        ColumnConstraint::ContentWidth,
        ColumnConstraint::ContentWidth,
    ]);
    for job in jobs {
        table.add_row(vec![
            job.id.to_string(),
            job.name.clone(),
            job.attempts.to_string(),
            died_at(job),
            job.last_error
                .as_deref()
                .map(|error| shorten(error, ERROR_IN_ROW))
                .unwrap_or_default(),
        ]);
    }
    let mut text = format!("{table}\n");
    if let Some(next) = next {
        text.push_str(&format!("more may follow: add --after {next}\n"));
    }
    text
}

fn job_json(info: &JobInfo) -> Value {
    json!({
        "id": info.id.as_str(),
        "name": info.name,
        "state": info.state.as_str(),
        "attempts": info.attempts,
        "max_attempts": info.max_attempts,
        "last_error": info.last_error,
        "progress": info.progress,
        "priority": info.priority.level(),
    })
}

/// One job as a table of its fields.
pub fn job_table(info: &JobInfo) -> String {
    let mut table = table(&["field", "value"]);
    table.add_row(vec!["id".to_owned(), info.id.to_string()]);
    table.add_row(vec!["name".to_owned(), info.name.clone()]);
    table.add_row(vec!["state".to_owned(), info.state.as_str().to_owned()]);
    table.add_row(vec![
        "attempts".to_owned(),
        format!("{} of {}", info.attempts, info.max_attempts),
    ]);
    if let Some(progress) = info.progress {
        table.add_row(vec!["progress".to_owned(), format!("{progress} %")]);
    }
    table.add_row(vec!["priority".to_owned(), info.priority.to_string()]);
    table.add_row(vec![
        "last error".to_owned(),
        info.last_error.clone().unwrap_or_else(|| "none".to_owned()),
    ]);
    format!("{table}\n")
}

fn cancel_json(outcomes: &[(&str, Cancelled)]) -> Value {
    json!({
        "cancelled": outcomes
            .iter()
            .map(|(id, outcome)| json!({"id": id, "outcome": outcome.as_str()}))
            .collect::<Vec<_>>(),
    })
}

/// One line per job: what the cancel did.
pub fn cancel_table(outcomes: &[(&str, Cancelled)]) -> String {
    let mut table = table(&["id", "outcome"]);
    for (id, outcome) in outcomes {
        let said = match outcome {
            Cancelled::Removed => "removed: it will not run",
            Cancelled::Requested => "running: its handler is told to stop",
            _ => "not found: finished, dead or unknown",
        };
        table.add_row(vec![(*id).to_owned(), said.to_owned()]);
    }
    format!("{table}\n")
}

fn requeue_json(requeued: u64, skipped: &[Skipped]) -> Value {
    json!({
        "requeued": requeued,
        "skipped": skipped
            .iter()
            .map(|skip| json!({"id": skip.id, "reason": skip.reason}))
            .collect::<Vec<_>>(),
    })
}

/// `text` on one line, cut to `max` characters with an ellipsis.
fn shorten(text: &str, max: usize) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= max {
        line
    } else {
        let mut cut: String = line.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_people_write_them() {
        assert_eq!(parse_age("7d").unwrap(), Duration::from_secs(7 * 86_400));
        assert_eq!(parse_age(" 24h ").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_age("1h 30m").unwrap(), Duration::from_secs(5_400));
        for bad in ["", "7", "seven days", "-1h", "7x"] {
            let error = parse_age(bad).unwrap_err();
            assert!(
                error.to_string().starts_with("invalid --older-than"),
                "{bad:?}: {error}"
            );
        }
    }

    #[test]
    fn only_sqlite_files_are_checked_for_existence() {
        assert_eq!(
            sqlite_path("sqlite:///var/anb/anb.db"),
            Some("/var/anb/anb.db")
        );
        assert_eq!(sqlite_path("sqlite://anb.db?mode=rwc"), Some("anb.db"));
        assert_eq!(sqlite_path("sqlite:anb.db"), Some("anb.db"));
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("postgres://db/anb"), None);
    }

    #[test]
    fn passwords_never_reach_messages() {
        let shown = redact("postgres://app:s3cret@db.internal/anb");
        assert!(
            !shown.contains("s3cret") && shown.contains("db.internal"),
            "{shown}"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    /// Whatever the names and errors, a table fits 100 columns and a row's error one line.
    #[test]
    fn dead_jobs_fit_a_terminal_of_100_columns() {
        let jobs: Vec<DeadJob> = (0..3)
            .map(|i| DeadJob {
                id: JobId::new(format!("{i}-{}", "7".repeat(30))),
                name: format!("a-job-name-that-is-long-{}", "x".repeat(i * 20)),
                payload: "{}".to_owned(),
                attempts: 5,
                last_error: Some(format!("line one\nline two {}", "word ".repeat(200))),
                dead_at_ms: 1_764_000_000_000,
            })
            .collect();
        let table = dead_table(&jobs, Some("2"));
        for line in table.lines() {
            assert!(line.chars().count() <= usize::from(TABLE_WIDTH), "{line}");
        }
        assert!(table.contains("2025-11-24T16:00:00Z"), "{table}");
        assert!(table.contains("more may follow: add --after 2"), "{table}");
        assert!(table.contains('…'), "long errors are cut: {table}");
    }
}
