//! Programs loaded for real in a forked child (via pre_exec, right before execve) and the
//! kernel's behaviour observed from outside.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Command;

use oci_spec::runtime::LinuxSeccomp;
use vessel_seccomp::{compile, Cache, Program};

fn profile(v: serde_json::Value) -> LinuxSeccomp {
    serde_json::from_value(v).expect("valid profile")
}

/// Run `busybox ARGS` with `program` loaded just before execve.
fn run_under(program: &Program, args: &[&str]) -> std::process::Output {
    let p = program.clone();
    let mut cmd = Command::new("/bin/busybox");
    cmd.args(args);
    // SAFETY: the closure only calls prctl and seccomp (no allocation).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            p.load()
                .map(|_| ())
                .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
        });
    }
    cmd.output().expect("spawn busybox")
}

#[test]
fn errno_action_returns_the_configured_errno() {
    let dir = tempfile::tempdir().unwrap();
    let p = compile(&profile(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]
    })))
    .unwrap();
    let o = run_under(&p, &["mkdir", dir.path().join("x").to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Permission denied"),
        "{:?}",
        o
    );
    assert!(!dir.path().join("x").exists());
    // Default errno is EPERM.
    let p = compile(&profile(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]
    })))
    .unwrap();
    let o = run_under(&p, &["mkdir", dir.path().join("y").to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Operation not permitted"),
        "{:?}",
        o
    );
}

#[test]
fn argument_conditions_select_calls() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    // Deny chmod to exactly 0700 (arg 2 of fchmodat, arg 1 of chmod), allow any other mode.
    let p = compile(&profile(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["fchmodat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "args": [{"index": 2, "value": 448, "op": "SCMP_CMP_EQ"}]},
            {"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "args": [{"index": 1, "value": 448, "op": "SCMP_CMP_EQ"}]}
        ]
    })))
    .unwrap();
    let o = run_under(&p, &["chmod", "700", file.to_str().unwrap()]);
    assert!(!o.status.success(), "{o:?}");
    let o = run_under(&p, &["chmod", "755", file.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o755
    );
}

#[test]
fn kill_process_kills_with_sigsys() {
    let p = compile(&profile(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_KILL_PROCESS"}]
    })))
    .unwrap();
    let o = run_under(&p, &["uname"]);
    assert_eq!(o.status.signal(), Some(libc::SIGSYS), "{o:?}");
    // Log and allow let it through.
    let p = compile(&profile(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_LOG"}]
    })))
    .unwrap();
    assert!(run_under(&p, &["uname"]).status.success());
}

#[test]
fn unknown_syscall_names_are_skipped_but_bad_fields_are_errors() {
    compile(&profile(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["no_such_syscall_ever", "mkdir"], "action": "SCMP_ACT_ERRNO"}]
    })))
    .unwrap();
    let e = compile(&profile(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 7, "value": 1, "op": "SCMP_CMP_EQ"}]}]
    })))
    .unwrap_err();
    assert!(e.to_string().contains("syscalls[0].args[0].index"), "{e}");
    let e = compile(&profile(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]
    })))
    .unwrap_err();
    assert!(e.to_string().contains("listenerPath"), "{e}");
    // Unknown action names never get this far: the spec type refuses them when parsing.
    let bad: Result<LinuxSeccomp, _> =
        serde_json::from_value(serde_json::json!({"defaultAction": "SCMP_ACT_BOGUS"}));
    assert!(bad.is_err());
}

#[test]
fn cache_hits_are_identical_and_corruption_is_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path().join("cache"));
    let spec = profile(serde_json::json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"}]
    }));
    let first = cache.get_or_compile(&spec).unwrap();
    let path = cache.path_for(&spec);
    assert!(path.exists());
    let second = cache.get_or_compile(&spec).unwrap();
    assert_eq!(first, second);
    assert_eq!(first, compile(&spec).unwrap());
    std::fs::write(&path, b"VSCMPv1\0corrupted").unwrap();
    let third = cache.get_or_compile(&spec).unwrap();
    assert_eq!(first, third);
    assert_ne!(std::fs::read(&path).unwrap(), b"VSCMPv1\0corrupted");
}

// --- SCMP_ACT_NOTIFY: a real listener receives the notification -----------------------------

