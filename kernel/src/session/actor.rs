//! The actor: the task that owns a session's process, takes its commands, and runs its queue.
//! Output shaping (the ordered merge, blocks, the cap, publishing) is in `output`.

mod output;
pub(super) mod prompt;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use spindle_protocol::{Body, Chunk, ConsoleFormat, Outcome, SessionState};
use tokio::sync::{mpsc, oneshot};

use super::proc::{EvtItem, Proc};
use super::{Cmd, Inner, Shared, DRAIN_LIMIT, HOLD_LIMIT};
use crate::error::KernelError;
use crate::frames::Piece;
use crate::language::{ChildRequest, Outbound};
use crate::launcher::ExitInfo;
use crate::options::{ExecOptions, KernelConfig, SessionSpec};

enum Work {
    Exec {
        id: String,
        code: String,
        opts: ExecOptions,
        tx: mpsc::Sender<Arc<Chunk>>,
    },
    Query {
        req: ChildRequest,
        tx: oneshot::Sender<Result<Value, KernelError>>,
    },
}

struct ExecState {
    id: String,
    tx: mpsc::Sender<Arc<Chunk>>,
    detached: bool,
    started: Instant,
    deadline: Option<tokio::time::Instant>,
    timeout: Option<Duration>,
    timed_out: bool,
    image_max_dim: Option<u32>,
    execution_count: u64,
    open: Option<Body>,
    pending: Option<(ConsoleFormat, String)>,
    cap: Option<Cap>,
    /// Terminal prompts: when to look, the prompt text (see `prompt`).
    prompt: prompt::Watch,
}

struct Cap {
    head_left: usize,
    tail_limit: usize,
    tail: VecDeque<(ConsoleFormat, String)>,
    tail_bytes: usize,
    dropped: u64,
    /// Of `dropped`, how much a notice has already reported.
    reported: u64,
}

struct QueryState {
    req: ChildRequest,
    tx: oneshot::Sender<Result<Value, KernelError>>,
    reply: Option<Result<Value, KernelError>>,
}

enum Current {
    Exec(Box<ExecState>),
    Query(QueryState),
}

pub(super) struct Actor {
    inner: Arc<Inner>,
    cmd_rx: mpsc::UnboundedReceiver<Cmd>,
    spec: SessionSpec,
    config: KernelConfig,
    proc: Option<Proc>,
    queue: VecDeque<Work>,
    current: Option<Current>,
    seq: u64,
    /// Block opened by output that arrived between executions.
    idle_block: Option<Body>,
    /// Commands taken while waiting on a slow consumer, handled before new events.
    deferred: VecDeque<Cmd>,
}

enum Ev {
    Cmd(Option<Cmd>),
    Pty(Option<Piece>),
    Err(Option<Piece>),
    Evt(Option<EvtItem>),
    Exit(ExitInfo),
    Deadline,
    Hold,
    Drained,
    Prompt,
}

