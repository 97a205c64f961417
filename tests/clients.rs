//! Clients other than OpenSSH's sftp: scp (SFTP mode), curl's sftp:// (libssh2),
//! paramiko, asyncssh, lftp, rclone, PuTTY's psftp and pscp, and sshfs. Each uploads,
//! lists or stats, resumes where it can, downloads, and the bytes are compared by sha256.
//!
//! Over 400 lines on purpose: one test binary per subject, each test independent; a
//! second file would be a second binary linking the whole crate again, for no gain.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

/// A gateway with request `id` (its file `db.dump`) provisioned for a new key named
/// `client`, and `size` random bytes in `src.bin` in the gateway's directory.
fn provisioned(id: u64, client: &str, size: usize) -> (Gateway, ClientKey, PathBuf) {
    let g = Gateway::start();
    let key = ClientKey::new(g.dir.path(), client);
    g.provision(id, "db.dump", &key);
    let src = g.dir.path().join("src.bin");
    random_file(&src, size);
    (g, key, src)
}

/// Moves request `id` to done with a random upgraded dump; returns the dump's path.
fn upgrade(g: &Gateway, id: u64) -> PathBuf {
    let upgraded = g.dir.path().join("upgraded.src");
    random_file(&upgraded, 2_000_003);
    g.finish(id, &upgraded);
    upgraded
}

fn curl(g: &Gateway, key: &ClientKey, user: &str, args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args([
            "-sS",
            "--insecure",
            "--key",
            key.path.to_str().unwrap(),
            "--pubkey",
        ])
        .arg(key.path.with_extension("pub"))
        .args(["-u", &format!("{user}:")])
        .args(args)
        .current_dir(g.dir.path())
        .output()
        .unwrap()
}

#[test]
fn scp_uploads_and_downloads() {
    let (g, key, src) = provisioned(31, "scp", 2_500_000);
    let work = g.dir.path();
    let scp = |args: &[&str]| {
        Command::new("scp")
            .arg("-q")
            .args(key.client_opts())
            .args(["-P", &g.ssh_port.to_string()])
            .args(args)
            .current_dir(work)
            .output()
            .unwrap()
    };
    let out = scp(&["src.bin", "user_31@127.0.0.1:db.dump"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&g.upload_path(31)), sha256(&src));
    let out = scp(&["user_31@127.0.0.1:/db.dump", "back.bin"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&work.join("back.bin")), sha256(&src));
    // Any other name is refused.
    let out = scp(&["src.bin", "user_31@127.0.0.1:other.bin"]);
    assert_failed_with(&out, "Permission denied");
}

#[test]
fn curl_sftp_upload_resume_and_download() {
    let (g, key, src) = provisioned(32, "curl", 3_000_000);
    let work = g.dir.path();
    let url = format!("sftp://127.0.0.1:{}/db.dump", g.ssh_port);

    let out = curl(&g, &key, "user_32", &["-T", "src.bin", &url]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&g.upload_path(32)), sha256(&src));

    // Resume an upload cut short (-C - asks the server for the size and appends).
    truncate(&g.upload_path(32), 1_000_000);
    let out = curl(&g, &key, "user_32", &["-C", "-", "-T", "src.bin", &url]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&g.upload_path(32)), sha256(&src));

    // Listing the root shows the one file.
    let out = curl(
        &g,
        &key,
        "user_32",
        &["-l", &format!("sftp://127.0.0.1:{}/", g.ssh_port)],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "db.dump");

    // Download, then resume a partial download.
    let out = curl(&g, &key, "user_32", &["-o", "dl.bin", &url]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&work.join("dl.bin")), sha256(&src));
    truncate(&work.join("dl.bin"), 123_456);
    let out = curl(&g, &key, "user_32", &["-C", "-", "-o", "dl.bin", &url]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&work.join("dl.bin")), sha256(&src));

    // Another name is refused.
    let out = curl(
        &g,
        &key,
        "user_32",
        &[
            "-T",
            "src.bin",
            &format!("sftp://127.0.0.1:{}/other.bin", g.ssh_port),
        ],
    );
    assert_failed_with(&out, "Permission denied");
}

