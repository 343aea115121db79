//! The order of the init's steps, in one place.
//!
//! Most of what went wrong in the init was order: descriptors closed after the seccomp
//! filter was loaded (a profile without close_range broke every container), the cwd entered
//! after the privilege drop, hooks run before the filter. So the order is written once, here,
//! as plain functions that read top-down, and every step is a method of a trait: the kernel
//! implementation ([`super::kernel`]) does the work, and the recording fake in the tests
//! below checks each ordering rule without root. The root tests prove the same rules on the
//! kernel.

use std::convert::Infallible;

use crate::error::{Error, Result};

/// What the process part of the sequence depends on; shared by `create` and `exec`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessPlan {
    pub no_new_privileges: bool,
    pub seccomp: bool,
}

/// The steps that turn the runtime's child into the container's process, from limits to
/// execve; the same for the container's init and for `exec`.
pub trait ProcessSteps {
    fn apply_rlimits(&mut self) -> Result<()>;
    fn apply_scheduling(&mut self) -> Result<()>;
    fn apply_personality(&mut self) -> Result<()>;
    /// Look the program up now, so a missing one fails `create`, not `start`.
    fn resolve_program(&mut self) -> Result<()>;
    /// Every descriptor past stdio and the preserved ones made close-on-exec.
    fn close_inherited_fds(&mut self) -> Result<()>;
    /// chdir into process.cwd as root; false if root may not (root-squashed), to be retried
    /// as the user.
    fn enter_cwd_as_root(&mut self) -> Result<bool>;
    fn enter_cwd_as_user(&mut self) -> Result<()>;
    fn give_stdio_to_user(&mut self);
    /// The environment to exec with (HOME from the container's passwd when missing).
    fn prepare_env(&mut self);
    fn load_seccomp(&mut self) -> Result<()>;
    /// Groups, uid/gid, capabilities.
    fn apply_user_and_caps(&mut self) -> Result<()>;
    fn set_no_new_privs(&mut self) -> Result<()>;
    fn set_umask(&mut self);
    fn set_non_dumpable(&mut self) -> Result<()>;
    fn apply_lsm_label(&mut self) -> Result<()>;
    fn apply_final_affinity(&mut self) -> Result<()>;
    /// execve; returns only with its error.
    fn exec(&mut self) -> Error;
}

/// The process part, in runc's order, so that neither a seccomp profile nor a user without
/// privileges ever stands in the way of the runtime's own steps.
pub fn prepare_process<S: ProcessSteps>(s: &mut S, plan: &ProcessPlan) -> Result<()> {
    s.apply_rlimits()?;
    s.apply_scheduling()?;
    s.apply_personality()?;
    s.resolve_program()?;
    // As root and before any filter: a profile without close_range or getcwd must not
    // break these, and the cwd check must not be fooled by one.
    s.close_inherited_fds()?;
    let cwd_entered = s.enter_cwd_as_root()?;
    s.give_stdio_to_user();
    s.prepare_env();
    // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: load it while we have it.
    if plan.seccomp && !plan.no_new_privileges {
        s.load_seccomp()?;
    }
    s.apply_user_and_caps()?;
    if !cwd_entered {
        s.enter_cwd_as_user()?;
    }
    if plan.no_new_privileges {
        s.set_no_new_privs()?;
    }
    s.set_umask();
    // Until execve replaces us nothing in the container may open /proc/<us>/exe or our
    // memory.
    s.set_non_dumpable()?;
    s.apply_lsm_label()?;
    // With no_new_privs the filter goes last, still before `start`: the startContainer
    // hooks run under it, as with runc.
    if plan.seccomp && plan.no_new_privileges {
        s.load_seccomp()?;
    }
    Ok(())
}

/// After `start` (or at once for `exec`): the program looked up again in the final root,
/// the final CPU affinity, execve.
pub fn exec_process<S: ProcessSteps>(s: &mut S) -> Result<Infallible> {
    s.resolve_program()?;
    s.apply_final_affinity()?;
    Err(s.exec())
}

/// What the container init's sequence depends on, decided from the config before the clone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InitPlan {
    /// A new user namespace whose uid map has a root: become it once the maps exist.
    pub become_userns_root: bool,
    pub hostname: bool,
    pub domainname: bool,
    pub new_session_keyring: bool,
    /// A mount namespace of its own: the rootfs is built; without one, only a chroot.
    pub new_mount_ns: bool,
    /// prestart / createRuntime hooks, run by the parent while the init waits.
    pub runtime_hooks: bool,
    /// The pid namespace is joined by path, only after the switch to the new root.
    pub joins_pid_ns_late: bool,
    pub terminal: bool,
    pub process: ProcessPlan,
}

/// The steps of the container's init, between the clone and `start`.
pub trait InitSteps {
    type Process: ProcessSteps;
    fn process(&mut self) -> &mut Self::Process;

