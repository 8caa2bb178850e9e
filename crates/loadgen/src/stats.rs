//! Summaries of results: per worker (seed 004's per-worker results) and overall, and the
//! comparison table of several runs. Percentiles are nearest-rank (always an observed value);
//! latency percentiles cover successful requests, failures are counted as errors. When the
//! answers report the job's own run time (`service_ms`), the slowdown too: each request's
//! response time over its run time.

use std::{collections::BTreeMap, fmt};

use serde::Serialize;

use crate::results::RequestRecord;

/// The key of requests whose worker is unknown (no answer, or no `X-Backend`/`worker_id`).
pub const UNKNOWN_BACKEND: &str = "(unknown)";

/// Nearest-rank percentile of sorted `values`: the value at rank `ceil(p/100 * n)`; 0 when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Latency figures of a group of requests, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyStats {
    pub requests: usize,
    pub errors: usize,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl LatencyStats {
    pub fn of<'a>(records: impl IntoIterator<Item = &'a RequestRecord>) -> Self {
        let mut requests = 0;
        let mut latencies = Vec::new();
        for record in records {
            requests += 1;
            if record.ok() {
                latencies.push(record.latency_ms);
            }
        }
        latencies.sort_by(f64::total_cmp);
        let mean_ms = if latencies.is_empty() {
            0.0
        } else {
            latencies.iter().sum::<f64>() / latencies.len() as f64
        };
        Self {
            requests,
            errors: requests - latencies.len(),
            mean_ms,
            p50_ms: percentile(&latencies, 50.0),
            p90_ms: percentile(&latencies, 90.0),
            p99_ms: percentile(&latencies, 99.0),
            max_ms: latencies.last().copied().unwrap_or(0.0),
        }
    }

    /// Whether any request succeeded (so the latency figures mean something).
    pub fn has_latencies(&self) -> bool {
        self.requests > self.errors
    }
}

/// Slowdowns (response time / the job's own run time on the worker) of the successful
/// requests whose answer reported a run time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlowdownStats {
    /// Requests with a run time.
    pub requests: usize,
    /// Their mean run time, ms: the "mean job length" that response times can be given in.
    pub service_mean_ms: f64,
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
}

impl SlowdownStats {
    /// `None` when no request has a run time.
    pub fn of<'a>(records: impl IntoIterator<Item = &'a RequestRecord>) -> Option<Self> {
        let mut service_total = 0.0;
        let mut slowdowns = Vec::new();
        for record in records {
            if let (Some(slowdown), Some(service)) = (record.slowdown(), record.service_ms) {
                service_total += service;
                slowdowns.push(slowdown);
            }
        }
        if slowdowns.is_empty() {
            return None;
        }
        slowdowns.sort_by(f64::total_cmp);
        let n = slowdowns.len() as f64;
        Some(Self {
            requests: slowdowns.len(),
            service_mean_ms: service_total / n,
            mean: slowdowns.iter().sum::<f64>() / n,
            p50: percentile(&slowdowns, 50.0),
            p99: percentile(&slowdowns, 99.0),
        })
    }
}

/// The summary of one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub requests: usize,
    pub ok: usize,
    pub errors: usize,
    /// From the first due time to the last completed response.
    pub duration_s: f64,
    /// Successful responses per second over `duration_s`.
    pub throughput_rps: f64,
    /// Median and p99 of how late requests were sent.
    pub lateness_p50_ms: f64,
    pub lateness_p99_ms: f64,
    pub overall: LatencyStats,
    /// Per worker, by name.
    pub workers: BTreeMap<String, LatencyStats>,
    /// When the answers reported the jobs' run times.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slowdown: Option<SlowdownStats>,
}

