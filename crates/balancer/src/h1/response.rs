//! A backend's response head (RFC 9112 sections 4 and 6): its status, its framing and
//! whether the connection may carry another request after it.

use super::{
    Coding, ConnectionTokens, Fallback, Framing, HeadRefusals, HeaderIndex, Limits, MAX_HEADERS,
    Parsed, Refusal, Span, content_length, head_len, is, transfer_coding,
};

/// How a backend's head is refused: all 502 (RFC 9110 section 15.6.3).
const REFUSALS: HeadRefusals = HeadRefusals {
    malformed: Refusal::bad_gateway("the response head is malformed"),
    bare_lf: Refusal::bad_gateway("a line of the response head does not end in CRLF"),
    too_large: Refusal::bad_gateway("the response head is too large"),
    too_many: Refusal::bad_gateway("the response has too many header fields"),
};

/// A parsed response head: offsets into the buffer it was parsed from.
#[derive(Clone, Debug)]
pub(crate) struct ResponseHead {
    pub status: u16,
    /// The reason phrase as the backend sent it (possibly empty).
    pub reason: Span,
    pub framing: Framing,
    /// A 1xx other than 101: an interim response, a final one follows (RFC 9110 section 15.2).
    pub interim: bool,
    /// Whether the connection may carry another request once this body is read whole: an
    /// HTTP/1.1 response, no `Connection: close`, a delimited body, not both
    /// `Transfer-Encoding` and `Content-Length` (RFC 9112 sections 6.3 and 9.3).
    pub reusable: bool,
    /// Chunked after other codings (`gzip, chunked`): the body is framed as chunked, and its
    /// `Transfer-Encoding` fields are relayed as they are (the codings are the content's).
    pub codings: bool,
    pub connection: ConnectionTokens,
    pub headers: HeaderIndex,
}

/// Parses the response head at the start of `buf`, the answer to a `HEAD` request if
/// `head_request`.
///
/// Framing, in RFC 9112 section 6.3's order: no body after `HEAD`, for 1xx, 204 and 304
/// (item 1); `Transfer-Encoding` with `chunked` last: chunked, and a `Content-Length` beside
/// it ignored and the connection not reused (items 3 and 4); `Transfer-Encoding` whose last
/// coding is not chunked: read to close (item 4); `Content-Length`: that length, an invalid
/// one is an error (item 5, answered 502); neither: read to close (item 8), never reused.
/// A 101 and codings other than a lone `chunked` (which the fast path would have to re-send)
/// are [`Parsed::Fallback`]: the caller cannot relay them.
/// Bare LF, obs-fold and whitespace before a colon are refused (502), as in requests.
pub(crate) fn parse_response(
    buf: &[u8],
    limits: Limits,
    head_request: bool,
) -> Result<Parsed<ResponseHead>, Refusal> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let max_headers = limits.max_headers.min(MAX_HEADERS);
    let mut response = httparse::Response::new(fields.get_mut(..max_headers).unwrap_or_default());
    let parsed = response.parse(buf);
    let Some(len) = head_len(buf, limits, parsed, &REFUSALS)? else {
        return Ok(Parsed::Partial);
    };
    let (Some(version), Some(status)) = (response.version, response.code) else {
        return Err(Refusal::bad_gateway("the status line is malformed"));
    };
    if status == 101 {
        return Ok(Parsed::Fallback(Fallback::Upgrade));
    }
    let reason = Span::within(buf, response.reason.unwrap_or_default().as_bytes());
    let headers = HeaderIndex::new(buf, response.headers);
    let mut connection = ConnectionTokens::default();
    let mut length: Option<u64> = None;
    let mut has_te = false;
    let mut codings = false;
    let mut bad_length = false;
    for field in headers.as_slice() {
        let name = field.name.of(buf);
        if name.eq_ignore_ascii_case(b"connection") {
            connection.add(buf, field.value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            match content_length(field.value.of(buf)) {
                Some(n) if length.is_none_or(|earlier| earlier == n) => length = Some(n),
                _ => bad_length = true,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            has_te = true;
        }
    }
    let interim = (100..200).contains(&status);
    let mut reusable = version == 1 && !connection.close;
    let framing = if head_request || interim || status == 204 || status == 304 {
        Framing::None
    } else if has_te {
        // Transfer-Encoding wins over Content-Length; such a connection is not reused.
        if length.is_some() || bad_length {
            reusable = false;
        }
        let values = headers
            .as_slice()
            .iter()
            .filter(|field| is(buf, field, b"transfer-encoding"))
            .map(|field| field.value.of(buf));
        match transfer_coding(values) {
            Some(Coding::Chunked) => Framing::Chunked,
            Some(Coding::ChunkedAfterOthers) => {
                codings = true;
                Framing::Chunked
            }
            Some(Coding::NotChunked) | None => Framing::ReadToClose,
        }
    } else if bad_length {
        // RFC 9112 section 6.3 item 5: unrecoverable, the backend's fault.
        return Err(Refusal::bad_gateway(
            "the response's Content-Length is invalid",
        ));
    } else {
        match length {
            Some(n) => Framing::Length(n),
            None => Framing::ReadToClose,
        }
    };
    if framing == Framing::ReadToClose {
        reusable = false;
    }
    if connection.overflow {
        return Ok(Parsed::Fallback(Fallback::ConnectionTokens));
    }
    Ok(Parsed::Complete {
        head: ResponseHead {
            status,
            reason,
            framing,
            interim,
            reusable,
            codings,
            connection,
            headers,
        },
        len,
    })
}

#[cfg(test)]
mod tests;
