#!/usr/bin/env python3
"""Builds the pull benchmark image as an OCI layout: 4 gzip layers of real binaries and
libraries from /usr/lib (~300 MB compressed in total), so compression ratios look like a
real image's. Deterministic for a given host: sorted file list, fixed mtimes."""
import gzip, hashlib, io, json, os, sys, tarfile

out = sys.argv[1]
target_mb = float(sys.argv[2]) if len(sys.argv) > 2 else 300.0
layers_n = 4
per_layer = target_mb * 1e6 / layers_n

files = []
for base in ["/usr/lib", "/usr/share", "/usr/bin"]:
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for f in sorted(filenames):
            p = os.path.join(dirpath, f)
            if os.path.isfile(p) and not os.path.islink(p):
                files.append(p)

os.makedirs(f"{out}/blobs/sha256", exist_ok=True)

def put(data):
    d = hashlib.sha256(data).hexdigest()
    with open(f"{out}/blobs/sha256/{d}", "wb") as f:
        f.write(data)
    return "sha256:" + d, len(data)

descs, diff_ids, it = [], [], iter(files)
for i in range(layers_n):
    raw = io.BytesIO()
    comp = io.BytesIO()
    gz = gzip.GzipFile(fileobj=comp, mode="wb", compresslevel=6, mtime=0)
    class Tee:
        def write(self, b):
            raw_hash.update(b)
            gz.write(b)
            return len(b)
    raw_hash = hashlib.sha256()
    tf = tarfile.open(fileobj=Tee(), mode="w|", format=tarfile.PAX_FORMAT)
    for p in it:
        try:
            ti = tf.gettarinfo(p, arcname=f"layer{i}" + p)
        except OSError:
            continue
        ti.mtime = 1700000000
        try:
            with open(p, "rb") as fh:
                tf.addfile(ti, fh)
        except OSError:
            continue
        if comp.tell() >= per_layer:
            break
    tf.close()
    gz.close()
    data = comp.getvalue()
    diff_ids.append("sha256:" + raw_hash.hexdigest())
    d, s = put(data)
    descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": s})
    print(f"layer {i}: {s/1e6:.1f} MB compressed", file=sys.stderr)

cfg = json.dumps({"architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
                  "config": {"Cmd": ["/bin/sh"]},
                  "rootfs": {"type": "layers", "diff_ids": diff_ids},
                  "history": [{"created_by": "bench"} for _ in descs]}).encode()
cd, cs = put(cfg)
man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                  "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
                  "layers": descs}).encode()
md, ms = put(man)
with open(f"{out}/index.json", "w") as f:
    json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
               "digest": md, "size": ms, "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}, f)
with open(f"{out}/oci-layout", "w") as f:
    f.write('{"imageLayoutVersion":"1.0.0"}')
