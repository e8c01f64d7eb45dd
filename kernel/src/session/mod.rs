//! One session: one persistent language process, its execution queue, and the task that turns
//! what the process writes into chunks.
//!
//! Each session runs an *actor* task that owns the process. Reader threads feed it the PTY, the
//! child's stderr and the event stream; it merges them in order (holding an event until the
//! sentinels it names have come through the PTY and stderr), shapes the result into chunks, and
//! sends them to the execution's stream and to the session's watchers. Interrupts, stdin and
//! input replies bypass the actor, so a busy or back-pressured actor never delays them.

mod actor;
mod log;
mod pipes;
mod proc;

pub use log::{LogStats, Watched, Watcher};

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use serde_json::Value;
use spindle_protocol::{Chunk, SessionInfo, SessionState};
use tokio::sync::{mpsc, oneshot};

use crate::error::KernelError;
use crate::language::{ChildRequest, Language, Outbound};
use crate::launcher::ProcessControl;
use crate::options::{ExecOptions, KernelConfig, Query, SessionSpec};

use actor::Actor;
use proc::Proc;

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
    /// The recent chunks, for watchers and replays.
    log: log::Log,
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
    req_tx: Option<mpsc::UnboundedSender<Outbound>>,
    input_pending: bool,
    /// When the pending input request is a terminal prompt: whose it is.
    tty_input: Option<actor::prompt::TtyPending>,
    running: Option<String>,
}

enum Cmd {
    Execute {
        id: String,
        code: String,
        opts: ExecOptions,
        tx: mpsc::Sender<Arc<Chunk>>,
    },
    Query {
        req: ChildRequest,
        tx: oneshot::Sender<Result<Value, KernelError>>,
    },
    Cancel(String),
    Restart(oneshot::Sender<Result<(), KernelError>>),
    Close(oneshot::Sender<()>),
    /// A notice for the session's output (a terminal prompt's answer that was discarded).
    Notice(String),
}

/// The chunk stream of one execution. Dropping it before it finishes interrupts the execution
/// (or takes it out of the queue).
pub struct Execution {
    id: String,
    rx: mpsc::Receiver<Arc<Chunk>>,
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

    /// The next chunk as the session's log holds it, shared rather than copied: for an edge
    /// that only reads chunks (serialises them), this saves copying every byte of output once.
    /// The stream's items are the same chunks, each copied out of the log's.
    pub async fn next_shared(&mut self) -> Option<Arc<Chunk>> {
        std::future::poll_fn(|cx| self.poll_shared(cx)).await
    }

    fn poll_shared(&mut self, cx: &mut Context<'_>) -> Poll<Option<Arc<Chunk>>> {
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

impl Stream for Execution {
    type Item = Chunk;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Chunk>> {
        self.poll_shared(cx).map(|c| c.map(Arc::unwrap_or_clone))
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
                tty_input: None,
                running: None,
            }),
            log: log::Log::new(config.watch_log_bytes),
        });
        let proc = Proc::start(&inner, &spec, &config).await?;
        let actor = Actor::new(inner.clone(), cmd_rx, spec, config, proc);
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
        // Chunks are up to 1 MiB: keep the per-execution buffer small (back-pressure does the
        // rest), so a flood holds at most a few MiB here.
        let (tx, rx) = mpsc::channel(8);
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

    /// Hand a comm message from a frontend to the code's comm handlers (languages with comms:
    /// Python, Node). It is queued in order with executions and runs like one (interruptible,
    /// never counted); the stream carries what the handler printed, displayed and sent.
    pub fn comm(
        &self,
        message: spindle_protocol::CommMessage,
        mut opts: ExecOptions,
    ) -> Result<Execution, KernelError> {
        if !self.inner.language.supports_comms() {
            return Err(crate::language::LanguageError::Unsupported(format!(
                "{} has no comms",
                self.inner.language.name()
            ))
            .into());
        }
        opts.comm = Some(Box::new(message));
        opts.store_history = false;
        self.execute("comm", opts)
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
            Query::CommInfo { target_name } => ChildRequest::CommInfo { id, target_name },
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
        if let Some(tty) = s.tty_input.take() {
            // A terminal prompt: the answer goes to the terminal, if its program still waits.
            let running = s.running.clone();
            let (pending, control) = (s.input_pending, s.control.clone());
            let r = actor::prompt::reply(tty, pending, running.as_deref(), control.as_ref(), value);
            if let Some(r) = r {
                s.input_pending = false;
                let bytes = match r {
                    Ok(bytes) => bytes,
                    Err(note) => {
                        let _ = self.cmd_tx.send(Cmd::Notice(note));
                        return Err(KernelError::NoPendingInput(self.inner.id.clone()));
                    }
                };
                let tx = s
                    .req_tx
                    .clone()
                    .ok_or_else(|| KernelError::Closed(self.inner.id.clone()))?;
                return tx
                    .send(Outbound {
                        pty: bytes,
                        ..Outbound::default()
                    })
                    .map_err(|_| KernelError::Closed(self.inner.id.clone()));
            }
        }
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

    /// Every chunk of every execution in this session from now on, as it happens. A watcher is
    /// a cursor into the session's log (the kernel's `watch_log_bytes`): one that falls behind
    /// the oldest chunk kept is told how many it missed (`RecvError::Lagged(n)`) and goes on
    /// from there.
    pub fn subscribe(&self) -> Watcher {
        self.inner.log.watcher(None)
    }

    /// Like [`subscribe`](Self::subscribe), starting at the chunk numbered `from_seq`: what the
    /// log still keeps of the past first (a `Missed` count for what it no longer does), then
    /// the live chunks. A `from_seq` beyond the newest chunk starts with the next one.
    pub fn replay(&self, from_seq: u64) -> Watcher {
        self.inner.log.watcher(Some(from_seq))
    }

    /// What the session's log holds now.
    pub fn log_stats(&self) -> LogStats {
        self.inner.log.stats()
    }

    fn ensure_open(&self) -> Result<(), KernelError> {
        if self.inner.shared.lock().expect("session state").state == SessionState::Closed {
            return Err(KernelError::Closed(self.inner.id.clone()));
        }
        Ok(())
    }
}
