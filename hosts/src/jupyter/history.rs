//! Execution history for `history_request`, kept per language across kernel runs.
//!
//! The store is a JSON Lines file, `$XDG_DATA_HOME/spindle/history/<language>.jsonl`
//! (`~/.local/share/…` by default): one object per line, either a session marker
//! `{"session":7,"started":"…"}` or an entry `{"session":7,"line":3,"input":"…","output":"…"}`.
//! Appending a line is cheap and never rewrites the file. Each kernel run (and each restart)
//! claims a new session number under an exclusive `flock`, so two kernels started together
//! never share one; entries carry the session number, so `range` requests work across runs.
//!
//! The lock is taken on a separate `<language>.jsonl.lock` that is never replaced, not on the
//! store: compaction renames a rewritten store over the old one, and a lock on the old inode
//! would let a second kernel, woken after the rename, read the stale file and claim the same
//! number. Every read, compaction and append opens the store afresh under that lock. The store
//! holds what was typed, so it is private: created 0600 (its directory 0700), rewritten 0600,
//! and put back to 0600 if it is found readable by others.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Entries kept in memory (and in the file after compaction).
const KEEP: usize = 20_000;
/// Compact the file when it holds more lines than this.
const COMPACT_AT: usize = 2 * KEEP;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub session: u64,
    pub line: u64,
    pub input: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    Entry(Entry),
    Session { session: u64, started: String },
}

/// Which entries a request asks for.
#[derive(Debug, Clone)]
pub enum Access {
    Tail {
        n: usize,
    },
    /// `session` is absolute when positive; 0 is the current session and negative values count
    /// back from it. `stop == 0` means "to the end".
    Range {
        session: i64,
        start: u64,
        stop: u64,
    },
    /// A glob (`*`, `?`, `[…]`) over the whole input; `n` keeps the last n matches.
    Search {
        pattern: String,
        unique: bool,
        n: Option<usize>,
    },
}

struct State {
    entries: Vec<Entry>,
    session: u64,
}

/// One language's history.
pub struct History {
    path: Option<PathBuf>,
    state: Mutex<State>,
    /// Appends go to a writer thread, off the request path.
    writer: Option<Mutex<std::sync::mpsc::Sender<ToWriter>>>,
}

impl Drop for History {
    fn drop(&mut self) {
        self.flush();
    }
}

/// What the writer thread is sent.
enum ToWriter {
    Line(Line),
    /// Append what is queued now, then answer.
    Flush(std::sync::mpsc::SyncSender<()>),
}

/// How long the writer lets entries gather before one append: executions in quick succession
/// then cost one wake-up and one locked append between them, not one each.
const BATCH: Duration = Duration::from_millis(50);

impl History {
    /// Open (or create) the store for `language` and claim a session number. Failures to read
    /// or write the file are logged and leave an in-memory history.
    pub fn open(language: &str) -> Self {
        let path = history_dir().map(|d| d.join(format!("{language}.jsonl")));
        let mut state = State {
            entries: Vec::new(),
            session: 1,
        };
        if let Some(p) = &path {
            match load_and_claim(p) {
                Ok((entries, session)) => {
                    state.entries = entries;
                    state.session = session;
                }
                Err(e) => tracing::warn!(error = %e, path = %p.display(), "history unavailable"),
            }
        }
        let writer = path.clone().and_then(|p| {
            let (tx, rx) = std::sync::mpsc::channel::<ToWriter>();
            std::thread::Builder::new()
                .name("spindle-history".into())
                .spawn(move || {
                    while let Ok(first) = rx.recv() {
                        let (mut lines, mut acks) = (Vec::new(), Vec::new());
                        let mut take = |m| match m {
                            ToWriter::Line(l) => lines.push(l),
                            ToWriter::Flush(ack) => acks.push(ack),
                        };
                        let flush = matches!(first, ToWriter::Flush(_));
                        take(first);
                        if !flush {
                            // Sends while this sleeps wake nobody.
                            std::thread::sleep(BATCH);
                        }
                        rx.try_iter().for_each(&mut take);
                        if !lines.is_empty() {
                            if let Err(e) = append(&p, &lines) {
                                tracing::warn!(error = %e, "history: cannot append");
                            }
                        }
                        for ack in acks {
                            let _ = ack.send(());
                        }
                    }
                })
                .ok()
                .map(|_| Mutex::new(tx))
        });
        Self {
            path,
            state: Mutex::new(state),
            writer,
        }
    }

