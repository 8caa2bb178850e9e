//! The deployment agents, both ways: the queue comes in over WebSocket from whichever agent
//! is reachable (a full snapshot on connect, then one per change; never an older one than
//! applied, by `(epoch, seq)`), load reports go out over gRPC every ~500 ms to every agent
//! (every address of each URL's host, looked up again every few seconds).
//! Both reconnect with capped exponential backoff and jitter; while no agent is reachable the
//! last known queue keeps routing and reports are simply not sent.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use backon::{BackoffBuilder, ExponentialBuilder};
use common::{CancellationToken, queue::QueueSnapshot};
use futures_util::StreamExt;
use proto::{BackendLoad, LoadReport, deployment_agent_client::DeploymentAgentClient};
use tokio::{sync::broadcast, task::JoinSet};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    admission::Admission,
    backend::Backends,
    metrics::{Metrics, ReportStreamStats},
    resolve::Resolver,
};

fn backoff(max: Duration) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Settings of the queue subscription.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// The agents' queue WebSockets, tried in this order (never empty).
    pub urls: Vec<String>,
    pub target_port: u16,
    pub reconnect_max: Duration,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
}

/// What to do with a queue snapshot, by its `(epoch, seq)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Apply,
    /// Not newer than the one this connection applied last: skipped, the connection stays.
    Ignore,
    /// The first of a connection, from an epoch older than the one applied: this agent is
    /// behind (a deposed leader, or one cut off from the others), so the balancer leaves it.
    Refuse,
}

/// The never-go-backwards rule. Within a connection a snapshot is applied only when its
/// `(epoch, seq)` is greater than the last one applied; the first snapshot of a new connection
/// (`seq` may restart there) only when its epoch is at least the last applied epoch.
#[derive(Debug, Default)]
struct Order {
    /// Epoch of the last applied snapshot, on any connection.
    epoch: Option<u64>,
}

impl Order {
    /// `connection`: the position this connection applied last, `None` before its first.
    fn judge(&self, position: (u64, u64), connection: Option<(u64, u64)>) -> Verdict {
        match connection {
            Some(last) if position <= last => Verdict::Ignore,
            Some(_) => Verdict::Apply,
            None if self.epoch.is_some_and(|epoch| position.0 < epoch) => Verdict::Refuse,
            None => Verdict::Apply,
        }
    }

    fn applied(&mut self, position: (u64, u64)) {
        self.epoch = Some(position.0);
    }
}

/// Why a connection to an agent's queue ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Closed, broken or silent; or the balancer is shutting down.
    Lost,
    /// Its first snapshot was from an older epoch than the one applied.
    Refused,
}

