//! The rules of an endpoint file, checked on its raw shape: [`compile`] runs independent
//! `check_*` functions, each returning what it found, and assembles the [`EndpointConfig`] when
//! none found an error. A setting whose value had the wrong type (already reported by `raw`) is
//! skipped by the checks, never reported a second time.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue};

use super::raw::{Percent, RawDeployment, RawFile, RawTls, Setting};
use super::yaml::Pos;
use super::*;
use crate::addr::InstanceAddr;
use crate::shadow::CompareSettings;
use crate::tls::Pair;

/// A check's result and the errors it found.
type Checked<T> = (T, Vec<Diagnostic>);

/// What the checks found besides the configuration.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

impl Findings {
    fn take<T>(&mut self, (value, errors): Checked<T>) -> T {
        self.errors.extend(errors);
        value
    }
}

fn at(pos: Pos, message: impl Into<String>) -> Diagnostic {
    Diagnostic {
        line: pos.line,
        column: pos.column,
        message: message.into(),
    }
}

/// The key of a setting, or the start of the file when it is absent.
fn key_or_start<T>(s: Option<&Setting<T>>) -> Pos {
    s.map_or(Pos::START, |s| s.key)
}

/// Checks every rule; the configuration is `Some` only when no error was found. `file` is the
/// endpoint file (`keys_file` is relative to it).
pub(crate) fn compile(raw: &RawFile, file: &Path) -> (Option<EndpointConfig>, Findings) {
    let mut f = Findings::default();
    let listen = f.take(check_listen(raw));
    let headers = f.take(check_headers(raw));
    let (auth, warning) = f.take(check_auth(raw, file));
    f.warnings.extend(warning);
    let limits = f.take(check_limits(raw));
    let (tls, admin_tls, warning) = f.take(check_listener_tls(raw, file));
    f.warnings.extend(warning);
    let mut deployments = f.take(check_deployments(raw, file));
    f.warnings.extend(check_ignored(raw));
    let (order, warning) = f.take(check_traffic(raw, &mut deployments));
    f.warnings.extend(warning);
    let mirrors = f.take(check_mirror(raw, &deployments));
    let (access_log, warning) = f.take(check_access_log(raw, file));
    f.warnings.extend(warning);
    let otlp_endpoint = f.take(check_otlp(raw));
    let (mirror_compare, mirror_max_body_bytes) = f.take(check_compare(raw));
    if mirror_compare.is_some() && mirrors.is_empty() {
        let pos = key_or_start(raw.mirror_compare.as_ref());
        f.warnings.push(at(
            pos,
            "`mirror_compare` has no effect without `mirror_traffic`",
        ));
    }

    let (Some((listen, admin_listen)), Some((pin_header, sticky_header)), Some(limits)) =
        (listen, headers, limits)
    else {
        return (None, f);
    };
    if !f.errors.is_empty() {
        return (None, f);
    }
    // Deployments in `traffic:` order first (sticky hashing depends on it), then the rest.
    let mut ordered: Vec<DeploymentConfig> =
        order.iter().map(|&i| deployments[i].clone()).collect();
    for (i, d) in deployments.into_iter().enumerate() {
        if !order.contains(&i) {
            ordered.push(d);
        }
    }
    let config = EndpointConfig {
        name: raw.name.as_ref().and_then(|s| s.value.clone()),
        listen,
        admin_listen,
        pin_header,
        sticky_header,
        deployments: ordered,
        mirrors,
        mirror_compare,
        mirror_max_body_bytes,
        auth,
        max_request_body_bytes: limits.max_request_body_bytes,
        client_header_timeout: limits.client_header_timeout,
        dns_refresh: limits.dns_refresh,
        tls,
        admin_tls,
        access_log,
        otlp_endpoint,
    };
    (Some(config), f)
}

