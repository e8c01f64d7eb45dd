//! Helpers for the loop's black-box tests: the mock OpenAI-compatible server as a real process
//! (`tests/llm/mock_llm.py`), a [`Runner`] over a real [`Kernel`] (one session per language,
//! started on first use), a scripted [`Operator`], and a way to send a message and collect
//! every item it produced.
//!
//! Interpreters: Python is `$SPINDLE_TEST_PYTHON`, else the repository's `.venv/bin/python`
//! (which has matplotlib); bash is `bash` from `PATH`. A missing interpreter fails the test
//! with a message saying what to install or set; nothing is skipped.
#![allow(dead_code)] // each test uses its own subset

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::StreamExt;
use serde_json::{json, Value};
use spindle_kernel::{ExecOptions, Kernel, KernelConfig, Session, SessionSpec};
use spindle_languages::Interpreters;
use spindle_llm::{
    Agent, Decision, Endpoint, LoopSettings, Operator, Provider, ProviderSettings, RunError,
    RunStream, Runner, Secret,
};
use spindle_protocol::conversation::{DoneReason, Item, ItemBody, NoticeFormat, Role};
use spindle_protocol::{Body, ConsoleFormat};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The API key every test uses: distinctive, so a leak is easy to find.
pub const KEY: &str = "sk-test-SECRET-123";
/// The model every test names.
pub const MODEL: &str = "mock-model";
/// Longest one `send` may take before the test fails as hung.
pub const SEND_LIMIT: Duration = Duration::from_secs(60);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate lives in the workspace")
        .to_path_buf()
}

/// The Python of the test virtualenv (matplotlib): `$SPINDLE_TEST_PYTHON`, else `.venv`.
pub fn test_python() -> PathBuf {
    if let Ok(p) = std::env::var("SPINDLE_TEST_PYTHON") {
        if !p.is_empty() {
            let p = PathBuf::from(p);
            assert!(
                p.exists(),
                "SPINDLE_TEST_PYTHON={} does not exist",
                p.display()
            );
            return p;
        }
    }
    let venv = repo_root().join(".venv/bin/python");
    assert!(
        venv.exists(),
        "these tests need a Python with matplotlib: run the README's test command (it creates \
         {}) or set SPINDLE_TEST_PYTHON=/path/to/python",
        venv.display()
    );
    venv
}

// --- the mock server ---------------------------------------------------------------------------

