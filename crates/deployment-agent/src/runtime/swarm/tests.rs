use super::*;

fn settings() -> Settings {
    Settings {
        image: "rustybalancer/worker:test".into(),
        app: "shop".into(),
        agent_name: "shop-agent".into(),
        network: "shop-workers".into(),
        address_mode: AddressMode::Ip,
        target_port: 8080,
        cpus: Some(0.5),
        memory: Some(256 << 20),
        pids_limit: 128,
        env: vec!["TARGET_PORT=8080".into()],
        command: None,
        args: Some(vec!["--threads".into(), "1".into()]),
        user: Some("10001".into()),
        read_only: true,
        tmpfs: vec!["/tmp".into()],
        labels: HashMap::from([("team".to_owned(), "web".to_owned())]),
        constraints: vec!["node.role==worker".into()],
        stop_grace: Duration::from_secs(10),
        redis_url: "redis://redis:6379".into(),
        stats_prefix: "rustybalancer:shop:swarm:stats".into(),
        node_id: "node-a".into(),
        manager: true,
        host_cores: 2.0,
    }
}

fn task(node: &str, state: TaskState, version: u64) -> Task {
    Task {
        node_id: Some(node.into()),
        version: Some(bollard::models::ObjectVersion {
            index: Some(version),
        }),
        status: Some(bollard::models::TaskStatus {
            state: Some(state),
            message: Some(state.to_string()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn a_worker_is_one_replica_that_swarm_never_restarts_spread_over_nodes() {
    let spec = settings().service_spec(&LaunchSpec {
        name: "shop-worker-3".into(),
        core_id: None,
        epoch: 7,
    });
    assert_eq!(spec.name.as_deref(), Some("shop-worker-3"));
    let labels = spec.labels.clone().unwrap();
    assert_eq!(labels["application"], "shop");
    assert_eq!(labels["managed-by"], "shop-agent");
    assert_eq!(labels["team"], "web");
    assert_eq!(labels[EPOCH_LABEL], "7");
    let replicated = spec.mode.unwrap().replicated.unwrap();
    assert_eq!(replicated.replicas, Some(1));
    assert_eq!(
        spec.endpoint_spec.unwrap().mode,
        Some(EndpointSpecModeEnum::DNSRR)
    );
    let template = spec.task_template.unwrap();
    assert_eq!(
        template.restart_policy.unwrap().condition,
        Some(TaskSpecRestartPolicyConditionEnum::NONE)
    );
    let placement = template.placement.unwrap();
    assert_eq!(placement.constraints.unwrap(), vec!["node.role==worker"]);
    let spread = placement.preferences.unwrap()[0].spread.clone().unwrap();
    assert_eq!(spread.spread_descriptor.as_deref(), Some("node.id"));
    let limits = template.resources.unwrap().limits.unwrap();
    assert_eq!(limits.nano_cpus, Some(500_000_000));
    assert_eq!(limits.memory_bytes, Some(256 << 20));
    assert_eq!(limits.pids, Some(128));
    let networks = template.networks.unwrap();
    assert_eq!(networks[0].target.as_deref(), Some("shop-workers"));
    let container = template.container_spec.unwrap();
    assert_eq!(container.labels.unwrap()["application"], "shop");
    assert_eq!(container.user.as_deref(), Some("10001"));
    assert_eq!(container.read_only, Some(true));
    assert_eq!(container.stop_grace_period, Some(10_000_000_000));
    assert_eq!(container.args.unwrap(), vec!["--threads", "1"]);
    assert_eq!(container.mounts.unwrap()[0].target.as_deref(), Some("/tmp"));
}

#[test]
fn exits_come_from_failed_tasks_lost_nodes_replacements_and_removals() {
    let down = HashMap::from([("node-b".to_owned(), "rblab-n2".to_owned())]);
    // Starting and running tasks on live nodes: nothing.
    assert_eq!(
        exit_of(&[task("node-a", TaskState::PREPARING, 1)], &down),
        None
    );
    assert_eq!(
        exit_of(&[task("node-a", TaskState::RUNNING, 2)], &down),
        None
    );
    assert_eq!(exit_of(&[], &down), None);
    // On a node that is down, even if Swarm still says running.
    let (reason, code) = exit_of(&[task("node-b", TaskState::RUNNING, 2)], &down).unwrap();
    assert_eq!((reason.as_str(), code), ("node rblab-n2 is down", None));
    // Swarm replaced the task.
    let replaced = [
        task("node-a", TaskState::SHUTDOWN, 2),
        task("node-c", TaskState::RUNNING, 5),
    ];
    assert!(exit_of(&replaced, &down).unwrap().0.contains("replaced"));
    // Ended, with the container's exit code.
    let mut failed = task("node-a", TaskState::FAILED, 3);
    let status = failed.status.as_mut().unwrap();
    status.err = Some("task: non-zero exit (3)".into());
    status.container_status = Some(bollard::models::ContainerStatus {
        exit_code: Some(3),
        ..Default::default()
    });
    let (reason, code) = exit_of(&[failed], &down).unwrap();
    assert_eq!(code, Some(3));
    assert!(
        reason.contains("failed") && reason.contains("exit code 3"),
        "{reason}"
    );

    // The view reports each exit once, and a service removed by someone else.
    let mut view = View::default();
    let services = HashMap::from([
        ("s1".to_owned(), "shop-worker-1".to_owned()),
        ("s2".to_owned(), "shop-worker-2".to_owned()),
    ]);
    let tasks = HashMap::from([
        ("s1".to_owned(), vec![task("node-a", TaskState::RUNNING, 1)]),
        ("s2".to_owned(), vec![task("node-b", TaskState::RUNNING, 1)]),
    ]);
    let ids = |events: Vec<RuntimeEvent>| -> Vec<String> {
        events
            .into_iter()
            .map(|RuntimeEvent::Exited { id, .. }| id)
            .collect()
    };
    let t0 = Instant::now();
    let at = |secs: u64| t0 + Duration::from_secs(secs);
    assert_eq!(
        ids(view.update(&services, &tasks, &HashMap::new(), at(0))),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(view.update(&services, &tasks, &down, at(1))),
        vec!["s2"]
    );
    assert_eq!(
        ids(view.update(&services, &tasks, &down, at(2))),
        Vec::<String>::new()
    );
    // Still there later: reported again (an agent that took the lead meanwhile hears it).
    assert_eq!(
        ids(view.update(&services, &tasks, &down, at(7))),
        vec!["s2"]
    );
    // s2 removed by the agent after its exit: not reported again; s1 removed by someone else.
    assert_eq!(
        ids(view.update(&HashMap::new(), &HashMap::new(), &down, at(8))),
        vec!["s1"]
    );
}

#[test]
fn a_shared_sample_keeps_its_counters_and_age() {
    let read = Instant::now();
    let sample = StatsSample {
        at: read,
        cpu_total_ns: 5_000_000,
        system_cpu_ns: 80_000_000,
        online_cpus: 2,
        memory_usage: 1 << 20,
        memory_cache: 1 << 10,
        memory_limit: 1 << 30,
        net_rx_bytes: 10,
        net_tx_bytes: 20,
    };
    let mut shared = SharedSample::new("node-a", &sample);
    let json = serde_json::to_string(&shared).unwrap();
    assert_eq!(serde_json::from_str::<SharedSample>(&json).unwrap(), shared);
    shared.at_ms -= 3_000;
    let back = shared.sample();
    assert_eq!(
        (back.cpu_total_ns, back.system_cpu_ns, back.online_cpus),
        (5_000_000, 80_000_000, 2)
    );
    assert_eq!((back.memory_usage, back.net_tx_bytes), (1 << 20, 20));
    let age = Instant::now() - back.at;
    assert!(age >= Duration::from_millis(2_900), "{age:?}");
}
