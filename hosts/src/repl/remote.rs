//! The REPL's client for a running `spindle serve` (`--connect CONNECTION_FILE`): the native
//! API's signed `[signature, json]` messages over a DEALER socket. Every request has a time
//! limit and the REPL pings while code runs, so a server that goes away is reported instead of
//! hanging; `reconnect` reads the connection file again (a restarted server has new ports and a
//! new key) and checks which of our sessions survived.
//!
//! Sessions the REPL creates are named `repl-<pid>-<lang>` and closed when it exits; sessions
//! attached with `--session` are left running, and redrawn when attached: what the server's
//! log still keeps of their output (a `replay` request) is printed before the first prompt.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use spindle_kernel::{ExecOptions, Query};
use spindle_protocol::native::{
    ConnectionInfo, CreateSession, ErrorCode, Execute, Reply, ReplyBody, Request, RequestBody,
};
use spindle_protocol::{Body, Chunk, SessionInfo};
use tokio::sync::mpsc;
use zeromq::{
    DealerRecvHalf, DealerSendHalf, DealerSocket, Socket, SocketRecv, SocketSend, ZmqMessage,
};

use super::backend::{Backend, BackendError, ChunkStream};
use crate::auth::Signer;

/// Time limit of quick requests (interrupt, stdin, info, …).
pub(crate) const QUICK: Duration = Duration::from_secs(5);
/// Time limit of creating or restarting a session.
pub(crate) const SLOW: Duration = Duration::from_secs(40);
/// Time limit of connecting.
const CONNECT: Duration = Duration::from_secs(3);

pub(crate) type Pending = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<ReplyBody>>>>;

/// One connection to the server.
pub(crate) struct Conn {
    signer: Signer,
    tx: tokio::sync::Mutex<DealerSendHalf>,
    pub(crate) pending: Pending,
    pub(crate) alive: Arc<AtomicBool>,
    reader: tokio::task::JoinHandle<()>,
    next: AtomicU64,
    pub(crate) endpoint: String,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn read_info(path: &Path) -> Result<ConnectionInfo, BackendError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        BackendError::Disconnected(format!(
            "cannot read the connection file {} ({e}); is spindle serve still running?",
            path.display()
        ))
    })?;
    serde_json::from_str(&text).map_err(|e| {
        BackendError::Disconnected(format!(
            "{} is not a spindle serve connection file: {e}",
            path.display()
        ))
    })
}

impl Conn {
    pub(crate) async fn open(path: &Path) -> Result<Arc<Conn>, BackendError> {
        let info = read_info(path)?;
        if info.transport != "tcp" {
            return Err(BackendError::Disconnected(format!(
                "transport {:?} is not supported (only tcp)",
                info.transport
            )));
        }
        let host = if info.ip.contains(':') {
            format!("[{}]", info.ip)
        } else {
            info.ip.clone()
        };
        let endpoint = format!("tcp://{host}:{}", info.router_port);
        let mut socket = DealerSocket::new();
        match tokio::time::timeout(CONNECT, socket.connect(&endpoint)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(BackendError::Disconnected(format!(
                    "cannot connect to {endpoint}: {e}"
                )))
            }
            Err(_) => {
                return Err(BackendError::Disconnected(format!(
                    "no server answers at {endpoint} (is `spindle serve` running?)"
                )))
            }
        }
        let (tx, rx) = socket.split();
        let signer = Signer::new(info.key.as_bytes());
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let alive = Arc::new(AtomicBool::new(true));
        let reader = tokio::spawn(read_loop(
            rx,
            signer.clone(),
            pending.clone(),
            alive.clone(),
        ));
        let conn = Arc::new(Conn {
            signer,
            tx: tokio::sync::Mutex::new(tx),
            pending,
            alive,
            reader,
            next: AtomicU64::new(1),
            endpoint,
        });
        // A first round trip proves the key is right and the server is really there.
        conn.call(RequestBody::ListSessions, QUICK).await?;
        Ok(conn)
    }

    fn dead(&self, why: String) -> BackendError {
        self.alive.store(false, Ordering::Release);
        BackendError::Disconnected(why)
    }

    /// Send a request; its replies arrive on the returned channel.
    pub(crate) async fn send(
        &self,
        body: RequestBody,
    ) -> Result<(String, mpsc::UnboundedReceiver<ReplyBody>), BackendError> {
        if !self.alive.load(Ordering::Acquire) {
            return Err(BackendError::Disconnected("the connection was lost".into()));
        }
        let id = format!("repl-{}", self.next.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::unbounded_channel();
        self.pending.lock().expect("pending").insert(id.clone(), tx);
        let req = Request {
            id: id.clone(),
            body,
        };
        let json = serde_json::to_vec(&req).map_err(|e| BackendError::Remote(e.to_string()))?;
        let sig = self.signer.sign(&[&json]);
        let msg = ZmqMessage::try_from(vec![Bytes::from(sig), Bytes::from(json)])
            .map_err(|e| BackendError::Remote(e.to_string()))?;
        let sent =
            tokio::time::timeout(QUICK, async { self.tx.lock().await.send(msg).await }).await;
        let err = match sent {
            Ok(Ok(())) => return Ok((id, rx)),
            Ok(Err(e)) => format!("cannot send to {}: {e}", self.endpoint),
            Err(_) => format!(
                "{} did not take the request within {} s",
                self.endpoint,
                QUICK.as_secs()
            ),
        };
        self.pending.lock().expect("pending").remove(&id);
        Err(self.dead(err))
    }

    /// One request, one reply, within `limit`.
    pub(crate) async fn call(
        &self,
        body: RequestBody,
        limit: Duration,
    ) -> Result<ReplyBody, BackendError> {
        let (id, mut rx) = self.send(body).await?;
        let r = tokio::time::timeout(limit, rx.recv()).await;
        self.pending.lock().expect("pending").remove(&id);
        match r {
            Ok(Some(ReplyBody::Error { code, reason })) => Err(remote_error(code, reason)),
            Ok(Some(body)) => Ok(body),
            Ok(None) => Err(self.dead("the connection closed".into())),
            Err(_) => Err(self.dead(format!(
                "the server did not answer within {} s",
                limit.as_secs()
            ))),
        }
    }
}

