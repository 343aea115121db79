//! `vessel-init [OPTIONS] [--] PROGRAM [ARGS...]`: see the library docs.

use vessel_init::{parse_args, run, Command, EXIT_INIT_ERROR, NAME, USAGE, VERSION};

fn main() {
    std::process::exit(real_main());
}

fn real_main() -> i32 {
    let command = match parse_args(std::env::args_os().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            if e.wants_usage() {
                eprint!("{USAGE}");
            }
            return EXIT_INIT_ERROR;
        }
    };
    match command {
        Command::Help => {
            print!("{USAGE}");
            0
        }
        Command::Version => {
            println!("{NAME} version {VERSION}");
            0
        }
        Command::License => {
            println!("{NAME} is licensed under the Apache License, Version 2.0");
            0
        }
        Command::Run(opts) => match run(&opts) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("{NAME}: {e}");
                EXIT_INIT_ERROR
            }
        },
    }
}
