//! [`Storage`] on the local filesystem: the file (and its `.filepart`) are plain files, a
//! WRITE is one `pwritev`, a READ one `pread` into the reply buffer (a `preadv2` that does
//! not wait, from the page cache, when the writer tries that first), a CLOSE an fsync.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};

use super::storage::{Body, FsStats, Meta, Name, OpenMode, Storage};

/// The file at `path`, and the `.filepart` at `partial` if the session may use one.
#[derive(Clone, Debug)]
pub struct LocalStorage {
    pub path: PathBuf,
    pub partial: Option<PathBuf>,
}

impl LocalStorage {
    fn path(&self, name: Name) -> io::Result<&Path> {
        match name {
            Name::File => Ok(&self.path),
            Name::Partial => self
                .partial
                .as_deref()
                .ok_or_else(|| io::Error::from(io::ErrorKind::PermissionDenied)),
        }
    }
}

fn meta_of(m: &std::fs::Metadata) -> Meta {
    let at = |secs: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
    Meta {
        size: m.len(),
        accessed: at(m.atime()),
        modified: at(m.mtime()),
    }
}

/// Opens `path` for writing without truncating, creating it private (whatever the umask).
fn open_for_change(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .mode(0o600)
        .truncate(false)
        .open(path)
}

fn apply(
    file: &File,
    size: Option<u64>,
    times: Option<(SystemTime, SystemTime)>,
) -> io::Result<()> {
    if let Some(size) = size {
        file.set_len(size)?;
    }
    if let Some((accessed, modified)) = times {
        file.set_times(
            std::fs::FileTimes::new()
                .set_accessed(accessed)
                .set_modified(modified),
        )?;
    }
    Ok(())
}

