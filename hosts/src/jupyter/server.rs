//! The kernel server: one [`Session`] behind the five Jupyter sockets.
//!
//! The same code serves `spindle kernel` (the server owns the session) and [`attach`]
//! (a live session someone else owns). Tasks:
//!
//! - **iopub** owns the XPUB socket: it publishes what the other tasks queue (in order) and
//!   answers every new subscription with `iopub_welcome` (JEP 65), so a client knows from
//!   which message on it sees everything. The `zeromq` crate's XPUB writes to each subscriber
//!   with back-pressure instead of dropping at a high-water mark, so nothing is lost;
//! - **shell** reads requests into a queue; a **worker** serves them one at a time (so
//!   `stop_on_error` can abort what is queued behind a failed execution);
//! - **control** is served on its own, even while the shell is busy;
//! - **stdin** forwards `input_reply` to the session; **heartbeat** echoes;
//! - **watch** follows the session's chunk broadcast and publishes what other clients' executions
//!   (and output printed between executions) produce.
//!
//! [`attach`]: super::attach

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use jupyter_protocol::{
    CodeMirrorMode, CompleteReply, ConnectionInfo, DebugReply, ExecutionState, HelpLink,
    HistoryEntry, HistoryReply, HistoryRequest, InspectReply, InterruptReply, IoPubWelcome,
    IsCompleteReply, IsCompleteReplyStatus, JupyterMessageContent, KernelInfoReply, LanguageInfo,
    Media, MediaType, ReplyError, ReplyStatus, ShutdownReply, Status,
};
use serde::Serialize;
use serde_json::{json, Value};
use spindle_kernel::{Kernel, Query, Session, SessionSpec};
use tokio::sync::{mpsc, watch, OnceCell};
use tokio::task::JoinHandle;
use zeromq::{
    RepSocket, RouterRecvHalf, RouterSendHalf, RouterSocket, Socket, SocketRecv, SocketSend,
    XPubSocket, ZmqMessage,
};

use super::history::{Access, History};
use super::wire::{self, Request, Wire};
use crate::auth::Signer;

/// The session as the server sees it: not started yet, started, or failed to start.
pub(crate) type Slot = Option<Result<Session, String>>;

/// Who owns the session.
pub(crate) enum Owner {
    /// `spindle kernel`: the server owns it and may start it again. `managed` is true when a
    /// Jupyter kernel manager launched us (`JPY_PARENT_PID`): such a manager restarts a kernel by
    /// waiting for its process to exit and launching a new one.
    Kernel {
        kernel: Arc<Kernel>,
        spec: SessionSpec,
        managed: bool,
    },
    /// [`super::attach`]: someone else owns it; a shutdown request only detaches.
    Attached,
}

/// What ended the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A client asked (`shutdown_request`), or a managed restart.
    Shutdown,
    /// The process was told to stop (SIGTERM, SIGHUP), or the parent died.
    Signal,
    /// The owner of an attachment stopped it.
    Detached,
}

/// Per-language facts for `kernel_info_reply`.
pub(crate) struct LangMeta {
    pub spindle: &'static str,
    pub name: &'static str,
    pub mimetype: &'static str,
    pub extension: &'static str,
    pub pygments: &'static str,
    pub codemirror: fn() -> CodeMirrorMode,
    pub exporter: &'static str,
    pub pretty: &'static str,
    pub docs: &'static str,
}

pub(crate) fn lang_meta(spindle: &str) -> &'static LangMeta {
    static PY: LangMeta = LangMeta {
        spindle: "python",
        name: "python",
        mimetype: "text/x-python",
        extension: ".py",
        pygments: "ipython3",
        codemirror: CodeMirrorMode::ipython_code_mirror_mode,
        exporter: "python",
        pretty: "Python",
        docs: "https://docs.python.org/3/",
    };
    static BASH: LangMeta = LangMeta {
        spindle: "bash",
        name: "bash",
        mimetype: "text/x-sh",
        extension: ".sh",
        pygments: "bash",
        codemirror: || CodeMirrorMode::Simple("shell".into()),
        exporter: "script",
        pretty: "Bash",
        docs: "https://www.gnu.org/software/bash/manual/",
    };
    static NODE: LangMeta = LangMeta {
        spindle: "node",
        name: "javascript",
        mimetype: "application/javascript",
        extension: ".js",
        pygments: "javascript",
        codemirror: || CodeMirrorMode::Simple("javascript".into()),
        exporter: "script",
        pretty: "Node.js",
        docs: "https://nodejs.org/docs/latest/api/",
    };
    match spindle {
        "bash" => &BASH,
        "node" => &NODE,
        _ => &PY,
    }
}

