use common::queue::{Category, QueueItem, QueueSnapshot};

use super::*;

fn factory() -> PoolConfig {
    PoolConfig {
        connect_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(10),
        max_idle: 8,
    }
}

pub(crate) fn item(name: &str, address: &str, score: f64, category: Category) -> QueueItem {
    QueueItem {
        id: format!("id-{name}"),
        dns_name: name.into(),
        address: address.into(),
        score,
        utilization_category: category,
        in_flight: 0,
        cpu_score: score,
        memory_score: score,
        network_score: score,
        availability_score: score,
        concurrency: 0,
    }
}

#[tokio::test]
async fn sundown_and_init_are_known_but_not_routable() {
    let backends = Backends::new(factory(), 2, SourceKind::Agent);
    let snapshot = QueueSnapshot::new(
        3,
        0,
        vec![
            item("a", "10.0.0.1:8080", 90.0, Category::Low),
            item("b", "10.0.0.2", 50.0, Category::Sundown),
            item("c", "10.0.0.3:8080", 70.0, Category::Init),
            item("d", "", 40.0, Category::High),
        ],
    );
    backends.apply_snapshot(&snapshot, 9999);
    let table = backends.load();
    assert_eq!(table.entries.len(), 4);
    let routable: Vec<_> = table
        .candidates
        .iter()
        .map(|c| c.backend.dns_name.as_str())
        .collect();
    assert_eq!(routable, ["a", "d"]);
    let b = table
        .entries
        .iter()
        .find(|e| e.backend.dns_name == "b")
        .unwrap();
    assert_eq!(
        b.backend.address, "10.0.0.2:9999",
        "TARGET_PORT is appended"
    );
    let d = table
        .entries
        .iter()
        .find(|e| e.backend.dns_name == "d")
        .unwrap();
    assert_eq!(
        d.backend.address, "d:9999",
        "no address: the dns name is dialled"
    );
    assert_eq!(table.seq, 3);
}

#[tokio::test]
async fn backends_keep_their_counters_across_snapshots() {
    let backends = Backends::new(factory(), 2, SourceKind::Agent);
    let first = QueueSnapshot::new(1, 0, vec![item("a", "10.0.0.1:80", 90.0, Category::Low)]);
    backends.apply_snapshot(&first, 80);
    let a = Arc::clone(&backends.load().entries[0].backend);
    a.in_flight.fetch_add(2, Relaxed);
    let second = QueueSnapshot::new(
        2,
        0,
        vec![
            item("a", "10.0.0.1:80", 10.0, Category::Sundown),
            item("b", "10.0.0.2:80", 90.0, Category::Low),
        ],
    );
    backends.apply_snapshot(&second, 80);
    let table = backends.load();
    let again = &table
        .entries
        .iter()
        .find(|e| e.backend.dns_name == "a")
        .unwrap()
        .backend;
    assert!(Arc::ptr_eq(&a, again));
    assert_eq!(again.in_flight(), 2);
}

