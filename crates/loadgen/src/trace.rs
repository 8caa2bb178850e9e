//! Traces: seed 004's trace generator and the CSV it writes.
//!
//! One row per request, in arrival order:
//!
//! | column | meaning |
//! | --- | --- |
//! | `id` | request number, from 0 |
//! | `arrival_s` | arrival offset from the start of the trace, seconds |
//! | `kind` | `work` or `light` (the worker endpoint the replay calls; `heavy` is accepted too), or `monte_carlo_pi` or `sleep` (a `POST /submit` job) |
//! | `intensity` | the `intensity` sent to that endpoint, 1..=10 |
//! | `service_s` | service demand in seconds, for the queue simulator (may be empty) |
//! | `size_bytes` | request body size; the replay pads its JSON body to it |
//! | `iterations` | a `monte_carlo_pi` row's job size (empty for the other kinds) |
//! | `seconds` | a `sleep` row's job size, seconds (empty for the other kinds) |
//!
//! Reading, only `arrival_s` is required; the other columns take defaults (`id` = row
//! number, `kind` = `work`, `intensity` = 1, no `service_s`, `size_bytes` = 0), except that
//! a `monte_carlo_pi` row needs its `iterations` and a `sleep` row its `seconds`. Older
//! traces, without the last columns, read as before.

use std::{
    collections::{BinaryHeap, HashMap},
    fmt,
    io::{Read, Write},
    path::Path,
    str::FromStr,
};

use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::{Error, dist::Dist, engine::Submit};

/// The columns of a trace, in the order they are written.
pub const COLUMNS: [&str; 8] = [
    "id",
    "arrival_s",
    "kind",
    "intensity",
    "service_s",
    "size_bytes",
    "iterations",
    "seconds",
];

/// The worker's largest `monte_carlo_pi` job (its `WORKER_MAX_ITERATIONS` default): generated
/// jobs are clamped to it.
pub const DEFAULT_MAX_ITERATIONS: u64 = 10_000_000_000;

/// The worker's longest `sleep` job in seconds (its `WORKER_MAX_SLEEP` default): generated
/// sleeps are clamped to it.
pub const DEFAULT_MAX_SLEEP_S: f64 = 120.0;

/// The shortest generated `sleep` job, seconds: below it the worker's own overhead (waking a
/// thread, answering) would be most of the job.
pub const MIN_SLEEP_S: f64 = 0.001;

/// Which worker endpoint a request calls. Light requests do a tenth of the work of `work`
/// for the same intensity, `heavy` ten times as much; `monte_carlo_pi` and `sleep` are
/// `POST /submit` jobs of the row's `iterations` (CPU-bound, the run time proportional to
/// the size) or `seconds` (a worker thread held that long, no CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Work,
    Light,
    Heavy,
    MonteCarloPi,
    Sleep,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Work => "work",
            Self::Light => "light",
            Self::Heavy => "heavy",
            Self::MonteCarloPi => "monte_carlo_pi",
            Self::Sleep => "sleep",
        }
    }

    /// The worker path (`/work`, `/light`, `/heavy`, `/submit`).
    pub fn path(self) -> &'static str {
        match self {
            Self::Work => "/work",
            Self::Light => "/light",
            Self::Heavy => "/heavy",
            Self::MonteCarloPi | Self::Sleep => "/submit",
        }
    }

    /// The kind of a row carrying `job`.
    pub fn of(job: Submit) -> Self {
        match job {
            Submit::MonteCarloPi { .. } => Self::MonteCarloPi,
            Submit::Sleep { .. } => Self::Sleep,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "work" => Ok(Self::Work),
            "light" => Ok(Self::Light),
            "heavy" => Ok(Self::Heavy),
            "monte_carlo_pi" => Ok(Self::MonteCarloPi),
            "sleep" => Ok(Self::Sleep),
            other => Err(format!(
                "kind `{other}` is not one of work, light, heavy, monte_carlo_pi, sleep"
            )),
        }
    }
}

/// One request of a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceRow {
    pub id: u64,
    /// Seconds from the start of the trace.
    pub arrival_s: f64,
    pub kind: Kind,
    pub intensity: u32,
    /// Service demand in seconds, for the queue simulator.
    pub service_s: Option<f64>,
    pub size_bytes: u64,
    /// The `/submit` job of a `monte_carlo_pi` or `sleep` row (of that kind); `None` for the
    /// other kinds.
    pub job: Option<Submit>,
}

