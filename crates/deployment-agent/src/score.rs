//! Scoring: turning a container's observations into scores from 0 to 100, where 100 means idle
//! and 0 means saturated, then into one overall score and a utilisation category.
//!
//! Everything here is pure: samples and durations come in as values, nothing reads a clock, the
//! environment or the Docker engine.
//!
//! # Resource scores ([`resource_scores`])
//!
//! From two consecutive Docker stats samples `prev` and `cur` (Δ = `cur` − `prev`):
//!
//! - **CPU utilisation** % = (Δ`cpu_total_ns` / Δ`system_cpu_ns`) × `online_cpus` × 100 /
//!   `cpu_limit_cores`, clamped to 0..=100. It is 0 when either delta is 0 or negative (a
//!   counter that went back, e.g. after a restart). A `cpu_limit_cores` that is not a positive
//!   number means "unlimited" and is replaced by `online_cpus`.
//!   **CPU score** = 100 − CPU utilisation.
//! - **Memory utilisation** % = (`memory_usage` − `memory_cache`) / `memory_limit` × 100, clamped
//!   to 0..=100 (the subtraction saturates at 0; a limit of 0 gives 0 %).
//!   **Memory score** = 100 − memory utilisation.
//! - **Network rate** bytes/s = (Δ`net_rx_bytes` + Δ`net_tx_bytes`) / Δt seconds, with
//!   saturating subtractions (a counter that went back counts as 0) and Δt from the samples'
//!   `at`; Δt ≤ 0 gives 0 bytes/s.
//!   **Network score** = 100 × (1 − min(1, rate / `network_saturation`)); a saturation that is
//!   not a positive number disables the signal (score 100).
//!
//! # Availability score ([`Availability`])
//!
//! Seed 003's response-time scorer, with its bugs fixed. State: the last `history_size`
//! response times (seconds), up to `best_time_window` "best times", an EMA (starts at 100)
//! and a dynamic threshold (starts at 1.0 s).
//!
//! Recording a response time `t`:
//! 1. push `t` to the history (dropping the oldest past `history_size`);
//! 2. if there is no best time yet or `t` is below the last best time pushed, push `t` to the
//!    best times (dropping the oldest past `best_time_window`);
//! 3. `avg` = mean(history); `dynamic_threshold` = max(0.5, 0.9 × `dynamic_threshold` +
//!    0.1 × 1.5 × `avg`);
//! 4. `best` = mean(best times); `current` = `t`; `effective` = 0.3 × `current` + 0.7 × `avg`;
//! 5. `ratio` = `effective` / `best` (1 when `best` ≤ 0); `base` = 100 × (1 / `ratio`)^1.5;
//! 6. `penalty` = 20 × (1 − e^−(`effective` − `dynamic_threshold`)) when `effective` >
//!    `dynamic_threshold`, else 0;
//! 7. `trend` = (`older` − `recent`) / `older`, where `recent` is the mean of the last 5
//!    response times and `older` the mean of the (up to) 5 before them, each divided by its
//!    own count; 0 with fewer than 2 samples, when there is nothing before the last 5, or when
//!    `older` is 0; clamped to −1..=1. Positive means getting faster;
//! 8. `raw` = clamp(`base` − `penalty` + 10 × `trend`, 0, 100);
//! 9. `ema` = α × `raw` + (1 − α) × `ema` (α = `EMA_ALPHA`, 0.2 by default); the score is `ema`.
//!
//! A failed probe (no answer, an error, a timeout) adds no response time: it feeds `raw` = 0
//! through the EMA, so one failure lowers the score by α × score and repeated failures drive it
//! towards 0. Before any probe the score is 100.
//!
//! # Overall score and category ([`overall`], [`classify`])
//!
//! - **Overall** = Σ wᵢ × sᵢ / Σ wᵢ over CPU, memory, network and availability (negative weights
//!   count as 0; all weights 0 gives 100), clamped to 0..=100.
//! - **Utilisation** u = 100 − overall.
//! - **Category**: HU when u ≥ `HIGH_LOAD_THRESHOLD` or the CPU utilisation ≥
//!   `MAX_CPU_THRESHOLD` (seed 002: a container past it takes no more work); otherwise LU when
//!   u < `LOW_LOAD_THRESHOLD`; otherwise MU. **Critical** when u ≥ `CRITICAL_LOAD_THRESHOLD`.
//!   INIT and SUNDOWN are the controller's to set, not the score's.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use common::queue::Category;
use serde::{Deserialize, Serialize};

