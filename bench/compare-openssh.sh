#!/usr/bin/env bash
# compare-openssh.sh: sftpgate against OpenSSH sshd (internal-sftp, chroot, one writable file),
# side by side on this machine, driven by the same OpenSSH `sftp -b` client with the same key,
# cipher and key exchange, alternating A B A B. Every transferred file is checked by sha256: a
# wrong byte fails the run. Prints a table and writes it to bench/RESULTS.md.
#
# usage (as root; needs openssh-server, openssh-client, jq, python3):
#   bench/compare-openssh.sh
# Env: SIZE_MB (1024)  RUNS (3)  CONC (100)  CONC_MB (16)  LOGINS (50)
#      CIPHERS ("chacha20-poly1305@openssh.com aes256-gcm@openssh.com")
#      RESULTS (bench/RESULTS.md; "-" prints only)  BASELINE (../shared/bench/openssh-baseline.sh)
#      OPS ("up down resume")  LOGINS=0 or CONC=0 skip those parts
#      SFTPGATE_BIN (a built binary to run instead of building target/release/sftpgate)
#      STORE (empty: sftpgate's file store; "postgres": a throwaway PostgreSQL cluster started
#             by bench/pg.sh; or a postgres://... URL of an empty database). With a PostgreSQL
#             store the transfers run against that gateway, and the logins are also timed
#             against a second gateway on the file store (the ratio is reported).
# Options: --storage s3   also runs every transfer against a third gateway whose dumps are on
#             S3-compatible object storage (a throwaway moto server, bench/moto.sh), and
#             adds a table: its throughput and server CPU beside the file storage's, and the
#             S3 server's own CPU, which belongs to the storage, not to sftpgate. The object
#             is checked by sha256 as moto holds it. Logins and concurrent uploads stay on
#             the file storage.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
SIZE_MB=${SIZE_MB:-1024}
RUNS=${RUNS:-3}
CONC=${CONC:-100}
CONC_MB=${CONC_MB:-16}
LOGINS=${LOGINS:-50}
CIPHERS=${CIPHERS-"chacha20-poly1305@openssh.com aes256-gcm@openssh.com"}
RESULTS=${RESULTS:-$repo/bench/RESULTS.md}
BASELINE=${BASELINE:-$repo/../shared/bench/openssh-baseline.sh}
USER_ID=50001
U=user_$USER_ID

die() { echo "compare-openssh: $*" >&2; exit 1; }
STORAGE=file
while [ $# -gt 0 ]; do
  case $1 in
    --storage) [ $# -ge 2 ] || die "--storage needs file or s3"; STORAGE=$2; shift 2 ;;
    --storage=*) STORAGE=${1#--storage=}; shift ;;
    *) die "unknown argument $1 (only --storage file|s3)" ;;
  esac
done
case $STORAGE in file | s3) ;; *) die "--storage must be file or s3" ;; esac
[ "$(id -u)" = 0 ] || die "run as root (the OpenSSH side needs a system user and a chroot)"
[ -f "$BASELINE" ] || die "OpenSSH baseline script not found at $BASELINE (set BASELINE)"
for c in sftp sshd jq python3; do command -v $c >/dev/null || [ -x /usr/sbin/$c ] || die "missing $c"; done

STORE=${STORE:-}
case $STORE in
  "" | postgres | postgres://* | postgresql://*) ;;
  *) die "STORE must be empty, postgres or a postgres:// URL" ;;
esac

B=$(mktemp -d /tmp/sftpgate-bench.XXXXXX)
chmod 755 "$B" # the OpenSSH side walks this path as its user, PostgreSQL's as its own
. "$repo/bench/lib.sh" # free_port, start_openssh, start_gate, sftp_to, server_cpu...
GATE_PID=
FILE_PID=
S3_PID=
MOTO_PID=
PGDIR=
cleanup() {
  [ -n "$GATE_PID" ] && kill "$GATE_PID" 2>/dev/null || true
  [ -n "$FILE_PID" ] && kill "$FILE_PID" 2>/dev/null || true
  [ -n "$S3_PID" ] && kill "$S3_PID" 2>/dev/null || true
  [ -n "$MOTO_PID" ] && bash "$repo/bench/moto.sh" stop "$B/moto" || true
  [ -n "$PGDIR" ] && bash "$repo/bench/pg.sh" stop "$PGDIR" || true
  stop_openssh
  [ -n "${KEEP:-}" ] && echo "kept $B" >&2 || rm -rf "$B" # KEEP=1 keeps it, to look at the logs
  cg_remove
}
trap cleanup EXIT
if [ "$STORAGE" = s3 ]; then cg_setup gates3 moto; else cg_setup; fi
pick_gate