pub(crate) fn remote_error(code: ErrorCode, reason: String) -> BackendError {
    match code {
        ErrorCode::ShuttingDown => BackendError::Disconnected(reason),
        _ => BackendError::Remote(reason),
    }
}

/// One reply from its frames: `[signature, json]`, or `[signature, json, text]` for a console
/// chunk whose text travels raw (we ask for `text_frames`). None, logged, for anything else.
fn decode(frames: Vec<Bytes>, signer: &Signer) -> Option<Reply> {
    let (sig, json, text) = match &frames[..] {
        [sig, json] => (sig, json, None),
        [sig, json, text] => (sig, json, Some(text)),
        _ => {
            tracing::warn!(
                frames = frames.len(),
                "dropped a reply with the wrong number of frames"
            );
            return None;
        }
    };
    let parts: &[&[u8]] = match text {
        None => &[json],
        Some(text) => &[json, text],
    };
    if !signer.verify(sig, parts) {
        tracing::warn!("dropped a reply that is not signed with the connection file's key");
        return None;
    }
    let mut reply: Reply = match serde_json::from_slice(json) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "dropped a reply that is not valid");
            return None;
        }
    };
    if let Some(text) = text {
        let slot = match &mut reply.body {
            ReplyBody::Chunk {
                chunk:
                    Chunk {
                        body:
                            Body::Console {
                                content: Some(slot),
                                ..
                            },
                        ..
                    },
            } => slot,
            _ => {
                tracing::warn!("dropped a text frame that came with no console chunk");
                return None;
            }
        };
        match String::from_utf8(text.to_vec()) {
            Ok(t) => *slot = t,
            Err(_) => {
                tracing::warn!("dropped a console chunk whose text frame is not UTF-8");
                return None;
            }
        }
    }
    Some(reply)
}

async fn read_loop(
    mut rx: DealerRecvHalf,
    signer: Signer,
    pending: Pending,
    alive: Arc<AtomicBool>,
) {
    loop {
        let msg = match rx.recv().await {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "connection to the server ended");
                break;
            }
        };
        let Some(reply) = decode(msg.into_vec(), &signer) else {
            continue;
        };
        let Some(id) = reply.id else {
            if let ReplyBody::Error { reason, .. } = &reply.body {
                tracing::warn!(reason, "the server rejected a request");
            }
            continue;
        };
        let mut map = pending.lock().expect("pending");
        if let Some(tx) = map.get(&id) {
            if tx.send(reply.body).is_err() {
                map.remove(&id);
            }
        }
    }
    alive.store(false, Ordering::Release);
    // Dropping the senders ends every stream waiting on a reply.
    pending.lock().expect("pending").clear();
}

