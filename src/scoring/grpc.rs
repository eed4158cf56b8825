//! Layer 6 (tools): the scoring server's gRPC listener: the Open Inference Protocol's
//! `inference.GRPCInferenceService` (tonic, HTTP/2 cleartext) — liveness, readiness, metadata,
//! `ModelInfer`, and MLServer's bidirectional `ModelStreamInfer`, which answers each request
//! as it arrives.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

use super::tensor::{self, Batch, DataType, INPUT, MODEL_NAME, OUTPUT, Shape};
use super::{MAX_BODY, ScoreServer};
use crate::grpc::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use crate::grpc::infer_parameter::ParameterChoice;
use crate::grpc::model_infer_request::InferInputTensor;
use crate::grpc::model_infer_response::InferOutputTensor;
use crate::grpc::model_metadata_response::TensorMetadata;
use crate::grpc::{
    InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse,
    ModelMetadataRequest, ModelMetadataResponse, ModelReadyRequest, ModelReadyResponse,
    ServerLiveRequest, ServerLiveResponse, ServerMetadataRequest, ServerMetadataResponse,
    ServerReadyRequest, ServerReadyResponse,
};

/// Serves gRPC on `listener` until the process ends.
pub(super) async fn serve(server: Arc<ScoreServer>, listener: TcpListener) {
    let service = GrpcInferenceServiceServer::new(V2(server))
        .max_decoding_message_size(MAX_BODY)
        .max_encoding_message_size(MAX_BODY);
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    if let Err(e) = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming(incoming)
        .await
    {
        tracing::error!(error = %e, "gRPC scoring server stopped");
    }
}

/// The service, over the server it shares with the REST listener.
struct V2(Arc<ScoreServer>);

/// Where the elements of one input are in a request.
enum Elements<'a> {
    Typed(Option<&'a InferTensorContents>),
    Raw(&'a [u8]),
}

/// The one input of a `ModelInferRequest` read into rows: typed `contents` in the field of its
/// data type, or little-endian `raw_input_contents`.
pub(super) fn parse_request(req: &ModelInferRequest) -> Result<Batch, String> {
    let i = tensor::the_input(req.inputs.iter().map(|t| t.name.as_str()))?;
    tensor::check_outputs(req.outputs.iter().map(|o| o.name.as_str()))?;
    let input = &req.inputs[i];
    let datatype = DataType::parse(&input.datatype)?;
    let shape = Shape::parse(&input.shape)?;
    let elements = if req.raw_input_contents.is_empty() {
        Elements::Typed(input.contents.as_ref())
    } else {
        if req.raw_input_contents.len() != req.inputs.len() {
            return Err(format!(
                "the request has {} raw_input_contents for {} inputs; there must be one per input",
                req.raw_input_contents.len(),
                req.inputs.len()
            ));
        }
        if input
            .contents
            .as_ref()
            .is_some_and(|c| !filled(c).is_empty())
        {
            return Err(format!(
                "input `{INPUT}` has both contents and raw_input_contents; send one"
            ));
        }
        Elements::Raw(&req.raw_input_contents[i])
    };
    let values = match elements {
        Elements::Raw(bytes) => {
            tensor::decode_raw(datatype, &shape, bytes, &format!("raw_input_contents[{i}]"))?
        }
        Elements::Typed(contents) => typed(input, datatype, contents)?,
    };
    Batch::new(&shape, values)
}

/// The names of the non-empty fields of `contents`.
fn filled(c: &InferTensorContents) -> Vec<&'static str> {
    [
        ("bool_contents", c.bool_contents.is_empty()),
        ("int_contents", c.int_contents.is_empty()),
        ("int64_contents", c.int64_contents.is_empty()),
        ("uint_contents", c.uint_contents.is_empty()),
        ("uint64_contents", c.uint64_contents.is_empty()),
        ("fp32_contents", c.fp32_contents.is_empty()),
        ("fp64_contents", c.fp64_contents.is_empty()),
        ("bytes_contents", c.bytes_contents.is_empty()),
    ]
    .into_iter()
    .filter(|(_, empty)| !empty)
    .map(|(name, _)| name)
    .collect()
}

