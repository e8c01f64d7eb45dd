//! Terminal prompts in the actor: when to look at the terminal (how is `crate::tty_prompt`),
//! what the `input_request` carries, where the answer goes, and what `allow_stdin: false` does.
//!
//! The terminal is only looked at while an execution runs and its output has been quiet for
//! [`QUIET`]; while the output stays quiet the looks thin out to one every [`MAX_GAP`], and any
//! output starts over. So an idle session costs nothing and streaming output costs one
//! `Instant::now()` per read.
//!
//! **The prompt text** is the trailing partial line of the execution's console output. When the
//! output goes quiet, what follows the last newline is held back from the console stream for up
//! to [`QUIET`] (never longer, nor beyond 4 KiB): if a program is then seen waiting, the text
//! leaves the console stream and travels in the `input_request` only (as Python's `input()`
//! prompt does); if not, it is emitted as it was. A program that prints, pauses, and only then
//! reads finds its text already in the console; the request carries it as well.
//!
//! A wait is reported only when two looks [`CONFIRM`] apart see the same thread in the same
//! read with nothing in between, so that a shell reading its next command line just after its
//! `done` (already on its way) is not taken for a prompt.

use std::sync::Arc;
use std::time::Duration;

use spindle_protocol::{Body, ConsoleFormat, InputRequest};
use tokio::time::Instant;

use super::{Actor, Current};
use crate::language::Outbound;
use crate::launcher::ProcessControl;
use crate::tty_prompt::TtyWait;

/// How long output must be quiet before the terminal is looked at; also the longest a
/// trailing partial line is held back.
pub(in crate::session) const QUIET: Duration = Duration::from_millis(50);
/// A wait seen once is looked at again after this before it is reported.
const CONFIRM: Duration = Duration::from_millis(20);
/// The longest gap between looks while output stays quiet.
const MAX_GAP: Duration = Duration::from_secs(1);
/// How often to look whether a pending input request was answered.
const PENDING_GAP: Duration = Duration::from_millis(250);
/// Longest prompt text held back or carried.
const MAX_PROMPT: usize = 4096;

/// Per-execution state of the terminal watch.
#[derive(Debug)]
pub(in crate::session) struct Watch {
    allow_stdin: bool,
    /// When to look next.
    at: Option<Instant>,
    gap: Duration,
    /// The trailing partial line of each console stream so far (at most [`MAX_PROMPT`];
    /// `None` once longer: then it is no prompt), stdout then stderr, and which was written
    /// last. Per stream, because the two may arrive out of step (a sandbox's terminal comes
    /// through the engine, its stderr through a FIFO).
    tails: [Option<String>; 2],
    last: usize,
    /// Since when the pending console text's partial line is held back.
    held_since: Option<Instant>,
    /// A wait seen once, to be confirmed.
    seen: Option<TtyWait>,
    /// Whether this execution was told that a program got end-of-file.
    told_eof: bool,
}

impl Watch {
    pub(in crate::session) fn new(allow_stdin: bool) -> Self {
        Watch {
            allow_stdin,
            at: Some(Instant::now() + QUIET),
            gap: QUIET,
            tails: [Some(String::new()), Some(String::new())],
            last: 0,
            held_since: None,
            seen: None,
            told_eof: false,
        }
    }

    /// Console text went out (or into the pending buffer): keep the trailing partial line.
    pub(in crate::session) fn note(&mut self, format: ConsoleFormat, text: &str) {
        let i = usize::from(format == ConsoleFormat::Stderr);
        self.last = i;
        let tail = &mut self.tails[i];
        // Only the last MAX_PROMPT + 1 bytes can hold a newline that leaves a tail short
        // enough to keep: a megabyte of output is not scanned, or copied, for its prompt.
        let from = text.len().saturating_sub(MAX_PROMPT + 1);
        match text.as_bytes()[from..].iter().rposition(|&b| b == b'\n') {
            Some(at) => *tail = Some(text[from + at + 1..].to_string()),
            None if from > 0 => *tail = None,
            None => {
                if let Some(t) = tail {
                    t.push_str(text);
                }
            }
        }
        if tail.as_ref().is_some_and(|t| t.len() > MAX_PROMPT) {
            *tail = None;
        }
    }

    /// The prompt: the partial line of the stream written last, or else of the other one.
    fn take_prompt(&mut self) -> String {
        let (a, b) = (self.last, 1 - self.last);
        let pick = match (&self.tails[a], &self.tails[b]) {
            (Some(t), _) if !t.is_empty() => a,
            (_, Some(t)) if !t.is_empty() => b,
            _ => a,
        };
        let prompt = self.tails[pick].take().unwrap_or_default();
        self.tails = [Some(String::new()), Some(String::new())];
        prompt
    }
}

