//! The periodic clean-up of uploads that never became videos
//! ([`anb_core::uploads::sweep`]), in the background of the server.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::state::AppState;

/// A clean-up loop running beside the server.
#[derive(Debug)]
pub(crate) struct RunningSweep {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Starts the loop unless `ANB_UPLOAD_SWEEP_INTERVAL` turned it off. The
/// first pass runs one interval after start, so a fleet restarting together
/// does not sweep at once.
pub(crate) fn spawn(state: &AppState) -> Option<RunningSweep> {
    let interval = state.api.uploads.sweep_interval?;
    let grace = state.api.uploads.sweep_grace;
    let (stop, mut stopped) = oneshot::channel::<()>();
    let state = state.clone();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stopped => return,
                () = tokio::time::sleep(interval) => {}
            }
            run_once(&state, grace).await;
        }
    });
    Some(RunningSweep { stop, task })
}

/// One pass, logged; a failure waits for the next pass.
async fn run_once(state: &AppState, grace: Duration) {
    match anb_core::uploads::sweep(&state.db, &state.storage, grace).await {
        Ok(report) => {
            tracing::info!(
                stale_uploads = report.stale_uploads,
                orphaned_folders = report.orphaned_folders,
                expired_answers = report.expired_answers,
                "upload clean-up pass"
            );
            for (what, count) in [
                ("stale_upload", report.stale_uploads),
                ("orphaned_folder", report.orphaned_folders),
                ("expired_answer", report.expired_answers),
            ] {
                metrics::counter!("anb_upload_cleanup_removed_total", "what" => what)
                    .increment(count);
            }
        }
        Err(error) => {
            metrics::counter!("anb_upload_cleanup_failures_total").increment(1);
            tracing::warn!(%error, "upload clean-up pass failed; retried next interval");
        }
    }
}

impl RunningSweep {
    /// Stops the loop; a pass under way is cut at its next await point (it
    /// is safe to interrupt: every step is idempotent).
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        self.task.abort();
        let _ = self.task.await;
    }
}