/// `listen` and `admin_listen`: socket addresses that can both be bound.
fn check_listen(raw: &RawFile) -> Checked<Option<(SocketAddr, SocketAddr)>> {
    let mut errors = Vec::new();
    let mut socket_addr = |key: &str, s: Option<&Setting<String>>, default: &str| {
        let (v, pos) = match s {
            None => (default, Pos::START),
            Some(s) => (s.value.as_deref()?, s.key),
        };
        let parsed = v.parse::<SocketAddr>();
        if parsed.is_err() {
            let message =
                format!("{key} `{v}` is not an address: write IP:PORT, like 127.0.0.1:8080");
            errors.push(at(pos, message));
        }
        parsed.ok()
    };
    let listen = socket_addr("listen", raw.listen.as_ref(), DEFAULT_LISTEN);
    let admin = socket_addr(
        "admin_listen",
        raw.admin_listen.as_ref(),
        DEFAULT_ADMIN_LISTEN,
    );
    let (Some(a), Some(b)) = (listen, admin) else {
        return (None, errors);
    };
    // The same port on the same IP, or on any IP when one of them is the unspecified address,
    // cannot be bound twice.
    if a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
    {
        let pos = key_or_start(raw.admin_listen.as_ref().or(raw.listen.as_ref()));
        let message =
            format!("admin_listen {b} and listen {a} cannot both be bound: use another port");
        errors.push(at(pos, message));
        return (None, errors);
    }
    (Some((a, b)), errors)
}

/// `pin_header` and `sticky_header`: valid header names, not the same one.
fn check_headers(raw: &RawFile) -> Checked<Option<(HeaderName, Option<HeaderName>)>> {
    let mut errors = Vec::new();
    let mut header = |key: &str, s: &Setting<String>| {
        let h = s.value.as_deref()?;
        let name = HeaderName::from_bytes(h.as_bytes()).ok();
        if name.is_none() {
            errors.push(at(
                s.key,
                format!("{key} `{h}` is not a valid HTTP header name"),
            ));
        }
        name
    };
    let pin = match &raw.pin_header {
        None => Some(HeaderName::from_static(DEFAULT_PIN_HEADER)),
        Some(s) => header("pin_header", s),
    };
    let sticky = match &raw.sticky_header {
        None => Some(None),
        Some(s) => header("sticky_header", s).map(Some),
    };
    if let (Some(s), Some(Some(name))) = (&raw.sticky_header, &sticky)
        && Some(name) == pin.as_ref()
    {
        let h = s.value.as_deref().unwrap_or_default();
        errors.push(at(
            s.key,
            format!("sticky_header `{h}` is the pin header: use another header"),
        ));
        return (None, errors);
    }
    (pin.zip(sticky), errors)
}

/// `auth_mode` and `keys_file`; returns the warnings apart.
fn check_auth(raw: &RawFile, file: &Path) -> Checked<(Auth, Vec<Diagnostic>)> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mode_at = key_or_start(raw.auth_mode.as_ref());
    let mode = match &raw.auth_mode {
        None => "none",
        Some(s) => match s.value.as_deref() {
            Some(m) => m,
            None => return ((Auth::None, warnings), errors),
        },
    };
    let auth = match mode {
        "none" | "aml_token" => {
            if mode == "aml_token" {
                warnings.push(at(
                    mode_at,
                    "WARNING: auth_mode `aml_token` is NOT enforced by scoregate: this endpoint is \
                     OPEN to anyone who can reach it (use `auth_mode: key` with a `keys_file`, or \
                     `none` to silence this warning)",
                ));
            }
            if let Some(k) = &raw.keys_file {
                errors.push(at(k.key, "`keys_file` is only used with `auth_mode: key`"));
            }
            Auth::None
        }
        "key" => match &raw.keys_file {
            None => {
                let message = "auth_mode `key` needs `keys_file`: a file with one key per line";
                errors.push(at(mode_at, message));
                Auth::None
            }
            Some(Setting { value: None, .. }) => Auth::None,
            Some(Setting {
                key,
                value: Some(name),
                ..
            }) => match read_keys(file, name) {
                Ok(keys) => Auth::Key(keys),
                Err(message) => {
                    errors.push(at(*key, message));
                    Auth::None
                }
            },
        },
        other => {
            errors.push(at(
                mode_at,
                format!("auth_mode `{other}` is not known: use `none` or `key`"),
            ));
            Auth::None
        }
    };
    ((auth, warnings), errors)
}

/// The keys file `name`, relative to the endpoint file `file`: one key per line.
fn read_keys(file: &Path, name: &str) -> Result<Keys, String> {
    let path = file.parent().unwrap_or(Path::new("")).join(name);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("keys_file `{}` cannot be read: {e}", path.display()))?;
    let digests = parse_keys(&text);
    if digests.is_empty() {
        return Err(format!(
            "keys_file `{}` holds no key (one key per line; `#` starts a comment)",
            path.display()
        ));
    }
    Ok(Keys {
        file: path,
        digests,
        file_sha256: sha256(text.as_bytes()),
    })
}

