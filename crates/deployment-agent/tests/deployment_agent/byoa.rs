//! Bring your own app (issue 13): the real `deployment-agent` binary on the real Docker engine
//! autoscaling web servers the project did not write, built here from Debian packages with no
//! pull (`deploy/test-apps/`, `common::testing::build_test_app_image`): busybox httpd, which
//! answers `/` but has no `/health` and no `/stats`, and nginx. The agent is configured only
//! through its environment, as a user configures it, and requests go through the real
//! `balancer` binary.

use std::time::{Duration, Instant};

use common::{
    CancellationToken,
    queue::QueueSnapshot,
    testing::{Cleanup, TEST_LABEL, TestApp, build_test_app_image, docker, eventually, unique},
};
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::support::{AgentProcess, Balancer, QueueWatcher, serving};

const TOKEN: &str = "byoa-test-token";
const STARTUP: Duration = Duration::from_secs(60);
const SCALING: Duration = Duration::from_secs(90);

/// A test's slice of the engine: a third-party app's image, a network and the application
/// name of the agent's containers; all removed on drop.
struct AppEnv {
    app: String,
    image: String,
    network: String,
    _cleanup: Cleanup,
}

impl AppEnv {
    fn new(test_app: TestApp) -> Self {
        let id = unique();
        let app = format!("rbbyoa{}", id.replace('-', ""));
        let mut cleanup = Cleanup::default();
        cleanup.container_labels.push(format!("application={app}"));
        let image = build_test_app_image(&mut cleanup, test_app, &id);
        let network = format!("rb-byoa-{id}");
        cleanup.networks.push(network.clone());
        docker(&["network", "create", "--label", TEST_LABEL, &network]);
        Self {
            app,
            image,
            network,
            _cleanup: cleanup,
        }
    }

    /// The agent binary on the Docker runtime with this env's image, fast periods, a pool of
    /// 2 to 4 and `settings` on top.
    async fn agent(&self, settings: &[(&str, &str)]) -> AgentProcess {
        let mut env: Vec<(&str, &str)> = vec![
            ("AGENT_RUNTIME", "docker"),
            ("DOCKER_IMAGE", self.image.as_str()),
            ("APP_IDENTIFIER", self.app.as_str()),
            ("AGENT_NETWORK", self.network.as_str()),
            ("AGENT_TOKEN", TOKEN),
            ("TARGET_PORT", "8080"),
            ("DEFAULT_CONTAINER", "2"),
            ("MIN_CONTAINERS", "2"),
            ("MAX_CONTAINERS", "4"),
            ("TARGET_CONCURRENCY", "2"),
            ("SCALE_CHECK_PERIOD", "500ms"),
            ("COOLDOWN_PERIOD", "2s"),
            ("SCALE_DOWN_STABILIZATION", "3s"),
            ("PROBE_PERIOD", "250ms"),
            ("STOP_GRACE", "3s"),
            ("DRAIN_TIMEOUT", "10s"),
            ("WS_PING_PERIOD", "2s"),
            ("SHUTDOWN_GRACE", "2s"),
        ];
        env.extend_from_slice(settings);
        AgentProcess::start(&env).await
    }

    /// Ids of this test's containers on the engine (running or not).
    fn containers(&self) -> Vec<String> {
        let filter = format!("label=application={}", self.app);
        docker(&["ps", "-aq", "--no-trunc", "--filter", &filter])
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }
}

fn ws_url(agent: &AgentProcess) -> String {
    format!("ws://{}/ws", agent.ws)
}

async fn get_json(client: &reqwest::Client, agent: &AgentProcess, path: &str) -> Value {
    let response = client
        .get(format!("http://{}{path}", agent.http))
        .send()
        .await
        .unwrap_or_else(|err| panic!("GET {path}: {err}"));
    assert_eq!(response.status(), 200, "GET {path}");
    response.json().await.expect("a JSON body")
}

/// One agent event.
#[derive(Debug, Clone)]
struct Event {
    kind: String,
    container: Option<String>,
    at_ms: u64,
    message: String,
    raw: Value,
}

