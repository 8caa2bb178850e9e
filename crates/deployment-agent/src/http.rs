//! The agent's HTTP API: health, per-container scores, the original prototypes' `/status`
//! and `/graph` shapes, events, metrics, and the mutating calls (scale, drain). A mutating
//! call must come from the agent's own origin or a listed one (CORS_ORIGINS), carry
//! `Content-Type: application/json` and the agent's bearer token (see `auth`). CORS lets the
//! listed origins read and change, `*` read only.

use std::{
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

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
use tower_http::cors::{AllowMethods, AllowOrigin, CorsLayer};

use crate::{agent::Agent, config::Access, store::EventKind};

/// Largest body a mutating call accepts.
const MAX_BODY: usize = 16 * 1024;

pub fn router(agent: Agent) -> Router {
    let origins = Arc::new(Origins::parse(&agent.config().cors_origins));
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
        .route("/containers/{id}/logs", get(crate::logs::container_logs))
        .route("/requests/{id}", get(crate::journey::journey))
        .route("/leadership/step-down", post(step_down))
        .route("/ws", get(crate::ws::upgrade))
        .route("/ws/events", get(crate::ws::upgrade_events))
        .merge(crate::dashboard::routes(agent.config().dashboard))
        .fallback(|request: Request| async move {
            error(
                StatusCode::NOT_FOUND,
                format!("no route for {} {}", request.method(), request.uri().path()),
            )
        })
        .layer(middleware::from_fn_with_state(
            Guard {
                agent: agent.clone(),
                origins: Arc::clone(&origins),
            },
            guard,
        ))
        .layer(tower::util::option_layer(cors(&origins)))
        .with_state(agent)
}

/// CORS_ORIGINS: `*` (any page may read) and/or a list of origins (may read and change).
#[derive(Debug, Default)]
struct Origins {
    any: bool,
    listed: Vec<String>,
}

impl Origins {
    fn parse(text: &str) -> Self {
        let mut origins = Self::default();
        for origin in text.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            if origin == "*" {
                origins.any = true;
            } else {
                origins
                    .listed
                    .push(origin.trim_end_matches('/').to_ascii_lowercase());
            }
        }
        origins
    }

    fn lists(&self, origin: &str) -> bool {
        self.listed.iter().any(|listed| listed == origin)
    }
}

/// No CORS_ORIGINS: no CORS layer at all (same origin only). Listed origins may read and
/// send mutating calls (their preflight is answered); `*` lets any page read (GET) only.
fn cors(origins: &Origins) -> Option<CorsLayer> {
    if origins.listed.is_empty() && !origins.any {
        return None;
    }
    let listed: Vec<HeaderValue> = origins
        .listed
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    let any = origins.any;
    let layer = CorsLayer::new()
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
        .allow_methods(AllowMethods::mirror_request())
        .allow_origin(AllowOrigin::predicate(move |origin, request| {
            let listed = listed
                .iter()
                .any(|l| l.as_bytes().eq_ignore_ascii_case(origin.as_bytes()));
            let reads = request.method == Method::GET
                || request
                    .headers
                    .get(header::ACCESS_CONTROL_REQUEST_METHOD)
                    .is_some_and(|method| method == "GET");
            listed || (any && reads)
        }));
    Some(layer)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(ErrorBody::new(message))).into_response()
}

/// The state of [`guard`].
#[derive(Clone)]
struct Guard {
    agent: Agent,
    origins: Arc<Origins>,
}

/// What a mutating call (any method but GET, HEAD, OPTIONS) must pass, in order: its
/// `Origin`, when a browser sent one, is the agent's own or listed (403); it carries the
/// token (401); its body is JSON (415).
async fn guard(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return next.run(request).await;
    }
    let headers = request.headers();
    if let Some(origin) = headers.get(header::ORIGIN) {
        let listed = origin
            .to_str()
            .is_ok_and(|origin| guard.origins.lists(&origin.to_ascii_lowercase()));
        if !listed && !same_origin(origin, &request) {
            return error(
                StatusCode::FORBIDDEN,
                "changes are accepted from the agent's own pages and the origins in CORS_ORIGINS only",
            );
        }
    }
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    if let Err(refusal) = crate::auth::check(&guard.agent.config().access(), authorization) {
        let mut response = error(StatusCode::UNAUTHORIZED, refusal.message());
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    if !is_json(headers) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "changes need `Content-Type: application/json`",
        );
    }
    if !guard.agent.is_leading() {
        return crate::forward::to_leader(&guard.agent, request).await;
    }
    next.run(request).await
}

