//! The balancer: a streaming HTTP reverse proxy in front of the worker containers. It routes
//! each request to a backend from the deployment agent's live queue (or a static list),
//! without a global lock: the backends are an immutable snapshot swapped in whole, their load
//! counters are atomics. Around the proxy path: a TTL cache for static GETs, retries within a
//! budget, passive ejection, an admission queue while no backend exists, load reports to the
//! agent, and a graceful drain on SIGTERM.

pub mod config;
pub mod resolve;

mod admin;
mod admission;
mod agent;
mod backend;
mod body;
mod cache;
mod cors;
pub mod cost;
mod dispatch;
mod error;
mod fast;
// The fast path's wire format (#16): not wired into the proxy yet, the fast path wires it next.
#[allow(dead_code)]
pub(crate) mod h1;
mod headers;
mod journal;
mod metrics;
mod policy;
mod proxy;
mod retry;
mod route;
mod serve;
mod timer;
mod upstream;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::Duration,
};

use common::{
    CancellationToken,
    serve::{ServeOptions, Stopped},
};
use tokio::net::TcpListener;

pub use config::{Config, Policy};
pub use resolve::Resolver;

use crate::{
    admission::Admission,
    backend::{Backends, Clock, Dispatch, Ejection, SourceKind},
    cache::{Cache, CacheConfig},
    config::Source,
    dispatch::QueueSettings,
    metrics::{Exporter, Metrics},
    policy::Picker,
    proxy::{Settings, Shared},
    retry::RetryBudget,
    upstream::PoolConfig,
};

/// The two listening sockets.
#[derive(Debug)]
pub struct Listeners {
    /// Client traffic.
    pub http: TcpListener,
    /// `/health`, `/ready`, `/backends`, `/metrics`.
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds both ports of `config`.
    pub async fn bind(config: &Config) -> std::io::Result<Self> {
        let http = TcpListener::bind(SocketAddr::new(config.host, config.port)).await?;
        let admin = TcpListener::bind(SocketAddr::new(config.host, config.admin_port)).await?;
        Ok(Self { http, admin })
    }
}