/// The terminal input request that is waiting for its answer.
#[derive(Debug, Clone)]
pub(in crate::session) struct TtyPending {
    /// The execution it belongs to.
    pub(in crate::session) request: String,
    pub(in crate::session) prompt: String,
}

/// Answer a terminal input request (`Session::input_reply`). `None`: it is not one (a request
/// of the bootstrap is pending); `Some(Ok(bytes))`: write them to the terminal;
/// `Some(Err(notice))`: the answer is discarded, and the session says so.
pub(in crate::session) fn reply(
    tty: TtyPending,
    input_pending: bool,
    running: Option<&str>,
    control: Option<&Arc<dyn ProcessControl>>,
    value: &str,
) -> Option<Result<Vec<u8>, String>> {
    let live = input_pending && running == Some(tty.request.as_str());
    if !live && input_pending {
        return None; // a stale terminal request; the bootstrap's pending one gets the answer
    }
    let prompt = tty.prompt.trim();
    let what = if prompt.is_empty() {
        "a terminal prompt".to_string()
    } else {
        format!("the terminal prompt {prompt:?}")
    };
    if !live {
        return Some(Err(format!(
            "the answer to {what} was discarded: the execution that asked for it has ended"
        )));
    }
    Some(match control.and_then(|c| c.tty_wait()) {
        Some(w) => Ok(w.termios.reply_bytes(value)),
        None => Err(format!(
            "the answer to {what} was discarded: the program that asked no longer waits for it"
        )),
    })
}

impl Actor {
    /// When the terminal is to be looked at next (`None`: no execution runs).
    pub(super) fn prompt_at(&self) -> Option<Instant> {
        match &self.current {
            Some(Current::Exec(ex)) => ex.prompt.at,
            _ => None,
        }
    }

    /// Output arrived: the terminal is looked at once it has been quiet again for [`QUIET`].
    pub(super) fn prompt_output_seen(&mut self) {
        if let Some(Current::Exec(ex)) = &mut self.current {
            if ex.prompt.at.is_some() {
                ex.prompt.at = Some(Instant::now() + QUIET);
                ex.prompt.gap = QUIET;
                ex.prompt.seen = None;
            }
        }
    }

    /// The streams are quiet: emit the pending console text, but hold back its trailing
    /// partial line (a prompt, maybe) for up to [`QUIET`].
    pub(super) async fn flush_quiet(&mut self) {
        let mut ex = match self.current.take() {
            Some(Current::Exec(ex)) => ex,
            other => {
                self.current = other;
                return;
            }
        };
        let now = Instant::now();
        // Held for at most QUIET, or while a wait seen is being confirmed.
        let fresh = ex.prompt.seen.is_some()
            || ex
                .prompt
                .held_since
                .is_none_or(|t| now.duration_since(t) < QUIET);
        match ex.pending.take() {
            Some((format, mut text))
                if ex.prompt.allow_stdin && fresh && ex.prompt.at.is_some() =>
            {
                let cut = text.rfind('\n').map_or(0, |i| i + 1);
                if text.len() - cut <= MAX_PROMPT && cut < text.len() {
                    let partial = text.split_off(cut);
                    if !text.is_empty() {
                        self.content(&mut ex, Body::console(format, text), true)
                            .await;
                    }
                    ex.pending = Some((format, partial));
                    ex.prompt.held_since.get_or_insert(now);
                } else {
                    ex.pending = Some((format, text));
                    ex.prompt.held_since = None;
                    self.flush_console(&mut ex).await;
                }
            }
            other => {
                ex.pending = other;
                ex.prompt.held_since = None;
                self.flush_console(&mut ex).await;
            }
        }
        self.current = Some(Current::Exec(ex));
    }

    /// Time to look at the terminal.
    pub(super) async fn on_prompt_timer(&mut self) {
        let now = Instant::now();
        let (control, input_pending) = {
            let s = self.inner.shared.lock().expect("session state");
            (s.control.clone(), s.input_pending)
        };
        let busy = self.proc.as_ref().is_none_or(|p| {
            p.held.is_some() || !p.pty_rx.is_empty() || !p.err_rx.is_empty() || !p.evt_rx.is_empty()
        });
        let Some(Current::Exec(ex)) = &mut self.current else {
            return;
        };
        if input_pending || busy {
            // Someone is asked already, or output is on its way: look again later.
            ex.prompt.seen = None;
            ex.prompt.at = Some(now + if busy { CONFIRM } else { PENDING_GAP });
            if input_pending {
                self.release_prompt_text().await;
            }
            return;
        }
        let Some(control) = control else {
            ex.prompt.at = None;
            return;
        };
        // A scan of /proc: off the runtime's threads.
        let wait = tokio::task::spawn_blocking(move || control.tty_wait())
            .await
            .ok()
            .flatten();
        let Some(Current::Exec(ex)) = &mut self.current else {
            return;
        };
        match (wait, ex.prompt.seen) {
            (Some(w), Some(s)) if (w.pid, w.tid) == (s.pid, s.tid) => {
                ex.prompt.seen = None;
                self.report(w).await;
            }
            (Some(w), _) => {
                ex.prompt.seen = Some(w);
                ex.prompt.at = Some(Instant::now() + CONFIRM);
            }
            (None, _) => {
                ex.prompt.seen = None;
                ex.prompt.gap = (ex.prompt.gap * 2).min(MAX_GAP);
                ex.prompt.at = Some(Instant::now() + ex.prompt.gap);
                self.release_prompt_text().await;
            }
        }
    }

