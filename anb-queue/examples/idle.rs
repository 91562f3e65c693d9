//! What an idle worker costs: one worker with nothing to do, on each backend in turn, for
//! `--seconds`, and the load it puts on its backend meanwhile.
//!
//! ```sh
//! anb-queue/benches/idle.sh            # 60 s per backend, release build
//! anb-queue/benches/idle.sh --quick    # 10 s per backend
//! ```
//!
//! Figures per backend, over the measured interval (after a short settling time):
//! - the process's CPU time as a share of one core (user + system, from `/proc/self/stat`);
//! - SQL statements the worker sent per second (counted from sqlx's statement events);
//! - PostgreSQL: transactions committed per second in the worker's own fresh database
//!   (`pg_stat_database.xact_commit`);
//! - Redis: commands per second, from `INFO` on a server nothing else uses (`--redis-url`;
//!   the script starts one);
//! - SQS: API requests per idle minute, by operation, as the backend counts them.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anb_queue::{Job, JobContext, Queue, Worker};
use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::{Layer, filter::Targets, layer::SubscriberExt, util::SubscriberInitExt};

#[path = "support/sqs.rs"]
mod sqs_support;
use sqs_support::{create_sqs_queue, sqs_client};

#[derive(Debug, Parser)]
struct Args {
    /// The backends to measure, one after the other.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "postgres,sqlite,redis,sqs"
    )]
    backends: Vec<BackendArg>,
    /// How long each idle worker is measured.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Settling time before the measured interval.
    #[arg(long, default_value_t = 2)]
    settle_seconds: u64,
    /// A PostgreSQL server where a fresh database is created (and dropped).
    #[arg(
        long,
        env = "ANB_TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    postgres_url: String,
    /// A Redis server nothing else uses: its command counters are read as the worker's.
    #[arg(long)]
    redis_url: Option<String>,
    /// The SQS-compatible endpoint (a local test server).
    #[arg(
        long,
        env = "ANB_TEST_AWS_ENDPOINT",
        default_value = "http://127.0.0.1:4566"
    )]
    aws_endpoint: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    Postgres,
    Sqlite,
    Redis,
    Sqs,
}

#[derive(Debug, Serialize, Deserialize)]
struct Noop;

impl Job for Noop {
    const NAME: &'static str = "noop";
}

/// Counts sqlx's per-statement events (target `sqlx::query`).
#[derive(Debug, Clone, Default)]
struct StatementCounter(Arc<AtomicU64>);

impl<S: tracing::Subscriber> Layer<S> for StatementCounter {
    fn on_event(
        &self,
        _event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// CPU time this process has used (user + system), from `/proc/self/stat`.
fn cpu_time() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which may contain spaces) start at state (field 3);
    // utime and stime are fields 14 and 15, in clock ticks of 1/100 s on Linux.
    let after_name = stat.rsplit_once(')').context("a /proc stat line")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(Duration::from_millis(ticks * 10))
}

/// What is counted on the backend's side, read before and after the interval.
#[derive(Debug, Default, Clone)]
struct BackendCounters {
    postgres_commits: Option<i64>,
    redis_commands: Option<u64>,
    sqs_requests: Option<BTreeMap<String, u64>>,
}

/// The backend under test: its queue and whatever reads its counters.
struct Scratch {
    queue: Queue,
    postgres: Option<(String, String)>,
    redis: Option<String>,
    sqs: Option<(aws_sdk_sqs::Client, Vec<String>)>,
    _dir: Option<tempfile::TempDir>,
}

impl Scratch {
    async fn new(backend: BackendArg, args: &Args) -> anyhow::Result<Self> {
        match backend {
            BackendArg::Postgres => {
                let name = format!("anb_queue_idle_{}", uuid::Uuid::new_v4().simple());
                let mut admin = PgConnection::connect(&args.postgres_url).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut admin)
                    .await?;
                let mut url = url::Url::parse(&args.postgres_url)?;
                url.set_path(&name);
                Ok(Self {
                    queue: Queue::connect(url.as_str()).await?,
                    postgres: Some((args.postgres_url.clone(), name)),
                    redis: None,
                    sqs: None,
                    _dir: None,
                })
            }
            BackendArg::Sqlite => {
                let dir = tempfile::tempdir()?;
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("idle.db").display());
                Ok(Self {
                    queue: Queue::connect(&url).await?,
                    postgres: None,
                    redis: None,
                    sqs: None,
                    _dir: Some(dir),
                })
            }
            BackendArg::Redis => {
                let server = args
                    .redis_url
                    .clone()
                    .context("--redis-url: a Redis server nothing else uses")?;
                let name = format!("idle-{}", uuid::Uuid::new_v4().simple());
                Ok(Self {
                    queue: Queue::connect(&format!("{server}?queue={name}")).await?,
                    postgres: None,
                    redis: Some(server),
                    sqs: None,
                    _dir: None,
                })
            }
            BackendArg::Sqs => {
                let client = sqs_client(&args.aws_endpoint);
                let (url, dead_letters) = create_sqs_queue(&client, "anb-idle").await?;
                Ok(Self {
                    queue: Queue::from_sqs_client(client.clone(), &url).await?,
                    postgres: None,
                    redis: None,
                    sqs: Some((client, vec![url, dead_letters])),
                    _dir: None,
                })
            }
        }
    }

    async fn counters(&self) -> anyhow::Result<BackendCounters> {
        let mut counters = BackendCounters::default();
        if let Some((admin_url, name)) = &self.postgres {
            let mut admin = PgConnection::connect(admin_url).await?;
            // Statistics reach the view up to a second late; read a fresh snapshot.
            sqlx::query("SELECT pg_stat_clear_snapshot()")
                .execute(&mut admin)
                .await?;
            counters.postgres_commits = Some(
                sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = $1")
                    .bind(name)
                    .fetch_one(&mut admin)
                    .await?,
            );
        }
        if let Some(server) = &self.redis {
            let client = redis::Client::open(server.as_str())?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            let info: String = redis::cmd("INFO")
                .arg("stats")
                .query_async(&mut conn)
                .await?;
            counters.redis_commands = info
                .lines()
                .find_map(|line| line.strip_prefix("total_commands_processed:"))
                .and_then(|value| value.trim().parse().ok());
        }
        if self.sqs.is_some() {
            counters.sqs_requests = self.queue.requests_by_operation();
        }
        Ok(counters)
    }

    async fn cleanup(self) {
        if let Some((admin_url, name)) = &self.postgres
            && let Ok(mut admin) = PgConnection::connect(admin_url).await
        {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await;
        }
        if let Some((client, urls)) = &self.sqs {
            for url in urls {
                let _ = client.delete_queue().queue_url(url).send().await;
            }
        }
    }
}

