//! Starting language processes.
//!
//! A [`Launcher`] turns a [`LaunchSpec`] into a running process and the byte streams the kernel
//! reads and writes (see `docs/child-protocol.md`): the PTY (both ways), the child's stderr, the
//! event stream and the request stream. The local launcher uses `portable-pty` and FIFOs in the
//! session's private run directory; a container launcher can supply the same streams by
//! mounting that directory.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use portable_pty::{CommandBuilder, PtySize};

use crate::error::KernelError;
use crate::language::LaunchSpec;

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    pub code: Option<i32>,
    /// Signal description, when it was killed by one.
    pub signal: Option<String>,
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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
}

/// A started process and its streams.
pub struct Spawned {
    pub control: Arc<dyn ProcessControl>,
    pub pty_reader: Box<dyn Read + Send>,
    pub pty_writer: Box<dyn Write + Send>,
    pub err_reader: Box<dyn Read + Send>,
    pub evt_reader: Box<dyn Read + Send>,
    /// Opens the request stream; call it once the child said `ready` (it opens its end first).
    pub open_requests: Box<dyn FnOnce() -> io::Result<Box<dyn Write + Send>> + Send>,
    /// Blocks until the process ends, reaping it. Runs on its own thread.
    pub wait: Box<dyn FnOnce() -> ExitInfo + Send>,
}

/// Starts processes.
pub trait Launcher: Send + Sync + std::fmt::Debug {
    fn launch(&self, req: LaunchRequest) -> Result<Spawned, KernelError>;
}

/// Local processes on a `portable-pty` PTY.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalPtyLauncher;

/// A shell line run by `/bin/sh` that sends fd 2 to the stderr FIFO before the interpreter starts,
/// so even start-up errors are caught.
const WRAPPER: &str = "exec \"$0\" \"$@\" 2>\"$SPINDLE_ERR\"";

impl Launcher for LocalPtyLauncher {
    fn launch(&self, req: LaunchRequest) -> Result<Spawned, KernelError> {
        let start_err = |detail: String| KernelError::StartFailed {
            language: req.language.clone(),
            detail,
        };
        for (name, bytes) in &req.spec.files {
            write_private(&req.run_dir.join(name), bytes)?;
        }
        let req_path = req.run_dir.join("req.fifo");
        let evt_path = req.run_dir.join("evt.fifo");
        let err_path = req.run_dir.join("err.fifo");
        for p in [&req_path, &evt_path, &err_path] {
            mkfifo(p)?;
        }
        // Read ends first (non-blocking open succeeds with no writer), plus a writer of our own so
        // that reads block instead of seeing end-of-file before the child opens its end. The
        // waiter drops our writers once the child is gone, so the readers then reach the end.
        let evt_reader = open_fifo_reader(&evt_path)?;
        let err_reader = open_fifo_reader(&err_path)?;
        let keep_evt = open_fifo_writer(&evt_path)?;
        let keep_err = open_fifo_writer(&err_path)?;
        set_pipe_size(evt_reader.as_raw_fd(), 1 << 20);

        let pty_system = portable_pty::native_pty_system();
        let pair = pty_system
            .openpty(PtySize {
                rows: req.pty_size.0,
                cols: req.pty_size.1,
                pixel_width: 0,
                pixel_height: 0,
            })
            .map_err(|e| start_err(format!("cannot open a PTY: {e}")))?;
        let master_fd = pair
            .master
            .as_raw_fd()
            .ok_or_else(|| start_err("the PTY has no file descriptor".into()))?;
        configure_terminal(master_fd);

        let mut cmd = CommandBuilder::new("/bin/sh");
        cmd.arg("-c");
        cmd.arg(WRAPPER);
        cmd.arg(req.spec.program.as_os_str());
        for a in &req.spec.args {
            cmd.arg(a);
        }
        let cwd = match &req.cwd {
            Some(c) => c.clone(),
            None => std::env::current_dir()?,
        };
        cmd.cwd(&cwd);
        if std::env::var_os("LANG").is_none()
            && std::env::var_os("LC_ALL").is_none()
            && std::env::var_os("LC_CTYPE").is_none()
        {
            cmd.env("LC_CTYPE", "C.UTF-8");
        }
        cmd.env("TERM", "xterm-256color");
        for (k, v) in &req.env {
            cmd.env(k, v);
        }
        for (k, v) in &req.spec.env {
            cmd.env(k, v);
        }
        cmd.env("SPINDLE_REQ", &req_path);
        cmd.env("SPINDLE_EVT", &evt_path);
        cmd.env("SPINDLE_ERR", &err_path);
        cmd.env("SPINDLE_RUNDIR", &req.run_dir);
        cmd.env("SPINDLE_NONCE", &req.nonce);
        cmd.env("SPINDLE_SESSION", &req.session_id);
        cmd.env("SPINDLE_LANG", &req.language);

        let mut child = pair
            .slave
            .spawn_command(cmd)
            .map_err(|e| start_err(format!("cannot start {}: {e}", req.spec.program.display())))?;
        // The parent must not hold the slave open, or the PTY never reports the child's end.
        drop(pair.slave);
        let pid = child.process_id();
        let pty_reader = pair
            .master
            .try_clone_reader()
            .map_err(|e| start_err(format!("PTY reader: {e}")))?;
        let pty_writer = pair
            .master
            .take_writer()
            .map_err(|e| start_err(format!("PTY writer: {e}")))?;
        let control_fd = dup(master_fd)?;
        let control = Arc::new(LocalControl {
            pid,
            master: control_fd,
            reaped: AtomicBool::new(false),
        });
        let master = pair.master;
        let wait_control = control.clone();
        let wait = Box::new(move || {
            // Wait for the leader to end without reaping it: while it is a zombie its pid (the
            // session id) cannot be reused, so the sweep below can only hit its own session.
            if let Some(pid) = pid {
                wait_exited(pid as i32);
            }
            wait_control.kill_all();
            let status = child.wait();
            wait_control.reaped.store(true, Ordering::SeqCst);
            // Let the readers reach end-of-stream.
            drop(keep_evt);
            drop(keep_err);
            drop(master);
            match status {
                Ok(s) => ExitInfo {
                    code: if s.signal().is_some() {
                        None
                    } else {
                        Some(s.exit_code() as i32)
                    },
                    signal: s.signal().map(str::to_string),
                },
                Err(e) => ExitInfo {
                    code: None,
                    signal: Some(format!("unknown ({e})")),
                },
            }
        });
        let open_requests = Box::new(move || -> io::Result<Box<dyn Write + Send>> {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(&req_path)?;
            clear_nonblock(f.as_raw_fd());
            set_pipe_size(f.as_raw_fd(), 1 << 20);
            Ok(Box::new(f))
        });
        Ok(Spawned {
            control,
            pty_reader,
            pty_writer,
            err_reader: Box::new(err_reader),
            evt_reader: Box::new(evt_reader),
            open_requests,
            wait,
        })
    }
}

