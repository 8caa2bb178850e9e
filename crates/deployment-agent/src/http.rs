//! The agent's HTTP API: health, per-container scores, the original prototypes' `/status`
//! and `/graph` shapes, events, metrics, and the mutating calls (scale, drain) behind an
//! optional bearer token. CORS origins are configurable for dashboards on other ports.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use common::{ErrorBody, queue::Category};
use serde::Deserialize;
use serde_json::{Value, json};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use crate::agent::Agent;

/// Largest body a mutating call accepts.
const MAX_BODY: usize = 16 * 1024;

pub fn router(agent: Agent) -> Router {
    Router::new()
        .route("/health", get(|| async { "OK" }))
        .route("/stats", get(stats))
        .route("/status", get(status))
        .route("/graph", get(graph))
        .route("/queue", get(queue))
        .route("/events", get(events))
        .route("/config", get(config))
        .route("/metrics", get(metrics))
        .route("/scale", post(scale))
        .route("/containers/{id}/drain", post(drain))
        .route("/ws", get(crate::ws::upgrade))
        .route("/ws/events", get(crate::ws::upgrade_events))
        .merge(crate::dashboard::routes(agent.config().dashboard))
        .fallback(|request: Request| async move {
            error(
                StatusCode::NOT_FOUND,
                format!("no route for {} {}", request.method(), request.uri().path()),
            )
        })
        .layer(middleware::from_fn_with_state(agent.clone(), authorize))
        .layer(cors(&agent.config().cors_origins))
        .with_state(agent)
}

fn cors(origins: &str) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION]);
    if origins.trim() == "*" {
        layer.allow_origin(Any)
    } else {
        let list: Vec<HeaderValue> = origins
            .split(',')
            .map(str::trim)
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        layer.allow_origin(AllowOrigin::list(list))
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(ErrorBody::new(message))).into_response()
}

/// Mutating calls need `Authorization: Bearer <AGENT_TOKEN>` when a token is configured.
async fn authorize(State(agent): State<Agent>, request: Request, next: Next) -> Response {
    if request.method() == Method::POST {
        if let Some(token) = &agent.config().token {
            if !bearer_matches(request.headers(), token) {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "this call needs Authorization: Bearer <AGENT_TOKEN>",
                );
            }
        }
    }
    next.run(request).await
}

pub fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .is_some_and(|given| constant_time_eq(given.trim().as_bytes(), token.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn stats(State(agent): State<Agent>) -> Json<Value> {
    Json(json!({
        "containers": agent.statuses(),
        "mean_utilization": agent.mean_utilization(),
        "bounds": agent.bounds(),
        "runtime": agent.runtime_kind(),
        "store": agent.store().status(),
    }))
}

/// Seed 002's shape.
async fn status(State(agent): State<Agent>) -> Json<Value> {
    let statuses = agent.statuses();
    let workers: Vec<Value> = statuses
        .iter()
        .map(|s| {
            json!({
                "core_id": s.core_id,
                "container_id": s.id,
                "name": s.name,
                "address": s.address,
                "host_port": s.address.rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok()),
                "cpu_usage": format!("{:.1}%", s.cpu_util),
                "is_healthy": s.healthy,
                "category": s.category,
            })
        })
        .collect();
    let standby = {
        let world = agent.world();
        json!({
            "ready": world.standby.iter().map(|standby| standby.name.as_str()).collect::<Vec<_>>(),
            "preparing": world.preparing.len(),
            "target": agent.config().warm_pool,
        })
    };
    Json(json!({
        "status": "running",
        "worker_count": workers.len(),
        "workers": workers,
        "bounds": agent.bounds(),
        "warm_standby": standby,
    }))
}

/// Seed 000's graph format, exactly: coloured nodes, edges along the queue order.
async fn graph(State(agent): State<Agent>) -> Json<Value> {
    let snapshot = agent.snapshot();
    let nodes: Vec<Value> = snapshot
        .items
        .iter()
        .map(|item| {
            let color = match item.utilization_category {
                Category::Init | Category::Low => "green",
                Category::Medium => "yellow",
                Category::High | Category::Sundown => "red",
            };
            json!({
                "id": item.id,
                "label": item.dns_name,
                "color": color,
                "load": item.in_flight,
                "port": item.address.rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok()),
            })
        })
        .collect();
    let edges: Vec<Value> = snapshot
        .items
        .windows(2)
        .map(|pair| json!({ "source": pair[0].id, "target": pair[1].id }))
        .collect();
    let total_load: u64 = snapshot.items.iter().map(|item| item.in_flight).sum();
    Json(json!({
        "nodes": nodes,
        "edges": edges,
        "timestamp": iso_timestamp(SystemTime::now()),
        "total_containers": snapshot.items.len(),
        "total_load": total_load,
    }))
}

