//! Mutating calls that reach a follower: checked here like anywhere (origin, token, JSON),
//! then forwarded to the leader, whose answer goes back unchanged with
//! `X-Forwarded-To-Leader: <its id>`. A client may call any agent and gets the same result.

use std::time::Duration;

use axum::{
    body::{Body, Bytes},
    extract::Request,
    http::{HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};

use crate::agent::Agent;

/// The header naming the leader that answered a forwarded call.
pub const FORWARDED_TO: HeaderName = HeaderName::from_static("x-forwarded-to-leader");
/// Set on the forwarded call, so that a call is forwarded once at most.
const FORWARDED_BY: HeaderName = HeaderName::from_static("x-forwarded-by-agent");
/// Largest body forwarded (the API's own limit).
const MAX_BODY: usize = 16 * 1024;
/// Longest wait for the leader's answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The client the forwarded calls use (plain HTTP between agents).
pub type ForwardClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> ForwardClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    connector.set_nodelay(true);
    Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector)
}

fn unavailable(message: String) -> Response {
    let mut response = (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(common::ErrorBody::new(message)),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Sends `request` to the leader and returns its answer.
pub async fn to_leader(agent: &Agent, request: Request) -> Response {
    let Some(leader) = agent.leader().filter(|leader| leader.id != agent.id()) else {
        return unavailable(
            "this agent is a follower and no leader is elected right now; try again in a moment"
                .into(),
        );
    };
    if request.headers().contains_key(&FORWARDED_BY) {
        return unavailable(format!(
            "forwarded to an agent that does not lead (leader is {}); try again in a moment",
            leader.id
        ));
    }
    let (parts, body) = request.into_parts();
    let body = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                axum::Json(common::ErrorBody::new("the body is too large")),
            )
                .into_response();
        }
    };
    let path = parts.uri.path_and_query().map_or("/", |path| path.as_str());
    let uri = format!("{}{path}", leader.http_url.trim_end_matches('/'));
    let mut forwarded = http::Request::builder().method(parts.method).uri(&uri);
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT] {
        if let Some(value) = parts.headers.get(&name) {
            forwarded = forwarded.header(name, value);
        }
    }
    let forwarded = match forwarded
        .header(&FORWARDED_BY, agent.id())
        .body(Full::new(body))
    {
        Ok(forwarded) => forwarded,
        Err(err) => return unavailable(format!("cannot forward to the leader: {err}")),
    };
    let answer = tokio::time::timeout(TIMEOUT, agent.forward_client().request(forwarded)).await;
    let answer = match answer {
        Ok(Ok(answer)) => answer,
        Ok(Err(err)) => {
            tracing::warn!(leader = %leader.id, %uri, cause = %err, "cannot forward a call to the leader");
            return unavailable(format!("the leader ({}) cannot be reached", leader.id));
        }
        Err(_) => {
            return unavailable(format!(
                "the leader ({}) did not answer within {TIMEOUT:?}",
                leader.id
            ));
        }
    };
    let (mut parts, body) = answer.into_parts();
    let body = match http_body_util::Limited::new(body, 1024 * 1024)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => return unavailable(format!("the leader ({}) broke off its answer", leader.id)),
    };
    if let Ok(value) = HeaderValue::from_str(&leader.id) {
        parts.headers.insert(FORWARDED_TO, value);
    }
    Response::from_parts(parts, Body::from(body))
}