# --- OpenSSH side, set up as the baseline script does it ---
start_openssh

# --- sftpgate side ---
STORE_URL=$STORE
if [ "$STORE" = postgres ]; then
  PGDIR=$B/pg
  echo "starting a throwaway PostgreSQL cluster..." >&2
  STORE_URL=$(bash "$repo/bench/pg.sh" start "$PGDIR")
fi
STORE_ARGS=()
[ -n "$STORE_URL" ] && STORE_ARGS=(--store "$STORE_URL")
start_gate "$B/gate" "${STORE_ARGS[@]}"
GATE_PID=$SPID GPORT=$SPORT ADMIN=$SADMIN
provision "$ADMIN" $USER_ID shared.dump
# With a PostgreSQL store, a second gateway on the file store, for the logins only.
FPORT=
if [ -n "$STORE_URL" ] && [ "$LOGINS" -gt 0 ]; then
  start_gate "$B/gatefile"
  FILE_PID=$SPID FPORT=$SPORT
  provision "$SADMIN" $USER_ID shared.dump
fi
# With --storage s3, a third gateway, on a moto bucket, for the transfers.
SIDES="gate openssh"
if [ "$STORAGE" = s3 ]; then
  echo "starting a throwaway S3 server (moto)..." >&2
  ENDPOINT=$(bash "$repo/bench/moto.sh" start "$B/moto")
  MOTO_PID=$(cat "$B/moto/moto.pid")
  # moto takes any keys; the gateway reads them the usual way, from the environment.
  export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
  start_gate "$B/gates3" --storage s3://bench/dumps --s3-endpoint "$ENDPOINT"
  S3_PID=$SPID S3PORT=$SPORT
  provision "$SADMIN" $USER_ID shared.dump
  cg_join gates3 "$S3_PID"
  cg_join moto "$MOTO_PID"
  SIDES="gate openssh gates3"
fi
GFILE=$B/gate/data/requests/$USER_ID/upload
join_and_make_src
if [ "$STORAGE" = s3 ]; then
  HALF=$B/half.bin
  head -c $((SIZE_MB * 1024 * 1024 / 2)) "$SRC" >"$HALF"
fi
S3_FULL= # whether the object on S3 is the whole source
# The object as the S3 server holds it (moto serves unsigned GETs), into $B/obj.bin.
s3_object() { curl -sfS -o "$B/obj.bin" "$ENDPOINT/bench/dumps/$USER_ID/upload"; }

remote_file() { if [ "$1" = gate ]; then echo "$GFILE"; else echo "$OFILE"; fi; }

# CPU seconds used so far by this shell's finished children (the sftp client and its ssh),
# from `times`, which must run in this shell, not in a $(...) subshell.
children_cpu() { times >"$B/times"; awk 'NR==2 {gsub(/[ms]/," "); print $1*60+$2+$3*60+$4}' "$B/times"; }
declare -A TIME CPU CCPU MCPU
transfer() { # side cipher op
  local side=$1 cipher=$2 op=$3 file
  if [ "$side" = gates3 ]; then
    # The object is set up through the gateway, untimed: a put opens with TRUNC and starts
    # over; a resume starts from the first half, uploaded and closed (so the timed `put -a`
    # begins with server-side copies of it).
    case $op in
      down) [ -n "$S3_FULL" ] || sftp_to gates3 "$cipher" $U "put $SRC shared.dump" ;;
      resume) sftp_to gates3 "$cipher" $U "put $HALF shared.dump" ;;
    esac
    [ "$op" = down ] || S3_FULL=
    rm -f "$B/dl.bin"
  else
    file=$(remote_file "$side")
    case $op in
      up) : >"$file" ;;
      down) rm -f "$B/dl.bin"; cmp -s "$SRC" "$file" || cp "$SRC" "$file" ;; # OPS may skip "up"
      resume) truncate -s $((SIZE_MB * 1024 * 1024 / 2)) "$file" ;;
    esac
  fi
  sync
  local c0 t0 t1 c1 k0 k1 m0 m1
  [ "$side" = gates3 ] && m0=$(server_cpu moto)
  children_cpu >"$B/k0"; c0=$(server_cpu "$side"); t0=$(now)
  case $op in
    up) sftp_to "$side" "$cipher" $U "put $SRC shared.dump" ;;
    down) sftp_to "$side" "$cipher" $U "get shared.dump $B/dl.bin" ;;
    resume) sftp_to "$side" "$cipher" $U "put -a $SRC shared.dump" ;;
  esac
  t1=$(now); children_cpu >"$B/k1"; k0=$(cat "$B/k0"); k1=$(cat "$B/k1")
  settle "$side"; c1=$(server_cpu "$side")
  local key="$side|$cipher|$op"
  [ "$side" = gates3 ] && m1=$(server_cpu moto) && MCPU[$key]+="$(echo "$m1 - $m0" | bc) "
  if [ "$op" = down ]; then
    check "$B/dl.bin"
  elif [ "$side" = gates3 ]; then
    s3_object || die "the object is not on the S3 server after $op"
    check "$B/obj.bin"
    S3_FULL=1
  else
    check "$file"
  fi
  TIME[$key]+="$(echo "$t1 - $t0" | bc) "
  CPU[$key]+="$(echo "$c1 - $c0" | bc) "
  CCPU[$key]+="$(echo "$k1 - $k0" | bc) "
}