/// Response times kept for the availability average (`HISTORY_SIZE`).
pub const DEFAULT_HISTORY_SIZE: usize = 20;
/// Best response times kept (`BEST_TIME_WINDOW`).
pub const DEFAULT_BEST_TIME_WINDOW: usize = 10;
/// Weight of the newest raw availability score in its EMA (`EMA_ALPHA`).
pub const DEFAULT_EMA_ALPHA: f64 = 0.2;
/// Response times in each of the two windows the trend compares.
pub const TREND_WINDOW: usize = 5;

/// The dynamic threshold's starting value and floor, in seconds.
const INITIAL_DYNAMIC_THRESHOLD: f64 = 1.0;
const MIN_DYNAMIC_THRESHOLD: f64 = 0.5;

/// Weights of the four scores in the overall score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Weights {
    /// `CPU_WEIGHT`.
    pub cpu: f64,
    /// `MEMORY_WEIGHT`.
    pub memory: f64,
    /// `NETWORK_WEIGHT`.
    pub network: f64,
    /// `AVAILABILITY_WEIGHT`.
    pub availability: f64,
}

impl Default for Weights {
    /// The original prototype's weights: 0.35, 0.25, 0.15, 0.25.
    fn default() -> Self {
        Self {
            cpu: 0.35,
            memory: 0.25,
            network: 0.15,
            availability: 0.25,
        }
    }
}

