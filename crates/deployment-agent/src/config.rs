//! The agent's configuration: every seed variable, each a flag and an environment variable
//! with a default, parsed once at start. A bad value stops start-up naming the variable.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use common::config::parse_duration;
use tracing::warn;

use crate::{
    decide::ScalingConfig,
    lease::{AgentUrls, LeaseConfig},
    score::{Thresholds, Weights},
};

/// The shortest LEADER_LEASE: a third of it is the renew period, and every Redis call must
/// fit in half of that.
pub const LEADER_LEASE_MIN: Duration = Duration::from_millis(300);
/// The longest PUBLISH_INTERVAL: a stats sample changes each worker's score every second, so
/// a longer pace would hold scores back for more than a sample.
pub const MAX_PUBLISH_INTERVAL: Duration = Duration::from_secs(1);
/// Longest the advertised address's lookup of the Redis host may take.
const ADVERTISE_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Which engine runs the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    /// Docker containers through the engine's API (the default; what users run).
    Docker,
    /// Local `worker` processes on free loopback ports (no Docker needed).
    Process,
    /// Docker Swarm: one single-replica service per worker, on the overlay AGENT_NETWORK,
    /// placed by Swarm over the nodes (needs REDIS_URL: each node's agent shares its stats).
    Swarm,
    /// For the scale benchmark: instances are records, no process; one loopback listener
    /// answers every worker's probes (`jobs/bench-scale.sh`).
    Simulated,
}

/// How the address balancers dial is formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AddressMode {
    /// The container's IP on its network (the agent runs on the host).
    Ip,
    /// The container's name on the shared network (the agent runs in the stack).
    Name,
}

