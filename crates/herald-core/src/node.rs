//! Who a node is: its [`NodeId`] (in `/healthz`, the logs, and what a cluster's nodes tell each
//! other) and the [`ClusterName`] of the nodes it shares a bus with (the prefix of every broker
//! subject, so that two clusters on one broker do not hear each other).
//!
//! Both are checked once, where they are configured, and are cheap to clone afterwards. Their
//! rules are stricter than a user id's because they travel in places with their own syntax: a
//! node id in log lines and envelopes (no spaces, nothing unprintable), a cluster name in NATS
//! subjects and Redis channels (no `.`, `*`, `>` or spaces, which NATS gives meaning to).

use std::fmt;
use std::sync::Arc;

/// Longest node id, in bytes: a host name and a port fit (`<hostname>:<port>`, the default of
/// `herald serve`); a longer one is refused, not cut.
pub const NODE_ID_BYTES_MAX: usize = 64;

/// Longest cluster name, in bytes: it starts every broker subject, so it is kept short.
pub const CLUSTER_NAME_BYTES_MAX: usize = 32;

/// Why a node id or a cluster name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidName {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} is {len} bytes long; at most {max} are allowed")]
    TooLong { what: &'static str, len: usize, max: usize },
    #[error("{what} {value:?} has {found:?}; {allowed}")]
    Character { what: &'static str, value: String, found: char, allowed: &'static str },
}

/// One node of a cluster (one `herald serve` process), unique among the nodes sharing a bus:
/// 1 to [`NODE_ID_BYTES_MAX`] bytes of printable ASCII without spaces (`web-3:7300`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(Arc<str>);

impl NodeId {
    pub fn new(id: impl AsRef<str>) -> Result<Self, InvalidName> {
        let id = id.as_ref();
        check(id, "node id", NODE_ID_BYTES_MAX, "use printable ASCII without spaces", |b| {
            b.is_ascii_graphic()
        })?;
        Ok(Self(Arc::from(id)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The name of a cluster: the nodes that share one store and one bus. 1 to
/// [`CLUSTER_NAME_BYTES_MAX`] bytes of ASCII letters, digits, `-` and `_` (`herald`, `eu_prod`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterName(Arc<str>);

impl ClusterName {
    pub fn new(name: impl AsRef<str>) -> Result<Self, InvalidName> {
        let name = name.as_ref();
        check(name, "cluster name", CLUSTER_NAME_BYTES_MAX, "use letters, digits, - and _ only", |b| {
            b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
        })?;
        Ok(Self(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check(
    value: &str,
    what: &'static str,
    max: usize,
    allowed: &'static str,
    fits: impl Fn(u8) -> bool,
) -> Result<(), InvalidName> {
    if value.is_empty() {
        return Err(InvalidName::Empty { what });
    }
    if value.len() > max {
        return Err(InvalidName::TooLong { what, len: value.len(), max });
    }
    // A non-ASCII character is refused by its first byte; name the whole character.
    if let Some(found) = value.chars().find(|c| !c.is_ascii() || !fits(*c as u8)) {
        return Err(InvalidName::Character { what, value: value.to_owned(), found, allowed });
    }
    Ok(())
}

macro_rules! name_traits {
    ($name:ident) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidName;

            fn from_str(s: &str) -> Result<Self, InvalidName> {
                Self::new(s)
            }
        }
    };
}

name_traits!(NodeId);
name_traits!(ClusterName);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_printable_ascii_without_spaces() {
        for good in ["web-3:7300", "a", "10.0.0.7:7300", "x".repeat(NODE_ID_BYTES_MAX).as_str()] {
            assert_eq!(NodeId::new(good).unwrap().as_str(), good);
        }
        assert_eq!(NodeId::new(""), Err(InvalidName::Empty { what: "node id" }));
        assert!(matches!(NodeId::new("x".repeat(65)), Err(InvalidName::TooLong { len: 65, max: 64, .. })));
        for (bad, found) in [("web 3", ' '), ("web\t3", '\t'), ("nœud", 'œ'), ("a\u{7f}", '\u{7f}')] {
            match NodeId::new(bad) {
                Err(InvalidName::Character { found: f, .. }) => assert_eq!(f, found, "{bad:?}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn cluster_names_are_letters_digits_dashes_and_underscores() {
        for good in ["herald", "eu_prod-2", "x".repeat(CLUSTER_NAME_BYTES_MAX).as_str()] {
            assert_eq!(ClusterName::new(good).unwrap().as_str(), good);
        }
        for bad in ["", "a.b", "a*", "a>", "a b", "é", &"x".repeat(33)] {
            assert!(ClusterName::new(bad).is_err(), "{bad:?}");
        }
        let message = ClusterName::new("eu.prod").unwrap_err().to_string();
        assert_eq!(message, r#"cluster name "eu.prod" has '.'; use letters, digits, - and _ only"#);
    }
}
