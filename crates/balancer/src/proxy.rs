//! The proxy path: one request in, one backend chosen, the request streamed to it and the
//! answer streamed back; cache, retries, timeouts, admission and WebSocket tunnels around it.
//!
//! A request goes through named phases, each a method of `Shared` (in the manner of
//! Pingora's `ProxyHttp`), so that every front end can share them:
//! 1. `admit`: refuse what is never forwarded (CONNECT, denied paths, a head or a body over
//!    the limits, a bad `Content-Length`) and describe the rest (`Admitted`).
//! 2. `cache_lookup`: a cached answer, or the `Lookup` to carry on with.
//! 3. `prepare`: the request as the backend sees it (`Upstream`): its body source, its head
//!    without hop-by-hop headers and with `X-Forwarded-*`, `Host` and an upgrade's headers,
//!    and the `Origin` its answer needs.
//! 4. `forward`: the attempts under the request's `RetryPolicy`: `pick` a backend (or wait
//!    in the admission queue), send within the deadline, `settle` the outcome: an `Answer`,
//!    a retry, or a failure.
//! 5. `respond`: the backend's answer on its way back, or a tunnel for an upgrade.
//!
//! `handle` runs them for hyper: CORS, the span, a failure turned into an answer, latency.

use std::{
    convert::Infallible,
    future::Future,
    net::IpAddr,
    ops::ControlFlow,
    pin::Pin,
    sync::{Arc, atomic::Ordering::Relaxed},
    task::Poll,
    time::{Duration, Instant},
};

use http::{
    HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header,
    request::Parts, uri::PathAndQuery,
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
    cost::Job,
    dispatch::Ask,
    error::{Chain, ProxyError},
    headers::{self, IDEMPOTENCY_KEY, X_BACKEND, X_CACHE},
    journal::{CacheUse, Ended, Trip, X_REQUEST_ID},
    metrics::{Metrics, RetryReason},
    policy::{Picker, Tried, Want},
    retry::{Outcome, RetryBudget, RetryPolicy, Verdict},
    route::{self, DenyPaths, RetryRoutes},
    timer::{self, Elapsed},
    upstream::{BodyFault, BodySource, ClientBody, Lease, RequestBody, SendError},
};

/// A job's cost as its client states it (issue #17).
pub(crate) const X_COST: &str = "x-cost";

/// Where a backend says how long it worked on a request (`job;dur=<ms>`).
pub(crate) const SERVER_TIMING: &str = "server-timing";

/// Bodies up to this size with a known length are read before sending, so a retry can send
/// them again; larger ones are streamed. `RETRY_ROUTES` requests use `RETRY_BUFFER_BYTES`
/// instead, whether their length is known or not.
pub(crate) const REPLAY_BODY_BYTES: u64 = 64 << 10;

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
    /// HTTP/1.1 on the fast path (`fast`), the rest on hyper; `false`: all on hyper.
    pub fast_path: bool,
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
    /// What jobs cost, learned from the backends' `Server-Timing` (issue #17).
    pub costs: crate::cost::Costs,
    /// Request ids, the recent requests' records, the access log (issue #18).
    pub journal: crate::journal::Journal,
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

/// What admission (phase 1) found out about a request.
struct Admitted {
    /// Its `Content-Length`, if any.
    declared: Option<u64>,
    /// The protocol of the upgrade it asks for (WebSocket), if any.
    upgrade: Option<HeaderValue>,
    /// Its `Host`, else its target's authority.
    host: Option<HeaderValue>,
    path: PathAndQuery,
    /// Matched by `RETRY_ROUTES`: safe to replay, its body buffered up to
    /// `RETRY_BUFFER_BYTES`.
    replay_route: bool,
}

