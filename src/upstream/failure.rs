//! Layer 3 (upstream): how an exchange with an instance can fail, and the one classification
//! of a failure's cause: the error the client is answered with, and whose fault it was —
//! which decides whether the instance's health is charged. The request path and the mirror
//! both use [`classify`]; `proxy::respond` writes the answer.

use std::error::Error as StdError;

use crate::body::{Abandoned, BodyTooLarge};
use crate::error::{ProxyError, caused_by, describe, find_cause};

/// How an exchange with an instance failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// No connection could be made: nothing was sent; the request is back in its `pending` slot
    /// for a retry.
    Connect(std::io::Error),
    /// The exchange broke after the request was (partly) sent.
    Broken(hyper::Error),
    /// The client's body could not be read (or passed the limit) before sending.
    Client(Box<dyn StdError + Send + Sync>),
    /// There was no request left in the slot to send: a fault of scoregate's own.
    Lost,
    /// No answer within the request timeout. `body_sent`: the client's body had been sent
    /// whole (or there was none), so the wait was the instance's.
    Timeout { timeout_ms: u64, body_sent: bool },
}

/// Whose fault a failure was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The client's: its body too large or broken off, or (for a mirrored copy) the live body
    /// not copied whole. The instance is not charged.
    Client,
    /// The instance's: refused, broke the exchange, or too slow. Charged to its health.
    Instance,
    /// scoregate's own.
    Proxy,
}

/// What a failure means.
#[derive(Debug)]
pub(crate) struct Verdict {
    pub(crate) error: ProxyError,
    pub(crate) fault: Fault,
}

/// The one map from a failure's cause to the client's answer and the fault.
pub(crate) fn classify(failure: &Failure) -> Verdict {
    let (error, fault) = match failure {
        Failure::Connect(e) => (
            tls_failure(e).unwrap_or(ProxyError::Connect),
            Fault::Instance,
        ),
        Failure::Broken(e) => {
            return client_cause(e).unwrap_or_else(|| Verdict {
                // TLS 1.3: a server that refuses the client certificate says so after the
                // client finished its handshake, on the first read.
                error: tls_failure(e).unwrap_or(ProxyError::Protocol),
                fault: Fault::Instance,
            });
        }
        Failure::Client(e) => {
            return client_cause(&**e).unwrap_or_else(|| Verdict {
                error: ProxyError::ClientBody(describe(&**e)),
                fault: Fault::Client,
            });
        }
        Failure::Lost => (
            ProxyError::Internal("the request was lost before it was sent"),
            Fault::Proxy,
        ),
        Failure::Timeout {
            timeout_ms,
            body_sent,
        } => (
            ProxyError::Timeout {
                timeout_ms: *timeout_ms,
            },
            // A timeout while the client is still sending its body is not the instance's.
            if *body_sent {
                Fault::Instance
            } else {
                Fault::Client
            },
        ),
    };
    Verdict { error, fault }
}

/// A TLS failure in `err`'s causes, saying why: the `rustls::Error` that tokio-rustls wraps in
/// an `InvalidData` I/O error.
fn tls_failure(err: &(dyn StdError + 'static)) -> Option<ProxyError> {
    let e = find_cause::<rustls::Error>(err)?;
    Some(ProxyError::Tls(tls_reason(e).into()))
}

/// Why a TLS handshake failed, in words that point at the setting to check.
fn tls_reason(e: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(C::UnknownIssuer) => "the instance's certificate is untrusted \
            (unknown issuer): it does not chain to a CA of `tls.ca_file` (default: the system's \
            trust roots)"
            .into(),
        E::InvalidCertificate(C::NotValidForNameContext {
            expected,
            presented,
        }) => format!(
            "certificate name mismatch: the instance's certificate is not valid for `{}` (it \
             names {}); set `tls.server_name` to a name it has",
            expected.to_str(),
            if presented.is_empty() {
                "nothing".to_string()
            } else {
                // rustls writes each as `DnsName("a.example")` or `IpAddress(10.0.0.1)`.
                let bare = |p: &String| {
                    let inner = p.split_once('(').and_then(|(_, r)| r.strip_suffix(')'));
                    inner.unwrap_or(p).trim_matches('"').to_string()
                };
                presented.iter().map(bare).collect::<Vec<_>>().join(", ")
            }
        ),
        E::InvalidCertificate(C::NotValidForName) => "certificate name mismatch: the instance's \
            certificate is not valid for the name verified (`tls.server_name`, default the \
            instance's host)"
            .into(),
        E::InvalidCertificate(C::ExpiredContext { not_after, .. }) => format!(
            "the instance's certificate has expired (not valid after {})",
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(not_after.as_secs())
            )
        ),
        E::InvalidCertificate(C::Expired) => "the instance's certificate has expired".into(),
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "the instance's certificate is not valid yet".into()
        }
        E::InvalidCertificate(other) => format!("the instance's certificate is invalid: {other}"),
        E::AlertReceived(A::CertificateRequired) => "the instance requires a client \
            certificate: set `tls.cert_file` and `tls.key_file`"
            .into(),
        E::AlertReceived(
            a @ (A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::UnsupportedCertificate
            | A::AccessDenied),
        ) => format!("the instance refused the client certificate (alert {a:?})"),
        other => other.to_string(),
    }
}

/// The client's part in a broken exchange, if it had one: the body limit (413), a copy whose
/// live body was not copied whole, or the client's body failing (400).
fn client_cause(err: &(dyn StdError + 'static)) -> Option<Verdict> {
    let error = if let Some(t) = find_cause::<BodyTooLarge>(err) {
        ProxyError::BodyTooLarge { limit: t.limit }
    } else if caused_by::<Abandoned>(err) {
        ProxyError::ClientBody("the mirrored body was not copied whole".to_string())
    } else if err
        .downcast_ref::<hyper::Error>()
        .is_some_and(hyper::Error::is_user)
    {
        ProxyError::ClientBody(describe(err))
    } else {
        return None;
    };
    Some(Verdict {
        error,
        fault: Fault::Client,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_map_to_answers_and_faults() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let v = classify(&Failure::Connect(refused));
        assert_eq!((v.error.status().as_u16(), v.fault), (502, Fault::Instance));
        let v = classify(&Failure::Client(Box::new(BodyTooLarge { limit: 10 })));
        assert_eq!((v.error.status().as_u16(), v.fault), (413, Fault::Client));
        let v = classify(&Failure::Client(Box::new(Abandoned { too_large: false })));
        assert_eq!((v.error.status().as_u16(), v.fault), (400, Fault::Client));
        let v = classify(&Failure::Client("reset".into()));
        assert_eq!(
            v.error.to_string(),
            "could not read the request body: reset"
        );
        let untrusted = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let handshake = std::io::Error::new(std::io::ErrorKind::InvalidData, untrusted);
        let v = classify(&Failure::Connect(handshake));
        assert_eq!((v.error.status().as_u16(), v.fault), (502, Fault::Instance));
        assert_eq!(v.error.grpc_code(), 14);
        assert_eq!(
            v.error.upstream_kind(),
            Some(crate::metrics::UpstreamErrorKind::Tls)
        );
        assert!(v.error.to_string().contains("untrusted (unknown issuer)"));
        let v = classify(&Failure::Lost);
        assert_eq!((v.error.status().as_u16(), v.fault), (500, Fault::Proxy));
        for (body_sent, fault) in [(true, Fault::Instance), (false, Fault::Client)] {
            let v = classify(&Failure::Timeout {
                timeout_ms: 5,
                body_sent,
            });
            assert_eq!((v.error.status().as_u16(), v.fault), (504, fault));
        }
    }
}