/// `name` relative to the endpoint file `file`'s directory.
fn beside(file: &Path, name: &str) -> PathBuf {
    file.parent().unwrap_or(Path::new("")).join(name)
}

/// A string setting's value, if present and readable.
fn text(s: &Option<Setting<String>>) -> Option<(Pos, &str)> {
    s.as_ref()
        .and_then(|s| s.value.as_deref().map(|v| (s.key, v)))
}

/// A certificate pair whose files are both named (`what` is where, like `tls`); none when
/// neither is. Errors at the first key concerned.
fn check_pair(
    t: &RawTls,
    what: &str,
    file: &Path,
    now: SystemTime,
    errors: &mut Vec<Diagnostic>,
) -> Option<Pair> {
    match (text(&t.cert_file), text(&t.key_file)) {
        (Some((at_cert, cert)), Some((at_key, key))) => {
            match crate::tls::load_pair(&beside(file, cert), &beside(file, key), now) {
                Ok(pair) => Some(pair),
                Err(e) => {
                    // At the key of the file the message is about.
                    let pos = if e.starts_with("key_file") {
                        at_key
                    } else {
                        at_cert
                    };
                    errors.push(at(pos, format!("{what}: {e}")));
                    None
                }
            }
        }
        (None, None) => None,
        (Some((pos, _)), None) | (None, Some((pos, _))) => {
            errors.push(at(
                pos,
                format!("{what}: `cert_file` and `key_file` go together: name both"),
            ));
            None
        }
    }
}

/// `tls` and `admin_tls`: each a certificate pair (required) and optional client CAs (mTLS);
/// a certificate expiring within [`crate::tls::EXPIRY_WARNING`] is a warning.
#[allow(clippy::type_complexity)]
fn check_listener_tls(
    raw: &RawFile,
    file: &Path,
) -> Checked<(Option<ListenerTls>, Option<ListenerTls>, Vec<Diagnostic>)> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let now = SystemTime::now();
    let mut one = |what: &str, s: &Option<Setting<RawTls>>| -> Option<ListenerTls> {
        let s = s.as_ref()?;
        let t = s.value.as_ref()?;
        if t.cert_file.is_none() && t.key_file.is_none() {
            errors.push(at(
                s.key,
                format!(
                    "{what} needs `cert_file` and `key_file` (PEM files, relative to this file)"
                ),
            ));
            return None;
        }
        let pair = check_pair(t, what, file, now, &mut errors)?;
        let client_ca = match text(&t.client_ca_file) {
            None => None,
            Some((pos, name)) => {
                match crate::tls::load_roots(&beside(file, name), "client_ca_file") {
                    Ok(r) => Some(r),
                    Err(e) => {
                        errors.push(at(pos, format!("{what}: {e}")));
                        return None;
                    }
                }
            }
        };
        let server = match crate::tls::server_config(&pair, client_ca.as_ref()) {
            Ok(c) => c,
            Err(e) => {
                errors.push(at(s.key, format!("{what}: {e}")));
                return None;
            }
        };
        if let Ok(left) = pair.info.not_after.duration_since(now)
            && left < crate::tls::EXPIRY_WARNING
        {
            let pos = key_or_start(t.cert_file.as_ref());
            warnings.push(at(
                pos,
                format!(
                    "WARNING: {what}: the certificate in `{}` expires in {} hours ({})",
                    pair.cert_file.display(),
                    left.as_secs() / 3600,
                    humantime::format_rfc3339_seconds(pair.info.not_after)
                ),
            ));
        }
        Some(ListenerTls {
            pair,
            client_ca,
            server: Built(server),
        })
    };
    let tls = one("tls", &raw.tls);
    let admin_tls = one("admin_tls", &raw.admin_tls);
    ((tls, admin_tls, warnings), errors)
}

