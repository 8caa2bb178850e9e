//! What every RustyBalancer service shares: duration parsing and logging flags for the typed
//! configs, tracing initialisation, the shutdown signal, the HTTP accept loop with graceful
//! drain, the CPU quota probe and the wire types of the live queue that the deployment agent
//! publishes and the balancer consumes.

pub mod cli;
pub mod config;
pub mod cpu;
pub mod queue;
pub mod request_id;
pub mod serve;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;

pub use tokio_util::sync::CancellationToken;

/// The body of every error answer of every service: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

impl ErrorBody {
    pub fn new(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
        }
    }

    /// The JSON text of this body.
    pub fn to_json(&self) -> String {
        // Serialising a struct of one string cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{\"error\":\"internal\"}"))
    }
}
