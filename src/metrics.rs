//! Layer 0 (values): Prometheus metrics. Every collector registered once in [`Metrics`]; per-deployment label
//! handles resolved when a compiled table is applied ([`DeploymentMetrics`]), so the request path does
//! no label lookup. Rendered by the admin listener's `/metrics`.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets in seconds: 1 ms to 120 s (model scoring can be slow).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The deployment label of requests refused before a deployment was chosen.
pub const NONE: &str = "none";

/// `kind` values of `scoregate_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Connect = 0,
    Timeout = 1,
    Overload = 2,
    Protocol = 3,
    /// The TLS handshake with an instance failed.
    Tls = 4,
}

impl UpstreamErrorKind {
    pub const ALL: [UpstreamErrorKind; 5] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Overload,
        UpstreamErrorKind::Protocol,
        UpstreamErrorKind::Tls,
    ];
    pub fn label(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Overload => "overload",
            UpstreamErrorKind::Protocol => "protocol",
            UpstreamErrorKind::Tls => "tls",
        }
    }
}

/// The `q` quantile (0–1), in the unit of `bounds`, of the observations between two snapshots
/// of cumulative bucket counts (`bounds` order, then +Inf), interpolated within its bucket as
/// Prometheus' `histogram_quantile` does. `None` without observations in between.
pub fn quantile(q: f64, bounds: &[f64], now: &[u64], then: &[u64]) -> Option<f64> {
    let delta: Vec<u64> = now
        .iter()
        .enumerate()
        .map(|(i, n)| n.saturating_sub(then.get(i).copied().unwrap_or(0)))
        .collect();
    let total = *delta.last()? as f64;
    if total == 0.0 {
        return None;
    }
    let rank = q * total;
    for (i, &cum) in delta.iter().enumerate() {
        if cum as f64 >= rank {
            let Some(&upper) = bounds.get(i) else {
                // In the +Inf bucket: the highest finite bound is the best answer.
                return bounds.last().copied();
            };
            let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
            let below = if i == 0 { 0.0 } else { delta[i - 1] as f64 };
            let inside = cum as f64 - below;
            let frac = if inside > 0.0 {
                (rank - below) / inside
            } else {
                1.0
            };
            return Some(lower + (upper - lower) * frac);
        }
    }
    None
}

/// The names of the 17 gRPC status codes, by code.
pub const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// gRPC status codes that mean the server failed, not the caller: UNKNOWN, DEADLINE_EXCEEDED,
/// UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS. `rollout` counts them as errors.
pub const GRPC_SERVER_FAILURES: [u32; 6] = [2, 4, 12, 13, 14, 15];

/// `result` values of `scoregate_shadow_comparisons_total`, by [`crate::shadow::Verdict`] order.
pub const SHADOW_RESULTS: [&str; 3] = ["match", "mismatch", "incomparable"];

/// Why a mirrored copy was not sent or not compared (`reason` of
/// `scoregate_mirror_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorDrop {
    /// The request body is over the mirror's body bound.
    BodyTooLarge = 0,
    /// Too many copies in flight already, or no free instance of the mirror.
    Backlog = 1,
    /// The live body could not be copied whole while it streamed: it passed the bound, or the
    /// copy fell behind the live request.
    Abandoned = 2,
}

impl MirrorDrop {
    pub const ALL: [MirrorDrop; 3] = [
        MirrorDrop::BodyTooLarge,
        MirrorDrop::Backlog,
        MirrorDrop::Abandoned,
    ];
    pub fn label(self) -> &'static str {
        match self {
            MirrorDrop::BodyTooLarge => "body_too_large",
            MirrorDrop::Backlog => "backlog",
            MirrorDrop::Abandoned => "abandoned",
        }
    }
}

/// Buckets of the largest numeric difference per comparison.
pub const DIFFERENCE_BUCKETS: &[f64] = &[
    1e-9, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0,
];

