//! Test harness: runs the real `sftpgate` binary on 127.0.0.1 with port 0, and drives it
//! with the real OpenSSH client and curl.
#![allow(dead_code)]

pub mod boto3;
pub mod haproxy;
pub mod postgres;
pub mod s3;
#[macro_use]
pub mod storage;
#[macro_use]
pub mod store_contract;
pub mod wire;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

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

    /// The customer's `request_sftp_access` as the reference's curl sample sends it: a
    /// multipart form of `form` (a value `@path` is a file), `query` (`?request=..&key=..`)
    /// after the route; returns the parsed JSON answer.
    pub fn request_sftp_access(&self, form: &[(&str, &str)], query: &str) -> Value {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-X", "POST"]);
        for (k, v) in form {
            cmd.args(["-F", &format!("{k}={v}")]);
        }
        cmd.arg(format!(
            "http://{}/database/v1/request_sftp_access{query}",
            self.admin
        ));
        let out = cmd.output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
    }

    /// Calls the operator API with curl; returns (HTTP status, parsed JSON body).
    pub fn api(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.api_raw(
            method,
            path,
            body.map(|b| b.to_string()).as_deref(),
            Some(TOKEN),
        )
    }

    pub fn api_raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-X", method, "-w", "\n%{http_code}"]);
        if let Some(t) = token {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        cmd.arg(format!("http://{}{}", self.admin, path));
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text
            .rsplit_once('\n')
            .unwrap_or_else(|| panic!("curl output {text:?}"));
        let json =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("non-JSON body {body:?} ({e})"));
        (code.trim().parse().unwrap(), json)
    }

    /// `GET /v1/requests/{id}/original` into `to`, with a `Range` header if given; the
    /// status.
    pub fn original(&self, id: u64, range: Option<&str>, to: &Path) -> u16 {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-o"]).arg(to).args([
            "-w",
            "%{http_code}",
            "-H",
            &format!("Authorization: Bearer {TOKEN}"),
        ]);
        if let Some(r) = range {
            cmd.args(["-H", &format!("Range: {r}")]);
        }
        let out = cmd
            .arg(format!("http://{}/v1/requests/{id}/original", self.admin))
            .output()
            .unwrap();
        text(&out.stdout).trim().parse().unwrap()
    }

    /// Uploads `file` as the upgraded dump of request `id`.
    pub fn push_upgraded(&self, id: u64, file: &Path) -> u16 {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                "PUT",
                "-H",
                &format!("Authorization: Bearer {TOKEN}"),
            ])
            .arg("--data-binary")
            .arg(format!("@{}", file.display()))
            .arg(format!("http://{}/v1/requests/{id}/upgraded", self.admin))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    /// Creates request `id` in draft with `key` as its only authorized key.
    pub fn provision(&self, id: u64, filename: &str, key: &ClientKey) {
        let body = serde_json::json!({"filename": filename, "key": format!("secret-{id}"), "ssh_keys": key.public()});
        let (code, json) = self.api("PUT", &format!("/v1/requests/{id}"), Some(&body));
        assert_eq!(code, 200, "{json}");
    }

    /// Pushes `upgraded` as request `id`'s upgraded dump and moves it to done; returns the
    /// record.
    pub fn finish(&self, id: u64, upgraded: &Path) -> Value {
        assert_eq!(self.push_upgraded(id, upgraded), 200);
        let (code, json) = self.set_state(id, "done");
        assert_eq!(code, 200, "{json}");
        json["request"].clone()
    }

    pub fn set_state(&self, id: u64, state: &str) -> (u16, Value) {
        self.api(
            "POST",
            &format!("/v1/requests/{id}/state"),
            Some(&serde_json::json!({"state": state})),
        )
    }

    /// Waits until the log holds `count` lines containing `needle`.
    pub fn wait_log(&self, needle: &str, count: usize) -> bool {
        wait_until(Duration::from_secs(10), || {
            self.log().matches(needle).count() >= count
        })
    }

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

    /// Live SSH sessions of request `id`, as the operator API reports them.
    pub fn sessions(&self, id: u64) -> u64 {
        self.api("GET", &format!("/v1/requests/{id}"), None).1["request"]["sessions"]
            .as_u64()
            .unwrap_or(0)
    }

    /// The value of `sftpgate_<name>` on the metrics page (0 if absent).
    pub fn metric(&self, name: &str) -> u64 {
        let out = Command::new("curl")
            .args(["-sS", &format!("http://{}/metrics", self.admin)])
            .output()
            .unwrap();
        let page = text(&out.stdout);
        let prefix = format!("sftpgate_{name} ");
        page.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |v| v.trim().parse().unwrap())
    }

    /// The size of request `id`'s upload on disk, 0 if there is none yet.
    pub fn upload_size(&self, id: u64) -> u64 {
        std::fs::metadata(self.upload_path(id)).map_or(0, |m| m.len())
    }

    pub fn upload_path(&self, id: u64) -> PathBuf {
        self.data().join(format!("requests/{id}/upload"))
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

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
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

pub fn rand_u64() -> u64 {
    use rand::RngCore;
    rand::rngs::OsRng.next_u64()
}

/// Writes `len` pseudo-random bytes to `path`.
pub fn random_file(path: &Path, len: usize) {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand_u64());
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        rng.fill_bytes(&mut buf[..n]);
        std::io::Write::write_all(&mut f, &buf[..n]).unwrap();
        left -= n;
    }
}