/// Serves traffic and the admin API until `shutdown` is cancelled, then lets in-flight
/// requests finish within `SHUTDOWN_GRACE`.
pub async fn run(listeners: Listeners, config: Config, shutdown: CancellationToken) -> Stopped {
    let clock = Clock::new();
    let metrics = Arc::new(Metrics::new());
    let pool = PoolConfig {
        connect_timeout: config.connect_timeout,
        idle_timeout: config.upstream_idle_timeout,
        max_idle: config.upstream_max_idle,
    };
    let source = config.source();
    let threads = config.resolved_threads();
    let backends = Backends::with_dispatch(
        pool,
        threads,
        match source {
            Source::Static(_) => SourceKind::Static,
            Source::Agent(_) => SourceKind::Agent,
        },
        Dispatch {
            queue: QueueSettings {
                capacity: config.queue_capacity,
                max_bytes: config.queue_max_bytes,
                timeout: config.queue_timeout,
                delay_factor: config.max_queue_delay_factor,
            },
            clock,
            threshold: f64::from(config.max_cpu_threshold),
        },
    );
    let cache = Cache::new(CacheConfig {
        capacity: config.cache_capacity,
        max_bytes: config.cache_max_bytes,
        max_entry_bytes: config.cache_max_entry_bytes,
        ttl: config.cache_ttl,
    });
    let admission = Arc::new(Admission::new(config.queue_capacity, config.queue_timeout));
    let seed = config.resolved_seed();
    let policy = config.resolved_policy();
    let shared = Arc::new(Shared {
        backends: backends.clone(),
        picker: Picker::new(policy, seed, config.ewma_decay),
        cache: cache.clone(),
        budget: RetryBudget::new(config.retry_budget_ratio, config.retry_budget_min_per_sec),
        admission: Arc::clone(&admission),
        metrics: Arc::clone(&metrics),
        clock,
        settings: Settings {
            cors: config.cors.clone(),
            request_timeout: config.request_timeout,
            retry_after_secs: config.retry_after_secs,
            max_body_bytes: config.max_body_bytes,
            max_header_bytes: config.max_header_bytes,
            ewma_decay: config.ewma_decay,
            ejection: Ejection {
                after: config.eject_after,
                base: config.eject_base,
                max: config.eject_max,
            },
            deny_paths: config.deny_paths.clone(),
            body_read_timeout: config.body_read_timeout,
            retry_routes: config.retry_routes.clone(),
            retry_buffer_bytes: config.retry_buffer_bytes,
            fast_path: config.http1_fast_path,
        },
        costs: cost::Costs::new(config.cost_rules.clone(), config.cost_body_limit),
        journal: journal::Journal::new(
            config.request_history as usize,
            threads,
            config.access_log,
            seed ^ u64::from(std::process::id()),
        ),
    });

    // Background tasks stop when the traffic port has drained.
    let background = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    match &source {
        Source::Static(addresses) => backends.set_static(addresses, config.backend_concurrency),
        Source::Agent(urls) => {
            tasks.spawn(agent::subscribe(
                agent::Subscription {
                    urls: urls.clone(),
                    target_port: config.target_port,
                    reconnect_max: config.agent_reconnect_max,
                    idle_timeout: config.agent_idle_timeout,
                    connect_timeout: config.connect_timeout,
                },
                backends.clone(),
                Arc::clone(&metrics),
                background.clone(),
            ));
        }
    }
    let report_urls = config.report_urls();
    if !report_urls.is_empty() {
        tasks.spawn(agent::report(
            agent::Reports {
                urls: report_urls.clone(),
                balancer_id: config.resolved_balancer_id(),
                interval: config.report_interval,
                reconnect_max: config.agent_reconnect_max,
                connect_timeout: config.connect_timeout,
                token: config.agent_token.clone().filter(|token| !token.is_empty()),
                resolve_period: config.agent_resolve_period,
                resolver: config.resolver.clone(),
            },
            backends.clone(),
            Arc::clone(&admission),
            Arc::clone(&metrics),
            background.clone(),
        ));
    }
    if let Some(cache) = cache.clone() {
        let stop = background.clone();
        let period = config
            .cache_ttl
            .clamp(Duration::from_millis(100), Duration::from_secs(1));
        tasks.spawn(async move {
            let mut ticks = tokio::time::interval(period);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = ticks.tick() => cache.collect_expired().await,
                }
            }
        });
    }

    {
        // Idle upstream connections past UPSTREAM_IDLE_TIMEOUT are closed.
        let stop = background.clone();
        let backends = backends.clone();
        let period = (config.upstream_idle_timeout / 2).max(Duration::from_millis(100));
        tasks.spawn(async move {
            let mut ticks = tokio::time::interval(period);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = ticks.tick() => {
                        for entry in &backends.load().entries {
                            for pool in entry.backend.pools() {
                                pool.sweep();
                            }
                        }
                    }
                }
            }
        });
    }

    let draining = Arc::new(AtomicBool::new(false));
    let exporter = Exporter::new(Arc::clone(&metrics), backends.clone(), admission, cache);
    let admin = admin::router(admin::AdminState {
        shared: Arc::clone(&shared),
        exporter,
        draining: Arc::clone(&draining),
    });

    let address = local(&listeners.http);
    let admin_address = local(&listeners.admin);
    tracing::info!(
        %address,
        %admin_address,
        %policy,
        threads,
        source = ?source,
        reports = if report_urls.is_empty() { "off".to_owned() } else { report_urls.join(",") },
        cache_capacity = config.cache_capacity,
        "balancer listening"
    );

    let admin_stop = CancellationToken::new();
    let admin_task = tokio::spawn(common::serve::serve(
        listeners.admin,
        admin,
        ServeOptions {
            grace: Duration::from_secs(1),
            max_connections: Some(64),
            header_read_timeout: Duration::from_secs(5),
        },
        admin_stop.clone(),
        CancellationToken::new(),
    ));
    let options = ServeOptions {
        grace: config.shutdown_grace,
        max_connections: Some(config.max_connections),
        header_read_timeout: config.header_read_timeout,
    };
    let drain_flag = {
        let draining = Arc::clone(&draining);
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            draining.store(true, Relaxed);
        }
    };
    let serving = serve::serve(
        listeners.http,
        Arc::clone(&shared),
        threads,
        options,
        shutdown.clone(),
    );
    let (stopped, ()) = tokio::join!(serving, drain_flag);
    tracing::info!(?stopped, "balancer stopped serving traffic");
    background.cancel();
    admin_stop.cancel();
    let _ = admin_task.await;
    while tasks.join_next().await.is_some() {}
    stopped
}

fn local(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map_or_else(|err| err.to_string(), |a| a.to_string())
}

/// Probes `GET /health` on the local admin port; `Ok` when it answers `200`.
pub async fn healthcheck(config: &Config, timeout: Duration) -> Result<(), String> {
    common::serve::probe_health(config.host, config.admin_port, timeout).await
}
