//! Prometheus metrics. The hot path only bumps atomics (per backend, or in [`Metrics`]); the
//! text is built at scrape time by a prometheus-client `Collector` that reads them.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use arc_swap::ArcSwapOption;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter, exemplar::Exemplar, gauge::ConstGauge},
    registry::Registry,
};

use crate::{
    admission::Admission,
    backend::{Backends, StatusCounts},
    cache::Cache,
};

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// A fixed-bucket histogram of atomics.
#[derive(Debug)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: Duration) {
        let secs = value.as_secs_f64();
        let index = BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(BUCKETS.len());
        self.counts[index].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(value.as_micros()).unwrap_or(u64::MAX),
            Relaxed,
        );
    }

    /// `(sum in seconds, count, cumulative buckets)`.
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(BUCKETS.len() + 1);
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Relaxed);
            buckets.push((BUCKETS.get(i).copied().unwrap_or(f64::INFINITY), cumulative));
        }
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        (sum, cumulative, buckets)
    }
}

/// Why a request was retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    Connect,
    Reset,
    Status,
    /// Its backend left the routing table while the answer was awaited (a lost node).
    Removed,
}

impl RetryReason {
    /// The `reason` label of `balancer_retries_total`, and a record's `retry`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Reset => "reset",
            Self::Status => "status",
            Self::Removed => "removed",
        }
    }
}

/// Why the HTTP/1.1 fast path handed a connection to hyper: the `reason` label of
/// `balancer_http1_fallbacks_total`.
pub const FALLBACK_REASONS: [&str; 11] = [
    "version",
    "h2c",
    "target_form",
    "connect",
    "upgrade",
    "expect",
    "host",
    "transfer_coding",
    "connection_tokens",
    "cors",
    "large_body",
];

/// Counters of the proxy path that are not per backend.
#[derive(Debug)]
pub struct Metrics {
    pub latency: Histogram,
    /// Answers made by the balancer itself (no backend involved), by status.
    pub local: StatusCounts,
    retries: [AtomicU64; 4],
    pub retries_denied: AtomicU64,
    pub timeouts: AtomicU64,
    /// Requests the HTTP/1.1 fast path answered (refusals included).
    pub fast_path_requests: AtomicU64,
    /// Connections the fast path handed to hyper, by [`FALLBACK_REASONS`].
    fallbacks: [AtomicU64; FALLBACK_REASONS.len()],
    /// 1 while some agent's queue is followed.
    pub agent_connected: AtomicU64,
    /// The URL of the agent whose queue is followed, if any.
    pub agent_url: ArcSwapOption<String>,
    pub agent_snapshots: AtomicU64,
    /// Snapshots not applied for being older than the one applied.
    pub agent_stale_snapshots: AtomicU64,
    /// Times the queue was followed from another agent than before.
    pub agent_url_switches: AtomicU64,
    pub reports_sent: AtomicU64,
    /// The load report streams, by agent gRPC URL and the address each goes to.
    report_streams: Mutex<ReportStreams>,
}

/// The load report streams by (agent gRPC URL, address).
type ReportStreams = BTreeMap<(Arc<str>, SocketAddr), Arc<ReportStreamStats>>;

/// Counters of one load report stream (one address of one agent gRPC URL).
#[derive(Debug, Default)]
pub struct ReportStreamStats {
    /// Reports handed to this stream.
    pub sent: AtomicU64,
}

/// One load report stream, as `/backends` and `/metrics` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportStreamView {
    pub url: Arc<str>,
    pub address: SocketAddr,
    pub sent: u64,
}

impl Metrics {
    /// Counts a connection handed to hyper; `reason` indexes [`FALLBACK_REASONS`].
    pub fn fell_back(&self, reason: usize) {
        if let Some(count) = self.fallbacks.get(reason) {
            count.fetch_add(1, Relaxed);
        }
    }

    pub fn new() -> Self {
        Self {
            latency: Histogram::new(),
            local: StatusCounts::new(),
            retries: std::array::from_fn(|_| AtomicU64::new(0)),
            retries_denied: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            fast_path_requests: AtomicU64::new(0),
            fallbacks: std::array::from_fn(|_| AtomicU64::new(0)),
            agent_connected: AtomicU64::new(0),
            agent_url: ArcSwapOption::empty(),
            agent_snapshots: AtomicU64::new(0),
            agent_stale_snapshots: AtomicU64::new(0),
            agent_url_switches: AtomicU64::new(0),
            reports_sent: AtomicU64::new(0),
            report_streams: Mutex::new(BTreeMap::new()),
        }
    }

