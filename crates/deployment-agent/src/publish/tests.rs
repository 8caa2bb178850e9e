use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering},
};

use super::*;

const INTERVAL: Duration = Duration::from_millis(50);

/// A world that is a counter, and the values each publication carried.
#[derive(Clone, Default)]
struct Model {
    world: Arc<AtomicU64>,
    published: Arc<Mutex<Vec<u64>>>,
}

impl Model {
    /// Changes the world and tells the pacer.
    fn change(&self, pacer: &Pacer, urgent: bool) {
        self.world.fetch_add(1, Ordering::SeqCst);
        let model = self.clone();
        pacer.changed(
            || urgent,
            move || {
                let value = model.world.load(Ordering::SeqCst);
                model.published.lock().unwrap().push(value);
            },
        );
    }

    fn published(&self) -> Vec<u64> {
        self.published.lock().unwrap().clone()
    }
}

/// Lets the trailing publication's task run.
async fn wait(duration: Duration) {
    tokio::time::sleep(duration).await;
    tokio::task::yield_now().await;
}

#[tokio::test(start_paused = true)]
async fn a_single_change_is_published_at_once() {
    let (pacer, model) = (Pacer::new(INTERVAL), Model::default());
    model.change(&pacer, false);
    assert_eq!(model.published(), [1], "no wait for the first change");
    wait(INTERVAL * 4).await;
    assert_eq!(model.published(), [1], "nothing more without a change");
    // After a quiet interval the next change is again the leading edge.
    model.change(&pacer, false);
    assert_eq!(model.published(), [1, 2]);
}

#[tokio::test(start_paused = true)]
async fn a_hundred_changes_within_an_interval_are_two_publications_ending_with_the_last_state() {
    let (pacer, model) = (Pacer::new(INTERVAL), Model::default());
    for _ in 0..100 {
        model.change(&pacer, false);
        tokio::time::advance(Duration::from_micros(400)).await;
    }
    assert_eq!(model.published(), [1], "the first at once, the rest wait");
    wait(INTERVAL).await;
    assert_eq!(
        model.published(),
        [1, 100],
        "one trailing publication with the last state"
    );
    wait(INTERVAL * 4).await;
    assert_eq!(model.published().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_steady_stream_is_published_once_per_interval_and_urgent_changes_at_once() {
    let (pacer, model) = (Pacer::new(INTERVAL), Model::default());
    let start = Instant::now();
    // A change every millisecond for one second.
    for _ in 0..1000 {
        model.change(&pacer, false);
        wait(Duration::from_millis(1)).await;
    }
    wait(INTERVAL).await;
    let published = model.published();
    // 1 s / 50 ms, plus the leading edge; timer granularity may add one or two.
    assert!(
        (20..=23).contains(&published.len()),
        "{} publications: {published:?}",
        published.len()
    );
    assert_eq!(published.last(), Some(&1000), "the last state went out");
    assert!(published.windows(2).all(|w| w[0] < w[1]), "in order");
    assert!(start.elapsed() < Duration::from_millis(1200));

    // Within an interval, an urgent change (of the routing set) does not wait.
    wait(INTERVAL * 4).await;
    model.change(&pacer, false);
    let before = model.published().len();
    assert_eq!(model.published().last(), Some(&1001), "leading edge");
    model.change(&pacer, false);
    assert_eq!(model.published().len(), before, "paced");
    model.change(&pacer, true);
    assert_eq!(model.published().len(), before + 1, "urgent: at once");
    assert_eq!(model.published().last(), Some(&1003));
    // The trailing publication that was scheduled still runs (the executor's own check
    // then finds nothing new to publish).
    wait(INTERVAL).await;
    assert_eq!(model.published().len(), before + 2);
}

#[tokio::test(start_paused = true)]
async fn a_zero_interval_publishes_every_change() {
    let (pacer, model) = (Pacer::new(Duration::ZERO), Model::default());
    for _ in 0..10 {
        model.change(&pacer, false);
    }
    assert_eq!(model.published(), (1..=10).collect::<Vec<_>>());
}

#[test]
fn the_json_is_made_once_and_a_received_text_is_kept() {
    let snapshot = QueueSnapshot::new(7, 1_700_000_000_000, Vec::new());
    let published = Published::new(snapshot.clone());
    let first = published.json();
    assert_eq!(
        serde_json::from_str::<QueueSnapshot>(first.as_str()).unwrap(),
        snapshot
    );
    // The same bytes, not a second serialization.
    assert_eq!(first.as_str().as_ptr(), published.json().as_str().as_ptr());
    assert_eq!(published.seq, 7, "reads as the snapshot");

    let text = r#"{"version":1,"seq":7,"epoch":0,"timestamp_ms":1700000000000,"items":[]}"#;
    let received = Published::received(snapshot, Utf8Bytes::from_static(text));
    assert_eq!(received.json().as_str(), text);
}
