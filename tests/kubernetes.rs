//! The Kubernetes deployment (`deploy/`), proven without a cluster:
//!
//! - the manifests are read with a small kustomize of their own (resources, the ConfigMap
//!   generator, delete patches, images, namespace) and checked against each other and against
//!   the real binary: selectors and labels, ports, probe paths, the ConfigMap volume, the
//!   endpoint file (`scoregate check`), the scoring servers' and the proxy's arguments, the
//!   Dockerfile;
//! - the canary overlays follow the seeds' flow (`config/step-*.yaml`);
//! - when `kubectl` is installed, `kubectl kustomize` renders the same objects and passes the
//!   same checks;
//! - the kubelet's ConfigMap volume update (timestamped directory, `..data` symlink swap, old
//!   directory removed) reaches two running replicas reading one file, without a failed request.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde::Deserialize;
use serde_yaml::Value;
use sha2::Digest;

// ---------------------------------------------------------------------------------------------
// A small kustomize: enough of it for deploy/, and a failure for anything it does not know.
// ---------------------------------------------------------------------------------------------

/// Every YAML document of `text`, without empty ones.
fn documents(text: &str, origin: &Path) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| {
            Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: not valid YAML: {e}", origin.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn s<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, found {v:?}"))
}

fn kind(o: &Value) -> &str {
    s(&o["kind"], "kind")
}

fn name(o: &Value) -> &str {
    s(&o["metadata"]["name"], "metadata.name")
}

fn id(o: &Value) -> String {
    format!("{}/{}", kind(o), name(o))
}

/// A string map (`labels`, `matchLabels`, `selector`, `data`, `annotations`); empty when absent.
fn string_map(v: &Value) -> BTreeMap<String, String> {
    match v.as_mapping() {
        None => BTreeMap::new(),
        Some(m) => m
            .iter()
            .map(|(k, v)| {
                let val = match v {
                    Value::String(s) => s.clone(),
                    other => panic!("{k:?}: expected a string value, found {other:?}"),
                };
                (s(k, "key").to_string(), val)
            })
            .collect(),
    }
}

fn subset(small: &BTreeMap<String, String>, big: &BTreeMap<String, String>) -> bool {
    small.iter().all(|(k, v)| big.get(k) == Some(v))
}

/// What a kustomization renders to, and the files it read.
struct Rendering {
    dir: PathBuf,
    objects: Vec<Value>,
    files: BTreeSet<PathBuf>,
}

const KNOWN_KUSTOMIZATION_KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "namespace",
    "resources",
    "generatorOptions",
    "configMapGenerator",
    "patches",
    "images",
];

fn render(dir: &Path) -> Rendering {
    let dir = dir
        .canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let kpath = dir.join("kustomization.yaml");
    let k = documents(&read(&kpath), &kpath).pop().unwrap();
    let mut files = BTreeSet::from([kpath.clone()]);
    for key in k.as_mapping().unwrap().keys() {
        let key = s(key, "kustomization key");
        assert!(
            KNOWN_KUSTOMIZATION_KEYS.contains(&key),
            "{}: `{key}` is not understood by this test's kustomize reading; extend the test",
            kpath.display()
        );
    }
    let mut objects: Vec<Value> = Vec::new();
    for r in k["resources"].as_sequence().into_iter().flatten() {
        let path = dir.join(s(r, "resources entry"));
        assert!(
            path.exists(),
            "{}: resource {} does not exist",
            kpath.display(),
            path.display()
        );
        if path.is_dir() {
            let sub = render(&path);
            objects.extend(sub.objects);
            files.extend(sub.files);
        } else {
            for o in documents(&read(&path), &path) {
                assert!(
                    o["apiVersion"].is_string() && o["kind"].is_string(),
                    "{}: a document without apiVersion or kind",
                    path.display()
                );
                assert!(
                    o["metadata"]["name"].is_string(),
                    "{}: a {} without metadata.name",
                    path.display(),
                    kind(&o)
                );
                objects.push(o);
            }
            files.insert(path.canonicalize().unwrap());
        }
    }
    if let Some(gens) = k["configMapGenerator"].as_sequence() {
        assert_eq!(
            k["generatorOptions"]["disableNameSuffixHash"].as_bool(),
            Some(true),
            "{}: the generated ConfigMap must keep its name (generatorOptions: \
             disableNameSuffixHash: true): a hash suffix would restart every pod on a weights \
             change instead of updating the mounted file",
            kpath.display()
        );
        for g in gens {
            let cm_name = s(&g["name"], "configMapGenerator name");
            let mut data = serde_yaml::Mapping::new();
            for f in g["files"].as_sequence().into_iter().flatten() {
                let f = s(f, "configMapGenerator file");
                let (key, rel) = f
                    .split_once('=')
                    .unwrap_or((Path::new(f).file_name().unwrap().to_str().unwrap(), f));
                let path = dir.join(rel);
                data.insert(key.into(), read(&path).into());
                files.insert(path.canonicalize().unwrap());
            }
            assert!(
                g["literals"].is_null() && g["envs"].is_null(),
                "{}: only `files` is understood in configMapGenerator",
                kpath.display()
            );
            let existing = objects
                .iter()
                .position(|o| kind(o) == "ConfigMap" && name(o) == cm_name);
            match g["behavior"].as_str().unwrap_or("create") {
                "create" => {
                    assert!(existing.is_none(), "ConfigMap {cm_name} created twice");
                    let mut cm = serde_yaml::Mapping::new();
                    cm.insert("apiVersion".into(), "v1".into());
                    cm.insert("kind".into(), "ConfigMap".into());
                    let mut meta = serde_yaml::Mapping::new();
                    meta.insert("name".into(), cm_name.into());
                    cm.insert("metadata".into(), meta.into());
                    cm.insert("data".into(), data.into());
                    objects.push(cm.into());
                }
                "replace" => {
                    let i = existing.unwrap_or_else(|| {
                        panic!(
                            "{}: replaces a ConfigMap {cm_name} that the resources do not have",
                            kpath.display()
                        )
                    });
                    objects[i]["data"] = data.into();
                }
                other => panic!(
                    "{}: configMapGenerator behavior {other} not understood",
                    kpath.display()
                ),
            }
        }
    }
    for p in k["patches"].as_sequence().into_iter().flatten() {
        let text = s(&p["patch"], "inline patch");
        let patch = documents(text, &kpath).pop().unwrap();
        assert_eq!(
            patch["$patch"].as_str(),
            Some("delete"),
            "{}: only `$patch: delete` patches are understood",
            kpath.display()
        );
        let before = objects.len();
        objects.retain(|o| !(kind(o) == kind(&patch) && name(o) == name(&patch)));
        assert_eq!(
            before - 1,
            objects.len(),
            "{}: the delete patch of {} matches nothing",
            kpath.display(),
            id(&patch)
        );
    }
    for img in k["images"].as_sequence().into_iter().flatten() {
        let from = s(&img["name"], "images name");
        let to = format!(
            "{}:{}",
            img["newName"].as_str().unwrap_or(from),
            s(&img["newTag"], "images newTag")
        );
        for o in objects.iter_mut().filter(|o| kind(o) == "Deployment") {
            let containers = o["spec"]["template"]["spec"]["containers"]
                .as_sequence_mut()
                .unwrap();
            for c in containers {
                let image = s(&c["image"], "image");
                if image.split(':').next() == Some(from) {
                    c["image"] = to.clone().into();
                }
            }
        }
    }
    if let Some(ns) = k["namespace"].as_str() {
        for o in objects.iter_mut().filter(|o| kind(o) != "Namespace") {
            o["metadata"]["namespace"] = ns.into();
        }
    }
    Rendering {
        dir,
        objects,
        files,
    }
}

