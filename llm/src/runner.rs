//! Where the loop's code runs: anything that can run code in a named, persistent session per
//! language. The hosts implement it: the REPL's backends (an embedded kernel, or a running
//! `spindle serve`), and the native host's own kernel for `chat` requests.

use std::pin::Pin;

use futures::future::BoxFuture;
use futures::Stream;
use spindle_kernel::ExecOptions;
use spindle_protocol::Chunk;

/// A failure to start or reach a run (the run's own errors are chunks).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct RunError(pub String);

/// The chunks of one run, ending with its `status`/`finished` chunk.
pub type RunStream = Pin<Box<dyn Stream<Item = Result<Chunk, RunError>> + Send>>;

/// Sessions the loop can run code in.
pub trait Runner: Send + Sync {
    /// The languages that really work here (their interpreters were found).
    fn languages(&self) -> Vec<&'static str>;

    /// Run `code` in `language`'s session of this conversation (started on first use).
    fn execute(
        &self,
        language: &'static str,
        code: String,
        opts: ExecOptions,
    ) -> BoxFuture<'_, Result<RunStream, RunError>>;

    /// Interrupt what runs in `language`'s session.
    fn interrupt(&self, language: &'static str) -> BoxFuture<'_, Result<(), RunError>>;

    /// Answer the pending input request of `language`'s session.
    fn input_reply(
        &self,
        language: &'static str,
        value: String,
    ) -> BoxFuture<'_, Result<(), RunError>>;
}
