//! The command line side by side with runc 1.1.5: the same invocation against both, exit
//! codes and output compared — version and help layout, usage errors, the error wordings
//! that containerd and podman match on, --log/--log-format/--debug, `kill` with signal 0
//! and of a stopped container, `ps` of a stopped container, `exec -p` without a user,
//! `exec --ignore-paused`, `exec --cgroup`, and `update` inside a "pod" cgroup with a CPU
//! limit. Each test skips when runc is not installed.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// One runtime (vessel-runtime or runc) with a state root of its own in the env.
struct Rt<'a> {
    bin: &'static str,
    root: PathBuf,
    env: &'a TestEnv,
}

impl<'a> Rt<'a> {
    fn new(env: &'a TestEnv, bin: &'static str, tag: &str) -> Rt<'a> {
        Rt {
            bin,
            root: env.tmp.path().join(format!("{tag}-state")),
            env,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin);
        c.arg("--root")
            .arg(&self.root)
            .args(args)
            .current_dir(&self.env.bundle);
        c
    }

    fn out(&self, args: &[&str]) -> Output {
        vessel_testkit::run_via_files(&mut self.cmd(args), self.env.tmp.path())
    }

    /// `run -d` of a `sleep` container in cgroup `cg` (the config is written just before:
    /// each runtime reads it at create).
    fn start_sleeper(&self, id: &str, cg: &str) {
        self.env
            .write_config(&busybox_config(&["sleep", "1000"], cg));
        let bundle = self.env.bundle.to_str().unwrap();
        let o = self.out(&["run", "-d", "--bundle", bundle, id]);
        assert!(o.status.success(), "{} run: {}", self.bin, stderr(&o));
    }

    fn status(&self, id: &str) -> String {
        let o = self.out(&["state", id]);
        serde_json::from_slice::<serde_json::Value>(&o.stdout)
            .map(|v| v["status"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    }

    fn wait_status(&self, id: &str, want: &str) {
        for _ in 0..500 {
            if self.status(id) == want {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{}: {id} never became {want}", self.bin);
    }
}

/// Deletes the containers of both runtimes and removes their cgroups, whatever happens.
struct Both<'a> {
    ours: Rt<'a>,
    runc: Rt<'a>,
    ids: Vec<(bool, String)>,
    cgroups: Vec<String>,
}

impl<'a> Both<'a> {
    fn new(env: &'a TestEnv) -> Option<Both<'a>> {
        let runc = runc_path()?;
        Some(Both {
            ours: Rt::new(env, RT, "ours"),
            runc: Rt::new(env, runc, "runc"),
            ids: Vec::new(),
            cgroups: Vec::new(),
        })
    }

    fn each(&self) -> [&Rt<'a>; 2] {
        [&self.ours, &self.runc]
    }

    /// A sleeping container in each runtime (ours first); returns their ids and cgroups.
    fn sleepers(&mut self, tag: &str) -> [(String, String); 2] {
        let mut out = Vec::new();
        for ours in [true, false] {
            let id = unique(tag);
            let cg = unique("cg");
            self.ids.push((ours, id.clone()));
            self.cgroups.push(cg.clone());
            let rt = if ours { &self.ours } else { &self.runc };
            rt.start_sleeper(&id, &cg);
            out.push((id, cg));
        }
        [out[0].clone(), out[1].clone()]
    }
}

impl Drop for Both<'_> {
    fn drop(&mut self) {
        for (ours, id) in &self.ids {
            let rt = if *ours { &self.ours } else { &self.runc };
            let _ = rt.cmd(&["resume", id]).output();
            let _ = rt.cmd(&["delete", "--force", id]).output();
        }
        for cg in &self.cgroups {
            remove_cgroup_tree(cg);
        }
    }
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn not_root() -> bool {
    if vessel_testkit::is_root() {
        return false;
    }
    eprintln!("needs root; skipping");
    true
}

/// The `key: value` lines of a --version block, without the first one.
fn version_keys(text: &str) -> Vec<String> {
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_once(": ").map(|(k, _)| k.to_string()))
        .collect()
}

/// Section headings ("NAME:", "USAGE:", ...) of a help text, in order.
fn headings(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| {
            !l.starts_with(' ')
                && l.ends_with(':')
                && l.chars()
                    .all(|c| c.is_ascii_uppercase() || c == ' ' || c == ':')
        })
        .map(str::to_string)
        .collect()
}

/// Long option names ("--bundle") of a help text.
fn long_options(text: &str) -> std::collections::BTreeSet<String> {
    text.split(|c: char| c.is_whitespace() || c == ',' || c == '=')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| {
            w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
                .to_string()
        })
        .collect()
}

