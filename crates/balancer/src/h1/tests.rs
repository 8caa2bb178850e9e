use super::*;

#[test]
fn content_length_is_digits_only() {
    assert_eq!(content_length(b"0"), Some(0));
    assert_eq!(content_length(b"42"), Some(42));
    assert_eq!(content_length(b"42, 42"), Some(42));
    assert_eq!(content_length(b"18446744073709551615"), Some(u64::MAX));
    for bad in [
        &b""[..],
        b"+1",
        b"-1",
        b"4 2",
        b"0x10",
        b"42, 43",
        b"42,",
        b",42",
        b"18446744073709551616",
        b"99999999999999999999999",
        b"1e3",
    ] {
        assert_eq!(
            content_length(bad),
            None,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn only_a_final_chunked_counts() {
    let one = |v: &'static [u8]| transfer_coding([v].into_iter());
    assert_eq!(transfer_coding(std::iter::empty()), None);
    assert_eq!(one(b"chunked"), Some(Coding::Chunked));
    assert_eq!(one(b"CHUNKED"), Some(Coding::Chunked));
    assert_eq!(one(b"gzip, chunked"), Some(Coding::ChunkedAfterOthers));
    assert_eq!(one(b"chunked, identity"), Some(Coding::NotChunked));
    assert_eq!(one(b"chunked, chunked"), Some(Coding::NotChunked));
    assert_eq!(one(b"identity"), Some(Coding::NotChunked));
    assert_eq!(one(b"chunked,"), Some(Coding::NotChunked));
    assert_eq!(one(b""), Some(Coding::NotChunked));
    assert_eq!(one(b"chunked;a=b"), Some(Coding::NotChunked));
    assert_eq!(
        transfer_coding([&b"gzip"[..], b"chunked"].into_iter()),
        Some(Coding::ChunkedAfterOthers)
    );
    assert_eq!(
        transfer_coding([&b"chunked"[..], b"chunked"].into_iter()),
        Some(Coding::NotChunked)
    );
}

#[test]
fn lines_need_crlf() {
    assert!(lines_end_in_crlf(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert!(!lines_end_in_crlf(b"GET / HTTP/1.1\nHost: a\r\n\r\n"));
    assert!(!lines_end_in_crlf(b"\n"));
    assert!(!lines_end_in_crlf(b"GET / HTTP/1.1\r\nHost: a\r\n\n"));
    assert!(!lines_end_in_crlf(b"a\r\rb\n"));
    assert!(lines_end_in_crlf(b""));
    assert!(lines_end_in_crlf(b"GET / HTTP/1.1\r"));
}

#[test]
fn connection_tokens_are_read_from_the_list() {
    let buf = b"close ,  X-Private, , bad token, keep-alive,Upgrade";
    let mut tokens = ConnectionTokens::default();
    tokens.add(
        buf,
        Span {
            start: 0,
            len: buf.len() as u32,
        },
    );
    assert!(tokens.close && tokens.keep_alive && tokens.upgrade);
    let named: Vec<&[u8]> = tokens.named().iter().map(|t| t.of(buf)).collect();
    assert_eq!(
        named,
        [&b"close"[..], b"X-Private", b"keep-alive", b"Upgrade"]
    );
    assert!(tokens.names(buf, b"x-private"));
    assert!(!tokens.names(buf, b"bad"));
}

#[test]
fn a_span_outside_its_buffer_is_empty() {
    let span = Span { start: 10, len: 5 };
    assert_eq!(span.of(b"short"), b"");
}
