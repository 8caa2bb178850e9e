//! The proxy path: one request in, one backend chosen, the request streamed to it and the
//! answer streamed back; cache, retries, timeouts, admission and WebSocket tunnels around it.

use std::{
    convert::Infallible,
    future::Future,
    net::IpAddr,
    pin::Pin,
    sync::{Arc, atomic::Ordering::Relaxed},
    task::Poll,
    time::{Duration, Instant},
};

use http::{
    HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header, uri::PathAndQuery,
};
use http_body::Body as _;
use hyper::{body::Incoming, upgrade::OnUpgrade};
use hyper_util::rt::TokioIo;
use tracing::Instrument;

use crate::{
    admission::Admission,
    backend::{Backend, Backends, Clock, Ejection, Removed},
    body::{InFlight, ResponseBody, Tee},
    cache::{self, Cache, Cached, Lookup},
    error::{Chain, ProxyError},
    headers::{self, IDEMPOTENCY_KEY, X_BACKEND, X_CACHE},
    metrics::{Metrics, RetryReason},
    policy::{Picker, Tried},
    retry::RetryBudget,
    route::{self, DenyPaths, RetryRoutes},
    timer,
    upstream::{BodyFault, BodySource, ClientBody, Lease, SendError},
};

/// Bodies up to this size with a known length are read before sending, so a retry can send
/// them again; larger ones are streamed. `RETRY_ROUTES` requests use `RETRY_BUFFER_BYTES`
/// instead, whether their length is known or not.
const REPLAY_BODY_BYTES: u64 = 64 << 10;

/// Attempts after connect failures, each on another backend.
const MAX_CONNECT_ATTEMPTS: usize = 3;

/// The settings of the proxy path.
#[derive(Debug, Clone)]
pub struct Settings {
    pub cors: crate::cors::Cors,
    pub request_timeout: Duration,
    pub retry_after_secs: u64,
    pub max_body_bytes: u64,
    pub max_header_bytes: usize,
    pub ewma_decay: Duration,
    pub ejection: Ejection,
    pub deny_paths: DenyPaths,
    pub body_read_timeout: Duration,
    pub retry_routes: RetryRoutes,
    pub retry_buffer_bytes: u64,
}

/// Everything the proxy path shares.
#[derive(Debug)]
pub struct Shared {
    pub backends: Backends,
    pub picker: Picker,
    pub cache: Option<Cache>,
    pub budget: RetryBudget,
    pub admission: Arc<Admission>,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    pub settings: Settings,
}

/// The proxy as the hyper service of one client connection (a cheap handle).
#[derive(Debug, Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
    /// The connection's traffic thread: its upstream connections live in pool `shard`.
    shard: usize,
    /// The client's address as an `X-Forwarded-For` entry, made once per connection.
    peer: Option<HeaderValue>,
}

