//! Layer 1 (the endpoint file): YAML text → validated [`EndpointConfig`], every error of the file
//! reported in one pass, each at its line and column. First step of the data path (file →
//! `config` → `routing::Table` → `proxy`).
//!
//! The YAML is read with saphyr-parser, a maintained YAML 1.2 event parser, rather than
//! serde_yaml, which is deprecated upstream and stopped at the first structural error. Its
//! events give the position of every node, so the file becomes a positioned tree first (`yaml`),
//! then a raw shape where every setting keeps its position and every unknown key, repeated key or
//! wrong type is collected instead of stopping the read (`raw`), then the rules are checked
//! (`check`). Only what leaves no tree stops the read: a YAML syntax error, an alias, a tag, a
//! second document, nesting deeper than 64 levels. All YAML parsing of the crate lives here.
//!
//! - `yaml`: the positioned tree (saphyr-parser's events; core-schema scalars).
//! - `raw`: the tree read into the file's shape; structural errors.
//! - `check`: `compile()` and its independent `check_*` rules; semantic errors, warnings.
//! - `rewrite`: `scoregate traffic`'s in-place edit of the `traffic:` map.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use http::{HeaderName, HeaderValue};

use crate::addr::InstanceAddr;
use crate::tls::{Pair, Roots};

mod check;
mod raw;
mod rewrite;
mod yaml;

pub use rewrite::{RewriteError, rewrite_mirror, rewrite_traffic};

/// Default data-plane address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default admin address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// Default pin header.
pub const DEFAULT_PIN_HEADER: &str = "x-api-version";
/// Default request timeout (ms).
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 5000;
/// Default wait for a free instance (ms).
pub const DEFAULT_MAX_QUEUE_WAIT_MS: u64 = 500;
/// Default time a client has to send its request headers (ms).
pub const DEFAULT_CLIENT_HEADER_TIMEOUT_MS: u64 = 60_000;
/// Default interval between DNS lookups of instances written as host names (ms).
pub const DEFAULT_DNS_REFRESH_MS: u64 = 5_000;
/// Default request body limit: 16 MiB (exactly 16 MiB is allowed).
pub const DEFAULT_MAX_REQUEST_BODY_BYTES: u64 = 16 * 1024 * 1024;

/// Keys of Azure ML endpoint and deployment files that mean nothing to scoregate: accepted,
/// ignored, one warning per key name.
pub(crate) const AZURE_IGNORED_KEYS: &[&str] = &[
    "$schema",
    "type",
    "description",
    "tags",
    "model",
    "code_reference",
    "code_configuration",
    "environment",
    "environment_variables",
    "sku",
    "instance_type",
    "scale",
    "scale_settings",
    "liveness_probe",
    "readiness_probe",
    "app_insights_enabled",
];

/// One finding in a file: an error or a warning, with its 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Why a file was refused: every error found, each with its location.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub path: PathBuf,
    pub errors: Vec<Diagnostic>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "{}:{}:{}: {}",
                self.path.display(),
                e.line,
                e.column,
                e.message
            )?;
        }
        Ok(())
    }
}

/// Per-deployment request settings (`request:` or its synonym `request_settings:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSettings {
    /// Time the instance has to answer with its headers. Default 5000 ms.
    pub request_timeout: Duration,
    /// Requests one instance may hold at once; 0 (the default) means unlimited.
    pub max_concurrent_per_instance: u32,
    /// How long a request may wait for a free instance before 429. Default 500 ms.
    pub max_queue_wait: Duration,
}

impl Default for RequestSettings {
    fn default() -> Self {
        RequestSettings {
            request_timeout: Duration::from_millis(DEFAULT_REQUEST_TIMEOUT_MS),
            max_concurrent_per_instance: 0,
            max_queue_wait: Duration::from_millis(DEFAULT_MAX_QUEUE_WAIT_MS),
        }
    }
}

/// One deployment as validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentConfig {
    pub name: String,
    /// Live weight 0–100 (0 when the deployment is not named in `traffic`).
    pub weight: u8,
    /// REST instances as written in the file (`host:port`, `[v6]:port`), checked; forwarded
    /// over HTTP/1.1. Empty when the deployment serves gRPC only.
    pub instances: Vec<InstanceAddr>,
    /// gRPC instances (`grpc_instances`), forwarded over HTTP/2 (cleartext unless `tls`).
    /// Default none.
    pub grpc_instances: Vec<InstanceAddr>,
    pub request: RequestSettings,
    /// TLS to the instances (`tls:`). Default none: plain TCP.
    pub tls: Option<UpstreamTls>,
    /// Headers set on every request forwarded to the deployment (`headers:`), replacing the
    /// client's. Default none.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `Authorization: Bearer <content>` from `bearer_key_file`, set on every request forwarded
    /// to the deployment. Default none.
    pub bearer: Option<Bearer>,
}

/// A listener's TLS (`tls:` or `admin_tls:`): its certificate pair and, for mTLS, the CAs
/// client certificates must chain to; the rustls configuration built from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    pub pair: Pair,
    pub client_ca: Option<Roots>,
    pub server: ServerTls,
}

