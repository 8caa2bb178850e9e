//! The worker image on the real Docker engine, with `common::testing`'s cleanup guard.

use std::{process::Command, time::Duration};

use common::testing::{Cleanup, TEST_LABEL, build_image, docker, unique, wait_for};
use serde_json::{Value, json};

/// Build the image, run it on a network of its own, call it through the container's address,
/// watch its HEALTHCHECK turn healthy, check the binary inside is static and the image small.
pub fn image_scenario() {
    let id = unique();
    let mut cleanup = Cleanup::default();
    let tag = build_image(
        &mut cleanup,
        "worker",
        std::path::Path::new(super::worker_binary()),
        &id,
    );

    let size: u64 = docker(&["image", "inspect", "-f", "{{.Size}}", &tag])
        .parse()
        .unwrap();
    assert!(
        size < 15 * 1024 * 1024,
        "worker image is {size} bytes, over 15 MB"
    );

    let network = format!("rb-test-{id}");
    cleanup.networks.push(network.clone());
    docker(&["network", "create", "--label", TEST_LABEL, &network]);
    let name = format!("rb-test-worker-{id}");
    cleanup.containers.push(name.clone());
    docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        TEST_LABEL,
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
