//! process.terminal: the pty master arrives over --console-socket (SCM_RIGHTS), as conmon
//! and containerd expect, and the container sees a real terminal.

mod common;
use common::*;

use std::io::{IoSliceMut, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

fn receive_master(listener: UnixListener) -> OwnedFd {
    let (stream, _) = listener.accept().expect("accept console socket");
    let mut buf = [0u8; 256];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )
    .expect("recvmsg");
    for c in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: received via SCM_RIGHTS.
            return unsafe { OwnedFd::from_raw_fd(fds[0]) };
        }
    }
    panic!("no fd received on the console socket");
}

#[test]
fn terminal_is_handed_over_the_console_socket() {
    let env = TestEnv::new();
    let id = unique("tty");
    let cg = unique("cg");
    let mut cfg = busybox_config(&["sh", "-c", "tty; stty size; echo done"], &cg);
    cfg["process"]["terminal"] = serde_json::json!(true);
    cfg["process"]["consoleSize"] = serde_json::json!({"height": 33, "width": 101});
    env.write_config(&cfg);
    let _guard = Cleanup {
        env: &env,
        id: id.clone(),
    };
    let sock = env.tmp.path().join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let receiver = std::thread::spawn(move || receive_master(listener));
    let o = rt_out(
        &env,
        &[
            "create",
            "--bundle",
            env.bundle.to_str().unwrap(),
            "--console-socket",
            sock.to_str().unwrap(),
            &id,
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let master = receiver.join().unwrap();
    assert!(rt_out(&env, &["start", &id]).status.success());
    let mut f = std::fs::File::from(master);
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&out).contains("done") {
        match f.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("/dev/pts/0"), "{text}");
    assert!(text.contains("33 101"), "{text}");
}

#[test]
fn terminal_without_console_socket_is_refused() {
    let env = TestEnv::new();
    let id = unique("tty");
    let cg = unique("cg");
    let mut cfg = busybox_config(&["true"], &cg);
    cfg["process"]["terminal"] = serde_json::json!(true);
    env.write_config(&cfg);
    let o = rt_out(
        &env,
        &["create", "--bundle", env.bundle.to_str().unwrap(), &id],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--console-socket"), "{}", stderr(&o));
    assert_gone(&env, &id, &cg);
}

/// Run `cmd` with "hello\n" as its standard input; returns (exit code, stdout without the
/// terminal's carriage returns, stderr).
fn run_typing_hello(
    env: &TestEnv,
    cmd: &mut std::process::Command,
) -> (Option<i32>, String, String) {
    let input = env.tmp.path().join("input");
    std::fs::write(&input, "hello\n").unwrap();
    let o = vessel_testkit::run_via_files_with_input(
        cmd,
        env.tmp.path(),
        std::fs::File::open(&input).unwrap().into(),
    );
    (o.status.code(), stdout(&o).replace('\r', ""), stderr(&o))
}

/// Foreground `run` and `exec` with a terminal and no --console-socket relay the pty to
/// their own stdio, as runc does: input reaches the process through its terminal, output
/// comes back, and end of input reads as end-of-file at the terminal.
#[test]
fn foreground_run_and_exec_relay_the_terminal() {
    let env = TestEnv::new();
    let id = unique("tty");
    let cg = unique("cg");
    let mut cfg = busybox_config(
        &[
            "sh",
            "-c",
            "tty; read line; echo got:$line; read more || echo EOF",
        ],
        &cg,
    );
    cfg["process"]["terminal"] = serde_json::json!(true);
    env.write_config(&cfg);
    let mut cmd = rt(&env);
    cmd.args(["run", "--bundle", env.bundle.to_str().unwrap(), &id]);
    let (code, out, err) = run_typing_hello(&env, &mut cmd);
    assert_eq!(code, Some(0), "{out} {err}");
    assert!(out.contains("/dev/pts/0"), "{out}");
    assert!(out.contains("got:hello"), "{out}");
    assert!(out.contains("EOF"), "{out}");
    assert_gone(&env, &id, &cg);

    // exec -t into a running container.
    env.write_config(&busybox_config(&["sleep", "1000"], &cg));
    let _guard = Cleanup {
        env: &env,
        id: id.clone(),
    };
    let o = rt_out(
        &env,
        &["run", "-d", "--bundle", env.bundle.to_str().unwrap(), &id],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let mut cmd = rt(&env);
    cmd.args([
        "exec",
        "-t",
        &id,
        "sh",
        "-c",
        "tty; read l; echo exec-got:$l; exit 7",
    ]);
    let (code, out, err) = run_typing_hello(&env, &mut cmd);
    assert_eq!(code, Some(7), "{out} {err}");
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(out.contains("exec-got:hello"), "{out}");

    // Detached, there is nobody to relay to.
    let o = rt_out(&env, &["exec", "-d", "-t", &id, "true"]);
    // runc's exit code for an exec that does not start.
    assert_eq!(o.status.code(), Some(255));
    assert!(stderr(&o).contains("--console-socket"), "{}", stderr(&o));
}

/// With a terminal of its own (here script(1)'s pty), the relay puts it in raw mode, gives
/// the container's pty its size, and restores it afterwards.
#[test]
fn relay_from_a_real_terminal_copies_its_size() {
    let env = TestEnv::new();
    let id = unique("tty");
    let cg = unique("cg");
    let mut cfg = busybox_config(&["sh", "-c", "stty size; read line; echo got:$line"], &cg);
    cfg["process"]["terminal"] = serde_json::json!(true);
    env.write_config(&cfg);
    // Inside script's pty: set a size, run the container, then print the terminal's mode
    // flags so we can see they were restored.
    let inner = format!(
        "stty rows 33 cols 101; before=$(stty -g); {RT} --root {} run --bundle {} {id}; \
         rc=$?; [ \"$(stty -g)\" = \"$before\" ] && echo RESTORED; exit $rc",
        env.root.display(),
        env.bundle.display()
    );
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qec", &inner, "/dev/null"]);
    let (code, out, err) = run_typing_hello(&env, &mut cmd);
    assert_eq!(code, Some(0), "{out} {err}");
    assert!(out.contains("33 101"), "{out}");
    assert!(out.contains("got:hello"), "{out}");
    assert!(out.contains("RESTORED"), "{out}");
    assert_gone(&env, &id, &cg);
}
