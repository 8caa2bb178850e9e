//! The balancer's configuration: every field a flag and an environment variable, parsed once
//! at start. Tests build the struct directly (`Config { .., ..Config::default() }`).

use std::{fmt, net::IpAddr, str::FromStr, time::Duration};

use common::config::parse_duration;

pub const DEFAULT_PORT: u16 = 8000;
pub const DEFAULT_ADMIN_PORT: u16 = 8001;
/// Recent requests the admin port keeps (`REQUEST_HISTORY`).
pub const DEFAULT_REQUEST_HISTORY: u32 = 10_000;
pub const DEFAULT_AGENT_WS_PORT: u16 = 9001;
pub const DEFAULT_AGENT_GRPC_PORT: u16 = 9002;
pub const DEFAULT_TARGET_PORT: u16 = 8080;
pub const DEFAULT_CACHE_CAPACITY: u64 = 1000;
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 64 << 20;
pub const DEFAULT_CACHE_MAX_ENTRY_BYTES: u64 = 1 << 20;
pub const DEFAULT_QUEUE_CAPACITY: usize = 1000;
pub const DEFAULT_MAX_BODY_BYTES: u64 = 256 << 20;
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 << 10;
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_UPSTREAM_MAX_IDLE: usize = 1024;
pub const DEFAULT_RETRY_BUFFER_BYTES: u64 = 1 << 20;

/// How a backend is chosen for each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Policy {
    /// Random, with probability proportional to the agent's score (the original behaviour).
    WeightedRandom,
    /// Power of two choices: of two random candidates, the one with the lower
    /// peak-EWMA latency x (in-flight + 1) / weight.
    #[default]
    P2cEwma,
    /// The candidate with the fewest requests in flight per unit of weight.
    LeastRequest,
    /// Each candidate in turn.
    RoundRobin,
    /// The candidate with the least expected seconds in flight per unit of capacity (its
    /// concurrency limit), this request's included (issue #17). The default when `COST_RULES`
    /// is set.
    LeastWork,
}

impl Policy {
    /// The name used in `BALANCER_POLICY`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WeightedRandom => "weighted-random",
            Self::P2cEwma => "p2c-ewma",
            Self::LeastRequest => "least-request",
            Self::RoundRobin => "round-robin",
            Self::LeastWork => "least-work",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `BALANCER_POLICY` as given; `None` (empty) picks by the other settings, see
/// [`Config::resolved_policy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolicyChoice(pub Option<Policy>);

impl From<Policy> for PolicyChoice {
    fn from(policy: Policy) -> Self {
        Self(Some(policy))
    }
}

fn parse_policy(text: &str) -> Result<PolicyChoice, String> {
    use clap::ValueEnum;
    if text.trim().is_empty() {
        return Ok(PolicyChoice(None));
    }
    Policy::from_str(text.trim(), true)
        .map(Into::into)
        .map_err(|_| {
            let names: Vec<&str> = Policy::value_variants()
                .iter()
                .map(|p| p.as_str())
                .collect();
            format!("unknown policy {text:?}; one of {}", names.join(", "))
        })
}

/// A factor of at least 1.
fn parse_factor(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(factor) if factor.is_finite() && factor >= 1.0 => Ok(factor),
        _ => Err(format!("{text:?} is not a number of at least 1")),
    }
}

/// `QUEUE_MAX_BYTES`'s default: 64 MiB.
pub const DEFAULT_QUEUE_MAX_BYTES: u64 = 64 << 20;

/// One entry of `BACKENDS`: `host:port`, or `host` (then `TARGET_PORT` is appended).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendAddr {
    pub host: String,
    pub port: Option<u16>,
}

impl BackendAddr {
    /// `host:port`, with `default_port` when the entry has none.
    pub fn with_port(&self, default_port: u16) -> String {
        let port = self.port.unwrap_or(default_port);
        if self.host.contains(':') {
            format!("[{}]:{port}", self.host)
        } else {
            format!("{}:{port}", self.host)
        }
    }
}

