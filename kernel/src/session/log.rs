//! The session's log: its most recent chunks, bounded in bytes, and the watchers reading it.
//!
//! There is one log per session and no per-watcher queue: a [`Watcher`] is a cursor (the `seq`
//! of the next chunk it reads) into the log. The log drops its oldest chunks once their sizes
//! add up to more than its budget, so however many watchers stall, a session's watch side holds
//! at most its budget (plus the newest chunk, which is always kept). A watcher whose cursor
//! fell behind the oldest chunk kept is told how many it missed and jumps to that chunk. The
//! same log serves replays: a watcher can start at any `seq` still kept.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};

use spindle_protocol::{Body, Chunk};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::watch;

/// What a watcher reads next.
#[derive(Debug, Clone)]
pub enum Watched {
    /// The next chunk.
    Chunk(Arc<Chunk>),
    /// This many chunks were dropped from the log before the watcher read them; the next item
    /// is the oldest chunk still kept.
    Missed(u64),
}

#[derive(Debug)]
struct State {
    chunks: VecDeque<(Arc<Chunk>, usize)>,
    /// The `seq` of `chunks[0]`.
    first: u64,
    bytes: usize,
    budget: usize,
    /// Chunks dropped from the log so far.
    dropped: u64,
}

impl State {
    fn next(&self) -> u64 {
        self.first + self.chunks.len() as u64
    }
}

/// The writing side, owned by the session (when it goes, watchers see the end).
#[derive(Debug)]
pub(crate) struct Log {
    state: Arc<Mutex<State>>,
    /// The `seq` the next chunk will have; watchers wait on it.
    head: watch::Sender<u64>,
}

impl Log {
    pub(crate) fn new(budget: usize) -> Self {
        let (head, _) = watch::channel(0);
        Log {
            state: Arc::new(Mutex::new(State {
                chunks: VecDeque::new(),
                first: 0,
                bytes: 0,
                budget,
                dropped: 0,
            })),
            head,
        }
    }

    /// Append a chunk. Its `seq` must be the next one (the actor numbers chunks as it makes
    /// them); the oldest chunks go while the log is over budget, never the newest.
    pub(crate) fn push(&self, chunk: Arc<Chunk>) {
        let size = chunk_bytes(&chunk);
        let next = {
            let mut s = self.state.lock().expect("session log");
            if s.chunks.is_empty() {
                s.first = chunk.seq;
            }
            debug_assert_eq!(chunk.seq, s.next(), "chunks enter the log in seq order");
            s.chunks.push_back((chunk, size));
            s.bytes += size;
            while s.bytes > s.budget && s.chunks.len() > 1 {
                let (_, gone) = s.chunks.pop_front().expect("more than one");
                s.bytes -= gone;
                s.first += 1;
                s.dropped += 1;
            }
            s.next()
        };
        self.head.send_replace(next);
    }

    /// A watcher whose first chunk has `seq` = `from` (clamped to what can still come: a
    /// `from` beyond the next chunk starts at the next chunk).
    pub(crate) fn watcher(&self, from: Option<u64>) -> Watcher {
        let head = self.head.subscribe();
        let next = {
            let s = self.state.lock().expect("session log");
            from.map_or(s.next(), |f| f.min(s.next()))
        };
        Watcher {
            state: self.state.clone(),
            head,
            next,
        }
    }

    pub(crate) fn stats(&self) -> LogStats {
        let s = self.state.lock().expect("session log");
        LogStats {
            first_seq: s.first,
            next_seq: s.next(),
            bytes: s.bytes as u64,
            budget: s.budget as u64,
            dropped: s.dropped,
        }
    }
}

/// What a session's log holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogStats {
    /// The `seq` of the oldest chunk kept (equal to `next_seq` when the log is empty).
    pub first_seq: u64,
    /// The `seq` the next chunk will have.
    pub next_seq: u64,
    /// Bytes the kept chunks count (about their JSON size).
    pub bytes: u64,
    /// The log's budget in bytes.
    pub budget: u64,
    /// Chunks dropped from the log (oldest first) since the session started.
    pub dropped: u64,
}

/// A cursor into a session's log: every chunk from its starting `seq` on, in order, or a
/// `missed` count where the log dropped chunks before this watcher read them. It holds no
/// chunks of its own, so a watcher that never reads costs nothing but its cursor.
#[derive(Debug)]
pub struct Watcher {
    state: Arc<Mutex<State>>,
    head: watch::Receiver<u64>,
    next: u64,
}

impl Watcher {
    /// The `seq` of the next chunk this watcher reads.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// The next item without waiting: `None` when the watcher has read everything so far.
    pub fn try_next(&mut self) -> Option<Watched> {
        let s = self.state.lock().expect("session log");
        if self.next < s.first {
            let n = s.first - self.next;
            self.next = s.first;
            return Some(Watched::Missed(n));
        }
        let i = (self.next - s.first) as usize;
        let (chunk, _) = s.chunks.get(i)?;
        self.next += 1;
        Some(Watched::Chunk(chunk.clone()))
    }

    /// The next item; `None` once the session is gone and everything was read.
    pub async fn next(&mut self) -> Option<Watched> {
        loop {
            // Marked seen before looking, so a chunk pushed after the look wakes us.
            self.head.borrow_and_update();
            if let Some(item) = self.try_next() {
                return Some(item);
            }
            if self.head.changed().await.is_err() {
                return self.try_next();
            }
        }
    }