/// The five bound sockets and the connection info with the ports they really got.
pub(crate) struct Sockets {
    shell: RouterSocket,
    control: RouterSocket,
    stdin: RouterSocket,
    iopub: XPubSocket,
    hb: RepSocket,
    pub info: ConnectionInfo,
}

/// Bind every socket of `info` (a port of 0 takes a free one).
pub(crate) async fn bind_all(info: &ConnectionInfo) -> anyhow::Result<Sockets> {
    anyhow::ensure!(
        info.transport == jupyter_protocol::Transport::TCP,
        "only the tcp transport is supported"
    );
    let ip = match info.ip.as_str() {
        "*" | "" => "0.0.0.0",
        ip => ip,
    };
    async fn bind<S: Socket>(s: &mut S, ip: &str, port: u16, what: &str) -> anyhow::Result<u16> {
        let ep = s
            .bind(&format!("tcp://{ip}:{port}"))
            .await
            .map_err(|e| anyhow::anyhow!("cannot bind the {what} socket to {ip}:{port}: {e}"))?;
        match ep {
            zeromq::Endpoint::Tcp(_, p) => Ok(p),
            other => anyhow::bail!("unexpected endpoint {other}"),
        }
    }
    // Every socket bounds what it reads (see `wire::MAX_MESSAGE`); iopub only gets
    // subscriptions and the heartbeat only pings.
    let bound = crate::native::wire::socket_options;
    let mut shell = RouterSocket::with_options(bound(wire::MAX_MESSAGE));
    let mut control = RouterSocket::with_options(bound(wire::MAX_MESSAGE));
    let mut stdin = RouterSocket::with_options(bound(wire::MAX_MESSAGE));
    let mut iopub = XPubSocket::with_options(bound(crate::native::wire::MAX_SUBSCRIPTION));
    let mut hb = RepSocket::with_options(bound(crate::native::wire::MAX_SUBSCRIPTION));
    let mut out = info.clone();
    // Shell and iopub first: they are what a client talks to first.
    out.shell_port = bind(&mut shell, ip, info.shell_port, "shell").await?;
    out.iopub_port = bind(&mut iopub, ip, info.iopub_port, "iopub").await?;
    out.control_port = bind(&mut control, ip, info.control_port, "control").await?;
    out.stdin_port = bind(&mut stdin, ip, info.stdin_port, "stdin").await?;
    out.hb_port = bind(&mut hb, ip, info.hb_port, "heartbeat").await?;
    Ok(Sockets {
        shell,
        control,
        stdin,
        iopub,
        hb,
        info: out,
    })
}

/// Request ids of this server's own executions, remembered for a while after they end: the
/// watcher may see an execution's last chunks after the worker has finished with it.
#[derive(Default)]
struct RecentIds {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl RecentIds {
    const KEEP: usize = 4096;

