//! The worker's HTTP API: routes, handlers and the mapping of errors to JSON answers.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{MatchedPath, Path, Request, State, rejection::PathRejection},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{any, get, post},
};
use common::{CancellationToken, ErrorBody};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{
    config::Config,
    metrics::{JobLabels, Metrics, RequestLabels},
    pool::{Pool, PoolError},
    request::{self, Job, Weight},
    simulate::{self as queue_sim, SimulateError, Simulation},
};

/// Everything the handlers share; a cheap handle.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    config: Config,
    worker_id: String,
    cpu_limit_cores: f64,
    pool: Pool,
    metrics: Metrics,
    started: Instant,
    next_job: AtomicU64,
    crash: CancellationToken,
}

impl AppState {
    /// `crash` is cancelled by `POST /stop` (chaos mode) to drop every connection at once.
    pub fn new(
        config: Config,
        cpu_limit_cores: f64,
        threads: usize,
        crash: CancellationToken,
    ) -> Self {
        let worker_id = config.resolved_worker_id();
        let pool = Pool::new(threads, config.queue_capacity);
        Self(Arc::new(Shared {
            config,
            worker_id,
            cpu_limit_cores,
            pool,
            metrics: Metrics::new(),
            started: Instant::now(),
            next_job: AtomicU64::new(1),
            crash,
        }))
    }

    pub fn worker_id(&self) -> &str {
        &self.0.worker_id
    }
}

/// All routes, with request metrics around them.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/submit", post(submit))
        .route("/work", post(work))
        .route("/heavy", post(heavy))
        .route("/light", post(light))
        .route("/consume_cpu/{intensity}", get(consume_cpu))
        .route("/consume_memory/{intensity}", get(consume_memory))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics))
        .route("/stop", any(stop_elsewhere))
        .route("/simulate", post(simulate))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// The chaos port's routes: `POST /stop` alone (only served with `WORKER_CHAOS=true`).
pub fn chaos_router(state: AppState) -> Router {
    Router::new()
        .route("/stop", post(stop))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// An error answer: a status and `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
    /// Why, in a word, for the `job failed` log line.
    reason: &'static str,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
            reason: "error",
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message).because("bad request")
    }

    fn because(self, reason: &'static str) -> Self {
        Self { reason, ..self }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(ErrorBody::new(self.message))).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The answer to every job.
#[derive(Debug, Serialize)]
struct JobAnswer {
    job_id: String,
    worker_id: String,
    operation: &'static str,
    result: Value,
    /// Seconds, as in the original API (`"1.24s"`).
    time_taken: String,
    time_taken_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    intensity: Option<u32>,
}

async fn health() -> &'static str {
    "OK"
}

/// The balancer's `X-Request-Id`, when it is well-formed (`request::request_id`); the job's
/// log lines carry it as `request_id` so a search for the id finds them.
fn request_id(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("x-request-id")?;
    request::request_id(value.as_bytes()).map(str::to_owned)
}

/// Runs a job endpoint and logs `job failed` with its reason when it answers with an error
/// (a bad request, a saturated pool, a panic); `execute` logs the start and the end.
async fn logged(
    request_id: Option<&str>,
    endpoint: &'static str,
    job: impl Future<Output = Result<Finished, ApiError>>,
) -> Result<Finished, ApiError> {
    let answer = job.await;
    if let Err(err) = &answer {
        tracing::info!(
            request_id,
            endpoint,
            status = err.status.as_u16(),
            reason = err.reason,
            cause = %err.message,
            "job failed"
        );
    }
    answer
}

#[tracing::instrument(skip_all)]
async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Finished, ApiError> {
    let id = request_id(&headers);
    logged(id.as_deref(), "/submit", async {
        let body = read_body(body, state.0.config.max_body_bytes).await?;
        let job = request::parse_submit(&body, &state.0.config).map_err(ApiError::bad_request)?;
        execute(&state, id.as_deref(), job, None).await
    })
    .await
}

