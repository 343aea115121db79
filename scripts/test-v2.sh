#!/usr/bin/env bash
# The cgroup and runtime root integration tests on a pure cgroup v2 host: built here, run
# inside the small VM that ../shared/tools/vm-run boots with only the unified hierarchy.
set -euo pipefail
cd "$(dirname "$0")/.."
vm_run=$(realpath ../shared/tools/vm-run 2>/dev/null || echo ../shared/tools/vm-run)
if [ ! -x "$vm_run" ]; then
  echo "test-v2: $vm_run not found; cannot test cgroup v2" >&2
  exit 1
fi
bins=$(cargo test -p vessel-cgroups -p vessel-runtime --no-run --locked --message-format=json 2>/dev/null \
  | jq -r 'select(.reason == "compiler-artifact" and .profile.test == true and .target.kind == ["test"]) | .executable' \
  | grep -E '/(manager|lifecycle|isolation|bad_input|hooks|console|resources|rootless|escape_attacks|proc_hardening|crash_safety|hooks_io|lsm_rdt|delete_reports)-[0-9a-f]+$')
[ -n "$bins" ] || { echo "test-v2: no test binaries built" >&2; exit 1; }
# The guest's /tmp cannot hold unix sockets: give the tests a tmpfs of their own.
script='mount | grep -q "^cgroup2 on /sys/fs/cgroup " || { echo "guest is not pure cgroup v2"; mount | grep cgroup; exit 1; }; '
script+='mkdir -p /dev/shm/vesseltest && export TMPDIR=/dev/shm/vesseltest; failed=0; '
for b in $bins; do
  script+="echo \"== cgroup v2 guest: $(basename "$b")\"; $b --test-threads 2 || failed=1; "
done
# The guest's own leak check: no cgroup named *vessel* may be left behind.
script+='leaks=$(find /sys/fs/cgroup -mindepth 1 -type d -name "*vessel*" 2>/dev/null); '
script+='if [ -n "$leaks" ]; then echo "LEAK in the v2 guest: cgroups left behind:"; echo "$leaks"; failed=1; else echo "v2 guest leak check: clean"; fi; '
script+='exit $failed'

# vm-run shares its working directory read-write over 9p. The guest sees the host's / read-only
# anyway, which is all the test binaries need (they write only to the guest's /tmp): run it
# from an empty directory rather than share this tree and its large target/.
empty=$(mktemp -d)
trap 'rmdir "$empty"' EXIT
cd "$empty"
# On this host (TCG, no usable KVM) the default microvm machine often hangs before the kernel
# prints anything; q35 boots reliably. Exit status 125 means the VM itself failed: retry.
export VM_RUN_MACHINE="${VM_RUN_MACHINE:-q35}" VM_RUN_BOOT_TIMEOUT="${VM_RUN_BOOT_TIMEOUT:-180}"
for attempt in 1 2 3; do
  rc=0
  "$vm_run" --mem 2G -- bash -c "$script" || rc=$?
  [ "$rc" != 125 ] && exit "$rc"
  echo "test-v2: the VM failed to start (attempt $attempt), retrying" >&2
done
exit 125
