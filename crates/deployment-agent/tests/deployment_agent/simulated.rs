//! The agent binary on the simulated runtime (the scale benchmark's, `jobs/bench-scale.sh`)
//! with 50 workers: every one ready in the queue over WebSocket with scores of its own, the
//! decision-time histogram filled, and nothing left running once the agent stops. No timing
//! is asserted: the figures come from the benchmark.

use std::time::Duration;

use crate::support::{AgentProcess, QueueWatcher, serving};

const WORKERS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_runtime_runs_fifty_workers_without_a_process() {
    let workers = WORKERS.to_string();
    let mut agent = AgentProcess::start(&[
        ("AGENT_RUNTIME", "simulated"),
        ("MIN_CONTAINERS", &workers),
        ("DEFAULT_CONTAINER", &workers),
        ("MAX_CONTAINERS", &workers),
        ("MAX_CONTAINERS_LIMIT", &workers),
        ("SCALE_CHECK_PERIOD", "500ms"),
        ("PROBE_PERIOD", "500ms"),
        ("AGENT_INSECURE", "true"),
    ])
    .await;
    let watcher = QueueWatcher::connect(&format!("ws://{}/ws", agent.ws)).await;

    // Every worker ready and scored from its synthetic stats.
    let (_, queue) = watcher
        .wait_until(
            "50 serving workers with CPU scores",
            Duration::from_secs(60),
            |s| {
                s.items.len() == WORKERS
                    && serving(s).len() == WORKERS
                    && s.items.iter().all(|i| i.cpu_score < 100.0)
            },
        )
        .await;
    let ids: std::collections::HashSet<&str> = queue.items.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids.len(), WORKERS, "ids are distinct");
    let mut scores: Vec<u64> = queue.items.iter().map(|i| i.score.to_bits()).collect();
    scores.sort_unstable();
    scores.dedup();
    assert!(scores.len() > 1, "every worker has the same score");
    // One loopback listener answers for all of them.
    let address = queue.items[0].address.clone();
    assert!(queue.items.iter().all(|i| i.address == address));
    assert!(address.starts_with("127.0.0.1:"), "{address}");

    // The controller's steps are timed.
    let metrics = reqwest::get(agent.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ticks: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("agent_tick_seconds_count "))
        .expect("no agent_tick_seconds histogram")
        .trim()
        .parse()
        .unwrap();
    assert!(ticks > 0.0, "no tick observed:\n{metrics}");
    assert!(metrics.contains("agent_tick_max_seconds"), "{metrics}");
    let status: serde_json::Value = reqwest::get(agent.url("/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["runtime"], "simulated", "{status}");

    // No process behind the workers, and none once the agent stops.
    let pid = agent.pid();
    let children = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .map(|task| std::fs::read_to_string(task.path().join("children")).unwrap_or_default())
        .collect::<String>();
    assert!(
        children.trim().is_empty(),
        "the agent has children: {children}"
    );
    let exit = agent.stop(Duration::from_secs(20)).await;
    assert!(exit.success(), "the agent exited with {exit}");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the agent's process is still there"
    );
    assert!(
        std::net::TcpStream::connect(&address).is_err(),
        "the simulated workers' listener {address} still answers"
    );
}
