//! Line editing: the rustyline helper. The session's own is-complete check decides whether Enter
//! submits (so `def f():`, an open bracket or a heredoc continues, indented as the language
//! suggests), Tab asks the session for completions (magics and file names are completed here),
//! and the prompt is coloured.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustyline::completion::{Completer, FilenameCompleter, Pair};
use rustyline::highlight::{CmdKind, Highlighter};
use rustyline::hint::Hinter;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Cmd, ConditionalEventHandler, Context, Event, EventContext, RepeatCount};
use spindle_kernel::Query;
use tokio::runtime::Handle;

use super::backend::Backend;
use crate::magics;

/// How long Enter may wait for the session's is-complete answer before a local guess is used.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// The first use of a language starts its process, which may take longer.
const START_TIMEOUT: Duration = Duration::from_secs(25);

/// Whether Enter should submit the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completeness {
    Complete,
    /// Continue on a new line with this indent.
    Incomplete(String),
}

/// Asks the session whether an input is complete, with a one-entry cache (Enter's key handler
/// and the validator ask about the same text back to back).
pub struct Checker<B: Backend> {
    backend: Arc<B>,
    rt: Handle,
    /// The current language, changed by `%python` and friends.
    pub lang: Arc<Mutex<&'static str>>,
    /// Chat mode: plain text is a message, complete at Enter.
    pub chat: Arc<AtomicBool>,
    cache: Mutex<Option<(&'static str, String, Completeness)>>,
}

impl<B: Backend> Checker<B> {
    pub fn new(backend: Arc<B>, rt: Handle, lang: Arc<Mutex<&'static str>>) -> Self {
        Self {
            backend,
            rt,
            lang,
            chat: Arc::new(AtomicBool::new(false)),
            cache: Mutex::new(None),
        }
    }

    fn current(&self) -> &'static str {
        *self.lang.lock().expect("lang")
    }

    pub fn check(&self, input: &str) -> Completeness {
        let lang = self.current();
        if self.chat.load(Ordering::Acquire) && !input.starts_with('%') {
            return Completeness::Complete;
        }
        if let Some((l, text, c)) = &*self.cache.lock().expect("cache") {
            if *l == lang && text == input {
                return c.clone();
            }
        }
        let c = self.compute(lang, input);
        *self.cache.lock().expect("cache") = Some((lang, input.to_string(), c.clone()));
        c
    }

    fn compute(&self, lang: &'static str, input: &str) -> Completeness {
        if let Some((cell_lang, body)) = magics::cell_magic(input) {
            // A cell in another language ends with an empty line (unless that language says
            // the body is still open, as in a heredoc).
            if body.trim().is_empty() {
                return Completeness::Incomplete(String::new());
            }
            let last_blank = input
                .rsplit('\n')
                .next()
                .is_some_and(|l| l.trim().is_empty());
            if last_blank {
                let asked = format!("{}\n\n", body.trim_end());
                return match self.ask(cell_lang, &asked) {
                    Some((s, _)) if s == "incomplete" && !ends_with_blank_lines(body, 2) => {
                        Completeness::Incomplete(String::new())
                    }
                    _ => Completeness::Complete,
                };
            }
            return match self.ask(cell_lang, body) {
                Some((s, indent)) if s == "incomplete" => Completeness::Incomplete(indent),
                _ => Completeness::Incomplete(String::new()),
            };
        }
        if let Some(command) = input.strip_prefix("%%") {
            if command.starts_with(char::is_whitespace) && !command.trim().is_empty() {
                if let Some((s, indent)) = self.ask("bash", command.trim_start()) {
                    if s == "incomplete" {
                        return Completeness::Incomplete(indent);
                    }
                }
            }
            return Completeness::Complete;
        }
        if input.starts_with('%') || input.trim().is_empty() {
            return Completeness::Complete;
        }
        // An empty last line means Enter was pressed on it: say so with a blank line, which
        // ends an indented block (as in Python's own REPL).
        let asked = match input.rsplit_once('\n') {
            Some((head, last)) if last.trim().is_empty() => format!("{head}\n\n"),
            _ => input.to_string(),
        };
        match self.ask(lang, &asked) {
            Some((s, indent)) if s == "incomplete" => {
                // Three empty lines in a row submit anyway, so a wrong "incomplete" never
                // traps the user.
                if ends_with_blank_lines(input, 3) {
                    Completeness::Complete
                } else {
                    Completeness::Incomplete(indent)
                }
            }
            Some((s, _)) if s == "complete" || s == "invalid" => Completeness::Complete,
            _ => guess(lang, input),
        }
    }

