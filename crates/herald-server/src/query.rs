//! Reading query parameters: one rule for every route, so that `?after=` means the same on
//! `/v1/poll`, `/v1/inbox` and `/v1/users/{user}/notifications`.
//!
//! A leaf module: the transports and the API both use it, and it uses neither.

use crate::error::ApiError;

/// The query parameter `name` as a whole number. Absent or empty (`?after=`): `None`, as if not
/// given, the same rule as `?last_event_id=` and `?inbox=`. Anything else that is not a whole
/// number: 400 with `code`.
pub fn whole_number(raw: Option<&str>, name: &str, code: &'static str) -> Result<Option<u64>, ApiError> {
    match raw.map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|_| {
            ApiError::bad_request(code, format!("`{name}` must be a whole number, not {text:?}"))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_absent_and_garbage_is_refused_with_the_code() {
        assert_eq!(whole_number(None, "after", "invalid_after"), Ok(None));
        assert_eq!(whole_number(Some(""), "after", "invalid_after"), Ok(None));
        assert_eq!(whole_number(Some(" 7 "), "after", "invalid_after"), Ok(Some(7)));
        for raw in ["x", "-1", "1.5", "18446744073709551616"] {
            assert_eq!(whole_number(Some(raw), "after", "invalid_after").unwrap_err().code, "invalid_after");
        }
    }
}
