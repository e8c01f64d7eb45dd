//! # spindle-llm
//!
//! Spindle's LLM loop, shared by every edge that puts a model in front of sessions (`spindle
//! chat` and the REPL's `%chat`, the native API's `chat` request, `spindle mcp`). It knows
//! HTTP to the model's endpoint, and nothing of terminals, ZeroMQ or Jupyter.
//!
//! A tour:
//! - [`config`]: where the endpoint is (flags, `SPINDLE_LLM_*`, the config file, `OPENAI_*`)
//!   and how the loop behaves ([`LoopSettings`](config::LoopSettings)).
//! - [`provider`]: the client of any OpenAI-compatible endpoint on `async-openai`, with lenient
//!   types for what real servers send, retries with backoff, and an idle timeout. A turn comes
//!   back as a stream of [`Delta`](provider::Delta)s.
//! - [`agent`]: the loop itself ([`Agent`](agent::Agent)): tool calls (or fenced code blocks)
//!   run in order in the conversation's sessions, confirmed by an
//!   [`Operator`](agent::Operator) unless auto-run is on; every step is a conversation
//!   [`Item`](spindle_protocol::conversation::Item).
//! - [`policy`]: the one output policy: what the model is told about a run.
//! - [`runner`]: what the loop needs from wherever sessions live ([`Runner`](runner::Runner)).
//! - [`fence`], [`args`], [`html`]: fenced code blocks, the `code` argument decoded while it
//!   streams, HTML tables as text and Markdown.

pub mod agent;
pub mod args;
pub mod config;
pub mod fence;
pub mod html;
pub mod policy;
pub mod provider;
pub mod runner;

pub use agent::{Agent, Decision, Operator};
pub use config::{ChatConfig, LoopSettings, Overrides};
pub use provider::{Endpoint, Provider, ProviderError, ProviderSettings, Secret};
pub use runner::{RunError, RunStream, Runner};