/// Follows the queue of whichever agent is reachable until `shutdown`: the URLs in turn,
/// from the last one followed, the next one after every failure, refusal or lost connection,
/// with backoff between attempts.
pub async fn subscribe(
    settings: Subscription,
    backends: Backends,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let urls = &settings.urls;
    if urls.is_empty() {
        tracing::error!("no agent WebSocket URL; the queue is not followed");
        return;
    }
    let mut delays = backoff(settings.reconnect_max);
    let mut failures = vec![0u32; urls.len()];
    let mut order = Order::default();
    let mut followed: Option<usize> = None;
    let mut index = 0;
    loop {
        let url = urls[index].as_str();
        let connect = tokio_tungstenite::connect_async(url);
        let connected = tokio::select! {
            () = shutdown.cancelled() => return,
            result = tokio::time::timeout(settings.connect_timeout, connect) => result,
        };
        match connected {
            Ok(Ok((stream, _response))) => {
                tracing::debug!(%url, "connected to an agent's queue");
                failures[index] = 0;
                let started = Instant::now();
                let connection = Connection {
                    url,
                    switched: followed.is_some_and(|previous| previous != index),
                    settings: &settings,
                    backends: &backends,
                    metrics: &metrics,
                    shutdown: &shutdown,
                };
                let (ended, applied) = connection.follow(stream, &mut order).await;
                metrics.agent_connected.store(0, Relaxed);
                metrics.agent_url.store(None);
                if applied {
                    followed = Some(index);
                }
                if shutdown.is_cancelled() {
                    return;
                }
                if ended == Ended::Lost && applied {
                    let table = backends.load();
                    tracing::warn!(
                        %url,
                        kept_backends = table.entries.len(),
                        next = %urls[(index + 1) % urls.len()],
                        "lost the agent's queue; routing on the last known backends"
                    );
                }
                if applied && started.elapsed() > Duration::from_secs(10) {
                    delays = backoff(settings.reconnect_max);
                }
            }
            Ok(Err(err)) => {
                failures[index] += 1;
                log_failure(failures[index], url, &err.to_string());
            }
            Err(_) => {
                failures[index] += 1;
                log_failure(failures[index], url, "connect timed out");
            }
        }
        index = (index + 1) % urls.len();
        let delay = delays.next().unwrap_or(settings.reconnect_max);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

fn log_failure(failures: u32, url: &str, cause: &str) {
    // Loud once, then quiet: the agent may simply not be there (standalone use, start-up).
    if failures == 1 {
        tracing::warn!(%url, %cause, "cannot reach the agent's queue; retrying with backoff");
    } else {
        tracing::debug!(%url, %cause, failures, "agent's queue still unreachable");
    }
}

/// One connection to one agent's queue.
struct Connection<'a> {
    url: &'a str,
    /// Another agent's queue was followed before this one.
    switched: bool,
    settings: &'a Subscription,
    backends: &'a Backends,
    metrics: &'a Metrics,
    shutdown: &'a CancellationToken,
}

impl Connection<'_> {
    /// Applies the agent's snapshots until the connection ends; returns why, and whether
    /// any snapshot was applied.
    async fn follow<S>(
        &self,
        mut stream: tokio_tungstenite::WebSocketStream<S>,
        order: &mut Order,
    ) -> (Ended, bool)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let (url, settings, metrics) = (self.url, self.settings, self.metrics);
        let mut last: Option<(u64, u64)> = None;
        let ended = loop {
            let message = tokio::select! {
                () = self.shutdown.cancelled() => {
                    let _ = stream.close(None).await;
                    break Ended::Lost;
                }
                message = tokio::time::timeout(settings.idle_timeout, stream.next()) => message,
            };
            let message = match message {
                Err(_) => {
                    tracing::warn!(%url, idle = ?settings.idle_timeout, "the agent's queue went silent; reconnecting");
                    break Ended::Lost;
                }
                Ok(None) => break Ended::Lost,
                Ok(Some(Err(err))) => {
                    tracing::debug!(%url, cause = %err, "agent WebSocket error");
                    break Ended::Lost;
                }
                Ok(Some(Ok(message))) => message,
            };
            let text = match &message {
                Message::Text(text) => text.as_bytes(),
                Message::Binary(bytes) => bytes.as_ref(),
                Message::Close(_) => break Ended::Lost,
                // Pings are answered by tungstenite on the next read.
                _ => continue,
            };
            let snapshot: QueueSnapshot = match serde_json::from_slice(text) {
                Ok(snapshot) => snapshot,
                Err(err) => {
                    tracing::warn!(%url, cause = %err, "ignoring a queue message that is not a snapshot");
                    continue;
                }
            };
            if snapshot.version != common::queue::SCHEMA_VERSION {
                tracing::warn!(
                    %url,
                    version = snapshot.version,
                    expected = common::queue::SCHEMA_VERSION,
                    "queue snapshot of another schema version; using it anyway"
                );
            }
            let position = snapshot.position();
            match order.judge(position, last) {
                Verdict::Apply => {}
                Verdict::Ignore => {
                    metrics.agent_stale_snapshots.fetch_add(1, Relaxed);
                    tracing::debug!(%url, epoch = position.0, seq = position.1, "stale queue snapshot dropped");
                    continue;
                }
                Verdict::Refuse => {
                    metrics.agent_stale_snapshots.fetch_add(1, Relaxed);
                    tracing::warn!(
                        %url,
                        epoch = position.0,
                        seq = position.1,
                        applied_epoch = order.epoch,
                        "this agent's queue is older than the one applied; trying the next agent"
                    );
                    let _ = tokio::time::timeout(Duration::from_secs(1), stream.close(None)).await;
                    break Ended::Refused;
                }
            }
            if last.is_none() {
                metrics.agent_connected.store(1, Relaxed);
                metrics.agent_url.store(Some(Arc::new(url.to_owned())));
                if self.switched {
                    metrics.agent_url_switches.fetch_add(1, Relaxed);
                }
                tracing::info!(%url, epoch = position.0, seq = position.1, "following the agent's queue");
            }
            last = Some(position);
            order.applied(position);
            metrics.agent_snapshots.fetch_add(1, Relaxed);
            self.backends
                .apply_snapshot(&snapshot, settings.target_port);
            let table = self.backends.load();
            tracing::debug!(
                epoch = position.0,
                seq = position.1,
                items = snapshot.items.len(),
                routable = table.candidates.len(),
                "queue snapshot applied"
            );
        };
        (ended, last.is_some())
    }
}

