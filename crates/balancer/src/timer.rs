//! Timeouts that cost next to nothing per request on the traffic threads.
//!
//! Every request carries two deadlines: hyper's `HEADER_READ_TIMEOUT` for the next request
//! head of a connection, and `REQUEST_TIMEOUT` while the backend answers. A fresh tokio
//! `Sleep` for each would be allocated, inserted into the timer wheel under the driver's lock
//! and removed again under the lock, for a deadline that almost never fires.
//!
//! Here, a finished sleep goes back to a small per-thread pool instead, still registered in the
//! wheel. The next deadline is later than the one it was registered with (they are all "now +
//! a fixed timeout"), so tokio's `Sleep::reset` only moves its expiry forward with one atomic
//! compare-and-swap and leaves the wheel alone; when the old expiry comes round the driver
//! notices the later one and re-files the entry. A sleep that fired or whose deadline moved
//! backwards is re-registered the ordinary way, so behaviour is exactly tokio's.
//!
//! The pool is enabled per thread by [`Pool::install`] (the traffic threads, each running its
//! own single-threaded runtime); elsewhere [`PooledSleep`] is a plain tokio sleep. Sleeps are
//! tied to the runtime that made them, so a sleep only returns to the pool of the thread
//! (and runtime) it came from.

use std::{
    cell::{Cell, RefCell},
    future::Future,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::{Instant, Sleep};

/// Idle sleeps kept per thread; more than the connections a thread serves at once is waste.
const POOL_CAPACITY: usize = 4096;

/// Identifies a thread's pool (0: none on this thread).
static NEXT_POOL: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static POOL_ID: Cell<u64> = const { Cell::new(0) };
    static IDLE: RefCell<Vec<Pin<Box<Sleep>>>> = const { RefCell::new(Vec::new()) };
}

