//! Figures, not assertions: throughput and peak memory of ten concurrent
//! 100 MiB uploads, on a local directory and on the S3-compatible server at
//! `ANB_TEST_AWS_ENDPOINT`. Ignored by default; run with
//!
//! ```text
//! cargo test -p anb-core --test storage_bench -- --ignored --nocapture --test-threads=1
//! ```
//!
//! The S3-compatible test server is slow and keeps objects in memory, so its
//! throughput says little about S3; the memory figure is this process's own.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anb_core::config::StorageUrl;
use anb_core::storage::{ObjectKey, S3Storage, Storage, VideoKeys};
use tokio::io::{AsyncRead, ReadBuf};

const MIB: u64 = 1024 * 1024;
const UPLOADS: usize = 10;
const UPLOAD_SIZE: u64 = 100 * MIB;

/// `len` bytes of a repeated 64 KiB block, handed out like a network stream.
struct RepeatedBody {
    block: Vec<u8>,
    remaining: u64,
}

impl RepeatedBody {
    fn new(len: u64) -> Self {
        Self {
            block: (0..64 * 1024)
                .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
                .collect(),
            remaining: len,
        }
    }
}

impl AsyncRead for RepeatedBody {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = (self.remaining.min(self.block.len() as u64) as usize).min(buf.remaining());
        buf.put_slice(&self.block[..n]);
        self.remaining -= n as u64;
        Poll::Ready(Ok(()))
    }
}

/// Peak resident memory of this process in MiB (`VmHWM`), on Linux.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Resets the peak so the next reading covers only what follows.
fn reset_peak_rss() {
    // "5" resets VmHWM to the current RSS (Linux ≥ 4.0).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

async fn ten_concurrent_uploads(label: &str, storage: Storage) {
    reset_peak_rss();
    let before = peak_rss_mib();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..UPLOADS {
        let storage = storage.clone();
        tasks.push(tokio::spawn(async move {
            let key = VideoKeys::new(uuid::Uuid::new_v4()).original();
            let stored = storage
                .upload(&key, RepeatedBody::new(UPLOAD_SIZE), UPLOAD_SIZE)
                .await
                .unwrap();
            assert_eq!(stored, UPLOAD_SIZE);
            key
        }));
    }
    let mut keys: Vec<ObjectKey> = Vec::new();
    for task in tasks {
        keys.push(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    let after = peak_rss_mib();
    let total_mib = (UPLOADS as u64 * UPLOAD_SIZE / MIB) as f64;
    println!(
        "{label}: {UPLOADS} concurrent uploads of {} MiB: {total_mib:.0} MiB in {:.1} s ({:.0} MiB/s); \
         peak RSS {:.0} MiB (at start {:.0} MiB)",
        UPLOAD_SIZE / MIB,
        elapsed.as_secs_f64(),
        total_mib / elapsed.as_secs_f64(),
        after.unwrap_or(f64::NAN),
        before.unwrap_or(f64::NAN),
    );
    for key in keys {
        storage.delete(&key).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run explicitly with --ignored --nocapture"]
async fn local_ten_concurrent_100_mib_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::from_url(&StorageUrl::Local(dir.path().to_owned()), false, b"secret")
        .await
        .unwrap();
    ten_concurrent_uploads("local", storage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run explicitly with --ignored --nocapture"]
async fn s3_ten_concurrent_100_mib_uploads() {
    let endpoint = std::env::var("ANB_TEST_AWS_ENDPOINT")
        .unwrap_or_else(|_| "http://127.0.0.1:4566".to_owned());
    let sdk_config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(&endpoint)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test",
            "test",
            None,
            None,
            "anb-bench",
        ))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(Duration::from_secs(300))
                .build(),
        )
        .load()
        .await;
    let bucket = format!("anb-bench-{}", uuid::Uuid::new_v4().simple());
    let store = S3Storage::from_sdk_config(&sdk_config, &bucket, "", true);
    store
        .client()
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap_or_else(|e| panic!("cannot create a bucket at {endpoint}: {e}"));
    ten_concurrent_uploads("s3 (test server)", Storage::S3(store)).await;
}
