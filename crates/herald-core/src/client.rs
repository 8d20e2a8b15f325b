//! Who a connected client is and how its connection ends: [`ClientInfo`], [`Transport`],
//! [`CloseReason`].
//!
//! Vocabulary shared by the hub (which attaches clients and ends them), the bus (which carries
//! session closes between nodes) and the subscription (which reports the end to its transport).
//! It sits below all three so that none of them has to import another to name a client; the
//! wire names (`as_str`) are the ones the protocol sends.

use crate::ids::{ClientId, SessionId, UserId};

/// How a client is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Sse,
    Poll,
    Ws,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::Poll => "poll",
            Transport::Ws => "ws",
        }
    }

    /// The transport [`Transport::as_str`] names, if any.
    pub fn parse(name: &str) -> Option<Self> {
        [Transport::Sse, Transport::Poll, Transport::Ws].into_iter().find(|t| t.as_str() == name)
    }
}

/// Why the server ends a client's connection; sent to the client as a `closed` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// Its session or the client itself was the least recently active one over a limit, or an
    /// operator closed the client (the admin page: [`crate::Hub::close_client`]).
    Evicted,
    /// Another connection gave the same client id.
    Replaced,
    /// The publisher closed its session (or all the user's sessions).
    SessionClosed,
    /// Its token expired.
    TokenExpired,
    /// Its queue was full: it fell behind. Durable notifications resume on reconnect.
    Lagging,
    /// The server is shutting down.
    Shutdown,
    /// The server could not read the user's log; reconnecting resumes where it stopped.
    Error,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Evicted => "evicted",
            CloseReason::Replaced => "replaced",
            CloseReason::SessionClosed => "session_closed",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::Lagging => "lagging",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Error => "error",
        }
    }

    /// Every reason, each once, in the order of [`CloseReason::index`] (the metrics' order,
    /// [`crate::metrics::CLOSE_REASONS`], and the hub's one-byte code of a reason).
    pub(crate) const ALL: [CloseReason; 7] = [
        CloseReason::Evicted,
        CloseReason::Replaced,
        CloseReason::SessionClosed,
        CloseReason::TokenExpired,
        CloseReason::Lagging,
        CloseReason::Shutdown,
        CloseReason::Error,
    ];

    /// This reason's place in [`CloseReason::ALL`].
    pub(crate) fn index(self) -> usize {
        Self::ALL.iter().position(|&r| r == self).expect("ALL lists every reason")
    }

    /// The reason [`CloseReason::as_str`] names, if any.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| reason.as_str() == name)
    }
}

/// Who a connected client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    pub user: UserId,
    pub session: SessionId,
    pub client: ClientId,
    pub transport: Transport,
}
