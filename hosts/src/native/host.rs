//! The native host's state and request handlers.
//!
//! The receive loop calls [`Host::dispatch`] for every message. Dispatch never waits on a socket
//! or a session: what is instant and order-sensitive (queueing an execution, stdin, input
//! replies, interrupts) happens inline, so a client's requests take effect in the order sent;
//! everything that waits (starting, restarting, closing, queries, streaming chunks, sending any
//! reply) runs in its own task. No task holds the host's maps, or any lock on them, across an
//! await; the one lock held across an await is a session's own attachment slot, so that two
//! `attach` requests share one Jupyter attachment.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use serde_json::Value;
use spindle_kernel::{
    ExecOptions, Execution, Kernel, KernelError, LanguageError, Query, Session, SessionSpec,
};
use spindle_languages::Interpreters;
use spindle_protocol::native::{
    CompleteReply, CreateSession, ErrorCode, Event, Execute, InspectReply, IsCompleteReply, Reply,
    ReplyBody, Request, RequestBody,
};
use spindle_protocol::SessionInfo;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use zeromq::{RouterSendHalf, ZmqMessage};

use crate::auth::Signer;
use crate::native::chat::{self, Chats};
use crate::native::events::{self, spawn_relay, Events};
use crate::native::files;
use crate::native::pool::Pool;
use crate::native::wire::{self, Client, Sent, Wait};

/// Ids and names of closed sessions remembered, to say "closed" rather than "unknown".
const CLOSED_MEMORY: usize = 4096;
/// How long the last reply of an execution may wait for a client that does not read.
pub(super) const FINAL_PATIENCE: Duration = Duration::from_secs(300);
/// Longest session name accepted.
const MAX_NAME_BYTES: usize = 256;

pub(crate) type Failure = (ErrorCode, String);

/// Settings of one host.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub max_message: usize,
    pub client_buffer: usize,
    /// How long replies wait for a client that does not read before its chunks are dropped.
    pub client_patience: Duration,
    /// Address for Jupyter attachments.
    pub ip: String,
    /// Where Jupyter connection files for attachments go.
    pub attach_dir: PathBuf,
    /// How long a chat's `confirm` or `input` item waits for its `chat_reply`.
    pub chat_confirm_timeout: Duration,
}

/// A session served as a Jupyter kernel too (see [`crate::jupyter::attach`]). A task owns the
/// attachment; it ends when a Jupyter client shuts it down or when told to (session closed).
struct Attachment {
    path: String,
    connection: serde_json::Map<String, Value>,
    cancel: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Attachment {
    /// Stop serving Jupyter (the task removes the connection file) and wait for it.
    async fn end(mut self) {
        if let Some(c) = self.cancel.take() {
            let _ = c.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.task).await;
    }
}

/// One live session as the host sees it.
struct Entry {
    session: Session,
    name: String,
    timeout: Option<Duration>,
    output_cap: Option<u64>,
    stop_relay: Mutex<Option<oneshot::Sender<String>>>,
    relay: Mutex<Option<JoinHandle<()>>>,
    /// Held across the attach itself, so two attach requests share one attachment.
    attachment: tokio::sync::Mutex<Option<Attachment>>,
}

impl Entry {
    fn info(&self) -> SessionInfo {
        let mut info = self.session.info();
        info.name = self.name.clone();
        info
    }

