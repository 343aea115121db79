//! config.json as `create` takes it, up to the point where the host is touched: parsing into
//! oci-spec's types, `spec::validate`, the cgroup resource checks for both layouts, the
//! seccomp compiler and the argv/env preparation. Namespace paths are not opened (that is
//! host access), so `NsPlan` is left out.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vessel_cgroups::{CgroupManager, Layout};
use vessel_runtime::process::Prepared;
use vessel_runtime::spec::{parse_spec, validate};

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = parse_spec(data, "config.json") else {
        return;
    };
    if validate(&spec).is_err() {
        return;
    }
    let linux = spec.linux().as_ref();
    if let Some(r) = linux.and_then(|l| l.resources().as_ref()) {
        for layout in [Layout::V1, Layout::Hybrid, Layout::V2] {
            let _ = CgroupManager::validate(r, layout);
        }
    }
    let seccomp = match linux.and_then(|l| l.seccomp().as_ref()) {
        Some(s) if vessel_fuzz::too_slow_for_libseccomp(s) => return,
        Some(s) => match vessel_seccomp::compile(s) {
            Ok(p) => Some(p),
            Err(_) => return,
        },
        None => None,
    };
    let Some(process) = spec.process().as_ref() else {
        panic!("validate passed a spec without a process");
    };
    let _ = Prepared::new(process, seccomp);
});
