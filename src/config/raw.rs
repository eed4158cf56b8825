//! The tree of an endpoint file read into its raw shape: every setting with the position of its
//! key and of its value, each value of the YAML type its setting needs. An unknown key, a
//! repeated key or a value of the wrong type is an error collected on the way, and reading goes
//! on: the setting is then absent (an unknown or repeated key) or present without a value (a
//! wrong type), so that the checks neither use it nor report it missing.

use std::collections::BTreeSet;

use super::yaml::{Kind, Node, Pos, Scalar};
use super::{AZURE_IGNORED_KEYS, Diagnostic};

const TOP_KEYS: &[&str] = &[
    "name",
    "listen",
    "admin_listen",
    "pin_header",
    "sticky_header",
    "traffic",
    "mirror_traffic",
    "mirror_compare",
    "auth_mode",
    "keys_file",
    "max_request_body_bytes",
    "client_header_timeout_ms",
    "dns_refresh_ms",
    "tls",
    "admin_tls",
    "access_log",
    "otlp_endpoint",
    "deployments",
];
const DEPLOYMENT_KEYS: &[&str] = &[
    "instances",
    "grpc_instances",
    "request",
    "request_settings",
    "tls",
    "headers",
    "bearer_key_file",
];
const ACCESS_LOG_KEYS: &[&str] = &["path", "format", "sample", "log_query"];
const COMPARE_KEYS: &[&str] = &["abs_tolerance", "rel_tolerance", "ignore", "max_body_bytes"];
const LISTENER_TLS_KEYS: &[&str] = &["cert_file", "key_file", "client_ca_file"];
const UPSTREAM_TLS_KEYS: &[&str] = &["ca_file", "server_name", "cert_file", "key_file"];
const REQUEST_KEYS: &[&str] = &[
    "request_timeout_ms",
    "max_concurrent_requests_per_instance",
    "max_queue_wait_ms",
];

/// A setting present in the file: where its key is, and its value when that has the right type
/// (`None`: that error is already reported).
#[derive(Debug)]
pub(crate) struct Setting<T> {
    pub key: Pos,
    pub value: Option<T>,
}

