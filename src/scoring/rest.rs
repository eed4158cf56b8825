//! Layer 6 (tools): the scoring server's REST listener, HTTP/1.1 keep-alive: scoregate's own
//! `GET`/`POST /score` and `GET /health`, and the Open Inference Protocol's REST paths —
//! `GET /v2`, `/v2/health/live`, `/v2/health/ready`, `GET /v2/models/{name}[/versions/{v}]`
//! (metadata), `.../ready` and `POST .../infer` with the V2 JSON tensor body.

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
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::tensor::{self, Batch, DataType, INPUT, MODEL_NAME, OUTPUT, Shape};
use super::{MAX_BODY, ScoreServer};

type Resp = Response<Full<Bytes>>;

fn reply(status: StatusCode, value: Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(value.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: impl Into<String>) -> Resp {
    reply(status, json!({ "error": message.into() }))
}

/// `/score`'s body.
#[derive(Deserialize)]
struct ScoreRequest {
    data: Vec<Vec<f64>>,
}

/// A V2 inference request (`POST /v2/models/{name}/infer`); other members (`parameters`)
/// are allowed and ignored.
#[derive(Deserialize)]
struct InferRequest {
    #[serde(default)]
    id: Option<String>,
    inputs: Vec<InputTensor>,
    #[serde(default)]
    outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Deserialize)]
struct InputTensor {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    data: Value,
}

#[derive(Deserialize)]
struct RequestedOutput {
    name: String,
}

const INFER_EXAMPLE: &str =
    r#"{"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]}"#;

/// A V2 JSON inference body read: its `id`, if any, and the input's rows.
pub(super) fn parse_infer(body: &[u8]) -> Result<(Option<String>, Batch), String> {
    let req: InferRequest = serde_json::from_slice(body)
        .map_err(|e| format!("expected a V2 inference request like {INFER_EXAMPLE}: {e}"))?;
    let i = tensor::the_input(req.inputs.iter().map(|t| t.name.as_str()))?;
    if let Some(outputs) = &req.outputs {
        tensor::check_outputs(outputs.iter().map(|o| o.name.as_str()))?;
    }
    let input = &req.inputs[i];
    let datatype = DataType::parse(&input.datatype)?;
    let shape = Shape::parse(&input.shape)?;
    let values = json_data(&input.data, &shape, datatype)?;
    Ok((req.id, Batch::new(&shape, values)?))
}

/// The elements of a V2 JSON `data` member: flat in row-major order (`[1, 2, 3, 4]`), or
/// nested as the shape is (`[[1, 2], [3, 4]]` for `[2, 2]`).
fn json_data(data: &Value, shape: &Shape, datatype: DataType) -> Result<Vec<f64>, String> {
    let Value::Array(items) = data else {
        return Err(format!(
            "input `{INPUT}`: `data` must be an array of numbers, not {}",
            kind(data)
        ));
    };
    let mut out = Vec::with_capacity(shape.elements.min(items.len().saturating_mul(16)));
    if items.iter().any(Value::is_array) {
        nested(
            data,
            &shape.dims,
            shape,
            datatype,
            "data".to_string(),
            &mut out,
        )?;
    } else {
        for (i, v) in items.iter().enumerate() {
            out.push(number(v, datatype, &format!("data[{i}]"))?);
        }
    }
    Ok(out)
}

/// Walks nested `data` along the shape's dimensions `dims`, pushing the numbers at the bottom.
fn nested(
    v: &Value,
    dims: &[usize],
    shape: &Shape,
    datatype: DataType,
    at: String,
    out: &mut Vec<f64>,
) -> Result<(), String> {
    let Some((&len, rest)) = dims.split_first() else {
        out.push(number(v, datatype, &at)?);
        return Ok(());
    };
    let Value::Array(items) = v else {
        return Err(format!(
            "input `{INPUT}`: {at} is {} where shape {} wants an array of {len}",
            kind(v),
            shape.text()
        ));
    };
    if items.len() != len {
        return Err(format!(
            "input `{INPUT}`: {at} has {} elements where shape {} wants {len}",
            items.len(),
            shape.text()
        ));
    }
    for (i, item) in items.iter().enumerate() {
        nested(item, rest, shape, datatype, format!("{at}[{i}]"), out)?;
    }
    Ok(())
}

