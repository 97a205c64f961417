//! The storage a test's gateway keeps its dumps on, so that one test body runs on each:
//! [`Storage::Files`] (`DATA_DIR/requests`, the default) and [`Storage::S3`] (a bucket of
//! tests/common/s3.rs: moto, or the `SFTPGATE_TEST_S3_URL` endpoint). What a test checks
//! is read from the storage itself: the file, or the object through boto3.
//! [`on_each_storage!`] makes a scenario's two tests, `<scenario>::on_files` and
//! `<scenario>::on_s3`.

use std::path::{Path, PathBuf};

use super::boto3::Bucket;
use super::{random_file, sha256, text, ClientKey, Gateway};

/// S3 parts of 5 MiB (S3's minimum), so that a few MiB make several of them.
pub const PART: u64 = 5 * 1024 * 1024;

/// Makes, for each scenario `fn name(storage: Storage)` in scope, the tests
/// `name::on_files` and `name::on_s3`.
#[allow(unused_macros)]
macro_rules! on_each_storage {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[test]
            fn on_files() {
                super::$scenario(super::common::storage::Storage::Files)
            }
            #[test]
            fn on_s3() {
                super::$scenario(super::common::storage::Storage::s3())
            }
        }
    )*};
}

pub enum Storage {
    Files,
    /// Boxed: a bucket is large beside `Files`.
    S3(Box<Bucket>),
}

impl Storage {
    /// A fresh bucket (or prefix) of its own.
    pub fn s3() -> Storage {
        Storage::S3(Box::new(Bucket::new()))
    }

    pub fn bucket(&self) -> Option<&Bucket> {
        match self {
            Storage::Files => None,
            Storage::S3(b) => Some(b.as_ref()),
        }
    }

    /// The flags of a node on it, then `extra`: on S3 its URL and endpoint, 5 MiB parts
    /// and a sweep every second.
    pub fn flags(&self, extra: &[&str]) -> Vec<String> {
        let mut flags = match self {
            Storage::Files => Vec::new(),
            Storage::S3(b) => {
                let mut f = b.s3.flags();
                let part = PART.to_string();
                f.extend(["--s3-part-size", &part, "--s3-sweep-every", "1s"].map(String::from));
                f
            }
        };
        flags.extend(extra.iter().map(|s| s.to_string()));
        flags
    }

    /// The environment a node on it needs (moto's keys; nothing else).
    pub fn env(&self) -> Vec<(String, String)> {
        self.bucket().map_or_else(Vec::new, |b| b.s3.env())
    }

    /// Starts (or restarts) `g` on it with [`Storage::flags`].
    pub fn launch(&self, g: &mut Gateway, extra: &[&str]) {
        let flags = self.flags(extra);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        g.launch_env(&flags, &env);
    }

    /// A gateway on it, started once with `extra`.
    pub fn gateway(&self, extra: &[&str]) -> Gateway {
        let mut g = Gateway::unstarted("127.0.0.1");
        self.launch(&mut g, extra);
        g
    }

    /// A gateway on it with request `id` provisioned for a new key, and `len` random bytes
    /// written to `name` (the request's file) in the test's directory: the source.
    pub fn with_request(&self, id: u64, name: &str, len: u64) -> (Gateway, ClientKey, PathBuf) {
        let g = self.gateway(&[]);
        let key = ClientKey::new(g.dir.path(), &format!("customer-{id}"));
        g.provision(id, name, &key);
        let src = g.dir.path().join(name);
        random_file(&src, len as usize);
        (g, key, src)
    }

    /// A local file with request `id`'s `object` (`upload`, `upgraded`, ...) as the storage
    /// holds it: the file itself, or the object downloaded by boto3 into the test's
    /// directory; `None` if there is none.
    pub fn stored(&self, g: &Gateway, id: u64, object: &str) -> Option<PathBuf> {
        match self {
            Storage::Files => {
                let path = g.data().join(format!("requests/{id}/{object}"));
                path.exists().then_some(path)
            }
            Storage::S3(b) => {
                let to = g.dir.path().join(format!("stored-{id}-{object}"));
                b.download(&format!("{id}/{object}"), &to).then_some(to)
            }
        }
    }

    /// The sha256 of what [`Storage::stored`] finds.
    pub fn stored_sha(&self, g: &Gateway, id: u64, object: &str) -> Option<String> {
        self.stored(g, id, object).map(|p| sha256(&p))
    }

    /// Runs `put -a` of `src` (from its directory, the request's file name) as request
    /// `id`'s user, and asserts that the storage then holds exactly `src`, with no
    /// multipart upload left in progress.
    pub fn assert_put_a_completes(&self, g: &Gateway, id: u64, key: &ClientKey, src: &Path) {
        let name = src.file_name().and_then(|n| n.to_str()).unwrap();
        let cwd = src.parent().unwrap();
        g.sftp_ok(&format!("user_{id}"), key, &format!("put -a {name}\n"), cwd);
        assert_eq!(self.stored_sha(g, id, "upload"), Some(sha256(src)));
        self.assert_no_pending_uploads();
    }

    /// Asserts no multipart upload is left in progress (files have none).
    pub fn assert_no_pending_uploads(&self) {
        if let Some(b) = self.bucket() {
            assert_eq!(b.pending_uploads(), Vec::<String>::new());
        }
    }
}

/// Writes the first `len` bytes of `path` to `to`.
pub fn prefix_of(path: &Path, len: u64, to: &Path) {
    let data = std::fs::read(path).unwrap();
    std::fs::write(to, &data[..len as usize]).unwrap();
}

/// The size of `name` as `ls -l` lists it (STAT, through the SFTP server).
pub fn remote_size(g: &Gateway, user: &str, key: &ClientKey, name: &str, cwd: &Path) -> u64 {
    let out = g.sftp(user, key, &format!("ls -l {name}\n"), cwd);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    let line = listing
        .lines()
        // Not the batch's own echo (`sftp> ls -l NAME`).
        .find(|l| l.ends_with(name) && !l.starts_with("sftp>"))
        .unwrap_or_else(|| panic!("{name} not listed: {listing}"));
    line.split_whitespace().nth(4).unwrap().parse().unwrap()
}

/// The gateway's log without its colours.
pub fn plain_log(g: &Gateway) -> String {
    let log = g.log();
    let mut out = String::with_capacity(log.len());
    let mut rest = log.as_str();
    while let Some(at) = rest.find('\x1b') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        rest = rest.find('m').map_or("", |m| &rest[m + 1..]);
    }
    out.push_str(rest);
    out
}