#[derive(Debug)]
struct LocalControl {
    pid: Option<u32>,
    master: OwnedFd,
    /// Set once the leader is reaped: its pid may then belong to someone else, so it is never
    /// signalled again.
    reaped: AtomicBool,
}

/// Block until `pid` (our child) has exited, leaving it unreaped.
fn wait_exited(pid: i32) {
    loop {
        // SAFETY: waitid on our own child with a zeroed siginfo for the kernel to fill.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 || std::io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

impl ProcessControl for LocalControl {
    fn pid(&self) -> Option<u32> {
        self.pid
    }

    fn interrupt(&self) -> io::Result<()> {
        if self.reaped.load(Ordering::SeqCst) {
            return Err(io::Error::other("the process has ended"));
        }
        // SAFETY: tcgetpgrp/killpg/kill are plain syscalls on a descriptor and pids we own.
        let pgrp = unsafe { libc::tcgetpgrp(self.master.as_raw_fd()) };
        if pgrp > 0 && unsafe { libc::killpg(pgrp, libc::SIGINT) } == 0 {
            return Ok(());
        }
        match self.pid {
            Some(pid) if unsafe { libc::kill(pid as i32, libc::SIGINT) } == 0 => Ok(()),
            Some(_) => Err(io::Error::last_os_error()),
            None => Err(io::Error::other("no process to interrupt")),
        }
    }

    fn kill_all(&self) {
        if self.reaped.load(Ordering::SeqCst) {
            return; // swept when the leader ended; its pid may be someone else's now
        }
        if let Some(pid) = self.pid {
            kill_session(pid as i32);
        }
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

fn configure_terminal(fd: RawFd) {
    // No echo (what the host writes is input, not output) and no \n → \r\n translation.
    // SAFETY: termios calls on a descriptor we own; a zeroed termios is filled by tcgetattr.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) == 0 {
            t.c_lflag &= !(libc::ECHO | libc::ECHOE | libc::ECHOK | libc::ECHONL | libc::ECHOCTL);
            t.c_oflag &= !libc::ONLCR;
            libc::tcsetattr(fd, libc::TCSANOW, &t);
        }
    }
}

fn mkfifo(path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::other("run directory path contains NUL"))?;
    // SAFETY: valid C string.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn open_fifo_reader(path: &Path) -> io::Result<File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    clear_nonblock(f.as_raw_fd());
    Ok(f)
}

fn open_fifo_writer(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

fn clear_nonblock(fd: RawFd) {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
}

fn set_pipe_size(fd: RawFd, size: i32) {
    // A larger pipe means fewer wake-ups when Python streams; failure just keeps the default.
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        libc::fcntl(fd, libc::F_SETPIPE_SZ, size);
    }
}

fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor we then own.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Write a file readable only by us.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
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
