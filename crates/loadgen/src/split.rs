//! Seed 004's middleware: split a trace across workers, have each one run the queue
//! simulator (`POST /simulate`) on its share, and collect the answers into one report.

use std::{fmt, path::Path};

use futures_util::future::join_all;
use serde::{Deserialize, Serialize};

use crate::{Error, stats::percentile, trace::TraceRow};

/// How rows are dealt to workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Assign {
    /// Row i goes to worker i mod n.
    #[default]
    RoundRobin,
    /// The trace is cut into n contiguous blocks of (nearly) equal length.
    Blocks,
}

/// The simulation parameters and how to split.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitOptions {
    /// Worker base URLs.
    pub workers: Vec<String>,
    /// Service time of rows without `service_s` (seed 004's `ST`).
    pub st: Option<f64>,
    /// Seed 004's `DELAY`: seconds between arrival and entry into the queue.
    pub delay: f64,
    pub assign: Assign,
    /// Ignore the trace's `service_s`, so every request takes `st` (an M/D/1-style run).
    pub constant_service: bool,
}

/// One simulated request, as the worker answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimOutcome {
    pub id: u64,
    pub arrival_s: f64,
    pub start_s: f64,
    pub wait_s: f64,
    pub service_s: f64,
    pub departure_s: f64,
    pub response_s: f64,
}

/// A worker's summary, as it answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimSummary {
    pub requests: usize,
    pub mean_wait_s: f64,
    pub p50_wait_s: f64,
    pub p99_wait_s: f64,
    pub max_wait_s: f64,
    pub mean_response_s: f64,
    pub p50_response_s: f64,
    pub p99_response_s: f64,
    pub busy_s: f64,
    pub span_s: f64,
    pub utilisation: f64,
}

/// The answer of `POST /simulate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimAnswer {
    pub worker_id: String,
    pub summary: SimSummary,
    pub results: Vec<SimOutcome>,
}

/// One worker's part of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerReport {
    pub url: String,
    pub worker_id: String,
    pub summary: SimSummary,
    pub results: Vec<SimOutcome>,
}

/// Over every request of every worker.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Overall {
    pub requests: usize,
    pub mean_wait_s: f64,
    pub p50_wait_s: f64,
    pub p99_wait_s: f64,
    pub max_wait_s: f64,
    pub mean_response_s: f64,
    pub p99_response_s: f64,
}

/// The collected report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitReport {
    pub st: Option<f64>,
    pub delay: f64,
    pub workers: Vec<WorkerReport>,
    pub overall: Overall,
}

/// `rows` dealt to `n` workers.
pub fn assign(rows: &[TraceRow], n: usize, how: Assign) -> Vec<Vec<&TraceRow>> {
    let mut shares: Vec<Vec<&TraceRow>> = vec![Vec::new(); n];
    if n == 0 {
        return shares;
    }
    match how {
        Assign::RoundRobin => {
            for (i, row) in rows.iter().enumerate() {
                shares[i % n].push(row);
            }
        }
        Assign::Blocks => {
            let per = rows.len().div_ceil(n).max(1);
            for (i, row) in rows.iter().enumerate() {
                shares[(i / per).min(n - 1)].push(row);
            }
        }
    }
    shares
}

/// The `POST /simulate` body of one share.
pub fn request_body(share: &[&TraceRow], options: &SplitOptions) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = share
        .iter()
        .map(|row| {
            let mut object = serde_json::json!({ "id": row.id, "arrival_s": row.arrival_s });
            if let (false, Some(service)) = (options.constant_service, row.service_s) {
                object["service_s"] = service.into();
            }
            object
        })
        .collect();
    serde_json::json!({ "st": options.st, "delay": options.delay, "rows": rows })
}

