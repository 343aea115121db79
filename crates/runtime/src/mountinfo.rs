//! /proc/PID/mountinfo, parsed once into typed entries (proc(5)). The one parser the
//! runtime uses: the rootfs build (parent propagation, --no-pivot hiding) and checkpoint
//! (external mounts, cgroup mounts) read the same fields the same way.

use std::path::Path;

use crate::error::{Context, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u64,
    /// The path inside the filesystem that is mounted ("/" for the whole filesystem).
    pub root: String,
    pub mount_point: String,
    /// The optional fields ("shared:N", "master:N", ...).
    pub optional: Vec<String>,
    pub fstype: String,
    pub super_options: String,
}

impl MountEntry {
    pub fn is_shared(&self) -> bool {
        self.optional.iter().any(|o| o.starts_with("shared:"))
    }
}

/// Read and parse this process's mountinfo.
pub fn read_self() -> Result<Vec<MountEntry>> {
    read(Path::new("/proc/self/mountinfo"))
}

pub fn read(path: &Path) -> Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string(path).ctx(|| format!("read {}", path.display()))?;
    Ok(parse(&text))
}

/// Lines that do not have the documented shape are skipped.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            Some(MountEntry {
                id: l.first()?.parse().ok()?,
                root: unescape(l.get(3)?),
                mount_point: unescape(l.get(4)?),
                optional: l.iter().skip(6).map(|s| s.to_string()).collect(),
                fstype: r.first()?.to_string(),
                super_options: r.get(2).copied().unwrap_or("").to_string(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|o| o.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct {
            Some(o) if b[i] == b'\\' => {
                out.push(o.iter().fold(0u8, |v, c| v.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields_optional_and_escapes() {
        let text = "36 35 98:0 /mnt1 /mnt/my\\040dir rw,noatime master:1 shared:7 - ext3 /dev/root rw,errors=continue\n\
                    bad line\n\
                    40 1 0:5 / /proc rw - proc proc rw\n";
        let m = parse(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].id, 36);
        assert_eq!(m[0].root, "/mnt1");
        assert_eq!(m[0].mount_point, "/mnt/my dir");
        assert_eq!(m[0].optional, vec!["master:1", "shared:7"]);
        assert!(m[0].is_shared());
        assert_eq!(m[0].fstype, "ext3");
        assert_eq!(m[0].super_options, "rw,errors=continue");
        assert!(!m[1].is_shared());
        assert!(m[1].optional.is_empty());
        assert_eq!(m[1].fstype, "proc");
    }
}
