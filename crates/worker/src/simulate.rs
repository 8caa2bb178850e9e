//! The queue simulator of seed 004, behind `POST /simulate`: a discrete-event simulation of
//! one server with a FIFO queue. Pure: the rows and parameters in, per-request times and a
//! summary out; no clock, no I/O.
//!
//! Each row arrives at `arrival_s`, reaches the server `delay` seconds later, waits until the
//! server is free, is served for its own `service_s` (or `st` when the row has none), and
//! leaves. So for every request `wait = start - (arrival + delay)` and
//! `response = departure - arrival = delay + wait + service`.

use serde::Serialize;
use serde_json::{Map, Value};

/// The most rows one request may hold (past it: `413`). The body limit
/// (`WORKER_MAX_BODY_BYTES`) applies first.
pub const MAX_ROWS: usize = 100_000;

/// One request of the trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Arrival {
    pub id: u64,
    /// Seconds from the start of the trace.
    pub arrival_s: f64,
    /// Service demand in seconds; `None` takes the simulation's `st`.
    pub service_s: Option<f64>,
}

/// The simulation's parameters (seed 004's `ST` and `DELAY`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Params {
    /// Service time of rows without their own `service_s`.
    pub st: Option<f64>,
    /// Seconds between a request's arrival and its entry into the queue.
    pub delay: f64,
}

/// What happened to one request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    pub id: u64,
    pub arrival_s: f64,
    /// When the server started on it.
    pub start_s: f64,
    /// Time in the queue.
    pub wait_s: f64,
    pub service_s: f64,
    pub departure_s: f64,
    /// `departure_s - arrival_s`.
    pub response_s: f64,
}

/// Aggregates over every request. Percentiles are nearest-rank (an observed value).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub requests: usize,
    pub mean_wait_s: f64,
    pub p50_wait_s: f64,
    pub p99_wait_s: f64,
    pub max_wait_s: f64,
    pub mean_response_s: f64,
    pub p50_response_s: f64,
    pub p99_response_s: f64,
    /// Time the server was busy.
    pub busy_s: f64,
    /// From the first request entering the queue to the last departure.
    pub span_s: f64,
    /// `busy_s / span_s` (0 when nothing was served).
    pub utilisation: f64,
}

/// The result of one simulation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Simulation {
    pub summary: Summary,
    pub results: Vec<Outcome>,
}

/// Why a simulation request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimulateError {
    /// More rows than allowed (`413`).
    TooManyRows { rows: usize, max: usize },
    /// A malformed body or row (`400`); the message names the row index and field.
    Invalid(String),
}