/// Deployment agent settings.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address the HTTP, WebSocket and gRPC servers listen on.
    #[arg(
        long,
        env = "AGENT_HOST",
        value_name = "AGENT_HOST",
        default_value = "0.0.0.0"
    )]
    pub host: IpAddr,
    /// HTTP API and dashboard port.
    #[arg(
        long = "http-port",
        env = "HOST_PORT_HTTP_DEPLOYMENT_AGENT",
        value_name = "HOST_PORT_HTTP_DEPLOYMENT_AGENT",
        default_value_t = 9000
    )]
    pub http_port: u16,
    /// WebSocket port (live queue at /ws).
    #[arg(
        long = "ws-port",
        env = "HOST_PORT_WS_DEPLOYMENT_AGENT",
        value_name = "HOST_PORT_WS_DEPLOYMENT_AGENT",
        default_value_t = 9001
    )]
    pub ws_port: u16,
    /// gRPC port.
    #[arg(
        long = "grpc-port",
        env = "HOST_PORT_GRPC_DEPLOYMENT_AGENT",
        value_name = "HOST_PORT_GRPC_DEPLOYMENT_AGENT",
        default_value_t = 9002
    )]
    pub grpc_port: u16,

    /// Runtime for workers: `docker`, `process`, `swarm` or `simulated` (the scale
    /// benchmark's).
    #[arg(
        long,
        env = "AGENT_RUNTIME",
        value_name = "AGENT_RUNTIME",
        default_value = "docker"
    )]
    pub runtime: RuntimeKind,
    /// Docker engine address (`unix:///var/run/docker.sock`, `tcp://host:2375`); default socket when unset.
    #[arg(long = "docker-host", env = "DOCKER_HOST", value_name = "DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// The only image the agent starts.
    #[arg(
        long = "image",
        env = "DOCKER_IMAGE",
        value_name = "DOCKER_IMAGE",
        default_value = "rustybalancer/worker:dev"
    )]
    pub image: String,
    /// The `worker` binary for the process runtime (default: next to this binary).
    #[arg(
        long = "worker-binary",
        env = "WORKER_BINARY",
        value_name = "WORKER_BINARY"
    )]
    pub worker_binary: Option<std::path::PathBuf>,
    /// How long a launch takes on the simulated runtime (AGENT_RUNTIME=simulated).
    #[arg(long = "simulated-launch-delay", env = "SIMULATED_LAUNCH_DELAY", value_name = "SIMULATED_LAUNCH_DELAY",
          default_value = "0s", value_parser = parse_duration)]
    pub simulated_launch_delay: Duration,
    /// Port the workers listen on.
    #[arg(
        long = "target-port",
        env = "TARGET_PORT",
        value_name = "TARGET_PORT",
        default_value_t = 8080
    )]
    pub target_port: u16,
    /// Application name: the `application` label and the container name prefix.
    #[arg(
        long = "app",
        env = "APP_IDENTIFIER",
        value_name = "APP_IDENTIFIER",
        default_value = "rustybalancer"
    )]
    pub app: String,
    /// This agent's name: the `managed-by` label of the containers it owns.
    #[arg(
        long = "agent-name",
        env = "AGENT_NAME",
        value_name = "AGENT_NAME",
        default_value = "rustybalancer-agent"
    )]
    pub agent_name: String,
    /// Docker network for workers (the stack's network); the default bridge when unset.
    #[arg(long = "network", env = "AGENT_NETWORK", value_name = "AGENT_NETWORK")]
    pub network: Option<String>,
    /// What balancers dial: the container `ip` or its `name` on the shared network.
    #[arg(
        long = "address-mode",
        env = "AGENT_ADDRESS_MODE",
        value_name = "AGENT_ADDRESS_MODE",
        default_value = "ip"
    )]
    pub address_mode: AddressMode,
    /// CPUs per worker (Docker `--cpus`), e.g. `1` or `0.5`.
    #[arg(long = "worker-cpus", env = "WORKER_CPUS", value_name = "WORKER_CPUS", value_parser = parse_cpus)]
    pub worker_cpus: Option<f64>,
    /// Memory per worker (`256m`, `1g`, or bytes).
    #[arg(long = "worker-memory", env = "WORKER_MEMORY", value_name = "WORKER_MEMORY", value_parser = parse_bytes)]
    pub worker_memory: Option<u64>,
    /// Process limit per worker.
    #[arg(
        long = "worker-pids-limit",
        env = "WORKER_PIDS_LIMIT",
        value_name = "WORKER_PIDS_LIMIT",
        default_value_t = 512
    )]
    pub worker_pids_limit: i64,
    /// Pin each worker to one free core from this pool (`1,2,3` or `1-3`); never more workers than cores.
    #[arg(long = "worker-cpuset", env = "WORKER_CPUSET", value_name = "WORKER_CPUSET", value_parser = parse_cpuset)]
    pub worker_cpuset: Option<CpuSet>,
    /// Requests a balancer sends each worker at once; more wait in the balancer's queue for a
    /// free slot. 0 = unlimited (every request goes out at once). Unset or empty: the default
    /// worker's thread count under its CPU limit, ⌈WORKER_CPUS⌉ (1 with WORKER_CPUSET: one
    /// core each), else 0: the agent cannot know another host's cores.
    #[arg(
        long = "worker-concurrency",
        env = "WORKER_CONCURRENCY",
        value_name = "WORKER_CONCURRENCY",
        default_value = "",
        value_parser = parse_worker_concurrency
    )]
    pub worker_concurrency: WorkerConcurrency,
    /// Swarm placement constraints of every worker service, comma-separated
    /// (`node.role==worker,node.labels.pool==cpu`); AGENT_RUNTIME=swarm only.
    #[arg(
        long = "worker-constraints",
        env = "WORKER_CONSTRAINTS",
        value_name = "WORKER_CONSTRAINTS",
        value_delimiter = ',',
        value_parser = parse_constraint
    )]
    pub worker_constraints: Vec<String>,
    /// Warm standby workers: started, healthy, then paused (no CPU, their memory kept), so a
    /// scale-out thaws one in milliseconds instead of creating a container. Not with
    /// WORKER_CPUSET.
    #[arg(
        long = "warm-pool",
        env = "WARM_POOL",
        value_name = "WARM_POOL",
        default_value_t = 0
    )]
    pub warm_pool: usize,
    /// Extra environment for workers, `KEY=VALUE,KEY=VALUE`.
    #[arg(long = "worker-env", env = "WORKER_ENV", value_name = "WORKER_ENV", value_parser = parse_env_list, default_value = "")]
    pub worker_env: EnvList,

    /// Time a worker gets between SIGTERM and SIGKILL when stopped.
    #[arg(long = "stop-grace", env = "STOP_GRACE", value_name = "STOP_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub stop_grace: Duration,
    /// Longest a SUNDOWN container drains before it is stopped anyway.
    #[arg(long = "drain-timeout", env = "DRAIN_TIMEOUT", value_name = "DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// A new container that has not answered /health within this is replaced.
    #[arg(long = "startup-timeout", env = "STARTUP_TIMEOUT", value_name = "STARTUP_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub startup_timeout: Duration,
    /// Period of the /health and /stats probes of ready containers.
    #[arg(long = "probe-period", env = "PROBE_PERIOD", value_name = "PROBE_PERIOD", default_value = "1s", value_parser = parse_duration)]
    pub probe_period: Duration,
    /// Timeout of one probe.
    #[arg(long = "probe-timeout", env = "PROBE_TIMEOUT", value_name = "PROBE_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub probe_timeout: Duration,
    /// Consecutive failed probes after which a ready container is unhealthy: out of the
    /// queue (published INIT, no new requests) until a probe succeeds again.
    #[arg(long = "unhealthy-threshold", env = "UNHEALTHY_THRESHOLD", value_name = "UNHEALTHY_THRESHOLD",
          default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub unhealthy_threshold: u32,
    /// An unhealthy container that has not recovered within this is stopped and replaced.
    #[arg(long = "unhealthy-timeout", env = "UNHEALTHY_TIMEOUT", value_name = "UNHEALTHY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub unhealthy_timeout: Duration,
    /// How the agent tells a worker is ready and alive (start-up, liveness and the
    /// availability score's latency): `http` (GET WORKER_PROBE_PATH, a status in
    /// WORKER_PROBE_STATUS), `tcp` (a connect to TARGET_PORT) or `docker` (the image's own
    /// HEALTHCHECK status from the engine; Docker runtime only).
    #[arg(
        long = "worker-probe",
        env = "WORKER_PROBE",
        value_name = "WORKER_PROBE",
        default_value = "http"
    )]
    pub worker_probe: ProbeKind,
    /// Path of the `http` probe.
    #[arg(long = "worker-probe-path", env = "WORKER_PROBE_PATH", value_name = "WORKER_PROBE_PATH",
          default_value = "/health", value_parser = parse_probe_path)]
    pub worker_probe_path: String,
    /// Statuses the `http` probe counts as success: codes and ranges, comma-separated
    /// (`200-299,404`).
    #[arg(long = "worker-probe-status", env = "WORKER_PROBE_STATUS", value_name = "WORKER_PROBE_STATUS",
          default_value = "200-399", value_parser = parse_status_ranges)]
    pub worker_probe_status: StatusRanges,
    /// Entrypoint override of worker containers: a JSON array of strings if it starts with
    /// `[`, else split on whitespace; empty keeps the image's.
    #[arg(long = "worker-command", env = "WORKER_COMMAND", value_name = "WORKER_COMMAND",
          default_value = "", value_parser = parse_command)]
    pub worker_command: CommandLine,
    /// Arguments of worker containers (the image's CMD), in the same form as WORKER_COMMAND;
    /// empty keeps the image's.
    #[arg(long = "worker-args", env = "WORKER_ARGS", value_name = "WORKER_ARGS",
          default_value = "", value_parser = parse_command)]
    pub worker_args: CommandLine,
    /// User worker containers run as (`10001:10001`, `nobody`); empty keeps the image's.
    #[arg(long = "worker-user", env = "WORKER_USER", value_name = "WORKER_USER",
          default_value = "", value_parser = parse_user)]
    pub worker_user: String,
    /// Run worker containers with a read-only root filesystem.
    #[arg(long = "worker-read-only", env = "WORKER_READ_ONLY", value_name = "WORKER_READ_ONLY",
          default_value_t = false, action = clap::ArgAction::Set)]
    pub worker_read_only: bool,
    /// tmpfs mounts of worker containers, comma-separated `path[:options]`
    /// (`/tmp,/run:size=16m`).
    #[arg(long = "worker-tmpfs", env = "WORKER_TMPFS", value_name = "WORKER_TMPFS",
          default_value = "", value_parser = parse_tmpfs)]
    pub worker_tmpfs: TmpfsList,
    /// Extra labels of worker containers, comma-separated `key=value`; the agent's own
    /// (`application`, `managed-by`, `rustybalancer.*`) cannot be set.
    #[arg(long = "worker-labels", env = "WORKER_LABELS", value_name = "WORKER_LABELS",
          default_value = "", value_parser = parse_labels)]
    pub worker_labels: LabelList,
    /// First wait after a crash (a launch whose container exits or never becomes ready);
    /// each crash in a row doubles it, up to CRASH_BACKOFF_MAX; a ready container resets it.
    #[arg(long = "crash-backoff-initial", env = "CRASH_BACKOFF_INITIAL", value_name = "CRASH_BACKOFF_INITIAL",
          default_value = "1s", value_parser = parse_duration)]
    pub crash_backoff_initial: Duration,
    /// Longest wait between launches in a crash loop.
    #[arg(long = "crash-backoff-max", env = "CRASH_BACKOFF_MAX", value_name = "CRASH_BACKOFF_MAX",
          default_value = "60s", value_parser = parse_duration)]
    pub crash_backoff_max: Duration,

    /// Redis URL (`redis://host:6379/0`); overrides REDIS_HOST/REDIS_PORT.
    #[arg(long = "redis-url", env = "REDIS_URL", value_name = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// Redis host; with neither this nor REDIS_URL the agent keeps its state in memory.
    #[arg(long = "redis-host", env = "REDIS_HOST", value_name = "REDIS_HOST")]
    pub redis_host: Option<String>,
    /// Redis port.
    #[arg(
        long = "redis-port",
        env = "REDIS_PORT",
        value_name = "REDIS_PORT",
        default_value_t = 6379
    )]
    pub redis_port: u16,
    /// This agent's id in the leader lease and the agents list (default: the hostname); no
    /// `/` or whitespace.
    #[arg(long = "agent-id", env = "AGENT_ID", value_name = "AGENT_ID")]
    pub agent_id: Option<String>,
    /// How many agents run. Above 1 they elect one leader through a lease in Redis (REDIS_URL
    /// or REDIS_HOST required); with 1 the agent leads alone, with no lease.
    #[arg(long = "agent-replicas", env = "AGENT_REPLICAS", value_name = "AGENT_REPLICAS",
          default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub agent_replicas: u32,
    /// The leader lease (at least 300ms), renewed every third of it. The leader acts only
    /// until two thirds of it after its last renew began, so a successor never overlaps it.
    #[arg(long = "leader-lease", env = "LEADER_LEASE", value_name = "LEADER_LEASE", default_value = "3s", value_parser = parse_duration)]
    pub leader_lease: Duration,
    /// Host name or address other agents reach this one at (default: this host's address on
    /// the route to Redis; 127.0.0.1 when Redis is on loopback).
    #[arg(
        long = "advertise-host",
        env = "AGENT_ADVERTISE_HOST",
        value_name = "AGENT_ADVERTISE_HOST"
    )]
    pub advertise_host: Option<String>,
    /// Metrics points kept per container.
    #[arg(
        long = "metrics-history",
        env = "METRICS_HISTORY",
        value_name = "METRICS_HISTORY",
        default_value_t = 120
    )]
    pub metrics_history: usize,
    /// Scaling events kept.
    #[arg(
        long = "max-events",
        env = "MAX_EVENTS",
        value_name = "MAX_EVENTS",
        default_value_t = 1000
    )]
    pub max_events: usize,

    /// Scale up when mean utilisation (100 - score) is above this.
    #[arg(
        long = "high-load-threshold",
        env = "HIGH_LOAD_THRESHOLD",
        value_name = "HIGH_LOAD_THRESHOLD",
        default_value_t = 75.0
    )]
    pub high_load_threshold: f64,
    /// Scale down after utilisation stayed below this.
    #[arg(
        long = "low-load-threshold",
        env = "LOW_LOAD_THRESHOLD",
        value_name = "LOW_LOAD_THRESHOLD",
        default_value_t = 30.0
    )]
    pub low_load_threshold: f64,
    /// A container at or above this utilisation is critical: scale up at once.
    #[arg(
        long = "critical-load-threshold",
        env = "CRITICAL_LOAD_THRESHOLD",
        value_name = "CRITICAL_LOAD_THRESHOLD",
        default_value_t = 90.0
    )]
    pub critical_load_threshold: f64,
    /// A container at or above this CPU % is classified HU (seed 002).
    #[arg(
        long = "max-cpu-threshold",
        env = "MAX_CPU_THRESHOLD",
        value_name = "MAX_CPU_THRESHOLD",
        default_value_t = 80.0
    )]
    pub max_cpu_threshold: f64,
    /// Spawn one more when every ready container is at or above this CPU % (seed 002).
    #[arg(
        long = "prespawn-threshold",
        env = "PRESPAWN_THRESHOLD",
        value_name = "PRESPAWN_THRESHOLD",
        default_value_t = 70.0
    )]
    pub prespawn_threshold: f64,
    /// Requests in flight per container before scaling out (Knative-style); 0 disables.
    #[arg(
        long = "target-concurrency",
        env = "TARGET_CONCURRENCY",
        value_name = "TARGET_CONCURRENCY",
        default_value_t = 10.0
    )]
    pub target_concurrency: f64,
    /// Seconds of expected work (the balancers' cost estimates of the requests in flight and
    /// queued) per CPU of a worker before scaling out; must be > 0.
    #[arg(
        long = "target-work-seconds",
        env = "TARGET_WORK_SECONDS",
        value_name = "TARGET_WORK_SECONDS",
        default_value_t = 2.0
    )]
    pub target_work_seconds: f64,
    /// Most containers.
    #[arg(
        long = "max-containers",
        env = "MAX_CONTAINERS",
        value_name = "MAX_CONTAINERS",
        default_value_t = 10
    )]
    pub max_containers: usize,
    /// Ceiling for MAX_CONTAINERS and for every bound or replica count asked through the API
    /// (HTTP `POST /scale`, gRPC `Scale`): above it they are refused naming this variable.
    #[arg(
        long = "max-containers-limit",
        env = "MAX_CONTAINERS_LIMIT",
        value_name = "MAX_CONTAINERS_LIMIT",
        default_value_t = 100
    )]
    pub max_containers_limit: usize,
    /// Fewest containers.
    #[arg(
        long = "min-containers",
        env = "MIN_CONTAINERS",
        value_name = "MIN_CONTAINERS",
        default_value_t = 1
    )]
    pub min_containers: usize,
    /// Containers at start (alias INITIAL_WORKERS).
    #[arg(
        long = "default-container",
        env = "DEFAULT_CONTAINER",
        value_name = "DEFAULT_CONTAINER"
    )]
    pub default_container: Option<usize>,
    /// Seed 002's name for DEFAULT_CONTAINER.
    #[arg(
        long = "initial-workers",
        env = "INITIAL_WORKERS",
        value_name = "INITIAL_WORKERS",
        hide = true
    )]
    pub initial_workers: Option<usize>,
    /// Minimum time between scaling steps (sets both directions).
    #[arg(long = "cooldown", env = "COOLDOWN_PERIOD", value_name = "COOLDOWN_PERIOD", default_value = "45s", value_parser = parse_duration)]
    pub cooldown: Duration,
    /// Minimum time between two scale-ups (default: COOLDOWN_PERIOD).
    #[arg(long = "cooldown-up", env = "COOLDOWN_UP", value_name = "COOLDOWN_UP", value_parser = parse_duration)]
    pub cooldown_up: Option<Duration>,
    /// Minimum time after any scaling before a scale-down (default: COOLDOWN_PERIOD).
    #[arg(long = "cooldown-down", env = "COOLDOWN_DOWN", value_name = "COOLDOWN_DOWN", value_parser = parse_duration)]
    pub cooldown_down: Option<Duration>,
    /// How long utilisation must stay low before scaling down.
    #[arg(long = "scale-down-stabilization", env = "SCALE_DOWN_STABILIZATION", value_name = "SCALE_DOWN_STABILIZATION",
          default_value = "60s", value_parser = parse_duration)]
    pub scale_down_stabilization: Duration,
    /// Containers added or removed per step.
    #[arg(
        long = "scale-step",
        env = "SCALE_STEP",
        value_name = "SCALE_STEP",
        default_value_t = 1
    )]
    pub scale_step: usize,
    /// Period of the scaling decision.
    #[arg(long = "scale-check-period", env = "SCALE_CHECK_PERIOD", value_name = "SCALE_CHECK_PERIOD", default_value = "5s", value_parser = parse_duration)]
    pub scale_check_period: Duration,

    #[arg(
        long = "cpu-weight",
        env = "CPU_WEIGHT",
        value_name = "CPU_WEIGHT",
        default_value_t = 0.35
    )]
    pub cpu_weight: f64,
    #[arg(
        long = "memory-weight",
        env = "MEMORY_WEIGHT",
        value_name = "MEMORY_WEIGHT",
        default_value_t = 0.25
    )]
    pub memory_weight: f64,
    #[arg(
        long = "network-weight",
        env = "NETWORK_WEIGHT",
        value_name = "NETWORK_WEIGHT",
        default_value_t = 0.15
    )]
    pub network_weight: f64,
    #[arg(
        long = "availability-weight",
        env = "AVAILABILITY_WEIGHT",
        value_name = "AVAILABILITY_WEIGHT",
        default_value_t = 0.25
    )]
    pub availability_weight: f64,
    /// Response times kept per container for the availability score.
    #[arg(
        long = "history-size",
        env = "HISTORY_SIZE",
        value_name = "HISTORY_SIZE",
        default_value_t = 20
    )]
    pub history_size: usize,
    /// Best response times averaged as the baseline.
    #[arg(
        long = "best-time-window",
        env = "BEST_TIME_WINDOW",
        value_name = "BEST_TIME_WINDOW",
        default_value_t = 10
    )]
    pub best_time_window: usize,
    /// Smoothing of the availability score (0 < alpha <= 1).
    #[arg(
        long = "ema-alpha",
        env = "EMA_ALPHA",
        value_name = "EMA_ALPHA",
        default_value_t = 0.2
    )]
    pub ema_alpha: f64,
    /// Network bytes/s counted as 100% network use.
    #[arg(
        long = "network-saturation",
        env = "NETWORK_SATURATION",
        value_name = "NETWORK_SATURATION",
        default_value_t = 12_500_000.0
    )]
    pub network_saturation: f64,

    /// Bearer token every mutating call needs (HTTP `POST`, gRPC `Scale`, `Drain`,
    /// `ReportLoad`). Unset: those calls are refused (401 / UNAUTHENTICATED) unless
    /// AGENT_INSECURE=true.
    #[arg(
        long = "token",
        env = "AGENT_TOKEN",
        value_name = "AGENT_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// With no AGENT_TOKEN, leave the mutating calls open to anyone who reaches the agent's
    /// ports (local experiments only; logged as a warning). Ignored when a token is set.
    #[arg(long = "insecure", env = "AGENT_INSECURE", value_name = "AGENT_INSECURE",
          default_value_t = false, action = clap::ArgAction::Set)]
    pub insecure: bool,
    /// Other origins browsers may call the HTTP API from, comma-separated (default: none,
    /// same origin only). `*` lets any page read, never change: a mutating call whose `Origin`
    /// is neither the agent's own host nor listed here is refused with 403.
    #[arg(
        long = "cors-origins",
        env = "CORS_ORIGINS",
        value_name = "CORS_ORIGINS",
        default_value = ""
    )]
    pub cors_origins: String,
    /// Serve the dashboard at `/` and `/dashboard` (404 when false).
    #[arg(long = "dashboard", env = "DASHBOARD", value_name = "DASHBOARD",
          default_value_t = true, action = clap::ArgAction::Set)]
    pub dashboard: bool,
    /// Balancer URL the dashboard's job form posts to (default: the page's host, port 8000).
    #[arg(
        long = "dashboard-balancer-url",
        env = "DASHBOARD_BALANCER_URL",
        value_name = "DASHBOARD_BALANCER_URL"
    )]
    pub dashboard_balancer_url: Option<String>,
    /// Base URLs of the balancers' admin ports, comma-separated (`http://balancer:8001`),
    /// that `GET /requests/{id}` asks for a request's record. Each host is resolved to every
    /// address (`tasks.balancer` reaches every replica on Swarm). Empty (the default): that
    /// endpoint answers 503.
    #[arg(
        long = "balancer-admin-urls",
        env = "BALANCER_ADMIN_URLS",
        value_name = "BALANCER_ADMIN_URLS",
        value_delimiter = ','
    )]
    pub balancer_admin_urls: Vec<String>,
    /// Most WebSocket subscribers at once, counted over `/ws` on both ports and `/ws/events`;
    /// one more is answered 503.
    #[arg(
        long = "ws-max-subscribers",
        env = "WS_MAX_SUBSCRIBERS",
        value_name = "WS_MAX_SUBSCRIBERS",
        default_value_t = 256
    )]
    pub ws_max_subscribers: usize,
    /// A WebSocket subscriber that cannot take one message within this is dropped.
    #[arg(long = "ws-send-timeout", env = "WS_SEND_TIMEOUT", value_name = "WS_SEND_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub ws_send_timeout: Duration,
    /// Longest a `GET /containers/{id}/logs?follow=true` stays open; it also ends when the
    /// container stops or the agent shuts down. `0s` is refused.
    #[arg(long = "logs-follow-max", env = "LOGS_FOLLOW_MAX", value_name = "LOGS_FOLLOW_MAX", default_value = "300s", value_parser = parse_duration)]
    pub logs_follow_max: Duration,
    /// At most one queue publication per this interval: the first change after a quiet
    /// interval goes out at once, later ones are merged into one at the interval's end; a
    /// change of the routing set (a worker added or gone, ready, SUNDOWN, unhealthy) always
    /// goes out at once.
    /// `0s`: every change at once.
    #[arg(long = "publish-interval", env = "PUBLISH_INTERVAL", value_name = "PUBLISH_INTERVAL", default_value = "50ms", value_parser = parse_duration)]
    pub publish_interval: Duration,
    /// WebSocket ping period.
    #[arg(long = "ws-ping", env = "WS_PING_PERIOD", value_name = "WS_PING_PERIOD", default_value = "15s", value_parser = parse_duration)]
    pub ws_ping: Duration,
    /// Time in-flight API requests get on shutdown.
    #[arg(long = "shutdown-grace", env = "SHUTDOWN_GRACE", value_name = "SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Stop every managed worker when the agent shuts down (default: leave them serving for the next agent to adopt).
    #[arg(long = "stop-workers-on-exit", env = "STOP_WORKERS_ON_EXIT", value_name = "STOP_WORKERS_ON_EXIT",
          default_value_t = false, action = clap::ArgAction::Set)]
    pub stop_workers_on_exit: bool,
}

