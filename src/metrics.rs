//! Prometheus metrics: every collector registered once in [`Metrics`], label handles resolved
//! ahead of time, rendered by the admin listener's `/metrics`. Beside the data path.

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    reload_success: IntCounter,
    reload_error: IntCounter,
    /// `scoregate_config_generation`: successful reloads with new content, 1 for the first load.
    pub config_generation: IntGauge,
    /// `scoregate_config_last_reload_success`: 1 when the last attempt succeeded.
    pub config_last_reload_success: IntGauge,
}

impl Metrics {
    /// Registers every collector (and the process collector on Linux).
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let reloads = IntCounterVec::new(
            Opts::new(
                "scoregate_config_reloads_total",
                "Attempts to reload the endpoint file, by result.",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let config_generation = IntGauge::new(
            "scoregate_config_generation",
            "Generation of the live endpoint table; grows by one per applied change.",
        )
        .expect("static metric definition");
        let config_last_reload_success = IntGauge::new(
            "scoregate_config_last_reload_success",
            "1 when the last attempt to load the endpoint file succeeded, else 0.",
        )
        .expect("static metric definition");
        for c in [
            Box::new(reloads.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(config_generation.clone()),
            Box::new(config_last_reload_success.clone()),
        ] {
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
            reload_success: reloads.with_label_values(&["success"]),
            reload_error: reloads.with_label_values(&["error"]),
            config_generation,
            config_last_reload_success,
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
}
