#!/usr/bin/env python3
"""cost-table.py: the markdown of bench/cost-breakdown.sh, and its place in RESULTS.md.

  cost-table.py --rows ROWS.jsonl --floors FLOORS.json --size-mb N --freq HZ --runs N
                --header TEXT --command TEXT          prints the section
  cost-table.py --replace-section RESULTS.md < SECTION  puts SECTION in place of the file's
                section of the same "## " heading (or at its end), leaving the rest as it is

A row of ROWS (one JSON object a line): op, cipher, gate_perf (sftpgate's CPU-s/GiB in the
sampled transfer), gate (the same transfer without perf), sshd, classified (perf-classify.py's
output), gate_wall and sshd_wall (the client's seconds per GiB, medians). FLOORS: copy-floor.py's
output under "copies", openssl speed's kB/s per cipher under "ciphers", and
examples/cipher_cost.rs's CPU-s/GiB per cipher, library and direction under "libraries".
Each category's CPU-s/GiB is its share of the samples times gate_perf; the excess over the floor
is that minus the floor's part of the same kind (the cipher, the page-cache copy, the socket
copy), and all of it for the kinds the floor has none of.
"""
import argparse
import json
import sys

TITLE = "## Where each CPU-second per GiB goes (issue 17)"
GIB = 1 << 30
NAMES = {
    "cipher": "cipher and MAC",
    "ssh": "SSH framing and decoding (russh)",
    "sftp": "our SFTP parsing and queueing",
    "ksock": "kernel socket",
    "kfile": "kernel file I/O",
    "wake": "wake-ups and futexes",
    "alloc": "allocation",
    "rest": "the rest",
}
ORDER = list(NAMES)
# The library russh links for its ciphers in sftpgate's build (russh's default feature; the
# build's Cargo.toml says why), and the direction of the server's AEAD for each operation.
LINKED = "aws-lc-rs"
SERVER_AEAD = {"up": "open", "down": "seal"}


def row_name(r):
    return "%s %s" % ("put" if r["op"] == "up" else "get", r["cipher"].split("@")[0])


def library_cost(r, floors, library=LINKED):
    return floors["libraries"][r["cipher"]][library][SERVER_AEAD[r["op"]]]


def floors_of(r, floors, linked=False):
    """The floor's parts: with openssl's cipher (the issue's floor), or with the library
    sftpgate links (linked=True), the least a server built on it can spend."""
    c = floors["copies"]
    if linked:
        cipher = library_cost(r, floors)
    else:
        cipher = GIB / (floors["ciphers"][r["cipher"]]["kB_per_s"] * 1000)
    # One copy through the socket: the cheaper side's figure for either direction. On loopback
    # the sender also runs the receiver's TCP processing, in amounts that depend on where the
    # scheduler puts the two (a real NIC would not); sftpgate's own sends cost less than the
    # measured sender does.
    sock = min(c["send"], c["recv"])
    if r["op"] == "up":
        return {"cipher": cipher, "kfile": c["write"], "ksock": sock}
    return {"cipher": cipher, "kfile": c["read"], "ksock": sock}


def reason_share(cl, category, prefix):
    return sum(p for reason, p in cl["categories"][category]["reasons"] if reason.startswith(prefix))


def parse_stat(text):
    """perf stat -x, output -> {event: count}; events it could not count are left out."""
    counts = {}
    for line in (text or "").splitlines():
        f = line.split(",")
        if len(f) > 2 and f[0].strip().isdigit():
            counts[f[2].split(":")[-1].replace("sys_enter_", "")] = int(f[0])
    return counts


STAT_COLUMNS = [
    ("all system calls", ["sys_enter"]),
    ("futex", ["futex"]),
    ("epoll_wait", ["epoll_wait", "epoll_pwait"]),
    ("recvfrom", ["recvfrom"]),
    ("sendto", ["sendto"]),
    ("pwrite(v)", ["pwritev", "pwrite64"]),
    ("pread(v)", ["pread64", "preadv", "preadv2"]),
    ("write (eventfd)", ["write"]),
    ("fdatasync", ["fdatasync"]),
    ("context switches", ["context-switches"]),
    ("wake-ups made", ["sched_wakeup"]),
]


