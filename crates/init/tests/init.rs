//! vessel-init against the real kernel, as root: PID 1 of a fresh pid namespace (via
//! util-linux `unshare --pid --fork`), and as a subreaper outside one. Every scenario that
//! has a tini equivalent also runs Debian's tini (`/usr/bin/tini`, when installed) as a
//! side-by-side control with the same expectations.
//!
//! What happens inside is checked from the outside: process states and parents from the
//! host's /proc, marker files the child's signal traps write, and exit statuses.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

const VESSEL_INIT: &str = env!("CARGO_BIN_EXE_vessel-init");
const TINI: &str = "/usr/bin/tini";
const TIMEOUT: Duration = Duration::from_secs(20);

/// The inits under test: vessel-init, and tini as the control when it is installed.
fn inits() -> Vec<(&'static str, PathBuf)> {
    let mut v = vec![("vessel-init", PathBuf::from(VESSEL_INIT))];
    if Path::new(TINI).exists() {
        v.push(("tini", PathBuf::from(TINI)));
    } else {
        eprintln!("note: {TINI} not installed (apt-get install tini): no side-by-side control");
    }
    v
}

fn require_root() -> bool {
    if !vessel_testkit::is_root() {
        eprintln!("skipped: needs root (pid namespaces)");
        return false;
    }
    true
}

fn busybox() -> String {
    vessel_testkit::busybox().to_string_lossy().into_owned()
}

/// `busybox sh -c SCRIPT sh DIR`: the script finds its work dir in `$1`.
fn sh_args(script: &str, dir: &Path) -> Vec<String> {
    vec![
        busybox(),
        "sh".into(),
        "-c".into(),
        script.into(),
        "sh".into(),
        dir.to_string_lossy().into_owned(),
    ]
}

/// One /proc/<pid>/stat: (state, ppid). None once the process is gone (reaped).
fn stat(pid: i32) -> Option<(char, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm is in parentheses and may contain anything: parse after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Every process below `root` (not `root` itself), with its state, from the host's /proc.
fn descendants(root: i32) -> Vec<(i32, char)> {
    let mut parent_of = HashMap::new();
    let mut state_of = HashMap::new();
    for e in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Some((state, ppid)) = stat(pid) {
            parent_of.insert(pid, ppid);
            state_of.insert(pid, state);
        }
    }
    let mut out = Vec::new();
    for (&pid, &state) in &state_of {
        let mut p = pid;
        // Walk up; bounded in case of a race with pid reuse creating a loop.
        for _ in 0..64 {
            match parent_of.get(&p) {
                Some(&pp) if pp == root => {
                    out.push((pid, state));
                    break;
                }
                Some(&pp) if pp > 1 => p = pp,
                _ => break,
            }
        }
    }
    out.sort();
    out
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_file(path: &Path) {
    wait_for(&format!("{}", path.display()), || path.exists());
}

/// A started init (directly, or inside `unshare`), killed with all its descendants when
/// dropped so a failing test leaves no process behind.
struct Running {
    /// The process we spawned: the init itself, or `unshare`.
    proc: Child,
    /// The init's host pid.
    init: i32,
    stderr: PathBuf,
}

impl Running {
    /// Run `init ARGS...` as PID 1 of a new pid namespace (with its own /proc).
    fn in_pidns(init: &Path, args: &[String], dir: &Path) -> Running {
        let mut cmd = Command::new("unshare");
        // --kill-child: if unshare dies, the namespace's init (and so the namespace) dies.
        cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child"])
            .arg(init)
            .args(args);
        Running::start(cmd, dir, true)
    }

    /// Run `init ARGS...` as a plain child of the test.
    fn direct(init: &Path, args: &[String], dir: &Path) -> Running {
        let mut cmd = Command::new(init);
        cmd.args(args);
        Running::start(cmd, dir, false)
    }

    fn start(mut cmd: Command, dir: &Path, via_unshare: bool) -> Running {
        let stderr = dir.join("init.stderr");
        let file = std::fs::File::create(&stderr).expect("create stderr file");
        let proc = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let outer = proc.id() as i32;
        let mut running = Running {
            proc,
            init: outer,
            stderr,
        };
        if via_unshare {
            let mut found = None;
            // A child that exits at once may be gone before we look: then there is no pid
            // to signal, and only the exit status matters (std keeps it for `wait`).
            wait_for("unshare's child", || {
                found = descendants(outer)
                    .into_iter()
                    .map(|(p, _)| p)
                    .find(|&p| stat(p).is_some_and(|(_, pp)| pp == outer));
                found.is_some() || matches!(running.proc.try_wait(), Ok(Some(_)))
            });
            running.init = found.unwrap_or(outer);
        }
        running
    }

    fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.init), sig).expect("kill init");
    }

    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.proc.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "init did not exit in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn code(&mut self) -> i32 {
        let status = self.wait();
        status
            .code()
            .unwrap_or_else(|| panic!("init killed by a signal: {status:?}"))
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.proc.try_wait() {
            return;
        }
        let outer = self.proc.id() as i32;
        // Children first, so none is reparented away before it is killed.
        for (pid, _) in descendants(outer).into_iter().rev() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}

