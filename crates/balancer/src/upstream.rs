//! The keep-alive connections to one backend, and the request body sent on them.
//!
//! Each backend has its own [`Pool`] of idle HTTP/1.1 connections (a short lock per backend,
//! never a global one). A connection is driven by whoever uses it: the request's own task
//! polls it while waiting for the answer, and the response body polls it while streaming the
//! answer to the client. So a proxied request costs no extra task, no channel hop between
//! tasks and no spawn; when the answer has been read to its end, the connection goes back to
//! the pool (most recently used first) for the next request.
//!
//! Request bodies are streamed: a large upload is passed on frame by frame, counted against
//! `MAX_BODY_BYTES`. Small bodies with a known length are read first so that a retry can send
//! them again; a streamed body can still be retried after a connect failure, because it is
//! taken from its slot only when the first frame is polled.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::{body::Incoming, client::conn::http1};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A connection's driver: hyper's HTTP/1 client state machine over the socket (with upgrade
/// support, for WebSocket).
type Driver = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// Tuning shared by every backend's pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle: usize,
}

/// One connection: the handle to send on, and its driver.
pub struct Conn {
    sender: http1::SendRequest<RequestBody>,
    driver: Driver,
    /// The driver finished (the connection closed or was upgraded).
    done: bool,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// Polls the driver once (it does the socket work); `true` while the connection lives.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.done {
            if let Poll::Ready(result) = self.driver.as_mut().poll(cx) {
                if let Err(err) = result {
                    tracing::debug!(cause = %err, "upstream connection ended");
                }
                self.done = true;
            }
        }
        !self.done
    }
}

struct IdleConn {
    conn: Conn,
    since: Instant,
}

/// Why a request could not be sent.
#[derive(Debug)]
pub enum SendError {
    /// No TCP connection to the backend (refused, unreachable, timed out, name not found).
    Connect(std::io::Error),
    /// The connection failed after the request was (maybe) sent.
    Request(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(err) => write!(f, "connect: {err}"),
            Self::Request(err) => {
                write!(f, "{err}")?;
                let mut source = std::error::Error::source(err);
                while let Some(cause) = source {
                    write!(f, ": {cause}")?;
                    source = cause.source();
                }
                Ok(())
            }
        }
    }
}

/// The idle connections to one backend.
#[derive(Debug)]
pub struct Pool {
    address: String,
    config: PoolConfig,
    idle: Mutex<Vec<IdleConn>>,
    pub opened: AtomicU64,
}

impl std::fmt::Debug for IdleConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleConn")
            .field("since", &self.since)
            .finish_non_exhaustive()
    }
}

impl Pool {
    pub fn new(address: String, config: PoolConfig) -> Self {
        Self {
            address,
            config,
            idle: Mutex::new(Vec::new()),
            opened: AtomicU64::new(0),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<IdleConn>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn idle_count(&self) -> usize {
        self.idle().len()
    }

    /// The most recently used idle connection that is still fresh.
    fn checkout(&self) -> Option<Conn> {
        let now = Instant::now();
        let mut idle = self.idle();
        while let Some(entry) = idle.pop() {
            if now.duration_since(entry.since) < self.config.idle_timeout {
                return Some(entry.conn);
            }
            // The rest are older still.
            idle.clear();
        }
        None
    }

    /// Returns a connection whose last answer was read to its end.
    fn checkin(&self, conn: Conn) {
        if conn.done || conn.sender.is_closed() {
            return;
        }
        let mut idle = self.idle();
        if idle.len() < self.config.max_idle {
            idle.push(IdleConn {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Closes connections idle for longer than the idle timeout.
    pub fn sweep(&self) {
        let now = Instant::now();
        let stale: Vec<IdleConn> = {
            let mut idle = self.idle();
            let keep = idle
                .iter()
                .position(|entry| now.duration_since(entry.since) < self.config.idle_timeout)
                .unwrap_or(idle.len());
            idle.drain(..keep).collect()
        };
        drop(stale);
    }

    async fn connect(&self) -> Result<Conn, SendError> {
        let stream = tokio::time::timeout(
            self.config.connect_timeout,
            TcpStream::connect(self.address.as_str()),
        )
        .await
        .map_err(|_| {
            SendError::Connect(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            ))
        })?
        .map_err(SendError::Connect)?;
        let _ = stream.set_nodelay(true);
        // One buffer and a plain write per request, not a `writev` of head and body parts:
        // fewer instructions for the small messages that dominate (bounded all the same by
        // hyper's maximum buffer size for large bodies).
        let (sender, connection) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Request)?;
        self.opened.fetch_add(1, Relaxed);
        Ok(Conn {
            sender,
            driver: Box::pin(connection.with_upgrades()),
            done: false,
        })
    }

    /// Sends `request` on an idle connection, or a new one, and waits for the answer head.
    /// A reused connection that turns out to be closed before the request went out is
    /// replaced transparently.
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        loop {
            let (mut conn, reused) = match self.checkout() {
                Some(conn) => (conn, true),
                // Boxed: once per connection, not per request.
                None => (Box::pin(self.connect()).await?, false),
            };
            if reused {
                // Let the driver notice a close by the backend while the connection was idle,
                // and finish the previous exchange.
                let ready = std::future::poll_fn(|cx| {
                    let alive = conn.drive(cx);
                    Poll::Ready(alive && matches!(conn.sender.poll_ready(cx), Poll::Ready(Ok(()))))
                })
                .await;
                if !ready {
                    tracing::trace!(address = %self.address, "idle upstream connection was closed");
                    continue;
                }
            }
            let mut exchange = std::pin::pin!(conn.sender.try_send_request(request));
            let outcome = std::future::poll_fn(|cx| {
                conn.drive(cx);
                exchange.as_mut().poll(cx)
            })
            .await;
            match outcome {
                Ok(response) => {
                    return Ok((
                        response,
                        Lease {
                            conn: Some(conn),
                            pool: Arc::clone(self),
                            reusable: true,
                        },
                    ));
                }
                Err(mut err) => match err.take_message() {
                    // Not sent: the connection was already gone. Try the next one.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(SendError::Request(err.into_error())),
                },
            }
        }
    }
}

/// A connection lent to one exchange: driven while the answer streams, returned to the pool
/// when the answer has been read to its end.
pub struct Lease {
    conn: Option<Conn>,
    pool: Arc<Pool>,
    reusable: bool,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// Polls the connection's driver (reads the answer, writes the rest of the request).
    pub fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(conn) = &mut self.conn {
            conn.drive(cx);
        }
    }

    /// The connection must not be reused (e.g. the request body was still streaming).
    pub fn forbid_reuse(&mut self) {
        self.reusable = false;
    }

    /// The answer was read to its end: the connection may serve the next request.
    pub fn release(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.reusable {
                self.pool.checkin(conn);
            }
        }
    }

    /// Hands the connection to its own task (for an upgrade, which needs the driver to run
    /// until it gives up the socket).
    pub fn detach(mut self) {
        if let Some(conn) = self.conn.take() {
            if !conn.done {
                let Conn { sender, driver, .. } = conn;
                tokio::spawn(async move {
                    let _sender = sender;
                    if let Err(err) = driver.await {
                        tracing::debug!(cause = %err, "upgraded upstream connection ended");
                    }
                });
            }
        }
    }
}

/// Why a streamed request body stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    None,
    TooLarge,
    Client,
}