impl Config {
    /// The settings with every default, as `--help` shows them (for tests and embedding).
    pub fn defaults() -> Self {
        use clap::{FromArgMatches, Parser};
        #[derive(Parser)]
        struct Bare {
            #[command(flatten)]
            config: Config,
        }
        // Parsing no arguments cannot fail: every field has a default or is optional. The
        // environment is ignored here: each argument is re-read from an empty command line.
        let command = <Bare as clap::CommandFactory>::command();
        let command = command.mut_args(|arg| arg.env(None::<&str>));
        let matches = command.get_matches_from(["deployment-agent"]);
        match Bare::from_arg_matches(&matches) {
            Ok(bare) => bare.config,
            Err(err) => panic!("defaults do not parse: {err}"),
        }
    }

    /// Checks what clap cannot: relations between settings. The message names the variable.
    pub fn validate(&self) -> Result<(), String> {
        self.weights().validate()?;
        self.thresholds().validate()?;
        self.scaling().validate()?;
        if self.history_size == 0 {
            return Err("HISTORY_SIZE must be at least 1".into());
        }
        if self.best_time_window == 0 {
            return Err("BEST_TIME_WINDOW must be at least 1".into());
        }
        if !(self.ema_alpha > 0.0 && self.ema_alpha <= 1.0) {
            return Err(format!(
                "EMA_ALPHA must be in (0, 1], got {}",
                self.ema_alpha
            ));
        }
        if self.network_saturation.is_nan() || self.network_saturation <= 0.0 {
            return Err("NETWORK_SATURATION must be positive".into());
        }
        if self.max_containers > self.max_containers_limit {
            return Err(format!(
                "MAX_CONTAINERS ({}) is above MAX_CONTAINERS_LIMIT ({}); lower MAX_CONTAINERS or raise MAX_CONTAINERS_LIMIT",
                self.max_containers, self.max_containers_limit
            ));
        }
        if self.ws_max_subscribers == 0 {
            return Err("WS_MAX_SUBSCRIBERS must be at least 1".into());
        }
        if self.ws_send_timeout.is_zero() {
            return Err("WS_SEND_TIMEOUT must be positive".into());
        }
        if self.logs_follow_max.is_zero() {
            return Err("LOGS_FOLLOW_MAX must be positive (a followed log ends after it)".into());
        }
        if self.publish_interval > MAX_PUBLISH_INTERVAL {
            return Err(format!(
                "PUBLISH_INTERVAL must be at most {} (each worker's stats change its score every second), got {}",
                humantime::format_duration(MAX_PUBLISH_INTERVAL),
                humantime::format_duration(self.publish_interval)
            ));
        }
        if self.start_count() > self.max_containers {
            return Err(format!(
                "DEFAULT_CONTAINER ({}) is above MAX_CONTAINERS ({})",
                self.start_count(),
                self.max_containers
            ));
        }
        if self.app.is_empty()
            || !self
                .app
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "APP_IDENTIFIER must be letters, digits, `-` or `_`, got `{}`",
                self.app
            ));
        }
        if self.warm_pool > 0 && self.worker_cpuset.is_some() {
            return Err(
                "WARM_POOL cannot be used with WORKER_CPUSET (a standby would hold a core); set one of them"
                    .into(),
            );
        }
        if self.warm_pool > 16 {
            return Err(format!(
                "WARM_POOL must be at most 16, got {}",
                self.warm_pool
            ));
        }
        if self.probe_period.is_zero() || self.scale_check_period.is_zero() {
            return Err("PROBE_PERIOD and SCALE_CHECK_PERIOD must be positive".into());
        }
        if self.runtime != RuntimeKind::Docker && self.worker_probe == ProbeKind::Docker {
            return Err(
                "WORKER_PROBE=docker needs the Docker runtime (AGENT_RUNTIME=docker); the process, swarm and simulated runtimes support http and tcp"
                    .into(),
            );
        }
        if self.runtime == RuntimeKind::Swarm {
            self.validate_swarm()?;
        } else if !self.worker_constraints.is_empty() {
            return Err("WORKER_CONSTRAINTS needs AGENT_RUNTIME=swarm".into());
        }
        if self.crash_backoff_initial.is_zero() {
            return Err("CRASH_BACKOFF_INITIAL must be positive".into());
        }
        if self.crash_backoff_max < self.crash_backoff_initial {
            return Err(format!(
                "CRASH_BACKOFF_MAX ({:?}) is below CRASH_BACKOFF_INITIAL ({:?})",
                self.crash_backoff_max, self.crash_backoff_initial
            ));
        }
        if self.agent_replicas > 1 && self.redis().is_none() {
            return Err(format!(
                "AGENT_REPLICAS={} needs Redis for the leader election: set REDIS_URL (or REDIS_HOST), or AGENT_REPLICAS=1",
                self.agent_replicas
            ));
        }
        if self.leader_lease < LEADER_LEASE_MIN {
            return Err(format!(
                "LEADER_LEASE must be at least {LEADER_LEASE_MIN:?}, got {:?}",
                self.leader_lease
            ));
        }
        let agent_id = self.resolved_agent_id();
        if agent_id.is_empty()
            || agent_id
                .chars()
                .any(|c| c == '/' || c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "AGENT_ID must be a non-empty name without `/` or whitespace, got `{agent_id}`"
            ));
        }
        let bad_host = |host: &str| {
            host.chars()
                .any(|c| c == '/' || c == '@' || c.is_whitespace() || c.is_control())
        };
        if let Some(host) = self.advertise_host.as_deref().filter(|host| bad_host(host)) {
            return Err(format!(
                "AGENT_ADVERTISE_HOST must be a host name or an address, got `{host}`"
            ));
        }
        if let Some(url) = &self.dashboard_balancer_url {
            let scheme = url.split_once("://").map(|(scheme, _)| scheme);
            if !matches!(scheme, Some("http" | "https")) {
                return Err(format!(
                    "DASHBOARD_BALANCER_URL must be an http:// or https:// URL, got `{url}`"
                ));
            }
        }
        for url in &self.balancer_admin_urls {
            crate::journey::AdminUrl::parse(url)
                .map_err(|why| format!("BALANCER_ADMIN_URLS: `{url}` {why}"))?;
        }
        Ok(())
    }

    /// What AGENT_RUNTIME=swarm needs besides the common checks.
    fn validate_swarm(&self) -> Result<(), String> {
        if self.redis().is_none() {
            return Err(
                "AGENT_RUNTIME=swarm needs Redis (REDIS_URL or REDIS_HOST): each node's agent shares its workers' stats there"
                    .into(),
            );
        }
        if self.network.is_none() {
            return Err(
                "AGENT_RUNTIME=swarm needs AGENT_NETWORK: the overlay network the workers, agents and balancers share"
                    .into(),
            );
        }
        if self.warm_pool > 0 {
            return Err(
                "WARM_POOL must be 0 with AGENT_RUNTIME=swarm (a Swarm task cannot be paused)"
                    .into(),
            );
        }
        if self.worker_cpuset.is_some() {
            return Err("WORKER_CPUSET cannot be used with AGENT_RUNTIME=swarm (cores differ per node); use WORKER_CPUS".into());
        }
        Ok(())
    }

    /// Treats empty strings (as compose passes unset variables) as unset.
    pub fn normalized(mut self) -> Self {
        let keep = |value: Option<String>| value.filter(|v| !v.trim().is_empty());
        // Surrounding whitespace (a token file's newline) is not part of the token: clients'
        // `Bearer` values are trimmed too.
        self.token = keep(self.token).map(|token| token.trim().to_owned());
        self.redis_url = keep(self.redis_url);
        self.redis_host = keep(self.redis_host);
        self.network = keep(self.network);
        self.docker_host = keep(self.docker_host);
        self.worker_cpuset = self.worker_cpuset.filter(|pool| !pool.0.is_empty());
        self.worker_constraints
            .retain(|constraint| !constraint.is_empty());
        self.dashboard_balancer_url = keep(self.dashboard_balancer_url);
        self.balancer_admin_urls = self
            .balancer_admin_urls
            .iter()
            .map(|url| url.trim().trim_end_matches('/').to_owned())
            .filter(|url| !url.is_empty())
            .collect();
        self.agent_id = keep(self.agent_id).map(|id| id.trim().to_owned());
        self.advertise_host = keep(self.advertise_host).map(|host| host.trim().to_owned());
        self
    }

    /// AGENT_ID, else the hostname.
    pub fn resolved_agent_id(&self) -> String {
        self.agent_id
            .clone()
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned())
    }

    /// The prefix of every Redis key, `rustybalancer:<APP_IDENTIFIER>`.
    pub fn key_prefix(&self) -> String {
        format!("rustybalancer:{}", self.app)
    }

    /// Whether several agents run and elect a leader (AGENT_REPLICAS > 1).
    pub fn leader_election(&self) -> bool {
        self.agent_replicas > 1
    }

    /// How other agents reach this one, given the ports it actually listens on: at
    /// AGENT_ADVERTISE_HOST, else at this host's address on the route to Redis (127.0.0.1
    /// when Redis is on loopback or there is none; the hostname if the route is unknown).
    pub async fn advertised_urls(&self, http_port: u16, ws_port: u16, grpc_port: u16) -> AgentUrls {
        let host = match &self.advertise_host {
            Some(host) => host.clone(),
            None => self.route_to_redis().await.map_or_else(
                |cause| {
                    let host = gethostname::gethostname().to_string_lossy().into_owned();
                    warn!(%cause, %host, "cannot tell this host's address on the route to redis; advertising the hostname (set AGENT_ADVERTISE_HOST)");
                    host
                },
                |address| address.to_string(),
            ),
        };
        AgentUrls::new(&host, http_port, ws_port, grpc_port)
    }

    /// The election's settings with these URLs; `None` when the agent leads alone
    /// (AGENT_REPLICAS=1, or no Redis, which `validate` refuses with several replicas).
    /// `candidate`: whether this agent may lead (see [`LeaseConfig::candidate`]).
    pub fn lease_config(&self, urls: AgentUrls, candidate: bool) -> Option<LeaseConfig> {
        if !self.leader_election() {
            return None;
        }
        Some(LeaseConfig {
            redis_url: self.redis()?,
            prefix: self.key_prefix(),
            agent_id: self.resolved_agent_id(),
            lease: self.leader_lease,
            urls,
            candidate,
        })
    }

    /// This host's address on the route to Redis: the local address of a UDP socket
    /// connected to it (nothing is sent). Loopback without Redis or with a Unix socket.
    async fn route_to_redis(&self) -> Result<IpAddr, String> {
        let Some(url) = self.redis() else {
            return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
        };
        let client = redis::Client::open(url.as_str()).map_err(|err| err.to_string())?;
        let (host, port) = match client.get_connection_info().addr() {
            redis::ConnectionAddr::Tcp(host, port)
            | redis::ConnectionAddr::TcpTls { host, port, .. } => (host.clone(), *port),
            _ => return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        };
        let lookup = tokio::time::timeout(
            ADVERTISE_LOOKUP_TIMEOUT,
            tokio::net::lookup_host((host.as_str(), port)),
        )
        .await
        .map_err(|_| format!("looking up the redis host took over {ADVERTISE_LOOKUP_TIMEOUT:?}"))?
        .map_err(|err| err.to_string())?;
        let mut last = String::from("the redis host has no address");
        for redis in lookup {
            let any: SocketAddr = match redis {
                SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let local = async {
                let socket = tokio::net::UdpSocket::bind(any).await?;
                socket.connect(redis).await?;
                socket.local_addr()
            };
            match local.await {
                Ok(local) => return Ok(local.ip()),
                Err(err) => last = err.to_string(),
            }
        }
        Err(last)
    }

    /// Who may make mutating calls: holders of the token, nobody, or (insecure) anyone.
    pub fn access(&self) -> Access {
        match (&self.token, self.insecure) {
            (Some(token), _) => Access::Token(token.clone()),
            (None, true) => Access::Open,
            (None, false) => Access::Locked,
        }
    }

    /// Containers to run at start: DEFAULT_CONTAINER, else INITIAL_WORKERS, else MIN_CONTAINERS.
    pub fn start_count(&self) -> usize {
        self.default_container
            .or(self.initial_workers)
            .unwrap_or(self.min_containers)
            .max(self.min_containers)
    }

    pub fn weights(&self) -> Weights {
        Weights {
            cpu: self.cpu_weight,
            memory: self.memory_weight,
            network: self.network_weight,
            availability: self.availability_weight,
        }
    }

    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            low: self.low_load_threshold,
            high: self.high_load_threshold,
            critical: self.critical_load_threshold,
            max_cpu: self.max_cpu_threshold,
        }
    }

    pub fn scaling(&self) -> ScalingConfig {
        ScalingConfig {
            min_replicas: self.min_containers,
            max_replicas: self.max_containers,
            step: self.scale_step,
            high: self.high_load_threshold,
            low: self.low_load_threshold,
            critical: self.critical_load_threshold,
            prespawn_cpu: self.prespawn_threshold,
            target_concurrency: self.target_concurrency,
            target_work_seconds: self.target_work_seconds,
            worker_cpus: self.cpus_per_worker().unwrap_or(1.0),
            cooldown_up: self.cooldown_up.unwrap_or(self.cooldown),
            cooldown_down: self.cooldown_down.unwrap_or(self.cooldown),
            stabilization: self.scale_down_stabilization,
            drain_timeout: self.drain_timeout,
        }
    }

    /// The CPUs a worker may use when the agent knows them: WORKER_CPUS, capped at one core
    /// with WORKER_CPUSET (each worker is pinned to one); one core with WORKER_CPUSET alone.
    pub fn cpus_per_worker(&self) -> Option<f64> {
        worker_cores(self.worker_cpus, self.worker_cpuset.is_some())
    }

    /// The Redis URL from REDIS_URL or REDIS_HOST + REDIS_PORT; `None` = memory only.
    pub fn redis(&self) -> Option<String> {
        self.redis_url
            .clone()
            .filter(|url| !url.is_empty())
            .or_else(|| {
                self.redis_host
                    .as_ref()
                    .filter(|host| !host.is_empty())
                    .map(|host| format!("redis://{host}:{}/", self.redis_port))
            })
    }
}

