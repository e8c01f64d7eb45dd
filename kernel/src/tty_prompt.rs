//! Terminal prompts: noticing a program that waits reading the session's terminal.
//!
//! A session's programs may read the PTY directly: bash's `read`, `sudo`'s password, an apt y/n,
//! `python3 -c 'input()'` run from a shell. Nothing in the child protocol announces those reads,
//! so the kernel looks for them itself, only while an execution runs and its output has been
//! quiet for a while (the actor decides when; see `session/`):
//!
//! - the terminal's foreground process group (`tcgetpgrp` on the master, or the `tpgid` field
//!   of the leader's `/proc/<pid>/stat` when there is no master here, as in a sandbox);
//! - a thread of a process in that group sleeping (`S`) in `read(2)`/`readv(2)` on a
//!   descriptor that is the session's terminal (same device as the leader's controlling
//!   terminal), or in `poll`/`select`/`epoll_wait` with that terminal among the descriptors it
//!   waits to read (GNU readline, Node's `process.stdin`): its
//!   `/proc/<pid>/task/<tid>/syscall`, the descriptor table or array it points at
//!   (`/proc/<pid>/mem`), an epoll's interest list (`/proc/<pid>/fdinfo`);
//! - the terminal's settings (`tcgetattr`): `ICANON` (a line is awaited, or a key in raw mode),
//!   `VEOF`, and whether the program turned echo off for a password.
//!
//! **Passwords.** The kernel's terminal has `ECHO` off already (what the host writes is input,
//! not output), so "echo is off" alone says nothing. The kernel therefore leaves `ECHOK` and
//! `ECHOE` on as a [`MARKER`]: they only act when `ECHO` is on, so with echo off they change
//! nothing, and programs that turn echo off for a password clear them with it (bash's
//! `read -s`, sudo, OpenSSH's `readpassphrase` through `ECHONL`... see [`Termios::password`]).
//! glibc's `getpass` clears `ISIG`, which is also taken as a password read in canonical mode.
//! A program that clears only `ECHO` (Python's `getpass`) is not told apart from a plain read.
//!
//! The bootstrap's own input path (Python's `input()`, Node's `input()`) reads the request FIFO,
//! not the terminal, so it is never seen here; the actor also never probes while such a request
//! is pending.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

/// Local-mode flags the kernel leaves on as a marker (invisible while `ECHO` is off).
pub const MARKER: libc::tcflag_t = libc::ECHOK | libc::ECHOE;

/// The system calls a program waits for terminal input in, per architecture: `read`/`readv` on
/// the terminal itself, or `poll`/`select`/`epoll` with the terminal among what it waits for
/// (GNU readline, Node's `process.stdin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Read,
    Poll,
    Select,
    Epoll,
}

fn call(nr: i64) -> Option<Call> {
    #[cfg(target_arch = "x86_64")]
    let table: &[(i64, Call)] = &[
        (0, Call::Read),
        (19, Call::Read),
        (7, Call::Poll),
        (271, Call::Poll),
        (23, Call::Select),
        (270, Call::Select),
        (232, Call::Epoll),
        (281, Call::Epoll),
        (441, Call::Epoll),
    ];
    #[cfg(any(target_arch = "aarch64", target_arch = "riscv64"))]
    let table: &[(i64, Call)] = &[
        (63, Call::Read),
        (65, Call::Read),
        (73, Call::Poll),
        (72, Call::Select),
        (22, Call::Epoll),
        (441, Call::Epoll),
    ];
    #[cfg(not(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    )))]
    let table: &[(i64, Call)] = &[];
    table.iter().find(|(n, _)| *n == nr).map(|(_, c)| *c)
}

/// A program waiting for a line (or a key) from the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtyWait {
    /// The process, and the thread in `read`.
    pub pid: i32,
    pub tid: i32,
    /// The terminal's settings when it was seen.
    pub termios: Termios,
}

impl TtyWait {
    /// Whether the program turned echo off to read a password.
    pub fn password(&self) -> bool {
        self.termios.password()
    }
}

