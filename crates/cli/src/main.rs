//! `vessel`: the docker-compatible command line. Parsing, tables, JSON and progress bars
//! only; the work is done by the library crates. One module per command group under
//! `commands/`, so the engine's `run`, `ps`, … sit beside the image commands.

mod commands;
mod format;
mod prompt;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "vessel",
    version,
    about = "A daemonless, Docker-compatible container engine"
)]
pub struct Cli {
    /// Root of persistent state (images, snapshots, containers)
    #[arg(
        long,
        global = true,
        env = "VESSEL_ROOT",
        default_value = "/var/lib/vessel"
    )]
    pub root: PathBuf,
    /// Root of runtime state (sockets, locks)
    #[arg(
        long,
        global = true,
        env = "VESSEL_RUNROOT",
        default_value = "/run/vessel"
    )]
    pub runroot: PathBuf,
    /// Log level (error, warn, info, debug, trace)
    #[arg(long, global = true, env = "VESSEL_LOG", default_value = "warn")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Manage images
    #[command(subcommand)]
    Image(commands::image::ImageCommand),
    /// List images
    Images(commands::image::ListArgs),
    /// Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE
    Tag(commands::image::TagArgs),
    /// Remove one or more images
    Rmi(commands::image::RmiArgs),
    /// Import the contents from a tarball to create a filesystem image
    Import(commands::image::ImportArgs),
    /// Show the history of an image
    History(commands::image::HistoryArgs),
    /// Download an image from a registry
    Pull(commands::registry::PullArgs),
    /// Upload an image to a registry
    Push(commands::registry::PushArgs),
    /// Log in to a registry
    Login(commands::registry::LoginArgs),
    /// Log out from a registry
    Logout(commands::registry::LogoutArgs),
    /// Save one or more images to a tar archive (streamed to STDOUT by default)
    Save(commands::image::SaveArgs),
    /// Load an image from a tar archive or STDIN
    Load(commands::image::LoadArgs),
    /// Return low-level information on objects
    Inspect(commands::image::InspectArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log_level))
        .with_writer(std::io::stderr)
        .init();
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::from(125)
        }
    }
}
