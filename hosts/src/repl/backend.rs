//! Where the REPL's code runs. The REPL drives a [`Backend`]: one session per language, created
//! lazily on first use. [`Embedded`] holds an in-process [`Kernel`]; the remote backend
//! (`remote.rs`) talks to a running `spindle serve`. The REPL's loop, rendering and magics are
//! the same for both.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use futures::{Stream, StreamExt};
use serde_json::Value;
use spindle_kernel::{ExecOptions, Kernel, KernelConfig, KernelError, Query, Session, SessionSpec};
use spindle_languages::Interpreters;
use spindle_protocol::{Chunk, SessionInfo};

/// The chunks of one execution; ends after its `status`/`finished` chunk (or early if the
/// connection is lost, in which case the last item is an error).
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Chunk, BackendError>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The server answered with an error.
    #[error("{0}")]
    Remote(String),
    /// The server went away (or stopped answering).
    #[error("lost the connection to the server: {0}")]
    Disconnected(String),
}

impl BackendError {
    pub fn is_disconnect(&self) -> bool {
        matches!(self, BackendError::Disconnected(_))
    }
}

/// What the REPL needs from wherever sessions live.
pub trait Backend: Send + Sync + 'static {
    /// One line saying where sessions run, for the banner.
    fn describe(&self) -> String;

    /// Start the session for `lang` if it does not exist yet.
    fn ensure(&self, lang: &'static str) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Run `code` in `lang`'s session.
    fn execute(
        &self,
        lang: &'static str,
        code: String,
        opts: ExecOptions,
    ) -> impl Future<Output = Result<ChunkStream, BackendError>> + Send;

    fn interrupt(
        &self,
        lang: &'static str,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Bytes for the running program's terminal.
    fn write_stdin(
        &self,
        lang: &'static str,
        bytes: Vec<u8>,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// The answer to a pending `input_request`.
    fn input_reply(
        &self,
        lang: &'static str,
        value: String,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Completion, inspection or is-complete (creates the session if needed).
    fn query(
        &self,
        lang: &'static str,
        query: Query,
    ) -> impl Future<Output = Result<Value, BackendError>> + Send;

    /// Restart `lang`'s session; `Ok(false)` when it was never started.
    fn restart(
        &self,
        lang: &'static str,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send;

    /// The live sessions this REPL uses, by language.
    fn sessions(
        &self,
    ) -> impl Future<Output = Result<Vec<(&'static str, SessionInfo)>, BackendError>> + Send;

    /// Whether `lang`'s session exists already (no I/O).
    fn is_live(&self, lang: &'static str) -> bool;

    /// The languages that can run here (what the LLM loop offers the model).
    fn languages(&self) -> Vec<&'static str> {
        spindle_languages::NAMES.to_vec()
    }

    /// End every session this REPL started.
    fn shutdown(&self) -> impl Future<Output = ()> + Send;

    /// Check that the other side is still there (the embedded kernel always is).
    fn ping(&self) -> impl Future<Output = Result<(), BackendError>> + Send {
        async { Ok(()) }
    }

    /// Whether the other side can be asked right now (false after a lost connection, until a
    /// reconnect); the editor then guesses instead of waiting.
    fn available(&self) -> bool {
        true
    }

    /// Things to tell the user that happened out of band (such as sessions lost on a server
    /// restart).
    fn take_notices(&self) -> Vec<String> {
        Vec::new()
    }

    /// Try to connect again after a [`BackendError::Disconnected`].
    fn reconnect(&self) -> impl Future<Output = Result<(), BackendError>> + Send {
        async { Ok(()) }
    }
}

/// Sessions in this process: a [`Kernel`] with one session per language, named `repl-<lang>`.
pub struct Embedded {
    kernel: Kernel,
    interpreters: Interpreters,
    sessions: Mutex<HashMap<&'static str, Session>>,
    /// One creation at a time per language, so two first uses do not start two processes.
    creating: tokio::sync::Mutex<()>,
}

impl Embedded {
    /// An embedded kernel whose sessions `launcher` starts (on the host, or in a sandbox).
    pub fn new(
        interpreters: Interpreters,
        launcher: std::sync::Arc<dyn spindle_kernel::Launcher>,
    ) -> Self {
        Self {
            kernel: Kernel::new(KernelConfig {
                launcher,
                ..KernelConfig::default()
            }),
            interpreters,
            sessions: Mutex::new(HashMap::new()),
            creating: tokio::sync::Mutex::new(()),
        }
    }

    fn get(&self, lang: &str) -> Option<Session> {
        self.sessions.lock().expect("sessions").get(lang).cloned()
    }

    async fn session(&self, lang: &'static str) -> Result<Session, BackendError> {
        if let Some(s) = self.get(lang) {
            return Ok(s);
        }
        let _guard = self.creating.lock().await;
        if let Some(s) = self.get(lang) {
            return Ok(s);
        }
        let language =
            spindle_languages::language(lang, &self.interpreters).map_err(KernelError::from)?;
        let mut spec = SessionSpec::new(language);
        spec.name = Some(format!("repl-{lang}"));
        let session = self.kernel.create_session(spec).await?;
        self.sessions
            .lock()
            .expect("sessions")
            .insert(lang, session.clone());
        Ok(session)
    }
}

impl Backend for Embedded {
    fn describe(&self) -> String {
        "embedded kernel".into()
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
        let session = self.session(lang).await?;
        let exec = session.execute(&code, opts)?;
        Ok(Box::pin(exec.map(Ok)))
    }

    async fn interrupt(&self, lang: &'static str) -> Result<(), BackendError> {
        match self.get(lang) {
            Some(s) => Ok(s.interrupt()?),
            None => Ok(()),
        }
    }

    async fn write_stdin(&self, lang: &'static str, bytes: Vec<u8>) -> Result<(), BackendError> {
        match self.get(lang) {
            Some(s) => Ok(s.write_stdin(&bytes)?),
            None => Ok(()),
        }
    }

    async fn input_reply(&self, lang: &'static str, value: String) -> Result<(), BackendError> {
        match self.get(lang) {
            Some(s) => Ok(s.input_reply(&value)?),
            None => Ok(()),
        }
    }

    async fn query(&self, lang: &'static str, query: Query) -> Result<Value, BackendError> {
        let session = self.session(lang).await?;
        Ok(session.query(query).await?)
    }

    async fn restart(&self, lang: &'static str) -> Result<bool, BackendError> {
        match self.get(lang) {
            Some(s) => {
                s.restart().await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn sessions(&self) -> Result<Vec<(&'static str, SessionInfo)>, BackendError> {
        let map = self.sessions.lock().expect("sessions").clone();
        let mut v: Vec<(&'static str, SessionInfo)> =
            map.into_iter().map(|(l, s)| (l, s.info())).collect();
        v.sort_by_key(|(l, _)| *l);
        Ok(v)
    }

    fn is_live(&self, lang: &'static str) -> bool {
        self.get(lang).is_some()
    }

    fn languages(&self) -> Vec<&'static str> {
        spindle_languages::NAMES
            .into_iter()
            .filter(|l| self.interpreters.resolve(l).is_ok())
            .collect()
    }

    async fn shutdown(&self) {
        self.sessions.lock().expect("sessions").clear();
        self.kernel.shutdown().await;
    }
}
