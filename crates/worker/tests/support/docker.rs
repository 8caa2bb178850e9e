//! The worker image on the real Docker engine. Everything created here carries the label
//! `managed-by=rustybalancer-tests` and is removed on drop, even when an assertion fails.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};

pub const LABEL: &str = "managed-by=rustybalancer-tests";

/// Runs `docker` with `args`; its trimmed stdout, or a panic with its stderr.
pub fn docker(args: &[&str]) -> String {
    let output = Command::new("docker")
        .args(args)
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("the docker CLI is not installed");
    assert!(
        output.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// What a test created, removed on drop.
#[derive(Default)]
pub struct Cleanup {
    pub containers: Vec<String>,
    pub networks: Vec<String>,
    pub images: Vec<String>,
    pub dirs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = Command::new("docker").args(args).output();
        };
        for container in &self.containers {
            quiet(&["rm", "-f", "-v", container]);
        }
        for network in &self.networks {
            quiet(&["network", "rm", network]);
        }
        for image in &self.images {
            quiet(&["image", "rm", "-f", image]);
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub fn unique() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{}-{nanos}", std::process::id())
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds the worker image from the test's own static binary and `deploy/worker.Dockerfile`.
pub fn build_worker_image(cleanup: &mut Cleanup, id: &str) -> String {
    let context = std::env::temp_dir().join(format!("rb-worker-image-{id}"));
    cleanup.dirs.push(context.clone());
    std::fs::create_dir_all(&context).unwrap();
    std::fs::copy(super::worker_binary(), context.join("worker")).unwrap();
    let tag = format!("rustybalancer/worker:test-{id}");
    let dockerfile = repo_root().join("deploy/worker.Dockerfile");
    cleanup.images.push(tag.clone());
    docker(&[
        "build",
        "--quiet",
        "--label",
        LABEL,
        "-f",
        dockerfile.to_str().unwrap(),
        "-t",
        &tag,
        context.to_str().unwrap(),
    ]);
    tag
}

fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Build the image, run it on a network of its own, call it through the container's address,
/// watch its HEALTHCHECK turn healthy, check the binary inside is static and the image small.
pub fn image_scenario() {
    let id = unique();
    let mut cleanup = Cleanup::default();
    let tag = build_worker_image(&mut cleanup, &id);

    let size: u64 = docker(&["image", "inspect", "-f", "{{.Size}}", &tag])
        .parse()
        .unwrap();
    assert!(
        size < 15 * 1024 * 1024,
        "worker image is {size} bytes, over 15 MB"
    );

    let network = format!("rb-test-{id}");
    cleanup.networks.push(network.clone());
    docker(&["network", "create", "--label", LABEL, &network]);
    let name = format!("rb-test-worker-{id}");
    cleanup.containers.push(name.clone());
    docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        LABEL,
        "--network",
        &network,
        &tag,
    ]);

    let address_format =
        format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
    let ip = docker(&["inspect", "-f", &address_format, &name]);
    assert!(!ip.is_empty(), "container has no address on {network}");
    let base = format!("http://{ip}:8080");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    wait_for(
        "/health through the container address",
        Duration::from_secs(15),
        || {
            runtime.block_on(async {
                let response = client.get(format!("{base}/health")).send().await.ok()?;
                (response.status() == 200).then_some(())
            })
        },
    );
    let answer: Value = runtime.block_on(async {
        client
            .post(format!("{base}/submit"))
            .json(&json!({"operation": "monte_carlo_pi", "data": {"iterations": 1_000_000}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    let pi = answer["result"].as_f64().unwrap();
    assert!((pi - std::f64::consts::PI).abs() < 0.01, "pi = {pi}");
    let container_id = docker(&["inspect", "-f", "{{.Id}}", &name]);
    let worker_id = answer["worker_id"].as_str().unwrap();
    assert!(
        container_id.starts_with(worker_id),
        "worker_id {worker_id} is not the container id"
    );

    wait_for(
        "HEALTHCHECK to report healthy",
        Duration::from_secs(30),
        || {
            let status = docker(&["inspect", "-f", "{{.State.Health.Status}}", &name]);
            (status == "healthy").then_some(())
        },
    );

    let copied = cleanup.dirs[0].join("worker-from-image");
    docker(&["cp", &format!("{name}:/worker"), copied.to_str().unwrap()]);
    let ldd = Command::new("ldd").arg(&copied).output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&ldd.stdout),
        String::from_utf8_lossy(&ldd.stderr)
    );
    assert!(
        said.contains("statically linked") || said.contains("not a dynamic executable"),
        "ldd says: {said}"
    );
}
