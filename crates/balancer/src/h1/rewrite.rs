//! The heads as the other side sees them, written into a reused buffer: hop-by-hop fields out
//! (exactly the names `headers::strip_hop_by_hop` removes) and those named by `Connection`,
//! then what the balancer adds, as `headers::add_forwarded` and `Shared::respond` do today.
//!
//! Against today's hyper path, the fields are the same and in the same order, with two
//! differences a differential test normalises: names keep the case they arrived in (hyper
//! writes them in lower case), and the added fields come last (a `HeaderMap` keeps an
//! existing field's slot). The body is always re-framed: `Transfer-Encoding` is dropped and
//! `transfer-encoding: chunked` written when the body is chunked, as hyper's encoder does.
//! hyper's server also adds a `date` field to responses; the fast path's writer leaves
//! that to its caller. The tokens of every `Connection` field are honoured (RFC 9110 section
//! 7.6.1), where `strip_hop_by_hop` reads only the first field.

use super::{Framing, HeaderSpan, request::RequestHead, response::ResponseHead};

/// The hop-by-hop fields never forwarded (RFC 9110 section 7.6.1, and `Expect`, which the
/// balancer answers itself), the list of `headers::strip_hop_by_hop`.
const HOP_BY_HOP: [&[u8]; 10] = [
    b"connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"expect",
    b"keep-alive",
    b"proxy-connection",
];

pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP.iter().any(|hop| hop.eq_ignore_ascii_case(name))
}

/// Appends the request head the backend receives to `out`: the request line in origin-form
/// with HTTP/1.1, the client's fields minus hop-by-hop ones, then `X-Forwarded-For` (the
/// first earlier value and `peer`, or `peer` alone; if `peer` is unknown, earlier values are
/// left as they are), `X-Forwarded-Proto: http`, `X-Forwarded-Host` (the `Host` value), and
/// `transfer-encoding: chunked` for a chunked body. `Host` is the client's.
pub(crate) fn write_request(
    buf: &[u8],
    head: &RequestHead,
    peer: Option<&[u8]>,
    id: &[u8],
    out: &mut Vec<u8>,
) {
    out.reserve(buf.len() + 128);
    out.extend_from_slice(head.method.of(buf));
    out.push(b' ');
    out.extend_from_slice(head.target.of(buf));
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut earlier_for: Option<&[u8]> = None;
    for field in head.headers.as_slice() {
        let name = field.name.of(buf);
        if is_hop_by_hop(name) || head.connection.names(buf, name) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            if peer.is_some() {
                earlier_for.get_or_insert(field.value.of(buf));
                continue;
            }
        } else if name.eq_ignore_ascii_case(b"x-forwarded-proto")
            || name.eq_ignore_ascii_case(b"x-forwarded-host")
            || name.eq_ignore_ascii_case(b"x-request-id")
        {
            continue;
        }
        write_field(buf, field, out);
    }
    if head.framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if let Some(peer) = peer {
        out.extend_from_slice(b"x-forwarded-for: ");
        if let Some(earlier) = earlier_for.filter(|v| !v.trim_ascii().is_empty()) {
            out.extend_from_slice(earlier);
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(peer);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"x-request-id: ");
    out.extend_from_slice(id);
    out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\nx-forwarded-host: ");
    out.extend_from_slice(head.host.of(buf));
    out.extend_from_slice(b"\r\n\r\n");
}

/// Appends the response head the client receives to `out`: `HTTP/1.1`, the backend's status
/// and reason, its fields minus hop-by-hop ones (and minus `Content-Length` when the body is
/// not delimited by it: `Transfer-Encoding` won, or it is read to close, and goes out
/// chunked), `transfer-encoding: chunked` for those, `x-backend: backend`, and
/// `connection: close` if `close`.
pub(crate) fn write_response(
    buf: &[u8],
    head: &ResponseHead,
    backend: &[u8],
    x_cache: Option<&[u8]>,
    id: &[u8],
    close: bool,
    out: &mut Vec<u8>,
) {
    out.reserve(buf.len() + 64);
    let status = head.status.min(999);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&[
        b'0' + (status / 100) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(head.reason.of(buf));
    out.extend_from_slice(b"\r\n");
    let rechunked = matches!(head.framing, Framing::Chunked | Framing::ReadToClose);
    for field in head.headers.as_slice() {
        let name = field.name.of(buf);
        if head.codings && name.eq_ignore_ascii_case(b"transfer-encoding") {
            write_field(buf, field, out);
            continue;
        }
        if is_hop_by_hop(name)
            || head.connection.names(buf, name)
            || name.eq_ignore_ascii_case(b"x-backend")
            || name.eq_ignore_ascii_case(b"x-request-id")
            || (rechunked && name.eq_ignore_ascii_case(b"content-length"))
        {
            continue;
        }
        write_field(buf, field, out);
    }
    if rechunked && !head.codings {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"x-backend: ");
    out.extend_from_slice(backend);
    out.extend_from_slice(b"\r\nx-request-id: ");
    out.extend_from_slice(id);
    out.extend_from_slice(b"\r\n");
    if let Some(x_cache) = x_cache {
        out.extend_from_slice(b"x-cache: ");
        out.extend_from_slice(x_cache);
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn write_field(buf: &[u8], field: &HeaderSpan, out: &mut Vec<u8>) {
    out.extend_from_slice(field.name.of(buf));
    out.extend_from_slice(b": ");
    out.extend_from_slice(field.value.of(buf));
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests;