reset_peak() { echo 5 >"/proc/$GATE_PID/clear_refs"; }
peak_kib() { awk '/VmHWM/ {print $2}' "/proc/$GATE_PID/status"; }

reset_peak
for cipher in $CIPHERS; do
  for op in ${OPS:-up down resume}; do
    for run in $(seq "$RUNS"); do
      echo "  $cipher $op run $run" >&2
      for side in $SIDES; do transfer $side "$cipher" $op; done
    done
  done
done
PEAK_XFER=$(peak_kib)

# --- 50 sequential logins doing ls (and against the file store, with a PostgreSQL one) ---
declare -A LOGIN
LOGIN_SIDES="gate openssh"; [ -n "$FPORT" ] && LOGIN_SIDES="gate gatefile openssh"
for run in $(seq "$RUNS"); do
  for side in $LOGIN_SIDES; do
    t0=$(now)
    for _ in $(seq "$LOGINS"); do sftp_to $side chacha20-poly1305@openssh.com $U "ls"; done
    t1=$(now)
    LOGIN[$side]+="$(echo "$t1 - $t0" | bc) "
  done
done

# --- concurrent sessions, each uploading CONC_MB ---
CSRC=$B/conc.bin
head -c $((CONC_MB * 1024 * 1024)) /dev/urandom >"$CSRC"
CSHA=$(sha256sum "$CSRC" | cut -d' ' -f1)
for i in $(seq "$CONC"); do
  provision "$ADMIN" $((60000 + i)) "c$i.dump"
  : >"$OWORK/chroot/c$i.dump"; chown "$U:" "$OWORK/chroot/c$i.dump"
done
concurrent() { # side -> seconds; fails unless every upload is complete and right
  local side=$1 pids=() t0 t1 fails=0
  t0=$(now)
  for i in $(seq "$CONC"); do
    local user=$U; [ "$side" = gate ] && user=user_$((60000 + i))
    local name="c$i.dump"
    sftp_to "$side" chacha20-poly1305@openssh.com "$user" "put $CSRC $name" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || fails=$((fails + 1)); done
  t1=$(now)
  [ "$fails" = 0 ] || die "$side: $fails of $CONC concurrent uploads failed"
  for i in $(seq "$CONC"); do
    local f="$OWORK/chroot/c$i.dump"; [ "$side" = gate ] && f=$B/gate/data/requests/$((60000 + i))/upload
    [ "$(sha256sum "$f" | cut -d' ' -f1)" = "$CSHA" ] || die "$side: concurrent upload $i is wrong"
  done
  echo "$t1 - $t0" | bc
}
reset_peak
declare -A CONCT
for run in $(seq "$RUNS"); do
  CONCT[gate]+="$(concurrent gate) "
  CONCT[openssh]+="$(concurrent openssh) "
done
PEAK_CONC=$(peak_kib)