/// Run `init ARGS` to completion, as a plain child; returns (exit code, stderr).
fn run_direct(init: &Path, args: &[String], dir: &Path) -> (i32, String) {
    let mut r = Running::direct(init, args, dir);
    let code = r.code();
    (code, r.stderr())
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn with_prog(flags: &[&str], prog: Vec<String>) -> Vec<String> {
    let mut v = strings(flags);
    v.push("--".into());
    v.extend(prog);
    v
}

// (1) Zombie reaping as PID 1.

/// Five double-forked orphans that exit after 0.2 s, then the main process becomes a
/// `sleep` that never waits: only PID 1 can reap them.
const ORPHANS: &str = r#"
D=$1
for i in 1 2 3 4 5; do ( sleep 0.2 & ) ; done
touch $D/ready
exec sleep 30
"#;

#[test]
fn reaps_orphaned_zombies_as_pid1() {
    if !require_root() {
        return;
    }
    for (name, init) in inits() {
        let dir = TempDir::new().expect("tempdir");
        let mut r = Running::in_pidns(
            &init,
            &with_prog(&[], sh_args(ORPHANS, dir.path())),
            dir.path(),
        );
        wait_file(&dir.path().join("ready"));
        // The orphans run for 0.2 s; once they are gone only the main `sleep` is left.
        wait_for(&format!("{name}: orphans reaped"), || {
            descendants(r.init).len() == 1
        });
        // And stays so: nothing lingers as a zombie.
        std::thread::sleep(Duration::from_millis(300));
        let left = descendants(r.init);
        assert_eq!(left.len(), 1, "{name}: {left:?}");
        assert!(
            left.iter().all(|&(_, s)| s != 'Z'),
            "{name}: zombies {left:?}"
        );
        // SIGTERM reaches the main sleep, which dies of it: 128 + 15.
        r.signal(Signal::SIGTERM);
        assert_eq!(r.code(), 143, "{name}: {}", r.stderr());
    }
}

/// The control that shows the check above can see zombies: without an init, the same
/// workload as PID 1 leaves all five orphans as zombies.
#[test]
fn without_an_init_the_orphans_stay_zombies() {
    if !require_root() {
        return;
    }
    let dir = TempDir::new().expect("tempdir");
    let args = sh_args(ORPHANS, dir.path());
    let r = Running::in_pidns(Path::new(&args[0]), &args[1..], dir.path());
    wait_file(&dir.path().join("ready"));
    wait_for("five zombies", || {
        descendants(r.init)
            .iter()
            .filter(|&&(_, s)| s == 'Z')
            .count()
            == 5
    });
    // Dropping `r` SIGKILLs the namespace's init, which takes the zombies with it.
}

// (2) Signal forwarding.

const TRAPS: &str = r#"
D=$1
trap 'echo TERM > $D/got; exit 42' TERM
trap 'echo INT > $D/got; exit 43' INT
trap 'echo USR1 > $D/got; exit 44' USR1
trap 'echo HUP > $D/got; exit 45' HUP
touch $D/ready
while :; do sleep 0.05; done
"#;

#[test]
fn forwards_signals_to_the_child() {
    if !require_root() {
        return;
    }
    let cases = [
        (Signal::SIGTERM, "TERM", 42),
        (Signal::SIGINT, "INT", 43),
        (Signal::SIGUSR1, "USR1", 44),
        (Signal::SIGHUP, "HUP", 45),
    ];
    for (name, init) in inits() {
        for (sig, marker, code) in cases {
            let dir = TempDir::new().expect("tempdir");
            let mut r = Running::in_pidns(
                &init,
                &with_prog(&[], sh_args(TRAPS, dir.path())),
                dir.path(),
            );
            wait_file(&dir.path().join("ready"));
            r.signal(sig);
            assert_eq!(r.code(), code, "{name} {sig}: {}", r.stderr());
            let got = std::fs::read_to_string(dir.path().join("got")).unwrap_or_default();
            assert_eq!(got.trim(), marker, "{name} {sig}");
        }
    }
}

// (3) Exit code propagation.

#[test]
fn propagates_exit_codes_and_signal_deaths() {
    if !require_root() {
        return;
    }
    let cases = [
        ("exit 0", 0),
        ("exit 7", 7),
        ("exit 255", 255),
        ("kill -KILL $$", 137),
        ("kill -TERM $$", 143),
        ("kill -SEGV $$", 139),
    ];
    for (name, init) in inits() {
        for (script, code) in cases {
            let dir = TempDir::new().expect("tempdir");
            let mut r = Running::in_pidns(
                &init,
                &with_prog(&[], sh_args(script, dir.path())),
                dir.path(),
            );
            assert_eq!(r.code(), code, "{name} `{script}`: {}", r.stderr());
        }
    }
}

// (4) -g: signals to the whole process group.

/// A background grandchild in the main process's group traps SIGTERM and leaves a marker;
/// on SIGTERM the main process gives it a second to do so, then cleans it up and exits 3.
const GROUP: &str = r#"
D=$1
sh -c 'trap "touch $0/grand; exit 0" TERM; touch $0/gready; while :; do sleep 0.05; done' "$D" &
g=$!
trap 'i=0; while [ ! -e $D/grand ] && [ $i -lt 20 ]; do sleep 0.05; i=$((i+1)); done; kill -KILL $g; exit 3' TERM
while [ ! -e $D/gready ]; do sleep 0.05; done
touch $D/ready
while :; do sleep 0.05; done
"#;

#[test]
fn dash_g_forwards_to_the_process_group() {
    if !require_root() {
        return;
    }
    for (name, init) in inits() {
        for (flags, grandchild_gets_it) in [(&["-g"][..], true), (&[][..], false)] {
            let dir = TempDir::new().expect("tempdir");
            let mut r = Running::in_pidns(
                &init,
                &with_prog(flags, sh_args(GROUP, dir.path())),
                dir.path(),
            );
            wait_file(&dir.path().join("ready"));
            r.signal(Signal::SIGTERM);
            assert_eq!(r.code(), 3, "{name} {flags:?}: {}", r.stderr());
            assert_eq!(
                dir.path().join("grand").exists(),
                grandchild_gets_it,
                "{name} {flags:?}: grandchild got SIGTERM"
            );
        }
    }
}

/// The child runs in its own process group (and, outside a terminal, keeps the session):
/// that is what makes `-g` and terminal job control target it rather than the init.
#[test]
fn child_gets_its_own_process_group() {
    if !require_root() {
        return;
    }
    let dir = TempDir::new().expect("tempdir");
    let script = "cut -d' ' -f5 /proc/$$/stat > $1/pgid; echo $$ > $1/pid";
    let (code, err) = run_direct(
        Path::new(VESSEL_INIT),
        &with_prog(&["-s"], sh_args(script, dir.path())),
        dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
    assert_eq!(read("pgid").trim(), read("pid").trim());
}

/// With a controlling terminal (util-linux `script` provides one), the child's group is
/// made the terminal's foreground group, so Ctrl-C and Ctrl-Z reach it (tcsetpgrp).
#[test]
fn child_becomes_the_terminal_foreground_group() {
    if !Path::new("/usr/bin/script").exists() {
        eprintln!("skipped: util-linux script not installed");
        return;
    }
    for (name, init) in inits() {
        let dir = TempDir::new().expect("tempdir");
        let d = dir.path().display().to_string();
        // stat fields 5 and 8: pgrp, tpgid (the terminal's foreground group).
        std::fs::write(
            dir.path().join("job.sh"),
            "cut -d' ' -f5,8 /proc/$$/stat > $1/out; echo $$ >> $1/out\n",
        )
        .expect("write job");
        let cmd = format!("{} -s -- {} sh {d}/job.sh {d}", init.display(), busybox());
        let status = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run script");
        assert!(status.success(), "{name}: {status:?}");
        let out = std::fs::read_to_string(dir.path().join("out")).unwrap_or_default();
        let words: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(words.len(), 3, "{name}: {out:?}");
        assert!(
            words[0] == words[2] && words[1] == words[2],
            "{name}: pgrp, tpgid, pid = {words:?}"
        );
    }
}

// (5) -e remapping.

#[test]
fn dash_e_remaps_exit_codes_to_zero() {
    let cases: [(&[&str], &str, i32); 5] = [
        (&["-e", "143"], "kill -TERM $$", 0),
        (&["-e", "3", "-e", "5"], "exit 5", 0),
        (&["-e", "3", "-e", "5"], "exit 3", 0),
        (&["-e", "3", "-e", "5"], "exit 6", 6),
        (&["-e", "137"], "kill -KILL $$", 0),
    ];
    for (name, init) in inits() {
        for (flags, script, code) in cases {
            let dir = TempDir::new().expect("tempdir");
            let mut flags = flags.to_vec();
            flags.push("-s");
            let (got, err) = run_direct(
                &init,
                &with_prog(&flags, sh_args(script, dir.path())),
                dir.path(),
            );
            assert_eq!(got, code, "{name} {flags:?} `{script}`: {err}");
        }
    }
}

/// Bad command lines: tini exits 1 for its own errors, and so does vessel-init.
#[test]
fn usage_errors_exit_1() {
    let cases: [&[&str]; 7] = [
        &["-e", "256", "--", "true"],
        &["-e", "abc", "--", "true"],
        &["-p", "SIGNOPE", "--", "true"],
        &["-z", "--", "true"],
        &["-e"],
        &["--"],
        &[],
    ];
    for (name, init) in inits() {
        for args in cases {
            let dir = TempDir::new().expect("tempdir");
            let (code, err) = run_direct(&init, &strings(args), dir.path());
            assert_eq!(code, 1, "{name} {args:?}: {err}");
        }
        let dir = TempDir::new().expect("tempdir");
        let (code, _) = run_direct(&init, &strings(&["--version"]), dir.path());
        assert_eq!(code, 0, "{name} --version");
    }
    let dir = TempDir::new().expect("tempdir");
    let (_, err) = run_direct(
        Path::new(VESSEL_INIT),
        &strings(&["-z", "true"]),
        dir.path(),
    );
    assert!(err.contains("vessel-init: invalid option -- 'z'"), "{err}");
    assert!(err.contains("Usage:"), "{err}");
}

// (6) exec failures.

#[test]
fn exec_failures_exit_127_or_126() {
    let dir = TempDir::new().expect("tempdir");
    let not_exec = dir.path().join("not-executable");
    std::fs::write(&not_exec, "#!/bin/sh\n").expect("write");
    let not_exec = not_exec.to_string_lossy().into_owned();
    let a_dir = dir.path().to_string_lossy().into_owned();
    let cases = [
        ("/nonexistent/prog", 127, "No such file or directory"),
        (
            "vesseltest-no-such-command",
            127,
            "No such file or directory",
        ),
        (not_exec.as_str(), 126, "Permission denied"),
        (a_dir.as_str(), 126, "Permission denied"),
    ];
    for (name, init) in inits() {
        for (prog, code, text) in cases {
            let (got, err) = run_direct(&init, &strings(&["-s", "--", prog]), dir.path());
            assert_eq!(got, code, "{name} {prog}: {err}");
            if name == "vessel-init" {
                let want = format!("vessel-init: exec {prog} failed: {text}");
                assert!(err.contains(&want), "want {want:?} in {err:?}");
            }
        }
    }
}

// (7) Not PID 1: -s makes it the subreaper of its descendants.

/// One orphan that lives a second (its pid written down), then a main process that never
/// waits.
const ONE_ORPHAN: &str = r#"
D=$1
( sleep 1 & echo $! > $D/orphan.tmp; mv $D/orphan.tmp $D/orphan )
touch $D/ready
exec sleep 30
"#;

#[test]
fn dash_s_reaps_orphans_when_not_pid1() {
    if !require_root() {
        return;
    }
    for (name, init) in inits() {
        let dir = TempDir::new().expect("tempdir");
        let mut r = Running::direct(
            &init,
            &with_prog(&["-s"], sh_args(ONE_ORPHAN, dir.path())),
            dir.path(),
        );
        wait_file(&dir.path().join("ready"));
        let orphan: i32 = std::fs::read_to_string(dir.path().join("orphan"))
            .expect("orphan pid")
            .trim()
            .parse()
            .expect("orphan pid number");
        let (_, ppid) = stat(orphan).expect("orphan still running");
        assert_eq!(ppid, r.init, "{name}: orphan re-parented to the subreaper");
        // It exits after a second and must then be reaped (gone), not left a zombie.
        wait_for(&format!("{name}: orphan {orphan} reaped"), || {
            match stat(orphan) {
                None => true,
                // pid reused by an unrelated process: ours is gone.
                Some((_, pp)) => pp != r.init,
            }
        });
        r.signal(Signal::SIGTERM);
        assert_eq!(r.code(), 143, "{name}: {}", r.stderr());
        assert!(
            !r.stderr().contains("subreaper"),
            "{name}: no warning with -s"
        );
    }
}

#[test]
fn without_dash_s_orphans_escape_and_it_warns() {
    if !require_root() {
        return;
    }
    let dir = TempDir::new().expect("tempdir");
    let mut r = Running::direct(
        Path::new(VESSEL_INIT),
        &with_prog(&[], sh_args(ONE_ORPHAN, dir.path())),
        dir.path(),
    );
    wait_file(&dir.path().join("ready"));
    let orphan: i32 = std::fs::read_to_string(dir.path().join("orphan"))
        .expect("orphan pid")
        .trim()
        .parse()
        .expect("orphan pid number");
    if let Some((_, ppid)) = stat(orphan) {
        // Escaped to the host's reaper, so Running's cleanup would not find it: end it here.
        let _ = kill(Pid::from_raw(orphan), Signal::SIGKILL);
        assert_ne!(ppid, r.init, "orphan must not reach a non-subreaper init");
    }
    r.signal(Signal::SIGTERM);
    assert_eq!(r.code(), 143);
    assert!(
        r.stderr().contains("not registered as a child subreaper"),
        "{}",
        r.stderr()
    );
}

// -p: the parent-death signal is set on the init itself, and (being catchable) forwarded.

#[test]
fn dash_p_signals_the_init_when_its_parent_dies() {
    if !require_root() {
        return;
    }
    for (name, init) in inits() {
        let dir = TempDir::new().expect("tempdir");
        let d = dir.path().to_string_lossy().into_owned();
        // The parent shell starts the init in the background, waits until its child runs
        // (so -p is in effect), writes the init's pid down, and exits.
        let script = r#"
"$0" -p SIGTERM -s -- sh -c "touch $1/ready; exec sleep 30" &
echo $! > $1/init.pid
while [ ! -e $1/ready ]; do sleep 0.05; done
"#;
        let status = Command::new(busybox())
            .args(["sh", "-c", script])
            .arg(&init)
            .arg(&d)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run parent shell");
        assert!(status.success());
        let pid: i32 = std::fs::read_to_string(dir.path().join("init.pid"))
            .expect("init pid")
            .trim()
            .parse()
            .expect("init pid number");
        // SIGTERM → forwarded to `sleep 30`, which dies → the init exits. Gone, or a
        // zombie of whichever reaper adopted it.
        wait_for(&format!("{name}: init exits after its parent died"), || {
            stat(pid).is_none_or(|(s, _)| s == 'Z')
        });
    }
}
