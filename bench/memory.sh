#!/usr/bin/env bash
# memory.sh: sftpgate's memory per session (issue 17 item 3), each part on a fresh gateway
# so that memory one part freed (and glibc kept) does not make the next look cheaper:
#  1. idle: IDLE requests provisioned, then one asyncssh process (bench/sessions.py) holds
#     IDLE connections, each authenticated with an SFTP session open; per session =
#     (RSS with them - RSS before) / IDLE, and what stays once they have closed; then the
#     same for ACTIVE sessions idle after a transfer (each wrote WARM_KIB to its file and
#     read it back first), which is what an idle session holds once it has been used;
#  2. active: ACTIVE OpenSSH `sftp` processes each upload ACTIVE_MB at once; per session =
#     (peak RSS - RSS before) / ACTIVE, the peak read from VmHWM (reset before);
#  3. one transfer: peak RSS of one upload and one download of SMALL_MB and of BIG_MB, which
#     should be the same (flat in the size). The file is sparse and the download goes to
#     /dev/null: only the gateway's copy takes disk (BIG_MB).
# RSS is VmRSS of /proc/PID/status (RssAnon and the thread count beside it). With ALLOC=1
# also glibc's own view (malloc_stats through gdb, all arenas; freed memory glibc keeps is
# RSS but not "in use").
#
# usage: bench/memory.sh     (root or not; needs python3-venv, openssh-client, curl, jq)
# Env: IDLE (1000)  ACTIVE (100)  ACTIVE_MB (64)  WARM_KIB (1024)  SMALL_MB (256)  BIG_MB (4096)
#      SFTPGATE_BIN (a built binary instead of building)  ALLOC (unset; 1: malloc_stats)
# The gateway's limits are raised by flags for the run: --max-connections and
# --max-connections-per-source to IDLE + ACTIVE + 64 (the default per-source cap, half of
# 1024, would refuse the 513th session from 127.0.0.1), and this shell's open-files limit
# to its hard limit (the asyncssh process holds a socket per session).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
IDLE=${IDLE:-1000} ACTIVE=${ACTIVE:-100} ACTIVE_MB=${ACTIVE_MB:-64} WARM_KIB=${WARM_KIB:-1024}
SMALL_MB=${SMALL_MB:-256} BIG_MB=${BIG_MB:-4096} ALLOC=${ALLOC:-}
COMMAND="IDLE=$IDLE ACTIVE=$ACTIVE ACTIVE_MB=$ACTIVE_MB WARM_KIB=$WARM_KIB SMALL_MB=$SMALL_MB BIG_MB=$BIG_MB bench/memory.sh"
die() { echo "memory: $*" >&2; exit 1; }
for tool in curl jq sftp ssh-keygen python3; do
  command -v $tool >/dev/null || die "$tool not found (Debian: curl jq openssh-client python3-venv)"
done
ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -gt $((IDLE + 64)) ] || die "open-files limit $(ulimit -n) is below IDLE + 64; raise the hard limit"

B=$(mktemp -d)
chmod 755 "$B"
GATES=()
cleanup() {
  for p in "${GATES[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$B"
}
trap cleanup EXIT
. "$repo/bench/lib.sh" # free_port, start_gate, provision, sftp_to, median
pick_gate

pick_python

