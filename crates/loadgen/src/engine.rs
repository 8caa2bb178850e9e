//! The open-loop engine behind `replay` and `run`: every request is sent when it is due, not
//! when an earlier one returns, so a slow server cannot slow the load down (no coordinated
//! omission). A concurrency cap bounds the requests in flight; a request held back by it is
//! sent late, and its latency still counts from its due time.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use common::CancellationToken;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::{sync::Semaphore, task::JoinSet, time::Instant};

use crate::{Error, results::RequestRecord, results::round3};

/// The header the balancer names the chosen worker in.
pub const BACKEND_HEADER: &str = "x-backend";

/// The header the worker reports a job's run time in (`job;dur=<ms>`), queueing excluded.
pub const SERVER_TIMING_HEADER: &str = "server-timing";

/// Largest body the engine pads to.
const MAX_BODY_BYTES: u64 = 16 << 20;

/// How long requests in flight may finish after SIGINT/SIGTERM.
const INTERRUPT_GRACE: Duration = Duration::from_secs(5);

/// One request to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: u64,
    /// When to send it, from the start of the run.
    pub due: Duration,
    pub path: String,
    pub intensity: u32,
    pub size_bytes: u64,
    /// A `POST /submit` job: the POST body is that job ([`Submit::body`]) instead of
    /// `{"intensity":n}`.
    pub submit: Option<Submit>,
}

/// A job of the worker's `POST /submit`, sent as `{"operation":…,"data":{…}}`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Submit {
    /// `monte_carlo_pi` of `iterations`: CPU-bound, its run time proportional to its size.
    MonteCarloPi { iterations: u64 },
    /// `sleep` of `seconds`: holds a worker thread for exactly that long, at no CPU cost.
    Sleep { seconds: f64 },
}

impl Submit {
    /// The `POST /submit` body of this job, padded like [`body`].
    pub fn body(self, size: u64) -> Vec<u8> {
        let (operation, data) = match self {
            Self::MonteCarloPi { iterations } => {
                ("monte_carlo_pi", format!("\"iterations\":{iterations}"))
            }
            Self::Sleep { seconds } => ("sleep", format!("\"seconds\":{seconds}")),
        };
        padded(
            &format!("\"operation\":\"{operation}\",\"data\":{{{data}}}"),
            size,
        )
    }
}

/// How to send.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Base URL, e.g. `http://127.0.0.1:8000`.
    pub target: String,
    /// Most requests in flight at once.
    pub concurrency: usize,
    /// Per request, from send to the end of the body.
    pub timeout: Duration,
    /// Ignore due times: keep `concurrency` requests in flight (to measure capacity).
    pub closed_loop: bool,
    /// Stop sending new requests after this long.
    pub duration_limit: Option<Duration>,
    /// Draw a progress bar on stderr (only when it is a terminal).
    pub progress: bool,
    /// Number of requests, for the progress bar.
    pub expected: Option<u64>,
    /// GET sends no body; POST sends `body`, or when it is `None` the request's
    /// `/submit` job, else `{"intensity": n}`.
    pub method: Method,
    /// A fixed JSON body for every POST (e.g. a `/submit` job).
    pub body: Option<Vec<u8>>,
}

/// The HTTP method of every request of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Method {
    /// Idempotent: a balancer may retry it on another worker.
    Get,
    #[default]
    Post,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// One per request sent, in due order.
    pub records: Vec<RequestRecord>,
    pub started_unix_ms: u64,
    /// Stopped early by SIGINT/SIGTERM.
    pub interrupted: bool,
}

/// A pooled HTTP client for the run (no proxy, keep-alive, no Nagle).
pub fn client(concurrency: usize) -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(concurrency.max(1))
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|err| Error::Invalid(format!("cannot build the HTTP client: {err}")))
}

/// The JSON body for `intensity`, padded with a `pad` field to `size` bytes when that is
/// larger than the bare body.
pub fn body(intensity: u32, size: u64) -> Vec<u8> {
    padded(&format!("\"intensity\":{intensity}"), size)
}

/// `{fields}`, with a `pad` field making it `size` bytes when that is larger.
fn padded(fields: &str, size: u64) -> Vec<u8> {
    let bare = format!("{{{fields}}}");
    let overhead = bare.len() + ",\"pad\":\"\"".len();
    let size = size.min(MAX_BODY_BYTES) as usize;
    if size <= overhead {
        return bare.into_bytes();
    }
    format!("{{{fields},\"pad\":\"{}\"}}", "x".repeat(size - overhead)).into_bytes()
}

