#!/usr/bin/env bash
# records.sh: does the gateway stay flat in the number of records (issue 17 item 4)? For the
# file store and for PostgreSQL (a throwaway cluster, bench/pg.sh), records are provisioned
# up to each of COUNTS in turn: through the API (PUT /v1/requests/{id}, THREADS at once on
# kept-alive connections, by bench/records.py: the path an operator's records take, and the
# one whose memory was seen to stay), except PostgreSQL's past PG_API (1000) records, which
# are copies of record 1 inserted by SQL (its default durability commits a PUT at a few
# dozen a second on a loaded 2-core machine: 100,000 would take most of an hour). At each
# count it measures:
#  - login: SSH handshake + public-key authentication + SFTP session, median of LOGINS
#    sequential asyncssh logins (bench/sessions.py) of the newest record's user;
#  - GET /v1/requests/{id}: median of GETS calls on one kept-alive connection, ids spread
#    over all records;
#  - the sweeper's look for expired requests (the part of the once-a-second sweeping that
#    reads records; the session sweep reads only the live sessions' records): the mean look
#    over QUIET seconds, from sftpgate_expiry_look_microseconds_total / _looks_total (a hook
#    is configured for that, at a port nothing listens on: no event is due); and the
#    gateway's whole CPU over those seconds, idle but for the sweeper;
#  - the gateway's CPU per login and per GET (its threads' time on CPU, /proc/PID/schedstat,
#    over the timed logins and GETs): a count that the load inflates less than latency;
#  - with PostgreSQL and strace: the round trips to PostgreSQL per login, per GET and per
#    idle second (the gateway's sends on its PostgreSQL connections, strace'd over a few
#    extra logins and GETs, less the idle seconds' rate, and over STRACE_IDLE idle seconds; sqlx's pings count, its ping
#    on giving a connection back to the pool too, though no caller waits for that one);
#  - RSS (VmRSS) after provisioning, and after a restart on the same records.
# Latencies are medians; on a machine others are building on they are noisy.
#
# usage: bench/records.sh   (needs python3-venv, curl, jq, openssh-client; PostgreSQL:
#                            Debian's postgresql, run as root or a user pg.sh can use)
# Env: COUNTS ("1 1000 10000 100000")  STORES ("file postgres")  LOGINS (21)  GETS (201)
#      THREADS (16)  QUIET (10)  PG_API (1000)  SFTPGATE_BIN (a built binary instead of building)
#      TRACED (10: logins and GETs strace'd per count)  STRACE_IDLE (10 s)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
COUNTS=${COUNTS:-"1 1000 10000 100000"} STORES=${STORES:-"file postgres"}
LOGINS=${LOGINS:-21} GETS=${GETS:-201} THREADS=${THREADS:-16} QUIET=${QUIET:-10} PG_API=${PG_API:-1000}
TRACED=${TRACED:-10} STRACE_IDLE=${STRACE_IDLE:-10}
COMMAND="COUNTS=\"$COUNTS\" STORES=\"$STORES\" LOGINS=$LOGINS GETS=$GETS THREADS=$THREADS QUIET=$QUIET PG_API=$PG_API TRACED=$TRACED STRACE_IDLE=$STRACE_IDLE bench/records.sh"
die() { echo "records: $*" >&2; exit 1; }
for tool in curl jq ssh-keygen python3; do
  command -v $tool >/dev/null || die "$tool not found (Debian: curl jq openssh-client python3-venv)"
done

B=$(mktemp -d)
# PostgreSQL runs as an unprivileged user (bench/pg.sh), which must reach its directory.
chmod 755 "$B"
GATE_PID=
cleanup() {
  [ -z "$GATE_PID" ] || kill "$GATE_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  bash "$repo/bench/pg.sh" stop "$B/pg" 2>/dev/null || true
  rm -rf "$B"
}
trap cleanup EXIT
. "$repo/bench/lib.sh" # start_gate, median
pick_gate

