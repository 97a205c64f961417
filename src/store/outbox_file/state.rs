//! The outbox log's lines (what one JSON line of `events.log` says) and the state they
//! replay into: the events waiting per request, the sequence numbers and expiries given
//! out, and when each request is due.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use time::OffsetDateTime;

use super::io;
use crate::store::outbox::{Event, OutboxError};

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub(super) enum Line {
    Event {
        event: Event,
        /// Set for an access-expired event: the expiry it reports, marked emitted.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "time::serde::rfc3339::option"
        )]
        expiry: Option<OffsetDateTime>,
    },
    Delivered {
        request_id: u64,
        seq: u64,
    },
    Seq {
        request_id: u64,
        last_seq: u64,
    },
    Expiry {
        request_id: u64,
        #[serde(with = "time::serde::rfc3339")]
        expires_at: OffsetDateTime,
    },
}

#[derive(Default)]
pub(super) struct State {
    pub(super) file: Option<Arc<File>>,
    /// Bytes ever appended, across compactions: a position to sync up to.
    pub(super) appended: u64,
    pub(super) log_len: u64,
    /// The log's size after the last compaction (or at start).
    pub(super) compacted_len: u64,
    pub(super) pending: BTreeMap<u64, VecDeque<Event>>,
    pub(super) last_seq: HashMap<u64, u64>,
    pub(super) expiries: HashMap<u64, OffsetDateTime>,
    /// When each request with waiting events is due, and its failures in a row.
    pub(super) due: HashMap<u64, (Instant, u32)>,
    pub(super) claims: HashMap<u64, (u64, Instant)>,
    pub(super) next_token: u64,
    pub(super) depth: u64,
    pub(super) bytes: u64,
}

impl State {
    pub(super) fn apply(&mut self, line: Line) {
        match line {
            Line::Event { event, expiry } => {
                if let Some(t) = expiry {
                    self.expiries.insert(event.request_id, t);
                }
                let last = self.last_seq.entry(event.request_id).or_default();
                *last = (*last).max(event.seq);
                self.depth += 1;
                self.bytes += event.body.len() as u64;
                self.due
                    .entry(event.request_id)
                    .or_insert((Instant::now(), 0));
                self.pending
                    .entry(event.request_id)
                    .or_default()
                    .push_back(event);
            }
            Line::Delivered { request_id, seq } => {
                let Some(queue) = self.pending.get_mut(&request_id) else {
                    return;
                };
                if let Some(at) = queue.iter().position(|e| e.seq == seq) {
                    if let Some(e) = queue.remove(at) {
                        self.depth -= 1;
                        self.bytes -= e.body.len() as u64;
                    }
                }
                if queue.is_empty() {
                    self.pending.remove(&request_id);
                    self.due.remove(&request_id);
                }
            }
            Line::Seq {
                request_id,
                last_seq,
            } => {
                let last = self.last_seq.entry(request_id).or_default();
                *last = (*last).max(last_seq);
            }
            Line::Expiry {
                request_id,
                expires_at,
            } => {
                self.expiries.insert(request_id, expires_at);
            }
        }
    }

    /// Appends `line` to the log (not synced). A failed write is cut off again, so the
    /// log never holds half a line before a later one.
    pub(super) fn append(&mut self, line: &Line, path: &Path) -> Result<(), OutboxError> {
        let mut bytes = serde_json::to_vec(line).map_err(|e| OutboxError::Io(e.to_string()))?;
        bytes.push(b'\n');
        let file = self
            .file
            .clone()
            .ok_or_else(|| OutboxError::Io("the outbox log is not open".into()))?;
        if let Err(e) = (&*file).write_all(&bytes) {
            let _ = file.set_len(self.log_len);
            return Err(io("cannot append to", path)(e));
        }
        self.log_len += bytes.len() as u64;
        self.appended += bytes.len() as u64;
        Ok(())
    }

    /// What the log must hold to be replayed into this state.
    pub(super) fn live_lines(&self) -> Vec<Line> {
        let mut lines: Vec<Line> = self
            .last_seq
            .iter()
            .map(|(&request_id, &last_seq)| Line::Seq {
                request_id,
                last_seq,
            })
            .collect();
        lines.extend(
            self.expiries
                .iter()
                .map(|(&request_id, &expires_at)| Line::Expiry {
                    request_id,
                    expires_at,
                }),
        );
        lines.extend(self.pending.values().flatten().map(|e| Line::Event {
            event: e.clone(),
            expiry: None,
        }));
        lines
    }
}
