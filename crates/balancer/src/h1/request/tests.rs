use super::*;

fn parse(buf: &[u8]) -> Result<Parsed<RequestHead>, Refusal> {
    parse_request(buf, Limits::default())
}

fn complete(buf: &[u8]) -> (RequestHead, usize) {
    match parse(buf) {
        Ok(Parsed::Complete { head, len }) => (head, len),
        other => panic!("not complete: {other:?}"),
    }
}

fn fallback(buf: &[u8]) -> Fallback {
    match parse(buf) {
        Ok(Parsed::Fallback(why)) => why,
        other => panic!("no fallback: {other:?}"),
    }
}

fn refused(buf: &[u8]) -> u16 {
    match parse(buf) {
        Err(refusal) => refusal.status,
        other => panic!("not refused: {other:?}"),
    }
}

/// What `httparse` alone says of `buf` (complete or not, or an error).
fn httparse_accepts(buf: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    httparse::Request::new(&mut headers).parse(buf).is_ok()
}

#[test]
fn a_plain_get() {
    let buf = b"GET /a?b=c HTTP/1.1\r\nHost: shop.example\r\nAccept: */*\r\n\r\n";
    let (head, len) = complete(buf);
    assert_eq!(len, buf.len());
    assert_eq!(head.method.of(buf), b"GET");
    assert_eq!(head.target.of(buf), b"/a?b=c");
    assert_eq!(head.host.of(buf), b"shop.example");
    assert_eq!(head.framing, Framing::None);
    assert_eq!(head.headers.as_slice().len(), 2);
    assert_eq!(head.headers.as_slice()[1].value.of(buf), b"*/*");
    assert!(!head.connection.close);
}

#[test]
fn partial_heads_wait() {
    let buf = b"GET / HTTP/1.1\r\nHost: a\r\n";
    for end in 0..buf.len() {
        assert!(matches!(parse(&buf[..end]), Ok(Parsed::Partial)), "{end}");
    }
}

#[test]
fn pipelined_requests_are_left_alone() {
    let first = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n";
    let second = b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n";
    let buf = [&first[..], &second[..]].concat();
    let (_, len) = complete(&buf);
    assert_eq!(len, first.len());
    let (head, len) = complete(&buf[len..]);
    assert_eq!(len, second.len());
    assert_eq!(head.target.of(&buf[first.len()..]), b"/2");
}

