//! Layer 0 (values): the one address type of a scoring instance, `host:port` or `[v6]:port`,
//! parsed once where the endpoint file is read and used everywhere an instance is named.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// An instance address as written in the endpoint file, checked: an IP address or a DNS name,
/// and a port from 1 to 65535. Displays exactly as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceAddr {
    text: Box<str>,
    /// `Some` when the host is an IP address; `None` for a DNS name to resolve.
    ip: Option<IpAddr>,
    port: u16,
}

// === impl InstanceAddr ===

impl InstanceAddr {
    /// Parses `host:port`, `[v6]:port`; the error says what is wrong, without the address.
    pub fn parse(s: &str) -> Result<InstanceAddr, String> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let Some((h, p)) = rest.split_once("]:") else {
                return Err("an IPv6 instance is written [address]:port".into());
            };
            if h.parse::<Ipv6Addr>().is_err() {
                return Err(format!("`{h}` is not an IPv6 address"));
            }
            (h, p)
        } else {
            let Some((h, p)) = s.rsplit_once(':') else {
                return Err("expected host:port, like 127.0.0.1:9001".into());
            };
            if h.contains(':') {
                return Err("an IPv6 instance is written [address]:port".into());
            }
            (h, p)
        };
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(format!("port `{port}` is not a number from 1 to 65535")),
        };
        if host.is_empty() {
            return Err("the host is missing".into());
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(InstanceAddr {
                text: s.into(),
                ip: Some(ip),
                port,
            });
        }
        if !is_dns_name(host) {
            return Err(format!("`{host}` is not an IP address or a DNS name"));
        }
        Ok(InstanceAddr {
            text: s.into(),
            ip: None,
            port,
        })
    }

    /// The address a host name resolved to.
    pub fn from_socket(addr: SocketAddr) -> InstanceAddr {
        InstanceAddr {
            text: addr.to_string().into(),
            ip: Some(addr.ip()),
            port: addr.port(),
        }
    }

    /// The address as written (`host:port`), also the HTTP authority sent to the instance.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the host is a DNS name that stands for the addresses it resolves to.
    pub fn is_name(&self) -> bool {
        self.ip.is_none()
    }

    /// The socket address, when the host is an IP address.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.ip.map(|ip| SocketAddr::new(ip, self.port))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host as written, without the port (and without an IPv6 address's brackets): the
    /// name a TLS instance's certificate is verified against by default.
    pub fn host(&self) -> &str {
        let host = match self.text.rsplit_once(':') {
            Some((h, _)) => h,
            None => &self.text,
        };
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
    }
}

impl fmt::Display for InstanceAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// An address equals the text it was written as.
impl PartialEq<str> for InstanceAddr {
    fn eq(&self, other: &str) -> bool {
        *self.text == *other
    }
}

impl PartialEq<&str> for InstanceAddr {
    fn eq(&self, other: &&str) -> bool {
        *self.text == **other
    }
}

impl FromStr for InstanceAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        InstanceAddr::parse(s)
    }
}

/// A DNS name (RFC 1123 labels); a last label of digits only is a mistyped IPv4 address, not
/// a name (RFC 3696 section 2).
fn is_dns_name(host: &str) -> bool {
    let labels_ok = host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    let numeric_tld = host
        .rsplit('.')
        .next()
        .is_some_and(|l| l.chars().all(|c| c.is_ascii_digit()));
    labels_ok && !numeric_tld
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_names_are_told_apart() {
        let a = InstanceAddr::parse("10.0.0.5:8080").expect("valid");
        assert!(!a.is_name());
        assert_eq!(
            a.socket_addr(),
            Some("10.0.0.5:8080".parse().expect("addr"))
        );
        let v6 = InstanceAddr::parse("[::1]:9").expect("valid");
        assert_eq!(v6.socket_addr(), Some("[::1]:9".parse().expect("addr")));
        let n = InstanceAddr::parse("scoring-blue.ns.svc.cluster.local:8080").expect("valid");
        assert!(n.is_name());
        assert_eq!(n.socket_addr(), None);
        assert_eq!(n.to_string(), "scoring-blue.ns.svc.cluster.local:8080");
        assert_eq!(n.port(), 8080);
        assert_eq!(n.host(), "scoring-blue.ns.svc.cluster.local");
        assert_eq!(v6.host(), "::1");
        assert_eq!(a.host(), "10.0.0.5");
    }

    #[test]
    fn bad_addresses_say_what_is_wrong() {
        let err = |s: &str| InstanceAddr::parse(s).expect_err(s);
        assert_eq!(err("10.0.0.5"), "expected host:port, like 127.0.0.1:9001");
        assert_eq!(err("::1:80"), "an IPv6 instance is written [address]:port");
        assert_eq!(err("[zz]:80"), "`zz` is not an IPv6 address");
        assert_eq!(err("h:0"), "port `0` is not a number from 1 to 65535");
        assert_eq!(
            err("h:70000"),
            "port `70000` is not a number from 1 to 65535"
        );
        assert_eq!(err(":80"), "the host is missing");
        assert_eq!(
            err("bad_host:80"),
            "`bad_host` is not an IP address or a DNS name"
        );
        assert_eq!(
            err("10.0.0.300:80"),
            "`10.0.0.300` is not an IP address or a DNS name"
        );
    }

    #[test]
    fn a_resolved_address_reads_as_its_socket_address() {
        let a = InstanceAddr::from_socket("127.0.0.1:9001".parse().expect("addr"));
        assert_eq!(a.as_str(), "127.0.0.1:9001");
        assert_eq!(a, InstanceAddr::parse("127.0.0.1:9001").expect("valid"));
    }
}