def stat_table(rows, args, w):
    counted = [(r, parse_stat(r.get("stat"))) for r in rows]
    if not any(c for _, c in counted):
        return
    requests = args.size_mb * 1024 * 1024 / 32768
    # Per 32 KiB moved, a fixed unit: OpenSSH's `sftp` sends up to 255 KiB a WRITE when
    # the server's limits@openssh.com allows it (ours does), so requests vary in size.
    w("Counted in the sampled transfer (perf stat on sftpgate's threads), per 32 KiB moved"
      " (%d units a transfer; OpenSSH's `sftp` WRITEs are up to 255 KiB each):" % requests)
    w("")
    w("| row | " + " | ".join(name for name, _ in STAT_COLUMNS) + " |")
    w("|---|" + "---|" * len(STAT_COLUMNS))
    for r, c in counted:
        cells = []
        for _, events in STAT_COLUMNS:
            have = [c[e] for e in events if e in c]
            cells.append("%.2f" % (sum(have) / requests) if have else "")
        w("| %s | %s |" % (row_name(r), " | ".join(cells)))
    w("")


def targets_table(rows, floors, w):
    """Each CPU target against what a server linking LINKED cannot avoid, and what is left."""
    w("What stands in the way of each CPU target. Unavoidable for a server built on russh: the"
      " cipher as the library it links (%s) does it, one page-cache copy and one socket copy,"
      " and on an upload the fdatasync that makes it durable before the close is answered"
      " (sftpgate's promise; sshd does not sync). The rest is the excess over those, by"
      " category, from the samples scaled to the CPU without perf (CPU-s/GiB):" % LINKED)
    w("")
    w("| row | sftpgate | target: the lesser of 0.45 x sshd and 2 x floor | unavoidable:"
      " cipher (%s) + page cache + socket (+ fdatasync) | left for the rest (target -"
      " unavoidable) | the rest, measured | its largest parts | the cipher in the server |"
      " the AEAD: %s / fastest library / openssl |" % (LINKED, LINKED))
    w("|---|---|---|---|---|---|---|---|---|")
    c = floors["copies"]
    for r in rows:
        issue_floor = floors_of(r, floors)
        target = min(0.45 * r["sshd"], 2 * sum(issue_floor.values()))
        f = floors_of(r, floors, linked=True)
        sync = c["writeback"] if r["op"] == "up" else 0.0
        unavoidable = sum(f.values()) + sync
        cl = r["classified"]
        spent = {k: cl["categories"][k]["share"] * r["gate"] for k in ORDER}
        excess = {k: spent[k] - f.get(k, 0.0) for k in ORDER}
        if r["op"] == "up":
            excess["kfile"] -= sync
        largest = sorted(excess.items(), key=lambda kv: -kv[1])[:3]
        fastest = min(floors["libraries"][r["cipher"]], key=lambda lib: library_cost(r, floors, lib))
        w("| %s | %.2f | %.2f | %.2f + %.2f + %.2f%s = %.2f | %.2f | %.2f | %s | %.2f | %.2f / %.2f"
          " (%s) / %.2f |" % (
              row_name(r), r["gate"], target, f["cipher"], f["kfile"], f["ksock"],
              " + %.2f" % sync if sync else "", unavoidable, target - unavoidable,
              r["gate"] - unavoidable,
              ", ".join("%s %.2f" % (NAMES[k], v) for k, v in largest),
              spent["cipher"], f["cipher"], library_cost(r, floors, fastest), fastest,
              issue_floor["cipher"]))
    w("")
    w("The AEADs as each library does them on 32 KiB SSH packets, CPU-s/GiB on one thread, the"
      " least of 3 (examples/cipher_cost.rs; the server opens on an upload and seals on a"
      " download): " + "; ".join(
          "%s: %s" % (cipher.split("@")[0], ", ".join(
              "%s seal %.2f open %.2f" % (lib, v["seal"], v["open"]) for lib, v in libs.items()))
          for cipher, libs in floors["libraries"].items()) + ".")
    w("")


