//! The container lifecycle against the real kernel: run, create/start/state/kill/delete,
//! exec, pause/resume, list and ps — and nothing left behind afterwards.

mod common;
use common::*;

fn setup(args: &[&str]) -> (TestEnv, String, String) {
    let env = TestEnv::new();
    let id = unique("c");
    let cg = unique("cg");
    env.write_config(&busybox_config(args, &cg));
    (env, id, cg)
}

#[test]
fn run_true_exits_zero_and_cleans_up() {
    let (env, id, cg) = setup(&["true"]);
    let (code, _, err) = run_container(&env, &id);
    assert_eq!(code, 0, "stderr: {err}");
    assert_gone(&env, &id, &cg);
}

#[test]
fn run_propagates_exit_code_and_output() {
    let (env, id, cg) = setup(&["sh", "-c", "echo out; echo err >&2; exit 7"]);
    let (code, out, err) = run_container(&env, &id);
    assert_eq!(code, 7);
    assert_eq!(out, "out\n");
    assert!(err.contains("err"), "{err}");
    assert_gone(&env, &id, &cg);
}

#[test]
fn create_start_state_kill_delete() {
    let (env, id, cg) = setup(&["sleep", "1000"]);
    let _guard = Cleanup {
        env: &env,
        id: id.clone(),
    };
    let pidfile = env.tmp.path().join("pid");
    let o = rt_out(
        &env,
        &[
            "create",
            "--bundle",
            env.bundle.to_str().unwrap(),
            "--pid-file",
            pidfile.to_str().unwrap(),
            &id,
        ],
    );
    assert!(o.status.success(), "create: {}", stderr(&o));
    let st = state_json(&env, &id);
    assert_eq!(st["status"], "created");
    assert_eq!(st["id"], id.as_str());
    let pid = st["pid"].as_i64().unwrap();
    assert!(pid > 0);
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap(), pid.to_string());
    assert_eq!(
        st["bundle"],
        env.bundle.canonicalize().unwrap().to_str().unwrap()
    );
    assert!(st["created"].as_str().unwrap().ends_with('Z'));
    // The init is in its cgroup, in every hierarchy, before any user code runs.
    let dirs = cgroup_dirs(&cg);
    assert!(!dirs.is_empty());
    for dir in dirs {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|l| l == pid.to_string()),
            "{pid} not in {}: {procs}",
            dir.display()
        );
    }

    // A second create with the same id is refused and does not disturb the first.
    let o = rt_out(
        &env,
        &["create", "--bundle", env.bundle.to_str().unwrap(), &id],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));

    let o = rt_out(&env, &["start", &id]);
    assert!(o.status.success(), "start: {}", stderr(&o));
    assert_eq!(state_json(&env, &id)["status"], "running");
    // Starting twice is an error naming the status.
    let o = rt_out(&env, &["start", &id]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("running"), "{}", stderr(&o));

    // delete without --force refuses a running container.
    let o = rt_out(&env, &["delete", &id]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("running"), "{}", stderr(&o));

    let o = rt_out(&env, &["kill", &id, "KILL"]);
    assert!(o.status.success(), "kill: {}", stderr(&o));
    wait_for_status(&env, &id, "stopped");
    assert_eq!(state_json(&env, &id)["pid"], 0);
    let o = rt_out(&env, &["delete", &id]);
    assert!(o.status.success(), "delete: {}", stderr(&o));
    assert_gone(&env, &id, &cg);
    let o = rt_out(&env, &["state", &id]);
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
}

