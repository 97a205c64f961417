//! PostgreSQL for tests. With `SFTPGATE_TEST_DATABASE_URL` set, every test database is
//! created on that server (its user needs CREATEDB; each database is dropped again when
//! its test ends). Otherwise one throwaway cluster per test binary is started from the
//! installed server binaries (Debian's `/usr/lib/postgresql/<major>/bin`, else `PATH`):
//! initdb into a temp dir, TCP on 127.0.0.1 at a free port, trust authentication, and,
//! when the tests run as root (initdb refuses root), as the unprivileged user
//! `sftpgate-test` (created with useradd on first use; `nobody` if that fails). Each test
//! gets a fresh database of its own, so tests run in parallel on one cluster. Missing
//! binaries fail the test with the Debian package to install; nothing is skipped.
//!
//! No cluster outlives its test process: `postgres` is started directly (not through
//! `pg_ctl`, which daemonizes it) as a child of one supervisor thread that never exits,
//! with `PR_SET_PDEATHSIG`, so however the test process ends (also SIGKILL) the kernel
//! sends the postmaster SIGQUIT. A normal exit stops it and removes its directory in an
//! `atexit` hook; directories left by killed processes are swept at the next start.
//! Readiness is the server's own "ready to accept connections" log line, read from its
//! stderr pipe, so there is no polling and no fixed sleep. What the cluster needs from the
//! machine (its binaries, the supervisor thread, the user) is in `postgres/host.rs`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::{rand_u64, text};
pub use host::spawn_on_supervisor;
use host::{client_bin, free_port, psql, server_bin_dir, sweep_leftovers, test_user, User};

mod host;

/// What the tests say when no server binaries are installed.
const MISSING: &str = "the PostgreSQL tests need PostgreSQL 13 or later's server binaries \
    (initdb, postgres), found neither in /usr/lib/postgresql/<major>/bin nor on PATH: install \
    Debian's `postgresql` package (apt-get install postgresql; the README's ./run-tests does), or \
    point SFTPGATE_TEST_DATABASE_URL at a server";

/// The line the postmaster logs once it accepts connections (messages are forced to
/// English with `lc_messages=C`).
const READY: &str = "database system is ready to accept connections";

/// How long initdb or a start may take before the test fails with the server's log.
const START_LIMIT: Duration = Duration::from_secs(120);

/// A database of one test's own on the shared server.
pub struct TestDb {
    /// `postgres://user@127.0.0.1:<port>/<name>`, ready for `PgStore::connect`.
    pub url: String,
    pub name: String,
    /// Set for an external server, where the database is dropped with the test.
    drop_with: Option<String>,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(admin) = &self.drop_with {
            // WITH (FORCE) (PostgreSQL 13+) ends the test's pooled connections too.
            let _ = psql(
                &client_bin("psql"),
                admin,
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            );
        }
    }
}