impl FromStr for BackendAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let text = text.strip_prefix("http://").unwrap_or(text);
        let text = text.trim_end_matches('/');
        if text.is_empty() {
            return Err("empty backend address; use host:port".into());
        }
        if text.contains('/') || text.contains('@') || text.chars().any(char::is_whitespace) {
            return Err(format!("`{text}` is not a host:port address"));
        }
        // [v6]:port, [v6], host:port, host
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("`{text}`: unclosed `[`"))?;
            match after {
                "" => (host, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None => return Err(format!("`{text}` is not a host:port address")),
                },
            }
        } else {
            match text.rsplit_once(':') {
                Some((host, port)) if !host.contains(':') => (host, Some(port)),
                Some(_) => return Err(format!("`{text}`: write IPv6 addresses as [addr]:port")),
                None => (text, None),
            }
        };
        if host.is_empty() {
            return Err(format!("`{text}` has no host"));
        }
        let port = port
            .map(|port| {
                port.parse::<u16>()
                    .ok()
                    .filter(|port| *port > 0)
                    .ok_or_else(|| format!("`{text}`: `{port}` is not a port (1-65535)"))
            })
            .transpose()?;
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

/// A token fit for a header value (visible ASCII); empty (as compose passes an unset
/// variable) means none. The message does not repeat the secret.
fn parse_token(text: &str) -> Result<String, String> {
    let token = text.trim();
    if token.bytes().all(|byte| byte.is_ascii_graphic()) {
        Ok(token.to_owned())
    } else {
        Err("the token must be visible ASCII characters only (it is sent in a header)".into())
    }
}

fn parse_backend(text: &str) -> Result<BackendAddr, String> {
    text.parse()
}

fn parse_ws_url(text: &str) -> Result<String, String> {
    let text = text.trim();
    let uri: http::Uri = text
        .parse()
        .map_err(|err| format!("`{text}` is not a URL: {err}"))?;
    match uri.scheme_str() {
        Some("ws") if uri.host().is_some() => Ok(text.to_owned()),
        Some("wss") => Err(
            "wss:// is not supported; the agent is reached over the stack network with ws://"
                .into(),
        ),
        _ => Err(format!("`{text}` is not a ws://host:port/path URL")),
    }
}

fn parse_http_url(text: &str) -> Result<String, String> {
    let text = text.trim();
    let uri: http::Uri = text
        .parse()
        .map_err(|err| format!("`{text}` is not a URL: {err}"))?;
    match uri.scheme_str() {
        Some("http") if uri.host().is_some() => Ok(text.to_owned()),
        Some("https") => Err(
            "https:// is not supported; the agent is reached over the stack network with http://"
                .into(),
        ),
        _ => Err(format!("`{text}` is not an http://host:port URL")),
    }
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(value) if (0.0..=10.0).contains(&value) => Ok(value),
        _ => Err(format!(
            "`{text}` is not a ratio between 0 and 10 (e.g. 0.2)"
        )),
    }
}

fn parse_header_limit(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(value) if (1024..=1 << 20).contains(&value) => Ok(value),
        _ => Err(format!(
            "`{text}` is not a byte count between 1024 and 1048576"
        )),
    }
}

/// `fast` or `hyper`: whether the HTTP/1.1 fast path serves.
/// `true`/`false` (also `1`/`0`, `on`/`off`, `yes`/`no`).
fn parse_switch(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "on" | "yes" => Ok(true),
        "false" | "0" | "off" | "no" => Ok(false),
        _ => Err(format!("expected true or false, not {text:?}")),
    }
}

fn parse_http1_path(text: &str) -> Result<bool, String> {
    match text.trim() {
        "fast" => Ok(true),
        "hyper" => Ok(false),
        other => Err(format!("expected `fast` or `hyper`, got `{other}`")),
    }
}

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err(format!("`{text}` must be greater than zero"));
    }
    Ok(duration)
}