/// Who may make the mutating calls (scale, drain, load reports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Callers presenting `Authorization: Bearer <AGENT_TOKEN>`.
    Token(String),
    /// Nobody: no AGENT_TOKEN and AGENT_INSECURE is not set.
    Locked,
    /// Anyone (AGENT_INSECURE=true, no token).
    Open,
}

/// How workers are probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    /// `GET WORKER_PROBE_PATH`, a status in WORKER_PROBE_STATUS.
    Http,
    /// A TCP connect to TARGET_PORT.
    Tcp,
    /// The container's HEALTHCHECK status, read from the engine.
    Docker,
}

impl ProbeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Tcp => "tcp",
            Self::Docker => "docker",
        }
    }
}

/// HTTP statuses counted as success: inclusive ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRanges(pub Vec<(u16, u16)>);

impl StatusRanges {
    pub fn contains(&self, status: u16) -> bool {
        self.0
            .iter()
            .any(|(from, to)| (*from..=*to).contains(&status))
    }
}

impl std::fmt::Display for StatusRanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(from, to)| {
                if from == to {
                    from.to_string()
                } else {
                    format!("{from}-{to}")
                }
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// WORKER_CONCURRENCY: how many requests a balancer sends one worker at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WorkerConcurrency {
    /// Unset (or empty): from the worker's CPU limit, see [`worker_concurrency`].
    #[default]
    FromCpuLimit,
    /// This many for every worker; 0 = unlimited.
    Fixed(u32),
}

