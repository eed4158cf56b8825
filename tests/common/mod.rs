//! Test harness: real backends on 127.0.0.1 port 0, the real `scoregate` binary, a small client.
//! Everything started here is stopped when its handle drops.
#![allow(dead_code)]

pub mod pki;

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub mod tls;

pub const BIN: &str = env!("CARGO_BIN_EXE_scoregate");

/// What a backend saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// False when the body broke off before its end.
    pub complete: bool,
}

/// How a backend answers.
#[derive(Debug, Clone)]
pub struct Behavior {
    pub status: StatusCode,
    pub delay: Duration,
    /// Answer with the request body instead of the default JSON.
    pub echo: bool,
    /// Stream the answer as 10 chunks over this long (the request counts as held until the
    /// last chunk).
    pub stream_for: Duration,
    /// Send the headers and one chunk, then nothing more.
    pub stall: bool,
    /// Close keep-alive connections idle for this long (0: never).
    pub idle_close: Duration,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            status: StatusCode::OK,
            delay: Duration::ZERO,
            echo: false,
            stream_for: Duration::ZERO,
            stall: false,
            idle_close: Duration::ZERO,
        }
    }
}

/// A backend's answer: whole, or streamed slowly (releasing the held count at its end).
pub enum TestBody {
    Full(Option<Bytes>),
    Slow {
        left: usize,
        every: Duration,
        timer: std::pin::Pin<Box<tokio::time::Sleep>>,
        current: Option<Arc<AtomicUsize>>,
        stall: bool,
    },
}

impl hyper::body::Body for TestBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        use std::future::Future;
        use std::task::Poll;
        match &mut *self {
            TestBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(hyper::body::Frame::data(b)))),
            TestBody::Slow {
                left,
                every,
                timer,
                current,
                stall,
            } => {
                if *left == 0 {
                    if let Some(c) = current.take() {
                        c.fetch_sub(1, Ordering::SeqCst);
                    }
                    return Poll::Ready(None);
                }
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                *left -= 1;
                let next = if *stall {
                    Duration::from_secs(3600)
                } else {
                    *every
                };
                timer.as_mut().reset(tokio::time::Instant::now() + next);
                Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(
                    b"chunk;",
                )))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, TestBody::Full(None))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        // Whole answers carry Content-Length, as most scoring servers send them.
        match self.exact_len() {
            Some(n) => hyper::body::SizeHint::with_exact(n),
            None => hyper::body::SizeHint::default(),
        }
    }
}

impl TestBody {
    fn exact_len(&self) -> Option<u64> {
        match self {
            TestBody::Full(b) => Some(b.as_ref().map_or(0, |b| b.len() as u64)),
            TestBody::Slow { .. } => None,
        }
    }
}

