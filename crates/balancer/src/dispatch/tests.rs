use std::time::Duration;

use common::queue::{Category, QueueSnapshot};
use tokio::sync::mpsc;

use super::*;
use crate::{
    backend::{Backends, Dispatch, SourceKind},
    upstream::PoolConfig,
};

/// `n` backends taking `concurrency` requests each.
fn limited(n: usize, concurrency: u32, queue: QueueSettings, threshold: f64) -> Backends {
    let backends = Backends::with_dispatch(
        PoolConfig {
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_idle: 1,
        },
        1,
        SourceKind::Agent,
        Dispatch {
            queue,
            clock: crate::backend::Clock::new(),
            threshold,
        },
    );
    set(&backends, n, concurrency, 1);
    backends
}

fn set(backends: &Backends, n: usize, concurrency: u32, seq: u64) {
    let items = (0..n)
        .map(|i| {
            let mut item = crate::backend::tests::item(
                &format!("b{i}"),
                &format!("10.0.0.{i}:80"),
                50.0,
                Category::Low,
            );
            item.concurrency = concurrency;
            item
        })
        .collect();
    backends.apply_snapshot(&QueueSnapshot::new(seq, 0, items), 80);
}

fn ask(seconds: f64) -> Ask {
    Ask {
        work_us: (seconds * 1e6) as u64,
        bytes: 100,
    }
}

/// Every slot of every backend, taken.
fn fill(backends: &Backends) -> Vec<InFlight> {
    let table = backends.load_full();
    let mut held = Vec::new();
    for candidate in &table.candidates {
        while let Some(in_flight) = InFlight::reserve(&candidate.backend, 0) {
            held.push(in_flight);
        }
    }
    held
}

