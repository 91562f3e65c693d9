//! The `anb-worker` program as a separate process on a test platform, and what it serves over
//! HTTP.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::platform::Platform;

/// A port free at the moment of asking.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `anb-worker run`, logging to a file. Dropping it kills the process.
pub struct WorkerProcess {
    child: Child,
    pub metrics_addr: SocketAddr,
    pub log: PathBuf,
}

impl WorkerProcess {
    /// Starts the worker on the platform's database, queue and storage, with fast encoder
    /// settings, a metrics address and `extra` variables.
    pub fn start(platform: &Platform, name: &str, extra: &[(&str, &str)]) -> Self {
        let metrics_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = platform.dir.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_anb-worker"));
        command
            .arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ANB_DATABASE_URL", &platform.url)
            .env("ANB_STORAGE_URL", platform.dir.path().join("media"))
            .env(
                "ANB_JWT_SECRET",
                "a test secret of at least thirty-two bytes",
            )
            .env("ANB_X264_PRESET", "ultrafast")
            .env("ANB_WORKER_CONCURRENCY", "1")
            .env("ANB_WORKER_METRICS_ADDR", metrics_addr.to_string())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        for (var, value) in extra {
            command.env(var, value);
        }
        let child = command.spawn().expect("start anb-worker");
        let process = Self {
            child,
            metrics_addr,
            log,
        };
        process.wait_for_http();
        process
    }

    fn wait_for_http(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(self.metrics_addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "the worker serves no metrics: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`TERM`, `KILL`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit, at most `bound`.
    pub fn exit_within(&mut self, bound: Duration) -> ExitStatus {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the worker did not exit within {bound:?}: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` over HTTP/1.1: the status code and the body.
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.metrics_addr, path)
    }

    /// The value of one sample of `/metrics` (`name` with its labels, as printed), 0 if absent.
    pub fn metric(&self, sample: &str) -> f64 {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "{body}");
        metric_value(&body, sample)
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A sample's value in a Prometheus text exposition, 0 when absent.
pub fn metric_value(body: &str, sample: &str) -> f64 {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// A minimal HTTP/1.1 GET, closing the connection after the answer.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}