    /// An in-memory history that is never written.
    pub fn disabled() -> Self {
        Self {
            path: None,
            state: Mutex::new(State {
                entries: Vec::new(),
                session: 1,
            }),
            writer: None,
        }
    }

    #[cfg(test)]
    pub fn session(&self) -> u64 {
        self.state.lock().expect("history").session
    }

    /// Start a new session (after a restart).
    pub fn new_session(&self) {
        let claimed = self.path.as_ref().and_then(|p| match load_and_claim(p) {
            Ok((_, s)) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "history: cannot claim a session");
                None
            }
        });
        let mut st = self.state.lock().expect("history");
        st.session = claimed.unwrap_or(st.session + 1).max(st.session + 1);
    }

    /// Record one execution.
    pub fn record(&self, line: u64, input: &str, output: Option<String>) {
        let entry = {
            let mut st = self.state.lock().expect("history");
            let entry = Entry {
                session: st.session,
                line,
                input: input.to_string(),
                output,
            };
            st.entries.push(entry.clone());
            if st.entries.len() > KEEP + KEEP / 4 {
                let cut = st.entries.len() - KEEP;
                st.entries.drain(..cut);
            }
            entry
        };
        if let Some(w) = &self.writer {
            let _ = w
                .lock()
                .expect("history writer")
                .send(ToWriter::Line(Line::Entry(entry)));
        }
    }

    /// Wait (a second at most) until what was recorded is in the store.
    pub fn flush(&self) {
        if let Some(w) = &self.writer {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            if w.lock()
                .expect("history writer")
                .send(ToWriter::Flush(tx))
                .is_ok()
            {
                let _ = rx.recv_timeout(Duration::from_secs(1));
            }
        }
    }

    /// The entries a request asks for, oldest first.
    pub fn query(&self, access: &Access) -> Vec<Entry> {
        let st = self.state.lock().expect("history");
        match access {
            Access::Tail { n } => {
                let from = st.entries.len().saturating_sub(*n);
                st.entries[from..].to_vec()
            }
            Access::Range {
                session,
                start,
                stop,
            } => {
                let want = if *session > 0 {
                    *session as u64
                } else {
                    (st.session as i64 + session).max(0) as u64
                };
                st.entries
                    .iter()
                    .filter(|e| {
                        e.session == want && e.line >= *start && (*stop == 0 || e.line < *stop)
                    })
                    .cloned()
                    .collect()
            }
            Access::Search { pattern, unique, n } => {
                let mut seen = HashSet::new();
                let mut out: Vec<Entry> = Vec::new();
                // Newest first, so `unique` keeps the latest of each input and `n` the last n.
                for e in st.entries.iter().rev() {
                    if !glob_match(pattern, &e.input) {
                        continue;
                    }
                    if *unique && !seen.insert(e.input.as_str()) {
                        continue;
                    }
                    out.push(e.clone());
                    if n.is_some_and(|n| out.len() >= n) {
                        break;
                    }
                }
                out.reverse();
                out
            }
        }
    }
}

/// `$XDG_DATA_HOME/spindle/history`, else `~/.local/share/spindle/history`.
fn history_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))?;
    Some(base.join("spindle").join("history"))
}

/// `<store>.lock` next to the store.
fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    path.with_file_name(name)
}