/// Splits `rows` across the workers, simulates each share remotely and collects the report.
pub async fn run(
    rows: &[TraceRow],
    options: &SplitOptions,
    client: &reqwest::Client,
) -> Result<SplitReport, Error> {
    if options.workers.is_empty() {
        return Err(Error::Invalid("--workers names no worker".into()));
    }
    if options.st.is_none() {
        if options.constant_service {
            return Err(Error::Invalid("--constant-service needs --st".into()));
        }
        if let Some(row) = rows.iter().find(|row| row.service_s.is_none()) {
            return Err(Error::Invalid(format!(
                "trace row {} has no service_s; pass --st for rows without one",
                row.id
            )));
        }
    }
    let shares = assign(rows, options.workers.len(), options.assign);
    let calls = options.workers.iter().zip(&shares).map(|(worker, share)| {
        let url = format!("{}/simulate", worker.trim_end_matches('/'));
        let body = request_body(share, options);
        async move {
            let response = client
                .post(&url)
                .json(&body)
                .send()
                .await
                .map_err(|err| Error::http(&url, crate::engine::describe(&err)))?;
            let status = response.status();
            let text = response
                .text()
                .await
                .map_err(|err| Error::http(&url, crate::engine::describe(&err)))?;
            if !status.is_success() {
                let detail = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                    .unwrap_or(text);
                return Err(Error::http(&url, format!("{status}: {detail}")));
            }
            let answer: SimAnswer = serde_json::from_str(&text)
                .map_err(|err| Error::http(&url, format!("not a simulation answer: {err}")))?;
            Ok(WorkerReport {
                url: worker.clone(),
                worker_id: answer.worker_id,
                summary: answer.summary,
                results: answer.results,
            })
        }
    });
    let workers = join_all(calls)
        .await
        .into_iter()
        .collect::<Result<Vec<_>, Error>>()?;
    let overall = overall(&workers);
    Ok(SplitReport {
        st: options.st,
        delay: options.delay,
        workers,
        overall,
    })
}

fn overall(workers: &[WorkerReport]) -> Overall {
    let mut waits: Vec<f64> = Vec::new();
    let mut responses: Vec<f64> = Vec::new();
    for outcome in workers.iter().flat_map(|w| &w.results) {
        waits.push(outcome.wait_s);
        responses.push(outcome.response_s);
    }
    waits.sort_by(f64::total_cmp);
    responses.sort_by(f64::total_cmp);
    let mean = |v: &[f64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    Overall {
        requests: waits.len(),
        mean_wait_s: mean(&waits),
        p50_wait_s: percentile(&waits, 50.0),
        p99_wait_s: percentile(&waits, 99.0),
        max_wait_s: waits.last().copied().unwrap_or(0.0),
        mean_response_s: mean(&responses),
        p99_response_s: percentile(&responses, 99.0),
    }
}

impl SplitReport {
    /// Every simulated request as CSV: `worker,id,arrival_s,start_s,wait_s,service_s,departure_s,response_s`.
    pub fn write_csv(&self, path: &Path) -> Result<(), Error> {
        let io = |err: csv::Error| Error::io(path, std::io::Error::other(err));
        let mut csv = csv::Writer::from_path(path).map_err(io)?;
        csv.write_record([
            "worker",
            "id",
            "arrival_s",
            "start_s",
            "wait_s",
            "service_s",
            "departure_s",
            "response_s",
        ])
        .map_err(io)?;
        for worker in &self.workers {
            for r in &worker.results {
                csv.write_record([
                    worker.worker_id.clone(),
                    r.id.to_string(),
                    format!("{:.6}", r.arrival_s),
                    format!("{:.6}", r.start_s),
                    format!("{:.6}", r.wait_s),
                    format!("{:.6}", r.service_s),
                    format!("{:.6}", r.departure_s),
                    format!("{:.6}", r.response_s),
                ])
                .map_err(io)?;
            }
        }
        csv.flush().map_err(|err| Error::io(path, err))
    }
}

impl fmt::Display for SplitReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self
            .st
            .map_or_else(|| "per row".to_owned(), |st| format!("{st} s"));
        writeln!(
            f,
            "queue simulation on {} workers, ST {st}, DELAY {} s",
            self.workers.len(),
            self.delay
        )?;
        let width = self
            .workers
            .iter()
            .map(|w| w.worker_id.len())
            .chain([6])
            .max()
            .unwrap_or(6);
        writeln!(
            f,
            "{:<width$}  {:>8}  {:>11}  {:>10}  {:>10}  {:>10}  {:>11}  {:>11}",
            "worker",
            "requests",
            "mean wait s",
            "p50 wait s",
            "p99 wait s",
            "max wait s",
            "mean resp s",
            "utilisation"
        )?;
        for w in &self.workers {
            let s = &w.summary;
            writeln!(
                f,
                "{:<width$}  {:>8}  {:>11.4}  {:>10.4}  {:>10.4}  {:>10.4}  {:>11.4}  {:>10.1}%",
                w.worker_id,
                s.requests,
                s.mean_wait_s,
                s.p50_wait_s,
                s.p99_wait_s,
                s.max_wait_s,
                s.mean_response_s,
                s.utilisation * 100.0
            )?;
        }
        let o = &self.overall;
        writeln!(
            f,
            "{:<width$}  {:>8}  {:>11.4}  {:>10.4}  {:>10.4}  {:>10.4}  {:>11.4}",
            "all",
            o.requests,
            o.mean_wait_s,
            o.p50_wait_s,
            o.p99_wait_s,
            o.max_wait_s,
            o.mean_response_s
        )
    }
}

#[cfg(test)]
mod tests;
