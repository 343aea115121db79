//! Device access rules: v1 `devices.allow`/`devices.deny` lists, and on v2 an eBPF program
//! of type BPF_PROG_TYPE_CGROUP_DEVICE attached to the cgroup (v2 has no device files).
//!
//! Semantics as runc: rules apply in order, the last matching rule wins, and a rule for all
//! devices ("a", any major/minor, rwm) resets the default. The devices every container needs
//! (null, zero, full, tty, random, urandom, pts, ptmx, tun) are always allowed after the
//! user's rules, as runc does.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use crate::fs::write;
use crate::{io, Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rule {
    allow: bool,
    /// 'a', 'b' or 'c'.
    kind: char,
    major: Option<i64>,
    minor: Option<i64>,
    /// Bits: 1 mknod, 2 read, 4 write (the kernel's BPF_DEVCG_ACC_*).
    access: u32,
}

const DEFAULT_ALLOWED: [(char, Option<i64>, Option<i64>, &str); 11] = [
    ('c', None, None, "m"),
    ('b', None, None, "m"),
    ('c', Some(1), Some(3), "rwm"),
    ('c', Some(1), Some(8), "rwm"),
    ('c', Some(1), Some(7), "rwm"),
    ('c', Some(5), Some(0), "rwm"),
    ('c', Some(1), Some(5), "rwm"),
    ('c', Some(1), Some(9), "rwm"),
    ('c', Some(136), None, "rwm"),
    ('c', Some(5), Some(2), "rwm"),
    ('c', Some(10), Some(200), "rwm"),
];

/// "rwm" letters to bits. runc also takes "rwa" (OCI tooling writes it) and ignores the
/// letter it does not know; we read "a" as all of r, w and m — the same for the usual
/// deny-all rule, never less than asked for — and refuse any other letter by name.
fn access_bits(s: &str) -> Option<u32> {
    let mut bits = 0;
    for ch in s.chars() {
        bits |= match ch {
            'm' => 1,
            'r' => 2,
            'w' => 4,
            'a' => 7,
            _ => return None,
        };
    }
    Some(if s.is_empty() { 7 } else { bits })
}

fn access_str(bits: u32) -> String {
    let mut s = String::new();
    if bits & 2 != 0 {
        s.push('r');
    }
    if bits & 4 != 0 {
        s.push('w');
    }
    if bits & 1 != 0 {
        s.push('m');
    }
    s
}

pub(crate) fn validate(rules: &[LinuxDeviceCgroup]) -> Result<()> {
    for (i, r) in rules.iter().enumerate() {
        if let Some(a) = r.access() {
            if access_bits(a).is_none() {
                return Err(Error::Invalid(format!(
                    "linux.resources.devices[{i}].access: {a:?} must only contain r, w and m (or a for all)"
                )));
            }
        }
        if r.typ() == Some(LinuxDeviceType::P) {
            return Err(Error::Invalid(format!(
                "linux.resources.devices[{i}].type: \"p\" (fifo) is not a device cgroup type"
            )));
        }
    }
    Ok(())
}

pub(crate) fn rules(spec: &[LinuxDeviceCgroup]) -> Vec<Rule> {
    let mut out: Vec<Rule> = spec
        .iter()
        .map(|r| Rule {
            allow: r.allow(),
            kind: match r.typ() {
                Some(LinuxDeviceType::B) => 'b',
                Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => 'c',
                _ => 'a',
            },
            major: r.major().filter(|m| *m >= 0),
            minor: r.minor().filter(|m| *m >= 0),
            access: r.access().as_deref().and_then(access_bits).unwrap_or(7),
        })
        .collect();
    out.extend(
        DEFAULT_ALLOWED
            .iter()
            .map(|(kind, major, minor, access)| Rule {
                allow: true,
                kind: *kind,
                major: *major,
                minor: *minor,
                access: access_bits(access).unwrap_or(7),
            }),
    );
    out
}

fn is_everything(r: &Rule) -> bool {
    r.kind == 'a' && r.major.is_none() && r.minor.is_none() && r.access == 7
}

/// Reduce to (default, rules after the last catch-all).
fn effective(rules: &[Rule]) -> (bool, Vec<Rule>) {
    let mut default_allow = true;
    let mut rest = Vec::new();
    for r in rules {
        if is_everything(r) {
            default_allow = r.allow;
            rest.clear();
        } else {
            rest.push(*r);
        }
    }
    (default_allow, rest)
}

pub(crate) fn apply_v1(dir: &Path, spec: &[LinuxDeviceCgroup]) -> Result<()> {
    if spec.is_empty() {
        return Ok(());
    }
    for r in rules(spec) {
        let num = |n: Option<i64>| n.map(|v| v.to_string()).unwrap_or_else(|| "*".into());
        let line = if r.kind == 'a' && r.major.is_none() && r.minor.is_none() {
            "a".to_string()
        } else {
            format!(
                "{} {}:{} {}",
                r.kind,
                num(r.major),
                num(r.minor),
                access_str(r.access)
            )
        };
        let file = if r.allow {
            "devices.allow"
        } else {
            "devices.deny"
        };
        write(&dir.join(file), &line)?;
    }
    Ok(())
}

// ---- v2: the eBPF program -------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

const LDX_W: u8 = 0x61; // dst = *(u32 *)(src + off)
const MOV64_X: u8 = 0xbf;
const MOV64_K: u8 = 0xb7;
const AND64_K: u8 = 0x57;
const RSH64_K: u8 = 0x77;
const JNE_K: u8 = 0x55;
const JNE_X: u8 = 0x5d;
const EXIT: u8 = 0x95;

/// Build the program: last matching rule wins, so rules are checked from last to first and
/// the first hit returns; falling through returns the default.
pub(crate) fn program(rules: &[Rule]) -> Vec<u64> {
    let (default_allow, rules) = effective(rules);
    let mut p = vec![
        insn(LDX_W, 2, 1, 0, 0), // r2 = ctx->access_type
        insn(MOV64_X, 3, 2, 0, 0),
        insn(AND64_K, 3, 0, 0, 0xffff), // r3 = device type
        insn(MOV64_X, 4, 2, 0, 0),
        insn(RSH64_K, 4, 0, 0, 16), // r4 = requested access
        insn(LDX_W, 5, 1, 4, 0),    // r5 = major
        insn(LDX_W, 6, 1, 8, 0),    // r6 = minor
    ];
    for r in rules.iter().rev() {
        let mut block: Vec<Insn> = Vec::new();
        // Jump offsets are patched once the block length is known: (JNE placeholder index).
        let mut jumps = Vec::new();
        if r.kind != 'a' {
            jumps.push(block.len());
            block.push(insn(JNE_K, 3, 0, 0, if r.kind == 'b' { 1 } else { 2 }));
        }
        if r.access != 7 {
            block.push(insn(MOV64_X, 7, 4, 0, 0));
            block.push(insn(AND64_K, 7, 0, 0, r.access as i32));
            jumps.push(block.len());
            block.push(insn(JNE_X, 7, 4, 0, 0)); // requested ⊄ allowed by this rule
        }
        if let Some(maj) = r.major {
            jumps.push(block.len());
            block.push(insn(JNE_K, 5, 0, 0, maj as i32));
        }
        if let Some(min) = r.minor {
            jumps.push(block.len());
            block.push(insn(JNE_K, 6, 0, 0, min as i32));
        }
        block.push(insn(MOV64_K, 0, 0, 0, r.allow as i32));
        block.push(insn(EXIT, 0, 0, 0, 0));
        let len = block.len();
        for j in jumps {
            block[j].off = (len - j - 1) as i16;
        }
        p.extend(block);
    }
    p.push(insn(MOV64_K, 0, 0, 0, default_allow as i32));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p.iter()
        .map(|i| {
            u64::from_le_bytes([
                i.code,
                i.regs,
                i.off.to_le_bytes()[0],
                i.off.to_le_bytes()[1],
                i.imm.to_le_bytes()[0],
                i.imm.to_le_bytes()[1],
                i.imm.to_le_bytes()[2],
                i.imm.to_le_bytes()[3],
            ])
        })
        .collect()
}

fn bpf(cmd: i32, attr: &mut [u8]) -> std::io::Result<i64> {
    // SAFETY: attr is a zero-initialised buffer of the size we pass.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

const BPF_PROG_LOAD: i32 = 5;
const BPF_PROG_ATTACH: i32 = 8;
const BPF_PROG_DETACH: i32 = 9;
const BPF_PROG_GET_FD_BY_ID: i32 = 13;
const BPF_PROG_QUERY: i32 = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

fn put32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}
fn put64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

fn load(insns: &[u64]) -> Result<OwnedFd> {
    let license = c"Apache-2.0";
    let attempt = |log: Option<&mut Vec<u8>>| {
        let mut attr = [0u8; 72];
        put32(&mut attr, 0, BPF_PROG_TYPE_CGROUP_DEVICE);
        put32(&mut attr, 4, insns.len() as u32);
        put64(&mut attr, 8, insns.as_ptr() as u64);
        put64(&mut attr, 16, license.as_ptr() as u64);
        if let Some(log) = log {
            put32(&mut attr, 24, 1);
            put32(&mut attr, 28, log.len() as u32);
            put64(&mut attr, 32, log.as_mut_ptr() as u64);
        }
        bpf(BPF_PROG_LOAD, &mut attr)
    };
    // No verifier log on the normal path: it costs time and can overflow (ENOSPC).
    let fd = match attempt(None) {
        Ok(fd) => fd,
        Err(err) => {
            let mut log = vec![0u8; 1 << 20];
            let _ = attempt(Some(&mut log));
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0').trim();
            let tail: Vec<&str> = text
                .lines()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            return Err(Error::Io {
                context: format!(
                    "linux.resources.devices: the kernel refused the device filter program{}",
                    if tail.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", tail.join("; "))
                    }
                ),
                err,
            });
        }
    };
    // SAFETY: fresh descriptor from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn attached(cgroup: &OwnedFd) -> Vec<u32> {
    let mut ids = [0u32; 64];
    let mut attr = [0u8; 40];
    put32(&mut attr, 0, cgroup.as_raw_fd() as u32);
    put32(&mut attr, 4, BPF_CGROUP_DEVICE);
    put64(&mut attr, 16, ids.as_mut_ptr() as u64);
    put32(&mut attr, 24, ids.len() as u32);
    if bpf(BPF_PROG_QUERY, &mut attr).is_err() {
        return Vec::new();
    }
    let n = u32::from_ne_bytes([attr[24], attr[25], attr[26], attr[27]]) as usize;
    ids[..n.min(ids.len())].to_vec()
}

