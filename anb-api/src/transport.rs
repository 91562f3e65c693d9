//! The connection layer under HTTP: the timeouts poem does not offer, and
//! the lingering close.
//!
//! Every accepted TCP stream is wrapped in a [`GuardedIo`] that fails a read
//! which waits too long for what the connection is doing:
//!
//! - between requests (keep-alive), no byte for [`TransportLimits::idle`];
//! - a request head not complete [`TransportLimits::header`] after its first
//!   byte (a client sending one header byte a second is cut off);
//! - a request body that brings fewer than
//!   [`TransportLimits::body_min_bytes`] in a window of
//!   [`TransportLimits::body_window`] (stalled or trickling uploads);
//! - while a handler works on a request whose body is read, no limit.
//!
//! The HTTP layer tells the connection what it is doing through
//! [`TrackRequests`], a middleware that finds the connection by the peer's
//! address.
//!
//! When the server closes a connection it first shuts down its sending side,
//! then reads and discards what the client still sends (at most
//! [`TransportLimits::linger_bytes`], for at most
//! [`TransportLimits::linger_time`]) until the client closes too. A browser
//! that sends an upload without `Expect: 100-continue` and gets an early 401
//! or 413 thus reads the answer, instead of a reset connection that throws
//! away the answer with the unread body, as nginx's lingering close does.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use poem::http::header;
use poem::http::uri::Scheme;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Body, Endpoint, Middleware, Request};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The connection timeouts and the lingering close's bounds.
#[derive(Debug, Clone)]
pub struct TransportLimits {
    /// Between requests: how long a kept-alive connection may stay silent.
    pub idle: Duration,
    /// How long a request head may take from its first byte.
    pub header: Duration,
    /// A request body must bring `body_min_bytes` in every such window.
    pub body_window: Duration,
    pub body_min_bytes: u64,
    /// The lingering close: how long and how much to read and discard
    /// after the answer before the connection is closed.
    pub linger_time: Duration,
    pub linger_bytes: u64,
}

impl Default for TransportLimits {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(30),
            header: Duration::from_secs(10),
            body_window: Duration::from_secs(10),
            body_min_bytes: 8 * 1024,
            linger_time: Duration::from_secs(10),
            linger_bytes: 128 * 1024 * 1024,
        }
    }
}

/// What one connection is doing, as far as its reads are concerned.
#[derive(Debug)]
struct Activity {
    /// Requests inside the application (HTTP/1 has at most one).
    requests: u32,
    /// Request bodies being read (not yet ended or dropped).
    bodies: u32,
    /// When the first byte of the next request head came in.
    head_started: Option<Instant>,
    /// When the connection last wrote, or was accepted, or ended a request.
    last_change: Instant,
    /// The current body window and what it brought.
    window_start: Instant,
    window_bytes: u64,
}

/// The shared view of one connection.
#[derive(Debug)]
struct Connection(Mutex<Activity>);

