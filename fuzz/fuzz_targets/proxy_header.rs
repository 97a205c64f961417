//! The PROXY protocol header reader's state machine (`proxy_protocol::step`), driven over
//! the input as the reader drives it over a socket, and the signature check that refuses
//! headers from sources not allowed to send one. Input: the bytes a connection starts with.
//! Checked: no panic; the reader never asks for a byte past the header or past the caps
//! (v1 107 bytes, v2 16 + 512); a header read whole parses to the same claim from the input
//! with anything after it, and one the reader accepts always has a present signature.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sftpgate::fuzzing::{proxy_parse, proxy_signature, proxy_step, ProxySignature, ProxyStep};

fuzz_target!(|data: &[u8]| {
    let mut have = 0usize;
    let claim = loop {
        match proxy_step(&data[..have]) {
            Err(_) => break None,
            Ok(ProxyStep::Done(claim)) => break Some(claim),
            Ok(ProxyStep::Read(n)) => {
                assert!(n > 0, "a step that reads nothing would spin");
                assert!(
                    have + n <= 16 + 512,
                    "asked for {} bytes in all",
                    have + n
                );
                if have + n > data.len() {
                    break None;
                }
                have += n;
            }
        }
    };
    let parsed = proxy_parse(data);
    match (claim, parsed) {
        (Some(claim), Ok((again, len))) => {
            assert_eq!(claim, again);
            assert_eq!(len, have);
            assert_eq!(proxy_signature(data), ProxySignature::Present);
            if data[0] == b'P' {
                assert!(len <= 107);
            }
        }
        (None, Err(_)) => {}
        (a, b) => panic!("the step loop gave {a:?}, parse gave {b:?}"),
    }
    // A stream that the signature check lets through never parses as a header.
    if proxy_signature(data) == ProxySignature::Absent {
        assert!(proxy_parse(data).is_err());
    }
});
