//! Layer 2 (one instance): TLS to an instance. The deployment's rustls client configuration
//! (one `Arc` shared by all its instances' connections, so that rustls's session cache resumes
//! sessions) and the name the instance's certificate is verified against; the handshake that
//! follows the TCP connect. Chain and name are always verified.

use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How an instance's connections are secured.
#[derive(Clone)]
pub(crate) struct Tls {
    connector: TlsConnector,
    /// The name verified, or why the name given cannot be one (then every handshake fails with
    /// that reason).
    name: Result<ServerName<'static>, Arc<str>>,
    /// The `Host` of requests sent over it: the name verified, with the port unless 443 (a
    /// virtual-hosted HTTPS service routes by it, as by the SNI).
    host: Option<http::HeaderValue>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match &self.name {
            Ok(n) => n.to_str().into_owned(),
            Err(e) => e.to_string(),
        };
        f.debug_struct("Tls").field("name", &name).finish()
    }
}

// === impl Tls ===

impl Tls {
    /// TLS with `config`, verifying the instance's certificate for `name` (a DNS name or an IP
    /// address). A `name` that is neither makes every handshake fail, saying so.
    pub(crate) fn new(config: Arc<ClientConfig>, name: &str, port: u16) -> Tls {
        let host = if port == 443 {
            name.to_string()
        } else if name.contains(':') {
            format!("[{name}]:{port}")
        } else {
            format!("{name}:{port}")
        };
        let host = http::HeaderValue::from_str(&host).ok();
        let name = ServerName::try_from(name.to_string()).map_err(|_| {
            let why = format!(
                "`{name}` is not a DNS name or IP address to verify a certificate for; \
                 set `tls.server_name`"
            );
            why.into()
        });
        Tls {
            connector: TlsConnector::from(config),
            name,
            host,
        }
    }

    /// The `Host` header of requests to the instance.
    pub(crate) fn host(&self) -> Option<&http::HeaderValue> {
        self.host.as_ref()
    }

    /// The TLS handshake over a connected `tcp`. A failure is an `InvalidData` I/O error
    /// wrapping the `rustls::Error` that says why.
    pub(crate) async fn handshake(&self, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        let name = match &self.name {
            Ok(n) => n.clone(),
            Err(e) => {
                let e = rustls::Error::General(e.to_string());
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
            }
        };
        self.connector.connect(name, tcp).await
    }
}