/// Sends `requests` (in due order) to `options.target` and records each one.
pub async fn execute(
    requests: impl IntoIterator<Item = Request>,
    options: &EngineOptions,
    client: &reqwest::Client,
    shutdown: &CancellationToken,
) -> Result<Outcome, Error> {
    if options.concurrency == 0 {
        return Err(Error::Invalid("--concurrency must be at least 1".into()));
    }
    if options.closed_loop && options.duration_limit.is_none() && options.expected.is_none() {
        return Err(Error::Invalid(
            "a closed loop needs a duration or a finite trace".into(),
        ));
    }
    let target = options.target.trim_end_matches('/').to_owned();
    let bar = progress_bar(options);
    let errors = Arc::new(AtomicU64::new(0));
    let semaphore = Arc::new(Semaphore::new(options.concurrency));
    let mut tasks: JoinSet<RequestRecord> = JoinSet::new();
    let mut records = Vec::new();
    let mut interrupted = false;
    let started_unix_ms = crate::now_unix_ms();
    let start = Instant::now();

    for request in requests {
        if !options.closed_loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => { interrupted = true; break; }
                () = tokio::time::sleep_until(start + request.due) => {}
            }
        }
        let permit = tokio::select! {
            biased;
            () = shutdown.cancelled() => { interrupted = true; break; }
            permit = semaphore.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // never closed
            },
        };
        let due = if options.closed_loop {
            start.elapsed()
        } else {
            request.due
        };
        if options
            .duration_limit
            .is_some_and(|limit| start.elapsed() >= limit)
        {
            break;
        }
        let exchange = Exchange {
            client: client.clone(),
            url: format!("{target}{}", request.path),
            method: options.method,
            body: match (&options.body, options.method) {
                (_, Method::Get) => Vec::new(),
                (Some(fixed), Method::Post) => fixed.clone(),
                (None, Method::Post) => match request.submit {
                    Some(job) => job.body(request.size_bytes),
                    None => body(request.intensity, request.size_bytes),
                },
            },
            timeout: options.timeout,
        };
        let bar = bar.clone();
        let errors = errors.clone();
        tasks.spawn(async move {
            let due_at = start + due;
            let sent = Instant::now();
            let lateness = sent.saturating_duration_since(due_at);
            let answer = exchange.send().await;
            let latency = Instant::now().saturating_duration_since(due_at);
            drop(permit);
            let record = RequestRecord {
                id: request.id,
                path: request.path,
                intensity: request.intensity,
                due_s: (due.as_secs_f64() * 1e6).round() / 1e6,
                unix_ms: started_unix_ms + due.as_millis() as u64,
                lateness_ms: round3(lateness.as_secs_f64() * 1e3),
                latency_ms: round3(latency.as_secs_f64() * 1e3),
                status: answer.status,
                backend: answer.backend,
                error: answer.error,
                service_ms: answer.service_ms.map(round3),
            };
            if !record.ok() {
                let count = errors.fetch_add(1, Ordering::Relaxed) + 1;
                bar.set_message(format!("{count} errors"));
            }
            bar.inc(1);
            record
        });
        while let Some(done) = tasks.try_join_next() {
            collect(done, &mut records);
        }
    }
    // Let what is in flight finish; once interrupted, for at most INTERRUPT_GRACE.
    let drain = async {
        while let Some(done) = tasks.join_next().await {
            collect(done, &mut records);
        }
    };
    if interrupted {
        if tokio::time::timeout(INTERRUPT_GRACE, drain).await.is_err() {
            tracing::warn!(
                abandoned = tasks.len(),
                "requests still in flight after the interrupt are not recorded"
            );
            tasks.abort_all();
        }
    } else {
        drain.await;
    }
    bar.finish_and_clear();
    records.sort_by(|a, b| a.due_s.total_cmp(&b.due_s).then(a.id.cmp(&b.id)));
    Ok(Outcome {
        records,
        started_unix_ms,
        interrupted,
    })
}

fn collect(done: Result<RequestRecord, tokio::task::JoinError>, records: &mut Vec<RequestRecord>) {
    match done {
        Ok(record) => records.push(record),
        Err(err) => tracing::error!(cause = %err, "a request task failed"),
    }
}

