//! What a request costs (issue #17, seed 002's estimates): the rules that find a job's class
//! and size in its request, the online fit that turns a size into expected service seconds,
//! and [`Costs`], which learns the fits from the backends' `Server-Timing` answers (shown on
//! the admin port's `GET /costs`). Picking does not use them yet.
//!
//! A request's cost comes, in this order, from an explicit `X-Cost` header (a size in the
//! application's own unit), from the first `COST_RULES` rule matching its method and path
//! (JSON pointers into a small JSON body), or else from its route's learned mean. What cannot
//! be read falls back with a counted [`Fallback`] reason and never becomes an error to the
//! client.

use std::{
    collections::HashMap,
    fmt,
    str::FromStr,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use http::Method;
use serde_json::Value;

use crate::route::{Path, Prefix};

/// An RFC 6901 JSON pointer: empty (the whole document) or `/`-separated reference tokens
/// in which `~` is only ever followed by `0` or `1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer(String);

impl FromStr for Pointer {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if !text.is_empty() && !text.starts_with('/') {
            return Err(format!(
                "`{text}` is not a JSON pointer: it must start with /"
            ));
        }
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
                return Err(format!(
                    "`{text}` is not a JSON pointer: ~ must be followed by 0 or 1"
                ));
            }
        }
        Ok(Self(text.to_owned()))
    }
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One `COST_RULES` rule: `METHOD PATH_PREFIX class=POINTER size=POINTER[|POINTER...]`. The
/// class is a string (or a number) in the body; the size the first of its pointers that
/// holds a non-negative number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    method: Method,
    prefix: Prefix,
    class: Pointer,
    sizes: Vec<Pointer>,
}

impl FromStr for Rule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut words = text.split_whitespace();
        let (Some(method), Some(prefix)) = (words.next(), words.next()) else {
            return Err(format!(
                "`{text}` is not a rule: write METHOD /prefix class=POINTER size=POINTER"
            ));
        };
        let method =
            Method::from_str(method).map_err(|_| format!("`{method}` is not an HTTP method"))?;
        let prefix = Prefix::parse(prefix)?;
        let (mut class, mut sizes) = (None, None);
        for word in words {
            match word.split_once('=') {
                Some(("class", pointer)) if class.is_none() => class = Some(pointer.parse()?),
                Some(("size", pointers)) if sizes.is_none() => {
                    sizes = Some(
                        pointers
                            .split('|')
                            .map(Pointer::from_str)
                            .collect::<Result<Vec<_>, _>>()?,
                    );
                }
                _ => {
                    return Err(format!(
                        "`{word}` in `{text}`: expected class=POINTER and size=POINTER, once each"
                    ));
                }
            }
        }
        let (Some(class), Some(sizes)) = (class, sizes) else {
            return Err(format!("`{text}` needs both class= and size="));
        };
        Ok(Self {
            method,
            prefix,
            class,
            sizes,
        })
    }
}

/// `COST_RULES`: rules separated by `;`, the first that matches a request applies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CostRules(Vec<Rule>);

impl FromStr for CostRules {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        text.split(';')
            .map(str::trim)
            .filter(|rule| !rule.is_empty())
            .map(Rule::from_str)
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }
}

/// Why a request's cost could not be read where it was looked for (counted, never an error
/// to the client): its route's learned mean stands in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// `X-Cost` is not a finite non-negative number.
    BadHeader,
    /// The body is over `COST_BODY_LIMIT`.
    BodyTooLarge,
    /// The body is not JSON.
    NotJson,
    /// The class pointer, or every size pointer, finds nothing.
    MissingField,
    /// The class is not a string or a number, or the size found is not a non-negative number.
    NotNumeric,
}

impl Fallback {
    pub const ALL: [Self; 5] = [
        Self::BadHeader,
        Self::BodyTooLarge,
        Self::NotJson,
        Self::MissingField,
        Self::NotNumeric,
    ];

    /// Its label in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::BadHeader => "bad_header",
            Self::BodyTooLarge => "body_too_large",
            Self::NotJson => "not_json",
            Self::MissingField => "missing_field",
            Self::NotNumeric => "not_numeric",
        }
    }
}

/// A request's job as the rules see it: which rule (route), its class and its size.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// The index of the rule in `COST_RULES`.
    pub rule: usize,
    pub class: String,
    pub size: f64,
}

