//! The admin port: `/health`, `/ready`, `/backends`, `/metrics`, `/costs`, `/requests`.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering::Relaxed},
};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use common::ErrorBody;
use serde_json::{Value, json};

use crate::{
    backend::SourceKind,
    journal::{self, StatusFilter},
    metrics::Exporter,
    proxy::Shared,
};

/// Records `GET /requests` returns unless `limit` says otherwise.
const DEFAULT_LIST: usize = 100;

#[derive(Debug, Clone)]
pub struct AdminState {
    pub shared: Arc<Shared>,
    pub exporter: Exporter,
    pub draining: Arc<AtomicBool>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/backends", get(backends))
        .route("/metrics", get(metrics))
        .route("/costs", get(costs))
        .route("/requests", get(requests))
        .route("/requests/{id}", get(request))
        .fallback(not_found)
        .with_state(state)
}

/// What jobs cost: each route and class's fit (from `COST_RULES` or `X-Cost`, learned from
/// the backends' `Server-Timing`), and the requests whose cost could not be read, by reason.
async fn costs(State(state): State<AdminState>) -> Json<Value> {
    let costs = &state.shared.costs;
    let fallbacks: serde_json::Map<String, Value> = crate::cost::Fallback::ALL
        .iter()
        .zip(costs.fallbacks())
        .map(|(reason, count)| (reason.label().to_owned(), json!(count)))
        .collect();
    Json(json!({ "fits": costs.fits(), "fallbacks": fallbacks }))
}

/// `GET /requests?status=5xx&limit=N`: the newest records (issue #18), newest first.
async fn requests(
    State(state): State<AdminState>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    if let Some(name) = query
        .keys()
        .find(|name| !matches!(name.as_str(), "status" | "limit"))
    {
        return bad_request(format!("unknown parameter {name:?}; use status and limit"));
    }
    let filter = match query.get("status").map(|raw| StatusFilter::parse(raw)) {
        None => StatusFilter::Any,
        Some(Ok(filter)) => filter,
        Some(Err(message)) => return bad_request(message),
    };
    let limit = match query.get("limit").map(|raw| raw.parse::<usize>()) {
        None => DEFAULT_LIST,
        Some(Ok(limit)) if (1..=journal::MAX_LIST).contains(&limit) => limit,
        Some(_) => {
            return bad_request(format!(
                "limit must be a number from 1 to {}",
                journal::MAX_LIST
            ));
        }
    };
    let journal = &state.shared.journal;
    let (records, kept) = journal.recent(filter, limit);
    Json(json!({ "capacity": journal.capacity(), "kept": kept, "requests": records }))
        .into_response()
}

/// `GET /requests/{id}`: the newest record of that request.
async fn request(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    if !journal::well_formed(id.as_bytes()) {
        return bad_request(format!(
            "a request id is 1 to {} characters of A-Z a-z 0-9 . _ : -",
            journal::MAX_ID_BYTES
        ));
    }
    match state.shared.journal.find(&id) {
        Some(record) => Json(record).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(ErrorBody::new(format!(
                "no request {id} among the {} kept (REQUEST_HISTORY)",
                state.shared.journal.capacity()
            ))),
        )
            .into_response(),
    }
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(ErrorBody::new(message))).into_response()
}

async fn health() -> &'static str {
    "OK"
}

async fn ready(State(state): State<AdminState>) -> Response {
    if state.draining.load(Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(ErrorBody::new("draining: shutting down")),
        )
            .into_response();
    }
    let table = state.shared.backends.load();
    if table.candidates.is_empty() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(ErrorBody::new("no backend takes requests yet")),
        )
            .into_response();
    }
    Json(json!({ "ready": true, "backends": table.candidates.len() })).into_response()
}

async fn backends(State(state): State<AdminState>) -> Json<Value> {
    let shared = &state.shared;
    let table = shared.backends.load_full();
    let now = shared.clock.now();
    let items: Vec<Value> = table
        .entries
        .iter()
        .map(|entry| {
            let backend = &entry.backend;
            json!({
                "id": backend.id,
                "dns_name": backend.dns_name,
                "address": backend.address,
                "category": entry.category.map(|c| c.as_str()),
                "score": entry.score,
                "weight": if entry.accepts { entry.score.max(0.0) } else { 0.0 },
                "accepts_new_requests": entry.accepts,
                "in_flight": backend.in_flight(),
                "slots": backend.slots(),
                "work_in_flight_seconds": backend.work_us() as f64 / 1e6,
                "completed": backend.completed.load(Relaxed),
                "errors": backend.errors.load(Relaxed),
                "latency_ewma_ms": backend.latency_ewma_ms(),
                "ejected": backend.is_ejected(now),
                "consecutive_connect_failures": backend.consecutive_failures(),
                "connections_opened": backend.pools().iter().map(|p| p.opened.load(Relaxed)).sum::<u64>(),
                "idle_connections": backend.pools().iter().map(|p| p.idle_count()).sum::<usize>(),
            })
        })
        .collect();
    let queue = {
        let queue = shared.backends.queue();
        let view = queue.view();
        let settings = queue.settings();
        json!({
            "waiting": view.waiting,
            "bytes": view.bytes,
            "work_seconds": view.work_seconds,
            "capacity": settings.capacity,
            "max_bytes": settings.max_bytes,
            "timeout_ms": u64::try_from(settings.timeout.as_millis()).unwrap_or(u64::MAX),
            "max_queue_delay_factor": settings.delay_factor,
        })
    };
    Json(json!({
        "source": match shared.backends.source() {
            SourceKind::Static => "static",
            SourceKind::Agent => "agent",
        },
        "agent_connected": shared.metrics.agent_connected.load(Relaxed) == 1,
        "agent_url": shared.metrics.agent_url.load().as_deref(),
        "report_streams": shared.metrics.report_streams().iter().map(|stream| json!({
            "url": &*stream.url,
            "address": stream.address.to_string(),
            "sent": stream.sent,
        })).collect::<Vec<_>>(),
        "epoch": table.epoch,
        "seq": table.seq,
        "policy": shared.picker.policy().as_str(),
        "queued_without_backend": shared.admission.waiting(),
        "queue": queue,
        "backends": items,
    }))
}

async fn metrics(State(state): State<AdminState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.exporter.render(),
    )
        .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(ErrorBody::new(
            "no such admin endpoint; try /health, /ready, /backends, /metrics, /costs or /requests",
        )),
    )
        .into_response()
}