/// A deployment's `tls`: optional CA file, server name and client pair; both client
/// configurations (HTTP/1.1 and HTTP/2 ALPN) built.
fn check_upstream_tls(d: &RawDeployment, file: &Path) -> Checked<Option<UpstreamTls>> {
    let mut errors = Vec::new();
    let Some(s) = &d.tls else {
        return (None, errors);
    };
    let Some(t) = &s.value else {
        return (None, errors);
    };
    let what = format!("deployments.{}.tls", d.name);
    let ca = match text(&t.ca_file) {
        None => None,
        Some((pos, name)) => match crate::tls::load_roots(&beside(file, name), "ca_file") {
            Ok(r) => Some(r),
            Err(e) => {
                errors.push(at(pos, format!("{what}: {e}")));
                None
            }
        },
    };
    let server_name = match text(&t.server_name) {
        None => None,
        Some((pos, name)) => {
            if rustls_pki_types::ServerName::try_from(name).is_err() {
                errors.push(at(
                    pos,
                    format!("{what}: server_name `{name}` is not a DNS name or IP address"),
                ));
            }
            Some(name.to_string())
        }
    };
    let client = check_pair(t, &what, file, SystemTime::now(), &mut errors);
    if !errors.is_empty() {
        return (None, errors);
    }
    let h1 = crate::tls::client_config(ca.as_ref(), client.as_ref(), b"http/1.1");
    let h2 = crate::tls::client_config(ca.as_ref(), client.as_ref(), b"h2");
    match (h1, h2) {
        (Ok(h1), Ok(h2)) => (
            Some(UpstreamTls {
                ca,
                server_name,
                client,
                h1: Built(h1),
                h2: Built(h2),
            }),
            errors,
        ),
        (Err(e), _) | (_, Err(e)) => {
            errors.push(at(s.key, format!("{what}: {e}")));
            (None, errors)
        }
    }
}

/// Headers the proxy itself manages: a deployment's `headers` may not set them.
const MANAGED_HEADERS: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "upgrade",
    "content-length",
];

/// A deployment's `headers` and `bearer_key_file`.
#[allow(clippy::type_complexity)]
fn check_upstream_headers(
    d: &RawDeployment,
    file: &Path,
) -> Checked<(Vec<(HeaderName, HeaderValue)>, Option<Bearer>)> {
    let mut errors = Vec::new();
    let path = format!("deployments.{}", d.name);
    let mut headers = Vec::new();
    let entries = d.headers.as_ref().and_then(|s| s.value.as_ref());
    for (name, pos, value) in entries.into_iter().flatten() {
        let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
            errors.push(at(
                *pos,
                format!("{path}.headers: `{name}` is not a valid header name"),
            ));
            continue;
        };
        if MANAGED_HEADERS.contains(&header.as_str()) {
            errors.push(at(
                *pos,
                format!(
                    "{path}.headers: `{name}` is set by the proxy itself and cannot be set here"
                ),
            ));
            continue;
        }
        let Some(value) = value else { continue };
        match HeaderValue::from_str(value) {
            Ok(mut v) => {
                if header == http::header::AUTHORIZATION {
                    v.set_sensitive(true);
                }
                headers.push((header, v));
            }
            Err(_) => errors.push(at(
                *pos,
                format!("{path}.headers.{name}: the value is not a valid header value"),
            )),
        }
    }
    let bearer = match text(&d.bearer_key_file) {
        None => None,
        Some((pos, name)) => {
            if headers
                .iter()
                .any(|(h, _)| h == http::header::AUTHORIZATION)
            {
                errors.push(at(
                    pos,
                    format!("{path}: `bearer_key_file` and an `authorization` header both set it: keep one"),
                ));
            }
            match read_bearer(&beside(file, name)) {
                Ok(b) => Some(b),
                Err(e) => {
                    errors.push(at(pos, format!("{path}: {e}")));
                    None
                }
            }
        }
    };
    ((headers, bearer), errors)
}

/// The key of a bearer key file: its content, surrounding blanks trimmed. Errors never show it.
fn read_bearer(path: &Path) -> Result<Bearer, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("bearer_key_file `{}` cannot be read: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let key = text.trim_start_matches('\u{feff}').trim();
    if key.is_empty() {
        return Err(format!("bearer_key_file `{}` is empty", path.display()));
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
        format!(
            "bearer_key_file `{}` holds characters a header cannot carry (one line of printable text expected)",
            path.display()
        )
    })?;
    value.set_sensitive(true);
    Ok(Bearer {
        file: path.to_path_buf(),
        value,
        digest: sha256(&bytes),
    })
}

