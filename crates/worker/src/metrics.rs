//! Prometheus metrics of one worker, kept in a registry owned by the app state.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::pool::PoolStats;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    pub status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct JobLabels {
    pub operation: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub job_duration: Family<JobLabels, Histogram>,
    pub http_in_flight: Gauge,
    jobs_running: Gauge,
    jobs_queued: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("worker");
        let requests = Family::<RequestLabels, Counter>::default();
        let job_duration = Family::<JobLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ])
        });
        let http_in_flight = Gauge::default();
        let jobs_running = Gauge::default();
        let jobs_queued = Gauge::default();
        registry.register(
            "http_requests",
            "HTTP requests by endpoint and status",
            requests.clone(),
        );
        registry.register(
            "job_duration_seconds",
            "Time jobs took to run",
            job_duration.clone(),
        );
        registry.register(
            "http_requests_in_flight",
            "HTTP requests being served",
            http_in_flight.clone(),
        );
        registry.register(
            "jobs_running",
            "Jobs running on the pool",
            jobs_running.clone(),
        );
        registry.register(
            "jobs_queued",
            "Jobs waiting for a pool thread",
            jobs_queued.clone(),
        );
        Self {
            registry,
            requests,
            job_duration,
            http_in_flight,
            jobs_running,
            jobs_queued,
        }
    }

    /// The text exposition, with the pool gauges brought up to date first.
    pub fn render(&self, pool: PoolStats) -> String {
        self.jobs_running.set(pool.running as i64);
        self.jobs_queued.set(pool.queued as i64);
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}
