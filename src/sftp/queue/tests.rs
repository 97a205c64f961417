//! Unit tests of the reply queue: a reply queued just before closing, READ runs as one
//! description, settling within the budget in order, and a full queue holding back pushes.

use super::*;

fn queue_and_file(len: usize) -> (Arc<ReplyQueue>, Arc<dyn Body>) {
    let mut f = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut f, &vec![7u8; len]).unwrap();
    let body: Arc<dyn Body> = Arc::new(super::super::local::LocalBody::new(f));
    (Arc::new(ReplyQueue::new(Arc::default())), body)
}

fn read(file: &Arc<dyn Body>, id: u32, offset: u64, len: u32) -> PendingRead {
    PendingRead {
        id,
        file: file.clone(),
        sent: Arc::default(),
        offset,
        len,
        count: 1,
    }
}

/// The ids of the replies in `items`, in order (each reply starts with its length,
/// type and id).
fn ids(q: &ReplyQueue, item: Item) -> Vec<u32> {
    let mut buf = BytesMut::new();
    match item {
        Item::Encoded(b) => buf = b,
        Item::Read(r) => q.encode_read(&mut buf, &r),
    }
    let mut out = Vec::new();
    let mut at = 0;
    while at + 9 <= buf.len() {
        let len = u32::from_be_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
        out.push(u32::from_be_bytes(buf[at + 5..at + 9].try_into().unwrap()));
        at += 4 + len;
    }
    out
}

/// A reply pushed and the queue closed just after the writer found it empty is still
/// popped: the writer must never take the queue for closed without the replies queued
/// before it was closed.
#[test]
fn a_reply_queued_just_before_closing_is_never_lost() {
    let q = Arc::new(ReplyQueue::new(Arc::default()));
    let other = q.clone();
    *q.after_empty_look.lock().unwrap() = Some(Box::new(move || {
        other.push(|e| e.status(1, StatusCode::Ok, ""));
        other.close();
    }));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    assert!(runtime.block_on(q.pop()).is_some(), "the reply was lost");
    assert!(runtime.block_on(q.pop()).is_none());
}

#[test]
fn a_prefetch_of_any_length_is_one_description() {
    let (q, f) = queue_and_file(1000);
    for i in 0..100_000u32 {
        q.push_read(read(&f, 5 + i, u64::from(i) * 32768, 32768));
    }
    assert_eq!(q.queued(), DESCRIPTION_COST);
    // Popped one read at a time, in order.
    let first = q.try_pop().unwrap();
    assert!(matches!(&first, Item::Read(r) if (r.id, r.offset, r.count) == (5, 0, 1)));
    let Some(Item::Read(second)) = q.try_pop() else {
        panic!("not a read")
    };
    assert_eq!((second.id, second.offset), (6, 32768));
}

#[test]
fn reads_out_of_order_are_separate_descriptions() {
    let (q, f) = queue_and_file(1000);
    q.push_read(read(&f, 1, 0, 100));
    q.push_read(read(&f, 2, 0, 100));
    q.push_read(read(&f, 4, 100, 100));
    assert_eq!(q.queued(), 3 * DESCRIPTION_COST);
}

#[test]
fn settling_stays_within_the_budget_and_keeps_the_order() {
    let len = crate::sftp::MAX_IO_LEN;
    let (q, f) = queue_and_file(len as usize);
    // 64 reads of 255 KiB at one offset: 16 MiB if all were taken from the file.
    for i in 0..64 {
        q.push_read(read(&f, i, 0, len));
    }
    q.push(|e| e.status(64, StatusCode::Ok, "Success"));
    let settler = std::thread::spawn({
        let q = q.clone();
        move || q.settle_reads()
    });
    let mut seen = Vec::new();
    let mut peak = 0;
    while seen.len() < 65 {
        peak = peak.max(q.queued());
        match q.try_pop() {
            Some(item) => seen.extend(ids(&q, item)),
            None => std::thread::yield_now(),
        }
    }
    settler.join().unwrap();
    assert_eq!(seen, (0..65).collect::<Vec<_>>());
    assert!(peak <= REPLY_BUDGET + len as usize + 64, "peak {peak}");
}

#[test]
fn a_full_queue_blocks_pushes_until_the_writer_goes() {
    let (q, _) = queue_and_file(0);
    let mut n = 0;
    while q.queued() < REPLY_BUDGET {
        q.push(|e| e.status(n, StatusCode::Ok, "Success"));
        n += 1;
    }
    let pusher = std::thread::spawn({
        let q = q.clone();
        move || q.push(|e| e.status(u32::MAX, StatusCode::Ok, "Success"))
    });
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(!pusher.is_finished(), "pushed past the budget");
    q.abandon();
    pusher.join().unwrap();
    assert_eq!(q.queued(), 0);
}

/// A READ the writer has taken is read before the request loop changes the file: the loop
/// settles the queued reads, and waits for the taken one (found when READs began to be
/// answered on the runtime's thread: a WRITE after a READ sometimes gave it the new data).
#[test]
fn a_change_waits_for_the_read_the_writer_has_taken() {
    let (q, file) = queue_and_file(100);
    q.push_read(read(&file, 1, 0, 10));
    let Some(Item::Read(taken)) = q.try_pop() else {
        panic!("the read was not queued");
    };
    let (settled_tx, settled) = std::sync::mpsc::channel();
    let loop_side = q.clone();
    let change = std::thread::spawn(move || {
        loop_side.settle_reads();
        settled_tx.send(()).unwrap();
    });
    // Nothing can signal that the loop is waiting; it must not be done within this time.
    let early = settled.recv_timeout(std::time::Duration::from_millis(100));
    assert!(early.is_err(), "the change went ahead of the taken read");
    let mut buf = BytesMut::new();
    q.encode_read(&mut buf, &taken);
    settled.recv().unwrap();
    change.join().unwrap();
    assert_eq!(q.lock().reading, 0);
}

/// A READ the writer puts back (it would have waited for the disk) is settled by the loop
/// like any queued one, and is the next reply the writer takes.
#[test]
fn a_read_put_back_is_settled_and_taken_next() {
    let (q, file) = queue_and_file(100);
    q.push_read(read(&file, 1, 0, 10));
    q.push(|e| e.status(2, StatusCode::Ok, ""));
    let Some(taken) = q.try_pop() else {
        panic!("the read was not queued");
    };
    q.put_back(taken);
    // Nothing is taken any more, so settling does not wait.
    let (reading, reads) = {
        let inner = q.lock();
        (inner.reading, inner.reads)
    };
    assert_eq!((reading, reads), (0, 1));
    q.settle_reads();
    let Some(item @ Item::Encoded(_)) = q.try_pop() else {
        panic!("the read put back was not settled first");
    };
    assert_eq!(ids(&q, item), vec![1]);
    let Some(item) = q.try_pop() else {
        panic!("the status was lost");
    };
    assert_eq!(ids(&q, item), vec![2]);
    assert_eq!(q.queued(), 0);
}
