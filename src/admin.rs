//! Layer 6 (tools): the admin listener (`admin_listen`): `/metrics`, `/healthz`, `/readyz`, `/config`, `/shadow`,
//! `/failures` (the last failed requests by request id), and the live status page at `/` with
//! its `/status.json`. Beside the data path, on its own socket so that scrapes never queue
//! behind scoring traffic.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::control::Loader;
use crate::metrics::{LATENCY_BUCKETS, Metrics};
use crate::routing::Table;
use crate::shadow::Evidence;
use crate::telemetry::{FailedRequest, FailedRequests};

/// The status page, one self-contained file.
const STATUS_HTML: &str = include_str!("status.html");
/// How far back the status page's rates and latencies look.
pub(crate) const WINDOW: Duration = Duration::from_secs(10);
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Cumulative counts of one deployment at one instant.
#[derive(Debug, Clone, Default)]
struct Counts {
    requests: u64,
    errors: u64,
    buckets: Vec<u64>,
}

type Snapshot = (Instant, HashMap<String, Counts>);

/// What the admin endpoints read.
/// Time an admin client has to finish its TLS handshake and send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct Admin {
    loader: Arc<Loader>,
    metrics: Arc<Metrics>,
    /// What shadow comparisons found.
    evidence: Arc<Evidence>,
    /// The last failed requests, recorded by the request path.
    failures: Arc<FailedRequests>,
    history: Mutex<VecDeque<Snapshot>>,
}

fn counts(table: &Table) -> HashMap<String, Counts> {
    let mut out: HashMap<String, Counts> = table
        .deployments
        .iter()
        .map(|d| {
            let (requests, errors) = d.metrics.totals();
            let buckets = d.metrics.latency_buckets();
            (
                d.name.to_string(),
                Counts {
                    requests,
                    errors,
                    buckets,
                },
            )
        })
        .collect();
    let (requests, errors) = table.unrouted.totals();
    out.insert(
        String::new(),
        Counts {
            requests,
            errors,
            buckets: Vec::new(),
        },
    );
    out
}

/// The `q` quantile of the requests between two cumulative bucket snapshots, in milliseconds.
fn quantile_ms(q: f64, now: &[u64], then: &[u64]) -> Option<f64> {
    crate::metrics::quantile(q, LATENCY_BUCKETS, now, then).map(|s| s * 1000.0)
}

