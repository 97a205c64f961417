#!/usr/bin/env python3
"""perf-classify.py: sorts every perf sample of sftpgate into the cost categories of issue 17.

Input: the text of `perf script -F tid,period,ip,sym,dso --no-inline` over a `perf record
--call-graph dwarf` of the sftpgate process (stdin or a file). Frames of the sftpgate binary are
expanded into their inline chains (function and source file) with llvm-symbolizer, because most
of russh's and tokio's code is inlined into a few generic `<Pin<P> as Future>::poll` symbols;
the source file tells which crate a frame is (registry path `.../russh-0.65.1/src/...`, the
standard library `/rustc/<hash>/library/...`, or our own checkout's `src/`).

Output (stdout): JSON with, per category, the samples and the sum of their periods, the
sub-reasons inside each category, the top leaf symbols, and the unclassified/unsymbolised
shares. bench/cost-breakdown.sh turns it into CPU-s/GiB.

The rules, in the order they apply (a sample gets exactly one category):

1. Kernel leaf (the sample's innermost frames are in the kernel): the kernel part decides.
   Samples inside perf's own tracepoint handlers (perf_trace_*, perf_tp_*: the syscall counts
   taken beside the samples) are the rest, named so.
   a. Walking from the leaf, an interrupt or softirq boundary (handle_softirqs, do_softirq,
      irq_exit_rcu, sysvec_*, common_interrupt) reached first: the frames under it decide:
      network receive/transmit (net_rx_action, napi, tcp_, ip_, netif, skb) -> kernel socket;
      block I/O completion (blk_, bio_) -> kernel file I/O; a reschedule IPI -> wake-ups; an
      interrupt with no frames of its own (the sample fired as it re-enabled interrupts) ->
      the interrupted code's category by these same rules; otherwise -> the rest (kernel
      interrupts).
   b. A page fault (exc_page_fault, handle_mm_fault) reached first -> allocation (the first
      touch of memory the allocator handed out; a fault inside a syscall's copy is too).
   c. The system call, found walking from the syscall entry towards the leaf: its
      __x64_sys_NAME frame where the kernel keeps one, else the first frame of a known kind
      (this kernel inlines the wrappers: do_pwritev, __sys_sendto, do_futex, ...):
      send/recv/sendmsg/recvmsg/..., sock_*, tcp_*, inet_* -> kernel socket;
      pread/pwrite/preadv/pwritev/openat/statx/ftruncate, ext4_*, filemap_*, iomap_* -> kernel
      file I/O, fsync/fdatasync apart as "writeback at close" (sftpgate makes every upload
      durable before it reports the close; sshd does not); futex, epoll_*, eventfd,
      sched_yield, nanosleep -> wake-ups; mmap/munmap/madvise/brk/mremap/mprotect ->
      allocation. read/write/readv/writev/close and the generic vfs_* frames decide nothing:
      the frames below them tell a socket from a file from an eventfd.
   d. No system call: the scheduler on the way back to user space (irqentry_exit_to_user_mode,
      schedule) -> wake-ups (preemption); a new thread (ret_from_fork) -> wake-ups; a sample at
      the bare syscall entry/exit -> the category of the glibc wrapper that made the call
      (send/recv -> socket, pwrite/pread/fdatasync -> file, syscall()/epoll_wait -> wake-ups,
      mmap/munmap -> allocation); else the rest (kernel other).
2. User leaf: walk from the innermost frame (inline frames included) to the root; the first
   frame that belongs to a category decides ("the innermost owner pays"):
   - cipher and MAC: the crypto crates (aws-lc-sys, ring, chacha20, poly1305, aes, aes-gcm,
     ghash, polyval, ctr, cipher, universal-hash, aead) by source file, or a C/assembler symbol
     of aws-lc/ring/OpenSSL naming chacha, poly1305, aes, gcm, ghash, gfmul, clmul or aead
     (aws-lc's other helpers, OPENSSL_memcpy and the like, are their caller's);
   - allocation: glibc's malloc family (malloc, free, realloc, calloc, _int_*, tcache,
     unlink_chunk, sysmalloc, ...), __rust_alloc/__rust_dealloc/__rust_realloc and
     library/alloc's alloc.rs and raw_vec (the growth of a Vec);
   - wake-ups and futexes: tokio's runtime (scheduler, park, task harness, I/O and time
     drivers, blocking pool; not its thread-local context or coop budget, which channels use
     too), tokio's Notify and AtomicWaker, std's and parking_lot's
     mutex/condvar/park (not std's channels, like tokio's), glibc's pthread locks and its
     syscall() wrapper (std's futex calls), mio's epoll selector and waker, crossbeam;
   - SSH framing and decoding: the russh crates (russh, russh-util, russh-cryptovec) and
     ssh-key/ssh-encoding;
   - our SFTP parsing and queueing: sftpgate's own source (any .rs file outside the registry,
     vendored crates and the standard library, or a sftpgate:: symbol) and the russh-sftp crate;
   - the rest, named: tracing (logging), timekeeping (vdso clock_gettime, std time), other
     crates by name.
   Transparent (never decide, the caller pays): glibc's mem*/str* routines (a memcpy belongs
   to whoever copies), glibc's syscall stubs (send, recv, pwrite, ...), core, std's io and
   collections, bytes, futures, pin-project, mio's socket wrappers, tokio's io/net wrappers and
   its channels (tokio::sync::mpsc and the semaphore under it: a channel's cost is the queueing
   of the code that uses it), tokio's loom wrappers of std's atomics and mutexes.
   A leaf in glibc's memcpy/memmove or memset tags the reason "[memcpy]"/"[memset]", so the
   copies show inside each category. A stack that reaches its root without an owner:
   "unclassified"; a leaf without a symbol:
   "unsymbolised". Both are in the rest and printed as shares.
"""
import argparse
import collections
import json
import re
import shutil
import subprocess
import sys

