//! HTTP probes of the workers: `/health` latency for the availability score and `/stats`
//! for their in-flight count and whether they served. One pooled keep-alive client for every probe.

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

/// What a worker's `/stats` says about its load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerLoad {
    /// Jobs in flight and queued.
    pub in_flight: u64,
    /// It has had a job (done, failed, rejected or under way) since it started.
    pub served: bool,
}

#[derive(Clone)]
pub struct Prober {
    client: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

impl Prober {
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(2)
            .build(connector);
        Self { client, timeout }
    }

    /// `GET /health`: the response time when it answers 2xx within the timeout.
    pub async fn health(&self, address: &str) -> Option<Duration> {
        let started = Instant::now();
        let (status, _) = self.get(address, "/health").await?;
        (200..300).contains(&status).then(|| started.elapsed())
    }

    /// `GET /stats`: the worker's load, when it has such an endpoint.
    pub async fn load(&self, address: &str) -> Option<WorkerLoad> {
        let (status, body) = self.get(address, "/stats").await?;
        if status != 200 {
            return None;
        }
        let stats: serde_json::Value = serde_json::from_slice(&body).ok()?;
        let count = |field: &str| {
            stats
                .get(field)
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0)
        };
        let in_flight = stats.get("in_flight")?.as_u64()? + count("queued");
        let handled = count("completed") + count("failed") + count("rejected");
        Some(WorkerLoad {
            in_flight,
            served: in_flight + handled > 0,
        })
    }

    async fn get(&self, address: &str, path: &str) -> Option<(u16, Bytes)> {
        let uri: hyper::Uri = format!("http://{address}{path}").parse().ok()?;
        let request = async {
            let response = self.client.get(uri).await.ok()?;
            let status = response.status().as_u16();
            let body = http_body_util::Limited::new(response.into_body(), 64 * 1024)
                .collect()
                .await
                .ok()?;
            Some((status, body.to_bytes()))
        };
        tokio::time::timeout(self.timeout, request)
            .await
            .ok()
            .flatten()
    }
}
