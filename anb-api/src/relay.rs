//! The outbox relay: publishes the jobs uploads wrote into the outbox to the
//! queue, in the background of the server.

use anb_queue::{Queue, QueueError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::state::{AppState, JobDelivery};

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
    let relay = outbox.relay(move || {
        let url = url.clone();
        async move { Queue::connect(&url).await }
    });
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
