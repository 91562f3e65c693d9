//! Measures the data layer on the shapes the API serves: casting votes and
//! reading the rankings with many players and votes. Prints figures; asserts
//! only correctness. Ignored by default:
//!
//! ```text
//! ANB_BENCH_PLAYERS=10000 ANB_BENCH_VOTES_PER_PLAYER=10 \
//!   cargo test -p anb-core --release --test db_bench -- --ignored --nocapture
//! ```
//! PostgreSQL comes from `ANB_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); SQLite uses a temporary file.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anb_core::db::{Database, NewVideo, ProcessedOutputs};
use anb_core::domain::{CityKey, Pagination, SignUp, SignUpForm, UserId, VideoId, VideoTitle};
use hdrhistogram::Histogram;

const CITIES: [&str; 5] = ["Bogotá", "Medellín", "Cali", "Barranquilla", "Cartagena"];
const SEEDERS: usize = 8;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn bench_postgres() {
    let admin_url = std::env::var("ANB_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let admin = Database::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {admin_url}: {e}"));
    let Database::Postgres(admin_pool) = &admin else {
        panic!("ANB_TEST_POSTGRES_URL must be a postgres:// URL")
    };
    let name = format!("anb_bench_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(admin_pool)
        .await
        .unwrap();
    let mut url = url::Url::parse(&admin_url).unwrap();
    url.set_path(&name);
    let db = Database::connect(url.as_str()).await.unwrap();
    run("postgres", &db).await;
    db.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(admin_pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn bench_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::connect(&format!(
        "sqlite://{}",
        dir.path().join("bench.db").display()
    ))
    .await
    .unwrap();
    run("sqlite", &db).await;
    db.close().await;
}

async fn run(engine: &str, db: &Database) {
    db.migrate().await.unwrap();
    let players = setting("ANB_BENCH_PLAYERS", 2_000);
    let votes_per_player = setting("ANB_BENCH_VOTES_PER_PLAYER", 10).min(players - 1);
    let queries = setting("ANB_BENCH_QUERIES", 2_000);

    // Players, each with one published video.
    let started = Instant::now();
    let videos = Arc::new(
        in_parallel(players, {
            let db = db.clone();
            move |i| {
                let db = db.clone();
                async move { seed_player(&db, i).await }
            }
        })
        .await,
    );
    let seeded = started.elapsed();
    println!("[{engine}] seeded {players} players with a published video each in {seeded:.1?}");

    // Every player votes for the next `votes_per_player` players' videos.
    let started = Instant::now();
    let latencies = in_parallel(players, {
        let (db, videos) = (db.clone(), videos.clone());
        move |i| {
            let (db, videos) = (db.clone(), videos.clone());
            async move {
                let mut latencies = Vec::with_capacity(votes_per_player);
                let voter = videos[i].0;
                for step in 1..=votes_per_player {
                    let video = videos[(i + step) % videos.len()].1;
                    let vote_started = Instant::now();
                    db.cast_vote(voter, video).await.expect("vote");
                    latencies.push(vote_started.elapsed());
                }
                latencies
            }
        }
    })
    .await;
    let elapsed = started.elapsed();
    let total_votes = players * votes_per_player;
    let vote_latency = histogram(latencies.into_iter().flatten());
    println!(
        "[{engine}] cast {total_votes} votes with {SEEDERS} concurrent voters: {:.0} votes/s, latency p50 {:.2} ms, p99 {:.2} ms",
        total_votes as f64 / elapsed.as_secs_f64(),
        millis(vote_latency.value_at_quantile(0.5)),
        millis(vote_latency.value_at_quantile(0.99)),
    );

    let top = db.rankings(None, Pagination::first()).await.unwrap();
    assert_eq!(top.len(), 20);
    assert!(
        top.iter()
            .all(|entry| entry.votes == votes_per_player as i64)
    );

    for (label, city) in [
        ("overall", None),
        ("one city", CityKey::from_filter("bogota")),
    ] {
        let mut latencies = Vec::with_capacity(queries);
        for i in 0..queries {
            let page = Pagination::new(Some((i % 10 + 1) as i64), Some(20)).unwrap();
            let query_started = Instant::now();
            let entries = db.rankings(city.as_ref(), page).await.unwrap();
            latencies.push(query_started.elapsed());
            assert!(!entries.is_empty());
        }
        let query_latency = histogram(latencies);
        println!(
            "[{engine}] rankings {label}, pages 1-10 of 20, one connection: p50 {:.2} ms, p99 {:.2} ms over {queries} queries",
            millis(query_latency.value_at_quantile(0.5)),
            millis(query_latency.value_at_quantile(0.99)),
        );
    }
}

async fn seed_player(db: &Database, i: usize) -> (UserId, VideoId) {
    let form = SignUpForm {
        first_name: format!("Player{i}"),
        last_name: "Bench".into(),
        email: format!("player{i}@example.com"),
        password1: "bench password".into(),
        password2: "bench password".into(),
        city: CITIES[i % CITIES.len()].into(),
        country: "Colombia".into(),
    };
    let user = db
        .create_user(&SignUp::parse(&form).unwrap(), "$argon2id$bench")
        .await
        .unwrap();
    let id = VideoId::new();
    db.insert_video(&NewVideo {
        id,
        owner_id: user.id,
        title: VideoTitle::parse("Benchmark video").unwrap(),
        is_public: true,
        original_key: format!("originals/{id}.mp4"),
    })
    .await
    .unwrap();
    db.start_processing(id).await.unwrap();
    let outputs = ProcessedOutputs {
        processed_key: format!("processed/{id}.mp4"),
        thumbnail_key: format!("thumbnails/{id}.jpg"),
    };
    db.mark_processed(id, &outputs).await.unwrap();
    (user.id, id)
}

/// Runs `task(0..count)` on [`SEEDERS`] concurrent workers, results in index order.
async fn in_parallel<T, F, Fut>(count: usize, task: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = T> + Send,
{
    let workers: Vec<_> = (0..SEEDERS)
        .map(|worker| {
            let task = task.clone();
            tokio::spawn(async move {
                let mut done = Vec::new();
                for i in (worker..count).step_by(SEEDERS) {
                    done.push((i, task(i).await));
                }
                done
            })
        })
        .collect();
    let mut all = Vec::with_capacity(count);
    for worker in workers {
        all.extend(worker.await.unwrap());
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, result)| result).collect()
}

fn histogram(latencies: impl IntoIterator<Item = Duration>) -> Histogram<u64> {
    let mut histogram = Histogram::<u64>::new(3).unwrap();
    for latency in latencies {
        histogram.record(latency.as_micros() as u64).unwrap();
    }
    histogram
}

fn millis(micros: u64) -> f64 {
    micros as f64 / 1_000.0
}