const PARAMIKO: &str = r#"
import hashlib, os, sys
import paramiko

port, key, src, work = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
t = paramiko.Transport(("127.0.0.1", port))
t.connect(username="user_33", pkey=paramiko.Ed25519Key.from_private_key_file(key))
sftp = paramiko.SFTPClient.from_transport(t)

def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()

sftp.put(src, "db.dump")
st = sftp.stat("db.dump")
assert st.st_size == os.path.getsize(src), st
entries = sftp.listdir_attr(".")
assert [e.filename for e in entries] == ["db.dump"], entries
assert entries[0].st_size == os.path.getsize(src)

# Resume by appending: truncate remotely, then open('a') and write the rest.
half = os.path.getsize(src) // 2
sftp.truncate("db.dump", half)
with open(src, "rb") as f, sftp.open("db.dump", "a") as r:
    f.seek(half)
    r.write(f.read())
assert sftp.stat("db.dump").st_size == os.path.getsize(src)

# get() prefetches reads far ahead.
dst = os.path.join(work, "paramiko.bin")
sftp.get("db.dump", dst)
assert sha(dst) == sha(src)

for bad in ["other.bin", "../db.dump/x", "/etc/passwd"]:
    try:
        sftp.open(bad, "w")
        raise SystemExit("opened " + bad)
    except IOError:
        pass
try:
    sftp.remove("db.dump")
    raise SystemExit("removed db.dump")
except IOError:
    pass
print("ok")
"#;

#[test]
fn paramiko_put_get_append_stat_listdir() {
    let (g, key, src) = provisioned(33, "paramiko", 4_000_000);
    let work = g.dir.path();
    let out = run_python(
        PARAMIKO,
        &[
            &g.ssh_port.to_string(),
            key.path.to_str().unwrap(),
            src.to_str().unwrap(),
            work.to_str().unwrap(),
        ],
    );
    assert_eq!(out.trim(), "ok");
    assert_eq!(sha256(&g.upload_path(33)), sha256(&src));
}

/// asyncssh: its own SFTP implementation, with many reads and writes in flight. `draft`:
/// upload, stat, list, resume by appending, and the refusals; `done`: download the
/// upgraded file, which cannot be written.
const ASYNCSSH: &str = r#"
import asyncio, os, sys
import asyncssh

port, key, src, work, phase = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]

async def refused(op, reason="Permission denied"):
    try:
        await op
    except asyncssh.SFTPError as e:
        assert (e.code, e.reason) == (asyncssh.FX_PERMISSION_DENIED, reason), e
        return
    raise AssertionError("accepted")

