//! The strict HTTP/1.1 fast path (issue #16): one task per client connection parses each
//! request head with `httparse` (see `h1`), runs the proxy's phases on it and drives its
//! upstream exchange inline, over plain pooled sockets: no `HeaderMap`, no hyper state, no
//! channel, no boxed future per request, the heads rewritten into one reused buffer and
//! written with vectored writes.
//!
//! It takes the common case only: keep-alive HTTP/1.1 requests with no body, or a
//! `Content-Length` or chunked body small enough to be buffered (so that a retry can send it
//! again; a chunked one is relayed as sent, extensions and trailers kept), answered with no
//! body, a `Content-Length` body, a chunked body or a body read to the close. Anything else
//! goes to hyper at a message boundary, with the bytes already read handed over
//! (`Served::Fallback`): upgrades, `Expect`, HTTP/1.0, other target forms, h2c, bodies larger
//! than the buffer (streamed by hyper), and a browser's request (one with an `Origin`) while
//! CORS is configured.
//!
//! Picking, the admission queue, retries and the retry budget, the cache, the limits, the
//! metrics and the timeouts are the proxy's own (`proxy::Shared`), as for hyper.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    sync::{Arc, atomic::Ordering::Relaxed},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header, uri::PathAndQuery};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
};

use crate::{
    backend::Backend,
    body::{InFlight, Tee},
    cache::{self, Lookup},
    cost::Job,
    dispatch::Ask,
    error::ProxyError,
    h1::{
        Framing, Limits, Parsed,
        chunked::{ChunkLimits, ChunkedDecoder},
        request::{RequestHead, parse_request},
        response::{ResponseHead, parse_response},
        rewrite::{write_request, write_response},
    },
    journal::{CacheUse, Ended, Trip, X_REQUEST_ID},
    metrics::RetryReason,
    proxy::{REPLAY_BODY_BYTES, Shared, UntilRemoved},
    retry::{Outcome, RetryPolicy, Verdict},
    route,
    serve::Drain,
    timer::{self, Elapsed},
    upstream::{Pool, SendError},
};

/// What a client connection came to.
pub(crate) enum Served {
    /// Closed: by either side, a timeout, a refusal or a drain.
    Closed,
    /// For hyper, from a message boundary: the socket with the bytes read so far.
    Fallback(Rewind),
}

/// A client socket with bytes already read from it in front (for hyper after a fallback).
pub(crate) struct Rewind {
    prefix: Vec<u8>,
    at: usize,
    stream: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(rest) = this.prefix.get(this.at..).filter(|rest| !rest.is_empty()) {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(rest.get(..n).unwrap_or_default());
            this.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Why a connection or a request goes to hyper (logged at trace level).
#[derive(Debug, Clone, Copy)]
enum Why {
    Head(crate::h1::Fallback),
    Cors,
    LargeBody,
}

impl Why {
    /// Its index in `metrics::FALLBACK_REASONS`.
    fn reason(self) -> usize {
        use crate::h1::Fallback;
        match self {
            Self::Head(Fallback::Version) => 0,
            Self::Head(Fallback::H2c) => 1,
            Self::Head(Fallback::TargetForm) => 2,
            Self::Head(Fallback::Connect) => 3,
            Self::Head(Fallback::Upgrade) => 4,
            Self::Head(Fallback::Expect) => 5,
            Self::Head(Fallback::Host) => 6,
            Self::Head(Fallback::TransferCoding) => 7,
            Self::Head(Fallback::ConnectionTokens) => 8,
            Self::Cors => 9,
            Self::LargeBody => 10,
        }
    }
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Head(why) => write!(f, "{why}"),
            Self::Cors => f.write_str("a request with an Origin while CORS is configured"),
            Self::LargeBody => f.write_str("a request body too large to buffer"),
        }
    }
}

/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 16 << 10;

/// The limits of a chunked answer's extensions and trailers.
const CHUNK_LIMITS: ChunkLimits = ChunkLimits {
    max_extension_bytes: 4096,
    max_trailer_bytes: 16 << 10,
    max_trailer_fields: 64,
};

/// Why `read_head` gives up the connection.
enum Stop {
    Closed,
    Fallback(Why),
}

/// What to do after an exchange.
enum Next {
    KeepAlive,
    Close,
}

/// One client connection on the fast path.
pub(crate) struct Connection {
    shared: Arc<Shared>,
    shard: usize,
    /// The client's address as an `X-Forwarded-For` entry.
    peer: Vec<u8>,
    stream: TcpStream,
    /// Bytes from the client not consumed yet (a head, a body, a pipelined request).
    buf: Vec<u8>,
    /// The head being written, either way.
    out: Vec<u8>,
    /// Bytes from the backend.
    answer: Vec<u8>,
    header_read_timeout: Duration,
    drain: Arc<Drain>,
}

/// A request's head as read, and how far it goes in the buffer.
struct Head {
    head: RequestHead,
    len: usize,
}

/// A backend's answer head on its socket.
struct Answered {
    stream: TcpStream,
    head: ResponseHead,
    /// The head's length in `Connection::answer`.
    len: usize,
}

impl Connection {
    pub(crate) fn new(
        shared: Arc<Shared>,
        shard: usize,
        peer: std::net::IpAddr,
        stream: TcpStream,
        header_read_timeout: Duration,
        drain: Arc<Drain>,
    ) -> Self {
        Self {
            shared,
            shard,
            peer: peer.to_string().into_bytes(),
            stream,
            buf: Vec::with_capacity(READ_CHUNK),
            out: Vec::with_capacity(1024),
            answer: Vec::new(),
            header_read_timeout,
            drain,
        }
    }