/// What matters of a terminal's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Termios {
    pub lflag: libc::tcflag_t,
    /// `c_cc[VEOF]`, the end-of-file character in canonical mode.
    pub veof: u8,
}

impl Termios {
    fn of(t: &libc::termios) -> Self {
        Termios {
            lflag: t.c_lflag,
            veof: t.c_cc[libc::VEOF],
        }
    }

    /// Canonical mode off: the program reads keys, not lines.
    pub fn raw(&self) -> bool {
        self.lflag & libc::ICANON == 0
    }

    /// Echo off for a password: `ECHO` off and the [`MARKER`] cleared, or (glibc's `getpass`)
    /// signals off in canonical mode.
    pub fn password(&self) -> bool {
        if self.lflag & libc::ECHO != 0 || self.raw() {
            return false;
        }
        self.lflag & MARKER != MARKER || self.lflag & libc::ISIG == 0
    }

    /// The bytes that answer this read with `value`: a line ended by `\n` in canonical mode,
    /// with control characters quoted by `^V` (literal-next) so they are data and not line
    /// editing or signals; in raw mode the bytes as typed, ended by `\r` (the Enter key).
    pub fn reply_bytes(&self, value: &str) -> Vec<u8> {
        let value = value.trim_end_matches(['\n', '\r']);
        let mut out = Vec::with_capacity(value.len() + 1);
        if self.raw() {
            out.extend_from_slice(value.as_bytes());
            out.push(b'\r');
            return out;
        }
        let lnext = self.lflag & libc::IEXTEN != 0;
        for b in value.bytes() {
            if lnext && ((b < 0x20 && b != b'\t') || b == 0x7f) {
                out.push(0x16);
            }
            out.push(b);
        }
        out.push(b'\n');
        out
    }

    /// What makes the read return end-of-file: the `VEOF` character (`^D`) in canonical mode
    /// (after a partial line a second one is needed, which the next probe sends); in raw mode
    /// there is no end-of-file, and `^D` is what programs conventionally take as one.
    pub fn eof_bytes(&self) -> Vec<u8> {
        if self.raw() || self.veof == 0 {
            vec![0x04]
        } else {
            vec![self.veof]
        }
    }
}

/// Read a terminal's settings through any descriptor on it (the master included: Linux answers
/// for the slave).
pub fn termios(fd: RawFd) -> Option<Termios> {
    // SAFETY: tcgetattr fills a zeroed termios on success.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        (libc::tcgetattr(fd, &mut t) == 0).then(|| Termios::of(&t))
    }
}

/// Look for a program of `leader`'s terminal waiting in a read of it. `master` is the PTY's
/// master when the host holds it (the local launcher); without it the foreground group and the
/// settings come from `/proc` (a sandbox whose processes this host can see).
pub fn probe(leader: i32, master: Option<RawFd>) -> Option<TtyWait> {
    let lead = Stat::read(&format!("/proc/{leader}"))?;
    if lead.tty_nr == 0 || lead.state == 'Z' {
        return None;
    }
    let fg = match master {
        // SAFETY: tcgetpgrp on a descriptor the caller owns.
        Some(fd) => unsafe { libc::tcgetpgrp(fd) },
        None => lead.tpgid,
    };
    if fg <= 0 {
        return None;
    }
    let tty = decode_tty_nr(lead.tty_nr);
    for pid in pids() {
        let dir = format!("/proc/{pid}");
        let Some(st) = Stat::read(&dir) else { continue };
        if st.pgrp != fg || st.tty_nr != lead.tty_nr {
            continue;
        }
        let Some(tid) = reading_thread(pid, tty) else {
            continue;
        };
        let termios = match master {
            Some(fd) => termios(fd),
            None => termios_via(pid, tid, leader, tty),
        }?;
        return Some(TtyWait { pid, tid, termios });
    }
    None
}

/// The thread of `pid` asleep in a read of `tty`, if any.
fn reading_thread(pid: i32, tty: (u32, u32)) -> Option<i32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    tasks
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|&tid| reads_tty(pid, tid, tty) == Some(true))
}

