//! Receiving: sorting what a receive got into runnable jobs, hops, dead letters and jobs
//! for other workers; and giving messages back.

use super::*;

impl Inner {
    /// Receives (long-polling) and sorts out what may run: jobs due later hop on, jobs past
    /// their last attempt are dead-lettered, jobs without a handler go back at once.
    pub(super) async fn receive(
        &self,
        names: &[&'static str],
        max: usize,
        visibility: i32,
    ) -> Result<Vec<ClaimedJob>, QueueError> {
        let received = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(i32::try_from(max.clamp(1, MAX_BATCH)).unwrap_or(1))
            .wait_time_seconds(self.wait_seconds)
            .visibility_timeout(visibility)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|error| sqs_error("ReceiveMessage", error))?;
        let messages = received.messages();
        let received_at = Instant::now();
        let mut claimed = Vec::new();
        // Jobs of this library that this worker has no handler for, and messages of
        // another sender (no job name).
        let mut elsewhere = Vec::new();
        let mut foreign = Vec::new();
        let now = now_ms();
        // Once a message is received, it is this worker's: everything but the runnable
        // jobs is handled best effort, and a failure there (logged) must not lose the
        // runnable ones, whose receive already counted. What a failed step left behind
        // reappears when its visibility runs out.
        for message in messages {
            let (Some(id), Some(receipt)) = (message.message_id(), message.receipt_handle()) else {
                continue;
            };
            let job = Envelope::from_message(message);
            let receive_count: u32 = message
                .attributes()
                .and_then(|attributes| {
                    attributes.get(&MessageSystemAttributeName::ApproximateReceiveCount)
                })
                .and_then(|count| count.parse().ok())
                .unwrap_or(1);
            let attempt = job.attempts_before + receive_count;
            let lease = Lease {
                receipt: receipt.to_owned(),
                attempt,
                job,
                received_at,
            };
            if let Some(due) = lease.job.not_before_ms.filter(|due| *due > now) {
                if let Err(error) = self.hop(lease, due, now).await {
                    tracing::warn!(%error, "sending a delayed job on failed; it reappears when its visibility runs out");
                }
                continue;
            }
            if lease.job.name.is_empty() {
                foreign.push(lease.receipt);
                continue;
            }
            if !names.contains(&lease.job.name.as_str()) {
                elsewhere.push(lease);
                continue;
            }
            if attempt > lease.job.max_attempts {
                // Its last attempt's lease ran out (the worker crashed or stalled).
                let dead = self
                    .dead_letter(
                        lease,
                        "lease expired: the worker stopped renewing it (crashed or stalled)",
                    )
                    .await;
                if let Err(error) = dead {
                    tracing::warn!(%error, "dead-lettering a job past its last attempt failed; it reappears when its visibility runs out");
                }
                continue;
            }
            let id = JobId(id.to_owned());
            claimed.push(ClaimedJob {
                id: id.clone(),
                name: lease.job.name.clone(),
                payload: lease.job.payload.clone(),
                attempt,
                max_attempts: lease.job.max_attempts,
                enqueued_at_ms: lease.job.enqueued_at_ms,
                token: lease.receipt.clone(),
                cancel_requested: false,
            });
            self.leases().insert(id, lease);
        }
        self.saw_only_strangers.store(
            claimed.is_empty() && !(elsewhere.is_empty() && foreign.is_empty()),
            Ordering::Relaxed,
        );
        self.received_nothing
            .store(messages.is_empty(), Ordering::Relaxed);
        // A job for other workers goes back as a copy that keeps its attempt count: its
        // receive here was no attempt, and must not bring it nearer the redrive limit.
        if let Err(error) = self.resend(elsewhere, Duration::ZERO).await {
            tracing::warn!(%error, "giving back jobs for other workers failed; they reappear when their visibility runs out");
        }
        // A message that is not a job of this library goes back as it is; the redrive
        // policy moves it to the dead letters after its receives.
        if !foreign.is_empty()
            && let Err(error) = self.change_visibility(&foreign, 0).await
        {
            tracing::warn!(%error, "giving back foreign messages failed");
        }
        Ok(claimed)
    }

