//! `spindle` / `spindle repl`: the terminal REPL.
//!
//! One loop drives a [`Backend`] (an embedded kernel by default, or a running `spindle serve`
//! with `--connect`): rustyline reads an input (multi-line while the session says it is
//! incomplete), `%` magics are parsed by [`crate::magics`], code runs in the current language's
//! session (created on first use), and chunks are rendered as they stream. While code runs,
//! Ctrl-C interrupts it and typed lines go to the program (or answer its `input()`).
//!
//! - [`backend`]: the `Backend` trait and the embedded kernel.
//! - [`chat`]: chat mode (`%chat`, `spindle chat`): plain text goes to the LLM loop.
//! - [`remote`]: the client for `spindle serve`.
//! - [`editor`]: rustyline helper (is-complete, completion, prompt colour).
//! - [`render`]: chunks to terminal output (images, HTML tables, tracebacks).
//! - [`transcript`]: `%save`, `%load`, `%jupyter`.
//! - [`term`]: terminal plumbing (size, echo, stdin forwarding).

pub mod backend;
pub mod chat;
pub mod editor;
pub mod remote;
pub mod render;
pub mod term;
pub mod transcript;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use rustyline::error::ReadlineError;
use rustyline::history::FileHistory;
use rustyline::{Config, Editor, EventHandler, KeyEvent};
use spindle_kernel::{ExecOptions, KernelError, LanguageError};
use spindle_protocol::{Body, Outcome, StatusFormat};
use tokio::runtime::Handle;
use tokio::signal::unix::{signal, Signal, SignalKind};

use self::backend::{Backend, BackendError, ChunkStream, Embedded};
use self::editor::{Checker, CtrlCHandler, EnterHandler, ReplHelper};
use self::render::{ImageMode, Origin, Renderer};
use self::term::{StdinForwarder, Typed};
use self::transcript::{Cell, Language, Transcript};
use crate::common::InterpreterArgs;
use crate::magics::{self, Input, Limit, Magic, MagicError, ResetTarget};

/// The terminal REPL (also what `spindle` with no command runs).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ReplArgs {
    /// Attach to a running `spindle serve` through its connection file instead of starting an
    /// embedded kernel.
    #[arg(long, value_name = "CONNECTION_FILE")]
    pub connect: Option<PathBuf>,
    /// With --connect: use this existing session (id or name) for its language instead of
    /// starting one (repeatable). Attached sessions are left running on exit.
    #[arg(long, value_name = "ID_OR_NAME", requires = "connect")]
    pub session: Vec<String>,
    /// How to show images (detected from the terminal by default; also SPINDLE_IMAGES).
    #[arg(long, value_enum, value_name = "MODE")]
    pub images: Option<ImageMode>,
    /// The language to start in: python, bash or node.
    #[arg(long, short = 'l', value_name = "LANG")]
    pub lang: Option<String>,
    /// Time limit of each execution, in seconds (also `%timeout`).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// Console output cap per execution, in bytes (also `%cap`).
    #[arg(long, value_name = "BYTES")]
    pub cap: Option<u64>,
    /// Show every raw chunk as JSON (also `%verbose`).
    #[arg(long)]
    pub verbose: bool,
    /// Neither read nor write the history file.
    #[arg(long)]
    pub no_history: bool,
    #[command(flatten)]
    pub sandbox: crate::sandbox::SandboxArgs,
}

pub fn main(args: ReplArgs, interp: &InterpreterArgs) -> anyhow::Result<ExitCode> {
    main_with(args, interp, None)
}

