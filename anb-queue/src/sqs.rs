//! The Amazon SQS backend.
//!
//! A job is one SQS message: the JSON payload is the body, the job's name and bookkeeping
//! travel in message attributes. The queue's own mechanisms carry the contract:
//! - a claim is a long-polling `ReceiveMessage` asking only for as many messages as the
//!   worker has free slots (at most 10), with the lease as visibility timeout; the attempt
//!   is the message's `ApproximateReceiveCount` (plus the attempts of earlier copies, see
//!   below);
//! - completions are batched `DeleteMessageBatch` calls, heartbeats batched
//!   `ChangeMessageVisibilityBatch` calls; a retry sets the visibility timeout to the backoff;
//! - a lease that runs out (a crashed worker) makes SQS deliver the message again by itself;
//!   a message received after its last attempt is dead-lettered at once;
//! - the dead-letter queue is the one named by the queue's redrive policy: the redrive policy
//!   catches messages received too often, and a job that fails its last attempt is sent
//!   there explicitly (with its last error) and deleted;
//! - delays up to 15 minutes are SQS's own `DelaySeconds` (whole seconds, rounded up);
//!   longer ones wait in hops of 15 minutes: the message carries its due time and is sent
//!   again with the remaining delay each time it surfaces early;
//! - statistics are the queue attributes `ApproximateNumberOfMessages*`.
//!
//! SQS cannot modify a message: where the contract needs a message changed (a released job
//! gets its attempt back, a long delay hops), a copy is sent and the original deleted.
//!
//! A worker receives every message of the queue whatever its job name (SQS cannot filter
//! receives), so all workers of one SQS queue should handle every job name sent to it; a
//! job without a handler is made visible again at once for another worker.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use aws_sdk_sqs::{
    Client,
    config::{
        ConfigBag, Intercept, RuntimeComponents, interceptors::BeforeTransmitInterceptorContextRef,
    },
    error::{BoxError, DisplayErrorContext},
    types::{
        ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
        MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
        SendMessageBatchRequestEntry,
    },
};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use futures::StreamExt;
use tokio::sync::{Notify, oneshot, watch};

use crate::{
    backend::{
        Backend, BackendKind, ClaimRequest, ClaimedJob, DeadJob, JobId, Lease as ClaimLease,
        NewJob, WorkSignal, now_ms,
    },
    error::QueueError,
    stats::QueueStats,
};

const ATTR_NAME: &str = "anb-name";
const ATTR_MAX_ATTEMPTS: &str = "anb-max-attempts";
const ATTR_ENQUEUED_AT: &str = "anb-enqueued-at";
/// Attempts made on earlier copies of this job (a released or hopping job is re-sent, and
/// the new message's receive count starts again).
const ATTR_ATTEMPTS_BEFORE: &str = "anb-attempts-before";
/// When a job delayed beyond SQS's limit is due, in ms since the Unix epoch.
const ATTR_NOT_BEFORE: &str = "anb-not-before";
const ATTR_ERROR: &str = "anb-error";
const ATTR_ATTEMPTS: &str = "anb-attempts";
const ATTR_DEAD_AT: &str = "anb-dead-at";

/// How long a worker waits before receiving again after a receive that could not use what
/// it got (jobs for other workers) or, short-polling, got nothing.
const IDLE_PAUSE: Duration = Duration::from_secs(1);

/// SQS's limits.
const MAX_BATCH: usize = 10;
const MAX_NATIVE_DELAY: Duration = Duration::from_secs(900);
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);
const MAX_WAIT_SECONDS: i32 = 20;
/// Room kept for the error when a job is copied to the dead-letter queue.
const MAX_ERROR_BYTES: usize = 4096;

/// Where the queue is, parsed from `ANB_QUEUE_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Location {
    /// A queue name to resolve with `GetQueueUrl`, or a full queue URL.
    queue: QueueRef,
    /// The endpoint a full non-AWS URL points at (an SQS-compatible server).
    endpoint: Option<String>,
    /// The region in an AWS queue URL's host.
    region: Option<String>,
    /// Long-poll wait (`?wait_seconds=`, default 20).
    wait_seconds: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum QueueRef {
    Name(String),
    Url(String),
}