/// The request as the backend sees it (phase 3), sent once per attempt.
struct Upstream {
    method: Method,
    /// The head: cloned for an attempt that another may follow, taken by the last one.
    headers: Option<HeaderMap>,
    body: BodySource,
    /// Safe to send again: by method, by the client's `Idempotency-Key`, or by the
    /// operator's `RETRY_ROUTES`.
    idempotent: bool,
    origin: Origin,
    /// The client's body when it is not forwarded (an upgrade's, or one already at its end),
    /// kept until the answer is made: once it is dropped, hyper drains or closes the rest.
    _unsent: Option<Incoming>,
}

impl Upstream {
    /// What the request holds in memory while it waits for a slot: its head and a kept body.
    fn held_bytes(&self) -> u64 {
        let head: usize = self.headers.as_ref().map_or(0, |headers| {
            headers
                .iter()
                .map(|(name, value)| name.as_str().len() + value.len() + 4)
                .sum()
        });
        (head + self.body.kept().map_or(0, <[u8]>::len)) as u64
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
    /// The client's `X-Cost`, for learning what the job cost.
    x_cost: Option<HeaderValue>,
}

/// A backend's answer to an attempt (phase 4), for `respond`.
struct Answer {
    response: Response<Incoming>,
    lease: Lease,
    in_flight: InFlight,
    /// From sending the request to its answer's head.
    waited: Duration,
}

/// What sending one attempt came to: the answer's head, a failure, or the deadline.
type Sent = Result<Result<(Response<Incoming>, Lease), SendError>, Elapsed>;

impl Shared {
    /// One request for hyper: a CORS preflight answered, the phases run in a span, a failure
    /// made an answer (logged and counted), CORS headers added, the latency observed.
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
        let client_id = request
            .headers()
            .get(X_REQUEST_ID)
            .map(HeaderValue::as_bytes);
        let target = request
            .uri()
            .path_and_query()
            .map_or("/", PathAndQuery::as_str);
        let mut trip = self
            .journal
            .start(client_id, started, &method, target.as_bytes());
        // Forwarded to the backend and returned to the client.
        let id = trip.id().to_header();
        // A span by hand rather than `#[instrument]`: the attribute keeps two copies of the
        // request's future (enabled and disabled paths), doubling what each request allocates.
        let span = tracing::debug_span!("proxy", %method, path = %request.uri().path());
        let proxied = self
            .proxy(request, started, shard, peer, &id, &mut trip)
            .instrument(span);
        let response = match proxied.await {
            Ok(response) => {
                let status = response.status().as_u16();
                self.journal.finish(shard, trip, status, None);
                let mut response = response;
                response.headers_mut().insert(X_REQUEST_ID, id);
                response
            }
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
                let status = status.as_u16();
                self.journal.finish(shard, trip, status, Some(&error));
                let mut response = error.into_response(self.settings.retry_after_secs);
                response.headers_mut().insert(X_REQUEST_ID, id);
                response
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

    /// One request through the phases (see the module's documentation).
    async fn proxy(
        &self,
        request: Request<Incoming>,
        started: Instant,
        shard: usize,
        peer: Option<HeaderValue>,
        id: &HeaderValue,
        trip: &mut Trip,
    ) -> Result<Response<ResponseBody>, Failure> {
        let (parts, body) = request.into_parts();
        let admitted = self.admit(&parts)?;
        let lookup = match self.cache_lookup(&parts, &admitted).await {
            ControlFlow::Break(hit) => {
                trip.cache(CacheUse::Hit);
                return Ok(hit);
            }
            ControlFlow::Continue(lookup) => lookup,
        };
        if self.cache.is_some() && lookup != Lookup::Bypass {
            trip.cache(CacheUse::Miss);
        }
        let mut upstream = self.prepare(parts, body, admitted, lookup, peer, id);
        let job = self.job(&mut upstream, started).await?;
        let Answer {
            response,
            lease,
            in_flight,
            waited,
        } = self
            .forward(&mut upstream, started, shard, job.as_ref(), trip)
            .await?;
        if let Some(job) = &job {
            let timing = response.headers().get(SERVER_TIMING);
            self.costs
                .learn_from(job, timing.map(HeaderValue::as_bytes), &in_flight, waited);
        }
        // An answer before the whole body arrived: relayed, then the client's connection
        // closes (its body is read a little longer, see `StreamBody`).
        let close = !upstream.body.ended() && upstream.origin.http1;
        Ok(self.respond(response, lease, in_flight, upstream.origin, close))
    }

    /// The request's job for the cost fits and the work queue (issue #17). On a route with
    /// a cost rule, a body small enough to buffer is read first, so its cost is known before
    /// a backend is chosen.
    async fn job(&self, upstream: &mut Upstream, started: Instant) -> Result<Option<Job>, Failure> {
        let path = upstream.origin.path.path();
        let x_cost = upstream.origin.x_cost.as_ref().map(HeaderValue::as_bytes);
        let wants_body = self.costs.wants_body(&upstream.method, path);
        if x_cost.is_none() && !wants_body {
            return Ok(None);
        }
        // A valid X-Cost needs no body; a bad one falls back to the rule, which does.
        let explicit = x_cost.is_some_and(|value| crate::cost::explicit(value).is_ok());
        if wants_body && !explicit && upstream.body.needs_buffering() {
            let deadline = tokio::time::Instant::from_std(started + self.settings.request_timeout);
            let max_body = self.settings.max_body_bytes;
            let read = Box::pin(upstream.body.take().buffer(max_body));
            upstream.body = buffered(timer::timeout_at(deadline, read).await, max_body)?;
        }
        let path = upstream.origin.path.path();
        let x_cost = upstream.origin.x_cost.as_ref().map(HeaderValue::as_bytes);
        Ok(self
            .costs
            .job(&upstream.method, path, x_cost, upstream.body.kept()))
    }

    /// Phase 1, admission: refuses what is never forwarded (CONNECT, a denied path, a head
    /// over `MAX_HEADER_BYTES`, a `Content-Length` that is no number or over
    /// `MAX_BODY_BYTES`) and works out what the next phases need.
    fn admit(&self, parts: &Parts) -> Result<Admitted, ProxyError> {
        if parts.method == Method::CONNECT {
            return Err(ProxyError::MethodNotAllowed(Method::CONNECT));
        }
        // Denied paths and retry routes match the normalised path, worked out once.
        let settings = &self.settings;
        let route_path = (!settings.deny_paths.is_empty() || !settings.retry_routes.is_empty())
            .then(|| route::Path::new(parts.uri.path()));
        if route_path
            .as_ref()
            .is_some_and(|path| settings.deny_paths.denies(path))
        {
            return Err(ProxyError::NotFound);
        }
        let replay_route = route_path
            .as_ref()
            .is_some_and(|path| settings.retry_routes.matches(&parts.method, path));
        let limit = settings.max_header_bytes;
        if headers::head_size(&parts.uri, &parts.method, &parts.headers) > limit {
            return Err(ProxyError::HeadersTooLarge(limit));
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
        let max_body = settings.max_body_bytes;
        if declared.is_some_and(|n| n > max_body) {
            return Err(ProxyError::BodyTooLarge(max_body));
        }
        let host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        Ok(Admitted {
            declared,
            upgrade: headers::upgrade_requested(&parts.headers),
            host,
            path: parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
            replay_route,
        })
    }

    /// Phase 2, the cache: a fresh copy is the answer (`Break`); otherwise the `Lookup` says
    /// what the backend's answer may do with the cache (`Continue`).
    async fn cache_lookup(
        &self,
        parts: &Parts,
        request: &Admitted,
    ) -> ControlFlow<Response<ResponseBody>, Lookup> {
        let Some(cache) = &self.cache else {
            return ControlFlow::Continue(Lookup::Bypass);
        };
        let lookup = match request.upgrade {
            None => cache::lookup(&parts.method, &parts.uri, &parts.headers),
            Some(_) => Lookup::Bypass,
        };
        if let Lookup::Use { static_path } = lookup {
            if static_path || cache.may_hold_dynamic() {
                let key = cache::key(request.host.as_ref(), &request.path);
                // Boxed, like the other rare steps: keeps the request's future small.
                if let Some(hit) = Box::pin(cache.get(&key, lookup)).await {
                    cache.hits.fetch_add(1, Relaxed);
                    self.metrics.local.record(hit.status.as_u16());
                    return ControlFlow::Break(hit_response(&hit));
                }
            }
        }
        if lookup != Lookup::Bypass {
            cache.misses.fetch_add(1, Relaxed);
        }
        ControlFlow::Continue(lookup)
    }

    /// Phase 3, the request as the backend sees it: its body source (see `body_source`), its
    /// head without hop-by-hop headers, with `X-Forwarded-*` (`peer` is the client), `Host`
    /// and an upgrade's `Connection` and `Upgrade`; the `Origin` its answer needs.
    fn prepare(
        &self,
        parts: Parts,
        body: Incoming,
        request: Admitted,
        lookup: Lookup,
        peer: Option<HeaderValue>,
        id: &HeaderValue,
    ) -> Upstream {
        let Parts {
            method,
            version,
            mut headers,
            mut extensions,
            ..
        } = parts;
        let (body, unsent) = if request.upgrade.is_some() || body.is_end_stream() {
            (BodySource::Empty, Some(body))
        } else {
            let body = ClientBody::new(body, self.settings.body_read_timeout);
            (self.body_source(body, &request), None)
        };
        let on_upgrade = extensions.remove::<OnUpgrade>();
        headers::strip_hop_by_hop(&mut headers);
        let x_cost = headers.get(X_COST).cloned();
        headers::add_forwarded(&mut headers, peer, request.host.as_ref());
        // The request's id as the balancer took or made it, never the client's other values.
        headers.insert(X_REQUEST_ID, id.clone());
        if !headers.contains_key(header::HOST) {
            if let Some(host) = &request.host {
                headers.insert(header::HOST, host.clone());
            }
        }
        if let Some(protocol) = &request.upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol.clone());
        }
        let idempotent =
            method.is_idempotent() || headers.contains_key(IDEMPOTENCY_KEY) || request.replay_route;
        Upstream {
            method,
            headers: Some(headers),
            body,
            idempotent,
            origin: Origin {
                lookup,
                host: request.host,
                path: request.path,
                on_upgrade: request.upgrade.and(on_upgrade),
                http1: version <= Version::HTTP_11,
                x_cost,
            },
            _unsent: unsent,
        }
    }

