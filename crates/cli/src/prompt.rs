//! Interactive prompts on the terminal, as `docker login` asks for a username and a
//! password: the password with echo turned off, restored whatever happens while reading.

use std::io::{self, BufRead, IsTerminal, Write};

use anyhow::{bail, Context, Result};
use rustix::termios::{self, LocalModes, OptionalActions};

/// Whether prompting is possible (docker refuses an interactive login from a non-TTY).
pub fn interactive() -> bool {
    io::stdin().is_terminal()
}

/// Prints `label` and reads one line from stdin, without its line ending.
pub fn line(label: &str) -> Result<String> {
    print!("{label}");
    io::stdout().flush()?;
    let mut s = String::new();
    if io::stdin().lock().read_line(&mut s)? == 0 {
        bail!("no input for {:?}", label.trim_end_matches([':', ' ']));
    }
    Ok(s.trim_end_matches(['\n', '\r']).to_string())
}

/// Like [`line`] with the terminal's echo off, so the answer is not shown.
pub fn secret(label: &str) -> Result<String> {
    let stdin = io::stdin();
    let saved = termios::tcgetattr(&stdin).context("reading the terminal's settings")?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    termios::tcsetattr(&stdin, OptionalActions::Now, &quiet)
        .context("turning the terminal's echo off")?;
    let answer = line(label);
    let restored = termios::tcsetattr(&stdin, OptionalActions::Now, &saved);
    // The newline the user typed was not echoed either.
    println!();
    restored.context("restoring the terminal's echo")?;
    answer
}