CATEGORIES = ["cipher", "ssh", "sftp", "ksock", "kfile", "wake", "alloc", "rest"]

# ---- kernel rules ----
IRQ_BOUNDARY = re.compile(
    r"^(handle_softirqs|__do_softirq|do_softirq|irq_exit_rcu|__irq_exit_rcu|sysvec_\w+|"
    r"asm_sysvec_\w+|asm_common_interrupt|common_interrupt|run_ksoftirqd)"
)
NET = re.compile(r"^(net_rx_action|__napi_poll|napi_|process_backlog|tcp_|__tcp_|ip_|__ip_|"
                 r"__netif|netif_|skb_|__skb|inet_|sock_|sk_|loopback_|__dev_queue_xmit)")
PAGE_FAULT = re.compile(r"^(asm_exc_page_fault|exc_page_fault|handle_mm_fault|do_user_addr_fault)$")
SYSCALL = re.compile(r"^(?:__x64_sys_|__do_sys_|__se_sys_|__ia32_sys_)(\w+)$")
SOCK_CALLS = {"sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "shutdown",
              "accept", "accept4", "connect", "getsockopt", "setsockopt", "getpeername",
              "getsockname", "socket", "bind", "listen"}
FILE_CALLS = {"pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2", "ftruncate",
              "fallocate", "openat", "open", "newfstat", "newfstatat", "statx", "lseek",
              "copy_file_range", "sendfile64", "renameat2", "unlinkat", "mkdirat", "getdents64",
              "statfs", "fstatfs", "fadvise64"}
SYNC_CALLS = {"fsync", "fdatasync", "sync_file_range"}
WAKE_CALLS = {"futex", "epoll_wait", "epoll_pwait", "epoll_pwait2", "epoll_ctl", "sched_yield",
              "nanosleep", "clock_nanosleep", "eventfd2", "poll", "ppoll", "select"}
ALLOC_CALLS = {"mmap", "munmap", "madvise", "brk", "mremap", "mprotect"}
SCHED_RETURN = re.compile(r"^(irqentry_exit_to_user_mode|exit_to_user_mode_loop|"
                          r"exit_to_user_mode_prepare|schedule|__schedule|preempt_schedule\w*)$")