/// The CPUs of a worker given WORKER_CPUS (`cpus`) and whether it is pinned to one core of
/// WORKER_CPUSET: the smaller of the two limits, as the worker itself reads it (its cgroup
/// quota, at most the cores it may run on); `None` when neither is set.
pub fn worker_cores(cpus: Option<f64>, pinned: bool) -> Option<f64> {
    match (cpus, pinned) {
        (Some(cpus), true) => Some(cpus.min(1.0)),
        (Some(cpus), false) => Some(cpus),
        (None, true) => Some(1.0),
        (None, false) => None,
    }
}

/// The concurrency a worker is published with: WORKER_CONCURRENCY when set, else the thread
/// count the default worker sizes its pool to under its CPU limit
/// (`common::cpu::pool_threads`), else 0 (unlimited).
pub fn worker_concurrency(setting: WorkerConcurrency, cpus: Option<f64>, pinned: bool) -> u32 {
    match setting {
        WorkerConcurrency::Fixed(n) => n,
        WorkerConcurrency::FromCpuLimit => worker_cores(cpus, pinned).map_or(0, |cores| {
            u32::try_from(common::cpu::pool_threads(cores)).unwrap_or(u32::MAX)
        }),
    }
}

/// `4`, `0` (unlimited); empty (as compose passes an unset variable) = from the CPU limit.
pub fn parse_worker_concurrency(text: &str) -> Result<WorkerConcurrency, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(WorkerConcurrency::FromCpuLimit);
    }
    text.parse().map(WorkerConcurrency::Fixed).map_err(|_| {
        format!(
            "`{text}` is not a number of requests such as 4 (0 = unlimited; empty = from the worker's CPU limit)"
        )
    })
}

