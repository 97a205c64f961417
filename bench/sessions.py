#!/usr/bin/env python3
"""sessions.py: the asyncssh clients of bench/memory.sh and bench/records.sh.

  hold HOST PORT KEY FIRST N [KIB]
                                opens N SSH connections from this one process, user_FIRST ..
                                user_FIRST+N-1 one each, each with an SFTP session open, prints
                                "ready N" once all are up, keeps them idle until a line (or
                                EOF) on stdin, then closes them and prints "closed". With KIB,
                                each session first writes KIB KiB to its file f{id}.dump and
                                reads them back: idle after a transfer.
  logins HOST PORT KEY USER N   N sequential logins of USER: SSH handshake, public-key
                                authentication and an SFTP session (its INIT/VERSION), then a
                                close; prints each login's seconds, one a line.

A login that fails fails the run: the figures are only worth something if every session
really was up.
"""
import asyncio
import sys
import time

import asyncssh

# At most this many handshakes at once: the gateway's per-source startup limit is raised
# for the run, but a thousand simultaneous key exchanges would only measure the scheduler.
PARALLEL_HANDSHAKES = 32


async def connect(host, port, key, user):
    conn = await asyncssh.connect(
        host,
        port,
        username=user,
        client_keys=[key],
        known_hosts=None,
        agent_path=None,
        # The same key exchange the OpenSSH-driven benches pin.
        kex_algs=["curve25519-sha256"],
        login_timeout=120,
    )
    sftp = await conn.start_sftp_client()
    return conn, sftp


async def transfer(sftp, name, kib):
    data = bytes(range(256)) * (kib * 4)
    async with sftp.open(name, "wb") as f:
        await f.write(data)
    async with sftp.open(name, "rb") as f:
        back = await f.read()
    if back != data:
        sys.exit(f"{name}: read back {len(back)} bytes, not what was written")


async def hold(host, port, key, first, n, kib):
    gate = asyncio.Semaphore(PARALLEL_HANDSHAKES)
    key = asyncssh.read_private_key(key)

    async def one(i):
        async with gate:
            conn, sftp = await connect(host, port, key, f"user_{first + i}")
            if kib:
                await transfer(sftp, f"f{first + i}.dump", kib)
            return conn, sftp

    sessions = await asyncio.gather(*(one(i) for i in range(n)))
    # Every session answers a request: it is authenticated and its SFTP loop is running.
    for _, sftp in sessions[:: max(1, n // 10)]:
        await sftp.realpath(".")
    print(f"ready {len(sessions)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for conn, sftp in sessions:
        sftp.exit()
        conn.close()
    await asyncio.gather(*(conn.wait_closed() for conn, _ in sessions))
    print("closed", flush=True)


async def logins(host, port, key, user, n):
    key = asyncssh.read_private_key(key)
    for _ in range(n):
        t = time.perf_counter()
        conn, sftp = await connect(host, port, key, user)
        took = time.perf_counter() - t
        sftp.exit()
        conn.close()
        await conn.wait_closed()
        print(f"{took:.6f}", flush=True)


def main():
    cmd, host, port, key = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    if cmd == "hold":
        kib = int(sys.argv[7]) if len(sys.argv) > 7 else 0
        asyncio.run(hold(host, port, key, int(sys.argv[5]), int(sys.argv[6]), kib))
    elif cmd == "logins":
        asyncio.run(logins(host, port, key, sys.argv[5], int(sys.argv[6])))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
