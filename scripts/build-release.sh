#!/usr/bin/env bash
# Release build of vessel-runtime, the binary every container start runs (three times for a
# `create`/`start`/`delete`, twice more for its protected re-exec): a static PIE. Without
# the dynamic loader, libc's relocations and libseccomp's, each start is ~0.4 ms cheaper on
# these machines, which is a twentieth of a container's lifecycle. ASLR stays (PIE).
#
# Also builds vessel-init (`--init`) the same way: it is bind-mounted into arbitrary images,
# which may have no libc or a different one, so it must not need a dynamic loader at all.
#
# Prints the path of vessel-runtime on stdout (its only line: callers do
# RT=$(scripts/build-release.sh)), and the path of vessel-init on stderr as
# "vessel-init: PATH" (it sits next to vessel-runtime). Static glibc is fine for both:
# neither resolves user, group or host names (no NSS).
set -euo pipefail
cd "$(dirname "$0")/.."
triple=$(rustc -vV | sed -n 's/^host: //p')
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
# An explicit --target keeps RUSTFLAGS off build scripts and proc-macros, which cannot be
# static, and puts the static build in its own directory (target/$triple).
LIBSECCOMP_LINK_TYPE=static \
LIBSECCOMP_LIB_PATH="$(pkg-config --variable=libdir libseccomp)" \
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked --target "$triple" -p vessel-runtime -p vessel-init >&2
out="$target_dir/$triple/release"
# A dynamic vessel-init would fail inside images without a matching loader: refuse it.
if readelf -l "$out/vessel-init" | grep -q 'program interpreter'; then
  echo "build-release: $out/vessel-init is not static" >&2
  exit 1
fi
echo "vessel-init: $out/vessel-init" >&2
echo "$out/vessel-runtime"