/// `{"NAME": percent, ...}`, or `{}` without a mirror.
fn mirror_map(table: &Table) -> Value {
    let mut m = serde_json::Map::new();
    for mirror in &table.mirrors {
        m.insert(
            table.deployments[mirror.index].name.to_string(),
            json!(mirror.percent),
        );
    }
    Value::Object(m)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `/failures`: `{"failures": [...]}`, oldest first, each with its time (RFC 3339 with
/// milliseconds), request id, deployment, instance, HTTP status, gRPC status and scoregate's
/// own error (null when not known or not one).
fn failures_json(list: &[FailedRequest]) -> Value {
    let failures: Vec<Value> = list
        .iter()
        .map(|f| {
            json!({
                "time": humantime::format_rfc3339_millis(f.time).to_string(),
                "request_id": f.request_id,
                "deployment": f.deployment,
                "instance": f.instance,
                "status": f.status,
                "grpc_status": f.grpc_status,
                "error": f.error,
            })
        })
        .collect();
    json!({ "failures": failures })
}

impl Admin {
    pub(crate) fn new(
        loader: Arc<Loader>,
        metrics: Arc<Metrics>,
        evidence: Arc<Evidence>,
        failures: Arc<FailedRequests>,
    ) -> Admin {
        Admin {
            loader,
            metrics,
            evidence,
            failures,
            history: Mutex::new(VecDeque::new()),
        }
    }

    fn history(&self) -> std::sync::MutexGuard<'_, VecDeque<Snapshot>> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records counts once a second for the status page's windowed rates.
    pub(crate) async fn sample(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tick.tick().await;
            let snap = counts(&self.loader.table().load());
            let mut h = self.history();
            h.push_back((Instant::now(), snap));
            while h.len() > (WINDOW.as_secs() + 1) as usize {
                h.pop_front();
            }
        }
    }

    /// `/readyz`: `Ok` when every deployment with weight > 0 has a healthy instance.
    pub(crate) fn readiness(&self) -> Result<(), String> {
        let table = self.loader.table().load();
        let unready: Vec<String> = table
            .deployments
            .iter()
            .filter(|d| d.weight > 0 && !d.all_instances().any(|i| i.is_healthy()))
            .map(|d| {
                if d.all_instances().next().is_none() {
                    format!(
                        "{} (no instances: its host names have not resolved)",
                        d.name
                    )
                } else {
                    d.name.to_string()
                }
            })
            .collect();
        if unready.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "no healthy instance in deployment(s) with traffic: {}",
                unready.join(", ")
            ))
        }
    }

    /// `/config`: the live configuration and its provenance.
    /// `dns` lists every host-name instance: its addresses, when it last resolved, and the
    /// error while lookups fail.
    pub(crate) fn config_json(&self) -> Value {
        let status = self.loader.status();
        let table = self.loader.table().load();
        let sha: String = Sha256::digest(status.source.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let traffic: serde_json::Map<String, Value> = table
            .deployments
            .iter()
            .map(|d| (d.name.to_string(), json!(d.weight)))
            .collect();
        let deployments: serde_json::Map<String, Value> = table
            .deployments
            .iter()
            .map(|d| {
                let list = |g: &crate::routing::Group| -> Vec<Value> {
                    g.instances
                        .iter()
                        .map(|i| {
                            json!({
                                "instance": i.addr().as_str(),
                                "discovered_from": i.discovered_from().map(|n| n.as_str()),
                                "healthy": i.is_healthy(),
                                "in_flight": i.in_flight(),
                            })
                        })
                        .collect()
                };
                (
                    d.name.to_string(),
                    json!({
                        "weight": d.weight,
                        "instances": list(&d.rest),
                        "grpc_instances": list(&d.grpc),
                        "request": {
                            "request_timeout_ms": d.settings.request_timeout.as_millis() as u64,
                            "max_concurrent_requests_per_instance": d.settings.max_concurrent_per_instance,
                            "max_queue_wait_ms": d.settings.max_queue_wait.as_millis() as u64,
                        },
                    }),
                )
            })
            .collect();
        json!({
            "generation": status.generation,
            "loaded_at": rfc3339(status.loaded_at),
            "file": self.loader.path().display().to_string(),
            "sha256": sha,
            "pin_header": table.pin_header.as_str(),
            "sticky_header": table.sticky_header.as_ref().map(|h| h.as_str()),
            "auth_mode": if table.keys.is_some() { "key" } else { "none" },
            "keys": table.keys.as_ref().map(|k| k.len()),
            "traffic": traffic,
            "mirror": mirror_map(&table),
            "deployments": deployments,
            "dns": dns_map(&status.names),
            "last_reload_error": status.last_error,
        })
    }

    /// `/status.json`: what the status page shows, with rates over the last [`WINDOW`].
    pub(crate) fn status_json(&self) -> Value {
        let status = self.loader.status();
        let table = self.loader.table().load();
        let now_counts = counts(&table);
        let now = Instant::now();
        let (then_at, then_counts) = self
            .history()
            .iter()
            .find(|(at, _)| now.duration_since(*at) <= WINDOW + SAMPLE_EVERY)
            .cloned()
            .unwrap_or((now, HashMap::new()));
        let secs = now.duration_since(then_at).as_secs_f64();
        let rate = |c: &Counts, t: Option<&Counts>| {
            let d = c.requests - t.map_or(0, |t| t.requests.min(c.requests));
            if secs > 0.0 { d as f64 / secs } else { 0.0 }
        };
        let deployments: Vec<Value> = table
            .deployments
            .iter()
            .map(|d| {
                let c = &now_counts[&*d.name];
                let t = then_counts.get(&*d.name);
                let window_requests = c.requests - t.map_or(0, |t| t.requests.min(c.requests));
                let window_errors = c.errors - t.map_or(0, |t| t.errors.min(c.errors));
                let empty = Vec::new();
                let then_buckets = t.map_or(&empty, |t| &t.buckets);
                let instances: Vec<Value> = d
                    .all_instances()
                    .map(|i| json!({"instance": i.addr().as_str(), "healthy": i.is_healthy(), "in_flight": i.in_flight()}))
                    .collect();
                json!({
                    "name": &*d.name,
                    "weight": d.weight,
                    "requests_per_second": rate(c, t),
                    "error_ratio": (window_requests > 0).then(|| window_errors as f64 / window_requests as f64),
                    "p50_ms": quantile_ms(0.5, &c.buckets, then_buckets),
                    "p99_ms": quantile_ms(0.99, &c.buckets, then_buckets),
                    "in_flight": d.metrics.in_flight().get(),
                    "requests_total": c.requests,
                    "instances": instances,
                })
            })
            .collect();
        let unrouted = &now_counts[""];
        json!({
            "endpoint": status.name,
            "file": self.loader.path().display().to_string(),
            "generation": status.generation,
            "loaded_at": rfc3339(status.loaded_at),
            "last_reload_error": status.last_error,
            "window_seconds": secs,
            "mirrors": table.mirrors.iter().map(|m| {
                let name = &*table.deployments[m.index].name;
                let ratio = self.evidence.recent_ratio(name, SystemTime::now());
                json!({
                    "deployment": name,
                    "percent": m.percent,
                    "compared": table.compare.is_some(),
                    "mismatch_ratio_last_minute": ratio,
                })
            }).collect::<Vec<_>>(),
            "deployments": deployments,
            "unrouted": {
                "requests_per_second": rate(unrouted, then_counts.get("")),
                "requests_total": unrouted.requests,
            },
            "now": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
        })
    }

    fn handle(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        if method != Method::GET && method != Method::HEAD {
            return respond(
                StatusCode::METHOD_NOT_ALLOWED,
                "application/json",
                r#"{"error":"the admin listener answers GET only"}"#,
            );
        }
        match path {
            "/" | "/index.html" => respond(StatusCode::OK, "text/html; charset=utf-8", STATUS_HTML),
            "/status.json" => json_response(StatusCode::OK, &self.status_json()),
            "/config" => json_response(StatusCode::OK, &self.config_json()),
            "/shadow" => json_response(StatusCode::OK, &self.evidence.report(SystemTime::now())),
            "/failures" => json_response(StatusCode::OK, &failures_json(&self.failures.recent())),
            "/metrics" => respond(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics.render(),
            ),
            "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n"),
            "/readyz" => match self.readiness() {
                Ok(()) => respond(StatusCode::OK, "text/plain", "ready\n"),
                Err(why) => respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: {why}\n"),
                ),
            },
            _ => respond(
                StatusCode::NOT_FOUND,
                "application/json",
                r#"{"error":"not found: try /, /metrics, /healthz, /readyz, /config, /status.json, /shadow or /failures"}"#,
            ),
        }
    }
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json_response(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    respond(status, "application/json", v.to_string())
}