/// What the requests of a generated trace ask the worker to do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Job {
    /// Seed 004's mix: `work` (and `light`) requests whose `intensity` is the demand in
    /// steps of `intensity_unit_s`.
    Intensity,
    /// `monte_carlo_pi` jobs (`POST /submit`) of `demand × iterations_per_s` iterations,
    /// clamped to `1..=max_iterations`; `service_s` is what the clamped job takes, so a job
    /// of the mean demand takes the mean on one worker thread that runs `iterations_per_s`.
    MonteCarloPi {
        /// Iterations one worker thread runs per second.
        iterations_per_s: f64,
        /// The worker's `WORKER_MAX_ITERATIONS`.
        max_iterations: u64,
    },
    /// `sleep` jobs (`POST /submit`) of the demand in seconds, clamped to
    /// `MIN_SLEEP_S..=max_seconds`; `service_s` is the clamped sleep. A worker thread is held
    /// exactly as long as by a CPU job of that demand, at no CPU cost, so a small host can run
    /// many one-thread workers faithfully.
    Sleep {
        /// The worker's `WORKER_MAX_SLEEP`, seconds.
        max_seconds: f64,
    },
}

impl Job {
    /// The `/submit` job for `demand` seconds of a thread, within the worker's limits, and
    /// the seconds it takes (the trace's `service_s`); `None` for [`Job::Intensity`].
    pub fn submit(self, demand: f64) -> Option<(Submit, f64)> {
        match self {
            Self::Intensity => None,
            Self::MonteCarloPi {
                iterations_per_s,
                max_iterations,
            } => {
                let iterations = pi_iterations(demand, iterations_per_s, max_iterations);
                let service_s = round6(iterations as f64 / iterations_per_s);
                Some((Submit::MonteCarloPi { iterations }, service_s))
            }
            Self::Sleep { max_seconds } => {
                let seconds = sleep_seconds(demand, max_seconds);
                Some((Submit::Sleep { seconds }, seconds))
            }
        }
    }
}

/// Seed 004's generator parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateConfig {
    /// Requests in the trace.
    pub samples: usize,
    /// Gaps between arrivals of the whole trace (its mean is `--inter-arrival`).
    pub arrivals: Dist,
    /// Service demand of a `work` request, seconds (`--distribution`, `--mean`, `--stdev`).
    pub service: Dist,
    /// Body size in bytes.
    pub size: Dist,
    /// Share of `light` requests (a tenth of the demand), 0..=1. With a `/submit` job
    /// ([`Job::MonteCarloPi`], [`Job::Sleep`]) they are jobs of a tenth of the demand.
    pub read_ratio: f64,
    /// Independent clients whose arrival streams are merged; each has gaps `concurrency`
    /// times longer, so the trace's mean gap stays the same.
    pub concurrency: u32,
    pub seed: u64,
    /// Seconds of demand per intensity step when mapping `service_s` to `intensity`.
    pub intensity_unit_s: f64,
    pub max_intensity: u32,
    /// What each request asks for.
    pub job: Job,
}

