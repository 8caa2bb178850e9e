//! Turning request bodies and paths into jobs, with an error that names the offending field.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::{
    config::Config,
    jobs::{self, CancelFlag, Cancelled},
};

/// The operations `POST /submit` accepts.
pub const OPERATIONS: [&str; 3] = ["monte_carlo_pi", "primes", "sleep"];

/// A validated job, ready for the pool.
#[derive(Debug, Clone, PartialEq)]
pub enum Job {
    MonteCarloPi {
        iterations: u64,
    },
    Primes {
        limit: u64,
    },
    Sleep {
        duration: Duration,
    },
    /// Integer mixing: /work, /heavy, /light and /consume_cpu.
    Spin {
        iterations: u64,
    },
    /// Allocate, touch, hold, free: /consume_memory.
    Memory {
        bytes: u64,
        hold: Duration,
    },
}

impl Job {
    /// The name used in answers and metric labels.
    pub fn operation(&self) -> &'static str {
        match self {
            Self::MonteCarloPi { .. } => "monte_carlo_pi",
            Self::Primes { .. } => "primes",
            Self::Sleep { .. } => "sleep",
            Self::Spin { .. } => "cpu",
            Self::Memory { .. } => "memory",
        }
    }

    /// Its size in the job's own unit (iterations, a limit, milliseconds, bytes), for logs.
    pub fn size(&self) -> u64 {
        match self {
            Self::MonteCarloPi { iterations } | Self::Spin { iterations } => *iterations,
            Self::Primes { limit } => *limit,
            Self::Sleep { duration } => duration.as_millis() as u64,
            Self::Memory { bytes, .. } => *bytes,
        }
    }

    /// Runs the job on the current thread; its result as JSON.
    pub fn run(self, cancel: &CancelFlag) -> Result<Value, Cancelled> {
        Ok(match self {
            Self::MonteCarloPi { iterations } => jobs::monte_carlo_pi(iterations, cancel)?.into(),
            Self::Primes { limit } => jobs::count_primes_below(limit, cancel)?.into(),
            Self::Sleep { duration } => jobs::sleep(duration, cancel)?.into(),
            Self::Spin { iterations } => jobs::spin(iterations, cancel)?.into(),
            Self::Memory { bytes, hold } => jobs::consume_memory(bytes, hold, cancel)?.into(),
        })
    }
}

/// How much CPU work an intensity endpoint asks for, relative to one unit per intensity step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weight {
    /// /work and /consume_cpu: one unit per step.
    Normal,
    /// /heavy: ten units per step.
    Heavy,
    /// /light: a tenth of a unit per step.
    Light,
}

impl Weight {
    pub fn iterations(self, intensity: u32, unit: u64) -> u64 {
        let base = u64::from(intensity).saturating_mul(unit);
        match self {
            Self::Normal => base,
            Self::Heavy => base.saturating_mul(10),
            Self::Light => (base / 10).max(1),
        }
    }
}

/// Parses the body of `POST /submit`: `{"operation": "...", "data": {...}}`.
pub fn parse_submit(body: &[u8], config: &Config) -> Result<Job, String> {
    let root = parse_object(body)?;
    let operation = match root.get("operation") {
        Some(Value::String(op)) => op.as_str(),
        Some(_) => {
            return Err(format!(
                "`operation` must be a string; valid operations: {}",
                valid()
            ));
        }
        None => {
            return Err(format!(
                "missing field `operation`; valid operations: {}",
                valid()
            ));
        }
    };
    if !OPERATIONS.contains(&operation) {
        return Err(format!(
            "unknown operation `{operation}`; valid operations: {}",
            valid()
        ));
    }
    let empty = Map::new();
    let data = match root.get("data") {
        Some(Value::Object(data)) => data,
        None | Some(Value::Null) => &empty,
        Some(_) => return Err("`data` must be an object, e.g. {\"iterations\": 1000000}".into()),
    };
    match operation {
        "monte_carlo_pi" => Ok(Job::MonteCarloPi {
            iterations: integer_field(
                data,
                "data.iterations",
                "iterations",
                1,
                config.max_iterations,
            )?,
        }),
        "primes" => Ok(Job::Primes {
            limit: integer_field(data, "data.limit", "limit", 0, config.max_prime_limit)?,
        }),
        _ => {
            let max = config.max_sleep.as_secs_f64();
            let seconds = match data.get("seconds") {
                Some(Value::Number(n)) => n.as_f64().filter(|s| *s >= 0.0 && *s <= max),
                None => {
                    return Err(format!(
                        "missing field `data.seconds` (a number from 0 to {max})"
                    ));
                }
                Some(_) => None,
            };
            let seconds = seconds
                .ok_or_else(|| format!("`data.seconds` must be a number from 0 to {max}"))?;
            Ok(Job::Sleep {
                duration: Duration::from_secs_f64(seconds),
            })
        }
    }
}

/// Parses `{"intensity": n}` (seed 000's body); an empty body or a missing field means 1.
pub fn parse_intensity_body(body: &[u8], max: u32) -> Result<u32, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(1);
    }
    let root = parse_object(body)?;
    if !root.contains_key("intensity") {
        return Ok(1);
    }
    integer_field(&root, "intensity", "intensity", 1, u64::from(max)).map(|n| n as u32)
}

/// Parses the `{intensity}` path segment of /consume_cpu and /consume_memory.
pub fn parse_intensity_path(segment: &str, max: u32) -> Result<u32, String> {
    segment
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| format!("intensity must be an integer from 1 to {max}, got `{segment}`"))
}

/// An `X-Request-Id` value as the balancer sends it (`common::request_id`'s rule). Anything
/// else is `None` and never logged.
pub fn request_id(value: &[u8]) -> Option<&str> {
    common::request_id::parse(value)
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("the body must be a JSON object".into()),
        Err(err) => Err(format!("malformed JSON: {err}")),
    }
}

/// An integer in `min..=max`; integral floats such as `1e6` are accepted.
fn integer_field(
    map: &Map<String, Value>,
    shown: &str,
    key: &str,
    min: u64,
    max: u64,
) -> Result<u64, String> {
    let value = map
        .get(key)
        .ok_or_else(|| format!("missing field `{shown}` (an integer from {min} to {max})"))?;
    let number = match value {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64)
                .map(|f| f as u64)
        }),
        _ => None,
    };
    number
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("`{shown}` must be an integer from {min} to {max}, got {value}"))
}

fn valid() -> String {
    OPERATIONS.join(", ")
}

#[cfg(test)]
mod tests;
