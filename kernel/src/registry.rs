//! The [`Kernel`]: many named sessions, each with a UUID.

use dashmap::DashMap;
use spindle_protocol::SessionInfo;

use crate::error::KernelError;
use crate::options::{KernelConfig, SessionSpec};
use crate::session::Session;

/// Holds every live session.
#[derive(Debug)]
pub struct Kernel {
    config: KernelConfig,
    sessions: DashMap<String, Session>,
    names: DashMap<String, String>,
}

impl Kernel {
    pub fn new(config: KernelConfig) -> Self {
        Self {
            config,
            sessions: DashMap::new(),
            names: DashMap::new(),
        }
    }

    pub fn config(&self) -> &KernelConfig {
        &self.config
    }

    /// Start a session and wait until its process is ready.
    pub async fn create_session(&self, spec: SessionSpec) -> Result<Session, KernelError> {
        if let Some(name) = &spec.name {
            if self.names.contains_key(name) {
                return Err(KernelError::NameTaken(name.clone()));
            }
        }
        let session = Session::start(spec, self.config.clone()).await?;
        self.adopt(session.clone())?;
        Ok(session)
    }

    /// Register a session started elsewhere (a warm pool) under its name.
    pub fn adopt(&self, session: Session) -> Result<(), KernelError> {
        use dashmap::mapref::entry::Entry;
        match self.names.entry(session.name().to_string()) {
            Entry::Occupied(_) => return Err(KernelError::NameTaken(session.name().to_string())),
            Entry::Vacant(v) => {
                v.insert(session.id().to_string());
            }
        }
        self.sessions.insert(session.id().to_string(), session);
        Ok(())
    }

    /// Start a session without registering it (for pools); see [`Kernel::adopt`].
    pub async fn start_detached(&self, spec: SessionSpec) -> Result<Session, KernelError> {
        Session::start(spec, self.config.clone()).await
    }

    /// The session with this id or name.
    pub fn get(&self, id_or_name: &str) -> Result<Session, KernelError> {
        if let Some(s) = self.sessions.get(id_or_name) {
            return Ok(s.clone());
        }
        let id = self
            .names
            .get(id_or_name)
            .map(|id| id.clone())
            .ok_or_else(|| KernelError::UnknownSession(id_or_name.to_string()))?;
        self.sessions
            .get(&id)
            .map(|s| s.clone())
            .ok_or_else(|| KernelError::UnknownSession(id_or_name.to_string()))
    }

    pub fn list(&self) -> Vec<SessionInfo> {
        let mut v: Vec<SessionInfo> = self.sessions.iter().map(|s| s.info()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Close one session: its process tree is killed and it leaves the registry.
    pub async fn close_session(&self, id_or_name: &str) -> Result<(), KernelError> {
        let session = self.get(id_or_name)?;
        self.sessions.remove(session.id());
        self.names.remove(session.name());
        session.close().await;
        Ok(())
    }

    /// Close every session.
    pub async fn shutdown(&self) {
        let all: Vec<Session> = self.sessions.iter().map(|s| s.clone()).collect();
        self.sessions.clear();
        self.names.clear();
        futures::future::join_all(all.iter().map(|s| s.close())).await;
    }
}
