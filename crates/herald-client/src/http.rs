//! What the publisher and the subscriber share: the base URL and how routes are built on it,
//! the HTTP client's settings, and reading answers within bounds.

use std::time::Duration;

use reqwest::{Response, Url};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::{ClientError, Result};

/// Longest wait for a TCP (and TLS) connection to the server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for a whole answer to a request that does not wait on purpose (publish,
/// presence, lists), and for the headers of a stream.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest JSON answer read: 128 MiB. A page holds at most 100 notifications of at most 1 MiB
/// (the server's body limit), plus their envelopes; past this the answer is not Herald's.
pub const MAX_RESPONSE_BYTES: usize = 128 * 1024 * 1024;

/// Most of an error answer's body kept for its message: errors are short; a proxy's HTML page
/// is cut here.
pub const MAX_ERROR_BODY_BYTES: usize = 4 * 1024;

/// The server's base URL, e.g. `http://127.0.0.1:7300` or `https://example.com/herald/`.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    base: Url,
}

impl Endpoint {
    pub fn parse(base_url: &str) -> Result<Self> {
        let invalid =
            |reason: &str| ClientError::InvalidUrl { url: base_url.to_owned(), reason: reason.to_owned() };
        let mut base = Url::parse(base_url).map_err(|e| invalid(&e.to_string()))?;
        match base.scheme() {
            "http" => {}
            "https" if cfg!(feature = "rustls-tls") => {}
            "https" => return Err(invalid("https needs herald-client's `rustls-tls` feature")),
            _ => return Err(invalid("the scheme must be http or https")),
        }
        if base.cannot_be_a_base() || base.host().is_none() {
            return Err(invalid("it has no host"));
        }
        base.set_query(None);
        base.set_fragment(None);
        Ok(Self { base })
    }

    /// The URL of the route made of `segments` under the base path. Each segment is
    /// percent-encoded as one path segment (so `/`, `%`, `?`, `#` and spaces in an id are data).
    pub fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut().expect("a base URL has a path").pop_if_empty().extend(segments);
        url
    }
}

/// Checks an id that goes into a URL path. `.` and `..` cannot be sent as a path segment (URL
/// parsers, this one included, resolve them, even percent-encoded), so they are refused here
/// rather than silently reaching another route.
pub(crate) fn path_id<'a>(what: &'static str, id: &'a str) -> Result<&'a str> {
    crate::token::check_id(what, id)?;
    if id == "." || id == ".." {
        return Err(ClientError::invalid(what, format!("{id:?} cannot be used in a URL path")));
    }
    Ok(id)
}

/// Checks a topic that goes into a URL path (`GET /v1/topics/{topic}`): `.` and `..` are topic
/// names, but cannot be sent as a path segment (see [`path_id`]).
pub(crate) fn path_topic(topic: &str) -> Result<&str> {
    crate::token::check_topic(topic)?;
    if topic == "." || topic == ".." {
        return Err(ClientError::invalid("topic", format!("{topic:?} cannot be used in a URL path")));
    }
    Ok(topic)
}

/// The HTTP client, with the settings every request shares.
pub(crate) fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("herald-client/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(ClientError::Transport)
}

/// Reads a JSON answer: the error answer as [`ClientError::Http`], else the body (at most
/// [`MAX_RESPONSE_BYTES`]) as `T`.
pub(crate) async fn read_json<T: DeserializeOwned>(response: Response, what: &'static str) -> Result<T> {
    let response = check_status(response).await?;
    let body = read_body(response, MAX_RESPONSE_BYTES)
        .await?
        .ok_or(ClientError::TooLarge { what, limit: MAX_RESPONSE_BYTES })?;
    serde_json::from_slice(&body).map_err(|source| ClientError::Decode { what, source })
}

/// Passes a success answer through; turns any other into [`ClientError::Http`].
pub(crate) async fn check_status(response: Response) -> Result<Response> {
    if response.status().is_success() {
        return Ok(response);
    }
    Err(http_error(response).await)
}

async fn http_error(response: Response) -> ClientError {
    #[derive(Deserialize)]
    struct Body {
        error: Detail,
    }
    #[derive(Deserialize)]
    struct Detail {
        code: String,
        message: String,
    }
    let status = response.status();
    let mut body = Vec::new();
    let mut response = response;
    // Best effort: an error answer cut short still has its status.
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = MAX_ERROR_BODY_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == MAX_ERROR_BODY_BYTES {
            break;
        }
    }
    match serde_json::from_slice::<Body>(&body) {
        Ok(Body { error }) => {
            ClientError::Http { status: status.as_u16(), code: error.code, message: error.message }
        }
        Err(_) => {
            let text = String::from_utf8_lossy(&body);
            let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            let message = if text.is_empty() {
                status.canonical_reason().unwrap_or("no message").to_owned()
            } else {
                text
            };
            ClientError::Http { status: status.as_u16(), code: format!("http_{}", status.as_u16()), message }
        }
    }
}

/// Serializes a list of topics given as any strings.
pub(crate) fn as_strs<S: serde::Serializer, T: AsRef<str>>(
    items: &[T],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(items.iter().map(AsRef::as_ref))
}

/// The whole body, or `None` when it is longer than `limit`.
async fn read_body(mut response: Response, limit: usize) -> Result<Option<Vec<u8>>> {
    if response.content_length().is_some_and(|len| len > limit as u64) {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(ClientError::Transport)? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_encoded_as_one_path_segment() {
        let endpoint = Endpoint::parse("http://127.0.0.1:7300").unwrap();
        let url = endpoint.url(&["v1", "users", "a/b c?#%é", "presence"]);
        assert_eq!(url.as_str(), "http://127.0.0.1:7300/v1/users/a%2Fb%20c%3F%23%25%C3%A9/presence");
        let prefixed = Endpoint::parse("http://h/herald/?x=1#f").unwrap();
        assert_eq!(prefixed.url(&["v1", "notify"]).as_str(), "http://h/herald/v1/notify");
        let no_slash = Endpoint::parse("http://h/herald").unwrap();
        assert_eq!(no_slash.url(&["healthz"]).as_str(), "http://h/herald/healthz");
    }

    #[test]
    fn dot_ids_and_bad_urls_are_refused() {
        assert!(path_id("user id", ".").is_err() && path_id("user id", "..").is_err());
        assert!(path_id("user id", "...").is_ok() && path_id("user id", "").is_err());
        assert!(path_topic(".").is_err() && path_topic("..").is_err() && path_topic("a b").is_err());
        assert_eq!(path_topic("post:4/2").unwrap(), "post:4/2");
        assert!(Endpoint::parse("ftp://h").is_err());
        assert!(Endpoint::parse("not a url").is_err());
        assert!(Endpoint::parse("mailto:x@y").is_err());
        assert_eq!(Endpoint::parse("https://h").is_ok(), cfg!(feature = "rustls-tls"));
    }
}
