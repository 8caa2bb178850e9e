//! The commands: their typed arguments (clap; seed 004's variable names work as environment
//! variables) and what each one does. Output for the user goes to the writer passed in
//! (stdout in the binary, a buffer in tests); progress and logs go to stderr.

use std::{io::Write, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use common::{CancellationToken, config::parse_duration};

use crate::{
    Error, agent,
    dist::{Dist, Shape},
    engine::{self, EngineOptions, Request},
    plot::{self, PlotOptions},
    profile::{Profile, Spacing},
    results,
    split::{self, Assign, SplitOptions},
    stats::{Report, Summary},
    trace::{self, GenerateConfig},
};

/// RustyBalancer's load generator: traces, open-loop load, per-worker reports, the queue
/// simulator middleware, charts.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub log: common::config::LogArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Traces: `loadgen trace generate`.
    Trace {
        #[command(subcommand)]
        command: TraceCommand,
    },
    /// Replay a trace against a URL, each request sent when it is due (open loop).
    Replay(ReplayArgs),
    /// Fixed-rate load, or a profile of steps and ramps, against a URL.
    Run(RunArgs),
    /// Split a trace across workers and run the queue simulator on each (seed 004's middleware).
    Split(SplitArgs),
    /// Draw PNG and SVG charts of results files.
    Plot(PlotArgs),
    /// Compare results files in one table (p50, p99, errors, p99 relative to a baseline).
    Report(ReportArgs),
    /// Subscribe to an agent's queue several times and measure each snapshot's fan-out (the
    /// scale benchmark's instrument, `jobs/bench-scale.sh`).
    Subscribers(SubscribersArgs),
}

#[derive(Debug, Subcommand)]
pub enum TraceCommand {
    /// Generate a trace CSV (seed 004's trace generator). The same seed gives the same file.
    Generate(GenerateArgs),
}

#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// Requests in the trace.
    #[arg(long, env = "SAMPLES", default_value_t = 1000)]
    pub samples: usize,
    /// Mean seconds between arrivals.
    #[arg(
        long = "inter-arrival",
        env = "INTER_ARRIVAL",
        value_name = "SECONDS",
        default_value_t = 0.01
    )]
    pub inter_arrival: f64,
    /// Shape of the gaps between arrivals (exponential: a Poisson process).
    #[arg(long, value_enum, default_value = "exponential")]
    pub arrivals: Shape,
    /// Stdev of the gaps, seconds (default: the mean gap); not used by exponential/constant.
    #[arg(long = "arrival-stdev", value_name = "SECONDS")]
    pub arrival_stdev: Option<f64>,
    /// Shape of the service demand of a request.
    #[arg(long, env = "DISTRIBUTION", value_enum, default_value = "lognormal")]
    pub distribution: Shape,
    /// Mean service demand of a `work` request, seconds (`light` ones take a tenth).
    #[arg(long, env = "MEAN", value_name = "SECONDS", default_value_t = 0.02)]
    pub mean: f64,
    /// Stdev of the service demand, seconds.
    #[arg(long, env = "STDEV", value_name = "SECONDS", default_value_t = 0.01)]
    pub stdev: f64,
    /// Lognormal only: the spread as sigma, the stdev of ln(demand), instead of --stdev.
    /// 1.5 is a heavy tail over about three orders of magnitude (stdev ≈ 2.9 × the mean,
    /// median ≈ 0.32 × the mean).
    #[arg(long, value_name = "SIGMA")]
    pub sigma: Option<f64>,
    /// Body size distribution, bytes: SHAPE:MEAN[:STDEV] or a number.
    #[arg(long, env = "SIZE", value_name = "DIST", default_value = "constant:64")]
    pub size: Dist,
    /// Share of light requests (`kind` = light), 0 to 1.
    #[arg(long = "read-ratio", env = "READ_RATIO", default_value_t = 0.2)]
    pub read_ratio: f64,
    /// Independent clients whose arrivals are merged (the trace's mean gap stays the same).
    #[arg(long, env = "CONCURRENCY", default_value_t = 1)]
    pub concurrency: u32,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Seconds of demand per intensity step, mapping `service_s` to the replayed `intensity`.
    #[arg(
        long = "intensity-unit",
        value_name = "SECONDS",
        default_value_t = 0.01
    )]
    pub intensity_unit: f64,
    /// Largest intensity written (the worker's WORKER_MAX_INTENSITY).
    #[arg(long = "max-intensity", default_value_t = 10)]
    pub max_intensity: u32,
    /// What each request asks the worker for: `intensity` (POST /work or /light with
    /// {"intensity": n}), `monte-carlo-pi` (POST /submit with
    /// {"operation":"monte_carlo_pi","data":{"iterations":n}}, n = the demand in seconds ×
    /// --iterations-per-second, so that the mean job takes --mean on one worker thread) or
    /// `sleep` (POST /submit with {"operation":"sleep","data":{"seconds":s}}, s = the demand
    /// in seconds, within 0.001..=--max-sleep: a worker thread held that long at no CPU
    /// cost). Light requests are jobs of a tenth. E.g. the heavy-tailed trace of
    /// jobs/bench-policies.sh: --job sleep --distribution lognormal --mean 0.1 --sigma 1.5
    /// --read-ratio 0.
    #[arg(long, value_enum, default_value = "intensity")]
    pub job: JobArg,
    /// monte-carlo-pi: iterations one worker thread runs per second (measure it: the worker's
    /// answer to one job carries `time_taken_ms`).
    #[arg(
        long = "iterations-per-second",
        value_name = "RATE",
        default_value_t = 1e7
    )]
    pub iterations_per_second: f64,
    /// monte-carlo-pi: the largest job written (the worker's WORKER_MAX_ITERATIONS); larger
    /// draws are clamped to it, and every job has at least one iteration.
    #[arg(long = "max-iterations", default_value_t = trace::DEFAULT_MAX_ITERATIONS)]
    pub max_iterations: u64,
    /// sleep: the longest job written, seconds (the worker's WORKER_MAX_SLEEP); longer draws
    /// are clamped to it, shorter than 0.001 s to 0.001 s.
    #[arg(
        long = "max-sleep",
        value_name = "SECONDS",
        default_value_t = trace::DEFAULT_MAX_SLEEP_S
    )]
    pub max_sleep: f64,
    /// Where to write the CSV (`-`: stdout).
    #[arg(long, short, default_value = "-")]
    pub out: PathBuf,
}