/// Take the store's lock (blocking until it is ours); released when the returned file closes.
fn lock(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    use std::os::unix::io::AsRawFd;
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(lock_path(path))?;
    loop {
        // SAFETY: flock on a descriptor we own; released when the file is closed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(f);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Open the store for reading and appending (the caller holds the lock).
fn open_store(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// Mode 0600 on a store that is readable or writable by others (an older Spindle compacted
/// stores with the default mode).
fn keep_private(f: &File) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if f.metadata()?.permissions().mode() & 0o077 != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

fn append(path: &Path, lines: &[Line]) -> std::io::Result<()> {
    let mut text = Vec::new();
    for line in lines {
        serde_json::to_writer(&mut text, line)?;
        text.push(b'\n');
    }
    let _lock = lock(path)?;
    open_store(path)?.write_all(&text)
}

/// Write `entries` to a fresh, private file next to `path` and rename it over `path` (the
/// caller holds the lock, so no append is lost).
fn rewrite(path: &Path, entries: &[Entry]) -> std::io::Result<()> {
    let (tmp, file) = crate::auth::private_temp(path)?;
    let written = (|| {
        let mut out = std::io::BufWriter::new(&file);
        for e in entries {
            serde_json::to_writer(&mut out, &Line::Entry(e.clone()))?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        drop(out);
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Read the store, append a new session marker, and return the entries and the new number.
fn load_and_claim(path: &Path) -> std::io::Result<(Vec<Entry>, u64)> {
    let _lock = lock(path)?;
    let mut f = open_store(path)?;
    keep_private(&f)?;
    let mut entries = Vec::new();
    let mut max_session = 0;
    let mut lines = 0usize;
    for line in BufReader::new(&f).lines() {
        let line = line?;
        lines += 1;
        match serde_json::from_str::<Line>(&line) {
            Ok(Line::Entry(e)) => {
                max_session = max_session.max(e.session);
                entries.push(e);
            }
            Ok(Line::Session { session, .. }) => max_session = max_session.max(session),
            Err(_) => {} // a torn or foreign line: skip it
        }
    }
    let session = max_session + 1;
    if entries.len() > KEEP {
        entries.drain(..entries.len() - KEEP);
    }
    if lines > COMPACT_AT {
        rewrite(path, &entries)?;
        f = open_store(path)?;
    }
    let marker = Line::Session {
        session,
        started: chrono::Utc::now().to_rfc3339(),
    };
    let mut text = serde_json::to_vec(&marker)?;
    text.push(b'\n');
    f.write_all(&text)?;
    Ok((entries, session))
}

/// SQLite-style GLOB: `*` any run, `?` one character, `[abc]`/`[a-z]`/`[^x]` a class.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = class_match(&p, pi, t[ti]) {
                        if matched {
                            pi = next;
                            ti += 1;
                            continue;
                        }
                    } else if t[ti] == '[' {
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                }
                c if c == t[ti] => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Match `c` against the class opening at `p[at] == '['`: (matched, index after `]`), or None
/// when the class is not closed.
fn class_match(p: &[char], at: usize, c: char) -> Option<(bool, usize)> {
    let mut i = at + 1;
    let negate = i < p.len() && p[i] == '^';
    if negate {
        i += 1;
    }
    let mut found = false;
    let mut first = true;
    while i < p.len() && (p[i] != ']' || first) {
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            if p[i] <= c && c <= p[i + 2] {
                found = true;
            }
            i += 3;
        } else {
            if p[i] == c {
                found = true;
            }
            i += 1;
        }
    }
    if i >= p.len() {
        return None;
    }
    Some((found != negate, i + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob() {
        assert!(glob_match("1?2*", "1+2+3"));
        assert!(!glob_match("1?2*", "[n*n for n in range(1, 4)]"));
        assert!(glob_match("*", ""));
        assert!(glob_match("*range*", "[n*n for n in range(1, 4)]"));
        assert!(glob_match("a[bc]d", "acd"));
        assert!(!glob_match("a[^bc]d", "acd"));
        assert!(glob_match("a[0-9]", "a7"));
        assert!(!glob_match("abc", "abcd"));
        assert!(glob_match("ab*", "ab"));
    }

    #[test]
    fn queries() {
        let h = History::disabled();
        for (i, code) in ["1+2+3", "x = 1", "1+2+3", "print(x)"].iter().enumerate() {
            h.record(i as u64 + 1, code, None);
        }
        let tail = h.query(&Access::Tail { n: 2 });
        assert_eq!(tail.iter().map(|e| e.line).collect::<Vec<_>>(), vec![3, 4]);
        let range = h.query(&Access::Range {
            session: 0,
            start: 2,
            stop: 3,
        });
        assert_eq!(range.len(), 1);
        assert_eq!(range[0].input, "x = 1");
        let s = h.query(&Access::Search {
            pattern: "1?2*".into(),
            unique: false,
            n: None,
        });
        assert_eq!(s.len(), 2);
        let u = h.query(&Access::Search {
            pattern: "1?2*".into(),
            unique: true,
            n: None,
        });
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].line, 3);
        h.new_session();
        assert_eq!(h.session(), 2);
        h.record(1, "y", None);
        assert_eq!(
            h.query(&Access::Range {
                session: -1,
                start: 1,
                stop: 0
            })
            .len(),
            4
        );
    }

    #[test]
    fn persisted_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("py.jsonl");
        let (e, s1) = load_and_claim(&p).unwrap();
        assert!(e.is_empty());
        append(
            &p,
            &[Line::Entry(Entry {
                session: s1,
                line: 1,
                input: "a".into(),
                output: Some("1".into()),
            })],
        )
        .unwrap();
        let (e, s2) = load_and_claim(&p).unwrap();
        assert_eq!(s2, s1 + 1);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].output.as_deref(), Some("1"));
    }

    /// A store over the compaction threshold, mode 0600: `sessions` sessions of entries.
    fn big_store(p: &Path, sessions: u64) {
        use std::os::unix::fs::PermissionsExt;
        let mut text = String::new();
        let per = (COMPACT_AT as u64 + 10).div_ceil(sessions);
        for s in 1..=sessions {
            for l in 1..=per {
                let e = Line::Entry(Entry {
                    session: s,
                    line: l,
                    input: format!("x = {l}"),
                    output: None,
                });
                text.push_str(&serde_json::to_string(&e).unwrap());
                text.push('\n');
            }
        }
        std::fs::write(p, text).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn compaction_keeps_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("python.jsonl");
        big_store(&p, 4);
        let (entries, s) = load_and_claim(&p).unwrap();
        assert_eq!(s, 5);
        assert_eq!(entries.len(), KEEP);
        let lines = std::fs::read_to_string(&p).unwrap().lines().count();
        assert_eq!(lines, KEEP + 1, "compacted, plus the new session marker");
        assert_eq!(mode(&p), 0o600);
        assert_eq!(mode(&lock_path(&p)), 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_store_readable_by_others_is_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("python.jsonl");
        std::fs::write(&p, "").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        load_and_claim(&p).unwrap();
        assert_eq!(mode(&p), 0o600);
    }

    #[test]
    fn concurrent_claims_during_compaction_get_distinct_sessions() {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("python.jsonl");
            big_store(&p, 3);
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(6));
            let claims: Vec<_> = (0..6)
                .map(|_| {
                    let (p, barrier) = (p.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        let (_, s) = load_and_claim(&p).unwrap();
                        append(
                            &p,
                            &[Line::Entry(Entry {
                                session: s,
                                line: 1,
                                input: format!("claimed {s}"),
                                output: None,
                            })],
                        )
                        .unwrap();
                        s
                    })
                })
                .collect();
            let mut sessions: Vec<u64> = claims.into_iter().map(|t| t.join().unwrap()).collect();
            sessions.sort();
            assert_eq!(sessions, (4..10).collect::<Vec<_>>());
            // Every claimer's entry is in the store that is there now.
            let text = std::fs::read_to_string(&p).unwrap();
            for s in sessions {
                assert!(
                    text.contains(&format!("\"claimed {s}\"")),
                    "session {s} lost"
                );
            }
        }
    }
}