/// The REPL, started in chat mode when `chat` is given.
pub fn main_with(
    args: ReplArgs,
    interp: &InterpreterArgs,
    chat: Option<crate::chat::ChatStart>,
) -> anyhow::Result<ExitCode> {
    // Warnings would land in the middle of the user's screen; SPINDLE_LOG still overrides.
    crate::common::init_logging("error");
    let lang_name = args.lang.clone().unwrap_or_else(|| "python".into());
    let Some(lang) = magics::canonical_language(&lang_name) else {
        anyhow::bail!("unknown language {lang_name:?}; Spindle knows python, bash and node");
    };
    // The sandbox first: one that was asked for and cannot be had stops the REPL here.
    let launcher = args
        .sandbox
        .launcher_unless_connected(args.connect.as_deref())?;
    let rt = crate::common::runtime()?;
    let code = match &args.connect {
        None => {
            let launcher = launcher.unwrap_or_else(|| Arc::new(spindle_kernel::LocalPtyLauncher));
            let backend = Arc::new(Embedded::new(interp.interpreters(), launcher));
            run(backend, &args, lang, rt.handle().clone(), chat)?
        }
        Some(path) => {
            let backend = rt.block_on(remote::Remote::connect(path, &args.session))?;
            run(Arc::new(backend), &args, lang, rt.handle().clone(), chat)?
        }
    };
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(code)
}

fn run<B: Backend>(
    backend: Arc<B>,
    args: &ReplArgs,
    lang: &'static str,
    rt: Handle,
    chat: Option<crate::chat::ChatStart>,
) -> anyhow::Result<ExitCode> {
    let saved = term::Saved::take();
    let mut repl = Repl::new(backend.clone(), args, lang, rt.clone())?;
    spawn_exit_on_signals(backend.clone(), saved, &rt);
    let mut first = None;
    let mut once = false;
    if let Some(start) = chat {
        repl.start_chat(start.config);
        first = start.prompt;
        once = start.once;
    }
    if !once {
        repl.banner();
    }
    // Attached sessions (`--session`) already have counts.
    repl.refresh_counts();
    // Start the first language in the background: by the time the user has typed a line it is
    // usually ready. Other languages start when first used.
    let b = backend.clone();
    rt.spawn(async move {
        if let Err(e) = b.ensure(lang).await {
            tracing::debug!(error = %e, "could not start the first session early");
        }
    });
    let code = match first {
        Some(prompt) if once => repl.chat_once(&prompt),
        Some(prompt) => {
            repl.chat_send(&prompt);
            repl.run_loop()
        }
        None => repl.run_loop(),
    };
    repl.save_history();
    drop(repl);
    let _ = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), backend.shutdown()).await
    });
    saved.restore();
    Ok(code)
}

/// SIGTERM or SIGHUP (the terminal closed): end every session, put the terminal back, exit.
fn spawn_exit_on_signals<B: Backend>(backend: Arc<B>, saved: term::Saved, rt: &Handle) {
    rt.spawn(async move {
        let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = hup.recv() => {}
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), backend.shutdown()).await;
        saved.restore();
        std::process::exit(0);
    });
}

/// Signals and stdin used while code runs (kept apart from the rest of the REPL so the
/// select loop can borrow them alongside it).
struct Io {
    sigint: Signal,
    stdin: Option<StdinForwarder>,
}

enum Flow {
    Continue,
    Exit,
}

