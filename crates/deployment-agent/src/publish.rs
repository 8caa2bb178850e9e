//! How the queue goes out: paced, and serialized once.
//!
//! [`Pacer`] holds the publications to at most one per PUBLISH_INTERVAL. The first change
//! after a quiet interval goes out at once (leading edge); the changes that follow within the
//! interval are merged into one publication at its end (trailing edge), which carries the
//! world as it is then. A change of the routing set (a worker added or gone, or one that
//! starts or stops taking new requests: ready, SUNDOWN, unhealthy) is urgent and goes out at
//! once whatever the pace; scores and loads wait. With 1,000 workers,
//! each stats sample changes a score: without pacing the agent published about 1,200
//! snapshots of 216 KiB a second, more than its subscribers could read.
//!
//! [`Published`] is one snapshot with its JSON text, made at most once and shared by every
//! WebSocket subscriber (a follower keeps the leader's text as it received it).

use std::{
    ops::Deref,
    sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError},
    time::Duration,
};

use axum::extract::ws::Utf8Bytes;
use common::queue::QueueSnapshot;
use tokio::time::Instant;

/// Paces publications: leading edge, trailing edge, urgent changes at once. A cheap handle.
#[derive(Clone)]
pub(crate) struct Pacer {
    interval: Duration,
    state: Arc<Mutex<PaceState>>,
}

#[derive(Default)]
struct PaceState {
    /// When the last publication went out.
    last: Option<Instant>,
    /// A trailing publication is scheduled; it carries every change made until it runs.
    trailing: bool,
}

impl Pacer {
    /// At most one publication per `interval` (zero: every change at once).
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Arc::default(),
        }
    }

    /// Something changed. `publish` runs now when nothing went out within the interval, or
    /// when `urgent` says so (asked only then); else at the interval's end, once for every
    /// change made until then. It runs under the pacer's lock, so one publication never
    /// overtakes another.
    pub fn changed<P>(&self, urgent: impl FnOnce() -> bool, publish: P)
    where
        P: FnOnce() + Send + 'static,
    {
        let mut state = self.lock();
        let now = Instant::now();
        let due = state.last.is_none_or(|last| now >= last + self.interval);
        if (due && !state.trailing) || urgent() {
            publish();
            state.last = Some(now);
            return;
        }
        if state.trailing {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to wait on (not the agent's case): at once.
            publish();
            state.last = Some(now);
            return;
        };
        state.trailing = true;
        let at = state.last.map_or(now, |last| last + self.interval);
        let pacer = self.clone();
        runtime.spawn(async move {
            tokio::time::sleep_until(at).await;
            let mut state = pacer.lock();
            state.trailing = false;
            publish();
            state.last = Some(Instant::now());
        });
    }

    fn lock(&self) -> MutexGuard<'_, PaceState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A published snapshot and its JSON text, made at most once for every WebSocket subscriber.
/// Reads as the snapshot.
#[derive(Debug)]
pub struct Published {
    snapshot: QueueSnapshot,
    json: OnceLock<Utf8Bytes>,
}

impl Published {
    pub fn new(snapshot: QueueSnapshot) -> Self {
        Self {
            snapshot,
            json: OnceLock::new(),
        }
    }

    /// A snapshot that came as `json` (the leader's, relayed): sent on as it came.
    pub fn received(snapshot: QueueSnapshot, json: Utf8Bytes) -> Self {
        Self {
            snapshot,
            json: OnceLock::from(json),
        }
    }

    /// The snapshot as JSON text; serialized by the first caller, shared by the others.
    pub fn json(&self) -> Utf8Bytes {
        self.json
            .get_or_init(|| {
                // Strings, numbers and enums only: it cannot fail.
                serde_json::to_string(&self.snapshot)
                    .unwrap_or_default()
                    .into()
            })
            .clone()
    }
}

impl Deref for Published {
    type Target = QueueSnapshot;

    fn deref(&self) -> &QueueSnapshot {
        &self.snapshot
    }
}

#[cfg(test)]
mod tests;
