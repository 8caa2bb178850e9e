//! High availability (issue 14): two agent processes (the real binary, on the Docker runtime)
//! with one real `redis-server` for their lease and, where traffic matters, one real balancer
//! process following both (`AGENT_WS_URLS`, `AGENT_GRPC_URLS`). `LEADER_LEASE=1s`.
//!
//! - split brain: the leader frozen (SIGSTOP) longer than its lease; the follower takes over
//!   and scales; the old leader, thawed, steps down without a single engine call (the
//!   engine's event log and its own events) and follows;
//! - both agents restarted one after the other under load through the balancer: no failed
//!   request, the desired count and the bounds kept;
//! - `POST /scale` on the follower gets the leader's answer (status and body), marked
//!   `X-Forwarded-To-Leader`;
//! - the leader asked to step down (through the follower) hands over; its own queue
//!   subscribers, on the same connection, get the new leader's snapshots as it scales; during
//!   its hold it leads again only once nobody else leads for two leases;
//! - an agent whose leader's queue it cannot reach (a leader in Redis at a silent address)
//!   closes its queue subscribers (`/ws` with 1013, `WatchQueue` ended) and refuses new ones
//!   (503, `UNAVAILABLE`), and takes them again once it leads.
//!
//! Each test removes the agents, the balancer, Redis and every container it made (labelled
//! with its own application), also when it fails: [`Cluster`] holds them in drop order.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use common::testing::docker;
use serde_json::{Value, json};

use crate::support::{
    AgentProcess, Balancer, DockerEnv, OpenLoad, TOKEN, now_ms, redis::RedisServer,
};

/// `LEADER_LEASE` of every agent here.
const LEASE: Duration = Duration::from_secs(1);
/// The agents' ids (`AGENT_ID`), in start order.
const IDS: [&str; 2] = ["ha-a", "ha-b"];
/// Event kinds that are the agent acting (the engine or the desired state), not observing.
const ACTIONS: [&str; 6] = [
    "scale_up",
    "scale_down",
    "created",
    "sundown",
    "stopped",
    "removed",
];
/// Engine events that only a call to the engine makes.
const ENGINE_CALLS: [&str; 7] = [
    "create", "start", "stop", "kill", "destroy", "pause", "unpause",
];

/// Two agents sharing one Redis and one Docker application, and optionally a balancer.
/// Fields drop in order: the agents first (so none makes a container after the cleanup),
/// then the balancer, Redis, and last the containers, network and image.
struct Cluster {
    agents: Vec<AgentProcess>,
    balancer: Option<Balancer>,
    client: reqwest::Client,
    /// Held for its drop (the server is killed).
    _redis: RedisServer,
    env: DockerEnv,
}

/// What an agent's `GET /status` says about leadership.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Leadership {
    agent_id: String,
    role: String,
    epoch: u64,
    leader_id: Option<String>,
    leader_epoch: Option<u64>,
}

impl Cluster {
    /// Redis, a Docker environment and two agents with `settings` on top of fast ones;
    /// waits until one leads and the other follows it.
    async fn start(settings: &[(&str, &str)]) -> Self {
        let env = DockerEnv::new();
        let redis = RedisServer::start();
        let lease = format!("{}ms", LEASE.as_millis());
        let docker_host = std::env::var("DOCKER_HOST").ok();
        let mut common: Vec<(&str, &str)> = vec![
            ("AGENT_RUNTIME", "docker"),
            ("DOCKER_IMAGE", &env.image),
            ("APP_IDENTIFIER", &env.app),
            ("AGENT_NETWORK", &env.network),
            ("REDIS_URL", &redis.url),
            ("AGENT_REPLICAS", "2"),
            ("LEADER_LEASE", &lease),
            ("AGENT_ADVERTISE_HOST", "127.0.0.1"),
            ("AGENT_TOKEN", TOKEN),
            ("DEFAULT_CONTAINER", "2"),
            ("MIN_CONTAINERS", "1"),
            ("MAX_CONTAINERS", "4"),
            ("WARM_POOL", "0"),
            ("SCALE_CHECK_PERIOD", "500ms"),
            ("COOLDOWN_PERIOD", "2s"),
            ("SCALE_DOWN_STABILIZATION", "3s"),
            ("PROBE_PERIOD", "250ms"),
            ("TARGET_CONCURRENCY", "2"),
            ("STOP_GRACE", "3s"),
            ("DRAIN_TIMEOUT", "10s"),
            ("WS_PING_PERIOD", "2s"),
            ("SHUTDOWN_GRACE", "2s"),
        ];
        if let Some(host) = &docker_host {
            common.push(("DOCKER_HOST", host));
        }
        common.extend_from_slice(settings);
        let mut agents = Vec::new();
        for id in IDS {
            let mut env_of = common.clone();
            env_of.push(("AGENT_ID", id));
            agents.push(AgentProcess::start(&env_of).await);
        }
        let cluster = Self {
            agents,
            balancer: None,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            _redis: redis,
            env,
        };
        cluster.leader(Duration::from_secs(30)).await;
        cluster
    }

