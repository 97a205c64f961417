//! The one-file virtual filesystem: a root directory `/` holding exactly one file. Path
//! resolution is purely lexical and can only ever name the root, the file, or nothing.

use std::time::SystemTime;

use time::OffsetDateTime;

use super::storage::Meta;
use super::wire::Attrs;

/// What a client path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolved {
    Root,
    File,
    /// `<file>.filepart`, the temporary name WinSCP uploads to before renaming it onto the
    /// file (the session decides whether it is allowed).
    Partial,
    /// Anything else: it does not exist and cannot be created.
    Other,
}

/// The suffix of the one temporary upload name a client may use.
pub const PARTIAL_SUFFIX: &str = ".filepart";

/// Resolves `path` (absolute, or relative to `/`) lexically against the visible file name.
/// `.` and empty components are skipped and `..` never climbs above `/`. Nothing may follow
/// the file name, not even a trailing `/` or `..`, since the file is not a directory.
pub fn resolve(path: &[u8], visible: &str) -> Resolved {
    // The file (and its .filepart) are not directories: nothing may follow them.
    let below_a_file = |stack: &[&[u8]]| matches!(stack, [only] if names_a_file(only, visible));
    let Some(stack) = components(path, below_a_file) else {
        return Resolved::Other;
    };
    match stack.as_slice() {
        [] => Resolved::Root,
        [name] if *name == visible.as_bytes() => Resolved::File,
        [name] if name.strip_suffix(PARTIAL_SUFFIX.as_bytes()) == Some(visible.as_bytes()) => {
            Resolved::Partial
        }
        _ => Resolved::Other,
    }
}

/// The components of `path` with `.`, empty ones and `..` applied (`..` never climbs above
/// `/`); `None` as soon as `stop` holds for those seen so far and another follows.
fn components(path: &[u8], stop: impl Fn(&[&[u8]]) -> bool) -> Option<Vec<&[u8]>> {
    let mut stack: Vec<&[u8]> = Vec::new();
    for part in path.split(|&b| b == b'/') {
        if stop(&stack) {
            return None;
        }
        match part {
            b"" | b"." => {}
            b".." => {
                stack.pop();
            }
            name => stack.push(name),
        }
    }
    Some(stack)
}

fn names_a_file(name: &[u8], visible: &str) -> bool {
    name == visible.as_bytes()
        || name.strip_suffix(PARTIAL_SUFFIX.as_bytes()) == Some(visible.as_bytes())
}

/// The canonical form of a path for REALPATH: `/`, `/<file>`, or `/<name>` for a name
/// directly below the root that does not exist (clients realpath a target before creating
/// it). Deeper paths have no canonical form here.
pub fn canonical(path: &[u8]) -> Option<Vec<u8>> {
    let stack = components(path, |_| false)?;
    match stack.as_slice() {
        [] => Some(b"/".to_vec()),
        [name] if !name.contains(&0) => Some([&b"/"[..], name].concat()),
        _ => None,
    }
}

pub const S_IFREG: u32 = 0o100000;
pub const S_IFDIR: u32 = 0o040000;

/// Attributes of the shared file; a draft upload that does not exist yet is an empty file.
pub fn file_attrs(meta: Option<&Meta>, writable: bool) -> Attrs {
    let mode = if writable { 0o666 } else { 0o444 };
    let now = OffsetDateTime::now_utc().unix_timestamp() as u32;
    // SFTP v3 times are 32-bit seconds.
    let secs = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as u32)
    };
    let (size, atime, mtime) = match meta {
        Some(m) => (m.size, secs(m.accessed), secs(m.modified)),
        None => (0, now, now),
    };
    Attrs {
        size: Some(size),
        uid_gid: Some((0, 0)),
        permissions: Some(S_IFREG | mode),
        times: Some((atime, mtime)),
    }
}

/// Attributes of the root directory: listable, never writable.
pub fn root_attrs() -> Attrs {
    let now = OffsetDateTime::now_utc().unix_timestamp() as u32;
    Attrs {
        size: Some(0),
        uid_gid: Some((0, 0)),
        permissions: Some(S_IFDIR | 0o555),
        times: Some((now, now)),
    }
}

