//! The store in memory-only mode and against a real `redis-server` per test
//! (`tests/deployment_agent/support/redis.rs`), each test under its own key prefix.

use std::time::{Instant as StdInstant, SystemTime, UNIX_EPOCH};

use common::queue::Category;
use redis::aio::MultiplexedConnection;

use super::*;

use crate::redis_support::{RedisServer, free_port};

/// Generous: flushing a healthy local Redis takes milliseconds.
const FLUSH: Duration = Duration::from_secs(5);
/// What "does not block" means for a call made while Redis is away.
const FAST: Duration = Duration::from_millis(100);

fn unique_prefix(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("rb-test:{test}:{}:{nanos}", std::process::id())
}

pub(crate) fn config(url: Option<&str>, prefix: &str) -> StoreConfig {
    StoreConfig {
        redis_url: url.map(str::to_owned),
        prefix: prefix.to_owned(),
        metrics_history: 5,
        max_events: 10,
    }
}

pub(crate) fn container(id: &str) -> ContainerRecord {
    ContainerRecord {
        worker: Worker {
            id: id.to_owned(),
            name: format!("app-worker-{id}"),
            address: format!("app-worker-{id}:8080"),
            dns_name: format!("app-worker-{id}"),
            core_id: None,
            created_at_ms: 1_700_000_000_000,
        },
        category: Category::Init,
        sundown_since_ms: None,
    }
}

fn point(at_ms: u64) -> MetricPoint {
    MetricPoint {
        at_ms,
        cpu: 0.5,
        memory: 0.25,
        network: 0.125,
        availability: 1.0,
        overall: 70.5,
        in_flight: at_ms % 7,
    }
}

fn event(at_ms: u64, kind: EventKind) -> ScalingEvent {
    ScalingEvent {
        at_ms,
        kind,
        container: Some(format!("c{at_ms}")),
        replicas: 2,
        message: format!("event {at_ms}"),
        epoch: 0,
    }
}

fn at_ms(points: &[MetricPoint]) -> Vec<u64> {
    points.iter().map(|point| point.at_ms).collect()
}

fn event_times(events: &[ScalingEvent]) -> Vec<u64> {
    events.iter().map(|event| event.at_ms).collect()
}

fn ids(store: &Store) -> Vec<String> {
    store
        .containers()
        .into_iter()
        .map(|record| record.worker.id)
        .collect()
}

/// Runs `call` and fails the test if it took [`FAST`] or longer.
fn quick<T>(what: &str, call: impl FnOnce() -> T) -> T {
    let started = StdInstant::now();
    let value = call();
    let took = started.elapsed();
    assert!(took < FAST, "{what} took {took:?} while redis was away");
    value
}

async fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = StdInstant::now() + timeout;
    while !check() {
        assert!(
            StdInstant::now() < deadline,
            "not {what} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A plain connection, to see what the store wrote.
struct Inspector {
    conn: MultiplexedConnection,
    prefix: String,
}

impl Inspector {
    async fn connect(server: &RedisServer, prefix: &str) -> Inspector {
        let client = redis::Client::open(server.url.as_str()).unwrap();
        Inspector {
            conn: client.get_multiplexed_async_connection().await.unwrap(),
            prefix: prefix.to_owned(),
        }
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.prefix)
    }

    async fn query<T: redis::FromRedisValue>(&mut self, command: &mut redis::Cmd) -> T {
        command.query_async(&mut self.conn).await.unwrap()
    }

    async fn exists(&mut self, suffix: &str) -> bool {
        let key = self.key(suffix);
        self.query::<u64>(redis::cmd("EXISTS").arg(key)).await == 1
    }

    async fn members(&mut self) -> Vec<String> {
        let key = self.key("containers");
        let mut members: Vec<String> = self.query(redis::cmd("SMEMBERS").arg(key)).await;
        members.sort();
        members
    }

    async fn hash(&mut self, suffix: &str) -> HashMap<String, String> {
        let key = self.key(suffix);
        self.query(redis::cmd("HGETALL").arg(key)).await
    }

    /// A metrics list, decoded, as stored (newest first).
    async fn metrics(&mut self, id: &str) -> Vec<MetricPoint> {
        let key = self.key(&format!("metrics:{id}"));
        let entries: Vec<String> = self
            .query(redis::cmd("LRANGE").arg(key).arg(0).arg(-1))
            .await;
        entries
            .iter()
            .map(|json| serde_json::from_str(json).unwrap())
            .collect()
    }

    async fn stream_len(&mut self) -> usize {
        let key = self.key("events");
        self.query(redis::cmd("XLEN").arg(key)).await
    }

    async fn save(&mut self) {
        self.query::<()>(&mut redis::cmd("SAVE")).await;
    }

    /// Deletes every key of the test's prefix.
    async fn cleanup(mut self) {
        let pattern = self.key("*");
        let keys: Vec<String> = self.query(redis::cmd("KEYS").arg(pattern)).await;
        if !keys.is_empty() {
            self.query::<()>(redis::cmd("DEL").arg(keys)).await;
        }
        let left: Vec<String> = self.query(redis::cmd("KEYS").arg(self.key("*"))).await;
        assert!(left.is_empty(), "keys left behind: {left:?}");
    }
}

#[tokio::test]
async fn memory_only_keeps_everything_in_memory() {
    let store = Store::open(config(None, "unused")).await;
    let status = store.status();
    assert_eq!(status.backend, "memory");
    assert!(!status.connected);
    assert_eq!(status.resyncs, 0);
    assert_eq!(store.load().await, Persisted::default());

    store.upsert_container(container("b"));
    store.upsert_container(container("a"));
    let mut a = container("a");
    a.category = Category::Low;
    store.upsert_container(a.clone());
    assert_eq!(store.containers(), vec![a.clone(), container("b")]);
    store.remove_container("b");
    assert_eq!(store.containers(), vec![a]);

    let overrides = ConfigOverrides {
        min_replicas: Some(2),
        max_replicas: None,
        default_containers: Some(3),
    };
    store.set_overrides(overrides.clone());
    assert_eq!(store.overrides(), overrides);

    for at in 0..8 {
        store.record_metric("a", point(at));
    }
    assert_eq!(at_ms(&store.metrics("a")), [3, 4, 5, 6, 7]);
    assert!(store.metrics("unknown").is_empty());

    for at in 0..15 {
        store.record_event(event(at, EventKind::ScaleUp));
    }
    assert_eq!(
        event_times(&store.recent_events(100)),
        (5..15).rev().collect::<Vec<_>>()
    );
    assert_eq!(event_times(&store.recent_events(3)), [14, 13, 12]);
    assert!(store.recent_events(0).is_empty());

    store.remove_container("a");
    assert!(store.containers().is_empty());
    assert!(store.metrics("a").is_empty());
    assert!(store.flush(Duration::from_millis(100)).await);
    assert!(!store.status().connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_round_trips_through_redis() {
    let server = RedisServer::start();
    let prefix = unique_prefix("round-trip");
    let store = Store::open(config(Some(&server.url), &prefix)).await;
    assert_eq!(store.load().await, Persisted::default());
    assert_eq!(store.status().backend, "redis");

    let mut a = container("a");
    a.worker.core_id = Some(3);
    a.category = Category::Sundown;
    a.sundown_since_ms = Some(1_700_000_001_000);
    let b = container("b");
    store.upsert_container(b.clone());
    store.upsert_container(a.clone());
    let overrides = ConfigOverrides {
        min_replicas: Some(2),
        max_replicas: Some(8),
        default_containers: None,
    };
    store.set_overrides(overrides.clone());
    let points: Vec<_> = (0..3).map(point).collect();
    for point in &points {
        store.record_metric("a", point.clone());
    }
    let kinds = [
        EventKind::Started,
        EventKind::Created,
        EventKind::Ready,
        EventKind::ScaleUp,
    ];
    let events: Vec<_> = kinds
        .iter()
        .enumerate()
        .map(|(at, kind)| event(at as u64, *kind))
        .collect();
    for event in &events {
        store.record_event(event.clone());
    }
    assert!(store.flush(FLUSH).await);
    assert!(store.status().connected);
    assert_eq!(store.status().resyncs, 0);

    // The documented layout.
    let mut redis = Inspector::connect(&server, &prefix).await;
    assert_eq!(redis.members().await, ["a", "b"]);
    let hash = redis.hash("container:a").await;
    assert_eq!(hash["category"], "SUNDOWN");
    assert_eq!(hash["core_id"], "3");
    assert_eq!(hash["sundown_since_ms"], "1700000001000");
    assert_eq!(hash["address"], "app-worker-a:8080");
    let hash = redis.hash("container:b").await;
    assert_eq!(hash["category"], "INIT");
    assert!(!hash.contains_key("core_id") && !hash.contains_key("sundown_since_ms"));
    let config_hash = redis.hash("config").await;
    assert_eq!(
        config_hash,
        HashMap::from([
            ("min_replicas".to_owned(), "2".to_owned()),
            ("max_replicas".to_owned(), "8".to_owned()),
        ])
    );
    assert_eq!(at_ms(&redis.metrics("a").await), [2, 1, 0], "newest first");
    assert_eq!(redis.stream_len().await, 4);

    // A new process on the same Redis and prefix.
    let again = Store::open(config(Some(&server.url), &prefix)).await;
    let persisted = again.load().await;
    assert_eq!(persisted.containers, vec![a.clone(), b.clone()]);
    assert_eq!(persisted.overrides, overrides);
    assert_eq!(persisted.events, events);
    assert_eq!(again.containers(), vec![a, b]);
    assert_eq!(again.overrides(), overrides);
    assert_eq!(again.metrics("a"), points);
    assert_eq!(event_times(&again.recent_events(2)), [3, 2]);
    // What the caller's reconciliation finds gone is removed from Redis too.
    again.remove_container("b");
    assert!(again.flush(FLUSH).await);
    assert_eq!(redis.members().await, ["a"]);

    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_stay_bounded_in_memory_and_in_redis() {
    let server = RedisServer::start();
    let prefix = unique_prefix("bounds");
    let store = Store::open(StoreConfig {
        metrics_history: 3,
        max_events: 10,
        ..config(Some(&server.url), &prefix)
    })
    .await;
    store.load().await;
    store.upsert_container(container("a"));
    for at in 0..10 {
        store.record_metric("a", point(at));
    }
    for at in 0..300 {
        store.record_event(event(at, EventKind::ScaleDown));
    }
    assert_eq!(at_ms(&store.metrics("a")), [7, 8, 9]);
    assert_eq!(
        event_times(&store.recent_events(1000)),
        (290..300).rev().collect::<Vec<_>>()
    );
    assert!(store.flush(FLUSH).await);

    let mut redis = Inspector::connect(&server, &prefix).await;
    assert_eq!(at_ms(&redis.metrics("a").await), [9, 8, 7]);
    // `MAXLEN ~` trims whole stream nodes (at most 100 entries each by default).
    let stream_len = redis.stream_len().await;
    assert!(
        (10..=110).contains(&stream_len),
        "stream holds {stream_len} events"
    );

    let persisted = Store::open(StoreConfig {
        metrics_history: 3,
        max_events: 10,
        ..config(Some(&server.url), &prefix)
    })
    .await
    .load()
    .await;
    assert_eq!(
        event_times(&persisted.events),
        (290..300).collect::<Vec<_>>()
    );

    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_container_deletes_its_hash_member_and_metrics() {
    let server = RedisServer::start();
    let prefix = unique_prefix("remove");
    let store = Store::open(config(Some(&server.url), &prefix)).await;
    store.load().await;
    for id in ["a", "b"] {
        store.upsert_container(container(id));
        store.record_metric(id, point(1));
    }
    assert!(store.flush(FLUSH).await);
    let mut redis = Inspector::connect(&server, &prefix).await;
    assert!(redis.exists("container:a").await && redis.exists("metrics:a").await);

    store.remove_container("a");
    assert_eq!(ids(&store), ["b"]);
    assert!(store.metrics("a").is_empty());
    assert!(store.flush(FLUSH).await);
    assert!(!redis.exists("container:a").await);
    assert!(!redis.exists("metrics:a").await);
    assert_eq!(redis.members().await, ["b"]);
    assert!(redis.exists("container:b").await && redis.exists("metrics:b").await);

    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_from_memory_while_redis_is_down_and_resyncs_when_it_returns() {
    let mut server = RedisServer::start();
    let prefix = unique_prefix("outage");
    let store = Store::open(config(Some(&server.url), &prefix)).await;
    store.load().await;
    store.upsert_container(container("a"));
    store.upsert_container(container("b"));
    store.record_metric("a", point(1));
    store.set_overrides(ConfigOverrides {
        min_replicas: Some(1),
        ..ConfigOverrides::default()
    });
    assert!(store.flush(FLUSH).await);
    // Snapshot to disk so the restarted server comes back with `a` and `b`.
    let mut redis = Inspector::connect(&server, &prefix).await;
    redis.save().await;
    drop(redis);

    server.stop();
    let overrides = ConfigOverrides {
        min_replicas: Some(2),
        max_replicas: Some(6),
        default_containers: None,
    };
    quick("upsert", || store.upsert_container(container("c")));
    quick("remove", || store.remove_container("a"));
    quick("set_overrides", || store.set_overrides(overrides.clone()));
    quick("record_event", || {
        store.record_event(event(1, EventKind::Died));
    });
    // More than the writer's channel holds.
    for at in 0..3000 {
        quick("record_metric", || store.record_metric("c", point(at)));
    }
    assert_eq!(quick("containers", || ids(&store)), ["b", "c"]);
    assert_eq!(quick("overrides", || store.overrides()), overrides);
    eventually("disconnected", Duration::from_secs(5), || {
        !store.status().connected
    })
    .await;
    quick("upsert after the loss was seen", || {
        store.upsert_container(container("d"));
    });
    quick("remove after the loss was seen", || {
        store.remove_container("d");
    });
    assert!(!store.flush(Duration::from_millis(300)).await);

    server.restart();
    let mut redis = Inspector::connect(&server, &prefix).await;
    assert_eq!(redis.members().await, ["a", "b"], "the snapshot came back");
    eventually("resynced", Duration::from_secs(10), || {
        let status = store.status();
        status.connected && status.resyncs >= 1
    })
    .await;
    assert!(store.flush(FLUSH).await);
    assert_eq!(redis.members().await, ["b", "c"]);
    assert!(!redis.exists("container:a").await);
    assert!(!redis.exists("metrics:a").await);
    assert_eq!(redis.hash("container:c").await["id"], "c");
    assert_eq!(
        at_ms(&redis.metrics("c").await),
        [2999, 2998, 2997, 2996, 2995]
    );
    assert_eq!(
        redis.hash("config").await,
        HashMap::from([
            ("min_replicas".to_owned(), "2".to_owned()),
            ("max_replicas".to_owned(), "6".to_owned()),
        ])
    );

    // Back to incremental writes.
    store.upsert_container(container("e"));
    assert!(store.flush(FLUSH).await);
    assert_eq!(redis.members().await, ["b", "c", "e"]);

    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_times_out_and_the_store_resyncs_after_it_resumes() {
    let server = RedisServer::start();
    let prefix = unique_prefix("hung");
    let store = Store::open(config(Some(&server.url), &prefix)).await;
    store.load().await;
    store.upsert_container(container("a"));
    assert!(store.flush(FLUSH).await);

    server.pause();
    for n in 0..20 {
        quick("upsert", || {
            store.upsert_container(container(&format!("p{n:02}")))
        });
    }
    eventually("disconnected", Duration::from_secs(5), || {
        !store.status().connected
    })
    .await;
    quick("remove", || store.remove_container("a"));

    server.resume();
    eventually("resynced", Duration::from_secs(10), || {
        let status = store.status();
        status.connected && status.resyncs >= 1
    })
    .await;
    assert!(store.flush(FLUSH).await);
    let mut redis = Inspector::connect(&server, &prefix).await;
    let expected: Vec<_> = (0..20).map(|n| format!("p{n:02}")).collect();
    assert_eq!(redis.members().await, expected);
    assert!(!redis.exists("container:a").await);

    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_when_redis_is_unreachable_and_connects_later() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let prefix = unique_prefix("late");

    let started = StdInstant::now();
    let store = Store::open(config(Some(&url), &prefix)).await;
    assert!(
        started.elapsed() < FAST,
        "open took {:?}",
        started.elapsed()
    );
    assert_eq!(store.load().await, Persisted::default());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "load took {:?}",
        started.elapsed()
    );
    let status = store.status();
    assert_eq!(status.backend, "redis");
    assert!(!status.connected);
    quick("upsert", || store.upsert_container(container("a")));
    quick("record_metric", || store.record_metric("a", point(1)));

    let server = RedisServer::start_on(port);
    eventually("connected", Duration::from_secs(10), || {
        store.status().connected
    })
    .await;
    assert!(store.flush(FLUSH).await);
    assert!(
        store.status().resyncs >= 1,
        "the upsert made while down came through a resync"
    );
    let mut redis = Inspector::connect(&server, &prefix).await;
    assert_eq!(redis.members().await, ["a"]);
    assert_eq!(at_ms(&redis.metrics("a").await), [1]);
    assert!(
        !redis.exists("config").await,
        "overrides never loaded or set are not written"
    );

    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_removes_unknown_containers_but_keeps_overrides_it_never_knew() {
    let server = RedisServer::start();
    let prefix = unique_prefix("resync");
    let mut redis = Inspector::connect(&server, &prefix).await;
    let ghost = container_fields(&container("ghost"));
    redis
        .query::<()>(
            redis::cmd("HSET")
                .arg(redis.key("container:ghost"))
                .arg(&ghost),
        )
        .await;
    redis
        .query::<()>(redis::cmd("SADD").arg(redis.key("containers")).arg("ghost"))
        .await;
    redis
        .query::<()>(
            redis::cmd("RPUSH")
                .arg(redis.key("metrics:ghost"))
                .arg("{}"),
        )
        .await;
    redis
        .query::<()>(
            redis::cmd("HSET")
                .arg(redis.key("config"))
                .arg("min_replicas")
                .arg(4),
        )
        .await;

    // No `load`: the store never learns the persisted overrides.
    let store = Store::open(config(Some(&server.url), &prefix)).await;
    store.upsert_container(container("a"));
    assert!(store.flush(FLUSH).await);
    assert_eq!(redis.members().await, ["a", "ghost"], "no resync yet");

    store.shared.dirty.store(true, Ordering::SeqCst);
    assert!(store.flush(FLUSH).await);
    assert_eq!(store.status().resyncs, 1);
    assert_eq!(redis.members().await, ["a"]);
    assert!(!redis.exists("container:ghost").await);
    assert!(!redis.exists("metrics:ghost").await);
    assert_eq!(redis.hash("config").await["min_replicas"], "4");

    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_writes_apply_only_while_the_fence_holds() {
    let server = RedisServer::start();
    let prefix = unique_prefix("fence");
    let mut redis = Inspector::connect(&server, &prefix).await;
    let leader = redis.key("leader");
    redis
        .query::<()>(redis::cmd("SET").arg(&leader).arg("a/2"))
        .await;
    let store = Store::open(config(Some(&server.url), &prefix)).await;
    store.set_fence(Some(Fence {
        key: leader.clone(),
        value: "a/2".into(),
    }));
    let overrides = ConfigOverrides {
        min_replicas: Some(2),
        ..ConfigOverrides::default()
    };
    store.upsert_container(container("a"));
    store.upsert_container(container("b"));
    store.set_overrides(overrides.clone());
    assert!(store.flush(FLUSH).await);
    assert_eq!(redis.members().await, ["a", "b"]);
    assert_eq!(redis.hash("config").await["min_replicas"], "2");
    assert_eq!(store.fenced_drops(), 0);

    // Someone else leads now: no desired-state write of this store applies, not even a
    // resync; metrics and events still do.
    redis
        .query::<()>(redis::cmd("SET").arg(&leader).arg("b/3"))
        .await;
    store.upsert_container(container("c"));
    store.remove_container("a");
    store.set_overrides(ConfigOverrides::default());
    store.record_metric("b", point(1));
    store.record_event(event(1, EventKind::LeaderElected));
    assert!(store.flush(FLUSH).await);
    assert_eq!(store.fenced_drops(), 3);
    assert_eq!(redis.members().await, ["a", "b"]);
    assert!(!redis.exists("container:c").await);
    assert_eq!(redis.hash("config").await["min_replicas"], "2");
    assert_eq!(at_ms(&redis.metrics("b").await), [1]);
    assert_eq!(redis.stream_len().await, 1);
    store.shared.dirty.store(true, Ordering::SeqCst);
    assert!(store.flush(FLUSH).await);
    assert_eq!(store.status().resyncs, 1);
    assert_eq!(
        redis.members().await,
        ["a", "b"],
        "the resync was fenced too"
    );
    assert!(store.fenced_drops() > 3);
    // Memory is this store's own: it kept every change.
    assert_eq!(ids(&store), ["b", "c"]);

    // Without a lease at all the fence does not hold either.
    redis.query::<()>(redis::cmd("DEL").arg(&leader)).await;
    store.upsert_container(container("d"));
    assert!(store.flush(FLUSH).await);
    assert!(!redis.exists("container:d").await);

    // Unfenced (one agent alone), writes apply as always.
    store.set_fence(None);
    store.upsert_container(container("e"));
    assert!(store.flush(FLUSH).await);
    assert!(redis.exists("container:e").await);

    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_shared_returns_the_registry_and_overrides_redis_holds() {
    let memory = Store::open(config(None, "unused")).await;
    assert_eq!(memory.read_shared().await, None);
    let nowhere = Store::open(config(
        Some(&format!("redis://127.0.0.1:{}/", free_port())),
        &unique_prefix("nowhere"),
    ))
    .await;
    let started = StdInstant::now();
    assert_eq!(nowhere.read_shared().await, None);
    assert!(started.elapsed() < FAST, "read_shared waited for a link");

    let server = RedisServer::start();
    let prefix = unique_prefix("shared");
    let writer = Store::open(config(Some(&server.url), &prefix)).await;
    let reader = Store::open(config(Some(&server.url), &prefix)).await;
    let mut b = container("b");
    b.category = Category::Sundown;
    b.sundown_since_ms = Some(5);
    b.worker.core_id = Some(1);
    let overrides = ConfigOverrides {
        min_replicas: Some(1),
        max_replicas: Some(4),
        default_containers: None,
    };
    writer.upsert_container(b.clone());
    writer.upsert_container(container("a"));
    writer.set_overrides(overrides.clone());
    assert!(writer.flush(FLUSH).await);
    eventually("the reader connected", FLUSH, || reader.status().connected).await;
    assert_eq!(
        reader.read_shared().await,
        Some(DesiredState {
            containers: vec![container("a"), b],
            overrides,
        })
    );
    assert!(reader.containers().is_empty(), "a read changes nothing");

    // A follower mirrors it into memory without writing back (its fence never holds).
    reader.set_fence(Some(Fence {
        key: format!("{prefix}:leader"),
        value: "follower/0".into(),
    }));
    reader.record_metric("gone", point(1));
    let shared = reader.read_shared().await.unwrap();
    reader.mirror(&shared);
    assert_eq!(reader.containers(), shared.containers);
    assert_eq!(reader.overrides(), shared.overrides);
    assert!(reader.metrics("gone").is_empty());
    assert!(reader.flush(FLUSH).await);
    assert_eq!(reader.fenced_drops(), 0, "mirroring writes nothing");

    Inspector::connect(&server, &prefix).await.cleanup().await;
}

#[test]
fn container_hash_fields_round_trip() {
    let mut record = container("x");
    assert_eq!(
        container_from_fields(&fields(&record)),
        Some(record.clone())
    );
    record.worker.core_id = Some(7);
    record.category = Category::High;
    record.sundown_since_ms = Some(42);
    assert_eq!(
        container_from_fields(&fields(&record)),
        Some(record.clone())
    );

    let mut broken = fields(&record);
    broken.insert("core_id".to_owned(), "seven".to_owned());
    assert_eq!(container_from_fields(&broken), None);
    let mut broken = fields(&record);
    broken.insert("category".to_owned(), "BUSY".to_owned());
    assert_eq!(container_from_fields(&broken), None);
    let mut broken = fields(&record);
    broken.remove("address");
    assert_eq!(container_from_fields(&broken), None);

    fn fields(record: &ContainerRecord) -> HashMap<String, String> {
        container_fields(record)
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect()
    }
}

#[test]
fn a_container_record_serializes_as_one_flat_object() {
    let mut record = container("x");
    record.worker.core_id = Some(3);
    record.sundown_since_ms = Some(42);
    let json = serde_json::to_string(&record).unwrap();
    assert_eq!(
        json,
        r#"{"id":"x","name":"app-worker-x","address":"app-worker-x:8080","dns_name":"app-worker-x","core_id":3,"created_at_ms":1700000000000,"category":"INIT","sundown_since_ms":42}"#
    );
    assert_eq!(
        serde_json::from_str::<ContainerRecord>(&json).unwrap(),
        record
    );

    // Absent optional fields read as unset, as before the fields were shared with `Worker`.
    let bare = r#"{"id":"x","name":"app-worker-x","address":"app-worker-x:8080","dns_name":"app-worker-x","created_at_ms":1700000000000,"category":"INIT"}"#;
    assert_eq!(
        serde_json::from_str::<ContainerRecord>(bare).unwrap(),
        container("x")
    );
}

#[test]
fn events_serialize_in_snake_case() {
    let json = serde_json::to_value(event(1, EventKind::ConfigChanged)).unwrap();
    assert_eq!(json["kind"], "config_changed");
}
