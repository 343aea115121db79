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
    let profile = process
        .apparmor_profile()
        .as_deref()
        .filter(|p| !p.is_empty());
    let label = process.selinux_label().as_deref().filter(|l| !l.is_empty());
    if profile.is_none() && label.is_none() {
        return Ok(());
    }
    // Through a verified procfs handle: /proc/self/attr shadowed by a mount would take the
    // label and leave the process unconfined (CVE-2019-16884).
    let proc = crate::procfs::Proc::open(std::path::Path::new("/proc"))?;
    if let Some(p) = profile {
        let data = format!("exec {p}");
        proc.write_self("attr/apparmor/exec", data.as_bytes())
            .or_else(|_| proc.write_self("attr/exec", data.as_bytes()))
            .map_err(|e| Error::Child(format!("process.apparmorProfile: apply {p:?}: {e}")))?;
    }
    if let Some(l) = label {
        proc.write_self("attr/exec", l.as_bytes())
            .map_err(|e| Error::Child(format!("process.selinuxLabel: apply {l:?}: {e}")))?;
    }
    Ok(())
}