async def main():
    async with asyncssh.connect("127.0.0.1", port, username="user_36", client_keys=[key],
                                known_hosts=None) as conn:
        async with conn.start_sftp_client() as sftp:
            assert sftp.version == 3, sftp.version
            size = os.path.getsize(src)
            if phase == "draft":
                await sftp.put(src, "db.dump")
                assert (await sftp.stat("db.dump")).size == size
                assert await sftp.listdir(".") == ["db.dump"]
                await sftp.truncate("db.dump", size // 3)
                async with sftp.open("db.dump", "ab") as f:
                    with open(src, "rb") as s:
                        s.seek(size // 3)
                        await f.write(s.read())
                await refused(sftp.mkdir("d"))
                await refused(sftp.rename("db.dump", "x.dump"))
                await refused(sftp.remove("db.dump"))
                await refused(sftp.put(src, "other.bin"))
            else:
                await sftp.get("upgraded_db.dump", os.path.join(work, "back.bin"))
                await refused(sftp.put(src, "upgraded_db.dump"), "upgraded_db.dump is read-only")
    print("ok")

asyncio.run(main())
"#;

#[test]
fn asyncssh_put_get_append_and_refusals() {
    let (g, key, src) = provisioned(36, "asyncssh", 4_000_037);
    let work = g.dir.path();
    let port = g.ssh_port.to_string();
    let run = |phase: &str| {
        let args = [
            port.as_str(),
            key.path.to_str().unwrap(),
            src.to_str().unwrap(),
            work.to_str().unwrap(),
            phase,
        ];
        assert_eq!(run_python(ASYNCSSH, &args).trim(), "ok");
    };
    run("draft");
    assert_eq!(sha256(&g.upload_path(36)), sha256(&src));
    let upgraded = upgrade(&g, 36);
    run("done");
    assert_eq!(sha256(&work.join("back.bin")), sha256(&upgraded));
}

/// WinSCP's way, done with paramiko: upload to `<file>.filepart`, resume it by opening
/// without truncation and writing at the old size, then rename it onto the file.
const WINSCP_STYLE: &str = r#"
import os, sys
import paramiko

port, key, src = int(sys.argv[1]), sys.argv[2], sys.argv[3]
t = paramiko.Transport(("127.0.0.1", port))
t.connect(username="user_34", pkey=paramiko.Ed25519Key.from_private_key_file(key))
sftp = paramiko.SFTPClient.from_transport(t)
data = open(src, "rb").read()
half = len(data) // 2

with sftp.open("db.dump.filepart", "w") as f:
    f.write(data[:half])
assert sorted(sftp.listdir(".")) == ["db.dump", "db.dump.filepart"], sftp.listdir(".")
assert sftp.stat("/db.dump.filepart").st_size == half

# Resume: open without TRUNC (r+ is READ|WRITE) and write at the old size.
with sftp.open("db.dump.filepart", "r+") as f:
    f.seek(sftp.stat("db.dump.filepart").st_size)
    f.write(data[half:])
sftp.utime("db.dump.filepart", (1_600_000_000, 1_600_000_000))
sftp.chmod("db.dump.filepart", 0o644)

for bad in [("db.dump.filepart", "other"), ("db.dump", "db.dump.filepart"), ("x.filepart", "db.dump")]:
    try:
        sftp.rename(*bad)
        raise SystemExit("renamed %s to %s" % bad)
    except IOError:
        pass
try:
    sftp.open("other.filepart", "w")
    raise SystemExit("opened other.filepart")
except IOError:
    pass

sftp.rename("db.dump.filepart", "db.dump")
assert sftp.listdir(".") == ["db.dump"], sftp.listdir(".")
st = sftp.stat("db.dump")
assert st.st_size == len(data) and st.st_mtime == 1_600_000_000, st
print("ok")
"#;

#[test]
fn winscp_style_filepart_upload_resume_and_rename() {
    let (g, key, src) = provisioned(34, "winscp", 3_000_001);
    let out = run_python(
        WINSCP_STYLE,
        &[
            &g.ssh_port.to_string(),
            key.path.to_str().unwrap(),
            src.to_str().unwrap(),
        ],
    );
    assert_eq!(out.trim(), "ok");
    assert_eq!(sha256(&g.upload_path(34)), sha256(&src));
    assert!(!g.upload_path(34).with_extension("filepart").exists());
}

/// lftp speaks SFTP through an `ssh -s ... sftp` it starts itself.
fn lftp(g: &Gateway, key: &ClientKey, user: &str, command: &str) -> std::process::Output {
    let ssh = format!("ssh -a -x {}", key.client_opts().join(" "));
    let script = format!(
        "set sftp:connect-program '{ssh}'; set net:max-retries 1; set net:timeout 10; \
         set cmd:fail-exit yes; open sftp://{user}:unused@127.0.0.1:{}; {command}",
        g.ssh_port
    );
    Command::new("lftp")
        .args(["-c", &script])
        .env("HOME", g.dir.path())
        .current_dir(g.dir.path())
        .output()
        .unwrap()
}

#[test]
fn lftp_uploads_resumes_lists_and_downloads() {
    let (g, key, src) = provisioned(34, "lftp", 3_000_017);
    let work = g.dir.path();

    let out = lftp(&g, &key, "user_34", "put src.bin -o db.dump");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&g.upload_path(34)), sha256(&src));

    // An upload cut short, continued with `put -c` (STAT, then writes from the size).
    truncate(&g.upload_path(34), 1_234_567);
    let out = lftp(&g, &key, "user_34", "put -c src.bin -o db.dump");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&g.upload_path(34)), sha256(&src));

    let out = lftp(&g, &key, "user_34", "cls -1");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "db.dump");

    let before = sha256(&g.upload_path(34));
    for refused in ["put src.bin -o other.bin", "mkdir d", "mv db.dump x.dump"] {
        assert_failed_with(&lftp(&g, &key, "user_34", refused), "Permission denied");
    }
    assert_eq!(sha256(&g.upload_path(34)), before);

    let upgraded = upgrade(&g, 34);
    let out = lftp(&g, &key, "user_34", "get upgraded_db.dump -o back.bin");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&work.join("back.bin")), sha256(&upgraded));
}