async fn work(
    state: State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Finished, ApiError> {
    intensity_job(state, headers, body, ("/work", Weight::Normal)).await
}

async fn heavy(
    state: State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Finished, ApiError> {
    intensity_job(state, headers, body, ("/heavy", Weight::Heavy)).await
}

async fn light(
    state: State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Finished, ApiError> {
    intensity_job(state, headers, body, ("/light", Weight::Light)).await
}

#[tracing::instrument(skip(state, headers, body))]
async fn intensity_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
    (endpoint, weight): (&'static str, Weight),
) -> Result<Finished, ApiError> {
    let id = request_id(&headers);
    logged(id.as_deref(), endpoint, async {
        let config = &state.0.config;
        let body = read_body(body, config.max_body_bytes).await?;
        let intensity = request::parse_intensity_body(&body, config.max_intensity)
            .map_err(ApiError::bad_request)?;
        let job = Job::Spin {
            iterations: weight.iterations(intensity, config.work_unit),
        };
        execute(&state, id.as_deref(), job, Some(intensity)).await
    })
    .await
}

#[tracing::instrument(skip(state, headers))]
async fn consume_cpu(
    State(state): State<AppState>,
    headers: HeaderMap,
    segment: Result<Path<String>, PathRejection>,
) -> Result<Finished, ApiError> {
    let id = request_id(&headers);
    logged(id.as_deref(), "/consume_cpu", async {
        let intensity = path_intensity(&state, segment)?;
        let job = Job::Spin {
            iterations: Weight::Normal.iterations(intensity, state.0.config.work_unit),
        };
        execute(&state, id.as_deref(), job, Some(intensity)).await
    })
    .await
}

#[tracing::instrument(skip(state, headers))]
async fn consume_memory(
    State(state): State<AppState>,
    headers: HeaderMap,
    segment: Result<Path<String>, PathRejection>,
) -> Result<Finished, ApiError> {
    let id = request_id(&headers);
    logged(id.as_deref(), "/consume_memory", async {
        let intensity = path_intensity(&state, segment)?;
        let job = Job::Memory {
            bytes: u64::from(intensity) * state.0.config.memory_unit_mb * (1 << 20),
            hold: Duration::from_millis(100),
        };
        execute(&state, id.as_deref(), job, Some(intensity)).await
    })
    .await
}

fn path_intensity(
    state: &AppState,
    segment: Result<Path<String>, PathRejection>,
) -> Result<u32, ApiError> {
    let Path(segment) = segment.map_err(|err| ApiError::bad_request(err.body_text()))?;
    request::parse_intensity_path(&segment, state.0.config.max_intensity)
        .map_err(ApiError::bad_request)
}

async fn stats(State(state): State<AppState>) -> Json<Value> {
    let pool = state.0.pool.stats();
    Json(json!({
        "worker_id": state.0.worker_id,
        "in_flight": pool.running,
        "queued": pool.queued,
        "completed": pool.completed,
        "failed": pool.failed,
        "rejected": pool.rejected,
        "threads": pool.threads,
        "queue_capacity": pool.queue_capacity,
        "cpu_limit_cores": state.0.cpu_limit_cores,
        "uptime_s": state.0.started.elapsed().as_secs_f64(),
    }))
}

async fn metrics(State(state): State<AppState>) -> Response {
    let text = state.0.metrics.render(state.0.pool.stats());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `/stop` on the traffic port: never served there, whatever the method.
async fn stop_elsewhere() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "POST /stop is not served on this port; with WORKER_CHAOS=true it is on WORKER_CHAOS_PORT",
    )
}

/// `POST /stop` on the chaos port: answers, then drops every connection as a crash would.
async fn stop(State(state): State<AppState>) -> Json<Value> {
    tracing::warn!(worker_id = %state.0.worker_id, "chaos: simulating a crash");
    let crash = state.0.crash.clone();
    tokio::spawn(async move {
        // Let this answer reach the client first.
        tokio::time::sleep(Duration::from_millis(50)).await;
        crash.cancel();
    });
    Json(json!({ "stopped": true, "worker_id": state.0.worker_id }))
}

/// The answer of `POST /simulate`: which worker simulated, the summary and every request.
#[derive(Debug, Serialize)]
struct SimulateAnswer {
    worker_id: String,
    #[serde(flatten)]
    simulation: Simulation,
}

/// Seed 004's queue simulator: parsing and simulation run on the job pool, like any CPU job.
#[tracing::instrument(skip_all)]
async fn simulate(
    State(state): State<AppState>,
    body: Body,
) -> Result<Json<SimulateAnswer>, ApiError> {
    let body = read_body(body, state.0.config.max_body_bytes).await?;
    let outcome = state
        .0
        .pool
        .run(move |_cancel| {
            Ok(queue_sim::parse_request(&body, queue_sim::MAX_ROWS)
                .map(|(rows, params)| queue_sim::simulate(&rows, &params)))
        })
        .await;
    match outcome {
        Ok(Ok(simulation)) => Ok(Json(SimulateAnswer {
            worker_id: state.0.worker_id.clone(),
            simulation,
        })),
        Ok(Err(err @ SimulateError::TooManyRows { .. })) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            err.to_string(),
        )),
        Ok(Err(err @ SimulateError::Invalid(_))) => Err(ApiError::bad_request(err.to_string())),
        Err(PoolError::Saturated) => Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "worker is saturated; retry later".into(),
            retry_after: Some(state.0.config.retry_after_secs),
            reason: "saturated",
        }),
        Err(PoolError::Cancelled) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the simulation was cancelled",
        )),
        Err(PoolError::Failed) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the simulation failed",
        )),
    }
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route for {} {}", request.method(), request.uri().path()),
    )
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "method {} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}

