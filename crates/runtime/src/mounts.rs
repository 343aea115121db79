//! Building the container's root filesystem inside its new mount namespace: mount options,
//! destinations resolved safely inside the rootfs, devices, pivot_root, masked and read-only
//! paths. Runs in the container's init, before any user code.
//!
//! Every destination is resolved with `openat2(RESOLVE_IN_ROOT)` from a descriptor of the
//! rootfs and mounted through `/proc/self/fd/N`, so a symlink planted in the image can never
//! redirect a mount to the host (CVE-2021-30465 class).

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{fchmodat, mknodat, FchmodatFlags, Mode, SFlag};
use nix::unistd::{chdir, fchdir, fchownat, pivot_root, Gid, Uid};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

use crate::error::{Context, Error, Result};
use crate::sys::{
    fd_path, mount_setattr, open_in_root, MOUNT_ATTR_NOATIME, MOUNT_ATTR_NODEV,
    MOUNT_ATTR_NODIRATIME, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY,
    MOUNT_ATTR_RELATIME, MOUNT_ATTR_STRICTATIME, MOUNT_ATTR__ATIME,
};

// ---------------------------------------------------------------------------------------------
// Options

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
    /// mount itself is prepared by the parent, see [`crate::idmap`].
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

    fn data(&self) -> Option<String> {
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

// ---------------------------------------------------------------------------------------------
// Safe path handling inside the rootfs

/// Open `path` inside the root, creating missing directories on the way — including the
/// targets of dangling symlinks, as runc does. The walk holds a descriptor for every level and
/// never resolves a path string twice: each component is looked at with O_NOFOLLOW relative
/// to the directory above it, symlinks are expanded by hand with "/" meaning the rootfs, and
/// ".." never climbs above the rootfs. Nothing the image contains can make it leave the root.
pub fn mkdir_all(root: BorrowedFd, path: &Path) -> Result<OwnedFd> {
    use std::collections::VecDeque;
    // Fast path: the target usually exists; one openat2 confined to the root resolves it.
    match open_in_root(root, path, libc::O_PATH | libc::O_DIRECTORY) {
        Ok(fd) => return Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => return Err(e).ctx(|| format!("resolve {} in the rootfs", path.display())),
    }
    use std::os::unix::ffi::OsStrExt;
    let dir_flags = nix::fcntl::OFlag::O_PATH
        | nix::fcntl::OFlag::O_DIRECTORY
        | nix::fcntl::OFlag::O_NOFOLLOW
        | nix::fcntl::OFlag::O_CLOEXEC;
    let open_dir = |at: i32, name: &OsStr| -> nix::Result<OwnedFd> {
        nix::fcntl::openat(Some(at), name, dir_flags, Mode::empty())
            // SAFETY: fresh descriptor from openat.
            .map(|fd| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
    };
    let err = |e: Errno| Error::Io {
        context: format!("create {} in the rootfs", path.display()),
        err: std::io::Error::from_raw_os_error(e as i32),
    };
    let top = open_dir(root.as_raw_fd(), OsStr::new(".")).map_err(err)?;
    let mut stack: Vec<OwnedFd> = vec![top];
    let mut todo: VecDeque<std::ffi::OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        let cur = stack.last().expect("never empty").as_raw_fd();
        let st = match nix::sys::stat::fstatat(
            Some(cur),
            name.as_os_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => Some(st),
            Err(Errno::ENOENT) => None,
            Err(e) => return Err(err(e)),
        };
        match st.map(|st| SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT)) {
            None => {
                match nix::sys::stat::mkdirat(
                    Some(cur),
                    name.as_os_str(),
                    Mode::from_bits_truncate(0o755),
                ) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(err(e)),
                }
                stack.push(open_dir(cur, &name).map_err(err)?);
            }
            Some(SFlag::S_IFLNK) => {
                links += 1;
                if links > 40 {
                    return Err(err(Errno::ELOOP));
                }
                let target = nix::fcntl::readlinkat(Some(cur), name.as_os_str()).map_err(err)?;
                let target = Path::new(&target);
                if target.as_os_str().as_bytes().first() == Some(&b'/') {
                    stack.truncate(1);
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => todo.push_front(n.to_os_string()),
                        Component::ParentDir => todo.push_front("..".into()),
                        _ => {}
                    }
                }
            }
            Some(SFlag::S_IFDIR) => stack.push(open_dir(cur, &name).map_err(err)?),
            Some(_) => return Err(err(Errno::ENOTDIR)),
        }
    }
    Ok(stack.pop().expect("never empty"))
}

/// Open (creating an empty regular file if needed) a non-directory mount target in the root.
pub fn mkfile(root: BorrowedFd, path: &Path) -> Result<OwnedFd> {
    match open_in_root(root, path, libc::O_PATH) {
        Ok(fd) => return Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => return Err(e).ctx(|| format!("resolve {} in the rootfs", path.display())),
    }
    let (parent, name) = split(path)?;
    let dir = mkdir_all(root, parent)?;
    match nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        name,
        nix::fcntl::OFlag::O_CREAT
            | nix::fcntl::OFlag::O_EXCL
            | nix::fcntl::OFlag::O_WRONLY
            | nix::fcntl::OFlag::O_NOFOLLOW
            | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    ) {
        Ok(fd) => drop(nix::unistd::close(fd)),
        Err(Errno::EEXIST) => {}
        Err(e) => return Err(e).ctx(|| format!("create {} in the rootfs", path.display())),
    }
    open_in_root(root, path, libc::O_PATH)
        .ctx(|| format!("resolve {} in the rootfs", path.display()))
}