/// An rclone on-the-fly sftp remote path for `user`.
fn remote(g: &Gateway, key: &ClientKey, user: &str, path: &str) -> String {
    format!(
        ":sftp,host=127.0.0.1,port={},user={user},key_file={}:{path}",
        g.ssh_port,
        key.path.display()
    )
}

/// rclone (Go's pkg/sftp). It also opens a second session channel to detect a shell,
/// which is refused, and carries on without remote hashing.
fn rclone(g: &Gateway, args: &[&str]) -> std::process::Output {
    Command::new("rclone")
        .args(args)
        .args(["--retries", "1", "--low-level-retries", "1"])
        .args(["--contimeout", "10s"])
        .env("RCLONE_CONFIG", g.dir.path().join("rclone.conf"))
        .env("HOME", g.dir.path())
        .current_dir(g.dir.path())
        .output()
        .unwrap()
}

#[test]
fn rclone_uploads_lists_and_downloads() {
    let (g, key, src) = provisioned(35, "rclone", 3_000_029);
    let work = g.dir.path();
    let at = |path: &str| remote(&g, &key, "user_35", path);

    let out = rclone(&g, &["copyto", "src.bin", &at("db.dump")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&g.upload_path(35)), sha256(&src));

    let out = rclone(&g, &["lsf", &at("")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "db.dump");

    let out = rclone(&g, &["copyto", "src.bin", &at("other.bin")]);
    assert_failed_with(&out, "Update Create failed: permission denied");
    assert_eq!(sha256(&g.upload_path(35)), sha256(&src));

    let upgraded = upgrade(&g, 35);
    let out = rclone(&g, &["copyto", &at("upgraded_db.dump"), "back.bin"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&work.join("back.bin")), sha256(&upgraded));
}

/// PuTTY 0.78's psftp and pscp: FileZilla's SFTP engine (fzsftp) is derived from psftp,
/// and WinSCP's SSH layer is PuTTY's. They take the key as a `.ppk` and pin the host key.
struct Putty<'a> {
    g: &'a Gateway,
    ppk: PathBuf,
    host_key: String,
}