/// Counts every request by matched route and status.
async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let metrics = &state.0.metrics;
    metrics.http_in_flight.inc();
    let _in_flight = scopeguard(|| {
        metrics.http_in_flight.dec();
    });
    let response = next.run(request).await;
    metrics
        .requests
        .get_or_create(&RequestLabels {
            endpoint,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// Runs `f` when dropped.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {limit} bytes"),
        )
        .because("body too large")),
        Err(err) => Err(ApiError::bad_request(format!(
            "could not read the request body: {err}"
        ))),
    }
}

async fn execute(
    state: &AppState,
    request_id: Option<&str>,
    job: Job,
    intensity: Option<u32>,
) -> Result<Finished, ApiError> {
    let operation = job.operation();
    tracing::info!(
        request_id,
        operation,
        size = job.size(),
        intensity,
        "job started"
    );
    // A request that goes away drops this future: its job is cancelled, and said so.
    let gone = scopeguard(|| {
        tracing::info!(
            request_id,
            operation,
            reason = "cancelled",
            cause = "the client went away",
            "job failed"
        );
    });
    let outcome = state
        .0
        .pool
        .run(move |cancel| {
            let started = Instant::now();
            job.run(cancel).map(|value| (value, started.elapsed()))
        })
        .await;
    std::mem::forget(gone);
    match outcome {
        Ok((result, took)) => {
            tracing::info!(
                request_id,
                operation,
                duration_ms = took.as_secs_f64() * 1e3,
                "job done"
            );
            state
                .0
                .metrics
                .job_duration
                .get_or_create(&JobLabels { operation })
                .observe(took.as_secs_f64());
            Ok(Finished {
                answer: JobAnswer {
                    job_id: state.next_job_id(),
                    worker_id: state.0.worker_id.clone(),
                    operation,
                    result,
                    time_taken: format!("{:.3}s", took.as_secs_f64()),
                    time_taken_ms: took.as_secs_f64() * 1e3,
                    intensity,
                },
                took,
            })
        }
        Err(PoolError::Saturated) => {
            let stats = state.0.pool.stats();
            Err(ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: format!(
                    "worker is saturated: {} jobs running and {} queued; retry later",
                    stats.running, stats.queued
                ),
                retry_after: Some(state.0.config.retry_after_secs),
                reason: "saturated",
            })
        }
        Err(PoolError::Cancelled) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the job was cancelled",
        )
        .because("cancelled")),
        Err(PoolError::Failed) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the job failed",
        )
        .because("panicked")),
    }
}

/// A finished job's JSON answer, with its run time on the pool (queueing excluded) in a
/// `Server-Timing: job;dur=<ms>` header: what a balancer learns job costs from (issue #17).
pub struct Finished {
    answer: JobAnswer,
    took: Duration,
}

impl IntoResponse for Finished {
    fn into_response(self) -> Response {
        let timing = format!("job;dur={:.3}", self.took.as_secs_f64() * 1e3);
        let mut response = Json(self.answer).into_response();
        if let Ok(value) = HeaderValue::from_str(&timing) {
            response
                .headers_mut()
                .insert(HeaderName::from_static("server-timing"), value);
        }
        response
    }
}

impl AppState {
    /// `JOB-<unix ms>-<sequence>`, unique per worker.
    fn next_job_id(&self) -> String {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        format!(
            "JOB-{millis}-{}",
            self.0.next_job.fetch_add(1, Ordering::Relaxed)
        )
    }
}