impl Connection {
    fn new() -> Self {
        let now = Instant::now();
        Self(Mutex::new(Activity {
            requests: 0,
            bodies: 0,
            head_started: None,
            last_change: now,
            window_start: now,
            window_bytes: 0,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Activity> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Activity {
    fn on_read(&mut self, bytes: usize, now: Instant) {
        if self.bodies > 0 {
            self.window_bytes += bytes as u64;
        } else if self.requests == 0 && self.head_started.is_none() {
            self.head_started = Some(now);
        }
    }

    /// When a read that is waiting now must fail; `None` for never.
    fn read_deadline(&mut self, now: Instant, limits: &TransportLimits) -> Option<Instant> {
        if self.bodies > 0 {
            if now >= self.window_start + limits.body_window {
                if self.window_bytes < limits.body_min_bytes {
                    return Some(now);
                }
                self.window_start = now;
                self.window_bytes = 0;
            }
            Some(self.window_start + limits.body_window)
        } else if self.requests > 0 {
            None
        } else if let Some(started) = self.head_started {
            Some(started + limits.header)
        } else {
            Some(self.last_change + limits.idle)
        }
    }
}

/// The connections open now, by peer address.
#[derive(Debug, Clone, Default)]
pub struct Connections(Arc<Mutex<HashMap<SocketAddr, Arc<Connection>>>>);

impl Connections {
    fn lock(&self) -> MutexGuard<'_, HashMap<SocketAddr, Arc<Connection>>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn get(&self, peer: &SocketAddr) -> Option<Arc<Connection>> {
        self.lock().get(peer).cloned()
    }
}

/// An acceptor whose connections are [`GuardedIo`]s.
#[derive(Debug)]
pub struct GuardedAcceptor<A> {
    inner: A,
    limits: TransportLimits,
    connections: Connections,
}

impl<A> GuardedAcceptor<A> {
    pub fn new(inner: A, limits: TransportLimits, connections: Connections) -> Self {
        Self {
            inner,
            limits,
            connections,
        }
    }
}

impl<A: Acceptor> Acceptor for GuardedAcceptor<A> {
    type Io = GuardedIo<A::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        let (io, local, remote, scheme) = self.inner.accept().await?;
        let connection = Arc::new(Connection::new());
        let peer = remote.as_socket_addr().copied();
        if let Some(peer) = peer {
            self.connections.lock().insert(peer, connection.clone());
        }
        let io = GuardedIo {
            inner: io,
            limits: self.limits.clone(),
            connection,
            registration: peer.map(|peer| (peer, self.connections.clone())),
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            closing: Closing::Open,
        };
        Ok((io, local, remote, scheme))
    }
}

/// Where the lingering close is.
#[derive(Debug)]
enum Closing {
    Open,
    Lingering { until: Instant, discarded: u64 },
    Closed,
}

/// A connection with read timeouts and a lingering close.
#[derive(Debug)]
pub struct GuardedIo<T> {
    inner: T,
    limits: TransportLimits,
    connection: Arc<Connection>,
    registration: Option<(SocketAddr, Connections)>,
    timer: Pin<Box<Sleep>>,
    closing: Closing,
}

impl<T> Drop for GuardedIo<T> {
    fn drop(&mut self) {
        if let Some((peer, connections)) = self.registration.take() {
            connections.lock().remove(&peer);
        }
    }
}

fn timed_out(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what)
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                if read > 0 {
                    this.connection.lock().on_read(read, Instant::now());
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => {
                let now = Instant::now();
                let deadline = this.connection.lock().read_deadline(now, &this.limits);
                let Some(deadline) = deadline else {
                    return Poll::Pending;
                };
                if deadline <= now {
                    return Poll::Ready(Err(timed_out("the client was too slow")));
                }
                this.timer.as_mut().reset(deadline);
                match this.timer.as_mut().poll(cx) {
                    // Woken at the deadline: the next poll decides, with
                    // what the connection is doing by then.
                    Poll::Ready(()) => {
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> GuardedIo<T> {
    /// Reads and discards until the client closes or a bound is reached.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut scratch = [0u8; 16 * 1024];
        loop {
            let Closing::Lingering { until, discarded } = &mut self.closing else {
                return Poll::Ready(());
            };
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    *discarded += buf.filled().len() as u64;
                    if *discarded > self.limits.linger_bytes {
                        self.closing = Closing::Closed;
                    }
                }
                // The client closed (or broke) its side: done.
                Poll::Ready(_) => self.closing = Closing::Closed,
                Poll::Pending => {
                    let until = *until;
                    self.timer.as_mut().reset(until);
                    return match self.timer.as_mut().poll(cx) {
                        Poll::Ready(()) => {
                            self.closing = Closing::Closed;
                            Poll::Ready(())
                        }
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.inner).poll_write(cx, buf));
        if matches!(written, Ok(n) if n > 0) {
            self.connection.lock().last_change = Instant::now();
        }
        Poll::Ready(written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs));
        if matches!(written, Ok(n) if n > 0) {
            self.connection.lock().last_change = Instant::now();
        }
        Poll::Ready(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Closing::Open = this.closing {
            // Send everything and the end of stream first: the client has
            // the whole answer before anything it still sends is dropped.
            ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
            ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            this.closing = Closing::Lingering {
                until: Instant::now() + this.limits.linger_time,
                discarded: 0,
            };
        }
        ready!(this.poll_linger(cx));
        Poll::Ready(Ok(()))
    }
}

/// Tells each request's connection when a request is in the application and
/// when its body is being read, for [`GuardedIo`]'s timeouts.
#[derive(Debug, Clone)]
pub struct TrackRequests {
    pub connections: Connections,
}

impl<E: Endpoint> Middleware<E> for TrackRequests {
    type Output = TrackRequestsEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        TrackRequestsEndpoint {
            inner,
            connections: self.connections.clone(),
        }
    }
}

/// [`TrackRequests`] around an endpoint.
#[derive(Debug)]
pub struct TrackRequestsEndpoint<E> {
    inner: E,
    connections: Connections,
}

/// Whether the request announces a body.
fn has_body(req: &Request) -> bool {
    let headers = req.headers();
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

impl<E: Endpoint> Endpoint for TrackRequestsEndpoint<E> {
    type Output = E::Output;

    async fn call(&self, mut req: Request) -> poem::Result<Self::Output> {
        let connection = req
            .remote_addr()
            .as_socket_addr()
            .and_then(|peer| self.connections.get(peer));
        let Some(connection) = connection else {
            return self.inner.call(req).await;
        };
        {
            let mut activity = connection.lock();
            activity.requests += 1;
            activity.head_started = None;
            if has_body(&req) {
                activity.bodies += 1;
                activity.window_start = Instant::now();
                activity.window_bytes = 0;
            }
        }
        if has_body(&req) {
            let body = Box::pin(req.take_body().into_bytes_stream());
            req.set_body(Body::from_bytes_stream(TrackedBody {
                inner: body,
                connection: Some(connection.clone()),
            }));
        }
        let result = self.inner.call(req).await;
        let mut activity = connection.lock();
        activity.requests -= 1;
        activity.last_change = Instant::now();
        result
    }
}

/// A request body that tells its connection when it ends or is dropped.
struct TrackedBody<S> {
    inner: S,
    connection: Option<Arc<Connection>>,
}

impl<S> TrackedBody<S> {
    fn finish(&mut self) {
        if let Some(connection) = self.connection.take() {
            connection.lock().bodies -= 1;
        }
    }
}

impl<S> Drop for TrackedBody<S> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<S> Stream for TrackedBody<S>
where
    S: Stream<Item = Result<Bytes, io::Error>> + Unpin,
{
    type Item = Result<Bytes, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = Pin::new(&mut self.inner).poll_next(cx);
        if matches!(next, Poll::Ready(None)) {
            self.finish();
        }
        next
    }
}
