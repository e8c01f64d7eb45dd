//! The MCP server: tool calls, resources, progress. Each request runs in its own task (the SDK
//! spawns them), so `interrupt` works while an `execute` of the same session waits.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, PaginatedRequestParams,
    ProgressNotificationParam, ProgressToken, ReadResourceRequestParams, ReadResourceResponse,
    ReadResourceResult, Resource, ResourceContents, ResourceTemplate, ServerCapabilities,
    ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, Peer, RoleServer, ServerHandler};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use spindle_llm::policy::{strip_ansi, Policy};
use spindle_protocol::native::{FileKind, ReplyBody, RequestBody, UploadFile};
use spindle_protocol::{Body, Chunk, ConsoleFormat, Outcome, SessionInfo, StatusFormat};
use tokio::sync::broadcast::error::RecvError;

use super::sessions::{Failure, InputDelivery, NewSession, Sessions};
use super::store::{Exec, Phase, Store, Where};
use super::tools::{self, *};

/// Bytes of recent output a session's resource shows.
const RING: usize = 64 << 10;
/// Largest piece of output in one progress notification.
const PROGRESS_PIECE: usize = 32 << 10;

fn invalid(msg: impl Into<String>) -> ErrorData {
    ErrorData::invalid_params(msg.into(), None)
}

impl From<Failure> for ErrorData {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Invalid(m) => ErrorData::invalid_params(m, None),
            Failure::Internal(m) => ErrorData::internal_error(m, None),
        }
    }
}

/// A session's recent output, for its resource.
#[derive(Default)]
struct Ring {
    pieces: VecDeque<String>,
    bytes: usize,
    dropped: u64,
}

impl Ring {
    fn push(&mut self, s: String) {
        if s.is_empty() {
            return;
        }
        self.bytes += s.len();
        self.pieces.push_back(s);
        while self.bytes > RING && self.pieces.len() > 1 {
            let old = self.pieces.pop_front().expect("non-empty");
            self.bytes -= old.len();
            self.dropped += old.len() as u64;
        }
    }
}

fn rich_plain(r: &spindle_protocol::Rich) -> String {
    match r.bundle.get("text/plain") {
        Some(Value::String(s)) => s.clone(),
        _ => r.data.as_str().map(str::to_string).unwrap_or_default(),
    }
}

fn with_newline(mut s: String) -> String {
    if !s.is_empty() && !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// What a chunk adds to a session's recent output.
fn ring_text(c: &Chunk) -> String {
    if c.start || c.end {
        return String::new();
    }
    match &c.body {
        Body::Console {
            format: ConsoleFormat::Stdout | ConsoleFormat::Stderr,
            content: Some(t),
            ..
        } => t.clone(),
        Body::Result { content: Some(r) }
        | Body::Text { content: Some(r) }
        | Body::Html { content: Some(r) }
        | Body::Markdown { content: Some(r) }
        | Body::Latex { content: Some(r) }
        | Body::Json { content: Some(r) } => with_newline(rich_plain(r)),
        Body::Image {
            format,
            content: Some(r),
        } => format!(
            "[image {} {}×{}]\n",
            format.mime(),
            r.width.unwrap_or(0),
            r.height.unwrap_or(0)
        ),
        Body::Error { content: Some(e) } => {
            let tb: Vec<String> = e.traceback.iter().map(|l| strip_ansi(l)).collect();
            with_newline(if tb.is_empty() {
                format!("{}: {}", e.name, e.value)
            } else {
                tb.join("\n")
            })
        }
        Body::InputRequest { content: Some(r) } => {
            format!("[waiting for input: {}]\n", r.prompt)
        }
        Body::Notice { content: Some(n) } => format!("[{n}]\n"),
        Body::Status {
            format: StatusFormat::Finished,
            content,
        } => {
            let outcome = content
                .as_ref()
                .and_then(|c| c.outcome)
                .map_or("unknown".to_string(), |o| outcome_name(o).to_string());
            format!("[finished: {outcome}]\n")
        }
        _ => String::new(),
    }
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Ok => "ok",
        Outcome::Error => "error",
        Outcome::Interrupted => "interrupted",
        Outcome::Timeout => "timeout",
        Outcome::Died => "died",
        Outcome::Aborted => "aborted",
    }
}