    /// A request body's source: small and replayable (read in full once a backend is chosen,
    /// so that a retry can send it again), or streamed.
    fn body_source(&self, body: ClientBody, request: &Admitted) -> BodySource {
        let buffer = if request.replay_route {
            self.settings.retry_buffer_bytes
        } else {
            REPLAY_BODY_BYTES
        };
        let fits = match request.declared {
            Some(len) => len <= buffer,
            // A chunked body is buffered for a retry route up to the bound, then streamed.
            None => request.replay_route && buffer > 0,
        };
        if fits {
            BodySource::Buffer {
                body,
                limit: buffer,
            }
        } else {
            BodySource::stream(body, self.settings.max_body_bytes)
        }
    }

    /// Phase 4, the attempts under the request's `RetryPolicy`, until an answer to relay or
    /// a failure to report. Each attempt picks a backend it has not tried (waiting in the
    /// admission queue while none is routable), reads a body to buffer, and sends within the
    /// request's deadline; an attempt that could be retried also watches its backend leave
    /// the table (its node lost: neither an answer nor a reset will come), without a task or
    /// a lock of another thread.
    async fn forward(
        &self,
        upstream: &mut Upstream,
        started: Instant,
        shard: usize,
        job: Option<&Job>,
        trip: &mut Trip,
    ) -> Result<Answer, Failure> {
        let deadline = tokio::time::Instant::from_std(started + self.settings.request_timeout);
        self.budget.deposit(self.clock.nanos(started));
        let mut retry = RetryPolicy::new(upstream.idempotent);
        let mut now = self.clock.nanos(started);
        let ask = Ask {
            work_us: job.map_or(0, |job| self.costs.expected_us(job)),
            bytes: upstream.held_bytes(),
        };
        loop {
            // In flight on its backend from here, while its body is still arriving, until the
            // answer is finished: a drain waits for the upload too.
            let (in_flight, others) = match self.acquire(retry.tried(), now, ask).await? {
                Some(acquired) => acquired,
                None => return Err(retry.take_error().into()),
            };
            let backend = Arc::clone(in_flight.backend());
            if upstream.body.needs_buffering() {
                let max_body = self.settings.max_body_bytes;
                // Boxed, like the other rare steps: keeps the request's future small.
                let read = Box::pin(upstream.body.take().buffer(max_body));
                upstream.body = buffered(timer::timeout_at(deadline, read).await, max_body)?;
            }
            let Some(request) = upstream.request(&backend, others) else {
                return Err(retry.take_error().on(&backend));
            };
            retry.sent_to(&backend, upstream.body.replayable(), others);
            let sent = Instant::now();
            trip.sent(&backend.identity, sent);
            let mut send = std::pin::pin!(timer::timeout_at(
                deadline,
                backend.pool(shard).send(request)
            ));
            let outcome = if retry.may_resend() {
                let until = UntilRemoved {
                    send: send.as_mut(),
                    removed: Some(backend.removed(shard)),
                    leave: Some(|| self.leave(&mut retry)),
                };
                match until.await {
                    Some(outcome) => outcome,
                    None => {
                        now = self.clock.now();
                        let retried = Verdict::Retry(RetryReason::Removed);
                        trip.ended(Ended::Removed, 0, Some(retried));
                        tracing::debug!(backend = %backend.dns_name, "backend left the table while its answer was awaited; retrying on another backend");
                        continue;
                    }
                }
            } else {
                send.await
            };
            match self.settle(
                outcome,
                &backend,
                in_flight,
                sent,
                &mut retry,
                &upstream.body,
                trip,
            ) {
                ControlFlow::Continue(at) => now = at,
                ControlFlow::Break(done) => return done,
            }
        }
    }