KEY=$B/id_ed25519
ssh-keygen -q -t ed25519 -N '' -C bench -f "$KEY"
export KEY
export -f provision
LIMIT=$((IDLE + ACTIVE + 64))
OPORT= FPORT= # sftp_to's other sides; only the gateway here
# A fresh gateway: sets GATE_PID, GPORT, SADMIN.
fresh_gate() {
  [ -z "${GATE_PID:-}" ] || { kill "$GATE_PID"; wait "$GATE_PID" 2>/dev/null || true; }
  SFTPGATE_LOG=warn start_gate "$B/$1" --max-connections $LIMIT --max-connections-per-source $LIMIT
  GATE_PID=$SPID GPORT=$SPORT
  GATES+=("$GATE_PID")
}
# Requests $1..$1+$2-1, 16 PUTs at a time; any failure fails the run.
provision_many() {
  seq "$1" $(($1 + $2 - 1)) | xargs -P 16 -I{} bash -c 'provision "$0" {} "f{}.dump"' "$SADMIN" ||
    die "provisioning failed"
}
status_kib() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$GATE_PID/status"; }
rss() { status_kib VmRSS; }
reset_peak() { echo 5 >"/proc/$GATE_PID/clear_refs"; }
quiet() { sleep "${1:-2}"; } # lets the runtime's idle threads and timers settle first
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
per() { awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN {printf "%.1f", (b - a) / n}'; }
malloc_view() { # one line: glibc's totals over every arena, from malloc_stats (gdb)
  [ -n "$ALLOC" ] || { echo "-"; return; }
  command -v gdb >/dev/null || { echo "(no gdb)"; return; }
  local before; before=$(wc -l <"$B/$1/log")
  timeout 120 gdb -p "$GATE_PID" -batch -ex 'call (void) malloc_stats()' >/dev/null 2>&1 || true
  tail -n +$((before + 1)) "$B/$1/log" | awk '/^Total/ {t=1} t && /system bytes/ {s=$NF} t && /in use bytes/ {u=$NF}
    END {if (s) printf "glibc: %.1f MiB from the system, %.1f MiB in use", s/1048576, u/1048576; else print "-"}'
}

# --- 1. idle sessions, fresh and after a transfer ---
# hold part count [KIB]: a fresh gateway with `count` requests, then one asyncssh process
# holding a session of each; sets R0 (RSS before), R1 (with them), RA0/RA1 (RssAnon),
# T0/T1 (threads), M0/M1 (allocator), R2/T2 (once they have closed and tokio's idle
# blocking threads have exited, after its 10 s keep-alive).
hold() {
  echo "$1: provisioning $2 requests, then opening their sessions from one asyncssh process..." >&2
  fresh_gate "$1"
  provision_many 1 "$2"
  quiet
  R0=$(rss) RA0=$(status_kib RssAnon) T0=$(status_kib Threads) M0=$(malloc_view "$1")
  coproc HOLD { "$PY" "$repo/bench/sessions.py" hold 127.0.0.1 "$GPORT" "$KEY" 1 "$2" ${3:-} 2>"$B/hold.err"; }
  local line
  read -r -t 900 line <&"${HOLD[0]}" || die "the sessions did not come up: $(tail -3 "$B/hold.err")"
  [ "$line" = "ready $2" ] || die "asyncssh: $line $(tail -3 "$B/hold.err")"
  quiet 3
  R1=$(rss) RA1=$(status_kib RssAnon) T1=$(status_kib Threads) M1=$(malloc_view "$1")
  echo >&"${HOLD[1]}"
  read -r -t 300 line <&"${HOLD[0]}" || true
  [ "$line" = closed ] || die "asyncssh did not close its sessions: $(tail -3 "$B/hold.err")"
  wait "$HOLD_PID" 2>/dev/null || true
  quiet 12
  R2=$(rss) T2=$(status_kib Threads)
}
hold idle "$IDLE"
I0=$R0 I1=$R1 IA0=$RA0 IA1=$RA1 IT0=$T0 IT1=$T1 IM0=$M0 IM1=$M1 I2=$R2 IT2=$T2
hold warm "$ACTIVE" "$WARM_KIB"
W0=$R0 W1=$R1 WA0=$RA0 WA1=$RA1 WT0=$T0 WT1=$T1 WM0=$M0 WM1=$M1 W2=$R2 WT2=$T2

# --- 2. concurrent uploads ---
echo "active: $ACTIVE concurrent uploads of $ACTIVE_MB MiB..." >&2
fresh_gate active
provision_many 1 "$ACTIVE"
SRC=$B/active.bin
head -c $((ACTIVE_MB * 1024 * 1024)) /dev/urandom >"$SRC"
SHA=$(sha_of "$SRC")
quiet
A0=$(rss) AT0=$(status_kib Threads)
reset_peak
pids=()
for i in $(seq "$ACTIVE"); do
  sftp_to gate chacha20-poly1305@openssh.com "user_$i" "put $SRC f$i.dump" &
  pids+=($!)
done
# The thread count at its highest while they run (each session holds two blocking threads).
AT1=$AT0
while kill -0 "${pids[0]}" 2>/dev/null; do
  t=$(status_kib Threads)
  [ "$t" -gt "$AT1" ] && AT1=$t
  sleep 0.2
done
fails=0
for p in "${pids[@]}"; do wait "$p" || fails=$((fails + 1)); done
[ "$fails" = 0 ] || die "$fails of $ACTIVE uploads failed"
A1=$(status_kib VmHWM)
for i in $(seq "$ACTIVE"); do
  [ "$(sha_of "$B/active/data/requests/$i/upload")" = "$SHA" ] || die "upload $i is wrong"
done
rm -f "$SRC" "$B"/active/data/requests/*/upload
quiet 12
A2=$(rss)

# --- 3. one transfer, SMALL_MB and BIG_MB ---
echo "single: one upload and one download of $SMALL_MB and $BIG_MB MiB..." >&2
fresh_gate single
provision_many 1 1
quiet
S0=$(rss)
declare -A PEAK
for mb in "$SMALL_MB" "$BIG_MB"; do
  src=$B/sparse.bin
  rm -f "$src" "$B/single/data/requests/1/upload"
  truncate -s $((mb * 1024 * 1024)) "$src"
  reset_peak
  sftp_to gate chacha20-poly1305@openssh.com user_1 "put $src f1.dump" || die "upload of $mb MiB failed"
  PEAK[up$mb]=$(status_kib VmHWM)
  [ "$(stat -c %s "$B/single/data/requests/1/upload")" = $((mb * 1024 * 1024)) ] || die "upload of $mb MiB incomplete"
  reset_peak
  sftp_to gate chacha20-poly1305@openssh.com user_1 "get f1.dump /dev/null" || die "download of $mb MiB failed"
  PEAK[down$mb]=$(status_kib VmHWM)
done
rm -f "$src" "$B/single/data/requests/1/upload"

echo
echo "Run $(date -u +%Y-%m-%dT%H:%MZ) by \`$COMMAND\` on $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), sftpgate $("$GATE" --version 2>/dev/null | awk '{print $2}'), load before: $(cut -d' ' -f1-3 /proc/loadavg)."
echo
echo "| part | RSS before | RSS with them (peak for transfers) | per session | target | threads before → with them | after they ended |"
echo "|---|---|---|---|---|---|---|"
echo "| $IDLE idle SFTP sessions (asyncssh, one process) | $(mib "$I0") MiB | $(mib "$I1") MiB (anon $(mib "$IA1") MiB, before $(mib "$IA0")) | $(per "$I0" "$I1" "$IDLE") KiB | ≤ 64 KiB | $IT0 → $IT1 | $(mib "$I2") MiB, $IT2 threads |"
echo "| $ACTIVE idle SFTP sessions after writing and reading back $WARM_KIB KiB each | $(mib "$W0") MiB | $(mib "$W1") MiB (anon $(mib "$WA1") MiB, before $(mib "$WA0")) | $(per "$W0" "$W1" "$ACTIVE") KiB | ≤ 64 KiB | $WT0 → $WT1 | $(mib "$W2") MiB, $WT2 threads |"
echo "| $ACTIVE concurrent uploads x $ACTIVE_MB MiB (OpenSSH sftp) | $(mib "$A0") MiB | $(mib "$A1") MiB | $(per "$A0" "$A1" "$ACTIVE") KiB | ≤ 1024 KiB | $AT0 → $AT1 (highest sampled) | $(mib "$A2") MiB |"
for mb in "$SMALL_MB" "$BIG_MB"; do
  echo "| one upload of $mb MiB | $(mib "$S0") MiB | $(mib "${PEAK[up$mb]}") MiB | | flat | | |"
  echo "| one download of $mb MiB | $(mib "$S0") MiB | $(mib "${PEAK[down$mb]}") MiB | | flat | | |"
done
if [ -n "$ALLOC" ]; then
  echo
  echo "Allocator, idle part: before the sessions $IM0; with them $IM1. After a transfer: before $WM0; with them $WM1."
fi
