//! TLS for tests: a throwaway PKI made with rcgen (a CA, and server and client certificates it
//! issues, valid or expired), and a TLS scoring backend on 127.0.0.1 port 0 — HTTP/1.1 and
//! HTTP/2 (ALPN) over tokio-rustls — that counts its connections, handshakes and resumed
//! sessions, records what it was sent and answers REST with JSON and gRPC with an empty message.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;

use super::Seen;

/// A certificate authority that issues certificates for the test.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    /// The CA certificate, PEM (a `ca_file`).
    pub pem: String,
}

/// A certificate and its key, PEM and DER.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    cert: CertificateDer<'static>,
    key: Vec<u8>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `names` (DNS names or IP addresses), valid now.
    pub fn issue(&self, names: &[&str]) -> Leaf {
        self.issue_with(names, |_| {})
    }

    /// A certificate for `names` that expired in 2021.
    pub fn issue_expired(&self, names: &[&str]) -> Leaf {
        self.issue_with(names, |p| {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        })
    }

    fn issue_with(&self, names: &[&str], edit: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "scoregate test");
        edit(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert: cert.der().clone(),
            key: key.serialize_der(),
        }
    }
}

impl Leaf {
    /// Writes `NAME.crt` and `NAME.key` into `dir`; their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, &self.cert_pem).unwrap();
        std::fs::write(&k, &self.key_pem).unwrap();
        (c, k)
    }
}

/// What a TLS backend counted.
#[derive(Default)]
struct Counts {
    connections: AtomicUsize,
    handshakes: AtomicUsize,
    resumed: AtomicUsize,
    failed: Mutex<Vec<String>>,
    /// ALPN protocols negotiated, one per handshake.
    alpn: Mutex<Vec<String>>,
}

/// A scoring backend over TLS (HTTP/1.1 or HTTP/2 by ALPN).
pub struct TlsBackend {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsBackend {
    /// Serves with `leaf`; with `client_ca`, only clients presenting a certificate it issued.
    pub async fn start(name: &str, leaf: &Leaf, client_ca: Option<&Ca>) -> TlsBackend {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.cert.clone()).unwrap();
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key.clone()));
        let mut config = builder
            .with_single_cert(vec![leaf.cert.clone()], key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let counts = Arc::new(Counts::default());
        let (name, seen2, counts2) = (name.to_string(), seen.clone(), counts.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                counts2.connections.fetch_add(1, Ordering::SeqCst);
                let (acceptor, name, seen, counts) = (
                    acceptor.clone(),
                    name.clone(),
                    seen2.clone(),
                    counts2.clone(),
                );
                tokio::spawn(async move {
                    let tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(e) => {
                            counts.failed.lock().unwrap().push(e.to_string());
                            return;
                        }
                    };
                    let conn = tls.get_ref().1;
                    counts.handshakes.fetch_add(1, Ordering::SeqCst);
                    if conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                        counts.resumed.fetch_add(1, Ordering::SeqCst);
                    }
                    let alpn = conn.alpn_protocol().map(String::from_utf8_lossy);
                    counts
                        .alpn
                        .lock()
                        .unwrap()
                        .push(alpn.map(|a| a.into_owned()).unwrap_or_default());
                    let svc = service_fn(move |req| answer(name.clone(), seen.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        TlsBackend {
            addr,
            seen,
            counts,
            task,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    /// TCP connections accepted.
    pub fn connections(&self) -> usize {
        self.counts.connections.load(Ordering::SeqCst)
    }
    /// Handshakes completed, and how many of them resumed a session.
    pub fn handshakes(&self) -> (usize, usize) {
        (
            self.counts.handshakes.load(Ordering::SeqCst),
            self.counts.resumed.load(Ordering::SeqCst),
        )
    }
    /// Why handshakes failed, as the backend saw it.
    pub fn failed(&self) -> Vec<String> {
        self.counts.failed.lock().unwrap().clone()
    }
    /// The ALPN protocol of every handshake ("" for none).
    pub fn alpn(&self) -> Vec<String> {
        self.counts.alpn.lock().unwrap().clone()
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Answer = StreamBody<tokio_stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// Records the request; answers a gRPC call with an empty message and `grpc-status: 0`, any
/// other request with `{"deployment": NAME}` (closing the connection after it when the request
/// has `x-close`).
async fn answer(
    name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    req: Request<Incoming>,
) -> Result<Response<Answer>, Infallible> {
    let (parts, body) = req.into_parts();
    let collected = body.collect().await.map(|b| b.to_bytes());
    let grpc = parts
        .headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    seen.lock().unwrap().push(Seen {
        method: parts.method.clone(),
        uri: parts.uri.to_string(),
        headers: parts.headers.clone(),
        complete: collected.is_ok(),
        body: collected.unwrap_or_default(),
    });
    let mut frames = Vec::new();
    let mut resp = Response::builder().header("x-backend", name.as_str());
    if parts.headers.contains_key("x-close") {
        // Closes the connection after this answer.
        resp = resp.header("connection", "close");
    }
    if grpc {
        resp = resp.header("content-type", "application/grpc");
        frames.push(Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))));
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        frames.push(Ok(Frame::trailers(trailers)));
    } else {
        resp = resp.header("content-type", "application/json");
        let body = format!("{{\"deployment\":\"{name}\"}}");
        frames.push(Ok(Frame::data(Bytes::from(body))));
    }
    Ok(resp
        .body(StreamBody::new(tokio_stream::iter(frames)))
        .unwrap())
}