    /// The parent has written our id maps and tells us our PID.
    fn wait_for_pid(&mut self) -> Result<()>;
    fn become_userns_root(&mut self) -> Result<()>;
    /// The namespaces that must be made after the id maps (ipc, uts, ... in a user ns).
    fn late_unshare(&mut self) -> Result<()>;
    fn set_hostname(&mut self) -> Result<()>;
    fn set_domainname(&mut self) -> Result<()>;
    fn join_session_keyring(&mut self);
    /// Every mount of config.json, devices; joins the cgroup before the first cgroup mount.
    fn prepare_rootfs(&mut self) -> Result<()>;
    /// Into our cgroup, then the cgroup namespace; does nothing the second time.
    fn join_cgroup(&mut self) -> Result<()>;
    fn run_runtime_hooks(&mut self) -> Result<()>;
    fn run_create_container_hooks(&mut self) -> Result<()>;
    fn switch_root(&mut self) -> Result<()>;
    fn chroot(&mut self) -> Result<()>;
    fn enter_joined_pid_ns(&mut self) -> Result<()>;
    /// The mounts on /proc held back, propagation, sysctls, masked and read-only paths.
    fn finish_rootfs(&mut self) -> Result<()>;
    fn create_cwd(&mut self) -> Result<()>;
    fn new_session(&mut self) -> Result<()>;
    fn setup_console(&mut self) -> Result<()>;
    fn close_console_socket(&mut self);
    fn report_ready(&mut self) -> Result<()>;
    fn wait_for_start(&mut self) -> Result<()>;
    fn run_start_container_hooks(&mut self) -> Result<()>;
}

/// The container's init, from the clone to execve.
pub fn run_init<S: InitSteps>(s: &mut S, plan: &InitPlan) -> Result<Infallible> {
    s.wait_for_pid()?;
    if plan.become_userns_root {
        s.become_userns_root()?;
    }
    s.late_unshare()?;
    if plan.hostname {
        s.set_hostname()?;
    }
    if plan.domainname {
        s.set_domainname()?;
    }
    if plan.new_session_keyring {
        s.join_session_keyring();
    }
    if plan.new_mount_ns {
        s.prepare_rootfs()?;
    }
    // In our cgroup before any hook or user code runs.
    s.join_cgroup()?;
    if plan.runtime_hooks {
        s.run_runtime_hooks()?;
    }
    // In the container's namespaces, before the switch to its root (OCI).
    s.run_create_container_hooks()?;
    if plan.new_mount_ns {
        s.switch_root()?;
    } else {
        s.chroot()?;
    }
    // Until now the processes of a joined pid namespace could not see us: one with
    // CAP_SYS_PTRACE could have reached the host through /proc/PID/root while the rootfs
    // was built.
    if plan.joins_pid_ns_late {
        s.enter_joined_pid_ns()?;
    }
    if plan.new_mount_ns {
        s.finish_rootfs()?;
    }
    s.create_cwd()?;
    s.new_session()?;
    if plan.terminal {
        s.setup_console()?;
    }
    s.close_console_socket();
    prepare_process(s.process(), &plan.process)?;
    s.report_ready()?;
    s.wait_for_start()?;
    s.run_start_container_hooks()?;
    exec_process(s.process())
}

/// What `exec`'s sequence depends on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecPlan {
    pub terminal: bool,
    pub process: ProcessPlan,
}

/// The steps of `exec`'s child after it entered the container's namespaces and cgroup.
pub trait ExecSteps {
    type Process: ProcessSteps;
    fn process(&mut self) -> &mut Self::Process;

    fn wait_for_runtime(&mut self) -> Result<()>;
    fn new_session(&mut self) -> Result<()>;
    fn setup_console(&mut self) -> Result<()>;
    fn close_console_socket(&mut self);
}

