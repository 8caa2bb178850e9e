//! The whole product as users run it: `jobs/run.sh -e dev` brings up Redis, the two
//! deployment agents (one leads) and the balancer with compose on the real Docker engine,
//! `loadgen` drives HTTP through the balancer, a WebSocket client watches the queue (from
//! either agent), and `jobs/reset.sh` removes it all. The main test, in phases that share the
//! stack:
//!
//! 1. a step of CPU-heavy `/submit` jobs: scale-out by at least two workers, the categories
//!    move (INIT → LU → MU/HU), then SUNDOWN and removal back to the minimum; no failed request;
//! 2. `docker kill` of a worker under GET load: no failed request, a replacement;
//! 3. the leading agent's container restarted (`docker stop` + `start`) under load: no failed
//!    request, the other agent takes over within the lease, the restarted one comes back as a
//!    follower, the same workers kept (no duplicates), the bounds set through the API still in
//!    force (Redis);
//! 4. `jobs/reset.sh`: no container, network or volume left.
//!
//! It saves the load chart under `target/e2e/` and prints the worker cold start and the
//! scale-out reaction it measured. A second test brings up `-e prod` (Redis) and `-e slim`
//! (memory store, no dashboard) in turn, sends each a job and tears it down. On every stack no
//! service runs as root, only the balancer's traffic port is published beyond loopback, and
//! `POST /scale` needs the agent's token. The stacks run one at a time
//! (`--test-threads=1` in `jobs/test.sh`). A last test checks the token run.sh makes without
//! starting a stack. Another follows README's "Bring your own app" word for word: the prod
//! stack in front of an nginx image built from Debian's package, serving through the balancer.
//! The last one kills the leading agent of the prod stack under load (`docker kill`): the
//! follower leads within `LEADER_LEASE` + 1 s (the takeover time is printed), no request
//! fails, no worker is duplicated or orphaned, and a load step afterwards still scales out and
//! back; `POST /scale` on the follower answers as on the leader.