/// One `mock_llm.py` process, killed when dropped.
pub struct Mock {
    child: Child,
    pub port: u16,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Mock {
    /// Start a mock on a free port with an empty script.
    pub async fn start() -> Mock {
        spindle_llm::provider::install_crypto();
        let dir = tempfile::tempdir().expect("a temp dir");
        let script = dir.path().join("script.json");
        std::fs::write(&script, "[]").unwrap();
        let port_file = dir.path().join("port");
        let python = test_python();
        let mock_py = repo_root().join("tests/llm/mock_llm.py");
        assert!(mock_py.exists(), "{} is missing", mock_py.display());
        let child = Command::new(&python)
            .arg(&mock_py)
            .arg("--script")
            .arg(&script)
            .arg("--port")
            .arg("0")
            .arg("--port-file")
            .arg(&port_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} {}: {e}",
                    python.display(),
                    mock_py.display()
                )
            });
        let mut mock = Mock {
            child,
            port: 0,
            http: reqwest::Client::new(),
            _dir: dir,
        };
        let t0 = Instant::now();
        loop {
            if let Ok(s) = std::fs::read_to_string(&port_file) {
                if let Ok(p) = s.trim().parse() {
                    mock.port = p;
                    break;
                }
            }
            if let Ok(Some(status)) = mock.child.try_wait() {
                panic!("the mock server exited at start: {status}");
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "the mock server did not write its port file"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        mock
    }

    /// The base URL clients use: `http://127.0.0.1:PORT/v1`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    async fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("http://127.0.0.1:{}{path}", self.port))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        serde_json::from_str(&r.text().await.unwrap()).unwrap()
    }

    async fn post(&self, path: &str, body: &Value) -> Value {
        let r = self
            .http
            .post(format!("http://127.0.0.1:{}{path}", self.port))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = r.status();
        let text = r.text().await.unwrap();
        assert!(status.is_success(), "POST {path}: {status} {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// Replace the script (and rewind it).
    pub async fn script(&self, turns: Value) {
        self.post("/_mock/script", &turns).await;
    }

    /// Every recorded request.
    pub async fn requests(&self) -> Vec<Value> {
        match self.get("/_mock/requests").await {
            Value::Array(v) => v,
            other => panic!("requests: {other}"),
        }
    }

    /// The recorded chat-completions requests, in order.
    pub async fn chats(&self) -> Vec<Value> {
        self.requests()
            .await
            .into_iter()
            .filter(|r| {
                r["path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with("/chat/completions"))
            })
            .collect()
    }

    /// `{"attempts", "cursor", "turns"}`.
    pub async fn state(&self) -> Value {
        self.get("/_mock/state").await
    }

    pub async fn attempts(&self) -> u64 {
        self.state().await["attempts"].as_u64().unwrap()
    }
}

/// The characters the mock counts for `prompt_tokens` (its `_prompt_chars`).
pub fn prompt_chars(body: &Value) -> usize {
    let mut total = 0;
    for m in body["messages"].as_array().into_iter().flatten() {
        match &m["content"] {
            Value::String(s) => total += s.chars().count(),
            Value::Array(parts) => {
                for p in parts {
                    if let Some(t) = p["text"].as_str() {
                        total += t.chars().count();
                    }
                }
            }
            _ => {}
        }
        for tc in m["tool_calls"].as_array().into_iter().flatten() {
            let f = &tc["function"];
            total += f["name"].as_str().unwrap_or("").chars().count();
            total += f["arguments"].as_str().unwrap_or("").chars().count();
        }
    }
    total
}

/// The messages of a recorded request.
pub fn messages(req: &Value) -> Vec<Value> {
    req["body"]["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages in {req}"))
        .clone()
}

// --- the provider and the loop ------------------------------------------------------------------

/// Fast settings for tests: small backoff, a 2 s idle timeout, two retries.
pub fn fast() -> ProviderSettings {
    ProviderSettings {
        stream: true,
        idle_timeout: Duration::from_secs(2),
        max_retries: 2,
        backoff: Duration::from_millis(20),
    }
}

pub fn provider_at(url: &str, settings: ProviderSettings) -> Provider {
    Provider::new(
        Endpoint {
            base_url: url.to_string(),
            model: MODEL.to_string(),
            api_key: Secret::new(KEY),
        },
        settings,
    )
    .expect("a provider")
}

/// Auto-run, short run timeout, everything else default.
pub fn auto() -> LoopSettings {
    LoopSettings {
        auto_run: true,
        run_timeout: Some(Duration::from_secs(30)),
        ..LoopSettings::default()
    }
}

/// Confirm mode.
pub fn confirm() -> LoopSettings {
    LoopSettings {
        auto_run: false,
        ..auto()
    }
}

/// A mock, a kernel runner (python and bash) and an agent on both.
pub struct Chat {
    pub mock: Mock,
    pub runner: Arc<KernelRunner>,
    pub agent: Agent,
}

impl Chat {
    pub async fn new(settings: LoopSettings) -> Chat {
        Self::with(fast(), settings).await
    }

    pub async fn with(provider: ProviderSettings, settings: LoopSettings) -> Chat {
        let mock = Mock::start().await;
        let runner = Arc::new(KernelRunner::new(&["python", "bash"]));
        let agent = Agent::new(provider_at(&mock.url(), provider), runner.clone(), settings);
        Chat {
            mock,
            runner,
            agent,
        }
    }

    pub async fn send(&mut self, text: &str, op: &dyn Operator) -> Sent {
        send(&mut self.agent, text, op).await
    }

    pub async fn finish(self) {
        self.runner.kernel.shutdown().await;
    }
}

/// What one `send` produced.
#[derive(Debug)]
pub struct Sent {
    pub reason: DoneReason,
    pub items: Vec<Item>,
    pub elapsed: Duration,
}

/// Send `text` and collect its items.
pub async fn send(agent: &mut Agent, text: &str, op: &dyn Operator) -> Sent {
    send_cancelling(agent, text, op, |_| false).await
}

/// Send `text`, cancelling the message's token as soon as an item matches `when`.
pub async fn send_cancelling(
    agent: &mut Agent,
    text: &str,
    op: &dyn Operator,
    when: impl Fn(&Item) -> bool + Send + 'static,
) -> Sent {
    let (tx, mut rx) = mpsc::channel::<Item>(4096);
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let collector = tokio::spawn(async move {
        let mut items = Vec::new();
        while let Some(it) = rx.recv().await {
            if when(&it) {
                c.cancel();
            }
            items.push(it);
        }
        items
    });
    let t0 = Instant::now();
    let reason = tokio::time::timeout(SEND_LIMIT, agent.send(text, op, &tx, &cancel))
        .await
        .unwrap_or_else(|_| panic!("send({text:?}) did not finish within {SEND_LIMIT:?}"));
    let elapsed = t0.elapsed();
    drop(tx);
    let items = collector.await.expect("collector");
    check_items(&items, reason);
    Sent {
        reason,
        items,
        elapsed,
    }
}

/// The conversation invariants: `seq` without gaps, streamed items opened and closed without
/// nesting, exactly one `done` (last) with the reason `send` returned.
pub fn check_items(items: &[Item], reason: DoneReason) {
    assert!(!items.is_empty());
    for w in items.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1, "seq gap: {:#?}", w);
        assert_eq!(w[1].conversation, w[0].conversation);
    }
    let mut open: Option<&Item> = None;
    for it in items {
        if it.start {
            assert!(open.is_none(), "{it:?} opens inside {open:?}");
            open = Some(it);
        } else if it.end {
            let o = open
                .take()
                .unwrap_or_else(|| panic!("{it:?} closes nothing"));
            assert_eq!(
                o.body.type_name(),
                it.body.type_name(),
                "{o:?} closed by {it:?}"
            );
        } else if let Some(o) = open {
            if !matches!(it.body, ItemBody::Output { .. }) {
                assert_eq!(
                    o.body.type_name(),
                    it.body.type_name(),
                    "{it:?} inside {o:?}"
                );
            }
        }
    }
    assert!(open.is_none(), "left open: {open:?}");
    let dones: Vec<_> = items
        .iter()
        .filter(|i| matches!(i.body, ItemBody::Done { .. }))
        .collect();
    assert_eq!(dones.len(), 1, "{items:#?}");
    match &items.last().unwrap().body {
        ItemBody::Done { reason: r, .. } => assert_eq!(*r, reason),
        other => panic!("the last item is not done: {other:?}"),
    }
}