impl Proxy {
    pub fn new(shared: Arc<Shared>, shard: usize, peer: IpAddr) -> Self {
        Self {
            shared,
            shard,
            peer: HeaderValue::from_str(&peer.to_string()).ok(),
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for Proxy {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        // The request's future boxed as it is: a wrapping `async` block would be moved (a few
        // kilobytes) once more per request.
        Box::pin(Arc::clone(&self.shared).handle(request, self.shard, self.peer.clone()))
    }
}

/// A failed request and the backend it failed on, if any.
struct Failure {
    error: ProxyError,
    backend: Option<Arc<Backend>>,
}

impl From<ProxyError> for Failure {
    fn from(error: ProxyError) -> Self {
        Self {
            error,
            backend: None,
        }
    }
}

impl ProxyError {
    fn on(self, backend: &Arc<Backend>) -> Failure {
        Failure {
            error: self,
            backend: Some(Arc::clone(backend)),
        }
    }
}

/// What the answer needs to know about the request.
struct Origin {
    lookup: Lookup,
    host: Option<HeaderValue>,
    path: PathAndQuery,
    on_upgrade: Option<OnUpgrade>,
    /// An HTTP/1 client, whose connection can be asked to close after the answer.
    http1: bool,
}

impl Shared {
    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        shard: usize,
        peer: Option<HeaderValue>,
    ) -> Result<Response<ResponseBody>, Infallible> {
        let started = Instant::now();
        let method = request.method().clone();
        if let Some(preflight) = self.settings.cors.preflight(&method, request.headers()) {
            return Ok(preflight.map(|()| ResponseBody::empty()));
        }
        let origin = match self.settings.cors {
            crate::cors::Cors::Off => None,
            _ => request.headers().get(http::header::ORIGIN).cloned(),
        };
        // A span by hand rather than `#[instrument]`: the attribute keeps two copies of the
        // request's future (enabled and disabled paths), doubling what each request allocates.
        let span = tracing::debug_span!("proxy", %method, path = %request.uri().path());
        let proxied = self.proxy(request, started, shard, peer).instrument(span);
        let response = match proxied.await {
            Ok(response) => response,
            Err(Failure { error, backend }) => {
                let status = error.status();
                match &backend {
                    Some(backend) => {
                        backend.statuses.record(status.as_u16());
                        tracing::warn!(
                            backend = %backend.dns_name,
                            %method,
                            status = status.as_u16(),
                            retryable = error.is_retryable(),
                            cause = %error,
                            "request failed upstream"
                        );
                    }
                    None => {
                        self.metrics.local.record(status.as_u16());
                        if error.is_upstream() {
                            tracing::warn!(%method, status = status.as_u16(), retryable = error.is_retryable(), cause = %error, "request failed");
                        } else {
                            tracing::debug!(%method, status = status.as_u16(), cause = %error, "request refused");
                        }
                    }
                }
                error.into_response(self.settings.retry_after_secs)
            }
        };
        let mut response = response;
        if origin.is_some() {
            self.settings
                .cors
                .decorate(origin.as_ref(), response.headers_mut());
        }
        self.metrics.latency.observe(started.elapsed());
        Ok(response)
    }

    async fn proxy(
        &self,
        request: Request<Incoming>,
        started: Instant,
        shard: usize,
        peer: Option<HeaderValue>,
    ) -> Result<Response<ResponseBody>, Failure> {
        let (mut parts, body) = request.into_parts();

        if parts.method == Method::CONNECT {
            return Err(ProxyError::MethodNotAllowed(parts.method).into());
        }
        // Denied paths and retry routes match the normalised path, worked out once.
        let settings = &self.settings;
        let route_path = (!settings.deny_paths.is_empty() || !settings.retry_routes.is_empty())
            .then(|| route::Path::new(parts.uri.path()));
        if route_path
            .as_ref()
            .is_some_and(|path| settings.deny_paths.denies(path))
        {
            return Err(ProxyError::NotFound.into());
        }
        let replay_route = route_path
            .as_ref()
            .is_some_and(|path| settings.retry_routes.matches(&parts.method, path));
        let limit = self.settings.max_header_bytes;
        if headers::head_size(&parts.uri, &parts.method, &parts.headers) > limit {
            return Err(ProxyError::HeadersTooLarge(limit).into());
        }
        let declared = match parts.headers.get(header::CONTENT_LENGTH) {
            Some(value) => Some(
                value
                    .to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or(ProxyError::BadRequest("Content-Length is not a number"))?,
            ),
            None => None,
        };
        let max_body = self.settings.max_body_bytes;
        if declared.is_some_and(|n| n > max_body) {
            return Err(ProxyError::BodyTooLarge(max_body).into());
        }
        let upgrade = headers::upgrade_requested(&parts.headers);
        let host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));

        // The cache.
        let lookup = match &self.cache {
            Some(_) if upgrade.is_none() => {
                cache::lookup(&parts.method, &parts.uri, &parts.headers)
            }
            _ => Lookup::Bypass,
        };
        if let Some(cache) = &self.cache {
            if let Lookup::Use { static_path } = lookup {
                if static_path || cache.may_hold_dynamic() {
                    let key = cache::key(host.as_ref(), &path);
                    // Boxed, like the other rare steps: keeps the request's future small.
                    if let Some(hit) = Box::pin(cache.get(&key, lookup)).await {
                        cache.hits.fetch_add(1, Relaxed);
                        self.metrics.local.record(hit.status.as_u16());
                        return Ok(hit_response(&hit));
                    }
                }
            }
            if lookup != Lookup::Bypass {
                cache.misses.fetch_add(1, Relaxed);
            }
        }