# Frames inside a system call, for kernels that inline the __x64_sys_NAME wrapper: scanned from
# the syscall entry towards the leaf, the first match names the group. Generic frames (vfs_write,
# do_iter_readv_writev, ...) match nothing and are passed over, so a write() to a socket and one
# to a file part at sock_write_iter or ext4_buffered_write_iter.
INNER = [
    ("kfile", "writeback at close (fsync/fdatasync)",
     re.compile(r"^(do_fsync|vfs_fsync_range|ext4_sync_file|file_write_and_wait_range)$")),
    ("ksock", None, re.compile(r"^(__sys_(sendto|recvfrom|sendmsg|recvmsg|sendmmsg|recvmmsg|"
                               r"accept4|connect|shutdown)|___?sys_(send|recv)msg|sock_|tcp_|"
                               r"inet_|unix_stream_|__sock_)")),
    ("wake", None, re.compile(r"^(do_futex|futex_|__futex|do_epoll_wait|ep_poll|do_epoll_ctl|"
                              r"eventfd_|do_sched_yield|hrtimer_nanosleep|do_nanosleep|"
                              r"do_sys_poll)")),
    ("alloc", None, re.compile(r"^(do_mmap|vm_mmap|__vm_munmap|do_madvise|do_brk|do_vmi_munmap|"
                               r"mprotect_fixup|do_mprotect|__do_sys_brk)")),
    ("kfile", None, re.compile(r"^(do_pwritev|do_preadv|ksys_pread64|ksys_pwrite64|ext4_|"
                               r"generic_perform_write|filemap_|iomap_|generic_file_|"
                               r"do_sys_openat2|do_filp_open|path_openat|vfs_statx|"
                               r"do_sys_ftruncate|vfs_fallocate|vfs_fstat)")),
]
# A libc wrapper whose system call the kernel frames do not name (a sample taken at the
# syscall entry or exit itself).
LIBC_CALL = [
    ("ksock", re.compile(r"^(__libc_|__GI___libc_)?(send|recv|sendto|recvfrom|sendmsg|recvmsg)\w*$")),
    ("kfile", re.compile(r"^(__libc_|__GI___libc_)?(pread|pwrite|preadv|pwritev|fdatasync|fsync|"
                         r"fstat|statx|openat|ftruncate|lseek)\w*$")),
    ("wake", re.compile(r"^(syscall|__GI_syscall|epoll_wait|__epoll_wait\w*|sched_yield)$")),
    ("alloc", re.compile(r"^(__)?(mmap|munmap|madvise|mprotect|brk|sbrk|mremap)\w*$")),
]


def classify_kernel(kframes, caller=""):
    """kframes: kernel symbols, leaf first; caller: the first user frame's symbol.
    Returns (category, reason), or None when the kernel frames leave it to the caller."""
    if any(n.startswith(("perf_trace_", "perf_syscall_", "perf_tp_")) for n in kframes):
        return "rest", "perf stat's own tracepoints"
    for i, name in enumerate(kframes):
        if IRQ_BOUNDARY.match(name):
            below = kframes[:i]
            if any(NET.match(n) for n in below):
                return "ksock", "softirq network"
            if any(n.startswith(("blk_", "bio_", "end_bio")) for n in below):
                return "kfile", "block I/O completion"
            if name == "asm_sysvec_reschedule_ipi" or "reschedule" in name:
                return "wake", "reschedule IPI"
            if len(below) <= 2 and i + 1 < len(kframes):
                # an interrupt with nothing of its own to show (the sample fired as it
                # re-enabled interrupts): the interrupted kernel code pays
                rest = [n for n in kframes[i + 1:] if not IRQ_BOUNDARY.match(n)]
                if rest:
                    return classify_kernel(rest, caller)
            if any(n.startswith("asm_sysvec_reschedule") for n in kframes[i:]):
                return "wake", "reschedule IPI"
            return "rest", "kernel interrupts"
        if PAGE_FAULT.match(name):
            return "alloc", "page faults"
    for name in reversed(kframes):  # from the syscall entry towards the leaf
        m = SYSCALL.match(name)
        if m:
            call = m.group(1)
            if call in SOCK_CALLS:
                return "ksock", call
            if call in SYNC_CALLS:
                return "kfile", "writeback at close (" + call + ")"
            if call in FILE_CALLS:
                return "kfile", call
            if call in WAKE_CALLS:
                return "wake", call
            if call in ALLOC_CALLS:
                return "alloc", call
            continue  # read, write, close...: the frames below tell
        for category, reason, rx in INNER:
            if rx.match(name):
                return category, reason or name
    if any(SCHED_RETURN.match(n) for n in kframes):
        return "wake", "preemption (scheduler on return to user)"
    if any(n.startswith(("ret_from_fork", "schedule_tail")) for n in kframes):
        return "wake", "thread start"
    for category, rx in LIBC_CALL:
        if rx.match(caller):
            return category, "syscall entry/exit (" + caller + ")"
    return "rest", "kernel other: " + kframes[0]