/// Settings of the load reports.
#[derive(Debug, Clone)]
pub struct Reports {
    /// Every agent's gRPC endpoint: each gets every report, at every address its host has.
    pub urls: Vec<String>,
    pub balancer_id: String,
    pub interval: Duration,
    pub reconnect_max: Duration,
    pub connect_timeout: Duration,
    /// AGENT_TOKEN, sent as `authorization: Bearer` metadata on every call.
    pub token: Option<String>,
    /// How often the host of a URL is looked up again (AGENT_RESOLVE_PERIOD).
    pub resolve_period: Duration,
    pub resolver: Resolver,
}

/// Longest wait for one lookup of a URL's host.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Adds `authorization: Bearer <AGENT_TOKEN>` to every gRPC call to the agent.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::AsciiMetadataValue>);

impl Bearer {
    /// `None` when `token` cannot be a header value (the config's parser prevents that).
    pub fn new(token: Option<&str>) -> Option<Self> {
        match token {
            None => Some(Self(None)),
            Some(token) => format!("Bearer {token}")
                .parse()
                .ok()
                .map(|value| Self(Some(value))),
        }
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Builds a load report every interval and sends it to every agent, each over one long
/// `ReportLoad` stream reopened with backoff whenever it fails, until `shutdown`. Followers
/// get the reports too, so whichever agent leads knows every balancer. A URL whose host has
/// several addresses (Swarm's `tasks.<service>`: one per agent task) gets a stream per
/// address, the set following the host's addresses.
pub async fn report(
    settings: Reports,
    backends: Backends,
    admission: Arc<Admission>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let Some(bearer) = Bearer::new(settings.token.as_deref()) else {
        tracing::error!("AGENT_TOKEN cannot be sent in a header; no load reports");
        return;
    };
    let settings = Arc::new(settings);
    let (reports, _) = broadcast::channel::<LoadReport>(4);
    let mut supervisors = JoinSet::new();
    for url in &settings.urls {
        let target = match Target::parse(url) {
            Ok(target) => target,
            Err(cause) => {
                tracing::error!(%url, %cause, "invalid agent gRPC URL; no load reports to it");
                continue;
            }
        };
        let supervisor = Supervisor {
            url: Arc::from(url.as_str()),
            target,
            bearer: bearer.clone(),
            settings: Arc::clone(&settings),
            metrics: Arc::clone(&metrics),
            reports: reports.clone(),
            shutdown: shutdown.clone(),
        };
        supervisors.spawn(supervisor.run());
    }
    if supervisors.is_empty() {
        return;
    }
    let mut previous: HashMap<u64, (u64, u64)> = HashMap::new();
    let mut ticks = tokio::time::interval(settings.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticks.tick() => {
                let report = build_report(&settings.balancer_id, &backends, &admission, &mut previous);
                // No receiver only while every stream is between attempts.
                let _ = reports.send(report);
            }
        }
    }
    while let Some(joined) = supervisors.join_next().await {
        if let Err(err) = joined {
            tracing::error!(cause = %err, "a load report supervisor failed");
        }
    }
}

/// Where the reports of one configured URL go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// An IP address: one stream, to the URL as given.
    Address(SocketAddr),
    /// A host name: a stream to each of its addresses, looked up every resolve period.
    Host { host: String, port: u16 },
}

