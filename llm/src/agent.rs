//! The loop: a message from the user goes to the model; code the model asks to run (through the
//! `execute` tool, or in fenced blocks for models without tools) runs in the conversation's
//! persistent sessions, after the user agrees unless auto-run is on; what the output policy
//! makes of the output goes back to the model; until the model answers without asking for more
//! or the round limit is reached.
//!
//! Everything that happens is an [`Item`] sent to the caller's channel as it happens. Questions
//! for the user (run this code? the program asks for input) go through the [`Operator`].

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::StreamExt;
use serde_json::{json, Value};
use spindle_kernel::ExecOptions;
use spindle_protocol::conversation::{
    DoneReason, Item, ItemBody, NoticeFormat, Role, SavedConversation, Usage, SAVED_FORMAT,
};
use spindle_protocol::{Body, Chunk};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::args::StringField;
use crate::config::LoopSettings;
use crate::policy::{Collector, ToolOutput};
use crate::provider::{Delta, Provider, ProviderError, RetryNotice, TurnBuilder};
use crate::runner::Runner;

/// The user's answer to "run this code?".
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Run,
    Skip,
    /// Run this code instead.
    Edit(String),
    /// Nobody answered (in time): counts as a skip, and a `notice` item tells why.
    Unanswered(String),
}

/// The person (or client) in the loop.
pub trait Operator: Send + Sync {
    /// Whether to run `code` (only asked when auto-run is off).
    fn confirm<'a>(
        &'a self,
        call: &'a str,
        language: &'a str,
        code: &'a str,
    ) -> BoxFuture<'a, Decision>;

    /// A line for a program waiting for input; `None` interrupts the program.
    fn input<'a>(
        &'a self,
        call: &'a str,
        prompt: &'a str,
        password: bool,
    ) -> BoxFuture<'a, Option<String>>;
}

/// An operator that answers nothing: every run is declined and no input is given. For auto-run
/// use, where it is never asked about runs.
pub struct NoOperator;

impl Operator for NoOperator {
    fn confirm<'a>(&'a self, _: &'a str, _: &'a str, _: &'a str) -> BoxFuture<'a, Decision> {
        Box::pin(async { Decision::Skip })
    }
    fn input<'a>(&'a self, _: &'a str, _: &'a str, _: bool) -> BoxFuture<'a, Option<String>> {
        Box::pin(async { None })
    }
}

/// How often a cancelled run that goes on is interrupted again.
const REINTERRUPT: std::time::Duration = std::time::Duration::from_secs(1);

/// Most console bytes per run kept in the conversation's log (what `%save_message` writes);
/// the model's view has its own budget, and watchers get every chunk live.
const LOG_CONSOLE_LIMIT: usize = 1 << 20;

