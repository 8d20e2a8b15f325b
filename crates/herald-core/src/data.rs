//! [`check_data`]: the publisher's `data` must be JSON that every client can decode.
//!
//! `data` is kept as the text the publisher sent ([`serde_json::value::RawValue`]), and RawValue
//! accepts anything JSON's grammar allows. Clients are stricter: serde_json (Herald's Rust
//! client) refuses nesting past 128 levels, a number beyond f64 (`1e999999`) and a string with a
//! lone surrogate escape (`"\ud800"`, which JavaScript's `JSON.stringify` emits for a lone
//! surrogate in user text); other parsers have their own depth limits. A notification one client
//! cannot decode is a poison message: stored, it comes back on every resume. So it is refused once,
//! at publish, here.
//!
//! The check is one pass over the bytes, without building a value. The `check_cost_on_64_kib`
//! test prints its cost: 3.6 ms for 64 KiB of typical data in a debug build on a loaded 2-core
//! machine (54 ns/byte); an optimized build was not measured yet.

/// Deepest nesting of arrays and objects in `data` (64): `1` is depth 0, `[1]` depth 1.
/// Deeper: refused (HTTP 400 `data_too_deep`). Why 64: serde_json stops at 128 levels counting
/// the notification's own envelope, and recursive parsers elsewhere (other languages, older
/// browsers) may have less stack; half of serde_json's bound leaves room and is more than any
/// real payload needs.
pub const DATA_DEPTH_MAX: usize = 64;

/// Why `data` was refused. `at` is the byte offset in `data` where the problem starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// Arrays and objects nested deeper than [`DATA_DEPTH_MAX`].
    #[error("data nests arrays and objects more than {max} levels deep (at byte {at})")]
    TooDeep { at: usize, max: usize },
    /// A number that is not finite as an f64 (`1e999999`, a 400-digit integer).
    #[error("data holds a number beyond the range of a 64-bit float (at byte {at})")]
    InvalidNumber { at: usize },
    /// A string with an escaped UTF-16 surrogate that is not half of a pair (`"\ud800"`).
    #[error("data holds a string with a lone surrogate escape \\u{code:04x} (at byte {at})")]
    InvalidString { at: usize, code: u16 },
}

/// Checks that the JSON text `data` nests at most [`DATA_DEPTH_MAX`] deep, holds only numbers
/// that are finite as f64 and only strings without lone surrogate escapes.
///
/// `data` is expected to be valid JSON (a `RawValue`); on any other text it still returns
/// without panicking, in O(len), but what it returns means nothing.
pub fn check_data(data: &str) -> Result<(), DataError> {
    let bytes = data.as_bytes();
    let mut depth = 0usize;
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'[' | b'{' => {
                depth += 1;
                if depth > DATA_DEPTH_MAX {
                    return Err(DataError::TooDeep { at, max: DATA_DEPTH_MAX });
                }
                at += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                at += 1;
            }
            b'"' => at = check_string(bytes, at + 1)?,
            b'-' | b'0'..=b'9' => at = check_number(data, at)?,
            _ => at += 1,
        }
    }
    Ok(())
}

/// Checks the string whose contents start at `at`; returns the offset after its closing quote.
fn check_string(bytes: &[u8], mut at: usize) -> Result<usize, DataError> {
    while at < bytes.len() {
        match bytes[at] {
            b'"' => return Ok(at + 1),
            b'\\' if bytes.get(at + 1) == Some(&b'u') => {
                let start = at;
                let Some(code) = hex4(bytes, at + 2) else {
                    at += 2;
                    continue;
                };
                at += 6;
                match code {
                    0xD800..=0xDBFF => {
                        // A high surrogate: only with a low one right after it is it a character.
                        let low = (bytes.get(at) == Some(&b'\\') && bytes.get(at + 1) == Some(&b'u'))
                            .then(|| hex4(bytes, at + 2))
                            .flatten();
                        match low {
                            Some(0xDC00..=0xDFFF) => at += 6,
                            _ => return Err(DataError::InvalidString { at: start, code }),
                        }
                    }
                    0xDC00..=0xDFFF => return Err(DataError::InvalidString { at: start, code }),
                    _ => {}
                }
            }
            // Any other escape is two bytes; skipping both keeps an escaped quote inside.
            b'\\' => at += 2,
            _ => at += 1,
        }
    }
    Ok(at)
}

/// The value of the four hex digits at `at`, if there are four.
fn hex4(bytes: &[u8], at: usize) -> Option<u16> {
    let digits = bytes.get(at..at + 4)?;
    let text = std::str::from_utf8(digits).ok()?;
    if !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u16::from_str_radix(text, 16).ok()
}