#[test]
fn created_container_runs_no_user_code_until_start() {
    let (env, id, _cg) = setup(&["sh", "-c", "echo started > /tmp/marker; sleep 1000"]);
    let _guard = Cleanup {
        env: &env,
        id: id.clone(),
    };
    let o = rt_out(
        &env,
        &["create", "--bundle", env.bundle.to_str().unwrap(), &id],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(!env.bundle.join("rootfs/tmp/marker").exists());
    assert!(rt_out(&env, &["start", &id]).status.success());
    for _ in 0..200 {
        if env.bundle.join("rootfs/tmp/marker").exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("process did not run after start");
}

#[test]
fn delete_of_created_container_kills_it() {
    let (env, id, cg) = setup(&["sleep", "1000"]);
    assert!(rt_out(
        &env,
        &["create", "--bundle", env.bundle.to_str().unwrap(), &id]
    )
    .status
    .success());
    let pid = state_json(&env, &id)["pid"].as_i64().unwrap();
    let o = rt_out(&env, &["delete", &id]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}/exe")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(" Z "))
                .unwrap_or(true)
    );
    assert_gone(&env, &id, &cg);
}

#[test]
fn exec_runs_in_the_container() {
    let (env, id, _cg) = setup(&["sleep", "1000"]);
    let _guard = Cleanup {
        env: &env,
        id: id.clone(),
    };
    assert!(rt_out(
        &env,
        &["run", "-d", "--bundle", env.bundle.to_str().unwrap(), &id]
    )
    .status
    .success());
    let o = rt_out(
        &env,
        &[
            "exec",
            &id,
            "sh",
            "-c",
            "hostname; cat /proc/1/cmdline | tr '\\0' ' '; exit 3",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("vessel-test\n"), "{out}");
    assert!(out.contains("sleep 1000"), "{out}");
    // --env, --cwd and --user
    let o = rt_out(
        &env,
        &[
            "exec",
            "--env",
            "FOO=bar",
            "--cwd",
            "/tmp",
            "--user",
            "1000:1001",
            &id,
            "sh",
            "-c",
            "echo $FOO; pwd; id -u; id -g",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "bar\n/tmp\n1000\n1001\n");
    // --process file
    let proc = serde_json::json!({"args": ["sh", "-c", "echo from-process-file"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin"]});
    let pf = env.tmp.path().join("process.json");
    std::fs::write(&pf, proc.to_string()).unwrap();
    let o = rt_out(&env, &["exec", "--process", pf.to_str().unwrap(), &id]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "from-process-file\n");
    // A missing program is an error from exec itself, before anything runs.
    let o = rt_out(&env, &["exec", &id, "no-such-program"]);
    // runc's exit code for an exec that does not start.
    assert_eq!(o.status.code(), Some(255));
    assert!(stderr(&o).contains("no-such-program"), "{}", stderr(&o));
    // Detached exec with a pid file.
    let pidfile = env.tmp.path().join("exec.pid");
    let o = rt_out(
        &env,
        &[
            "exec",
            "-d",
            "--pid-file",
            pidfile.to_str().unwrap(),
            &id,
            "sleep",
            "1000",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let epid: i32 = std::fs::read_to_string(&pidfile).unwrap().parse().unwrap();
    let cmdline = std::fs::read_to_string(format!("/proc/{epid}/cmdline")).unwrap();
    assert!(cmdline.starts_with("sleep"), "{cmdline}");
    // ps sees both processes, in JSON and as a table.
    let o = rt_out(&env, &["ps", "--format", "json", &id]);
    let pids: Vec<i32> = serde_json::from_slice(&o.stdout).unwrap();
    assert!(pids.contains(&epid), "{pids:?}");
    assert_eq!(pids.len(), 2, "{pids:?}");
    let o = rt_out(&env, &["ps", &id]);
    assert!(stdout(&o).lines().next().unwrap().contains("PID"));
    assert_eq!(stdout(&o).lines().count(), 3, "{}", stdout(&o));
}

#[test]
fn pause_and_resume_freeze_the_processes() {
    let (env, id, _cg) = setup(&["sleep", "1000"]);
    let _guard = Cleanup {
        env: &env,
        id: id.clone(),
    };
    assert!(rt_out(
        &env,
        &["run", "-d", "--bundle", env.bundle.to_str().unwrap(), &id]
    )
    .status
    .success());
    let pid = state_json(&env, &id)["pid"].as_i64().unwrap();
    let o = rt_out(&env, &["pause", &id]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(state_json(&env, &id)["status"], "paused");
    // The kernel says the task is frozen (state D or freezer state).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let state = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert!(state == "D" || state == "S", "unexpected state {state}");
    assert!(!rt_out(&env, &["pause", &id]).status.success());
    assert!(rt_out(&env, &["resume", &id]).status.success());
    assert_eq!(state_json(&env, &id)["status"], "running");
}

#[test]
fn list_shows_containers_in_runc_format() {
    let (env, id, _cg) = setup(&["sleep", "1000"]);
    let _guard = Cleanup {
        env: &env,
        id: id.clone(),
    };
    let o = rt_out(&env, &["list", "--format", "json"]);
    assert_eq!(stdout(&o).trim(), "null");
    assert!(rt_out(
        &env,
        &["create", "--bundle", env.bundle.to_str().unwrap(), &id]
    )
    .status
    .success());
    let o = rt_out(&env, &["list", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let keys: Vec<&str> = v[0]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    for k in [
        "ociVersion",
        "id",
        "pid",
        "status",
        "bundle",
        "rootfs",
        "created",
        "owner",
    ] {
        assert!(keys.contains(&k), "missing {k} in {keys:?}");
    }
    assert_eq!(v[0]["status"], "created");
    let o = rt_out(&env, &["list", "-q"]);
    assert_eq!(stdout(&o).trim(), id);
    let o = rt_out(&env, &["list"]);
    assert!(stdout(&o).starts_with("ID"), "{}", stdout(&o));
}

#[test]
fn kill_all_signals_every_process() {
    let (env, id, _cg) = setup(&["sh", "-c", "sleep 1000 & sleep 1000"]);
    let _guard = Cleanup {
        env: &env,
        id: id.clone(),
    };
    assert!(rt_out(
        &env,
        &["run", "-d", "--bundle", env.bundle.to_str().unwrap(), &id]
    )
    .status
    .success());
    for _ in 0..100 {
        let o = rt_out(&env, &["ps", "--format", "json", &id]);
        if serde_json::from_slice::<Vec<i32>>(&o.stdout)
            .map(|p| p.len())
            .unwrap_or(0)
            >= 3
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let o = rt_out(&env, &["kill", "--all", &id, "9"]);
    assert!(o.status.success(), "{}", stderr(&o));
    wait_for_status(&env, &id, "stopped");
    assert!(!rt_out(&env, &["kill", &id, "TERM"]).status.success());
}

#[test]
fn signal_names_and_numbers() {
    let (env, id, _cg) = setup(&["sleep", "1000"]);
    let _guard = Cleanup {
        env: &env,
        id: id.clone(),
    };
    assert!(rt_out(
        &env,
        &["run", "-d", "--bundle", env.bundle.to_str().unwrap(), &id]
    )
    .status
    .success());
    let o = rt_out(&env, &["kill", &id, "SIGBOGUS"]);
    assert!(stderr(&o).contains("unknown signal"), "{}", stderr(&o));
    assert!(rt_out(&env, &["kill", &id, "CONT"]).status.success());
    assert!(rt_out(&env, &["kill", &id, "SIGCONT"]).status.success());
    assert!(rt_out(&env, &["kill", &id, "18"]).status.success());
    assert_eq!(state_json(&env, &id)["status"], "running");
}