async fn maybe<T>(rx: Option<&mut mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Actor {
    pub(super) fn new(
        inner: Arc<Inner>,
        cmd_rx: mpsc::UnboundedReceiver<Cmd>,
        spec: SessionSpec,
        config: KernelConfig,
        proc: Proc,
    ) -> Actor {
        Actor {
            inner,
            cmd_rx,
            spec,
            config,
            proc: Some(proc),
            queue: VecDeque::new(),
            current: None,
            seq: 0,
            idle_block: None,
            deferred: VecDeque::new(),
        }
    }

    pub(super) async fn run(mut self) {
        loop {
            if self.current.is_none() {
                self.start_next().await;
            }
            let ev = match self.deferred.pop_front() {
                Some(cmd) => Ev::Cmd(Some(cmd)),
                None => self.next_event().await,
            };
            if matches!(ev, Ev::Pty(_) | Ev::Err(_) | Ev::Evt(_)) {
                self.prompt_output_seen();
            }
            match ev {
                Ev::Cmd(None) => {
                    self.close().await;
                    return;
                }
                Ev::Cmd(Some(Cmd::Close(done))) => {
                    self.close().await;
                    let _ = done.send(());
                    return;
                }
                Ev::Cmd(Some(cmd)) => self.on_cmd(cmd).await,
                Ev::Pty(p) => self.on_piece(p, ConsoleFormat::Stdout).await,
                Ev::Err(p) => self.on_piece(p, ConsoleFormat::Stderr).await,
                Ev::Evt(item) => self.on_evt(item).await,
                Ev::Exit(info) => {
                    if let Some(p) = self.proc.as_mut() {
                        p.exited = Some(info);
                        p.drain_deadline = Some(tokio::time::Instant::now() + DRAIN_LIMIT);
                    }
                }
                Ev::Deadline => self.on_deadline().await,
                Ev::Hold => {
                    if let Some(p) = self.proc.as_mut() {
                        tracing::warn!("sentinel or frame overdue; releasing the streams");
                        p.handled = p.handled.max(p.pty_seen).max(p.err_seen);
                        p.paused_at = None;
                        if let Some((frame, _)) = p.held.take() {
                            self.on_frame(frame).await;
                        }
                    }
                }
                Ev::Drained => self.on_gone().await,
                Ev::Prompt => self.on_prompt_timer().await,
            }
            self.flush_if_quiet().await;
            if let Some(p) = &self.proc {
                if p.exited.is_some() && !p.pty_open && !p.err_open && !p.evt_open {
                    self.on_gone().await;
                }
            }
        }
    }

    async fn next_event(&mut self) -> Ev {
        let exec_deadline = match &self.current {
            Some(Current::Exec(e)) => e.deadline,
            _ => None,
        };
        let prompt_at = self.prompt_at();
        let Some(p) = self.proc.as_mut() else {
            return Ev::Cmd(self.cmd_rx.recv().await);
        };
        let waiting_since = match (p.held.as_ref().map(|(_, t)| *t), p.paused_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let hold_at = waiting_since.map(|t| t + HOLD_LIMIT);
        let evt_ready = p.held.is_none() && p.evt_open;
        let pty_ready = p.pty_open && p.readable(p.pty_seen);
        let err_ready = p.err_open && p.readable(p.err_seen);
        let exited = p.exited.is_some();
        let drain_at = p.drain_deadline;
        tokio::select! {
            biased;
            c = self.cmd_rx.recv() => Ev::Cmd(c),
            x = maybe(pty_ready.then_some(&mut p.pty_rx)) => Ev::Pty(x),
            x = maybe(err_ready.then_some(&mut p.err_rx)) => Ev::Err(x),
            x = maybe(evt_ready.then_some(&mut p.evt_rx)) => Ev::Evt(x),
            e = &mut p.exit_rx, if !exited => Ev::Exit(e.unwrap_or_default()),
            _ = sleep_opt(exec_deadline) => Ev::Deadline,
            _ = sleep_opt(hold_at) => Ev::Hold,
            _ = sleep_opt(drain_at) => Ev::Drained,
            _ = sleep_opt(prompt_at) => Ev::Prompt,
        }
    }

    fn set_shared(&self, f: impl FnOnce(&mut Shared)) {
        f(&mut self.inner.shared.lock().expect("session state"));
    }

    // -- commands ------------------------------------------------------------------------------

    async fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Execute { id, code, opts, tx } => {
                self.queue.push_back(Work::Exec { id, code, opts, tx })
            }
            Cmd::Query { req, tx } => self.queue.push_back(Work::Query { req, tx }),
            Cmd::Cancel(id) => {
                self.unqueue(&id);
                if let Some(Current::Exec(e)) = &mut self.current {
                    if e.id == id && !e.detached {
                        e.detached = true;
                        self.interrupt();
                    }
                }
            }
            Cmd::Restart(done) => {
                let r = self.restart("restarted on request").await;
                let _ = done.send(r);
            }
            Cmd::Notice(text) => self.notice(text).await,
            Cmd::Close(_) => unreachable!("handled in run"),
        }
    }

    /// Take a cancelled execution out of the queue.
    fn unqueue(&mut self, id: &str) {
        let before = self.queue.len();
        self.queue
            .retain(|w| !matches!(w, Work::Exec { id: wid, .. } if wid == id));
        let removed = before - self.queue.len();
        self.set_shared(|s| s.queued = s.queued.saturating_sub(removed));
    }

    fn interrupt(&self) {
        if let Some(p) = &self.proc {
            if let Err(e) = p.control.interrupt() {
                tracing::debug!(error = %e, "interrupt failed");
            }
        }
    }

    async fn start_next(&mut self) {
        while let Some(work) = self.queue.pop_front() {
            self.set_shared(|s| s.queued = s.queued.saturating_sub(1));
            if self.proc.is_none() {
                // A failed restart left no process: try again now.
                if let Err(e) = self.spawn_proc().await {
                    self.fail_work(work, e).await;
                    continue;
                }
            }
            match work {
                Work::Exec { id, code, opts, tx } => {
                    if tx.is_closed() {
                        continue;
                    }
                    self.begin_exec(id, code, opts, tx).await;
                    return;
                }
                Work::Query { req, tx } => {
                    if tx.is_closed() {
                        continue;
                    }
                    match self.inner.language.encode(&req) {
                        Ok(out) => {
                            let id = req.id().unwrap_or_default().to_string();
                            self.set_shared(|s| {
                                s.state = SessionState::Busy;
                                s.running = Some(id);
                            });
                            self.send(out);
                            self.current = Some(Current::Query(QueryState {
                                req,
                                tx,
                                reply: None,
                            }));
                            return;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e.into()));
                        }
                    }
                }
            }
        }
        self.set_shared(|s| {
            if s.state == SessionState::Busy {
                s.state = SessionState::Idle;
            }
            s.running = None;
        });
    }

    async fn fail_work(&mut self, work: Work, e: KernelError) {
        match work {
            Work::Exec { id, opts, tx, .. } => {
                let mut ex = self.new_exec(id, &opts, tx, 0);
                self.emit_exec_start(&mut ex).await;
                self.emit_error(&mut ex, "SessionError", &e.to_string())
                    .await;
                self.finish_exec(ex, Outcome::Died, None, None).await;
            }
            Work::Query { tx, .. } => {
                let _ = tx.send(Err(e));
            }
        }
    }

    fn send(&self, out: Outbound) {
        let tx = self
            .inner
            .shared
            .lock()
            .expect("session state")
            .req_tx
            .clone();
        if let Some(tx) = tx {
            let _ = tx.send(out);
        }
    }

    fn new_exec(
        &self,
        id: String,
        opts: &ExecOptions,
        tx: mpsc::Sender<Arc<Chunk>>,
        execution_count: u64,
    ) -> ExecState {
        let timeout = opts.timeout.or(self.spec.timeout);
        let cap = opts.output_cap.or(self.spec.output_cap).map(|c| {
            let c = c as usize;
            Cap {
                head_left: c - c / 2,
                tail_limit: c / 2,
                tail: VecDeque::new(),
                tail_bytes: 0,
                dropped: 0,
                reported: 0,
            }
        });
        ExecState {
            id,
            tx,
            detached: false,
            started: Instant::now(),
            // A timeout too large to represent means no deadline.
            deadline: timeout.and_then(|t| tokio::time::Instant::now().checked_add(t)),
            timeout,
            timed_out: false,
            image_max_dim: opts.image_max_dim.or(self.spec.image_max_dim),
            execution_count,
            open: None,
            pending: None,
            cap,
            prompt: prompt::Watch::new(opts.allow_stdin),
        }
    }

    async fn begin_exec(
        &mut self,
        id: String,
        code: String,
        opts: ExecOptions,
        tx: mpsc::Sender<Arc<Chunk>>,
    ) {
        self.close_idle_block();
        let counts = opts.store_history && !opts.silent && opts.comm.is_none();
        let count = {
            let mut s = self.inner.shared.lock().expect("session state");
            if counts {
                s.execution_count += 1;
            }
            s.state = SessionState::Busy;
            s.running = Some(id.clone());
            s.execution_count
        };
        let mut ex = self.new_exec(id.clone(), &opts, tx, count);
        let req = match opts.comm.clone() {
            Some(message) => ChildRequest::Comm {
                id,
                message,
                parent: opts.parent.clone(),
            },
            None => ChildRequest::Execute {
                id,
                code,
                silent: opts.silent,
                store_history: opts.store_history,
                allow_stdin: opts.allow_stdin,
                active_lines: opts.active_lines && self.inner.language.supports_active_lines(),
                user_expressions: opts.user_expressions.clone(),
                execution_count: count.max(1),
                parent: opts.parent.clone(),
            },
        };
        self.emit_exec_start(&mut ex).await;
        match self.inner.language.encode(&req) {
            Ok(out) => {
                self.send(out);
                self.current = Some(Current::Exec(Box::new(ex)));
            }
            Err(e) => {
                self.emit_error(&mut ex, "SessionError", &e.to_string())
                    .await;
                self.finish_exec(ex, Outcome::Error, Some(1), None).await;
                self.set_shared(|s| s.running = None);
            }
        }
    }
}

