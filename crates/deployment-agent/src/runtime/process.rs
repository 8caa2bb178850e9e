//! Workers as local processes: the `worker` binary on free loopback ports. For machines
//! without Docker and for fast tests. Processes are marked with two environment variables
//! (the equivalent of container labels), so a restarted agent finds and adopts them in /proc.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::{StreamExt, stream::BoxStream};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::{Instance, LaunchSpec, RuntimeError, RuntimeEvent};
use crate::{config::Config, model::Worker, score::StatsSample};

const APP_VAR: &str = "RUSTYBALANCER_APPLICATION";
const OWNER_VAR: &str = "RUSTYBALANCER_MANAGED_BY";
/// Longest wait, after a worker exits, for the rest of its stderr.
const STDERR_DRAIN: Duration = Duration::from_millis(500);
/// Processes whose stderr tail is kept.
const LOGS_KEPT: usize = 64;
/// Linux reports CPU times in clock ticks of 1/100 s.
const NS_PER_TICK: u64 = 10_000_000;

#[derive(Clone)]
pub struct ProcessRuntime {
    shared: Arc<Shared>,
}

struct Shared {
    binary: PathBuf,
    app: String,
    agent_name: String,
    env: Vec<(String, String)>,
    /// Processes being watched for exit, and the ones the agent is stopping itself.
    watched: Mutex<HashSet<u32>>,
    stopping: Mutex<HashSet<u32>>,
    /// Processes this agent started: their own task reports their exit, with its code.
    children: Mutex<HashSet<u32>>,
    /// The last stderr lines of the processes this agent started (at most `LOGS_KEPT`
    /// processes, the oldest dropped first).
    logs: Mutex<HashMap<u32, VecDeque<String>>>,
    events: tokio::sync::broadcast::Sender<RuntimeEvent>,
}

impl ProcessRuntime {
    pub fn new(config: &Config) -> Result<Self, RuntimeError> {
        let binary = match &config.worker_binary {
            Some(path) => path.clone(),
            None => std::env::current_exe()?
                .parent()
                .map(|dir| dir.join("worker"))
                .ok_or_else(|| {
                    RuntimeError::Other("cannot locate the worker binary; set WORKER_BINARY".into())
                })?,
        };
        if !binary.is_file() {
            return Err(RuntimeError::Other(format!(
                "worker binary {} not found; set WORKER_BINARY",
                binary.display()
            )));
        }
        let env = config
            .worker_env
            .0
            .iter()
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let (events, _) = tokio::sync::broadcast::channel(64);
        let runtime = Self {
            shared: Arc::new(Shared {
                binary,
                app: config.app.clone(),
                agent_name: config.agent_name.clone(),
                env,
                watched: Mutex::default(),
                stopping: Mutex::default(),
                children: Mutex::default(),
                logs: Mutex::default(),
                events,
            }),
        };
        runtime.spawn_reaper();
        Ok(runtime)
    }

    pub async fn list(&self) -> Result<Vec<Instance>, RuntimeError> {
        let shared = self.shared.clone();
        let found = tokio::task::spawn_blocking(move || scan_proc(&shared.app, &shared.agent_name))
            .await
            .map_err(|err| RuntimeError::Other(err.to_string()))?;
        let mut watched = lock(&self.shared.watched);
        for instance in &found {
            if let Some(pid) = pid_of(&instance.worker.id) {
                watched.insert(pid);
            }
        }
        Ok(found)
    }