pub(crate) fn apply_v2(dir: &Path, spec: &[LinuxDeviceCgroup]) -> Result<()> {
    if spec.is_empty() {
        return Ok(());
    }
    let insns = program(&rules(spec));
    let prog = load(&insns)?;
    let cgroup: OwnedFd = std::fs::File::open(dir)
        .map_err(io(format!("open {}", dir.display())))?
        .into();
    let old = attached(&cgroup);
    let mut attr = [0u8; 20];
    put32(&mut attr, 0, cgroup.as_raw_fd() as u32);
    put32(&mut attr, 4, prog.as_raw_fd() as u32);
    put32(&mut attr, 8, BPF_CGROUP_DEVICE);
    put32(&mut attr, 12, BPF_F_ALLOW_MULTI);
    bpf(BPF_PROG_ATTACH, &mut attr).map_err(io(format!(
        "linux.resources.devices: attach the device filter to {}",
        dir.display()
    )))?;
    // `update`: the new program is in place; take the previous ones away.
    for id in old {
        let mut a = [0u8; 12];
        put32(&mut a, 0, id);
        if let Ok(fd) = bpf(BPF_PROG_GET_FD_BY_ID, &mut a) {
            // SAFETY: fresh descriptor.
            let old_fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            let mut d = [0u8; 20];
            put32(&mut d, 0, cgroup.as_raw_fd() as u32);
            put32(&mut d, 4, old_fd.as_raw_fd() as u32);
            put32(&mut d, 8, BPF_CGROUP_DEVICE);
            let _ = bpf(BPF_PROG_DETACH, &mut d);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(
        allow: bool,
        typ: &str,
        major: Option<i64>,
        minor: Option<i64>,
        access: &str,
    ) -> LinuxDeviceCgroup {
        serde_json::from_value(serde_json::json!({"allow": allow, "type": typ, "major": major, "minor": minor, "access": access})).unwrap()
    }

    #[test]
    fn catch_all_resets_the_default() {
        let r = rules(&[
            dev(true, "c", Some(4), Some(1), "rw"),
            dev(false, "a", None, None, "rwm"),
            dev(true, "c", Some(1), Some(3), "rwm"),
        ]);
        let (default_allow, rest) = effective(&r);
        assert!(!default_allow);
        assert_eq!(rest[0].major, Some(1));
        assert_eq!(rest.len(), 1 + DEFAULT_ALLOWED.len());
    }

    #[test]
    fn program_shape() {
        let p = program(&rules(&[dev(false, "a", None, None, "rwm")]));
        // prologue 7 + per default rule + final 2; ends with exit.
        assert_eq!(p.last().map(|i| (*i & 0xff) as u8), Some(EXIT));
        assert!(p.len() > 9);
    }

    #[test]
    fn bad_access_is_refused() {
        let e = validate(&[dev(true, "c", Some(1), Some(3), "rwx")]).unwrap_err();
        assert!(e.to_string().contains("devices[0].access"), "{e}");
    }

    #[test]
    fn rwa_means_all_access() {
        assert!(validate(&[dev(false, "a", None, None, "rwa")]).is_ok());
        assert_eq!(access_bits("rwa"), Some(7));
        assert_eq!(access_bits("a"), Some(7));
    }
}
