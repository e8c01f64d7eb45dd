//! One session: one persistent language process, its execution queue, and the task that turns
//! what the process writes into chunks.
//!
//! Each session runs an *actor* task that owns the process. Reader threads feed it the PTY, the
//! child's stderr and the event stream; it merges them in order (holding an event until the
//! sentinels it names have come through the PTY and stderr), shapes the result into chunks, and
//! sends them to the execution's stream and to the session's watchers. Interrupts, stdin and
//! input replies bypass the actor, so a busy or back-pressured actor never delays them.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use serde_json::{Map, Value};
use spindle_protocol::{
    body_for_bundle, Body, Chunk, ClearOutput, ConsoleFormat, ErrorContent, FileRef, ImageFormat,
    InputRequest, Outcome, Rich, SessionInfo, SessionState, StatusContent, StatusFormat,
};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::error::KernelError;
use crate::frames::{Frame, FrameReader, Piece, SentinelScanner, Utf8Decoder};
use crate::language::{ChildRequest, Language, LaunchContext, Outbound};
use crate::launcher::{make_run_dir, write_private, ExitInfo, LaunchRequest, ProcessControl};
use crate::options::{ExecOptions, KernelConfig, Query, SessionSpec};

/// Console text is coalesced up to this size before a chunk is cut.
const COALESCE: usize = 1 << 20;
/// How long a frame may wait for its sentinels before it is let through anyway.
const HOLD_LIMIT: Duration = Duration::from_secs(2);
/// After the process ends, how long to wait for its last bytes.
const DRAIN_LIMIT: Duration = Duration::from_millis(500);

/// A handle to a session. Cheap to clone.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
    /// Held by handles and executions only: when every one is gone the actor closes the session.
    cmd_tx: mpsc::UnboundedSender<Cmd>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.inner.id)
            .field("name", &self.inner.name)
            .finish()
    }
}

struct Inner {
    id: String,
    name: String,
    language: Arc<dyn Language>,
    /// The sandbox the processes run in, if any.
    sandbox: Option<spindle_protocol::SandboxInfo>,
    /// The working directory on the host (for file requests when not sandboxed).
    work_root: Option<std::path::PathBuf>,
    shared: Mutex<Shared>,
    watch: broadcast::Sender<Chunk>,
}

/// State read and written outside the actor.
struct Shared {
    state: SessionState,
    pid: Option<u32>,
    execution_count: u64,
    queued: usize,
    language_version: Option<String>,
    starts: u64,
    control: Option<Arc<dyn ProcessControl>>,
    req_tx: Option<std::sync::mpsc::Sender<Outbound>>,
    input_pending: bool,
    running: Option<String>,
}

enum Cmd {
    Execute {
        id: String,
        code: String,
        opts: ExecOptions,
        tx: mpsc::Sender<Chunk>,
    },
    Query {
        req: ChildRequest,
        tx: oneshot::Sender<Result<Value, KernelError>>,
    },
    Cancel(String),
    Restart(oneshot::Sender<Result<(), KernelError>>),
    Close(oneshot::Sender<()>),
}

/// The chunk stream of one execution. Dropping it before it finishes interrupts the execution
/// (or takes it out of the queue).
pub struct Execution {
    id: String,
    rx: mpsc::Receiver<Chunk>,
    cmd_tx: mpsc::UnboundedSender<Cmd>,
    finished: bool,
}

impl std::fmt::Debug for Execution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Execution")
            .field("id", &self.id)
            .field("finished", &self.finished)
            .finish()
    }
}

impl Execution {
    /// The request id the chunks carry.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Stream for Execution {
    type Item = Chunk;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Chunk>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(c)) => {
                if c.is_finished() {
                    self.finished = true;
                }
                Poll::Ready(Some(c))
            }
            Poll::Ready(None) => {
                self.finished = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Execution {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.cmd_tx.send(Cmd::Cancel(self.id.clone()));
        }
    }
}

impl Session {
    /// Start the process and wait until it is ready.
    pub(crate) async fn start(
        spec: SessionSpec,
        config: KernelConfig,
    ) -> Result<Self, KernelError> {
        let id = uuid::Uuid::new_v4().to_string();
        let name = spec.name.clone().unwrap_or_else(|| id.clone());
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (watch, _) = broadcast::channel(config.watch_capacity.max(16));
        let inner = Arc::new(Inner {
            id: id.clone(),
            name,
            language: spec.language.clone(),
            sandbox: spec.launcher.as_ref().unwrap_or(&config.launcher).sandbox(),
            work_root: spec.cwd.clone().or_else(|| std::env::current_dir().ok()),
            shared: Mutex::new(Shared {
                state: SessionState::Starting,
                pid: None,
                execution_count: 0,
                queued: 0,
                language_version: None,
                starts: 0,
                control: None,
                req_tx: None,
                input_pending: false,
                running: None,
            }),
            watch,
        });
        let proc = Proc::start(&inner, &spec, &config).await?;
        let actor = Actor {
            inner: inner.clone(),
            cmd_rx,
            spec,
            config,
            proc: Some(proc),
            queue: VecDeque::new(),
            current: None,
            seq: 0,
            idle_block: None,
            deferred: VecDeque::new(),
        };
        inner.shared.lock().expect("session state").state = SessionState::Idle;
        tokio::spawn(actor.run());
        Ok(Session { inner, cmd_tx })
    }

