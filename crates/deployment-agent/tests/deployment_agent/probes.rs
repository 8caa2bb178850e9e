//! Issue 13 on the agent's side: the worker probe chosen by the user (`WORKER_PROBE` http with
//! a path and statuses, tcp, docker), the crash-loop back-off with its `crash_loop` events, the
//! container settings passed to the engine, the pool's reason in `/status`, and the settings'
//! errors. Third-party images are the `byoa` tests' business; here the default worker plays
//! every part (a path it 404s, flags it refuses, an image without HEALTHCHECK).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use common::testing::{Cleanup, TEST_LABEL, docker, eventually, unique, workspace_binary};
use deployment_agent::{Config, RuntimeKind};
use serde_json::Value;

use crate::support::{DockerEnv, KillOnDrop, TestAgent, fast_config};

const STARTUP: Duration = Duration::from_secs(60);

/// An event as (kind, container, at_ms, message).
type Event = (String, Option<String>, u64, String);

async fn events(agent: &TestAgent) -> Vec<Event> {
    let events = agent.get_json("/events?limit=1000").await;
    let mut events: Vec<Event> = events["events"]
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
        .collect();
    events.sort_by_key(|event| event.2);
    events
}

async fn crash_events(agent: &TestAgent) -> Vec<Event> {
    events(agent)
        .await
        .into_iter()
        .filter(|event| event.0 == "crash_loop")
        .collect()
}

/// Waits until `/status` says `pool.ready` is `ready` and its reason passes `check`.
async fn pool_until(
    agent: &TestAgent,
    what: &str,
    timeout: Duration,
    check: impl Fn(u64, &str) -> bool,
) -> Value {
    eventually(what, timeout, || async {
        let status = agent.get_json("/status").await;
        let pool = status["pool"].clone();
        let ready = pool["ready"].as_u64()?;
        let reason = pool["reason"].as_str().unwrap_or_default().to_owned();
        check(ready, &reason).then_some(pool)
    })
    .await
}

/// The process runtime with a unique app name, its workers killed when the test ends.
fn process_config(tag: &str) -> (Config, KillOnDrop) {
    let mut config = fast_config();
    config.runtime = RuntimeKind::Process;
    config.app = format!("rb{tag}{}", std::process::id());
    config.worker_binary = Some(workspace_binary("worker"));
    config.stop_workers_on_exit = true;
    let kill = KillOnDrop(format!("--worker-id {}-worker-", config.app));
    (config, kill)
}

/// The http probe on a path the worker does not have: never ready, and `/status` says why;
/// with 404 among the accepted statuses it is ready; the tcp probe makes it ready too. The
/// probe settings show in `/config`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn process_runtime_probes_follow_the_users_path_statuses_and_kind() {
    let (mut config, _kill) = process_config("probe");
    config.min_containers = 1;
    config.default_container = Some(1);
    config.worker_probe_path = "/not-here".into();
    let mut agent = TestAgent::start(config.clone()).await;
    let pool = pool_until(
        &agent,
        "a reason naming the 404",
        STARTUP,
        |ready, reason| ready == 0 && reason.contains("GET /not-here answered 404"),
    )
    .await;
    let reason = pool["reason"].as_str().unwrap();
    assert!(
        reason.contains("not ready") && reason.contains("WORKER_PROBE_STATUS 200-399"),
        "{reason}"
    );
    let probe = agent.get_json("/config").await["probe"].clone();
    assert_eq!(probe["kind"], "http");
    assert_eq!(probe["path"], "/not-here");
    assert_eq!(probe["status"], "200-399");
    // Still starting, never ready: nothing in the queue serves.
    let stats = agent.get_json("/stats").await;
    assert!(
        stats["containers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["category"] == "INIT" && c["probe_error"].is_string()),
        "{stats}"
    );
    agent.stop().await;

    config.worker_probe_status =
        deployment_agent::config::parse_status_ranges("200-299,404").unwrap();
    let mut agent = TestAgent::start(config.clone()).await;
    let pool = pool_until(
        &agent,
        "one ready with 404 accepted",
        STARTUP,
        |ready, _| ready == 1,
    )
    .await;
    assert!(pool["reason"].is_null(), "{pool}");
    // The worker's own /stats counts its in-flight.
    let stats = agent.get_json("/stats").await;
    assert_eq!(
        stats["containers"][0]["in_flight_source"], "worker",
        "{stats}"
    );
    agent.stop().await;

    config.worker_probe = deployment_agent::config::ProbeKind::Tcp;
    config.worker_probe_status = deployment_agent::config::parse_status_ranges("200").unwrap();
    let mut agent = TestAgent::start(config).await;
    pool_until(&agent, "one ready on the tcp probe", STARTUP, |ready, _| {
        ready == 1
    })
    .await;
    assert_eq!(agent.get_json("/config").await["probe"]["kind"], "tcp");
    let events = events(&agent).await;
    assert!(
        events.iter().all(|event| event.0 != "crash_loop"),
        "{events:?}"
    );
    agent.stop().await;
}

