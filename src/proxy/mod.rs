//! Layer 4 (request path): the data plane. [`server`] accepts connections; [`handle`] takes
//! one request through the table to an instance; [`respond`] writes and counts the answer;
//! [`mirror`] copies a share of requests to a shadow deployment.

mod grpc;
mod handle;
mod mirror;
mod respond;
mod server;
mod trip;

pub(crate) use handle::Proxy;
pub(crate) use server::{ClientLimits, serve};
