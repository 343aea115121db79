//! linux.resources: validation, then the v1 or v2 files.

use std::path::Path;

use oci_spec::runtime::LinuxResources;

use crate::fs::write;
use crate::{devices, CgroupManager, Error, Layout, Result};

fn invalid(msg: String) -> Error {
    Error::Invalid(msg)
}

pub fn validate(res: &LinuxResources, layout: Layout) -> Result<()> {
    if let Some(m) = res.memory() {
        if let (Some(limit), Some(swap)) = (m.limit(), m.swap()) {
            if limit > 0 && swap > 0 && swap < limit {
                return Err(invalid(format!(
                    "linux.resources.memory.swap: {swap} is below memory.limit {limit} (swap is memory+swap)"
                )));
            }
        }
        if let Some(s) = m.swappiness() {
            if s > 100 {
                return Err(invalid(format!(
                    "linux.resources.memory.swappiness: {s} is above 100"
                )));
            }
        }
        for (name, v) in [
            ("limit", m.limit()),
            ("reservation", m.reservation()),
            ("swap", m.swap()),
        ] {
            if let Some(v) = v {
                if v < -1 {
                    return Err(invalid(format!(
                        "linux.resources.memory.{name}: {v} is negative (-1 means unlimited)"
                    )));
                }
            }
        }
    }
    if let Some(c) = res.cpu() {
        if let Some(s) = c.shares() {
            if s != 0 && !(2..=262_144).contains(&s) {
                return Err(invalid(format!(
                    "linux.resources.cpu.shares: {s} is outside 2..262144"
                )));
            }
        }
        if let Some(p) = c.period() {
            if p != 0 && !(1000..=1_000_000).contains(&p) {
                return Err(invalid(format!(
                    "linux.resources.cpu.period: {p} is outside 1000..1000000 µs"
                )));
            }
        }
        if let Some(q) = c.quota() {
            if q != -1 && q != 0 && q < 1000 {
                return Err(invalid(format!(
                    "linux.resources.cpu.quota: {q} is below 1000 µs (-1 means unlimited)"
                )));
            }
        }
    }
    if let Some(b) = res.block_io() {
        if let Some(w) = b.weight() {
            if w != 0 && !(10..=1000).contains(&w) {
                return Err(invalid(format!(
                    "linux.resources.blockIO.weight: {w} is outside 10..1000"
                )));
            }
        }
    }
    if layout != Layout::V2 && res.unified().as_ref().is_some_and(|u| !u.is_empty()) {
        return Err(Error::Unsupported(
            "linux.resources.unified: needs a cgroup v2 host; this host uses cgroup v1".into(),
        ));
    }
    for (k, _) in res.unified().iter().flatten() {
        if k.contains('/') || k.contains("..") || k.is_empty() || !k.contains('.') {
            return Err(invalid(format!(
                "linux.resources.unified: {k:?} is not a cgroup file name"
            )));
        }
    }
    devices::validate(res.devices().as_deref().unwrap_or(&[]))?;
    Ok(())
}

fn dir<'a>(m: &'a CgroupManager, controller: &str, field: &str) -> Result<&'a Path> {
    m.dir_for(controller).ok_or_else(|| {
        Error::Unsupported(format!("linux.resources.{field}: the {controller} cgroup controller is not available on this host"))
    })
}

fn limit_str(v: i64) -> String {
    if v < 0 {
        "max".into()
    } else {
        v.to_string()
    }
}