/// Balancer settings. Flags win over environment variables; every one has a default.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address the traffic and admin ports listen on.
    #[arg(
        long,
        env = "BALANCER_HOST",
        value_name = "BALANCER_HOST",
        default_value = "0.0.0.0"
    )]
    pub host: IpAddr,

    /// Port for client traffic (HTTP/1.1 and h2c).
    #[arg(long, env = "HOST_PORT_HTTP_BALANCER", value_name = "HOST_PORT_HTTP_BALANCER",
          default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// Threads serving traffic, each with its own event loop and upstream connections
    /// (default: the CPU quota, rounded up).
    #[arg(long, env = "BALANCER_THREADS", value_name = "BALANCER_THREADS",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,

    /// Admin port: /health, /ready, /backends, /metrics.
    #[arg(long = "admin-port", env = "HOST_PORT_ADMIN_BALANCER", value_name = "HOST_PORT_ADMIN_BALANCER",
          default_value_t = DEFAULT_ADMIN_PORT)]
    pub admin_port: u16,

    /// Static backends, `host:port,...`, for standalone use; when set, the agent's queue is
    /// not used.
    #[arg(long, env = "BACKENDS", value_name = "BACKENDS", value_delimiter = ',',
          value_parser = parse_backend, conflicts_with_all = ["agent_ws_url", "agent_ws_urls"])]
    pub backends: Vec<BackendAddr>,

    /// The agent's queue WebSocket (default: ws://AGENT_HOST:HOST_PORT_WS_DEPLOYMENT_AGENT/ws).
    /// One agent; for several, AGENT_WS_URLS.
    #[arg(long = "agent-ws-url", env = "AGENT_WS_URL", value_name = "AGENT_WS_URL",
          value_parser = parse_ws_url)]
    pub agent_ws_url: Option<String>,

    /// The queue WebSockets of several agents, `ws://host:port/ws,...`: the balancer follows
    /// whichever is reachable, in this order, and never applies an older queue (epoch, seq).
    /// Not together with AGENT_WS_URL.
    #[arg(long = "agent-ws-urls", env = "AGENT_WS_URLS", value_name = "AGENT_WS_URLS",
          value_delimiter = ',', value_parser = parse_ws_url, conflicts_with = "agent_ws_url")]
    pub agent_ws_urls: Vec<String>,

    /// Host of the deployment agent.
    #[arg(
        long = "agent-host",
        env = "AGENT_HOST",
        value_name = "AGENT_HOST",
        default_value = "deployment-agent"
    )]
    pub agent_host: String,

    /// The agent's WebSocket port.
    #[arg(long = "agent-ws-port", env = "HOST_PORT_WS_DEPLOYMENT_AGENT",
          value_name = "HOST_PORT_WS_DEPLOYMENT_AGENT", default_value_t = DEFAULT_AGENT_WS_PORT)]
    pub agent_ws_port: u16,

    /// The agent's gRPC endpoint for load reports (default: http://<agent host>:HOST_PORT_GRPC_DEPLOYMENT_AGENT,
    /// the host taken from AGENT_WS_URL(S) when set, one per host). With BACKENDS, reports are
    /// sent only when this (or AGENT_GRPC_URLS) is set. One agent; for several, AGENT_GRPC_URLS.
    #[arg(long = "agent-grpc-url", env = "AGENT_GRPC_URL", value_name = "AGENT_GRPC_URL",
          value_parser = parse_http_url)]
    pub agent_grpc_url: Option<String>,

    /// The gRPC endpoints of several agents, `http://host:port,...`: every one gets every load
    /// report, so whichever agent leads sees this balancer; a host with several addresses gets
    /// them at every address (see AGENT_RESOLVE_PERIOD). Not together with AGENT_GRPC_URL.
    #[arg(long = "agent-grpc-urls", env = "AGENT_GRPC_URLS", value_name = "AGENT_GRPC_URLS",
          value_delimiter = ',', value_parser = parse_http_url, conflicts_with = "agent_grpc_url")]
    pub agent_grpc_urls: Vec<String>,

    /// The agent's gRPC port.
    #[arg(long = "agent-grpc-port", env = "HOST_PORT_GRPC_DEPLOYMENT_AGENT",
          value_name = "HOST_PORT_GRPC_DEPLOYMENT_AGENT", default_value_t = DEFAULT_AGENT_GRPC_PORT)]
    pub agent_grpc_port: u16,

    /// Longest wait between two attempts to reach the agent (exponential backoff with jitter).
    #[arg(long = "agent-reconnect-max", env = "AGENT_RECONNECT_MAX", value_name = "AGENT_RECONNECT_MAX",
          default_value = "10s", value_parser = parse_positive_duration)]
    pub agent_reconnect_max: Duration,

    /// Reconnect when the agent's WebSocket has been silent (no snapshot, no ping) this long.
    #[arg(long = "agent-idle-timeout", env = "AGENT_IDLE_TIMEOUT", value_name = "AGENT_IDLE_TIMEOUT",
          default_value = "30s", value_parser = parse_positive_duration)]
    pub agent_idle_timeout: Duration,

    /// How often the host of each agent gRPC URL is looked up again (`tasks.<service>` on
    /// Swarm names every agent task): a report stream per address, started for a new address,
    /// ended for one gone. URLs with an IP address are never looked up.
    #[arg(long = "agent-resolve-period", env = "AGENT_RESOLVE_PERIOD", value_name = "AGENT_RESOLVE_PERIOD",
          default_value = "5s", value_parser = parse_positive_duration)]
    pub agent_resolve_period: Duration,

    /// How the hosts of the agent gRPC URLs are looked up: the system resolver; tests give
    /// their own.
    #[arg(skip)]
    pub resolver: crate::resolve::Resolver,

    /// How often a load report is sent to the agent.
    #[arg(long = "report-interval", env = "LOAD_REPORT_INTERVAL", value_name = "LOAD_REPORT_INTERVAL",
          default_value = "500ms", value_parser = parse_positive_duration)]
    pub report_interval: Duration,

    /// Name of this balancer in load reports (default: the hostname).
    #[arg(long = "balancer-id", env = "BALANCER_ID", value_name = "BALANCER_ID")]
    pub balancer_id: Option<String>,

    /// Port appended to a backend address that has none.
    #[arg(long = "target-port", env = "TARGET_PORT", value_name = "TARGET_PORT",
          default_value_t = DEFAULT_TARGET_PORT)]
    pub target_port: u16,

    /// Routing policy; empty: `least-work` when COST_RULES is set, else `p2c-ewma`.
    #[arg(
        long,
        env = "BALANCER_POLICY",
        value_name = "BALANCER_POLICY",
        default_value = "",
        value_parser = parse_policy
    )]
    pub policy: PolicyChoice,

    /// Requests each static backend (BACKENDS) takes at once; more wait in the balancer's
    /// queue, cheapest first (issue #17). 0 = unlimited. With the agent, each container's
    /// limit comes from the agent.
    #[arg(
        long = "backend-concurrency",
        env = "BACKEND_CONCURRENCY",
        value_name = "BACKEND_CONCURRENCY",
        default_value_t = 0
    )]
    pub backend_concurrency: u32,

    /// The share of a backend's concurrency limit it is given, in percent (seed 002's
    /// MAX_CPU_THRESHOLD: a request that would push every backend past it waits).
    #[arg(long = "max-cpu-threshold", env = "MAX_CPU_THRESHOLD", value_name = "MAX_CPU_THRESHOLD",
          default_value_t = 100, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub max_cpu_threshold: u8,

    /// How long a request waiting for a free slot can be passed over by cheaper ones, as a
    /// multiple of its own expected seconds (at least 50 ms); then it goes first.
    #[arg(long = "max-queue-delay-factor", env = "MAX_QUEUE_DELAY_FACTOR",
          value_name = "MAX_QUEUE_DELAY_FACTOR", default_value = "10", value_parser = parse_factor)]
    pub max_queue_delay_factor: f64,

    /// Bytes (heads and bodies) the requests waiting for a free slot may hold in all; past
    /// it, 503.
    #[arg(long = "queue-max-bytes", env = "QUEUE_MAX_BYTES", value_name = "QUEUE_MAX_BYTES",
          default_value_t = DEFAULT_QUEUE_MAX_BYTES)]
    pub queue_max_bytes: u64,

    /// Seed of the routing random numbers (default: random). Fixed in tests.
    #[arg(long, env = "BALANCER_SEED", value_name = "BALANCER_SEED")]
    pub seed: Option<u64>,

    /// Decay time of the peak-EWMA latency estimate.
    #[arg(long = "ewma-decay", env = "LATENCY_EWMA_DECAY", value_name = "LATENCY_EWMA_DECAY",
          default_value = "10s", value_parser = parse_positive_duration)]
    pub ewma_decay: Duration,

    /// Most cached responses; 0 turns the cache off.
    #[arg(long = "cache-capacity", env = "CACHE_CAPACITY", value_name = "CACHE_CAPACITY",
          default_value_t = DEFAULT_CACHE_CAPACITY)]
    pub cache_capacity: u64,

    /// Most bytes of cached bodies in all.
    #[arg(long = "cache-max-bytes", env = "CACHE_MAX_BYTES", value_name = "CACHE_MAX_BYTES",
          default_value_t = DEFAULT_CACHE_MAX_BYTES)]
    pub cache_max_bytes: u64,

    /// Largest body that is cached.
    #[arg(long = "cache-max-entry-bytes", env = "CACHE_MAX_ENTRY_BYTES", value_name = "CACHE_MAX_ENTRY_BYTES",
          default_value_t = DEFAULT_CACHE_MAX_ENTRY_BYTES)]
    pub cache_max_entry_bytes: u64,

    /// How long a cached response lives when the backend gives no max-age.
    #[arg(long = "cache-ttl", env = "CACHE_TTL", value_name = "CACHE_TTL", default_value = "60s",
          value_parser = parse_positive_duration)]
    pub cache_ttl: Duration,

    /// Longest wait for a backend's response headers (all attempts together); then 504.
    #[arg(long = "request-timeout", env = "REQUEST_TIMEOUT", value_name = "REQUEST_TIMEOUT",
          default_value = "60s", value_parser = parse_positive_duration)]
    pub request_timeout: Duration,

    /// Longest wait for a TCP connection to a backend.
    #[arg(long = "connect-timeout", env = "CONNECT_TIMEOUT", value_name = "CONNECT_TIMEOUT",
          default_value = "2s", value_parser = parse_positive_duration)]
    pub connect_timeout: Duration,

    /// Retries allowed per request sent (0.2 = one retry per five requests), on top of the
    /// per-second minimum.
    #[arg(long = "retry-budget-ratio", env = "RETRY_BUDGET_RATIO", value_name = "RETRY_BUDGET_RATIO",
          default_value = "0.2", value_parser = parse_ratio)]
    pub retry_budget_ratio: f64,

    /// Retries always allowed per second, whatever the ratio.
    #[arg(
        long = "retry-budget-min-per-sec",
        env = "RETRY_BUDGET_MIN_PER_SEC",
        value_name = "RETRY_BUDGET_MIN_PER_SEC",
        default_value_t = 10
    )]
    pub retry_budget_min_per_sec: u32,

    /// Consecutive connect failures after which a backend is ejected.
    #[arg(long = "eject-after", env = "EJECT_CONSECUTIVE_FAILURES", value_name = "EJECT_CONSECUTIVE_FAILURES",
          default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub eject_after: u32,

    /// First ejection time; doubles with every further ejection.
    #[arg(long = "eject-base", env = "EJECT_BASE_TIME", value_name = "EJECT_BASE_TIME",
          default_value = "1s", value_parser = parse_positive_duration)]
    pub eject_base: Duration,

    /// Longest ejection time.
    #[arg(long = "eject-max", env = "EJECT_MAX_TIME", value_name = "EJECT_MAX_TIME",
          default_value = "30s", value_parser = parse_positive_duration)]
    pub eject_max: Duration,

    /// Requests that may wait for a backend when none is available; past it, 503.
    #[arg(long = "queue-capacity", env = "QUEUE_CAPACITY", value_name = "QUEUE_CAPACITY",
          default_value_t = DEFAULT_QUEUE_CAPACITY)]
    pub queue_capacity: usize,

    /// How long a request waits for a backend to appear; then 503 with Retry-After.
    #[arg(long = "queue-timeout", env = "QUEUE_TIMEOUT", value_name = "QUEUE_TIMEOUT",
          default_value = "30s", value_parser = parse_duration)]
    pub queue_timeout: Duration,

    /// Seconds in the Retry-After header of the balancer's own 503 answers.
    #[arg(
        long = "retry-after",
        env = "BALANCER_RETRY_AFTER",
        value_name = "BALANCER_RETRY_AFTER",
        default_value_t = 1
    )]
    pub retry_after_secs: u64,

    /// Largest request body in bytes (413 past it).
    #[arg(long = "max-body-bytes", env = "MAX_BODY_BYTES", value_name = "MAX_BODY_BYTES",
          default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: u64,

    /// Largest request head (request line and headers) in bytes (431 past it).
    #[arg(long = "max-header-bytes", env = "MAX_HEADER_BYTES", value_name = "MAX_HEADER_BYTES",
          default_value_t = DEFAULT_MAX_HEADER_BYTES, value_parser = parse_header_limit)]
    pub max_header_bytes: usize,

    /// Most open client connections; further clients wait in the listen backlog.
    #[arg(long = "max-connections", env = "MAX_CONNECTIONS", value_name = "MAX_CONNECTIONS",
          default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Idle keep-alive connections kept per backend.
    #[arg(long = "upstream-max-idle", env = "UPSTREAM_MAX_IDLE", value_name = "UPSTREAM_MAX_IDLE",
          default_value_t = DEFAULT_UPSTREAM_MAX_IDLE)]
    pub upstream_max_idle: usize,

    /// How long an idle upstream connection is kept; keep it below the backends' own idle
    /// timeout (the worker closes idle connections after 30 s).
    #[arg(long = "upstream-idle-timeout", env = "UPSTREAM_IDLE_TIMEOUT", value_name = "UPSTREAM_IDLE_TIMEOUT",
          default_value = "15s", value_parser = parse_positive_duration)]
    pub upstream_idle_timeout: Duration,

    /// A client must send its request headers within this time.
    #[arg(long = "header-read-timeout", env = "HEADER_READ_TIMEOUT", value_name = "HEADER_READ_TIMEOUT",
          default_value = "30s", value_parser = parse_positive_duration)]
    pub header_read_timeout: Duration,

    /// How long in-flight requests may finish after SIGTERM.
    #[arg(long = "shutdown-grace", env = "SHUTDOWN_GRACE", value_name = "SHUTDOWN_GRACE",
          default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Origins browsers may call from (`*` or `http://host:port,...`); unset = no CORS headers.
    /// The agent's dashboard needs its origin here to send jobs through the balancer.
    #[arg(long = "cors-origins", env = "CORS_ORIGINS", value_name = "CORS_ORIGINS", default_value = "",
          value_parser = crate::cors::Cors::parse)]
    pub cors: crate::cors::Cors,

    /// Path prefixes answered 404 without reaching a backend, comma-separated (`/stop,/admin`).
    /// Whole segments of the normalised path match (`/stop` covers `/stop/x`, not `/stopwatch`;
    /// `/%73top`, `//stop` and `/x/../stop` are `/stop` too).
    #[arg(long = "deny-paths", env = "BALANCER_DENY_PATHS", value_name = "BALANCER_DENY_PATHS",
          default_value = "", value_parser = crate::route::DenyPaths::parse)]
    pub deny_paths: crate::route::DenyPaths,

    /// Longest wait for the next bytes of a request body; then 408 (if nothing was answered yet),
    /// the backend's request is aborted and the connection closed.
    #[arg(long = "body-read-timeout", env = "BODY_READ_TIMEOUT", value_name = "BODY_READ_TIMEOUT",
          default_value = "30s", value_parser = parse_positive_duration)]
    pub body_read_timeout: Duration,

    /// Routes whose requests are safe to send again, `METHOD /prefix` comma-separated
    /// (`POST /submit,POST /work`): retried on another backend like idempotent requests when
    /// theirs fails before answering, within the retry budget.
    #[arg(long = "retry-routes", env = "RETRY_ROUTES", value_name = "RETRY_ROUTES",
          default_value = "", value_parser = crate::route::RetryRoutes::parse)]
    pub retry_routes: crate::route::RetryRoutes,

    /// Where a job's cost is read (issue #17), one rule per route separated by `;`:
    /// `METHOD /prefix class=POINTER size=POINTER[|POINTER...]`, RFC 6901 pointers into the
    /// request's JSON body (`POST /submit class=/operation size=/data/iterations`). With the
    /// backend's `Server-Timing` answers, the balancer learns each route and class's
    /// expected seconds = a + b × size (`GET /costs` on the admin port).
    #[arg(long = "cost-rules", env = "COST_RULES", value_name = "COST_RULES",
          default_value = "", value_parser = crate::cost::CostRules::parse)]
    pub cost_rules: crate::cost::CostRules,

    /// Largest request body read for a COST_RULES rule; a larger one is not costed.
    #[arg(long = "cost-body-limit", env = "COST_BODY_LIMIT", value_name = "COST_BODY_LIMIT",
          default_value_t = crate::cost::DEFAULT_BODY_LIMIT)]
    pub cost_body_limit: usize,

    /// Largest body of a RETRY_ROUTES request kept in memory for a replay; larger bodies are
    /// streamed and never replayed.
    #[arg(long = "retry-buffer-bytes", env = "RETRY_BUFFER_BYTES", value_name = "RETRY_BUFFER_BYTES",
          default_value_t = DEFAULT_RETRY_BUFFER_BYTES)]
    pub retry_buffer_bytes: u64,

    /// How HTTP/1.1 requests are served: `fast` (the strict fast path for the common case,
    /// hyper for the rest) or `hyper` (everything on hyper, as before the fast path).
    #[arg(long = "http1-path", env = "BALANCER_HTTP1_PATH", value_name = "BALANCER_HTTP1_PATH",
          default_value = "fast", value_parser = parse_http1_path, action = clap::ArgAction::Set)]
    pub http1_fast_path: bool,

    /// Recent requests kept for `GET /requests` on the admin port (id, status, latency,
    /// attempts and their backends); 0 keeps none.
    #[arg(long = "request-history", env = "REQUEST_HISTORY", value_name = "REQUEST_HISTORY",
          default_value_t = DEFAULT_REQUEST_HISTORY,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub request_history: u32,

    /// One `info` line per request (`balancer::access`: its id, method, path, status,
    /// latency, backend, attempts, cache); `false` turns it off.
    #[arg(long = "access-log", env = "ACCESS_LOG", value_name = "ACCESS_LOG",
          default_value = "true", value_parser = parse_switch, action = clap::ArgAction::Set)]
    pub access_log: bool,

    /// The deployment agent's token, sent as `authorization: Bearer` metadata on every gRPC
    /// call (load reports); the agent refuses the reports without it.
    #[arg(long = "agent-token", env = "AGENT_TOKEN", value_name = "AGENT_TOKEN",
          hide_env_values = true, value_parser = parse_token)]
    pub agent_token: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: IpAddr::from([0, 0, 0, 0]),
            port: DEFAULT_PORT,
            threads: None,
            admin_port: DEFAULT_ADMIN_PORT,
            backends: Vec::new(),
            agent_ws_url: None,
            agent_ws_urls: Vec::new(),
            agent_host: "deployment-agent".into(),
            agent_ws_port: DEFAULT_AGENT_WS_PORT,
            agent_grpc_url: None,
            agent_grpc_urls: Vec::new(),
            agent_grpc_port: DEFAULT_AGENT_GRPC_PORT,
            agent_reconnect_max: Duration::from_secs(10),
            agent_idle_timeout: Duration::from_secs(30),
            agent_resolve_period: Duration::from_secs(5),
            resolver: crate::resolve::Resolver::system(),
            report_interval: Duration::from_millis(500),
            balancer_id: None,
            target_port: DEFAULT_TARGET_PORT,
            policy: PolicyChoice::default(),
            backend_concurrency: 0,
            max_cpu_threshold: 100,
            max_queue_delay_factor: 10.0,
            queue_max_bytes: DEFAULT_QUEUE_MAX_BYTES,
            seed: None,
            ewma_decay: Duration::from_secs(10),
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            cache_max_bytes: DEFAULT_CACHE_MAX_BYTES,
            cache_max_entry_bytes: DEFAULT_CACHE_MAX_ENTRY_BYTES,
            cache_ttl: Duration::from_secs(60),
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(2),
            retry_budget_ratio: 0.2,
            retry_budget_min_per_sec: 10,
            eject_after: 3,
            eject_base: Duration::from_secs(1),
            eject_max: Duration::from_secs(30),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            queue_timeout: Duration::from_secs(30),
            retry_after_secs: 1,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            upstream_max_idle: DEFAULT_UPSTREAM_MAX_IDLE,
            upstream_idle_timeout: Duration::from_secs(15),
            header_read_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            cors: crate::cors::Cors::Off,
            deny_paths: crate::route::DenyPaths::default(),
            body_read_timeout: Duration::from_secs(30),
            retry_routes: crate::route::RetryRoutes::default(),
            cost_rules: crate::cost::CostRules::default(),
            cost_body_limit: crate::cost::DEFAULT_BODY_LIMIT,
            retry_buffer_bytes: DEFAULT_RETRY_BUFFER_BYTES,
            http1_fast_path: true,
            request_history: DEFAULT_REQUEST_HISTORY,
            access_log: true,
            agent_token: None,
        }
    }
}

