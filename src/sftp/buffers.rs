//! Reply buffers, reused once the transport has let go of them, and given back to the
//! system when the session goes idle.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// Reply buffers, reused once the transport has let go of them. Each batch needs room for
/// a read of up to 255 KiB; allocating that afresh cost a download tens of thousands of
/// page faults per GiB (the allocator gave the memory back between batches).
pub(crate) struct Buffers {
    /// Buffers handed out, newest last; the transport drops its copy once sent.
    lent: VecDeque<Bytes>,
    capacity: usize,
}

/// Buffers tracked per session: those the transport may still hold (russh's queue and the
/// one it is sending) and one more.
const KEPT_BUFFERS: usize = 8;

impl Buffers {
    pub fn new(capacity: usize) -> Buffers {
        Buffers {
            lent: VecDeque::new(),
            capacity,
        }
    }

    /// An empty buffer of the configured capacity: a returned one if there is one.
    pub fn get(&mut self) -> BytesMut {
        if let Some(i) = self.lent.iter().position(Bytes::is_unique) {
            if let Some(Ok(mut buf)) = self.lent.remove(i).map(Bytes::try_into_mut) {
                if buf.capacity() >= self.capacity {
                    buf.clear();
                    return buf;
                }
            }
        }
        BytesMut::with_capacity(self.capacity)
    }

    /// Lets go of returned buffers but one, so that an idle session holds little memory.
    pub fn trim(&mut self) {
        let mut spare = false;
        self.lent.retain(|b| {
            let keep = !b.is_unique() || !spare;
            spare |= b.is_unique();
            keep
        });
    }

    /// Lets go of every buffer, once the session is idle: the pages of those returned are
    /// given back to the system first. Freeing alone would not do that: glibc serves
    /// blocks of this size from its arenas (see `tune_allocator` in main.rs) and keeps
    /// freed arena memory resident.
    pub fn release(&mut self) {
        for b in self.lent.drain(..) {
            if let Ok(mut buf) = b.try_into_mut() {
                discard_pages(&mut buf);
            }
        }
    }

    /// Freezes `buf` for the transport and keeps a handle to get it back later.
    pub fn lend(&mut self, buf: BytesMut) -> Bytes {
        let bytes = buf.freeze();
        if self.lent.len() >= KEPT_BUFFERS {
            self.lent.pop_front();
        }
        self.lent.push_back(bytes.clone());
        bytes
    }
}

/// Gives the whole pages inside `buf`'s allocation back to the system (they read as zeros
/// when next touched); its first and last bytes, where the allocator keeps its own
/// records beside the allocation, are not touched.
fn discard_pages(buf: &mut BytesMut) {
    const PAGE: usize = 4096;
    const MARGIN: usize = 64;
    let start = buf.as_mut_ptr() as usize;
    let from = (start + MARGIN).next_multiple_of(PAGE);
    let to = (start + buf.capacity()).saturating_sub(MARGIN) / PAGE * PAGE;
    if to > from {
        // SAFETY: [from, to) lies inside the allocation `buf` owns alone (it is unique, and
        // nothing reads its contents again: it is freed next). MADV_DONTNEED on private
        // anonymous memory only replaces those pages by zero-filled ones on next access,
        // which is what glibc's own malloc_trim does to free memory.
        unsafe {
            libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_DONTNEED);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_once_released() {
        let mut b = Buffers::new(1000);
        let mut first = b.get();
        first.extend_from_slice(b"reply");
        let ptr = first.as_ptr();
        let sent = b.lend(first);
        // Still held by the transport: a new buffer.
        let other = b.get();
        assert_ne!(other.as_ptr(), ptr);
        drop(sent);
        let again = b.get();
        assert_eq!((again.as_ptr(), again.len()), (ptr, 0));
        assert!(again.capacity() >= 1000);
    }

    #[test]
    fn trimming_keeps_one_returned_buffer_and_those_still_lent() {
        let mut b = Buffers::new(10);
        let lend = |b: &mut Buffers| {
            let buf = b.get();
            b.lend(buf)
        };
        let held = lend(&mut b);
        let (one, two) = (lend(&mut b), lend(&mut b));
        drop((one, two));
        b.trim();
        assert_eq!(b.lent.len(), 2);
        drop(held);
        b.trim();
        assert_eq!(b.lent.len(), 1);
    }
}
