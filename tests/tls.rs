//! HTTPS on the operator listener and to hooks, with certificates the test makes (rcgen: a
//! CA and leaves for 127.0.0.1 and localhost signed by it): curl trusts the listener with
//! that CA and refuses it with another (exit 60); plain HTTP to the TLS port is told to use
//! https; silent and stalled handshakes lose their slot within the header timeout; SIGHUP
//! swaps the certificate for new connections while one opened before goes on, and a bad
//! file keeps the old one; an https:// hook is delivered with --hook-ca and refused
//! (unknown issuer) without it.
//!
//! Over 400 lines on purpose: one test binary per subject, each test independent; a
//! second file would be a second binary linking the whole crate again, for no gain.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// A test CA that signs leaves for the loopback names.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A leaf's PEM files and the SHA-256 of its DER, as clients see it.
struct Leaf {
    cert: PathBuf,
    key: PathBuf,
    fingerprint: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, self.cert.pem()).unwrap();
        path
    }

    /// A leaf for 127.0.0.1 and localhost, written as `<name>.crt` (leaf then CA) and
    /// `<name>.key` (PKCS#8).
    fn leaf(&self, dir: &Path, name: &str) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, format!("{}{}", cert.pem(), self.cert.pem())).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Leaf {
            cert: cert_path,
            key: key_path,
            fingerprint: hex::encode(Sha256::digest(cert.der())),
        }
    }
}

/// Sends SIGHUP (the gateway goes on running).
fn hangup(g: &Gateway) {
    let pid = g.child.as_ref().expect("running").id();
    let st = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

fn tls_flags(leaf: &Leaf) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        leaf.cert.display().to_string(),
        "--tls-key".into(),
        leaf.key.display().to_string(),
    ]
}

