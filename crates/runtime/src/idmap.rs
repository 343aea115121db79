//! Id-mapped bind mounts: a mount's `uidMappings`/`gidMappings`, or the "idmap"/"ridmap"
//! options with the container's own mappings.
//!
//! The runtime prepares them in the host's namespaces before the container process is cloned,
//! because only there may it create a user namespace with arbitrary mappings: a short-lived
//! helper process gets a new user namespace, the runtime writes its maps, keeps a descriptor
//! of the namespace and reaps the helper. Each source is then cloned as a detached mount
//! (`open_tree`), marked id-mapped with that namespace (`mount_setattr(MOUNT_ATTR_IDMAP)`,
//! which the kernel allows only on a detached mount) and handed to the container's init as a
//! descriptor it inherits; the init attaches it at the destination it resolved inside the
//! rootfs (`move_mount`).

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxIdMapping, Spec};

use crate::error::{Context, Error, Result};
use crate::mount_options::{is_bind, IdmapDepth, MountOptions};
use crate::namespaces::id_map_text;
use crate::sys::{self, Forked, MOUNT_ATTR_IDMAP};

/// The bind mounts of one container prepared as detached mounts in the host's namespaces,
/// by their index in `mounts`: the id-mapped ones, and — for a container in a user
/// namespace — every other bind too, cloned while the runtime can still open the source
/// (as runc does: inside the user namespace, a source only host root may traverse would fail
/// with EACCES).
#[derive(Default)]
pub struct DetachedBinds {
    by_index: HashMap<usize, OwnedFd>,
}

/// What one mount asks for, checked before anything touches the host.
struct Request<'a> {
    index: usize,
    source: &'a Path,
    uid: &'a [LinuxIdMapping],
    gid: &'a [LinuxIdMapping],
    depth: IdmapDepth,
    recursive_bind: bool,
}

impl DetachedBinds {
    /// Check every mount that asks for an id mapping and prepare the detached, id-mapped
    /// mounts; with `all_binds` (the init enters a user namespace), clone the other binds
    /// too. A spec without such mounts costs one pass over `mounts`.
    pub fn prepare(spec: &Spec, all_binds: bool) -> Result<DetachedBinds> {
        let requests = requests(spec)?;
        let mut prepared = DetachedBinds::default();
        if all_binds {
            for (index, m) in spec.mounts().iter().flatten().enumerate() {
                if !is_bind(m) || requests.iter().any(|r| r.index == index) {
                    continue;
                }
                let source = m.source().clone().unwrap_or_default();
                let recursive = m.options().iter().flatten().any(|o| o == "rbind");
                let tree = sys::open_tree_clone(&source, recursive).ctx(|| {
                    format!(
                        "mounts[{index}] ({}): open the bind source {}",
                        m.destination().display(),
                        source.display()
                    )
                })?;
                prepared.by_index.insert(index, tree);
            }
        }
        if requests.is_empty() {
            return Ok(prepared);
        }
        // One user namespace per distinct set of mappings.
        let mut namespaces: HashMap<String, OwnedFd> = HashMap::new();
        for r in requests {
            let key = format!("{}|{}", id_map_text(r.uid), id_map_text(r.gid));
            if !namespaces.contains_key(&key) {
                let ns = userns_with_maps(r.index, r.uid, r.gid)?;
                namespaces.insert(key.clone(), ns);
            }
            let userns = namespaces[&key].as_fd();
            let tree = sys::open_tree_clone(r.source, r.recursive_bind).ctx(|| {
                format!(
                    "mounts[{}]: clone the bind source {} for an id-mapped mount",
                    r.index,
                    r.source.display()
                )
            })?;
            sys::mount_setattr(
                tree.as_fd(),
                r.depth == IdmapDepth::Recursive,
                MOUNT_ATTR_IDMAP,
                0,
                Some(userns),
            )
            .ctx(|| {
                format!(
                    "mounts[{}]: make {} an id-mapped mount (the filesystem must support \
                     id-mapped mounts)",
                    r.index,
                    r.source.display()
                )
            })?;
            prepared.by_index.insert(r.index, tree);
        }
        Ok(prepared)
    }

    /// The prepared mount for `mounts[index]`, if there is one.
    pub fn get(&self, index: usize) -> Option<BorrowedFd<'_>> {
        self.by_index.get(&index).map(|fd| fd.as_fd())
    }
}

