//! Small file helpers: every error names the file and the value.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::{io, Error, Result};

pub fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value.as_bytes())
        .map_err(io(format!("write {value:?} to {}", path.display())))
}

pub fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(io(format!("read {}", path.display())))
}

pub fn read_u64(path: &Path) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.trim();
    if s == "max" {
        return Some(u64::MAX);
    }
    s.parse().ok()
}

pub fn mkdir_p(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io(format!("create cgroup {}", dir.display())))
}

/// v1 cpuset: a new cgroup starts with empty cpus/mems and refuses tasks until they are set;
/// copy them down from the nearest ancestor that has them.
pub fn init_cpuset(dir: &Path) -> Result<()> {
    let mut chain = Vec::new();
    let mut d = dir;
    while d.join("cpuset.cpus").exists() {
        chain.push(d.to_path_buf());
        match d.parent() {
            Some(p) => d = p,
            None => break,
        }
    }
    // From the top down: each level copies its parent's values when it has none.
    for w in chain.iter().rev().collect::<Vec<_>>().windows(2) {
        let (parent, child) = (w[0], w[1]);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let mine = read(&child.join(file))?;
            if mine.trim().is_empty() {
                let theirs = read(&parent.join(file))?;
                write(&child.join(file), theirs.trim())?;
            }
        }
    }
    Ok(())
}

/// v2: controllers must be enabled in every ancestor's cgroup.subtree_control for a child to
/// get their files. Enable what each level offers; refusals (e.g. "no internal processes")
/// are left for `apply` to report if that controller is really needed.
pub fn enable_controllers(dir: &Path) -> Result<()> {
    let mut ancestors: Vec<&Path> = dir
        .ancestors()
        .skip(1)
        .take_while(|a| a.join("cgroup.subtree_control").exists())
        .collect();
    ancestors.reverse();
    for a in ancestors {
        let offered = match std::fs::read_to_string(a.join("cgroup.controllers")) {
            Ok(s) => s,
            Err(_) => continue,
        };
        let enabled = std::fs::read_to_string(a.join("cgroup.subtree_control")).unwrap_or_default();
        for c in offered.split_whitespace() {
            if !enabled.split_whitespace().any(|e| e == c) {
                let _ = std::fs::write(a.join("cgroup.subtree_control"), format!("+{c}"));
            }
        }
    }
    Ok(())
}

pub fn collect_pids(dir: &Path, out: &mut Vec<i32>) -> Result<()> {
    let procs = match std::fs::read_to_string(dir.join("cgroup.procs")) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(format!("read {}/cgroup.procs", dir.display()))(e)),
    };
    out.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_pids(&e.path(), out)?;
            }
        }
    }
    Ok(())
}

/// Remove a cgroup and any child cgroups below it (deepest first). A cgroup is usually a
/// leaf: one rmdir; only when the kernel says it is busy are child cgroups looked for.
pub fn rmdir_retrying(dir: &Path) -> Result<()> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(1);
    let mut children_removed = false;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && !children_removed => {
                children_removed = true;
                if let Ok(entries) = std::fs::read_dir(dir) {
                    for e in entries.flatten() {
                        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                            rmdir_retrying(&e.path())?;
                        }
                    }
                }
            }
            // Processes that are still exiting keep it busy for a moment.
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY)
                    && start.elapsed() < Duration::from_secs(5) =>
            {
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(100));
            }
            Err(e) => return Err(io(format!("remove cgroup {}", dir.display()))(e)),
        }
    }
}

pub fn wait_until(mut done: impl FnMut() -> Result<bool>, what: &str) -> Result<()> {
    let start = Instant::now();
    let mut delay = Duration::from_micros(200);
    while start.elapsed() < Duration::from_secs(10) {
        if done()? {
            return Ok(());
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(50));
    }
    Err(Error::Unsupported(format!(
        "{what}: the cgroup did not reach the requested state within 10s"
    )))
}
