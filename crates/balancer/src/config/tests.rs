use clap::Parser;

use super::*;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    config: Config,
}

fn parse(args: &[&str]) -> Result<Config, clap::Error> {
    Cli::try_parse_from(std::iter::once("balancer").chain(args.iter().copied())).map(|c| c.config)
}

#[test]
fn clap_defaults_match_default() {
    let parsed = parse(&[]).unwrap();
    assert_eq!(format!("{parsed:?}"), format!("{:?}", Config::default()));
}

#[test]
fn backend_addresses_parse_and_get_the_target_port() {
    let config = parse(&[
        "--backends",
        "worker-1:9000,worker-2, 127.0.0.1:81,http://10.0.0.1:82/,[::1]:83",
        "--target-port",
        "8081",
    ])
    .unwrap();
    assert_eq!(
        config.source(),
        Source::Static(vec![
            "worker-1:9000".into(),
            "worker-2:8081".into(),
            "127.0.0.1:81".into(),
            "10.0.0.1:82".into(),
            "[::1]:83".into(),
        ])
    );
    assert!(config.report_urls().is_empty());
}

#[test]
fn bad_values_name_the_variable() {
    for (args, variable) in [
        (&["--backends", "a:b"][..], "BACKENDS"),
        (&["--backends", "a/b:1"][..], "BACKENDS"),
        (&["--port", "http"][..], "HOST_PORT_HTTP_BALANCER"),
        (&["--request-timeout", "soon"][..], "REQUEST_TIMEOUT"),
        (&["--policy", "random"][..], "BALANCER_POLICY"),
        (&["--cache-capacity=-1"][..], "CACHE_CAPACITY"),
        (&["--agent-ws-url", "http://agent:9001"][..], "AGENT_WS_URL"),
        (&["--retry-budget-ratio", "lots"][..], "RETRY_BUDGET_RATIO"),
        (&["--deny-paths", "stop"][..], "BALANCER_DENY_PATHS"),
        (&["--body-read-timeout", "0s"][..], "BODY_READ_TIMEOUT"),
        (&["--retry-routes", "/submit"][..], "RETRY_ROUTES"),
        (&["--retry-buffer-bytes", "1MB"][..], "RETRY_BUFFER_BYTES"),
        (
            &["--agent-resolve-period", "0s"][..],
            "AGENT_RESOLVE_PERIOD",
        ),
        (
            &["--agent-resolve-period", "often"][..],
            "AGENT_RESOLVE_PERIOD",
        ),
    ] {
        let err = parse(args).unwrap_err().to_string();
        assert!(err.contains(variable), "{args:?}: {err}");
    }
}

#[test]
fn the_agent_is_derived_from_host_and_ports() {
    let config = Config::default();
    assert_eq!(
        config.source(),
        Source::Agent(vec!["ws://deployment-agent:9001/ws".into()])
    );
    assert_eq!(config.report_urls(), ["http://deployment-agent:9002"]);
    let config = parse(&["--agent-ws-url", "ws://10.1.2.3:7001/ws"]).unwrap();
    assert_eq!(
        config.source(),
        Source::Agent(vec!["ws://10.1.2.3:7001/ws".into()])
    );
    assert_eq!(config.report_urls(), ["http://10.1.2.3:9002"]);
}

#[test]
fn agent_lists_keep_their_order_and_derive_one_report_url_per_host() {
    let config = parse(&[
        "--agent-ws-urls",
        "ws://agent-1:9001/ws, ws://agent-2:9001/ws,ws://agent-2:7001/ws",
    ])
    .unwrap();
    assert_eq!(
        config.source(),
        Source::Agent(vec![
            "ws://agent-1:9001/ws".into(),
            "ws://agent-2:9001/ws".into(),
            "ws://agent-2:7001/ws".into(),
        ])
    );
    assert_eq!(
        config.report_urls(),
        ["http://agent-1:9002", "http://agent-2:9002"]
    );

    let config = parse(&[
        "--agent-ws-urls",
        "ws://agent-1:9001/ws,ws://agent-2:9001/ws",
        "--agent-grpc-urls",
        "http://agent-2:7002,http://agent-1:7002",
    ])
    .unwrap();
    assert_eq!(
        config.report_urls(),
        ["http://agent-2:7002", "http://agent-1:7002"]
    );

    // The singular forms are a list of one; with BACKENDS, reports only go where told.
    let config = parse(&["--agent-grpc-url", "http://agent:7002"]).unwrap();
    assert_eq!(config.report_urls(), ["http://agent:7002"]);
    let config = parse(&[
        "--backends",
        "w:1",
        "--agent-grpc-urls",
        "http://a:1,http://b:1",
    ])
    .unwrap();
    assert_eq!(config.report_urls(), ["http://a:1", "http://b:1"]);
}

#[test]
fn bad_agent_lists_name_the_variable() {
    for (args, variable) in [
        (
            &["--agent-ws-urls", "ws://a:9001/ws,http://b:9001"][..],
            "AGENT_WS_URLS",
        ),
        (
            &["--agent-ws-urls", "ws://a:9001/ws,,ws://b:9001/ws"][..],
            "AGENT_WS_URLS",
        ),
        (&["--agent-ws-urls", "wss://a:9001/ws"][..], "AGENT_WS_URLS"),
        (
            &["--agent-grpc-urls", "http://a:9002,ws://b:9002"][..],
            "AGENT_GRPC_URLS",
        ),
        (
            &["--agent-grpc-urls", "https://a:9002"][..],
            "AGENT_GRPC_URLS",
        ),
        (&["--agent-grpc-urls", "a:9002"][..], "AGENT_GRPC_URLS"),
    ] {
        let err = parse(args).unwrap_err().to_string();
        assert!(err.contains(variable), "{args:?}: {err}");
    }
}

#[test]
fn singular_and_plural_together_are_an_error_naming_both() {
    for (args, names) in [
        (
            &[
                "--agent-ws-url",
                "ws://a:1/ws",
                "--agent-ws-urls",
                "ws://b:1/ws",
            ][..],
            ["AGENT_WS_URL>", "AGENT_WS_URLS>"],
        ),
        (
            &[
                "--agent-grpc-urls",
                "http://b:1",
                "--agent-grpc-url",
                "http://a:1",
            ][..],
            ["AGENT_GRPC_URL>", "AGENT_GRPC_URLS>"],
        ),
        (
            &["--backends", "w:1", "--agent-ws-urls", "ws://b:1/ws"][..],
            ["BACKENDS>", "AGENT_WS_URLS>"],
        ),
    ] {
        let err = parse(args).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        let err = err.to_string();
        for name in names {
            assert!(err.contains(name), "{args:?}: {err}");
        }
    }
}

#[test]
fn durations_accept_the_seed_forms() {
    let config = parse(&["--request-timeout", "2", "--queue-timeout", "500ms"]).unwrap();
    assert_eq!(config.request_timeout, Duration::from_secs(2));
    assert_eq!(config.queue_timeout, Duration::from_millis(500));
}
