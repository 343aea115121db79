//! vessel-runtime: the runc-compatible command line. Parsing, output and exit codes only;
//! the work is in the library.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use vessel_runtime::container;
use vessel_runtime::create::{create, CreateOptions};
use vessel_runtime::exec::{exec, process_from_args, ExecArgs, ExecOptions};
use vessel_runtime::tty_relay::TtyRelay;

#[derive(Parser)]
#[command(
    name = "vessel-runtime",
    version,
    about = "vessel's OCI runtime (runc-compatible)"
)]
struct Cli {
    /// Directory for container state.
    #[arg(
        long,
        global = true,
        env = "VESSEL_RUNTIME_ROOT",
        default_value = "/run/vessel-runtime"
    )]
    root: PathBuf,
    /// Write log lines (errors, warnings, --debug lines) to this file, as runc.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Log line format in the --log file: text or json (runc's logrus lines).
    #[arg(long = "log-format", global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Enable debug logging.
    #[arg(long, global = true)]
    debug: bool,
    /// Use systemd for cgroups (needs a running systemd).
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    /// The criu binary for checkpoint/restore (a path, or a name looked up in PATH).
    #[arg(long, global = true, default_value = vessel_runtime::checkpoint::DEFAULT_CRIU)]
    criu: PathBuf,
    /// Accepted for runc compatibility (before the command only: `spec` has its own).
    #[arg(long = "rootless", hide = true)]
    rootless_mode: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct CreateArgs {
    /// Path to the bundle (the directory with config.json).
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    /// AF_UNIX socket that receives the console's pseudoterminal master.
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    /// File to write the container init's pid to.
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    /// Do not use pivot_root to jail the process inside the rootfs.
    #[arg(long = "no-pivot")]
    no_pivot: bool,
    /// Do not create a new session keyring for the container.
    #[arg(long = "no-new-keyring")]
    no_new_keyring: bool,
    /// Pass N more file descriptors to the container (stdio + $LISTEN_FDS + N).
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: u32,
    id: String,
}