    /// Serves requests until the connection closes or a message goes to hyper.
    pub(crate) async fn serve(mut self) -> Served {
        let cors = self.shared.settings.cors != crate::cors::Cors::Off;
        loop {
            let Head { head, len } = match self.read_head().await {
                Ok(head) => head,
                Err(Stop::Closed) => return Served::Closed,
                Err(Stop::Fallback(why)) => return self.fallback(why),
            };
            // A browser's request (it names its `Origin`) with CORS configured: preflights
            // and the CORS headers are hyper's. Other clients send none and stay here.
            if cors
                && head
                    .headers
                    .as_slice()
                    .iter()
                    .any(|field| field.name.of(&self.buf).eq_ignore_ascii_case(b"origin"))
            {
                return self.fallback(Why::Cors);
            }
            let next = match head.framing {
                Framing::Length(n) if n > self.shared.settings.max_body_bytes => {
                    let error = ProxyError::BodyTooLarge(self.shared.settings.max_body_bytes);
                    let method =
                        http::Method::from_bytes(head.method.of(&self.buf)).unwrap_or_default();
                    let trip = self.trip(&head, &method, Instant::now());
                    self.fail(error, None, trip).await
                }
                _ => match self.exchange(&head, len).await {
                    Some(next) => next,
                    None => return self.fallback(Why::LargeBody),
                },
            };
            self.shared.metrics.fast_path_requests.fetch_add(1, Relaxed);
            match next {
                Next::KeepAlive => {}
                Next::Close => {
                    let _ = self.stream.shutdown().await;
                    return Served::Closed;
                }
            }
        }
    }

    fn fallback(self, why: Why) -> Served {
        tracing::trace!(%why, "to hyper");
        self.shared.metrics.fell_back(why.reason());
        Served::Fallback(Rewind {
            prefix: self.buf,
            at: 0,
            stream: self.stream,
        })
    }

    /// Reads until a whole head is buffered, within `HEADER_READ_TIMEOUT` from the start of
    /// the wait (idle keep-alive time included, as hyper counts it). `Err`: the connection
    /// is done (closed, timed out, drained, refused) or goes to hyper.
    async fn read_head(&mut self) -> Result<Head, Stop> {
        let deadline = tokio::time::Instant::now() + self.header_read_timeout;
        let limits = Limits {
            max_head_bytes: self.shared.settings.max_header_bytes,
            ..Limits::default()
        };
        loop {
            if !self.buf.is_empty() {
                match parse_request(&self.buf, limits) {
                    Ok(Parsed::Complete { head, len }) => return Ok(Head { head, len }),
                    Ok(Parsed::Partial) => {}
                    Ok(Parsed::Fallback(why)) => return Err(Stop::Fallback(Why::Head(why))),
                    Err(refusal) => {
                        self.shared.metrics.local.record(refusal.status);
                        self.shared.metrics.fast_path_requests.fetch_add(1, Relaxed);
                        let error = match refusal.status {
                            431 => ProxyError::HeadersTooLarge(limits.max_head_bytes),
                            _ => ProxyError::BadRequest(refusal.message),
                        };
                        let retry_after = self.shared.settings.retry_after_secs;
                        write_error(&mut self.out, &error, retry_after, b"");
                        let _ = self.stream.write_all(&self.out).await;
                        let _ = self.stream.shutdown().await;
                        return Err(Stop::Closed);
                    }
                }
            } else if self.drain.requested() {
                return Err(Stop::Closed);
            }
            let idle = self.buf.is_empty();
            let read = tokio::select! {
                read = timer::timeout_at(deadline, read_some(&mut self.stream, &mut self.buf)) => read,
                () = self.drain.wait(), if idle => return Err(Stop::Closed),
            };
            match read {
                Ok(Ok(0) | Err(_)) => return Err(Stop::Closed),
                Ok(Ok(_)) => {}
                Err(Elapsed) => {
                    if !idle {
                        tracing::debug!("request head not read within the header read timeout");
                    }
                    return Err(Stop::Closed);
                }
            }
        }
    }

