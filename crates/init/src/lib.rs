//! vessel-init: the optional PID 1 inside a container (`vessel run --init`), a drop-in for
//! tini as docker ships it (`docker-init`).
//!
//! It spawns the program in its own process group, forwards the signals it receives to it,
//! reaps every zombie (as PID 1 of a pid namespace it inherits all orphans), and exits with
//! the program's exit code (128+N when a signal N killed it).
//!
//! The pure parts (argument parsing, exit-code rules) live here so they are unit-tested
//! without root; the syscalls are in [`sys`] and tested for real by `tests/`.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use nix::sys::signal::Signal;

pub mod sys;

pub const NAME: &str = "vessel-init";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// tini's own-error exit code (bad flags, failed syscalls): kept so scripts written for
/// tini/docker-init see the same status.
pub const EXIT_INIT_ERROR: i32 = 1;

pub const USAGE: &str = "\
Usage: vessel-init [OPTIONS] [--] PROGRAM [ARGS...] | --version

Run PROGRAM under a minimal init: reap zombies, forward signals (tini-compatible).

Options:
  --version      Show version and exit.
  -h, --help     Show this help message and exit.
  -s             Register as a child subreaper (needed when not running as PID 1).
  -p SIGNAL      Send SIGNAL to vessel-init when its parent dies, e.g. \"-p SIGKILL\".
  -v             More verbose output (repeatable, up to 3).
  -w             Print a warning when processes other than PROGRAM are reaped.
  -g             Forward signals to PROGRAM's process group, not only to PROGRAM.
  -e EXIT_CODE   Remap EXIT_CODE (0 to 255) to 0 (repeatable).
  -l             Show license and exit.

Options end at the first argument that is not one, or at \"--\".
";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("invalid option -- '{0}'")]
    UnknownOption(String),
    #[error("option requires an argument -- '{0}'")]
    MissingArgument(char),
    #[error("no program given")]
    NoProgram,
    #[error("program name contains a NUL byte: {0:?}")]
    NulInArgument(OsString),
    #[error("not a valid option for -e: {0} (expected an exit code from 0 to 255)")]
    BadExitCode(String),
    #[error("not a valid option for -p: {0} (expected a signal such as SIGKILL)")]
    BadSignal(String),
    #[error("{op} failed: {errno}")]
    Sys {
        op: &'static str,
        #[source]
        errno: nix::errno::Errno,
    },
}

impl Error {
    /// Usage errors get the usage text after the message, as getopt-based tini does.
    pub fn wants_usage(&self) -> bool {
        matches!(
            self,
            Error::UnknownOption(_) | Error::MissingArgument(_) | Error::NoProgram
        )
    }
}

/// The set of child exit codes `-e` remaps to 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemapSet([u64; 4]);

impl RemapSet {
    pub fn insert(&mut self, code: u8) {
        self.0[usize::from(code / 64)] |= 1 << (code % 64);
    }
    pub fn contains(&self, code: u8) -> bool {
        self.0[usize::from(code / 64)] & (1 << (code % 64)) != 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub subreaper: bool,
    pub kill_process_group: bool,
    pub remap: RemapSet,
    pub pdeathsig: Option<Signal>,
    /// tini's levels: 0 fatal only, 1 warnings (default), 2 info, 3 debug.
    pub verbosity: u32,
    pub warn_on_reap: bool,
    /// PROGRAM and its arguments; never empty.
    pub program: Vec<OsString>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            subreaper: false,
            kill_process_group: false,
            remap: RemapSet::default(),
            pdeathsig: None,
            verbosity: 1,
            warn_on_reap: false,
            program: Vec::new(),
        }
    }
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Run(Options),
    Help,
    Version,
    License,
}

