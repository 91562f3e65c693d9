//! `anb serve` as a user runs it: a real process on a free port.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn serve_answers_health_on_the_embedded_default() {
    let data_dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_anb"))
        .args(["serve", "--addr", &addr, "--data-dir"])
        .arg(data_dir.path())
        .env_clear()
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        match reqwest::get(format!("http://{addr}/health")).await {
            Ok(response) => break response.status(),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("anb serve did not answer within 30 s: {e}"),
        }
    };
    assert_eq!(status, 200);
    assert!(data_dir.path().join("jwt-secret").exists());

    // SIGTERM stops it cleanly.
    Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "anb serve exited with {exit}");
}
