//! A minimal HTTP/1.1 client over one TCP connection: write a request, read the response head,
//! read the body (content-length, chunked, or until EOF) all at once or as it streams.
//!
//! Hand-written rather than hyper or reqwest so that the generator, which shares two cores with
//! the server it measures, spends as little CPU and memory per connection as possible, and so that
//! a streaming body can be read straight from the socket's buffer.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context as _, bail, ensure};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::sys::connect_from;

/// Largest response head accepted; a longer one is an error, not a reason to buffer forever.
const HEAD_BYTES_MAX: usize = 16 * 1024;
/// Most headers parsed in one response head.
const HEADERS_MAX: usize = 32;
/// Bytes reserved for each read. Small, because an idle subscriber keeps its buffer, and 15,000
/// of them share the machine with the server.
const READ_CHUNK: usize = 4 * 1024;
/// Largest body read whole (publish answers, poll answers).
pub const BODY_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Where to send requests: an address on this machine, the `Host` header, a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub host: String,
    /// Path and query, e.g. `/v1/stream` or `/sub/{user}`.
    pub path: String,
}

impl Endpoint {
    /// Parses `http://HOST:PORT/PATH` (or `ws://`). The host must be a loopback address or
    /// `localhost`: this generator only ever loads servers on this machine.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("ws://"))
            .with_context(|| format!("{url}: only http:// and ws:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (host, port.parse::<u16>().with_context(|| format!("{url}: bad port"))?),
            None => (authority, 80),
        };
        let ip: IpAddr = if host == "localhost" {
            Ipv4Addr::LOCALHOST.into()
        } else {
            host.parse().with_context(|| format!("{url}: the host must be an IP address or localhost"))?
        };
        ensure!(ip.is_loopback(), "{url}: load is only sent to loopback addresses (127.0.0.0/8)");
        Ok(Self { addr: SocketAddr::new(ip, port), host: authority.to_owned(), path: path.to_owned() })
    }

    /// This endpoint with `{user}` in its path replaced.
    pub fn for_user(&self, user: &str) -> Self {
        Self { path: self.path.replace("{user}", user), ..self.clone() }
    }
}

/// How the body of a response is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Length(u64),
    Chunked,
    UntilEof,
}

/// A parsed response head.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    pub body: BodyKind,
    /// The server will close the connection after this response.
    pub close: bool,
}

/// One connection and the bytes read from it but not consumed yet.
pub struct Conn {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
}

impl Conn {
    pub async fn open(source: Option<Ipv4Addr>, addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = connect_from(source, addr).await.with_context(|| format!("connect to {addr}"))?;
        Ok(Self { stream, buf: Vec::new() })
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await.context("write")
    }

    /// Reads more bytes into `buf`; 0 at EOF.
    pub async fn fill(&mut self) -> anyhow::Result<usize> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        self.stream.read_buf(&mut self.buf).await.context("read")
    }

    /// Reads and removes a response head from the connection.
    pub async fn read_head(&mut self) -> anyhow::Result<Head> {
        loop {
            if !self.buf.is_empty() {
                if let Some((head, len)) = parse_head(&self.buf)? {
                    self.buf.drain(..len);
                    return Ok(head);
                }
                ensure!(self.buf.len() <= HEAD_BYTES_MAX, "response head over {HEAD_BYTES_MAX} bytes");
            }
            if self.fill().await? == 0 {
                bail!("connection closed before a response head");
            }
        }
    }

    /// Reads the whole body of the response whose head was just read.
    pub async fn read_body(&mut self, head: &Head) -> anyhow::Result<Vec<u8>> {
        let mut reader = BodyReader::new(head.body);
        let mut out = Vec::new();
        loop {
            if reader.take(&mut self.buf, &mut out)? {
                return Ok(out);
            }
            ensure!(out.len() <= BODY_BYTES_MAX, "response body over {BODY_BYTES_MAX} bytes");
            if self.fill().await? == 0 {
                ensure!(head.body == BodyKind::UntilEof, "connection closed in the middle of a body");
                return Ok(out);
            }
        }
    }
}