    /// Emit the partial line held back as a possible prompt.
    async fn release_prompt_text(&mut self) {
        let held =
            matches!(&self.current, Some(Current::Exec(ex)) if ex.prompt.held_since.is_some());
        if held {
            self.flush_pending().await;
            if let Some(Current::Exec(ex)) = &mut self.current {
                ex.prompt.held_since = None;
            }
        }
    }

    /// A program waits reading the terminal: ask for input, or give it end-of-file.
    async fn report(&mut self, w: TtyWait) {
        let Some(Current::Exec(mut ex)) = self.current.take() else {
            return;
        };
        ex.prompt.gap = QUIET;
        if !ex.prompt.allow_stdin {
            self.send(Outbound {
                pty: w.termios.eof_bytes(),
                ..Outbound::default()
            });
            ex.prompt.at = Some(Instant::now() + QUIET);
            let tell = !ex.prompt.told_eof;
            ex.prompt.told_eof = true;
            ex.prompt.held_since = None;
            self.current = Some(Current::Exec(ex));
            if tell {
                tracing::debug!(
                    pid = w.pid,
                    "terminal read under allow_stdin false: end-of-file"
                );
                self.notice(
                    "a program waited for input from the terminal, but this execution does not \
                     accept input (allow_stdin is false): it was given end-of-file"
                        .to_string(),
                )
                .await;
            }
            return;
        }
        let prompt = ex.prompt.take_prompt();
        // What is held back is the prompt: it goes in the request, not in the console.
        if ex.prompt.held_since.take().is_some() {
            if let Some((_, t)) = &ex.pending {
                if !t.contains('\n') && prompt.ends_with(t.as_str()) {
                    ex.pending = None;
                }
            }
        }
        ex.prompt.at = Some(Instant::now() + PENDING_GAP);
        let password = w.password();
        let pending = TtyPending {
            request: ex.id.clone(),
            prompt: prompt.clone(),
        };
        self.current = Some(Current::Exec(ex));
        tracing::debug!(pid = w.pid, password, "terminal prompt");
        self.set_shared(|s| {
            s.input_pending = true;
            s.tty_input = Some(pending);
        });
        self.block(Body::InputRequest {
            content: Some(InputRequest { prompt, password }),
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail_after(texts: &[&str]) -> Option<String> {
        let mut w = Watch::new(true);
        for t in texts {
            w.note(ConsoleFormat::Stdout, t);
        }
        w.tails[0].clone()
    }

    #[test]
    fn the_tail_is_the_partial_line_however_long_the_output() {
        let big = "x".repeat(1 << 20);
        assert_eq!(tail_after(&["a\nEnter: "]).as_deref(), Some("Enter: "));
        assert_eq!(tail_after(&["En", "ter", ": "]).as_deref(), Some("Enter: "));
        assert_eq!(tail_after(&[&big, "\nok? "]).as_deref(), Some("ok? "));
        let with_prompt = format!("{big}\nname: ");
        assert_eq!(tail_after(&[&with_prompt]).as_deref(), Some("name: "));
        // A partial line longer than MAX_PROMPT is no prompt, in one piece or in several.
        assert_eq!(tail_after(&[&big]), None);
        assert_eq!(tail_after(&["a", &big]), None);
        let long = "y".repeat(MAX_PROMPT + 1);
        assert_eq!(tail_after(&[&format!("\n{long}")]), None);
        let exact = "z".repeat(MAX_PROMPT);
        assert_eq!(tail_after(&[&format!("{big}\n{exact}")]), Some(exact));
        // Multi-byte text right at the window's edge.
        let wide = format!("{}\n{}", "é".repeat(MAX_PROMPT), "ü".repeat(10));
        assert_eq!(tail_after(&[&wide]), Some("ü".repeat(10)));
        // A newline starts a fresh tail.
        assert_eq!(tail_after(&[&big, "\n"]).as_deref(), Some(""));
    }
}