pub fn sha256(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// True if `prefix`'s bytes are exactly the start of `full`'s (compared in chunks).
pub fn is_prefix(prefix: &Path, full: &Path) -> bool {
    let (mut p, mut f) = (
        std::fs::File::open(prefix).unwrap(),
        std::fs::File::open(full).unwrap(),
    );
    let (mut a, mut b) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = p.read(&mut a).unwrap();
        if n == 0 {
            return true;
        }
        if f.read_exact(&mut b[..n]).is_err() || a[..n] != b[..n] {
            return false;
        }
    }
}

/// Cuts `path` to its first `len` bytes, as an interrupted transfer leaves a file.
pub fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// The `reason` of each failure in a response body, in order.
pub fn reasons(v: &Value) -> Vec<String> {
    v["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["reason"].as_str().unwrap().to_string())
        .collect()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A one-connection-at-a-time HTTP server that records request bodies: the upload hook's
/// receiver. Returns its URL and the bodies it received, parsed.
pub fn hook_server() -> (String, std::sync::mpsc::Receiver<Value>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut len = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = tx.send(serde_json::from_slice(&body).unwrap_or(Value::Null));
        }
    });
    (url, rx)
}

/// A directory to put on `PYTHONPATH` whose `sitecustomize.py` gives Python 3 the Python 2
/// name the reference's pycurl samples import (`from urllib import urlencode`), so that
/// they run unchanged.
pub fn py2_shim(dir: &Path) -> PathBuf {
    let shim = dir.join("py2shim");
    std::fs::create_dir_all(&shim).unwrap();
    std::fs::write(
        shim.join("sitecustomize.py"),
        "import urllib, urllib.parse\nurllib.urlencode = urllib.parse.urlencode\n",
    )
    .unwrap();
    shim
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

/// Asserts a client failed and said `needle` on stderr.
pub fn assert_failed_with(out: &Output, needle: &str) {
    let err = text(&out.stderr);
    assert!(!out.status.success(), "expected a failure; stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in {err:?}");
}

/// Runs a Python script with the test venv and `args`; asserts it succeeded and returns
/// its standard output.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Starts a Python script with the test venv and `args`, its stdin and stdout piped (to
/// drive it line by line).
pub fn spawn_python(script: &str, args: &[&str]) -> Child {
    Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A Python with the test's client libraries (pycurl, paramiko, asyncssh,
/// websocket-client, ssh2-python), ssh-audit, schemathesis and moto's S3 server, in a venv under `target/` created on first use. Test binaries run
/// one after another, so a `Once` per binary plus a marker file is enough to build it once.
pub fn python() -> PathBuf {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-venv");
    let py = venv.join("bin/python");
    let marker = venv.join(".ready-7");
    ONCE.call_once(|| {
        if marker.exists() {
            return;
        }
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(&py)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--disable-pip-version-check",
                    "pycurl==7.49.0",
                    "paramiko==5.1.0",
                    "asyncssh==2.24.1",
                    "websocket-client==1.8.0",
                    "ssh-audit==3.3.0",
                    // libssh2 1.11.1, bundled in its wheel (tests/host_keys.rs).
                    "ssh2-python==1.2.0.post1",
                    "schemathesis==4.32.5",
                    // The S3-compatible server of tests/common/s3.rs.
                    "moto[server]==5.2.5",
                ])
                .status()
                .is_ok_and(|s| s.success());
        assert!(
            ok,
            "cannot set up the Python test venv (python3 -m venv, pip install pycurl paramiko asyncssh ssh-audit schemathesis moto[server])"
        );
        std::fs::write(&marker, b"").unwrap();
    });
    py
}
