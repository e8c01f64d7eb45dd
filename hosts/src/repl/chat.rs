//! Chat mode of the REPL (`%chat`, and `spindle chat`): plain text goes to the LLM loop
//! (`spindle_llm::Agent`), which runs in a task of its own; this thread renders its items as
//! they come and answers its questions (run this code? the program asks for input) at the
//! terminal. Ctrl-C stops the model's stream, or interrupts the run; the conversation stays
//! usable either way.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::FutureExt;
use rustyline::error::ReadlineError;
use spindle_llm::{Agent, ChatConfig, Decision, Overrides, Provider};
use spindle_protocol::conversation::{DoneReason, Item, ItemBody, NoticeFormat, Role};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::backend::Backend;
use super::render::markdown::MdStream;
use super::render::{Origin, Tone};
use super::term::{self, Typed};
use super::{plural, recv_typed, Repl};
use crate::chat::{BackendRunner, ChannelOperator, Question};

/// The conversation of a REPL in chat mode.
pub struct ChatState {
    /// Taken by the task that runs a message, put back when it ends.
    agent: Option<Agent>,
    pub verbose: bool,
    /// The language of each call, for naming saved images.
    calls: HashMap<String, &'static str>,
    /// Styles the model's Markdown as it streams.
    md: MdStream,
}

enum Ev {
    Item(Box<Item>),
    Question(Question),
    Interrupt,
    Typed(Typed),
    Closed,
}

impl<B: Backend> Repl<B> {
    /// Start a conversation with `config` and switch to chat mode.
    pub(super) fn start_chat(&mut self, config: ChatConfig) {
        let provider = match Provider::new(config.endpoint.clone(), config.provider.clone()) {
            Ok(p) => p,
            Err(e) => {
                let _ = self.render.problem(&e.to_string());
                return;
            }
        };
        let runner = Arc::new(BackendRunner::new(self.backend.clone()));
        let agent = Agent::new(provider, runner, config.loop_);
        self.chat = Some(ChatState {
            agent: Some(agent),
            verbose: self.render.verbose,
            calls: HashMap::new(),
            md: MdStream::new(self.render.color),
        });
        self.chat_mode.store(true, Ordering::Release);
    }

    /// `%chat`: chat mode, configured from the environment and the config file the first time.
    pub(super) fn enter_chat(&mut self) {
        if self.chat.is_none() {
            match ChatConfig::resolve(&Overrides::default()) {
                Ok(c) => self.start_chat(c),
                Err(e) => {
                    let _ = self.render.problem(&e.to_string());
                    return;
                }
            }
        }
        self.chat_mode.store(true, Ordering::Release);
        let what = self
            .chat
            .as_ref()
            .and_then(|c| c.agent.as_ref())
            .map(|a| {
                let e = a.provider().endpoint();
                format!("{} at {}", e.model, e.base_url)
            })
            .unwrap_or_default();
        let _ = self.render.info(&format!(
            "chat mode with {what}: plain text goes to the model (%code goes back; magics still run code)"
        ));
    }

    fn agent_mut(&mut self) -> Option<&mut Agent> {
        let a = self.chat.as_mut().and_then(|c| c.agent.as_mut());
        if a.is_none() {
            let _ = self
                .render
                .problem("no conversation yet: %chat starts one (it needs a model endpoint)");
        }
        a
    }

    /// One task, no questions (`spindle chat -y PROMPT`): the exit status says how it ended.
    pub(super) fn chat_once(&mut self, prompt: &str) -> ExitCode {
        match self.chat_send(prompt) {
            Some(reason) => crate::chat::exit_code(reason),
            None => ExitCode::from(2),
        }
    }