    /// Sends on a job that surfaced before its due time, with the rest of its delay.
    pub(super) async fn hop(&self, lease: Lease, due: i64, now: i64) -> Result<(), QueueError> {
        let remaining = Duration::from_millis(u64::try_from(due - now).unwrap_or(0));
        let mut next = lease.job.clone();
        next.attempts_before = lease.attempt.saturating_sub(1);
        let mut outgoing = next.outgoing(remaining, self.native_delay_limit)?;
        // Keep the original due time rather than drifting by the hop's latency.
        outgoing
            .attributes
            .retain(|(name, _)| *name != ATTR_NOT_BEFORE);
        if remaining > self.native_delay_limit {
            outgoing
                .attributes
                .push((ATTR_NOT_BEFORE, number_attribute(due)?));
        }
        self.send(&self.queue_url, vec![outgoing]).await?;
        self.delete(&self.queue_url, &[lease.receipt]).await
    }

    /// How much longer SQS lets this receipt stay invisible (see `visibility_limit`).
    pub(super) fn visibility_left(&self, lease: &Lease) -> Duration {
        self.visibility_limit
            .saturating_sub(lease.received_at.elapsed())
    }

    /// Copies the job to the dead-letter queue with its last error, then deletes it.
    pub(super) async fn dead_letter(&self, lease: Lease, error: &str) -> Result<(), QueueError> {
        let mut outgoing = lease
            .job
            .outgoing(Duration::ZERO, self.native_delay_limit)?;
        outgoing
            .attributes
            .retain(|(name, _)| *name != ATTR_ATTEMPTS_BEFORE && *name != ATTR_NOT_BEFORE);
        outgoing
            .attributes
            .push((ATTR_ATTEMPTS, number_attribute(i64::from(lease.attempt))?));
        outgoing
            .attributes
            .push((ATTR_DEAD_AT, number_attribute(now_ms())?));
        // The error is kept whole when it fits; a huge one must not make the job unsendable.
        let room = self
            .max_message_size
            .saturating_sub(outgoing.size() + ATTR_ERROR.len() + "String".len())
            .min(MAX_ERROR_BYTES);
        let mut kept = error.len().min(room);
        while !error.is_char_boundary(kept) {
            kept -= 1;
        }
        outgoing
            .attributes
            .push((ATTR_ERROR, string_attribute(&error[..kept])?));
        self.send(&self.dead_letter_url, vec![outgoing]).await?;
        self.delete(&self.queue_url, &[lease.receipt]).await
    }

    /// Waits (for at most a long poll) until abandoned long polls have ended.
    pub(super) async fn wait_for_abandoned_polls(&self) {
        let most = Duration::from_secs(u64::try_from(self.wait_seconds).unwrap_or(0) + 5);
        let _ = tokio::time::timeout(most, async {
            loop {
                let settled = self.polls_settled.notified();
                if self.abandoned_polls.load(Ordering::SeqCst) == 0 {
                    return;
                }
                settled.await;
            }
        })
        .await;
    }

    /// Gives messages back after `delay` (at once for a release), as fresh copies that keep
    /// their attempt count (a release or a snooze is not an attempt: the receive count, which
    /// cannot be lowered, restarts with the copy, and a job released again and again never
    /// reaches the redrive limit).
    pub(super) async fn resend(
        &self,
        leases: Vec<Lease>,
        delay: Duration,
    ) -> Result<(), QueueError> {
        if leases.is_empty() {
            return Ok(());
        }
        let copies = leases
            .iter()
            .map(|lease| {
                let mut copy = lease.job.clone();
                copy.attempts_before = lease.attempt.saturating_sub(1);
                copy.outgoing(delay, self.native_delay_limit)
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.send(&self.queue_url, copies).await?;
        let receipts: Vec<String> = leases.into_iter().map(|lease| lease.receipt).collect();
        self.delete(&self.queue_url, &receipts).await
    }
}
