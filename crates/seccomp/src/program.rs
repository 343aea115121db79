//! A compiled program, its on-disk cache, and loading it.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
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

    const MAGIC: &'static [u8; 8] = b"VSCMPv1\0";

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
        let needs_listener = word(12) != 0;
        let count = word(16) as usize;
        let insns = &body[20..];
        if insns.len() != count * 8 || count == 0 || count > u16::MAX as usize {
            return None;
        }
        Some(Program {
            bpf: insns.chunks_exact(8).map(Instruction::from_bytes).collect(),
            flags,
            needs_listener,
        })
    }
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
        if let Ok(raw) = std::fs::read(&path) {
            if let Some(p) = Program::decode(&raw) {
                return Ok(p);
            }
            // A corrupt or foreign file: recompile and replace it.
        }
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
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!(
            ".tmp-{}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            path.file_name().and_then(|n| n.to_str()).unwrap_or("x")
        ));
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
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
}
