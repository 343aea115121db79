//! `update` and `events` against the real cgroup: limits land in the kernel's files and in the
//! saved config, stats report them, and the OOM killer shows up as an "oom" event.

mod common;
use common::*;
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The first of `files` that exists in any hierarchy holding cgroup `cg` (v1 names first,
/// then v2), read and trimmed.
fn cgroup_value(cg: &str, files: &[&str]) -> String {
    for dir in cgroup_dirs(cg) {
        for f in files {
            if let Ok(v) = std::fs::read_to_string(dir.join(f)) {
                return v.trim().to_string();
            }
        }
    }
    panic!("none of {files:?} found for cgroup {cg}");
}

fn start_detached(env: &TestEnv, id: &str) {
    let o = rt_out(
        env,
        &["run", "-d", "--bundle", env.bundle.to_str().unwrap(), id],
    );
    assert!(o.status.success(), "run -d: {}", stderr(&o));
}

#[test]
fn update_changes_the_cgroup_the_saved_config_and_the_stats() {
    let env = TestEnv::new();
    let id = unique("upd");
    let cg = unique("cg");
    let mut cfg = busybox_config(&["sleep", "1000"], &cg);
    cfg["linux"]["resources"] = json!({"memory": {"limit": 64 << 20}, "pids": {"limit": 50}});
    env.write_config(&cfg);
    let guard = Cleanup {
        env: &env,
        id: id.clone(),
    };
    start_detached(&env, &id);

    let o = rt_out(
        &env,
        &["update", "--memory", "96M", "--pids-limit", "20", &id],
    );
    assert!(o.status.success(), "update: {}", stderr(&o));
    let file = env.tmp.path().join("resources.json");
    std::fs::write(
        &file,
        json!({"cpu": {"quota": 25000, "period": 100000}}).to_string(),
    )
    .unwrap();
    let o = rt_out(&env, &["update", "-r", file.to_str().unwrap(), &id]);
    assert!(o.status.success(), "update -r: {}", stderr(&o));

    assert_eq!(
        cgroup_value(&cg, &["memory.limit_in_bytes", "memory.max"]),
        (96u64 << 20).to_string()
    );
    assert_eq!(cgroup_value(&cg, &["pids.max"]), "20");
    let quota = cgroup_value(&cg, &["cpu.cfs_quota_us", "cpu.max"]);
    assert!(quota == "25000" || quota == "25000 100000", "{quota}");

    // Both updates are merged into the saved config; what was not updated stays.
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.root.join(&id).join("config.json")).unwrap())
            .unwrap();
    let r = &saved["linux"]["resources"];
    assert_eq!(r["memory"]["limit"], json!(96u64 << 20));
    assert_eq!(r["pids"]["limit"], json!(20));
    assert_eq!(r["cpu"]["quota"], json!(25000));
    assert_eq!(saved["process"]["args"], json!(["sleep", "1000"]));

    let o = rt_out(&env, &["events", "--stats", &id]);
    assert!(o.status.success(), "events --stats: {}", stderr(&o));
    let ev: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ev["type"], "stats");
    assert_eq!(ev["id"], json!(id));
    assert_eq!(ev["data"]["pids"]["limit"], json!(20));
    assert!(ev["data"]["pids"]["current"].as_u64().unwrap() >= 1, "{ev}");
    assert_eq!(ev["data"]["memory"]["usage"]["limit"], json!(96u64 << 20));

    // Bad values are refused by name and change nothing.
    let o = rt_out(&env, &["update", "--memory", "lots", &id]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--memory"), "{}", stderr(&o));
    assert_eq!(cgroup_value(&cg, &["pids.max"]), "20");

    drop(guard);
    assert_gone(&env, &id, &cg);
    let o = rt_out(&env, &["update", "--pids-limit", "5", &id]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
}

/// Read the events file until `want` says it has what we wait for, or give up after a while.
fn wait_for_events(path: &PathBuf, want: impl Fn(&[serde_json::Value]) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut text = std::fs::read_to_string(path).unwrap_or_default();
        // A line still being written is not an event yet.
        text.truncate(text.rfind('\n').map_or(0, |i| i + 1));
        let events: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        if want(&events) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "timed out; events so far: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn events_streams_stats_and_reports_the_oom_killer() {
    let env = TestEnv::new();
    let id = unique("oom");
    let cg = unique("cg");
    // A child shell doubles a string until the 32 MiB limit has the OOM killer end it; the
    // init survives, so the container keeps running after the OOM.
    let mut cfg = busybox_config(
        &[
            "sh",
            "-c",
            "sh -c 'x=a; while :; do x=$x$x; done'; sleep 1000",
        ],
        &cg,
    );
    cfg["linux"]["resources"] = json!({"memory": {"limit": 32 << 20}});
    env.write_config(&cfg);
    let guard = Cleanup {
        env: &env,
        id: id.clone(),
    };
    let o = rt_out(
        &env,
        &["create", "--bundle", env.bundle.to_str().unwrap(), &id],
    );
    assert!(o.status.success(), "create: {}", stderr(&o));

    let out_path = env.tmp.path().join("events.out");
    let mut events = rt(&env)
        .args(["events", "--interval", "100ms", &id])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(env.tmp.path().join("events.err")).unwrap())
        .spawn()
        .unwrap();
    // Stats arrive before anything runs.
    wait_for_events(&out_path, |ev| ev.iter().any(|e| e["type"] == "stats"));
    assert!(rt_out(&env, &["start", &id]).status.success());
    let text = wait_for_events(&out_path, |ev| {
        ev.iter()
            .any(|e| e["type"] == "oom" && e["id"] == json!(id))
    });
    assert!(
        text.lines()
            .all(|l| l.contains(&format!("\"id\":\"{id}\""))),
        "{text}"
    );

    // The stream ends by itself when the container does.
    assert!(rt_out(&env, &["kill", &id, "KILL"]).status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = events.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = events.kill();
            panic!("events did not end when the container stopped");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "events exited with {status}");
    drop(guard);
    assert_gone(&env, &id, &cg);
}
