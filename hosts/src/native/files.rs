//! `upload_file`, `download_file` and `list_files`: files in and out of a session's work
//! directory, on the kernel's confined [`WorkDir`](spindle_kernel::WorkDir) (a local session's
//! working directory, or `/work` in its sandbox). Shared by the native host and by `spindle mcp`'s
//! embedded kernel, so both confine paths and bound sizes the same way.

use base64::Engine as _;
use spindle_kernel::{FilesError, KernelError, Listing, Session, WriteMode};
use spindle_protocol::native::{ErrorCode, FileEntry, FileKind, ReplyBody, UploadMode};

use crate::native::host::Failure;

/// JSON and framing around a `file` reply's data, allowed for when bounding a download.
const REPLY_OVERHEAD: usize = 4096;

/// The largest file whose `file` reply (base64 data and all) fits in `max_message` bytes.
pub(crate) fn max_file(max_message: usize) -> u64 {
    (max_message.saturating_sub(REPLY_OVERHEAD) / 4 * 3) as u64
}

/// A file error as an error reply.
pub(crate) fn files_failure(e: FilesError) -> Failure {
    let code = match &e {
        FilesError::BadPath { .. } => ErrorCode::BadRequest,
        FilesError::Forbidden { .. } => ErrorCode::Forbidden,
        FilesError::NotFound { .. } => ErrorCode::NotFound,
        FilesError::Exists { .. } => ErrorCode::FileExists,
        FilesError::TooLarge { .. } => ErrorCode::TooLarge,
        FilesError::NotAFile { .. } | FilesError::NotADirectory { .. } => ErrorCode::BadRequest,
        FilesError::Unavailable(_) | FilesError::Io { .. } => ErrorCode::Failed,
    };
    (code, e.to_string())
}

fn kernel_failure(e: KernelError) -> Failure {
    match e {
        KernelError::Files(f) => files_failure(f),
        KernelError::Closed(id) => (ErrorCode::SessionClosed, format!("session {id} was closed")),
        other => (ErrorCode::Failed, other.to_string()),
    }
}

/// Run a blocking file operation off the runtime's threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FilesError> + Send + 'static,
) -> Result<T, Failure> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(files_failure),
        Err(e) => Err((ErrorCode::Failed, format!("the file request stopped: {e}"))),
    }
}

/// The path as the replies show it.
fn shown(path: &str) -> Result<String, Failure> {
    let c = spindle_kernel::files::components(path).map_err(files_failure)?;
    Ok(if c.is_empty() {
        ".".into()
    } else {
        c.join("/")
    })
}

pub(crate) async fn upload(
    session: &Session,
    path: String,
    data: &str,
    mode: Option<UploadMode>,
) -> Result<ReplyBody, Failure> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.as_bytes())
        .map_err(|e| {
            (
                ErrorCode::BadRequest,
                format!("data is not valid base64: {e}"),
            )
        })?;
    let mode = match mode.unwrap_or(UploadMode::Overwrite) {
        UploadMode::Create => WriteMode::Create,
        UploadMode::Overwrite => WriteMode::Overwrite,
    };
    let wd = session.work_dir().map_err(kernel_failure)?;
    let name = shown(&path)?;
    let size = bytes.len() as u64;
    blocking(move || wd.write(&path, &bytes, mode)).await?;
    Ok(ReplyBody::File {
        path: name,
        size,
        data: None,
    })
}

pub(crate) async fn download(
    session: &Session,
    path: String,
    limit: u64,
) -> Result<ReplyBody, Failure> {
    let wd = session.work_dir().map_err(kernel_failure)?;
    let name = shown(&path)?;
    let bytes = blocking(move || wd.read(&path, limit)).await?;
    Ok(ReplyBody::File {
        path: name,
        size: bytes.len() as u64,
        data: Some(base64::engine::general_purpose::STANDARD.encode(&bytes)),
    })
}

pub(crate) async fn list(session: &Session, path: Option<String>) -> Result<ReplyBody, Failure> {
    let wd = session.work_dir().map_err(kernel_failure)?;
    let path = path.unwrap_or_default();
    let name = shown(&path)?;
    let root = wd.root();
    let Listing { entries, truncated } = blocking(move || wd.list(&path)).await?;
    Ok(ReplyBody::Files {
        path: name,
        root,
        entries: entries
            .into_iter()
            .map(|e| FileEntry {
                name: e.name,
                kind: match e.kind {
                    spindle_kernel::FileKind::File => FileKind::File,
                    spindle_kernel::FileKind::Dir => FileKind::Dir,
                    spindle_kernel::FileKind::Symlink => FileKind::Symlink,
                    spindle_kernel::FileKind::Other => FileKind::Other,
                },
                size: e.size,
                mtime: e.mtime,
            })
            .collect(),
        truncated,
    })
}
