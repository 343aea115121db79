//! Fault injection for the crash-safety tests: `VESSEL_RUNTIME_FAULT=create:N` (or
//! `delete:N`) makes the runtime SIGKILL itself at the N-th step of that operation, the way
//! an OOM kill or a killed caller would stop it, so a test can check that whatever it left
//! is found and removed by a following `delete --force`.
//!
//! Always compiled in, so the tests drive the very binary that ships. The variable is read
//! once per process, the first time an operation asks; a step is then an increment and a
//! compare.

use std::sync::OnceLock;

pub const ENV: &str = "VESSEL_RUNTIME_FAULT";

/// The steps of one operation, counted from 1.
pub struct Steps {
    op: &'static str,
    done: u32,
    kill_at: Option<u32>,
}

/// Start counting the steps of `op` ("create", "delete").
pub fn steps(op: &'static str) -> Steps {
    static CONFIGURED: OnceLock<Option<(String, u32)>> = OnceLock::new();
    let configured = CONFIGURED.get_or_init(|| {
        let value = std::env::var(ENV).ok()?;
        let (op, n) = value.split_once(':')?;
        Some((op.to_string(), n.parse().ok()?))
    });
    Steps {
        op,
        done: 0,
        kill_at: configured
            .as_ref()
            .filter(|(o, _)| o == op)
            .map(|(_, n)| *n),
    }
}

impl Steps {
    /// Step `what` is done; die here if this is the step the test asked for.
    #[inline]
    pub fn done(&mut self, what: &str) {
        self.done += 1;
        if self.kill_at == Some(self.done) {
            self.die(what);
        }
    }

    #[cold]
    fn die(&self, what: &str) {
        eprintln!(
            "vessel-runtime: {ENV}: SIGKILL after {} step {} ({what})",
            self.op, self.done
        );
        // SAFETY: plain syscalls; SIGKILL cannot be caught, so this does not return.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
