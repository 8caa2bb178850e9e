use super::*;

fn parse(buf: &[u8], head_request: bool) -> Result<Parsed<ResponseHead>, Refusal> {
    parse_response(buf, Limits::default(), head_request)
}

fn complete(buf: &[u8]) -> (ResponseHead, usize) {
    match parse(buf, false) {
        Ok(Parsed::Complete { head, len }) => (head, len),
        other => panic!("not complete: {other:?}"),
    }
}

#[test]
fn a_plain_ok() {
    let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";
    let (head, len) = complete(buf);
    assert_eq!(head.status, 200);
    assert_eq!(head.reason.of(buf), b"OK");
    assert_eq!(head.framing, Framing::Length(2));
    assert!(head.reusable && !head.interim);
    assert_eq!(&buf[len..], b"hi");
}

#[test]
fn no_body_for_head_1xx_204_304() {
    let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
    match parse(buf, true) {
        Ok(Parsed::Complete { head, .. }) => {
            assert_eq!(head.framing, Framing::None);
            assert!(head.reusable);
        }
        other => panic!("{other:?}"),
    }
    for status in [
        "100 Continue",
        "103 Early Hints",
        "204 No Content",
        "304 Not Modified",
    ] {
        let buf = format!("HTTP/1.1 {status}\r\nTransfer-Encoding: chunked\r\n\r\n");
        let (head, _) = complete(buf.as_bytes());
        assert_eq!(head.framing, Framing::None, "{status}");
        assert_eq!(head.interim, status.starts_with('1'));
    }
}

#[test]
fn switching_protocols_is_not_ours() {
    assert!(matches!(
        parse(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            false
        ),
        Ok(Parsed::Fallback(Fallback::Upgrade))
    ));
}

#[test]
fn chunked_and_transfer_encoding_winning() {
    let (head, _) = complete(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(head.framing, Framing::Chunked);
    assert!(head.reusable);
    let (head, _) =
        complete(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(head.framing, Framing::Chunked);
    assert!(!head.reusable);
    // An invalid Content-Length is overridden all the same.
    let (head, _) =
        complete(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(head.framing, Framing::Chunked);
    assert!(!head.reusable);
    // A final coding that is not chunked: read to close.
    let (head, _) = complete(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, identity\r\n\r\n");
    assert_eq!(head.framing, Framing::ReadToClose);
    assert!(!head.reusable);
    // Codings before chunked: chunked framing, the codings kept for the client.
    let (head, _) = complete(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
    assert_eq!(head.framing, Framing::Chunked);
    assert!(head.codings && head.reusable);
}

#[test]
fn without_a_length_the_body_reads_to_close() {
    let (head, _) = complete(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n");
    assert_eq!(head.framing, Framing::ReadToClose);
    assert!(!head.reusable);
}

#[test]
fn reuse_needs_http11_and_no_close() {
    let (head, _) = complete(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    assert!(!head.reusable);
    let (head, _) = complete(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert!(!head.reusable);
}

#[test]
fn bad_lengths_and_lines_are_502() {
    for buf in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 1\n\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX : a\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 OK\r\n\r\n",
    ] {
        assert_eq!(
            parse(buf, false).map(|_| ()).unwrap_err().status,
            502,
            "{:?}",
            String::from_utf8_lossy(buf)
        );
    }
}

#[test]
fn partial_and_pipelined() {
    let buf = b"HTTP/1.1 204 No Content\r\nX: y\r\n\r\nHTTP/1.1 200 OK\r\n";
    for end in 0..33 {
        assert!(
            matches!(parse(&buf[..end], false), Ok(Parsed::Partial)),
            "{end}"
        );
    }
    let (_, len) = complete(buf);
    assert_eq!(&buf[len..], b"HTTP/1.1 200 OK\r\n");
}

#[test]
fn too_many_or_too_large_is_502() {
    let limits = Limits {
        max_head_bytes: 64,
        max_headers: 2,
    };
    let big = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "v".repeat(100));
    assert_eq!(
        parse_response(big.as_bytes(), limits, false)
            .unwrap_err()
            .status,
        502
    );
    assert_eq!(
        parse_response(
            b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n",
            limits,
            false
        )
        .unwrap_err()
        .status,
        502
    );
}
