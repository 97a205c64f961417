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
#  - RSS (VmRSS) after provisioning, and after a restart on the same records.
# Latencies are medians; on a machine others are building on they are noisy.
#
# usage: bench/records.sh   (needs python3-venv, curl, jq, openssh-client; PostgreSQL:
#                            Debian's postgresql, run as root or a user pg.sh can use)
# Env: COUNTS ("1 1000 10000 100000")  STORES ("file postgres")  LOGINS (21)  GETS (201)
#      THREADS (16)  QUIET (10)  PG_API (1000)  SFTPGATE_BIN (a built binary instead of building)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
COUNTS=${COUNTS:-"1 1000 10000 100000"} STORES=${STORES:-"file postgres"}
LOGINS=${LOGINS:-21} GETS=${GETS:-201} THREADS=${THREADS:-16} QUIET=${QUIET:-10} PG_API=${PG_API:-1000}
COMMAND="COUNTS=\"$COUNTS\" STORES=\"$STORES\" LOGINS=$LOGINS GETS=$GETS THREADS=$THREADS QUIET=$QUIET PG_API=$PG_API bench/records.sh"
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
    login=$("$PY" "$repo/bench/sessions.py" logins 127.0.0.1 "$GPORT" "$KEY" "user_$n" "$LOGINS" | median)
    get=$(python3 "$repo/bench/records.py" gets "$SADMIN" bench "$GETS" "$n" | median)
    rss2=$(status_kib VmRSS)
    gate
    sleep 2
    rss3=$(status_kib VmRSS)
    rows+=("| $store | $n | $rate | $(ms "$login") ms | $(ms "$get") ms | $look ms | $idle ms/s | $(mib "$rss1") MiB | $(mib "$rss2") MiB | $(mib "$rss3") MiB |")
    echo "${rows[-1]}" >&2
  done
  kill "$GATE_PID"; wait "$GATE_PID" 2>/dev/null || true
  GATE_PID=
  [ "$store" = postgres ] && bash "$repo/bench/pg.sh" stop "$B/pg"
done

echo
echo "Run $(date -u +%Y-%m-%dT%H:%MZ) by \`$COMMAND\` on $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), sftpgate $("$GATE" --version 2>/dev/null | awk '{print $2}')."
echo
echo "| store | records | provisioned (API: records a second, $THREADS at once) | login (median of $LOGINS) | GET /v1/requests/{id} (median of $GETS) | expiry look (mean over ${QUIET} s) | gateway CPU while idle | RSS after provisioning | after the logins and GETs | after a restart |"
echo "|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
