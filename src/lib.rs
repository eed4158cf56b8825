//! scoregate: a traffic-splitting reverse proxy for model-scoring endpoints.
//!
//! One crate of layers. A module imports only from layers below it, or from its own layer
//! without closing a circle; `tests/layers.rs` reads `src/` and keeps it so, and the README's
//! Layout section shows the same table.
//!
//! <!-- layers -->
//! | layer | modules | what it holds |
//! | --- | --- | --- |
//! | 0 values | `error`, `limits`, `addr`, `metrics`, `body`, `grpc`, `shadow`, `io`, `telemetry` | errors answered, limits, the instance address, metric handles, the request body, the gRPC messages, how a mirrored answer is compared, one request's ids, record, access log line and span |
//! | 1 file | `tls`, `config` | certificate files checked into rustls configurations; the endpoint file: YAML with positions, independent checks, the `traffic:` rewriter |
//! | 2 instance | `instance`, `discovery` | one instance's state (health, pool, slot); host names and their addresses |
//! | 3 route | `routing`, `upstream` | the compiled table and the choice; the exchange and its one failure classification |
//! | 4 request | `proxy` | server, handle, respond (the one error map), mirror |
//! | 5 control | `control` | the one loader; file watcher, SIGHUP, periodic check, DNS and probes signal it |
//! | 6 tools | `admin`, `ops`, `rollout`, `loadgen`, `scoring` | admin listener, traffic/swap, rollout, load, built-in scoring server |
//! | 7 cli | `app`, `cli` | the commands, wired; argument parsing |
//! <!-- /layers -->
//!
//! The data path: `proxy::server` → `proxy::handle` (one `ArcSwap::load`) → `routing` (the
//! choice) → `upstream` (the exchange) → `proxy::respond` (one error map) → `metrics`.
#![forbid(unsafe_code)]

// Layer 0: values.
pub mod addr;
mod body;
mod error;
pub mod grpc;
mod io;
mod limits;
pub mod metrics;
pub mod shadow;
mod telemetry;
// Layer 1: the endpoint file.
pub mod config;
pub mod tls;
// Layer 2: one instance.
pub mod discovery;
mod instance;
// Layer 3: routing and the upstream exchange.
pub mod routing;
mod upstream;
// Layer 4: the request path.
mod proxy;
// Layer 5: control.
mod control;
// Layer 6: admin and the operator's tools.
mod admin;
mod loadgen;
mod ops;
mod rollout;
mod scoring;
// Layer 7: the command line.
mod app;
pub mod cli;
