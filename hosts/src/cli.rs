//! The command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::common::InterpreterArgs;

/// Spindle runs Python, bash and Node.js in persistent sessions and streams typed chunks.
///
/// With no command, it starts the REPL on an embedded, in-process kernel.
#[derive(Debug, Parser)]
#[command(name = "spindle", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub interpreters: InterpreterArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The terminal REPL (the default).
    Repl(crate::repl::ReplArgs),
    /// Run code once in a fresh session and exit with its status.
    Run(crate::run::RunArgs),
    /// Serve sessions over the native ZeroMQ API.
    Serve(crate::native::ServeArgs),
    /// Run one Jupyter kernel, or install kernelspecs.
    Kernel(crate::jupyter::KernelArgs),
    /// Talk to a language model that runs code in Spindle's sessions (OpenAI-compatible API).
    Chat(crate::chat::ChatArgs),
    // `spindle mcp --help` shows McpArgs' own documentation.
    Mcp(crate::mcp::McpArgs),
}

/// `spindle` with no command: the REPL's flags at their defaults, and the variables they read
/// (`SPINDLE_SANDBOX`, …).
#[derive(Debug, Parser)]
struct Bare {
    #[command(flatten)]
    repl: crate::repl::ReplArgs,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Containers a killed host left behind go, whichever host this is.
    crate::sandbox::sweep_in_background();
    let result = match cli.command {
        None => crate::repl::main(Bare::parse_from(["spindle"]).repl, &cli.interpreters),
        Some(Command::Repl(args)) => crate::repl::main(args, &cli.interpreters),
        Some(Command::Run(args)) => crate::run::main(args, &cli.interpreters),
        Some(Command::Serve(args)) => crate::native::main(args, &cli.interpreters),
        Some(Command::Kernel(args)) => crate::jupyter::main(args, &cli.interpreters),
        Some(Command::Chat(args)) => crate::chat::main(args, &cli.interpreters),
        Some(Command::Mcp(args)) => crate::mcp::main(args, &cli.interpreters),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("spindle: {e:#}");
            ExitCode::from(2)
        }
    }
}
