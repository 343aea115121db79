#!/usr/bin/env bash
# The whole test suite, as CI runs it: install packages, lint, build, run every crate's
# tests as root on this host (cgroup v1/hybrid), run the cgroup v2 suite in the guest,
# then check that nothing leaked.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh

export CARGO_TERM_COLOR=never
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

# Build test binaries once, then run them; nextest runs each test in its own process, which
# suits tests that fork and mount.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast --test-threads 2
else
  cargo test --workspace --locked --no-fail-fast
fi

# The parsers of untrusted input, a few seconds each under libFuzzer (its seed corpus holds
# every crash found so far); `bash scripts/fuzz.sh` alone runs each for a minute.
bash scripts/fuzz.sh 5

# cgroup v2: the same suites inside a pure-v2 guest.
bash scripts/test-v2.sh

bash scripts/leak-check.sh