impl Target {
    fn parse(url: &str) -> Result<Self, String> {
        tonic::transport::Endpoint::from_shared(url.to_owned()).map_err(|err| err.to_string())?;
        let uri: http::Uri = url
            .parse()
            .map_err(|err: http::uri::InvalidUri| err.to_string())?;
        let host = uri.host().ok_or("no host")?;
        let port = uri.port_u16().unwrap_or(80);
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        Ok(match bare.parse::<IpAddr>() {
            Ok(ip) => Self::Address(SocketAddr::new(ip, port)),
            Err(_) => Self::Host {
                host: host.to_owned(),
                port,
            },
        })
    }
}

/// The report streams of one configured URL: one per address of its host.
struct Supervisor {
    url: Arc<str>,
    target: Target,
    bearer: Bearer,
    settings: Arc<Reports>,
    metrics: Arc<Metrics>,
    reports: broadcast::Sender<LoadReport>,
    shutdown: CancellationToken,
}

/// A stream the supervisor runs, to one address.
struct Running {
    stop: CancellationToken,
    task: tokio::task::Id,
}

/// The supervisor's streams: the tasks, and which address each goes to.
#[derive(Default)]
struct Streams {
    tasks: JoinSet<()>,
    running: BTreeMap<SocketAddr, Running>,
}

impl Supervisor {
    /// Runs the URL's streams until `shutdown`, then waits for each to end.
    async fn run(self) {
        let mut streams = Streams::default();
        match &self.target {
            Target::Address(address) => {
                self.start(&mut streams, *address, self.url.to_string());
                self.shutdown.cancelled().await;
            }
            Target::Host { host, port } => self.follow(host, *port, &mut streams).await,
        }
        // The streams' tokens are children of `shutdown`: each sends its last report and ends.
        while let Some(joined) = streams.tasks.join_next().await {
            if let Err(err) = joined {
                tracing::error!(url = %self.url, cause = %err, "a load report stream failed");
            }
        }
    }