#[derive(Debug, Clone)]
struct Remote1 {
    id: String,
    /// Created by this REPL (closed on exit), rather than attached.
    ours: bool,
}

/// Sessions on a `spindle serve`.
pub struct Remote {
    path: PathBuf,
    conn: Mutex<Option<Arc<Conn>>>,
    sessions: Mutex<HashMap<&'static str, Remote1>>,
    creating: tokio::sync::Mutex<()>,
    notices: Mutex<Vec<String>>,
}

impl Remote {
    /// Connect, and attach the sessions named in `attach` (ids or names) for their languages.
    pub async fn connect(path: &Path, attach: &[String]) -> anyhow::Result<Self> {
        let conn = Conn::open(path).await?;
        let remote = Self {
            path: path.to_path_buf(),
            conn: Mutex::new(Some(conn.clone())),
            sessions: Mutex::new(HashMap::new()),
            creating: tokio::sync::Mutex::new(()),
            notices: Mutex::new(Vec::new()),
        };
        for key in attach {
            let body = conn
                .call(
                    RequestBody::SessionInfo {
                        session: key.clone(),
                    },
                    QUICK,
                )
                .await
                .map_err(|e| anyhow::anyhow!("--session {key}: {e}"))?;
            let ReplyBody::Session { session, .. } = body else {
                anyhow::bail!("--session {key}: unexpected reply");
            };
            let Some(lang) = crate::magics::canonical_language(&session.language) else {
                anyhow::bail!("--session {key}: unknown language {}", session.language);
            };
            let text = redraw(&conn, &session.id)
                .await
                .map_err(|e| anyhow::anyhow!("--session {key}: {e}"))?;
            if !text.is_empty() {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
            }
            remote.sessions.lock().expect("sessions").insert(
                lang,
                Remote1 {
                    id: session.id,
                    ours: false,
                },
            );
        }
        Ok(remote)
    }

    /// The live connection. After a loss this fails fast until [`Backend::reconnect`]
    /// succeeds (the REPL offers it), so nothing waits on a dead server.
    async fn conn(&self) -> Result<Arc<Conn>, BackendError> {
        let current = self.conn.lock().expect("conn").clone();
        match current {
            Some(c) if c.alive.load(Ordering::Acquire) => Ok(c),
            Some(c) => Err(BackendError::Disconnected(format!(
                "spindle serve at {} is not answering",
                c.endpoint
            ))),
            None => Err(BackendError::Disconnected("not connected".into())),
        }
    }

    async fn reconnect_now(&self) -> Result<(), BackendError> {
        let conn = Conn::open(&self.path).await?;
        *self.conn.lock().expect("conn") = Some(conn.clone());
        // Which of our sessions did the server keep?
        let known = self.sessions.lock().expect("sessions").clone();
        for (lang, s) in known {
            let r = conn
                .call(
                    RequestBody::SessionInfo {
                        session: s.id.clone(),
                    },
                    QUICK,
                )
                .await;
            if let Err(BackendError::Remote(_)) = r {
                self.sessions.lock().expect("sessions").remove(lang);
                self.notices.lock().expect("notices").push(format!(
                    "the server no longer has the {lang} session; a fresh one starts on first use"
                ));
            }
        }
        Ok(())
    }

    fn id_of(&self, lang: &str) -> Option<String> {
        self.sessions
            .lock()
            .expect("sessions")
            .get(lang)
            .map(|s| s.id.clone())
    }