    /// Starts the balancer following both agents.
    fn follow_with_a_balancer(&mut self) -> &Balancer {
        let agents: Vec<&AgentProcess> = self.agents.iter().collect();
        let balancer = Balancer::start_following(
            &agents,
            TOKEN,
            "least-request",
            &[("AGENT_RECONNECT_MAX", "1s")],
        );
        self.balancer.insert(balancer)
    }

    async fn leadership(&self, agent: usize) -> Option<Leadership> {
        let status: Value = self
            .client
            .get(self.agents[agent].url("/status"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let leadership = &status["leadership"];
        Some(Leadership {
            agent_id: leadership["agent_id"].as_str()?.to_owned(),
            role: leadership["role"].as_str()?.to_owned(),
            epoch: leadership["epoch"].as_u64()?,
            leader_id: leadership["leader"]["id"].as_str().map(str::to_owned),
            leader_epoch: leadership["leader"]["epoch"].as_u64(),
        })
    }

    /// Waits until exactly one agent leads and the other follows it at its epoch; returns
    /// (leader, follower, epoch) as indices into `agents`.
    async fn leader(&self, timeout: Duration) -> (usize, usize, u64) {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = [self.leadership(0).await, self.leadership(1).await];
            if let [Some(a), Some(b)] = &seen {
                for (leader, follower, l, f) in [(0, 1, a, b), (1, 0, b, a)] {
                    let agreed = l.role == "leader"
                        && f.role == "follower"
                        && l.agent_id == IDS[leader]
                        && f.leader_id.as_deref() == Some(IDS[leader])
                        && f.leader_epoch == Some(l.epoch);
                    if agreed {
                        return (leader, follower, l.epoch);
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for one leader the other follows: {seen:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls `agent`'s `/status` every 20 ms until it leads with an epoch above `above`; the
    /// time since `since` and its epoch.
    async fn leads_above(&self, agent: usize, above: u64, since: Instant) -> (Duration, u64) {
        let deadline = Instant::now() + LEASE * 10;
        loop {
            if let Some(l) = self.leadership(agent).await {
                if l.role == "leader" && l.epoch > above {
                    return (since.elapsed(), l.epoch);
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} did not lead with an epoch above {above} within {:?}: {:?}",
                IDS[agent],
                LEASE * 10,
                self.leadership(agent).await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `POST /scale` on `agent` with `body` (and the token when `token`): status, body,
    /// `X-Forwarded-To-Leader`.
    async fn scale(&self, agent: usize, body: &Value, token: bool) -> (u16, Value, Option<String>) {
        self.post(agent, "/scale", body, token).await
    }

    /// `POST path` on `agent` with `body` (and the token when `token`): status, body (JSON,
    /// else its text), `X-Forwarded-To-Leader`.
    async fn post(
        &self,
        agent: usize,
        path: &str,
        body: &Value,
        token: bool,
    ) -> (u16, Value, Option<String>) {
        let mut request = self.client.post(self.agents[agent].url(path)).json(body);
        if token {
            request = request.bearer_auth(TOKEN);
        }
        let answer = request.send().await.unwrap();
        let status = answer.status().as_u16();
        let forwarded = answer
            .headers()
            .get("x-forwarded-to-leader")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let text = answer.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body, forwarded)
    }

    async fn get_json(&self, agent: usize, path: &str) -> Value {
        let response = self
            .client
            .get(self.agents[agent].url(path))
            .send()
            .await
            .unwrap_or_else(|err| panic!("GET {path} on {}: {err}", IDS[agent]));
        assert_eq!(response.status(), 200, "GET {path} on {}", IDS[agent]);
        response.json().await.unwrap()
    }

    /// Waits until `agent`'s `/stats` lists `count` healthy, serving workers and nothing else,
    /// and the engine runs exactly those; returns their ids.
    async fn wait_for_workers(&self, agent: usize, count: usize) -> BTreeSet<String> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let stats = self.get_json(agent, "/stats").await;
            let members = stats["containers"].as_array().cloned().unwrap_or_default();
            let serving: BTreeSet<String> = members
                .iter()
                .filter(|m| {
                    m["healthy"] == true
                        && !["INIT", "SUNDOWN"].contains(&m["category"].as_str().unwrap_or(""))
                })
                .filter_map(|m| m["id"].as_str().map(str::to_owned))
                .collect();
            let running = self.running();
            if members.len() == count && serving.len() == count && running == serving {
                return serving;
            }
            assert!(
                Instant::now() < deadline,
                "{} never had exactly {count} serving workers; /stats: {stats}; running: {running:?}",
                IDS[agent]
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ids of this test's running (not paused) containers on the engine.
    fn running(&self) -> BTreeSet<String> {
        let filter = format!("label=application={}", self.env.app);
        docker(&[
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &filter,
            "--filter",
            "status=running",
        ])
        .split_whitespace()
        .map(str::to_owned)
        .collect()
    }

    /// `agent`'s events (`GET /events`) from `since_ms` on, as (at_ms, kind, container).
    async fn events_since(&self, agent: usize, since_ms: u64) -> Vec<(u64, String, String)> {
        let events = self.get_json(agent, "/events?limit=1000").await;
        let mut events: Vec<(u64, String, String)> = events["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|event| {
                Some((
                    event["at_ms"].as_u64()?,
                    event["kind"].as_str()?.to_owned(),
                    event["container"].as_str().unwrap_or_default().to_owned(),
                ))
            })
            .filter(|(at_ms, _, _)| *at_ms >= since_ms)
            .collect();
        events.sort();
        events
    }

    /// The engine calls on this test's containers between two times (Unix seconds), from the
    /// engine's own event log: (action, container id, container name).
    fn engine_calls(&self, since: f64, until: f64) -> Vec<(String, String, String)> {
        let mut args = vec![
            "events".to_owned(),
            "--since".to_owned(),
            format!("{since:.3}"),
            "--until".to_owned(),
            format!("{until:.3}"),
            "--filter".to_owned(),
            "type=container".to_owned(),
            "--filter".to_owned(),
            format!("label=application={}", self.env.app),
        ];
        for call in ENGINE_CALLS {
            args.extend(["--filter".to_owned(), format!("event={call}")]);
        }
        args.extend([
            "--format".to_owned(),
            r#"{{.Action}} {{.Actor.ID}} {{index .Actor.Attributes "name"}}"#.to_owned(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        docker(&args)
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                Some((
                    words.next()?.to_owned(),
                    words.next()?.to_owned(),
                    words.next().unwrap_or_default().to_owned(),
                ))
            })
            .collect()
    }
}

/// `[min_replicas, max_replicas, desired_replicas]` of a `/stats` answer (`u64::MAX` for a
/// missing one).
fn bounds(stats: &Value) -> [u64; 3] {
    ["min_replicas", "max_replicas", "desired_replicas"]
        .map(|field| stats["bounds"][field].as_u64().unwrap_or(u64::MAX))
}

/// Unix time in seconds, with the fraction (as `docker events --since` takes it).
fn unix_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Whether the engine event on `id`/`name` is about the container an agent's event names
/// (the event may carry the full id, a short one, or the name).
fn same_container(event_container: &str, id: &str, name: &str) -> bool {
    !event_container.is_empty() && (id.starts_with(event_container) || event_container == name)
}

/// Split brain: the leader frozen (SIGSTOP) for three leases. The follower leads within the
/// lease + 1 s and scales (POST /scale: one more worker). Thawed, the old leader steps down
/// without acting: from the thaw until three leases after it has said `follower`, the
/// engine's event log has no create/start/stop/kill/destroy/pause/unpause on the test's
/// containers that the new leader did not make (its own events name each container it acted
/// on), the old leader's events have no action of its own (an event the new leader also has
/// is a mirrored one), its `/status` says follower of the new leader at the new epoch, and
/// the engine still runs exactly the three workers the new leader made.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn split_brain_a_thawed_leader_steps_down_without_an_engine_call() {
    // Two idle workers that stay two (no scale-down below the minimum).
    let cluster = Cluster::start(&[("MIN_CONTAINERS", "2")]).await;
    let (old, new, epoch) = cluster.leader(Duration::from_secs(30)).await;
    let before = cluster.wait_for_workers(old, 2).await;

    // Freeze the leader; the follower takes over.
    let frozen = Instant::now();
    cluster.agents[old].freeze();
    let (takeover, new_epoch) = cluster.leads_above(new, epoch, frozen).await;
    println!(
        "takeover after SIGSTOP of the leader: {} ms (lease {} ms), epoch {epoch} -> {new_epoch}",
        takeover.as_millis(),
        LEASE.as_millis()
    );
    assert!(
        takeover <= LEASE + Duration::from_secs(1),
        "{} led {takeover:?} after {} froze (lease {LEASE:?})",
        IDS[new],
        IDS[old]
    );
    // The new leader scales: a third worker, kept by the minimum.
    let (status, body, forwarded) = cluster
        .scale(new, &json!({"min_replicas": 3, "replicas": 3}), true)
        .await;
    assert_eq!(status, 202, "POST /scale on the new leader: {body}");
    assert_eq!(forwarded, None, "the new leader forwarded its POST /scale");
    let three = cluster.wait_for_workers(new, 3).await;
    assert!(
        before.is_subset(&three),
        "the new leader replaced workers instead of adding one: {before:?} -> {three:?}"
    );
    // Frozen longer than its lease, whatever the scaling took.
    if let Some(left) = (LEASE * 3).checked_sub(frozen.elapsed()) {
        tokio::time::sleep(left).await;
    }

    // Thaw: it must step down and follow, touching nothing.
    let thaw_s = unix_s();
    let thaw_ms = now_ms();
    cluster.agents[old].thaw();
    let deadline = Instant::now() + LEASE * 10;
    loop {
        let now = cluster.leadership(old).await;
        let follows = now.as_ref().is_some_and(|l| {
            l.role == "follower"
                && l.leader_id.as_deref() == Some(IDS[new])
                && l.leader_epoch == Some(new_epoch)
        });
        if follows {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not step down within {:?} of the thaw: {now:?}",
            IDS[old],
            LEASE * 10
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stepped_down = Duration::from_millis(now_ms().saturating_sub(thaw_ms));
    // A few leases more for anything it might still do.
    tokio::time::sleep(LEASE * 3).await;
    let until_s = unix_s();

    let engine = cluster.engine_calls(thaw_s, until_s);
    let by_new: Vec<(u64, String, String)> = cluster
        .events_since(new, thaw_ms)
        .await
        .into_iter()
        .filter(|(_, kind, _)| ACTIONS.contains(&kind.as_str()))
        .collect();
    let unexplained: Vec<&(String, String, String)> = engine
        .iter()
        .filter(|(_, id, name)| {
            !by_new
                .iter()
                .any(|(_, _, container)| same_container(container, id, name))
        })
        .collect();
    assert!(
        unexplained.is_empty(),
        "engine calls after the thaw that the new leader did not make (so {} did): \
         {unexplained:?}\nall engine calls: {engine:?}\nthe new leader's actions: {by_new:?}",
        IDS[old]
    );
    let by_old: Vec<(u64, String, String)> = cluster
        .events_since(old, thaw_ms)
        .await
        .into_iter()
        .filter(|(_, kind, _)| ACTIONS.contains(&kind.as_str()))
        .filter(|event| !by_new.contains(event))
        .collect();
    assert!(
        by_old.is_empty(),
        "{} acted after the thaw: {by_old:?}",
        IDS[old]
    );
    assert_eq!(
        cluster.running(),
        three,
        "the workers changed after the thaw"
    );
    let (leader, _, now_epoch) = cluster.leader(Duration::from_secs(5)).await;
    assert_eq!(
        (leader, now_epoch),
        (new, new_epoch),
        "the leadership moved after the thaw"
    );
    println!(
        "the thawed leader stepped down {} ms after SIGCONT; engine calls after the thaw: {engine:?}",
        stepped_down.as_millis()
    );
}

/// Both agents restarted one after the other (SIGTERM, then, once the other leads, started
/// again on the same ports) under 20 GET/s through a balancer that follows both: first the
/// leader (the other takes over), then, once the restarted one follows, the new leader. Each
/// stop hands over within the lease + 1 s. No request fails; the
/// bounds set through the API before (`min 2`, `max 3`) and the desired count (2) are kept
/// by whoever leads at the end, and the engine runs the same two workers as before (none
/// replaced, none added).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_agents_restarted_in_turn_under_load_fail_no_request_and_keep_count_and_bounds() {
    let mut cluster = Cluster::start(&[]).await;
    let (leader, _, _) = cluster.leader(Duration::from_secs(30)).await;
    let (status, body, _) = cluster
        .scale(
            leader,
            &json!({"min_replicas": 2, "max_replicas": 3, "replicas": 2}),
            true,
        )
        .await;
    assert_eq!(status, 202, "POST /scale: {body}");
    let workers = cluster.wait_for_workers(leader, 2).await;
    let balancer = cluster.follow_with_a_balancer();
    let url = balancer.url("/consume_cpu/1");
    let candidates = {
        let client = cluster.client.clone();
        let balancer = cluster.balancer.as_ref().unwrap();
        common::testing::eventually(
            "the balancer routing to both workers",
            Duration::from_secs(30),
            || {
                let (client, balancer) = (client.clone(), balancer);
                async move {
                    let candidates = balancer.candidates(&client).await;
                    (candidates.len() == 2).then_some(candidates)
                }
            },
        )
        .await
    };
    let load = OpenLoad::start(url, 20);
    tokio::time::sleep(Duration::from_secs(3)).await;

    // First the leader, then the other one (which leads by then). Each is started again only
    // once the other leads, so it never races it for the lease it gave up.
    let mut takeovers = Vec::new();
    let (first, _, _) = cluster.leader(Duration::from_secs(30)).await;
    for agent in [first, 1 - first] {
        let (_, _, epoch) = cluster.leader(Duration::from_secs(30)).await;
        let other = 1 - agent;
        let stopping = Instant::now();
        let exit = cluster.agents[agent].stop(Duration::from_secs(15)).await;
        assert!(
            exit.success(),
            "{} exited with {exit} on SIGTERM",
            IDS[agent]
        );
        let (took, other_epoch) = cluster.leads_above(other, epoch, stopping).await;
        assert!(
            took <= LEASE + Duration::from_secs(1),
            "{} led {took:?} after {} began to stop (lease {LEASE:?})",
            IDS[other],
            IDS[agent]
        );
        takeovers.push((IDS[other], took));
        cluster.agents[agent].start_again().await;
        let (now_leading, _, now_epoch) = cluster.leader(Duration::from_secs(30)).await;
        assert_eq!(
            (now_leading, now_epoch),
            (other, other_epoch),
            "the restarted {} did not follow",
            IDS[agent]
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = load.stop().await;
    let failed: Vec<_> = sent.iter().filter(|s| s.status != 200).take(10).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed while the agents restarted, e.g. {failed:?}",
        sent.iter().filter(|s| s.status != 200).count(),
        sent.len()
    );
    assert!(sent.len() >= 100, "too few requests sent: {}", sent.len());

    let (leader, follower, _) = cluster.leader(Duration::from_secs(30)).await;
    for agent in [leader, follower] {
        let stats = cluster.get_json(agent, "/stats").await;
        assert_eq!(
            bounds(&stats),
            [2, 3, 2],
            "{}'s bounds (min, max, desired) after both restarts: {}",
            IDS[agent],
            stats["bounds"]
        );
    }
    let config = cluster.get_json(leader, "/config").await;
    assert_eq!(
        (&config["min_replicas"], &config["max_replicas"]),
        (&json!(2), &json!(3)),
        "the bounds were lost: {config}"
    );
    assert_eq!(
        cluster.wait_for_workers(leader, 2).await,
        workers,
        "the workers changed across the restarts"
    );
    println!(
        "both agents restarted under load: {} requests, none failed; takeovers {takeovers:?}; \
         routed to {candidates:?}",
        sent.len()
    );
}

/// `POST /scale` sent to the follower gets what the leader answers, status and body, for a
/// change (`202`), a value over `MAX_CONTAINERS_LIMIT` and an unknown field (`400`), and a
/// call without the token (`401`); the forwarded answers say `X-Forwarded-To-Leader: <the
/// leader's id>`, the leader's own answers carry no such header. The change made through the
/// follower shows on both agents' `/stats`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn post_scale_on_the_follower_answers_as_on_the_leader() {
    let cluster = Cluster::start(&[("DEFAULT_CONTAINER", "1")]).await;
    let (leader, follower, _) = cluster.leader(Duration::from_secs(30)).await;
    let cases = [
        (
            json!({"min_replicas": 1, "max_replicas": 3, "replicas": 2}),
            true,
            202,
        ),
        (json!({"replicas": 100_000}), true, 400),
        (json!({"replicas": 2, "surprise": true}), true, 400),
        (json!({"replicas": 2}), false, 401),
    ];
    for (body, token, expected) in &cases {
        let on_leader = cluster.scale(leader, body, *token).await;
        let on_follower = cluster.scale(follower, body, *token).await;
        assert_eq!(
            on_leader.0, *expected,
            "POST /scale {body} on the leader: {on_leader:?}"
        );
        assert_eq!(
            (on_follower.0, &on_follower.1),
            (on_leader.0, &on_leader.1),
            "POST /scale {body}: the follower answered otherwise than the leader"
        );
        assert_eq!(
            on_leader.2, None,
            "the leader marked its own answer to {body} as forwarded"
        );
        if *token {
            assert_eq!(
                on_follower.2.as_deref(),
                Some(IDS[leader]),
                "POST /scale {body} on the follower: X-Forwarded-To-Leader"
            );
        }
    }
    // The change made through the follower is the leader's, and both show it.
    let (status, body, _) = cluster
        .scale(
            follower,
            &json!({"min_replicas": 3, "max_replicas": 4, "replicas": 3}),
            true,
        )
        .await;
    assert_eq!(status, 202, "POST /scale through the follower: {body}");
    assert_eq!(
        (&body["min_replicas"], &body["max_replicas"]),
        (&json!(3), &json!(4)),
        "{body}"
    );
    cluster.wait_for_workers(leader, 3).await;
    for agent in [leader, follower] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stats = cluster.get_json(agent, "/stats").await;
            if bounds(&stats) == [3, 4, 3] {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}'s /stats does not show the change: {}",
                IDS[agent],
                stats["bounds"]
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Every queue snapshot one WebSocket connection received, and how it ended.
struct Subscriber {
    seen: std::sync::Arc<std::sync::Mutex<Vec<common::queue::QueueSnapshot>>>,
    closed: tokio::sync::watch::Receiver<Option<u16>>,
    _task: AbortOnDrop,
}

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Subscriber {
    async fn connect(url: &str) -> Self {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let (socket, _) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(url),
        )
        .await
        .expect("WebSocket connect timed out")
        .unwrap_or_else(|err| panic!("WebSocket connect to {url}: {err}"));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (closing, closed) = tokio::sync::watch::channel(None);
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            let (_, mut read) = socket.split();
            while let Some(Ok(message)) = read.next().await {
                match message {
                    Message::Text(text) => sink
                        .lock()
                        .unwrap()
                        .push(serde_json::from_str(&text).expect("a snapshot")),
                    Message::Close(frame) => {
                        let code = frame.map_or(1005, |frame| u16::from(frame.code));
                        closing.send_replace(Some(code));
                        return;
                    }
                    _ => {}
                }
            }
            closing.send_replace(Some(1006));
        });
        Self {
            seen,
            closed,
            _task: AbortOnDrop(task),
        }
    }

    fn latest(&self) -> Option<common::queue::QueueSnapshot> {
        self.seen.lock().unwrap().last().cloned()
    }

    fn closed(&self) -> Option<u16> {
        *self.closed.borrow()
    }
}

fn ws_url(agent: &AgentProcess) -> String {
    format!("ws://{}/ws", agent.ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_asked_to_step_down_hands_over_and_relays_its_successors_queue() {
    let cluster = Cluster::start(&[("DEFAULT_CONTAINER", "1")]).await;
    let (old, new, epoch) = cluster.leader(Duration::from_secs(30)).await;
    cluster.wait_for_workers(old, 1).await;
    let on_old = Subscriber::connect(&ws_url(&cluster.agents[old])).await;
    let on_new = Subscriber::connect(&ws_url(&cluster.agents[new])).await;

    // Bad asks change nothing.
    let on = &cluster;
    let step_down = move |agent: usize, body: Value, token: bool| async move {
        on.post(agent, "/leadership/step-down", &body, token).await
    };
    let (status, _, _) = step_down(new, json!({}), false).await;
    assert_eq!(status, 401, "a step-down without the token");
    let (status, body, _) = step_down(old, json!({"hold_seconds": 0}), true).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("hold_seconds"),
        "{body}"
    );
    let (status, body, _) = step_down(old, json!({"hold": 3}), true).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        cluster.leader(Duration::from_secs(5)).await,
        (old, new, epoch)
    );

    // Asked through the follower: the leader steps down and the follower leads.
    let asked = Instant::now();
    let asked_ms = now_ms();
    let (status, body, forwarded) = step_down(new, json!({"hold_seconds": 30}), true).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(forwarded.as_deref(), Some(IDS[old]), "{body}");
    assert_eq!(body["agent_id"], IDS[old], "{body}");
    let (handed_over, new_epoch) = cluster.leads_above(new, epoch, asked).await;
    println!(
        "{} stepped down; {} leads with epoch {new_epoch} after {} ms",
        IDS[old],
        IDS[new],
        handed_over.as_millis()
    );
    assert_eq!(
        cluster.leader(Duration::from_secs(10)).await,
        (new, old, new_epoch)
    );

    // The new leader scales; the old leader's subscriber, on the same connection, follows.
    let (status, body, forwarded) = cluster.scale(old, &json!({"replicas": 2}), true).await;
    assert_eq!(status, 202, "POST /scale through the old leader: {body}");
    assert_eq!(forwarded.as_deref(), Some(IDS[new]));
    let two = cluster.wait_for_workers(new, 2).await;
    for (name, subscriber) in [("old leader", &on_old), ("new leader", &on_new)] {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let latest = subscriber.latest();
            let serving: BTreeSet<String> = latest
                .iter()
                .flat_map(|snapshot| snapshot.items.iter())
                .filter(|item| item.utilization_category.accepts_new_requests())
                .map(|item| item.id.clone())
                .collect();
            if latest.as_ref().is_some_and(|s| s.epoch == new_epoch) && serving == two {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the {name}'s subscriber never got the new leader's queue with {two:?}; closed: {:?}, latest: {latest:#?}",
                subscriber.closed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            subscriber.closed(),
            None,
            "the {name}'s subscriber was closed"
        );
    }
    // What the old leader relays is exactly the new leader's queue.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (relayed, own) = (on_old.latest(), on_new.latest());
        if relayed.is_some() && relayed == own {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old leader relays {relayed:#?} while the new one publishes {own:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The log says who stepped down and who took over.
    let kinds: Vec<String> = cluster
        .events_since(new, asked_ms)
        .await
        .into_iter()
        .map(|(_, kind, _)| kind)
        .collect();
    let position = |kind: &str| kinds.iter().position(|k| k == kind);
    assert!(
        position("leader_step_down").is_some()
            && position("leader_step_down") < position("leader_elected"),
        "events since the step-down: {kinds:?}"
    );

    // Within its hold it yields, it does not abstain: with the new leader gone and nobody
    // else to lead, it leads again once the lease has stayed free for two leases.
    let mut cluster = cluster;
    cluster.agents[new].stop(Duration::from_secs(5)).await;
    let gone = Instant::now();
    let mut role = String::new();
    while Instant::now() < gone + LEASE * 10 {
        if let Some(status) = cluster.leadership(old).await {
            role = status.role;
            if role == "leader" {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        role, "leader",
        "the old leader never led again, alone, within its hold"
    );
    assert!(
        gone.elapsed() >= LEASE * 2,
        "it led again {:?} after the new leader left, before the lease stayed free two leases",
        gone.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_that_cannot_hear_its_leader_sends_its_subscribers_elsewhere_until_it_leads() {
    use redis::AsyncCommands;
    let redis = RedisServer::start();
    let app = format!("rbghost{}", std::process::id());
    let prefix = format!("rustybalancer:{app}");
    // A leader that holds the lease in Redis but whose queue is a silent socket.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let ghost = json!({
        "id": "ghost",
        "epoch": 7,
        "since_ms": now_ms(),
        "http_url": format!("http://{silent_addr}"),
        "ws_url": format!("ws://{silent_addr}/ws"),
        "grpc_url": format!("http://{silent_addr}"),
    });
    let mut conn = redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let leader_key = format!("{prefix}:leader");
    let _: () = conn.set_ex(&leader_key, "ghost/7", 120).await.unwrap();
    let _: () = conn.set(format!("{prefix}:leader:epoch"), 7).await.unwrap();
    let _: () = conn
        .set(format!("{prefix}:leader:info"), ghost.to_string())
        .await
        .unwrap();

    let lease = format!("{}ms", LEASE.as_millis());
    let agent = AgentProcess::start(&[
        ("APP_IDENTIFIER", &app),
        ("REDIS_URL", &redis.url),
        ("AGENT_REPLICAS", "2"),
        ("AGENT_ID", "cut-off"),
        ("LEADER_LEASE", &lease),
        ("AGENT_ADVERTISE_HOST", "127.0.0.1"),
        ("AGENT_TOKEN", TOKEN),
        ("WS_PING_PERIOD", "1s"),
    ])
    .await;
    let client = reqwest::Client::new();
    let status: Value = client
        .get(agent.url("/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["leadership"]["leader"]["id"], "ghost", "{status}");
    assert_eq!(status["leadership"]["role"], "follower", "{status}");

    // A subscriber taken while it still hopes to reach the leader, on both protocols.
    let on_ws = Subscriber::connect(&ws_url(&agent)).await;
    let mut grpc = proto::v1::deployment_agent_client::DeploymentAgentClient::connect(format!(
        "http://{}",
        agent.grpc
    ))
    .await
    .unwrap();
    let mut watch = grpc
        .watch_queue(proto::v1::WatchQueueRequest::default())
        .await
        .unwrap()
        .into_inner();
    let started = Instant::now();
    // Stale after max(2 x lease, 5 s): the subscribers are sent away.
    let mut closed = on_ws.closed.clone();
    tokio::time::timeout(Duration::from_secs(15), closed.wait_for(Option::is_some))
        .await
        .expect("the WebSocket subscriber was not closed")
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(on_ws.closed(), Some(1013), "close code (try again later)");
    assert!(
        waited >= Duration::from_secs(4),
        "closed after {waited:?}, before the leader could have been missed"
    );
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(item) = watch.message().await.transpose() {
            item.expect("a snapshot");
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "WatchQueue did not end when the queue went stale"
    );
    // New subscribers are refused, with a reason.
    let refused = client
        .get(format!("http://{}/ws", agent.ws))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("leader's queue"),
        "{body}"
    );
    let refused = grpc
        .watch_queue(proto::v1::WatchQueueRequest::default())
        .await
        .expect_err("WatchQueue on a stale follower");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused}");

    // The ghost's lease gone, the agent leads: its queue is its own, subscribers welcome.
    let _: () = conn.del(&leader_key).await.unwrap();
    common::testing::eventually("the agent leads", Duration::from_secs(10), || {
        let request = client.get(agent.url("/status")).send();
        async move {
            let status: Value = request.await.ok()?.json().await.ok()?;
            (status["leadership"]["role"] == "leader").then_some(())
        }
    })
    .await;
    let again = Subscriber::connect(&ws_url(&agent)).await;
    common::testing::eventually("a snapshot of epoch 8", Duration::from_secs(10), || {
        let latest = again.latest();
        async move { latest.filter(|s| s.epoch == 8).map(|_| ()) }
    })
    .await;
    drop(silent);
}
