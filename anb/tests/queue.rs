//! `anb queue …` on the embedded platform's queue, found in its data directory.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anb_queue::backend::ClaimRequest;
use anb_queue::{Job, Queue};
use serde_json::Value;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Report {
    n: u32,
}

impl Job for Report {
    const NAME: &'static str = "report";
}

/// `anb queue ARGS` run in `cwd`, with no setting in the environment.
fn anb_queue(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_anb"))
        .current_dir(cwd)
        .arg("queue")
        .args(args)
        .env_remove("ANB_DATABASE_URL")
        .env_remove("ANB_QUEUE_URL")
        .output()
        .expect("run anb")
}

fn json_of(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("one JSON document")
}

#[tokio::test]
async fn anb_queue_reads_and_repairs_the_queue_in_the_data_directory() {
    let cwd = tempfile::tempdir().unwrap();
    // `anb serve`'s default data directory, relative to where it runs.
    let data_dir = cwd.path().join("anb-data");
    std::fs::create_dir(&data_dir).unwrap();
    let url = format!("sqlite://{}", data_dir.join("anb.db").display());
    let queue = Queue::connect(&url).await.unwrap();
    queue
        .enqueue_bulk(&[Report { n: 1 }, Report { n: 2 }])
        .await
        .unwrap();
    let claimed = queue
        .backend()
        .claim(ClaimRequest {
            names: &[Report::NAME],
            max: 1,
            owner: "operator-test",
            lease: Duration::from_secs(60),
        })
        .await
        .unwrap();
    queue
        .backend()
        .dead_letter("operator-test", &claimed[0].lease(), "storage unreachable")
        .await
        .unwrap();
    let dead_id = claimed[0].id.to_string();

    // The default data directory, and the flag before or after the subcommand.
    let stats = json_of(&anb_queue(cwd.path(), &["stats", "--json"]));
    assert_eq!(
        (stats["ready"].as_u64(), stats["dead"].as_u64()),
        (Some(1), Some(1)),
        "{stats}"
    );
    assert_eq!(stats["backend"], "sqlite");
    let dir = data_dir.to_str().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let listed = json_of(&anb_queue(
        elsewhere.path(),
        &["--data-dir", dir, "dead", "--json"],
    ));
    assert_eq!(listed["jobs"][0]["id"], dead_id.as_str(), "{listed}");
    assert_eq!(listed["jobs"][0]["last_error"], "storage unreachable");
    let table = anb_queue(elsewhere.path(), &["dead", "--data-dir", dir]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.status.success() && text.contains("storage unreachable"),
        "{text}"
    );
    assert!(
        text.lines().all(|line| line.chars().count() <= 100),
        "{text}"
    );

    let requeued = json_of(&anb_queue(cwd.path(), &["requeue", "--all", "--json"]));
    assert_eq!(requeued["requeued"], 1, "{requeued}");
    let shown = json_of(&anb_queue(cwd.path(), &["show", &dead_id, "--json"]));
    assert_eq!(
        (shown["state"].as_str(), shown["attempts"].as_u64()),
        (Some("ready"), Some(0))
    );
    let pruned = anb_queue(cwd.path(), &["prune", "--older-than", "7d"]);
    assert_eq!(
        String::from_utf8_lossy(&pruned.stdout),
        "pruned 0 dead jobs that died more than 7days ago\n"
    );
}

/// A data directory without a platform is an error, and `anb queue` does not create one.
#[test]
fn anb_queue_without_platform_data_is_one_line_and_status_1() {
    let cwd = tempfile::tempdir().unwrap();
    let output = anb_queue(cwd.path(), &["stats"]);
    assert_eq!(output.status.code(), Some(1));
    let message = String::from_utf8_lossy(&output.stderr);
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(
        message.starts_with("error: no platform data in ./anb-data"),
        "{message}"
    );
    assert!(!cwd.path().join("anb-data").exists());
}