fn requests(spec: &Spec) -> Result<Vec<Request<'_>>> {
    let linux = spec.linux().as_ref();
    let container_uid = linux
        .and_then(|l| l.uid_mappings().as_deref())
        .unwrap_or(&[]);
    let container_gid = linux
        .and_then(|l| l.gid_mappings().as_deref())
        .unwrap_or(&[]);
    let mut out = Vec::new();
    for (index, m) in spec.mounts().iter().flatten().enumerate() {
        let uid = m.uid_mappings().as_deref().unwrap_or(&[]);
        let gid = m.gid_mappings().as_deref().unwrap_or(&[]);
        let options = m.options().as_deref().unwrap_or(&[]);
        // The common case, on every create: no mappings, no idmap option, nothing to parse.
        if uid.is_empty()
            && gid.is_empty()
            && !options.iter().any(|o| o == "idmap" || o == "ridmap")
        {
            continue;
        }
        let opts = MountOptions::parse(options)
            .map_err(|e| Error::config(format!("mounts[{index}].options: {e}")))?;
        let at = || format!("mounts[{index}] ({})", m.destination().display());
        if !is_bind(m) {
            return Err(Error::config(format!(
                "{}: id-mapped mounts (uidMappings, gidMappings, \"idmap\", \"ridmap\") are \
                 supported for bind mounts only, not type {:?}",
                at(),
                m.typ().as_deref().unwrap_or("")
            )));
        }
        let (uid, gid) = match (uid.is_empty(), gid.is_empty()) {
            (false, false) => (uid, gid),
            (true, true) => {
                // "idmap" alone: the container's own user namespace mappings.
                if container_uid.is_empty() || container_gid.is_empty() {
                    return Err(Error::config(format!(
                        "{}: \"idmap\" without uidMappings/gidMappings uses the container's \
                         user namespace mappings, but linux.uidMappings/gidMappings are not set",
                        at()
                    )));
                }
                (container_uid, container_gid)
            }
            _ => {
                return Err(Error::config(format!(
                    "{}: uidMappings and gidMappings must be given together",
                    at()
                )))
            }
        };
        for (field, maps) in [("uidMappings", uid), ("gidMappings", gid)] {
            if maps.len() > 340 || maps.iter().any(|m| m.size() == 0) {
                return Err(Error::config(format!(
                    "{}.{field}: {} is not a valid mapping (sizes must be non-zero)",
                    at(),
                    id_map_text(maps).trim().replace('\n', "; ")
                )));
            }
        }
        let source = m
            .source()
            .as_deref()
            .ok_or_else(|| Error::config(format!("{}: a bind mount needs a source", at())))?;
        out.push(Request {
            index,
            source,
            uid,
            gid,
            depth: opts.idmap.unwrap_or(IdmapDepth::Top),
            recursive_bind: opts.flags.contains(nix::mount::MsFlags::MS_REC),
        });
    }
    Ok(out)
}

/// A user namespace with exactly these mappings, held by a descriptor. A helper process
/// creates it and waits to be killed; the namespace outlives it through the descriptor.
fn userns_with_maps(
    index: usize,
    uid: &[LinuxIdMapping],
    gid: &[LinuxIdMapping],
) -> Result<OwnedFd> {
    // SAFETY: vessel-runtime is single-threaded here; the child only pauses until killed.
    let forked = unsafe { sys::clone3(CloneFlags::CLONE_NEWUSER, 0, None) }
        .ctx(|| format!("mounts[{index}]: create a user namespace for an id-mapped mount"))?;
    let pid = match forked {
        Forked::Child => loop {
            // SAFETY: async-signal-safe; the parent ends us with SIGKILL.
            unsafe { libc::pause() };
        },
        Forked::Parent(pid) => pid,
    };
    let result = (|| -> Result<OwnedFd> {
        for (file, maps) in [("gid_map", gid), ("uid_map", uid)] {
            let text = id_map_text(maps);
            std::fs::write(format!("/proc/{pid}/{file}"), text.as_bytes()).ctx(|| {
                format!(
                    "mounts[{index}]: write the id-mapped mount's {file}: {}",
                    text.trim().replace('\n', "; ")
                )
            })?;
        }
        Ok(std::fs::File::open(format!("/proc/{pid}/ns/user"))
            .ctx(|| format!("mounts[{index}]: open the id-mapped mount's user namespace"))?
            .into())
    })();
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    let _ = waitpid(Pid::from_raw(pid), None);
    result
}