impl Weights {
    /// Every weight finite and ≥ 0, and not all 0. The error names the variable.
    pub fn validate(&self) -> Result<(), String> {
        let named = [
            ("CPU_WEIGHT", self.cpu),
            ("MEMORY_WEIGHT", self.memory),
            ("NETWORK_WEIGHT", self.network),
            ("AVAILABILITY_WEIGHT", self.availability),
        ];
        for (name, weight) in named {
            if !weight.is_finite() || weight < 0.0 {
                return Err(format!("{name} must be a number >= 0, got {weight}"));
            }
        }
        if named.iter().all(|&(_, weight)| weight == 0.0) {
            return Err(
                "CPU_WEIGHT, MEMORY_WEIGHT, NETWORK_WEIGHT and AVAILABILITY_WEIGHT are all 0; \
                 at least one must be > 0"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Utilisation thresholds, in percent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// `LOW_LOAD_THRESHOLD`: below it a container is LU.
    pub low: f64,
    /// `HIGH_LOAD_THRESHOLD`: from it a container is HU.
    pub high: f64,
    /// `CRITICAL_LOAD_THRESHOLD`: from it a container is critical.
    pub critical: f64,
    /// `MAX_CPU_THRESHOLD`: from this CPU utilisation a container is HU whatever its overall
    /// score.
    pub max_cpu: f64,
}

impl Default for Thresholds {
    /// Low 30, high 75, critical 90, max CPU 80.
    fn default() -> Self {
        Self {
            low: 30.0,
            high: 75.0,
            critical: 90.0,
            max_cpu: 80.0,
        }
    }
}

impl Thresholds {
    /// `LOW_LOAD_THRESHOLD` < `HIGH_LOAD_THRESHOLD` ≤ `CRITICAL_LOAD_THRESHOLD`, all within
    /// 0..=100, and `MAX_CPU_THRESHOLD` within 0..=100. The error names the variable.
    pub fn validate(&self) -> Result<(), String> {
        validate_load_thresholds(self.low, self.high, self.critical)?;
        validate_percent("MAX_CPU_THRESHOLD", self.max_cpu)
    }
}

/// Checks `LOW_LOAD_THRESHOLD` < `HIGH_LOAD_THRESHOLD` ≤ `CRITICAL_LOAD_THRESHOLD`, each within
/// 0..=100.
pub(crate) fn validate_load_thresholds(low: f64, high: f64, critical: f64) -> Result<(), String> {
    validate_percent("LOW_LOAD_THRESHOLD", low)?;
    validate_percent("HIGH_LOAD_THRESHOLD", high)?;
    validate_percent("CRITICAL_LOAD_THRESHOLD", critical)?;
    if low >= high {
        return Err(format!(
            "LOW_LOAD_THRESHOLD ({low}) must be below HIGH_LOAD_THRESHOLD ({high})"
        ));
    }
    if high > critical {
        return Err(format!(
            "HIGH_LOAD_THRESHOLD ({high}) must not exceed CRITICAL_LOAD_THRESHOLD ({critical})"
        ));
    }
    Ok(())
}

/// Checks that `value` is a percentage within 0..=100.
pub(crate) fn validate_percent(name: &str, value: f64) -> Result<(), String> {
    if (0.0..=100.0).contains(&value) {
        Ok(())
    } else {
        Err(format!("{name} must be within 0..=100, got {value}"))
    }
}

/// One Docker stats sample, as raw counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsSample {
    /// When the sample was read.
    pub at: Instant,
    /// `cpu_stats.cpu_usage.total_usage`: CPU time used by the container, ns.
    pub cpu_total_ns: u64,
    /// `cpu_stats.system_cpu_usage`: CPU time of the whole host (all CPUs), ns.
    pub system_cpu_ns: u64,
    /// `cpu_stats.online_cpus`.
    pub online_cpus: u32,
    /// `memory_stats.usage`, bytes.
    pub memory_usage: u64,
    /// Page cache counted in `memory_usage` (`inactive_file` on cgroup v2, `cache` on v1).
    pub memory_cache: u64,
    /// `memory_stats.limit`, bytes.
    pub memory_limit: u64,
    /// Bytes received, summed over the container's interfaces.
    pub net_rx_bytes: u64,
    /// Bytes sent, summed over the container's interfaces.
    pub net_tx_bytes: u64,
}

/// The resource scores of one container between two samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ResourceScores {
    /// CPU utilisation, % of the container's own CPU limit.
    pub cpu_util: f64,
    /// 100 − `cpu_util`.
    pub cpu: f64,
    /// 100 − memory utilisation.
    pub memory: f64,
    /// 100 × (1 − min(1, rate / saturation)).
    pub network: f64,
    /// Bytes received and sent per second.
    pub network_bytes_per_s: f64,
}

/// The CPU, memory and network scores from two consecutive samples (formulas in the module
/// docs). `cpu_limit_cores` is the container's own CPU limit (`NanoCpus` / 1e9, the cpuset
/// size, or the online CPUs when unlimited); `network_saturation` is the rate in bytes/s that
/// counts as 100 % network use.
pub fn resource_scores(
    prev: &StatsSample,
    cur: &StatsSample,
    cpu_limit_cores: f64,
    network_saturation: f64,
) -> ResourceScores {
    let cpu_util = cpu_utilization(prev, cur, cpu_limit_cores);
    let network_bytes_per_s = network_rate(prev, cur);
    ResourceScores {
        cpu_util,
        cpu: 100.0 - cpu_util,
        memory: 100.0 - memory_utilization(cur),
        network: network_score(network_bytes_per_s, network_saturation),
        network_bytes_per_s,
    }
}

/// CPU utilisation in % of the container's limit: (Δcpu_total / Δsystem_cpu) × online_cpus ×
/// 100 / `cpu_limit_cores`, clamped to 0..=100; 0 when a delta is 0 or negative. A
/// `cpu_limit_cores` that is not a positive number is replaced by `online_cpus`.
pub fn cpu_utilization(prev: &StatsSample, cur: &StatsSample, cpu_limit_cores: f64) -> f64 {
    let (Some(cpu_delta), Some(system_delta)) = (
        cur.cpu_total_ns.checked_sub(prev.cpu_total_ns),
        cur.system_cpu_ns.checked_sub(prev.system_cpu_ns),
    ) else {
        return 0.0;
    };
    if cpu_delta == 0 || system_delta == 0 {
        return 0.0;
    }
    let online = f64::from(cur.online_cpus);
    let limit = if cpu_limit_cores.is_finite() && cpu_limit_cores > 0.0 {
        cpu_limit_cores
    } else {
        online
    };
    let used_cores = cpu_delta as f64 / system_delta as f64 * online;
    percent(used_cores * 100.0 / limit)
}

/// Memory utilisation in %: (usage − cache) / limit × 100, clamped to 0..=100; 0 when the
/// limit is 0.
pub fn memory_utilization(sample: &StatsSample) -> f64 {
    if sample.memory_limit == 0 {
        return 0.0;
    }
    let used = sample.memory_usage.saturating_sub(sample.memory_cache);
    percent(used as f64 / sample.memory_limit as f64 * 100.0)
}

/// Network rate in bytes/s: (Δrx + Δtx) / Δt, with saturating deltas; 0 when Δt ≤ 0.
pub fn network_rate(prev: &StatsSample, cur: &StatsSample) -> f64 {
    let elapsed = cur.at.saturating_duration_since(prev.at);
    if elapsed.is_zero() {
        return 0.0;
    }
    let rx = cur.net_rx_bytes.saturating_sub(prev.net_rx_bytes);
    let tx = cur.net_tx_bytes.saturating_sub(prev.net_tx_bytes);
    rx.saturating_add(tx) as f64 / elapsed.as_secs_f64()
}

/// Network score: 100 × (1 − min(1, `bytes_per_s` / `saturation`)); 100 when `saturation` is
/// not a positive number (signal disabled).
pub fn network_score(bytes_per_s: f64, saturation: f64) -> f64 {
    if !(saturation.is_finite() && saturation > 0.0) {
        return 100.0;
    }
    percent(100.0 * (1.0 - (bytes_per_s / saturation).min(1.0)))
}

/// Clamps to 0..=100; NaN becomes 0.
fn percent(value: f64) -> f64 {
    if value.is_nan() {
        0.0
    } else {
        value.clamp(0.0, 100.0)
    }
}

fn mean<'a>(values: impl IntoIterator<Item = &'a f64>) -> Option<f64> {
    let (sum, count) = values
        .into_iter()
        .fold((0.0, 0_usize), |(sum, count), value| {
            (sum + value, count + 1)
        });
    (count > 0).then(|| sum / count as f64)
}