/// The default instructions given to the model.
pub fn default_system_prompt(languages: &[&str], tools: bool) -> String {
    let cwd = std::env::current_dir()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "?".into());
    let how = if tools {
        "Run code with the `execute` tool.".to_string()
    } else {
        format!(
            "To run code, write it in a fenced block tagged with its language ({}); it runs after your message and you get its output.",
            languages
                .iter()
                .map(|l| format!("```{l}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    format!(
        "You are Spindle's assistant: you complete tasks by running code on the user's computer.\n\
         {how} Languages: {}. Each language has one persistent session: variables, imports, the \
         working directory and files persist between runs. The user sees every output, including \
         plots and tables, as you do. Prefer small steps: run, look at the output, continue. \
         When the task is done, say so briefly.\n\
         Working directory: {cwd}. System: {}.",
        languages.join(", "),
        std::env::consts::OS
    )
}

/// The `execute` tool, with the languages that really work here.
pub fn execute_tool(languages: &[&str]) -> Value {
    json!([{
        "type": "function",
        "function": {
            "name": "execute",
            "description": "Run code in a persistent session (one per language): variables, imports, the working directory and files persist across calls. Returns console output (stdout and stderr), the value of the last expression, errors with their traceback, and describes images (sent as images to models that see them). Long output is shortened in the middle, with the number of bytes dropped.",
            "parameters": {
                "type": "object",
                "properties": {
                    "language": {"type": "string", "enum": languages, "description": "Which session runs the code."},
                    "code": {"type": "string", "description": "The code to run."}
                },
                "required": ["language", "code"]
            }
        }
    }])
}

/// One conversation: what the model has been told, and the items so far.
pub struct Agent {
    provider: Provider,
    runner: Arc<dyn Runner>,
    pub settings: LoopSettings,
    id: String,
    messages: Vec<Value>,
    /// Coalesced items (what `save` writes).
    log: Vec<Item>,
    seq: u64,
    usage: Usage,
    /// Open streamed item being coalesced into the log.
    open: Option<Item>,
}

/// Where items go.
pub type ItemSender = mpsc::Sender<Item>;

enum Ask {
    /// Run `code` of `call` in `language`.
    Run {
        call: String,
        language: &'static str,
        code: String,
    },
    /// Report an error for `call` without running anything.
    Refuse { call: String, why: String },
}

enum Ran {
    Output(ToolOutput),
    /// The user interrupted: the turn ends after this.
    Interrupted(ToolOutput),
}

impl Agent {
    pub fn new(provider: Provider, runner: Arc<dyn Runner>, settings: LoopSettings) -> Self {
        Self {
            provider,
            runner,
            settings,
            id: new_id(),
            messages: Vec::new(),
            log: Vec::new(),
            seq: 0,
            usage: Usage::default(),
            open: None,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn set_id(&mut self, id: String) {
        self.id = id;
    }

    pub fn provider(&self) -> &Provider {
        &self.provider
    }

    pub fn usage(&self) -> Usage {
        self.usage
    }

    pub fn messages(&self) -> &[Value] {
        &self.messages
    }

    /// The coalesced items so far.
    pub fn log(&self) -> &[Item] {
        &self.log
    }

    /// Forget the conversation (the sessions keep their state).
    pub fn reset(&mut self) {
        self.messages.clear();
        self.log.clear();
        self.usage = Usage::default();
        self.id = new_id();
        self.seq = 0;
    }

    /// Remove the last user message and everything after it. Returns false when there is none.
    pub fn undo(&mut self) -> bool {
        let Some(m) = self
            .messages
            .iter()
            .rposition(|m| m["role"] == "user" && m["content"].is_string())
        else {
            return false;
        };
        self.messages.truncate(m);
        if let Some(i) = self
            .log
            .iter()
            .rposition(|it| it.role == Role::User && matches!(it.body, ItemBody::Message { .. }))
        {
            self.log.truncate(i);
        }
        true
    }

    pub fn save(&self) -> SavedConversation {
        SavedConversation {
            format: SAVED_FORMAT.into(),
            version: 1,
            items: self.log.clone(),
            messages: self.messages.clone(),
            usage: self.usage,
        }
    }

    pub fn load(&mut self, saved: SavedConversation) -> Result<(), String> {
        if saved.format != SAVED_FORMAT {
            return Err(format!(
                "not a saved conversation (format {:?}, expected {SAVED_FORMAT:?})",
                saved.format
            ));
        }
        if let Some(bad) = saved
            .messages
            .iter()
            .position(|m| !m.is_object() || m.get("role").and_then(Value::as_str).is_none())
        {
            return Err(format!("message {} has no role", bad + 1));
        }
        self.messages = saved.messages;
        self.seq = saved.items.last().map_or(0, |i| i.seq + 1);
        self.log = saved.items;
        self.usage = saved.usage;
        Ok(())
    }

    fn system(&self) -> Value {
        let langs = self.runner.languages();
        let text = self
            .settings
            .system_prompt
            .clone()
            .unwrap_or_else(|| default_system_prompt(&langs, self.settings.tools));
        json!({"role": "system", "content": text})
    }

    /// Send an item: numbered, logged (coalesced), and passed on.
    async fn emit(&mut self, out: &ItemSender, role: Role, start: bool, end: bool, body: ItemBody) {
        let item = Item {
            conversation: self.id.clone(),
            seq: self.seq,
            role,
            start,
            end,
            body,
        };
        self.seq += 1;
        self.remember(&item);
        let _ = out.send(item).await;
    }

    fn remember(&mut self, item: &Item) {
        if item.start {
            let mut it = item.clone();
            it.start = false;
            self.open = Some(it);
            return;
        }
        if let Some(open) = self.open.as_mut() {
            match (&mut open.body, &item.body) {
                (ItemBody::Message { content: a }, ItemBody::Message { content: Some(b) })
                | (ItemBody::Reasoning { content: a }, ItemBody::Reasoning { content: Some(b) })
                | (
                    ItemBody::Code { content: a, .. },
                    ItemBody::Code {
                        content: Some(b), ..
                    },
                ) if !item.end => {
                    a.get_or_insert_with(String::new).push_str(b);
                    return;
                }
                _ => {}
            }
            if item.end {
                let done = self.open.take().expect("open item");
                self.log.push(done);
                return;
            }
        }
        self.log.push(item.clone());
    }

    async fn notice(&mut self, out: &ItemSender, format: NoticeFormat, content: String) {
        self.emit(
            out,
            Role::Computer,
            false,
            false,
            ItemBody::Notice { format, content },
        )
        .await;
    }

    /// Deal with one message from the user. Returns why it ended; the last item sent is `done`.
    pub async fn send(
        &mut self,
        text: &str,
        op: &dyn Operator,
        out: &ItemSender,
        cancel: &CancellationToken,
    ) -> DoneReason {
        self.emit(
            out,
            Role::User,
            false,
            false,
            ItemBody::Message {
                content: Some(text.to_string()),
            },
        )
        .await;
        self.messages.push(json!({"role": "user", "content": text}));
        let mut rounds = 0u32;
        let reason = loop {
            if cancel.is_cancelled() {
                break DoneReason::Cancelled;
            }
            if rounds >= self.settings.max_rounds {
                let n = self.settings.max_rounds;
                self.notice(
                    out,
                    NoticeFormat::Limit,
                    format!("stopped after {n} tool round{} (the limit for one message; raise it with --max-rounds or max_rounds). Send another message to go on.", if n == 1 { "" } else { "s" }),
                )
                .await;
                break DoneReason::Limit;
            }
            rounds += 1;
            let turn = match self.model_turn(out, cancel).await {
                Ok(Some(t)) => t,
                Ok(None) => break DoneReason::Cancelled,
                Err(e) => {
                    self.notice(out, NoticeFormat::Error, e.to_string()).await;
                    break DoneReason::Error;
                }
            };
            let calls = turn.tool_calls();
            // The assistant's message, as the model wrote it.
            let mut msg = json!({"role": "assistant", "content": turn.text});
            if !calls.is_empty() {
                msg["tool_calls"] = calls
                    .iter()
                    .map(|c| {
                        json!({"id": c.id, "type": "function",
                               "function": {"name": c.name, "arguments": c.arguments}})
                    })
                    .collect();
                if turn.text.is_empty() {
                    msg["content"] = Value::Null;
                }
            }
            self.messages.push(msg);
            let asks: Vec<Ask> = if !calls.is_empty() {
                calls.iter().map(|c| self.ask_for(c)).collect()
            } else if !self.settings.tools {
                crate::fence::blocks(&turn.text)
                    .into_iter()
                    .enumerate()
                    .map(|(i, b)| Ask::Run {
                        call: format!("fence-{}-{}", rounds, i + 1),
                        language: b.language,
                        code: b.code,
                    })
                    .collect()
            } else {
                Vec::new()
            };
            if asks.is_empty() {
                break DoneReason::Stop;
            }
            let fenced = calls.is_empty();
            let mut results: Vec<(String, ToolOutput)> = Vec::new();
            let mut stopped = false;
            for ask in asks {
                let (call, output) = if stopped {
                    let call = match &ask {
                        Ask::Run { call, .. } | Ask::Refuse { call, .. } => call.clone(),
                    };
                    let o = ToolOutput {
                        text: "not run: the user interrupted".into(),
                        ..ToolOutput::default()
                    };
                    (call, o)
                } else {
                    match self.handle(ask, fenced, op, out, cancel).await {
                        (call, Ran::Output(o)) => (call, o),
                        (call, Ran::Interrupted(o)) => {
                            stopped = true;
                            (call, o)
                        }
                    }
                };
                self.emit(
                    out,
                    Role::Computer,
                    false,
                    false,
                    ItemBody::ToolResult {
                        call: call.clone(),
                        content: output.text.clone(),
                        images: output.images.len() as u32,
                    },
                )
                .await;
                results.push((call, output));
            }
            self.tell_model(results, fenced);
            if stopped {
                self.notice(
                    out,
                    NoticeFormat::Cancelled,
                    "interrupted; the model was not asked again".into(),
                )
                .await;
                break DoneReason::Cancelled;
            }
        };
        let usage = self.usage;
        self.emit(
            out,
            Role::Computer,
            false,
            false,
            ItemBody::Done {
                reason,
                rounds,
                usage,
            },
        )
        .await;
        reason
    }

    /// Put the results where the model reads them: tool messages (or one user message for fenced
    /// blocks), then the images in a user message.
    fn tell_model(&mut self, results: Vec<(String, ToolOutput)>, fenced: bool) {
        let mut images = Vec::new();
        if fenced {
            let mut text = String::new();
            for (i, (_, o)) in results.iter().enumerate() {
                text.push_str(&format!(
                    "Output of code block {}:\n```\n{}\n```\n",
                    i + 1,
                    o.text
                ));
            }
            self.messages.push(json!({"role": "user", "content": text}));
        } else {
            for (call, o) in &results {
                self.messages
                    .push(json!({"role": "tool", "tool_call_id": call, "content": o.text}));
            }
        }
        for (_, o) in results {
            images.extend(o.images);
        }
        if !images.is_empty() {
            let mut parts = vec![json!({"type": "text", "text": format!(
                "The image{} the code produced, in order:",
                if images.len() == 1 { "" } else { "s" }
            )})];
            for im in images {
                parts.push(json!({"type": "image_url", "image_url": {"url": im.data_url}}));
            }
            self.messages
                .push(json!({"role": "user", "content": parts}));
        }
    }

    /// Check a tool call: the tool's name, its JSON, the language.
    fn ask_for(&self, c: &crate::provider::ToolCall) -> Ask {
        let call = c.id.clone();
        if c.name != "execute" {
            return Ask::Refuse {
                call,
                why: format!(
                    "error: there is no tool {:?}; the only tool is execute(language, code)",
                    c.name
                ),
            };
        }
        let args: Value = match serde_json::from_str(&c.arguments) {
            Ok(v) => v,
            Err(e) => {
                return Ask::Refuse {
                    call,
                    why: format!(
                        "error: the arguments are not valid JSON ({e}); call execute with {{\"language\": \"python\", \"code\": \"...\"}}"
                    ),
                }
            }
        };
        let langs = self.runner.languages();
        let lang = args.get("language").and_then(Value::as_str).unwrap_or("");
        let code = args.get("code").and_then(Value::as_str);
        let Some(code) = code.filter(|c| !c.trim().is_empty()) else {
            return Ask::Refuse {
                call,
                why: "error: `code` is missing or empty".into(),
            };
        };
        match spindle_languages_canonical(lang).filter(|l| langs.contains(l)) {
            Some(language) => Ask::Run {
                call,
                language,
                code: code.to_string(),
            },
            None => Ask::Refuse {
                call,
                why: format!(
                    "error: unknown language {lang:?}; use one of: {}",
                    langs.join(", ")
                ),
            },
        }
    }

    async fn handle(
        &mut self,
        ask: Ask,
        fenced: bool,
        op: &dyn Operator,
        out: &ItemSender,
        cancel: &CancellationToken,
    ) -> (String, Ran) {
        let mut edited = false;
        let (call, language, mut code) = match ask {
            Ask::Refuse { call, why } => {
                let o = ToolOutput {
                    text: why,
                    ..ToolOutput::default()
                };
                return (call, Ran::Output(o));
            }
            Ask::Run {
                call,
                language,
                code,
            } => (call, language, code),
        };
        if fenced {
            // Fenced code was shown inside the message; show it as code too.
            self.emit_code(out, &call, language, &code).await;
        }
        if !self.settings.auto_run {
            self.emit(
                out,
                Role::Computer,
                false,
                false,
                ItemBody::Confirm {
                    call: call.clone(),
                    language: language.into(),
                    code: code.clone(),
                },
            )
            .await;
            let decision = tokio::select! {
                d = op.confirm(&call, language, &code) => d,
                _ = cancel.cancelled() => {
                    let o = ToolOutput { text: "not run: the user interrupted".into(), ..ToolOutput::default() };
                    return (call, Ran::Interrupted(o));
                }
            };
            match decision {
                Decision::Run => {}
                Decision::Edit(new) => {
                    code = new;
                    edited = true;
                    self.emit_code(out, &call, language, &code).await;
                }
                Decision::Skip => return self.decline(out, call, None).await,
                Decision::Unanswered(why) => return self.decline(out, call, Some(why)).await,
            }
        }
        let note = edited.then(|| {
            format!("[the user edited the code before running it; what ran was:\n{code}\n]")
        });
        let mut ran = self.run(&call, language, code, op, out, cancel).await;
        if let (Some(note), Ran::Output(o) | Ran::Interrupted(o)) = (note, &mut ran) {
            o.text = format!("{note}\n{}", o.text);
        }
        (call, ran)
    }

    /// The code of `call` is not run: a `declined` item (after a notice saying why, when
    /// nobody answered), and what the model is told.
    async fn decline(
        &mut self,
        out: &ItemSender,
        call: String,
        unanswered: Option<String>,
    ) -> (String, Ran) {
        let text = match unanswered {
            Some(why) => {
                self.notice(out, NoticeFormat::Info, why).await;
                "declined: nobody answered whether to run this code, so it was not run"
            }
            None => "declined: the user chose not to run this code",
        };
        self.emit(
            out,
            Role::Computer,
            false,
            false,
            ItemBody::Declined { call: call.clone() },
        )
        .await;
        let o = ToolOutput {
            text: text.into(),
            ..ToolOutput::default()
        };
        (call, Ran::Output(o))
    }

    async fn emit_code(&mut self, out: &ItemSender, call: &str, language: &str, code: &str) {
        let body = |content: Option<String>| ItemBody::Code {
            format: language.to_string(),
            call: call.to_string(),
            content,
        };
        self.emit(out, Role::Assistant, true, false, body(None))
            .await;
        self.emit(out, Role::Assistant, false, false, body(Some(code.into())))
            .await;
        self.emit(out, Role::Assistant, false, true, body(None))
            .await;
    }

    async fn run(
        &mut self,
        call: &str,
        language: &'static str,
        code: String,
        op: &dyn Operator,
        out: &ItemSender,
        cancel: &CancellationToken,
    ) -> Ran {
        let policy = self.settings.policy.clone();
        let vision = self.settings.vision;
        let opts = ExecOptions {
            timeout: self.settings.run_timeout,
            image_max_dim: vision.then_some(policy.image_max_dim),
            ..ExecOptions::default()
        };
        let mut collector = Collector::new(&policy, vision);
        let runner = self.runner.clone();
        let mut stream = match runner.execute(language, code, opts).await {
            Ok(s) => s,
            Err(e) => {
                let o = ToolOutput {
                    text: format!("error: the {language} session could not run the code: {e}"),
                    ..ToolOutput::default()
                };
                return Ran::Output(o);
            }
        };
        let mut interrupted = false;
        let mut note: Option<String> = None;
        let mut logged = 0usize;
        let mut unlogged = 0u64;
        // An interrupt that reaches the session before its interpreter is really executing the
        // code (a run is `started` once it is sent) is forgotten there, so after the user's
        // cancel the interrupt is sent again until the run ends.
        let mut again = tokio::time::interval(REINTERRUPT);
        again.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = tokio::select! {
                n = stream.next() => n,
                _ = cancel.cancelled(), if !interrupted => {
                    interrupted = true;
                    note = Some("[the user interrupted the run]".into());
                    if let Err(e) = runner.interrupt(language).await {
                        tracing::debug!(error = %e, "interrupt failed");
                    }
                    again.reset();
                    continue;
                }
                _ = again.tick(), if interrupted => {
                    if let Err(e) = runner.interrupt(language).await {
                        tracing::debug!(error = %e, "interrupt failed");
                    }
                    continue;
                }
            };
            let chunk = match next {
                None => {
                    note.get_or_insert_with(|| "[the run's output ended early]".into());
                    break;
                }
                Some(Err(e)) => {
                    note = Some(format!("[lost the session: {e}]"));
                    break;
                }
                Some(Ok(c)) => c,
            };
            collector.push(&chunk);
            let finished = chunk.is_finished();
            let input = match &chunk.body {
                Body::InputRequest { content: Some(r) } => Some((r.prompt.clone(), r.password)),
                _ => None,
            };
            self.output(out, call, chunk, &mut logged, &mut unlogged)
                .await;
            if finished {
                break;
            }
            if let Some((prompt, password)) = input {
                if self.settings.auto_run || interrupted {
                    // Nobody can answer: say so to the model, and stop the program.
                    note = Some("[nobody can answer input in auto-run mode, so the program was interrupted; give it its input another way, for example in the code]".into());
                    let _ = runner.interrupt(language).await;
                    continue;
                }
                self.emit(
                    out,
                    Role::Computer,
                    false,
                    false,
                    ItemBody::Input {
                        call: call.to_string(),
                        prompt: prompt.clone(),
                        password,
                    },
                )
                .await;
                let answer = tokio::select! {
                    a = op.input(call, &prompt, password) => a,
                    _ = cancel.cancelled() => None,
                };
                match answer {
                    Some(v) => {
                        collector.answered();
                        if let Err(e) = runner.input_reply(language, v).await {
                            tracing::debug!(error = %e, "input reply failed");
                        }
                    }
                    None => {
                        if cancel.is_cancelled() {
                            interrupted = true;
                            note = Some("[the user interrupted the run]".into());
                            again.reset();
                        }
                        let _ = runner.interrupt(language).await;
                    }
                }
            }
        }
        if unlogged > 0 {
            let it = Item {
                conversation: self.id.clone(),
                seq: self.seq.saturating_sub(1),
                role: Role::Computer,
                start: false,
                end: false,
                body: ItemBody::Notice {
                    format: NoticeFormat::Info,
                    content: format!("{unlogged} bytes of console output were not kept in the saved conversation"),
                },
            };
            self.log.push(it);
        }
        let o = collector.finish(note.as_deref());
        if interrupted {
            Ran::Interrupted(o)
        } else {
            Ran::Output(o)
        }
    }

    async fn output(
        &mut self,
        out: &ItemSender,
        call: &str,
        chunk: Chunk,
        logged: &mut usize,
        unlogged: &mut u64,
    ) {
        let item = Item {
            conversation: self.id.clone(),
            seq: self.seq,
            role: Role::Computer,
            start: false,
            end: false,
            body: ItemBody::Output {
                call: call.to_string(),
                chunk,
            },
        };
        self.seq += 1;
        let keep = match &item.body {
            ItemBody::Output { chunk, .. } => match &chunk.body {
                Body::Console {
                    content: Some(t), ..
                } => {
                    *logged += t.len();
                    if *logged > LOG_CONSOLE_LIMIT {
                        *unlogged += t.len() as u64;
                        false
                    } else {
                        true
                    }
                }
                _ => true,
            },
            _ => true,
        };
        if keep {
            self.log.push(item.clone());
        }
        let _ = out.send(item).await;
    }

    /// One model request and its streamed answer. `Ok(None)` when the user cancelled.
    async fn model_turn(
        &mut self,
        out: &ItemSender,
        cancel: &CancellationToken,
    ) -> Result<Option<TurnBuilder>, ProviderError> {
        loop {
            match self.try_turn(out, cancel).await {
                Err(e) if self.settings.tools && e.rejects_tools() => {
                    self.settings.tools = false;
                    self.notice(
                        out,
                        NoticeFormat::Info,
                        "the model does not support tools; code it writes in fenced blocks will be run instead".into(),
                    )
                    .await;
                }
                other => return other,
            }
        }
    }

    async fn try_turn(
        &mut self,
        out: &ItemSender,
        cancel: &CancellationToken,
    ) -> Result<Option<TurnBuilder>, ProviderError> {
        let mut messages = Vec::with_capacity(self.messages.len() + 1);
        messages.push(self.system());
        messages.extend(self.messages.iter().cloned());
        let tools = self
            .settings
            .tools
            .then(|| execute_tool(&self.runner.languages()));
        let (tx, mut retries) = mpsc::unbounded_channel::<RetryNotice>();
        self.provider.on_retry(Some(tx));
        let provider = self.provider.clone();
        let request = provider.turn(&messages, tools.as_ref());
        tokio::pin!(request);
        let started = loop {
            tokio::select! {
                r = &mut request => break r,
                Some(n) = retries.recv() => self.retry_notice(out, n).await,
                _ = cancel.cancelled() => {
                    self.provider.on_retry(None);
                    self.notice(out, NoticeFormat::Cancelled, "stopped waiting for the model".into()).await;
                    return Ok(None);
                }
            }
        };
        while let Ok(n) = retries.try_recv() {
            self.retry_notice(out, n).await;
        }
        self.provider.on_retry(None);
        let mut stream = started?;
        let mut turn = TurnBuilder::default();
        let mut view = TurnView::default();
        loop {
            let next = tokio::select! {
                n = stream.next() => n,
                _ = cancel.cancelled() => {
                    view.close(self, out).await;
                    if !turn.text.is_empty() {
                        self.messages.push(json!({"role": "assistant", "content": turn.text}));
                    }
                    self.notice(out, NoticeFormat::Cancelled, "stopped the model's answer".into()).await;
                    return Ok(None);
                }
            };
            match next {
                None => break,
                Some(Err(e)) => {
                    view.close(self, out).await;
                    return Err(e);
                }
                Some(Ok(d)) => {
                    turn.push(&d);
                    view.show(self, out, &d, &turn).await;
                }
            }
        }
        view.close(self, out).await;
        if let Some((p, c)) = turn.usage {
            self.usage.add(Usage {
                prompt_tokens: p,
                completion_tokens: c,
                reported: 1,
            });
        }
        Ok(Some(turn))
    }

    async fn retry_notice(&mut self, out: &ItemSender, n: RetryNotice) {
        let text = format!(
            "the model request failed ({}); retry {} of {} in {:.1} s",
            n.reason,
            n.attempt,
            n.max,
            n.delay.as_secs_f64()
        );
        self.notice(out, NoticeFormat::Retry, text).await;
    }
}

/// The streamed items of one model answer: at most one open at a time.
#[derive(Default)]
struct TurnView {
    open: Option<Open>,
    /// Per tool call: the readers of its language and code, and whether its item started.
    calls: std::collections::BTreeMap<usize, CallView>,
}

#[derive(Clone, PartialEq)]
enum Open {
    Message,
    Reasoning,
    Code(usize),
}

struct CallView {
    language: StringField,
    lang: String,
    code: StringField,
    /// Code decoded before the language was known.
    pending: String,
    id: String,
    started: bool,
    closed: bool,
}

impl TurnView {
    async fn close(&mut self, a: &mut Agent, out: &ItemSender) {
        let Some(open) = self.open.take() else { return };
        let body = match open {
            Open::Message => ItemBody::Message { content: None },
            Open::Reasoning => ItemBody::Reasoning { content: None },
            Open::Code(i) => {
                let c = self.calls.get_mut(&i).expect("open call");
                c.closed = true;
                ItemBody::Code {
                    format: c.lang.clone(),
                    call: c.id.clone(),
                    content: None,
                }
            }
        };
        a.emit(out, Role::Assistant, false, true, body).await;
    }

    async fn open(&mut self, a: &mut Agent, out: &ItemSender, want: Open, body: ItemBody) {
        if self.open.as_ref() == Some(&want) {
            return;
        }
        self.close(a, out).await;
        a.emit(out, Role::Assistant, true, false, body).await;
        self.open = Some(want);
    }

    async fn show(&mut self, a: &mut Agent, out: &ItemSender, d: &Delta, turn: &TurnBuilder) {
        match d {
            Delta::Text(t) | Delta::Reasoning(t) => {
                type Body = fn(Option<String>) -> ItemBody;
                let (want, body): (Open, Body) = if matches!(d, Delta::Text(_)) {
                    (Open::Message, |content| ItemBody::Message { content })
                } else {
                    (Open::Reasoning, |content| ItemBody::Reasoning { content })
                };
                self.open(a, out, want, body(None)).await;
                a.emit(out, Role::Assistant, false, false, body(Some(t.clone())))
                    .await;
            }
            Delta::ToolCall { index, id, .. } => {
                let raw = turn.arguments(*index).unwrap_or("");
                let c = self.calls.entry(*index).or_insert_with(|| CallView {
                    language: StringField::new("language"),
                    lang: String::new(),
                    code: StringField::new("code"),
                    pending: String::new(),
                    id: String::new(),
                    started: false,
                    closed: false,
                });
                if let Some(id) = id.as_ref().filter(|s| !s.is_empty()) {
                    c.id = id.clone();
                }
                if c.closed {
                    return;
                }
                if !c.language.is_done() {
                    c.lang.push_str(&c.language.advance(raw));
                }
                let piece = c.code.advance(raw);
                c.pending.push_str(&piece);
                if !c.language.is_done() || c.pending.is_empty() && !c.started {
                    return;
                }
                if c.id.is_empty() {
                    c.id = format!("call_{index}");
                }
                let lang = spindle_languages_canonical(&c.lang)
                    .map(str::to_string)
                    .unwrap_or_else(|| c.lang.clone());
                c.lang = lang.clone();
                let call = c.id.clone();
                let text = std::mem::take(&mut c.pending);
                c.started = true;
                self.open(
                    a,
                    out,
                    Open::Code(*index),
                    ItemBody::Code {
                        format: lang.clone(),
                        call: call.clone(),
                        content: None,
                    },
                )
                .await;
                if !text.is_empty() {
                    a.emit(
                        out,
                        Role::Assistant,
                        false,
                        false,
                        ItemBody::Code {
                            format: lang,
                            call,
                            content: Some(text),
                        },
                    )
                    .await;
                }
            }
            Delta::Usage { .. } | Delta::Finish(_) => {}
        }
    }
}

fn spindle_languages_canonical(name: &str) -> Option<&'static str> {
    spindle_languages::canonical_name(name)
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