/// Parses a complete head at the start of `buf`: the head and its length, or `None` if more
/// bytes are needed.
pub fn parse_head(buf: &[u8]) -> anyhow::Result<Option<(Head, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf).context("bad response head")? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let status = response.code.unwrap_or(0);
    let mut body =
        if status == 204 || status == 304 || status < 200 { BodyKind::Length(0) } else { BodyKind::UntilEof };
    let mut close = response.version == Some(0);
    for header in response.headers.iter() {
        let value = std::str::from_utf8(header.value).unwrap_or("").trim();
        if header.name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            body = BodyKind::Chunked;
        } else if header.name.eq_ignore_ascii_case("content-length") && body != BodyKind::Chunked {
            body = BodyKind::Length(value.parse().context("bad content-length")?);
        } else if header.name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    if body == BodyKind::UntilEof {
        close = true;
    }
    Ok(Some((Head { status, body, close }, len)))
}

/// Takes body bytes out of a connection's buffer as they arrive.
#[derive(Debug)]
pub struct BodyReader {
    kind: BodyKind,
    remaining: u64,
    chunks: Dechunker,
}

impl BodyReader {
    pub fn new(kind: BodyKind) -> Self {
        let remaining = if let BodyKind::Length(n) = kind { n } else { 0 };
        Self { kind, remaining, chunks: Dechunker::default() }
    }