#[derive(Subcommand)]
enum Command {
    /// Create a container (it waits for `start`).
    Create(CreateArgs),
    /// Start a created container.
    Start { id: String },
    /// Create and start a container; wait for it unless --detach.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        /// Detach from the container's process.
        #[arg(short, long)]
        detach: bool,
        /// Do not delete the container after it exits.
        #[arg(long)]
        keep: bool,
        /// Accepted for runc compatibility: vessel-runtime never makes itself a subreaper.
        #[arg(long = "no-subreaper")]
        no_subreaper: bool,
    },
    /// Print the state of a container as JSON.
    State { id: String },
    /// Send a signal to the container's init (or to all its processes).
    Kill {
        /// Send the signal to all processes in the container.
        #[arg(short, long)]
        all: bool,
        id: String,
        /// A name (KILL, SIGKILL, RTMIN+1) or number; 0 only checks that the init exists.
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a container and what it holds on the host.
    Delete {
        /// Delete it even if it is running (SIGKILL first).
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// List containers.
    List {
        /// Print only the container ids.
        #[arg(short, long)]
        quiet: bool,
        /// table or json.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show the processes of a container.
    Ps {
        /// table (ps's own output, filtered) or json (the pids).
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        format: Format,
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Run a new process in a container.
    Exec {
        /// A runtime-spec process JSON file ("-" for stdin); the other flags are ignored.
        #[arg(short, long)]
        process: Option<PathBuf>,
        /// Allocate a pseudo-TTY.
        #[arg(short, long)]
        tty: bool,
        /// Working directory in the container.
        #[arg(long)]
        cwd: Option<PathBuf>,
        /// Set an environment variable (NAME=VALUE).
        #[arg(short, long)]
        env: Vec<String>,
        /// UID[:GID] to run as.
        #[arg(short, long)]
        user: Option<String>,
        /// Additional gids.
        #[arg(short = 'g', long = "additional-gids")]
        additional_gids: Vec<u32>,
        /// Add a capability to the process's sets.
        #[arg(short, long)]
        cap: Vec<String>,
        /// Set no_new_privs for the process.
        #[arg(long = "no-new-privs")]
        no_new_privs: bool,
        /// Detach from the process.
        #[arg(short, long)]
        detach: bool,
        /// File to write the process's pid to.
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        /// AF_UNIX socket that receives the pseudoterminal master.
        #[arg(long = "console-socket")]
        console_socket: Option<PathBuf>,
        /// Pass N more file descriptors (stdio + $LISTEN_FDS + N).
        #[arg(long = "preserve-fds", default_value_t = 0)]
        preserve_fds: u32,
        /// Set the AppArmor profile of the process.
        #[arg(long)]
        apparmor: Option<String>,
        /// Set the SELinux label of the process.
        #[arg(long = "process-label")]
        process_label: Option<String>,
        /// Run in an existing sub-cgroup: [CONTROLLER[,CONTROLLER...]:]PATH.
        #[arg(long = "cgroup", value_name = "CGROUP")]
        cgroup: Vec<String>,
        /// Allow exec in a paused container (the process waits for resume).
        #[arg(long = "ignore-paused")]
        ignore_paused: bool,
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Freeze all processes of a container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Print container statistics (once with --stats, else every --interval).
    Events {
        /// Print the container's stats once and exit.
        #[arg(long)]
        stats: bool,
        /// Stats collection interval.
        #[arg(long, default_value = "5s")]
        interval: String,
        id: String,
    },
    /// Change the resource limits of a running container.
    Update(Box<UpdateArgs>),
    /// Checkpoint a running container with CRIU.
    Checkpoint(CheckpointArgs),
    /// Restore a container from a checkpoint made by `checkpoint`.
    Restore(RestoreArgs),
    /// Print what this runtime supports (runtime-spec features document).
    Features,
    /// Write a default config.json.
    Spec {
        /// Where to write config.json.
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        /// A spec for a rootless container.
        #[arg(long)]
        rootless: bool,
    },
}

#[derive(clap::Args)]
struct UpdateArgs {
    /// JSON file with linux.resources ("-" for stdin).
    #[arg(short, long)]
    resources: Option<PathBuf>,
    /// Memory limit (bytes, or 512m, 1g); -1 for unlimited.
    #[arg(long, allow_hyphen_values = true)]
    memory: Option<String>,
    /// Memory soft limit.
    #[arg(long = "memory-reservation", allow_hyphen_values = true)]
    memory_reservation: Option<String>,
    /// Memory plus swap; -1 for unlimited.
    #[arg(long = "memory-swap", allow_hyphen_values = true)]
    memory_swap: Option<String>,
    #[arg(long = "kernel-memory", hide = true)]
    kernel_memory: Option<String>,
    #[arg(long = "kernel-memory-tcp", hide = true)]
    kernel_memory_tcp: Option<String>,
    /// CPU shares (relative weight).
    #[arg(long = "cpu-share", visible_alias = "cpu-shares")]
    cpu_shares: Option<u64>,
    /// CPU CFS period in µs.
    #[arg(long = "cpu-period")]
    cpu_period: Option<u64>,
    /// CPU CFS quota in µs per period; -1 removes the limit.
    #[arg(long = "cpu-quota", allow_negative_numbers = true)]
    cpu_quota: Option<i64>,
    /// CPU real-time period in µs (cgroup v1).
    #[arg(long = "cpu-rt-period")]
    cpu_rt_period: Option<u64>,
    /// CPU real-time runtime in µs per period (cgroup v1).
    #[arg(long = "cpu-rt-runtime", allow_negative_numbers = true)]
    cpu_rt_runtime: Option<i64>,
    /// CPUs to run on (0-3, 0,1).
    #[arg(long = "cpuset-cpus")]
    cpuset_cpus: Option<String>,
    /// Memory nodes to use (0-3, 0,1).
    #[arg(long = "cpuset-mems")]
    cpuset_mems: Option<String>,
    /// Block I/O weight, 10 to 1000.
    #[arg(long = "blkio-weight")]
    blkio_weight: Option<u16>,
    /// Maximum number of processes; -1 (or 0) for unlimited.
    #[arg(long = "pids-limit", allow_negative_numbers = true)]
    pids_limit: Option<i64>,
    /// Intel RDT L3 cache schema ("L3:..." line) of a container with linux.intelRdt.
    #[arg(long = "l3-cache-schema")]
    l3_cache_schema: Option<String>,
    /// Intel RDT memory bandwidth schema ("MB:..." line) of a container with linux.intelRdt.
    #[arg(long = "mem-bw-schema")]
    mem_bw_schema: Option<String>,
    id: String,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Table,
    Json,
}

/// Log lines as runc writes them (logrus): to the --log file in --log-format when one is
/// given; on stderr otherwise. Errors always reach stderr too — as "vessel-runtime: MSG",
/// unescaped, so multi-line hook output stays readable (runc prints logrus' escaped
/// `time=... level=error msg="..."` there without --log, and the bare message with it).
struct Logger {
    file: Option<PathBuf>,
    json: bool,
    debug: bool,
}

#[derive(Clone, Copy)]
enum Level {
    Debug,
    Warning,
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Warning => "warning",
            Level::Error => "error",
        }
    }
}

static LOGGER: std::sync::OnceLock<Logger> = std::sync::OnceLock::new();

impl Logger {
    fn line(&self, level: Level, msg: &str) {
        if matches!(level, Level::Debug) && !self.debug {
            return;
        }
        let Some(path) = &self.file else {
            match level {
                Level::Error => eprintln!("vessel-runtime: {msg}"),
                l => eprintln!("vessel-runtime: {}: {msg}", l.as_str()),
            }
            return;
        };
        if matches!(level, Level::Error) {
            eprintln!("vessel-runtime: {msg}");
        }
        // logrus' default: RFC 3339 in seconds, keys sorted (level, msg, time).
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let line = if self.json {
            serde_json::json!({"level": level.as_str(), "msg": msg, "time": time}).to_string()
        } else {
            format!("time={time:?} level={} msg={msg:?}", level.as_str())
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            // One write per line, so concurrent runtimes sharing a log never interleave.
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
    }

    fn error(&self, msg: &str) {
        self.line(Level::Error, msg)
    }
}

/// A --debug line (nothing without --debug).
fn debug(msg: impl FnOnce() -> String) {
    if let Some(l) = LOGGER.get().filter(|l| l.debug) {
        l.line(Level::Debug, &msg());
    }
}

fn warn(msg: &str) {
    if let Some(l) = LOGGER.get() {
        l.line(Level::Warning, msg);
    }
}

/// Commands that place a process into a container, and so must run from a protected copy
/// of the runtime (see `self_exe`).
const ENTERS_CONTAINER: [&str; 3] = ["create", "run", "exec"];

/// The command word of the command line, found without clap so that the re-exec of
/// `self_exe` comes before anything else: the first image then does not build and run the
/// parser (a third of a millisecond) only for the second to do it again.
fn command_word(args: &[std::ffi::OsString]) -> Option<&str> {
    const TAKES_VALUE: [&str; 5] = ["--root", "--log", "--log-format", "--criu", "--rootless"];
    let mut args = args.iter().skip(1);
    while let Some(arg) = args.next() {
        let arg = arg.to_str()?;
        if TAKES_VALUE.contains(&arg) {
            args.next();
        } else if !arg.starts_with('-') {
            return Some(arg);
        }
    }
    None
}

fn main() {
    // A failure here is reported below, once the command line says where errors go.
    if command_word(&std::env::args_os().collect::<Vec<_>>())
        .is_some_and(|w| ENTERS_CONTAINER.contains(&w))
    {
        let _ = vessel_runtime::self_exe::ensure_protected();
    }
    let cli = parse_cli();
    let logger = LOGGER.get_or_init(|| Logger {
        file: cli.log.clone(),
        json: cli.log_format == LogFormat::Json,
        debug: cli.debug,
    });
    // runc exits 255 when exec fails (the exec'd process's own codes are 0..=255 too, but a
    // caller cannot tell those apart either way), and says "exec failed:".
    let is_exec = matches!(cli.command, Command::Exec { .. });
    let fail = |msg: &str| -> ! {
        if is_exec {
            logger.error(&format!("exec failed: {msg}"));
            std::process::exit(255);
        }
        logger.error(msg);
        std::process::exit(1);
    };
    // Commands that place a process into a container first re-execute the runtime from a
    // handle the container cannot write (CVE-2019-5736; see self_exe). Nothing has been
    // opened or read yet, so the new image starts from the very same point. Normally done
    // above already, before parsing; this catches a command line `command_word` misread.
    if matches!(
        cli.command,
        Command::Create(_) | Command::Run { .. } | Command::Exec { .. }
    ) {
        if let Err(e) = vessel_runtime::self_exe::ensure_protected() {
            fail(&format!("run from a protected copy of the runtime: {e}"));
        }
    }
    debug(|| {
        format!(
            "vessel-runtime {}: {}",
            env!("CARGO_PKG_VERSION"),
            std::env::args().collect::<Vec<_>>().join(" ")
        )
    });
    match run(cli) {
        Ok(code) => {
            debug(|| format!("done, exit code {code}"));
            std::process::exit(code)
        }
        Err(e) => fail(&format!("{e:#}")),
    }
}

fn run(cli: Cli) -> Result<i32> {
    if cli.systemd_cgroup && !Path::new("/run/systemd/system").exists() {
        bail!("--systemd-cgroup: systemd is not running on this host (no /run/systemd/system); use cgroupfs");
    }
    let root = cli.root;
    match cli.command {
        Command::Create(a) => {
            let created = create(&create_options(&root, a))?;
            debug(|| format!("created {}: init pid {}", created.state.id, created.pid));
            warn_shared_cgroup(&created.state);
            Ok(0)
        }
        Command::Start { id } => {
            container::start(&root, &id)?;
            Ok(0)
        }
        Command::Run {
            create: a,
            detach,
            keep,
            no_subreaper: _,
        } => run_container(&root, a, detach, keep),
        Command::State { id } => {
            let v = container::state(&root, &id)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(0)
        }
        Command::Kill { all, id, signal } => {
            let sig = container::parse_signal(&signal)?;
            debug(|| {
                format!(
                    "kill {id}: signal {sig}{}",
                    if all { " to all" } else { "" }
                )
            });
            container::kill(&root, &id, sig, all)?;
            Ok(0)
        }
        Command::Delete { force, id } => {
            container::delete(&root, &id, force)?;
            Ok(0)
        }
        Command::List { quiet, format } => {
            let list = container::list(&root)?;
            if quiet {
                for c in &list {
                    println!("{}", c.id);
                }
            } else if format == Format::Json {
                // runc prints `null` for no containers; callers decode either.
                if list.is_empty() {
                    println!("null");
                } else {
                    println!("{}", serde_json::to_string(&list)?);
                }
            } else {
                let mut rows = vec![["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
                    .map(String::from)
                    .to_vec()];
                for c in &list {
                    rows.push(vec![
                        c.id.clone(),
                        c.pid.to_string(),
                        c.status.clone(),
                        c.bundle.display().to_string(),
                        c.created.clone(),
                        if c.owner.is_empty() {
                            "root".into()
                        } else {
                            c.owner.clone()
                        },
                    ]);
                }
                print_table(&rows);
            }
            Ok(0)
        }
        Command::Ps {
            format,
            id,
            ps_args,
        } => {
            let pids = container::pids(&root, &id)?;
            if format == Format::Json {
                // runc prints `null` for no processes (a stopped container), as for `list`.
                if pids.is_empty() {
                    println!("null");
                } else {
                    println!("{}", serde_json::to_string(&pids)?);
                }
                return Ok(0);
            }
            let args = if ps_args.is_empty() {
                vec!["-ef".to_string()]
            } else {
                ps_args
            };
            let out = std::process::Command::new("ps")
                .args(&args)
                .output()
                .context("run ps")?;
            if !out.status.success() {
                bail!(
                    "ps {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let text = String::from_utf8_lossy(&out.stdout);
            let mut lines = text.lines();
            let header = lines.next().unwrap_or("");
            let col = header
                .split_whitespace()
                .position(|h| h == "PID")
                .context("ps output has no PID column")?;
            println!("{header}");
            for line in lines {
                if let Some(pid) = line
                    .split_whitespace()
                    .nth(col)
                    .and_then(|p| p.parse::<i32>().ok())
                {
                    if pids.contains(&pid) {
                        println!("{line}");
                    }
                }
            }
            Ok(0)
        }
        Command::Exec {
            process,
            tty,
            cwd,
            env,
            user,
            additional_gids,
            cap,
            no_new_privs,
            detach,
            pid_file,
            console_socket,
            preserve_fds,
            apparmor,
            process_label,
            cgroup,
            ignore_paused,
            id,
            args,
        } => {
            // Checked before anything else, as the other flags are.
            let sub_cgroups = parse_sub_cgroups(&cgroup)?;
            let mut proc = match process {
                Some(path) => {
                    let raw = if path == Path::new("-") {
                        let mut buf = Vec::new();
                        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
                        buf
                    } else {
                        std::fs::read(&path)
                            .with_context(|| format!("read --process {}", path.display()))?
                    };
                    parse_process_file(&path, &raw)?
                }
                None => {
                    if args.is_empty() {
                        bail!(
                            "no command given: name the program to run after the container \
                             id, or give --process FILE"
                        );
                    }
                    process_from_args(
                        &root,
                        &id,
                        &ExecArgs {
                            args: &args,
                            env: &env,
                            cwd: cwd.as_deref(),
                            user: user.as_deref(),
                            additional_gids: &additional_gids,
                            caps: &cap,
                            tty,
                            no_new_privs,
                        },
                    )?
                }
            };
            if let Some(a) = apparmor {
                proc.set_apparmor_profile(Some(a));
            }
            if let Some(l) = process_label {
                proc.set_selinux_label(Some(l));
            }
            let (pid, relay) = exec(&ExecOptions {
                root: root.clone(),
                id,
                process: proc,
                console_socket,
                relay_terminal: !detach,
                pid_file,
                detach,
                preserve_fds,
                ignore_paused,
                sub_cgroups,
            })?;
            debug(|| format!("exec: pid {pid}"));
            if detach {
                return Ok(0);
            }
            wait_relaying(pid, relay)
        }
        Command::Pause { id } => {
            container::pause(&root, &id)?;
            Ok(0)
        }
        Command::Resume { id } => {
            container::resume(&root, &id)?;
            Ok(0)
        }
        Command::Events {
            stats,
            interval,
            id,
        } => {
            let every = parse_duration(&interval)?;
            if stats {
                let (_, s) = container::stats(&root, &id)?;
                println!(
                    "{}",
                    serde_json::json!({"type": "stats", "id": id, "data": s})
                );
                return Ok(0);
            }
            container::events(&root, &id, every, &mut |event| {
                use vessel_runtime::error::Context as _;
                let line = match event {
                    container::Event::Stats(s) => {
                        serde_json::json!({"type": "stats", "id": id, "data": s})
                    }
                    container::Event::Oom => serde_json::json!({"type": "oom", "id": id}),
                };
                // One write per event, so a reader never sees half of one.
                let mut text = line.to_string();
                text.push('\n');
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes())
                    .and_then(|()| out.flush())
                    .ctx(|| "write an event to stdout")
            })?;
            Ok(0)
        }
        Command::Update(a) => {
            let res = update_resources(&a)?;
            container::update(&root, &a.id, &res)?;
            let rdt: Vec<(&str, &str)> = [
                ("--l3-cache-schema", a.l3_cache_schema.as_deref()),
                ("--mem-bw-schema", a.mem_bw_schema.as_deref()),
            ]
            .into_iter()
            .filter_map(|(f, v)| Some((f, v?)))
            .collect();
            container::update_intel_rdt(&root, &a.id, &rdt)?;
            Ok(0)
        }
        Command::Checkpoint(a) => {
            vessel_runtime::checkpoint::checkpoint(&checkpoint_options(&root, cli.criu, a)?)?;
            Ok(0)
        }
        Command::Restore(a) => restore_container(&root, cli.criu, a),
        Command::Features => {
            println!(
                "{}",
                serde_json::to_string_pretty(&vessel_runtime::features::features())?
            );
            Ok(0)
        }
        Command::Spec { bundle, rootless } => {
            let path = bundle.join("config.json");
            if path.exists() {
                bail!("{} already exists; remove it first", path.display());
            }
            let spec = vessel_runtime::template::default_spec(rootless);
            std::fs::write(&path, serde_json::to_string_pretty(&spec)? + "\n")
                .with_context(|| format!("write {}", path.display()))?;
            Ok(0)
        }
    }
}

/// The CRIU switches `checkpoint` and `restore` share (runc's names).
#[derive(clap::Args)]
struct CriuArgs {
    /// Path to the CRIU image files (default: ./checkpoint).
    #[arg(long = "image-path")]
    image_path: Option<PathBuf>,
    /// Path for CRIU's work files and logs (default: the image path).
    #[arg(long = "work-path")]
    work_path: Option<PathBuf>,
    /// Allow open TCP connections.
    #[arg(long = "tcp-established")]
    tcp_established: bool,
    /// Allow external unix sockets.
    #[arg(long = "ext-unix-sk")]
    ext_unix_sk: bool,
    /// Allow shell jobs.
    #[arg(long = "shell-job")]
    shell_job: bool,
    /// Handle file locks.
    #[arg(long = "file-locks")]
    file_locks: bool,
    /// cgroups mode: soft (default), full, strict or ignore.
    #[arg(long = "manage-cgroups-mode")]
    manage_cgroups_mode: Option<String>,
}

#[derive(clap::Args)]
struct CheckpointArgs {
    #[command(flatten)]
    criu: CriuArgs,
    /// Leave the container running after checkpointing.
    #[arg(long = "leave-running")]
    leave_running: bool,
    id: String,
}

#[derive(clap::Args)]
struct RestoreArgs {
    #[command(flatten)]
    criu: CriuArgs,
    /// Path to the bundle (the directory with config.json).
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    /// Do not wait for the restored container.
    #[arg(short, long)]
    detach: bool,
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    #[arg(long = "no-pivot")]
    no_pivot: bool,
    id: String,
}

/// --image-path (runc's default: ./checkpoint), --work-path and the CRIU switches.
fn criu_paths_and_flags(
    a: CriuArgs,
) -> Result<(
    PathBuf,
    Option<PathBuf>,
    vessel_runtime::checkpoint::CriuFlags,
)> {
    let image_path = match a.image_path {
        Some(p) => p,
        None => std::env::current_dir()
            .context("the current directory (for the default --image-path)")?
            .join("checkpoint"),
    };
    let mode = a
        .manage_cgroups_mode
        .as_deref()
        .map(vessel_runtime::checkpoint::CgroupsMode::parse)
        .transpose()?;
    let flags = vessel_runtime::checkpoint::CriuFlags {
        tcp_established: a.tcp_established,
        ext_unix_sk: a.ext_unix_sk,
        shell_job: a.shell_job,
        file_locks: a.file_locks,
        manage_cgroups_mode: mode,
    };
    Ok((image_path, a.work_path, flags))
}

fn checkpoint_options(
    root: &Path,
    criu: PathBuf,
    a: CheckpointArgs,
) -> Result<vessel_runtime::checkpoint::CheckpointOptions> {
    let (image_path, work_path, flags) = criu_paths_and_flags(a.criu)?;
    Ok(vessel_runtime::checkpoint::CheckpointOptions {
        root: root.to_path_buf(),
        id: a.id,
        criu,
        image_path,
        work_path,
        leave_running: a.leave_running,
        flags,
    })
}

/// As runc: in the foreground, wait for the restored container (relaying its terminal) and
/// delete it once it exits, with its exit code as ours.
fn restore_container(root: &Path, criu: PathBuf, a: RestoreArgs) -> Result<i32> {
    let (image_path, work_path, flags) = criu_paths_and_flags(a.criu)?;
    let id = a.id.clone();
    let detach = a.detach;
    let restored =
        vessel_runtime::checkpoint::restore(&vessel_runtime::checkpoint::RestoreOptions {
            root: root.to_path_buf(),
            id: a.id,
            bundle: a.bundle,
            criu,
            image_path,
            work_path,
            flags,
            console_socket: a.console_socket,
            relay_terminal: !detach,
            pid_file: a.pid_file,
            no_pivot: a.no_pivot,
        })?;
    if detach {
        return Ok(0);
    }
    let code = wait_relaying(restored.pid, restored.relay)?;
    container::delete(root, &id, true)?;
    Ok(code)
}

fn create_options(root: &Path, a: CreateArgs) -> CreateOptions {
    CreateOptions {
        root: root.to_path_buf(),
        id: a.id,
        bundle: a.bundle,
        console_socket: a.console_socket,
        relay_terminal: false,
        pid_file: a.pid_file,
        no_pivot: a.no_pivot,
        no_new_keyring: a.no_new_keyring,
        preserve_fds: a.preserve_fds,
    }
}

fn run_container(root: &Path, a: CreateArgs, detach: bool, keep: bool) -> Result<i32> {
    let id = a.id.clone();
    let mut opts = create_options(root, a);
    opts.relay_terminal = !detach;
    let created = create(&opts)?;
    debug(|| format!("created {id}: init pid {}", created.pid));
    warn_shared_cgroup(&created.state);
    let pid = created.pid;
    let relay = created.relay;
    let started = container::start_loaded(&created.dir, &created.state);
    drop(created.dir);
    if let Err(e) = started {
        let _ = container::delete(root, &id, true);
        return Err(e.into());
    }
    if detach {
        return Ok(0);
    }
    let code = wait_relaying(pid, relay)?;
    if !keep {
        container::delete(root, &id, true)?;
    }
    Ok(code)
}

/// Wait for our foreground child, relaying its terminal meanwhile if it has one.
fn wait_relaying(pid: i32, relay: Option<TtyRelay>) -> Result<i32> {
    let relaying = relay.map(TtyRelay::start).transpose()?;
    let code = wait_forwarding_signals(pid);
    if let Some(r) = relaying {
        r.finish();
    }
    Ok(code)
}

static FORWARD_TO: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    // With a relayed terminal, a window change resizes the pty (which signals the container).
    if sig == libc::SIGWINCH && vessel_runtime::tty_relay::resize_on_sigwinch() {
        return;
    }
    let pid = FORWARD_TO.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Wait for our child `pid`, passing on the signals a foreground runtime receives, as runc
/// does. Returns its exit code (128+N for death by signal N).
fn wait_forwarding_signals(pid: i32) -> i32 {
    FORWARD_TO.store(pid, Ordering::Relaxed);
    for sig in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGWINCH,
    ] {
        // SAFETY: installing a handler that only calls kill().
        unsafe { libc::signal(sig, forward as *const () as libc::sighandler_t) };
    }
    loop {
        match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => return code,
            Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 255,
        }
    }
}

fn print_table(rows: &[Vec<String>]) {
    let cols = rows.first().map(|r| r.len()).unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == cols {
                    c.clone()
                } else {
                    format!("{c:<w$}", w = widths[i] + 3)
                }
            })
            .collect();
        println!("{}", line.join(""));
    }
}

