//! Middleware around handlers: [tower] layers a worker wraps every handler in
//! ([`Worker::layer`](crate::Worker::layer)).
//!
//! A layer sees each run of a job as a [`JobRequest`] (the job's context and its JSON
//! payload) and answers `()` or an error. Any tower layer fits: `tower::limit` for a
//! concurrency limit or a rate limit across the worker's handlers, `tower::timeout`, a
//! tracing or metrics layer of your own. What a layer's error means for the job:
//! - a handler's own [`JobError`] passes through the layers unchanged (retryable, permanent
//!   or a snooze);
//! - any other error (a timeout layer's `Elapsed`, a load-shed layer's `Overloaded`) fails
//!   the attempt retryably, with the error's text as the job's last error.
//!
//! A worker without layers calls its handlers directly: the layers cost nothing unless used.

use std::{fmt, sync::Arc, task::Poll};

use futures::{FutureExt, future::BoxFuture};
use tower::{BoxError, Layer, Service, ServiceExt, util::BoxCloneSyncService};

use crate::{error::JobError, job::JobContext};

/// One run of a job, as middleware sees it.
#[derive(Debug, Clone)]
pub struct JobRequest {
    context: JobContext,
    payload: String,
}

impl JobRequest {
    /// The running job's context (name, id, attempt, cancellation).
    pub fn context(&self) -> &JobContext {
        &self.context
    }

    /// The job's stable name ([`Job::NAME`](crate::Job::NAME)).
    pub fn name(&self) -> &'static str {
        self.context.name()
    }

    /// The job's JSON payload.
    pub fn payload(&self) -> &str {
        &self.payload
    }
}

/// A handler's own error on its way out through the layers: it keeps the handler's
/// [`JobError`] intact, so the job's fate is the handler's.
#[derive(Debug)]
pub struct HandlerError(JobError);

impl HandlerError {
    /// The handler's error.
    pub fn job_error(&self) -> &JobError {
        &self.0
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for HandlerError {}

/// The service a layer wraps: a handler, or the layers already around it.
pub type JobService = BoxCloneSyncService<JobRequest, (), BoxError>;

/// A registered layer, type-erased.
pub(crate) type WrapFn = Arc<dyn Fn(JobService) -> JobService + Send + Sync>;

pub(crate) fn wrap_fn<L>(layer: L) -> WrapFn
where
    L: Layer<JobService> + Send + Sync + 'static,
    L::Service: Service<JobRequest, Response = ()> + Clone + Send + Sync + 'static,
    <L::Service as Service<JobRequest>>::Error: Into<BoxError>,
    <L::Service as Service<JobRequest>>::Future: Send + 'static,
{
    Arc::new(move |inner| BoxCloneSyncService::new(layer.layer(inner).map_err(Into::into)))
}

/// The handler as the innermost service.
#[derive(Clone)]
struct HandlerService(super::worker::HandlerFn);

impl Service<JobRequest> for HandlerService {
    type Response = ();
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<(), BoxError>>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: JobRequest) -> Self::Future {
        (self.0)(request.payload, request.context)
            .map(|result| result.map_err(|error| Box::new(HandlerError(error)) as BoxError))
            .boxed()
    }
}

/// `handler` inside `layers`, the first registered outermost, as a handler again.
pub(crate) fn layered(
    handler: super::worker::HandlerFn,
    layers: &[WrapFn],
) -> super::worker::HandlerFn {
    let mut service = JobService::new(HandlerService(handler));
    for wrap in layers.iter().rev() {
        service = wrap(service);
    }
    Arc::new(move |payload: String, context: JobContext| {
        let service = service.clone();
        async move {
            service
                .oneshot(JobRequest { context, payload })
                .await
                .map_err(job_error)
        }
        .boxed()
    })
}

/// What a layered handler's error means for the job (see the module documentation).
fn job_error(error: BoxError) -> JobError {
    match error.downcast::<HandlerError>() {
        Ok(handler) => handler.0,
        Err(other) => {
            let mut message = other.to_string();
            let mut source = other.source();
            while let Some(cause) = source {
                message.push_str(": ");
                message.push_str(&cause.to_string());
                source = cause.source();
            }
            JobError::retryable(message)
        }
    }
}
