//! `GET /containers/{id}/logs`: a worker's own log lines for one request id (the balancer's
//! `X-Request-Id`), read back through the agent, on the process runtime and on the real Docker
//! engine; a follow that yields a new line live and ends when its worker stops; 404 and 400.

use std::time::Duration;

use common::testing::{eventually, unique};
use deployment_agent::RuntimeKind;
use serde_json::{Value, json};

use crate::support::{DockerEnv, KillOnDrop, TestAgent, fast_config};

const STARTUP: Duration = Duration::from_secs(60);

/// One worker and no scaling: the pool stays as it is.
fn one_worker(mut config: deployment_agent::Config) -> deployment_agent::Config {
    config.min_containers = 1;
    config.default_container = Some(1);
    config.max_containers = 1;
    config.stop_workers_on_exit = true;
    config
}

/// The ready worker's id, name and address, from `/stats`.
async fn ready_worker(agent: &TestAgent) -> (String, String, String) {
    eventually("a ready worker in /stats", STARTUP, || async {
        let stats = agent.get_json("/stats").await;
        let worker = stats["containers"]
            .as_array()?
            .iter()
            .find(|c| c["healthy"] == true)?
            .clone();
        Some((
            worker["id"].as_str()?.to_owned(),
            worker["name"].as_str()?.to_owned(),
            worker["address"].as_str()?.to_owned(),
        ))
    })
    .await
}

