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

use super::{Instance, LaunchSpec, LogLine, LogQuery, RuntimeError, RuntimeEvent};
use crate::{config::Config, model::Worker, score::StatsSample};

const APP_VAR: &str = "RUSTYBALANCER_APPLICATION";
const OWNER_VAR: &str = "RUSTYBALANCER_MANAGED_BY";
/// Longest wait, after a worker exits, for the rest of its output.
const OUTPUT_DRAIN: Duration = Duration::from_millis(500);
/// Processes whose output is kept (the oldest started forgotten first).
const LOGS_KEPT: usize = 64;
/// Most lines and bytes kept of one process's output (stdout and stderr); each line is cut
/// at `LOG_BYTES`.
const LOG_RING_LINES: usize = 2_000;
const LOG_RING_BYTES: usize = 1 << 20;
/// New lines buffered for one follower; one that falls further behind skips ahead.
const FOLLOW_BUFFER: usize = 1024;
/// Longest piece of a line read at once.
const LINE_READ_MAX: u64 = 64 * 1024;
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
    /// The output of the processes this agent started (at most `LOGS_KEPT` processes, kept
    /// after they exit).
    logs: Mutex<Logs>,
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
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        let mut child = command.spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| RuntimeError::Other("worker exited at once".into()))?;
        lock(&self.shared.children).insert(pid);
        lock(&self.shared.watched).insert(pid);
        lock(&self.shared.logs).open(pid);
        let weak = Arc::downgrade(&self.shared);
        let stdout = child
            .stdout
            .take()
            .map(|out| tokio::spawn(keep_output(weak.clone(), pid, "stdout", out)));
        let stderr = child
            .stderr
            .take()
            .map(|err| tokio::spawn(keep_output(weak.clone(), pid, "stderr", err)));
        // Reap our own child so it does not linger as a zombie, and report its exit code.
        let shared = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let status = child.wait().await.ok();
            // Its last lines are read before the exit is told (a crash report carries them);
            // bounded, since a process it left behind may hold a pipe open.
            let drained = async {
                for reader in [stdout, stderr].into_iter().flatten() {
                    let _ = reader.await;
                }
            };
            let _ = tokio::time::timeout(OUTPUT_DRAIN, drained).await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            // Its followers end with it.
            lock(&shared.logs).closed(pid);
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

    /// Whether the agent keeps the output of process `id`, running or exited (the last
    /// `LOGS_KEPT` processes it started).
    pub fn keeps_logs(&self, id: &str) -> bool {
        pid_of(id).is_some_and(|pid| lock(&self.shared.logs).processes.contains_key(&pid))
    }

    /// What the agent kept of a process's output (stdout and stderr, kept after it exits),
    /// and with `follow` its new lines until its output closes. A process the agent did not
    /// start (adopted from /proc) has no lines; an unknown one is an error.
    pub fn log_stream(
        &self,
        id: &str,
        query: &LogQuery,
    ) -> Result<BoxStream<'static, LogLine>, RuntimeError> {
        let pid = pid_of(id).ok_or_else(|| RuntimeError::Other(format!("no process {id}")))?;
        let (kept, live) = {
            let logs = lock(&self.shared.logs);
            match logs.processes.get(&pid) {
                Some(log) => log.read(query),
                None if alive(pid) => (Vec::new(), None),
                None => return Err(RuntimeError::Other(format!("no process {id}"))),
            }
        };
        let kept = futures_util::stream::iter(kept);
        Ok(match live.filter(|_| query.follow) {
            Some(live) => kept
                .chain(
                    // A follower that lags skips the lines it missed; the child never waits.
                    tokio_stream::wrappers::BroadcastStream::new(live)
                        .filter_map(|line| std::future::ready(line.ok())),
                )
                .boxed(),
            None => kept.boxed(),
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

/// The kept output of the processes this agent started.
#[derive(Default)]
struct Logs {
    processes: HashMap<u32, ProcessLog>,
    /// Counts the processes started, to forget the oldest first.
    started: u64,
}

/// One process's output: the last lines (`LOG_RING_LINES`, `LOG_RING_BYTES`) and the live
/// feed of new ones while its output is open.
struct ProcessLog {
    order: u64,
    lines: VecDeque<LogLine>,
    bytes: usize,
    live: Option<tokio::sync::broadcast::Sender<LogLine>>,
    /// Its pipes not yet at their end.
    open: u8,
}

impl Logs {
    /// A new process, with its two pipes open; the oldest kept one forgotten past
    /// `LOGS_KEPT`.
    fn open(&mut self, pid: u32) {
        if self.processes.len() >= LOGS_KEPT && !self.processes.contains_key(&pid) {
            let oldest = self
                .processes
                .iter()
                .min_by_key(|(_, log)| log.order)
                .map(|(pid, _)| *pid);
            if let Some(oldest) = oldest {
                self.processes.remove(&oldest);
            }
        }
        self.started += 1;
        let (live, _) = tokio::sync::broadcast::channel(FOLLOW_BUFFER);
        self.processes.insert(
            pid,
            ProcessLog {
                order: self.started,
                lines: VecDeque::new(),
                bytes: 0,
                live: Some(live),
                open: 2,
            },
        );
    }

    fn push(&mut self, pid: u32, stream: &'static str, line: &str) {
        let Some(log) = self.processes.get_mut(&pid) else {
            return;
        };
        let line = LogLine {
            at_ms: Some(super::now_ms()),
            stream,
            line: super::cut(line.trim_end(), super::LOG_BYTES).to_owned(),
        };
        if let Some(live) = &log.live {
            // No follower is fine.
            let _ = live.send(line.clone());
        }
        log.bytes += line.line.len();
        log.lines.push_back(line);
        while log.lines.len() > LOG_RING_LINES || log.bytes > LOG_RING_BYTES {
            match log.lines.pop_front() {
                Some(old) => log.bytes -= old.line.len(),
                None => break,
            }
        }
    }

    /// One pipe reached its end; after both, no new line will come.
    fn pipe_closed(&mut self, pid: u32) {
        if let Some(log) = self.processes.get_mut(&pid) {
            log.open = log.open.saturating_sub(1);
            if log.open == 0 {
                log.live = None;
            }
        }
    }

    /// The process exited (and its output was drained, or not within `OUTPUT_DRAIN`).
    fn closed(&mut self, pid: u32) {
        if let Some(log) = self.processes.get_mut(&pid) {
            log.live = None;
        }
    }
}

impl ProcessLog {
    /// The kept lines the query asks for, and a receiver of the new ones taken at the same
    /// moment (none missed, none twice); no receiver once the output is closed.
    fn read(
        &self,
        query: &LogQuery,
    ) -> (
        Vec<LogLine>,
        Option<tokio::sync::broadcast::Receiver<LogLine>>,
    ) {
        let since = query.since_ms.unwrap_or(0);
        let matching = self
            .lines
            .iter()
            .filter(|line| line.at_ms.unwrap_or(0) >= since);
        let count = matching.clone().count();
        let kept = matching
            .skip(count.saturating_sub(query.tail))
            .cloned()
            .collect();
        (kept, self.live.as_ref().map(|live| live.subscribe()))
    }
}

/// Keeps a child's output, line by line (reading it all, so the child never blocks on a
/// full pipe).
async fn keep_output(
    shared: std::sync::Weak<Shared>,
    pid: u32,
    stream: &'static str,
    output: impl tokio::io::AsyncRead + Unpin,
) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut reader = tokio::io::BufReader::new(output);
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        // At most `LINE_READ_MAX` bytes at once: a longer line is kept as several.
        let read = (&mut reader)
            .take(LINE_READ_MAX)
            .read_until(b'\n', &mut buffer)
            .await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match read {
            Ok(0) | Err(_) => {
                lock(&shared.logs).pipe_closed(pid);
                return;
            }
            Ok(_) => {
                let line = String::from_utf8_lossy(&buffer);
                if !line.trim_end().is_empty() {
                    lock(&shared.logs).push(pid, stream, &line);
                }
            }
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

#[cfg(test)]
mod tests;
