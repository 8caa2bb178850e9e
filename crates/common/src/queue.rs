//! The live queue: what the deployment agent publishes (WebSocket, gRPC) and the balancer
//! routes on. Every item keeps the original prototype's fields (`dns_name`, `score`,
//! `utilization_category`) so existing subscribers keep working.

use serde::{Deserialize, Serialize};

/// Version of the snapshot schema; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// How loaded a container is, as the agent classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Category {
    /// Starting, or too few samples to judge.
    #[serde(rename = "INIT")]
    Init,
    /// Low utilisation.
    #[serde(rename = "LU")]
    Low,
    /// Medium utilisation.
    #[serde(rename = "MU")]
    Medium,
    /// High utilisation.
    #[serde(rename = "HU")]
    High,
    /// Chosen for removal: receives no new requests, drains, then stops.
    #[serde(rename = "SUNDOWN")]
    Sundown,
}

impl Category {
    /// The wire name (`INIT`, `LU`, `MU`, `HU`, `SUNDOWN`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Init => "INIT",
            Self::Low => "LU",
            Self::Medium => "MU",
            Self::High => "HU",
            Self::Sundown => "SUNDOWN",
        }
    }

    /// Whether a balancer may send new requests to a container of this category.
    pub fn accepts_new_requests(self) -> bool {
        !matches!(self, Self::Sundown | Self::Init)
    }
}

impl std::fmt::Display for Category {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One container in the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueItem {
    /// The container's id.
    pub id: String,
    /// The name a balancer uses for the container (container name on the stack network).
    pub dns_name: String,
    /// `host:port` a balancer dials.
    pub address: String,
    /// Overall score 0-100, 100 = idle. Routing weight.
    pub score: f64,
    pub utilization_category: Category,
    /// Requests in flight on the container, as last observed.
    pub in_flight: u64,
    pub cpu_score: f64,
    pub memory_score: f64,
    pub network_score: f64,
    pub availability_score: f64,
    /// Requests a balancer sends the container at once; 0 = unlimited. Requests beyond it wait
    /// in the balancer's queue for a free slot. Absent in older snapshots, which read as 0.
    #[serde(default)]
    pub concurrency: u32,
}

/// A full, versioned picture of the queue. Subscribers replace their view with each one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// [`SCHEMA_VERSION`].
    pub version: u32,
    /// Increases with every published change; lets a subscriber drop stale snapshots.
    /// Restarts when another agent takes the lead (`epoch` grows then).
    pub seq: u64,
    /// The fencing epoch of the agent that led when the snapshot was taken (0 for an agent
    /// that leads alone); followers relay the leader's snapshots unchanged. Subscribers order
    /// snapshots by `(epoch, seq)`. Absent in older snapshots, which read as 0.
    #[serde(default)]
    pub epoch: u64,
    /// Unix time in milliseconds when the snapshot was taken.
    pub timestamp_ms: u64,
    /// Sorted best first (highest score), SUNDOWN items last.
    pub items: Vec<QueueItem>,
}

impl QueueSnapshot {
    /// A snapshot of `items` at epoch 0, put in publishing order.
    pub fn new(seq: u64, timestamp_ms: u64, mut items: Vec<QueueItem>) -> Self {
        sort_items(&mut items);
        Self {
            version: SCHEMA_VERSION,
            seq,
            epoch: 0,
            timestamp_ms,
            items,
        }
    }

    /// The same snapshot stamped with the leader's `epoch`.
    #[must_use]
    pub fn with_epoch(self, epoch: u64) -> Self {
        Self { epoch, ..self }
    }

    /// The order subscribers apply snapshots in: a snapshot is newer when this is greater.
    pub fn position(&self) -> (u64, u64) {
        (self.epoch, self.seq)
    }
}

/// Publishing order: SUNDOWN last, then by score (best first), then by id for stability.
pub fn sort_items(items: &mut [QueueItem]) {
    items.sort_by(|a, b| {
        let sundown = |item: &QueueItem| item.utilization_category == Category::Sundown;
        sundown(a)
            .cmp(&sundown(b))
            .then(b.score.total_cmp(&a.score))
            .then_with(|| a.id.cmp(&b.id))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, score: f64, category: Category) -> QueueItem {
        QueueItem {
            id: id.into(),
            dns_name: format!("app-worker-{id}"),
            address: format!("app-worker-{id}:8080"),
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

    #[test]
    fn snapshot_sorts_by_score_with_sundown_last() {
        let snapshot = QueueSnapshot::new(
            7,
            0,
            vec![
                item("a", 90.0, Category::Sundown),
                item("b", 40.0, Category::High),
                item("c", 80.0, Category::Low),
                item("d", 60.0, Category::Medium),
            ],
        );
        let order: Vec<_> = snapshot.items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(order, ["c", "d", "b", "a"]);
        assert_eq!(snapshot.version, SCHEMA_VERSION);
    }

    #[test]
    fn wire_format_keeps_the_original_field_names() {
        let json = serde_json::to_value(item("x", 75.5, Category::Medium)).unwrap();
        assert_eq!(json["dns_name"], "app-worker-x");
        assert_eq!(json["score"], 75.5);
        assert_eq!(json["utilization_category"], "MU");
        let back: QueueItem = serde_json::from_value(json).unwrap();
        assert_eq!(back.utilization_category, Category::Medium);
    }

    #[test]
    fn concurrency_defaults_to_unlimited_in_older_snapshots() {
        let mut json = serde_json::to_value(item("x", 50.0, Category::Low)).unwrap();
        assert_eq!(json["concurrency"], 0);
        json.as_object_mut().unwrap().remove("concurrency");
        let old: QueueItem = serde_json::from_value(json).unwrap();
        assert_eq!(old.concurrency, 0);
        let pinned = QueueItem {
            concurrency: 2,
            ..item("y", 50.0, Category::Low)
        };
        assert_eq!(serde_json::to_value(&pinned).unwrap()["concurrency"], 2);
    }

    #[test]
    fn epoch_defaults_to_zero_and_orders_before_seq() {
        let old = serde_json::json!({"version": 1, "seq": 9, "timestamp_ms": 0, "items": []});
        let old: QueueSnapshot = serde_json::from_value(old).unwrap();
        assert_eq!(old.epoch, 0);
        let new = QueueSnapshot::new(1, 0, Vec::new()).with_epoch(2);
        assert_eq!(serde_json::to_value(&new).unwrap()["epoch"], 2);
        assert!(new.position() > old.position());
    }

    #[test]
    fn only_serving_categories_take_new_requests() {
        assert!(Category::Low.accepts_new_requests());
        assert!(Category::High.accepts_new_requests());
        assert!(!Category::Sundown.accepts_new_requests());
        assert!(!Category::Init.accepts_new_requests());
    }
}
