//! The kernel's typed errors.

use crate::files::FilesError;
use crate::language::LanguageError;
use crate::launcher::SandboxError;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Language(#[from] LanguageError),
    #[error("code is empty")]
    EmptyCode,
    #[error("code contains a NUL byte at offset {0}; NUL cannot be sent to an interpreter")]
    NulInCode(usize),
    #[error("unknown session {0:?}")]
    UnknownSession(String),
    #[error("a session named {0:?} already exists")]
    NameTaken(String),
    #[error("session {0} is closed")]
    Closed(String),
    #[error("{language} failed to start: {detail}")]
    StartFailed { language: String, detail: String },
    #[error("no input request is pending in session {0}")]
    NoPendingInput(String),
    #[error("the {language} process died while answering a {what} request")]
    Died {
        language: String,
        what: &'static str,
    },
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error("{0}")]
    Protocol(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}