struct Limits {
    max_request_body_bytes: u64,
    client_header_timeout: Duration,
    dns_refresh: Duration,
}

/// `max_request_body_bytes`, `client_header_timeout_ms`, `dns_refresh_ms`: their floors.
fn check_limits(raw: &RawFile) -> Checked<Option<Limits>> {
    let mut errors = Vec::new();
    let mut number = |key: &str, s: Option<&Setting<u64>>, default: u64, floor: u64| match s {
        None => Some(default),
        Some(s) => {
            let n = s.value?;
            if n < floor {
                errors.push(at(s.key, format!("{key} must be at least {floor}")));
                return None;
            }
            Some(n)
        }
    };
    let body = number(
        "max_request_body_bytes",
        raw.max_request_body_bytes.as_ref(),
        DEFAULT_MAX_REQUEST_BODY_BYTES,
        1,
    );
    let header = number(
        "client_header_timeout_ms",
        raw.client_header_timeout_ms.as_ref(),
        DEFAULT_CLIENT_HEADER_TIMEOUT_MS,
        1,
    );
    let dns = number(
        "dns_refresh_ms",
        raw.dns_refresh_ms.as_ref(),
        DEFAULT_DNS_REFRESH_MS,
        100,
    );
    let limits = match (body, header, dns) {
        (Some(body), Some(header), Some(dns)) => Some(Limits {
            max_request_body_bytes: body,
            client_header_timeout: Duration::from_millis(header),
            dns_refresh: Duration::from_millis(dns),
        }),
        _ => None,
    };
    (limits, errors)
}

/// `deployments`: at least one, each with a valid name, instances and request settings.
/// Weights are 0 here (see [`check_traffic`]).
fn check_deployments(raw: &RawFile, file: &Path) -> Checked<Vec<DeploymentConfig>> {
    let mut errors = Vec::new();
    let list = match &raw.deployments {
        None => {
            // An unknown key that suggested `deployments` already says it.
            if !raw.suggested.contains(&"deployments") {
                let message =
                    "`deployments` is missing: name at least one deployment with its `instances`";
                errors.push(at(Pos::START, message));
            }
            return (Vec::new(), errors);
        }
        Some(Setting { value: None, .. }) => return (Vec::new(), errors),
        Some(Setting {
            key,
            value: Some(list),
            ..
        }) => {
            if list.is_empty() {
                let message =
                    "`deployments` is empty: name at least one deployment with its `instances`";
                errors.push(at(*key, message));
            }
            list
        }
    };
    let deployments = list
        .iter()
        .map(|d| {
            let ((instances, grpc_instances), e) = check_instances(d);
            errors.extend(e);
            let (request, e) = check_request(d);
            errors.extend(e);
            let (tls, e) = check_upstream_tls(d, file);
            errors.extend(e);
            let ((headers, bearer), e) = check_upstream_headers(d, file);
            errors.extend(e);
            DeploymentConfig {
                name: d.name.clone(),
                weight: 0,
                instances,
                grpc_instances,
                request,
                tls,
                headers,
                bearer,
            }
        })
        .collect();
    (deployments, errors)
}

/// A deployment's name and its instances, REST and gRPC: `host:port` or `[v6]:port`, each once
/// per list. Either list may be absent, not both.
fn check_instances(d: &RawDeployment) -> Checked<(Vec<InstanceAddr>, Vec<InstanceAddr>)> {
    let mut errors = Vec::new();
    let name = &d.name;
    let ok_len = (3..=32).contains(&name.len());
    let ok_start = name.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !(ok_len && ok_start && ok_chars) {
        let message = format!(
            "deployment name `{name}` is invalid: use 3 to 32 characters, lowercase letters, \
             digits and `-`, starting with a letter"
        );
        errors.push(at(d.key, message));
    }
    if d.instances.is_none() && d.grpc_instances.is_some() {
        let (grpc, e) = check_list(d, "grpc_instances");
        errors.extend(e);
        return ((Vec::new(), grpc), errors);
    }
    match &d.instances {
        None if d.readable && !d.suggested.contains(&"instances") => {
            let message = format!(
                "deployment `{name}` has no `instances`: list its scoring servers as host:port"
            );
            errors.push(at(d.key, message));
        }
        _ => {}
    }
    let (instances, e) = check_list(d, "instances");
    errors.extend(e);
    let (grpc, e) = check_list(d, "grpc_instances");
    errors.extend(e);
    ((instances, grpc), errors)
}