/// An `ls -l` line in OpenSSH's layout, e.g.
/// `-rw-rw-rw-    1 0        0          849920 Aug 30 15:58 openchs.70.cdump`.
pub fn longname(name: &str, attrs: &Attrs, now: OffsetDateTime) -> String {
    let perm = attrs.permissions.unwrap_or(0);
    let kind = if perm & 0o170000 == S_IFDIR { 'd' } else { '-' };
    let mut mode = String::with_capacity(10);
    mode.push(kind);
    for shift in [6, 3, 0] {
        let bits = (perm >> shift) & 7;
        mode.push(if bits & 4 != 0 { 'r' } else { '-' });
        mode.push(if bits & 2 != 0 { 'w' } else { '-' });
        mode.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    let mtime = attrs.times.map_or(0, |t| t.1);
    let when = OffsetDateTime::from_unix_timestamp(mtime.into()).unwrap_or(now);
    // Like ls(1): recent files show the time, older (or future) ones the year.
    let six_months = time::Duration::days(182);
    let date = if when > now - six_months && when <= now + time::Duration::hours(1) {
        format!(
            "{} {:>2} {:02}:{:02}",
            month(when),
            when.day(),
            when.hour(),
            when.minute()
        )
    } else {
        format!("{} {:>2}  {}", month(when), when.day(), when.year())
    };
    let size = attrs.size.unwrap_or(0);
    format!("{mode}    1 0        0        {size:>8} {date} {name}")
}

fn month(t: OffsetDateTime) -> &'static str {
    const M: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    M[usize::from(u8::from(t.month())) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use Resolved::*;

    const F: &str = "openchs.70.cdump";

    #[test]
    fn names_of_the_file() {
        for p in [
            "openchs.70.cdump",
            "/openchs.70.cdump",
            "./openchs.70.cdump",
            "//openchs.70.cdump",
            "/../openchs.70.cdump",
            "../../openchs.70.cdump",
            "/./././openchs.70.cdump",
            "x/../openchs.70.cdump",
        ] {
            assert_eq!(resolve(p.as_bytes(), F), File, "{p}");
        }
    }

    #[test]
    fn names_of_the_root() {
        for p in [
            "",
            ".",
            "/",
            "//",
            "..",
            "/..",
            "/../..",
            "./",
            "a/..",
            "a/b/../..",
        ] {
            assert_eq!(resolve(p.as_bytes(), F), Root, "{p}");
        }
        assert_eq!(resolve(b"openchs.70.cdump/..", F), Other);
    }

    #[test]
    fn everything_else_is_nothing() {
        for p in [
            "other",
            "/etc/passwd",
            "../etc/passwd",
            "openchs.70.cdump/",
            "openchs.70.cdump/.",
            "openchs.70.cdump/x",
            "upgraded_openchs.70.cdump",
            "OPENCHS.70.CDUMP",
            "openchs.70.cdump ",
            "openchs.70.cdump\0",
            "..\\openchs.70.cdump",
            "%2e%2e/openchs.70.cdump",
            "a/openchs.70.cdump",
            "openchs.70.cdump//",
            "a/openchs.70.cdump/..",
        ] {
            assert_eq!(resolve(p.as_bytes(), F), Other, "{p:?}");
        }
        assert_eq!(resolve(b"/openchs.70.cdump.filepart", F), Partial);
        assert_eq!(resolve(b"openchs.70.cdump.filepart/", F), Other);
        assert_eq!(resolve(b"x.filepart", F), Other);
        assert_eq!(resolve(b"\xff\xfe", F), Other);
    }

    #[test]
    fn canonical_paths() {
        assert_eq!(canonical(b".").unwrap(), b"/");
        assert_eq!(canonical(b"").unwrap(), b"/");
        assert_eq!(canonical(b"/../..").unwrap(), b"/");
        assert_eq!(
            canonical(b"./openchs.70.cdump").unwrap(),
            b"/openchs.70.cdump"
        );
        assert_eq!(canonical(b"new.filepart").unwrap(), b"/new.filepart");
        assert_eq!(canonical(b"/a/b"), None);
    }

    #[test]
    fn longname_like_openssh() {
        let now = OffsetDateTime::from_unix_timestamp(1_725_033_600).unwrap(); // 2024-08-30 16:00 UTC
        let attrs = Attrs {
            size: Some(849920),
            uid_gid: Some((0, 0)),
            permissions: Some(S_IFREG | 0o666),
            times: Some((0, 1_725_033_480)), // 15:58
        };
        assert_eq!(
            longname(F, &attrs, now),
            "-rw-rw-rw-    1 0        0          849920 Aug 30 15:58 openchs.70.cdump"
        );
        let old = Attrs {
            times: Some((0, 1_600_000_000)),
            permissions: Some(S_IFREG | 0o444),
            ..attrs
        };
        assert_eq!(
            longname(F, &old, now),
            "-r--r--r--    1 0        0          849920 Sep 13  2020 openchs.70.cdump"
        );
    }
}