    pub async fn launch(&self, spec: &LaunchSpec) -> Result<Instance, RuntimeError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let port_arg = port.to_string();
        let mut command = tokio::process::Command::new(&self.shared.binary);
        command
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port_arg,
                "--worker-id",
                &spec.name,
            ])
            .env(APP_VAR, &self.shared.app)
            .env(OWNER_VAR, &self.shared.agent_name)
            // Workers share the host's ports here: a chaos port (WORKER_CHAOS=true) of its own
            // for each, unless WORKER_ENV names one.
            .env("WORKER_CHAOS_PORT", "0")
            .envs(self.shared.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        let mut child = command.spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| RuntimeError::Other("worker exited at once".into()))?;
        lock(&self.shared.children).insert(pid);
        lock(&self.shared.watched).insert(pid);
        let stderr = child
            .stderr
            .take()
            .map(|stderr| tokio::spawn(keep_stderr(Arc::downgrade(&self.shared), pid, stderr)));
        // Reap our own child so it does not linger as a zombie, and report its exit code.
        let shared = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let status = child.wait().await.ok();
            // Its last lines are read before the exit is told (a crash report carries them);
            // bounded, since a process it left behind may hold the pipe open.
            if let Some(stderr) = stderr {
                let _ = tokio::time::timeout(STDERR_DRAIN, stderr).await;
            }
            let Some(shared) = shared.upgrade() else {
                return;
            };
            lock(&shared.children).remove(&pid);
            lock(&shared.watched).remove(&pid);
            if !lock(&shared.stopping).remove(&pid) {
                let code = status.and_then(|status| {
                    use std::os::unix::process::ExitStatusExt;
                    status
                        .code()
                        .or_else(|| status.signal().map(|signal| 128 + signal))
                        .map(i64::from)
                });
                let reason = match code {
                    Some(code) => format!("exited (exit code {code})"),
                    None => "exited".into(),
                };
                let _ = shared.events.send(RuntimeEvent::Exited {
                    id: id_of(pid),
                    reason,
                    code,
                });
            }
        });
        Ok(Instance {
            worker: Worker {
                id: id_of(pid),
                name: spec.name.clone(),
                address: format!("127.0.0.1:{port}"),
                dns_name: spec.name.clone(),
                core_id: spec.core_id,
                created_at_ms: super::now_ms(),
            },
            running: true,
            paused: false,
            cpu_limit_cores: host_cores(),
        })
    }

    /// Sends `signal` to a worker process (SIGSTOP / SIGCONT for pause and resume).
    pub fn signal(&self, id: &str, signal: Signal) -> Result<(), RuntimeError> {
        let pid = pid_of(id).ok_or_else(|| RuntimeError::Other(format!("no process {id}")))?;
        kill(Pid::from_raw(pid as i32), signal)
            .map_err(|err| RuntimeError::Other(format!("{signal} to {pid}: {err}")))
    }

    pub async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let Some(pid) = pid_of(id) else { return Ok(()) };
        lock(&self.shared.stopping).insert(pid);
        let target = Pid::from_raw(pid as i32);
        if kill(target, Signal::SIGTERM).is_err() {
            return Ok(()); // already gone
        }
        // A paused (SIGSTOP) standby only sees the SIGTERM once it runs again.
        let _ = kill(target, Signal::SIGCONT);
        let deadline = Instant::now() + grace;
        while alive(pid) {
            if Instant::now() >= deadline {
                let _ = kill(target, Signal::SIGKILL);
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(())
    }

    /// The last stderr lines of a process this agent started.
    pub fn logs(&self, id: &str) -> Vec<String> {
        let Some(pid) = pid_of(id) else {
            return Vec::new();
        };
        let logs = lock(&self.shared.logs);
        logs.get(&pid).map_or_else(Vec::new, |lines| {
            super::last_lines(lines.iter().map(String::as_str))
        })
    }

    pub fn events(&self) -> BoxStream<'static, RuntimeEvent> {
        tokio_stream::wrappers::BroadcastStream::new(self.shared.events.subscribe())
            .filter_map(|event| std::future::ready(event.ok()))
            .boxed()
    }

    pub fn stats(&self, id: &str) -> BoxStream<'static, StatsSample> {
        let Some(pid) = pid_of(id) else {
            return futures_util::stream::empty().boxed();
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(sample) = tokio::task::spawn_blocking(move || read_sample(pid))
                    .await
                    .ok()
                    .flatten()
                else {
                    return;
                };
                if tx.send(sample).await.is_err() {
                    return;
                }
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
    }

    /// Polls watched processes and reports the ones that died on their own.
    fn spawn_reaper(&self) {
        let shared = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let children = lock(&shared.children).clone();
                let dead: Vec<u32> = lock(&shared.watched)
                    .iter()
                    .copied()
                    .filter(|pid| !children.contains(pid) && !alive(*pid))
                    .collect();
                for pid in dead {
                    lock(&shared.watched).remove(&pid);
                    if !lock(&shared.stopping).remove(&pid) {
                        let _ = shared.events.send(RuntimeEvent::Exited {
                            id: id_of(pid),
                            reason: "exited".into(),
                            code: None,
                        });
                    }
                }
            }
        });
    }
}

