//! Unpacking one layer tarball into an empty snapshot directory, in overlay form.
//!
//! Every entry is checked before anything is written: its path must be relative and free
//! of `..`; its parent is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`
//! relative to the snapshot root, so a symlink planted by an earlier entry can never carry a
//! later write (or a hardlink) outside the root — the kernel refuses it with EXDEV and we
//! refuse the layer. Final components are created with `*at` calls that never follow
//! symlinks. Whiteouts become overlay whiteouts (0/0 character devices) and opaque markers
//! become the `trusted.overlay.opaque` xattr.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{
    AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid, XattrFlags,
};
use rustix::io::Errno;

use crate::error::{Error, Result};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";
const XATTR_PAX_PREFIX: &str = "SCHILY.xattr.";
const OVERLAY_XATTR_PREFIX: &str = "trusted.overlay.";
const COPY_BUF: usize = 256 * 1024;

#[derive(Clone, Debug)]
pub struct UnpackOptions {
    /// Create block and character devices. Only root can, and only root should be trusted
    /// with what a layer's device nodes would grant.
    pub allow_devices: bool,
    /// Refuse a layer whose files add up to more than this (a decompression bomb).
    pub max_bytes: u64,
    /// Apply the owners recorded in the tar (needs CAP_CHOWN).
    pub preserve_owners: bool,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        let root = rustix::process::geteuid().is_root();
        UnpackOptions {
            allow_devices: root,
            max_bytes: 1 << 40,
            preserve_owners: root,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct UnpackStats {
    /// Sum of the sizes of regular files (docker's notion of a layer's size).
    pub bytes: u64,
    pub entries: u64,
}

/// Unpacks `reader` (an uncompressed tar) into `root`, an empty directory we own.
pub fn unpack(reader: impl Read, root: &Path, opts: &UnpackOptions) -> Result<UnpackStats> {
    let root_fd = rustix::fs::open(
        root,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io(root, e.into()))?;
    let mut ctx = Unpacker {
        root: root_fd,
        opts: opts.clone(),
        stats: UnpackStats::default(),
        dirs: Vec::new(),
        buf: vec![0; COPY_BUF],
        parent_cache: None,
        umask: current_umask(),
        euid: rustix::process::geteuid().as_raw(),
        egid: rustix::process::getegid().as_raw(),
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| crate::error::from_io("reading layer tar", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| crate::error::from_io("reading layer tar", e))?;
        ctx.entry(entry)?;
    }
    ctx.finish()?;
    Ok(ctx.stats)
}

struct Unpacker {
    root: OwnedFd,
    opts: UnpackOptions,
    stats: UnpackStats,
    /// Directory times are applied last: creating children changes a directory's mtime.
    dirs: Vec<(Vec<u8>, Timestamps)>,
    buf: Vec<u8>,
    /// The last parent directory opened, by path: tar lists a directory's files together,
    /// so this saves re-resolving the same path for every file. Dropped whenever anything
    /// is removed, the only way an already-resolved path could come to mean another place.
    parent_cache: Option<(Vec<Vec<u8>>, std::rc::Rc<Parent>)>,
    /// The process umask, to know when a file created with its mode needs no chmod.
    umask: Option<u32>,
    euid: u32,
    egid: u32,
}

/// An open parent directory, with the group new entries get in it (its own when it is
/// set-group-ID, else ours), so an owner that already matches needs no chown.
struct Parent {
    fd: OwnedFd,
    new_gid: u32,
}

/// Which metadata calls an entry still needs. A file just created by us already has our
/// owner, and its mode too when neither the umask nor set-id bits got in the way; skipping
/// those calls saves two syscalls a file on the usual root-owned layer.
#[derive(Clone, Copy)]
struct Fixups {
    chown: bool,
    chmod: bool,
}

impl Fixups {
    const ALL: Fixups = Fixups {
        chown: true,
        chmod: true,
    };
}

/// What an entry is, parsed from the header before anything touches the disk.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    times: Timestamps,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Unpacker {
    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            return Ok(());
        }
        let comps = clean_path(&raw_path).map_err(|r| Error::hostile(&shown, r))?;
        let meta = self.meta(&mut entry, &shown)?;
        self.stats.entries += 1;