#[repr(C)]
#[derive(Default)]
struct SeccompData {
    nr: i32,
    arch: u32,
    ip: u64,
    args: [u64; 6],
}
#[repr(C)]
#[derive(Default)]
struct Notif {
    id: u64,
    pid: u32,
    flags: u32,
    data: SeccompData,
}
#[repr(C)]
#[derive(Default)]
struct NotifResp {
    id: u64,
    val: i64,
    error: i32,
    flags: u32,
}
const NOTIF_RECV: libc::c_ulong = 0xc050_2100;
const NOTIF_SEND: libc::c_ulong = 0xc018_2101;

fn recv_fd(sock: &std::os::unix::net::UnixStream) -> (OwnedFd, Vec<u8>) {
    let mut buf = vec![0u8; 4096];
    let mut cmsg = vec![0u8; 64];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr().cast();
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = cmsg.len();
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
    assert!(n >= 0, "recvmsg: {}", std::io::Error::last_os_error());
    let c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    assert!(!c.is_null(), "no SCM_RIGHTS");
    let fd = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>()) };
    (
        unsafe { OwnedFd::from_raw_fd(fd) },
        buf[..n as usize].to_vec(),
    )
}

#[test]
fn notify_listener_receives_the_call_and_send_listener_delivers_it() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("agent.sock");
    let agent = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    let p = compile(&profile(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "listenerPath": sock_path,
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]
    })))
    .unwrap();
    assert!(p.needs_listener());
    let target = dir.path().join("notified");
    let sock_for_child = sock_path.clone();
    let prog = p.clone();
    let mut cmd = Command::new("/bin/busybox");
    cmd.args(["mkdir", target.to_str().unwrap()]);
    // SAFETY: prctl, seccomp, and a unix socket send in the child before execve (test only).
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            let fd = prog
                .load()
                .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?
                .expect("listener");
            vessel_seccomp::send_listener(
                &sock_for_child,
                std::os::fd::AsFd::as_fd(&fd),
                br#"{"ociVersion":"1.2.0","fds":["seccompFd"]}"#,
            )
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EIO))?;
            Ok(())
        });
    }
    let child = cmd.stderr(std::process::Stdio::piped()).spawn().unwrap();
    let (conn, _) = agent.accept().unwrap();
    let (listener, body) = recv_fd(&conn);
    let state: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(state["fds"][0], "seccompFd");
    let mut n = Notif::default();
    let r = unsafe { libc::ioctl(listener.as_raw_fd(), NOTIF_RECV, &mut n) };
    assert_eq!(r, 0, "NOTIF_RECV: {}", std::io::Error::last_os_error());
    assert!(
        n.data.nr == libc::SYS_mkdirat as i32 || n.data.nr == libc::SYS_mkdir as i32,
        "nr {}",
        n.data.nr
    );
    assert_eq!(n.pid, child.id());
    let resp = NotifResp {
        id: n.id,
        val: 0,
        error: -libc::EROFS,
        flags: 0,
    };
    let r = unsafe { libc::ioctl(listener.as_raw_fd(), NOTIF_SEND, &resp) };
    assert_eq!(r, 0, "NOTIF_SEND: {}", std::io::Error::last_os_error());
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
        "{out:?}"
    );
    assert!(!target.exists());
}

// --- Docker's default profile ---------------------------------------------------------------

/// moby's `profiles/seccomp/default.json` resolved the way dockerd hands it to runc on amd64
/// with Docker's default capabilities (rules gated on other arches or on caps such as
/// CAP_SYS_ADMIN dropped; the clone namespace-flag mask and clone3 → ENOSYS kept).
fn docker_default() -> LinuxSeccomp {
    let raw = include_str!("data/docker-default.json");
    serde_json::from_str(raw).expect("docker default profile parses")
}

#[test]
fn docker_default_profile_compiles_and_busybox_runs_under_it() {
    let spec = docker_default();
    let p = compile(&spec).unwrap();
    assert!(!p.needs_listener());
    assert!(p.instructions().len() > 100, "{}", p.instructions().len());
    let o = run_under(&p, &["true"]);
    assert!(o.status.success(), "{o:?}");
    let o = run_under(&p, &["sh", "-c", "echo hi | cat"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(o.stdout, b"hi\n");
    // Outside the allow list: the default action (EPERM) applies.
    let o = run_under(&p, &["hostname", "vessel-test"]);
    assert!(!o.status.success(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Operation not permitted"),
        "{o:?}"
    );
}

#[test]
fn log_and_allow_actions_let_calls_through() {
    let dir = tempfile::tempdir().unwrap();
    for act in ["SCMP_ACT_LOG", "SCMP_ACT_ALLOW"] {
        let p = compile(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["mkdir", "mkdirat"], "action": act},
                {"names": ["rmdir"], "action": "SCMP_ACT_ERRNO"}
            ]
        })))
        .unwrap();
        let target = dir.path().join(act);
        let o = run_under(&p, &["mkdir", target.to_str().unwrap()]);
        assert!(o.status.success(), "{act}: {o:?}");
        assert!(target.is_dir(), "{act}");
        let o = run_under(&p, &["rmdir", target.to_str().unwrap()]);
        assert!(!o.status.success(), "{act}: {o:?}");
    }
}

