//! What the fuzz targets in `fuzz/` drive, gathered in one place so that the crate's public
//! surface grows by nothing else: the pure parsers of the admin API (the key and pattern
//! parsers, the PROXY protocol reader and the SFTP session are public already), and the
//! SFTP target's harness itself ([`sftp_replay`]), which the replay of its findings in
//! tests/ shares. Not an API: hidden from the docs.

pub mod sftp_replay;

pub use crate::admin::{parse_access_form, parse_range, AccessParams};
pub use crate::keys::{match_pattern_list, parse_authorized_keys, validate_pattern_list};
pub use crate::proxy_protocol::{
    parse as proxy_parse, signature as proxy_signature, step as proxy_step,
    Signature as ProxySignature, Step as ProxyStep,
};