struct Repl<B: Backend> {
    backend: Arc<B>,
    rt: Handle,
    lang: Arc<Mutex<&'static str>>,
    editor: Editor<ReplHelper<B>, FileHistory>,
    history: Option<PathBuf>,
    render: Renderer,
    io: Option<Io>,
    timeout: Option<f64>,
    cap: Option<u64>,
    /// The last execution count each language reported.
    counts: HashMap<&'static str, u64>,
    transcript: Transcript,
    /// Set by the Ctrl-C key handler: whether the line was empty when Ctrl-C was pressed.
    ctrl_c_on_empty: Arc<AtomicBool>,
    /// Chat mode's conversation, once `%chat` (or `spindle chat`) started one.
    chat: Option<chat::ChatState>,
    /// Whether plain text goes to the model (shared with the editor's Enter handler).
    chat_mode: Arc<AtomicBool>,
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn xdg_dir(var: &str, fallback: &str) -> Option<PathBuf> {
    if let Some(d) = env_var(var) {
        return Some(PathBuf::from(d));
    }
    env_var("HOME").map(|h| Path::new(&h).join(fallback))
}

impl<B: Backend> Repl<B> {
    fn new(
        backend: Arc<B>,
        args: &ReplArgs,
        lang: &'static str,
        rt: Handle,
    ) -> anyhow::Result<Self> {
        let stdout_tty = term::is_tty(libc::STDOUT_FILENO);
        let color = stdout_tty && env_var("NO_COLOR").is_none();
        // `spindle` with no command has no flags of its own, so SPINDLE_IMAGES works too.
        let from_env = env_var("SPINDLE_IMAGES")
            .and_then(|v| <ImageMode as clap::ValueEnum>::from_str(&v, true).ok());
        let images = args
            .images
            .or(from_env)
            .unwrap_or_else(|| render::image::detect(&env_var, stdout_tty, color));
        let truecolor = render::image::truecolor(&env_var);
        let out_dir = xdg_dir("XDG_CACHE_HOME", ".cache")
            .unwrap_or_else(std::env::temp_dir)
            .join("spindle")
            .join("repl")
            .join(format!(
                "{}-{}",
                chrono::Local::now().format("%Y%m%d-%H%M%S"),
                std::process::id()
            ));
        let mut render = Renderer::new(
            Box::new(std::io::stdout()),
            color,
            images,
            truecolor,
            out_dir,
            Box::new(|| (term::width(), term::height())),
        );
        render.verbose = args.verbose;

        let lang_cell = Arc::new(Mutex::new(lang));
        let checker = Arc::new(Checker::new(backend.clone(), rt.clone(), lang_cell.clone()));
        let chat_mode = checker.chat.clone();
        let config = Config::builder()
            .auto_add_history(false)
            .history_ignore_space(true)
            .max_history_size(10_000)?
            .completion_type(rustyline::CompletionType::List)
            .color_mode(if color {
                rustyline::ColorMode::Enabled
            } else {
                rustyline::ColorMode::Disabled
            })
            .build();
        let mut editor: Editor<ReplHelper<B>, FileHistory> = Editor::with_config(config)?;
        editor.set_helper(Some(ReplHelper::new(checker.clone(), color)));
        editor.bind_sequence(
            KeyEvent::from('\r'),
            EventHandler::Conditional(Box::new(EnterHandler(checker.clone()))),
        );
        let ctrl_c_on_empty = Arc::new(AtomicBool::new(true));
        editor.bind_sequence(
            KeyEvent::ctrl('C'),
            EventHandler::Conditional(Box::new(CtrlCHandler(ctrl_c_on_empty.clone()))),
        );
        let history = if args.no_history {
            None
        } else {
            xdg_dir("XDG_DATA_HOME", ".local/share").map(|d| d.join("spindle").join("repl_history"))
        };
        if let Some(h) = &history {
            if h.exists() {
                if let Err(e) = editor.load_history(h) {
                    tracing::warn!(error = %e, path = %h.display(), "cannot read the history");
                }
            }
        }
        let sigint = rt.block_on(async { signal(SignalKind::interrupt()) })?;
        Ok(Self {
            backend,
            rt,
            lang: lang_cell,
            editor,
            history,
            render,
            io: Some(Io {
                sigint,
                stdin: StdinForwarder::start(),
            }),
            timeout: args.timeout.filter(|t| *t > 0.0),
            cap: args.cap.filter(|c| *c > 0),
            counts: HashMap::new(),
            transcript: Transcript::new(),
            ctrl_c_on_empty,
            chat: None,
            chat_mode,
        })
    }

    fn current(&self) -> &'static str {
        *self.lang.lock().expect("lang")
    }

