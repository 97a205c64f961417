//! The operator's view of a record ([`RequestView`]): the record without its key, with its
//! files' sizes and the live sessions of every node.

use std::sync::atomic::Ordering;

use time::OffsetDateTime;

use super::AdminState;
use crate::api::{sample_command, KeyView, NodeSessions, RequestView};
use crate::keys::{fingerprint, parse_authorized_keys};
use crate::store::multipart::Object;
use crate::store::{Record, MAX_PEERS_LISTED};

pub(crate) async fn view(state: &AdminState, r: &Record) -> RequestView {
    let g = &state.gateway;
    let now = OffsetDateTime::now_utc();
    // Parsed here, not through the gateway's cache of parsed keys: that cache is for
    // logins, and filling it from every PUT and GET kept an entry per record ever shown
    // until a restart (with the activity map's entry, 201 MiB at 100,000 records
    // provisioned, 56 MiB restarted: bench/records.sh). Parsing a few keys takes µs.
    // Records hold only text validated when stored; anything unparsable shows no key.
    let ssh_keys = parse_authorized_keys(&r.ssh_keys)
        .unwrap_or_default()
        .iter()
        .map(|k| KeyView {
            fingerprint: fingerprint(&k.key),
            algorithm: k.key.algorithm().as_str().to_string(),
            comment: k.key.comment().as_str_lossy().to_string(),
        })
        .collect();
    // A size that cannot be read (the bucket unreachable) shows as none, as a missing file.
    let size = |object| async move { g.dump_size(r.id, object).await.ok().flatten() };
    let (filesize, upgraded_filesize) = tokio::join!(size(Object::Upload), size(Object::Upgraded));
    let writing = g
        .activity_if_any(r.id)
        .is_some_and(|a| a.writers.load(Ordering::Relaxed) > 0);
    let (sessions, peers, nodes) = live_sessions(state, r.id);
    RequestView {
        id: r.id,
        filename: r.filename.clone(),
        state: r.state,
        sftp_user: Record::user_name(r.id),
        shared_file: r.access_at(now).map(|a| r.visible_name(a)),
        hostname: state.public_host.clone(),
        sftp_port: state.public_port,
        sample_command: sample_command(&state.public_host, state.public_port, r.id),
        expires_at: r.expires_at,
        operator_expires_at: r.operator_expires_at,
        ssh_keys,
        filesize: filesize.unwrap_or(0),
        upgraded_filesize,
        last_write_at: g.last_write_at(r.id),
        writing,
        sessions,
        peers,
        nodes,
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

/// The live sessions of request `id` on every node: their number, their client addresses
/// (at most [`MAX_PEERS_LISTED`]) and both per node that has some (this node first).
/// Other nodes' sessions are as they last published them, a few seconds ago at most (a
/// shared store only).
fn live_sessions(state: &AdminState, id: u64) -> (usize, Vec<String>, Vec<NodeSessions>) {
    let g = &state.gateway;
    let here: Vec<String> = g.peers_of(id).iter().map(|p| p.to_string()).collect();
    let mut per_node = Vec::new();
    if !here.is_empty() {
        per_node.push(NodeSessions {
            node: state.node.clone(),
            sessions: here.len(),
            peers: here.into_iter().take(MAX_PEERS_LISTED).collect(),
        });
    }
    for (node, r) in g.sessions_elsewhere(id) {
        per_node.push(NodeSessions {
            node,
            sessions: r.sessions,
            peers: r.peers,
        });
    }
    let sessions = per_node.iter().map(|n| n.sessions).sum();
    let peers = per_node
        .iter()
        .flat_map(|n| n.peers.iter().cloned())
        .take(MAX_PEERS_LISTED)
        .collect();
    (sessions, peers, per_node)
}
