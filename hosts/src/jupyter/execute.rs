//! `execute_request`: run code in the session and turn its chunks into iopub messages.
//!
//! | chunk | iopub |
//! |---|---|
//! | console stdout/stderr | `stream` (one per chunk: the kernel already coalesces up to 1 MiB) |
//! | result | `execute_result` with the execution count |
//! | image, html, markdown, latex, json, text | `display_data` (the whole bundle and metadata), or `update_display_data` for an update |
//! | clear_output | `clear_output` |
//! | error | `error` (the first; later ones go to stderr so a reply has exactly one) |
//! | notice | `stream` on stderr |
//! | input_request | `input_request` on the stdin channel, to the client that asked |
//! | comm | `comm_open`, `comm_msg`, `comm_close` with buffers (see `comm.rs`), silent or not |
//! | a display marked `page` (`obj?`, `%pinfo`) | a `page` payload of `execute_reply`, as ipykernel sends help |

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use jupyter_protocol::{
    ClearOutput, DisplayData, ErrorOutput, ExecuteInput, ExecuteReply, ExecuteRequest,
    ExecuteResult, ExecutionCount, ExecutionState, ExpressionResult, InputRequest,
    JupyterMessageContent, Media, MediaType, Payload, ReplyError, ReplyStatus, Stdio, Transient,
    UpdateDisplayData,
};
use serde_json::{Map, Value};
use spindle_kernel::ExecOptions;
use spindle_protocol::{Body, Chunk, ConsoleFormat, Outcome, Rich, StatusContent, StatusFormat};

use super::server::{media, Server};
use super::wire::Request;

/// Turns one execution's chunks into iopub messages under one parent header.
pub(crate) struct Mapper {
    pub parent: Bytes,
    silent: bool,
    /// The first error, which the reply reports.
    pub error: Option<ErrorOutput>,
    /// The session's execution count as the `started` chunk gave it.
    pub started_count: Option<u64>,
    pub finished: Option<StatusContent>,
    /// `text/plain` of the result, for the history's output.
    pub result_text: Option<String>,
    /// Help for the pager (`obj?`): `page` payloads of the reply.
    pub pages: Vec<Payload>,
    /// Where stream messages' JSON is written, reused from one to the next.
    json: BytesMut,
}

impl Mapper {
    pub fn new(parent: Bytes, silent: bool) -> Self {
        Self {
            parent,
            silent,
            error: None,
            started_count: None,
            finished: None,
            result_text: None,
            pages: Vec::new(),
            json: BytesMut::new(),
        }
    }

    async fn stream(&mut self, server: &Server, name: Stdio, text: &str) {
        if !self.silent {
            let json = super::wire::stream_json(name, text, &mut self.json);
            server.publish_raw(&self.parent, "stream", json).await;
        }
    }

