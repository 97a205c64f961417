#!/usr/bin/env python3
"""records.py: the HTTP side of bench/records.sh, standard library only.

  provision ADMIN TOKEN PUBKEY FROM TO THREADS
      PUT /v1/requests/{id} for every id in [FROM, TO] (filename f{id}.dump, the one public
      key in file PUBKEY), THREADS at once, each on its own kept-alive connection; prints
      the records per second. Any answer but 200/201 fails the run.
  gets ADMIN TOKEN N MAXID
      N GET /v1/requests/{id} of ids spread over [1, MAXID] on one kept-alive connection;
      prints each call's seconds, one a line.
"""
import http.client
import json
import sys
import threading
import time


def connection(admin):
    host, port = admin.removeprefix("http://").rsplit(":", 1)
    return http.client.HTTPConnection(host, int(port), timeout=120)


def provision(admin, token, pubkey, first, last, threads):
    key = open(pubkey).read().strip()
    ids = iter(range(first, last + 1))
    lock = threading.Lock()
    errors = []

    def worker():
        conn = connection(admin)
        while True:
            with lock:
                i = next(ids, None)
            if i is None or errors:
                return
            body = json.dumps({"filename": f"f{i}.dump", "key": "bench", "ssh_keys": key})
            conn.request("PUT", f"/v1/requests/{i}", body=body, headers={
                "Authorization": "Bearer " + token, "Content-Type": "application/json"})
            r = conn.getresponse()
            answer = r.read()
            if r.status not in (200, 201):
                errors.append(f"PUT {i}: {r.status} {answer[:200]!r}")

    t = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for p in pool:
        p.start()
    for p in pool:
        p.join()
    if errors:
        sys.exit(errors[0])
    n = last - first + 1
    print(f"{n / (time.perf_counter() - t):.0f}")


def gets(admin, token, n, maxid):
    conn = connection(admin)
    for k in range(n):
        i = 1 + (k * 7919) % maxid
        t = time.perf_counter()
        conn.request("GET", f"/v1/requests/{i}", headers={"Authorization": "Bearer " + token})
        r = conn.getresponse()
        body = r.read()
        took = time.perf_counter() - t
        if r.status != 200:
            sys.exit(f"GET {i}: {r.status} {body[:200]!r}")
        print(f"{took:.6f}")


def main():
    cmd = sys.argv[1]
    if cmd == "provision":
        admin, token, pubkey, first, last, threads = sys.argv[2:8]
        provision(admin, token, pubkey, int(first), int(last), int(threads))
    elif cmd == "gets":
        admin, token, n, maxid = sys.argv[2:6]
        gets(admin, token, int(n), int(maxid))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