fn deploy() -> PathBuf {
    repo_path("deploy")
}

/// deploy/base and every overlay, sorted by name.
fn kustomizations() -> Vec<PathBuf> {
    let mut dirs = vec![deploy().join("base")];
    dirs.extend(overlays());
    dirs
}

fn overlays() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(deploy().join("overlays"))
        .expect("deploy/overlays")
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 3, "too few overlays: {dirs:?}");
    dirs
}

// ---------------------------------------------------------------------------------------------
// The checks of one rendering.
// ---------------------------------------------------------------------------------------------

fn pod_spec(d: &Value) -> &Value {
    &d["spec"]["template"]["spec"]
}

fn pod_labels(d: &Value) -> BTreeMap<String, String> {
    string_map(&d["spec"]["template"]["metadata"]["labels"])
}

fn containers(d: &Value) -> &[Value] {
    pod_spec(d)["containers"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{}: no containers", id(d)))
}

fn args(c: &Value) -> Vec<String> {
    c["args"]
        .as_sequence()
        .map(|a| a.iter().map(|v| s(v, "args entry").to_string()).collect())
        .unwrap_or_default()
}

/// The value following `flag` in `args`.
fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(|s| s.as_str())
}

fn port_number(v: &Value) -> Option<u16> {
    v.as_u64().map(|n| u16::try_from(n).unwrap())
}

/// The container port a Service `targetPort` or a probe `port` stands for (by number or by
/// name); panics when the container does not declare it.
fn resolve_port(c: &Value, port: &Value, what: &str) -> u16 {
    let ports = c["ports"].as_sequence().cloned().unwrap_or_default();
    let found = match port {
        Value::Number(_) => ports
            .iter()
            .find(|p| port_number(&p["containerPort"]) == port_number(port)),
        Value::String(n) => ports.iter().find(|p| p["name"].as_str() == Some(n)),
        _ => None,
    };
    let p = found.unwrap_or_else(|| {
        panic!(
            "{what}: port {port:?} is not a port of container {}",
            c["name"].as_str().unwrap_or("?")
        )
    });
    port_number(&p["containerPort"]).unwrap()
}

fn socket_port(addr: &str, what: &str) -> u16 {
    addr.parse::<SocketAddr>()
        .unwrap_or_else(|e| panic!("{what} `{addr}`: {e}"))
        .port()
}

/// The endpoint file as the proxy's Deployment mounts it.
struct Endpoint {
    text: String,
    yaml: Value,
    listen: u16,
    admin: u16,
}

impl Endpoint {
    fn parse(text: &str, origin: &Path) -> Endpoint {
        let yaml = documents(text, origin).pop().unwrap();
        let listen_addr = s(&yaml["listen"], "listen");
        let admin_addr = s(&yaml["admin_listen"], "admin_listen");
        for (key, addr) in [("listen", listen_addr), ("admin_listen", admin_addr)] {
            let ip = addr.parse::<SocketAddr>().unwrap().ip();
            assert!(
                ip.is_unspecified(),
                "{}: {key} {addr} is not reachable from outside the pod (probes, Service): use 0.0.0.0",
                origin.display()
            );
        }
        Endpoint {
            listen: socket_port(listen_addr, "listen"),
            admin: socket_port(admin_addr, "admin_listen"),
            text: text.to_string(),
            yaml,
        }
    }

    /// `traffic:` in file order.
    fn traffic(&self) -> Vec<(String, u64)> {
        self.yaml["traffic"]
            .as_mapping()
            .unwrap()
            .iter()
            .map(|(k, v)| (s(k, "traffic key").to_string(), v.as_u64().unwrap()))
            .collect()
    }