/// One backend's figures over the measured interval.
#[derive(Debug)]
struct Figures {
    backend: BackendArg,
    seconds: f64,
    cpu_percent: f64,
    statements_per_second: f64,
    postgres_commits_per_second: Option<f64>,
    redis_commands_per_second: Option<f64>,
    sqs_requests_per_minute: Option<BTreeMap<String, f64>>,
}

async fn measure(
    backend: BackendArg,
    args: &Args,
    statements: &StatementCounter,
) -> anyhow::Result<Figures> {
    let scratch = Scratch::new(backend, args)
        .await
        .with_context(|| format!("setting up {backend:?}"))?;
    let stop = CancellationToken::new();
    let worker = tokio::spawn(
        Worker::new(scratch.queue.clone())
            .handle(|_job: Noop, _ctx: JobContext| async { Ok(()) })
            .run_until(stop.clone().cancelled_owned()),
    );
    tokio::time::sleep(Duration::from_secs(args.settle_seconds)).await;

    let before = scratch.counters().await?;
    let statements_before = statements.0.load(Ordering::Relaxed);
    let (cpu_before, started) = (cpu_time()?, Instant::now());
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let (cpu_after, elapsed) = (cpu_time()?, started.elapsed());
    let statements_after = statements.0.load(Ordering::Relaxed);
    let after = scratch.counters().await?;

    stop.cancel();
    worker.await??;
    scratch.cleanup().await;

    let seconds = elapsed.as_secs_f64();
    let per_second = |delta: f64| delta / seconds;
    Ok(Figures {
        backend,
        seconds,
        cpu_percent: 100.0 * cpu_after.saturating_sub(cpu_before).as_secs_f64() / seconds,
        statements_per_second: per_second(statements_after.saturating_sub(statements_before) as f64),
        postgres_commits_per_second: before
            .postgres_commits
            .zip(after.postgres_commits)
            .map(|(before, after)| per_second((after - before) as f64)),
        // Less the one `INFO` that read the first figure.
        redis_commands_per_second: before.redis_commands.zip(after.redis_commands).map(
            |(before, after)| per_second(after.saturating_sub(before).saturating_sub(1) as f64),
        ),
        sqs_requests_per_minute: before.sqs_requests.zip(after.sqs_requests).map(
            |(before, after)| {
                after
                    .into_iter()
                    .map(|(operation, count)| {
                        let delta =
                            count.saturating_sub(before.get(&operation).copied().unwrap_or(0));
                        (operation, delta as f64 * 60.0 / seconds)
                    })
                    .filter(|(_, per_minute)| *per_minute > 0.0)
                    .collect()
            },
        ),
    })
}

fn print_table(rows: &[Figures]) {
    println!();
    println!(
        "| backend | measured | CPU (% of a core) | SQL statements/s | PostgreSQL transactions/s | Redis commands/s | SQS requests per idle minute |"
    );
    println!("|---|---|---|---|---|---|---|");
    let or_dash =
        |value: Option<f64>| value.map_or("—".to_owned(), |value| format!("{value:.1}"));
    for row in rows {
        let sqs = row
            .sqs_requests_per_minute
            .as_ref()
            .map_or("—".to_owned(), |by_operation| {
                let total = by_operation.values().fold(0.0, |sum, count| sum + count);
                let detail: Vec<String> = by_operation
                    .iter()
                    .map(|(operation, per_minute)| format!("{operation} {per_minute:.1}"))
                    .collect();
                format!("{total:.1} ({})", detail.join(", "))
            });
        let sql = match row.backend {
            BackendArg::Postgres | BackendArg::Sqlite => {
                format!("{:.1}", row.statements_per_second)
            }
            BackendArg::Redis | BackendArg::Sqs => "—".to_owned(),
        };
        println!(
            "| {:?} | {:.0} s | {:.2} | {sql} | {} | {} | {sqs} |",
            row.backend,
            row.seconds,
            row.cpu_percent,
            or_dash(row.postgres_commits_per_second),
            or_dash(row.redis_commands_per_second),
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let statements = StatementCounter::default();
    tracing_subscriber::registry()
        .with(
            statements
                .clone()
                .with_filter(Targets::new().with_target("sqlx::query", tracing::Level::DEBUG)),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(Targets::new().with_default(tracing::Level::WARN)),
        )
        .init();
    let mut rows = Vec::new();
    for backend in &args.backends {
        eprintln!(
            "measuring an idle worker on {backend:?} for {} s",
            args.seconds
        );
        let figures = measure(*backend, &args, &statements).await?;
        eprintln!("{figures:?}");
        rows.push(figures);
    }
    print_table(&rows);
    Ok(())
}
