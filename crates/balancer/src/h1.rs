//! The strict HTTP/1.1 fast path's wire format (issue #16), pure and I/O-free: request and
//! response heads parsed with `httparse` into offsets of the caller's buffer, body framing
//! decided by RFC 9112 section 6, the chunked coding decoded incrementally, and the heads
//! rewritten for the other side. Anything this module cannot accept with certainty is a
//! [`Parsed::Fallback`]: the caller hands the bytes read so far to hyper.

pub(crate) mod chunked;
pub(crate) mod request;
pub(crate) mod response;
pub(crate) mod rewrite;

use std::{fmt, ops::Range};

/// Most header fields a head may carry: the size of the parser's fixed array (hyper's own
/// default is 100 as well). [`Limits::max_headers`] may only lower it.
pub(crate) const MAX_HEADERS: usize = 100;

/// Most tokens a `Connection` header list may name before the head goes to hyper.
pub(crate) const MAX_CONNECTION_TOKENS: usize = 8;

/// Limits on a head.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Largest head in bytes, start line and the empty line included (431 past it).
    pub max_head_bytes: usize,
    /// Most header fields (431 past it); at most [`MAX_HEADERS`].
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head_bytes: crate::config::DEFAULT_MAX_HEADER_BYTES,
            max_headers: MAX_HEADERS,
        }
    }
}

/// A range of the buffer a head was parsed from. `u32` offsets keep a head's index small;
/// a head is never near 4 GiB (see [`Limits`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Span {
    pub start: u32,
    pub len: u32,
}

impl Span {
    /// The span's bytes in `buf`, empty if `buf` is not the buffer it came from.
    pub fn of(self, buf: &[u8]) -> &[u8] {
        let start = self.start as usize;
        buf.get(start..start + self.len as usize)
            .unwrap_or_default()
    }

    pub fn range(self) -> Range<usize> {
        self.start as usize..self.start as usize + self.len as usize
    }

    /// The span of `part`, a sub-slice of `buf` (as `httparse` hands them out).
    fn within(buf: &[u8], part: &[u8]) -> Self {
        let start = (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize);
        Self {
            start: u32::try_from(start).unwrap_or(u32::MAX),
            len: u32::try_from(part.len()).unwrap_or(0),
        }
    }
}

/// One header field: its name and its value (without surrounding whitespace).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct HeaderSpan {
    pub name: Span,
    pub value: Span,
}

/// The header fields of a head, in the order received: one allocation of their spans, so a
/// head stays small to move (a fixed array of `MAX_HEADERS` made every move of a head a
/// copy of 1.6 KB, several per request).
#[derive(Clone, Debug)]
pub(crate) struct HeaderIndex {
    fields: Vec<HeaderSpan>,
}

impl HeaderIndex {
    fn new(buf: &[u8], headers: &[httparse::Header<'_>]) -> Self {
        Self {
            fields: headers
                .iter()
                .map(|header| HeaderSpan {
                    name: Span::within(buf, header.name.as_bytes()),
                    value: Span::within(buf, header.value),
                })
                .collect(),
        }
    }

    pub fn as_slice(&self) -> &[HeaderSpan] {
        &self.fields
    }
}

/// How a message's body is delimited (RFC 9112 section 6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body at all.
    None,
    /// Exactly this many bytes (`Content-Length`).
    Length(u64),
    /// The chunked transfer coding (RFC 9112 section 7.1).
    Chunked,
    /// Responses only: the body ends when the connection closes (RFC 9112 section 6.3 item 8).
    ReadToClose,
}

/// What a `Connection` header list says (RFC 9110 section 7.6.1).
#[derive(Clone, Debug, Default)]
pub(crate) struct ConnectionTokens {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    /// Every token named, to strip the header fields of those names; `close`, `keep-alive`
    /// and `upgrade` included (harmless: no field is named so, or it is hop-by-hop anyway).
    named: [Span; MAX_CONNECTION_TOKENS],
    len: usize,
    /// More tokens than [`MAX_CONNECTION_TOKENS`].
    pub overflow: bool,
}