impl Location {
    fn parse(url: &str) -> Result<Self, QueueError> {
        let invalid = |reason: &str| QueueError::InvalidUrl {
            url: crate::queue::redact(url),
            reason: reason.to_owned(),
        };
        let mut parsed = url::Url::parse(url).map_err(|error| invalid(&error.to_string()))?;
        let mut wait_seconds = MAX_WAIT_SECONDS;
        for (key, value) in parsed.query_pairs() {
            match key.as_ref() {
                "wait_seconds" => {
                    wait_seconds = value
                        .parse::<i32>()
                        .ok()
                        .filter(|seconds| (0..=MAX_WAIT_SECONDS).contains(seconds))
                        .ok_or_else(|| invalid("wait_seconds must be 0 to 20"))?;
                }
                other => return Err(invalid(&format!("unknown parameter {other:?}"))),
            }
        }
        parsed.set_query(None);
        if parsed.scheme() == "sqs" {
            let name = parsed.host_str().unwrap_or_default();
            if name.is_empty() || parsed.path().len() > 1 {
                return Err(invalid("expected sqs://queue-name"));
            }
            return Ok(Self {
                queue: QueueRef::Name(name.to_owned()),
                endpoint: None,
                region: None,
                wait_seconds,
            });
        }
        let host = parsed.host_str().unwrap_or_default().to_owned();
        let segments: Vec<&str> = parsed
            .path_segments()
            .map(|segments| segments.filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        if segments.len() != 2 {
            return Err(invalid(
                "expected a queue URL ending in /<account>/<queue-name>",
            ));
        }
        let (endpoint, region) = match host.strip_suffix(".amazonaws.com") {
            // sqs.<region>.amazonaws.com, or the legacy <region>.queue.amazonaws.com
            Some(aws) => {
                let region = aws
                    .strip_prefix("sqs.")
                    .or_else(|| aws.strip_suffix(".queue"))
                    .map(str::to_owned);
                (None, region)
            }
            None => {
                let mut origin = parsed.clone();
                origin.set_path("");
                (Some(origin.as_str().trim_end_matches('/').to_owned()), None)
            }
        };
        Ok(Self {
            queue: QueueRef::Url(parsed.to_string()),
            endpoint,
            region,
            wait_seconds,
        })
    }
}

/// Opens `sqs://queue-name` or a full queue URL with the AWS SDK's standard configuration
/// (`AWS_REGION`, `AWS_ENDPOINT_URL`, credentials chain). A full URL of an SQS-compatible
/// server (not `*.amazonaws.com`) is also its endpoint.
pub(crate) async fn connect(url: &str) -> Result<SqsBackend, QueueError> {
    let location = Location::parse(url)?;
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = &location.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    let shared = loader.load().await;
    let mut config = aws_sdk_sqs::config::Builder::from(&shared);
    if let Some(endpoint) = &location.endpoint {
        config = config.endpoint_url(endpoint);
        if shared.region().is_none() {
            // A local SQS-compatible server accepts any region; AWS itself needs the real one.
            config = config.region(aws_config::Region::from_static("us-east-1"));
        }
    } else if shared.region().is_none() {
        return Err(QueueError::InvalidUrl {
            url: crate::queue::redact(url),
            reason: "no AWS region configured (set AWS_REGION)".to_owned(),
        });
    }
    SqsBackend::new(
        Client::from_conf(config.build()),
        location.queue,
        location.wait_seconds,
    )
    .await
}

/// Counts the HTTP requests the SDK sends (retries included), in all and by operation.
#[derive(Debug, Clone, Default)]
struct RequestCounter {
    total: Arc<AtomicU64>,
    by_operation: Arc<Mutex<BTreeMap<String, u64>>>,
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

fn sqs_error<E>(operation: &'static str, error: E) -> QueueError
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
fn is_stale_receipt(
    error: &aws_sdk_sqs::error::SdkError<
        aws_sdk_sqs::operation::change_message_visibility::ChangeMessageVisibilityError,
    >,
) -> bool {
    error.as_service_error().is_some_and(|service| {
        service.is_receipt_handle_is_invalid() || service.is_message_not_inflight()
    })
}

fn build_error(operation: &'static str, error: aws_sdk_sqs::error::BuildError) -> QueueError {
    QueueError::Sqs {
        operation,
        message: error.to_string(),
    }
}

fn string_attribute(value: &str) -> Result<MessageAttributeValue, QueueError> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .map_err(|error| build_error("build a message attribute", error))
}

fn number_attribute(value: i64) -> Result<MessageAttributeValue, QueueError> {
    MessageAttributeValue::builder()
        .data_type("Number")
        .string_value(value.to_string())
        .build()
        .map_err(|error| build_error("build a message attribute", error))
}

/// The visibility timeout for a lease: whole seconds, rounded up, plus two so a heartbeat
/// that lands late on a busy endpoint still finds the message hidden (a crashed worker's
/// job is redelivered that much later).
fn visibility_for(lease: Duration) -> i32 {
    ceil_seconds(lease.min(MAX_VISIBILITY - Duration::from_secs(2))) + 2
}

/// Whole seconds, rounded up (SQS's unit for delays and visibility).
fn ceil_seconds(duration: Duration) -> i32 {
    let seconds = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    i32::try_from(seconds).unwrap_or(i32::MAX)
}

/// A job as carried by an SQS message.
#[derive(Debug, Clone)]
struct Envelope {
    name: String,
    payload: String,
    max_attempts: u32,
    enqueued_at_ms: i64,
    attempts_before: u32,
    not_before_ms: Option<i64>,
}

impl Envelope {
    fn from_message(message: &Message) -> Self {
        let attributes = message.message_attributes();
        let text = |key: &str| {
            attributes
                .and_then(|attributes| attributes.get(key))
                .and_then(|value| value.string_value())
        };
        let number = |key: &str| text(key).and_then(|value| value.parse::<i64>().ok());
        let sent_at = message
            .attributes()
            .and_then(|attributes| attributes.get(&MessageSystemAttributeName::SentTimestamp))
            .and_then(|value| value.parse().ok());
        Self {
            // A message without our attributes was not sent by this library: it gets an
            // empty name, which no handler has.
            name: text(ATTR_NAME).unwrap_or_default().to_owned(),
            payload: message.body().unwrap_or_default().to_owned(),
            max_attempts: number(ATTR_MAX_ATTEMPTS)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(1),
            enqueued_at_ms: number(ATTR_ENQUEUED_AT).or(sent_at).unwrap_or_else(now_ms),
            attempts_before: number(ATTR_ATTEMPTS_BEFORE)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
            not_before_ms: number(ATTR_NOT_BEFORE),
        }
    }