    /// Looks `host` up every resolve period (sooner, with backoff, while it fails) and keeps
    /// a stream to each address it has, until `shutdown`. A failed lookup keeps the streams.
    async fn follow(&self, host: &str, port: u16, streams: &mut Streams) {
        let url = &*self.url;
        let period = self.settings.resolve_period;
        let mut delays = backoff(period);
        let mut failures = 0u32;
        loop {
            let lookup = tokio::time::timeout(LOOKUP_TIMEOUT, self.settings.resolver.lookup(host));
            let looked_up = tokio::select! {
                () = self.shutdown.cancelled() => return,
                result = lookup => result.unwrap_or_else(|_| {
                    Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "lookup timed out"))
                }),
            };
            let delay = match looked_up {
                Ok(addresses) => {
                    if failures > 0 {
                        tracing::info!(%url, %host, "the agents' host resolves again");
                    }
                    failures = 0;
                    delays = backoff(period);
                    let wanted = addresses
                        .into_iter()
                        .map(|ip| SocketAddr::new(ip, port))
                        .collect();
                    self.reconcile(&wanted, streams);
                    period
                }
                Err(err) => {
                    failures += 1;
                    let kept = streams.running.len();
                    if failures == 1 {
                        tracing::warn!(%url, %host, cause = %err, kept_streams = kept, "cannot look up the agents' host; keeping its report streams, retrying with backoff");
                    } else {
                        tracing::debug!(%url, %host, cause = %err, failures, kept_streams = kept, "the agents' host still does not resolve");
                    }
                    delays.next().unwrap_or(period)
                }
            };
            let wake = tokio::time::sleep(delay);
            tokio::pin!(wake);
            loop {
                tokio::select! {
                    () = self.shutdown.cancelled() => return,
                    () = &mut wake => break,
                    Some(joined) = streams.tasks.join_next_with_id(), if !streams.tasks.is_empty() => {
                        self.reaped(joined, streams);
                    }
                }
            }
        }
    }

    /// Starts a stream to each address of `wanted` without one, ends those to addresses gone.
    fn reconcile(&self, wanted: &BTreeSet<SocketAddr>, streams: &mut Streams) {
        let url = &*self.url;
        let gone: Vec<SocketAddr> = streams
            .running
            .keys()
            .filter(|address| !wanted.contains(address))
            .copied()
            .collect();
        for address in gone {
            if let Some(stream) = streams.running.remove(&address) {
                stream.stop.cancel();
            }
            self.metrics.report_stream_dropped(&self.url, address);
            tracing::info!(%url, %address, "agent address gone; its load report stream ends");
        }
        for &address in wanted {
            if !streams.running.contains_key(&address) {
                tracing::info!(%url, %address, "agent address added; load reports go to it");
                self.start(streams, address, format!("http://{address}"));
            }
        }
    }

    /// Starts the stream to `address`, connecting to `uri`.
    fn start(&self, streams: &mut Streams, address: SocketAddr, uri: String) {
        let endpoint = match tonic::transport::Endpoint::from_shared(uri) {
            Ok(endpoint) => endpoint,
            Err(err) => {
                tracing::error!(url = %self.url, %address, cause = %err, "cannot make a gRPC endpoint; no load reports to it");
                return;
            }
        };
        let stop = self.shutdown.child_token();
        let stream = ReportStream {
            url: Arc::clone(&self.url),
            address,
            endpoint: endpoint
                .connect_timeout(self.settings.connect_timeout)
                .tcp_nodelay(true),
            bearer: self.bearer.clone(),
            settings: Arc::clone(&self.settings),
            metrics: Arc::clone(&self.metrics),
            stats: self.metrics.report_stream_added(&self.url, address),
            stop: stop.clone(),
        };
        let task = streams
            .tasks
            .spawn(stream.run(self.reports.subscribe()))
            .id();
        streams.running.insert(address, Running { stop, task });
    }

    /// A stream ended on its own (it panicked): its address gets a new one at the next lookup.
    fn reaped(
        &self,
        joined: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
        streams: &mut Streams,
    ) {
        let id = match joined {
            Ok((id, ())) => id,
            Err(err) => {
                tracing::error!(url = %self.url, cause = %err, "a load report stream failed");
                err.id()
            }
        };
        let ended: Vec<SocketAddr> = streams
            .running
            .iter()
            .filter(|(_, stream)| stream.task == id)
            .map(|(address, _)| *address)
            .collect();
        for address in ended {
            streams.running.remove(&address);
            self.metrics.report_stream_dropped(&self.url, address);
        }
    }
}

/// The report stream to one address of one agent URL.
struct ReportStream {
    url: Arc<str>,
    address: SocketAddr,
    endpoint: tonic::transport::Endpoint,
    bearer: Bearer,
    settings: Arc<Reports>,
    metrics: Arc<Metrics>,
    stats: Arc<ReportStreamStats>,
    /// Cancelled at shutdown, or when the address is gone.
    stop: CancellationToken,
}