/// An `X-Cost` value: a finite, non-negative number.
pub fn explicit(value: &[u8]) -> Result<f64, Fallback> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.trim().parse::<f64>().ok())
        .filter(|cost| cost.is_finite() && *cost >= 0.0)
        .ok_or(Fallback::BadHeader)
}

/// `COST_BODY_LIMIT`'s default.
pub const DEFAULT_BODY_LIMIT: usize = 64 << 10;

impl CostRules {
    /// For clap: the value of `COST_RULES`.
    pub fn parse(text: &str) -> Result<Self, String> {
        text.parse()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first rule for this method and path, by index: the body is worth buffering (up
    /// to `COST_BODY_LIMIT`) only for these.
    pub fn rule_for(&self, method: &Method, path: &Path) -> Option<usize> {
        self.0
            .iter()
            .position(|rule| rule.method == method && rule.prefix.contains(path))
    }

    /// The job in `body` by rule `rule` (from [`Self::rule_for`]); `limit` is
    /// `COST_BODY_LIMIT`.
    pub fn job(&self, rule: usize, body: &[u8], limit: usize) -> Result<Job, Fallback> {
        let Some(found) = self.0.get(rule) else {
            return Err(Fallback::MissingField);
        };
        if body.len() > limit {
            return Err(Fallback::BodyTooLarge);
        }
        let document: Value = serde_json::from_slice(body).map_err(|_| Fallback::NotJson)?;
        let class = match document.pointer(&found.class.0) {
            None => return Err(Fallback::MissingField),
            Some(Value::String(class)) => class.clone(),
            Some(Value::Number(class)) => class.to_string(),
            Some(_) => return Err(Fallback::NotNumeric),
        };
        let size = found
            .sizes
            .iter()
            .find_map(|pointer| document.pointer(&pointer.0))
            .ok_or(Fallback::MissingField)?;
        let size = size
            .as_f64()
            .filter(|size| size.is_finite() && *size >= 0.0)
            .ok_or(Fallback::NotNumeric)?;
        Ok(Job { rule, class, size })
    }
}

/// How fast an old sample's weight fades: each new sample multiplies the earlier ones'
/// weights by this, so the fit follows about the last 200 samples.
const DECAY: f64 = 0.995;

/// The online fit of one route and class: expected service seconds = a + b × size, by
/// least squares weighted towards recent samples (a running, numerically stable form). It
/// expects its prior until the first sample, which replaces it. The slope is kept
/// non-negative (a larger job never costs less).
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    weight: f64,
    mean_size: f64,
    mean_seconds: f64,
    /// Weighted sums of squared size deviations and of size × seconds deviations.
    sxx: f64,
    sxy: f64,
    samples: u64,
    /// The mean relative error of the predictions made before each sample after the first
    /// (over about the last 200).
    error: f64,
    prior: f64,
}

impl Fit {
    pub fn new(prior_seconds: f64) -> Self {
        Self {
            weight: 0.0,
            mean_size: 0.0,
            mean_seconds: 0.0,
            prior: prior_seconds.max(0.0),
            sxx: 0.0,
            sxy: 0.0,
            samples: 0,
            error: 0.0,
        }
    }

    /// Takes a completed job: its size and the seconds it took. A sample that is not a
    /// finite non-negative pair is ignored.
    pub fn observe(&mut self, size: f64, seconds: f64) {
        if !(size.is_finite() && seconds.is_finite() && size >= 0.0 && seconds >= 0.0) {
            return;
        }
        if self.samples > 0 {
            // The prior's guess is not counted against the fit.
            let relative = (self.predict(size) - seconds).abs() / seconds.max(1e-6);
            self.error += (relative - self.error) / (self.samples.min(200) as f64);
        }
        self.samples += 1;
        self.weight = self.weight * DECAY + 1.0;
        let dx = size - self.mean_size;
        self.mean_size += dx / self.weight;
        self.mean_seconds += (seconds - self.mean_seconds) / self.weight;
        self.sxx = self.sxx * DECAY + dx * (size - self.mean_size);
        self.sxy = self.sxy * DECAY + dx * (seconds - self.mean_seconds);
    }

    /// The slope and the intercept: seconds per unit of size, and seconds at size 0 (the
    /// prior before any sample).
    pub fn line(&self) -> (f64, f64) {
        if self.samples == 0 {
            return (0.0, self.prior);
        }
        let slope = if self.sxx > f64::EPSILON * (1.0 + self.mean_size * self.mean_size) {
            (self.sxy / self.sxx).max(0.0)
        } else {
            0.0
        };
        (slope, self.mean_seconds - slope * self.mean_size)
    }

