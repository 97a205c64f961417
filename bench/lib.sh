# lib.sh: the pieces the bench scripts share, sourced (not run) by compare-openssh.sh,
# cost-breakdown.sh, memory.sh and records.sh: OpenSSH's sshd started by the baseline
# script, a sftpgate started on loopback and provisioned through its admin API, the
# `sftp -b` client, the asyncssh venv, and the server CPU
# read from a cpuacct cgroup per side.
#
# The caller sets: repo, B (a scratch directory, chmod 755), BASELINE, U (the SFTP user),
# and defines die(). Each start_* sets the variables its comment names.

TICK=$(getconf CLK_TCK)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
cpu_of() { awk -v t="$TICK" '{print ($14+$15+$16+$17)/t}' "/proc/$1/stat"; }

# Server CPU is read from a cgroup per side (cgroup v1 cpuacct, else cgroup v2's cpu.stat),
# which keeps counting the CPU of sshd's per-connection processes after they exit (sshd does
# not always reap them promptly, so its cutime is not a reliable total). Without cgroups:
# utime+stime+cutime+cstime. cg_setup sets CG (empty without cgroups) and CGV (1 or 2);
# cg_join side pid moves a process (all its threads) into a side's group. The sides are
# gate and openssh, plus any named as arguments to cg_setup (compare-openssh.sh --storage s3:
# gates3, the gateway on S3, and moto, the S3 server).
cg_setup() {
  CG_SIDES="gate openssh $*"
  local dirs=()
  CGV=1 CG=/sys/fs/cgroup/cpuacct/sftpgate-bench.$$
  for s in $CG_SIDES; do dirs+=("$CG/$s"); done
  [ -d /sys/fs/cgroup/cpuacct ] && mkdir -p "${dirs[@]}" 2>/dev/null && return 0
  CGV=2 CG=/sys/fs/cgroup/sftpgate-bench.$$ dirs=()
  for s in $CG_SIDES; do dirs+=("$CG/$s"); done
  [ -f /sys/fs/cgroup/cgroup.controllers ] && mkdir -p "${dirs[@]}" 2>/dev/null &&
    [ -f "$CG/gate/cpu.stat" ] && return 0
  CG=
}
cg_join() {
  [ -z "$CG" ] && return 0
  echo "$2" 2>/dev/null >"$CG/$1/cgroup.procs" && return 0
  echo "could not move pid $2 into $CG/$1: server CPU from /proc instead" >&2
  cg_remove
  CG=
}
cg_remove() { # the groups empty out once their processes have exited: give them a moment
  [ -z "${CG:-}" ] && return 0
  for _ in $(seq 40); do
    for s in ${CG_SIDES:-gate openssh}; do rmdir "$CG/$s" 2>/dev/null || true; done
    rmdir "$CG" 2>/dev/null || true
    [ -d "$CG" ] || return 0
    sleep 0.05
  done
}
server_cpu() { # side
  if [ -z "$CG" ]; then
    case $1 in
      gate) cpu_of "$GATE_PID" ;;
      gates3) cpu_of "$S3_PID" ;;
      moto) cpu_of "$MOTO_PID" ;;
      *) cpu_of "$OPID" ;;
    esac
  elif [ "$CGV" = 1 ]; then awk '{print $1 / 1e9}' "$CG/$1/cpuacct.usage"
  else awk '$1 == "usage_usec" {print $2 / 1e6}' "$CG/$1/cpu.stat"; fi
}

# OpenSSH side, set up as the baseline script does it. Sets OWORK OPORT OPID KEY OFILE.
start_openssh() {
  OWORK=$B/openssh
  OPORT=$(free_port)
  WORK=$OWORK PORT=$OPORT SFTP_USER=$U bash "$BASELINE" start >/dev/null
  OPID=$(cat "$OWORK/sshd/sshd.pid")
  # Let many clients authenticate at once, as an operator expecting 100 sessions would.
  sed -i '/^Match User/i MaxStartups 400:30:800' "$OWORK/sshd/sshd_config"
  kill -HUP "$OPID"
  # sshd re-executes itself (same pid), rewrites its pid file and binds the port again: ready
  # once both are back (the pid file alone can be read in the moment it is rewritten).
  local pid=
  for _ in $(seq 200); do
    pid=$(cat "$OWORK/sshd/sshd.pid" 2>/dev/null || true)
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$OPORT") 2>/dev/null && break
    sleep 0.05
  done
  [ -n "$pid" ] || die "sshd did not come back after SIGHUP: $(tail -3 "$OWORK/logs/sshd.log")"
  OPID=$pid
  KEY=$OWORK/keys/id_ed25519
  OFILE=$OWORK/chroot/shared.dump
}
stop_openssh() { [ -z "${OWORK:-}" ] || WORK=$OWORK bash "$BASELINE" stop >/dev/null 2>&1 || true; }

