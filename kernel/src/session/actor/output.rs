//! Output: the ordered merge of the PTY, stderr and event streams, block shaping (start,
//! content, end), the output cap, and sending chunks to the execution and the watchers.

use std::sync::Arc;

use serde_json::{Map, Value};
use spindle_protocol::{
    body_for_bundle, Body, Chunk, ClearOutput, ConsoleFormat, ErrorContent, FileRef, ImageFormat,
    InputRequest, Outcome, Rich, StatusContent, StatusFormat,
};

use super::super::proc::EvtItem;
use super::super::COALESCE;
use super::{sleep_opt, timeout_message, Actor, Cmd, Current, ExecState, Work};
use crate::error::KernelError;
use crate::frames::{Frame, Piece};

impl Actor {
    // -- output --------------------------------------------------------------------------------

    pub(super) async fn on_piece(&mut self, piece: Option<Piece>, format: ConsoleFormat) {
        let Some(p) = self.proc.as_mut() else { return };
        match piece {
            None => {
                let text = if format == ConsoleFormat::Stdout {
                    p.pty_open = false;
                    p.dec_pty.finish()
                } else {
                    p.err_open = false;
                    p.dec_err.finish()
                };
                self.console(format, text).await;
            }
            Some(Piece::Sentinel(n)) => {
                if format == ConsoleFormat::Stdout {
                    p.pty_seen = n;
                } else {
                    p.err_seen = n;
                }
                if n > p.handled && p.paused_at.is_none() {
                    p.paused_at = Some(tokio::time::Instant::now());
                }
            }
            Some(Piece::Data(d)) => {
                let text = if format == ConsoleFormat::Stdout {
                    p.dec_pty.decode(&d)
                } else {
                    p.dec_err.decode(&d)
                };
                self.console(format, text).await;
            }
        }
        self.release_held().await;
    }

    pub(super) async fn release_held(&mut self) {
        let Some(p) = self.proc.as_mut() else { return };
        if let Some((f, _)) = &p.held {
            if p.synced(f.sync) {
                let (frame, _) = p.held.take().expect("checked");
                self.on_frame(frame).await;
            }
        }
    }

    pub(super) async fn on_evt(&mut self, item: Option<EvtItem>) {
        let Some(p) = self.proc.as_mut() else { return };
        match item {
            None => p.evt_open = false,
            Some(EvtItem::Bad(e)) => {
                tracing::error!(error = %e, "bootstrap protocol error");
                p.evt_open = false;
                self.emit_error_any(
                    "ProtocolError",
                    &format!("the bootstrap sent a malformed event ({e}); restarting"),
                )
                .await;
                // The event stream is unusable: restart the process.
                let _ = self.restart("restarted after a protocol error").await;
            }
            Some(EvtItem::Frame(f)) => {
                if p.synced(f.sync) {
                    self.on_frame(f).await;
                } else {
                    p.held = Some((f, tokio::time::Instant::now()));
                }
            }
        }
    }

    pub(super) async fn on_frame(&mut self, f: Frame) {
        let Some(p) = self.proc.as_mut() else { return };
        if f.sync > p.handled {
            p.handled = f.sync;
        }
        if p.readable(p.pty_seen) && p.readable(p.err_seen) {
            p.paused_at = None;
        }
        match f.kind {
            b'o' => {
                let text = p.dec_out.decode_owned(f.payload);
                self.console(ConsoleFormat::Stdout, text).await;
            }
            b'e' => {
                let text = p.dec_errf.decode_owned(f.payload);
                self.console(ConsoleFormat::Stderr, text).await;
            }
            b'r' => {
                if let Some(Current::Query(q)) = &mut self.current {
                    q.reply = Some(
                        self.inner
                            .language
                            .parse_raw_reply(&q.req, &f.payload)
                            .map_err(KernelError::from),
                    );
                }
            }
            _ => match serde_json::from_slice::<Value>(&f.payload) {
                Ok(v) => self.on_message(v).await,
                Err(e) => {
                    tracing::error!(error = %e, "bootstrap sent invalid JSON");
                    self.emit_error_any(
                        "ProtocolError",
                        &format!("the bootstrap sent invalid JSON: {e}"),
                    )
                    .await;
                }
            },
        }
    }