    /// Registers the report stream of `url` to `address` (replacing one still ending there).
    pub fn report_stream_added(
        &self,
        url: &Arc<str>,
        address: SocketAddr,
    ) -> Arc<ReportStreamStats> {
        let stats = Arc::new(ReportStreamStats::default());
        self.report_streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((Arc::clone(url), address), Arc::clone(&stats));
        stats
    }

    /// Forgets the report stream of `url` to `address`.
    pub fn report_stream_dropped(&self, url: &Arc<str>, address: SocketAddr) {
        self.report_streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&(Arc::clone(url), address));
    }

    /// The current load report streams, by URL then address.
    pub fn report_streams(&self) -> Vec<ReportStreamView> {
        self.report_streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|((url, address), stats)| ReportStreamView {
                url: Arc::clone(url),
                address: *address,
                sent: stats.sent.load(Relaxed),
            })
            .collect()
    }

    pub fn retried(&self, reason: RetryReason) {
        self.retries[reason as usize].fetch_add(1, Relaxed);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Builds the `/metrics` text from the live state.
#[derive(Debug, Clone)]
pub struct Exporter {
    registry: Arc<Registry>,
}

impl Exporter {
    pub fn new(
        metrics: Arc<Metrics>,
        backends: Backends,
        admission: Arc<Admission>,
        cache: Option<Cache>,
    ) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(State {
            metrics,
            backends,
            admission,
            cache,
        }));
        Self {
            registry: Arc::new(registry),
        }
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(cause = %err, "cannot encode metrics");
        }
        text
    }
}

