//! OpenSSH-style address pattern lists, as in an authorized_keys `from="..."` option:
//! comma-separated glob patterns (`*`, `?`) or CIDR blocks, each optionally negated with `!`.
//! Host names would need a reverse DNS lookup the gateway does not do, so patterns are
//! matched against the client's IP address only.

use std::net::IpAddr;

/// Checks a pattern list; the error names the first bad pattern.
pub fn validate_pattern_list(list: &str) -> Result<(), String> {
    for pattern in list.split(',') {
        let p = pattern.strip_prefix('!').unwrap_or(pattern);
        if p.is_empty() {
            return Err(format!("empty pattern in \"{list}\""));
        }
        if p.contains('/') && parse_cidr(p).is_none() {
            return Err(format!("bad CIDR block \"{p}\""));
        }
    }
    Ok(())
}

/// True if `ip` matches a positive pattern and no negated one.
pub fn match_pattern_list(list: &str, ip: IpAddr) -> bool {
    let ip = canonical(ip);
    let text = ip.to_string();
    let mut matched = false;
    for pattern in list.split(',') {
        let (negated, p) = match pattern.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pattern),
        };
        let hit = if p.contains('/') {
            parse_cidr(p).is_some_and(|(net, bits)| in_cidr(ip, net, bits))
        } else {
            glob(p.as_bytes(), text.as_bytes())
        };
        if hit && negated {
            return false;
        }
        matched |= hit;
    }
    matched
}

/// An IPv4 client seen through an IPv6 socket (`::ffff:1.2.3.4`) is matched as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn parse_cidr(p: &str) -> Option<(IpAddr, u32)> {
    let (addr, bits) = p.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    let bits: u32 = bits.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (bits <= max).then_some((addr, bits))
}

fn in_cidr(ip: IpAddr, net: IpAddr, bits: u32) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// `*` matches any run, `?` one byte; iterative with backtracking to the last star.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c.eq_ignore_ascii_case(&text[t]) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn globs_cidrs_and_negation() {
        assert!(match_pattern_list("127.0.0.1", ip("127.0.0.1")));
        assert!(match_pattern_list("127.0.0.*", ip("127.0.0.9")));
        assert!(match_pattern_list("127.0.0.?", ip("127.0.0.9")));
        assert!(!match_pattern_list("127.0.0.?", ip("127.0.0.10")));
        assert!(match_pattern_list(
            "10.0.0.0/8,127.0.0.0/8",
            ip("127.1.2.3")
        ));
        assert!(!match_pattern_list("10.0.0.0/8", ip("127.1.2.3")));
        assert!(!match_pattern_list(
            "127.0.0.0/8,!127.0.0.2",
            ip("127.0.0.2")
        ));
        assert!(match_pattern_list(
            "127.0.0.0/8,!127.0.0.2",
            ip("127.0.0.3")
        ));
        assert!(!match_pattern_list("!127.0.0.2", ip("127.0.0.3")));
        assert!(match_pattern_list("::1", ip("::1")));
        assert!(match_pattern_list("::/0", ip("::1")));
        assert!(match_pattern_list("0.0.0.0/0", ip("::ffff:192.0.2.1")));
        assert!(match_pattern_list("*", ip("192.0.2.1")));
        assert!(!match_pattern_list("host.example.com", ip("192.0.2.1")));
    }

    #[test]
    fn validation() {
        assert!(validate_pattern_list("10.0.0.0/8,!10.1.*").is_ok());
        assert!(validate_pattern_list("10.0.0.0/33").is_err());
        assert!(validate_pattern_list("a,,b").is_err());
        assert!(validate_pattern_list("x/8").is_err());
    }
}
