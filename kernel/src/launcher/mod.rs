//! Starting language processes.
//!
//! A [`Launcher`] turns a [`LaunchSpec`] into a running process and the byte streams the kernel
//! reads and writes (see `docs/child-protocol.md`): the PTY (both ways), the child's stderr, the
//! event stream and the request stream.
//!
//! - [`local`]: a process on the host, on a `portable-pty` PTY, with FIFOs in the session's
//!   private run directory; [`guardian`] kills its sessions when the host is killed.
//! - [`docker`]: a process in a Docker container (through the Engine API): the container's TTY
//!   is the PTY, and the run directory with its FIFOs is bind-mounted into the container.
//!
//! Another backend (Kubernetes, say) gets a module beside these two.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::KernelError;
use crate::language::LaunchSpec;

pub mod docker;
pub mod guardian;
pub mod local;

pub use docker::{DockerConfig, DockerLauncher, HostMount, SandboxError};
pub use local::LocalPtyLauncher;

/// What the kernel hands a launcher.
#[derive(Debug, Clone)]
pub struct LaunchRequest {
    pub language: String,
    pub spec: LaunchSpec,
    /// The private run directory (already created, mode 0700).
    pub run_dir: PathBuf,
    pub cwd: Option<PathBuf>,
    /// Session environment (the language's own is in `spec.env`).
    pub env: Vec<(String, String)>,
    /// Nonce for sentinels.
    pub nonce: String,
    pub session_id: String,
    pub pty_size: (u16, u16),
}

/// How a process ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitInfo {
    pub code: Option<i32>,
    /// Signal description, when it was killed by one.
    pub signal: Option<String>,
    /// The memory limit (bytes) when the sandbox's out-of-memory killer ended it.
    pub out_of_memory: Option<u64>,
    /// What the launcher knows about why, said instead of the status (a sandbox that cannot
    /// see its run directory, say).
    pub detail: Option<String>,
}

impl ExitInfo {
    /// What an execution ended by this exit is told, when it is more than "the process died":
    /// `killed: out of memory (limit N MB)`.
    pub fn reason(&self) -> Option<String> {
        self.out_of_memory.map(|limit| {
            format!(
                "killed: out of memory (limit {} MB)",
                limit.div_ceil(1 << 20)
            )
        })
    }
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(reason) = self.reason() {
            return write!(f, "was {reason}");
        }
        if let Some(detail) = &self.detail {
            return write!(f, "{detail}");
        }
        match (&self.signal, self.code) {
            (Some(sig), _) => write!(f, "was killed by a signal ({sig})"),
            (None, Some(code)) => write!(f, "exited with status {code}"),
            (None, None) => write!(f, "ended"),
        }
    }
}

/// Signals and kills for a running process.
pub trait ProcessControl: Send + Sync + std::fmt::Debug {
    /// Process id of the language process, if local.
    fn pid(&self) -> Option<u32>;
    /// Send SIGINT to the terminal's foreground process group; fall back to the process itself.
    fn interrupt(&self) -> io::Result<()>;
    /// Kill the process and everything in its session.
    fn kill_all(&self);
    /// The work directory, when the process has its own (a sandbox's); `None` means the
    /// session's working directory on the host.
    fn work_dir(&self) -> Option<Arc<dyn crate::files::WorkDir>> {
        None
    }
    /// A program of the process's terminal waiting in a read of it (a terminal prompt, see
    /// [`crate::tty_prompt`]); `None` when there is none, or when this launcher cannot tell.
    fn tty_wait(&self) -> Option<crate::tty_prompt::TtyWait> {
        None
    }
}

/// A stream the kernel reads: a descriptor it polls on its runtime (a FIFO, a PTY master: the
/// kernel makes it non-blocking, which its duplicates share), or a reader that needs a thread.
pub enum Source {
    Fd(OwnedFd),
    Reader(Box<dyn Read + Send>),
}

/// A stream the kernel writes, the same two ways.
pub enum Sink {
    Fd(OwnedFd),
    Writer(Box<dyn Write + Send>),
}

