//! A client's request head (RFC 9112 sections 2 to 3 and 6), strictly: only what the fast
//! path relays with certainty is `Complete`; the rest is a [`Fallback`] or a [`Refusal`].

use super::{
    Coding, ConnectionTokens, Fallback, Framing, HeadRefusals, HeaderIndex, HeaderSpan, Limits,
    MAX_HEADERS, Parsed, Refusal, Span, content_length, head_len, is, transfer_coding,
};

/// The HTTP/2 connection preface's first line (RFC 9113 section 3.4).
const H2C_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// How a client's head is refused (RFC 9112 section 2.2; RFC 6585 section 5).
const REFUSALS: HeadRefusals = HeadRefusals {
    malformed: Refusal::bad_request("the request head is malformed"),
    bare_lf: Refusal::bad_request("a line of the request head does not end in CRLF"),
    too_large: Refusal::too_large("the request head is too large"),
    too_many: Refusal::too_large("the request has too many header fields"),
};

/// A parsed request head: offsets into the buffer it was parsed from.
#[derive(Clone, Debug)]
pub(crate) struct RequestHead {
    pub method: Span,
    /// The origin-form target: absolute path and query (RFC 9112 section 3.2.1).
    pub target: Span,
    pub framing: Framing,
    pub connection: ConnectionTokens,
    /// The one `Host` field's value (RFC 9112 section 3.2).
    pub host: Span,
    pub headers: HeaderIndex,
}

impl RequestHead {
    /// Whether the method is `HEAD` (its response has no body, RFC 9110 section 9.3.2).
    pub fn is_head(&self, buf: &[u8]) -> bool {
        self.method.of(buf) == b"HEAD"
    }
}

/// Parses the request head at the start of `buf`.
///
/// - HTTP/1.0, asterisk-, absolute- and authority-form targets, `CONNECT`, `Upgrade`,
///   `Connection: upgrade`, any `Expect`, the h2c preface, a missing or repeated `Host`,
///   transfer codings other than a lone `chunked`: [`Parsed::Fallback`].
/// - Bare LF, obs-fold, whitespace before a colon, bytes not allowed in a name or value
///   (RFC 9112 sections 2.2 and 5; `httparse`'s strict defaults): 400.
/// - A head longer than `limits.max_head_bytes`, or more than `limits.max_headers` fields: 431.
/// - Framing (RFC 9112 section 6.3): `Transfer-Encoding` and `Content-Length` together: 400;
///   `Transfer-Encoding` whose last coding is not `chunked` (or `chunked` twice, or an empty
///   list element): 400 (section 6.3 item 4); `Content-Length` not all digits, empty, with a
///   sign or inner spaces, overflowing, or several differing values: 400 (item 5).
pub(crate) fn parse_request(buf: &[u8], limits: Limits) -> Result<Parsed<RequestHead>, Refusal> {
    let bound = H2C_PREFACE.len().min(buf.len());
    if buf.get(..bound) == H2C_PREFACE.get(..bound) && !buf.is_empty() {
        return Ok(if bound == H2C_PREFACE.len() {
            Parsed::Fallback(Fallback::H2c)
        } else {
            Parsed::Partial
        });
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let max_headers = limits.max_headers.min(MAX_HEADERS);
    let mut request = httparse::Request::new(fields.get_mut(..max_headers).unwrap_or_default());
    let parsed = request.parse(buf);
    if let Err(httparse::Error::Version) = parsed {
        return Ok(Parsed::Fallback(Fallback::Version));
    }
    let Some(len) = head_len(buf, limits, parsed, &REFUSALS)? else {
        return Ok(Parsed::Partial);
    };
    if request.version != Some(1) {
        return Ok(Parsed::Fallback(Fallback::Version));
    }
    let (Some(method), Some(target)) = (request.method, request.path) else {
        return Err(Refusal::bad_request("the request line is malformed"));
    };
    if method == "CONNECT" {
        return Ok(Parsed::Fallback(Fallback::Connect));
    }
    if !target.starts_with('/') {
        return Ok(Parsed::Fallback(Fallback::TargetForm));
    }
    let method = Span::within(buf, method.as_bytes());
    let target = Span::within(buf, target.as_bytes());
    let headers = HeaderIndex::new(buf, request.headers);
    head(buf, method, target, headers).map(|head| match head {
        Ok(head) => Parsed::Complete { head, len },
        Err(fallback) => Parsed::Fallback(fallback),
    })
}

/// The header fields' verdict: framing, `Connection`, `Host`.
fn head(
    buf: &[u8],
    method: Span,
    target: Span,
    headers: HeaderIndex,
) -> Result<Result<RequestHead, Fallback>, Refusal> {
    let mut connection = ConnectionTokens::default();
    let mut host = None;
    let mut hosts = 0usize;
    let mut length: Option<u64> = None;
    let mut has_te = false;
    for field in headers.as_slice() {
        let name = field.name.of(buf);
        let value = field.value.of(buf);
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            host = Some(field.value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            connection.add(buf, field.value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let n = content_length(value)
                .ok_or(Refusal::bad_request("Content-Length is not a number"))?;
            // RFC 9110 section 8.6: several fields only if all equal.
            if length.is_some_and(|earlier| earlier != n) {
                return Err(Refusal::bad_request("Content-Length fields differ"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            has_te = true;
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            return Ok(Err(Fallback::Upgrade));
        } else if name.eq_ignore_ascii_case(b"expect") {
            return Ok(Err(Fallback::Expect));
        }
    }
    let framing = if has_te {
        // RFC 9112 section 6.1: both is a smuggling attempt or an error; refused.
        if length.is_some() {
            return Err(Refusal::bad_request(
                "the request has both Transfer-Encoding and Content-Length",
            ));
        }
        let values = headers
            .as_slice()
            .iter()
            .filter(|field| is(buf, field, b"transfer-encoding"))
            .map(|field: &HeaderSpan| field.value.of(buf));
        match transfer_coding(values) {
            Some(Coding::Chunked) => Framing::Chunked,
            Some(Coding::ChunkedAfterOthers) => return Ok(Err(Fallback::TransferCoding)),
            // RFC 9112 section 6.3 item 4: a request whose final coding is not chunked: 400.
            Some(Coding::NotChunked) | None => {
                return Err(Refusal::bad_request(
                    "the request's final transfer coding is not chunked",
                ));
            }
        }
    } else {
        match length {
            Some(0) | None => Framing::None,
            Some(n) => Framing::Length(n),
        }
    };
    if connection.upgrade {
        return Ok(Err(Fallback::Upgrade));
    }
    if connection.overflow {
        return Ok(Err(Fallback::ConnectionTokens));
    }
    let Some(host) = host.filter(|_| hosts == 1) else {
        return Ok(Err(Fallback::Host));
    };
    Ok(Ok(RequestHead {
        method,
        target,
        framing,
        connection,
        host,
        headers,
    }))
}

#[cfg(test)]
mod tests;