    /// One request through the phases; `None`: its body is too large to buffer, so it goes
    /// to hyper untouched.
    async fn exchange(&mut self, head: &RequestHead, len: usize) -> Option<Next> {
        let started = Instant::now();
        let shared = Arc::clone(&self.shared);
        let settings = &shared.settings;
        let method = head.method.of(&self.buf);
        let (is_get, is_head) = (method == b"GET", method == b"HEAD");
        let idempotent_method = is_idempotent(method);
        let http_method = http::Method::from_bytes(method).ok()?;
        let mut trip = self.trip(head, &http_method, started);

        // Phase 1, admission.
        let (denied, replay_route) = {
            let target = head.target.of(&self.buf);
            let route_path = (!settings.deny_paths.is_empty() || !settings.retry_routes.is_empty())
                .then(|| {
                    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
                    route::Path::new(std::str::from_utf8(path).unwrap_or("/"))
                });
            (
                route_path
                    .as_ref()
                    .is_some_and(|path| settings.deny_paths.denies(path)),
                route_path
                    .as_ref()
                    .is_some_and(|path| settings.retry_routes.matches(&http_method, path)),
            )
        };
        if denied {
            return Some(self.fail(ProxyError::NotFound, None, trip).await);
        }
        let body_len = match head.framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        let buffer = if replay_route {
            settings.retry_buffer_bytes
        } else {
            REPLAY_BODY_BYTES
        };
        if body_len > buffer {
            return None;
        }
        let mut body_len = usize::try_from(body_len).ok()?;
        if head.framing == Framing::Chunked {
            // Read whole (up to the bound) before a backend is chosen, and relayed as sent.
            match self.read_chunked(len, buffer, started).await {
                Ok(Some(n)) => body_len = n,
                Ok(None) => return None,
                Err(error) => {
                    // The body's end is unknown: nothing after it can be read.
                    self.buf.clear();
                    self.fail(error, None, trip).await;
                    return Some(Next::Close);
                }
            }
        }

        // Phase 2, the cache.
        let mut cache_key = None;
        let lookup = match &shared.cache {
            Some(_) if is_get => lookup(&self.buf[..len], head),
            _ => Lookup::Bypass,
        };
        if let (Some(cache), Lookup::Use { static_path }) = (&shared.cache, lookup) {
            if static_path || cache.may_hold_dynamic() {
                let key = key(&self.buf, head);
                if let Some(hit) = Box::pin(cache.get(&key, lookup)).await {
                    cache.hits.fetch_add(1, Relaxed);
                    shared.metrics.local.record(hit.status.as_u16());
                    write_hit(&mut self.out, &hit, trip.id().as_bytes());
                    shared.metrics.latency.observe(started.elapsed());
                    trip.cache(CacheUse::Hit);
                    let status = hit.status.as_u16();
                    shared.journal.finish(self.shard, trip, status, None);
                    self.consume(len + body_len);
                    let close = head.connection.close || self.drain.requested();
                    if self.stream.write_all(&self.out).await.is_err() {
                        return Some(Next::Close);
                    }
                    return Some(if close { Next::Close } else { Next::KeepAlive });
                }
                cache_key = Some(key);
            }
        }
        if let Some(cache) = &shared.cache {
            if lookup != Lookup::Bypass {
                cache.misses.fetch_add(1, Relaxed);
                trip.cache(CacheUse::Miss);
            }
        }

        // Phase 3, the request as the backend sees it.
        self.out.clear();
        let id = trip.id().as_bytes();
        write_request(&self.buf, head, Some(&self.peer), id, &mut self.out);
        let idempotent = idempotent_method
            || head.headers.as_slice().iter().any(|field| {
                field
                    .name
                    .of(&self.buf)
                    .eq_ignore_ascii_case(b"idempotency-key")
            })
            || replay_route;

        // The job's cost (issue #17): by X-Cost, else by a rule on the body, read first.
        let job = match self.job(&http_method, head, len, body_len, started).await {
            Ok(job) => job,
            Err(error) => {
                self.buf.clear();
                self.fail(error, None, trip).await;
                return Some(Next::Close);
            }
        };

        // Phase 4, the attempts (the body read in full once a backend is chosen, so that a
        // retry can send it again).
        let forwarded = forward(
            &shared,
            self.shard,
            Request {
                head: &self.out,
                client: &mut self.stream,
                buf: &mut self.buf,
                body: len..len + body_len,
                is_head,
                idempotent,
            },
            &mut self.answer,
            started,
            job.as_ref(),
            &mut trip,
        )
        .await;
        let (answered, in_flight, waited) = match forwarded {
            Ok(answered) => answered,
            Err((error, backend)) => {
                // A body not read to its end leaves the connection's framing in doubt.
                let unread = self.buf.len() < len + body_len;
                self.consume(len + body_len);
                let next = self.fail(error, backend, trip).await;
                return Some(if head.connection.close || unread {
                    Next::Close
                } else {
                    next
                });
            }
        };

        // What the job cost, for the fits (issue #17).
        if let Some(job) = &job {
            let timing = field(&self.answer, &answered.head.headers, b"server-timing");
            shared.costs.learn_from(job, timing, &in_flight, waited);
        }

        // Phase 5, the answer on its way back.
        let close = head.connection.close || self.drain.requested();
        let next = self
            .respond(answered, in_flight, head, lookup, cache_key, close, trip)
            .await;
        self.consume(len + body_len);
        Some(next)
    }

    /// The request's job for the cost fits and the work queue (issue #17): by `X-Cost`, else
    /// by the first cost rule on its body, which is read in full first (it is buffered
    /// anyway: at most 64 KiB here), so that its cost is known before a backend is chosen.
    async fn job(
        &mut self,
        method: &http::Method,
        head: &RequestHead,
        len: usize,
        body_len: usize,
        started: Instant,
    ) -> Result<Option<Job>, ProxyError> {
        let costs = &self.shared.costs;
        let x_cost = field(&self.buf, &head.headers, b"x-cost");
        if x_cost.is_none() && !costs.has_rules() {
            return Ok(None);
        }
        let target = head.target.of(&self.buf);
        let path = target.split(|&b| b == b'?').next().unwrap_or_default();
        let path = std::str::from_utf8(path).unwrap_or("/");
        let wants_body = costs.wants_body(method, path);
        if x_cost.is_none() && !wants_body {
            return Ok(None);
        }
        // A valid X-Cost needs no body; a bad one falls back to the rule, which does.
        let explicit = x_cost.is_some_and(|value| crate::cost::explicit(value).is_ok());
        if wants_body && !explicit && self.buf.len() < len + body_len {
            let settings = &self.shared.settings;
            let deadline = tokio::time::Instant::from_std(started + settings.request_timeout);
            let gap = settings.body_read_timeout;
            read_body(
                &mut self.stream,
                &mut self.buf,
                len + body_len,
                gap,
                deadline,
            )
            .await?;
        }
        let raw = self.buf.get(len..len + body_len);
        let decoded = match head.framing {
            Framing::Chunked => raw.and_then(dechunk),
            _ => None,
        };
        let target = head.target.of(&self.buf);
        let path = target.split(|&b| b == b'?').next().unwrap_or_default();
        Ok(costs.job(
            method,
            std::str::from_utf8(path).unwrap_or("/"),
            field(&self.buf, &head.headers, b"x-cost"),
            decoded.as_deref().or(raw),
        ))
    }