impl Storage for LocalStorage {
    fn stat(&self, name: Name) -> io::Result<Option<Meta>> {
        match std::fs::metadata(self.path(name)?) {
            Ok(m) => Ok(Some(meta_of(&m))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn open(&self, name: Name, mode: OpenMode) -> io::Result<Arc<dyn Body>> {
        let path = self.path(name)?;
        if mode.create && !mode.write {
            // A read of a draft upload that nothing was written to yet: give it a body.
            open_for_change(path)?;
        }
        let mut opts = OpenOptions::new();
        // The dump is private whatever the umask.
        opts.read(mode.read).mode(0o600);
        if mode.write {
            opts.write(true)
                .create(true)
                .append(mode.append)
                .truncate(mode.truncate && !mode.append);
        }
        let file = opts.open(path)?;
        if mode.truncate && mode.append {
            // O_TRUNC and O_APPEND together are unspecified for open(2): truncate apart.
            file.set_len(0)?;
        }
        Ok(Arc::new(LocalBody {
            file,
            append: mode.append,
            nowait: AtomicBool::new(true),
        }))
    }

    fn remove(&self, name: Name) -> io::Result<()> {
        std::fs::remove_file(self.path(name)?)
    }

    fn rename_partial(&self) -> io::Result<()> {
        std::fs::rename(self.path(Name::Partial)?, &self.path)
    }

    fn set_attrs(
        &self,
        name: Name,
        size: Option<u64>,
        times: Option<(SystemTime, SystemTime)>,
    ) -> io::Result<()> {
        apply(&open_for_change(self.path(name)?)?, size, times)
    }

    fn statvfs(&self) -> io::Result<FsStats> {
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        let s = rustix::fs::statvfs(dir)?;
        Ok(FsStats {
            bsize: s.f_bsize,
            frsize: s.f_frsize,
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            favail: s.f_favail,
            fsid: s.f_fsid,
            namemax: s.f_namemax,
        })
    }
}

/// An open local file.
pub struct LocalBody {
    file: File,
    /// Opened O_APPEND: the kernel puts every write at the end.
    append: bool,
    /// Cleared once the file system has refused a `RWF_NOWAIT` read: not asked again.
    nowait: AtomicBool,
}

impl LocalBody {
    /// A body over an already open file (the reply queue's tests read through one).
    #[cfg(test)]
    pub fn new(file: File) -> LocalBody {
        LocalBody {
            file,
            append: false,
            nowait: AtomicBool::new(true),
        }
    }
}

impl Body for LocalBody {
    fn meta(&self) -> io::Result<Meta> {
        Ok(meta_of(&self.file.metadata()?))
    }

    /// The bytes are read straight into the buffer's spare capacity: a download would
    /// otherwise spend a few percent of its CPU zeroing memory that is overwritten at once.
    fn read_into(&self, buf: &mut BytesMut, offset: u64, len: usize) -> io::Result<()> {
        buf.reserve(len);
        let mut filled = 0;
        while filled < len {
            let spare = &mut buf.spare_capacity_mut()[..len - filled];
            match rustix::io::pread(&self.file, spare, offset + filled as u64) {
                Ok(([], _)) => break,
                Ok((read, _)) => {
                    let n = read.len();
                    // SAFETY: pread has initialized the first `n` bytes of the spare capacity.
                    unsafe { buf.set_len(buf.len() + n) };
                    filled += n;
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// `preadv2(RWF_NOWAIT)`, which reads only what the page cache holds: EAGAIN once it
    /// would have to wait for the disk. A short read is followed by another, which tells
    /// the end of the file (0) from data not cached (EAGAIN). Through libc: rustix's
    /// `preadv2` takes initialised slices, and the spare capacity is not.
    fn read_cached_into(&self, buf: &mut BytesMut, offset: u64, len: usize) -> bool {
        if !self.nowait.load(Ordering::Relaxed) {
            return false;
        }
        buf.reserve(len);
        let base = buf.len();
        while buf.len() - base < len {
            let filled = buf.len() - base;
            // An offset past what the call takes: `read_into` answers it (an error).
            let Ok(at) = i64::try_from(offset.saturating_add(filled as u64)) else {
                buf.truncate(base);
                return false;
            };
            let spare = &mut buf.spare_capacity_mut()[..len - filled];
            let iov = libc::iovec {
                iov_base: spare.as_mut_ptr().cast(),
                iov_len: spare.len(),
            };
            // SAFETY: the iovec is the buffer's own spare capacity, which the kernel writes
            // at most `iov_len` bytes of; `file` is open for as long as `self` is.
            let n = unsafe { libc::preadv2(self.file.as_raw_fd(), &iov, 1, at, libc::RWF_NOWAIT) };
            let Ok(n) = usize::try_from(n) else {
                let errno = io::Error::last_os_error().raw_os_error();
                if errno == Some(libc::EINTR) {
                    continue;
                }
                // A file system (or kernel) without RWF_NOWAIT reads; EAGAIN is data the
                // page cache lacks, any other error `read_into`'s to report.
                if matches!(errno, Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS)) {
                    self.nowait.store(false, Ordering::Relaxed);
                }
                buf.truncate(base);
                return false;
            };
            if n == 0 {
                break; // the end of the file
            }
            // SAFETY: preadv2 has initialised the first `n` bytes of the spare capacity.
            unsafe { buf.set_len(buf.len() + n) };
        }
        true
    }

    /// In one system call unless the kernel takes less.
    fn write(&self, offset: Option<u64>, data: &[Bytes]) -> io::Result<()> {
        let mut slices: Vec<IoSlice> = data.iter().map(|d| IoSlice::new(d)).collect();
        let mut left = &mut slices[..];
        IoSlice::advance_slices(&mut left, 0);
        let mut at = offset.unwrap_or(0);
        while !left.is_empty() {
            let written = match offset {
                // The file was opened O_APPEND: the kernel places it.
                None if self.append => (&self.file).write_vectored(left),
                None => {
                    at = self.file.metadata()?.len();
                    rustix::io::pwritev(&self.file, left, at).map_err(io::Error::from)
                }
                Some(_) => rustix::io::pwritev(&self.file, left, at).map_err(io::Error::from),
            };
            match written {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    at += n as u64;
                    IoSlice::advance_slices(&mut left, n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn set_attrs(
        &self,
        size: Option<u64>,
        times: Option<(SystemTime, SystemTime)>,
    ) -> io::Result<()> {
        apply(&self.file, size, times)
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    fn finish(&self) -> io::Result<u64> {
        self.file.sync_data()?;
        Ok(self.file.metadata()?.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new file on a disk's file system: TMPDIR, unless it is a tmpfs (as on Fedora and
    /// Arch), which answers RWF_NOWAIT reads with EOPNOTSUPP and holds every page in memory;
    /// then beside the test binary, under the build's target directory.
    fn disk_file() -> tempfile::NamedTempFile {
        let tmp = std::env::temp_dir();
        let is_tmpfs = rustix::fs::statfs(&tmp).is_ok_and(|s| s.f_type == libc::TMPFS_MAGIC);
        let exe = std::env::current_exe().unwrap();
        let dir = if is_tmpfs {
            exe.parent().unwrap()
        } else {
            &tmp
        };
        tempfile::NamedTempFile::new_in(dir).unwrap()
    }

    /// A body over a file holding `data`, written through the page cache and synced.
    fn body_with(data: &[u8]) -> (tempfile::NamedTempFile, LocalBody) {
        let mut f = disk_file();
        f.write_all(data).unwrap();
        f.as_file().sync_all().unwrap();
        let file = File::open(f.path()).unwrap();
        (f, LocalBody::new(file))
    }

    #[test]
    fn a_cached_read_takes_what_the_page_cache_holds_and_stops_at_the_end() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (_f, body) = body_with(&data);
        let mut buf = BytesMut::from(&b"head"[..]);
        assert!(body.read_cached_into(&mut buf, 1000, 100_000));
        assert_eq!(&buf[..4], b"head");
        assert_eq!(&buf[4..], &data[1000..101_000]);
        // Across the end: what there is, then nothing, and both count as done.
        let mut buf = BytesMut::new();
        assert!(body.read_cached_into(&mut buf, 250_000, 100_000));
        assert_eq!(&buf[..], &data[250_000..]);
        let mut buf = BytesMut::new();
        assert!(body.read_cached_into(&mut buf, 400_000, 10));
        assert!(buf.is_empty());
        // Past what preadv2 takes: left to `read_into`, which refuses it.
        assert!(!body.read_cached_into(&mut buf, u64::MAX - 5, 10));
        assert!(buf.is_empty());
        assert!(body.read_into(&mut buf, u64::MAX - 5, 10).is_err());
        assert!(
            body.nowait.load(Ordering::Relaxed),
            "RWF_NOWAIT given up for no reason"
        );
    }

    /// A body over a file of `blocks` 4 KiB blocks written with O_DIRECT, which bypasses
    /// the page cache: none of its pages is cached until something reads it. (Dropping the
    /// pages of a file written the usual way is only advice, POSIX_FADV_DONTNEED: on CI the
    /// data was still cached after it.) Also returns the data.
    fn uncached_body(blocks: usize) -> (tempfile::NamedTempFile, LocalBody, Vec<u8>) {
        const BLOCK: usize = 4096; // O_DIRECT's alignment of buffer, offset and length
        let data: Vec<u8> = (0..blocks * BLOCK).map(|i| (i % 253) as u8).collect();
        let mut aligned = vec![0u8; data.len() + BLOCK];
        let skip = aligned.as_ptr().align_offset(BLOCK);
        let aligned = &mut aligned[skip..skip + data.len()];
        aligned.copy_from_slice(&data);
        let f = disk_file();
        let mut direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(f.path())
            .expect("this file system takes O_DIRECT writes");
        direct.write_all(aligned).unwrap();
        direct.sync_all().unwrap();
        let body = LocalBody::new(File::open(f.path()).unwrap());
        (f, body, data)
    }

    /// How many of the pages holding `file`'s bytes in `range` the page cache holds.
    fn cached_pages(file: &File, range: std::ops::Range<usize>) -> usize {
        // SAFETY: sysconf reads a constant of the system.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap();
        let len = range.end;
        // SAFETY: a fresh read-only mapping of the file's first `len` bytes, never read
        // through, unmapped below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED);
        let mut resident = vec![0u8; len.div_ceil(page)];
        // SAFETY: `resident` holds a byte for each page of the mapping.
        let listed = unsafe { libc::mincore(map, len, resident.as_mut_ptr()) };
        // SAFETY: exactly the mapping made above.
        unsafe { libc::munmap(map, len) };
        assert_eq!(listed, 0);
        resident[range.start / page..]
            .iter()
            .filter(|r| *r & 1 == 1)
            .count()
    }

    #[test]
    fn a_cached_read_of_data_the_page_cache_lacks_appends_nothing_and_a_read_gets_it() {
        let (_f, body, data) = uncached_body(256);
        let range = 500_000..565_536;
        let (at, len) = (range.start as u64, range.len());
        assert_eq!(cached_pages(&body.file, range.clone()), 0);
        let mut buf = BytesMut::from(&b"head"[..]);
        assert!(
            !body.read_cached_into(&mut buf, at, len),
            "a read of pages none of which is cached did not say EAGAIN"
        );
        assert_eq!(&buf[..], b"head");
        assert!(
            body.nowait.load(Ordering::Relaxed),
            "EAGAIN gave up RWF_NOWAIT"
        );
        body.read_into(&mut buf, at, len).unwrap();
        assert_eq!(&buf[4..], &data[range]);
    }
}
