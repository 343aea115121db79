//! The seccomp BPF cache file as `Cache::get_or_compile` reads it. The file lives in the
//! runtime's state root; a corrupt, truncated, foreign or hostile one must be refused (and
//! recompiled), never handed to `seccomp(2)` in the container's init.
//!
//! Each input is tried as it is, and again with a correct checksum appended (the fuzzer
//! cannot forge SHA-256), so the checks behind the checksum are reached.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oci_spec::runtime::LinuxSeccomp;
use sha2::{Digest, Sha256};
use vessel_seccomp::Program;

const SECCOMP_FILTER_FLAG_TSYNC: u32 = 1;
const SECCOMP_FILTER_FLAG_LOG: u32 = 2;
const SECCOMP_FILTER_FLAG_NEW_LISTENER: u32 = 8;
/// BPF_MAXINSNS: the kernel refuses longer classic programs.
const MAX_INSNS: usize = 4096;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_JA: u16 = 0x00;

/// Profiles that shape the header differently: plain, with filter flags, with a listener.
fn specs() -> &'static [(LinuxSeccomp, u32)] {
    static SPECS: std::sync::OnceLock<Vec<(LinuxSeccomp, u32)>> = std::sync::OnceLock::new();
    SPECS.get_or_init(|| {
        [
            (
                serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO",
                    "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}),
                0,
            ),
            (
                serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW",
                    "flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG"]}),
                SECCOMP_FILTER_FLAG_TSYNC | SECCOMP_FILTER_FLAG_LOG,
            ),
            (
                serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW",
                    "listenerPath": "/run/agent.sock",
                    "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}),
                SECCOMP_FILTER_FLAG_NEW_LISTENER,
            ),
        ]
        .into_iter()
        .map(|(v, flags)| (serde_json::from_value(v).expect("valid profile"), flags))
        .collect()
    })
}

fn check(p: &Program, want_flags: u32) {
    assert_eq!(
        p.flags(),
        want_flags,
        "flags differ from what the profile asks"
    );
    assert_eq!(
        p.needs_listener(),
        p.flags() & SECCOMP_FILTER_FLAG_NEW_LISTENER != 0,
        "listener and NEW_LISTENER flag disagree"
    );
    let insns = p.instructions();
    assert!(
        (1..=MAX_INSNS).contains(&insns.len()),
        "{} instructions",
        insns.len()
    );
    let last = insns[insns.len() - 1];
    assert_eq!(
        last.code & 0x07,
        BPF_RET,
        "program does not end in a return"
    );
    for (pc, i) in insns.iter().enumerate() {
        if i.code & 0x07 != BPF_JMP {
            continue;
        }
        let next = pc as u64 + 1;
        let targets: Vec<u64> = if i.code & 0xf0 == BPF_JA {
            vec![next + i.k as u64]
        } else {
            vec![next + i.jt as u64, next + i.jf as u64]
        };
        for t in targets {
            assert!(t < insns.len() as u64, "jump at {pc} leaves the program");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut sealed = data.to_vec();
    sealed.extend_from_slice(&Sha256::digest(data));
    for (spec, want_flags) in specs() {
        for raw in [data, &sealed[..]] {
            if let Some(p) = Program::from_cache(raw, spec) {
                check(&p, *want_flags);
            }
        }
    }
});
