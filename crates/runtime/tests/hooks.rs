//! OCI hooks run at the right moments with the container state on stdin.

mod common;
use common::*;
use serde_json::json;

#[test]
fn every_hook_runs_with_state_on_stdin() {
    let env = TestEnv::new();
    let id = unique("hooks");
    let cg = unique("cg");
    let log = env.tmp.path().join("hooks.log");
    let hook_to = |name: &str, log: &std::path::Path| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("printf '{name} ' >> {}; cat >> {}; echo >> {}", log.display(), log.display(), log.display())]});
    let hook = |name: &str| hook_to(name, &log);
    let mut cfg = busybox_config(&["true"], &cg);
    cfg["hooks"] = json!({
        "prestart": [hook("prestart")],
        "createRuntime": [hook("createRuntime")],
        "createContainer": [hook("createContainer")],
        // startContainer runs inside the container: its paths resolve there.
        "startContainer": [hook_to("startContainer", std::path::Path::new("/hooks.log"))],
        "poststart": [hook("poststart")],
        "poststop": [hook("poststop")]
    });
    cfg["annotations"] = json!({"org.example.key": "value"});
    env.write_config(&cfg);
    let (code, _, err) = run_container(&env, &id);
    assert_eq!(code, 0, "{err}");
    let host_log = std::fs::read_to_string(&log).unwrap();
    let inner_log = std::fs::read_to_string(env.bundle.join("rootfs/hooks.log")).unwrap();
    // Put the in-container hook back in its place in the sequence.
    let mut lines: Vec<&str> = host_log.lines().collect();
    let pos = lines
        .iter()
        .position(|l| l.starts_with("poststart"))
        .unwrap_or(lines.len());
    lines.insert(pos, inner_log.trim_end());
    let text = lines.join("\n");
    let names: Vec<&str> = text.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(
        names,
        [
            "prestart",
            "createRuntime",
            "createContainer",
            "startContainer",
            "poststart",
            "poststop"
        ]
    );
    for line in text.lines() {
        let (name, body) = line.split_once(' ').unwrap();
        let v: serde_json::Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{name}: {e}: {body}"));
        assert_eq!(v["id"], id.as_str(), "{name}");
        assert_eq!(v["annotations"]["org.example.key"], "value");
        let want = match name {
            "poststart" => "running",
            "poststop" => "stopped",
            "startContainer" => "created",
            _ => "creating",
        };
        assert_eq!(v["status"], want, "{name}");
    }
    assert_gone(&env, &id, &cg);
}

#[test]
fn hook_timeout_is_enforced() {
    let env = TestEnv::new();
    let id = unique("hooks");
    let cg = unique("cg");
    let mut cfg = busybox_config(&["true"], &cg);
    cfg["hooks"] =
        json!({"prestart": [{"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}]});
    env.write_config(&cfg);
    let t = std::time::Instant::now();
    let o = rt_out(
        &env,
        &["create", "--bundle", env.bundle.to_str().unwrap(), &id],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("timed out"), "{}", stderr(&o));
    assert!(t.elapsed().as_secs() < 20);
    assert_gone(&env, &id, &cg);
}
