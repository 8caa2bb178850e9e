//! Cross-origin access for browser clients on another origin (the agent's dashboard sends jobs
//! through the balancer): preflight answered here, `Access-Control-Allow-Origin` and the
//! exposed `X-Backend`/`X-Cache` headers added to every answer. Off unless `CORS_ORIGINS` is set.

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};

/// Which origins may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cors {
    /// `CORS_ORIGINS` unset or empty: no CORS headers at all.
    Off,
    /// `*`.
    Any,
    /// A comma-separated list of exact origins.
    Origins(Vec<HeaderValue>),
}

const ALLOWED_METHODS: HeaderValue =
    HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS");
const EXPOSED: HeaderValue =
    HeaderValue::from_static("X-Backend, X-Cache, X-Request-Id, Retry-After");
const MAX_AGE: HeaderValue = HeaderValue::from_static("600");

impl Cors {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(Self::Off);
        }
        if text == "*" {
            return Ok(Self::Any);
        }
        text.split(',')
            .map(str::trim)
            .filter(|origin| !origin.is_empty())
            .map(|origin| {
                if origin.starts_with("http://") || origin.starts_with("https://") {
                    HeaderValue::from_str(origin)
                        .map_err(|_| format!("`{origin}` is not a valid origin"))
                } else {
                    Err(format!(
                        "`{origin}` is not an origin such as http://localhost:9000"
                    ))
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self::Origins)
    }

    /// The `Access-Control-Allow-Origin` value for a request from `origin`, if allowed.
    fn allow(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        let origin = origin?;
        match self {
            Self::Off => None,
            Self::Any => Some(HeaderValue::from_static("*")),
            Self::Origins(list) => list.contains(origin).then(|| origin.clone()),
        }
    }

    /// Answers a preflight request here, when it is one and CORS is on.
    pub fn preflight(&self, method: &Method, headers: &HeaderMap) -> Option<Response<()>> {
        if *self == Self::Off
            || method != Method::OPTIONS
            || !headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            return None;
        }
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let out = response.headers_mut();
        if let Some(allow) = self.allow(headers.get(header::ORIGIN)) {
            out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
            out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, ALLOWED_METHODS);
            if let Some(requested) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
                out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
            }
            out.insert(header::ACCESS_CONTROL_MAX_AGE, MAX_AGE);
        }
        out.insert(header::VARY, HeaderValue::from_static("Origin"));
        Some(response)
    }

    /// Adds the CORS headers of an answer to a request from `origin`.
    pub fn decorate(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        if let Some(allow) = self.allow(origin) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSED);
            headers.append(header::VARY, HeaderValue::from_static("Origin"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse() {
        assert_eq!(Cors::parse(""), Ok(Cors::Off));
        assert_eq!(Cors::parse("*"), Ok(Cors::Any));
        assert_eq!(
            Cors::parse("http://a:9000, https://b"),
            Ok(Cors::Origins(vec![
                HeaderValue::from_static("http://a:9000"),
                HeaderValue::from_static("https://b")
            ]))
        );
        assert!(Cors::parse("a.example").is_err());
    }

    #[test]
    fn preflight_and_answers_carry_the_headers_only_for_allowed_origins() {
        let cors = Cors::parse("http://dash:9000").unwrap();
        let mut request = HeaderMap::new();
        request.insert(header::ORIGIN, HeaderValue::from_static("http://dash:9000"));
        request.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("POST"),
        );
        request.insert(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            HeaderValue::from_static("content-type"),
        );
        let answer: Response<()> = cors.preflight(&Method::OPTIONS, &request).unwrap();
        assert_eq!(answer.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            answer.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "http://dash:9000"
        );
        assert_eq!(
            answer.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS],
            "content-type"
        );
        assert!(cors.preflight(&Method::GET, &request).is_none());

        let mut headers = HeaderMap::new();
        cors.decorate(request.get(header::ORIGIN), &mut headers);
        assert_eq!(
            headers[header::ACCESS_CONTROL_EXPOSE_HEADERS],
            "X-Backend, X-Cache, X-Request-Id, Retry-After"
        );
        let mut other = HeaderMap::new();
        cors.decorate(Some(&HeaderValue::from_static("http://evil")), &mut other);
        assert!(other.is_empty());
        assert!(Cors::Off.preflight(&Method::OPTIONS, &request).is_none());
    }
}
