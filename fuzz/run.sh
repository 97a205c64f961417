#!/usr/bin/env bash
# Builds the fuzz targets (release, debug assertions on, no sanitizer: stable Rust) and
# runs each for SECONDS (default 30), one after the other on one core, from its committed
# seeds in fuzz/corpus/<target>. New inputs go to fuzz/target/corpus/<target> (kept
# between runs, not committed); a crash is written to fuzz/artifacts/<target>/ and fails
# the script. Usage: fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-30}
shift || true
targets=("$@")
((${#targets[@]})) || mapfile -t targets < <(cargo fuzz list)

# Fuzz builds use other flags than the main crate's: their own target dir.
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$PWD/target}
cargo fuzz build --sanitizer none --release --debug-assertions
bin=$CARGO_TARGET_DIR/$(rustc -vV | sed -n 's/^host: //p')/release

failed=()
for t in "${targets[@]}"; do
  mkdir -p "$CARGO_TARGET_DIR/corpus/$t" "artifacts/$t"
  echo "== $t: ${seconds}s"
  # -rss_limit_mb makes memory amplification a crash; the SFTP target also counts its
  # own allocations per input (SFTPGATE_FUZZ_MEM_MB). -timeout makes a hang one.
  if ! "$bin/$t" -max_total_time="$seconds" -rss_limit_mb=512 -timeout=10 \
    -max_len=65536 -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" \
    "$CARGO_TARGET_DIR/corpus/$t" "corpus/$t" 2>"$CARGO_TARGET_DIR/$t.log"; then
    grep -v '^WARNING: Failed to find function' "$CARGO_TARGET_DIR/$t.log" | tail -40
    failed+=("$t")
  fi
  grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb)' "$CARGO_TARGET_DIR/$t.log" || true
done
if ((${#failed[@]})); then
  echo "fuzz targets crashed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