/// The commands listed under COMMANDS: in a top-level help.
fn commands(text: &str) -> Vec<String> {
    text.lines()
        .skip_while(|l| !l.starts_with("COMMANDS:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .map(|w| w.trim_end_matches(',').to_string())
        .collect()
}

#[test]
fn version_and_help_layout_match_runc() {
    let Some(runc) = runc_path() else { return };
    let run = |bin: &str, args: &[&str]| Command::new(bin).args(args).output().unwrap();

    // --version and -v: "NAME version X", then "key: value" lines; ours has runc's spec and
    // libseccomp lines (no commit or go version to report), in runc's order.
    let theirs = stdout(&run(runc, &["--version"]));
    for flag in ["--version", "-v"] {
        let o = run(RT, &[flag]);
        assert_eq!(code(&o), 0, "{flag}: {}", stderr(&o));
        let ours = stdout(&o);
        let first = ours.lines().next().unwrap_or("");
        assert!(
            first.starts_with("vessel-runtime version ") && theirs.starts_with("runc version "),
            "{flag}: {ours:?} vs {theirs:?}"
        );
        let (ok, tk) = (version_keys(&ours), version_keys(&theirs));
        assert_eq!(ok, ["spec", "libseccomp"], "{ours}");
        let in_their_order: Vec<&String> = tk.iter().filter(|k| ok.contains(k)).collect();
        assert_eq!(in_their_order, ok.iter().collect::<Vec<_>>(), "{theirs}");
        let lib = ours.lines().last().unwrap_or("");
        let v = lib.trim_start_matches("libseccomp: ");
        assert!(
            v.split('.').count() == 3 && v.split('.').all(|n| n.parse::<u32>().is_ok()),
            "libseccomp version {v:?}"
        );
    }
    assert_eq!(stdout(&run(RT, &["-v"])), stdout(&run(RT, &["--version"])));

    // Top-level help: runc's sections in runc's order, every runc command and global option.
    let (ours, theirs) = (run(RT, &["--help"]), run(runc, &["--help"]));
    assert_eq!((code(&ours), code(&theirs)), (0, 0));
    let (ours, theirs) = (stdout(&ours), stdout(&theirs));
    assert_eq!(headings(&ours), headings(&theirs), "{ours}");
    assert_eq!(
        headings(&ours),
        [
            "NAME:",
            "USAGE:",
            "VERSION:",
            "COMMANDS:",
            "GLOBAL OPTIONS:"
        ]
    );
    let our_cmds = commands(&ours);
    for c in commands(&theirs) {
        // checkpoint/restore are another change's; `h` is urfave/cli's alias of help.
        if ["checkpoint", "restore", "h"].contains(&c.as_str()) {
            continue;
        }
        assert!(our_cmds.contains(&c), "command {c} missing from:\n{ours}");
    }
    let our_opts = long_options(&ours);
    for o in long_options(&theirs) {
        // Accepted by us too, but hidden: it means nothing without rootless cgroup managers.
        if o == "--rootless" {
            continue;
        }
        assert!(
            our_opts.contains(&o),
            "global option {o} missing from:\n{ours}"
        );
    }
    let _ = run(RT, &["help"]);
    assert_eq!(stdout(&run(RT, &["help"])), ours, "`help` is `--help`");

    // `help CMD` for each of runc's commands: NAME/USAGE/OPTIONS, every option runc has.
    for c in commands(&theirs) {
        if ["checkpoint", "restore", "h", "help"].contains(&c.as_str()) {
            continue;
        }
        let (o, t) = (run(RT, &["help", &c]), run(runc, &["help", &c]));
        assert_eq!((code(&o), code(&t)), (0, 0), "help {c}: {}", stderr(&o));
        let (o, t) = (stdout(&o), stdout(&t));
        let oh = headings(&o);
        assert_eq!(&oh[..2], ["NAME:", "USAGE:"], "help {c}:\n{o}");
        assert!(
            o.lines()
                .nth(1)
                .unwrap_or("")
                .trim_start()
                .starts_with(&format!("vessel-runtime {c} - ")),
            "help {c}:\n{o}"
        );
        if headings(&t).contains(&"OPTIONS:".to_string()) {
            assert!(oh.contains(&"OPTIONS:".to_string()), "help {c}:\n{o}");
        }
        // The options of the OPTIONS: section (descriptions mention global ones too).
        let section = |h: &str| h.split_once("OPTIONS:").map(|(_, o)| o.to_string());
        if let Some(theirs) = section(&t) {
            let ours_opts = long_options(&section(&o).unwrap_or_default());
            for opt in long_options(&theirs) {
                assert!(ours_opts.contains(&opt), "{c} {opt} missing from:\n{o}");
            }
        }
        // The container id is named as runc names it.
        if t.contains("<container-id>") {
            assert!(o.contains("<container-id>"), "help {c}:\n{o}");
        }
    }
}

#[test]
fn usage_errors_exit_like_runc() {
    let env = TestEnv::new();
    let Some(both) = Both::new(&env) else { return };
    for args in [
        &["no-such-command"][..],
        &["kill"],
        &["state"],
        &["kill", "--no-such-flag", "x"],
        &["--no-such-flag", "list"],
        &["--log-format", "xml", "list"],
    ] {
        let o = both.ours.out(args);
        let t = both.runc.out(args);
        assert_eq!(code(&o), code(&t), "{args:?}: ours {o:?}, runc {t:?}");
        assert_ne!(code(&o), 0, "{args:?}");
    }
}

/// containerd (pkg/process: "does not exist" ignored by delete, checkKillError) and podman
/// (libpod: "does not exist" in `state`) match these words in the runtime's errors.
#[test]
fn missing_container_errors_match_runc() {
    let env = TestEnv::new();
    let Some(both) = Both::new(&env) else { return };
    let id = unique("missing");
    for args in [
        &["state", &id][..],
        &["kill", &id, "9"],
        &["delete", &id],
        &["start", &id],
        &["pause", &id],
        &["resume", &id],
        &["ps", &id],
        &["update", "--memory", "10m", &id],
        &["events", "--stats", &id],
        &["exec", &id, "true"],
    ] {
        let o = both.ours.out(args);
        let t = both.runc.out(args);
        assert_eq!(code(&o), code(&t), "{args:?}: ours {o:?}, runc {t:?}");
        for out in [&o, &t] {
            assert!(
                stderr(out).contains("does not exist"),
                "{args:?}: {}",
                stderr(out)
            );
        }
        if args[0] == "exec" {
            // runc: exit 255 and "exec failed: ..." for every exec that does not start.
            assert_eq!(code(&o), 255);
            assert!(stderr(&o).contains("exec failed: "), "{}", stderr(&o));
        }
    }
    // create of an id in use: runc's "already exists".
    let mut both = both;
    let [(ours, _), (theirs, _)] = both.sleepers("dup");
    let bundle = env.bundle.to_str().unwrap().to_string();
    for (rt, id) in [(&both.ours, &ours), (&both.runc, &theirs)] {
        let o = rt.out(&["create", "--bundle", &bundle, id]);
        assert_eq!(code(&o), 1, "{}: {o:?}", rt.bin);
        assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    }
}

/// go-runc (containerd) and libpod read the last "error" entry of a `--log FILE
/// --log-format json` file: {"level","msg","time"}, as logrus writes it.
#[test]
fn log_file_lines_match_runc() {
    let env = TestEnv::new();
    let Some(both) = Both::new(&env) else { return };
    let id = unique("missing");
    for rt in both.each() {
        for format in ["json", "text"] {
            let log = env
                .tmp
                .path()
                .join(format!("{format}-{}.log", unique("log")));
            let o = rt.out(&[
                "--log",
                log.to_str().unwrap(),
                "--log-format",
                format,
                "kill",
                &id,
                "9",
            ]);
            assert_eq!(code(&o), 1, "{}: {o:?}", rt.bin);
            // The message still reaches stderr, for whoever only reads that.
            assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
            let text = std::fs::read_to_string(&log).unwrap();
            let line = text.lines().last().unwrap_or("");
            if format == "json" {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
                assert_eq!(keys, ["level", "msg", "time"], "{}: {line}", rt.bin);
                assert_eq!(v["level"], "error");
                assert!(v["msg"].as_str().unwrap().contains("does not exist"));
                let time = v["time"].as_str().unwrap();
                assert!(
                    chrono::DateTime::parse_from_rfc3339(time).is_ok(),
                    "{}: time {time:?}",
                    rt.bin
                );
            } else {
                assert!(
                    line.starts_with("time=\"") && line.contains(" level=error msg=\""),
                    "{}: {line}",
                    rt.bin
                );
            }
        }
    }
    // --debug: debug lines in the log (and none without it); stdout stays the command's.
    let mut both = both;
    let [(ours, _), _] = both.sleepers("dbg");
    let log = env.tmp.path().join("debug.log");
    let args = |debug: bool| {
        let mut a = vec!["--log", log.to_str().unwrap(), "--log-format", "json"];
        if debug {
            a.push("--debug");
        }
        a.extend(["state", ours.as_str()]);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let a: Vec<String> = args(false);
    let o = both
        .ours
        .out(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success());
    assert!(!log.exists() || std::fs::read_to_string(&log).unwrap().is_empty());
    let a: Vec<String> = args(true);
    let o = both
        .ours
        .out(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(serde_json::from_slice::<serde_json::Value>(&o.stdout).is_ok());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.is_empty());
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["level"], "debug", "{line}");
    }
    // Without --log, debug lines go to stderr.
    let o = both.ours.out(&["--debug", "state", &ours]);
    assert!(o.status.success());
    assert!(stderr(&o).contains("debug"), "{}", stderr(&o));
}

#[test]
fn kill_ps_exec_of_running_and_stopped_containers_match_runc() {
    if not_root() {
        return;
    }
    let env = TestEnv::new();
    let Some(mut both) = Both::new(&env) else {
        return;
    };
    let [(ours, _), (theirs, _)] = both.sleepers("stop");
    let pairs = [(&both.ours, &ours), (&both.runc, &theirs)];
    // Signal 0 checks the init (or every process) exists and sends nothing.
    for args in [&["kill"][..], &["kill", "--all"]] {
        for (rt, id) in pairs {
            let mut a = args.to_vec();
            a.extend([id.as_str(), "0"]);
            let o = rt.out(&a);
            assert_eq!(code(&o), 0, "{}: {a:?}: {}", rt.bin, stderr(&o));
            assert_eq!(rt.status(id), "running");
        }
    }
    let mut outputs: Vec<Vec<(i32, String, String)>> = Vec::new();
    for (rt, id) in pairs {
        assert!(rt.out(&["kill", id, "KILL"]).status.success());
        rt.wait_status(id, "stopped");
        let mut mine = Vec::new();
        for args in [
            &["kill", "ID", "KILL"][..],
            &["kill", "--all", "ID", "KILL"],
            &["ps", "ID"],
            &["ps", "--format", "json", "ID"],
            &["exec", "ID", "true"],
            &["start", "ID"],
            &["pause", "ID"],
            &["resume", "ID"],
            &["update", "--memory", "10m", "ID"],
        ] {
            let a: Vec<&str> = args
                .iter()
                .map(|w| if *w == "ID" { id.as_str() } else { w })
                .collect();
            let o = rt.out(&a);
            mine.push((code(&o), stdout(&o), stderr(&o)));
        }
        outputs.push(mine);
    }
    let (o, t) = (&outputs[0], &outputs[1]);
    let names = [
        "kill",
        "kill --all",
        "ps",
        "ps json",
        "exec",
        "start",
        "pause",
        "resume",
        "update",
    ];
    for (i, name) in names.iter().enumerate() {
        assert_eq!(o[i].0, t[i].0, "{name}: ours {:?}, runc {:?}", o[i], t[i]);
    }
    // The wordings tools match on (containerd's checkKillError, podman's kill filter).
    assert!(o[0].2.contains("container not running"), "{}", o[0].2);
    assert!(t[0].2.contains("container not running"), "{}", t[0].2);
    // ps: the header only / null, not an error.
    assert_eq!(o[2].1, t[2].1, "ps table");
    assert_eq!(o[2].1.lines().count(), 1, "{}", o[2].1);
    assert_eq!((o[3].1.trim(), t[3].1.trim()), ("null", "null"));
    for (i, words) in [
        (4, "cannot exec in a stopped container"),
        (5, "cannot start a container that has stopped"),
        (6, "container not running"),
        (7, "container not paused"),
        (8, "container not running"),
    ] {
        assert!(o[i].2.contains(words), "{}: {}", names[i], o[i].2);
        assert!(t[i].2.contains(words), "runc {}: {}", names[i], t[i].2);
    }
    // Running ones too: start of a running container.
    let [(ours2, _), (theirs2, _)] = both.sleepers("run");
    for (rt, id) in [(&both.ours, &ours2), (&both.runc, &theirs2)] {
        let o = rt.out(&["start", id]);
        assert_eq!(code(&o), 1);
        assert!(
            stderr(&o).contains("cannot start an already running container"),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn exec_process_file_without_user_matches_runc() {
    if not_root() {
        return;
    }
    let env = TestEnv::new();
    let Some(mut both) = Both::new(&env) else {
        return;
    };
    let [(ours, _), (theirs, _)] = both.sleepers("proc");
    let write = |name: &str, v: serde_json::Value| {
        let p = env.tmp.path().join(name);
        std::fs::write(&p, v.to_string()).unwrap();
        p.to_str().unwrap().to_string()
    };
    let no_user = write(
        "no-user.json",
        serde_json::json!({"args": ["/bin/sh", "-c", "id -u; id -g"], "cwd": "/"}),
    );
    let no_cwd = write("no-cwd.json", serde_json::json!({"args": ["/bin/true"]}));
    let no_args = write("no-args.json", serde_json::json!({"cwd": "/"}));
    for (rt, id) in [(&both.ours, &ours), (&both.runc, &theirs)] {
        let o = rt.out(&["exec", "-p", &no_user, id]);
        assert_eq!(
            (code(&o), stdout(&o).as_str()),
            (0, "0\n0\n"),
            "{}: {}",
            rt.bin,
            stderr(&o)
        );
        for bad in [&no_cwd, &no_args] {
            let o = rt.out(&["exec", "-p", bad, id]);
            assert_eq!(code(&o), 255, "{} {bad}: {o:?}", rt.bin);
            assert!(stderr(&o).contains("exec failed"), "{}", stderr(&o));
        }
    }
}

#[test]
fn exec_with_unknown_capabilities_is_ignored_with_a_warning_like_runc() {
    if not_root() {
        return;
    }
    let env = TestEnv::new();
    let Some(mut both) = Both::new(&env) else {
        return;
    };
    let [(ours, _), (theirs, _)] = both.sleepers("caps");
    let file = env.tmp.path().join("future-cap.json");
    let caps = serde_json::json!(["CAP_CHOWN", "CAP_FROM_THE_FUTURE"]);
    std::fs::write(
        &file,
        serde_json::json!({
            "args": ["/bin/sh", "-c", "grep CapBnd /proc/self/status"], "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps}
        })
        .to_string(),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    for (rt, id) in [(&both.ours, &ours), (&both.runc, &theirs)] {
        let o = rt.out(&["exec", "-p", file, id]);
        // CAP_CHOWN alone: the unknown name is dropped, not an error.
        assert_eq!(
            (code(&o), stdout(&o).trim()),
            (0, "CapBnd:\t0000000000000001"),
            "{} exec -p: {}",
            rt.bin,
            stderr(&o)
        );
        let o = rt.out(&["exec", "--cap", "CAP_FROM_THE_FUTURE", id, "true"]);
        assert_eq!(code(&o), 0, "{} exec --cap: {}", rt.bin, stderr(&o));
    }
    let o = both.ours.out(&["exec", "-p", file, &ours]);
    assert!(stderr(&o).contains("CAP_FROM_THE_FUTURE"), "{}", stderr(&o));
}

#[test]
fn exec_ignore_paused_matches_runc() {
    if not_root() {
        return;
    }
    let env = TestEnv::new();
    let Some(mut both) = Both::new(&env) else {
        return;
    };
    let [(ours, _), (theirs, _)] = both.sleepers("paused");
    for (rt, id) in [(&both.ours, &ours), (&both.runc, &theirs)] {
        assert!(rt.out(&["pause", id]).status.success());
        let o = rt.out(&["exec", id, "true"]);
        assert_eq!(code(&o), 255, "{}: {o:?}", rt.bin);
        assert!(stderr(&o).contains("--ignore-paused"), "{}", stderr(&o));
        // With the flag the process is created in the frozen cgroup: it runs on resume.
        let out = env.tmp.path().join(format!("{}.out", unique("ip")));
        let mut child = KillOnDrop(
            rt.cmd(&["exec", "--ignore-paused", id, "echo", "hi"])
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&out).unwrap())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "{}: exec --ignore-paused returned while paused",
            rt.bin
        );
        // resume must not wait for the exec (it once deadlocked on the state dir's lock).
        let mut resume = rt
            .cmd(&["resume", id])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let resumed = wait_timeout(&mut resume, 20).expect("resume hung behind the exec");
        assert!(resumed.success(), "{} resume", rt.bin);
        let status = wait_timeout(&mut child.0, 20).expect("exec hung after resume");
        assert_eq!(status.code(), Some(0), "{}", rt.bin);
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "hi\n", "{}", rt.bin);
    }
}

/// The container's directory for `controller` in a v1 hierarchy (None on pure v2).
fn v1_dir(controller: &str, cg: &str) -> Option<PathBuf> {
    let d = Path::new("/sys/fs/cgroup").join(controller).join(cg);
    d.is_dir().then_some(d)
}

#[test]
fn exec_cgroup_joins_sub_cgroups_like_runc() {
    if not_root() {
        return;
    }
    let env = TestEnv::new();
    let Some(mut both) = Both::new(&env) else {
        return;
    };
    let [(ours, cg_ours), (theirs, cg_theirs)] = both.sleepers("sub");
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    for (rt, id, cg) in [
        (&both.ours, &ours, &cg_ours),
        (&both.runc, &theirs, &cg_theirs),
    ] {
        let cgroup_of = |args: &[&str]| {
            let mut a = vec!["exec"];
            a.extend(args);
            a.extend([id.as_str(), "cat", "/proc/self/cgroup"]);
            let o = rt.out(&a);
            (code(&o), stdout(&o), stderr(&o))
        };
        let line = |text: &str, key: &str| {
            text.lines()
                .find(|l| l.split(':').nth(1) == Some(key))
                .map(|l| l.rsplit(':').next().unwrap_or("").to_string())
                .unwrap_or_default()
        };
        if v2 {
            std::fs::create_dir(Path::new("/sys/fs/cgroup").join(cg).join("sub")).unwrap();
            let (c, out, err) = cgroup_of(&["--cgroup", "sub"]);
            assert_eq!(c, 0, "{}: {err}", rt.bin);
            assert_eq!(line(&out, ""), "/sub", "{}", rt.bin);
            continue;
        }
        let (Some(pids), Some(mem)) = (v1_dir("pids", cg), v1_dir("memory", cg)) else {
            eprintln!("no v1 pids/memory hierarchies; skipping");
            return;
        };
        std::fs::create_dir(pids.join("sub")).unwrap();
        std::fs::create_dir(mem.join("sub")).unwrap();
        // The container has a cgroup namespace rooted at its cgroup: paths read from inside
        // are relative to it.
        let (c, out, err) = cgroup_of(&["--cgroup", "pids:sub"]);
        assert_eq!(c, 0, "{}: {err}", rt.bin);
        assert_eq!(line(&out, "pids"), "/sub", "{}: {out}", rt.bin);
        assert_eq!(line(&out, "memory"), "/", "{}: {out}", rt.bin);
        let (c, out, err) = cgroup_of(&["--cgroup", "pids,memory:/sub"]);
        assert_eq!(c, 0, "{}: {err}", rt.bin);
        assert_eq!(line(&out, "pids"), "/sub", "{}", rt.bin);
        assert_eq!(line(&out, "memory"), "/sub", "{}", rt.bin);
        let (c, out, err) = cgroup_of(&["--cgroup", "pids:sub", "--cgroup", "memory:sub"]);
        assert_eq!(c, 0, "{}: {err}", rt.bin);
        assert_eq!(line(&out, "memory"), "/sub", "{}", rt.bin);
        // Refused by both: a path missing in some hierarchy (nothing is created), an unknown
        // controller, a path that leaves the container's cgroup.
        for bad in [
            "sub",
            "no-such-controller:sub",
            "pids:../escape",
            "pids:missing",
        ] {
            let (c, _, err) = cgroup_of(&["--cgroup", bad]);
            assert_eq!(c, 255, "{} --cgroup {bad}: {err}", rt.bin);
        }
        assert!(!Path::new("/sys/fs/cgroup/pids/escape").exists());
        for d in [pids.join("sub"), mem.join("sub")] {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// A "pod" cgroup with a CPU limit of half a CPU, removed on drop in every hierarchy.
struct Pod(String);

impl Drop for Pod {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.0);
    }
}

fn read_trim(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn update_cpu_inside_a_limited_pod_cgroup_like_runc() {
    if not_root() {
        return;
    }
    let env = TestEnv::new();
    let Some(mut both) = Both::new(&env) else {
        return;
    };
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let pod = Pod(unique("pod"));
    let cpu_root = if v2 {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        PathBuf::from("/sys/fs/cgroup/cpu")
    };
    let pod_dir = cpu_root.join(&pod.0);
    std::fs::create_dir(&pod_dir).unwrap();
    if v2 {
        let _ = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+cpu");
        std::fs::write(pod_dir.join("cpu.max"), "50000 100000").unwrap();
        let _ = std::fs::write(pod_dir.join("cgroup.subtree_control"), "+cpu");
    } else {
        std::fs::write(pod_dir.join("cpu.cfs_period_us"), "100000").unwrap();
        std::fs::write(pod_dir.join("cpu.cfs_quota_us"), "50000").unwrap();
    }
    let bundle = env.bundle.to_str().unwrap().to_string();
    let mut started = Vec::new();
    for ours in [true, false] {
        let id = unique("upd");
        let cg = format!("{}/{}", pod.0, unique("ct"));
        let mut cfg = busybox_config(&["sleep", "1000"], &cg);
        cfg["linux"]["resources"]["cpu"] = serde_json::json!({"quota": 50000, "period": 100000});
        env.write_config(&cfg);
        both.ids.push((ours, id.clone()));
        let rt = if ours { &both.ours } else { &both.runc };
        let o = rt.out(&["run", "-d", "--bundle", &bundle, &id]);
        assert!(o.status.success(), "{} run: {}", rt.bin, stderr(&o));
        started.push((ours, id, cpu_root.join(&cg)));
    }
    // (quota, period) as the kernel has them.
    let cpu = |dir: &Path| -> (String, String) {
        if v2 {
            let s = read_trim(&dir.join("cpu.max"));
            let mut f = s.split_whitespace();
            let q = f.next().unwrap_or("").replace("max", "-1");
            (q, f.next().unwrap_or("").to_string())
        } else {
            (
                read_trim(&dir.join("cpu.cfs_quota_us")),
                read_trim(&dir.join("cpu.cfs_period_us")),
            )
        }
    };
    for (ours, id, dir) in &started {
        let rt = if *ours { &both.ours } else { &both.runc };
        assert_eq!(cpu(dir), ("50000".into(), "100000".into()), "{}", rt.bin);
        // A shorter period with a proportional quota: the same half CPU, but the period
        // written first next to the old quota would ask for a whole one, which the pod
        // refuses (EINVAL on v1) — the order of the writes must avoid that.
        let steps: [(&[&str], (&str, &str)); 4] = [
            (
                &["--cpu-period", "50000", "--cpu-quota", "25000"],
                ("25000", "50000"),
            ),
            (
                &["--cpu-period", "200000", "--cpu-quota", "100000"],
                ("100000", "200000"),
            ),
            // Remove the limit (the flag parser used to take -1 for a flag).
            (&["--cpu-quota", "-1"], ("-1", "200000")),
            (&["--cpu-quota", "80000"], ("80000", "200000")),
        ];
        for (flags, want) in steps {
            let mut a = vec!["update"];
            a.extend(flags);
            a.push(id);
            let o = rt.out(&a);
            assert_eq!(code(&o), 0, "{} {flags:?}: {}", rt.bin, stderr(&o));
            assert_eq!(
                cpu(dir),
                (want.0.into(), want.1.into()),
                "{} {flags:?}",
                rt.bin
            );
        }
        // The other negative values of update, and runc's name for the shares flag.
        for flags in [
            &["--memory-swap", "-1"][..],
            &["--pids-limit", "-1"],
            &["--cpu-share", "512"],
        ] {
            let mut a = vec!["update"];
            a.extend(flags);
            a.push(id);
            let o = rt.out(&a);
            assert_eq!(code(&o), 0, "{} {flags:?}: {}", rt.bin, stderr(&o));
        }
    }
    drop(both);
    // Each runtime's delete removed its container's cgroup; the pod's goes with the guard.
    for (_, _, dir) in &started {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

/// runc 1.1 warns when the container's cgroup already holds processes ("container's cgroup
/// is not empty"). Deleting the container then must not kill those processes (they are
/// not the container's when it has a pid namespace of its own) — as runc.
#[test]
fn shared_cgroup_is_warned_about_and_its_other_processes_survive() {
    if not_root() {
        return;
    }
    let env = TestEnv::new();
    let Some(mut both) = Both::new(&env) else {
        return;
    };
    let bundle = env.bundle.to_str().unwrap().to_string();
    for ours in [true, false] {
        let cg = unique("shared");
        both.cgroups.push(cg.clone());
        // A stranger in the cgroup, in every hierarchy (cpuset needs its cpus/mems set).
        let mut stranger = KillOnDrop(Command::new("sleep").arg("1000").spawn().unwrap());
        let pid = stranger.0.id().to_string();
        let root = Path::new("/sys/fs/cgroup");
        for e in std::fs::read_dir(root).unwrap().flatten() {
            let base = e.path();
            if !base.join("cgroup.procs").exists() {
                continue;
            }
            let d = base.join(&cg);
            std::fs::create_dir_all(&d).unwrap();
            for f in ["cpuset.cpus", "cpuset.mems"] {
                if d.join(f).exists() {
                    let _ = std::fs::write(d.join(f), read_trim(&base.join(f)));
                }
            }
            std::fs::write(d.join("cgroup.procs"), &pid).unwrap();
        }
        let id = unique("sh");
        both.ids.push((ours, id.clone()));
        let rt = if ours { &both.ours } else { &both.runc };
        env.write_config(&busybox_config(&["sleep", "1000"], &cg));
        let o = rt.out(&["run", "-d", "--bundle", &bundle, &id]);
        assert!(o.status.success(), "{}: {}", rt.bin, stderr(&o));
        assert!(
            stderr(&o).contains("container's cgroup is not empty: 1 process(es) found"),
            "{}: {}",
            rt.bin,
            stderr(&o)
        );
        // The container's own processes die with its init; the stranger lives.
        let o = rt.out(&["delete", "--force", &id]);
        assert!(o.status.success(), "{} delete: {}", rt.bin, stderr(&o));
        assert!(
            stranger.0.try_wait().unwrap().is_none(),
            "{}: delete --force killed a process that was not the container's",
            rt.bin
        );
        let _ = stranger.0.kill();
        let _ = stranger.0.wait();
        remove_cgroup_tree(&cg);
    }
}