/// The flags of a gateway node on `db`, with short upload leases: a killed node's upload
/// is free again within 3 s (the default is 15 s).
pub fn node_flags(db: &TestDb) -> Vec<String> {
    [
        "--store",
        &db.url,
        "--lease-ttl",
        "3s",
        "--lease-wait",
        "5s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Creates a fresh, empty database for one test on the shared server (started on first
/// use).
pub fn database() -> TestDb {
    let name = format!("t_{:016x}", rand_u64());
    match server() {
        Server::External(admin) => {
            psql(
                &client_bin("psql"),
                admin,
                &format!("CREATE DATABASE {name}"),
            )
            .unwrap_or_else(|e| panic!("SFTPGATE_TEST_DATABASE_URL: {e}"));
            let mut url = url::Url::parse(admin)
                .unwrap_or_else(|e| panic!("SFTPGATE_TEST_DATABASE_URL is not a URL: {e}"));
            url.set_path(&name);
            TestDb {
                url: url.to_string(),
                name,
                drop_with: Some(admin.clone()),
            }
        }
        Server::Local(cluster) => cluster.database_named(name),
    }
}

enum Server {
    External(String),
    Local(Cluster),
}

/// The server every test of this binary shares.
static SERVER: OnceLock<Server> = OnceLock::new();

fn server() -> &'static Server {
    SERVER.get_or_init(|| match std::env::var("SFTPGATE_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Server::External(url),
        _ => {
            let cluster = Cluster::start();
            // SAFETY: registers a plain `extern "C"` function; it runs once at exit.
            unsafe { libc::atexit(stop_shared_at_exit) };
            Server::Local(cluster)
        }
    })
}

/// A static is never dropped, so the shared cluster is stopped and removed here.
extern "C" fn stop_shared_at_exit() {
    if let Some(Server::Local(cluster)) = SERVER.get() {
        cluster.remove();
    }
}

/// A PostgreSQL cluster of the test process's own.
pub struct Cluster {
    bin: PathBuf,
    /// The temp dir: `data/` (PGDATA), the Unix socket and `postgres.log`.
    dir: PathBuf,
    pub port: u16,
    user: Option<User>,
    child: Mutex<Option<Child>>,
}

impl Cluster {
    /// A cluster for one test alone, e.g. one that restarts it: the shared one must stay
    /// up for the other tests of the binary. Stopped and removed on drop. Always a local
    /// cluster, also when `SFTPGATE_TEST_DATABASE_URL` is set.
    pub fn private() -> Cluster {
        Cluster::start()
    }

    fn start() -> Cluster {
        let bin = server_bin_dir();
        let user = test_user();
        sweep_leftovers();
        let dir = std::env::temp_dir().join(format!(
            "sftpgate-pg-{}-{:08x}",
            std::process::id(),
            rand_u64() as u32
        ));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        if let Some(u) = &user {
            std::os::unix::fs::chown(&dir, Some(u.uid), Some(u.gid))
                .unwrap_or_else(|e| panic!("chown {}: {e}", dir.display()));
        }
        let mut cluster = Cluster {
            bin,
            dir,
            port: 0,
            user,
            child: Mutex::new(None),
        };
        cluster.initdb();
        // A free port can be taken by someone else between probing and binding; the
        // postmaster then exits at once and another port is tried.
        for attempt in 0.. {
            cluster.port = free_port();
            match cluster.launch() {
                Ok(()) => break,
                Err(log) if attempt < 5 && log.contains("could not bind") => continue,
                Err(log) => panic!("PostgreSQL did not start: {log}"),
            }
        }
        cluster
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.current_dir(&self.dir)
            .env("LC_ALL", "C")
            .env_remove("PGDATA");
        if let Some(u) = &self.user {
            // std drops the supplementary groups, then setgid/setuid, before exec.
            cmd.uid(u.uid).gid(u.gid).env("HOME", &self.dir);
        }
        cmd
    }

    fn initdb(&self) {
        let mut cmd = self.command("initdb");
        // SAFETY: prctl is async-signal-safe. A test process killed meanwhile takes
        // initdb along (its bootstrap backend then sees its input end).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let out = cmd
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-U", "postgres", "--auth=trust", "--no-sync"])
            .args(["--encoding=UTF8", "--locale=C"])
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}; {MISSING}", self.bin.join("initdb").display()));
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }

    /// Starts the postmaster on `self.port` and waits for its readiness line; on failure
    /// returns its log.
    fn launch(&self) -> Result<(), String> {
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-p", &self.port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(&self.dir)
            // Durability is worthless for a throwaway cluster, and fsync is what makes
            // a 2-core CI machine slow; crash safety of the store is PostgreSQL's own.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=300"])
            .args(["-c", "lc_messages=C", "-c", "logging_collector=off"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: prctl and getppid are async-signal-safe. This runs after std's setuid,
        // which would clear the death signal again.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = spawn_on_supervisor(cmd)
            .unwrap_or_else(|e| panic!("{}: {e}; {MISSING}", self.bin.join("postgres").display()));
        let stderr = child.stderr.take().expect("piped stderr");
        let log_path = self.dir.join("postgres.log");
        let (ready_tx, ready_rx) = mpsc::channel();
        // Drains the server's stderr for as long as it runs (a full pipe would block its
        // logging), keeping a copy in postgres.log and reporting the readiness line.
        std::thread::spawn(move || {
            let mut log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .ok();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(f) = log.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                if line.contains(READY) {
                    let _ = ready_tx.send(());
                }
            }
        });
        let result = ready_rx.recv_timeout(START_LIMIT);
        let mut slot = self.child.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(()) => {
                *slot = Some(child);
                Ok(())
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(self.log())
            }
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    /// The URL of `db` on this cluster.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A fresh database on this cluster.
    pub fn database(&self) -> TestDb {
        self.database_named(format!("t_{:016x}", rand_u64()))
    }

    fn database_named(&self, name: String) -> TestDb {
        psql(
            &self.bin.join("psql"),
            &self.url("postgres"),
            &format!("CREATE DATABASE {name}"),
        )
        .unwrap_or_else(|e| panic!("{e}; server log: {}", self.log()));
        TestDb {
            url: self.url(&name),
            name,
            drop_with: None,
        }
    }

    /// Stops the server (fast shutdown: sessions are ended, the data kept) and waits
    /// until it has exited. No-op when stopped.
    pub fn stop(&self) {
        self.signal_and_wait(libc::SIGINT);
    }

    /// Starts the stopped server again on the same port and data directory.
    pub fn start_again(&self) {
        let running = self
            .child
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        if !running {
            self.launch()
                .unwrap_or_else(|log| panic!("PostgreSQL did not restart: {log}"));
        }
    }

    /// Stops and starts the server, as an operator's restart does.
    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }

    fn signal_and_wait(&self, signal: libc::c_int) {
        let mut slot = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut child) = slot.take() {
            // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
            unsafe { libc::kill(child.id() as libc::pid_t, signal) };
            let _ = child.wait();
        }
    }

    /// Stops the server at once (immediate shutdown) and removes its directory.
    fn remove(&self) {
        self.signal_and_wait(libc::SIGQUIT);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.remove();
    }
}
