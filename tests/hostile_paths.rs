//! Hostile names against every SFTP operation. Each name either resolves to the one shared
//! file or to the root, or is refused; nothing outside the request's file is ever read or
//! changed (the whole data directory is hashed before and after).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::wire::*;
use sha2::{Digest, Sha256};

const FILE: &[u8] = b"db.dump";
const CONTENT: &[u8] = b"the customer's dump";

fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if p.is_dir() {
                out.insert(rel, "dir".into());
                stack.push(p);
            } else {
                out.insert(rel, hex::encode(Sha256::digest(std::fs::read(&p).unwrap())));
            }
        }
    }
    out
}

/// Names that must resolve to the shared file.
fn file_names() -> Vec<Vec<u8>> {
    [
        "db.dump",
        "/db.dump",
        "./db.dump",
        "//db.dump",
        "/../db.dump",
        "../../../db.dump",
        "a/../db.dump",
        "/./././db.dump",
    ]
    .iter()
    .map(|n| n.as_bytes().to_vec())
    .chain([format!("{}db.dump", "../".repeat(3000)).into_bytes()])
    .collect()
}

/// Names that must resolve to nothing at all.
fn hostile_names() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = [
        "../x",
        "/../../etc/passwd",
        "..\\x",
        "..\\..\\db.dump",
        "%2e%2e/",
        "%2e%2e%2fdb.dump",
        "db.dump/",
        "db.dump//",
        "db.dump/.",
        "db.dump/..",
        "db.dump/../../etc/passwd",
        "upgraded_db.dump",
        "other.dump",
        "upload",
        "request.json",
        "../request.json",
        "../2/upload",
        "../../requests/2/upload",
        "/requests/2/upload",
        "/etc/passwd",
        "//etc//passwd",
        "./../.././etc",
        "a/b/c/../../../../etc/shadow",
        "~",
        "~/db.dump",
        "/proc/self/environ",
        "/dev/null",
        "\\\\server\\share",
        "C:\\db.dump",
        "db.dump;rm -rf /",
        "$(id)",
        "db.dump\n",
        " db.dump",
        "db.dump ",
        "DB.DUMP",
        "db.dump.filepart",
        "*",
        "db.*",
        "?b.dump",
        "db\u{2024}dump",
        "\u{0501}b.dump",
        "db.dump\u{200b}",
        "\u{ff44}\u{ff42}.dump",
        "db.dum\u{0440}",
        "admin.token",
        "../../admin.token",
    ]
    .iter()
    .map(|n| n.as_bytes().to_vec())
    .collect();
    v.push(b"db.dump\0".to_vec());
    v.push(b"db\0.dump".to_vec());
    v.push(b"\0".to_vec());
    v.push(b"\xff\xfe".to_vec());
    v.push(b"db.dump\xff".to_vec());
    v.push(b"\xc0\xae\xc0\xae/db.dump".to_vec());
    v.push("x".repeat(10 * 1024).into_bytes());
    v
}

fn attrs_size(size: u64) -> Vec<u8> {
    [&1u32.to_be_bytes()[..], &size.to_be_bytes()].concat()
}

const NO_ATTRS: &[u8] = &[0, 0, 0, 0];

/// Sends every path operation for `name` and returns (operation, reply) pairs.
async fn every_op(c: &mut Client, name: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let n = s(name);
    let f = s(FILE);
    let mut out = vec![
        (
            "open-read",
            c.call(OPEN, &[&n, &0x01u32.to_be_bytes(), NO_ATTRS]).await,
        ),
        (
            "open-create",
            c.call(OPEN, &[&n, &0x1Au32.to_be_bytes(), NO_ATTRS]).await,
        ),
        (
            "open-append",
            c.call(OPEN, &[&n, &0x0Eu32.to_be_bytes(), NO_ATTRS]).await,
        ),
        ("stat", c.call(STAT, &[&n]).await),
        ("lstat", c.call(LSTAT, &[&n]).await),
        ("setstat-size", c.call(SETSTAT, &[&n, &attrs_size(0)]).await),
        ("opendir", c.call(OPENDIR, &[&n]).await),
        ("remove", c.call(REMOVE, &[&n]).await),
        ("mkdir", c.call(MKDIR, &[&n, NO_ATTRS]).await),
        ("rmdir", c.call(RMDIR, &[&n]).await),
        ("rename-from", c.call(RENAME, &[&n, &s(b"elsewhere")]).await),
        ("rename-onto", c.call(RENAME, &[&f, &n]).await),
        ("readlink", c.call(READLINK, &[&n]).await),
        ("symlink", c.call(SYMLINK, &[&n, &f]).await),
        ("symlink-to", c.call(SYMLINK, &[&s(b"link"), &n]).await),
        (
            "statvfs",
            c.call(EXTENDED, &[&s(b"statvfs@openssh.com"), &n]).await,
        ),
        (
            "lsetstat",
            c.call(EXTENDED, &[&s(b"lsetstat@openssh.com"), &n, &attrs_size(0)])
                .await,
        ),
        (
            "posix-rename",
            c.call(EXTENDED, &[&s(b"posix-rename@openssh.com"), &n, &s(b"x")])
                .await,
        ),
        (
            "hardlink",
            c.call(EXTENDED, &[&s(b"hardlink@openssh.com"), &f, &n])
                .await,
        ),
    ];
    let rp = c.call(REALPATH, &[&n]).await;
    out.push(("realpath", rp));
    out
}

