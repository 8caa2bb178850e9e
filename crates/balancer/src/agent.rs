//! The deployment agent, both ways: its queue comes in over WebSocket (a full snapshot on
//! connect, then one per change), load reports go out over gRPC every ~500 ms. Both reconnect
//! with capped exponential backoff and jitter; while the agent is away the last known queue
//! keeps routing and reports are simply not sent.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use backon::{BackoffBuilder, ExponentialBuilder};
use common::{CancellationToken, queue::QueueSnapshot};
use futures_util::StreamExt;
use proto::{BackendLoad, LoadReport, deployment_agent_client::DeploymentAgentClient};
use tokio_tungstenite::tungstenite::Message;

use crate::{admission::Admission, backend::Backends, metrics::Metrics};

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
    pub url: String,
    pub target_port: u16,
    pub reconnect_max: Duration,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
}

/// Follows the agent's queue until `shutdown`.
pub async fn subscribe(
    settings: Subscription,
    backends: Backends,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut delays = backoff(settings.reconnect_max);
    let mut failures = 0u32;
    loop {
        let connect = tokio_tungstenite::connect_async(settings.url.as_str());
        let connected = tokio::select! {
            () = shutdown.cancelled() => return,
            result = tokio::time::timeout(settings.connect_timeout, connect) => result,
        };
        match connected {
            Ok(Ok((stream, _response))) => {
                tracing::info!(url = %settings.url, "connected to the agent's queue");
                metrics.agent_connected.store(1, Relaxed);
                failures = 0;
                let started = Instant::now();
                follow(stream, &settings, &backends, &metrics, &shutdown).await;
                metrics.agent_connected.store(0, Relaxed);
                if shutdown.is_cancelled() {
                    return;
                }
                let table = backends.load();
                tracing::warn!(
                    url = %settings.url,
                    kept_backends = table.entries.len(),
                    "lost the agent's queue; routing on the last known backends"
                );
                if started.elapsed() > Duration::from_secs(10) {
                    delays = backoff(settings.reconnect_max);
                }
            }
            Ok(Err(err)) => {
                failures += 1;
                log_failure(failures, &settings.url, &err.to_string());
            }
            Err(_) => {
                failures += 1;
                log_failure(failures, &settings.url, "connect timed out");
            }
        }
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

async fn follow<S>(
    mut stream: tokio_tungstenite::WebSocketStream<S>,
    settings: &Subscription,
    backends: &Backends,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut last_seq: Option<u64> = None;
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => {
                let _ = stream.close(None).await;
                return;
            }
            message = tokio::time::timeout(settings.idle_timeout, stream.next()) => message,
        };
        let message = match message {
            Err(_) => {
                tracing::warn!(idle = ?settings.idle_timeout, "the agent's queue went silent; reconnecting");
                return;
            }
            Ok(None) => return,
            Ok(Some(Err(err))) => {
                tracing::debug!(cause = %err, "agent WebSocket error");
                return;
            }
            Ok(Some(Ok(message))) => message,
        };
        let text = match &message {
            Message::Text(text) => text.as_bytes(),
            Message::Binary(bytes) => bytes.as_ref(),
            Message::Close(_) => return,
            // Pings are answered by tungstenite on the next read.
            _ => continue,
        };
        let snapshot: QueueSnapshot = match serde_json::from_slice(text) {
            Ok(snapshot) => snapshot,
            Err(err) => {
                tracing::warn!(cause = %err, "ignoring a queue message that is not a snapshot");
                continue;
            }
        };
        if snapshot.version != common::queue::SCHEMA_VERSION {
            tracing::warn!(
                version = snapshot.version,
                expected = common::queue::SCHEMA_VERSION,
                "queue snapshot of another schema version; using it anyway"
            );
        }
        if last_seq.is_some_and(|seq| snapshot.seq < seq) {
            tracing::debug!(seq = snapshot.seq, "stale queue snapshot dropped");
            continue;
        }
        last_seq = Some(snapshot.seq);
        metrics.agent_snapshots.fetch_add(1, Relaxed);
        backends.apply_snapshot(&snapshot, settings.target_port);
        let table = backends.load();
        tracing::debug!(
            seq = snapshot.seq,
            items = snapshot.items.len(),
            routable = table.candidates.len(),
            "queue snapshot applied"
        );
    }
}

/// Settings of the load reports.
#[derive(Debug, Clone)]
pub struct Reports {
    pub url: String,
    pub balancer_id: String,
    pub interval: Duration,
    pub reconnect_max: Duration,
    pub connect_timeout: Duration,
    /// AGENT_TOKEN, sent as `authorization: Bearer` metadata on every call.
    pub token: Option<String>,
}

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

/// Sends a load report every interval over one long `ReportLoad` stream, reopened with
/// backoff whenever it fails, until `shutdown`.
pub async fn report(
    settings: Reports,
    backends: Backends,
    admission: Arc<Admission>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let endpoint = match tonic::transport::Endpoint::from_shared(settings.url.clone()) {
        Ok(endpoint) => endpoint
            .connect_timeout(settings.connect_timeout)
            .tcp_nodelay(true),
        Err(err) => {
            tracing::error!(url = %settings.url, cause = %err, "invalid agent gRPC URL; no load reports");
            return;
        }
    };
    let Some(bearer) = Bearer::new(settings.token.as_deref()) else {
        tracing::error!("AGENT_TOKEN cannot be sent in a header; no load reports");
        return;
    };
    let mut delays = backoff(settings.reconnect_max);
    let mut previous: HashMap<u64, (u64, u64)> = HashMap::new();
    let mut failures = 0u32;
    loop {
        let client =
            DeploymentAgentClient::with_interceptor(endpoint.connect_lazy(), bearer.clone());
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
        let mut ticks = tokio::time::interval(settings.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sent = 0u64;
        let ended = loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    drop(sender);
                    let _ = tokio::time::timeout(Duration::from_secs(1), &mut call).await;
                    call.abort();
                    return;
                }
                result = &mut call => break result,
                _ = ticks.tick() => {
                    let report = build_report(&settings.balancer_id, &backends, &admission, &mut previous);
                    match sender.try_send(report) {
                        Ok(()) => {
                            sent += 1;
                            metrics.reports_sent.fetch_add(1, Relaxed);
                            if sent == 2 && failures > 0 {
                                tracing::info!(url = %settings.url, "load reports reach the agent again");
                                failures = 0;
                            }
                        }
                        Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                            tracing::debug!("load report stream is backed up; report skipped");
                        }
                        Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {}
                    }
                }
            }
        };
        let cause = match ended {
            Ok(Ok(_)) => "the agent closed the report stream".to_owned(),
            Ok(Err(status)) => format!("{}: {}", status.code(), status.message()),
            Err(err) => err.to_string(),
        };
        failures += 1;
        if failures == 1 {
            tracing::warn!(url = %settings.url, %cause, "load reports to the agent failed; retrying quietly with backoff");
        } else {
            tracing::debug!(url = %settings.url, %cause, failures, "load reports still failing");
        }
        if opened.elapsed() > Duration::from_secs(10) {
            delays = backoff(settings.reconnect_max);
        }
        let delay = delays.next().unwrap_or(settings.reconnect_max);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// One report: per backend in flight now, completed and errors since the previous report,
/// latency EWMA; and the demand waiting for a backend.
fn build_report(
    balancer_id: &str,
    backends: &Backends,
    admission: &Admission,
    previous: &mut HashMap<u64, (u64, u64)>,
) -> LoadReport {
    let table = backends.load_full();
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
    }
}
