#!/usr/bin/env bash
# cost-breakdown.sh: where each CPU-second per GiB of sftpgate goes (issue 17). For each row
# (upload and download x cipher) it moves one file with OpenSSH's `sftp -b` against sftpgate
# while `perf record` samples only the sftpgate process, reads sftpgate's CPU from its cgroup in
# that same transfer, sorts every sample into the issue's categories (bench/perf-classify.py,
# rules at its top) and gives each category its share of that CPU. Beside each row: the floor
# (the cipher's `openssl speed`, one copy into or out of the page cache and the loopback socket
# copy, bench/copy-floor.py, all measured here), the excess over it by category, the same
# transfer without perf, and OpenSSH sshd's CPU and wall time for it (its cgroup) with the
# ratios. Beside openssl's cipher, the same AEADs in the libraries a Rust SSH server can link
# (examples/cipher_cost.rs): the floor sftpgate can reach with the cipher it links, and what of
# each target that leaves. Every transferred file is checked by sha256.
#
# usage (as root; Debian: installs linux-perf and llvm when perf or llvm-symbolizer is missing):
#   bench/cost-breakdown.sh
# Env: SIZE_MB (512)  RUNS (1: transfers per row of each kind: sftpgate under perf, sftpgate
#      without it, sshd; medians, and the samples of the sampled one of median CPU)
#      CIPHERS ("chacha20-poly1305@openssh.com aes256-gcm@openssh.com")  OPS ("up down")
#      PERF_FREQ (1999 samples per second)  SFTPGATE_BIN (a built binary instead of building)
#      CIPHER_MIB (256: MiB per measurement of examples/cipher_cost.rs, the least of 3 kept)
#      CIPHER_PROFILE (release: the cargo profile cipher_cost is built with; CI's smoke uses dev,
#               whose dependencies the tests built already, figures meaningless)
#      RESULTS (unset or "-": print only; a path: also write the table into that file's section
#               "Where each CPU-second per GiB goes (issue 17)", replacing only that section)
#      BASELINE (../shared/bench/openssh-baseline.sh)  KEEP (a directory: keep perf data there)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
SIZE_MB=${SIZE_MB:-512}
RUNS=${RUNS:-1}
CIPHERS=${CIPHERS-"chacha20-poly1305@openssh.com aes256-gcm@openssh.com"}
OPS=${OPS:-"up down"}
PERF_FREQ=${PERF_FREQ:-1999}
CIPHER_MIB=${CIPHER_MIB:-256}
CIPHER_PROFILE=${CIPHER_PROFILE:-release}
RESULTS=${RESULTS:--}
BASELINE=${BASELINE:-$repo/../shared/bench/openssh-baseline.sh}
KEEP=${KEEP:-}
USER_ID=50001
U=user_$USER_ID
COMMAND="SIZE_MB=$SIZE_MB RUNS=$RUNS CIPHERS=\"$CIPHERS\" OPS=\"$OPS\" PERF_FREQ=$PERF_FREQ bench/cost-breakdown.sh"
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)

die() { echo "cost-breakdown: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (perf samples the kernel too; the OpenSSH side needs a system user)"
[ -f "$BASELINE" ] || die "OpenSSH baseline script not found at $BASELINE (set BASELINE)"
symbolizer() { command -v llvm-symbolizer || ls /usr/lib/llvm-*/bin/llvm-symbolizer 2>/dev/null | sort -V | tail -1; }
if ! command -v perf >/dev/null || [ -z "$(symbolizer)" ]; then
  echo "installing linux-perf and llvm (perf, llvm-symbolizer)..." >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf llvm >/dev/null
fi
SYMBOLIZER=$(symbolizer)
for c in sftp sshd jq python3 perf openssl readelf curl; do
  command -v $c >/dev/null || [ -x /usr/sbin/$c ] || die "missing $c"
done
[ -n "$SYMBOLIZER" ] || die "missing llvm-symbolizer (Debian: apt-get install llvm)"
case $OPS in *resume*) die "OPS takes up and down (a resume moves half the file: use compare-openssh.sh)" ;; esac

B=$(mktemp -d /tmp/sftpgate-cost.XXXXXX)
chmod 755 "$B" # the OpenSSH side walks this path as its user
. "$repo/bench/lib.sh" # free_port, start_openssh, start_gate, sftp_to, server_cpu...
GATE_PID=
PERF_PID=
STAT_PID=
cleanup() {
  [ -n "$PERF_PID" ] && kill -INT "$PERF_PID" 2>/dev/null || true
  [ -n "$STAT_PID" ] && kill -INT "$STAT_PID" 2>/dev/null || true
  [ -n "$GATE_PID" ] && kill "$GATE_PID" 2>/dev/null || true
  stop_openssh
  cg_remove
  rm -rf "$B"
}
trap cleanup EXIT
cg_setup
pick_gate
[ -x "$GATE" ] || die "no sftpgate binary at $GATE"

# A sampling probe first, so that a kernel without perf events says so plainly.
if ! perf record -q -e cpu-clock -o "$B/probe.data" -- true 2>"$B/probe.err"; then
  die "perf cannot sample here: $(head -3 "$B/probe.err")"