/// `trace generate --job`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JobArg {
    /// `/work` and `/light` with an intensity (seed 004's mix).
    Intensity,
    /// `POST /submit` `monte_carlo_pi` jobs sized by the demand.
    MonteCarloPi,
    /// `POST /submit` `sleep` jobs of the demand.
    Sleep,
}

impl GenerateArgs {
    pub fn config(&self) -> Result<GenerateConfig, Error> {
        if !(self.inter_arrival > 0.0 && self.inter_arrival.is_finite()) {
            return Err(Error::Invalid(format!(
                "--inter-arrival must be a positive number of seconds, got {}",
                self.inter_arrival
            )));
        }
        let service = match (self.sigma, self.distribution) {
            (None, shape) => Dist::new(shape, self.mean, self.stdev),
            (Some(sigma), Shape::Lognormal) => Dist::lognormal_sigma(self.mean, sigma),
            (Some(_), shape) => Err(Error::Invalid(format!(
                "--sigma is for --distribution lognormal, not {}",
                shape.name()
            ))),
        }
        .map_err(|err| Error::Invalid(format!("--distribution: {err}")))?;
        let job = match self.job {
            JobArg::Intensity => trace::Job::Intensity,
            JobArg::MonteCarloPi => trace::Job::MonteCarloPi {
                iterations_per_s: self.iterations_per_second,
                max_iterations: self.max_iterations,
            },
            JobArg::Sleep => trace::Job::Sleep {
                max_seconds: self.max_sleep,
            },
        };
        Ok(GenerateConfig {
            samples: self.samples,
            arrivals: Dist::new(
                self.arrivals,
                self.inter_arrival,
                self.arrival_stdev.unwrap_or(self.inter_arrival),
            )
            .map_err(|err| Error::Invalid(format!("--arrivals: {err}")))?,
            service,
            size: self.size,
            read_ratio: self.read_ratio,
            concurrency: self.concurrency,
            seed: self.seed,
            intensity_unit_s: self.intensity_unit,
            max_intensity: self.max_intensity,
            job,
        })
    }
}

