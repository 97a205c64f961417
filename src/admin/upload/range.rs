//! Where an HTTP upload's body goes in the file: replace, or append at the offset the call
//! names with `?offset=N` and/or `Content-Range`, the two checked against each other and
//! the body's `Content-Length`.

use axum::http::{header, HeaderMap, StatusCode};

use crate::admin::ApiError;
use crate::api::{Failure, Reason};

/// Where the body goes in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Start {
    /// The plain call: the file is replaced.
    Replace,
    /// Appended at this offset, which must be the file's size.
    Append(u64),
}

/// An append's range as the client stated it: `?offset=`, `Content-Range`, or both.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Range {
    pub(super) start: Option<u64>,
    /// The last byte, for `bytes N-M/T`: the body is then exactly `M - N + 1` bytes.
    pub(super) last: Option<u64>,
    /// The whole file's size, if the client said it.
    pub(super) total: Option<u64>,
}

/// `bytes N-*/*`, `bytes N-M/*`, `bytes N-*/T` or `bytes N-M/T`.
fn parse_content_range(h: &str) -> Option<Range> {
    let h = h.trim();
    let spec = h.get(..6).filter(|u| u.eq_ignore_ascii_case("bytes "))?;
    let (range, total) = h[spec.len()..].trim().split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let number = |s: &str| -> Option<Option<u64>> {
        match s.trim() {
            "*" => Some(None),
            n if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => n.parse().ok().map(Some),
            _ => None,
        }
    };
    let (start, last, total) = (number(first)??, number(last)?, number(total)?);
    if last.is_some_and(|l| l < start) || total.is_some_and(|t| t < last.map_or(start, |l| l + 1)) {
        return None;
    }
    Some(Range {
        start: Some(start),
        last,
        total,
    })
}

fn invalid_range(message: impl Into<String>) -> ApiError {
    ApiError::bad(Reason::RangeInvalid, message)
}

/// The append range of a call, from `offset` and the `Content-Range` header, checked
/// against each other and the body's `Content-Length`.
pub(super) fn range_of(
    offset: Option<&str>,
    headers: &HeaderMap,
    length: Option<u64>,
) -> Result<Range, ApiError> {
    let mut range = match headers.get(header::CONTENT_RANGE) {
        None => Range::default(),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(parse_content_range)
            .ok_or_else(|| {
                invalid_range(
                    "Content-Range must be bytes N-*/*, or bytes N-M/T with M and T consistent",
                )
            })?,
    };
    if let Some(raw) = offset {
        let n = raw
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|_| !raw.trim().starts_with('+'))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    Failure::new(Reason::OffsetInvalid, "offset must be a byte count")
                        .value(raw.chars().take(40).collect::<String>()),
                )
            })?;
        if range.start.is_some_and(|s| s != n) {
            return Err(invalid_range(
                "offset and Content-Range name different offsets",
            ));
        }
        range.start = Some(n);
    }
    if let (Some(start), Some(last)) = (range.start, range.last) {
        if length != Some(last - start + 1) {
            return Err(invalid_range(format!(
                "Content-Range bytes {start}-{last} needs a Content-Length of {}",
                last - start + 1
            )));
        }
    }
    Ok(range)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: u64, last: Option<u64>, total: Option<u64>) -> Option<Range> {
        Some(Range {
            start: Some(start),
            last,
            total,
        })
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("bytes 10-*/*"), range(10, None, None));
        assert_eq!(parse_content_range("Bytes 0-*/*"), range(0, None, None));
        assert_eq!(
            parse_content_range("bytes 10-19/20"),
            range(10, Some(19), Some(20))
        );
        assert_eq!(
            parse_content_range("bytes 10-19/*"),
            range(10, Some(19), None)
        );
        assert_eq!(
            parse_content_range("bytes 10-*/100"),
            range(10, None, Some(100))
        );
        for bad in [
            "bytes */*",
            "bytes */100",
            "bytes 10-9/*",
            "bytes 10-19/19",
            "bytes 10-*/9",
            "bytes +1-*/*",
            "bytes -1-*/*",
            "bytes 1-2",
            "items 1-*/*",
            "bytes",
            "bytes 99999999999999999999-*/*",
            "",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn offsets_and_ranges_agree_with_each_other_and_the_length() {
        let mut h = HeaderMap::new();
        assert_eq!(range_of(None, &h, None).unwrap(), Range::default());
        assert_eq!(range_of(Some("7"), &h, None).unwrap().start, Some(7));
        for bad in ["", "x", "-1", "+7", "1e3"] {
            let e = range_of(Some(bad), &h, None).unwrap_err();
            assert_eq!(e.failures[0].reason, Reason::OffsetInvalid, "{bad}");
        }
        h.insert(header::CONTENT_RANGE, "bytes 7-*/*".parse().unwrap());
        assert_eq!(range_of(Some("7"), &h, None).unwrap().start, Some(7));
        assert_eq!(
            range_of(Some("8"), &h, None).unwrap_err().failures[0].reason,
            Reason::RangeInvalid
        );
        h.insert(header::CONTENT_RANGE, "bytes 7-9/10".parse().unwrap());
        assert_eq!(range_of(None, &h, Some(3)).unwrap().last, Some(9));
        for length in [None, Some(2), Some(4)] {
            let e = range_of(None, &h, length).unwrap_err();
            assert_eq!(e.failures[0].reason, Reason::RangeInvalid);
        }
    }
}