impl std::fmt::Display for SimulateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooManyRows { rows, max } => {
                write!(
                    f,
                    "{rows} rows is more than the {max} one simulation accepts"
                )
            }
            Self::Invalid(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for SimulateError {}

/// Parses `{"st": 0.5, "delay": 0, "rows": [{"id": 0, "arrival_s": 0.0, "service_s": 0.4}, ...]}`.
/// `st`, `delay`, `id` and `service_s` are optional; rows must be in arrival order.
pub fn parse_request(
    body: &[u8],
    max_rows: usize,
) -> Result<(Vec<Arrival>, Params), SimulateError> {
    let invalid = SimulateError::Invalid;
    let root = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(invalid("the body must be a JSON object".into())),
        Err(err) => return Err(invalid(format!("malformed JSON: {err}"))),
    };
    let st = optional_seconds(&root, "st", "`st`")?;
    let delay = optional_seconds(&root, "delay", "`delay`")?.unwrap_or(0.0);
    let rows = match root.get("rows") {
        Some(Value::Array(rows)) => rows,
        Some(_) => return Err(invalid("`rows` must be an array of objects".into())),
        None => {
            return Err(invalid(
                "missing field `rows` (an array of {\"arrival_s\": ..., \"service_s\": ...})"
                    .into(),
            ));
        }
    };
    if rows.len() > max_rows {
        return Err(SimulateError::TooManyRows {
            rows: rows.len(),
            max: max_rows,
        });
    }
    let mut arrivals = Vec::with_capacity(rows.len());
    let mut previous = 0.0_f64;
    for (index, row) in rows.iter().enumerate() {
        let Value::Object(row) = row else {
            return Err(invalid(format!("rows[{index}] must be an object")));
        };
        let id = match row.get("id") {
            None | Some(Value::Null) => index as u64,
            Some(value) => value.as_u64().ok_or_else(|| {
                invalid(format!(
                    "rows[{index}].id must be a non-negative integer, got {value}"
                ))
            })?,
        };
        let arrival_s = optional_seconds(row, "arrival_s", &format!("rows[{index}].arrival_s"))?
            .ok_or_else(|| invalid(format!("rows[{index}] has no `arrival_s`")))?;
        if arrival_s < previous {
            return Err(invalid(format!(
                "rows[{index}].arrival_s {arrival_s} is earlier than the previous row's {previous}; rows must be in arrival order"
            )));
        }
        previous = arrival_s;
        let service_s = optional_seconds(row, "service_s", &format!("rows[{index}].service_s"))?;
        if service_s.is_none() && st.is_none() {
            return Err(invalid(format!(
                "rows[{index}] has no `service_s` and the body has no `st`"
            )));
        }
        arrivals.push(Arrival {
            id,
            arrival_s,
            service_s,
        });
    }
    Ok((arrivals, Params { st, delay }))
}

/// A non-negative, finite number of seconds, or `None` when absent or null.
fn optional_seconds(
    map: &Map<String, Value>,
    key: &str,
    shown: &str,
) -> Result<Option<f64>, SimulateError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_f64()
            .filter(|n| n.is_finite() && *n >= 0.0)
            .map(Some)
            .ok_or_else(|| {
                SimulateError::Invalid(format!(
                    "{shown} must be a non-negative number of seconds, got {value}"
                ))
            }),
    }
}

/// Runs the single-server FIFO queue over `rows` (in arrival order).
pub fn simulate(rows: &[Arrival], params: &Params) -> Simulation {
    let mut results = Vec::with_capacity(rows.len());
    let mut free_at = f64::NEG_INFINITY;
    let mut busy_s = 0.0;
    for row in rows {
        let enters = row.arrival_s + params.delay;
        let start_s = enters.max(free_at);
        let service_s = row.service_s.or(params.st).unwrap_or(0.0);
        let departure_s = start_s + service_s;
        free_at = departure_s;
        busy_s += service_s;
        results.push(Outcome {
            id: row.id,
            arrival_s: row.arrival_s,
            start_s,
            wait_s: start_s - enters,
            service_s,
            departure_s,
            response_s: departure_s - row.arrival_s,
        });
    }
    let span_s = match (rows.first(), results.last()) {
        (Some(first), Some(last)) => last.departure_s - (first.arrival_s + params.delay),
        _ => 0.0,
    };
    let mut waits: Vec<f64> = results.iter().map(|r| r.wait_s).collect();
    let mut responses: Vec<f64> = results.iter().map(|r| r.response_s).collect();
    waits.sort_by(f64::total_cmp);
    responses.sort_by(f64::total_cmp);
    let summary = Summary {
        requests: results.len(),
        mean_wait_s: mean(&waits),
        p50_wait_s: percentile(&waits, 50.0),
        p99_wait_s: percentile(&waits, 99.0),
        max_wait_s: waits.last().copied().unwrap_or(0.0),
        mean_response_s: mean(&responses),
        p50_response_s: percentile(&responses, 50.0),
        p99_response_s: percentile(&responses, 99.0),
        busy_s,
        span_s,
        utilisation: if span_s > 0.0 { busy_s / span_s } else { 0.0 },
    };
    Simulation { summary, results }
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// Nearest-rank percentile of sorted `values`: the value at rank `ceil(p/100 * n)`; 0 when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests;
