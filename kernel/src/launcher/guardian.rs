//! The guardian: what kills a host's local sessions when the host itself is killed.
//!
//! Every local session is a session of its own (portable-pty calls `setsid`), and bash puts each
//! job in a process group of its own, so when a host dies of SIGKILL nothing it set up reaches a
//! background job: the PTY's hangup goes to the terminal's foreground group only. The guardian is
//! one small process per host (POSIX `sh` running `guardian.sh`, builtins only), started at the
//! first local launch:
//!
//! - in a session and process group of its own, so a `killpg` of the host's group (what
//!   jupyter_client does to a kernel) or a terminal's Ctrl-C does not reach it;
//! - with stdin the read end of a pipe whose write end only the host holds (close-on-exec, so no
//!   child inherits it), stdout and stderr on `/dev/null`, and every other descriptor closed on
//!   exec (no PTY, no socket);
//! - told `+SID` when a session starts and `-SID` once it has been swept.
//!
//! When the pipe reaches end-of-file (the host is gone, however it ended) it kills every process
//! whose session id is still registered (`/proc/<pid>/stat`), pass after pass until none is
//! left, and exits. A host that ends normally has closed its sessions first, so its guardian
//! finds nothing to do. If the guardian itself dies, the next registration starts a new one and
//! tells it every live session.
//!
//! What it cannot reach: a process that left its session on purpose (`setsid`), and a session
//! whose leader was reaped and whose pid was reused before the sweep (the sweep runs at once).
//! `PR_SET_PDEATHSIG` was not used: it fires when the *thread* that forked the child ends, and a
//! launch runs on a blocking-pool thread that ends when idle.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

const SCRIPT: &str = include_str!("guardian.sh");

/// The host's guardian, started at the first registration.
static GUARDIAN: Mutex<Option<State>> = Mutex::new(None);

struct State {
    /// The write end of the guardian's stdin; `None` when it could not be started.
    pipe: Option<std::fs::File>,
    child: Option<Child>,
    /// Sessions registered and not yet swept, told again to a guardian started anew.
    live: BTreeSet<i32>,
}

/// Tell the guardian that session `sid` (the leader's pid) has started.
pub fn register(sid: i32) {
    let mut guard = GUARDIAN.lock().unwrap_or_else(|e| e.into_inner());
    let state = guard.get_or_insert_with(|| State {
        pipe: None,
        child: None,
        live: BTreeSet::new(),
    });
    state.live.insert(sid);
    if state.pipe.is_some() && send(state, &format!("+{sid}\n")).is_ok() {
        return;
    }
    // No guardian yet, or it is gone: start one and tell it every live session.
    if let Some(mut old) = state.child.take() {
        let _ = old.try_wait();
    }
    match spawn() {
        Ok((pipe, child)) => {
            tracing::debug!(pid = child.id(), "guardian started");
            state.pipe = Some(pipe);
            state.child = Some(child);
            let all: String = state.live.iter().map(|s| format!("+{s}\n")).collect();
            if let Err(e) = send(state, &all) {
                tracing::warn!("the guardian does not listen ({e}): processes of local sessions may outlive a killed host");
            }
        }
        Err(e) => {
            state.pipe = None;
            tracing::warn!("cannot start the guardian ({e}): processes of local sessions may outlive a killed host");
        }
    }
}

/// Tell the guardian that session `sid` has been swept (call it before the leader is reaped, so
/// the pid cannot belong to anyone else yet).
pub fn unregister(sid: i32) {
    let mut guard = GUARDIAN.lock().unwrap_or_else(|e| e.into_inner());
    let Some(state) = guard.as_mut() else { return };
    if state.live.remove(&sid) && state.pipe.is_some() {
        let _ = send(state, &format!("-{sid}\n"));
    }
}

/// The guardian's pid, if one is running (tests and measurements).
pub fn pid() -> Option<u32> {
    let guard = GUARDIAN.lock().unwrap_or_else(|e| e.into_inner());
    guard.as_ref()?.child.as_ref().map(Child::id)
}

fn send(state: &mut State, line: &str) -> io::Result<()> {
    let pipe = state
        .pipe
        .as_mut()
        .ok_or_else(|| io::Error::other("no guardian"))?;
    // Lines are far below PIPE_BUF, so each write is atomic; a dead guardian gives EPIPE (the
    // binary ignores SIGPIPE, as every Rust program does).
    let r = pipe.write_all(line.as_bytes());
    if r.is_err() {
        state.pipe = None;
    }
    r
}

fn spawn() -> io::Result<(std::fs::File, Child)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors that we then own; O_CLOEXEC so no child inherits them
    // (the read end is handed to the guardian as its stdin, which clears the flag there only).
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let read = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    let write = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    // The script travels in the environment, so `ps` shows one short line.
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "eval \"$SPINDLE_GUARDIAN\"", "spindle-guardian"])
        .env_clear()
        .env("SPINDLE_GUARDIAN", SCRIPT)
        .stdin(Stdio::from(read))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir("/");
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // Whatever the host has open without close-on-exec (a library's descriptor, the
            // PTY) must not stay open in the guardian. close_range needs Linux 5.11; before
            // that std's own descriptors are close-on-exec anyway.
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    Ok((std::fs::File::from(write), child))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A session of its own (`setsid`) with a background job in another process group, like a
    /// bash job: `sh -c 'set -m; sleep 300 & exec sleep 301'`.
    fn session() -> Child {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "set -m; sleep 300 & exec sleep 301"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        cmd.spawn().unwrap()
    }

    fn live_members(sid: i32) -> Vec<i32> {
        super::super::session_members(sid)
            .into_iter()
            .filter(|&pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let state = stat.rfind(')').and_then(|i| stat.get(i + 2..i + 3));
                !matches!(state, None | Some("Z") | Some("X"))
            })
            .collect()
    }

    fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn end_of_file_kills_registered_sessions_and_spares_the_rest() {
        let mut doomed = session();
        let mut spared = session();
        let (d, s) = (doomed.id() as i32, spared.id() as i32);
        wait_until("both jobs run", || {
            live_members(d).len() == 2 && live_members(s).len() == 2
        });
        let (mut pipe, mut guardian) = spawn().unwrap();
        // Junk is ignored; a session told "-" is forgotten.
        pipe.write_all(format!("hello\n+\n+12x\n+{d}\n+{s}\n-{s}\n").as_bytes())
            .unwrap();
        assert!(
            guardian.try_wait().unwrap().is_none(),
            "the guardian must wait for end-of-file"
        );
        drop(pipe);
        let status = guardian.wait().unwrap();
        assert!(status.success(), "{status:?}");
        assert!(live_members(d).is_empty(), "{:?}", live_members(d));
        assert_eq!(live_members(s).len(), 2);
        let _ = doomed.wait();
        super::super::kill_session(s);
        let _ = spared.wait();
        wait_until("the spared session ends", || live_members(s).is_empty());
    }

    #[test]
    fn the_guardian_holds_no_descriptor_but_its_pipe() {
        let (pipe, mut guardian) = spawn().unwrap();
        let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", guardian.id()))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        fds.sort();
        assert_eq!(fds, ["0", "1", "2"]);
        // SAFETY: getsid on a pid.
        let sid = unsafe { libc::getsid(guardian.id() as i32) };
        assert_eq!(
            sid,
            guardian.id() as i32,
            "the guardian leads a session of its own"
        );
        drop(pipe);
        assert!(guardian.wait().unwrap().success());
    }
}