/// A script standing in for the worker binary: it prints two lines to stderr and exits 3.
/// `fix` turns it into the real worker (the next launch then succeeds).
struct Crasher {
    path: PathBuf,
    dir: PathBuf,
}

impl Crasher {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("rb-crasher-{}", unique()));
        std::fs::create_dir_all(&dir).unwrap();
        let crasher = Self {
            path: dir.join("crasher.sh"),
            dir,
        };
        crasher.write(
            "echo \"starting with $*\" >&2\necho 'fatal: cannot read /etc/app.conf' >&2\nexit 3\n",
        );
        crasher
    }

    fn write(&self, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let temp = self.dir.join("next.sh");
        std::fs::write(&temp, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Renamed into place: a launch never runs a half-written script.
        std::fs::rename(&temp, &self.path).unwrap();
    }

    fn fix(&self, worker: &Path) {
        self.write(&format!("exec '{}' \"$@\"\n", worker.display()));
    }
}

impl Drop for Crasher {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The gaps between consecutive events, in ms.
fn gaps(events: &[Event]) -> Vec<u64> {
    events
        .windows(2)
        .map(|pair| pair[1].2 - pair[0].2)
        .collect()
}

/// A worker that exits at once: launches are spaced by the doubling back-off (each gap at
/// least its wait, capped), each crash is a `crash_loop` event with the exit code and the
/// last stderr lines, `/status` says why no container is ready; once the program is fixed the
/// launch held by the back-off brings the pool to its count and the reason goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn process_runtime_crash_loop_backs_off_reports_and_converges_once_fixed() {
    let crasher = Crasher::new();
    let (mut config, _kill) = process_config("crash");
    config.worker_binary = Some(crasher.path.clone());
    config.min_containers = 1;
    config.default_container = Some(1);
    config.crash_backoff_initial = Duration::from_millis(400);
    config.crash_backoff_max = Duration::from_millis(1600);
    let mut agent = TestAgent::start(config).await;

    let crashes = eventually("five crash_loop events", STARTUP, || async {
        let crashes = crash_events(&agent).await;
        (crashes.len() >= 5).then_some(crashes)
    })
    .await;
    for (_, _, _, message) in &crashes {
        assert!(message.contains("exit code 3"), "{message}");
        assert!(
            message.contains("fatal: cannot read /etc/app.conf")
                && message.contains("starting with --host"),
            "the last stderr lines: {message}"
        );
    }
    // Each wait doubles from 400 ms up to the 1600 ms cap: a gap is never shorter than its
    // wait (launches are held), and never runs away past the cap (generous slack).
    let waits = [400, 800, 1600, 1600];
    let gaps = gaps(&crashes[..5]);
    for (gap, wait) in gaps.iter().zip(waits) {
        // (Less 100 ms: each event is recorded once the crashed worker's logs are read.)
        assert!(*gap + 100 >= wait, "gaps {gaps:?}, waits {waits:?}");
        assert!(*gap < wait + 5000, "gaps {gaps:?}, waits {waits:?}");
    }
    let created = events(&agent)
        .await
        .into_iter()
        .filter(|event| event.0 == "created" && event.1.is_none())
        .count();
    assert!(
        created <= crashes.len() + 2,
        "one launch per crash, no hot loop: {created} launches for {} crashes",
        crashes.len()
    );
    let pool = pool_until(&agent, "a crash-loop reason", STARTUP, |ready, reason| {
        ready == 0 && reason.starts_with("crash loop")
    })
    .await;
    let reason = pool["reason"].as_str().unwrap();
    assert!(
        reason.contains("code 3")
            && reason.contains("next launch")
            && reason.contains("fatal: cannot read /etc/app.conf"),
        "{reason}"
    );