    /// Send `text` to the model and show everything that follows, until the loop is done.
    pub(super) fn chat_send(&mut self, text: &str) -> Option<DoneReason> {
        let mut agent = self.chat.as_mut().and_then(|c| c.agent.take())?;
        let (tx, mut rx) = mpsc::channel::<Item>(256);
        let (qtx, mut qrx) = mpsc::unbounded_channel::<Question>();
        let cancel = CancellationToken::new();
        let task = {
            let cancel = cancel.clone();
            let text = text.to_string();
            self.rt.spawn(async move {
                let op = ChannelOperator(qtx);
                let reason = agent.send(&text, &op, &tx, &cancel).await;
                (agent, reason)
            })
        };
        let mut io = self.io.take().expect("io is put back after every message");
        self.rt.block_on(async {
            // A Ctrl-C from before is stale.
            while io.sigint.recv().now_or_never().is_some() {}
        });
        let mut pending: Option<(oneshot::Sender<Option<String>>, bool)> = None;
        let mut interrupts = 0u32;
        loop {
            let waiting = pending.is_some();
            let ev = self.rt.block_on(async {
                tokio::select! {
                    i = rx.recv() => i.map_or(Ev::Closed, |i| Ev::Item(Box::new(i))),
                    Some(q) = qrx.recv() => Ev::Question(q),
                    _ = io.sigint.recv() => Ev::Interrupt,
                    t = recv_typed(&mut io.stdin), if waiting => Ev::Typed(t),
                }
            });
            if let Ev::Question(_) = ev {
                // The items sent before a question (the code it is about) come first.
                while let Ok(item) = rx.try_recv() {
                    self.show_item(&item);
                }
            }
            match ev {
                Ev::Item(item) => self.show_item(&item),
                Ev::Question(Question::Confirm {
                    language,
                    code,
                    reply,
                }) => {
                    let d = self.ask_run(&language, &code, &cancel);
                    let _ = reply.send(d);
                }
                Ev::Question(Question::Input {
                    password, reply, ..
                }) => match io.stdin.as_mut() {
                    Some(s) => {
                        s.arm();
                        if password {
                            term::set_echo(false);
                        }
                        pending = Some((reply, password));
                    }
                    // Not a terminal: nobody can type an answer.
                    None => {
                        let _ = reply.send(None);
                    }
                },
                Ev::Typed(t) => {
                    if let Some((reply, password)) = pending.take() {
                        if let Some(s) = io.stdin.as_ref() {
                            s.disarm();
                        }
                        if password {
                            term::set_echo(true);
                            let _ = self.render.plain("");
                        }
                        self.render.typed_line();
                        let v = match t {
                            Typed::Line(b) => String::from_utf8_lossy(&b)
                                .trim_end_matches(['\n', '\r'])
                                .to_string(),
                            Typed::Eof => String::new(),
                        };
                        let _ = reply.send(Some(v));
                    }
                }
                Ev::Interrupt => {
                    // The terminal echoed `^C`.
                    self.render.mark_dirty();
                    interrupts += 1;
                    if let Some((reply, password)) = pending.take() {
                        if password {
                            term::set_echo(true);
                        }
                        let _ = reply.send(None);
                    }
                    cancel.cancel();
                    if interrupts == 2 {
                        let _ = self.render.info("stopping…");
                    }
                }
                Ev::Closed => break,
            }
        }
        if let Some(s) = io.stdin.as_ref() {
            s.disarm();
        }
        term::set_echo(true);
        self.io = Some(io);
        let _ = self.render.ensure_newline();
        match self.rt.block_on(task) {
            Ok((agent, reason)) => {
                if let Some(c) = self.chat.as_mut() {
                    c.agent = Some(agent);
                }
                self.refresh_counts();
                Some(reason)
            }
            Err(e) => {
                let _ = self
                    .render
                    .problem(&format!("the conversation ended unexpectedly: {e}"));
                self.chat = None;
                self.chat_mode.store(false, Ordering::Release);
                None
            }
        }
    }

    /// Run this code? `y` runs, `n` skips (the model is told), `e` edits it first.
    fn ask_run(&mut self, language: &str, code: &str, cancel: &CancellationToken) -> Decision {
        loop {
            let _ = self.render.flush();
            match self.editor.readline("run it? [y]es [n]o [e]dit › ") {
                Ok(a) => {
                    self.render.typed_line();
                    match a.trim().to_ascii_lowercase().as_str() {
                        "y" | "yes" => return Decision::Run,
                        "n" | "no" => return Decision::Skip,
                        "e" | "edit" => return self.edit_code(language, code),
                        _ => {
                            let _ = self.render.info("answer y, n or e");
                        }
                    }
                }
                Err(ReadlineError::Interrupted) | Err(ReadlineError::Eof) => {
                    self.render.typed_line();
                    cancel.cancel();
                    return Decision::Skip;
                }
                Err(e) => {
                    let _ = self.render.problem(&format!("cannot read input: {e}"));
                    return Decision::Skip;
                }
            }
        }
    }

