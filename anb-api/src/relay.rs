//! The outbox relay: publishes the jobs uploads wrote into the outbox to the
//! queue, in the background of the server.

use anb_queue::{Queue, QueueError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::state::{AppState, JobDelivery};

/// The longest wait between the relay's tries while the broker is away.
const RELAY_MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(2);

/// A relay running beside the server.
#[derive(Debug)]
pub(crate) struct RunningRelay {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), QueueError>>,
}

/// Starts the relay when uploads go through the outbox; `None` when the queue
/// shares the database and there is nothing to relay.
pub(crate) fn spawn(state: &AppState) -> Option<RunningRelay> {
    let JobDelivery::Outbox(outbox) = &state.delivery else {
        return None;
    };
    let (stop, stopped) = oneshot::channel::<()>();
    // A connection of its own, opened from the URL: the relay opens a fresh
    // one whenever publishing fails, so it is back as soon as the broker is.
    let url = state.settings.queue_url.clone();
    // Retries every 2 s at most while the broker is away (a connect attempt, cheap),
    // so the backlog goes out within about 2 s of its return even when no upload
    // wakes the relay (the library's default waits up to 10 s).
    let relay = outbox
        .relay(move || {
            let url = url.clone();
            async move { Queue::connect(&url).await }
        })
        .max_backoff(RELAY_MAX_BACKOFF);
    let task = tokio::spawn(relay.run_until(async {
        let _ = stopped.await;
    }));
    tracing::info!(queue = state.queue.kind().as_str(), "outbox relay started");
    Some(RunningRelay { stop, task })
}

impl RunningRelay {
    /// Stops the relay (a publish under way is finished first) and waits for it.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(Ok(())) => tracing::info!("outbox relay stopped"),
            Ok(Err(error)) => tracing::error!(%error, "outbox relay failed"),
            Err(error) => tracing::error!(%error, "outbox relay panicked"),
        }
    }
}
