//! loadgen end to end: the binary's commands, the open-loop engine against real in-process
//! workers and a router with known behaviour, `split` over the workers' `/simulate`, charts.

mod support;

use std::{path::Path, time::Duration};

use common::{CancellationToken, testing::Cleanup};
use loadgen::{
    cli::{self, Command},
    engine::{self, EngineOptions, Request, Submit},
    results,
    split::{self, Assign, SplitOptions},
    stats::Summary,
    trace,
};
use support::{ALPHA_BACKEND, ALPHA_DELAY, loadgen, temp_dir};

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    loadgen::stats::percentile(&values, 50.0)
}

/// Parses `args` as the binary would and runs the command in-process; its output.
async fn execute(args: &[&str]) -> Result<String, loadgen::Error> {
    use clap::Parser;
    let cli = cli::Cli::try_parse_from(std::iter::once("loadgen").chain(args.iter().copied()))
        .unwrap_or_else(|err| panic!("{args:?}: {err}"));
    let mut out = Vec::new();
    cli::execute(cli.command, CancellationToken::new(), &mut out).await?;
    Ok(String::from_utf8(out).unwrap())
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn help_lists_every_command_and_flag() {
    let dir = std::env::temp_dir();
    let top = loadgen(&dir, &["--help"]);
    assert!(top.status.success());
    for command in ["trace", "replay", "run", "split", "plot", "report"] {
        assert!(stdout(&top).contains(command), "--help lacks {command}");
    }
    for (args, flags) in [
        (
            vec!["trace", "generate", "--help"],
            vec![
                "--samples",
                "--size",
                "--inter-arrival",
                "--distribution",
                "--mean",
                "--stdev",
                "--read-ratio",
                "--concurrency",
                "--seed",
                "--sigma",
                "--job",
                "--iterations-per-second",
                "--max-iterations",
                "--max-sleep",
            ],
        ),
        (
            vec!["replay", "--help"],
            vec!["--target", "--concurrency", "--rate", "--out", "--agent"],
        ),
        (
            vec!["run", "--help"],
            vec!["--rate", "--duration", "--intensity", "--profile"],
        ),
        (
            vec!["split", "--help"],
            vec!["--workers", "--st", "--delay"],
        ),
        (
            vec!["plot", "--help"],
            vec!["--agent", "--events", "--out-dir"],
        ),
        (vec!["report", "--help"], vec!["--baseline", "--format"]),
    ] {
        let output = loadgen(&dir, &args);
        assert!(output.status.success(), "{args:?}: {}", stderr(&output));
        for flag in flags {
            assert!(stdout(&output).contains(flag), "{args:?} lacks {flag}");
        }
    }
}

#[test]
fn same_seed_same_file_and_the_parameters_hold() {
    let mut cleanup = Cleanup::default();
    let dir = temp_dir(&mut cleanup, "generate");
    let args = |seed: &str, out: &str| {
        vec![
            "trace",
            "generate",
            "--samples",
            "5000",
            "--inter-arrival",
            "0.02",
            "--distribution",
            "normal",
            "--mean",
            "0.05",
            "--stdev",
            "0.01",
            "--size",
            "uniform:500:100",
            "--read-ratio",
            "0.25",
            "--seed",
            seed,
            "--out",
            out,
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>()
    };
    for (seed, out) in [("11", "a.csv"), ("11", "b.csv"), ("12", "c.csv")] {
        let args = args(seed, out);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = loadgen(&dir, &args);
        assert!(output.status.success(), "{}", stderr(&output));
    }
    let a = std::fs::read(dir.join("a.csv")).unwrap();
    assert_eq!(
        a,
        std::fs::read(dir.join("b.csv")).unwrap(),
        "same seed, same file"
    );
    assert_ne!(
        a,
        std::fs::read(dir.join("c.csv")).unwrap(),
        "another seed, another file"
    );

    let rows = trace::read_file(&dir.join("a.csv")).unwrap();
    assert_eq!(rows.len(), 5000);
    let mean_gap = rows.last().unwrap().arrival_s / 5000.0;
    assert!((mean_gap - 0.02).abs() < 0.001, "mean gap {mean_gap}");
    let work: Vec<f64> = rows
        .iter()
        .filter(|r| r.kind == trace::Kind::Work)
        .map(|r| r.service_s.unwrap())
        .collect();
    let mean = work.iter().sum::<f64>() / work.len() as f64;
    let sd = (work.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / work.len() as f64).sqrt();
    assert!((mean - 0.05).abs() < 0.001, "mean demand {mean}");
    assert!((sd - 0.01).abs() < 0.0005, "demand stdev {sd}");
    let light = rows.iter().filter(|r| r.kind == trace::Kind::Light).count() as f64 / 5000.0;
    assert!((light - 0.25).abs() < 0.02, "light share {light}");
    let size = rows.iter().map(|r| r.size_bytes as f64).sum::<f64>() / 5000.0;
    assert!((size - 500.0).abs() < 5.0, "mean size {size}");
}

/// 200 req/s for three seconds against a real worker: the median send lateness, measured by
/// the engine itself (send time minus due time), stays under 5 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_sends_on_time_at_200_per_second() {
    let worker = support::start_worker("punctual").await;
    let requests: Vec<Request> = (0..600)
        .map(|id| Request {
            id,
            due: Duration::from_millis(5 * id),
            path: "/light".into(),
            intensity: 1,
            size_bytes: 0,
            submit: None,
        })
        .collect();
    let options = EngineOptions {
        target: worker.url(),
        concurrency: 64,
        timeout: Duration::from_secs(10),
        closed_loop: false,
        duration_limit: None,
        progress: false,
        expected: Some(600),
        method: engine::Method::Post,
        body: None,
    };
    let client = engine::client(64).unwrap();
    let outcome = engine::execute(requests, &options, &client, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(outcome.records.len(), 600);
    assert!(
        outcome.records.iter().all(|r| r.ok()),
        "every request succeeded"
    );
    assert!(outcome.records.iter().all(|r| r.backend == "punctual"));
    let lateness = median(outcome.records.iter().map(|r| r.lateness_ms).collect());
    assert!(lateness < 5.0, "median lateness {lateness} ms");
    let due: Vec<f64> = outcome.records.iter().map(|r| r.due_s).collect();
    assert!(
        (due[599] - 2.995).abs() < 1e-9,
        "due times are the schedule's"
    );
}

/// SIGINT/SIGTERM stop the sending; what was sent is still recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupt_stops_sending_and_keeps_what_was_sent() {
    let worker = support::start_worker("interrupted").await;
    let requests: Vec<Request> = (0..200)
        .map(|id| Request {
            id,
            due: Duration::from_millis(10 * id),
            path: "/light".into(),
            intensity: 1,
            size_bytes: 0,
            submit: None,
        })
        .collect();
    let options = EngineOptions {
        target: worker.url(),
        concurrency: 16,
        timeout: Duration::from_secs(10),
        closed_loop: false,
        duration_limit: None,
        progress: false,
        expected: Some(200),
        method: engine::Method::Post,
        body: None,
    };
    let client = engine::client(16).unwrap();
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        trigger.cancel();
    });
    let outcome = engine::execute(requests, &options, &client, &shutdown)
        .await
        .unwrap();
    assert!(outcome.interrupted);
    let sent = outcome.records.len();
    assert!((20..150).contains(&sent), "{sent} requests recorded");
    assert!(outcome.records.iter().all(|r| r.ok()));
}