// --- reading items -----------------------------------------------------------------------------

trait TypeName {
    fn type_name(&self) -> &'static str;
}

impl TypeName for ItemBody {
    fn type_name(&self) -> &'static str {
        match self {
            ItemBody::Message { .. } => "message",
            ItemBody::Reasoning { .. } => "reasoning",
            ItemBody::Code { .. } => "code",
            ItemBody::Confirm { .. } => "confirm",
            ItemBody::Input { .. } => "input",
            ItemBody::Declined { .. } => "declined",
            ItemBody::Output { .. } => "output",
            ItemBody::ToolResult { .. } => "tool_result",
            ItemBody::Notice { .. } => "notice",
            ItemBody::Done { .. } => "done",
        }
    }
}

impl Sent {
    /// The content pieces of the assistant's streamed messages.
    pub fn message_pieces(&self) -> Vec<String> {
        self.items
            .iter()
            .filter(|i| i.role == Role::Assistant)
            .filter_map(|i| match &i.body {
                ItemBody::Message { content: Some(c) } => Some(c.clone()),
                _ => None,
            })
            .collect()
    }

    /// The assistant's words, concatenated.
    pub fn text(&self) -> String {
        self.message_pieces().concat()
    }

    pub fn reasoning(&self) -> String {
        self.items
            .iter()
            .filter_map(|i| match &i.body {
                ItemBody::Reasoning { content: Some(c) } => Some(c.as_str()),
                _ => None,
            })
            .collect()
    }

