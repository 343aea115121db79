pub mod image;
pub mod registry;

use std::process::ExitCode;

use anyhow::Result;
use vessel_image::store::Store;

use crate::{Cli, Command};

pub fn run(cli: Cli) -> Result<ExitCode> {
    let open = || -> Result<Store> { Ok(Store::open(&cli.root)?) };
    match cli.command {
        Command::Image(c) => image::run(c, open()?),
        Command::Images(a) => image::list(a, &open()?),
        Command::Tag(a) => image::tag(a, &open()?),
        Command::Rmi(a) => image::rmi(a, &open()?),
        Command::Import(a) => image::import(a, open()?),
        Command::History(a) => image::history(a, &open()?),
        Command::Save(a) => image::save(a, &open()?),
        Command::Load(a) => image::load(a, &open()?),
        Command::Inspect(a) => image::inspect(a, &open()?),
        Command::Pull(a) => registry::pull(a, open()?),
        Command::Push(a) => registry::push(a, open()?),
        Command::Login(a) => registry::login(a),
        Command::Logout(a) => registry::logout(a),
    }
}