#[tokio::test]
async fn backends_that_leave_the_table_wake_their_waiters() {
    let backends = Backends::new(factory(), 2, SourceKind::Agent);
    let first = QueueSnapshot::new(
        1,
        0,
        vec![
            item("a", "10.0.0.1:80", 90.0, Category::Low),
            item("b", "10.0.0.2:80", 90.0, Category::Low),
            item("c", "10.0.0.3:80", 90.0, Category::Low),
        ],
    );
    backends.apply_snapshot(&first, 80);
    let backend = |name: &str| {
        Arc::clone(
            &backends
                .load()
                .entries
                .iter()
                .find(|e| e.backend.dns_name == name)
                .unwrap()
                .backend,
        )
    };
    let (a, b, c) = (backend("a"), backend("b"), backend("c"));
    // Waiting on two traffic threads, registered before the removal.
    let waiting = [
        tokio::spawn({
            let a = Arc::clone(&a);
            async move { a.removed(0).await }
        }),
        tokio::spawn({
            let a = Arc::clone(&a);
            async move { a.removed(1).await }
        }),
    ];
    tokio::task::yield_now().await;
    // `a` leaves, `b` stays (SUNDOWN is still in the table), `c` comes back as another
    // container at the same address.
    let second = QueueSnapshot::new(
        2,
        0,
        vec![
            item("b", "10.0.0.2:80", 10.0, Category::Sundown),
            item("c2", "10.0.0.3:80", 90.0, Category::Low),
        ],
    );
    backends.apply_snapshot(&second, 80);
    for waiter in waiting {
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("a waiter of a removed backend was not woken")
            .unwrap();
    }
    assert!(a.is_removed());
    assert!(!b.is_removed());
    assert!(c.is_removed(), "the old container at a reused address left");
    assert!(!backend("c2").is_removed());
    // Already removed: resolves at once; a kept backend does not.
    tokio::time::timeout(Duration::from_secs(1), a.removed(1))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(50), b.removed(0))
            .await
            .is_err()
    );
    // A table replaced wholesale removes everything in it.
    backends.apply_snapshot(&QueueSnapshot::new(3, 0, Vec::new()), 80);
    assert!(b.is_removed());
}

#[test]
fn ejection_backs_off_and_resets() {
    let backend = Backend::new(
        1,
        "x".into(),
        "x".into(),
        "127.0.0.1:1".into(),
        factory(),
        1,
        std::sync::Weak::new(),
    );
    // Building a client needs no runtime; only requests do.
    let backend = backend.unwrap();
    let ejection = Ejection {
        after: 2,
        base: Duration::from_secs(1),
        max: Duration::from_secs(3),
    };
    let second = 1_000_000_000;
    assert!(!backend.connect_failed(0, ejection));
    assert!(backend.connect_failed(0, ejection), "second failure ejects");
    assert!(backend.is_ejected(second / 2));
    assert!(!backend.is_ejected(second + 1));
    // Still failing after the ejection: ejected again, for twice as long.
    assert!(backend.connect_failed(2 * second, ejection));
    assert!(backend.is_ejected(3 * second));
    assert!(!backend.is_ejected(4 * second + 1));
    // The cap.
    assert!(backend.connect_failed(10 * second, ejection));
    assert!(!backend.is_ejected(13 * second + 1));
    backend.connected();
    assert_eq!(backend.consecutive_failures(), 0);
    assert!(!backend.is_ejected(10 * second));
}

#[test]
fn peak_ewma_jumps_up_and_decays_down() {
    let backend = Backend::new(
        1,
        "x".into(),
        "x".into(),
        "127.0.0.1:1".into(),
        factory(),
        1,
        std::sync::Weak::new(),
    )
    .unwrap();
    let decay = Duration::from_secs(10);
    let second = 1_000_000_000;
    backend.observe_latency(Duration::from_millis(10), second, decay);
    assert!((backend.latency_ewma_ms() - 10.0).abs() < 1e-9);
    backend.observe_latency(Duration::from_millis(100), 2 * second, decay);
    assert!(
        (backend.latency_ewma_ms() - 100.0).abs() < 1e-9,
        "peaks are taken at once"
    );
    backend.observe_latency(Duration::from_millis(10), 12 * second, decay);
    let ewma = backend.latency_ewma_ms();
    assert!(
        ewma > 10.0 && ewma < 100.0 * 0.5,
        "decays towards low samples: {ewma}"
    );
    assert!(
        backend.latency_estimate(12 * second, decay) > backend.latency_estimate(40 * second, decay)
    );
}

#[test]
fn status_counts_cover_every_code() {
    let counts = StatusCounts::new();
    counts.record(200);
    counts.record(200);
    counts.record(599);
    counts.record(99);
    counts.record(600);
    assert_eq!(counts.seen().collect::<Vec<_>>(), [(200, 2), (599, 1)]);
}