fn start_tls(leaf: &Leaf, extra: &[&str]) -> Gateway {
    let mut flags = tls_flags(leaf);
    flags.extend(extra.iter().map(|s| s.to_string()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Gateway::start_with(&flags)
}

/// curl over https with `ca` trusted; returns (exit code, HTTP status, body).
fn curl(g: &Gateway, ca: &Path, args: &[&str], path: &str) -> (i32, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", "--cacert"])
        .arg(ca)
        .args(args)
        .arg(format!("https://{}{path}", g.admin))
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    (
        out.status.code().unwrap_or(-1),
        code.to_string(),
        body.to_string(),
    )
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON: {body:?} ({e})"))
}

/// The SHA-256 of the certificate a new TLS connection to `g` is given (Python's ssl,
/// verifying against `ca`).
fn served_fingerprint(g: &Gateway, ca: &Path) -> String {
    let (host, port) = g.admin.rsplit_once(':').unwrap();
    run_python(
        "import hashlib, socket, ssl, sys\n\
         ctx = ssl.create_default_context(cafile=sys.argv[3])\n\
         with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20) as raw:\n\
         \x20   with ctx.wrap_socket(raw, server_hostname=sys.argv[1]) as s:\n\
         \x20       print(hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest())\n",
        &[host, port, ca.to_str().unwrap()],
    )
    .trim()
    .to_string()
}

#[test]
fn the_api_is_served_over_https_to_clients_that_trust_its_ca() {
    let work = tempfile::tempdir().unwrap();
    let (ca, other) = (Ca::new("test CA"), Ca::new("some other CA"));
    let leaf = ca.leaf(work.path(), "gw");
    let (ca_pem, other_pem) = (
        ca.write(work.path(), "ca"),
        other.write(work.path(), "other"),
    );
    let g = start_tls(&leaf, &[]);

    let (exit, code, body) = curl(&g, &ca_pem, &[], "/healthz");
    assert_eq!((exit, code.as_str()), (0, "200"), "{body}");
    assert_eq!(json(&body)["status"], "ok");
    let auth = format!("Authorization: Bearer {TOKEN}");
    let put = json!({"filename": "db.dump", "key": "k-1"}).to_string();
    let (exit, code, body) = curl(
        &g,
        &ca_pem,
        &["-X", "PUT", "-H", &auth, "--data-binary", &put],
        "/v1/requests/41",
    );
    assert_eq!((exit, code.as_str()), (0, "200"), "{body}");
    let (_, code, body) = curl(&g, &ca_pem, &["-H", &auth], "/v1/requests");
    let v = json(&body);
    assert_eq!(code, "200", "{body}");
    assert_eq!(v["requests"][0]["id"], 41);
    // What clients are told to connect to is the SSH side, whatever the API's scheme.
    assert_eq!(
        v["requests"][0]["sample_command"],
        format!("sftp -P {} user_41@127.0.0.1", g.ssh_port)
    );
    // The token is still required over TLS.
    let (_, code, body) = curl(&g, &ca_pem, &[], "/v1/requests");
    assert_eq!(code, "401", "{body}");

    // Another CA: curl refuses the certificate (60: peer certificate cannot be
    // authenticated with known CA certificates).
    let (exit, code, _) = curl(&g, &other_pem, &[], "/healthz");
    assert_eq!((exit, code.as_str()), (60, "000"));

    // Plain HTTP to the TLS port is told to use https (and served nothing else).
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}"])
        .arg(format!("http://{}/v1/requests", g.admin))
        .args(["-H", &auth])
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    let (body, code) = stdout.rsplit_once('\n').unwrap();
    assert_eq!(code, "400", "{stdout} {}", text(&out.stderr));
    assert_eq!(
        json(body),
        json!({"failures": [{"reason": "HTTP:TLS_REQUIRED",
            "message": "this listener speaks HTTPS: use an https:// URL"}]})
    );

    // The status page's cookie is Secure once the listener speaks TLS.
    let out = Command::new("curl")
        .args(["-sS", "-D", "-", "-o", "/dev/null", "--cacert"])
        .arg(&ca_pem)
        .args(["--data-urlencode", &format!("token={TOKEN}")])
        .arg(format!("https://{}/login", g.admin))
        .output()
        .unwrap();
    let headers = text(&out.stdout).to_ascii_lowercase();
    let cookie = headers
        .lines()
        .find(|l| l.starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie in {headers}"));
    assert!(
        cookie.trim_end().split("; ").any(|a| a == "secure"),
        "{cookie}"
    );

    // The CLI, with the CA given.
    let out = Command::new(env!("CARGO_BIN_EXE_sftpgate"))
        .args(["request", "list", "--json", "--admin"])
        .arg(format!("https://{}", g.admin))
        .arg("--cacert")
        .arg(&ca_pem)
        .env("SFTPGATE_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["requests"][0]["id"], 41);
    // Without it, the system's roots do not know the test CA.
    let out = Command::new(env!("CARGO_BIN_EXE_sftpgate"))
        .args(["request", "list", "--admin"])
        .arg(format!("https://{}", g.admin))
        .env("SFTPGATE_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_failed_with(&out, "UnknownIssuer");
}

#[test]
fn rsa_and_ec_keys_in_their_traditional_pem_forms_are_served() {
    let work = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let ca_pem = ca.write(work.path(), "ca");
    let ca_key = work.path().join("ca.key");
    std::fs::write(&ca_key, ca.key.serialize_pem()).unwrap();
    // SEC1 EC ("BEGIN EC PRIVATE KEY") from rcgen's PKCS#8 key.
    let ec = ca.leaf(work.path(), "ec");
    let sec1 = work.path().join("ec-sec1.key");
    let st = Command::new("openssl")
        .args(["pkey", "-traditional", "-in"])
        .arg(&ec.key)
        .arg("-out")
        .arg(&sec1)
        .status()
        .expect("openssl (Debian package openssl)");
    assert!(st.success());
    assert!(std::fs::read_to_string(&sec1)
        .unwrap()
        .starts_with("-----BEGIN EC PRIVATE KEY-----"));
    // PKCS#1 RSA ("BEGIN RSA PRIVATE KEY"), its leaf signed by the test CA with openssl.
    let rsa_key = work.path().join("rsa.key");
    let rsa_cert = work.path().join("rsa.crt");
    let script = format!(
        "set -e; cd {dir}; openssl genrsa -traditional -out rsa.key 2048 2>/dev/null; \
         openssl req -new -key rsa.key -subj /CN=rsa -out rsa.csr; \
         printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > ext; \
         openssl x509 -req -in rsa.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext -out rsa.crt 2>/dev/null",
        dir = work.path().display()
    );
    let st = Command::new("sh").args(["-c", &script]).status().unwrap();
    assert!(st.success());
    assert!(std::fs::read_to_string(&rsa_key)
        .unwrap()
        .starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    for (cert, key) in [(&ec.cert, &sec1), (&rsa_cert, &rsa_key)] {
        let leaf = Leaf {
            cert: cert.clone(),
            key: key.clone(),
            fingerprint: String::new(),
        };
        let g = start_tls(&leaf, &[]);
        let (exit, code, body) = curl(&g, &ca_pem, &[], "/healthz");
        assert_eq!(
            (exit, code.as_str()),
            (0, "200"),
            "{}: {body}",
            key.display()
        );
    }
}

#[test]
fn bad_tls_settings_stop_the_start_with_a_reason() {
    let work = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let (a, b) = (ca.leaf(work.path(), "a"), ca.leaf(work.path(), "b"));
    let (cert, key) = (a.cert.to_str().unwrap(), a.key.to_str().unwrap());
    let err = refused_start(&["--tls-cert", cert]);
    assert!(err.contains("--tls-cert needs --tls-key"), "{err}");
    let err = refused_start(&["--tls-key", key]);
    assert!(err.contains("--tls-key needs --tls-cert"), "{err}");
    // A key that is not the certificate's.
    let err = refused_start(&["--tls-cert", cert, "--tls-key", b.key.to_str().unwrap()]);
    assert!(err.contains("does not fit certificate"), "{err}");
    // The certificate given as the key, a missing file, and a file with no certificate.
    let err = refused_start(&["--tls-cert", cert, "--tls-key", cert]);
    assert!(err.contains(&format!("TLS key file {cert}")), "{err}");
    let err = refused_start(&["--tls-cert", "/nonexistent.pem", "--tls-key", key]);
    assert!(
        err.contains("TLS certificate file /nonexistent.pem"),
        "{err}"
    );
    let err = refused_start(&["--tls-cert", key, "--tls-key", key]);
    assert!(err.contains("no PEM certificate"), "{err}");
    let err = refused_start(&[
        "--hook-ca",
        key,
        "--on-upload-closed",
        "https://127.0.0.1:1/",
    ]);
    assert!(
        err.contains(&format!("CA file {key}: no PEM certificate")),
        "{err}"
    );
}

#[test]
fn silent_and_stalled_handshakes_lose_their_slot() {
    let work = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let leaf = ca.leaf(work.path(), "gw");
    let ca_pem = ca.write(work.path(), "ca");
    let g = start_tls(
        &leaf,
        &[
            "--http-header-timeout-secs",
            "2",
            "--http-max-connections",
            "2",
        ],
    );
    let started = Instant::now();
    // One says nothing; one starts a ClientHello (a handshake record header) and stops.
    let mut silent = TcpStream::connect(&g.admin).unwrap();
    let mut stalled = TcpStream::connect(&g.admin).unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    // Both slots are held: the next client is answered 503 over TLS.
    let (exit, code, body) = curl(&g, &ca_pem, &[], "/healthz");
    assert_eq!((exit, code.as_str()), (0, "503"), "{body}");
    assert_eq!(reasons(&json(&body)), ["HTTP:TOO_MANY_CONNECTIONS"]);
    let bound = Duration::from_secs(10);
    assert!(
        read_until_closed(&mut silent, bound).1,
        "a silent connection stayed open"
    );
    assert!(
        read_until_closed(&mut stalled, bound).1,
        "a stalled handshake stayed open"
    );
    assert!(started.elapsed() >= Duration::from_millis(1500));
    // Their slots are free again.
    assert!(wait_until(bound, || curl(&g, &ca_pem, &[], "/healthz").1 == "200"));
}

#[test]
fn sighup_reloads_the_certificate_for_new_connections_only() {
    let work = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let ca_pem = ca.write(work.path(), "ca");
    let first = ca.leaf(work.path(), "first");
    let second = ca.leaf(work.path(), "second");
    // The files the gateway serves, replaced in place as an operator's renewal would.
    let served = Leaf {
        cert: work.path().join("served.crt"),
        key: work.path().join("served.key"),
        fingerprint: first.fingerprint.clone(),
    };
    std::fs::copy(&first.cert, &served.cert).unwrap();
    std::fs::copy(&first.key, &served.key).unwrap();
    let g = start_tls(&served, &[]);
    assert_eq!(served_fingerprint(&g, &ca_pem), first.fingerprint);

    // A kept-alive connection, opened before the reload, makes a request after it.
    let (host, port) = g.admin.rsplit_once(':').unwrap();
    let script = "import hashlib, http.client, json, ssl, sys\n\
        host, port, ca, token = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]\n\
        ctx = ssl.create_default_context(cafile=ca)\n\
        fp = lambda s: hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()\n\
        old = http.client.HTTPSConnection(host, port, context=ctx, timeout=20)\n\
        old.request('GET', '/healthz'); r = old.getresponse(); r.read()\n\
        sock = old.sock\n\
        print(json.dumps({'old': fp(sock), 'status': r.status}), flush=True)\n\
        sys.stdin.readline()\n\
        old.request('GET', '/v1/requests', headers={'Authorization': 'Bearer ' + token})\n\
        r = old.getresponse(); body = json.loads(r.read())\n\
        print(json.dumps({'same': old.sock is sock, 'old': fp(old.sock), 'status': r.status,\n\
                          'failures': body['failures']}), flush=True)\n";
    let mut py = Command::new(python())
        .args(["-c", script, host, port, ca_pem.to_str().unwrap(), TOKEN])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(py.stdout.take().unwrap()).lines();
    let before = json(&lines.next().unwrap().unwrap());
    assert_eq!(before, json!({"old": first.fingerprint, "status": 200}));

    std::fs::copy(&second.cert, &served.cert).unwrap();
    std::fs::copy(&second.key, &served.key).unwrap();
    hangup(&g);
    assert!(g.wait_log("reloaded the TLS certificate", 1), "{}", g.log());
    assert!(g.log().contains(&second.fingerprint), "{}", g.log());
    assert_eq!(served_fingerprint(&g, &ca_pem), second.fingerprint);
    writeln!(py.stdin.as_mut().unwrap()).unwrap();
    let after = json(&lines.next().unwrap().unwrap());
    assert_eq!(
        after,
        json!({"same": true, "old": first.fingerprint, "status": 200, "failures": []})
    );
    assert!(py.wait().unwrap().success());

    // A reload that cannot read its files keeps the certificate in use, and says so.
    std::fs::write(&served.key, "not a key").unwrap();
    hangup(&g);
    assert!(
        g.wait_log("cannot reload the TLS certificate", 1),
        "{}",
        g.log()
    );
    assert_eq!(served_fingerprint(&g, &ca_pem), second.fingerprint);
    let (exit, code, _) = curl(&g, &ca_pem, &[], "/healthz");
    assert_eq!((exit, code.as_str()), (0, "200"));
}

/// An HTTPS receiver (Python's http.server and ssl) that prints each POSTed body on a
/// line; killed when dropped.
struct Receiver {
    child: Child,
    url: String,
    bodies: std::sync::mpsc::Receiver<String>,
}

impl Receiver {
    fn start(leaf: &Leaf) -> Receiver {
        let script = "import http.server, ssl, sys\n\
            class H(http.server.BaseHTTPRequestHandler):\n\
            \x20   def do_POST(self):\n\
            \x20       body = self.rfile.read(int(self.headers.get('content-length', 0)))\n\
            \x20       self.send_response(200); self.send_header('content-length', '0'); self.end_headers()\n\
            \x20       sys.stdout.write(body.decode() + '\\n'); sys.stdout.flush()\n\
            \x20   def log_message(self, *args): pass\n\
            srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), H)\n\
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
            ctx.load_cert_chain(sys.argv[1], sys.argv[2])\n\
            srv.socket = ctx.wrap_socket(srv.socket, server_side=True)\n\
            print(srv.server_address[1], flush=True)\n\
            srv.serve_forever()\n";
        let mut child = Command::new(python())
            .args(["-c", script])
            .arg(&leaf.cert)
            .arg(&leaf.key)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port = lines.next().unwrap().unwrap();
        let (tx, bodies) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Receiver {
            child,
            url: format!("https://127.0.0.1:{}/hook", port.trim()),
            bodies,
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn https_hooks_are_verified_against_the_hook_ca() {
    let work = tempfile::tempdir().unwrap();
    let ca = Ca::new("hook CA");
    let ca_pem = ca.write(work.path(), "ca");
    let receiver = Receiver::start(&ca.leaf(work.path(), "receiver"));
    let mut g = Gateway::start_with(&[
        "--on-upload-closed",
        &receiver.url,
        "--hook-ca",
        ca_pem.to_str().unwrap(),
    ]);
    let key = ClientKey::new(work.path(), "k");
    g.provision(9, "db.dump", &key);
    let src = work.path().join("db.dump");
    random_file(&src, 100_000);
    let out = g.sftp("user_9", &key, "put db.dump\n", work.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let event = receiver
        .bodies
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("no hook call; log: {}", g.log()));
    let event = json(&event);
    assert_eq!(
        (&event["event"], &event["request_id"], &event["final_size"]),
        (&json!("upload-closed"), &json!(9), &json!(100_000))
    );

    // Without the CA, the receiver's certificate is refused and it is sent nothing.
    g.stop("TERM");
    g.launch(&["--on-upload-closed", &receiver.url]);
    let out = g.sftp("user_9", &key, "put db.dump\n", work.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(g.wait_log("UnknownIssuer", 1), "{}", g.log());
    assert!(
        receiver.bodies.try_recv().is_err(),
        "an unverified receiver got an event"
    );
}
