//! Header rewriting: hop-by-hop headers removed both ways (RFC 9110 section 7.6.1), the
//! `X-Forwarded-*` family added, the size of a request head measured.

use http::{HeaderMap, HeaderName, HeaderValue, header};

/// Hop-by-hop headers, never forwarded (`Upgrade`/`Connection` are re-added for upgrades).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    // Handled by the balancer with its own client (100-continue).
    header::EXPECT,
];

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_BACKEND: HeaderName = HeaderName::from_static("x-backend");
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name == KEEP_ALIVE || name == PROXY_CONNECTION
}

/// Removes hop-by-hop headers, including those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one cheap pass instead of a lookup per name.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // The fields named by every `Connection` field (RFC 9110 7.6.1), not only the first.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(KEEP_ALIVE);
    headers.remove(PROXY_CONNECTION);
}

/// Whether the request asks for a protocol upgrade (WebSocket): `Connection: upgrade` and an
/// `Upgrade` header.
pub fn upgrade_requested(headers: &HeaderMap) -> Option<HeaderValue> {
    let upgrade = headers.get(header::UPGRADE)?;
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade.then(|| upgrade.clone())
}

/// Adds `X-Forwarded-For` (the client's address `peer`, appended to what earlier proxies
/// wrote), `X-Forwarded-Proto` and `X-Forwarded-Host` (as this balancer saw them).
pub fn add_forwarded(
    headers: &mut HeaderMap,
    peer: Option<HeaderValue>,
    host: Option<&HeaderValue>,
) {
    // Room for these three and `Host` in one step, not a reallocation per insert.
    headers.reserve(4);
    if let Some(peer) = peer {
        let value = match headers.get(&X_FORWARDED_FOR).map(HeaderValue::as_bytes) {
            Some(earlier) if !earlier.trim_ascii().is_empty() => {
                let mut joined = Vec::with_capacity(earlier.len() + 2 + peer.len());
                joined.extend_from_slice(earlier);
                joined.extend_from_slice(b", ");
                joined.extend_from_slice(peer.as_bytes());
                HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)).ok()
            }
            _ => Some(peer),
        };
        if let Some(value) = value {
            headers.insert(X_FORWARDED_FOR, value);
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    match host {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST, host.clone());
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
}

/// Bytes of the request head as sent: request line and `name: value\r\n` per header.
pub fn head_size(uri: &http::Uri, method: &http::Method, headers: &HeaderMap) -> usize {
    let line = method.as_str().len() + uri.path_and_query().map_or(1, |pq| pq.as_str().len()) + 12;
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_go() {
        let mut headers = map(&[
            ("connection", "keep-alive, x-private-hop"),
            ("keep-alive", "timeout=5"),
            ("x-private-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("content-type", "text/plain"),
            ("x-request-id", "abc"),
        ]);
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<_> = headers.keys().map(|k| k.as_str().to_owned()).collect();
        left.sort();
        assert_eq!(left, ["content-type", "x-request-id"]);
    }

    #[test]
    fn fields_named_by_a_second_connection_field_go_too() {
        let mut headers = map(&[
            ("connection", "x-first"),
            ("connection", "x-second"),
            ("x-first", "1"),
            ("x-second", "2"),
            ("x-kept", "3"),
        ]);
        strip_hop_by_hop(&mut headers);
        let left: Vec<_> = headers.keys().map(|k| k.as_str().to_owned()).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut headers = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "https"),
        ]);
        let host = HeaderValue::from_static("shop.example");
        add_forwarded(
            &mut headers,
            Some(HeaderValue::from_static("127.0.0.1")),
            Some(&host),
        );
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "shop.example");
    }

    #[test]
    fn upgrades_need_both_headers() {
        assert!(upgrade_requested(&map(&[("upgrade", "websocket")])).is_none());
        let both = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(upgrade_requested(&both).unwrap(), "websocket");
    }
}