/// Whether thread `tid` of `pid` sleeps waiting for input from the terminal `tty`; `None` when
/// that cannot be known (gone, or not ours to look at).
fn reads_tty(pid: i32, tid: i32, tty: (u32, u32)) -> Option<bool> {
    waiting_fd(pid, tid, tty).map(|fd| fd.is_some())
}

/// The descriptor on `tty` that thread `tid` of `pid` sleeps waiting for input on, if any.
fn waiting_fd(pid: i32, tid: i32, tty: (u32, u32)) -> Option<Option<i64>> {
    let st = Stat::read(&format!("/proc/{pid}/task/{tid}"))?;
    if st.state != 'S' {
        return Some(None);
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    let mut fields = text.split_whitespace();
    let Some(kind) = fields.next()?.parse().ok().and_then(call) else {
        return Some(None);
    };
    let args: Vec<u64> = fields
        .take(2)
        .filter_map(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
        .collect();
    let [a0, a1] = args[..] else {
        return Some(None);
    };
    let is_tty = |fd: i64| is_terminal(pid, fd, tty);
    Some(match kind {
        Call::Read => is_tty(a0 as i64).then_some(a0 as i64),
        Call::Poll => {
            // struct pollfd { int fd; short events; short revents; }, `a1` of them at `a0`.
            let n = (a1 as usize).min(256);
            let mem = read_mem(pid, a0, n * 8)?;
            mem.chunks_exact(8)
                .filter(|p| i16::from_ne_bytes([p[4], p[5]]) & libc::POLLIN != 0)
                .map(|p| i32::from_ne_bytes([p[0], p[1], p[2], p[3]]) as i64)
                .find(|&fd| fd >= 0 && is_tty(fd))
        }
        Call::Select => {
            // `a0` descriptors, the read set at `a1` (a bit array).
            if a1 == 0 {
                return Some(None);
            }
            let n = (a0 as usize).min(1024);
            let mem = read_mem(pid, a1, n.div_ceil(8))?;
            (0..n as i64)
                .filter(|&fd| mem[fd as usize / 8] & (1 << (fd % 8)) != 0)
                .find(|&fd| is_tty(fd))
        }
        Call::Epoll => {
            // The epoll descriptor's interest list: "tfd: <fd> events: <hex> ..." lines.
            let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{a0}")).ok()?;
            info.lines()
                .filter_map(|l| {
                    let mut w = l.split_whitespace();
                    (w.next()? == "tfd:").then_some(())?;
                    let fd: i64 = w.next()?.parse().ok()?;
                    (w.next()? == "events:").then_some(())?;
                    let ev = u32::from_str_radix(w.next()?, 16).ok()?;
                    (ev & libc::EPOLLIN as u32 != 0).then_some(fd)
                })
                .find(|&fd| is_tty(fd))
        }
    })
}

/// `/dev/tty`: whoever opens it gets its controlling terminal.
const DEV_TTY: (u32, u32) = (5, 0);

/// Whether descriptor `fd` of `pid` is the terminal `tty`, or `/dev/tty` (sudo and `read
/// </dev/tty` open that): a process of the terminal's foreground group has `tty` as its
/// controlling terminal.
fn is_terminal(pid: i32, fd: i64, tty: (u32, u32)) -> bool {
    device(pid, fd).is_some_and(|d| d == tty || d == DEV_TTY)
}

/// The character device descriptor `fd` of `pid` is open on.
fn device(pid: i32, fd: i64) -> Option<(u32, u32)> {
    let m = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).ok()?;
    m.file_type()
        .is_char_device()
        .then(|| (libc::major(m.rdev()), libc::minor(m.rdev())))
}

/// `len` bytes of `pid`'s memory at `addr`.
fn read_mem(pid: i32, addr: u64, len: usize) -> Option<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, addr).ok()?;
    Some(buf)
}

