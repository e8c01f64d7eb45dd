//! Executions the MCP client started, kept after their tool call returned: a run outlives the
//! call that started it, and `read_output` pages through its whole console output.
//!
//! Each execution keeps its console text (stdout and stderr in order, as written) up to a byte
//! budget, the other chunks in order (for the policy's view of an unfinished run), and a live
//! [`Collector`], whose result is the policy's text once the run ends. Only the most recent
//! executions are kept; anything not kept is reported, never silently lost.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use spindle_llm::policy::{Collector, Policy, ToolOutput};
use spindle_protocol::{Body, Chunk, ConsoleFormat, Outcome, StatusFormat};
use tokio::sync::watch;

use crate::repl::backend::ChunkStream;

/// Console bytes kept per execution.
pub(crate) const OUTPUT_KEEP: usize = 64 << 20;
/// Bytes of non-console chunks (images, tables, …) kept per execution for partial views.
const RICH_KEEP: usize = 32 << 20;
/// Executions kept; the oldest finished ones go first.
pub(crate) const MAX_EXECUTIONS: usize = 64;

/// Which session an execution runs in.
#[derive(Debug, Clone)]
pub(crate) struct Where {
    pub id: String,
    pub name: String,
    pub language: String,
}

enum Item {
    Console { start: usize, end: usize },
    Chunk(Box<Chunk>),
    Answered,
}

struct State {
    /// Console text kept (the first [`OUTPUT_KEEP`] bytes).
    out: String,
    /// Console bytes seen, kept or not.
    total: u64,
    items: Vec<Item>,
    rich: usize,
    /// Non-console chunks not kept for partial views (over [`RICH_KEEP`]).
    rich_dropped: u64,
    live: Option<Collector>,
    result: Option<ToolOutput>,
    finished: bool,
    outcome: Option<Outcome>,
    duration_ms: Option<f64>,
    waiting: Option<String>,
    /// Chunks seen (console pieces and others): progress counts them.
    events: u64,
    /// Why the stream ended early (a lost connection).
    failure: Option<String>,
}

pub(crate) struct Exec {
    pub id: String,
    pub at: Where,
    pub started: Instant,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

/// What a waiter found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Running,
    Waiting,
    Finished,
}

/// A page of the console output.
pub(crate) struct Page {
    pub text: String,
    pub offset: u64,
    pub next_offset: u64,
    pub total: u64,
    pub kept: u64,
    pub finished: bool,
}