impl ReportStream {
    /// Sends every report built to this agent until `stop`; reports built while the stream is
    /// down are not sent.
    async fn run(self, mut reports: broadcast::Receiver<LoadReport>) {
        let (url, address, settings) = (&*self.url, self.address, &*self.settings);
        let mut delays = backoff(settings.reconnect_max);
        let mut failures = 0u32;
        loop {
            // Nothing built before this stream opened.
            reports = reports.resubscribe();
            let client = DeploymentAgentClient::with_interceptor(
                self.endpoint.connect_lazy(),
                self.bearer.clone(),
            );
            let (sender, receiver) = tokio::sync::mpsc::channel::<LoadReport>(4);
            let mut call = tokio::spawn({
                let mut client = client.clone();
                async move {
                    client
                        .report_load(tokio_stream::wrappers::ReceiverStream::new(receiver))
                        .await
                }
            });
            let opened = Instant::now();
            let mut sent = 0u64;
            let ended = loop {
                let report = tokio::select! {
                    () = self.stop.cancelled() => None,
                    result = &mut call => break result,
                    report = reports.recv() => match report {
                        Ok(report) => Some(report),
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => None,
                    },
                };
                let Some(report) = report else {
                    // Shutting down, or the address is gone: end the stream and let the agent
                    // take its last report.
                    drop(sender);
                    let _ = tokio::time::timeout(Duration::from_secs(1), &mut call).await;
                    call.abort();
                    return;
                };
                match sender.try_send(report) {
                    Ok(()) => {
                        sent += 1;
                        self.metrics.reports_sent.fetch_add(1, Relaxed);
                        self.stats.sent.fetch_add(1, Relaxed);
                        if sent == 2 && failures > 0 {
                            tracing::info!(%url, %address, "load reports reach the agent again");
                            failures = 0;
                        }
                    }
                    Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                        tracing::debug!(%url, %address, "load report stream is backed up; report skipped");
                    }
                    Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {}
                }
            };
            let cause = match ended {
                Ok(Ok(_)) => "the agent closed the report stream".to_owned(),
                Ok(Err(status)) => format!("{}: {}", status.code(), status.message()),
                Err(err) => err.to_string(),
            };
            failures += 1;
            if failures == 1 {
                tracing::warn!(%url, %address, %cause, "load reports to the agent failed; retrying quietly with backoff");
            } else {
                tracing::debug!(%url, %address, %cause, failures, "load reports still failing");
            }
            if opened.elapsed() > Duration::from_secs(10) {
                delays = backoff(settings.reconnect_max);
            }
            let delay = delays.next().unwrap_or(settings.reconnect_max);
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// One report: per backend in flight now (requests and expected seconds), completed and
/// errors since the previous report, latency EWMA; the demand waiting for a backend; the
/// requests waiting for a free slot and their expected seconds.
fn build_report(
    balancer_id: &str,
    backends: &Backends,
    admission: &Admission,
    previous: &mut HashMap<u64, (u64, u64)>,
) -> LoadReport {
    let table = backends.load_full();
    let queue = backends.queue().view();
    let mut seen = HashMap::with_capacity(table.entries.len());
    let loads = table
        .entries
        .iter()
        .map(|entry| {
            let backend = &entry.backend;
            let completed = backend.completed.load(Relaxed);
            let errors = backend.errors.load(Relaxed);
            let (last_completed, last_errors) =
                previous.get(&backend.key).copied().unwrap_or((0, 0));
            seen.insert(backend.key, (completed, errors));
            BackendLoad {
                address: backend.address.clone(),
                in_flight: backend.in_flight(),
                completed: completed.saturating_sub(last_completed),
                errors: errors.saturating_sub(last_errors),
                latency_ewma_ms: backend.latency_ewma_ms(),
                work_seconds: backend.work_us() as f64 / 1e6,
            }
        })
        .collect();
    *previous = seen;
    LoadReport {
        balancer_id: balancer_id.to_owned(),
        timestamp_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        backends: loads,
        queued_without_backend: admission.take_peak(),
        queued_work_seconds: queue.work_seconds,
        queued_for_slot: queue.waiting,
    }
}

#[cfg(test)]
mod tests;
