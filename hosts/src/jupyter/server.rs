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

    /// Put what the history recorded into its store (before the process ends).
    pub(crate) async fn flush_history(&self) {
        if let Some(h) = self.history.get().cloned() {
            let _ = tokio::task::spawn_blocking(move || h.flush()).await;
        }
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
}

// Requests (`requests.rs`) and the tasks that serve the sockets (`tasks.rs`).
mod requests;
mod tasks;

pub(crate) use requests::{media, reply_error};
use tasks::{
    control_task, heartbeat_task, iopub_task, shell_reader, shell_worker, stdin_task, watch_task,
};