# --- report ---
MB=$SIZE_MB
mbps() { awk -v mb="$1" -v s="$2" 'BEGIN {printf "%.0f", mb * 1.048576 / s}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
# The issue's measure: the ratio of each A B pair of runs (run i of both sides, taken one
# after the other), then the median of those ratios. $1 and $2: the two sides' times.
paired() {
  paste <(echo $1 | tr ' ' '\n') <(echo $2 | tr ' ' '\n') |
    awk '$1 > 0 && $2 > 0 {print $1 / $2}' | median | awk '{printf "%.2f", $1}'
}
table=$(mktemp)
{
  echo "| test | cipher | sftpgate | OpenSSH | ratio of medians (sftpgate/OpenSSH) | median of paired ratios | server CPU s/GiB sftpgate | server CPU s/GiB OpenSSH | client CPU s/GiB vs sftpgate | client CPU s/GiB vs OpenSSH |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  for cipher in $CIPHERS; do
    for op in ${OPS:-up down resume}; do
      moved=$MB; [ $op = resume ] && moved=$((MB / 2))
      tg=$(echo ${TIME["gate|$cipher|$op"]} | tr ' ' '\n' | median)
      to=$(echo ${TIME["openssh|$cipher|$op"]} | tr ' ' '\n' | median)
      cg=$(echo ${CPU["gate|$cipher|$op"]} | tr ' ' '\n' | median)
      co=$(echo ${CPU["openssh|$cipher|$op"]} | tr ' ' '\n' | median)
      kg=$(echo ${CCPU["gate|$cipher|$op"]} | tr ' ' '\n' | median)
      ko=$(echo ${CCPU["openssh|$cipher|$op"]} | tr ' ' '\n' | median)
      gib=$(awk -v m="$moved" 'BEGIN {print m / 1024}')
      per_gib() { awk -v c="$1" -v g="$gib" 'BEGIN {print c / g}'; }
      printf "| %s %s MiB | %s | %s MB/s | %s MB/s | %s | %s | %.2f | %.2f | %.2f | %.2f |\n" "$op" "$moved" "${cipher%%@*}" \
        "$(mbps "$moved" "$tg")" "$(mbps "$moved" "$to")" "$(ratio "$to" "$tg")" \
        "$(paired "${TIME["openssh|$cipher|$op"]}" "${TIME["gate|$cipher|$op"]}")" \
        "$(per_gib "$cg")" "$(per_gib "$co")" "$(per_gib "$kg")" "$(per_gib "$ko")"
    done
  done
  lg=$(echo ${LOGIN[gate]} | tr ' ' '\n' | median); lo=$(echo ${LOGIN[openssh]} | tr ' ' '\n' | median)
  [ "$LOGINS" -gt 0 ] && printf "| %s sequential logins + ls | chacha20-poly1305 | %.2f s | %.2f s | %s (time, lower is better) | %s | | | | |\n" "$LOGINS" "$lg" "$lo" "$(ratio "$lg" "$lo")" \
    "$(paired "${LOGIN[gate]}" "${LOGIN[openssh]}")"
  if [ -n "$FPORT" ]; then
    lf=$(echo ${LOGIN[gatefile]} | tr ' ' '\n' | median)
    printf "| %s sequential logins + ls, sftpgate: PostgreSQL store (3rd column) vs file store (4th) | chacha20-poly1305 | %.2f s | %.2f s | %s (time; target <= 1.2) | %s | | | | |\n" "$LOGINS" "$lg" "$lf" "$(ratio "$lg" "$lf")" \
      "$(paired "${LOGIN[gate]}" "${LOGIN[gatefile]}")"
  fi
  cg=$(echo ${CONCT[gate]} | tr ' ' '\n' | median); co=$(echo ${CONCT[openssh]} | tr ' ' '\n' | median)
  total=$((CONC * CONC_MB))
  [ "$CONC" -gt 0 ] && printf "| %s concurrent uploads x %s MiB | chacha20-poly1305 | %s MB/s | %s MB/s | %s | %s | | | | |\n" "$CONC" "$CONC_MB" \
    "$(mbps "$total" "$cg")" "$(mbps "$total" "$co")" "$(ratio "$co" "$cg")" \
    "$(paired "${CONCT[openssh]}" "${CONCT[gate]}")"
  if [ "$STORAGE" = s3 ]; then
    echo
    echo "The same transfers with sftpgate's dumps on S3-compatible storage (moto ${MOTO_VERSION:-5.2.5} on this machine, 16 MiB parts), beside sftpgate on files and OpenSSH. The S3 server's CPU is the storage's, as the kernel's file I/O is for the others; it is reported apart, not in sftpgate's."
    echo
    echo "| test | cipher | sftpgate on S3 | sftpgate on files | OpenSSH | S3/files (median of paired ratios) | S3/OpenSSH (median of paired ratios) | server CPU s/GiB sftpgate on S3 | on files | OpenSSH | S3 server (moto) CPU s/GiB |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
    for cipher in $CIPHERS; do
      for op in ${OPS:-up down resume}; do
        moved=$MB; [ $op = resume ] && moved=$((MB / 2))
        gib=$(awk -v m="$moved" 'BEGIN {print m / 1024}')
        med() { echo ${1} | tr ' ' '\n' | median; }
        per_gib() { awk -v c="$1" -v g="$gib" 'BEGIN {printf "%.2f", c / g}'; }
        printf "| %s %s MiB | %s | %s MB/s | %s MB/s | %s MB/s | %s | %s | %s | %s | %s | %s |\n" "$op" "$moved" "${cipher%%@*}" \
          "$(mbps "$moved" "$(med "${TIME["gates3|$cipher|$op"]}")")" \
          "$(mbps "$moved" "$(med "${TIME["gate|$cipher|$op"]}")")" \
          "$(mbps "$moved" "$(med "${TIME["openssh|$cipher|$op"]}")")" \
          "$(paired "${TIME["gate|$cipher|$op"]}" "${TIME["gates3|$cipher|$op"]}")" \
          "$(paired "${TIME["openssh|$cipher|$op"]}" "${TIME["gates3|$cipher|$op"]}")" \
          "$(per_gib "$(med "${CPU["gates3|$cipher|$op"]}")")" \
          "$(per_gib "$(med "${CPU["gate|$cipher|$op"]}")")" \
          "$(per_gib "$(med "${CPU["openssh|$cipher|$op"]}")")" \
          "$(per_gib "$(med "${MCPU["gates3|$cipher|$op"]}")")"
      done
    done
    echo
    echo "Throughput ratios > 1 mean sftpgate on S3 is faster. A resume on S3 starts a new multipart upload whose first parts are server-side copies of the closed half (upload-part-copy), then sends the rest."
  fi
  echo
  echo "sftpgate peak RSS: $((PEAK_XFER / 1024)) MiB during the ${SIZE_MB} MiB transfers, $((PEAK_CONC / 1024)) MiB during the $CONC concurrent uploads."
  echo
  echo "Every run, in seconds (A B A B order), to show the spread behind each median:"
  echo
  echo "| test | cipher | sftpgate | OpenSSH |$([ "$STORAGE" = s3 ] && echo " sftpgate on S3 |")"
  echo "|---|---|---|---|$([ "$STORAGE" = s3 ] && echo "---|")"
  for cipher in $CIPHERS; do
    for op in ${OPS:-up down resume}; do
      printf "| %s | %s | %s | %s |" "$op" "${cipher%%@*}" \
        "$(printf '%.2f ' ${TIME["gate|$cipher|$op"]})" "$(printf '%.2f ' ${TIME["openssh|$cipher|$op"]})"
      [ "$STORAGE" = s3 ] && printf " %s |" "$(printf '%.2f ' ${TIME["gates3|$cipher|$op"]})"
      echo
    done
  done
  echo "Medians of $RUNS runs each, A B A B; every file verified by sha256. sftpgate's store: ${STORE:-file}; storage: file$([ "$STORAGE" = s3 ] && echo " and S3 (moto)")$([ "$STORE" = postgres ] && echo " (a throwaway cluster on this machine, bench/pg.sh, default durability)")."
} >"$table"
cat "$table"
if [ "$RESULTS" != "-" ]; then
  {
    echo "# sftpgate vs OpenSSH sshd"
    echo
    echo "Run $(date -u +%Y-%m-%dT%H:%MZ) by bench/compare-openssh.sh on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))."
    echo "Versions: $("$GATE" --version), $(ssh -V 2>&1) client, openssh-server $(dpkg-query -W -f='${Version}' openssh-server 2>/dev/null || echo '?'), $(rustc --version)."
    echo "Throughput is MB/s (10^6 bytes); ratio > 1 means sftpgate is faster (for logins, < 1 means faster)."
    echo
    cat "$table"
  } >"$RESULTS"
  echo "written to $RESULTS" >&2
fi
