//! The node's local copy of an upload's tail: the bytes written that no committed part
//! holds yet. One sparse file per upload whose offsets are the object's: the committed
//! front is a hole (punched as parts commit), the tail is data. Beside it, the id of the
//! multipart upload it belongs to, so that a spool left by an earlier upload (or one this
//! node stopped writing while another node went on) is never mistaken for this one's.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::ops::Range;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use bytes::{Bytes, BytesMut};

use crate::store::private;

pub struct Spool {
    data: File,
}

const DATA: &str = "data";
const UPLOAD: &str = "upload-id";

impl Spool {
    /// The spool of `upload_id` in `dir` and the end of what it holds: what it held if it
    /// is that upload's and reaches `committed`, else empty at `committed` (a hole).
    pub fn open(dir: &Path, upload_id: &str, committed: u64) -> io::Result<(Spool, u64)> {
        private::create_dir(dir)?;
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join(DATA))?;
        let spool = Spool { data };
        let theirs = std::fs::read_to_string(dir.join(UPLOAD)).unwrap_or_default();
        let len = spool.data.metadata()?.len();
        if theirs == upload_id && len >= committed {
            return Ok((spool, len));
        }
        // The data is reset before the id is written: a crash between the two leaves an
        // old id on an empty spool, which the next open resets again.
        spool.data.set_len(0)?;
        spool.data.set_len(committed)?;
        spool.data.sync_all()?;
        let tmp = dir.join(format!("{UPLOAD}.tmp"));
        std::fs::write(&tmp, upload_id)?;
        File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, dir.join(UPLOAD))?;
        File::open(dir)?.sync_all()?;
        Ok((spool, committed))
    }

    /// Writes `data` at `at`, all of it.
    pub fn write(&self, mut at: u64, data: &[Bytes]) -> io::Result<()> {
        let mut slices: Vec<IoSlice> = data.iter().map(|d| IoSlice::new(d)).collect();
        let mut left = &mut slices[..];
        IoSlice::advance_slices(&mut left, 0);
        while !left.is_empty() {
            match rustix::io::pwritev(&self.data, left, at) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    at += n as u64;
                    IoSlice::advance_slices(&mut left, n);
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The bytes of `range`, which must be within what was written.
    pub fn read(&self, range: Range<u64>) -> io::Result<Bytes> {
        let len = (range.end - range.start) as usize;
        let mut buf = BytesMut::with_capacity(len);
        while buf.len() < len {
            let filled = buf.len();
            let spare = &mut buf.spare_capacity_mut()[..len - filled];
            match rustix::io::pread(&self.data, spare, range.start + filled as u64) {
                Ok(([], _)) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok((read, _)) => {
                    let n = read.len();
                    // SAFETY: pread has initialized the first `n` bytes of the spare capacity.
                    unsafe { buf.set_len(filled + n) };
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(buf.freeze())
    }

    /// Frees the disk under `range`, now held by a committed part. Best effort: a
    /// filesystem that cannot punch holes keeps the bytes until the spool is removed.
    pub fn release(&self, range: Range<u64>) {
        let flags = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
        let _ = rustix::fs::fallocate(&self.data, flags, range.start, range.end - range.start);
    }

    pub fn sync(&self) -> io::Result<()> {
        self.data.sync_data()
    }

    /// Removes the spool: its upload is complete or abandoned.
    pub fn remove(dir: &Path) {
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove an upload's spool")
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spool_is_kept_only_for_its_own_upload() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("7-upload");
        let (s, end) = Spool::open(&dir, "one", 10).unwrap();
        assert_eq!(end, 10);
        s.write(10, &[Bytes::from_static(b"abc"), Bytes::from_static(b"de")])
            .unwrap();
        assert_eq!(&s.read(11..15).unwrap()[..], b"bcde");
        s.release(0..10);
        drop(s);
        // The same upload again: what it held.
        let (s, end) = Spool::open(&dir, "one", 12).unwrap();
        assert_eq!(end, 15);
        assert_eq!(&s.read(10..15).unwrap()[..], b"abcde");
        drop(s);
        // Another node committed past what this spool holds: it starts over there.
        let (_, end) = Spool::open(&dir, "one", 20).unwrap();
        assert_eq!(end, 20);
        // Another upload: empty at its committed size.
        let (s, end) = Spool::open(&dir, "two", 4).unwrap();
        assert_eq!(end, 4);
        assert_eq!(s.read(0..4).unwrap(), Bytes::from_static(&[0; 4]));
        assert!(s.read(3..5).is_err());
        Spool::remove(&dir);
        assert!(!dir.exists());
    }
}
