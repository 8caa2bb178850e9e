//! The election against a real `redis-server` per test
//! (`tests/deployment_agent/support/redis.rs`), each test under its own key prefix, with a
//! 600 ms lease (renewed every 200 ms, acting until 400 ms after a renew began).

use std::time::Instant as StdInstant;

use redis::aio::MultiplexedConnection;

use super::*;
use crate::store::{ContainerRecord, Store, StoreConfig, tests::container};

use crate::redis_support::RedisServer;

const LEASE: Duration = Duration::from_millis(600);
/// Generous bound for anything that should happen within a round or two.
const SOON: Duration = Duration::from_secs(5);

fn unique_prefix(test: &str) -> String {
    format!("rb-test:{test}:{}:{}", std::process::id(), now_ms())
}

fn config(server: &RedisServer, prefix: &str, id: &str) -> LeaseConfig {
    LeaseConfig {
        redis_url: server.url.clone(),
        prefix: prefix.to_owned(),
        agent_id: id.to_owned(),
        lease: LEASE,
        urls: AgentUrls::new("127.0.0.1", 9000, 9001, 9002),
        candidate: true,
    }
}

/// An elector with its own shutdown token, shut down (and its lease released) on drop.
struct Agent {
    elector: Elector,
    shutdown: CancellationToken,
}

impl Agent {
    fn start(server: &RedisServer, prefix: &str, id: &str) -> Agent {
        let shutdown = CancellationToken::new();
        Agent {
            elector: Elector::start(config(server, prefix, id), shutdown.clone()),
            shutdown,
        }
    }

    async fn stop(&self) {
        self.shutdown.cancel();
        tokio::time::timeout(SOON, self.elector.stopped())
            .await
            .expect("the elector did not stop");
    }