/// Seed 003's response-time scorer (algorithm in the module docs): an availability score from
/// 0 to 100 fed with one probe result at a time.
#[derive(Debug, Clone, PartialEq)]
pub struct Availability {
    history_size: usize,
    best_time_window: usize,
    ema_alpha: f64,
    /// Response times, seconds, oldest first.
    history: VecDeque<f64>,
    /// Best response times, seconds, oldest first.
    best_times: VecDeque<f64>,
    dynamic_threshold: f64,
    /// The last raw score fed to the EMA.
    raw: f64,
    ema: f64,
    consecutive_failures: u64,
}

impl Default for Availability {
    /// `HISTORY_SIZE` 20, `BEST_TIME_WINDOW` 10, `EMA_ALPHA` 0.2.
    fn default() -> Self {
        Self::new(
            DEFAULT_HISTORY_SIZE,
            DEFAULT_BEST_TIME_WINDOW,
            DEFAULT_EMA_ALPHA,
        )
    }
}

impl Availability {
    /// A scorer keeping `history_size` response times and `best_time_window` best times, with
    /// `ema_alpha` the weight of each new raw score. Sizes below 1 are raised to 1 and
    /// `ema_alpha` is clamped to 0..=1 (NaN becomes the default); [`Availability::validate`]
    /// reports such values as configuration errors.
    pub fn new(history_size: usize, best_time_window: usize, ema_alpha: f64) -> Self {
        let ema_alpha = if ema_alpha.is_nan() {
            DEFAULT_EMA_ALPHA
        } else {
            ema_alpha.clamp(0.0, 1.0)
        };
        let history_size = history_size.max(1);
        let best_time_window = best_time_window.max(1);
        Self {
            history_size,
            best_time_window,
            ema_alpha,
            history: VecDeque::with_capacity(history_size),
            best_times: VecDeque::with_capacity(best_time_window),
            dynamic_threshold: INITIAL_DYNAMIC_THRESHOLD,
            raw: 100.0,
            ema: 100.0,
            consecutive_failures: 0,
        }
    }

    /// `HISTORY_SIZE` ≥ 1, `BEST_TIME_WINDOW` ≥ 1 and `EMA_ALPHA` within (0, 1]. The error
    /// names the variable.
    pub fn validate(
        history_size: usize,
        best_time_window: usize,
        ema_alpha: f64,
    ) -> Result<(), String> {
        if history_size == 0 {
            return Err("HISTORY_SIZE must be at least 1".into());
        }
        if best_time_window == 0 {
            return Err("BEST_TIME_WINDOW must be at least 1".into());
        }
        if !(ema_alpha > 0.0 && ema_alpha <= 1.0) {
            return Err(format!("EMA_ALPHA must be within (0, 1], got {ema_alpha}"));
        }
        Ok(())
    }

