//! A bounded fuzz run of the SFTP request loop over an in-memory stream: random and mutated
//! packets, each of which must get exactly one reply under its own id, without a panic or a
//! hang. Set SFTPGATE_FUZZ_CASES for a longer run and SFTPGATE_FUZZ_SEED to replay one.

mod common;

use std::time::Duration;

use common::wire::*;
use rand::{Rng, RngCore, SeedableRng};

const PATHS: &[&[u8]] = &[
    b"db.dump",
    b"/",
    b".",
    b"..",
    b"/db.dump/..",
    b"\xff\xfe",
    b"",
    b"x/y/z",
    b"db.dump\0",
];

fn field(rng: &mut impl Rng, handles: &[Vec<u8>]) -> Vec<u8> {
    match rng.gen_range(0..8) {
        0 => s(PATHS[rng.gen_range(0..PATHS.len())]),
        1 if !handles.is_empty() => s(&handles[rng.gen_range(0..handles.len())]),
        2 => rng.gen::<u32>().to_be_bytes().to_vec(),
        3 => rng.gen::<u64>().to_be_bytes().to_vec(),
        4 => {
            // A length prefix that lies.
            let mut v = rng.gen_range(0u32..=u32::MAX).to_be_bytes().to_vec();
            v.extend((0..rng.gen_range(0..8)).map(|_| rng.gen::<u8>()));
            v
        }
        5 => {
            // Attributes with random flags.
            let mut v = rng.gen::<u32>().to_be_bytes().to_vec();
            v.extend((0..rng.gen_range(0..40)).map(|_| rng.gen::<u8>()));
            v
        }
        6 => s(&(0..rng.gen_range(0..300))
            .map(|_| rng.gen::<u8>())
            .collect::<Vec<_>>()),
        _ => (0..rng.gen_range(0..16)).map(|_| rng.gen::<u8>()).collect(),
    }
}

#[tokio::test]
async fn random_packets_get_one_reply_each_under_their_id() {
    let cases: u64 = std::env::var("SFTPGATE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let seed: u64 = std::env::var("SFTPGATE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().next_u64());
    eprintln!("fuzz seed {seed} ({cases} cases)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    for writable in [true, false] {
        std::fs::write(dir.path().join("upload"), b"0123456789").unwrap();
        let (mut c, _) = Client::start("db.dump", &dir.path().join("upload"), writable).await;
        let mut handles: Vec<Vec<u8>> = Vec::new();
        for case in 0..cases / 2 {
            let kind: u8 = match rng.gen_range(0..10) {
                0 => rng.gen(),
                1 => EXTENDED,
                _ => rng.gen_range(3..=20),
            };
            let id: u32 = rng.gen();
            let mut body = vec![kind];
            body.extend_from_slice(&id.to_be_bytes());
            if kind == EXTENDED {
                let names: &[&[u8]] = &[
                    b"limits@openssh.com",
                    b"statvfs@openssh.com",
                    b"fstatvfs@openssh.com",
                    b"fsync@openssh.com",
                    b"lsetstat@openssh.com",
                    b"posix-rename@openssh.com",
                    b"nope",
                ];
                body.extend(s(names[rng.gen_range(0..names.len())]));
            }
            for _ in 0..rng.gen_range(0..5) {
                body.extend(field(&mut rng, &handles));
            }
            // Sometimes cut the packet short, or send nothing but the type.
            if rng.gen_bool(0.1) {
                body.truncate(rng.gen_range(1..=body.len()));
            }
            c.send(&body).await;
            let reply = tokio::time::timeout(Duration::from_secs(5), c.recv())
                .await
                .unwrap_or_else(|_| panic!("seed {seed} case {case}: no reply to {body:?}"));
            let want = if body.len() >= 5 { id } else { 0 };
            if kind == 1 && body.len() >= 5 {
                assert_eq!(reply[0], 2, "seed {seed} case {case}: INIT got {reply:?}");
                continue;
            }
            assert_eq!(
                id_of(&reply),
                want,
                "seed {seed} case {case}: wrong id for {body:?}"
            );
            if reply[0] == HANDLE && handles.len() < 8 {
                handles.push(reply[9..].to_vec());
            }
        }
        // The session still works after all that.
        let r = c.call(STAT, &[&s(b"/")]).await;
        assert_eq!(r[0], ATTRS, "seed {seed}");
    }
}