/// A job sent straight to the worker with `X-Request-Id: id`.
async fn job(address: &str, id: &str) {
    let response = reqwest::Client::new()
        .post(format!("http://{address}/submit"))
        .header("x-request-id", id)
        .json(&json!({"operation": "primes", "data": {"limit": 1000}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the job for {id}");
}

/// The NDJSON lines of a logs answer (which must be 200 and NDJSON).
async fn lines_of(agent: &TestAgent, path: &str) -> Vec<Value> {
    let response = agent.client.get(agent.url(path)).send().await.unwrap();
    assert_eq!(response.status(), 200, "GET {path}");
    assert_eq!(
        response.headers()["content-type"],
        "application/x-ndjson",
        "GET {path}"
    );
    let text = response.text().await.unwrap();
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect()
}

/// Waits until the worker's `job started` and `job done` lines for `id` are readable through
/// `/containers/{key}/logs?grep=<id>`; each line mentions the id.
async fn job_lines(agent: &TestAgent, key: &str, id: &str) -> Vec<Value> {
    let path = format!("/containers/{key}/logs?grep={id}");
    let lines = eventually(
        "the job's lines in the container's logs",
        Duration::from_secs(20),
        || async {
            let lines = lines_of(agent, &path).await;
            let has = |message: &str| {
                lines
                    .iter()
                    .any(|l| l["line"].as_str().is_some_and(|t| t.contains(message)))
            };
            (has("job started") && has("job done")).then_some(lines)
        },
    )
    .await;
    let now = crate::support::now_ms();
    for line in &lines {
        let text = line["line"].as_str().unwrap();
        assert!(text.contains(id), "grep let through {line}");
        assert_eq!(line["stream"], "stderr", "{line}");
        let at = line["at_ms"]
            .as_u64()
            .unwrap_or_else(|| panic!("no at_ms: {line}"));
        assert!(
            at <= now + 1000 && at + 120_000 >= now,
            "at_ms {at} is not about now ({now}): {line}"
        );
    }
    lines
}

/// A follow of container `key`'s new lines (nothing old: `tail=0`) that mention `id`, on a
/// client of its own: the agent's has a 10 s timeout, and a follow lasts until its worker
/// stops.
async fn follow_new_lines(agent: &TestAgent, key: &str, id: &str) -> reqwest::Response {
    let path = format!("/containers/{key}/logs?follow=true&tail=0&grep={id}");
    let response = reqwest::Client::new()
        .get(agent.url(&path))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "GET {path}");
    response
}

/// Reads a streamed body until a chunk holds `needle`, for at most `within`; the text read.
async fn read_until(response: &mut reqwest::Response, needle: &str, within: Duration) -> String {
    let mut text = String::new();
    let read = async {
        while let Some(chunk) = response.chunk().await.unwrap() {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if text.contains(needle) {
                return true;
            }
        }
        false
    };
    let found = tokio::time::timeout(within, read).await;
    assert!(
        matches!(found, Ok(true)),
        "no `{needle}` in the followed logs ({found:?}): {text}"
    );
    text
}

async fn refused(agent: &TestAgent, path: &str) -> (u16, String) {
    let response = agent.client.get(agent.url(path)).send().await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    let message = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("GET {path}: no error in {body}"))
        .to_owned();
    (status, message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn process_worker_logs_carry_the_request_id_and_follow_live() {
    let mut config = one_worker(fast_config());
    config.runtime = RuntimeKind::Process;
    config.app = format!("rblogs{}", std::process::id());
    config.worker_binary = Some(common::testing::workspace_binary("worker"));
    let _cleanup = KillOnDrop(format!("--worker-id {}-worker-", config.app));
    let mut agent = TestAgent::start(config).await;
    let (id, name, address) = ready_worker(&agent).await;

    // The worker's own lines for one request, by container id and by name.
    let first = format!("req-{}", unique());
    job(&address, &first).await;
    let lines = job_lines(&agent, &id, &first).await;
    assert!(lines.len() >= 2, "{lines:?}");
    let last = lines_of(
        &agent,
        &format!("/containers/{name}/logs?grep={first}&tail=1"),
    )
    .await;
    // `tail` counts the lines read and `grep` filters them: the worker's last line is the
    // job's `job done`.
    assert_eq!(last.len(), 1, "{last:?}");
    assert!(
        last[0]["line"].as_str().unwrap().contains("job done"),
        "{last:?}"
    );
    // Without grep: the last lines, whatever they say; since the future: none.
    let tail = lines_of(&agent, &format!("/containers/{id}/logs?tail=3")).await;
    assert_eq!(tail.len(), 3, "{tail:?}");
    let later = crate::support::now_ms() + 60_000;
    assert!(
        lines_of(&agent, &format!("/containers/{id}/logs?since={later}"))
            .await
            .is_empty()
    );

    // A follow: nothing old (tail=0), only the second request's lines, as they are written.
    let second = format!("req-{}", unique());
    let mut follow = follow_new_lines(&agent, &id, &second).await;
    job(&address, &first).await;
    job(&address, &second).await;
    let text = read_until(&mut follow, "job done", Duration::from_secs(10)).await;
    assert!(text.contains(&second), "{text}");
    assert!(
        !text.contains(&first),
        "grep let another id through: {text}"
    );

    // Unknown containers and bad queries.
    let (status, message) = refused(&agent, "/containers/no-such-worker/logs").await;
    assert_eq!(status, 404, "{message}");
    for (query, parameter) in [
        ("tail=abc", "tail"),
        ("tail=10001", "tail"),
        ("since=yesterday", "since"),
        ("follow=maybe", "follow"),
    ] {
        let (status, message) = refused(&agent, &format!("/containers/{id}/logs?{query}")).await;
        assert_eq!(status, 400, "{query}: {message}");
        assert!(message.contains(parameter), "{query}: {message}");
    }

    // The follow ends by itself when its worker stops (drained and replaced here).
    let drained = agent
        .post(&format!("/containers/{id}/drain"), &json!({}))
        .await;
    assert_eq!(drained.status(), 202);
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while follow.chunk().await.unwrap().is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the follow outlived its worker");
    // Exited and forgotten by the pool, the worker's lines are still there: the process
    // runtime kept them.
    eventually("the drained worker gone from /stats", STARTUP, || async {
        let stats = agent.get_json("/stats").await;
        let listed = stats["containers"]
            .as_array()?
            .iter()
            .any(|c| c["id"] == id.as_str());
        (!listed).then_some(())
    })
    .await;
    let kept = job_lines(&agent, &id, &second).await;
    assert!(kept.len() >= 2, "{kept:?}");
    agent.stop().await;
}

/// The same on the real Docker engine: the engine's logs API, its timestamps parsed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_worker_logs_carry_the_request_id() {
    let env = DockerEnv::new();
    let mut agent = TestAgent::start(one_worker(env.config())).await;
    let (id, name, address) = ready_worker(&agent).await;

    let request = format!("req-{}", unique());
    job(&address, &request).await;
    job_lines(&agent, &id, &request).await;
    // By name, and by a short id as `docker ps` shows it.
    let by_name = lines_of(&agent, &format!("/containers/{name}/logs?grep={request}")).await;
    assert!(by_name.len() >= 2, "{by_name:?}");
    let short = lines_of(
        &agent,
        &format!("/containers/{}/logs?grep={request}", &id[..12]),
    )
    .await;
    assert_eq!(short.len(), by_name.len(), "{short:?}");

    // A follow yields a new line live.
    let second = format!("req-{}", unique());
    let mut follow = follow_new_lines(&agent, &id, &second).await;
    job(&address, &second).await;
    read_until(&mut follow, "job done", Duration::from_secs(10)).await;

    // The engine ends the follow when the container stops (drained and replaced here).
    let drained = agent
        .post(&format!("/containers/{id}/drain"), &json!({}))
        .await;
    assert_eq!(drained.status(), 202);
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(_)) = follow.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the follow outlived its container");

    // A container of this engine that the agent does not manage is not served.
    let (status, message) = refused(&agent, "/containers/no-such-container/logs").await;
    assert_eq!(status, 404, "{message}");
    // Stopping the agent stops and removes its worker (STOP_WORKERS_ON_EXIT); the env's
    // cleanup removes whatever a failure left.
    agent.stop().await;
}