/// Checks the number starting at `at`; returns the offset after it.
fn check_number(data: &str, at: usize) -> Result<usize, DataError> {
    let bytes = data.as_bytes();
    let mut end = at + 1;
    let mut exponent = false;
    while end < bytes.len() {
        match bytes[end] {
            b'0'..=b'9' | b'.' | b'+' | b'-' => {}
            b'e' | b'E' => exponent = true,
            _ => break,
        }
        end += 1;
    }
    // Fast path, every integer and decimal of everyday data: without an exponent and with
    // fewer than 300 characters, a number is below 1e300, well inside f64.
    if !exponent && end - at < 300 {
        return Ok(end);
    }
    // Only ASCII was consumed, so `end` is a character boundary.
    match data[at..end].parse::<f64>() {
        Ok(value) if !value.is_finite() => Err(DataError::InvalidNumber { at }),
        _ => Ok(end),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deep(n: usize) -> String {
        format!("{}{}", "[".repeat(n), "]".repeat(n))
    }

    #[test]
    fn accepts_what_every_client_reads() {
        for data in [
            "null",
            "1",
            "-0.5e-3",
            "1e308",
            "1.7976931348623157e308",
            "1e-999999",
            "123456789012345678901234567890",
            r#""plain""#,
            r#""\ud83d\ude00 \u00e9 \" \\ \n""#,
            r#""\\ud800""#,
            r#"{"a": [1, {"b": "c"}], "d": {}}"#,
            "\"h\u{e9}\"",
            "\"[[[[\"",
        ] {
            assert_eq!(check_data(data), Ok(()), "{data}");
        }
        assert_eq!(check_data(&deep(DATA_DEPTH_MAX)), Ok(()));
        let objects = format!("{}1{}", r#"{"a":"#.repeat(DATA_DEPTH_MAX), "}".repeat(DATA_DEPTH_MAX));
        assert_eq!(check_data(&objects), Ok(()));
    }

    #[test]
    fn refuses_what_a_client_cannot_read() {
        assert_eq!(check_data(&deep(DATA_DEPTH_MAX + 1)), Err(DataError::TooDeep { at: 64, max: 64 }));
        assert!(matches!(check_data(&deep(10_000)), Err(DataError::TooDeep { .. })));
        assert_eq!(check_data("1e999999"), Err(DataError::InvalidNumber { at: 0 }));
        assert_eq!(check_data("[1, -1e309]"), Err(DataError::InvalidNumber { at: 4 }));
        assert!(matches!(check_data(&"9".repeat(400)), Err(DataError::InvalidNumber { .. })));
        assert_eq!(check_data(r#""\ud800""#), Err(DataError::InvalidString { at: 1, code: 0xd800 }));
        assert_eq!(check_data(r#"["x\uDFFF"]"#), Err(DataError::InvalidString { at: 3, code: 0xdfff }));
        // A high surrogate followed by something else than a low one, even another high one.
        for data in [r#""\ud800\u0041""#, r#""\ud800\ud800""#, r#""\ud800x""#, r#""\ud800\n""#] {
            assert!(matches!(check_data(data), Err(DataError::InvalidString { .. })), "{data}");
        }
    }

    #[test]
    fn never_panics_on_text_that_is_not_json() {
        for data in ["", "\"", "\"\\", "\"\\u", "\"\\ud800\\u", "\"\\ud8", "-", "1e", "]]]", "\"\\u00é\""] {
            let _ = check_data(data);
        }
    }

    /// The cost of the check on a 64 KiB payload of typical data (objects, strings with escapes,
    /// numbers): printed, not asserted. Run with `--nocapture` to see it.
    #[test]
    fn check_cost_on_64_kib() {
        let item = r#"{"id": 12345, "text": "Caf\u00e9 \ud83d\ude00 \"quoted\"", "score": 0.75e2, "tags": ["a", "b"]},"#;
        let mut data = String::from("[");
        while data.len() + item.len() < 64 * 1024 {
            data.push_str(item);
        }
        data.push_str("null]");
        let rounds = 200;
        let started = std::time::Instant::now();
        for _ in 0..rounds {
            check_data(std::hint::black_box(&data)).unwrap();
        }
        let per_check = started.elapsed() / rounds;
        println!(
            "check_data: {} bytes in {per_check:?} ({:.2} ns/byte)",
            data.len(),
            per_check.as_nanos() as f64 / data.len() as f64
        );
    }
}
