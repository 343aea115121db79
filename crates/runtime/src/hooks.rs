//! OCI hooks: each is a host program run with the container state on stdin, optionally with
//! a timeout. A failing prestart/createRuntime/createContainer/startContainer hook aborts the
//! operation; poststart and poststop failures are reported but do not undo anything (as the
//! runtime-spec says).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;
use serde::Serialize;

use crate::error::{Error, Result};

/// The runtime-spec `state` document given to hooks and printed by `state`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HookState<'a> {
    pub oci_version: &'a str,
    pub id: &'a str,
    pub status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    pub bundle: &'a std::path::Path,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<&'a std::collections::HashMap<String, String>>,
}

pub fn run_all(kind: &'static str, hooks: Option<&Vec<Hook>>, state: &HookState) -> Result<()> {
    let hooks = match hooks {
        Some(h) if !h.is_empty() => h,
        _ => return Ok(()),
    };
    let input = serde_json::to_vec(state).map_err(|e| Error::config(e.to_string()))?;
    for (index, hook) in hooks.iter().enumerate() {
        run_one(hook, &input).map_err(|reason| Error::Hook {
            kind,
            index,
            path: hook.path().display().to_string(),
            reason,
        })?;
    }
    Ok(())
}

fn run_one(hook: &Hook, input: &[u8]) -> std::result::Result<(), String> {
    let args = hook.args().as_deref().unwrap_or(&[]);
    let mut cmd = Command::new(hook.path());
    if let Some((arg0, rest)) = args.split_first() {
        use std::os::unix::process::CommandExt;
        cmd.arg0(arg0).args(rest);
    }
    cmd.env_clear();
    for e in hook.env().iter().flatten() {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("start: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is fine: ignore EPIPE.
        let _ = stdin.write_all(input);
    }
    let deadline = match hook.timeout() {
        Some(t) if t <= 0 => return Err(format!("timeout must be positive, got {t}")),
        Some(t) => Some(Instant::now() + Duration::from_secs(t as u64)),
        None => None,
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(format!("wait: {e}")),
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("timed out after {}s", hook.timeout().unwrap_or(0)));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    if status.success() {
        return Ok(());
    }
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    let stderr = stderr.trim();
    Err(if stderr.is_empty() {
        format!("{status}")
    } else {
        format!("{status}: {stderr}")
    })
}