/// The sleep pool of the current thread, emptied when dropped (before its runtime goes).
#[derive(Debug)]
pub struct Pool {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Pool {
    /// Enables pooling on this thread, which must run the tokio runtime the sleeps belong to.
    pub fn install() -> Self {
        POOL_ID.with(|id| id.set(NEXT_POOL.fetch_add(1, Relaxed)));
        Self {
            _not_send: std::marker::PhantomData,
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        POOL_ID.with(|id| id.set(0));
        let idle = IDLE.with(|idle| std::mem::take(&mut *idle.borrow_mut()));
        drop(idle);
    }
}

/// A tokio sleep taken from (and given back to) the thread's pool.
#[derive(Debug)]
pub struct PooledSleep {
    sleep: Option<Pin<Box<Sleep>>>,
    /// The pool it returns to, 0 for none.
    pool: u64,
}

impl PooledSleep {
    pub fn until(deadline: Instant) -> Self {
        let pool = POOL_ID.with(Cell::get);
        let reused = if pool == 0 {
            None
        } else {
            IDLE.with(|idle| idle.borrow_mut().pop())
        };
        let sleep = match reused {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        Self {
            sleep: Some(sleep),
            pool,
        }
    }

    #[cfg(test)]
    fn deadline(&self) -> Option<Instant> {
        self.sleep.as_ref().map(|sleep| sleep.deadline())
    }
}

impl Future for PooledSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

impl hyper::rt::Sleep for PooledSleep {}

impl Drop for PooledSleep {
    fn drop(&mut self) {
        let Some(sleep) = self.sleep.take() else {
            return;
        };
        if self.pool == 0 || POOL_ID.try_with(Cell::get) != Ok(self.pool) {
            return;
        }
        let _ = IDLE.try_with(|idle| {
            if let Ok(mut idle) = idle.try_borrow_mut() {
                if idle.len() < POOL_CAPACITY {
                    idle.push(sleep);
                }
            }
        });
    }
}

/// The deadline passed before the future finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

pin_project_lite::pin_project! {
    /// A future with a deadline; see [`timeout_at`].
    #[derive(Debug)]
    pub struct Timeout<F> {
        #[pin]
        future: F,
        sleep: PooledSleep,
    }
}

/// Like `tokio::time::timeout_at`, with a pooled sleep: the future is polled first, so an
/// answer that is ready wins over a deadline that passed at the same time.
pub fn timeout_at<F: Future>(deadline: Instant, future: F) -> Timeout<F> {
    Timeout {
        future,
        sleep: PooledSleep::until(deadline),
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        match Pin::new(this.sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// hyper's timer (header read timeout, HTTP/2 keep-alive) on pooled sleeps.
#[derive(Debug, Clone, Copy, Default)]
pub struct PooledTimer;

impl hyper::rt::Timer for PooledTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(PooledSleep::until(Instant::now() + duration))
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(PooledSleep::until(deadline.into()))
    }

    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: std::time::Instant) {
        *sleep = self.sleep_until(new_deadline);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn idle() -> usize {
        IDLE.with(|idle| idle.borrow().len())
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_pooled_sleep_fires_at_its_deadline_and_is_reused() {
        runtime().block_on(async {
            let pool = Pool::install();
            let start = Instant::now();
            PooledSleep::until(start + 50 * MS).await;
            assert!(start.elapsed() >= 50 * MS);
            assert_eq!(idle(), 1, "a finished sleep goes back to the pool");

            // Reused after firing: registered again.
            let reused = PooledSleep::until(Instant::now() + 30 * MS);
            assert_eq!(idle(), 0);
            let again = Instant::now();
            reused.await;
            assert!(again.elapsed() >= 30 * MS);

            // Dropped while registered, then reused with a later deadline: moved forward in
            // place, and the old, earlier expiry does not fire it.
            let early = Instant::now();
            drop(PooledSleep::until(early + 100 * MS));
            let mut later = PooledSleep::until(early + 2000 * MS);
            assert_eq!(idle(), 0, "the dropped sleep was taken again");
            assert_eq!(later.deadline(), Some(early + 2000 * MS));
            tokio::time::sleep(300 * MS).await;
            let pending =
                std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut later).poll(cx).is_pending()))
                    .await;
            assert!(pending, "the old, earlier expiry must not fire it");
            (&mut later).await;
            assert!(early.elapsed() >= 2000 * MS);

            // Reused with an earlier deadline than it is registered for: re-filed.
            drop(later);
            let mut long = PooledSleep::until(Instant::now() + 60_000 * MS);
            let _ = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut long).poll(cx))).await;
            drop(long);
            let short = Instant::now();
            PooledSleep::until(short + 40 * MS).await;
            let took = short.elapsed();
            assert!(took >= 40 * MS && took < 30_000 * MS, "took {took:?}");

            drop(pool);
            assert_eq!(idle(), 0, "the pool is emptied while its runtime is alive");
        });
    }

    #[test]
    fn timeout_at_returns_the_output_or_elapsed() {
        runtime().block_on(async {
            let _pool = Pool::install();
            let deadline = Instant::now() + 100 * MS;
            assert_eq!(timeout_at(deadline, async { 7 }).await, Ok(7));
            let slow = tokio::time::sleep(5000 * MS);
            assert_eq!(timeout_at(deadline, slow).await, Err(Elapsed));
            assert!(Instant::now() >= deadline);
            assert!(Instant::now() < deadline + 4000 * MS);
        });
    }

    #[test]
    fn without_a_pool_sleeps_are_plain() {
        runtime().block_on(async {
            let start = Instant::now();
            PooledSleep::until(start + 30 * MS).await;
            assert!(start.elapsed() >= 30 * MS);
            assert_eq!(idle(), 0);
        });
    }

    #[test]
    fn hyper_timer_sleeps_until_the_deadline() {
        use hyper::rt::Timer as _;
        runtime().block_on(async {
            let _pool = Pool::install();
            let start = Instant::now();
            PooledTimer.sleep(40 * MS).await;
            assert!(start.elapsed() >= 40 * MS);
            let mut sleep = PooledTimer.sleep_until((start + 60_000 * MS).into_std());
            PooledTimer.reset(&mut sleep, (start + 100 * MS).into_std());
            sleep.await;
            let took = start.elapsed();
            assert!(took >= 100 * MS && took < 30_000 * MS, "took {took:?}");
        });
    }
}
