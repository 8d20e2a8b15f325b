//! Identifiers of the model: [`UserId`], [`SessionId`], [`ClientId`], [`Seq`], and [`Topic`].
//!
//! Ids are validated once, at the edge, and are cheap to clone afterwards (`Arc<str>`).
//! Client ids are minted here too: they carry a MAC over the user and session they were
//! issued for, so a reloaded tab can give its id back after a server restart (or to another
//! node) and the server can still tell whether the id belongs to that user and session.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Longest id accepted anywhere (user, session, client, idempotency key), in bytes.
pub const ID_BYTES_MAX: usize = 128;

/// A notification's position in its user's log: 1, 2, 3, … with no gaps. 0 means "before the first".
pub type Seq = u64;

/// Why an id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidId {
    #[error("{kind} id must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} id is {len} bytes long; at most {max} are allowed", max = ID_BYTES_MAX)]
    TooLong { kind: &'static str, len: usize },
    #[error("{kind} id must not contain control characters")]
    ControlCharacter { kind: &'static str },
}

fn validate(kind: &'static str, id: &str) -> Result<(), InvalidId> {
    if id.is_empty() {
        return Err(InvalidId::Empty { kind });
    }
    if id.len() > ID_BYTES_MAX {
        return Err(InvalidId::TooLong { kind, len: id.len() });
    }
    // Control characters would break SSE framing and log lines; nobody needs them in an id.
    if id.chars().any(char::is_control) {
        return Err(InvalidId::ControlCharacter { kind });
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$meta:meta])* $name:ident, $kind:literal) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `id`: non-empty, at most [`ID_BYTES_MAX`] bytes, no control characters.
            pub fn new(id: impl AsRef<str>) -> Result<Self, InvalidId> {
                let id = id.as_ref();
                validate($kind, id)?;
                Ok(Self(Arc::from(id)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

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

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::new(&*s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// A signed-in user: the session group. All sessions and clients of one user share its log.
    UserId,
    "user"
);
string_id!(
    /// One sign-in of a user (a browser profile, a device): the token's `sid` claim.
    SessionId,
    "session"
);
string_id!(
    /// One client process (a tab, an app instance) with one live connection. Minted by
    /// [`ClientIdMinter`]; never chosen by the client.
    ClientId,
    "client"
);

/// Longest topic, in bytes.
pub const TOPIC_BYTES_MAX: usize = 128;

/// Why a topic (or a pattern of topics) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidTopic {
    #[error("a topic must not be empty")]
    Empty,
    #[error("a topic is at most {max} bytes long, not {len}", max = TOPIC_BYTES_MAX)]
    TooLong { len: usize },
    #[error("a topic is made of A-Z a-z 0-9 _ . : @ / -; byte {at} is {found:?}")]
    Character { at: usize, found: char },
}

/// Whether `byte` may be in a topic: `[A-Za-z0-9_.:@/-]`. Nothing that needs escaping in a URL's
/// query (`?topics=a,b`), a JSON string, an SSE line or a broker subject's last token.
fn is_topic_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b':' | b'@' | b'/' | b'-')
}

pub(crate) fn check_topic_text(text: &str) -> Result<(), InvalidTopic> {
    if text.len() > TOPIC_BYTES_MAX {
        return Err(InvalidTopic::TooLong { len: text.len() });
    }
    match text.bytes().position(|b| !is_topic_byte(b)) {
        Some(at) => Err(InvalidTopic::Character { at, found: text[at..].chars().next().unwrap_or('?') }),
        None => Ok(()),
    }
}

/// A topic: 1 to [`TOPIC_BYTES_MAX`] bytes of `[A-Za-z0-9_.:@/-]`. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    pub fn new(topic: impl AsRef<str>) -> Result<Self, InvalidTopic> {
        let topic = topic.as_ref();
        if topic.is_empty() {
            return Err(InvalidTopic::Empty);
        }
        check_topic_text(topic)?;
        Ok(Self(Arc::from(topic)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({:?})", &*self.0)
    }
}

impl serde::Serialize for Topic {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Topic {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::new(&*s).map_err(serde::de::Error::custom)
    }
}

