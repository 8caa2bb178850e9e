//! Probes of the workers: the user's readiness/liveness probe (`WORKER_PROBE`: an HTTP GET
//! with accepted statuses, or a TCP connect; the `docker` kind is read from the engine by the
//! controller), whose latency feeds the availability score, and `/stats` for the worker's
//! in-flight count and whether it served. One pooled keep-alive client for every HTTP probe.

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use crate::config::{Config, ProbeKind, StatusRanges};

/// The probe a worker must pass to be ready and stay in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    pub kind: ProbeKind,
    pub path: String,
    pub status: StatusRanges,
}

impl ProbeSpec {
    pub fn from_config(config: &Config) -> Self {
        Self {
            kind: config.worker_probe,
            path: config.worker_probe_path.clone(),
            status: config.worker_probe_status.clone(),
        }
    }

    /// How the probe reads in messages: `GET /health (200-399)`, `TCP connect`, `Docker HEALTHCHECK`.
    pub fn describe(&self) -> String {
        match self.kind {
            ProbeKind::Http => format!("GET {} ({})", self.path, self.status),
            ProbeKind::Tcp => "TCP connect".into(),
            ProbeKind::Docker => "Docker HEALTHCHECK".into(),
        }
    }
}

/// What `/stats` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadProbe {
    /// The worker's own `/stats`.
    Worker(WorkerLoad),
    /// An answer that is not the worker's (404, not its JSON): the app has no such endpoint.
    NotWorker,
    /// No answer (timeout, connection refused): try again later.
    NoAnswer,
}

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

    /// `GET path`: the response time when the status is in `accepted`, within the timeout;
    /// else why not.
    pub async fn http(
        &self,
        address: &str,
        path: &str,
        accepted: &StatusRanges,
    ) -> Result<Duration, String> {
        let started = Instant::now();
        let (status, _) = self
            .get(address, path)
            .await
            .ok_or_else(|| format!("GET {path}: no answer within {:?}", self.timeout))?;
        if accepted.contains(status) {
            Ok(started.elapsed())
        } else {
            Err(format!(
                "GET {path} answered {status}, not in WORKER_PROBE_STATUS {accepted}"
            ))
        }
    }

    /// A TCP connect to `address`: the time it took.
    pub async fn tcp(&self, address: &str) -> Result<Duration, String> {
        let started = Instant::now();
        match tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(address)).await {
            Ok(Ok(_stream)) => Ok(started.elapsed()),
            Ok(Err(err)) => Err(format!("TCP connect to {address}: {err}")),
            Err(_) => Err(format!(
                "TCP connect to {address}: no answer within {:?}",
                self.timeout
            )),
        }
    }

    /// `GET /stats`: the worker's load, or that the app has no worker `/stats`.
    pub async fn load(&self, address: &str) -> LoadProbe {
        let Some((status, body)) = self.get(address, "/stats").await else {
            return LoadProbe::NoAnswer;
        };
        if status != 200 {
            return LoadProbe::NotWorker;
        }
        match parse_load(&body) {
            Some(load) => LoadProbe::Worker(load),
            None => LoadProbe::NotWorker,
        }
    }
}

/// The worker's `/stats` JSON (`in_flight` is required), else `None`.
fn parse_load(body: &[u8]) -> Option<WorkerLoad> {
    {
        let stats: serde_json::Value = serde_json::from_slice(body).ok()?;
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
}

impl Prober {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_workers_stats_json_is_a_load() {
        assert_eq!(
            parse_load(br#"{"in_flight": 2, "queued": 1, "completed": 0}"#),
            Some(WorkerLoad {
                in_flight: 3,
                served: true
            })
        );
        assert_eq!(parse_load(b"<html>not found</html>"), None);
        assert_eq!(parse_load(br#"{"status": "ok"}"#), None);
    }

    #[tokio::test]
    async fn http_and_tcp_probes_report_why_they_failed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        // A server that answers every request 404.
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_request| async {
                        hyper::Response::builder()
                            .status(404)
                            .body(http_body_util::Full::new(Bytes::from_static(b"no")))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let prober = Prober::new(Duration::from_secs(2));
        let default = crate::config::parse_status_ranges("200-399").unwrap();
        let err = prober
            .http(&address, "/health", &default)
            .await
            .unwrap_err();
        assert!(
            err.contains("404") && err.contains("WORKER_PROBE_STATUS"),
            "{err}"
        );
        let with_404 = crate::config::parse_status_ranges("200-299,404").unwrap();
        assert!(prober.http(&address, "/health", &with_404).await.is_ok());
        assert!(prober.tcp(&address).await.is_ok());
        assert_eq!(prober.load(&address).await, LoadProbe::NotWorker);

        let closed = {
            let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            socket.local_addr().unwrap().to_string()
        };
        assert!(prober.tcp(&closed).await.is_err());
        assert_eq!(prober.load(&closed).await, LoadProbe::NoAnswer);
    }
}
