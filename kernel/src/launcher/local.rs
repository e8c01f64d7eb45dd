//! Local processes on a `portable-pty` PTY, with the FIFOs in the private run directory.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use portable_pty::{CommandBuilder, PtySize};

use super::{
    dup, guardian, kill_session, mkfifo, open_fifo_reader, open_fifo_writer, request_opener,
    set_pipe_size, write_private, ExitInfo, LaunchRequest, Launcher, ProcessControl, Sink, Source,
    Spawned,
};
use crate::error::KernelError;

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
        // Before any code runs in it: if the host is killed, the guardian kills the session.
        if let Some(pid) = pid {
            guardian::register(pid as i32);
        }
        // The kernel polls the master on its runtime, reading and writing through duplicates.
        let pty_reader = Source::Fd(dup(master_fd)?);
        let pty_writer = Sink::Fd(dup(master_fd)?);
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
            // Swept: the guardian forgets it before the leader is reaped and its pid is free.
            if let Some(pid) = pid {
                guardian::unregister(pid as i32);
            }
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
                    out_of_memory: None,
                    detail: None,
                },
                Err(e) => ExitInfo {
                    code: None,
                    signal: Some(format!("unknown ({e})")),
                    out_of_memory: None,
                    detail: None,
                },
            }
        });
        let open_requests = request_opener(req_path.clone());
        Ok(Spawned {
            control,
            pty_reader,
            pty_writer,
            err_reader: Source::Fd(err_reader.into()),
            evt_reader: Source::Fd(evt_reader.into()),
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

    fn tty_wait(&self) -> Option<crate::tty_prompt::TtyWait> {
        if self.reaped.load(Ordering::SeqCst) {
            return None;
        }
        crate::tty_prompt::probe(self.pid? as i32, Some(self.master.as_raw_fd()))
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

fn configure_terminal(fd: RawFd) {
    // No echo (what the host writes is input, not output) and no \n → \r\n translation.
    // ECHOK and ECHOE stay on: inert without ECHO, they mark a password read when a program
    // clears them (see `tty_prompt`).
    // SAFETY: termios calls on a descriptor we own; a zeroed termios is filled by tcgetattr.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) == 0 {
            t.c_lflag &= !(libc::ECHO | libc::ECHONL | libc::ECHOCTL);
            t.c_lflag |= crate::tty_prompt::MARKER;
            t.c_oflag &= !libc::ONLCR;
            libc::tcsetattr(fd, libc::TCSANOW, &t);
        }
    }
}
