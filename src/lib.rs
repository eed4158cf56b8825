//! scoregate: a traffic-splitting reverse proxy for model-scoring endpoints.
//!
//! Data path: endpoint file → [`config`] (validate) → [`routing`] (compiled table, one
//! `ArcSwap::load` per request) → [`proxy`] (per request) → [`upstream`] (pooled client).
//! [`reload`] is the table's only writer; [`metrics`] and [`admin`] sit beside the data path.
//! Errors the proxy answers itself are in [`error`]; commands in [`app`]; the built-in scoring
//! server in [`scoring`].
#![forbid(unsafe_code)]

pub mod addr;
pub mod admin;
pub mod app;
pub mod config;
pub mod discovery;
pub mod error;
pub mod health;
pub mod loadgen;
pub mod metrics;
pub mod mirror;
pub mod ops;
pub mod proxy;
pub mod reload;
pub mod rollout;
pub mod routing;
pub mod scoring;
pub mod upstream;
