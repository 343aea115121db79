//! A compiled program, its on-disk cache, and loading it.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxSeccomp;
use sha2::{Digest, Sha256};

use crate::{io, Error, Result};

/// One classic BPF instruction (`struct sock_filter`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instruction {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

impl Instruction {
    pub(crate) fn from_bytes(b: &[u8]) -> Instruction {
        Instruction {
            code: u16::from_ne_bytes([b[0], b[1]]),
            jt: b[2],
            jf: b[3],
            k: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        }
    }

    fn to_bytes(self) -> [u8; 8] {
        let mut out = [0u8; 8];
        out[0..2].copy_from_slice(&self.code.to_ne_bytes());
        out[2] = self.jt;
        out[3] = self.jf;
        out[4..8].copy_from_slice(&self.k.to_ne_bytes());
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    bpf: Vec<Instruction>,
    flags: u32,
    needs_listener: bool,
}

impl Program {
    pub(crate) fn new(bpf: Vec<Instruction>, flags: u32, needs_listener: bool) -> Program {
        Program {
            bpf,
            flags,
            needs_listener,
        }
    }

    pub fn needs_listener(&self) -> bool {
        self.needs_listener
    }

    pub fn instructions(&self) -> &[Instruction] {
        &self.bpf
    }

    pub fn flags(&self) -> u32 {
        self.flags
    }

    /// Install the filter on the calling thread (and, with TSYNC, its siblings). Needs
    /// no_new_privs or CAP_SYS_ADMIN. Returns the notify listener when the program has one.
    pub fn load(&self) -> Result<Option<OwnedFd>> {
        #[repr(C)]
        struct SockFprog {
            len: u16,
            filter: *const Instruction,
        }
        let prog = SockFprog {
            len: self.bpf.len() as u16,
            filter: self.bpf.as_ptr(),
        };
        // SAFETY: prog points at our instructions for the duration of the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                self.flags,
                &prog as *const SockFprog,
            )
        };
        if r < 0 {
            let err = std::io::Error::last_os_error();
            let hint = match err.raw_os_error() {
                Some(libc::EACCES) => " (loading a filter needs no_new_privs or CAP_SYS_ADMIN)",
                Some(libc::EINVAL) => " (a filter flag is not supported by this kernel)",
                _ => "",
            };
            return Err(Error::Io {
                context: format!("seccomp(SECCOMP_SET_MODE_FILTER){hint}"),
                err,
            });
        }
        if self.needs_listener {
            // SAFETY: with NEW_LISTENER the return value is a fresh descriptor.
            return Ok(Some(unsafe { OwnedFd::from_raw_fd(r as i32) }));
        }
        Ok(None)
    }

    /// A cache file's contents as `Cache::get_or_compile` reads them for `spec`: the program,
    /// or `None` for a corrupt or foreign file (which is then recompiled and replaced). Its
    /// flags must be those `spec` compiles to: the file cannot add TSYNC or SPEC_ALLOW, nor
    /// claim a listener the profile has no use for.
    pub fn from_cache(raw: &[u8], spec: &LinuxSeccomp) -> Option<Program> {
        Self::decode(raw).filter(|p| p.flags == crate::compile::program_flags(spec))
    }

    const MAGIC: &'static [u8; 8] = b"VSCMPv1\0";
    /// Header (magic, flags, listener, count), the longest program, checksum.
    const MAX_ENCODED: u64 = 20 + MAX_INSNS as u64 * 8 + 32;

    /// magic, flags, listener, count, instructions, then sha256 of everything before it.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.bpf.len() * 8 + 32);
        out.extend_from_slice(Self::MAGIC);
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&(self.needs_listener as u32).to_le_bytes());
        out.extend_from_slice(&(self.bpf.len() as u32).to_le_bytes());
        for i in &self.bpf {
            out.extend_from_slice(&i.to_bytes());
        }
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        out
    }

    fn decode(raw: &[u8]) -> Option<Program> {
        if raw.len() < 20 + 32 || &raw[..8] != Self::MAGIC {
            return None;
        }
        let (body, sum) = raw.split_at(raw.len() - 32);
        if Sha256::digest(body).as_slice() != sum {
            return None;
        }
        let word =
            |at: usize| u32::from_le_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
        let flags = word(8);
        let needs_listener = match word(12) {
            0 => false,
            1 => true,
            _ => return None,
        };
        // `load` takes the listener from seccomp(2)'s return value exactly when the program
        // says it has one: without NEW_LISTENER that value is 0, and fd 0 would be taken
        // over (and later closed) as the listener.
        if flags & !KNOWN_FLAGS != 0
            || needs_listener != (flags & crate::compile::SECCOMP_FILTER_FLAG_NEW_LISTENER != 0)
        {
            return None;
        }
        let count = word(16) as usize;
        let insns = &body[20..];
        if insns.len() != count * 8 || count == 0 || count > MAX_INSNS {
            return None;
        }
        let bpf: Vec<Instruction> = insns.chunks_exact(8).map(Instruction::from_bytes).collect();
        if !well_formed(&bpf) {
            return None;
        }
        Some(Program {
            bpf,
            flags,
            needs_listener,
        })
    }
}