# ---- user rules ----
CRYPTO_CRATES = {"aws-lc-sys", "aws-lc-rs", "ring", "chacha20", "poly1305", "aes", "aes-gcm",
                 "ghash", "polyval", "ctr", "cipher", "universal-hash", "aead", "chacha20poly1305"}
CRYPTO_SYM = re.compile(r"(chacha|poly1305|aes|gcm|ghash|gfmul|clmul|aead)", re.I)
CRYPTO_LIB_SYM = re.compile(r"^(aws_lc_|ring_core_|GFp_|CRYPTO_|ChaCha20|Poly1305|aes|gcm_|"
                            r"ossl_|EVP_|_?aesni|_?vpaes|bsaes)", re.I)
SSH_CRATES = {"russh", "russh-util", "russh-cryptovec", "russh-keys", "ssh-key", "ssh-encoding",
              "ssh-cipher"}
SFTP_CRATES = {"russh-sftp"}
WAKE_CRATES = {"parking_lot", "parking_lot_core", "lock_api", "crossbeam-channel", "crossbeam-utils",
               "crossbeam-queue", "crossbeam-epoch", "event-listener"}
TRANSPARENT_CRATES = {"bytes", "futures", "futures-util", "futures-core", "futures-channel",
                      "pin-project", "pin-project-lite", "memchr", "smallvec", "hashbrown",
                      "either", "tokio-util"}
MALLOC = re.compile(
    r"^(__libc_|__GI___libc_)?(malloc|free|calloc|realloc|cfree|memalign|posix_memalign|"
    r"aligned_alloc|valloc|pvalloc)$|^_int_(malloc|free|realloc|memalign)|^malloc_|^_?tcache|"
    r"^unlink_chunk|^sysmalloc|^__malloc|^_mid_memalign|^arena_|^alloc_perturb|^systrim|"
    r"^__rust_(alloc|dealloc|realloc|alloc_zeroed)$|^__rd[lg]_|^__rg_|^mi_|^je_")
LIBC_WAKE = re.compile(r"^(syscall|__GI_syscall|pthread_(mutex|cond|rwlock|spin)\w*|"
                       r"___pthread_(mutex|cond)\w*|__pthread_(mutex|cond)\w*|__lll_\w+|"
                       r"futex\w*|__futex\w*|epoll_wait|__epoll_wait\w*|eventfd_write|"
                       r"sched_yield|__sched_yield)$")
LIBC_TRANSPARENT = re.compile(r"^(__)?(mem|str|wmem|bcmp|__memcpy|__memmove|__memset|__mem)\w*|"
                              r"^(__libc_|__GI___libc_)?(send|recv|sendto|recvfrom|sendmsg|"
                              r"recvmsg|read|write|pread|pwrite|pread64|pwrite64|readv|writev|"
                              r"preadv|pwritev|preadv2|pwritev2|close|__close|fdatasync|fsync|"
                              r"fstat|statx|lseek|lseek64|openat|open64|ftruncate)\w*$|"
                              r"^__GI___\w+$|^__pthread_disable_asynccancel|"
                              r"^__GI___pthread_(enable|disable)_asynccancel|^__errno_location")
TIME_SYM = re.compile(r"(clock_gettime|gettimeofday|__vdso_|^time$)")

# crates.io and git dependencies, vendored ones, and the standard library's own (/rust/deps/)
REGISTRY = re.compile(r"/(?:registry/src/[^/]+|git/checkouts/[^/]+/[^/]+|vendor|rust/deps)/"
                      r"([A-Za-z0-9_\-]+?)-\d+\.\d+\.\d+[^/]*/(.*)$")