/// A configuration built from files (a rustls server or client configuration). Equal to any
/// other: it follows from its files, which its owner compares (by their digests).
#[derive(Clone)]
pub struct Built<T>(pub Arc<T>);

impl<T> fmt::Debug for Built<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Built")
    }
}
impl<T> PartialEq for Built<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<T> Eq for Built<T> {}

/// The rustls server configuration of a listener.
pub type ServerTls = Built<rustls::ServerConfig>;
/// A rustls client configuration of a deployment's instances.
pub type ClientTls = Built<rustls::ClientConfig>;

/// TLS to a deployment's instances: trust roots (default the system's), the name to verify
/// (default the instance's host), an optional client certificate; the rustls configurations
/// for HTTP/1.1 (`instances`) and HTTP/2 (`grpc_instances`) built from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    pub ca: Option<Roots>,
    pub server_name: Option<String>,
    pub client: Option<Pair>,
    pub h1: ClientTls,
    pub h2: ClientTls,
}

/// The bearer key of `bearer_key_file`, as the `Authorization` value sent (marked sensitive:
/// never logged, never shown).
#[derive(Clone, PartialEq, Eq)]
pub struct Bearer {
    pub file: PathBuf,
    pub value: HeaderValue,
    pub digest: [u8; 32],
}

impl fmt::Debug for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("Bearer").field("file", &self.file).finish()
    }
}

/// Who may use the data plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// Anyone (the default).
    None,
    /// `Authorization: Bearer KEY` with a key from `keys_file`.
    Key(Keys),
}

/// The keys of `auth_mode: key`, kept only as SHA-256 digests.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    /// The keys file, resolved against the endpoint file's directory.
    pub file: PathBuf,
    pub digests: Vec<[u8; 32]>,
    /// Digest of the whole keys file, to notice when it changes.
    pub file_sha256: [u8; 32],
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the keys, not even their digests.
        f.debug_struct("Keys")
            .field("file", &self.file)
            .field("count", &self.digests.len())
            .finish()
    }
}

/// `mirror_traffic`: copies of this share of unpinned requests go to `deployment`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorConfig {
    pub deployment: String,
    /// 1–100.
    pub percent: u8,
}

/// Default bound of a mirrored request's body (without `mirror_compare.max_body_bytes`):
/// 16 MiB, the default request body limit, so large tensors are mirrored too.
pub const DEFAULT_MIRROR_MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;

pub use crate::tls::sha256;

/// The keys of a keys file: one per line, surrounding blanks trimmed, empty lines and lines
/// starting with `#` skipped; returned as SHA-256 digests.
pub fn parse_keys(text: &str) -> Vec<[u8; 32]> {
    text.trim_start_matches('\u{feff}')
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|k| sha256(k.as_bytes()))
        .collect()
}

/// A fully validated endpoint file.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointConfig {
    pub name: Option<String>,
    /// Data plane address. Default 127.0.0.1:8080.
    pub listen: SocketAddr,
    /// Admin address. Default 127.0.0.1:9090.
    pub admin_listen: SocketAddr,
    /// Header whose value pins a deployment. Default `x-api-version`.
    pub pin_header: HeaderName,
    /// Header whose value chooses the deployment by a stable hash. Default none.
    pub sticky_header: Option<HeaderName>,
    /// Deployments in the order of the `traffic:` map first, then the others in file order.
    pub deployments: Vec<DeploymentConfig>,
    /// Mirrors of unpinned requests (up to 3), each with its own share. Default none.
    pub mirrors: Vec<MirrorConfig>,
    /// How mirrored answers are compared with the live ones (`mirror_compare`). Default none:
    /// copies' answers are read and discarded.
    pub mirror_compare: Option<crate::shadow::CompareSettings>,
    /// Largest request body copied to a mirror (`mirror_compare.max_body_bytes`, else 16 MiB).
    pub mirror_max_body_bytes: u64,
    /// Default none.
    pub auth: Auth,
    /// Largest request body accepted. Default 16 MiB.
    pub max_request_body_bytes: u64,
    /// Time a client has to send its request headers, and longest idle keep-alive wait.
    /// Default 60 s (nginx's client_header_timeout). Read at start.
    pub client_header_timeout: Duration,
    /// How often instances written as host names are resolved again. Default 5 s.
    pub dns_refresh: Duration,
    /// The data-plane listener's TLS. Default none: cleartext HTTP/1.1 and h2c.
    pub tls: Option<ListenerTls>,
    /// The admin listener's TLS. Default none.
    pub admin_tls: Option<ListenerTls>,
    /// The access log (`access_log:`). Default none: no log.
    pub access_log: Option<AccessLogConfig>,
    /// Where spans are exported, OTLP over gRPC, like `http://127.0.0.1:4317`
    /// (`otlp_endpoint:`). Default none: trace context is still propagated, nothing exported.
    pub otlp_endpoint: Option<String>,
}

/// How access log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One JSON object per line (default).
    #[default]
    Json,
    /// One line of space-separated fields, `-` for absent ones.
    Text,
}