    fn insert(&mut self, id: String) {
        if self.set.insert(id.clone()) {
            self.order.push_back(id);
            while self.order.len() > Self::KEEP {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// Which router a reply goes out on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chan {
    Shell,
    Control,
    Stdin,
}

pub(crate) struct Server {
    pub(crate) wire: Wire,
    signer: Signer,
    pub(crate) info: ConnectionInfo,
    pub(crate) lang: &'static LangMeta,
    slot_tx: watch::Sender<Slot>,
    owner: Owner,
    iopub: mpsc::Sender<ZmqMessage>,
    shell_tx: RouterSendHalf,
    control_tx: RouterSendHalf,
    stdin_tx: RouterSendHalf,
    ours: Mutex<RecentIds>,
    /// Header of the latest execute request: output printed between executions is attributed
    /// to it, as ipykernel does.
    last_parent: Mutex<Bytes>,
    /// Session execution count at the latest restart: Jupyter counts from there.
    base: AtomicU64,
    history: OnceCell<Arc<History>>,
    stop_tx: watch::Sender<Option<StopReason>>,
    /// True while one of this server's own executions runs. When the server owns the session,
    /// the watcher lets go of its subscription meanwhile: everything the session prints then
    /// belongs to that execution, and an idle subscription saves a copy of every chunk.
    own_busy: watch::Sender<bool>,
}

/// A running server: its tasks, and a way to learn why it stopped.
pub(crate) struct Running {
    pub server: Arc<Server>,
    tasks: Vec<JoinHandle<()>>,
    pub stop_rx: watch::Receiver<Option<StopReason>>,
}

impl Running {
    /// Wait until something asks the server to stop.
    pub async fn stopped(&mut self) -> StopReason {
        loop {
            if let Some(r) = *self.stop_rx.borrow_and_update() {
                return r;
            }
            if self.stop_rx.changed().await.is_err() {
                return StopReason::Detached;
            }
        }
    }

    /// Stop every task (the sockets close with them).
    pub fn abort(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.abort();
    }
}

/// Start serving on bound sockets.
pub(crate) fn start(
    sockets: Sockets,
    signer: Signer,
    lang: &'static LangMeta,
    slot_tx: watch::Sender<Slot>,
    owner: Owner,
) -> Running {
    let Sockets {
        shell,
        control,
        stdin,
        iopub,
        hb,
        info,
    } = sockets;
    let (shell_tx, shell_rx) = shell.split();
    let (control_tx, control_rx) = control.split();
    let (stdin_tx, stdin_rx) = stdin.split();
    let (iopub_q, iopub_rx) = mpsc::channel(1024);
    let (stop_tx, stop_rx) = watch::channel(None);
    let server = Arc::new(Server {
        wire: Wire::new(signer.clone()),
        signer,
        info,
        lang,
        slot_tx,
        owner,
        iopub: iopub_q,
        shell_tx,
        control_tx,
        stdin_tx,
        ours: Mutex::new(RecentIds::default()),
        last_parent: Mutex::new(wire::no_parent()),
        base: AtomicU64::new(0),
        history: OnceCell::new(),
        stop_tx,
        own_busy: watch::channel(false).0,
    });
    let (queue_tx, queue_rx) = mpsc::unbounded_channel();
    let mut tasks = vec![
        tokio::spawn(iopub_task(server.clone(), iopub, iopub_rx)),
        tokio::spawn(heartbeat_task(hb)),
        tokio::spawn(shell_reader(server.clone(), shell_rx, queue_tx)),
        tokio::spawn(shell_worker(server.clone(), queue_rx)),
        tokio::spawn(control_task(server.clone(), control_rx)),
        tokio::spawn(stdin_task(server.clone(), stdin_rx)),
        tokio::spawn(watch_task(server.clone())),
    ];
    // Load the history off the request path.
    let s = server.clone();
    tasks.push(tokio::spawn(async move {
        let _ = s.history().await;
    }));
    Running {
        server,
        tasks,
        stop_rx,
    }
}

impl Server {
    /// The session, once it has started (or the reason it could not).
    pub(crate) async fn session(&self) -> Result<Session, String> {
        let mut rx = self.slot_tx.subscribe();
        let got = rx.wait_for(Option::is_some).await;
        match got {
            Ok(v) => v.clone().unwrap_or_else(|| Err("no session".into())),
            Err(_) => Err("the session is gone".into()),
        }
    }

    fn session_now(&self) -> Option<Session> {
        match &*self.slot_tx.borrow() {
            Some(Ok(s)) => Some(s.clone()),
            _ => None,
        }
    }

    pub(crate) async fn history(&self) -> Arc<History> {
        self.history
            .get_or_init(|| async {
                let lang = self.lang.spindle;
                tokio::task::spawn_blocking(move || Arc::new(History::open(lang)))
                    .await
                    .unwrap_or_else(|_| Arc::new(History::disabled()))
            })
            .await
            .clone()
    }

    pub(crate) fn stop(&self, why: StopReason) {
        self.stop_tx.send_if_modified(|v| {
            if v.is_none() {
                *v = Some(why);
                true
            } else {
                false
            }
        });
    }

    /// Jupyter's execution count for a session count.
    pub(crate) fn jcount(&self, session_count: u64) -> u64 {
        let base = self.base.load(Ordering::Relaxed);
        // A session that restarted its own count needs no offset.
        if session_count >= base {
            session_count - base
        } else {
            session_count
        }
    }

    pub(crate) fn count_now(&self) -> u64 {
        self.session_now()
            .map_or(0, |s| self.jcount(s.info().execution_count))
    }

    pub(crate) fn mark_ours(&self, id: &str) {
        self.ours.lock().expect("ids").insert(id.to_string());
    }

    fn is_ours(&self, id: &str) -> bool {
        self.ours.lock().expect("ids").set.contains(id)
    }

    /// Mark the start or end of one of this server's executions.
    /// Whether one of this server's own executions is running, as it changes.
    pub(crate) fn own_busy(&self) -> watch::Receiver<bool> {
        self.own_busy.subscribe()
    }

    pub(crate) fn set_own_busy(&self, busy: bool) {
        self.own_busy.send_replace(busy);
    }

    pub(crate) fn set_last_parent(&self, parent: &Bytes) {
        *self.last_parent.lock().expect("parent") = parent.clone();
    }

    // -- sending ---------------------------------------------------------------------------------

    pub(crate) async fn publish<C: Serialize + ?Sized>(
        &self,
        parent: &Bytes,
        msg_type: &str,
        content: &C,
    ) {
        let msg = self
            .wire
            .build(vec![self.wire.topic(msg_type)], msg_type, parent, content);
        let _ = self.iopub.send(msg).await;
    }

    /// Publish a message already built (with buffers, say).
    pub(crate) async fn publish_built(&self, msg: ZmqMessage) {
        let _ = self.iopub.send(msg).await;
    }

    /// Publish content that is already JSON.
    pub(crate) async fn publish_raw(&self, parent: &Bytes, msg_type: &str, content: Bytes) {
        let msg = self
            .wire
            .build_raw(vec![self.wire.topic(msg_type)], msg_type, parent, content);
        let _ = self.iopub.send(msg).await;
    }

    pub(crate) async fn status(&self, parent: &Bytes, state: ExecutionState) {
        self.publish(
            parent,
            "status",
            &Status {
                execution_state: state,
            },
        )
        .await;
    }

    pub(crate) async fn reply<C: Serialize + ?Sized>(
        &self,
        chan: Chan,
        req: &Request,
        msg_type: &str,
        content: &C,
    ) {
        let msg = self
            .wire
            .build(req.ids.clone(), msg_type, &req.header_raw, content);
        let mut tx = match chan {
            Chan::Shell => self.shell_tx.clone(),
            Chan::Control => self.control_tx.clone(),
            Chan::Stdin => self.stdin_tx.clone(),
        };
        if let Err(e) = tx.send(msg).await {
            tracing::warn!(error = %e, msg_type, "cannot send reply");
        }
    }

    // -- requests ----------------------------------------------------------------------------------

    /// Serve one request that is not an execution (shell or control), wrapped in busy/idle.
    async fn handle(self: &Arc<Self>, chan: Chan, req: Request) {
        self.status(&req.header_raw, ExecutionState::Busy).await;
        self.dispatch(chan, &req).await;
        self.status(&req.header_raw, ExecutionState::Idle).await;
    }

    async fn dispatch(self: &Arc<Self>, chan: Chan, req: &Request) {
        tracing::trace!(msg_type = %req.msg_type, msg_id = %req.msg_id, ?chan, "request");
        let content = match &req.content {
            Ok(c) => c,
            Err(why) => {
                tracing::warn!(msg_type = %req.msg_type, error = %why, "malformed request content");
                if req.msg_type.ends_with("_request") {
                    let reply_type = req.msg_type.replace("_request", "_reply");
                    self.reply(
                        chan,
                        req,
                        &reply_type,
                        &error_content("BadRequest", &format!("malformed {}: {why}", req.msg_type)),
                    )
                    .await;
                }
                return;
            }
        };
        match content {
            JupyterMessageContent::KernelInfoRequest(_) => {
                let reply = self.kernel_info().await;
                self.reply(chan, req, "kernel_info_reply", &reply).await;
            }
            JupyterMessageContent::ExecuteRequest(r) => {
                if let (_, Some((count, output))) = super::execute::run(self, req, r, false).await {
                    self.history().await.record(count, &r.code, output);
                }
            }
            JupyterMessageContent::IsCompleteRequest(r) => {
                let reply = match self
                    .query(Query::IsComplete {
                        code: r.code.clone(),
                    })
                    .await
                {
                    Ok(v) => is_complete_reply(&v),
                    Err(e) => {
                        tracing::debug!(error = %e, "is_complete failed");
                        IsCompleteReply::unknown()
                    }
                };
                self.reply(chan, req, "is_complete_reply", &reply).await;
            }
            JupyterMessageContent::CompleteRequest(r) => {
                let reply = match self
                    .query(Query::Complete {
                        code: r.code.clone(),
                        cursor_pos: r.cursor_pos,
                    })
                    .await
                {
                    Ok(v) => complete_reply(v, r.cursor_pos),
                    Err(e) => CompleteReply {
                        cursor_start: r.cursor_pos,
                        cursor_end: r.cursor_pos,
                        status: ReplyStatus::Error,
                        error: Some(Box::new(reply_error("CompleteError", &e))),
                        ..CompleteReply::default()
                    },
                };
                self.reply(chan, req, "complete_reply", &reply).await;
            }
            JupyterMessageContent::InspectRequest(r) => {
                let reply = match self
                    .query(Query::Inspect {
                        code: r.code.clone(),
                        cursor_pos: r.cursor_pos,
                        detail_level: r.detail_level.unwrap_or(0).min(1) as u8,
                    })
                    .await
                {
                    Ok(v) => inspect_reply(v),
                    Err(e) => InspectReply {
                        status: ReplyStatus::Error,
                        error: Some(Box::new(reply_error("InspectError", &e))),
                        ..InspectReply::default()
                    },
                };
                self.reply(chan, req, "inspect_reply", &reply).await;
            }
            JupyterMessageContent::HistoryRequest(r) => {
                let reply = self.history_reply(r).await;
                self.reply(chan, req, "history_reply", &reply).await;
            }
            JupyterMessageContent::CommInfoRequest(r) => {
                let reply = super::comm::info(self, r.target_name.clone()).await;
                self.reply(chan, req, "comm_info_reply", &reply).await;
            }
            JupyterMessageContent::CommOpen(_)
            | JupyterMessageContent::CommMsg(_)
            | JupyterMessageContent::CommClose(_) => super::comm::deliver(self, req).await,
            JupyterMessageContent::InterruptRequest(_) => {
                let result = match self.session_now() {
                    Some(s) => s.interrupt().map_err(|e| e.to_string()),
                    None => Ok(()),
                };
                let reply = match result {
                    Ok(()) => InterruptReply::new(),
                    Err(e) => InterruptReply {
                        status: ReplyStatus::Error,
                        error: Some(Box::new(reply_error("InterruptError", &e))),
                    },
                };
                self.reply(chan, req, "interrupt_reply", &reply).await;
            }
            JupyterMessageContent::ShutdownRequest(r) => self.shutdown(chan, req, r.restart).await,
            JupyterMessageContent::DebugRequest(r) => {
                let reply = DebugReply {
                    content: json!({
                        "type": "response",
                        "request_seq": r.content.get("seq").cloned().unwrap_or(json!(0)),
                        "success": false,
                        "command": r.content.get("command").cloned().unwrap_or(json!("")),
                        "message": "Spindle has no debugger",
                    }),
                };
                self.reply(chan, req, "debug_reply", &reply).await;
            }
            _ if req.msg_type == "connect_request" => {
                let i = &self.info;
                let reply = json!({
                    "status": "ok", "shell_port": i.shell_port, "iopub_port": i.iopub_port,
                    "stdin_port": i.stdin_port, "hb_port": i.hb_port, "control_port": i.control_port,
                });
                self.reply(chan, req, "connect_reply", &reply).await;
            }
            _ if req.msg_type.ends_with("_request") => {
                let reply_type = req.msg_type.replace("_request", "_reply");
                tracing::info!(msg_type = %req.msg_type, "unsupported request");
                self.reply(
                    chan,
                    req,
                    &reply_type,
                    &error_content(
                        "UnknownMessageType",
                        &format!("Spindle does not handle {}", req.msg_type),
                    ),
                )
                .await;
            }
            _ => tracing::debug!(msg_type = %req.msg_type, "message ignored"),
        }
    }

    pub(crate) async fn query(&self, q: Query) -> Result<Value, String> {
        let s = self.session().await?;
        s.query(q).await.map_err(|e| e.to_string())
    }

    async fn kernel_info(&self) -> KernelInfoReply {
        let version = match self.session().await {
            Ok(s) => s.info().language_version.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let l = self.lang;
        KernelInfoReply {
            status: ReplyStatus::Ok,
            protocol_version: wire::PROTOCOL_VERSION.to_string(),
            implementation: "spindle".to_string(),
            implementation_version: env!("CARGO_PKG_VERSION").to_string(),
            language_info: LanguageInfo {
                name: l.name.to_string(),
                version: version.clone(),
                mimetype: Some(l.mimetype.to_string()),
                file_extension: Some(l.extension.to_string()),
                pygments_lexer: Some(l.pygments.to_string()),
                codemirror_mode: Some((l.codemirror)()),
                nbconvert_exporter: Some(l.exporter.to_string()),
            },
            banner: format!(
                "Spindle {}: {} {version} in a persistent session",
                env!("CARGO_PKG_VERSION"),
                l.pretty
            ),
            help_links: vec![
                HelpLink {
                    text: format!("{} documentation", l.pretty),
                    url: l.docs.to_string(),
                },
                HelpLink {
                    text: "Jupyter messaging".to_string(),
                    url: "https://jupyter-client.readthedocs.io/en/latest/messaging.html"
                        .to_string(),
                },
            ],
            debugger: false,
            error: None,
        }
    }

    async fn history_reply(&self, r: &HistoryRequest) -> HistoryReply {
        let given = |n: i32| (n >= 0).then_some(n as usize);
        let (access, output) = match r {
            HistoryRequest::Tail { n, output, .. } => (
                Access::Tail {
                    n: given(*n).unwrap_or(10),
                },
                *output,
            ),
            HistoryRequest::Range {
                session,
                start,
                stop,
                output,
                ..
            } => (
                Access::Range {
                    session: session.unwrap_or(0) as i64,
                    start: (*start).max(0) as u64,
                    stop: (*stop).max(0) as u64,
                },
                *output,
            ),
            HistoryRequest::Search {
                pattern,
                unique,
                n,
                output,
                ..
            } => (
                Access::Search {
                    pattern: pattern.clone(),
                    unique: *unique,
                    n: given(*n).filter(|n| *n > 0),
                },
                *output,
            ),
        };
        let entries = self.history().await.query(&access);
        HistoryReply::new(
            entries
                .into_iter()
                .map(|e| {
                    let (s, l) = (e.session as usize, e.line as usize);
                    if output {
                        HistoryEntry::InputOutput(s, l, (e.input, e.output.unwrap_or_default()))
                    } else {
                        HistoryEntry::Input(s, l, e.input)
                    }
                })
                .collect(),
        )
    }

    async fn shutdown(self: &Arc<Self>, chan: Chan, req: &Request, restart: bool) {
        let managed = matches!(self.owner, Owner::Kernel { managed: true, .. });
        let mut status = ReplyStatus::Ok;
        let mut error = None;
        if restart && !managed {
            if let Err(e) = self.restart_in_place().await {
                status = ReplyStatus::Error;
                error = Some(Box::new(reply_error("RestartError", &e)));
            }
        }
        let reply = ShutdownReply {
            restart,
            status,
            error,
        };
        self.reply(chan, req, "shutdown_reply", &reply).await;
        // ipykernel also publishes the reply, so every client learns of the shutdown.
        self.publish(&req.header_raw, "shutdown_reply", &reply)
            .await;
        if !restart || managed {
            // The process ends (or a manager starts a fresh one): finish the idle status and
            // let the writers flush first.
            let s = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                s.stop(StopReason::Shutdown);
            });
        }
    }

    /// A fresh process for the session, keeping this server (and its clients) as they are.
    async fn restart_in_place(&self) -> Result<(), String> {
        match self.session_now() {
            Some(s) => s.restart().await.map_err(|e| e.to_string())?,
            None => match &self.owner {
                Owner::Kernel { kernel, spec, .. } => {
                    let r = kernel
                        .create_session(spec.clone())
                        .await
                        .map_err(|e| e.to_string());
                    self.slot_tx.send_replace(Some(r.clone()));
                    r?;
                }
                Owner::Attached => return Err("the session is gone".into()),
            },
        }
        if let Some(s) = self.session_now() {
            self.base.store(s.info().execution_count, Ordering::Relaxed);
        }
        let h = self.history().await;
        let _ = tokio::task::spawn_blocking(move || h.new_session()).await;
        Ok(())
    }
}

pub(crate) fn error_content(ename: &str, evalue: &str) -> Value {
    json!({"status": "error", "ename": ename, "evalue": evalue, "traceback": [format!("{ename}: {evalue}")]})
}

pub(crate) fn reply_error(ename: &str, evalue: &str) -> ReplyError {
    ReplyError {
        ename: ename.to_string(),
        evalue: evalue.to_string(),
        traceback: vec![format!("{ename}: {evalue}")],
    }
}

fn is_complete_reply(v: &Value) -> IsCompleteReply {
    let indent = v["indent"].as_str().unwrap_or_default().to_string();
    match v["status"].as_str() {
        Some("complete") => IsCompleteReply::complete(),
        Some("incomplete") => IsCompleteReply::new(IsCompleteReplyStatus::Incomplete, indent),
        Some("invalid") => IsCompleteReply::invalid(),
        _ => IsCompleteReply::unknown(),
    }
}

fn complete_reply(v: Value, cursor: usize) -> CompleteReply {
    let num = |k: &str| v[k].as_u64().map_or(cursor, |n| n as usize);
    CompleteReply {
        matches: v["matches"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        cursor_start: num("cursor_start"),
        cursor_end: num("cursor_end"),
        metadata: v["metadata"].as_object().cloned().unwrap_or_default(),
        status: ReplyStatus::Ok,
        error: None,
    }
}

fn inspect_reply(v: Value) -> InspectReply {
    InspectReply {
        found: v["found"].as_bool().unwrap_or(false),
        data: media(v["data"].as_object().cloned().unwrap_or_default()),
        metadata: v["metadata"].as_object().cloned().unwrap_or_default(),
        status: ReplyStatus::Ok,
        error: None,
    }
}

/// A MIME bundle as the crate's typed [`Media`]; entries it cannot type are kept as they are.
pub(crate) fn media(bundle: serde_json::Map<String, Value>) -> Media {
    use serde::Deserialize;
    let mut content = Vec::with_capacity(bundle.len());
    for (k, v) in bundle {
        let mut one = serde_json::Map::with_capacity(1);
        one.insert(k, v);
        let one = Value::Object(one);
        match Media::deserialize(&one) {
            Ok(m) => content.extend(m.content),
            Err(_) => {
                if let Value::Object(one) = one {
                    content.extend(one.into_iter().map(|(k, v)| {
                        tracing::debug!(mime = %k, "MIME entry kept untyped");
                        MediaType::Other((k, v))
                    }));
                }
            }
        }
    }
    Media::new(content)
}

// -- tasks -------------------------------------------------------------------------------------

async fn iopub_task(server: Arc<Server>, mut xpub: XPubSocket, mut rx: mpsc::Receiver<ZmqMessage>) {
    loop {
        tokio::select! {
            biased;
            sub = xpub.recv() => match sub {
                Ok(m) => {
                    let Some(frame) = m.get(0) else { continue };
                    // 1 + topic subscribes, 0 + topic unsubscribes.
                    if frame.first() == Some(&1) {
                        let topic = String::from_utf8_lossy(&frame[1..]).into_owned();
                        let welcome = server.wire.build(
                            vec![Bytes::copy_from_slice(&frame[1..])],
                            "iopub_welcome",
                            &wire::no_parent(),
                            &IoPubWelcome { subscription: topic },
                        );
                        if let Err(e) = xpub.send(welcome).await {
                            tracing::debug!(error = %e, "iopub_welcome not sent");
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "iopub receive");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            },
            msg = rx.recv() => match msg {
                Some(m) => {
                    if let Err(e) = xpub.send(m).await {
                        tracing::debug!(error = %e, "iopub send");
                    }
                }
                None => return,
            },
        }
    }
}

async fn heartbeat_task(mut hb: RepSocket) {
    loop {
        match hb.recv().await {
            Ok(m) => {
                if let Err(e) = hb.send(m).await {
                    tracing::debug!(error = %e, "heartbeat send");
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "heartbeat receive");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// Receive and verify one message; bad ones are logged (never with the key) and dropped.
async fn recv_request(server: &Server, rx: &mut RouterRecvHalf, what: &str) -> Option<Request> {
    match rx.recv().await {
        Ok(m) => match wire::parse(m, &server.signer) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(channel = what, error = %e, "message dropped");
                None
            }
        },
        Err(e) => {
            tracing::debug!(channel = what, error = %e, "receive failed");
            tokio::time::sleep(Duration::from_millis(5)).await;
            None
        }
    }
}

async fn shell_reader(
    server: Arc<Server>,
    mut rx: RouterRecvHalf,
    queue: mpsc::UnboundedSender<Request>,
) {
    loop {
        if let Some(req) = recv_request(&server, &mut rx, "shell").await {
            if queue.send(req).is_err() {
                return;
            }
        }
    }
}

async fn shell_worker(server: Arc<Server>, mut queue: mpsc::UnboundedReceiver<Request>) {
    // Requests drained from the queue after a failed execution, with whether to abort them.
    let mut pending: VecDeque<(Request, bool)> = VecDeque::new();
    loop {
        let (req, abort) = match pending.pop_front() {
            Some(p) => p,
            None => match queue.recv().await {
                Some(r) => (r, false),
                None => return,
            },
        };
        let is_exec = matches!(req.content, Ok(JupyterMessageContent::ExecuteRequest(_)));
        if !is_exec {
            server.handle(Chan::Shell, req).await;
            continue;
        }
        let failed = super::execute::execute(&server, &req, abort).await;
        if failed {
            // stop_on_error: abort the executions already queued behind this one.
            while let Ok(r) = queue.try_recv() {
                pending.push_back((r, true));
            }
            for p in pending.iter_mut() {
                p.1 = true;
            }
        }
    }
}

async fn control_task(server: Arc<Server>, mut rx: RouterRecvHalf) {
    loop {
        let Some(req) = recv_request(&server, &mut rx, "control").await else {
            continue;
        };
        if matches!(req.content, Ok(JupyterMessageContent::InterruptRequest(_))) {
            // Inline, so an interrupt is never stuck behind a slower control request.
            server.handle(Chan::Control, req).await;
        } else {
            let s = server.clone();
            tokio::spawn(async move { s.handle(Chan::Control, req).await });
        }
    }
}

async fn stdin_task(server: Arc<Server>, mut rx: RouterRecvHalf) {
    loop {
        let Some(req) = recv_request(&server, &mut rx, "stdin").await else {
            continue;
        };
        match req.content {
            Ok(JupyterMessageContent::InputReply(r)) => {
                let Some(s) = server.session_now() else {
                    continue;
                };
                if let Err(e) = s.input_reply(&r.value) {
                    tracing::info!(error = %e, "input_reply not delivered");
                }
            }
            _ => tracing::debug!(msg_type = %req.msg_type, "unexpected stdin message ignored"),
        }
    }
}

/// Publish what the session produced that this server's own executions did not ask for.
async fn watch_task(server: Arc<Server>) {
    use tokio::sync::broadcast::error::RecvError;
    let owned = matches!(server.owner, Owner::Kernel { .. });
    let mut slot_rx = server.slot_tx.subscribe();
    let mut busy_rx = server.own_busy.subscribe();
    loop {
        let session = {
            let got = slot_rx.wait_for(Option::is_some).await;
            match got {
                Ok(v) => match &*v {
                    Some(Ok(s)) => Some(s.clone()),
                    _ => None,
                },
                Err(_) => return,
            }
        };
        let Some(session) = session else {
            if slot_rx.changed().await.is_err() {
                return;
            }
            continue;
        };
        if owned && busy_rx.wait_for(|b| !*b).await.is_err() {
            return;
        }
        let mut rx = session.subscribe();
        slot_rx.borrow_and_update();
        busy_rx.borrow_and_update();
        let mut foreign: HashMap<String, super::execute::Mapper> = HashMap::new();
        loop {
            tokio::select! {
                r = rx.recv() => match r {
                    Ok(chunk) => server.on_watched(chunk, &mut foreign).await,
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "fell behind the session's output; chunks lost for watchers");
                    }
                    Err(RecvError::Closed) => break,
                },
                c = slot_rx.changed() => {
                    if c.is_err() { return; }
                    break;
                }
                c = busy_rx.changed(), if owned => {
                    if c.is_err() { return; }
                    if *busy_rx.borrow_and_update() {
                        break; // resubscribe once our execution is over
                    }
                }
            }
        }
    }
}

impl Server {
    async fn on_watched(
        &self,
        chunk: spindle_protocol::Chunk,
        foreign: &mut HashMap<String, super::execute::Mapper>,
    ) {
        use spindle_protocol::{Body, StatusFormat};
        if chunk.request.is_empty() {
            // Printed between executions: attribute it to the latest request.
            let parent = self.last_parent.lock().expect("parent").clone();
            let mut m = super::execute::Mapper::new(parent, false);
            m.on_chunk(self, chunk).await;
            return;
        }
        if self.is_ours(&chunk.request) {
            return;
        }
        let finished = chunk.is_finished();
        let id = chunk.request.clone();
        let m = foreign
            .entry(id.clone())
            .or_insert_with(|| super::execute::Mapper::new(foreign_parent(self, &id), false));
        if matches!(
            chunk.body,
            Body::Status {
                format: StatusFormat::Started,
                ..
            }
        ) {
            self.status(&m.parent, ExecutionState::Busy).await;
        }
        m.on_chunk(self, chunk).await;
        if finished {
            let parent = m.parent.clone();
            foreign.remove(&id);
            self.status(&parent, ExecutionState::Idle).await;
        }
    }
}

/// A parent header standing for an execution another client started.
fn foreign_parent(server: &Server, request: &str) -> Bytes {
    let h = json!({
        "msg_id": request,
        "msg_type": "execute_request",
        "session": format!("spindle-native-{}", server.wire.session()),
        "username": "spindle",
        "date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "version": wire::PROTOCOL_VERSION,
    });
    Bytes::from(serde_json::to_vec(&h).unwrap_or_else(|_| b"{}".to_vec()))
}
