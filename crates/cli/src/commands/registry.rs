//! Registry commands: `pull`, `push`, `login`, `logout`.

use std::collections::HashMap;
use std::io::{IsTerminal, Read};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use vessel_image::manifest::Platform;
use vessel_image::reference::familiar;
use vessel_image::registry::auth;
use vessel_image::registry::mirrors::RegistriesConfig;
use vessel_image::registry::pull::{self, Progress, PullEvent, PullOptions};
use vessel_image::registry::push::{self, PushEvent, PushProgress};
use vessel_image::registry::{Client, Credentials, RegistryOptions, TlsVerify};
use vessel_image::store::Store;
use vessel_image::{Digest, Reference};

#[derive(Args, Debug, Clone)]
pub struct RegistryArgs {
    /// Require HTTPS and verify certificates. Unset: docker's rule (loopback and
    /// insecure-registries are exempt); --tls-verify=true: every registry, those included
    #[arg(
        long,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    tls_verify: Option<bool>,
    /// Use certificates at DIR (*.crt CAs, *.cert/*.key client pairs) for the registry,
    /// instead of certs.d/<host[:port]>/
    #[arg(long, value_name = "DIR")]
    cert_dir: Option<std::path::PathBuf>,
    /// Path of the authentication file (default: docker's config.json)
    #[arg(long, env = "REGISTRY_AUTH_FILE")]
    authfile: Option<std::path::PathBuf>,
}

impl RegistryArgs {
    fn options(&self, conf: &RegistriesConfig) -> RegistryOptions {
        RegistryOptions {
            tls_verify: match self.tls_verify {
                None => TlsVerify::Default,
                Some(true) => TlsVerify::Always,
                Some(false) => TlsVerify::Never,
            },
            insecure_registries: conf.insecure.clone(),
            cert_dir: self.cert_dir.clone(),
            auth_file: self.authfile.clone(),
            ..RegistryOptions::default()
        }
    }
}

/// Adds what the user can do about an untrusted certificate; the library only says what
/// it trusted.
fn hint(e: vessel_image::Error) -> anyhow::Error {
    match e {
        vessel_image::Error::UntrustedCertificate { .. } => anyhow::anyhow!(
            "{e}\nTrust the registry's CA with --cert-dir DIR (DIR/ca.crt) or {}/<host:port>/ca.crt, or skip verification with --tls-verify=false",
            vessel_image::registry::tls::default_certs_d()
                .first()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "certs.d".into())
        ),
        e => e.into(),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// Download all tagged images in the repository
    #[arg(short = 'a', long)]
    all_tags: bool,
    /// Suppress verbose output
    #[arg(short, long)]
    quiet: bool,
    /// Set platform if server is multi-platform capable
    #[arg(long)]
    platform: Option<String>,
    #[command(flatten)]
    registry: RegistryArgs,
    name: String,
}

/// docker-style per-layer lines: bars on a terminal, one line per finished layer otherwise.
struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<Digest, ProgressBar>>,
    tty: bool,
    quiet: bool,
}

impl Bars {
    fn new(quiet: bool) -> Self {
        let tty = std::io::stdout().is_terminal() && !quiet;
        let multi = MultiProgress::with_draw_target(if tty {
            ProgressDrawTarget::stdout()
        } else {
            ProgressDrawTarget::hidden()
        });
        Bars {
            multi,
            bars: Mutex::new(HashMap::new()),
            tty,
            quiet,
        }
    }

    fn line(&self, s: String) {
        if self.quiet {
            return;
        }
        if self.tty {
            let _ = self.multi.println(s);
        } else {
            println!("{s}");
        }
    }
}