/// One list of a deployment's instances (`instances` or `grpc_instances`): each address valid
/// and listed once.
fn check_list(d: &RawDeployment, list: &str) -> Checked<Vec<InstanceAddr>> {
    let name = &d.name;
    let mut errors = Vec::new();
    let mut instances: Vec<InstanceAddr> = Vec::new();
    let setting = if list == "instances" {
        &d.instances
    } else {
        &d.grpc_instances
    };
    match setting {
        None | Some(Setting { value: None, .. }) => {}
        Some(Setting {
            key,
            value: Some(items),
            ..
        }) => {
            if items.is_empty() {
                let message = format!("deployment `{name}` has an empty `{list}` list");
                errors.push(at(*key, message));
            }
            for item in items {
                let Some(inst) = item.text.as_deref() else {
                    continue;
                };
                match InstanceAddr::parse(inst) {
                    Err(why) => errors.push(at(item.at, format!("instance `{inst}`: {why}"))),
                    Ok(_) if instances.iter().any(|i| i.as_str() == inst) => {
                        let message =
                            format!("instance `{inst}` is listed twice in deployment `{name}`");
                        errors.push(at(item.at, message));
                    }
                    Ok(addr) => instances.push(addr),
                }
            }
        }
    }
    (instances, errors)
}

/// `request:` (or `request_settings:`): a timeout of at least 1 ms.
fn check_request(d: &RawDeployment) -> Checked<RequestSettings> {
    let mut errors = Vec::new();
    let mut s = RequestSettings::default();
    let Some((_, Setting { value: Some(r), .. })) = &d.request else {
        return (s, errors);
    };
    if let Some(Setting {
        key,
        value: Some(ms),
        ..
    }) = &r.request_timeout_ms
    {
        if *ms == 0 {
            errors.push(at(*key, "request_timeout_ms must be at least 1"));
        }
        s.request_timeout = Duration::from_millis(*ms);
    }
    if let Some(n) = r
        .max_concurrent_requests_per_instance
        .as_ref()
        .and_then(|s| s.value)
    {
        s.max_concurrent_per_instance = n;
    }
    if let Some(ms) = r.max_queue_wait_ms.as_ref().and_then(|s| s.value) {
        s.max_queue_wait = Duration::from_millis(ms);
    }
    (s, errors)
}

/// One warning per Azure ML key name, at its first occurrence in the file.
fn check_ignored(raw: &RawFile) -> Vec<Diagnostic> {
    let mut located = raw.ignored.clone();
    located.sort_by_key(|(_, p)| (p.line, p.column));
    let mut warned = BTreeSet::new();
    located
        .into_iter()
        .filter(|(key, _)| warned.insert(*key))
        .map(|(key, p)| {
            at(
                p,
                format!("`{key}` is an Azure ML setting that scoregate ignores"),
            )
        })
        .collect()
}

/// `traffic:`: weights 0–100 of deployments, summing to 100 or all 0. Sets the weights of
/// `deployments` and returns their `traffic:` order, and the all-0 warning apart.
fn check_traffic(
    raw: &RawFile,
    deployments: &mut [DeploymentConfig],
) -> Checked<(Vec<usize>, Vec<Diagnostic>)> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut order = Vec::new();
    let (entries, complete): (&[Percent], bool) = match &raw.traffic {
        None => (&[], true),
        Some(Setting { value: None, .. }) => (&[], false),
        Some(Setting { value: Some(p), .. }) => (&p.entries, p.complete),
    };
    let mut sum: i64 = 0;
    let mut in_range = true;
    for e in entries {
        let name = &e.name;
        match e.value {
            Some(w) if !(0..=100).contains(&w) => {
                let message =
                    format!("weight {w} of `{name}` is out of range: weights are 0 to 100");
                errors.push(at(e.key, message));
                in_range = false;
            }
            Some(w) => sum += w,
            None => {}
        }
        match deployments.iter().position(|d| &d.name == name) {
            Some(i) => {
                let w = e.value.unwrap_or(0).clamp(0, 100);
                deployments[i].weight = u8::try_from(w).unwrap_or(0);
                order.push(i);
            }
            None if has_deployments(raw) => {
                let message = format!(
                    "`traffic` names `{name}`, which is not a deployment (deployments: {})",
                    names(deployments)
                );
                errors.push(at(e.key, message));
            }
            None => {}
        }
    }
    let traffic_at = key_or_start(raw.traffic.as_ref());
    if complete && in_range && sum != 100 && sum != 0 {
        let detail: Vec<String> = entries
            .iter()
            .map(|e| format!("{}={}", e.name, e.value.unwrap_or(0)))
            .collect();
        let message = format!(
            "traffic weights sum to {sum} ({}); they must sum to exactly 100, or all be 0",
            detail.join(" + ")
        );
        errors.push(at(traffic_at, message));
    }
    if sum == 0 {
        let message =
            "no deployment takes traffic: unpinned requests get 503, pinned ones are served";
        warnings.push(at(traffic_at, message));
    }
    ((order, warnings), errors)
}

