//! # spindle-protocol
//!
//! The shapes every part of Spindle agrees on, and nothing else: serde types, no I/O, no runtime.
//!
//! - [`chunk`]: the typed chunk model. Every execution answers with a stream of [`Chunk`]s:
//!   a `status`/`started` chunk, then blocks of output (each opened by a `start` chunk, carrying
//!   content chunks and closed by an `end` chunk), then a `status`/`finished` chunk.
//! - [`native`]: the requests, replies and events of the native ZeroMQ API (`spindle serve`).
//! - [`conversation`]: the items of the LLM loop's conversations (`spindle chat`, the native
//!   `chat` request), in the LMC shape: `role`, `type`, `format`, `start`/`content`/`end`.
//!
//! JSON Schemas of these types are generated with `schemars` and checked in under `schemas/`.

pub mod chunk;
pub mod comm;
pub mod conversation;
pub mod native;
pub mod session;

pub use chunk::*;
pub use comm::{CommKind, CommMessage};
pub use session::*;