/// One mirror target's shadow series: comparisons by result, the largest numeric difference
/// per comparison, the copy's answer time, and drops by reason.
#[derive(Debug, Clone)]
pub struct ShadowMetrics {
    comparisons: [IntCounter; 3],
    max_difference: Histogram,
    duration: Histogram,
    dropped: [IntCounter; 3],
}

impl ShadowMetrics {
    /// Counts one comparison (`result` indexes [`SHADOW_RESULTS`]).
    pub fn compared(&self, result: usize, max_difference: f64) {
        if let Some(c) = self.comparisons.get(result) {
            c.inc();
        }
        if result != 2 {
            self.max_difference.observe(max_difference);
        }
    }

    /// The time the copy took to answer with its headers.
    pub fn copy_answered(&self, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// Counts a copy dropped for `reason`.
    pub fn dropped(&self, reason: MirrorDrop) {
        self.dropped[reason as usize].inc();
    }
}

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGaugeVec,
    upstream_errors: IntCounterVec,
    grpc: IntCounterVec,
    weight: IntGaugeVec,
    /// `scoregate_mirror_requests_total{deployment, result}`.
    pub mirror: IntCounterVec,
    instance_healthy: IntGaugeVec,
    reload_success: IntCounter,
    reload_error: IntCounter,
    /// `scoregate_config_generation`: successful reloads with new content, 1 for the first load.
    pub config_generation: IntGauge,
    /// `scoregate_config_last_reload_success`: 1 when the last attempt succeeded.
    pub config_last_reload_success: IntGauge,
    dns_errors: IntCounterVec,
    tls_expiry: IntGaugeVec,
    shadow_comparisons: IntCounterVec,
    shadow_difference: HistogramVec,
    mirror_duration: HistogramVec,
    mirror_dropped: IntCounterVec,
    /// Access log lines and OTLP spans: written, exported, dropped.
    pub telemetry: TelemetryMetrics,
}

/// Counters of the access log and the span exporter (`scoregate_access_log_*`,
/// `scoregate_trace_spans_*`), cloned into their writer and exporter.
#[derive(Clone)]
pub struct TelemetryMetrics {
    /// Lines written to the access log.
    pub log_written: IntCounter,
    /// Lines dropped: the writer's queue was full (a slow disk).
    pub log_dropped_queue_full: IntCounter,
    /// Lines dropped: the file could not be opened or written (a full or read-only disk).
    pub log_dropped_write_error: IntCounter,
    /// Spans accepted by the OTLP receiver.
    pub spans_exported: IntCounter,
    /// Spans dropped: the exporter's queue was full.
    pub spans_dropped_queue_full: IntCounter,
    /// Spans dropped: the export failed (collector down, refused, timed out).
    pub spans_dropped_export_failed: IntCounter,
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition")
}
fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition")
}
fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("static metric definition")
}