    /// Skip to the newest chunk: everything kept and not read yet counts as missed (how many
    /// is returned). For a reader that cannot keep up and wants current chunks, not a backlog.
    pub fn skip_to_end(&mut self) -> u64 {
        let s = self.state.lock().expect("session log");
        let end = s.next();
        let n = end.saturating_sub(self.next);
        self.next = end;
        n
    }

    /// Like `tokio::sync::broadcast::Receiver::recv`: the next chunk, `Lagged(n)` for `n`
    /// chunks the log dropped before they were read, `Closed` at the end.
    pub async fn recv(&mut self) -> Result<Chunk, RecvError> {
        match self.next().await {
            Some(Watched::Chunk(c)) => Ok((*c).clone()),
            Some(Watched::Missed(n)) => Err(RecvError::Lagged(n)),
            None => Err(RecvError::Closed),
        }
    }

    /// Like `tokio::sync::broadcast::Receiver::try_recv`.
    pub fn try_recv(&mut self) -> Result<Chunk, TryRecvError> {
        match self.try_next() {
            Some(Watched::Chunk(c)) => Ok((*c).clone()),
            Some(Watched::Missed(n)) => Err(TryRecvError::Lagged(n)),
            None if self.head.has_changed().is_err() => Err(TryRecvError::Closed),
            None => Err(TryRecvError::Empty),
        }
    }
}

/// What a chunk counts against the log's budget: about the size of its JSON.
fn chunk_bytes(chunk: &Chunk) -> usize {
    /// The envelope: session id, request id, seq, flags, body type and format.
    const OVERHEAD: usize = 160;
    let body = match &chunk.body {
        Body::Console { content, .. } => content.as_ref().map_or(0, String::len),
        other => {
            let mut count = Counter(0);
            match serde_json::to_writer(&mut count, other) {
                Ok(()) => count.0,
                Err(_) => 0,
            }
        }
    };
    OVERHEAD + chunk.request.len() + body
}

struct Counter(usize);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spindle_protocol::ConsoleFormat;

    fn chunk(seq: u64, text: &str) -> Chunk {
        Chunk::new(
            "s",
            "r",
            seq,
            Body::console(ConsoleFormat::Stdout, text.to_string()),
        )
    }

    fn text(w: &Watched) -> String {
        match w {
            Watched::Chunk(c) => match &c.body {
                Body::Console { content, .. } => content.clone().unwrap_or_default(),
                _ => String::new(),
            },
            Watched::Missed(n) => format!("missed {n}"),
        }
    }

    #[test]
    fn the_oldest_chunks_go_first_and_a_late_watcher_is_told() {
        let log = Log::new(3 * (160 + 1 + 1000));
        let mut early = log.watcher(None);
        let big = "x".repeat(1000);
        for seq in 0..10 {
            log.push(Arc::new(chunk(seq, &big)));
        }
        let stats = log.stats();
        assert_eq!((stats.first_seq, stats.next_seq, stats.dropped), (7, 10, 7));
        assert!(stats.bytes <= stats.budget);
        // The early watcher never read: it missed 7, then gets the 3 kept.
        assert_eq!(text(&early.try_next().unwrap()), "missed 7");
        for seq in 7..10 {
            match early.try_next().unwrap() {
                Watched::Chunk(c) => assert_eq!(c.seq, seq),
                other => panic!("{other:?}"),
            }
        }
        assert!(early.try_next().is_none());
        // A replay from seq 2 misses 5; from 8 misses nothing; beyond the end starts at it.
        let mut r = log.watcher(Some(2));
        assert_eq!(text(&r.try_next().unwrap()), "missed 5");
        let mut r = log.watcher(Some(8));
        assert!(matches!(r.try_next(), Some(Watched::Chunk(c)) if c.seq == 8));
        let r = log.watcher(Some(100));
        assert_eq!(r.next_seq(), 10);
    }

    #[test]
    fn a_chunk_larger_than_the_budget_is_kept_alone() {
        let log = Log::new(10);
        log.push(Arc::new(chunk(0, "hello")));
        log.push(Arc::new(chunk(1, "world")));
        let s = log.stats();
        assert_eq!((s.first_seq, s.next_seq), (1, 2));
    }

    #[test]
    fn skip_to_end_counts_what_it_skips() {
        let log = Log::new(1 << 20);
        let mut w = log.watcher(None);
        for seq in 0..5 {
            log.push(Arc::new(chunk(seq, "a")));
        }
        assert_eq!(w.skip_to_end(), 5);
        assert!(w.try_next().is_none());
        log.push(Arc::new(chunk(5, "b")));
        assert_eq!(text(&w.try_next().unwrap()), "b");
    }

    #[tokio::test]
    async fn a_waiting_watcher_wakes_and_sees_the_end() {
        let log = Log::new(1 << 20);
        let mut w = log.watcher(None);
        let t = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(item) = w.next().await {
                got.push(text(&item));
            }
            got
        });
        for seq in 0..3 {
            log.push(Arc::new(chunk(seq, &seq.to_string())));
            tokio::task::yield_now().await;
        }
        drop(log);
        assert_eq!(t.await.unwrap(), vec!["0", "1", "2"]);
    }
}