    /// A slot for the next attempt on a backend it has not tried, and whether another
    /// backend would remain for a retry; `None` when a retry finds none left.
    ///
    /// Without concurrency limits, the policy picks and the request goes at once. With
    /// them, it goes at once to a backend with a free slot if no request is waiting;
    /// otherwise it waits in the work queue, cheapest first (see `dispatch`). While no
    /// backend is routable at all, a first attempt waits in the admission queue.
    pub(crate) async fn acquire(
        &self,
        tried: &Tried,
        now: u64,
        ask: Ask,
    ) -> Result<Option<(InFlight, bool)>, ProxyError> {
        loop {
            let table = self.backends.load();
            let others = table.candidates.len() > tried.len() + 1;
            let want = Want {
                work_us: ask.work_us,
                free_only: table.limited,
            };
            let queue = self.backends.queue();
            // A retry takes a free slot at once; a first attempt queues behind others.
            if !table.limited || !tried.is_empty() || queue.is_empty() {
                if let Some(backend) = self.picker.pick_for(&table, tried, now, want) {
                    let in_flight = if table.limited {
                        match InFlight::reserve(&backend, ask.work_us) {
                            Some(in_flight) => in_flight,
                            // Taken meanwhile: look again.
                            None => continue,
                        }
                    } else {
                        InFlight::start(backend, ask.work_us)
                    };
                    return Ok(Some((in_flight, others)));
                }
            }
            let untried = table.candidates.iter().any(|c| !tried.contains(&c.backend));
            if table.limited && untried {
                drop(table);
                let wait = queue.wait(ask, tried, self.clock.now(), || self.backends.pump());
                let in_flight = Box::pin(wait).await?;
                return Ok(Some((in_flight, others)));
            }
            if !tried.is_empty() {
                return Ok(None);
            }
            drop(table);
            let backend = self.queue(tried).await?;
            if !self.backends.load().limited {
                let others = self.backends.load().candidates.len() > 1;
                return Ok(Some((InFlight::start(backend, ask.work_us), others)));
            }
        }
    }

