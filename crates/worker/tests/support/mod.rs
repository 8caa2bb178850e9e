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

/// The real `worker` binary as a child process whose log lines (stderr, text or JSON) the
/// test reads; killed when dropped.
pub struct LoggingWorker {
    pub address: SocketAddr,
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl LoggingWorker {
    /// Starts it on a loopback port it picks with `--log-format <format>`; its address is read
    /// from its `worker listening` line.
    pub async fn spawn(format: &str) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(worker_binary())
            .args(["--host", "127.0.0.1", "--port", "0", "--log-format", format])
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("cannot start the worker binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                kept.lock().unwrap().push(line);
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let port = loop {
            let port = lines.lock().unwrap().iter().find_map(|line: &String| {
                let (_, after) = line.split_once("worker listening")?;
                let (_, rest) = after
                    .split_once("127.0.0.1:")
                    .or_else(|| line.split_once("127.0.0.1:"))?;
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse::<u16>().ok()
            });
            if let Some(port) = port {
                break port;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the worker did not log its address: {:?}",
                lines.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Self {
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            lines,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Waits up to five seconds for log lines that contain every one of `needles`; every line
    /// that contains the first needle.
    pub async fn lines_with(&self, needles: &[&str]) -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let found: Vec<String> = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .filter(|line| line.contains(needles[0]))
                .cloned()
                .collect();
            let all = needles[1..]
                .iter()
                .all(|needle| found.iter().any(|line| line.contains(needle)));
            if all || std::time::Instant::now() >= deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn all_lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for LoggingWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