    fn banner(&mut self) {
        let version = env!("CARGO_PKG_VERSION");
        let _ = self.render.info(&format!(
            "Spindle {version} · python, bash and node in persistent sessions · {}\n\
             %help for magics · %% CMD runs a shell command · %node/%bash/%python switch · Ctrl-D exits",
            self.backend.describe()
        ));
    }

    fn prompt(&self) -> String {
        if self.chat_mode.load(Ordering::Acquire) {
            return "[chat]> ".to_string();
        }
        let lang = self.current();
        let next = self.counts.get(lang).copied().unwrap_or(0) + 1;
        format!("[{lang} {next}]> ")
    }

    fn save_history(&mut self) {
        if let Some(h) = &self.history {
            if let Some(dir) = h.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            if let Err(e) = self.editor.append_history(h) {
                tracing::warn!(error = %e, path = %h.display(), "cannot write the history");
            }
        }
    }

    fn run_loop(&mut self) -> ExitCode {
        let mut ctrl_c = 0;
        loop {
            let _ = self.render.ensure_newline();
            let _ = self.render.flush();
            let prompt = self.prompt();
            match self.editor.readline(&prompt) {
                Ok(line) => {
                    ctrl_c = 0;
                    self.render.typed_line();
                    if line.trim().is_empty() {
                        continue;
                    }
                    let _ = self.editor.add_history_entry(line.as_str());
                    // Written as we go, so a crash or a closed terminal keeps it.
                    self.save_history();
                    if let Flow::Exit = self.handle(&line) {
                        break;
                    }
                }
                Err(ReadlineError::Interrupted) => {
                    self.render.typed_line();
                    if self.ctrl_c_on_empty.load(Ordering::Acquire) {
                        ctrl_c += 1;
                        if ctrl_c >= 2 {
                            break;
                        }
                        let _ = self.render.info("(Ctrl-C again or Ctrl-D to exit)");
                    } else {
                        ctrl_c = 0;
                    }
                }
                Err(ReadlineError::Eof) => {
                    let _ = self.render.ensure_newline();
                    break;
                }
                Err(e) => {
                    let _ = self.render.problem(&format!("cannot read input: {e}"));
                    break;
                }
            }
        }
        ExitCode::SUCCESS
    }

    fn handle(&mut self, line: &str) -> Flow {
        if matches!(line.trim(), "exit" | "quit" | "exit()" | "quit()") {
            return Flow::Exit;
        }
        match magics::parse(line) {
            Ok(Input::Code(text)) if self.chat_mode.load(Ordering::Acquire) => {
                self.chat_send(text);
            }
            Ok(Input::Code(code)) => {
                let lang = self.current();
                self.run_cell(lang, code);
            }
            Ok(Input::Magic(m)) => self.magic(m),
            Err(MagicError::Unknown { name }) => {
                let _ = self.render.problem(&format!("unknown magic %{name}"));
                let _ = self.render.plain(&magics::help());
            }
            Err(e) => {
                let _ = self.render.problem(&e.to_string());
            }
        }
        Flow::Continue
    }