fn split(path: &Path) -> Result<(&Path, &OsStr)> {
    match (path.parent(), path.file_name()) {
        (Some(p), Some(n)) => Ok((p, n)),
        _ => Err(Error::config(format!(
            "{}: not a file path",
            path.display()
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// Preparing the rootfs (before pivot_root)

pub struct RootfsContext<'a> {
    pub spec: &'a Spec,
    pub rootfs: &'a Path,
    pub idmapped: &'a crate::idmap::DetachedBinds,
    /// Inside a new user namespace: mknod is not allowed, devices are bind-mounted instead.
    pub in_userns: bool,
    pub new_cgroupns: bool,
    /// Called before the first cgroup mount: the process must be in its cgroup (and its
    /// cgroup namespace) by then.
    pub before_cgroup_mount: &'a dyn Fn() -> Result<()>,
    /// The pid namespace is joined only after pivot_root (see `NsPlan::late_pid`): a procfs
    /// shows the pid namespace of whoever mounts it, so the mounts on /proc wait for that.
    pub defer_proc: bool,
}

/// What `prepare` made: the new root, and the mounts on /proc held back for the process in
/// the container's pid namespace ([`attach_deferred`]).
pub struct PreparedRoot {
    pub root: OwnedFd,
    pub deferred: Vec<Deferred>,
}

/// A mount on /proc prepared before pivot_root and attached after it.
pub enum Deferred {
    /// The proc filesystem itself: made with fsmount in the right pid namespace.
    Proc {
        dest: PathBuf,
        attrs: u64,
        options: Vec<(String, String)>,
    },
    /// A bind under /proc (lxcfs-style): the source cloned while the host is still in reach.
    Bind { dest: PathBuf, tree: OwnedFd },
}

/// Make the mount tree private to us, bind the rootfs onto itself (pivot_root needs a mount
/// point) and do every mount in config.json. Returns a descriptor of the new root.
pub fn prepare(ctx: &RootfsContext) -> Result<PreparedRoot> {
    let linux = ctx.spec.linux().as_ref();
    // An unbindable / could not be bound onto itself for pivot_root (EINVAL): that mode is
    // applied after the pivot (`finish`), as runc does; until then the tree is a slave.
    let propagation = linux
        .and_then(|l| l.rootfs_propagation().as_deref())
        .and_then(propagation_flag)
        .filter(|p| !p.contains(MsFlags::MS_UNBINDABLE))
        .unwrap_or(MsFlags::MS_SLAVE | MsFlags::MS_REC);
    mount(None::<&str>, "/", None::<&str>, propagation, None::<&str>)
        .ctx(|| "set the propagation of / in the container's mount namespace")?;
    // The parent of the rootfs must not be shared, or pivot_root fails (EINVAL). A
    // recursive slave or private / left no mount shared: nothing to look up then.
    let none_shared = propagation.contains(MsFlags::MS_REC)
        && propagation.intersects(MsFlags::MS_SLAVE | MsFlags::MS_PRIVATE);
    if !none_shared {
        make_parent_private(ctx.rootfs)?;
    }
    mount(
        Some(ctx.rootfs),
        ctx.rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .ctx(|| format!("bind mount the rootfs {}", ctx.rootfs.display()))?;
    let root: OwnedFd = std::fs::File::open(ctx.rootfs)
        .ctx(|| format!("open the rootfs {}", ctx.rootfs.display()))?
        .into();
    refuse_symlinked_pseudo_fs(root.as_fd())?;

    let mut dev_is_bind = false;
    let mut deferred = Vec::new();
    for (i, m) in ctx.spec.mounts().iter().flatten().enumerate() {
        if matches!(m.typ().as_deref(), Some("cgroup") | Some("cgroup2")) {
            (ctx.before_cgroup_mount)()?;
        }
        if ctx.defer_proc && m.destination().starts_with("/proc") {
            deferred.push(defer_proc_mount(m).map_err(|e| {
                Error::Child(format!("mounts[{i}] ({}): {e}", m.destination().display()))
            })?);
            continue;
        }
        mount_one(root.as_fd(), i, m, ctx).map_err(|e| {
            Error::Child(format!("mounts[{i}] ({}): {e}", m.destination().display()))
        })?;
        if m.destination() == Path::new("/dev") && is_bind(m) {
            dev_is_bind = true;
        }
    }
    if !dev_is_bind {
        create_devices(root.as_fd(), ctx)?;
        create_dev_symlinks(root.as_fd())?;
    }
    Ok(PreparedRoot { root, deferred })
}

/// A symlink at the rootfs's /proc or /sys would send the proc and sysfs mounts — and every
/// masked path and sysctl after them — wherever the image points it. runc 1.1.5 follows
/// it; newer runc refuses, and so do we.
fn refuse_symlinked_pseudo_fs(root: BorrowedFd) -> Result<()> {
    for name in ["proc", "sys"] {
        match nix::sys::stat::fstatat(
            Some(root.as_raw_fd()),
            name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                return Err(Error::config(format!(
                    "the rootfs's /{name} is a symlink: refusing to mount {name} through it"
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Prepare a mount on /proc for [`attach_deferred`]: the proc filesystem itself, or a bind
/// of an allowed file (the same rule as `refuse_shadowing_proc`, decided on the path since
/// nothing is resolved yet).
fn defer_proc_mount(m: &Mount) -> Result<Deferred> {
    let opts = MountOptions::parse(m.options().as_deref().unwrap_or(&[])).map_err(Error::Config)?;
    let dest = m.destination().to_path_buf();
    let mut attrs = 0;
    for (flag, attr) in [
        (MsFlags::MS_RDONLY, MOUNT_ATTR_RDONLY),
        (MsFlags::MS_NOSUID, MOUNT_ATTR_NOSUID),
        (MsFlags::MS_NODEV, MOUNT_ATTR_NODEV),
        (MsFlags::MS_NOEXEC, MOUNT_ATTR_NOEXEC),
    ] {
        if opts.flags.contains(flag) {
            attrs |= attr;
        }
    }
    if m.typ().as_deref() == Some("proc") {
        if dest != Path::new("/proc") {
            return Err(Error::config(
                "with a pid namespace joined by path, proc can only be mounted on /proc",
            ));
        }
        let options = opts
            .data
            .iter()
            .map(|d| match d.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (d.clone(), String::new()),
            })
            .collect();
        return Ok(Deferred::Proc {
            dest,
            attrs,
            options,
        });
    }
    let allowed = is_bind(m) && PROC_FILE_BINDS.iter().any(|a| Path::new(a) == dest);
    if !allowed {
        return Err(Error::config(format!(
            "{} is inside /proc: mounting over procfs is refused (only binds of {} are allowed)",
            dest.display(),
            PROC_FILE_BINDS.join(", ")
        )));
    }
    let source = m.source().clone().unwrap_or_default();
    let tree = crate::sys::open_tree_clone(&source, opts.flags.contains(MsFlags::MS_REC))
        .ctx(|| format!("clone the bind source {}", source.display()))?;
    if attrs != 0 {
        mount_setattr(tree.as_fd(), true, attrs, 0, None)
            .ctx(|| format!("set the options of {}", dest.display()))?;
    }
    Ok(Deferred::Bind { dest, tree })
}

/// Attach the mounts [`prepare`] held back, now that this process is in the container's pid
/// namespace and root.
pub fn attach_deferred(deferred: Vec<Deferred>) -> Result<()> {
    if deferred.is_empty() {
        return Ok(());
    }
    let root: OwnedFd = std::fs::File::open("/").ctx(|| "open the new root")?.into();
    for d in deferred {
        match d {
            Deferred::Proc {
                dest,
                attrs,
                options,
            } => {
                let target = mkdir_all(root.as_fd(), &dest)?;
                let opts: Vec<(&str, &str)> = options
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let proc = crate::sys::detached_fs("proc", &opts, attrs)
                    .ctx(|| "make the container's proc filesystem")?;
                crate::sys::move_mount(proc.as_fd(), target.as_fd())
                    .ctx(|| format!("mount proc on {}", dest.display()))?;
            }
            Deferred::Bind { dest, tree } => {
                let target = mkfile(root.as_fd(), &dest)?;
                if !crate::procfs::is_procfs(target.as_fd())? {
                    return Err(Error::config(format!(
                        "{} is not on procfs: the bind over it has nothing to cover",
                        dest.display()
                    )));
                }
                crate::sys::move_mount(tree.as_fd(), target.as_fd())
                    .ctx(|| format!("bind over {}", dest.display()))?;
            }
        }
    }
    Ok(())
}

fn make_parent_private(rootfs: &Path) -> Result<()> {
    // Find the mount that contains the rootfs and make it private if it is shared.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ctx(|| "read mountinfo")?;
    let mut best: Option<(&str, bool)> = None;
    for line in mountinfo.lines() {
        let mut f = line.split(' ');
        let mnt = match f.nth(4) {
            Some(m) => m,
            None => continue,
        };
        let optional: Vec<&str> = f.skip(1).take_while(|s| *s != "-").collect();
        let shared = optional.iter().any(|o| o.starts_with("shared:"));
        let mnt_path = Path::new(mnt);
        if rootfs.starts_with(mnt_path) && best.is_none_or(|(b, _)| mnt.len() >= b.len()) {
            best = Some((mnt, shared));
        }
    }
    if let Some((mnt, true)) = best {
        mount(
            None::<&str>,
            mnt,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .ctx(|| format!("make {mnt} private"))?;
    }
    Ok(())
}

pub fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

fn mount_one(root: BorrowedFd, index: usize, m: &Mount, ctx: &RootfsContext) -> Result<()> {
    let mut opts =
        MountOptions::parse(m.options().as_deref().unwrap_or(&[])).map_err(Error::Config)?;
    if is_read_only_dev(m) {
        // /dev/pts, /dev/shm, the device nodes and links still go in: read-only at the end
        // (`finish`), as runc does.
        opts.flags.remove(MsFlags::MS_RDONLY);
    }
    let typ = m.typ().as_deref().unwrap_or("");
    let dest = m.destination();
    if typ == "cgroup" || typ == "cgroup2" {
        return mount_cgroup(root, dest, &opts, ctx);
    }
    let bind = is_bind(m);
    let source = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
    let target = if bind {
        // A source prepared in the parent is looked at through its descriptor: by path it
        // may not be reachable from inside a user namespace.
        let is_dir = match ctx.idmapped.get(index) {
            Some(tree) => nix::sys::stat::fstat(tree.as_raw_fd())
                .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
                .ctx(|| format!("bind source {}", source.display()))?,
            None => std::fs::metadata(&source)
                .ctx(|| format!("bind source {}", source.display()))?
                .is_dir(),
        };
        if is_dir {
            mkdir_all(root, dest)?
        } else {
            mkfile(root, dest)?
        }
    } else {
        mkdir_all(root, dest)?
    };
    refuse_shadowing_proc(root, dest, typ, bind, &target, ctx.rootfs)?;
    let target_path = fd_path(target.as_fd());
    if bind {
        if let Some(tree) = ctx.idmapped.get(index) {
            crate::sys::move_mount(tree, target.as_fd()).ctx(|| {
                format!(
                    "attach the prepared mount of {} at {}",
                    source.display(),
                    dest.display()
                )
            })?;
        } else {
            mount(
                Some(&source),
                target_path.as_str(),
                None::<&str>,
                MsFlags::MS_BIND | (opts.flags & MsFlags::MS_REC),
                None::<&str>,
            )
            .ctx(|| format!("bind {} to {}", source.display(), dest.display()))?;
        }
        let extra = opts.flags - (MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !extra.is_empty() {
            // Re-resolve: the old descriptor points at the directory under the new mount.
            let mounted = open_in_root(root, dest, libc::O_PATH)
                .ctx(|| format!("resolve {}", dest.display()))?;
            remount_bind(&fd_path(mounted.as_fd()), extra)
                .ctx(|| format!("remount {} with {:?}", dest.display(), m.options()))?;
        }
    } else {
        // For tmpcopyup, keep a handle on the directory the tmpfs is about to cover.
        let under = if opts.copy_up && typ == "tmpfs" {
            Some(
                open_in_root(root, dest, libc::O_RDONLY | libc::O_DIRECTORY)
                    .ctx(|| format!("open {}", dest.display()))?,
            )
        } else {
            None
        };
        let data = opts.data();
        let result = mount(
            Some(&source),
            target_path.as_str(),
            Some(typ),
            opts.flags,
            data.as_deref(),
        );
        match result {
            Ok(()) => {}
            // sysfs needs a network namespace of our own when we are in a user namespace; as
            // runc does, fall back to a recursive, read-only bind of the host's /sys.
            Err(Errno::EPERM) if typ == "sysfs" && ctx.in_userns => {
                mount(
                    Some("/sys"),
                    target_path.as_str(),
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .ctx(|| format!("bind /sys to {}", dest.display()))?;
            }
            Err(e) => {
                return Err(e).ctx(|| {
                    format!(
                        "mount {} ({typ}) on {} with {:?}",
                        source.display(),
                        dest.display(),
                        m.options().as_deref().unwrap_or(&[])
                    )
                })
            }
        }
        if let Some(under) = under {
            let mounted = open_in_root(root, dest, libc::O_RDONLY | libc::O_DIRECTORY)
                .ctx(|| format!("resolve {}", dest.display()))?;
            copy_tree(under.as_fd(), mounted.as_fd()).ctx(|| {
                format!(
                    "tmpcopyup: copy the contents of {} into the tmpfs",
                    dest.display()
                )
            })?;
        }
    }
    if opts.propagation.is_some() || opts.attr_set != 0 || opts.attr_clr != 0 {
        let mounted =
            open_in_root(root, dest, libc::O_PATH).ctx(|| format!("resolve {}", dest.display()))?;
        if let Some(p) = opts.propagation {
            mount(
                None::<&str>,
                fd_path(mounted.as_fd()).as_str(),
                None::<&str>,
                p,
                None::<&str>,
            )
            .ctx(|| format!("set propagation of {}", dest.display()))?;
        }
        if opts.attr_set != 0 || opts.attr_clr != 0 {
            mount_setattr(mounted.as_fd(), true, opts.attr_set, opts.attr_clr, None)
                .ctx(|| format!("set recursive attributes on {}", dest.display()))?;
        }
    }
    Ok(())
}

/// Copy a directory tree with modes, owners and symlinks (for tmpcopyup), from one
/// directory descriptor to another. Every step is relative to a descriptor opened with
/// O_NOFOLLOW, so nothing in the image can redirect the copy, and no path string is ever
/// built below /proc/self/fd; symlinks are copied as links, never followed.
fn copy_tree(from: BorrowedFd, to: BorrowedFd) -> nix::Result<()> {
    use nix::fcntl::{openat, AtFlags, OFlag};
    use nix::sys::stat::{fchmod, fstat, fstatat, mkdirat};
    let owned = |fd: i32| {
        // SAFETY: fresh descriptor from openat.
        unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
    };
    let chown_at = |dir: BorrowedFd, name: &OsStr, uid, gid| {
        fchownat(
            Some(dir.as_raw_fd()),
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
    };
    let top = fstat(from.as_raw_fd())?;
    fchmod(
        to.as_raw_fd(),
        Mode::from_bits_truncate(top.st_mode & 0o7777),
    )?;
    nix::unistd::fchown(
        to.as_raw_fd(),
        Some(Uid::from_raw(top.st_uid)),
        Some(Gid::from_raw(top.st_gid)),
    )?;
    let listing = owned(openat(
        Some(from.as_raw_fd()),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?);
    let mut dir = nix::dir::Dir::from_fd(listing.as_raw_fd())?;
    std::mem::forget(listing); // the Dir owns it now
    for entry in dir.iter() {
        let entry = entry?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        let st = fstatat(Some(from.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
        let mode = Mode::from_bits_truncate(st.st_mode & 0o7777);
        match SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT) {
            SFlag::S_IFLNK => {
                let target = nix::fcntl::readlinkat(Some(from.as_raw_fd()), name)?;
                nix::unistd::symlinkat(target.as_os_str(), Some(to.as_raw_fd()), name)?;
            }
            SFlag::S_IFDIR => {
                mkdirat(Some(to.as_raw_fd()), name, Mode::from_bits_truncate(0o700))?;
                let flags =
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                let src = owned(openat(Some(from.as_raw_fd()), name, flags, Mode::empty())?);
                let dst = owned(openat(Some(to.as_raw_fd()), name, flags, Mode::empty())?);
                copy_tree(src.as_fd(), dst.as_fd())?;
                continue;
            }
            SFlag::S_IFREG => {
                let src = owned(openat(
                    Some(from.as_raw_fd()),
                    name,
                    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )?);
                let dst = owned(openat(
                    Some(to.as_raw_fd()),
                    name,
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )?);
                let (mut r, mut w) = (std::fs::File::from(src), std::fs::File::from(dst));
                std::io::copy(&mut r, &mut w)
                    .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
                fchmod(w.as_raw_fd(), mode)?;
            }
            // Device nodes, fifos and sockets are not copied up (as runc).
            _ => continue,
        }
        chown_at(to, name, st.st_uid, st.st_gid)?;
    }
    Ok(())
}

/// The files of procfs a bind may cover (lxcfs's, and CRIU's ns_last_pid), as runc allows.
const PROC_FILE_BINDS: &[&str] = &[
    "/proc/cpuinfo",
    "/proc/diskstats",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/swaps",
    "/proc/uptime",
    "/proc/loadavg",
    "/proc/slabinfo",
    "/proc/net/dev",
    "/proc/sys/kernel/ns_last_pid",
];

/// runc's rule (CVE-2019-16884 class): nothing but a proc filesystem is mounted on the
/// container's /proc, and nothing is mounted over a file or directory of procfs except the
/// files lxcfs-style tools provide (and CRIU's ns_last_pid) — otherwise a later write to
/// /proc/sys, /proc/self/attr or a masked path could land in whatever the mount brought.
/// Decided on the resolved target, so a symlink in the image cannot route around it.
fn refuse_shadowing_proc(
    root: BorrowedFd,
    dest: &Path,
    typ: &str,
    bind: bool,
    target: &OwnedFd,
    rootfs: &Path,
) -> Result<()> {
    const ALLOWED: &[&str] = PROC_FILE_BINDS;
    let same = |a: &nix::sys::stat::FileStat, b: &nix::sys::stat::FileStat| {
        a.st_dev == b.st_dev && a.st_ino == b.st_ino
    };
    let st =
        nix::sys::stat::fstat(target.as_raw_fd()).ctx(|| format!("stat {}", dest.display()))?;
    let proc_dir = open_in_root(root, Path::new("/proc"), libc::O_PATH)
        .ok()
        .and_then(|fd| nix::sys::stat::fstat(fd.as_raw_fd()).ok());
    let is_proc_dir = proc_dir.is_some_and(|p| same(&p, &st))
        || crate::procfs::is_procfs(target.as_fd())? && st.st_ino == 1;
    if is_proc_dir {
        if typ == "proc" {
            return Ok(());
        }
        return Err(Error::config(format!(
            "{} is the container's /proc: only a proc filesystem can be mounted there (not {})",
            dest.display(),
            if bind { "a bind mount" } else { typ }
        )));
    }
    if !crate::procfs::is_procfs(target.as_fd())? {
        return Ok(());
    }
    // On procfs: only a file bind at one of the allowed paths, really resolved there.
    let resolved = std::fs::read_link(fd_path(target.as_fd())).unwrap_or_default();
    let allowed = bind
        && ALLOWED
            .iter()
            .any(|a| Path::new(a) == dest && resolved == rootfs.join(a.trim_start_matches('/')));
    if allowed {
        return Ok(());
    }
    Err(Error::config(format!(
        "{} is inside /proc: mounting over procfs is refused (only binds of {} are allowed)",
        dest.display(),
        ALLOWED.join(", ")
    )))
}

/// Remount a bind mount with new flags. In a user namespace some flags of the source are
/// locked (nodev, nosuid, ...): if the kernel refuses, keep the locked ones and retry.
fn remount_bind(target: &str, flags: MsFlags) -> nix::Result<()> {
    let base = MsFlags::MS_BIND | MsFlags::MS_REMOUNT;
    match mount(
        None::<&str>,
        target,
        None::<&str>,
        base | flags,
        None::<&str>,
    ) {
        Err(Errno::EPERM) => {
            let locked = statvfs_flags(target).unwrap_or(MsFlags::empty());
            mount(
                None::<&str>,
                target,
                None::<&str>,
                base | flags | locked,
                None::<&str>,
            )
        }
        r => r,
    }
}

fn statvfs_flags(path: &str) -> Option<MsFlags> {
    use nix::sys::statvfs::{statvfs, FsFlags};
    let st = statvfs(path).ok()?;
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(fs) {
            out |= ms;
        }
    }
    Some(out)
}

/// cgroup mounts. With a cgroup namespace the cgroup filesystems are mounted afresh (they show
/// the container's cgroup as their root); without one, the container's own cgroup directories
/// are bind-mounted, so the container never sees its siblings.
fn mount_cgroup(
    root: BorrowedFd,
    dest: &Path,
    opts: &MountOptions,
    ctx: &RootfsContext,
) -> Result<()> {
    let hierarchies = host_cgroup_hierarchies()?;
    let own = own_cgroups()?;
    let flags = opts.flags
        & (MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC
            | MsFlags::MS_RDONLY
            | MsFlags::MS_RELATIME);
    let target = mkdir_all(root, dest)?;
    let unified_only = hierarchies.len() == 1
        && hierarchies[0].version == 2
        && hierarchies[0].mount_point == Path::new("/sys/fs/cgroup");
    if unified_only {
        let tp = fd_path(target.as_fd());
        return if ctx.new_cgroupns {
            mount(
                Some("cgroup2"),
                tp.as_str(),
                Some("cgroup2"),
                flags,
                None::<&str>,
            )
            .ctx(|| format!("mount cgroup2 on {}", dest.display()))
        } else {
            let src = join_cgroup(
                Path::new("/sys/fs/cgroup"),
                own.get("").map(String::as_str).unwrap_or("/"),
            );
            mount(
                Some(&src),
                tp.as_str(),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .ctx(|| format!("bind {} on {}", src.display(), dest.display()))?;
            remount_resolved(root, dest, flags)
        };
    }
    // v1 / hybrid: a tmpfs holding one directory per hierarchy.
    mount(
        Some("tmpfs"),
        fd_path(target.as_fd()).as_str(),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=755"),
    )
    .ctx(|| format!("mount tmpfs for cgroups on {}", dest.display()))?;
    for h in &hierarchies {
        let name = h.dir_name();
        let sub = dest.join(&name);
        let fd = mkdir_all(root, &sub)?;
        let tp = fd_path(fd.as_fd());
        let key = if h.version == 2 {
            String::new()
        } else {
            h.controllers.clone()
        };
        if ctx.new_cgroupns {
            let (fstype, data) = if h.version == 2 {
                ("cgroup2", None)
            } else {
                ("cgroup", Some(h.controllers.clone()))
            };
            // A fresh cgroup mount fails with EBUSY while another task (CRIU's cgroup
            // handling, seen here, for as long as a dump or restore) rebinds controllers:
            // retry briefly. On a hybrid host the unified hierarchy is extra (runc never
            // mounts it): if it stays busy, its directory is left empty rather than failing
            // the container; a v1 hierarchy must be mounted.
            let mut tries = 0;
            let mounted = loop {
                match mount(
                    Some("cgroup"),
                    tp.as_str(),
                    Some(fstype),
                    flags,
                    data.as_deref(),
                ) {
                    Err(Errno::EBUSY) if tries < 50 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    r => break r,
                }
            };
            if h.version == 2 && mounted == Err(Errno::EBUSY) {
                continue;
            }
            mounted.ctx(|| format!("mount cgroup {name} on {}", sub.display()))?;
        } else {
            let within = own.get(&key).map(String::as_str).unwrap_or("/");
            let src = join_cgroup(&h.mount_point, within);
            mount(
                Some(&src),
                tp.as_str(),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .ctx(|| format!("bind {} on {}", src.display(), sub.display()))?;
            remount_resolved(root, &sub, flags)?;
        }
        // cpu,cpuacct mounted together also get "cpu" and "cpuacct" symlinks, as on the host.
        if name.contains(',') {
            for part in name.split(',') {
                let dir = mkdir_all(root, dest)?;
                let _ = nix::unistd::symlinkat(name.as_str(), Some(dir.as_raw_fd()), part);
            }
        }
    }
    if opts.flags.contains(MsFlags::MS_RDONLY) {
        let fd =
            open_in_root(root, dest, libc::O_PATH).ctx(|| format!("resolve {}", dest.display()))?;
        remount_bind(
            &fd_path(fd.as_fd()),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        )
        .ctx(|| format!("remount {} read-only", dest.display()))?;
    }
    Ok(())
}

/// Remount the mount now at `dest` (re-resolved: a descriptor taken before mounting points
/// at the directory underneath). Nothing to do without flags.
fn remount_resolved(root: BorrowedFd, dest: &Path, flags: MsFlags) -> Result<()> {
    if flags.is_empty() {
        return Ok(());
    }
    let fd =
        open_in_root(root, dest, libc::O_PATH).ctx(|| format!("resolve {}", dest.display()))?;
    remount_bind(&fd_path(fd.as_fd()), flags).ctx(|| format!("remount {}", dest.display()))
}

fn join_cgroup(mount_point: &Path, within: &str) -> PathBuf {
    mount_point.join(within.trim_start_matches('/'))
}

struct Hierarchy {
    version: u8,
    mount_point: PathBuf,
    /// v1: the superblock options naming the controllers ("cpu,cpuacct", "name=systemd").
    controllers: String,
}

impl Hierarchy {
    fn dir_name(&self) -> String {
        if self.version == 2 {
            return "unified".into();
        }
        self.controllers
            .strip_prefix("name=")
            .unwrap_or(&self.controllers)
            .to_string()
    }
}

/// The host's hierarchies as the cgroup manager detected them before the clone (no
/// mountinfo read here, on the init's hot path).
fn host_cgroup_hierarchies() -> Result<Vec<Hierarchy>> {
    Ok(vessel_cgroups::host_hierarchies()?
        .into_iter()
        .map(|h| Hierarchy {
            version: if h.controllers.is_some() { 1 } else { 2 },
            mount_point: h.mount,
            controllers: h.controllers.unwrap_or_default(),
        })
        .collect())
}

/// /proc/self/cgroup as a map from the controller list ("" for v2) to the path.
fn own_cgroups() -> Result<std::collections::HashMap<String, String>> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ctx(|| "read /proc/self/cgroup")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let _id = f.next()?;
            let ctl = f.next()?;
            let path = f.next()?;
            Some((ctl.to_string(), path.to_string()))
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Devices

fn default_devices() -> [(&'static str, u64, u64); 6] {
    [
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ]
}

fn create_devices(root: BorrowedFd, ctx: &RootfsContext) -> Result<()> {
    let listed: Vec<&LinuxDevice> = ctx
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().as_ref())
        .map(|d| d.iter().collect())
        .unwrap_or_default();
    for (path, major, minor) in default_devices() {
        if listed.iter().any(|d| d.path() == Path::new(path)) {
            continue;
        }
        make_device(
            root,
            Path::new(path),
            SFlag::S_IFCHR,
            major,
            minor,
            0o666,
            0,
            0,
            ctx.in_userns,
        )?;
    }
    for (i, d) in listed.iter().enumerate() {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(Error::config(format!(
                    "linux.devices[{i}].type: \"a\" is only valid in device cgroup rules"
                )))
            }
        };
        // Outside /dev too, as runc: the path is resolved inside the rootfs like any other.
        if !d.path().is_absolute() {
            return Err(Error::config(format!(
                "linux.devices[{i}].path: {} must be absolute",
                d.path().display()
            )));
        }
        make_device(
            root,
            d.path(),
            kind,
            d.major() as u64,
            d.minor() as u64,
            d.file_mode().unwrap_or(0o666),
            d.uid().unwrap_or(0),
            d.gid().unwrap_or(0),
            ctx.in_userns,
        )
        .map_err(|e| Error::Child(format!("linux.devices[{i}] ({}): {e}", d.path().display())))?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn make_device(
    root: BorrowedFd,
    path: &Path,
    kind: SFlag,
    major: u64,
    minor: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    in_userns: bool,
) -> Result<()> {
    let (parent, name) = split(path)?;
    let dir = mkdir_all(root, parent)?;
    if in_userns {
        // mknod is not allowed in a user namespace: bind the host's node instead.
        let target = mkfile(root, path)?;
        return mount(
            Some(path),
            fd_path(target.as_fd()).as_str(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .ctx(|| format!("bind the host's {}", path.display()));
    }
    let perm = Mode::from_bits_truncate(mode & 0o7777);
    match mknodat(
        Some(dir.as_raw_fd()),
        name,
        kind,
        perm,
        nix::sys::stat::makedev(major, minor),
    ) {
        Ok(()) => {}
        Err(Errno::EEXIST) => {
            // Replace whatever the image put there (it could be a symlink to a host path).
            nix::unistd::unlinkat(
                Some(dir.as_raw_fd()),
                name,
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            )
            .ctx(|| format!("replace {}", path.display()))?;
            mknodat(
                Some(dir.as_raw_fd()),
                name,
                kind,
                perm,
                nix::sys::stat::makedev(major, minor),
            )
            .ctx(|| format!("mknod {}", path.display()))?;
        }
        Err(e) => return Err(e).ctx(|| format!("mknod {}", path.display())),
    }
    // mknod obeys the umask; set the exact mode and owner asked for.
    fchmodat(
        Some(dir.as_raw_fd()),
        name,
        perm,
        FchmodatFlags::NoFollowSymlink,
    )
    .or_else(|e| {
        if e == Errno::EOPNOTSUPP {
            Ok(())
        } else {
            Err(e)
        }
    })
    .ctx(|| format!("chmod {}", path.display()))?;
    fchownat(
        Some(dir.as_raw_fd()),
        name,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .ctx(|| format!("chown {}", path.display()))?;
    Ok(())
}

fn create_dev_symlinks(root: BorrowedFd) -> Result<()> {
    let dev = mkdir_all(root, Path::new("/dev"))?;
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "core"));
    }
    for (target, name) in links {
        match nix::unistd::symlinkat(target, Some(dev.as_raw_fd()), name) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(e).ctx(|| format!("symlink /dev/{name}")),
        }
    }
    // /dev/ptmx must be the container's own devpts instance, not a host node.
    if open_in_root(root, Path::new("/dev/pts/ptmx"), libc::O_PATH).is_ok() {
        let _ = nix::unistd::unlinkat(
            Some(dev.as_raw_fd()),
            "ptmx",
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        nix::unistd::symlinkat("pts/ptmx", Some(dev.as_raw_fd()), "ptmx")
            .ctx(|| "symlink /dev/ptmx")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Switching root, and what comes after

pub fn switch_root(root: OwnedFd, rootfs: &Path, no_pivot: bool) -> Result<()> {
    if no_pivot {
        hide_full_pseudo_fs(rootfs)?;
        fchdir(root.as_raw_fd()).ctx(|| "chdir into the rootfs")?;
        mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .ctx(|| "move the rootfs to / (--no-pivot)")?;
        nix::unistd::chroot(".").ctx(|| "chroot into the rootfs")?;
    } else {
        let old: OwnedFd = std::fs::File::open("/").ctx(|| "open the old root")?.into();
        fchdir(root.as_raw_fd()).ctx(|| "chdir into the rootfs")?;
        // pivot_root(".", ".") stacks the old root on top of the new one; detaching it leaves
        // only the new root, with no directory needed for the old one.
        pivot_root(".", ".").ctx(|| "pivot_root into the rootfs")?;
        fchdir(old.as_raw_fd()).ctx(|| "chdir into the old root")?;
        mount(
            None::<&str>,
            ".",
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        )
        .ctx(|| "make the old root a slave")?;
        umount2(".", MntFlags::MNT_DETACH).ctx(|| "detach the old root")?;
    }
    chdir("/").ctx(|| "chdir to the new root")?;
    Ok(())
}

/// --no-pivot leaves the old root's mounts in the mount namespace, under the chroot: a
/// fully visible procfs or sysfs among them lets the container mount a fresh one from a
/// nested user namespace (the kernel's mount_too_revealing check looks at the namespace, not
/// the chroot), bypassing every masked and read-only path. As runc does, detach each full
/// proc and sysfs mount outside the rootfs, or cover it with a tmpfs where that is refused.
fn hide_full_pseudo_fs(rootfs: &Path) -> Result<()> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ctx(|| "read mountinfo")?;
    let mut targets: Vec<String> = Vec::new();
    for line in mountinfo.lines() {
        let (pre, post) = match line.split_once(" - ") {
            Some(x) => x,
            None => continue,
        };
        let fields: Vec<&str> = pre.split(' ').collect();
        let fstype = post.split(' ').next().unwrap_or("");
        let (Some(root), Some(point)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        let point = unescape_mountinfo(point);
        if *root == "/"
            && matches!(fstype, "proc" | "sysfs")
            && !Path::new(&point).starts_with(rootfs)
        {
            targets.push(point);
        }
    }
    // Deepest first, so a parent's detach does not hide a child still to be handled.
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        match mount(
            None::<&str>,
            t.as_str(),
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        ) {
            Ok(()) => {}
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(e).ctx(|| format!("--no-pivot: make {t} a slave")),
        }
        match umount2(t.as_str(), MntFlags::MNT_DETACH) {
            Ok(()) => {}
            Err(Errno::EINVAL | Errno::EPERM) => mount(
                Some("tmpfs"),
                t.as_str(),
                Some("tmpfs"),
                MsFlags::empty(),
                None::<&str>,
            )
            .ctx(|| format!("--no-pivot: cover {t}"))?,
            Err(e) => return Err(e).ctx(|| format!("--no-pivot: detach {t}")),
        }
    }
    Ok(())
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// After pivot_root: propagation of the new root, sysctls, masked and read-only paths, and a
/// read-only root if asked. Every write to /proc goes through a verified procfs handle and
/// every mount is made with descriptors (the new mount API), never by a path the container's
/// mounts or symlinks could redirect.
pub fn finish(spec: &Spec) -> Result<()> {
    let linux = spec.linux().as_ref();
    if let Some(p) = linux
        .and_then(|l| l.rootfs_propagation().as_deref())
        .and_then(propagation_flag)
    {
        mount(None::<&str>, "/", None::<&str>, p, None::<&str>).ctx(|| "set rootfsPropagation")?;
    }
    let sysctl = linux
        .and_then(|l| l.sysctl().as_ref())
        .filter(|s| !s.is_empty());
    let masked = linux
        .and_then(|l| l.masked_paths().as_ref())
        .map_or(&[][..], |v| v);
    let readonly = linux
        .and_then(|l| l.readonly_paths().as_ref())
        .map_or(&[][..], |v| v);
    let root: OwnedFd = std::fs::File::open("/").ctx(|| "open the new root")?.into();
    if let Some(sysctl) = sysctl {
        let proc = crate::procfs::Proc::open(Path::new("/proc"))
            .map_err(|e| Error::config(format!("linux.sysctl: {e}")))?;
        for (key, value) in sysctl {
            proc.write_sysctl(key, value)
                .map_err(|e| Error::config(format!("linux.sysctl: set {key}={value}: {e}")))?;
        }
    }
    if !masked.is_empty() {
        let null = verified_dev_null(root.as_fd())?;
        for p in masked {
            mask_path(root.as_fd(), p, &null)
                .map_err(|e| Error::config(format!("linux.maskedPaths: {p}: {e}")))?;
        }
    }
    for p in readonly {
        readonly_path(root.as_fd(), p)
            .map_err(|e| Error::config(format!("linux.readonlyPaths: {p}: {e}")))?;
    }
    if spec.mounts().iter().flatten().any(is_read_only_dev) {
        let dev =
            open_in_root(root.as_fd(), Path::new("/dev"), libc::O_PATH).ctx(|| "resolve /dev")?;
        mount_setattr(dev.as_fd(), false, MOUNT_ATTR_RDONLY, 0, None)
            .ctx(|| "make /dev read-only")?;
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        mount_setattr(root.as_fd(), false, MOUNT_ATTR_RDONLY, 0, None)
            .ctx(|| "root.readonly: make / read-only")?;
    }
    Ok(())
}

/// A mount on /dev asked to be read-only.
fn is_read_only_dev(m: &Mount) -> bool {
    m.destination() == Path::new("/dev")
        && m.options().iter().flatten().any(|o| o == "ro")
        && !m.options().iter().flatten().any(|o| o == "rw")
}

/// The container's /dev/null, checked to be the null character device (1:3): what masks a
/// file must not be something the container swapped in (CVE-2025-31133).
fn verified_dev_null(root: BorrowedFd) -> Result<OwnedFd> {
    let fd = open_in_root(
        root,
        Path::new("/dev/null"),
        libc::O_PATH | libc::O_NOFOLLOW,
    )
    .ctx(|| "linux.maskedPaths: open /dev/null in the container")?;
    let st = nix::sys::stat::fstat(fd.as_raw_fd()).ctx(|| "stat /dev/null")?;
    let is_char = SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT) == SFlag::S_IFCHR;
    if !is_char || st.st_rdev != nix::sys::stat::makedev(1, 3) {
        return Err(Error::config(
            "linux.maskedPaths: /dev/null in the container is not the null device (char 1:3); \
             refusing to mask paths with it",
        ));
    }
    Ok(fd)
}

/// The target of a masked or read-only path, resolved inside the root; None if it does not
/// exist (nothing to hide). Below /proc it must still be procfs: a mount shadowing it would
/// otherwise be "masked" instead of the real file.
fn resolve_protected_path(root: BorrowedFd, path: &str) -> Result<Option<OwnedFd>> {
    let fd = match open_in_root(root, Path::new(path), libc::O_PATH) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e).ctx(|| format!("resolve {path}")),
    };
    if Path::new(path).starts_with("/proc") && !crate::procfs::is_procfs(fd.as_fd())? {
        return Err(Error::config(format!(
            "{path} is not on procfs (a mount shadows /proc)"
        )));
    }
    Ok(Some(fd))
}

fn mask_path(root: BorrowedFd, path: &str, null: &OwnedFd) -> Result<()> {
    let Some(target) = resolve_protected_path(root, path)? else {
        return Ok(());
    };
    let st = nix::sys::stat::fstat(target.as_raw_fd()).ctx(|| format!("stat {path}"))?;
    let cover = if SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT) == SFlag::S_IFDIR {
        crate::sys::detached_tmpfs(&[("size", "0k")], MOUNT_ATTR_RDONLY)
            .ctx(|| "make an empty read-only tmpfs")?
    } else {
        crate::sys::open_tree_clone_fd(null.as_fd(), false).ctx(|| "clone /dev/null")?
    };
    crate::sys::move_mount(cover.as_fd(), target.as_fd()).ctx(|| format!("mask {path}"))
}

fn readonly_path(root: BorrowedFd, path: &str) -> Result<()> {
    let Some(target) = resolve_protected_path(root, path)? else {
        return Ok(());
    };
    let tree =
        crate::sys::open_tree_clone_fd(target.as_fd(), true).ctx(|| format!("bind {path}"))?;
    mount_setattr(
        tree.as_fd(),
        true,
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
        0,
        None,
    )
    .ctx(|| format!("make {path} read-only"))?;
    crate::sys::move_mount(tree.as_fd(), target.as_fd()).ctx(|| format!("attach {path} read-only"))
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
