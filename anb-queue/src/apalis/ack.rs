//! The layer that turns a handler's answer into the queue's outcome (complete, retry,
//! dead letter, release), and how apalis's errors map onto it.

use super::*;

/// Records each task's outcome in the queue: the middleware an [`ApalisBackend`] puts
/// around the worker's service (outside the user's own layers, so an in-process `.retry(..)`
/// layer is one attempt here).
#[derive(Clone)]
pub struct AckLayer {
    pub(super) shared: Arc<Shared>,
}

impl fmt::Debug for AckLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AckLayer")
            .field("owner", &self.shared.runtime.owner)
            .finish()
    }
}

impl<S> Layer<S> for AckLayer {
    type Service = AckService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AckService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`AckLayer`].
#[derive(Clone)]
pub struct AckService<S> {
    pub(super) inner: S,
    pub(super) shared: Arc<Shared>,
}

impl<S> fmt::Debug for AckService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AckService")
            .field("owner", &self.shared.runtime.owner)
            .finish_non_exhaustive()
    }
}

impl<S, Args> Service<Task<Args>> for AckService<S>
where
    S: Service<Task<Args>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxDynError>,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxDynError;
    type Future = BoxFuture<'static, Result<S::Response, BoxDynError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, task: Task<Args>) -> Self::Future {
        let running = task.data().get::<RunningJob>().cloned();
        let handled = self.inner.call(task);
        let shared = self.shared.clone();
        async move {
            let Some(running) = running else {
                // Not a job of ours (pushed into the worker by other means): nothing to record.
                return handled.await.map_err(Into::into);
            };
            let runtime = shared.runtime.clone();
            let started = Instant::now();
            let handled = handled.map(|result| result.map_err(Into::<BoxDynError>::into));
            let ended = runtime.run_handler(&running, handled).await;
            record_duration(running.name, started);
            // The handler's own answer for apalis, and the queue's view of it.
            let (answer, ended) = match ended {
                Ended::Returned(Ok(Ok(response))) => (Ok(response), Ended::Returned(Ok(Ok(())))),
                Ended::Returned(Ok(Err(error))) => {
                    let failure = Failure::of(error.as_ref());
                    (Err(error), Ended::Returned(Ok(Err(failure))))
                }
                Ended::Returned(Err(panic)) => (
                    Err(Box::new(HandlerPanicked(panic.clone())) as BoxDynError),
                    Ended::Returned(Err(panic)),
                ),
                Ended::Aborted => (Err(Box::new(HandlerAborted) as BoxDynError), Ended::Aborted),
            };
            // In a task of its own, so the outcome is recorded even if the worker is dropped
            // meanwhile.
            let name = running.name;
            let outcome = tokio::spawn(async move { runtime.finish(&running, ended).await })
                .await
                .unwrap_or("released");
            metrics::counter!("anb_queue_jobs_total", "job" => name, "outcome" => outcome)
                .increment(1);
            answer
        }
        .boxed()
    }
}

/// A handler's error as the queue records it.
impl Failure {
    pub(super) fn of(error: &(dyn std::error::Error + 'static)) -> Self {
        if let Some(abort) = error.downcast_ref::<AbortError>() {
            return Self {
                retryable: false,
                delay: None,
                snoozed: false,
                message: describe_cause(abort),
            };
        }
        if let Some(retry_after) = error.downcast_ref::<RetryAfterError>() {
            return Self {
                retryable: true,
                delay: Some(retry_after.get_duration()),
                snoozed: false,
                message: describe_cause(retry_after),
            };
        }
        if let Some(deferred) = error.downcast_ref::<DeferredError>() {
            return Self {
                retryable: true,
                delay: Some(Duration::ZERO),
                snoozed: false,
                message: describe_cause(deferred),
            };
        }
        Self {
            retryable: true,
            delay: None,
            snoozed: false,
            message: describe(error),
        }
    }
}

/// The message of an apalis wrapper error's cause (without the wrapper's own prefix).
pub(super) fn describe_cause(wrapper: &dyn std::error::Error) -> String {
    wrapper
        .source()
        .map(describe)
        .unwrap_or_else(|| wrapper.to_string())
}

/// An error and its causes, joined with `": "`.
pub(super) fn describe(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// The error an aborted handler's attempt ends with (cancelled and not returning in time).
#[derive(Debug, thiserror::Error)]
#[error("the handler was aborted after being cancelled")]
pub(super) struct HandlerAborted;

/// The error a panicking handler's attempt ends with.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct HandlerPanicked(pub(super) String);

/// A [`JobError`]'s message as a standard error, so it can travel as apalis's `BoxDynError`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct HandlerFailed(pub(super) String);

/// Lets apalis handlers return `Result<_, JobError>`: a permanent error becomes an
/// [`AbortError`] (dead-lettered at once), a retryable one a plain error (retried).
impl From<JobError> for BoxDynError {
    fn from(error: JobError) -> Self {
        let failed = HandlerFailed(error.message().to_owned());
        if error.is_retryable() {
            Box::new(failed)
        } else {
            Box::new(AbortError::new(failed))
        }
    }
}

/// Lets apalis handlers take the job's [`JobContext`] as an argument (attempt, progress,
/// lease extension, shutdown notice).
impl<Args: Sync> FromRequest<Task<Args>> for JobContext {
    type Error = MissingDataError;

    async fn from_request(task: &Task<Args>) -> Result<Self, Self::Error> {
        task.data().get_checked::<JobContext>().cloned()
    }
}
