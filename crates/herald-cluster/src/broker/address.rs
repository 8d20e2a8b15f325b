//! Where a node's broker is: the URL given to [`super::connect`], checked before any socket is
//! opened, so that a typo fails at startup with [`BrokerError::InvalidUrl`] and its reason
//! rather than as a connection that never comes up. Nothing here connects.
//!
//! Taken: `nats://host[:port]` and `redis://host[:port][/db]`, the port 4222 or 6379 when
//! absent. Refused, each with its own reason: other schemes (TLS, `tls://` and `rediss://`, is
//! not supported yet), credentials (no broker authentication is configured yet, and an error
//! message must not carry a password), query options and fragments (none is read, and an
//! option silently ignored is worse than a refusal).

use std::fmt;

use super::BrokerError;

/// NATS's registered client port, used when a `nats://` URL has none.
pub const NATS_DEFAULT_PORT: u16 = 4222;

/// Redis's port, used when a `redis://` URL has none.
pub const REDIS_DEFAULT_PORT: u16 = 6379;

/// A broker URL that [`BrokerAddress::parse`] accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerAddress {
    /// A core NATS server.
    Nats { host: Host, port: u16 },
    /// A Redis server. `db` is passed on to the connection, but Redis pub/sub channels are
    /// server-wide: two nodes on different databases of one server still hear each other.
    Redis { host: Host, port: u16, db: u32 },
}

/// A host name or address, as written in the URL (IPv6 without its brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    name: String,
    is_ipv6: bool,
}

impl Host {
    /// The name or address alone, as a resolver takes it (`::1`, not `[::1]`).
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// `host:port` as it goes back into a URL (`[::1]:4222` for IPv6).
impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_ipv6 { write!(f, "[{}]", self.name) } else { f.write_str(&self.name) }
    }
}

impl BrokerAddress {
    /// Checks `url` (see the module's docs for what is taken).
    pub fn parse(url: &str) -> Result<Self, BrokerError> {
        let invalid =
            |reason: &str| BrokerError::InvalidUrl { url: url.to_owned(), reason: reason.to_owned() };
        let parsed = ::url::Url::parse(url).map_err(|error| invalid(&error.to_string()))?;
        let default_port = match parsed.scheme() {
            "nats" => NATS_DEFAULT_PORT,
            "redis" => REDIS_DEFAULT_PORT,
            "tls" | "rediss" => return Err(invalid("TLS to the broker is not supported yet")),
            _ => return Err(invalid("the scheme must be nats:// or redis://")),
        };
        let host = match parsed.host() {
            None => return Err(invalid("no host")),
            Some(::url::Host::Domain("")) => return Err(invalid("no host")),
            Some(::url::Host::Domain(name)) => Host { name: name.to_owned(), is_ipv6: false },
            Some(::url::Host::Ipv4(ip)) => Host { name: ip.to_string(), is_ipv6: false },
            Some(::url::Host::Ipv6(ip)) => Host { name: ip.to_string(), is_ipv6: true },
        };
        let port = match parsed.port() {
            Some(0) => return Err(invalid("port 0 is not a port to connect to")),
            Some(port) => port,
            None => default_port,
        };
        if !parsed.username().is_empty() || parsed.password().is_some() {
            // The error is logged: it shows the URL without the password.
            let mut shown = parsed.clone();
            let _ = shown.set_password(Some("***"));
            return Err(BrokerError::InvalidUrl {
                url: shown.to_string(),
                reason: "credentials in the URL are not supported yet".to_owned(),
            });
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(invalid("the URL takes no options (nothing after `?` or `#`)"));
        }
        let path = parsed.path().strip_prefix('/').unwrap_or(parsed.path());
        if default_port == NATS_DEFAULT_PORT {
            if !path.is_empty() {
                return Err(invalid("a nats:// URL has no path"));
            }
            return Ok(Self::Nats { host, port });
        }
        let db = if path.is_empty() {
            0
        } else {
            path.parse().map_err(|_| invalid("the path of a redis:// URL is a database number"))?
        };
        Ok(Self::Redis { host, port, db })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(url: &str) -> String {
        match BrokerAddress::parse(url) {
            Err(BrokerError::InvalidUrl { reason, .. }) => reason,
            other => panic!("{url} was not refused: {other:?}"),
        }
    }

    #[test]
    fn takes_both_schemes_with_default_ports() {
        let nats = BrokerAddress::parse("nats://127.0.0.1").unwrap();
        assert!(matches!(nats, BrokerAddress::Nats { port: NATS_DEFAULT_PORT, .. }), "{nats:?}");
        let redis = BrokerAddress::parse("redis://cache.internal:7000/3").unwrap();
        let BrokerAddress::Redis { host, port, db } = redis else { panic!("{redis:?}") };
        assert_eq!((host.name(), port, db), ("cache.internal", 7000, 3));
        let BrokerAddress::Redis { host, .. } = BrokerAddress::parse("redis://[::1]:6379/").unwrap() else {
            panic!()
        };
        assert_eq!((host.name(), host.to_string().as_str()), ("::1", "[::1]"));
    }

    #[test]
    fn refuses_with_a_reason() {
        assert!(reason("http://127.0.0.1:4222").contains("scheme"));
        assert!(reason("rediss://127.0.0.1:6379").contains("TLS"));
        assert!(reason("127.0.0.1:4222").contains("relative URL"));
        assert!(reason("nats://").contains("no host"));
        assert!(reason("redis://:6379").contains("empty host"));
        assert!(reason("nats://127.0.0.1:99999").contains("invalid port"));
        assert!(reason("nats://127.0.0.1:0").contains("port 0"));
        assert!(reason("nats://user:secret@127.0.0.1:4222").contains("credentials"));
        let refused = BrokerAddress::parse("nats://user:secret@127.0.0.1:4222").unwrap_err().to_string();
        assert!(!refused.contains("secret"), "{refused}");
        assert!(reason("redis://127.0.0.1:6379/?protocol=resp2").contains("options"));
        assert!(reason("nats://127.0.0.1:4222/subject").contains("no path"));
        assert!(reason("redis://127.0.0.1:6379/zero").contains("database number"));
    }
}
