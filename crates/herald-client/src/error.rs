//! [`ClientError`]: everything that can go wrong talking to a Herald server.

use std::time::Duration;

/// An error from the client: the server's own error answer, or a failure to reach it, to read
/// its answer, or to build a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with an error status. `code` and `message` come from its JSON body
    /// `{"error": {"code": …, "message": …}}`; when the body is not that shape (a proxy's page,
    /// say), `code` is `http_<status>` and `message` is the start of the body.
    #[error("the server answered {status} ({code}): {message}")]
    Http { status: u16, code: String, message: String },
    /// The request could not be sent, or the answer could not be read (connection refused or
    /// reset, DNS, a body cut short…).
    #[error("cannot talk to the server")]
    Transport(#[from] reqwest::Error),
    /// The server did not answer (or, on a stream, sent nothing) in time.
    #[error("{what}: nothing from the server for {after:?}")]
    Timeout { what: &'static str, after: Duration },
    /// The server ended the stream without saying why (no `closed` event).
    #[error("the server ended the stream")]
    StreamEnded,
    /// The answer was not the JSON the API documents.
    #[error("cannot decode the server's {what}")]
    Decode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// An answer or one SSE event exceeded the bound the client keeps on memory.
    #[error("the server's {what} is larger than {limit} bytes")]
    TooLarge { what: &'static str, limit: usize },
    /// The server broke the protocol in another way (wrong content type, malformed `id:`…).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The base URL cannot be used.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// An argument was refused before any request was sent.
    #[error("invalid {what}: {reason}")]
    InvalidArgument { what: &'static str, reason: String },
    /// A token could not be signed.
    #[error("cannot sign the token")]
    Token(#[source] jsonwebtoken::errors::Error),
}

impl ClientError {
    /// The HTTP status of an error answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The `code` of an error answer, e.g. `"invalid_token"` or `"client_not_found"`.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Http { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether the server refused the credentials (401): a new token or key is needed.
    pub fn is_unauthorized(&self) -> bool {
        self.status() == Some(401)
    }

    /// Whether the same request may succeed later: the server was unreachable, busy, or broke
    /// the connection. Every other error (4xx, an answer the client cannot use) would only
    /// repeat itself.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Http { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            ClientError::Transport(_) | ClientError::Timeout { .. } | ClientError::StreamEnded => true,
            _ => false,
        }
    }

    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        ClientError::InvalidArgument { what, reason: reason.into() }
    }
}

/// A `Result` whose error is [`ClientError`].
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_errors_are_the_transient_ones() {
        let http = |status| ClientError::Http { status, code: "x".into(), message: "y".into() };
        assert!(http(503).is_retryable() && http(500).is_retryable() && http(429).is_retryable());
        assert!(!http(401).is_retryable() && !http(400).is_retryable() && !http(404).is_retryable());
        assert!(http(401).is_unauthorized());
        assert!(ClientError::StreamEnded.is_retryable());
        assert!(!ClientError::TooLarge { what: "SSE event", limit: 1 }.is_retryable());
        assert_eq!(http(422).code(), Some("x"));
    }
}