    pub(super) async fn on_message(&mut self, v: Value) {
        let kind = v["type"].as_str().unwrap_or_default().to_string();
        match kind.as_str() {
            "display" | "result" => {
                let rich = Rich {
                    data: Value::Null,
                    bundle: v["data"].as_object().cloned().unwrap_or_default(),
                    metadata: v["metadata"].as_object().cloned().unwrap_or_default(),
                    display_id: v["display_id"].as_str().map(str::to_string),
                    update: v["update"].as_bool().unwrap_or(false),
                    page: v["page"].as_bool().unwrap_or(false),
                    ..Rich::default()
                };
                self.rich(rich, kind == "result").await;
            }
            "error" => {
                let content = ErrorContent {
                    name: v["ename"].as_str().unwrap_or("Error").to_string(),
                    value: v["evalue"].as_str().unwrap_or_default().to_string(),
                    traceback: v["traceback"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|l| l.as_str().unwrap_or_default().to_string())
                                .collect()
                        })
                        .unwrap_or_default(),
                };
                self.block(Body::Error {
                    content: Some(content),
                })
                .await;
            }
            "input_request" => {
                self.set_shared(|s| s.input_pending = true);
                self.block(Body::InputRequest {
                    content: Some(InputRequest {
                        prompt: v["prompt"].as_str().unwrap_or_default().to_string(),
                        password: v["password"].as_bool().unwrap_or(false),
                    }),
                })
                .await;
            }
            "comm" => match serde_json::from_value::<spindle_protocol::CommMessage>(v) {
                Ok(m) => {
                    self.block(Body::Comm { content: Some(m) }).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "malformed comm message from the bootstrap ignored")
                }
            },
            "clear_output" => {
                self.block(Body::ClearOutput {
                    content: Some(ClearOutput {
                        wait: v["wait"].as_bool().unwrap_or(false),
                    }),
                })
                .await
            }
            "active_line" => {
                let line = v["line"].as_u64().map(|l| l as u32);
                self.block(Body::Console {
                    format: ConsoleFormat::ActiveLine,
                    content: None,
                    line,
                })
                .await;
            }
            "file" => {
                let path = v["path"].as_str().unwrap_or_default().to_string();
                let size = std::fs::metadata(&path).ok().map(|m| m.len());
                self.block(Body::File {
                    content: Some(FileRef {
                        mime: v["mime"]
                            .as_str()
                            .unwrap_or("application/octet-stream")
                            .to_string(),
                        path,
                        size,
                    }),
                })
                .await;
            }
            "reply" => {
                if let Some(Current::Query(q)) = &mut self.current {
                    if v["id"].as_str() == q.req.id() {
                        q.reply = Some(Ok(v["content"].clone()));
                    }
                }
            }
            "done" => self.on_done(v).await,
            "ready" => {}
            other => tracing::debug!(kind = other, "unknown bootstrap message ignored"),
        }
    }

    pub(super) async fn on_done(&mut self, v: Value) {
        let id = v["id"].as_str().unwrap_or_default();
        match self.current.take() {
            Some(Current::Exec(ex)) if ex.id == id => {
                let exit = v["exit_status"].as_i64().map(|c| c as i32);
                let outcome = match v["status"].as_str() {
                    _ if ex.timed_out => Outcome::Timeout,
                    Some("interrupted") => Outcome::Interrupted,
                    Some("error") => Outcome::Error,
                    _ if exit.unwrap_or(0) != 0 => Outcome::Error,
                    _ => Outcome::Ok,
                };
                let (timed_out, timeout) = (ex.timed_out, ex.timeout);
                self.current = Some(Current::Exec(ex));
                // A character split at the very end belongs to this execution, as U+FFFD.
                self.finish_decoders().await;
                if timed_out {
                    let msg = timeout_message(timeout, "was interrupted");
                    self.error_in_exec("TimeoutError", &msg).await;
                }
                let exprs = v["user_expressions"].as_object().cloned();
                // Idle before the finished chunk goes out: whoever reads it and interrupts (an
                // interrupt while idle does nothing) must not reach the next execution. A
                // sandbox's interrupt travels through the engine and could land there.
                self.set_shared(|s| {
                    s.running = None;
                    s.input_pending = false;
                });
                if let Some(Current::Exec(ex)) = self.current.take() {
                    self.finish_exec(*ex, outcome, exit.or(Some(0)), exprs)
                        .await;
                }
            }
            Some(Current::Query(q)) if q.req.id() == Some(id) => {
                let reply = q.reply.unwrap_or_else(|| {
                    Err(KernelError::Protocol(
                        "the bootstrap answered without a reply".into(),
                    ))
                });
                let _ = q.tx.send(reply);
                self.set_shared(|s| s.running = None);
            }
            other => {
                self.current = other;
                tracing::trace!(id, "done for no request in flight ignored");
            }
        }
    }

    /// What the UTF-8 decoders still hold (an incomplete character at the end), as console text.
    pub(super) async fn finish_decoders(&mut self) {
        let Some(p) = self.proc.as_mut() else { return };
        let rest = [
            (ConsoleFormat::Stdout, p.dec_pty.finish()),
            (ConsoleFormat::Stderr, p.dec_err.finish()),
            (ConsoleFormat::Stdout, p.dec_out.finish()),
            (ConsoleFormat::Stderr, p.dec_errf.finish()),
        ];
        for (format, text) in rest {
            self.console(format, text).await;
        }
    }

    /// Console text, through the cap, into the pending buffer.
    pub(super) async fn console(&mut self, format: ConsoleFormat, mut text: String) {
        if text.is_empty() {
            return;
        }
        let Some(Current::Exec(ex)) = &mut self.current else {
            self.idle_console(format, text);
            return;
        };
        ex.prompt.note(format, &text);
        if let Some(cap) = &mut ex.cap {
            if text.len() > cap.head_left {
                let cut = floor_char_boundary(&text, cap.head_left);
                let tail = text.split_off(cut);
                // The head is full even if a character did not fit: later text must not
                // overtake what went to the tail.
                cap.head_left = 0;
                cap.tail_bytes += tail.len();
                cap.tail.push_back((format, tail));
                while cap.tail_bytes > cap.tail_limit {
                    let excess = cap.tail_bytes - cap.tail_limit;
                    let (_, front) = cap.tail.front_mut().expect("non-empty while over");
                    if front.len() <= excess {
                        let (_, gone) = cap.tail.pop_front().expect("non-empty");
                        cap.tail_bytes -= gone.len();
                        cap.dropped += gone.len() as u64;
                    } else {
                        let cut = ceil_char_boundary(front, excess);
                        front.drain(..cut);
                        cap.tail_bytes -= cut;
                        cap.dropped += cut as u64;
                    }
                }
                if text.is_empty() {
                    return;
                }
            } else {
                cap.head_left -= text.len();
            }
        }
        match &mut ex.pending {
            // An empty buffer (taken by the last flush) takes the text itself, uncopied.
            Some((f, buf)) if *f == format && buf.is_empty() => *buf = text,
            Some((f, buf)) if *f == format => buf.push_str(&text),
            _ => {
                self.flush_pending().await;
                if let Some(Current::Exec(ex)) = &mut self.current {
                    ex.pending = Some((format, text));
                }
            }
        }
        let full = matches!(&self.current, Some(Current::Exec(ex)) if ex.pending.as_ref().is_some_and(|(_, b)| b.len() >= COALESCE));
        if full {
            self.flush_pending().await;
        }
    }

    pub(super) async fn flush_if_quiet(&mut self) {
        let quiet = match &self.proc {
            Some(p) => p.pty_rx.is_empty() && p.err_rx.is_empty() && p.evt_rx.is_empty(),
            None => true,
        };
        if quiet {
            // All but a trailing partial line, which may be a terminal prompt.
            self.flush_quiet().await;
        }
    }

    /// Emit buffered console text (not the cap's tail: that waits for a non-console block or the
    /// end, or the cap would cap nothing).
    pub(super) async fn flush_pending(&mut self) {
        match self.current.take() {
            Some(Current::Exec(mut ex)) => {
                self.flush_console(&mut ex).await;
                self.current = Some(Current::Exec(ex));
            }
            other => self.current = other,
        }
    }

    pub(super) async fn rich(&mut self, mut rich: Rich, is_result: bool) {
        let max_dim = match &self.current {
            Some(Current::Exec(e)) => e.image_max_dim,
            _ => self.spec.image_max_dim,
        };
        if is_result {
            if let Some(Current::Exec(e)) = &self.current {
                rich.execution_count = Some(e.execution_count);
            }
        }
        let mut body = body_for_bundle(rich, is_result);
        let mut problem = None;
        if let Body::Image {
            format,
            content: Some(r),
        } = &mut body
        {
            if *format != ImageFormat::Svg {
                match crate::images::check(*format, r.data.as_str().unwrap_or_default(), max_dim) {
                    Ok(c) => {
                        r.width = Some(c.width);
                        r.height = Some(c.height);
                        r.downscaled = c.downscaled;
                    }
                    Err(e) => problem = Some(e),
                }
            }
        }
        if let Some(problem) = problem {
            self.emit_error_any("ImageError", &problem).await;
        }
        self.block(body).await;
    }

    /// A one-chunk block: start, content, end.
    pub(super) async fn block(&mut self, body: Body) {
        match self.current.take() {
            Some(Current::Exec(mut ex)) => {
                self.flush_exec_pending(&mut ex).await;
                self.content(&mut ex, body, false).await;
                self.current = Some(Current::Exec(ex));
            }
            other => {
                self.current = other;
                self.close_idle_block();
                let marker = body.marker();
                self.emit_raw("", marker.clone(), true, false);
                self.emit_raw("", body, false, false);
                self.emit_raw("", marker, false, true);
            }
        }
    }

    /// Before a non-console block: buffered console text, then the cap's tail.
    pub(super) async fn flush_exec_pending(&mut self, ex: &mut ExecState) {
        self.flush_console(ex).await;
        self.flush_cap_tail(ex).await;
    }

    /// Emit what the cap kept of the tail so far, after a notice of what it dropped, so that
    /// the next block comes after it as it did in the child.
    pub(super) async fn flush_cap_tail(&mut self, ex: &mut ExecState) {
        let Some(cap) = ex.cap.as_mut() else { return };
        if cap.tail.is_empty() && cap.dropped == cap.reported {
            return;
        }
        let newly = cap.dropped - cap.reported;
        cap.reported = cap.dropped;
        let tail = std::mem::take(&mut cap.tail);
        cap.tail_bytes = 0;
        if newly > 0 {
            if let Some(open) = ex.open.take() {
                self.emit_to(ex, open, false, true).await;
            }
            let note = Body::Notice {
                content: Some(format!(
                    "output cap: {newly} bytes dropped between the head and the tail"
                )),
            };
            self.content(ex, note, false).await;
        }
        for (format, text) in tail {
            self.content(ex, Body::console(format, text), true).await;
        }
    }

    pub(super) async fn flush_console(&mut self, ex: &mut ExecState) {
        if let Some((format, text)) = ex.pending.take() {
            self.content(ex, Body::console(format, text), true).await;
        }
    }

    /// Emit a content chunk in `ex`, opening/closing blocks as needed. `keep_open` leaves a
    /// console block open for more of the same stream.
    pub(super) async fn content(&mut self, ex: &mut ExecState, body: Body, keep_open: bool) {
        let marker = body.marker();
        if ex.open.as_ref() != Some(&marker) {
            if let Some(open) = ex.open.take() {
                self.emit_to(ex, open, false, true).await;
            }
            self.emit_to(ex, marker.clone(), true, false).await;
        }
        self.emit_to(ex, body, false, false).await;
        if keep_open {
            ex.open = Some(marker);
        } else {
            self.emit_to(ex, marker, false, true).await;
        }
    }

    pub(super) async fn emit_to(&mut self, ex: &mut ExecState, body: Body, start: bool, end: bool) {
        // One chunk, shared by the log and the consumer: never copied.
        let chunk = Arc::new(self.make_chunk(&ex.id, body, start, end));
        self.inner.log.push(chunk.clone());
        if ex.detached {
            return;
        }
        // Wait for room in the consumer's stream (back-pressure keeps output lossless), but keep
        // taking commands: a consumer that stops reading must not wedge cancel, restart, close
        // or the timeout.
        loop {
            tokio::select! {
                biased;
                permit = ex.tx.reserve() => {
                    match permit {
                        Ok(permit) => permit.send(chunk),
                        Err(_) => {
                            // Nobody reads this execution any more: stop it.
                            ex.detached = true;
                            self.interrupt();
                        }
                    }
                    return;
                }
                cmd = self.cmd_rx.recv() => match cmd {
                    Some(Cmd::Execute { id, code, opts, tx }) => {
                        self.queue.push_back(Work::Exec { id, code, opts, tx })
                    }
                    Some(Cmd::Query { req, tx }) => self.queue.push_back(Work::Query { req, tx }),
                    Some(Cmd::Cancel(id)) if id == ex.id => {
                        ex.detached = true;
                        self.interrupt();
                        return;
                    }
                    Some(Cmd::Cancel(id)) => self.unqueue(&id),
                    Some(Cmd::Notice(text)) => self.deferred.push_back(Cmd::Notice(text)),
                    Some(cmd) => {
                        // Restart or close: stop waiting on this consumer and let the loop act.
                        self.deferred.push_back(cmd);
                        ex.detached = true;
                        return;
                    }
                    None => {
                        ex.detached = true;
                        return;
                    }
                },
                _ = sleep_opt(ex.deadline) => {
                    // The loop handles the deadline; this consumer is not reading anyway.
                    ex.detached = true;
                    return;
                }
            }
        }
    }

    pub(super) fn make_chunk(
        &mut self,
        request: &str,
        body: Body,
        start: bool,
        end: bool,
    ) -> Chunk {
        let mut chunk = Chunk::new(&self.inner.id, request, self.seq, body);
        self.seq += 1;
        chunk.start = start;
        chunk.end = end;
        chunk
    }

    pub(super) fn emit_raw(&mut self, request: &str, body: Body, start: bool, end: bool) {
        let chunk = self.make_chunk(request, body, start, end);
        self.inner.log.push(Arc::new(chunk));
    }

    pub(super) fn idle_console(&mut self, format: ConsoleFormat, text: String) {
        let body = Body::console(format, text);
        let marker = body.marker();
        if self.idle_block.as_ref() != Some(&marker) {
            self.close_idle_block();
            self.emit_raw("", marker.clone(), true, false);
            self.idle_block = Some(marker);
        }
        self.emit_raw("", body, false, false);
    }

    pub(super) fn close_idle_block(&mut self) {
        if let Some(open) = self.idle_block.take() {
            self.emit_raw("", open, false, true);
        }
    }

    pub(super) async fn emit_exec_start(&mut self, ex: &mut ExecState) {
        self.close_idle_block();
        let body = Body::Status {
            format: StatusFormat::Started,
            content: Some(StatusContent {
                execution_count: Some(ex.execution_count),
                ..StatusContent::default()
            }),
        };
        self.emit_to(ex, body, false, false).await;
    }

    pub(super) async fn emit_error(&mut self, ex: &mut ExecState, name: &str, value: &str) {
        self.flush_exec_pending(ex).await;
        self.content(
            ex,
            Body::Error {
                content: Some(ErrorContent {
                    name: name.to_string(),
                    value: value.to_string(),
                    traceback: vec![format!("{name}: {value}")],
                }),
            },
            false,
        )
        .await;
    }

    /// An error for the running execution if there is one, else for watchers.
    pub(super) async fn emit_error_any(&mut self, name: &str, value: &str) {
        match self.current.take() {
            Some(Current::Exec(mut ex)) => {
                self.emit_error(&mut ex, name, value).await;
                self.current = Some(Current::Exec(ex));
            }
            other => {
                self.current = other;
                tracing::warn!(name, value, "error outside an execution");
                self.block(Body::Error {
                    content: Some(ErrorContent {
                        name: name.to_string(),
                        value: value.to_string(),
                        traceback: vec![],
                    }),
                })
                .await;
            }
        }
    }

    pub(super) async fn notice(&mut self, text: String) {
        self.block(Body::Notice {
            content: Some(text),
        })
        .await;
    }

    pub(super) async fn finish_exec(
        &mut self,
        mut ex: ExecState,
        outcome: Outcome,
        exit_status: Option<i32>,
        user_expressions: Option<Map<String, Value>>,
    ) {
        self.flush_exec_pending(&mut ex).await;
        let dropped = ex.cap.as_ref().map_or(0, |c| c.dropped);
        if let Some(open) = ex.open.take() {
            self.emit_to(&mut ex, open, false, true).await;
        }
        let body = Body::Status {
            format: StatusFormat::Finished,
            content: Some(StatusContent {
                outcome: Some(outcome),
                exit_status,
                duration_ms: Some(ex.started.elapsed().as_secs_f64() * 1000.0),
                bytes_dropped: dropped,
                execution_count: Some(ex.execution_count),
                user_expressions,
            }),
        };
        self.emit_to(&mut ex, body, false, false).await;
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char_boundary(s: &str, mut i: usize) -> usize {
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i
}