    /// Publish what `chunk` stands for; an input request is handed back to the caller. Console
    /// text is read where the session's log holds it (a shared chunk is not copied).
    pub async fn on_chunk(
        &mut self,
        server: &Server,
        chunk: impl Into<Arc<Chunk>>,
    ) -> Option<InputRequest> {
        let chunk = chunk.into();
        if chunk.start || chunk.end {
            return None; // block markers carry nothing
        }
        if let Body::Console {
            format,
            content: Some(text),
            ..
        } = &chunk.body
        {
            match format {
                ConsoleFormat::Stdout => self.stream(server, Stdio::Stdout, text).await,
                ConsoleFormat::Stderr => self.stream(server, Stdio::Stderr, text).await,
                ConsoleFormat::ActiveLine => {}
            }
            return None;
        }
        match Arc::unwrap_or_clone(chunk).body {
            Body::Status { format, content } => match format {
                StatusFormat::Started => {
                    self.started_count = content.and_then(|c| c.execution_count);
                }
                StatusFormat::Finished => self.finished = content,
            },
            Body::Result { content: Some(r) } => {
                self.result_text = r
                    .bundle
                    .get("text/plain")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                if !self.silent {
                    let count = r
                        .execution_count
                        .or(self.started_count)
                        .map_or(0, |c| server.jcount(c));
                    let msg = ExecuteResult {
                        execution_count: ExecutionCount::new(count as usize),
                        data: media(r.bundle),
                        metadata: r.metadata,
                        transient: Some(Transient {
                            display_id: r.display_id,
                        }),
                    };
                    server.publish(&self.parent, "execute_result", &msg).await;
                }
            }
            Body::Image {
                content: Some(r), ..
            }
            | Body::Html { content: Some(r) }
            | Body::Markdown { content: Some(r) }
            | Body::Latex { content: Some(r) }
            | Body::Json { content: Some(r) }
            | Body::Text { content: Some(r) } => self.display(server, r).await,
            Body::File { content: Some(f) } if !self.silent => {
                let text = format!("[file {} ({})]", f.path, f.mime);
                let msg = DisplayData::new(Media::new(vec![MediaType::Plain(text)]));
                server.publish(&self.parent, "display_data", &msg).await;
            }
            Body::Error { content: Some(e) } => {
                let out = ErrorOutput {
                    ename: e.name,
                    evalue: e.value,
                    traceback: e.traceback,
                };
                if self.error.is_none() {
                    if out.ename == "UsageError" && server.lang.spindle == "python" {
                        // A magic used wrongly: ipykernel prints it on stderr, no traceback
                        // output, and the reply still says error.
                        let text = format!("UsageError: {}\n", out.evalue);
                        self.stream(server, Stdio::Stderr, &text).await;
                    } else if !self.silent {
                        server.publish(&self.parent, "error", &out).await;
                    }
                    self.error = Some(out);
                } else {
                    let text = if out.traceback.is_empty() {
                        format!("{}: {}\n", out.ename, out.evalue)
                    } else {
                        out.traceback.join("\n") + "\n"
                    };
                    self.stream(server, Stdio::Stderr, &text).await;
                }
            }
            Body::InputRequest { content: Some(r) } => {
                return Some(InputRequest {
                    prompt: r.prompt,
                    password: r.password,
                });
            }
            Body::Comm { content: Some(c) } => {
                // Comm traffic is not output: it goes out for silent executions too.
                super::comm::publish(server, &self.parent, c).await;
            }
            Body::ClearOutput { content } if !self.silent => {
                let wait = content.is_some_and(|c| c.wait);
                server
                    .publish(&self.parent, "clear_output", &ClearOutput { wait })
                    .await;
            }
            Body::Notice {
                content: Some(text),
            } => {
                self.stream(server, Stdio::Stderr, &(text + "\n")).await;
            }
            _ => {}
        }
        None
    }

    async fn display(&mut self, server: &Server, r: Rich) {
        if self.silent {
            return;
        }
        if r.page {
            self.pages.push(Payload::Page {
                data: media(r.bundle),
                start: 0,
            });
            return;
        }
        match (r.update, r.display_id) {
            (true, Some(id)) => {
                let msg = UpdateDisplayData {
                    data: media(r.bundle),
                    metadata: r.metadata,
                    transient: Transient {
                        display_id: Some(id),
                    },
                };
                server
                    .publish(&self.parent, "update_display_data", &msg)
                    .await;
            }
            (_, id) => {
                let msg = DisplayData {
                    data: media(r.bundle),
                    metadata: r.metadata,
                    transient: id.map(|display_id| Transient {
                        display_id: Some(display_id),
                    }),
                };
                server.publish(&self.parent, "display_data", &msg).await;
            }
        }
    }
}

fn reply(
    status: ReplyStatus,
    count: u64,
    payload: Vec<Payload>,
    exprs: HashMap<String, ExpressionResult>,
    error: Option<ReplyError>,
) -> ExecuteReply {
    ExecuteReply {
        status,
        execution_count: ExecutionCount::new(count as usize),
        payload,
        user_expressions: Some(exprs),
        error: error.map(Box::new),
    }
}

