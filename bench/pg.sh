#!/usr/bin/env bash
# pg.sh: a throwaway PostgreSQL cluster for the benchmark, as tests/common/postgres.rs starts
# one for the tests: initdb into DIR, TCP on 127.0.0.1 at a free port, trust authentication,
# run as an unprivileged user when called as root (initdb refuses root). Unlike the tests'
# cluster it keeps PostgreSQL's default durability (fsync, synchronous_commit), as a real
# deployment would.
#
# usage: bench/pg.sh start DIR   prints postgres://postgres@127.0.0.1:PORT/sftpgate
#        bench/pg.sh stop DIR    stops it (fast shutdown); DIR is left to the caller
# Env: PG_USER (sftpgate-test if it exists, else nobody)   PG_BIN (/usr/lib/postgresql/<newest>/bin, else PATH)
# Debian: apt-get install postgresql
set -euo pipefail
die() { echo "pg.sh: $*" >&2; exit 1; }
[ $# = 2 ] || die "usage: $0 start|stop DIR"
cmd=$1 dir=$2
if [ -z "${PG_BIN:-}" ]; then
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$PG_BIN" ] || PG_BIN=$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")
fi
[ -x "$PG_BIN/initdb" ] && [ -x "$PG_BIN/pg_ctl" ] ||
  die "no PostgreSQL server binaries (initdb, pg_ctl) in $PG_BIN: install Debian's postgresql package"
as=()
if [ "$(id -u)" = 0 ]; then
  PG_USER=${PG_USER:-$(id -u sftpgate-test >/dev/null 2>&1 && echo sftpgate-test || echo nobody)}
  as=(runuser -u "$PG_USER" --)
fi
pg() { "${as[@]}" env LC_ALL=C "$PG_BIN/$@"; }
case $cmd in
  start)
    mkdir -p "$dir"
    [ ${#as[@]} = 0 ] || chown "$PG_USER" "$dir"
    pg initdb -D "$dir/data" -U postgres --auth=trust --encoding=UTF8 --locale=C >"$dir/initdb.log" 2>&1 ||
      die "initdb failed: $(cat "$dir/initdb.log")"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    pg pg_ctl -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
      -o "-p $port -h 127.0.0.1 -k $dir -c max_connections=100" start >/dev/null ||
      die "PostgreSQL did not start: $(cat "$dir/postgres.log")"
    "${as[@]}" "$PG_BIN/psql" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "CREATE DATABASE sftpgate" >/dev/null
    echo "postgres://postgres@127.0.0.1:$port/sftpgate"
    ;;
  stop)
    [ -d "$dir/data" ] && pg pg_ctl -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    ;;
  *) die "usage: $0 start|stop DIR" ;;
esac