impl Exec {
    fn new(id: String, at: Where, policy: &Policy) -> Self {
        Self {
            id,
            at,
            started: Instant::now(),
            state: Mutex::new(State {
                out: String::new(),
                total: 0,
                items: Vec::new(),
                rich: 0,
                rich_dropped: 0,
                live: Some(Collector::new(policy, true)),
                result: None,
                finished: false,
                outcome: None,
                duration_ms: None,
                waiting: None,
                events: 0,
                failure: None,
            }),
            changed: watch::channel(0).0,
        }
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn push(&self, chunk: Chunk) {
        {
            let mut st = self.state.lock().expect("exec state");
            st.events += 1;
            if let Some(c) = st.live.as_mut() {
                c.push(&chunk);
            }
            match &chunk.body {
                Body::Console {
                    format: ConsoleFormat::Stdout | ConsoleFormat::Stderr,
                    content: Some(t),
                    ..
                } => {
                    st.total += t.len() as u64;
                    let room = OUTPUT_KEEP.saturating_sub(st.out.len());
                    let mut take = t.len().min(room);
                    while !t.is_char_boundary(take) {
                        take -= 1;
                    }
                    if take > 0 {
                        let start = st.out.len();
                        st.out.push_str(&t[..take]);
                        let end = st.out.len();
                        match st.items.last_mut() {
                            Some(Item::Console { end: e, .. }) if *e == start => *e = end,
                            _ => st.items.push(Item::Console { start, end }),
                        }
                    }
                }
                Body::Console { .. } => {}
                Body::InputRequest { content: Some(r) } => {
                    st.waiting = Some(r.prompt.clone());
                    st.items.push(Item::Chunk(Box::new(chunk.clone())));
                }
                Body::Status {
                    format: StatusFormat::Finished,
                    content,
                } => {
                    st.finished = true;
                    st.waiting = None;
                    st.outcome = content.as_ref().and_then(|c| c.outcome);
                    st.duration_ms = content.as_ref().and_then(|c| c.duration_ms);
                    if let Some(c) = st.live.take() {
                        let mut note = None;
                        let lost = st.total - st.out.len() as u64;
                        let text;
                        if lost > 0 {
                            text = format!("[console output over {} MiB: {lost} bytes were not kept for read_output]", OUTPUT_KEEP >> 20);
                            note = Some(text.as_str());
                        }
                        st.result = Some(c.finish(note));
                    }
                }
                Body::Status { .. } => {}
                _ if chunk.start || chunk.end => {}
                _ => {
                    let size = serde_json::to_string(&chunk.body).map_or(0, |s| s.len());
                    if st.rich + size <= RICH_KEEP {
                        st.rich += size;
                        st.items.push(Item::Chunk(Box::new(chunk.clone())));
                    } else {
                        st.rich_dropped += 1;
                    }
                }
            }
        }
        self.bump();
    }

    fn fail(&self, why: String) {
        {
            let mut st = self.state.lock().expect("exec state");
            if st.finished {
                return;
            }
            st.failure = Some(why.clone());
            st.finished = true;
            st.waiting = None;
            let note = format!("[{why}]");
            if let Some(c) = st.live.take() {
                st.result = Some(c.finish(Some(&note)));
            }
        }
        self.bump();
    }

    pub(crate) fn phase(&self) -> Phase {
        let st = self.state.lock().expect("exec state");
        if st.finished {
            Phase::Finished
        } else if st.waiting.is_some() {
            Phase::Waiting
        } else {
            Phase::Running
        }
    }

    pub(crate) fn waiting_prompt(&self) -> Option<String> {
        self.state.lock().expect("exec state").waiting.clone()
    }

    /// The input request was answered.
    pub(crate) fn answered(&self) {
        {
            let mut st = self.state.lock().expect("exec state");
            if st.waiting.take().is_some() {
                st.items.push(Item::Answered);
                if let Some(c) = st.live.as_mut() {
                    c.answered();
                }
            }
        }
        self.bump();
    }

    pub(crate) fn outcome(&self) -> Option<Outcome> {
        self.state.lock().expect("exec state").outcome
    }

    pub(crate) fn duration_ms(&self) -> Option<f64> {
        self.state.lock().expect("exec state").duration_ms
    }

    pub(crate) fn failure(&self) -> Option<String> {
        self.state.lock().expect("exec state").failure.clone()
    }

    pub(crate) fn total_bytes(&self) -> u64 {
        self.state.lock().expect("exec state").total
    }

    /// Progress so far (increases with every chunk) and the console text after byte `from`.
    pub(crate) fn progress_since(&self, from: usize) -> (u64, String, usize) {
        let st = self.state.lock().expect("exec state");
        let from = from.min(st.out.len());
        (st.events, st.out[from..].to_string(), st.out.len())
    }

    /// What the policy says about the run: final once it finished, else the view so far.
    pub(crate) fn view(&self, policy: &Policy) -> ToolOutput {
        let st = self.state.lock().expect("exec state");
        if let Some(r) = &st.result {
            return r.clone();
        }
        let mut c = Collector::new(policy, true);
        for item in &st.items {
            match item {
                Item::Console { start, end } => c.push(&Chunk::new(
                    &self.at.id,
                    &self.id,
                    0,
                    Body::console(ConsoleFormat::Stdout, st.out[*start..*end].to_string()),
                )),
                Item::Chunk(ch) => c.push(ch),
                Item::Answered => c.answered(),
            }
        }
        let lost = st.total - st.out.len() as u64;
        let mut notes = Vec::new();
        if lost > 0 {
            notes.push(format!(
                "[console output over {} MiB: {lost} bytes were not kept]",
                OUTPUT_KEEP >> 20
            ));
        }
        if st.rich_dropped > 0 {
            notes.push(format!(
                "[{} rich outputs are not in this partial view (over {} MiB); the final result has them]",
                st.rich_dropped,
                RICH_KEEP >> 20
            ));
        }
        let note = notes.join("\n");
        drop(st);
        c.finish((!note.is_empty()).then_some(note.as_str()))
    }

    /// Bytes `offset..offset+limit` of the console output (the end moved back to a character
    /// boundary).
    pub(crate) fn page(&self, offset: u64, limit: usize) -> Result<Page, String> {
        let st = self.state.lock().expect("exec state");
        let kept = st.out.len() as u64;
        if offset > kept {
            return Err(if offset <= st.total {
                format!(
                    "offset {offset} is past the {kept} bytes kept of execution {} ({} bytes were written; only the first {} MiB are kept)",
                    self.id,
                    st.total,
                    OUTPUT_KEEP >> 20
                )
            } else {
                format!(
                    "offset {offset} is past the end of execution {}'s output ({} bytes so far)",
                    self.id, st.total
                )
            });
        }
        let start = offset as usize;
        if !st.out.is_char_boundary(start) {
            return Err(format!(
                "offset {offset} falls inside a UTF-8 character; use a next_offset from an earlier page"
            ));
        }
        let mut end = start.saturating_add(limit).min(st.out.len());
        while !st.out.is_char_boundary(end) {
            end -= 1;
        }
        if end == start && start < st.out.len() {
            // A limit smaller than one character: take the whole character.
            end = start + 1;
            while !st.out.is_char_boundary(end) {
                end += 1;
            }
        }
        Ok(Page {
            text: st.out[start..end].to_string(),
            offset,
            next_offset: end as u64,
            total: st.total,
            kept,
            finished: st.finished,
        })
    }
}

/// Every execution still kept, by id.
pub(crate) struct Store {
    policy: Policy,
    next: AtomicU64,
    inner: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    map: HashMap<String, Arc<Exec>>,
    order: VecDeque<String>,
    evicted: u64,
}

impl Store {
    pub(crate) fn new(policy: Policy) -> Self {
        Self {
            policy,
            next: AtomicU64::new(1),
            inner: Mutex::new(Kept::default()),
        }
    }