    /// The message that carries this job, sent with `delay`; delays beyond `native_limit`
    /// (SQS's 15 minutes) wait that long and carry their due time to hop on.
    fn outgoing(&self, delay: Duration, native_limit: Duration) -> Result<Outgoing, QueueError> {
        let mut attributes = vec![
            (ATTR_NAME, string_attribute(&self.name)?),
            (
                ATTR_MAX_ATTEMPTS,
                number_attribute(i64::from(self.max_attempts))?,
            ),
            (ATTR_ENQUEUED_AT, number_attribute(self.enqueued_at_ms)?),
        ];
        if self.attempts_before > 0 {
            attributes.push((
                ATTR_ATTEMPTS_BEFORE,
                number_attribute(i64::from(self.attempts_before))?,
            ));
        }
        let native_delay = if delay > native_limit {
            let due = now_ms().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
            attributes.push((ATTR_NOT_BEFORE, number_attribute(due)?));
            native_limit
        } else {
            delay
        };
        Ok(Outgoing {
            name: self.name.clone(),
            body: self.payload.clone(),
            attributes,
            delay_seconds: ceil_seconds(native_delay),
        })
    }
}

/// A message about to be sent.
#[derive(Debug, Clone)]
struct Outgoing {
    name: String,
    body: String,
    attributes: Vec<(&'static str, MessageAttributeValue)>,
    delay_seconds: i32,
}

impl Outgoing {
    /// The size SQS counts against `MaximumMessageSize`: body plus every attribute's name,
    /// type and value.
    fn size(&self) -> usize {
        self.body.len()
            + self
                .attributes
                .iter()
                .map(|(name, value)| {
                    name.len() + value.data_type().len() + value.string_value().map_or(0, str::len)
                })
                .sum::<usize>()
    }
}

/// A message this process holds a lease on.
#[derive(Debug, Clone)]
struct Lease {
    receipt: String,
    attempt: u32,
    job: Envelope,
    /// When this receipt was received: SQS caps a message's visibility at 12 hours from
    /// then, however often it is extended.
    received_at: Instant,
}

/// What one `SendMessageBatch` came to: per entry, its message id if SQS took it.
struct BatchSent {
    ids: Vec<Option<String>>,
    /// Why some entries were refused (the first refusal's code and message).
    refused: Option<String>,
}

/// The SQS backend.
#[derive(Clone)]
pub(crate) struct SqsBackend {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    queue_url: String,
    dead_letter_url: String,
    max_message_size: usize,
    wait_seconds: i32,
    /// SQS's longest `DelaySeconds`; a parameter so tests can watch jobs hop.
    native_delay_limit: Duration,
    /// SQS's cap on a receipt's visibility, counted from its receive (12 hours); a
    /// parameter so tests can reach it.
    visibility_limit: Duration,
    requests: RequestCounter,
    leases: Mutex<HashMap<JobId, Lease>>,
    /// Set when the last claim received only messages it could not take (jobs without a
    /// handler), so the worker pauses instead of receiving them again at once.
    saw_only_strangers: AtomicBool,
    /// Set when the last claim received nothing at all: with short polling
    /// (`wait_seconds=0`) the worker then pauses, instead of sending billed empty receives
    /// back to back.
    received_nothing: AtomicBool,
    /// Long polls still running for a claim the worker gave up on (at shutdown), and a
    /// signal when one ends: releases wait for them, or those polls would take the
    /// released copies.
    abandoned_polls: AtomicUsize,
    polls_settled: Notify,
    /// Kept so workers' wake-up signal stays open; SQS's long poll is the wake-up.
    wake: watch::Sender<u64>,
}

impl fmt::Debug for SqsBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsBackend")
            .field("queue_url", &self.inner.queue_url)
            .field("dead_letter_url", &self.inner.dead_letter_url)
            .finish_non_exhaustive()
    }
}

impl SqsBackend {
    /// Uses `client` (its configuration plus a request counter) for the queue named or
    /// located by `queue`; reads the queue's size limit and dead-letter queue.
    async fn new(client: Client, queue: QueueRef, wait_seconds: i32) -> Result<Self, QueueError> {
        let requests = RequestCounter::default();
        let client = Client::from_conf(
            client
                .config()
                .to_builder()
                .interceptor(requests.clone())
                .build(),
        );
        let queue_url = match queue {
            QueueRef::Url(url) => url,
            QueueRef::Name(name) => resolve_queue_url(&client, &name, None).await?,
        };
        let attributes = client
            .get_queue_attributes()
            .queue_url(&queue_url)
            .attribute_names(QueueAttributeName::MaximumMessageSize)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .map_err(|error| sqs_error("GetQueueAttributes", error))?;
        let attributes = attributes.attributes().cloned().unwrap_or_default();
        let max_message_size = attributes
            .get(&QueueAttributeName::MaximumMessageSize)
            .and_then(|size| size.parse().ok())
            .unwrap_or(262_144);
        let redrive = attributes
            .get(&QueueAttributeName::RedrivePolicy)
            .ok_or_else(|| QueueError::NoDeadLetterQueue {
                queue_url: queue_url.clone(),
            })?;
        let (dead_letter_name, account) =
            dead_letter_target(redrive).ok_or_else(|| QueueError::Sqs {
                operation: "read the redrive policy",
                message: format!("no dead-letter target ARN in {redrive}"),
            })?;
        let dead_letter_url = resolve_queue_url(&client, &dead_letter_name, Some(&account)).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                queue_url,
                dead_letter_url,
                max_message_size,
                wait_seconds,
                native_delay_limit: MAX_NATIVE_DELAY,
                visibility_limit: MAX_VISIBILITY,
                requests,
                leases: Mutex::new(HashMap::new()),
                saw_only_strangers: AtomicBool::new(false),
                received_nothing: AtomicBool::new(false),
                abandoned_polls: AtomicUsize::new(0),
                polls_settled: Notify::new(),
                wake: watch::channel(0).0,
            }),
        })
    }

    /// Uses an already configured client for the queue at `queue_url`.
    pub(crate) async fn from_client(client: Client, queue_url: &str) -> Result<Self, QueueError> {
        Self::new(
            client,
            QueueRef::Url(queue_url.to_owned()),
            MAX_WAIT_SECONDS,
        )
        .await
    }
}

async fn resolve_queue_url(
    client: &Client,
    name: &str,
    account: Option<&str>,
) -> Result<String, QueueError> {
    client
        .get_queue_url()
        .queue_name(name)
        .set_queue_owner_aws_account_id(account.map(str::to_owned))
        .send()
        .await
        .map_err(|error| sqs_error("GetQueueUrl", error))?
        .queue_url()
        .map(str::to_owned)
        .ok_or_else(|| QueueError::Sqs {
            operation: "GetQueueUrl",
            message: format!("no URL returned for queue {name}"),
        })
}

/// The dead-letter queue's name and account from a redrive policy
/// (`{"deadLetterTargetArn":"arn:aws:sqs:<region>:<account>:<name>","maxReceiveCount":5}`).
fn dead_letter_target(redrive_policy: &str) -> Option<(String, String)> {
    let policy: serde_json::Value = serde_json::from_str(redrive_policy).ok()?;
    let arn = policy.get("deadLetterTargetArn")?.as_str()?;
    let parts: Vec<&str> = arn.split(':').collect();
    match parts.as_slice() {
        ["arn", _, "sqs", _, account, name] => Some(((*name).to_owned(), (*account).to_owned())),
        _ => None,
    }
}

