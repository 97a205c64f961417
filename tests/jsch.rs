//! Java's JSch 0.1.55 (Debian's libjsch-java), which many integration tools embed: it has
//! no Ed25519, no ETM MACs and no curve25519, so it needs the `compatible` set's ECDSA host
//! key, `ecdh-sha2-nistp256` and `hmac-sha2-256`, and logs in with an ECDSA key. A small
//! Java program (tests/jsch/JschCheck.java, run in source-file mode) uploads, resumes with
//! `ChannelSftp.RESUME`, lists, downloads and prints the sha256.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

const JSCH_JAR: &str = "/usr/share/java/jsch.jar";

/// Runs JschCheck.java; fails naming the Debian package when Java or JSch is missing.
fn jsch(g: &Gateway, user: &str, key: &ClientKey, known_hosts: &Path, src: &Path) -> Output {
    assert!(
        Path::new(JSCH_JAR).exists(),
        "{JSCH_JAR} is missing: apt-get install libjsch-java (./run-tests installs it)"
    );
    let program = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/jsch/JschCheck.java");
    Command::new("java")
        .args(["-cp", JSCH_JAR])
        .arg(program)
        .arg(g.ssh_port.to_string())
        .arg(user)
        .arg(&key.path)
        .arg(known_hosts)
        .arg(src)
        .arg(g.dir.path().join("back.bin"))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run java ({e}): apt-get install default-jdk-headless (./run-tests installs it)")
        })
}

/// A known_hosts file holding only the gateway's ECDSA host key, so that JSch (with
/// StrictHostKeyChecking=yes) proves the key it was shown is that one.
fn known_hosts(g: &Gateway) -> std::path::PathBuf {
    let public = std::fs::read_to_string(g.dir.path().join("hostkeys/ssh_host_ecdsa_key.pub"))
        .expect("the ECDSA host key's .pub");
    let mut fields = public.split_whitespace();
    let (kind, blob) = (fields.next().unwrap(), fields.next().unwrap());
    assert_eq!(kind, "ecdsa-sha2-nistp256");
    let path = g.dir.path().join("known_hosts");
    std::fs::write(&path, format!("[127.0.0.1]:{} {kind} {blob}\n", g.ssh_port)).unwrap();
    path
}

/// Request `id` (`db.dump`) provisioned for a new ECDSA P-256 key in PEM form, the one
/// format JSch 0.1.55 reads, and `size` random bytes in `src.bin`.
fn provisioned(g: &Gateway, id: u64, size: usize) -> (ClientKey, std::path::PathBuf) {
    let key = ClientKey::with_keygen_args(
        g.dir.path(),
        "jsch",
        &["-t", "ecdsa", "-b", "256", "-m", "PEM"],
    );
    g.provision(id, "db.dump", &key);
    let src = g.dir.path().join("src.bin");
    random_file(&src, size);
    (key, src)
}

#[test]
fn jsch_ecdsa_upload_resume_list_download() {
    let g = Gateway::start();
    let (key, src) = provisioned(&g, 41, 3_000_017);
    let out = jsch(&g, "user_41", &key, &known_hosts(&g), &src);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\ngateway: {}",
        text(&out.stderr),
        g.log()
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "hostkey ecdsa-sha2-nistp256",
            &format!("partial {}", 3_000_017 / 3),
            "size 3000017",
            "ls db.dump",
            &format!("sha256 {}", sha256(&src)),
        ],
        "{}",
        text(&out.stderr)
    );
    assert_eq!(sha256(&g.upload_path(41)), sha256(&src));
    assert_eq!(sha256(&g.dir.path().join("back.bin")), sha256(&src));
}

/// The price of `hardened`: JSch 0.1.55 finds no key exchange (and no host key or MAC) it
/// shares, as the README's client table says.
#[test]
fn jsch_cannot_negotiate_with_the_hardened_set() {
    let g = Gateway::start_with(&["--algorithms", "hardened"]);
    let (key, src) = provisioned(&g, 42, 1000);
    let out = jsch(&g, "user_42", &key, &known_hosts(&g), &src);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("Algorithm negotiation fail"),
        "{}",
        text(&out.stderr)
    );
}