    /// The admission queue, while no backend is routable (boxed, like the other rare steps:
    /// keeps the request's future small).
    fn queue<'a>(
        &'a self,
        tried: &'a Tried,
    ) -> Pin<Box<impl Future<Output = Result<Arc<Backend>, ProxyError>> + 'a>> {
        Box::pin(
            self.admission
                .wait(&self.backends, &self.picker, tried, &self.clock),
        )
    }

    /// Whether a request whose backend left the table goes elsewhere (its attempt dropped, the
    /// connection closed): the retry policy's word, counted.
    pub(crate) fn leave(&self, retry: &mut RetryPolicy) -> bool {
        let elsewhere = retry.elsewhere(&self.backends.load());
        let verdict = retry.decide(
            Outcome::Removed { elsewhere },
            &self.budget,
            self.clock.now(),
        );
        self.tally(verdict)
    }

    /// What one attempt's outcome means: an `Answer` or a failure (`Break`), or another
    /// attempt from `now` (`Continue`), as the retry policy says. Counts the attempt on its
    /// backend: errors, connect failures and ejection, latency, statuses.
    #[allow(clippy::too_many_arguments)]
    fn settle(
        &self,
        outcome: Sent,
        backend: &Arc<Backend>,
        in_flight: InFlight,
        sent: Instant,
        retry: &mut RetryPolicy,
        body: &BodySource,
        trip: &mut Trip,
    ) -> ControlFlow<Result<Answer, Failure>, u64> {
        let (response, mut lease) = match outcome {
            Ok(Ok(answer)) => answer,
            Ok(Err(err)) => {
                let fault = body.fault();
                if fault != BodyFault::None {
                    trip.ended(Ended::Reset, 0, None);
                    let max_body = self.settings.max_body_bytes;
                    return ControlFlow::Break(Err(body_error(fault, max_body).into()));
                }
                in_flight.failed();
                drop(in_flight);
                let now = self.clock.now();
                self.send_failed(backend, &err, now);
                let ended = Ended::of(&err);
                let verdict = retry.decide(Outcome::Failed(err), &self.budget, now);
                trip.ended(ended, 0, Some(verdict));
                if self.tally(verdict) {
                    return ControlFlow::Continue(now);
                }
                return ControlFlow::Break(Err(retry.take_error().on(backend)));
            }
            Err(Elapsed) => {
                trip.ended(Ended::Timeout, 0, None);
                in_flight.failed();
                self.metrics.timeouts.fetch_add(1, Relaxed);
                let timeout = ProxyError::Timeout(self.settings.request_timeout);
                return ControlFlow::Break(Err(timeout.on(backend)));
            }
        };
        if !body.replayable() {
            // The upload may still be streaming; never reuse its connection.
            lease.forbid_reuse();
        }
        let status = response.status();
        let now = self.answered(backend, sent, status);
        let verdict = matches!(
            status,
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
        )
        .then(|| retry.decide(Outcome::Unavailable, &self.budget, now));
        trip.ended(Ended::Answered, status.as_u16(), verdict);
        if verdict.is_some_and(|verdict| self.tally(verdict)) {
            in_flight.failed();
            tracing::debug!(backend = %backend.dns_name, status = status.as_u16(), "retrying on another backend");
            return ControlFlow::Continue(now);
        }
        if status.is_server_error() {
            in_flight.failed();
        }
        ControlFlow::Break(Ok(Answer {
            response,
            lease,
            in_flight,
            waited: sent.elapsed(),
        }))
    }

    /// Logs a failed send; a connect failure counts towards the backend's ejection.
    pub(crate) fn send_failed(&self, backend: &Backend, err: &SendError, now: u64) {
        if let SendError::Connect(_) = err {
            if backend.connect_failed(now, self.settings.ejection) {
                tracing::warn!(
                    backend = %backend.dns_name,
                    address = %backend.address,
                    failures = backend.consecutive_failures(),
                    "backend ejected after consecutive connect failures"
                );
            }
            tracing::debug!(backend = %backend.dns_name, cause = %Chain(err), "connect failed");
        } else {
            tracing::debug!(backend = %backend.dns_name, cause = %Chain(err), "request to backend failed");
        }
    }

    /// Records an answer's head from `backend` (sent at `sent`): connected, its latency, its
    /// status. Returns the clock's time of the answer.
    pub(crate) fn answered(&self, backend: &Backend, sent: Instant, status: StatusCode) -> u64 {
        backend.connected();
        let answered = Instant::now();
        let now = self.clock.nanos(answered);
        backend.observe_latency(
            answered.saturating_duration_since(sent),
            now,
            self.settings.ewma_decay,
        );
        backend.statuses.record(status.as_u16());
        now
    }

    /// Counts the retry policy's verdict; whether the request is sent again.
    pub(crate) fn tally(&self, verdict: Verdict) -> bool {
        match verdict {
            Verdict::Retry(reason) => {
                self.metrics.retried(reason);
                true
            }
            Verdict::Denied => {
                self.metrics.retries_denied.fetch_add(1, Relaxed);
                false
            }
            Verdict::GiveUp => false,
        }
    }

    /// Phase 5, the backend's answer on its way back: hop-by-hop headers out, `X-Backend` and
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