/// The client's body, shared between attempts until one of them starts reading it.
#[derive(Debug)]
pub struct Slot {
    body: Mutex<Option<Incoming>>,
    limit: u64,
    read: AtomicU64,
    fault: AtomicU8,
    hint: SizeHint,
}

impl Slot {
    pub fn fault(&self) -> BodyFault {
        match self.fault.load(Relaxed) {
            1 => BodyFault::TooLarge,
            2 => BodyFault::Client,
            _ => BodyFault::None,
        }
    }

    fn set_fault(&self, fault: BodyFault) {
        let code = match fault {
            BodyFault::None => 0,
            BodyFault::TooLarge => 1,
            BodyFault::Client => 2,
        };
        self.fault.store(code, Relaxed);
    }

    fn untouched(&self) -> bool {
        self.body
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }
}

/// Where each attempt's request body comes from.
#[derive(Debug, Clone)]
pub enum BodySource {
    Empty,
    /// Read in full; can be sent any number of times.
    Full(Bytes),
    /// Streamed from the client.
    Stream(Arc<Slot>),
}

impl BodySource {
    pub fn stream(body: Incoming, limit: u64) -> Self {
        let hint = body.size_hint();
        Self::Stream(Arc::new(Slot {
            body: Mutex::new(Some(body)),
            limit,
            read: AtomicU64::new(0),
            fault: AtomicU8::new(0),
            hint,
        }))
    }

    /// A body for the next attempt; `None` once a streamed body has been (partly) sent.
    pub fn attempt(&self) -> Option<RequestBody> {
        match self {
            Self::Empty => Some(RequestBody::Empty),
            Self::Full(bytes) => Some(RequestBody::Full(Some(bytes.clone()))),
            Self::Stream(slot) => slot.untouched().then(|| {
                RequestBody::Stream(StreamBody {
                    slot: Arc::clone(slot),
                    inner: None,
                })
            }),
        }
    }

    /// Whether every attempt can send the whole body again (not only after connect failures).
    pub fn replayable(&self) -> bool {
        !matches!(self, Self::Stream(_))
    }

    pub fn fault(&self) -> BodyFault {
        match self {
            Self::Stream(slot) => slot.fault(),
            _ => BodyFault::None,
        }
    }
}

/// The body of one upstream request.
#[derive(Debug)]
pub enum RequestBody {
    Empty,
    Full(Option<Bytes>),
    Stream(StreamBody),
}

/// A streamed client body with the size limit applied.
#[derive(Debug)]
pub struct StreamBody {
    slot: Arc<Slot>,
    inner: Option<Incoming>,
}

#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error("the request body is larger than {0} bytes")]
    TooLarge(u64),
    #[error("the client's request body failed: {0}")]
    Client(hyper::Error),
    #[error("the request body was already sent")]
    Consumed,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Self::Stream(stream) => stream.poll(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Full(bytes) => bytes.is_none(),
            Self::Stream(stream) => stream.inner.as_ref().is_some_and(Body::is_end_stream),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Stream(stream) => match &stream.inner {
                Some(inner) => inner.size_hint(),
                None => stream.slot.hint,
            },
        }
    }
}

impl StreamBody {
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let inner = match &mut self.inner {
            Some(inner) => inner,
            None => {
                let taken = self
                    .slot
                    .body
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take();
                match taken {
                    Some(body) => self.inner.insert(body),
                    None => return Poll::Ready(Some(Err(RequestBodyError::Consumed))),
                }
            }
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let read =
                        self.slot.read.fetch_add(data.len() as u64, Relaxed) + data.len() as u64;
                    if read > self.slot.limit {
                        self.slot.set_fault(BodyFault::TooLarge);
                        return Poll::Ready(Some(Err(RequestBodyError::TooLarge(self.slot.limit))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                self.slot.set_fault(BodyFault::Client);
                Poll::Ready(Some(Err(RequestBodyError::Client(err))))
            }
            other => other.map_err(RequestBodyError::Client),
        }
    }
}
