//! Errors that scoregate answers itself, and the one function that turns them into a status and
//! a JSON body. Sits at the end of the data path, beside `proxy`.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};

use crate::metrics::UpstreamErrorKind;
use crate::upstream::ResponseBody;

/// Every way the proxy can fail a request.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("unknown deployment {value:?} in the {header} header; known deployments: {known}")]
    UnknownPin {
        header: HeaderName,
        value: String,
        known: String,
    },
    #[error("missing or invalid key: send Authorization: Bearer KEY")]
    Unauthorized,
    #[error("no deployment takes traffic (all weights are 0); pin one with the {header} header")]
    NoTraffic { header: HeaderName },
    #[error("request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error(
        "every instance is busy (max_concurrent_requests_per_instance: {limit}) and none was free within {wait_ms} ms"
    )]
    Overloaded { limit: u32, wait_ms: u64 },
    #[error("could not connect to an instance of the deployment")]
    Connect,
    #[error(
        "every instance of the deployment is ejected after failing; they are retried in the background"
    )]
    NoHealthyInstance,
    #[error(
        "the deployment has no instances: its host names have not resolved yet (see `dns` in /config)"
    )]
    NoInstances,
    #[error("could not read the request body: {0}")]
    ClientBody(String),
    #[error("the instance broke the exchange before answering")]
    Protocol,
    #[error("the instance did not answer within {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    /// A fault of scoregate's own; never the client's or an instance's.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl ProxyError {
    /// The status sent to the client.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::UnknownPin { .. } | ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoHealthyInstance | ProxyError::NoInstances => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Unauthorized => StatusCode::UNAUTHORIZED,
            ProxyError::NoTraffic { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Connect | ProxyError::Protocol => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `kind` of `scoregate_upstream_errors_total`, for errors involving an instance.
    pub fn upstream_kind(&self) -> Option<UpstreamErrorKind> {
        match self {
            ProxyError::Connect => Some(UpstreamErrorKind::Connect),
            ProxyError::Timeout { .. } => Some(UpstreamErrorKind::Timeout),
            ProxyError::Overloaded { .. } => Some(UpstreamErrorKind::Overload),
            ProxyError::Protocol => Some(UpstreamErrorKind::Protocol),
            _ => None,
        }
    }
}

/// The response for `err`: its status and `{"error": "...", "deployment": NAME or null}`.
pub fn error_response(
    err: &ProxyError,
    deployment: Option<&HeaderValue>,
) -> Response<ResponseBody> {
    let body = serde_json::json!({
        "error": err.to_string(),
        "deployment": deployment.and_then(|d| d.to_str().ok()),
    });
    let mut resp = Response::new(ResponseBody::full(Bytes::from(body.to_string())));
    *resp.status_mut() = err.status();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(d) = deployment {
        resp.headers_mut()
            .insert(HeaderName::from_static("x-deployment"), d.clone());
    }
    if matches!(err, ProxyError::Unauthorized) {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}
