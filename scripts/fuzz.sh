#!/usr/bin/env bash
# Fuzz the parsers of untrusted input (fuzz/fuzz_targets/*.rs): build every target with
# libFuzzer's coverage instrumentation, then run each for SECONDS (default 60), starting from
# the seed corpus in fuzz/corpus/<target>/ (which holds every crash found so far, so each
# run is also their regression test). Fails if any target crashes, panics or times out;
# the input is left in fuzz/artifacts/<target>/ — add it to the corpus with the fix.
#
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Built with plain cargo and the flags cargo-fuzz passes for `-s none` (no sanitizer: the
# code under test is safe Rust over libc calls; panics, aborts and hangs are what we look
# for). They are all stable flags, so this needs neither nightly nor RUSTC_BOOTSTRAP, and
# CI saves the ~40 s `cargo install cargo-fuzz` takes on two cores. With cargo-fuzz
# installed, `cargo fuzz run <target> -s none` in fuzz/ works on the same files.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
all=(unpack manifest spec seccomp_compile www_authenticate channel seccomp_cache)
targets=("${@:-${all[@]}}")

triple="$(rustc -vV | sed -n 's/^host: //p')"
# cargo-fuzz 0.13's flags for `-s none`, less its -Ccodegen-units=1 (which serializes the
# compile of each crate: CI pays for cold builds, and the targets are fast enough).
flags=(
  -Cpasses=sancov-module
  -Cllvm-args=-sanitizer-coverage-level=4
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
  -Cllvm-args=-sanitizer-coverage-pc-table
  -Cllvm-args=-sanitizer-coverage-trace-compares
  -Cllvm-args=-sanitizer-coverage-stack-depth
  -Cllvm-args=-simplifycfg-branch-fold-threshold=0
  -Cdebug-assertions
  -Coverflow-checks
  --cfg fuzzing
)
export RUSTFLAGS="${flags[*]}"
export CARGO_TARGET_DIR="$PWD/fuzz/target"
# Link the system's libzstd (libzstd-dev) instead of compiling zstd's C sources: a fifth of
# a cold build, for a library that is not what is being fuzzed. (The main build keeps the
# vendored one.)
if pkg-config --exists libzstd 2>/dev/null; then
  export ZSTD_SYS_USE_PKG_CONFIG=1
fi
# --target keeps RUSTFLAGS off build scripts and proc macros (as cargo-fuzz does).
bins=()
for t in "${targets[@]}"; do bins+=(--bin "$t"); done
cargo build --manifest-path fuzz/Cargo.toml --locked --release --target "$triple" "${bins[@]}"

# The unpack target writes layers into temp dirs: keep them in one place we remove.
scratch="$(mktemp -d "${TMPDIR:-/tmp}/vessel-fuzz.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT

failed=()
for t in "${targets[@]}"; do
  # Absolute paths: the unpack target changes its working directory.
  seeds="$PWD/fuzz/corpus/$t"
  # New inputs go to a work corpus, fresh each run unless VESSEL_FUZZ_KEEP_CORPUS=1 keeps it
  # in fuzz/target/corpus (a corpus grown over many runs takes long to load, which would
  # eat the few seconds CI gives each target); the seeds stay as they are.
  if [ "${VESSEL_FUZZ_KEEP_CORPUS:-0}" = 1 ]; then
    work="$PWD/fuzz/target/corpus/$t"
  else
    work="$scratch/corpus-$t"
  fi
  artifacts="$PWD/fuzz/artifacts/$t"
  mkdir -p "$seeds" "$work" "$artifacts" "$scratch/$t"
  echo "== fuzz $t for ${secs}s"
  log="$scratch/$t.log"
  if TMPDIR="$scratch/$t" "fuzz/target/$triple/release/$t" \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -print_final_stats=1 -artifact_prefix="$artifacts/" \
      "$work" "$seeds" >"$log" 2>&1; then
    grep -E "^(Done [0-9]+ runs|#[0-9]+\s+(INITED|DONE)|stat::number_of_executed_units|stat::average_exec_per_sec)" "$log" || true
  else
    tail -n 40 "$log"
    echo "== fuzz $t FAILED: the input is in $artifacts/" >&2
    failed+=("$t")
  fi
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: crashes in ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, ${secs}s each, no crashes"