    /// Tell the relay the session is gone, and hand back its task to await.
    fn end_relay(&self, reason: &str) -> Option<JoinHandle<()>> {
        if let Some(tx) = self.stop_relay.lock().expect("entry").take() {
            let _ = tx.send(reason.to_string());
        }
        self.relay.lock().expect("entry").take()
    }
}

#[derive(Default)]
struct Closed {
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl Closed {
    fn remember(&mut self, key: String) {
        if self.set.insert(key.clone()) {
            self.order.push_back(key);
        }
        while self.order.len() > CLOSED_MEMORY {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

/// Everything the handlers share.
pub struct Host {
    kernel: Arc<Kernel>,
    pub(super) interpreters: Interpreters,
    signer: Signer,
    router: RouterSendHalf,
    pub(super) events: Events,
    pool: Pool,
    config: HostConfig,
    pub(super) chats: Chats,
    entries: DashMap<String, Arc<Entry>>,
    /// Session name → id. Names live here rather than in the kernel, so that a pooled session
    /// (started before anyone chose its name) can take the name it is created with.
    names: DashMap<String, String>,
    closed: Mutex<Closed>,
    clients: Mutex<HashMap<Bytes, Arc<Client>>>,
    cwd: Option<PathBuf>,
    stopping: AtomicBool,
    stop: Notify,
}

impl Host {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kernel: Arc<Kernel>,
        interpreters: Interpreters,
        signer: Signer,
        router: RouterSendHalf,
        events: Events,
        pool: Pool,
        config: HostConfig,
    ) -> Self {
        Self {
            kernel,
            interpreters,
            signer,
            router,
            events,
            pool,
            chats: Chats::new(config.chat_confirm_timeout),
            config,
            entries: DashMap::new(),
            names: DashMap::new(),
            closed: Mutex::new(Closed::default()),
            clients: Mutex::new(HashMap::new()),
            cwd: std::env::current_dir()
                .ok()
                .and_then(|d| d.canonicalize().ok()),
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
        }
    }

    /// Resolves when a client asked the host to shut down.
    pub async fn stop_requested(&self) {
        self.stop.notified().await
    }

    /// The pool's ready counts (for the start-up banner).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    fn client(&self, identity: Bytes) -> Arc<Client> {
        let mut clients = self.clients.lock().expect("clients");
        if let Some(c) = clients.get(&identity) {
            return c.clone();
        }
        if clients.len() >= 256 {
            // Forget clients with nothing in flight; one that still has replies queued keeps
            // its entry, so its budget keeps counting them.
            clients.retain(|_, c| Arc::strong_count(c) > 1 || !c.idle());
        }
        let c = Arc::new(Client::new(
            identity.clone(),
            self.router.clone(),
            self.config.client_buffer,
            self.signer.clone(),
            self.config.client_patience,
        ));
        clients.insert(identity, c.clone());
        c
    }

    /// Handle one message from the ROUTER socket. Never waits.
    pub fn dispatch(self: &Arc<Self>, msg: ZmqMessage) {
        match wire::check(msg, &self.signer, self.config.max_message) {
            Err(rej) => {
                let client = self.client(rej.identity);
                // The reason can quote the message; the log gets only what kind of failure.
                tracing::warn!(client = %client.tag(), code = ?rej.code, "rejected a request");
                tokio::spawn(async move { client.error(rej.id, rej.code, rej.reason).await });
            }
            Ok(checked) => {
                let client = self.client(checked.identity);
                self.handle(client, checked.request);
            }
        }
    }

    pub(super) fn answer(client: Arc<Client>, id: String, result: Result<ReplyBody, Failure>) {
        tokio::spawn(async move {
            let body = match result {
                Ok(body) => body,
                Err((code, reason)) => ReplyBody::Error { code, reason },
            };
            client
                .send(&Reply { id: Some(id), body }, Wait::Upto(client.patience))
                .await
        });
    }

    /// Run `f` in its own task and send what it returns.
    fn answer_later<F>(client: Arc<Client>, id: String, f: F)
    where
        F: std::future::Future<Output = Result<ReplyBody, Failure>> + Send + 'static,
    {
        tokio::spawn(async move {
            let result = f.await;
            Self::answer(client, id, result);
        });
    }

    fn handle(self: &Arc<Self>, client: Arc<Client>, req: Request) {
        let id = req.id;
        if self.stopping.load(Ordering::SeqCst) {
            let why = "the host is shutting down".to_string();
            return Self::answer(client, id, Err((ErrorCode::ShuttingDown, why)));
        }
        let me = self.clone();
        match req.body {
            RequestBody::CreateSession(c) => {
                Self::answer_later(client, id, async move { me.create(c).await })
            }
            RequestBody::ListSessions => {
                let mut sessions: Vec<SessionInfo> =
                    self.entries.iter().map(|e| e.value().info()).collect();
                sessions.sort_by(|a, b| a.name.cmp(&b.name));
                Self::answer(client, id, Ok(ReplyBody::Sessions { sessions }))
            }
            RequestBody::SessionInfo { session } => {
                let r = self.resolve(&session).map(|e| ReplyBody::Session {
                    session: e.info(),
                    warm: false,
                });
                Self::answer(client, id, r)
            }
            RequestBody::Execute(ex) => match self.execute(&id, ex) {
                Ok((session, exec, text_frames)) => {
                    tokio::spawn(stream(client, id, session, exec, text_frames));
                }
                Err(f) => Self::answer(client, id, Err(f)),
            },
            RequestBody::Interrupt { session } => {
                let r = self
                    .resolve(&session)
                    .and_then(|e| e.session.interrupt().map_err(failure))
                    .map(|_| ReplyBody::Ok);
                Self::answer(client, id, r)
            }
            RequestBody::Restart { session } => Self::answer_later(client, id, async move {
                let e = me.resolve(&session)?;
                e.session.restart().await.map_err(failure)?;
                Ok(ReplyBody::Session {
                    session: e.info(),
                    warm: false,
                })
            }),
            RequestBody::Close { session } => Self::answer_later(client, id, async move {
                let e = me.resolve(&session)?;
                me.close(&e, "closed on request").await;
                Ok(ReplyBody::Ok)
            }),
            RequestBody::InputReply { session, value } => {
                let r = self
                    .resolve(&session)
                    .and_then(|e| e.session.input_reply(&value).map_err(failure))
                    .map(|_| ReplyBody::Ok);
                Self::answer(client, id, r)
            }
            RequestBody::Stdin { session, data } => {
                let r = self
                    .resolve(&session)
                    .and_then(|e| e.session.write_stdin(data.as_bytes()).map_err(failure))
                    .map(|_| ReplyBody::Ok);
                Self::answer(client, id, r)
            }
            RequestBody::Complete {
                session,
                code,
                cursor_pos,
            } => Self::answer_later(client, id, async move {
                let e = me.resolve(&session)?;
                let cursor_pos = cursor(&code, cursor_pos)?;
                let v = query(&e, Query::Complete { code, cursor_pos }).await?;
                Ok(ReplyBody::Complete(typed::<CompleteReply>(v)?))
            }),
            RequestBody::Inspect {
                session,
                code,
                cursor_pos,
                detail_level,
            } => Self::answer_later(client, id, async move {
                let e = me.resolve(&session)?;
                let cursor_pos = cursor(&code, cursor_pos)?;
                let q = Query::Inspect {
                    code,
                    cursor_pos,
                    detail_level,
                };
                Ok(ReplyBody::Inspect(typed::<InspectReply>(
                    query(&e, q).await?,
                )?))
            }),
            RequestBody::IsComplete { session, code } => {
                Self::answer_later(client, id.clone(), async move {
                    let e = me.resolve(&session)?;
                    let v = query(&e, Query::IsComplete { code }).await?;
                    Ok(ReplyBody::IsComplete(typed::<IsCompleteReply>(v)?))
                })
            }
            RequestBody::Watch { session } => {
                let token = id.clone();
                Self::answer_later(client, id, async move {
                    let e = match me.resolve(&session) {
                        Ok(e) => e,
                        Err(f) => return chat::watch(&me, &session, token).await.ok_or(f),
                    };
                    let info = e.info();
                    // Published before the reply, so a client that has its reply and sees no
                    // welcome knows its subscription is not live yet.
                    let ev = Event::Welcome {
                        token,
                        session: Some(info.clone()),
                        conversation: None,
                    };
                    me.events
                        .publish(&info.id, &ev, Wait::Upto(Duration::from_secs(1)))
                        .await;
                    Ok(ReplyBody::Session {
                        session: info,
                        warm: false,
                    })
                })
            }
            RequestBody::Replay {
                session,
                from_seq,
                follow,
                text_frames,
            } => match self.resolve(&session) {
                Ok(e) => {
                    let session = e.session.clone();
                    let how = events::ReplayHow {
                        from_seq,
                        follow,
                        text_frames,
                    };
                    tokio::spawn(events::replay(client, id, session, how));
                }
                Err(f) => Self::answer(client, id, Err(f)),
            },
            RequestBody::Attach { session } => Self::answer_later(client, id, async move {
                let e = me.resolve(&session)?;
                me.attach(&e).await
            }),
            RequestBody::UploadFile(u) => Self::answer_later(client, id, async move {
                let e = me.resolve(&u.session)?;
                files::upload(&e.session, u.path, &u.data, u.mode).await
            }),
            RequestBody::DownloadFile { session, path } => {
                Self::answer_later(client, id, async move {
                    let e = me.resolve(&session)?;
                    let limit = files::max_file(me.config.max_message);
                    files::download(&e.session, path, limit).await
                })
            }
            RequestBody::ListFiles { session, path } => {
                Self::answer_later(client, id, async move {
                    let e = me.resolve(&session)?;
                    files::list(&e.session, path).await
                })
            }
            RequestBody::Shutdown => {
                tokio::spawn(async move {
                    let reply = Reply {
                        id: Some(id),
                        body: ReplyBody::Ok,
                    };
                    client
                        .send(&reply, Wait::Upto(Duration::from_secs(2)))
                        .await;
                    tracing::info!("shutdown requested by a client");
                    me.stop.notify_one();
                });
            }
            RequestBody::Chat(c) => chat::start(self, client, id, c),
            RequestBody::ChatReply {
                conversation,
                call,
                decision,
                code,
                input,
            } => {
                let r = self
                    .chats
                    .reply(&conversation, &call, decision, code, input);
                Self::answer(client, id, r)
            }
            RequestBody::ChatCancel { conversation } => {
                Self::answer(client, id, self.chats.cancel(&conversation))
            }
        }
    }

    /// The info of the live session with this id or name.
    pub(super) fn session_info(&self, key: &str) -> Option<SessionInfo> {
        self.resolve(key).ok().map(|e| e.info())
    }

    /// The live session with this id or name.
    pub(super) fn session(&self, key: &str) -> Result<Session, Failure> {
        self.resolve(key).map(|e| e.session.clone())
    }

    /// The live session with this id or name.
    fn resolve(&self, key: &str) -> Result<Arc<Entry>, Failure> {
        if let Some(e) = self.entries.get(key).map(|e| e.value().clone()) {
            return Ok(e);
        }
        let id = self.names.get(key).map(|id| id.value().clone());
        if let Some(e) = id.and_then(|id| self.entries.get(&id).map(|e| e.value().clone())) {
            return Ok(e);
        }
        if self.closed.lock().expect("closed").set.contains(key) {
            return Err((
                ErrorCode::SessionClosed,
                format!("session {key:?} was closed"),
            ));
        }
        Err((
            ErrorCode::UnknownSession,
            format!("no session with id or name {key:?}"),
        ))
    }

    pub(super) async fn create(self: Arc<Self>, c: CreateSession) -> Result<ReplyBody, Failure> {
        let language = spindle_languages::language(&c.language, &self.interpreters)
            .map_err(|e| (ErrorCode::Unsupported, e.to_string()))?;
        let timeout = seconds(c.timeout, "timeout")?;
        let cwd = match &c.cwd {
            None => None,
            Some(dir) => {
                let p = PathBuf::from(dir);
                if !p.is_dir() {
                    return Err((
                        ErrorCode::BadRequest,
                        format!("cwd {dir:?} is not a directory"),
                    ));
                }
                Some(p)
            }
        };
        let launcher = match &c.sandbox {
            None => None,
            Some(r) => crate::sandbox::for_request(r)
                .await
                .map_err(|e| (ErrorCode::StartFailed, e))?,
        };
        let name = self.reserve_name(c.name.as_deref())?;
        let release = |name: &Option<String>| {
            if let Some(n) = name {
                self.names.remove(n);
            }
        };
        // A pooled session was started in the host's directory with no extra environment.
        let pool_fits = c.env.is_empty()
            && launcher.is_none()
            && match &cwd {
                None => true,
                Some(p) => p.canonicalize().ok() == self.cwd,
            };
        let pooled = if pool_fits {
            self.pool.take(language.name())
        } else {
            None
        };
        let warm = pooled.is_some();
        let session = match pooled {
            Some(s) => s,
            None => {
                let mut spec = SessionSpec::new(language);
                spec.cwd = cwd;
                spec.env = c.env.into_iter().collect();
                spec.launcher = launcher;
                match self.kernel.start_detached(spec).await {
                    Ok(s) => s,
                    Err(e) => {
                        release(&name);
                        return Err(failure(e));
                    }
                }
            }
        };
        if self.stopping.load(Ordering::SeqCst) {
            release(&name);
            session.close().await;
            return Err((ErrorCode::ShuttingDown, "the host is shutting down".into()));
        }
        // Kernel names are the ids (unique); the host keeps the chosen names.
        if let Err(e) = self.kernel.adopt(session.clone()) {
            release(&name);
            session.close().await;
            return Err(failure(e));
        }
        let id = session.id().to_string();
        let (stop_tx, stop_rx) = oneshot::channel();
        let relay = spawn_relay(
            self.events.clone(),
            id.clone(),
            session.subscribe(),
            stop_rx,
        );
        let entry = Arc::new(Entry {
            session,
            name: name.clone().unwrap_or_else(|| id.clone()),
            timeout,
            output_cap: c.output_cap,
            stop_relay: Mutex::new(Some(stop_tx)),
            relay: Mutex::new(Some(relay)),
            attachment: tokio::sync::Mutex::new(None),
        });
        self.entries.insert(id.clone(), entry.clone());
        if let Some(n) = &name {
            self.names.insert(n.clone(), id);
        }
        tracing::info!(session = %entry.session.id(), name = %entry.name,
            language = entry.session.language().name(), warm, "session created");
        Ok(ReplyBody::Session {
            session: entry.info(),
            warm,
        })
    }

    fn reserve_name(&self, name: Option<&str>) -> Result<Option<String>, Failure> {
        let Some(name) = name else { return Ok(None) };
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return Err((
                ErrorCode::BadRequest,
                format!("a session name must be 1 to {MAX_NAME_BYTES} bytes"),
            ));
        }
        let taken = || {
            (
                ErrorCode::NameTaken,
                format!("a session named {name:?} already exists"),
            )
        };
        if self.entries.contains_key(name) {
            return Err(taken());
        }
        if self.chats.contains(name) {
            return Err((
                ErrorCode::NameTaken,
                format!("{name:?} is the id of a conversation"),
            ));
        }
        match self.names.entry(name.to_string()) {
            dashmap::mapref::entry::Entry::Occupied(_) => Err(taken()),
            dashmap::mapref::entry::Entry::Vacant(v) => {
                // Held with an empty id until the session exists.
                v.insert(String::new());
                Ok(Some(name.to_string()))
            }
        }
    }

    fn execute(&self, id: &str, ex: Execute) -> Result<(String, Execution, bool), Failure> {
        let e = self.resolve(&ex.session)?;
        let opts = ExecOptions {
            id: Some(id.to_string()),
            timeout: seconds(ex.timeout, "timeout")?.or(e.timeout),
            output_cap: ex.output_cap.or(e.output_cap),
            image_max_dim: ex.image_max_dim,
            silent: ex.silent,
            store_history: ex.store_history,
            allow_stdin: ex.allow_stdin,
            active_lines: ex.active_lines,
            user_expressions: ex.user_expressions,
            ..ExecOptions::default()
        };
        let exec = e.session.execute(&ex.code, opts).map_err(failure)?;
        Ok((e.session.id().to_string(), exec, ex.text_frames))
    }

    /// Close one session: out of the maps first (so nothing new reaches it), then its process
    /// tree is killed, then its watchers are told.
    async fn close(&self, e: &Arc<Entry>, reason: &str) {
        let id = e.session.id().to_string();
        if self.entries.remove(&id).is_none() {
            return; // someone else is closing it
        }
        self.names.remove_if(&e.name, |_, v| *v == id);
        {
            let mut closed = self.closed.lock().expect("closed");
            closed.remember(id.clone());
            closed.remember(e.name.clone());
        }
        if let Some(a) = e.attachment.lock().await.take() {
            a.end().await;
        }
        if self.kernel.close_session(&id).await.is_err() {
            e.session.close().await;
        }
        if let Some(relay) = e.end_relay(reason) {
            let _ = tokio::time::timeout(Duration::from_secs(2), relay).await;
        }
        tracing::info!(session = %id, "session closed");
    }

    /// Serve the session as a Jupyter kernel too; the same attachment for every caller until
    /// a Jupyter client shuts it down.
    async fn attach(&self, e: &Arc<Entry>) -> Result<ReplyBody, Failure> {
        let mut slot = e.attachment.lock().await;
        if let Some(a) = slot.as_ref().filter(|a| !a.task.is_finished()) {
            return Ok(ReplyBody::Attach {
                connection_file: a.path.clone(),
                connection: a.connection.clone(),
            });
        }
        if self.stopping.load(Ordering::SeqCst) {
            return Err((ErrorCode::ShuttingDown, "the host is shutting down".into()));
        }
        let mut attached =
            crate::jupyter::attach(e.session.clone(), &self.config.ip, &self.config.attach_dir)
                .await
                .map_err(|err| (ErrorCode::Failed, format!("cannot attach: {err:#}")))?;
        let path = attached.connection_file().display().to_string();
        let connection = match serde_json::to_value(attached.connection_info()) {
            Ok(Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        let (cancel, cancelled) = oneshot::channel::<()>();
        let session = e.session.id().to_string();
        let task = tokio::spawn(async move {
            tokio::select! {
                why = attached.stopped() => {
                    tracing::info!(%session, ?why, "Jupyter attachment ended by its client");
                }
                _ = cancelled => {}
            }
            attached.stop().await;
        });
        tracing::info!(session = %e.session.id(), file = %path, "Jupyter attachment");
        *slot = Some(Attachment {
            path: path.clone(),
            connection: connection.clone(),
            cancel: Some(cancel),
            task,
        });
        Ok(ReplyBody::Attach {
            connection_file: path,
            connection,
        })
    }

    /// Stop for good: refuse new requests, close the pool and every session (killing their
    /// process trees), tell watchers.
    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Chats stop first; their sessions are closed with the others below.
        self.chats.shutdown();
        self.pool.shutdown().await;
        let entries: Vec<Arc<Entry>> = self.entries.iter().map(|e| e.value().clone()).collect();
        self.entries.clear();
        self.names.clear();
        for e in &entries {
            if let Some(a) = e.attachment.lock().await.take() {
                a.end().await;
            }
        }
        self.kernel.shutdown().await;
        // Sessions adopted by nobody (a create racing the shutdown) are closed by their task.
        let relays: Vec<JoinHandle<()>> = entries
            .iter()
            .filter_map(|e| e.end_relay("the host is shutting down"))
            .collect();
        let _ =
            tokio::time::timeout(Duration::from_secs(2), futures::future::join_all(relays)).await;
    }
}

/// Stream an execution's chunks to the client that asked. Chunks keep flowing to subscribers
/// whatever this client does: if it stops reading, the chunks it could not take are counted
/// and reported in a `missed` reply; if it disconnects, the execution still runs to its end.
async fn stream(
    client: Arc<Client>,
    id: String,
    session: String,
    mut exec: Execution,
    text_frames: bool,
) {
    let mut missed: u64 = 0;
    // Set when the client's budget stayed full for its whole patience; cleared once it has
    // caught up, so a stuck client costs one wait, not one per chunk.
    let mut stalled = false;
    let mut gone = false;
    while let Some(chunk) = exec.next_shared().await {
        if gone {
            continue;
        }
        if stalled && client.recovered() {
            stalled = false;
        }
        // The last chunk tells the client the execution is over (and the note before it how
        // much it missed): worth waiting long for, as long as the client is connected.
        let wait = if chunk.is_finished() {
            Wait::Upto(FINAL_PATIENCE.max(client.patience))
        } else if stalled {
            Wait::No
        } else {
            Wait::Upto(client.patience)
        };
        if missed > 0 {
            let note = Reply {
                id: Some(id.clone()),
                body: ReplyBody::Missed {
                    session: session.clone(),
                    count: missed,
                },
            };
            match client.send(&note, wait).await {
                Sent::Yes => missed = 0,
                Sent::Stalled => {
                    missed += 1;
                    continue;
                }
                Sent::Gone => {
                    gone = true;
                    continue;
                }
            }
        }
        match client.send_chunk(&id, &chunk, text_frames, wait).await {
            Sent::Yes => {}
            Sent::Stalled => {
                if !stalled {
                    tracing::debug!(client = %client.tag(), "client stalled; dropping its chunks");
                }
                stalled = true;
                missed += 1;
            }
            Sent::Gone => {
                tracing::debug!(client = %client.tag(), "client gone; its execution runs on");
                gone = true;
            }
        }
    }
}

async fn query(e: &Entry, q: Query) -> Result<Value, Failure> {
    e.session.query(q).await.map_err(failure)
}

/// Reply content from the language, in the shape the protocol promises.
fn typed<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, Failure> {
    serde_json::from_value(v).map_err(|e| {
        (
            ErrorCode::Failed,
            format!("the language gave a malformed reply: {e}"),
        )
    })
}

fn cursor(code: &str, pos: Option<usize>) -> Result<usize, Failure> {
    let len = code.chars().count();
    match pos {
        None => Ok(len),
        Some(p) if p <= len => Ok(p),
        Some(p) => Err((
            ErrorCode::BadRequest,
            format!("cursor_pos {p} is past the end of the code ({len} code points)"),
        )),
    }
}

fn seconds(v: Option<f64>, what: &str) -> Result<Option<Duration>, Failure> {
    match v {
        None => Ok(None),
        Some(s) => Duration::try_from_secs_f64(s)
            .ok()
            .filter(|d| !d.is_zero())
            .map(Some)
            .ok_or_else(|| {
                (
                    ErrorCode::BadRequest,
                    format!("{what} must be a positive number of seconds, not {s}"),
                )
            }),
    }
}

/// A kernel error as an error reply.
fn failure(e: KernelError) -> Failure {
    let code = match &e {
        KernelError::UnknownSession(_) => ErrorCode::UnknownSession,
        KernelError::Closed(_) => ErrorCode::SessionClosed,
        KernelError::NoPendingInput(_) => ErrorCode::NoPendingInput,
        KernelError::NameTaken(_) => ErrorCode::NameTaken,
        KernelError::StartFailed { .. } => ErrorCode::StartFailed,
        KernelError::Language(LanguageError::InterpreterNotFound { .. }) => ErrorCode::StartFailed,
        KernelError::Language(LanguageError::Unsupported(_)) => ErrorCode::Unsupported,
        KernelError::EmptyCode | KernelError::NulInCode(_) => ErrorCode::BadRequest,
        _ => ErrorCode::Failed,
    };
    (code, e.to_string())
}
