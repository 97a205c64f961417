//! An S3-compatible server for tests: moto's server mode (`moto[server]` from PyPI, in the
//! tests' venv, mod.rs `python()`), on 127.0.0.1. Each [`TestS3`] is a fresh bucket of its
//! own on the server this test binary shares, so tests run in parallel on one server;
//! [`TestS3::private`] starts a server for one test alone (one that stops it), killed at
//! drop.
//!
//! moto binds port 0: werkzeug binds the socket before it logs ` * Running on
//! http://127.0.0.1:PORT` with the port the kernel chose, and the harness reads that line
//! from its stderr, so there is no free-port probing and no sleep. The server dies with
//! the test process (PR_SET_PDEATHSIG; the shared one is forked by postgres.rs's
//! supervisor thread, since the signal follows the forking thread).
//!
//! With `SFTPGATE_TEST_S3_URL=s3://bucket[/prefix]` (an existing bucket) and AWS
//! credentials in the environment (keys, or `AWS_PROFILE`), tests run there instead:
//! each gets a prefix of its own under it (`.../t-<random>`), emptied at drop (its
//! objects deleted, its uploads aborted). `SFTPGATE_TEST_S3_ENDPOINT` names a
//! non-AWS endpoint; `AWS_REGION` the region.
//!
//! What moto does and does not do (moto 5.2.5, checked by tests/s3_client.rs): it
//! enforces EntityTooSmall at CompleteMultipartUpload (5 MiB, or `S3_UPLOAD_PART_MIN_SIZE`
//! in the server's environment), copies exact `x-amz-copy-source-range`s, aborts an unknown
//! upload with NoSuchUpload; its ListMultipartUploads ignores `max-uploads` (one page,
//! never truncated) and answers a fixed `Initiated` of 2010-11-10T20:48:33Z for every
//! upload, so neither pagination nor an age cut-off on `initiated` can be tested on it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

use sftpgate::s3::{AccessKey, S3Options, S3};

use super::{python, rand_u64};

/// What the tests say when moto cannot be started.
const MISSING: &str = "the S3 tests need moto's server (pip package `moto[server]`, installed \
    into the tests' venv by tests/common/python.rs python(); it needs PyPI)";

/// How long moto may take to import and bind (a few seconds on a loaded 2-core machine).
const START_LIMIT: Duration = Duration::from_secs(120);

/// moto accepts any keys; these are what the client signs with.
pub const KEY_ID: &str = "sftpgate-test";
pub const SECRET: &str = "sftpgate-test-secret";
pub const REGION: &str = "us-east-1";

/// A running moto server.
pub struct Moto {
    pub endpoint: String,
    pub port: u16,
    child: Mutex<Option<Child>>,
    log: Arc<Mutex<String>>,
}

impl Moto {
    fn start(on_supervisor: bool) -> Moto {
        let py = python();
        let bin = py.with_file_name("moto_server");
        let mut cmd = Command::new(&bin);
        cmd.args(["-H", "127.0.0.1", "-p", "0"])
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let spawned = if on_supervisor {
            super::postgres::spawn_on_supervisor(cmd)
        } else {
            cmd.spawn()
        };
        let mut child = spawned.unwrap_or_else(|e| panic!("{}: {e}; {MISSING}", bin.display()));
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let keep = log.clone();
        // Drains moto's stderr for as long as it runs (a full pipe would block its request
        // log), keeping the text for failure messages and reporting the port.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(port) = line
                    .split_once(" * Running on http://127.0.0.1:")
                    .and_then(|(_, p)| p.trim().parse::<u16>().ok())
                {
                    let _ = tx.send(port);
                }
                let mut l = keep.lock().unwrap_or_else(|p| p.into_inner());
                // The request log grows with every call: keep the start and the last 64 KiB.
                if l.len() > 128 << 10 {
                    let cut = l.len() - (64 << 10);
                    let cut = (cut..l.len())
                        .find(|&i| l.is_char_boundary(i))
                        .unwrap_or(cut);
                    l.replace_range(..cut, "...\n");
                }
                l.push_str(&line);
                l.push('\n');
            }
        });
        let port = match rx.recv_timeout(START_LIMIT) {
            Ok(p) => p,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = log.lock().unwrap_or_else(|p| p.into_inner()).clone();
                panic!("moto_server did not report its port within {START_LIMIT:?}; {MISSING}; its output: {log}");
            }
        };
        Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            child: Mutex::new(Some(child)),
            log,
        }
    }

    /// The server's output so far (the request log).
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Kills the server and waits for it; no-op when stopped.
    pub fn kill(&self) {
        if let Some(mut c) = self.child.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Creates `bucket` (moto takes unsigned requests).
    fn create_bucket(&self, bucket: &str) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))
            .unwrap_or_else(|e| panic!("moto at {}: {e}", self.endpoint));
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "moto refused to create bucket {bucket}: {answer}"
        );
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
    }
}