RUSTLIB = re.compile(r"/rustc/[0-9a-f]+/library/([a-z_\-]+)/(?:[a-z_\-]+/)?src/(.*)$|"
                     r"/lib/rustlib/src/rust/library/([a-z_\-]+)/(?:[a-z_\-]+/)?src/(.*)$")


def frame_owner(name, file, dso):
    """The category a frame decides, "" for transparent, or None for no opinion (keep walking
    without it counting as transparent: same effect)."""
    if dso == "libc":
        if MALLOC.match(name):
            return "alloc", "malloc family"
        if LIBC_WAKE.match(name):
            return "wake", "libc " + name
        if LIBC_TRANSPARENT.match(name):
            return "", None
        if TIME_SYM.search(name):
            return "rest", "timekeeping"
        return "", None
    if dso == "vdso":
        return "rest", "timekeeping"
    if dso == "other":  # another shared object: libcrypto of a dynamically linked build, ld.so
        if CRYPTO_SYM.search(name):
            return "cipher", name
        return "rest", "library " + name
    # the sftpgate binary: by the source file first, then by the symbol
    m = REGISTRY.search(file or "")
    if m:
        crate, path = m.group(1), m.group(2)
        if crate in CRYPTO_CRATES:
            return "cipher", crate
        if crate in SSH_CRATES:
            return "ssh", crate + "/" + path.split("/")[-1]
        if crate in SFTP_CRATES:
            return "sftp", crate
        if crate in WAKE_CRATES:
            return "wake", crate
        if crate == "tokio":
            # the thread-local context (coop budget, current runtime) and loom's wrappers of
            # std's atomics and mutexes serve channels as much as the scheduler: the caller's
            if path.startswith(("src/runtime/context", "src/loom/", "src/task/coop/")):
                return "", None
            if path.startswith(("src/runtime/", "src/sync/notify", "src/sync/task/",
                                "src/park")):
                return "wake", "tokio " + "/".join(path.split("/")[1:3])
            return "", None  # io, net, channels, time wrappers: the caller's
        if crate == "mio":
            if path.endswith(("selector/epoll.rs", "waker.rs")) or "/waker/" in path:
                return "wake", "mio " + path.split("/")[-1]
            return "", None
        if crate in TRANSPARENT_CRATES:
            return "", None
        if crate.startswith("tracing"):
            return "rest", "tracing"
        return "rest", "crate " + crate
    m = RUSTLIB.search(file or "")
    if m:
        lib, path = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        if lib == "alloc" and (path.startswith(("alloc.rs", "raw_vec"))):
            return "alloc", "rust alloc"
        if lib == "std" and path.startswith("sys/alloc"):
            return "alloc", "rust alloc"
        if lib == "std" and path.startswith(("sync/mpmc", "sync/mpsc", "thread/local")):
            return "", None  # std's channels: the queueing of their user; thread-locals
        if lib == "std" and path.startswith(("sys/sync", "sync/", "thread/", "sys/pal/unix/futex",
                                              "sys/futex")):
            return "wake", "std " + path.split("/")[0] + "/" + path.split("/")[1]
        if lib == "std" and path.startswith(("time.rs", "sys/pal/unix/time", "sys/time")):
            return "rest", "timekeeping"
        return "", None  # core, collections, io, fmt: the caller's
    if file and file not in ("??",) and file.endswith(".rs") and "/src/" in file:
        return "sftp", "sftpgate " + file.split("/src/", 1)[1]
    # no usable source file (assembler, C without debug info): the symbol
    if CRYPTO_LIB_SYM.match(name) and CRYPTO_SYM.search(name):
        return "cipher", name
    if MALLOC.match(name):
        return "alloc", "rust alloc"
    if name.startswith("sftpgate::") or name.startswith("<sftpgate::"):
        return "sftp", "sftpgate"
    if name.startswith(("russh::", "<russh::", "russh_")):
        return "ssh", "russh"
    if name.startswith(("tokio::runtime", "<tokio::runtime")):
        return "wake", "tokio runtime"
    if file and (file.endswith(".c") or file.endswith(".S") or file.endswith(".h")):
        if ("aws-lc" in file or "/ring" in file) and CRYPTO_SYM.search(name + file):
            return "cipher", name
    return "", None  # aws-lc's helpers (OPENSSL_memcpy...): their caller's


