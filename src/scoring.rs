//! Layer 6 (tools): the built-in scoring server (`scoregate score-server`, and the demo's instances): a small real
//! model server that stands where a deployment's scoring pod stands. Not on the proxy's data path.
//!
//! Models: v1 predicts `1.0 + 0.5 × sum(row)`, v2 predicts `0.8 + 0.55 × sum(row)`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rand::RngExt;
use serde::Deserialize;
use tokio::net::TcpListener;

/// Largest request body the scoring server reads.
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
    /// Added before every `/score` answer. Default 0.
    pub(crate) delay: Duration,
    /// Share of `/score` requests answered with 500, 0.0–1.0. Default 0.
    pub(crate) error_rate: f64,
}

#[derive(Deserialize)]
struct ScoreRequest {
    data: Vec<Vec<f64>>,
}

type Resp = Response<Full<Bytes>>;

fn json(status: StatusCode, value: serde_json::Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(value.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

impl ScoreServer {
    async fn handle(&self, req: Request<Incoming>) -> Resp {
        let path = req.uri().path();
        match (req.method().clone(), path) {
            (Method::GET, "/health") => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
            (Method::GET, "/score") => {
                if let Some(r) = self.drill().await {
                    return r;
                }
                json(
                    StatusCode::OK,
                    serde_json::json!({"deployment": self.name, "model": self.model.name()}),
                )
            }
            (Method::POST, "/score") => {
                let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => {
                        return json(
                            StatusCode::BAD_REQUEST,
                            serde_json::json!({"error": format!("could not read the body: {e}")}),
                        );
                    }
                };
                if let Some(r) = self.drill().await {
                    return r;
                }
                match serde_json::from_slice::<ScoreRequest>(&body) {
                    Ok(r) => {
                        let predictions: Vec<f64> =
                            r.data.iter().map(|row| self.model.predict(row)).collect();
                        json(
                            StatusCode::OK,
                            serde_json::json!({
                                "deployment": self.name,
                                "model": self.model.name(),
                                "predictions": predictions,
                            }),
                        )
                    }
                    Err(e) => json(
                        StatusCode::BAD_REQUEST,
                        serde_json::json!({
                            "error": format!("expected {{\"data\": [[number, ...], ...]}}: {e}"),
                        }),
                    ),
                }
            }
            (_, "/score" | "/health") => json(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({"error": "method not allowed"}),
            ),
            _ => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "not found: try GET /score, POST /score or GET /health"}),
            ),
        }
    }

    /// Applies the injected delay, then maybe an injected failure.
    async fn drill(&self) -> Option<Resp> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if self.error_rate > 0.0 && rand::rng().random_bool(self.error_rate.clamp(0.0, 1.0)) {
            return Some(json(
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({"error": "injected failure", "deployment": self.name}),
            ));
        }
        None
    }

    /// Serves on `listener` until the process ends.
    pub(crate) async fn serve(self, listener: TcpListener) {
        let me = Arc::new(self);
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new()).keep_alive(true);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let me = me.clone();
            let conn = http.serve_connection(
                TokioIo::new(stream),
                service_fn(move |req| {
                    let me = me.clone();
                    async move { Ok::<_, Infallible>(me.handle(req).await) }
                }),
            );
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_differ_and_are_linear() {
        let row = [1.0, 2.0, 3.0];
        assert_eq!(Model::V1.predict(&row), 4.0);
        assert!((Model::V2.predict(&row) - 4.1).abs() < 1e-9);
        assert_eq!(Model::V1.predict(&[]), 1.0);
    }
}