#[test]
fn cache_hit_reads_the_file_and_does_not_compile() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path());
    let a = profile(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]
    }));
    let b = profile(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["rmdir"], "action": "SCMP_ACT_ERRNO"}]
    }));
    let pa = cache.get_or_compile(&a).unwrap();
    // Plant A's program under B's key: a hit must return what the file says, which proves
    // it never went to libseccomp.
    std::fs::copy(cache.path_for(&a), cache.path_for(&b)).unwrap();
    let hit = cache.get_or_compile(&b).unwrap();
    assert_eq!(hit, pa);
    assert_ne!(hit, compile(&b).unwrap());
    // No temp files left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with(".tmp")), "{names:?}");
}

#[test]
fn concurrent_writers_leave_one_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let spec = docker_default();
    let want = compile(&spec).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let got = Cache::new(dir.path()).get_or_compile(&spec).unwrap();
                assert_eq!(got, want);
            });
        }
    });
    assert_eq!(Cache::new(dir.path()).get_or_compile(&spec).unwrap(), want);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

/// Fork; in the child load `program` and run `body`, which only makes syscalls, then `_exit`
/// with its result. Returns the child's wait status.
fn in_forked_child(program: &Program, body: fn() -> i32) -> i32 {
    // SAFETY: the child makes syscalls only (prctl, seccomp, the body's) and then _exits.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork");
        if pid == 0 {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                libc::_exit(100);
            }
            if program.load().is_err() {
                libc::_exit(101);
            }
            libc::_exit(body());
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        status
    }
}

fn personality_errno(persona: libc::c_ulong) -> i32 {
    // SAFETY: personality(2) with a plain integer.
    let r = unsafe { libc::syscall(libc::SYS_personality, persona) };
    if r < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    } else {
        0
    }
}

#[test]
fn personality_argument_conditions_in_a_forked_child() {
    let p = compile(&profile(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": 42,
             "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": 43,
             "args": [{"index": 0, "value": 65280, "valueTwo": 512, "op": "SCMP_CMP_MASKED_EQ"}]}
        ]
    })))
    .unwrap();
    let status = in_forked_child(&p, || {
        if personality_errno(0xffff_ffff) != 0 {
            return 1; // a query is not matched by either rule
        }
        if personality_errno(8) != 42 {
            return 2; // EQ 8
        }
        if personality_errno(0x0201) != 43 {
            return 3; // (0x0201 & 0xff00) == 0x0200
        }
        if personality_errno(0x0301) != 0 {
            return 4; // masked value differs: allowed
        }
        0
    });
    assert!(libc::WIFEXITED(status), "status {status:#x}");
    assert_eq!(libc::WEXITSTATUS(status), 0);
}

#[test]
fn syscalls_newer_than_the_profile_get_enosys() {
    // Names up to exit_group (231 on x86_64): getpid is allowed, times is below the profile's
    // horizon and so gets the default EPERM, and a number past every named one gets ENOSYS.
    let p = compile(&profile(serde_json::json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{"names": ["exit", "exit_group", "getpid", "some_future_syscall"], "action": "SCMP_ACT_ALLOW"}]
    })))
    .unwrap();
    let status = in_forked_child(&p, || {
        let errno = |nr: libc::c_long| {
            // SAFETY: raw syscalls with no pointer arguments.
            let r = unsafe { libc::syscall(nr, 0, 0, 0) };
            if r < 0 {
                std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
            } else {
                0
            }
        };
        if errno(libc::SYS_getpid) != 0 {
            return 1;
        }
        if errno(libc::SYS_times) != libc::EPERM {
            return 2;
        }
        if errno(libc::SYS_exit_group + 1) != libc::ENOSYS {
            return 3;
        }
        0
    });
    assert!(libc::WIFEXITED(status), "status {status:#x}");
    assert_eq!(libc::WEXITSTATUS(status), 0);
}
