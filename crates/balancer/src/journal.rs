//! Following a request (issue #18): its id, the record of its attempts, the ring of recent
//! requests the admin port serves (`REQUEST_HISTORY`) and the access log line.
//!
//! - **The id**: the client's `X-Request-Id` when it is well formed (1 to 128 bytes of
//!   `A-Z a-z 0-9 . _ : -`), else one made here (32 hex digits). Another value is never
//!   echoed nor forwarded. The backend receives it, the client gets it back on every answer.
//! - **The trip**: one per request, on its connection's task: each attempt with its backend,
//!   when it started and how long it took, how it ended and whether the retry policy sent the
//!   request again and why.
//! - **The history**: once answered, a trip becomes a `Record` in its traffic thread's ring
//!   (one mutex per thread, never contended by another traffic thread; the admin port reads
//!   them). `REQUEST_HISTORY` records in all, split over the threads; 0 keeps none.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use http::{HeaderName, HeaderValue, Method};
use serde::Serialize;
use serde_json::{Value, json};
use smallvec::SmallVec;

use crate::{error::ProxyError, retry::Verdict, upstream::SendError};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client id taken.
pub const MAX_ID_BYTES: usize = common::request_id::MAX_LEN;

/// A record keeps at most this much of the request's target.
const MAX_PATH_BYTES: usize = 512;

/// Records `GET /requests` returns at most.
pub const MAX_LIST: usize = 1000;

pub use common::request_id::well_formed;

/// A backend as the records name it, shared by its attempts (a record never keeps the
/// backend itself, nor its connections, alive).
#[derive(Debug, Serialize)]
pub struct Identity {
    /// The container id (the address for a static backend).
    pub id: String,
    pub name: String,
    pub address: String,
}

/// How the cache took part in a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    /// Not a request the cache serves (or no cache).
    Bypass,
    Hit,
    Miss,
}

impl CacheUse {
    fn label(self) -> &'static str {
        match self {
            Self::Bypass => "bypass",
            Self::Hit => "hit",
            Self::Miss => "miss",
        }
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Still awaited when the request ended (the client left).
    Open,
    /// The backend's answer head arrived (whatever its status).
    Answered,
    /// No connection to the backend.
    ConnectFailed,
    /// The connection failed after the request was (maybe) sent.
    Reset,
    /// The backend's answer could not be relayed.
    BadAnswer,
    /// The request's deadline passed.
    Timeout,
    /// The backend left the routing table while its answer was awaited.
    Removed,
}

impl Ended {
    /// How a failed send ended.
    pub fn of(err: &SendError) -> Self {
        match err {
            SendError::Connect(_) => Self::ConnectFailed,
            SendError::Answer(_) => Self::BadAnswer,
            SendError::Request(_) | SendError::Io(_) => Self::Reset,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Answered => "answered",
            Self::ConnectFailed => "connect_failed",
            Self::Reset => "reset",
            Self::BadAnswer => "bad_answer",
            Self::Timeout => "timeout",
            Self::Removed => "removed",
        }
    }
}

/// A request's attempts: nearly always one, kept inline.
type Attempts = SmallVec<[Attempt; 1]>;

/// One attempt of a request.
#[derive(Debug)]
struct Attempt {
    backend: Arc<Identity>,
    /// From the request's start to the attempt's send.
    after_us: u64,
    /// From its send to its end (0 while open).
    took_us: u64,
    /// The backend's status (0: none).
    status: u16,
    ended: Ended,
    /// Why the request went on to another attempt; "denied" when the retry budget was spent.
    retry: Option<&'static str>,
}

/// A request's target as kept: inline up to 48 bytes.
type Path = SmallVec<[u8; 48]>;

/// Bytes in an id made here.
pub const MADE_ID_LEN: usize = 32;

/// A request's id: one made here (kept inline) or the client's (well formed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestId {
    Made([u8; MADE_ID_LEN]),
    Given(Box<[u8]>),
}

impl RequestId {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Made(id) => id,
            Self::Given(id) => id,
        }
    }

    /// As a header field's value (for hyper's path); any id taken or made is one.
    pub fn to_header(&self) -> HeaderValue {
        HeaderValue::from_bytes(self.as_bytes()).unwrap_or_else(|_| HeaderValue::from_static("0"))
    }
}

/// A request's journey while it runs.
#[derive(Debug)]
pub struct Trip {
    id: RequestId,
    method: Method,
    /// Its target, cut at `MAX_PATH_BYTES` (empty when neither the history nor the access
    /// log wants it); as received, made text only when shown. Most targets fit inline.
    path: Path,
    started: Instant,
    at_ms: u64,
    cache: CacheUse,
    attempts: Attempts,
}