    /// The session's answer: (status, indent); `None` when it cannot answer in time.
    fn ask(&self, lang: &'static str, code: &str) -> Option<(String, String)> {
        if !self.backend.available() {
            return None;
        }
        let limit = if self.backend.is_live(lang) {
            CHECK_TIMEOUT
        } else {
            START_TIMEOUT
        };
        let backend = self.backend.clone();
        let query = Query::IsComplete {
            code: code.to_string(),
        };
        let reply = self
            .rt
            .block_on(async move { tokio::time::timeout(limit, backend.query(lang, query)).await })
            .ok()?
            .map_err(|e| tracing::debug!(error = %e, "is_complete failed"))
            .ok()?;
        let status = reply["status"].as_str()?.to_string();
        let indent = reply["indent"].as_str().unwrap_or_default().to_string();
        Some((status, indent))
    }

    /// Completions from the session: (byte offset in `code` where they apply, candidates).
    fn complete_in(
        &self,
        lang: &'static str,
        code: &str,
        pos: usize,
    ) -> Option<(usize, Vec<String>)> {
        if !self.backend.available() {
            return None;
        }
        let limit = if self.backend.is_live(lang) {
            CHECK_TIMEOUT
        } else {
            START_TIMEOUT
        };
        let cursor_pos = code[..pos].chars().count();
        let backend = self.backend.clone();
        let query = Query::Complete {
            code: code.to_string(),
            cursor_pos,
        };
        let reply = self
            .rt
            .block_on(async move { tokio::time::timeout(limit, backend.query(lang, query)).await })
            .ok()?
            .ok()?;
        let start_chars = reply["cursor_start"].as_u64().unwrap_or(cursor_pos as u64) as usize;
        let start = code
            .char_indices()
            .nth(start_chars)
            .map_or(code.len(), |(i, _)| i)
            .min(pos);
        let matches = reply["matches"]
            .as_array()?
            .iter()
            .filter_map(|m| m.as_str().map(str::to_string))
            .collect();
        Some((start, matches))
    }
}

fn ends_with_blank_lines(s: &str, n: usize) -> bool {
    let lines: Vec<&str> = s.split('\n').collect();
    lines.len() > n && lines[lines.len() - n..].iter().all(|l| l.trim().is_empty())
}

/// A local guess when the session cannot say: open brackets, a trailing `\`, or (Python) a
/// trailing `:` continue the input.
pub fn guess(lang: &str, input: &str) -> Completeness {
    let mut depth: i32 = 0;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for ch in input.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match (quote, ch) {
            (_, '\\') => escaped = true,
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => quote = Some(ch),
            (None, '(' | '[' | '{') => depth += 1,
            (None, ')' | ']' | '}') => depth -= 1,
            _ => {}
        }
    }
    let trimmed = input.trim_end();
    if ends_with_blank_lines(input, 3) {
        return Completeness::Complete;
    }
    if depth > 0 || input.ends_with('\\') {
        return Completeness::Incomplete(String::new());
    }
    if lang == "python" && trimmed.ends_with(':') {
        return Completeness::Incomplete("    ".into());
    }
    Completeness::Complete
}

/// Enter: insert a newline with the language's indent while the input is incomplete (and the
/// cursor at its end); otherwise rustyline's own accept, which asks the validator (cached).
pub struct EnterHandler<B: Backend>(pub Arc<Checker<B>>);

impl<B: Backend> ConditionalEventHandler for EnterHandler<B> {
    fn handle(&self, _: &Event, _: RepeatCount, _: bool, ctx: &EventContext) -> Option<Cmd> {
        if ctx.pos() != ctx.line().len() {
            return None;
        }
        match self.0.check(ctx.line()) {
            Completeness::Incomplete(indent) => Some(Cmd::Insert(1, format!("\n{indent}"))),
            Completeness::Complete => None,
        }
    }
}

/// Ctrl-C at the prompt: remember whether the line was empty (two in a row on an empty line
/// exit), then rustyline's own interrupt.
pub struct CtrlCHandler(pub Arc<AtomicBool>);

impl ConditionalEventHandler for CtrlCHandler {
    fn handle(&self, _: &Event, _: RepeatCount, _: bool, ctx: &EventContext) -> Option<Cmd> {
        self.0.store(ctx.line().is_empty(), Ordering::Release);
        None
    }
}

/// The rustyline helper.
pub struct ReplHelper<B: Backend> {
    pub checker: Arc<Checker<B>>,
    pub color: bool,
    files: FilenameCompleter,
}