fn user_expressions(map: Option<Map<String, Value>>) -> HashMap<String, ExpressionResult> {
    map.unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            let r = serde_json::from_value::<ExpressionResult>(v).unwrap_or_else(|e| {
                ExpressionResult::Error {
                    ename: "SerializationError".into(),
                    evalue: e.to_string(),
                    traceback: vec![],
                }
            });
            (k, r)
        })
        .collect()
}

/// Serve one execute request (busy, work, reply, idle). Returns true when it failed and asked
/// for the queue behind it to be aborted (`stop_on_error`).
pub(crate) async fn execute(server: &Server, req: &Request, abort: bool) -> bool {
    let Ok(JupyterMessageContent::ExecuteRequest(r)) = &req.content else {
        return false;
    };
    let parent = &req.header_raw;
    let (failed, record) = run(server, req, r, abort).await;
    server.status(parent, ExecutionState::Idle).await;
    // After idle: the client has its answer; the history's writer wakes off that path.
    if let Some((count, output)) = record {
        server.history().await.record(count, &r.code, output);
    }
    failed && r.stop_on_error
}

/// What the history keeps of an execution: its count and the text of its result.
type Record = Option<(u64, Option<String>)>;

/// Serve an execute request between busy and idle: publishes busy itself, right after the
/// code is on its way to the session, so the child runs while busy goes out.
pub(crate) async fn run(
    server: &Server,
    req: &Request,
    r: &ExecuteRequest,
    abort: bool,
) -> (bool, Record) {
    let parent = &req.header_raw;
    let no_exprs = HashMap::new;
    // The early answers (aborted, empty code, exit) publish busy first; an execution once its
    // code is on the way.
    let busy = || server.status(parent, ExecutionState::Busy);
    let code = r.code.as_str();
    if abort {
        busy().await;
        let reply = reply(
            ReplyStatus::Aborted,
            server.count_now(),
            vec![],
            no_exprs(),
            None,
        );
        server
            .reply(super::server::Chan::Shell, req, "execute_reply", &reply)
            .await;
        return (false, None);
    }
    if !r.silent {
        server.set_last_parent(parent);
    }
    let input = |count: u64| ExecuteInput {
        code: r.code.clone(),
        execution_count: ExecutionCount::new(count as usize),
    };
    // The session refuses empty code; Jupyter treats it as a no-op.
    if code.trim().is_empty() {
        busy().await;
        let count = server.count_now();
        if !r.silent {
            server.publish(parent, "execute_input", &input(count)).await;
        }
        let reply = reply(ReplyStatus::Ok, count, vec![], no_exprs(), None);
        server
            .reply(super::server::Chan::Shell, req, "execute_reply", &reply)
            .await;
        return (false, None);
    }
    if server.lang.spindle == "python"
        && matches!(code.trim(), "exit" | "quit" | "exit()" | "quit()")
    {
        // As IPython does: ask the frontend to leave (and stop the kernel it started) rather
        // than end the session's process under it.
        busy().await;
        let count = server.count_now();
        if !r.silent {
            server.publish(parent, "execute_input", &input(count)).await;
        }
        let payload = vec![Payload::AskExit { keepkernel: false }];
        let reply = reply(ReplyStatus::Ok, count, payload, no_exprs(), None);
        server
            .reply(super::server::Chan::Shell, req, "execute_reply", &reply)
            .await;
        return (false, None);
    }
    let mut m = super::execute::Mapper::new(parent.clone(), r.silent);
    let fail = |m: &mut Mapper, ename: &str, evalue: String| {
        m.error = Some(ErrorOutput {
            ename: ename.to_string(),
            traceback: vec![format!("{ename}: {evalue}")],
            evalue,
        });
    };
    let mut outcome = None;
    match server.session().await {
        Err(e) => {
            busy().await;
            fail(&mut m, "SessionError", e)
        }
        Ok(session) => {
            let id = uuid::Uuid::new_v4().to_string();
            server.mark_ours(&id);
            server.set_own_busy(true);
            let opts = ExecOptions {
                id: Some(id),
                silent: r.silent,
                store_history: r.store_history,
                allow_stdin: r.allow_stdin,
                user_expressions: r
                    .user_expressions
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect(),
                // The request's header, for get_parent() (ipywidgets' Output widget).
                parent: serde_json::from_slice(parent).ok(),
                ..ExecOptions::default()
            };
            let exec = session.execute(code, opts);
            busy().await;
            match exec {
                Err(e) => {
                    server.set_own_busy(false);
                    fail(&mut m, "SessionError", e.to_string())
                }
                Ok(mut exec) => {
                    while let Some(chunk) = exec.next_shared().await {
                        let started = matches!(
                            chunk.body,
                            Body::Status {
                                format: StatusFormat::Started,
                                ..
                            }
                        );
                        if let Some(ir) = m.on_chunk(server, chunk).await {
                            if r.allow_stdin {
                                server
                                    .reply(super::server::Chan::Stdin, req, "input_request", &ir)
                                    .await;
                            } else if let Err(e) = session.input_reply("") {
                                tracing::debug!(error = %e, "unblocking input failed");
                            }
                        }
                        if started && !r.silent {
                            let count = m.started_count.map_or(0, |c| server.jcount(c));
                            server.publish(parent, "execute_input", &input(count)).await;
                        }
                    }
                    server.set_own_busy(false);
                    outcome = m.finished.as_ref().and_then(|f| f.outcome);
                    if outcome.is_none() && m.error.is_none() {
                        fail(
                            &mut m,
                            "SessionError",
                            "the execution ended without finishing".into(),
                        );
                    }
                }
            }
        }
    }
    let count = m
        .started_count
        .map_or_else(|| server.count_now(), |c| server.jcount(c));
    let fin = m.finished.take();
    let exit = fin.as_ref().and_then(|f| f.exit_status);
    let exprs = user_expressions(fin.and_then(|f| f.user_expressions));
    let (status, failed) = match outcome {
        Some(Outcome::Ok) => (ReplyStatus::Ok, false),
        Some(Outcome::Aborted) => (ReplyStatus::Aborted, false),
        other => {
            if m.error.is_none() {
                // Failed without an error message (a shell's non-zero status): say why.
                let (ename, evalue) = match other {
                    Some(Outcome::Interrupted) => ("KeyboardInterrupt", "interrupted".to_string()),
                    Some(Outcome::Timeout) => ("TimeoutError", "timed out".to_string()),
                    Some(Outcome::Died) => ("ProcessDied", "the process died".to_string()),
                    _ => ("ExitStatus", exit.unwrap_or(1).to_string()),
                };
                let e = ErrorOutput {
                    ename: ename.to_string(),
                    traceback: vec![format!("{ename}: {evalue}")],
                    evalue,
                };
                if !r.silent {
                    server.publish(parent, "error", &e).await;
                }
                m.error = Some(e);
            } else if outcome.is_none() && !r.silent {
                // The session never ran it: the error is ours and not yet published.
                if let Some(e) = &m.error {
                    server.publish(parent, "error", e).await;
                }
            }
            (ReplyStatus::Error, true)
        }
    };
    let error = if failed {
        m.error.take().map(|e| ReplyError {
            ename: e.ename,
            evalue: e.evalue,
            traceback: e.traceback,
        })
    } else {
        None
    };
    let reply = reply(status, count, std::mem::take(&mut m.pages), exprs, error);
    server
        .reply(super::server::Chan::Shell, req, "execute_reply", &reply)
        .await;
    let record = (r.store_history && !r.silent && outcome.is_some_and(|o| o != Outcome::Aborted))
        .then(|| (count, m.result_text.take()));
    (failed, record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_convert_or_report() {
        let mut m = Map::new();
        m.insert(
            "a".into(),
            serde_json::json!({"status":"ok","data":{"text/plain":"2"},"metadata":{}}),
        );
        m.insert("b".into(), serde_json::json!({"status":"weird"}));
        let out = user_expressions(Some(m));
        assert!(matches!(out["a"], ExpressionResult::Ok { .. }));
        assert!(matches!(out["b"], ExpressionResult::Error { .. }));
    }
}
