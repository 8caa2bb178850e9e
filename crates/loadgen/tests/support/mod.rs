//! Test harness: in-process workers, a tiny router in front of them that behaves in a known
//! way, a fake deployment agent, temporary directories and the `loadgen` binary.

#![allow(dead_code)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use common::{CancellationToken, testing::Cleanup};
use serde_json::json;

pub fn loadgen_binary() -> &'static str {
    env!("CARGO_BIN_EXE_loadgen")
}

/// Runs the `loadgen` binary with `args` in `dir`; gives up after a minute.
pub fn loadgen(dir: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(loadgen_binary())
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cannot start loadgen");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("wait failed").is_some() {
            return child.wait_with_output().expect("no output");
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("loadgen {args:?} did not finish within a minute");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fresh temporary directory, removed when `cleanup` drops.
pub fn temp_dir(cleanup: &mut Cleanup, name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("loadgen-test-{name}-{}", common::testing::unique()));
    std::fs::create_dir_all(&dir).unwrap();
    cleanup.dirs.push(dir.clone());
    dir
}

/// A server on a loopback port, stopped on drop.
pub struct Served {
    pub address: SocketAddr,
    stop: CancellationToken,
}

impl Served {
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Serves `router` on 127.0.0.1:0.
pub async fn serve(router: Router) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let until = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move { until.cancelled().await })
            .await;
    });
    Served { address, stop }
}

/// A real worker (`worker::run`) in this process, with a small work unit.
pub async fn start_worker(id: &str) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let config = worker::Config {
        worker_id: Some(id.into()),
        work_unit: 1000,
        threads: Some(4),
        ..worker::Config::default()
    };
    tokio::spawn(worker::run(listener, config, stop.clone()));
    Served { address, stop }
}

#[derive(Clone)]
struct RouterState {
    client: reqwest::Client,
    alpha: String,
    beta: String,
}

/// How long the router holds every `/work` request before forwarding it.
pub const ALPHA_DELAY: Duration = Duration::from_millis(25);
/// The `X-Backend` the router sets for alpha.
pub const ALPHA_BACKEND: &str = "alpha.workers:8080";

/// A router with known behaviour, like the balancer in miniature:
/// - `/work` waits [`ALPHA_DELAY`], goes to `alpha` and answers with `X-Backend: alpha.workers:8080`;
/// - `/light` goes to `beta` and sets no `X-Backend` (loadgen falls back to the `worker_id`);
/// - `/heavy` fails at once with `503` and `X-Backend: gamma`;
/// - `/slow` answers after 200 ms, for open-loop checks.
pub async fn start_router(alpha: &Served, beta: &Served) -> Served {
    let state = RouterState {
        client: reqwest::Client::builder().no_proxy().build().unwrap(),
        alpha: alpha.url(),
        beta: beta.url(),
    };
    let router = Router::new()
        .route("/work", post(to_alpha))
        .route("/light", post(to_beta))
        .route("/heavy", post(fail))
        .route("/slow", post(slow))
        .with_state(state);
    serve(router).await
}

async fn forward(client: &reqwest::Client, url: String, body: Bytes) -> Response {
    match client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
    {
        Ok(answer) => {
            let status = StatusCode::from_u16(answer.status().as_u16()).unwrap();
            let bytes = answer.bytes().await.unwrap_or_default();
            (status, bytes).into_response()
        }
        Err(err) => (StatusCode::BAD_GATEWAY, err.to_string()).into_response(),
    }
}

async fn to_alpha(State(state): State<RouterState>, body: Bytes) -> Response {
    tokio::time::sleep(ALPHA_DELAY).await;
    let mut response = forward(&state.client, format!("{}/work", state.alpha), body).await;
    response
        .headers_mut()
        .insert("x-backend", ALPHA_BACKEND.parse().unwrap());
    response
}

async fn to_beta(State(state): State<RouterState>, body: Bytes) -> Response {
    forward(&state.client, format!("{}/light", state.beta), body).await
}

async fn fail() -> Response {
    let mut headers = HeaderMap::new();
    headers.insert("x-backend", "gamma".parse().unwrap());
    (
        StatusCode::SERVICE_UNAVAILABLE,
        headers,
        axum::Json(json!({"error": "no capacity"})),
    )
        .into_response()
}

async fn slow() -> Response {
    tokio::time::sleep(Duration::from_millis(200)).await;
    axum::Json(json!({"worker_id": "slow"})).into_response()
}

/// A fake deployment agent: `GET /queue` answers two containers (LU and HU), `GET /events`
/// two scaling events.
pub async fn start_fake_agent() -> Served {
    let router = Router::new()
        .route(
            "/queue",
            get(|| async {
                let item = |id: &str, category: &str| {
                    json!({
                        "id": id, "dns_name": id, "address": format!("{id}:8080"),
                        "score": 80.0, "utilization_category": category, "in_flight": 1,
                        "cpu_score": 80.0, "memory_score": 90.0, "network_score": 100.0,
                        "availability_score": 70.0
                    })
                };
                axum::Json(json!({
                    "version": 1,
                    "seq": 3,
                    "timestamp_ms": loadgen::now_unix_ms(),
                    "items": [item("w1", "LU"), item("w2", "HU")]
                }))
            }),
        )
        .route(
            "/events",
            get(|| async {
                let now = loadgen::now_unix_ms();
                axum::Json(json!({"events": [
                    {"at_ms": now - 60_000, "kind": "scale_up", "container": null, "replicas": 1, "message": "start"},
                    {"at_ms": now - 1_000, "kind": "scale_up", "container": "w2", "replicas": 2, "message": "load"}
                ]}))
            }),
        );
    serve(router).await
}
