//! Layer 0 (values): limits that more than one layer must agree on.

/// Largest request head (request line and headers); more than 100 headers also get 431
/// (hyper's own limit).
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Largest read buffer of a connection, either side (hyper's default is about 400 KiB): a
/// streamed body moves through it in slices this size, so 64 clients streaming large bodies
/// hold at most a few MiB. At least [`MAX_HEAD_BYTES`], which must fit in it.
pub(crate) const MAX_BUF_BYTES: usize = MAX_HEAD_BYTES + 1024;

/// Streams one client's HTTP/2 connection may have open at once.
pub(crate) const H2_MAX_STREAMS: u32 = 256;

/// Streams a client may open and reset before scoregate has answered them, at once; past it
/// the connection is closed (rapid reset, CVE-2023-44487).
pub(crate) const H2_MAX_PENDING_RESETS: usize = 50;

/// Streams scoregate may reset on one connection because of the client's protocol errors before
/// it closes the connection.
pub(crate) const H2_MAX_LOCAL_RESETS: usize = 256;

/// How long a gRPC call's answer may pause between messages before it is cut off (a REST
/// answer's limit is its request timeout). Envoy's default stream idle timeout.
pub(crate) const GRPC_STREAM_IDLE: std::time::Duration = std::time::Duration::from_secs(300);
