//! The SSH settings a node runs with and the russh configuration made from them: public
//! keys only, the configured algorithm set, and the window, packet and queue sizes that
//! bound what one connection holds in memory.

use std::borrow::Cow;
use std::time::Duration;

use russh::keys::ssh_key::PrivateKey;
use russh::{MethodKind, MethodSet, Preferred, SshId};

use super::{Algorithms, PenaltyPolicy, ProxyPolicy, SourcePolicy};

/// Largest SSH packet a client may send us: 64 KiB carries a 32 KiB SFTP write and its
/// header in one packet (the default 32 KiB split every write in two).
const MAX_PACKET: u32 = 64 * 1024;
/// The SSH window offered to clients; see `russh_config`.
pub(super) const WINDOW: u32 = 4 * 1024 * 1024;
/// Channel messages russh may queue for a session before it stops reading its socket.
/// With MAX_PACKET this bounds what a stalled session holds in memory (1 MiB).
const CHANNEL_QUEUE: usize = 16;

/// Messages (reply batches of up to 256 KiB, from the SFTP writer) that may wait for the
/// russh session loop; with the one it holds while the client's window is shut this bounds
/// the reply data a session buffers.
const SESSION_QUEUE: usize = 4;

pub struct SshSettings {
    /// One per host-key type, in the order of `--host-key-types`.
    pub host_keys: Vec<PrivateKey>,
    pub algorithms: Algorithms,
    pub max_connections: usize,
    pub sources: SourcePolicy,
    pub login_grace: Duration,
    pub idle_timeout: Duration,
    pub penalties: PenaltyPolicy,
    /// `Some`: the PROXY protocol is on, and these are the balancers.
    pub proxy: Option<ProxyPolicy>,
    /// This node's name, in every connection's span.
    pub node: String,
}

/// russh settings: public keys only, the configured algorithm set, no compression.
pub fn russh_config(s: &SshSettings) -> russh::server::Config {
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    russh::server::Config {
        server_id: SshId::Standard(Cow::Borrowed(concat!(
            "SSH-2.0-sftpgate_",
            env!("CARGO_PKG_VERSION")
        ))),
        methods,
        auth_rejection_time: Duration::from_millis(100),
        auth_rejection_time_initial: Some(Duration::ZERO),
        // russh signs each exchange with the first key that fits the negotiated host-key
        // algorithm (any RSA key for every rsa-sha2-* name), and offers only those it has.
        keys: s.host_keys.clone(),
        preferred: Preferred {
            kex: Cow::Owned(s.algorithms.kex_with_extensions()),
            key: Cow::Owned(s.algorithms.host_key.clone()),
            cipher: Cow::Owned(s.algorithms.cipher.clone()),
            mac: Cow::Owned(s.algorithms.mac.clone()),
            compression: Cow::Borrowed(&[russh::compression::NONE]),
            ..Preferred::DEFAULT
        },
        max_auth_attempts: 10,
        // Twice OpenSSH's window keeps a fast client from stalling on window adjustments.
        // Not more: with 16 MiB, OpenSSH clients under CPU contention buffered so much that
        // 100 concurrent uploads spent 10x the kernel time and ran 6x slower (measured).
        // russh replenishes the window on receipt, so it does not bound memory: the channel
        // queue does, at CHANNEL_QUEUE messages of at most MAX_PACKET bytes per session.
        window_size: WINDOW,
        maximum_packet_size: MAX_PACKET,
        channel_buffer_size: CHANNEL_QUEUE,
        event_buffer_size: SESSION_QUEUE,
        inactivity_timeout: Some(s.idle_timeout),
        nodelay: true,
        ..Default::default()
    }
}
