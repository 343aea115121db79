//! Writes into /proc that land in the real procfs (CVE-2019-16884, CVE-2025-52881 class).
//!
//! After the rootfs is built, "/proc" is whatever config.json (or the image, through a
//! symlink) put there: a tmpfs with a `sys/kernel/core_pattern` file, a bind mount over
//! `/proc/sys`, a symlink. A write by path to /proc/sys/... or /proc/self/attr/... would then
//! silently go somewhere else. So every such write goes through a [`Proc`] handle: the root
//! of a procfs instance, checked with fstatfs (PROC_SUPER_MAGIC) and its inode number, and
//! files below it are opened with openat2 confined beneath it, following no symlink and
//! crossing no mount (a bind over /proc/sys makes the open fail with EXDEV, not write into
//! the bind's source). The opened file is checked to be on procfs again before the write.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::error::{Context, Error, Result};

const PROC_SUPER_MAGIC: i64 = 0x9fa0;
/// The inode number of every procfs instance's root directory.
const PROC_ROOT_INO: u64 = 1;

/// A verified handle on the root of a procfs mount.
pub struct Proc {
    root: OwnedFd,
}

impl Proc {
    /// The procfs mounted at `path` (e.g. "/proc" in the container after pivot_root, or the
    /// host's before). Fails if what is there is not the root of a procfs instance.
    pub fn open(path: &Path) -> Result<Proc> {
        let c = crate::sys::cstr(path).ctx(|| format!("open {}", path.display()))?;
        // SAFETY: valid C string.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error()).ctx(|| format!("open {}", path.display()));
        }
        // SAFETY: fresh descriptor.
        let root = unsafe { OwnedFd::from_raw_fd(fd) };
        let st =
            nix::sys::stat::fstat(root.as_raw_fd()).ctx(|| format!("stat {}", path.display()))?;
        if !is_procfs(root.as_fd())? || st.st_ino != PROC_ROOT_INO {
            return Err(Error::config(format!(
                "{} is not the root of a procfs mount (a mount or symlink in the container \
                 shadows it); refusing to write to it",
                path.display()
            )));
        }
        Ok(Proc { root })
    }

    /// Open `rel` (e.g. "sys/net/ipv4/ping_group_range") below the procfs root with
    /// `flags`, through no symlink, magic link or mount crossing, and check the result is on
    /// procfs too.
    pub fn open_file(&self, rel: &str, flags: i32) -> Result<OwnedFd> {
        let fd =
            openat2_beneath(self.root.as_fd(), rel, flags).ctx(|| format!("open /proc/{rel}"))?;
        if !is_procfs(fd.as_fd())? {
            return Err(Error::config(format!(
                "/proc/{rel} is not on procfs; refusing to write to it"
            )));
        }
        Ok(fd)
    }

    /// Write `data` to `rel` in one write(2), as procfs files expect.
    pub fn write(&self, rel: &str, data: &[u8]) -> Result<()> {
        let fd = self.open_file(rel, libc::O_WRONLY | libc::O_NOCTTY)?;
        let n = nix::unistd::write(&fd, data).ctx(|| format!("write /proc/{rel}"))?;
        if n != data.len() {
            return Err(Error::Io {
                context: format!("write /proc/{rel}"),
                err: io::Error::new(io::ErrorKind::WriteZero, "short write"),
            });
        }
        Ok(())
    }

    pub fn read_to_string(&self, rel: &str) -> Result<String> {
        let fd = self.open_file(rel, libc::O_RDONLY)?;
        let mut s = String::new();
        io::Read::read_to_string(&mut std::fs::File::from(fd), &mut s)
            .ctx(|| format!("read /proc/{rel}"))?;
        Ok(s)
    }

    /// This process's directory as this procfs instance names it ("self" is a symlink,
    /// which the confined opens do not follow): "<pid>" in the procfs's pid namespace.
    pub fn self_dir(&self) -> Result<String> {
        let target = nix::fcntl::readlinkat(Some(self.root.as_raw_fd()), "self")
            .ctx(|| "readlink /proc/self (is this procfs of our pid namespace?)")?;
        let pid = target.to_string_lossy().into_owned();
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::config(format!(
                "/proc/self points at {pid:?}, not a process"
            )));
        }
        Ok(pid)
    }

    /// Write a file of this process ("attr/exec", "timens_offsets", ...).
    pub fn write_self(&self, rel: &str, data: &[u8]) -> Result<()> {
        self.write(&format!("{}/{rel}", self.self_dir()?), data)
    }

    pub fn read_self(&self, rel: &str) -> Result<String> {
        self.read_to_string(&format!("{}/{rel}", self.self_dir()?))
    }

    /// A sysctl key ("net.ipv4.ip_forward" or "net/ipv4/ip_forward") to write.
    pub fn write_sysctl(&self, key: &str, value: &str) -> Result<()> {
        let rel = format!("sys/{}", key.replace('.', "/"));
        self.write(&rel, value.as_bytes())
    }
}

/// Whether `fd` is on a procfs instance.
pub fn is_procfs(fd: BorrowedFd) -> Result<bool> {
    Ok(fs_magic(fd)? == PROC_SUPER_MAGIC)
}

pub fn fs_magic(fd: BorrowedFd) -> Result<i64> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: valid descriptor and buffer.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error()).ctx(|| "fstatfs");
    }
    // SAFETY: fstatfs filled it.
    Ok(unsafe { st.assume_init() }.f_type)
}

fn openat2_beneath(dir: BorrowedFd, rel: &str, flags: i32) -> io::Result<OwnedFd> {
    crate::sys::openat2(
        dir,
        Path::new(rel),
        flags,
        libc::RESOLVE_BENEATH
            | libc::RESOLVE_NO_XDEV
            | libc::RESOLVE_NO_MAGICLINKS
            | libc::RESOLVE_NO_SYMLINKS,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_proc_is_verified_and_readable() {
        let p = Proc::open(Path::new("/proc")).unwrap();
        assert!(p.read_self("status").unwrap().contains("Pid:"));
        assert!(!p.read_to_string("sys/kernel/ostype").unwrap().is_empty());
    }

    #[test]
    fn a_directory_that_is_not_procfs_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = Proc::open(dir.path()).err().unwrap();
        assert!(
            err.to_string().contains("not the root of a procfs"),
            "{err}"
        );
        // A subdirectory of procfs is procfs, but not its root.
        assert!(Proc::open(Path::new("/proc/sys")).is_err());
    }

    #[test]
    fn symlinks_below_proc_are_not_followed() {
        let p = Proc::open(Path::new("/proc")).unwrap();
        // /proc/self is a symlink; "self/status" must not resolve through it.
        assert!(p.read_to_string("self/status").is_err());
        assert!(
            p.read_to_string("mounts").is_err(),
            "/proc/mounts is a symlink"
        );
    }
}