fn progress_bar(options: &EngineOptions) -> ProgressBar {
    if !options.progress {
        return ProgressBar::hidden();
    }
    let bar = match options.expected {
        Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    let template = if options.expected.is_some() {
        "{elapsed_precise} [{bar:40}] {pos}/{len} {per_sec} {msg}"
    } else {
        "{elapsed_precise} {spinner} {pos} requests {per_sec} {msg}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// One HTTP exchange.
struct Exchange {
    client: reqwest::Client,
    url: String,
    method: Method,
    body: Vec<u8>,
    timeout: Duration,
}

/// What came back.
struct Answer {
    status: u16,
    backend: String,
    error: String,
    /// The job's run time on the worker: `Server-Timing`'s `job` (else first) `dur`, else
    /// the JSON `time_taken_ms`.
    service_ms: Option<f64>,
}

impl Exchange {
    async fn send(self) -> Answer {
        let timeout = self.timeout;
        let exchange = async {
            let request = match self.method {
                Method::Get => self.client.get(&self.url),
                Method::Post => self
                    .client
                    .post(&self.url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(self.body),
            };
            let response = request.send().await?;
            let status = response.status();
            let header = response
                .headers()
                .get(BACKEND_HEADER)
                .and_then(|value| value.to_str().ok())
                .filter(|value| !value.is_empty())
                .map(str::to_owned);
            let timing = response
                .headers()
                .get(SERVER_TIMING_HEADER)
                .and_then(|value| value.to_str().ok())
                .and_then(server_timing_ms);
            let bytes = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, header, timing, bytes))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => Answer {
                status: 0,
                backend: String::new(),
                error: format!("timed out after {timeout:?}"),
                service_ms: None,
            },
            Ok(Err(err)) => Answer {
                status: err.status().map_or(0, |s| s.as_u16()),
                backend: String::new(),
                error: describe(&err),
                service_ms: None,
            },
            Ok(Ok((status, header, timing, bytes))) => {
                let json = serde_json::from_slice::<serde_json::Value>(&bytes).ok();
                let backend = header
                    .or_else(|| {
                        json.as_ref()
                            .and_then(|v| v.get("worker_id"))
                            .and_then(|v| v.as_str())
                            .map(str::to_owned)
                    })
                    .unwrap_or_default();
                let error = if status.is_success() {
                    String::new()
                } else {
                    let detail = json
                        .as_ref()
                        .and_then(|v| v.get("error"))
                        .and_then(|v| v.as_str())
                        .map_or_else(
                            || String::from_utf8_lossy(&bytes).into_owned(),
                            str::to_owned,
                        );
                    truncate(format!("status {}: {}", status.as_u16(), detail.trim()))
                };
                let service_ms = timing.or_else(|| {
                    json.as_ref()
                        .and_then(|v| v.get("time_taken_ms"))
                        .and_then(serde_json::Value::as_f64)
                        .filter(|ms| ms.is_finite() && *ms >= 0.0)
                });
                Answer {
                    status: status.as_u16(),
                    backend,
                    error,
                    service_ms: service_ms.filter(|_| status.is_success()),
                }
            }
        }
    }
}

/// The milliseconds of a `Server-Timing` value (`job;dur=12.5`, `db;dur=3, job;dur=12.5`):
/// the `job` metric's `dur`, else the first metric's that has one.
pub fn server_timing_ms(value: &str) -> Option<f64> {
    let mut first = None;
    for metric in value.split(',') {
        let mut parts = metric.split(';').map(str::trim);
        let name = parts.next().unwrap_or_default();
        let dur = parts
            .filter_map(|param| param.split_once('='))
            .find(|(key, _)| key.trim().eq_ignore_ascii_case("dur"))
            .and_then(|(_, ms)| ms.trim().trim_matches('"').parse::<f64>().ok())
            .filter(|ms| ms.is_finite() && *ms >= 0.0);
        match dur {
            Some(ms) if name.eq_ignore_ascii_case("job") => return Some(ms),
            Some(ms) => first = first.or(Some(ms)),
            None => {}
        }
    }
    first
}

/// An error with its causes, on one line.
pub(crate) fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    truncate(text)
}

fn truncate(mut text: String) -> String {
    const MAX: usize = 200;
    if text.len() > MAX {
        let mut cut = MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests;