#[test]
fn content_length_frames_the_body() {
    let buf = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
    let (head, len) = complete(buf);
    assert_eq!(head.framing, Framing::Length(5));
    assert_eq!(&buf[len..], b"hello");
    let (head, _) =
        complete(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n");
    assert_eq!(head.framing, Framing::Length(5));
    let (head, _) = complete(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n");
    assert_eq!(head.framing, Framing::Length(5));
    let (head, _) = complete(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(head.framing, Framing::None);
}

#[test]
fn bad_content_lengths_are_refused() {
    for value in [
        "-1",
        "+5",
        "5 5",
        "0x10",
        "",
        "5, 6",
        "18446744073709551616",
        "ffffffffffffffffff",
    ] {
        let buf = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {value}\r\n\r\n");
        assert_eq!(refused(buf.as_bytes()), 400, "{value:?}");
    }
    // Duplicate fields that differ.
    assert_eq!(
        refused(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
        400
    );
}

#[test]
fn chunked_frames_the_body() {
    for value in ["chunked", "Chunked", "CHUNKED"] {
        let buf = format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {value}\r\n\r\n");
        assert_eq!(complete(buf.as_bytes()).0.framing, Framing::Chunked);
    }
}

#[test]
fn smuggling_vectors_are_refused() {
    // CL.TE and TE.CL.
    assert_eq!(
        refused(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG"),
        400
    );
    assert_eq!(
        refused(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"),
        400
    );
    // A final coding that is not chunked.
    for value in [
        "chunked, identity",
        "identity",
        "chunked, chunked",
        "chunked,",
        "xchunked",
        "chunked;q=1",
    ] {
        let buf = format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {value}\r\n\r\n");
        assert_eq!(refused(buf.as_bytes()), 400, "{value:?}");
    }
    // Two fields that add up to chunked twice.
    assert_eq!(
        refused(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
        400
    );
    // Whitespace before the colon: httparse's strict default refuses it.
    let spaced = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n";
    assert!(!httparse_accepts(spaced));
    assert_eq!(refused(spaced), 400);
    // A vertical tab or other control byte in a value.
    assert_eq!(
        refused(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \x0bchunked\r\n\r\n"),
        400
    );
}

#[test]
fn other_codings_before_chunked_go_to_hyper() {
    assert_eq!(
        fallback(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
        Fallback::TransferCoding
    );
}

#[test]
fn bare_lf_and_obs_fold_are_refused() {
    // httparse takes a bare LF; the fast path does not.
    let bare = b"GET / HTTP/1.1\nHost: a\n\n";
    assert!(httparse_accepts(bare));
    assert_eq!(refused(bare), 400);
    assert_eq!(refused(b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n"), 400);
    // Refused before the head is complete, too.
    assert_eq!(refused(b"GET / HTTP/1.1\r\nHost: a\nX: y"), 400);
    // A lone CR.
    assert_eq!(refused(b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n"), 400);
    // Obs-fold.
    let folded = b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: one\r\n two\r\n\r\n";
    assert!(!httparse_accepts(folded));
    assert_eq!(refused(folded), 400);
    // Bad name bytes.
    assert_eq!(
        refused(b"GET / HTTP/1.1\r\nHost: a\r\nX(y): z\r\n\r\n"),
        400
    );
    assert_eq!(refused(b"GET / HTTP/1.1\r\nHost: a\r\n: z\r\n\r\n"), 400);
    assert_eq!(
        refused(b"GET / HTTP/1.1\r\nHost: a\r\nX: \x00\r\n\r\n"),
        400
    );
}

#[test]
fn huge_and_many_headers_are_431() {
    let limits = Limits {
        max_head_bytes: 1024,
        max_headers: 10,
    };
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
        "v".repeat(2000)
    );
    assert_eq!(
        parse_request(big.as_bytes(), limits).unwrap_err().status,
        431
    );
    // Still partial, but already past the limit.
    assert_eq!(
        parse_request(&big.as_bytes()[..1500], limits)
            .unwrap_err()
            .status,
        431
    );
    let many: String = (0..11).map(|i| format!("X-{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
    assert_eq!(
        parse_request(many.as_bytes(), limits).unwrap_err().status,
        431
    );
    let lots: String = (0..200).map(|i| format!("X-{i}: v\r\n")).collect();
    let lots = format!("GET / HTTP/1.1\r\nHost: a\r\n{lots}\r\n");
    assert_eq!(refused(lots.as_bytes()), 431);
    // At the limit exactly: fine.
    let nine: String = (0..9).map(|i| format!("X-{i}: v\r\n")).collect();
    let nine = format!("GET / HTTP/1.1\r\nHost: a\r\n{nine}\r\n");
    assert!(matches!(
        parse_request(nine.as_bytes(), limits),
        Ok(Parsed::Complete { .. })
    ));
}

#[test]
fn what_hyper_handles() {
    assert_eq!(
        fallback(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n"),
        Fallback::Version
    );
    assert_eq!(
        fallback(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"),
        Fallback::Version
    );
    assert_eq!(
        fallback(b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n"),
        Fallback::TargetForm
    );
    assert_eq!(
        fallback(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"),
        Fallback::TargetForm
    );
    assert_eq!(
        fallback(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"),
        Fallback::Connect
    );
    assert_eq!(
        fallback(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
        Fallback::Upgrade
    );
    assert_eq!(
        fallback(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, upgrade\r\n\r\n"),
        Fallback::Upgrade
    );
    assert_eq!(
        fallback(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\r\n"),
        Fallback::Upgrade
    );
    assert_eq!(
        fallback(
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n"
        ),
        Fallback::Expect
    );
    assert_eq!(
        fallback(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: anything\r\n\r\n"),
        Fallback::Expect
    );
    assert_eq!(fallback(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Fallback::H2c);
    assert!(matches!(parse(b"PRI * HT"), Ok(Parsed::Partial)));
    assert_eq!(fallback(b"GET / HTTP/1.1\r\n\r\n"), Fallback::Host);
    assert_eq!(
        fallback(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        Fallback::Host
    );
    let tokens: String = (0..20).map(|i| format!("x-{i}, ")).collect();
    let buf = format!("GET / HTTP/1.1\r\nHost: a\r\nConnection: {tokens}close\r\n\r\n");
    assert_eq!(fallback(buf.as_bytes()), Fallback::ConnectionTokens);
}

#[test]
fn connection_tokens_are_kept() {
    let buf =
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Hop\r\nConnection: keep-alive\r\n\r\n";
    let (head, _) = complete(buf);
    assert!(head.connection.close);
    assert!(head.connection.keep_alive);
    assert!(head.connection.names(buf, b"x-hop"));
}

#[test]
fn garbage_is_never_a_head() {
    for buf in [
        &b"\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b" / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1 \r\n\r\n",
        b"G\x00T / HTTP/1.1\r\n\r\n",
        b"\xff\xfe",
    ] {
        assert!(
            !matches!(parse(buf), Ok(Parsed::Complete { .. })),
            "{:?}",
            String::from_utf8_lossy(buf)
        );
    }
}
