//! The worker over real HTTP: in-process on port 0, as a real process for signals and config,
//! and as a `FROM scratch` image on the real Docker engine.

mod support;

use std::time::{Duration, Instant};

use common::serve::Stopped;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{LoggingWorker, TestWorker, WorkerProcess};
use worker::Config;

fn config() -> Config {
    Config {
        worker_id: Some("test-worker".into()),
        ..Config::default()
    }
}

async fn error_of(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{status}: content-type {content_type}"
    );
    let body: Value = response.json().await.unwrap();
    let message = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {body}"))
        .to_owned();
    (status, message)
}

#[tokio::test]
async fn health_answers_ok() {
    let worker = TestWorker::start(config()).await;
    let response = worker.get("/health").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "OK");
}

#[tokio::test]
async fn submit_runs_every_operation() {
    let worker = TestWorker::start(config()).await;

    let pi = worker
        .post(
            "/submit",
            json!({"operation": "monte_carlo_pi", "data": {"iterations": 1_000_000}}),
        )
        .await;
    assert_eq!(pi.status(), StatusCode::OK);
    let pi: Value = pi.json().await.unwrap();
    let estimate = pi["result"].as_f64().unwrap();
    assert!(
        (estimate - std::f64::consts::PI).abs() < 0.01,
        "pi = {estimate}"
    );
    assert_eq!(pi["worker_id"], "test-worker");
    assert!(pi["job_id"].as_str().unwrap().starts_with("JOB-"));
    assert!(pi["time_taken"].as_str().unwrap().ends_with('s'));

    let primes: Value = worker
        .post(
            "/submit",
            json!({"operation": "primes", "data": {"limit": 1_000_000}}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(primes["result"], 78_498);

    let started = Instant::now();
    let slept = worker
        .post(
            "/submit",
            json!({"operation": "sleep", "data": {"seconds": 0.2}}),
        )
        .await;
    // The job's run time for a balancer that learns costs: `job;dur=<ms>`, as in the body.
    let timing = slept.headers()["server-timing"]
        .to_str()
        .unwrap()
        .to_owned();
    let slept: Value = slept.json().await.unwrap();
    let dur: f64 = timing
        .strip_prefix("job;dur=")
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("Server-Timing: {timing}"));
    assert!(dur >= 200.0, "{timing}");
    let in_body = slept["time_taken_ms"].as_f64().unwrap();
    assert!(
        (dur - in_body).abs() < 0.01,
        "{timing} against {in_body} ms"
    );
    assert!(slept["result"].as_f64().unwrap() >= 0.2);
    assert!(started.elapsed() >= Duration::from_millis(200));

    let other: Value = worker
        .post(
            "/submit",
            json!({"operation": "monte_carlo_pi", "data": {"iterations": 1000}}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(other["job_id"], pi["job_id"], "job ids are unique");
}

#[tokio::test]
async fn intensity_endpoints_scale_the_work() {
    let worker = TestWorker::start(Config {
        work_unit: 100_000,
        ..config()
    })
    .await;
    for (path, intensity) in [("/work", 3), ("/heavy", 2), ("/light", 10)] {
        let response = worker.post(path, json!({ "intensity": intensity })).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["intensity"], intensity, "{path}");
        assert_eq!(body["worker_id"], "test-worker");
        assert!(body["result"].is_u64(), "{path}: {body}");
    }
    // A missing intensity means 1 (seed 000 posts bare requests too).
    let bare = worker
        .client
        .post(worker.url("/work"))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.json::<Value>().await.unwrap()["intensity"], 1);

    let cpu: Value = worker.get("/consume_cpu/4").await.json().await.unwrap();
    assert_eq!(
        (cpu["operation"].as_str(), cpu["intensity"].as_u64()),
        (Some("cpu"), Some(4))
    );

    let memory: Value = worker.get("/consume_memory/2").await.json().await.unwrap();
    assert_eq!(
        memory["result"],
        2 * 16 * 1024 * 1024,
        "bytes allocated and touched"
    );
}

#[tokio::test]
async fn stats_and_metrics_count_the_work() {
    let worker = TestWorker::start(config()).await;
    for _ in 0..3 {
        let ok = worker
            .post(
                "/submit",
                json!({"operation": "primes", "data": {"limit": 1000}}),
            )
            .await;
        assert_eq!(ok.status(), StatusCode::OK);
    }
    let bad = worker.post("/submit", json!({"operation": "nope"})).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    let stats: Value = worker.get("/stats").await.json().await.unwrap();
    for field in [
        "worker_id",
        "in_flight",
        "queued",
        "completed",
        "failed",
        "cpu_limit_cores",
        "uptime_s",
    ] {
        assert!(stats.get(field).is_some(), "/stats lacks {field}: {stats}");
    }
    assert_eq!(stats["completed"], 3);
    assert_eq!(stats["in_flight"], 0);
    assert!(stats["cpu_limit_cores"].as_f64().unwrap() > 0.0);

    let response = worker.get("/metrics").await;
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    for needle in [
        r#"worker_http_requests_total{endpoint="/submit",status="200"} 3"#,
        r#"worker_http_requests_total{endpoint="/submit",status="400"} 1"#,
        r#"worker_job_duration_seconds_count{operation="primes"} 3"#,
        "worker_http_requests_in_flight",
        "worker_jobs_running 0",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
}

#[tokio::test]
async fn bad_input_gets_a_json_error_naming_the_problem() {
    let worker = TestWorker::start(Config {
        max_body_bytes: 1024,
        ..config()
    })
    .await;
    let raw = |body: &'static str| {
        worker
            .client
            .post(worker.url("/submit"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let (status, error) = error_of(raw("{not json").await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error.contains("malformed JSON"), "{error}");

    let cases = [
        (
            json!({"operation": "monte_carlo_pi", "data": {"iterations": "lots"}}),
            "data.iterations",
        ),
        (
            json!({"operation": "monte_carlo_pi", "data": {"iterations": 0}}),
            "data.iterations",
        ),
        (
            json!({"operation": "monte_carlo_pi", "data": {"iterations": 1e15}}),
            "data.iterations",
        ),
        (json!({"operation": "primes", "data": {}}), "data.limit"),
        (
            json!({"operation": "sleep", "data": {"seconds": -1}}),
            "data.seconds",
        ),
        (json!({"operation": 42}), "operation"),
        (
            json!({"operation": "mine_bitcoin", "data": {}}),
            "monte_carlo_pi, primes, sleep",
        ),
        (json!("just a string"), "JSON object"),
    ];
    for (body, expected) in cases {
        let (status, error) = error_of(worker.post("/submit", body.clone()).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            error.contains(expected),
            "{body}: {error:?} lacks {expected:?}"
        );
    }

    let (status, error) = error_of(worker.post("/work", json!({"intensity": 11})).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error.contains("intensity"), "{error}");
    let (status, _) = error_of(worker.post("/heavy", json!({"intensity": "high"})).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, error) = error_of(worker.get("/consume_cpu/many").await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error.contains("intensity"), "{error}");
    let (status, _) = error_of(worker.get("/consume_memory/0").await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let big = json!({"operation": "primes", "data": {"limit": 10}, "padding": "x".repeat(4096)});
    let (status, error) = error_of(worker.post("/submit", big).await).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(error.contains("1024"), "{error}");

    let (status, error) = error_of(worker.post("/stop", json!({})).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error.contains("WORKER_CHAOS"), "{error}");

    let (status, _) = error_of(worker.get("/no/such/thing").await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = error_of(worker.get("/submit").await).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // After all of that the worker still serves.
    let ok = worker
        .post(
            "/submit",
            json!({"operation": "primes", "data": {"limit": 10}}),
        )
        .await;
    assert_eq!(ok.status(), StatusCode::OK);
}

#[tokio::test]
async fn saturation_gets_503_with_retry_after_while_admitted_work_completes() {
    let worker = TestWorker::start(Config {
        threads: Some(1),
        queue_capacity: 1,
        ..config()
    })
    .await;
    let sleep_job = json!({"operation": "sleep", "data": {"seconds": 0.8}});
    let first = tokio::spawn(
        worker
            .client
            .post(worker.url("/submit"))
            .json(&sleep_job)
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = tokio::spawn(
        worker
            .client
            .post(worker.url("/submit"))
            .json(&sleep_job)
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(100)).await;

    let stats: Value = worker.get("/stats").await.json().await.unwrap();
    assert_eq!(
        (stats["in_flight"].as_u64(), stats["queued"].as_u64()),
        (Some(1), Some(1))
    );

    let refused = worker.post("/submit", sleep_job.clone()).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "1");
    let (_, error) = error_of(refused).await;
    assert!(error.contains("saturated"), "{error}");

    for admitted in [first, second] {
        let response = admitted.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let stats: Value = worker.get("/stats").await.json().await.unwrap();
    assert_eq!(stats["completed"], 2);
    assert_eq!(stats["rejected"], 1);
}

#[tokio::test]
async fn chaos_stop_makes_the_worker_stop_answering() {
    let mut worker = TestWorker::start(Config {
        chaos: true,
        ..config()
    })
    .await;
    let (status, error) = error_of(worker.post("/stop", json!({})).await).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the traffic port never stops"
    );
    assert!(error.contains("WORKER_CHAOS_PORT"), "{error}");
    assert_eq!(worker.get("/health").await.status(), StatusCode::OK);

    let chaos = worker.chaos.expect("a chaos port");
    let response = worker
        .client
        .post(format!("http://{chaos}/stop"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap()["stopped"], true);
    assert_eq!(worker.stopped().await, Stopped::Aborted);
    let fresh = reqwest::Client::new();
    assert!(
        fresh.get(worker.url("/health")).send().await.is_err(),
        "still answering after /stop"
    );
}

/// The real binary with chaos on: `POST /stop` on the traffic port (the one the balancer
/// forwards to) is a 404 and the worker serves on; on the chaos port it stops the worker.
#[tokio::test]
async fn chaos_stop_is_served_only_on_the_chaos_port() {
    let mut process = WorkerProcess::spawn(&["--chaos", "true", "--chaos-port", "0"], &[]);
    let chaos = process.chaos.expect("the log names the chaos port");
    assert_ne!(chaos, process.address);
    let client = reqwest::Client::new();

    for method in [reqwest::Method::POST, reqwest::Method::GET] {
        let refused = client
            .request(method.clone(), process.url("/stop"))
            .send()
            .await
            .unwrap();
        let (status, error) = error_of(refused).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} /stop");
        assert!(error.contains("WORKER_CHAOS_PORT"), "{error}");
    }
    let job = client
        .post(process.url("/submit"))
        .json(&json!({"operation": "primes", "data": {"limit": 10}}))
        .send()
        .await
        .unwrap();
    assert_eq!(job.status(), StatusCode::OK, "the worker still serves");

    // The chaos port serves nothing but POST /stop.
    let other = client
        .get(format!("http://{chaos}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
    let stopped = client
        .post(format!("http://{chaos}/stop"))
        .send()
        .await
        .unwrap();
    assert_eq!(stopped.status(), StatusCode::OK);
    assert_eq!(stopped.json::<Value>().await.unwrap()["stopped"], true);
    let status = process.wait(Duration::from_secs(10));
    assert!(
        !status.success(),
        "a simulated crash exits non-zero: {status}"
    );
    assert!(
        reqwest::Client::new()
            .get(process.url("/health"))
            .send()
            .await
            .is_err(),
        "still answering after /stop"
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_work_and_exits_zero() {
    let mut process = WorkerProcess::spawn(&[], &[]);
    let client = reqwest::Client::new();
    let url = process.url("/submit");
    let job = tokio::spawn(
        client
            .post(url)
            .json(&json!({"operation": "sleep", "data": {"seconds": 1.0}}))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    process.signal("TERM");

    // New connections are refused while the admitted job finishes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        reqwest::Client::new()
            .get(process.url("/health"))
            .send()
            .await
            .is_err()
    );

    let response = job.await.unwrap().expect("in-flight job was cut off");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.json::<Value>().await.unwrap()["result"]
            .as_f64()
            .unwrap()
            >= 1.0
    );
    let status = process.wait(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
}

#[tokio::test]
async fn healthcheck_subcommand_reports_health() {
    let process = WorkerProcess::spawn(&[], &[]);
    let port = process.address.port().to_string();
    let healthy = std::process::Command::new(support::worker_binary())
        .args(["--port", &port, "healthcheck"])
        .output()
        .unwrap();
    assert!(healthy.status.success(), "{healthy:?}");
    drop(process);

    let nobody = support::free_port().to_string();
    let unhealthy = std::process::Command::new(support::worker_binary())
        .env("TARGET_PORT", &nobody)
        .args(["healthcheck", "--timeout", "1s"])
        .output()
        .unwrap();
    assert_eq!(unhealthy.status.code(), Some(1), "{unhealthy:?}");
}

#[test]
fn a_bad_setting_exits_non_zero_naming_the_variable() {
    for (variable, value) in [
        ("TARGET_PORT", "eighty"),
        ("WORKER_THREADS", "0"),
        ("WORKER_MAX_SLEEP", "forever"),
        ("WORKER_CHAOS", "maybe"),
        ("WORKER_CHAOS_PORT", "eighty-one"),
        ("SHUTDOWN_GRACE", "-5"),
    ] {
        let output = std::process::Command::new(support::worker_binary())
            .env(variable, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{variable}={value}: {stderr}"
        );
        assert!(stderr.contains(variable), "{variable}={value}: {stderr}");
    }
}

#[test]
fn help_lists_every_setting() {
    let output = std::process::Command::new(support::worker_binary())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for variable in [
        "TARGET_PORT",
        "WORKER_ID",
        "WORKER_THREADS",
        "WORKER_CHAOS",
        "WORKER_CHAOS_PORT",
        "SHUTDOWN_GRACE",
    ] {
        assert!(help.contains(variable), "--help lacks {variable}");
    }
}

#[test]
fn image_runs_on_docker_answers_and_turns_healthy() {
    support::docker::image_scenario();
}

#[tokio::test]
async fn simulate_runs_the_queue_simulator() {
    let worker = TestWorker::start(config()).await;
    // One server, ST = 2 s, arrivals at 0, 1, 1.5 and 7 s: waits 0, 1, 2.5 and 0 s.
    let response = worker
        .post(
            "/simulate",
            json!({"st": 2, "delay": 0, "rows": [
                {"id": 0, "arrival_s": 0},
                {"id": 1, "arrival_s": 1},
                {"id": 2, "arrival_s": 1.5},
                {"id": 3, "arrival_s": 7}
            ]}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["worker_id"], "test-worker");
    let waits: Vec<f64> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["wait_s"].as_f64().unwrap())
        .collect();
    assert_eq!(waits, [0.0, 1.0, 2.5, 0.0]);
    let summary = &body["summary"];
    assert_eq!(summary["requests"], 4);
    assert_eq!(summary["mean_wait_s"], 0.875);
    assert_eq!(summary["p50_wait_s"], 0.0);
    assert_eq!(summary["p99_wait_s"], 2.5);
    let utilisation = summary["utilisation"].as_f64().unwrap();
    assert!((utilisation - 8.0 / 9.0).abs() < 1e-9, "{utilisation}");
}

#[tokio::test]
async fn simulate_refuses_malformed_and_oversized_input() {
    let worker = TestWorker::start(Config {
        max_body_bytes: 4096,
        ..config()
    })
    .await;
    let (status, message) = error_of(
        worker
            .post(
                "/simulate",
                json!({"st": 1, "rows": [{"arrival_s": 0}, {"arrival_s": 1}, {"arrival_s": "later"}]}),
            )
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("rows[2].arrival_s"), "{message}");

    let (status, message) = error_of(
        worker
            .post("/simulate", json!({"rows": [{"arrival_s": 0}]}))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        message.contains("rows[0]") && message.contains("`st`"),
        "{message}"
    );

    let rows: Vec<Value> = (0..1000).map(|i| json!({"arrival_s": i})).collect();
    let (status, _) = error_of(
        worker
            .post("/simulate", json!({"st": 1, "rows": rows}))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let wrong_method = worker.get("/simulate").await;
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);

    // Past the row limit, even within the body limit.
    let roomy = TestWorker::start(Config {
        max_body_bytes: 8 << 20,
        ..config()
    })
    .await;
    let rows = vec![json!({"arrival_s": 0}); worker::simulate::MAX_ROWS + 1];
    let (status, message) = error_of(
        roomy
            .post("/simulate", json!({"st": 1, "rows": rows}))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(message.contains("rows"), "{message}");
}

/// The balancer's `X-Request-Id` is in the worker's `job started`, `job done` and `job failed`
/// lines (a search for the id finds them), in text and in JSON; a malformed one is not logged.
#[tokio::test]
async fn job_log_lines_carry_the_request_id() {
    for format in ["text", "json"] {
        let worker = LoggingWorker::spawn(format).await;
        let client = reqwest::Client::new();
        let id = format!("it-{format}-{}", common::testing::unique());

        let done = client
            .post(worker.url("/submit"))
            .header("x-request-id", &id)
            .json(&json!({"operation": "primes", "data": {"limit": 1000}}))
            .send()
            .await
            .unwrap();
        assert_eq!(done.status(), StatusCode::OK);
        let lines = worker.lines_with(&[&id, "job started", "job done"]).await;
        let started = lines.iter().find(|l| l.contains("job started"));
        let finished = lines.iter().find(|l| l.contains("job done"));
        assert!(
            started.is_some_and(|l| l.contains("primes") && l.contains("1000")),
            "{format}: no `job started` line with the operation and size for {id}: {lines:?}"
        );
        assert!(
            finished.is_some_and(|l| l.contains("duration_ms")),
            "{format}: no `job done` line with its duration for {id}: {lines:?}"
        );

        let failed_id = format!("{id}-bad");
        let refused = client
            .post(worker.url("/work"))
            .header("x-request-id", &failed_id)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        let lines = worker.lines_with(&[&failed_id, "job failed"]).await;
        assert!(
            lines
                .iter()
                .any(|l| l.contains("job failed") && l.contains("bad request")),
            "{format}: no `job failed` line with its reason for {failed_id}: {lines:?}"
        );
        assert!(
            !lines.iter().any(|l| l.contains("job started")),
            "{format}: a refused body started no job: {lines:?}"
        );

        // In JSON, `request_id` is a field of its own.
        if format == "json" {
            let event: Value = lines
                .iter()
                .find_map(|l| serde_json::from_str(l).ok())
                .unwrap();
            assert_eq!(event["request_id"], failed_id.as_str(), "{event}");
        }

        // No header, or one that is not a plain short id: the job runs and is logged without
        // it, and the header's bytes are never written out.
        let bad_ids = ["has space", "x".repeat(129).as_str(), "a\"b"].map(str::to_owned);
        for bad in &bad_ids {
            let answer = client
                .get(worker.url("/consume_cpu/1"))
                .header("x-request-id", bad.as_str())
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), StatusCode::OK);
        }
        let answer = client
            .get(worker.url("/consume_cpu/1"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let all = worker.all_lines();
        let unmarked = all
            .iter()
            .filter(|l| l.contains("job done") && !l.contains("request_id"))
            .count();
        assert_eq!(unmarked, 4, "{format}: {all:#?}");
        for bad in &bad_ids {
            assert!(
                !all.iter().any(|l| l.contains(bad.as_str())),
                "{format}: `{bad}` was logged: {all:#?}"
            );
        }
    }
}