/// A command line (entrypoint or arguments); empty = the image's own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandLine(pub Vec<String>);

/// tmpfs mounts: path and mount options (empty for the defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TmpfsList(pub Vec<(String, String)>);

/// Extra container labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelList(pub Vec<(String, String)>);

/// The labels the agent sets itself (WORKER_LABELS may not set them).
pub fn is_agent_label(key: &str) -> bool {
    key == "application" || key == "managed-by" || key.starts_with("rustybalancer.")
}

fn parse_probe_path(text: &str) -> Result<String, String> {
    let path = text.trim();
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("`{text}` is not a path such as /health"));
    }
    if path.parse::<hyper::Uri>().is_err() {
        return Err(format!("`{text}` is not a valid request path"));
    }
    Ok(path.to_owned())
}

/// `200-399`, `200,204`, `200-299,404`.
pub fn parse_status_ranges(text: &str) -> Result<StatusRanges, String> {
    let mut ranges = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("`{part}` is not an HTTP status or a range such as 200-399");
        let code = |s: &str| {
            s.trim()
                .parse::<u16>()
                .ok()
                .filter(|c| (100..=599).contains(c))
                .ok_or_else(bad)
        };
        let (from, to) = match part.split_once('-') {
            Some((from, to)) => (code(from)?, code(to)?),
            None => (code(part)?, code(part)?),
        };
        if from > to {
            return Err(bad());
        }
        ranges.push((from, to));
    }
    if ranges.is_empty() {
        return Err("no status given; use codes and ranges such as 200-399".into());
    }
    Ok(StatusRanges(ranges))
}