impl<B: Backend> ReplHelper<B> {
    pub fn new(checker: Arc<Checker<B>>, color: bool) -> Self {
        Self {
            checker,
            color,
            files: FilenameCompleter::new(),
        }
    }
}

impl<B: Backend> Completer for ReplHelper<B> {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = &line[..pos];
        let pairs = |start: usize, v: Vec<String>| {
            (
                start,
                v.into_iter()
                    .map(|m| Pair {
                        display: m.clone(),
                        replacement: m,
                    })
                    .collect::<Vec<_>>(),
            )
        };
        if before.starts_with('%') && !before.contains(char::is_whitespace) {
            return Ok(pairs(0, magics::completions(before)));
        }
        for file_magic in ["%save ", "%load ", "%jupyter "] {
            if before.starts_with(file_magic) {
                return self.files.complete(line, pos, ctx);
            }
        }
        // Code for another language: a cell magic's body, or a `%%` shell command.
        let (lang, offset) = if let Some((lang, _)) = magics::cell_magic(line) {
            match line.find('\n') {
                Some(nl) if pos > nl => (lang, nl + 1),
                _ => return Ok((pos, Vec::new())),
            }
        } else if let Some(cmd) = line.strip_prefix("%%") {
            if !cmd.starts_with(char::is_whitespace) {
                return Ok((pos, Vec::new()));
            }
            let skip = cmd.len() - cmd.trim_start().len();
            if pos < 2 + skip {
                return Ok((pos, Vec::new()));
            }
            ("bash", 2 + skip)
        } else {
            (self.checker.current(), 0)
        };
        let code = &line[offset..];
        match self.checker.complete_in(lang, code, pos - offset) {
            Some((start, matches)) => Ok(pairs(start + offset, matches)),
            None => Ok((pos, Vec::new())),
        }
    }
}

impl<B: Backend> Hinter for ReplHelper<B> {
    type Hint = String;
}

impl<B: Backend> Highlighter for ReplHelper<B> {
    fn highlight_prompt<'b, 's: 'b, 'p: 'b>(
        &'s self,
        prompt: &'p str,
        _default: bool,
    ) -> Cow<'b, str> {
        if !self.color {
            return Cow::Borrowed(prompt);
        }
        // `[python 3]> `: the language in bold cyan, the count dim.
        match prompt.strip_prefix('[').and_then(|p| p.split_once(']')) {
            Some((inner, rest)) => {
                let (lang, count) = match inner.split_once(' ') {
                    Some((l, c)) => (l, format!(" {c}")),
                    // `[chat]> `
                    None => (inner, String::new()),
                };
                Cow::Owned(format!(
                    "\x1b[2m[\x1b[0m\x1b[1;36m{lang}\x1b[0m\x1b[2m{count}]\x1b[0m\x1b[1m{rest}\x1b[0m"
                ))
            }
            None => Cow::Borrowed(prompt),
        }
    }

    fn highlight_char(&self, _line: &str, _pos: usize, _kind: CmdKind) -> bool {
        false
    }
}

impl<B: Backend> Validator for ReplHelper<B> {
    fn validate(&self, ctx: &mut ValidationContext) -> rustyline::Result<ValidationResult> {
        Ok(match self.checker.check(ctx.input()) {
            Completeness::Complete => ValidationResult::Valid(None),
            Completeness::Incomplete(_) => ValidationResult::Incomplete,
        })
    }
}

impl<B: Backend> rustyline::Helper for ReplHelper<B> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_guess() {
        assert_eq!(
            guess("python", "f(1,"),
            Completeness::Incomplete(String::new())
        );
        assert_eq!(
            guess("python", "def f():"),
            Completeness::Incomplete("    ".into())
        );
        assert_eq!(guess("python", "print('(')"), Completeness::Complete);
        assert_eq!(
            guess("bash", "echo a \\"),
            Completeness::Incomplete(String::new())
        );
        assert_eq!(
            guess("node", "x = {"),
            Completeness::Incomplete(String::new())
        );
        assert_eq!(guess("node", "x = {\n\n\n"), Completeness::Complete);
        assert_eq!(guess("bash", "ls"), Completeness::Complete);
    }

    #[test]
    fn blank_line_runs() {
        assert!(ends_with_blank_lines("a\n\n", 1));
        assert!(ends_with_blank_lines("a\n  \n ", 2));
        assert!(!ends_with_blank_lines("a\n", 2));
    }
}