/// How requests are sent.
#[derive(Debug, Clone, Args)]
pub struct SendArgs {
    /// URL of the balancer or worker, e.g. http://127.0.0.1:8000. A path in it
    /// (http://host:8000/work) is requested unless --path is given.
    #[arg(long, env = "LOADGEN_TARGET", value_name = "URL")]
    pub target: String,
    /// Most requests in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Per request, from send to the end of the answer.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Ignore due times and keep --concurrency requests in flight (measures capacity).
    #[arg(long = "closed-loop")]
    pub closed_loop: bool,
    /// `post` (a JSON body) or `get` (none; idempotent, so a balancer may retry it).
    #[arg(long, value_enum, default_value = "post")]
    pub method: crate::engine::Method,
    /// A fixed JSON body for every POST instead of `{"intensity": n}`, e.g. a /submit job:
    /// `{"operation":"monte_carlo_pi","data":{"iterations":20000000}}`.
    #[arg(long, value_name = "JSON", value_parser = parse_json_body)]
    pub body: Option<String>,
}

fn parse_json_body(text: &str) -> Result<String, String> {
    serde_json::from_str::<serde_json::Value>(text)
        .map(|_| text.to_owned())
        .map_err(|err| format!("not JSON: {err}"))
}

/// Where results go.
#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Results CSV, one row per request.
    #[arg(long, short, default_value = "results.csv")]
    pub out: PathBuf,
    /// Also write the summary as JSON here.
    #[arg(long = "summary-json", value_name = "FILE")]
    pub summary_json: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// Deployment agent HTTP URL: record its queue (containers, categories) during the run.
    #[arg(long, value_name = "URL")]
    pub agent: Option<String>,
    /// Where the agent samples go (default: the results file with `.agent.csv`).
    #[arg(long = "agent-out", value_name = "FILE")]
    pub agent_out: Option<PathBuf>,
    /// How often the agent's queue is sampled.
    #[arg(long = "agent-interval", default_value = "500ms", value_parser = parse_duration)]
    pub agent_interval: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// Trace CSV (see `loadgen trace generate`).
    pub trace: PathBuf,
    #[command(flatten)]
    pub send: SendArgs,
    /// Time scale: 2 replays twice as fast.
    #[arg(long, default_value_t = 1.0, conflicts_with = "rate")]
    pub speed: f64,
    /// Rescale arrival times so the trace runs at this mean rate (req/s).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Send every request to this path instead of the row's endpoint (/work, /light, /heavy).
    #[arg(long)]
    pub path: Option<String>,
    /// Stop sending after this long (default: the whole trace).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub send: SendArgs,
    /// Requests per second.
    #[arg(long, conflicts_with = "profile")]
    pub rate: Option<f64>,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Steps and ramps instead of --rate/--duration: `10@30s,50@30s,10..50@60s`.
    #[arg(long)]
    pub profile: Option<Profile>,
    /// Intensity of every request.
    #[arg(long, default_value_t = 1)]
    pub intensity: u32,
    /// Path requested (default: the path of --target, else /work).
    #[arg(long)]
    pub path: Option<String>,
    /// Body size in bytes (the JSON is padded).
    #[arg(long, default_value_t = 0)]
    pub size: u64,
    /// Poisson arrivals at the rate (from --seed) instead of even spacing.
    #[arg(long)]
    pub poisson: bool,
    /// Seed of --poisson.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Args)]