        // The body: none, small and replayable (read once a backend is chosen), or streamed.
        let mut body = if upgrade.is_some() || body.is_end_stream() {
            BodySource::Empty
        } else {
            let body = ClientBody::new(body, settings.body_read_timeout);
            let buffer = if replay_route {
                settings.retry_buffer_bytes
            } else {
                REPLAY_BODY_BYTES
            };
            let fits = match declared {
                Some(len) => len <= buffer,
                // A chunked body is buffered for a retry route up to the bound, then streamed.
                None => replay_route && buffer > 0,
            };
            if fits {
                BodySource::Buffer {
                    body,
                    limit: buffer,
                }
            } else {
                BodySource::stream(body, max_body)
            }
        };

        // The request head as the backend sees it.
        let on_upgrade = parts.extensions.remove::<OnUpgrade>();
        headers::strip_hop_by_hop(&mut parts.headers);
        headers::add_forwarded(&mut parts.headers, peer, host.as_ref());
        if !parts.headers.contains_key(header::HOST) {
            if let Some(host) = &host {
                parts.headers.insert(header::HOST, host.clone());
            }
        }
        if let Some(protocol) = &upgrade {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, protocol.clone());
        }
        // Safe to send again: by method, by the client's Idempotency-Key, or by the operator's
        // RETRY_ROUTES.
        let idempotent = parts.method.is_idempotent()
            || parts.headers.contains_key(IDEMPOTENCY_KEY)
            || replay_route;
        let origin = Origin {
            lookup,
            host,
            path,
            on_upgrade: if upgrade.is_some() { on_upgrade } else { None },
            http1: parts.version <= Version::HTTP_11,
        };
        let method = parts.method;
        let mut template = Some(parts.headers);

        let deadline = tokio::time::Instant::from_std(started + self.settings.request_timeout);
        self.budget.deposit(self.clock.nanos(started));
        let mut tried = Tried::default();
        let mut connect_failures = 0;
        let mut retried = false;
        let mut last_error = ProxyError::Connect(None);
        let mut now = self.clock.nanos(started);
        loop {
            let (picked, others) = {
                let table = self.backends.load();
                let picked = self.picker.pick(&table, &tried, now);
                let others = table.candidates.len() > tried.len() + 1;
                (picked, others)
            };
            let backend = match picked {
                Some(backend) => backend,
                None if tried.is_empty() => {
                    Box::pin(
                        self.admission
                            .wait(&self.backends, &self.picker, &tried, &self.clock),
                    )
                    .await
                    .map_err(Failure::from)?
                }
                None => return Err(last_error.into()),
            };
            // In flight on its backend from here, while its body is still arriving, until the
            // answer is finished: a drain waits for the upload too.
            let in_flight = InFlight::start(Arc::clone(&backend));
            if body.needs_buffering() {
                let read = std::mem::replace(&mut body, BodySource::Empty).buffer(max_body);
                // Boxed, like the other rare steps: keeps the request's future small.
                body = match timer::timeout_at(deadline, Box::pin(read)).await {
                    Ok(Ok(read)) => read,
                    Ok(Err(fault)) => return Err(body_error(fault, max_body).into()),
                    Err(_elapsed) => return Err(ProxyError::BodyTimeout.into()),
                };
            }
            let (Some(request_body), Some(headers)) = (
                body.attempt(),
                if others {
                    template.clone()
                } else {
                    template.take()
                },
            ) else {
                return Err(last_error.on(&backend));
            };
            tried.add(&backend);

            let mut request = Request::new(request_body);
            *request.method_mut() = method.clone();
            *request.uri_mut() = Uri::from(origin.path.clone());
            *request.version_mut() = Version::HTTP_11;
            *request.headers_mut() = headers;
            if !request.headers().contains_key(header::HOST) {
                request
                    .headers_mut()
                    .insert(header::HOST, backend.host_header.clone());
            }

            let sent = Instant::now();
            let mut send = std::pin::pin!(timer::timeout_at(
                deadline,
                backend.pool(shard).send(request)
            ));
            // A request that could be retried also watches its backend leave the table (its
            // node lost: neither an answer nor a reset will come), without a task or a lock of
            // another thread; the others only wait.
            let outcome = if idempotent && body.replayable() && !retried && others {
                let until = UntilRemoved {
                    send: send.as_mut(),
                    removed: Some(backend.removed(shard)),
                    leave: Some(|| self.retry_removed(&tried)),
                };
                match until.await {
                    Some(outcome) => outcome,
                    None => {
                        retried = true;
                        last_error = ProxyError::Upstream(None);
                        now = self.clock.now();
                        self.metrics.retried(RetryReason::Removed);
                        tracing::debug!(backend = %backend.dns_name, "backend left the table while its answer was awaited; retrying on another backend");
                        continue;
                    }
                }
            } else {
                send.await
            };
            match outcome {
                Err(_elapsed) => {
                    in_flight.failed();
                    self.metrics.timeouts.fetch_add(1, Relaxed);
                    return Err(ProxyError::Timeout(self.settings.request_timeout).on(&backend));
                }
                Ok(Err(err)) => {
                    let fault = body.fault();
                    if fault != BodyFault::None {
                        return Err(body_error(fault, max_body).into());
                    }
                    in_flight.failed();
                    drop(in_flight);
                    now = self.clock.now();
                    if let SendError::Connect(_) = &err {
                        if backend.connect_failed(now, self.settings.ejection) {
                            tracing::warn!(
                                backend = %backend.dns_name,
                                address = %backend.address,
                                failures = backend.consecutive_failures(),
                                "backend ejected after consecutive connect failures"
                            );
                        }
                        tracing::debug!(backend = %backend.dns_name, cause = %Chain(&err), "connect failed");
                        last_error = ProxyError::Connect(Some(err));
                        connect_failures += 1;
                        if connect_failures < MAX_CONNECT_ATTEMPTS {
                            self.metrics.retried(RetryReason::Connect);
                            continue;
                        }
                        return Err(last_error.on(&backend));
                    }
                    tracing::debug!(backend = %backend.dns_name, cause = %Chain(&err), "request to backend failed");
                    last_error = ProxyError::Upstream(Some(err));
                    if idempotent && body.replayable() && !retried && others {
                        if self.budget.withdraw(now) {
                            retried = true;
                            self.metrics.retried(RetryReason::Reset);
                            continue;
                        }
                        self.metrics.retries_denied.fetch_add(1, Relaxed);
                    }
                    return Err(last_error.on(&backend));
                }
                Ok(Ok((response, mut lease))) => {
                    if !body.replayable() {
                        // The upload may still be streaming; never reuse its connection.
                        lease.forbid_reuse();
                    }
                    backend.connected();
                    let answered = Instant::now();
                    now = self.clock.nanos(answered);
                    backend.observe_latency(
                        answered.saturating_duration_since(sent),
                        now,
                        self.settings.ewma_decay,
                    );
                    let status = response.status();
                    backend.statuses.record(status.as_u16());
                    if matches!(
                        status,
                        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
                    ) && idempotent
                        && body.replayable()
                        && !retried
                        && others
                    {
                        if self.budget.withdraw(now) {
                            in_flight.failed();
                            retried = true;
                            last_error = ProxyError::Upstream(None);
                            self.metrics.retried(RetryReason::Status);
                            tracing::debug!(backend = %backend.dns_name, status = status.as_u16(), "retrying on another backend");
                            continue;
                        }
                        self.metrics.retries_denied.fetch_add(1, Relaxed);
                    }
                    if status.is_server_error() {
                        in_flight.failed();
                    }
                    // An answer before the whole body arrived: relayed, then the client's
                    // connection closes (its body is read a little longer, see `StreamBody`).
                    let close = !body.ended() && origin.http1;
                    return Ok(self.respond(response, lease, in_flight, origin, close));
                }
            }
        }
    }

    /// Whether a request whose backend left the table goes elsewhere (its attempt dropped, the
    /// connection closed): a backend it has not tried is routable and the retry budget allows
    /// a retry.
    fn retry_removed(&self, tried: &Tried) -> bool {
        let elsewhere = self
            .backends
            .load()
            .candidates
            .iter()
            .any(|candidate| !tried.contains(&candidate.backend));
        if !elsewhere {
            return false;
        }
        if self.budget.withdraw(self.clock.now()) {
            return true;
        }
        self.metrics.retries_denied.fetch_add(1, Relaxed);
        false
    }

    /// The backend's answer on its way back: hop-by-hop headers out, `X-Backend` and
    /// `X-Cache` in, a copy for the cache, or a tunnel for an upgrade.
    fn respond(
        &self,
        mut response: Response<Incoming>,
        lease: Lease,
        in_flight: InFlight,
        origin: Origin,
        close: bool,
    ) -> Response<ResponseBody> {
        let backend_header = in_flight.backend().header.clone();
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client) = origin.on_upgrade {
                let upstream = hyper::upgrade::on(&mut response);
                let (mut parts, _body) = response.into_parts();
                let protocol = parts.headers.get(header::UPGRADE).cloned();
                headers::strip_hop_by_hop(&mut parts.headers);
                parts
                    .headers
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                if let Some(protocol) = protocol {
                    parts.headers.insert(header::UPGRADE, protocol);
                }
                parts.headers.insert(X_BACKEND, backend_header);
                // The connection's driver must run on to hand over the socket.
                lease.detach();
                tokio::spawn(tunnel(client, upstream, in_flight));
                return Response::from_parts(parts, ResponseBody::empty());
            }
        }

        let (mut parts, body) = response.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        parts.headers.insert(X_BACKEND, backend_header);
        if close {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let mut tee = None;
        if let (Some(cache), Lookup::Use { static_path } | Lookup::Refresh { static_path }) =
            (&self.cache, origin.lookup)
        {
            let fits = body
                .size_hint()
                .exact()
                .is_none_or(|len| len <= cache.max_entry_bytes());
            if fits {
                if let Some(ttl) = cache::storable(
                    static_path,
                    parts.status,
                    &parts.headers,
                    cache.default_ttl(),
                ) {
                    tee = Some(Box::new(Tee::new(
                        cache.clone(),
                        cache::key(origin.host.as_ref(), &origin.path),
                        parts.status,
                        parts.headers.clone(),
                        ttl,
                        static_path,
                    )));
                }
            }
            parts.headers.insert(X_CACHE, cache::miss());
        }
        Response::from_parts(parts, ResponseBody::upstream(body, lease, in_flight, tee))
    }
}

