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
//! `MAX_BODY_BYTES`, with `BODY_READ_TIMEOUT` between the client's bytes. Small bodies (and
//! those of `RETRY_ROUTES` within `RETRY_BUFFER_BYTES`) are read first so that a retry can send
//! them again; a streamed body can still be retried after a connect failure, because it is
//! taken from its slot only when the first frame is polled.
//!
//! A backend may answer before it has read the whole body (a 413, or any early answer) and
//! close the connection. Writing the rest then fails, but the answer is in the socket: the
//! connection's writes turn into no-ops after such a failure ([`Io`]), so that hyper goes on
//! to read the answer, which is relayed to the client instead of a 502.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::{body::Incoming, client::conn::http1};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::timer::PooledSleep;

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
    /// Set by its [`Io`] when the backend stopped reading: never reused.
    write_closed: Arc<AtomicBool>,
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

/// An upstream socket whose writes become no-ops once the backend stopped reading (broken
/// pipe, reset): the request's remaining bytes are dropped, and reading goes on, so an answer
/// the backend sent before it closed still arrives. A backend that died without answering
/// shows as an end of stream or reset on the read side instead.
struct Io {
    inner: TokioIo<TcpStream>,
    write_closed: bool,
    /// The same, seen by the pool.
    shared: Arc<AtomicBool>,
}

impl Io {
    fn new(stream: TcpStream, shared: Arc<AtomicBool>) -> Self {
        Self {
            inner: TokioIo::new(stream),
            write_closed: false,
            shared,
        }
    }

    /// Turns a write error from a peer that stopped reading into "written".
    fn absorb(&mut self, result: io::Result<usize>, len: usize) -> io::Result<usize> {
        match result {
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::BrokenPipe
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                ) =>
            {
                tracing::debug!(cause = %err, "backend stopped reading the request; reading on for its answer");
                self.write_closed = true;
                self.shared.store(true, Relaxed);
                Ok(len)
            }
            other => other,
        }
    }
}

impl hyper::rt::Read for Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.write_closed {
            return Poll::Ready(Ok(buf.len()));
        }
        let written = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, buf));
        Poll::Ready(self.absorb(written, buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|buf| buf.len()).sum();
        if self.write_closed {
            return Poll::Ready(Ok(len));
        }
        let written = std::task::ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs));
        Poll::Ready(self.absorb(written, len))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write_closed {
            return Poll::Ready(Ok(()));
        }
        let flushed = std::task::ready!(Pin::new(&mut self.inner).poll_flush(cx));
        Poll::Ready(self.absorb(flushed.map(|()| 0), 0).map(|_| ()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write_closed {
            return Poll::Ready(Ok(()));
        }
        let shut = std::task::ready!(Pin::new(&mut self.inner).poll_shutdown(cx));
        Poll::Ready(self.absorb(shut.map(|()| 0), 0).map(|_| ()))
    }
}

struct IdleConn {
    conn: Conn,
    since: Instant,
}