        let Some((name, parent)) = comps.split_last() else {
            // "./" — the layer's root directory itself.
            if kind.is_dir() {
                self.apply_meta(Target::Fd(self.root.as_fd()), &meta, &shown, Fixups::ALL)?;
                self.dirs.push((Vec::new(), meta.times));
                return Ok(());
            }
            return Err(Error::hostile(
                &shown,
                "names the layer root but is not a directory",
            ));
        };
        let parent_dir = self.parent_dir(parent, &shown)?;
        let parent_fd = parent_dir.fd.as_fd();

        if name.starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(parent_fd, name, &shown);
        }

        match kind {
            tar::EntryType::Directory => {
                let existing = stat_at(parent_fd, name);
                match existing {
                    Some(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
                    Some(_) => {
                        self.parent_cache = None;
                        remove_at(parent_fd, name, &shown)?;
                        mkdir_at(parent_fd, name, &shown)?;
                    }
                    None => mkdir_at(parent_fd, name, &shown)?,
                }
                let dir = open_beneath(parent_fd, name, true)
                    .map_err(|e| errno_err(&shown, "opening directory", e))?;
                self.apply_meta(Target::Fd(dir.as_fd()), &meta, &shown, Fixups::ALL)?;
                self.dirs.push((comps.join(&b'/'), meta.times));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.header().size().unwrap_or(0);
                self.stats.bytes = self.stats.bytes.saturating_add(size);
                if self.stats.bytes > self.opts.max_bytes {
                    return Err(Error::LayerTooLarge {
                        limit: self.opts.max_bytes,
                    });
                }
                // Created with its final permissions; an existing entry (an earlier one of
                // the same name) is replaced, as tar does.
                let perm = meta.mode & 0o777;
                let fd = self.create_replacing(parent_fd, name, &shown, "creating file", || {
                    create_file(parent_fd, name, perm)
                })?;
                let mut file = File::from(fd);
                copy(&mut entry, &mut file, &mut self.buf)
                    .map_err(|e| crate::error::from_io(format!("layer entry {shown:?}"), e))?;
                let fix = self.fixups(&meta, parent_dir.new_gid);
                self.apply_meta(Target::Fd(file.as_fd()), &meta, &shown, fix)?;
                rustix::fs::futimens(&file, &meta.times)
                    .map_err(|e| errno_err(&shown, "setting times", e))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| Error::hostile(&shown, "symlink without a target"))?;
                // The target is only data here; it is never followed while unpacking.
                let link = || {
                    rustix::fs::symlinkat(
                        OsStr::from_bytes(&target),
                        parent_fd,
                        OsStr::from_bytes(name),
                    )
                };
                self.create_replacing(parent_fd, name, &shown, "creating symlink", link)?;
                let fix = self.fixups(&meta, parent_dir.new_gid);
                self.apply_meta(Target::Link(parent_fd, name), &meta, &shown, fix)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| Error::hostile(&shown, "hardlink without a target"))?;
                let tcomps = clean_path(&target).map_err(|r| {
                    Error::hostile(
                        &shown,
                        format!(
                            "hardlink target {:?}: {r}",
                            String::from_utf8_lossy(&target)
                        ),
                    )
                })?;
                let Some((tname, tparent)) = tcomps.split_last() else {
                    return Err(Error::hostile(&shown, "hardlink to the layer root"));
                };
                let tparent_fd = self.open_existing_dir(tparent, &shown)?;
                if stat_at(tparent_fd.as_fd(), tname).is_none() {
                    return Err(Error::hostile(
                        &shown,
                        format!(
                            "hardlink target {:?} is not in this layer",
                            String::from_utf8_lossy(&target)
                        ),
                    ));
                }
                if tcomps == comps {
                    return Ok(());
                }
                self.replace(parent_fd, name, &shown)?;
                // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself.
                rustix::fs::linkat(
                    tparent_fd.as_fd(),
                    OsStr::from_bytes(tname),
                    parent_fd,
                    OsStr::from_bytes(name),
                    AtFlags::empty(),
                )
                .map_err(|e| errno_err(&shown, "creating hardlink", e))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let ftype = match kind {
                    tar::EntryType::Char => FileType::CharacterDevice,
                    tar::EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                if ftype != FileType::Fifo && !self.opts.allow_devices {
                    return Err(Error::hostile(
                        &shown,
                        "device nodes can only be unpacked by root",
                    ));
                }
                let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                self.replace(parent_fd, name, &shown)?;
                rustix::fs::mknodat(
                    parent_fd,
                    OsStr::from_bytes(name),
                    ftype,
                    Mode::from_raw_mode(0o600),
                    rustix::fs::makedev(major, minor),
                )
                .map_err(|e| errno_err(&shown, "creating device node", e))?;
                self.apply_meta(Target::Node(parent_fd, name), &meta, &shown, Fixups::ALL)?;
            }
            other => {
                return Err(Error::Unsupported {
                    what: "tar entry type",
                    value: format!("{other:?} for {shown:?}"),
                });
            }
        }
        Ok(())
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>, shown: &str) -> Result<Meta> {
        let h = entry.header();
        let bad = |what: &str| Error::hostile(shown, format!("unreadable {what} in header"));
        let old = h.as_old();
        // Empty numeric fields mean 0 (as Go's archive/tar reads them); garbage is refused.
        let num = |v: std::io::Result<u64>, raw: &[u8], what: &str| match v {
            Ok(n) => Ok(n),
            Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
            Err(_) => Err(bad(what)),
        };
        let mode = num(h.mode().map(u64::from), &old.mode, "mode")? as u32 & 0o7777;
        let mut uid = num(h.uid(), &old.uid, "uid")?;
        let mut gid = num(h.gid(), &old.gid, "gid")?;
        let mtime = num(h.mtime(), &old.mtime, "mtime")?;
        let mut xattrs = Vec::new();
        if let Some(exts) = entry
            .pax_extensions()
            .map_err(|e| crate::error::from_io("pax header", e))?
        {
            for ext in exts {
                let ext = ext.map_err(|e| crate::error::from_io("pax header", e))?;
                let key = ext.key().map_err(|_| bad("pax key"))?;
                if let Some(name) = key.strip_prefix(XATTR_PAX_PREFIX) {
                    if name.starts_with(OVERLAY_XATTR_PREFIX) {
                        return Err(Error::hostile(
                            shown,
                            format!("sets overlay's private xattr {name:?}"),
                        ));
                    }
                    xattrs.push((name.to_string(), ext.value_bytes().to_vec()));
                } else if key == "uid" {
                    uid = parse_num(ext.value_bytes()).ok_or_else(|| bad("pax uid"))?;
                } else if key == "gid" {
                    gid = parse_num(ext.value_bytes()).ok_or_else(|| bad("pax gid"))?;
                }
            }
        }
        let uid = u32::try_from(uid).map_err(|_| bad("uid"))?;
        let gid = u32::try_from(gid).map_err(|_| bad("gid"))?;
        let ts = Timespec {
            tv_sec: mtime.min(i64::MAX as u64) as i64,
            tv_nsec: 0,
        };
        Ok(Meta {
            mode,
            uid,
            gid,
            times: Timestamps {
                last_access: ts,
                last_modification: ts,
            },
            xattrs,
        })
    }

    /// What an entry still needs after being created: chown and chmod unless it already
    /// has the owner and mode asked for.
    fn fixups(&self, meta: &Meta, new_gid: u32) -> Fixups {
        Fixups {
            chown: self.opts.preserve_owners && (meta.uid, meta.gid) != (self.euid, new_gid),
            chmod: meta.mode & 0o7000 != 0 || self.umask.is_none_or(|u| meta.mode & u != 0),
        }
    }

    /// Owner, then mode (chown clears set-id bits), then xattrs; symlink/device entries are
    /// addressed by (parent, name) since they cannot be opened for writing.
    fn apply_meta(&self, target: Target<'_>, meta: &Meta, shown: &str, fix: Fixups) -> Result<()> {
        let owner = (self.opts.preserve_owners && fix.chown)
            .then(|| (Uid::from_raw(meta.uid), Gid::from_raw(meta.gid)));
        match target {
            Target::Fd(fd) => {
                if let Some((u, g)) = owner {
                    rustix::fs::fchown(fd, Some(u), Some(g))
                        .map_err(|e| errno_err(shown, "chown", e))?;
                }
                if fix.chmod {
                    rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))
                        .map_err(|e| errno_err(shown, "chmod", e))?;
                }
                for (k, v) in &meta.xattrs {
                    rustix::fs::fsetxattr(fd, k.as_str(), v, XattrFlags::empty())
                        .map_err(|e| errno_err(shown, &format!("setting xattr {k}"), e))?;
                }
            }
            Target::Link(fd, name) | Target::Node(fd, name) => {
                let is_link = matches!(target, Target::Link(..));
                let n = OsStr::from_bytes(name);
                if let Some((u, g)) = owner {
                    rustix::fs::chownat(fd, n, Some(u), Some(g), AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(|e| errno_err(shown, "chown", e))?;
                }
                // A symlink's own mode means nothing (and chmod would follow it).
                if !is_link {
                    rustix::fs::chmodat(fd, n, Mode::from_raw_mode(meta.mode), AtFlags::empty())
                        .map_err(|e| errno_err(shown, "chmod", e))?;
                }
                if !meta.xattrs.is_empty() {
                    let proc = proc_path(fd, name);
                    for (k, v) in &meta.xattrs {
                        match rustix::fs::lsetxattr(&proc, k.as_str(), v, XattrFlags::empty()) {
                            // user.* xattrs are not allowed on symlinks; tar tools record them
                            // anyway. Dropping them is what docker does too.
                            Err(Errno::PERM) if is_link => {}
                            r => {
                                r.map_err(|e| errno_err(shown, &format!("setting xattr {k}"), e))?
                            }
                        }
                    }
                }
                rustix::fs::utimensat(fd, n, &meta.times, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| errno_err(shown, "setting times", e))?;
            }
        }
        Ok(())
    }

    fn whiteout(&mut self, parent: BorrowedFd<'_>, name: &[u8], shown: &str) -> Result<()> {
        if name == OPAQUE_MARKER {
            rustix::fs::fsetxattr(parent, "trusted.overlay.opaque", b"y", XattrFlags::empty())
                .map_err(|e| errno_err(shown, "marking directory opaque (needs root)", e))?;
            return Ok(());
        }
        if name.starts_with(AUFS_META_PREFIX) {
            return Ok(()); // aufs bookkeeping (.wh..wh.plnk etc.), meaningless for overlay
        }
        let target = &name[WHITEOUT_PREFIX.len()..];
        if target.is_empty() || target == b"." || target == b".." {
            return Err(Error::hostile(
                shown,
                "whiteout names no file inside its directory",
            ));
        }
        self.replace(parent, target, shown)?;
        rustix::fs::mknodat(
            parent,
            OsStr::from_bytes(target),
            FileType::CharacterDevice,
            Mode::empty(),
            rustix::fs::makedev(0, 0),
        )
        .map_err(|e| errno_err(shown, "creating whiteout (needs root)", e))?;
        Ok(())
    }

    /// Removes whatever is at `name` so a later entry replaces an earlier one (tar semantics).
    fn replace(&mut self, parent: BorrowedFd<'_>, name: &[u8], shown: &str) -> Result<()> {
        if stat_at(parent, name).is_some() {
            self.remove(parent, name, shown)?;
        }
        Ok(())
    }

    /// Removes an existing entry; the parent cache goes too, since a removed directory
    /// could be the cached one or lie on its path.
    /// Create an entry with `make`; an entry already there under that name (an earlier one
    /// of the same name) is removed first and `make` tried again, as tar does.
    fn create_replacing<T>(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        shown: &str,
        what: &str,
        make: impl Fn() -> rustix::io::Result<T>,
    ) -> Result<T> {
        match make() {
            Err(Errno::EXIST) => {
                self.remove(parent, name, shown)?;
                make()
            }
            r => r,
        }
        .map_err(|e| errno_err(shown, what, e))
    }

    fn remove(&mut self, parent: BorrowedFd<'_>, name: &[u8], shown: &str) -> Result<()> {
        self.parent_cache = None;
        remove_at(parent, name, shown)
    }

    fn parent_dir(&mut self, comps: &[Vec<u8>], shown: &str) -> Result<std::rc::Rc<Parent>> {
        if let Some((path, p)) = &self.parent_cache {
            if path.as_slice() == comps {
                return Ok(p.clone());
            }
        }
        let fd = self.open_dir(comps, shown)?;
        // Only chown decisions need the group; without them the stat is saved too.
        let new_gid = if self.opts.preserve_owners {
            let st = rustix::fs::fstat(&fd).map_err(|e| errno_err(shown, "stat parent", e))?;
            if st.st_mode & 0o2000 != 0 {
                st.st_gid
            } else {
                self.egid
            }
        } else {
            self.egid
        };
        let p = std::rc::Rc::new(Parent { fd, new_gid });
        self.parent_cache = Some((comps.to_vec(), p.clone()));
        Ok(p)
    }

    /// Opens (creating if missing, as tar does) the directory at `comps`, refusing any path
    /// that resolves outside the root.
    fn open_dir(&self, comps: &[Vec<u8>], shown: &str) -> Result<OwnedFd> {
        let mut cur =
            dup_dir(self.root.as_fd()).map_err(|e| errno_err(shown, "opening root", e))?;
        for c in comps {
            let next = match open_beneath_root(self.root.as_fd(), cur.as_fd(), c) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    mkdir_at(cur.as_fd(), c, shown)?;
                    open_beneath_root(self.root.as_fd(), cur.as_fd(), c)
                        .map_err(|e| resolve_err(shown, e))?
                }
                Err(e) => return Err(resolve_err(shown, e)),
            };
            cur = next;
        }
        Ok(cur)
    }

    fn open_existing_dir(&self, comps: &[Vec<u8>], shown: &str) -> Result<OwnedFd> {
        if comps.is_empty() {
            return dup_dir(self.root.as_fd()).map_err(|e| errno_err(shown, "opening root", e));
        }
        let path = comps.join(&b'/');
        rustix::fs::openat2(
            self.root.as_fd(),
            OsStr::from_bytes(&path),
            dir_flags(),
            Mode::empty(),
            resolve_flags(),
        )
        .map_err(|e| resolve_err(shown, e))
    }

    fn finish(&mut self) -> Result<()> {
        for (path, times) in self.dirs.iter().rev() {
            let fd = if path.is_empty() {
                dup_dir(self.root.as_fd())
            } else {
                rustix::fs::openat2(
                    self.root.as_fd(),
                    OsStr::from_bytes(path),
                    dir_flags() | OFlags::NOFOLLOW,
                    Mode::empty(),
                    resolve_flags(),
                )
            };
            // A directory replaced by a later entry simply keeps the later entry's times.
            if let Ok(fd) = fd {
                let _ = rustix::fs::futimens(&fd, times);
            }
        }
        Ok(())
    }
}