    fn leads(&self) -> bool {
        self.elector.acting_epoch().is_some()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let started = StdInstant::now();
    while !check() {
        assert!(started.elapsed() < timeout, "not {what} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

async fn inspector(server: &RedisServer) -> MultiplexedConnection {
    let client = redis::Client::open(server.url.as_str()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

async fn get(conn: &mut MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query_async(conn).await.unwrap()
}

fn store_config(server: &RedisServer, prefix: &str) -> StoreConfig {
    crate::store::tests::config(Some(&server.url), prefix)
}

fn ids(records: &[ContainerRecord]) -> Vec<&str> {
    records
        .iter()
        .map(|record| record.worker.id.as_str())
        .collect()
}

#[test]
fn urls_and_the_info_json_around_the_epoch() {
    let urls = AgentUrls::new("10.0.0.7", 9000, 9001, 9002);
    assert_eq!(urls.http, "http://10.0.0.7:9000");
    assert_eq!(urls.ws, "ws://10.0.0.7:9001/ws");
    assert_eq!(urls.grpc, "http://10.0.0.7:9002");
    assert_eq!(AgentUrls::new("::1", 1, 2, 3).ws, "ws://[::1]:2/ws");

    let info = LeaderInfo {
        id: "a\"/1".into(),
        epoch: 0,
        since_ms: 1_700_000_000_123,
        http_url: urls.http,
        ws_url: urls.ws,
        grpc_url: urls.grpc,
    };
    let (head, tail) = info_around_epoch(&info);
    let parsed: LeaderInfo = serde_json::from_str(&format!("{head}42{tail}")).unwrap();
    assert_eq!(parsed, LeaderInfo { epoch: 42, ..info });
    assert_eq!(
        parse_info(&format!("{head}42{tail}"), "a\"/1/42"),
        Some(parsed)
    );
    assert_eq!(parse_info(&format!("{head}41{tail}"), "a\"/1/42"), None);
    assert_eq!(epoch_of("a/b/17"), Some(17));
}

#[tokio::test]
async fn alone_the_agent_always_leads_with_epoch_zero_and_no_fence() {
    let elector = Elector::solo("solo".into(), AgentUrls::new("127.0.0.1", 1, 2, 3));
    assert!(elector.is_solo());
    assert_eq!(elector.acting_epoch(), Some(0));
    assert_eq!(elector.renew_deadline(), None);
    assert_eq!(elector.fence(), None);
    assert!(matches!(
        *elector.role().borrow(),
        Role::Leader { epoch: 0, .. }
    ));
    let leader = elector.leader().unwrap();
    assert_eq!((leader.id.as_str(), leader.epoch), ("solo", 0));
    assert_eq!(leader.http_url, "http://127.0.0.1:1");
    let agents = elector.agents();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].id, "solo");
    assert_eq!(elector.leader_changes(), 1);
    // Returns at once: there is no task.
    elector.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_leads_and_a_released_lease_passes_at_once() {
    let server = RedisServer::start();
    let prefix = unique_prefix("two");
    let mut inspect = inspector(&server).await;
    let a = Agent::start(&server, &prefix, "a");
    eventually("a leads", SOON, || a.leads()).await;
    assert_eq!(a.elector.acting_epoch(), Some(1));
    let b = Agent::start(&server, &prefix, "b");

    // b learns who leads, and both see both agents.
    eventually("b follows a", SOON, || {
        b.elector
            .leader()
            .is_some_and(|leader| leader.id == "a" && leader.epoch == 1)
    })
    .await;
    eventually("both agents listed", SOON, || {
        [&a, &b].iter().all(|agent| {
            let agents = agent.elector.agents();
            agents
                .iter()
                .map(|info| info.id.as_str())
                .collect::<Vec<_>>()
                == ["a", "b"]
        })
    })
    .await;
    assert_eq!(
        *b.elector.role().borrow(),
        Role::Follower {
            leader: a.elector.leader()
        }
    );
    assert_eq!(b.elector.leader_changes(), 1);
    assert_eq!(
        b.elector.fence().unwrap().value,
        "b/0",
        "never led: cannot hold"
    );
    assert_eq!(
        a.elector.fence(),
        Some(Fence {
            key: format!("{prefix}:leader"),
            value: "a/1".into()
        })
    );
    assert_eq!(
        get(&mut inspect, &format!("{prefix}:leader"))
            .await
            .as_deref(),
        Some("a/1")
    );

    // Over several leases, a keeps renewing and b never leads.
    let watch_until = StdInstant::now() + LEASE * 3;
    while StdInstant::now() < watch_until {
        assert!(!(a.leads() && b.leads()), "two leaders at once");
        assert!(!b.leads(), "b took over from a healthy leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(a.elector.acting_epoch(), Some(1));

    // a's shutdown releases the lease: b takes it at its next attempt, not after expiry.
    a.stop().await;
    assert_eq!(a.elector.acting_epoch(), None);
    assert_eq!(*a.elector.role().borrow(), Role::Follower { leader: None });
    let takeover = eventually("b leads", SOON, || b.leads()).await;
    println!("takeover after a release: {takeover:?}");
    assert!(
        takeover < LEASE,
        "b took {takeover:?}: it waited for the lease to expire"
    );
    assert_eq!(b.elector.acting_epoch(), Some(2), "one more epoch");
    assert_eq!(b.elector.leader().unwrap().id, "b");
    assert_eq!(b.elector.leader_changes(), 2);
    let info: LeaderInfo = serde_json::from_str(
        &get(&mut inspect, &format!("{prefix}:leader:info"))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!((info.id.as_str(), info.epoch), ("b", 2));
    eventually("a leaves the agents list", SOON, || {
        b.elector.agents().iter().all(|agent| agent.id != "a")
    })
    .await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epochs_grow_by_one_per_new_leader() {
    let server = RedisServer::start();
    let prefix = unique_prefix("epochs");
    for (expected, id) in (1..).zip(["a", "b", "a", "c"]) {
        let agent = Agent::start(&server, &prefix, id);
        eventually("a new leader", SOON, || agent.leads()).await;
        assert_eq!(agent.elector.acting_epoch(), Some(expected));
        assert!(matches!(
            *agent.elector.role().borrow(),
            Role::Leader { epoch, .. } if epoch == expected
        ));
        agent.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_stops_acting_before_its_lease_ends_and_its_writes_are_fenced() {
    let server = RedisServer::start();
    let prefix = unique_prefix("frozen");
    let leader_key = format!("{prefix}:leader");
    let mut inspect = inspector(&server).await;
    let a = Agent::start(&server, &prefix, "a");
    eventually("a leads", SOON, || a.leads()).await;
    let b = Agent::start(&server, &prefix, "b");
    let store_a = Store::open(store_config(&server, &prefix)).await;
    let store_b = Store::open(store_config(&server, &prefix)).await;
    store_a.set_fence(a.elector.fence());
    store_b.set_fence(b.elector.fence());

    // While a leads, its fenced writes go through and b's are dropped.
    store_a.upsert_container(container("c1"));
    store_b.upsert_container(container("from-b"));
    assert!(store_a.flush(SOON).await && store_b.flush(SOON).await);
    assert_eq!(store_b.fenced_drops(), 1);
    let shared = store_b.read_shared().await.unwrap();
    assert_eq!(
        ids(&shared.containers),
        ["c1"],
        "b reads what the leader wrote"
    );

    // Freeze a (as SIGSTOP would): it makes no more calls.
    a.elector.freeze(true);
    let frozen_at = Instant::now();
    let deadline = a.elector.renew_deadline().unwrap();
    // The deadline is two thirds of a lease after a renew that began before now...
    assert!(deadline <= frozen_at + LEASE * 2 / 3);
    // ...so before the lease can expire in Redis: it expires at least PTTL after `asked`.
    let asked = Instant::now();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&leader_key)
        .query_async(&mut inspect)
        .await
        .unwrap();
    let expires_no_sooner_than = asked + Duration::from_millis(u64::try_from(pttl).unwrap());
    assert!(
        deadline < expires_no_sooner_than,
        "acts until {:?} from now, the lease ends no sooner than {:?} from now",
        deadline - frozen_at,
        expires_no_sooner_than - frozen_at
    );
    // Past the deadline it does not act, though its task never noticed anything.
    tokio::time::sleep_until(deadline).await;
    assert_eq!(a.elector.acting_epoch(), None);
    assert!(
        a.elector.role().borrow().is_leader(),
        "the frozen task did not step down by itself"
    );

    // Once the lease expires b takes it, with the next epoch.
    eventually("b leads", SOON, || b.leads()).await;
    assert_eq!(b.elector.acting_epoch(), Some(2));
    assert_eq!(a.elector.acting_epoch(), None);
    store_b.set_fence(b.elector.fence());
    store_b.upsert_container(container("c2"));
    assert!(store_b.flush(SOON).await);

    // a's late writes, still under its old fence, change nothing in Redis.
    store_a.upsert_container(container("c3"));
    store_a.remove_container("c1");
    assert!(store_a.flush(SOON).await);
    assert_eq!(store_a.fenced_drops(), 2);
    let shared = store_b.read_shared().await.unwrap();
    assert_eq!(ids(&shared.containers), ["c1", "c2"]);

    // Thawed, a finds the lease taken and follows b, never acting again.
    a.elector.freeze(false);
    eventually("a follows b", SOON, || {
        *a.elector.role().borrow()
            == Role::Follower {
                leader: b.elector.leader(),
            }
    })
    .await;
    assert_eq!(a.elector.acting_epoch(), None);
    assert!(b.leads());
    assert_eq!(a.elector.leader_changes(), 2);
    a.stop().await;
    b.stop().await;
    assert_eq!(
        get(&mut inspect, &leader_key).await,
        None,
        "b released on shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_the_leader_stops_at_its_deadline_and_leads_again_when_it_returns() {
    let mut server = RedisServer::start();
    let prefix = unique_prefix("down");
    let a = Agent::start(&server, &prefix, "a");
    eventually("a leads", SOON, || a.leads()).await;
    assert_eq!(a.elector.acting_epoch(), Some(1));

    server.stop();
    let stopped_at = Instant::now();
    let deadline = a.elector.renew_deadline().unwrap();
    assert!(deadline <= stopped_at + LEASE * 2 / 3);
    tokio::time::sleep_until(deadline).await;
    assert_eq!(a.elector.acting_epoch(), None, "acting past its deadline");
    eventually("a steps down, leaderless", SOON, || {
        *a.elector.role().borrow() == Role::Follower { leader: None }
    })
    .await;
    assert_eq!(a.elector.leader(), None);

    // Redis comes back empty (no persistence): the epoch counter is gone, yet the next
    // leadership goes above the epoch a saw.
    server.restart();
    eventually("a leads again", SOON, || a.leads()).await;
    assert_eq!(a.elector.acting_epoch(), Some(2));
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_past_its_deadline_takes_its_lease_back_with_the_same_epoch() {
    let server = RedisServer::start();
    let prefix = unique_prefix("back");
    let leader_key = format!("{prefix}:leader");
    let mut inspect = inspector(&server).await;
    let a = Agent::start(&server, &prefix, "a");
    eventually("a leads", SOON, || a.leads()).await;
    // a misses its renews (frozen) while its lease outlives them (as when Redis answered
    // late): it steps down at its deadline, then takes the lease back, keeping its epoch.
    a.elector.freeze(true);
    let extended: i64 = redis::cmd("PEXPIRE")
        .arg(&leader_key)
        .arg(60_000)
        .query_async(&mut inspect)
        .await
        .unwrap();
    assert_eq!(extended, 1);
    let deadline = a.elector.renew_deadline().unwrap();
    tokio::time::sleep_until(deadline + LEASE / 3).await;
    assert_eq!(a.elector.acting_epoch(), None);
    a.elector.freeze(false);
    eventually("a leads again", SOON, || a.leads()).await;
    assert_eq!(a.elector.acting_epoch(), Some(1));
    assert_eq!(
        a.elector.leader_changes(),
        1,
        "the same leader, not a new one"
    );
    assert_eq!(get(&mut inspect, &leader_key).await.as_deref(), Some("a/1"));
    a.stop().await;
    assert_eq!(get(&mut inspect, &leader_key).await, None);
}

#[tokio::test]
async fn an_agent_that_is_no_candidate_never_leads_but_follows_the_leader() {
    let server = RedisServer::start();
    let prefix = "rb:candidate";
    let shutdown = CancellationToken::new();
    let bystander = Agent {
        elector: Elector::start(
            LeaseConfig {
                candidate: false,
                ..config(&server, prefix, "worker-node")
            },
            shutdown.clone(),
        ),
        shutdown,
    };
    // The lease is free for several rounds: still it does not take it.
    tokio::time::sleep(LEASE * 2).await;
    assert!(!bystander.leads());
    let mut conn = inspector(&server).await;
    assert_eq!(get(&mut conn, &format!("{prefix}:leader")).await, None);

    let manager = Agent::start(&server, prefix, "manager-node");
    eventually("the candidate leads", LEASE * 3, || manager.leads()).await;
    eventually("the bystander knows the leader", LEASE * 3, || {
        bystander
            .elector
            .leader()
            .is_some_and(|leader| leader.id == "manager-node")
    })
    .await;
    assert!(!bystander.leads());
    // It heartbeats like any agent.
    eventually("both agents listed", LEASE * 3, || {
        manager.elector.agents().len() == 2
    })
    .await;
    bystander.stop().await;
    manager.stop().await;
}

#[tokio::test]
async fn a_leader_that_may_no_longer_lead_steps_down_and_another_takes_over() {
    let server = RedisServer::start();
    let prefix = "rb:resign";
    // A long lease: a release is told from an expiry by the time b needs to lead.
    let lease = Duration::from_secs(6);
    let start = |id: &str| {
        let shutdown = CancellationToken::new();
        Agent {
            elector: Elector::start(
                LeaseConfig {
                    lease,
                    ..config(&server, prefix, id)
                },
                shutdown.clone(),
            ),
            shutdown,
        }
    };
    let first = start("manager-a");
    eventually("a leads", lease, || first.leads()).await;
    let second = start("manager-b");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!second.leads(), "two leaders");

    // a's engine stops answering: it gives the lease up at its next round, well before the
    // lease would have run out.
    first.elector.set_candidate(false);
    let handed_over = eventually("b leads", lease * 2, || second.leads()).await;
    assert!(!first.leads());
    assert!(
        handed_over < lease - Duration::from_secs(1),
        "b took over only after {handed_over:?}: a did not release the lease (lease {lease:?})"
    );
    eventually("a knows that b leads", lease, || {
        first
            .elector
            .leader()
            .is_some_and(|leader| leader.id == "manager-b")
    })
    .await;
    // a may lead again, and does once b is gone.
    first.elector.set_candidate(true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(second.leads() && !first.leads());
    second.stop().await;
    eventually("a leads again", lease, || first.leads()).await;
    first.stop().await;
}

#[tokio::test]
async fn a_leader_asked_to_step_down_hands_over_and_yields_until_nobody_else_leads() {
    let server = RedisServer::start();
    let prefix = unique_prefix("step-down");
    let first = Agent::start(&server, &prefix, "a");
    eventually("a leads", SOON, || first.leads()).await;
    let second = Agent::start(&server, &prefix, "b");
    assert!(
        !second.elector.step_down(Duration::from_secs(1)),
        "a follower stepped down"
    );

    // A hold far longer than the test: a yields for all of it while another may lead.
    assert!(first.elector.step_down(Duration::from_secs(300)));
    eventually("b leads", SOON, || second.leads()).await;
    assert!(!first.leads());
    eventually("a follows b", SOON, || {
        first
            .elector
            .leader()
            .is_some_and(|leader| leader.id == "b")
    })
    .await;
    // While b lives, a never takes the lead back.
    let watch_until = StdInstant::now() + LEASE * (HOLD_VACANT_LEASES + 2);
    while StdInstant::now() < watch_until {
        assert!(second.leads() && !first.leads(), "a took the lead back");
        tokio::time::sleep(LEASE / 10).await;
    }
    // b gone: a waits for the lease to stay free HOLD_VACANT_LEASES leases, then leads
    // (nobody else would): the hold never leaves the agents without a leader.
    second.stop().await;
    let gone = StdInstant::now();
    eventually("a leads again", SOON, || first.leads()).await;
    assert!(
        gone.elapsed() >= LEASE * HOLD_VACANT_LEASES,
        "a led again {:?} after b left, before the lease stayed free {HOLD_VACANT_LEASES} leases",
        gone.elapsed()
    );
    // Its hold is over: leading again, it does not resign.
    tokio::time::sleep(LEASE * 2).await;
    assert!(
        first.leads(),
        "a resigned again after taking the vacant lease"
    );
    first.stop().await;
}