/// A JSON array of strings when it starts with `[`, else words split on whitespace.
pub fn parse_command(text: &str) -> Result<CommandLine, String> {
    let trimmed = text.trim();
    if trimmed.starts_with('[') {
        let words: Vec<String> = serde_json::from_str(trimmed)
            .map_err(|err| format!("`{text}` is not a JSON array of strings: {err}"))?;
        if words.iter().any(|w| w.contains('\0')) {
            return Err("an argument contains a NUL character".into());
        }
        return Ok(CommandLine(words));
    }
    Ok(CommandLine(
        trimmed.split_whitespace().map(str::to_owned).collect(),
    ))
}

/// `name`, `uid`, `uid:gid`, `name:group`; empty keeps the image's.
fn parse_user(text: &str) -> Result<String, String> {
    let user = text.trim();
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    let ok = user.is_empty()
        || match user.split_once(':') {
            Some((name, group)) => part_ok(name) && part_ok(group),
            None => part_ok(user),
        };
    if ok {
        Ok(user.to_owned())
    } else {
        Err(format!(
            "`{text}` is not a user such as 10001:10001 or nobody"
        ))
    }
}

/// `/tmp,/run:size=16m` (options after the first `:`, `,` inside options is not possible here:
/// use `mode=1777` or `size=16m`, one option per mount).
pub fn parse_tmpfs(text: &str) -> Result<TmpfsList, String> {
    let mut mounts: Vec<(String, String)> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (path, options) = part.split_once(':').unwrap_or((part, ""));
        if !path.starts_with('/') || path.chars().any(char::is_whitespace) || path == "/" {
            return Err(format!(
                "`{part}` is not an absolute path (with optional :options) such as /tmp:size=16m"
            ));
        }
        if mounts.iter().any(|(known, _)| known == path) {
            return Err(format!("`{path}` is given twice"));
        }
        mounts.push((path.to_owned(), options.to_owned()));
    }
    Ok(TmpfsList(mounts))
}

