//! The swarm lab (`jobs/swarm-lab.sh`): three dockerd in network namespaces, one Swarm. This
//! test checks that `down` leaves nothing behind, also when the test that used the lab fails:
//! it brings the lab up, deploys a small global service and reaches it from this (the root)
//! namespace, kills one node's daemon with SIGKILL (its containerd, shims and container stay
//! behind), then panics on purpose while a guard owns the lab; the guard's drop runs `down`.
//! Afterwards no namespace, link, route, firewall rule, mount, process or directory of the
//! lab is left, and the host engine still has every container and network it had before.
//!
//! It needs root (namespaces, links, dockerd); as another user it says so and checks nothing.
//! It takes down any lab that is up when it starts.

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use common::testing::{binary_dir, docker, free_port, repo_root, unique, wait_for};

/// The lab's nodes, as `jobs/swarm-lab.sh` names them.
const NODES: [&str; 3] = ["rblab-n1", "rblab-n2", "rblab-n3"];
/// The services with an image in `deploy/`, which `up` builds when absent.
const SERVICES: [&str; 4] = ["balancer", "deployment-agent", "loadgen", "worker"];

/// Owns the lab: `jobs/swarm-lab.sh down` on drop, also while a failing test unwinds.
struct Lab {
    env: Vec<(String, String)>,
}

