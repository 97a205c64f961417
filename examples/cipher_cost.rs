//! The cipher's own cost, per library, for the benchmark's floor (bench/cost-breakdown.sh).
//!
//! `openssl speed` says what the machine can do; this says what the libraries a Rust SSH server
//! can link do with the same SSH packets: aws-lc-rs (what russh 0.65 links by default, and what
//! sftpgate links), ring (russh's other backend) and RustCrypto (ssh-cipher's crates, which russh
//! cannot use for transport). Each AEAD seals and opens 32 KiB SSH packets, the size OpenSSH's
//! channel data comes in, on one thread; the figure is that thread's CPU seconds per GiB.
//!
//! usage: `cargo run --release --example cipher_cost [MIB]` (256 MiB a measurement by default).
//! Prints one JSON object: cipher -> library -> {"seal": s/GiB, "open": s/GiB}. "open" has the
//! copy of the sealed packet into place taken out (each open needs a fresh ciphertext).

use std::collections::BTreeMap;
use std::hint::black_box;

use anyhow::{anyhow, Context, Result};
use rustix::time::{clock_gettime, ClockId};

/// An SSH packet carrying 32 KiB of channel data: length, padding length, the message's
/// header (type, channel, data length), the data and at least 4 bytes of padding.
const PACKET: usize = 4 + 1 + 9 + 32 * 1024 + 6;
const GIB: f64 = (1u64 << 30) as f64;
const CHACHA: &str = "chacha20-poly1305@openssh.com";
const AES256: &str = "aes256-gcm@openssh.com";