    pub fn id(&self) -> &str {
        &self.inner.id
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn language(&self) -> &Arc<dyn Language> {
        &self.inner.language
    }

    /// A snapshot of the session's state.
    pub fn info(&self) -> SessionInfo {
        let s = self.inner.shared.lock().expect("session state");
        SessionInfo {
            id: self.inner.id.clone(),
            name: self.inner.name.clone(),
            language: self.inner.language.name().to_string(),
            language_version: s.language_version.clone(),
            state: s.state,
            pid: s.pid,
            execution_count: s.execution_count,
            queued: s.queued,
            starts: s.starts,
            sandbox: self.inner.sandbox.clone(),
        }
    }

    /// Queue `code` for execution and return its chunk stream.
    pub fn execute(&self, code: &str, opts: ExecOptions) -> Result<Execution, KernelError> {
        if code.trim().is_empty() {
            return Err(KernelError::EmptyCode);
        }
        if let Some(at) = code.find('\0') {
            return Err(KernelError::NulInCode(at));
        }
        self.ensure_open()?;
        let id = opts
            .id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        // Chunks are up to 1 MiB: keep the per-execution buffer small (back-pressure does the rest).
        let (tx, rx) = mpsc::channel(64);
        self.inner.shared.lock().expect("session state").queued += 1;
        self.cmd_tx
            .send(Cmd::Execute {
                id: id.clone(),
                code: code.to_string(),
                opts,
                tx,
            })
            .map_err(|_| KernelError::Closed(self.inner.id.clone()))?;
        Ok(Execution {
            id,
            rx,
            cmd_tx: self.cmd_tx.clone(),
            finished: false,
        })
    }

    /// Ask the session a question (completion, inspection, is-complete).
    pub async fn query(&self, query: Query) -> Result<Value, KernelError> {
        self.ensure_open()?;
        let id = uuid::Uuid::new_v4().to_string();
        let req = match query {
            Query::Complete { code, cursor_pos } => ChildRequest::Complete {
                id,
                code,
                cursor_pos,
            },
            Query::Inspect {
                code,
                cursor_pos,
                detail_level,
            } => ChildRequest::Inspect {
                id,
                code,
                cursor_pos,
                detail_level,
            },
            Query::IsComplete { code } => ChildRequest::IsComplete { id, code },
        };
        let (tx, rx) = oneshot::channel();
        self.inner.shared.lock().expect("session state").queued += 1;
        self.cmd_tx
            .send(Cmd::Query { req, tx })
            .map_err(|_| KernelError::Closed(self.inner.id.clone()))?;
        rx.await
            .map_err(|_| KernelError::Closed(self.inner.id.clone()))?
    }

    /// The session's work directory, for files in and out: the sandbox's (`/work` in its
    /// container) or else the working directory the session was started in.
    pub fn work_dir(&self) -> Result<Arc<dyn crate::files::WorkDir>, KernelError> {
        let s = self.inner.shared.lock().expect("session state");
        if s.state == SessionState::Closed {
            return Err(KernelError::Closed(self.inner.id.clone()));
        }
        if let Some(w) = s.control.as_ref().and_then(|c| c.work_dir()) {
            return Ok(w);
        }
        if self.inner.sandbox.is_some() {
            return Err(crate::files::FilesError::Unavailable(format!(
                "session {} is starting its sandbox; try again when it is ready",
                self.inner.id
            ))
            .into());
        }
        match &self.inner.work_root {
            Some(root) => Ok(Arc::new(crate::files::LocalWorkDir::new(root.clone()))),
            None => Err(crate::files::FilesError::Unavailable(
                "the session's working directory is unknown".into(),
            )
            .into()),
        }
    }

    /// Interrupt the running execution: SIGINT to the PTY's foreground process group. Does
    /// nothing when the session is idle.
    pub fn interrupt(&self) -> Result<(), KernelError> {
        let control = {
            let s = self.inner.shared.lock().expect("session state");
            if s.state == SessionState::Closed {
                return Err(KernelError::Closed(self.inner.id.clone()));
            }
            if s.running.is_none() {
                return Ok(());
            }
            s.control.clone()
        };
        if let Some(c) = control {
            c.interrupt()?;
        }
        Ok(())
    }

    /// Write raw bytes to the terminal, for programs that read it (`read`, `sudo`, y/n prompts).
    /// The bytes travel behind any request already on its way, so they can never reach the
    /// terminal before the command line of the execution they are meant for.
    pub fn write_stdin(&self, bytes: &[u8]) -> Result<(), KernelError> {
        let s = self.inner.shared.lock().expect("session state");
        match (&s.req_tx, s.state) {
            (_, SessionState::Closed) | (None, _) => {
                Err(KernelError::Closed(self.inner.id.clone()))
            }
            (Some(tx), _) => tx
                .send(Outbound {
                    pty: bytes.to_vec(),
                    ..Outbound::default()
                })
                .map_err(|_| KernelError::Closed(self.inner.id.clone())),
        }
    }

    /// Answer the pending `input_request`.
    pub fn input_reply(&self, value: &str) -> Result<(), KernelError> {
        let mut s = self.inner.shared.lock().expect("session state");
        if !s.input_pending {
            return Err(KernelError::NoPendingInput(self.inner.id.clone()));
        }
        let out = self.inner.language.encode(&ChildRequest::InputReply {
            value: value.to_string(),
        })?;
        let tx = s
            .req_tx
            .clone()
            .ok_or_else(|| KernelError::Closed(self.inner.id.clone()))?;
        s.input_pending = false;
        tx.send(out)
            .map_err(|_| KernelError::Closed(self.inner.id.clone()))
    }

    /// Whether an `input_request` is waiting for its answer.
    pub fn input_pending(&self) -> bool {
        self.inner
            .shared
            .lock()
            .expect("session state")
            .input_pending
    }

    /// Kill the process and start a fresh one. The running execution ends as `died`; queued
    /// ones are aborted.
    pub async fn restart(&self) -> Result<(), KernelError> {
        self.ensure_open()?;
        let (tx, rx) = oneshot::channel();
        self.cmd_tx
            .send(Cmd::Restart(tx))
            .map_err(|_| KernelError::Closed(self.inner.id.clone()))?;
        rx.await
            .map_err(|_| KernelError::Closed(self.inner.id.clone()))?
    }

    /// End the session for good: its process tree is killed.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd_tx.send(Cmd::Close(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Every chunk of every execution in this session, as it happens. A watcher that falls more
    /// than the kernel's `watch_capacity` behind gets `RecvError::Lagged(n)`.
    pub fn subscribe(&self) -> broadcast::Receiver<Chunk> {
        self.inner.watch.subscribe()
    }

    fn ensure_open(&self) -> Result<(), KernelError> {
        if self.inner.shared.lock().expect("session state").state == SessionState::Closed {
            return Err(KernelError::Closed(self.inner.id.clone()));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The process and its reader threads.

enum EvtItem {
    Frame(Frame),
    Bad(String),
}

struct Proc {
    control: Arc<dyn ProcessControl>,
    pty_rx: mpsc::Receiver<Piece>,
    err_rx: mpsc::Receiver<Piece>,
    evt_rx: mpsc::Receiver<EvtItem>,
    exit_rx: oneshot::Receiver<ExitInfo>,
    pty_seen: u64,
    err_seen: u64,
    /// The highest `sync` of the frames handled so far. A stream whose latest sentinel is newer
    /// is paused: what follows the sentinel was written after the frame it announces.
    handled: u64,
    /// When a stream was paused behind a sentinel (to give up waiting after `HOLD_LIMIT`).
    paused_at: Option<tokio::time::Instant>,
    pty_open: bool,
    err_open: bool,
    evt_open: bool,
    exited: Option<ExitInfo>,
    drain_deadline: Option<tokio::time::Instant>,
    held: Option<(Frame, tokio::time::Instant)>,
    dec_pty: Utf8Decoder,
    dec_err: Utf8Decoder,
    dec_out: Utf8Decoder,
    dec_errf: Utf8Decoder,
    run_dir: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.control.kill_all();
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

fn spawn_reader(
    name: &str,
    mut r: Box<dyn Read + Send>,
    nonce: String,
    tx: mpsc::Sender<Piece>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(format!("spindle-{name}"))
        .spawn(move || {
            let mut scanner = SentinelScanner::new(&nonce);
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        for piece in scanner.feed(&buf[..n]) {
                            if tx.blocking_send(piece).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break, // EIO: the terminal's last user is gone
                }
            }
            let rest = scanner.take_held();
            if !rest.is_empty() {
                let _ = tx.blocking_send(Piece::Data(rest));
            }
        })
        .map(|_| ())
}

impl Proc {
    async fn start(
        inner: &Arc<Inner>,
        spec: &SessionSpec,
        config: &KernelConfig,
    ) -> Result<Proc, KernelError> {
        let language = inner.language.name().to_string();
        let run_dir = make_run_dir()?;
        let launch = match inner.language.launch(&LaunchContext {
            run_dir: run_dir.clone(),
            env: spec.env.clone(),
        }) {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&run_dir);
                return Err(e.into());
            }
        };
        let nonce = format!("{:016x}", rand::random::<u64>());
        let launcher = spec
            .launcher
            .clone()
            .unwrap_or_else(|| config.launcher.clone());
        let request = LaunchRequest {
            language: language.clone(),
            spec: launch,
            run_dir: run_dir.clone(),
            cwd: spec.cwd.clone(),
            env: spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            nonce: nonce.clone(),
            session_id: inner.id.clone(),
            pty_size: config.pty_size,
        };
        // A launcher may block (a container engine); keep it off the runtime's threads.
        let spawned = tokio::task::spawn_blocking(move || launcher.launch(request))
            .await
            .unwrap_or_else(|e| {
                Err(KernelError::StartFailed {
                    language: language.clone(),
                    detail: format!("the launcher panicked: {e}"),
                })
            });
        let spawned = match spawned {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&run_dir);
                return Err(e);
            }
        };
        let (pty_tx, pty_rx) = mpsc::channel(64);
        let (err_tx, err_rx) = mpsc::channel(64);
        let (evt_tx, evt_rx) = mpsc::channel(64);
        let (exit_tx, exit_rx) = oneshot::channel();
        spawn_reader("pty", spawned.pty_reader, nonce.clone(), pty_tx)?;
        spawn_reader("stderr", spawned.err_reader, nonce, err_tx)?;
        let evt_reader = spawned.evt_reader;
        std::thread::Builder::new()
            .name("spindle-events".into())
            .spawn(move || {
                let mut r = FrameReader::new(evt_reader);
                loop {
                    let item = match r.next_frame() {
                        Ok(Some(Ok(f))) => EvtItem::Frame(f),
                        Ok(Some(Err(e))) => EvtItem::Bad(e.to_string()),
                        Ok(None) | Err(_) => break,
                    };
                    let bad = matches!(item, EvtItem::Bad(_));
                    if evt_tx.blocking_send(item).is_err() || bad {
                        break;
                    }
                }
                // After a malformed header the stream cannot be trusted: drain and drop it so
                // the child never blocks on a full pipe.
                let mut sink = [0u8; 64 << 10];
                let mut inner = r.into_inner();
                while matches!(inner.read(&mut sink), Ok(n) if n > 0) {}
            })?;
        let wait = spawned.wait;
        std::thread::Builder::new()
            .name("spindle-wait".into())
            .spawn(move || {
                let _ = exit_tx.send(wait());
            })?;
        // Writers: one thread for the terminal, one for requests (files, FIFO, then any
        // terminal bytes, in that order).
        let (term_tx, term_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let mut pty_writer = spawned.pty_writer;
        std::thread::Builder::new()
            .name("spindle-stdin".into())
            .spawn(move || {
                for bytes in term_rx {
                    if pty_writer
                        .write_all(&bytes)
                        .and_then(|_| pty_writer.flush())
                        .is_err()
                    {
                        break;
                    }
                }
            })?;
        let (req_tx, req_rx) = std::sync::mpsc::channel::<Outbound>();
        let open_requests = spawned.open_requests;
        let dir = run_dir.clone();
        let term_for_req = term_tx.clone();
        std::thread::Builder::new()
            .name("spindle-requests".into())
            .spawn(move || {
                let mut open = Some(open_requests);
                let mut fifo: Option<Box<dyn Write + Send>> = None;
                for out in req_rx {
                    for (name, bytes) in &out.files {
                        if let Err(e) = write_private(&dir.join(name), bytes) {
                            tracing::warn!(error = %e, file = name, "cannot write request file");
                        }
                    }
                    if !out.fifo.is_empty() {
                        if fifo.is_none() {
                            match open.take().map(|f| f()) {
                                Some(Ok(w)) => fifo = Some(w),
                                Some(Err(e)) => {
                                    tracing::warn!(error = %e, "cannot open the request stream");
                                    break;
                                }
                                None => break,
                            }
                        }
                        let w = fifo.as_mut().expect("opened above");
                        if w.write_all(&out.fifo).and_then(|_| w.flush()).is_err() {
                            break;
                        }
                    }
                    if !out.pty.is_empty() && term_for_req.send(out.pty).is_err() {
                        break;
                    }
                }
            })?;

        let mut proc = Proc {
            control: spawned.control,
            pty_rx,
            err_rx,
            evt_rx,
            exit_rx,
            pty_seen: 0,
            err_seen: 0,
            handled: 0,
            paused_at: None,
            pty_open: true,
            err_open: true,
            evt_open: true,
            exited: None,
            drain_deadline: None,
            held: None,
            dec_pty: Utf8Decoder::default(),
            dec_err: Utf8Decoder::default(),
            dec_out: Utf8Decoder::default(),
            dec_errf: Utf8Decoder::default(),
            run_dir,
        };
        let version = proc.await_ready(&language, config.start_timeout).await?;
        let mut s = inner.shared.lock().expect("session state");
        s.pid = proc.control.pid();
        s.control = Some(proc.control.clone());
        drop(term_tx);
        s.req_tx = Some(req_tx);
        s.input_pending = false;
        s.starts += 1;
        if version.is_some() {
            s.language_version = version;
        }
        Ok(proc)
    }

    /// Wait for `ready`; on failure, report what the child wrote to stderr.
    async fn await_ready(
        &mut self,
        language: &str,
        limit: Duration,
    ) -> Result<Option<String>, KernelError> {
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(deadline);
        let mut stderr = Vec::new();
        let mut exited: Option<ExitInfo> = None;
        let fail = |why: String, stderr: &[u8]| {
            let text = String::from_utf8_lossy(stderr);
            let text = text.trim();
            let tail: String = {
                let chars: Vec<char> = text.chars().collect();
                chars[chars.len().saturating_sub(2000)..].iter().collect()
            };
            KernelError::StartFailed {
                language: language.to_string(),
                detail: if tail.is_empty() {
                    why
                } else {
                    format!("{why}; it wrote:\n{tail}")
                },
            }
        };
        loop {
            tokio::select! {
                item = self.evt_rx.recv() => {
                  if let Some(EvtItem::Frame(f)) = &item {
                      // Frames before `ready` still release the streams behind their sentinels.
                      self.handled = self.handled.max(f.sync);
                  }
                  match item {
                    Some(EvtItem::Frame(f)) if f.kind == b'm' => {
                        if let Ok(v) = serde_json::from_slice::<Value>(&f.payload) {
                            if v["type"] == "ready" {
                                return Ok(v["language_version"].as_str().map(str::to_string));
                            }
                        }
                    }
                    Some(EvtItem::Frame(f)) if f.kind == b'e' => stderr.extend_from_slice(&f.payload),
                    Some(EvtItem::Frame(_)) => {}
                    Some(EvtItem::Bad(e)) => return Err(fail(format!("protocol error: {e}"), &stderr)),
                    None => {
                        // Events closed: the process is gone. Collect its last stderr.
                        while let Ok(Some(p)) = tokio::time::timeout(DRAIN_LIMIT, self.err_rx.recv()).await {
                            if let Piece::Data(d) = p { stderr.extend_from_slice(&d) }
                        }
                        let how = match exited.take() {
                            Some(e) => e.to_string(),
                            None => match tokio::time::timeout(DRAIN_LIMIT, &mut self.exit_rx).await {
                                Ok(Ok(e)) => e.to_string(),
                                _ => "ended".to_string(),
                            },
                        };
                        return Err(fail(format!("the process {how} before it was ready"), &stderr));
                    }
                  }
                },
                piece = self.err_rx.recv(), if self.err_open => match piece {
                    Some(Piece::Data(d)) => stderr.extend_from_slice(&d),
                    Some(Piece::Sentinel(_)) => {}
                    None => self.err_open = false,
                },
                piece = self.pty_rx.recv(), if self.pty_open => match piece {
                    Some(Piece::Data(d)) => tracing::trace!(bytes = d.len(), "terminal output before ready"),
                    Some(Piece::Sentinel(n)) => self.pty_seen = n,
                    None => self.pty_open = false,
                },
                e = &mut self.exit_rx, if exited.is_none() => {
                    exited = Some(e.unwrap_or_default());
                }
                _ = &mut deadline => {
                    self.control.kill_all();
                    return Err(fail(format!("no ready signal within {} s", limit.as_secs_f64()), &stderr));
                }
            }
        }
    }

    /// Whether `frame` may be handled now: its sentinels have come through (or cannot come).
    fn synced(&self, sync: u64) -> bool {
        (!self.pty_open || self.pty_seen >= sync) && (!self.err_open || self.err_seen >= sync)
    }

    /// Whether the PTY (or stderr) may be read: not paused behind a sentinel whose frame is
    /// still to come. With the event stream gone no frame will come, so nothing pauses.
    fn readable(&self, seen: u64) -> bool {
        seen <= self.handled || !self.evt_open
    }
}

// ---------------------------------------------------------------------------------------------
// The actor.

enum Work {
    Exec {
        id: String,
        code: String,
        opts: ExecOptions,
        tx: mpsc::Sender<Chunk>,
    },
    Query {
        req: ChildRequest,
        tx: oneshot::Sender<Result<Value, KernelError>>,
    },
}

struct ExecState {
    id: String,
    tx: mpsc::Sender<Chunk>,
    detached: bool,
    started: Instant,
    deadline: Option<tokio::time::Instant>,
    timeout: Option<Duration>,
    timed_out: bool,
    image_max_dim: Option<u32>,
    execution_count: u64,
    open: Option<Body>,
    pending: Option<(ConsoleFormat, String)>,
    cap: Option<Cap>,
}

struct Cap {
    head_left: usize,
    tail_limit: usize,
    tail: VecDeque<(ConsoleFormat, String)>,
    tail_bytes: usize,
    dropped: u64,
    /// Of `dropped`, how much a notice has already reported.
    reported: u64,
}

struct QueryState {
    req: ChildRequest,
    tx: oneshot::Sender<Result<Value, KernelError>>,
    reply: Option<Result<Value, KernelError>>,
}

enum Current {
    Exec(Box<ExecState>),
    Query(QueryState),
}

struct Actor {
    inner: Arc<Inner>,
    cmd_rx: mpsc::UnboundedReceiver<Cmd>,
    spec: SessionSpec,
    config: KernelConfig,
    proc: Option<Proc>,
    queue: VecDeque<Work>,
    current: Option<Current>,
    seq: u64,
    /// Block opened by output that arrived between executions.
    idle_block: Option<Body>,
    /// Commands taken while waiting on a slow consumer, handled before new events.
    deferred: VecDeque<Cmd>,
}

enum Ev {
    Cmd(Option<Cmd>),
    Pty(Option<Piece>),
    Err(Option<Piece>),
    Evt(Option<EvtItem>),
    Exit(ExitInfo),
    Deadline,
    Hold,
    Drained,
}

async fn maybe<T>(rx: Option<&mut mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Actor {
    async fn run(mut self) {
        loop {
            if self.current.is_none() {
                self.start_next().await;
            }
            let ev = match self.deferred.pop_front() {
                Some(cmd) => Ev::Cmd(Some(cmd)),
                None => self.next_event().await,
            };
            match ev {
                Ev::Cmd(None) => {
                    self.close().await;
                    return;
                }
                Ev::Cmd(Some(Cmd::Close(done))) => {
                    self.close().await;
                    let _ = done.send(());
                    return;
                }
                Ev::Cmd(Some(cmd)) => self.on_cmd(cmd).await,
                Ev::Pty(p) => self.on_piece(p, ConsoleFormat::Stdout).await,
                Ev::Err(p) => self.on_piece(p, ConsoleFormat::Stderr).await,
                Ev::Evt(item) => self.on_evt(item).await,
                Ev::Exit(info) => {
                    if let Some(p) = self.proc.as_mut() {
                        p.exited = Some(info);
                        p.drain_deadline = Some(tokio::time::Instant::now() + DRAIN_LIMIT);
                    }
                }
                Ev::Deadline => self.on_deadline().await,
                Ev::Hold => {
                    if let Some(p) = self.proc.as_mut() {
                        tracing::warn!("sentinel or frame overdue; releasing the streams");
                        p.handled = p.handled.max(p.pty_seen).max(p.err_seen);
                        p.paused_at = None;
                        if let Some((frame, _)) = p.held.take() {
                            self.on_frame(frame).await;
                        }
                    }
                }
                Ev::Drained => self.on_gone().await,
            }
            self.flush_if_quiet().await;
            if let Some(p) = &self.proc {
                if p.exited.is_some() && !p.pty_open && !p.err_open && !p.evt_open {
                    self.on_gone().await;
                }
            }
        }
    }

    async fn next_event(&mut self) -> Ev {
        let exec_deadline = match &self.current {
            Some(Current::Exec(e)) => e.deadline,
            _ => None,
        };
        let Some(p) = self.proc.as_mut() else {
            return Ev::Cmd(self.cmd_rx.recv().await);
        };
        let waiting_since = match (p.held.as_ref().map(|(_, t)| *t), p.paused_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let hold_at = waiting_since.map(|t| t + HOLD_LIMIT);
        let evt_ready = p.held.is_none() && p.evt_open;
        let pty_ready = p.pty_open && p.readable(p.pty_seen);
        let err_ready = p.err_open && p.readable(p.err_seen);
        let exited = p.exited.is_some();
        let drain_at = p.drain_deadline;
        tokio::select! {
            biased;
            c = self.cmd_rx.recv() => Ev::Cmd(c),
            x = maybe(pty_ready.then_some(&mut p.pty_rx)) => Ev::Pty(x),
            x = maybe(err_ready.then_some(&mut p.err_rx)) => Ev::Err(x),
            x = maybe(evt_ready.then_some(&mut p.evt_rx)) => Ev::Evt(x),
            e = &mut p.exit_rx, if !exited => Ev::Exit(e.unwrap_or_default()),
            _ = sleep_opt(exec_deadline) => Ev::Deadline,
            _ = sleep_opt(hold_at) => Ev::Hold,
            _ = sleep_opt(drain_at) => Ev::Drained,
        }
    }

    fn set_shared(&self, f: impl FnOnce(&mut Shared)) {
        f(&mut self.inner.shared.lock().expect("session state"));
    }

    // -- commands ------------------------------------------------------------------------------

    async fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Execute { id, code, opts, tx } => {
                self.queue.push_back(Work::Exec { id, code, opts, tx })
            }
            Cmd::Query { req, tx } => self.queue.push_back(Work::Query { req, tx }),
            Cmd::Cancel(id) => {
                self.unqueue(&id);
                if let Some(Current::Exec(e)) = &mut self.current {
                    if e.id == id && !e.detached {
                        e.detached = true;
                        self.interrupt();
                    }
                }
            }
            Cmd::Restart(done) => {
                let r = self.restart("restarted on request").await;
                let _ = done.send(r);
            }
            Cmd::Close(_) => unreachable!("handled in run"),
        }
    }

    /// Take a cancelled execution out of the queue.
    fn unqueue(&mut self, id: &str) {
        let before = self.queue.len();
        self.queue
            .retain(|w| !matches!(w, Work::Exec { id: wid, .. } if wid == id));
        let removed = before - self.queue.len();
        self.set_shared(|s| s.queued = s.queued.saturating_sub(removed));
    }

    fn interrupt(&self) {
        if let Some(p) = &self.proc {
            if let Err(e) = p.control.interrupt() {
                tracing::debug!(error = %e, "interrupt failed");
            }
        }
    }

    async fn start_next(&mut self) {
        while let Some(work) = self.queue.pop_front() {
            self.set_shared(|s| s.queued = s.queued.saturating_sub(1));
            if self.proc.is_none() {
                // A failed restart left no process: try again now.
                if let Err(e) = self.spawn_proc().await {
                    self.fail_work(work, e).await;
                    continue;
                }
            }
            match work {
                Work::Exec { id, code, opts, tx } => {
                    if tx.is_closed() {
                        continue;
                    }
                    self.begin_exec(id, code, opts, tx).await;
                    return;
                }
                Work::Query { req, tx } => {
                    if tx.is_closed() {
                        continue;
                    }
                    match self.inner.language.encode(&req) {
                        Ok(out) => {
                            let id = req.id().unwrap_or_default().to_string();
                            self.set_shared(|s| {
                                s.state = SessionState::Busy;
                                s.running = Some(id);
                            });
                            self.send(out);
                            self.current = Some(Current::Query(QueryState {
                                req,
                                tx,
                                reply: None,
                            }));
                            return;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e.into()));
                        }
                    }
                }
            }
        }
        self.set_shared(|s| {
            if s.state == SessionState::Busy {
                s.state = SessionState::Idle;
            }
            s.running = None;
        });
    }

    async fn fail_work(&mut self, work: Work, e: KernelError) {
        match work {
            Work::Exec { id, opts, tx, .. } => {
                let mut ex = self.new_exec(id, &opts, tx, 0);
                self.emit_exec_start(&mut ex).await;
                self.emit_error(&mut ex, "SessionError", &e.to_string())
                    .await;
                self.finish_exec(ex, Outcome::Died, None, None).await;
            }
            Work::Query { tx, .. } => {
                let _ = tx.send(Err(e));
            }
        }
    }

    fn send(&self, out: Outbound) {
        let tx = self
            .inner
            .shared
            .lock()
            .expect("session state")
            .req_tx
            .clone();
        if let Some(tx) = tx {
            let _ = tx.send(out);
        }
    }

    fn new_exec(
        &self,
        id: String,
        opts: &ExecOptions,
        tx: mpsc::Sender<Chunk>,
        execution_count: u64,
    ) -> ExecState {
        let timeout = opts.timeout.or(self.spec.timeout);
        let cap = opts.output_cap.or(self.spec.output_cap).map(|c| {
            let c = c as usize;
            Cap {
                head_left: c - c / 2,
                tail_limit: c / 2,
                tail: VecDeque::new(),
                tail_bytes: 0,
                dropped: 0,
                reported: 0,
            }
        });
        ExecState {
            id,
            tx,
            detached: false,
            started: Instant::now(),
            // A timeout too large to represent means no deadline.
            deadline: timeout.and_then(|t| tokio::time::Instant::now().checked_add(t)),
            timeout,
            timed_out: false,
            image_max_dim: opts.image_max_dim.or(self.spec.image_max_dim),
            execution_count,
            open: None,
            pending: None,
            cap,
        }
    }

    async fn begin_exec(
        &mut self,
        id: String,
        code: String,
        opts: ExecOptions,
        tx: mpsc::Sender<Chunk>,
    ) {
        self.close_idle_block();
        let counts = opts.store_history && !opts.silent;
        let count = {
            let mut s = self.inner.shared.lock().expect("session state");
            if counts {
                s.execution_count += 1;
            }
            s.state = SessionState::Busy;
            s.running = Some(id.clone());
            s.execution_count
        };
        let mut ex = self.new_exec(id.clone(), &opts, tx, count);
        let req = ChildRequest::Execute {
            id,
            code,
            silent: opts.silent,
            store_history: opts.store_history,
            allow_stdin: opts.allow_stdin,
            active_lines: opts.active_lines && self.inner.language.supports_active_lines(),
            user_expressions: opts.user_expressions.clone(),
            execution_count: count.max(1),
        };
        self.emit_exec_start(&mut ex).await;
        match self.inner.language.encode(&req) {
            Ok(out) => {
                self.send(out);
                self.current = Some(Current::Exec(Box::new(ex)));
            }
            Err(e) => {
                self.emit_error(&mut ex, "SessionError", &e.to_string())
                    .await;
                self.finish_exec(ex, Outcome::Error, Some(1), None).await;
                self.set_shared(|s| s.running = None);
            }
        }
    }

    // -- output --------------------------------------------------------------------------------

    async fn on_piece(&mut self, piece: Option<Piece>, format: ConsoleFormat) {
        let Some(p) = self.proc.as_mut() else { return };
        match piece {
            None => {
                let text = if format == ConsoleFormat::Stdout {
                    p.pty_open = false;
                    p.dec_pty.finish()
                } else {
                    p.err_open = false;
                    p.dec_err.finish()
                };
                self.console(format, text).await;
            }
            Some(Piece::Sentinel(n)) => {
                if format == ConsoleFormat::Stdout {
                    p.pty_seen = n;
                } else {
                    p.err_seen = n;
                }
                if n > p.handled && p.paused_at.is_none() {
                    p.paused_at = Some(tokio::time::Instant::now());
                }
            }
            Some(Piece::Data(d)) => {
                let text = if format == ConsoleFormat::Stdout {
                    p.dec_pty.decode(&d)
                } else {
                    p.dec_err.decode(&d)
                };
                self.console(format, text).await;
            }
        }
        self.release_held().await;
    }

    async fn release_held(&mut self) {
        let Some(p) = self.proc.as_mut() else { return };
        if let Some((f, _)) = &p.held {
            if p.synced(f.sync) {
                let (frame, _) = p.held.take().expect("checked");
                self.on_frame(frame).await;
            }
        }
    }

    async fn on_evt(&mut self, item: Option<EvtItem>) {
        let Some(p) = self.proc.as_mut() else { return };
        match item {
            None => p.evt_open = false,
            Some(EvtItem::Bad(e)) => {
                tracing::error!(error = %e, "bootstrap protocol error");
                p.evt_open = false;
                self.emit_error_any(
                    "ProtocolError",
                    &format!("the bootstrap sent a malformed event ({e}); restarting"),
                )
                .await;
                // The event stream is unusable: restart the process.
                let _ = self.restart("restarted after a protocol error").await;
            }
            Some(EvtItem::Frame(f)) => {
                if p.synced(f.sync) {
                    self.on_frame(f).await;
                } else {
                    p.held = Some((f, tokio::time::Instant::now()));
                }
            }
        }
    }

    async fn on_frame(&mut self, f: Frame) {
        let Some(p) = self.proc.as_mut() else { return };
        if f.sync > p.handled {
            p.handled = f.sync;
        }
        if p.readable(p.pty_seen) && p.readable(p.err_seen) {
            p.paused_at = None;
        }
        match f.kind {
            b'o' => {
                let text = p.dec_out.decode(&f.payload);
                self.console(ConsoleFormat::Stdout, text).await;
            }
            b'e' => {
                let text = p.dec_errf.decode(&f.payload);
                self.console(ConsoleFormat::Stderr, text).await;
            }
            b'r' => {
                if let Some(Current::Query(q)) = &mut self.current {
                    q.reply = Some(
                        self.inner
                            .language
                            .parse_raw_reply(&q.req, &f.payload)
                            .map_err(KernelError::from),
                    );
                }
            }
            _ => match serde_json::from_slice::<Value>(&f.payload) {
                Ok(v) => self.on_message(v).await,
                Err(e) => {
                    tracing::error!(error = %e, "bootstrap sent invalid JSON");
                    self.emit_error_any(
                        "ProtocolError",
                        &format!("the bootstrap sent invalid JSON: {e}"),
                    )
                    .await;
                }
            },
        }
    }

    async fn on_message(&mut self, v: Value) {
        let kind = v["type"].as_str().unwrap_or_default().to_string();
        match kind.as_str() {
            "display" | "result" => {
                let rich = Rich {
                    data: Value::Null,
                    bundle: v["data"].as_object().cloned().unwrap_or_default(),
                    metadata: v["metadata"].as_object().cloned().unwrap_or_default(),
                    display_id: v["display_id"].as_str().map(str::to_string),
                    update: v["update"].as_bool().unwrap_or(false),
                    ..Rich::default()
                };
                self.rich(rich, kind == "result").await;
            }
            "error" => {
                let content = ErrorContent {
                    name: v["ename"].as_str().unwrap_or("Error").to_string(),
                    value: v["evalue"].as_str().unwrap_or_default().to_string(),
                    traceback: v["traceback"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|l| l.as_str().unwrap_or_default().to_string())
                                .collect()
                        })
                        .unwrap_or_default(),
                };
                self.block(Body::Error {
                    content: Some(content),
                })
                .await;
            }
            "input_request" => {
                self.set_shared(|s| s.input_pending = true);
                self.block(Body::InputRequest {
                    content: Some(InputRequest {
                        prompt: v["prompt"].as_str().unwrap_or_default().to_string(),
                        password: v["password"].as_bool().unwrap_or(false),
                    }),
                })
                .await;
            }
            "clear_output" => {
                self.block(Body::ClearOutput {
                    content: Some(ClearOutput {
                        wait: v["wait"].as_bool().unwrap_or(false),
                    }),
                })
                .await
            }
            "active_line" => {
                let line = v["line"].as_u64().map(|l| l as u32);
                self.block(Body::Console {
                    format: ConsoleFormat::ActiveLine,
                    content: None,
                    line,
                })
                .await;
            }
            "file" => {
                let path = v["path"].as_str().unwrap_or_default().to_string();
                let size = std::fs::metadata(&path).ok().map(|m| m.len());
                self.block(Body::File {
                    content: Some(FileRef {
                        mime: v["mime"]
                            .as_str()
                            .unwrap_or("application/octet-stream")
                            .to_string(),
                        path,
                        size,
                    }),
                })
                .await;
            }
            "reply" => {
                if let Some(Current::Query(q)) = &mut self.current {
                    if v["id"].as_str() == q.req.id() {
                        q.reply = Some(Ok(v["content"].clone()));
                    }
                }
            }
            "done" => self.on_done(v).await,
            "ready" => {}
            other => tracing::debug!(kind = other, "unknown bootstrap message ignored"),
        }
    }

    async fn on_done(&mut self, v: Value) {
        let id = v["id"].as_str().unwrap_or_default();
        match self.current.take() {
            Some(Current::Exec(ex)) if ex.id == id => {
                let exit = v["exit_status"].as_i64().map(|c| c as i32);
                let outcome = match v["status"].as_str() {
                    _ if ex.timed_out => Outcome::Timeout,
                    Some("interrupted") => Outcome::Interrupted,
                    Some("error") => Outcome::Error,
                    _ if exit.unwrap_or(0) != 0 => Outcome::Error,
                    _ => Outcome::Ok,
                };
                let (timed_out, timeout) = (ex.timed_out, ex.timeout);
                self.current = Some(Current::Exec(ex));
                // A character split at the very end belongs to this execution, as U+FFFD.
                self.finish_decoders().await;
                if timed_out {
                    let msg = timeout_message(timeout, "was interrupted");
                    self.error_in_exec("TimeoutError", &msg).await;
                }
                let exprs = v["user_expressions"].as_object().cloned();
                // Idle before the finished chunk goes out: whoever reads it and interrupts (an
                // interrupt while idle does nothing) must not reach the next execution. A
                // sandbox's interrupt travels through the engine and could land there.
                self.set_shared(|s| {
                    s.running = None;
                    s.input_pending = false;
                });
                if let Some(Current::Exec(ex)) = self.current.take() {
                    self.finish_exec(*ex, outcome, exit.or(Some(0)), exprs)
                        .await;
                }
            }
            Some(Current::Query(q)) if q.req.id() == Some(id) => {
                let reply = q.reply.unwrap_or_else(|| {
                    Err(KernelError::Protocol(
                        "the bootstrap answered without a reply".into(),
                    ))
                });
                let _ = q.tx.send(reply);
                self.set_shared(|s| s.running = None);
            }
            other => {
                self.current = other;
                tracing::trace!(id, "done for no request in flight ignored");
            }
        }
    }

    /// What the UTF-8 decoders still hold (an incomplete character at the end), as console text.
    async fn finish_decoders(&mut self) {
        let Some(p) = self.proc.as_mut() else { return };
        let rest = [
            (ConsoleFormat::Stdout, p.dec_pty.finish()),
            (ConsoleFormat::Stderr, p.dec_err.finish()),
            (ConsoleFormat::Stdout, p.dec_out.finish()),
            (ConsoleFormat::Stderr, p.dec_errf.finish()),
        ];
        for (format, text) in rest {
            self.console(format, text).await;
        }
    }

    /// Console text, through the cap, into the pending buffer.
    async fn console(&mut self, format: ConsoleFormat, mut text: String) {
        if text.is_empty() {
            return;
        }
        let Some(Current::Exec(ex)) = &mut self.current else {
            self.idle_console(format, text);
            return;
        };
        if let Some(cap) = &mut ex.cap {
            if text.len() > cap.head_left {
                let cut = floor_char_boundary(&text, cap.head_left);
                let tail = text.split_off(cut);
                // The head is full even if a character did not fit: later text must not
                // overtake what went to the tail.
                cap.head_left = 0;
                cap.tail_bytes += tail.len();
                cap.tail.push_back((format, tail));
                while cap.tail_bytes > cap.tail_limit {
                    let excess = cap.tail_bytes - cap.tail_limit;
                    let (_, front) = cap.tail.front_mut().expect("non-empty while over");
                    if front.len() <= excess {
                        let (_, gone) = cap.tail.pop_front().expect("non-empty");
                        cap.tail_bytes -= gone.len();
                        cap.dropped += gone.len() as u64;
                    } else {
                        let cut = ceil_char_boundary(front, excess);
                        front.drain(..cut);
                        cap.tail_bytes -= cut;
                        cap.dropped += cut as u64;
                    }
                }
                if text.is_empty() {
                    return;
                }
            } else {
                cap.head_left -= text.len();
            }
        }
        match &mut ex.pending {
            Some((f, buf)) if *f == format => buf.push_str(&text),
            _ => {
                self.flush_pending().await;
                if let Some(Current::Exec(ex)) = &mut self.current {
                    ex.pending = Some((format, text));
                }
            }
        }
        let full = matches!(&self.current, Some(Current::Exec(ex)) if ex.pending.as_ref().is_some_and(|(_, b)| b.len() >= COALESCE));
        if full {
            self.flush_pending().await;
        }
    }

    async fn flush_if_quiet(&mut self) {
        let quiet = match &self.proc {
            Some(p) => p.pty_rx.is_empty() && p.err_rx.is_empty() && p.evt_rx.is_empty(),
            None => true,
        };
        if quiet {
            self.flush_pending().await;
        }
    }

    /// Emit buffered console text (not the cap's tail: that waits for a non-console block or the
    /// end, or the cap would cap nothing).
    async fn flush_pending(&mut self) {
        match self.current.take() {
            Some(Current::Exec(mut ex)) => {
                self.flush_console(&mut ex).await;
                self.current = Some(Current::Exec(ex));
            }
            other => self.current = other,
        }
    }

    async fn rich(&mut self, mut rich: Rich, is_result: bool) {
        let max_dim = match &self.current {
            Some(Current::Exec(e)) => e.image_max_dim,
            _ => self.spec.image_max_dim,
        };
        if is_result {
            if let Some(Current::Exec(e)) = &self.current {
                rich.execution_count = Some(e.execution_count);
            }
        }
        let mut body = body_for_bundle(rich, is_result);
        let mut problem = None;
        if let Body::Image {
            format,
            content: Some(r),
        } = &mut body
        {
            if *format != ImageFormat::Svg {
                match crate::images::check(*format, r.data.as_str().unwrap_or_default(), max_dim) {
                    Ok(c) => {
                        r.width = Some(c.width);
                        r.height = Some(c.height);
                        r.downscaled = c.downscaled;
                    }
                    Err(e) => problem = Some(e),
                }
            }
        }
        if let Some(problem) = problem {
            self.emit_error_any("ImageError", &problem).await;
        }
        self.block(body).await;
    }

    /// A one-chunk block: start, content, end.
    async fn block(&mut self, body: Body) {
        match self.current.take() {
            Some(Current::Exec(mut ex)) => {
                self.flush_exec_pending(&mut ex).await;
                self.content(&mut ex, body, false).await;
                self.current = Some(Current::Exec(ex));
            }
            other => {
                self.current = other;
                self.close_idle_block();
                let marker = body.marker();
                self.emit_raw("", marker.clone(), true, false);
                self.emit_raw("", body, false, false);
                self.emit_raw("", marker, false, true);
            }
        }
    }

    /// Before a non-console block: buffered console text, then the cap's tail.
    async fn flush_exec_pending(&mut self, ex: &mut ExecState) {
        self.flush_console(ex).await;
        self.flush_cap_tail(ex).await;
    }

    /// Emit what the cap kept of the tail so far, after a notice of what it dropped, so that
    /// the next block comes after it as it did in the child.
    async fn flush_cap_tail(&mut self, ex: &mut ExecState) {
        let Some(cap) = ex.cap.as_mut() else { return };
        if cap.tail.is_empty() && cap.dropped == cap.reported {
            return;
        }
        let newly = cap.dropped - cap.reported;
        cap.reported = cap.dropped;
        let tail = std::mem::take(&mut cap.tail);
        cap.tail_bytes = 0;
        if newly > 0 {
            if let Some(open) = ex.open.take() {
                self.emit_to(ex, open, false, true).await;
            }
            let note = Body::Notice {
                content: Some(format!(
                    "output cap: {newly} bytes dropped between the head and the tail"
                )),
            };
            self.content(ex, note, false).await;
        }
        for (format, text) in tail {
            self.content(ex, Body::console(format, text), true).await;
        }
    }

    async fn flush_console(&mut self, ex: &mut ExecState) {
        if let Some((format, text)) = ex.pending.take() {
            self.content(ex, Body::console(format, text), true).await;
        }
    }

    /// Emit a content chunk in `ex`, opening/closing blocks as needed. `keep_open` leaves a
    /// console block open for more of the same stream.
    async fn content(&mut self, ex: &mut ExecState, body: Body, keep_open: bool) {
        let marker = body.marker();
        if ex.open.as_ref() != Some(&marker) {
            if let Some(open) = ex.open.take() {
                self.emit_to(ex, open, false, true).await;
            }
            self.emit_to(ex, marker.clone(), true, false).await;
        }
        self.emit_to(ex, body, false, false).await;
        if keep_open {
            ex.open = Some(marker);
        } else {
            self.emit_to(ex, marker, false, true).await;
        }
    }

    async fn emit_to(&mut self, ex: &mut ExecState, body: Body, start: bool, end: bool) {
        let chunk = self.make_chunk(&ex.id, body, start, end);
        self.publish(&chunk);
        if ex.detached {
            return;
        }
        // Wait for room in the consumer's stream (back-pressure keeps output lossless), but keep
        // taking commands: a consumer that stops reading must not wedge cancel, restart, close
        // or the timeout.
        loop {
            tokio::select! {
                biased;
                permit = ex.tx.reserve() => {
                    match permit {
                        Ok(permit) => permit.send(chunk),
                        Err(_) => {
                            // Nobody reads this execution any more: stop it.
                            ex.detached = true;
                            self.interrupt();
                        }
                    }
                    return;
                }
                cmd = self.cmd_rx.recv() => match cmd {
                    Some(Cmd::Execute { id, code, opts, tx }) => {
                        self.queue.push_back(Work::Exec { id, code, opts, tx })
                    }
                    Some(Cmd::Query { req, tx }) => self.queue.push_back(Work::Query { req, tx }),
                    Some(Cmd::Cancel(id)) if id == ex.id => {
                        ex.detached = true;
                        self.interrupt();
                        return;
                    }
                    Some(Cmd::Cancel(id)) => self.unqueue(&id),
                    Some(cmd) => {
                        // Restart or close: stop waiting on this consumer and let the loop act.
                        self.deferred.push_back(cmd);
                        ex.detached = true;
                        return;
                    }
                    None => {
                        ex.detached = true;
                        return;
                    }
                },
                _ = sleep_opt(ex.deadline) => {
                    // The loop handles the deadline; this consumer is not reading anyway.
                    ex.detached = true;
                    return;
                }
            }
        }
    }

    fn make_chunk(&mut self, request: &str, body: Body, start: bool, end: bool) -> Chunk {
        let mut chunk = Chunk::new(&self.inner.id, request, self.seq, body);
        self.seq += 1;
        chunk.start = start;
        chunk.end = end;
        chunk
    }

    fn publish(&self, chunk: &Chunk) {
        if self.inner.watch.receiver_count() > 0 {
            let _ = self.inner.watch.send(chunk.clone());
        }
    }

    fn emit_raw(&mut self, request: &str, body: Body, start: bool, end: bool) {
        let chunk = self.make_chunk(request, body, start, end);
        self.publish(&chunk);
    }

    fn idle_console(&mut self, format: ConsoleFormat, text: String) {
        let body = Body::console(format, text);
        let marker = body.marker();
        if self.idle_block.as_ref() != Some(&marker) {
            self.close_idle_block();
            self.emit_raw("", marker.clone(), true, false);
            self.idle_block = Some(marker);
        }
        self.emit_raw("", body, false, false);
    }

    fn close_idle_block(&mut self) {
        if let Some(open) = self.idle_block.take() {
            self.emit_raw("", open, false, true);
        }
    }

    async fn emit_exec_start(&mut self, ex: &mut ExecState) {
        self.close_idle_block();
        let body = Body::Status {
            format: StatusFormat::Started,
            content: Some(StatusContent {
                execution_count: Some(ex.execution_count),
                ..StatusContent::default()
            }),
        };
        self.emit_to(ex, body, false, false).await;
    }

    async fn emit_error(&mut self, ex: &mut ExecState, name: &str, value: &str) {
        self.flush_exec_pending(ex).await;
        self.content(
            ex,
            Body::Error {
                content: Some(ErrorContent {
                    name: name.to_string(),
                    value: value.to_string(),
                    traceback: vec![format!("{name}: {value}")],
                }),
            },
            false,
        )
        .await;
    }

    /// An error for the running execution if there is one, else for watchers.
    async fn emit_error_any(&mut self, name: &str, value: &str) {
        match self.current.take() {
            Some(Current::Exec(mut ex)) => {
                self.emit_error(&mut ex, name, value).await;
                self.current = Some(Current::Exec(ex));
            }
            other => {
                self.current = other;
                tracing::warn!(name, value, "error outside an execution");
                self.block(Body::Error {
                    content: Some(ErrorContent {
                        name: name.to_string(),
                        value: value.to_string(),
                        traceback: vec![],
                    }),
                })
                .await;
            }
        }
    }

    async fn notice(&mut self, text: String) {
        self.block(Body::Notice {
            content: Some(text),
        })
        .await;
    }

    async fn finish_exec(
        &mut self,
        mut ex: ExecState,
        outcome: Outcome,
        exit_status: Option<i32>,
        user_expressions: Option<Map<String, Value>>,
    ) {
        self.flush_exec_pending(&mut ex).await;
        let dropped = ex.cap.as_ref().map_or(0, |c| c.dropped);
        if let Some(open) = ex.open.take() {
            self.emit_to(&mut ex, open, false, true).await;
        }
        let body = Body::Status {
            format: StatusFormat::Finished,
            content: Some(StatusContent {
                outcome: Some(outcome),
                exit_status,
                duration_ms: Some(ex.started.elapsed().as_secs_f64() * 1000.0),
                bytes_dropped: dropped,
                execution_count: Some(ex.execution_count),
                user_expressions,
            }),
        };
        self.emit_to(&mut ex, body, false, false).await;
    }

    // -- time limits, death, restart -------------------------------------------------------------

    async fn on_deadline(&mut self) {
        let grace = self.config.interrupt_grace;
        let Some(Current::Exec(ex)) = &mut self.current else {
            return;
        };
        if !ex.timed_out {
            ex.timed_out = true;
            ex.deadline = tokio::time::Instant::now().checked_add(grace);
            self.interrupt();
        } else {
            ex.deadline = None;
            let msg = timeout_message(
                ex.timeout,
                "did not stop when interrupted; the process was killed and restarted",
            );
            self.error_in_exec("TimeoutError", &msg).await;
            let lang = self.inner.language.name().to_string();
            let _ = self
                .replace_process(
                    format!("{lang} was killed and restarted"),
                    Outcome::Timeout,
                    None,
                    false,
                )
                .await;
        }
    }

    /// An error chunk in the running execution, if there is one.
    async fn error_in_exec(&mut self, name: &str, msg: &str) {
        if let Some(Current::Exec(mut ex)) = self.current.take() {
            self.emit_error(&mut ex, name, msg).await;
            self.current = Some(Current::Exec(ex));
        }
    }

    /// Replace the process with a fresh one: stop the old one (if it still runs), start a new
    /// one, tell the running execution (`what`; a fresh process is ready, or why not), then end
    /// that execution with `outcome`.
    async fn replace_process(
        &mut self,
        what: String,
        outcome: Outcome,
        exit: Option<i32>,
        abort_queue: bool,
    ) -> Result<(), KernelError> {
        self.stop_proc().await;
        let started = self.spawn_proc().await;
        let text = match &started {
            Ok(()) => format!("{what}; a fresh process is ready"),
            Err(e) => format!("{what}; restarting failed: {e}"),
        };
        self.notice(text).await;
        self.end_current(outcome, exit).await;
        if abort_queue {
            self.abort_queue("the session was restarted").await;
        }
        started
    }

    async fn restart(&mut self, why: &str) -> Result<(), KernelError> {
        self.error_in_exec("Restarted", &format!("the session was {why}"))
            .await;
        let lang = self.inner.language.name().to_string();
        self.replace_process(format!("{lang} {why}"), Outcome::Died, None, true)
            .await
    }

    /// The process is gone (exited, crashed, or killed) and its streams are drained.
    async fn on_gone(&mut self) {
        let Some(p) = self.proc.as_mut() else { return };
        let info = p.exited.clone().unwrap_or_default();
        // Let any frame still held through, and what the decoders still hold.
        if let Some((f, _)) = p.held.take() {
            self.on_frame(f).await;
        }
        self.finish_decoders().await;
        let lang = self.inner.language.name().to_string();
        if let Some(reason) = info.reason() {
            tracing::warn!(language = %lang, %reason, "the process was killed");
            self.emit_error_any("OutOfMemory", &reason).await;
        } else if info.signal.is_some() {
            self.emit_error_any("ProcessDied", &format!("the {lang} process {info}"))
                .await;
        }
        let _ = self
            .replace_process(
                format!("the {lang} process {info}"),
                Outcome::Died,
                info.code,
                false,
            )
            .await;
    }

    /// Finish whatever is current because the process is gone.
    async fn end_current(&mut self, outcome: Outcome, exit: Option<i32>) {
        match self.current.take() {
            Some(Current::Exec(ex)) => {
                self.finish_exec(*ex, outcome, exit, None).await;
            }
            Some(Current::Query(q)) => {
                let what = match q.req {
                    ChildRequest::Complete { .. } => "complete",
                    ChildRequest::Inspect { .. } => "inspect",
                    _ => "is_complete",
                };
                let _ = q.tx.send(Err(KernelError::Died {
                    language: self.inner.language.name().to_string(),
                    what,
                }));
            }
            None => {}
        }
        self.set_shared(|s| {
            s.running = None;
            s.input_pending = false;
        });
    }

    async fn abort_queue(&mut self, why: &str) {
        while let Some(work) = self.queue.pop_front() {
            self.set_shared(|s| s.queued = s.queued.saturating_sub(1));
            match work {
                Work::Exec { id, opts, tx, .. } => {
                    let mut ex = self.new_exec(id, &opts, tx, 0);
                    self.emit_exec_start(&mut ex).await;
                    self.emit_error(&mut ex, "Aborted", why).await;
                    self.finish_exec(ex, Outcome::Aborted, None, None).await;
                }
                Work::Query { tx, .. } => {
                    let _ = tx.send(Err(KernelError::Protocol(why.to_string())));
                }
            }
        }
    }

    /// Kill the process tree and wait for it to be reaped.
    async fn stop_proc(&mut self) {
        let Some(mut p) = self.proc.take() else {
            return;
        };
        p.control.kill_all();
        if p.exited.is_none() {
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut p.exit_rx).await;
        }
        self.set_shared(|s| {
            s.state = SessionState::Starting;
            s.pid = None;
            s.control = None;
            s.req_tx = None;
        });
        drop(p);
    }

    async fn spawn_proc(&mut self) -> Result<(), KernelError> {
        self.set_shared(|s| s.state = SessionState::Starting);
        match Proc::start(&self.inner, &self.spec, &self.config).await {
            Ok(p) => {
                self.proc = Some(p);
                let busy = self.current.is_some();
                self.set_shared(|s| {
                    s.state = if busy {
                        SessionState::Busy
                    } else {
                        SessionState::Idle
                    }
                });
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "session process failed to start");
                Err(e)
            }
        }
    }

    async fn close(&mut self) {
        self.close_idle_block();
        self.stop_proc().await;
        self.error_in_exec("Closed", "the session was closed").await;
        self.end_current(Outcome::Aborted, None).await;
        self.set_shared(|s| s.state = SessionState::Closed);
        // Whatever raced the close is refused, never left without an answer.
        self.cmd_rx.close();
        while let Ok(cmd) = self.cmd_rx.try_recv() {
            self.deferred.push_back(cmd);
        }
        for cmd in std::mem::take(&mut self.deferred) {
            match cmd {
                Cmd::Execute { id, code, opts, tx } => {
                    self.queue.push_back(Work::Exec { id, code, opts, tx })
                }
                Cmd::Query { req, tx } => self.queue.push_back(Work::Query { req, tx }),
                Cmd::Restart(tx) => {
                    let _ = tx.send(Err(KernelError::Closed(self.inner.id.clone())));
                }
                Cmd::Close(tx) => {
                    let _ = tx.send(());
                }
                Cmd::Cancel(_) => {}
            }
        }
        self.abort_queue("the session was closed").await;
        self.set_shared(|s| s.queued = 0);
    }
}

fn timeout_message(timeout: Option<Duration>, what: &str) -> String {
    match timeout {
        Some(t) => format!(
            "execution exceeded its timeout of {} s and {what}",
            t.as_secs_f64()
        ),
        None => format!("execution timed out and {what}"),
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char_boundary(s: &str, mut i: usize) -> usize {
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i
}