/// `2024-01-01T12:00:00`, as the original's `datetime.isoformat()` without fractions.
fn iso_timestamp(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let rfc = humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string();
    rfc.trim_end_matches('Z').to_owned()
}

async fn queue(State(agent): State<Agent>) -> Json<Value> {
    Json(serde_json::to_value(&*agent.snapshot()).unwrap_or(Value::Null))
}

#[derive(Deserialize)]
struct EventsQuery {
    limit: Option<usize>,
}

async fn events(State(agent): State<Agent>, query: Query<EventsQuery>) -> Json<Value> {
    let limit = query.limit.unwrap_or(100).min(1000);
    Json(json!({ "events": agent.store().recent_events(limit) }))
}

async fn config(State(agent): State<Agent>) -> Json<Value> {
    let scaling = agent.scaling();
    let config = agent.config();
    Json(json!({
        "min_replicas": scaling.min_replicas,
        "max_replicas": scaling.max_replicas,
        "scale_step": scaling.step,
        "high_load_threshold": scaling.high,
        "low_load_threshold": scaling.low,
        "critical_load_threshold": scaling.critical,
        "prespawn_threshold": scaling.prespawn_cpu,
        "max_cpu_threshold": config.max_cpu_threshold,
        "target_concurrency": scaling.target_concurrency,
        "cooldown_up_s": scaling.cooldown_up.as_secs_f64(),
        "cooldown_down_s": scaling.cooldown_down.as_secs_f64(),
        "image": config.image,
        "app": config.app,
        "token_required": config.token.is_some(),
        "dashboard": config.dashboard,
        "balancer_url": config.dashboard_balancer_url,
    }))
}

async fn metrics(State(agent): State<Agent>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        agent.metrics_text(),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleBody {
    replicas: Option<usize>,
    min_replicas: Option<usize>,
    max_replicas: Option<usize>,
}

async fn scale(State(agent): State<Agent>, body: Bytes) -> Response {
    if body.len() > MAX_BODY {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body over {MAX_BODY} bytes"),
        );
    }
    let body: ScaleBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(err) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "expected {{\"replicas\": n}} and/or {{\"min_replicas\": n, \"max_replicas\": n}}: {err}"
                ),
            );
        }
    };
    if body.replicas.is_none() && body.min_replicas.is_none() && body.max_replicas.is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "give `replicas`, `min_replicas` or `max_replicas`",
        );
    }
    if body.min_replicas.is_some() || body.max_replicas.is_some() {
        if let Err(message) = agent.set_bounds(body.min_replicas, body.max_replicas) {
            return error(StatusCode::BAD_REQUEST, message);
        }
    }
    let target = body
        .replicas
        .map(|replicas| agent.request_replicas(replicas));
    let bounds = agent.bounds();
    (
        StatusCode::ACCEPTED,
        Json(json!({
            "replicas": target.unwrap_or(bounds.desired_replicas),
            "min_replicas": bounds.min_replicas,
            "max_replicas": bounds.max_replicas,
        })),
    )
        .into_response()
}

async fn drain(State(agent): State<Agent>, Path(id): Path<String>) -> Response {
    match agent.drain(&id) {
        Some(id) => (
            StatusCode::ACCEPTED,
            Json(json!({ "id": id, "draining": true })),
        )
            .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no single container matches `{id}`"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_look_like_isoformat() {
        let at = UNIX_EPOCH + std::time::Duration::from_secs(1_704_110_400);
        assert_eq!(iso_timestamp(at), "2024-01-01T12:00:00");
    }

    #[test]
    fn bearer_tokens_are_compared_exactly() {
        let mut headers = HeaderMap::new();
        assert!(!bearer_matches(&headers, "secret"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer secret"),
        );
        assert!(bearer_matches(&headers, "secret"));
        assert!(!bearer_matches(&headers, "secreT"));
        assert!(!bearer_matches(&headers, "secret2"));
    }
}