    fn weight(&self, deployment: &str) -> u64 {
        self.traffic()
            .into_iter()
            .find(|(n, _)| n == deployment)
            .map_or(0, |(_, w)| w)
    }

    fn deployments(&self) -> BTreeMap<String, Vec<String>> {
        self.yaml["deployments"]
            .as_mapping()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                let inst = v["instances"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .map(|i| s(i, "instance").to_string())
                    .collect();
                (s(k, "deployment").to_string(), inst)
            })
            .collect()
    }
}

/// What the checks of a rendering found, for the checks that span renderings.
struct Checked {
    endpoint: Endpoint,
    /// The scoring Deployments' container args and probe paths.
    scoring: Vec<(Vec<String>, BTreeSet<String>)>,
    /// The proxy container's args.
    proxy_args: Vec<String>,
    proxy_ports: BTreeSet<u16>,
    run_as_user: BTreeSet<u64>,
    images: BTreeSet<String>,
}

fn the_one<'a>(objects: &'a [Value], what: &str, pred: impl Fn(&Value) -> bool) -> &'a Value {
    let found: Vec<&Value> = objects.iter().filter(|o| pred(o)).collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {what}, found {:?}",
        found.iter().map(|o| id(o)).collect::<Vec<_>>()
    );
    found[0]
}

