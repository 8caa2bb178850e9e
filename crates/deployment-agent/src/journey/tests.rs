use super::*;

#[test]
fn admin_urls_are_plain_http_base_urls() {
    let url = AdminUrl::parse("http://balancer:8001/").unwrap();
    assert_eq!(
        (url.text.as_str(), url.host.as_str(), url.port),
        ("http://balancer:8001", "balancer", 8001)
    );
    assert_eq!(url.authority, "balancer:8001");
    assert_eq!(AdminUrl::parse("http://tasks.balancer").unwrap().port, 80);
    let v6 = AdminUrl::parse("http://[::1]:8001").unwrap();
    assert_eq!(
        (v6.host.as_str(), v6.authority.as_str()),
        ("::1", "[::1]:8001")
    );
    for (bad, why) in [
        ("balancer:8001", "http://"),
        ("https://balancer:8001", "http://"),
        ("ws://balancer:8001", "http://"),
        ("http://balancer:8001/admin", "path"),
        ("http://balancer:8001/?x=1", "path"),
        ("http://user:pw@balancer:8001", "credentials"),
        ("http:// bad", "URL"),
    ] {
        let err = AdminUrl::parse(bad).unwrap_err();
        assert!(err.contains(why), "{bad}: {err}");
    }
}

#[test]
fn the_setting_is_validated_naming_the_variable() {
    let mut config = crate::config::Config::defaults();
    assert!(config.balancer_admin_urls.is_empty());
    config.balancer_admin_urls = vec!["http://balancer:8001".into(), " ".into()];
    let config = config.normalized();
    assert_eq!(config.balancer_admin_urls, ["http://balancer:8001"]);
    assert_eq!(config.validate(), Ok(()));
    let mut config = config;
    config.balancer_admin_urls.push("balancer:8001".into());
    let err = config.validate().unwrap_err();
    assert!(err.contains("BALANCER_ADMIN_URLS"), "{err}");
}

fn record() -> Value {
    json!({
        "id": "r1", "method": "POST", "path": "/submit", "status": 200,
        "started_at_ms": 1_764_540_000_000u64, "latency_ms": 12.5, "cache": "miss", "error": null,
        "attempts": [
            {"backend": "c1", "name": "app-worker-1", "address": "h:1", "started_at_ms": 1,
             "duration_ms": 1.0, "status": null, "outcome": "reset", "retry": "reset"},
            {"backend": "c2", "name": "app-worker-2", "address": "h:2", "started_at_ms": 2,
             "duration_ms": 1.0, "status": 200, "outcome": "answered", "retry": null},
            {"backend": "c1", "name": "app-worker-1", "address": "h:1", "started_at_ms": 3,
             "duration_ms": 1.0, "status": 200, "outcome": "answered", "retry": null},
        ],
        "backends": ["c1", "c2"],
    })
}

#[test]
fn each_touched_container_once_in_the_order_of_the_attempts() {
    let (started, containers) = touched(&record());
    assert_eq!(started, Some(1_764_540_000_000));
    let ids: Vec<&str> = containers.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["c1", "c2"]);
    assert_eq!(containers[1].name, "app-worker-2");
    // A record without attempts (a cache hit, a request refused) touches none.
    assert_eq!(touched(&json!({"id": "x"})).1, []);
    assert_eq!(touched(&json!({"attempts": "bad"})).1, []);
}

fn line(at_ms: Option<u64>, text: &str) -> LogLine {
    LogLine {
        at_ms,
        stream: "stderr",
        line: text.into(),
    }
}

#[test]
fn only_the_lines_with_the_id_are_kept_bounded() {
    let mut matches = Matches::new("r1");
    for (at, text) in [
        (1, "job started request_id=r1"),
        (2, "job started request_id=r2"),
        (3, "job done request_id=r1"),
    ] {
        assert!(matches.offer(line(Some(at), text)));
    }
    assert_eq!(matches.kept.len(), 2);
    assert!(!matches.more);
    let mut matches = Matches::new("r1");
    for i in 0..MAX_LINES_PER_CONTAINER as u64 {
        assert!(matches.offer(line(Some(i), "request_id=r1")));
    }
    assert!(matches.offer(line(Some(0), "request_id=r2")), "not a match");
    assert!(!matches.offer(line(Some(0), "request_id=r1")), "full");
    assert_eq!(matches.kept.len(), MAX_LINES_PER_CONTAINER);
    assert!(matches.more);
}

#[test]
fn lines_of_every_container_are_merged_in_time_order() {
    let c1 = Touched {
        id: "c1".into(),
        name: "w1".into(),
    };
    let c2 = Touched {
        id: "c2".into(),
        name: "w2".into(),
    };
    let merged = merge(vec![
        (
            c1,
            vec![line(Some(10), "a"), line(None, "b"), line(Some(30), "c")],
        ),
        (c2, vec![line(Some(20), "d")]),
    ]);
    let order: Vec<(&str, &str)> = merged
        .iter()
        .map(|l| (l.container.as_str(), l.line.as_str()))
        .collect();
    assert_eq!(order, [("c1", "a"), ("c2", "d"), ("c1", "c"), ("c1", "b")]);
    assert_eq!(merged[1].name, "w2");
}

/// A fake balancer admin port: `GET /requests/r1` answers `record` when given, else 404.
async fn fake_balancer(record: Option<Value>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: http::Request<_>| {
                    let found = request.uri().path() == "/requests/r1";
                    let answer = match (&record, found) {
                        (Some(record), true) => (200, record.to_string()),
                        _ => (404, r#"{"error":"unknown"}"#.to_owned()),
                    };
                    async move {
                        hyper::Response::builder()
                            .status(answer.0)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(answer.1)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

#[tokio::test]
async fn every_balancer_is_asked_and_the_one_that_has_it_answers() {
    let client = crate::forward::client();
    let without = fake_balancer(None).await;
    let with = fake_balancer(Some(record())).await;
    let closed = {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap()
    };
    let urls: Vec<AdminUrl> = [without, with, closed]
        .iter()
        .map(|address| AdminUrl::parse(&format!("http://{address}")).unwrap())
        .collect();
    let search = find_record(&client, &urls, "r1").await;
    let (balancer, found) = search.found.expect("found");
    assert_eq!(balancer, with);
    assert_eq!(found["id"], "r1");

    // Nobody has it: a 404 from those that answered, the closed port unreachable.
    let search = find_record(&client, &urls, "r2").await;
    assert!(search.found.is_none());
    assert_eq!(search.answered, 2);
    assert_eq!(search.unreachable.len(), 1, "{:?}", search.unreachable);
    assert_eq!(search.unreachable[0].url, format!("http://{closed}"));

    // A host that does not resolve is named by its URL.
    let unknown = AdminUrl::parse("http://no-such-host.invalid:8001").unwrap();
    let search = find_record(&client, &[unknown], "r1").await;
    assert_eq!(search.answered, 0);
    assert_eq!(
        search.unreachable[0].url,
        "http://no-such-host.invalid:8001"
    );
}
