//! The endpoint file: YAML text → validated [`EndpointConfig`]. First step of the data path
//! (file → `config` → `routing::Table` → `proxy`). All YAML parsing lives in this module, so the
//! YAML crate can be swapped by changing the `yaml` alias below.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;

use crate::addr::InstanceAddr;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_yaml as yaml;

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
pub const AZURE_IGNORED_KEYS: &[&str] = &[
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

const TOP_KEYS: &[&str] = &[
    "name",
    "listen",
    "admin_listen",
    "pin_header",
    "sticky_header",
    "traffic",
    "mirror_traffic",
    "auth_mode",
    "keys_file",
    "max_request_body_bytes",
    "client_header_timeout_ms",
    "dns_refresh_ms",
    "deployments",
];
const DEPLOYMENT_KEYS: &[&str] = &["instances", "request", "request_settings"];
const REQUEST_KEYS: &[&str] = &[
    "request_timeout_ms",
    "max_concurrent_requests_per_instance",
    "max_queue_wait_ms",
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
    /// Instances exactly as written in the file (`host:port`, `[v6]:port`).
    pub instances: Vec<InstanceAddr>,
    pub request: RequestSettings,
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
    /// 1–50.
    pub percent: u8,
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Mirror of unpinned requests. Default none.
    pub mirror: Option<MirrorConfig>,
    /// Default none.
    pub auth: Auth,
    /// Largest request body accepted. Default 16 MiB.
    pub max_request_body_bytes: u64,
    /// Time a client has to send its request headers, and longest idle keep-alive wait.
    /// Default 60 s (nginx's client_header_timeout). Read at start.
    pub client_header_timeout: Duration,
    /// How often instances written as host names are resolved again. Default 5 s.
    pub dns_refresh: Duration,
}

impl EndpointConfig {
    /// Sum of live weights: 100, or 0 when no deployment takes unpinned traffic.
    pub fn total_weight(&self) -> u32 {
        self.deployments.iter().map(|d| u32::from(d.weight)).sum()
    }

    /// `blue=90 green=10`: the weights in table order, for logs.
    pub fn traffic_summary(&self) -> String {
        self.deployments
            .iter()
            .map(|d| format!("{}={}", d.name, d.weight))
            .collect::<Vec<_>>()
            .join(" ")
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
    let raw = match RawFile::deserialize(yaml::Deserializer::from_str(src)) {
        Ok(raw) => raw,
        Err(e) => return Err(fail(vec![yaml_diagnostic(&e)])),
    };
    let mut v = Validator {
        src,
        path,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let config = v.validate(raw);
    if v.errors.is_empty()
        && let Some(config) = config
    {
        v.warnings.sort_by_key(|d| (d.line, d.column));
        let mut fingerprint = src.to_string();
        if let Auth::Key(k) = &config.auth {
            fingerprint.push_str("\n#keys ");
            fingerprint.extend(k.file_sha256.iter().map(|b| format!("{b:02x}")));
        }
        return Ok(Loaded {
            config,
            warnings: v.warnings,
            source: src.to_string(),
            fingerprint,
        });
    }
    v.errors.sort_by_key(|d| (d.line, d.column));
    Err(fail(v.errors))
}

fn yaml_diagnostic(e: &yaml::Error) -> Diagnostic {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((1, 1));
    // serde_yaml writes " at line L column C" into the message; the location is printed in
    // front instead. A second location (libyaml's context, "while parsing ... at line 1 column
    // 4") stays.
    let message = e
        .to_string()
        .replacen(&format!(" at line {line} column {column}"), "", 1);
    Diagnostic {
        line,
        column,
        message,
    }
}

// ---------------------------------------------------------------------------------------------
// Raw file shape. Hand-written map visitors so that unknown and duplicate keys are reported at
// the key itself (serde_yaml attaches the position of the innermost value being read).

#[derive(Debug, Default)]
struct RawFile {
    name: Option<String>,
    listen: Option<String>,
    admin_listen: Option<String>,
    pin_header: Option<String>,
    sticky_header: Option<String>,
    traffic: Option<Vec<(String, i64)>>,
    mirror_traffic: Option<Vec<(String, i64)>>,
    auth_mode: Option<String>,
    keys_file: Option<String>,
    max_request_body_bytes: Option<u64>,
    client_header_timeout_ms: Option<u64>,
    dns_refresh_ms: Option<u64>,
    deployments: Option<Vec<(String, RawDeployment)>>,
    ignored: Vec<&'static str>,
}

#[derive(Debug, Default)]
struct RawDeployment {
    instances: Option<Vec<String>>,
    request: Option<RawRequest>,
    request_key: &'static str,
    ignored: Vec<&'static str>,
}

#[derive(Debug, Default, Clone)]
struct RawRequest {
    request_timeout_ms: Option<u64>,
    max_concurrent_requests_per_instance: Option<u32>,
    max_queue_wait_ms: Option<u64>,
}

/// Reads one map key, refusing unknown and repeated keys with the key's own position.
struct KeySeed<'a> {
    known: &'static [&'static str],
    azure: bool,
    seen: &'a mut BTreeSet<String>,
    what: &'static str,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        scalar_with(d, |key| {
            let key = key.to_string();
            let allowed = self.known.contains(&key.as_str())
                || (self.azure && AZURE_IGNORED_KEYS.contains(&key.as_str()));
            if !allowed {
                let mut msg = format!("unknown key `{key}` in {}", self.what);
                if let Some(s) = suggest(&key, self.known) {
                    msg.push_str(&format!(" (did you mean `{s}`?)"));
                } else {
                    msg.push_str(&format!("; expected one of: {}", self.known.join(", ")));
                }
                return Err(msg);
            }
            let synonym = match key.as_str() {
                "request" => Some("request_settings"),
                "request_settings" => Some("request"),
                _ => None,
            };
            if synonym.is_some_and(|s| self.seen.contains(s)) {
                return Err(
                    "`request` and `request_settings` are the same setting: keep one".into(),
                );
            }
            if !self.seen.insert(key.clone()) {
                return Err(format!("duplicate key `{key}` in {}", self.what));
            }
            Ok(key)
        })
    }
}