    async fn session(&self, lang: &'static str) -> Result<(Arc<Conn>, String), BackendError> {
        let conn = self.conn().await?;
        if let Some(id) = self.id_of(lang) {
            return Ok((conn, id));
        }
        let _guard = self.creating.lock().await;
        if let Some(id) = self.id_of(lang) {
            return Ok((conn, id));
        }
        let cwd = std::env::current_dir()
            .ok()
            .map(|p| p.display().to_string());
        let mut create = CreateSession {
            language: lang.to_string(),
            name: Some(format!("repl-{}-{lang}", std::process::id())),
            cwd,
            env: Default::default(),
            timeout: None,
            output_cap: None,
            sandbox: None,
        };
        let mut reply = conn
            .call(RequestBody::CreateSession(create.clone()), SLOW)
            .await;
        if let Err(BackendError::Remote(reason)) = &reply {
            if reason.contains("already") {
                create.name = None;
                reply = conn.call(RequestBody::CreateSession(create), SLOW).await;
            }
        }
        let ReplyBody::Session { session, .. } = reply? else {
            return Err(BackendError::Remote(
                "unexpected reply to create_session".into(),
            ));
        };
        self.sessions.lock().expect("sessions").insert(
            lang,
            Remote1 {
                id: session.id.clone(),
                ours: true,
            },
        );
        Ok((conn, session.id))
    }

    /// A request about an existing session; nothing to do when it was never started.
    async fn about(
        &self,
        lang: &'static str,
        make: impl FnOnce(String) -> RequestBody,
    ) -> Result<(), BackendError> {
        let Some(id) = self.id_of(lang) else {
            return Ok(());
        };
        let conn = self.conn().await?;
        conn.call(make(id), QUICK).await.map(|_| ())
    }
}

/// The replies to an execute request `id` as a chunk stream, through its finished chunk; a
/// channel that closes before it means the connection went away.
pub(crate) fn execution_stream(
    conn: Arc<Conn>,
    id: String,
    rx: mpsc::UnboundedReceiver<ReplyBody>,
) -> ChunkStream {
    let pending = conn.pending.clone();
    let stream = futures::stream::unfold(
        (rx, false, id, pending),
        |(mut rx, done, id, pending)| async move {
            if done {
                pending.lock().expect("pending").remove(&id);
                return None;
            }
            let item = match rx.recv().await {
                Some(ReplyBody::Chunk { chunk }) => {
                    let fin = chunk.is_finished();
                    return Some((Ok(chunk), (rx, fin, id, pending)));
                }
                Some(ReplyBody::Missed { count, .. }) => Ok(synthetic_notice(
                    &id,
                    format!("{count} chunks of this execution were dropped on the way (read too slowly)"),
                )),
                Some(ReplyBody::Error { code, reason }) => {
                    return Some((Err(remote_error(code, reason)), (rx, true, id, pending)))
                }
                Some(_) => Ok(synthetic_notice(&id, "unexpected reply".into())),
                None => {
                    return Some((
                        Err(BackendError::Disconnected(
                            "the connection to spindle serve closed while code was running".into(),
                        )),
                        (rx, true, id, pending),
                    ))
                }
            };
            Some((item, (rx, false, id, pending)))
        },
    );
    Box::pin(stream.fuse())
}

/// What the server's log keeps of a session's output, as terminal text: console text as it
/// was written, the plain text of rich output, errors and notices, between two rule lines.
/// Empty when the log holds no output.
async fn redraw(conn: &Conn, session: &str) -> Result<String, BackendError> {
    let (id, mut rx) = conn
        .send(RequestBody::Replay {
            session: session.to_string(),
            from_seq: 0,
            follow: false,
            text_frames: true,
        })
        .await?;
    let mut text = String::new();
    let mut missed = 0u64;
    let mut chunks = 0u64;
    let result = loop {
        let reply = match tokio::time::timeout(SLOW, rx.recv()).await {
            Ok(Some(r)) => r,
            Ok(None) => break Err(conn.dead("the connection closed".into())),
            Err(_) => break Err(conn.dead("the server did not finish the replay".into())),
        };
        match reply {
            ReplyBody::Chunk { chunk } => {
                chunks += 1;
                redraw_chunk(&mut text, &chunk);
            }
            ReplyBody::Missed { count, .. } => missed += count,
            ReplyBody::Replayed { .. } => break Ok(()),
            ReplyBody::Error { code, reason } => break Err(remote_error(code, reason)),
            _ => {}
        }
    };
    conn.pending.lock().expect("pending").remove(&id);
    result?;
    if text.is_empty() {
        return Ok(String::new());
    }
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let head = if missed > 0 {
        format!("── redrawn from the server's log ({chunks} chunks; {missed} older ones are no longer kept) ──\n")
    } else {
        format!("── redrawn from the server's log ({chunks} chunks) ──\n")
    };
    Ok(format!("{head}{text}── end of the redraw ──\n"))
}

