//! Errors of the proxy path, classified as upstream (a backend's fault) or downstream (the
//! client's), and mapped to a status and `{"error": "..."}` without internals. The internals
//! stay available to logs as the error's `source`.

use std::{fmt, time::Duration};

use bytes::Bytes;
use common::ErrorBody;
use http::{HeaderValue, Response, StatusCode, header};

use crate::{body::ResponseBody, upstream::SendError};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no backend is available and the admission queue is full; retry later")]
    QueueFull,
    #[error("no backend became available within {0:?}; retry later")]
    QueueTimeout(Duration),
    #[error("every backend is busy and the queue is full; retry later")]
    SlotsFull,
    #[error("every backend stayed busy for {0:?}; retry later")]
    SlotTimeout(Duration),
    #[error("the request body is larger than {0} bytes")]
    BodyTooLarge(u64),
    #[error("the request headers are larger than {0} bytes")]
    HeadersTooLarge(usize),
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("method {0} is not supported by this proxy")]
    MethodNotAllowed(http::Method),
    #[error("the request body could not be read from the client")]
    ClientBody,
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    /// The client closed its connection while its request waited for a slot.
    #[error("the client closed its connection")]
    ClientGone,
    #[error("not found")]
    NotFound,
    /// The last connect failure, if any.
    #[error("no backend could be reached")]
    Connect(#[source] Option<SendError>),
    /// The backend's failure, if it was one (not a 502/503 answer, nor the backend leaving).
    #[error("the backend failed to answer")]
    Upstream(#[source] Option<SendError>),
    #[error("the backend did not answer within {0:?}")]
    Timeout(Duration),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::QueueFull | Self::QueueTimeout(_) | Self::SlotsFull | Self::SlotTimeout(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::BadRequest(_) | Self::ClientBody => StatusCode::BAD_REQUEST,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            // nginx's "client closed request": never seen by the client, counted as such.
            Self::ClientGone => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Connect(_) | Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// A backend's fault (as opposed to the client's or plain unavailability).
    pub fn is_upstream(&self) -> bool {
        matches!(
            self,
            Self::Connect(_) | Self::Upstream(_) | Self::Timeout(_)
        )
    }

    /// Whether the client may send the same request again later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::QueueFull
                | Self::QueueTimeout(_)
                | Self::SlotsFull
                | Self::SlotTimeout(_)
                | Self::Connect(_)
                | Self::Upstream(_)
                | Self::Timeout(_)
        )
    }

    /// Whether the answer carries `Retry-After` (no backend now; later may do).
    pub fn retry_after(&self) -> bool {
        matches!(
            self,
            Self::QueueFull | Self::QueueTimeout(_) | Self::SlotsFull | Self::SlotTimeout(_)
        )
    }

    /// Whether the client's connection closes after the answer: the request's own bytes are
    /// in doubt (a bad head, a body not read to its end).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            Self::BadRequest(_)
                | Self::HeadersTooLarge(_)
                | Self::BodyTooLarge(_)
                | Self::ClientBody
                | Self::BodyTimeout
                | Self::ClientGone
        )
    }

    /// The answer to the client.
    pub fn into_response(self, retry_after_secs: u64) -> Response<ResponseBody> {
        let status = self.status();
        let mut response = json_response(status, &ErrorBody::new(self.to_string()).to_json());
        if self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        if self.closes_connection() {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

pub fn json_response(status: StatusCode, json: &str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(Bytes::copy_from_slice(json.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// An error and its sources for a log line: `error: cause: cause`.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn the_cause_is_the_source_never_the_answer() {
        let timed_out = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
        let error = ProxyError::Connect(Some(SendError::Connect(timed_out)));
        assert_eq!(error.to_string(), "no backend could be reached");
        let cause = error.source().expect("the send error");
        assert_eq!(Chain(cause).to_string(), "connect: connect timed out");
        assert_eq!(
            Chain(&error).to_string(),
            "no backend could be reached: connect: connect timed out"
        );
        assert!(ProxyError::Upstream(None).source().is_none());
    }
}
