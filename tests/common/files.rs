//! Test files: random contents, sha256 of a file, whether one file is a prefix of
//! another, and a file cut short as an interrupted transfer leaves it.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

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
