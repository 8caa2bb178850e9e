//! The whole product as users run it: `jobs/run.sh -e dev` brings up Redis, the deployment
//! agent and the balancer with compose on the real Docker engine, `loadgen` drives HTTP
//! through the balancer, a WebSocket client watches the queue, and `jobs/reset.sh` removes it
//! all. The main test, in phases that share the stack:
//!
//! 1. a step of CPU-heavy `/submit` jobs: scale-out by at least two workers, the categories
//!    move (INIT → LU → MU/HU), then SUNDOWN and removal back to the minimum; no failed request;
//! 2. `docker kill` of a worker under GET load: no failed request, a replacement;
//! 3. the agent container restarted under load: no failed request, the same workers adopted
//!    (no duplicates), the bounds set through the API still in force (Redis);
//! 4. `jobs/reset.sh`: no container, network or volume left.
//!
//! It saves the load chart under `target/e2e/` and prints the worker cold start and the
//! scale-out reaction it measured. A second test brings up `-e prod` (Redis) and `-e slim`
//! (memory store, no dashboard) in turn, sends each a job and tears it down. The stacks run one
//! at a time (`--test-threads=1` in `jobs/test.sh`).

use std::{
    collections::BTreeSet,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use common::{
    queue::Category::{High, Init, Low, Medium, Sundown},
    testing::{binary_dir, docker, eventually, workspace_binary},
};
use e2e::{
    Loadgen, QueueRecorder, ResultRow, Stack, cold_starts, events, failures, get_json,
    passes_through, serving,
};

/// The agent's settings for the run, on top of the dev stack's: one worker to start from and to
/// come back to, half a CPU per worker so the machine's two cores hold four of them, and short
/// periods so the whole cycle takes about a minute.
const SETTINGS: [(&str, &str); 11] = [
    ("DEFAULT_CONTAINER", "1"),
    ("WARM_POOL", "1"),
    ("MIN_CONTAINERS", "1"),
    ("MAX_CONTAINERS", "4"),
    ("WORKER_CPUS", "0.5"),
    ("TARGET_CONCURRENCY", "2"),
    ("SCALE_CHECK_PERIOD", "500ms"),
    ("COOLDOWN_PERIOD", "3s"),
    ("SCALE_DOWN_STABILIZATION", "5s"),
    ("DRAIN_TIMEOUT", "20s"),
    ("STOP_GRACE", "3s"),
];

/// A CPU-heavy job (seed 002's API), about 0.1 s of one core.
const JOB: &str = r#"{"operation":"monte_carlo_pi","data":{"iterations":50000000}}"#;
/// Seconds of light load before the step.
const STEP_AT_S: f64 = 5.0;
/// The load: light, then a step past what one half-CPU worker can do.
const PROFILE: &str = "1@5s,10@40s";
/// When the worker is killed, from the start of the load.
const KILL_AFTER: Duration = Duration::from_secs(6);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_scales_heals_and_keeps_serving() {
    let mut stack = tokio::task::spawn_blocking(|| Stack::up("dev", &SETTINGS))
        .await
        .expect("starting the stack panicked");
    let artifacts = binary_dir()
        .parent()
        .and_then(|dir| dir.parent())
        .expect("no target directory")
        .join("e2e");
    std::fs::create_dir_all(&artifacts).expect("cannot create target/e2e");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let queue = QueueRecorder::start(&stack.ws).await;

    // 1. Scale out under a step of jobs, then back in.
    let idle = queue
        .wait_until("one idle worker", Duration::from_secs(60), |s| {
            s.items.len() == 1 && s.items[0].utilization_category == Low
        })
        .await;
    let first = idle.items[0].clone();
    eventually("a paused warm standby", Duration::from_secs(60), || {
        let standby = stack.worker_containers("paused");
        async move { (standby.len() == 1).then_some(()) }
    })
    .await;
    let since = Instant::now();
    let load = Loadgen::start(
        &artifacts,
        "scale",
        &[
            "--target",
            &format!("{}/submit", stack.balancer),
            "--body",
            JOB,
            "--profile",
            PROFILE,
            "--timeout",
            "60s",
            "--agent",
            &stack.agent,
        ],
    );
    let (summary, rows) = load.finish(Duration::from_secs(180)).await;
    assert_eq!(
        summary.errors,
        0,
        "failed requests during the step: {:?}",
        failures(&rows)
    );
    assert!(summary.requests >= 400, "too few requests: {summary:?}");
    assert!(
        queue.peak_active(since) >= 3,
        "the agent did not add two workers: {:#?}",
        queue.journeys(since)
    );
    let settled = queue
        .wait_until("back to the minimum", Duration::from_secs(180), |s| {
            s.items.len() == 1 && serving(s).len() == 1
        })
        .await;
    let remaining = settled.items[0].id.clone();
    eventually("one worker container left", Duration::from_secs(30), || {
        let workers = stack.worker_containers("running");
        async move { (workers.len() == 1).then_some(()) }
    })
    .await;

    let journeys = queue.journeys(since);
    assert!(
        passes_through(&journeys[&first.id], &[&[Low], &[Medium, High]]),
        "the first worker did not go from LU to MU/HU: {:?}",
        journeys[&first.id]
    );
    let added: Vec<&String> = journeys.keys().filter(|id| **id != first.id).collect();
    assert!(
        added.len() >= 2,
        "fewer than two workers added: {journeys:#?}"
    );
    for id in &added {
        assert!(
            passes_through(&journeys[*id], &[&[Low, Medium, High]]),
            "worker {id} never served: {:?}",
            journeys[*id]
        );
    }
    // The warm pool holds one: at least one of the others was created, and seen starting.
    assert!(
        added
            .iter()
            .any(|id| passes_through(&journeys[*id], &[&[Init], &[Low, Medium, High]])),
        "no added worker was seen going from INIT to serving: {journeys:#?}"
    );
    for (id, journey) in &journeys {
        if *id != remaining {
            assert_eq!(
                journey.last(),
                Some(&Sundown),
                "worker {id} left without SUNDOWN: {journey:?}"
            );
        }
    }
    // The reaction to the step: to the first answer from a worker that had not served before
    // it (on a busy machine the light phase alone can add one; that one does not count).
    let answered_at = |row: &ResultRow| row.due_s + row.latency_ms / 1e3;
    let before_step: std::collections::HashSet<&str> = rows
        .iter()
        .filter(|row| row.status == 200 && answered_at(row) < STEP_AT_S)
        .map(|row| row.backend.as_str())
        .collect();
    let reaction = rows
        .iter()
        .filter(|row| row.status == 200 && !before_step.contains(row.backend.as_str()))
        .map(answered_at)
        .reduce(f64::min)
        .expect("no request was served by a worker added after the step")
        - STEP_AT_S;
    let (mut cold, mut thawed) = cold_starts(&events(&client, &stack.agent).await);
    cold.sort_unstable();
    thawed.sort_unstable();
    assert!(
        !cold.is_empty() && !thawed.is_empty(),
        "the agent reported no cold start or no thaw: {cold:?} {thawed:?}"
    );
    plot(&artifacts);

    // 2. Kill a worker under GET load; set the bounds the restart must keep on the way.
    let bounds = client
        .post(format!("{}/scale", stack.agent))
        .json(&serde_json::json!({"min_replicas": 2, "max_replicas": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(bounds.status(), 202, "{:?}", bounds.text().await);
    let two = queue
        .wait_until("two serving workers", Duration::from_secs(60), |s| {
            s.items.len() == 2 && serving(s).len() == 2
        })
        .await;
    let victim = two.items[0].clone();
    let load = idempotent_load(&stack, &artifacts, "kill");
    tokio::time::sleep(KILL_AFTER).await;
    docker(&["kill", &victim.id]);
    let (summary, rows) = load.finish(Duration::from_secs(120)).await;
    assert_eq!(
        summary.errors,
        0,
        "failed requests around the kill: {:?}",
        failures(&rows)
    );
    // (A replacement may take the victim's name: only answers from before the kill count.)
    assert!(
        rows.iter()
            .any(|row| row.backend == victim.dns_name && row.due_s < KILL_AFTER.as_secs_f64() - 1.0),
        "the killed worker served nothing before it died"
    );
    let healed = queue
        .wait_until("a replacement worker", Duration::from_secs(60), |s| {
            serving(s).len() == 2
                && s.items.len() == 2
                && !s.items.iter().any(|i| i.id == victim.id)
        })
        .await;
    let workers: BTreeSet<String> = healed.items.iter().map(|item| item.id.clone()).collect();
    assert!(
        workers
            .iter()
            .any(|id| !two.items.iter().any(|item| item.id == *id)),
        "no new worker replaced the killed one"
    );
    eventually("the killed worker removed", Duration::from_secs(30), || {
        let containers = stack.worker_containers("running");
        let expected = workers.clone();
        async move { (containers == expected).then_some(()) }
    })
    .await;

    // 3. Restart the agent under load.
    let load = idempotent_load(&stack, &artifacts, "restart");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let agent = stack.service_container("deployment-agent");
    docker(&["restart", "-t", "15", &agent]);
    let restarted_ms = unix_ms();
    let (summary, rows) = load.finish(Duration::from_secs(120)).await;
    assert_eq!(
        summary.errors,
        0,
        "failed requests while the agent restarted: {:?}",
        failures(&rows)
    );
    let after = queue
        .wait_until(
            "the restarted agent's queue",
            Duration::from_secs(60),
            |s| s.timestamp_ms >= restarted_ms && serving(s).len() == 2,
        )
        .await;
    let adopted: BTreeSet<String> = after.items.iter().map(|item| item.id.clone()).collect();
    assert_eq!(
        adopted, workers,
        "the restarted agent did not adopt the workers"
    );
    // A few decisions later there is still no duplicate.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        stack.worker_containers("running"),
        workers,
        "duplicate workers"
    );
    assert_eq!(
        stack.worker_containers("paused").len(),
        1,
        "the warm standby was lost or doubled"
    );
    let config = get_json(&client, &format!("{}/config", stack.agent)).await;
    assert_eq!(
        (&config["min_replicas"], &config["max_replicas"]),
        (&serde_json::json!(2), &serde_json::json!(3)),
        "the bounds set through the API were lost: {config}"
    );

    // 4. Tear down.
    drop(queue);
    tokio::task::spawn_blocking(move || stack.tear_down())
        .await
        .expect("teardown panicked");

    println!(
        "\nend-to-end figures (target: cold start 0.5 s, scale-out reaction 1.5 s):\n  \
         worker cold start, create call to first healthy answer: {}\n  \
         worker from the warm pool, thaw call to first healthy answer: {}\n  \
         scale-out reaction (load step to the first answer from a new worker): {:.0} ms{}\n  \
         charts: {}\n",
        spread(&cold),
        spread(&thawed),
        reaction * 1e3,
        if before_step.len() > 1 {
            format!(
                " ({} workers already served before the step)",
                before_step.len()
            )
        } else {
            String::new()
        },
        artifacts.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prod_and_slim_stacks_come_up_answer_a_job_and_leave_nothing() {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    for (environment, store, dashboard) in [("prod", "redis", true), ("slim", "memory", false)] {
        let mut stack = tokio::task::spawn_blocking(move || Stack::up(environment, &[]))
            .await
            .expect("starting the stack panicked");
        // run.sh's printed curl: a job through the balancer.
        let answer = client
            .post(format!("{}/submit", stack.balancer))
            .json(&serde_json::json!({"operation": "monte_carlo_pi", "data": {"iterations": 1_000_000}}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            answer.status(),
            200,
            "{environment}: {:?}",
            answer.text().await
        );
        let backend = answer.headers()["x-backend"].to_str().unwrap().to_owned();
        assert!(
            backend.starts_with(&format!("{}-worker-", stack.app)),
            "{environment}: X-Backend {backend}"
        );
        let job: serde_json::Value = answer.json().await.unwrap();
        let pi = job["result"].as_f64().unwrap();
        assert!(
            (pi - std::f64::consts::PI).abs() < 0.01,
            "{environment}: {job}"
        );
        let stats = get_json(&client, &format!("{}/stats", stack.agent)).await;
        assert_eq!(stats["store"]["backend"], store, "{environment}: {stats}");
        if store == "redis" {
            assert_eq!(stats["store"]["connected"], true, "{environment}: {stats}");
        }
        let page = client
            .get(format!("{}/", stack.agent))
            .send()
            .await
            .unwrap();
        assert_eq!(
            page.status().is_success(),
            dashboard,
            "{environment}: dashboard"
        );
        tokio::task::spawn_blocking(move || stack.tear_down())
            .await
            .expect("teardown panicked");
    }
}

/// Steady idempotent GETs (a short CPU job) through the balancer for 25 s.
fn idempotent_load(stack: &Stack, dir: &std::path::Path, name: &str) -> Loadgen {
    Loadgen::start(
        dir,
        name,
        &[
            "--target",
            &format!("{}/consume_cpu/1", stack.balancer),
            "--method",
            "get",
            "--rate",
            "20",
            "--duration",
            "25s",
            "--timeout",
            "60s",
        ],
    )
}

/// The chart of the step run (latency and container count over time) under `dir`.
fn plot(dir: &std::path::Path) {
    let output = std::process::Command::new(workspace_binary("loadgen"))
        .arg("plot")
        .arg(dir.join("scale.csv"))
        .arg("--events")
        .arg(dir.join("scale.agent.csv"))
        .arg("--out-dir")
        .arg(dir)
        .args(["--title", "end-to-end step"])
        .output()
        .expect("cannot run loadgen plot");
    assert!(
        output.status.success(),
        "loadgen plot failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// "median M ms (min-max ms) over N workers" of sorted figures.
fn spread(sorted: &[u64]) -> String {
    format!(
        "median {} ms ({}-{} ms) over {} workers",
        sorted[sorted.len() / 2],
        sorted[0],
        sorted[sorted.len() - 1],
        sorted.len()
    )
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