impl Actor {
    async fn on_deadline(&mut self) {
        let grace = self.config.interrupt_grace;
        let Some(Current::Exec(ex)) = &mut self.current else {
            return;
        };
        if !ex.timed_out {
            ex.timed_out = true;
            ex.deadline = tokio::time::Instant::now().checked_add(grace);
            self.interrupt();
        } else {
            ex.deadline = None;
            let msg = timeout_message(
                ex.timeout,
                "did not stop when interrupted; the process was killed and restarted",
            );
            self.error_in_exec("TimeoutError", &msg).await;
            let lang = self.inner.language.name().to_string();
            let _ = self
                .replace_process(
                    format!("{lang} was killed and restarted"),
                    Outcome::Timeout,
                    None,
                    false,
                )
                .await;
        }
    }

    /// An error chunk in the running execution, if there is one.
    async fn error_in_exec(&mut self, name: &str, msg: &str) {
        if let Some(Current::Exec(mut ex)) = self.current.take() {
            self.emit_error(&mut ex, name, msg).await;
            self.current = Some(Current::Exec(ex));
        }
    }

    /// Replace the process with a fresh one: stop the old one (if it still runs), start a new
    /// one, tell the running execution (`what`; a fresh process is ready, or why not), then end
    /// that execution with `outcome`.
    async fn replace_process(
        &mut self,
        what: String,
        outcome: Outcome,
        exit: Option<i32>,
        abort_queue: bool,
    ) -> Result<(), KernelError> {
        self.stop_proc().await;
        let started = self.spawn_proc().await;
        let text = match &started {
            Ok(()) => format!("{what}; a fresh process is ready"),
            Err(e) => format!("{what}; restarting failed: {e}"),
        };
        self.notice(text).await;
        self.end_current(outcome, exit).await;
        if abort_queue {
            self.abort_queue("the session was restarted").await;
        }
        started
    }

