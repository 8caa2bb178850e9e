//! Test harness: a worker in-process on port 0, a worker as a real process, Docker helpers.

#![allow(dead_code)]

pub mod docker;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

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
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Stopped>>,
}

impl TestWorker {
    pub async fn start(config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(worker::run(listener, config, shutdown.clone()));
        Self {
            address,
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

/// The `worker` binary as a child process on a loopback port it picked itself.
pub struct WorkerProcess {
    pub address: SocketAddr,
    child: Child,
}

impl WorkerProcess {
    pub fn spawn(extra: &[&str]) -> Self {
        let mut child = Command::new(worker_binary())
            .args(["--host", "127.0.0.1", "--port", "0", "--log-format", "json"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str::<Value>(&line) {
                    if event["message"] == "worker listening" {
                        let _ = tx.send(event["address"].as_str().unwrap_or_default().to_owned());
                    }
                }
            }
        });
        let address = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("worker did not log its address")
            .parse()
            .unwrap();
        Self { address, child }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "worker did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
