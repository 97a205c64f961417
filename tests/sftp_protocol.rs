//! The SFTP request loop over an in-memory stream (no SSH, no network): every request is
//! answered under its own id, even when it cannot be decoded, and the stream stays in step.
//!
//! Over 400 lines on purpose: one test binary per subject, each test independent; a
//! second file would be a second binary linking the whole crate again, for no gain.

mod common;

use common::wire::{framed, id_of, req, s, status_of, Client};

async fn start(writable: bool) -> (Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (c, v) = Client::start("db.dump", &dir.path().join("upload"), writable).await;
    assert_eq!(v[0], 2);
    assert_eq!(u32::from_be_bytes(v[1..5].try_into().unwrap()), 3);
    let text = String::from_utf8_lossy(&v);
    for ext in [
        "limits@openssh.com",
        "fsync@openssh.com",
        "statvfs@openssh.com",
    ] {
        assert!(text.contains(ext), "{ext} not advertised");
    }
    (c, dir)
}

/// Opens db.dump with `pflags` and returns the handle.
async fn open(c: &mut Client, id: u32, pflags: u32) -> Vec<u8> {
    c.send(&req(
        3,
        id,
        &[&s(b"db.dump"), &pflags.to_be_bytes(), &0u32.to_be_bytes()],
    ))
    .await;
    c.recv().await[9..].to_vec()
}

#[tokio::test]
async fn undecodable_requests_keep_their_id() {
    let (mut c, _dir) = start(true).await;
    // OPEN cut short.
    c.send(&req(3, 77, &[&[0, 0, 0, 9, b'x']])).await;
    let r = c.recv().await;
    assert_eq!((id_of(&r), status_of(&r)), (77, 5));
    // Unknown type.
    c.send(&req(99, 78, &[])).await;
    let r = c.recv().await;
    assert_eq!((id_of(&r), status_of(&r)), (78, 8));
    // A path that is not UTF-8 is just a name that does not exist.
    c.send(&req(17, 79, &[&s(b"\xff\xfe/x")])).await;
    let r = c.recv().await;
    assert_eq!((id_of(&r), status_of(&r)), (79, 2));
}

#[tokio::test]
async fn oversized_packet_is_answered_and_skipped() {
    let (mut c, _dir) = start(true).await;
    let big = 300_000usize;
    let mut body = req(6, 90, &[&s(b"\0\0\0\x01"), &0u64.to_be_bytes()]);
    body.resize(big, 0xAB);
    c.send(&body).await;
    c.send(&req(17, 91, &[&s(b"/db.dump")])).await;
    let r = c.recv().await;
    assert_eq!((id_of(&r), status_of(&r)), (90, 5));
    let r = c.recv().await;
    assert_eq!((r[0], id_of(&r)), (105, 91), "the stream lost its step");
}

