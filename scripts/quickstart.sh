#!/usr/bin/env bash
# The main job, offline: install what is needed, build vessel, make a busybox OCI bundle from
# Debian's busybox-static, and run a container in it with vessel-runtime.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
RT=$(bash scripts/build-release.sh)

work=$(mktemp -d /tmp/vessel-quickstart.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bundle/rootfs/bin"
cp "$(command -v busybox)" "$work/bundle/rootfs/bin/busybox"
for a in sh echo cat hostname id ls ps; do ln -s busybox "$work/bundle/rootfs/bin/$a"; done
cd "$work/bundle"
"$RT" spec
# A non-interactive demo: no terminal, and a command that shows it is isolated.
jq '.process.terminal = false
    | .process.args = ["sh", "-c", "echo hello from $(hostname); id; ps; ls /"]
    | .hostname = "vessel-demo"' config.json > config.json.new && mv config.json.new config.json
"$RT" --root "$work/state" run "quickstart-$$"
