//! The admission queue: while no backend can take a request, it waits here (bounded in
//! number and time) and the number waiting is reported to the agent as demand, so the agent
//! scales up, from zero if need be.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use crate::{
    backend::{Backend, Backends},
    error::ProxyError,
    policy::{Picker, Tried},
};

#[derive(Debug)]
pub struct Admission {
    capacity: u64,
    timeout: Duration,
    waiting: AtomicU64,
    /// Most waiting at once since the last load report.
    peak: AtomicU64,
    pub admitted: AtomicU64,
    pub rejected_full: AtomicU64,
    pub rejected_timeout: AtomicU64,
}

impl Admission {
    pub fn new(capacity: usize, timeout: Duration) -> Self {
        Self {
            capacity: capacity as u64,
            timeout,
            waiting: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            admitted: AtomicU64::new(0),
            rejected_full: AtomicU64::new(0),
            rejected_timeout: AtomicU64::new(0),
        }
    }

    pub fn waiting(&self) -> u64 {
        self.waiting.load(Relaxed)
    }

    /// The most requests waiting at once since the previous call (at least those waiting now).
    pub fn take_peak(&self) -> u64 {
        self.peak.swap(self.waiting(), Relaxed)
    }

    /// Waits until `picker` finds a backend in the table, up to `QUEUE_TIMEOUT`.
    pub async fn wait(
        &self,
        backends: &Backends,
        picker: &Picker,
        tried: &Tried,
        clock: &crate::backend::Clock,
    ) -> Result<Arc<Backend>, ProxyError> {
        if self.waiting.fetch_add(1, Relaxed) >= self.capacity {
            self.waiting.fetch_sub(1, Relaxed);
            self.rejected_full.fetch_add(1, Relaxed);
            return Err(ProxyError::QueueFull);
        }
        let _leave = Leave(&self.waiting);
        self.peak.fetch_max(self.waiting(), Relaxed);
        let deadline = tokio::time::Instant::now() + self.timeout;
        tracing::debug!(
            waiting = self.waiting(),
            "no backend available; request queued"
        );
        loop {
            let changed = backends.changed().notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(backend) = picker.pick(&backends.load(), tried, clock.now()) {
                self.admitted.fetch_add(1, Relaxed);
                return Ok(backend);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                self.rejected_timeout.fetch_add(1, Relaxed);
                return Err(ProxyError::QueueTimeout(self.timeout));
            }
        }
    }
}

struct Leave<'a>(&'a AtomicU64);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}
