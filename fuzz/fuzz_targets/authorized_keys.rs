//! The authorized_keys parser and its options (`from=`, `expiry-time=`, ignored and
//! refused options), as a customer uploads the file, then each accepted key's `allows`.
//! Checked: no panic; accepted keys' line numbers are real lines, in order; a `from=` kept
//! is a valid pattern list.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sftpgate::fuzzing::{parse_authorized_keys, validate_pattern_list};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(keys) = parse_authorized_keys(text) else {
        return;
    };
    let lines = text.lines().count();
    let now = time::OffsetDateTime::now_utc();
    let mut last = 0;
    for k in &keys {
        assert!(
            k.line > last && k.line <= lines,
            "line {} of {lines}",
            k.line
        );
        last = k.line;
        if let Some(from) = &k.options.from {
            assert!(
                validate_pattern_list(from).is_ok(),
                "kept a bad from= {from:?}"
            );
        }
        for ip in ["127.0.0.1", "::1", "::ffff:192.0.2.1", "2001:db8::7"] {
            let _ = k.allows(ip.parse().ok(), now);
        }
        let _ = k.allows(None, now);
    }
});
