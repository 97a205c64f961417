//! The HTTP Range parser of `GET /v1/requests/{id}/original`. Input: the file length (8
//! bytes), then the header value. Checked: no panic, and a range served lies inside the
//! file (so `end - start + 1` bytes can be read from `start`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use sftpgate::fuzzing::parse_range;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let len = u64::from_be_bytes(data[..8].try_into().unwrap_or_default());
    // Small lengths often, so that the edges around 0 and 1 are reached.
    let len = if len >> 63 == 1 { len } else { len % 4096 };
    let Ok(header) = std::str::from_utf8(&data[8..]) else {
        return;
    };
    if let Some((start, end)) = parse_range(header, len) {
        assert!(
            start <= end && end < len,
            "{header:?} of {len} gave {start}-{end}"
        );
    }
});