/// One element: a number, and a whole one for the integer data types.
fn number(v: &Value, datatype: DataType, at: &str) -> Result<f64, String> {
    let n = if datatype.is_integer() {
        v.as_i64()
            .map(|i| i as f64)
            .or_else(|| v.as_u64().map(|u| u as f64))
    } else {
        v.as_f64()
    };
    n.ok_or_else(|| {
        format!(
            "input `{INPUT}`: {at} is {}; {} data must be {}",
            kind(v),
            datatype.name(),
            if datatype.is_integer() {
                "whole numbers"
            } else {
                "numbers"
            }
        )
    })
}

/// A JSON value as an error message names it.
fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(_) => "a string".to_string(),
        Value::Array(_) => "an array".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

/// The model's metadata (`GET /v2/models/scorer`).
fn metadata(server: &ScoreServer) -> Value {
    json!({
        "name": MODEL_NAME,
        "versions": [server.model.name()],
        "platform": "scoregate",
        "inputs": [{"name": INPUT, "datatype": "FP64", "shape": [-1, -1]}],
        "outputs": [{"name": OUTPUT, "datatype": "FP64", "shape": [-1]}],
    })
}

/// What a `/v2/models/...` path asks for.
#[derive(Debug, PartialEq, Eq)]
enum ModelCall {
    Metadata,
    Ready,
    Infer,
}

/// `NAME[/versions/V][/ready|/infer]` (after `/v2/models/`): the name, the version (empty:
/// any) and the call.
fn model_path(rest: &str) -> Option<(&str, &str, ModelCall)> {
    let parts: Vec<&str> = rest.split('/').collect();
    let (name, version, tail) = match parts[..] {
        [_, "versions", "", ..] => return None,
        [name, "versions", version, ref tail @ ..] => (name, version, tail),
        [name, ref tail @ ..] => (name, "", tail),
        [] => return None,
    };
    let call = match tail {
        [] => ModelCall::Metadata,
        ["ready"] => ModelCall::Ready,
        ["infer"] => ModelCall::Infer,
        _ => return None,
    };
    (!name.is_empty()).then_some((name, version, call))
}

const NOT_FOUND: &str = "not found: try GET /score, POST /score, GET /health, or the V2 paths \
                         GET /v2/health/ready, GET /v2/models/scorer, POST /v2/models/scorer/infer";

async fn handle(server: &ScoreServer, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/health") => reply(StatusCode::OK, json!({"status": "ok"})),
        (&Method::GET, "/score") => {
            if server.drill().await {
                return injected(server);
            }
            reply(
                StatusCode::OK,
                json!({"deployment": server.name, "model": server.model.name()}),
            )
        }
        (&Method::POST, "/score") => {
            let body = match read(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            if server.drill().await {
                return injected(server);
            }
            match serde_json::from_slice::<ScoreRequest>(&body) {
                Ok(r) => {
                    let predictions: Vec<f64> =
                        r.data.iter().map(|row| server.score(row)).collect();
                    reply(
                        StatusCode::OK,
                        json!({
                            "deployment": server.name,
                            "model": server.model.name(),
                            "predictions": predictions,
                        }),
                    )
                }
                Err(e) => error(
                    StatusCode::BAD_REQUEST,
                    format!("expected {{\"data\": [[number, ...], ...]}}: {e}"),
                ),
            }
        }
        (&Method::GET, "/v2") => reply(
            StatusCode::OK,
            json!({"name": "scoregate", "version": env!("CARGO_PKG_VERSION"), "extensions": []}),
        ),
        (&Method::GET, "/v2/health/live") => reply(StatusCode::OK, json!({"live": true})),
        (&Method::GET, "/v2/health/ready") => reply(StatusCode::OK, json!({"ready": true})),
        (_, "/score" | "/health" | "/v2" | "/v2/health/live" | "/v2/health/ready") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        (_, p) => match p.strip_prefix("/v2/models/").and_then(model_path) {
            Some((name, version, call)) => {
                let (name, version) = (name.to_string(), version.to_string());
                model_call(server, req, &name, &version, call).await
            }
            None => error(StatusCode::NOT_FOUND, NOT_FOUND),
        },
    }
}

