use super::*;

#[test]
fn defaults_are_valid_and_match_the_documentation() {
    let config = Config::defaults();
    assert_eq!(config.validate(), Ok(()));
    assert_eq!(
        (config.http_port, config.ws_port, config.grpc_port),
        (9000, 9001, 9002)
    );
    assert_eq!(config.start_count(), 1);
    assert_eq!(config.redis(), None);
    assert_eq!(config.scaling().cooldown_up, Duration::from_secs(45));
}

#[test]
fn start_count_prefers_default_container_then_initial_workers() {
    let mut config = Config::defaults();
    config.initial_workers = Some(3);
    assert_eq!(config.start_count(), 3);
    config.default_container = Some(2);
    assert_eq!(config.start_count(), 2);
    config.min_containers = 4;
    config.max_containers = 5;
    assert_eq!(config.start_count(), 4, "never below the minimum");
}

#[test]
fn redis_url_wins_over_host_and_port() {
    let mut config = Config::defaults();
    config.redis_host = Some("redis".into());
    assert_eq!(config.redis().as_deref(), Some("redis://redis:6379/"));
    config.redis_url = Some("redis://elsewhere:7000/2".into());
    assert_eq!(config.redis().as_deref(), Some("redis://elsewhere:7000/2"));
}

#[test]
fn relations_are_checked_naming_the_variable() {
    let mut config = Config::defaults();
    config.default_container = Some(50);
    assert!(config.validate().unwrap_err().contains("DEFAULT_CONTAINER"));
    let mut config = Config::defaults();
    config.ema_alpha = 0.0;
    assert!(config.validate().unwrap_err().contains("EMA_ALPHA"));
    let mut config = Config::defaults();
    config.app = "bad name".into();
    assert!(config.validate().unwrap_err().contains("APP_IDENTIFIER"));
}

#[test]
fn sizes_cores_and_env_lists_parse() {
    assert_eq!(parse_bytes("256m"), Ok(256 << 20));
    assert_eq!(parse_bytes("1g"), Ok(1 << 30));
    assert_eq!(parse_bytes("8388608"), Ok(8 << 20));
    assert!(parse_bytes("12q").is_err());
    assert!(parse_bytes("1k").is_err(), "too small to run anything");
    assert_eq!(parse_cpuset("1,2,3"), Ok(CpuSet(vec![1, 2, 3])));
    assert_eq!(parse_cpuset("0, 2-4,3"), Ok(CpuSet(vec![0, 2, 3, 4])));
    assert!(parse_cpuset("3-1").is_err());
    assert!(parse_cpuset("x").is_err());
    let mut config = Config::defaults();
    config.worker_cpuset = Some(parse_cpuset("").unwrap());
    assert_eq!(
        config.normalized().worker_cpuset,
        None,
        "empty means no pinning"
    );
    assert_eq!(
        parse_env_list("A=1,B=two"),
        Ok(EnvList(vec!["A=1".into(), "B=two".into()]))
    );
    assert!(parse_env_list("novalue").is_err());
}

#[test]
fn security_defaults_and_the_container_ceiling() {
    let config = Config::defaults();
    assert_eq!(
        config.access(),
        Access::Locked,
        "no token: nobody may change"
    );
    assert_eq!(config.cors_origins, "", "same origin only");
    assert_eq!(config.max_containers_limit, 100);
    assert_eq!(config.ws_max_subscribers, 256);
    assert_eq!(config.ws_send_timeout, Duration::from_secs(10));
    assert_eq!(config.logs_follow_max, Duration::from_secs(300));
    let mut config = Config::defaults();
    config.logs_follow_max = Duration::ZERO;
    let message = config.validate().unwrap_err();
    assert!(message.contains("LOGS_FOLLOW_MAX"), "{message}");
    let mut config = Config::defaults();
    config.insecure = true;
    assert_eq!(config.access(), Access::Open);
    config.token = Some("t".into());
    assert_eq!(config.access(), Access::Token("t".into()), "a token wins");
    config.token = Some(" t\n".into());
    assert_eq!(config.normalized().access(), Access::Token("t".into()));

    let mut config = Config::defaults();
    config.max_containers = 101;
    let message = config.validate().unwrap_err();
    assert!(
        message.contains("MAX_CONTAINERS (101)") && message.contains("MAX_CONTAINERS_LIMIT (100)"),
        "{message}"
    );
    config.max_containers_limit = 101;
    assert_eq!(config.validate(), Ok(()));
    config.ws_max_subscribers = 0;
    assert!(
        config
            .validate()
            .unwrap_err()
            .contains("WS_MAX_SUBSCRIBERS")
    );
}

