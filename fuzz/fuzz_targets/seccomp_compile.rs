//! The seccomp compiler on any `linux.seccomp` that parses: it compiles or refuses with an
//! error, and what it compiles is a program the kernel can take.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oci_spec::runtime::LinuxSeccomp;

/// BPF_MAXINSNS: the kernel refuses longer classic programs.
const MAX_INSNS: usize = 4096;
const SECCOMP_FILTER_FLAG_NEW_LISTENER: u32 = 8;

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = serde_json::from_slice::<LinuxSeccomp>(data) else {
        return;
    };
    if vessel_fuzz::too_slow_for_libseccomp(&spec) {
        return;
    }
    let Ok(p) = vessel_seccomp::compile(&spec) else {
        return;
    };
    let n = p.instructions().len();
    assert!((1..=MAX_INSNS).contains(&n), "{n} instructions");
    assert_eq!(
        p.needs_listener(),
        p.flags() & SECCOMP_FILTER_FLAG_NEW_LISTENER != 0,
        "listener flag and needs_listener disagree"
    );
});
