//! The TTL cache for GET responses of static resources, on moka.
//!
//! A response is stored when the request is a GET without `Authorization` or
//! `Cache-Control: no-store`, the answer is `200` without `Set-Cookie`, `Vary` or
//! `Cache-Control: no-store | private | no-cache`, and either the path has a static extension or
//! the answer says `Cache-Control: public` or `max-age`. It lives for `s-maxage`/`max-age` when
//! given, else `CACHE_TTL`. Entries are bounded by count (`CACHE_CAPACITY`) and by body bytes
//! (`CACHE_MAX_BYTES`) at once: each entry weighs its size, but at least
//! `CACHE_MAX_BYTES / CACHE_CAPACITY`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};

/// File extensions served as static resources.
const STATIC_EXTENSIONS: &[&str] = &[
    "css", "js", "mjs", "map", "png", "jpg", "jpeg", "gif", "webp", "avif", "svg", "ico", "bmp",
    "woff", "woff2", "ttf", "otf", "eot", "txt", "pdf", "mp3", "mp4", "webm", "ogg", "wasm",
    "html", "htm", "xml", "csv", "zip", "gz",
];

/// A stored answer.
#[derive(Debug)]
pub struct Cached {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub stored: Instant,
    pub ttl: Duration,
}

impl Cached {
    pub fn age(&self) -> Duration {
        self.stored.elapsed()
    }
}

struct PerEntryTtl;

impl moka::Expiry<String, Arc<Cached>> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<Cached>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// Settings of the cache.
#[derive(Debug, Clone, Copy)]
pub struct CacheConfig {
    pub capacity: u64,
    pub max_bytes: u64,
    pub max_entry_bytes: u64,
    pub ttl: Duration,
}

/// The cache handle (cheap to clone).
#[derive(Clone)]
pub struct Cache {
    inner: moka::future::Cache<String, Arc<Cached>>,
    max_entry_bytes: u64,
    ttl: Duration,
    /// Set once any entry was stored for its headers rather than its extension; until then,
    /// only paths with a static extension need a lookup.
    header_entries: Arc<AtomicBool>,
    pub hits: Arc<AtomicU64>,
    pub misses: Arc<AtomicU64>,
    pub stores: Arc<AtomicU64>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("entries", &self.inner.entry_count())
            .finish_non_exhaustive()
    }
}

/// Whether a request may be answered from, or stored in, the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Not a cacheable request: no lookup, no store.
    Bypass,
    /// Look up, and store the answer if it qualifies.
    Use { static_path: bool },
    /// Don't answer from the cache (`Cache-Control: no-cache`), but the answer may be stored.
    Refresh { static_path: bool },
}

impl Cache {
    pub fn new(config: CacheConfig) -> Option<Self> {
        if config.capacity == 0 || config.max_bytes == 0 {
            return None;
        }
        let floor = u32::try_from((config.max_bytes / config.capacity).max(1)).unwrap_or(u32::MAX);
        let inner = moka::future::Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(move |key: &String, value: &Arc<Cached>| {
                let size = key.len() + value.body.len() + header_bytes(&value.headers);
                u32::try_from(size).unwrap_or(u32::MAX).max(floor)
            })
            .expire_after(PerEntryTtl)
            .build();
        Some(Self {
            inner,
            max_entry_bytes: config.max_entry_bytes.min(config.max_bytes),
            ttl: config.ttl,
            header_entries: Arc::new(AtomicBool::new(false)),
            hits: Arc::default(),
            misses: Arc::default(),
            stores: Arc::default(),
        })
    }

    pub fn max_entry_bytes(&self) -> u64 {
        self.max_entry_bytes
    }

    pub fn entry_count(&self) -> u64 {
        self.inner.entry_count()
    }

    pub fn weighted_size(&self) -> u64 {
        self.inner.weighted_size()
    }

    /// Whether an entry may exist for a path without a static extension (one was stored for
    /// its headers). Until then such paths need no lookup.
    pub fn may_hold_dynamic(&self) -> bool {
        self.header_entries.load(Relaxed)
    }

    /// The stored answer for `key`, if any and fresh.
    pub async fn get(&self, key: &str, lookup: Lookup) -> Option<Arc<Cached>> {
        let Lookup::Use { .. } = lookup else {
            return None;
        };
        let hit = self.inner.get(key).await?;
        // moka expires lazily on its housekeeping; never serve a stale entry.
        (hit.age() < hit.ttl).then_some(hit)
    }

    pub async fn insert(&self, key: String, value: Cached, static_path: bool) {
        if !static_path {
            self.header_entries.store(true, Relaxed);
        }
        self.stores.fetch_add(1, Relaxed);
        self.inner.insert(key, Arc::new(value)).await;
    }