/// Where the backends come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `BACKENDS`: a fixed list, `host:port` each.
    Static(Vec<String>),
    /// The queue WebSockets of the agents, in the order they are tried (never empty).
    Agent(Vec<String>),
}

impl Config {
    /// Static backends when `BACKENDS` is set, else the agents' WebSocket URLs.
    pub fn source(&self) -> Source {
        if self.backends.is_empty() {
            Source::Agent(self.ws_urls())
        } else {
            Source::Static(
                self.backends
                    .iter()
                    .map(|b| b.with_port(self.target_port))
                    .collect(),
            )
        }
    }

    /// AGENT_WS_URLS, else AGENT_WS_URL, else the URL made of AGENT_HOST and the port.
    fn ws_urls(&self) -> Vec<String> {
        if !self.agent_ws_urls.is_empty() {
            return self.agent_ws_urls.clone();
        }
        vec![self.agent_ws_url.clone().unwrap_or_else(|| {
            format!(
                "ws://{}:{}/ws",
                bracket_v6(&self.agent_host),
                self.agent_ws_port
            )
        })]
    }

    /// The agents' gRPC endpoints for load reports; empty when no reports are to be sent.
    /// Without AGENT_GRPC_URL(S), one per host of the WebSocket URLs, on the gRPC port.
    pub fn report_urls(&self) -> Vec<String> {
        if !self.agent_grpc_urls.is_empty() {
            return self.agent_grpc_urls.clone();
        }
        if let Some(url) = &self.agent_grpc_url {
            return vec![url.clone()];
        }
        if !self.backends.is_empty() {
            return Vec::new();
        }
        let mut urls: Vec<String> = Vec::new();
        for ws in self.ws_urls() {
            let host = ws
                .parse::<http::Uri>()
                .ok()
                .and_then(|uri| uri.host().map(str::to_owned))
                .unwrap_or_else(|| bracket_v6(&self.agent_host));
            let url = format!("http://{host}:{}", self.agent_grpc_port);
            if !urls.contains(&url) {
                urls.push(url);
            }
        }
        urls
    }

    /// BALANCER_POLICY, else `least-work` when costs are known (COST_RULES), else `p2c-ewma`.
    pub fn resolved_policy(&self) -> Policy {
        self.policy.0.unwrap_or(if self.cost_rules.is_empty() {
            Policy::P2cEwma
        } else {
            Policy::LeastWork
        })
    }

    /// Traffic threads: the configured number, else the CPU quota rounded up.
    pub fn resolved_threads(&self) -> usize {
        self.threads.map_or_else(
            || common::cpu::pool_threads(common::cpu::cpu_limit_cores()),
            usize::from,
        )
    }

    /// The configured balancer id, else the hostname.
    pub fn resolved_balancer_id(&self) -> String {
        self.balancer_id
            .clone()
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned())
    }

    /// The configured seed, else a random one.
    pub fn resolved_seed(&self) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        self.seed.unwrap_or_else(|| {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            hasher.finish()
        })
    }
}

fn bracket_v6(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

#[cfg(test)]
mod tests;