    /// Records one probe: `Some(response time)` for an answer, `None` for a failure (no
    /// answer, an error, a timeout). Returns the new score.
    pub fn record(&mut self, response: Option<Duration>) -> f64 {
        let raw = match response {
            Some(elapsed) => {
                self.consecutive_failures = 0;
                self.add_measurement(elapsed.as_secs_f64());
                self.raw_score()
            }
            None => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                0.0
            }
        };
        self.raw = raw;
        self.ema = self.ema_alpha * raw + (1.0 - self.ema_alpha) * self.ema;
        self.ema
    }

    /// The last score [`Availability::record`] returned; 100 before any probe.
    pub fn score(&self) -> f64 {
        self.ema
    }

    /// Response times in the history (at most `history_size`); failures add none.
    pub fn samples(&self) -> usize {
        self.history.len()
    }

    /// Failed probes since the last answer.
    pub fn consecutive_failures(&self) -> u64 {
        self.consecutive_failures
    }

    fn add_measurement(&mut self, seconds: f64) {
        if self.history.len() == self.history_size {
            self.history.pop_front();
        }
        self.history.push_back(seconds);
        if self.best_times.back().is_none_or(|&best| seconds < best) {
            if self.best_times.len() == self.best_time_window {
                self.best_times.pop_front();
            }
            self.best_times.push_back(seconds);
        }
        let avg = mean(&self.history).unwrap_or(seconds);
        self.dynamic_threshold =
            (self.dynamic_threshold * 0.9 + avg * 1.5 * 0.1).max(MIN_DYNAMIC_THRESHOLD);
    }

    /// The raw score of the current state (steps 4 to 8 in the module docs).
    fn raw_score(&self) -> f64 {
        let (Some(&current), Some(avg), Some(best)) = (
            self.history.back(),
            mean(&self.history),
            mean(&self.best_times),
        ) else {
            return 100.0;
        };
        raw_score(current, avg, best, self.dynamic_threshold, self.trend())
    }

    /// (older − recent) / older over the last two windows of [`TREND_WINDOW`] response times,
    /// clamped to −1..=1; positive when getting faster.
    fn trend(&self) -> f64 {
        let len = self.history.len();
        if len < 2 {
            return 0.0;
        }
        let recent_len = len.min(TREND_WINDOW);
        let older_len = (len - recent_len).min(TREND_WINDOW);
        let recent = mean(self.history.range(len - recent_len..));
        let older = mean(
            self.history
                .range(len - recent_len - older_len..len - recent_len),
        );
        match (recent, older) {
            (Some(recent), Some(older)) if older > 0.0 => {
                ((older - recent) / older).clamp(-1.0, 1.0)
            }
            _ => 0.0,
        }
    }
}

/// clamp(base − penalty + 10 × trend, 0, 100) with `effective` = 0.3 × `current` + 0.7 × `avg`,
/// `base` = 100 × (`best` / `effective`)^1.5 and `penalty` = 20 × (1 − e^−(`effective` −
/// `dynamic_threshold`)) past the threshold. All times in seconds.
fn raw_score(current: f64, avg: f64, best: f64, dynamic_threshold: f64, trend: f64) -> f64 {
    let effective = 0.3 * current + 0.7 * avg;
    let ratio = if best > 0.0 { effective / best } else { 1.0 };
    let base = if ratio > 0.0 {
        100.0 * (1.0 / ratio).powf(1.5)
    } else {
        100.0
    };
    let penalty = if effective > dynamic_threshold {
        20.0 * (1.0 - (-(effective - dynamic_threshold)).exp())
    } else {
        0.0
    };
    percent(base - penalty + 10.0 * trend)
}

/// The four scores of one container, each 0 to 100 (100 = idle).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub cpu: f64,
    pub memory: f64,
    pub network: f64,
    pub availability: f64,
}

/// The weighted mean Σ wᵢ × sᵢ / Σ wᵢ, clamped to 0..=100. Negative weights count as 0; when
/// every weight is 0 the result is 100.
pub fn overall(scores: &Scores, weights: &Weights) -> f64 {
    let pairs = [
        (scores.cpu, weights.cpu),
        (scores.memory, weights.memory),
        (scores.network, weights.network),
        (scores.availability, weights.availability),
    ];
    let (weighted, total) = pairs
        .iter()
        .map(|&(score, weight)| (score, if weight > 0.0 { weight } else { 0.0 }))
        .fold((0.0, 0.0), |(weighted, total), (score, weight)| {
            (weighted + weight * score, total + weight)
        });
    if total > 0.0 {
        percent(weighted / total)
    } else {
        100.0
    }
}

/// How loaded a container is, from its overall score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    /// LU, MU or HU.
    pub category: Category,
    /// 100 − overall, in %.
    pub utilization: f64,
    /// Utilisation at or past the critical threshold.
    pub critical: bool,
}

/// Classifies a container: u = 100 − `overall`; HU when u ≥ `high` or `cpu_util` ≥ `max_cpu`,
/// else LU when u < `low`, else MU; critical when u ≥ `critical`.
pub fn classify(overall: f64, cpu_util: f64, thresholds: &Thresholds) -> Classification {
    let utilization = 100.0 - percent(overall);
    let category = if utilization >= thresholds.high || cpu_util >= thresholds.max_cpu {
        Category::High
    } else if utilization < thresholds.low {
        Category::Low
    } else {
        Category::Medium
    };
    Classification {
        category,
        utilization,
        critical: utilization >= thresholds.critical,
    }
}

#[cfg(test)]
mod tests;
