//! The PROXY protocol (HAProxy's `send-proxy` and `send-proxy-v2`): the header a TCP load
//! balancer puts in front of a connection to say who the client really is. This module only
//! reads it: [`step`] is a pure state machine over the bytes received so far that says how
//! many more to read, so that [`read_header`] takes exactly the header off the socket and
//! leaves every byte after it (the client's SSH stream) for russh. Nothing here decides
//! whom to believe; `ssh/` does (a header is only read from `--proxy-from` sources).
//!
//! Bounds: the first read is 12 bytes (the v2 signature; every v1 header is at least 15),
//! then a v1 header is read a byte at a time up to its LF, at most 107 bytes as the
//! specification caps it; a v2 header is its 16 fixed bytes and the length they announce,
//! at most [`V2_MAX_PAYLOAD`] (addresses and TLVs), refused beyond that before anything
//! more is read.
//!
//! The header itself is decoded by the `ppp` crate once it is whole: it is the most used
//! and most recently maintained of the PROXY crates, decodes from a byte buffer, and is
//! strict where it matters (v1 separators, ports without leading zeros, v2 version and
//! command nibbles, address lengths against the announced length). Reading is done here,
//! not with a crate's stream wrapper, because those buffer past the header.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 signature, the first 12 bytes of every v2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// How every v1 header starts.
pub const V1_SIGNATURE: &[u8] = b"PROXY ";
/// The longest v1 header, CRLF included (the specification's figure).
pub const V1_MAX: usize = 107;
/// The most a v2 header may announce after its 16 fixed bytes. Addresses take at most 216
/// (AF_UNIX); the rest is room for TLVs such as HAProxy's unique-id, ALPN, authority and
/// SSL details or a cloud balancer's endpoint id. Larger headers are refused unread.
pub const V2_MAX_PAYLOAD: usize = 512;
/// The longest header [`read_header`] may buffer.
pub const MAX_HEADER: usize = 16 + V2_MAX_PAYLOAD;
/// The first read: enough to tell v1 from v2, and shorter than any v1 header.
const FIRST_READ: usize = V2_SIGNATURE.len();

/// Who the header says the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// A proxied TCP connection from this client (IPv4-mapped IPv6 given as IPv4).
    Client(SocketAddr),
    /// v2 `LOCAL`: the balancer's own connection (a health check): use the socket's peer.
    Local,
    /// v1 `UNKNOWN`, or v2 `PROXY` with an unspecified or AF_UNIX address: the balancer
    /// does not know; use the socket's peer.
    Unknown,
}

impl Claim {
    /// The client's address: the claimed one, else the socket's peer (the balancer).
    pub fn or(self, socket_peer: SocketAddr) -> SocketAddr {
        match self {
            Claim::Client(addr) => addr,
            Claim::Local | Claim::Unknown => socket_peer,
        }
    }
}

/// What to do next with the bytes received so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Read exactly this many more bytes (never past the end of the header).
    Read(usize),
    /// The header is whole: it is all of the bytes received.
    Done(Claim),
}

#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("no PROXY protocol header: the connection does not start with one")]
    Missing,
    #[error("PROXY protocol v1 header longer than {V1_MAX} bytes")]
    TooLong,
    #[error("PROXY protocol v2 header announces {0} bytes after its first 16, more than the {V2_MAX_PAYLOAD} accepted")]
    TooLarge(usize),
    #[error("invalid PROXY protocol header: {0}")]
    Invalid(String),
    #[error("PROXY protocol header for a datagram (UDP) connection")]
    Datagram,
    #[error("the connection ended inside the PROXY protocol header")]
    Truncated,
    #[error("no whole PROXY protocol header within {0:?}")]
    Timeout(Duration),
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[source] std::io::Error),
}

/// The next step for `head`, the bytes received so far (starting with none).
pub fn step(head: &[u8]) -> Result<Step, HeaderError> {
    if head.len() < FIRST_READ {
        // Only at the start (the reader reads FIRST_READ bytes at once), or a test or fuzz
        // input that is cut short: say what is missing, or refuse what can never be one.
        if !V2_SIGNATURE.starts_with(head) && !is_v1_prefix(head) {
            return Err(HeaderError::Missing);
        }
        return Ok(Step::Read(FIRST_READ - head.len()));
    }
    if head.starts_with(&V2_SIGNATURE) {
        return step_v2(head);
    }
    if head.starts_with(V1_SIGNATURE) {
        return step_v1(head);
    }
    Err(HeaderError::Missing)
}

fn is_v1_prefix(head: &[u8]) -> bool {
    let n = head.len().min(V1_SIGNATURE.len());
    head[..n] == V1_SIGNATURE[..n]
}

