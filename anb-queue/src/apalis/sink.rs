//! Enqueueing through apalis: the `Sink` behind apalis's `TaskSink`.

use super::*;

/// Enqueues apalis tasks as jobs of type `J` (what makes [`ApalisBackend`] a
/// [`TaskSink`](apalis_core::backend::TaskSink)): `push_bulk` and streams are written in
/// batches of up to 1,000, each all or none.
///
/// Kept from the task: its arguments, `max_attempts` (else `J::MAX_ATTEMPTS`) and `run_at`
/// (a delay, in apalis's whole seconds). Ignored: a task id (the queue assigns ids), the
/// priority and metadata. Refused: an idempotency key, which the queue cannot enforce.
impl<J: Job> Sink<Task<J>> for ApalisBackend<J> {
    type Error = QueueError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.sink_buffer.len() >= SINK_BATCH || self.sink_flush.is_some() {
            return Sink::poll_flush(self, cx);
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, task: Task<J>) -> Result<(), Self::Error> {
        let job = new_job(&task)?;
        self.get_mut().sink_buffer.push(job);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        loop {
            if let Some(flush) = &mut this.sink_flush {
                let outcome = std::task::ready!(flush.poll_unpin(cx));
                this.sink_flush = None;
                outcome?;
            }
            if this.sink_buffer.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let take = this.sink_buffer.len().min(SINK_BATCH);
            let jobs: Vec<NewJob> = this.sink_buffer.drain(..take).collect();
            let backend = this.queue.backend().clone();
            this.sink_flush = Some(async move { backend.enqueue(&jobs).await.map(drop) }.boxed());
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Sink::poll_flush(self, cx)
    }
}

/// The most jobs the sink writes in one enqueue.
pub(super) const SINK_BATCH: usize = 1000;

pub(super) fn new_job<J: Job>(task: &Task<J>) -> Result<NewJob, QueueError> {
    if task.idempotency_key().is_some() {
        return Err(QueueError::Unsupported {
            what: "apalis idempotency keys",
        });
    }
    let payload = serde_json::to_string(&task.args).map_err(|source| QueueError::Serialize {
        job: J::NAME,
        source,
    })?;
    let max_attempts = task
        .max_attempts()
        .map(|attempts| u32::try_from(attempts).unwrap_or(u32::MAX))
        .unwrap_or(J::MAX_ATTEMPTS)
        .max(1);
    let delay = task
        .run_at()
        .map(|run_at_s| {
            let due_ms = i64::try_from(run_at_s)
                .unwrap_or(i64::MAX / 1000)
                .saturating_mul(1000);
            Duration::from_millis(due_ms.saturating_sub(now_ms()).max(0) as u64)
        })
        .unwrap_or_default();
    Ok(NewJob {
        name: J::NAME,
        payload,
        max_attempts,
        delay,
        priority: crate::Priority::HIGHEST,
        unique: None,
    })
}