/// What metadata is applied to: an open file or directory, or a name in a directory (for
/// symlinks and device nodes, which cannot be opened for writing).
#[derive(Clone, Copy)]
enum Target<'a> {
    Fd(BorrowedFd<'a>),
    Link(BorrowedFd<'a>, &'a [u8]),
    Node(BorrowedFd<'a>, &'a [u8]),
}

fn create_file(parent: BorrowedFd<'_>, name: &[u8], perm: u32) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        parent,
        OsStr::from_bytes(name),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(perm),
    )
}

/// The umask, read without changing it (umask(2) can only be read by setting it, which
/// would race with other threads creating files). `None` on kernels before 4.7.
fn current_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

/// Splits a tar path into components, refusing absolute paths and `..` outright: no
/// legitimate layer needs them, and accepting them is how tar-slip attacks begin.
pub fn clean_path(raw: &[u8]) -> std::result::Result<Vec<Vec<u8>>, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err("absolute path");
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("path contains '..'"),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

fn dir_flags() -> OFlags {
    OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC
}

fn resolve_flags() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS
}

fn dup_dir(fd: BorrowedFd<'_>) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(fd, ".", dir_flags(), Mode::empty())
}

/// One component below `cur`. Symlinks are followed only while they stay beneath the
/// layer root; `cur` itself is always beneath it. A symlink `a -> ../x` inside `root/d`
/// resolves relative to `cur`, so it is opened relative to `cur` with RESOLVE_BENEATH of
/// `cur` first and, when that is refused, retried from the root with the full path.
fn open_beneath_root(
    root: BorrowedFd<'_>,
    cur: BorrowedFd<'_>,
    name: &[u8],
) -> rustix::io::Result<OwnedFd> {
    match rustix::fs::openat2(
        cur,
        OsStr::from_bytes(name),
        dir_flags(),
        Mode::empty(),
        resolve_flags(),
    ) {
        Err(Errno::XDEV) => {
            // Re-resolve relative to the root so in-root relative symlinks that climb out of
            // `cur` still work, while anything leaving the root is refused.
            let full = fd_path_under(root, cur, name)?;
            rustix::fs::openat2(
                root,
                OsStr::from_bytes(&full),
                dir_flags(),
                Mode::empty(),
                resolve_flags(),
            )
        }
        r => r,
    }
}