/// BPF_MAXINSNS: the kernel refuses longer classic programs (and `load` passes the length
/// as a u16), so neither `compile` nor the cache makes a `Program` longer than this.
pub(crate) const MAX_INSNS: usize = 4096;

/// Every flag a compiled program can carry.
const KNOWN_FLAGS: u32 = crate::compile::SECCOMP_FILTER_FLAG_TSYNC
    | crate::compile::SECCOMP_FILTER_FLAG_LOG
    | crate::compile::SECCOMP_FILTER_FLAG_SPEC_ALLOW
    | crate::compile::SECCOMP_FILTER_FLAG_NEW_LISTENER
    | crate::compile::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;

/// What the kernel's classic BPF checker refuses outright, checked before a cached program is
/// trusted: one that does not end in a return, or a jump that leaves the program. (It would
/// fail only at load, in the container's init, instead of being recompiled here.)
fn well_formed(bpf: &[Instruction]) -> bool {
    const CLASS: u16 = 0x07;
    const JMP: u16 = 0x05;
    const RET: u16 = 0x06;
    const OP: u16 = 0xf0;
    const JA: u16 = 0x00;
    let n = bpf.len();
    bpf.last().is_some_and(|i| i.code & CLASS == RET)
        && bpf.iter().enumerate().all(|(pc, i)| {
            // Instructions after this one: a jump's offset must land on one of them.
            let after = (n - pc - 1) as u64;
            match (i.code & CLASS, i.code & OP) {
                (JMP, JA) => u64::from(i.k) < after,
                (JMP, _) => u64::from(i.jt) < after && u64::from(i.jf) < after,
                _ => true,
            }
        })
}

/// Asked of libseccomp once per process, so a cache hit does no libseccomp work at all.
fn libseccomp_version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        libseccomp::ScmpVersion::current()
            .map(|v| format!("{}.{}.{}", v.major, v.minor, v.micro))
            .unwrap_or_default()
    })
}

/// Compiled programs on disk, one file per distinct profile.
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(dir: impl Into<PathBuf>) -> Cache {
        Cache { dir: dir.into() }
    }

    /// Everything that shapes the program: the profile, the libseccomp version, the native
    /// architecture and our cache format.
    pub fn key(spec: &LinuxSeccomp) -> String {
        let mut h = Sha256::new();
        h.update(b"vessel-seccomp cache v2\0");
        h.update(serde_json::to_vec(spec).unwrap_or_default());
        h.update(libseccomp_version().as_bytes());
        h.update(std::env::consts::ARCH.as_bytes());
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn path_for(&self, spec: &LinuxSeccomp) -> PathBuf {
        self.dir.join(Self::key(spec))
    }

    pub fn get_or_compile(&self, spec: &LinuxSeccomp) -> Result<Program> {
        let path = self.path_for(spec);
        if let Some(raw) = read_own_file(&path) {
            if let Some(p) = Program::from_cache(&raw, spec) {
                return Ok(p);
            }
        }
        // Missing, corrupt or foreign: recompile and replace it.
        let program = crate::compile(spec)?;
        // A cache that cannot be written is not an error: the program is still good.
        let _ = self.store(&path, &program);
        Ok(program)
    }

    fn store(&self, path: &Path, program: &Program) -> std::io::Result<()> {
        use std::io::Write;
        use std::sync::atomic::{AtomicU64, Ordering};
        // pid + a per-process counter: writers in other processes and other threads of this
        // one each get their own temp file, and rename makes the last one win whole.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let tmp = self.dir.join(format!(
            ".tmp-{}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            path.file_name().and_then(|n| n.to_str()).unwrap_or("x")
        ));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(&program.encode())?;
                f.sync_all()
            });
        if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(())
    }
}