fn step_v1(head: &[u8]) -> Result<Step, HeaderError> {
    // The reader adds one byte at a time, so an LF can only be the last byte; a test input
    // may have it earlier, and then the header ends there.
    let Some(lf) = head.iter().position(|&b| b == b'\n') else {
        return if head.len() >= V1_MAX {
            Err(HeaderError::TooLong)
        } else {
            Ok(Step::Read(1))
        };
    };
    if lf + 1 != head.len() {
        return Err(HeaderError::Invalid(
            "bytes after the v1 header's LF".into(),
        ));
    }
    if head.len() > V1_MAX {
        return Err(HeaderError::TooLong);
    }
    let header =
        ppp::v1::Header::try_from(head).map_err(|e| HeaderError::Invalid(format!("v1: {e}")))?;
    // ppp parses up to the first CR; a CR elsewhere than before the LF leaves bytes over.
    if header.header.len() != head.len() {
        return Err(HeaderError::Invalid("v1 header not ended by CRLF".into()));
    }
    Ok(Step::Done(match header.addresses {
        ppp::v1::Addresses::Tcp4(a) => client(a.source_address, a.source_port),
        ppp::v1::Addresses::Tcp6(a) => client(a.source_address, a.source_port),
        ppp::v1::Addresses::Unknown => Claim::Unknown,
    }))
}

fn step_v2(head: &[u8]) -> Result<Step, HeaderError> {
    if head.len() < 16 {
        return Ok(Step::Read(16 - head.len()));
    }
    // Checked before the payload is read, so that a bogus header costs no more reads.
    if head[12] >> 4 != 2 {
        return Err(HeaderError::Invalid(format!(
            "v2: version {} in byte 13",
            head[12] >> 4
        )));
    }
    let payload = usize::from(u16::from_be_bytes([head[14], head[15]]));
    if payload > V2_MAX_PAYLOAD {
        return Err(HeaderError::TooLarge(payload));
    }
    let total = 16 + payload;
    if head.len() < total {
        return Ok(Step::Read(total - head.len()));
    }
    if head.len() > total {
        return Err(HeaderError::Invalid(
            "bytes after the v2 header's announced length".into(),
        ));
    }
    let header =
        ppp::v2::Header::try_from(head).map_err(|e| HeaderError::Invalid(format!("v2: {e}")))?;
    if header.len() != head.len() {
        return Err(HeaderError::Invalid("v2 header length mismatch".into()));
    }
    if header.command == ppp::v2::Command::Local {
        // The specification: a receiver must ignore a LOCAL header's addresses.
        return Ok(Step::Done(Claim::Local));
    }
    if header.protocol == ppp::v2::Protocol::Datagram {
        return Err(HeaderError::Datagram);
    }
    Ok(Step::Done(match header.addresses {
        ppp::v2::Addresses::IPv4(a) => client(a.source_address, a.source_port),
        ppp::v2::Addresses::IPv6(a) => client(a.source_address, a.source_port),
        ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => Claim::Unknown,
    }))
}

/// The claimed client. One seen through an IPv6 balancer socket (`::ffff:a.b.c.d`) is
/// that IPv4 client, for `from=` options, per-source limits and logs alike.
fn client(ip: impl Into<IpAddr>, port: u16) -> Claim {
    Claim::Client(SocketAddr::new(ip.into().to_canonical(), port))
}

/// Decodes a whole header at the start of `buf`, as [`read_header`] would read it off a
/// socket holding `buf`: the claim and the header's length. For tests and fuzzing.
pub fn parse(buf: &[u8]) -> Result<(Claim, usize), HeaderError> {
    let mut have = 0;
    loop {
        match step(&buf[..have])? {
            Step::Done(claim) => return Ok((claim, have)),
            Step::Read(n) => {
                if have + n > buf.len() {
                    return Err(HeaderError::Truncated);
                }
                have += n;
            }
        }
    }
}

/// Whether a stream that starts with `prefix` starts with a PROXY header, as far as
/// `prefix` tells. For refusing headers from sources that may not send one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signature {
    /// `prefix` holds a whole v1 or v2 signature.
    Present,
    /// `prefix` is the start of a signature: more bytes are needed to tell.
    Maybe,
    /// It is not a PROXY header.
    Absent,
}

pub fn signature(prefix: &[u8]) -> Signature {
    if prefix.starts_with(V1_SIGNATURE) || prefix.starts_with(&V2_SIGNATURE) {
        Signature::Present
    } else if is_v1_prefix(prefix) || V2_SIGNATURE.starts_with(prefix) {
        Signature::Maybe
    } else {
        Signature::Absent
    }
}

/// Reads exactly one header from `stream` within `limit`; the bytes after it stay unread.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> Result<Claim, HeaderError> {
    match tokio::time::timeout(limit, read_exactly_the_header(stream)).await {
        Ok(r) => r,
        Err(_) => Err(HeaderError::Timeout(limit)),
    }
}

async fn read_exactly_the_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Claim, HeaderError> {
    let mut buf = [0u8; MAX_HEADER];
    let mut have = 0;
    loop {
        match step(&buf[..have])? {
            Step::Done(claim) => return Ok(claim),
            Step::Read(n) => {
                // step never asks past MAX_HEADER; checked again so a slip cannot panic.
                let Some(dst) = buf.get_mut(have..have + n) else {
                    return Err(HeaderError::TooLong);
                };
                stream.read_exact(dst).await.map_err(|e| {
                    if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        HeaderError::Truncated
                    } else {
                        HeaderError::Io(e)
                    }
                })?;
                have += n;
            }
        }
    }
}

#[cfg(test)]
mod tests;