/// Path of `cur/name` relative to `root`, from /proc (both are our own fds).
fn fd_path_under(
    root: BorrowedFd<'_>,
    cur: BorrowedFd<'_>,
    name: &[u8],
) -> rustix::io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let rp = std::fs::read_link(format!("/proc/self/fd/{}", root.as_raw_fd()))
        .map_err(|_| Errno::XDEV)?;
    let cp = std::fs::read_link(format!("/proc/self/fd/{}", cur.as_raw_fd()))
        .map_err(|_| Errno::XDEV)?;
    let rel = cp.strip_prefix(&rp).map_err(|_| Errno::XDEV)?;
    let mut out = rel.as_os_str().as_bytes().to_vec();
    if !out.is_empty() {
        out.push(b'/');
    }
    out.extend_from_slice(name);
    Ok(out)
}

fn open_beneath(parent: BorrowedFd<'_>, name: &[u8], dir: bool) -> rustix::io::Result<OwnedFd> {
    let flags = if dir {
        dir_flags()
    } else {
        OFlags::RDONLY | OFlags::CLOEXEC
    };
    rustix::fs::openat(
        parent,
        OsStr::from_bytes(name),
        flags | OFlags::NOFOLLOW,
        Mode::empty(),
    )
}

fn stat_at(parent: BorrowedFd<'_>, name: &[u8]) -> Option<rustix::fs::Stat> {
    rustix::fs::statat(parent, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW).ok()
}

