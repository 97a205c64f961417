//! What a throwaway cluster needs from the machine: the server and client binaries
//! (Debian's versioned directories, else `PATH`), the one supervisor thread that forks every
//! postmaster so the death signal outlives test threads, the unprivileged user to run as
//! under root, a free loopback port, `psql` for setup statements, and the sweep of
//! directories left by killed test processes.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use super::super::text;
use super::MISSING;

/// Hands `cmd` to the supervisor thread to spawn. The death signal fires when the thread
/// that forked the child exits, not the process, and test threads exit after each test;
/// so every postmaster (and the shared moto server of s3.rs) is forked by this one thread,
/// which lives as long as the process.
pub fn spawn_on_supervisor(cmd: Command) -> std::io::Result<Child> {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SUPERVISOR: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let tx = SUPERVISOR.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("postgres-supervisor".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // The sender lives in a static, so this is never reached before exit.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn the postgres supervisor thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((cmd, reply_tx))
        .expect("the postgres supervisor thread is gone");
    reply_rx
        .recv()
        .expect("the postgres supervisor thread is gone")
}

/// Removes the cluster directories of test processes that no longer exist (killed
/// before their exit hook ran; the death signal already stopped their servers).
pub(super) fn sweep_leftovers() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("sftpgate-pg-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Debian's `/usr/lib/postgresql/<major>/bin` directories holding `program`, newest last.
pub(super) fn debian_bin_dirs(program: &str) -> Vec<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((major, e.path().join("bin")))
        })
        .filter(|(_, d)| d.join(program).is_file())
        .collect();
    found.sort();
    found.into_iter().map(|(_, d)| d).collect()
}

/// The newest Debian server binary directory, else one on PATH; 13 or later.
pub(super) fn server_bin_dir() -> PathBuf {
    let dir = debian_bin_dirs("postgres")
        .into_iter()
        .rev()
        .chain(
            std::env::var_os("PATH").map_or_else(Vec::new, |p| std::env::split_paths(&p).collect()),
        )
        .find(|d| d.join("initdb").is_file() && d.join("postgres").is_file())
        .unwrap_or_else(|| panic!("{MISSING}"));
    // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    let version = Command::new(dir.join("postgres"))
        .arg("--version")
        .output()
        .map(|o| text(&o.stdout))
        .unwrap_or_default();
    let major = version
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok());
    assert!(
        major.is_some_and(|m| m >= 13),
        "{} is {version:?}, not 13 or later; {MISSING}",
        dir.display()
    );
    dir
}

/// A client program (psql) for an external server: the newest Debian one, else PATH.
pub(super) fn client_bin(program: &str) -> PathBuf {
    debian_bin_dirs(program)
        .pop()
        .map_or_else(|| PathBuf::from(program), |d| d.join(program))
}

/// Runs one SQL statement with psql against `url`.
pub(super) fn psql(psql: &Path, url: &str, sql: &str) -> Result<(), String> {
    let out = Command::new(psql)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            format!(
                "{}: {e}; it comes with Debian's `postgresql-client` package",
                psql.display()
            )
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("psql {sql:?}: {}", text(&out.stderr)))
    }
}

pub(super) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

#[derive(Clone, Copy)]
pub(super) struct User {
    pub(super) uid: u32,
    pub(super) gid: u32,
}

/// The unprivileged user the cluster runs as when the tests run as root.
pub(super) fn test_user() -> Option<User> {
    static USER: OnceLock<Option<User>> = OnceLock::new();
    *USER.get_or_init(|| {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        const NAME: &str = "sftpgate-test";
        if lookup_user(NAME).is_none() {
            // Exit status 9 is "already exists": another test process won the race.
            let _ = Command::new("useradd")
                .args(["--system", "--user-group", "--no-create-home"])
                .args(["--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", NAME])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let user = lookup_user(NAME)
            .or_else(|| lookup_user("nobody"))
            .expect("running as root, the PostgreSQL tests need an unprivileged user: neither sftpgate-test (useradd failed) nor nobody exists");
        Some(user)
    })
}

pub(super) fn lookup_user(name: &str) -> Option<User> {
    let c = CString::new(name).ok()?;
    // SAFETY: getpwnam returns a pointer to static storage or null; only read here, and
    // callers are serialized by `test_user`'s OnceLock.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        return None;
    }
    // SAFETY: non-null, points at a valid passwd entry.
    let pw = unsafe { &*pw };
    Some(User {
        uid: pw.pw_uid,
        gid: pw.pw_gid,
    })
}