#[derive(Debug)]
struct State {
    metrics: Arc<Metrics>,
    backends: Backends,
    admission: Arc<Admission>,
    cache: Option<Cache>,
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(&[(&str, &str)], u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    if let [(labels, value)] = series {
        if labels.is_empty() {
            return ConstCounter::new(*value).encode(family);
        }
    }
    for (labels, value) in series {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge<N: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: Vec<(Vec<(&str, String)>, N)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    let mut series = series;
    if series.len() == 1 && series[0].0.is_empty() {
        if let Some((_, value)) = series.pop() {
            return ConstGauge::new(value).encode(family);
        }
    }
    for (labels, value) in series {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for State {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let table = self.backends.load_full();

        // Requests by status and backend.
        let mut family = encoder.encode_descriptor(
            "balancer_requests",
            "Requests answered, by status and by the backend that served them (\"none\": the balancer answered itself).",
            None,
            MetricType::Counter,
        )?;
        for entry in &table.entries {
            for (status, count) in entry.backend.statuses.seen() {
                let labels = [
                    ("backend", entry.backend.dns_name.as_str()),
                    ("status", &status.to_string()),
                ];
                ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
            }
        }
        for (status, count) in self.metrics.local.seen() {
            let labels = [("backend", "none"), ("status", &status.to_string())];
            ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
        }

        let (sum, count, buckets) = self.metrics.latency.snapshot();
        let mut family = encoder.encode_descriptor(
            "balancer_request_duration_seconds",
            "Time from a request's arrival to the backend's response headers (or the balancer's own answer).",
            None,
            MetricType::Histogram,
        )?;
        family.encode_histogram::<NoLabelSet>(
            sum,
            count,
            &buckets,
            None::<&HashMap<usize, Exemplar<NoLabelSet, f64>>>,
        )?;

        let retries = &self.metrics.retries;
        counter(
            &mut encoder,
            "balancer_retries",
            "Requests sent again to another backend, by reason.",
            &[
                (&[("reason", "connect")], retries[0].load(Relaxed)),
                (&[("reason", "reset")], retries[1].load(Relaxed)),
                (&[("reason", "status")], retries[2].load(Relaxed)),
                (&[("reason", "removed")], retries[3].load(Relaxed)),
            ],
        )?;
        counter(
            &mut encoder,
            "balancer_http1_fast_path_requests",
            "Requests the HTTP/1.1 fast path answered (refusals included; BALANCER_HTTP1_PATH).",
            &[(&[], self.metrics.fast_path_requests.load(Relaxed))],
        )?;
        let fallbacks: Vec<([(&str, &str); 1], u64)> = FALLBACK_REASONS
            .iter()
            .zip(&self.metrics.fallbacks)
            .map(|(reason, count)| ([("reason", *reason)], count.load(Relaxed)))
            .collect();
        let series: Vec<(&[(&str, &str)], u64)> = fallbacks
            .iter()
            .map(|(labels, count)| (&labels[..], *count))
            .collect();
        counter(
            &mut encoder,
            "balancer_http1_fallbacks",
            "Connections the HTTP/1.1 fast path handed to hyper at a message boundary, by reason.",
            &series,
        )?;
        counter(
            &mut encoder,
            "balancer_retries_denied",
            "Retries not made because the retry budget was spent.",
            &[(&[], self.metrics.retries_denied.load(Relaxed))],
        )?;
        counter(
            &mut encoder,
            "balancer_timeouts",
            "Requests answered 504 because the backend exceeded REQUEST_TIMEOUT.",
            &[(&[], self.metrics.timeouts.load(Relaxed))],
        )?;

        if let Some(cache) = &self.cache {
            counter(
                &mut encoder,
                "balancer_cache_requests",
                "Cacheable GETs by result.",
                &[
                    (&[("result", "hit")], cache.hits.load(Relaxed)),
                    (&[("result", "miss")], cache.misses.load(Relaxed)),
                ],
            )?;
            counter(
                &mut encoder,
                "balancer_cache_stores",
                "Answers stored in the cache.",
                &[(&[], cache.stores.load(Relaxed))],
            )?;
            gauge(
                &mut encoder,
                "balancer_cache_entries",
                "Entries in the cache.",
                vec![(
                    vec![],
                    i64::try_from(cache.entry_count()).unwrap_or(i64::MAX),
                )],
            )?;
            gauge(
                &mut encoder,
                "balancer_cache_weight_bytes",
                "Weight of the cache against CACHE_MAX_BYTES (bytes, each entry at least CACHE_MAX_BYTES / CACHE_CAPACITY).",
                vec![(
                    vec![],
                    i64::try_from(cache.weighted_size()).unwrap_or(i64::MAX),
                )],
            )?;
        }

        gauge(
            &mut encoder,
            "balancer_queue_depth",
            "Requests waiting in the admission queue for a backend.",
            vec![(
                vec![],
                i64::try_from(self.admission.waiting()).unwrap_or(i64::MAX),
            )],
        )?;
        counter(
            &mut encoder,
            "balancer_queue_rejected",
            "Requests answered 503 from the admission queue, by reason.",
            &[
                (
                    &[("reason", "full")],
                    self.admission.rejected_full.load(Relaxed),
                ),
                (
                    &[("reason", "timeout")],
                    self.admission.rejected_timeout.load(Relaxed),
                ),
            ],
        )?;
        counter(
            &mut encoder,
            "balancer_queue_admitted",
            "Requests that waited in the admission queue and then got a backend.",
            &[(&[], self.admission.admitted.load(Relaxed))],
        )?;

        let work = self.backends.queue();
        let view = work.view();
        gauge(
            &mut encoder,
            "balancer_work_queue_depth",
            "Requests waiting for a free slot on a backend with a concurrency limit.",
            vec![(vec![], i64::try_from(view.waiting).unwrap_or(i64::MAX))],
        )?;
        gauge(
            &mut encoder,
            "balancer_work_queue_bytes",
            "Bytes held by the requests waiting for a free slot (QUEUE_MAX_BYTES bounds it).",
            vec![(vec![], i64::try_from(view.bytes).unwrap_or(i64::MAX))],
        )?;
        let c = &work.counters;
        counter(
            &mut encoder,
            "balancer_work_queue_requests",
            "Requests through the work queue, by outcome: queued; granted a slot (overdue: by the aging bound); full, timeout and cancelled (the client went away) leave without one.",
            &[
                (&[("outcome", "queued")], c.queued.load(Relaxed)),
                (&[("outcome", "granted")], c.granted.load(Relaxed)),
                (&[("outcome", "overdue")], c.overdue.load(Relaxed)),
                (&[("outcome", "full")], c.full.load(Relaxed)),
                (&[("outcome", "timeout")], c.timeouts.load(Relaxed)),
                (&[("outcome", "cancelled")], c.cancelled.load(Relaxed)),
            ],
        )?;

        let per_backend = |f: &dyn Fn(&crate::backend::Entry) -> f64| {
            table
                .entries
                .iter()
                .map(|entry| (vec![("backend", entry.backend.dns_name.clone())], f(entry)))
                .collect::<Vec<_>>()
        };
        gauge(
            &mut encoder,
            "balancer_backend_in_flight",
            "Requests in flight per backend.",
            per_backend(&|e| e.backend.in_flight() as f64),
        )?;
        gauge(
            &mut encoder,
            "balancer_backend_work_seconds",
            "Expected seconds of the requests in flight per backend (from the cost fits).",
            per_backend(&|e| e.backend.work_us() as f64 / 1e6),
        )?;
        gauge(
            &mut encoder,
            "balancer_backend_latency_ewma_seconds",
            "Peak-EWMA of the time to response headers per backend.",
            per_backend(&|e| e.backend.latency_ewma_ms() / 1e3),
        )?;
        gauge(
            &mut encoder,
            "balancer_backend_score",
            "The agent's score per backend (100 = idle).",
            per_backend(&|e| e.score),
        )?;
        gauge(
            &mut encoder,
            "balancer_backends",
            "Known backends and those taking new requests.",
            vec![
                (
                    vec![("state", "known".to_owned())],
                    table.entries.len() as i64,
                ),
                (
                    vec![("state", "routable".to_owned())],
                    table.candidates.len() as i64,
                ),
            ],
        )?;
        let mut family = encoder.encode_descriptor(
            "balancer_upstream_connections_opened",
            "TCP connections opened to each backend (reuse keeps this low).",
            None,
            MetricType::Counter,
        )?;
        for entry in &table.entries {
            let labels = [("backend", entry.backend.dns_name.as_str())];
            let opened: u64 = entry
                .backend
                .pools()
                .iter()
                .map(|p| p.opened.load(Relaxed))
                .sum();
            ConstCounter::new(opened).encode(family.encode_family(&labels)?)?;
        }
        let ejections: u64 = table
            .entries
            .iter()
            .map(|e| e.backend.ejected_total.load(Relaxed))
            .sum();
        counter(
            &mut encoder,
            "balancer_ejections",
            "Times a backend was ejected after consecutive connect failures (current backends).",
            &[(&[], ejections)],
        )?;
        gauge(
            &mut encoder,
            "balancer_agent_connected",
            "1 while the queue of some agent is followed.",
            vec![(vec![], self.metrics.agent_connected.load(Relaxed) as i64)],
        )?;
        counter(
            &mut encoder,
            "balancer_agent_snapshots",
            "Queue snapshots applied from the agents.",
            &[(&[], self.metrics.agent_snapshots.load(Relaxed))],
        )?;
        counter(
            &mut encoder,
            "balancer_agent_stale_snapshots",
            "Queue snapshots not applied because they were older (epoch, seq) than the one applied; an agent whose first snapshot is from an older epoch is left for the next.",
            &[(&[], self.metrics.agent_stale_snapshots.load(Relaxed))],
        )?;
        counter(
            &mut encoder,
            "balancer_agent_url_switches",
            "Times the queue was followed from another agent than before.",
            &[(&[], self.metrics.agent_url_switches.load(Relaxed))],
        )?;
        counter(
            &mut encoder,
            "balancer_load_reports",
            "Load reports sent, to every agent each.",
            &[(&[], self.metrics.reports_sent.load(Relaxed))],
        )?;
        let streams = self.metrics.report_streams();
        let labels: Vec<[(&str, String); 2]> = streams
            .iter()
            .map(|stream| {
                [
                    ("url", stream.url.to_string()),
                    ("address", stream.address.to_string()),
                ]
            })
            .collect();
        let mut family = encoder.encode_descriptor(
            "balancer_agent_report_stream_reports",
            "Load reports sent per report stream: one stream per address of each agent gRPC URL (a host name is looked up every AGENT_RESOLVE_PERIOD); a stream's series goes when its address does.",
            None,
            MetricType::Counter,
        )?;
        for (labels, stream) in labels.iter().zip(&streams) {
            ConstCounter::new(stream.sent).encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }
}