impl Lab {
    /// `jobs/swarm-lab.sh up`, with the project's images tagged `tag`.
    fn up(tag: &str) -> Self {
        let target_dir = binary_dir()
            .parent()
            .and_then(Path::parent)
            .expect("the binaries are not under <target>/<triple>/release")
            .to_path_buf();
        let lab = Self {
            env: vec![
                (
                    "CARGO_TARGET_DIR".to_owned(),
                    target_dir.to_string_lossy().into_owned(),
                ),
                ("IMAGE_TAG".to_owned(), tag.to_owned()),
            ],
        };
        let output = lab.script(&["up"]);
        assert!(
            output.status.success(),
            "jobs/swarm-lab.sh up failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        lab
    }

    fn script(&self, args: &[&str]) -> Output {
        script(args, &self.env)
    }

    /// The docker CLI on one node's engine; its trimmed stdout, or a panic with its stderr.
    fn on(&self, node: &str, args: &[&str]) -> String {
        let host = format!("unix:///run/rblab/sockets/{node}.sock");
        let mut all = vec!["-H", host.as_str()];
        all.extend_from_slice(args);
        docker(&all)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let output = self.script(&["down"]);
        if !output.status.success() {
            eprintln!(
                "jobs/swarm-lab.sh down failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

fn script(args: &[&str], env: &[(String, String)]) -> Output {
    Command::new("bash")
        .arg(Path::new("jobs").join("swarm-lab.sh"))
        .args(args)
        .current_dir(repo_root())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("cannot run jobs/swarm-lab.sh")
}

/// The lines of a command's stdout (empty when it fails to run).
fn lines(program: &str, args: &[&str]) -> Vec<String> {
    Command::new(program)
        .args(args)
        .output()
        .map(|output| {
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// A plain HTTP/1.0 GET; the status line and body, or None when nothing answers.
fn http_get(address: &str, path: &str) -> Option<String> {
    let mut stream =
        TcpStream::connect_timeout(&address.parse().ok()?, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    Some(answer)
}

/// The ids of the host engine's containers and networks.
fn host_engine() -> (BTreeSet<String>, BTreeSet<String>) {
    let containers = docker(&["ps", "-aq", "--no-trunc"]);
    let networks = docker(&["network", "ls", "-q", "--no-trunc"]);
    (
        containers.lines().map(str::to_owned).collect(),
        networks.lines().map(str::to_owned).collect(),
    )
}

/// Everything of the lab still on this machine, one line per thing found.
fn lab_leftovers() -> Vec<String> {
    let mut left = Vec::new();
    for line in lines("ip", &["netns", "list"]) {
        if line.starts_with("rblab") {
            left.push(format!("namespace {line}"));
        }
    }
    for line in lines("ip", &["-br", "link"]) {
        if line.contains("rblab") {
            left.push(format!("link {line}"));
        }
    }
    for line in lines("ip", &["route"]) {
        if line.contains("10.231.") || line.contains("rblab") {
            left.push(format!("route {line}"));
        }
    }
    for line in lines("iptables", &["-S"]) {
        if line.contains("rblab") {
            left.push(format!("firewall rule {line}"));
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mountinfo.lines() {
        if line.contains("/run/rblab")
            || line.contains("/var/lib/rblab")
            || line.contains("rblab-n")
        {
            left.push(format!("mount {line}"));
        }
    }
    for entry in std::fs::read_dir("/proc").expect("no /proc").flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("/run/rblab") || cmdline.contains("/var/lib/rblab") {
            left.push(format!(
                "process {}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    for dir in ["/run/rblab", "/var/lib/rblab", "/run/netns/rblab-n1"] {
        if Path::new(dir).exists() {
            left.push(format!("path {dir}"));
        }
    }
    left
}

#[test]
fn lab_down_leaves_nothing_even_after_a_failed_test() {
    if !Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
    {
        eprintln!(
            "SKIPPED lab_down_leaves_nothing_even_after_a_failed_test: the swarm lab needs root \
             (network namespaces, links, dockerd); nothing was checked"
        );
        return;
    }
    let id = unique();
    let tag = format!("e2e-lab-{id}");
    // The images `up` builds for this tag (Redis only when redis:7-alpine is not here).
    let mut images: Vec<String> = SERVICES
        .iter()
        .map(|service| format!("rustybalancer/{service}:{tag}"))
        .collect();
    images.push(format!("rustybalancer/redis:{tag}"));
    let _images = RemoveImages(images);
    let (containers_before, networks_before) = host_engine();
    let port = free_port();

    // The failing test: the guard inside the closure runs `down` while the panic unwinds.
    let started = Instant::now();
    let failed: std::thread::Result<()> = std::panic::catch_unwind(|| {
        let lab = Lab::up(&tag);
        eprintln!("lab up in {:.1?}", started.elapsed());
        let published = format!("mode=host,target=8080,published={port}");
        let image = format!("rustybalancer/worker:{tag}");
        lab.on(
            "rblab-n1",
            &["network", "create", "--driver", "overlay", "rblab-probe"],
        );
        lab.on(
            "rblab-n1",
            &[
                "service",
                "create",
                "--network",
                "rblab-probe",
                "--detach",
                "--quiet",
                "--name",
                "rblab-probe",
                "--mode",
                "global",
                "--publish",
                &published,
                "--env",
                "TARGET_PORT=8080",
                &image,
            ],
        );
        // Every node's task answers from this namespace at the node's address.
        for (index, _node) in NODES.iter().enumerate() {
            let address = format!("10.231.0.1{}:{port}", index + 1);
            let answer = wait_for(
                &format!("the probe service at {address}"),
                Duration::from_secs(90),
                || http_get(&address, "/health"),
            );
            assert!(
                answer.starts_with("HTTP/1.") && answer.contains(" 200 "),
                "{answer}"
            );
        }
        // And at its own (docker_gwbridge) address, which `addr` prints.
        let output = lab.script(&["addr", "rblab-probe"]);
        let addresses: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.split_whitespace().nth(2).map(str::to_owned))
            .collect();
        assert_eq!(
            addresses.len(),
            NODES.len(),
            "addr rblab-probe: {addresses:?}"
        );
        for address in &addresses {
            let answer = http_get(&format!("{address}:8080"), "/health");
            assert!(
                answer.as_deref().is_some_and(|a| a.contains(" 200 ")),
                "the probe at {address}:8080: {answer:?}"
            );
        }
        // A node dies hard: its containerd, shim and container outlive its daemon.
        let pid = std::fs::read_to_string("/run/rblab/rblab-n3/dockerd.pid")
            .expect("no pid file of rblab-n3's dockerd");
        let killed = Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .expect("cannot run kill");
        assert!(killed.success(), "kill -KILL {pid}");
        eprintln!("failing on purpose, with the lab up and rblab-n3's daemon killed");
        std::panic::panic_any(OnPurpose);
    });
    let Err(payload) = failed else {
        panic!("the step meant to fail did not");
    };
    eprintln!("up, probe, failure and down in {:.1?}", started.elapsed());

    let left = lab_leftovers();
    assert!(left.is_empty(), "down left behind:\n{}", left.join("\n"));
    // Twice is fine.
    let again = script(&["down"], &[]);
    assert!(
        again.status.success(),
        "a second down failed: {}",
        String::from_utf8_lossy(&again.stderr)
    );
    // The host engine lost nothing (others may have added containers meanwhile: only what was
    // there before is compared).
    let (containers_after, networks_after) = host_engine();
    let lost: Vec<_> = containers_before.difference(&containers_after).collect();
    assert!(lost.is_empty(), "host containers gone: {lost:?}");
    let lost: Vec<_> = networks_before.difference(&networks_after).collect();
    assert!(lost.is_empty(), "host networks gone: {lost:?}");
    // A failure other than the one on purpose fails the test (after the checks above).
    if !payload.is::<OnPurpose>() {
        std::panic::resume_unwind(payload);
    }
}

/// The panic of the step that fails on purpose.
struct OnPurpose;

/// Removes the images on drop (`up` builds them on the host engine).
struct RemoveImages(Vec<String>);

impl Drop for RemoveImages {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["image", "rm", "-f"])
            .args(&self.0)
            .output();
    }
}
