//! # spindle-kernel
//!
//! Sessions: one persistent language process each, behind a PTY, turned into typed chunks.
//! This crate knows nothing of Jupyter or ZeroMQ; the hosts put it on the wire.
//!
//! A tour:
//! - [`registry`]: the [`Kernel`], which holds many named sessions (a `DashMap`), each with a
//!   UUID.
//! - [`session`]: a [`Session`] owns one process. `execute` queues code and returns an
//!   [`Execution`], a stream of [`Chunk`](spindle_protocol::Chunk)s; dropping it early interrupts
//!   the execution. Also `interrupt`, `restart`, `write_stdin`, `input_reply`, `query`,
//!   `subscribe` (watch every chunk) and `close`.
//! - [`language`]: what a language must provide ([`Language`]): how to launch it and how to put
//!   requests into its bootstrap's words. The `spindle-languages` crate implements it.
//! - [`launcher`]: starting processes ([`Launcher`]); the local one uses `portable-pty` and FIFOs,
//!   the Docker one runs each process in a locked-down container.
//! - [`buffers`]: megabyte buffers kept for reuse (payloads, JSON) instead of mapped afresh.
//! - [`frames`]: parsing what a child sends (event frames, sentinels, split UTF-8).
//! - [`images`]: checking image bytes and making downscaled copies.
//! - [`options`]: kernel, session and execution settings.
//! - [`files`]: files in and out of a session's work directory, confined to it.
//! - [`tty_prompt`]: noticing a program that waits reading the terminal (a terminal prompt).
//!
//! The contract between the kernel and a bootstrap is `docs/child-protocol.md`.

pub mod buffers;
pub mod error;
pub mod files;
pub mod frames;
pub mod images;
pub mod language;
pub mod launcher;
pub mod options;
pub mod registry;
pub mod session;
pub mod tty_prompt;

pub use error::KernelError;
pub use files::{FileEntry, FileKind, FilesError, Listing, WorkDir, WriteMode};
pub use language::{ChildRequest, Language, LanguageError, LaunchContext, LaunchSpec, Outbound};
pub use launcher::{
    DockerConfig, DockerLauncher, ExitInfo, Launcher, LocalPtyLauncher, ProcessControl,
    SandboxError,
};
pub use options::{ExecOptions, KernelConfig, Query, SessionSpec};
pub use registry::Kernel;
pub use session::{Execution, Session};
