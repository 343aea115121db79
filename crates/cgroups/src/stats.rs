//! Statistics for `events --stats`, with runc's field names (libcontainer types/events).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::fs::read_u64;
use crate::{CgroupManager, Layout, Result};

#[derive(Debug, Default, Serialize)]
pub struct Stats {
    pub cpu: Cpu,
    pub memory: Memory,
    pub pids: Pids,
    pub blkio: Blkio,
    pub hugetlb: BTreeMap<String, Hugetlb>,
}

#[derive(Debug, Default, Serialize)]
pub struct Cpu {
    pub usage: CpuUsage,
    pub throttling: Throttling,
}

#[derive(Debug, Default, Serialize)]
pub struct CpuUsage {
    #[serde(skip_serializing_if = "is_zero")]
    pub total: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub percpu: Vec<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub percpu_kernel: Vec<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub percpu_user: Vec<u64>,
    pub kernel: u64,
    pub user: u64,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Throttling {
    #[serde(skip_serializing_if = "is_zero")]
    pub periods: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub throttled_periods: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub throttled_time: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct MemoryEntry {
    pub limit: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub usage: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub max: u64,
    pub failcnt: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Memory {
    #[serde(skip_serializing_if = "is_zero")]
    pub cache: u64,
    pub usage: MemoryEntry,
    pub swap: MemoryEntry,
    pub kernel: MemoryEntry,
    #[serde(rename = "kernelTCP")]
    pub kernel_tcp: MemoryEntry,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub raw: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Pids {
    #[serde(skip_serializing_if = "is_zero")]
    pub current: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub limit: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct BlkioEntry {
    pub major: u64,
    pub minor: u64,
    pub op: String,
    pub value: u64,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Blkio {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub io_service_bytes_recursive: Vec<BlkioEntry>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub io_serviced_recursive: Vec<BlkioEntry>,
}

#[derive(Debug, Default, Serialize)]
pub struct Hugetlb {
    #[serde(skip_serializing_if = "is_zero")]
    pub usage: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub max: u64,
    pub failcnt: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn kv(path: &Path) -> BTreeMap<String, u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_string(), f.next()?.parse().ok()?))
        })
        .collect()
}

fn cap(v: Option<u64>) -> u64 {
    v.unwrap_or(0)
}

/// A v1 memory counter set: <prefix>.{usage_in_bytes,limit_in_bytes,max_usage_in_bytes,failcnt}.
fn v1_entry(d: &Path, prefix: &str) -> MemoryEntry {
    let f = |suffix: &str| cap(read_u64(&d.join(format!("{prefix}.{suffix}"))));
    MemoryEntry {
        usage: f("usage_in_bytes"),
        limit: f("limit_in_bytes"),
        max: f("max_usage_in_bytes"),
        failcnt: f("failcnt"),
    }
}

pub(crate) fn collect(m: &CgroupManager) -> Result<Stats> {
    let mut s = Stats::default();
    let v2 = m.layout() == Layout::V2;
    if let Some(d) = m.dir_for("cpu").or_else(|| m.dir_for("cpuacct")) {
        if v2 {
            let st = kv(&d.join("cpu.stat"));
            s.cpu.usage.total = st.get("usage_usec").copied().unwrap_or(0) * 1000;
            s.cpu.usage.user = st.get("user_usec").copied().unwrap_or(0) * 1000;
            s.cpu.usage.kernel = st.get("system_usec").copied().unwrap_or(0) * 1000;
            s.cpu.throttling.periods = st.get("nr_periods").copied().unwrap_or(0);
            s.cpu.throttling.throttled_periods = st.get("nr_throttled").copied().unwrap_or(0);
            s.cpu.throttling.throttled_time = st.get("throttled_usec").copied().unwrap_or(0) * 1000;
        } else {
            let st = kv(&d.join("cpu.stat"));
            s.cpu.throttling.periods = st.get("nr_periods").copied().unwrap_or(0);
            s.cpu.throttling.throttled_periods = st.get("nr_throttled").copied().unwrap_or(0);
            s.cpu.throttling.throttled_time = st.get("throttled_time").copied().unwrap_or(0);
        }
    }
    if !v2 {
        if let Some(d) = m.dir_for("cpuacct") {
            s.cpu.usage.total = cap(read_u64(&d.join("cpuacct.usage")));
            s.cpu.usage.percpu = std::fs::read_to_string(d.join("cpuacct.usage_percpu"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            // cpuacct.usage_all: "cpu user system" then one row per CPU, in ns.
            for row in std::fs::read_to_string(d.join("cpuacct.usage_all"))
                .unwrap_or_default()
                .lines()
                .skip(1)
            {
                let f: Vec<u64> = row
                    .split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect();
                if let [_, user, system] = f[..] {
                    s.cpu.usage.percpu_user.push(user);
                    s.cpu.usage.percpu_kernel.push(system);
                }
            }
            // cpuacct.stat is in clock ticks (USER_HZ = 100): convert to ns.
            let st = kv(&d.join("cpuacct.stat"));
            s.cpu.usage.user = st.get("user").copied().unwrap_or(0) * 10_000_000;
            s.cpu.usage.kernel = st.get("system").copied().unwrap_or(0) * 10_000_000;
        }
    }
    if let Some(d) = m.dir_for("memory") {
        if v2 {
            s.memory.usage.usage = cap(read_u64(&d.join("memory.current")));
            s.memory.usage.limit = cap(read_u64(&d.join("memory.max")));
            s.memory.usage.max = cap(read_u64(&d.join("memory.peak")));
            s.memory.swap.usage = cap(read_u64(&d.join("memory.swap.current")));
            s.memory.swap.limit = cap(read_u64(&d.join("memory.swap.max")));
            s.memory.raw = kv(&d.join("memory.stat"));
            s.memory.cache = s.memory.raw.get("file").copied().unwrap_or(0);
            s.memory.usage.failcnt = kv(&d.join("memory.events"))
                .get("max")
                .copied()
                .unwrap_or(0);
        } else {
            s.memory.usage = v1_entry(d, "memory");
            s.memory.swap = v1_entry(d, "memory.memsw");
            s.memory.kernel = v1_entry(d, "memory.kmem");
            s.memory.kernel_tcp = v1_entry(d, "memory.kmem.tcp");
            s.memory.raw = kv(&d.join("memory.stat"));
            s.memory.cache = s.memory.raw.get("cache").copied().unwrap_or(0);
        }
    }
    if let Some(d) = m.dir_for("pids") {
        s.pids.current = cap(read_u64(&d.join("pids.current")));
        s.pids.limit = read_u64(&d.join("pids.max"))
            .filter(|v| *v != u64::MAX)
            .unwrap_or(0);
    }
    let blk = if v2 {
        m.dir_for("io")
    } else {
        m.dir_for("blkio")
    };
    if let Some(d) = blk {
        if v2 {
            for line in std::fs::read_to_string(d.join("io.stat"))
                .unwrap_or_default()
                .lines()
            {
                let mut f = line.split_whitespace();
                let Some((maj, min)) = f.next().and_then(|d| d.split_once(':')) else {
                    continue;
                };
                let (maj, min) = (maj.parse().unwrap_or(0), min.parse().unwrap_or(0));
                for kvp in f {
                    let Some((k, v)) = kvp.split_once('=') else {
                        continue;
                    };
                    let v: u64 = v.parse().unwrap_or(0);
                    let (list, op) = match k {
                        "rbytes" => (&mut s.blkio.io_service_bytes_recursive, "Read"),
                        "wbytes" => (&mut s.blkio.io_service_bytes_recursive, "Write"),
                        "rios" => (&mut s.blkio.io_serviced_recursive, "Read"),
                        "wios" => (&mut s.blkio.io_serviced_recursive, "Write"),
                        _ => continue,
                    };
                    list.push(BlkioEntry {
                        major: maj,
                        minor: min,
                        op: op.into(),
                        value: v,
                    });
                }
            }
        } else {
            for (file, list) in [
                (
                    "blkio.throttle.io_service_bytes_recursive",
                    &mut s.blkio.io_service_bytes_recursive,
                ),
                (
                    "blkio.throttle.io_serviced_recursive",
                    &mut s.blkio.io_serviced_recursive,
                ),
            ] {
                for line in std::fs::read_to_string(d.join(file))
                    .unwrap_or_default()
                    .lines()
                {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    if f.len() != 3 {
                        continue;
                    }
                    let Some((maj, min)) = f[0].split_once(':') else {
                        continue;
                    };
                    list.push(BlkioEntry {
                        major: maj.parse().unwrap_or(0),
                        minor: min.parse().unwrap_or(0),
                        op: f[1].into(),
                        value: f[2].parse().unwrap_or(0),
                    });
                }
            }
        }
    }
    if let Some(d) = m.dir_for("hugetlb") {
        if let Ok(entries) = std::fs::read_dir(d) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let size = match name.strip_prefix("hugetlb.").and_then(|n| {
                    n.strip_suffix(".current")
                        .or_else(|| n.strip_suffix(".usage_in_bytes"))
                }) {
                    Some(s) if !s.contains(".rsvd") => s.to_string(),
                    _ => continue,
                };
                let h = Hugetlb {
                    usage: cap(read_u64(&e.path())),
                    max: cap(read_u64(
                        &d.join(format!("hugetlb.{size}.max_usage_in_bytes")),
                    )),
                    failcnt: cap(read_u64(&d.join(format!("hugetlb.{size}.failcnt")))).max(
                        kv(&d.join(format!("hugetlb.{size}.events")))
                            .get("max")
                            .copied()
                            .unwrap_or(0),
                    ),
                };
                s.hugetlb.insert(size, h);
            }
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_match_runc_events() {
        let mut s = Stats::default();
        s.cpu.usage.total = 1;
        s.cpu.usage.percpu = vec![1];
        s.cpu.usage.percpu_kernel = vec![1];
        s.cpu.usage.percpu_user = vec![1];
        s.cpu.throttling.throttled_periods = 1;
        s.memory.raw.insert("cache".into(), 1);
        s.pids.current = 1;
        s.blkio
            .io_service_bytes_recursive
            .push(BlkioEntry::default());
        s.hugetlb.insert("2MB".into(), Hugetlb::default());
        let v = serde_json::to_value(&s).unwrap();
        for path in [
            "/cpu/usage/total",
            "/cpu/usage/percpu",
            "/cpu/usage/percpu_kernel",
            "/cpu/usage/percpu_user",
            "/cpu/usage/kernel",
            "/cpu/usage/user",
            "/cpu/throttling/throttledPeriods",
            "/memory/usage/limit",
            "/memory/usage/failcnt",
            "/memory/swap/limit",
            "/memory/kernel/limit",
            "/memory/kernelTCP/limit",
            "/memory/raw/cache",
            "/pids/current",
            "/blkio/ioServiceBytesRecursive",
            "/hugetlb/2MB/failcnt",
        ] {
            assert!(v.pointer(path).is_some(), "{path} missing in {v}");
        }
    }
}