#[tokio::test]
async fn limits_and_clamped_reads() {
    let (mut c, dir) = start(true).await;
    c.send(&req(200, 1, &[&s(b"limits@openssh.com")])).await;
    let r = c.recv().await;
    assert_eq!((r[0], id_of(&r), r.len()), (201, 1, 5 + 32));
    let vals: Vec<u64> = r[5..]
        .chunks(8)
        .map(|b| u64::from_be_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(vals, [262144, 261120, 261120, 64]);

    // Open for write+read, write 600 000 bytes in pipelined chunks, read 1 MiB back.
    c.send(&req(
        3,
        2,
        &[&s(b"db.dump"), &0x1Bu32.to_be_bytes(), &0u32.to_be_bytes()],
    ))
    .await;
    let r = c.recv().await;
    assert_eq!(r[0], 102);
    let handle = r[9..].to_vec();
    let data: Vec<u8> = (0..600_000u32).map(|i| (i * 7 % 251) as u8).collect();
    for (n, chunk) in data.chunks(200_000).enumerate() {
        let off = (n * 200_000) as u64;
        c.send(&req(
            6,
            10 + n as u32,
            &[&s(&handle), &off.to_be_bytes(), &s(chunk)],
        ))
        .await;
    }
    for n in 0..3 {
        let r = c.recv().await;
        assert_eq!((id_of(&r), status_of(&r)), (10 + n, 0));
    }
    c.send(&req(
        5,
        20,
        &[
            &s(&handle),
            &0u64.to_be_bytes(),
            &(1u32 << 20).to_be_bytes(),
        ],
    ))
    .await;
    let r = c.recv().await;
    assert_eq!((r[0], id_of(&r)), (103, 20));
    let n = u32::from_be_bytes(r[5..9].try_into().unwrap());
    assert_eq!(n, 261_120);
    assert_eq!(&r[9..], &data[..261_120]);
    // Reading past the end is EOF.
    c.send(&req(
        5,
        21,
        &[&s(&handle), &600_000u64.to_be_bytes(), &10u32.to_be_bytes()],
    ))
    .await;
    let r = c.recv().await;
    assert_eq!((id_of(&r), status_of(&r)), (21, 1));
    assert_eq!(std::fs::read(dir.path().join("upload")).unwrap(), data);
}

#[tokio::test]
async fn read_only_file_refuses_every_write() {
    let (mut c, dir) = start(false).await;
    std::fs::write(dir.path().join("upload"), b"upgraded").unwrap();
    for (n, flags) in [0x02u32, 0x0A, 0x1A, 0x04, 0x10].into_iter().enumerate() {
        c.send(&req(
            3,
            n as u32,
            &[&s(b"db.dump"), &flags.to_be_bytes(), &0u32.to_be_bytes()],
        ))
        .await;
        let r = c.recv().await;
        assert_eq!(
            (id_of(&r), status_of(&r)),
            (n as u32, 3),
            "flags {flags:#x}"
        );
    }
    // SETSTAT of size is accepted and ignored: nothing changes.
    c.send(&req(
        9,
        9,
        &[&s(b"db.dump"), &1u32.to_be_bytes(), &0u64.to_be_bytes()],
    ))
    .await;
    let r = c.recv().await;
    assert_eq!((id_of(&r), status_of(&r)), (9, 0));
    assert_eq!(
        std::fs::read(dir.path().join("upload")).unwrap(),
        b"upgraded"
    );
}

#[tokio::test]
async fn packets_split_anywhere_are_reassembled() {
    let (mut c, dir) = start(true).await;
    let h = open(&mut c, 1, 0x1A).await;
    // Two WRITEs and a STAT sent as one stream in 3-byte pieces.
    let mut stream = Vec::new();
    for (id, off, data) in [(2u32, 0u64, &b"hello "[..]), (3, 6, &b"world"[..])] {
        stream.extend(framed(&req(6, id, &[&s(&h), &off.to_be_bytes(), &s(data)])));
    }
    stream.extend(framed(&req(17, 4, &[&s(b"db.dump")])));
    for piece in stream.chunks(3) {
        c.send_raw(piece).await;
        tokio::task::yield_now().await;
    }
    for id in [2, 3] {
        let r = c.recv().await;
        assert_eq!((id_of(&r), status_of(&r)), (id, 0));
    }
    let r = c.recv().await;
    assert_eq!((r[0], id_of(&r)), (105, 4));
    assert_eq!(
        std::fs::read(dir.path().join("upload")).unwrap(),
        b"hello world"
    );
}

#[tokio::test]
async fn large_writes_split_across_chunks_land_exactly() {
    use rand::RngCore;
    let (mut c, dir) = start(true).await;
    // WRITE|CREAT|TRUNC, then WRITE|APPEND on a second handle.
    let h = open(&mut c, 1, 0x1A).await;
    let ha = open(&mut c, 2, 0x06).await;
    let mut data = vec![0u8; 3 * 100_000];
    rand::thread_rng().fill_bytes(&mut data);
    let mut stream = Vec::new();
    let mut push = |body: Vec<u8>| stream.extend(framed(&body));
    // Two positioned writes (the second first), one append.
    let (a, b, tail) = (&data[..100_000], &data[100_000..200_000], &data[200_000..]);
    push(req(6, 10, &[&s(&h), &100_000u64.to_be_bytes(), &s(b)]));
    push(req(6, 11, &[&s(&h), &0u64.to_be_bytes(), &s(a)]));
    push(req(6, 12, &[&s(&ha), &0u64.to_be_bytes(), &s(tail)]));
    // A WRITE whose data claims more than its packet holds: refused, nothing written.
    let mut bad = req(
        6,
        13,
        &[&s(&h), &0u64.to_be_bytes(), &200_000u32.to_be_bytes()],
    );
    bad.resize(bad.len() + 150_000, 0xEE);
    push(bad);
    for piece in stream.chunks(7001) {
        c.send_raw(piece).await;
        tokio::task::yield_now().await;
    }
    for (id, status) in [(10, 0), (11, 0), (12, 0), (13, 5)] {
        let r = c.recv().await;
        assert_eq!((id_of(&r), status_of(&r)), (id, status));
    }
    assert!(std::fs::read(dir.path().join("upload")).unwrap() == data);
}

/// A session's input that the test hands over chunk by chunk, reporting when it ends.
struct Feed {
    chunks: tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>,
    ended: Option<tokio::sync::oneshot::Sender<()>>,
    /// What its hang-up probe says: the client is gone though input remains.
    hung_up: bool,
}

impl sftpgate::sftp::Inbound for Feed {
    async fn recv(&mut self) -> Option<bytes::Bytes> {
        let chunk = self.chunks.recv().await;
        if chunk.is_none() {
            self.ended.take().map(|e| e.send(()));
        }
        chunk
    }

    fn hangup_probe(&self) -> sftpgate::sftp::HangupProbe {
        let hung_up = self.hung_up;
        std::sync::Arc::new(move || hung_up)
    }
}

/// A session whose client sent 48 MiB of WRITEs (in 1 MiB chunks of four), all handed
/// over at once; its input ends when `feed` is dropped.
struct CutOff {
    feed: tokio::sync::mpsc::UnboundedSender<bytes::Bytes>,
    has_ended: tokio::sync::oneshot::Receiver<()>,
    written: u64,
    expected: [u8; 32],
}

async fn cut_off_session(
    file: sftpgate::sftp::SharedFile,
    activity: std::sync::Arc<sftpgate::sftp::Activity>,
    hung_up: bool,
) -> CutOff {
    use common::wire::{read_packet, HANDLE};
    use sftpgate::sftp::{serve, IoOutbound};
    use sha2::Digest;
    use tokio::io::AsyncReadExt;

    let (feed, chunks) = tokio::sync::mpsc::unbounded_channel();
    let (ended, has_ended) = tokio::sync::oneshot::channel();
    let (mut replies, out) = tokio::io::duplex(1 << 20);
    let input = Feed {
        chunks,
        ended: Some(ended),
        hung_up,
    };
    tokio::spawn(serve(
        file,
        activity,
        None,
        input,
        IoOutbound(out),
        std::future::pending(),
    ));
    let open = req(
        3,
        1,
        &[&s(b"db.dump"), &0x1Au32.to_be_bytes(), &0u32.to_be_bytes()],
    );
    let first = [framed(&[1, 0, 0, 0, 3]), framed(&open)].concat();
    feed.send(first.into()).unwrap();
    assert_eq!(read_packet(&mut replies).await[0], 2);
    let reply = read_packet(&mut replies).await;
    assert_eq!(reply[0], HANDLE);
    let handle = reply[9..].to_vec();
    // Later replies are not read by this client: drop them.
    tokio::spawn(async move {
        let mut sink = vec![0u8; 1 << 16];
        while replies.read(&mut sink).await.unwrap_or(0) > 0 {}
    });
    const WRITE: usize = 256 * 1024 - 64;
    let mut written = 0u64;
    let mut expected = sha2::Sha256::new();
    for chunk in 0..48u32 {
        let mut bytes = Vec::new();
        for n in 0..4u32 {
            let data = vec![(chunk * 4 + n) as u8; WRITE];
            expected.update(&data);
            let id = 10 + chunk * 4 + n;
            bytes.extend(framed(&req(
                6,
                id,
                &[&s(&handle), &written.to_be_bytes(), &s(&data)],
            )));
            written += WRITE as u64;
        }
        feed.send(bytes.into()).unwrap();
    }
    CutOff {
        feed,
        has_ended,
        written,
        expected: expected.finalize().into(),
    }
}

/// STATs the file from `client`: its size.
async fn stat_size(client: &mut Client) -> u64 {
    let r = client.call(common::wire::STAT, &[&s(b"db.dump")]).await;
    assert_eq!(r[0], 105, "not ATTRS: {r:?}");
    // flags (u32), then the size.
    u64::from_be_bytes(r[9..17].try_into().unwrap())
}

/// A client is cut off with 48 MiB of WRITEs received but not yet written, and a session
/// of the same request that was already open looks at the file: it must see every byte.
/// With `hung_up`, it looks before the old session has even read all its input (the
/// client's hang-up is known from the socket while its last requests wait to be read).
async fn cut_off_then_stat(hung_up: bool) {
    use common::wire::shared_file;
    use sftpgate::sftp::Activity;
    use sha2::Digest;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let file = shared_file("db.dump", &dir.path().join("upload"), true);
    let activity = Arc::new(Activity::default());
    // The session that looks is up first, so only a check on each request can make it wait.
    let (mut later, _) = Client::start_on(file.clone(), activity.clone()).await;
    let old = cut_off_session(file, activity, hung_up).await;
    let size = if hung_up {
        let (size, ()) = tokio::join!(stat_size(&mut later), async {
            // The old input ends only after the new session has asked.
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
            drop(old.feed);
        });
        size
    } else {
        drop(old.feed);
        old.has_ended.await.unwrap();
        stat_size(&mut later).await
    };
    assert_eq!(
        size, old.written,
        "the new session saw the file before the old one wrote what its client sent"
    );
    let on_disk = sha2::Sha256::digest(std::fs::read(dir.path().join("upload")).unwrap());
    assert_eq!(on_disk[..], old.expected[..]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_new_session_sees_what_an_ended_session_received() {
    cut_off_then_stat(false).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_new_session_waits_for_a_hung_up_client_s_unread_requests() {
    cut_off_then_stat(true).await;
}

/// The message of a STATUS reply.
fn message_of(r: &[u8]) -> String {
    let len = u32::from_be_bytes(r[9..13].try_into().unwrap()) as usize;
    String::from_utf8_lossy(&r[13..13 + len]).into_owned()
}

#[tokio::test]
async fn writes_far_past_the_end_are_refused() {
    let (mut c, dir) = start(true).await;
    let h = open(&mut c, 1, 0x02 | 0x08).await; // WRITE|CREAT
    let path = dir.path().join("upload");
    let write = |id: u32, offset: u64| req(6, id, &[&s(&h), &offset.to_be_bytes(), &s(b"x")]);
    // One byte at 1 TiB would have made a 1 TiB sparse file.
    c.send(&write(2, 1 << 40)).await;
    let r = c.recv().await;
    assert_eq!((id_of(&r), status_of(&r)), (2, 4));
    assert_eq!(
        message_of(&r),
        "write at offset 1099511627776 would leave a hole of more than 33554432 bytes past the end of the file"
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        0,
        "the file changed"
    );
    // So would a SETSTAT of the size.
    let size_attrs = [&1u32.to_be_bytes()[..], &(1u64 << 40).to_be_bytes()].concat();
    c.send(&req(10, 3, &[&s(&h), &size_attrs])).await;
    let r = c.recv().await;
    assert_eq!((id_of(&r), status_of(&r)), (3, 4));
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        0,
        "the file changed"
    );
    // Out of order within the gap, as clients with many writes in flight send them, is
    // accepted.
    c.send(&write(4, 1 << 20)).await;
    let r = c.recv().await;
    assert_eq!((id_of(&r), status_of(&r)), (4, 0));
    c.send(&write(5, 0)).await;
    let r = c.recv().await;
    assert_eq!((id_of(&r), status_of(&r)), (5, 0));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), (1 << 20) + 1);
}

/// A client that has ended its input and then reads its replies slowly but steadily gets
/// every one of them: replies are dropped only when one batch has waited 5 s for the
/// client, never because the session as a whole took longer than that. (Before, 5 s after
/// the input ended the writer was stopped whatever the client did: under load the session
/// fuzz target saw every reply of a session lost.)
#[tokio::test]
async fn a_slow_but_steady_reader_gets_every_reply_after_its_input_ends() {
    use common::wire::{read_packet, DATA, HANDLE, OPEN, READ};
    use sftpgate::sftp::{serve, IoInbound, IoOutbound};
    use sha2::{Digest, Sha256};
    use tokio::io::AsyncWriteExt;

    const READS: u64 = 5;
    const LEN: u32 = 261_120;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("upload");
    let content: Vec<u8> = (0..READS * u64::from(LEN))
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    std::fs::write(&path, &content).unwrap();
    // A small pipe: each READ's reply waits for the client to read it.
    let (mut client, server) = tokio::io::duplex(16 * 1024);
    let (r, w) = tokio::io::split(server);
    let session = tokio::spawn(serve(
        common::wire::shared_file("db.dump", &path, false),
        Default::default(),
        None,
        IoInbound(r),
        IoOutbound(w),
        std::future::pending(),
    ));
    client.write_all(&framed(&[1, 0, 0, 0, 3])).await.unwrap();
    assert_eq!(read_packet(&mut client).await[0], 2);
    let open = [&s(b"db.dump")[..], &1u32.to_be_bytes(), &0u32.to_be_bytes()].concat();
    client
        .write_all(&framed(&req(OPEN, 1, &[&open])))
        .await
        .unwrap();
    let reply = read_packet(&mut client).await;
    assert_eq!(reply[0], HANDLE);
    let handle = reply[5..].to_vec();
    for i in 0..READS {
        let at = (i * u64::from(LEN)).to_be_bytes();
        let body = req(READ, 10 + i as u32, &[&handle, &at, &LEN.to_be_bytes()]);
        client.write_all(&framed(&body)).await.unwrap();
    }
    client.shutdown().await.unwrap();
    // 1.5 s between replies: 6 s in all, longer than any one batch may wait.
    let mut got = Vec::new();
    for i in 0..READS {
        if i > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        }
        let reply = read_packet(&mut client).await;
        assert_eq!((reply[0], id_of(&reply)), (DATA, 10 + i as u32));
        got.extend_from_slice(&reply[9..]);
    }
    assert_eq!(Sha256::digest(&got), Sha256::digest(&content));
    session.await.unwrap();
}