/// Random bytes in a client id; 96 bits make ids unguessable.
const CLIENT_ID_RANDOM_BYTES: usize = 12;
/// Bytes of MAC in a client id; 64 bits are plenty against forging an id for another user.
const CLIENT_ID_MAC_BYTES: usize = 8;

/// Mints client ids bound to a user and a session, and checks ids given back by clients.
///
/// An id is `base64url(random ‖ HMAC-SHA256(key, user ‖ 0 ‖ session ‖ 0 ‖ random)[..8])`, 27
/// characters. Because the binding is in the id itself, it survives restarts and works on every
/// node that shares the key, with no table to keep.
#[derive(Clone)]
pub struct ClientIdMinter {
    key: Arc<[u8]>,
}

impl fmt::Debug for ClientIdMinter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientIdMinter { .. }")
    }
}

impl ClientIdMinter {
    pub fn new(key: &[u8]) -> Self {
        Self { key: Arc::from(key) }
    }

    /// A fresh, unguessable client id for this user and session.
    pub fn mint(&self, user: &UserId, session: &SessionId) -> ClientId {
        let random: [u8; CLIENT_ID_RANDOM_BYTES] = rand::random();
        self.encode(user, session, &random)
    }

    /// `Some(id)` if `candidate` was minted for this user and session, else `None`.
    pub fn verify(&self, candidate: &str, user: &UserId, session: &SessionId) -> Option<ClientId> {
        let bytes = URL_SAFE_NO_PAD.decode(candidate).ok()?;
        if bytes.len() != CLIENT_ID_RANDOM_BYTES + CLIENT_ID_MAC_BYTES {
            return None;
        }
        let (random, mac) = bytes.split_at(CLIENT_ID_RANDOM_BYTES);
        let expected = self.mac(user, session, random);
        expected.verify_truncated_left(mac).ok()?;
        ClientId::new(candidate).ok()
    }

    fn mac(&self, user: &UserId, session: &SessionId, random: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(user.as_str().as_bytes());
        mac.update(&[0]);
        mac.update(session.as_str().as_bytes());
        mac.update(&[0]);
        mac.update(random);
        mac
    }

    fn encode(&self, user: &UserId, session: &SessionId, random: &[u8]) -> ClientId {
        let tag = self.mac(user, session, random).finalize().into_bytes();
        let mut bytes = Vec::with_capacity(CLIENT_ID_RANDOM_BYTES + CLIENT_ID_MAC_BYTES);
        bytes.extend_from_slice(random);
        bytes.extend_from_slice(&tag[..CLIENT_ID_MAC_BYTES]);
        ClientId::new(URL_SAFE_NO_PAD.encode(bytes)).expect("a minted id is valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        assert!(UserId::new("alice").is_ok());
        assert_eq!(UserId::new(""), Err(InvalidId::Empty { kind: "user" }));
        assert!(matches!(SessionId::new("x".repeat(129)), Err(InvalidId::TooLong { len: 129, .. })));
        assert!(UserId::new("x".repeat(128)).is_ok());
        assert!(matches!(UserId::new("a\nb"), Err(InvalidId::ControlCharacter { .. })));
    }

    #[test]
    fn client_ids_are_bound_to_user_and_session() {
        let minter = ClientIdMinter::new(b"key");
        let alice = UserId::new("alice").unwrap();
        let bob = UserId::new("bob").unwrap();
        let s1 = SessionId::new("s1").unwrap();
        let s2 = SessionId::new("s2").unwrap();
        let id = minter.mint(&alice, &s1);
        assert_eq!(minter.verify(id.as_str(), &alice, &s1), Some(id.clone()));
        assert_eq!(minter.verify(id.as_str(), &bob, &s1), None);
        assert_eq!(minter.verify(id.as_str(), &alice, &s2), None);
        assert_eq!(ClientIdMinter::new(b"other").verify(id.as_str(), &alice, &s1), None);
        assert_eq!(minter.verify("not base64!", &alice, &s1), None);
        assert_ne!(minter.mint(&alice, &s1), id);
    }
}