/// A started process and its streams.
pub struct Spawned {
    pub control: Arc<dyn ProcessControl>,
    pub pty_reader: Source,
    pub pty_writer: Sink,
    pub err_reader: Source,
    pub evt_reader: Source,
    /// Opens the request stream; call it once the child said `ready` (it opens its end first).
    pub open_requests: Box<dyn FnOnce() -> io::Result<Sink> + Send>,
    /// Blocks until the process ends, reaping it. Runs on its own thread.
    pub wait: Box<dyn FnOnce() -> ExitInfo + Send>,
}

/// Starts processes.
///
/// `launch` may block (a container launcher talks to its engine); the kernel calls it on a
/// blocking thread.
pub trait Launcher: Send + Sync + std::fmt::Debug {
    fn launch(&self, req: LaunchRequest) -> Result<Spawned, KernelError>;

    /// The sandbox processes run in and its limits; `None` for processes on the host.
    fn sandbox(&self) -> Option<spindle_protocol::SandboxInfo> {
        None
    }
}

/// SIGKILL every process whose session id is `sid` (the leader included). The leader is a
/// session leader (portable-pty calls `setsid`), so this reaches every job and background
/// process it started, unless one left the session on purpose.
pub fn kill_session(sid: i32) {
    // SAFETY: plain signal syscalls.
    unsafe {
        libc::kill(sid, libc::SIGKILL);
    }
    for pid in session_members(sid) {
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// Pids of the processes in session `sid`, read from /proc.
pub fn session_members(sid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| proc_session(pid) == Some(sid))
        .collect()
}

fn proc_session(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces and parentheses):
    // state ppid pgrp session ...
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(3)?.parse().ok()
}

pub(crate) fn mkfifo(path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::other("run directory path contains NUL"))?;
    // SAFETY: valid C string.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(crate) fn open_fifo_reader(path: &Path) -> io::Result<File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    clear_nonblock(f.as_raw_fd());
    Ok(f)
}

pub(crate) fn open_fifo_writer(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

/// How a launcher opens the request FIFO once the child is there: a 1 MiB pipe, polled.
pub(crate) fn request_opener(req_path: PathBuf) -> Box<dyn FnOnce() -> io::Result<Sink> + Send> {
    Box::new(move || -> io::Result<Sink> {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&req_path)?;
        set_pipe_size(f.as_raw_fd(), 1 << 20);
        Ok(Sink::Fd(f.into()))
    })
}

pub(crate) fn clear_nonblock(fd: RawFd) {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
}

pub(crate) fn set_pipe_size(fd: RawFd, size: i32) {
    // A larger pipe means fewer wake-ups when Python streams; failure just keeps the default.
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        libc::fcntl(fd, libc::F_SETPIPE_SZ, size);
    }
}

pub(crate) fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor we then own.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Write a file readable only by us, or rather by the owner of the directory it is in: a
/// sandbox may run its process as another user, owning the run directory (see [`give_to`]).
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    if let Some(owner) = path.parent().and_then(foreign_owner) {
        fchown(&f, owner)?;
    }
    f.write_all(bytes)
}

/// The owner of `dir` when it is not us (only root can make files for someone else).
fn foreign_owner(dir: &Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if me != 0 {
        return None;
    }
    let m = std::fs::metadata(dir).ok()?;
    (m.uid() != me).then_some((m.uid(), m.gid()))
}

fn fchown(f: &File, (uid, gid): (u32, u32)) -> io::Result<()> {
    // SAFETY: fchown on a descriptor we own.
    if unsafe { libc::fchown(f.as_raw_fd(), uid, gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Hand `path` (a file, FIFO or directory) to `uid:gid`.
pub fn give_to(path: &Path, (uid, gid): (u32, u32)) -> io::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
}

/// Make a fresh private run directory (mode 0700) for one process.
pub fn make_run_dir() -> io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    for _ in 0..16 {
        let dir = base.join(format!("spindle-{}", uuid::Uuid::new_v4().simple()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("could not create a run directory"))
}