/// `Origin` is `scheme://` + the host the request was sent to (`Host`, or the URI's authority
/// for HTTP/2).
fn same_origin(origin: &HeaderValue, request: &Request) -> bool {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|origin| origin.split_once("://"))
        .map(|(_, host)| host);
    matches!((origin_host, host), (Some(a), Some(b)) if a.eq_ignore_ascii_case(b))
}

/// `application/json`, parameters (`; charset=utf-8`) allowed.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
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
                "in_flight": s.in_flight,
                "concurrency": s.concurrency,
                "work_seconds": s.work_seconds,
            })
        })
        .collect();
    let (standby, balancers, load) = {
        let world = agent.world();
        let now = Instant::now();
        let standby = json!({
            "ready": world.standby_names(),
            "preparing": world.preparing_count(),
            "target": agent.config().warm_pool,
        });
        (
            standby,
            world.reporting_balancers(now),
            world.balancer_load(now),
        )
    };
    Json(json!({
        "status": "running",
        "worker_count": workers.len(),
        "workers": workers,
        "bounds": agent.bounds(),
        "warm_standby": standby,
        "pool": agent.pool_status(),
        "leadership": agent.leadership(),
        "balancers": balancers,
        "balancer_load": load,
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

/// The current snapshot, as the WebSocket subscribers get it (the same shared text).
async fn queue(State(agent): State<Agent>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        Bytes::from(agent.snapshot().json()),
    )
        .into_response()
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
    let access = config.access();
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
        "target_work_seconds": scaling.target_work_seconds,
        "work_per_container_s": scaling.work_per_container(),
        "cooldown_up_s": scaling.cooldown_up.as_secs_f64(),
        "cooldown_down_s": scaling.cooldown_down.as_secs_f64(),
        "image": config.image,
        "app": config.app,
        "probe": {
            "kind": config.worker_probe,
            "path": config.worker_probe_path,
            "status": config.worker_probe_status.to_string(),
            "target_port": config.target_port,
            "period_s": config.probe_period.as_secs_f64(),
            "timeout_s": config.probe_timeout.as_secs_f64(),
            "startup_timeout_s": config.startup_timeout.as_secs_f64(),
            "unhealthy_threshold": config.unhealthy_threshold,
            "unhealthy_timeout_s": config.unhealthy_timeout.as_secs_f64(),
        },
        "crash_backoff_initial_s": config.crash_backoff_initial.as_secs_f64(),
        "crash_backoff_max_s": config.crash_backoff_max.as_secs_f64(),
        "token_required": !matches!(access, Access::Open),
        "locked": matches!(access, Access::Locked),
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
    for (field, value) in [
        ("replicas", body.replicas),
        ("min_replicas", body.min_replicas),
        ("max_replicas", body.max_replicas),
    ] {
        if let Err(message) = agent.check_limit(field, value) {
            return error(StatusCode::BAD_REQUEST, message);
        }
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

/// Longest hold a step-down may ask for.
const MAX_HOLD_SECONDS: u64 = 300;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepDownBody {
    /// How long the leader yields the lead to the other agents (default: three leases).
    hold_seconds: Option<u64>,
}

/// Hands the lead to another agent (maintenance of the leader's host): the leader releases
/// the lease and, for the hold, takes it again only if no other agent does (see
/// `lease::HOLD_VACANT_LEASES`). A follower forwards it to the leader.
async fn step_down(State(agent): State<Agent>, body: Bytes) -> Response {
    let body: StepDownBody = if body.iter().all(u8::is_ascii_whitespace) {
        StepDownBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(body) => body,
            Err(err) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("expected {{}} or {{\"hold_seconds\": n}}: {err}"),
                );
            }
        }
    };
    let hold = match body.hold_seconds {
        Some(seconds) if seconds == 0 || seconds > MAX_HOLD_SECONDS => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("hold_seconds must be 1 to {MAX_HOLD_SECONDS}, got {seconds}"),
            );
        }
        Some(seconds) => std::time::Duration::from_secs(seconds),
        None => agent.config().leader_lease * 3,
    };
    let elector = &agent.shared().elector;
    if elector.is_solo() {
        return error(
            StatusCode::CONFLICT,
            "this agent leads alone (AGENT_REPLICAS=1): there is no other agent to lead",
        );
    }
    if !elector.step_down(hold) {
        return error(
            StatusCode::CONFLICT,
            "this agent does not lead any more; ask again",
        );
    }
    agent.event(
        EventKind::LeaderStepDown,
        None,
        format!(
            "{} steps down as asked; yielding the lead for {hold:?}",
            agent.id()
        ),
    );
    (
        StatusCode::ACCEPTED,
        Json(json!({
            "agent_id": agent.id(),
            "stepping_down": true,
            "hold_ms": hold.as_millis() as u64,
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
}
