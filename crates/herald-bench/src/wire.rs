//! What travels: the benchmark payload (a unique id and a send time), how subscribers find it in
//! whatever each server wraps around it, and a Server-Sent Events splitter.

use memchr::memmem;

/// Marks the publish id in a payload. The names are unusual so that nothing a server adds
/// around the payload (Herald's `seq`, Nchan's ids, Socket.IO's event name) can be mistaken
/// for them, and the payload is found with a byte search instead of a JSON parse.
pub const ID_MARKER: &[u8] = b"\"bench_id\":";
/// Marks the send time: nanoseconds on `CLOCK_MONOTONIC` (see [`crate::sys::now_ns`]).
pub const TS_MARKER: &[u8] = b"\"bench_ts\":";

/// The JSON payload of publish `id` sent at `sent_ns`.
pub fn payload(id: u64, sent_ns: u64) -> String {
    format!("{{\"bench_id\":{id},\"bench_ts\":{sent_ns}}}")
}

/// Every `(id, sent_ns)` payload in `data`, in order. Each server delivers one per event, a
/// long-poll answer may hold many.
pub fn scan(data: &[u8]) -> impl Iterator<Item = (u64, u64)> + '_ {
    memmem::find_iter(data, ID_MARKER).filter_map(move |at| {
        let after_id = &data[at + ID_MARKER.len()..];
        let (id, _) = leading_number(after_id)?;
        let ts_at = memmem::find(after_id, TS_MARKER)?;
        let (ts, _) = leading_number(&after_id[ts_at + TS_MARKER.len()..])?;
        Some((id, ts))
    })
}

/// The unsigned number at the start of `bytes` (after spaces) and the bytes it took.
fn leading_number(bytes: &[u8]) -> Option<(u64, usize)> {
    let start = bytes.iter().position(|b| *b != b' ')?;
    let digits = bytes[start..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let mut n: u64 = 0;
    for b in &bytes[start..start + digits] {
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some((n, start + digits))
}

/// The string value of `"key":"…"` in a small JSON object (ids, reasons: no escapes in them).
pub fn json_str<'a>(data: &'a [u8], key: &str) -> Option<&'a str> {
    let needle = format!("\"{key}\":\"");
    let at = memmem::find(data, needle.as_bytes())? + needle.len();
    let len = memchr::memchr(b'"', &data[at..])?;
    std::str::from_utf8(&data[at..at + len]).ok()
}

/// One Server-Sent Event. `data` is the first `data:` line (every payload here is one line).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SseEvent<'a> {
    pub id: Option<&'a [u8]>,
    /// The `event:` field; empty when absent (the SSE default, `message`).
    pub event: &'a [u8],
    pub data: &'a [u8],
}

/// Hands every complete event in `buf` to `each` and removes them from `buf`; an incomplete
/// last event stays for the next read. Comment-only blocks (keep-alives) are skipped. Events end
/// with `\n\n`, as Herald, Nchan and every common server write them (not `\r\n\r\n`).
pub fn drain_events(buf: &mut Vec<u8>, mut each: impl FnMut(SseEvent<'_>)) {
    let mut consumed = 0;
    while let Some(end) = memmem::find(&buf[consumed..], b"\n\n") {
        let block = &buf[consumed..consumed + end];
        consumed += end + 2;
        let mut event = SseEvent::default();
        let mut fields = 0;
        for line in block.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.starts_with(b":") {
                continue;
            }
            let (name, value) = match memchr::memchr(b':', line) {
                Some(colon) => {
                    let value = &line[colon + 1..];
                    (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
                }
                None => (line, &b""[..]),
            };
            fields += 1;
            match name {
                b"id" => event.id = Some(value),
                b"event" => event.event = value,
                b"data" if event.data.is_empty() => event.data = value,
                _ => {}
            }
        }
        if fields > 0 {
            each(event);
        }
    }
    if consumed > 0 {
        buf.drain(..consumed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_found_in_every_wrapping() {
        let p = payload(42, 123_456_789);
        assert_eq!(scan(p.as_bytes()).collect::<Vec<_>>(), [(42, 123_456_789)]);
        let herald = format!(r#"{{"seq":7,"type":"bench","data":{p},"created_at":"2026-01-01T00:00:00Z"}}"#);
        assert_eq!(scan(herald.as_bytes()).collect::<Vec<_>>(), [(42, 123_456_789)]);
        let socketio = format!(r#"42["n",{p}]"#);
        assert_eq!(scan(socketio.as_bytes()).collect::<Vec<_>>(), [(42, 123_456_789)]);
        let poll =
            format!(r#"{{"notifications":[{{"data":{}}},{{"data":{}}}]}}"#, payload(1, 2), payload(3, 4));
        assert_eq!(scan(poll.as_bytes()).collect::<Vec<_>>(), [(1, 2), (3, 4)]);
        assert_eq!(scan(br#"{"bench_id":x}"#).count(), 0);
    }

    #[test]
    fn sse_events_split_across_reads() {
        let stream = b"id: 3\nevent: hello\ndata: {\"client\":\"abc\"}\n\n: keep-alive\n\nid: 4\nevent: notification\ndata: X\n\ndata: plain\n\nid: 5\nda";
        let mut buf = Vec::new();
        let mut seen = Vec::new();
        for piece in stream.chunks(5) {
            buf.extend_from_slice(piece);
            drain_events(&mut buf, |e| {
                seen.push((e.id.map(<[u8]>::to_vec), e.event.to_vec(), e.data.to_vec()));
            });
        }
        assert_eq!(
            seen,
            [
                (Some(b"3".to_vec()), b"hello".to_vec(), b"{\"client\":\"abc\"}".to_vec()),
                (Some(b"4".to_vec()), b"notification".to_vec(), b"X".to_vec()),
                (None, vec![], b"plain".to_vec()),
            ]
        );
        assert_eq!(buf, b"id: 5\nda");
        assert_eq!(json_str(b"{\"client\":\"abc\",\"x\":1}", "client"), Some("abc"));
    }
}
