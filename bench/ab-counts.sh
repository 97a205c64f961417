#!/usr/bin/env bash
# ab-counts.sh: two sftpgate builds A and B side by side, alternating A B / B A, each transfer
# counted by `perf stat` on that server's process alone: its CPU-s/GiB (utime+stime) and wall
# s/GiB, and per 32 KiB moved: all system calls, futex, recvfrom, epoll_wait, pwritev, write
# (the runtime's eventfd wake-ups), context switches and wake-ups its threads made. The counts
# are what to read on a loaded machine; the CPU is only as good as the load allows. Every
# transferred file is checked by sha256. For trying a change to the data path (issue 17).
#
# usage (as root, for the tracepoints; needs perf, the OpenSSH sftp client, jq):
#   bench/ab-counts.sh A_BINARY B_BINARY
# Env: SIZE_MB (256)  RUNS (3)  OPS ("up": "up down")
#      CIPHERS ("chacha20-poly1305@openssh.com aes256-gcm@openssh.com")
#      ALLOCS (unset; 1: also malloc and calloc calls per 32 KiB, by uprobes on glibc)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
[ $# = 2 ] || { echo "usage: $0 A_BINARY B_BINARY" >&2; exit 2; }
A_BIN=$1 B_BIN=$2
SIZE_MB=${SIZE_MB:-256}
RUNS=${RUNS:-3}
OPS=${OPS:-up}
CIPHERS=${CIPHERS:-"chacha20-poly1305@openssh.com aes256-gcm@openssh.com"}
U=user_50001
die() { echo "ab-counts: $*" >&2; exit 1; }
B=$(mktemp -d /tmp/sftpgate-ab.XXXXXX)
chmod 755 "$B"
. "$repo/bench/lib.sh" # start_gate, provision, sftp_to, check, cpu_of
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$B"; }
trap cleanup EXIT
OPORT= # no OpenSSH side here
ssh-keygen -q -t ed25519 -N '' -f "$B/key"
KEY=$B/key
GATE=$A_BIN; start_gate "$B/A"; A_PID=$SPID A_PORT=$SPORT; PIDS+=("$SPID")
provision "$SADMIN" 50001 shared.dump
GATE=$B_BIN; start_gate "$B/B"; B_PID=$SPID B_PORT=$SPORT; PIDS+=("$SPID")
provision "$SADMIN" 50001 shared.dump
SRC=$B/src.bin
head -c $((SIZE_MB * 1024 * 1024)) /dev/urandom >"$SRC"
SRC_SHA=$(sha_of "$SRC")
# A first transfer through each, not counted: it starts the threads the counted ones reuse.
head -c 1048576 "$SRC" >"$B/warm"
for GPORT in $A_PORT $B_PORT; do sftp_to gate aes256-gcm@openssh.com $U "put $B/warm shared.dump"; done
EVENTS=raw_syscalls:sys_enter,context-switches,sched:sched_wakeup
for call in futex recvfrom epoll_wait pwritev write; do EVENTS+=,syscalls:sys_enter_$call; done
# ALLOCS=1: also glibc's malloc and calloc calls, by uprobes (set up here, removed at the end).
# Each probe hit traps into the kernel, so the CPU figures of such a run are not comparable.
if [ "${ALLOCS:-}" = 1 ]; then
  LIBC=$(ldd "$A_BIN" | awk '/libc\.so/ {print $3}')
  perf probe -q -d 'probe_libc:*' 2>/dev/null || true
  perf probe -q -x "$LIBC" --add malloc --add calloc || die "perf probe cannot probe $LIBC"
  trap 'perf probe -q -d "probe_libc:*" 2>/dev/null || true; cleanup' EXIT
  EVENTS+=,probe_libc:malloc,probe_libc:calloc
fi
UNITS=$((SIZE_MB * 32))
GIB=$(awk -v m="$SIZE_MB" 'BEGIN {print m / 1024}')
one() { # A|B cipher op
  local pid port file c0 c1 t0 t1 sp
  if [ "$1" = A ]; then pid=$A_PID port=$A_PORT; else pid=$B_PID port=$B_PORT; fi
  file=$B/$1/data/requests/50001/upload
  case $3 in
    up) : >"$file" ;;
    down) rm -f "$B/dl.bin"; cmp -s "$SRC" "$file" || cp "$SRC" "$file"; cat "$file" >/dev/null ;;
  esac
  sync
  # Attached with the events off, switched on once attached: the ack says when.
  rm -f "$B/ctl" "$B/ack"; mkfifo "$B/ctl" "$B/ack"
  perf stat -D -1 --control "fifo:$B/ctl,$B/ack" -x, -o "$B/stat.csv" -e "$EVENTS" -p "$pid" 2>/dev/null &
  sp=$!
  exec 8>"$B/ctl" 9<"$B/ack"
  echo enable >&8; read -r _ <&9
  GPORT=$port
  c0=$(cpu_of "$pid"); t0=$(now)
  case $3 in
    up) sftp_to gate "$2" $U "put $SRC shared.dump" ;;
    down) sftp_to gate "$2" $U "get shared.dump $B/dl.bin" ;;
  esac
  t1=$(now); c1=$(cpu_of "$pid")
  echo disable >&8; read -r _ <&9
  exec 8>&- 9<&-
  kill -INT "$sp"; wait "$sp" || true
  if [ "$3" = up ]; then check "$file"; else check "$B/dl.bin"; fi
  awk -F, -v w="$1" -v op="$3" -v c="${2%%@*}" -v u="$UNITS" \
    -v cpu="$(awk -v a="$c0" -v b="$c1" -v g="$GIB" 'BEGIN {print (b - a) / g}')" \
    -v s="$(awk -v a="$t0" -v b="$t1" -v g="$GIB" 'BEGIN {print (b - a) / g}')" '
    {v[$3] = $1}
    END {printf "%-2s %-5s %-18s %7.2f %7.2f %7.2f %6.2f %6.2f %6.2f %6.2f %6.2f %6.2f %6.2f", w, op, c, cpu, s,
      v["raw_syscalls:sys_enter"] / u, v["syscalls:sys_enter_futex"] / u, v["syscalls:sys_enter_recvfrom"] / u,
      v["syscalls:sys_enter_epoll_wait"] / u, v["syscalls:sys_enter_pwritev"] / u, v["syscalls:sys_enter_write"] / u,
      v["context-switches"] / u, v["sched:sched_wakeup"] / u
      if ("probe_libc:malloc" in v) printf " %6.2f %6.2f", v["probe_libc:malloc"] / u, v["probe_libc:calloc"] / u
      printf "\n"}' "$B/stat.csv"
}
echo "A: $A_BIN"
echo "B: $B_BIN"
echo "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg); $SIZE_MB MiB a transfer; counts per 32 KiB"
printf '%-2s %-5s %-18s %7s %7s %7s %6s %6s %6s %6s %6s %6s %6s' "" op cipher CPU-s/GiB s/GiB syscalls futex recv epoll pwritev write cs wakeups
if [ "${ALLOCS:-}" = 1 ]; then printf ' %6s %6s' malloc calloc; fi
printf '\n'
for run in $(seq "$RUNS"); do
  for op in $OPS; do
    for cipher in $CIPHERS; do
      if [ $((run % 2)) = 1 ]; then one A "$cipher" "$op"; one B "$cipher" "$op"
      else one B "$cipher" "$op"; one A "$cipher" "$op"; fi
    done
  done
done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