/// The endpoint file as written.
#[derive(Debug, Default)]
pub(crate) struct RawFile {
    pub name: Option<Setting<String>>,
    pub listen: Option<Setting<String>>,
    pub admin_listen: Option<Setting<String>>,
    pub pin_header: Option<Setting<String>>,
    pub sticky_header: Option<Setting<String>>,
    pub traffic: Option<Setting<Percents>>,
    pub mirror_traffic: Option<Setting<Percents>>,
    pub mirror_compare: Option<Setting<RawCompare>>,
    pub auth_mode: Option<Setting<String>>,
    pub keys_file: Option<Setting<String>>,
    pub max_request_body_bytes: Option<Setting<u64>>,
    pub client_header_timeout_ms: Option<Setting<u64>>,
    pub dns_refresh_ms: Option<Setting<u64>>,
    /// The data-plane listener's TLS.
    pub tls: Option<Setting<RawTls>>,
    /// The admin listener's TLS.
    pub admin_tls: Option<Setting<RawTls>>,
    /// The access log.
    pub access_log: Option<Setting<RawAccessLog>>,
    /// Where spans are exported (OTLP over gRPC).
    pub otlp_endpoint: Option<Setting<String>>,
    pub deployments: Option<Setting<Vec<RawDeployment>>>,
    /// Azure ML keys met anywhere (top level and deployments), with their positions.
    pub ignored: Vec<(&'static str, Pos)>,
    /// Top-level keys suggested for unknown keys: a missing one is already explained.
    pub suggested: Vec<&'static str>,
}

/// `traffic:` or `mirror_traffic:`: deployment name → percentage.
#[derive(Debug, Default)]
pub(crate) struct Percents {
    pub entries: Vec<Percent>,
    /// False when an entry was left out (a repeated name) or has no readable percentage: the
    /// entries read do not tell the whole map.
    pub complete: bool,
}

#[derive(Debug)]
pub(crate) struct Percent {
    pub name: String,
    pub key: Pos,
    pub value: Option<i64>,
}

#[derive(Debug)]
pub(crate) struct RawDeployment {
    pub name: String,
    pub key: Pos,
    /// False when its settings are not a map (reported): nothing else is known of it.
    pub readable: bool,
    pub instances: Option<Setting<Vec<Item>>>,
    /// The instances' gRPC (HTTP/2 cleartext) addresses.
    pub grpc_instances: Option<Setting<Vec<Item>>>,
    /// `request` or `request_settings`, whichever is written.
    pub request: Option<(&'static str, Setting<RawRequest>)>,
    /// TLS to the instances.
    pub tls: Option<Setting<RawTls>>,
    /// Headers set on every request forwarded to the deployment: (name, its position, value).
    pub headers: Option<Setting<Vec<RawHeader>>>,
    pub bearer_key_file: Option<Setting<String>>,
    pub suggested: Vec<&'static str>,
}

/// `mirror_compare:` as written.
#[derive(Debug, Default)]
pub(crate) struct RawCompare {
    pub abs_tolerance: Option<Setting<f64>>,
    pub rel_tolerance: Option<Setting<f64>>,
    /// JSON pointers, each with its position.
    pub ignore: Option<Setting<Vec<Item>>>,
    pub max_body_bytes: Option<Setting<u64>>,
}

/// `access_log:` as written.
#[derive(Debug, Default)]
pub(crate) struct RawAccessLog {
    pub path: Option<Setting<String>>,
    /// Keys suggested for unknown keys: a missing one is already explained.
    pub suggested: Vec<&'static str>,
    pub format: Option<Setting<String>>,
    pub sample: Option<Setting<f64>>,
    pub log_query: Option<Setting<bool>>,
}

/// One header of `headers:`: its name, the name's position, its value.
pub(crate) type RawHeader = (String, Pos, Option<String>);

/// A `tls:` map, of a listener (`cert_file`, `key_file`, `client_ca_file`) or of a
/// deployment's instances (`ca_file`, `server_name`, `cert_file`, `key_file`).
#[derive(Debug, Default)]
pub(crate) struct RawTls {
    pub cert_file: Option<Setting<String>>,
    pub key_file: Option<Setting<String>>,
    pub client_ca_file: Option<Setting<String>>,
    pub ca_file: Option<Setting<String>>,
    pub server_name: Option<Setting<String>>,
}

/// One instance as written.
#[derive(Debug)]
pub(crate) struct Item {
    pub at: Pos,
    pub text: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct RawRequest {
    pub request_timeout_ms: Option<Setting<u64>>,
    pub max_concurrent_requests_per_instance: Option<Setting<u32>>,
    pub max_queue_wait_ms: Option<Setting<u64>>,
}

/// Reads the tree (`None`: a file without a document, read as an empty map). `None` when the
/// top level is not a map: nothing else can be read then.
pub(crate) fn read(root: Option<&Node>) -> (Option<RawFile>, Vec<Diagnostic>) {
    let mut r = Reader::default();
    let file = match root {
        None => Some(RawFile::default()),
        Some(root) => r.file(root),
    };
    (file, r.errors)
}

/// The keys a map may hold and how it is named in messages.
struct MapSpec {
    known: &'static [&'static str],
    /// Whether Azure ML keys are accepted (and ignored).
    azure: bool,
    what: &'static str,
}

const TOP: MapSpec = MapSpec {
    known: TOP_KEYS,
    azure: true,
    what: "the endpoint file",
};
const DEPLOYMENT: MapSpec = MapSpec {
    known: DEPLOYMENT_KEYS,
    azure: true,
    what: "a deployment",
};
const COMPARE: MapSpec = MapSpec {
    known: COMPARE_KEYS,
    azure: false,
    what: "mirror_compare",
};
const ACCESS_LOG: MapSpec = MapSpec {
    known: ACCESS_LOG_KEYS,
    azure: false,
    what: "access_log",
};
const LISTENER_TLS: MapSpec = MapSpec {
    known: LISTENER_TLS_KEYS,
    azure: false,
    what: "listener TLS settings",
};
const UPSTREAM_TLS: MapSpec = MapSpec {
    known: UPSTREAM_TLS_KEYS,
    azure: false,
    what: "a deployment's TLS settings",
};
const REQUEST: MapSpec = MapSpec {
    known: REQUEST_KEYS,
    azure: false,
    what: "request settings",
};

/// How a map of deployment name → integer percentage is read and named in messages.
struct PercentSpec {
    key: &'static str,
    unit: &'static str,
    units: &'static str,
    example: u8,
    max: u8,
}

const TRAFFIC: PercentSpec = PercentSpec {
    key: "traffic",
    unit: "weight",
    units: "weights",
    example: 90,
    max: 100,
};
const MIRROR: PercentSpec = PercentSpec {
    key: "mirror_traffic",
    unit: "mirror percentage",
    units: "mirror percentages",
    example: 10,
    max: 100,
};

/// The known keys of a map, each once, with its position and value.
struct Known<'n> {
    found: Vec<(&'static str, Pos, &'n Node)>,
    suggested: Vec<&'static str>,
}

#[derive(Default)]
struct Reader {
    errors: Vec<Diagnostic>,
    ignored: Vec<(&'static str, Pos)>,
}

fn setting<T>(key: Pos, value: Option<T>) -> Setting<T> {
    Setting { key, value }
}

/// `path: ` in front of a message about a node below the top level (as serde_yaml wrote it).
fn prefixed(path: &str, message: String) -> String {
    if path.is_empty() {
        message
    } else {
        format!("{path}: {message}")
    }
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// What a node is, for "invalid type" messages (serde's wording).
fn unexpected(node: &Node) -> String {
    match node.scalar() {
        None if matches!(node.kind, Kind::Map(_)) => "map".into(),
        None => "sequence".into(),
        Some(Scalar::Null) => "unit value".into(),
        Some(Scalar::Bool(b)) => format!("boolean `{b}`"),
        Some(Scalar::Int(i)) => format!("integer `{i}`"),
        Some(Scalar::Float(f)) if f.is_finite() && f.fract() == 0.0 => {
            format!("floating point `{f}.0`")
        }
        Some(Scalar::Float(f)) => format!("floating point `{f}`"),
        Some(Scalar::Str(s)) => format!("string {s:?}"),
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

impl Reader {
    fn error(&mut self, at: Pos, message: String) {
        self.errors.push(Diagnostic {
            line: at.line,
            column: at.column,
            message,
        });
    }

    fn invalid_type(&mut self, node: &Node, path: &str, expected: &str) {
        let message = format!("invalid type: {}, expected {expected}", unexpected(node));
        self.error(node.pos(), prefixed(path, message));
    }

    /// A map's entries; nothing after the key reads as an empty map.
    fn map<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        expected: &str,
    ) -> Option<&'n [(Node, Node)]> {
        match &node.kind {
            Kind::Map(entries) => Some(entries),
            _ if node.is_empty_plain() => Some(&[]),
            _ => {
                self.invalid_type(node, path, expected);
                None
            }
        }
    }

    /// A scalar read as text whatever its YAML type (so `listen: 8080` gets a clear message
    /// later), but not null.
    fn plain_text(&mut self, node: &Node, path: &str) -> Option<String> {
        match node.scalar() {
            Some(Scalar::Null) | None => {
                self.invalid_type(node, path, "a plain value (text or number)");
                None
            }
            Some(_) => node.text().map(str::to_string),
        }
    }

    /// Any scalar, as written.
    fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        let text = node.text().map(str::to_string);
        if text.is_none() {
            self.invalid_type(node, path, "a string");
        }
        text
    }

    /// A plain integer from 0 to `max`; `ty` names the type in messages (`u64`, `u32`).
    fn unsigned(&mut self, node: &Node, path: &str, max: u64, ty: &str) -> Option<u64> {
        match node.scalar() {
            Some(Scalar::Int(i)) if i >= 0 => match u64::try_from(i).ok().filter(|n| *n <= max) {
                Some(n) => Some(n),
                None => {
                    let message = format!("invalid value: integer `{i}`, expected {ty}");
                    self.error(node.pos(), prefixed(path, message));
                    None
                }
            },
            _ => {
                self.invalid_type(node, path, ty);
                None
            }
        }
    }

    /// The known keys of a map. Unknown keys (with a suggestion), repeated keys and both of
    /// `request` and `request_settings` are reported at the key; Azure ML keys are noted.
    fn known<'n>(&mut self, entries: &'n [(Node, Node)], path: &str, spec: &MapSpec) -> Known<'n> {
        let mut out = Known {
            found: Vec::new(),
            suggested: Vec::new(),
        };
        let mut seen = BTreeSet::new();
        for (k, v) in entries {
            let Some(key) = self.plain_text(k, path) else {
                continue;
            };
            let known = spec.known.iter().copied().find(|n| *n == key);
            let azure = AZURE_IGNORED_KEYS.iter().copied().find(|n| *n == key);
            let Some(name) = known.or(azure.filter(|_| spec.azure)) else {
                let what = spec.what;
                let mut message = format!("unknown key `{key}` in {what}");
                match suggest(&key, spec.known) {
                    Some(s) => {
                        message.push_str(&format!(" (did you mean `{s}`?)"));
                        out.suggested.push(s);
                    }
                    None => {
                        let all = spec.known.join(", ");
                        message.push_str(&format!("; expected one of: {all}"));
                    }
                }
                self.error(k.pos(), prefixed(path, message));
                continue;
            };
            let synonym = match name {
                "request" => Some("request_settings"),
                "request_settings" => Some("request"),
                _ => None,
            };
            if synonym.is_some_and(|s| seen.contains(s)) {
                let message =
                    "`request` and `request_settings` are the same setting: keep one".to_string();
                self.error(k.pos(), prefixed(path, message));
                continue;
            }
            if !seen.insert(name) {
                let message = format!("duplicate key `{name}` in {}", spec.what);
                self.error(k.pos(), prefixed(path, message));
                continue;
            }
            if known.is_some() {
                out.found.push((name, k.pos(), v));
            } else {
                self.ignored.push((name, k.pos()));
            }
        }
        out
    }

