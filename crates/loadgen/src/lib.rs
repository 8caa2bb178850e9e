//! loadgen: traces (seed 004's generator), open-loop load with per-request records, per-worker
//! summaries, the queue-simulator middleware (`split` over the workers' `POST /simulate`),
//! charts, the comparison table of the policy benchmark, and the queue subscribers of the
//! scale benchmark.
//!
//! Every command is a function of its typed arguments ([`cli`]); `main.rs` only parses the
//! flags, sets up tracing and the runtime, and calls [`cli::execute`].

pub mod agent;
pub mod cli;
pub mod dist;
pub mod engine;
mod error;
pub mod plot;
pub mod profile;
pub mod results;
pub mod split;
pub mod stats;
pub mod subscribers;
pub mod trace;

use std::time::{SystemTime, UNIX_EPOCH};

pub use error::Error;

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
