use super::*;

/// Decodes `input` in pieces of `step` bytes; the body, and the bytes past its end.
fn decode_in(input: &[u8], step: usize) -> Result<(Vec<u8>, usize), Refusal> {
    let mut decoder = ChunkedDecoder::new(ChunkLimits::default());
    let mut body = Vec::new();
    let mut at = 0;
    while at < input.len() && !decoder.is_done() {
        let end = (at + step).min(input.len());
        let mut piece = &input[at..end];
        while !piece.is_empty() && !decoder.is_done() {
            let decoded = decoder.decode(piece)?;
            assert!(decoded.consumed > 0, "no progress");
            assert!(decoded.data.end <= decoded.consumed);
            body.extend_from_slice(&piece[decoded.data.clone()]);
            at += decoded.consumed;
            piece = &piece[decoded.consumed..];
        }
    }
    assert_eq!(decoder.decoded(), body.len() as u64);
    if !decoder.is_done() {
        return Err(Refusal::bad_request("unfinished"));
    }
    Ok((body, input.len() - at))
}

fn decode(input: &[u8]) -> Result<(Vec<u8>, usize), Refusal> {
    let whole = decode_in(input, input.len().max(1));
    for step in [1, 2, 3, 7] {
        assert_eq!(decode_in(input, step), whole, "step {step}");
    }
    whole
}

#[test]
fn chunks_and_the_end() {
    let (body, rest) = decode(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").unwrap();
    assert_eq!(body, b"hello world");
    assert_eq!(rest, 0);
    let (body, _) = decode(b"A\r\n0123456789\r\n0\r\n\r\n").unwrap();
    assert_eq!(body, b"0123456789");
    let (body, _) = decode(b"0000a\r\n0123456789\r\n0\r\n\r\n").unwrap();
    assert_eq!(body.len(), 10);
}

#[test]
fn extensions_and_trailers() {
    let (body, _) = decode(b"3;name=value\r\nabc\r\n3 ; x\r\ndef\r\n0;last\r\n\r\n").unwrap();
    assert_eq!(body, b"abcdef");
    let (body, _) = decode(b"3\r\nabc\r\n0\r\nX-Sum: 1\r\nX-Other:\t2 3\r\n\r\n").unwrap();
    assert_eq!(body, b"abc");
}

#[test]
fn the_next_message_is_left_alone() {
    let (body, rest) = decode(b"1\r\na\r\n0\r\n\r\nGET / HTTP/1.1\r\n").unwrap();
    assert_eq!(body, b"a");
    assert_eq!(rest, b"GET / HTTP/1.1\r\n".len());
}

#[test]
fn bad_sizes_are_refused() {
    for input in [
        &b"0x10\r\n"[..],
        b"-1\r\n",
        b"+1\r\n",
        b"\r\n",
        b" 1\r\n",
        b"g\r\n",
        b"ffffffffffffffffff\r\n",
        b"00000000000000001\r\n",
        b"1 2\r\n",
        b"1\n",
        b"1\r\r\n",
    ] {
        let mut decoder = ChunkedDecoder::new(ChunkLimits::default());
        assert!(
            decoder.decode(input).is_err(),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
    // The largest size that fits is only a size (the body limit is the caller's).
    let mut decoder = ChunkedDecoder::new(ChunkLimits::default());
    let decoded = decoder.decode(b"ffffffffffffffff\r\nab").unwrap();
    assert_eq!(decoded.data, 18..20);
}

#[test]
fn framing_must_be_crlf() {
    for input in [
        &b"1\r\naX\r\n0\r\n\r\n"[..],
        b"1\r\na\n0\r\n\r\n",
        b"1\r\na\r\n0\r\n\n",
        b"1\r\na\r\n0\r\nX: y\n\r\n",
        b"1\r\na\r\n0\r\n X: y\r\n\r\n",
        b"1\r\na\r\n0\r\nX y\r\n\r\n",
        b"1\r\na\r\n0\r\nX: \x01\r\n\r\n",
        b"1;a\x00\r\na\r\n0\r\n\r\n",
        b"1;a\nb\r\na\r\n0\r\n\r\n",
    ] {
        assert!(
            decode(input).is_err(),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn extensions_and_trailers_are_bounded() {
    let long = format!("1;{}\r\na\r\n0\r\n\r\n", "x".repeat(300));
    assert!(decode(long.as_bytes()).is_err());
    let many: String = (0..40).map(|i| format!("X-{i}: v\r\n")).collect();
    let many = format!("0\r\n{many}\r\n");
    assert!(decode(many.as_bytes()).is_err());
    let big = format!("0\r\nX: {}\r\n\r\n", "v".repeat(9000));
    assert!(decode(big.as_bytes()).is_err());
}

#[test]
fn done_stays_done() {
    let mut decoder = ChunkedDecoder::new(ChunkLimits::default());
    let decoded = decoder.decode(b"0\r\n\r\nrest").unwrap();
    assert_eq!(decoded.consumed, 5);
    assert!(decoded.done);
    let again = decoder.decode(b"rest").unwrap();
    assert_eq!(again.consumed, 0);
    assert!(again.done);
}
