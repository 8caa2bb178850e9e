//! The balancer over real HTTP, in front of real `worker` instances (in-process on port 0),
//! a WebSocket + gRPC agent stand-in, a small echo backend for what the worker does not serve,
//! and the real `balancer` binary for memory, signals and configuration errors.

mod support;

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use balancer::{Config, Policy};
use common::{queue::Category, serve::Stopped};
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{
    BalancerProcess, TestBalancer, TestWorker, WorkerProcess,
    agent::{GrpcAgent, WsAgent},
    backend::{EARLY_ANSWER, EchoBackend, Generated, Misbehaviour, RawBackend},
    backend_of, item, raw_exchange, wait_for,
};
use tokio_tungstenite::tungstenite::Message;

async fn json_error(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{status}: {content_type}"
    );
    let body: Value = response.json().await.unwrap();
    (
        status,
        body["error"].as_str().unwrap_or_default().to_owned(),
    )
}

// ---------------------------------------------------------------------------------------
// Costs (issue #17)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_learns_what_jobs_cost_from_the_workers_server_timing() {
    let parsed = support::parsed_config(&[
        "--cost-rules",
        "POST /submit class=/operation size=/data/iterations|/data/limit|/data/seconds",
        // As in the compose stacks: hyper's path then keeps a chunked body too.
        "--retry-routes",
        "POST /submit",
    ]);
    let worker = TestWorker::start("worker-costs").await;
    let balancer = TestBalancer::start(Config {
        cost_rules: parsed.cost_rules,
        retry_routes: parsed.retry_routes,
        ..support::static_config(&[worker.address])
    })
    .await;
    let client = reqwest::Client::new();
    for step in 1..=12u64 {
        let job = json!({"operation": "monte_carlo_pi", "data": {"iterations": step * 100_000}});
        let answer = balancer.post_json("/submit", &job).await;
        assert_eq!(answer.status(), StatusCode::OK);
        assert!(answer.headers().contains_key("server-timing"));
    }
    // A chunked body is read as well (its data, not its framing).
    let body = r#"{"operation":"primes","data":{"limit":50000}}"#;
    let (first, second) = body.split_at(20);
    let chunked = format!(
        "POST /submit HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
        first.len(),
        second.len()
    );
    let answer = raw_exchange(
        balancer.address,
        chunked.as_bytes(),
        Duration::from_secs(10),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A bad X-Cost is counted and the rule stands in; a good one is its own class.
    for x_cost in ["lots", "3"] {
        let answer = client
            .post(balancer.url("/submit"))
            .header("x-cost", x_cost)
            .json(&json!({"operation": "primes", "data": {"limit": 1000}}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
    }

    let costs = balancer.costs().await;
    let fit = |class: &str| {
        costs["fits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|fit| fit["class"] == class)
            .unwrap_or_else(|| panic!("no fit for {class}: {costs}"))
            .clone()
    };
    let pi = fit("monte_carlo_pi");
    assert_eq!(pi["route"], "POST /submit");
    assert_eq!(pi["samples"], 12);
    assert!(pi["slope_seconds_per_unit"].as_f64().unwrap() > 0.0, "{pi}");
    assert_eq!(fit("primes")["samples"], 2, "{costs}");
    assert_eq!(fit("X-Cost")["samples"], 1, "{costs}");
    assert_eq!(costs["fallbacks"]["bad_header"], 1, "{costs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_server_timing_the_response_time_of_a_request_alone_is_learned() {
    let backend = EchoBackend::start("delay").await;
    let balancer = TestBalancer::start(support::static_config(&[backend.address])).await;
    let client = reqwest::Client::new();
    let delayed = |ms: u64| {
        client
            .get(balancer.url(&format!("/delay/{ms}")))
            .header("x-cost", ms.to_string())
            .send()
    };
    // One at a time: each waits behind no other, its response time is its service time.
    for ms in [50, 200, 50, 200, 100] {
        let answer = delayed(ms).await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        assert!(!answer.headers().contains_key("server-timing"));
    }
    let x_cost = || async {
        let costs = balancer.costs().await;
        costs["fits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|fit| fit["class"] == "X-Cost")
            .unwrap_or_else(|| panic!("no X-Cost fit: {costs}"))
            .clone()
    };
    let fit = x_cost().await;
    assert_eq!(fit["samples"], 5, "{fit}");
    // 1 ms per unit of X-Cost, give or take the loopback's overhead.
    let slope = fit["slope_seconds_per_unit"].as_f64().unwrap();
    assert!((0.0008..0.0013).contains(&slope), "{fit}");
    // Two at once on the one backend: the second waited behind the first, and is not learned.
    let (first, second) = tokio::join!(delayed(300), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        delayed(10).await
    });
    assert_eq!(first.unwrap().status(), StatusCode::OK);
    assert_eq!(second.unwrap().status(), StatusCode::OK);
    assert_eq!(x_cost().await["samples"], 6);
}

// ---------------------------------------------------------------------------------------
// Late binding (issue #17)

const WORKER_RULE: &str =
    "POST /submit class=/operation size=/data/iterations|/data/limit|/data/seconds";

fn sleep_job(seconds: f64) -> Value {
    json!({"operation": "sleep", "data": {"seconds": seconds}})
}

async fn one_thread_worker(id: &str) -> TestWorker {
    TestWorker::start_with(worker::Config {
        worker_id: Some(id.to_owned()),
        threads: Some(1),
        ..worker::Config::default()
    })
    .await
}

/// A balancer in front of `workers`, each taking one request at once, with the worker's cost
/// rule; `extra` are more command-line settings.
async fn late_binding_balancer(workers: &[&TestWorker], extra: &[&str]) -> TestBalancer {
    let mut args = vec!["--cost-rules", WORKER_RULE, "--backend-concurrency", "1"];
    args.extend_from_slice(extra);
    let parsed = support::parsed_config(&args);
    let addresses: Vec<_> = workers.iter().map(|worker| worker.address).collect();
    TestBalancer::start(Config {
        cost_rules: parsed.cost_rules,
        backend_concurrency: parsed.backend_concurrency,
        max_queue_delay_factor: parsed.max_queue_delay_factor,
        ..support::static_config(&addresses)
    })
    .await
}

/// Sleep jobs of 50 and 300 ms, one at a time, so that the fits know what `seconds` costs.
async fn learn_sleep(balancer: &TestBalancer) {
    for seconds in [0.05, 0.3, 0.05, 0.3] {
        let answer = balancer.post_json("/submit", &sleep_job(seconds)).await;
        assert_eq!(answer.status(), StatusCode::OK);
    }
}

/// Waits until `/backends` satisfies `ready`.
async fn until_backends(
    balancer: &TestBalancer,
    what: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let view = balancer.backends().await;
        if ready(&view) {
            return view;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never {what}: {view}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn waiting(view: &Value) -> u64 {
    view["queue"]["waiting"].as_u64().unwrap()
}

fn busy(view: &Value) -> Vec<String> {
    view["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|backend| backend["in_flight"].as_u64() > Some(0))
        .map(|backend| backend["dns_name"].as_str().unwrap().to_owned())
        .collect()
}

/// Sends a sleep job; its label and `X-Backend` come back on `done` when it is answered.
fn send_sleep(
    balancer: &TestBalancer,
    label: &'static str,
    seconds: f64,
    done: &tokio::sync::mpsc::UnboundedSender<(&'static str, String, Duration)>,
) -> tokio::task::JoinHandle<()> {
    let url = balancer.url("/submit");
    let done = done.clone();
    tokio::spawn(async move {
        let sent = Instant::now();
        let answer = reqwest::Client::new()
            .post(url)
            .json(&sleep_job(seconds))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "{label}");
        let backend = answer.headers()["x-backend"].to_str().unwrap().to_owned();
        let _ = done.send((label, backend, sent.elapsed()));
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_short_job_waits_behind_a_long_one_and_the_queue_drains_cheapest_first() {
    let a = one_thread_worker("late-a").await;
    let b = one_thread_worker("late-b").await;
    let balancer = late_binding_balancer(&[&a, &b], &[]).await;
    let view = balancer.backends().await;
    assert_eq!(
        view["policy"], "least-work",
        "the default once costs are known"
    );
    assert!(
        view["backends"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["slots"] == 1),
        "{view}"
    );
    learn_sleep(&balancer).await;
    let (done, mut answers) = tokio::sync::mpsc::unbounded_channel();

    // One worker busy with a long job; five short ones arrive at once.
    let long = send_sleep(&balancer, "long", 2.0, &done);
    let view = until_backends(&balancer, "busy with the long job", |v| busy(v).len() == 1).await;
    let long_backend = busy(&view).remove(0);
    let shorts: Vec<_> = (0..5)
        .map(|_| send_sleep(&balancer, "short", 0.1, &done))
        .collect();
    for _ in 0..5 {
        let (label, backend, took) = answers.recv().await.unwrap();
        assert_eq!(
            label, "short",
            "every short job is answered before the long one"
        );
        assert_ne!(backend, long_backend, "a short job went to the busy worker");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
    let (label, backend, _) = answers.recv().await.unwrap();
    assert_eq!((label, backend), ("long", long_backend));
    long.await.unwrap();
    for short in shorts {
        short.await.unwrap();
    }

    // Both workers busy (1 s and 2 s); three jobs queue, the dearest first.
    let _first = send_sleep(&balancer, "busy-1s", 1.0, &done);
    let _second = send_sleep(&balancer, "busy-3s", 3.0, &done);
    until_backends(&balancer, "both busy", |v| busy(v).len() == 2).await;
    for (n, (label, seconds)) in [("0.6s", 0.6), ("0.4s", 0.4), ("0.2s", 0.2)]
        .into_iter()
        .enumerate()
    {
        send_sleep(&balancer, label, seconds, &done);
        until_backends(&balancer, "queued", |v| waiting(v) == n as u64 + 1).await;
    }
    let view = balancer.backends().await;
    let queued = view["queue"]["work_seconds"].as_f64().unwrap();
    assert!(
        (queued - 1.2).abs() < 0.3,
        "the queue knows its work: {view}"
    );
    let mut order = Vec::new();
    while order.len() < 5 {
        order.push(answers.recv().await.unwrap().0);
    }
    // The 1 s worker frees first and drains the queue cheapest first; FIFO would answer
    // 0.6 s first.
    assert_eq!(order, ["busy-1s", "0.2s", "0.4s", "0.6s", "busy-3s"]);
    let metrics = balancer.metrics().await;
    let outcome = |outcome: &str| {
        support::metric(
            &metrics,
            &format!("balancer_work_queue_requests_total{{outcome=\"{outcome}\"}}"),
        )
    };
    assert!(outcome("queued") >= 3, "{metrics}");
    assert_eq!(outcome("granted"), outcome("queued"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aging_bounds_how_long_a_dear_job_is_passed_over() {
    let worker = one_thread_worker("aging").await;
    for (factor, dear_first) in [("1", true), ("100", false)] {
        let balancer =
            late_binding_balancer(&[&worker], &["--max-queue-delay-factor", factor]).await;
        learn_sleep(&balancer).await;
        let (done, mut answers) = tokio::sync::mpsc::unbounded_channel();
        send_sleep(&balancer, "busy", 1.0, &done);
        until_backends(&balancer, "busy", |v| busy(v).len() == 1).await;
        // The dear job waits: with factor 1 it is overdue 0.3 s after it queued.
        send_sleep(&balancer, "dear", 0.3, &done);
        until_backends(&balancer, "queued", |v| waiting(v) == 1).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        // Cheaper ones arrive after that.
        for n in 0..4 {
            send_sleep(&balancer, "cheap", 0.05, &done);
            until_backends(&balancer, "queued", |v| waiting(v) == n + 2).await;
        }
        let mut order = Vec::new();
        while order.len() < 6 {
            order.push(answers.recv().await.unwrap().0);
        }
        assert_eq!(order[0], "busy");
        let dear_at = order.iter().position(|label| *label == "dear").unwrap();
        if dear_first {
            assert_eq!(
                dear_at, 1,
                "factor {factor}: overdue, it goes first: {order:?}"
            );
        } else {
            assert_eq!(dear_at, 5, "factor {factor}: passed over by all: {order:?}");
        }
        let metrics = balancer.metrics().await;
        let overdue = support::metric(
            &metrics,
            "balancer_work_queue_requests_total{outcome=\"overdue\"}",
        );
        assert_eq!(overdue > 0, dear_first, "{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_request_leaves_the_queue_when_its_client_goes_and_full_or_late_ones_get_503() {
    use tokio::io::AsyncWriteExt;
    let worker = one_thread_worker("leave").await;
    let balancer = late_binding_balancer(&[&worker], &[]).await;
    let (done, mut answers) = tokio::sync::mpsc::unbounded_channel();
    send_sleep(&balancer, "busy", 1.0, &done);
    until_backends(&balancer, "busy", |v| busy(v).len() == 1).await;
    // A raw client queues a job, then hangs up.
    let body = sleep_job(0.1).to_string();
    let mut client = tokio::net::TcpStream::connect(balancer.address)
        .await
        .unwrap();
    let request = format!(
        "POST /submit HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    client.write_all(request.as_bytes()).await.unwrap();
    until_backends(&balancer, "queued", |v| waiting(v) == 1).await;
    drop(client);
    if support::http1_fast_path() {
        // Gone long before the busy job ends.
        let view = until_backends(&balancer, "left", |v| waiting(v) == 0).await;
        assert_eq!(busy(&view).len(), 1, "{view}");
        let metrics = balancer.metrics().await;
        let cancelled = "balancer_work_queue_requests_total{outcome=\"cancelled\"}";
        assert_eq!(support::metric(&metrics, cancelled), 1, "{metrics}");
    }
    let (label, _, _) = answers.recv().await.unwrap();
    assert_eq!(label, "busy");
    drop(balancer);

    // One slot, one place in the queue, a short timeout.
    let parsed = support::parsed_config(&["--cost-rules", WORKER_RULE]);
    let balancer = TestBalancer::start(Config {
        cost_rules: parsed.cost_rules,
        backend_concurrency: 1,
        queue_capacity: 1,
        queue_timeout: Duration::from_millis(300),
        ..support::static_config(&[worker.address])
    })
    .await;
    send_sleep(&balancer, "busy", 1.5, &done);
    until_backends(&balancer, "busy", |v| busy(v).len() == 1).await;
    let late = tokio::spawn({
        let url = balancer.url("/submit");
        async move {
            reqwest::Client::new()
                .post(url)
                .json(&sleep_job(0.1))
                .send()
                .await
                .unwrap()
        }
    });
    until_backends(&balancer, "queued", |v| waiting(v) == 1).await;
    let full = balancer.post_json("/submit", &sleep_job(0.1)).await;
    assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(full.headers().contains_key("retry-after"));
    let error: Value = full.json().await.unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("queue is full"),
        "{error}"
    );
    let late = late.await.unwrap();
    assert_eq!(late.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(late.headers().contains_key("retry-after"));
    let error: Value = late.json().await.unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("stayed busy"),
        "{error}"
    );
    let (label, _, _) = answers.recv().await.unwrap();
    assert_eq!(label, "busy");
}

// ---------------------------------------------------------------------------------------
// Proxying

#[tokio::test]
async fn worker_api_bodies_and_statuses_pass_through() {
    let worker = TestWorker::start("worker-a").await;
    let balancer = TestBalancer::start(support::static_config(&[worker.address])).await;

    // Seed 002: POST /submit, the body decides the answer.
    let primes = balancer
        .post_json(
            "/submit",
            &json!({"operation": "primes", "data": {"limit": 1000}}),
        )
        .await;
    assert_eq!(primes.status(), StatusCode::OK);
    assert_eq!(backend_of(&primes), worker.address.to_string());
    let primes: Value = primes.json().await.unwrap();
    assert_eq!(primes["result"], 168);
    assert_eq!(primes["worker_id"], "worker-a");

    // Seed 000: POST /work; the stress client: GET /consume_cpu/N.
    let work: Value = balancer
        .post_json("/work", &json!({"intensity": 3}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(work["intensity"], 3);
    let cpu: Value = balancer.get("/consume_cpu/2").await.json().await.unwrap();
    assert_eq!(cpu["intensity"], 2);

    // The worker's own errors come back unchanged: status and JSON body.
    let bad = balancer
        .post_json("/submit", &json!({"operation": "nope"}))
        .await;
    let (status, message) = json_error(bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("unknown operation `nope`"), "{message}");
    for (method, expected) in [
        (reqwest::Method::PUT, StatusCode::METHOD_NOT_ALLOWED),
        (reqwest::Method::DELETE, StatusCode::METHOD_NOT_ALLOWED),
    ] {
        let response = balancer
            .client
            .request(method.clone(), balancer.url("/submit"))
            .body("{}")
            .send()
            .await
            .unwrap();
        let (status, message) = json_error(response).await;
        assert_eq!(status, expected);
        assert_eq!(
            message,
            format!("method {method} is not allowed on /submit")
        );
    }
    let missing = balancer.get("/no/such/route?x=1").await;
    let (status, message) = json_error(missing).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(message, "no route for GET /no/such/route");
}

#[tokio::test]
async fn methods_headers_query_and_bodies_are_preserved() {
    let echo = EchoBackend::start("echo-1").await;
    let balancer = TestBalancer::start(support::static_config(&[echo.address])).await;
    for method in ["GET", "POST", "PUT", "DELETE"] {
        let body = format!("{method} body \u{1F600}");
        let response = balancer
            .client
            .request(
                method.parse().unwrap(),
                balancer.url("/items/42?q=a%20b&x=1&x=2&status=201"),
            )
            .header("x-custom", "one")
            .header("x-multi", "a")
            .header("x-multi", "b")
            .header("authorization", "Bearer token")
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "must not pass")
            .header("x-forwarded-for", "10.9.8.7")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "{method}");
        assert_eq!(backend_of(&response), echo.address.to_string());
        assert_eq!(response.headers()["x-echo"], "yes");
        assert!(
            response.headers().get("keep-alive").is_none(),
            "hop-by-hop answer header"
        );
        let echoed: Value = response.json().await.unwrap();
        assert_eq!(echoed["method"], method);
        assert_eq!(echoed["path"], "/items/42");
        assert_eq!(echoed["query"], "q=a%20b&x=1&x=2&status=201");
        assert_eq!(echoed["body"], body);
        let headers = &echoed["headers"];
        assert_eq!(headers["x-custom"], "one");
        assert_eq!(headers["x-multi"], json!(["a", "b"]));
        assert_eq!(headers["authorization"], "Bearer token");
        assert_eq!(headers["host"], balancer.address.to_string());
        assert_eq!(headers["x-forwarded-for"], "10.9.8.7, 127.0.0.1");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], balancer.address.to_string());
        assert!(headers.get("x-hop").is_none(), "{headers}");
        assert!(
            headers.get("connection").is_none() || headers["connection"] != "keep-alive, x-hop"
        );
        assert_eq!(headers["content-length"], body.len().to_string());
    }
    // A 5xx that is not 502/503 passes through untouched, even for GET.
    let response = balancer.get("/status/500").await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(response.text().await.unwrap(), "status 500");
    // HEAD keeps its headers and has no body.
    let head = balancer
        .client
        .head(balancer.url("/items"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert!(head.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn h2c_clients_are_served() {
    let worker = TestWorker::start("worker-h2").await;
    let balancer = TestBalancer::start(support::static_config(&[worker.address])).await;
    let stream = tokio::net::TcpStream::connect(balancer.address)
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::post(format!("http://{}/submit", balancer.address))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"operation":"primes","data":{"limit":100}}"#,
        )))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-backend"], worker.address.to_string());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["result"], 25);
}

#[tokio::test]
async fn large_bodies_stream_with_bounded_memory() {
    const SIZE: u64 = 100 << 20;
    // The real worker receives the upload (it accepts bodies this large when told to).
    let worker = TestWorker::start_with(worker::Config {
        worker_id: Some("worker-big".into()),
        max_body_bytes: 110 << 20,
        ..worker::Config::default()
    })
    .await;
    let echo = EchoBackend::start("echo-big").await;
    let backends = format!("{},{}", worker.address, echo.address);
    // Round-robin over [worker, echo]: the upload goes to the worker, the download to echo.
    let balancer = BalancerProcess::spawn(&["--backends", &backends, "--policy", "round-robin"]);
    let baseline = balancer.peak_rss_kib();

    // 100 MB up, streamed with Content-Length, to POST /submit: a valid JSON job whose padding
    // field the worker ignores. The answer proves every byte arrived.
    let prefix = r#"{"operation":"sleep","data":{"seconds":0},"pad":""#;
    let suffix = r#""}"#;
    let stream = tokio::net::TcpStream::connect(balancer.address)
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = http::Request::post("/submit")
        .header("host", "balancer")
        .header("content-type", "application/json")
        .body(Generated::new(prefix, suffix, SIZE, 256 << 10, true))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    assert_eq!(response.headers()["x-backend"], worker.address.to_string());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["operation"], "sleep");
    assert_eq!(body["worker_id"], "worker-big");

    // 100 MB down from a backend that streams it, read slowly in chunks.
    let mut response = reqwest::get(balancer.url(&format!("/download/{SIZE}")))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(backend_of(&response), echo.address.to_string());
    assert_eq!(response.content_length(), Some(SIZE));
    let mut received = 0u64;
    while let Some(chunk) = response.chunk().await.unwrap() {
        received += chunk.len() as u64;
    }
    assert_eq!(received, SIZE);

    let peak = balancer.peak_rss_kib();
    assert!(
        peak < baseline + 48 * 1024,
        "the balancer's peak memory grew from {baseline} KiB to {peak} KiB while 2 x 100 MB passed"
    );
}

#[tokio::test]
async fn websocket_upgrade_is_proxied() {
    let echo = EchoBackend::start("echo-ws").await;
    let balancer = TestBalancer::start(support::static_config(&[echo.address])).await;
    let (mut ws, response) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws", balancer.address))
            .await
            .unwrap();
    assert_eq!(response.status(), 101);
    assert_eq!(response.headers()["x-backend"], echo.address.to_string());
    for text in ["hello", "through the balancer"] {
        ws.send(Message::text(text)).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_data().as_ref(), [1, 2, 3]);
    ws.close(None).await.unwrap();
    // Plain requests still work next to the tunnel.
    assert_eq!(balancer.get("/plain").await.status(), 200);
}

// ---------------------------------------------------------------------------------------
// Routing

#[tokio::test]
async fn weighted_random_distribution_matches_the_scores() {
    let workers = [
        TestWorker::start("w-10").await,
        TestWorker::start("w-30").await,
        TestWorker::start("w-60").await,
    ];
    let scores = [10.0, 30.0, 60.0];
    let items = workers
        .iter()
        .zip(scores)
        .map(|(w, score)| item(&w.id, w.address, score, Category::Low))
        .collect();
    let agent = WsAgent::start(items).await;
    let balancer = TestBalancer::start(Config {
        policy: Policy::WeightedRandom.into(),
        seed: Some(20_240_601),
        ..support::agent_config(&agent.url(), None)
    })
    .await;
    balancer.wait_ready().await;

    const N: usize = 3000;
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..6 {
        let client = balancer.client.clone();
        let url = balancer.url("/health");
        tasks.spawn(async move {
            let mut seen = Vec::new();
            for _ in (task..N).step_by(6) {
                let response = client.get(&url).send().await.unwrap();
                assert_eq!(response.status(), 200);
                seen.push(backend_of(&response));
            }
            seen
        });
    }
    while let Some(seen) = tasks.join_next().await {
        for name in seen.unwrap() {
            *counts.entry(name).or_default() += 1;
        }
    }
    // Pearson's chi-square against shares 0.1 / 0.3 / 0.6; 2 degrees of freedom, p = 0.001.
    let chi2: f64 = workers
        .iter()
        .zip(scores)
        .map(|(w, score)| {
            let expected = N as f64 * score / 100.0;
            let observed = counts.get(&w.id).copied().unwrap_or(0) as f64;
            (observed - expected).powi(2) / expected
        })
        .sum();
    assert!(chi2 < 13.82, "chi2 = {chi2:.2}, counts = {counts:?}");
    assert_eq!(counts.values().sum::<usize>(), N);
}

#[tokio::test]
async fn every_policy_spreads_requests_over_the_workers() {
    let workers = [
        TestWorker::start("p-a").await,
        TestWorker::start("p-b").await,
    ];
    for policy in [
        Policy::WeightedRandom,
        Policy::P2cEwma,
        Policy::LeastRequest,
        Policy::RoundRobin,
    ] {
        let balancer = TestBalancer::start(Config {
            policy: policy.into(),
            ..support::static_config(&[workers[0].address, workers[1].address])
        })
        .await;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let client = balancer.client.clone();
            let url = balancer.url("/consume_cpu/1");
            tasks.spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..25 {
                    let response = client.get(&url).send().await.unwrap();
                    assert_eq!(response.status(), 200);
                    seen.push(backend_of(&response));
                }
                seen
            });
        }
        let mut names = std::collections::HashSet::new();
        while let Some(seen) = tasks.join_next().await {
            names.extend(seen.unwrap());
        }
        assert_eq!(names.len(), 2, "{policy}: {names:?}");
    }
}

#[tokio::test]
async fn sundown_backends_get_no_new_requests_but_finish_in_flight_ones() {
    let old = TestWorker::start("old").await;
    let new = TestWorker::start("new").await;
    let agent = WsAgent::start(vec![item("old", old.address, 80.0, Category::Low)]).await;
    let balancer = TestBalancer::start(support::agent_config(&agent.url(), None)).await;
    balancer.wait_ready().await;

    // A slow job is running on `old` when it is put in SUNDOWN.
    let slow = {
        let client = balancer.client.clone();
        let url = balancer.url("/submit");
        tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"operation": "sleep", "data": {"seconds": 1.0}}))
                .send()
                .await
                .unwrap()
        })
    };
    wait_for(
        "the slow job to be in flight",
        Duration::from_secs(5),
        || async { balancer.backends().await["backends"][0]["in_flight"] == 1 },
    )
    .await;
    agent.publish(vec![
        item("old", old.address, 90.0, Category::Sundown),
        item("new", new.address, 20.0, Category::High),
    ]);
    wait_for("the SUNDOWN snapshot", Duration::from_secs(5), || async {
        balancer.backends().await["backends"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["dns_name"] == "old" && b["accepts_new_requests"] == false)
    })
    .await;
    for _ in 0..30 {
        let response = balancer.get("/health").await;
        assert_eq!(response.status(), 200);
        assert_eq!(backend_of(&response), "new", "SUNDOWN got a new request");
    }
    let slow = slow.await.unwrap();
    assert_eq!(slow.status(), 200, "the in-flight request finished");
    assert_eq!(backend_of(&slow), "old");
    let view = balancer.backends().await;
    let old_view = view["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["dns_name"] == "old")
        .unwrap()
        .clone();
    assert_eq!(old_view["in_flight"], 0);
    assert_eq!(old_view["category"], "SUNDOWN");
}

// ---------------------------------------------------------------------------------------
// Resilience

#[tokio::test]
async fn killing_a_backend_under_load_fails_no_get() {
    let chaos = |id: &str| worker::Config {
        worker_id: Some(id.into()),
        work_unit: 200_000,
        chaos: true,
        ..worker::Config::default()
    };
    let a = TestWorker::start_with(chaos("k-a")).await;
    let mut b = TestWorker::start_with(chaos("k-b")).await;
    let c = TestWorker::start_with(chaos("k-c")).await;
    let balancer = TestBalancer::start(Config {
        policy: Policy::RoundRobin.into(),
        ..support::static_config(&[a.address, b.address, c.address])
    })
    .await;

    let served = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(Instant, String)>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let client = balancer.client.clone();
        let url = balancer.url("/consume_cpu/1");
        let served = served.clone();
        let stop = stop.clone();
        load.spawn(async move {
            let mut failures = Vec::new();
            let started = Instant::now();
            // GETs until told to stop (bounded, in case the test fails before).
            while !stop.load(std::sync::atomic::Ordering::SeqCst)
                && started.elapsed() < Duration::from_secs(30)
            {
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        served
                            .lock()
                            .unwrap()
                            .push((Instant::now(), backend_of(&r)));
                    }
                    Ok(r) => failures.push(format!(
                        "{}: {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    )),
                    Err(err) => failures.push(err.to_string()),
                }
            }
            failures
        });
    }
    wait_for("load to reach k-b", Duration::from_secs(10), || async {
        served
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, n)| n == &b.address.to_string())
            .count()
            >= 10
    })
    .await;
    b.crash().await;
    let crashed_at = Instant::now();
    // The load goes on for a while after the crash.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut failures = Vec::new();
    while let Some(result) = load.join_next().await {
        failures.extend(result.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} GETs failed: {failures:?}",
        failures.len()
    );
    let served = served.lock().unwrap().clone();
    let after = served
        .iter()
        .filter(|(t, _)| *t > crashed_at + Duration::from_millis(200))
        .count();
    assert!(after > 0, "load continued after the crash");
    assert!(
        served
            .iter()
            .filter(|(t, _)| *t > crashed_at + Duration::from_millis(200))
            .all(|(_, name)| name != &b.address.to_string()),
        "nothing is served by the dead backend"
    );
    // Requests caught on the dying backend, or sent to it before it was ejected, were retried.
    let metrics = balancer.metrics().await;
    let retries: u64 = metrics
        .lines()
        .filter(|line| line.starts_with("balancer_retries_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(retries > 0, "{metrics}");
}

#[tokio::test]
async fn connect_failures_are_retried_elsewhere_and_the_backend_ejected() {
    let worker = TestWorker::start("alive").await;
    let dead: SocketAddr = format!("127.0.0.1:{}", support::free_port())
        .parse()
        .unwrap();
    let balancer = TestBalancer::start(Config {
        policy: Policy::RoundRobin.into(),
        eject_after: 2,
        eject_base: Duration::from_secs(30),
        ..support::static_config(&[dead, worker.address])
    })
    .await;
    for _ in 0..20 {
        let response = balancer.get("/health").await;
        assert_eq!(response.status(), 200);
        assert_eq!(backend_of(&response), worker.address.to_string());
    }
    let view = balancer.backends().await;
    let dead_view = view["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == dead.to_string())
        .unwrap()
        .clone();
    assert_eq!(dead_view["ejected"], true, "{view}");
    assert_eq!(
        dead_view["consecutive_connect_failures"], 2,
        "ejected: no more attempts"
    );
    assert!(
        balancer
            .metrics()
            .await
            .contains("balancer_retries_total{reason=\"connect\"} 2")
    );
}

#[tokio::test]
async fn idempotent_requests_retry_a_503_on_another_backend() {
    // `busy` has one thread and no queue: while a job runs there, it answers 503.
    let busy = TestWorker::start_with(worker::Config {
        worker_id: Some("busy".into()),
        threads: Some(1),
        queue_capacity: 0,
        ..worker::Config::default()
    })
    .await;
    let idle = TestWorker::start("idle").await;
    let direct = reqwest::Client::new();
    let blocker = tokio::spawn({
        let url = format!("http://{}/submit", busy.address);
        let client = direct.clone();
        async move {
            client
                .post(url)
                .json(&json!({"operation": "sleep", "data": {"seconds": 2.0}}))
                .send()
                .await
                .unwrap()
        }
    });
    wait_for("busy to be saturated", Duration::from_secs(5), || async {
        let stats: Value = direct
            .get(format!("http://{}/stats", busy.address))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        stats["in_flight"] == 1
    })
    .await;
    let balancer = TestBalancer::start(Config {
        policy: Policy::RoundRobin.into(),
        ..support::static_config(&[busy.address, idle.address])
    })
    .await;
    let mut reached_busy_without_retry = false;
    for _ in 0..6 {
        // GET: retried once on the other backend.
        let response = balancer.get("/consume_cpu/1").await;
        assert_eq!(response.status(), 200);
        assert_eq!(backend_of(&response), idle.address.to_string());
        // POST with an Idempotency-Key: retried too.
        let response = balancer
            .client
            .post(balancer.url("/work"))
            .header("idempotency-key", "k-1")
            .json(&json!({"intensity": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        // POST without one: never retried; the 503 comes back as it is.
        let response = balancer.post_json("/work", &json!({"intensity": 1})).await;
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(backend_of(&response), busy.address.to_string());
            assert!(response.headers().contains_key("retry-after"));
            reached_busy_without_retry = true;
        }
    }
    assert!(
        reached_busy_without_retry,
        "a plain POST reached the busy worker"
    );
    assert!(
        balancer
            .metrics()
            .await
            .contains("balancer_retries_total{reason=\"status\"}")
    );
    assert_eq!(blocker.await.unwrap().status(), 200);
}

#[tokio::test]
async fn request_timeout_answers_504() {
    let worker = TestWorker::start("slow").await;
    let balancer = TestBalancer::start(Config {
        request_timeout: Duration::from_millis(300),
        ..support::static_config(&[worker.address])
    })
    .await;
    let started = Instant::now();
    let response = balancer
        .post_json(
            "/submit",
            &json!({"operation": "sleep", "data": {"seconds": 3.0}}),
        )
        .await;
    let (status, message) = json_error(response).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(message.contains("did not answer"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(balancer.get("/health").await.status(), 200);
}

/// A backend whose node lost power neither answers nor resets; the agent drops it from its
/// queue within seconds. The GET waiting for its answer goes to another backend at once; a
/// POST, which may not be sent twice, keeps waiting for the lost backend.
#[tokio::test]
async fn requests_awaiting_a_backend_that_leaves_the_queue_are_retried_elsewhere() {
    let lost = RawBackend::start(Misbehaviour::Silent).await;
    let live = EchoBackend::start("live").await;
    // `live` has no weight while `lost` is listed: every request goes to `lost`, with `live`
    // there to retry on.
    let agent = WsAgent::start(vec![
        item("lost", lost.address, 100.0, Category::Low),
        item("live", live.address, 0.0, Category::Low),
    ])
    .await;
    let request_timeout = Duration::from_secs(30);
    let balancer = TestBalancer::start(Config {
        policy: Policy::WeightedRandom.into(),
        request_timeout,
        ..support::agent_config(&agent.url(), None)
    })
    .await;
    balancer.wait_ready().await;

    let get = tokio::spawn({
        let request = balancer.client.get(balancer.url("/after-loss"));
        async move { request.send().await }
    });
    let post = tokio::spawn({
        let request = balancer
            .client
            .post(balancer.url("/work"))
            .json(&json!({"intensity": 1}));
        async move { request.send().await }
    });
    wait_for(
        "both requests to reach the lost backend",
        Duration::from_secs(10),
        || async { lost.seen() == 2 },
    )
    .await;

    // The agent learns of the node's loss.
    agent.publish(vec![item("live", live.address, 100.0, Category::Low)]);
    let removed_at = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(5), get)
        .await
        .expect("the GET still waits for the lost backend")
        .unwrap()
        .unwrap();
    let answered_in = removed_at.elapsed();
    assert_eq!(response.status(), 200);
    assert_eq!(backend_of(&response), "live");
    assert_eq!(live.hits("/after-loss"), 1);
    println!("GET answered by another backend {answered_in:?} after its backend left the queue");
    let metrics = balancer.metrics().await;
    assert!(
        metrics.contains("balancer_retries_total{reason=\"removed\"} 1"),
        "{metrics}"
    );

    // The POST was not sent again: it still waits for the lost backend, which may answer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!post.is_finished(), "the POST gave up on its backend");
    assert_eq!(live.hits("/work"), 0);
    // The lost backend closes its connections instead: the POST fails, and only then.
    drop(lost);
    let response = tokio::time::timeout(Duration::from_secs(10), post)
        .await
        .expect("the POST outlived its backend's connection")
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(live.hits("/work"), 0, "a POST was sent twice");
    let metrics = balancer.metrics().await;
    assert!(
        metrics.contains("balancer_retries_total{reason=\"removed\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn agent_websocket_drop_keeps_routing_then_reconnects() {
    let first = TestWorker::start("first").await;
    let second = TestWorker::start("second").await;
    let mut agent = WsAgent::start(vec![item("first", first.address, 70.0, Category::Low)]).await;
    let balancer = TestBalancer::start(support::agent_config(&agent.url(), None)).await;
    balancer.wait_ready().await;
    assert_eq!(backend_of(&balancer.get("/health").await), "first");
    assert_eq!(agent.connections(), 1);

    agent.stop();
    wait_for(
        "the balancer to notice",
        Duration::from_secs(10),
        || async { balancer.backends().await["agent_connected"] == false },
    )
    .await;
    for _ in 0..10 {
        let response = balancer.get("/health").await;
        assert_eq!(
            response.status(),
            200,
            "routing continues on the last known set"
        );
        assert_eq!(backend_of(&response), "first");
    }
    // While the agent is away the queue changes; after reconnecting the balancer has it.
    agent.publish(vec![item("second", second.address, 70.0, Category::Low)]);
    agent.restart().await;
    balancer.wait_routed_to("/health", "second").await;
    assert_eq!(agent.connections(), 2);
    assert_eq!(balancer.backends().await["agent_connected"], true);
}

/// Load reports carry `authorization: Bearer <AGENT_TOKEN>`: an agent that requires the token
/// gets them; with a wrong token or none, the agent refuses every report stream.
#[tokio::test]
async fn load_reports_carry_the_agent_token() {
    let grpc = GrpcAgent::start().await;
    let nowhere = format!("ws://127.0.0.1:{}/ws", support::free_port());
    let reporting = |token: Option<&str>| Config {
        report_interval: Duration::from_millis(100),
        agent_token: token.map(str::to_owned),
        ..support::agent_config(&nowhere, Some(grpc.url()))
    };
    let balancer = TestBalancer::start(reporting(Some(support::agent::AGENT_TOKEN))).await;
    wait_for(
        "reports with the token",
        Duration::from_secs(10),
        || async { grpc.reports().len() >= 3 },
    )
    .await;
    assert_eq!(grpc.refused(), 0);
    drop(balancer);
    tokio::time::sleep(Duration::from_millis(500)).await; // its last report lands

    for token in [None, Some("wrong")] {
        let received = grpc.reports().len();
        let refused = grpc.refused();
        let balancer = TestBalancer::start(reporting(token)).await;
        wait_for(
            "a refused report stream",
            Duration::from_secs(10),
            || async { grpc.refused() > refused },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(balancer);
        assert_eq!(
            grpc.reports().len(),
            received,
            "{token:?}: a report got through"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Several agents

/// Sends `GET /health` through the balancer until `stop`, counting answers by `X-Backend`
/// (`""` for a non-200 answer or an error).
fn steady_load(
    balancer: &TestBalancer,
    stop: common::CancellationToken,
) -> tokio::task::JoinHandle<HashMap<String, usize>> {
    let client = balancer.client.clone();
    let url = balancer.url("/health");
    tokio::spawn(async move {
        let mut seen = HashMap::new();
        while !stop.is_cancelled() {
            let backend = match client.get(&url).send().await {
                Ok(response) if response.status() == 200 => backend_of(&response),
                _ => String::new(),
            };
            *seen.entry(backend).or_insert(0) += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen
    })
}

/// With two agents, the balancer follows the first; when it dies, the second within the
/// reconnect backoff, without a failed request. Every agent gets the load reports.
#[tokio::test]
async fn the_balancer_follows_the_next_agent_when_its_agent_dies() {
    let first = TestWorker::start("first").await;
    let second = TestWorker::start("second").await;
    // The follower relays the same epoch; its seq may be behind (another connection).
    let mut agent_1 = WsAgent::start_at(
        1,
        7,
        vec![item("first", first.address, 70.0, Category::Low)],
    )
    .await;
    let agent_2 = WsAgent::start_at(
        1,
        3,
        vec![item("second", second.address, 70.0, Category::Low)],
    )
    .await;
    let (grpc_1, grpc_2) = (GrpcAgent::start().await, GrpcAgent::start().await);
    let balancer = TestBalancer::start(Config {
        report_interval: Duration::from_millis(100),
        ..support::agents_config(
            &[agent_1.url(), agent_2.url()],
            &[grpc_1.url(), grpc_2.url()],
        )
    })
    .await;
    balancer.wait_routed_to("/health", "first").await;
    let view = balancer.backends().await;
    assert_eq!(view["agent_connected"], true);
    assert_eq!(view["agent_url"], agent_1.url());
    assert_eq!(
        (view["epoch"].as_u64(), view["seq"].as_u64()),
        (Some(1), Some(7))
    );
    assert_eq!(
        agent_2.connections(),
        0,
        "the first reachable agent is followed"
    );

    let stop = common::CancellationToken::new();
    let load = steady_load(&balancer, stop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let died = Instant::now();
    agent_1.stop();
    balancer.wait_routed_to("/health", "second").await;
    let switched = died.elapsed();
    println!("followed the second agent {switched:?} after the first died");
    // AGENT_RECONNECT_MAX is 300 ms here: one backoff step, a connect, one snapshot.
    assert!(switched < Duration::from_secs(3), "took {switched:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.cancel();
    let seen = load.await.unwrap();
    assert_eq!(seen.get(""), None, "failed requests: {seen:?}");
    assert!(seen.get("first").is_some_and(|n| *n > 0), "{seen:?}");

    let view = balancer.backends().await;
    assert_eq!(view["agent_connected"], true);
    assert_eq!(view["agent_url"], agent_2.url());
    assert_eq!(
        (view["epoch"].as_u64(), view["seq"].as_u64()),
        (Some(1), Some(3))
    );
    let metrics = balancer.metrics().await;
    assert_eq!(
        support::metric(&metrics, "balancer_agent_url_switches_total"),
        1
    );
    assert_eq!(
        support::metric(&metrics, "balancer_agent_stale_snapshots_total"),
        0
    );
    assert_eq!(support::metric(&metrics, "balancer_agent_connected"), 1);

    // Both agents, leader or not, hear from this balancer, with the same reports.
    wait_for(
        "load reports at both agents",
        Duration::from_secs(10),
        || async { grpc_1.reports().len() >= 3 && grpc_2.reports().len() >= 3 },
    )
    .await;
    for grpc in [&grpc_1, &grpc_2] {
        assert!(
            grpc.reports()
                .iter()
                .all(|r| r.balancer_id == "test-balancer")
        );
    }
    let stamps = |grpc: &GrpcAgent| {
        grpc.reports()
            .iter()
            .map(|r| r.timestamp_ms)
            .collect::<std::collections::HashSet<_>>()
    };
    assert!(
        !stamps(&grpc_1).is_disjoint(&stamps(&grpc_2)),
        "the same reports go to every agent"
    );
    assert_eq!(balancer.stop().await, Stopped::Drained);
}

/// Two stand-in agents on the same port of 127.0.0.1 and 127.0.0.2, as two agent tasks of
/// a Swarm service behind one name.
async fn grpc_agents_on_one_port() -> (GrpcAgent, GrpcAgent) {
    for _ in 0..20 {
        let first = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = first.local_addr().unwrap().port();
        if let Ok(second) = tokio::net::TcpListener::bind(("127.0.0.2", port)).await {
            return (GrpcAgent::start_on(first), GrpcAgent::start_on(second));
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

/// The `report_streams` of `/backends`: `url address` each.
async fn report_streams(balancer: &TestBalancer) -> Vec<String> {
    balancer.backends().await["report_streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|stream| {
            format!(
                "{} {}",
                stream["url"].as_str().unwrap(),
                stream["address"].as_str().unwrap()
            )
        })
        .collect()
}

/// A report URL whose host has several addresses (Swarm's `tasks.deployment-agent`) gets a
/// report stream per address, following the host's addresses: a stream for an address gone
/// ends, one for a new address starts, a failed lookup keeps the streams.
#[tokio::test]
async fn load_reports_go_to_every_address_of_the_agents_host() {
    let (grpc_1, grpc_2) = grpc_agents_on_one_port().await;
    let (ip_1, ip_2) = (grpc_1.address.ip(), grpc_2.address.ip());
    let port = grpc_1.address.port();
    // `None`: the lookup fails.
    let answer = std::sync::Arc::new(std::sync::Mutex::new(Some(vec![ip_2, ip_1])));
    let resolver = balancer::Resolver::from_fn({
        let answer = std::sync::Arc::clone(&answer);
        move |host| {
            assert_eq!(host, "agents.test");
            let answer = answer.lock().unwrap().clone();
            std::future::ready(answer.ok_or_else(|| std::io::Error::other("no such host")))
        }
    });
    let url = format!("http://agents.test:{port}");
    let nowhere = format!("ws://127.0.0.1:{}/ws", support::free_port());
    let balancer = TestBalancer::start(Config {
        report_interval: Duration::from_millis(100),
        agent_resolve_period: Duration::from_millis(200),
        resolver,
        ..support::agents_config(&[nowhere], std::slice::from_ref(&url))
    })
    .await;
    wait_for(
        "load reports at both addresses",
        Duration::from_secs(10),
        || async { grpc_1.reports().len() >= 3 && grpc_2.reports().len() >= 3 },
    )
    .await;
    let both = vec![
        format!("{url} {}", grpc_1.address),
        format!("{url} {}", grpc_2.address),
    ];
    assert_eq!(report_streams(&balancer).await, both);
    let metrics = balancer.metrics().await;
    for address in [grpc_1.address, grpc_2.address] {
        let series = format!(
            "balancer_agent_report_stream_reports_total{{url=\"{url}\",address=\"{address}\"}}"
        );
        assert!(metrics.contains(&series), "no {series} in\n{metrics}");
    }

    // A failed lookup: both streams stay.
    *answer.lock().unwrap() = None;
    let before = (grpc_1.reports().len(), grpc_2.reports().len());
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(report_streams(&balancer).await, both);
    assert!(grpc_1.reports().len() >= before.0 + 3);
    assert!(grpc_2.reports().len() >= before.1 + 3);

    // 127.0.0.2 is gone from the name: its stream ends, the other goes on.
    *answer.lock().unwrap() = Some(vec![ip_1]);
    wait_for(
        "the second stream to end",
        Duration::from_secs(5),
        || async { report_streams(&balancer).await.len() == 1 },
    )
    .await;
    assert_eq!(
        report_streams(&balancer).await,
        [format!("{url} {}", grpc_1.address)]
    );
    tokio::time::sleep(Duration::from_millis(500)).await; // its last report lands
    let before = (grpc_1.reports().len(), grpc_2.reports().len());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = (grpc_1.reports().len(), grpc_2.reports().len());
    assert_eq!(after.1, before.1, "reports still reach the address gone");
    assert!(after.0 >= before.0 + 5, "{before:?} -> {after:?}");

    // Back again: a new stream.
    *answer.lock().unwrap() = Some(vec![ip_1, ip_2]);
    wait_for(
        "reports at the address back",
        Duration::from_secs(5),
        || async { grpc_2.reports().len() >= after.1 + 3 },
    )
    .await;
    assert_eq!(report_streams(&balancer).await, both);
    assert!(
        grpc_1
            .reports()
            .iter()
            .chain(&grpc_2.reports())
            .all(|r| r.balancer_id == "test-balancer")
    );
    assert_eq!(grpc_1.refused() + grpc_2.refused(), 0);
    assert_eq!(balancer.stop().await, Stopped::Drained);
}

/// With the system's resolver, a host name URL (`localhost`) reports to the address it
/// resolves to, named as such; an IP address URL gets one stream, never looked up.
#[tokio::test]
async fn load_reports_to_a_host_name_use_the_system_resolver() {
    let grpc = GrpcAgent::start().await;
    let by_ip = GrpcAgent::start().await;
    let url = format!("http://localhost:{}", grpc.address.port());
    let nowhere = format!("ws://127.0.0.1:{}/ws", support::free_port());
    let balancer = TestBalancer::start(Config {
        report_interval: Duration::from_millis(100),
        ..support::agents_config(&[nowhere], &[url.clone(), by_ip.url()])
    })
    .await;
    wait_for(
        "load reports by name and by address",
        Duration::from_secs(10),
        || async { grpc.reports().len() >= 3 && by_ip.reports().len() >= 3 },
    )
    .await;
    let streams = report_streams(&balancer).await;
    assert!(
        streams.contains(&format!("{url} {}", grpc.address)),
        "{streams:?}"
    );
    assert!(
        streams.contains(&format!("{} {}", by_ip.url(), by_ip.address)),
        "{streams:?}"
    );
    assert_eq!(balancer.stop().await, Stopped::Drained);
}

/// The balancer never goes backwards: an agent whose queue is from an older epoch is refused
/// (its backends get nothing) and the next one tried; a newer epoch is taken even with seq 1;
/// within a connection an older snapshot is ignored.
#[tokio::test]
async fn the_balancer_never_applies_an_older_queue() {
    let current = TestWorker::start("current").await;
    let newer = TestWorker::start("newer").await;
    let stale_backend = support::Untouchable::start().await;
    let mut agent_current = WsAgent::start_at(
        2,
        40,
        vec![item("current", current.address, 70.0, Category::Low)],
    )
    .await;
    // A deposed leader, cut off: its queue is from epoch 1, with a higher seq.
    let agent_stale = WsAgent::start_at(
        1,
        90,
        vec![item("stale", stale_backend.address, 100.0, Category::Low)],
    )
    .await;
    let agent_newer = WsAgent::start_at(
        3,
        1,
        vec![item("newer", newer.address, 70.0, Category::Low)],
    )
    .await;
    let balancer = TestBalancer::start(support::agents_config(
        &[agent_current.url(), agent_stale.url(), agent_newer.url()],
        &[support::dead_url()],
    ))
    .await;
    balancer.wait_routed_to("/health", "current").await;

    let stop = common::CancellationToken::new();
    let load = steady_load(&balancer, stop.clone());
    agent_current.stop();
    balancer.wait_routed_to("/health", "newer").await;
    stop.cancel();
    let seen = load.await.unwrap();
    assert_eq!(seen.get(""), None, "failed requests: {seen:?}");
    assert_eq!(seen.get("stale"), None, "{seen:?}");
    assert!(agent_stale.connections() >= 1, "the stale agent was tried");
    assert_eq!(stale_backend.accepted(), 0, "a stale backend was dialled");
    let view = balancer.backends().await;
    assert_eq!(view["agent_url"], agent_newer.url());
    assert_eq!(
        (view["epoch"].as_u64(), view["seq"].as_u64()),
        (Some(3), Some(1))
    );
    let stale = |metrics: &str| support::metric(metrics, "balancer_agent_stale_snapshots_total");
    let refused = stale(&balancer.metrics().await);
    assert!(refused >= 1, "the refusal is counted");

    // Within the connection: a lower seq, or a lower epoch, is ignored; a higher epoch with a
    // restarted seq is applied.
    agent_newer.publish_at(
        3,
        5,
        vec![item("newer", newer.address, 70.0, Category::Low)],
    );
    wait_for("seq 5", Duration::from_secs(10), || async {
        balancer.backends().await["seq"] == 5
    })
    .await;
    let others = vec![item("current", current.address, 70.0, Category::Low)];
    for (epoch, seq) in [(3, 4), (3, 5), (2, 50)] {
        let before = stale(&balancer.metrics().await);
        agent_newer.publish_at(epoch, seq, others.clone());
        wait_for(
            "the snapshot to be dropped",
            Duration::from_secs(10),
            || async { stale(&balancer.metrics().await) > before },
        )
        .await;
        let view = balancer.backends().await;
        assert_eq!(
            (view["epoch"].as_u64(), view["seq"].as_u64()),
            (Some(3), Some(5))
        );
        assert_eq!(backend_of(&balancer.get("/health").await), "newer");
    }
    agent_newer.publish_at(4, 1, others);
    balancer.wait_routed_to("/health", "current").await;
    assert_eq!(agent_newer.connections(), 1, "the connection stayed");
    assert_eq!(stale_backend.accepted(), 0);
    assert_eq!(balancer.stop().await, Stopped::Drained);
}

/// Setting the singular and the plural of an agent list is an error naming both, and a bad
/// entry names the list.
#[test]
fn agent_lists_are_validated_naming_the_variables() {
    let run = |env: &[(&str, &str)]| {
        let output = std::process::Command::new(support::balancer_binary())
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{env:?} was accepted");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    for (env, names) in [
        (
            &[
                ("AGENT_WS_URL", "ws://a:9001/ws"),
                ("AGENT_WS_URLS", "ws://a:9001/ws,ws://b:9001/ws"),
            ][..],
            &["AGENT_WS_URL>", "AGENT_WS_URLS>"][..],
        ),
        (
            &[
                ("AGENT_GRPC_URL", "http://a:9002"),
                ("AGENT_GRPC_URLS", "http://b:9002"),
            ][..],
            &["AGENT_GRPC_URL>", "AGENT_GRPC_URLS>"][..],
        ),
        (
            &[("AGENT_WS_URLS", "ws://a:9001/ws,http://b:9001")][..],
            &["AGENT_WS_URLS"][..],
        ),
        (
            &[("AGENT_GRPC_URLS", "http://a:9002,b:9002")][..],
            &["AGENT_GRPC_URLS"][..],
        ),
    ] {
        let stderr = run(env);
        for name in names {
            assert!(stderr.contains(name), "{env:?}: {stderr}");
        }
    }
}

#[tokio::test]
async fn admission_queue_waits_for_a_backend_and_reports_the_demand() {
    let worker = TestWorker::start("late").await;
    let agent = WsAgent::start(Vec::new()).await;
    let grpc = GrpcAgent::start().await;
    let balancer = TestBalancer::start(Config {
        queue_timeout: Duration::from_secs(20),
        report_interval: Duration::from_millis(100),
        ..support::agent_config(&agent.url(), Some(grpc.url()))
    })
    .await;
    wait_for(
        "the balancer to follow the queue",
        Duration::from_secs(10),
        || async { balancer.backends().await["agent_connected"] == true },
    )
    .await;
    assert_eq!(
        balancer
            .client
            .get(balancer.admin_url("/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::SERVICE_UNAVAILABLE
    );

    let waiting = {
        let client = balancer.client.clone();
        let url = balancer.url("/submit");
        tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"operation": "primes", "data": {"limit": 100}}))
                .send()
                .await
                .unwrap()
        })
    };
    // The demand reaches the agent (so it can scale from zero) ...
    wait_for(
        "a report of queued demand",
        Duration::from_secs(10),
        || async { grpc.reports().iter().any(|r| r.queued_without_backend >= 1) },
    )
    .await;
    assert!(balancer.metrics().await.contains("balancer_queue_depth 1"));
    // ... which starts a container.
    agent.publish(vec![item("late", worker.address, 100.0, Category::Low)]);
    let response = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(backend_of(&response), "late");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["result"], 25);
    // Later reports carry the backend's load.
    wait_for(
        "a report with the backend",
        Duration::from_secs(10),
        || async {
            grpc.reports().iter().any(|r| {
                r.backends
                    .iter()
                    .any(|b| b.address == worker.address.to_string() && b.completed == 1)
            })
        },
    )
    .await;
    wait_for("the demand to be gone", Duration::from_secs(10), || async {
        grpc.reports()
            .last()
            .is_some_and(|r| r.queued_without_backend == 0)
    })
    .await;
    assert!(
        grpc.reports()
            .iter()
            .all(|r| r.balancer_id == "test-balancer")
    );
}

#[tokio::test]
async fn admission_queue_answers_503_with_retry_after_when_no_backend_comes() {
    let agent = WsAgent::start(Vec::new()).await;
    let balancer = TestBalancer::start(Config {
        queue_timeout: Duration::from_millis(300),
        retry_after_secs: 7,
        ..support::agent_config(&agent.url(), None)
    })
    .await;
    wait_for(
        "the balancer to follow the queue",
        Duration::from_secs(10),
        || async { balancer.backends().await["agent_connected"] == true },
    )
    .await;
    let response = balancer.get("/health").await;
    assert_eq!(response.headers()["retry-after"], "7");
    let (status, message) = json_error(response).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(message.contains("no backend became available"), "{message}");

    // Past the queue's capacity, 503 at once.
    let full = TestBalancer::start(Config {
        queue_capacity: 0,
        ..support::agent_config(&agent.url(), None)
    })
    .await;
    let started = Instant::now();
    let response = full.get("/health").await;
    assert!(response.headers().contains_key("retry-after"));
    let (status, message) = json_error(response).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(message.contains("admission queue is full"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn malformed_and_oversized_requests_get_4xx_and_serving_continues() {
    let worker = TestWorker::start("limits").await;
    let echo = EchoBackend::start("sink").await;
    let balancer = TestBalancer::start(Config {
        max_header_bytes: 8 << 10,
        max_body_bytes: 1 << 20,
        policy: Policy::RoundRobin.into(),
        ..support::static_config(&[echo.address])
    })
    .await;
    let timeout = Duration::from_secs(5);

    let garbage = raw_exchange(balancer.address, b"THIS IS NOT HTTP\r\n\r\n", timeout).await;
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage:?}");

    let big_header = format!(
        "GET /x HTTP/1.1\r\nHost: b\r\nX-Big: {}\r\n\r\n",
        "a".repeat(16 << 10)
    );
    let answer = raw_exchange(balancer.address, big_header.as_bytes(), timeout).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    assert!(
        answer.contains("content-type: application/json"),
        "{answer:?}"
    );

    // Beyond hyper's own head buffer: still 431, not a dropped connection.
    let huge_header = format!(
        "GET /x HTTP/1.1\r\nHost: b\r\nX-Huge: {}\r\n\r\n",
        "a".repeat(600 << 10)
    );
    let answer = raw_exchange(balancer.address, huge_header.as_bytes(), timeout).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");

    let declared = "POST /upload HTTP/1.1\r\nHost: b\r\nContent-Length: 5000000\r\n\r\n";
    let answer = raw_exchange(balancer.address, declared.as_bytes(), timeout).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");

    let bad_length = "POST /upload HTTP/1.1\r\nHost: b\r\nContent-Length: lots\r\n\r\n";
    let answer = raw_exchange(balancer.address, bad_length.as_bytes(), timeout).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");

    // A chunked body (no length announced) that outgrows the limit on the way.
    let stream = tokio::net::TcpStream::connect(balancer.address)
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = http::Request::post("/upload")
        .header("host", "b")
        .body(Generated::new("", "", 3 << 20, 64 << 10, false))
        .unwrap();
    match sender.send_request(request).await {
        Ok(response) => assert_eq!(response.status(), 413),
        // The balancer may close the connection before the client finished sending.
        Err(err) => {
            let reset = std::error::Error::source(&err)
                .and_then(|source| source.downcast_ref::<std::io::Error>())
                .is_some_and(|io| {
                    matches!(
                        io.kind(),
                        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                    )
                });
            assert!(
                err.is_canceled() || err.is_closed() || err.is_incomplete_message() || reset,
                "{err}"
            )
        }
    }

    // Within limits, everything still works, through the same balancer.
    let ok = balancer
        .client
        .post(balancer.url("/upload"))
        .body(vec![b'x'; 512 << 10])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let ok: Value = ok.json().await.unwrap();
    assert_eq!(ok["received"], 512 << 10);
    assert_eq!(balancer.get("/health").await.status(), 200);
    assert_eq!(
        balancer
            .client
            .get(balancer.admin_url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    drop(worker);
}

// ---------------------------------------------------------------------------------------
// Cache

#[tokio::test]
async fn cache_hits_expires_and_respects_no_store() {
    let echo = EchoBackend::start("files").await;
    let balancer = TestBalancer::start(Config {
        cache_ttl: Duration::from_millis(400),
        ..support::static_config(&[echo.address])
    })
    .await;
    let get = |path: &'static str| {
        let client = balancer.client.clone();
        let url = balancer.url(path);
        async move {
            let response = client.get(url).send().await.unwrap();
            let cache = response
                .headers()
                .get("x-cache")
                .map(|v| v.to_str().unwrap().to_owned());
            let backend = backend_of(&response);
            (
                cache.unwrap_or_default(),
                backend,
                response.text().await.unwrap(),
            )
        }
    };

    // A static file: MISS, then HIT with the same body, without reaching the backend.
    let (cache, backend, first) = get("/static/app.css").await;
    assert_eq!(
        (cache.as_str(), backend.as_str()),
        ("MISS", echo.address.to_string().as_str())
    );
    let hit_path = "/static/app.css";
    wait_for("the entry to be stored", Duration::from_secs(5), || async {
        get(hit_path).await.0 == "HIT"
    })
    .await;
    let (cache, backend, again) = get("/static/app.css").await;
    assert_eq!(cache, "HIT");
    assert_eq!(again, first);
    assert_eq!(
        backend,
        echo.address.to_string(),
        "a hit names who produced it"
    );
    let fetched = echo.hits("/static/app.css");

    // Expiry after CACHE_TTL: the backend is asked again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (cache, _, fresh) = get("/static/app.css").await;
    assert_eq!(cache, "MISS");
    assert_ne!(fresh, first, "a new answer after expiry");
    assert_eq!(echo.hits("/static/app.css"), fetched + 1);

    // Never stored: no-store, private, Set-Cookie; never served for Authorization.
    for path in [
        "/static/a.css?cc=no-store",
        "/static/b.css?cc=private",
        "/static/c.css?cookie=1",
    ] {
        let url = balancer.url(path);
        for _ in 0..3 {
            let response = balancer.client.get(&url).send().await.unwrap();
            assert_eq!(response.headers()["x-cache"], "MISS", "{path}");
        }
    }
    assert_eq!(echo.hits("/static/a.css"), 3);
    assert_eq!(echo.hits("/static/b.css"), 3);
    assert_eq!(echo.hits("/static/c.css"), 3);
    let with_auth = balancer
        .client
        .get(balancer.url("/static/app.css"))
        .header("authorization", "Bearer x")
        .send()
        .await
        .unwrap();
    assert!(with_auth.headers().get("x-cache").is_none());

    // A dynamic path is cached only when the backend allows it.
    let (cache, _, _) = get("/static/page?cc=public%2C%20max-age%3D60").await;
    assert_eq!(cache, "MISS");
    wait_for(
        "the public page to be cached",
        Duration::from_secs(5),
        || async { get("/static/page?cc=public%2C%20max-age%3D60").await.0 == "HIT" },
    )
    .await;
    let (cache, _, _) = get("/static/page").await;
    assert_eq!(cache, "MISS");
    let (cache, _, _) = get("/static/page").await;
    assert_eq!(cache, "MISS", "no cache headers, no extension: not cached");
    assert!(
        balancer
            .metrics()
            .await
            .contains("balancer_cache_requests_total{result=\"hit\"}")
    );
}

// ---------------------------------------------------------------------------------------
// Admin, process, configuration

/// Sends one `GET /health` on `stream` and reads until the head of the answer, or `timeout`.
/// `None` when nothing came back in time.
async fn health_on(stream: &mut tokio::net::TcpStream, timeout: Duration) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + timeout;
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buffer[..n]),
            _ => break,
        }
    }
    (!answer.is_empty()).then(|| String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test]
async fn connections_past_max_connections_wait_until_one_closes() {
    let worker = TestWorker::start("cap-w").await;
    let balancer = TestBalancer::start(Config {
        max_connections: 2,
        ..support::static_config(&[worker.address])
    })
    .await;
    balancer.wait_ready().await;
    let connect = || tokio::net::TcpStream::connect(balancer.address);
    let (mut first, mut second) = (connect().await.unwrap(), connect().await.unwrap());
    for stream in [&mut first, &mut second] {
        let answer = health_on(stream, Duration::from_secs(5)).await;
        assert!(answer.is_some_and(|a| a.starts_with("HTTP/1.1 200")));
    }
    // The kernel completes the third handshake, but the balancer does not take the connection
    // while two are open.
    let mut third = connect().await.unwrap();
    assert_eq!(
        health_on(&mut third, Duration::from_millis(700)).await,
        None,
        "a third connection was served past MAX_CONNECTIONS=2"
    );
    // Both held connections still work.
    let answer = health_on(&mut second, Duration::from_secs(5)).await;
    assert!(answer.is_some_and(|a| a.starts_with("HTTP/1.1 200")));
    drop(first);
    // Its slot goes to the waiting connection, whose request was waiting in the socket.
    use tokio::io::AsyncReadExt;
    let mut answer = vec![0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), third.read(&mut answer))
        .await
        .expect("the waiting connection was not served after a slot freed")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&answer[..read]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer[..read])
    );
}

#[tokio::test]
async fn admin_api_shows_health_readiness_backends_and_metrics() {
    let worker = TestWorker::start("admin-w").await;
    let agent = WsAgent::start(vec![item(
        "admin-w",
        worker.address,
        64.0,
        Category::Medium,
    )])
    .await;
    let balancer = TestBalancer::start(support::agent_config(&agent.url(), None)).await;
    balancer.wait_ready().await;
    let health = balancer
        .client
        .get(balancer.admin_url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.text().await.unwrap(), "OK");
    for _ in 0..5 {
        assert_eq!(balancer.get("/health").await.status(), 200);
    }
    let view = balancer.backends().await;
    assert_eq!(view["source"], "agent");
    assert_eq!(view["policy"], "p2c-ewma");
    let backend = &view["backends"][0];
    assert_eq!(backend["dns_name"], "admin-w");
    assert_eq!(backend["weight"], 64.0);
    assert_eq!(backend["category"], "MU");
    assert_eq!(backend["completed"], 5);
    assert_eq!(
        backend["connections_opened"], 1,
        "sequential requests reuse one connection"
    );
    assert!(backend["latency_ewma_ms"].as_f64().unwrap() > 0.0);
    let metrics = balancer.metrics().await;
    for needle in [
        "balancer_requests_total{backend=\"admin-w\",status=\"200\"} 5",
        "balancer_request_duration_seconds_bucket",
        "balancer_retries_total{reason=\"reset\"} 0",
        "balancer_cache_requests_total{result=\"hit\"} 0",
        "balancer_queue_depth 0",
        "balancer_backend_in_flight{backend=\"admin-w\"} 0",
    ] {
        assert!(metrics.contains(needle), "{needle} missing in\n{metrics}");
    }
    let missing = balancer
        .client
        .get(balancer.admin_url("/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(json_error(missing).await.0, StatusCode::NOT_FOUND);
    assert_eq!(balancer.stop().await, Stopped::Drained);
}

/// Reads until the peer closes the connection (or resets it); what came before, and when.
async fn read_until_closed(
    stream: &mut tokio::net::TcpStream,
    timeout: Duration,
) -> (String, Instant) {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout(timeout, stream.read(&mut buffer)).await {
            Err(_) => panic!(
                "the connection was not closed within {timeout:?}; got {:?}",
                String::from_utf8_lossy(&received)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
    (
        String::from_utf8_lossy(&received).into_owned(),
        Instant::now(),
    )
}

#[tokio::test]
async fn a_head_that_never_completes_and_an_idle_connection_are_cut_off() {
    use tokio::io::AsyncWriteExt;
    let worker = TestWorker::start("slowhead").await;
    let timeout = Duration::from_millis(800);
    let balancer = TestBalancer::start(Config {
        header_read_timeout: timeout,
        ..support::static_config(&[worker.address])
    })
    .await;

    // Half a request head, then silence.
    let mut slow = tokio::net::TcpStream::connect(balancer.address)
        .await
        .unwrap();
    let started = Instant::now();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: slow.example\r\n")
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut slow, Duration::from_secs(10)).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert!(
        closed - started >= timeout,
        "cut off early: {:?}",
        closed - started
    );

    // A keep-alive connection that served a request, then sends nothing more.
    let mut idle = tokio::net::TcpStream::connect(balancer.address)
        .await
        .unwrap();
    let sent = Instant::now();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: idle.example\r\n\r\n")
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut idle, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains(&format!("x-backend: {}", worker.address)),
        "{answer}"
    );
    assert!(
        closed - sent >= timeout,
        "closed early: {:?}",
        closed - sent
    );

    // Meanwhile and after, the balancer serves.
    let response = balancer.get("/health").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(balancer.stop().await, Stopped::Drained);
}

#[tokio::test]
async fn idle_keep_alive_connections_do_not_hold_up_shutdown() {
    use tokio::io::AsyncWriteExt;
    let worker = TestWorker::start("idle").await;
    let balancer = TestBalancer::start(Config {
        shutdown_grace: Duration::from_secs(60),
        header_read_timeout: Duration::from_secs(60),
        ..support::static_config(&[worker.address])
    })
    .await;
    let mut connections = Vec::new();
    for _ in 0..4 {
        let mut stream = tokio::net::TcpStream::connect(balancer.address)
            .await
            .unwrap();
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: idle.example\r\n\r\n")
            .await
            .unwrap();
        connections.push(stream);
    }
    // Each has its answer (and stays open, idle).
    for stream in &mut connections {
        use tokio::io::AsyncReadExt;
        let mut buffer = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        assert!(buffer[..n].starts_with(b"HTTP/1.1 200"));
    }
    let stopping = Instant::now();
    assert_eq!(balancer.stop().await, Stopped::Drained);
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "idle connections waited for the grace period: {:?}",
        stopping.elapsed()
    );
    for stream in &mut connections {
        let (rest, _) = read_until_closed(stream, Duration::from_secs(5)).await;
        assert!(rest.is_empty(), "{rest}");
    }
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests() {
    let worker = TestWorker::start("drain").await;
    let mut balancer = BalancerProcess::spawn(&["--backends", &worker.address.to_string()]);
    let client = reqwest::Client::new();
    let slow = tokio::spawn({
        let request = client
            .post(balancer.url("/submit"))
            .json(&json!({"operation": "sleep", "data": {"seconds": 1.0}}));
        async move { request.send().await.unwrap() }
    });
    let stats_url = format!("http://{}/stats", worker.address);
    wait_for("the job to run", Duration::from_secs(5), || async {
        let stats: Value = client
            .get(&stats_url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        stats["in_flight"] == 1
    })
    .await;
    balancer.signal("TERM");
    let response = slow.await.unwrap();
    assert_eq!(response.status(), 200, "the in-flight request finished");
    let status = tokio::task::spawn_blocking(move || balancer.wait(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn bad_configuration_exits_non_zero_naming_the_variable() {
    for (env, value) in [
        ("BALANCER_POLICY", "fastest"),
        ("REQUEST_TIMEOUT", "soon"),
        ("CACHE_CAPACITY", "many"),
        ("BACKENDS", "host:port"),
        ("HOST_PORT_HTTP_BALANCER", "99999"),
        ("ACCESS_LOG", "maybe"),
        ("REQUEST_HISTORY", "-1"),
        ("REQUEST_HISTORY", "2000000"),
    ] {
        let output = std::process::Command::new(support::balancer_binary())
            .env(env, value)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{env}={value} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(env), "{env}: {stderr}");
    }
}

#[tokio::test]
async fn healthcheck_subcommand_probes_the_admin_port() {
    let worker = TestWorker::start("hc").await;
    let balancer = BalancerProcess::spawn(&["--backends", &worker.address.to_string()]);
    let port = balancer.admin.port().to_string();
    let run = |port: String| {
        std::process::Command::new(support::balancer_binary())
            .args(["--host", "127.0.0.1", "--admin-port", &port, "healthcheck"])
            .output()
            .unwrap()
    };
    let healthy = tokio::task::spawn_blocking({
        let port = port.clone();
        move || run(port)
    })
    .await
    .unwrap();
    assert!(
        healthy.status.success(),
        "{}",
        String::from_utf8_lossy(&healthy.stderr)
    );
    let nobody = support::free_port().to_string();
    let unhealthy = tokio::task::spawn_blocking(move || run(nobody))
        .await
        .unwrap();
    assert!(!unhealthy.status.success());
    drop(balancer);
}

// ---------------------------------------------------------------------------------------
// Hostile clients and sick workers

/// A raw HTTP/1.1 request for `path` with no body.
fn raw_get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: balancer\r\nconnection: close\r\n\r\n").into_bytes()
}

/// The status code of a raw answer.
fn raw_status(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

#[tokio::test]
async fn denied_paths_get_404_in_every_spelling_and_never_reach_a_backend() {
    let echo = EchoBackend::start("echo-deny").await;
    let balancer = BalancerProcess::spawn_env(
        &["--backends", &echo.address.to_string()],
        &[("BALANCER_DENY_PATHS", "/admin,/stop")],
    );
    let client = reqwest::Client::new();
    for (method, path) in [
        ("GET", "/admin"),
        ("POST", "/admin/x"),
        ("GET", "/stop"),
        ("POST", "/stop"),
    ] {
        let response = client
            .request(method.parse().unwrap(), balancer.url(path))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert!(
            response.headers().get("x-backend").is_none(),
            "{method} {path} reached a backend"
        );
        let (status, error) = json_error(response).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
        assert!(!error.is_empty());
    }
    // Spellings a backend may take for /admin: escapes, doubled slashes, dot segments.
    for path in [
        "/%61dmin",
        "/%2561dmin",
        "//admin",
        "/./admin/",
        "/x/../admin",
        "/adm%69n/users?x=1",
        "/admin;x",
        "/%2Fadmin",
    ] {
        let answer = raw_exchange(balancer.address, &raw_get(path), Duration::from_secs(5)).await;
        assert_eq!(raw_status(&answer), 404, "{path}: {answer}");
        assert!(
            answer.to_ascii_lowercase().contains("application/json"),
            "{answer}"
        );
    }
    assert_eq!(echo.total_hits(), 0, "a denied request reached the backend");

    // Whole segments only: these pass.
    for path in ["/administrator", "/adminx", "/x/admin", "/stopwatch"] {
        let response = client.get(balancer.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    assert_eq!(echo.total_hits(), 4);
}

#[tokio::test]
async fn post_stop_through_the_balancer_never_stops_a_worker() {
    // The real worker binary in chaos mode: its traffic port, the only one the balancer
    // forwards to, refuses POST /stop.
    let worker = WorkerProcess::spawn(&[], &[("WORKER_CHAOS", "true"), ("WORKER_CHAOS_PORT", "0")]);
    assert!(worker.chaos.is_some());
    let balancer = TestBalancer::start(support::static_config(&[worker.address])).await;
    for _ in 0..3 {
        let response = balancer
            .client
            .post(balancer.url("/stop"))
            .send()
            .await
            .unwrap();
        assert_eq!(backend_of(&response), worker.address.to_string());
        let (status, _) = json_error(response).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let job = balancer
        .post_json(
            "/submit",
            &json!({"operation": "primes", "data": {"limit": 10}}),
        )
        .await;
    assert_eq!(job.status(), 200, "the worker still serves");
}

/// Sends `body` as a POST to `path` on a new connection and reads the whole answer; the
/// connection is then dropped, whatever of the body is left unsent.
async fn upload<B>(address: SocketAddr, path: &str, body: B) -> (u16, http::HeaderMap, Vec<u8>)
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::post(path)
        .header("host", "balancer")
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(20), sender.send_request(request))
        .await
        .expect("no answer within 20 s")
        .unwrap_or_else(|err| panic!("the upload got no answer: {err:?}"));
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(20), body.collect())
        .await
        .expect("the answer's body did not end")
        .unwrap()
        .to_bytes();
    connection.abort();
    (parts.status.as_u16(), parts.headers, body.to_vec())
}

#[tokio::test]
async fn the_real_workers_early_413_reaches_the_client_every_time() {
    let worker = WorkerProcess::spawn(&[], &[("WORKER_MAX_BODY_BYTES", "65536")]);
    let balancer = TestBalancer::start(support::static_config(&[worker.address])).await;
    for round in 0..20 {
        // 200 MB with Content-Length, streamed: the worker answers 413 after 64 KiB.
        let body = Generated::new("{\"pad\":\"", "\"}", 200 << 20, 256 << 10, true);
        let (status, headers, body) = upload(balancer.address, "/submit", body).await;
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, 413, "round {round}: {text}");
        assert_eq!(headers["x-backend"], worker.address.to_string());
        assert_eq!(headers["connection"], "close", "round {round}");
        let error: Value = serde_json::from_slice(&body).unwrap();
        assert!(
            error["error"].as_str().unwrap().contains("65536"),
            "round {round}: {text}"
        );
    }
    // Chunked (no Content-Length) too.
    for round in 0..5 {
        let body = Generated::new("{\"pad\":\"", "\"}", 200 << 20, 256 << 10, false);
        let (status, _, body) = upload(balancer.address, "/submit", body).await;
        assert_eq!(
            status,
            413,
            "chunked round {round}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let job = balancer
        .post_json(
            "/submit",
            &json!({"operation": "primes", "data": {"limit": 10}}),
        )
        .await;
    assert_eq!(job.status(), 200);
}

#[tokio::test]
async fn a_backend_that_answers_while_the_client_still_sends_is_relayed() {
    for behaviour in [Misbehaviour::AnswerAndClose, Misbehaviour::AnswerAndWait] {
        let backend = RawBackend::start(behaviour).await;
        let balancer = TestBalancer::start(support::static_config(&[backend.address])).await;
        for round in 0..10 {
            let body = Generated::new("", "", 200 << 20, 64 << 10, round % 2 == 0);
            let (status, headers, body) = upload(balancer.address, "/upload", body).await;
            assert_eq!(
                (status, String::from_utf8_lossy(&body).as_ref()),
                (403, EARLY_ANSWER),
                "{behaviour:?}, round {round}"
            );
            assert_eq!(headers["connection"], "close");
        }
        assert_eq!(backend.seen(), 10);
    }
}

#[tokio::test]
async fn expect_100_continue_uploads_get_the_early_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let worker = WorkerProcess::spawn(&[], &[("WORKER_MAX_BODY_BYTES", "65536")]);
    let balancer = TestBalancer::start(support::static_config(&[worker.address])).await;
    for round in 0..5 {
        let stream = tokio::net::TcpStream::connect(balancer.address)
            .await
            .unwrap();
        let (mut reader, mut writer) = stream.into_split();
        writer
            .write_all(
                format!(
                    "POST /submit HTTP/1.1\r\nhost: balancer\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nexpect: 100-continue\r\n\r\n",
                    200u64 << 20
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        // The body goes out once `100 Continue` came, until the final answer is in.
        let (go, went) = tokio::sync::oneshot::channel::<()>();
        let (done, stop) = tokio::sync::oneshot::channel::<()>();
        let sending = tokio::spawn(async move {
            if went.await.is_err() {
                return writer;
            }
            let chunk = vec![b' '; 64 << 10];
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    written = writer.write_all(&chunk) => if written.is_err() { break },
                }
            }
            writer
        });
        let mut answer = Vec::new();
        let mut buffer = [0u8; 4096];
        let mut go = Some(go);
        let mut done = Some(done);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let final_head = loop {
            let n = tokio::time::timeout_at(deadline, reader.read(&mut buffer))
                .await
                .expect("no answer")
                .unwrap();
            assert!(
                n > 0,
                "closed without an answer: {}",
                String::from_utf8_lossy(&answer)
            );
            answer.extend_from_slice(&buffer[..n]);
            let text = String::from_utf8_lossy(&answer).into_owned();
            if let Some(rest) = text.strip_prefix("HTTP/1.1 100 Continue\r\n\r\n") {
                if let Some(go) = go.take() {
                    let _ = go.send(());
                }
                if rest.contains("\r\n\r\n") && rest.contains("}") {
                    break rest.to_owned();
                }
            } else if text.contains("\r\n\r\n") && text.contains("}") {
                break text;
            }
        };
        assert!(
            final_head.starts_with("HTTP/1.1 413"),
            "round {round}: {final_head}"
        );
        assert!(
            final_head
                .to_ascii_lowercase()
                .contains("connection: close"),
            "{final_head}"
        );
        assert!(final_head.contains("65536"), "{final_head}");
        // The client stops sending; the balancer closes the connection.
        if let Some(done) = done.take() {
            let _ = done.send(());
        }
        let mut writer = sending.await.unwrap();
        let _ = writer.shutdown().await;
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match reader.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "round {round}: the connection stayed open");
    }
}

/// Opens a connection, sends a POST head announcing `length` bytes, then `first` bytes at
/// once; the rest is up to the caller.
async fn start_slow_upload(
    address: SocketAddr,
    length: usize,
    first: usize,
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head =
        format!("POST /upload HTTP/1.1\r\nhost: balancer\r\ncontent-length: {length}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![b'a'; first]).await.unwrap();
    stream
}

/// Sends one byte every `every` until the server answers; returns the answer (up to its
/// head) and whether the server closed the connection after it.
async fn trickle(mut stream: tokio::net::TcpStream, every: Duration) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let mut ticks = tokio::time::interval(every);
    ticks.tick().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        tokio::select! {
            read = stream.read(&mut buffer) => match read {
                Ok(0) | Err(_) => return (String::from_utf8_lossy(&answer).into_owned(), true),
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            },
            _ = ticks.tick() => {
                // The server may have closed its side already.
                let _ = stream.write_all(b"a").await;
            }
            () = tokio::time::sleep_until(deadline) => {
                return (String::from_utf8_lossy(&answer).into_owned(), false);
            }
        }
    }
}

#[tokio::test]
async fn a_slow_body_is_cut_off_with_408() {
    let echo = EchoBackend::start("echo-slow").await;
    let balancer = BalancerProcess::spawn_env(
        &["--backends", &echo.address.to_string()],
        &[("BODY_READ_TIMEOUT", "1s")],
    );
    let started = Instant::now();
    // 40 clients announce 1000 bytes and send one every 2 s; one announces 1 MB (streamed to
    // the backend rather than read first) and does the same after 100 kB.
    let mut clients = Vec::new();
    for i in 0..41 {
        let (length, first) = if i == 40 {
            (1 << 20, 100_000)
        } else {
            (1000, 1)
        };
        let stream = start_slow_upload(balancer.address, length, first).await;
        clients.push(tokio::spawn(trickle(stream, Duration::from_secs(2))));
    }
    for (i, client) in clients.into_iter().enumerate() {
        let (answer, closed) = client.await.unwrap();
        assert_eq!(raw_status(&answer), 408, "client {i}: {answer}");
        assert!(answer.contains("application/json"), "{answer}");
        assert!(
            closed,
            "client {i}: the connection stayed open after the 408"
        );
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "cut off after {took:?}");
    // Serving goes on.
    let response = reqwest::Client::new()
        .post(balancer.url("/echo"))
        .body("fine")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_slow_upload_counts_as_in_flight_until_its_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = EchoBackend::start("echo-in-flight").await;
    let balancer = TestBalancer::start(Config {
        body_read_timeout: Duration::from_secs(5),
        ..support::static_config(&[echo.address])
    })
    .await;
    let in_flight = || async {
        balancer.backends().await["backends"][0]["in_flight"]
            .as_u64()
            .unwrap()
    };
    // A small body (read before it is sent) and a large one (streamed), each sent slowly
    // but within the timeout.
    for (length, first) in [(1000, 10), (1 << 20, (1 << 20) - 10)] {
        let mut stream = start_slow_upload(balancer.address, length, first).await;
        let mut sent = first;
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(in_flight().await, 1, "{length} bytes, {sent} sent");
            stream.write_all(b"a").await.unwrap();
            sent += 1;
        }
        stream.write_all(&vec![b'a'; length - sent]).await.unwrap();
        let mut answer = Vec::new();
        let mut buffer = [0u8; 4096];
        while !String::from_utf8_lossy(&answer).contains("received") {
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0);
            answer.extend_from_slice(&buffer[..n]);
        }
        let answer = String::from_utf8_lossy(&answer);
        assert_eq!(raw_status(&answer), 200, "{answer}");
        assert!(
            answer.contains(&format!("\"received\":{length}")),
            "{answer}"
        );
        wait_for("the request to end", Duration::from_secs(5), || async {
            in_flight().await == 0
        })
        .await;
    }
}

/// Sends `jobs` POST /submit jobs one after the other; counts the answers by status.
async fn submit_jobs(url: &str, jobs: usize, padding: usize, chunked: bool) -> HashMap<u16, usize> {
    let mut statuses = HashMap::new();
    let address: SocketAddr = url.parse().unwrap();
    for _ in 0..jobs {
        let job = json!({"operation": "primes", "data": {"limit": 10}, "pad": "x".repeat(padding)})
            .to_string();
        let len = job.len() as u64;
        let (status, _, _) = if chunked {
            let body = Generated::new(&job, "", len, 1024, false);
            upload(address, "/submit", body).await
        } else {
            let body = http_body_util::Full::new(bytes::Bytes::from(job));
            upload(address, "/submit", body).await
        };
        *statuses.entry(status).or_insert(0) += 1;
    }
    statuses
}

#[tokio::test]
async fn retry_routes_replay_jobs_whose_backend_died_before_answering() {
    let worker = TestWorker::start("survivor").await;
    let dropper = RawBackend::start(Misbehaviour::Drop).await;
    let backends = format!("{},{}", worker.address, dropper.address);
    let args = ["--backends", backends.as_str(), "--policy", "round-robin"];
    // With round-robin and retries nearly every job goes to the dropping backend first; the
    // budget's floor is raised so that the test sees the replay, not the budget.
    let declared = BalancerProcess::spawn_env(
        &args,
        &[
            ("RETRY_ROUTES", "POST /submit,POST /work"),
            ("RETRY_BUFFER_BYTES", "4096"),
            ("RETRY_BUDGET_MIN_PER_SEC", "100"),
        ],
    );
    let address = declared.address.to_string();

    // Within the buffer, by Content-Length or chunked: every job is answered by the survivor.
    for chunked in [false, true] {
        let before = dropper.seen();
        let statuses = submit_jobs(&address, 20, 100, chunked).await;
        assert_eq!(statuses, HashMap::from([(200, 20)]), "chunked: {chunked}");
        assert!(
            dropper.seen() > before,
            "the dropping backend got none of them"
        );
    }

    // Larger than RETRY_BUFFER_BYTES: streamed, never replayed, so those sent to the dropping
    // backend fail.
    let before = dropper.seen();
    let statuses = submit_jobs(&address, 20, 8192, false).await;
    let dropped = usize::try_from(dropper.seen() - before).unwrap();
    assert!(dropped > 0);
    assert_eq!(
        statuses.get(&502).copied().unwrap_or(0),
        dropped,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.get(&200).copied().unwrap_or(0),
        20 - dropped,
        "{statuses:?}"
    );
    drop(declared);

    // Without the route, the jobs sent to the dropping backend fail as before.
    let undeclared = BalancerProcess::spawn(&args);
    let before = dropper.seen();
    let statuses = submit_jobs(&undeclared.address.to_string(), 20, 100, false).await;
    let dropped = usize::try_from(dropper.seen() - before).unwrap();
    assert!(dropped > 0);
    assert_eq!(
        statuses.get(&502).copied().unwrap_or(0),
        dropped,
        "{statuses:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Following a request (issue #18)

/// The request id an answer carries.
fn request_id_of(response: &reqwest::Response) -> String {
    response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

fn is_made_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test]
async fn a_request_id_is_kept_or_made_sent_to_the_backend_returned_and_recorded() {
    let echo = EchoBackend::start("echo-ids").await;
    let balancer = TestBalancer::start(support::static_config(&[echo.address])).await;
    let address = echo.address.to_string();

    // The client's id, well formed: kept, sent on, returned, recorded with its attempt.
    let given = "client-7.a:b_c";
    let response = balancer
        .client
        .get(balancer.url("/journey/one?x=1"))
        .header("x-request-id", given)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(request_id_of(&response), given);
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["headers"]["x-request-id"], given, "{seen}");
    let (status, record) = balancer.admin_json(&format!("/requests/{given}")).await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["id"], given);
    assert_eq!(record["method"], "GET");
    assert_eq!(record["path"], "/journey/one?x=1");
    assert_eq!(record["status"], 200);
    assert_eq!(record["cache"], "miss", "a GET the cache may keep");
    assert_eq!(record["error"], Value::Null);
    assert!(record["latency_ms"].as_f64().unwrap() > 0.0, "{record}");
    assert_eq!(record["backends"], json!([address]), "{record}");
    let attempts = record["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{record}");
    assert_eq!(attempts[0]["backend"], address.as_str());
    assert_eq!(attempts[0]["address"], address.as_str());
    assert_eq!(attempts[0]["outcome"], "answered");
    assert_eq!(attempts[0]["status"], 200);
    assert_eq!(attempts[0]["retry"], Value::Null);
    assert!(
        attempts[0]["started_at_ms"].as_u64().unwrap() >= record["started_at_ms"].as_u64().unwrap()
    );

    // No id: one is made, sent on and returned.
    let response = balancer.get("/journey/two").await;
    let made = request_id_of(&response);
    assert!(is_made_id(&made), "{made}");
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["headers"]["x-request-id"], made.as_str(), "{seen}");
    let (status, record) = balancer.admin_json(&format!("/requests/{made}")).await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["path"], "/journey/two");

    // A malformed or oversized id is replaced, never echoed nor sent on; of two ids, the
    // backend sees one.
    let long = "a".repeat(129);
    for bad in [
        "has/slash",
        "<script>",
        "semi;colon",
        "caf\u{e9}",
        long.as_str(),
    ] {
        let response = balancer
            .client
            .get(balancer.url("/journey/bad"))
            .header(
                "x-request-id",
                reqwest::header::HeaderValue::from_bytes(bad.as_bytes()).unwrap(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{bad}");
        let id = request_id_of(&response);
        assert!(is_made_id(&id), "{bad:?} answered as {id:?}");
        let seen: Value = response.json().await.unwrap();
        assert_eq!(
            seen["headers"]["x-request-id"],
            id.as_str(),
            "{bad:?}: {seen}"
        );
    }
    let response = balancer
        .client
        .get(balancer.url("/journey/two-ids"))
        .header("x-request-id", "first-id")
        .header("x-request-id", "second-id")
        .send()
        .await
        .unwrap();
    assert_eq!(request_id_of(&response), "first-id");
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["headers"]["x-request-id"], "first-id", "{seen}");

    // A balancer's own error answer carries its id, and is recorded with the reason.
    let response = balancer
        .client
        .post(balancer.url("/journey/too-big"))
        .header("x-request-id", "too-big-1")
        .header(
            "content-length",
            (balancer::Config::default().max_body_bytes + 1).to_string(),
        )
        .send()
        .await;
    if let Ok(response) = response {
        assert_eq!(response.status(), 413);
        assert_eq!(request_id_of(&response), "too-big-1");
    }
    let (_, record) = balancer.admin_json("/requests/too-big-1").await;
    assert_eq!(record["status"], 413, "{record}");
    assert!(
        record["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{record}"
    );
    assert_eq!(record["attempts"], json!([]), "{record}");

    // The list: newest first, filtered by status, bounded; bad queries are 400s.
    let (status, list) = balancer.admin_json("/requests?limit=2").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["capacity"], 10_000);
    assert!(list["kept"].as_u64().unwrap() >= 9, "{list}");
    let newest: Vec<&str> = list["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(newest, ["too-big-1", "first-id"], "{list}");
    let (_, errors) = balancer.admin_json("/requests?status=4xx").await;
    let ids: Vec<&Value> = errors["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["id"])
        .collect();
    assert_eq!(ids, [&json!("too-big-1")], "{errors}");
    let (_, exact) = balancer.admin_json("/requests?status=413").await;
    assert_eq!(exact["requests"].as_array().unwrap().len(), 1, "{exact}");
    let (_, none) = balancer.admin_json("/requests?status=5xx").await;
    assert_eq!(none["requests"], json!([]), "{none}");
    for bad in [
        "/requests?status=abc",
        "/requests?status=6xx",
        "/requests?limit=0",
        "/requests?limit=1001",
        "/requests?limit=x",
        "/requests?colour=red",
        "/requests/has%2Fslash",
        "/requests/%3Cscript%3E",
    ] {
        let (status, body) = balancer.admin_json(bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{bad}: {body}"
        );
    }
    let (status, body) = balancer.admin_json("/requests/never-sent").await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("never-sent"),
        "{body}"
    );
}

#[tokio::test]
async fn the_history_keeps_the_newest_records_within_request_history() {
    let echo = EchoBackend::start("echo-history").await;
    let balancer = TestBalancer::start(Config {
        request_history: 3,
        threads: Some(1),
        ..support::static_config(&[echo.address])
    })
    .await;
    for n in 0..5 {
        let response = balancer
            .client
            .get(balancer.url("/h"))
            .header("x-request-id", format!("h-{n}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let (_, list) = balancer.admin_json("/requests").await;
    assert_eq!(list["kept"], 3, "{list}");
    let ids: Vec<&str> = list["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["h-4", "h-3", "h-2"]);
    assert_eq!(balancer.admin_json("/requests/h-1").await.0, 404);
    assert_eq!(balancer.admin_json("/requests/h-2").await.0, 200);
}

#[tokio::test]
async fn a_retried_request_shows_each_attempt_with_its_backend_and_reason() {
    // A port nobody listens on (connect fails), a backend that dies mid-request (the
    // connection drops without an answer) and one that answers.
    let dead: SocketAddr = format!("127.0.0.1:{}", support::free_port())
        .parse()
        .unwrap();
    let dying = RawBackend::start(Misbehaviour::Drop).await;
    let echo = EchoBackend::start("echo-retries").await;
    let balancer = TestBalancer::start(Config {
        policy: Policy::RoundRobin.into(),
        eject_after: 100,
        ..support::static_config(&[dead, dying.address, echo.address])
    })
    .await;
    let (dead, dying, echo) = (
        dead.to_string(),
        dying.address.to_string(),
        echo.address.to_string(),
    );
    let (mut saw_connect, mut saw_reset) = (false, false);
    for n in 0..6 {
        let id = format!("retried-{n}");
        let response = balancer
            .client
            .get(balancer.url("/retry-me"))
            .header("x-request-id", &id)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(backend_of(&response), echo);
        assert_eq!(request_id_of(&response), id);
        let (_, record) = balancer.admin_json(&format!("/requests/{id}")).await;
        let attempts = record["attempts"].as_array().unwrap();
        let last = attempts.last().unwrap();
        assert_eq!(last["backend"], echo.as_str(), "{record}");
        assert_eq!(last["outcome"], "answered", "{record}");
        assert_eq!(last["retry"], Value::Null, "{record}");
        let mut backends = Vec::new();
        for attempt in &attempts[..attempts.len() - 1] {
            let backend = attempt["backend"].as_str().unwrap();
            let expected = if backend == dead {
                saw_connect = true;
                ("connect_failed", "connect")
            } else {
                assert_eq!(backend, dying, "{record}");
                saw_reset = true;
                ("reset", "reset")
            };
            assert_eq!(attempt["outcome"], expected.0, "{record}");
            assert_eq!(attempt["retry"], expected.1, "{record}");
            assert_eq!(attempt["status"], Value::Null, "{record}");
            assert!(attempt["duration_ms"].as_f64().unwrap() >= 0.0, "{record}");
            backends.push(backend);
        }
        backends.push(echo.as_str());
        assert_eq!(record["backends"], json!(backends), "{record}");
    }
    assert!(
        saw_connect && saw_reset,
        "round robin sent a first attempt to each"
    );
}

#[tokio::test]
async fn the_access_log_has_one_line_per_request_with_its_id_unless_turned_off() {
    let echo = EchoBackend::start("echo-access").await;
    let backends = echo.address.to_string();
    let path = if support::http1_fast_path() {
        "fast"
    } else {
        "hyper"
    };
    let client = reqwest::Client::new();
    for access_log in ["true", "false"] {
        let balancer = BalancerProcess::spawn_env(
            &["--backends", &backends, "--http1-path", path],
            &[("ACCESS_LOG", access_log)],
        );
        let id = format!("access-{access_log}");
        let response = client
            .get(balancer.url("/logged?q=1"))
            .header("x-request-id", &id)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let made = client
            .get(balancer.url("/logged-too"))
            .send()
            .await
            .unwrap();
        let made = request_id_of(&made);
        let lines = |id: &str| {
            let id = id.to_owned();
            balancer.logged(move |event| {
                event["target"] == "balancer::access" && event["request_id"] == id.as_str()
            })
        };
        if access_log == "false" {
            // The answers are out; their lines would be written before them.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let any = balancer.logged(|event| event["target"] == "balancer::access");
            assert!(any.is_empty(), "{any:?}");
            continue;
        }
        wait_for("the access log lines", Duration::from_secs(5), || async {
            !lines(&id).is_empty() && !lines(&made).is_empty()
        })
        .await;
        let line = &lines(&id)[0];
        assert_eq!(line["method"], "GET", "{line}");
        assert_eq!(line["path"], "/logged?q=1", "{line}");
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["backend"], backends.as_str(), "{line}");
        assert_eq!(line["attempts"], 1, "{line}");
        assert!(line["latency_ms"].as_f64().unwrap() > 0.0, "{line}");
        assert_eq!(lines(&id).len(), 1, "one line per request");
    }
}