/// The elements of `contents` in the field the protocol gives `datatype`: INT8–INT32 in
/// `int_contents`, INT64 in `int64_contents`, UINT8–UINT32 in `uint_contents`, UINT64 in
/// `uint64_contents`, FP32 and FP64 in theirs.
fn typed(
    input: &InferInputTensor,
    datatype: DataType,
    contents: Option<&InferTensorContents>,
) -> Result<Vec<f64>, String> {
    let empty = InferTensorContents::default();
    let c = contents.unwrap_or(&empty);
    let (field, values): (&str, Vec<f64>) = match datatype {
        DataType::Fp32 => (
            "fp32_contents",
            c.fp32_contents.iter().map(|&v| f64::from(v)).collect(),
        ),
        DataType::Fp64 => ("fp64_contents", c.fp64_contents.clone()),
        DataType::Int8 | DataType::Int16 | DataType::Int32 => (
            "int_contents",
            c.int_contents.iter().map(|&v| f64::from(v)).collect(),
        ),
        DataType::Int64 => (
            "int64_contents",
            c.int64_contents.iter().map(|&v| v as f64).collect(),
        ),
        DataType::Uint8 | DataType::Uint16 | DataType::Uint32 => (
            "uint_contents",
            c.uint_contents.iter().map(|&v| f64::from(v)).collect(),
        ),
        DataType::Uint64 => (
            "uint64_contents",
            c.uint64_contents.iter().map(|&v| v as f64).collect(),
        ),
    };
    let others: Vec<&str> = filled(c).into_iter().filter(|f| *f != field).collect();
    if !others.is_empty() {
        return Err(format!(
            "input `{}` is {} and takes its elements in contents.{field}, not in contents.{}",
            input.name,
            datatype.name(),
            others.join(", contents.")
        ));
    }
    Ok(values)
}

fn string_param(s: &str) -> InferParameter {
    InferParameter {
        parameter_choice: Some(ParameterChoice::StringParam(s.to_string())),
    }
}

/// One inference: the model, the injected delay and failure, the input, the answer.
async fn infer(server: &ScoreServer, req: ModelInferRequest) -> Result<ModelInferResponse, Status> {
    server
        .check_model(&req.model_name, &req.model_version)
        .map_err(|e| Status::not_found(e.0))?;
    if server.drill().await {
        return Err(Status::internal("injected failure"));
    }
    let batch = parse_request(&req).map_err(Status::invalid_argument)?;
    Ok(answer(server, req.id, &batch))
}

fn answer(server: &ScoreServer, id: String, batch: &Batch) -> ModelInferResponse {
    let rows = i64::try_from(batch.rows()).unwrap_or(i64::MAX);
    ModelInferResponse {
        model_name: MODEL_NAME.to_string(),
        model_version: server.model.name().to_string(),
        id,
        parameters: HashMap::from([("deployment".to_string(), string_param(&server.name))]),
        outputs: vec![InferOutputTensor {
            name: OUTPUT.to_string(),
            datatype: "FP64".to_string(),
            shape: vec![rows],
            parameters: HashMap::new(),
            contents: Some(InferTensorContents {
                fp64_contents: batch.predict(|r| server.score(r)),
                ..Default::default()
            }),
        }],
        raw_output_contents: Vec::new(),
    }
}

