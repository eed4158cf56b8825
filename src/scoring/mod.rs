//! Layer 6 (tools): the built-in scoring server (`scoregate score-server`, and the demo's
//! instances): a small real model server that stands where a deployment's scoring pod stands.
//! Not on the proxy's data path.
//!
//! Models: v1 predicts `1.0 + 0.5 × sum(row)`, v2 predicts `0.8 + 0.55 × sum(row)`.
//!
//! It speaks scoregate's own `/score` and the Open Inference Protocol (V2, the protocol of
//! Triton, KServe and MLServer) over REST ([`rest`], HTTP/1.1) and over gRPC ([`grpc`],
//! `inference.GRPCInferenceService` on its own HTTP/2 listener), serving one model,
//! [`MODEL_NAME`]; the input tensor both V2 forms share is read by [`tensor`].

mod grpc;
mod rest;
mod tensor;

use std::sync::Arc;
use std::time::Duration;

use rand::RngExt;
use tokio::net::TcpListener;

pub(crate) use tensor::MODEL_NAME;

/// Largest request body (REST) or message (gRPC) the scoring server reads.
pub(crate) const MAX_BODY: usize = 16 * 1024 * 1024;

/// A model version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Model {
    V1,
    V2,
}

impl Model {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Model::V1 => "v1",
            Model::V2 => "v2",
        }
    }

    /// The model's prediction for one row of features.
    pub(crate) fn predict(self, row: &[f64]) -> f64 {
        let sum: f64 = row.iter().sum();
        match self {
            Model::V1 => 1.0 + 0.5 * sum,
            Model::V2 => 0.8 + 0.55 * sum,
        }
    }
}

/// How one scoring server behaves.
#[derive(Debug, Clone)]
pub(crate) struct ScoreServer {
    /// The deployment it belongs to, reported in every answer.
    pub(crate) name: String,
    pub(crate) model: Model,
    /// Added before every `/score` and inference answer (REST and gRPC). Default 0.
    pub(crate) delay: Duration,
    /// Share of `/score` and inference requests that fail (REST 500, gRPC `INTERNAL`),
    /// 0.0–1.0. Default 0.
    pub(crate) error_rate: f64,
    /// Share of predictions (rows) that are off by +1.0, 0.0–1.0, each rolled at random: a
    /// model that disagrees with its version on a known share of answers, whatever the load
    /// sends. Default 0.
    pub(crate) disagree_rate: f64,
    /// Uniform noise of up to ± this added to every prediction (float noise between two runs
    /// of one model). Default 0.
    pub(crate) noise: f64,
}

/// Why a V2 request named no model this server serves (REST 404, gRPC `NOT_FOUND`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnknownModel(pub(crate) String);

impl ScoreServer {
    /// A server of deployment `name` running `model`, without delay, errors, disagreement or
    /// noise.
    pub(crate) fn new(name: &str, model: Model) -> ScoreServer {
        ScoreServer {
            name: name.to_string(),
            model,
            delay: Duration::ZERO,
            error_rate: 0.0,
            disagree_rate: 0.0,
            noise: 0.0,
        }
    }

    /// Applies the injected delay, then rolls the injected error rate: true when this request
    /// is to fail.
    pub(crate) async fn drill(&self) -> bool {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.error_rate > 0.0 && rand::rng().random_bool(self.error_rate.clamp(0.0, 1.0))
    }

    /// This server's prediction for one row: its model's, off by 1.0 on the disagreeing share
    /// of inputs, plus its noise.
    pub(crate) fn score(&self, row: &[f64]) -> f64 {
        let mut p = self.model.predict(row);
        if self.disagree_rate > 0.0 && rand::rng().random_bool(self.disagree_rate.clamp(0.0, 1.0)) {
            p += 1.0;
        }
        if self.noise > 0.0 {
            p += rand::rng().random_range(-self.noise..=self.noise);
        }
        p
    }

    /// Whether a V2 request's model name and version (empty: any) are this server's.
    pub(crate) fn check_model(&self, name: &str, version: &str) -> Result<(), UnknownModel> {
        if name != MODEL_NAME {
            return Err(UnknownModel(format!(
                "model `{name}` is not served here; this server serves `{MODEL_NAME}`"
            )));
        }
        if !version.is_empty() && version != self.model.name() {
            return Err(UnknownModel(format!(
                "model `{MODEL_NAME}` has no version `{version}` here; this server runs `{}`",
                self.model.name()
            )));
        }
        Ok(())
    }

    /// Serves REST (HTTP/1.1) on `rest` and gRPC (HTTP/2) on `grpc`, each when given, until
    /// the process ends. Both share this server: its model, name, delay and error rate.
    pub(crate) async fn serve(self, rest: Option<TcpListener>, grpc: Option<TcpListener>) {
        let me = Arc::new(self);
        let rest = rest.map(|l| tokio::spawn(rest::serve(me.clone(), l)));
        let grpc = grpc.map(|l| tokio::spawn(grpc::serve(me.clone(), l)));
        for task in [rest, grpc].into_iter().flatten() {
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(disagree_rate: f64, noise: f64) -> ScoreServer {
        ScoreServer {
            disagree_rate,
            noise,
            ..ScoreServer::new("blue", Model::V1)
        }
    }

    #[test]
    fn a_disagreeing_server_differs_on_its_share_of_predictions() {
        let (plain, off) = (server(0.0, 0.0), server(0.3, 0.0));
        let rows: Vec<[f64; 3]> = (0..10_000)
            .map(|i| [i as f64, 0.5, (i % 7) as f64])
            .collect();
        let differing = rows
            .iter()
            .filter(|r| plain.score(&r[..]) != off.score(&r[..]))
            .count();
        // Binomial(10000, 0.3): sd 46; within 4 sd.
        assert!((differing as f64 - 3000.0).abs() < 184.0, "{differing}");
        let noisy = server(0.0, 1e-9);
        assert!(
            rows.iter()
                // The noise is at most 1e-9; adding it to a prediction near 10^4 rounds by up
                // to half an ulp (1e-12).
                .all(|r| (noisy.score(&r[..]) - plain.score(&r[..])).abs() <= 1e-9 + 1e-11)
        );
    }

    #[test]
    fn models_differ_and_are_linear() {
        let row = [1.0, 2.0, 3.0];
        assert_eq!(Model::V1.predict(&row), 4.0);
        assert!((Model::V2.predict(&row) - 4.1).abs() < 1e-9);
        assert_eq!(Model::V1.predict(&[]), 1.0);
    }

    #[test]
    fn only_the_servers_model_and_version_are_found() {
        let s = ScoreServer::new("blue", Model::V1);
        assert_eq!(s.check_model("scorer", ""), Ok(()));
        assert_eq!(s.check_model("scorer", "v1"), Ok(()));
        assert_eq!(
            s.check_model("resnet", "").unwrap_err().0,
            "model `resnet` is not served here; this server serves `scorer`"
        );
        assert_eq!(
            s.check_model("scorer", "v2").unwrap_err().0,
            "model `scorer` has no version `v2` here; this server runs `v1`"
        );
    }
}