    fn edit_code(&mut self, language: &str, code: &str) -> Decision {
        // Edit as code of its language: Enter runs it when complete.
        let lang = crate::magics::canonical_language(language).unwrap_or("python");
        let before = std::mem::replace(&mut *self.lang.lock().expect("lang"), lang);
        self.chat_mode.store(false, Ordering::Release);
        let r = self.editor.readline_with_initial("edit › ", (code, ""));
        self.chat_mode.store(true, Ordering::Release);
        *self.lang.lock().expect("lang") = before;
        self.render.typed_line();
        match r {
            Ok(new) if !new.trim().is_empty() => Decision::Edit(new),
            _ => Decision::Skip,
        }
    }

    fn show_item(&mut self, item: &Item) {
        let Some(state) = self.chat.as_mut() else {
            return;
        };
        let verbose = state.verbose;
        match (&item.role, &item.body) {
            (Role::User, _) => {}
            (_, ItemBody::Message { content }) => {
                if item.start {
                    let _ = self.render.ensure_newline();
                }
                if let Some(t) = content {
                    let styled = state.md.push(t);
                    let _ = self.render.stream(&styled, Tone::Plain);
                }
                if item.end {
                    let rest = state.md.finish();
                    let _ = self.render.stream(&rest, Tone::Plain);
                    let _ = self.render.ensure_newline();
                }
            }
            (_, ItemBody::Reasoning { content }) => {
                if let Some(t) = content {
                    let _ = self.render.stream(t, Tone::Dim);
                }
                if item.end {
                    let _ = self.render.ensure_newline();
                }
            }
            (
                _,
                ItemBody::Code {
                    format,
                    call,
                    content,
                },
            ) => {
                if item.start {
                    let lang = crate::magics::canonical_language(format).unwrap_or("python");
                    state.calls.insert(call.clone(), lang);
                    let _ = self.render.ensure_newline();
                    let _ = self.render.stream(&format!("── {format} ──\n"), Tone::Dim);
                }
                if let Some(t) = content {
                    let _ = self.render.stream(t, Tone::Code);
                }
                if item.end {
                    let _ = self.render.ensure_newline();
                }
            }
            (_, ItemBody::Confirm { .. }) | (_, ItemBody::Input { .. }) => {}
            (_, ItemBody::Declined { .. }) => {
                let _ = self.render.info("skipped (the model is told)");
            }
            (_, ItemBody::Output { call, chunk }) => {
                let language = state.calls.get(call).copied().unwrap_or("python");
                let count = self.counts.get(language).copied().unwrap_or(0) + 1;
                let _ = self.render.chunk(chunk, Origin { language, count });
            }
            (
                _,
                ItemBody::ToolResult {
                    content, images, ..
                },
            ) => {
                if verbose {
                    let _ = self.render.info(&format!(
                        "the model is told ({images} image{}):\n{content}",
                        plural(*images as usize)
                    ));
                }
            }
            (_, ItemBody::Notice { format, content }) => {
                let _ = match format {
                    NoticeFormat::Error => self.render.problem(content),
                    _ => self.render.info(content),
                };
            }
            (_, ItemBody::Done { usage, rounds, .. }) => {
                if verbose {
                    let _ = self.render.info(&format!(
                        "{rounds} model request{}; {} tokens so far",
                        plural(*rounds as usize),
                        usage.total()
                    ));
                }
            }
        }
    }

    /// `%reset` in chat mode: a fresh conversation (the sessions keep their state).
    pub(super) fn chat_reset(&mut self) {
        if let Some(a) = self.agent_mut() {
            a.reset();
            let _ = self.render.info(
                "the conversation is reset (sessions keep their state; %reset all restarts them)",
            );
        }
    }