impl Inner {
    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Lease>> {
        self.leases
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the lease of a claim, if this process still holds the job under that claim's
    /// receipt handle: a later receive of the same message (its visibility ran out and it
    /// came back) replaces the receipt, and the older claim's operations become no-ops.
    fn take_lease(&self, claim: &ClaimLease) -> Option<Lease> {
        let mut leases = self.leases();
        match leases.get(&claim.id) {
            Some(lease) if lease.receipt == claim.token => leases.remove(&claim.id),
            _ => None,
        }
    }

    fn check_size(&self, message: &Outgoing) -> Result<(), QueueError> {
        let size = message.size();
        if size > self.max_message_size {
            return Err(QueueError::MessageTooLarge {
                job: message.name.clone(),
                size,
                limit: self.max_message_size,
            });
        }
        Ok(())
    }

    /// Sends messages to `queue_url` in batches of up to 10 (and at most the size limit per
    /// batch); returns the message ids in order.
    async fn send(
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
    async fn send_batch(
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

    async fn delete(&self, queue_url: &str, receipts: &[String]) -> Result<(), QueueError> {
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
    async fn change_visibility(
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

    /// Receives (long-polling) and sorts out what may run: jobs due later hop on, jobs past
    /// their last attempt are dead-lettered, jobs without a handler go back at once.
    async fn receive(
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
        if let Err(error) = self.resend(elsewhere).await {
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
    async fn hop(&self, lease: Lease, due: i64, now: i64) -> Result<(), QueueError> {
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
    fn visibility_left(&self, lease: &Lease) -> Duration {
        self.visibility_limit
            .saturating_sub(lease.received_at.elapsed())
    }

    /// Copies the job to the dead-letter queue with its last error, then deletes it.
    async fn dead_letter(&self, lease: Lease, error: &str) -> Result<(), QueueError> {
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
    async fn wait_for_abandoned_polls(&self) {
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

    /// Gives messages back at once, as fresh copies that keep their attempt count (a
    /// release is not an attempt: the receive count, which cannot be lowered, restarts with
    /// the copy, and a job released again and again never reaches the redrive limit).
    async fn resend(&self, leases: Vec<Lease>) -> Result<(), QueueError> {
        if leases.is_empty() {
            return Ok(());
        }
        let copies = leases
            .iter()
            .map(|lease| {
                let mut copy = lease.job.clone();
                copy.attempts_before = lease.attempt.saturating_sub(1);
                copy.outgoing(Duration::ZERO, self.native_delay_limit)
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.send(&self.queue_url, copies).await?;
        let receipts: Vec<String> = leases.into_iter().map(|lease| lease.receipt).collect();
        self.delete(&self.queue_url, &receipts).await
    }

    async fn queue_counts(&self, queue_url: &str) -> Result<(u64, u64, u64), QueueError> {
        let attributes = self
            .client
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|error| sqs_error("GetQueueAttributes", error))?;
        let count = |name: QueueAttributeName| {
            attributes
                .attributes()
                .and_then(|attributes| attributes.get(&name))
                .and_then(|value| value.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok((
            count(QueueAttributeName::ApproximateNumberOfMessages),
            count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            count(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        ))
    }
}

#[async_trait]
impl Backend for SqsBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Sqs
    }

    async fn enqueue(&self, jobs: &[NewJob]) -> Result<Vec<JobId>, QueueError> {
        let now = now_ms();
        let messages = jobs
            .iter()
            .map(|job| {
                Envelope {
                    name: job.name.to_owned(),
                    payload: job.payload.clone(),
                    max_attempts: job.max_attempts,
                    enqueued_at_ms: now,
                    attempts_before: 0,
                    not_before_ms: None,
                }
                .outgoing(job.delay, self.inner.native_delay_limit)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let ids = self.inner.send(&self.inner.queue_url, messages).await?;
        Ok(ids.into_iter().map(JobId).collect())
    }

    async fn claim(&self, request: ClaimRequest<'_>) -> Result<Vec<ClaimedJob>, QueueError> {
        let visibility = visibility_for(request.lease);
        let names = request.names.to_vec();
        let max = request.max;
        let inner = self.inner.clone();
        // The long poll runs in its own task: if the worker gives up on the claim (it shuts
        // down while waiting), what arrives anyway is released at once instead of staying
        // invisible for a whole lease, and without counting an attempt.
        let (mut result_tx, result_rx) = oneshot::channel();
        tokio::spawn(async move {
            let receive = inner.receive(&names, max, visibility);
            tokio::pin!(receive);
            let mut abandoned = false;
            let result = tokio::select! {
                result = &mut receive => result,
                () = result_tx.closed() => {
                    abandoned = true;
                    inner.abandoned_polls.fetch_add(1, Ordering::SeqCst);
                    receive.await
                }
            };
            if let Err(Ok(unwanted)) = result_tx.send(result) {
                let leases: Vec<Lease> = unwanted
                    .iter()
                    .filter_map(|job| inner.take_lease(&job.lease()))
                    .collect();
                if let Err(error) = inner.resend(leases).await {
                    tracing::warn!(%error, "releasing prefetched messages failed; they reappear when their visibility times out");
                }
            }
            if abandoned {
                inner.abandoned_polls.fetch_sub(1, Ordering::SeqCst);
                inner.polls_settled.notify_waiters();
            }
        });
        result_rx.await.map_err(|_| QueueError::Sqs {
            operation: "ReceiveMessage",
            message: "the receiving task stopped".to_owned(),
        })?
    }

    async fn complete(&self, _owner: &str, leases: &[ClaimLease]) -> Result<(), QueueError> {
        let receipts: Vec<String> = leases
            .iter()
            .filter_map(|claim| self.inner.take_lease(claim))
            .map(|lease| lease.receipt)
            .collect();
        self.inner.delete(&self.inner.queue_url, &receipts).await
    }

    async fn retry(
        &self,
        _owner: &str,
        claim: &ClaimLease,
        delay: Duration,
        _error: &str,
    ) -> Result<(), QueueError> {
        // SQS keeps no error with a message; the dead letter carries the last one.
        let Some(lease) = self.inner.take_lease(claim) else {
            return Ok(());
        };
        // Waiting invisible is cheapest, but only within the receipt's 12 hours; a longer
        // wait goes out as a copy whose own delay (hopping past 15 minutes) carries it.
        if delay < self.inner.visibility_left(&lease) {
            self.inner
                .change_visibility(&[lease.receipt], ceil_seconds(delay))
                .await
                .map(drop)
        } else {
            let mut copy = lease.job.clone();
            copy.attempts_before = lease.attempt;
            self.inner
                .send(
                    &self.inner.queue_url,
                    vec![copy.outgoing(delay, self.inner.native_delay_limit)?],
                )
                .await?;
            self.inner
                .delete(&self.inner.queue_url, &[lease.receipt])
                .await
        }
    }

    async fn dead_letter(
        &self,
        _owner: &str,
        claim: &ClaimLease,
        error: &str,
    ) -> Result<(), QueueError> {
        let Some(lease) = self.inner.take_lease(claim) else {
            return Ok(());
        };
        self.inner.dead_letter(lease, error).await
    }

    async fn release(&self, _owner: &str, leases: &[ClaimLease]) -> Result<(), QueueError> {
        // Wait (for at most a long poll) until abandoned long polls have ended, so they
        // cannot take the copies; the leases are taken only then, so a caller that gives up
        // meanwhile still holds them.
        if leases.is_empty() {
            return Ok(());
        }
        self.inner.wait_for_abandoned_polls().await;
        let leases: Vec<Lease> = leases
            .iter()
            .filter_map(|claim| self.inner.take_lease(claim))
            .collect();
        self.inner.resend(leases).await
    }

    async fn extend(
        &self,
        _owner: &str,
        leases: &[ClaimLease],
        lease: Duration,
    ) -> Result<Vec<ClaimLease>, QueueError> {
        // A claim holds its job while this process keeps its receipt handle (a later receive
        // of the message replaces it), SQS accepts the handle, and the new lease fits in the
        // 12 hours SQS allows a receipt: past them the message reappears whatever is asked,
        // so a lease that cannot fit is reported lost now (the handler's token fires) rather
        // than when a second worker already runs it.
        let wanted = Duration::from_secs(u64::try_from(visibility_for(lease)).unwrap_or(0));
        let (current, mut lost): (Vec<&ClaimLease>, Vec<&ClaimLease>) = {
            let mut held = self.inner.leases();
            let (current, lost): (Vec<&ClaimLease>, Vec<&ClaimLease>) =
                leases.iter().partition(|claim| {
                    held.get(&claim.id).is_some_and(|held| {
                        held.receipt == claim.token && wanted <= self.inner.visibility_left(held)
                    })
                });
            for claim in &lost {
                if held
                    .get(&claim.id)
                    .is_some_and(|held| held.receipt == claim.token)
                {
                    held.remove(&claim.id);
                }
            }
            (current, lost)
        };
        if !current.is_empty() {
            let receipts: Vec<String> = current.iter().map(|claim| claim.token.clone()).collect();
            let refused = self
                .inner
                .change_visibility(&receipts, visibility_for(lease))
                .await?;
            let refused: Vec<&ClaimLease> =
                refused.into_iter().map(|index| current[index]).collect();
            for claim in &refused {
                self.inner.take_lease(claim);
            }
            lost.extend(refused);
        }
        Ok(lost.into_iter().cloned().collect())
    }

    async fn progress(
        &self,
        owner: &str,
        lease: &ClaimLease,
        _percent: u8,
        duration: Duration,
    ) -> Result<(), QueueError> {
        // A message cannot carry progress; the call still renews the lease.
        self.extend(owner, std::slice::from_ref(lease), duration)
            .await
            .map(drop)
    }

    async fn recover_expired(&self) -> Result<u64, QueueError> {
        // SQS redelivers a message by itself once its visibility timeout runs out.
        Ok(0)
    }

    async fn next_due_in(&self, _names: &[&'static str]) -> Result<Option<Duration>, QueueError> {
        // The claim's long poll is the wait: poll again at once, unless the last poll found
        // only jobs for other workers (then pause, rather than receive them again and again),
        // or found nothing without waiting (short polling: pause as a long poll would).
        let inner = &self.inner;
        let short_poll_empty =
            inner.wait_seconds == 0 && inner.received_nothing.load(Ordering::Relaxed);
        if inner.saw_only_strangers.load(Ordering::Relaxed) || short_poll_empty {
            Ok(Some(IDLE_PAUSE))
        } else {
            Ok(Some(Duration::ZERO))
        }
    }

    async fn subscribe(&self) -> Result<WorkSignal, QueueError> {
        Ok(self.inner.wake.subscribe())
    }

    fn idle_poll_interval(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn completion_batching(&self) -> Option<(usize, Duration)> {
        // DeleteMessageBatch takes 10; waiting a moment for a full one halves the deletes
        // of a busy worker whose claims come in halves, while the messages stay leased.
        Some((MAX_BATCH, Duration::from_millis(100)))
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let ((ready, in_flight, delayed), (dead_visible, dead_hidden, dead_delayed)) = tokio::try_join!(
            self.inner.queue_counts(&self.inner.queue_url),
            self.inner.queue_counts(&self.inner.dead_letter_url),
        )?;
        Ok(QueueStats {
            ready,
            in_flight,
            delayed,
            dead: dead_visible + dead_hidden + dead_delayed,
            // SQS offers the age of the oldest message only as a CloudWatch metric
            // (ApproximateAgeOfOldestMessage), not as a queue attribute.
            oldest_ready_age: Duration::ZERO,
        })
    }

    async fn dead_jobs(&self, limit: usize) -> Result<Vec<DeadJob>, QueueError> {
        // Peeks: receiving with a zero visibility timeout leaves the messages in place. SQS
        // returns a sample per call, so a few calls gather up to `limit` distinct jobs.
        let mut seen = HashSet::new();
        let mut found = Vec::new();
        for _ in 0..limit.div_ceil(MAX_BATCH).saturating_add(2) {
            if found.len() >= limit {
                break;
            }
            let received = self
                .inner
                .client
                .receive_message()
                .queue_url(&self.inner.dead_letter_url)
                .max_number_of_messages(
                    i32::try_from((limit - found.len()).min(MAX_BATCH)).unwrap_or(1),
                )
                .visibility_timeout(0)
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
                .message_attribute_names("All")
                .send()
                .await
                .map_err(|error| sqs_error("ReceiveMessage", error))?;
            let mut fresh = 0;
            for message in received.messages() {
                let Some(id) = message.message_id() else {
                    continue;
                };
                if !seen.insert(id.to_owned()) {
                    continue;
                }
                fresh += 1;
                let job = Envelope::from_message(message);
                let attribute = |key: &str| {
                    message
                        .message_attributes()
                        .and_then(|attributes| attributes.get(key))
                        .and_then(|value| value.string_value())
                };
                let dead_at = attribute(ATTR_DEAD_AT)
                    .and_then(|at| at.parse::<i64>().ok())
                    .unwrap_or(job.enqueued_at_ms);
                // Moved by the redrive policy: no error of ours, attempts from the receives.
                let attempts = attribute(ATTR_ATTEMPTS)
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(job.attempts_before);
                found.push((
                    dead_at,
                    DeadJob {
                        id: JobId(id.to_owned()),
                        name: job.name,
                        payload: job.payload,
                        attempts,
                        last_error: attribute(ATTR_ERROR).map(str::to_owned),
                    },
                ));
            }
            if fresh == 0 {
                break;
            }
        }
        found.sort_by_key(|(dead_at, _)| std::cmp::Reverse(*dead_at));
        Ok(found.into_iter().take(limit).map(|(_, job)| job).collect())
    }

    fn requests_sent(&self) -> Option<u64> {
        Some(self.inner.requests.total.load(Ordering::Relaxed))
    }

    fn requests_by_operation(&self) -> Option<BTreeMap<String, u64>> {
        Some(
            self.inner
                .requests
                .by_operation
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_name_url_is_resolved_later() {
        let location = Location::parse("sqs://videos?wait_seconds=5").unwrap();
        assert_eq!(location.queue, QueueRef::Name("videos".into()));
        assert_eq!(
            (location.endpoint, location.region, location.wait_seconds),
            (None, None, 5)
        );
    }

    #[test]
    fn an_aws_queue_url_names_its_region() {
        let location =
            Location::parse("https://sqs.eu-west-1.amazonaws.com/123456789012/videos").unwrap();
        assert_eq!(
            location.queue,
            QueueRef::Url("https://sqs.eu-west-1.amazonaws.com/123456789012/videos".into())
        );
        assert_eq!(location.region.as_deref(), Some("eu-west-1"));
        assert_eq!(location.endpoint, None);
        assert_eq!(location.wait_seconds, 20);
    }

    #[test]
    fn a_local_queue_url_is_its_own_endpoint() {
        let location = Location::parse("http://127.0.0.1:4566/000000000000/videos").unwrap();
        assert_eq!(location.endpoint.as_deref(), Some("http://127.0.0.1:4566"));
    }

    #[test]
    fn malformed_locations_are_refused() {
        for url in [
            "sqs://",
            "sqs://a/b",
            "http://127.0.0.1:4566/videos",
            "sqs://videos?wait_seconds=21",
            "sqs://videos?colour=blue",
        ] {
            assert!(Location::parse(url).is_err(), "{url}");
        }
    }

    #[test]
    fn the_dead_letter_queue_comes_from_the_redrive_policy() {
        let policy = r#"{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:123456789012:videos-dlq","maxReceiveCount":"5"}"#;
        assert_eq!(
            dead_letter_target(policy),
            Some(("videos-dlq".to_owned(), "123456789012".to_owned()))
        );
        assert_eq!(dead_letter_target("{}"), None);
    }

    #[test]
    fn delays_round_up_to_whole_seconds() {
        assert_eq!(ceil_seconds(Duration::ZERO), 0);
        assert_eq!(ceil_seconds(Duration::from_millis(1)), 1);
        assert_eq!(ceil_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(ceil_seconds(Duration::from_secs(3)), 3);
    }

    #[test]
    fn long_delays_wait_natively_for_fifteen_minutes_and_carry_their_due_time() {
        let job = Envelope {
            name: "echo".into(),
            payload: "{}".into(),
            max_attempts: 3,
            enqueued_at_ms: 0,
            attempts_before: 0,
            not_before_ms: None,
        };
        let short = job
            .outgoing(Duration::from_secs(60), MAX_NATIVE_DELAY)
            .unwrap();
        assert_eq!(short.delay_seconds, 60);
        assert!(
            short
                .attributes
                .iter()
                .all(|(name, _)| *name != ATTR_NOT_BEFORE)
        );
        let before = now_ms();
        let long = job
            .outgoing(Duration::from_secs(3600), MAX_NATIVE_DELAY)
            .unwrap();
        assert_eq!(long.delay_seconds, 900);
        let due: i64 = long
            .attributes
            .iter()
            .find(|(name, _)| *name == ATTR_NOT_BEFORE)
            .and_then(|(_, value)| value.string_value()?.parse().ok())
            .unwrap();
        assert!(due >= before + 3_600_000 && due <= now_ms() + 3_600_000);
    }

    /// Against the SQS-compatible server at `ANB_TEST_AWS_ENDPOINT`.
    mod against_a_server {
        use std::time::Instant;

        use super::*;

        fn client() -> Client {
            let endpoint = std::env::var("ANB_TEST_AWS_ENDPOINT")
                .unwrap_or_else(|_| "http://127.0.0.1:4566".to_owned());
            let config = aws_sdk_sqs::Config::builder()
                .behavior_version(aws_config::BehaviorVersion::latest())
                .region(aws_config::Region::new("us-east-1"))
                .endpoint_url(endpoint)
                .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                    "test", "test", None, None, "tests",
                ))
                .build();
            Client::from_conf(config)
        }

        /// A fresh queue (with a dead-letter queue unless `max_receive_count` is `None`).
        async fn fresh_queue(
            attributes: &[(QueueAttributeName, &str)],
            max_receive_count: Option<u32>,
        ) -> String {
            let client = client();
            let name = format!("anb-unit-{}", uuid::Uuid::new_v4().simple());
            let mut create = client.create_queue().queue_name(&name);
            for (key, value) in attributes {
                create = create.attributes(key.clone(), *value);
            }
            if let Some(count) = max_receive_count {
                let dead = client
                    .create_queue()
                    .queue_name(format!("{name}-dlq"))
                    .send()
                    .await
                    .unwrap_or_else(|error| {
                        panic!(
                            "SQS is not reachable (set ANB_TEST_AWS_ENDPOINT): {}",
                            DisplayErrorContext(error)
                        )
                    });
                let arn = client
                    .get_queue_attributes()
                    .queue_url(dead.queue_url().unwrap())
                    .attribute_names(QueueAttributeName::QueueArn)
                    .send()
                    .await
                    .unwrap()
                    .attributes()
                    .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
                    .unwrap();
                create = create.attributes(
                    QueueAttributeName::RedrivePolicy,
                    format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"{count}"}}"#),
                );
            }
            let created = create.send().await.unwrap_or_else(|error| {
                panic!(
                    "SQS is not reachable (set ANB_TEST_AWS_ENDPOINT): {}",
                    DisplayErrorContext(error)
                )
            });
            created.queue_url().unwrap().to_owned()
        }

        async fn backend(queue_url: &str, wait_seconds: i32) -> SqsBackend {
            SqsBackend::new(client(), QueueRef::Url(queue_url.to_owned()), wait_seconds)
                .await
                .unwrap()
        }

        fn job(payload: String, delay: Duration) -> NewJob {
            NewJob {
                name: "echo",
                payload,
                max_attempts: 5,
                delay,
            }
        }

        fn claim_request(max: usize, lease: Duration) -> ClaimRequest<'static> {
            ClaimRequest {
                names: &["echo"],
                max,
                owner: "tests",
                lease,
            }
        }

        #[tokio::test]
        async fn sends_receives_and_deletes_in_batches_of_ten() {
            let queue = backend(&fresh_queue(&[], Some(10)).await, 1).await;
            let before = queue.requests_sent().unwrap();
            let jobs: Vec<NewJob> = (0..25)
                .map(|n| job(format!("{{\"n\":{n}}}"), Duration::ZERO))
                .collect();
            let ids = queue.enqueue(&jobs).await.unwrap();
            assert_eq!(ids.len(), 25);
            let after_send = queue.requests_sent().unwrap();
            assert_eq!(after_send - before, 3, "25 jobs in 3 batched sends");

            let mut claimed = Vec::new();
            let mut receives = 0;
            while claimed.len() < 25 && receives < 20 {
                claimed.extend(
                    queue
                        .claim(claim_request(10, Duration::from_secs(30)))
                        .await
                        .unwrap(),
                );
                receives += 1;
            }
            assert_eq!(claimed.len(), 25);
            let after_receive = queue.requests_sent().unwrap();
            assert_eq!(
                after_receive - after_send,
                receives,
                "one request per receive"
            );
            assert!(receives <= 5, "at most 10 per receive, took {receives}");

            let leases: Vec<ClaimLease> = claimed.iter().map(ClaimedJob::lease).collect();
            queue.complete("tests", &leases).await.unwrap();
            assert_eq!(
                queue.requests_sent().unwrap() - after_receive,
                3,
                "25 deletes in 3 batches"
            );
            let stats = queue.stats().await.unwrap();
            assert_eq!((stats.ready, stats.in_flight), (0, 0));
        }

        #[tokio::test]
        async fn a_job_over_the_queue_size_limit_is_refused_with_its_size() {
            let url = fresh_queue(
                &[(QueueAttributeName::MaximumMessageSize, "1024")],
                Some(10),
            )
            .await;
            let queue = backend(&url, 1).await;
            let before = queue.requests_sent().unwrap();
            let payload = format!("\"{}\"", "x".repeat(2000));
            let error = queue
                .enqueue(&[job(payload, Duration::ZERO)])
                .await
                .unwrap_err();
            match error {
                QueueError::MessageTooLarge { job, size, limit } => {
                    assert_eq!(job, "echo");
                    assert_eq!(limit, 1024);
                    assert!(size > 2000, "{size}");
                }
                other => panic!("expected MessageTooLarge, got {other:?}"),
            }
            assert_eq!(queue.requests_sent().unwrap(), before, "nothing was sent");
        }

        #[tokio::test]
        async fn a_queue_without_a_dead_letter_queue_is_refused() {
            let url = fresh_queue(&[], None).await;
            let error = SqsBackend::new(client(), QueueRef::Url(url), 1)
                .await
                .unwrap_err();
            assert!(
                matches!(error, QueueError::NoDeadLetterQueue { .. }),
                "{error:?}"
            );
        }

        #[tokio::test]
        async fn a_delay_beyond_the_native_limit_hops_until_it_is_due() {
            let url = fresh_queue(&[], Some(10)).await;
            let mut queue = backend(&url, 1).await;
            // A 1 s native limit stands in for SQS's 15 minutes.
            Arc::get_mut(&mut queue.inner).unwrap().native_delay_limit = Duration::from_secs(1);
            let enqueued = Instant::now();
            queue
                .enqueue(&[job("{}".into(), Duration::from_millis(3500))])
                .await
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            let claimed = loop {
                let claimed = queue
                    .claim(claim_request(10, Duration::from_secs(30)))
                    .await
                    .unwrap();
                if let Some(job) = claimed.into_iter().next() {
                    break job;
                }
                assert!(Instant::now() < deadline, "the delayed job never arrived");
            };
            let waited = enqueued.elapsed();
            assert!(
                waited >= Duration::from_millis(3490),
                "ran after {waited:?}, before its delay"
            );
            assert_eq!(claimed.attempt, 1, "hops are not attempts");
        }

        #[tokio::test]
        async fn the_redrive_policy_dead_letters_a_job_received_too_often() {
            let url = fresh_queue(&[], Some(2)).await;
            let queue = backend(&url, 1).await;
            queue
                .enqueue(&[job("{}".into(), Duration::ZERO)])
                .await
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            // Received and abandoned (its 1 s lease runs out) until SQS moves it.
            while queue.stats().await.unwrap().dead == 0 {
                assert!(Instant::now() < deadline, "never dead-lettered");
                let _ = queue
                    .claim(claim_request(1, Duration::from_secs(1)))
                    .await
                    .unwrap();
            }
            let dead = queue.dead_jobs(10).await.unwrap();
            assert_eq!(dead.len(), 1);
            assert_eq!(
                (dead[0].name.as_str(), dead[0].last_error.as_deref()),
                ("echo", None)
            );
        }

        #[tokio::test]
        async fn an_abandoned_claim_gives_back_what_it_receives_without_an_attempt() {
            let url = fresh_queue(&[], Some(10)).await;
            let queue = backend(&url, 3).await;
            // The worker gives up waiting (shutdown) while the long poll goes on.
            let abandoned = tokio::time::timeout(
                Duration::from_millis(200),
                queue.claim(claim_request(10, Duration::from_secs(60))),
            )
            .await;
            assert!(abandoned.is_err(), "nothing to receive yet");
            queue
                .enqueue(&[job("{}".into(), Duration::ZERO)])
                .await
                .unwrap();
            // Let the abandoned poll take it.
            tokio::time::sleep(Duration::from_secs(2)).await;
            // Without the release it would stay invisible for the 60 s lease.
            let deadline = Instant::now() + Duration::from_secs(30);
            let claimed = loop {
                let claimed = queue
                    .claim(claim_request(10, Duration::from_secs(30)))
                    .await
                    .unwrap();
                if let Some(job) = claimed.into_iter().next() {
                    break job;
                }
                assert!(
                    Instant::now() < deadline,
                    "the prefetched job was not given back"
                );
            };
            assert_eq!(claimed.attempt, 1);
        }

        fn request_for(names: &'static [&'static str], lease: Duration) -> ClaimRequest<'static> {
            ClaimRequest {
                names,
                max: 10,
                owner: "tests",
                lease,
            }
        }

        /// Claims until a job comes, for at most 30 s.
        async fn claim_one(queue: &SqsBackend, lease: Duration) -> ClaimedJob {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let claimed = queue.claim(claim_request(1, lease)).await.unwrap();
                if let Some(job) = claimed.into_iter().next() {
                    return job;
                }
                assert!(Instant::now() < deadline, "no job arrived");
            }
        }

        /// A worker without the job's handler gives it back as a copy that keeps its
        /// attempts: before, it went back by visibility 0 and each bounce counted as a
        /// receive, so two bounces moved it to the dead letters (redrive at 2) unrun.
        #[tokio::test]
        async fn a_job_bounced_by_workers_without_its_handler_keeps_its_attempts() {
            let url = fresh_queue(&[], Some(2)).await;
            let queue = backend(&url, 1).await;
            queue
                .enqueue(&[job("{}".into(), Duration::ZERO)])
                .await
                .unwrap();
            let mut bounces = 0;
            let deadline = Instant::now() + Duration::from_secs(30);
            while bounces < 3 {
                assert!(
                    Instant::now() < deadline,
                    "the job never reached the other worker"
                );
                let claimed = queue
                    .claim(request_for(&["other"], Duration::from_secs(30)))
                    .await
                    .unwrap();
                assert!(
                    claimed.is_empty(),
                    "a job without a handler here was claimed"
                );
                if queue.inner.saw_only_strangers.load(Ordering::Relaxed) {
                    bounces += 1;
                }
            }
            let job = claim_one(&queue, Duration::from_secs(30)).await;
            assert_eq!(job.attempt, 1, "bounces counted as attempts");
            assert_eq!(queue.stats().await.unwrap().dead, 0);
        }

        /// A receive that fails to handle one message (here: dead-lettering a job past its
        /// last attempt, into a dead-letter queue that is gone) still returns the runnable
        /// jobs it received. Before, the error ended the claim: the runnable job stayed
        /// invisible for its lease with its attempt spent.
        #[tokio::test]
        async fn a_receive_returns_its_runnable_jobs_when_handling_the_others_fails() {
            let url = fresh_queue(&[], Some(10)).await;
            let queue = backend(&url, 1).await;
            let last_try = NewJob {
                max_attempts: 1,
                ..job("{\"n\":1}".into(), Duration::ZERO)
            };
            queue.enqueue(&[last_try]).await.unwrap();
            // Its only attempt: the lease runs out without an outcome.
            let abandoned = claim_one(&queue, Duration::from_secs(1)).await;
            assert_eq!(abandoned.attempt, 1);
            client()
                .delete_queue()
                .queue_url(&queue.inner.dead_letter_url)
                .send()
                .await
                .unwrap();
            queue
                .enqueue(&[job("{\"n\":2}".into(), Duration::ZERO)])
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(4)).await;
            let deadline = Instant::now() + Duration::from_secs(30);
            let runnable = loop {
                let claimed = queue
                    .claim(claim_request(10, Duration::from_secs(30)))
                    .await
                    .expect("a failed side step must not fail the claim");
                if let Some(job) = claimed.into_iter().find(|job| job.payload == "{\"n\":2}") {
                    break job;
                }
                assert!(
                    Instant::now() < deadline,
                    "the runnable job was not returned"
                );
            };
            assert_eq!(runnable.attempt, 1);
        }

        /// SQS keeps a receipt invisible for at most 12 hours from its receive (here 5 s).
        /// A heartbeat whose lease no longer fits reports the lease lost at once, and a
        /// retry delayed past what is left goes out as a copy. Before, the heartbeat kept
        /// answering "held" while the message reappeared for another worker, and the retry
        /// asked for a visibility SQS refuses.
        #[tokio::test]
        async fn leases_and_retries_stay_within_the_visibility_limit_of_a_receive() {
            let url = fresh_queue(&[], Some(10)).await;
            let mut queue = backend(&url, 1).await;
            Arc::get_mut(&mut queue.inner).unwrap().visibility_limit = Duration::from_secs(5);
            queue
                .enqueue(&[job("{}".into(), Duration::ZERO)])
                .await
                .unwrap();
            let held = claim_one(&queue, Duration::from_secs(2)).await;
            let lease = Duration::from_secs(2);
            let lost = queue.extend("tests", &[held.lease()], lease).await.unwrap();
            assert!(lost.is_empty(), "a lease that fits was reported lost");
            tokio::time::sleep(Duration::from_secs(2)).await;
            let lost = queue.extend("tests", &[held.lease()], lease).await.unwrap();
            assert_eq!(
                lost.len(),
                1,
                "a lease past the receipt's limit was not reported"
            );
            assert!(queue.inner.leases().is_empty(), "the lost lease was kept");

            // Its visibility runs out; received again, it is retried past what is left.
            let again = claim_one(&queue, Duration::from_secs(2)).await;
            assert_eq!(again.id, held.id);
            queue
                .retry("tests", &again.lease(), Duration::from_secs(6), "later")
                .await
                .unwrap();
            let retried = claim_one(&queue, Duration::from_secs(30)).await;
            assert_ne!(retried.id, again.id, "the retry did not go out as a copy");
            assert_eq!(retried.attempt, again.attempt + 1);
        }

        /// SQS takes or refuses each message of a batch on its own; a bulk enqueue where
        /// some are refused says which went out (before: a plain error, as if none had).
        #[tokio::test]
        async fn a_bulk_enqueue_sqs_partly_refuses_says_which_jobs_were_enqueued() {
            let url = fresh_queue(&[], Some(10)).await;
            let mut queue = backend(&url, 1).await;
            // A native delay limit past SQS's 900 s makes SQS refuse that one entry.
            Arc::get_mut(&mut queue.inner).unwrap().native_delay_limit = Duration::from_secs(2_000);
            let jobs = [
                job("{\"n\":1}".into(), Duration::ZERO),
                job("{\"n\":2}".into(), Duration::from_secs(1_000)),
                job("{\"n\":3}".into(), Duration::ZERO),
            ];
            let error = queue.enqueue(&jobs).await.unwrap_err();
            let QueueError::PartlyEnqueued { ids, reason } = error else {
                panic!("expected a partial enqueue, got {error}");
            };
            assert_eq!(
                ids.iter().map(Option::is_some).collect::<Vec<_>>(),
                [true, false, true],
                "{reason}"
            );
            assert!(reason.contains("DelaySeconds"), "{reason}");
            let mut payloads = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            while payloads.len() < 2 {
                assert!(Instant::now() < deadline, "got only {payloads:?}");
                for job in queue
                    .claim(claim_request(10, Duration::from_secs(30)))
                    .await
                    .unwrap()
                {
                    assert!(ids.contains(&Some(job.id.clone())));
                    payloads.push(job.payload);
                }
            }
            payloads.sort();
            assert_eq!(payloads, ["{\"n\":1}", "{\"n\":3}"]);
        }
    }
}