pub fn apply(m: &CgroupManager, res: &LinuxResources) -> Result<()> {
    validate(res, m.layout())?;
    let v2 = m.layout() == Layout::V2;
    if let Some(mem) = res.memory() {
        let d = dir(m, "memory", "memory")?;
        if v2 {
            if let Some(l) = mem.limit() {
                write(&d.join("memory.max"), &limit_str(l))?;
            }
            if let Some(r) = mem.reservation() {
                write(&d.join("memory.low"), &limit_str(r))?;
            }
            if let Some(s) = mem.swap() {
                // v2 limits swap alone; the spec's swap is memory+swap.
                let v = match (s, mem.limit()) {
                    (-1, _) => "max".to_string(),
                    (s, Some(l)) if l > 0 => (s - l).max(0).to_string(),
                    (s, _) => s.to_string(),
                };
                let f = d.join("memory.swap.max");
                if f.exists() {
                    write(&f, &v)?;
                } else if s != 0 {
                    return Err(Error::Unsupported("linux.resources.memory.swap: this kernel has no swap accounting (memory.swap.max)".into()));
                }
            }
            if mem.disable_oom_killer() == Some(true) {
                return Err(Error::Unsupported(
                    "linux.resources.memory.disableOOMKiller: not supported on cgroup v2".into(),
                ));
            }
        } else {
            let set_limit = |l: i64| write(&d.join("memory.limit_in_bytes"), &l.to_string());
            let memsw = d.join("memory.memsw.limit_in_bytes");
            let set_swap = |s: i64| {
                if memsw.exists() {
                    write(&memsw, &s.to_string())
                } else if s != 0 {
                    Err(Error::Unsupported("linux.resources.memory.swap: swap accounting is off on this host (no memory.memsw.limit_in_bytes)".into()))
                } else {
                    Ok(())
                }
            };
            match (mem.limit(), mem.swap()) {
                // memsw must stay >= limit at every step: order the two writes accordingly.
                (Some(l), Some(s)) => {
                    if set_limit(l).is_err() {
                        set_swap(s)?;
                        set_limit(l)?;
                    } else {
                        set_swap(s)?;
                    }
                }
                (Some(l), None) => {
                    // Without an explicit swap, memory+swap follows the limit (as runc and
                    // docker do). Raising: memsw first; lowering: the limit first.
                    if set_limit(l).is_err() && memsw.exists() {
                        write(&memsw, &l.to_string())?;
                        set_limit(l)?;
                    } else if memsw.exists() {
                        write(&memsw, &l.to_string())?;
                    }
                }
                (None, Some(s)) => set_swap(s)?,
                (None, None) => {}
            }
            if let Some(r) = mem.reservation() {
                write(&d.join("memory.soft_limit_in_bytes"), &r.to_string())?;
            }
            if let Some(s) = mem.swappiness() {
                write(&d.join("memory.swappiness"), &s.to_string())?;
            }
            if mem.disable_oom_killer() == Some(true) {
                write(&d.join("memory.oom_control"), "1")?;
            }
            if let Some(t) = mem.kernel_tcp() {
                let f = d.join("memory.kmem.tcp.limit_in_bytes");
                if f.exists() {
                    write(&f, &t.to_string())?;
                }
            }
        }
    }
    if let Some(cpu) = res.cpu() {
        let d = dir(m, "cpu", "cpu")?;
        if v2 {
            if let Some(s) = cpu.shares().filter(|s| *s > 0) {
                let weight = 1 + ((s.max(2) - 2) * 9999) / 262_142;
                write(&d.join("cpu.weight"), &weight.to_string())?;
            }
            if cpu.quota().is_some() || cpu.period().is_some() {
                let quota = match cpu.quota() {
                    Some(q) if q > 0 => q.to_string(),
                    _ => "max".into(),
                };
                let period = cpu.period().filter(|p| *p > 0).unwrap_or(100_000);
                write(&d.join("cpu.max"), &format!("{quota} {period}"))?;
            }
            if let Some(b) = cpu.burst() {
                write(&d.join("cpu.max.burst"), &b.to_string())?;
            }
            if cpu.realtime_runtime().is_some() || cpu.realtime_period().is_some() {
                return Err(Error::Unsupported(
                    "linux.resources.cpu.realtimeRuntime: not supported on cgroup v2".into(),
                ));
            }
        } else {
            if let Some(s) = cpu.shares().filter(|s| *s > 0) {
                write(&d.join("cpu.shares"), &s.to_string())?;
            }
            if let Some(p) = cpu.period().filter(|p| *p > 0) {
                write(&d.join("cpu.cfs_period_us"), &p.to_string())?;
            }
            if let Some(q) = cpu.quota().filter(|q| *q != 0) {
                write(&d.join("cpu.cfs_quota_us"), &q.to_string())?;
            }
            if let Some(b) = cpu.burst() {
                write(&d.join("cpu.cfs_burst_us"), &b.to_string())?;
            }
            if let Some(p) = cpu.realtime_period() {
                write(&d.join("cpu.rt_period_us"), &p.to_string())?;
            }
            if let Some(r) = cpu.realtime_runtime() {
                write(&d.join("cpu.rt_runtime_us"), &r.to_string())?;
            }
        }
        if let Some(i) = cpu.idle() {
            write(&d.join("cpu.idle"), &i.to_string())?;
        }
        if cpu.cpus().as_deref().is_some_and(|c| !c.is_empty())
            || cpu.mems().as_deref().is_some_and(|c| !c.is_empty())
        {
            let cs = dir(m, "cpuset", "cpu.cpus")?;
            if let Some(c) = cpu.cpus().as_deref().filter(|c| !c.is_empty()) {
                write(&cs.join("cpuset.cpus"), c)?;
            }
            if let Some(c) = cpu.mems().as_deref().filter(|c| !c.is_empty()) {
                write(&cs.join("cpuset.mems"), c)?;
            }
        }
    }
    if let Some(p) = res.pids() {
        let d = dir(m, "pids", "pids")?;
        write(
            &d.join("pids.max"),
            &limit_str(if p.limit() <= 0 { -1 } else { p.limit() }),
        )?;
    }
    if let Some(b) = res.block_io() {
        apply_blkio(m, b, v2)?;
    }
    for h in res.hugepage_limits().iter().flatten() {
        let d = dir(m, "hugetlb", "hugepageLimits")?;
        let file = if d.join(format!("hugetlb.{}.max", h.page_size())).exists() || v2 {
            format!("hugetlb.{}.max", h.page_size())
        } else {
            format!("hugetlb.{}.limit_in_bytes", h.page_size())
        };
        let path = d.join(&file);
        if !path.exists() {
            return Err(invalid(format!(
                "linux.resources.hugepageLimits: page size {:?} is not supported by this host",
                h.page_size()
            )));
        }
        write(&path, &h.limit().to_string())?;
    }
    if let Some(n) = res.network() {
        if let Some(id) = n.class_id() {
            let d = dir(m, "net_cls", "network.classID")?;
            write(&d.join("net_cls.classid"), &id.to_string())?;
        }
        for p in n.priorities().iter().flatten() {
            let d = dir(m, "net_prio", "network.priorities")?;
            write(
                &d.join("net_prio.ifpriomap"),
                &format!("{} {}", p.name(), p.priority()),
            )?;
        }
    }
    if res.rdma().as_ref().is_some_and(|r| !r.is_empty()) {
        let d = dir(m, "rdma", "rdma")?;
        for (dev, l) in res.rdma().iter().flatten() {
            let mut parts = vec![dev.clone()];
            if let Some(h) = l.hca_handles() {
                parts.push(format!("hca_handle={h}"));
            }
            if let Some(o) = l.hca_objects() {
                parts.push(format!("hca_object={o}"));
            }
            write(&d.join("rdma.max"), &parts.join(" "))?;
        }
    }
    if let Some(u) = res.unified() {
        let d = m.unified_dir().ok_or_else(|| {
            Error::Unsupported("linux.resources.unified: no unified hierarchy".into())
        })?;
        for (k, v) in u {
            let f = d.join(k);
            if !f.exists() {
                return Err(invalid(format!(
                    "linux.resources.unified: {k:?} does not exist in {}",
                    d.display()
                )));
            }
            write(&f, v)?;
        }
    }
    if let Some(rules) = res.devices() {
        if v2 {
            if let Some(d) = m.unified_dir() {
                devices::apply_v2(d, rules)?;
            }
        } else if let Some(d) = m.dir_for("devices") {
            devices::apply_v1(d, rules)?;
        }
    }
    Ok(())
}