    /// Reads a chunked request body that starts at `buf[start..]` until its end is buffered,
    /// within the body read gap and the request's deadline: `Ok(Some(n))`, its `n` bytes as
    /// sent (sizes, extensions, trailers), relayed so; `Ok(None)`: more than `bound` bytes,
    /// nothing consumed, for hyper to stream. Framing errors are 400, a decoded body over
    /// `MAX_BODY_BYTES` is 413.
    async fn read_chunked(
        &mut self,
        start: usize,
        bound: u64,
        started: Instant,
    ) -> Result<Option<usize>, ProxyError> {
        let settings = &self.shared.settings;
        let bound = usize::try_from(bound).unwrap_or(usize::MAX);
        let deadline = tokio::time::Instant::from_std(started + settings.request_timeout);
        let mut decoder = ChunkedDecoder::new(CHUNK_LIMITS);
        let mut at = start;
        loop {
            while let Some(input) = self.buf.get(at..).filter(|input| !input.is_empty()) {
                let decoded = decoder
                    .decode(input)
                    .map_err(|refusal| ProxyError::BadRequest(refusal.message))?;
                at += decoded.consumed;
                if decoder.decoded() > settings.max_body_bytes {
                    return Err(ProxyError::BodyTooLarge(settings.max_body_bytes));
                }
                if at - start > bound {
                    return Ok(None);
                }
                if decoded.done {
                    return Ok(Some(at - start));
                }
            }
            let gap = tokio::time::Instant::now() + settings.body_read_timeout;
            match timer::timeout_at(
                gap.min(deadline),
                read_some(&mut self.stream, &mut self.buf),
            )
            .await
            {
                Ok(Ok(0) | Err(_)) => return Err(ProxyError::ClientBody),
                Ok(Ok(_)) => {}
                Err(Elapsed) => return Err(ProxyError::BodyTimeout),
            }
        }
    }

    /// Drops `n` bytes of the client's buffer (a request done), keeping what follows it.
    fn consume(&mut self, n: usize) {
        let n = n.min(self.buf.len());
        self.buf.drain(..n);
    }

    /// The journey of the request `head` (issue #18), from `started`.
    fn trip(&self, head: &RequestHead, method: &http::Method, started: Instant) -> Trip {
        let id = field(&self.buf, &head.headers, b"x-request-id");
        let target = head.target.of(&self.buf);
        self.shared.journal.start(id, started, method, target)
    }

    /// Answers a failure as `handle` does for hyper: logged, counted, an error body, the
    /// request's record.
    async fn fail(&mut self, error: ProxyError, backend: Option<Arc<Backend>>, trip: Trip) -> Next {
        let started = trip.started();
        let status = error.status();
        match &backend {
            Some(backend) => {
                backend.statuses.record(status.as_u16());
                tracing::warn!(backend = %backend.dns_name, status = status.as_u16(), retryable = error.is_retryable(), cause = %error, "request failed upstream");
            }
            None => {
                self.shared.metrics.local.record(status.as_u16());
                if error.is_upstream() {
                    tracing::warn!(status = status.as_u16(), retryable = error.is_retryable(), cause = %error, "request failed");
                } else {
                    tracing::debug!(status = status.as_u16(), cause = %error, "request refused");
                }
            }
        }
        let retry_after = self.shared.settings.retry_after_secs;
        let close = write_error(&mut self.out, &error, retry_after, trip.id().as_bytes());
        self.shared.metrics.latency.observe(started.elapsed());
        let status = status.as_u16();
        self.shared
            .journal
            .finish(self.shard, trip, status, Some(&error));
        if self.stream.write_all(&self.out).await.is_err() || close {
            Next::Close
        } else {
            Next::KeepAlive
        }
    }