pub struct SplitArgs {
    /// Trace CSV; `arrival_s` and, unless --st covers it, `service_s` are used.
    pub trace: PathBuf,
    /// Worker base URLs, comma-separated.
    #[arg(long, value_delimiter = ',', required = true, value_name = "URL,URL")]
    pub workers: Vec<String>,
    /// Service time in seconds of rows without `service_s` (seed 004's ST).
    #[arg(long, env = "ST", value_name = "SECONDS")]
    pub st: Option<f64>,
    /// Seconds between arrival and entry into the queue (seed 004's DELAY).
    #[arg(long, env = "DELAY", value_name = "SECONDS", default_value_t = 0.0)]
    pub delay: f64,
    /// How rows are dealt to the workers.
    #[arg(long, value_enum, default_value = "round-robin")]
    pub assign: Assign,
    /// Ignore the trace's service_s: every request takes --st (M/D/1-style).
    #[arg(long = "constant-service")]
    pub constant_service: bool,
    /// Write every simulated request here as CSV.
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// Print the whole report as JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Per worker request.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct PlotArgs {
    /// Results CSVs of `replay` or `run`; each file is one run, named by its file stem.
    #[arg(required = true)]
    pub results: Vec<PathBuf>,
    /// Directory for the charts.
    #[arg(long = "out-dir", short, default_value = "plots")]
    pub out_dir: PathBuf,
    /// Width of the time buckets.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub bucket: Duration,
    /// Title prefix of every chart.
    #[arg(long)]
    pub title: Option<String>,
    /// Deployment agent HTTP URL: the container count from its GET /events.
    #[arg(long, value_name = "URL", conflicts_with = "events")]
    pub agent: Option<String>,
    /// Agent samples recorded with `--agent` (CSV), or a saved GET /events answer (JSON).
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct SubscribersArgs {
    /// The agent's queue WebSocket, `ws://host:port/ws`.
    #[arg(long, value_name = "URL")]
    pub url: String,
    /// Subscribers (one WebSocket connection each).
    #[arg(long, default_value_t = 10)]
    pub count: usize,
    /// How long to listen.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// The agent's HTTP URL: its decision time per tick is read from its `/metrics` at the end.
    #[arg(long, value_name = "URL")]
    pub agent: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Output format of `report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Tsv,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// Results CSVs; each is labelled by its file stem.
    #[arg(required = true)]
    pub results: Vec<PathBuf>,
    /// Label (file stem) of the run the p99 of the others is divided by.
    #[arg(long)]
    pub baseline: Option<String>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

fn write_out(out: &mut dyn Write, text: &str) -> Result<(), Error> {
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|err| Error::io("<stdout>", err))
}

/// Runs one command. `shutdown` stops a replay or run early (its results are still written).
pub async fn execute(
    command: Command,
    shutdown: CancellationToken,
    out: &mut (dyn Write + Send),
) -> Result<(), Error> {
    match command {
        Command::Trace {
            command: TraceCommand::Generate(args),
        } => generate(&args, out),
        Command::Replay(args) => replay(&args, &shutdown, out).await,
        Command::Run(args) => run(&args, &shutdown, out).await,
        Command::Split(args) => split(&args, out).await,
        Command::Plot(args) => plot(&args, out).await,
        Command::Report(args) => report(&args, out),
        Command::Subscribers(args) => subscribers(&args, &shutdown, out).await,
    }
}

/// `subscribers`.
pub async fn subscribers(
    args: &SubscribersArgs,
    shutdown: &CancellationToken,
    out: &mut (dyn Write + Send),
) -> Result<(), Error> {
    let report = crate::subscribers::run(
        &args.url,
        args.count,
        args.duration,
        args.agent.as_deref(),
        shutdown,
    )
    .await?;
    let text = if args.json {
        serde_json::to_string_pretty(&report).map_err(|err| Error::Invalid(err.to_string()))?
    } else {
        report.to_string()
    };
    write_out(out, &format!("{text}\n"))
}

/// `trace generate`.
pub fn generate(args: &GenerateArgs, out: &mut dyn Write) -> Result<(), Error> {
    let rows = trace::generate(&args.config()?)?;
    if args.out.as_os_str() == "-" {
        trace::write(&mut *out, &rows).map_err(|err| Error::io("<stdout>", err))
    } else {
        trace::write_file(&args.out, &rows)?;
        write_out(
            out,
            &format!("wrote {} requests to {}\n", rows.len(), args.out.display()),
        )
    }
}

/// `replay`.
pub async fn replay(
    args: &ReplayArgs,
    shutdown: &CancellationToken,
    out: &mut (dyn Write + Send),
) -> Result<(), Error> {
    let rows = trace::read_file(&args.trace)?;
    if rows.is_empty() {
        return Err(Error::Invalid(format!(
            "{} holds no requests",
            args.trace.display()
        )));
    }
    let speed = match args.rate {
        Some(rate) => {
            if !(rate > 0.0 && rate.is_finite()) {
                return Err(Error::Invalid(format!(
                    "--rate must be positive, got {rate}"
                )));
            }
            let span = rows.last().map_or(0.0, |r| r.arrival_s);
            if span <= 0.0 {
                return Err(Error::Invalid(
                    "--rate needs a trace whose arrivals span some time".into(),
                ));
            }
            rate / (rows.len() as f64 / span)
        }
        None => args.speed,
    };
    if !(speed > 0.0 && speed.is_finite()) {
        return Err(Error::Invalid(format!(
            "--speed must be positive, got {speed}"
        )));
    }
    let (_, target_path) = split_target(&args.send.target)?;
    let fixed_path = args.path.as_deref().map(absolute).or(target_path);
    let requests: Vec<Request> = rows
        .iter()
        .map(|row| Request {
            id: row.id,
            due: Duration::from_secs_f64(row.arrival_s / speed),
            path: fixed_path
                .clone()
                .unwrap_or_else(|| row.kind.path().to_owned()),
            intensity: row.intensity,
            size_bytes: row.size_bytes,
            submit: row.job,
        })
        .collect();
    let requests: Vec<Request> = match args.duration {
        Some(limit) if !args.send.closed_loop => {
            requests.into_iter().filter(|r| r.due < limit).collect()
        }
        _ => requests,
    };
    let options = engine_options(
        &args.send,
        &args.output,
        Some(requests.len() as u64),
        args.duration.filter(|_| args.send.closed_loop),
    );
    drive(requests, options, &args.output, shutdown, out).await
}

/// `run`.
pub async fn run(
    args: &RunArgs,
    shutdown: &CancellationToken,
    out: &mut (dyn Write + Send),
) -> Result<(), Error> {
    if args.intensity == 0 {
        return Err(Error::Invalid("--intensity must be at least 1".into()));
    }
    let (_, target_path) = split_target(&args.send.target)?;
    let path = args
        .path
        .as_deref()
        .map(absolute)
        .or(target_path)
        .unwrap_or_else(|| "/work".to_owned());
    let request = |id: u64, due: Duration| Request {
        id,
        due,
        path: path.clone(),
        intensity: args.intensity,
        size_bytes: args.size,
        submit: None,
    };
    if args.send.closed_loop {
        let options = engine_options(&args.send, &args.output, None, Some(args.duration));
        let requests = (0..).map(|id| request(id, Duration::ZERO));
        return drive(requests, options, &args.output, shutdown, out).await;
    }
    let profile = match (&args.profile, args.rate) {
        (Some(profile), _) => profile.clone(),
        (None, Some(rate)) => Profile::constant(rate, args.duration)?,
        (None, None) => {
            return Err(Error::Invalid(
                "give --rate (with --duration), --profile, or --closed-loop".into(),
            ));
        }
    };
    let spacing = if args.poisson {
        Spacing::Poisson { seed: args.seed }
    } else {
        Spacing::Even
    };
    let requests: Vec<Request> = profile
        .arrivals(spacing)
        .into_iter()
        .enumerate()
        .map(|(id, t)| request(id as u64, Duration::from_secs_f64(t)))
        .collect();
    let options = engine_options(&args.send, &args.output, Some(requests.len() as u64), None);
    drive(requests, options, &args.output, shutdown, out).await
}

/// `http://host:port/some/path` as (`http://host:port`, `Some("/some/path")`); no path or
/// `/` gives `None`.
pub fn split_target(target: &str) -> Result<(String, Option<String>), Error> {
    let rest = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
        .ok_or_else(|| Error::Invalid(format!("--target `{target}` is not an http:// URL")))?;
    let scheme_len = target.len() - rest.len();
    match rest.find('/') {
        Some(i) if rest[i..].trim_end_matches('/').is_empty() => {
            Ok((target[..scheme_len + i].to_owned(), None))
        }
        Some(i) => Ok((
            target[..scheme_len + i].to_owned(),
            Some(rest[i..].to_owned()),
        )),
        None => Ok((target.to_owned(), None)),
    }
}

fn absolute(path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    }
}

fn engine_options(
    send: &SendArgs,
    output: &OutputArgs,
    expected: Option<u64>,
    duration_limit: Option<Duration>,
) -> EngineOptions {
    EngineOptions {
        target: split_target(&send.target).map_or_else(|_| send.target.clone(), |(o, _)| o),
        concurrency: send.concurrency,
        timeout: send.timeout,
        closed_loop: send.closed_loop,
        duration_limit,
        progress: !output.quiet,
        expected,
        method: send.method,
        body: send.body.as_ref().map(|body| body.clone().into_bytes()),
    }
}

/// Runs the engine (and the agent recorder), writes the files and prints the summary.
async fn drive(
    requests: impl IntoIterator<Item = Request>,
    options: EngineOptions,
    output: &OutputArgs,
    shutdown: &CancellationToken,
    out: &mut (dyn Write + Send),
) -> Result<(), Error> {
    // Fail before sending anything when the results cannot be written.
    std::fs::File::create(&output.out).map_err(|err| Error::io(&output.out, err))?;
    let client = engine::client(options.concurrency)?;
    let stop_agent = CancellationToken::new();
    let recorder = output.agent.clone().map(|url| {
        tokio::spawn(agent::record(
            client.clone(),
            url,
            output.agent_interval,
            stop_agent.clone(),
        ))
    });
    let outcome = engine::execute(requests, &options, &client, shutdown).await;
    stop_agent.cancel();
    let samples = match recorder {
        Some(task) => Some(task.await.unwrap_or_default()),
        None => None,
    };
    let outcome = outcome?;
    results::write_file(&output.out, &outcome.records)?;
    let summary = Summary::of(&outcome.records);
    if let Some(path) = &output.summary_json {
        let text = serde_json::to_string_pretty(&summary)
            .map_err(|err| Error::io(path, std::io::Error::other(err)))?;
        std::fs::write(path, text).map_err(|err| Error::io(path, err))?;
    }
    let mut text = String::new();
    if outcome.interrupted {
        text.push_str("interrupted: stopped sending; the results cover what was sent\n");
    }
    text.push_str(&summary.to_string());
    text.push_str(&format!("results: {}\n", output.out.display()));
    if let Some(samples) = samples {
        let path = output
            .agent_out
            .clone()
            .unwrap_or_else(|| output.out.with_extension("agent.csv"));
        agent::write_file(&path, &samples)?;
        text.push_str(&format!(
            "agent samples: {} ({} samples)\n",
            path.display(),
            samples.len()
        ));
    }
    write_out(out, &text)
}

/// `split`.
pub async fn split(args: &SplitArgs, out: &mut (dyn Write + Send)) -> Result<(), Error> {
    for (name, value) in [("--st", args.st), ("--delay", Some(args.delay))] {
        if let Some(value) = value {
            if !(value >= 0.0 && value.is_finite()) {
                return Err(Error::Invalid(format!(
                    "{name} must be a non-negative number of seconds, got {value}"
                )));
            }
        }
    }
    let rows = trace::read_file(&args.trace)?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(args.timeout)
        .build()
        .map_err(|err| Error::Invalid(format!("cannot build the HTTP client: {err}")))?;
    let options = SplitOptions {
        workers: args.workers.clone(),
        st: args.st,
        delay: args.delay,
        assign: args.assign,
        constant_service: args.constant_service,
    };
    let report = split::run(&rows, &options, &client).await?;
    if let Some(path) = &args.out {
        report.write_csv(path)?;
    }
    let text = if args.json {
        let mut json = serde_json::to_string_pretty(&report)
            .map_err(|err| Error::io("<stdout>", std::io::Error::other(err)))?;
        json.push('\n');
        json
    } else {
        report.to_string()
    };
    write_out(out, &text)
}

fn read_runs(paths: &[PathBuf]) -> Result<Vec<(String, Vec<results::RequestRecord>)>, Error> {
    paths
        .iter()
        .map(|path| Ok((plot::label_of(path), results::read_file(path)?)))
        .collect()
}

/// `plot`.
pub async fn plot(args: &PlotArgs, out: &mut (dyn Write + Send)) -> Result<(), Error> {
    let runs = read_runs(&args.results)?;
    let agent = match (&args.agent, &args.events) {
        (Some(url), _) => {
            let client = engine::client(1)?;
            agent::fetch_events(&client, url).await?
        }
        (None, Some(path)) => agent::read_file(path)?,
        (None, None) => Vec::new(),
    };
    let options = PlotOptions {
        out_dir: args.out_dir.clone(),
        bucket: args.bucket,
        title: args.title.clone(),
        agent,
    };
    let written = plot::plot(&runs, &options)?;
    let mut text = String::new();
    for path in written {
        text.push_str(&format!("{}\n", path.display()));
    }
    write_out(out, &text)
}

/// `report`.
pub fn report(args: &ReportArgs, out: &mut dyn Write) -> Result<(), Error> {
    let runs = read_runs(&args.results)?;
    if let Some(baseline) = &args.baseline {
        if !runs.iter().any(|(label, _)| label == baseline) {
            return Err(Error::Invalid(format!(
                "--baseline `{baseline}` is none of the results' labels ({})",
                runs.iter()
                    .map(|(l, _)| l.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let report = Report::new(&runs, args.baseline.as_deref());
    let text = match args.format {
        Format::Table => report.to_string(),
        Format::Tsv => report.to_tsv(),
        Format::Json => {
            let mut json = serde_json::to_string_pretty(&report)
                .map_err(|err| Error::io("<stdout>", std::io::Error::other(err)))?;
            json.push('\n');
            json
        }
    };
    write_out(out, &text)
}
