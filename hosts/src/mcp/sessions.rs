//! Where the MCP server's sessions live: an embedded [`Kernel`] (the default) or a running
//! `spindle serve` reached through the native API (`--connect FILE`). Both give the tools the
//! same semantics: named sessions, looked up by id or name, created on first use.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use serde_json::json;
use spindle_kernel::{ExecOptions, Kernel, KernelConfig, KernelError, Session, SessionSpec};
use spindle_languages::Interpreters;
use spindle_protocol::native::{ErrorCode, Execute, ReplyBody, RequestBody};
use spindle_protocol::SessionInfo;

use crate::repl::backend::{BackendError, ChunkStream};
use crate::repl::remote::{execution_stream, remote_error, Conn, QUICK, SLOW};

/// Why a session operation failed: the caller's mistake (a JSON-RPC "invalid params"), or
/// Spindle's (an internal error).
#[derive(Debug)]
pub(crate) enum Failure {
    Invalid(String),
    Internal(String),
}

impl From<KernelError> for Failure {
    fn from(e: KernelError) -> Self {
        match e {
            KernelError::StartFailed { .. } | KernelError::Io(_) | KernelError::Protocol(_) => {
                Failure::Internal(e.to_string())
            }
            KernelError::Died { .. } => Failure::Internal(e.to_string()),
            other => Failure::Invalid(other.to_string()),
        }
    }
}

impl From<BackendError> for Failure {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Kernel(k) => k.into(),
            BackendError::Remote(m) => Failure::Invalid(m),
            BackendError::Disconnected(m) => Failure::Internal(m),
        }
    }
}

/// What `send_input` did.
pub(crate) enum InputDelivery {
    /// Answered a pending input request (`input()`, `getpass()`, `read -p` in node…).
    Reply,
    /// Wrote the bytes to the session's terminal.
    Stdin(usize),
}

/// A new session's options.
#[derive(Debug, Clone, Default)]
pub(crate) struct NewSession {
    pub language: &'static str,
    pub name: Option<String>,
    pub cwd: Option<String>,
    pub env: BTreeMap<String, String>,
}

/// The largest image side sent as is; larger images also get a downscaled copy, which is
/// what the client is sent.
pub(crate) const IMAGE_MAX_DIM: u32 = 4096;

pub(crate) enum Sessions {
    Embedded(Embedded),
    Remote(Remote),
}

pub(crate) struct Embedded {
    kernel: Kernel,
    interpreters: Interpreters,
}

pub(crate) struct Remote {
    conn: Arc<Conn>,
    path: PathBuf,
    /// Sessions this server created (closed when it exits).
    ours: Mutex<HashSet<String>>,
}

impl Sessions {
    pub(crate) fn embedded(
        interpreters: Interpreters,
        launcher: Arc<dyn spindle_kernel::Launcher>,
    ) -> Self {
        Sessions::Embedded(Embedded {
            kernel: Kernel::new(KernelConfig {
                launcher,
                ..KernelConfig::default()
            }),
            interpreters,
        })
    }

