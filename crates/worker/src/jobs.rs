//! The CPU-bound jobs themselves: plain, synchronous functions that run on the job pool and
//! give up early when their request is gone.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use rand::{Rng, SeedableRng, rngs::SmallRng};

/// Set when the request that wanted a job's result has gone away, so the job can stop.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A job was abandoned because its request was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled;

/// How often (in loop iterations) long loops look at their [`CancelFlag`].
const CHECK_EVERY: u64 = 1 << 16;

/// Estimates pi from `iterations` random points in the unit square.
pub fn monte_carlo_pi(iterations: u64, cancel: &CancelFlag) -> Result<f64, Cancelled> {
    let mut rng = SmallRng::from_os_rng();
    let mut inside = 0u64;
    let mut done = 0u64;
    while done < iterations {
        if cancel.is_cancelled() {
            return Err(Cancelled);
        }
        let batch = CHECK_EVERY.min(iterations - done);
        for _ in 0..batch {
            let x: f64 = rng.random();
            let y: f64 = rng.random();
            inside += u64::from(x * x + y * y <= 1.0);
        }
        done += batch;
    }
    Ok(4.0 * inside as f64 / iterations.max(1) as f64)
}

/// Counts the primes below `limit` with a segmented sieve of Eratosthenes over odd numbers,
/// so memory stays at one segment plus the base primes up to `sqrt(limit)`.
pub fn count_primes_below(limit: u64, cancel: &CancelFlag) -> Result<u64, Cancelled> {
    if limit <= 2 {
        return Ok(0);
    }
    let root = (limit as f64).sqrt() as u64 + 1;
    let base = small_primes_up_to(root);
    const SEGMENT: u64 = 1 << 18; // odd numbers per segment
    let mut count = 1; // the prime 2
    let mut sieve = vec![true; SEGMENT as usize];
    // Segment k covers the odd numbers low, low + 2, ..., below `high`.
    let mut low = 3u64;
    while low < limit {
        if cancel.is_cancelled() {
            return Err(Cancelled);
        }
        let high = limit.min(low + 2 * SEGMENT);
        let len = ((high - low) as usize).div_ceil(2);
        sieve[..len].fill(true);
        for &p in base.iter().skip(1) {
            if p * p >= high {
                break;
            }
            // First odd multiple of p that is >= max(p*p, low).
            let mut start = (p * p).max(low.div_ceil(p) * p);
            if start % 2 == 0 {
                start += p;
            }
            let mut m = start;
            while m < high {
                sieve[((m - low) / 2) as usize] = false;
                m += 2 * p;
            }
        }
        count += sieve[..len].iter().filter(|&&is_prime| is_prime).count() as u64;
        low = high + (high % 2 == 0) as u64;
    }
    Ok(count)
}

fn small_primes_up_to(n: u64) -> Vec<u64> {
    let n = n as usize;
    let mut is_prime = vec![true; n + 1];
    let mut primes = Vec::new();
    for i in 2..=n {
        if is_prime[i] {
            primes.push(i as u64);
            let mut m = i * i;
            while m <= n {
                is_prime[m] = false;
                m += i;
            }
        }
    }
    primes
}

/// Holds a pool slot for `duration`, like the seed's 10-60 s simulated tasks; wakes every
/// 50 ms to notice cancellation.
pub fn sleep(duration: Duration, cancel: &CancelFlag) -> Result<f64, Cancelled> {
    let started = Instant::now();
    while let Some(left) = duration.checked_sub(started.elapsed()) {
        if left.is_zero() {
            break;
        }
        if cancel.is_cancelled() {
            return Err(Cancelled);
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
    Ok(started.elapsed().as_secs_f64())
}

/// `iterations` rounds of integer mixing: pure CPU, no memory traffic. Returns a checksum so
/// the work cannot be optimised away.
pub fn spin(iterations: u64, cancel: &CancelFlag) -> Result<u64, Cancelled> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ iterations;
    let mut done = 0;
    while done < iterations {
        if cancel.is_cancelled() {
            return Err(Cancelled);
        }
        let batch = CHECK_EVERY.min(iterations - done);
        for _ in 0..batch {
            x ^= x >> 33;
            x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
            x ^= x >> 29;
        }
        x = std::hint::black_box(x);
        done += batch;
    }
    Ok(x)
}

/// Allocates `bytes`, writes every page so the memory is really resident, holds it for
/// `hold`, then frees it. Returns the number of bytes touched.
pub fn consume_memory(bytes: u64, hold: Duration, cancel: &CancelFlag) -> Result<u64, Cancelled> {
    const PAGE: usize = 4096;
    let mut block = vec![0u8; bytes as usize];
    for (i, page) in block.chunks_mut(PAGE).enumerate() {
        if i % 1024 == 0 && cancel.is_cancelled() {
            return Err(Cancelled);
        }
        page[0] = (i % 251) as u8 + 1;
    }
    std::hint::black_box(&block);
    sleep(hold, cancel)?;
    let touched = block.len() as u64;
    drop(block);
    Ok(touched)
}

#[cfg(test)]
mod tests;
