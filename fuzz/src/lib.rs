//! What the fuzz targets share.

use std::collections::HashMap;

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompOperator};

/// Whether libseccomp (2.5) would take too long to compile `spec` for a fuzz run: its
/// compile time grows exponentially with the argument comparisons other than `==` one
/// syscall's rules carry (five rules of five `>` conditions on `read` take minutes; three of
/// six, a second). That is libseccomp's, not vessel's, so the targets leave such profiles
/// out instead of reporting libFuzzer timeouts.
pub fn too_slow_for_libseccomp(spec: &LinuxSeccomp) -> bool {
    const MAX_RANGE_CONDITIONS_PER_SYSCALL: usize = 16;
    let mut per_name: HashMap<&str, usize> = HashMap::new();
    for rule in spec.syscalls().iter().flatten() {
        let ranges = rule
            .args()
            .iter()
            .flatten()
            .filter(|a| {
                !matches!(
                    a.op(),
                    LinuxSeccompOperator::ScmpCmpEq | LinuxSeccompOperator::ScmpCmpMaskedEq
                )
            })
            .count();
        for name in rule.names() {
            let n = per_name.entry(name.as_str()).or_default();
            *n += ranges;
            if *n > MAX_RANGE_CONDITIONS_PER_SYSCALL {
                return true;
            }
        }
    }
    false
}