    /// The content pieces of the code items of `call`.
    pub fn code_pieces(&self, call: &str) -> Vec<String> {
        self.items
            .iter()
            .filter_map(|i| match &i.body {
                ItemBody::Code {
                    call: c,
                    content: Some(t),
                    ..
                } if c == call => Some(t.clone()),
                _ => None,
            })
            .collect()
    }

    /// `(call, content, images)` of every tool result, in order.
    pub fn results(&self) -> Vec<(String, String, u32)> {
        self.items
            .iter()
            .filter_map(|i| match &i.body {
                ItemBody::ToolResult {
                    call,
                    content,
                    images,
                } => Some((call.clone(), content.clone(), *images)),
                _ => None,
            })
            .collect()
    }

    /// The only tool result's content.
    pub fn result(&self) -> String {
        let r = self.results();
        assert_eq!(r.len(), 1, "{:#?}", self.items);
        r[0].1.clone()
    }

    pub fn notices(&self, format: NoticeFormat) -> Vec<String> {
        self.items
            .iter()
            .filter_map(|i| match &i.body {
                ItemBody::Notice { format: f, content } if *f == format => Some(content.clone()),
                _ => None,
            })
            .collect()
    }

    /// The only error notice.
    pub fn error(&self) -> String {
        let e = self.notices(NoticeFormat::Error);
        assert_eq!(e.len(), 1, "{:#?}", self.items);
        e[0].clone()
    }

    /// The stdout text of the output items of `call`.
    pub fn stdout(&self, call: &str) -> String {
        self.outputs(call)
            .iter()
            .filter_map(|c| match c {
                Body::Console {
                    format: ConsoleFormat::Stdout,
                    content: Some(t),
                    ..
                } => Some(t.clone()),
                _ => None,
            })
            .collect()
    }

    /// The chunk bodies of the output items of `call`.
    pub fn outputs(&self, call: &str) -> Vec<Body> {
        self.items
            .iter()
            .filter_map(|i| match &i.body {
                ItemBody::Output { call: c, chunk } if c == call => Some(chunk.body.clone()),
                _ => None,
            })
            .collect()
    }

    /// `(rounds, usage)` of the `done` item.
    pub fn done(&self) -> (u32, spindle_protocol::conversation::Usage) {
        match &self.items.last().unwrap().body {
            ItemBody::Done { rounds, usage, .. } => (*rounds, *usage),
            other => panic!("{other:?}"),
        }
    }

    /// The item types in order, for readable assertions.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.items.iter().map(|i| i.body.type_name()).collect()
    }

    pub fn json(&self) -> String {
        serde_json::to_string(&self.items).unwrap()
    }
}

// --- a Runner over a Kernel ----------------------------------------------------------------------

/// Sessions of a real kernel, one per language, started on first use.
pub struct KernelRunner {
    pub kernel: Kernel,
    interpreters: Interpreters,
    languages: Vec<&'static str>,
    sessions: tokio::sync::Mutex<HashMap<&'static str, Session>>,
    /// `(language, code)` of every execute call, in order.
    pub ran: Mutex<Vec<(String, String)>>,
}