/// Serves the admin endpoints on `listener` until the process ends.
pub(crate) async fn serve(listener: TcpListener, admin: Arc<Admin>, tls: bool) {
    tokio::spawn(admin.clone().sample());
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    loop {
        let Ok((stream, remote)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        // The certificate of the moment (it rotates with the table); a cleartext listener does
        // not look.
        let config = tls
            .then(|| admin.loader.table().load().admin_tls.clone())
            .flatten();
        let admin = admin.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let out = admin.handle(req.method(), req.uri().path());
            async move { Ok::<_, Infallible>(out) }
        });
        let http = http.clone();
        tokio::spawn(async move {
            match (tls, config) {
                (false, _) => {
                    let _ = http.serve_connection(TokioIo::new(stream), service).await;
                }
                (true, Some(config)) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(client = %remote, error = %e, "admin TLS handshake failed")
                        }
                        Err(_) => {
                            tracing::debug!(client = %remote, "admin TLS handshake timed out")
                        }
                    }
                }
                // Not reached: the loader keeps TLS on while the listener was started with it.
                (true, None) => {}
            }
        });
    }
}

/// Host-name instances for `/config`: addresses, last success, last error.
fn dns_map(names: &crate::discovery::Names) -> Value {
    names
        .entries()
        .map(|(name, e)| {
            let addrs: Vec<String> = e.addrs.iter().map(ToString::to_string).collect();
            (
                name.to_string(),
                json!({
                    "addresses": addrs,
                    "resolved_at": e.resolved_at.map(rfc3339),
                    "error": e.error,
                }),
            )
        })
        .collect::<serde_json::Map<String, Value>>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        // 100 requests: 50 in (0, 1 ms], 50 in (1, 2.5 ms].
        let mut now = vec![0u64; LATENCY_BUCKETS.len() + 1];
        now[0] = 50;
        for c in now.iter_mut().skip(1) {
            *c = 100;
        }
        let then = vec![0u64; now.len()];
        assert_eq!(quantile_ms(0.5, &now, &then), Some(1.0));
        let p99 = quantile_ms(0.99, &now, &then).unwrap();
        assert!((p99 - 2.47).abs() < 1e-9, "{p99}");
        assert_eq!(quantile_ms(0.5, &then, &then), None);
        // Only what happened in the window counts.
        assert_eq!(quantile_ms(0.5, &now, &now), None);
    }
}