    pub(super) fn chat_undo(&mut self) {
        if let Some(a) = self.agent_mut() {
            let text = if a.undo() {
                "forgot the last message and its answer"
            } else {
                "nothing to undo"
            };
            let _ = self.render.info(text);
        }
    }

    pub(super) fn chat_tokens(&mut self) {
        if let Some(a) = self.agent_mut() {
            let u = a.usage();
            let text = if u.reported == 0 {
                "the server has reported no token counts yet".to_string()
            } else {
                format!(
                    "{} tokens: {} prompt, {} completion ({} request{} reported usage)",
                    u.total(),
                    u.prompt_tokens,
                    u.completion_tokens,
                    u.reported,
                    plural(u.reported as usize)
                )
            };
            let _ = self.render.info(&text);
        }
    }

    pub(super) fn chat_info(&mut self) {
        let mode = if self.chat_mode.load(Ordering::Acquire) {
            "chat"
        } else {
            "code"
        };
        let where_ = self.backend.describe();
        let Some(a) = self.agent_mut() else { return };
        let e = a.provider().endpoint();
        let p = a.provider().settings();
        let s = &a.settings;
        let text = format!(
            "mode: {mode}\nendpoint: {}\nmodel: {}\nAPI key: {}\nstreaming: {}\nauto-run: {}\ntools: {}\nvision: {}\nmax rounds: {}\noutput budget: {} bytes\nrun timeout: {}\nidle timeout: {} s\nretries: {}\nconversation: {} ({} messages)\nsessions: {}",
            e.base_url,
            e.model,
            if e.api_key.is_empty() { "none" } else { "set (not shown)" },
            p.stream,
            s.auto_run,
            if s.tools { "execute" } else { "fenced code blocks" },
            s.vision,
            s.max_rounds,
            s.policy.budget,
            s.run_timeout
                .map(|d| format!("{} s", d.as_secs_f64()))
                .unwrap_or_else(|| "none".into()),
            p.idle_timeout.as_secs(),
            p.max_retries,
            a.id(),
            a.messages().len(),
            where_,
        );
        let _ = self.render.info(&text);
    }

    pub(super) fn chat_save(&mut self, path: &Path) {
        let Some(a) = self.agent_mut() else { return };
        let saved = a.save();
        let n = saved.messages.len();
        let text = serde_json::to_string_pretty(&saved).unwrap_or_default() + "\n";
        self.write_report(
            path,
            text,
            &format!("saved a conversation of {n} message{}", plural(n)),
        );
    }

    pub(super) fn chat_load(&mut self, path: &Path) {
        let loaded = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
            .and_then(|t| {
                serde_json::from_str::<spindle_protocol::conversation::SavedConversation>(&t)
                    .map_err(|e| format!("{} is not a saved conversation: {e}", path.display()))
            });
        let saved = match loaded {
            Ok(s) => s,
            Err(e) => {
                let _ = self
                    .render
                    .problem(&format!("{e}\nthe conversation is unchanged"));
                return;
            }
        };
        if self.chat.is_none() {
            self.enter_chat();
        }
        let Some(a) = self.agent_mut() else { return };
        let n = saved.messages.len();
        match a.load(saved) {
            Ok(()) => {
                self.chat_mode.store(true, Ordering::Release);
                let _ = self.render.info(&format!(
                    "loaded a conversation of {n} message{} from {}; send a message to go on",
                    plural(n),
                    path.display()
                ));
            }
            Err(e) => {
                let _ = self
                    .render
                    .problem(&format!("{e}\nthe conversation is unchanged"));
            }
        }
    }

    /// `%jupyter FILE` in chat mode: the conversation as a notebook (messages as Markdown
    /// cells, the model's code as code cells with their outputs).
    pub(super) fn chat_jupyter(&mut self, path: &Path) {
        let Some(a) = self.agent_mut() else { return };
        let nb = super::transcript::conversation_notebook(a.log());
        let n = nb["cells"].as_array().map_or(0, Vec::len);
        let text = serde_json::to_string_pretty(&nb).unwrap_or_default() + "\n";
        self.write_report(
            path,
            text,
            &format!("wrote a notebook of {n} cell{}", plural(n)),
        );
    }
}