fn parse_duration(s: &str) -> Result<Duration> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: f64 = num
        .parse()
        .with_context(|| format!("--interval {s:?}: not a duration"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => bail!("--interval {s:?}: unknown unit {unit:?} (ms, s, m, h)"),
    };
    if secs <= 0.0 {
        bail!("--interval {s:?}: must be positive");
    }
    // The longest Go's time.Duration (so runc) takes: 2562047h47m16.854775807s.
    let max = Duration::from_nanos(i64::MAX as u64);
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if d <= max => Ok(d),
        _ => bail!("--interval {s:?}: too long (at most 2562047h, as runc)"),
    }
}

/// "512m", "1g", "1024" → bytes; "-1" stays -1 (unlimited).
fn parse_size(flag: &str, s: &str) -> Result<i64> {
    if s == "-1" {
        return Ok(-1);
    }
    let lower = s.to_ascii_lowercase();
    let trimmed = lower.trim_end_matches('b');
    let (num, mult) = match trimmed.chars().last() {
        Some('k') => (&trimmed[..trimmed.len() - 1], 1i64 << 10),
        Some('m') => (&trimmed[..trimmed.len() - 1], 1 << 20),
        Some('g') => (&trimmed[..trimmed.len() - 1], 1 << 30),
        Some('t') => (&trimmed[..trimmed.len() - 1], 1 << 40),
        _ => (trimmed, 1),
    };
    let n: i64 = num
        .parse()
        .with_context(|| format!("{flag} {s:?}: not a size"))?;
    n.checked_mul(mult)
        .with_context(|| format!("{flag} {s:?}: too large"))
}