    /// Drops expired entries; run from a background task.
    pub async fn collect_expired(&self) {
        self.inner.run_pending_tasks().await;
    }

    pub fn default_ttl(&self) -> Duration {
        self.ttl
    }
}

fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

/// The cache key: host and path with query.
pub fn key(host: Option<&HeaderValue>, path: &http::uri::PathAndQuery) -> String {
    let host = host.and_then(|h| h.to_str().ok()).unwrap_or("");
    let path = path.as_str();
    let mut key = String::with_capacity(host.len() + path.len());
    key.push_str(host);
    key.push_str(path);
    key
}

/// Whether the path ends in a static file extension.
/// On bytes: '/' and '.' are ASCII, and this runs for every GET.
pub fn is_static_path(path: &[u8]) -> bool {
    let last = path
        .iter()
        .rposition(|&b| b == b'/')
        .map_or(path, |slash| path.get(slash + 1..).unwrap_or_default());
    match last.iter().rposition(|&b| b == b'.') {
        Some(dot) if last.len() > 1 => {
            let ext = last.get(dot + 1..).unwrap_or_default();
            STATIC_EXTENSIONS
                .iter()
                .any(|known| known.as_bytes().eq_ignore_ascii_case(ext))
        }
        _ => false,
    }
}

/// Whether a request may use the cache.
pub fn lookup(method: &Method, uri: &http::Uri, headers: &HeaderMap) -> Lookup {
    lookup_path(method, uri.path().as_bytes(), headers)
}

/// [`lookup`] for a request whose path is at hand without its `Uri`.
pub fn lookup_path(method: &Method, path: &[u8], headers: &HeaderMap) -> Lookup {
    if method != Method::GET || headers.contains_key(header::AUTHORIZATION) {
        return Lookup::Bypass;
    }
    let static_path = is_static_path(path);
    let mut refresh = false;
    for directive in directives(headers) {
        match directive {
            Directive::NoStore => return Lookup::Bypass,
            Directive::NoCache | Directive::MaxAge(0) => refresh = true,
            _ => {}
        }
    }
    if refresh || headers.get(header::PRAGMA).is_some_and(|p| p == "no-cache") {
        Lookup::Refresh { static_path }
    } else {
        Lookup::Use { static_path }
    }
}

/// How long an answer may be stored, or `None` if it must not be.
pub fn storable(
    static_path: bool,
    status: StatusCode,
    headers: &HeaderMap,
    default_ttl: Duration,
) -> Option<Duration> {
    if status != StatusCode::OK
        || headers.contains_key(header::SET_COOKIE)
        || headers.contains_key(header::VARY)
    {
        return None;
    }
    let mut public = false;
    let mut max_age = None;
    let mut s_maxage = None;
    for directive in directives(headers) {
        match directive {
            Directive::NoStore | Directive::Private | Directive::NoCache => return None,
            Directive::Public => public = true,
            Directive::MaxAge(secs) => max_age = Some(secs),
            Directive::SMaxAge(secs) => s_maxage = Some(secs),
            Directive::Other => {}
        }
    }
    let ttl = s_maxage.or(max_age).map(Duration::from_secs);
    if ttl.is_some_and(|ttl| ttl.is_zero()) {
        return None;
    }
    if static_path || public || ttl.is_some() {
        Some(ttl.unwrap_or(default_ttl))
    } else {
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Directive {
    NoStore,
    NoCache,
    Private,
    Public,
    MaxAge(u64),
    SMaxAge(u64),
    Other,
}

fn directives(headers: &HeaderMap) -> impl Iterator<Item = Directive> + '_ {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|part| {
            let part = part.trim();
            let (name, arg) = match part.split_once('=') {
                Some((name, arg)) => (name.trim(), Some(arg.trim().trim_matches('"'))),
                None => (part, None),
            };
            let seconds = || arg.and_then(|a| a.parse::<u64>().ok());
            if name.eq_ignore_ascii_case("no-store") {
                Directive::NoStore
            } else if name.eq_ignore_ascii_case("no-cache") {
                Directive::NoCache
            } else if name.eq_ignore_ascii_case("private") {
                Directive::Private
            } else if name.eq_ignore_ascii_case("public") {
                Directive::Public
            } else if name.eq_ignore_ascii_case("max-age") {
                seconds().map_or(Directive::NoCache, Directive::MaxAge)
            } else if name.eq_ignore_ascii_case("s-maxage") {
                seconds().map_or(Directive::NoCache, Directive::SMaxAge)
            } else {
                Directive::Other
            }
        })
}

/// `X-Cache: HIT`.
pub fn hit() -> HeaderValue {
    HeaderValue::from_static("HIT")
}

/// `X-Cache: MISS`.
pub fn miss() -> HeaderValue {
    HeaderValue::from_static("MISS")
}

#[cfg(test)]
mod tests;