use std::{
    collections::BTreeSet,
    os::unix::fs::{MetadataExt, PermissionsExt},
    process::Command,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use common::{
    queue::Category::{High, Init, Low, Medium, Sundown},
    testing::{Cleanup, binary_dir, docker, eventually, repo_root, unique, workspace_binary},
};
use e2e::{
    Loadgen, QueueRecorder, ResultRow, Stack, cold_starts, events, failures, follow_job, get_json,
    leadership, leads_above, passes_through, post_scale, published_on, runs_as, serving,
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
/// The agents' `LEADER_LEASE` in the stacks (compose's default).
const DEFAULT_LEASE: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_scales_heals_and_keeps_serving() {
    let mut stack = tokio::task::spawn_blocking(|| Stack::up("dev", &SETTINGS))
        .await
        .expect("starting the stack panicked");
    let artifacts = artifacts();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    // Either agent serves the leader's queue: the recorder moves to the other one when the
    // one it follows stops.
    let queue = QueueRecorder::following(&[stack.ws.clone(), stack.ws_2.clone()]).await;

    // 1. Scale out under a step of jobs, then back in.
    let idle = queue
        .wait_until("one idle worker", Duration::from_secs(60), |s| {
            s.items.len() == 1 && s.items[0].utilization_category == Low
        })
        .await;
    let first = idle.items[0].clone();
    assert_locked_down(&stack, "dev", &first.id);
    follow_a_request(&client, &stack, &first.id).await;
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
    // A warm standby prepared meanwhile may leave again without serving (INIT only).
    let served = added
        .iter()
        .filter(|id| passes_through(&journeys[**id], &[&[Low, Medium, High]]))
        .count();
    assert!(
        served >= 2,
        "fewer than two added workers served: {journeys:#?}"
    );
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
    // The leader made the workers: its events say how long each took.
    let (leader, _, _) = stack.leader(&client, Duration::from_secs(30)).await;
    let (mut cold, mut thawed) = cold_starts(&events(&client, &leader.http).await);
    cold.sort_unstable();
    thawed.sort_unstable();
    assert!(
        !cold.is_empty() && !thawed.is_empty(),
        "the agent reported no cold start or no thaw: {cold:?} {thawed:?}"
    );
    plot(&artifacts);

    // 2. Kill a worker under GET load; set the bounds the restart must keep on the way (with
    //    the token run.sh gave the agent: without it, or with another, the call is refused).
    scale_with_token(
        &client,
        &stack,
        serde_json::json!({"min_replicas": 2, "max_replicas": 3}),
    )
    .await;
    let two = queue
        .wait_until("two serving workers", Duration::from_secs(60), |s| {
            s.items.len() == 2 && serving(s).len() == 2
        })
        .await;
    let victim = two.items[0].clone();
    let load = idempotent_load(&stack, &artifacts, "kill");
    // Jobs too: the dev stack declares `POST /submit` in RETRY_ROUTES, so a job in flight on
    // the killed worker is replayed on the other one instead of failing.
    let jobs = job_load(&stack, &artifacts, "kill-jobs");
    tokio::time::sleep(KILL_AFTER).await;
    docker(&["kill", &victim.id]);
    let (summary, rows) = load.finish(Duration::from_secs(120)).await;
    assert_eq!(
        summary.errors,
        0,
        "failed requests around the kill: {:?}",
        failures(&rows)
    );
    let (job_summary, job_rows) = jobs.finish(Duration::from_secs(120)).await;
    assert_eq!(
        job_summary.errors,
        0,
        "failed POST /submit jobs around the kill: {:?}",
        failures(&job_rows)
    );
    let on_victim = |row: &&ResultRow| row.backend == victim.dns_name;
    assert!(
        job_rows.iter().filter(on_victim).count() > 0,
        "no job ran on the killed worker before it died"
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

    // 3. Restart the leading agent under load: SIGTERM ends its streams, it gives up its lease
    //    and exits 0 at once; the other agent leads within the lease (measured on its
    //    /status). Started again once the other leads (so it does not race it for the free
    //    lease), its API is back within seconds (polled /health) and it follows.
    let load = idempotent_load(&stack, &artifacts, "restart");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (leader, followers, epoch) = stack.leader(&client, Duration::from_secs(30)).await;
    let other = followers
        .first()
        .expect("the dev stack runs two agents")
        .clone();
    let agent = stack.service_container(leader.service);
    let gap = ApiGap::watch(&client, &format!("{}/health", leader.http));
    let stopping = Instant::now();
    let handover = {
        let (client, url) = (client.clone(), other.http.clone());
        tokio::spawn(async move {
            leads_above(&client, &url, epoch, stopping, Duration::from_secs(60)).await
        })
    };
    docker(&["stop", "-t", "15", &agent]);
    let stop_took = stopping.elapsed();
    let exit = docker(&["inspect", "-f", "{{.State.ExitCode}}", &agent]);
    assert_eq!(
        exit.trim(),
        "0",
        "the agent did not exit 0 on SIGTERM (took {stop_took:?})"
    );
    assert!(
        stop_took < Duration::from_secs(12),
        "the agent took {stop_took:?} to stop; its SHUTDOWN_GRACE is 10 s"
    );
    let (handover, _) = handover
        .await
        .expect("the leadership watcher panicked")
        .unwrap_or_else(|| {
            panic!(
                "{} did not take over from {}",
                other.service, leader.service
            )
        });
    assert!(
        handover <= DEFAULT_LEASE + Duration::from_secs(1),
        "{} led {handover:?} after {} began to stop (lease {DEFAULT_LEASE:?})",
        other.service,
        leader.service
    );
    docker(&["start", &agent]);
    let restarted_ms = unix_ms();
    let api_gap = gap.finish(Duration::from_secs(60)).await;
    let (summary, rows) = load.finish(Duration::from_secs(120)).await;
    assert_eq!(
        summary.errors,
        0,
        "failed requests while the leading agent restarted: {:?}",
        failures(&rows)
    );
    let (now_leading, _, _) = stack.leader(&client, Duration::from_secs(60)).await;
    assert_eq!(
        now_leading.service, other.service,
        "the restarted agent did not come back as a follower"
    );
    let after = queue
        .wait_until("the new leader's queue", Duration::from_secs(60), |s| {
            s.timestamp_ms >= restarted_ms && serving(s).len() == 2
        })
        .await;
    let adopted: BTreeSet<String> = after.items.iter().map(|item| item.id.clone()).collect();
    assert_eq!(adopted, workers, "the new leader did not keep the workers");
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
    let config = get_json(&client, &format!("{}/config", now_leading.http)).await;
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
         leading agent restart (docker stop, then start once the other leads): stopped in {} ms, \
         the other agent led {} ms after the stop began, the stopped one's API unreachable for \
         {} ms\n  \
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
        stop_took.as_millis(),
        handover.as_millis(),
        api_gap.as_millis(),
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
        assert_locked_down(&stack, environment, &backend);
        // prod: two agents, one leads (an elected epoch), the other follows it; slim: one
        // agent that leads alone (epoch 0, no lease).
        let (leader, followers, epoch) = stack.leader(&client, Duration::from_secs(30)).await;
        if environment == "slim" {
            assert!(
                followers.is_empty() && epoch == 0,
                "slim: {} leads at epoch {epoch}, followers {followers:?}",
                leader.service
            );
        } else {
            assert!(
                followers.len() == 1 && epoch >= 1,
                "{environment}: {} leads at epoch {epoch}, followers {followers:?}",
                leader.service
            );
        }
        // Both stacks start at least one worker: this changes nothing but needs the token.
        scale_with_token(&client, &stack, serde_json::json!({"min_replicas": 1})).await;
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

/// A job sent with an id through the stack's balancer: the agent's journey shows the
/// balancer's record (one attempt, on `worker`) and the worker's log lines with the id, read
/// from the Docker engine; the container's logs endpoint finds them too (issue #18).
async fn follow_a_request(client: &reqwest::Client, stack: &Stack, worker: &str) {
    let id = format!("e2e-journey-{}", std::process::id());
    let journey = follow_job(
        client,
        &stack.balancer,
        &stack.agent,
        &id,
        Duration::from_secs(20),
    )
    .await;
    let record = &journey["record"];
    assert_eq!(record["status"], 200, "{journey}");
    assert_eq!(
        record["attempts"].as_array().map(Vec::len),
        Some(1),
        "{journey}"
    );
    assert_eq!(record["attempts"][0]["backend"], worker, "{journey}");
    assert_eq!(record["attempts"][0]["outcome"], "answered", "{journey}");
    for line in journey["logs"].as_array().unwrap() {
        assert_eq!(line["container"], worker, "{journey}");
        assert!(line["line"].as_str().unwrap().contains(&id), "{journey}");
    }
    let logs = client
        .get(format!(
            "{}/containers/{worker}/logs?grep={id}",
            stack.agent
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(logs.status(), 200);
    let text = logs.text().await.unwrap();
    assert!(
        text.contains("job started") && text.contains("job done"),
        "{text}"
    );
    eprintln!("the journey of {id}: {journey}");
}

/// `POST /scale` with `body`: 401 without a token and with another one, then 202 with the
/// token run.sh gave the agent.
async fn scale_with_token(client: &reqwest::Client, stack: &Stack, body: serde_json::Value) {
    let scale = format!("{}/scale", stack.agent);
    for token in [None, Some("not-the-token")] {
        let mut request = client.post(&scale).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let refused = request.send().await.unwrap();
        assert_eq!(
            refused.status(),
            401,
            "POST /scale {body} with token {token:?}: {:?}",
            refused.text().await
        );
    }
    let accepted = client
        .post(&scale)
        .bearer_auth(&stack.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        accepted.status(),
        202,
        "POST /scale {body} with the token: {:?}",
        accepted.text().await
    );
}

/// No service of the stack runs as root (the images' user 10001, the agent with the Docker
/// socket's group besides; Redis its own non-root user), the agent, balancer and Redis have
/// memory limits, and only the balancer's traffic port is published beyond loopback.
fn assert_locked_down(stack: &Stack, environment: &str, worker: &str) {
    let socket =
        std::env::var("DOCKER_SOCKET_VOLUME").unwrap_or_else(|_| "/var/run/docker.sock".to_owned());
    let socket_gid = std::fs::metadata(&socket)
        .unwrap_or_else(|err| panic!("cannot stat the Docker socket {socket}: {err}"))
        .gid()
        .to_string();
    // Two agents in prod and dev (the same definition), the first only in slim.
    let agents: Vec<String> = stack
        .agents()
        .iter()
        .map(|agent| stack.service_container(agent.service))
        .collect();
    assert_eq!(
        agents.len(),
        if environment == "slim" { 1 } else { 2 },
        "{environment}: agent containers {agents:?}"
    );
    let balancer = stack.service_container("balancer");
    let mut containers: Vec<(&str, String)> = agents
        .iter()
        .map(|agent| ("deployment-agent", agent.clone()))
        .collect();
    containers.extend([
        ("balancer", balancer.clone()),
        ("worker", worker.to_owned()),
    ]);
    if environment != "slim" {
        containers.push(("redis", stack.service_container("redis")));
    }
    for (service, id) in &containers {
        let runs = runs_as(id);
        assert!(
            !runs.uids.is_empty() && !runs.uids.contains(&0),
            "{environment}: a {service} process runs as root: {runs:?}"
        );
        if *service != "redis" {
            // (Redis may be the official image, which starts as root and drops to its user.)
            assert_eq!(
                runs.user, "10001:10001",
                "{environment}: {service} user: {runs:?}"
            );
            assert!(
                runs.uids.iter().all(|uid| *uid == 10001),
                "{environment}: {service} processes: {runs:?}"
            );
        }
        if *service == "deployment-agent" {
            assert_eq!(
                runs.group_add,
                std::slice::from_ref(&socket_gid),
                "{environment}: the agent does not get the Docker socket's group: {runs:?}"
            );
        }
        if *service != "worker" {
            let limit = docker(&["inspect", "-f", "{{.HostConfig.Memory}}", id]);
            assert!(
                limit.parse::<u64>().is_ok_and(|bytes| bytes > 0),
                "{environment}: {service} has no memory limit ({limit})"
            );
        }
    }
    let loopback = BTreeSet::from(["127.0.0.1".to_owned()]);
    for agent in &agents {
        let agent_ports = published_on(agent);
        for port in [9000, 9001, 9002] {
            assert_eq!(
                agent_ports.get(&port),
                Some(&loopback),
                "{environment}: agent {agent} port {port}: {agent_ports:?}"
            );
        }
    }
    let balancer_ports = published_on(&balancer);
    assert_eq!(
        balancer_ports.get(&8001),
        Some(&loopback),
        "{environment}: balancer admin port: {balancer_ports:?}"
    );
    assert!(
        balancer_ports
            .get(&8000)
            .is_some_and(|addresses| addresses.iter().any(|a| a == "0.0.0.0" || a == "::")),
        "{environment}: the balancer's traffic port is not on every interface: {balancer_ports:?}"
    );
}

/// `jobs/run.sh`'s token (`ensure_agent_token` in `jobs/lib.sh`, run with a scratch `.env` and
/// secrets directory): made once from 32 random bytes into a file only the user can read,
/// reused after; the environment and `.env` come first; a token that cannot be a header value
/// is refused.
#[test]
fn run_sh_makes_a_private_agent_token_once() {
    let mut cleanup = Cleanup::default();
    let dir = std::env::temp_dir().join(format!("rbe2e-token-{}", unique()));
    cleanup.dirs.push(dir.clone());
    std::fs::create_dir_all(&dir).unwrap();
    let env_file = dir.join(".env");
    let secrets = dir.join(".secrets");
    let file = secrets.join("agent-token");
    // (token, where it came from) or the failure's stderr.
    let ensure = |env_token: Option<&str>| -> Result<(String, String), String> {
        let mut command = Command::new("bash");
        command
            .arg("-c")
            .arg(
                r#"source "$0/jobs/lib.sh" && ensure_agent_token "$1" "$2" && printf '%s
%s' "$AGENT_TOKEN" "$AGENT_TOKEN_SOURCE""#,
            )
            .arg(repo_root())
            .arg(&env_file)
            .arg(&secrets)
            .env_remove("AGENT_TOKEN");
        if let Some(token) = env_token {
            command.env("AGENT_TOKEN", token);
        }
        let output = command.output().expect("cannot run bash");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).into_owned());
        }
        let (token, source) = stdout.split_once('\n').expect("no token source printed");
        Ok((token.to_owned(), source.to_owned()))
    };
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;

    let (token, source) = ensure(None).unwrap();
    assert!(source.ends_with("(new)"), "{source}");
    assert!(
        token.len() == 64 && token.chars().all(|c| c.is_ascii_hexdigit()),
        "not 32 random bytes in hex: {token}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token);
    assert_eq!(mode(&file), 0o600, "the token file's mode");
    assert_eq!(mode(&secrets), 0o700, "the secrets directory's mode");

    let (again, source) = ensure(None).unwrap();
    assert_eq!(
        (again.as_str(), source.as_str()),
        (token.as_str(), file.to_str().unwrap())
    );

    assert_eq!(
        ensure(Some("from-the-environment")).unwrap().0,
        "from-the-environment"
    );
    std::fs::write(&env_file, "RUST_LOG=info\nAGENT_TOKEN=\"from-dotenv\"\n").unwrap();
    assert_eq!(ensure(None).unwrap().0, "from-dotenv");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().trim(),
        token,
        "the file changed"
    );

    let refused = ensure(Some("two words")).unwrap_err();
    assert!(refused.contains("AGENT_TOKEN"), "{refused}");
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

/// CPU jobs sent as `POST /submit` at 5/s for 25 s (a RETRY_ROUTES route in the stacks).
fn job_load(stack: &Stack, dir: &std::path::Path, name: &str) -> Loadgen {
    Loadgen::start(
        dir,
        name,
        &[
            "--target",
            &format!("{}/submit", stack.balancer),
            "--method",
            "post",
            "--body",
            r#"{"operation":"monte_carlo_pi","data":{"iterations":5000000}}"#,
            "--rate",
            "5",
            "--duration",
            "25s",
            "--timeout",
            "60s",
        ],
    )
}

/// The longest time an HTTP endpoint did not answer, polled every 50 ms from `watch` until
/// it answered again after its first outage.
struct ApiGap {
    task: tokio::task::JoinHandle<Duration>,
}

impl ApiGap {
    fn watch(client: &reqwest::Client, url: &str) -> Self {
        let (client, url) = (client.clone(), url.to_owned());
        let task = tokio::spawn(async move {
            let mut down_since: Option<Instant> = None;
            loop {
                let up = matches!(
                    client.get(&url).timeout(Duration::from_millis(500)).send().await,
                    Ok(response) if response.status().is_success()
                );
                match (up, down_since) {
                    (false, None) => down_since = Some(Instant::now()),
                    (true, Some(since)) => return since.elapsed(),
                    _ => {}
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Self { task }
    }

    async fn finish(self, timeout: Duration) -> Duration {
        tokio::time::timeout(timeout, self.task)
            .await
            .expect("the agent's API did not come back")
            .expect("the API watcher panicked")
    }
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

/// `target/e2e/`, where runs leave their results and charts.
fn artifacts() -> std::path::PathBuf {
    let dir = binary_dir()
        .parent()
        .and_then(|dir| dir.parent())
        .expect("no target directory")
        .join("e2e");
    std::fs::create_dir_all(&dir).expect("cannot create target/e2e");
    dir
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The commands of README's "Bring your own app" section, word for word.
const BYOA_README_EXAMPLE: &str = "jobs/build-test-images.sh
DOCKER_IMAGE=rustybalancer-test/nginx:dev jobs/run.sh -e prod -f docker-compose.byoa.yaml
curl -i http://localhost:8000/
jobs/reset.sh
";

/// The first `sh` block of README's section `heading`.
fn readme_block(heading: &str) -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let section = readme
        .split_once(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("README has no section {heading}"))
        .1;
    let block = section
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .unwrap_or_else(|| panic!("README's {heading} has no sh block"))
        .0;
    block.to_owned()
}

/// Issue 13: README's "Bring your own app" followed word for word: the nginx test image built
/// with `jobs/build-test-images.sh`, the prod stack in front of it with
/// `DOCKER_IMAGE=... jobs/run.sh -e prod -f docker-compose.byoa.yaml` (this test's own tag,
/// ports, project and token, as every stack here), nginx's page through the balancer from a
/// worker container of that image, and `jobs/reset.sh` leaving nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bring_your_own_app_readme_example_comes_up_and_serves() {
    assert_eq!(
        readme_block("Bring your own app"),
        BYOA_README_EXAMPLE,
        "README's Bring your own app commands changed: change this test with them"
    );
    let tag = format!("e2e-byoa-{}", unique());
    let image = format!("rustybalancer-test/nginx:{tag}");
    let mut images = Cleanup::default();
    images.images.push(image.clone());
    images
        .images
        .push(format!("rustybalancer-test/busybox-httpd:{tag}"));
    // `jobs/build-test-images.sh`, with this test's tag.
    let built = Command::new("bash")
        .arg("jobs/build-test-images.sh")
        .current_dir(repo_root())
        .env("IMAGE_TAG", &tag)
        .output()
        .expect("cannot run jobs/build-test-images.sh");
    assert!(
        built.status.success(),
        "jobs/build-test-images.sh failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    docker(&["image", "inspect", &image]);

    // `DOCKER_IMAGE=rustybalancer-test/nginx:<tag> jobs/run.sh -e prod -f docker-compose.byoa.yaml`
    let settings = [("DOCKER_IMAGE", image.clone())];
    let mut stack = tokio::task::spawn_blocking(move || {
        let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Stack::up_with("prod", &["docker-compose.byoa.yaml"], &settings)
    })
    .await
    .expect("starting the stack panicked");

    // `curl -i http://localhost:<port>/`
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let answer = client
        .get(format!("{}/", stack.balancer))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let backend = answer.headers()["x-backend"].to_str().unwrap().to_owned();
    assert!(
        backend.starts_with(&format!("{}-worker-", stack.app)),
        "X-Backend {backend}"
    );
    let page = answer.text().await.unwrap();
    assert!(page.contains("nginx"), "not nginx's page: {page}");
    let workers = stack.worker_containers("running");
    assert!(!workers.is_empty(), "no worker container running");
    for worker in &workers {
        assert_eq!(
            docker(&["inspect", "-f", "{{.Config.Image}}", worker]),
            image,
            "a worker of another image"
        );
    }
    let status = get_json(&client, &format!("{}/status", stack.agent)).await;
    assert!(
        status["pool"]["ready"].as_u64().unwrap_or(0) >= 1,
        "GET /status: {status}"
    );
    let config = get_json(&client, &format!("{}/config", stack.agent)).await;
    let shown = config.to_string();
    assert!(
        shown.contains("WORKER_PROBE") || shown.contains("probe"),
        "GET /config does not show the probe: {config}"
    );

    // `jobs/reset.sh`, then nothing of the stack is left.
    tokio::task::spawn_blocking(move || stack.tear_down())
        .await
        .expect("teardown panicked");
}

/// Issue 14: `docker kill` of the leading agent of the prod stack (two agents,
/// `LEADER_LEASE=3s`) under a steady load through the balancer.
///
/// - `POST /scale` on the follower's published port gets the leader's answer (status and
///   body; accepted, over the limit, and without the token), marked `X-Forwarded-To-Leader`;
/// - the takeover time, from the kill to the follower's `/status` saying `leader` with a
///   higher epoch, is printed and at most `LEADER_LEASE` + 1 s; the new leader has a
///   `leader_elected` event and `agent_leader 1` on `/metrics`;
/// - no request of the load fails;
/// - no duplicate worker: never more than the two workers the bounds ask for in the queue
///   after the kill (names unique), and no orphan: every running worker container labelled for
///   the stack is in the new leader's `/stats`, every paused one in its warm standby;
/// - a load step afterwards still scales out and back down to the two;
/// - the killed agent, started again, follows the new leader.
///
/// The killed container's restart policy is lifted for the measurement, so the engine does
/// not bring it back to race the follower for the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leading_agent_under_load_hands_over_within_the_lease() {
    let lease = DEFAULT_LEASE;
    let mut settings = SETTINGS.to_vec();
    settings.push(("LEADER_LEASE", "3s"));
    let mut stack = tokio::task::spawn_blocking(move || Stack::up("prod", &settings))
        .await
        .expect("starting the stack panicked");
    let artifacts = artifacts();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let (leader, followers, epoch) = stack.leader(&client, Duration::from_secs(60)).await;
    let follower = followers
        .into_iter()
        .next()
        .expect("the prod stack runs two agents");

    // POST /scale on the follower answers as on the leader: a change (the bounds for the
    // rest of the test), one over MAX_CONTAINERS_LIMIT, and one without the token.
    let bounds = serde_json::json!({"min_replicas": 2, "max_replicas": 4, "replicas": 2});
    let too_many = serde_json::json!({"replicas": 100_000});
    for (body, token, status) in [
        (&bounds, Some(stack.token.as_str()), 202),
        (&too_many, Some(stack.token.as_str()), 400),
        (&bounds, None, 401),
    ] {
        let on_leader = post_scale(&client, &leader.http, token, body).await;
        let on_follower = post_scale(&client, &follower.http, token, body).await;
        assert_eq!(
            on_leader.status, status,
            "POST /scale {body} on the leader: {on_leader:?}"
        );
        assert_eq!(
            (on_follower.status, &on_follower.body),
            (on_leader.status, &on_leader.body),
            "POST /scale {body}: the follower's answer differs from the leader's"
        );
        assert_eq!(
            on_leader.forwarded_to, None,
            "the leader says it forwarded POST /scale {body}"
        );
        if token.is_some() {
            assert_eq!(
                on_follower.forwarded_to.as_deref(),
                Some(leader.service),
                "POST /scale {body} on the follower: X-Forwarded-To-Leader"
            );
        }
    }

    // The follower's queue first: the kill does not interrupt the recording.
    let queue = QueueRecorder::following(&[follower.ws.clone(), leader.ws.clone()]).await;
    queue
        .wait_until("two serving workers", Duration::from_secs(90), |s| {
            s.items.len() == 2 && serving(s).len() == 2
        })
        .await;
    eventually("a paused warm standby", Duration::from_secs(60), || {
        let standby = stack.worker_containers("paused");
        async move { (standby.len() == 1).then_some(()) }
    })
    .await;

    // The kill, under a steady load.
    let load = idempotent_load(&stack, &artifacts, "takeover");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let container = stack.service_container(leader.service);
    docker(&["update", "--restart=no", &container]);
    let killed_ms = unix_ms();
    let killed = Instant::now();
    docker(&["kill", &container]);
    let waited = lease + Duration::from_secs(30);
    let Some((takeover, new_epoch)) =
        leads_above(&client, &follower.http, epoch, killed, waited).await
    else {
        let now = leadership(&client, &follower.http).await;
        panic!(
            "{} did not lead within {waited:?} of the kill of {}; its leadership: {now:?}",
            follower.service, leader.service
        );
    };
    println!(
        "\nleader takeover after docker kill: {} ms (lease {} ms), epoch {epoch} -> {new_epoch}\n",
        takeover.as_millis(),
        lease.as_millis()
    );
    assert!(
        takeover <= lease + Duration::from_secs(1),
        "{} led {takeover:?} after the kill of {} (LEADER_LEASE {lease:?} + 1 s)",
        follower.service,
        leader.service
    );
    // At once: every worker on the engine belongs to the new leader's registry.
    registry_matches_engine(&client, &stack, &follower.http, 2).await;
    let (summary, rows) = load.finish(Duration::from_secs(120)).await;
    assert_eq!(
        summary.errors,
        0,
        "failed requests around the kill of the leading agent: {:?}",
        failures(&rows)
    );
    assert_eq!(
        queue.peak_active(killed),
        2,
        "more workers than the two asked for after the takeover: {:#?}",
        queue.journeys(killed)
    );
    registry_matches_engine(&client, &stack, &follower.http, 2).await;
    let elected: Vec<_> = events(&client, &follower.http)
        .await
        .into_iter()
        .filter(|event| event.kind == "leader_elected" && event.at_ms >= killed_ms)
        .collect();
    assert!(
        !elected.is_empty(),
        "no leader_elected event on {} after the kill",
        follower.service
    );
    let metrics = client
        .get(format!("{}/metrics", follower.http))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // `agent_leader 1` (labels, if any, between the name and the value).
    assert!(
        metrics.lines().any(|line| {
            let line = line.trim();
            (line.starts_with("agent_leader ") || line.starts_with("agent_leader{"))
                && line.split_whitespace().last() == Some("1")
        }),
        "the new leader's /metrics does not say agent_leader 1:\n{metrics}"
    );

    // A load step under the new leader still scales out, then back to the two.
    let since = Instant::now();
    let step = Loadgen::start(
        &artifacts,
        "after-takeover",
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
            &follower.http,
        ],
    );
    let (summary, rows) = step.finish(Duration::from_secs(180)).await;
    assert_eq!(
        summary.errors,
        0,
        "failed requests during the step after the takeover: {:?}",
        failures(&rows)
    );
    assert!(
        queue.peak_active(since) >= 3,
        "the new leader did not scale out: {:#?}",
        queue.journeys(since)
    );
    queue
        .wait_until("back to two workers", Duration::from_secs(180), |s| {
            s.items.len() == 2 && serving(s).len() == 2
        })
        .await;
    eventually(
        "two worker containers left",
        Duration::from_secs(30),
        || {
            let workers = stack.worker_containers("running");
            async move { (workers.len() == 2).then_some(()) }
        },
    )
    .await;
    registry_matches_engine(&client, &stack, &follower.http, 2).await;

    // The killed agent, started again, follows.
    docker(&["update", "--restart=unless-stopped", &container]);
    docker(&["start", &container]);
    let (now_leading, _, now_epoch) = stack.leader(&client, Duration::from_secs(60)).await;
    assert_eq!(
        (now_leading.service, now_epoch),
        (follower.service, new_epoch),
        "the restarted agent did not follow the new leader"
    );

    drop(queue);
    tokio::task::spawn_blocking(move || stack.tear_down())
        .await
        .expect("teardown panicked");
}

/// No orphan and no duplicate, at `agent` (the leader), polled for up to 3 s (shorter than
/// the agent's 10 s reconcile, which would adopt an orphan): every running worker container
/// labelled for the stack is in its `/stats`, every paused one in its warm standby
/// (`/status`), the registry's names are unique, and `active` of them are not SUNDOWN, as many
/// as it wants (`bounds.desired_replicas`).
async fn registry_matches_engine(
    client: &reqwest::Client,
    stack: &Stack,
    agent: &str,
    active: usize,
) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let stats = get_json(client, &format!("{agent}/stats")).await;
        let status = get_json(client, &format!("{agent}/status")).await;
        let running = stack.worker_containers("running");
        let paused: BTreeSet<String> = docker(&[
            "ps",
            "--filter",
            &format!("label=application={}", stack.app),
            "--filter",
            "status=paused",
            "--format",
            "{{.Names}}",
        ])
        .lines()
        .map(str::to_owned)
        .collect();
        let members = stats["containers"].as_array().cloned().unwrap_or_default();
        let ids: BTreeSet<String> = members
            .iter()
            .filter_map(|member| member["id"].as_str().map(str::to_owned))
            .collect();
        let names: Vec<&str> = members
            .iter()
            .filter_map(|member| member["name"].as_str())
            .collect();
        let unique_names: BTreeSet<&str> = names.iter().copied().collect();
        let not_sundown = members
            .iter()
            .filter(|member| member["category"] != "SUNDOWN")
            .count();
        let desired = stats["bounds"]["desired_replicas"].as_u64();
        let standby: BTreeSet<String> = status["warm_standby"]["ready"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|name| name.as_str().map(str::to_owned))
            .collect();
        let orphans: Vec<&String> = running.difference(&ids).collect();
        let stray_standby: Vec<&String> = paused.difference(&standby).collect();
        let problem = if !orphans.is_empty() {
            Some(format!("running workers not in the registry: {orphans:?}"))
        } else if !stray_standby.is_empty() {
            Some(format!(
                "paused workers not in the warm standby: {stray_standby:?}"
            ))
        } else if unique_names.len() != names.len() {
            Some(format!("duplicate names in the registry: {names:?}"))
        } else if not_sundown != active || desired != Some(active as u64) {
            Some(format!(
                "{not_sundown} active workers, desired {desired:?}, expected {active}"
            ))
        } else {
            None
        };
        let Some(problem) = problem else {
            return;
        };
        assert!(
            Instant::now() < deadline,
            "{agent}: {problem}\n/stats: {stats}\n/status: {status}\nengine: running {running:?}, paused {paused:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
