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
    let labels = [
        ("process.selinuxLabel", process.selinux_label().as_deref()),
        ("linux.mountLabel", mount_label),
    ];
    for (field, label) in labels {
        if let Some(l) = label.filter(|l| !l.is_empty()) {
            if !selinux_enabled() {
                return Err(Error::config(format!(
                    "{field}: {l:?} requested, but SELinux is not enabled on this host"
                )));
            }
        }
    }
    Ok(())
}

/// linux.mountLabel, applied as runc does: a `context="LABEL"` option on each mount that
/// takes one — not on bind mounts (they keep their files' labels), nor on proc, sysfs,
/// cgroup and mqueue, which runc does not label that way either. Only on a host with
/// SELinux; elsewhere [`validate`] refuses the label.
pub fn label_mounts(mut spec: oci_spec::runtime::Spec) -> oci_spec::runtime::Spec {
    let label = spec
        .linux()
        .as_ref()
        .and_then(|l| l.mount_label().clone())
        .filter(|l| !l.is_empty());
    if let Some(label) = label {
        if selinux_enabled() {
            add_context(&mut spec, &label);
        }
    }
    spec
}

fn add_context(spec: &mut oci_spec::runtime::Spec, label: &str) {
    let Some(mounts) = spec.mounts_mut().as_mut() else {
        return;
    };
    for m in mounts.iter_mut() {
        let typ = m.typ().as_deref().unwrap_or("");
        let options = m.options().clone().unwrap_or_default();
        let bind = typ == "bind" || options.iter().any(|o| o == "bind" || o == "rbind");
        let unlabelled = matches!(typ, "proc" | "sysfs" | "cgroup" | "cgroup2" | "mqueue");
        if bind || unlabelled || options.iter().any(|o| o.starts_with("context=")) {
            continue;
        }
        let mut options = options;
        // Quoted: an MCS label has commas ("s0:c1,c2").
        options.push(format!("context=\"{label}\""));
        m.set_options(Some(options));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_label_goes_on_the_mounts_that_take_it() {
        let mut spec: oci_spec::runtime::Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.2.0",
            "root": {"path": "rootfs"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["mode=755"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts"},
                {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue"},
                {"destination": "/data", "type": "none", "source": "/srv", "options": ["rbind"]},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["context=\"x\""]}
            ],
            "linux": {"mountLabel": "system_u:object_r:container_file_t:s0:c1,c2"}
        }))
        .unwrap();
        add_context(&mut spec, "system_u:object_r:container_file_t:s0:c1,c2");
        let ctx = "context=\"system_u:object_r:container_file_t:s0:c1,c2\"";
        let opts: Vec<Vec<String>> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.options().clone().unwrap_or_default())
            .collect();
        assert_eq!(opts[0], Vec::<String>::new());
        assert_eq!(opts[1], vec!["mode=755".to_string(), ctx.to_string()]);
        assert_eq!(opts[2], vec![ctx.to_string()]);
        assert_eq!(opts[3], Vec::<String>::new());
        assert_eq!(opts[4], vec!["rbind".to_string()]);
        assert_eq!(opts[5], vec!["context=\"x\"".to_string()]);
    }
}