fn has_deployments(raw: &RawFile) -> bool {
    raw.deployments.as_ref().is_some_and(|s| s.value.is_some())
}

fn names(deployments: &[DeploymentConfig]) -> String {
    let names: Vec<&str> = deployments.iter().map(|d| d.name.as_str()).collect();
    names.join(", ")
}

/// Mirror targets at most (Azure ML allows one; users ask for more).
pub(crate) const MAX_MIRRORS: usize = 3;

/// `mirror_traffic`: up to [`MAX_MIRRORS`] deployments, each 0–100 percent and taking no live
/// traffic (0 turns one off). Runs after [`check_traffic`] (it reads the live weights).
fn check_mirror(raw: &RawFile, deployments: &[DeploymentConfig]) -> Checked<Vec<MirrorConfig>> {
    let mut errors = Vec::new();
    let mut mirrors = Vec::new();
    let Some(Setting {
        key,
        value: Some(p),
        ..
    }) = &raw.mirror_traffic
    else {
        return (mirrors, errors);
    };
    if p.entries.len() > MAX_MIRRORS {
        let message = format!(
            "mirror_traffic names {} deployments: mirror to {MAX_MIRRORS} at most",
            p.entries.len()
        );
        errors.push(at(*key, message));
        return (mirrors, errors);
    }
    for e in &p.entries {
        let name = &e.name;
        let mut ok = true;
        if let Some(pct) = e.value
            && !(0..=100).contains(&pct)
        {
            let message = format!("mirror percentage {pct} of `{name}` is out of range: 0 to 100");
            errors.push(at(e.key, message));
            ok = false;
        }
        match deployments.iter().find(|d| &d.name == name) {
            Some(d) if d.weight > 0 => {
                let message = format!(
                    "`{name}` takes {}% of live traffic: a mirror must be a deployment at 0% live weight",
                    d.weight
                );
                errors.push(at(e.key, message));
                ok = false;
            }
            Some(_) => {}
            None => {
                if has_deployments(raw) {
                    let message = format!(
                        "`mirror_traffic` names `{name}`, which is not a deployment (deployments: {})",
                        names(deployments)
                    );
                    errors.push(at(e.key, message));
                }
                ok = false;
            }
        }
        if let (true, Some(pct)) = (ok, e.value)
            && pct > 0
            && let Ok(percent) = u8::try_from(pct)
        {
            mirrors.push(MirrorConfig {
                deployment: name.clone(),
                percent,
            });
        }
    }
    (mirrors, errors)
}

/// `mirror_compare`: tolerances, ignored JSON pointers and the body bound (at least 1 byte).
/// Returns the comparison (none without the key) and the bound of mirrored request bodies.
fn check_compare(raw: &RawFile) -> Checked<(Option<CompareSettings>, u64)> {
    let mut errors = Vec::new();
    let Some(s) = &raw.mirror_compare else {
        return ((None, DEFAULT_MIRROR_MAX_BODY_BYTES), errors);
    };
    let Some(c) = &s.value else {
        return ((None, DEFAULT_MIRROR_MAX_BODY_BYTES), errors);
    };
    let mut out = CompareSettings::default();
    let mut copy_bound = DEFAULT_MIRROR_MAX_BODY_BYTES;
    if let Some(v) = c.abs_tolerance.as_ref().and_then(|s| s.value) {
        out.abs_tolerance = v;
    }
    if let Some(v) = c.rel_tolerance.as_ref().and_then(|s| s.value) {
        out.rel_tolerance = v;
    }
    if let Some(Setting {
        key,
        value: Some(n),
    }) = &c.max_body_bytes
    {
        if *n == 0 {
            errors.push(at(*key, "mirror_compare.max_body_bytes must be at least 1"));
        }
        out.max_body_bytes = usize::try_from(*n).unwrap_or(usize::MAX);
        copy_bound = *n;
    }
    if c.ignore.is_some() {
        // Written: exactly what it lists (`ignore: []` ignores nothing).
        out.ignore.clear();
    }
    for item in c.ignore.iter().flat_map(|s| s.value.iter().flatten()) {
        match &item.text {
            Some(p) if p.starts_with('/') => out.ignore.push(p.clone()),
            Some(p) => errors.push(at(
                item.at,
                format!("mirror_compare.ignore: `{p}` is not a JSON pointer (they start with `/`, like /model_version)"),
            )),
            None => {}
        }
    }
    ((Some(out), copy_bound), errors)
}