fn update_resources(a: &UpdateArgs) -> Result<oci_spec::runtime::LinuxResources> {
    use oci_spec::runtime::*;
    let mut res: LinuxResources = match &a.resources {
        Some(p) => {
            let raw = if p == Path::new("-") {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
                buf
            } else {
                std::fs::read(p).with_context(|| format!("read --resources {}", p.display()))?
            };
            let de = &mut serde_json::Deserializer::from_slice(&raw);
            serde_path_to_error::deserialize(de)
                .map_err(|e| anyhow::anyhow!("--resources: {}: {}", e.path(), e.inner()))?
        }
        None => LinuxResources::default(),
    };
    let mut mem = res.memory().unwrap_or_default();
    let mut mem_set = res.memory().is_some();
    if let Some(v) = &a.memory {
        mem.set_limit(Some(parse_size("--memory", v)?));
        mem_set = true;
    }
    if let Some(v) = &a.memory_reservation {
        mem.set_reservation(Some(parse_size("--memory-reservation", v)?));
        mem_set = true;
    }
    if let Some(v) = &a.memory_swap {
        mem.set_swap(Some(parse_size("--memory-swap", v)?));
        mem_set = true;
    }
    if let Some(v) = &a.kernel_memory_tcp {
        mem.set_kernel_tcp(Some(parse_size("--kernel-memory-tcp", v)?));
        mem_set = true;
    }
    let _ = &a.kernel_memory; // obsolete since Linux 5.4; accepted and ignored like runc 1.1.
    if mem_set {
        res.set_memory(Some(mem));
    }
    let mut cpu = res.cpu().clone().unwrap_or_default();
    let mut cpu_set = res.cpu().is_some();
    if let Some(v) = a.cpu_shares {
        cpu.set_shares(Some(v));
        cpu_set = true;
    }
    if let Some(v) = a.cpu_period {
        cpu.set_period(Some(v));
        cpu_set = true;
    }
    if let Some(v) = a.cpu_quota {
        cpu.set_quota(Some(v));
        cpu_set = true;
    }
    if let Some(v) = a.cpu_rt_period {
        cpu.set_realtime_period(Some(v));
        cpu_set = true;
    }
    if let Some(v) = a.cpu_rt_runtime {
        cpu.set_realtime_runtime(Some(v));
        cpu_set = true;
    }
    if let Some(v) = &a.cpuset_cpus {
        cpu.set_cpus(Some(v.clone()));
        cpu_set = true;
    }
    if let Some(v) = &a.cpuset_mems {
        cpu.set_mems(Some(v.clone()));
        cpu_set = true;
    }
    if cpu_set {
        res.set_cpu(Some(cpu));
    }
    if let Some(w) = a.blkio_weight {
        let mut b = res.block_io().clone().unwrap_or_default();
        b.set_weight(Some(w));
        res.set_block_io(Some(b));
    }
    if let Some(l) = a.pids_limit {
        let mut p = LinuxPids::default();
        p.set_limit(l);
        res.set_pids(Some(p));
    }
    Ok(res)
}

