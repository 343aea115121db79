#!/usr/bin/env bash
# The vessel-cgroups integration tests on a pure cgroup v2 host. This host mounts v1 (hybrid),
# so the test binary is built here and run inside the small VM that vm-run boots with only
# the unified hierarchy; the guest sees the working tree at the same path. The guest run ends
# with a leak check: no cgroup named *vessel* may be left behind.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/h-cgroups}"

vm_run="${VM_RUN:-$PWD/../shared/tools/vm-run}"
[ -x "$vm_run" ] || { echo "test-cgroup-v2: $vm_run not found; cannot test cgroup v2" >&2; exit 1; }

# A fresh CI machine needs qemu and a Debian kernel for the guest (vm-run could install them
# itself; doing it here keeps the step visible and fails early).
if ! command -v qemu-system-x86_64 >/dev/null || ! ls /boot/vmlinuz-* >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq qemu-system-x86 linux-image-amd64
fi
command -v jq >/dev/null || { export DEBIAN_FRONTEND=noninteractive; apt-get install -y -qq jq; }

bin=$(cargo test -p vessel-cgroups --test manager --no-run --message-format=json \
  | jq -r 'select(.reason == "compiler-artifact" and .target.name == "manager" and .executable != null) | .executable' \
  | tail -n 1)
[ -n "$bin" ] && [ -x "$bin" ] || { echo "test-cgroup-v2: the manager test binary was not built" >&2; exit 1; }

guest=$(cat <<GUEST
set -e
grep -q '^cgroup2 /sys/fs/cgroup ' /proc/mounts || { echo 'guest is not pure cgroup v2'; grep cgroup /proc/mounts; exit 1; }
rc=0
"$bin" --test-threads 2 || rc=\$?
leaks=\$(find /sys/fs/cgroup -mindepth 1 -type d -name '*vessel*' 2>/dev/null || true)
if [ -n "\$leaks" ]; then echo "LEAK: cgroups left behind:"; echo "\$leaks"; rc=1; else echo 'leak check: clean'; fi
exit \$rc
GUEST
)
start=$(date +%s)
rc=0
VM_RUN_BOOT_TIMEOUT="${VM_RUN_BOOT_TIMEOUT:-600}" "$vm_run" --mem 1G -- bash -c "$guest" || rc=$?
echo "test-cgroup-v2: guest run took $(( $(date +%s) - start ))s, exit $rc"
exit "$rc"