    /// Moves the body bytes at the start of `raw` to `out`. True once the body is complete
    /// (bytes after it stay in `raw`: the next response on a kept-alive connection).
    pub fn take(&mut self, raw: &mut Vec<u8>, out: &mut Vec<u8>) -> anyhow::Result<bool> {
        match self.kind {
            BodyKind::Length(_) => {
                let n = (self.remaining as usize).min(raw.len());
                out.extend_from_slice(&raw[..n]);
                raw.drain(..n);
                self.remaining -= n as u64;
                Ok(self.remaining == 0)
            }
            BodyKind::Chunked => {
                let used = self.chunks.feed(raw, out)?;
                raw.drain(..used);
                Ok(self.chunks.is_done())
            }
            BodyKind::UntilEof => {
                out.append(raw);
                Ok(false)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChunkState {
    /// Reading the hex size (then maybe `;extensions`) of the next chunk.
    #[default]
    Size,
    /// Saw `\r` after the size line.
    SizeLf,
    /// Copying chunk data; `remaining` bytes to go.
    Data,
    /// Expecting the `\r\n` after the data.
    DataCr,
    DataLf,
    /// After the last (empty) chunk: at the start of a trailer line or the final `\r\n`.
    TrailerStart,
    TrailerSkip,
    TrailerLf,
    Done,
}

/// Incremental decoder of `Transfer-Encoding: chunked`.
#[derive(Debug, Default)]
pub struct Dechunker {
    state: ChunkState,
    size: u64,
    digits: u32,
    in_extension: bool,
    remaining: u64,
}

impl Dechunker {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes from `input` into `out`; returns how many input bytes were used (all of them,
    /// unless the body ended first).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> anyhow::Result<usize> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                ChunkState::Data => {
                    let n = (self.remaining as usize).min(input.len() - i);
                    out.extend_from_slice(&input[i..i + n]);
                    i += n;
                    self.remaining -= n as u64;
                    if self.remaining == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::Done => break,
                _ => {}
            }
            let byte = input[i];
            i += 1;
            match self.state {
                ChunkState::Size => match byte {
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\n' => self.end_size_line()?,
                    b';' => self.in_extension = true,
                    _ if self.in_extension => {}
                    b' ' | b'\t' => {}
                    _ => {
                        let digit = (byte as char).to_digit(16).context("bad chunk size")?;
                        ensure!(self.digits < 15, "chunk size too large");
                        self.size = self.size * 16 + u64::from(digit);
                        self.digits += 1;
                    }
                },
                ChunkState::SizeLf => {
                    ensure!(byte == b'\n', "bad chunk size line");
                    self.end_size_line()?;
                }
                ChunkState::DataCr => match byte {
                    b'\r' => self.state = ChunkState::DataLf,
                    b'\n' => self.state = ChunkState::Size,
                    _ => bail!("chunk data longer than its size"),
                },
                ChunkState::DataLf => {
                    ensure!(byte == b'\n', "bad chunk end");
                    self.state = ChunkState::Size;
                }
                ChunkState::TrailerStart => match byte {
                    b'\r' => self.state = ChunkState::TrailerLf,
                    b'\n' => self.state = ChunkState::Done,
                    _ => self.state = ChunkState::TrailerSkip,
                },
                ChunkState::TrailerSkip => {
                    if byte == b'\n' {
                        self.state = ChunkState::TrailerStart;
                    }
                }
                ChunkState::TrailerLf => {
                    ensure!(byte == b'\n', "bad end of chunked body");
                    self.state = ChunkState::Done;
                }
                ChunkState::Data | ChunkState::Done => unreachable!("handled above"),
            }
        }
        Ok(i)
    }

    fn end_size_line(&mut self) -> anyhow::Result<()> {
        ensure!(self.digits > 0, "empty chunk size");
        self.state = if self.size == 0 { ChunkState::TrailerStart } else { ChunkState::Data };
        self.remaining = self.size;
        self.size = 0;
        self.digits = 0;
        self.in_extension = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(input: &[u8], piece: usize) -> (Vec<u8>, bool, usize) {
        let mut d = Dechunker::default();
        let mut out = Vec::new();
        let mut used = 0;
        for part in input.chunks(piece) {
            used += d.feed(part, &mut out).unwrap();
            if d.is_done() {
                break;
            }
        }
        (out, d.is_done(), used)
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_sizes() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\nNEXT";
        for piece in 1..body.len() {
            let (out, done, used) = decode_in_pieces(body, piece);
            assert_eq!(out, b"hello, world", "piece {piece}");
            assert!(done);
            assert_eq!(&body[used..], b"NEXT");
        }
    }

    #[test]
    fn chunked_trailers_are_skipped() {
        let (out, done, _) = decode_in_pieces(b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n", 4);
        assert_eq!(out, b"abc");
        assert!(done);
    }

    #[test]
    fn bad_chunk_sizes_are_errors() {
        assert!(Dechunker::default().feed(b"zz\r\n", &mut Vec::new()).is_err());
        assert!(Dechunker::default().feed(b"\r\n", &mut Vec::new()).is_err());
        assert!(Dechunker::default().feed(b"2\r\nabc\r\n", &mut Vec::new()).is_err());
    }

    #[test]
    fn heads() {
        let (head, len) =
            parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nrest").unwrap().unwrap();
        assert_eq!((head.status, head.body, head.close, len), (200, BodyKind::Chunked, false, 47));
        let (head, _) =
            parse_head(b"HTTP/1.1 202 Accepted\r\ncontent-length: 12\r\nConnection: close\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!((head.status, head.body, head.close), (202, BodyKind::Length(12), true));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-").unwrap().is_none());
    }

    #[test]
    fn endpoints_are_loopback_only() {
        let e = Endpoint::parse("http://127.0.0.1:8080/sub/{user}").unwrap();
        assert_eq!(e.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(e.for_user("u7").path, "/sub/u7");
        assert_eq!(Endpoint::parse("http://localhost:7300").unwrap().path, "/");
        assert!(Endpoint::parse("http://10.0.0.1:80/").is_err());
        assert!(Endpoint::parse("https://127.0.0.1/").is_err());
    }
}
