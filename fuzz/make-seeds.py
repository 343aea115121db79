#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/<target>/ (small, hand-made, hostile on purpose).

Regenerate with `python3 fuzz/make-seeds.py`; it only (re)writes the `seed-*` files, so
inputs kept from crashes (`crash-*`, `harness-*`) and anything else in the corpus dirs stay.
"""

import gzip
import hashlib
import io
import json
import os
import struct
import subprocess
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))


def out(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# --- tar layers -------------------------------------------------------------------------

def member(name, kind=tarfile.REGTYPE, data=b"", link="", mode=0o644, dev=(0, 0), pax=None):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.mtime = 1700000000
    ti.linkname = link
    ti.devmajor, ti.devminor = dev
    ti.size = len(data) if kind == tarfile.REGTYPE else 0
    if pax:
        ti.pax_headers = pax
    return ti, data


def tar(members, fmt=tarfile.GNU_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for ti, data in members:
            t.addfile(ti, io.BytesIO(data) if data else None)
    raw = buf.getvalue()
    # End-of-archive blocks and record padding are only bulk to a fuzzer.
    body = raw.rstrip(b"\0")
    return body + b"\0" * (-len(body) % 512)


D, F, S, H = tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE

# With its end-of-archive blocks, as tools write it.
basic = tar([
    member("./", D, mode=0o755),
    member("d/", D, mode=0o755),
    member("d/f", F, b"hello\n", mode=0o4755),
    member("d/l", S, link="f"),
    member("d/h", H, link="d/f"),
    member("p", tarfile.FIFOTYPE),
]) + b"\0" * 1024
out("unpack", "basic.tar", basic)
out("unpack", "basic.tar.gz", gzip.compress(basic, mtime=0))
try:
    zst = subprocess.run(["zstd", "-q", "-c"], input=basic, capture_output=True, check=True).stdout
    out("unpack", "basic.tar.zst", zst)
except (OSError, subprocess.CalledProcessError):
    pass
out("unpack", "dotdot.tar", tar([member("../canary/evil", F, b"x"), member("a/../../evil", F, b"x")]))
out("unpack", "absolute.tar", tar([member("/canary/evil", F, b"x")]))
out("unpack", "symlink-escape.tar", tar([
    member("a", S, link="../canary"),
    member("a/evil", F, b"x"),
    member("d/", D),
    member("d/up", S, link="../../canary"),
    member("d/up/evil", F, b"x"),
]))
out("unpack", "symlink-absolute.tar", tar([
    member("b", S, link="/proc/self/cwd/canary"),
    member("b/evil", F, b"x"),
    member("c", S, link="/"),
    member("c/tmp/evil", F, b"x"),
]))
out("unpack", "symlink-in-root.tar", tar([
    member("d/", D),
    member("d/e/", D),
    member("d/e/up", S, link="../../x"),
    member("x/", D),
    member("d/e/up/f", F, b"fine: stays in the root"),
]))
out("unpack", "hardlink-out.tar", tar([
    member("h", H, link="../canary/secret"),
    member("h2", H, link="/proc/self/cwd/canary/secret"),
    member("s", S, link=".."),
    member("x", H, link="s/canary/secret"),
]))
out("unpack", "devices.tar", tar([
    member("null", tarfile.CHRTYPE, dev=(1, 3), mode=0o666),
    member("sda", tarfile.BLKTYPE, dev=(8, 0), mode=0o660),
    member("fifo", tarfile.FIFOTYPE),
]))
out("unpack", "whiteouts.tar", tar([
    member("d/", D),
    member("d/x", F, b"x"),
    member("d/.wh.x", F),
    member("d/.wh..wh..opq", F),
    member(".wh..wh.plnk/", D),
    member(".wh.", F),
    member("e/.wh...", F),
]))
out("unpack", "longnames.tar", tar([
    member("n/" + "a" * 200 + "/" + "b" * 150, F, b"gnu longname"),
    member("l" * 120, S, link="t" * 300),
]))
out("unpack", "pax.tar", tar([
    member("p" * 150 + "/file", F, b"pax path", pax={"path": "q" * 150 + "/file"}),
    member("x", F, b"x", pax={
        "SCHILY.xattr.user.note": "v",
        "SCHILY.xattr.security.capability": "\x01\x00\x00\x02",
        "uid": "1000", "gid": "1000", "mtime": "1.5",
    }),
    member("o/", D, pax={"SCHILY.xattr.trusted.overlay.opaque": "y"}),
], fmt=tarfile.PAX_FORMAT))
out("unpack", "replace.tar", tar([
    member("x", F, b"file first"),
    member("x/", D),
    member("x/y", F, b"y"),
    member("z/", D),
    member("z/child", F, b"c"),
    member("z", F, b"file replaces dir"),
    member("q", S, link="d"),
    member("q/", D),
    member("q/r", F, b"r"),
    member("d/", D),
    member("d", H, link="z"),
]))

# --- manifests, indexes, configs --------------------------------------------------------

dg = "sha256:" + "a" * 64
dg2 = "sha256:" + "0123456789abcdef" * 4
desc = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": dg, "size": 7}
layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": dg2, "size": 32}
out("manifest", "oci-manifest.json", json.dumps({
    "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": desc, "layers": [layer, dict(layer, mediaType="application/vnd.oci.image.layer.v1.tar+zstd")],
    "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
}))
out("manifest", "docker-manifest.json", json.dumps({
    "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
    "config": dict(desc, mediaType="application/vnd.docker.container.image.v1+json"),
    "layers": [dict(layer, mediaType="application/vnd.docker.image.rootfs.diff.tar.gzip",
                    urls=["https://example.com/l"])],
}))
out("manifest", "oci-index.json", json.dumps({
    "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": dg, "size": 500,
         "platform": {"architecture": "amd64", "os": "linux"}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": dg2, "size": 501,
         "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"},
         "annotations": {"a": 1.5e300, "b": [None, True, -0.0]}},
    ],
}))
out("manifest", "index-no-type.json", json.dumps({
    "schemaVersion": 2, "manifests": [{"digest": dg, "size": 1}]}))
out("manifest", "config.json", json.dumps({
    "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
    "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
    "rootfs": {"type": "layers", "diff_ids": [dg, dg2]},
    "history": [{"created_by": "ADD x", "empty_layer": True}, {"comment": "c"}],
}))
out("manifest", "schema1.json", '{"schemaVersion":1,"name":"x","fsLayers":[]}')
out("manifest", "bad-digest.json", json.dumps({
    "schemaVersion": 2, "config": dict(desc, digest="sha256:../../../etc/passwd"), "layers": []}))

# --- config.json ------------------------------------------------------------------------

minimal = {
    "ociVersion": "1.2.0",
    "process": {"args": ["/bin/sh"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                "env": ["PATH=/bin"]},
    "root": {"path": "rootfs"},
    "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]},
}
out("spec", "minimal.json", json.dumps(minimal))
full = json.loads(json.dumps(minimal))
full["hostname"] = "box"
full["process"].update({
    "terminal": True,
    "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 4096}],
    "capabilities": {"bounding": ["CAP_CHOWN", "CAP_KILL"], "effective": ["CAP_CHOWN"]},
    "noNewPrivileges": True, "oomScoreAdj": 100,
})
full["mounts"] = [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "nodev", "mode=1777", "size=65536k"]},
    {"destination": "/data", "type": "bind", "source": "/srv", "options": ["rbind", "ro", "rprivate"]},
]
full["linux"].update({
    "namespaces": [{"type": t} for t in ["pid", "mount", "uts", "ipc", "network", "cgroup"]],
    "sysctl": {"net.ipv4.ip_forward": "1", "kernel.shmmax": "1"},
    "rootfsPropagation": "rslave",
    "maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"],
    "resources": {
        "memory": {"limit": 1 << 28, "reservation": 1 << 27, "swap": 1 << 29},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1"},
        "pids": {"limit": 100},
        "devices": [{"allow": False, "access": "rwm"}, {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"}],
        "unified": {"memory.high": "max"},
    },
    "seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
                "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
                "syscalls": [{"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"}]},
})
out("spec", "full.json", json.dumps(full))
userns = json.loads(json.dumps(minimal))
userns["linux"].update({
    "namespaces": [{"type": "user"}, {"type": "pid"}, {"type": "mount"}, {"type": "time"},
                   {"type": "network", "path": "/proc/1/ns/net"}],
    "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
    "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
    "timeOffsets": {"monotonic": {"secs": 10, "nanosecs": 0}},
    "personality": {"domain": "LINUX32"},
})
out("spec", "userns.json", json.dumps(userns))

# --- seccomp profiles -------------------------------------------------------------------

out("seccomp_compile", "small.json", json.dumps({
    "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
    "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "syscalls": [
        {"names": ["read", "write", "close", "futex", "nosuchcall"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                  {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
        {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
        {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
         "args": [{"index": 0, "value": 16, "op": "SCMP_CMP_NE"}, {"index": 2, "value": 9, "op": "SCMP_CMP_GT"}]},
    ],
}))
out("seccomp_compile", "notify.json", json.dumps({
    "defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock",
    "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
    "syscalls": [{"names": ["mkdir", "mount"], "action": "SCMP_ACT_NOTIFY"},
                 {"names": ["ptrace"], "action": "SCMP_ACT_KILL_PROCESS"},
                 {"names": ["kill"], "action": "SCMP_ACT_TRACE", "errnoRet": 5},
                 {"names": ["reboot"], "action": "SCMP_ACT_TRAP"},
                 {"names": ["uname"], "action": "SCMP_ACT_LOG"}],
}))
out("seccomp_compile", "log-default.json", json.dumps({
    "defaultAction": "SCMP_ACT_LOG", "architectures": ["SCMP_ARCH_AARCH64"],
    "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_KILL"}]}))

# --- WWW-Authenticate -------------------------------------------------------------------

for i, h in enumerate([
    'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull"',
    'Basic realm="Registry Realm"',
    'bearer realm=https://r/t, service=x ,scope="a:b:pull,push"',
    'Bearer realm="a\\"b\\\\c",scope=',
    'Negotiate',
    'Bearer realm="unterminated',
    'Bearer =,,=="",realm',
]):
    out("www_authenticate", f"{i}.txt", h)
# NUL-separated realm, service and scope: the target's round-trip half quotes them itself.
out("www_authenticate", "parts.txt", 'https://auth/token?a=b,c\0registry "x"\0repository:a/b:pull,push\\')

# --- parent/child channel ---------------------------------------------------------------

def msg(tag, arg=0, text=b"", version=1):
    return bytes([version, tag, 0, 0]) + struct.pack("=i", arg) + text

for name, m in [
    ("continue", msg(1)), ("run-hooks", msg(2)), ("ready", msg(3)),
    ("failed", msg(4, 0, "mount /proc: EPERM \u00e9".encode())),
    ("failed-bad-utf8", msg(4, 0, b"\xff\xfe cut \xe2\x82")),
    ("pid", msg(5, 4242)), ("listener", msg(6)), ("write-maps", msg(7, -1)), ("reparent", msg(8, 77)),
    ("bad-version", msg(1, version=2)), ("bad-tag", msg(99)), ("short", b"\x01\x03\0"),
]:
    out("channel", name, m)

# --- seccomp cache files ----------------------------------------------------------------

RET_ALLOW = struct.pack("<HBBI", 6, 0, 0, 0x7FFF0000)
LD_NR = struct.pack("<HBBI", 0x20, 0, 0, 0)
JEQ = struct.pack("<HBBI", 0x15, 0, 1, 59)
RET_ERRNO = struct.pack("<HBBI", 6, 0, 0, 0x00050001)


def cache_body(flags, listener, insns):
    return b"VSCMPv1\0" + struct.pack("<III", flags, listener, len(insns)) + b"".join(insns)


# The target appends a correct checksum itself, so a body alone reaches the checks behind
# it; the sealed files are cache files exactly as `Cache` writes them.
prog = [LD_NR, JEQ, RET_ERRNO, RET_ALLOW]
for name, body in [
    ("plain", cache_body(0, 0, prog)),
    ("flags", cache_body(3, 0, prog)),
    ("listener", cache_body(8, 1, prog)),
]:
    out("seccomp_cache", name + ".body", body)
    out("seccomp_cache", name + ".sealed", body + hashlib.sha256(body).digest())
