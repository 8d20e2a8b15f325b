//! An incremental parser of `text/event-stream` ([`SseParser`]), as the WHATWG HTML standard
//! ("server-sent events", "interpreting an event stream") defines it, fed with the byte chunks
//! of an HTTP body however the network split them.
//!
//! What the standard says and this parser does: lines end with CRLF, LF or CR (a CR at the end
//! of one chunk and an LF at the start of the next are one line end); a leading UTF-8 BOM is
//! dropped; a line starting with `:` is a comment (surfaced as [`SseItem::Comment`], since a
//! keep-alive is one); `field: value` drops one space after the colon; `data` lines are joined
//! with `\n`; an empty line dispatches the event, unless it has no `data` line; `id` sets the
//! last event id (ignored if it contains NUL), which persists across events. Unlike a browser,
//! it ignores `retry` (the listener has its own backoff) and bounds memory: a line or an event
//! larger than [`MAX_EVENT_BYTES`] is an error, never unbounded growth.

use std::collections::VecDeque;

use crate::error::{ClientError, Result};

/// Largest SSE event (its `data`, `event` and `id` together, or any single line) the parser
/// holds: 2 MiB. The server accepts request bodies of at most 1 MiB, so any notification it
/// stores fits with room for its envelope; past this, the stream is broken or hostile.
pub const MAX_EVENT_BYTES: usize = 2 * 1024 * 1024;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event` field; `"message"` when the event had none.
    pub event: String,
    /// The `data` lines, joined with `\n`.
    pub data: String,
    /// The `id` field given in this very event, if any (`Some("")` for an `id` line with no
    /// value, which resets the last event id). See [`SseParser::last_event_id`] for the id a
    /// browser would report, which persists from earlier events.
    pub id: Option<String>,
}

/// What the parser produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    Event(SseEvent),
    /// A comment line, without its `:` and the one space after it.
    Comment(String),
}

/// Parses a `text/event-stream` incrementally; see the [module docs](self).
#[derive(Debug)]
pub struct SseParser {
    /// Bytes of the current, unfinished line.
    line: Vec<u8>,
    /// The previous chunk ended with CR: an LF starting this one ends no new line.
    after_cr: bool,
    /// No line was completed yet: the first one may start with a BOM.
    first_line: bool,
    event: String,
    /// The `data` lines so far, each followed by `\n` (as the standard builds it).
    data: String,
    id: Option<String>,
    last_event_id: String,
    max_event_bytes: usize,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl SseParser {
    /// A parser bounded by [`MAX_EVENT_BYTES`].
    pub fn new() -> Self {
        Self::with_max_event_bytes(MAX_EVENT_BYTES)
    }

    /// A parser with another bound on one line and one event.
    pub fn with_max_event_bytes(max_event_bytes: usize) -> Self {
        Self {
            line: Vec::new(),
            after_cr: false,
            first_line: true,
            event: String::new(),
            data: String::new(),
            id: None,
            last_event_id: String::new(),
            max_event_bytes,
        }
    }

    /// The last event id the stream set (empty when none was, or after an empty `id` line).
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// Parses `chunk` and appends every item it completes to `out`, in order. After an error
    /// the stream is unusable: its caller drops it.
    pub fn feed(&mut self, chunk: &[u8], out: &mut VecDeque<SseItem>) -> Result<()> {
        let mut rest = chunk;
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
        }
        while let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.append(&rest[..end])?;
            self.end_line(out)?;
            let cr = rest[end] == b'\r';
            rest = &rest[end + 1..];
            if cr {
                match rest.first() {
                    None => self.after_cr = true,
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                }
            }
        }
        self.append(rest)
    }

    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        if self.line.len() + bytes.len() > self.max_event_bytes {
            return Err(self.too_large());
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn too_large(&self) -> ClientError {
        ClientError::TooLarge { what: "SSE event", limit: self.max_event_bytes }
    }

    fn end_line(&mut self, out: &mut VecDeque<SseItem>) -> Result<()> {
        let mut bytes = std::mem::take(&mut self.line);
        if std::mem::replace(&mut self.first_line, false) && bytes.starts_with(BOM) {
            bytes.drain(..BOM.len());
        }
        // Line ends are ASCII, so a complete line holds whole UTF-8 sequences (or bad bytes,
        // which the standard also replaces with U+FFFD).
        let line = String::from_utf8_lossy(&bytes);
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        if let Some(comment) = line.strip_prefix(':') {
            out.push_back(SseItem::Comment(comment.strip_prefix(' ').unwrap_or(comment).to_owned()));
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (&*line, ""),
        };
        match field {
            "event" => value.clone_into(&mut self.event),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => {
                value.clone_into(&mut self.last_event_id);
                self.id = Some(value.to_owned());
            }
            _ => {} // `retry` and unknown fields are ignored.
        }
        let size = self.event.len() + self.data.len() + self.id.as_ref().map_or(0, String::len);
        if size > self.max_event_bytes {
            return Err(self.too_large());
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut VecDeque<SseItem>) {
        let event = std::mem::take(&mut self.event);
        let id = self.id.take();
        let mut data = std::mem::take(&mut self.data);
        // An event without a data line is not dispatched (its `id` still counts).
        if data.is_empty() {
            return;
        }
        data.pop();
        let event = if event.is_empty() { "message".to_owned() } else { event };
        out.push_back(SseItem::Event(SseEvent { event, data, id }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event: &str, data: &str, id: Option<&str>) -> SseItem {
        SseItem::Event(SseEvent { event: event.into(), data: data.into(), id: id.map(Into::into) })
    }

    fn parse_chunks(chunks: &[&[u8]]) -> Result<Vec<SseItem>> {
        let mut parser = SseParser::new();
        let mut out = VecDeque::new();
        for chunk in chunks {
            parser.feed(chunk, &mut out)?;
        }
        Ok(out.into())
    }

    /// Parses `stream` whole, then split in two at every byte, then one byte at a time, and
    /// checks that each way gives `expected`.
    fn check_every_split(stream: &[u8], expected: &[SseItem]) {
        assert_eq!(parse_chunks(&[stream]).unwrap(), expected, "whole");
        for at in 0..=stream.len() {
            let (a, b) = stream.split_at(at);
            assert_eq!(parse_chunks(&[a, b]).unwrap(), expected, "split at {at}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(parse_chunks(&bytes).unwrap(), expected, "byte by byte");
    }

    const HERALD: &str = "id: 3\nevent: hello\ndata: {\"user\":\"alice\",\"session\":\"s1\",\"client\":\"c\",\"last_seq\":3}\n\n\
        : keep-alive\n\n\
        id: 4\nevent: notification\ndata: {\"seq\":4,\"type\":\"t\",\"data\":{\"text\":\"h\u{e9}\"},\"created_at\":\"x\"}\n\n\
        event: notification\ndata: {\"type\":\"t\",\"data\":null,\"created_at\":\"x\"}\n\n\
        event: closed\ndata: {\"reason\":\"lagging\"}\n\n";

    fn herald_items() -> Vec<SseItem> {
        vec![
            event("hello", r#"{"user":"alice","session":"s1","client":"c","last_seq":3}"#, Some("3")),
            SseItem::Comment("keep-alive".into()),
            event(
                "notification",
                "{\"seq\":4,\"type\":\"t\",\"data\":{\"text\":\"h\u{e9}\"},\"created_at\":\"x\"}",
                Some("4"),
            ),
            event("notification", r#"{"type":"t","data":null,"created_at":"x"}"#, None),
            event("closed", r#"{"reason":"lagging"}"#, None),
        ]
    }

    #[test]
    fn herald_stream_with_lf_at_every_split() {
        check_every_split(HERALD.as_bytes(), &herald_items());
    }

    #[test]
    fn herald_stream_with_crlf_at_every_split() {
        check_every_split(HERALD.replace('\n', "\r\n").as_bytes(), &herald_items());
    }

    #[test]
    fn herald_stream_with_cr_at_every_split() {
        check_every_split(HERALD.replace('\n', "\r").as_bytes(), &herald_items());
    }

    #[test]
    fn multi_line_data_and_mixed_line_ends() {
        let stream = b"data: first\r\ndata:second\rdata:  third\n\ndata\n\n";
        check_every_split(
            stream,
            &[event("message", "first\nsecond\n third", None), event("message", "", None)],
        );
    }

    #[test]
    fn comments_fields_without_colon_and_unknown_fields() {
        let stream = b":no space\n:\nretry: 10\nfoo: bar\nevent\ndata: x\n\n";
        check_every_split(
            stream,
            &[
                SseItem::Comment("no space".into()),
                SseItem::Comment(String::new()),
                event("message", "x", None),
            ],
        );
    }

    #[test]
    fn id_persists_resets_and_ignores_nul() {
        let mut parser = SseParser::new();
        let mut out = VecDeque::new();
        parser.feed(b"id: 7\ndata: a\n\ndata: b\n\n", &mut out).unwrap();
        assert_eq!(Vec::from(out.clone()), [event("message", "a", Some("7")), event("message", "b", None)]);
        assert_eq!(parser.last_event_id(), "7");
        // An event with an id but no data is not dispatched, yet its id counts.
        out.clear();
        parser.feed(b"id: 8\n\nid: 9\0\ndata: c\n\n", &mut out).unwrap();
        assert_eq!(Vec::from(out.clone()), [event("message", "c", None)]);
        assert_eq!(parser.last_event_id(), "8");
        out.clear();
        parser.feed(b"id\ndata: d\n\n", &mut out).unwrap();
        assert_eq!(Vec::from(out), [event("message", "d", Some(""))]);
        assert_eq!(parser.last_event_id(), "");
    }

    #[test]
    fn leading_bom_is_dropped_even_when_split() {
        let stream = b"\xEF\xBB\xBFdata: x\n\n";
        check_every_split(stream, &[event("message", "x", None)]);
        // Only at the very start.
        let later = parse_chunks(&[b"data: x\n\n\xEF\xBB\xBFdata: y\n\n"]).unwrap();
        assert_eq!(later, [event("message", "x", None)]);
    }

    #[test]
    fn unfinished_event_is_not_dispatched() {
        assert_eq!(parse_chunks(&[b"data: x\n"]).unwrap(), []);
        assert_eq!(parse_chunks(&[b"data: x"]).unwrap(), []);
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        assert_eq!(parse_chunks(&[b"data: a\xFFb\n\n"]).unwrap(), [event("message", "a\u{FFFD}b", None)]);
    }

    #[test]
    fn oversized_line_or_event_is_an_error() {
        let mut out = VecDeque::new();
        // One line over the bound, even split into small chunks and never ended.
        let mut parser = SseParser::with_max_event_bytes(16);
        parser.feed(b"data: 0123456789", &mut out).unwrap();
        let err = parser.feed(b"abc", &mut out).unwrap_err();
        assert!(matches!(err, ClientError::TooLarge { limit: 16, .. }), "{err}");
        // Many short data lines adding up past the bound.
        let mut parser = SseParser::with_max_event_bytes(16);
        let err = parser.feed(b"data: 01234\ndata: 56789\ndata: abcde\n", &mut out).unwrap_err();
        assert!(matches!(err, ClientError::TooLarge { .. }), "{err}");
        // Exactly at the bound is fine: 10 bytes of data (+1 for its line end) and `event`.
        let mut parser = SseParser::with_max_event_bytes(16);
        parser.feed(b"event: abcde\ndata: 0123456789\n\n", &mut out).unwrap();
        assert_eq!(out.len(), 1);
        // And the default bound is large enough for a 1 MiB payload.
        let big = format!("data: {}\n\n", "x".repeat(1024 * 1024));
        assert_eq!(parse_chunks(&[big.as_bytes()]).unwrap().len(), 1);
    }
}