fn check_rendering(label: &str, objects: &[Value]) -> Checked {
    let of_kind = |k: &str| -> Vec<&Value> { objects.iter().filter(|o| kind(o) == k).collect() };
    let deployments = of_kind("Deployment");
    let services = of_kind("Service");

    // One namespace, and everything in it.
    let ns = of_kind("Namespace");
    assert_eq!(ns.len(), 1, "{label}: one Namespace");
    let ns = name(ns[0]);
    for o in objects.iter().filter(|o| kind(o) != "Namespace") {
        assert_eq!(
            o["metadata"]["namespace"].as_str(),
            Some(ns),
            "{label}: {} is not in namespace {ns}",
            id(o)
        );
    }
    let ids: Vec<String> = objects.iter().map(id).collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "{label}: an object twice: {ids:?}");

    // Deployments: selector within the pod labels, selecting no other Deployment's pods.
    for d in &deployments {
        let sel = string_map(&d["spec"]["selector"]["matchLabels"]);
        assert!(!sel.is_empty(), "{label}: {} has no selector", id(d));
        assert!(
            subset(&sel, &pod_labels(d)),
            "{label}: {} selector {sel:?} is not within its pod labels {:?}",
            id(d),
            pod_labels(d)
        );
        let matching: Vec<_> = deployments
            .iter()
            .filter(|o| subset(&sel, &pod_labels(o)))
            .map(|o| id(o))
            .collect();
        assert_eq!(
            matching,
            vec![id(d)],
            "{label}: {} selector overlaps other Deployments' pods",
            id(d)
        );
        for c in containers(d) {
            for (what, key) in [("requests", "requests"), ("limits", "limits")] {
                for res in ["cpu", "memory"] {
                    assert!(
                        !c["resources"][key][res].is_null(),
                        "{label}: {} has no {what}.{res}",
                        id(d)
                    );
                }
            }
            let sc = &c["securityContext"];
            let pod_sc = &pod_spec(d)["securityContext"];
            assert!(
                sc["runAsNonRoot"].as_bool() == Some(true)
                    || pod_sc["runAsNonRoot"].as_bool() == Some(true),
                "{label}: {} must run as non-root",
                id(d)
            );
            assert_eq!(
                sc["readOnlyRootFilesystem"].as_bool(),
                Some(true),
                "{label}: {} readOnlyRootFilesystem",
                id(d)
            );
            assert_eq!(
                sc["allowPrivilegeEscalation"].as_bool(),
                Some(false),
                "{label}: {} allowPrivilegeEscalation",
                id(d)
            );
        }
    }

    // Services: each selects the pods of exactly one Deployment, on ports its container has.
    let selected = |svc: &Value| -> &Value {
        let sel = string_map(&svc["spec"]["selector"]);
        assert!(!sel.is_empty(), "{label}: {} has no selector", id(svc));
        let m: Vec<&&Value> = deployments
            .iter()
            .filter(|d| subset(&sel, &pod_labels(d)))
            .collect();
        assert_eq!(
            m.len(),
            1,
            "{label}: {} selector {sel:?} matches {} Deployments",
            id(svc),
            m.len()
        );
        m[0]
    };
    // The container port a Service port reaches.
    let target = |svc: &Value, port: &Value| -> u16 {
        let d = selected(svc);
        let tp = if port["targetPort"].is_null() {
            &port["port"]
        } else {
            &port["targetPort"]
        };
        resolve_port(&containers(d)[0], tp, &format!("{label}: {}", id(svc)))
    };
    for svc in &services {
        for p in svc["spec"]["ports"].as_sequence().unwrap() {
            target(svc, p);
        }
    }

    // The proxy: `scoregate run --config PATH` on a ConfigMap mounted as a directory.
    let proxy = the_one(objects, "scoregate Deployment (args `run`)", |o| {
        kind(o) == "Deployment"
            && containers(o)
                .iter()
                .any(|c| args(c).first().map(String::as_str) == Some("run"))
    });
    assert!(
        proxy["spec"]["replicas"].as_u64().unwrap_or(1) >= 2,
        "{label}: the proxy runs as several replicas"
    );
    let pc = containers(proxy)
        .iter()
        .find(|c| args(c).first().map(String::as_str) == Some("run"))
        .unwrap();
    let proxy_args = args(pc);
    let config = flag(&proxy_args, "--config").expect("run --config PATH");
    let mounts = pc["volumeMounts"].as_sequence().expect("volumeMounts");
    let mount = mounts
        .iter()
        .find(|m| Path::new(config).parent() == Some(Path::new(s(&m["mountPath"], "mountPath"))))
        .unwrap_or_else(|| {
            panic!("{label}: --config {config} is not directly inside a mounted volume")
        });
    let vol_name = s(&mount["name"], "volumeMount name");
    for m in mounts
        .iter()
        .filter(|m| m["name"].as_str() == Some(vol_name))
    {
        assert!(
            m["subPath"].is_null() && m["subPathExpr"].is_null(),
            "{label}: the endpoint volume is mounted with subPath: such a mount never gets ConfigMap updates"
        );
    }
    let volume = pod_spec(proxy)["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str() == Some(vol_name))
        .unwrap_or_else(|| panic!("{label}: no volume {vol_name}"));
    assert!(
        volume["configMap"]["items"].is_null(),
        "{label}: keep the whole ConfigMap in the volume (no items)"
    );
    let cm_name = s(&volume["configMap"]["name"], "configMap volume name");
    let cm = the_one(objects, &format!("ConfigMap {cm_name}"), |o| {
        kind(o) == "ConfigMap" && name(o) == cm_name
    });
    let key = Path::new(config).file_name().unwrap().to_str().unwrap();
    let text = cm["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("{label}: ConfigMap {cm_name} has no key {key}"));
    let endpoint = Endpoint::parse(text, Path::new(&format!("{label}: ConfigMap {cm_name}")));

    // Drain: preStop sleep + --drain-timeout within the grace period.
    let drain: u64 = flag(&proxy_args, "--drain-timeout").map_or(30, |d| {
        d.parse()
            .unwrap_or_else(|_| panic!("{label}: --drain-timeout {d}: whole seconds"))
    });
    let pre_stop = pc["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap_or(0);
    let grace = pod_spec(proxy)["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap_or(30);
    assert!(
        pre_stop + drain < grace,
        "{label}: preStop {pre_stop} s + drain {drain} s must end before the grace period of {grace} s"
    );

    // Ports: the container's, the probes', the annotations' and the Service's agree with the file.
    let proxy_ports: BTreeSet<u16> = pc["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| port_number(&p["containerPort"]).unwrap())
        .collect();
    assert_eq!(
        proxy_ports,
        BTreeSet::from([endpoint.listen, endpoint.admin]),
        "{label}: container ports vs the endpoint file's listen and admin_listen"
    );
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &pc[probe]["httpGet"];
        assert_eq!(
            get["path"].as_str(),
            Some(path),
            "{label}: proxy {probe} path"
        );
        assert_eq!(
            resolve_port(pc, &get["port"], probe),
            endpoint.admin,
            "{label}: proxy {probe} port is not admin_listen's"
        );
    }
    let ann = string_map(&proxy["spec"]["template"]["metadata"]["annotations"]);
    assert_eq!(
        ann.get("prometheus.io/scrape").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        ann.get("prometheus.io/path").map(String::as_str),
        Some("/metrics")
    );
    assert_eq!(
        ann.get("prometheus.io/port"),
        Some(&endpoint.admin.to_string()),
        "{label}: prometheus.io/port is not admin_listen's port"
    );
    let proxy_svc = the_one(objects, "Service of the proxy", |o| {
        kind(o) == "Service" && std::ptr::eq(selected(o), proxy)
    });
    let svc_ports = proxy_svc["spec"]["ports"].as_sequence().unwrap();
    let svc_port = |n: &str| {
        svc_ports
            .iter()
            .find(|p| p["name"].as_str() == Some(n))
            .unwrap_or_else(|| panic!("{label}: the proxy Service has no port {n}"))
    };
    assert_eq!(target(proxy_svc, svc_port("http")), endpoint.listen);
    assert_eq!(target(proxy_svc, svc_port("admin")), endpoint.admin);

    // The ServiceMonitor scrapes the admin port of the proxy Service, keeping `instance`.
    let sm = the_one(objects, "ServiceMonitor", |o| kind(o) == "ServiceMonitor");
    assert_eq!(
        s(&sm["apiVersion"], "apiVersion"),
        "monitoring.coreos.com/v1"
    );
    let sel = string_map(&sm["spec"]["selector"]["matchLabels"]);
    let picked: Vec<String> = services
        .iter()
        .filter(|svc| !sel.is_empty() && subset(&sel, &string_map(&svc["metadata"]["labels"])))
        .map(|svc| id(svc))
        .collect();
    assert_eq!(
        picked,
        vec![id(proxy_svc)],
        "{label}: ServiceMonitor selects {picked:?}"
    );
    let eps = sm["spec"]["endpoints"].as_sequence().unwrap();
    assert!(!eps.is_empty());
    for ep in eps {
        let port = s(&ep["port"], "ServiceMonitor endpoint port");
        assert_eq!(target(proxy_svc, svc_port(port)), endpoint.admin);
        assert_eq!(ep["path"].as_str(), Some("/metrics"));
        assert_eq!(
            ep["honorLabels"].as_bool(),
            Some(true),
            "{label}: honorLabels"
        );
    }

    // The scoring Deployments: one per deployment of the file, reached through headless Services
    // named as the file's instances.
    let scoring: Vec<&Value> = deployments
        .iter()
        .copied()
        .filter(|d| {
            containers(d)
                .iter()
                .any(|c| args(c).first().map(String::as_str) == Some("score-server"))
        })
        .collect();
    let mut served = BTreeSet::new();
    for (dep, instances) in endpoint.deployments() {
        for inst in instances {
            let (host, port) = inst.rsplit_once(':').unwrap();
            let port: u16 = port.parse().unwrap();
            let svc = the_one(objects, &format!("Service named as instance {inst}"), |o| {
                kind(o) == "Service" && name(o) == host
            });
            assert_eq!(
                svc["spec"]["clusterIP"].as_str(),
                Some("None"),
                "{label}: Service {host} must be headless, so that its name resolves to every pod"
            );
            let p = svc["spec"]["ports"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|p| port_number(&p["port"]) == Some(port))
                .unwrap_or_else(|| {
                    panic!("{label}: Service {host} has no port {port} (instance {inst})")
                });
            let d = selected(svc);
            assert!(
                scoring.iter().any(|s| std::ptr::eq(*s, d)),
                "{label}: instance {inst} of {dep} does not reach a scoring Deployment"
            );
            let c = &containers(d)[0];
            let a = args(c);
            assert_eq!(
                flag(&a, "--name"),
                Some(dep.as_str()),
                "{label}: {} --name",
                id(d)
            );
            let listen = flag(&a, "--listen").expect("score-server --listen");
            let cport = target(svc, p);
            assert_eq!(
                socket_port(listen, "--listen"),
                cport,
                "{label}: {} --listen",
                id(d)
            );
            assert!(listen.parse::<SocketAddr>().unwrap().ip().is_unspecified());
            let model = match dep.as_str() {
                "blue" => Some("v1"),
                "green" => Some("v2"),
                _ => None,
            };
            if model.is_some() {
                assert_eq!(flag(&a, "--model"), model, "{label}: {} --model", id(d));
            }
            served.insert(id(d));
        }
    }
    let all_scoring: BTreeSet<String> = scoring.iter().map(|d| id(d)).collect();
    assert_eq!(
        served, all_scoring,
        "{label}: every scoring Deployment is a deployment of the endpoint file, and back"
    );
    let scoring_found = scoring
        .iter()
        .map(|d| {
            let c = &containers(d)[0];
            let mut paths = BTreeSet::new();
            for probe in ["readinessProbe", "livenessProbe"] {
                let get = &c[probe]["httpGet"];
                if get.is_null() {
                    assert!(
                        !c[probe]["tcpSocket"].is_null(),
                        "{label}: {} has no {probe}",
                        id(d)
                    );
                    continue;
                }
                let a = args(c);
                let listen = socket_port(flag(&a, "--listen").unwrap(), "--listen");
                assert_eq!(resolve_port(c, &get["port"], probe), listen);
                paths.insert(s(&get["path"], "probe path").to_string());
            }
            (args(c), paths)
        })
        .collect();

    let mut run_as_user = BTreeSet::new();
    let mut images = BTreeSet::new();
    for d in &deployments {
        for c in containers(d) {
            images.insert(s(&c["image"], "image").to_string());
            for sc in [&c["securityContext"], &pod_spec(d)["securityContext"]] {
                if let Some(u) = sc["runAsUser"].as_u64() {
                    run_as_user.insert(u);
                }
            }
        }
    }
    assert_eq!(
        images.len(),
        1,
        "{label}: one image, one binary: {images:?}"
    );

    Checked {
        endpoint,
        scoring: scoring_found,
        proxy_args,
        proxy_ports,
        run_as_user,
        images,
    }
}

fn check_file(text: &str) -> (i32, String, String) {
    let (_dir, path) = temp_file("endpoint.yaml", text);
    run_cli(&["check", path.to_str().unwrap()])
}

// ---------------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------------

/// Every kustomization renders, its objects agree with each other, and its endpoint file passes
/// `scoregate check` without a warning. Every YAML file under deploy/ is used by one of them.
#[test]
fn manifests_agree_with_each_other() {
    let mut used = BTreeSet::new();
    for dir in kustomizations() {
        let r = render(&dir);
        let label = r
            .dir
            .strip_prefix(repo_path(""))
            .unwrap()
            .display()
            .to_string();
        let checked = check_rendering(&label, &r.objects);
        let (code, out, err) = check_file(&checked.endpoint.text);
        assert_eq!(code, 0, "{label}: scoregate check failed:\n{err}");
        assert!(out.contains("valid"), "{label}: {out}");
        assert!(
            err.trim().is_empty(),
            "{label}: scoregate check warns:\n{err}"
        );
        used.extend(r.files);
    }
    let mut stack = vec![deploy()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                let p = p.canonicalize().unwrap();
                // Parses, and is part of a kustomization (not a forgotten manifest).
                documents(&read(&p), &p);
                assert!(
                    used.contains(&p),
                    "{} is used by no kustomization",
                    p.display()
                );
            }
        }
    }
}

/// The overlays are the seeds' canary flow, step for step as config/step-*.yaml: the same
/// deployments and weights, green only gaining and blue only losing, green absent at the start
/// and blue at the end; each overlay's endpoint.yaml is what its ConfigMap carries.
#[test]
fn overlays_follow_the_canary_flow() {
    let mut greens = Vec::new();
    let mut blues = Vec::new();
    let dirs = overlays();
    for dir in &dirs {
        let step = dir.file_name().unwrap().to_str().unwrap();
        let r = render(dir);
        let checked = check_rendering(step, &r.objects);
        let file = read(&dir.join("endpoint.yaml"));
        assert_eq!(
            checked.endpoint.text, file,
            "{step}: the ConfigMap does not carry the overlay's endpoint.yaml"
        );
        let twin_path = repo_path(&format!("config/{step}.yaml"));
        assert!(
            twin_path.exists(),
            "{step}: no config/{step}.yaml: the overlays mirror config/'s steps"
        );
        let twin = documents(&read(&twin_path), &twin_path).pop().unwrap();
        let ours = &checked.endpoint;
        let twin_traffic: Vec<(String, u64)> = twin["traffic"]
            .as_mapping()
            .unwrap()
            .iter()
            .map(|(k, v)| (s(k, "").to_string(), v.as_u64().unwrap()))
            .collect();
        assert_eq!(
            ours.traffic(),
            twin_traffic,
            "{step}: weights differ from config/{step}.yaml"
        );
        let twin_deps: BTreeSet<String> = twin["deployments"]
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| s(k, "").to_string())
            .collect();
        let our_deps: BTreeSet<String> = ours.deployments().into_keys().collect();
        assert_eq!(
            our_deps, twin_deps,
            "{step}: deployments differ from config/{step}.yaml"
        );
        greens.push(ours.weight("green"));
        blues.push(ours.weight("blue"));
        if dir == dirs.first().unwrap() {
            assert!(
                !our_deps.contains("green"),
                "{step}: the flow starts with blue alone"
            );
        }
        if dir == dirs.last().unwrap() {
            assert!(
                !our_deps.contains("blue"),
                "{step}: the flow ends with blue deleted"
            );
        }
    }
    assert!(
        greens.windows(2).all(|w| w[0] <= w[1]),
        "green's weights {greens:?}"
    );
    assert!(
        blues.windows(2).all(|w| w[0] >= w[1]),
        "blue's weights {blues:?}"
    );
    assert!(
        greens.iter().any(|&g| g > 0 && g < 100),
        "a step gives green a share of the live traffic: {greens:?}"
    );
    assert!(
        greens.windows(2).any(|w| w[0] == 0 && w[1] == 0),
        "a step deploys green at 0% (tested by pin) before it takes traffic: {greens:?}"
    );
}