/// Open loop: a server that takes 200 ms per request does not slow the sending down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_does_not_hold_requests_back() {
    let alpha = support::start_worker("alpha").await;
    let beta = support::start_worker("beta").await;
    let router = support::start_router(&alpha, &beta).await;
    let requests: Vec<Request> = (0..50)
        .map(|id| Request {
            id,
            due: Duration::from_millis(20 * id),
            path: "/slow".into(),
            intensity: 1,
            size_bytes: 0,
            submit: None,
        })
        .collect();
    let options = EngineOptions {
        target: router.url(),
        concurrency: 64,
        timeout: Duration::from_secs(10),
        closed_loop: false,
        duration_limit: None,
        progress: false,
        expected: Some(50),
        method: engine::Method::Post,
        body: None,
    };
    let client = engine::client(64).unwrap();
    let outcome = engine::execute(requests, &options, &client, &CancellationToken::new())
        .await
        .unwrap();
    let records = &outcome.records;
    assert_eq!(records.len(), 50);
    assert!(median(records.iter().map(|r| r.lateness_ms).collect()) < 5.0);
    assert!(records.iter().all(|r| r.latency_ms >= 200.0));
    // Ten requests were in flight at once: each was sent before the one ten earlier returned.
    assert!(records[10].due_s < records[0].done_s());
}

