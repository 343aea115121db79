//! linux.resources: validation, then the v1 or v2 files.

use std::path::Path;

use oci_spec::runtime::LinuxResources;

use crate::fs::write;
use crate::{devices, CgroupManager, Error, Layout, Result};

fn invalid(msg: String) -> Error {
    Error::Invalid(msg)
}

/// The smallest memory limit the kernel can enforce: limits are counted in pages and a
/// smaller value rounds down to zero pages, where every allocation fails.
const MIN_MEMORY_LIMIT: i64 = 4096;

pub fn validate(res: &LinuxResources, layout: Layout) -> Result<()> {
    let v2 = layout == Layout::V2;
    if let Some(m) = res.memory() {
        for (name, v) in [
            ("limit", m.limit()),
            ("reservation", m.reservation()),
            ("swap", m.swap()),
            ("kernel", m.kernel()),
            ("kernelTCP", m.kernel_tcp()),
        ] {
            if let Some(v) = v {
                if v < -1 {
                    return Err(invalid(format!(
                        "linux.resources.memory.{name}: {v} is negative (-1 means unlimited)"
                    )));
                }
            }
        }
        if let Some(limit) = m.limit() {
            if limit > 0 && limit < MIN_MEMORY_LIMIT {
                return Err(invalid(format!(
                    "linux.resources.memory.limit: {limit} is below the kernel minimum ({MIN_MEMORY_LIMIT} bytes, one page)"
                )));
            }
        }
        // Also checks swap >= limit and that a swap limit comes with a memory limit.
        v2_swap(m.limit(), m.swap())?;
        if let Some(s) = m.swappiness() {
            if s > 100 {
                return Err(invalid(format!(
                    "linux.resources.memory.swappiness: {s} is above 100"
                )));
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
    if let Some(c) = res.cpu() {
        let rt = c.realtime_runtime().is_some_and(|v| v != 0)
            || c.realtime_period().is_some_and(|v| v != 0);
        if v2 && rt {
            return Err(Error::Unsupported(
                "linux.resources.cpu.realtimeRuntime/realtimePeriod: cgroup v2 has no real-time CPU limits".into(),
            ));
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

/// The spec's swap is memory+swap (v1 semantics); v2's memory.swap.max is swap alone.
/// Returns the memory.swap.max value to write, None to leave it alone (as runc's
/// ConvertMemorySwapToCgroupV2Value).
pub(crate) fn v2_swap(limit: Option<i64>, swap: Option<i64>) -> Result<Option<String>> {
    let limit = limit.unwrap_or(0);
    match swap.unwrap_or(0) {
        // Memory unlimited and swap unset: both unlimited, as on v1.
        0 if limit == -1 => Ok(Some("max".into())),
        0 => Ok(None),
        -1 => Ok(Some("max".into())),
        swap if limit <= 0 => Err(invalid(format!(
            "linux.resources.memory.swap: {swap} needs a memory.limit (swap is memory+swap)"
        ))),
        swap if swap < limit => Err(invalid(format!(
            "linux.resources.memory.swap: {swap} is below memory.limit {limit} (swap is memory+swap, so it must be >= limit)"
        ))),
        swap => Ok(Some((swap - limit).to_string())),
    }
}

fn dir<'a>(m: &'a CgroupManager, controller: &str, field: &str) -> Result<&'a Path> {
    m.dir_for(controller).ok_or_else(|| {
        Error::Unsupported(format!("linux.resources.{field}: the {controller} cgroup controller is not available on this host"))
    })
}

/// cpu.shares (2..262144) → cpu.weight (1..10000), as runc.
pub(crate) fn cpu_weight(shares: u64) -> u64 {
    1 + ((shares.max(2) - 2) * 9999) / 262_142
}

/// blkio.weight (10..1000) → io.weight (1..10000), as runc.
pub(crate) fn io_weight(weight: u16) -> u64 {
    1 + (u64::from(weight).saturating_sub(10) * 9999) / 990
}

fn limit_str(v: i64) -> String {
    if v < 0 {
        "max".into()
    } else {
        v.to_string()
    }
}

/// v1 CFS (and RT) bandwidth: a period and its quota (runtime), two files the kernel checks
/// together. Each write must keep quota/period within what the parent cgroup allows, so a
/// new period next to the old quota can be refused (EINVAL) where the final pair is fine —
/// a shorter period inside a "pod" cgroup with a CPU limit, say. As runc's fs/cpu.go: the
/// period first; if the kernel refuses it and a quota is coming too, the quota, then the
/// period again. `field` names the spec fields for the error.
fn write_paired(
    d: &Path,
    (period_file, period): (&str, Option<i64>),
    (quota_file, quota): (&str, Option<i64>),
    field: &str,
) -> Result<()> {
    let einval =
        |e: &Error| matches!(e, Error::Io { err, .. } if err.raw_os_error() == Some(libc::EINVAL));
    let explain = |e: Error| match e {
        Error::Io { context, err } if err.raw_os_error() == Some(libc::EINVAL) => Error::Io {
            context: format!(
                "{field}: {context} (the kernel refuses a quota/period ratio above what the \
                 parent cgroup allows, and values out of its range)"
            ),
            err,
        },
        e => e,
    };
    let mut period_pending = None;
    if let Some(p) = period {
        match write(&d.join(period_file), &p.to_string()) {
            Ok(()) => {}
            Err(e) if einval(&e) && quota.is_some() => period_pending = Some(p),
            Err(e) => return Err(explain(e)),
        }
    }
    if let Some(q) = quota {
        write(&d.join(quota_file), &q.to_string()).map_err(explain)?;
        if let Some(p) = period_pending {
            write(&d.join(period_file), &p.to_string()).map_err(explain)?;
        }
    }
    Ok(())
}

/// The cpu.max line for a quota and period (either may be absent), or None to leave it
/// alone. A missing half keeps what the cgroup has: the kernel keeps the period when only a
/// quota is written; a period alone needs the current quota, read from cpu.max. A quota of
/// -1 (or any negative) is "max", no limit.
pub(crate) fn v2_cpu_max(
    quota: Option<i64>,
    period: Option<u64>,
    current: impl FnOnce() -> Result<String>,
) -> Result<Option<String>> {
    let quota_str = |q: i64| {
        if q > 0 {
            q.to_string()
        } else {
            "max".into()
        }
    };
    let period = period.filter(|p| *p > 0);
    Ok(match (quota.filter(|q| *q != 0), period) {
        (None, None) => None,
        (Some(q), None) => Some(quota_str(q)),
        (Some(q), Some(p)) => Some(format!("{} {p}", quota_str(q))),
        (None, Some(p)) => {
            let now = current()?;
            let q = now.split_whitespace().next().unwrap_or("max").to_string();
            Some(format!("{q} {p}"))
        }
    })
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
            if let Some(v) = v2_swap(mem.limit(), mem.swap())? {
                let f = d.join("memory.swap.max");
                if f.exists() {
                    write(&f, &v)?;
                } else if v != "max" {
                    return Err(Error::Unsupported(format!("linux.resources.memory.swap: {v} cannot be applied, this kernel has no swap accounting (no memory.swap.max)")));
                }
            }
            // swappiness, disableOOMKiller and kernel memory have no v2 files; runc ignores
            // them there too.
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
                // No explicit swap: memory+swap is left alone (as runc), except that an
                // unlimited memory makes memory+swap unlimited too, written first so that
                // memsw >= limit holds at every step.
                (Some(-1), None) => {
                    if memsw.exists() {
                        write(&memsw, "-1")?;
                    }
                    set_limit(-1)?;
                }
                (Some(l), None) => set_limit(l)?,
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
            // Kernel memory limits are deprecated (gone since 5.16 for kmem): best effort,
            // as runc.
            for (v, file) in [
                (mem.kernel(), "memory.kmem.limit_in_bytes"),
                (mem.kernel_tcp(), "memory.kmem.tcp.limit_in_bytes"),
            ] {
                if let Some(v) = v {
                    let _ = std::fs::write(d.join(file), v.to_string());
                }
            }
        }
    }
    if let Some(cpu) = res.cpu() {
        let d = dir(m, "cpu", "cpu")?;
        if v2 {
            if let Some(s) = cpu.shares().filter(|s| *s > 0) {
                write(&d.join("cpu.weight"), &cpu_weight(s).to_string())?;
            }
            if let Some(v) = v2_cpu_max(cpu.quota(), cpu.period(), || {
                crate::fs::read(&d.join("cpu.max"))
            })? {
                write(&d.join("cpu.max"), &v)?;
            }
            if let Some(b) = cpu.burst() {
                write(&d.join("cpu.max.burst"), &b.to_string())?;
            }
        } else {
            if let Some(s) = cpu.shares().filter(|s| *s > 0) {
                write(&d.join("cpu.shares"), &s.to_string())?;
            }
            write_paired(
                d,
                (
                    "cpu.cfs_period_us",
                    cpu.period().filter(|p| *p > 0).map(|p| p as i64),
                ),
                ("cpu.cfs_quota_us", cpu.quota().filter(|q| *q != 0)),
                "linux.resources.cpu.period/quota",
            )?;
            if let Some(b) = cpu.burst() {
                write(&d.join("cpu.cfs_burst_us"), &b.to_string())?;
            }
            write_paired(
                d,
                ("cpu.rt_period_us", cpu.realtime_period().map(|p| p as i64)),
                ("cpu.rt_runtime_us", cpu.realtime_runtime()),
                "linux.resources.cpu.realtimePeriod/realtimeRuntime",
            )?;
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
            format!("default {}", io_weight(w))
        } else {
            w.to_string()
        };
        write(&f, &value)?;
    }
    // Leaf weights were CFQ-only: v2 has none (ignored, as runc); v1 only when CFQ is there.
    if let Some(w) = b.leaf_weight().filter(|_| !v2) {
        let f = d.join("blkio.leaf_weight");
        if !f.exists() {
            return Err(Error::Unsupported(format!("linux.resources.blockIO.leafWeight: {w} cannot be applied, this kernel has no blkio.leaf_weight (CFQ is gone)")));
        }
        write(&f, &w.to_string())?;
    }
    for (i, wd) in b.weight_device().iter().flatten().enumerate() {
        let dev = format!("{}:{}", wd.major(), wd.minor());
        if let Some(w) = wd.weight() {
            // BFQ takes the blkio scale on both versions; v2's io.weight its own.
            let candidates: [(&str, String); 2] = if v2 {
                [
                    ("io.bfq.weight", format!("{dev} {w}")),
                    ("io.weight", format!("{dev} {}", io_weight(w))),
                ]
            } else {
                [
                    ("blkio.weight_device", format!("{dev} {w}")),
                    ("blkio.bfq.weight_device", format!("{dev} {w}")),
                ]
            };
            let (f, v) = candidates.iter().find(|(f, _)| d.join(f).exists()).ok_or_else(|| {
                Error::Unsupported(format!("linux.resources.blockIO.weightDevice[{i}]: {dev} weight {w} cannot be applied, this kernel has no per-device weight file (BFQ not enabled)"))
            })?;
            write(&d.join(f), v)?;
        }
        if let Some(w) = wd.leaf_weight().filter(|_| !v2) {
            let f = d.join("blkio.leaf_weight_device");
            if f.exists() {
                write(&f, &format!("{dev} {w}"))?;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_swap_follows_runc() {
        let ok = |l, s| v2_swap(l, s).ok().flatten();
        assert_eq!(
            ok(Some(100 << 20), Some(300 << 20)),
            Some((200 << 20).to_string())
        );
        assert_eq!(ok(Some(100 << 20), Some(100 << 20)), Some("0".into()));
        assert_eq!(ok(Some(100 << 20), Some(-1)), Some("max".into()));
        assert_eq!(ok(Some(-1), None), Some("max".into()));
        assert_eq!(ok(Some(100 << 20), None), None);
        let e = v2_swap(Some(200 << 20), Some(100 << 20))
            .unwrap_err()
            .to_string();
        assert!(e.contains("memory.swap") && e.contains(">= limit"), "{e}");
        let e = v2_swap(None, Some(100 << 20)).unwrap_err().to_string();
        assert!(e.contains("needs a memory.limit"), "{e}");
    }

    fn res(v: serde_json::Value) -> LinuxResources {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn validation_names_field_and_value() {
        for (json, want) in [
            (
                serde_json::json!({"memory": {"limit": 100}}),
                "linux.resources.memory.limit: 100 is below the kernel minimum",
            ),
            (
                serde_json::json!({"memory": {"swappiness": 101}}),
                "memory.swappiness: 101",
            ),
            (serde_json::json!({"cpu": {"shares": 1}}), "cpu.shares: 1"),
            (serde_json::json!({"cpu": {"period": 10}}), "cpu.period: 10"),
            (
                serde_json::json!({"blockIO": {"weight": 5}}),
                "blockIO.weight: 5",
            ),
            (serde_json::json!({"unified": {"../x": "1"}}), "unified"),
        ] {
            let e = validate(&res(json.clone()), Layout::V2)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{json}: {e}");
        }
        let e = validate(
            &res(serde_json::json!({"unified": {"memory.high": "1"}})),
            Layout::V1,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("linux.resources.unified"), "{e}");
        let e = validate(
            &res(serde_json::json!({"cpu": {"realtimeRuntime": 1000}})),
            Layout::V2,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("realtimeRuntime"), "{e}");
        assert!(validate(
            &res(serde_json::json!({"cpu": {"realtimeRuntime": 1000}})),
            Layout::V1
        )
        .is_ok());
    }

    #[test]
    fn v2_cpu_max_keeps_the_missing_half() {
        let cur = || Ok::<_, Error>("50000 100000\n".to_string());
        let max = |q, p| v2_cpu_max(q, p, cur).unwrap();
        assert_eq!(max(None, None), None);
        assert_eq!(max(Some(0), None), None);
        // A quota alone: the kernel keeps the period.
        assert_eq!(max(Some(20000), None), Some("20000".into()));
        assert_eq!(max(Some(-1), None), Some("max".into()));
        assert_eq!(max(Some(20000), Some(50000)), Some("20000 50000".into()));
        assert_eq!(max(Some(-1), Some(50000)), Some("max 50000".into()));
        // A period alone keeps the current quota (it used to become "max").
        assert_eq!(max(None, Some(25000)), Some("50000 25000".into()));
        assert_eq!(
            v2_cpu_max(None, Some(25000), || Ok("max 100000".into())).unwrap(),
            Some("max 25000".into())
        );
    }

    #[test]
    fn weight_conversions() {
        assert_eq!(cpu_weight(2), 1);
        assert_eq!(cpu_weight(1024), 39);
        assert_eq!(cpu_weight(262_144), 10_000);
        assert_eq!(io_weight(10), 1);
        assert_eq!(io_weight(500), 4950);
        assert_eq!(io_weight(1000), 10_000);
    }
}
