//! A size limit on every request body, enforced while it streams in.
//!
//! Extractors such as `Json` buffer the whole body before anything else
//! runs, so a bound must sit below them: a declared `Content-Length` over the
//! limit is refused before a byte is read, and a body without one (chunked)
//! ends with an error at the first byte past the limit. Either way the
//! answer is the route's "too large" problem, whatever the handler made of
//! the broken body.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use poem::http::header;
use poem::{Body, Endpoint, IntoResponse, Middleware, Request, Response};

use crate::error::ApiError;

/// JSON bodies are small: the largest request the API takes is a sign-up.
pub const JSON_BODY_LIMIT: u64 = 64 * 1024;

/// The body limits of the application: one for the upload route (and the
/// file of a direct upload sent to the API), one for everything else.
#[derive(Debug, Clone)]
pub struct BodyLimits {
    /// Every route but the upload.
    pub default: u64,
    pub upload_path: &'static str,
    /// The whole multipart upload, file and form together.
    pub upload: u64,
    /// The largest file, for the upload's own "too large" answer.
    pub upload_file: u64,
}

impl BodyLimits {
    fn for_path(&self, path: &str) -> u64 {
        if path == self.upload_path {
            self.upload
        } else if crate::routes::direct_uploads::is_content_path(path) {
            // A direct upload's file, sent to the API with local storage.
            self.upload_file
        } else {
            self.default
        }
    }

    fn too_large(&self, path: &str) -> ApiError {
        if path == self.upload_path || crate::routes::direct_uploads::is_content_path(path) {
            // The contract answers an oversized upload with 400.
            crate::upload::too_large(self.upload_file)
        } else {
            ApiError::PayloadTooLarge {
                limit_bytes: self.default,
            }
        }
    }
}

impl<E: Endpoint> Middleware<E> for BodyLimits {
    type Output = BodyLimitEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        BodyLimitEndpoint {
            inner,
            limits: self.clone(),
        }
    }
}

/// [`BodyLimits`] around an endpoint.
#[derive(Debug)]
pub struct BodyLimitEndpoint<E> {
    inner: E,
    limits: BodyLimits,
}

impl<E: Endpoint> Endpoint for BodyLimitEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let path = req.uri().path().to_owned();
        let limit = self.limits.for_path(&path);
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit) {
            return Err(self.limits.too_large(&path).into());
        }
        let tripped = Arc::new(AtomicBool::new(false));
        let body = req.take_body();
        req.set_body(Body::from_bytes_stream(Limited {
            inner: Box::pin(body.into_bytes_stream()),
            remaining: limit,
            tripped: tripped.clone(),
        }));
        let result = self.inner.call(req).await.map(IntoResponse::into_response);
        if tripped.load(Ordering::Relaxed) {
            return Err(self.limits.too_large(&path).into());
        }
        result
    }
}

/// A body stream that fails at the first byte past `remaining`.
struct Limited<S> {
    inner: S,
    remaining: u64,
    tripped: Arc<AtomicBool>,
}

impl<S> Stream for Limited<S>
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Unpin,
{
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.tripped.load(Ordering::Relaxed) {
            return Poll::Ready(None);
        }
        let next = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(Some(Ok(chunk))) = &next {
            match self.remaining.checked_sub(chunk.len() as u64) {
                Some(left) => self.remaining = left,
                None => {
                    self.tripped.store(true, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(std::io::Error::other(
                        "request body over its limit",
                    ))));
                }
            }
        }
        next
    }
}
