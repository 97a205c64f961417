//! The clients a test drives the gateway with: OpenSSH's `sftp` and `ssh` with a test key
//! (no prompts, no agent), children run with their input and a deadline so that a hanging
//! client fails its test, and a raw TCP read until the server closes.

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{text, Gateway};

impl Gateway {
    /// Asserts the server closed this client's session: once the server logged the
    /// disconnect, the client (whose stdin was still open) reports it.
    pub fn assert_closed_by_server(&self, child: Child, stdin: ChildStdin, nth: usize) {
        assert!(
            self.wait_log("closed by the server", nth),
            "no disconnect logged"
        );
        drop(stdin);
        let out = wait_output(child, Duration::from_secs(10));
        assert!(
            text(&out.stderr).contains("session closed by the server"),
            "client did not see the disconnect: {}",
            text(&out.stderr)
        );
    }

    /// An `sftp -b -` command for `user`, ready to be given its batch on stdin.
    pub fn sftp_cmd(&self, user: &str, key: &ClientKey, extra: &[&str]) -> Command {
        let mut cmd = Command::new("sftp");
        cmd.args(key.client_opts())
            .args(extra)
            .args(["-P", &self.ssh_port.to_string(), "-b", "-"])
            .arg(format!("{user}@{}", self.host));
        cmd
    }

    /// Starts `sftp -b -` with `batch` written to its stdin; the returned stdin keeps the
    /// session open until dropped.
    pub fn spawn_sftp(
        &self,
        user: &str,
        key: &ClientKey,
        extra: &[&str],
        cwd: &Path,
        batch: &str,
    ) -> (Child, ChildStdin) {
        let mut cmd = self.sftp_cmd(user, key, extra);
        cmd.current_dir(cwd);
        spawn_with_input(cmd, batch)
    }

    /// Runs one batch and returns its output.
    pub fn sftp(&self, user: &str, key: &ClientKey, batch: &str, cwd: &Path) -> Output {
        let (child, stdin) = self.spawn_sftp(user, key, &[], cwd, batch);
        drop(stdin);
        wait_output(child, Duration::from_secs(120))
    }

    /// Runs one batch, asserts it succeeded; its standard output.
    pub fn sftp_ok(&self, user: &str, key: &ClientKey, batch: &str, cwd: &Path) -> String {
        let out = self.sftp(user, key, batch, cwd);
        assert!(
            out.status.success(),
            "{}\n{}",
            text(&out.stderr),
            self.log()
        );
        text(&out.stdout)
    }

    /// An `ssh` command to the gateway with extra arguments.
    pub fn ssh(&self, user: &str, key: &ClientKey, args: &[&str], command: &[&str]) -> Output {
        let child = Command::new("ssh")
            .args(key.client_opts())
            .args(["-p", &self.ssh_port.to_string()])
            .args(args)
            .arg(format!("{user}@{}", self.host))
            .args(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_output(child, Duration::from_secs(20))
    }
}

/// `sftp -b -` as `user` to `port` on 127.0.0.1 (a gateway or a balancer in front of
/// some) from the local address `bind`, with `extra` options.
pub fn sftp_from(bind: &str, port: u16, user: &str, key: &ClientKey, extra: &[&str]) -> Command {
    let mut cmd = Command::new("sftp");
    cmd.args(key.client_opts())
        .args(["-o", &format!("BindAddress={bind}")])
        .args(extra)
        .args(["-P", &port.to_string(), "-b", "-"])
        .arg(format!("{user}@127.0.0.1"));
    cmd
}

/// Starts `cmd` with its stdio piped and `input` written to its stdin; the returned stdin
/// keeps it open until dropped.
pub fn spawn_with_input(mut cmd: Command, input: &str) -> (Child, ChildStdin) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, input.as_bytes()).unwrap();
    (child, stdin)
}

/// Runs `cmd` with `input` on its stdin, then closed; waits up to 60 s.
pub fn run_with_input(cmd: Command, input: &str) -> Output {
    let (child, stdin) = spawn_with_input(cmd, input);
    drop(stdin);
    wait_output(child, Duration::from_secs(60))
}

/// Waits for a child with a deadline, so a hanging client fails the test instead of
/// hanging it.
pub fn wait_output(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "client did not finish within {limit:?}: stdout {} stderr {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct ClientKey {
    pub path: PathBuf,
}

impl ClientKey {
    pub fn new(dir: &Path, name: &str) -> ClientKey {
        ClientKey::with_keygen_args(dir, name, &["-t", "ed25519"])
    }

    /// A key of another type, for clients without Ed25519: `ssh-keygen` arguments such as
    /// `["-t", "ecdsa", "-b", "256", "-m", "PEM"]` (JSch 0.1.55 reads only PEM files).
    pub fn with_keygen_args(dir: &Path, name: &str, args: &[&str]) -> ClientKey {
        let path = dir.join(name);
        let st = Command::new("ssh-keygen")
            .arg("-q")
            .args(args)
            .args(["-N", "", "-C", name, "-f"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(st.success());
        ClientKey { path }
    }

    /// OpenSSH client options for this key, shared by ssh, sftp and scp: no host key
    /// prompts, no agent, no passwords.
    pub fn client_opts(&self) -> Vec<String> {
        [
            "-i",
            self.path.to_str().unwrap(),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    pub fn public(&self) -> String {
        std::fs::read_to_string(self.path.with_extension("pub")).unwrap()
    }
}

/// Reads until the server closes (EOF or reset) or `limit` passes; returns what was read
/// and whether the server closed.
pub fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, bool) {
    let end = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (text(&got), false);
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (text(&got), true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (text(&got), true),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (text(&got), false)
            }
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Asserts a client failed and said `needle` on stderr.
pub fn assert_failed_with(out: &Output, needle: &str) {
    let err = text(&out.stderr);
    assert!(!out.status.success(), "expected a failure; stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in {err:?}");
}
