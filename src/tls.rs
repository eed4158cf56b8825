//! Layer 1 (file): certificate, key and CA files → checked rustls configurations, and what a
//! certificate says (subject, names, validity). Every error names the file and says what is
//! wrong with it; nothing here is on the request path (configurations are built when the
//! endpoint file is loaded and shared by every connection after).
//!
//! The crypto provider is rustls's `ring` (builds with a C compiler alone, no cmake); TLS 1.2
//! and 1.3 only.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate expiring sooner than this loads with a warning.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);

/// ALPN of a listener: HTTP/2 first, then HTTP/1.1.
const LISTENER_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The one crypto provider (ring).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The session-ticket keys (rotating, as rustls's ticketer does) for the certificate pair with
/// `digest`: kept while the pair is, so a reload that changes something else (a weight) does not
/// invalidate the tickets clients hold; new with a new pair, so that no client resumes into the
/// old certificate's session after a rotation.
fn ticketer(digest: [u8; 32]) -> Result<Arc<dyn rustls::server::ProducesTickets>, String> {
    type Kept = ([u8; 32], Arc<dyn rustls::server::ProducesTickets>);
    static TICKETERS: std::sync::Mutex<Vec<Kept>> = std::sync::Mutex::new(Vec::new());
    let mut kept = TICKETERS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, t)) = kept.iter().find(|(d, _)| *d == digest) {
        return Ok(t.clone());
    }
    let made = rustls::crypto::ring::Ticketer::new().map_err(|e| format!("TLS: {e}"))?;
    // A listener and the admin listener at most: the newest few pairs.
    if kept.len() >= 4 {
        kept.remove(0);
    }
    kept.push((digest, made.clone()));
    Ok(made)
}

/// What a certificate says, for `check`, logs and the expiry metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject, like `CN=scoring.example`.
    pub subject: String,
    /// DNS names and IP addresses of the subjectAltName extension.
    pub sans: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl CertInfo {
    /// `notAfter` as seconds since the Unix epoch.
    pub fn not_after_unix(&self) -> i64 {
        match self.not_after.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        }
    }

    /// A one-line summary: subject, names and expiry.
    pub fn summary(&self) -> String {
        format!(
            "subject {}; names {}; expires {}",
            self.subject,
            if self.sans.is_empty() {
                "(none)".to_string()
            } else {
                self.sans.join(", ")
            },
            humantime::format_rfc3339_seconds(self.not_after)
        )
    }
}

/// A certificate chain and its private key, checked to belong together and to be valid now.
#[derive(Clone)]
pub struct Pair {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The leaf certificate.
    pub info: CertInfo,
    key: Arc<CertifiedKey>,
    /// SHA-256 of both files' bytes, to notice a rotation.
    pub digest: [u8; 32],
}

impl std::fmt::Debug for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Pair")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("info", &self.info)
            .finish()
    }
}

impl PartialEq for Pair {
    fn eq(&self, other: &Self) -> bool {
        self.cert_file == other.cert_file
            && self.key_file == other.key_file
            && self.digest == other.digest
    }
}
impl Eq for Pair {}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what} `{}` cannot be read: {e}", path.display()))
}

/// The certificates of a PEM file, in order.
fn parse_certs(
    bytes: &[u8],
    path: &Path,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(bytes).collect();
    match certs {
        Ok(c) if !c.is_empty() => Ok(c),
        Ok(_) => Err(format!(
            "{what} `{}` holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )),
        Err(e) => Err(format!("{what} `{}` is not valid PEM: {e}", path.display())),
    }
}

/// What the certificate `der` (from `path`) says.
pub fn cert_info(der: &[u8], path: &Path) -> Result<CertInfo, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("certificate in `{}` cannot be parsed: {e}", path.display()))?;
    let time = |t: &x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            UNIX_EPOCH + Duration::from_secs(secs as u64)
        } else {
            UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
        }
    };
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => sans.push(d.to_string()),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => sans.push(std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string()),
                    16 => {
                        let mut b = [0u8; 16];
                        b.copy_from_slice(ip);
                        sans.push(std::net::Ipv6Addr::from(b).to_string())
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        sans,
        not_before: time(&cert.validity().not_before),
        not_after: time(&cert.validity().not_after),
    })
}

/// Reads and checks a certificate chain (`cert_file`, PEM, leaf first) and its private key
/// (`key_file`, PEM: PKCS#8, PKCS#1 or SEC1): both parse, the key is the certificate's, and
/// the certificate is valid at `now`.
pub fn load_pair(cert_file: &Path, key_file: &Path, now: SystemTime) -> Result<Pair, String> {
    let cert_bytes = read(cert_file, "cert_file")?;
    let key_bytes = read(key_file, "key_file")?;
    let chain = parse_certs(&cert_bytes, cert_file, "cert_file")?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| {
        format!(
            "key_file `{}` holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
            key_file.display()
        )
    })?;
    let info = cert_info(&chain[0], cert_file)?;
    if now > info.not_after {
        return Err(format!(
            "the certificate in `{}` expired at {}",
            cert_file.display(),
            humantime::format_rfc3339_seconds(info.not_after)
        ));
    }
    if now < info.not_before {
        return Err(format!(
            "the certificate in `{}` is not valid before {}",
            cert_file.display(),
            humantime::format_rfc3339_seconds(info.not_before)
        ));
    }
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "key_file `{}` does not match the certificate in `{}`",
            key_file.display(),
            cert_file.display()
        ),
        e => format!(
            "key_file `{}` cannot be used with the certificate in `{}`: {e}",
            key_file.display(),
            cert_file.display()
        ),
    })?;
    let mut both = cert_bytes;
    both.extend_from_slice(&key_bytes);
    Ok(Pair {
        cert_file: cert_file.to_path_buf(),
        key_file: key_file.to_path_buf(),
        info,
        key: Arc::new(certified),
        digest: sha256(&both),
    })
}