impl Trip {
    /// The request's id, as forwarded and answered.
    pub fn id(&self) -> &RequestId {
        &self.id
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn cache(&mut self, cache: CacheUse) {
        self.cache = cache;
    }

    /// An attempt is sent to `backend` at `at`.
    pub fn sent(&mut self, backend: &Arc<Identity>, at: Instant) {
        self.attempts.push(Attempt {
            backend: Arc::clone(backend),
            after_us: micros(at.saturating_duration_since(self.started)),
            took_us: 0,
            status: 0,
            ended: Ended::Open,
            retry: None,
        });
    }

    /// The last attempt ended now, as `ended` with `status` (0: none); `verdict`: the retry
    /// policy's word on it, if it was asked.
    pub fn ended(&mut self, ended: Ended, status: u16, verdict: Option<Verdict>) {
        let now = micros(self.started.elapsed());
        if let Some(attempt) = self.attempts.last_mut() {
            attempt.took_us = now.saturating_sub(attempt.after_us);
            attempt.status = status;
            attempt.ended = ended;
            attempt.retry = match verdict {
                Some(Verdict::Retry(reason)) => Some(reason.label()),
                Some(Verdict::Denied) => Some("denied"),
                Some(Verdict::GiveUp) | None => None,
            };
        }
    }
}

/// Request ids made here: 128 bits from a counter and two per-process salts, mixed
/// (splitmix64), as 32 hex digits. Unique within the process, unguessable enough to be no
/// key to anything (they are not secrets).
#[derive(Debug)]
pub struct Ids {
    counter: AtomicU64,
    salts: [u64; 2],
}

impl Ids {
    pub fn new(seed: u64) -> Self {
        Self {
            counter: AtomicU64::new(0),
            salts: [mix(seed), mix(seed ^ 0x5bd1_e995_5bd1_e995)],
        }
    }

    pub fn next(&self) -> [u8; MADE_ID_LEN] {
        let n = self.counter.fetch_add(1, Relaxed);
        let mut out = [0u8; MADE_ID_LEN];
        for (digits, salt) in out.chunks_exact_mut(16).zip(self.salts) {
            let word = mix(n ^ salt);
            for (eight, half) in digits.chunks_exact_mut(8).zip([word >> 32, word]) {
                eight.copy_from_slice(&hex8(half as u32));
            }
        }
        out
    }
}

/// The 8 lowercase hex digits of `value`, all at once: each nibble spread into a byte of its
/// own, then turned into its digit (`'0' + n`, and 39 more from 10 on, to reach `'a'`).
fn hex8(value: u32) -> [u8; 8] {
    let mut x = u64::from(value);
    x = (x | (x << 16)) & 0x0000_FFFF_0000_FFFF;
    x = (x | (x << 8)) & 0x00FF_00FF_00FF_00FF;
    x = (x | (x << 4)) & 0x0F0F_0F0F_0F0F_0F0F;
    let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    (x + 0x3030_3030_3030_3030 + letters * 39).to_be_bytes()
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A request once answered.
#[derive(Debug)]
struct Record {
    /// Orders records across the rings.
    seq: u64,
    id: RequestId,
    method: Method,
    path: Path,
    status: u16,
    at_ms: u64,
    latency_us: u64,
    cache: CacheUse,
    /// The balancer's reason when it answered the error itself.
    error: Option<Box<str>>,
    attempts: Attempts,
}

impl Record {
    fn to_json(&self) -> Value {
        let attempts: Vec<Value> = self
            .attempts
            .iter()
            .map(|attempt| {
                json!({
                    "backend": attempt.backend.id,
                    "name": attempt.backend.name,
                    "address": attempt.backend.address,
                    "started_at_ms": self.at_ms + attempt.after_us / 1000,
                    "after_ms": attempt.after_us as f64 / 1000.0,
                    "duration_ms": attempt.took_us as f64 / 1000.0,
                    "status": (attempt.status != 0).then_some(attempt.status),
                    "outcome": attempt.ended.label(),
                    "retry": attempt.retry,
                })
            })
            .collect();
        let mut backends: Vec<&str> = Vec::with_capacity(self.attempts.len());
        for attempt in &self.attempts {
            if !backends.contains(&attempt.backend.id.as_str()) {
                backends.push(&attempt.backend.id);
            }
        }
        json!({
            "id": String::from_utf8_lossy(self.id.as_bytes()),
            "method": self.method.as_str(),
            "path": String::from_utf8_lossy(&self.path),
            "status": self.status,
            "started_at_ms": self.at_ms,
            "latency_ms": self.latency_us as f64 / 1000.0,
            "cache": self.cache.label(),
            "error": self.error,
            "attempts": attempts,
            "backends": backends,
        })
    }
}

/// Which records `GET /requests` lists, by status: one code (`503`) or a class (`5xx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    Any,
    Code(u16),
    Class(u16),
}

impl StatusFilter {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let bad = || format!("status must be a code (503) or a class (5xx), not {raw:?}");
        let bytes = raw.as_bytes();
        if bytes.len() != 3 || !(b'1'..=b'5').contains(&bytes[0]) {
            return Err(bad());
        }
        if raw[1..].eq_ignore_ascii_case("xx") {
            return Ok(Self::Class(u16::from(bytes[0] - b'0')));
        }
        raw.parse().map(Self::Code).map_err(|_| bad())
    }

    fn admits(self, status: u16) -> bool {
        match self {
            Self::Any => true,
            Self::Code(code) => status == code,
            Self::Class(class) => status / 100 == class,
        }
    }
}