class Symbolizer:
    """Inline chains of addresses in one ELF file, from one llvm-symbolizer run."""

    def __init__(self, binary, tool):
        self.binary = binary
        self.tool = tool
        self.cache = {}
        self.segments = []  # (file offset, end, vaddr - offset) of the executable LOAD segments
        out = subprocess.run(["readelf", "-lW", binary], capture_output=True, text=True,
                             check=True).stdout
        for line in out.splitlines():
            f = line.split()
            if f and f[0] == "LOAD":
                off, vaddr, size = int(f[1], 16), int(f[2], 16), int(f[4], 16)
                self.segments.append((off, off + size, vaddr - off))

    def vaddr(self, offset):
        # perf prints addresses in a PIE as file offsets; llvm-symbolizer wants addresses.
        for lo, hi, delta in self.segments:
            if lo <= offset < hi:
                return offset + delta
        return offset

    def resolve(self, addrs):
        todo = sorted({a for a in addrs if a not in self.cache})
        if not todo or not self.tool:
            return
        inp = "".join("0x%x\n" % self.vaddr(a) for a in todo)
        out = subprocess.run([self.tool, "--obj=" + self.binary, "--inlining", "--demangle",
                              "--functions=linkage"], input=inp, capture_output=True,
                             text=True, check=True).stdout
        blocks = out.split("\n\n")
        for a, block in zip(todo, blocks):
            lines = [l for l in block.strip("\n").split("\n") if l]
            chain = []
            for i in range(0, len(lines) - 1, 2):
                fn, loc = lines[i], lines[i + 1]
                file = loc.rsplit(":", 2)[0] if loc.count(":") >= 2 else loc
                chain.append((fn, file))
            self.cache[a] = chain


def parse(stream):
    """Yields (tid, period, [(addr, sym, dso)...] leaf first)."""
    head, frames = None, []
    for line in stream:
        line = line.rstrip("\n")
        if not line:
            if head is not None:
                yield head[0], head[1], frames
            head, frames = None, []
            continue
        if not line.startswith("\t"):  # a sample's header: tid and period, right-aligned
            f = line.split()
            head = (int(f[0]), int(f[1]))
            continue
        m = re.match(r"\s*([0-9a-f]+) (.*) \((.*)\)$", line)
        if m:
            frames.append((int(m.group(1), 16), m.group(2), m.group(3)))
    if head is not None:
        yield head[0], head[1], frames


def dso_kind(dso, binary):
    if dso == "[kernel.kallsyms]" or dso.startswith("[kernel"):
        return "kernel"
    if dso == binary:
        return "bin"
    if "/libc.so" in dso or "/libc-" in dso or "libpthread" in dso:
        return "libc"
    if dso == "[vdso]":
        return "vdso"
    return "other"


def strip_offset(sym):
    return re.sub(r"\+0x[0-9a-f]+$", "", sym)


def where(file):
    """crate/file.rs of a source path, for people to read."""
    m = REGISTRY.search(file or "")
    if m:
        return m.group(1) + "/" + m.group(2).rsplit("/", 1)[-1]
    m = RUSTLIB.search(file or "")
    if m:
        return (m.group(1) or m.group(3)) + "/" + (m.group(2) or m.group(4)).rsplit("/", 1)[-1]
    if file and "/src/" in file:
        return "sftpgate/" + file.split("/src/", 1)[1]
    return file or "?"


