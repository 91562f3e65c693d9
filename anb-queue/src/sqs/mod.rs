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
//! receives): a job without a handler here goes back at once as a copy that keeps its
//! attempt count, for another worker.
//!
//! The parts: [`location`] (queue URLs), [`message`] (a job as a message), [`requests`]
//! (batched requests and the request counter), [`receive`] (sorting what a receive got,
//! giving messages back); this module holds the leases and the [`Backend`] implementation.

mod location;
mod message;
mod receive;
mod requests;
#[cfg(test)]
mod tests;

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

use self::{
    location::{Location, QueueRef, dead_letter_target, resolve_queue_url},
    message::{
        Envelope, Outgoing, ceil_seconds, number_attribute, string_attribute, visibility_for,
    },
    requests::{RequestCounter, build_error, sqs_error},
};
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

    // A receive takes whatever message comes next, of any job name.
    fn claims_by_name(&self) -> bool {
        false
    }

    async fn enqueue(&self, jobs: &[NewJob]) -> Result<Vec<JobId>, QueueError> {
        // A standard queue has no deduplication: `enqueue_unique` is left unsupported.
        crate::backend::refuse_unique(jobs)?;
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
                if let Err(error) = inner.resend(leases, Duration::ZERO).await {
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
        self.inner.resend(leases, Duration::ZERO).await
    }

    async fn snooze(
        &self,
        _owner: &str,
        claim: &ClaimLease,
        delay: Duration,
    ) -> Result<(), QueueError> {
        // SQS counts every receive and cannot take one back: the job goes out again as a
        // copy that carries the attempts before this one, due after the delay, and the
        // original is deleted.
        let Some(lease) = self.inner.take_lease(claim) else {
            return Ok(());
        };
        self.inner.resend(vec![lease], delay).await
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
            let held = self.inner.leases();
            leases.iter().partition(|claim| {
                held.get(&claim.id).is_some_and(|held| {
                    held.receipt == claim.token && wanted <= self.inner.visibility_left(held)
                })
            })
        };
        if !current.is_empty() {
            let receipts: Vec<String> = current.iter().map(|claim| claim.token.clone()).collect();
            let refused = self
                .inner
                .change_visibility(&receipts, visibility_for(lease))
                .await?;
            lost.extend(refused.into_iter().map(|index| current[index]));
        }
        // Forget what is lost; a claim already replaced by a later receive keeps that one.
        for claim in &lost {
            self.inner.take_lease(claim);
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

    fn stats_interval(&self) -> Duration {
        // Two billed requests per refresh (the queue and its dead letters), for counts SQS
        // itself calls approximate and publishes to CloudWatch once a minute: every 15 s
        // they were a third of an idle worker's requests and 0.03 per job of a burst.
        Duration::from_secs(60)
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
                found.push(DeadJob {
                    id: JobId(id.to_owned()),
                    name: job.name,
                    payload: job.payload,
                    attempts,
                    last_error: attribute(ATTR_ERROR).map(str::to_owned),
                    dead_at_ms: dead_at,
                });
            }
            if fresh == 0 {
                break;
            }
        }
        found.sort_by_key(|job| std::cmp::Reverse(job.dead_at_ms));
        found.truncate(limit);
        Ok(found)
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