    async fn restart(&mut self, why: &str) -> Result<(), KernelError> {
        self.error_in_exec("Restarted", &format!("the session was {why}"))
            .await;
        let lang = self.inner.language.name().to_string();
        self.replace_process(format!("{lang} {why}"), Outcome::Died, None, true)
            .await
    }

    /// The process is gone (exited, crashed, or killed) and its streams are drained.
    async fn on_gone(&mut self) {
        let Some(p) = self.proc.as_mut() else { return };
        let info = p.exited.clone().unwrap_or_default();
        // Let any frame still held through, and what the decoders still hold.
        if let Some((f, _)) = p.held.take() {
            self.on_frame(f).await;
        }
        self.finish_decoders().await;
        let lang = self.inner.language.name().to_string();
        if let Some(reason) = info.reason() {
            tracing::warn!(language = %lang, %reason, "the process was killed");
            self.emit_error_any("OutOfMemory", &reason).await;
        } else if info.signal.is_some() {
            self.emit_error_any("ProcessDied", &format!("the {lang} process {info}"))
                .await;
        }
        let _ = self
            .replace_process(
                format!("the {lang} process {info}"),
                Outcome::Died,
                info.code,
                false,
            )
            .await;
    }

    /// Finish whatever is current because the process is gone.
    async fn end_current(&mut self, outcome: Outcome, exit: Option<i32>) {
        match self.current.take() {
            Some(Current::Exec(ex)) => {
                self.finish_exec(*ex, outcome, exit, None).await;
            }
            Some(Current::Query(q)) => {
                let what = match q.req {
                    ChildRequest::Complete { .. } => "complete",
                    ChildRequest::Inspect { .. } => "inspect",
                    ChildRequest::CommInfo { .. } => "comm_info",
                    _ => "is_complete",
                };
                let _ = q.tx.send(Err(KernelError::Died {
                    language: self.inner.language.name().to_string(),
                    what,
                }));
            }
            None => {}
        }
        self.set_shared(|s| {
            s.running = None;
            s.input_pending = false;
        });
    }