def short(name, width=90):
    # drop generic arguments, which are long and say little about where the time goes
    out, depth = [], 0
    for ch in name:
        if ch == "<" and out and out[-1] not in " (<":
            depth += 1
            if depth == 1:
                out.append("<..>")
            continue
        if ch == ">" and depth:
            depth -= 1
            continue
        if not depth:
            out.append(ch)
    s = "".join(out)
    return s if len(s) <= width else s[: width - 3] + "..."


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", required=True, help="the sftpgate binary the samples came from")
    ap.add_argument("--symbolizer", default=shutil.which("llvm-symbolizer"))
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("input", nargs="?", default="-")
    args = ap.parse_args()
    stream = sys.stdin if args.input == "-" else open(args.input)
    samples = list(parse(stream))
    binary = args.binary
    sym = Symbolizer(binary, args.symbolizer)
    sym.resolve(a - (1 if i else 0) for _, _, fr in samples for i, (a, s, d) in enumerate(fr)
                if dso_kind(d, binary) == "bin")

    cat_period = collections.Counter()
    cat_samples = collections.Counter()
    reasons = collections.defaultdict(collections.Counter)
    leaves = collections.defaultdict(collections.Counter)
    total = 0
    for tid, period, frames in samples:
        total += period
        category, reason, leaf = classify(frames, binary, sym)
        cat_period[category] += period
        cat_samples[category] += 1
        reasons[category][reason] += period
        leaves[leaf][category] += period
    top = sorted(leaves.items(), key=lambda kv: -sum(kv[1].values()))[: args.top]
    result = {
        "samples": len(samples),
        "period_ns": total,
        "categories": {c: {"samples": cat_samples[c], "period_ns": cat_period[c],
                           "share": cat_period[c] / total if total else 0.0,
                           "reasons": [[r, p / total] for r, p in reasons[c].most_common(8)]}
                       for c in CATEGORIES},
        "unclassified_share": sum(p for r, p in reasons["rest"].items()
                                  if r.startswith("unclassified")) / total if total else 0.0,
        "unsymbolised_share": reasons["rest"]["unsymbolised"] / total if total else 0.0,
        "top": [{"symbol": leaf, "share": sum(c.values()) / total,
                 "category": c.most_common(1)[0][0]} for leaf, c in top],
    }
    json.dump(result, sys.stdout, indent=1)
    print()


def copy_tag(frames):
    """" [memcpy]" or " [memset]" when the leaf is glibc's, so that copies show in the reasons."""
    name = strip_offset(frames[0][1]) if frames else ""
    if "/libc" in (frames[0][2] if frames else ""):
        if re.match(r"^_*(memcpy|memmove|__memmove|__memcpy)", name):
            return " [memcpy]"
        if re.match(r"^_*(memset|__memset)", name):
            return " [memset]"
    return ""


def classify(frames, binary, sym):
    """(category, reason, leaf symbol) of one sample; frames leaf first."""
    kframes = []
    for addr, s, dso in frames:
        if dso_kind(dso, binary) != "kernel":
            break
        kframes.append(strip_offset(s))
    if kframes:
        caller = strip_offset(frames[len(kframes)][1]) if len(frames) > len(kframes) else ""
        c, r = classify_kernel(kframes, caller)
        return c, r, "[k] " + kframes[0]
    leaf = None
    for i, (addr, s, dso) in enumerate(frames):
        kind = dso_kind(dso, binary)
        name = strip_offset(s)
        if kind == "bin":
            chain = sym.cache.get(addr - (1 if i else 0)) or [(name, "")]
            # llvm-symbolizer names the outermost frame by its linkage name; the symbol perf
            # gives is the same function, demangled
            chain = [(fn if j < len(chain) - 1 else name, f) for j, (fn, f) in enumerate(chain)]
        else:
            chain = [(name, "")]
        if leaf is None:
            leaf = short(name) + ("" if kind == "bin" else " [" + dso.rsplit("/", 1)[-1] + "]")
            generic = re.match(r"^<?(core|alloc|std)::", name)
            if len(chain) > 1 and generic and chain[0][1].endswith(".rs"):
                # a generic shell such as <Pin<P> as Future>::poll: the innermost inlined
                # function says whose code it is
                leaf += " (inlined: %s, %s)" % (short(chain[0][0], 40), where(chain[0][1]))
        for fn, file in chain:
            owner = frame_owner(fn, file, kind)
            if owner[0]:
                return owner[0], owner[1] + copy_tag(frames), leaf
    if frames and strip_offset(frames[0][1]) in ("[unknown]", "??"):
        return "rest", "unsymbolised", leaf or "[unknown]"
    return "rest", "unclassified (leaf " + (leaf or "?") + ")", leaf or "?"


if __name__ == "__main__":
    main()
