//! HAProxy for tests (Debian's `haproxy`; a test that needs it fails naming the package
//! when it is missing): TCP mode on 127.0.0.1 at a free port, `send-proxy-v2` to each
//! backend, health checks on (which send a v2 LOCAL header). Stopped when dropped; its log
//! is printed when the test panics.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::text;

pub fn haproxy_binary() -> PathBuf {
    for p in [
        "/usr/sbin/haproxy",
        "/usr/bin/haproxy",
        "/usr/local/sbin/haproxy",
    ] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    let found = Command::new("sh")
        .args(["-c", "command -v haproxy"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| text(&o.stdout).trim().to_string());
    match found {
        Some(p) if !p.is_empty() => p.into(),
        _ => panic!(
            "haproxy is not installed: these tests need it (Debian package `haproxy`: apt-get install haproxy)"
        ),
    }
}

/// How the balancer spreads connections and watches its backends.
pub struct Balance<'a> {
    /// Lines of the `backend` section besides the servers (`balance ...`, `option ...`).
    pub backend: &'a str,
    /// What follows `send-proxy-v2` on each `server` line.
    pub server: &'a str,
}

impl Default for Balance<'_> {
    fn default() -> Self {
        Balance {
            backend: "balance roundrobin",
            server: "check inter 300ms",
        }
    }
}

pub struct Haproxy {
    child: Child,
    pub port: u16,
    log: PathBuf,
}

impl Haproxy {
    /// Round robin over `backends` (ports on 127.0.0.1), checked every 300 ms.
    pub fn start(dir: &Path, backends: &[u16]) -> Haproxy {
        Haproxy::start_with(dir, backends, &Balance::default())
    }

    pub fn start_with(dir: &Path, backends: &[u16], balance: &Balance) -> Haproxy {
        let bin = haproxy_binary();
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, p)| {
                format!(
                    "    server gw{i} 127.0.0.1:{p} send-proxy-v2 {}\n",
                    balance.server
                )
            })
            .collect();
        let backend: String = balance
            .backend
            .lines()
            .map(|l| format!("    {}\n", l.trim()))
            .collect();
        // HAProxy cannot report a port it picked, so a free one is found by binding port 0
        // and releasing it; another process may take it in between, so a start that fails
        // to bind is retried on a new port.
        let mut last_err = String::new();
        for attempt in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let cfg = dir.join(format!("haproxy-{attempt}.cfg"));
            std::fs::write(
                &cfg,
                format!(
                    "global\n    maxconn 200\n\
                     defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\
                     frontend ssh\n    bind 127.0.0.1:{port}\n    default_backend gateways\n\
                     backend gateways\n{backend}{servers}"
                ),
            )
            .unwrap();
            let log = dir.join(format!("haproxy-{attempt}.log"));
            let mut child = Command::new(&bin)
                .arg("-db")
                .arg("-f")
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&log).unwrap())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("start haproxy");
            // Ready when its frontend accepts; gone when it could not bind.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    last_err = format!(
                        "haproxy exited ({status}): {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Haproxy { child, port, log };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("haproxy did not listen on {port} within 10 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("haproxy would not start: {last_err}");
    }

    /// What HAProxy has logged so far (in the foreground it logs server state changes,
    /// e.g. `Server gateways/gw1 is DOWN`, to its stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("haproxy log: {}", self.log());
        }
    }
}