    // Fixed: the held launch comes, the pool converges, the reason goes.
    crasher.fix(&workspace_binary("worker"));
    let pool = pool_until(&agent, "one ready after the fix", STARTUP, |ready, _| {
        ready == 1
    })
    .await;
    assert!(pool["reason"].is_null(), "{pool}");
    agent.request_replicas(2).await;
    pool_until(&agent, "the count converges to 2", STARTUP, |ready, _| {
        ready == 2
    })
    .await;
    agent.stop().await;
}

/// Builds a `FROM scratch` image of the worker with no HEALTHCHECK.
fn image_without_healthcheck(cleanup: &mut Cleanup, id: &str) -> String {
    let context = std::env::temp_dir().join(format!("rb-nohealth-{id}"));
    cleanup.dirs.push(context.clone());
    std::fs::create_dir_all(&context).unwrap();
    std::fs::copy(workspace_binary("worker"), context.join("worker")).unwrap();
    std::fs::write(
        context.join("Dockerfile"),
        "FROM scratch\nCOPY worker /worker\nUSER 10001:10001\nENTRYPOINT [\"/worker\"]\n",
    )
    .unwrap();
    let tag = format!("rustybalancer-test/no-healthcheck:{id}");
    cleanup.images.push(tag.clone());
    docker(&[
        "build",
        "--quiet",
        "--label",
        TEST_LABEL,
        "-t",
        &tag,
        &context.to_string_lossy(),
    ]);
    tag
}

