#!/usr/bin/env bash
# Cold and warm pull of a ~300 MB, 4-layer gzip image from docker-registry on 127.0.0.1:
# vessel vs `skopeo copy` (to an OCI layout, no unpack) vs `podman pull` (fetch, verify,
# unpack), side by side in one run, plus the machine's limits for the same bytes, measured
# with vessel's own libraries on one thread (examples/pull_limits: SHA-256 of the layers,
# zlib-rs inflate, SHA-256 of the tar streams). Prints medians and ratios; never fails on
# timings.
#
#   bench/pull/run.sh [RUNS]        (default 3; needs root, docker-registry, skopeo, podman)
set -euo pipefail
RUNS=${1:-3}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${BENCH_RESULTS:-$REPO/bench/results}
mkdir -p "$OUT"
WORK=$(mktemp -d "$OUT/pull.XXXXXX")
VESSEL=${VESSEL:-$REPO/target/release/vessel}
[ -x "$VESSEL" ] || VESSEL=$REPO/target/h-image/release/vessel
[ -x "$VESSEL" ] || { echo "build vessel first: cargo build --release -p vessel-cli (or set VESSEL=)"; exit 1; }
LIMITS=${LIMITS:-$REPO/target/release/examples/pull_limits}
[ -x "$LIMITS" ] || { echo "build the limits first: cargo build --release -p vessel-image --example pull_limits"; exit 1; }

cleanup() {
  [ -n "${REG_PID:-}" ] && kill "$REG_PID" 2>/dev/null && wait "$REG_PID" 2>/dev/null || true
  grep -o " $WORK[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

IMAGE=$OUT/image
if [ ! -f "$IMAGE/index.json" ]; then
  echo "building the benchmark image (once, cached in $IMAGE)…"
  python3 "$HERE/make_image.py" "$IMAGE" 300
fi

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$WORK/registry.yml" <<YML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/registry
http:
  addr: 127.0.0.1:$PORT
YML
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
REG_PID=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/v2/" >/dev/null && break; sleep 0.1; done
REF=127.0.0.1:$PORT/vesseltest/bench:latest
skopeo copy -q --dest-tls-verify=false "oci:$IMAGE:latest" "docker://$REF"

cat > "$WORK/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
cgroup_manager = "cgroupfs"
CONF
export CONTAINERS_CONF=$WORK/containers.conf

BYTES=$(python3 - "$IMAGE" <<'PY'
import json, sys
d = sys.argv[1]
idx = json.load(open(f"{d}/index.json"))
m = json.load(open(f"{d}/blobs/sha256/" + idx["manifests"][0]["digest"][7:]))
print(sum(l["size"] for l in m["layers"]))
PY
)
LAYERS=$(python3 - "$IMAGE" <<'PY'
import json, sys
d = sys.argv[1]
idx = json.load(open(f"{d}/index.json"))
m = json.load(open(f"{d}/blobs/sha256/" + idx["manifests"][0]["digest"][7:]))
print(" ".join(f"{d}/blobs/sha256/" + l["digest"][7:] for l in m["layers"]))
PY
)

now() { date +%s.%N; }
declare -A T
record() { T[$1]="${T[$1]:-} $2"; }
timeit() { local s e; s=$(now); "$@" >/dev/null 2>"$WORK/last.err" || { cat "$WORK/last.err"; exit 1; }; e=$(now); echo "$e - $s" | bc; }

podman_reset() {
  grep -o " $WORK/podman[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$WORK/podman" "$WORK/podman-run"
}

for run in $(seq "$RUNS"); do
  rm -rf "$WORK/vessel"; sync
  record vessel "$(timeit "$VESSEL" --root "$WORK/vessel" --runroot "$WORK/vessel-run" pull -q "$REF")"
  record vessel_warm "$(timeit "$VESSEL" --root "$WORK/vessel" --runroot "$WORK/vessel-run" pull -q "$REF")"

  rm -rf "$WORK/skopeo"; sync
  record skopeo "$(timeit skopeo copy -q --src-tls-verify=false "docker://$REF" "oci:$WORK/skopeo:latest")"

  podman_reset; sync
  record podman "$(timeit podman --root "$WORK/podman" --runroot "$WORK/podman-run" --storage-driver overlay pull -q --tls-verify=false "$REF")"
  podman_reset

  # The machine's limits for the same bytes, single-threaded, with vessel's libraries.
  "$LIMITS" $LAYERS > "$WORK/limits"
  for k in sha256_compressed inflate sha256_inflated; do
    record "$k" "$(awk -v k=$k '$1 == k {print $2}' "$WORK/limits")"
  done
  record floor "$(awk '$1 ~ /^(sha256_compressed|inflate|sha256_inflated)$/ {s += $2} END {print s / 2}' "$WORK/limits")"
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
MB=$(echo "scale=1; $BYTES / 1000000" | bc)
printf '\ncold pull of %s MB in 4 gzip layers, %s runs, medians (registry on 127.0.0.1)\n\n' "$MB" "$RUNS"
printf '%-30s %10s %10s %12s\n' "what" "seconds" "MB/s" "vs vessel"
V=$(echo "${T[vessel]}" | median)
for k in vessel skopeo podman sha256_compressed inflate sha256_inflated floor; do
  m=$(echo "${T[$k]}" | median)
  label=$k
  case $k in
    vessel) label="vessel pull";;
    skopeo) label="skopeo copy (no unpack)";;
    podman) label="podman pull (overlay)";;
    sha256_compressed) label="limit: sha256 of layers";;
    inflate) label="limit: inflate (zlib-rs)";;
    sha256_inflated) label="limit: sha256 of tars";;
    floor) label="floor: the 3 above / 2 cores";;
  esac
  printf '%-30s %10.3f %10.0f %11.2fx\n' "$label" "$m" "$(echo "$MB / $m" | bc -l)" "$(echo "$m / $V" | bc -l)"
done
W=$(echo "${T[vessel_warm]}" | median)
printf '%-30s %10.3f\n' "vessel warm pull" "$W"
FASTER=$(for k in skopeo podman; do echo "${T[$k]}" | median; done | sort -n | head -1)
SLOW=$(echo "${T[inflate]}" | median)
FLOOR=$(echo "${T[floor]}" | median)
printf '\nvessel vs faster of skopeo/podman: %.2fx faster (goal >= 1.5x)\n' "$(echo "$FASTER / $V" | bc -l)"
printf 'vessel vs slowest machine stage (inflate): %.2fx its time (goal <= 1.5x)\n' "$(echo "$V / $SLOW" | bc -l)"
printf 'vessel vs the 2-core floor: %.2fx its time\n' "$(echo "$V / $FLOOR" | bc -l)"