fn thread_cpu() -> f64 {
    let t = clock_gettime(ClockId::ThreadCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// How many times each figure is measured; the least is kept, as bench/copy-floor.py does: a
/// floor is what the machine can do, and on a shared machine one measurement can pay for
/// another tenant's use of the core.
const TRIES: usize = 3;

/// CPU seconds per GiB of `op` on packets, after a warm-up: the least of [`TRIES`].
fn per_gib(mib: usize, mut op: impl FnMut(u32, &mut [u8]) -> Result<()>) -> Result<f64> {
    let mut packet = vec![0x5au8; PACKET];
    for seq in 0..256 {
        op(seq, &mut packet)?;
    }
    let count = ((mib << 20) / PACKET).max(1);
    let mut best = f64::INFINITY;
    for _ in 0..TRIES {
        let start = thread_cpu();
        for seq in 0..count {
            // Sequence numbers wrap at 2^32 in SSH, as here.
            op(seq as u32, &mut packet)?;
        }
        best = best.min((thread_cpu() - start) * GIB / (count * PACKET) as f64);
    }
    Ok(best)
}

/// A sealing function and its opening function for one library and cipher. The opener takes
/// the sealed packet and its tag, as a server receives them.
struct Aead {
    seal: Box<Seal>,
    open: Box<Open>,
}

/// Seals a packet in place under a sequence number and returns its tag.
type Seal = dyn Fn(u32, &mut [u8]) -> Result<[u8; 16]>;
/// Opens a sealed packet in place, checking its tag.
type Open = dyn Fn(u32, &mut [u8], &[u8; 16]) -> Result<()>;

fn gcm_nonce(seq: u32) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[8..].copy_from_slice(&seq.to_be_bytes());
    n
}

/// aws-lc-rs and ring both offer OpenSSH's chacha20-poly1305 itself, under one API.
macro_rules! ring_api_chacha {
    ($name:ident, $lib:ident) => {
        fn $name() -> Aead {
            use $lib::aead::chacha20_poly1305_openssh::{OpeningKey, SealingKey};
            let (s, o) = (SealingKey::new(&[7; 64]), OpeningKey::new(&[7; 64]));
            Aead {
                seal: Box::new(move |seq, p| {
                    let mut tag = [0; 16];
                    s.seal_in_place(seq, p, &mut tag);
                    Ok(tag)
                }),
                open: Box::new(move |seq, p, tag| {
                    o.open_in_place(seq, p, tag)
                        .map(drop)
                        .map_err(|_| anyhow!("{} chacha20: tag mismatch", stringify!($lib)))
                }),
            }
        }
    };
}

ring_api_chacha!(aws_lc_chacha, aws_lc_rs);
ring_api_chacha!(ring_chacha, ring);

/// OpenSSH's construction (PROTOCOL.chacha20poly1305) from RustCrypto's ChaCha20 (the
/// original 64-bit nonce) and Poly1305: the MAC key is block 0 of the main key's stream, the
/// payload is encrypted from block 1, the length with the header key.
fn rustcrypto_chacha() -> Aead {
    use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
    use chacha20::ChaCha20Legacy;
    use poly1305::universal_hash::KeyInit;
    use poly1305::Poly1305;
    let (main, header) = ([7u8; 32], [7u8; 32]);
    let streams = move |seq: u32| {
        let mut nonce = [0u8; 8];
        nonce[4..].copy_from_slice(&seq.to_be_bytes());
        let mut body = ChaCha20Legacy::new(&main.into(), &nonce.into());
        let mut block0 = [0u8; 64];
        body.apply_keystream(&mut block0);
        body.seek(64u64);
        let mut mac_key = [0u8; 32];
        mac_key.copy_from_slice(&block0[..32]);
        let head = ChaCha20Legacy::new(&header.into(), &nonce.into());
        (head, body, Poly1305::new(&mac_key.into()))
    };
    Aead {
        seal: Box::new(move |seq, p| {
            let (mut head, mut body, mac) = streams(seq);
            head.apply_keystream(&mut p[..4]);
            body.apply_keystream(&mut p[4..]);
            Ok(mac.compute_unpadded(p).into())
        }),
        open: Box::new(move |seq, p, tag| {
            let (mut head, mut body, mac) = streams(seq);
            let want: [u8; 16] = mac.compute_unpadded(p).into();
            if !bool::from(subtle::ConstantTimeEq::ct_eq(&want[..], &tag[..])) {
                return Err(anyhow!("rustcrypto chacha20: tag mismatch"));
            }
            head.apply_keystream(&mut p[..4]);
            body.apply_keystream(&mut p[4..]);
            Ok(())
        }),
    }
}

/// RFC 5647 as OpenSSH does it: the packet length is the associated data, in the clear.
/// aws-lc-rs keeps ring's API, but for how `open` takes the tag: one body, two crates.
macro_rules! ring_api_gcm {
    ($name:ident, $lib:ident, |$o:ident, $nonce:ident, $aad:ident, $body:ident, $tag:ident| $open:expr) => {
        fn $name() -> Result<Aead> {
            use $lib::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
            let key = || -> Result<LessSafeKey> {
                let key = UnboundKey::new(&AES_256_GCM, &[7; 32]);
                Ok(LessSafeKey::new(
                    key.map_err(|_| anyhow!("{} key", stringify!($lib)))?,
                ))
            };
            let (s, $o) = (key()?, key()?);
            Ok(Aead {
                seal: Box::new(move |seq, p| {
                    let (len, body) = p.split_at_mut(4);
                    let tag = s
                        .seal_in_place_separate_tag(
                            Nonce::assume_unique_for_key(gcm_nonce(seq)),
                            Aad::from(&*len),
                            body,
                        )
                        .map_err(|_| anyhow!("{} gcm seal", stringify!($lib)))?;
                    let mut out = [0; 16];
                    out.copy_from_slice(tag.as_ref());
                    Ok(out)
                }),
                open: Box::new(move |seq, p, $tag| {
                    let (len, $body) = p.split_at_mut(4);
                    let $nonce = Nonce::assume_unique_for_key(gcm_nonce(seq));
                    let $aad = Aad::from(&*len);
                    $open
                        .map(drop)
                        .map_err(|_| anyhow!("{} gcm: tag mismatch", stringify!($lib)))
                }),
            })
        }
    };
}

ring_api_gcm!(aws_lc_gcm, aws_lc_rs, |o, nonce, aad, body, tag| o
    .open_in_place_separate_tag(nonce, aad, tag, body));
ring_api_gcm!(ring_gcm, ring, |o, nonce, aad, body, tag| o
    .open_in_place_separate_tag(
        nonce,
        aad,
        ring::aead::Tag::from(*tag),
        body,
        0..
    ));

fn rustcrypto_gcm() -> Aead {
    use aes_gcm::aead::{AeadInOut, KeyInit};
    use aes_gcm::{Aes256Gcm, Nonce, Tag};
    let cipher = Aes256Gcm::new(&[7u8; 32].into());
    let opener = cipher.clone();
    Aead {
        seal: Box::new(move |seq, p| {
            let (len, body) = p.split_at_mut(4);
            let tag = cipher
                .encrypt_inout_detached(&Nonce::from(gcm_nonce(seq)), len, body.into())
                .map_err(|_| anyhow!("rustcrypto gcm seal"))?;
            Ok(tag.into())
        }),
        open: Box::new(move |seq, p, tag| {
            let (len, body) = p.split_at_mut(4);
            opener
                .decrypt_inout_detached(
                    &Nonce::from(gcm_nonce(seq)),
                    len,
                    body.into(),
                    &Tag::from(*tag),
                )
                .map_err(|_| anyhow!("rustcrypto gcm: tag mismatch"))
        }),
    }
}

/// Seal's and open's CPU-s/GiB. Open starts each packet from a sealed copy; that copy's own
/// cost, measured alone, is taken out.
fn measure(mib: usize, aead: &Aead) -> Result<BTreeMap<&'static str, f64>> {
    let seal = per_gib(mib, |seq, p| {
        (aead.seal)(seq, p).map(|t| {
            black_box(t);
        })
    })?;
    let mut sealed = vec![0x5au8; PACKET];
    let tag = (aead.seal)(0, &mut sealed)?;
    let open_and_copy = per_gib(mib, |_, p| {
        p.copy_from_slice(&sealed);
        (aead.open)(0, p, &tag)
    })?;
    let copy = per_gib(mib, |_, p| {
        p.copy_from_slice(black_box(&sealed));
        Ok(())
    })?;
    Ok(BTreeMap::from([
        ("seal", seal),
        ("open", open_and_copy - copy),
    ]))
}

fn main() -> Result<()> {
    let mib: usize = match std::env::args().nth(1) {
        Some(a) => a.parse().context("MIB: a whole number of MiB")?,
        None => 256,
    };
    let mut out: BTreeMap<&str, BTreeMap<&str, BTreeMap<&str, f64>>> = BTreeMap::new();
    for (cipher, library, aead) in [
        (CHACHA, "aws-lc-rs", aws_lc_chacha()),
        (CHACHA, "ring", ring_chacha()),
        (CHACHA, "rustcrypto", rustcrypto_chacha()),
        (AES256, "aws-lc-rs", aws_lc_gcm()?),
        (AES256, "ring", ring_gcm()?),
        (AES256, "rustcrypto", rustcrypto_gcm()),
    ] {
        out.entry(cipher)
            .or_default()
            .insert(library, measure(mib, &aead)?);
    }
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}
