//! The HTTP/1.1 fast path against hyper (issue #16): the same generated and adversarial
//! requests, byte for byte, through a balancer on the fast path and through one on hyper
//! only, to the same recording backend. The backend must see the same requests (normalised:
//! header names lowercased and sorted, the values of one name in order, the request ids each
//! balancer makes replaced by one placeholder) and the client the
//! same statuses; or the fast path refuses (400, 431) where hyper passes the request on.
//! Smuggling vectors, CL/TE combinations, bad chunk sizes, obs-fold, bare LF, huge and many
//! headers, pipelined requests and half-closed connections among them.

mod support;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{CancellationToken, serve::ServeOptions};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use support::{TestBalancer, static_config};

/// A backend that records every request it gets, as hyper parsed it, and answers `ok`.
struct Recorder {
    address: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    shutdown: CancellationToken,
}

impl Recorder {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let shutdown = CancellationToken::new();
        let service = {
            let seen = Arc::clone(&seen);
            tower::service_fn(move |request: Request<Incoming>| {
                let seen = Arc::clone(&seen);
                async move {
                    let (parts, body) = request.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|body| body.to_bytes())
                        .unwrap_or_default();
                    let mut headers: Vec<(String, String)> = parts
                        .headers
                        .iter()
                        .map(|(name, value)| {
                            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                            // Each balancer makes its own ids (32 hex digits): the same
                            // request is recorded with the same placeholder.
                            let made =
                                value.len() == 32 && value.bytes().all(|b| b.is_ascii_hexdigit());
                            let value = if name == "x-request-id" && made {
                                "<made>".to_owned()
                            } else {
                                value
                            };
                            (name.as_str().to_owned(), value)
                        })
                        .collect();
                    // Stable: the values of one name keep their order.
                    headers.sort_by(|a, b| a.0.cmp(&b.0));
                    seen.lock().unwrap().push(format!(
                        "{} {} {:?}\n{headers:?}\n{:?}",
                        parts.method,
                        parts.uri,
                        parts.version,
                        String::from_utf8_lossy(&body)
                    ));
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                }
            })
        };
        tokio::spawn(common::serve::serve(
            listener,
            service,
            ServeOptions::default(),
            shutdown.clone(),
            CancellationToken::new(),
        ));
        Self {
            address,
            seen,
            shutdown,
        }
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// One case: its bytes, and whether the client half-closes after sending them.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    half_close: bool,
}

fn case(name: &'static str, bytes: impl AsRef<[u8]>) -> Case {
    Case {
        name,
        bytes: bytes.as_ref().to_vec(),
        half_close: false,
    }
}