struct Inner {
    sessions: Sessions,
    store: Store,
    rings: Mutex<HashMap<String, Ring>>,
    /// Names and ids of sessions closed through `close_session` (an `execute` naming one is an
    /// error, not a silent new session).
    closed: Mutex<HashSet<String>>,
    /// Embedded sessions whose chunks feed their ring.
    watched: Mutex<HashSet<String>>,
    creating: tokio::sync::Mutex<()>,
    tools: Vec<Tool>,
}

/// The MCP server. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Server {
    inner: Arc<Inner>,
}

fn parse<T: DeserializeOwned>(
    tool: &str,
    args: Option<rmcp::model::JsonObject>,
) -> Result<T, ErrorData> {
    let v = Value::Object(args.unwrap_or_default());
    serde_json::from_value(v).map_err(|e| {
        invalid(format!(
            "invalid arguments for {tool}: {e} (see the tool's input schema in tools/list)"
        ))
    })
}

fn wait_limit(timeout_s: Option<f64>) -> Result<Duration, ErrorData> {
    let t = timeout_s.unwrap_or(DEFAULT_WAIT_S);
    if !t.is_finite() || !(0.0..=MAX_WAIT_S).contains(&t) {
        return Err(invalid(format!(
            "timeout_s must be between 0 and {MAX_WAIT_S} seconds, not {t}"
        )));
    }
    Ok(Duration::from_secs_f64(t))
}

fn canonical(lang: &str) -> Result<&'static str, ErrorData> {
    spindle_languages::canonical_name(lang).ok_or_else(|| {
        invalid(format!(
            "unknown language {lang:?}; the languages are python, bash and node"
        ))
    })
}

fn check_code(code: &str) -> Result<(), ErrorData> {
    if code.len() > MAX_CODE {
        return Err(invalid(format!(
            "code is {} bytes; the most one execute accepts is {MAX_CODE} bytes (4 MiB)",
            code.len()
        )));
    }
    if code.trim().is_empty() {
        return Err(invalid("code is empty"));
    }
    if let Some(at) = code.find('\0') {
        return Err(invalid(format!(
            "code contains a NUL byte at offset {at}; NUL cannot be sent to an interpreter"
        )));
    }
    Ok(())
}

/// The MIME type of a binary file, from its first bytes.
fn sniff_mime(b: &[u8]) -> &'static str {
    if b.starts_with(b"\x89PNG\r\n\x1a\n") {
        "image/png"
    } else if b.starts_with(b"\xff\xd8\xff") {
        "image/jpeg"
    } else if b.starts_with(b"GIF8") {
        "image/gif"
    } else if b.starts_with(b"%PDF-") {
        "application/pdf"
    } else {
        "application/octet-stream"
    }
}

fn session_json(s: &SessionInfo) -> Value {
    serde_json::to_value(s).unwrap_or(Value::Null)
}

fn text_result(text: String, structured: Option<Value>) -> CallToolResult {
    let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
    r.structured_content = structured;
    r
}

impl Server {
    pub(crate) fn new(sessions: Sessions, policy: Policy) -> Self {
        Self {
            inner: Arc::new(Inner {
                sessions,
                store: Store::new(policy),
                rings: Mutex::new(HashMap::new()),
                closed: Mutex::new(HashSet::new()),
                watched: Mutex::new(HashSet::new()),
                creating: tokio::sync::Mutex::new(()),
                tools: tools::all(),
            }),
        }
    }

    pub(crate) async fn shutdown(&self) {
        self.inner.sessions.shutdown().await;
    }

    fn ring_push(&self, session: &str, text: String) {
        if text.is_empty() {
            return;
        }
        self.inner
            .rings
            .lock()
            .expect("rings")
            .entry(session.to_string())
            .or_default()
            .push(text);
    }

