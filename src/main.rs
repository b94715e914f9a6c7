//! The `modelspec` command-line tool. See `modelspec --help` and DESIGN.md's CLI contract.
//!
//! Exit status: 0 on success, 1 on any failure (invalid spec, unreadable file...), 2 for usage
//! errors (clap).

use std::process::ExitCode;

use clap::Parser;

mod cli;

/// modelspec: a compiler for transformer architectures.
#[derive(Debug, Parser)]
#[command(name = "modelspec", version, about)]
struct Args {
    #[command(subcommand)]
    command: cli::Command,
}

fn main() -> ExitCode {
    modelspec_runtime::train::heap::keep_freed_memory();
    let args = Args::parse();
    match args.command.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.is::<cli::Reported>() {
                eprintln!("error: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}
