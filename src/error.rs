//! Layer 0 (values): every error scoregate answers itself, with its status and metric kind, and
//! the walk of an error's cause chain that everything else uses ([`caused_by`], [`describe`]).
//! Which cause becomes which error is decided in one place, `upstream::failure`; the answer is
//! written in one place, `proxy::respond`.

use std::error::Error as StdError;

use http::{HeaderName, StatusCode};

use crate::metrics::UpstreamErrorKind;

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
    /// The TLS handshake with an instance failed; the text says why (untrusted, name
    /// mismatch, expired, refused...).
    #[error("TLS handshake with an instance of the deployment failed: {0}")]
    Tls(Box<str>),
    #[error("the instance did not answer within {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    #[error("deployment `{deployment}` has no `{}`: it does not serve {}", if *grpc { "grpc_instances" } else { "instances" }, if *grpc { "gRPC" } else { "REST" })]
    NotServed { deployment: Box<str>, grpc: bool },
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
            ProxyError::Connect | ProxyError::Protocol | ProxyError::Tls(_) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::NotServed { .. } => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// The gRPC status of the answer to a gRPC call.
    pub fn grpc_code(&self) -> u32 {
        match self {
            ProxyError::UnknownPin { .. } | ProxyError::ClientBody(_) => 3, // INVALID_ARGUMENT
            ProxyError::Unauthorized => 16,                                 // UNAUTHENTICATED
            ProxyError::BodyTooLarge { .. } | ProxyError::Overloaded { .. } => 8, // RESOURCE_EXHAUSTED
            ProxyError::Timeout { .. } => 4, // DEADLINE_EXCEEDED
            ProxyError::NoTraffic { .. }
            | ProxyError::Connect
            | ProxyError::NoHealthyInstance
            | ProxyError::NoInstances
            | ProxyError::Protocol
            | ProxyError::Tls(_) => 14, // UNAVAILABLE
            ProxyError::NotServed { .. } => 12, // UNIMPLEMENTED
            ProxyError::Internal(_) => 13,   // INTERNAL
        }
    }

    /// A short name of the error, as the access log and spans give it: `unknown_pin`,
    /// `unauthorized`, `no_traffic`, `body_too_large`, `overloaded`, `connect`,
    /// `no_healthy_instance`, `no_instances`, `client_body`, `protocol`, `tls`, `timeout`,
    /// `not_served`, `internal`.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::UnknownPin { .. } => "unknown_pin",
            ProxyError::Unauthorized => "unauthorized",
            ProxyError::NoTraffic { .. } => "no_traffic",
            ProxyError::BodyTooLarge { .. } => "body_too_large",
            ProxyError::Overloaded { .. } => "overloaded",
            ProxyError::Connect => "connect",
            ProxyError::NoHealthyInstance => "no_healthy_instance",
            ProxyError::NoInstances => "no_instances",
            ProxyError::ClientBody(_) => "client_body",
            ProxyError::Protocol => "protocol",
            ProxyError::Tls(_) => "tls",
            ProxyError::Timeout { .. } => "timeout",
            ProxyError::NotServed { .. } => "not_served",
            ProxyError::Internal(_) => "internal",
        }
    }

    /// The `kind` of `scoregate_upstream_errors_total`, for errors involving an instance.
    pub fn upstream_kind(&self) -> Option<UpstreamErrorKind> {
        match self {
            ProxyError::Connect => Some(UpstreamErrorKind::Connect),
            ProxyError::Timeout { .. } => Some(UpstreamErrorKind::Timeout),
            ProxyError::Overloaded { .. } => Some(UpstreamErrorKind::Overload),
            ProxyError::Protocol => Some(UpstreamErrorKind::Protocol),
            ProxyError::Tls(_) => Some(UpstreamErrorKind::Tls),
            _ => None,
        }
    }
}

/// The first cause in `err`'s chain (itself included) that is an `E`. An `io::Error` wrapping
/// another error is looked into (its `source()` skips the error it wraps: tokio-rustls wraps a
/// `rustls::Error` so).
pub(crate) fn find_cause<'a, E: StdError + 'static>(
    err: &'a (dyn StdError + 'static),
) -> Option<&'a E> {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        source = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner),
            None => e.source(),
        };
    }
    None
}

/// Whether `err` or one of its causes is an `E`.
pub(crate) fn caused_by<E: StdError + 'static>(err: &(dyn StdError + 'static)) -> bool {
    find_cause::<E>(err).is_some()
}

/// One line for the log: the error and its causes.
pub(crate) fn describe(err: &dyn StdError) -> String {
    let mut s = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        s.push_str(": ");
        s.push_str(&e.to_string());
        source = e.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_wrapped_in_an_io_error_is_found() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls.clone());
        let outer = std::io::Error::other(io);
        assert_eq!(find_cause::<rustls::Error>(&outer), Some(&tls));
        assert!(find_cause::<rustls::Error>(&std::io::Error::other("plain")).is_none());
    }
}