/// Against a router with known behaviour: 20 requests each to alpha (held 25 ms, named by
/// `X-Backend`), beta (named by its JSON `worker_id`) and gamma (always 503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_worker_summary_matches_a_known_workload() {
    let mut cleanup = Cleanup::default();
    let dir = temp_dir(&mut cleanup, "summary");
    let alpha = support::start_worker("alpha").await;
    let beta = support::start_worker("beta").await;
    let router = support::start_router(&alpha, &beta).await;

    let rows: Vec<trace::TraceRow> = (0..60)
        .map(|id| trace::TraceRow {
            id,
            arrival_s: id as f64 * 0.01,
            kind: [trace::Kind::Work, trace::Kind::Light, trace::Kind::Heavy][id as usize % 3],
            intensity: 2,
            service_s: None,
            size_bytes: 256,
            job: None,
        })
        .collect();
    let trace_path = dir.join("known.csv");
    trace::write_file(&trace_path, &rows).unwrap();
    let results_path = dir.join("known-results.csv");
    let summary_path = dir.join("summary.json");
    let text = execute(&[
        "replay",
        path(&trace_path),
        "--target",
        &router.url(),
        "--quiet",
        "--out",
        path(&results_path),
        "--summary-json",
        path(&summary_path),
    ])
    .await
    .unwrap();

    let records = results::read_file(&results_path).unwrap();
    assert_eq!(records.len(), 60);
    let summary = Summary::of(&records);
    assert_eq!((summary.requests, summary.ok, summary.errors), (60, 40, 20));
    assert_eq!(
        summary.workers.keys().collect::<Vec<_>>(),
        [ALPHA_BACKEND, "beta", "gamma"]
    );
    let alpha_stats = &summary.workers[ALPHA_BACKEND];
    let beta_stats = &summary.workers["beta"];
    let gamma_stats = &summary.workers["gamma"];
    assert_eq!((alpha_stats.requests, alpha_stats.errors), (20, 0));
    assert_eq!((beta_stats.requests, beta_stats.errors), (20, 0));
    assert_eq!((gamma_stats.requests, gamma_stats.errors), (20, 20));
    let delay_ms = ALPHA_DELAY.as_secs_f64() * 1e3;
    assert!(
        alpha_stats.p50_ms >= delay_ms,
        "alpha p50 {}",
        alpha_stats.p50_ms
    );
    assert!(
        beta_stats.p50_ms < delay_ms,
        "beta p50 {}",
        beta_stats.p50_ms
    );
    assert!(
        records
            .iter()
            .filter(|r| r.backend == "gamma")
            .all(|r| r.status == 503 && r.error.contains("no capacity"))
    );
    assert!(
        records
            .iter()
            .filter(|r| r.path == "/work")
            .all(|r| r.backend == ALPHA_BACKEND)
    );

    // The printed table and the JSON say the same.
    let alpha_line = text.lines().find(|l| l.starts_with(ALPHA_BACKEND)).unwrap();
    let columns: Vec<&str> = alpha_line.split_whitespace().collect();
    assert_eq!(&columns[1..3], ["20", "0"], "{alpha_line}");
    let gamma_line = text.lines().find(|l| l.starts_with("gamma")).unwrap();
    assert_eq!(
        &gamma_line.split_whitespace().collect::<Vec<_>>()[1..],
        ["20", "20", "-", "-", "-", "-"]
    );
    assert!(text.contains("60 requests"), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap();
    assert_eq!(json["workers"]["beta"]["requests"], 20);
    assert_eq!(json["errors"], 20);
}