impl ConnectionTokens {
    pub fn named(&self) -> &[Span] {
        self.named.get(..self.len).unwrap_or_default()
    }

    /// Whether the field called `name` is named by `Connection` (to strip it).
    pub fn names(&self, buf: &[u8], name: &[u8]) -> bool {
        self.named()
            .iter()
            .any(|token| token.of(buf).eq_ignore_ascii_case(name))
    }

    /// Adds the tokens of one `Connection` field value, found at `value` in `buf`.
    fn add(&mut self, buf: &[u8], value: Span) {
        let bytes = value.of(buf);
        let mut offset = 0usize;
        for element in bytes.split(|&b| b == b',') {
            let start = offset;
            offset += element.len() + 1;
            let token = element.trim_ascii();
            // As `headers::strip_hop_by_hop`: what is not a field name names nothing.
            if token.is_empty() || !token.iter().all(|&b| is_tchar(b)) {
                continue;
            }
            let lead = element.len() - element.trim_ascii_start().len();
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if token.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            }
            match self.named.get_mut(self.len) {
                Some(slot) => {
                    *slot = Span {
                        start: value.start.saturating_add((start + lead) as u32),
                        len: token.len() as u32,
                    };
                    self.len += 1;
                }
                None => self.overflow = true,
            }
        }
    }
}

/// Why the fast path hands a message to hyper instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fallback {
    /// HTTP/1.0 or an unknown version (RFC 9112 section 2.3).
    Version,
    /// The HTTP/2 connection preface of h2c with prior knowledge (RFC 9113 section 3.4).
    H2c,
    /// Absolute-form, authority-form or asterisk-form (RFC 9112 section 3.2).
    TargetForm,
    /// `CONNECT` (RFC 9110 section 9.3.6).
    Connect,
    /// `Upgrade` or `Connection: upgrade` (RFC 9110 section 7.8); a 101 response.
    Upgrade,
    /// Any `Expect` (RFC 9110 section 10.1.1).
    Expect,
    /// No `Host`, or several (RFC 9112 section 3.2: hyper decides, as today).
    Host,
    /// Transfer codings other than a lone `chunked` (RFC 9112 section 6.1).
    TransferCoding,
    /// More `Connection` tokens than the fast path tracks.
    ConnectionTokens,
}

/// A parse result: a whole head, more bytes needed, or a message for hyper.
#[derive(Clone, Debug)]
pub(crate) enum Parsed<H> {
    /// The head, and its length in the buffer: the bytes past `len` (a body, a pipelined
    /// request) are not the head's.
    Complete { head: H, len: usize },
    /// The head is not complete yet (and within the limits so far).
    Partial,
    /// Not for the fast path: hand all the bytes read so far to hyper.
    Fallback(Fallback),
}

/// A message the fast path refuses: the status to answer with (400 or 431 for a request;
/// 502 for a backend's response) and a short reason for the client. No 501: a transfer
/// coding the fast path does not know (RFC 9112 section 6.1) is hyper's to answer, as today.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Refusal {
    pub status: u16,
    pub message: &'static str,
}

impl Refusal {
    pub(crate) const fn bad_request(message: &'static str) -> Self {
        Self {
            status: 400,
            message,
        }
    }

    pub(crate) const fn too_large(message: &'static str) -> Self {
        Self {
            status: 431,
            message,
        }
    }

    pub(crate) const fn bad_gateway(message: &'static str) -> Self {
        Self {
            status: 502,
            message,
        }
    }
}

/// `tchar` of RFC 9110 section 5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Every line of a complete head ends in CRLF: `httparse` also takes a bare LF, which
/// RFC 9112 section 2.2 lets a recipient accept, but a proxy that does so while the next hop
/// does not is a smuggling vector.
fn lines_end_in_crlf(head: &[u8]) -> bool {
    // Without a branch per byte, so that it is vectorised: the LFs not after a CR are
    // counted (a byte-by-byte loop with an early exit cost ~1,000 instructions per request).
    let (Some(&first), Some(rest)) = (head.first(), head.get(1..)) else {
        return true;
    };
    let bare = rest
        .iter()
        .zip(head)
        .map(|(&b, &previous)| usize::from((b == b'\n') & (previous != b'\r')))
        .sum::<usize>();
    first != b'\n' && bare == 0
}

