//! The agent against the real Docker engine and a real Redis server (and once on the process
//! runtime): lifecycle, scoring categories on the live queue, scaling both ways, recovery from
//! a killed container, an agent restart and a Redis outage, and the HTTP API; a paused worker
//! under load through the real balancer with every routing policy, the last scale request,
//! and worker names that meet leftover containers. `ha`: two agent processes with one leader
//! (split brain, restarts under load, calls forwarded to the leader). `simulated`: the agent
//! binary on the simulated runtime with 50 workers (the scale benchmark's runtime).

mod byoa;
mod dashboard;
mod ha;
mod logs;
mod probes;
mod simulated;
mod support;

use std::time::{Duration, Instant};

use common::queue::Category;
use common::testing::docker;
use deployment_agent::RuntimeKind;
use futures_util::StreamExt;
use serde_json::{Value, json};
use support::{
    AgentProcess, Balancer, DockerEnv, KillOnDrop, Load, OpenLoad, QueueWatcher, Sent, TestAgent,
    fast_config, redis::RedisServer, serving,
};

const STARTUP: Duration = Duration::from_secs(60);
const SCALING: Duration = Duration::from_secs(90);

fn cpu_job() -> Value {
    json!({"operation": "monte_carlo_pi", "data": {"iterations": 30_000_000}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_lifecycle_scaling_recovery_restart_and_redis_outage() {
    let env = DockerEnv::new();
    let mut redis = RedisServer::start();
    let mut config = env.config();
    config.worker_cpus = Some(0.5);
    config.redis_url = Some(redis.url.clone());
    config.token = Some("s3cret".into());

    let mut agent = TestAgent::start(config.clone()).await;
    let watcher = QueueWatcher::connect(&agent.ws_url()).await;

    // DEFAULT_CONTAINER=2: two labelled containers, seen going INIT -> LU.
    let (_, ready) = watcher
        .wait_until("two LU containers", STARTUP, |s| {
            s.items.len() == 2
                && s.items
                    .iter()
                    .all(|i| i.utilization_category == Category::Low)
        })
        .await;
    for item in &ready.items {
        assert!(
            watcher.saw(&item.id, Category::Init),
            "{} was never INIT",
            item.dns_name
        );
        assert!(
            item.dns_name.starts_with(&format!("{}-worker-", env.app)),
            "{}",
            item.dns_name
        );
        assert!(item.score > 0.0 && item.score <= 100.0);
    }
    let on_engine = env.containers();
    assert_eq!(
        on_engine.len(),
        2,
        "containers on the engine: {on_engine:?}"
    );
    let labels = docker(&[
        "inspect",
        "-f",
        "{{index .Config.Labels \"managed-by\"}}",
        &on_engine[0],
    ]);
    assert_eq!(labels, "rustybalancer-tests");

    // The HTTP API's shapes.
    let graph = agent.get_json("/graph").await;
    assert_eq!(graph["total_containers"], 2);
    assert_eq!(graph["nodes"].as_array().unwrap().len(), 2);
    for node in graph["nodes"].as_array().unwrap() {
        for field in ["id", "label", "color", "load", "port"] {
            assert!(
                node.get(field).is_some(),
                "graph node lacks {field}: {node}"
            );
        }
        assert!(["green", "yellow", "red"].contains(&node["color"].as_str().unwrap()));
    }
    assert_eq!(graph["edges"].as_array().unwrap().len(), 1);
    assert!(
        graph["timestamp"].as_str().unwrap().len() == 19,
        "{}",
        graph["timestamp"]
    );
    assert!(graph["total_load"].is_u64());
    let status = agent.get_json("/status").await;
    assert_eq!(status["status"], "running");
    assert_eq!(status["worker_count"], 2);
    for worker in status["workers"].as_array().unwrap() {
        for field in [
            "core_id",
            "container_id",
            "host_port",
            "cpu_usage",
            "is_healthy",
            "concurrency",
            "work_seconds",
        ] {
            assert!(
                worker.get(field).is_some(),
                "status worker lacks {field}: {worker}"
            );
        }
        assert!(worker["cpu_usage"].as_str().unwrap().ends_with('%'));
        assert_eq!(worker["is_healthy"], true);
    }
    let stats = agent.get_json("/stats").await;
    let containers = stats["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 2);
    for container in containers {
        for field in [
            "cpu_score",
            "memory_score",
            "network_score",
            "availability_score",
            "score",
            "category",
        ] {
            assert!(
                container.get(field).is_some(),
                "/stats container lacks {field}"
            );
        }
    }
    assert_eq!(stats["store"]["backend"], "redis");

    // Mutating calls need the token.
    let scale = |token: Option<&str>, body: Value| {
        let mut request = agent.client.post(agent.url("/scale")).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let refused = scale(None, json!({"replicas": 3})).await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(
        refused.json::<Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("AGENT_TOKEN")
    );
    let wrong = scale(Some("nope"), json!({"replicas": 3})).await.unwrap();
    assert_eq!(wrong.status(), 401);
    let bad = scale(Some("s3cret"), json!({"replicas": "many"}))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let drain = agent
        .client
        .post(agent.url("/containers/nope/drain"))
        .send()
        .await
        .unwrap();
    assert_eq!(drain.status(), 401);

    // CPU load on both -> scale up; the subscriber sees the new items.
    let addresses: Vec<String> = ready.items.iter().map(|i| i.address.clone()).collect();
    let load = Load::start(&addresses, 4, cpu_job());
    watcher
        .wait_until("a scale-up to 3 or more", SCALING, |s| {
            s.items
                .iter()
                .filter(|i| i.utilization_category != Category::Sundown)
                .count()
                >= 3
        })
        .await;
    // The scale-up may come from the pool's utilisation before either score crosses into
    // MU: under the same load one of them does.
    common::testing::eventually("a loaded container leaves LU", SCALING, || {
        let left = ready
            .items
            .iter()
            .any(|i| watcher.saw(&i.id, Category::Medium) || watcher.saw(&i.id, Category::High));
        async move { left.then_some(()) }
    })
    .await;
    let done = load.stop().await;
    assert!(done > 0, "the load completed no job");

    // Load gone -> SUNDOWN, then removal down to the minimum.
    let before_down = watcher.ids_seen();
    watcher
        .wait_until("a SUNDOWN container", SCALING, |s| {
            s.items
                .iter()
                .any(|i| i.utilization_category == Category::Sundown)
        })
        .await;
    let (_, settled) = watcher
        .wait_until("back to the minimum of 2", SCALING, |s| {
            s.items.len() == 2
                && s.items
                    .iter()
                    .all(|i| i.utilization_category.accepts_new_requests())
        })
        .await;
    assert!(before_down.len() >= 3);
    common::testing::eventually(
        "the engine to hold 2 containers",
        Duration::from_secs(20),
        || async { (env.containers().len() == 2).then_some(()) },
    )
    .await;

    // docker kill one: it leaves the queue within a second of the event, and is replaced.
    let victim = settled.items[0].clone();
    docker(&["kill", &victim.id]);
    let killed = Instant::now();
    let (gone_at, _) = watcher
        .wait_until(
            "the killed container to leave the queue",
            Duration::from_secs(5),
            |s| s.items.iter().all(|i| i.id != victim.id),
        )
        .await;
    let noticed = gone_at.saturating_duration_since(killed);
    assert!(
        noticed < Duration::from_secs(1),
        "queue updated {noticed:?} after the kill"
    );
    let (_, replaced) = watcher
        .wait_until("a replacement", STARTUP, |s| {
            serving(s).len() == 2 && s.items.iter().all(|i| i.id != victim.id)
        })
        .await;
    assert!(
        replaced
            .items
            .iter()
            .any(|i| settled.items.iter().all(|s| s.id != i.id)),
        "no new container"
    );
    let events = agent.get_json("/events?limit=200").await;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    for kind in [
        "created",
        "ready",
        "scale_up",
        "scale_down",
        "sundown",
        "stopped",
        "died",
    ] {
        assert!(kinds.contains(&kind), "no {kind} event in {kinds:?}");
    }

    // Redis goes away: the agent keeps scaling from memory, then writes back.
    redis.stop();
    let accepted = scale(Some("s3cret"), json!({"replicas": 3})).await.unwrap();
    assert_eq!(accepted.status(), 202);
    let (_, three) = watcher
        .wait_until("3 containers without Redis", STARTUP, |s| {
            serving(s).len() == 3
        })
        .await;
    let status = agent.get_json("/stats").await;
    assert_eq!(status["store"]["connected"], false);
    redis.restart();
    let redis_client = redis::Client::open(redis.url.as_str()).unwrap();
    let prefix = format!("rustybalancer:{}", env.app);
    common::testing::eventually(
        "the agent to resync Redis",
        Duration::from_secs(20),
        || async {
            let mut connection = redis_client.get_multiplexed_async_connection().await.ok()?;
            let members: Vec<String> =
                redis::AsyncCommands::smembers(&mut connection, format!("{prefix}:containers"))
                    .await
                    .ok()?;
            let expected: std::collections::HashSet<String> =
                three.items.iter().map(|i| i.id.clone()).collect();
            (members
                .into_iter()
                .collect::<std::collections::HashSet<_>>()
                == expected)
                .then_some(())
        },
    )
    .await;
    // A bound set through the API is persisted.
    let bounds = scale(
        Some("s3cret"),
        json!({"min_replicas": 3, "max_replicas": 4}),
    )
    .await
    .unwrap();
    assert_eq!(bounds.status(), 202);

    // Restart the agent: it adopts what runs, creates no duplicates, keeps the overrides.
    agent.stop().await;
    let running_before: std::collections::HashSet<String> = env.containers().into_iter().collect();
    assert_eq!(
        running_before.len(),
        3,
        "stopping the agent stopped workers"
    );
    let agent = TestAgent::start(config).await;
    let watcher = QueueWatcher::connect(&agent.ws_url()).await;
    let (_, adopted) = watcher
        .wait_until("the 3 adopted containers serving", STARTUP, |s| {
            serving(s).len() == 3
        })
        .await;
    let adopted_ids: std::collections::HashSet<String> =
        adopted.items.iter().map(|i| i.id.clone()).collect();
    assert_eq!(
        adopted_ids, running_before,
        "the restarted agent changed the containers"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.containers().len(), 3, "duplicates after the restart");
    let config_now = agent.get_json("/config").await;
    assert_eq!(
        (
            config_now["min_replicas"].as_u64(),
            config_now["max_replicas"].as_u64()
        ),
        (Some(3), Some(4))
    );
    assert!(watcher.sequence_increases());

    // Drain one through the API: SUNDOWN at once, then gone; the minimum brings a new one.
    let target = adopted.items[0].id.clone();
    let drained = agent
        .client
        .post(agent.url(&format!("/containers/{}/drain", &target[..12])))
        .bearer_auth("s3cret")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(drained.status(), 202);
    watcher
        .wait_until(
            "the drained container as SUNDOWN",
            Duration::from_secs(5),
            |s| {
                s.items
                    .iter()
                    .any(|i| i.id == target && i.utilization_category == Category::Sundown)
            },
        )
        .await;
    watcher
        .wait_until("the drained container gone", Duration::from_secs(30), |s| {
            s.items.iter().all(|i| i.id != target)
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn process_runtime_runs_the_same_lifecycle() {
    let mut config = fast_config();
    config.runtime = RuntimeKind::Process;
    config.app = format!("rbproc{}", std::process::id());
    config.worker_binary = Some(common::testing::workspace_binary("worker"));
    config.stop_workers_on_exit = false;
    let _cleanup = KillOnDrop(format!("--worker-id {}-worker-", config.app));
    let mut agent = TestAgent::start(config.clone()).await;
    let watcher = QueueWatcher::connect(&agent.ws_url()).await;

    let (_, ready) = watcher
        .wait_until("two LU workers", STARTUP, |s| {
            s.items.len() == 2
                && s.items
                    .iter()
                    .all(|i| i.utilization_category == Category::Low)
        })
        .await;
    for item in &ready.items {
        // Published INIT first, unless it was there before the subscriber connected (the
        // process runtime's workers can be ready within milliseconds).
        assert!(
            watcher.saw(&item.id, Category::Init) || watcher.in_first_snapshot(&item.id),
            "{} was never seen in INIT",
            item.id
        );
        assert!(item.address.starts_with("127.0.0.1:"));
    }

    let addresses: Vec<String> = ready.items.iter().map(|i| i.address.clone()).collect();
    let load = Load::start(
        &addresses,
        3,
        json!({"operation": "sleep", "data": {"seconds": 0.5}}),
    );
    watcher
        .wait_until("a scale-up", SCALING, |s| s.items.len() >= 3)
        .await;
    load.stop().await;
    watcher
        .wait_until("a SUNDOWN worker", SCALING, |s| {
            s.items
                .iter()
                .any(|i| i.utilization_category == Category::Sundown)
        })
        .await;
    let (_, settled) = watcher
        .wait_until("back to 2", SCALING, |s| {
            s.items.len() == 2 && serving(s).len() == 2
        })
        .await;

    // Kill one: noticed, replaced.
    let victim = settled.items[0].clone();
    let pid = victim.id.trim_start_matches("pid-").to_owned();
    assert!(
        std::process::Command::new("kill")
            .args(["-9", &pid])
            .status()
            .unwrap()
            .success()
    );
    watcher
        .wait_until("the killed worker gone", Duration::from_secs(5), |s| {
            s.items.iter().all(|i| i.id != victim.id)
        })
        .await;
    let (_, replaced) = watcher
        .wait_until("a replacement", STARTUP, |s| {
            serving(s).len() == 2 && s.items.iter().all(|i| i.id != victim.id)
        })
        .await;

    // Restart: the processes are adopted, none is duplicated.
    agent.stop().await;
    let agent = TestAgent::start(config).await;
    let watcher = QueueWatcher::connect(&agent.ws_url()).await;
    let (_, adopted) = watcher
        .wait_until("2 adopted workers", STARTUP, |s| serving(s).len() == 2)
        .await;
    let before: std::collections::HashSet<_> =
        replaced.items.iter().map(|i| i.id.clone()).collect();
    let after: std::collections::HashSet<_> = adopted.items.iter().map(|i| i.id.clone()).collect();
    assert_eq!(before, after);
}

/// The balancers' expected work scales the pool (issue #17): a worker is published with its
/// concurrency (WORKER_CPUS=1: one thread), and 3 s in flight on it plus 2 s queued for a slot
/// at 2 s per CPU ask for 3 workers, with the reason in the event log and the load in
/// `/status` and the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_work_the_balancers_report_scales_the_pool() {
    use proto::v1::{self as pb, deployment_agent_client::DeploymentAgentClient};

    let mut config = fast_config();
    config.runtime = RuntimeKind::Process;
    config.app = format!("rbwork{}", std::process::id());
    config.worker_binary = Some(common::testing::workspace_binary("worker"));
    config.min_containers = 1;
    config.default_container = Some(1);
    config.max_containers = 3;
    config.target_concurrency = 0.0; // only the work signal
    config.worker_cpus = Some(1.0);
    config.token = Some("tok".into());
    config.stop_workers_on_exit = true;
    let _cleanup = KillOnDrop(format!("--worker-id {}-worker-", config.app));
    let agent = TestAgent::start(config).await;

    let channel = common::testing::eventually("the gRPC port", Duration::from_secs(10), || async {
        tonic::transport::Endpoint::from_shared(format!("http://{}", agent.grpc))
            .ok()?
            .connect()
            .await
            .ok()
    })
    .await;
    let mut client = DeploymentAgentClient::new(channel);
    let mut queue = client
        .watch_queue(pb::WatchQueueRequest {})
        .await
        .unwrap()
        .into_inner();
    let serving = tokio::time::timeout(SCALING, async {
        loop {
            let snapshot = queue.message().await.unwrap().unwrap();
            if let Some(item) = snapshot
                .items
                .iter()
                .find(|i| i.utilization_category == pb::Category::Lu as i32)
            {
                return item.clone();
            }
        }
    })
    .await
    .expect("the first worker never served");
    assert_eq!(serving.concurrency, 1, "WORKER_CPUS=1: one thread");

    // A balancer with 3 s of work on it and 2 s waiting for a slot, reporting until done.
    let (reports, rx) = tokio::sync::mpsc::channel(4);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("authorization", "Bearer tok".parse().unwrap());
    let mut reporting = client.clone();
    let stream = tokio::spawn(async move { reporting.report_load(request).await });
    let address = serving.address.clone();
    let reporter = tokio::spawn(async move {
        loop {
            let report = pb::LoadReport {
                balancer_id: "b1".into(),
                timestamp_ms: 0,
                backends: vec![pb::BackendLoad {
                    address: address.clone(),
                    in_flight: 1,
                    work_seconds: 3.0,
                    ..Default::default()
                }],
                queued_without_backend: 0,
                queued_work_seconds: 2.0,
                queued_for_slot: 2,
            };
            if reports.send(report).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

    tokio::time::timeout(SCALING, async {
        loop {
            let snapshot = queue.message().await.unwrap().unwrap();
            if snapshot.items.len() == 3 {
                return;
            }
        }
    })
    .await
    .expect("the reported work did not scale the pool to 3");
    let events = agent.get_json("/events?limit=50").await;
    let scaled = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "scale_up")
        .unwrap_or_else(|| panic!("no scale_up event: {events}"));
    assert!(
        scaled["message"]
            .as_str()
            .unwrap()
            .contains("3.0s of work in flight and 2.0s queued"),
        "{scaled}"
    );
    let status = agent.get_json("/status").await;
    assert_eq!(status["balancer_load"]["queued_for_slot"], 2, "{status}");
    assert_eq!(status["balancer_load"]["queued_work_seconds"], 2.0);
    assert_eq!(status["balancer_load"]["work_in_flight_seconds"], 3.0);
    let worked = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["address"] == serving.address.as_str())
        .unwrap_or_else(|| panic!("{status}"));
    assert_eq!(
        (&worked["work_seconds"], &worked["concurrency"]),
        (&json!(3.0), &json!(1))
    );
    let metrics = agent
        .client
        .get(agent.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "agent_queued_work_seconds 2.0",
        "agent_work_in_flight_seconds 3.0",
        "agent_queued_for_slot 2",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in {metrics}"
        );
    }
    reporter.abort();
    let _ = reporter.await;
    stream.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_api_and_scale_from_zero_on_queued_demand() {
    use proto::v1::{self as pb, deployment_agent_client::DeploymentAgentClient};
    use tonic::Request;

    let mut config = fast_config();
    config.runtime = RuntimeKind::Process;
    config.app = format!("rbgrpc{}", std::process::id());
    config.worker_binary = Some(common::testing::workspace_binary("worker"));
    config.min_containers = 0;
    config.default_container = Some(0);
    config.max_containers = 2;
    config.cooldown = Duration::from_secs(300); // demand must scale up cooldown or not
    config.token = Some("tok".into());
    config.stop_workers_on_exit = true;
    let _cleanup = KillOnDrop(format!("--worker-id {}-worker-", config.app));
    let agent = TestAgent::start(config).await;

    let channel = common::testing::eventually("the gRPC port", Duration::from_secs(10), || async {
        tonic::transport::Endpoint::from_shared(format!("http://{}", agent.grpc))
            .ok()?
            .connect()
            .await
            .ok()
    })
    .await;
    let mut client = DeploymentAgentClient::new(channel.clone());

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "rustybalancer.v1.DeploymentAgent".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let mut queue = client
        .watch_queue(pb::WatchQueueRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = queue.message().await.unwrap().unwrap();
    assert_eq!(first.version, common::queue::SCHEMA_VERSION);
    assert!(first.items.is_empty(), "started with {:?}", first.items);
    let status = client
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            status.min_replicas,
            status.max_replicas,
            status.desired_replicas
        ),
        (0, 2, 0)
    );

    // A forged report without the token (or with a wrong one) is refused before it is read,
    // and changes nothing: no demand recorded, no container started.
    for authorization in [None, Some("Bearer nope")] {
        let (reports, rx) = tokio::sync::mpsc::channel(4);
        reports
            .send(pb::LoadReport {
                balancer_id: "forger".into(),
                timestamp_ms: 0,
                backends: vec![],
                queued_without_backend: 40,
                queued_work_seconds: 0.0,
                queued_for_slot: 0,
            })
            .await
            .unwrap();
        let mut request = Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        if let Some(value) = authorization {
            request
                .metadata_mut()
                .insert("authorization", value.parse().unwrap());
        }
        let refused = tokio::time::timeout(Duration::from_secs(10), client.report_load(request))
            .await
            .expect("a refused ReportLoad must end at once")
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
        assert!(refused.message().contains("AGENT_TOKEN"), "{refused:?}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // four scaling periods
    let status = client
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.desired_replicas, 0,
        "a refused report scaled the pool"
    );
    let metrics = agent
        .client
        .get(agent.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let demand = metrics
        .lines()
        .find(|line| line.contains("queued_demand") && !line.starts_with('#'))
        .unwrap_or_else(|| panic!("no queued_demand in {metrics}"));
    assert!(
        demand.ends_with(" 0"),
        "a refused report was recorded: {demand}"
    );

    // A balancer holding requests with no backend: scale from zero at once.
    let (reports, rx) = tokio::sync::mpsc::channel(4);
    let mut reporting = client.clone();
    let stream = tokio::spawn(async move {
        let mut request = Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        request
            .metadata_mut()
            .insert("authorization", "Bearer tok".parse().unwrap());
        reporting.report_load(request).await
    });
    reports
        .send(pb::LoadReport {
            balancer_id: "b1".into(),
            timestamp_ms: 0,
            backends: vec![],
            queued_without_backend: 3,
            queued_work_seconds: 0.0,
            queued_for_slot: 0,
        })
        .await
        .unwrap();
    let ready = tokio::time::timeout(SCALING, async {
        loop {
            let snapshot = queue.message().await.unwrap().unwrap();
            if snapshot
                .items
                .iter()
                .any(|i| i.utilization_category == pb::Category::Lu as i32)
            {
                return snapshot;
            }
        }
    })
    .await
    .expect("no worker started for the queued demand");
    assert!(!ready.items.is_empty());
    drop(reports);
    stream.await.unwrap().unwrap();

    // Scale and drain need the token; a count above MAX_CONTAINERS_LIMIT is refused.
    let denied = client
        .scale(pb::ScaleRequest { replicas: 2 })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::Unauthenticated);
    let denied = client
        .drain(pb::DrainRequest {
            container_id: ready.items[0].id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::Unauthenticated);
    let mut request = Request::new(pb::ScaleRequest { replicas: 1000 });
    request
        .metadata_mut()
        .insert("authorization", "Bearer tok".parse().unwrap());
    let over = client.scale(request).await.unwrap_err();
    assert_eq!(over.code(), tonic::Code::InvalidArgument, "{over:?}");
    assert!(
        over.message().contains("MAX_CONTAINERS_LIMIT (100)"),
        "{over:?}"
    );
    let mut request = Request::new(pb::ScaleRequest { replicas: 5 });
    request
        .metadata_mut()
        .insert("authorization", "Bearer tok".parse().unwrap());
    assert_eq!(
        client
            .scale(request)
            .await
            .unwrap()
            .into_inner()
            .desired_replicas,
        2,
        "clamped to the maximum"
    );
    let mut request = Request::new(pb::DrainRequest {
        container_id: "no-such-container".into(),
    });
    request
        .metadata_mut()
        .insert("authorization", "Bearer tok".parse().unwrap());
    assert_eq!(
        client.drain(request).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    let mut request = Request::new(pb::DrainRequest {
        container_id: ready.items[0].id.clone(),
    });
    request
        .metadata_mut()
        .insert("authorization", "Bearer tok".parse().unwrap());
    assert!(client.drain(request).await.unwrap().into_inner().draining);
}

/// Ids of `env`'s containers in one Docker state (`paused`, `running`).
fn containers_in(env: &DockerEnv, status: &str) -> Vec<String> {
    docker(&[
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label=application={}", env.app),
        "--filter",
        &format!("status={status}"),
    ])
    .split_whitespace()
    .map(str::to_owned)
    .collect()
}

/// `standby` is not in the queue; scaling from one worker to two thaws it, and it serves.
async fn thawed_on_scale_out(agent: &TestAgent, watcher: &QueueWatcher, standby: &str) {
    let queue = watcher.latest().unwrap();
    assert!(!queue.items.iter().any(|item| item.id == standby));
    agent.request_replicas(2).await;
    let (_, two) = watcher
        .wait_until("two serving workers", STARTUP, |s| serving(s).len() == 2)
        .await;
    assert!(
        two.items.iter().any(|item| item.id == standby),
        "the standby was not the one thawed: {two:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warm_standby_is_thawed_on_scale_out_refilled_and_kept_across_restarts() {
    let env = DockerEnv::new();
    let mut config = env.config();
    config.default_container = Some(1);
    config.min_containers = 1;
    config.warm_pool = 1;
    let mut agent = TestAgent::start(config.clone()).await;
    let watcher = QueueWatcher::connect(&agent.ws_url()).await;
    watcher
        .wait_until("one worker", STARTUP, |s| serving(s).len() == 1)
        .await;

    // One standby: paused on the engine, healthy before it was paused, not in the queue.
    let standby = common::testing::wait_for("a paused standby", STARTUP, || {
        let paused = containers_in(&env, "paused");
        (paused.len() == 1).then(|| paused[0].clone())
    });
    assert_eq!(containers_in(&env, "running").len(), 1);
    let status = agent.get_json("/status").await;
    assert_eq!(status["worker_count"], 1);
    assert_eq!(status["warm_standby"]["ready"].as_array().unwrap().len(), 1);
    thawed_on_scale_out(&agent, &watcher, &standby).await;
    let events = agent.get_json("/events?limit=100").await;
    let said = |kind: &str, text: &str| {
        events["events"].as_array().unwrap().iter().any(|event| {
            event["kind"] == kind
                && event["container"] == standby.as_str()
                && event["message"].as_str().unwrap().contains(text)
        })
    };
    assert!(said("created", "thawed warm standby"), "{events:#}");
    assert!(said("ready", "after the thaw call"), "{events:#}");

    // The pool is refilled with a new standby.
    let refill = common::testing::wait_for("a new standby", STARTUP, || {
        let paused = containers_in(&env, "paused");
        (paused.len() == 1 && paused[0] != standby).then(|| paused[0].clone())
    });

    // A restarted agent keeps the standby as a standby: nothing thawed, nothing duplicated.
    agent.stop().await;
    config.default_container = Some(2);
    config.min_containers = 2;
    let agent = TestAgent::start(config).await;
    let watcher = QueueWatcher::connect(&agent.ws_url()).await;
    watcher
        .wait_until("two serving workers again", STARTUP, |s| {
            serving(s).len() == 2
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(containers_in(&env, "paused"), [refill]);
    assert_eq!(containers_in(&env, "running").len(), 2);
    assert_eq!(env.containers().len(), 3, "duplicates after the restart");
    let status = agent.get_json("/status").await;
    assert_eq!(status["worker_count"], 2);
    assert_eq!(status["warm_standby"]["ready"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn process_runtime_warm_standby_is_a_stopped_process_thawed_on_scale_out() {
    let mut config = fast_config();
    config.runtime = RuntimeKind::Process;
    config.app = format!("rbprocpool{}", std::process::id());
    config.worker_binary = Some(common::testing::workspace_binary("worker"));
    config.stop_workers_on_exit = false;
    config.default_container = Some(1);
    config.min_containers = 1;
    config.warm_pool = 1;
    let marker = format!("--worker-id {}-worker-", config.app);
    let _cleanup = KillOnDrop(marker.clone());
    let agent = TestAgent::start(config).await;
    let watcher = QueueWatcher::connect(&agent.ws_url()).await;
    watcher
        .wait_until("one worker", STARTUP, |s| serving(s).len() == 1)
        .await;
    // The standby: one of this test's worker processes in state T (SIGSTOP), not in the queue.
    let standby = common::testing::wait_for("a stopped standby", STARTUP, || {
        let processes = std::fs::read_dir("/proc").ok()?;
        processes.flatten().find_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let stopped = stat.rsplit_once(") ")?.1.starts_with('T');
            (stopped && cmdline.contains(&marker)).then(|| format!("pid-{pid}"))
        })
    });
    thawed_on_scale_out(&agent, &watcher, &standby).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cpu_pinning_gives_each_worker_its_own_core_and_never_more_workers_than_cores() {
    let env = DockerEnv::new();
    let mut config = env.config();
    config.worker_cpuset = Some(deployment_agent::config::parse_cpuset("0-1").unwrap());
    config.default_container = Some(1);
    config.min_containers = 1;
    let agent = TestAgent::start(config).await;
    let watcher = QueueWatcher::connect(&agent.ws_url()).await;
    watcher
        .wait_until("one worker", STARTUP, |s| serving(s).len() == 1)
        .await;
    agent.request_replicas(4).await;
    watcher
        .wait_until("two pinned workers", STARTUP, |s| serving(s).len() == 2)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let containers = env.containers();
    assert_eq!(containers.len(), 2, "more workers than cores");
    let mut cores: Vec<String> = containers
        .iter()
        .map(|id| docker(&["inspect", "-f", "{{.HostConfig.CpusetCpus}}", id]))
        .collect();
    cores.sort();
    assert_eq!(cores, ["0", "1"]);
    let status = agent.get_json("/status").await;
    let mut core_ids: Vec<u64> = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["core_id"].as_u64())
        .collect();
    core_ids.sort_unstable();
    assert_eq!(core_ids, [0, 1]);
}

#[test]
fn a_bad_setting_stops_start_up_naming_the_variable() {
    let binary = common::testing::workspace_binary("deployment-agent");
    for (variable, value) in [
        ("HIGH_LOAD_THRESHOLD", "lots"),
        ("SCALE_CHECK_PERIOD", "soon"),
        ("AGENT_RUNTIME", "kubernetes"),
        ("WORKER_MEMORY", "12q"),
        ("WORKER_CPUSET", "3-1"),
        ("MAX_CONTAINERS", "-1"),
        ("WARM_POOL", "17"),
        ("WORKER_CONCURRENCY", "-1"),
        ("TARGET_WORK_SECONDS", "0"),
    ] {
        let output = std::process::Command::new(&binary)
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
    // Relations between settings are checked too.
    let output = std::process::Command::new(&binary)
        .envs([("LOW_LOAD_THRESHOLD", "80"), ("HIGH_LOAD_THRESHOLD", "70")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("LOW_LOAD_THRESHOLD"), "{stderr}");
    let output = std::process::Command::new(&binary)
        .envs([("WARM_POOL", "1"), ("WORKER_CPUSET", "0-1")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("WARM_POOL") && stderr.contains("WORKER_CPUSET"),
        "{stderr}"
    );
    let help = std::process::Command::new(&binary)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for variable in [
        "DOCKER_IMAGE",
        "DEFAULT_CONTAINER",
        "COOLDOWN_PERIOD",
        "EMA_ALPHA",
        "REDIS_HOST",
        "AGENT_TOKEN",
        "WORKER_CONCURRENCY",
        "TARGET_WORK_SECONDS",
    ] {
        assert!(help.contains(variable), "--help lacks {variable}");
    }
}

/// The agent's events as (kind, container, at_ms, message).
async fn events(agent: &TestAgent) -> Vec<(String, Option<String>, u64, String)> {
    let events = agent.get_json("/events?limit=1000").await;
    events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| {
            (
                event["kind"].as_str().unwrap_or_default().to_owned(),
                event["container"].as_str().map(str::to_owned),
                event["at_ms"].as_u64().unwrap_or(0),
                event["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// How long after the agent records `unhealthy` a balancer may still send a new request to
/// the worker. The agent publishes the queue before it records the event; this covers the
/// WebSocket push to the balancer and its routing-table swap on a busy 2-core machine.
const PUBLISH_ALLOWANCE_MS: u64 = 500;

/// Issue 12, point 8: `docker pause` of a serving worker under load through four balancers,
/// one per routing policy. It leaves the queue (published INIT) a few probes after the pause;
/// no request sent after the agent's `unhealthy` event (+ the publish allowance) goes to it,
/// whatever the policy; unpaused before UNHEALTHY_TIMEOUT it comes back (`recovered`); paused
/// again for longer, it is stopped, removed and replaced. Prints each policy's p99.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_a_paused_worker_leaves_every_policys_routing_set_then_recovers_or_is_replaced() {
    const TOKEN: &str = "unhealthy-test-token";
    let env = DockerEnv::new();
    let mut config = env.config();
    config.default_container = Some(3);
    config.min_containers = 3;
    config.max_containers = 4;
    config.target_concurrency = 0.0; // the requests stalled on the paused worker scale nothing
    config.probe_timeout = Duration::from_millis(500);
    config.unhealthy_threshold = 2;
    config.unhealthy_timeout = Duration::from_secs(10);
    config.token = Some(TOKEN.into());
    let agent = TestAgent::start(config).await;
    let watcher = QueueWatcher::connect(&agent.ws_url()).await;
    let (_, ready) = watcher
        .wait_until("three serving workers", STARTUP, |s| {
            s.items.len() == 3 && serving(s).len() == 3
        })
        .await;

    let policies = [
        "round-robin",
        "weighted-random",
        "least-request",
        "p2c-ewma",
    ];
    let balancers: Vec<Balancer> = policies
        .iter()
        .map(|policy| {
            Balancer::start(
                &agent,
                TOKEN,
                policy,
                &[
                    ("CACHE_CAPACITY", "0"),
                    ("BALANCER_THREADS", "1"),
                    // Longer than the pause: a stalled request ends when the worker thaws.
                    ("REQUEST_TIMEOUT", "60s"),
                ],
            )
        })
        .collect();
    for balancer in &balancers {
        common::testing::eventually(
            &format!("the {} balancer to route to 3 workers", balancer.policy),
            Duration::from_secs(20),
            || async { (balancer.candidates(&agent.client).await.len() == 3).then_some(()) },
        )
        .await;
    }

    let loads: Vec<OpenLoad> = balancers
        .iter()
        .map(|balancer| OpenLoad::start(balancer.url("/health"), 40))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sick = ready.items[0].clone();
    let paused_ms = support::now_ms();
    let paused = Instant::now();
    docker(&["pause", &sick.id]);
    let (left_at, _) = watcher
        .wait_until(
            "the paused worker out of the routing set",
            Duration::from_secs(15),
            |s| {
                s.items
                    .iter()
                    .any(|i| i.id == sick.id && !i.utilization_category.accepts_new_requests())
            },
        )
        .await;
    println!(
        "paused {}: out of the queue {} ms after the pause",
        sick.dns_name,
        left_at.saturating_duration_since(paused).as_millis()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    docker(&["unpause", &sick.id]);
    watcher
        .wait_until(
            "the thawed worker back in the queue",
            Duration::from_secs(15),
            |s| serving(s).iter().any(|i| i.id == sick.id),
        )
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut runs = Vec::new();
    for load in loads {
        runs.push(load.stop().await);
    }

    let log = events(&agent).await;
    let at = |kind: &str| {
        log.iter()
            .find(|(k, container, _, _)| k == kind && container.as_deref() == Some(&sick.id))
            .map(|(_, _, at_ms, _)| *at_ms)
            .unwrap_or_else(|| panic!("no {kind} event for the paused worker: {log:#?}"))
    };
    let (unhealthy_ms, recovered_ms) = (at("unhealthy"), at("recovered"));
    assert!(paused_ms < unhealthy_ms && unhealthy_ms < recovered_ms);
    for (balancer, run) in balancers.iter().zip(&runs) {
        let to_sick = |sent: &&Sent| sent.backend.as_deref() == Some(sick.dns_name.as_str());
        let before = run
            .iter()
            .filter(|s| s.at_ms < paused_ms)
            .filter(to_sick)
            .count();
        assert!(
            before > 0,
            "{}: the worker took no request before the pause",
            balancer.policy
        );
        let window: Vec<&Sent> = run
            .iter()
            .filter(|s| s.at_ms >= unhealthy_ms + PUBLISH_ALLOWANCE_MS && s.at_ms < recovered_ms)
            .collect();
        assert!(
            window.len() >= 20,
            "{}: only {} requests while the worker was out",
            balancer.policy,
            window.len()
        );
        let wrong: Vec<&&Sent> = window
            .iter()
            .filter(|s| to_sick(s) || s.status != 200)
            .collect();
        assert!(
            wrong.is_empty(),
            "{}: requests sent after the worker was marked unhealthy went to it or failed: {wrong:#?}",
            balancer.policy
        );
        let to_sick_between = |from: u64, to: u64| {
            run.iter()
                .filter(to_sick)
                .filter(|s| s.at_ms >= from && s.at_ms < to)
                .count()
        };
        let stalled = to_sick_between(paused_ms, unhealthy_ms);
        let in_allowance = to_sick_between(unhealthy_ms, unhealthy_ms + PUBLISH_ALLOWANCE_MS);
        let after_recovery = to_sick_between(recovered_ms + PUBLISH_ALLOWANCE_MS, u64::MAX);
        if balancer.policy == "round-robin" {
            assert!(
                after_recovery > 0,
                "round-robin: the recovered worker gets no request"
            );
        }
        let latencies: Vec<Duration> = run.iter().map(|s| s.latency).collect();
        println!(
            "{:>15}: {} requests; to the paused worker: {} before the pause, {} between the pause \
             and the unhealthy mark (stalled until the thaw), {} within the publish allowance, 0 \
             of the {} sent while it was out, {} after it recovered; p50 {:?}, p99 {:?}, max {:?}",
            balancer.policy,
            run.len(),
            before,
            stalled,
            in_allowance,
            window.len(),
            after_recovery,
            support::quantile(&latencies, 0.5),
            support::quantile(&latencies, 0.99),
            support::quantile(&latencies, 1.0),
        );
        assert!(
            run.iter().all(|s| s.status == 200),
            "{}: a request failed",
            balancer.policy
        );
    }

    // Paused for longer than UNHEALTHY_TIMEOUT: stopped, removed and replaced.
    docker(&["pause", &sick.id]);
    let (_, replaced) = watcher
        .wait_until("the paused worker replaced", SCALING, |s| {
            serving(s).len() == 3 && s.items.iter().all(|i| i.id != sick.id)
        })
        .await;
    assert!(
        replaced
            .items
            .iter()
            .any(|i| ready.items.iter().all(|r| r.id != i.id)),
        "no new worker: {replaced:#?}"
    );
    common::testing::eventually(
        "the sick container removed from the engine",
        Duration::from_secs(30),
        || async {
            let on_engine = env.containers();
            (on_engine.len() == 3 && !on_engine.contains(&sick.id)).then_some(())
        },
    )
    .await;
    let log = events(&agent).await;
    let said = |kind: &str, text: &str| {
        log.iter().any(|(k, container, _, message)| {
            k == kind && container.as_deref() == Some(&sick.id) && message.contains(text)
        })
    };
    assert!(said("died", "unhealthy for"), "{log:#?}");
    assert!(said("stopped", "stayed unhealthy"), "{log:#?}");
}

/// Issue 12, point 9: `POST /scale` 5 then, 150 ms later, 1: the target is 1 after one
/// decision, the workers that never served go (still being created, starting or ready), the
/// one that served stays. On Docker, where a container takes long enough to start that the
/// second request meets them starting.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_the_last_scale_request_wins_and_the_serving_worker_stays() {
    let env = DockerEnv::new();
    let mut config = env.config();
    config.default_container = Some(1);
    config.min_containers = 1;
    config.max_containers = 6;
    // Only the requests may shrink the pool in this test, not the low load.
    config.scale_down_stabilization = Duration::from_secs(300);
    config.cooldown = Duration::from_secs(300);
    let agent = TestAgent::start(config).await;
    let watcher = QueueWatcher::connect(&agent.ws_url()).await;
    let (_, one) = watcher
        .wait_until("one worker", STARTUP, |s| serving(s).len() == 1)
        .await;
    let worker = one.items[0].clone();

    // It serves a few jobs; the agent sees it has served.
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let response = client
            .post(format!("http://{}/submit", worker.address))
            .json(&json!({"operation": "sleep", "data": {"seconds": 0.01}}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
    }
    common::testing::eventually(
        "the agent to see the worker served",
        Duration::from_secs(10),
        || async {
            let stats = agent.get_json("/stats").await;
            (stats["containers"][0]["served"] == true).then_some(())
        },
    )
    .await;

    agent.request_replicas(5).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    agent.request_replicas(1).await;
    let asked = Instant::now();
    let desired = || async {
        agent.get_json("/stats").await["bounds"]["desired_replicas"]
            .as_u64()
            .unwrap()
    };
    common::testing::eventually("1 desired replica", Duration::from_secs(3), || async {
        (desired().await == 1).then_some(())
    })
    .await;
    println!(
        "desired back to 1 {} ms after the second request",
        asked.elapsed().as_millis()
    );
    let (_, settled) = watcher
        .wait_until("only the serving worker left", STARTUP, |s| {
            s.items.len() == 1 && serving(s).len() == 1
        })
        .await;
    assert_eq!(
        settled.items[0].id, worker.id,
        "the serving worker was removed"
    );
    assert!(
        !watcher.saw(&worker.id, Category::Sundown),
        "the serving worker was drained"
    );
    common::testing::eventually(
        "the engine to hold the serving worker only",
        Duration::from_secs(30),
        || async { (env.containers() == [worker.id.clone()]).then_some(()) },
    )
    .await;
    for _ in 0..10 {
        assert_eq!(desired().await, 1, "the target moved again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = events(&agent).await;
    let cancelled = log
        .iter()
        .filter(|(kind, _, _, message)| kind == "sundown" && message.contains("launch cancelled"))
        .count();
    println!("of the 4 new workers, {cancelled} were cancelled while being created");
    assert!(
        !log.iter()
            .any(|(kind, _, _, message)| kind == "died" && message.contains("could not start")),
        "{log:#?}"
    );
}

/// Issue 12, point 13: leftover containers named like the next worker (stopped, not the
/// agent's labels) are skipped, whether the agent listed them (created before it started) or
/// meets them as a 409 on create (created after its last listing); no scale-up is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_new_worker_names_skip_leftover_containers_and_retry_a_conflict() {
    let mut env = DockerEnv::new();
    let blocker = |env: &mut DockerEnv, n: u32| {
        let name = format!("{}-worker-{n}", env.app);
        env.cleanup.containers.push(name.clone());
        docker(&[
            "create",
            "--label",
            common::testing::TEST_LABEL,
            "--name",
            &name,
            &env.image,
        ]);
        name
    };
    let listed = blocker(&mut env, 2);
    let mut config = env.config();
    config.default_container = Some(1);
    config.min_containers = 1;
    config.max_containers = 4;
    config.cooldown = Duration::from_secs(300);
    config.scale_down_stabilization = Duration::from_secs(300);
    let started = Instant::now();
    let agent = TestAgent::start(config).await;
    let watcher = QueueWatcher::connect(&agent.ws_url()).await;
    watcher
        .wait_until("one worker", STARTUP, |s| serving(s).len() == 1)
        .await;

    agent.request_replicas(2).await;
    let (_, two) = watcher
        .wait_until("two workers", STARTUP, |s| serving(s).len() == 2)
        .await;
    // Created after the agent's last listing: its create answers 409.
    let unlisted = blocker(&mut env, 4);
    agent.request_replicas(3).await;
    // The agent lists the engine at start, then every 10 s.
    let before_next_listing = started.elapsed() < Duration::from_secs(9);
    let (_, three) = watcher
        .wait_until("three workers", STARTUP, |s| serving(s).len() == 3)
        .await;
    let mut names: Vec<String> = three.items.iter().map(|i| i.dns_name.clone()).collect();
    names.sort();
    let expected: Vec<String> = [1, 3, 5]
        .iter()
        .map(|n| format!("{}-worker-{n}", env.app))
        .collect();
    assert_eq!(names, expected, "after two workers {:?}", two.items);
    for leftover in [&listed, &unlisted] {
        let state = docker(&["inspect", "-f", "{{.State.Status}}", leftover]);
        assert_eq!(state, "created", "{leftover} was touched");
    }
    let log = events(&agent).await;
    assert!(
        !log.iter()
            .any(|(kind, _, _, message)| kind == "died" && message.contains("could not start")),
        "{log:#?}"
    );
    let conflict = log.iter().any(|(kind, _, _, message)| {
        kind == "created" && message.contains(&format!("({unlisted} already existed)"))
    });
    println!("409 on {unlisted} retried with the next name: {conflict}");
    if before_next_listing {
        assert!(conflict, "no 409 retried: {log:#?}");
    }
}

// ---------------------------------------------------------------------------------------
// Security: the token, cross-site requests, bounds; shutdown; WebSocket subscribers.

/// An agent on the process runtime that starts no worker: tests of its API alone.
fn idle_config(name: &str) -> deployment_agent::Config {
    let mut config = fast_config();
    config.runtime = RuntimeKind::Process;
    config.app = format!("rb{name}{}", std::process::id());
    config.worker_binary = Some(common::testing::workspace_binary("worker"));
    config.min_containers = 0;
    config.default_container = Some(0);
    config
}

/// A `POST` as any client may send it: content type, `Origin` and token each optional.
async fn raw_post(
    agent: &TestAgent,
    path: &str,
    content_type: &str,
    origin: Option<&str>,
    token: Option<&str>,
    body: &str,
) -> reqwest::Response {
    let mut request = agent
        .client
        .post(agent.url(path))
        .header("content-type", content_type)
        .body(body.to_owned());
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

/// The status and the `error` of a JSON error answer.
async fn refusal(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{status} without a JSON body: {content_type}"
    );
    let body: Value = response.json().await.unwrap();
    let error = body["error"].as_str().unwrap_or_default().to_owned();
    assert!(!error.is_empty(), "{status}: {body}");
    (status, error)
}

/// `Access-Control-Allow-Origin` of a CORS preflight for `POST path` from `origin`.
async fn preflight(agent: &TestAgent, path: &str, origin: &str, method: &str) -> Option<String> {
    let response = agent
        .client
        .request(reqwest::Method::OPTIONS, agent.url(path))
        .header("origin", origin)
        .header("access-control-request-method", method)
        .header(
            "access-control-request-headers",
            "content-type, authorization",
        )
        .send()
        .await
        .unwrap();
    response
        .headers()
        .get("access-control-allow-origin")
        .map(|v| v.to_str().unwrap().to_owned())
}

/// `Access-Control-Allow-Origin` of `GET path` from `origin`.
async fn read_allowed(agent: &TestAgent, path: &str, origin: &str) -> Option<String> {
    let response = agent
        .client
        .get(agent.url(path))
        .header("origin", origin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response
        .headers()
        .get("access-control-allow-origin")
        .map(|v| v.to_str().unwrap().to_owned())
}

const EVIL: &str = "http://evil.example";
const FORGED: &str = r#"{"max_replicas":1000000}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_every_change_is_refused_and_no_other_site_is_allowed() {
    use proto::v1::{self as pb, deployment_agent_client::DeploymentAgentClient};

    let mut config = idle_config("locked");
    config.token = None;
    let agent = TestAgent::start(config).await;
    let shown = agent.get_json("/config").await;
    assert_eq!(shown["token_required"], true, "{shown}");
    assert_eq!(shown["locked"], true, "{shown}");
    let max_before = shown["max_replicas"].clone();

    // The issue's request from another site, then the same well-formed, with or without a
    // token: refused, saying how to set one.
    let (status, _) =
        refusal(raw_post(&agent, "/scale", "text/plain", Some(EVIL), None, FORGED).await).await;
    assert_eq!(status, 403);
    for token in [None, Some("anything")] {
        for path in ["/scale", "/containers/x/drain"] {
            let response = raw_post(&agent, path, "application/json", None, token, FORGED).await;
            let (status, error) = refusal(response).await;
            assert_eq!(status, 401, "{path} {token:?}: {error}");
            assert!(
                error.contains("AGENT_TOKEN") && error.contains("AGENT_INSECURE=true"),
                "{error}"
            );
        }
    }
    // Same over gRPC.
    let channel = common::testing::eventually("the gRPC port", Duration::from_secs(10), || async {
        tonic::transport::Endpoint::from_shared(format!("http://{}", agent.grpc))
            .ok()?
            .connect()
            .await
            .ok()
    })
    .await;
    let mut client = DeploymentAgentClient::new(channel);
    let mut request = tonic::Request::new(pb::ScaleRequest { replicas: 3 });
    request
        .metadata_mut()
        .insert("authorization", "Bearer anything".parse().unwrap());
    let refused = client.scale(request).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert!(refused.message().contains("AGENT_INSECURE"), "{refused:?}");
    let refused = client
        .report_load(tokio_stream::iter([pb::LoadReport {
            balancer_id: "forger".into(),
            timestamp_ms: 0,
            backends: vec![],
            queued_without_backend: 40,
            queued_work_seconds: 0.0,
            queued_for_slot: 0,
        }]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let shown = agent.get_json("/config").await;
    assert_eq!(shown["max_replicas"], max_before, "the bounds changed");
    assert_eq!(agent.get_json("/status").await["worker_count"], 0);

    // Default CORS_ORIGINS (empty): no other origin may read either.
    assert_eq!(read_allowed(&agent, "/config", EVIL).await, None);
    assert_eq!(preflight(&agent, "/scale", EVIL, "POST").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_need_the_token_json_and_an_allowed_origin_and_stay_within_the_limit() {
    let mut config = idle_config("guarded");
    config.cors_origins = "http://dash.example".into();
    let agent = TestAgent::start(config).await;
    let shown = agent.get_json("/config").await;
    assert_eq!(
        (&shown["token_required"], &shown["locked"]),
        (&json!(true), &json!(false))
    );
    let max_before = shown["max_replicas"].clone();
    let token = Some(support::TOKEN);
    let own = format!("http://{}", agent.http);

    // The issue's forged request, from another site, even with the token: refused.
    for token in [None, token] {
        let response = raw_post(&agent, "/scale", "text/plain", Some(EVIL), token, FORGED).await;
        assert_eq!(refusal(response).await.0, 403);
        let response = raw_post(
            &agent,
            "/scale",
            "application/json",
            Some(EVIL),
            token,
            FORGED,
        )
        .await;
        assert_eq!(refusal(response).await.0, 403);
    }
    // No preflight passes for that origin.
    assert_eq!(preflight(&agent, "/scale", EVIL, "POST").await, None);
    assert_eq!(read_allowed(&agent, "/config", EVIL).await, None);
    // Without a browser's Origin: the token, then JSON.
    let (status, error) =
        refusal(raw_post(&agent, "/scale", "application/json", None, None, FORGED).await).await;
    assert_eq!(status, 401, "{error}");
    assert!(error.contains("Bearer <AGENT_TOKEN>"), "{error}");
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let (status, error) =
            refusal(raw_post(&agent, "/scale", content_type, None, token, FORGED).await).await;
        assert_eq!(status, 415, "{content_type}: {error}");
        assert!(error.contains("application/json"), "{error}");
    }
    let (status, _) =
        refusal(raw_post(&agent, "/containers/x/drain", "text/plain", None, token, "").await).await;
    assert_eq!(status, 415);
    assert_eq!(
        agent.get_json("/config").await["max_replicas"],
        max_before,
        "bounds changed"
    );

    // MAX_CONTAINERS_LIMIT (100) bounds every count asked for.
    for body in [
        json!({"max_replicas": 1_000_000}),
        json!({"max_replicas": 101}),
        json!({"min_replicas": 101}),
        json!({"replicas": 101}),
    ] {
        let (status, error) = refusal(agent.post("/scale", &body).await).await;
        assert_eq!(status, 400, "{body}: {error}");
        assert!(
            error.contains("MAX_CONTAINERS_LIMIT (100)"),
            "{body}: {error}"
        );
    }
    assert_eq!(
        agent.get_json("/config").await["max_replicas"],
        max_before,
        "bounds changed"
    );

    // Allowed: no Origin (curl, balancers), the agent's own pages, a listed origin.
    let body = r#"{"min_replicas": 0, "max_replicas": 100}"#;
    for origin in [None, Some(own.as_str()), Some("http://dash.example")] {
        let response = raw_post(
            &agent,
            "/scale",
            "application/json; charset=utf-8",
            origin,
            token,
            body,
        )
        .await;
        assert_eq!(response.status(), 202, "{origin:?}");
    }
    assert_eq!(agent.get_json("/config").await["max_replicas"], 100);
    assert_eq!(
        preflight(&agent, "/scale", "http://dash.example", "POST")
            .await
            .as_deref(),
        Some("http://dash.example")
    );
    assert_eq!(
        read_allowed(&agent, "/config", "http://dash.example")
            .await
            .as_deref(),
        Some("http://dash.example")
    );

    // CORS_ORIGINS=* lets any page read, never change.
    let mut config = idle_config("anyorigin");
    config.cors_origins = "*".into();
    let open = TestAgent::start(config).await;
    assert!(read_allowed(&open, "/config", EVIL).await.is_some());
    assert_eq!(preflight(&open, "/scale", EVIL, "POST").await, None);
    let response = raw_post(&open, "/scale", "application/json", Some(EVIL), token, body).await;
    assert_eq!(refusal(response).await.0, 403);

    // AGENT_INSECURE=true without a token: open, and the page is told so.
    let mut config = idle_config("insecure");
    config.token = None;
    config.insecure = true;
    let insecure = TestAgent::start(config).await;
    let shown = insecure.get_json("/config").await;
    assert_eq!(
        (&shown["token_required"], &shown["locked"]),
        (&json!(false), &json!(false))
    );
    let response = raw_post(&insecure, "/scale", "application/json", None, None, body).await;
    assert_eq!(response.status(), 202);
}

/// The first WARN event of `agent` whose message contains every part of `parts`.
async fn warning(agent: &AgentProcess, parts: &[&str]) -> Value {
    common::testing::eventually("the start-up warning", Duration::from_secs(10), || async {
        agent.logs().into_iter().find(|event| {
            let message = event["message"].as_str().unwrap_or_default();
            event["level"] == "WARN" && parts.iter().all(|part| message.contains(part))
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_says_at_start_how_to_set_a_token() {
    let agent = AgentProcess::start(&[]).await;
    let said = warning(
        &agent,
        &["no AGENT_TOKEN", "--token", "AGENT_INSECURE=true"],
    )
    .await;
    eprintln!("locked: {}", said["message"]);
    let response = reqwest::Client::new()
        .post(format!("http://{}/scale", agent.http))
        .json(&json!({"replicas": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let agent = AgentProcess::start(&[("AGENT_INSECURE", "true")]).await;
    let said = warning(&agent, &["AGENT_INSECURE=true", "anyone"]).await;
    eprintln!("insecure: {}", said["message"]);

    // MAX_CONTAINERS above MAX_CONTAINERS_LIMIT is a configuration error naming both.
    let output = std::process::Command::new(common::testing::workspace_binary("deployment-agent"))
        .env_clear()
        .envs([("MAX_CONTAINERS", "150"), ("MAX_CONTAINERS_LIMIT", "100")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("MAX_CONTAINERS (150)") && stderr.contains("MAX_CONTAINERS_LIMIT (100)"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_ends_every_stream_and_the_agent_exits_within_its_grace() {
    use proto::v1::{self as pb, deployment_agent_client::DeploymentAgentClient};
    use tokio_tungstenite::tungstenite::Message;

    const GRACE: Duration = Duration::from_secs(5);
    let mut agent = AgentProcess::start(&[
        ("AGENT_TOKEN", "tok"),
        ("SHUTDOWN_GRACE", "5s"),
        ("WS_PING_PERIOD", "1s"),
    ])
    .await;

    // What balancers and dashboards hold open: WatchQueue, ReportLoad, both WebSockets.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", agent.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = DeploymentAgentClient::new(channel);
    let mut queue = client
        .watch_queue(pb::WatchQueueRequest {})
        .await
        .unwrap()
        .into_inner();
    queue.message().await.unwrap().expect("a first snapshot");
    let (reports, rx) = tokio::sync::mpsc::channel(4);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("authorization", "Bearer tok".parse().unwrap());
    let mut reporting = client.clone();
    let report_call = tokio::spawn(async move { reporting.report_load(request).await });
    for _ in 0..3 {
        reports
            .send(pb::LoadReport {
                balancer_id: "b1".into(),
                timestamp_ms: 0,
                backends: vec![],
                queued_without_backend: 0,
                queued_work_seconds: 0.0,
                queued_for_slot: 0,
            })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut sockets = Vec::new();
    for url in [
        format!("ws://{}/ws", agent.ws),
        format!("ws://{}/ws", agent.http),
        format!("ws://{}/ws/events", agent.http),
    ] {
        let (socket, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        sockets.push(socket);
    }
    let (mut queue_socket, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", agent.ws))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), queue_socket.next())
        .await
        .unwrap();
    assert!(matches!(first, Some(Ok(Message::Text(_)))), "{first:?}");
    assert!(
        !report_call.is_finished(),
        "the report stream ended early: {report_call:?}"
    );

    let asked = Instant::now();
    agent.terminate();
    let exited = agent.exited_within(GRACE + Duration::from_secs(2)).await;
    let took = asked.elapsed();
    eprintln!("SIGTERM -> exit {exited:?} in {took:?} (grace {GRACE:?})");
    let status = exited.unwrap_or_else(|| {
        panic!("the agent still runs {took:?} after SIGTERM (SHUTDOWN_GRACE {GRACE:?})")
    });
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    assert!(
        took < Duration::from_secs(3),
        "the agent took {took:?} to stop: it waited for its streams instead of ending them"
    );
    // The streams ended (the balancer's report call returned, the watch stream closed).
    let ended = tokio::time::timeout(Duration::from_secs(5), report_call)
        .await
        .expect("the report call is still open")
        .unwrap();
    eprintln!("ReportLoad ended with {ended:?}");
    let watched = tokio::time::timeout(Duration::from_secs(5), queue.message()).await;
    assert!(
        matches!(watched, Ok(Ok(None)) | Ok(Err(_))),
        "WatchQueue still open: {watched:?}"
    );
    drop(reports);
}

/// A WebSocket subscriber; `Err(status, body)` when the upgrade is refused.
async fn subscribe(
    url: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    (u16, String),
> {
    use tokio_tungstenite::tungstenite::Error;
    match tokio_tungstenite::connect_async(url).await {
        Ok((socket, _)) => Ok(socket),
        Err(Error::Http(response)) => Err((
            response.status().as_u16(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned(),
        )),
        Err(err) => panic!("WebSocket {url}: {err}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_subscribers_are_capped_and_one_that_does_not_read_is_dropped() {
    let mut config = idle_config("wscap");
    config.ws_max_subscribers = 3;
    config.ws_send_timeout = Duration::from_secs(1);
    let agent = TestAgent::start(config).await;
    let urls = [
        format!("ws://{}/ws", agent.ws),
        format!("ws://{}/ws", agent.http),
        format!("ws://{}/ws/events", agent.http),
    ];
    // The cap counts the three endpoints together.
    let mut open = Vec::new();
    for url in &urls {
        open.push(subscribe(url).await.expect("under the cap"));
    }
    for url in &urls {
        let (status, body) = subscribe(url).await.expect_err("one over the cap");
        assert_eq!(status, 503, "{url}: {body}");
        let body: Value = serde_json::from_str(&body).expect("a JSON error");
        assert!(
            body["error"]
                .as_str()
                .unwrap_or_default()
                .contains("WS_MAX_SUBSCRIBERS=3"),
            "{body}"
        );
    }
    // One leaves: its place is free again.
    let mut leaving = open.pop().unwrap();
    leaving.close(None).await.unwrap();
    drop(leaving);
    let back = common::testing::eventually("a free place", Duration::from_secs(5), || async {
        subscribe(&urls[2]).await.ok()
    })
    .await;
    open.push(back);
    drop(open);

    // A subscriber that does not read: with a tiny receive window, the events pushed to it
    // fill the sockets, the agent's send waits WS_SEND_TIMEOUT, and it is dropped (its place
    // is then free: the cap is 1 here).
    let mut config = idle_config("wsslow");
    config.ws_max_subscribers = 1;
    config.ws_send_timeout = Duration::from_secs(1);
    let agent = TestAgent::start(config).await;
    let url = format!("ws://{}/ws/events", agent.http);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(agent.http).await.unwrap();
    let (stalled, _) = tokio_tungstenite::client_async(url.as_str(), stream)
        .await
        .unwrap();
    assert_eq!(
        subscribe(&url).await.err().map(|(status, _)| status),
        Some(503)
    );
    let flood = tokio::spawn({
        let (client, url, token) = (agent.client.clone(), agent.url("/scale"), support::TOKEN);
        async move {
            let mut sent = 0u64;
            loop {
                for max in [3, 4] {
                    let _ = client
                        .post(&url)
                        .bearer_auth(token)
                        .json(&json!({"min_replicas": 0, "max_replicas": max}))
                        .send()
                        .await;
                    sent += 1;
                    if sent % 10_000 == 0 {
                        eprintln!("{sent} events pushed");
                    }
                }
            }
        }
    });
    let started = Instant::now();
    let replaced = common::testing::eventually(
        "the stalled subscriber to be dropped",
        Duration::from_secs(90),
        || async { subscribe(&url).await.ok() },
    )
    .await;
    flood.abort();
    eprintln!("stalled subscriber dropped after {:?}", started.elapsed());
    drop((stalled, replaced));
}

/// Connects `count` subscribers (half to the queue, half to the event log), holds them a
/// second, closes them; the agent's RSS with them connected.
async fn subscribers_come_and_go(agent: &AgentProcess, count: usize) -> u64 {
    let urls = [
        format!("ws://{}/ws", agent.ws),
        format!("ws://{}/ws/events", agent.http),
    ];
    let mut sockets = Vec::with_capacity(count);
    for at in 0..count {
        let mut socket = subscribe(&urls[at % 2]).await.expect("under the cap");
        if at % 2 == 0 {
            // The queue's first snapshot: the subscriber is fully set up.
            let first = tokio::time::timeout(Duration::from_secs(5), socket.next()).await;
            assert!(matches!(first, Ok(Some(Ok(_)))), "{first:?}");
        }
        sockets.push(socket);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let peak = agent.rss_kib();
    for mut socket in sockets {
        let _ = socket.close(None).await;
    }
    peak
}

/// Subscribers come and go twice (as dashboards and balancers reconnect): after each time the
/// agent's resident memory is back within 20 % of what it was before the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_returns_after_500_subscribers_leave() {
    const SUBSCRIBERS: usize = 500;
    let agent = AgentProcess::start(&[("AGENT_TOKEN", "tok"), ("WS_MAX_SUBSCRIBERS", "600")]).await;
    // Warm up first: the runtime's threads touch their stacks and allocator arenas on their
    // first connections (about 2 MiB on a busy machine), which is not memory the subscribers
    // keep. The start is what the agent holds once it has served a few.
    subscribers_come_and_go(&agent, 50).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let start = agent.rss_kib();
    for round in 1..=2 {
        let peak = subscribers_come_and_go(&agent, SUBSCRIBERS).await;
        let mut end = agent.rss_kib();
        let deadline = Instant::now() + Duration::from_secs(15);
        while end as f64 > start as f64 * 1.2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            end = agent.rss_kib();
        }
        eprintln!(
            "round {round}: agent RSS start {start} KiB, with {SUBSCRIBERS} subscribers {peak} KiB \
             ({:.1} KiB each), after they left {end} KiB ({:+.1} %)",
            (peak.saturating_sub(start)) as f64 / SUBSCRIBERS as f64,
            (end as f64 / start as f64 - 1.0) * 100.0
        );
        assert!(
            end as f64 <= start as f64 * 1.2,
            "round {round}: RSS did not come back within 20 %: start {start} KiB, peak {peak} KiB, \
             end {end} KiB"
        );
    }
}