fi

start_openssh
start_gate "$B/gate"
GATE_PID=$SPID GPORT=$SPORT
provision "$SADMIN" $USER_ID shared.dump
GFILE=$B/gate/data/requests/$USER_ID/upload
join_and_make_src
GIB=$(awk -v m="$SIZE_MB" 'BEGIN {print m / 1024}')

# --- the floor: the cipher alone, one page-cache copy, one loopback socket copy ---
echo "measuring the floor (the ciphers' libraries, openssl speed, page cache, loopback socket)..." >&2
FLOORS=$B/floors.json
openssl_name() {
  case $1 in
    chacha20-poly1305@openssh.com) echo chacha20-poly1305 ;;
    aes256-gcm@openssh.com) echo aes-256-gcm ;;
    aes128-gcm@openssh.com) echo aes-128-gcm ;;
    *) die "no openssl speed name for cipher $1" ;;
  esac
}
{
  # The AEADs of the libraries a Rust server can link, measured on the same packets; built
  # from this checkout whatever SFTPGATE_BIN is (it measures the libraries, not the gateway).
  libraries=$(cd "$repo" && cargo run --profile "$CIPHER_PROFILE" --quiet --example cipher_cost -- "$CIPHER_MIB") ||
    die "examples/cipher_cost.rs failed"
  echo "{\"libraries\": $libraries, \"copies\": $(python3 "$repo/bench/copy-floor.py" "$SRC" "$B/gate/data" 3), \"ciphers\": {"
  sep=
  for cipher in $CIPHERS; do
    # kB/s (1000 bytes) over CPU user time, 32 KiB buffers: the last field of the last line;
    # the better of two runs, as for the copies
    k=$(for _ in 1 2; do
      openssl speed -seconds 2 -bytes 32768 -evp "$(openssl_name "$cipher")" 2>/dev/null |
        awk 'END {sub(/k$/, "", $NF); print $NF}'
    done | sort -g | tail -1)
    [ -n "$k" ] || die "openssl speed gave no figure for $cipher"
    printf '%s"%s": {"openssl": "%s", "kB_per_s": %s}' "$sep" "$cipher" "$(openssl_name "$cipher")" "$k"
    sep=", "
  done
  echo "}}"
} >"$FLOORS"

# --- the transfers ---
prepare() { # side op
  local file=$GFILE; [ "$1" = openssh ] && file=$OFILE
  case $2 in
    up) : >"$file" ;;
    down) rm -f "$B/dl.bin"; cmp -s "$SRC" "$file" || cp "$SRC" "$file"; cat "$file" >/dev/null ;;
  esac
  sync
}
move() { # side cipher op; then checks the bytes
  local file=$GFILE; [ "$1" = openssh ] && file=$OFILE
  case $3 in
    up) sftp_to "$1" "$2" $U "put $SRC shared.dump" ;;
    down) sftp_to "$1" "$2" $U "get shared.dump $B/dl.bin" ;;
  esac
  settle "$1"
  if [ "$3" = down ]; then check "$B/dl.bin"; else check "$file"; fi
}
# The measuring steps set CPU (CPU-s/GiB of the server side) and WALL (the client's seconds per
# GiB, login included, as compare-openssh.sh counts them) rather than print them: they run in
# this shell, so that a failed check stops the run and perf is stopped by the cleanup.
timed() { # side cipher op
  local c0 c1 t0 t1
  prepare "$1" "$3"
  c0=$(server_cpu "$1")
  t0=$(date +%s.%N)
  move "$1" "$2" "$3"
  t1=$(date +%s.%N)
  c1=$(server_cpu "$1")
  CPU=$(awk -v a="$c0" -v b="$c1" -v g="$GIB" 'BEGIN {print (b - a) / g}')
  WALL=$(awk -v a="$t0" -v b="$t1" -v g="$GIB" 'BEGIN {print (b - a) / g}')
}
# Counted beside the samples, in the same transfer: system calls by kind, context switches and
# the wake-ups sftpgate's threads make (kernel tracepoints; a kernel without them skips this).
STAT_EVENTS=raw_syscalls:sys_enter,context-switches,sched:sched_wakeup
for call in futex epoll_wait epoll_pwait recvfrom sendto pwritev pwrite64 pread64 preadv preadv2 write read fdatasync; do
  STAT_EVENTS+=,syscalls:sys_enter_$call