fn cases() -> Vec<Case> {
    let many: String = (0..150).map(|i| format!("x-h{i}: {i}\r\n")).collect();
    let some: String = (0..40)
        .map(|i| format!("X-Field-{i}: value {i}\r\n"))
        .collect();
    let huge = "a".repeat(40 << 10);
    let mut cases = vec![
        case("get", "GET /a?b=1 HTTP/1.1\r\nHost: t\r\n\r\n"),
        case(
            "get with many fields",
            format!("GET /x HTTP/1.1\r\nHost: t\r\n{some}Accept: */*\r\n\r\n"),
        ),
        case("head", "HEAD /a HTTP/1.1\r\nHost: t\r\n\r\n"),
        case(
            "post with a length",
            "POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
        ),
        case(
            "post chunked",
            "POST /p HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        case(
            "post chunked with an extension, then a get",
            "POST /p HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3;a=b\r\nhel\r\n2\r\nlo\r\n0\r\n\r\nGET /after HTTP/1.1\r\nHost: t\r\n\r\n",
        ),
        case(
            // Alone: hyper's path then answers a pipelined request only after a timeout.
            "post chunked with a trailer",
            "POST /p HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\nX-T: 1\r\n\r\n",
        ),
        case(
            "post chunked, larger than the fast path buffers",
            format!(
                "POST /p HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n11800\r\n{}\r\n0\r\n\r\n",
                "b".repeat(0x11800)
            ),
        ),
        case(
            "CL then TE, smuggling a request",
            "POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
        ),
        case(
            "TE then CL, smuggling a request",
            "POST /p HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
        ),
        case(
            "two different lengths",
            "POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        ),
        case(
            "two equal lengths",
            "POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        ),
        case(
            "a signed length",
            "POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nhello",
        ),
        case(
            "a length with a space inside",
            "POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 1 0\r\n\r\nhellohello",
        ),
        case(
            "gzip then chunked",
            "POST /p HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        case(
            "chunked then gzip",
            "POST /p HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        case(
            "a space before the colon",
            "POST /p HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        case(
            "a 0x chunk size",
            "POST /p HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        ),
        case(
            "a chunk size past u64",
            "POST /p HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        ),
        case(
            "obs-fold",
            "GET / HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n  folded\r\n\r\n",
        ),
        case("bare LF", "GET / HTTP/1.1\nHost: t\n\n"),
        case(
            "a huge field",
            format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {huge}\r\n\r\n"),
        ),
        case(
            "too many fields",
            format!("GET / HTTP/1.1\r\nHost: t\r\n{many}\r\n"),
        ),
        case(
            "pipelined GETs",
            "GET /1 HTTP/1.1\r\nHost: t\r\n\r\nGET /2 HTTP/1.1\r\nHost: t\r\n\r\n",
        ),
        case(
            "pipelined POST and GET",
            "POST /1 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabcGET /2 HTTP/1.1\r\nHost: t\r\n\r\n",
        ),
        case("HTTP/1.0", "GET /old HTTP/1.0\r\nHost: t\r\n\r\n"),
        case(
            "absolute form",
            "GET http://t/abs HTTP/1.1\r\nHost: t\r\n\r\n",
        ),
        case("no Host", "GET / HTTP/1.1\r\n\r\n"),
        case("two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        case(
            "Connection: close",
            "GET /c HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\nGET /after HTTP/1.1\r\nHost: t\r\n\r\n",
        ),
        case(
            "Connection names a field",
            "GET / HTTP/1.1\r\nHost: t\r\nConnection: x-secret, keep-alive\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\n\r\n",
        ),
        case(
            "X-Forwarded-* from the client",
            "GET / HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 10.9.8.7\r\nX-Forwarded-Host: evil\r\nX-Forwarded-Proto: https\r\n\r\n",
        ),
        case(
            "Expect: 100-continue",
            "POST /e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
        ),
        case(
            "a NUL in a value",
            "GET / HTTP/1.1\r\nHost: t\r\nX-A: a\0b\r\n\r\n",
        ),
        case("no version", "GET /\r\nHost: t\r\n\r\n"),
        case("h2c preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    ];
    cases.push(Case {
        name: "half-closed after a GET",
        bytes: b"GET /half HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
        half_close: true,
    });
    cases.push(Case {
        name: "post chunked, cut off before its end",
        bytes: b"POST /p HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"
            .to_vec(),
        half_close: true,
    });
    cases
}

/// Sends a case's bytes on a new connection and reads until the balancer closes it or stays
/// silent for a moment; the statuses of the answers, in order.
async fn statuses(balancer: SocketAddr, case: &Case) -> Vec<u16> {
    let mut stream = TcpStream::connect(balancer).await.unwrap();
    stream.write_all(&case.bytes).await.unwrap();
    if case.half_close {
        stream.shutdown().await.unwrap();
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        match tokio::time::timeout(Duration::from_millis(700), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let mut found = Vec::new();
    let mut at = 0usize;
    while let Some(offset) = find(&answer[at..], b"HTTP/1.") {
        // A status line; the bodies here (`ok`, JSON errors) never hold one.
        let start = at + offset;
        if let Some(code) = answer
            .get(start + 9..start + 12)
            .and_then(|code| std::str::from_utf8(code).ok())
            .and_then(|code| code.parse().ok())
        {
            found.push(code);
        }
        at = start + 7;
    }
    found
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_path_forwards_what_hyper_forwards_or_refuses() {
    let recorder = Recorder::start().await;
    let config = || static_config(&[recorder.address]);
    let fast = TestBalancer::start_as_configured(balancer::Config {
        http1_fast_path: true,
        ..config()
    })
    .await;
    let hyper = TestBalancer::start_as_configured(balancer::Config {
        http1_fast_path: false,
        ..config()
    })
    .await;
    fast.wait_ready().await;
    hyper.wait_ready().await;

    let mut stricter = Vec::new();
    let mut differ = Vec::new();
    for case in cases() {
        recorder.take();
        let fast_statuses = statuses(fast.address, &case).await;
        let fast_seen = recorder.take();
        let hyper_statuses = statuses(hyper.address, &case).await;
        let hyper_seen = recorder.take();
        println!(
            "{}: fast {fast_statuses:?} ({} forwarded), hyper {hyper_statuses:?} ({} forwarded)",
            case.name,
            fast_seen.len(),
            hyper_seen.len()
        );
        if fast_statuses == hyper_statuses && fast_seen == hyper_seen {
            continue;
        }
        // Stricter is allowed: the fast path refuses a request and closes, forwarding only
        // what came before it.
        let refused = fast_statuses
            .last()
            .is_some_and(|status| matches!(status, 400 | 431))
            && hyper_seen.starts_with(&fast_seen)
            && fast_statuses.len() <= fast_seen.len() + 1;
        if refused {
            stricter.push(case.name);
        } else {
            differ.push(format!(
                "{}:\n  fast  {fast_statuses:?} {fast_seen:#?}\n  hyper {hyper_statuses:?} {hyper_seen:#?}",
                case.name
            ));
        }
    }
    println!("the fast path refuses where hyper forwards: {stricter:?}");
    assert!(
        differ.is_empty(),
        "the paths differ:\n{}",
        differ.join("\n")
    );
    // Each path did the work: the fast one answered the common cases itself and handed the
    // rest to hyper, by reason; the other never took the fast path.
    let text = fast.metrics().await;
    let served = support::metric(&text, "balancer_http1_fast_path_requests_total");
    assert!(served >= 20, "the fast path answered {served} requests");
    for reason in [
        "version",
        "h2c",
        "target_form",
        "expect",
        "host",
        "transfer_coding",
        "large_body",
    ] {
        let name = format!("balancer_http1_fallbacks_total{{reason=\"{reason}\"}}");
        assert!(
            support::metric(&text, &name) >= 1,
            "no fallback for {reason}"
        );
    }
    let text = hyper.metrics().await;
    assert_eq!(
        support::metric(&text, "balancer_http1_fast_path_requests_total"),
        0
    );
    // The common cases go through the fast path unchanged (not refused).
    for common in ["get", "post with a length", "pipelined GETs", "head"] {
        assert!(
            !stricter.contains(&common),
            "the fast path refused {common}"
        );
    }
}

/// A backend that answers every request with the bytes it is given (then closes if told).
struct Canned {
    address: SocketAddr,
    answer: Arc<Mutex<(Vec<u8>, bool)>>,
    task: tokio::task::JoinHandle<()>,
}

impl Canned {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let answer = Arc::new(Mutex::new((Vec::new(), false)));
        let canned = Arc::clone(&answer);
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let canned = Arc::clone(&canned);
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let Ok(n) = stream.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&buf[..n]);
                        while let Some(end) = find(&request, b"\r\n\r\n") {
                            request.drain(..end + 4);
                            let (bytes, close) = canned.lock().unwrap().clone();
                            if stream.write_all(&bytes).await.is_err() || close {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Self {
            address,
            answer,
            task,
        }
    }
}

impl Drop for Canned {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_path_relays_answers_as_hyper_does() {
    let backend = Canned::start().await;
    let config = || static_config(&[backend.address]);
    let fast = TestBalancer::start_as_configured(balancer::Config {
        http1_fast_path: true,
        cache_capacity: 0,
        ..config()
    })
    .await;
    let hyper = TestBalancer::start_as_configured(balancer::Config {
        http1_fast_path: false,
        cache_capacity: 0,
        ..config()
    })
    .await;
    let answers: [(&str, &[u8], bool); 10] = [
        ("a length", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false),
        (
            "chunked",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            false,
        ),
        (
            "chunked with an extension and trailers",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
            false,
        ),
        ("read to the close", b"HTTP/1.1 200 OK\r\n\r\nhello world", true),
        ("204", b"HTTP/1.1 204 No Content\r\n\r\n", false),
        (
            "an interim 103 first",
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            false,
        ),
        (
            "Connection: close",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
            true,
        ),
        ("a 503", b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy", false),
        (
            "a length that is no number",
            b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nhello",
            true,
        ),
        ("bare LF", b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", false),
    ];
    let client = reqwest::Client::new();
    for (name, bytes, close) in answers {
        *backend.answer.lock().unwrap() = (bytes.to_vec(), close);
        let mut got = Vec::new();
        for balancer in [&fast, &hyper] {
            let mut seen = Vec::new();
            // Twice: the second request may reuse the first's upstream connection.
            for _ in 0..2 {
                let response = client.get(balancer.url("/x")).send().await.unwrap();
                let status = response.status().as_u16();
                let body = response.text().await.unwrap_or_else(|err| format!("{err}"));
                seen.push((status, body));
            }
            got.push(seen);
        }
        println!("{name}: fast {:?}, hyper {:?}", got[0], got[1]);
        let stricter = got[0].iter().all(|(status, _)| *status == 502) && name == "bare LF";
        assert!(
            got[0] == got[1] || stricter,
            "{name}: fast {:?}, hyper {:?}",
            got[0],
            got[1]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_cors_a_browsers_request_goes_to_hyper_and_the_rest_stays_fast() {
    let recorder = Recorder::start().await;
    let parsed = support::parsed_config(&["--cors-origins", "*"]);
    let balancer = TestBalancer::start_as_configured(balancer::Config {
        http1_fast_path: true,
        cors: parsed.cors,
        ..static_config(&[recorder.address])
    })
    .await;
    balancer.wait_ready().await;
    // The counters as they settle: a request is counted once its answer is relayed, just
    // after the client has it.
    let counted = &balancer;
    let served = |expected: (u64, u64)| async move {
        let mut last = (0, 0);
        for _ in 0..100 {
            let text = counted.metrics().await;
            last = (
                support::metric(&text, "balancer_http1_fast_path_requests_total"),
                support::metric(&text, "balancer_http1_fallbacks_total{reason=\"cors\"}"),
            );
            if last == expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        last
    };
    let client = reqwest::Client::new();
    let plain = client.get(balancer.url("/plain")).send().await.unwrap();
    assert_eq!(plain.status(), 200);
    assert!(plain.headers().get("access-control-allow-origin").is_none());
    assert_eq!(
        served((1, 0)).await,
        (1, 0),
        "a request without Origin stays fast"
    );

    let browser = reqwest::Client::new()
        .get(balancer.url("/page"))
        .header("origin", "http://dashboard.example")
        .send()
        .await
        .unwrap();
    assert_eq!(browser.status(), 200);
    assert!(
        browser
            .headers()
            .get("access-control-allow-origin")
            .is_some(),
        "{:?}",
        browser.headers()
    );
    assert_eq!(
        served((1, 1)).await,
        (1, 1),
        "a browser's request went to hyper"
    );
    assert_eq!(recorder.take().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_request_body_stays_on_the_fast_path_relayed_as_sent() {
    // A backend that keeps the raw bytes of each request it reads, up to the chunked body's
    // final CRLF after its trailer, and answers `ok`.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let raw = Arc::new(Mutex::new(Vec::<u8>::new()));
    let kept = Arc::clone(&raw);
    let backend = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let kept = Arc::clone(&kept);
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    if got.ends_with(b"0\r\nX-T: 1\r\n\r\n") {
                        kept.lock().unwrap().extend_from_slice(&got);
                        got.clear();
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let balancer = TestBalancer::start_as_configured(balancer::Config {
        http1_fast_path: true,
        ..static_config(&[address])
    })
    .await;
    balancer.wait_ready().await;

    let body = "3;a=b\r\nhel\r\n2\r\nlo\r\n0\r\nX-T: 1\r\n\r\n";
    let request = format!(
        "POST /p HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{body}\
         POST /bad HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n"
    );
    let statuses = statuses(
        balancer.address,
        &Case {
            name: "chunked",
            bytes: request.into_bytes(),
            half_close: false,
        },
    )
    .await;
    // The first relayed and answered; the second's chunk size is not hex: 400, closed.
    assert_eq!(statuses, [200, 400]);
    let raw = String::from_utf8(raw.lock().unwrap().clone()).unwrap();
    assert!(raw.starts_with("POST /p HTTP/1.1\r\n"), "{raw}");
    assert!(
        raw.to_ascii_lowercase()
            .contains("\r\ntransfer-encoding: chunked\r\n"),
        "{raw}"
    );
    assert!(
        raw.ends_with(&format!("\r\n\r\n{body}")),
        "the body with its extension and trailer, as sent: {raw}"
    );
    assert!(!raw.contains("/bad"), "{raw}");

    // Counted once each answer is relayed, just after the client has it: polled.
    let mut text = balancer.metrics().await;
    for _ in 0..100 {
        if support::metric(&text, "balancer_http1_fast_path_requests_total") == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        text = balancer.metrics().await;
    }
    assert_eq!(
        support::metric(&text, "balancer_http1_fast_path_requests_total"),
        2
    );
    assert!(
        !text
            .lines()
            .any(|line| line.starts_with("balancer_http1_fallbacks_total") && !line.ends_with(" 0")),
        "nothing went to hyper:\n{text}"
    );
    backend.abort();
}