pub fn run_exec<S: ExecSteps>(s: &mut S, plan: &ExecPlan) -> Result<Infallible> {
    s.wait_for_runtime()?;
    if plan.terminal {
        s.new_session()?;
        s.setup_console()?;
    }
    s.close_console_socket();
    prepare_process(s.process(), &plan.process)?;
    exec_process(s.process())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the name of every step it is asked to do; `root_may_enter_cwd` plays a
    /// root-squashed cwd.
    #[derive(Default)]
    struct Recorder {
        steps: Vec<&'static str>,
        root_may_not_enter_cwd: bool,
    }

    impl Recorder {
        fn pos(&self, step: &str) -> usize {
            self.steps
                .iter()
                .position(|s| *s == step)
                .unwrap_or_else(|| panic!("{step} never ran: {:?}", self.steps))
        }
        fn all(&self, step: &str) -> Vec<usize> {
            (0..self.steps.len())
                .filter(|i| self.steps[*i] == step)
                .collect()
        }
        fn has(&self, step: &str) -> bool {
            self.steps.contains(&step)
        }
        fn before(&self, a: &str, b: &str) -> bool {
            self.pos(a) < self.pos(b)
        }
    }

    macro_rules! record {
        ($($name:ident),* ; $($unit:ident),* ) => {
            $(fn $name(&mut self) -> Result<()> {
                self.steps.push(stringify!($name));
                Ok(())
            })*
            $(fn $unit(&mut self) {
                self.steps.push(stringify!($unit));
            })*
        };
    }

    impl ProcessSteps for Recorder {
        record!(apply_rlimits, apply_scheduling, apply_personality, resolve_program,
            close_inherited_fds, enter_cwd_as_user, load_seccomp, apply_user_and_caps,
            set_no_new_privs, set_non_dumpable, apply_lsm_label, apply_final_affinity;
            give_stdio_to_user, prepare_env, set_umask);
        fn enter_cwd_as_root(&mut self) -> Result<bool> {
            self.steps.push("enter_cwd_as_root");
            Ok(!self.root_may_not_enter_cwd)
        }
        fn exec(&mut self) -> Error {
            self.steps.push("exec");
            Error::Child("recorded".into())
        }
    }

    impl InitSteps for Recorder {
        type Process = Self;
        fn process(&mut self) -> &mut Self {
            self
        }
        record!(wait_for_pid, become_userns_root, late_unshare, set_hostname, set_domainname,
            prepare_rootfs, join_cgroup, run_runtime_hooks, run_create_container_hooks,
            switch_root, chroot, enter_joined_pid_ns, finish_rootfs, create_cwd, new_session,
            setup_console, report_ready, wait_for_start, run_start_container_hooks;
            join_session_keyring, close_console_socket);
    }

    impl ExecSteps for Recorder {
        type Process = Self;
        fn process(&mut self) -> &mut Self {
            self
        }
        record!(wait_for_runtime, new_session, setup_console; close_console_socket);
    }

    fn init(plan: InitPlan) -> Recorder {
        let mut r = Recorder::default();
        let _ = run_init(&mut r, &plan);
        r
    }

    fn every_plan() -> Vec<InitPlan> {
        let mut plans = Vec::new();
        for bits in 0u32..1 << 9 {
            let b = |i: u32| bits & (1 << i) != 0;
            plans.push(InitPlan {
                become_userns_root: b(0),
                hostname: b(1),
                domainname: b(1),
                new_session_keyring: b(2),
                new_mount_ns: b(3),
                runtime_hooks: b(4),
                joins_pid_ns_late: b(5),
                terminal: b(6),
                process: ProcessPlan {
                    no_new_privileges: b(7),
                    seccomp: b(8),
                },
            });
        }
        plans
    }

    #[test]
    fn descriptors_are_closed_and_cwd_entered_before_any_filter() {
        for plan in every_plan().into_iter().filter(|p| p.process.seccomp) {
            let r = init(plan);
            assert!(r.before("close_inherited_fds", "load_seccomp"), "{plan:?}");
            assert!(r.before("enter_cwd_as_root", "load_seccomp"), "{plan:?}");
        }
    }

    #[test]
    fn cwd_is_entered_as_root_before_the_privilege_drop_and_retried_as_the_user() {
        let r = init(InitPlan::default());
        assert!(r.before("enter_cwd_as_root", "apply_user_and_caps"));
        assert!(!r.has("enter_cwd_as_user"));
        let mut squashed = Recorder {
            root_may_not_enter_cwd: true,
            ..Default::default()
        };
        let _ = run_init(&mut squashed, &InitPlan::default());
        assert!(squashed.before("apply_user_and_caps", "enter_cwd_as_user"));
        // The cwd exists (created in the new root) before anyone enters it.
        assert!(squashed.before("create_cwd", "enter_cwd_as_root"));
    }

    #[test]
    fn the_filter_needs_cap_sys_admin_without_no_new_privs() {
        let plan = InitPlan {
            process: ProcessPlan {
                no_new_privileges: false,
                seccomp: true,
            },
            ..Default::default()
        };
        let r = init(plan);
        assert_eq!(r.all("load_seccomp").len(), 1);
        assert!(r.before("load_seccomp", "apply_user_and_caps"));
        assert!(!r.has("set_no_new_privs"));
    }

    #[test]
    fn with_no_new_privs_the_filter_is_last_and_start_hooks_run_under_it() {
        let plan = InitPlan {
            process: ProcessPlan {
                no_new_privileges: true,
                seccomp: true,
            },
            ..Default::default()
        };
        let r = init(plan);
        assert_eq!(r.all("load_seccomp").len(), 1);
        for step in [
            "apply_user_and_caps",
            "set_no_new_privs",
            "set_non_dumpable",
            "apply_lsm_label",
        ] {
            assert!(r.before(step, "load_seccomp"), "{step}");
        }
        assert!(r.before("load_seccomp", "report_ready"));
        assert!(r.before("load_seccomp", "run_start_container_hooks"));
    }

    #[test]
    fn nothing_is_filtered_or_dropped_without_a_profile() {
        let r = init(InitPlan::default());
        assert!(!r.has("load_seccomp"));
        assert!(r.has("apply_user_and_caps"));
    }

    #[test]
    fn cgroup_hooks_and_root_switch_come_in_the_oci_order() {
        for plan in every_plan() {
            let r = init(plan);
            // In the cgroup before any hook, after the rootfs mounts began (the cgroup
            // mounts join it themselves).
            assert!(
                r.before("join_cgroup", "run_create_container_hooks"),
                "{plan:?}"
            );
            if plan.runtime_hooks {
                assert!(r.before("join_cgroup", "run_runtime_hooks"), "{plan:?}");
                assert!(r.before("run_runtime_hooks", "run_create_container_hooks"));
            }
            // createContainer hooks run before pivot_root, startContainer after start.
            let switch = if plan.new_mount_ns {
                "switch_root"
            } else {
                "chroot"
            };
            assert!(r.before("run_create_container_hooks", switch), "{plan:?}");
            if plan.new_mount_ns {
                assert!(r.before("prepare_rootfs", "switch_root"));
                assert!(r.before("switch_root", "finish_rootfs"));
            } else {
                assert!(!r.has("prepare_rootfs") && !r.has("finish_rootfs"));
            }
            assert!(r.before("report_ready", "wait_for_start"));
            assert!(r.before("wait_for_start", "run_start_container_hooks"));
            assert_eq!(r.steps.last(), Some(&"exec"));
        }
    }

    #[test]
    fn a_joined_pid_namespace_is_entered_only_in_the_new_root() {
        for plan in every_plan().into_iter().filter(|p| p.joins_pid_ns_late) {
            let r = init(plan);
            let switch = if plan.new_mount_ns {
                "switch_root"
            } else {
                "chroot"
            };
            assert!(r.before(switch, "enter_joined_pid_ns"), "{plan:?}");
            // /proc is mounted by the process in that pid namespace.
            if plan.new_mount_ns {
                assert!(r.before("enter_joined_pid_ns", "finish_rootfs"));
            }
            assert!(r.before("enter_joined_pid_ns", "report_ready"));
        }
    }

    #[test]
    fn namespaces_and_ids_come_before_hostname_and_mounts() {
        let plan = InitPlan {
            become_userns_root: true,
            hostname: true,
            domainname: true,
            new_mount_ns: true,
            ..Default::default()
        };
        let r = init(plan);
        assert_eq!(r.steps[0], "wait_for_pid");
        assert!(r.before("become_userns_root", "late_unshare"));
        assert!(r.before("late_unshare", "set_hostname"));
        assert!(r.before("late_unshare", "set_domainname"));
        assert!(r.before("late_unshare", "prepare_rootfs"));
    }

    #[test]
    fn the_console_comes_after_the_new_session_and_before_the_process_setup() {
        let r = init(InitPlan {
            terminal: true,
            ..Default::default()
        });
        assert!(r.before("new_session", "setup_console"));
        assert!(r.before("setup_console", "close_console_socket"));
        assert!(r.before("close_console_socket", "close_inherited_fds"));
        // The pty's ownership is given to the user after it exists.
        assert!(r.before("setup_console", "give_stdio_to_user"));
    }

    #[test]
    fn the_program_is_resolved_at_create_and_again_before_execve() {
        let r = init(InitPlan::default());
        let at = r.all("resolve_program");
        assert_eq!(at.len(), 2);
        assert!(at[0] < r.pos("report_ready") && at[1] > r.pos("wait_for_start"));
        assert!(r.before("apply_final_affinity", "exec"));
    }

    #[test]
    fn exec_follows_the_same_process_rules() {
        for nnp in [false, true] {
            for terminal in [false, true] {
                let plan = ExecPlan {
                    terminal,
                    process: ProcessPlan {
                        no_new_privileges: nnp,
                        seccomp: true,
                    },
                };
                let mut r = Recorder::default();
                let _ = run_exec(&mut r, &plan);
                assert_eq!(r.steps[0], "wait_for_runtime");
                assert_eq!(r.has("setup_console"), terminal);
                assert!(r.before("close_inherited_fds", "load_seccomp"));
                assert!(r.before("enter_cwd_as_root", "load_seccomp"));
                assert_eq!(
                    r.before("load_seccomp", "apply_user_and_caps"),
                    !nnp,
                    "nnp={nnp}"
                );
                assert_eq!(r.steps.last(), Some(&"exec"));
            }
        }
    }
}
