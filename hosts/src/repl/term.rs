//! The terminal while code runs: its size, echo control for password prompts, restoring its
//! settings on a hard exit, and the stdin forwarder that passes typed lines to the running
//! program. Between executions rustyline owns the terminal; while code runs the terminal stays
//! in its normal (canonical) mode, so the kernel driver gives us whole lines and turns Ctrl-C
//! into SIGINT.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

pub fn is_tty(fd: i32) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// Columns of the terminal on stdout (then `COLUMNS`, then 80).
pub fn width() -> usize {
    // SAFETY: TIOCGWINSZ writes a winsize into the struct we pass.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        return ws.ws_col as usize;
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .filter(|c| *c > 0)
        .unwrap_or(80)
}

/// Rows of the terminal on stdout (then `LINES`, then 24).
pub fn height() -> usize {
    // SAFETY: as in `width`.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_row > 0 {
        return ws.ws_row as usize;
    }
    std::env::var("LINES")
        .ok()
        .and_then(|c| c.parse().ok())
        .filter(|c| *c > 0)
        .unwrap_or(24)
}

/// Saved terminal settings of stdin, to restore on exit paths that skip destructors.
#[derive(Clone, Copy)]
pub struct Saved(Option<libc::termios>);

impl Saved {
    pub fn take() -> Self {
        if !is_tty(libc::STDIN_FILENO) {
            return Saved(None);
        }
        // SAFETY: tcgetattr fills the struct for a terminal descriptor.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut t) } == 0 {
            Saved(Some(t))
        } else {
            Saved(None)
        }
    }

    pub fn restore(&self) {
        if let Some(t) = &self.0 {
            // SAFETY: restoring settings read earlier from the same descriptor.
            unsafe {
                libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, t);
            }
        }
    }
}

/// Turn the terminal's echo off (for a password prompt) or back on.
pub fn set_echo(on: bool) {
    if !is_tty(libc::STDIN_FILENO) {
        return;
    }
    // SAFETY: read-modify-write of stdin's terminal settings.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(libc::STDIN_FILENO, &mut t) != 0 {
            return;
        }
        if on {
            t.c_lflag |= libc::ECHO;
        } else {
            t.c_lflag &= !libc::ECHO;
        }
        libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t);
    }
}

/// What the user typed while code ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Typed {
    /// A line, with its newline.
    Line(Vec<u8>),
    /// Ctrl-D at the start of a line.
    Eof,
}

/// Reads stdin only while armed (while code runs), so it never steals keys from rustyline.
pub struct StdinForwarder {
    armed: Arc<AtomicBool>,
    rx: mpsc::UnboundedReceiver<Typed>,
    closed: bool,
}

impl StdinForwarder {
    /// Start the reader thread; `None` when stdin is not a terminal (then rustyline reads it
    /// all as input lines and nothing is forwarded).
    pub fn start() -> Option<Self> {
        if !is_tty(libc::STDIN_FILENO) {
            return None;
        }
        let armed = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::unbounded_channel();
        let flag = armed.clone();
        std::thread::Builder::new()
            .name("repl-stdin".into())
            .spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    if !flag.load(Ordering::Acquire) {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    let mut pfd = libc::pollfd {
                        fd: libc::STDIN_FILENO,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one pollfd, 50 ms.
                    let n = unsafe { libc::poll(&mut pfd, 1, 50) };
                    // Re-check after the wait: the execution may have ended meanwhile, and
                    // then the line belongs to rustyline.
                    if n <= 0 || !flag.load(Ordering::Acquire) {
                        continue;
                    }
                    if pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
                        // The terminal is gone (its window closed): nothing more will come, and
                        // SIGHUP ends the REPL.
                        break;
                    }
                    if pfd.revents & libc::POLLIN == 0 {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                    // SAFETY: reading into our buffer; canonical mode gives at most one line.
                    let got = unsafe {
                        libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len())
                    };
                    let item = match got {
                        0 => Typed::Eof,
                        n if n > 0 => {
                            let mut line = buf[..n as usize].to_vec();
                            // Typed in the instant before the terminal left raw mode, Enter is
                            // still a carriage return.
                            if line.last() == Some(&b'\r') {
                                line.pop();
                                line.push(b'\n');
                            }
                            Typed::Line(line)
                        }
                        _ => continue,
                    };
                    if tx.send(item).is_err() {
                        break;
                    }
                }
            })
            .ok()?;
        Some(Self {
            armed,
            rx,
            closed: false,
        })
    }

    /// Start forwarding; anything that slipped through while disarmed is dropped.
    pub fn arm(&mut self) {
        while self.rx.try_recv().is_ok() {}
        self.armed.store(true, Ordering::Release);
    }

    pub fn disarm(&self) {
        self.armed.store(false, Ordering::Release);
    }

    /// The next typed line; never resolves once the reader is gone (cancel-safe).
    pub async fn recv(&mut self) -> Typed {
        if !self.closed {
            if let Some(t) = self.rx.recv().await {
                return t;
            }
            self.closed = true;
        }
        std::future::pending().await
    }
}
