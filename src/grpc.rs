//! Layer 0 (values): the Open Inference Protocol's gRPC messages and service
//! (`inference.GRPCInferenceService`), generated at build time from `proto/inference.proto`.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("inference");