type InferStream = Pin<Box<dyn Stream<Item = Result<ModelInferResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcInferenceService for V2 {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse { ready: true }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let r = request.into_inner();
        self.0
            .check_model(&r.name, &r.version)
            .map_err(|e| Status::not_found(e.0))?;
        Ok(Response::new(ModelReadyResponse { ready: true }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "scoregate".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            extensions: Vec::new(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        self.0
            .check_model(&r.name, &r.version)
            .map_err(|e| Status::not_found(e.0))?;
        let tensor = |name: &str, shape: Vec<i64>| TensorMetadata {
            name: name.to_string(),
            datatype: "FP64".to_string(),
            shape,
        };
        Ok(Response::new(ModelMetadataResponse {
            name: MODEL_NAME.to_string(),
            versions: vec![self.0.model.name().to_string()],
            platform: "scoregate".to_string(),
            inputs: vec![tensor(INPUT, vec![-1, -1])],
            outputs: vec![tensor(OUTPUT, vec![-1])],
        }))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        infer(&self.0, request.into_inner())
            .await
            .map(Response::new)
    }

    type ModelStreamInferStream = InferStream;

    /// Each request is answered as it arrives, one answer per request, in order; the next
    /// request is read once its answer is taken. A failed request (unknown model, bad input,
    /// injected failure) ends the stream with its status, as the call's status.
    async fn model_stream_infer(
        &self,
        request: Request<Streaming<ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let server = self.0.clone();
        let answers = request.into_inner().then(move |req| {
            let server = server.clone();
            async move { infer(&server, req?).await }
        });
        Ok(Response::new(Box::pin(answers)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scoring::Model;

    fn request(datatype: &str, shape: &[i64], contents: InferTensorContents) -> ModelInferRequest {
        ModelInferRequest {
            model_name: MODEL_NAME.to_string(),
            inputs: vec![InferInputTensor {
                name: INPUT.to_string(),
                datatype: datatype.to_string(),
                shape: shape.to_vec(),
                contents: Some(contents),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn raw(datatype: &str, shape: &[i64], bytes: Vec<u8>) -> ModelInferRequest {
        let mut r = request(datatype, shape, InferTensorContents::default());
        r.inputs[0].contents = None;
        r.raw_input_contents = vec![bytes];
        r
    }

    fn v1(req: &ModelInferRequest) -> Vec<f64> {
        parse_request(req)
            .unwrap()
            .predict(|r| Model::V1.predict(r))
    }

    #[test]
    fn typed_contents_in_the_field_of_each_data_type() {
        let fp64 = InferTensorContents {
            fp64_contents: vec![1.0, 2.0, 3.0, 4.0],
            ..Default::default()
        };
        assert_eq!(v1(&request("FP64", &[2, 2], fp64)), vec![2.5, 4.5]);
        let fp32 = InferTensorContents {
            fp32_contents: vec![1.0, 2.0, 3.0],
            ..Default::default()
        };
        assert_eq!(v1(&request("FP32", &[3], fp32)), vec![4.0]);
        let int32 = InferTensorContents {
            int_contents: vec![2, 2],
            ..Default::default()
        };
        assert_eq!(v1(&request("INT32", &[1, 2], int32)), vec![3.0]);
        let int64 = InferTensorContents {
            int64_contents: vec![-2, 6],
            ..Default::default()
        };
        assert_eq!(v1(&request("INT64", &[2, 1], int64)), vec![0.0, 4.0]);
    }

    #[test]
    fn raw_contents_give_the_same_numbers() {
        let bytes = [1.0f64, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(v1(&raw("FP64", &[2, 2], bytes)), vec![2.5, 4.5]);
        let bytes = [1i64, 2, 3].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(v1(&raw("INT64", &[1, 3], bytes)), vec![4.0]);
        let bytes = [1.0f32, 2.0, 3.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(v1(&raw("FP32", &[3], bytes)), vec![4.0]);
    }

    #[test]
    fn bad_input_says_what_is_wrong() {
        let fp64 = |v: Vec<f64>| InferTensorContents {
            fp64_contents: v,
            ..Default::default()
        };
        let e = |r: &ModelInferRequest| parse_request(r).unwrap_err();
        assert_eq!(
            e(&request("FP64", &[2, 2], fp64(vec![1.0; 3]))),
            "input `input`: shape [2, 2] holds 4 elements but the data has 3"
        );
        assert_eq!(
            e(&request("FP64", &[1, 2, 2], fp64(vec![1.0; 4]))),
            "input `input`: shape [1, 2, 2] has 3 dimensions; expected [rows, features] or [features]"
        );
        let in_int64 = InferTensorContents {
            int64_contents: vec![1, 2],
            ..Default::default()
        };
        assert_eq!(
            e(&request("FP64", &[1, 2], in_int64)),
            "input `input` is FP64 and takes its elements in contents.fp64_contents, not in contents.int64_contents"
        );
        assert_eq!(
            e(&raw("FP64", &[1, 2], vec![0; 12])),
            "raw_input_contents[0] has 12 bytes; shape [1, 2] of FP64 takes 16 (2 elements of 8 bytes)"
        );
        let mut both = raw("FP64", &[1, 1], vec![0; 8]);
        both.inputs[0].contents = Some(fp64(vec![1.0]));
        assert_eq!(
            e(&both),
            "input `input` has both contents and raw_input_contents; send one"
        );
        let mut two = raw("FP64", &[1, 1], vec![0; 8]);
        two.raw_input_contents.push(vec![0; 8]);
        assert!(e(&two).contains("2 raw_input_contents for 1 inputs"));
        let mut named = request("FP64", &[1, 1], fp64(vec![1.0]));
        named.inputs[0].name = "x".into();
        assert_eq!(
            e(&named),
            "unknown input `x`; the model takes one input, `input`"
        );
        assert!(e(&request("BOOL", &[1, 1], InferTensorContents::default())).contains("BOOL"));
        // No contents at all: no elements.
        let mut none = request("FP64", &[1, 2], InferTensorContents::default());
        none.inputs[0].contents = None;
        assert!(e(&none).contains("holds 2 elements but the data has 0"));
    }

    #[test]
    fn the_answer_is_fp64_predictions_with_the_deployment() {
        let server = ScoreServer::new("green", Model::V2);
        let mut req = request(
            "FP64",
            &[1, 2],
            InferTensorContents {
                fp64_contents: vec![1.0, 1.0],
                ..Default::default()
            },
        );
        req.id = "7".into();
        let batch = parse_request(&req).unwrap();
        let a = answer(&server, req.id, &batch);
        assert_eq!(
            (a.model_name.as_str(), a.model_version.as_str()),
            ("scorer", "v2")
        );
        assert_eq!(a.id, "7");
        assert_eq!(a.parameters["deployment"], string_param("green"));
        let out = &a.outputs[0];
        assert_eq!(
            (out.name.as_str(), out.datatype.as_str()),
            ("predictions", "FP64")
        );
        assert_eq!(out.shape, vec![1]);
        let p = &out.contents.as_ref().unwrap().fp64_contents;
        assert!((p[0] - 1.9).abs() < 1e-9, "{p:?}");
    }
}
