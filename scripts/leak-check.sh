#!/usr/bin/env bash
# The suite's last step: fail if any test left host state behind. Tests name every
# host-global object with the "vesseltest-" prefix; vessel's own defaults use "vessel".
set -u
leaks=0
report() { if [ -n "$2" ]; then leaks=1; printf 'LEAK: %s:\n%s\n' "$1" "$(printf '%s\n' "$2" | head -n 20 | sed 's/^/    /')"; fi; }
report "mounts" "$(findmnt -rn -o TARGET,SOURCE,FSTYPE 2>/dev/null | grep -E 'vessel' )"
report "cgroups" "$(find /sys/fs/cgroup -maxdepth 4 -type d -name '*vessel*' 2>/dev/null)"
report "network links" "$(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | grep -E '^(vessel|vsl|vt-)')"
report "network namespaces" "$(ip netns list 2>/dev/null | grep -E 'vessel')"
report "nftables tables" "$(nft list tables 2>/dev/null | grep -i vessel)"
report "processes" "$(ps -eo pid,args 2>/dev/null | grep -E 'vessel-(monitor|init|runtime)|vesseltest' | grep -v -E 'grep|leak-check')"
if [ "$leaks" != 0 ]; then
  echo "leak check: FAILED (host state left behind by the tests)"
  exit 1
fi
echo "leak check: clean"