impl Upstream {
    /// One attempt's request to `backend`; `others`: another attempt may follow, so the head
    /// is cloned rather than taken. `None` once the body cannot be sent again.
    fn request(&mut self, backend: &Backend, others: bool) -> Option<Request<RequestBody>> {
        let (Some(body), Some(headers)) = (
            self.body.attempt(),
            if others {
                self.headers.clone()
            } else {
                self.headers.take()
            },
        ) else {
            return None;
        };
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = Uri::from(self.origin.path.clone());
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;
        if !request.headers().contains_key(header::HOST) {
            request
                .headers_mut()
                .insert(header::HOST, backend.host_header.clone());
        }
        Some(request)
    }
}

pin_project_lite::pin_project! {
    /// An attempt that gives up when its backend leaves the table and `leave` says the request
    /// goes elsewhere (`None`); else it waits for the answer as if nothing happened. A named
    /// future, not an `async` block: it keeps the request's future small.
    pub(crate) struct UntilRemoved<'a, F, L> {
        send: Pin<&'a mut F>,
        #[pin]
        removed: Option<Removed<'a>>,
        leave: Option<L>,
    }
}

impl<'a, F, L> UntilRemoved<'a, F, L> {
    pub(crate) fn new(send: Pin<&'a mut F>, removed: Removed<'a>, leave: L) -> Self {
        Self {
            send,
            removed: Some(removed),
            leave: Some(leave),
        }
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

/// A body read in full for replay, within the request's deadline, or the client's answer.
fn buffered(
    read: Result<Result<BodySource, BodyFault>, Elapsed>,
    max_body: u64,
) -> Result<BodySource, ProxyError> {
    match read {
        Ok(Ok(read)) => Ok(read),
        Ok(Err(fault)) => Err(body_error(fault, max_body)),
        Err(Elapsed) => Err(ProxyError::BodyTimeout),
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