    pub(crate) fn policy(&self) -> &Policy {
        &self.policy
    }

    /// A fresh execution id.
    pub(crate) fn next_id(&self) -> String {
        format!("e{}", self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// Keep an execution and drain its chunks in the background (the run goes on whoever
    /// waits for it). `tap` sees every chunk too.
    pub(crate) fn start(
        &self,
        id: String,
        at: Where,
        mut stream: ChunkStream,
        tap: impl Fn(&Chunk) + Send + 'static,
    ) -> Arc<Exec> {
        let exec = Arc::new(Exec::new(id.clone(), at, &self.policy));
        {
            let mut k = self.inner.lock().expect("store");
            k.map.insert(id.clone(), exec.clone());
            k.order.push_back(id);
            while k.order.len() > MAX_EXECUTIONS {
                // The oldest finished one goes; running ones stay.
                let pos = k
                    .order
                    .iter()
                    .position(|i| k.map.get(i).is_some_and(|e| e.phase() == Phase::Finished));
                let Some(pos) = pos else { break };
                if let Some(old) = k.order.remove(pos) {
                    k.map.remove(&old);
                    k.evicted += 1;
                }
            }
        }
        let e = exec.clone();
        tokio::spawn(async move {
            while let Some(item) = stream.next().await {
                match item {
                    Ok(chunk) => {
                        tap(&chunk);
                        let fin = chunk.is_finished();
                        e.push(chunk);
                        if fin {
                            break;
                        }
                    }
                    Err(err) => {
                        e.fail(err.to_string());
                        break;
                    }
                }
            }
            e.fail("the output stream ended before the run finished".into());
        });
        exec
    }

    pub(crate) fn get(&self, id: &str) -> Result<Arc<Exec>, String> {
        let k = self.inner.lock().expect("store");
        if let Some(e) = k.map.get(id) {
            return Ok(e.clone());
        }
        let issued = self.next.load(Ordering::Relaxed);
        let known = id
            .strip_prefix('e')
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n >= 1 && n < issued);
        Err(if known {
            format!(
                "execution {id:?} is no longer kept (only the last {MAX_EXECUTIONS} executions are)"
            )
        } else {
            format!(
                "unknown execution {id:?} (execution ids look like \"e1\"; execute returns them)"
            )
        })
    }

    /// The executions of a session that wait for input.
    pub(crate) fn waiting_in(&self, session_id: &str) -> Vec<Arc<Exec>> {
        let k = self.inner.lock().expect("store");
        k.map
            .values()
            .filter(|e| e.at.id == session_id && e.phase() == Phase::Waiting)
            .cloned()
            .collect()
    }
}
