//! `spindle chat`: the LLM loop in the terminal, Open Interpreter style. It is the REPL in chat
//! mode (`%chat` there, `%code` back): plain text goes to the model, magics still run code
//! directly, and the model's code runs in the same sessions. With a PROMPT and `-y`, one task
//! runs without questions and the exit status says how it ended.
//!
//! The loop itself is `spindle_llm`; this module is its terminal edge: the command line, the
//! [`Runner`] over the REPL's backends, and the [`Operator`] that hands questions to the
//! terminal thread.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::StreamExt;
use spindle_kernel::ExecOptions;
use spindle_llm::{Decision, Operator, Overrides, RunError, RunStream, Runner};
use tokio::sync::{mpsc, oneshot};

use crate::common::InterpreterArgs;
use crate::repl::backend::Backend;
use crate::repl::render::ImageMode;

/// Talk to a language model that runs code in Spindle's sessions.
///
/// The endpoint is any OpenAI-compatible server: --base-url/--model, or SPINDLE_LLM_BASE_URL,
/// SPINDLE_LLM_MODEL and SPINDLE_LLM_API_KEY, or [llm] in $XDG_CONFIG_HOME/spindle/config.toml,
/// or OPENAI_BASE_URL/OPENAI_API_KEY.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ChatArgs {
    /// A first message for the model. With -y, Spindle runs this one task and exits (0 when the
    /// model finished, 1 on an endpoint error, 3 at the round limit, 130 when interrupted).
    #[arg(value_name = "PROMPT")]
    pub prompt: Option<String>,
    /// Base URL of an OpenAI-compatible API, such as http://127.0.0.1:11434/v1 (Ollama).
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
    /// The model's name on that server.
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,
    /// Run the model's code without asking first.
    #[arg(short = 'y', long)]
    pub auto_run: bool,
    /// Model requests per message before the loop stops (default 10).
    #[arg(long, value_name = "N")]
    pub max_rounds: Option<u32>,
    /// Bytes of each run's output the model sees, head and tail kept (default 8192).
    #[arg(long, value_name = "BYTES")]
    pub output_budget: Option<usize>,
    /// Time limit of each run in seconds (default 120); the run is interrupted, then restarted.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// Seconds the endpoint may stay silent before the request fails (default 120).
    #[arg(long, value_name = "SECONDS")]
    pub idle_timeout: Option<f64>,
    /// Retries of a failed request (429, 5xx, refused connections; default 3).
    #[arg(long, value_name = "N")]
    pub max_retries: Option<u32>,
    /// Send images to the model (on by default only for OpenAI's endpoint).
    #[arg(long, overrides_with = "no_vision")]
    pub vision: bool,
    /// Describe images in one line instead of sending them.
    #[arg(long)]
    pub no_vision: bool,
    /// Ask for whole responses instead of streaming them.
    #[arg(long)]
    pub no_stream: bool,
    /// Do not offer the execute tool: run code from fenced blocks (for models without tools).
    #[arg(long)]
    pub no_tools: bool,
    /// Another config file instead of $XDG_CONFIG_HOME/spindle/config.toml.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Drive the sessions of a running `spindle serve` through its connection file.
    #[arg(long, value_name = "CONNECTION_FILE")]
    pub connect: Option<PathBuf>,
    /// How to show images (detected from the terminal by default).
    #[arg(long, value_enum, value_name = "MODE")]
    pub images: Option<ImageMode>,
    /// Show raw chunks and what the model is told.
    #[arg(long)]
    pub verbose: bool,
    /// Neither read nor write the history file.
    #[arg(long)]
    pub no_history: bool,
    /// Where the model's code runs: `--sandbox docker` puts every session in a container.
    #[command(flatten)]
    pub sandbox: crate::sandbox::SandboxArgs,
}

impl ChatArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            base_url: self.base_url.clone(),
            model: self.model.clone(),
            api_key: None,
            vision: if self.no_vision {
                Some(false)
            } else if self.vision {
                Some(true)
            } else {
                None
            },
            stream: self.no_stream.then_some(false),
            auto_run: self.auto_run.then_some(true),
            max_rounds: self.max_rounds,
            output_budget: self.output_budget,
            run_timeout: self.timeout,
            idle_timeout: self.idle_timeout,
            max_retries: self.max_retries,
            tools: self.no_tools.then_some(false),
            system_prompt: None,
            config_file: self.config.clone(),
        }
    }
}