fn suggest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn azure_name(key: &str) -> Option<&'static str> {
    AZURE_IGNORED_KEYS.iter().copied().find(|k| *k == key)
}

impl<'de> Deserialize<'de> for RawFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawFile;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an endpoint file: a mapping with `traffic:` and `deployments:`")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawFile, A::Error> {
                let mut raw = RawFile::default();
                let mut seen = BTreeSet::new();
                while let Some(key) = map.next_key_seed(KeySeed {
                    known: TOP_KEYS,
                    azure: true,
                    seen: &mut seen,
                    what: "the endpoint file",
                })? {
                    match key.as_str() {
                        "name" => raw.name = Some(map.next_value::<Scalar>()?.0),
                        "listen" => raw.listen = Some(map.next_value::<Scalar>()?.0),
                        "admin_listen" => raw.admin_listen = Some(map.next_value::<Scalar>()?.0),
                        "pin_header" => raw.pin_header = Some(map.next_value()?),
                        "sticky_header" => raw.sticky_header = Some(map.next_value()?),
                        "traffic" => raw.traffic = Some(map.next_value_seed(TRAFFIC)?),
                        "mirror_traffic" => raw.mirror_traffic = Some(map.next_value_seed(MIRROR)?),
                        "auth_mode" => raw.auth_mode = Some(map.next_value()?),
                        "keys_file" => raw.keys_file = Some(map.next_value()?),
                        "max_request_body_bytes" => {
                            raw.max_request_body_bytes = Some(map.next_value()?)
                        }
                        "dns_refresh_ms" => raw.dns_refresh_ms = Some(map.next_value()?),
                        "client_header_timeout_ms" => {
                            raw.client_header_timeout_ms = Some(map.next_value()?)
                        }
                        "deployments" => raw.deployments = Some(map.next_value::<Deployments>()?.0),
                        other => {
                            map.next_value::<IgnoredAny>()?;
                            raw.ignored.extend(azure_name(other));
                        }
                    }
                }
                Ok(raw)
            }
        }
        d.deserialize_map(V)
    }
}

/// A scalar read as text whatever its YAML type (so `listen: 8080` reports a clear error later).
struct Scalar(String);
impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        scalar_with(d, |s| Ok(Scalar(s.to_string())))
    }
}

/// Reads a scalar as text and applies `check` while the deserializer is still on it, so that a
/// refusal carries the scalar's own position.
fn scalar_with<'de, D, T, F>(d: D, check: F) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    F: FnOnce(&str) -> Result<T, String>,
{
    struct V<F>(F);
    impl<T, F: FnOnce(&str) -> Result<T, String>> Visitor<'_> for V<F> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a plain value (text or number)")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.0)(v).map_err(E::custom)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
            (self.0)(&v.to_string()).map_err(E::custom)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
            (self.0)(&v.to_string()).map_err(E::custom)
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
            (self.0)(&v.to_string()).map_err(E::custom)
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
            (self.0)(&v.to_string()).map_err(E::custom)
        }
    }
    d.deserialize_any(V(check))
}