impl GenerateConfig {
    pub fn validate(&self) -> Result<(), Error> {
        if !(0.0..=1.0).contains(&self.read_ratio) {
            return Err(Error::Invalid(format!(
                "--read-ratio must be between 0 and 1, got {}",
                self.read_ratio
            )));
        }
        if self.concurrency == 0 {
            return Err(Error::Invalid("--concurrency must be at least 1".into()));
        }
        if self.arrivals.mean() <= 0.0 {
            return Err(Error::Invalid(
                "--inter-arrival must be greater than zero".into(),
            ));
        }
        if !(self.intensity_unit_s > 0.0 && self.intensity_unit_s.is_finite()) {
            return Err(Error::Invalid(
                "--intensity-unit must be greater than zero".into(),
            ));
        }
        if self.max_intensity == 0 {
            return Err(Error::Invalid("--max-intensity must be at least 1".into()));
        }
        match self.job {
            Job::Intensity => {}
            Job::MonteCarloPi {
                iterations_per_s,
                max_iterations,
            } => {
                if !(iterations_per_s > 0.0 && iterations_per_s.is_finite()) {
                    return Err(Error::Invalid(format!(
                        "--iterations-per-second must be greater than zero, got {iterations_per_s}"
                    )));
                }
                if max_iterations == 0 {
                    return Err(Error::Invalid("--max-iterations must be at least 1".into()));
                }
            }
            Job::Sleep { max_seconds } => {
                if !(max_seconds >= MIN_SLEEP_S && max_seconds.is_finite()) {
                    return Err(Error::Invalid(format!(
                        "--max-sleep must be at least {MIN_SLEEP_S} seconds, got {max_seconds}"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// A client's next arrival, ordered so that the earliest (then the lowest client) pops first.
#[derive(Debug, PartialEq)]
struct Next {
    at: f64,
    client: u32,
}

impl Eq for Next {}

impl Ord for Next {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other
            .at
            .total_cmp(&self.at)
            .then_with(|| other.client.cmp(&self.client))
    }
}

impl PartialOrd for Next {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Generates a trace. The same config (seed included) gives the same rows.
pub fn generate(config: &GenerateConfig) -> Result<Vec<TraceRow>, Error> {
    config.validate()?;
    let mut rng = StdRng::seed_from_u64(config.seed);
    let clients = config.concurrency;
    let gap = config.arrivals.scaled(f64::from(clients)).sampler();
    let service = config.service.sampler();
    let size = config.size.sampler();
    let mean_gap = config.arrivals.mean();
    // Client c starts c mean gaps in, so that constant gaps stay evenly spread when merged.
    let mut heap: BinaryHeap<Next> = (0..clients)
        .map(|client| Next {
            at: f64::from(client) * mean_gap + gap.sample(&mut rng),
            client,
        })
        .collect();
    let mut rows = Vec::with_capacity(config.samples);
    for id in 0..config.samples as u64 {
        let Some(next) = heap.pop() else { break };
        let light = rng.random_bool(config.read_ratio);
        let drawn = service.sample(&mut rng);
        let size_bytes = size.sample(&mut rng).round() as u64;
        let submit = config.job.submit(if light { drawn / 10.0 } else { drawn });
        let (kind, intensity, service_s, job) = match submit {
            Some((job, service_s)) => (Kind::of(job), 1, service_s, Some(job)),
            None => {
                let demand = round6(drawn);
                let service_s = if light { round6(demand / 10.0) } else { demand };
                let steps = (demand / config.intensity_unit_s).round();
                let intensity = steps.clamp(1.0, f64::from(config.max_intensity)) as u32;
                let kind = if light { Kind::Light } else { Kind::Work };
                (kind, intensity, service_s, None)
            }
        };
        rows.push(TraceRow {
            id,
            arrival_s: round6(next.at),
            kind,
            intensity,
            service_s: Some(service_s),
            size_bytes,
            job,
        });
        heap.push(Next {
            at: next.at + gap.sample(&mut rng),
            client: next.client,
        });
    }
    Ok(rows)
}

/// The iterations of a `monte_carlo_pi` job of `demand` seconds on a thread that runs
/// `iterations_per_s`, within the worker's limits `1..=max_iterations`.
pub fn pi_iterations(demand: f64, iterations_per_s: f64, max_iterations: u64) -> u64 {
    let iterations = (demand * iterations_per_s).round();
    if iterations >= max_iterations as f64 {
        max_iterations
    } else {
        (iterations as u64).clamp(1, max_iterations)
    }
}

/// The seconds of a `sleep` job of `demand`, to the microsecond, within
/// `MIN_SLEEP_S..=max_seconds` (the worker refuses longer ones).
pub fn sleep_seconds(demand: f64, max_seconds: f64) -> f64 {
    // `max` first: a NaN demand becomes the shortest sleep.
    round6(demand.max(MIN_SLEEP_S)).min(max_seconds)
}

/// Microsecond precision, as written to the CSV, so a re-read trace equals the generated one.
fn round6(value: f64) -> f64 {
    (value * 1e6).round() / 1e6
}

/// Writes `rows` as CSV with the [`COLUMNS`] header.
pub fn write<W: Write>(writer: W, rows: &[TraceRow]) -> Result<(), std::io::Error> {
    let mut csv = csv::Writer::from_writer(writer);
    csv.write_record(COLUMNS).map_err(csv_io)?;
    for row in rows {
        let service = row.service_s.map(|s| format!("{s:.6}")).unwrap_or_default();
        let (iterations, seconds) = match row.job {
            Some(Submit::MonteCarloPi { iterations }) => (iterations.to_string(), String::new()),
            Some(Submit::Sleep { seconds }) => (String::new(), format!("{seconds:.6}")),
            None => (String::new(), String::new()),
        };
        csv.write_record([
            row.id.to_string(),
            format!("{:.6}", row.arrival_s),
            row.kind.to_string(),
            row.intensity.to_string(),
            service,
            row.size_bytes.to_string(),
            iterations,
            seconds,
        ])
        .map_err(csv_io)?;
    }
    csv.flush()
}

fn csv_io(err: csv::Error) -> std::io::Error {
    match err.into_kind() {
        csv::ErrorKind::Io(err) => err,
        other => std::io::Error::other(format!("{other:?}")),
    }
}

/// Writes a trace file.
pub fn write_file(path: &Path, rows: &[TraceRow]) -> Result<(), Error> {
    let file = std::fs::File::create(path).map_err(|err| Error::io(path, err))?;
    write(std::io::BufWriter::new(file), rows).map_err(|err| Error::io(path, err))
}

/// Reads a trace file; a malformed row is an error naming its line.
pub fn read_file(path: &Path) -> Result<Vec<TraceRow>, Error> {
    let file = std::fs::File::open(path).map_err(|err| Error::io(path, err))?;
    parse(std::io::BufReader::new(file), path)
}

/// Parses a trace; `path` names the source in errors.
pub fn parse<R: Read>(reader: R, path: &Path) -> Result<Vec<TraceRow>, Error> {
    let mut csv = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(reader);
    let header = csv
        .headers()
        .map_err(|err| Error::parse(path, 1, format!("unreadable header: {err}")))?
        .clone();
    let columns: HashMap<&str, usize> = header.iter().enumerate().map(|(i, h)| (h, i)).collect();
    let Some(&arrival_column) = columns.get("arrival_s") else {
        return Err(Error::parse(
            path,
            1,
            format!(
                "the header has no `arrival_s` column (expected {})",
                COLUMNS.join(",")
            ),
        ));
    };
    let mut rows = Vec::new();
    let mut previous = 0.0_f64;
    let mut record = csv::StringRecord::new();
    loop {
        let more = csv.read_record(&mut record).map_err(|err| {
            let line = err.position().map_or(0, |p| p.line());
            Error::parse(path, line, err.to_string())
        })?;
        if !more {
            break;
        }
        let line = record.position().map_or(0, |p| p.line());
        let fail = |message: String| Error::parse(path, line, message);
        if record.len() != header.len() {
            return Err(fail(format!(
                "{} fields, but the header has {}",
                record.len(),
                header.len()
            )));
        }
        let field = |name: &str| {
            columns
                .get(name)
                .and_then(|&i| record.get(i))
                .filter(|value| !value.is_empty())
        };
        let number = |name: &str, value: &str| {
            value
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite() && *n >= 0.0)
                .ok_or_else(|| {
                    fail(format!(
                        "`{name}` must be a non-negative number, got `{value}`"
                    ))
                })
        };
        let integer = |name: &str, value: &str| {
            value.parse::<u64>().map_err(|_| {
                fail(format!(
                    "`{name}` must be a non-negative integer, got `{value}`"
                ))
            })
        };
        let arrival = record.get(arrival_column).unwrap_or_default();
        if arrival.is_empty() {
            return Err(fail("`arrival_s` is empty".into()));
        }
        let arrival_s = number("arrival_s", arrival)?;
        if arrival_s < previous {
            return Err(fail(format!(
                "`arrival_s` {arrival_s} is earlier than the previous row's {previous}; rows must be in arrival order"
            )));
        }
        previous = arrival_s;
        let id = match field("id") {
            Some(value) => integer("id", value)?,
            None => rows.len() as u64,
        };
        let kind = match field("kind") {
            Some(value) => value.parse::<Kind>().map_err(fail)?,
            None => Kind::Work,
        };
        let intensity = match field("intensity") {
            Some(value) => integer("intensity", value)
                .ok()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    fail(format!(
                        "`intensity` must be an integer of at least 1, got `{value}`"
                    ))
                })?,
            None => 1,
        };
        let service_s = field("service_s")
            .map(|value| number("service_s", value))
            .transpose()?;
        let size_bytes = match field("size_bytes") {
            Some(value) => integer("size_bytes", value)?,
            None => 0,
        };
        let iterations = field("iterations")
            .map(|value| {
                integer("iterations", value)
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| {
                        fail(format!(
                            "`iterations` must be an integer of at least 1, got `{value}`"
                        ))
                    })
            })
            .transpose()?;
        let seconds = field("seconds")
            .map(|value| number("seconds", value))
            .transpose()?;
        let job = match kind {
            Kind::MonteCarloPi => Some(Submit::MonteCarloPi {
                iterations: iterations
                    .ok_or_else(|| fail("a `monte_carlo_pi` row needs its `iterations`".into()))?,
            }),
            Kind::Sleep => Some(Submit::Sleep {
                seconds: seconds.ok_or_else(|| fail("a `sleep` row needs its `seconds`".into()))?,
            }),
            _ => None,
        };
        rows.push(TraceRow {
            id,
            arrival_s,
            kind,
            intensity,
            service_s,
            size_bytes,
            job,
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests;