pick_python
KEY=$B/id_ed25519
ssh-keygen -q -t ed25519 -N '' -C bench -f "$KEY"
HOOK=http://127.0.0.1:$(free_port)/events

status_kib() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$GATE_PID/status"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
ms() { awk -v s="$1" 'BEGIN {printf "%.2f", s * 1000}'; }
metric() { curl -sfS "$SADMIN/metrics" | awk -v m="sftpgate_$1" '$1 == m {print $2}'; }
# The gateway's threads' time on CPU so far, in nanoseconds.
oncpu() { local t sum=0; for t in /proc/"$GATE_PID"/task/*/schedstat; do sum=$((sum + $(cut -d' ' -f1 "$t"))); done; echo $sum; }
per_ms() { awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN {printf "%.2f", (b - a) / n / 1e6}'; }
logins() { "$PY" "$repo/bench/sessions.py" logins 127.0.0.1 "$GPORT" "$KEY" "user_$n" "$1"; }
gets() { python3 "$repo/bench/records.py" gets "$SADMIN" bench "$1" "$n"; }
# Round trips to PostgreSQL while "$@" runs: the gateway's sends on its connections to its
# port (strace'd), per $UNITS, less $IDLE_RATE a second of the background's (the sweeper,
# the hook's poll, the session exchange). "-" without PostgreSQL or strace.
trips() {
  if [ "$store" != postgres ] || ! command -v strace >/dev/null; then echo -; return; fi
  local pgport=${URL##*:} && pgport=${pgport%%/*}
  strace -f -qq -ttt -e trace=sendto,write,writev,sendmsg -e signal=none -p "$GATE_PID" -o "$B/trace" &
  local st=$!
  sleep 1 # attached to every thread
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >/dev/null
  t1=$(date +%s.%N)
  kill "$st"; wait "$st" 2>/dev/null || true
  local fds
  fds=$(ls -l /proc/"$GATE_PID"/fd 2>/dev/null | awk '/socket:/ {gsub(/[^0-9]/, "", $NF); print $9, $NF}' |
    while read -r fd inode; do
      awk -v i="$inode" -v p="$(printf '%04X' "$pgport")" '$10 == i && $3 ~ ":"p"$" {print "'"$fd"'"}' /proc/net/tcp
    done | paste -sd'|')
  [ -n "$fds" ] || { echo -; return; }
  grep -E "^[0-9]+ +[0-9.]+ (sendto|write|writev|sendmsg)\(($fds)," "$B/trace" |
    awk -v a="$t0" -v b="$t1" -v u="$UNITS" -v r="${IDLE_RATE:-0}" \
      '$2 >= a && $2 <= b {n++} END {printf "%.1f", (n - r * (b - a)) / u}'
}
# (Re)starts the gateway of this store on its data dir: sets GATE_PID, GPORT, SADMIN.
gate() {
  [ -z "$GATE_PID" ] || { kill "$GATE_PID"; wait "$GATE_PID" 2>/dev/null || true; }
  SFTPGATE_LOG=warn start_gate "$B/$store" "${STORE_ARGS[@]}" --on-upload-closed "$HOOK"
  GATE_PID=$SPID GPORT=$SPORT
}

rows=()
for store in $STORES; do
  STORE_ARGS=() URL=
  if [ "$store" = postgres ]; then
    echo "starting a throwaway PostgreSQL cluster..." >&2
    URL=$(bash "$repo/bench/pg.sh" start "$B/pg")
    STORE_ARGS=(--store "$URL")
  fi
  GATE_PID=
  gate
  have=0
  for n in $COUNTS; do
    [ "$n" -gt "$have" ] || continue
    api=$n
    [ "$store" = postgres ] && [ "$n" -gt "$PG_API" ] && api=$((have > PG_API ? have : PG_API))
    rate=
    if [ "$api" -gt "$have" ]; then
      echo "$store: provisioning records $((have + 1))..$api through the API..." >&2
      rate="$(python3 "$repo/bench/records.py" provision "$SADMIN" bench "$KEY.pub" $((have + 1)) "$api" "$THREADS")/s"
    fi
    if [ "$n" -gt "$api" ]; then
      echo "$store: inserting records $((api + 1))..$n by SQL, copies of record 1..." >&2
      psql -q -v ON_ERROR_STOP=1 "$URL" <<SQL
INSERT INTO records (id, filename, state, key_sha256, expires_at, operator_expires_at, created_at, updated_at)
SELECT g, 'f' || g || '.dump', r.state, r.key_sha256, r.expires_at, r.operator_expires_at, r.created_at, r.updated_at
FROM records r, generate_series($((api + 1)), $n) AS g WHERE r.id = 1;
INSERT INTO record_keys (record_id, position, line)
SELECT g, k.position, k.line FROM record_keys k, generate_series($((api + 1)), $n) AS g WHERE k.record_id = 1;
ANALYZE records;
ANALYZE record_keys;
SQL
      rate="${rate:+$rate, then }SQL"
    fi
    have=$n
    # The sweeper's looks and the CPU over QUIET idle seconds.
    looks0=$(metric expiry_looks_total) us0=$(metric expiry_look_microseconds_total) cpu0=$(cpu_of "$GATE_PID")
    sleep "$QUIET"
    looks1=$(metric expiry_looks_total) us1=$(metric expiry_look_microseconds_total) cpu1=$(cpu_of "$GATE_PID")
    look=$(awk -v l="$((looks1 - looks0))" -v u="$((us1 - us0))" 'BEGIN {if (l > 0) printf "%.3f", u / l / 1000; else print "nan"}')
    idle=$(awk -v a="$cpu0" -v b="$cpu1" -v s="$QUIET" 'BEGIN {printf "%.1f", (b - a) * 1000 / s}')
    rss1=$(status_kib VmRSS)
    c0=$(oncpu)
    login=$(logins "$LOGINS" | median)
    c1=$(oncpu)
    get=$(gets "$GETS" | median)
    c2=$(oncpu)
    rss2=$(status_kib VmRSS)
    ti=$(UNITS=$STRACE_IDLE trips sleep "$STRACE_IDLE")
    tl=$(IDLE_RATE=${ti/-/0} UNITS=$TRACED trips logins "$TRACED")
    tg=$(IDLE_RATE=${ti/-/0} UNITS=$TRACED trips gets "$TRACED")
    gate
    sleep 2
    rss3=$(status_kib VmRSS)
    rows+=("| $store | $n | $rate | $(ms "$login") ms | $(per_ms "$c0" "$c1" "$LOGINS") ms | $tl | $(ms "$get") ms | $(per_ms "$c1" "$c2" "$GETS") ms | $tg | $look ms | $idle ms/s | $ti | $(mib "$rss1") MiB | $(mib "$rss2") MiB | $(mib "$rss3") MiB |")
    echo "${rows[-1]}" >&2
  done
  kill "$GATE_PID"; wait "$GATE_PID" 2>/dev/null || true
  GATE_PID=
  [ "$store" = postgres ] && bash "$repo/bench/pg.sh" stop "$B/pg"
done

echo
echo "Run $(date -u +%Y-%m-%dT%H:%MZ) by \`$COMMAND\` on $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), sftpgate $("$GATE" --version 2>/dev/null | awk '{print $2}')."
echo
echo "| store | records | provisioned (API: records a second, $THREADS at once) | login (median of $LOGINS) | gateway CPU a login | round trips to PostgreSQL a login | GET /v1/requests/{id} (median of $GETS) | gateway CPU a GET | round trips a GET | expiry look (mean over ${QUIET} s) | gateway CPU while idle | round trips an idle second | RSS after provisioning | after the logins and GETs | after a restart |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