/// Keeps the last lines of a child's stderr (reading it all, so the child never blocks on a
/// full pipe).
async fn keep_stderr(
    shared: std::sync::Weak<Shared>,
    pid: u32,
    stderr: tokio::process::ChildStderr,
) {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) | Err(_) => return,
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut logs = lock(&shared.logs);
        if !logs.contains_key(&pid) && logs.len() >= LOGS_KEPT {
            // Forget the process with the lowest pid (a cheap stand-in for the oldest).
            if let Some(oldest) = logs.keys().min().copied() {
                logs.remove(&oldest);
            }
        }
        let kept = logs.entry(pid).or_default();
        let mut line = line;
        if line.len() > super::LOG_BYTES {
            let mut cut = super::LOG_BYTES;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        kept.push_back(line);
        while kept.len() > super::LOG_LINES {
            kept.pop_front();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn id_of(pid: u32) -> String {
    format!("pid-{pid}")
}

fn pid_of(id: &str) -> Option<u32> {
    id.strip_prefix("pid-")?.parse().ok()
}

fn host_cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// Running and not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Whether `pid` is stopped (SIGSTOP): state `T` in /proc.
fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('T'))
    })
}

/// Processes whose environment marks them as this agent's workers.
fn scan_proc(app: &str, owner: &str) -> Vec<Instance> {
    let app_mark = format!("{APP_VAR}={app}");
    let owner_mark = format!("{OWNER_VAR}={owner}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        let has = |mark: &str| vars.contains(&mark.as_bytes());
        if !has(&app_mark) || !has(&owner_mark) || !alive(pid) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let value = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let (Some(port), Some(name)) = (value("--port"), value("--worker-id")) else {
            continue;
        };
        found.push(Instance {
            worker: Worker {
                id: id_of(pid),
                address: format!("127.0.0.1:{port}"),
                dns_name: name.clone(),
                name,
                core_id: None,
                created_at_ms: super::now_ms(),
            },
            running: true,
            paused: stopped(pid),
            cpu_limit_cores: host_cores(),
        });
    }
    found
}

fn read_sample(pid: u32) -> Option<StatsSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    // After the command: state is field 3, utime 14 and stime 15 (1-based) of the full line.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let system: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse::<u64>().ok())
        .sum();
    let rss_kb = kb_field(
        &Path::new("/proc").join(pid.to_string()).join("status"),
        "VmRSS:",
    )
    .unwrap_or(0);
    let total_kb = kb_field(Path::new("/proc/meminfo"), "MemTotal:").unwrap_or(0);
    Some(StatsSample {
        at: Instant::now(),
        cpu_total_ns: (utime + stime) * NS_PER_TICK,
        system_cpu_ns: system * NS_PER_TICK,
        online_cpus: host_cores() as u32,
        memory_usage: rss_kb * 1024,
        memory_cache: 0,
        memory_limit: total_kb * 1024,
        net_rx_bytes: 0,
        net_tx_bytes: 0,
    })
}

fn kb_field(path: &Path, key: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
