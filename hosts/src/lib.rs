//! # spindle (hosts)
//!
//! The edges of Spindle: everything that puts sessions on a wire or a terminal. Only this crate
//! knows wire formats, sockets and terminals.
//!
//! - [`cli`]: the `spindle` command line (clap), dispatching to the hosts below.
//! - [`run`]: `spindle run`, one execution in a fresh session, printed or as JSON Lines.
//! - [`native`]: `spindle serve`, the native ZeroMQ host (signed JSON chunk API).
//! - [`jupyter`]: `spindle kernel`, Spindle's sessions as Jupyter kernels, and kernelspecs.
//! - [`repl`]: the terminal REPL with `%%` magics, and its chat mode.
//! - [`chat`]: `spindle chat`, the LLM loop (`spindle_llm`) at the terminal.
//! - [`mcp`]: `spindle mcp`, sessions as a Model Context Protocol server (stdio).
//! - [`magics`]: the one parser of `%` magics, shared by the hosts.
//! - [`auth`]: HMAC-SHA256 signing and private (0600) files.
//! - [`common`]: settings every host shares (interpreters, logging, signals).

pub mod auth;
pub mod chat;
pub mod cli;
pub mod common;
pub mod json_text;
pub mod jupyter;
pub mod magics;
pub mod mcp;
pub mod native;
pub mod repl;
pub mod run;
pub mod sandbox;