impl Drop for TestBody {
    fn drop(&mut self) {
        if let TestBody::Slow {
            current: Some(c), ..
        } = self
        {
            c.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// An in-process scoring backend on a real loopback socket. Answers `{"deployment": NAME}` with
/// `x-backend: NAME`, records every request and the most requests it held at once.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    current: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        Self::with(name, Behavior::default()).await
    }

    pub async fn with(name: &str, behavior: Behavior) -> Backend {
        Self::on(name, behavior, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
    }

    /// A backend bound to `addr` (any 127.x.y.z address works on Linux loopback).
    pub async fn on(name: &str, behavior: Behavior, addr: SocketAddr) -> std::io::Result<Backend> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let current = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        let state = (
            name.to_string(),
            behavior,
            seen.clone(),
            current.clone(),
            max.clone(),
        );
        let task = tokio::spawn(async move {
            let state = Arc::new(state);
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let state = state.clone();
                tokio::spawn(async move {
                    let idle_close = state.1.idle_close;
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let state = state.clone();
                        async move {
                            let (name, behavior, seen, current, max) = &*state;
                            let now = current.fetch_add(1, Ordering::SeqCst) + 1;
                            max.fetch_max(now, Ordering::SeqCst);
                            let (parts, body) = req.into_parts();
                            let collected = body.collect().await.map(|b| b.to_bytes());
                            let complete = collected.is_ok();
                            let body = collected.unwrap_or_default();
                            seen.lock().unwrap().push(Seen {
                                method: parts.method.clone(),
                                uri: parts.uri.to_string(),
                                headers: parts.headers.clone(),
                                body: body.clone(),
                                complete,
                            });
                            if !behavior.delay.is_zero() {
                                tokio::time::sleep(behavior.delay).await;
                            }
                            let out = if behavior.echo {
                                body
                            } else {
                                Bytes::from(format!("{{\"deployment\":\"{name}\"}}"))
                            };
                            let body = if behavior.stream_for.is_zero() && !behavior.stall {
                                current.fetch_sub(1, Ordering::SeqCst);
                                TestBody::Full(Some(out))
                            } else {
                                TestBody::Slow {
                                    left: 10,
                                    every: behavior.stream_for / 10,
                                    timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
                                    current: Some(current.clone()),
                                    stall: behavior.stall,
                                }
                            };
                            let mut resp = Response::new(body);
                            *resp.status_mut() = behavior.status;
                            resp.headers_mut()
                                .insert("x-backend", name.parse().unwrap());
                            resp.headers_mut()
                                .insert("x-upstream-custom", "kept".parse().unwrap());
                            resp.headers_mut()
                                .insert("keep-alive", "timeout=5".parse().unwrap());
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let mut b = http1::Builder::new();
                    if !idle_close.is_zero() {
                        // hyper's header read timeout also runs while a keep-alive connection
                        // waits for its next request: an idle-closing server.
                        b.timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(idle_close);
                    }
                    let _ = b.serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Ok(Backend {
            name: name.to_string(),
            addr,
            seen,
            current,
            max,
            connections,
            task,
        })
    }

    /// A backend that answers every request with `status`.
    pub async fn answering(name: &str, status: StatusCode) -> Backend {
        Self::with(
            name,
            Behavior {
                status,
                ..Default::default()
            },
        )
        .await
    }

    /// A backend that waits `delay` before answering.
    pub async fn delayed(name: &str, delay: Duration) -> Backend {
        Self::with(
            name,
            Behavior {
                delay,
                ..Default::default()
            },
        )
        .await
    }

    /// A backend that answers with the request body.
    pub async fn echo(name: &str) -> Backend {
        Self::with(
            name,
            Behavior {
                echo: true,
                ..Default::default()
            },
        )
        .await
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
    /// Requests whose body arrived whole.
    pub fn complete(&self) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.complete)
            .count()
    }
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn max_concurrent(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Blue and green backends behind the proxy at the given weights.
pub async fn blue_green(blue_weight: u8, green_weight: u8) -> (Backend, Backend, Proc) {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let proxy = Proc::proxy(&blue_green_file(&blue, &green, blue_weight, green_weight));
    (blue, green, proxy)
}

/// The endpoint file for `blue` and `green` at the given weights.
pub fn blue_green_file(blue: &Backend, green: &Backend, b: u8, g: u8) -> String {
    EndpointFile::new()
        .deployment("blue", &[blue.addr], Some(b))
        .deployment("green", &[green.addr], Some(g))
        .yaml()
}

/// A port on which nothing listens (bound, then closed), on a loopback address no other test
/// binds, so that no backend started meanwhile can take the freed port.
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.250:0").unwrap();
    l.local_addr().unwrap()
}

/// Builds an endpoint file.
#[derive(Default, Clone)]
pub struct EndpointFile {
    deployments: Vec<(String, Vec<String>, Option<u8>, String)>,
    extra: String,
}

impl EndpointFile {
    pub fn new() -> Self {
        Self::default()
    }
    /// A deployment with its weight (`None`: not named in `traffic`).
    pub fn deployment(mut self, name: &str, instances: &[SocketAddr], weight: Option<u8>) -> Self {
        self.deployments.push((
            name.into(),
            instances.iter().map(|a| a.to_string()).collect(),
            weight,
            String::new(),
        ));
        self
    }
    /// `request:` settings for the last deployment, as YAML flow-map entries.
    pub fn request(mut self, settings: &str) -> Self {
        if let Some(d) = self.deployments.last_mut() {
            d.3 = settings.into();
        }
        self
    }
    /// Extra top-level lines.
    pub fn extra(mut self, yaml: &str) -> Self {
        self.extra.push_str(yaml);
        self.extra.push('\n');
        self
    }
    pub fn yaml(&self) -> String {
        let mut s = String::from("listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n");
        s.push_str(&self.extra);
        s.push_str("traffic:\n");
        for (name, _, w, _) in &self.deployments {
            if let Some(w) = w {
                s.push_str(&format!("  {name}: {w}\n"));
            }
        }
        s.push_str("deployments:\n");
        for (name, inst, _, req) in &self.deployments {
            s.push_str(&format!(
                "  {name}:\n    instances: [{}]\n",
                inst.join(", ")
            ));
            if !req.is_empty() {
                s.push_str(&format!("    request: {{{req}}}\n"));
            }
        }
        s
    }
}

/// A running child process whose stderr is drained into a buffer.
pub struct Proc {
    child: Child,
    pub addr: SocketAddr,
    /// The admin listener's address, when the process logged one before it was ready.
    pub admin: Option<SocketAddr>,
    pub log: Arc<Mutex<String>>,
    _dir: Option<tempfile::TempDir>,
    pub config: Option<PathBuf>,
}

impl Proc {
    /// Spawns `scoregate ARGS` and waits for the stderr line containing `ready` with `addr=`.
    pub fn spawn(args: &[&str], ready: &str) -> Proc {
        Self::spawn_via(&[], args, ready)
    }

    /// [`Proc::spawn`] through a wrapper command: `WRAPPER... scoregate ARGS` (the wrapper
    /// must exec the binary, so that the process is scoregate itself).
    pub fn spawn_via(wrapper: &[&str], args: &[&str], ready: &str) -> Proc {
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let mut child = command
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn scoregate");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let ready = ready.to_string();
        let log2 = log.clone();
        let admin = Arc::new(Mutex::new(None));
        let admin2 = admin.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log2.lock().unwrap().push_str(&line);
                log2.lock().unwrap().push('\n');
                let addr = line.find("addr=").and_then(|i| {
                    line[i + 5..]
                        .split_whitespace()
                        .next()
                        .and_then(|a| a.parse::<SocketAddr>().ok())
                });
                if let Some(a) = addr {
                    if line.contains("admin listening") {
                        *admin2.lock().unwrap() = Some(a);
                    }
                    if line.contains(&ready)
                        && let Some(tx) = tx.take()
                    {
                        let _ = tx.send(a);
                    }
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => Proc {
                child,
                addr,
                admin: *admin.lock().unwrap(),
                log,
                _dir: None,
                config: None,
            },
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "scoregate {args:?} did not become ready; log:\n{}",
                    log.lock().unwrap()
                );
            }
        }
    }

    /// `scoregate run` with this endpoint file, in its own temp dir.
    pub fn proxy(file: &str) -> Proc {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("endpoint.yaml");
        std::fs::write(&path, file).unwrap();
        let mut p = Proc::spawn(
            &["run", "--config", path.to_str().unwrap()],
            "data plane listening",
        );
        p._dir = Some(dir);
        p.config = Some(path);
        p
    }

    /// `scoregate score-server` on a free port.
    pub fn score_server(name: &str, extra: &[&str]) -> Proc {
        Self::score_server_on(name, "127.0.0.1:0", extra)
    }

    /// `scoregate score-server` on `addr`.
    pub fn score_server_on(name: &str, addr: &str, extra: &[&str]) -> Proc {
        let mut args = vec!["score-server", "--name", name, "--listen", addr];
        args.extend_from_slice(extra);
        Proc::spawn(&args, "scoring server listening")
    }

    /// Sends a signal (`TERM`, `HUP`, ...) to the process.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{name} failed");
    }

    /// Waits up to `timeout` for the process to exit; its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The process id (for signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let admin = self.admin.expect("the process logged its admin address");
        let a = get(&client(), &format!("http://{admin}/metrics"), &[]).await;
        String::from_utf8(a.body.to_vec()).unwrap()
    }

    /// The value of one sample line of `/metrics` (`name{labels}` exactly as rendered).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
    }

    /// Waits up to 3 s for `needle` to appear in the log (it is read by another thread);
    /// panics with the log otherwise.
    pub fn wait_log(&self, needle: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while !self.log().contains(needle) {
            assert!(
                std::time::Instant::now() < deadline,
                "log never showed {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The `addr=` of the first log line containing `needle` (waiting up to 3 s for it), like
    /// the gRPC listener of `score-server --grpc-listen`.
    pub fn logged_addr(&self, needle: &str) -> SocketAddr {
        self.wait_log(needle);
        let log = self.log();
        log.lines()
            .filter(|l| l.contains(needle))
            .find_map(|l| {
                let i = l.find("addr=")?;
                l[i + 5..].split_whitespace().next()?.parse().ok()
            })
            .unwrap_or_else(|| panic!("no addr= on a line with {needle:?}:\n{log}"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `scoregate ARGS` to completion: (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `content` to a temp file named `name` and returns its dir guard and path.
pub fn temp_file(name: &str, content: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, content).unwrap();
    (dir, path)
}

/// A keep-alive HTTP/1 client.
pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An answer, fully read.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn deployment(&self) -> &str {
        self.headers
            .get("x-deployment")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

pub async fn send(client: &TestClient, req: Request<Full<Bytes>>) -> Answer {
    let resp = client.request(req).await.expect("request failed");
    let (parts, body) = resp.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

pub async fn get(client: &TestClient, url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(client, b.body(Full::new(Bytes::new())).unwrap()).await
}

/// Sends raw bytes on a fresh connection and returns everything read until the server closes
/// or `wait` passes.
pub fn raw(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Pearson's chi-square statistic of `observed` counts against `weights` (percent).
pub fn chi_square(observed: &[usize], weights: &[f64]) -> f64 {
    let n: usize = observed.iter().sum();
    let total: f64 = weights.iter().sum();
    observed
        .iter()
        .zip(weights)
        .map(|(&o, &w)| {
            let e = n as f64 * w / total;
            (o as f64 - e).powi(2) / e
        })
        .sum()
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// One request of a [`Load`].
#[derive(Debug, Clone)]
pub struct Sample {
    pub started: std::time::Instant,
    pub finished: std::time::Instant,
    /// `Ok((status, x-deployment))` or the client error.
    pub result: Result<(StatusCode, String), String>,
}

impl Sample {
    /// A 2xx answer.
    pub fn succeeded(&self) -> bool {
        matches!(&self.result, Ok((st, _)) if st.is_success())
    }
}

/// Sustained keep-alive GET load through the proxy from `conns` concurrent clients.
pub struct Load {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(url: String, conns: usize) -> Load {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let c = client();
        let tasks = (0..conns)
            .map(|_| {
                let (c, url, samples, stop) =
                    (c.clone(), url.clone(), samples.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let started = std::time::Instant::now();
                        let req = Request::get(&url).body(Full::new(Bytes::new())).unwrap();
                        let result = match c.request(req).await {
                            Ok(resp) => {
                                let dep = resp
                                    .headers()
                                    .get("x-deployment")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_string();
                                let status = resp.status();
                                match resp.into_body().collect().await {
                                    Ok(_) => Ok((status, dep)),
                                    Err(e) => Err(format!("body: {e}")),
                                }
                            }
                            Err(e) => Err(format!("{e:?}")),
                        };
                        samples.lock().unwrap().push(Sample {
                            started,
                            finished: std::time::Instant::now(),
                            result,
                        });
                    }
                })
            })
            .collect();
        Load {
            samples,
            stop,
            tasks,
        }
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    /// Requests that failed: a client error or a non-2xx answer.
    pub fn failures(&self) -> Vec<Sample> {
        self.samples()
            .into_iter()
            .filter(|s| !s.succeeded())
            .collect()
    }

    /// Stops the load and asserts that more than `more_than` requests were made and not one
    /// failed; `what` names the load in the messages.
    pub async fn stop_without_failures(self, more_than: usize, what: &str) {
        let samples = self.stop().await;
        let failed: Vec<_> = samples.iter().filter(|s| !s.succeeded()).collect();
        assert!(
            samples.len() > more_than,
            "{what}: too little load: {}",
            samples.len()
        );
        assert!(
            failed.is_empty(),
            "{what}: {} of {} requests failed, first: {:?}",
            failed.len(),
            samples.len(),
            failed.first().map(|s| &s.result)
        );
    }

    /// Waits until an answer from `deployment` to a request started after `since` has arrived,
    /// then checks that every request started after that answer went to `deployment` too.
    /// Returns the time from `since` to that first answer.
    pub async fn wait_for_only(
        &self,
        deployment: &str,
        since: std::time::Instant,
        timeout: Duration,
    ) -> Duration {
        let deadline = since + timeout;
        let first = loop {
            let found = self.find_after(
                since,
                |s| matches!(&s.result, Ok((_, d)) if d == deployment),
            );
            if let Some(finished) = found {
                break finished;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no answer from {deployment} within {timeout:?} (last: {:?})",
                self.samples().last().map(|s| &s.result)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        self.assert_only_after(deployment, first).await;
        first - since
    }

    /// The finish time of the first sample started at or after `since` that matches `pred`.
    /// Samples are appended as they finish, so the search starts near `since`.
    fn find_after(
        &self,
        since: std::time::Instant,
        pred: impl Fn(&Sample) -> bool,
    ) -> Option<std::time::Instant> {
        let samples = self.samples.lock().unwrap();
        let from = samples
            .partition_point(|s| s.finished < since)
            .saturating_sub(256);
        samples[from..]
            .iter()
            .find(|s| s.started >= since && pred(s))
            .map(|s| s.finished)
    }

    /// Lets the load run 200 ms more and checks that every request started after `t` was
    /// answered by `deployment`.
    pub async fn assert_only_after(&self, deployment: &str, t: std::time::Instant) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after: Vec<Sample> = {
            // Released before asserting, so that a failure does not poison the load's lock.
            let samples = self.samples.lock().unwrap();
            let from = samples
                .partition_point(|s| s.finished < t)
                .saturating_sub(256);
            samples[from..]
                .iter()
                .filter(|s| s.started > t)
                .cloned()
                .collect()
        };
        assert!(!after.is_empty(), "the load stalled");
        let wrong: Vec<_> = after
            .iter()
            .filter(|s| !matches!(&s.result, Ok((_, d)) if d == deployment))
            .collect();
        assert!(
            wrong.is_empty(),
            "{} of {} answers after the switch were not from {deployment}: {:?}",
            wrong.len(),
            after.len(),
            wrong.first()
        );
    }

    /// Stops the load and returns every sample.
    pub async fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        self.samples.lock().unwrap().clone()
    }
}

/// Whether this machine lets the test make a private mount namespace (needs root).
pub fn namespaces_work() -> bool {
    Command::new("unshare")
        .args(["-m", "--propagation", "private", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `unshare` wrapper that bind-mounts `hosts` over `/etc/hosts`, `nsswitch` over
/// `/etc/nsswitch.conf` and `resolv` over `/etc/resolv.conf`, then execs the binary.
pub fn wrapper<'a>(hosts: &'a str, nsswitch: &'a str, resolv: &'a str) -> Vec<&'a str> {
    vec![
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount --bind \"$0\" /etc/hosts && mount --bind \"$1\" /etc/nsswitch.conf \
         && mount --bind \"$2\" /etc/resolv.conf && shift 2 && exec \"$@\"",
        hosts,
        nsswitch,
        resolv,
    ]
}

/// `scoregate ARGS` (a proxy) in a private mount namespace that sees `files` as `/etc/hosts`,
/// `/etc/nsswitch.conf` and `/etc/resolv.conf`.
pub fn proxy_in_namespace(files: [&Path; 3], args: &[&str]) -> Proc {
    let [h, n, r] = files.map(|p| p.to_str().unwrap());
    Proc::spawn_via(&wrapper(h, n, r), args, "data plane listening")
}

/// GET `path` on the process's admin listener.
pub async fn admin_get(proxy: &Proc, path: &str) -> Answer {
    let admin = proxy.admin.expect("the process logged its admin address");
    get(&client(), &format!("http://{admin}{path}"), &[]).await
}

/// Polls `check` until it holds, failing the test after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A Python that can import grpc, or None (skipped) when there is none and none is required.
pub fn python_with_grpcio() -> Option<&'static str> {
    for python in ["/usr/bin/python3", "python3"] {
        let ok = std::process::Command::new(python)
            .args(["-c", "import grpc"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(python);
        }
    }
    assert!(
        std::env::var("SCOREGATE_REQUIRE_PEERS").is_err(),
        "python3-grpcio is required (SCOREGATE_REQUIRE_PEERS is set) but not installed"
    );
    eprintln!("SKIPPED: no python3 with grpcio (apt-get install python3-grpcio)");
    None
}

/// An endpoint file for built-in scoring servers `blue` and `green` started with
/// `--grpc-listen`: each deployment's REST and gRPC instances; `top` holds the top-level lines
/// before `deployments:` (`traffic:` at least).
pub fn grpc_blue_green_file(blue: &Proc, green: &Proc, top: &str) -> String {
    let grpc_addr = |p: &Proc| p.logged_addr("gRPC scoring server listening");
    format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n{top}deployments:\n  blue:\n    instances: [{}]\n    grpc_instances: [{}]\n  green:\n    instances: [{}]\n    grpc_instances: [{}]\n",
        blue.addr,
        grpc_addr(blue),
        green.addr,
        grpc_addr(green)
    )
}

/// `tests/clients/grpcio_infer.py ADDR CALLS [PIN]` under `python`: its JSON report.
pub fn run_grpcio(
    python: &str,
    addr: std::net::SocketAddr,
    calls: u32,
    pin: Option<&str>,
) -> serde_json::Value {
    run_grpcio_with(python, addr, calls, pin, &[])
}

/// [`run_grpcio`] with environment variables (`GRPC_ROOT_CERT`, `GRPC_SERVER_NAME` for TLS).
pub fn run_grpcio_with(
    python: &str,
    addr: std::net::SocketAddr,
    calls: u32,
    pin: Option<&str>,
    env: &[(&str, &str)],
) -> serde_json::Value {
    let script = repo_path("tests/clients/grpcio_infer.py");
    let mut args = vec![
        script.display().to_string(),
        addr.to_string(),
        calls.to_string(),
    ];
    args.extend(pin.map(String::from));
    let out = std::process::Command::new(python)
        .args(&args)
        .envs(env.iter().copied())
        .output()
        .expect("run the grpcio client");
    assert!(
        out.status.success(),
        "grpcio client failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Whether `s` is a UUID of version 4 as request ids are written: lowercase, hyphenated.
pub fn is_uuid_v4(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            14 => c == '4',
            19 => matches!(c, '8' | '9' | 'a' | 'b'),
            _ => c.is_ascii_digit() || matches!(c, 'a'..='f'),
        })
}

/// The failed requests `scoregate load` lists in its report `out`: the failed count of its
/// first line, and each listed request as (request id, the rest of its line), checking that
/// the list's header says how many it shows of how many.
pub fn load_failures(out: &str) -> (u64, Vec<(String, String)>) {
    let failed: u64 = out
        .lines()
        .next()
        .and_then(|l| l.strip_suffix(" failed"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `N failed` on the first line:\n{out}"));
    let mut lines = out
        .lines()
        .skip_while(|l| !l.starts_with("failed requests ("));
    let Some(header) = lines.next() else {
        assert_eq!(failed, 0, "no list of failed requests:\n{out}");
        return (0, Vec::new());
    };
    let listed: Vec<(String, String)> = lines
        .take_while(|l| l.starts_with("  "))
        .map(|l| {
            let (id, rest) = l.trim_start().split_once("  ").unwrap_or((l.trim(), ""));
            (id.to_string(), rest.to_string())
        })
        .collect();
    assert_eq!(
        header,
        format!(
            "failed requests (first {} of {failed}; find them in the access log by request_id):",
            listed.len()
        ),
        "{out}"
    );
    assert_eq!(listed.len() as u64, failed.min(20), "{out}");
    (failed, listed)
}

/// An HTTP/2 client connection with prior knowledge (h2c) to `addr`, driven in the background.
pub async fn h2c_sender(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream))
        .await
        .expect("h2c handshake");
    tokio::spawn(conn);
    sender
}
