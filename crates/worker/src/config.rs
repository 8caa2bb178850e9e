//! The worker's configuration: every field a flag and an environment variable, parsed once.

use std::{net::IpAddr, time::Duration};

use common::config::parse_duration;

pub const DEFAULT_PORT: u16 = 8080;
pub const DEFAULT_QUEUE_CAPACITY: usize = 64;
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
pub const DEFAULT_MAX_ITERATIONS: u64 = 10_000_000_000;
pub const DEFAULT_MAX_PRIME_LIMIT: u64 = 2_000_000_000;
pub const DEFAULT_MAX_INTENSITY: u32 = 10;
pub const DEFAULT_WORK_UNIT: u64 = 5_000_000;
pub const DEFAULT_MEMORY_UNIT_MB: u64 = 16;
pub const DEFAULT_RETRY_AFTER_SECS: u64 = 1;
pub const DEFAULT_CHAOS_PORT: u16 = 8081;

/// Worker settings. Flags win over environment variables; every one has a default.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(
        long,
        env = "WORKER_HOST",
        value_name = "WORKER_HOST",
        default_value = "0.0.0.0"
    )]
    pub host: IpAddr,

    /// Port to listen on.
    #[arg(long, env = "TARGET_PORT", value_name = "TARGET_PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// Name reported in every answer (default: the hostname, the container id inside Docker).
    #[arg(long = "worker-id", env = "WORKER_ID", value_name = "WORKER_ID")]
    pub worker_id: Option<String>,

    /// Threads running jobs (default: the CPU quota of the container, rounded up).
    #[arg(long, env = "WORKER_THREADS", value_name = "WORKER_THREADS",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,

    /// Jobs that may wait for a thread; past threads + this, requests get 503.
    #[arg(long = "queue-capacity", env = "WORKER_QUEUE_CAPACITY", value_name = "WORKER_QUEUE_CAPACITY",
          default_value_t = DEFAULT_QUEUE_CAPACITY)]
    pub queue_capacity: usize,

    /// Largest request body in bytes (413 past it).
    #[arg(long = "max-body-bytes", env = "WORKER_MAX_BODY_BYTES", value_name = "WORKER_MAX_BODY_BYTES",
          default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// Largest `iterations` of `monte_carlo_pi`.
    #[arg(long = "max-iterations", env = "WORKER_MAX_ITERATIONS", value_name = "WORKER_MAX_ITERATIONS",
          default_value_t = DEFAULT_MAX_ITERATIONS, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_iterations: u64,

    /// Largest `limit` of `primes`.
    #[arg(long = "max-prime-limit", env = "WORKER_MAX_PRIME_LIMIT", value_name = "WORKER_MAX_PRIME_LIMIT",
          default_value_t = DEFAULT_MAX_PRIME_LIMIT, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_prime_limit: u64,

    /// Longest `sleep` job (`90s`, `2m`, or bare seconds).
    #[arg(long = "max-sleep", env = "WORKER_MAX_SLEEP", value_name = "WORKER_MAX_SLEEP",
          default_value = "120s", value_parser = parse_duration)]
    pub max_sleep: Duration,

    /// Largest `intensity` of /work, /heavy, /light, /consume_cpu and /consume_memory.
    #[arg(long = "max-intensity", env = "WORKER_MAX_INTENSITY", value_name = "WORKER_MAX_INTENSITY",
          default_value_t = DEFAULT_MAX_INTENSITY, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_intensity: u32,

    /// Mixing rounds per intensity unit of CPU work (/work and /consume_cpu; /heavy is 10x,
    /// /light a tenth).
    #[arg(long = "work-unit", env = "WORKER_WORK_UNIT", value_name = "WORKER_WORK_UNIT",
          default_value_t = DEFAULT_WORK_UNIT, value_parser = clap::value_parser!(u64).range(1..))]
    pub work_unit: u64,

    /// MiB allocated per intensity unit by /consume_memory.
    #[arg(long = "memory-unit-mb", env = "WORKER_MEMORY_UNIT_MB", value_name = "WORKER_MEMORY_UNIT_MB",
          default_value_t = DEFAULT_MEMORY_UNIT_MB, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub memory_unit_mb: u64,

    /// Enable `POST /stop` on the chaos port (WORKER_CHAOS_PORT, never on the traffic port),
    /// which makes the worker stop answering as a crashed container would.
    #[arg(long, env = "WORKER_CHAOS", value_name = "WORKER_CHAOS", default_value_t = false,
          action = clap::ArgAction::Set)]
    pub chaos: bool,

    /// How long in-flight jobs may finish after SIGTERM.
    #[arg(long = "shutdown-grace", env = "SHUTDOWN_GRACE", value_name = "SHUTDOWN_GRACE",
          default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Seconds in the `Retry-After` header of a 503 when the pool and its queue are full.
    #[arg(long = "retry-after", env = "WORKER_RETRY_AFTER", value_name = "WORKER_RETRY_AFTER",
          default_value_t = DEFAULT_RETRY_AFTER_SECS)]
    pub retry_after_secs: u64,

    /// Port of the chaos endpoint `POST /stop` when WORKER_CHAOS is on (0: any free port). The
    /// balancer only forwards to TARGET_PORT, so clients never reach it.
    #[arg(long = "chaos-port", env = "WORKER_CHAOS_PORT", value_name = "WORKER_CHAOS_PORT",
          default_value_t = DEFAULT_CHAOS_PORT)]
    pub chaos_port: u16,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: IpAddr::from([0, 0, 0, 0]),
            port: DEFAULT_PORT,
            worker_id: None,
            threads: None,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_iterations: DEFAULT_MAX_ITERATIONS,
            max_prime_limit: DEFAULT_MAX_PRIME_LIMIT,
            max_sleep: Duration::from_secs(120),
            max_intensity: DEFAULT_MAX_INTENSITY,
            work_unit: DEFAULT_WORK_UNIT,
            memory_unit_mb: DEFAULT_MEMORY_UNIT_MB,
            chaos: false,
            shutdown_grace: Duration::from_secs(30),
            retry_after_secs: DEFAULT_RETRY_AFTER_SECS,
            chaos_port: DEFAULT_CHAOS_PORT,
        }
    }
}

impl Config {
    /// The configured worker id, else the hostname.
    pub fn resolved_worker_id(&self) -> String {
        self.worker_id
            .clone()
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned())
    }
}