#[cfg(test)]
mod readiness_tests {
    use super::*;
    use crate::config;

    #[test]
    fn readyz_names_the_deployment_without_a_healthy_instance() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.yaml");
        std::fs::write(
            &path,
            "traffic: {blue: 100, green: 0}\ndeployments:\n  blue: {instances: [127.0.0.1:9001, 127.0.0.1:9002]}\n  green: {instances: [127.0.0.1:9101]}\n",
        )
        .unwrap();
        let loaded = config::load_file(&path).unwrap();
        let metrics = Arc::new(Metrics::new());
        let loader = Arc::new(Loader::new(&path, &loaded, metrics.clone()));
        let admin = Admin::new(
            loader.clone(),
            metrics.clone(),
            Arc::default(),
            Arc::default(),
        );
        assert_eq!(admin.readiness(), Ok(()));
        let table = loader.table().load_full();
        // A 0% deployment without healthy instances does not make the proxy unready.
        table.deployments[1].rest.instances[0].eject();
        assert_eq!(admin.readiness(), Ok(()));
        table.deployments[0].rest.instances[0].eject();
        assert_eq!(admin.readiness(), Ok(()));
        table.deployments[0].rest.instances[1].eject();
        assert_eq!(
            admin.readiness(),
            Err("no healthy instance in deployment(s) with traffic: blue".into())
        );
        assert!(metrics.render().contains(
            "scoregate_instance_healthy{deployment=\"blue\",instance=\"127.0.0.1:9002\"} 0"
        ));
        assert_eq!(
            admin.config_json()["deployments"]["blue"]["instances"][1]["healthy"],
            false
        );
    }
    #[tokio::test]
    async fn failures_lists_what_the_request_path_recorded_oldest_first() {
        use http_body_util::BodyExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.yaml");
        std::fs::write(
            &path,
            "traffic: {blue: 100}\ndeployments:\n  blue: {instances: [127.0.0.1:9001]}\n",
        )
        .unwrap();
        let loaded = config::load_file(&path).unwrap();
        let metrics = Arc::new(Metrics::new());
        let loader = Arc::new(Loader::new(&path, &loaded, metrics.clone()));
        let failures = Arc::new(FailedRequests::default());
        let admin = Admin::new(loader, metrics, Arc::default(), failures.clone());
        let body = async |admin: &Admin| {
            let r = admin.handle(&Method::GET, "/failures");
            assert_eq!(r.status(), StatusCode::OK);
            let bytes = r.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice::<Value>(&bytes).unwrap()
        };
        assert_eq!(body(&admin).await, json!({"failures": []}));
        failures.record(FailedRequest {
            time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            request_id: "3f2a0000-0000-4000-8000-000000000001".into(),
            deployment: Some("blue".into()),
            status: 503,
            grpc_status: None,
            error: Some("timeout"),
            instance: Some("127.0.0.1:9001".into()),
        });
        failures.record(FailedRequest {
            time: UNIX_EPOCH + Duration::from_millis(1_700_000_001_000),
            request_id: "3f2a0000-0000-4000-8000-000000000002".into(),
            deployment: None,
            status: 200,
            grpc_status: Some(14),
            error: None,
            instance: None,
        });
        let want = json!({"failures": [
            {
                "time": "2023-11-14T22:13:20.123Z",
                "request_id": "3f2a0000-0000-4000-8000-000000000001",
                "deployment": "blue",
                "instance": "127.0.0.1:9001",
                "status": 503,
                "grpc_status": null,
                "error": "timeout",
            },
            {
                "time": "2023-11-14T22:13:21.000Z",
                "request_id": "3f2a0000-0000-4000-8000-000000000002",
                "deployment": null,
                "instance": null,
                "status": 200,
                "grpc_status": 14,
                "error": null,
            },
        ]});
        assert_eq!(body(&admin).await, want);
        // Reading does not take them away.
        assert_eq!(body(&admin).await, want);
        let nope = admin.handle(&Method::GET, "/nope");
        assert_eq!(nope.status(), StatusCode::NOT_FOUND);
        let post = admin.handle(&Method::POST, "/failures");
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