# sftpgate side: start_gate dir [serve args...] sets SPID SPORT SADMIN.
start_gate() {
  local d=$1; shift
  mkdir -p "$d"
  # Every client here comes from 127.0.0.1, faster and more at once than the per-source
  # limits allow one address (sshd's side has no such limits either).
  SFTPGATE_ADMIN_TOKEN=bench "$GATE" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --data-dir "$d/data" --host-key-dir "$d/keys" \
    --connection-rate-per-source 0 --max-startups-per-source 1000 "$@" >"$d/ready" 2>"$d/log" &
  SPID=$!
  for _ in $(seq 600); do [ -s "$d/ready" ] && break; sleep 0.05; done
  [ -s "$d/ready" ] || die "sftpgate did not start: $(cat "$d/log")"
  SPORT=$(jq -r .ssh "$d/ready" | sed 's/.*://')
  SADMIN=http://$(jq -r .admin "$d/ready")
}
provision() { # admin id filename
  jq -n --arg k "$(cat "$KEY.pub")" --arg f "$3" '{filename: $f, key: "bench", ssh_keys: $k}' |
    curl -sfS -X PUT -H "Authorization: Bearer bench" --data-binary @- "$1/v1/requests/$2" >/dev/null
}

sftp_to() { # side cipher user batch; sides: gate (GPORT), gatefile (FPORT), gates3 (S3PORT),
  # openssh (OPORT)
  local port=$OPORT
  case $1 in gate) port=$GPORT ;; gatefile) port=$FPORT ;; gates3) port=$S3PORT ;; esac
  sftp -q -i "$KEY" -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -o LogLevel=ERROR -o BatchMode=yes -o KexAlgorithms=curve25519-sha256 -o Ciphers="$2" \
    -P "$port" -b - "$3@127.0.0.1" <<<"$4" >/dev/null
}
settle() { # wait for sshd's session processes (zombies aside) to finish, so their CPU is counted
  [ "$1" = openssh ] || return 0
  for _ in $(seq 200); do
    ps --ppid "$OPID" -o stat= | grep -qv '^Z' || return 0
    sleep 0.02
  done
}
sha_of() { sha256sum "$1" | cut -d' ' -f1; }
# Both servers' groups joined, and the SIZE_MB test file made: sets SRC and SRC_SHA.
join_and_make_src() {
  cg_join openssh "$OPID"
  cg_join gate "$GATE_PID"
  SRC=$B/src.bin
  echo "making a ${SIZE_MB} MiB test file..." >&2
  head -c $((SIZE_MB * 1024 * 1024)) /dev/urandom >"$SRC"
  SRC_SHA=$(sha_of "$SRC")
}
check() { # file; against SRC_SHA
  [ "$(sha_of "$1")" = "$SRC_SHA" ] || die "sha256 mismatch on $1: a wrong byte fails the run"
}
# Sets GATE: SFTPGATE_BIN (a build of another checkout; not rebuilt), else a release build.
pick_gate() {
  if [ -n "${SFTPGATE_BIN:-}" ]; then
    GATE=$SFTPGATE_BIN
  else
    echo "building sftpgate (release)..." >&2
    (cd "$repo" && cargo build --release --quiet)
    GATE=${CARGO_TARGET_DIR:-$repo/target}/release/sftpgate
  fi
}
# Sets PY: a Python with asyncssh pinned as in the tests (bench/sessions.py): the tests'
# venv if it is ready, else one made under target/bench-venv.
pick_python() {
  # Any ready tests' venv has it (the marker's number changes with the tests' pins).
  PY=$repo/target/test-venv/bin/python
  compgen -G "$repo/target/test-venv/.ready-*" >/dev/null && "$PY" -c 'import asyncssh' 2>/dev/null && return 0
  PY=$repo/target/bench-venv/bin/python
  [ -f "$repo/target/bench-venv/.ready-1" ] && return 0
  python3 -m venv "$repo/target/bench-venv" || die "python3 -m venv failed (Debian: python3-venv)"
  "$PY" -m pip install -q --disable-pip-version-check asyncssh==2.24.1 || die "pip install asyncssh failed"
  touch "$repo/target/bench-venv/.ready-1"
}
