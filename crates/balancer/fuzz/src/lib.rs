//! The balancer's `h1` module compiled on its own (its sources, not a copy), so the fuzzer
//! builds httparse and these files rather than the whole balancer; and the checks each
//! target runs.

/// The one item of the balancer's `config` that `h1` reads.
mod config {
    pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 << 10;
}

/// The balancer's `src/`, where `h1.rs` and `h1/` are found.
#[path = "../../src"]
#[allow(dead_code)]
mod balancer {
    pub mod h1;
}

pub use balancer::h1;

use h1::{
    Framing, Limits, Parsed,
    chunked::{ChunkLimits, ChunkedDecoder},
    request::parse_request,
    response::parse_response,
    rewrite::{write_request, write_response},
};

/// Small limits, so the fuzzer reaches them.
const SMALL: Limits = Limits {
    max_head_bytes: 512,
    max_headers: 8,
};

/// Parses `data` as a request head: no panic; a complete head lies within the input, parses
/// the same from exactly its own bytes, is never bigger than the limits allow, and its
/// rewritten form parses again as a complete head with the same method, target and framing.
pub fn request(data: &[u8]) {
    for limits in [Limits::default(), SMALL] {
        let Ok(Parsed::Complete { head, len }) = parse_request(data, limits) else {
            continue;
        };
        assert!(len <= data.len() && len <= limits.max_head_bytes);
        assert!(head.headers.as_slice().len() <= limits.max_headers);
        let own = &data[..len];
        match parse_request(own, limits) {
            Ok(Parsed::Complete { len: again, .. }) => assert_eq!(again, len),
            other => panic!("its own bytes parse otherwise: {other:?}"),
        }
        assert!(matches!(
            head.framing,
            Framing::None | Framing::Length(_) | Framing::Chunked
        ));
        let mut out = Vec::new();
        write_request(data, &head, Some(b"192.0.2.1"), &mut out);
        let roomy = Limits {
            max_head_bytes: usize::MAX,
            max_headers: h1::MAX_HEADERS,
        };
        match parse_request(&out, roomy) {
            Ok(Parsed::Complete { head: sent, len }) => {
                assert_eq!(len, out.len());
                assert_eq!(sent.method.of(&out), head.method.of(data));
                assert_eq!(sent.target.of(&out), head.target.of(data));
                assert_eq!(sent.framing, head.framing);
                assert_eq!(sent.host.of(&out), head.host.of(data));
            }
            // Three fields more than the client sent may pass the field count.
            Err(refusal) if refusal.status == 431 => {}
            other => panic!("the rewritten head does not parse: {other:?}"),
        }
    }
}

/// Parses `data` (its first byte says whether the request was `HEAD`) as a response head:
/// no panic; a complete head lies within the input; a body read to close is never reused;
/// the rewritten head parses again with a body delimited the same way or chunked.
pub fn response(data: &[u8]) {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let head_request = first & 1 == 1;
    for limits in [Limits::default(), SMALL] {
        let Ok(Parsed::Complete { head, len }) = parse_response(data, limits, head_request) else {
            continue;
        };
        assert!(len <= data.len() && len <= limits.max_head_bytes);
        if head.framing == Framing::ReadToClose {
            assert!(!head.reusable);
        }
        if head_request || head.interim || head.status == 204 || head.status == 304 {
            assert_eq!(head.framing, Framing::None);
        }
        let mut out = Vec::new();
        write_response(data, &head, b"backend-1", None, false, &mut out);
        let roomy = Limits {
            max_head_bytes: usize::MAX,
            max_headers: h1::MAX_HEADERS,
        };
        match parse_response(&out, roomy, head_request) {
            Ok(Parsed::Complete { head: sent, len }) => {
                assert_eq!(len, out.len());
                assert_eq!(sent.status, head.status);
                let expected = match head.framing {
                    Framing::ReadToClose => Framing::Chunked,
                    other => other,
                };
                assert_eq!(sent.framing, expected);
            }
            Err(refusal) if refusal.message.contains("too many") => {}
            other => panic!("the rewritten head does not parse: {other:?}"),
        }
    }
}

/// Decodes `data` (its first byte sets the piece size) as a chunked body: no panic, progress
/// on every call, data within what was consumed; the same body and outcome whatever the
/// pieces; a body that ends, re-encoded as one chunk, decodes to itself.
pub fn chunked(data: &[u8]) {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let step = usize::from(first % 16) + 1;
    let whole = decode(data, data.len().max(1));
    let pieces = decode(data, step);
    assert_eq!(whole, pieces);
    if let Ok((body, _)) = whole {
        let mut again = format!("{:x}\r\n", body.len()).into_bytes();
        if body.is_empty() {
            again.clear();
        } else {
            again.extend_from_slice(&body);
            again.extend_from_slice(b"\r\n");
        }
        again.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(decode(&again, again.len()), Ok((body, again.len())));
    }
}

/// The body and the bytes used, or the first refusal's message (`"unfinished"` if the input
/// ran out first).
fn decode(input: &[u8], step: usize) -> Result<(Vec<u8>, usize), &'static str> {
    let mut decoder = ChunkedDecoder::new(ChunkLimits::default());
    let mut body = Vec::new();
    let mut at = 0;
    while at < input.len() && !decoder.is_done() {
        let end = (at + step).min(input.len());
        let mut piece = &input[at..end];
        while !piece.is_empty() && !decoder.is_done() {
            let decoded = decoder.decode(piece).map_err(|refusal| refusal.message)?;
            assert!(decoded.consumed > 0, "no progress");
            assert!(decoded.data.start <= decoded.data.end && decoded.data.end <= decoded.consumed);
            body.extend_from_slice(&piece[decoded.data.clone()]);
            at += decoded.consumed;
            piece = &piece[decoded.consumed..];
        }
    }
    assert_eq!(decoder.decoded(), body.len() as u64);
    if !decoder.is_done() {
        return Err("unfinished");
    }
    Ok((body, at))
}