impl Metrics {
    /// Registers every collector (and the process collector on Linux).
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = counter_vec(
            "scoregate_requests_total",
            "Requests answered, by deployment (none: refused before routing), status code sent and whether the pin header was present.",
            &["deployment", "code", "pinned"],
        );
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "scoregate_request_duration_seconds",
                "Time from a request's arrival to its response headers, by deployment.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["deployment"],
        )
        .expect("static metric definition");
        let in_flight = gauge_vec(
            "scoregate_upstream_in_flight",
            "Requests held by instances of the deployment (until the response body has streamed).",
            &["deployment"],
        );
        let upstream_errors = counter_vec(
            "scoregate_upstream_errors_total",
            "Failed exchanges with instances, by deployment and kind (connect, timeout, overload, protocol).",
            &["deployment", "kind"],
        );
        let grpc = counter_vec(
            "scoregate_grpc_responses_total",
            "gRPC calls answered, by deployment (none: refused before routing) and gRPC status (the instance's, or scoregate's own for errors it answers itself). Every gRPC answer has HTTP status 200: this is where its failures show.",
            &["deployment", "grpc_code"],
        );
        let weight = gauge_vec(
            "scoregate_traffic_weight",
            "Live traffic weight of the deployment, 0-100.",
            &["deployment"],
        );
        let mirror = counter_vec(
            "scoregate_mirror_requests_total",
            "Mirrored copies of requests, by mirror deployment and result (ok, error, dropped).",
            &["deployment", "result"],
        );
        let instance_healthy = gauge_vec(
            "scoregate_instance_healthy",
            "1 when the instance takes traffic, 0 while it is ejected.",
            &["deployment", "instance"],
        );
        let reloads = counter_vec(
            "scoregate_config_reloads_total",
            "Attempts to reload the endpoint file, by result.",
            &["result"],
        );
        let config_generation = gauge(
            "scoregate_config_generation",
            "Generation of the live endpoint table; grows by one per applied change.",
        );
        let config_last_reload_success = gauge(
            "scoregate_config_last_reload_success",
            "1 when the last attempt to load the endpoint file succeeded, else 0.",
        );
        let dns_errors = counter_vec(
            "scoregate_dns_lookup_errors_total",
            "Failed lookups of instances written as host names (the last known addresses are kept), by name as written.",
            &["name"],
        );
        let tls_expiry = gauge_vec(
            "scoregate_tls_certificate_expiry_seconds",
            "When the certificate a listener serves expires (notAfter), in seconds since the Unix epoch, by listener (data, admin). Alert on `scoregate_tls_certificate_expiry_seconds - time() < 7 * 86400`.",
            &["listener"],
        );
        let shadow_comparisons = counter_vec(
            "scoregate_shadow_comparisons_total",
            "Mirrored answers compared with the live answer to the same request, by mirror deployment and result (match, mismatch, incomparable).",
            &["deployment", "result"],
        );
        let shadow_difference = HistogramVec::new(
            HistogramOpts::new(
                "scoregate_shadow_max_difference",
                "The largest numeric difference between a mirrored answer and the live one, per comparison, by mirror deployment.",
            )
            .buckets(DIFFERENCE_BUCKETS.to_vec()),
            &["deployment"],
        )
        .expect("static metric definition");
        let mirror_duration = HistogramVec::new(
            HistogramOpts::new(
                "scoregate_mirror_duration_seconds",
                "Time a mirrored copy took to get its answer's headers, by mirror deployment.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["deployment"],
        )
        .expect("static metric definition");
        let mirror_dropped = counter_vec(
            "scoregate_mirror_dropped_total",
            "Mirrored copies not sent or not compared, by mirror deployment and reason (body_too_large, backlog, abandoned).",
            &["deployment", "reason"],
        );
        let log_lines = IntCounter::new(
            "scoregate_access_log_lines_total",
            "Lines written to the access log.",
        )
        .expect("static metric definition");
        let log_dropped = counter_vec(
            "scoregate_access_log_dropped_total",
            "Access log lines dropped, by reason: queue_full (the disk is slower than the requests), write_error (the file cannot be opened or written).",
            &["reason"],
        );
        let spans = IntCounter::new(
            "scoregate_trace_spans_exported_total",
            "Spans accepted by the OTLP receiver.",
        )
        .expect("static metric definition");
        let spans_dropped = counter_vec(
            "scoregate_trace_spans_dropped_total",
            "Spans not exported, by reason: queue_full (the exporter is behind), export_failed (the collector is down or refused them).",
            &["reason"],
        );
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(dns_errors.clone()),
            Box::new(tls_expiry.clone()),
            Box::new(shadow_comparisons.clone()),
            Box::new(shadow_difference.clone()),
            Box::new(mirror_duration.clone()),
            Box::new(mirror_dropped.clone()),
            Box::new(requests.clone()),
            Box::new(duration.clone()),
            Box::new(in_flight.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(grpc.clone()),
            Box::new(weight.clone()),
            Box::new(mirror.clone()),
            Box::new(instance_healthy.clone()),
            Box::new(reloads.clone()),
            Box::new(config_generation.clone()),
            Box::new(config_last_reload_success.clone()),
            Box::new(log_lines.clone()),
            Box::new(log_dropped.clone()),
            Box::new(spans.clone()),
            Box::new(spans_dropped.clone()),
        ];
        for c in collectors {
            registry.register(c).expect("metric registered once");
        }
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process collector registered once");
        Metrics {
            registry,
            requests,
            duration,
            in_flight,
            upstream_errors,
            grpc,
            weight,
            mirror,
            instance_healthy,
            reload_success: reloads.with_label_values(&["success"]),
            reload_error: reloads.with_label_values(&["error"]),
            config_generation,
            config_last_reload_success,
            dns_errors,
            tls_expiry,
            shadow_comparisons,
            shadow_difference,
            mirror_duration,
            mirror_dropped,
            telemetry: TelemetryMetrics {
                log_written: log_lines,
                log_dropped_queue_full: log_dropped.with_label_values(&["queue_full"]),
                log_dropped_write_error: log_dropped.with_label_values(&["write_error"]),
                spans_exported: spans,
                spans_dropped_queue_full: spans_dropped.with_label_values(&["queue_full"]),
                spans_dropped_export_failed: spans_dropped.with_label_values(&["export_failed"]),
            },
        }
    }

    /// Handles for a mirror target's shadow series (created now with zero values).
    pub fn shadow(&self, deployment: &str) -> ShadowMetrics {
        ShadowMetrics {
            comparisons: SHADOW_RESULTS
                .map(|r| self.shadow_comparisons.with_label_values(&[deployment, r])),
            max_difference: self.shadow_difference.with_label_values(&[deployment]),
            duration: self.mirror_duration.with_label_values(&[deployment]),
            dropped: MirrorDrop::ALL.map(|r| {
                self.mirror_dropped
                    .with_label_values(&[deployment, r.label()])
            }),
        }
    }

    /// Drops a former mirror target's shadow series.
    pub fn remove_shadow(&self, deployment: &str) {
        for r in SHADOW_RESULTS {
            let _ = self
                .shadow_comparisons
                .remove_label_values(&[deployment, r]);
        }
        let _ = self.shadow_difference.remove_label_values(&[deployment]);
        let _ = self.mirror_duration.remove_label_values(&[deployment]);
        for r in MirrorDrop::ALL {
            let _ = self
                .mirror_dropped
                .remove_label_values(&[deployment, r.label()]);
        }
    }

    /// Sets when the certificate of `listener` (`data`, `admin`) expires, in Unix seconds;
    /// `None` removes the series (no TLS).
    pub fn tls_expiry(&self, listener: &str, not_after_unix: Option<i64>) {
        match not_after_unix {
            Some(t) => self.tls_expiry.with_label_values(&[listener]).set(t),
            None => {
                let _ = self.tls_expiry.remove_label_values(&[listener]);
            }
        }
    }

    /// Counts one reload attempt.
    pub fn reload(&self, ok: bool) {
        if ok {
            self.reload_success.inc();
        } else {
            self.reload_error.inc();
        }
        self.config_last_reload_success.set(i64::from(ok));
    }

    /// Counts a failed lookup of an instance name (a name from the file, never client input).
    pub fn dns_error(&self, name: &str) {
        self.dns_errors.with_label_values(&[name]).inc();
    }

    /// Drops the series of a name no longer in the file.
    pub fn forget_dns_name(&self, name: &str) {
        let _ = self.dns_errors.remove_label_values(&[name]);
    }

    /// Failed lookups of `name` so far (creates the series: tests only).
    #[cfg(test)]
    pub fn dns_errors(&self, name: &str) -> u64 {
        self.dns_errors.with_label_values(&[name]).get()
    }

    /// Handles for one deployment's series (created now with zero values, so that rates and
    /// dashboards see them from the start).
    pub fn deployment(&self, name: &str) -> DeploymentMetrics {
        let m = DeploymentMetrics::lazy(self, name);
        let _ = m.in_flight();
        for k in UpstreamErrorKind::ALL {
            let _ = m.error_counter(k);
        }
        m
    }

    /// Handles for requests refused before routing (`deployment="none"`).
    pub fn unrouted(&self) -> DeploymentMetrics {
        DeploymentMetrics::lazy(self, NONE)
    }

    /// Sets `scoregate_traffic_weight` for `deployment`.
    pub fn set_weight(&self, deployment: &str, weight: u8) {
        self.weight
            .with_label_values(&[deployment])
            .set(i64::from(weight));
    }

    /// The `scoregate_instance_healthy` handle of one instance.
    pub fn instance_healthy(&self, deployment: &str, instance: &str) -> IntGauge {
        self.instance_healthy
            .with_label_values(&[deployment, instance])
    }

    /// Drops the series of an instance removed by a reload.
    pub fn remove_instance(&self, deployment: &str, instance: &str) {
        let _ = self
            .instance_healthy
            .remove_label_values(&[deployment, instance]);
    }

    /// Drops every series of a deployment removed by a reload.
    pub fn remove_deployment(&self, m: &DeploymentMetrics, instances: &[&str]) {
        let d = &*m.name;
        for (i, slots) in m.requests.iter().enumerate() {
            for (p, slot) in slots.iter().enumerate() {
                if slot.get().is_some() {
                    let code = (i as u16 + FIRST_CODE).to_string();
                    let _ = self.requests.remove_label_values(&[d, &code, PINNED[p]]);
                }
            }
        }
        let _ = self.duration.remove_label_values(&[d]);
        let _ = self.in_flight.remove_label_values(&[d]);
        for k in UpstreamErrorKind::ALL {
            let _ = self.upstream_errors.remove_label_values(&[d, k.label()]);
        }
        for code in GRPC_CODES {
            let _ = self.grpc.remove_label_values(&[d, code]);
        }
        let _ = self.weight.remove_label_values(&[d]);
        for result in ["ok", "error", "dropped"] {
            let _ = self.mirror.remove_label_values(&[d, result]);
        }
        for inst in instances {
            self.remove_instance(d, inst);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

const FIRST_CODE: u16 = 100;
const CODES: usize = 900; // 100..=999, every status code `http` accepts
const PINNED: [&str; 2] = ["false", "true"];

/// One deployment's metric handles. Request counters per (code, pinned) are resolved on first
/// use and then read without a lookup.
pub struct DeploymentMetrics {
    name: Box<str>,
    requests_vec: IntCounterVec,
    requests: Box<[[OnceLock<IntCounter>; 2]]>,
    duration: Histogram,
    in_flight_vec: IntGaugeVec,
    in_flight: OnceLock<IntGauge>,
    errors_vec: IntCounterVec,
    errors: [OnceLock<IntCounter>; UpstreamErrorKind::ALL.len()],
    grpc_vec: IntCounterVec,
    grpc: [OnceLock<IntCounter>; 17],
}

impl std::fmt::Debug for DeploymentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeploymentMetrics")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl DeploymentMetrics {
    fn lazy(m: &Metrics, name: &str) -> DeploymentMetrics {
        DeploymentMetrics {
            name: name.into(),
            requests_vec: m.requests.clone(),
            requests: (0..CODES)
                .map(|_| [OnceLock::new(), OnceLock::new()])
                .collect(),
            duration: m.duration.with_label_values(&[name]),
            in_flight_vec: m.in_flight.clone(),
            in_flight: OnceLock::new(),
            errors_vec: m.upstream_errors.clone(),
            errors: Default::default(),
            grpc_vec: m.grpc.clone(),
            grpc: Default::default(),
        }
    }

    /// Counts one answered request and its duration.
    pub fn request(&self, code: u16, pinned: bool, elapsed: Duration) {
        let p = usize::from(pinned);
        let i = usize::from(code.clamp(FIRST_CODE, 999) - FIRST_CODE);
        self.requests[i][p]
            .get_or_init(|| {
                let code = (i as u16 + FIRST_CODE).to_string();
                self.requests_vec
                    .with_label_values(&[&*self.name, &code, PINNED[p]])
            })
            .inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// `scoregate_upstream_in_flight` of this deployment.
    pub fn in_flight(&self) -> &IntGauge {
        self.in_flight
            .get_or_init(|| self.in_flight_vec.with_label_values(&[&*self.name]))
    }

    fn error_counter(&self, kind: UpstreamErrorKind) -> &IntCounter {
        self.errors[kind as usize].get_or_init(|| {
            self.errors_vec
                .with_label_values(&[&*self.name, kind.label()])
        })
    }

    /// Counts one failed exchange with an instance.
    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.error_counter(kind).inc();
    }

    /// Counts one gRPC call answered with status `code` (a code past 16 counts as UNKNOWN).
    pub fn grpc_status(&self, code: u32) {
        let i = if code < 17 { code as usize } else { 2 };
        self.grpc[i]
            .get_or_init(|| {
                self.grpc_vec
                    .with_label_values(&[&*self.name, GRPC_CODES[i]])
            })
            .inc();
    }

    /// gRPC calls answered so far: all, and those whose status means the server failed
    /// (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS).
    pub fn grpc_totals(&self) -> (u64, u64) {
        let mut all = 0;
        let mut failed = 0;
        for (i, slot) in self.grpc.iter().enumerate() {
            if let Some(c) = slot.get() {
                all += c.get();
                if GRPC_SERVER_FAILURES.contains(&(i as u32)) {
                    failed += c.get();
                }
            }
        }
        (all, failed)
    }

    /// Requests answered so far, and those answered with 5xx.
    pub fn totals(&self) -> (u64, u64) {
        let mut all = 0;
        let mut errors = 0;
        for (i, slots) in self.requests.iter().enumerate() {
            for slot in slots {
                if let Some(c) = slot.get() {
                    all += c.get();
                    if (400..500).contains(&i) {
                        errors += c.get();
                    }
                }
            }
        }
        (all, errors)
    }

    /// Cumulative latency bucket counts (same order as [`LATENCY_BUCKETS`], then +Inf).
    pub fn latency_buckets(&self) -> Vec<u64> {
        let proto = prometheus::core::Metric::metric(&self.duration);
        let h = proto.get_histogram();
        let mut out: Vec<u64> = h
            .get_bucket()
            .iter()
            .map(|b| b.cumulative_count())
            .collect();
        out.push(h.get_sample_count());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_metrics_render_with_both_results() {
        let m = Metrics::new();
        m.reload(true);
        m.reload(false);
        m.reload(false);
        m.config_generation.set(3);
        let text = m.render();
        assert!(text.contains("scoregate_config_reloads_total{result=\"success\"} 1"));
        assert!(text.contains("scoregate_config_reloads_total{result=\"error\"} 2"));
        assert!(text.contains("scoregate_config_generation 3"));
        assert!(text.contains("scoregate_config_last_reload_success 0"));
    }

    #[test]
    fn requests_are_counted_by_code_and_pin_and_removed_with_their_deployment() {
        let m = Metrics::new();
        let d = m.deployment("blue");
        for _ in 0..3 {
            d.request(200, false, Duration::from_millis(2));
        }
        d.request(200, true, Duration::from_millis(2));
        d.request(503, false, Duration::from_secs(70));
        d.request(999, false, Duration::ZERO);
        let text = m.render();
        assert!(text.contains(
            "scoregate_requests_total{code=\"200\",deployment=\"blue\",pinned=\"false\"} 3"
        ));
        assert!(text.contains(
            "scoregate_requests_total{code=\"200\",deployment=\"blue\",pinned=\"true\"} 1"
        ));
        assert!(text.contains(
            "scoregate_request_duration_seconds_bucket{deployment=\"blue\",le=\"60\"} 5"
        ));
        assert!(
            text.contains(
                "scoregate_upstream_errors_total{deployment=\"blue\",kind=\"overload\"} 0"
            )
        );
        assert_eq!(d.totals(), (6, 1));
        assert_eq!(d.latency_buckets().last(), Some(&6));
        m.remove_deployment(&d, &[]);
        let text = m.render();
        assert!(!text.contains("code=\"200\",deployment=\"blue\""), "{text}");
        assert!(!text.contains("deployment=\"blue\""), "{text}");
    }
}
