//! Layer 4 (request path): what is particular to a gRPC call. Which requests are gRPC, how a
//! call's head is prepared for an HTTP/2 instance (`te: trailers`, an absolute target, the
//! client's `grpc-timeout`), and the trailers-only answer of an error scoregate makes itself.

use std::time::Duration;

use http::header::{self, HeaderValue};
use http::uri::{Authority, Scheme, Uri};
use http::{HeaderMap, HeaderName, Request, Response};

use crate::error::ProxyError;
use crate::instance::Instance;
use crate::upstream::ResponseBody;

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Whether a request is a gRPC call: `content-type: application/grpc` or `application/grpc+…`.
pub(super) fn is_grpc(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(header::CONTENT_TYPE).map(HeaderValue::as_bytes) else {
        return false;
    };
    ct.len() >= 16
        && ct[..16].eq_ignore_ascii_case(b"application/grpc")
        && matches!(ct.get(16), None | Some(b'+' | b';'))
}

/// Prepares a call's head for an HTTP/2 instance (after the hop-by-hop headers were removed):
/// HTTP/2, `te: trailers` (gRPC servers require it). Returns the client's `grpc-timeout`.
pub(super) fn prepare(parts: &mut http::request::Parts) -> Option<Duration> {
    parts.version = http::Version::HTTP_2;
    parts
        .headers
        .insert(header::TE, HeaderValue::from_static("trailers"));
    parts.headers.get(&GRPC_TIMEOUT).and_then(parse_timeout)
}

/// The call's target in absolute form, as HTTP/2 sends it: `https` to an instance reached over
/// TLS, else `http`; the client's authority, or the instance's when the client sent none;
/// `Host` is not an HTTP/2 header.
pub(super) fn to_h2<B>(req: &mut Request<B>, instance: &Instance) {
    let host = req.headers_mut().remove(header::HOST);
    // An HTTPS service is reached by its own name, as in the SNI; else the client's authority.
    let own = instance
        .tls()
        .and_then(|t| t.host())
        .and_then(|h| Authority::try_from(h.as_bytes()).ok());
    let authority = own
        .or_else(|| req.uri().authority().cloned())
        .or_else(|| host.and_then(|h| Authority::try_from(h.as_bytes()).ok()))
        .or_else(|| Authority::try_from(instance.authority()).ok());
    let mut parts = req.uri().clone().into_parts();
    parts.scheme = Some(if instance.tls().is_some() {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    });
    parts.authority = authority;
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// A `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_timeout(v: &HeaderValue) -> Option<Duration> {
    let v = v.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The trailers-only answer for `err` to a gRPC call: HTTP 200, `grpc-status` and a
/// `grpc-message` saying what happened (percent-encoded), and `x-deployment` when one was
/// chosen.
pub(super) fn error_response(
    err: &ProxyError,
    deployment: Option<&HeaderValue>,
) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::Full(None));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(GRPC_STATUS.clone(), HeaderValue::from(err.grpc_code()));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(&err.to_string())) {
        h.insert(GRPC_MESSAGE.clone(), v);
    }
    if let Some(d) = deployment {
        h.insert(HeaderName::from_static("x-deployment"), d.clone());
    }
    resp
}

/// `grpc-message` encoding: printable ASCII except `%` as is, every other byte as `%XX`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(ct: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
        h
    }

    #[test]
    fn grpc_calls_are_told_by_their_content_type() {
        assert!(is_grpc(&headers("application/grpc")));
        assert!(is_grpc(&headers("application/grpc+proto")));
        assert!(is_grpc(&headers("Application/GRPC")));
        assert!(!is_grpc(&headers("application/grpc-web")));
        assert!(!is_grpc(&headers("application/json")));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn grpc_timeouts_are_read_in_every_unit() {
        let t = |s: &'static str| parse_timeout(&HeaderValue::from_static(s));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("2M"), Some(Duration::from_secs(120)));
        assert_eq!(t("3S"), Some(Duration::from_secs(3)));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("7u"), Some(Duration::from_micros(7)));
        assert_eq!(t("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(t("123456789S"), None);
        assert_eq!(t("5s"), None);
        assert_eq!(t("S"), None);
        assert_eq!(t("-1S"), None);
    }

    #[test]
    fn error_answers_are_trailers_only_with_a_readable_message() {
        let err = ProxyError::UnknownPin {
            header: HeaderName::from_static("x-api-version"),
            value: "purple".into(),
            known: "blue, green".into(),
        };
        let resp = error_response(&err, None);
        assert_eq!(resp.status(), 200);
        let h = resp.headers();
        assert_eq!(h["grpc-status"], "3");
        assert_eq!(
            h["grpc-message"],
            "unknown deployment \"purple\" in the x-api-version header; known deployments: blue, green"
        );
        assert_eq!(percent_encode("50% ü\n"), "50%25 %C3%BC%0A");
    }
}