    /// Expected seconds for a job of `size`, never below zero.
    pub fn predict(&self, size: f64) -> f64 {
        if self.samples == 0 {
            return self.prior;
        }
        let (slope, intercept) = self.line();
        (intercept + slope * size).max(0.0)
    }

    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// The mean relative error of recent predictions (0.1: off by 10 % on average).
    pub fn error(&self) -> f64 {
        self.error
    }
}

/// The fits kept at most (route and class pairs); jobs of further classes are not learned.
const MAX_FITS: usize = 256;

/// The seconds a fit expects before its first sample.
pub const PRIOR_SECONDS: f64 = 0.1;

/// The route of jobs costed by `X-Cost` alone (no rule matched).
const EXPLICIT: usize = usize::MAX;

/// The cost rules and what was learned with them, shared by every traffic thread.
#[derive(Debug)]
pub struct Costs {
    rules: CostRules,
    body_limit: usize,
    fits: Mutex<HashMap<(usize, String), Fit>>,
    fallbacks: [AtomicU64; Fallback::ALL.len()],
}

/// One fit as `GET /costs` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FitView {
    /// The rule (`POST /submit`), or `X-Cost` for jobs costed by the header alone.
    pub route: String,
    pub class: String,
    pub samples: u64,
    /// Expected seconds = intercept + slope × size.
    pub intercept_seconds: f64,
    pub slope_seconds_per_unit: f64,
    /// The mean relative error of its recent predictions.
    pub error: f64,
}

impl Costs {
    pub fn new(rules: CostRules, body_limit: usize) -> Self {
        Self {
            rules,
            body_limit,
            fits: Mutex::new(HashMap::new()),
            fallbacks: Default::default(),
        }
    }

    /// Whether a rule covers this method and path: its body is worth reading (up to
    /// `COST_BODY_LIMIT`) before the request is dispatched.
    pub fn wants_body(&self, method: &Method, path: &str) -> bool {
        !self.rules.is_empty() && self.rules.rule_for(method, &Path::new(path)).is_some()
    }

    /// Whether `COST_RULES` has any rule.
    pub fn has_rules(&self) -> bool {
        !self.rules.is_empty()
    }

    /// A request's job: by `X-Cost`, else the first rule (reading `body`; `None`: streamed,
    /// not kept), else the rule's mean (class `*`, size 0). `None` when neither the header
    /// nor a rule applies. What cannot be read is counted by reason, never an error.
    pub fn job(
        &self,
        method: &Method,
        path: &str,
        x_cost: Option<&[u8]>,
        body: Option<&[u8]>,
    ) -> Option<Job> {
        if self.rules.is_empty() && x_cost.is_none() {
            return None;
        }
        let rule = (!self.rules.is_empty())
            .then(|| self.rules.rule_for(method, &Path::new(path)))
            .flatten();
        let explicit_size = match x_cost.map(explicit) {
            Some(Ok(size)) => Some(size),
            Some(Err(fallback)) => {
                self.count(fallback);
                None
            }
            None => None,
        };
        match (explicit_size, rule) {
            (Some(size), rule) => Some(Job {
                rule: rule.unwrap_or(EXPLICIT),
                class: "X-Cost".to_owned(),
                size,
            }),
            (None, Some(rule)) => {
                let read = match body {
                    Some(body) => self.rules.job(rule, body, self.body_limit),
                    // Streamed to the backend, not kept: larger than what is buffered.
                    None => Err(Fallback::BodyTooLarge),
                };
                Some(read.unwrap_or_else(|fallback| {
                    self.count(fallback);
                    Job {
                        rule,
                        class: "*".to_owned(),
                        size: 0.0,
                    }
                }))
            }
            (None, None) => None,
        }
    }

    /// The seconds `job` is expected to take: its fit's prediction, else (a class not seen
    /// yet) the prediction of its rule's mean, else the prior.
    pub fn expected(&self, job: &Job) -> f64 {
        let fits = self
            .fits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let own = fits.get(&(job.rule, job.class.clone()));
        let mean = || fits.get(&(job.rule, "*".to_owned()));
        own.or_else(mean)
            .map_or(PRIOR_SECONDS, |fit| fit.predict(job.size))
    }