impl<'a> Putty<'a> {
    fn new(g: &'a Gateway, key: &ClientKey) -> Putty<'a> {
        let ppk = key.path.with_extension("ppk");
        let out = Command::new("puttygen")
            .arg(&key.path)
            .args(["-O", "private", "-o"])
            .arg(&ppk)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(g.dir.path().join("hostkeys/ssh_host_ed25519_key.pub"))
            .output()
            .unwrap();
        let host_key = text(&out.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string();
        Putty { g, ppk, host_key }
    }

    fn run(&self, tool: &str, args: &[&str]) -> std::process::Output {
        Command::new(tool)
            .args(["-batch", "-P", &self.g.ssh_port.to_string(), "-i"])
            .arg(&self.ppk)
            .args(["-hostkey", &self.host_key])
            .args(args)
            .env("HOME", self.g.dir.path())
            .current_dir(self.g.dir.path())
            .output()
            .unwrap()
    }

    /// Runs psftp commands; it stops at the first that fails, and reports on stdout.
    fn psftp(&self, user: &str, commands: &str) -> std::process::Output {
        let script = self.g.dir.path().join(format!("psftp-{}.txt", rand_u64()));
        std::fs::write(&script, commands).unwrap();
        let dest = format!("{user}@127.0.0.1");
        self.run("psftp", &["-b", script.to_str().unwrap(), "-bc", &dest])
    }
}

#[test]
fn putty_psftp_and_pscp_upload_resume_list_and_download() {
    let (g, key, src) = provisioned(36, "putty", 3_000_037);
    let work = g.dir.path();
    let putty = Putty::new(&g, &key);

    let out = putty.run("pscp", &["-q", "src.bin", "user_36@127.0.0.1:db.dump"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&g.upload_path(36)), sha256(&src));

    // `reput` STATs the remote file and writes the rest from its size.
    truncate(&g.upload_path(36), 1_000_003);
    let out = putty.psftp("user_36", "reput src.bin db.dump\nls\n");
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert_eq!(sha256(&g.upload_path(36)), sha256(&src));
    let listing = text(&out.stdout);
    let entries: Vec<&str> = listing.lines().filter(|l| l.starts_with('-')).collect();
    assert_eq!(entries.len(), 1, "{listing}");
    assert!(entries[0].contains(" 3000037 ") && entries[0].ends_with(" db.dump"));

    for (command, said) in [
        ("mkdir x", "mkdir /x: permission denied"),
        ("rm db.dump", "rm /db.dump: permission denied"),
        ("mv db.dump other", "mv /db.dump /other: permission denied"),
        (
            "put src.bin other.bin",
            "/other.bin: open for write: permission denied",
        ),
        (
            "get /etc/passwd p",
            "/etc/passwd: open for read: no such file or directory",
        ),
    ] {
        let out = putty.psftp("user_36", &format!("{command}\n"));
        assert!(!out.status.success(), "{command}");
        assert!(
            text(&out.stdout).contains(said),
            "{command}: {}",
            text(&out.stdout)
        );
    }
    // Legacy SCP needs a remote command, which is refused.
    let out = putty.run(
        "pscp",
        &["-q", "-scp", "src.bin", "user_36@127.0.0.1:db.dump"],
    );
    assert_failed_with(&out, "Server refused to start a shell/command");
    assert_eq!(sha256(&g.upload_path(36)), sha256(&src));
    assert!(!work.join("p").exists());

    let upgraded = upgrade(&g, 36);
    let out = putty.run(
        "pscp",
        &["-q", "user_36@127.0.0.1:upgraded_db.dump", "a.bin"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&work.join("a.bin")), sha256(&upgraded));
    // A download cut short, continued with `reget`.
    truncate(&work.join("a.bin"), 777_777);
    let out = putty.psftp("user_36", "reget upgraded_db.dump a.bin\n");
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert_eq!(sha256(&work.join("a.bin")), sha256(&upgraded));
    // Read-only once done.
    let out = putty.psftp("user_36", "put src.bin upgraded_db.dump\n");
    let said = "/upgraded_db.dump: open for write: permission denied";
    assert!(text(&out.stdout).contains(said), "{}", text(&out.stdout));
    let out = putty.run(
        "pscp",
        &["-q", "user_36@127.0.0.1:upgraded_db.dump", "b.bin"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&work.join("b.bin")), sha256(&upgraded));
}

/// An sshfs 3.7 (FUSE) mount of what `user` sees, unmounted when dropped.
struct Sshfs(PathBuf);

impl Sshfs {
    /// Mounts at `mnt` in the gateway's directory, or `None` where FUSE cannot mount here.
    fn mount(g: &Gateway, key: &ClientKey, user: &str) -> Option<Sshfs> {
        let mnt = g.dir.path().join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        // sshfs returns once mounted, leaving its daemon behind; bound it in case it never
        // does.
        let out = Command::new("timeout")
            .args(["30", "sshfs", "-p", &g.ssh_port.to_string(), "-o"])
            .arg(format!(
                "IdentityFile={},IdentitiesOnly=yes,StrictHostKeyChecking=no,\
                 UserKnownHostsFile=/dev/null,BatchMode=yes",
                key.path.display()
            ))
            .arg(format!("{user}@127.0.0.1:/"))
            .arg(&mnt)
            .output()
            .unwrap();
        if !out.status.success() {
            missing_capability(&format!(
                "sshfs could not mount ({}): it needs FUSE: apt-get install sshfs fuse3, and \
                 /dev/fuse with CAP_SYS_ADMIN (in a container: --device /dev/fuse --cap-add \
                 SYS_ADMIN)",
                text(&out.stderr).trim()
            ));
            return None;
        }
        Some(Sshfs(mnt))
    }
}

impl Drop for Sshfs {
    fn drop(&mut self) {
        let _ = Command::new("fusermount").arg("-u").arg(&self.0).status();
    }
}

/// sshfs: a one-entry listing, the file written with `cp` through the kernel, other names
/// refused; then the upgraded dump read on a new mount, so from the server and not from
/// the kernel's cache of what was written. Where FUSE cannot be mounted it fails in CI and
/// is skipped elsewhere.
#[test]
fn sshfs_mount_write_read_and_refusals() {
    let (g, key, src) = provisioned(37, "sshfs", 3_000_041);
    let Some(mnt) = Sshfs::mount(&g, &key, "user_37") else {
        return;
    };
    let names: Vec<String> = std::fs::read_dir(&mnt.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["db.dump"]);
    std::fs::copy(&src, mnt.0.join("db.dump")).unwrap();
    let refused = std::fs::write(mnt.0.join("other.bin"), b"x").unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::PermissionDenied);
    let refused = std::fs::create_dir(mnt.0.join("d")).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::PermissionDenied);
    drop(mnt);
    assert_eq!(sha256(&g.upload_path(37)), sha256(&src));

