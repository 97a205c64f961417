//! OpenSSH-style address pattern lists, as in an authorized_keys `from="..."` option:
//! comma-separated glob patterns (`*`, `?`) or CIDR blocks, each optionally negated with `!`.
//! Host names would need a reverse DNS lookup the gateway does not do, so patterns are
//! matched against the client's IP address only. CIDR blocks are ipnet's; the glob
//! matcher stays hand-written (a dozen lines), since a glob crate matches paths, with `/`
//! and `[...]` rules OpenSSH's `match_pattern` does not have.

use std::net::IpAddr;

use ipnet::IpNet;

/// Checks a pattern list; the error names the first bad pattern.
pub fn validate_pattern_list(list: &str) -> Result<(), String> {
    for pattern in list.split(',') {
        let p = pattern.strip_prefix('!').unwrap_or(pattern);
        if p.is_empty() {
            return Err(format!("empty pattern in \"{list}\""));
        }
        if p.contains('/') && p.parse::<IpNet>().is_err() {
            return Err(format!("bad CIDR block \"{p}\""));
        }
    }
    Ok(())
}

/// True if `ip` matches a positive pattern and no negated one.
pub fn match_pattern_list(list: &str, ip: IpAddr) -> bool {
    // An IPv4 client seen through an IPv6 socket (`::ffff:1.2.3.4`) is matched as IPv4.
    let ip = ip.to_canonical();
    let text = ip.to_string();
    let mut matched = false;
    for pattern in list.split(',') {
        let (negated, p) = match pattern.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pattern),
        };
        let hit = if p.contains('/') {
            // A block of the other family contains nothing of this one.
            p.parse::<IpNet>().is_ok_and(|net| net.contains(&ip))
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
        assert!(!match_pattern_list("::/0", ip("192.0.2.1")));
        assert!(!match_pattern_list("0.0.0.0/0", ip("::1")));
        // Host bits in a block are ignored, as before.
        assert!(match_pattern_list("10.1.2.3/8", ip("10.200.0.1")));
        assert!(match_pattern_list("2001:db8::1/32", ip("2001:db8:ffff::9")));
        assert!(match_pattern_list("*", ip("192.0.2.1")));
        assert!(!match_pattern_list("host.example.com", ip("192.0.2.1")));
    }

    #[test]
    fn validation() {
        assert!(validate_pattern_list("10.0.0.0/8,!10.1.*").is_ok());
        assert!(validate_pattern_list("10.0.0.0/33").is_err());
        assert!(validate_pattern_list("a,,b").is_err());
        assert!(validate_pattern_list("x/8").is_err());
        assert!(validate_pattern_list("::/129").is_err());
        assert!(validate_pattern_list("10.0.0.0/").is_err());
    }
}
