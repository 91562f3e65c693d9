//! The SQS requests in batches (send, delete, change visibility), their errors, and the
//! request counter.

use super::*;

/// Counts the HTTP requests the SDK sends (retries included), in all and by operation.
#[derive(Debug, Clone, Default)]
pub(super) struct RequestCounter {
    pub(super) total: Arc<AtomicU64>,
    pub(super) by_operation: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl Intercept for RequestCounter {
    fn name(&self) -> &'static str {
        "anb_queue_sqs_request_counter"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = cfg
            .load::<Metadata>()
            .map_or("unknown", Metadata::name)
            .to_owned();
        self.total.fetch_add(1, Ordering::Relaxed);
        *self
            .by_operation
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(operation.clone())
            .or_default() += 1;
        metrics::counter!("anb_queue_sqs_requests_total", "operation" => operation).increment(1);
        Ok(())
    }
}

pub(super) fn sqs_error<E>(operation: &'static str, error: E) -> QueueError
where
    E: std::error::Error + Send + Sync + 'static,
{
    QueueError::Sqs {
        operation,
        message: DisplayErrorContext(error).to_string(),
    }
}

/// Whether SQS refused a visibility change because the receipt handle is no longer current
/// (the message was received again, or is no longer in flight).
pub(super) fn is_stale_receipt(
    error: &aws_sdk_sqs::error::SdkError<
        aws_sdk_sqs::operation::change_message_visibility::ChangeMessageVisibilityError,
    >,
) -> bool {
    error.as_service_error().is_some_and(|service| {
        service.is_receipt_handle_is_invalid() || service.is_message_not_inflight()
    })
}

pub(super) fn build_error(
    operation: &'static str,
    error: aws_sdk_sqs::error::BuildError,
) -> QueueError {
    QueueError::Sqs {
        operation,
        message: error.to_string(),
    }
}

/// What one `SendMessageBatch` came to: per entry, its message id if SQS took it.
pub(super) struct BatchSent {
    pub(super) ids: Vec<Option<String>>,
    /// Why some entries were refused (the first refusal's code and message).
    pub(super) refused: Option<String>,
}

impl Inner {
    /// Sends messages to `queue_url` in batches of up to 10 (and at most the size limit per
    /// batch); returns the message ids in order, or [`QueueError::PartlyEnqueued`] when only
    /// some went out.
    pub(super) async fn send(
        &self,
        queue_url: &str,
        messages: Vec<Outgoing>,
    ) -> Result<Vec<String>, QueueError> {
        for message in &messages {
            self.check_size(message)?;
        }
        if let [message] = messages.as_slice() {
            let mut request = self
                .client
                .send_message()
                .queue_url(queue_url)
                .message_body(&message.body)
                .delay_seconds(message.delay_seconds);
            for (name, value) in &message.attributes {
                request = request.message_attributes(*name, value.clone());
            }
            let sent = request
                .send()
                .await
                .map_err(|error| sqs_error("SendMessage", error))?;
            return Ok(vec![sent.message_id().unwrap_or_default().to_owned()]);
        }
        let mut batches: Vec<Vec<Outgoing>> = Vec::new();
        let mut batch_size = 0;
        for message in messages {
            let size = message.size();
            match batches.last_mut() {
                Some(batch)
                    if batch.len() < MAX_BATCH && batch_size + size <= self.max_message_size =>
                {
                    batch_size += size;
                    batch.push(message);
                }
                _ => {
                    batch_size = size;
                    batches.push(vec![message]);
                }
            }
        }
        let batch_sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        // A few batches in flight at once; `buffered` keeps their order for the ids. Every
        // batch runs to its end, so the caller learns which jobs went out when some did not.
        let sent: Vec<Result<BatchSent, QueueError>> = futures::stream::iter(batches)
            .map(|batch| self.send_batch(queue_url, batch))
            .buffered(4)
            .collect()
            .await;
        let mut ids: Vec<Option<String>> = Vec::new();
        let mut refusal: Option<String> = None;
        let mut first_error: Option<QueueError> = None;
        for (batch, result) in batch_sizes.iter().zip(sent) {
            match result {
                Ok(batch) => {
                    ids.extend(batch.ids);
                    if refusal.is_none() {
                        refusal = batch.refused;
                    }
                }
                Err(error) => {
                    ids.extend(std::iter::repeat_n(None, *batch));
                    if refusal.is_none() {
                        refusal = Some(error.to_string());
                    }
                    first_error.get_or_insert(error);
                }
            }
        }
        if ids.iter().all(Option::is_some) {
            return Ok(ids.into_iter().flatten().collect());
        }
        match first_error {
            // Nothing went out: the plain error, as for a single message.
            Some(error) if ids.iter().all(Option::is_none) => Err(error),
            _ => Err(QueueError::PartlyEnqueued {
                ids: ids.into_iter().map(|id| id.map(JobId)).collect(),
                reason: refusal.unwrap_or_default(),
            }),
        }
    }

    /// Sends one batch. Entries SQS fails on its side (not the sender's fault: throttling,
    /// an internal error) are sent again, twice at most; what is still refused after that,
    /// or refused for what it is (too large, malformed), is reported as `None`.
    pub(super) async fn send_batch(
        &self,
        queue_url: &str,
        batch: Vec<Outgoing>,
    ) -> Result<BatchSent, QueueError> {
        let mut ids: Vec<Option<String>> = vec![None; batch.len()];
        let mut pending: Vec<usize> = (0..batch.len()).collect();
        let mut refused = None;
        for round in 0..3 {
            let entries = pending
                .iter()
                .map(|&index| {
                    let message = &batch[index];
                    let mut entry = SendMessageBatchRequestEntry::builder()
                        .id(index.to_string())
                        .message_body(&message.body)
                        .delay_seconds(message.delay_seconds);
                    for (name, value) in &message.attributes {
                        entry = entry.message_attributes(*name, value.clone());
                    }
                    entry
                        .build()
                        .map_err(|error| build_error("SendMessageBatch", error))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let request = self
                .client
                .send_message_batch()
                .queue_url(queue_url)
                .set_entries(Some(entries))
                .send()
                .await;
            let sent = match request {
                Ok(sent) => sent,
                // A request that failed whole before anything went out is the caller's error;
                // a retry round's failure leaves the earlier rounds' ids standing.
                Err(error) if round == 0 => return Err(sqs_error("SendMessageBatch", error)),
                Err(error) => {
                    refused = Some(sqs_error("SendMessageBatch", error).to_string());
                    break;
                }
            };
            for entry in sent.successful() {
                if let Some(slot) = entry
                    .id()
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| ids.get_mut(i))
                {
                    *slot = Some(entry.message_id().to_owned());
                }
            }
            let mut again = Vec::new();
            for failed in sent.failed() {
                refused.get_or_insert_with(|| {
                    format!(
                        "{}: {}",
                        failed.code(),
                        failed.message().unwrap_or_default()
                    )
                });
                if !failed.sender_fault()
                    && let Ok(index) = failed.id().parse::<usize>()
                {
                    again.push(index);
                }
            }
            pending = again;
            if pending.is_empty() {
                break;
            }
        }
        if ids.iter().all(Option::is_some) {
            refused = None;
        }
        Ok(BatchSent { ids, refused })
    }

    pub(super) async fn delete(
        &self,
        queue_url: &str,
        receipts: &[String],
    ) -> Result<(), QueueError> {
        for chunk in receipts.chunks(MAX_BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(index, receipt)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(index.to_string())
                        .receipt_handle(receipt)
                        .build()
                        .map_err(|error| build_error("DeleteMessageBatch", error))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let deleted = self
                .client
                .delete_message_batch()
                .queue_url(queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|error| sqs_error("DeleteMessageBatch", error))?;
            for failed in deleted.failed() {
                // An invalid receipt means the lease was lost and another worker has it.
                tracing::warn!(
                    code = failed.code(),
                    message = failed.message(),
                    "deleting a message failed"
                );
            }
        }
        Ok(())
    }

    /// Changes the visibility of messages; returns the indexes (into `receipts`) of those
    /// SQS refused (an outdated receipt handle: the message is no longer ours).
    pub(super) async fn change_visibility(
        &self,
        receipts: &[String],
        timeout: i32,
    ) -> Result<Vec<usize>, QueueError> {
        let mut refused = Vec::new();
        if let [receipt] = receipts {
            let changed = self
                .client
                .change_message_visibility()
                .queue_url(&self.queue_url)
                .receipt_handle(receipt)
                .visibility_timeout(timeout)
                .send()
                .await;
            match changed {
                Ok(_) => {}
                Err(error) if is_stale_receipt(&error) => refused.push(0),
                Err(error) => return Err(sqs_error("ChangeMessageVisibility", error)),
            }
            return Ok(refused);
        }
        for (chunk_index, chunk) in receipts.chunks(MAX_BATCH).enumerate() {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(index, receipt)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(index.to_string())
                        .receipt_handle(receipt)
                        .visibility_timeout(timeout)
                        .build()
                        .map_err(|error| build_error("ChangeMessageVisibilityBatch", error))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let changed = self
                .client
                .change_message_visibility_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|error| sqs_error("ChangeMessageVisibilityBatch", error))?;
            for failed in changed.failed() {
                tracing::warn!(
                    code = failed.code(),
                    message = failed.message(),
                    "changing a message's visibility failed"
                );
                if let Ok(index) = failed.id().parse::<usize>() {
                    refused.push(chunk_index * MAX_BATCH + index);
                }
            }
        }
        Ok(refused)
    }
}