    /// A map of deployment name → value; a repeated name is reported and left out. The flag is
    /// false when an entry was left out.
    fn named<'n>(
        &mut self,
        entries: &'n [(Node, Node)],
        path: &str,
    ) -> (Vec<(String, Pos, &'n Node)>, bool) {
        let mut out: Vec<(String, Pos, &Node)> = Vec::new();
        let mut complete = true;
        for (k, v) in entries {
            let Some(name) = self.plain_text(k, path) else {
                complete = false;
                continue;
            };
            if out.iter().any(|(n, _, _)| *n == name) {
                let message = format!("deployment `{name}` appears twice in `{path}`");
                self.error(k.pos(), prefixed(path, message));
                complete = false;
                continue;
            }
            out.push((name, k.pos(), v));
        }
        (out, complete)
    }

    fn file(&mut self, root: &Node) -> Option<RawFile> {
        let entries = self.map(
            root,
            "",
            "an endpoint file: a mapping with `traffic:` and `deployments:`",
        )?;
        let known = self.known(entries, "", &TOP);
        let mut raw = RawFile {
            suggested: known.suggested,
            ..RawFile::default()
        };
        for (key, k, v) in known.found {
            match key {
                "name" => raw.name = Some(setting(k, self.plain_text(v, key))),
                "listen" => raw.listen = Some(setting(k, self.plain_text(v, key))),
                "admin_listen" => raw.admin_listen = Some(setting(k, self.plain_text(v, key))),
                "pin_header" => raw.pin_header = Some(setting(k, self.string(v, key))),
                "sticky_header" => raw.sticky_header = Some(setting(k, self.string(v, key))),
                "auth_mode" => raw.auth_mode = Some(setting(k, self.string(v, key))),
                "keys_file" => raw.keys_file = Some(setting(k, self.string(v, key))),
                "traffic" => raw.traffic = Some(setting(k, self.percents(v, &TRAFFIC))),
                "mirror_traffic" => {
                    raw.mirror_traffic = Some(setting(k, self.percents(v, &MIRROR)))
                }
                "mirror_compare" => raw.mirror_compare = Some(setting(k, self.compare(v, key))),
                "max_request_body_bytes" => {
                    let n = self.unsigned(v, key, u64::MAX, "u64");
                    raw.max_request_body_bytes = Some(setting(k, n));
                }
                "client_header_timeout_ms" => {
                    let n = self.unsigned(v, key, u64::MAX, "u64");
                    raw.client_header_timeout_ms = Some(setting(k, n));
                }
                "dns_refresh_ms" => {
                    let n = self.unsigned(v, key, u64::MAX, "u64");
                    raw.dns_refresh_ms = Some(setting(k, n));
                }
                "tls" => raw.tls = Some(setting(k, self.tls(v, key, &LISTENER_TLS))),
                "admin_tls" => raw.admin_tls = Some(setting(k, self.tls(v, key, &LISTENER_TLS))),
                "access_log" => raw.access_log = Some(setting(k, self.access_log(v, key))),
                "otlp_endpoint" => raw.otlp_endpoint = Some(setting(k, self.plain_text(v, key))),
                _ => raw.deployments = Some(setting(k, self.deployments(v))),
            }
        }
        raw.ignored = std::mem::take(&mut self.ignored);
        Some(raw)
    }

    fn percents(&mut self, node: &Node, spec: &PercentSpec) -> Option<Percents> {
        let PercentSpec { unit, example, .. } = spec;
        let expected = format!("a map of deployment name to {unit}, like `blue: {example}`");
        let entries = self.map(node, spec.key, &expected)?;
        let (named, mut complete) = self.named(entries, spec.key);
        let mut out = Vec::with_capacity(named.len());
        for (name, key, v) in named {
            let value = self.percent(v, &child(spec.key, &name), spec);
            complete &= value.is_some();
            out.push(Percent { name, key, value });
        }
        Some(Percents {
            entries: out,
            complete,
        })
    }

    /// One percentage: a YAML integer (its range is checked later, at the name).
    fn percent(&mut self, node: &Node, path: &str, spec: &PercentSpec) -> Option<i64> {
        let PercentSpec {
            unit,
            units,
            example,
            max,
            ..
        } = spec;
        let message = match node.scalar() {
            Some(Scalar::Int(i)) => match i64::try_from(i) {
                Ok(v) => return Some(v),
                Err(_) => format!("{unit} {i} is out of range: {units} are 0 to {max}"),
            },
            Some(Scalar::Float(v)) => {
                format!(
                    "{unit} {v} is not an integer: {units} are whole percentages from 0 to {max}"
                )
            }
            Some(Scalar::Str(v)) => format!(
                "{unit} \"{v}\" is a string: write {units} as plain integers ({example}, not \"{example}\")"
            ),
            Some(Scalar::Null) => format!("{unit} is missing: write an integer from 0 to {max}"),
            Some(Scalar::Bool(v)) => format!("{unit} `{v}` is not an integer from 0 to {max}"),
            None => {
                self.invalid_type(node, path, &format!("an integer {unit} from 0 to {max}"));
                return None;
            }
        };
        self.error(node.pos(), prefixed(path, message));
        None
    }

    fn deployments(&mut self, node: &Node) -> Option<Vec<RawDeployment>> {
        let path = "deployments";
        let entries = self.map(node, path, "a map of deployment name to its settings")?;
        let (named, _) = self.named(entries, path);
        Some(
            named
                .into_iter()
                .map(|(name, key, v)| self.deployment(name, key, v))
                .collect(),
        )
    }

    fn deployment(&mut self, name: String, key: Pos, node: &Node) -> RawDeployment {
        let path = child("deployments", &name);
        let mut d = RawDeployment {
            name,
            key,
            readable: false,
            instances: None,
            grpc_instances: None,
            request: None,
            tls: None,
            headers: None,
            bearer_key_file: None,
            suggested: Vec::new(),
        };
        let expected = "a deployment: a mapping with `instances:`";
        let Some(entries) = self.map(node, &path, expected) else {
            return d;
        };
        d.readable = true;
        let known = self.known(entries, &path, &DEPLOYMENT);
        d.suggested = known.suggested;
        for (key, k, v) in known.found {
            let path = child(&path, key);
            match key {
                "instances" => d.instances = Some(setting(k, self.instances(v, &path))),
                "grpc_instances" => d.grpc_instances = Some(setting(k, self.instances(v, &path))),
                "tls" => d.tls = Some(setting(k, self.tls(v, &path, &UPSTREAM_TLS))),
                "headers" => d.headers = Some(setting(k, self.headers(v, &path))),
                "bearer_key_file" => d.bearer_key_file = Some(setting(k, self.string(v, &path))),
                _ => d.request = Some((key, setting(k, self.request(v, &path)))),
            }
        }
        d
    }

    fn instances(&mut self, node: &Node, path: &str) -> Option<Vec<Item>> {
        let items: &[Node] = match &node.kind {
            Kind::Seq(items) => items,
            _ if node.is_empty_plain() => &[],
            _ => {
                let expected = "a list of instances, like [127.0.0.1:9001, 127.0.0.1:9002]";
                self.invalid_type(node, path, expected);
                return None;
            }
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let text = self.plain_text(item, &format!("{path}[{i}]"));
            out.push(Item {
                at: item.pos(),
                text,
            });
        }
        Some(out)
    }

    /// A non-negative number, integer or not.
    fn number(&mut self, node: &Node, path: &str) -> Option<f64> {
        match node.scalar() {
            Some(Scalar::Int(i)) if i >= 0 => Some(i as f64),
            Some(Scalar::Float(f)) if f.is_finite() && f >= 0.0 => Some(f),
            _ => {
                self.invalid_type(node, path, "a number, 0 or more");
                None
            }
        }
    }

    /// `mirror_compare:`.
    fn compare(&mut self, node: &Node, path: &str) -> Option<RawCompare> {
        let entries = self.map(node, path, "comparison settings: a mapping")?;
        let known = self.known(entries, path, &COMPARE);
        let mut c = RawCompare::default();
        for (key, k, v) in known.found {
            let path = child(path, key);
            match key {
                "abs_tolerance" => c.abs_tolerance = Some(setting(k, self.number(v, &path))),
                "rel_tolerance" => c.rel_tolerance = Some(setting(k, self.number(v, &path))),
                "max_body_bytes" => {
                    let n = self.unsigned(v, &path, u64::MAX, "u64");
                    c.max_body_bytes = Some(setting(k, n));
                }
                _ => {
                    let items: &[Node] = match &v.kind {
                        Kind::Seq(items) => items,
                        _ if v.is_empty_plain() => &[],
                        _ => {
                            let expected = "a list of JSON pointers, like [/id, /model_version]";
                            self.invalid_type(v, &path, expected);
                            c.ignore = Some(setting(k, None));
                            continue;
                        }
                    };
                    let list = items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| Item {
                            at: item.pos(),
                            text: self.string(item, &format!("{path}[{i}]")),
                        })
                        .collect();
                    c.ignore = Some(setting(k, Some(list)));
                }
            }
        }
        Some(c)
    }

    /// `access_log:`.
    fn access_log(&mut self, node: &Node, path: &str) -> Option<RawAccessLog> {
        let entries = self.map(node, path, "access log settings: a mapping with `path:`")?;
        let known = self.known(entries, path, &ACCESS_LOG);
        let mut a = RawAccessLog {
            suggested: known.suggested,
            ..RawAccessLog::default()
        };
        for (key, k, v) in known.found {
            let path = child(path, key);
            match key {
                "path" => a.path = Some(setting(k, self.plain_text(v, &path))),
                "format" => a.format = Some(setting(k, self.string(v, &path))),
                "sample" => a.sample = Some(setting(k, self.number(v, &path))),
                _ => a.log_query = Some(setting(k, self.boolean(v, &path))),
            }
        }
        Some(a)
    }

    /// `true` or `false`.
    fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
        match node.scalar() {
            Some(Scalar::Bool(b)) => Some(b),
            _ => {
                self.invalid_type(node, path, "a boolean (true or false)");
                None
            }
        }
    }

    /// A `tls:` map; which keys it may hold is `spec`'s.
    fn tls(&mut self, node: &Node, path: &str, spec: &MapSpec) -> Option<RawTls> {
        let entries = self.map(node, path, "TLS settings: a mapping with `cert_file:`")?;
        let known = self.known(entries, path, spec);
        let mut t = RawTls::default();
        for (key, k, v) in known.found {
            let value = Some(setting(k, self.string(v, &child(path, key))));
            match key {
                "cert_file" => t.cert_file = value,
                "key_file" => t.key_file = value,
                "client_ca_file" => t.client_ca_file = value,
                "ca_file" => t.ca_file = value,
                _ => t.server_name = value,
            }
        }
        Some(t)
    }

    /// `headers:`: a map of header name to value, as written.
    fn headers(&mut self, node: &Node, path: &str) -> Option<Vec<RawHeader>> {
        let entries = self.map(node, path, "a map of header name to value")?;
        let mut out: Vec<RawHeader> = Vec::new();
        for (k, v) in entries {
            let Some(name) = self.plain_text(k, path) else {
                continue;
            };
            if out.iter().any(|(n, _, _)| n.eq_ignore_ascii_case(&name)) {
                let message = format!("header `{name}` appears twice");
                self.error(k.pos(), prefixed(path, message));
                continue;
            }
            let value = self.plain_text(v, &child(path, &name));
            out.push((name, k.pos(), value));
        }
        Some(out)
    }

    fn request(&mut self, node: &Node, path: &str) -> Option<RawRequest> {
        let entries = self.map(node, path, "request settings: a mapping")?;
        let known = self.known(entries, path, &REQUEST);
        let mut r = RawRequest::default();
        for (key, k, v) in known.found {
            let path = child(path, key);
            match key {
                "request_timeout_ms" => {
                    let n = self.unsigned(v, &path, u64::MAX, "u64");
                    r.request_timeout_ms = Some(setting(k, n));
                }
                "max_concurrent_requests_per_instance" => {
                    let n = self.unsigned(v, &path, u32::MAX.into(), "u32");
                    let n = n.and_then(|n| u32::try_from(n).ok());
                    r.max_concurrent_requests_per_instance = Some(setting(k, n));
                }
                _ => {
                    let n = self.unsigned(v, &path, u64::MAX, "u64");
                    r.max_queue_wait_ms = Some(setting(k, n));
                }
            }
        }
        Some(r)
    }
}
