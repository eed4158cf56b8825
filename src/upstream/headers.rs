//! Layer 3 (upstream): what crosses the proxy of a message's head: hop-by-hop headers are
//! removed (RFC 9110 section 7.6.1), a deployment's own headers are set, and a request's head can
//! be copied for a replay or a copy.

use http::Request;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one hop and never cross the proxy (RFC 9110 section 7.6.1), plus
/// `expect` (100-continue is answered by scoregate's own server).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers and every header named in `Connection`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the entries, without hashing: which hop-by-hop headers are present (a bit
    // each), and whether `Connection` names a header beyond the usual `keep-alive` / `close`.
    let mut present = 0u16;
    let mut names_others = false;
    for (name, value) in headers.iter() {
        // Hop-by-hop names are 2, 7, 10 or 16–19 bytes long: most names stop at the length.
        if !matches!(name.as_str().len(), 2 | 7 | 10 | 16..=19) {
            continue;
        }
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
            if i == 0 {
                names_others |= connection_tokens(value).any(|t| {
                    !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive")
                });
            }
        }
    }
    if present == 0 {
        return;
    }
    if names_others {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(connection_tokens)
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for (i, h) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(h);
        }
    }
}

/// The non-empty, trimmed tokens of a `Connection` value.
fn connection_tokens(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Sets a deployment's `headers` (and its bearer key) on a request forwarded to it, replacing
/// the client's headers of the same names. Nothing to do, and nothing allocated, without any.
pub(crate) fn set_deployment_headers(headers: &mut HeaderMap, set: &[(HeaderName, HeaderValue)]) {
    for (name, value) in set {
        headers.insert(name.clone(), value.clone());
    }
}

/// A request with a copy of `from`'s method, URI, version and headers, and `body`.
pub(crate) fn copy_head<A, B>(from: &Request<A>, body: B) -> Request<B> {
    let mut req = Request::new(body);
    *req.method_mut() = from.method().clone();
    *req.uri_mut() = from.uri().clone();
    *req.version_mut() = from.version();
    *req.headers_mut() = from.headers().clone();
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut h = map(&[
            ("content-type", "application/json"),
            ("connection", "Keep-Alive, X-Trace"),
            ("connection", " x-other ,"),
            ("keep-alive", "timeout=5"),
            ("x-trace", "1"),
            ("x-other", "2"),
            ("transfer-encoding", "chunked"),
            ("x-kept", "3"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-type", "x-kept"]);
    }

    #[test]
    fn deployment_headers_replace_the_clients_and_stay_sensitive() {
        let mut h = map(&[
            ("authorization", "Bearer client"),
            ("azureml-model-deployment", "blue"),
            ("azureml-model-deployment", "green"),
            ("x-kept", "1"),
        ]);
        let mut key = HeaderValue::from_static("Bearer upstream");
        key.set_sensitive(true);
        let set = [
            (
                HeaderName::from_static("azureml-model-deployment"),
                HeaderValue::from_static("green"),
            ),
            (header::AUTHORIZATION, key),
        ];
        set_deployment_headers(&mut h, &set);
        assert_eq!(h.len(), 3);
        assert_eq!(h["azureml-model-deployment"], "green");
        assert_eq!(h["authorization"], "Bearer upstream");
        assert!(h["authorization"].is_sensitive());
        assert_eq!(format!("{h:?}").matches("upstream").count(), 0);
        set_deployment_headers(&mut h, &[]);
        assert_eq!(h.len(), 3);
    }

    #[test]
    fn messages_without_hop_by_hop_headers_are_left_alone() {
        let mut h = map(&[("content-length", "2"), ("date", "x"), ("x-y", "z")]);
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
        let mut h = map(&[("connection", "close"), ("server", "s")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["server"]);
    }
}
