//! The `from=` pattern matcher: validation of a pattern list and matching a client
//! address against it. Input: one byte choosing the address family (IPv4, IPv6, or IPv4
//! seen through an IPv6 socket), 16 address bytes, then the pattern list.
//! Checked: no panic; `*` matches every address and a negated match never matches.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use sftpgate::fuzzing::{match_pattern_list, validate_pattern_list};

fuzz_target!(|data: &[u8]| {
    if data.len() < 17 {
        return;
    }
    let mut a = [0u8; 16];
    a.copy_from_slice(&data[1..17]);
    let v4 = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
    let ip = match data[0] % 3 {
        0 => IpAddr::V4(v4),
        1 => IpAddr::V6(Ipv6Addr::from(a)),
        _ => IpAddr::V6(v4.to_ipv6_mapped()),
    };
    let Ok(list) = std::str::from_utf8(&data[17..]) else {
        return;
    };
    let _ = validate_pattern_list(list);
    let hit = match_pattern_list(list, ip);
    // A catch-all added can only widen a list, and a negated catch-all excludes every
    // address.
    if hit {
        assert!(match_pattern_list(&format!("{list},*"), ip));
    }
    assert!(!match_pattern_list(&format!("{list},!*"), ip));
});