#[test]
fn the_publish_interval_defaults_to_50ms_and_is_at_most_a_second() {
    let mut config = Config::defaults();
    assert_eq!(config.publish_interval, Duration::from_millis(50));
    config.publish_interval = Duration::ZERO;
    assert_eq!(config.validate(), Ok(()), "0s: every change at once");
    config.publish_interval = Duration::from_secs(1);
    assert_eq!(config.validate(), Ok(()));
    config.publish_interval = Duration::from_millis(1500);
    let message = config.validate().unwrap_err();
    assert!(
        message.contains("PUBLISH_INTERVAL must be at most 1s") && message.contains("1s 500ms"),
        "{message}"
    );
}

#[test]
fn probe_and_container_settings_parse_and_name_what_is_wrong() {
    let config = Config::defaults();
    assert_eq!(config.worker_probe, ProbeKind::Http);
    assert_eq!(config.worker_probe_path, "/health");
    assert_eq!(config.worker_probe_status.to_string(), "200-399");
    assert!(config.worker_command.0.is_empty() && config.worker_args.0.is_empty());
    assert_eq!(
        (config.crash_backoff_initial, config.crash_backoff_max),
        (Duration::from_secs(1), Duration::from_secs(60))
    );

    let ranges = parse_status_ranges("200-299, 404").unwrap();
    assert!(ranges.contains(204) && ranges.contains(404) && !ranges.contains(302));
    for bad in ["", "abc", "299-200", "99", "200-700"] {
        assert!(parse_status_ranges(bad).is_err(), "{bad}");
    }
    assert_eq!(
        parse_command(r#"["/bin/busybox", "httpd", "-f"]"#)
            .unwrap()
            .0,
        ["/bin/busybox", "httpd", "-f"]
    );
    assert_eq!(
        parse_command("  httpd -f  -p 8080 ").unwrap().0,
        ["httpd", "-f", "-p", "8080"]
    );
    assert!(parse_command("[\"unterminated").is_err());
    assert!(parse_command("[1, 2]").is_err());
    assert_eq!(
        parse_tmpfs("/tmp, /run:size=16m").unwrap().0,
        [
            ("/tmp".into(), String::new()),
            ("/run".into(), "size=16m".into())
        ]
    );
    for bad in ["tmp", "/", "/tmp,/tmp"] {
        assert!(parse_tmpfs(bad).is_err(), "{bad}");
    }
    assert_eq!(
        parse_labels("team=web, tier=front").unwrap().0,
        [
            ("team".into(), "web".into()),
            ("tier".into(), "front".into())
        ]
    );
    for bad in [
        "team",
        "=x",
        "application=other",
        "managed-by=me",
        "rustybalancer.core=1",
    ] {
        assert!(parse_labels(bad).is_err(), "{bad}");
    }
    assert!(parse_user("10001:10001").is_ok() && parse_user("nobody").is_ok());
    assert!(parse_user("a b").is_err() && parse_user("1:").is_err());
    assert!(parse_probe_path("health").is_err() && parse_probe_path("/ready?full=1").is_ok());
}

#[test]
fn docker_probe_needs_the_docker_runtime_and_the_backoff_is_ordered() {
    let mut config = Config::defaults();
    config.runtime = RuntimeKind::Process;
    config.worker_probe = ProbeKind::Docker;
    let err = config.validate().unwrap_err();
    assert!(err.contains("WORKER_PROBE"), "{err}");
    config.worker_probe = ProbeKind::Tcp;
    assert_eq!(config.validate(), Ok(()));
    config.crash_backoff_max = Duration::from_millis(500);
    let err = config.validate().unwrap_err();
    assert!(err.contains("CRASH_BACKOFF_MAX"), "{err}");
}

#[test]
fn leader_election_settings_default_to_one_agent_alone() {
    let config = Config::defaults();
    assert_eq!(config.agent_replicas, 1);
    assert_eq!(config.leader_lease, Duration::from_secs(3));
    assert!(!config.leader_election());
    assert_eq!(config.agent_id, None);
    assert!(!config.resolved_agent_id().is_empty(), "the hostname");
    assert_eq!(config.key_prefix(), "rustybalancer:rustybalancer");
    let urls = AgentUrls::new("127.0.0.1", 1, 2, 3);
    assert!(config.lease_config(urls, true).is_none(), "alone: no lease");
}

#[test]
fn several_agents_need_redis_and_a_lease_of_at_least_300ms() {
    let mut config = Config::defaults();
    config.agent_replicas = 2;
    let error = config.validate().unwrap_err();
    assert!(
        error.contains("AGENT_REPLICAS") && error.contains("REDIS_URL"),
        "{error}"
    );
    config.redis_url = Some("redis://redis:6379/0".into());
    assert_eq!(config.validate(), Ok(()));

    config.leader_lease = Duration::from_millis(299);
    assert!(config.validate().unwrap_err().contains("LEADER_LEASE"));
    config.leader_lease = Duration::from_millis(300);
    assert_eq!(config.validate(), Ok(()));

    config.agent_id = Some("a/1".into());
    assert!(config.validate().unwrap_err().contains("AGENT_ID"));
    config.agent_id = Some("agent-1".into());
    config.advertise_host = Some("http://x".into());
    assert!(
        config
            .validate()
            .unwrap_err()
            .contains("AGENT_ADVERTISE_HOST")
    );
}

#[test]
fn the_lease_config_carries_the_redis_url_prefix_id_and_lease() {
    let mut config = Config::defaults();
    config.agent_replicas = 2;
    config.redis_host = Some("redis".into());
    config.app = "shop".into();
    config.agent_id = Some("a1".into());
    config.leader_lease = Duration::from_millis(900);
    let urls = AgentUrls::new("10.0.0.2", 9000, 9001, 9002);
    let lease = config.lease_config(urls.clone(), true).unwrap();
    assert_eq!(lease.redis_url, "redis://redis:6379/");
    assert_eq!(lease.prefix, "rustybalancer:shop");
    assert_eq!(lease.agent_id, "a1");
    assert_eq!(lease.lease, Duration::from_millis(900));
    assert_eq!(lease.urls, urls);
}

#[test]
fn empty_agent_id_and_advertise_host_mean_unset() {
    let mut config = Config::defaults();
    config.agent_id = Some(" ".into());
    config.advertise_host = Some(String::new());
    let config = config.normalized();
    assert_eq!(config.agent_id, None);
    assert_eq!(config.advertise_host, None);
}

#[tokio::test]
async fn advertised_urls_use_the_host_given_else_the_route_to_redis() {
    let mut config = Config::defaults();
    config.advertise_host = Some("agent-1.internal".into());
    let urls = config.advertised_urls(9000, 9001, 9002).await;
    assert_eq!(urls.http, "http://agent-1.internal:9000");
    assert_eq!(urls.ws, "ws://agent-1.internal:9001/ws");
    assert_eq!(urls.grpc, "http://agent-1.internal:9002");

    // Redis on loopback (nothing needs to listen: no packet is sent).
    config.advertise_host = None;
    config.redis_url = Some("redis://127.0.0.1:6399/0".into());
    let urls = config.advertised_urls(1, 2, 3).await;
    assert_eq!(urls.http, "http://127.0.0.1:1");
    config.redis_url = None;
    assert_eq!(
        config.advertised_urls(1, 2, 3).await.grpc,
        "http://127.0.0.1:3",
        "no redis: loopback"
    );
}

#[test]
fn the_swarm_runtime_needs_redis_an_overlay_and_no_standbys() {
    let swarm = || {
        let mut config = Config::defaults();
        config.runtime = RuntimeKind::Swarm;
        config.redis_url = Some("redis://redis:6379".into());
        config.network = Some("rustybalancer-workers".into());
        config.warm_pool = 0;
        config.worker_probe = ProbeKind::Http;
        config
    };
    assert_eq!(swarm().validate(), Ok(()));
    let mut config = swarm();
    config.redis_url = None;
    assert!(config.validate().unwrap_err().contains("REDIS_URL"));
    let mut config = swarm();
    config.network = None;
    assert!(config.validate().unwrap_err().contains("AGENT_NETWORK"));
    let mut config = swarm();
    config.warm_pool = 1;
    assert!(config.validate().unwrap_err().contains("WARM_POOL"));
    let mut config = swarm();
    config.worker_probe = ProbeKind::Docker;
    assert!(config.validate().unwrap_err().contains("WORKER_PROBE"));
    let mut config = swarm();
    config.worker_cpuset = Some(CpuSet(vec![0]));
    assert!(config.validate().unwrap_err().contains("WORKER_CPUSET"));

    assert_eq!(
        parse_constraint(" node.role==worker "),
        Ok("node.role==worker".into())
    );
    assert!(parse_constraint("node.labels.pool!=gpu").is_ok());
    for bad in ["node.role", "==worker", "node.role==", "node role==x"] {
        assert!(parse_constraint(bad).is_err(), "{bad}");
    }
    assert_eq!(parse_constraint(""), Ok(String::new()));
    let mut config = swarm();
    config.worker_constraints = vec![String::new()];
    assert!(
        config.normalized().worker_constraints.is_empty(),
        "unset: none"
    );
    let mut config = Config::defaults();
    config.worker_constraints = vec!["node.role==worker".into()];
    assert!(
        config
            .validate()
            .unwrap_err()
            .contains("WORKER_CONSTRAINTS")
    );
}

#[test]
fn worker_concurrency_is_set_or_derived_from_the_cpu_limit() {
    assert_eq!(
        parse_worker_concurrency(""),
        Ok(WorkerConcurrency::FromCpuLimit),
        "empty (compose's unset variable) is unset"
    );
    assert_eq!(
        parse_worker_concurrency(" 4 "),
        Ok(WorkerConcurrency::Fixed(4))
    );
    assert_eq!(
        parse_worker_concurrency("0"),
        Ok(WorkerConcurrency::Fixed(0))
    );
    for bad in ["-1", "1.5", "four"] {
        let message = parse_worker_concurrency(bad).unwrap_err();
        assert!(message.contains("unlimited"), "{bad}: {message}");
    }
    let config = Config::defaults();
    assert_eq!(config.worker_concurrency, WorkerConcurrency::FromCpuLimit);
    assert_eq!(config.target_work_seconds, 2.0);

    let derived = |cpus, pinned| worker_concurrency(WorkerConcurrency::FromCpuLimit, cpus, pinned);
    assert_eq!(derived(None, false), 0, "unknown: unlimited");
    assert_eq!(derived(Some(0.5), false), 1);
    assert_eq!(derived(Some(2.0), false), 2);
    assert_eq!(derived(Some(2.5), false), 3);
    assert_eq!(derived(None, true), 1, "one pinned core");
    assert_eq!(
        derived(Some(3.0), true),
        1,
        "the quota is capped by the pinned core"
    );
    assert_eq!(
        worker_concurrency(WorkerConcurrency::Fixed(6), Some(2.0), true),
        6
    );
    assert_eq!(
        worker_concurrency(WorkerConcurrency::Fixed(0), Some(2.0), false),
        0
    );
}

#[test]
fn the_work_signal_counts_the_cpus_of_a_worker_and_needs_a_positive_target() {
    let mut config = Config::defaults();
    assert_eq!(config.scaling().worker_cpus, 1.0, "unknown: one CPU");
    config.worker_cpus = Some(2.0);
    assert_eq!(config.scaling().worker_cpus, 2.0);
    assert_eq!(config.scaling().work_per_container(), 4.0);
    config.worker_cpuset = Some(parse_cpuset("1-3").unwrap());
    assert_eq!(config.scaling().worker_cpus, 1.0, "pinned: one core each");
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        config.target_work_seconds = bad;
        assert!(
            config
                .validate()
                .unwrap_err()
                .contains("TARGET_WORK_SECONDS"),
            "{bad}"
        );
    }
}