/// Parse the arguments after argv[0].
///
/// getopt-style (`-sg`, `-e143`, `-e 143`), but options stop at the first non-option
/// instead of being permuted as GNU getopt does for tini: `vessel-init sh -c 'x' -e` must
/// run `sh` with `-e`, not eat it.
pub fn parse_args<I>(args: I) -> Result<Command, Error>
where
    I: IntoIterator<Item = OsString>,
{
    let mut opts = Options::default();
    let mut args = args.into_iter().peekable();
    while let Some(arg) = args.peek() {
        let bytes = arg.as_bytes();
        if bytes == b"--" {
            args.next();
            break;
        }
        if bytes == b"--version" {
            return Ok(Command::Version);
        }
        if bytes == b"--help" {
            return Ok(Command::Help);
        }
        if bytes.starts_with(b"--") {
            return Err(Error::UnknownOption(arg.to_string_lossy().into_owned()));
        }
        if bytes.len() < 2 || bytes[0] != b'-' {
            // The program (a lone "-" is a file name, as for getopt).
            break;
        }
        let arg = args.next().unwrap_or_default();
        let flags = arg.to_string_lossy().into_owned();
        for (i, c) in flags[1..].char_indices() {
            match c {
                'h' => return Ok(Command::Help),
                'l' => return Ok(Command::License),
                's' => opts.subreaper = true,
                'g' => opts.kill_process_group = true,
                'v' => opts.verbosity += 1,
                'w' => opts.warn_on_reap = true,
                'e' | 'p' => {
                    // The value is the rest of this argument, or the next one.
                    let rest = &flags[1 + i + c.len_utf8()..];
                    let value = if rest.is_empty() {
                        args.next()
                            .ok_or(Error::MissingArgument(c))?
                            .to_string_lossy()
                            .into_owned()
                    } else {
                        rest.to_owned()
                    };
                    if c == 'e' {
                        let code = value
                            .parse::<u8>()
                            .map_err(|_| Error::BadExitCode(value.clone()))?;
                        opts.remap.insert(code);
                    } else {
                        opts.pdeathsig =
                            Some(parse_signal(&value).ok_or(Error::BadSignal(value.clone()))?);
                    }
                    break;
                }
                other => return Err(Error::UnknownOption(other.to_string())),
            }
        }
    }
    opts.program = args.collect();
    if opts.program.is_empty() {
        return Err(Error::NoProgram);
    }
    Ok(Command::Run(opts))
}

/// `SIGKILL`, `KILL`, `kill` or `9`. tini takes only the `SIGKILL` form; the others are a
/// harmless superset.
pub fn parse_signal(s: &str) -> Option<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse().ok()
}

/// How the main child ended, in raw kernel numbers (real-time signals have no `Signal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildEnd {
    Exited(i32),
    Signaled(i32),
}

/// vessel-init's own exit code for the child's end: the exit code, 128+N for a signal N
/// (the shell's and tini's convention), then `-e` remapping, as tini applies it after the
/// 128+N mapping (so `-e 143` makes a SIGTERM death a success: the JVM case).
pub fn exit_code(end: ChildEnd, remap: &RemapSet) -> i32 {
    let raw = match end {
        ChildEnd::Exited(c) => c,
        ChildEnd::Signaled(s) => 128 + s,
    };
    // Cannot exceed 255 on Linux (signals stop at 64); the mask keeps it a valid status.
    let code = (raw & 0xff) as u8;
    if remap.contains(code) {
        0
    } else {
        i32::from(code)
    }
}

/// Signals vessel-init does not catch and so never forwards: the synchronous faults (they
/// are vessel-init's own bugs and must kill it, not be queued), and the terminal stop
/// signals, which it ignores so that handing the tty to the child cannot stop it.
/// SIGKILL and SIGSTOP cannot be caught at all. Same list as tini.
pub const NOT_FORWARDED: [Signal; 9] = [
    Signal::SIGFPE,
    Signal::SIGILL,
    Signal::SIGSEGV,
    Signal::SIGBUS,
    Signal::SIGABRT,
    Signal::SIGTRAP,
    Signal::SIGSYS,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
];

/// Run PROGRAM under vessel-init until it exits; returns vessel-init's exit code.
pub fn run(opts: &Options) -> Result<i32, Error> {
    let argv = opts
        .program
        .iter()
        .map(|a| to_cstring(a))
        .collect::<Result<Vec<_>, _>>()?;
    if argv.is_empty() {
        return Err(Error::NoProgram);
    }
    let signals = sys::SignalSetup::install()?;
    if let Some(sig) = opts.pdeathsig {
        sys::set_pdeathsig(sig)?;
    }
    if opts.subreaper {
        sys::set_subreaper()?;
    }
    if opts.verbosity >= 1 && !sys::is_reaper()? {
        warn(
            "not running as PID 1 and not registered as a child subreaper: orphaned \
             processes will not be re-parented to vessel-init, so zombie reaping won't \
             work. Use -s, or run vessel-init as PID 1.",
        );
    }
    let child = sys::spawn(&argv, &signals)?;
    if opts.verbosity >= 2 {
        info(&format!("spawned child process {child}"));
    }
    loop {
        if let Some(sig) = sys::wait_signal(&signals)? {
            if sig != libc::SIGCHLD {
                if opts.verbosity >= 3 {
                    info(&format!("forwarding signal {sig} to child {child}"));
                }
                if !sys::forward_signal(child, sig, opts.kill_process_group)? && opts.verbosity >= 1
                {
                    warn("child was dead when forwarding signal");
                }
            }
        }
        // Reap after every wake-up, SIGCHLD or not: SIGCHLDs coalesce, and the one-second
        // timeout of the wait bounds how long any zombie can linger.
        let mut main_end = None;
        sys::reap_all(|pid, end| {
            if pid == child {
                main_end = Some(end);
            } else if opts.warn_on_reap && opts.verbosity >= 1 {
                warn(&format!("reaped zombie process with pid={pid}"));
            }
        })?;
        if let Some(end) = main_end {
            if opts.verbosity >= 2 {
                info(&format!("main child exited: {end:?}"));
            }
            // Remaining processes: as PID 1, our exit makes the kernel SIGKILL the whole
            // namespace; as a subreaper they go to the next reaper up, as with tini.
            return Ok(exit_code(end, &opts.remap));
        }
    }
}