/// `access_log:`: one line per request.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogConfig {
    /// The file (relative paths are relative to the endpoint file), or `-` for standard output.
    pub path: PathBuf,
    /// Default JSON.
    pub format: LogFormat,
    /// Share of requests logged, 0 to 1. Default 1. Errors are always logged.
    pub sample: f64,
    /// Whether the query string is logged with the path. Default false.
    pub log_query: bool,
}

impl EndpointConfig {
    /// Sum of live weights: 100, or 0 when no deployment takes unpinned traffic.
    pub fn total_weight(&self) -> u32 {
        self.deployments.iter().map(|d| u32::from(d.weight)).sum()
    }

    /// The SHA-256 of every certificate, key, CA and bearer key file the configuration read
    /// (so that a change to one of them alone is seen as a change).
    pub fn file_digests(&self) -> Vec<[u8; 32]> {
        let mut out = Vec::new();
        for t in [&self.tls, &self.admin_tls].into_iter().flatten() {
            out.push(t.pair.digest);
            out.extend(t.client_ca.as_ref().map(|r| r.digest));
        }
        for d in &self.deployments {
            if let Some(t) = &d.tls {
                out.extend(t.ca.as_ref().map(|r| r.digest));
                out.extend(t.client.as_ref().map(|p| p.digest));
            }
            out.extend(d.bearer.as_ref().map(|b| b.digest));
        }
        out
    }

    /// Every file the configuration read besides itself: keys, certificates, keys of
    /// certificates, CAs, bearer keys (for watching their directories).
    pub fn files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        if let Auth::Key(k) = &self.auth {
            out.push(k.file.clone());
        }
        for t in [&self.tls, &self.admin_tls].into_iter().flatten() {
            out.extend([t.pair.cert_file.clone(), t.pair.key_file.clone()]);
            out.extend(t.client_ca.as_ref().map(|r| r.file.clone()));
        }
        for d in &self.deployments {
            if let Some(t) = &d.tls {
                out.extend(t.ca.as_ref().map(|r| r.file.clone()));
                if let Some(p) = &t.client {
                    out.extend([p.cert_file.clone(), p.key_file.clone()]);
                }
            }
            out.extend(d.bearer.as_ref().map(|b| b.file.clone()));
        }
        out
    }

    /// The live weights in table order, like `blue=90 green=10`.
    pub fn traffic_summary(&self) -> String {
        let weights: Vec<String> = self
            .deployments
            .iter()
            .map(|d| format!("{}={}", d.name, d.weight))
            .collect();
        weights.join(" ")
    }
}

/// A valid file and the warnings found in it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: EndpointConfig,
    pub warnings: Vec<Diagnostic>,
    /// The exact bytes that were parsed (for `/config`'s hash).
    pub source: String,
    /// What identifies this configuration: the file and, with `auth_mode: key`, the keys file.
    pub fingerprint: String,
}

/// Reads and validates `path`.
pub fn load_file(path: &Path) -> Result<Loaded, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(src) => parse_str(&src, path),
        Err(e) => Err(ConfigError {
            path: path.to_path_buf(),
            errors: vec![Diagnostic {
                line: 1,
                column: 1,
                message: format!("cannot read the file: {e}"),
            }],
        }),
    }
}

/// Validates `src`, reporting locations against `path`.
/// Validates `src`, reporting locations against `path`.
pub fn parse_str(src: &str, path: &Path) -> Result<Loaded, ConfigError> {
    let fail = |errors| ConfigError {
        path: path.to_path_buf(),
        errors,
    };
    // A byte-order mark is not content (editors on Windows write one).
    let src = src.strip_prefix('\u{feff}').unwrap_or(src);
    if src.trim().is_empty() {
        return Err(fail(vec![Diagnostic {
            line: 1,
            column: 1,
            message: "the file is empty".into(),
        }]));
    }
    let tree = yaml::parse(src).map_err(fail)?;
    let (raw, mut errors) = raw::read(tree.as_ref());
    let (config, mut found) = match &raw {
        Some(raw) => check::compile(raw, path),
        None => (None, check::Findings::default()),
    };
    // Structural errors first, so that they come first among those at one position.
    errors.append(&mut found.errors);
    if let Some(config) = config
        && errors.is_empty()
    {
        let mut warnings = found.warnings;
        warnings.sort_by_key(|d| (d.line, d.column));
        let mut fingerprint = src.to_string();
        if let Auth::Key(k) = &config.auth {
            fingerprint.push_str("\n#keys ");
            fingerprint.extend(k.file_sha256.iter().map(|b| format!("{b:02x}")));
        }
        for digest in config.file_digests() {
            fingerprint.push_str("\n#file ");
            fingerprint.extend(digest.iter().map(|b| format!("{b:02x}")));
        }
        return Ok(Loaded {
            config,
            warnings,
            source: src.to_string(),
            fingerprint,
        });
    }
    if errors.is_empty() {
        // Not reached: a value left unread always comes with its error.
        errors.push(Diagnostic {
            line: 1,
            column: 1,
            message: "the file could not be read".into(),
        });
    }
    errors.sort_by_key(|d| (d.line, d.column));
    Err(fail(errors))
}

#[cfg(test)]
mod tests;