    /// Feed an embedded session's ring from its watch channel (once per session).
    fn watch(&self, id: &str) {
        if !self
            .inner
            .watched
            .lock()
            .expect("watched")
            .insert(id.to_string())
        {
            return;
        }
        let Some(mut rx) = self.inner.sessions.subscribe(id) else {
            return;
        };
        let me = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(c) => me.ring_push(&id, ring_text(&c)),
                    Err(RecvError::Lagged(n)) => {
                        me.ring_push(&id, format!("[{n} chunks missed]\n"))
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        });
    }

    fn check_not_closed(&self, key: &str) -> Result<(), ErrorData> {
        if self.inner.closed.lock().expect("closed").contains(key) {
            return Err(invalid(format!(
                "session {key:?} was closed; create_session starts a new one"
            )));
        }
        Ok(())
    }

    async fn existing(&self, key: &str) -> Result<SessionInfo, ErrorData> {
        self.check_not_closed(key)?;
        Ok(self.inner.sessions.get(key).await?)
    }

    /// The session `execute` runs in, created on first use.
    async fn resolve(
        &self,
        session: Option<&str>,
        language: Option<&str>,
    ) -> Result<SessionInfo, ErrorData> {
        let lang = language.map(canonical).transpose()?;
        let key = match session {
            Some(s) if s.trim().is_empty() => return Err(invalid("session is empty")),
            Some(s) => {
                self.check_not_closed(s)?;
                s.to_string()
            }
            None => format!("mcp-{}", lang.unwrap_or("python")),
        };
        let check = |info: SessionInfo| match lang {
            Some(l) if info.language != l => Err(invalid(format!(
                "session {key:?} is a {} session, not {l}",
                info.language
            ))),
            _ => Ok(info),
        };
        if let Some(info) = self.inner.sessions.find(&key).await? {
            return check(info);
        }
        let _guard = self.inner.creating.lock().await;
        if let Some(info) = self.inner.sessions.find(&key).await? {
            return check(info);
        }
        let info = self
            .inner
            .sessions
            .create(NewSession {
                language: lang.unwrap_or("python"),
                name: Some(key.clone()),
                ..NewSession::default()
            })
            .await?;
        self.watch(&info.id);
        Ok(info)
    }

    async fn call(
        &self,
        name: &str,
        args: Option<rmcp::model::JsonObject>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        match name {
            "execute" => self.execute(parse(name, args)?, ctx).await,
            "read_output" => self.read_output(parse(name, args)?),
            "wait" => self.wait(parse(name, args)?, ctx).await,
            "list_sessions" => {
                let _: NoArgs = parse(name, args)?;
                self.list_sessions().await
            }
            "create_session" => self.create_session(parse(name, args)?).await,
            "close_session" => self.close_session(parse(name, args)?).await,
            "restart_session" => self.restart_session(parse(name, args)?).await,
            "interrupt" => self.interrupt(parse(name, args)?).await,
            "send_input" => self.send_input(parse(name, args)?).await,
            "upload_file" => self.upload_file(parse(name, args)?).await,
            "download_file" => self.download_file(parse(name, args)?).await,
            "list_files" => self.list_files(parse(name, args)?).await,
            other => Err(invalid(format!(
                "unknown tool {other:?}; the tools are: {}",
                self.inner
                    .tools
                    .iter()
                    .map(|t| t.name.as_ref())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    async fn execute(
        &self,
        a: ExecuteArgs,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        check_code(&a.code)?;
        let limit = wait_limit(a.timeout_s)?;
        let info = self
            .resolve(a.session.as_deref(), a.language.as_deref())
            .await?;
        let store = &self.inner.store;
        let id = store.next_id();
        let stream = self.inner.sessions.execute(&info.id, &a.code, &id).await?;
        let first = a.code.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        let more = if a.code.trim().lines().count() > 1 {
            " …"
        } else {
            ""
        };
        self.ring_push(&info.id, format!("[{id}] >>> {first}{more}\n"));
        let tap: Box<dyn Fn(&Chunk) + Send> = if self.inner.sessions.is_embedded() {
            Box::new(|_: &Chunk| {})
        } else {
            let me = self.clone();
            let sid = info.id.clone();
            Box::new(move |c: &Chunk| me.ring_push(&sid, ring_text(c)))
        };
        let exec = store.start(
            id,
            Where {
                id: info.id.clone(),
                name: info.name.clone(),
                language: info.language.clone(),
            },
            stream,
            tap,
        );
        let phase = self.await_exec(&exec, limit, &ctx).await;
        Ok(self.exec_result(&exec, phase))
    }

    async fn wait(
        &self,
        a: WaitArgs,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let limit = wait_limit(a.timeout_s)?;
        let exec = self.inner.store.get(&a.execution).map_err(invalid)?;
        let phase = self.await_exec(&exec, limit, &ctx).await;
        Ok(self.exec_result(&exec, phase))
    }

    /// Wait until the run finishes, asks for input, the limit passes or the client cancels,
    /// sending the output as progress notifications when the client asked for them.
    async fn await_exec(
        &self,
        exec: &Arc<Exec>,
        limit: Duration,
        ctx: &RequestContext<RoleServer>,
    ) -> Phase {
        let deadline = tokio::time::Instant::now() + limit;
        let token = ctx.meta.get_progress_token();
        let mut changed = exec.watch();
        let mut cursor = exec.progress_since(usize::MAX).2;
        // Progress starts from what the client has not seen: everything, for a new run.
        if exec.phase() != Phase::Finished {
            cursor = 0;
        }
        let mut last_progress = 0u64;
        loop {
            changed.borrow_and_update();
            if let Some(token) = &token {
                let (events, text, end) = exec.progress_since(cursor);
                if events > last_progress {
                    last_progress = events;
                    cursor = end;
                    send_progress(&ctx.peer, token, events, text).await;
                }
            }
            let phase = exec.phase();
            if phase != Phase::Running {
                return phase;
            }
            tokio::select! {
                r = changed.changed() => {
                    if r.is_err() {
                        return exec.phase();
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return exec.phase(),
                _ = ctx.ct.cancelled() => return exec.phase(),
            }
        }
    }

    fn exec_result(&self, exec: &Exec, phase: Phase) -> CallToolResult {
        let out = exec.view(self.inner.store.policy());
        let at = &exec.at;
        let total = exec.total_bytes();
        let sess = format!("session {} ({})", at.name, at.language);
        let (line, status) = match phase {
            Phase::Finished => {
                let outcome = exec.outcome();
                let name = match (&outcome, exec.failure()) {
                    (Some(o), _) => outcome_name(*o).to_string(),
                    (None, Some(f)) => format!("lost ({f})"),
                    (None, None) => "unknown".to_string(),
                };
                let secs = exec
                    .duration_ms()
                    .map_or(String::new(), |ms| format!(" in {:.3} s", ms / 1000.0));
                let mut l = format!("[execution {} · {sess} · {name}{secs}", exec.id);
                if out.dropped > 0 {
                    l.push_str(&format!(
                        " · {total} bytes of console output: read_output(execution=\"{}\") pages all of it",
                        exec.id
                    ));
                }
                l.push(']');
                (l, "finished")
            }
            Phase::Waiting => (
                format!(
                    "[execution {} · {sess} · waiting for input: answer with send_input(session=\"{}\", text=...), then wait(execution=\"{}\")]",
                    exec.id, at.name, exec.id
                ),
                "waiting_for_input",
            ),
            Phase::Running => (
                format!(
                    "[execution {} · {sess} · still running after {:.1} s; the run continues. Pick it up with wait(execution=\"{}\") or read_output(execution=\"{}\") ({total} bytes so far); stop it with interrupt(session=\"{}\")]",
                    exec.id,
                    exec.started.elapsed().as_secs_f64(),
                    exec.id,
                    exec.id,
                    at.name
                ),
                "running",
            ),
        };
        let mut text = out.text;
        if phase != Phase::Finished && text == "(no output)" {
            text = "(no output yet)".into();
        }
        text.push_str("\n\n");
        text.push_str(&line);
        let mut content = vec![ContentBlock::text(text)];
        for img in &out.images {
            if let Some((_, b64)) = img.data_url.split_once(";base64,") {
                content.push(ContentBlock::image(b64.to_string(), img.mime.clone()));
            }
        }
        let outcome = exec.outcome();
        let failed = phase == Phase::Finished
            && (matches!(outcome, Some(Outcome::Error | Outcome::Died))
                || (outcome.is_none() && exec.failure().is_some()));
        let mut r = if failed {
            CallToolResult::error(content)
        } else {
            CallToolResult::success(content)
        };
        r.structured_content = Some(json!({
            "execution": exec.id,
            "session": at.id,
            "session_name": at.name,
            "language": at.language,
            "status": status,
            "outcome": outcome.map(outcome_name),
            "console_bytes": total,
            "waiting_for": exec.waiting_prompt(),
        }));
        r
    }

    fn read_output(&self, a: ReadOutputArgs) -> Result<CallToolResult, ErrorData> {
        let exec = self.inner.store.get(&a.execution).map_err(invalid)?;
        let limit = a.limit.unwrap_or(DEFAULT_PAGE as u64);
        if limit == 0 || limit > MAX_PAGE as u64 {
            return Err(invalid(format!(
                "limit must be between 1 and {MAX_PAGE} bytes, not {limit}"
            )));
        }
        let page = exec
            .page(a.offset.unwrap_or(0), limit as usize)
            .map_err(invalid)?;
        let state = if page.finished {
            "finished"
        } else {
            "still running"
        };
        let mut meta = format!(
            "[execution {} · bytes {}..{} of {} · next_offset {} · {state}",
            exec.id, page.offset, page.next_offset, page.total, page.next_offset
        );
        if page.next_offset >= page.kept && page.total > page.kept {
            meta.push_str(&format!(
                " · the {} bytes after byte {} were not kept (over {} MiB)",
                page.total - page.kept,
                page.kept,
                super::store::OUTPUT_KEEP >> 20
            ));
        }
        meta.push(']');
        let structured = json!({
            "execution": exec.id,
            "offset": page.offset,
            "next_offset": page.next_offset,
            "total_bytes": page.total,
            "kept_bytes": page.kept,
            "finished": page.finished,
            "eof": page.finished && page.next_offset >= page.kept,
        });
        let mut r = CallToolResult::success(vec![
            ContentBlock::text(page.text),
            ContentBlock::text(meta),
        ]);
        r.structured_content = Some(structured);
        Ok(r)
    }

    async fn list_sessions(&self) -> Result<CallToolResult, ErrorData> {
        let list = self.inner.sessions.list().await?;
        let mut text = String::new();
        if list.is_empty() {
            text.push_str("no sessions yet (execute creates mcp-<language> on first use)");
        }
        for s in &list {
            text.push_str(&format!(
                "{}  {}  {}  {:?}  pid {}  executions {}\n",
                s.name,
                s.language,
                s.id,
                s.state,
                s.pid.map_or("-".into(), |p| p.to_string()),
                s.execution_count
            ));
        }
        let v: Vec<Value> = list.iter().map(session_json).collect();
        Ok(text_result(
            text.trim_end().to_string(),
            Some(json!({ "sessions": v })),
        ))
    }

    async fn create_session(&self, a: CreateSessionArgs) -> Result<CallToolResult, ErrorData> {
        let language = canonical(&a.language)?;
        if let Some(n) = &a.name {
            if n.trim().is_empty() {
                return Err(invalid("name is empty"));
            }
        }
        if let Some(cwd) = &a.cwd {
            if !std::path::Path::new(cwd).is_dir() && self.inner.sessions.is_embedded() {
                return Err(invalid(format!("cwd {cwd:?} is not a directory")));
            }
        }
        let info = self
            .inner
            .sessions
            .create(NewSession {
                language,
                name: a.name.clone(),
                cwd: a.cwd,
                env: a.env.unwrap_or_default(),
            })
            .await?;
        {
            let mut closed = self.inner.closed.lock().expect("closed");
            closed.remove(&info.name);
            closed.remove(&info.id);
        }
        self.watch(&info.id);
        Ok(text_result(
            format!(
                "created session {} ({}, id {})",
                info.name, info.language, info.id
            ),
            Some(session_json(&info)),
        ))
    }

    async fn close_session(&self, a: SessionArgs) -> Result<CallToolResult, ErrorData> {
        let info = self.existing(&a.session).await?;
        self.inner.sessions.close(&info.id).await?;
        {
            let mut closed = self.inner.closed.lock().expect("closed");
            closed.insert(info.name.clone());
            closed.insert(info.id.clone());
        }
        self.inner.rings.lock().expect("rings").remove(&info.id);
        Ok(text_result(
            format!("closed session {} ({})", info.name, info.id),
            None,
        ))
    }

    async fn restart_session(&self, a: SessionArgs) -> Result<CallToolResult, ErrorData> {
        let info = self.existing(&a.session).await?;
        let info = self.inner.sessions.restart(&info.id).await?;
        self.ring_push(&info.id, "[restarted]\n".into());
        Ok(text_result(
            format!(
                "restarted session {} ({}); its state is fresh",
                info.name, info.language
            ),
            Some(session_json(&info)),
        ))
    }

    async fn interrupt(&self, a: SessionArgs) -> Result<CallToolResult, ErrorData> {
        let info = self.existing(&a.session).await?;
        let busy = info.state == spindle_protocol::SessionState::Busy;
        self.inner.sessions.interrupt(&info.id).await?;
        Ok(text_result(
            if busy {
                format!(
                    "interrupted the running execution of session {} (SIGINT)",
                    info.name
                )
            } else {
                format!(
                    "session {} was not running anything; interrupt sent anyway",
                    info.name
                )
            },
            None,
        ))
    }

    async fn send_input(&self, a: SendInputArgs) -> Result<CallToolResult, ErrorData> {
        if a.text.len() > MAX_INPUT {
            return Err(invalid(format!(
                "text is {} bytes; at most {MAX_INPUT} bytes",
                a.text.len()
            )));
        }
        if a.text.contains('\0') {
            return Err(invalid("text contains a NUL byte"));
        }
        let info = self.existing(&a.session).await?;
        let waiting = self.inner.store.waiting_in(&info.id);
        let how = self.inner.sessions.send_input(&info.id, &a.text).await?;
        let msg = match how {
            InputDelivery::Reply => {
                for e in &waiting {
                    e.answered();
                }
                let ids: Vec<&str> = waiting.iter().map(|e| e.id.as_str()).collect();
                if ids.is_empty() {
                    format!("answered the input request of session {}", info.name)
                } else {
                    format!(
                        "answered the input request of execution {} (session {}); wait(execution=\"{}\") for the rest",
                        ids.join(", "),
                        info.name,
                        ids[0]
                    )
                }
            }
            InputDelivery::Stdin(n) => format!(
                "no input request was pending: wrote {n} bytes to the terminal of session {}",
                info.name
            ),
        };
        Ok(text_result(msg, None))
    }

    async fn upload_file(&self, a: UploadFileArgs) -> Result<CallToolResult, ErrorData> {
        // Base64 of MAX_FILE bytes, padded.
        let most = MAX_FILE.div_ceil(3) * 4;
        if a.data_base64.len() as u64 > most {
            return Err(invalid(format!(
                "data_base64 is {} characters; at most {most} ({MAX_FILE} bytes decoded)",
                a.data_base64.len()
            )));
        }
        let info = self.existing(&a.session).await?;
        let body = RequestBody::UploadFile(UploadFile {
            session: info.id.clone(),
            path: a.path,
            data: a.data_base64,
            mode: a.mode,
        });
        let ReplyBody::File { path, size, .. } = self.inner.sessions.files(body).await? else {
            return Err(ErrorData::internal_error(
                "unexpected reply to upload_file",
                None,
            ));
        };
        Ok(text_result(
            format!("wrote {size} bytes to {path} in session {}", info.name),
            Some(json!({"path": path, "size": size})),
        ))
    }

    async fn download_file(&self, a: DownloadFileArgs) -> Result<CallToolResult, ErrorData> {
        let info = self.existing(&a.session).await?;
        let body = RequestBody::DownloadFile {
            session: info.id.clone(),
            path: a.path,
        };
        let ReplyBody::File {
            path,
            size,
            data: Some(data),
        } = self.inner.sessions.files(body).await?
        else {
            return Err(ErrorData::internal_error(
                "unexpected reply to download_file",
                None,
            ));
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.as_bytes())
            .map_err(|e| {
                ErrorData::internal_error(format!("bad base64 from the host: {e}"), None)
            })?;
        let uri = format!("spindle://sessions/{}/files/{path}", info.id);
        match String::from_utf8(bytes) {
            Ok(text) => Ok(text_result(
                text,
                Some(json!({"path": path, "size": size, "encoding": "utf-8", "uri": uri})),
            )),
            Err(e) => {
                let mime = sniff_mime(e.as_bytes());
                let resource = ResourceContents::blob(data, uri.clone()).with_mime_type(mime);
                let mut r = CallToolResult::success(vec![
                    ContentBlock::resource(resource),
                    ContentBlock::text(format!(
                        "{path}: {size} bytes, not UTF-8 text ({mime}); its bytes are the embedded \
resource's blob (base64)"
                    )),
                ]);
                r.structured_content = Some(json!({
                    "path": path, "size": size, "encoding": "base64", "mime_type": mime, "uri": uri
                }));
                Ok(r)
            }
        }
    }

    async fn list_files(&self, a: ListFilesArgs) -> Result<CallToolResult, ErrorData> {
        let info = self.existing(&a.session).await?;
        let body = RequestBody::ListFiles {
            session: info.id.clone(),
            path: a.path,
        };
        let ReplyBody::Files {
            path,
            root,
            entries,
            truncated,
        } = self.inner.sessions.files(body).await?
        else {
            return Err(ErrorData::internal_error(
                "unexpected reply to list_files",
                None,
            ));
        };
        let mut text = format!("{path} in {root} (session {}):\n", info.name);
        if entries.is_empty() {
            text.push_str("(empty)\n");
        }
        for e in &entries {
            let kind = match e.kind {
                FileKind::File => "file",
                FileKind::Dir => "dir",
                FileKind::Symlink => "symlink",
                FileKind::Other => "other",
            };
            text.push_str(&format!(
                "{kind:<7} {:>12}  {}  {}\n",
                e.size, e.mtime, e.name
            ));
        }
        if truncated > 0 {
            text.push_str(&format!("… and {truncated} more entries\n"));
        }
        Ok(text_result(
            text.trim_end().to_string(),
            Some(json!({"path": path, "root": root, "entries": entries, "truncated": truncated})),
        ))
    }

    fn resource_text(&self, info: &SessionInfo) -> String {
        let rings = self.inner.rings.lock().expect("rings");
        let mut text = format!(
            "session {} · {} · id {} · {:?} · executions {}\n",
            info.name, info.language, info.id, info.state, info.execution_count
        );
        match rings.get(&info.id) {
            Some(r) => {
                if r.dropped > 0 {
                    text.push_str(&format!("[… {} earlier bytes not kept …]\n", r.dropped));
                }
                for p in &r.pieces {
                    text.push_str(p);
                }
            }
            None => text.push_str("(no output seen yet)\n"),
        }
        text
    }
}

async fn send_progress(peer: &Peer<RoleServer>, token: &ProgressToken, events: u64, text: String) {
    let message = if text.len() > PROGRESS_PIECE {
        let mut cut = PROGRESS_PIECE;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        format!(
            "{}\n[… {} more bytes: read_output has them]",
            &text[..cut],
            text.len() - cut
        )
    } else {
        text
    };
    let mut p = ProgressNotificationParam::new(token.clone(), events as f64);
    if !message.is_empty() {
        p = p.with_message(message);
    }
    if let Err(e) = peer.notify_progress(p).await {
        tracing::debug!(error = %e, "progress notification not sent");
    }
}

const INSTRUCTIONS: &str = "Spindle runs Python, bash and Node.js in persistent sessions. \
Use `execute` to run code (state is kept per session; the default session of each language is \
`mcp-<language>`). Long runs keep going past timeout_s: `wait` and `read_output` pick them up by \
execution id. `read_output` pages the full console output of any execution. Each session is also a \
resource, spindle://sessions/{id}, showing its recent output.";

impl ServerHandler for Server {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
        .with_server_info(Implementation::new("spindle", env!("CARGO_PKG_VERSION")))
        .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.inner.tools.clone()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.inner.tools.iter().find(|t| t.name == name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let started = Instant::now();
        let name = request.name.to_string();
        let r = self.call(&name, request.arguments, context).await;
        tracing::debug!(
            tool = name,
            ms = started.elapsed().as_secs_f64() * 1e3,
            ok = r.is_ok(),
            "tool call"
        );
        r.map(Into::into)
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let list = self.inner.sessions.list().await?;
        let items = list
            .into_iter()
            .map(|s| {
                Resource::new(format!("spindle://sessions/{}", s.id), s.name.clone())
                    .with_description(format!(
                        "{} session {}: its recent output ({:?})",
                        s.language, s.name, s.state
                    ))
                    .with_mime_type("text/plain")
            })
            .collect();
        Ok(ListResourcesResult::with_all_items(items))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new("spindle://sessions/{id}", "session")
                .with_description("A session (by id or name): its recent output")
                .with_mime_type("text/plain"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let uri = request.uri.clone();
        let Some(key) = uri.strip_prefix("spindle://sessions/") else {
            return Err(ErrorData::resource_not_found(
                format!("no resource {uri:?}; session resources are spindle://sessions/{{id}}"),
                None,
            ));
        };
        let info = match self.inner.sessions.find(key).await? {
            Some(i) => i,
            None => {
                return Err(ErrorData::resource_not_found(
                    format!("no session {key:?} (it may have been closed)"),
                    None,
                ))
            }
        };
        let text = self.resource_text(&info);
        Ok(
            ReadResourceResult::new(vec![ResourceContents::TextResourceContents {
                uri,
                mime_type: Some("text/plain".into()),
                text,
                meta: None,
            }])
            .into(),
        )
    }
}
