//! Placeholder: filled in by its issue.

use std::process::ExitCode;

use crate::common::InterpreterArgs;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct ReplArgs {}

pub fn main(_args: ReplArgs, _interp: &InterpreterArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