    /// Phase 5: the answer's head rewritten and its body relayed; the upstream socket back in
    /// its pool once both messages were complete; a copy for the cache.
    #[allow(clippy::too_many_arguments)]
    async fn respond(
        &mut self,
        answered: Answered,
        in_flight: InFlight,
        request: &RequestHead,
        lookup: Lookup,
        cache_key: Option<String>,
        close: bool,
        trip: Trip,
    ) -> Next {
        let Answered {
            mut stream,
            head,
            len,
        } = answered;
        let shared = Arc::clone(&self.shared);
        let backend = Arc::clone(in_flight.backend());
        let x_cache = match (&shared.cache, lookup) {
            (Some(_), Lookup::Use { .. } | Lookup::Refresh { .. }) => Some(&b"MISS"[..]),
            _ => None,
        };
        self.out.clear();
        write_response(
            &self.answer,
            &head,
            backend.header.as_bytes(),
            x_cache,
            trip.id().as_bytes(),
            close,
            &mut self.out,
        );
        let mut tee = match (&shared.cache, lookup) {
            (Some(cache), Lookup::Use { static_path } | Lookup::Refresh { static_path })
                if head.status == 200 =>
            {
                let buf = &self.buf;
                let key = || cache_key.or_else(|| Some(key(buf, request)));
                tee(cache, &self.answer, &head, &backend, key, static_path)
            }
            _ => None,
        };
        shared.metrics.latency.observe(trip.started().elapsed());
        shared.journal.finish(self.shard, trip, head.status, None);
        let relayed = relay(
            &mut self.stream,
            &mut stream,
            &self.out,
            &mut self.answer,
            len,
            &head,
            tee.as_mut(),
            in_flight,
            shared.settings.request_timeout,
        )
        .await;
        match relayed {
            Relayed::Complete { reusable } => {
                if let Some(tee) = tee {
                    tee.finish();
                }
                if reusable && head.reusable {
                    backend.pool(self.shard).checkin_raw(stream);
                }
                if close { Next::Close } else { Next::KeepAlive }
            }
            Relayed::Broken => Next::Close,
        }
    }
}

/// Reads what the socket has into the spare room of `buf`.
async fn read_some(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    buf.reserve(READ_CHUNK);
    stream.read_buf(buf).await
}

/// The value of the first field named `name` (lowercase) in a head read into `buf`.
fn field<'b>(buf: &'b [u8], headers: &crate::h1::HeaderIndex, name: &[u8]) -> Option<&'b [u8]> {
    headers
        .as_slice()
        .iter()
        .find(|field| field.name.of(buf).eq_ignore_ascii_case(name))
        .map(|field| field.value.of(buf))
}

/// The data of a whole chunked body (checked when it was read).
fn dechunk(raw: &[u8]) -> Option<Vec<u8>> {
    let mut decoder = ChunkedDecoder::new(CHUNK_LIMITS);
    let mut data = Vec::new();
    let mut at = 0usize;
    while !decoder.is_done() {
        let input = raw.get(at..).filter(|input| !input.is_empty())?;
        let decoded = decoder.decode(input).ok()?;
        if decoded.consumed == 0 {
            return None;
        }
        data.extend_from_slice(input.get(decoded.data).unwrap_or_default());
        at += decoded.consumed;
    }
    Some(data)
}

/// `GET`, `HEAD`, `PUT`, `DELETE`, `OPTIONS`, `TRACE` (RFC 9110 section 9.2.2).
fn is_idempotent(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"PUT" | b"DELETE" | b"OPTIONS" | b"TRACE"
    )
}

/// The cache's view of a GET: only the fields it reads are copied into a `HeaderMap`.
fn lookup(buf: &[u8], head: &RequestHead) -> Lookup {
    let mut headers = HeaderMap::new();
    for field in head.headers.as_slice() {
        let name = field.name.of(buf);
        for wanted in [header::AUTHORIZATION, header::CACHE_CONTROL, header::PRAGMA] {
            if name.eq_ignore_ascii_case(wanted.as_str().as_bytes()) {
                if let Ok(value) = HeaderValue::from_bytes(field.value.of(buf)) {
                    headers.append(wanted, value);
                }
            }
        }
    }
    let target = head.target.of(buf);
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    cache::lookup_path(&http::Method::GET, path, &headers)
}

/// The cache key of a request, as the hyper path makes it.
fn key(buf: &[u8], head: &RequestHead) -> String {
    let host = HeaderValue::from_bytes(head.host.of(buf)).ok();
    let path = PathAndQuery::try_from(head.target.of(buf))
        .unwrap_or_else(|_| PathAndQuery::from_static("/"));
    cache::key(host.as_ref(), &path)
}

/// A copy of a 200 answer for the cache, if it may be stored.
fn tee(
    cache: &cache::Cache,
    buf: &[u8],
    head: &ResponseHead,
    backend: &Backend,
    key: impl FnOnce() -> Option<String>,
    static_path: bool,
) -> Option<Tee> {
    if let Framing::Length(n) = head.framing {
        if n > cache.max_entry_bytes() {
            return None;
        }
    }
    // Outside static paths only a `Cache-Control` makes an answer storable: most answers
    // are refused here, before a `HeaderMap` or a key is made.
    if !static_path
        && !head
            .headers
            .as_slice()
            .iter()
            .any(|field| field.name.of(buf).eq_ignore_ascii_case(b"cache-control"))
    {
        return None;
    }
    let mut headers = HeaderMap::new();
    for field in head.headers.as_slice() {
        let name = field.name.of(buf);
        if crate::h1::rewrite::is_hop_by_hop(name)
            || head.connection.names(buf, name)
            || name.eq_ignore_ascii_case(b"x-backend")
        {
            continue;
        }
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(field.value.of(buf)),
        ) else {
            return None;
        };
        headers.append(name, value);
    }
    headers.insert(crate::headers::X_BACKEND, backend.header.clone());
    let status = StatusCode::from_u16(head.status).ok()?;
    let ttl = cache::storable(static_path, status, &headers, cache.default_ttl())?;
    Some(Tee::new(
        cache.clone(),
        key()?,
        status,
        headers,
        ttl,
        static_path,
    ))
}

/// A request on its way to a backend.
struct Request<'a> {
    /// Its head as the backend sees it.
    head: &'a [u8],
    /// The client, to read the body from.
    client: &'a mut TcpStream,
    /// The client's bytes; the body is `buf[body]` once read.
    buf: &'a mut Vec<u8>,
    body: std::ops::Range<usize>,
    is_head: bool,
    idempotent: bool,
}