/// The Dockerfile builds the one binary in a builder stage and runs it as a numeric non-root
/// user, exposing the ports the manifests use.
#[test]
fn dockerfile_is_multi_stage_non_root_and_exposes_the_ports() {
    let text = read(&deploy().join("Dockerfile")).replace("\\\n", " ");
    let lines: Vec<(String, String)> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (i, rest) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            (i.to_uppercase(), rest.trim().to_string())
        })
        .collect();
    let froms: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].0 == "FROM").collect();
    assert!(froms.len() >= 2, "multi-stage: {} FROM", froms.len());
    let builder = lines[froms[0]].1.split_whitespace().collect::<Vec<_>>();
    assert!(builder[0].starts_with("rust:"), "builder {builder:?}");
    assert!(builder.len() == 3 && builder[1].eq_ignore_ascii_case("as"));
    let stage = builder[2];
    let build_stage = &lines[froms[0]..froms[1]];
    assert!(
        build_stage
            .iter()
            .any(|(i, r)| i == "RUN" && r.contains("cargo build --release --locked")),
        "the builder runs cargo build --release --locked"
    );
    let runtime = &lines[*froms.last().unwrap()..];
    let base = &runtime[0].1;
    assert!(
        base.starts_with("gcr.io/distroless/") || base.contains("-slim"),
        "small runtime image: {base}"
    );
    let bin = "/usr/local/bin/scoregate";
    assert!(
        runtime.iter().any(|(i, r)| i == "COPY"
            && r.starts_with(&format!("--from={stage} "))
            && r.contains("target/release/scoregate")
            && r.ends_with(bin)),
        "the runtime stage copies the release binary to {bin}"
    );
    let user = runtime
        .iter()
        .rev()
        .find(|(i, _)| i == "USER")
        .map(|(_, r)| r.clone())
        .expect("USER in the runtime stage");
    let uid: u64 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("USER {user}: numeric, so that runAsNonRoot can verify it"));
    assert_ne!(uid, 0, "USER must not be root");
    let entry = runtime
        .iter()
        .find(|(i, _)| i == "ENTRYPOINT")
        .expect("ENTRYPOINT");
    let entry: Vec<String> = serde_json::from_str(&entry.1).expect("ENTRYPOINT in exec form");
    assert_eq!(entry, vec![bin.to_string()]);
    let exposed: BTreeSet<u16> = runtime
        .iter()
        .filter(|(i, _)| i == "EXPOSE")
        .flat_map(|(_, r)| {
            r.split_whitespace()
                .map(|p| p.trim_end_matches("/tcp").parse().unwrap())
        })
        .collect();

    let base_r = render(&deploy().join("base"));
    let checked = check_rendering("deploy/base", &base_r.objects);
    assert_eq!(
        exposed, checked.proxy_ports,
        "EXPOSE vs the proxy's container ports"
    );
    for u in &checked.run_as_user {
        assert_eq!(
            *u, uid,
            "runAsUser in the manifests vs the Dockerfile's USER"
        );
    }
    if let Some((_, cmd)) = runtime.iter().find(|(i, _)| i == "CMD") {
        let cmd: Vec<String> = serde_json::from_str(cmd).expect("CMD in exec form");
        assert_eq!(
            flag(&cmd, "--config"),
            flag(&checked.proxy_args, "--config")
        );
    }

    let ignore = read(&repo_path(".dockerignore"));
    let ignored: Vec<&str> = ignore.lines().map(|l| l.trim().trim_matches('/')).collect();
    for must in ["target", ".git"] {
        assert!(ignored.contains(&must), ".dockerignore leaves out {must}");
    }
}