fn mkdir_at(parent: BorrowedFd<'_>, name: &[u8], shown: &str) -> Result<()> {
    match rustix::fs::mkdirat(parent, OsStr::from_bytes(name), Mode::from_raw_mode(0o755)) {
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(e) => Err(errno_err(shown, "creating directory", e)),
    }
}

fn remove_at(parent: BorrowedFd<'_>, name: &[u8], shown: &str) -> Result<()> {
    let n = OsStr::from_bytes(name);
    match rustix::fs::unlinkat(parent, n, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(Errno::ISDIR) => {
            // std's remove_dir_all never follows symlinks inside the tree.
            let p = proc_path(parent, name);
            std::fs::remove_dir_all(&p)
                .map_err(|e| Error::ctx(format!("layer entry {shown:?}: replacing directory"), e))
        }
        Err(e) => Err(errno_err(shown, "removing existing entry", e)),
    }
}

fn proc_path(fd: BorrowedFd<'_>, name: &[u8]) -> std::path::PathBuf {
    use std::os::fd::AsRawFd;
    let mut p = format!("/proc/self/fd/{}/", fd.as_raw_fd()).into_bytes();
    p.extend_from_slice(name);
    std::path::PathBuf::from(OsStr::from_bytes(&p))
}

fn parse_num(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

fn copy(r: &mut impl Read, w: &mut impl Write, buf: &mut [u8]) -> io::Result<u64> {
    let mut total = 0;
    loop {
        let n = match r.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..n])?;
        total += n as u64;
    }
}

fn resolve_err(shown: &str, e: Errno) -> Error {
    match e {
        Errno::XDEV => Error::hostile(
            shown,
            "path resolves outside the layer root (through a symlink)",
        ),
        Errno::LOOP => Error::hostile(shown, "too many levels of symlinks in the path"),
        Errno::NOTDIR => Error::hostile(shown, "a parent of this path is not a directory"),
        e => errno_err(shown, "resolving parent directory", e),
    }
}

fn errno_err(shown: &str, what: &str, e: Errno) -> Error {
    Error::ctx(format!("layer entry {shown:?}: {what}"), e.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_path_refuses_escapes() {
        assert_eq!(
            clean_path(b"./a//b/.").unwrap(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        assert!(clean_path(b"/etc/passwd").is_err());
        assert!(clean_path(b"a/../../b").is_err());
        assert!(clean_path(b"..").is_err());
        assert!(clean_path(b"./").unwrap().is_empty());
    }
}
