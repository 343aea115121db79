//! The runtime's own executable, out of the container's reach (CVE-2019-5736).
//!
//! Every process the runtime places into a container (the init, an exec'd process, the
//! hook runners they fork) starts life as a copy of the runtime. Until it execs the user's
//! program, a process in the same pid namespace with CAP_SYS_PTRACE can open its
//! /proc/PID/exe — being non-dumpable does not stop CAP_SYS_PTRACE — keep the handle, and
//! reopen it for writing through /proc/self/fd/N once nothing executes the file any more:
//! the host's binary would be the container's to overwrite.
//!
//! So before `create`, `run` or `exec` does anything, the runtime re-executes itself from a
//! handle that cannot be written whatever is done with it:
//! - a detached, read-only bind mount of the binary (`open_tree(OPEN_TREE_CLONE)` +
//!   `mount_setattr(MOUNT_ATTR_RDONLY)`, then `execveat` on it): no copy, the pages stay
//!   shared with the page cache, and the mount is in no mount table (nothing to clean up,
//!   no mount-propagation storm as runc's attached bind mounts had). Any reopen for writing
//!   fails with EROFS, and the mount cannot be cloned or remounted from another mount
//!   namespace.
//! - where that needs a privilege we lack (rootless), a sealed memfd copy
//!   (`F_SEAL_SEAL|SHRINK|GROW|WRITE`), as runc and crun do.
//!
//! The check that we already run from such a handle reads the kernel's word, not an
//! environment variable a caller could set: the executable is on a read-only mount, or it
//! is a memfd with the write seals.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Seals that make a memfd's content immutable for good.
const SEALS: libc::c_int =
    libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

/// Re-execute the runtime from a protected handle unless it already runs from one. Returns
/// only when it already does; on success of the re-exec it never returns. Call it first
/// thing, before any descriptor is opened or any input read.
pub fn ensure_protected() -> io::Result<()> {
    if PROTECTED.get() == Some(&true) {
        return Ok(());
    }
    let exe = open_self_exe()?;
    if is_protected(exe.as_fd())? {
        let _ = PROTECTED.set(true);
        return Ok(());
    }
    let handle = match read_only_clone(exe.as_fd()) {
        Ok(fd) => fd,
        // No CAP_SYS_ADMIN in our mount namespace (rootless), or a kernel before 5.12.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EPERM | libc::ENOSYS | libc::EINVAL)
            ) =>
        {
            sealed_copy(exe.as_fd())?
        }
        Err(e) => return Err(e),
    };
    drop(exe);
    Err(reexec(handle.as_fd()))
}

static PROTECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Whether this process runs from a protected executable (asked of the kernel once per
/// process). `create` and `exec` refuse to place a process into a container otherwise.
pub fn running_protected() -> io::Result<bool> {
    if let Some(p) = PROTECTED.get() {
        return Ok(*p);
    }
    let p = is_protected(open_self_exe()?.as_fd())?;
    Ok(*PROTECTED.get_or_init(|| p))
}

/// The check `create` and `exec` make before they fork anything that enters a container:
/// the executable is protected, and (as root) the process is non-dumpable, so every process
/// forked from it is non-dumpable from its first instruction — its memory and /proc files
/// closed to the container's processes that lack CAP_SYS_PTRACE — until it execs the
/// user's program.
pub fn require_protected() -> crate::Result<()> {
    let protected = running_protected().map_err(|e| crate::Error::Io {
        context: "inspect the runtime's own executable (/proc/self/exe)".into(),
        err: e,
    })?;
    if !protected {
        return Err(crate::Error::Usage(
            "the runtime is not running from a protected executable: a container could \
             overwrite it (CVE-2019-5736); call vessel_runtime::self_exe::ensure_protected() \
             first, or start the process from a read-only or sealed copy"
                .into(),
        ));
    }
    // Rootless, the parent writes the child's uid/gid maps and setgroups as the same
    // unprivileged user, which it may only do while the child is dumpable; the init then
    // becomes non-dumpable itself before anything runs in the container (init.rs).
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    nix::sys::prctl::set_dumpable(false).map_err(|e| crate::Error::Io {
        context: "prctl(PR_SET_DUMPABLE, 0)".into(),
        err: e.into(),
    })
}

/// Whether the executable behind `exe` cannot be written through any reopen.
pub fn is_protected(exe: BorrowedFd) -> io::Result<bool> {
    // SAFETY: fcntl on a valid descriptor.
    let seals = unsafe { libc::fcntl(exe.as_raw_fd(), libc::F_GET_SEALS) };
    if seals >= 0 && seals & SEALS == SEALS {
        return Ok(true);
    }
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: valid descriptor and buffer.
    if unsafe { libc::fstatvfs(exe.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatvfs filled it.
    let st = unsafe { st.assume_init() };
    Ok(st.f_flag & libc::ST_RDONLY != 0)
}

fn open_self_exe() -> io::Result<OwnedFd> {
    // SAFETY: a C string literal and plain flags.
    let fd = unsafe { libc::open(c"/proc/self/exe".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A detached read-only bind mount whose root is the executable itself.
fn read_only_clone(exe: BorrowedFd) -> io::Result<OwnedFd> {
    let tree = crate::sys::open_tree_clone_fd(exe, false)?;
    crate::sys::mount_setattr(
        tree.as_fd(),
        false,
        crate::sys::MOUNT_ATTR_RDONLY | crate::sys::MOUNT_ATTR_NODEV,
        0,
        None,
    )?;
    Ok(tree)
}

/// A sealed memfd holding a copy of the executable.
fn sealed_copy(exe: BorrowedFd) -> io::Result<OwnedFd> {
    const MFD_EXEC: libc::c_uint = 0x10;
    let name = c"vessel-runtime";
    let base = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // MFD_EXEC: executable even where vm.memfd_noexec defaults memfds to noexec (6.3+);
    // older kernels reject the flag, and their memfds are executable anyway.
    // SAFETY: valid C string.
    let mut fd = unsafe { libc::memfd_create(name.as_ptr(), base | MFD_EXEC) };
    if fd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // SAFETY: valid C string.
        fd = unsafe { libc::memfd_create(name.as_ptr(), base) };
    }
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor.
    let memfd = unsafe { OwnedFd::from_raw_fd(fd) };
    loop {
        // SAFETY: valid descriptors; the kernel copies between them.
        let n = unsafe {
            libc::sendfile(
                memfd.as_raw_fd(),
                exe.as_raw_fd(),
                std::ptr::null_mut(),
                1 << 30,
            )
        };
        match n {
            0 => break,
            n if n > 0 => continue,
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
    // SAFETY: fcntl on our memfd.
    if unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, SEALS) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(memfd)
}

/// execveat(fd, "", argv, environ, AT_EMPTY_PATH) with our own argv and environment.
fn reexec(handle: BorrowedFd) -> io::Error {
    let argv: Vec<CString> = std::env::args_os()
        .filter_map(|a| CString::new(std::os::unix::ffi::OsStringExt::into_vec(a)).ok())
        .collect();
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    extern "C" {
        static environ: *const *const libc::c_char;
    }
    let empty: &CStr = c"";
    // SAFETY: NUL-terminated argv built above; environ is the process environment.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            handle.as_raw_fd(),
            empty.as_ptr(),
            argv_ptrs.as_ptr(),
            environ,
            libc::AT_EMPTY_PATH,
        )
    };
    io::Error::last_os_error()
}