/// The settings of the terminal, through a descriptor on it of the waiting process or of the
/// leader (opened without becoming our controlling terminal, and closed at once so nothing
/// keeps the terminal open). Never through `/dev/tty`, which would be ours.
fn termios_via(pid: i32, tid: i32, leader: i32, tty: (u32, u32)) -> Option<Termios> {
    let waited = waiting_fd(pid, tid, tty).flatten();
    let candidates = waited
        .map(|fd| (pid, fd))
        .into_iter()
        .chain([0, 1, 2].map(|fd| (pid, fd)))
        .chain([0, 1, 2].map(|fd| (leader, fd)));
    for (p, fd) in candidates {
        if device(p, fd) != Some(tty) {
            continue;
        }
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(format!("/proc/{p}/fd/{fd}"));
        if let Some(t) = opened.ok().and_then(|f| termios(f.as_raw_fd())) {
            return Some(t);
        }
    }
    None
}

fn pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
}

/// `tty_nr` of `/proc/<pid>/stat` as (major, minor).
fn decode_tty_nr(nr: i64) -> (u32, u32) {
    let nr = nr as u64;
    let major = ((nr >> 8) & 0xfff) as u32;
    let minor = ((nr & 0xff) | ((nr >> 12) & 0xfff00)) as u32;
    (major, minor)
}

/// The fields of `/proc/<pid>/stat` used here.
#[derive(Debug, Clone, Copy)]
struct Stat {
    state: char,
    pgrp: i32,
    tty_nr: i64,
    tpgid: i32,
}

impl Stat {
    fn read(dir: &str) -> Option<Stat> {
        Stat::parse(&std::fs::read_to_string(format!("{dir}/stat")).ok()?)
    }

    fn parse(stat: &str) -> Option<Stat> {
        // After the command name (which may hold spaces and parentheses):
        // state ppid pgrp session tty_nr tpgid ...
        let rest = stat.get(stat.rfind(')')? + 2..)?;
        let mut f = rest.split(' ');
        let state = f.next()?.chars().next()?;
        let _ppid = f.next()?;
        let pgrp = f.next()?.parse().ok()?;
        let _session = f.next()?;
        let tty_nr = f.next()?.parse().ok()?;
        let tpgid = f.next()?.parse().ok()?;
        Some(Stat {
            state,
            pgrp,
            tty_nr,
            tpgid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(lflag: libc::tcflag_t) -> Termios {
        Termios { lflag, veof: 4 }
    }

    const CANON: libc::tcflag_t = libc::ICANON | libc::ISIG | libc::IEXTEN;

    #[test]
    fn password_is_echo_off_with_the_marker_cleared() {
        // The kernel's own settings: echo off, marker on.
        assert!(!t(CANON | MARKER).password());
        // bash `read -s` clears ECHO, ECHOK and ECHONL.
        assert!(t(CANON | libc::ECHOE).password());
        // sudo clears ECHOE, ECHOK, ECHOCTL.
        assert!(t(CANON).password());
        // glibc getpass clears ISIG.
        assert!(t(libc::ICANON | MARKER).password());
        // echo on is never a password; raw mode is a key press.
        assert!(!t(CANON | libc::ECHO).password());
        assert!(!t(MARKER).password());
        assert!(t(MARKER).raw());
    }

    #[test]
    fn replies_and_end_of_file_follow_the_mode() {
        let canon = t(CANON | MARKER);
        assert_eq!(canon.reply_bytes("a\u{3}b\n"), b"a\x16\x03b\n");
        assert_eq!(canon.eof_bytes(), vec![4]);
        let raw = t(MARKER);
        assert_eq!(raw.reply_bytes("y"), b"y\r");
        assert_eq!(raw.eof_bytes(), vec![4]);
    }

    #[test]
    fn stat_parses_names_with_spaces_and_parens() {
        let s = Stat::parse("12 (a b) c)) S 1 12 12 34816 40 4194304 0").unwrap();
        assert_eq!((s.state, s.pgrp, s.tty_nr, s.tpgid), ('S', 12, 34816, 40));
        assert_eq!(decode_tty_nr(34816), (136, 0));
        assert_eq!(decode_tty_nr(34816 + 5), (136, 5));
        assert!(Stat::parse("garbage").is_none());
    }

    #[test]
    fn our_own_process_is_not_waiting() {
        // The test runner reads no terminal (and may have none).
        assert!(probe(std::process::id() as i32, None).is_none());
        assert!(probe(-1, None).is_none());
    }
}