pin_project_lite::pin_project! {
    /// An attempt that gives up when its backend leaves the table and `leave` says the request
    /// goes elsewhere (`None`); else it waits for the answer as if nothing happened. A named
    /// future, not an `async` block: it keeps the request's future small.
    struct UntilRemoved<'a, F, L> {
        send: Pin<&'a mut F>,
        #[pin]
        removed: Option<Removed<'a>>,
        leave: Option<L>,
    }
}

impl<F: Future, L: FnOnce() -> bool> Future for UntilRemoved<'_, F, L> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(output) = this.send.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        if let Some(removed) = this.removed.as_mut().as_pin_mut() {
            if removed.poll(cx).is_ready() {
                this.removed.set(None);
                if this.leave.take().is_some_and(|leave| leave()) {
                    return Poll::Ready(None);
                }
            }
        }
        Poll::Pending
    }
}

/// The answer to a request whose body failed on the client's side.
fn body_error(fault: BodyFault, max_body: u64) -> ProxyError {
    match fault {
        BodyFault::TooLarge => ProxyError::BodyTooLarge(max_body),
        BodyFault::Timeout => ProxyError::BodyTimeout,
        BodyFault::Client | BodyFault::None => ProxyError::ClientBody,
    }
}

fn hit_response(hit: &Cached) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(hit.body.clone()));
    *response.status_mut() = hit.status;
    *response.headers_mut() = hit.headers.clone();
    let headers = response.headers_mut();
    headers.insert(X_CACHE, cache::hit());
    headers.insert(header::AGE, HeaderValue::from(hit.age().as_secs()));
    response
}

/// Copies bytes both ways between the client and the backend once both sides upgraded.
async fn tunnel(client: OnUpgrade, upstream: OnUpgrade, in_flight: InFlight) {
    match tokio::try_join!(client, upstream) {
        Ok((client, upstream)) => {
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                Ok((sent, received)) => {
                    tracing::debug!(backend = %in_flight.backend().dns_name, sent, received, "tunnel closed");
                }
                Err(err) => {
                    tracing::debug!(backend = %in_flight.backend().dns_name, cause = %err, "tunnel broke off");
                }
            }
        }
        Err(err) => {
            in_flight.failed();
            tracing::debug!(backend = %in_flight.backend().dns_name, cause = %err, "upgrade failed");
        }
    }
}
