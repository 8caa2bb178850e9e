//! The live dashboard: one static page (HTML, CSS, JavaScript) embedded in the binary and
//! served on the HTTP port at `/` and `/dashboard`. The page reads `/config`, subscribes to
//! `/ws` (queue) and `/ws/events` (event log) on its own origin, posts jobs to the balancer
//! (`balancer_url` in `/config`), uses `/scale` and `/containers/{id}/drain`, follows
//! `/containers/{id}/logs` and shows `/requests/{id}` (a request's journey). No build
//! step: the files in `dashboard/` are what the browser gets. `DASHBOARD=false` turns every
//! route here into a 404.

use axum::{
    Json, Router,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use common::ErrorBody;

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE_CSS: &str = include_str!("dashboard/style.css");

/// Scripts and styles only from this origin; connections (the balancer on another port, the
/// WebSockets) anywhere over http(s)/ws(s). Nothing inline, nothing from a CDN.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self' http: https: ws: wss:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The page's routes; with `enabled == false` they answer 404 with a JSON error.
pub fn routes<S: Clone + Send + Sync + 'static>(enabled: bool) -> Router<S> {
    let paths = [
        "/",
        "/dashboard",
        "/dashboard/app.js",
        "/dashboard/style.css",
    ];
    if !enabled {
        return paths.into_iter().fold(Router::new(), |router, path| {
            router.route(path, get(disabled))
        });
    }
    Router::new()
        .route("/", get(index))
        .route("/dashboard", get(index))
        .route("/dashboard/app.js", get(app_js))
        .route("/dashboard/style.css", get(style_css))
}

async fn index() -> Response {
    let mut response = asset("text/html; charset=utf-8", INDEX_HTML);
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    response
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn disabled() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(ErrorBody::new(
            "the dashboard is disabled (DASHBOARD=false)",
        )),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    async fn get(router: &Router, path: &str) -> (StatusCode, http::HeaderMap, String) {
        let request = http::Request::get(path).body(Body::empty()).unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn serves_the_page_and_its_assets_with_their_types() {
        let router: Router = routes(true);
        for (path, content_type, marker) in [
            ("/", "text/html; charset=utf-8", "<!doctype html>"),
            ("/dashboard", "text/html; charset=utf-8", "<!doctype html>"),
            (
                "/dashboard/app.js",
                "text/javascript; charset=utf-8",
                "\"use strict\"",
            ),
            ("/dashboard/style.css", "text/css; charset=utf-8", ":root"),
        ] {
            let (status, headers, body) = get(&router, path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert_eq!(headers[header::CONTENT_TYPE], content_type, "{path}");
            assert_eq!(headers[header::CACHE_CONTROL], "no-cache", "{path}");
            assert!(body.contains(marker), "{path} lacks {marker}");
        }
        let (_, headers, html) = get(&router, "/").await;
        assert!(headers.contains_key(header::CONTENT_SECURITY_POLICY));
        // Relative asset paths: the page works under `/`, `/dashboard` and behind a prefix.
        assert!(html.contains("src=\"dashboard/app.js\""));
        assert!(html.contains("href=\"dashboard/style.css\""));
    }

    #[tokio::test]
    async fn a_disabled_dashboard_answers_404_json() {
        let router: Router = routes(false);
        for path in [
            "/",
            "/dashboard",
            "/dashboard/app.js",
            "/dashboard/style.css",
        ] {
            let (status, headers, body) = get(&router, path).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
            assert_eq!(headers[header::CONTENT_TYPE], "application/json");
            assert!(body.contains("DASHBOARD=false"), "{body}");
        }
    }

    /// The page never inserts markup from data: no `innerHTML`, `outerHTML`,
    /// `insertAdjacentHTML` or `document.write` anywhere in the script.
    #[test]
    fn the_script_builds_the_dom_without_html_strings() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
        ] {
            assert!(!APP_JS.contains(sink), "app.js uses {sink}");
        }
    }
}