    /// Learns that `job` took `seconds` (a backend's `Server-Timing`, or the response time
    /// of a request that waited behind no other).
    pub fn observe(&self, job: &Job, seconds: f64) {
        if !seconds.is_finite() || seconds < 0.0 {
            return;
        }
        let mut fits = self
            .fits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let full = fits.len() >= MAX_FITS;
        let key = (job.rule, job.class.clone());
        if !full || fits.contains_key(&key) {
            fits.entry(key)
                .or_insert_with(|| Fit::new(PRIOR_SECONDS))
                .observe(job.size, seconds);
        }
    }

    /// [`Self::expected`] in microseconds.
    pub fn expected_us(&self, job: &Job) -> u64 {
        (self.expected(job) * 1e6).round().clamp(0.0, 1e15) as u64
    }

    /// Learns from one answered request of job `job`: the seconds its backend says it took
    /// (`server_timing`), else its response time `waited` when it waited behind no other on
    /// its backend (`in_flight.alone()`): then that time is its service time.
    pub(crate) fn learn_from(
        &self,
        job: &Job,
        server_timing: Option<&[u8]>,
        in_flight: &crate::body::InFlight,
        waited: std::time::Duration,
    ) {
        match server_timing.and_then(duration_seconds) {
            Some(seconds) => self.observe(job, seconds),
            None if in_flight.alone() => self.observe(job, waited.as_secs_f64()),
            None => {}
        }
    }

    /// Learns from one answered request: its job (see [`Self::job`]) and the seconds its
    /// backend says it took (`Server-Timing`; `None`: nothing to learn).
    pub fn learn(
        &self,
        method: &Method,
        path: &str,
        x_cost: Option<&[u8]>,
        body: Option<&[u8]>,
        server_timing: Option<&[u8]>,
    ) {
        let Some(seconds) = server_timing.and_then(duration_seconds) else {
            return;
        };
        if let Some(job) = self.job(method, path, x_cost, body) {
            self.observe(&job, seconds);
        }
    }

    fn count(&self, fallback: Fallback) {
        if let Some(count) = Fallback::ALL
            .iter()
            .position(|known| *known == fallback)
            .and_then(|at| self.fallbacks.get(at))
        {
            count.fetch_add(1, Relaxed);
        }
    }

    /// The fits, by route and class.
    pub fn fits(&self) -> Vec<FitView> {
        let fits = self
            .fits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut views: Vec<FitView> = fits
            .iter()
            .map(|((rule, class), fit)| {
                let (slope, intercept) = fit.line();
                FitView {
                    route: self.rules.0.get(*rule).map_or_else(
                        || "X-Cost".to_owned(),
                        |rule| format!("{} {}", rule.method, rule.prefix),
                    ),
                    class: class.clone(),
                    samples: fit.samples(),
                    intercept_seconds: intercept,
                    slope_seconds_per_unit: slope,
                    error: fit.error(),
                }
            })
            .collect();
        views.sort_by(|a, b| (&a.route, &a.class).cmp(&(&b.route, &b.class)));
        views
    }

    /// Requests whose cost could not be read, by [`Fallback::ALL`].
    pub fn fallbacks(&self) -> [u64; Fallback::ALL.len()] {
        std::array::from_fn(|at| self.fallbacks.get(at).map_or(0, |n| n.load(Relaxed)))
    }
}

/// The seconds in a `Server-Timing` value: the `dur` (milliseconds) of its `job` metric, else
/// of its first metric that has one (RFC-less but common: `name;dur=123.4;desc="..."`).
pub fn duration_seconds(value: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(value).ok()?;
    let mut first = None;
    for metric in text.split(',') {
        let mut parts = metric.split(';').map(str::trim);
        let name = parts.next().unwrap_or_default();
        let dur = parts.find_map(|param| {
            let (key, value) = param.split_once('=')?;
            key.trim()
                .eq_ignore_ascii_case("dur")
                .then(|| value.trim().trim_matches('"').parse::<f64>().ok())
                .flatten()
        });
        let Some(ms) = dur.filter(|ms| ms.is_finite() && *ms >= 0.0) else {
            continue;
        };
        if name.eq_ignore_ascii_case("job") {
            return Some(ms / 1e3);
        }
        first.get_or_insert(ms / 1e3);
    }
    first
}

#[cfg(test)]
mod tests;