/// Starts a request of `seconds` that waits for a slot; its grant (or error) comes back on
/// `granted` with its label.
fn waiter(
    backends: &Backends,
    label: &'static str,
    seconds: f64,
    granted: &mpsc::UnboundedSender<(&'static str, Result<InFlight, ProxyError>)>,
) -> tokio::task::JoinHandle<()> {
    let backends = backends.clone();
    let granted = granted.clone();
    tokio::spawn(async move {
        let pump = || backends.pump();
        let result = backends
            .queue()
            .wait(ask(seconds), &Tried::default(), backends.now(), pump)
            .await;
        let _ = granted.send((label, result));
    })
}

async fn until_waiting(backends: &Backends, n: u64) {
    for _ in 0..500 {
        if backends.queue().view().waiting == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("{n} requests never waited: {:?}", backends.queue().view());
}

#[tokio::test]
async fn freed_slots_go_to_the_cheapest_waiting_request_first() {
    let backends = limited(1, 1, QueueSettings::default(), 100.0);
    let mut held = fill(&backends);
    assert_eq!(held.len(), 1, "one slot");
    let (tx, mut rx) = mpsc::unbounded_channel();
    for (label, seconds) in [("5s", 5.0), ("1s", 1.0), ("3s", 3.0), ("2s", 2.0)] {
        waiter(&backends, label, seconds, &tx);
        until_waiting(&backends, backends.queue().view().waiting + 1).await;
    }
    let view = backends.queue().view();
    assert_eq!(view.waiting, 4);
    assert!((view.work_seconds - 11.0).abs() < 1e-6, "{view:?}");
    assert_eq!(view.bytes, 400);

    let mut order = Vec::new();
    while let Some(slot) = held.pop() {
        drop(slot);
        if order.len() == 4 {
            break;
        }
        let (label, result) = rx.recv().await.unwrap();
        order.push(label);
        let in_flight = result.unwrap();
        assert_eq!(in_flight.backend().in_flight(), 1, "the slot is reserved");
        held.push(in_flight);
    }
    assert_eq!(order, ["1s", "2s", "3s", "5s"]);
    assert_eq!(backends.queue().view(), QueueView::default());
    let counters = &backends.queue().counters;
    assert_eq!(counters.queued.load(Relaxed), 4);
    assert_eq!(counters.granted.load(Relaxed), 4);
    assert_eq!(counters.overdue.load(Relaxed), 0);
}

#[tokio::test]
async fn an_overdue_request_goes_before_cheaper_ones() {
    let settings = QueueSettings {
        delay_factor: 1.0,
        ..QueueSettings::default()
    };
    let backends = limited(1, 1, settings, 100.0);
    let held = fill(&backends);
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Overdue 60 ms after it arrived (1 x its 60 ms).
    waiter(&backends, "long", 0.06, &tx);
    until_waiting(&backends, 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Cheaper, and not overdue for another 50 ms (MIN_DELAY).
    waiter(&backends, "short", 0.001, &tx);
    until_waiting(&backends, 2).await;
    drop(held);
    let (first, slot) = rx.recv().await.unwrap();
    assert_eq!(first, "long", "the overdue request goes first");
    drop(slot);
    let (second, _slot) = rx.recv().await.unwrap();
    assert_eq!(second, "short");
    assert_eq!(backends.queue().counters.overdue.load(Relaxed), 1);
}

#[tokio::test]
async fn without_aging_a_long_request_is_passed_over() {
    let backends = limited(1, 1, QueueSettings::default(), 100.0);
    let held = fill(&backends);
    let (tx, mut rx) = mpsc::unbounded_channel();
    waiter(&backends, "long", 10.0, &tx);
    until_waiting(&backends, 1).await;
    waiter(&backends, "short", 0.001, &tx);
    until_waiting(&backends, 2).await;
    drop(held);
    let (first, _slot) = rx.recv().await.unwrap();
    assert_eq!(first, "short");
}

#[tokio::test]
async fn the_queue_is_bounded_in_requests_and_bytes() {
    let settings = QueueSettings {
        capacity: 2,
        max_bytes: 250,
        ..QueueSettings::default()
    };
    let backends = limited(1, 1, settings, 100.0);
    let _held = fill(&backends);
    let (tx, mut rx) = mpsc::unbounded_channel();
    waiter(&backends, "a", 1.0, &tx);
    waiter(&backends, "b", 1.0, &tx);
    until_waiting(&backends, 2).await;
    // A third: over the count.
    waiter(&backends, "c", 1.0, &tx);
    let (label, result) = rx.recv().await.unwrap();
    assert_eq!(label, "c");
    assert!(matches!(result, Err(ProxyError::SlotsFull)), "{result:?}");

    // Over the bytes: 2 x 100 held, 100 more would make 300 > 250.
    let settings = QueueSettings {
        capacity: 10,
        max_bytes: 250,
        ..QueueSettings::default()
    };
    let backends = limited(1, 1, settings, 100.0);
    let _held = fill(&backends);
    waiter(&backends, "d", 1.0, &tx);
    waiter(&backends, "e", 1.0, &tx);
    until_waiting(&backends, 2).await;
    waiter(&backends, "f", 1.0, &tx);
    let (label, result) = rx.recv().await.unwrap();
    assert_eq!(label, "f");
    assert!(matches!(result, Err(ProxyError::SlotsFull)), "{result:?}");
    assert_eq!(backends.queue().counters.full.load(Relaxed), 1);
}

#[tokio::test]
async fn a_request_waits_at_most_the_queue_timeout() {
    let settings = QueueSettings {
        timeout: Duration::from_millis(200),
        ..QueueSettings::default()
    };
    let backends = limited(1, 1, settings, 100.0);
    let _held = fill(&backends);
    let (tx, mut rx) = mpsc::unbounded_channel();
    waiter(&backends, "late", 1.0, &tx);
    let (_, result) = rx.recv().await.unwrap();
    match result {
        Err(error @ ProxyError::SlotTimeout(_)) => {
            assert_eq!(error.status(), http::StatusCode::SERVICE_UNAVAILABLE);
            assert!(error.retry_after(), "answered with Retry-After");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(backends.queue().view().waiting, 0);
    assert_eq!(backends.queue().counters.timeouts.load(Relaxed), 1);
}

#[tokio::test]
async fn a_request_whose_client_left_leaves_the_queue() {
    let backends = limited(1, 1, QueueSettings::default(), 100.0);
    let held = fill(&backends);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let gone = waiter(&backends, "gone", 0.001, &tx);
    until_waiting(&backends, 1).await;
    waiter(&backends, "stays", 5.0, &tx);
    until_waiting(&backends, 2).await;
    // The cheaper request's future is dropped, as when its client disconnects.
    gone.abort();
    until_waiting(&backends, 1).await;
    assert_eq!(backends.queue().counters.cancelled.load(Relaxed), 1);
    drop(held);
    let (label, slot) = rx.recv().await.unwrap();
    assert_eq!(label, "stays");
    assert_eq!(slot.unwrap().backend().completed.load(Relaxed), 1);
}

#[tokio::test]
async fn a_new_table_with_room_lets_waiting_requests_go() {
    let backends = limited(1, 1, QueueSettings::default(), 100.0);
    let _held = fill(&backends);
    let (tx, mut rx) = mpsc::unbounded_channel();
    waiter(&backends, "a", 1.0, &tx);
    waiter(&backends, "b", 2.0, &tx);
    until_waiting(&backends, 2).await;
    // The limit grows to 2 and a second backend joins: two slots free.
    set(&backends, 2, 2, 2);
    let mut granted = [rx.recv().await.unwrap(), rx.recv().await.unwrap()];
    granted.sort_by_key(|(label, _)| *label);
    let backends_used: Vec<String> = granted
        .iter()
        .map(|(_, slot)| slot.as_ref().unwrap().backend().dns_name.clone())
        .collect();
    assert_eq!(granted[0].0, "a");
    assert_eq!(granted[1].0, "b");
    // The cheaper first, each to the least work per slot: `a` to the idle b1, then `b` to
    // b0 (one request of no known work) rather than b1 (one of 1 s).
    assert_eq!(backends_used, ["b1", "b0"]);
}

#[test]
fn the_threshold_scales_each_limit_keeping_one_slot() {
    for (concurrency, threshold, slots) in [(4, 100.0, 4), (4, 80.0, 3), (1, 50.0, 1), (0, 80.0, 0)]
    {
        let backends = limited(1, concurrency, QueueSettings::default(), threshold);
        let table = backends.load_full();
        assert_eq!(
            table.candidates[0].backend.slots(),
            slots,
            "{concurrency} at {threshold} %"
        );
        assert_eq!(table.limited, slots != 0);
        if slots != 0 {
            assert_eq!(
                fill(&backends).len() as u64,
                slots,
                "reserved up to the slots"
            );
        }
    }
}