/// `traffic:`: an ordered map of deployment name → integer weight.
/// How a map of deployment name → integer percentage is read (`traffic`, `mirror_traffic`).
#[derive(Clone, Copy)]
struct PercentMap {
    key: &'static str,
    unit: &'static str,
    units: &'static str,
    example: u8,
    max: u8,
}

const TRAFFIC: PercentMap = PercentMap {
    key: "traffic",
    unit: "weight",
    units: "weights",
    example: 90,
    max: 100,
};
const MIRROR: PercentMap = PercentMap {
    key: "mirror_traffic",
    unit: "mirror percentage",
    units: "mirror percentages",
    example: 10,
    max: 50,
};

impl<'de> DeserializeSeed<'de> for PercentMap {
    type Value = Vec<(String, i64)>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PercentMap {
    type Value = Vec<(String, i64)>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "a map of deployment name to {}, like `blue: {}`",
            self.unit, self.example
        )
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        while let Some(name) = map.next_key_seed(NameSeed {
            seen: &mut seen,
            what: self.key,
        })? {
            let w = map.next_value_seed(Percent(self))?;
            out.push((name, w));
        }
        Ok(out)
    }
}

/// A map key naming a deployment; repeated names are refused at the key.
struct NameSeed<'a> {
    seen: &'a mut BTreeSet<String>,
    what: &'static str,
}
impl<'de> DeserializeSeed<'de> for NameSeed<'_> {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        scalar_with(d, |name| {
            if !self.seen.insert(name.to_string()) {
                return Err(format!(
                    "deployment `{name}` appears twice in `{}`",
                    self.what
                ));
            }
            Ok(name.to_string())
        })
    }
}

/// One percentage: a YAML integer (its range is checked by the validator, so that every error
/// is reported).
struct Percent(PercentMap);

impl<'de> DeserializeSeed<'de> for Percent {
    type Value = i64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<i64, D::Error> {
        d.deserialize_any(self)
    }
}

impl Visitor<'_> for Percent {
    type Value = i64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an integer {} from 0 to {}", self.0.unit, self.0.max)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| {
            E::custom(format!(
                "{} {v} is out of range: {} are 0 to {}",
                self.0.unit, self.0.units, self.0.max
            ))
        })
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
        let PercentMap {
            unit, units, max, ..
        } = self.0;
        Err(E::custom(format!(
            "{unit} {v} is not an integer: {units} are whole percentages from 0 to {max}"
        )))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
        let PercentMap {
            unit,
            units,
            example,
            ..
        } = self.0;
        Err(E::custom(format!(
            "{unit} \"{v}\" is a string: write {units} as plain integers ({example}, not \"{example}\")"
        )))
    }
    fn visit_unit<E: de::Error>(self) -> Result<i64, E> {
        Err(E::custom(format!(
            "{} is missing: write an integer from 0 to {}",
            self.0.unit, self.0.max
        )))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<i64, E> {
        Err(E::custom(format!(
            "{} `{v}` is not an integer from 0 to {}",
            self.0.unit, self.0.max
        )))
    }
}

struct Deployments(Vec<(String, RawDeployment)>);
impl<'de> Deserialize<'de> for Deployments {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Deployments;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of deployment name to its settings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Deployments, A::Error> {
                let mut out = Vec::new();
                let mut seen = BTreeSet::new();
                while let Some(name) = map.next_key_seed(NameSeed {
                    seen: &mut seen,
                    what: "deployments",
                })? {
                    out.push((name, map.next_value::<RawDeployment>()?));
                }
                Ok(Deployments(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for RawDeployment {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawDeployment;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a deployment: a mapping with `instances:`")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawDeployment, A::Error> {
                let mut raw = RawDeployment::default();
                let mut seen = BTreeSet::new();
                while let Some(key) = map.next_key_seed(KeySeed {
                    known: DEPLOYMENT_KEYS,
                    azure: true,
                    seen: &mut seen,
                    what: "a deployment",
                })? {
                    match key.as_str() {
                        "instances" => raw.instances = Some(map.next_value::<Instances>()?.0),
                        "request" | "request_settings" => {
                            raw.request_key = if key == "request" {
                                "request"
                            } else {
                                "request_settings"
                            };
                            raw.request = Some(map.next_value()?);
                        }
                        other => {
                            map.next_value::<IgnoredAny>()?;
                            raw.ignored.extend(azure_name(other));
                        }
                    }
                }
                Ok(raw)
            }
        }
        d.deserialize_map(V)
    }
}

struct Instances(Vec<String>);
impl<'de> Deserialize<'de> for Instances {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Instances;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of instances, like [127.0.0.1:9001, 127.0.0.1:9002]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Instances, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<Scalar>()? {
                    out.push(s.0);
                }
                Ok(Instances(out))
            }
        }
        d.deserialize_seq(V)
    }
}

