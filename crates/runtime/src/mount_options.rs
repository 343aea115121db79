//! The `options` of a config.json mount, parsed into mount(2) flags, propagation,
//! mount_setattr(2) attributes and filesystem data. Pure parsing: used by the config checks
//! (`spec`), the id-map preparation in the parent (`idmap`) and the rootfs build (`mounts`).

use nix::mount::MsFlags;
use oci_spec::runtime::Mount;

use crate::sys::{
    MOUNT_ATTR_NOATIME, MOUNT_ATTR_NODEV, MOUNT_ATTR_NODIRATIME, MOUNT_ATTR_NOEXEC,
    MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY, MOUNT_ATTR_RELATIME, MOUNT_ATTR_STRICTATIME,
    MOUNT_ATTR__ATIME,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: MsFlags,
    pub propagation: Option<MsFlags>,
    /// Filesystem-specific options passed as mount data ("mode=755", "size=64k", ...).
    pub data: Vec<String>,
    /// mount_setattr(2) attributes applied recursively ("rro", "rnosuid", ...).
    pub attr_set: u64,
    pub attr_clr: u64,
    /// "idmap"/"ridmap": an id-mapped bind mount (recursive for "ridmap"); the mapped
    /// mount itself is prepared by the parent, see the `idmap` module.
    pub idmap: Option<IdmapDepth>,
    /// runc's "tmpcopyup": fill a new tmpfs with what the directory held before.
    pub copy_up: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdmapDepth {
    /// "idmap": only the top mount of the bind is id-mapped.
    Top,
    /// "ridmap": every mount of a recursive bind is id-mapped.
    Recursive,
}

pub fn propagation_flag(name: &str) -> Option<MsFlags> {
    Some(match name {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

impl MountOptions {
    pub fn parse(options: &[String]) -> std::result::Result<MountOptions, String> {
        let mut o = MountOptions {
            flags: MsFlags::empty(),
            propagation: None,
            data: Vec::new(),
            attr_set: 0,
            attr_clr: 0,
            idmap: None,
            copy_up: false,
        };
        for opt in options {
            let (set, clear) = match opt.as_str() {
                "defaults" => (MsFlags::empty(), MsFlags::empty()),
                "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
                "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
                "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
                "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
                "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
                "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
                "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
                "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
                "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
                "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
                "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
                "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
                "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
                "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
                "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
                "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
                "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
                "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
                "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
                "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
                "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
                "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
                "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
                "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
                "silent" => (MsFlags::MS_SILENT, MsFlags::empty()),
                "loud" => (MsFlags::empty(), MsFlags::MS_SILENT),
                "tmpcopyup" => {
                    o.copy_up = true;
                    continue;
                }
                "idmap" => {
                    o.idmap = Some(IdmapDepth::Top);
                    continue;
                }
                "ridmap" => {
                    o.idmap = Some(IdmapDepth::Recursive);
                    continue;
                }
                other => {
                    if let Some(p) = propagation_flag(other) {
                        o.propagation = Some(p);
                    } else if let Some((set, clr)) = recursive_attr(other) {
                        o.attr_set |= set;
                        o.attr_clr |= clr;
                    } else if other.is_empty() {
                        return Err("empty option".into());
                    } else {
                        o.data.push(other.to_string());
                    }
                    continue;
                }
            };
            o.flags.insert(set);
            o.flags.remove(clear);
        }
        Ok(o)
    }

    pub fn data(&self) -> Option<String> {
        (!self.data.is_empty()).then(|| self.data.join(","))
    }
}

fn recursive_attr(opt: &str) -> Option<(u64, u64)> {
    Some(match opt {
        "rro" => (MOUNT_ATTR_RDONLY, 0),
        "rrw" => (0, MOUNT_ATTR_RDONLY),
        "rnosuid" => (MOUNT_ATTR_NOSUID, 0),
        "rsuid" => (0, MOUNT_ATTR_NOSUID),
        "rnodev" => (MOUNT_ATTR_NODEV, 0),
        "rdev" => (0, MOUNT_ATTR_NODEV),
        "rnoexec" => (MOUNT_ATTR_NOEXEC, 0),
        "rexec" => (0, MOUNT_ATTR_NOEXEC),
        "rnodiratime" => (MOUNT_ATTR_NODIRATIME, 0),
        "rdiratime" => (0, MOUNT_ATTR_NODIRATIME),
        "rrelatime" => (MOUNT_ATTR_RELATIME, MOUNT_ATTR__ATIME),
        "rnorelatime" => (0, 0),
        "rnoatime" => (MOUNT_ATTR_NOATIME, MOUNT_ATTR__ATIME),
        "ratime" => (0, MOUNT_ATTR_NOATIME),
        "rstrictatime" => (MOUNT_ATTR_STRICTATIME, MOUNT_ATTR__ATIME),
        "rnostrictatime" => (0, MOUNT_ATTR_STRICTATIME),
        _ => return None,
    })
}

pub fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> MountOptions {
        MountOptions::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn parses_flags_data_and_propagation() {
        let o = opts(&[
            "nosuid",
            "noexec",
            "nodev",
            "mode=755",
            "size=65536k",
            "rslave",
            "ro",
        ]);
        assert!(o.flags.contains(
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV | MsFlags::MS_RDONLY
        ));
        assert_eq!(o.data, vec!["mode=755", "size=65536k"]);
        assert_eq!(o.propagation, Some(MsFlags::MS_SLAVE | MsFlags::MS_REC));
        let o = opts(&["ro", "rw", "rbind"]);
        assert!(!o.flags.contains(MsFlags::MS_RDONLY));
        assert!(o.flags.contains(MsFlags::MS_BIND | MsFlags::MS_REC));
        let o = opts(&["rro", "rnosuid"]);
        assert_eq!(
            o.attr_set,
            crate::sys::MOUNT_ATTR_RDONLY | crate::sys::MOUNT_ATTR_NOSUID
        );
    }

    #[test]
    fn rejects_empty_and_reads_idmap_depth() {
        assert!(MountOptions::parse(&["".into()]).is_err());
        assert_eq!(opts(&["rbind", "idmap"]).idmap, Some(IdmapDepth::Top));
        assert_eq!(opts(&["ridmap"]).idmap, Some(IdmapDepth::Recursive));
        assert_eq!(opts(&["bind"]).idmap, None);
    }
}