fn redraw_chunk(out: &mut String, chunk: &Chunk) {
    use spindle_protocol::ConsoleFormat;
    match &chunk.body {
        Body::Console {
            format: ConsoleFormat::Stdout | ConsoleFormat::Stderr,
            content: Some(t),
            ..
        } => out.push_str(t),
        Body::Error { content: Some(e) } => {
            out.push_str(&format!("{}: {}\n", e.name, e.value));
        }
        Body::Notice { content: Some(t) } => out.push_str(&format!("[{t}]\n")),
        other => {
            if let Some(plain) = serde_json::to_value(other).ok().and_then(|v| {
                v["content"]["bundle"]["text/plain"]
                    .as_str()
                    .map(str::to_string)
            }) {
                out.push_str(&plain);
                out.push('\n');
            }
        }
    }
}

fn synthetic_notice(id: &str, text: String) -> Chunk {
    Chunk {
        session: String::new(),
        request: id.to_string(),
        seq: 0,
        start: false,
        end: false,
        body: Body::Notice {
            content: Some(text),
        },
    }
}

impl Backend for Remote {
    fn describe(&self) -> String {
        let endpoint = self
            .conn
            .lock()
            .expect("conn")
            .as_ref()
            .map(|c| c.endpoint.clone())
            .unwrap_or_default();
        format!("connected to spindle serve at {endpoint}")
    }

    async fn ensure(&self, lang: &'static str) -> Result<(), BackendError> {
        self.session(lang).await.map(|_| ())
    }

    async fn execute(
        &self,
        lang: &'static str,
        code: String,
        opts: ExecOptions,
    ) -> Result<ChunkStream, BackendError> {
        let (conn, session) = self.session(lang).await?;
        let req = Execute {
            session,
            code,
            timeout: opts.timeout.map(|d| d.as_secs_f64()),
            output_cap: opts.output_cap,
            image_max_dim: opts.image_max_dim,
            silent: opts.silent,
            store_history: opts.store_history,
            allow_stdin: opts.allow_stdin,
            active_lines: opts.active_lines,
            user_expressions: opts.user_expressions,
            text_frames: true,
        };
        let (id, rx) = conn.send(RequestBody::Execute(req)).await?;
        Ok(execution_stream(conn, id, rx))
    }

    async fn interrupt(&self, lang: &'static str) -> Result<(), BackendError> {
        self.about(lang, |session| RequestBody::Interrupt { session })
            .await
    }

    async fn write_stdin(&self, lang: &'static str, bytes: Vec<u8>) -> Result<(), BackendError> {
        let data = String::from_utf8_lossy(&bytes).into_owned();
        self.about(lang, |session| RequestBody::Stdin { session, data })
            .await
    }

    async fn input_reply(&self, lang: &'static str, value: String) -> Result<(), BackendError> {
        self.about(lang, |session| RequestBody::InputReply { session, value })
            .await
    }

    async fn query(&self, lang: &'static str, query: Query) -> Result<Value, BackendError> {
        let (conn, session) = self.session(lang).await?;
        let body = match query {
            Query::Complete { code, cursor_pos } => RequestBody::Complete {
                session,
                code,
                cursor_pos: Some(cursor_pos),
            },
            Query::Inspect {
                code,
                cursor_pos,
                detail_level,
            } => RequestBody::Inspect {
                session,
                code,
                cursor_pos: Some(cursor_pos),
                detail_level,
            },
            Query::IsComplete { code } => RequestBody::IsComplete { session, code },
            // The native API has no comms: none are open.
            Query::CommInfo { .. } => return Ok(serde_json::json!({"comms": {}})),
        };
        let reply = conn.call(body, QUICK).await?;
        let v = match reply {
            ReplyBody::Complete(c) => serde_json::to_value(c),
            ReplyBody::Inspect(i) => serde_json::to_value(i),
            ReplyBody::IsComplete(i) => serde_json::to_value(i),
            _ => return Err(BackendError::Remote("unexpected reply to a query".into())),
        };
        v.map_err(|e| BackendError::Remote(e.to_string()))
    }

    async fn restart(&self, lang: &'static str) -> Result<bool, BackendError> {
        let Some(id) = self.id_of(lang) else {
            return Ok(false);
        };
        let conn = self.conn().await?;
        conn.call(RequestBody::Restart { session: id }, SLOW)
            .await?;
        Ok(true)
    }

