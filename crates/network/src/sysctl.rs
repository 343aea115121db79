//! The few sysctls networking needs, written only when they differ (so an already-enabled
//! host is left as it is and no write happens on the hot path).

use std::path::PathBuf;

use crate::error::{Error, Result};

fn path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

/// Read a sysctl (`net.ipv4.ip_forward`). Device names may contain '.', so callers pass
/// per-device keys through [`set_dev`].
pub fn get(key: &str) -> Result<String> {
    let p = path(key);
    std::fs::read_to_string(&p)
        .map(|s| s.trim().to_string())
        .map_err(|e| Error::io(format!("read {}", p.display()), e))
}

fn write_if_different(p: PathBuf, value: &str) -> Result<()> {
    let cur =
        std::fs::read_to_string(&p).map_err(|e| Error::io(format!("read {}", p.display()), e))?;
    if cur.trim() == value {
        return Ok(());
    }
    std::fs::write(&p, value).map_err(|e| Error::io(format!("write {}", p.display()), e))
}

/// Set a global sysctl if it differs.
pub fn set(key: &str, value: &str) -> Result<()> {
    write_if_different(path(key), value)
}

/// Set `net.<family>.conf.<dev>.<key>` if it differs.
pub fn set_dev(family: &str, dev: &str, key: &str, value: &str) -> Result<()> {
    write_if_different(
        PathBuf::from(format!("/proc/sys/net/{family}/conf/{dev}/{key}")),
        value,
    )
}

/// The host's ephemeral port range, where docker takes dynamic host ports from.
pub fn ephemeral_ports() -> (u16, u16) {
    let parsed = get("net.ipv4.ip_local_port_range").ok().and_then(|s| {
        let mut it = s.split_whitespace().filter_map(|x| x.parse::<u16>().ok());
        Some((it.next()?, it.next()?))
    });
    parsed.unwrap_or((32768, 60999))
}
