//! The request id every service shares (issue #18): the balancer takes a client's
//! `X-Request-Id` when it is well formed and makes one otherwise; the worker logs it; the agent
//! looks requests up by it. One rule for all three.

/// The request id's header.
pub const HEADER: &str = "x-request-id";

/// The longest request id taken.
pub const MAX_LEN: usize = 128;

/// Whether `id` is a well-formed request id: 1 to [`MAX_LEN`] bytes of `A-Z a-z 0-9 . _ : -`
/// (safe in a URL path, a log line and a header, with no escaping).
pub fn well_formed(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// `value` as a request id, if it is well formed.
pub fn parse(value: &[u8]) -> Option<&str> {
    if well_formed(value) {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_short_ids_are_well_formed() {
        for good in ["a", "A-z_0.9:x", &"x".repeat(MAX_LEN)] {
            assert_eq!(parse(good.as_bytes()), Some(good));
        }
        for bad in [
            "",
            "a b",
            "a/b",
            "<x>",
            "a;b",
            "caf\u{e9}",
            "a\"b",
            &"x".repeat(MAX_LEN + 1),
        ] {
            assert!(!well_formed(bad.as_bytes()), "{bad:?}");
            assert_eq!(parse(bad.as_bytes()), None);
        }
    }
}
