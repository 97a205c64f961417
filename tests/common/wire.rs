//! A raw SFTP v3 client over an in-memory stream to `sftpgate::sftp::serve`, for protocol
//! tests that need exact packets (hostile names, malformed requests) and no network.

use std::path::Path;
use std::sync::Arc;

use sftpgate::sftp::{
    serve, Activity, IoInbound, IoOutbound, LocalStorage, SharedFile, WriteClosed,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

pub const OPEN: u8 = 3;
pub const CLOSE: u8 = 4;
pub const READ: u8 = 5;
pub const WRITE: u8 = 6;
pub const LSTAT: u8 = 7;
pub const SETSTAT: u8 = 9;
pub const OPENDIR: u8 = 11;
pub const READDIR: u8 = 12;
pub const REMOVE: u8 = 13;
pub const MKDIR: u8 = 14;
pub const RMDIR: u8 = 15;
pub const REALPATH: u8 = 16;
pub const STAT: u8 = 17;
pub const RENAME: u8 = 18;
pub const READLINK: u8 = 19;
pub const SYMLINK: u8 = 20;
pub const EXTENDED: u8 = 200;

pub const STATUS: u8 = 101;
pub const HANDLE: u8 = 102;
pub const DATA: u8 = 103;
pub const NAME: u8 = 104;
pub const ATTRS: u8 = 105;

pub struct Client {
    io: DuplexStream,
    next_id: u32,
}

/// A string field.
pub fn s(x: &[u8]) -> Vec<u8> {
    [&(x.len() as u32).to_be_bytes()[..], x].concat()
}

/// A request packet body: type, id, then fields.
pub fn req(kind: u8, id: u32, rest: &[&[u8]]) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend_from_slice(&id.to_be_bytes());
    for r in rest {
        v.extend_from_slice(r);
    }
    v
}

pub fn id_of(reply: &[u8]) -> u32 {
    u32::from_be_bytes(reply[1..5].try_into().unwrap())
}

/// The status code of a STATUS reply (panics on another type).
pub fn status_of(reply: &[u8]) -> u32 {
    assert_eq!(reply[0], STATUS, "not a STATUS: {reply:?}");
    u32::from_be_bytes(reply[5..9].try_into().unwrap())
}

pub fn shared_file(name: &str, path: &Path, writable: bool) -> SharedFile {
    SharedFile {
        name: name.into(),
        storage: std::sync::Arc::new(LocalStorage {
            path: path.to_path_buf(),
            partial: None,
        }),
        writable,
        max_size: None,
        partial: false,
        leases: None,
    }
}

/// A packet with its length prefix.
pub fn framed(body: &[u8]) -> Vec<u8> {
    [&(body.len() as u32).to_be_bytes()[..], body].concat()
}

/// Reads one packet's body from a server's output.
pub async fn read_packet(io: &mut DuplexStream) -> Vec<u8> {
    let mut body = vec![0; io.read_u32().await.unwrap() as usize];
    io.read_exact(&mut body).await.unwrap();
    body
}

impl Client {
    /// Serves `name` stored at `path` and completes the INIT/VERSION exchange.
    pub async fn start(name: &str, path: &Path, writable: bool) -> (Client, Vec<u8>) {
        Client::start_on(shared_file(name, path, writable), Arc::default()).await
    }

    /// Serves `file` as one more session of the request whose counters are `activity`.
    pub async fn start_on(file: SharedFile, activity: Arc<Activity>) -> (Client, Vec<u8>) {
        Client::start_watched(file, activity, None).await
    }

    /// [`start_on`](Self::start_on), calling `on_write_closed` at each close of a write
    /// handle.
    pub async fn start_watched(
        file: SharedFile,
        activity: Arc<Activity>,
        on_write_closed: Option<WriteClosed>,
    ) -> (Client, Vec<u8>) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let (r, w) = tokio::io::split(server);
        tokio::spawn(serve(
            file,
            activity,
            on_write_closed,
            IoInbound(r),
            IoOutbound(w),
            std::future::pending(),
        ));
        let mut c = Client {
            io: client,
            next_id: 1000,
        };
        c.send(&[1, 0, 0, 0, 3]).await;
        let version = c.recv().await;
        (c, version)
    }

    pub async fn send(&mut self, body: &[u8]) {
        self.io.write_all(&framed(body)).await.unwrap();
    }

    /// Writes bytes as they are, without a length prefix.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
        self.io.flush().await.unwrap();
    }

    pub async fn recv(&mut self) -> Vec<u8> {
        read_packet(&mut self.io).await
    }

    /// Sends one request with a fresh id and returns its reply, checking the id matches.
    pub async fn call(&mut self, kind: u8, fields: &[&[u8]]) -> Vec<u8> {
        self.next_id += 1;
        let id = self.next_id;
        self.send(&req(kind, id, fields)).await;
        let r = self.recv().await;
        assert_eq!(id_of(&r), id, "reply under the wrong id");
        r
    }
}