impl KernelRunner {
    /// A runner for `languages`; each interpreter must be found, or this panics saying which.
    pub fn new(languages: &[&'static str]) -> Self {
        let interpreters = Interpreters {
            python: Some(test_python().to_string_lossy().into_owned()),
            ..Interpreters::default()
        };
        for l in languages {
            if let Err(e) = interpreters.resolve(l) {
                panic!("the {l} interpreter these tests need is missing: {e}");
            }
        }
        Self {
            kernel: Kernel::new(KernelConfig::default()),
            interpreters,
            languages: languages.to_vec(),
            sessions: tokio::sync::Mutex::new(HashMap::new()),
            ran: Mutex::new(Vec::new()),
        }
    }

    async fn session(&self, language: &'static str) -> Result<Session, RunError> {
        let mut s = self.sessions.lock().await;
        if let Some(s) = s.get(language) {
            return Ok(s.clone());
        }
        let lang = spindle_languages::language(language, &self.interpreters)
            .map_err(|e| RunError(e.to_string()))?;
        let session = self
            .kernel
            .create_session(SessionSpec::new(lang))
            .await
            .map_err(|e| RunError(e.to_string()))?;
        s.insert(language, session.clone());
        Ok(session)
    }

    async fn existing(&self, language: &str) -> Result<Session, RunError> {
        self.sessions
            .lock()
            .await
            .get(language)
            .cloned()
            .ok_or_else(|| RunError(format!("no {language} session")))
    }

    pub fn ran(&self) -> Vec<(String, String)> {
        self.ran.lock().unwrap().clone()
    }
}

impl Runner for KernelRunner {
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
            self.ran
                .lock()
                .unwrap()
                .push((language.to_string(), code.clone()));
            let session = self.session(language).await?;
            let exec = session
                .execute(&code, opts)
                .map_err(|e| RunError(e.to_string()))?;
            let s: RunStream = Box::pin(exec.map(Ok));
            Ok(s)
        })
    }

    fn interrupt(&self, language: &'static str) -> BoxFuture<'_, Result<(), RunError>> {
        Box::pin(async move {
            self.existing(language)
                .await?
                .interrupt()
                .map_err(|e| RunError(e.to_string()))
        })
    }

    fn input_reply(
        &self,
        language: &'static str,
        value: String,
    ) -> BoxFuture<'_, Result<(), RunError>> {
        Box::pin(async move {
            self.existing(language)
                .await?
                .input_reply(&value)
                .map_err(|e| RunError(e.to_string()))
        })
    }
}

// --- a scripted Operator -----------------------------------------------------------------------

/// What the operator was asked.
#[derive(Debug, Clone, PartialEq)]
pub enum Asked {
    Confirm {
        call: String,
        language: String,
        code: String,
    },
    Input {
        call: String,
        prompt: String,
        password: bool,
    },
}

/// Answers from queues (Skip / no input when a queue is empty) and records every question.
#[derive(Default)]
pub struct Scripted {
    decisions: Mutex<VecDeque<Decision>>,
    inputs: Mutex<VecDeque<Option<String>>>,
    asked: Mutex<Vec<Asked>>,
    /// Never answer input requests (a user who walked away).
    pub silent_on_input: bool,
}

impl Scripted {
    pub fn new(decisions: Vec<Decision>, inputs: Vec<Option<String>>) -> Self {
        Self {
            decisions: Mutex::new(decisions.into()),
            inputs: Mutex::new(inputs.into()),
            asked: Mutex::new(Vec::new()),
            silent_on_input: false,
        }
    }

    /// An operator that is never meant to be asked (auto-run).
    pub fn none() -> Self {
        Self::default()
    }

    pub fn asked(&self) -> Vec<Asked> {
        self.asked.lock().unwrap().clone()
    }
}

impl Operator for Scripted {
    fn confirm<'a>(
        &'a self,
        call: &'a str,
        language: &'a str,
        code: &'a str,
    ) -> BoxFuture<'a, Decision> {
        self.asked.lock().unwrap().push(Asked::Confirm {
            call: call.into(),
            language: language.into(),
            code: code.into(),
        });
        let d = self
            .decisions
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Decision::Skip);
        Box::pin(async move { d })
    }

    fn input<'a>(
        &'a self,
        call: &'a str,
        prompt: &'a str,
        password: bool,
    ) -> BoxFuture<'a, Option<String>> {
        self.asked.lock().unwrap().push(Asked::Input {
            call: call.into(),
            prompt: prompt.into(),
            password,
        });
        if self.silent_on_input {
            return Box::pin(futures::future::pending());
        }
        let a = self.inputs.lock().unwrap().pop_front().flatten();
        Box::pin(async move { a })
    }
}

/// An `execute` tool call for a mock turn. The arguments are a string with `language` first,
/// in the schema's order, as models write them (a `json!` object would sort `code` first).
pub fn exec(language: &str, code: &str) -> Value {
    let arguments = format!(
        "{{\"language\": {}, \"code\": {}}}",
        Value::from(language),
        Value::from(code)
    );
    json!({"name": "execute", "arguments": arguments})
}