/// `team=web,tier=front`.
pub fn parse_labels(text: &str) -> Result<LabelList, String> {
    let mut labels: Vec<(String, String)> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = part.split_once('=') else {
            return Err(format!("`{part}` is not key=value"));
        };
        let key = key.trim();
        if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("`{part}` has no valid key"));
        }
        if is_agent_label(key) {
            return Err(format!(
                "`{key}` is one of the agent's own labels (application, managed-by, rustybalancer.*)"
            ));
        }
        if labels.iter().any(|(known, _)| known == key) {
            return Err(format!("`{key}` is given twice"));
        }
        labels.push((key.to_owned(), value.trim().to_owned()));
    }
    Ok(LabelList(labels))
}

/// A pool of CPU cores for pinning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuSet(pub Vec<u32>);

/// `KEY=VALUE` pairs for worker environments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvList(pub Vec<String>);

/// One Swarm placement constraint: `<attribute>==<value>` or `<attribute>!=<value>`.
/// Empty (an unset variable, as compose passes it) means none.
fn parse_constraint(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(String::new());
    }
    let (attribute, value) = text
        .split_once("==")
        .or_else(|| text.split_once("!="))
        .ok_or_else(|| format!("`{text}` is not a constraint such as node.role==worker"))?;
    let word = |part: &str| {
        !part.trim().is_empty()
            && part
                .trim()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-/:".contains(c))
    };
    if !word(attribute) || !word(value) {
        return Err(format!(
            "`{text}` is not a constraint such as node.role==worker or node.labels.pool!=gpu"
        ));
    }
    Ok(text.to_owned())
}

fn parse_cpus(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(cpus) if cpus > 0.0 && cpus <= 1024.0 => Ok(cpus),
        _ => Err(format!("`{text}` is not a CPU count such as 1 or 0.5")),
    }
}

/// `512`, `256k`, `256m`, `1g` (binary units).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim().to_ascii_lowercase();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text.as_str(), ""),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a size such as 256m or 1g"))?;
    let factor = match unit.trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return Err(format!("`{text}` has an unknown unit; use k, m or g")),
    };
    value
        .checked_mul(factor)
        .filter(|bytes| *bytes >= 4 << 20)
        .ok_or_else(|| format!("`{text}` is out of range (at least 4m)"))
}

/// `1,2,3`, `1-3` or a mix (`0,2-4`).
pub fn parse_cpuset(text: &str) -> Result<CpuSet, String> {
    let mut cores = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("`{part}` is not a core or a range such as 1-3");
        match part.split_once('-') {
            Some((from, to)) => {
                let (from, to): (u32, u32) = (
                    from.parse().map_err(|_| bad())?,
                    to.parse().map_err(|_| bad())?,
                );
                if from > to {
                    return Err(bad());
                }
                cores.extend(from..=to);
            }
            None => cores.push(part.parse().map_err(|_| bad())?),
        }
    }
    cores.sort_unstable();
    cores.dedup();
    // Empty (as compose passes an unset variable) means no pinning; see `Config::normalized`.
    Ok(CpuSet(cores))
}

fn parse_env_list(text: &str) -> Result<EnvList, String> {
    let mut pairs = Vec::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((key, _)) if !key.is_empty() => pairs.push(pair.to_owned()),
            _ => return Err(format!("`{pair}` is not KEY=VALUE")),
        }
    }
    Ok(EnvList(pairs))
}

#[cfg(test)]
mod tests;