#[tokio::test]
async fn reads_among_other_requests_keep_their_order_and_their_data() {
    let (mut c, _dir) = start(true).await;
    let h = open(&mut c, 1, 0x1B).await; // READ|WRITE|CREAT|TRUNC
    let r = c
        .call(6, &[&s(&h), &0u64.to_be_bytes(), &s(b"hello")])
        .await;
    assert_eq!(status_of(&r), 0);
    let read = |id: u32| {
        framed(&req(
            5,
            id,
            &[&s(&h), &0u64.to_be_bytes(), &5u32.to_be_bytes()],
        ))
    };
    // In one piece: a READ (answered where it arrives), a WRITE over what it read (which
    // the request thread handles, after the READ has its data), and a READ after it.
    let mut stream = read(10);
    stream.extend(framed(&req(
        6,
        11,
        &[&s(&h), &0u64.to_be_bytes(), &s(b"HELLO")],
    )));
    stream.extend(read(12));
    c.send_raw(&stream).await;
    // A READ in two pieces, then an empty packet.
    let split = read(13);
    c.send_raw(&split[..7]).await;
    tokio::task::yield_now().await;
    c.send_raw(&split[7..]).await;
    c.send_raw(&0u32.to_be_bytes()).await;
    let data = |r: &[u8]| (r[0], id_of(r), r[9..].to_vec());
    assert_eq!(data(&c.recv().await), (103, 10, b"hello".to_vec()));
    let r = c.recv().await;
    assert_eq!((id_of(&r), status_of(&r)), (11, 0));
    assert_eq!(data(&c.recv().await), (103, 12, b"HELLO".to_vec()));
    assert_eq!(data(&c.recv().await), (103, 13, b"HELLO".to_vec()));
    let r = c.recv().await;
    assert_eq!(
        (id_of(&r), status_of(&r)),
        (0, 5),
        "the empty packet is malformed"
    );
    // The stream is still in step.
    let r = c.call(17, &[&s(b"db.dump")]).await;
    assert_eq!(r[0], 105);
}