/// On Docker: WORKER_ARGS the worker refuses make it exit 2 at once; the crash loop reads
/// the code and the engine's logs. With the settings fixed, the container is created as the
/// settings say (entrypoint, arguments, user, read-only root, tmpfs, labels) and the docker
/// probe (the image's HEALTHCHECK) makes it ready; an image without HEALTHCHECK under
/// WORKER_PROBE=docker is a `probe_error` event and the pool's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_crash_loop_container_settings_and_the_docker_probe() {
    let mut env = DockerEnv::new();
    let mut config = env.config();
    config.min_containers = 1;
    config.default_container = Some(1);
    config.crash_backoff_initial = Duration::from_millis(500);
    config.crash_backoff_max = Duration::from_secs(2);
    config.worker_args = deployment_agent::config::parse_command("--no-such-flag").unwrap();
    let mut agent = TestAgent::start(config.clone()).await;
    let crashes = eventually("three crash_loop events", STARTUP, || async {
        let crashes = crash_events(&agent).await;
        (crashes.len() >= 3).then_some(crashes)
    })
    .await;
    for (_, _, _, message) in &crashes {
        assert!(message.contains("exit code 2"), "{message}");
        assert!(
            message.contains("--no-such-flag"),
            "the engine's log lines: {message}"
        );
    }
    let gaps = gaps(&crashes[..3]);
    assert!(
        gaps[0] + 100 >= 500 && gaps[1] + 100 >= 1000,
        "gaps {gaps:?}"
    );
    // No hot loop: crashed containers are removed, never more than one at a time.
    assert!(env.containers().len() <= 1, "{:?}", env.containers());
    let pool = pool_until(&agent, "a crash-loop reason", STARTUP, |ready, reason| {
        ready == 0 && reason.starts_with("crash loop") && reason.contains("code 2")
    })
    .await;
    assert!(
        pool["reason"].as_str().unwrap().contains("--no-such-flag"),
        "{pool}"
    );
    agent.stop().await;

    // Fixed through a restart, with every container setting and the docker probe.
    config.worker_args =
        deployment_agent::config::parse_command(r#"["--worker-id", "from-args"]"#).unwrap();
    config.worker_command = deployment_agent::config::parse_command("/worker").unwrap();
    config.worker_user = "10002:10002".into();
    config.worker_read_only = true;
    config.worker_tmpfs = deployment_agent::config::parse_tmpfs("/tmp:size=16m,/run").unwrap();
    config.worker_labels = deployment_agent::config::parse_labels("team=web,tier=front").unwrap();
    config.worker_probe = deployment_agent::config::ProbeKind::Docker;
    let mut agent = TestAgent::start(config.clone()).await;
    pool_until(
        &agent,
        "one ready on the docker probe",
        STARTUP,
        |ready, _| ready == 1,
    )
    .await;
    let id = agent.get_json("/stats").await["containers"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let inspect: Value = serde_json::from_str(&docker(&["inspect", &id])).unwrap();
    let inspect = &inspect[0];
    assert_eq!(
        inspect["Config"]["Entrypoint"],
        serde_json::json!(["/worker"])
    );
    assert_eq!(
        inspect["Config"]["Cmd"],
        serde_json::json!(["--worker-id", "from-args"])
    );
    assert_eq!(inspect["Config"]["User"], "10002:10002");
    assert_eq!(inspect["HostConfig"]["ReadonlyRootfs"], true);
    assert_eq!(inspect["HostConfig"]["Tmpfs"]["/tmp"], "size=16m");
    assert_eq!(inspect["HostConfig"]["Tmpfs"]["/run"], "");
    assert_eq!(inspect["Config"]["Labels"]["team"], "web");
    assert_eq!(inspect["Config"]["Labels"]["tier"], "front");
    assert_eq!(inspect["Config"]["Labels"]["application"], env.app.as_str());
    assert_eq!(inspect["State"]["Health"]["Status"], "healthy");
    assert_eq!(agent.get_json("/config").await["probe"]["kind"], "docker");
    agent.stop().await;
    for id in env.containers() {
        docker(&["rm", "-f", &id]);
    }

    // An image without HEALTHCHECK under WORKER_PROBE=docker: said clearly.
    let mut config = env.config();
    config.min_containers = 1;
    config.default_container = Some(1);
    config.worker_probe = deployment_agent::config::ProbeKind::Docker;
    config.image = image_without_healthcheck(&mut env.cleanup, &env.id);
    config.stop_workers_on_exit = true;
    let mut agent = TestAgent::start(config).await;
    pool_until(
        &agent,
        "a reason naming HEALTHCHECK",
        STARTUP,
        |ready, reason| {
            ready == 0 && reason.contains("no HEALTHCHECK") && reason.contains("WORKER_PROBE")
        },
    )
    .await;
    let errors: Vec<Event> = events(&agent)
        .await
        .into_iter()
        .filter(|event| event.0 == "probe_error")
        .collect();
    assert_eq!(errors.len(), 1, "one event per container: {errors:?}");
    assert!(errors[0].3.contains("no HEALTHCHECK"), "{errors:?}");
    agent.stop().await;
}

/// Bad probe, container and back-off settings stop start-up naming the variable.
#[test]
fn bad_probe_and_container_settings_stop_start_up_naming_the_variable() {
    let binary = workspace_binary("deployment-agent");
    for (variable, value, extra) in [
        ("WORKER_PROBE", "grpc", None),
        ("WORKER_PROBE_PATH", "health", None),
        ("WORKER_PROBE_STATUS", "200-999", None),
        ("WORKER_COMMAND", "[\"unterminated", None),
        ("WORKER_ARGS", "[1, 2]", None),
        ("WORKER_USER", "bad user", None),
        ("WORKER_READ_ONLY", "maybe", None),
        ("WORKER_TMPFS", "tmp", None),
        ("WORKER_LABELS", "managed-by=someone-else", None),
        ("CRASH_BACKOFF_INITIAL", "soon", None),
        ("CRASH_BACKOFF_MAX", "100ms", None),
        ("WORKER_PROBE", "docker", Some(("AGENT_RUNTIME", "process"))),
    ] {
        let output = std::process::Command::new(&binary)
            .env(variable, value)
            .envs(extra)
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