    let upgraded = upgrade(&g, 37);
    let mnt = Sshfs::mount(&g, &key, "user_37").expect("the second mount failed");
    assert_eq!(sha256(&mnt.0.join("upgraded_db.dump")), sha256(&upgraded));
}

/// The `hardened` set (no NIST curves, ETM MACs only, no SHA-1) still connects rclone
/// (Go's x/crypto) and PuTTY (0.78 here): each uploads byte-exact.
#[test]
fn hardened_connects_rclone_and_putty() {
    let g = Gateway::start_with(&["--algorithms", "hardened"]);
    let key = ClientKey::new(g.dir.path(), "hardened");
    g.provision(37, "db.dump", &key);
    let src = g.dir.path().join("src.bin");
    random_file(&src, 1_000_039);

    let at = remote(&g, &key, "user_37", "db.dump");
    let out = rclone(&g, &["copyto", "src.bin", &at]);
    assert!(out.status.success(), "rclone: {}", text(&out.stderr));
    assert_eq!(sha256(&g.upload_path(37)), sha256(&src));

    truncate(&g.upload_path(37), 0);
    let out = Putty::new(&g, &key).run("pscp", &["-q", "src.bin", "user_37@127.0.0.1:db.dump"]);
    assert!(out.status.success(), "pscp: {}", text(&out.stderr));
    assert_eq!(sha256(&g.upload_path(37)), sha256(&src));
}