/// Why a request could not be sent. Its text is its own; the cause is its `source` (logs
/// print the chain with `error::Chain`).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No TCP connection to the backend (refused, unreachable, timed out, name not found).
    #[error("connect")]
    Connect(#[source] std::io::Error),
    /// The connection failed after the request was (maybe) sent.
    #[error(transparent)]
    Request(hyper::Error),
    /// The fast path's connection failed after the request was (maybe) sent.
    #[error("the connection to the backend failed")]
    Io(#[source] std::io::Error),
    /// The fast path read an answer it cannot relay (malformed, or framed in a way it does
    /// not take).
    #[error("the backend's answer was refused")]
    Answer(#[source] crate::h1::Refusal),
}

/// The idle connections to one backend.
#[derive(Debug)]
pub struct Pool {
    address: String,
    config: PoolConfig,
    idle: Mutex<Vec<IdleConn>>,
    /// The fast path's idle sockets (plain HTTP/1.1, no hyper state), most recent last.
    idle_raw: Mutex<Vec<(TcpStream, Instant)>>,
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
            idle_raw: Mutex::new(Vec::new()),
            opened: AtomicU64::new(0),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<IdleConn>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn idle_raw(&self) -> std::sync::MutexGuard<'_, Vec<(TcpStream, Instant)>> {
        self.idle_raw
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn idle_count(&self) -> usize {
        self.idle().len() + self.idle_raw().len()
    }

    /// The fast path's most recently used idle socket that is still fresh.
    pub fn checkout_raw(&self) -> Option<TcpStream> {
        let now = Instant::now();
        let mut idle = self.idle_raw();
        let (stream, since) = idle.pop()?;
        if now.duration_since(since) < self.config.idle_timeout {
            return Some(stream);
        }
        // The rest are older still.
        idle.clear();
        None
    }

    /// Returns a fast-path socket after a complete request and a complete answer.
    pub fn checkin_raw(&self, stream: TcpStream) {
        let mut idle = self.idle_raw();
        if idle.len() < self.config.max_idle {
            idle.push((stream, Instant::now()));
        }
    }

    /// A new socket to the backend for the fast path.
    pub async fn connect_raw(&self) -> Result<TcpStream, SendError> {
        let stream = self.tcp_connect().await?;
        self.opened.fetch_add(1, Relaxed);
        Ok(stream)
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
        if conn.done || conn.sender.is_closed() || conn.write_closed.load(Relaxed) {
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
        let stale_raw: Vec<(TcpStream, Instant)> = {
            let mut idle = self.idle_raw();
            let keep = idle
                .iter()
                .position(|(_, since)| now.duration_since(*since) < self.config.idle_timeout)
                .unwrap_or(idle.len());
            idle.drain(..keep).collect()
        };
        drop(stale_raw);
    }

    async fn tcp_connect(&self) -> Result<TcpStream, SendError> {
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
        Ok(stream)
    }

    async fn connect(&self) -> Result<Conn, SendError> {
        let stream = self.tcp_connect().await?;
        let write_closed = Arc::new(AtomicBool::new(false));
        // One buffer and a plain write per request, not a `writev` of head and body parts:
        // fewer instructions for the small messages that dominate (bounded all the same by
        // hyper's maximum buffer size for large bodies).
        let (sender, connection) = http1::Builder::new()
            .writev(false)
            .handshake(Io::new(stream, Arc::clone(&write_closed)))
            .await
            .map_err(SendError::Request)?;
        self.opened.fetch_add(1, Relaxed);
        Ok(Conn {
            sender,
            driver: Box::pin(connection.with_upgrades()),
            done: false,
            write_closed,
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

/// How long the rest of a client's body is read and thrown away after an early answer, so the
/// client sees the answer instead of a reset connection (a lingering close, as nginx does).
const LINGER: Duration = Duration::from_secs(5);

/// Why a request body stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    None,
    TooLarge,
    Client,
    /// No bytes for `BODY_READ_TIMEOUT`.
    Timeout,
}

impl BodyFault {
    fn code(self) -> u8 {
        match self {
            Self::None => 0,
            Self::TooLarge => 1,
            Self::Client => 2,
            Self::Timeout => 3,
        }
    }

    fn from_code(code: u8) -> Self {
        match code {
            1 => Self::TooLarge,
            2 => Self::Client,
            3 => Self::Timeout,
            _ => Self::None,
        }
    }
}

/// A client's request body failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("no request body bytes arrived for {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Client(hyper::Error),
}

impl ClientBodyError {
    fn fault(&self) -> BodyFault {
        match self {
            Self::Timeout(_) => BodyFault::Timeout,
            Self::Client(_) => BodyFault::Client,
        }
    }
}

/// The client's request body with `BODY_READ_TIMEOUT`: the longest time the balancer waits
/// for the next bytes. Only waits count, not the time the body is not asked for (while a
/// backend is chosen or reads slowly); the timer is taken only when a wait begins.
#[derive(Debug)]
pub struct ClientBody {
    inner: Incoming,
    idle: Duration,
    waiting: Option<PooledSleep>,
    ended: bool,
}

impl ClientBody {
    pub fn new(inner: Incoming, idle: Duration) -> Self {
        let ended = inner.is_end_stream();
        Self {
            inner,
            idle,
            waiting: None,
            ended,
        }
    }

    /// The body was read to its end.
    pub fn ended(&self) -> bool {
        self.ended
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.waiting = None;
                this.ended = this.inner.is_end_stream();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.waiting = None;
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(ClientBodyError::Client(err)))),
            Poll::Pending => {
                let idle = this.idle;
                let waiting = this
                    .waiting
                    .get_or_insert_with(|| PooledSleep::until(tokio::time::Instant::now() + idle));
                match Pin::new(waiting).poll(cx) {
                    Poll::Ready(()) => {
                        this.waiting = None;
                        Poll::Ready(Some(Err(ClientBodyError::Timeout(idle))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reads the rest of a body the backend no longer wants, for at most [`LINGER`] (and
/// `BODY_READ_TIMEOUT` between bytes), then lets the client connection close.
fn linger(mut body: ClientBody) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let mut drained = 0u64;
        let _ = tokio::time::timeout(LINGER, async {
            while let Some(Ok(frame)) = body.frame().await {
                drained += frame.data_ref().map_or(0, |data| data.len() as u64);
            }
        })
        .await;
        tracing::debug!(
            drained,
            ended = body.ended(),
            "rest of a request body discarded"
        );
    });
}

/// The client's body, shared between attempts until one of them starts reading it.
#[derive(Debug)]
pub struct Slot {
    body: Mutex<Option<ClientBody>>,
    /// Frames read before streaming began (a `RETRY_ROUTES` body larger than its buffer),
    /// sent first.
    prefix: Vec<Bytes>,
    limit: u64,
    read: AtomicU64,
    fault: AtomicU8,
    ended: AtomicBool,
    hint: SizeHint,
}

impl Slot {
    fn new(body: ClientBody, prefix: Vec<Bytes>, limit: u64) -> Self {
        let before: u64 = prefix.iter().map(|chunk| chunk.len() as u64).sum();
        let rest = body.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + before);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + before);
        }
        Self {
            ended: AtomicBool::new(body.ended()),
            body: Mutex::new(Some(body)),
            prefix,
            limit,
            read: AtomicU64::new(before),
            fault: AtomicU8::new(0),
            hint,
        }
    }

    pub fn fault(&self) -> BodyFault {
        BodyFault::from_code(self.fault.load(Relaxed))
    }

    fn set_fault(&self, fault: BodyFault) {
        self.fault.store(fault.code(), Relaxed);
    }

    fn untouched(&self) -> bool {
        self.body
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }
}

/// Where each attempt's request body comes from.
#[derive(Debug)]
pub enum BodySource {
    Empty,
    /// Read in full; can be sent any number of times.
    Full(Bytes),
    /// To be read into memory, up to `limit` bytes, once its backend is chosen (so that the
    /// upload counts as in flight there); see [`BodySource::buffer`].
    Buffer {
        body: ClientBody,
        limit: u64,
    },
    /// Streamed from the client.
    Stream(Arc<Slot>),
}

impl BodySource {
    pub fn stream(body: ClientBody, limit: u64) -> Self {
        Self::Stream(Arc::new(Slot::new(body, Vec::new(), limit)))
    }

    /// The source, leaving `Empty` in its place.
    pub fn take(&mut self) -> Self {
        std::mem::replace(self, Self::Empty)
    }

    /// Whether [`BodySource::buffer`] must run before the next attempt.
    pub fn needs_buffering(&self) -> bool {
        matches!(self, Self::Buffer { .. })
    }

    /// Reads a `Buffer` body: in full when it ends within its limit, else what was read so
    /// far becomes the head of a stream (which cannot be replayed). `max_body` is
    /// `MAX_BODY_BYTES`. Other sources are returned as they are.
    pub async fn buffer(self, max_body: u64) -> Result<Self, BodyFault> {
        let Self::Buffer { mut body, limit } = self else {
            return Ok(self);
        };
        // Most bodies come in one frame: no list for them.
        let mut first: Option<Bytes> = None;
        let mut more: Vec<Bytes> = Vec::new();
        let mut len = 0u64;
        loop {
            match body.frame().await {
                None => break,
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    len += data.len() as u64;
                    if len > max_body {
                        return Err(BodyFault::TooLarge);
                    }
                    if !data.is_empty() {
                        match first {
                            None => first = Some(data),
                            Some(_) => more.push(data),
                        }
                    }
                    if len > limit {
                        let read = first.into_iter().chain(more).collect();
                        return Ok(Self::Stream(Arc::new(Slot::new(body, read, max_body))));
                    }
                }
                Some(Err(err)) => return Err(err.fault()),
            }
        }
        Ok(Self::Full(match first {
            None => Bytes::new(),
            Some(first) if more.is_empty() => first,
            Some(first) => {
                let mut joined = bytes::BytesMut::with_capacity(usize::try_from(len).unwrap_or(0));
                for chunk in std::iter::once(&first).chain(&more) {
                    joined.extend_from_slice(chunk);
                }
                joined.freeze()
            }
        }))
    }

    /// A body for the next attempt; `None` once a streamed body has been (partly) sent, or
    /// while a body waits to be buffered.
    pub fn attempt(&self) -> Option<RequestBody> {
        match self {
            Self::Empty => Some(RequestBody::Empty),
            Self::Full(bytes) => Some(RequestBody::Full(Some(bytes.clone()))),
            Self::Buffer { .. } => None,
            Self::Stream(slot) => slot.untouched().then(|| {
                RequestBody::Stream(StreamBody {
                    slot: Arc::clone(slot),
                    inner: None,
                    prefix_sent: 0,
                })
            }),
        }
    }

    /// The whole body when it was kept in memory (`None`: streamed, or not read yet).
    pub fn kept(&self) -> Option<&[u8]> {
        match self {
            Self::Empty => Some(&[]),
            Self::Full(bytes) => Some(bytes),
            _ => None,
        }
    }

    /// Whether every attempt can send the whole body again (not only after connect failures).
    pub fn replayable(&self) -> bool {
        matches!(self, Self::Empty | Self::Full(_))
    }

    /// Whether the client's body was read to its end (a streamed one may still be arriving
    /// when the backend answers).
    pub fn ended(&self) -> bool {
        match self {
            Self::Empty | Self::Full(_) => true,
            Self::Buffer { body, .. } => body.ended(),
            Self::Stream(slot) => slot.ended.load(Relaxed),
        }
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

/// A streamed client body with the size limit applied. Dropped before its end without a
/// fault (the backend answered early, or failed), the rest of the client's body is drained
/// for a while so that the client reads the answer rather than a reset.
#[derive(Debug)]
pub struct StreamBody {
    slot: Arc<Slot>,
    inner: Option<ClientBody>,
    /// Frames of the slot's prefix already sent.
    prefix_sent: usize,
}

impl Drop for StreamBody {
    fn drop(&mut self) {
        if let Some(body) = self.inner.take() {
            if !body.ended() && self.slot.fault() == BodyFault::None {
                linger(body);
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error("the request body is larger than {0} bytes")]
    TooLarge(u64),
    #[error("the client's request body failed: {0}")]
    Client(ClientBodyError),
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
            Self::Stream(stream) => {
                stream.prefix_sent >= stream.slot.prefix.len()
                    && stream.inner.as_ref().is_some_and(Body::is_end_stream)
            }
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
        if let Some(chunk) = self.slot.prefix.get(self.prefix_sent) {
            self.prefix_sent += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
        }
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
        let polled = Pin::new(&mut *inner).poll_frame(cx);
        if inner.ended() {
            self.slot.ended.store(true, Relaxed);
        }
        match polled {
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
                self.slot.set_fault(err.fault());
                Poll::Ready(Some(Err(RequestBodyError::Client(err))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
