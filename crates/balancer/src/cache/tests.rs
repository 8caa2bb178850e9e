use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};

use super::*;

fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(name.clone(), HeaderValue::from_str(value).unwrap());
    }
    map
}

const TTL: Duration = Duration::from_secs(60);

#[test]
fn static_extensions() {
    for path in [
        "/app.css",
        "/js/main.JS",
        "/img/logo.png",
        "/font.woff2",
        "/index.html",
    ] {
        assert!(is_static_path(path.as_bytes()), "{path}");
    }
    for path in [
        "/",
        "/work",
        "/consume_cpu/3",
        "/api.v1/items",
        "/.css/x",
        "/health",
    ] {
        assert!(!is_static_path(path.as_bytes()), "{path}");
    }
}

#[test]
fn requests_that_bypass_the_cache() {
    let uri: Uri = "/app.css".parse().unwrap();
    assert_eq!(
        lookup(&Method::GET, &uri, &HeaderMap::new()),
        Lookup::Use { static_path: true }
    );
    assert_eq!(
        lookup(&Method::POST, &uri, &HeaderMap::new()),
        Lookup::Bypass
    );
    assert_eq!(
        lookup(&Method::HEAD, &uri, &HeaderMap::new()),
        Lookup::Bypass
    );
    assert_eq!(
        lookup(
            &Method::GET,
            &uri,
            &headers(&[(header::AUTHORIZATION, "Bearer x")])
        ),
        Lookup::Bypass
    );
    assert_eq!(
        lookup(
            &Method::GET,
            &uri,
            &headers(&[(header::CACHE_CONTROL, "no-store")])
        ),
        Lookup::Bypass
    );
    assert_eq!(
        lookup(
            &Method::GET,
            &uri,
            &headers(&[(header::CACHE_CONTROL, "no-cache")])
        ),
        Lookup::Refresh { static_path: true }
    );
}

#[test]
fn answers_that_are_stored_and_for_how_long() {
    let none = HeaderMap::new();
    assert_eq!(storable(true, StatusCode::OK, &none, TTL), Some(TTL));
    assert_eq!(
        storable(false, StatusCode::OK, &none, TTL),
        None,
        "dynamic, no headers"
    );
    assert_eq!(
        storable(
            false,
            StatusCode::OK,
            &headers(&[(header::CACHE_CONTROL, "public, max-age=5")]),
            TTL
        ),
        Some(Duration::from_secs(5))
    );
    assert_eq!(
        storable(
            false,
            StatusCode::OK,
            &headers(&[(header::CACHE_CONTROL, "max-age=5, s-maxage=7")]),
            TTL
        ),
        Some(Duration::from_secs(7))
    );
    assert_eq!(
        storable(
            false,
            StatusCode::OK,
            &headers(&[(header::CACHE_CONTROL, "public")]),
            TTL
        ),
        Some(TTL)
    );
    for refused in [
        headers(&[(header::CACHE_CONTROL, "no-store")]),
        headers(&[(header::CACHE_CONTROL, "private, max-age=60")]),
        headers(&[(header::CACHE_CONTROL, "no-cache")]),
        headers(&[(header::CACHE_CONTROL, "max-age=0")]),
        headers(&[(header::SET_COOKIE, "session=1")]),
        headers(&[(header::VARY, "Accept-Encoding")]),
    ] {
        assert_eq!(
            storable(true, StatusCode::OK, &refused, TTL),
            None,
            "{refused:?}"
        );
    }
    assert_eq!(storable(true, StatusCode::NOT_FOUND, &none, TTL), None);
}

#[tokio::test]
async fn entries_expire_and_the_cache_is_bounded() {
    let cache = Cache::new(CacheConfig {
        capacity: 2,
        max_bytes: 1 << 20,
        max_entry_bytes: 1 << 10,
        ttl: TTL,
    })
    .unwrap();
    let entry = |ttl| Cached {
        status: StatusCode::OK,
        headers: HeaderMap::new(),
        body: bytes::Bytes::from_static(b"body"),
        stored: Instant::now(),
        ttl,
    };
    let lookup = Lookup::Use { static_path: true };
    cache
        .insert("h/a.css".into(), entry(Duration::from_millis(50)), true)
        .await;
    assert!(cache.get("h/a.css", lookup).await.is_some());
    assert!(
        cache
            .get("h/a.css", Lookup::Refresh { static_path: true })
            .await
            .is_none()
    );
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert!(cache.get("h/a.css", lookup).await.is_none(), "expired");

    for i in 0..10 {
        cache.insert(format!("h/{i}.css"), entry(TTL), true).await;
    }
    cache.collect_expired().await;
    assert!(cache.entry_count() <= 2, "{} entries", cache.entry_count());
    assert!(
        Cache::new(CacheConfig {
            capacity: 0,
            max_bytes: 1,
            max_entry_bytes: 1,
            ttl: TTL
        })
        .is_none()
    );
}