/// The Deployments' arguments work on the real binary: the scoring servers start with them and
/// answer their probe paths and /score; the proxy starts with its args on the ConfigMap's file
/// and answers /readyz, /healthz, /metrics and routes. Where a private mount namespace can be
/// made (root), the file's host names are kept and resolved through a hosts file, each scoring
/// server on its own loopback address (only the ports are made free ones); elsewhere the names
/// are replaced by the servers' addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_args_run_on_the_real_binary() {
    let r = render(&deploy().join("base"));
    let checked = check_rendering("deploy/base", &r.objects);
    let c = client();
    let mut servers = BTreeMap::new();
    let by_name = namespaces_work();
    for (n, (a, paths)) in checked.scoring.iter().enumerate() {
        let dep = flag(a, "--name").unwrap().to_string();
        let model = flag(a, "--model").unwrap_or("v1").to_string();
        let own = format!("127.0.0.{}:0", 10 + n);
        let local: Vec<&str> = a
            .iter()
            .map(|x| {
                if x.starts_with("0.0.0.0:") {
                    if by_name { own.as_str() } else { "127.0.0.1:0" }
                } else {
                    x.as_str()
                }
            })
            .collect();
        let server = Proc::spawn(&local, "scoring server listening");
        for p in paths {
            let ans = get(&c, &server.url(p), &[]).await;
            assert_eq!(
                ans.status, 200,
                "{dep}: probe path {p} answers {}",
                ans.status
            );
        }
        let ans = get(&c, &server.url("/score"), &[]).await;
        assert_eq!(ans.status, 200);
        assert_eq!(ans.json()["deployment"], dep.as_str());
        assert_eq!(ans.json()["model"], model.as_str());
        servers.insert(dep, server);
    }

    // The proxy, with the Deployment's args, on the ConfigMap's file made local.
    let mut text = checked.endpoint.text.clone();
    text = text.replace(
        &format!("0.0.0.0:{}", checked.endpoint.listen),
        "127.0.0.1:0",
    );
    text = text.replace(
        &format!("0.0.0.0:{}", checked.endpoint.admin),
        "127.0.0.1:0",
    );
    let mut hosts = String::from("127.0.0.1 localhost\n");
    for (dep, instances) in checked.endpoint.deployments() {
        let addr = servers[&dep].addr;
        for inst in instances {
            let (host, _) = inst.rsplit_once(':').unwrap();
            let to = if by_name {
                hosts.push_str(&format!("{} {host}\n", addr.ip()));
                format!("{host}:{}", addr.port())
            } else {
                addr.to_string()
            };
            text = text.replace(&inst, &to);
        }
    }
    let (dir, path) = temp_file("endpoint.yaml", &text);
    let mut a = checked.proxy_args.clone();
    let i = a.iter().position(|x| x == "--config").unwrap();
    a[i + 1] = path.to_str().unwrap().to_string();
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let proxy = if by_name {
        let file = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let h = file("hosts", &hosts);
        let n = file("nsswitch.conf", "hosts: files\n");
        let r = file("resolv.conf", "nameserver 127.0.0.1\n");
        proxy_in_namespace([&h, &n, &r], &a)
    } else {
        eprintln!("no private mount namespace here: instance names replaced by addresses");
        Proc::spawn(&a, "data plane listening")
    };
    let admin = proxy.admin.expect("admin address logged");
    for p in ["/healthz", "/readyz", "/metrics"] {
        let ans = get(&c, &format!("http://{admin}{p}"), &[]).await;
        assert_eq!(ans.status, 200, "proxy {p}: {:?}", ans.body);
    }
    let live = checked
        .endpoint
        .traffic()
        .into_iter()
        .find(|(_, w)| *w == 100)
        .map(|(n, _)| n)
        .unwrap();
    let ans = get(&c, &proxy.url("/score"), &[]).await;
    assert_eq!(ans.status, 200);
    assert_eq!(ans.deployment(), live);
    for dep in servers.keys() {
        let ans = get(&c, &proxy.url("/score"), &[("x-api-version", dep)]).await;
        assert_eq!(ans.status, 200);
        assert_eq!(ans.deployment(), dep);
    }
    if by_name {
        let conf = admin_get(&proxy, "/config").await.json();
        for (dep, server) in &servers {
            let instances = &conf["deployments"][dep.as_str()]["instances"];
            assert_eq!(instances[0]["instance"], server.addr.to_string(), "{conf}");
            assert!(instances[0]["discovered_from"].is_string(), "{conf}");
        }
    }
}

