//! Placeholder: filled in by its issue.

use std::process::ExitCode;

use crate::common::InterpreterArgs;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {}

pub fn main(_args: ServeArgs, _interp: &InterpreterArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