/// runc 1.1's warning for a container created into a cgroup that already holds processes
/// (a cgroup it shares): its limits and `kill --all` then reach them too.
fn warn_shared_cgroup(st: &vessel_runtime::state::State) {
    match container::foreign_processes(st) {
        Ok(0) => {}
        Ok(n) => warn(&format!(
            "container's cgroup is not empty: {n} process(es) found (cgroup {}); they share \
             its limits, and `kill --all` reaches them",
            st.cgroups_path.display()
        )),
        Err(e) => debug(|| format!("count the processes in the new cgroup: {e}")),
    }
}

/// --process FILE: a runtime-spec process object. As runc, "user" may be left out (uid and
/// gid 0, root in the container's user namespace) and unknown capability names are ignored
/// with a warning; everything else is checked by field.
fn parse_process_file(path: &Path, raw: &[u8]) -> Result<oci_spec::runtime::Process> {
    let name = path.display();
    let mut v: serde_json::Value = {
        let de = &mut serde_json::Deserializer::from_slice(raw);
        serde_path_to_error::deserialize(de)
            .map_err(|e| anyhow::anyhow!("--process {name}: {}: {}", e.path(), e.inner()))?
    };
    let Some(obj) = v.as_object_mut() else {
        bail!("--process {name}: must be a JSON object (a runtime-spec process)");
    };
    obj.entry("user")
        .or_insert_with(|| serde_json::json!({"uid": 0, "gid": 0}));
    if let Some(caps) = obj.get_mut("capabilities") {
        vessel_runtime::spec::drop_unknown_caps(caps);
    }
    serde_path_to_error::deserialize::<_, oci_spec::runtime::Process>(v).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." {
            String::new()
        } else {
            format!("process.{field}: ")
        };
        anyhow::anyhow!("--process {name}: {field}{}", e.inner())
    })
}