fn to_cstring(s: &OsStr) -> Result<std::ffi::CString, Error> {
    std::ffi::CString::new(s.as_bytes()).map_err(|_| Error::NulInArgument(s.to_owned()))
}

pub fn warn(msg: &str) {
    eprintln!("{NAME}: warning: {msg}");
}

fn info(msg: &str) {
    eprintln!("{NAME}: {msg}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, Error> {
        parse_args(args.iter().map(OsString::from))
    }

    fn opts(args: &[&str]) -> Options {
        match parse(args) {
            Ok(Command::Run(o)) => o,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn program_after_double_dash_or_first_non_option() {
        assert_eq!(opts(&["--", "sh", "-c", "x"]).program, ["sh", "-c", "x"]);
        assert_eq!(
            opts(&["sh", "-e", "--", "-s"]).program,
            ["sh", "-e", "--", "-s"]
        );
        let o = opts(&["-s", "-g", "--", "-weird-name"]);
        assert!(o.subreaper && o.kill_process_group);
        assert_eq!(o.program, ["-weird-name"]);
        assert_eq!(opts(&["-"]).program, ["-"]);
    }

    #[test]
    fn combined_flags_and_values() {
        let o = opts(&["-sgvw", "-e143", "-e", "2", "-pSIGKILL", "true"]);
        assert!(o.subreaper && o.kill_process_group && o.warn_on_reap);
        assert_eq!(o.verbosity, 2);
        assert!(o.remap.contains(143) && o.remap.contains(2) && !o.remap.contains(0));
        assert_eq!(o.pdeathsig, Some(Signal::SIGKILL));
        let o = opts(&["-ge", "7", "true"]);
        assert!(o.kill_process_group && o.remap.contains(7));
        assert_eq!(opts(&["-p", "term", "x"]).pdeathsig, Some(Signal::SIGTERM));
        assert_eq!(opts(&["-p", "9", "x"]).pdeathsig, Some(Signal::SIGKILL));
    }

    #[test]
    fn errors_and_info_commands() {
        assert_eq!(parse(&[]), Err(Error::NoProgram));
        assert_eq!(parse(&["-s", "--"]), Err(Error::NoProgram));
        assert_eq!(parse(&["-z", "x"]), Err(Error::UnknownOption("z".into())));
        assert_eq!(
            parse(&["--frob", "x"]),
            Err(Error::UnknownOption("--frob".into()))
        );
        assert_eq!(parse(&["-e"]), Err(Error::MissingArgument('e')));
        assert_eq!(
            parse(&["-e", "256", "x"]),
            Err(Error::BadExitCode("256".into()))
        );
        assert_eq!(
            parse(&["-e", "-1", "x"]),
            Err(Error::BadExitCode("-1".into()))
        );
        assert_eq!(
            parse(&["-p", "SIGNOPE", "x"]),
            Err(Error::BadSignal("SIGNOPE".into()))
        );
        assert_eq!(parse(&["--version"]), Ok(Command::Version));
        assert_eq!(parse(&["-h", "x"]), Ok(Command::Help));
        assert_eq!(parse(&["--help"]), Ok(Command::Help));
        assert_eq!(parse(&["-l"]), Ok(Command::License));
        assert!(Error::NoProgram.wants_usage());
        assert!(!Error::BadExitCode("x".into()).wants_usage());
    }

    #[test]
    fn exit_codes_as_tini() {
        let none = RemapSet::default();
        assert_eq!(exit_code(ChildEnd::Exited(0), &none), 0);
        assert_eq!(exit_code(ChildEnd::Exited(42), &none), 42);
        assert_eq!(exit_code(ChildEnd::Signaled(9), &none), 137);
        assert_eq!(exit_code(ChildEnd::Signaled(15), &none), 143);
        assert_eq!(exit_code(ChildEnd::Signaled(libc::SIGRTMAX()), &none), 192);
        let mut remap = RemapSet::default();
        remap.insert(143);
        remap.insert(255);
        assert_eq!(exit_code(ChildEnd::Signaled(15), &remap), 0);
        assert_eq!(exit_code(ChildEnd::Exited(255), &remap), 0);
        assert_eq!(exit_code(ChildEnd::Exited(254), &remap), 254);
    }
}
