//! AppArmor and SELinux: applied when the LSM is enabled, a clear error when a profile or
//! label is asked for on a host that does not have it (silently running unconfined would be
//! a security surprise).

use crate::error::{Error, Result};

pub fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .map(|s| s.trim() == "Y")
        .unwrap_or(false)
}

pub fn selinux_enabled() -> bool {
    std::path::Path::new("/sys/fs/selinux/enforce").exists()
}

/// Checked in the parent, before anything is created.
pub fn validate(process: &oci_spec::runtime::Process, mount_label: Option<&str>) -> Result<()> {
    if process
        .apparmor_profile()
        .as_deref()
        .is_some_and(|p| !p.is_empty())
        && !apparmor_enabled()
    {
        return Err(Error::config(format!(
            "process.apparmorProfile: {:?} requested, but AppArmor is not enabled on this host",
            process.apparmor_profile().as_deref().unwrap_or("")
        )));
    }
    let wants_selinux = process
        .selinux_label()
        .as_deref()
        .is_some_and(|l| !l.is_empty())
        || mount_label.is_some_and(|l| !l.is_empty());
    if wants_selinux && !selinux_enabled() {
        return Err(Error::config(
            "process.selinuxLabel / linux.mountLabel: a label was requested, but SELinux is not enabled on this host",
        ));
    }
    Ok(())
}

/// Arrange for the profile/label to take effect at execve.
pub fn apply_on_exec(process: &oci_spec::runtime::Process) -> Result<()> {
    if let Some(p) = process
        .apparmor_profile()
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        let path = if std::path::Path::new("/proc/self/attr/apparmor/exec").exists() {
            "/proc/self/attr/apparmor/exec"
        } else {
            "/proc/self/attr/exec"
        };
        std::fs::write(path, format!("exec {p}"))
            .map_err(|e| Error::Child(format!("process.apparmorProfile: apply {p:?}: {e}")))?;
    }
    if let Some(l) = process.selinux_label().as_deref().filter(|l| !l.is_empty()) {
        std::fs::write("/proc/self/attr/exec", l)
            .map_err(|e| Error::Child(format!("process.selinuxLabel: apply {l:?}: {e}")))?;
    }
    Ok(())
}