/// `access_log`: a path (`-`: standard output), `json` or `text`, a share from 0 to 1. A
/// directory that does not exist is a warning: the proxy serves anyway and counts the lines
/// it cannot write.
fn check_access_log(
    raw: &RawFile,
    file: &Path,
) -> Checked<(Option<AccessLogConfig>, Option<Diagnostic>)> {
    let mut errors = Vec::new();
    let Some(Setting {
        key,
        value: Some(a),
    }) = &raw.access_log
    else {
        return ((None, None), errors);
    };
    let mut warning = None;
    let path = match &a.path {
        // A misspelt `path` was reported with its suggestion.
        None if a.suggested.contains(&"path") => None,
        None => {
            errors.push(at(
                *key,
                "access_log needs `path:` (a file, or \"-\" for standard output)",
            ));
            None
        }
        Some(Setting { value: None, .. }) => None,
        Some(Setting {
            key,
            value: Some(p),
        }) => {
            let p = p.trim();
            if p.is_empty() {
                errors.push(at(*key, "access_log.path is empty"));
                None
            } else if p == "-" {
                Some(PathBuf::from("-"))
            } else {
                let resolved = beside(file, p);
                if let Some(dir) = resolved.parent()
                    && !dir.as_os_str().is_empty()
                    && !dir.is_dir()
                {
                    warning = Some(at(
                        *key,
                        format!(
                            "access_log.path: directory {} does not exist; lines are dropped (and counted) until it does",
                            dir.display()
                        ),
                    ));
                }
                Some(resolved)
            }
        }
    };
    let format = match a.format.as_ref().map(|s| (s.key, s.value.as_deref())) {
        None | Some((_, None)) => LogFormat::Json,
        Some((_, Some("json"))) => LogFormat::Json,
        Some((_, Some("text"))) => LogFormat::Text,
        Some((pos, Some(other))) => {
            errors.push(at(
                pos,
                format!("access_log.format: `{other}` is not a format; use json or text"),
            ));
            LogFormat::Json
        }
    };
    let sample = match &a.sample {
        Some(Setting {
            key,
            value: Some(v),
        }) => {
            if *v > 1.0 {
                errors.push(at(
                    *key,
                    format!(
                        "access_log.sample: {v} is not a share; use 0 to 1 (1 logs every request)"
                    ),
                ));
            }
            *v
        }
        _ => 1.0,
    };
    let log_query = a.log_query.as_ref().and_then(|s| s.value).unwrap_or(false);
    let config = path.map(|path| AccessLogConfig {
        path,
        format,
        sample,
        log_query,
    });
    ((config, warning), errors)
}

/// `otlp_endpoint`: an `http://host:port` address of an OTLP/gRPC receiver.
fn check_otlp(raw: &RawFile) -> Checked<Option<String>> {
    let mut errors = Vec::new();
    let Some(Setting {
        key,
        value: Some(v),
    }) = &raw.otlp_endpoint
    else {
        return (None, errors);
    };
    let v = v.trim();
    match v.parse::<http::Uri>() {
        Ok(uri) if uri.scheme_str() == Some("http") && uri.authority().is_some() => {
            return (Some(v.trim_end_matches('/').to_string()), errors);
        }
        _ => errors.push(at(
            *key,
            format!("otlp_endpoint: `{v}` is not an OTLP/gRPC address like http://127.0.0.1:4317"),
        )),
    }
    (None, errors)
}
