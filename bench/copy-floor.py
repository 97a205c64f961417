#!/usr/bin/env python3
"""copy-floor.py: the CPU cost of the copies no SSH server can avoid, in CPU seconds per GiB.

usage: copy-floor.py FILE DIR [RUNS]
  FILE  a file to read (it is read once untimed first, so the timed read comes from the page cache)
  DIR   where a file of the same size is written, synced and removed (same filesystem as the
        server's data)

Prints one JSON object, every figure in CPU seconds (user + system, of the process doing the
work) per GiB moved:
  read       one copy out of the page cache (read() of FILE, 256 KiB at a time)
  write      one copy into the page cache (write() of as many bytes into a new file in DIR)
  writeback  the fdatasync() of that file afterwards: the writeback a server pays in its own
             context when it makes an upload durable before it reports the close
  send/recv  one loopback TCP stream of as many bytes, 256 KiB send()/recv() calls, the sending
             and the receiving process each timed on its own (the loopback's receive processing
             runs in the sender's context, as it does for a server's socket)
256 KiB is about what an SFTP server moves per system call, and stays in the L2 cache.
Each figure is the least of RUNS (3) measurements, of 2 x RUNS for the socket, whose figures
move most (whether the loopback's receive processing lands in the sender's context depends on
where the scheduler puts the two): a floor is what the machine can do, and on a shared machine
one measurement can pay for another's page reclaim or a busy core.
"""
import json
import os
import resource
import socket
import sys

CHUNK = 256 * 1024
GIB = 1 << 30


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def read_floor(path):
    buf = bytearray(CHUNK)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):  # warm the page cache, untimed
            pass
        f.seek(0)
        moved, c0 = 0, cpu()
        while True:
            n = f.readinto(buf)
            if not n:
                break
            moved += n
        return (cpu() - c0) * GIB / moved, moved


def write_floor(directory, size):
    buf = os.urandom(CHUNK)
    path = os.path.join(directory, "copy-floor.tmp")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        moved, c0 = 0, cpu()
        while moved < size:
            moved += os.write(fd, buf[: min(CHUNK, size - moved)])
        c1 = cpu()
        os.fdatasync(fd)
        c2 = cpu()
    finally:
        os.close(fd)
        os.unlink(path)
    return (c1 - c0) * GIB / moved, (c2 - c1) * GIB / moved


def socket_floor(size):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the receiver
        os.close(rfd)
        conn, _ = srv.accept()
        buf = bytearray(CHUNK)
        got, c0 = 0, cpu()
        while got < size:
            n = conn.recv_into(buf)
            if not n:
                break
            got += n
        spent = cpu() - c0
        os.write(wfd, json.dumps([spent, got]).encode())
        os._exit(0)
    os.close(wfd)
    addr = srv.getsockname()
    srv.close()
    s = socket.create_connection(addr)
    buf = os.urandom(CHUNK)
    sent, c0 = 0, cpu()
    while sent < size:
        sent += s.send(buf[: min(CHUNK, size - sent)])
    spent = cpu() - c0
    s.close()
    with os.fdopen(rfd) as r:
        rspent, got = json.loads(r.read())
    os.waitpid(pid, 0)
    if got != size:
        sys.exit("copy-floor: the receiver got %d of %d bytes" % (got, size))
    return spent * GIB / sent, rspent * GIB / got


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__.split("\n\n")[1])
    path, directory = sys.argv[1], sys.argv[2]
    runs = int(sys.argv[3]) if len(sys.argv) == 4 else 3
    seen = {}
    for i in range(2 * runs):  # the socket's figures move most: twice as many of them
        if i < runs:
            read, size = read_floor(path)
            write, writeback = write_floor(directory, size)
            for k, v in (("read", read), ("write", write), ("writeback", writeback)):
                seen.setdefault(k, []).append(v)
        send, recv = socket_floor(size)
        seen.setdefault("send", []).append(send)
        seen.setdefault("recv", []).append(recv)
    out = {k: min(v) for k, v in seen.items()}
    out.update({"all": seen, "bytes": size})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