    async fn sessions(&self) -> Result<Vec<(&'static str, SessionInfo)>, BackendError> {
        let conn = self.conn().await?;
        let ReplyBody::Sessions { sessions } = conn.call(RequestBody::ListSessions, QUICK).await?
        else {
            return Err(BackendError::Remote(
                "unexpected reply to list_sessions".into(),
            ));
        };
        let ours = self.sessions.lock().expect("sessions").clone();
        let mut v: Vec<(&'static str, SessionInfo)> = sessions
            .into_iter()
            .filter_map(|info| {
                ours.iter()
                    .find(|(_, s)| s.id == info.id)
                    .map(|(l, _)| (*l, info))
            })
            .collect();
        v.sort_by_key(|(l, _)| *l);
        Ok(v)
    }

    fn is_live(&self, lang: &'static str) -> bool {
        self.id_of(lang).is_some()
    }

    fn available(&self) -> bool {
        self.conn
            .lock()
            .expect("conn")
            .as_ref()
            .is_some_and(|c| c.alive.load(Ordering::Acquire))
    }

    async fn shutdown(&self) {
        let ours: Vec<String> = self
            .sessions
            .lock()
            .expect("sessions")
            .drain()
            .filter(|(_, s)| s.ours)
            .map(|(_, s)| s.id)
            .collect();
        let conn = self.conn.lock().expect("conn").clone();
        if let Some(conn) = conn.filter(|c| c.alive.load(Ordering::Acquire)) {
            let closes = ours
                .into_iter()
                .map(|session| conn.call(RequestBody::Close { session }, QUICK));
            futures::future::join_all(closes).await;
        }
    }

    async fn ping(&self) -> Result<(), BackendError> {
        let conn = self
            .conn
            .lock()
            .expect("conn")
            .clone()
            .ok_or_else(|| BackendError::Disconnected("not connected".into()))?;
        match conn.call(RequestBody::ListSessions, QUICK).await {
            Err(e) if e.is_disconnect() => Err(e),
            _ => Ok(()),
        }
    }

    async fn reconnect(&self) -> Result<(), BackendError> {
        self.reconnect_now().await
    }

    fn take_notices(&self) -> Vec<String> {
        std::mem::take(&mut *self.notices.lock().expect("notices"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spindle_protocol::ConsoleFormat;

    fn console_reply(text: &str) -> Reply {
        Reply {
            id: Some("r1".into()),
            body: ReplyBody::Chunk {
                chunk: Chunk::new(
                    "s",
                    "r1",
                    2,
                    Body::Console {
                        format: ConsoleFormat::Stdout,
                        content: Some(text.into()),
                        line: None,
                    },
                ),
            },
        }
    }

    fn framed(signer: &Signer, json: &[u8], text: &[u8]) -> Vec<Bytes> {
        let sig = signer.sign(&[json, text]);
        vec![
            Bytes::from(sig),
            Bytes::copy_from_slice(json),
            Bytes::copy_from_slice(text),
        ]
    }

    /// A console chunk whose text came in a third frame is the chunk the host had; a text
    /// frame that was changed, is not UTF-8, or comes with another reply is dropped.
    #[test]
    fn text_frames_are_put_back_and_checked() {
        let signer = Signer::new(b"key");
        let stub = serde_json::to_vec(&console_reply("")).unwrap();
        let text = "a \"quoted\" line é\n".as_bytes();
        let got = decode(framed(&signer, &stub, text), &signer).expect("decoded");
        assert_eq!(got, console_reply("a \"quoted\" line é\n"));

        let mut tampered = framed(&signer, &stub, text);
        tampered[2] = Bytes::from_static(b"another text\n");
        assert!(decode(tampered, &signer).is_none());
        assert!(decode(framed(&signer, &stub, b"\xff\xfe"), &signer).is_none());
        let ok = serde_json::to_vec(&Reply {
            id: Some("r1".into()),
            body: ReplyBody::Ok,
        })
        .unwrap();
        assert!(decode(framed(&signer, &ok, text), &signer).is_none());
        // Two frames: the JSON alone, as always.
        let plain = serde_json::to_vec(&console_reply("x")).unwrap();
        let two = vec![Bytes::from(signer.sign(&[&plain])), Bytes::from(plain)];
        assert_eq!(decode(two, &signer), Some(console_reply("x")));
        assert!(decode(vec![Bytes::new()], &signer).is_none());
    }
}
