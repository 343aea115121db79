#!/usr/bin/env python3
"""Side-by-side lifecycle benchmark: vessel-runtime vs crun vs runc.

Each run is `RUNTIME --root R run --bundle B ID` of a busybox /bin/true bundle (create, start,
wait, delete), the same bundle for every runtime. Per run we record wall time, CPU time
(user+sys of the runtime and everything it waited for, from wait4) and peak RSS. Runtimes
are measured in alternating blocks in one process so they share the machine's state; the
report prints medians and ratios against crun. Timings are printed, never asserted.

Usage: bench/runtime.py [--runs 50] [--batch 100] [--vessel PATH] [--also NAME=PATH ...]

--also adds another runtime binary to the same run (e.g. a build of an earlier commit), so a
change is measured against its baseline on the same machine state.
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time

def busybox():
    for p in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(p):
            return p
    sys.exit("busybox-static is not installed")

def make_bundle(d, vessel):
    rootfs = os.path.join(d, "rootfs")
    os.makedirs(os.path.join(rootfs, "bin"))
    shutil.copy(busybox(), os.path.join(rootfs, "bin/busybox"))
    for a in ("true", "sh"):
        os.symlink("busybox", os.path.join(rootfs, "bin", a))
    subprocess.run([vessel, "spec", "--bundle", d], check=True)
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    cfg["ociVersion"] = "1.0.2"  # crun 1.8 refuses newer version strings
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = ["/bin/true"]
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)

def one_run(cmd):
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.exit(f"{cmd[0]} failed: {p.stderr.read().decode()}")
    return wall, ru.ru_utime + ru.ru_stime

def peak_rss_kb(cmd):
    """Peak RSS of the runtime process tree, from GNU time (wait4's maxrss would include
    the forked Python interpreter before exec)."""
    r = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return int(r.stderr.strip().splitlines()[-1])

def ensure_hugetlb_v1():
    """crun refuses hybrid hosts while hugetlb sits on cgroup2; a v1 hugetlb mount fixes it."""
    path = "/sys/fs/cgroup/hugetlb"
    if os.path.isdir("/sys/fs/cgroup/unified") and not os.path.ismount(path):
        os.makedirs(path, exist_ok=True)
        r = subprocess.run(["mount", "-t", "cgroup", "-o", "hugetlb", "cgroup", path])
        return r.returncode == 0
    return False

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--vessel", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "vessel-runtime"))
    ap.add_argument("--also", action="append", default=[], metavar="NAME=PATH")
    args = ap.parse_args()
    vessel = os.path.abspath(args.vessel)
    runtimes = {"vessel-runtime": vessel}
    for extra in args.also:
        name, _, path = extra.partition("=")
        if not path:
            sys.exit(f"--also {extra}: expected NAME=PATH")
        runtimes[name] = os.path.abspath(path)
    for name in ("crun", "runc"):
        p = shutil.which(name)
        if p:
            runtimes[name] = p
    mounted = ensure_hugetlb_v1()
    work = tempfile.mkdtemp(prefix="vessel-bench-")
    try:
        bundle = os.path.join(work, "bundle")
        os.makedirs(bundle)
        make_bundle(bundle, vessel)
        counter = [0]
        def cmd(name):
            counter[0] += 1
            return [runtimes[name], "--root", os.path.join(work, "state-" + name), "run", "--bundle", bundle, f"vesselbench-{os.getpid()}-{counter[0]}"]
        results = {n: [] for n in runtimes}
        for n in runtimes:  # warm up page cache and the seccomp/bpf caches
            for _ in range(3):
                one_run(cmd(n))
        block = 10
        for i in range(0, args.runs, block):
            order = list(runtimes) if (i // block) % 2 == 0 else list(reversed(list(runtimes)))
            for n in order:
                for _ in range(min(block, args.runs - i)):
                    results[n].append(one_run(cmd(n)))
        batch = {}
        for n in runtimes:
            t0 = time.perf_counter()
            for _ in range(args.batch):
                one_run(cmd(n))
            batch[n] = time.perf_counter() - t0
        rss = {n: max(peak_rss_kb(cmd(n)) for _ in range(5)) for n in runtimes}
        med = {n: (statistics.median(r[0] for r in results[n]) * 1000,
                   statistics.median(r[1] for r in results[n]) * 1000,
                   rss[n] / 1024) for n in runtimes}
        base = "crun" if "crun" in med else None
        print(f"lifecycle of a busybox /bin/true container (create+start+wait+delete), {args.runs} runs each, medians")
        print(f"{'runtime':<16}{'wall ms':>9}{'cpu ms':>9}{'peak RSS MB':>13}{f'{args.batch} in a row s':>18}{'wall/crun':>11}{'cpu/crun':>10}{'batch/crun':>12}")
        for n, (w, c, rss) in med.items():
            rw = f"{w / med[base][0]:.2f}x" if base else "-"
            rc = f"{c / med[base][1]:.2f}x" if base else "-"
            rb = f"{batch[n] / batch[base]:.2f}x" if base else "-"
            print(f"{n:<16}{w:>9.2f}{c:>9.2f}{rss:>13.1f}{batch[n]:>18.2f}{rw:>11}{rc:>10}{rb:>12}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if mounted:
            subprocess.run(["umount", "/sys/fs/cgroup/hugetlb"])
            try:
                os.rmdir("/sys/fs/cgroup/hugetlb")
            except OSError:
                pass

if __name__ == "__main__":
    main()