/// runc's `exec --cgroup` arguments: one PATH alone (every hierarchy; the only form on
/// cgroup v2), or any number of CONTROLLER[,CONTROLLER...]:PATH. As runc 1.2 (stricter than
/// 1.1, which took an empty or repeated controller silently): a controller given twice, an
/// empty one, or a bare PATH next to others is refused.
fn parse_sub_cgroups(args: &[String]) -> Result<Vec<(Vec<String>, String)>> {
    let mut out: Vec<(Vec<String>, String)> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for a in args {
        match a.split_once(':') {
            Some((ctrls, path)) => {
                let mut list = Vec::new();
                for c in ctrls.split(',') {
                    if c.is_empty() {
                        bail!("--cgroup {a:?}: empty controller name before \":\"");
                    }
                    if seen.iter().any(|s| s == c) {
                        bail!("--cgroup {a:?}: controller {c:?} given more than once");
                    }
                    seen.push(c.to_string());
                    list.push(c.to_string());
                }
                out.push((list, path.to_string()));
            }
            None => {
                if args.len() != 1 {
                    bail!(
                        "--cgroup {a:?}: a path without a \"controller:\" prefix means every \
                         hierarchy and cannot be combined with other --cgroup flags"
                    );
                }
                out.push((Vec::new(), a.clone()));
            }
        }
    }
    Ok(out)
}

