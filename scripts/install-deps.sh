#!/usr/bin/env bash
# System packages vessel's build, demo and test suite need on Debian 12. Idempotent.
set -euo pipefail
packages=(
  build-essential pkg-config libseccomp-dev   # build (libseccomp for the seccomp crate)
  libzstd-dev                                 # scripts/fuzz.sh links it (shorter cold build)
  busybox-static                              # offline test images and bundles
  runc crun                                   # side-by-side runtimes (tests, bench)
  criu                                        # checkpoint/restore (vessel-runtime checkpoint/restore)
  podman conmon uidmap containernetworking-plugins catatonit  # podman drives vessel-runtime
  tini                                        # side-by-side control for vessel-init (tests)
  containerd                                  # ctr drives vessel-runtime
  skopeo docker-registry                      # registry interop
  nftables iproute2 procps psmisc jq hyperfine time
  qemu-system-x86 linux-image-amd64 cpio kmod # the cgroup v2 guest (../shared/tools/vm-run)
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
if ! command -v cargo >/dev/null; then
  echo "cargo is not installed: install Rust (rustup) first" >&2
  exit 1
fi