    fn magic(&mut self, m: Magic) {
        match m {
            Magic::Shell { command } => {
                self.run_cell("bash", &command);
            }
            Magic::Cell { language, code } => {
                self.run_cell(language, &code);
            }
            Magic::Switch { language } => {
                // Choosing a language means writing code in it.
                self.chat_mode.store(false, Ordering::Release);
                *self.lang.lock().expect("lang") = language;
                if !self.backend.is_live(language) {
                    let b = self.backend.clone();
                    self.rt.spawn(async move {
                        if let Err(e) = b.ensure(language).await {
                            tracing::debug!(error = %e, "could not start the session early");
                        }
                    });
                }
            }
            Magic::Reset {
                target: ResetTarget::Current,
            } if self.chat_mode.load(Ordering::Acquire) => self.chat_reset(),
            Magic::Reset { target } => self.reset(target),
            Magic::Chat => self.enter_chat(),
            Magic::Code => {
                self.chat_mode.store(false, Ordering::Release);
                let _ = self
                    .render
                    .info("code mode: plain text runs as code (%chat goes back)");
            }
            Magic::Undo => self.chat_undo(),
            Magic::Tokens => self.chat_tokens(),
            Magic::Info => self.chat_info(),
            Magic::SaveMessage { path } => self.chat_save(&path),
            Magic::LoadMessage { path } => self.chat_load(&path),
            Magic::Sessions => self.list_sessions(),
            Magic::Timeout(v) => {
                Limit::apply(v, &mut self.timeout);
                let text = match self.timeout {
                    Some(s) => format!("timeout: {s} s per execution"),
                    None => "timeout: off".to_string(),
                };
                let _ = self.render.info(&text);
            }
            Magic::Cap(v) => {
                Limit::apply(v, &mut self.cap);
                let text = match self.cap {
                    Some(n) => format!("output cap: {n} bytes per execution"),
                    None => "output cap: off".to_string(),
                };
                let _ = self.render.info(&text);
            }
            Magic::Verbose(v) => {
                self.render.verbose = v.unwrap_or(!self.render.verbose);
                if let Some(c) = self.chat.as_mut() {
                    c.verbose = self.render.verbose;
                }
                let state = if self.render.verbose { "on" } else { "off" };
                let _ = self.render.info(&format!("verbose: {state}"));
            }
            Magic::Save { path } => {
                let n = self.transcript.cells.len();
                let text = self.transcript.to_json();
                self.write_report(&path, text, &format!("saved {n} cell{}", plural(n)));
            }
            Magic::Load { path } => self.load(&path),
            Magic::Jupyter { path } if self.chat_mode.load(Ordering::Acquire) => {
                self.chat_jupyter(&path)
            }
            Magic::Jupyter { path } => {
                let nb = self.transcript.to_notebook();
                let text = serde_json::to_string_pretty(&nb).unwrap_or_default() + "\n";
                let n = self.transcript.cells.len();
                self.write_report(
                    &path,
                    text,
                    &format!("wrote a notebook of {n} cell{}", plural(n)),
                );
            }
            Magic::Help { topic } => {
                let text = match topic {
                    Some(t) => magics::help_for(&t),
                    None => magics::help(),
                };
                let _ = self.render.plain(&text);
            }
        }
    }