impl<'de> Deserialize<'de> for RawRequest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawRequest;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("request settings: a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawRequest, A::Error> {
                let mut raw = RawRequest::default();
                let mut seen = BTreeSet::new();
                while let Some(key) = map.next_key_seed(KeySeed {
                    known: REQUEST_KEYS,
                    azure: false,
                    seen: &mut seen,
                    what: "request settings",
                })? {
                    match key.as_str() {
                        "request_timeout_ms" => raw.request_timeout_ms = Some(map.next_value()?),
                        "max_concurrent_requests_per_instance" => {
                            raw.max_concurrent_requests_per_instance = Some(map.next_value()?)
                        }
                        _ => raw.max_queue_wait_ms = Some(map.next_value()?),
                    }
                }
                Ok(raw)
            }
        }
        d.deserialize_map(V)
    }
}

// ---------------------------------------------------------------------------------------------
// Semantic validation: every rule is checked and every violation reported with its location.

struct Validator<'s> {
    src: &'s str,
    /// The endpoint file, for resolving `keys_file`.
    path: &'s Path,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl Validator<'_> {
    fn at(&self, path: &[Seg<'_>]) -> (usize, usize) {
        // Fall back to the nearest enclosing node that can be found.
        (0..=path.len())
            .rev()
            .find_map(|n| locate(self.src, &path[..n]))
            .unwrap_or((1, 1))
    }
    fn error(&mut self, path: &[Seg<'_>], message: impl Into<String>) {
        let (line, column) = self.at(path);
        self.errors.push(Diagnostic {
            line,
            column,
            message: message.into(),
        });
    }
    fn warn(&mut self, path: &[Seg<'_>], message: impl Into<String>) {
        let (line, column) = self.at(path);
        self.warnings.push(Diagnostic {
            line,
            column,
            message: message.into(),
        });
    }

    fn validate(&mut self, raw: RawFile) -> Option<EndpointConfig> {
        use Seg::{Index as I, Key as K};

        let listen = self.socket_addr("listen", raw.listen.as_deref(), DEFAULT_LISTEN);
        let admin_listen = self.socket_addr(
            "admin_listen",
            raw.admin_listen.as_deref(),
            DEFAULT_ADMIN_LISTEN,
        );
        // The same port on the same IP, or on any IP when one of them is the unspecified address,
        // cannot be bound twice.
        if let (Some(a), Some(b)) = (listen, admin_listen)
            && a.port() == b.port()
            && a.port() != 0
            && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
        {
            self.error(
                &[K("admin_listen")],
                format!("admin_listen {b} and listen {a} cannot both be bound: use another port"),
            );
        }

        let pin_header = match raw.pin_header.as_deref() {
            None => Some(HeaderName::from_static(DEFAULT_PIN_HEADER)),
            Some(h) => match HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) if !h.is_empty() => Some(n),
                _ => {
                    self.error(
                        &[K("pin_header")],
                        format!("pin_header `{h}` is not a valid HTTP header name"),
                    );
                    None
                }
            },
        };

        let sticky_header = match raw.sticky_header.as_deref() {
            None => None,
            Some(h) => match HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) if Some(&n) == pin_header.as_ref() => {
                    self.error(
                        &[K("sticky_header")],
                        format!("sticky_header `{h}` is the pin header: use another header"),
                    );
                    None
                }
                Ok(n) => Some(n),
                Err(_) => {
                    self.error(
                        &[K("sticky_header")],
                        format!("sticky_header `{h}` is not a valid HTTP header name"),
                    );
                    None
                }
            },
        };
        let auth = match raw.auth_mode.as_deref() {
            None | Some("none") => {
                if raw.keys_file.is_some() {
                    self.error(
                        &[K("keys_file")],
                        "`keys_file` is only used with `auth_mode: key`",
                    );
                }
                Auth::None
            }
            Some("aml_token") => {
                self.warn(
                    &[K("auth_mode")],
                    "WARNING: auth_mode `aml_token` is NOT enforced by scoregate: this endpoint is \
                     OPEN to anyone who can reach it (use `auth_mode: key` with a `keys_file`, or \
                     `none` to silence this warning)",
                );
                if raw.keys_file.is_some() {
                    self.error(
                        &[K("keys_file")],
                        "`keys_file` is only used with `auth_mode: key`",
                    );
                }
                Auth::None
            }
            Some("key") => self.keys(raw.keys_file.as_deref()),
            Some(other) => {
                self.error(
                    &[K("auth_mode")],
                    format!("auth_mode `{other}` is not known: use `none` or `key`"),
                );
                Auth::None
            }
        };
        let max_request_body_bytes = match raw.max_request_body_bytes {
            Some(0) => {
                self.error(
                    &[K("max_request_body_bytes")],
                    "max_request_body_bytes must be at least 1",
                );
                0
            }
            Some(n) => n,
            None => DEFAULT_MAX_REQUEST_BODY_BYTES,
        };

        let client_header_timeout = match raw.client_header_timeout_ms {
            Some(0) => {
                self.error(
                    &[K("client_header_timeout_ms")],
                    "client_header_timeout_ms must be at least 1",
                );
                Duration::ZERO
            }
            Some(ms) => Duration::from_millis(ms),
            None => Duration::from_millis(DEFAULT_CLIENT_HEADER_TIMEOUT_MS),
        };

        let dns_refresh = match raw.dns_refresh_ms {
            Some(ms) if ms < 100 => {
                self.error(
                    &[K("dns_refresh_ms")],
                    "dns_refresh_ms must be at least 100",
                );
                Duration::ZERO
            }
            Some(ms) => Duration::from_millis(ms),
            None => Duration::from_millis(DEFAULT_DNS_REFRESH_MS),
        };

        // Deployments.
        let mut deployments = Vec::new();
        match &raw.deployments {
            None => self.error(
                &[],
                "`deployments` is missing: name at least one deployment with its `instances`",
            ),
            Some(list) if list.is_empty() => self.error(
                &[K("deployments")],
                "`deployments` is empty: name at least one deployment with its `instances`",
            ),
            Some(_) => {}
        }
        let mut ignored: Vec<(&'static str, Vec<Seg<'_>>)> = Vec::new();
        for key in &raw.ignored {
            ignored.push((key, vec![K(key)]));
        }
        for (name, d) in raw.deployments.iter().flatten() {
            let here = [K("deployments"), K(name)];
            self.check_name(&here, name);
            for key in &d.ignored {
                ignored.push((key, vec![K("deployments"), K(name), K(key)]));
            }
            let mut instances = Vec::new();
            match &d.instances {
                None => self.error(
                    &here,
                    format!(
                        "deployment `{name}` has no `instances`: list its scoring servers as host:port"
                    ),
                ),
                Some(list) if list.is_empty() => self.error(
                    &[K("deployments"), K(name), K("instances")],
                    format!("deployment `{name}` has an empty `instances` list"),
                ),
                Some(list) => {
                    for (i, inst) in list.iter().enumerate() {
                        let p = [K("deployments"), K(name), K("instances"), I(i)];
                        match InstanceAddr::parse(inst) {
                            Err(why) => self.error(&p, format!("instance `{inst}`: {why}")),
                            Ok(a) if instances.contains(&a) => self.error(
                                &p,
                                format!("instance `{inst}` is listed twice in deployment `{name}`"),
                            ),
                            Ok(a) => instances.push(a),
                        }
                    }
                }
            }
            let request = self.request_settings(name, d);
            deployments.push(DeploymentConfig {
                name: name.clone(),
                weight: 0,
                instances,
                request,
            });
        }
        // One warning per key name, at its first occurrence in the file.
        let mut located: Vec<(&str, (usize, usize))> =
            ignored.iter().map(|(k, p)| (*k, self.at(p))).collect();
        located.sort_by_key(|(_, at)| *at);
        let mut warned = BTreeSet::new();
        for (key, (line, column)) in located {
            if warned.insert(key) {
                self.warnings.push(Diagnostic {
                    line,
                    column,
                    message: format!("`{key}` is an Azure ML setting that scoregate ignores"),
                });
            }
        }

        // Traffic.
        let mut sum: i64 = 0;
        let mut order = Vec::new();
        for (name, w) in raw.traffic.iter().flatten() {
            let p = [K("traffic"), K(name)];
            if !(0..=100).contains(w) {
                self.error(
                    &p,
                    format!("weight {w} of `{name}` is out of range: weights are 0 to 100"),
                );
            } else {
                sum += w;
            }
            match deployments.iter().position(|d| &d.name == name) {
                Some(i) => {
                    deployments[i].weight = u8::try_from((*w).clamp(0, 100)).unwrap_or(0);
                    order.push(i);
                }
                None if raw.deployments.is_some() => {
                    let known: Vec<&str> = deployments.iter().map(|d| d.name.as_str()).collect();
                    self.error(
                        &p,
                        format!(
                            "`traffic` names `{name}`, which is not a deployment (deployments: {})",
                            known.join(", ")
                        ),
                    )
                }
                None => {}
            }
        }
        let all_in_range = raw
            .traffic
            .iter()
            .flatten()
            .all(|(_, w)| (0..=100).contains(w));
        if all_in_range && sum != 100 && sum != 0 {
            let detail = raw
                .traffic
                .iter()
                .flatten()
                .map(|(n, w)| format!("{n}={w}"))
                .collect::<Vec<_>>()
                .join(" + ");
            self.error(
                &[K("traffic")],
                format!(
                    "traffic weights sum to {sum} ({detail}); they must sum to exactly 100, or all be 0"
                ),
            );
        }
        if sum == 0 && self.errors.is_empty() {
            self.warn(
                &[K("traffic")],
                "no deployment takes traffic: unpinned requests get 503, pinned ones are served",
            );
        }

        let mirror = self.mirror(
            raw.mirror_traffic.as_deref(),
            &deployments,
            raw.deployments.is_some(),
        );

        if !self.errors.is_empty() {
            return None;
        }
        // Deployments in `traffic:` order first (sticky hashing depends on it), then the rest.
        let mut ordered: Vec<DeploymentConfig> = Vec::with_capacity(deployments.len());
        for &i in &order {
            ordered.push(deployments[i].clone());
        }
        for (i, d) in deployments.into_iter().enumerate() {
            if !order.contains(&i) {
                ordered.push(d);
            }
        }
        Some(EndpointConfig {
            name: raw.name,
            listen: listen?,
            admin_listen: admin_listen?,
            pin_header: pin_header?,
            sticky_header,
            deployments: ordered,
            mirror,
            auth,
            max_request_body_bytes,
            client_header_timeout,
            dns_refresh,
        })
    }

    /// `auth_mode: key`: reads `keys_file` (relative to the endpoint file), one key per line.
    fn keys(&mut self, keys_file: Option<&str>) -> Auth {
        let Some(file) = keys_file else {
            self.error(
                &[Seg::Key("auth_mode")],
                "auth_mode `key` needs `keys_file`: a file with one key per line",
            );
            return Auth::None;
        };
        let dir = self.path.parent().unwrap_or(Path::new(""));
        let path = dir.join(file);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                self.error(
                    &[Seg::Key("keys_file")],
                    format!("keys_file `{}` cannot be read: {e}", path.display()),
                );
                return Auth::None;
            }
        };
        let keys = parse_keys(&text);
        if keys.is_empty() {
            self.error(
                &[Seg::Key("keys_file")],
                format!(
                    "keys_file `{}` holds no key (one key per line; `#` starts a comment)",
                    path.display()
                ),
            );
            return Auth::None;
        }
        Auth::Key(Keys {
            file: path,
            digests: keys,
            file_sha256: sha256(text.as_bytes()),
        })
    }

    /// `mirror_traffic`: at most one deployment, 0–50 percent, taking no live traffic.
    fn mirror(
        &mut self,
        raw: Option<&[(String, i64)]>,
        deployments: &[DeploymentConfig],
        have_deployments: bool,
    ) -> Option<MirrorConfig> {
        let entries = raw?;
        if entries.len() > 1 {
            self.error(
                &[Seg::Key("mirror_traffic")],
                "mirror_traffic names more than one deployment: mirror to one at a time",
            );
            return None;
        }
        let (name, pct) = entries.first()?;
        let p = [Seg::Key("mirror_traffic"), Seg::Key(name)];
        let mut ok = true;
        if !(0..=50).contains(pct) {
            self.error(
                &p,
                format!("mirror percentage {pct} of `{name}` is out of range: 0 to 50"),
            );
            ok = false;
        }
        match deployments.iter().find(|d| &d.name == name) {
            Some(d) if d.weight > 0 => {
                self.error(
                    &p,
                    format!(
                        "`{name}` takes {}% of live traffic: a mirror must be a deployment at 0% live weight",
                        d.weight
                    ),
                );
                ok = false;
            }
            Some(_) => {}
            None if have_deployments => {
                let known: Vec<&str> = deployments.iter().map(|d| d.name.as_str()).collect();
                self.error(
                    &p,
                    format!(
                        "`mirror_traffic` names `{name}`, which is not a deployment (deployments: {})",
                        known.join(", ")
                    ),
                );
                ok = false;
            }
            None => ok = false,
        }
        (ok && *pct > 0).then(|| MirrorConfig {
            deployment: name.clone(),
            percent: *pct as u8,
        })
    }

    fn socket_addr(&mut self, key: &str, value: Option<&str>, default: &str) -> Option<SocketAddr> {
        let v = value.unwrap_or(default);
        match v.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.error(
                    &[Seg::Key(key)],
                    format!("{key} `{v}` is not an address: write IP:PORT, like 127.0.0.1:8080"),
                );
                None
            }
        }
    }

    fn check_name(&mut self, path: &[Seg<'_>], name: &str) {
        let ok_len = (3..=32).contains(&name.len());
        let ok_start = name.chars().next().is_some_and(|c| c.is_ascii_lowercase());
        let ok_chars = name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !(ok_len && ok_start && ok_chars) {
            self.error(
                path,
                format!(
                    "deployment name `{name}` is invalid: use 3 to 32 characters, lowercase letters, \
                     digits and `-`, starting with a letter"
                ),
            );
        }
    }

    fn request_settings(&mut self, name: &str, d: &RawDeployment) -> RequestSettings {
        let mut s = RequestSettings::default();
        let Some(r) = &d.request else { return s };
        let key = d.request_key;
        if let Some(ms) = r.request_timeout_ms {
            if ms == 0 {
                self.error(
                    &[
                        Seg::Key("deployments"),
                        Seg::Key(name),
                        Seg::Key(key),
                        Seg::Key("request_timeout_ms"),
                    ],
                    "request_timeout_ms must be at least 1",
                );
            }
            s.request_timeout = Duration::from_millis(ms);
        }
        if let Some(n) = r.max_concurrent_requests_per_instance {
            s.max_concurrent_per_instance = n;
        }
        if let Some(ms) = r.max_queue_wait_ms {
            s.max_queue_wait = Duration::from_millis(ms);
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------
// Rewriting the `traffic:` map in place: only the weights' characters change (and new entries
// are added after the last one), so comments, order and quoting stay byte for byte.

/// Why the `traffic:` map could not be rewritten.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    #[error("cannot find {0} in the file to rewrite it")]
    NotFound(String),
}

/// Returns `src` with the `traffic:` weights of `weights` set (others untouched) and validates
/// the result as `check` does; `path` is used for messages and `keys_file`.
pub fn rewrite_traffic(
    src: &str,
    path: &Path,
    weights: &[(String, u8)],
) -> Result<(String, Loaded), RewriteError> {
    // A byte-order mark stays where it is, outside what the parser sees.
    let (bom, src) = match src.strip_prefix('\u{feff}') {
        Some(rest) => ("\u{feff}", rest),
        None => ("", src),
    };
    // The file as it is must be valid: its errors come first.
    parse_str(src, path)?;
    let raw = RawFile::deserialize(yaml::Deserializer::from_str(src)).map_err(|e| {
        RewriteError::Invalid(ConfigError {
            path: path.to_path_buf(),
            errors: vec![yaml_diagnostic(&e)],
        })
    })?;
    let present: Vec<String> = raw
        .traffic
        .iter()
        .flatten()
        .map(|(n, _)| n.clone())
        .collect();
    // Edits as (byte offset, bytes replaced, new text), applied from the end.
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let number_at = |off: usize| {
        src[off..]
            .find(|c: char| !(c.is_ascii_digit() || c == '-' || c == '+'))
            .unwrap_or(src.len() - off)
    };
    for (name, w) in weights {
        if !present.contains(name) {
            continue;
        }
        let off = locate_offset(src, &[Seg::Key("traffic"), Seg::Key(name), Seg::Value])
            .ok_or_else(|| RewriteError::NotFound(format!("the weight of `{name}`")))?;
        edits.push((off, number_at(off), w.to_string()));
    }
    let missing: Vec<&(String, u8)> = weights
        .iter()
        .filter(|(n, _)| !present.contains(n))
        .collect();
    if !missing.is_empty() {
        match present.last() {
            None if raw.traffic.is_none() => {
                let mut add = String::new();
                if !src.ends_with('\n') {
                    add.push('\n');
                }
                add.push_str("traffic:\n");
                for (n, w) in &missing {
                    add.push_str(&format!("  {n}: {w}\n"));
                }
                edits.push((src.len(), 0, add));
            }
            None => {
                // `traffic: {}`: fill the flow map.
                let off = locate_offset(src, &[Seg::Key("traffic"), Seg::Value])
                    .ok_or_else(|| RewriteError::NotFound("`traffic:`".into()))?;
                let close = src[off..]
                    .find('}')
                    .ok_or_else(|| RewriteError::NotFound("the end of `traffic: {}`".into()))?;
                let body: Vec<String> = missing.iter().map(|(n, w)| format!("{n}: {w}")).collect();
                edits.push((off + close, 0, body.join(", ")));
            }
            Some(last) => {
                let (_, kc) = locate(src, &[Seg::Key("traffic"), Seg::Key(last)])
                    .ok_or_else(|| RewriteError::NotFound(format!("`{last}` in `traffic:`")))?;
                let voff =
                    locate_offset(src, &[Seg::Key("traffic"), Seg::Key(last), Seg::Value])
                        .ok_or_else(|| RewriteError::NotFound(format!("`{last}` in `traffic:`")))?;
                let vend = voff + number_at(voff);
                let toff = locate_offset(src, &[Seg::Key("traffic"), Seg::Value])
                    .ok_or_else(|| RewriteError::NotFound("`traffic:`".into()))?;
                let text = if src[toff..].starts_with('{') {
                    missing
                        .iter()
                        .map(|(n, w)| format!(", {n}: {w}"))
                        .collect::<String>()
                } else {
                    let indent = " ".repeat(kc - 1);
                    missing
                        .iter()
                        .map(|(n, w)| format!("\n{indent}{n}: {w}"))
                        .collect::<String>()
                };
                // After the last weight, before anything else on its line (a comment stays
                // with its entry in flow style; in block style the new lines go after it).
                let at = if src[toff..].starts_with('{') {
                    vend
                } else {
                    src[vend..].find('\n').map_or(src.len(), |i| vend + i)
                };
                edits.push((at, 0, text));
            }
        }
    }
    edits.sort_by_key(|e| std::cmp::Reverse(e.0));
    let mut out = src.to_string();
    for (off, len, text) in edits {
        out.replace_range(off..off + len, &text);
    }
    let checked = parse_str(&out, path)?;
    Ok((format!("{bom}{out}"), checked))
}

// ---------------------------------------------------------------------------------------------
// Locations of nodes. serde_yaml reports the position of the innermost value being read when a
// `Deserialize` impl fails, so a seed that walks to a path and fails there yields its position.

#[derive(Debug, Clone, Copy)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
    /// The value of the key before it (only last in a path).
    Value,
}

const HERE: &str = "\u{0}scoregate-locate";

/// Line and column (1-based) of the key at the end of `path` (of the element, for an index).
fn locate(src: &str, path: &[Seg<'_>]) -> Option<(usize, usize)> {
    if path.is_empty() {
        return Some((1, 1));
    }
    match Locate(path).deserialize(yaml::Deserializer::from_str(src)) {
        Err(e) if e.to_string().contains(HERE) => e.location().map(|l| (l.line(), l.column())),
        _ => None,
    }
}

/// Byte offset of the node at the end of `path` (see [`locate`]).
fn locate_offset(src: &str, path: &[Seg<'_>]) -> Option<usize> {
    match Locate(path).deserialize(yaml::Deserializer::from_str(src)) {
        Err(e) if e.to_string().contains(HERE) => e.location().map(|l| l.index()),
        _ => None,
    }
}

struct Locate<'p>(&'p [Seg<'p>]);

impl<'de> DeserializeSeed<'de> for Locate<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if matches!(self.0, [] | [Seg::Value]) {
            // Fail inside the deserializer so the error carries this node's position.
            return d.deserialize_any(Here).map(|_| ());
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Locate<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("anything")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Seg::Key(want) = self.0[0] else {
            return Ok(());
        };
        let last = self.0.len() == 1;
        while let Some(hit) = map.next_key_seed(KeyProbe { want, last })? {
            if hit {
                return map.next_value_seed(Locate(&self.0[1..]));
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Seg::Index(want) = self.0[0] else {
            return Ok(());
        };
        let mut i = 0;
        loop {
            if i == want {
                return seq.next_element_seed(Locate(&self.0[1..])).map(|_| ());
            }
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

/// Fails on whatever node it is given.
struct Here;
impl<'de> Visitor<'de> for Here {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("anything")
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(HERE))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(HERE))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(HERE))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom(HERE))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom(HERE))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(HERE))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(HERE))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(HERE))
    }
}

struct KeyProbe<'a> {
    want: &'a str,
    last: bool,
}

impl<'de> DeserializeSeed<'de> for KeyProbe<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        let (want, last) = (self.want, self.last);
        scalar_with(d, |key| match (key == want, last) {
            (true, true) => Err(HERE.to_string()),
            (hit, _) => Ok(hit),
        })
    }
}

#[cfg(test)]
mod tests;