/// Reads until `buf` holds `upto` bytes (a head and its body), within `gap` between reads
/// and by `deadline`.
async fn read_body(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    upto: usize,
    gap: Duration,
    deadline: tokio::time::Instant,
) -> Result<(), ProxyError> {
    while buf.len() < upto {
        let next = tokio::time::Instant::now() + gap;
        match timer::timeout_at(next.min(deadline), read_some(client, buf)).await {
            Ok(Ok(0) | Err(_)) => return Err(ProxyError::ClientBody),
            Ok(Ok(_)) => {}
            Err(Elapsed) => return Err(ProxyError::BodyTimeout),
        }
    }
    Ok(())
}

/// The attempts under the request's retry policy (as `Shared::forward`), until an answer's
/// head or a failure. The body is read once the first backend is chosen: an upload counts as
/// in flight on it all along.
async fn forward(
    shared: &Shared,
    shard: usize,
    request: Request<'_>,
    answer: &mut Vec<u8>,
    started: Instant,
    job: Option<&Job>,
    trip: &mut Trip,
) -> Result<(Answered, InFlight, Duration), (ProxyError, Option<Arc<Backend>>)> {
    let Request {
        head,
        client,
        buf,
        body,
        is_head,
        idempotent,
    } = request;
    let deadline = tokio::time::Instant::from_std(started + shared.settings.request_timeout);
    shared.budget.deposit(shared.clock.nanos(started));
    let mut retry = RetryPolicy::new(idempotent);
    let mut now = shared.clock.nanos(started);
    let ask = Ask {
        work_us: job.map_or(0, |job| shared.costs.expected_us(job)),
        bytes: (head.len() + body.len()) as u64,
    };
    loop {
        let acquired = acquire_watching(shared, retry.tried(), now, ask, client).await;
        let (in_flight, others) = match acquired {
            Ok(Some(acquired)) => acquired,
            Ok(None) => return Err((retry.take_error(), None)),
            Err(error) => return Err((error, None)),
        };
        let backend = Arc::clone(in_flight.backend());
        if buf.len() < body.end {
            let gap = shared.settings.body_read_timeout;
            if let Err(error) = read_body(client, buf, body.end, gap, deadline).await {
                return Err((error, None));
            }
        }
        let body = buf.get(body.clone()).unwrap_or_default();
        retry.sent_to(&backend, true, others);
        let sent = Instant::now();
        trip.sent(&backend.identity, sent);
        let outcome = {
            let pool = backend.pool(shard);
            let mut send = std::pin::pin!(timer::timeout_at(
                deadline,
                send_once(pool, head, body, answer, is_head)
            ));
            if retry.may_resend() {
                let until = UntilRemoved::new(send.as_mut(), backend.removed(shard), || {
                    shared.leave(&mut retry)
                });
                match until.await {
                    Some(outcome) => outcome,
                    None => {
                        now = shared.clock.now();
                        let retried = Verdict::Retry(RetryReason::Removed);
                        trip.ended(Ended::Removed, 0, Some(retried));
                        tracing::debug!(backend = %backend.dns_name, "backend left the table while its answer was awaited; retrying on another backend");
                        continue;
                    }
                }
            } else {
                send.await
            }
        };
        match outcome {
            Err(Elapsed) => {
                trip.ended(Ended::Timeout, 0, None);
                in_flight.failed();
                shared.metrics.timeouts.fetch_add(1, Relaxed);
                let timeout = ProxyError::Timeout(shared.settings.request_timeout);
                return Err((timeout, Some(backend)));
            }
            Ok(Err(err)) => {
                in_flight.failed();
                drop(in_flight);
                now = shared.clock.now();
                shared.send_failed(&backend, &err, now);
                let ended = Ended::of(&err);
                let verdict = retry.decide(Outcome::Failed(err), &shared.budget, now);
                trip.ended(ended, 0, Some(verdict));
                if shared.tally(verdict) {
                    continue;
                }
                return Err((retry.take_error(), Some(backend)));
            }
            Ok(Ok(answered)) => {
                let status =
                    StatusCode::from_u16(answered.head.status).unwrap_or(StatusCode::BAD_GATEWAY);
                now = shared.answered(&backend, sent, status);
                let verdict = matches!(
                    status,
                    StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
                )
                .then(|| retry.decide(Outcome::Unavailable, &shared.budget, now));
                trip.ended(Ended::Answered, status.as_u16(), verdict);
                if verdict.is_some_and(|verdict| shared.tally(verdict)) {
                    in_flight.failed();
                    tracing::debug!(backend = %backend.dns_name, status = status.as_u16(), "retrying on another backend");
                    continue;
                }
                if status.is_server_error() {
                    in_flight.failed();
                }
                return Ok((answered, in_flight, sent.elapsed()));
            }
        }
    }
}

/// A slot for the next attempt (see `Shared::acquire`), watching the client meanwhile: one
/// that closes its connection while its request waits for a slot gives its place up (its
/// waiting future is dropped, which takes it off the queue). Most requests get a slot at
/// once, without a look at the client.
async fn acquire_watching(
    shared: &Shared,
    tried: &crate::policy::Tried,
    now: u64,
    ask: Ask,
    client: &TcpStream,
) -> Result<Option<(InFlight, bool)>, ProxyError> {
    let acquire = shared.acquire(tried, now, ask);
    tokio::pin!(acquire);
    let mut watching = true;
    loop {
        tokio::select! {
            biased;
            acquired = &mut acquire => return acquired,
            gone = client_gone(client), if watching => {
                if gone {
                    return Err(ProxyError::ClientGone);
                }
                // More bytes (a body still arriving, a pipelined request): not a goodbye.
                watching = false;
            }
        }
    }
}