async fn events(client: &reqwest::Client, agent: &AgentProcess) -> Vec<Event> {
    let body = get_json(client, agent, "/events?limit=1000").await;
    let mut events: Vec<Event> = body["events"]
        .as_array()
        .expect("`events` is an array")
        .iter()
        .map(|event| Event {
            kind: event["kind"].as_str().unwrap_or_default().to_owned(),
            container: event["container"].as_str().map(str::to_owned),
            at_ms: event["at_ms"].as_u64().unwrap_or(0),
            message: event["message"].as_str().unwrap_or_default().to_owned(),
            raw: event.clone(),
        })
        .collect();
    events.sort_by_key(|event| event.at_ms);
    events
}

fn of_kind<'a>(events: &'a [Event], kind: &str) -> Vec<&'a Event> {
    events.iter().filter(|event| event.kind == kind).collect()
}

/// The `created` events of containers (not the scaling decisions, also `created`, that name
/// none).
fn containers_created(events: &[Event]) -> Vec<&Event> {
    events
        .iter()
        .filter(|event| event.kind == "created" && event.container.is_some())
        .collect()
}

/// Waits until the balancer routes to `count` backends.
async fn routes_to(balancer: &Balancer, client: &reqwest::Client, count: usize) {
    eventually(
        &format!("the balancer to route to {count} backends"),
        Duration::from_secs(30),
        || async { (balancer.candidates(client).await.len() >= count).then_some(()) },
    )
    .await;
}

/// `clients` clients sending `GET url` back to back; counts answers and failures.
struct ClosedLoad {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<(u64, Vec<String>)>>,
}

