#!/usr/bin/env bash
# moto.sh: a throwaway S3-compatible server for the benchmark (moto's server mode, from PyPI,
# as the tests use it), on 127.0.0.1 at a free port, with one bucket.
#
# usage: bench/moto.sh start DIR   prints the endpoint, e.g. http://127.0.0.1:PORT (bucket "bench")
#        bench/moto.sh stop DIR    stops it; DIR is left to the caller
# Env: MOTO_VENV (the tests' venv, target/test-venv, where it has moto; else
#      ~/.cache/sftpgate/moto-venv, made with pip on first use)
set -euo pipefail
die() { echo "moto.sh: $*" >&2; exit 1; }
[ $# = 2 ] || die "usage: $0 start|stop DIR"
cmd=$1 dir=$2
repo=$(cd "$(dirname "$0")/.." && pwd)
VENV=${MOTO_VENV:-$HOME/.cache/sftpgate/moto-venv}
[ -z "${MOTO_VENV:-}" ] && [ -x "$repo/target/test-venv/bin/moto_server" ] && VENV=$repo/target/test-venv
case $cmd in
  start)
    if [ ! -x "$VENV/bin/moto_server" ]; then
      echo "moto.sh: installing moto[server] into $VENV..." >&2
      python3 -m venv "$VENV" >&2
      "$VENV/bin/pip" install -q 'moto[server]==5.2.5' >&2
    fi
    mkdir -p "$dir"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 &
    echo $! >"$dir/moto.pid"
    for _ in $(seq 200); do
      curl -s -o /dev/null "http://127.0.0.1:$port/" && break
      sleep 0.05
    done
    curl -sf -o /dev/null -X PUT "http://127.0.0.1:$port/bench" || die "moto did not start: $(cat "$dir/moto.log")"
    echo "http://127.0.0.1:$port"
    ;;
  stop)
    [ -f "$dir/moto.pid" ] && kill "$(cat "$dir/moto.pid")" 2>/dev/null || true
    ;;
  *) die "usage: $0 start|stop DIR" ;;
esac
