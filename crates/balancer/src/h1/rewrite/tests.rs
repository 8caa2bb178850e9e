use http::{HeaderMap, HeaderName, HeaderValue};

use super::*;
use crate::{
    h1::{Limits, Parsed, request::parse_request, response::parse_response},
    headers,
};

fn request(buf: &[u8]) -> RequestHead {
    match parse_request(buf, Limits::default()) {
        Ok(Parsed::Complete { head, .. }) => head,
        other => panic!("{other:?}"),
    }
}

fn response(buf: &[u8]) -> ResponseHead {
    match parse_response(buf, Limits::default(), false) {
        Ok(Parsed::Complete { head, .. }) => head,
        other => panic!("{other:?}"),
    }
}

/// The fields of a written head, names in lower case, sorted; and its start line.
fn fields_of(written: &[u8]) -> (String, Vec<(String, String)>) {
    let text = std::str::from_utf8(written).unwrap();
    assert!(text.ends_with("\r\n\r\n"), "{text:?}");
    let mut lines = text.trim_end_matches("\r\n").split("\r\n");
    let start = lines.next().unwrap().to_owned();
    let mut fields: Vec<(String, String)> = lines
        .map(|line| {
            let (name, value) = line.split_once(": ").unwrap();
            (name.to_ascii_lowercase(), value.to_owned())
        })
        .collect();
    fields.sort();
    (start, fields)
}

/// What today's hyper path makes of the same fields, sorted.
fn today(
    buf: &[u8],
    fields: &[crate::h1::HeaderSpan],
    peer: Option<&str>,
    host: Option<&str>,
) -> Vec<(String, String)> {
    let mut map = HeaderMap::new();
    for field in fields {
        map.append(
            HeaderName::from_bytes(field.name.of(buf)).unwrap(),
            HeaderValue::from_bytes(field.value.of(buf)).unwrap(),
        );
    }
    headers::strip_hop_by_hop(&mut map);
    if let Some(host) = host {
        let host = HeaderValue::from_str(host).unwrap();
        headers::add_forwarded(
            &mut map,
            peer.map(|p| HeaderValue::from_str(p).unwrap()),
            Some(&host),
        );
        // The hyper path sets the request's id as the balancer took or made it.
        map.insert("x-request-id", HeaderValue::from_static("rid"));
    }
    let mut pairs: Vec<(String, String)> = map
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect();
    pairs.sort();
    pairs
}

#[test]
fn the_request_as_today() {
    let cases: [&[u8]; 4] = [
        b"GET /p?q HTTP/1.1\r\nHost: shop.example\r\nAccept: */*\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Private-Hop\r\nKeep-Alive: timeout=5\r\nX-Private-Hop: 1\r\nTE: trailers\r\nProxy-Authorization: Basic x\r\nProxy-Connection: keep-alive\r\nX-Request-Id: abc\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\nX-Forwarded-For: 10.0.0.2\r\nContent-Length: 3\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For:  \r\nCookie: a=1\r\nCookie: b=2\r\n\r\n",
    ];
    for buf in cases {
        for peer in [Some("127.0.0.1"), None] {
            let head = request(buf);
            let mut out = Vec::new();
            write_request(buf, &head, peer.map(str::as_bytes), b"rid", &mut out);
            let (line, fields) = fields_of(&out);
            assert_eq!(
                line.as_bytes(),
                [head.method.of(buf), b" ", head.target.of(buf), b" HTTP/1.1"].concat()
            );
            let host = std::str::from_utf8(head.host.of(buf)).unwrap();
            assert_eq!(
                fields,
                today(buf, head.headers.as_slice(), peer, Some(host)),
                "{}",
                String::from_utf8_lossy(&out)
            );
        }
    }
}

#[test]
fn forwarded_for_joins_the_first_earlier_value() {
    let buf = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\n\r\n";
    let mut out = Vec::new();
    write_request(buf, &request(buf), Some(b"127.0.0.1"), b"rid", &mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(text.ends_with(
        "x-forwarded-for: 10.0.0.1, 127.0.0.1\r\nx-request-id: rid\r\nx-forwarded-proto: http\r\nx-forwarded-host: a\r\n\r\n"
    ), "{text}");
}

#[test]
fn a_chunked_request_is_rechunked() {
    let buf = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n";
    let mut out = b"left alone".to_vec();
    write_request(buf, &request(buf), Some(b"10.1.1.1"), b"rid", &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "left alonePOST /up HTTP/1.1\r\nHost: a\r\nX-A: b\r\ntransfer-encoding: chunked\r\n\
         x-forwarded-for: 10.1.1.1\r\nx-request-id: rid\r\nx-forwarded-proto: http\r\nx-forwarded-host: a\r\n\r\n"
    );
}

#[test]
fn every_connection_field_names_hops() {
    // `strip_hop_by_hop` reads the first `Connection` field only; RFC 9110 section 7.6.1
    // means all of them.
    let buf = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-one\r\nConnection: x-two\r\nX-One: 1\r\nX-Two: 2\r\nX-Three: 3\r\n\r\n";
    let mut out = Vec::new();
    write_request(buf, &request(buf), None, b"rid", &mut out);
    let (_, fields) = fields_of(&out);
    let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "host",
            "x-forwarded-host",
            "x-forwarded-proto",
            "x-request-id",
            "x-three"
        ]
    );
}

#[test]
fn the_response_as_today() {
    let buf = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-Backend: spoofed\r\nX-Request-Id: spoofed\r\nContent-Length: 2\r\n\r\n";
    let head = response(buf);
    let mut out = Vec::new();
    write_response(buf, &head, b"worker-1:8080", None, b"rid", false, &mut out);
    let (line, fields) = fields_of(&out);
    assert_eq!(line, "HTTP/1.1 200 OK");
    let mut expected = today(buf, head.headers.as_slice(), None, None);
    expected.retain(|(n, _)| n != "x-backend" && n != "x-request-id");
    expected.push(("x-backend".into(), "worker-1:8080".into()));
    expected.push(("x-request-id".into(), "rid".into()));
    expected.sort();
    assert_eq!(fields, expected);
}

#[test]
fn a_response_is_rechunked_when_not_delimited_by_its_length() {
    let buf = b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut out = Vec::new();
    write_response(buf, &response(buf), b"w", None, b"r", true, &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\nx-backend: w\r\nx-request-id: r\r\nconnection: close\r\n\r\n"
    );
    let buf = b"HTTP/1.1 200 \r\nX: y\r\n\r\n";
    let mut out = Vec::new();
    write_response(buf, &response(buf), b"w", None, b"r", false, &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 200 \r\nX: y\r\ntransfer-encoding: chunked\r\nx-backend: w\r\nx-request-id: r\r\n\r\n"
    );
}

#[test]
fn codings_before_chunked_are_relayed_with_x_cache() {
    let buf =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Type: text/plain\r\n\r\n";
    let mut out = Vec::new();
    write_response(
        buf,
        &response(buf),
        b"w",
        Some(b"MISS"),
        b"r",
        false,
        &mut out,
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Type: text/plain\r\nx-backend: w\r\nx-request-id: r\r\nx-cache: MISS\r\n\r\n"
    );
}
