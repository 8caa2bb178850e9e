//! The response body: a backend's answer streamed through frame by frame (holding the
//! backend's in-flight slot until the last frame is sent or the client goes away), or a small
//! body the balancer made itself (errors, cache hits).

use std::{
    pin::Pin,
    sync::{Arc, atomic::Ordering::Relaxed},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::{
    backend::Backend,
    cache::{Cache, Cached},
    upstream::Lease,
};

/// Holds a backend's in-flight slot; releasing it counts the request as completed. Taken when
/// the backend is chosen, before the request body is read, and released when the answer is
/// finished (or the client leaves): an upload counts as in flight all along, for the policies,
/// the load reports and the agent's drain. An answer that ends before the upload also ends
/// the upload (its upstream connection is never reused, see `BodySource::ended`).
#[derive(Debug)]
pub struct InFlight {
    backend: Arc<Backend>,
    /// Its expected seconds, in microseconds (0 without a cost).
    work_us: u64,
    /// Whether it was sent while its backend had a thread to spare: its response time is
    /// then its service time, worth learning (issue #17).
    alone: bool,
    /// Granted to a request that went away before sending: not counted as completed.
    abandoned: bool,
}

impl InFlight {
    /// In flight on `backend`, whatever its limit (a WebSocket or a backend without one).
    pub fn start(backend: Arc<Backend>, work_us: u64) -> Self {
        let before = backend.take_slot_anyway(work_us);
        Self::new(backend, work_us, before)
    }

    /// In flight on `backend` if it has a free slot.
    pub fn reserve(backend: &Arc<Backend>, work_us: u64) -> Option<Self> {
        let before = backend.take_slot(work_us)?;
        Some(Self::new(Arc::clone(backend), work_us, before))
    }

    fn new(backend: Arc<Backend>, work_us: u64, before: u64) -> Self {
        let alone = before < backend.slots().max(1);
        Self {
            backend,
            work_us,
            alone,
            abandoned: false,
        }
    }

    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    /// Whether it went out while its backend had room: nothing waited before it there.
    pub fn alone(&self) -> bool {
        self.alone
    }

    /// Counts an error against the backend (the request still completes when dropped).
    pub fn failed(&self) {
        self.backend.errors.fetch_add(1, Relaxed);
    }

    /// Gives the slot back without counting a completed request (its request went away).
    pub fn abandon(mut self) {
        self.abandoned = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.abandoned {
            self.backend.completed.fetch_add(1, Relaxed);
        }
        self.backend.give_slot(self.work_us);
    }
}

/// A cacheable answer being copied on its way to the client; stored when it ends.
pub struct Tee {
    cache: Cache,
    key: String,
    status: StatusCode,
    headers: HeaderMap,
    ttl: Duration,
    static_path: bool,
    chunks: Vec<Bytes>,
    len: u64,
}

impl Tee {
    pub fn new(
        cache: Cache,
        key: String,
        status: StatusCode,
        headers: HeaderMap,
        ttl: Duration,
        static_path: bool,
    ) -> Self {
        Self {
            cache,
            key,
            status,
            headers,
            ttl,
            static_path,
            chunks: Vec::new(),
            len: 0,
        }
    }

    /// Keeps a copy of `data`; `false` when the body outgrew the entry limit.
    fn push(&mut self, data: &Bytes) -> bool {
        self.len += data.len() as u64;
        if self.len > self.cache.max_entry_bytes() {
            self.chunks.clear();
            return false;
        }
        self.chunks.push(data.clone());
        true
    }

    /// Keeps a copy of `data` (the fast path's bytes); past the entry limit the copy is
    /// given up and `finish` stores nothing.
    pub(crate) fn push_slice(&mut self, data: &[u8]) {
        if self.len <= self.cache.max_entry_bytes() {
            let _ = self.push(&Bytes::copy_from_slice(data));
        }
    }

    /// Stores the copy, unless the body outgrew the entry limit.
    pub(crate) fn finish(self) {
        if self.len > self.cache.max_entry_bytes() {
            return;
        }
        let mut body = BytesMut::with_capacity(usize::try_from(self.len).unwrap_or(0));
        for chunk in &self.chunks {
            body.extend_from_slice(chunk);
        }
        let cached = Cached {
            status: self.status,
            headers: self.headers,
            body: body.freeze(),
            stored: Instant::now(),
            ttl: self.ttl,
        };
        let (cache, key, static_path) = (self.cache, self.key, self.static_path);
        tokio::spawn(async move { cache.insert(key, cached, static_path).await });
    }
}

/// The body of every answer the balancer sends.
pub struct ResponseBody {
    kind: Kind,
}

enum Kind {
    Full(Option<Bytes>),
    Upstream {
        inner: Incoming,
        lease: Option<Lease>,
        in_flight: Option<InFlight>,
        tee: Option<Box<Tee>>,
    },
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Full(_) => f.write_str("ResponseBody::Full"),
            Kind::Upstream { .. } => f.write_str("ResponseBody::Upstream"),
        }
    }
}

impl ResponseBody {
    pub fn full(bytes: Bytes) -> Self {
        Self {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
        }
    }

    pub fn empty() -> Self {
        Self {
            kind: Kind::Full(None),
        }
    }

    pub fn upstream(
        inner: Incoming,
        lease: Lease,
        in_flight: InFlight,
        tee: Option<Box<Tee>>,
    ) -> Self {
        let mut body = Self {
            kind: Kind::Upstream {
                inner,
                lease: Some(lease),
                in_flight: Some(in_flight),
                tee,
            },
        };
        // An empty answer (e.g. 204, or Content-Length: 0) is complete at once.
        if let Kind::Upstream {
            inner,
            lease,
            in_flight,
            tee,
        } = &mut body.kind
        {
            if inner.is_end_stream() {
                finish(lease, in_flight, tee);
            }
        }
        body
    }
}

/// The answer was read to its end: the connection goes back to the pool, the copy to the
/// cache, the in-flight slot is released.
fn finish(lease: &mut Option<Lease>, in_flight: &mut Option<InFlight>, tee: &mut Option<Box<Tee>>) {
    if let Some(mut lease) = lease.take() {
        lease.release();
    }
    if let Some(tee) = tee.take() {
        tee.finish();
    }
    in_flight.take();
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream {
                inner,
                lease,
                in_flight,
                tee,
            } => {
                // The connection is driven only when the body has nothing buffered.
                let mut polled = Pin::new(&mut *inner).poll_frame(cx);
                if polled.is_pending() {
                    if let Some(lease) = lease {
                        lease.drive(cx);
                    }
                    polled = Pin::new(&mut *inner).poll_frame(cx);
                }
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let (Some(data), Some(copy)) = (frame.data_ref(), tee.as_mut()) {
                            if !copy.push(data) {
                                tee.take();
                            }
                        }
                        if inner.is_end_stream() {
                            finish(lease, in_flight, tee);
                        }
                    }
                    Poll::Ready(None) => finish(lease, in_flight, tee),
                    Poll::Ready(Some(Err(err))) => {
                        tracing::debug!(cause = %err, "backend's answer broke off");
                        tee.take();
                        lease.take();
                        if let Some(slot) = in_flight.take() {
                            slot.failed();
                        }
                    }
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}
