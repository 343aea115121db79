//! Registry commands: `pull`, `push`, `login`, `logout`.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;
use vessel_image::store::Store;

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
    /// Require HTTPS and verify certificates when contacting registries
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    tls_verify: bool,
    name: String,
}

pub fn pull(_a: PullArgs, _store: &Store) -> Result<ExitCode> {
    bail!("pull is not implemented yet")
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// Suppress verbose output
    #[arg(short, long)]
    quiet: bool,
    name: String,
}

pub fn push(_a: PushArgs, _store: &Store) -> Result<ExitCode> {
    bail!("push is not implemented yet")
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    #[arg(short, long)]
    username: Option<String>,
    #[arg(short, long)]
    password: Option<String>,
    #[arg(long)]
    password_stdin: bool,
    server: Option<String>,
}

pub fn login(_a: LoginArgs) -> Result<ExitCode> {
    bail!("login is not implemented yet")
}

#[derive(Args, Debug)]
pub struct LogoutArgs {
    server: Option<String>,
}

pub fn logout(_a: LogoutArgs) -> Result<ExitCode> {
    bail!("logout is not implemented yet")
}