/// Resolves when the client's socket is readable: `true` when it reached its end (the
/// client closed or half-closed it) or failed.
async fn client_gone(client: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(client.peek(&mut probe).await, Ok(0) | Err(_))
}

/// Sends one request on a pooled socket (or a new one) and reads the answer's head into
/// `answer`. A pooled socket that fails before any byte of an answer arrived was closed by
/// the backend while idle: the request goes on a new one.
async fn send_once(
    pool: &Arc<Pool>,
    head: &[u8],
    body: &[u8],
    answer: &mut Vec<u8>,
    is_head: bool,
) -> Result<Answered, SendError> {
    let limits = Limits::default();
    loop {
        let (mut stream, reused) = match pool.checkout_raw() {
            Some(stream) => (stream, true),
            None => (pool.connect_raw().await?, false),
        };
        answer.clear();
        if let Err(err) = write_all_vectored(&mut stream, &[head, body]).await {
            if reused {
                continue;
            }
            return Err(SendError::Io(err));
        }
        // Whether any byte of an answer arrived (then the request is not sent again here).
        let mut heard = false;
        loop {
            if !answer.is_empty() {
                match parse_response(answer, limits, is_head) {
                    Ok(Parsed::Partial) => {}
                    Ok(Parsed::Complete { head, len }) if head.interim => {
                        // 1xx: not relayed (as hyper's client); the final answer follows,
                        // maybe already in the buffer.
                        answer.drain(..len);
                        continue;
                    }
                    Ok(Parsed::Complete { head, len }) => {
                        return Ok(Answered { stream, head, len });
                    }
                    Ok(Parsed::Fallback(why)) => {
                        tracing::debug!(%why, "an answer the fast path does not relay");
                        return Err(SendError::Answer(crate::h1::Refusal::bad_gateway(
                            "the backend's answer is framed in a way this proxy does not relay",
                        )));
                    }
                    Err(refusal) => return Err(SendError::Answer(refusal)),
                }
            }
            match read_some(&mut stream, answer).await {
                Ok(0) | Err(_) if reused && !heard => break,
                Ok(0) => {
                    return Err(SendError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the backend closed the connection before a whole answer head",
                    )));
                }
                Err(err) => return Err(SendError::Io(err)),
                Ok(_) => heard = true,
            }
        }
        tracing::trace!("idle upstream connection was closed");
    }
}