/// SHA-256 of `bytes` (file digests, key digests).
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// Trust roots read from a PEM file of CA certificates, and the file's SHA-256.
#[derive(Clone)]
pub struct Roots {
    pub file: PathBuf,
    store: Arc<RootCertStore>,
    pub digest: [u8; 32],
}

impl std::fmt::Debug for Roots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Roots")
            .field("file", &self.file)
            .field("count", &self.store.len())
            .finish()
    }
}

impl PartialEq for Roots {
    fn eq(&self, other: &Self) -> bool {
        self.file == other.file && self.digest == other.digest
    }
}
impl Eq for Roots {}

/// Reads the CA certificates of `path` (`what` names the setting in errors).
pub fn load_roots(path: &Path, what: &str) -> Result<Roots, String> {
    let bytes = read(path, what)?;
    let certs = parse_certs(&bytes, path, what)?;
    let mut store = RootCertStore::empty();
    for c in certs {
        store.add(c).map_err(|e| {
            format!(
                "{what} `{}`: a certificate is not a usable CA: {e}",
                path.display()
            )
        })?;
    }
    Ok(Roots {
        file: path.to_path_buf(),
        store: Arc::new(store),
        digest: sha256(&bytes),
    })
}

/// The system's trust roots (read once).
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut store = RootCertStore::empty();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    "no system trust roots found; upstream TLS without `ca_file` will fail"
                );
            }
            Arc::new(store)
        })
        .clone()
}

/// A listener's TLS: its pair and, for mTLS, the CAs client certificates must chain to.
/// TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`, session tickets on.
pub fn server_config(pair: &Pair, client_ca: Option<&Roots>) -> Result<Arc<ServerConfig>, String> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(roots) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(roots.store.clone(), provider())
                    .build()
                    .map_err(|e| format!("client_ca_file `{}`: {e}", roots.file.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(pair.key.clone())));
    config.alpn_protocols = LISTENER_ALPN.iter().map(|p| p.to_vec()).collect();
    config.ticketer = ticketer(pair.digest)?;
    Ok(Arc::new(config))
}

/// An upstream client's TLS: trust `roots` (default the system's), present `client` for mTLS,
/// offer `alpn`. Chain and host name are always verified; sessions are resumed (rustls's
/// in-memory cache, shared by every connection made with this configuration).
pub fn client_config(
    roots: Option<&Roots>,
    client: Option<&Pair>,
    alpn: &[u8],
) -> Result<Arc<ClientConfig>, String> {
    let store = roots.map_or_else(system_roots, |r| r.store.clone());
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(store);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(pair) => builder.with_client_cert_resolver(Arc::new(ClientCert(pair.key.clone()))),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// Always presents one client certificate.
#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn self_signed(names: &[&str]) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    #[test]
    fn a_pair_loads_with_its_names_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(&["scoring.example", "127.0.0.1"]);
        let c = write(dir.path(), "s.crt", &cert);
        let k = write(dir.path(), "s.key", &key);
        let pair = load_pair(&c, &k, SystemTime::now()).unwrap();
        assert_eq!(pair.info.sans, vec!["scoring.example", "127.0.0.1"]);
        assert!(pair.info.not_after > SystemTime::now());
        assert!(pair.info.summary().contains("scoring.example"));
        assert!(server_config(&pair, None).is_ok());
        assert!(client_config(None, Some(&pair), b"h2").is_ok());
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_naming_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = self_signed(&["a.example"]);
        let (_, other_key) = self_signed(&["b.example"]);
        let c = write(dir.path(), "a.crt", &cert);
        let k = write(dir.path(), "b.key", &other_key);
        let e = load_pair(&c, &k, SystemTime::now()).unwrap_err();
        assert!(
            e.contains("does not match") && e.contains("b.key") && e.contains("a.crt"),
            "{e}"
        );
    }

    #[test]
    fn not_pem_and_missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (_, key) = self_signed(&["a.example"]);
        let c = write(dir.path(), "junk.crt", "not a certificate\n");
        let k = write(dir.path(), "a.key", &key);
        let e = load_pair(&c, &k, SystemTime::now()).unwrap_err();
        assert!(
            e.contains("junk.crt") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = load_pair(&dir.path().join("gone.crt"), &k, SystemTime::now()).unwrap_err();
        assert!(
            e.contains("gone.crt") && e.contains("cannot be read"),
            "{e}"
        );
        let e = load_roots(&c, "ca_file").unwrap_err();
        assert!(e.starts_with("ca_file") && e.contains("junk.crt"), "{e}");
    }

    #[test]
    fn an_expired_or_future_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.example".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2030, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let c = write(dir.path(), "a.crt", &cert.pem());
        let k = write(dir.path(), "a.key", &key.serialize_pem());
        let year = |y: u64| UNIX_EPOCH + Duration::from_secs((y - 1970) * 31_556_952);
        assert!(load_pair(&c, &k, year(2025)).is_ok());
        let e = load_pair(&c, &k, year(2031)).unwrap_err();
        assert!(
            e.contains("expired at 2030-01-01") && e.contains("a.crt"),
            "{e}"
        );
        let e = load_pair(&c, &k, year(2019)).unwrap_err();
        assert!(e.contains("not valid before"), "{e}");
    }
}