    fn reset(&mut self, target: ResetTarget) {
        let langs: Vec<&'static str> = match target {
            ResetTarget::Current => vec![self.current()],
            ResetTarget::Language(l) => vec![l],
            ResetTarget::All => spindle_languages::NAMES.to_vec(),
        };
        for lang in langs {
            let b = self.backend.clone();
            let r = self.rt.block_on(async move {
                tokio::time::timeout(Duration::from_secs(30), b.restart(lang)).await
            });
            match r {
                Ok(Ok(true)) => {
                    let _ = self
                        .render
                        .info(&format!("{lang}: restarted (its state is gone)"));
                }
                Ok(Ok(false)) => {
                    if target != ResetTarget::All {
                        let _ = self
                            .render
                            .info(&format!("{lang}: no session yet (it starts on first use)"));
                    }
                }
                Ok(Err(e)) => self.show_error(lang, &e),
                Err(_) => {
                    let _ = self
                        .render
                        .problem(&format!("{lang}: the restart did not finish within 30 s"));
                }
            }
        }
        self.refresh_counts();
    }

    fn refresh_counts(&mut self) {
        let b = self.backend.clone();
        if let Ok(Ok(list)) = self.rt.block_on(async move {
            tokio::time::timeout(Duration::from_secs(5), b.sessions()).await
        }) {
            for (lang, info) in list {
                self.counts.insert(lang, info.execution_count);
            }
        }
    }

    fn list_sessions(&mut self) {
        let b = self.backend.clone();
        let list = match self.rt.block_on(async move {
            tokio::time::timeout(Duration::from_secs(5), b.sessions()).await
        }) {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => return self.show_error(self.current(), &e),
            Err(_) => {
                let _ = self
                    .render
                    .problem("the session list did not come within 5 s");
                return;
            }
        };
        if list.is_empty() {
            let _ = self
                .render
                .info("no sessions yet (each language starts on first use)");
            return;
        }
        let current = self.current();
        let mut rows = vec![vec![
            String::new(),
            "language".to_string(),
            "state".to_string(),
            "pid".to_string(),
            "executions".to_string(),
            "version".to_string(),
            "starts".to_string(),
            "id".to_string(),
        ]];
        for (lang, info) in &list {
            rows.push(vec![
                if *lang == current { "*" } else { "" }.to_string(),
                lang.to_string(),
                format!("{:?}", info.state).to_lowercase(),
                info.pid
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "-".into()),
                info.execution_count.to_string(),
                info.language_version.clone().unwrap_or_else(|| "-".into()),
                info.starts.to_string(),
                info.id.chars().take(8).collect(),
            ]);
        }
        let table = render::html::Table {
            rows: rows
                .into_iter()
                .enumerate()
                .map(|(i, cells)| render::html::Row {
                    cells,
                    header: i == 0,
                })
                .collect(),
        };
        let text =
            render::html::render_table(&table, term::width().saturating_sub(1), self.render.color);
        let _ = self.render.plain(&text);
    }

    /// Write `text` to `path` and say `what` ... `to PATH`, or why it could not be written.
    fn write_report(&mut self, path: &Path, text: String, what: &str) {
        match std::fs::write(path, text) {
            Ok(()) => {
                let _ = self.render.info(&format!("{what} to {}", path.display()));
            }
            Err(e) => {
                let _ = self
                    .render
                    .problem(&format!("cannot write {}: {e}", path.display()));
            }
        }
    }

    fn load(&mut self, path: &Path) {
        let t = match Transcript::load(path) {
            Ok(t) => t,
            Err(e) => {
                let _ = self
                    .render
                    .problem(&format!("{e}\nnothing was run; the sessions are unchanged"));
                return;
            }
        };
        let n = t.cells.len();
        let _ = self.render.info(&format!(
            "replaying {n} cell{} from {}",
            plural(n),
            path.display()
        ));
        for (i, cell) in t.cells.iter().enumerate() {
            let lang = cell.language.name();
            let next = self.counts.get(lang).copied().unwrap_or(0) + 1;
            // A cell that was stopped when it was recorded (an endless loop, a long sleep
            // someone interrupted) would only stop the replay again.
            if let Some(o @ (Outcome::Interrupted | Outcome::Timeout | Outcome::Died)) =
                cell.outcome()
            {
                let why = format!("{o:?}").to_lowercase();
                let _ = self.render.info(&format!(
                    "[{lang}] skipped cell {} (it was {why} when recorded): {}",
                    i + 1,
                    cell.code.lines().next().unwrap_or_default()
                ));
                continue;
            }
            let _ = self.render.info(&format!("[{lang} {next}]> {}", cell.code));
            if self.run_cell(lang, &cell.code) == Some(Outcome::Interrupted) {
                let _ = self.render.info(&format!(
                    "replay stopped at cell {} of {n} (interrupted)",
                    i + 1
                ));
                return;
            }
        }
    }

    /// Explain a backend error; for a missing interpreter, say how to point Spindle at one.
    fn show_error(&mut self, lang: &str, e: &BackendError) {
        let text = match e {
            BackendError::Kernel(KernelError::Language(LanguageError::InterpreterNotFound {
                language,
                detail,
            })) => format!(
                "{language} is not available\n{detail}\n(the other languages still work: %python, %bash, %node)"
            ),
            BackendError::Kernel(KernelError::StartFailed { language, detail }) => {
                format!("{language} failed to start\n{detail}")
            }
            BackendError::Disconnected(why) => format!("lost the connection to the server: {why}"),
            other => format!("{lang}: {other}"),
        };
        let _ = self.render.problem(&text);
    }

    /// Run one cell and record it; returns how it ended (`None` if it never ran).
    fn run_cell(&mut self, lang: &'static str, code: &str) -> Option<Outcome> {
        let opts = ExecOptions {
            timeout: self.timeout.map(Duration::from_secs_f64),
            output_cap: self.cap,
            ..ExecOptions::default()
        };
        let mut io = self.io.take().expect("io is put back after every cell");
        let started = {
            let b = self.backend.clone();
            let code = code.to_string();
            let rt = self.rt.clone();
            rt.block_on(async {
                // Anything that arrived while idle is stale.
                while futures::FutureExt::now_or_never(io.sigint.recv()).is_some() {}
                tokio::select! {
                    r = b.execute(lang, code, opts) => Some(r),
                    _ = io.sigint.recv() => None,
                }
            })
        };
        let stream = match started {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                self.io = Some(io);
                self.after_error(lang, &e);
                return None;
            }
            None => {
                self.io = Some(io);
                let _ = self.render.info("cancelled");
                return None;
            }
        };
        let mut cell = Cell {
            language: Language::from_name(lang).unwrap_or(Language::Python),
            code: code.to_string(),
            execution_count: None,
            chunks: Vec::new(),
        };
        if let Some(s) = io.stdin.as_mut() {
            s.arm();
        }
        let rt = self.rt.clone();
        let (outcome, lost) = rt.block_on(self.pump(lang, stream, &mut cell, &mut io));
        if let Some(s) = io.stdin.as_ref() {
            s.disarm();
        }
        term::set_echo(true);
        self.io = Some(io);
        self.transcript.cells.push(cell);
        // Outside the runtime: reconnecting blocks on it.
        if let Some(e) = lost {
            self.after_error(lang, &e);
        }
        self.show_notices();
        outcome
    }

    fn show_notices(&mut self) {
        for n in self.backend.take_notices() {
            let _ = self.render.info(&n);
        }
    }

    fn after_error(&mut self, lang: &'static str, e: &BackendError) {
        self.show_error(lang, e);
        if e.is_disconnect() {
            self.offer_reconnect();
        }
    }

    /// After the server went away: try once now, and say how to retry.
    fn offer_reconnect(&mut self) {
        let b = self.backend.clone();
        let _ = self.render.info("reconnecting…");
        let r = self.rt.block_on(async move {
            tokio::time::timeout(Duration::from_secs(10), b.reconnect()).await
        });
        match r {
            Ok(Ok(())) => {
                let _ = self.render.info("reconnected; run the cell again");
                self.show_notices();
                // Sessions the server lost start again from 1.
                self.counts.clear();
                self.refresh_counts();
            }
            Ok(Err(e)) => {
                let why = match e {
                    BackendError::Disconnected(why) => why,
                    other => other.to_string(),
                };
                let _ = self.render.problem(&format!(
                    "cannot reconnect: {why}\nthe REPL is still here: run a cell to try again, or Ctrl-D to exit"
                ));
            }
            Err(_) => {
                let _ = self.render.problem(
                    "cannot reconnect: no answer within 10 s\nthe REPL is still here: run a cell to try again, or Ctrl-D to exit",
                );
            }
        }
    }

    /// Render one execution's chunks as they come, forwarding Ctrl-C and typed lines. Returns
    /// how it ended, and the error if the connection was lost on the way.
    async fn pump(
        &mut self,
        lang: &'static str,
        mut stream: ChunkStream,
        cell: &mut Cell,
        io: &mut Io,
    ) -> (Option<Outcome>, Option<BackendError>) {
        let mut interrupts = 0u32;
        let mut input_pending = false;
        let mut password = false;
        let mut outcome = None;
        let mut count = self.counts.get(lang).copied().unwrap_or(0) + 1;
        let mut heartbeat = tokio::time::interval(Duration::from_secs(2));
        heartbeat.tick().await;
        let mut lost: Option<BackendError> = None;
        loop {
            tokio::select! {
                item = stream.next() => match item {
                    None => break,
                    Some(Err(e)) => {
                        lost = Some(e);
                        break;
                    }
                    Some(Ok(chunk)) => {
                        match &chunk.body {
                            Body::Status { format: StatusFormat::Started, content: Some(s) } => {
                                if let Some(n) = s.execution_count {
                                    count = n;
                                }
                            }
                            Body::Status { format: StatusFormat::Finished, content: Some(s) } => {
                                outcome = s.outcome;
                                if let Some(n) = s.execution_count {
                                    self.counts.insert(lang, n);
                                    cell.execution_count = Some(n);
                                }
                            }
                            Body::InputRequest { content: Some(req) } => {
                                input_pending = true;
                                if req.password {
                                    password = true;
                                    term::set_echo(false);
                                }
                            }
                            _ => {}
                        }
                        let _ = self.render.chunk(&chunk, Origin { language: lang, count });
                        let finished = chunk.is_finished();
                        cell.chunks.push(chunk);
                        if finished {
                            break;
                        }
                    }
                },
                _ = io.sigint.recv() => {
                    // The terminal echoed `^C`: what follows starts on a fresh line.
                    self.render.mark_dirty();
                    interrupts += 1;
                    let b = self.backend.clone();
                    match interrupts {
                        1 | 2 => {
                            if interrupts == 2 {
                                let _ = self.render.info(&format!(
                                    "interrupting again; a third Ctrl-C restarts the {lang} session (its state is lost)"
                                ));
                            }
                            if let Err(e) = b.interrupt(lang).await {
                                self.show_error(lang, &e);
                            }
                        }
                        _ => {
                            let _ = self.render.info(&format!("restarting {lang}…"));
                            // The running execution ends as `died` once the restart happens;
                            // keep rendering meanwhile.
                            self.rt.spawn(async move {
                                if let Err(e) = b.restart(lang).await {
                                    tracing::warn!(error = %e, "restart after Ctrl-C failed");
                                }
                            });
                        }
                    }
                }
                typed = recv_typed(&mut io.stdin) => {
                    // Never the text: it may answer getpass().
                    let bytes = match &typed {
                        Typed::Line(b) => Some(b.len()),
                        Typed::Eof => None,
                    };
                    tracing::trace!(?bytes, input_pending, password, "typed while running");
                    self.render.typed_line();
                    let b = self.backend.clone();
                    let r = match typed {
                        Typed::Line(bytes) if input_pending => {
                            input_pending = false;
                            if password {
                                password = false;
                                term::set_echo(true);
                                let _ = self.render.plain("");
                            }
                            let text = String::from_utf8_lossy(&bytes);
                            b.input_reply(lang, text.trim_end_matches(['\n', '\r']).to_string()).await
                        }
                        Typed::Line(bytes) => b.write_stdin(lang, bytes).await,
                        Typed::Eof if input_pending => {
                            input_pending = false;
                            b.input_reply(lang, String::new()).await
                        }
                        Typed::Eof => b.write_stdin(lang, vec![0x04]).await,
                    };
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "stdin not delivered");
                    }
                }
                _ = heartbeat.tick() => {
                    let b = self.backend.clone();
                    if let Err(e) = b.ping().await {
                        if e.is_disconnect() {
                            lost = Some(e);
                            break;
                        }
                    }
                }
            }
        }
        if password {
            term::set_echo(true);
        }
        let _ = self.render.ensure_newline();
        (outcome, lost)
    }
}

async fn recv_typed(stdin: &mut Option<StdinForwarder>) -> Typed {
    match stdin {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
