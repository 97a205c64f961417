//! Test harness: runs the real `sftpgate` binary on 127.0.0.1 with port 0, and drives it
//! with the real OpenSSH client and curl. This file starts and stops a gateway
//! ([`Gateway`]) and waits on it; its HTTP calls are in `api.rs`, the SSH clients in
//! `clients.rs`, test files in `files.rs`, the Python venv in `python.rs`.
#![allow(dead_code)]

pub mod boto3;
pub mod haproxy;
pub mod postgres;
pub mod s3;
#[macro_use]
pub mod multipart_contract;
#[macro_use]
pub mod storage;
#[macro_use]
pub mod store_contract;
mod api;
mod clients;
mod files;
mod python;
pub mod wire;

// Each test binary uses some of these.
#[allow(unused_imports)]
pub use api::*;
#[allow(unused_imports)]
pub use clients::*;
#[allow(unused_imports)]
pub use files::*;
#[allow(unused_imports)]
pub use python::*;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const TOKEN: &str = "test-admin-token-0123456789";

pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub ssh_port: u16,
    pub admin: String,
    /// The loopback address it listens on, as clients write it (`127.0.0.1`, `[::1]`).
    pub host: String,
    /// The umask the next launch runs under (`None`: the test process's own).
    pub umask: Option<u32>,
    stderr: PathBuf,
    /// Where its data and host-key directories are, if not in `dir`: another node's (a
    /// shared filesystem).
    shared: Option<PathBuf>,
}

impl Gateway {
    pub fn start() -> Gateway {
        Gateway::start_on("127.0.0.1")
    }

    /// Starts it on another loopback address, e.g. `[::1]`.
    pub fn start_on(host: &str) -> Gateway {
        let mut g = Gateway::unstarted(host);
        g.launch(&[]);
        g
    }

    /// Its directories, not yet running: [`launch`](Self::launch) starts it (for a test that
    /// prepares the data directory first, e.g. mounts it).
    pub fn unstarted(host: &str) -> Gateway {
        Gateway {
            dir: tempfile::tempdir().unwrap(),
            child: None,
            ssh_port: 0,
            admin: String::new(),
            host: host.to_string(),
            umask: None,
            stderr: PathBuf::new(),
            shared: None,
        }
    }

    /// Starts one more node on `first`'s data and host-key directories, as nodes on a
    /// shared filesystem run, with `extra` flags (e.g. the shared store's URL).
    pub fn start_node(first: &Gateway, extra: &[&str]) -> Gateway {
        let mut g = Gateway {
            dir: tempfile::tempdir().unwrap(),
            child: None,
            ssh_port: 0,
            admin: String::new(),
            host: first.host.clone(),
            umask: None,
            stderr: PathBuf::new(),
            shared: Some(first.home().to_path_buf()),
        };
        g.launch(extra);
        g
    }

    /// Starts a node on another machine beside `first`: the same host keys (copied), its
    /// own data directory, with `extra` flags and `env`.
    pub fn start_peer(first: &Gateway, extra: &[&str], env: &[(String, String)]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("cp")
            .arg("-a")
            .arg(first.home().join("hostkeys"))
            .arg(dir.path().join("hostkeys"))
            .status()
            .unwrap();
        assert!(st.success());
        let mut g = Gateway {
            dir,
            child: None,
            ssh_port: 0,
            admin: String::new(),
            host: first.host.clone(),
            umask: None,
            stderr: PathBuf::new(),
            shared: None,
        };
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        g.launch_env(extra, &env);
        g
    }

    /// The directory holding its data and host-key directories.
    fn home(&self) -> &Path {
        self.shared.as_deref().unwrap_or(self.dir.path())
    }

    /// Starts it on 127.0.0.1 with `extra` flags (started once, with them).
    pub fn start_with(extra: &[&str]) -> Gateway {
        let mut g = Gateway::unstarted("127.0.0.1");
        g.launch(extra);
        g
    }

    pub fn data(&self) -> PathBuf {
        self.home().join("data")
    }

    /// Starts the binary on the test's directories and waits for its readiness line.
    pub fn launch(&mut self, extra: &[&str]) {
        self.launch_env(extra, &[]);
    }

    pub fn launch_env(&mut self, extra: &[&str], env: &[(&str, &str)]) {
        self.stderr = self.dir.path().join(format!("stderr-{}.log", rand_u64()));
        let err = std::fs::File::create(&self.stderr).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sftpgate"));
        if let Some(mask) = self.umask {
            use std::os::unix::process::CommandExt;
            // SAFETY: umask(2) is async-signal-safe and touches only the child.
            unsafe {
                cmd.pre_exec(move || {
                    libc::umask(mask as libc::mode_t);
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .arg("serve")
            .args(["--listen", &format!("{}:0", self.host)])
            .args(["--admin-listen", &format!("{}:0", self.host)])
            .args(["--public-host", &self.host])
            .arg("--data-dir")
            .arg(self.data())
            .arg("--host-key-dir")
            .arg(self.home().join("hostkeys"))
            .args(extra)
            // Tests connect from 127.0.0.1 one after another, faster than the default
            // per-source rate allows; the tests of that limit set it.
            .args(
                (!extra.contains(&"--connection-rate-per-source"))
                    .then_some(["--connection-rate-per-source", "0"])
                    .into_iter()
                    .flatten(),
            )
            .env("SFTPGATE_ADMIN_TOKEN", TOKEN)
            .env("SFTPGATE_LOG", "info,russh=warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("start sftpgate");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("bad readiness line {line:?}: {e}; log: {}", self.log()));
        self.ssh_port = ready["ssh"]
            .as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        self.admin = ready["admin"].as_str().unwrap().to_string();
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        let mut all = String::new();
        for e in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with("stderr-") {
                all.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        all
    }

    /// Sends a signal and waits for the process to exit; returns its exit status code.
    pub fn stop(&mut self, signal: &str) -> Option<i32> {
        let mut child = self.child.take()?;
        Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        child.wait().unwrap().code()
    }

    /// Waits until the log holds `count` lines containing `needle`.
    pub fn wait_log(&self, needle: &str, count: usize) -> bool {
        wait_until(Duration::from_secs(10), || {
            self.log().matches(needle).count() >= count
        })
    }

    /// The size of request `id`'s upload on disk, 0 if there is none yet.
    pub fn upload_size(&self, id: u64) -> u64 {
        std::fs::metadata(self.upload_path(id)).map_or(0, |m| m.len())
    }

    pub fn upload_path(&self, id: u64) -> PathBuf {
        self.data().join(format!("requests/{id}/upload"))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `serve` on fresh directories with `args`, which must make it refuse to start:
/// asserts it failed before its readiness line, and returns its stderr.
pub fn refused_start(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sftpgate"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--host-key-dir")
        .arg(dir.path().join("keys"))
        .args(args)
        .env("SFTPGATE_ADMIN_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "started with {args:?}");
    assert!(
        out.stdout.is_empty(),
        "{args:?}: said it was ready: {}",
        text(&out.stdout)
    );
    text(&out.stderr)
}

/// A capability this machine lacks (FUSE, mounting, an IPv6 loopback). In CI
/// (`CI=true`) the test fails with `what`, which names what to install or enable, so a
/// test cannot pass there without testing; elsewhere it is said on stderr and the caller
/// returns (a developer's laptop may have no FUSE).
pub fn missing_capability(what: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and this test cannot run: {what}");
    }
    eprintln!("skipped (outside CI only): {what}");
}

/// Polls `cond` every 20 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}
