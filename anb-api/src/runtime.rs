//! The process's async runtime, built by hand so that stopping never waits
//! on blocking work.
//!
//! `#[tokio::main]` drops its runtime at the end of `main`, and dropping a
//! runtime waits for every blocking task to finish: one that never does (a
//! stuck parser, a hung file system) keeps a stopped server's process alive
//! forever. Here the runtime gets a bounded teardown instead.

use std::future::Future;
use std::time::Duration;

/// How long the runtime's teardown waits for blocking tasks still running
/// once `main` has returned (after the server's own grace period).
pub const TEARDOWN: Duration = Duration::from_secs(2);

/// Runs `main` to completion on a multi-threaded runtime, then shuts the
/// runtime down waiting at most `teardown` for blocking tasks.
pub fn block_on<F: Future>(main: F, teardown: Duration) -> std::io::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let output = runtime.block_on(main);
    runtime.shutdown_timeout(teardown);
    Ok(output)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[test]
    fn a_stuck_blocking_task_does_not_hold_the_process() {
        let finished = Arc::new(AtomicBool::new(false));
        let stuck = finished.clone();
        let answer = block_on(
            async move {
                // Stands for a check that never returns.
                tokio::task::spawn_blocking(move || {
                    std::thread::sleep(Duration::from_secs(300));
                    stuck.store(true, Ordering::SeqCst);
                });
                tokio::task::yield_now().await;
                42
            },
            Duration::from_millis(100),
        )
        .unwrap();
        assert_eq!(answer, 42);
        assert!(
            !finished.load(Ordering::SeqCst),
            "returned only once the blocking task ended"
        );
    }
}