impl Summary {
    pub fn of(records: &[RequestRecord]) -> Self {
        let overall = LatencyStats::of(records);
        let mut groups: BTreeMap<&str, Vec<&RequestRecord>> = BTreeMap::new();
        for record in records {
            let key = if record.backend.is_empty() {
                UNKNOWN_BACKEND
            } else {
                record.backend.as_str()
            };
            groups.entry(key).or_default().push(record);
        }
        let workers = groups
            .into_iter()
            .map(|(key, group)| (key.to_owned(), LatencyStats::of(group)))
            .collect();
        let start = records
            .iter()
            .map(|r| r.due_s)
            .fold(f64::INFINITY, f64::min);
        let end = records
            .iter()
            .map(RequestRecord::done_s)
            .fold(f64::NEG_INFINITY, f64::max);
        let duration_s = if records.is_empty() {
            0.0
        } else {
            (end - start).max(0.0)
        };
        let ok = overall.requests - overall.errors;
        let mut lateness: Vec<f64> = records.iter().map(|r| r.lateness_ms).collect();
        lateness.sort_by(f64::total_cmp);
        Self {
            requests: records.len(),
            ok,
            errors: overall.errors,
            duration_s,
            throughput_rps: if duration_s > 0.0 {
                ok as f64 / duration_s
            } else {
                0.0
            },
            lateness_p50_ms: percentile(&lateness, 50.0),
            lateness_p99_ms: percentile(&lateness, 99.0),
            overall,
            workers,
            slowdown: SlowdownStats::of(records),
        }
    }
}

fn ms(stats: &LatencyStats, value: f64) -> String {
    if stats.has_latencies() {
        format!("{value:.1}")
    } else {
        "-".into()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} requests in {:.2} s: {:.1} ok/s, {} errors; sent late by {:.2} ms median, {:.2} ms p99",
            self.requests,
            self.duration_s,
            self.throughput_rps,
            self.errors,
            self.lateness_p50_ms,
            self.lateness_p99_ms
        )?;
        let width = self
            .workers
            .keys()
            .map(String::len)
            .chain([6])
            .max()
            .unwrap_or(6);
        writeln!(
            f,
            "{:<width$}  {:>8}  {:>6}  {:>9}  {:>9}  {:>9}  {:>9}",
            "worker", "requests", "errors", "p50 ms", "p90 ms", "p99 ms", "max ms"
        )?;
        let rows = self
            .workers
            .iter()
            .map(|(name, stats)| (name.as_str(), stats))
            .chain([("all", &self.overall)]);
        for (name, stats) in rows {
            writeln!(
                f,
                "{:<width$}  {:>8}  {:>6}  {:>9}  {:>9}  {:>9}  {:>9}",
                name,
                stats.requests,
                stats.errors,
                ms(stats, stats.p50_ms),
                ms(stats, stats.p90_ms),
                ms(stats, stats.p99_ms),
                ms(stats, stats.max_ms)
            )?;
        }
        if let Some(slowdown) = &self.slowdown {
            writeln!(
                f,
                "slowdown (response time / the job's run time, {} requests): p50 {:.2}, p99 {:.2}, mean {:.2}; mean run time {:.1} ms",
                slowdown.requests,
                slowdown.p50,
                slowdown.p99,
                slowdown.mean,
                slowdown.service_mean_ms
            )?;
        }
        Ok(())
    }
}

/// One line of a comparison of runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportRow {
    pub label: String,
    pub requests: usize,
    pub errors: usize,
    pub throughput_rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// This run's p99 divided by the baseline's; `None` without a baseline.
    pub p99_vs_baseline: Option<f64>,
    /// Mean run time of the jobs on the workers, ms; `None` (like the slowdowns) when the
    /// answers reported none.
    pub service_mean_ms: Option<f64>,
    pub slowdown_p50: Option<f64>,
    pub slowdown_p99: Option<f64>,
    pub slowdown_mean: Option<f64>,
}

/// A comparison of several runs (the policy benchmark's table).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub baseline: Option<String>,
    pub rows: Vec<ReportRow>,
}

