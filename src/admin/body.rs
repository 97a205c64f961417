//! Streams a request body into a file, one received chunk at a time: a dump is never held
//! in memory (hyper hands over chunks of at most its read buffer, and the file takes one
//! at a time). Each chunk is first shown to the caller, which may stop the body or take
//! only part of a chunk (a size limit). A body that sends nothing for the listener's
//! `--http-body-timeout-secs` ends with an error here (see `listener.rs`), as does a
//! client that goes away.

use std::future::Future;
use std::time::Duration;

use axum::body::{BodyDataStream, Bytes};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::ApiError;
use crate::api::Reason;
use crate::storage::object::ObjectWriter;

/// Why a body was not written to its end.
#[derive(Debug)]
pub enum Stop {
    /// The client stopped sending (hung up, or sent nothing for the body timeout).
    Interrupted(String),
    /// The file could not be written.
    Io(std::io::Error),
    /// The caller refused the rest of the body.
    Refused(ApiError),
}

impl Stop {
    pub fn into_api(self) -> ApiError {
        match self {
            Stop::Interrupted(e) => ApiError::bad(
                Reason::BodyInterrupted,
                format!("the upload was interrupted: {e}"),
            ),
            Stop::Io(e) => ApiError::storage(e),
            Stop::Refused(e) => e,
        }
    }
}

/// What to write of the next chunk.
pub enum Admit {
    All,
    /// Its first bytes (a size limit falls inside it), then stop.
    Part(usize, Stop),
    /// Nothing; stop.
    Nothing(Stop),
}

/// Where a body is written, a chunk at a time.
pub trait Sink: Send {
    fn put(&mut self, chunk: Bytes) -> impl Future<Output = std::io::Result<()>> + Send;
}

impl Sink for tokio::fs::File {
    async fn put(&mut self, chunk: Bytes) -> std::io::Result<()> {
        self.write_all(&chunk).await
    }
}

/// An object on S3-compatible storage being written: each chunk goes to its spool on a
/// blocking thread (a full part is then sent in the background).
pub struct ObjectSink(pub Option<ObjectWriter>);

impl Sink for ObjectSink {
    async fn put(&mut self, data: Bytes) -> std::io::Result<()> {
        let writer = self
            .0
            .take()
            .ok_or_else(|| std::io::Error::other("the object's writer failed earlier"))?;
        let (writer, result) = tokio::task::spawn_blocking(move || {
            let r = writer.write(data);
            (writer, r)
        })
        .await
        .map_err(std::io::Error::other)?;
        self.0 = Some(writer);
        result
    }
}

/// Writes the body `stream` to `file` at its position. Before each chunk, `admit(bytes
/// written so far, chunk length)` says how much of it to write; `written(n)` is told of
/// each write that went through; once `until` is ready, nothing more is read (also while
/// the client sends nothing). Returns the bytes written, and why it stopped early if it
/// did.
pub async fn write_body(
    stream: &mut BodyDataStream,
    file: &mut impl Sink,
    mut admit: impl FnMut(u64, usize) -> Admit,
    mut written: impl FnMut(usize),
    until: impl Future<Output = Stop>,
) -> (u64, Result<(), Stop>) {
    let mut total: u64 = 0;
    let mut until = std::pin::pin!(until);
    loop {
        let chunk = tokio::select! {
            biased;
            stop = &mut until => return (total, Err(stop)),
            chunk = stream.next() => chunk,
        };
        let Some(chunk) = chunk else { break };
        let chunk: Bytes = match chunk {
            Ok(c) => c,
            Err(e) => return (total, Err(Stop::Interrupted(e.to_string()))),
        };
        let (take, then) = match admit(total, chunk.len()) {
            Admit::All => (chunk.len(), None),
            Admit::Part(n, stop) => (n.min(chunk.len()), Some(stop)),
            Admit::Nothing(stop) => return (total, Err(stop)),
        };
        if let Err(e) = file.put(chunk.slice(..take)).await {
            return (total, Err(Stop::Io(e)));
        }
        total += take as u64;
        written(take);
        if let Some(stop) = then {
            return (total, Err(stop));
        }
    }
    (total, Ok(()))
}

/// Reads and drops at most `max` bytes of what is left of a refused body, for at most
/// `limit`, so that a client still sending it reads the answer rather than a reset
/// connection (closing a socket with unread input resets it).
pub async fn drain(stream: &mut BodyDataStream, max: usize, limit: Duration) {
    let mut left = max;
    let _ = tokio::time::timeout(limit, async {
        while let Some(Ok(chunk)) = stream.next().await {
            if chunk.len() >= left {
                return;
            }
            left -= chunk.len();
        }
    })
    .await;
}
