//! Routes the operator names by path prefix: `BALANCER_DENY_PATHS` (answered 404, never
//! forwarded) and `RETRY_ROUTES` (safe to send again). Both match whole segments of the
//! normalised path, so `/stop` covers `/stop` and `/stop/x` but not `/stopwatch`, and no
//! spelling of a path (`/%73top`, `//stop`, `/x/../stop`, `/./stop`, `/stop;x`) slips past.

use std::{borrow::Cow, fmt};

use http::Method;

/// A path prefix as its segments, normalised like request paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix {
    text: String,
    segments: Vec<Vec<u8>>,
}

impl Prefix {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if !text.starts_with('/') {
            return Err(format!("`{text}` is not a path prefix; write it as /path"));
        }
        let segments = segments(text.as_bytes());
        if segments.is_empty() {
            return Err(format!("`{text}` would match every path"));
        }
        Ok(Self {
            text: text.to_owned(),
            segments,
        })
    }

    /// Whether `path` lies under this prefix.
    pub fn contains(&self, path: &Path) -> bool {
        path.0.len() >= self.segments.len()
            && path.0.iter().zip(&self.segments).all(|(a, b)| a == b)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A request's path, normalised once to be matched against any number of prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path(Vec<Vec<u8>>);

impl Path {
    /// `path` is the request's raw path, without the query.
    pub fn new(path: &str) -> Self {
        Self(segments(path.as_bytes()))
    }
}

/// The segments of `path` as a backend could understand them: percent-escapes decoded (again
/// until none is left, so a double escape is no way around), `\` taken as `/`, empty and `.`
/// segments dropped, `..` taking back the segment before it, `;parameters` cut off.
fn segments(path: &[u8]) -> Vec<Vec<u8>> {
    let mut path = Cow::Borrowed(path);
    // Each round makes the path shorter; a few rounds decode any real-world nesting.
    for _ in 0..4 {
        match percent_decode(&path) {
            Some(decoded) => path = Cow::Owned(decoded),
            None => break,
        }
    }
    let mut segments: Vec<Vec<u8>> = Vec::new();
    for segment in path.split(|b| *b == b'/' || *b == b'\\') {
        let segment = match segment.iter().position(|b| *b == b';') {
            Some(end) => &segment[..end],
            None => segment,
        };
        match segment {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            _ => segments.push(segment.to_vec()),
        }
    }
    segments
}

/// `path` with its `%XX` escapes decoded; `None` when it has none.
fn percent_decode(path: &[u8]) -> Option<Vec<u8>> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let mut decoded = None::<Vec<u8>>;
    let mut i = 0;
    while i < path.len() {
        let escaped = (path[i] == b'%')
            .then(|| Some(hex(*path.get(i + 1)?)? << 4 | hex(*path.get(i + 2)?)?))
            .flatten();
        match escaped {
            Some(byte) => {
                decoded.get_or_insert_with(|| path[..i].to_vec()).push(byte);
                i += 3;
            }
            None => {
                if let Some(decoded) = &mut decoded {
                    decoded.push(path[i]);
                }
                i += 1;
            }
        }
    }
    decoded
}

/// `BALANCER_DENY_PATHS`: path prefixes answered 404 without reaching a backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DenyPaths(Vec<Prefix>);

impl DenyPaths {
    /// Comma-separated path prefixes (`/stop,/admin`); empty denies nothing.
    pub fn parse(text: &str) -> Result<Self, String> {
        text.split(',')
            .filter(|entry| !entry.trim().is_empty())
            .map(Prefix::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether requests for `path` are refused.
    pub fn denies(&self, path: &Path) -> bool {
        self.0.iter().any(|prefix| prefix.contains(path))
    }
}

/// One entry of `RETRY_ROUTES`: a method and a path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub method: Method,
    pub prefix: Prefix,
}

/// `RETRY_ROUTES`: requests the operator declared safe to send again (pure computations),
/// retried on another backend like idempotent ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryRoutes(Vec<Route>);

impl RetryRoutes {
    /// `METHOD /prefix` entries, comma-separated (`POST /submit,POST /work`); empty is none.
    pub fn parse(text: &str) -> Result<Self, String> {
        text.split(',')
            .filter(|entry| !entry.trim().is_empty())
            .map(|entry| {
                let entry = entry.trim();
                let (method, prefix) = entry
                    .split_once(char::is_whitespace)
                    .ok_or_else(|| format!("`{entry}` is not `METHOD /prefix`"))?;
                let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                    .map_err(|_| format!("`{method}` is not an HTTP method"))?;
                Ok(Route {
                    method,
                    prefix: Prefix::parse(prefix)?,
                })
            })
            .collect::<Result<Vec<_>, String>>()
            .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a `method` request for `path` was declared safe to replay.
    pub fn matches(&self, method: &Method, path: &Path) -> bool {
        self.0
            .iter()
            .any(|route| route.method == method && route.prefix.contains(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_paths_match_whole_segments_of_every_spelling() {
        let deny = DenyPaths::parse(" /stop, /admin/api ").unwrap();
        for path in [
            "/stop",
            "/stop/",
            "/stop/x",
            "//stop",
            "/./stop",
            "/x/../stop",
            "/%73top",
            "/%2573top",
            "/st%6Fp/x",
            "%2Fstop",
            "/stop;jsessionid=1",
            "\\stop",
            "/admin/api/users",
            "/admin//api",
        ] {
            assert!(deny.denies(&Path::new(path)), "{path} must be denied");
        }
        for path in [
            "/",
            "/stopwatch",
            "/x/stop",
            "/admin",
            "/admin/apis",
            "/Stop",
        ] {
            assert!(!deny.denies(&Path::new(path)), "{path} must pass");
        }
        assert!(DenyPaths::parse("").unwrap().is_empty());
        assert!(!DenyPaths::default().denies(&Path::new("/stop")));
    }

    #[test]
    fn bad_prefixes_are_refused() {
        assert!(DenyPaths::parse("stop").unwrap_err().contains("/path"));
        assert!(DenyPaths::parse("/").unwrap_err().contains("every path"));
        assert!(DenyPaths::parse("/x/..").is_err());
    }

    #[test]
    fn retry_routes_need_the_method_and_the_prefix() {
        let routes = RetryRoutes::parse("POST /submit, post /work").unwrap();
        let path = |p: &str| Path::new(p);
        assert!(routes.matches(&Method::POST, &path("/submit")));
        assert!(routes.matches(&Method::POST, &path("/work/7")));
        assert!(!routes.matches(&Method::PUT, &path("/submit")));
        assert!(!routes.matches(&Method::POST, &path("/submitted")));
        assert!(!routes.matches(&Method::POST, &path("/heavy")));
        assert!(RetryRoutes::parse("").unwrap().is_empty());
        assert!(RetryRoutes::parse("/submit").is_err());
        assert!(RetryRoutes::parse("POST submit").is_err());
        assert!(RetryRoutes::parse("PO(ST /submit").is_err());
    }
}