/// How the REPL starts in chat mode.
#[derive(Debug, Clone)]
pub struct ChatStart {
    pub config: spindle_llm::ChatConfig,
    pub prompt: Option<String>,
    /// Run the prompt and exit.
    pub once: bool,
}

pub fn main(args: ChatArgs, interp: &InterpreterArgs) -> anyhow::Result<ExitCode> {
    let config = match spindle_llm::ChatConfig::resolve(&args.overrides()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("spindle chat: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let once = args.auto_run && args.prompt.is_some();
    let repl = crate::repl::ReplArgs {
        connect: args.connect.clone(),
        images: args.images,
        verbose: args.verbose,
        no_history: args.no_history,
        sandbox: args.sandbox.clone(),
        ..crate::repl::ReplArgs::default()
    };
    let start = ChatStart {
        config,
        prompt: args.prompt.clone(),
        once,
    };
    crate::repl::main_with(repl, interp, Some(start))
}

/// The exit status of a one-shot task.
pub fn exit_code(reason: spindle_protocol::conversation::DoneReason) -> ExitCode {
    use spindle_protocol::conversation::DoneReason;
    match reason {
        DoneReason::Stop => ExitCode::SUCCESS,
        DoneReason::Error => ExitCode::from(1),
        DoneReason::Limit => ExitCode::from(3),
        DoneReason::Cancelled => ExitCode::from(130),
    }
}

/// The loop's sessions are the REPL's: one per language, wherever the backend keeps them.
pub struct BackendRunner<B: Backend> {
    backend: Arc<B>,
    languages: Vec<&'static str>,
}

impl<B: Backend> BackendRunner<B> {
    pub fn new(backend: Arc<B>) -> Self {
        let languages = backend.languages();
        Self { backend, languages }
    }
}

impl<B: Backend> Runner for BackendRunner<B> {
    fn languages(&self) -> Vec<&'static str> {
        self.languages.clone()
    }

    fn execute(
        &self,
        language: &'static str,
        code: String,
        opts: ExecOptions,
    ) -> BoxFuture<'_, Result<RunStream, RunError>> {
        Box::pin(async move {
            let s = self
                .backend
                .execute(language, code, opts)
                .await
                .map_err(|e| RunError(e.to_string()))?;
            let s: RunStream = Box::pin(s.map(|r| r.map_err(|e| RunError(e.to_string()))));
            Ok(s)
        })
    }

    fn interrupt(&self, language: &'static str) -> BoxFuture<'_, Result<(), RunError>> {
        Box::pin(async move {
            self.backend
                .interrupt(language)
                .await
                .map_err(|e| RunError(e.to_string()))
        })
    }

    fn input_reply(
        &self,
        language: &'static str,
        value: String,
    ) -> BoxFuture<'_, Result<(), RunError>> {
        Box::pin(async move {
            self.backend
                .input_reply(language, value)
                .await
                .map_err(|e| RunError(e.to_string()))
        })
    }
}

/// A question from the loop for the person at the terminal.
pub enum Question {
    Confirm {
        language: String,
        code: String,
        reply: oneshot::Sender<Decision>,
    },
    Input {
        prompt: String,
        password: bool,
        reply: oneshot::Sender<Option<String>>,
    },
}

/// Hands questions to the terminal thread and waits for its answers.
pub struct ChannelOperator(pub mpsc::UnboundedSender<Question>);

impl Operator for ChannelOperator {
    fn confirm<'a>(
        &'a self,
        _call: &'a str,
        language: &'a str,
        code: &'a str,
    ) -> BoxFuture<'a, Decision> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            let q = Question::Confirm {
                language: language.to_string(),
                code: code.to_string(),
                reply: tx,
            };
            if self.0.send(q).is_err() {
                return Decision::Skip;
            }
            rx.await.unwrap_or(Decision::Skip)
        })
    }

    fn input<'a>(
        &'a self,
        _call: &'a str,
        prompt: &'a str,
        password: bool,
    ) -> BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            let q = Question::Input {
                prompt: prompt.to_string(),
                password,
                reply: tx,
            };
            if self.0.send(q).is_err() {
                return None;
            }
            rx.await.ok().flatten()
        })
    }
}