/// The runtime's own version, the runtime-spec version it implements and the libseccomp
/// it runs with, in runc's `--version` line layout (which go-runc and podman parse).
fn version_text() -> String {
    format!(
        "vessel-runtime version {}\nspec: {}\nlibseccomp: {}",
        env!("CARGO_PKG_VERSION"),
        vessel_runtime::features::OCI_VERSION_MAX,
        libseccomp_version()
    )
}

#[repr(C)]
struct ScmpVersion {
    major: libc::c_uint,
    minor: libc::c_uint,
    micro: libc::c_uint,
}

extern "C" {
    // libseccomp's own version query; the library is linked in through vessel-seccomp.
    fn seccomp_version() -> *const ScmpVersion;
}

fn libseccomp_version() -> String {
    // SAFETY: seccomp_version() takes no arguments and returns a pointer to a static struct
    // inside libseccomp (or NULL), never freed.
    let v = unsafe { seccomp_version() };
    // SAFETY: non-null, it points to libseccomp's static version struct.
    match unsafe { v.as_ref() } {
        Some(v) => format!("{}.{}.{}", v.major, v.minor, v.micro),
        None => "unknown".into(),
    }
}

/// The command line: clap's definitions above, dressed in runc's layout — `-v/--version`
/// printing the version block, `help` with NAME / USAGE / VERSION / COMMANDS / GLOBAL
/// OPTIONS sections, `help CMD` with NAME / USAGE / OPTIONS, the positional container id
/// shown as <container-id> — and runc's exit codes for bad usage: 1, and 3 for an unknown
/// command.
fn cli_command() -> clap::Command {
    let mut cmd = Cli::command().disable_version_flag(true).arg(
        clap::Arg::new("version")
            .short('v')
            .short_alias('V')
            .long("version")
            .action(clap::ArgAction::Version)
            .help("Print the version"),
    );
    cmd = cmd.version(env!("CARGO_PKG_VERSION"));
    // The global options are listed once, in the top-level help, as runc's; clap would
    // repeat them in every subcommand's OPTIONS.
    let globals: Vec<clap::Id> = cmd
        .get_arguments()
        .filter(|a| a.is_global_set() && !a.is_hide_set())
        .map(|a| a.get_id().clone())
        .collect();
    let mut rows: Vec<(String, String)> = cmd
        .get_arguments()
        .filter(|a| (a.is_global_set() || a.get_id() == "version") && !a.is_hide_set())
        .map(option_row)
        .collect();
    rows.push(("--help, -h".into(), "Show help".into()));
    let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let global_text: String = rows
        .iter()
        .map(|(l, h)| format!("   {l:<width$}  {h}\n"))
        .collect();
    // mut_args, not mut_arg: that one moves the argument to the end, which would renumber
    // positionals.
    cmd = cmd.mut_args(|a| {
        if globals.contains(a.get_id()) {
            a.hide(true)
        } else {
            a
        }
    });
    let about = cmd.get_about().map(|a| a.to_string()).unwrap_or_default();
    let version = version_text();
    let version = version
        .strip_prefix("vessel-runtime version ")
        .unwrap_or(&version);
    cmd = cmd.help_template(format!(
        "NAME:\n   vessel-runtime - {about}\n\nUSAGE:\n   vessel-runtime [global options] \
         command [command options] [arguments...]\n\nVERSION:\n   {version}\n\n\
         COMMANDS:\n{{subcommands}}\n\nGLOBAL OPTIONS:\n{global_text}"
    ));
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for name in names {
        cmd = cmd.mut_subcommand(name, |s| {
            // The subcommands' help in runc's layout (NAME, USAGE, OPTIONS).
            let template = format!(
                "NAME:\n   vessel-runtime {} - {{about}}\n\nUSAGE:\n   {{usage}}\n\nOPTIONS:\n\
                 {{options}}\n",
                s.get_name()
            );
            s.help_template(template).mut_args(|a| {
                if a.get_id() == "id" {
                    a.value_name("container-id")
                } else {
                    a
                }
            })
        });
    }
    cmd
}

