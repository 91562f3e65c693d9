//! The Prometheus metrics a worker publishes, read back from a real exporter's text output
//! after real jobs ran. A test binary of its own: the recorder is process-global.

mod support;

use std::time::Duration;

use anb_queue::{Job, JobContext, JobError, RetryBackoff, Worker};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use support::{RunningWorker, TestDb, wait_until};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Measured {
    /// Attempts that fail before one succeeds; `None` fails permanently.
    fail_attempts: Option<u32>,
}

impl Job for Measured {
    const NAME: &'static str = "metrics.measured";
    const MAX_ATTEMPTS: u32 = 3;
}

/// The value of one sample line (`name{labels} value`) of the exposition, if present.
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

fn install_recorder() -> PrometheusHandle {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).expect("the only recorder of this test binary");
    handle
}

#[tokio::test]
async fn worker_publishes_outcomes_durations_and_queue_depth() {
    let metrics = install_recorder();
    let db = TestDb::sqlite().await;
    let queue = db.queue().await;
    let jobs = [
        Measured {
            fail_attempts: Some(0),
        },
        Measured {
            fail_attempts: Some(0),
        },
        Measured {
            fail_attempts: Some(1),
        },
        Measured {
            fail_attempts: None,
        },
    ];
    queue.enqueue_bulk(&jobs).await.unwrap();
    let worker = Worker::new(queue.clone())
        .retry_backoff(RetryBackoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(20),
        })
        .handle(|job: Measured, ctx: JobContext| async move {
            match job.fail_attempts {
                None => Err(JobError::permanent("never works")),
                Some(failures) if ctx.attempt() <= failures => Err(JobError::retryable("not yet")),
                Some(_) => Ok(()),
            }
        });
    let worker = RunningWorker::spawn(worker);
    let counted = |outcome: &str| {
        sample(
            &metrics.render(),
            &format!(r#"anb_queue_jobs_total{{job="metrics.measured",outcome="{outcome}"}}"#),
        )
        .unwrap_or(0.0)
    };
    wait_until("every job settled", 60, || async {
        counted("completed") >= 3.0 && counted("dead") >= 1.0
    })
    .await;
    worker.stop().await;
    let stats = queue.stats().await.unwrap();

    let exposition = metrics.render();
    assert_eq!(counted("completed"), 3.0, "{exposition}");
    assert_eq!(counted("retried"), 1.0, "{exposition}");
    assert_eq!(counted("dead"), 1.0, "{exposition}");
    assert_eq!(
        sample(
            &exposition,
            r#"anb_queue_job_duration_seconds_count{job="metrics.measured"}"#
        ),
        Some(5.0),
        "one duration per attempt: {exposition}"
    );
    assert_eq!(
        sample(
            &exposition,
            r#"anb_queue_job_wait_seconds_count{job="metrics.measured"}"#
        ),
        Some(5.0),
        "{exposition}"
    );
    assert_eq!(stats.dead, 1);
    assert_eq!(
        sample(&exposition, r#"anb_queue_jobs{state="dead"}"#),
        Some(1.0),
        "queue depth gauges follow stats(): {exposition}"
    );
    assert_eq!(
        sample(&exposition, r#"anb_queue_jobs{state="ready"}"#),
        Some(0.0),
        "{exposition}"
    );
}