/// A call on `/v2/models/NAME[/versions/V]...`.
async fn model_call(
    server: &ScoreServer,
    req: Request<Incoming>,
    name: &str,
    version: &str,
    call: ModelCall,
) -> Resp {
    let want = if call == ModelCall::Infer {
        Method::POST
    } else {
        Method::GET
    };
    if req.method() != want {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method not allowed: use {want}"),
        );
    }
    if let Err(e) = server.check_model(name, version) {
        return error(StatusCode::NOT_FOUND, e.0);
    }
    match call {
        ModelCall::Metadata => reply(StatusCode::OK, metadata(server)),
        ModelCall::Ready => reply(StatusCode::OK, json!({"name": MODEL_NAME, "ready": true})),
        ModelCall::Infer => {
            let body = match read(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            if server.drill().await {
                return injected(server);
            }
            match parse_infer(&body) {
                Ok((id, batch)) => reply(StatusCode::OK, infer_answer(server, id, &batch)),
                Err(e) => error(StatusCode::BAD_REQUEST, e),
            }
        }
    }
}

/// The V2 JSON answer to an inference request.
fn infer_answer(server: &ScoreServer, id: Option<String>, batch: &Batch) -> Value {
    let mut answer = json!({
        "model_name": MODEL_NAME,
        "model_version": server.model.name(),
        "parameters": {"deployment": server.name},
        "outputs": [{
            "name": OUTPUT,
            "shape": [batch.rows()],
            "datatype": "FP64",
            "data": batch.predict(|r| server.score(r)),
        }],
    });
    if let (Some(id), Some(obj)) = (id, answer.as_object_mut()) {
        obj.insert("id".to_string(), Value::String(id));
    }
    answer
}

fn injected(server: &ScoreServer) -> Resp {
    reply(
        StatusCode::INTERNAL_SERVER_ERROR,
        json!({"error": "injected failure", "deployment": server.name}),
    )
}

/// The request body, up to [`MAX_BODY`].
async fn read(req: Request<Incoming>) -> Result<Bytes, Resp> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("could not read the body: {e}"),
        )),
    }
}