/// One line of the GLOBAL OPTIONS list, as urfave/cli (runc) writes it: "--name value"
/// and the help with its default.
fn option_row(a: &clap::Arg) -> (String, String) {
    let takes_value = !matches!(
        a.get_action(),
        clap::ArgAction::SetTrue | clap::ArgAction::SetFalse | clap::ArgAction::Version
    );
    let mut left = format!("--{}", a.get_long().unwrap_or(a.get_id().as_str()));
    if takes_value {
        left.push_str(" value");
    }
    if let Some(s) = a.get_short() {
        left.push_str(&format!(", -{s}"));
    }
    let mut help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
    let defaults: Vec<String> = a
        .get_default_values()
        .iter()
        .map(|d| d.to_string_lossy().into_owned())
        .collect();
    if takes_value && !defaults.is_empty() {
        help.push_str(&format!(" (default: {:?})", defaults.join(",")));
    }
    (left, help)
}

/// Parse the command line, answering --help and --version and refusing bad usage with
/// runc's exit codes.
fn parse_cli() -> Cli {
    use clap::error::ErrorKind;
    let mut cmd = cli_command();
    let matches = cmd.try_get_matches_from_mut(std::env::args_os());
    let parsed = matches.and_then(|m| Cli::from_arg_matches(&m));
    match parsed {
        Ok(cli) => cli,
        Err(e) => {
            let code = match e.kind() {
                ErrorKind::DisplayVersion => {
                    println!("{}", version_text());
                    std::process::exit(0);
                }
                ErrorKind::DisplayHelp | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => 0,
                // urfave/cli (runc) answers an unknown command with 3.
                ErrorKind::InvalidSubcommand => 3,
                _ => 1,
            };
            let _ = e.print();
            std::process::exit(code);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn sub_cgroup_flags() {
        let v = |a: &[&str]| {
            super::parse_sub_cgroups(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(v(&["sub"]).unwrap(), [(vec![], "sub".to_string())]);
        assert_eq!(
            v(&["pids,memory:a", "cpu:b"]).unwrap(),
            [
                (
                    vec!["pids".to_string(), "memory".to_string()],
                    "a".to_string()
                ),
                (vec!["cpu".to_string()], "b".to_string())
            ]
        );
        for (bad, why) in [
            (&[":a"][..], "empty controller"),
            (&["pids:a", "pids:b"], "more than once"),
            (&["a", "pids:b"], "every hierarchy"),
        ] {
            let e = v(bad).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("--cgroup"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn process_file_user_defaults_to_root() {
        let p = std::path::Path::new("p.json");
        let proc = super::parse_process_file(p, br#"{"args": ["true"], "cwd": "/"}"#).unwrap();
        assert_eq!((proc.user().uid(), proc.user().gid()), (0, 0));
        let e = super::parse_process_file(p, br#"{"args": "true", "cwd": "/"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("p.json") && e.contains("process.args"), "{e}");
        let e = super::parse_process_file(p, b"[]").unwrap_err().to_string();
        assert!(e.contains("JSON object"), "{e}");
        let proc = super::parse_process_file(
            p,
            br#"{"args": ["true"], "cwd": "/", "capabilities": {"bounding": ["CAP_CHOWN", "CAP_NOT_A_CAP"]}}"#,
        )
        .unwrap();
        let bounding = proc
            .capabilities()
            .as_ref()
            .and_then(|c| c.bounding().clone());
        assert_eq!(bounding.map(|b| b.len()), Some(1));
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5m").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(
            parse_duration("2562047h").unwrap(),
            Duration::from_secs(2562047 * 3600)
        );
        let huge = format!("1{}", "0".repeat(400));
        for (bad, why) in [
            ("0s", "must be positive"),
            ("s", "not a duration"),
            ("5d", "unknown unit"),
            ("2562048h", "too long"),
            ("99999999999999999999h", "too long"),
            // Parses as f64 infinity: from_secs_f64 would panic.
            (huge.as_str(), "too long"),
        ] {
            let err = parse_duration(bad).map(|_| ()).unwrap_err().to_string();
            assert!(
                err.contains(why) && err.contains("--interval"),
                "{bad}: {err}"
            );
        }
    }
}