/// The refusals of one side's heads.
struct HeadRefusals {
    malformed: Refusal,
    bare_lf: Refusal,
    too_large: Refusal,
    too_many: Refusal,
}

/// The length of the head `httparse` found in `buf` (`parsed`), `None` while it is partial,
/// after the checks `httparse` does not make: lines end in CRLF (RFC 9112 section 2.2, also
/// while partial, so a bare LF is refused at once), the head is within `limits` (also while
/// partial, so a client cannot make the buffer grow past them).
fn head_len(
    buf: &[u8],
    limits: Limits,
    parsed: httparse::Result<usize>,
    refusals: &HeadRefusals,
) -> Result<Option<usize>, Refusal> {
    let head = match parsed {
        Ok(httparse::Status::Complete(len)) => buf.get(..len),
        Ok(httparse::Status::Partial) => None,
        Err(httparse::Error::TooManyHeaders) => return Err(refusals.too_many),
        Err(_) => return Err(refusals.malformed),
    };
    if !lines_end_in_crlf(head.unwrap_or(buf)) {
        return Err(refusals.bare_lf);
    }
    if head.unwrap_or(buf).len() > limits.max_head_bytes {
        return Err(refusals.too_large);
    }
    Ok(head.map(<[u8]>::len))
}

/// A `Content-Length` value (RFC 9110 section 8.6): digits only, never empty, no sign; a list
/// of equal values (`42, 42`) is that value; overflow refused. `None`: invalid.
fn content_length(value: &[u8]) -> Option<u64> {
    let mut length = None;
    for element in value.split(|&b| b == b',') {
        let digits = element.trim_ascii();
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let mut n = 0u64;
        for &d in digits {
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        }
        match length {
            Some(earlier) if earlier != n => return None,
            _ => length = Some(n),
        }
    }
    length
}

/// What the `Transfer-Encoding` fields (all of them, in order) say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Coding {
    /// Exactly one coding, `chunked`.
    Chunked,
    /// `chunked` last, other codings before it.
    ChunkedAfterOthers,
    /// The last coding is not `chunked` (or a list element is empty or not a token).
    NotChunked,
}

/// Reads the transfer codings of the `Transfer-Encoding` fields `values` (RFC 9112 section
/// 6.1); `None` if there are none. Parameters are not allowed on `chunked`.
fn transfer_coding<'b>(values: impl Iterator<Item = &'b [u8]>) -> Option<Coding> {
    let mut count = 0usize;
    let mut last_chunked = false;
    let mut chunked_before = false;
    let mut malformed = false;
    for value in values {
        for element in value.split(|&b| b == b',') {
            let coding = element.trim_ascii();
            if coding.is_empty() {
                malformed = true;
                continue;
            }
            if last_chunked {
                chunked_before = true;
            }
            count += 1;
            last_chunked = coding.eq_ignore_ascii_case(b"chunked");
            if !last_chunked
                && !coding
                    .iter()
                    .all(|&b| is_tchar(b) || b";= \t\"".contains(&b))
            {
                malformed = true;
            }
        }
    }
    if count == 0 && !malformed {
        return None;
    }
    Some(if malformed || !last_chunked || chunked_before {
        Coding::NotChunked
    } else if count == 1 {
        Coding::Chunked
    } else {
        Coding::ChunkedAfterOthers
    })
}

/// A header's name is `name` (field names are case-insensitive, RFC 9110 section 5.1).
fn is(buf: &[u8], field: &HeaderSpan, name: &[u8]) -> bool {
    field.name.of(buf).eq_ignore_ascii_case(name)
}

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests;
