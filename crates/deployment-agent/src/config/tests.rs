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
