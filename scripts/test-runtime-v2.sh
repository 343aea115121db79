#!/usr/bin/env bash
# vessel-runtime's root integration tests on a pure cgroup v2 host: built here, run inside the
# small VM that ../shared/tools/vm-run boots with only the unified hierarchy mounted.
set -euo pipefail
cd "$(dirname "$0")/.."
vm_run=../shared/tools/vm-run
if [ ! -x "$vm_run" ]; then
  echo "test-runtime-v2: $vm_run not found; cannot test cgroup v2" >&2
  exit 1
fi
bins=$(cargo test -p vessel-runtime --no-run --locked --message-format=json 2>/dev/null \
  | jq -r 'select(.reason == "compiler-artifact" and .profile.test == true and .target.kind == ["test"]) | .executable' \
  | grep -E '/(lifecycle|isolation|bad_input|hooks|console)-[0-9a-f]+$')
[ -n "$bins" ] || { echo "test-runtime-v2: no test binaries built" >&2; exit 1; }
script='set -e; mount | grep -q "cgroup2 on /sys/fs/cgroup " || { echo "guest is not pure cgroup v2"; exit 1; }; '
for b in $bins; do
  script+="echo \"== v2: $(basename "$b")\"; $b --test-threads 2; "
done
"$vm_run" --mem 2G -- bash -c "$script"
