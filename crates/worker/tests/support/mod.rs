//! Test harness: a worker in-process on port 0, a worker as a real process, Docker helpers.

#![allow(dead_code)]

pub mod docker;

use std::{net::SocketAddr, time::Duration};

use common::{CancellationToken, serve::Stopped};
use serde_json::Value;
use tokio::task::JoinHandle;
use worker::Config;

pub fn worker_binary() -> &'static str {
    env!("CARGO_BIN_EXE_worker")
}

pub use common::testing::free_port;

/// A worker served by `worker::run` inside the test process.
pub struct TestWorker {
    pub address: SocketAddr,
    /// The chaos port, open when the config has `chaos: true`.
    pub chaos: Option<SocketAddr>,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Stopped>>,
}

impl TestWorker {
    pub async fn start(config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let chaos = if config.chaos {
            Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        } else {
            None
        };
        let chaos_address = chaos.as_ref().map(|l| l.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let listeners = worker::Listeners {
            traffic: listener,
            chaos,
        };
        let task = tokio::spawn(worker::serve(listeners, config, shutdown.clone()));
        Self {
            address,
            chaos: chaos_address,
            client: reqwest::Client::new(),
            shutdown,
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Waits until the server has stopped by itself.
    pub async fn stopped(&mut self) -> Stopped {
        let task = self.task.take().expect("already stopped");
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("server did not stop")
            .unwrap()
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub use common::testing::WorkerProcess;
