//! Python for tests: the venv with the clients and tools the tests use (created once under
//! `target/`), scripts run or driven line by line in it, and the shim that lets the
//! reference's Python 2 samples run unchanged.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::text;

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
