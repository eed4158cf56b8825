//! Certificates for TLS tests: a CA made with rcgen, leaves it signs (server or client, valid
//! now, expired, or expiring soon), written as PEM files into a temp dir; and a TLS client
//! (tokio-rustls, hyper HTTP/1.1) that trusts the CA.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// A test CA and the directory its files go to.
pub struct Pki {
    pub dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate's PEM file.
    pub ca: PathBuf,
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How long from now a leaf is valid: `(from, until)` offsets in seconds (negative: past).
pub type Validity = (i64, i64);

/// Valid from a day ago for a year.
pub const VALID: Validity = (-86_400, 365 * 86_400);
/// Expired yesterday.
pub const EXPIRED: Validity = (-30 * 86_400, -86_400);
/// Expires in two days.
pub const EXPIRING: Validity = (-86_400, 2 * 86_400);

fn at(offset: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::seconds(offset)
}

impl Pki {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        let ca = dir.path().join(format!("{name}.crt"));
        std::fs::write(&ca, cert.pem()).unwrap();
        Pki {
            dir,
            issuer: Issuer::new(params, key),
            ca,
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses), files `STEM.crt` and
    /// `STEM.key`.
    pub fn server(&self, stem: &str, names: &[&str], validity: Validity) -> Leaf {
        self.leaf(stem, names, validity, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate (CN `stem`).
    pub fn client(&self, stem: &str) -> Leaf {
        self.leaf(stem, &[], VALID, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(
        &self,
        stem: &str,
        names: &[&str],
        validity: Validity,
        usage: ExtendedKeyUsagePurpose,
    ) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, stem);
        params.extended_key_usages = vec![usage];
        params.not_before = at(validity.0);
        params.not_after = at(validity.1);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let leaf = Leaf {
            cert: self.dir.path().join(format!("{stem}.crt")),
            key: self.dir.path().join(format!("{stem}.key")),
        };
        std::fs::write(&leaf.cert, cert.pem()).unwrap();
        std::fs::write(&leaf.key, key.serialize_pem()).unwrap();
        leaf
    }
}

impl Leaf {
    /// The certificate's DER, to compare with what a server presented.
    pub fn der(&self) -> Vec<u8> {
        CertificateDer::from_pem_file(&self.cert).unwrap().to_vec()
    }
}

/// A client configuration trusting `ca`, presenting `client` if given, offering `alpn`.
pub fn client_config(
    ca: &Path,
    client: Option<&Leaf>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(&leaf.cert).unwrap()],
                rustls_pki_types::PrivateKeyDer::from_pem_file(&leaf.key).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// One HTTP/1.1 keep-alive connection over TLS.
pub struct TlsConn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    /// The leaf certificate the server presented.
    pub presented: Vec<u8>,
}

impl TlsConn {
    /// Connects to `addr` verifying `name`, with `config`.
    pub async fn open(
        addr: SocketAddr,
        name: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<TlsConn> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = rustls_pki_types::ServerName::try_from(name.to_string())
            .map_err(std::io::Error::other)?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        let presented = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(TlsConn { sender, presented })
    }

    /// `GET path`: the status and body, or why it failed.
    pub async fn get(&mut self, path: &str) -> Result<(u16, Bytes), String> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let req = Request::get(path)
            .header("host", "scoring.test")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }
}