impl Progress for Bars {
    fn event(&self, e: PullEvent) {
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        match e {
            PullEvent::Resolved { reference } => {
                let what = reference
                    .tag()
                    .map(str::to_string)
                    .unwrap_or_else(|| reference.manifest_reference());
                self.line(format!("{what}: Pulling from {}", reference.path()));
            }
            PullEvent::LayerExists { digest } => {
                self.line(format!("{}: Already exists", digest.short()))
            }
            PullEvent::LayerQueued { digest, size } => {
                if self.tty {
                    let pb = self.multi.add(ProgressBar::new(size));
                    pb.set_style(
                        ProgressStyle::with_template(
                            "{prefix}: {msg} [{bar:40}] {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                    pb.set_prefix(digest.short().to_string());
                    pb.set_message("Waiting");
                    bars.insert(digest, pb);
                }
            }
            PullEvent::LayerStart { digest, .. } => {
                if let Some(pb) = bars.get(&digest) {
                    pb.reset_elapsed();
                    pb.set_message("Downloading");
                    pb.enable_steady_tick(Duration::from_millis(200));
                }
            }
            PullEvent::LayerProgress { digest, done, .. } => {
                if let Some(pb) = bars.get(&digest) {
                    pb.set_position(done);
                }
            }
            PullEvent::LayerDone { digest } => {
                if let Some(pb) = bars.remove(&digest) {
                    pb.finish_and_clear();
                }
                self.line(format!("{}: Pull complete", digest.short()));
            }
            PullEvent::Done { .. } => {}
        }
    }
}

pub fn pull(a: PullArgs, store: Store) -> Result<ExitCode> {
    let store = Arc::new(store);
    let reference = Reference::parse(&a.name)?;
    let platform = a.platform.as_deref().map(Platform::parse).transpose()?;
    let mirrors = RegistriesConfig::load_default()?;
    let opts = PullOptions {
        registry: a.registry.options(&mirrors),
        platform,
        mirrors,
        ..PullOptions::default()
    };
    let explicit_tag = a
        .name
        .rsplit_once(':')
        .is_some_and(|(_, t)| !t.contains('/'))
        || a.name.contains('@');
    let rt = runtime()?;
    let refs: Vec<Reference> = if a.all_tags {
        if reference.digest().is_some() || explicit_tag {
            bail!("tag can't be used with --all-tags/-a");
        }
        let tags = rt
            .block_on(async {
                let c = Client::connect(
                    reference.registry_host(),
                    reference.path(),
                    false,
                    &opts.registry,
                )
                .await?;
                c.tags().await
            })
            .map_err(hint)?;
        tags.iter()
            .map(|t| reference.with_tag(t))
            .collect::<vessel_image::Result<_>>()?
    } else {
        if !explicit_tag && !a.quiet {
            println!("Using default tag: latest");
        }
        vec![reference]
    };
    for r in refs {
        let bars = Arc::new(Bars::new(a.quiet));
        let res = rt
            .block_on(pull::pull(store.clone(), &r, &opts, bars.clone()))
            .map_err(hint)?;
        let shown = match (r.tag(), r.digest()) {
            (_, Some(d)) => format!("{}@{d}", r.familiar_repository()),
            (Some(t), None) => format!("{}:{t}", r.familiar_repository()),
            _ => r.familiar_repository(),
        };
        if !a.quiet {
            println!("Digest: {}", res.digest);
            if res.fresh {
                println!("Status: Downloaded newer image for {shown}");
            } else {
                println!("Status: Image is up to date for {shown}");
            }
        }
        println!("{r}");
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// Suppress verbose output
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    registry: RegistryArgs,
    name: String,
}

struct PushLines {
    quiet: bool,
}

impl PushProgress for PushLines {
    fn event(&self, e: PushEvent) {
        if self.quiet {
            return;
        }
        match e {
            PushEvent::Preparing { repository } => {
                println!("The push refers to repository [{repository}]")
            }
            PushEvent::BlobExists { digest } => {
                println!("{}: Layer already exists", digest.short())
            }
            PushEvent::BlobMounted { digest, from } => {
                println!("{}: Mounted from {from}", digest.short())
            }
            PushEvent::BlobPushed { digest } => println!("{}: Pushed", digest.short()),
            PushEvent::Done { tag, digest, size } => {
                println!("{tag}: digest: {digest} size: {size}")
            }
        }
    }
}

pub fn push(a: PushArgs, store: Store) -> Result<ExitCode> {
    let store = Arc::new(store);
    let target = Reference::parse(&a.name)?;
    let progress = Arc::new(PushLines { quiet: a.quiet });
    let opts = a.registry.options(&RegistriesConfig::load_default()?);
    let digest = runtime()?
        .block_on(push::push(store, &a.name, &target, &opts, progress))
        .map_err(hint)?;
    if a.quiet {
        println!("{}@{digest}", target.repository());
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// Username
    #[arg(short, long)]
    username: Option<String>,
    /// Password
    #[arg(short, long)]
    password: Option<String>,
    /// Take the password from stdin
    #[arg(long)]
    password_stdin: bool,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Registry (default: Docker Hub)
    server: Option<String>,
}

fn server_host(s: Option<&str>) -> String {
    let s = s.unwrap_or("docker.io");
    let s = s
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let s = s.split('/').next().unwrap_or(s);
    match s {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        s => s.to_string(),
    }
}

pub fn login(a: LoginArgs) -> Result<ExitCode> {
    let host = server_host(a.server.as_deref());
    let path = a.registry.authfile.clone().unwrap_or_else(auth::auth_file);
    if a.password_stdin && a.username.is_none() {
        bail!("Must provide --username with --password-stdin");
    }
    // As docker: what the flags and stdin do not give is asked for on the terminal.
    let need_prompt = a.username.is_none() || (a.password.is_none() && !a.password_stdin);
    if need_prompt && !crate::prompt::interactive() {
        bail!("Cannot perform an interactive login from a non TTY device");
    }
    let username = match a.username.clone() {
        Some(u) => u,
        None => {
            let stored = auth::lookup(&path, &host)
                .ok()
                .flatten()
                .map(|c| c.username);
            let asked = crate::prompt::line(&match &stored {
                Some(u) => format!("Username ({u}): "),
                None => "Username: ".into(),
            })?;
            match (asked.trim(), stored) {
                ("", Some(u)) => u,
                ("", None) => bail!("Non-null Username Required"),
                (u, _) => u.to_string(),
            }
        }
    };
    let password = if a.password_stdin {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s.trim_end_matches(['\n', '\r']).to_string()
    } else {
        match a.password.clone() {
            Some(p) => p,
            None => crate::prompt::secret("Password: ")?,
        }
    };
    if password.is_empty() {
        bail!("Password Required");
    }
    if a.password.is_some() {
        eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
    }
    let creds = Credentials { username, password };
    let mut opts = a.registry.options(&RegistriesConfig::load_default()?);
    opts.credentials = Some(creds.clone());
    let api_host = if host == "docker.io" {
        "registry-1.docker.io".to_string()
    } else {
        host.clone()
    };
    // Credentials are checked against the registry before they are saved.
    runtime()?
        .block_on(async {
            Client::connect(&api_host, "vessel-login-check", false, &opts)
                .await
                .map(|_| ())
        })
        .map_err(hint)
        .with_context(|| format!("login to {host} failed"))?;
    auth::store(&path, &host, Some(&creds))?;
    println!("Login Succeeded");
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct LogoutArgs {
    /// Path of the authentication file
    #[arg(long, env = "REGISTRY_AUTH_FILE")]
    authfile: Option<std::path::PathBuf>,
    server: Option<String>,
}

pub fn logout(a: LogoutArgs) -> Result<ExitCode> {
    let host = server_host(a.server.as_deref());
    let path = a.authfile.clone().unwrap_or_else(auth::auth_file);
    if auth::store(&path, &host, None)? {
        println!("Removing login credentials for {}", familiar(&host));
    } else {
        println!("Not logged in to {host}");
    }
    Ok(ExitCode::SUCCESS)
}