/// Serves HTTP/1.1 on `listener` until the process ends.
pub(super) async fn serve(server: Arc<ScoreServer>, listener: TcpListener) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).keep_alive(true);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let server = server.clone();
        let conn = http.serve_connection(
            TokioIo::new(stream),
            service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(handle(&server, req).await) }
            }),
        );
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scoring::Model;

    fn parse(body: &str) -> Result<(Option<String>, Batch), String> {
        parse_infer(body.as_bytes())
    }

    fn predictions(body: &str) -> Vec<f64> {
        parse(body).unwrap().1.predict(|r| Model::V1.predict(r))
    }

    #[test]
    fn flat_and_nested_data_read_alike() {
        let flat =
            r#"{"inputs":[{"name":"input","shape":[2,3],"datatype":"FP64","data":[1,2,3,4,5,6]}]}"#;
        let nested = r#"{"inputs":[{"name":"input","shape":[2,3],"datatype":"FP64","data":[[1,2,3],[4,5,6]]}]}"#;
        assert_eq!(predictions(flat), vec![4.0, 8.5]);
        assert_eq!(predictions(nested), vec![4.0, 8.5]);
        let one_row = r#"{"id":"r1","inputs":[{"name":"input","shape":[3],"datatype":"FP32","data":[1.5,2,3]}]}"#;
        let (id, batch) = parse(one_row).unwrap();
        assert_eq!(id.as_deref(), Some("r1"));
        assert_eq!(batch.predict(|r| Model::V1.predict(r)), vec![4.25]);
    }

    #[test]
    fn integer_types_take_whole_numbers() {
        let ok = r#"{"inputs":[{"name":"input","shape":[1,2],"datatype":"INT64","data":[3,-1]}]}"#;
        assert_eq!(predictions(ok), vec![2.0]);
        let bad =
            r#"{"inputs":[{"name":"input","shape":[1,2],"datatype":"INT64","data":[3,1.5]}]}"#;
        assert_eq!(
            parse(bad).unwrap_err(),
            "input `input`: data[1] is 1.5; INT64 data must be whole numbers"
        );
    }

    #[test]
    fn wrong_shapes_and_data_say_what_is_wrong() {
        let cases = [
            (
                r#"{"inputs":[{"name":"input","shape":[2,3],"datatype":"FP64","data":[1,2,3,4,5]}]}"#,
                "input `input`: shape [2, 3] holds 6 elements but the data has 5",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[2,3],"datatype":"FP64","data":[[1,2,3],[4,5]]}]}"#,
                "input `input`: data[1] has 2 elements where shape [2, 3] wants 3",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[2,2],"datatype":"FP64","data":[[1,2],3,4]}]}"#,
                "input `input`: data has 3 elements where shape [2, 2] wants 2",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[2,2],"datatype":"FP64","data":[[1,2],[3,[4]]]}]}"#,
                "input `input`: data[1][1] is an array; FP64 data must be numbers",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[1,2],"datatype":"FP64","data":[1,"2"]}]}"#,
                "input `input`: data[1] is a string; FP64 data must be numbers",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[1,2],"datatype":"FP64","data":{"a":1}}]}"#,
                "input `input`: `data` must be an array of numbers, not an object",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[1,1],"datatype":"BYTES","data":["x"]}]}"#,
                "input `input`: datatype `BYTES` is not supported; the model takes FP32, FP64, INT8, INT16, INT32, INT64, UINT8, UINT16, UINT32, UINT64",
            ),
            (
                r#"{"inputs":[{"name":"features","shape":[1,1],"datatype":"FP64","data":[1]}]}"#,
                "unknown input `features`; the model takes one input, `input`",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[1,1],"datatype":"FP64","data":[1]}],"outputs":[{"name":"probs"}]}"#,
                "unknown output `probs`; the model's one output is `predictions`",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[1,-1],"datatype":"FP64","data":[1]}]}"#,
                "input `input`: shape [1, -1] has a negative dimension, -1",
            ),
        ];
        for (body, want) in cases {
            assert_eq!(parse(body).unwrap_err(), want, "{body}");
        }
    }

    #[test]
    fn a_body_that_is_no_v2_request_shows_an_example() {
        let e = parse(r#"{"data": [[1, 2, 3]]}"#).unwrap_err();
        assert!(
            e.starts_with(
                "expected a V2 inference request like {\"inputs\": [{\"name\": \"input\""
            ),
            "{e}"
        );
        assert!(e.contains("missing field `inputs`"), "{e}");
        let e = parse(r#"{"inputs":[{"name":"input","datatype":"FP64","data":[1]}]}"#).unwrap_err();
        assert!(e.contains("missing field `shape`"), "{e}");
        assert!(parse("not json").is_err());
    }

    #[test]
    fn model_paths() {
        assert_eq!(
            model_path("scorer"),
            Some(("scorer", "", ModelCall::Metadata))
        );
        assert_eq!(
            model_path("scorer/ready"),
            Some(("scorer", "", ModelCall::Ready))
        );
        assert_eq!(
            model_path("scorer/infer"),
            Some(("scorer", "", ModelCall::Infer))
        );
        assert_eq!(
            model_path("scorer/versions/v2/infer"),
            Some(("scorer", "v2", ModelCall::Infer))
        );
        assert_eq!(
            model_path("x/versions/v1"),
            Some(("x", "v1", ModelCall::Metadata))
        );
        assert_eq!(model_path(""), None);
        assert_eq!(model_path("scorer/versions"), None);
        assert_eq!(model_path("scorer/versions//infer"), None);
        assert_eq!(model_path("scorer/explain"), None);
        assert_eq!(model_path("scorer/infer/more"), None);
    }

    #[test]
    fn the_answer_carries_the_id_deployment_and_predictions() {
        let server = ScoreServer::new("blue", Model::V1);
        let (id, batch) = parse(
            r#"{"id":"42","inputs":[{"name":"input","shape":[1,3],"datatype":"FP64","data":[1,2,3]}]}"#,
        )
        .unwrap();
        let a = infer_answer(&server, id, &batch);
        assert_eq!(
            a,
            json!({
                "model_name": "scorer",
                "model_version": "v1",
                "id": "42",
                "parameters": {"deployment": "blue"},
                "outputs": [{"name": "predictions", "shape": [1], "datatype": "FP64", "data": [4.0]}],
            })
        );
        let a = infer_answer(&server, None, &batch);
        assert!(a.get("id").is_none());
        assert_eq!(metadata(&server)["inputs"][0]["shape"], json!([-1, -1]));
    }
}
