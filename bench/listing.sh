#!/usr/bin/env bash
# listing.sh: GET /v1/requests with N records (default 100,000), in the file store and in
# PostgreSQL: the time and size of one page of 100 (the default), of every page of 1000
# followed through `next` on one kept-alive connection, and, with OLD set to a binary from
# before paging (whose GET /v1/requests answers every record at once), of that unpaged
# listing. Medians of RUNS (default 3) for the single calls.
#
# usage: [BIN=target/release/sftpgate] [OLD=/path/to/old/sftpgate] [N=100000] bench/listing.sh
# Needs python3, and Debian's postgresql for the PostgreSQL half (bench/pg.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-100000} RUNS=${RUNS:-3}
BIN=$(realpath "${BIN:-target/release/sftpgate}")
OLD=${OLD:+$(realpath "$OLD")}
TOKEN=bench-token-0123456789
work=$(mktemp -d)
# PostgreSQL runs as an unprivileged user (bench/pg.sh), which must reach its directory.
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  bench/pg.sh stop "$work/pg" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Starts `serve` (binary $1, data dir $2, more flags after); sets ADMIN and PID.
start() {
  local bin=$1 data=$2; shift 2
  local out="$work/ready.$RANDOM"
  SFTPGATE_ADMIN_TOKEN=$TOKEN SFTPGATE_LOG=warn "$bin" serve --listen 127.0.0.1:0 \
    --admin-listen 127.0.0.1:0 --data-dir "$data" --host-key-dir "$work/keys" "$@" \
    >"$out" 2>>"$work/gateway.log" &
  PID=$!
  pids+=("$PID")
  for _ in $(seq 600); do [ -s "$out" ] && break; sleep 0.1; done
  ADMIN=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["admin"])' "$out")
}

stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; }

# Measures the gateway at $ADMIN; $1 names the row, $2 is "old" for an unpaged binary.
measure() {
  python3 - "$ADMIN" "$TOKEN" "$RUNS" "$1" "$2" "$N" <<'EOF'
import http.client, json, statistics, sys, time
admin, token, runs, name, kind = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
host, port = admin.rsplit(':', 1)
auth = {'Authorization': 'Bearer ' + token}
def call(conn, path):
    t = time.perf_counter()
    conn.request('GET', path, headers=auth)
    r = conn.getresponse()
    body = r.read()
    assert r.status == 200, (r.status, body[:200])
    return time.perf_counter() - t, body
def single(path):
    conn = http.client.HTTPConnection(host, int(port), timeout=600)
    times, size, count = [], 0, 0
    for _ in range(runs):
        t, body = call(conn, path)
        times.append(t)
        size, count = len(body), len(json.loads(body)['requests'])
    return statistics.median(times), size, count
def row(what, t, size, count, calls=1):
    print(f"| {name} | {what} | {count} | {calls} | {t:.3f} s | {size / 2**20:.2f} MiB |")
if kind == 'old':
    row('unpaged (before paging)', *single('/v1/requests'))
else:
    row('one page of 100 (default)', *single('/v1/requests'))
    row('one page of 100, from the middle', *single(f'/v1/requests?after={int(sys.argv[6]) // 2}'))
    conn = http.client.HTTPConnection(host, int(port), timeout=600)
    total, size, count, calls, after = 0.0, 0, 0, 0, None
    while True:
        t, body = call(conn, '/v1/requests?limit=1000' + (f'&after={after}' if after else ''))
        v = json.loads(body)
        total, size, count, calls = total + t, size + len(body), count + len(v['requests']), calls + 1
        after = v['next']
        if after is None:
            break
    row('every page of 1000', total, size, count, calls)
EOF
}

# The file store: N records written as the store keeps them, then read at start.
python3 - "$work/file/requests" "$N" <<'EOF'
import json, os, sys
root, n = sys.argv[1], int(sys.argv[2])
states = ['draft', 'pending', 'done', 'cancelled']
for i in range(1, n + 1):
    d = os.path.join(root, str(i))
    os.makedirs(d)
    with open(os.path.join(d, 'request.json'), 'w') as f:
        json.dump({'id': i, 'filename': f'db-{i}.dump', 'state': states[i % 4],
                   'key_sha256': '0' * 64, 'ssh_keys': '', 'expires_at': None,
                   'created_at': '2026-01-01T00:00:00Z', 'updated_at': '2026-01-01T00:00:00Z'}, f)
EOF
echo "| store | call | records | calls | time | size |"
echo "|---|---|---|---|---|---|"
start "$BIN" "$work/file"
measure file new
stop
if [ -n "$OLD" ]; then
  start "$OLD" "$work/file"
  measure file old
  stop
fi

# PostgreSQL: the schema made by a first start, then N rows inserted in one statement.
url=$(bench/pg.sh start "$work/pg")
start "$BIN" "$work/pgdata" --store "$url"
stop
cat >"$work/seed.sql" <<SQL
INSERT INTO records (id, filename, state, key_sha256, created_at, updated_at)
SELECT g, 'db-' || g || '.dump', (ARRAY['draft','pending','done','cancelled'])[g % 4 + 1],
       repeat('0', 64), '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z'
FROM generate_series(1, $N) AS g;
ANALYZE records;
SQL
psql -q "$url" -f "$work/seed.sql"
start "$BIN" "$work/pgdata" --store "$url"
measure postgres new
stop
if [ -n "$OLD" ]; then
  start "$OLD" "$work/pgdata" --store "$url"
  measure postgres old
  stop
fi