impl ClosedLoad {
    fn start(url: String, clients: usize) -> Self {
        let stop = CancellationToken::new();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let tasks = (0..clients)
            .map(|_| {
                let (client, url, stop) = (client.clone(), url.clone(), stop.clone());
                tokio::spawn(async move {
                    let (mut ok, mut failed) = (0, Vec::new());
                    while !stop.is_cancelled() {
                        match client.get(&url).send().await {
                            Ok(response) if response.status() == 200 => {
                                match response.bytes().await {
                                    Ok(_) => ok += 1,
                                    Err(err) => failed.push(format!("body: {err}")),
                                }
                            }
                            Ok(response) => failed.push(format!("status {}", response.status())),
                            Err(err) => failed.push(err.to_string()),
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        Self { stop, tasks }
    }

    /// Stops the clients after their request in flight; (answered, failures).
    async fn stop(self) -> (u64, Vec<String>) {
        self.stop.cancel();
        let (mut ok, mut failed) = (0, Vec::new());
        for task in self.tasks {
            let (done, errors) = task.await.expect("a load client panicked");
            ok += done;
            failed.extend(errors);
        }
        (ok, failed)
    }
}

/// Point (a): busybox httpd (no `/health`, no `/stats`) with the probe `probe` (env pairs):
/// two ready, more under a step of slow requests through the balancer (in flight known only
/// from the balancer's load reports), back to two after, and not one failed request.
async fn third_party_app_scales_up_and_down(probe: &[(&str, &str)]) {
    let env = AppEnv::new(TestApp::BusyboxHttpd);
    let agent = env.agent(probe).await;
    let client = reqwest::Client::new();
    let watcher = QueueWatcher::connect(&ws_url(&agent)).await;
    watcher
        .wait_until("MIN_CONTAINERS (2) ready", STARTUP, |s| {
            serving(s).len() == 2
        })
        .await;
    let status = get_json(&client, &agent, "/status").await;
    assert_eq!(status["pool"]["ready"], 2, "GET /status: {status}");

    let balancer = Balancer::start_for(
        agent.ws,
        agent.grpc,
        TOKEN,
        "least-request",
        &[("CACHE_CAPACITY", "0"), ("REQUEST_TIMEOUT", "60s")],
    );
    routes_to(&balancer, &client, 2).await;
    // A light load on `/` all along, scale-down included; the step: 12 clients on a page
    // that takes a second, 6 in flight per container against TARGET_CONCURRENCY=2.
    let background = ClosedLoad::start(balancer.url("/"), 1);
    let step = ClosedLoad::start(balancer.url("/cgi-bin/slow?1"), 12);
    let (_, up) = watcher
        .wait_until("a scale-up past 2 under the step", SCALING, |s| {
            serving(s).len() > 2
        })
        .await;
    println!(
        "byoa {probe:?}: {} serving under the step",
        serving(&up).len()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (stepped, step_failures) = step.stop().await;
    watcher
        .wait_until("back to 2 after the step", SCALING, |s: &QueueSnapshot| {
            s.items.len() == 2 && serving(s).len() == 2
        })
        .await;
    // Past the drain of the last container removed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (light, background_failures) = background.stop().await;

    let events = events(&client, &agent).await;
    assert!(
        !of_kind(&events, "scale_up").is_empty(),
        "no scale_up event: {events:#?}"
    );
    assert!(
        containers_created(&events).len() > 2,
        "no container created beyond the first two"
    );
    assert!(stepped > 0 && light > 0, "no request answered");
    assert!(
        step_failures.is_empty() && background_failures.is_empty(),
        "failed requests: step {step_failures:?}, background {background_failures:?}"
    );
    println!("byoa {probe:?}: {stepped} slow and {light} light requests, none failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn byoa_busybox_httpd_with_an_http_probe_on_a_path_it_has_scales_up_and_down() {
    third_party_app_scales_up_and_down(&[("WORKER_PROBE", "http"), ("WORKER_PROBE_PATH", "/")])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn byoa_busybox_httpd_with_a_tcp_probe_scales_up_and_down() {
    third_party_app_scales_up_and_down(&[("WORKER_PROBE", "tcp")]).await;
}

/// Point (b): nginx, a second server we did not write: the pool becomes ready and serves
/// through the balancer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn byoa_nginx_pool_becomes_ready_and_serves_through_the_balancer() {
    let env = AppEnv::new(TestApp::Nginx);
    let agent = env
        .agent(&[("WORKER_PROBE", "http"), ("WORKER_PROBE_PATH", "/")])
        .await;
    let client = reqwest::Client::new();
    let watcher = QueueWatcher::connect(&ws_url(&agent)).await;
    watcher
        .wait_until("two nginx containers ready", STARTUP, |s| {
            serving(s).len() == 2
        })
        .await;
    let balancer = Balancer::start_for(agent.ws, agent.grpc, TOKEN, "round-robin", &[]);
    routes_to(&balancer, &client, 2).await;
    let mut backends = std::collections::HashSet::new();
    for _ in 0..20 {
        let response = client.get(balancer.url("/")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        if let Some(backend) = response.headers().get("x-backend") {
            backends.insert(backend.to_str().unwrap_or_default().to_owned());
        }
        let body = response.text().await.unwrap();
        assert!(body.contains("nginx"), "not nginx's page: {body}");
    }
    assert_eq!(backends.len(), 2, "round-robin over both: {backends:?}");
    assert_eq!(env.containers().len(), 2);
}

/// Point (c): an app that listens only after 10 s becomes ready within STARTUP_TIMEOUT=30s
/// without being replaced: exactly one container is ever created.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn byoa_an_app_that_listens_after_10_s_becomes_ready_without_being_replaced() {
    let env = AppEnv::new(TestApp::BusyboxHttpd);
    let started = Instant::now();
    let agent = env
        .agent(&[
            ("DEFAULT_CONTAINER", "1"),
            ("MIN_CONTAINERS", "1"),
            ("MAX_CONTAINERS", "1"),
            ("STARTUP_TIMEOUT", "30s"),
            ("WORKER_PROBE", "http"),
            ("WORKER_PROBE_PATH", "/"),
            (
                "WORKER_COMMAND",
                r#"["/bin/busybox","sh","-c","sleep 10; exec /bin/busybox httpd -f -p 8080 -h /www"]"#,
            ),
        ])
        .await;
    let client = reqwest::Client::new();
    let watcher = QueueWatcher::connect(&ws_url(&agent)).await;
    watcher
        .wait_until("the slow starter ready", STARTUP, |s| serving(s).len() == 1)
        .await;
    let ready_after = started.elapsed();
    assert!(
        ready_after >= Duration::from_secs(9),
        "ready after {ready_after:?}: the command did not sleep first"
    );
    // A few probe periods more: still the one container.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events = events(&client, &agent).await;
    let created = containers_created(&events);
    assert_eq!(created.len(), 1, "replaced while starting: {events:#?}");
    assert!(
        of_kind(&events, "crash_loop").is_empty(),
        "a slow start is not a crash: {events:#?}"
    );
    assert_eq!(env.containers().len(), 1, "exactly one container created");
    assert_eq!(watcher.ids_seen().len(), 1);
    println!("byoa slow start: ready {ready_after:?} after the agent started");
}

/// Point (d): a command that exits at once with code 3: launches spaced further and further
/// apart (exponential back-off, from the `created` events), a `crash_loop` event with the exit
/// code and the last log line, the reason in GET /status; restarting the agent with the
/// image's own command recovers a ready pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn byoa_a_command_that_exits_at_once_backs_off_and_a_fixed_restart_recovers() {
    let env = AppEnv::new(TestApp::BusyboxHttpd);
    let client = reqwest::Client::new();
    let pool = [
        ("DEFAULT_CONTAINER", "1"),
        ("MIN_CONTAINERS", "1"),
        ("MAX_CONTAINERS", "2"),
        ("WORKER_PROBE", "http"),
        ("WORKER_PROBE_PATH", "/"),
    ];
    let mut broken = pool.to_vec();
    broken.extend([
        (
            "WORKER_COMMAND",
            r#"["/bin/busybox","sh","-c","echo giving up on purpose; exit 3"]"#,
        ),
        ("CRASH_BACKOFF_INITIAL", "1s"),
        ("CRASH_BACKOFF_MAX", "8s"),
    ]);
    let mut agent = env.agent(&broken).await;

    // 1 + 2 + 4 s of back-off between the first four launches.
    let created = eventually(
        "four launches of the crashing command",
        Duration::from_secs(60),
        || async {
            let events = events(&client, &agent).await;
            let created: Vec<u64> = containers_created(&events)
                .iter()
                .map(|event| event.at_ms)
                .collect();
            (created.len() >= 4).then_some(created)
        },
    )
    .await;
    let gaps: Vec<u64> = created.windows(2).map(|w| w[1] - w[0]).collect();
    println!("byoa crash loop: gaps between launches {gaps:?} ms");
    assert!(
        gaps.windows(2).all(|w| w[1] > w[0]),
        "launches not spaced further and further apart: gaps {gaps:?} ms"
    );
    assert!(
        gaps[2] >= gaps[0] + 1_500,
        "the back-off does not grow (1 s, 2 s, 4 s): gaps {gaps:?} ms"
    );

    let events = events(&client, &agent).await;
    let crash = of_kind(&events, "crash_loop");
    let crash = crash
        .last()
        .unwrap_or_else(|| panic!("no crash_loop event: {events:#?}"));
    let text = crash.raw.to_string();
    assert!(
        crash.message.contains('3') || text.contains("\"exit_code\":3"),
        "the crash_loop event does not carry exit code 3: {text}"
    );
    assert!(
        text.contains("giving up on purpose"),
        "the crash_loop event does not carry the last log line: {text}"
    );
    let status = get_json(&client, &agent, "/status").await;
    assert_eq!(status["pool"]["ready"], 0, "GET /status: {status}");
    let reason = status["pool"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("crash") && reason.contains('3'),
        "GET /status does not say why no container is ready: {status}"
    );

    // The fix, through a restart: the image's own command.
    agent.terminate();
    assert!(
        agent.exited_within(Duration::from_secs(30)).await.is_some(),
        "the agent did not stop on SIGTERM"
    );
    drop(agent);
    let agent = env.agent(&pool).await;
    let watcher = QueueWatcher::connect(&ws_url(&agent)).await;
    watcher
        .wait_until("a ready pool after the fix", STARTUP, |s| {
            serving(s).len() == 1
        })
        .await;
    let status = get_json(&client, &agent, "/status").await;
    assert_eq!(status["pool"]["ready"], 1, "GET /status: {status}");
}