#[tokio::test]
async fn hostile_names_reach_nothing() {
    let base = tempfile::tempdir().unwrap();
    let data = base.path().join("data");
    for id in [1, 2] {
        let dir = data.join(format!("requests/{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("request.json"), format!("{{\"id\": {id}}}")).unwrap();
        std::fs::write(dir.join("upload"), CONTENT).unwrap();
    }
    std::fs::write(data.join("admin.token"), "secret").unwrap();
    let before = tree(&data);

    for writable in [true, false] {
        let (mut c, _) = Client::start("db.dump", &data.join("requests/1/upload"), writable).await;
        let names = hostile_names();
        assert!(names.len() >= 40);
        for name in &names {
            for (op, reply) in every_op(&mut c, name).await {
                let shown = String::from_utf8_lossy(&name[..name.len().min(60)]).into_owned();
                if op == "realpath" {
                    // A canonical name may be returned, but only ever "/" or one component.
                    if reply[0] == NAME {
                        let len = u32::from_be_bytes(reply[9..13].try_into().unwrap()) as usize;
                        let path = &reply[13..13 + len];
                        assert!(
                            path.starts_with(b"/") && !path[1..].contains(&b'/') && path != b"/..",
                            "{shown}: realpath gave {:?}",
                            String::from_utf8_lossy(path)
                        );
                    }
                    continue;
                }
                assert_eq!(reply[0], STATUS, "{op} {shown:?} succeeded: {reply:?}");
                assert_ne!(status_of(&reply), 0, "{op} {shown:?} answered OK");
            }
        }
        // Names of the one file resolve to it, and read its bytes.
        for name in file_names() {
            let r = c.call(STAT, &[&s(&name)]).await;
            assert_eq!(r[0], ATTRS, "{:?}", String::from_utf8_lossy(&name));
            let size = u64::from_be_bytes(r[9..17].try_into().unwrap());
            assert_eq!(size, CONTENT.len() as u64);
            let r = c
                .call(OPEN, &[&s(&name), &0x01u32.to_be_bytes(), NO_ATTRS])
                .await;
            assert_eq!(r[0], HANDLE);
            let h = r[9..].to_vec();
            let r = c
                .call(READ, &[&s(&h), &0u64.to_be_bytes(), &100u32.to_be_bytes()])
                .await;
            assert_eq!((r[0], &r[9..]), (DATA, CONTENT));
            let r = c.call(CLOSE, &[&s(&h)]).await;
            assert_eq!(status_of(&r), 0);
        }
        // The root lists exactly the one file.
        let r = c.call(OPENDIR, &[&s(b"/")]).await;
        assert_eq!(r[0], HANDLE);
        let h = r[9..].to_vec();
        let r = c.call(READDIR, &[&s(&h)]).await;
        assert_eq!(
            (r[0], u32::from_be_bytes(r[5..9].try_into().unwrap())),
            (NAME, 1)
        );
        assert_eq!(&r[13..13 + FILE.len()], FILE);
        let r = c.call(READDIR, &[&s(&h)]).await;
        assert_eq!(status_of(&r), 1);
        // Refused mutations of the file itself leave it alone.
        for (op, reply) in [
            ("remove", c.call(REMOVE, &[&s(FILE)]).await),
            ("rename", c.call(RENAME, &[&s(FILE), &s(b"x")]).await),
            ("mkdir", c.call(MKDIR, &[&s(b"/"), NO_ATTRS]).await),
        ] {
            assert_eq!(status_of(&reply), 3, "{op}");
        }
        // Writing through a handle never reaches other files either.
        if writable {
            let r = c
                .call(OPEN, &[&s(b"/db.dump"), &0x02u32.to_be_bytes(), NO_ATTRS])
                .await;
            let h = r[9..].to_vec();
            let r = c
                .call(WRITE, &[&s(&h), &0u64.to_be_bytes(), &s(CONTENT)])
                .await;
            assert_eq!(status_of(&r), 0);
            c.call(CLOSE, &[&s(&h)]).await;
        }
    }
    assert_eq!(tree(&data), before, "the data directory changed");
}
