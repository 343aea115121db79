#!/usr/bin/env bash
# The cgroup and runtime root integration tests on a pure cgroup v2 host: built here, run
# inside the small VM that ../shared/tools/vm-run boots with only the unified hierarchy.
set -euo pipefail
cd "$(dirname "$0")/.."
vm_run=../shared/tools/vm-run
if [ ! -x "$vm_run" ]; then
  echo "test-v2: $vm_run not found; cannot test cgroup v2" >&2
  exit 1
fi
bins=$(cargo test -p vessel-cgroups -p vessel-runtime --no-run --locked --message-format=json 2>/dev/null \
  | jq -r 'select(.reason == "compiler-artifact" and .profile.test == true and .target.kind == ["test"]) | .executable' \
  | grep -E '/(manager|lifecycle|isolation|bad_input|hooks|console)-[0-9a-f]+$')
[ -n "$bins" ] || { echo "test-v2: no test binaries built" >&2; exit 1; }
script='set -e; mount | grep -q "^cgroup2 on /sys/fs/cgroup " || { echo "guest is not pure cgroup v2"; mount | grep cgroup; exit 1; }; '
for b in $bins; do
  script+="echo \"== cgroup v2 guest: $(basename "$b")\"; $b --test-threads 2; "
done
# Under TCG the guest boots slowly on a busy 2-core host: allow it time.
VM_RUN_BOOT_TIMEOUT="${VM_RUN_BOOT_TIMEOUT:-600}" "$vm_run" --mem 2G -- bash -c "$script"