/// A cache file's bytes, if it is a regular file of ours that nobody else can write (a
/// program planted by another user must not be loaded into a container) and of a size a
/// cache file can have.
fn read_own_file(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let m = f.metadata().ok()?;
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    if !m.is_file() || m.uid() != euid || m.mode() & 0o022 != 0 || m.len() > Program::MAX_ENCODED {
        return None;
    }
    let mut raw = Vec::with_capacity(m.len() as usize);
    f.take(Program::MAX_ENCODED + 1)
        .read_to_end(&mut raw)
        .ok()?;
    Some(raw)
}

/// runtime-spec: hand the listener to the agent at `listenerPath` over a unix socket, with the
/// container process state (JSON) as the message and the fd as SCM_RIGHTS.
pub fn send_listener(listener_path: &Path, fd: BorrowedFd, state_json: &[u8]) -> Result<()> {
    let stream = std::os::unix::net::UnixStream::connect(listener_path).map_err(io(format!(
        "linux.seccomp.listenerPath: connect to {}",
        listener_path.display()
    )))?;
    let fds = [fd.as_raw_fd()];
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) } as usize;
    let mut cmsg = vec![0u8; space];
    let iov = [IoSlice::new(state_json)];
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: msg_control has room for one cmsg carrying one int.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as usize;
        std::ptr::copy_nonoverlapping(
            fds.as_ptr().cast::<u8>(),
            libc::CMSG_DATA(c),
            std::mem::size_of::<i32>(),
        );
    }
    // SAFETY: msg is fully initialised above.
    let r = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if r < 0 {
        return Err(std::io::Error::last_os_error()).map_err(io(format!(
            "linux.seccomp.listenerPath: send to {}",
            listener_path.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(v).expect("valid profile")
    }

    #[test]
    fn cache_key_is_stable_hex_and_covers_the_whole_profile() {
        let a = spec(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]
        }));
        let k = Cache::key(&a);
        assert_eq!(k.len(), 64);
        assert!(k.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(k, Cache::key(&a.clone()));
        let variants = [
            serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
                "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}),
            serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO",
                "syscalls": [{"names": ["write"], "action": "SCMP_ACT_ALLOW"}]}),
            serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO",
                "syscalls": [{"names": ["read"], "action": "SCMP_ACT_LOG"}]}),
            serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO", "flags": ["SECCOMP_FILTER_FLAG_LOG"],
                "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}),
            serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO",
                "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                    "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]}]}),
        ];
        for v in variants {
            assert_ne!(Cache::key(&spec(v.clone())), k, "{v}");
        }
    }

    #[test]
    fn encode_decode_round_trip_and_corruption() {
        let p = Program::new(
            vec![Instruction {
                code: 6,
                jt: 0,
                jf: 0,
                k: 0x7fff_0000,
            }],
            1,
            false,
        );
        let raw = p.encode();
        assert_eq!(Program::decode(&raw), Some(p.clone()));
        let mut bad = raw.clone();
        bad[21] ^= 1;
        assert_eq!(Program::decode(&bad), None);
        assert_eq!(Program::decode(&raw[..raw.len() - 1]), None);
        assert_eq!(Program::decode(b"garbage"), None);
    }

    const RET_ALLOW: Instruction = Instruction {
        code: 6,
        jt: 0,
        jf: 0,
        k: 0x7fff_0000,
    };

    /// A cache file with this header and these instructions, with a correct checksum: what
    /// only a hostile writer (not a torn write) produces.
    fn sealed(flags: u32, listener: u32, bpf: &[Instruction]) -> Vec<u8> {
        let mut raw = Program::new(bpf.to_vec(), flags, false).encode();
        raw.truncate(raw.len() - 32);
        raw[12..16].copy_from_slice(&listener.to_le_bytes());
        let sum = Sha256::digest(&raw);
        raw.extend_from_slice(&sum);
        raw
    }

    #[test]
    fn cache_refuses_hostile_headers_and_programs() {
        let allow = spec(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW"}));
        let good = sealed(0, 0, &[RET_ALLOW]);
        assert!(Program::from_cache(&good, &allow).is_some());
        let ja_out = Instruction {
            code: 0x05,
            jt: 0,
            jf: 0,
            k: 1,
        };
        let jeq_out = Instruction {
            code: 0x15,
            jt: 0,
            jf: 1,
            k: 59,
        };
        let ld = Instruction {
            code: 0x20,
            jt: 0,
            jf: 0,
            k: 0,
        };
        for (what, raw) in [
            // load() would take seccomp(2)'s 0 for a listener and later close fd 0.
            ("listener without NEW_LISTENER", sealed(0, 1, &[RET_ALLOW])),
            ("NEW_LISTENER without listener", sealed(8, 0, &[RET_ALLOW])),
            ("listener word not 0 or 1", sealed(8, 2, &[RET_ALLOW])),
            ("unknown flag bit", sealed(1 << 20, 0, &[RET_ALLOW])),
            (
                "longer than BPF_MAXINSNS",
                sealed(0, 0, &vec![RET_ALLOW; 4097]),
            ),
            ("no return at the end", sealed(0, 0, &[RET_ALLOW, ld])),
            ("jump past the end", sealed(0, 0, &[ja_out, RET_ALLOW])),
            (
                "branch past the end",
                sealed(0, 0, &[ld, jeq_out, RET_ALLOW]),
            ),
        ] {
            assert_eq!(Program::from_cache(&raw, &allow), None, "{what}");
        }
        // Found by fuzz/fuzz_targets/seccomp_cache.rs: a well-formed file whose flags are not
        // those of the profile it is cached for (here none, for a TSYNC|LOG profile).
        let tsync_log = spec(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW",
            "flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG"]}));
        assert!(Program::from_cache(&good, &tsync_log).is_none());
        assert!(Program::from_cache(&sealed(3, 0, &[RET_ALLOW]), &tsync_log).is_some());
        // The profile needs a listener: the program must carry NEW_LISTENER and say so.
        let notify = spec(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW",
            "listenerPath": "/run/a.sock",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}));
        assert!(Program::from_cache(&good, &notify).is_none());
        let p = Program::from_cache(&sealed(8, 1, &[RET_ALLOW]), &notify).expect("accepted");
        assert!(p.needs_listener());
    }

    #[test]
    fn cache_ignores_files_others_could_have_written() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("c"));
        let allow = spec(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}));
        let compiled = cache.get_or_compile(&allow).unwrap();
        let path = cache.path_for(&allow);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode();
        assert_eq!(mode(&path) & 0o077, 0, "cache file is private");
        assert_eq!(
            mode(&dir.path().join("c")) & 0o077,
            0,
            "cache dir is private"
        );
        // A valid program (allow everything) in a file anyone could have written is not
        // loaded; the profile is compiled again and the file replaced.
        let planted = sealed(0, 0, &[RET_ALLOW]);
        std::fs::write(&path, &planted).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(cache.get_or_compile(&allow).unwrap(), compiled);
        assert_eq!(mode(&path) & 0o077, 0);
        // Nor through a symlink.
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, &planted).unwrap();
        std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        assert_eq!(cache.get_or_compile(&allow).unwrap(), compiled);
        // Our own private file is a hit.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, &planted).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            cache.get_or_compile(&allow).unwrap().instructions(),
            &[RET_ALLOW]
        );
    }
}