enum Shared {
    External {
        url: String,
        endpoint: Option<String>,
    },
    Local(Moto),
}

static SHARED: OnceLock<Shared> = OnceLock::new();

fn shared() -> &'static Shared {
    SHARED.get_or_init(|| match std::env::var("SFTPGATE_TEST_S3_URL") {
        Ok(url) if !url.is_empty() => {
            let has = |v: &str| std::env::var(v).is_ok_and(|s| !s.is_empty());
            assert!(
                has("AWS_ACCESS_KEY_ID") || has("AWS_PROFILE"),
                "SFTPGATE_TEST_S3_URL is set, but no AWS credentials: set AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
            );
            Shared::External {
                url: url.trim_end_matches('/').to_string(),
                endpoint: std::env::var("SFTPGATE_TEST_S3_ENDPOINT")
                    .ok()
                    .filter(|e| !e.is_empty()),
            }
        }
        _ => Shared::Local(Moto::start(true)),
    })
}

/// One test's own bucket (or prefix, on an external endpoint).
pub struct TestS3 {
    /// `s3://bucket` (moto) or `s3://bucket/prefix/t-<random>` (external).
    pub url: String,
    /// The endpoint to give the client (`--s3-endpoint`); `None` for AWS itself.
    pub endpoint: Option<String>,
    /// Static keys for moto; `None` on an external endpoint (the environment's apply).
    pub access: Option<AccessKey>,
    /// The server of [`TestS3::private`].
    pub server: Option<Moto>,
    external: bool,
}

impl TestS3 {
    /// A fresh bucket on the shared server (or a fresh prefix on the external endpoint).
    pub fn new() -> TestS3 {
        match shared() {
            Shared::External { url, endpoint } => TestS3 {
                url: format!("{url}/t-{:016x}", rand_u64()),
                endpoint: endpoint.clone(),
                access: None,
                server: None,
                external: true,
            },
            Shared::Local(moto) => Self::on(moto),
        }
    }

    /// A fresh bucket on a moto server of this test's own, killed at drop (always local,
    /// also with `SFTPGATE_TEST_S3_URL`): for tests that stop the server.
    pub fn private() -> TestS3 {
        let moto = Moto::start(false);
        let mut t = Self::on(&moto);
        t.server = Some(moto);
        t
    }

    fn on(moto: &Moto) -> TestS3 {
        let bucket = format!("t-{:016x}", rand_u64());
        moto.create_bucket(&bucket);
        TestS3 {
            url: format!("s3://{bucket}"),
            endpoint: Some(moto.endpoint.clone()),
            access: Some(AccessKey {
                id: KEY_ID.into(),
                secret: SECRET.into(),
                token: None,
            }),
            server: None,
            external: false,
        }
    }

    pub fn options(&self) -> S3Options {
        S3Options {
            endpoint: self.endpoint.clone(),
            region: if self.external {
                None
            } else {
                Some(REGION.into())
            },
            access: self.access.clone(),
        }
    }

    /// A client on this bucket (or prefix).
    pub fn client(&self) -> S3 {
        S3::from_url(&self.url, &self.options()).unwrap_or_else(|e| panic!("{}: {e}", self.url))
    }

    /// The environment a gateway child process needs for this storage (moto's keys and
    /// region; nothing extra on an external endpoint, whose credentials it inherits).
    pub fn env(&self) -> Vec<(String, String)> {
        match &self.access {
            Some(a) => vec![
                ("AWS_ACCESS_KEY_ID".into(), a.id.clone()),
                ("AWS_SECRET_ACCESS_KEY".into(), a.secret.clone()),
                ("AWS_REGION".into(), REGION.into()),
            ],
            None => Vec::new(),
        }
    }

    /// The flags of a gateway node on this storage (the lead's `--storage` and
    /// `--s3-endpoint`).
    pub fn flags(&self) -> Vec<String> {
        let mut f = vec!["--storage".to_string(), self.url.clone()];
        if let Some(e) = &self.endpoint {
            f.extend(["--s3-endpoint".to_string(), e.clone()]);
        }
        f
    }

    /// The shared moto server's output (empty on an external endpoint).
    pub fn server_log(&self) -> String {
        match (&self.server, shared()) {
            (Some(m), _) | (None, Shared::Local(m)) => m.log(),
            _ => String::new(),
        }
    }
}

impl Drop for TestS3 {
    fn drop(&mut self) {
        if !self.external {
            // moto's buckets go with the server.
            return;
        }
        let s3 = self.client();
        // On a thread of its own: the test may be dropping this inside its runtime.
        let cleaned = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                for u in s3.list_uploads("").await? {
                    s3.abort(&u.key, &u.upload_id).await?;
                }
                for (key, _) in s3.list("").await? {
                    s3.delete(&key).await?;
                }
                Ok::<(), sftpgate::s3::S3Error>(())
            })
        })
        .join();
        if let Ok(Err(e)) = cleaned {
            eprintln!("cleaning up {}: {e}", self.url);
        }
    }
}