    async fn abort_queue(&mut self, why: &str) {
        while let Some(work) = self.queue.pop_front() {
            self.set_shared(|s| s.queued = s.queued.saturating_sub(1));
            match work {
                Work::Exec { id, opts, tx, .. } => {
                    let mut ex = self.new_exec(id, &opts, tx, 0);
                    self.emit_exec_start(&mut ex).await;
                    self.emit_error(&mut ex, "Aborted", why).await;
                    self.finish_exec(ex, Outcome::Aborted, None, None).await;
                }
                Work::Query { tx, .. } => {
                    let _ = tx.send(Err(KernelError::Protocol(why.to_string())));
                }
            }
        }
    }

    /// Kill the process tree and wait for it to be reaped.
    async fn stop_proc(&mut self) {
        let Some(mut p) = self.proc.take() else {
            return;
        };
        p.control.kill_all();
        if p.exited.is_none() {
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut p.exit_rx).await;
        }
        self.set_shared(|s| {
            s.state = SessionState::Starting;
            s.pid = None;
            s.control = None;
            s.req_tx = None;
        });
        drop(p);
    }

    async fn spawn_proc(&mut self) -> Result<(), KernelError> {
        self.set_shared(|s| s.state = SessionState::Starting);
        match Proc::start(&self.inner, &self.spec, &self.config).await {
            Ok(p) => {
                self.proc = Some(p);
                let busy = self.current.is_some();
                self.set_shared(|s| {
                    s.state = if busy {
                        SessionState::Busy
                    } else {
                        SessionState::Idle
                    }
                });
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "session process failed to start");
                Err(e)
            }
        }
    }

    async fn close(&mut self) {
        self.close_idle_block();
        self.stop_proc().await;
        self.error_in_exec("Closed", "the session was closed").await;
        self.end_current(Outcome::Aborted, None).await;
        self.set_shared(|s| s.state = SessionState::Closed);
        // Whatever raced the close is refused, never left without an answer.
        self.cmd_rx.close();
        while let Ok(cmd) = self.cmd_rx.try_recv() {
            self.deferred.push_back(cmd);
        }
        for cmd in std::mem::take(&mut self.deferred) {
            match cmd {
                Cmd::Execute { id, code, opts, tx } => {
                    self.queue.push_back(Work::Exec { id, code, opts, tx })
                }
                Cmd::Query { req, tx } => self.queue.push_back(Work::Query { req, tx }),
                Cmd::Restart(tx) => {
                    let _ = tx.send(Err(KernelError::Closed(self.inner.id.clone())));
                }
                Cmd::Close(tx) => {
                    let _ = tx.send(());
                }
                Cmd::Cancel(_) | Cmd::Notice(_) => {}
            }
        }
        self.abort_queue("the session was closed").await;
        self.set_shared(|s| s.queued = 0);
    }
}

fn timeout_message(timeout: Option<Duration>, what: &str) -> String {
    match timeout {
        Some(t) => format!(
            "execution exceeded its timeout of {} s and {what}",
            t.as_secs_f64()
        ),
        None => format!("execution timed out and {what}"),
    }
}