    pub(crate) async fn connect(path: &Path) -> anyhow::Result<Self> {
        let conn = Conn::open(path)
            .await
            .map_err(|e| anyhow::anyhow!("--connect {}: {e}", path.display()))?;
        Ok(Sessions::Remote(Remote {
            conn,
            path: path.to_path_buf(),
            ours: Mutex::new(HashSet::new()),
        }))
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Sessions::Embedded(_) => "an embedded kernel".into(),
            Sessions::Remote(r) => format!(
                "spindle serve at {} ({})",
                r.conn.endpoint,
                r.path.display()
            ),
        }
    }

    pub(crate) fn is_embedded(&self) -> bool {
        matches!(self, Sessions::Embedded(_))
    }

    /// The session with this id or name, if it exists.
    pub(crate) async fn find(&self, key: &str) -> Result<Option<SessionInfo>, Failure> {
        match self {
            Sessions::Embedded(e) => match e.kernel.get(key) {
                Ok(s) => Ok(Some(s.info())),
                Err(KernelError::UnknownSession(_)) => Ok(None),
                Err(e) => Err(e.into()),
            },
            Sessions::Remote(r) => {
                match r
                    .call_raw(RequestBody::SessionInfo {
                        session: key.to_string(),
                    })
                    .await?
                {
                    Ok(ReplyBody::Session { session, .. }) => Ok(Some(session)),
                    Ok(_) => Err(Failure::Internal("unexpected reply to session_info".into())),
                    Err((ErrorCode::UnknownSession | ErrorCode::SessionClosed, _)) => Ok(None),
                    Err((code, reason)) => Err(remote_error(code, reason).into()),
                }
            }
        }
    }

    /// The session with this id or name, or an error naming it.
    pub(crate) async fn get(&self, key: &str) -> Result<SessionInfo, Failure> {
        self.find(key).await?.ok_or_else(|| {
            Failure::Invalid(format!(
                "unknown session {key:?} (list_sessions shows the live ones)"
            ))
        })
    }

    pub(crate) async fn create(&self, new: NewSession) -> Result<SessionInfo, Failure> {
        match self {
            Sessions::Embedded(e) => {
                let language = spindle_languages::language(new.language, &e.interpreters)
                    .map_err(|err| Failure::Invalid(err.to_string()))?;
                let mut spec = SessionSpec::new(language);
                spec.name = new.name;
                spec.cwd = new.cwd.map(PathBuf::from);
                spec.env = new.env.into_iter().collect();
                spec.image_max_dim = Some(IMAGE_MAX_DIM);
                let session = e.kernel.create_session(spec).await?;
                Ok(session.info())
            }
            Sessions::Remote(r) => {
                let cwd = new.cwd.or_else(|| {
                    std::env::current_dir()
                        .ok()
                        .map(|p| p.display().to_string())
                });
                let body: spindle_protocol::native::CreateSession = serde_json::from_value(json!({
                    "language": new.language,
                    "name": new.name,
                    "cwd": cwd,
                    "env": new.env,
                }))
                .map_err(|e| Failure::Internal(e.to_string()))?;
                let reply = r.conn.call(RequestBody::CreateSession(body), SLOW).await?;
                let ReplyBody::Session { session, .. } = reply else {
                    return Err(Failure::Internal(
                        "unexpected reply to create_session".into(),
                    ));
                };
                r.ours.lock().expect("ours").insert(session.id.clone());
                Ok(session)
            }
        }
    }

    pub(crate) async fn list(&self) -> Result<Vec<SessionInfo>, Failure> {
        match self {
            Sessions::Embedded(e) => Ok(e.kernel.list()),
            Sessions::Remote(r) => match r.conn.call(RequestBody::ListSessions, QUICK).await? {
                ReplyBody::Sessions { sessions } => Ok(sessions),
                _ => Err(Failure::Internal(
                    "unexpected reply to list_sessions".into(),
                )),
            },
        }
    }

    /// The embedded session handle (for watching it).
    pub(crate) fn handle(&self, id: &str) -> Option<Session> {
        match self {
            Sessions::Embedded(e) => e.kernel.get(id).ok(),
            Sessions::Remote(_) => None,
        }
    }

    /// Every chunk of an embedded session (`None` with `--connect`).
    pub(crate) fn subscribe(&self, id: &str) -> Option<spindle_kernel::session::Watcher> {
        self.handle(id).map(|s| s.subscribe())
    }

    pub(crate) async fn execute(
        &self,
        id: &str,
        code: &str,
        exec_id: &str,
    ) -> Result<ChunkStream, Failure> {
        match self {
            Sessions::Embedded(e) => {
                let session = e.kernel.get(id)?;
                let opts = ExecOptions {
                    id: Some(exec_id.to_string()),
                    image_max_dim: Some(IMAGE_MAX_DIM),
                    allow_stdin: true,
                    ..ExecOptions::default()
                };
                let exec = session.execute(code, opts)?;
                Ok(Box::pin(exec.map(Ok)))
            }
            Sessions::Remote(r) => {
                let req: Execute = serde_json::from_value(json!({
                    "session": id,
                    "code": code,
                    "image_max_dim": IMAGE_MAX_DIM,
                    "allow_stdin": true,
                }))
                .map_err(|e| Failure::Internal(e.to_string()))?;
                let (rid, rx) = r.conn.send(RequestBody::Execute(req)).await?;
                Ok(execution_stream(r.conn.clone(), rid, rx))
            }
        }
    }

    pub(crate) async fn interrupt(&self, id: &str) -> Result<(), Failure> {
        match self {
            Sessions::Embedded(e) => Ok(e.kernel.get(id)?.interrupt()?),
            Sessions::Remote(r) => {
                let session = id.to_string();
                r.conn
                    .call(RequestBody::Interrupt { session }, QUICK)
                    .await?;
                Ok(())
            }
        }
    }

    pub(crate) async fn restart(&self, id: &str) -> Result<SessionInfo, Failure> {
        match self {
            Sessions::Embedded(e) => {
                let s = e.kernel.get(id)?;
                s.restart().await?;
                Ok(s.info())
            }
            Sessions::Remote(r) => {
                let session = id.to_string();
                match r.conn.call(RequestBody::Restart { session }, SLOW).await? {
                    ReplyBody::Session { session, .. } => Ok(session),
                    _ => Err(Failure::Internal("unexpected reply to restart".into())),
                }
            }
        }
    }

    pub(crate) async fn close(&self, id: &str) -> Result<(), Failure> {
        match self {
            Sessions::Embedded(e) => Ok(e.kernel.close_session(id).await?),
            Sessions::Remote(r) => {
                let session = id.to_string();
                r.conn.call(RequestBody::Close { session }, QUICK).await?;
                r.ours.lock().expect("ours").remove(id);
                Ok(())
            }
        }
    }

    /// Answer a pending input request, or else write `text` to the terminal (a newline added
    /// unless it ends with one).
    pub(crate) async fn send_input(&self, id: &str, text: &str) -> Result<InputDelivery, Failure> {
        let line = if text.ends_with('\n') {
            text.to_string()
        } else {
            format!("{text}\n")
        };
        match self {
            Sessions::Embedded(e) => {
                let s = e.kernel.get(id)?;
                if s.input_pending() {
                    match s.input_reply(text.trim_end_matches('\n')) {
                        Ok(()) => return Ok(InputDelivery::Reply),
                        Err(KernelError::NoPendingInput(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                s.write_stdin(line.as_bytes())?;
                Ok(InputDelivery::Stdin(line.len()))
            }
            Sessions::Remote(r) => {
                let value = text.trim_end_matches('\n').to_string();
                let session = id.to_string();
                match r
                    .call_raw(RequestBody::InputReply {
                        session: session.clone(),
                        value,
                    })
                    .await?
                {
                    Ok(_) => return Ok(InputDelivery::Reply),
                    Err((ErrorCode::NoPendingInput, _)) => {}
                    Err((code, reason)) => return Err(remote_error(code, reason).into()),
                }
                let n = line.len();
                r.conn
                    .call(
                        RequestBody::Stdin {
                            session,
                            data: line,
                        },
                        QUICK,
                    )
                    .await?;
                Ok(InputDelivery::Stdin(n))
            }
        }
    }

    /// A files request (`upload_file`, `download_file`, `list_files`), answered as the native
    /// API does: in the embedded kernel by the same code as `spindle serve`'s, else by the host.
    pub(crate) async fn files(&self, body: RequestBody) -> Result<ReplyBody, Failure> {
        let r = match self {
            Sessions::Embedded(e) => {
                use crate::native::files;
                let key = match &body {
                    RequestBody::UploadFile(u) => u.session.clone(),
                    RequestBody::DownloadFile { session, .. }
                    | RequestBody::ListFiles { session, .. } => session.clone(),
                    _ => return Err(Failure::Internal("not a files request".into())),
                };
                let s = e.kernel.get(&key)?;
                match body {
                    RequestBody::UploadFile(u) => files::upload(&s, u.path, &u.data, u.mode).await,
                    RequestBody::DownloadFile { path, .. } => {
                        files::download(&s, path, super::tools::MAX_FILE).await
                    }
                    RequestBody::ListFiles { path, .. } => files::list(&s, path).await,
                    _ => return Err(Failure::Internal("not a files request".into())),
                }
            }
            Sessions::Remote(r) => r.call_raw_within(body, SLOW).await?,
        };
        r.map_err(|(code, reason)| match code {
            ErrorCode::Failed | ErrorCode::ShuttingDown => Failure::Internal(reason),
            _ => Failure::Invalid(reason),
        })
    }

    /// End every session this server started.
    pub(crate) async fn shutdown(&self) {
        match self {
            Sessions::Embedded(e) => e.kernel.shutdown().await,
            Sessions::Remote(r) => {
                let ours: Vec<String> = r.ours.lock().expect("ours").drain().collect();
                if r.conn.alive.load(std::sync::atomic::Ordering::Acquire) {
                    let closes = ours
                        .into_iter()
                        .map(|session| r.conn.call(RequestBody::Close { session }, QUICK));
                    futures::future::join_all(closes).await;
                }
            }
        }
    }
}

impl Remote {
    /// One request; a server error comes back with its code.
    async fn call_raw(
        &self,
        body: RequestBody,
    ) -> Result<Result<ReplyBody, (ErrorCode, String)>, Failure> {
        self.call_raw_within(body, QUICK).await
    }

    /// One request, answered within `patience`; a server error comes back with its code.
    async fn call_raw_within(
        &self,
        body: RequestBody,
        patience: std::time::Duration,
    ) -> Result<Result<ReplyBody, (ErrorCode, String)>, Failure> {
        let (id, mut rx) = self.conn.send(body).await?;
        let r = tokio::time::timeout(patience, rx.recv()).await;
        self.conn.pending.lock().expect("pending").remove(&id);
        match r {
            Ok(Some(ReplyBody::Error { code, reason })) => Ok(Err((code, reason))),
            Ok(Some(body)) => Ok(Ok(body)),
            Ok(None) => Err(Failure::Internal(
                "the connection to spindle serve closed".into(),
            )),
            Err(_) => Err(Failure::Internal(format!(
                "spindle serve did not answer within {} s",
                patience.as_secs()
            ))),
        }
    }
}