fn kubectl_available() -> bool {
    Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `kubectl kustomize` renders the base and every overlay into the objects this test's reading
/// finds, passing the same checks, with the ConfigMap under its plain name carrying the
/// overlay's endpoint.yaml. Skipped (with a note) when kubectl is not installed.
#[test]
fn kubectl_kustomize_renders_the_same_objects() {
    if !kubectl_available() {
        eprintln!("SKIPPED: kubectl is not on PATH; `kubectl kustomize` not run");
        return;
    }
    for dir in kustomizations() {
        let label = dir
            .strip_prefix(repo_path(""))
            .unwrap()
            .display()
            .to_string();
        let out = Command::new("kubectl")
            .arg("kustomize")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl kustomize {label}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let objects = documents(&String::from_utf8(out.stdout).unwrap(), &dir);
        let ours = render(&dir);
        let key = |o: &Value| {
            format!(
                "{}/{}/{}",
                kind(o),
                o["metadata"]["namespace"].as_str().unwrap_or(""),
                name(o)
            )
        };
        let theirs: BTreeSet<String> = objects.iter().map(key).collect();
        let mine: BTreeSet<String> = ours.objects.iter().map(key).collect();
        assert_eq!(theirs, mine, "{label}: kubectl renders other objects");
        let checked = check_rendering(&format!("kubectl kustomize {label}"), &objects);
        let own = check_rendering(&label, &ours.objects);
        assert_eq!(
            checked.endpoint.text, own.endpoint.text,
            "{label}: endpoint file"
        );
        assert_eq!(checked.images, own.images, "{label}: images");
        let file = dir.join("endpoint.yaml");
        assert_eq!(
            checked.endpoint.text,
            read(&file),
            "{label}: ConfigMap vs {}",
            file.display()
        );
        assert!(
            objects
                .iter()
                .any(|o| kind(o) == "ConfigMap" && name(o) == "scoregate-endpoint"),
            "{label}: the ConfigMap must be named scoregate-endpoint, without a hash suffix"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The kubelet's ConfigMap volume update, against two replicas.
// ---------------------------------------------------------------------------------------------

/// A ConfigMap volume as the kubelet lays it out: `endpoint.yaml -> ..data/endpoint.yaml`,
/// `..data -> ..<timestamp>/`.
struct ConfigMapVolume {
    dir: tempfile::TempDir,
    current: Option<String>,
    updates: u32,
}

impl ConfigMapVolume {
    fn new(content: &str) -> ConfigMapVolume {
        let mut v = ConfigMapVolume {
            dir: tempfile::tempdir().unwrap(),
            current: None,
            updates: 0,
        };
        v.update(content);
        std::os::unix::fs::symlink("..data/endpoint.yaml", v.path()).unwrap();
        v
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("endpoint.yaml")
    }

    /// What the kubelet's atomic writer does: the new content in a new timestamped directory, a
    /// `..data_tmp` symlink to it renamed over `..data`, the old directory removed.
    fn update(&mut self, content: &str) {
        let d = self.dir.path();
        self.updates += 1;
        let stamp = format!("..2026_11_22_03_{:02}_00.123456789", self.updates);
        std::fs::create_dir(d.join(&stamp)).unwrap();
        std::fs::write(d.join(&stamp).join("endpoint.yaml"), content).unwrap();
        std::os::unix::fs::symlink(&stamp, d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        if let Some(old) = self.current.replace(stamp) {
            std::fs::remove_dir_all(d.join(old)).unwrap();
        }
    }
}

fn sha256_hex(text: &str) -> String {
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Waits until the replica's `/config` serves `content` at `generation` with these weights.
async fn wait_config(p: &Proc, generation: u64, traffic: &[(&str, u64)], content: &str) {
    let c = client();
    let admin = p.admin.unwrap();
    let want: serde_json::Value = traffic
        .iter()
        .map(|(n, w)| (n.to_string(), serde_json::json!(w)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let cfg = get(&c, &format!("http://{admin}/config"), &[]).await.json();
        if cfg["generation"] == generation && cfg["traffic"] == want {
            assert_eq!(
                cfg["sha256"],
                sha256_hex(content).as_str(),
                "the replica's file content"
            );
            assert!(
                cfg["last_reload_error"].is_null(),
                "{}",
                cfg["last_reload_error"]
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replica {} never served generation {generation} {want}: {cfg}\n{}",
            p.addr,
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn configmap_update_reaches_two_replicas_without_a_failed_request() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let file = |b: u8, g: u8| blue_green_file(&blue, &green, b, g);
    let v1 = file(100, 0);
    let mut volume = ConfigMapVolume::new(&v1);
    let path = volume.path();
    // Two replicas on one file (listen and admin_listen on port 0: each gets its own ports).
    let replicas: Vec<Proc> = (0..2)
        .map(|_| {
            Proc::spawn(
                &["run", "--config", path.to_str().unwrap()],
                "data plane listening",
            )
        })
        .collect();
    assert_ne!(replicas[0].addr, replicas[1].addr);
    let loads: Vec<Load> = replicas
        .iter()
        .map(|p| Load::start(p.url("/score"), 3))
        .collect();
    for (p, l) in replicas.iter().zip(&loads) {
        wait_config(p, 1, &[("blue", 100), ("green", 0)], &v1).await;
        l.wait_for_only("blue", Instant::now(), Duration::from_secs(5))
            .await;
    }

    // Update 1: everything to green.
    let v2 = file(0, 100);
    let t = Instant::now();
    volume.update(&v2);
    for (p, l) in replicas.iter().zip(&loads) {
        l.wait_for_only("green", t, Duration::from_secs(5)).await;
        wait_config(p, 2, &[("blue", 0), ("green", 100)], &v2).await;
    }
    let green_before = green.count();
    assert!(green_before > 0);

    // Update 2: half and half, on both replicas.
    let v3 = file(50, 50);
    volume.update(&v3);
    for p in &replicas {
        wait_config(p, 3, &[("blue", 50), ("green", 50)], &v3).await;
    }
    let t = Instant::now();
    tokio::time::sleep(Duration::from_millis(800)).await;
    for (i, l) in loads.iter().enumerate() {
        let mut split = BTreeMap::<String, usize>::new();
        for smp in l.samples().iter().filter(|smp| smp.started > t) {
            if let Ok((_, d)) = &smp.result {
                *split.entry(d.clone()).or_default() += 1;
            }
        }
        let total: usize = split.values().sum();
        assert!(
            total >= 50,
            "replica {i}: too little load after the update: {split:?}"
        );
        for d in ["blue", "green"] {
            let n = split.get(d).copied().unwrap_or(0);
            assert!(
                n * 5 >= total,
                "replica {i}: {d} got {n} of {total} requests at 50/50: {split:?}"
            );
        }
    }

    // Not one failed request, on either replica, through both updates; no failed reload.
    for (i, l) in loads.into_iter().enumerate() {
        l.stop_without_failures(100, &format!("replica {i}")).await;
    }
    for p in &replicas {
        assert_eq!(
            p.metric("scoregate_config_reloads_total{result=\"error\"}")
                .await,
            0.0
        );
        assert_eq!(p.metric("scoregate_config_generation").await, 3.0);
    }
    // The old timestamped directories are gone, as after the kubelet's updates.
    let left: Vec<String> = std::fs::read_dir(volume.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("..2026"))
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
}