fn apply_blkio(m: &CgroupManager, b: &oci_spec::runtime::LinuxBlockIo, v2: bool) -> Result<()> {
    let (ctl, field) = if v2 {
        ("io", "blockIO")
    } else {
        ("blkio", "blockIO")
    };
    let d = dir(m, ctl, field)?;
    if let Some(w) = b.weight() {
        let candidates: &[&str] = if v2 {
            &["io.bfq.weight", "io.weight"]
        } else {
            &["blkio.weight", "blkio.bfq.weight"]
        };
        let f = candidates.iter().map(|c| d.join(c)).find(|p| p.exists()).ok_or_else(|| {
            Error::Unsupported("linux.resources.blockIO.weight: this kernel's I/O scheduler has no weight file (BFQ not enabled)".into())
        })?;
        let value = if v2 && f.ends_with("io.weight") {
            format!(
                "default {}",
                1 + ((w as u64).saturating_sub(10) * 9999) / 990
            )
        } else {
            w.to_string()
        };
        write(&f, &value)?;
    }
    if let Some(w) = b.leaf_weight() {
        if !v2 {
            write(&d.join("blkio.leaf_weight"), &w.to_string())?;
        }
    }
    for wd in b.weight_device().iter().flatten() {
        if let Some(w) = wd.weight() {
            let f = if v2 {
                "io.bfq.weight"
            } else {
                "blkio.weight_device"
            };
            write(&d.join(f), &format!("{}:{} {w}", wd.major(), wd.minor()))?;
        }
    }
    let throttles = [
        (
            b.throttle_read_bps_device(),
            "blkio.throttle.read_bps_device",
            "rbps",
        ),
        (
            b.throttle_write_bps_device(),
            "blkio.throttle.write_bps_device",
            "wbps",
        ),
        (
            b.throttle_read_iops_device(),
            "blkio.throttle.read_iops_device",
            "riops",
        ),
        (
            b.throttle_write_iops_device(),
            "blkio.throttle.write_iops_device",
            "wiops",
        ),
    ];
    for (list, v1file, v2key) in throttles {
        for t in list.iter().flatten() {
            if v2 {
                write(
                    &d.join("io.max"),
                    &format!("{}:{} {v2key}={}", t.major(), t.minor(), t.rate()),
                )?;
            } else {
                write(
                    &d.join(v1file),
                    &format!("{}:{} {}", t.major(), t.minor(), t.rate()),
                )?;
            }
        }
    }
    Ok(())
}