/// The README's hand-computed example, split over two real workers (round-robin, ST = 2 s,
/// every request served for exactly ST):
///
/// trace arrivals 0, 0.5, 1, 1.5, 1.5, 4, 7, 9 s
/// worker A gets 0, 1, 1.5, 7: served 0-2, 2-4, 4-6, 7-9; waits 0, 1, 2.5, 0
/// worker B gets 0.5, 1.5, 4, 9: served 0.5-2.5, 2.5-4.5, 4.5-6.5, 9-11; waits 0, 1, 0.5, 0
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_and_simulate_match_the_hand_computed_example() {
    let mut cleanup = Cleanup::default();
    let dir = temp_dir(&mut cleanup, "split");
    let a = support::start_worker("worker-a").await;
    let b = support::start_worker("worker-b").await;
    let trace_path = dir.join("mdl.csv");
    std::fs::write(
        &trace_path,
        "id,arrival_s,service_s\n0,0,0.3\n1,0.5,0.3\n2,1,0.3\n3,1.5,0.3\n4,1.5,0.3\n5,4,0.3\n6,7,0.3\n7,9,0.3\n",
    )
    .unwrap();
    let rows = trace::read_file(&trace_path).unwrap();
    let options = SplitOptions {
        workers: vec![a.url(), b.url()],
        st: Some(2.0),
        delay: 0.0,
        assign: Assign::RoundRobin,
        constant_service: true,
    };
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let report = split::run(&rows, &options, &client).await.unwrap();

    let waits =
        |i: usize| -> Vec<f64> { report.workers[i].results.iter().map(|r| r.wait_s).collect() };
    let ids = |i: usize| -> Vec<u64> { report.workers[i].results.iter().map(|r| r.id).collect() };
    assert_eq!(report.workers[0].worker_id, "worker-a");
    assert_eq!(ids(0), [0, 2, 4, 6]);
    assert_eq!(ids(1), [1, 3, 5, 7]);
    assert_eq!(waits(0), [0.0, 1.0, 2.5, 0.0]);
    assert_eq!(waits(1), [0.0, 1.0, 0.5, 0.0]);
    let sa = &report.workers[0].summary;
    assert_eq!(
        (sa.mean_wait_s, sa.p50_wait_s, sa.p99_wait_s),
        (0.875, 0.0, 2.5)
    );
    assert!((sa.utilisation - 8.0 / 9.0).abs() < 1e-9);
    let sb = &report.workers[1].summary;
    assert_eq!(
        (sb.mean_wait_s, sb.p50_wait_s, sb.p99_wait_s),
        (0.375, 0.0, 1.0)
    );
    assert!((sb.utilisation - 8.0 / 10.5).abs() < 1e-9);
    assert_eq!(report.workers[1].results[3].departure_s, 11.0);
    // Over all eight: waits 0,0,0,0,0.5,1,1,2.5.
    assert_eq!(report.overall.requests, 8);
    assert_eq!(report.overall.mean_wait_s, 0.625);
    assert_eq!(
        (report.overall.p50_wait_s, report.overall.p99_wait_s),
        (0.0, 2.5)
    );

    // The trace's own service_s (0.3 s) is used without --constant-service: no waits at all.
    let own = split::run(
        &rows,
        &SplitOptions {
            constant_service: false,
            ..options.clone()
        },
        &client,
    )
    .await
    .unwrap();
    assert_eq!(own.overall.max_wait_s, 0.0);

    // The command prints the same table and writes every request.
    let out = dir.join("simulated.csv");
    let workers = format!("{},{}", a.url(), b.url());
    let text = execute(&[
        "split",
        path(&trace_path),
        "--workers",
        &workers,
        "--st",
        "2",
        "--constant-service",
        "--out",
        path(&out),
    ])
    .await
    .unwrap();
    let line = text.lines().find(|l| l.starts_with("worker-b")).unwrap();
    assert_eq!(
        line.split_whitespace().collect::<Vec<_>>(),
        [
            "worker-b", "4", "0.3750", "0.0000", "1.0000", "1.0000", "2.3750", "76.2%"
        ]
    );
    let csv = std::fs::read_to_string(&out).unwrap();
    assert_eq!(csv.lines().count(), 9);
    assert!(
        csv.contains("worker-a,4,1.500000,4.000000,2.500000,2.000000,6.000000,4.500000"),
        "{csv}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_sends_a_fixed_rate_and_profiles() {
    let mut cleanup = Cleanup::default();
    let dir = temp_dir(&mut cleanup, "run");
    let worker = support::start_worker("steady").await;
    let out = dir.join("fixed.csv");
    let text = execute(&[
        "run",
        "--target",
        &worker.url(),
        "--rate",
        "100",
        "--duration",
        "1s",
        "--intensity",
        "3",
        "--quiet",
        "--out",
        path(&out),
    ])
    .await
    .unwrap();
    assert!(text.contains("100 requests"), "{text}");
    let records = results::read_file(&out).unwrap();
    assert_eq!(records.len(), 100);
    assert!(
        records
            .iter()
            .all(|r| r.ok() && r.intensity == 3 && r.path == "/work")
    );
    assert!((records[1].due_s - records[0].due_s - 0.01).abs() < 1e-9);

    let profiled = dir.join("profile.csv");
    execute(&[
        "run",
        "--target",
        &worker.url(),
        "--profile",
        "20@500ms,0..40@500ms",
        "--quiet",
        "--out",
        path(&profiled),
    ])
    .await
    .unwrap();
    let records = results::read_file(&profiled).unwrap();
    assert_eq!(records.len(), 20, "10 in the step, 10 on the ramp");

    let closed = dir.join("closed.csv");
    execute(&[
        "run",
        "--target",
        &worker.url(),
        "--closed-loop",
        "--concurrency",
        "4",
        "--duration",
        "500ms",
        "--quiet",
        "--out",
        path(&closed),
    ])
    .await
    .unwrap();
    let records = results::read_file(&closed).unwrap();
    assert!(records.len() > 10, "{} requests", records.len());
    assert!(records.iter().all(|r| r.due_s < 0.5 + 1e-3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plots_are_written_with_the_agent_view() {
    let mut cleanup = Cleanup::default();
    let dir = temp_dir(&mut cleanup, "plot");
    let worker = support::start_worker("plotted").await;
    let agent = support::start_fake_agent().await;
    let results_path = dir.join("plotted.csv");
    let text = execute(&[
        "run",
        "--target",
        &worker.url(),
        "--rate",
        "50",
        "--duration",
        "1500ms",
        "--quiet",
        "--out",
        path(&results_path),
        "--agent",
        &agent.url(),
        "--agent-interval",
        "200ms",
    ])
    .await
    .unwrap();
    let samples_path = dir.join("plotted.agent.csv");
    assert!(text.contains("agent samples"), "{text}");
    let samples = loadgen::agent::read_file(&samples_path).unwrap();
    assert!(samples.len() >= 3, "{samples:?}");
    assert_eq!(samples[0].containers, 2);
    assert_eq!(samples[0].categories, Some([0, 1, 0, 1, 0]));

    // The binary, with the recorded samples.
    let charts = dir.join("charts");
    let output = loadgen(
        &dir,
        &[
            "plot",
            path(&results_path),
            "--events",
            path(&samples_path),
            "--out-dir",
            path(&charts),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    for chart in ["latency", "throughput", "workers", "containers", "timeline"] {
        for ext in ["png", "svg"] {
            let file = charts.join(format!("{chart}.{ext}"));
            let bytes =
                std::fs::read(&file).unwrap_or_else(|_| panic!("{} missing", file.display()));
            assert!(
                bytes.len() > 2000,
                "{} is only {} bytes",
                file.display(),
                bytes.len()
            );
            if ext == "png" {
                assert_eq!(&bytes[..4], b"\x89PNG");
            } else {
                assert!(String::from_utf8_lossy(&bytes).contains("<svg"));
            }
        }
    }
    // And straight from the agent's /events.
    let from_agent = dir.join("from-agent");
    execute(&[
        "plot",
        path(&results_path),
        "--agent",
        &agent.url(),
        "--out-dir",
        path(&from_agent),
    ])
    .await
    .unwrap();
    assert!(
        std::fs::metadata(from_agent.join("containers.png"))
            .unwrap()
            .len()
            > 2000
    );
}

#[test]
fn a_malformed_trace_is_an_error_naming_its_line() {
    let mut cleanup = Cleanup::default();
    let dir = temp_dir(&mut cleanup, "malformed");
    std::fs::write(
        dir.join("bad.csv"),
        "id,arrival_s,kind,intensity,service_s,size_bytes\n0,0.0,work,1,0.01,64\n1,0.01,work,1,0.01,64\n2,soon,work,1,0.01,64\n",
    )
    .unwrap();
    for args in [
        vec![
            "replay",
            "bad.csv",
            "--target",
            "http://127.0.0.1:9",
            "--quiet",
        ],
        vec![
            "split",
            "bad.csv",
            "--workers",
            "http://127.0.0.1:9",
            "--st",
            "1",
        ],
    ] {
        let output = loadgen(&dir, &args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let message = stderr(&output);
        assert!(
            message
                .contains("bad.csv line 4: `arrival_s` must be a non-negative number, got `soon`"),
            "{args:?}: {message}"
        );
    }
    assert!(!dir.join("results.csv").exists(), "nothing was sent");

    // An unwritable results file stops the command before it sends anything.
    std::fs::write(dir.join("good.csv"), "arrival_s\n0\n").unwrap();
    let output = loadgen(
        &dir,
        &[
            "replay",
            "good.csv",
            "--target",
            "http://127.0.0.1:9",
            "--out",
            "no/such/dir/r.csv",
        ],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("no/such/dir/r.csv"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn report_compares_runs_against_a_baseline() {
    let mut cleanup = Cleanup::default();
    let dir = temp_dir(&mut cleanup, "report");
    let record = |id: u64, latency_ms: f64| results::RequestRecord {
        id,
        path: "/work".into(),
        intensity: 1,
        due_s: id as f64 * 0.1,
        unix_ms: 0,
        lateness_ms: 0.0,
        latency_ms,
        status: 200,
        backend: "w".into(),
        error: String::new(),
        service_ms: None,
    };
    results::write_file(
        &dir.join("round-robin.csv"),
        &[record(0, 10.0), record(1, 40.0)],
    )
    .unwrap();
    results::write_file(
        &dir.join("least-request.csv"),
        &[record(0, 10.0), record(1, 20.0)],
    )
    .unwrap();
    let output = loadgen(
        &dir,
        &[
            "report",
            "round-robin.csv",
            "least-request.csv",
            "--baseline",
            "round-robin",
            "--format",
            "tsv",
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[2].starts_with("least-request\t2\t0\t"), "{text}");
    let fields: Vec<&str> = lines[2].split('\t').collect();
    assert_eq!(fields[8], "0.500", "{text}");
    assert_eq!(fields[9..], ["", "", "", ""], "no run times: {text}");
    let unknown = loadgen(&dir, &["report", "round-robin.csv", "--baseline", "nginx"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(stderr(&unknown).contains("--baseline `nginx`"));
}

#[test]
fn commands_parse_as_documented() {
    use clap::Parser;
    let cli = cli::Cli::try_parse_from([
        "loadgen",
        "run",
        "--target",
        "http://x",
        "--profile",
        "10@30s,50@30s,10@60s",
    ])
    .unwrap();
    let Command::Run(args) = cli.command else {
        panic!("not run")
    };
    assert_eq!(args.profile.unwrap().duration(), Duration::from_secs(120));
    assert!(
        cli::Cli::try_parse_from([
            "loadgen",
            "run",
            "--target",
            "http://x",
            "--rate",
            "5",
            "--profile",
            "1@1s"
        ])
        .is_err(),
        "--rate and --profile conflict"
    );
    let split = |t: &str| cli::split_target(t).unwrap();
    assert_eq!(split("http://b:8000"), ("http://b:8000".into(), None));
    assert_eq!(split("http://b:8000/"), ("http://b:8000".into(), None));
    assert_eq!(
        split("http://b:8000/work"),
        ("http://b:8000".into(), Some("/work".into()))
    );
    assert!(cli::split_target("b:8000").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_sends_submit_jobs_and_idempotent_gets() {
    let mut cleanup = Cleanup::default();
    let dir = temp_dir(&mut cleanup, "methods");
    let worker = support::start_worker("jobs").await;

    let jobs = dir.join("jobs.csv");
    execute(&[
        "run",
        "--target",
        &worker.url(),
        "--path",
        "/submit",
        "--body",
        r#"{"operation":"primes","data":{"limit":1000}}"#,
        "--rate",
        "50",
        "--duration",
        "400ms",
        "--quiet",
        "--out",
        path(&jobs),
    ])
    .await
    .unwrap();
    let records = results::read_file(&jobs).unwrap();
    assert_eq!(records.len(), 20);
    assert!(
        records.iter().all(|r| r.ok() && r.path == "/submit"),
        "{records:?}"
    );

    let gets = dir.join("gets.csv");
    execute(&[
        "run",
        "--target",
        &worker.url(),
        "--method",
        "get",
        "--path",
        "/consume_cpu/1",
        "--rate",
        "50",
        "--duration",
        "400ms",
        "--quiet",
        "--out",
        path(&gets),
    ])
    .await
    .unwrap();
    let records = results::read_file(&gets).unwrap();
    assert_eq!(records.len(), 20);
    assert!(
        records.iter().all(|r| r.ok() && r.backend == "jobs"),
        "{records:?}"
    );

    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "run",
            "--target",
            &worker.url(),
            "--body",
            "{not json",
            "--quiet",
        ])
        .output()
        .unwrap();
    assert_eq!(
        refused.status.code(),
        Some(2),
        "a body that is not JSON is refused"
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--body"));
}

/// The policy benchmark's heavy-tailed trace end to end: `trace generate --job monte-carlo-pi
/// --sigma 1.5` replayed against a real worker sends `/submit` jobs it accepts, each record
/// has the job's run time from the worker's answer, and the report gives the slowdowns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_tailed_pi_trace_replays_with_run_times_and_slowdowns() {
    let mut cleanup = Cleanup::default();
    let dir = temp_dir(&mut cleanup, "heavy");
    let worker = support::start_worker("pi").await;
    let trace_path = dir.join("heavy.csv");
    execute(&[
        "trace",
        "generate",
        "--samples",
        "60",
        "--inter-arrival",
        "0.01",
        "--job",
        "monte-carlo-pi",
        "--iterations-per-second",
        "1e7",
        "--distribution",
        "lognormal",
        "--mean",
        "0.002",
        "--sigma",
        "1.5",
        "--read-ratio",
        "0",
        "--max-iterations",
        "200000",
        "--seed",
        "5",
        "--out",
        path(&trace_path),
    ])
    .await
    .unwrap();
    let rows = trace::read_file(&trace_path).unwrap();
    assert_eq!(rows.len(), 60);
    assert!(rows.iter().all(|r| r.kind == trace::Kind::MonteCarloPi
        && matches!(r.job, Some(Submit::MonteCarloPi { iterations }) if (1..=200_000).contains(&iterations))));

    let results_path = dir.join("heavy-results.csv");
    let text = execute(&[
        "replay",
        path(&trace_path),
        "--target",
        &worker.url(),
        "--quiet",
        "--out",
        path(&results_path),
    ])
    .await
    .unwrap();
    let records = results::read_file(&results_path).unwrap();
    assert_eq!(records.len(), 60);
    assert!(
        records.iter().all(|r| r.ok() && r.path == "/submit"),
        "{records:?}"
    );
    assert!(
        records
            .iter()
            .all(|r| r.service_ms.is_some_and(|s| s >= 0.0 && s <= r.latency_ms)),
        "every answer reports its run time, within the response time: {records:?}"
    );
    assert!(
        text.contains("slowdown (response time / the job's run time"),
        "{text}"
    );
    let report = loadgen(&dir, &["report", "heavy-results.csv", "--format", "tsv"]);
    assert!(report.status.success(), "{}", stderr(&report));
    let tsv = stdout(&report);
    let fields: Vec<&str> = tsv.lines().nth(1).unwrap().split('\t').collect();
    let slowdown_mean: f64 = fields[12].parse().unwrap();
    assert!(slowdown_mean >= 1.0, "{tsv}");
}

/// The policy benchmark's trace for a small host: `trace generate --job sleep --sigma 1.5`
/// replayed against a real worker sends `sleep` jobs it accepts; each answer's run time
/// (Server-Timing) is the row's seconds, and the report gives the slowdowns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_tailed_sleep_trace_replays_with_run_times_and_slowdowns() {
    let mut cleanup = Cleanup::default();
    let dir = temp_dir(&mut cleanup, "sleep");
    let worker = support::start_worker("sleeper").await;
    let trace_path = dir.join("sleep.csv");
    execute(&[
        "trace",
        "generate",
        "--samples",
        "60",
        "--inter-arrival",
        "0.01",
        "--job",
        "sleep",
        "--distribution",
        "lognormal",
        "--mean",
        "0.01",
        "--sigma",
        "1.5",
        "--read-ratio",
        "0",
        "--max-sleep",
        "0.1",
        "--seed",
        "5",
        "--out",
        path(&trace_path),
    ])
    .await
    .unwrap();
    let rows = trace::read_file(&trace_path).unwrap();
    assert_eq!(rows.len(), 60);
    let seconds: Vec<f64> = rows
        .iter()
        .map(|r| match (r.kind, r.job) {
            (trace::Kind::Sleep, Some(Submit::Sleep { seconds })) => seconds,
            _ => panic!("not a sleep row: {r:?}"),
        })
        .collect();
    assert!(
        seconds.iter().all(|s| (0.001..=0.1).contains(s)),
        "{seconds:?}"
    );
    assert!(
        rows.iter()
            .zip(&seconds)
            .all(|(r, s)| r.service_s == Some(*s))
    );

    let results_path = dir.join("sleep-results.csv");
    let text = execute(&[
        "replay",
        path(&trace_path),
        "--target",
        &worker.url(),
        "--quiet",
        "--out",
        path(&results_path),
    ])
    .await
    .unwrap();
    let records = results::read_file(&results_path).unwrap();
    assert_eq!(records.len(), 60);
    assert!(
        records.iter().all(|r| r.ok() && r.path == "/submit"),
        "{records:?}"
    );
    // A sleep holds the thread for its seconds, a little more for waking up.
    for record in &records {
        let wanted = seconds[record.id as usize] * 1e3;
        let service = record.service_ms.unwrap();
        assert!(
            service >= wanted - 0.5 && service <= wanted + 50.0 && service <= record.latency_ms,
            "asked {wanted} ms: {record:?}"
        );
    }
    assert!(
        text.contains("slowdown (response time / the job's run time"),
        "{text}"
    );
}

/// The generator clamps jobs to the worker's own default limits.
#[test]
fn generated_jobs_stay_within_the_workers_limit() {
    assert_eq!(
        trace::DEFAULT_MAX_ITERATIONS,
        worker::config::DEFAULT_MAX_ITERATIONS
    );
    assert_eq!(
        Duration::from_secs_f64(trace::DEFAULT_MAX_SLEEP_S),
        worker::Config::default().max_sleep
    );
}
