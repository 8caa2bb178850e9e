//! The job pool: at most `threads` jobs run at once on blocking threads (never on the async
//! runtime), at most `queue_capacity` more wait for a thread, and anything past that is
//! refused at once so memory stays bounded.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::jobs::{CancelFlag, Cancelled};

/// Why a job did not produce a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolError {
    /// Every thread is busy and the wait queue is full.
    Saturated,
    /// The job panicked.
    Failed,
    /// The request went away and the job stopped early.
    Cancelled,
}

/// A cheap handle to the pool.
#[derive(Debug, Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    threads: usize,
    queue_capacity: usize,
    admission: Arc<Semaphore>,
    running_slots: Arc<Semaphore>,
    running: AtomicU64,
    queued: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
}

/// Counters of the pool at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PoolStats {
    pub threads: usize,
    pub queue_capacity: usize,
    pub running: u64,
    pub queued: u64,
    pub completed: u64,
    pub failed: u64,
    pub rejected: u64,
}

impl Pool {
    pub fn new(threads: usize, queue_capacity: usize) -> Self {
        let threads = threads.max(1);
        Self {
            shared: Arc::new(Shared {
                threads,
                queue_capacity,
                admission: Arc::new(Semaphore::new(threads + queue_capacity)),
                running_slots: Arc::new(Semaphore::new(threads)),
                running: AtomicU64::new(0),
                queued: AtomicU64::new(0),
                completed: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
            }),
        }
    }

    /// Runs `job` on a pool thread and waits for its result. If the returned future is dropped
    /// (the client went away), the job's [`CancelFlag`] is raised; its thread slot is held until
    /// the job has actually stopped.
    pub async fn run<T, F>(&self, job: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce(&CancelFlag) -> Result<T, Cancelled> + Send + 'static,
    {
        let shared = &self.shared;
        let Ok(admitted) = shared.admission.clone().try_acquire_owned() else {
            shared.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(PoolError::Saturated);
        };
        let waiting = Gauge::enter(&shared.queued);
        let slot: OwnedSemaphorePermit = match shared.running_slots.clone().acquire_owned().await {
            Ok(slot) => slot,
            // The semaphore is never closed.
            Err(_) => return Err(PoolError::Failed),
        };
        drop(waiting);

        let cancel = CancelFlag::default();
        let _cancel_on_drop = CancelOnDrop(cancel.clone());
        let pool = self.clone();
        let task = tokio::task::spawn_blocking(move || {
            let _running = Gauge::enter(&pool.shared.running);
            let outcome = job(&cancel);
            drop((slot, admitted));
            outcome
        });
        let outcome = match task.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(Cancelled)) => Err(PoolError::Cancelled),
            Err(err) => {
                tracing::error!(cause = %err, "job panicked");
                Err(PoolError::Failed)
            }
        };
        let counter = if outcome.is_ok() {
            &shared.completed
        } else {
            &shared.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        outcome
    }

    pub fn stats(&self) -> PoolStats {
        let s = &self.shared;
        PoolStats {
            threads: s.threads,
            queue_capacity: s.queue_capacity,
            running: s.running.load(Ordering::Relaxed),
            queued: s.queued.load(Ordering::Relaxed),
            completed: s.completed.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            rejected: s.rejected.load(Ordering::Relaxed),
        }
    }
}

/// Raises the flag when the waiting request future is dropped.
struct CancelOnDrop(CancelFlag);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// Increments a counter for as long as it lives.
struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    fn enter(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn refuses_past_threads_plus_queue_and_finishes_the_rest() {
        let pool = Pool::new(1, 1);
        let slow = |pool: Pool| async move {
            pool.run(|cancel| crate::jobs::sleep(Duration::from_millis(300), cancel))
                .await
        };
        let first = tokio::spawn(slow(pool.clone()));
        let second = tokio::spawn(slow(pool.clone()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(pool.stats().running, 1);
        assert_eq!(pool.stats().queued, 1);
        assert_eq!(pool.run(|_| Ok(())).await, Err(PoolError::Saturated));
        assert!(first.await.unwrap().is_ok());
        assert!(second.await.unwrap().is_ok());
        let stats = pool.stats();
        assert_eq!(
            (stats.completed, stats.rejected, stats.running, stats.queued),
            (2, 1, 0, 0)
        );
    }

    #[tokio::test]
    async fn a_dropped_request_cancels_its_job_and_frees_the_slot() {
        let pool = Pool::new(1, 0);
        let waiting = pool.run(|cancel| crate::jobs::sleep(Duration::from_secs(30), cancel));
        let _ = tokio::time::timeout(Duration::from_millis(100), waiting).await;
        // The sleep notices within 50 ms and gives its slot back.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(pool.stats().running, 0);
        assert_eq!(pool.run(|_| Ok(7)).await, Ok(7));
    }
}