/// Writes every byte of `parts`, vectored.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    writer: &mut W,
    parts: &[&[u8]],
) -> io::Result<()> {
    let mut part = 0usize;
    let mut offset = 0usize;
    while part < parts.len() {
        let mut slices: [IoSlice<'_>; 4] = [IoSlice::new(&[]); 4];
        let mut count = 0usize;
        for (i, bytes) in parts.iter().enumerate().skip(part).take(slices.len()) {
            let from = if i == part { offset } else { 0 };
            if let (Some(slot), Some(rest)) = (slices.get_mut(count), bytes.get(from..)) {
                *slot = IoSlice::new(rest);
                count += 1;
            }
        }
        let written = writer
            .write_vectored(slices.get(..count).unwrap_or_default())
            .await?;
        if written == 0 {
            if parts.iter().skip(part).all(|bytes| bytes.is_empty()) {
                return Ok(());
            }
            return Err(io::ErrorKind::WriteZero.into());
        }
        let mut left = written;
        while part < parts.len() {
            let rest = parts.get(part).map_or(0, |bytes| bytes.len() - offset);
            if left < rest {
                offset += left;
                break;
            }
            left -= rest;
            part += 1;
            offset = 0;
            if left == 0 {
                break;
            }
        }
        // Skip empty parts so the loop ends.
        while parts.get(part).is_some_and(|bytes| bytes.len() == offset) {
            part += 1;
            offset = 0;
        }
    }
    Ok(())
}

/// How an answer's relay ended.
enum Relayed {
    /// Both sides done; `reusable`: the backend's socket holds no byte past the answer.
    Complete { reusable: bool },
    /// A side failed or timed out: both sockets are dropped.
    Broken,
}

/// Writes the rewritten head and relays the body, framed as the backend framed it (a body
/// read to the close is re-chunked). `answer[len..]` holds the body bytes read with the head.
#[allow(clippy::too_many_arguments)]
async fn relay(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    head_out: &[u8],
    answer: &mut Vec<u8>,
    len: usize,
    head: &ResponseHead,
    mut tee: Option<&mut Tee>,
    in_flight: InFlight,
    idle: Duration,
) -> Relayed {
    // Released once the backend's answer is read whole, before its last bytes go to the
    // client (as the hyper path's body does): a client that has the whole answer never sees
    // the request still in flight.
    let mut in_flight = Some(in_flight);
    let early = answer.get(len..).unwrap_or_default().len();
    match head.framing {
        Framing::None => {
            in_flight.take();
            if write_all_vectored(client, &[head_out]).await.is_err() {
                return Relayed::Broken;
            }
            Relayed::Complete {
                reusable: early == 0,
            }
        }
        Framing::Length(total) => {
            let first = usize::try_from(total).unwrap_or(usize::MAX).min(early);
            let extra = early > first;
            let body = answer.get(len..len + first).unwrap_or_default();
            if let Some(tee) = tee.as_deref_mut() {
                tee.push_slice(body);
            }
            if first as u64 == total {
                in_flight.take();
            }
            if write_all_vectored(client, &[head_out, body]).await.is_err() {
                return Relayed::Broken;
            }
            let mut left = total - first as u64;
            while left > 0 {
                answer.clear();
                match timer::timeout_at(
                    tokio::time::Instant::now() + idle,
                    read_some(upstream, answer),
                )
                .await
                {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return Relayed::Broken,
                }
                let take = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(answer.len());
                let chunk = answer.get(..take).unwrap_or_default();
                if let Some(tee) = tee.as_deref_mut() {
                    tee.push_slice(chunk);
                }
                if take as u64 == left {
                    in_flight.take();
                }
                if client.write_all(chunk).await.is_err() {
                    return Relayed::Broken;
                }
                left -= take as u64;
                if take < answer.len() {
                    return Relayed::Complete { reusable: false };
                }
            }
            Relayed::Complete { reusable: !extra }
        }
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::new(CHUNK_LIMITS);
            if client.write_all(head_out).await.is_err() {
                return Relayed::Broken;
            }
            let mut from = len;
            loop {
                let input = answer.get(from..).unwrap_or_default();
                let mut at = 0usize;
                while at < input.len() && !decoder.is_done() {
                    let Ok(decoded) = decoder.decode(input.get(at..).unwrap_or_default()) else {
                        return Relayed::Broken;
                    };
                    if let Some(tee) = tee.as_deref_mut() {
                        let data = input
                            .get(at..)
                            .and_then(|rest| rest.get(decoded.data.clone()));
                        tee.push_slice(data.unwrap_or_default());
                    }
                    if decoded.consumed == 0 {
                        break;
                    }
                    at += decoded.consumed;
                }
                if decoder.is_done() {
                    in_flight.take();
                }
                // The bytes as the backend sent them: the framing is the same.
                if client
                    .write_all(input.get(..at).unwrap_or_default())
                    .await
                    .is_err()
                {
                    return Relayed::Broken;
                }
                if decoder.is_done() {
                    return Relayed::Complete {
                        reusable: at == input.len(),
                    };
                }
                // Keep an incomplete chunk line for the next read.
                answer.drain(..from + at);
                from = 0;
                match timer::timeout_at(
                    tokio::time::Instant::now() + idle,
                    read_some(upstream, answer),
                )
                .await
                {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return Relayed::Broken,
                }
            }
        }
        Framing::ReadToClose => {
            if client.write_all(head_out).await.is_err() {
                return Relayed::Broken;
            }
            let mut from = len;
            loop {
                let data = answer.get(from..).unwrap_or_default();
                if !data.is_empty() {
                    if let Some(tee) = tee.as_deref_mut() {
                        tee.push_slice(data);
                    }
                    let size = format!("{:x}\r\n", data.len());
                    if write_all_vectored(client, &[size.as_bytes(), data, b"\r\n"])
                        .await
                        .is_err()
                    {
                        return Relayed::Broken;
                    }
                }
                answer.clear();
                from = 0;
                match timer::timeout_at(
                    tokio::time::Instant::now() + idle,
                    read_some(upstream, answer),
                )
                .await
                {
                    Ok(Ok(0)) => break,
                    Ok(Ok(_)) => {}
                    _ => return Relayed::Broken,
                }
            }
            in_flight.take();
            if client.write_all(b"0\r\n\r\n").await.is_err() {
                return Relayed::Broken;
            }
            Relayed::Complete { reusable: false }
        }
    }
}

/// An error answer as `ProxyError::into_response` makes it; whether the connection closes.
fn write_error(out: &mut Vec<u8>, error: &ProxyError, retry_after_secs: u64, id: &[u8]) -> bool {
    let status = error.status();
    let body = common::ErrorBody::new(error.to_string()).to_json();
    out.clear();
    status_line(out, status);
    request_id(out, id);
    out.extend_from_slice(b"content-type: application/json\r\ncontent-length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    if error.retry_after() {
        out.extend_from_slice(b"retry-after: ");
        out.extend_from_slice(retry_after_secs.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let close = error.closes_connection();
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    close
}

/// A cached answer, as the hyper path serves it: its headers, `X-Cache: HIT`, `Age`.
fn write_hit(out: &mut Vec<u8>, hit: &cache::Cached, id: &[u8]) {
    out.clear();
    status_line(out, hit.status);
    request_id(out, id);
    for (name, value) in &hit.headers {
        if name == header::CONTENT_LENGTH
            || name == crate::headers::X_CACHE
            || name == header::AGE
            || name == X_REQUEST_ID
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"x-cache: HIT\r\nage: ");
    out.extend_from_slice(hit.age().as_secs().to_string().as_bytes());
    out.extend_from_slice(b"\r\ncontent-length: ");
    out.extend_from_slice(hit.body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&hit.body);
}

/// The request's id field (absent for a refusal before the request's head was read).
fn request_id(out: &mut Vec<u8>, id: &[u8]) {
    if !id.is_empty() {
        out.extend_from_slice(b"x-request-id: ");
        out.extend_from_slice(id);
        out.extend_from_slice(b"\r\n");
    }
}

fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}