/// What the proxy keeps of its requests: ids, the history, the access log.
#[derive(Debug)]
pub struct Journal {
    ids: Ids,
    /// One ring per traffic thread.
    rings: Box<[Mutex<VecDeque<Record>>]>,
    /// The next record's `seq`.
    seq: AtomicU64,
    per_ring: usize,
    capacity: usize,
    access_log: bool,
}

impl Journal {
    /// `capacity` records in all over `shards` traffic threads; `access_log`: one line per
    /// request at `info`.
    pub fn new(capacity: usize, shards: usize, access_log: bool, seed: u64) -> Self {
        let shards = shards.max(1);
        Self {
            ids: Ids::new(seed),
            rings: (0..shards).map(|_| Mutex::default()).collect(),
            seq: AtomicU64::new(0),
            per_ring: capacity.div_ceil(shards),
            capacity,
            access_log,
        }
    }

    /// A trip for a request for `method` and `target` that came with `client_id` (its
    /// `X-Request-Id`, if any) at `started`.
    pub fn start(
        &self,
        client_id: Option<&[u8]>,
        started: Instant,
        method: &Method,
        target: &[u8],
    ) -> Trip {
        let id = match client_id.filter(|id| well_formed(id)) {
            Some(id) => RequestId::Given(id.into()),
            None => RequestId::Made(self.ids.next()),
        };
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        let path = if self.per_ring > 0 || self.access_log {
            Path::from_slice(&target[..cut(target, MAX_PATH_BYTES)])
        } else {
            Path::new()
        };
        Trip {
            id,
            method: method.clone(),
            path,
            started,
            at_ms,
            cache: CacheUse::Bypass,
            attempts: Attempts::new(),
        }
    }

    /// The request answered `status` (`error`: the balancer's own answer): its access log
    /// line, and its record in thread `shard`'s ring.
    pub fn finish(&self, shard: usize, trip: Trip, status: u16, error: Option<&ProxyError>) {
        let latency_us = micros(trip.started.elapsed());
        if self.access_log {
            let backend = trip.attempts.last().map(|a| a.backend.name.as_str());
            tracing::info!(
                target: "balancer::access",
                request_id = %String::from_utf8_lossy(trip.id.as_bytes()),
                method = %trip.method,
                path = %String::from_utf8_lossy(&trip.path),
                status,
                latency_ms = latency_us as f64 / 1000.0,
                backend = backend.unwrap_or("-"),
                attempts = trip.attempts.len(),
                cache = trip.cache.label(),
                "request"
            );
        }
        if self.per_ring == 0 {
            return;
        }
        let Some(ring) = self.rings.get(shard).or(self.rings.first()) else {
            return;
        };
        let record = Record {
            seq: self.seq.fetch_add(1, Relaxed),
            id: trip.id,
            method: trip.method,
            path: trip.path,
            status,
            at_ms: trip.at_ms,
            latency_us,
            cache: trip.cache,
            error: error.map(|error| error.to_string().into_boxed_str()),
            attempts: trip.attempts,
        };
        let mut ring = ring.lock().unwrap_or_else(PoisonError::into_inner);
        // The oldest record is dropped after the lock is let go.
        let old = (ring.len() >= self.per_ring).then(|| ring.pop_front());
        ring.push_back(record);
        drop(ring);
        drop(old);
    }

    /// The newest record of request `id`, if it is still kept.
    pub fn find(&self, id: &str) -> Option<Value> {
        self.rings
            .iter()
            .filter_map(|ring| {
                let ring = ring.lock().unwrap_or_else(PoisonError::into_inner);
                ring.iter()
                    .rev()
                    .find(|record| record.id.as_bytes() == id.as_bytes())
                    .map(|record| (record.seq, record.to_json()))
            })
            .max_by_key(|(seq, _)| *seq)
            .map(|(_, record)| record)
    }

    /// The newest `limit` records whose status `filter` admits, newest first, and how many
    /// records are kept in all.
    pub fn recent(&self, filter: StatusFilter, limit: usize) -> (Vec<Value>, usize) {
        let mut kept = 0;
        let mut found: Vec<(u64, Value)> = Vec::new();
        for ring in &self.rings {
            let ring = ring.lock().unwrap_or_else(PoisonError::into_inner);
            kept += ring.len();
            found.extend(
                ring.iter()
                    .rev()
                    .filter(|record| filter.admits(record.status))
                    .take(limit)
                    .map(|record| (record.seq, record.to_json())),
            );
        }
        found.sort_by_key(|(seq, _)| std::cmp::Reverse(*seq));
        found.truncate(limit);
        (found.into_iter().map(|(_, record)| record).collect(), kept)
    }

    /// `REQUEST_HISTORY`.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// The longest prefix of `bytes` within `max` that ends on a character boundary when the
/// bytes are UTF-8 (they are a request target: ASCII in practice).
fn cut(bytes: &[u8], max: usize) -> usize {
    if bytes.len() <= max {
        return bytes.len();
    }
    let mut at = max;
    while at > 0 && (bytes[at] & 0xC0) == 0x80 {
        at -= 1;
    }
    at
}

fn micros(elapsed: std::time::Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