def table(args):
    rows = [json.loads(l) for l in open(args.rows) if l.strip()]
    floors = json.load(open(args.floors))
    out = []
    w = out.append
    w(TITLE)
    w("")
    w(args.header)
    w("Command: `%s`. Figures are CPU seconds per GiB moved (2^30 bytes) of the server process,"
      " from its cgroup; %d MiB a transfer, the OpenSSH `sftp -b` client." % (
          args.command, args.size_mb))
    w("")
    w("| row | sftpgate CPU-s/GiB | sshd CPU-s/GiB | sftpgate / sshd (target <= 0.45) | floor s/GiB |"
      " sftpgate / floor (target <= 2) | throughput sftpgate / OpenSSH (target >= 1) |"
      " sftpgate under perf | samples (sampled / measured CPU) |")
    w("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        fl = sum(floors_of(r, floors).values())
        cl = r["classified"]
        sampled = cl["period_ns"] / 1e9 / (args.size_mb / 1024)
        w("| %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %d (%.0f%%) |" % (
            row_name(r), r["gate"], r["sshd"], r["gate"] / r["sshd"], fl, r["gate"] / fl,
            r["sshd_wall"] / r["gate_wall"], r["gate_perf"], cl["samples"],
            100 * sampled / r["gate_perf"]))
    w("")
    targets_table(rows, floors, w)
    w("Where sftpgate's CPU goes, in the sampled transfer: CPU-s/GiB (share of the samples).")
    w("")
    w("| row | " + " | ".join(NAMES[c] for c in ORDER) + " | total |")
    w("|---|" + "---|" * (len(ORDER) + 1))
    for r in rows:
        cl = r["classified"]
        cells = ["%.2f (%.0f%%)" % (cl["categories"][c]["share"] * r["gate_perf"],
                                    100 * cl["categories"][c]["share"]) for c in ORDER]
        w("| %s | %s | %.2f |" % (row_name(r), " | ".join(cells), r["gate_perf"]))
    w("")
    w("The floor beside each row (the cipher alone + one page-cache copy + one loopback socket"
      " copy, all measured in this run) and the excess over it, by category, CPU-s/GiB:")
    w("")
    w("| row | floor: cipher + page cache + socket | " +
      " | ".join("excess: " + NAMES[c] for c in ORDER) + " | excess total |")
    w("|---|---|" + "---|" * (len(ORDER) + 1))
    for r in rows:
        cl, f = r["classified"], floors_of(r, floors)
        spent = {c: cl["categories"][c]["share"] * r["gate_perf"] for c in ORDER}
        excess = {c: spent[c] - f.get(c, 0.0) for c in ORDER}
        w("| %s | %.2f + %.2f + %.2f = %.2f | %s | %.2f |" % (
            row_name(r), f["cipher"], f["kfile"], f["ksock"], sum(f.values()),
            " | ".join("%.2f" % excess[c] for c in ORDER), sum(excess.values())))
    w("")
    stat_table(rows, args, w)
    c = floors["copies"]
    w("Floors measured in this run: " + "; ".join(
        "%s %.2f GB/s (%.2f s/GiB, `openssl speed -bytes 32768 -evp %s`, CPU user time)" % (
            name.split("@")[0], v["kB_per_s"] / 1e6, GIB / (v["kB_per_s"] * 1000), v["openssl"])
        for name, v in floors["ciphers"].items()) +
        "; page cache read %.2f, write %.2f s/GiB; loopback socket send %.2f, receive %.2f s/GiB"
        " (bench/copy-floor.py, 256 KiB calls, the least of several; the floor takes the cheaper"
        " socket side for both directions, as the loopback sender also runs the receiver's TCP"
        " processing); an fdatasync of the written file %.2f s/GiB (not in the floor: sshd does"
        " not sync)." % (
            c["read"], c["write"], c["send"], c["recv"], c["writeback"]))
    w("")
    w("How good the sorting is, and the parts worth knowing inside the categories (shares of"
      " the row's samples):")
    w("")
    for r in rows:
        cl = r["classified"]
        wb = reason_share(cl, "kfile", "writeback at close")
        pre = reason_share(cl, "wake", "preemption") + reason_share(cl, "wake", "reschedule IPI")
        w("- %s: unclassified %.1f%%, unsymbolised %.1f%%; kernel file I/O includes the"
          " fdatasync at close %.1f%% (%.2f s/GiB); wake-ups include preemption and reschedule"
          " IPIs %.1f%% (they grow with the machine's load)." % (
              row_name(r), 100 * cl["unclassified_share"], 100 * cl["unsymbolised_share"],
              100 * wb, wb * r["gate_perf"], 100 * pre))
        for cat in ORDER:
            reasons = cl["categories"][cat]["reasons"]
            if reasons:
                w("  - %s: %s" % (NAMES[cat], ", ".join(
                    "%s %.1f%%" % (reason, 100 * p) for reason, p in reasons[:6])))
    w("")
    w("<details><summary>Top %d leaf symbols of each row (share of its samples, category)"
      "</summary>" % len(rows[0]["classified"]["top"]) if rows else "<details><summary></summary>")
    w("")
    for r in rows:
        w("%s:" % row_name(r))
        w("")
        for t in r["classified"]["top"]:
            w("- %.1f%% %s: `%s`" % (100 * t["share"], t["category"], t["symbol"].replace("`", "'")))
        w("")
    w("</details>")
    w("")
    w("Method: `perf record -e cpu-clock -F %d --call-graph dwarf,16384 -p <sftpgate>` (software"
      " clock: this VM has no hardware counters), switched on only for the transfer; every sample"
      " sorted by its whole stack by bench/perf-classify.py (rules at its top: the innermost frame"
      " with an owner decides, a memcpy is its caller's, a system call's kernel part goes to the"
      " kernel category of that call). Each row ran %d time(s) sftpgate under perf, sftpgate"
      " without it and sshd, one after the other; the samples and the CPU under perf are those of"
      " the sampled transfer of median CPU (%s), the other figures medians. The floors are the"
      " best of 3 (copies) and 2 (openssl) measurements. On a loaded machine the absolute figures"
      " are noisy and the shares matter." % (
          args.freq, args.runs, "; ".join("%s: %s" % (row_name(r), ", ".join(
              "%.2f" % float(v) for v in r.get("sampled", "").split())) for r in rows)))
    print("\n".join(out))


def replace_section(path):
    section = sys.stdin.read().rstrip("\n") + "\n"
    try:
        lines = open(path).read().split("\n")
    except FileNotFoundError:
        lines = []
    start = next((i for i, l in enumerate(lines) if l.strip() == TITLE), None)
    if start is None:
        text = "\n".join(lines).rstrip("\n")
        text = (text + "\n\n" if text else "") + section
    else:
        end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")),
                   len(lines))
        before = "\n".join(lines[:start]).rstrip("\n")
        after = "\n".join(lines[end:]).strip("\n")
        text = (before + "\n\n" if before else "") + section + ("\n" + after + "\n" if after else "")
    with open(path, "w") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--replace-section")
    ap.add_argument("--rows")
    ap.add_argument("--floors")
    ap.add_argument("--size-mb", type=float)
    ap.add_argument("--freq", type=int)
    ap.add_argument("--runs", type=int)
    ap.add_argument("--header", default="")
    ap.add_argument("--command", default="")
    args = ap.parse_args()
    if args.replace_section:
        replace_section(args.replace_section)
    else:
        table(args)


if __name__ == "__main__":
    main()