impl Report {
    /// `runs` are (label, records); `baseline` is one of the labels.
    pub fn new(runs: &[(String, Vec<RequestRecord>)], baseline: Option<&str>) -> Self {
        let summaries: Vec<(String, Summary)> = runs
            .iter()
            .map(|(label, records)| (label.clone(), Summary::of(records)))
            .collect();
        let base_p99 = baseline.and_then(|name| {
            summaries
                .iter()
                .find(|(label, _)| label == name)
                .map(|(_, s)| s.overall.p99_ms)
        });
        let rows = summaries
            .into_iter()
            .map(|(label, s)| ReportRow {
                label,
                requests: s.requests,
                errors: s.errors,
                throughput_rps: s.throughput_rps,
                p50_ms: s.overall.p50_ms,
                p90_ms: s.overall.p90_ms,
                p99_ms: s.overall.p99_ms,
                max_ms: s.overall.max_ms,
                p99_vs_baseline: base_p99
                    .filter(|base| *base > 0.0)
                    .map(|base| s.overall.p99_ms / base),
                service_mean_ms: s.slowdown.as_ref().map(|d| d.service_mean_ms),
                slowdown_p50: s.slowdown.as_ref().map(|d| d.p50),
                slowdown_p99: s.slowdown.as_ref().map(|d| d.p99),
                slowdown_mean: s.slowdown.as_ref().map(|d| d.mean),
            })
            .collect();
        Self {
            baseline: baseline.map(str::to_owned),
            rows,
        }
    }

    /// Tab-separated, one header line, for scripts. An unknown value is an empty field.
    pub fn to_tsv(&self) -> String {
        let mut out = String::from(
            "label\trequests\terrors\tthroughput_rps\tp50_ms\tp90_ms\tp99_ms\tmax_ms\tp99_vs_baseline\tservice_mean_ms\tslowdown_p50\tslowdown_p99\tslowdown_mean\n",
        );
        let field = |value: Option<f64>| value.map_or_else(String::new, |v| format!("{v:.3}"));
        for row in &self.rows {
            out.push_str(&format!(
                "{}\t{}\t{}\t{:.2}\t{:.3}\t{:.3}\t{:.3}\t{:.3}\t{}\t{}\t{}\t{}\t{}\n",
                row.label,
                row.requests,
                row.errors,
                row.throughput_rps,
                row.p50_ms,
                row.p90_ms,
                row.p99_ms,
                row.max_ms,
                field(row.p99_vs_baseline),
                field(row.service_mean_ms),
                field(row.slowdown_p50),
                field(row.slowdown_p99),
                field(row.slowdown_mean),
            ));
        }
        out
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .rows
            .iter()
            .map(|r| r.label.len())
            .chain([5])
            .max()
            .unwrap_or(5);
        let relative = match &self.baseline {
            Some(name) => format!("p99 vs {name}"),
            None => "p99 vs base".into(),
        };
        // The slowdown column only when some run reported its jobs' run times.
        let slowdowns = self.rows.iter().any(|row| row.slowdown_mean.is_some());
        write!(
            f,
            "{:<width$}  {:>8}  {:>6}  {:>9}  {:>9}  {:>9}  {:>9}  {:>w2$}",
            "run",
            "requests",
            "errors",
            "ok/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            relative,
            w2 = relative.len().max(6)
        )?;
        if slowdowns {
            write!(f, "  {:>13}", "mean slowdown")?;
        }
        writeln!(f)?;
        for row in &self.rows {
            write!(
                f,
                "{:<width$}  {:>8}  {:>6}  {:>9.1}  {:>9.1}  {:>9.1}  {:>9.1}  {:>w2$}",
                row.label,
                row.requests,
                row.errors,
                row.throughput_rps,
                row.p50_ms,
                row.p99_ms,
                row.max_ms,
                row.p99_vs_baseline
                    .map_or_else(|| "-".into(), |r| format!("{r:.2}x")),
                w2 = relative.len().max(6)
            )?;
            if slowdowns {
                let mean = row
                    .slowdown_mean
                    .map_or_else(|| "-".into(), |m| format!("{m:.2}"));
                write!(f, "  {mean:>13}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