done
perf stat -x, -o /dev/null -e "$STAT_EVENTS" -- true 2>/dev/null || STAT_EVENTS=
profiled() { # cipher op data: sftpgate under perf; its counts in $B/stat.csv
  local ctl=$B/perf.ctl ack=$B/perf.ack c0 c1 a
  rm -f "$ctl" "$ack" "$ctl.stat" "$ack.stat" "$B/stat.csv"; mkfifo "$ctl" "$ack" "$ctl.stat" "$ack.stat"
  prepare gate "$2"
  # Attached first with the events off (-D -1), switched on and off around the transfer only;
  # the ack says when perf has done so.
  perf record -D -1 --control "fifo:$ctl,$ack" -e cpu-clock -F "$PERF_FREQ" \
    --call-graph dwarf,16384 -p "$GATE_PID" -o "$3" 2>"$B/perf.log" &
  PERF_PID=$!
  exec 8>"$ctl" 9<"$ack"
  if [ -n "$STAT_EVENTS" ]; then
    perf stat -D -1 --control "fifo:$ctl.stat,$ack.stat" -x, -o "$B/stat.csv" -e "$STAT_EVENTS" \
      -p "$GATE_PID" 2>"$B/stat.log" &
    STAT_PID=$!
    exec 6>"$ctl.stat" 7<"$ack.stat"
    echo enable >&6; read -r a <&7
  fi
  echo enable >&8; read -r a <&9
  c0=$(server_cpu gate)
  move gate "$1" "$2"
  c1=$(server_cpu gate)
  echo disable >&8; read -r a <&9
  exec 8>&- 9<&-
  if [ -n "$STAT_EVENTS" ]; then
    echo disable >&6; read -r a <&7
    exec 6>&- 7<&-
    kill -INT "$STAT_PID"; wait "$STAT_PID" || true
    STAT_PID=
  fi
  kill -INT "$PERF_PID"; wait "$PERF_PID" || true # it exits 130 after writing its data
  PERF_PID=
  grep -q 'Captured and wrote' "$B/perf.log" || die "perf record failed: $(cat "$B/perf.log")"
  CPU=$(awk -v a="$c0" -v b="$c1" -v g="$GIB" 'BEGIN {print (b - a) / g}')
}

ROWS=$B/rows.jsonl
: >"$ROWS"
for cipher in $CIPHERS; do
  for op in $OPS; do
    # RUNS sampled transfers; the one of median CPU gives the samples (a loaded machine
    # disturbs one transfer now and then). Unsampled ones of each side after each.
    sampled= plain= openssh= plain_wall= openssh_wall=
    for run in $(seq "$RUNS"); do
      echo "  $op $cipher: run $run, sftpgate under perf, without, then sshd" >&2
      profiled "$cipher" $op "$B/perf-$run.data"
      sampled+="$CPU "
      mv "$B/stat.csv" "$B/stat-$run.csv" 2>/dev/null || : >"$B/stat-$run.csv"
      timed gate "$cipher" $op
      plain+="$CPU " plain_wall+="$WALL "
      timed openssh "$cipher" $op
      openssh+="$CPU " openssh_wall+="$WALL "
    done
    under_perf=$(echo $sampled | tr ' ' '\n' | median)
    pick=$(echo $sampled | tr ' ' '\n' | awk -v m="$under_perf" '{d = $1 - m; if (d < 0) d = -d; if (NR == 1 || d < best) {best = d; n = NR}} END {print n}')
    under_perf=$(echo $sampled | cut -d' ' -f"$pick")
    perf script -i "$B/perf-$pick.data" -F tid,period,ip,sym,dso --no-inline 2>/dev/null >"$B/script.txt"
    python3 "$repo/bench/perf-classify.py" --binary "$GATE" --symbolizer "$SYMBOLIZER" \
      "$B/script.txt" >"$B/classified.json"
    [ "$(jq .samples "$B/classified.json")" -gt 0 ] || die "perf recorded no samples of sftpgate ($op $cipher)"
    if [ -n "$KEEP" ]; then
      mkdir -p "$KEEP"; cp "$B/perf-$pick.data" "$KEEP/perf-$op-${cipher%%@*}.data"
    fi
    rm -f "$B"/perf-*.data "$B/script.txt"
    jq -c -n --arg op "$op" --arg cipher "$cipher" --argjson perf "$under_perf" \
      --arg sampled "$sampled" --rawfile stat "$B/stat-$pick.csv" \
      --argjson plain "$(echo $plain | tr ' ' '\n' | median)" \
      --argjson sshd "$(echo $openssh | tr ' ' '\n' | median)" \
      --argjson gate_wall "$(echo $plain_wall | tr ' ' '\n' | median)" \
      --argjson sshd_wall "$(echo $openssh_wall | tr ' ' '\n' | median)" \
      --slurpfile c "$B/classified.json" \
      '{op: $op, cipher: $cipher, gate_perf: $perf, sampled: $sampled, gate: $plain, sshd: $sshd, gate_wall: $gate_wall, sshd_wall: $sshd_wall, stat: $stat, classified: $c[0]}' >>"$ROWS"
  done
done

# --- report ---
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
table=$B/table.md
python3 "$repo/bench/cost-table.py" --rows "$ROWS" --floors "$FLOORS" --size-mb "$SIZE_MB" \
  --freq "$PERF_FREQ" --runs "$RUNS" \
  --header "Run $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), load average $LOAD0 at the start and $LOAD1 at the end (1, 5, 15 min); $("$GATE" --version), $(ssh -V 2>&1 | cut -d, -f1) client and sshd, $(openssl version | cut -d' ' -f1-2), $(perf --version)." \
  --command "$COMMAND" >"$table"
cat "$table"
if [ "$RESULTS" != "-" ]; then
  python3 "$repo/bench/cost-table.py" --replace-section "$RESULTS" <"$table"
  echo "written to $RESULTS" >&2
fi
