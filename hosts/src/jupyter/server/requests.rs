//! The requests a kernel answers besides executions: kernel_info, completion, inspection,
//! history, shutdown and restart, each under busy and idle.

use super::*;

impl Server {
    /// Serve one request that is not an execution (shell or control), wrapped in busy/idle.
    pub(super) async fn handle(self: &Arc<Self>, chan: Chan, req: Request) {
        // An execution publishes busy itself, once its code is on the way.
        if !matches!(req.content, Ok(JupyterMessageContent::ExecuteRequest(_))) {
            self.status(&req.header_raw, ExecutionState::Busy).await;
        }
        self.dispatch(chan, &req).await;
        self.status(&req.header_raw, ExecutionState::Idle).await;
    }

    async fn dispatch(self: &Arc<Self>, chan: Chan, req: &Request) {
        tracing::trace!(msg_type = %req.msg_type, msg_id = %req.msg_id, ?chan, "request");
        let content = match &req.content {
            Ok(c) => c,
            Err(why) => {
                tracing::warn!(msg_type = %req.msg_type, error = %why, "malformed request content");
                if req.msg_type.ends_with("_request") {
                    let reply_type = req.msg_type.replace("_request", "_reply");
                    self.reply(
                        chan,
                        req,
                        &reply_type,
                        &error_content("BadRequest", &format!("malformed {}: {why}", req.msg_type)),
                    )
                    .await;
                }
                return;
            }
        };
        match content {
            JupyterMessageContent::KernelInfoRequest(_) => {
                let reply = self.kernel_info().await;
                self.reply(chan, req, "kernel_info_reply", &reply).await;
            }
            JupyterMessageContent::ExecuteRequest(r) => {
                if let (_, Some((count, output))) =
                    crate::jupyter::execute::run(self, req, r, false).await
                {
                    self.history().await.record(count, &r.code, output);
                }
            }
            JupyterMessageContent::IsCompleteRequest(r) => {
                let reply = match self
                    .query(Query::IsComplete {
                        code: r.code.clone(),
                    })
                    .await
                {
                    Ok(v) => is_complete_reply(&v),
                    Err(e) => {
                        tracing::debug!(error = %e, "is_complete failed");
                        IsCompleteReply::unknown()
                    }
                };
                self.reply(chan, req, "is_complete_reply", &reply).await;
            }
            JupyterMessageContent::CompleteRequest(r) => {
                let reply = match self
                    .query(Query::Complete {
                        code: r.code.clone(),
                        cursor_pos: r.cursor_pos,
                    })
                    .await
                {
                    Ok(v) => complete_reply(v, r.cursor_pos),
                    Err(e) => CompleteReply {
                        cursor_start: r.cursor_pos,
                        cursor_end: r.cursor_pos,
                        status: ReplyStatus::Error,
                        error: Some(Box::new(reply_error("CompleteError", &e))),
                        ..CompleteReply::default()
                    },
                };
                self.reply(chan, req, "complete_reply", &reply).await;
            }
            JupyterMessageContent::InspectRequest(r) => {
                let reply = match self
                    .query(Query::Inspect {
                        code: r.code.clone(),
                        cursor_pos: r.cursor_pos,
                        detail_level: r.detail_level.unwrap_or(0).min(1) as u8,
                    })
                    .await
                {
                    Ok(v) => inspect_reply(v),
                    Err(e) => InspectReply {
                        status: ReplyStatus::Error,
                        error: Some(Box::new(reply_error("InspectError", &e))),
                        ..InspectReply::default()
                    },
                };
                self.reply(chan, req, "inspect_reply", &reply).await;
            }
            JupyterMessageContent::HistoryRequest(r) => {
                let reply = self.history_reply(r).await;
                self.reply(chan, req, "history_reply", &reply).await;
            }
            JupyterMessageContent::CommInfoRequest(r) => {
                let reply = crate::jupyter::comm::info(self, r.target_name.clone()).await;
                self.reply(chan, req, "comm_info_reply", &reply).await;
            }
            JupyterMessageContent::CommOpen(_)
            | JupyterMessageContent::CommMsg(_)
            | JupyterMessageContent::CommClose(_) => crate::jupyter::comm::deliver(self, req).await,
            JupyterMessageContent::InterruptRequest(_) => {
                let result = match self.session_now() {
                    Some(s) => s.interrupt().map_err(|e| e.to_string()),
                    None => Ok(()),
                };
                let reply = match result {
                    Ok(()) => InterruptReply::new(),
                    Err(e) => InterruptReply {
                        status: ReplyStatus::Error,
                        error: Some(Box::new(reply_error("InterruptError", &e))),
                    },
                };
                self.reply(chan, req, "interrupt_reply", &reply).await;
            }
            JupyterMessageContent::ShutdownRequest(r) => self.shutdown(chan, req, r.restart).await,
            JupyterMessageContent::DebugRequest(r) => {
                let reply = DebugReply {
                    content: json!({
                        "type": "response",
                        "request_seq": r.content.get("seq").cloned().unwrap_or(json!(0)),
                        "success": false,
                        "command": r.content.get("command").cloned().unwrap_or(json!("")),
                        "message": "Spindle has no debugger",
                    }),
                };
                self.reply(chan, req, "debug_reply", &reply).await;
            }
            _ if req.msg_type == "connect_request" => {
                let i = &self.info;
                let reply = json!({
                    "status": "ok", "shell_port": i.shell_port, "iopub_port": i.iopub_port,
                    "stdin_port": i.stdin_port, "hb_port": i.hb_port, "control_port": i.control_port,
                });
                self.reply(chan, req, "connect_reply", &reply).await;
            }
            _ if req.msg_type.ends_with("_request") => {
                let reply_type = req.msg_type.replace("_request", "_reply");
                tracing::info!(msg_type = %req.msg_type, "unsupported request");
                self.reply(
                    chan,
                    req,
                    &reply_type,
                    &error_content(
                        "UnknownMessageType",
                        &format!("Spindle does not handle {}", req.msg_type),
                    ),
                )
                .await;
            }
            _ => tracing::debug!(msg_type = %req.msg_type, "message ignored"),
        }
    }

    pub(crate) async fn query(&self, q: Query) -> Result<Value, String> {
        let s = self.session().await?;
        s.query(q).await.map_err(|e| e.to_string())
    }

    async fn kernel_info(&self) -> KernelInfoReply {
        let version = match self.session().await {
            Ok(s) => s.info().language_version.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let l = self.lang;
        KernelInfoReply {
            status: ReplyStatus::Ok,
            protocol_version: wire::PROTOCOL_VERSION.to_string(),
            implementation: "spindle".to_string(),
            implementation_version: env!("CARGO_PKG_VERSION").to_string(),
            language_info: LanguageInfo {
                name: l.name.to_string(),
                version: version.clone(),
                mimetype: Some(l.mimetype.to_string()),
                file_extension: Some(l.extension.to_string()),
                pygments_lexer: Some(l.pygments.to_string()),
                codemirror_mode: Some((l.codemirror)()),
                nbconvert_exporter: Some(l.exporter.to_string()),
            },
            banner: format!(
                "Spindle {}: {} {version} in a persistent session",
                env!("CARGO_PKG_VERSION"),
                l.pretty
            ),
            help_links: vec![
                HelpLink {
                    text: format!("{} documentation", l.pretty),
                    url: l.docs.to_string(),
                },
                HelpLink {
                    text: "Jupyter messaging".to_string(),
                    url: "https://jupyter-client.readthedocs.io/en/latest/messaging.html"
                        .to_string(),
                },
            ],
            debugger: false,
            error: None,
        }
    }

    async fn history_reply(&self, r: &HistoryRequest) -> HistoryReply {
        let given = |n: i32| (n >= 0).then_some(n as usize);
        let (access, output) = match r {
            HistoryRequest::Tail { n, output, .. } => (
                Access::Tail {
                    n: given(*n).unwrap_or(10),
                },
                *output,
            ),
            HistoryRequest::Range {
                session,
                start,
                stop,
                output,
                ..
            } => (
                Access::Range {
                    session: session.unwrap_or(0) as i64,
                    start: (*start).max(0) as u64,
                    stop: (*stop).max(0) as u64,
                },
                *output,
            ),
            HistoryRequest::Search {
                pattern,
                unique,
                n,
                output,
                ..
            } => (
                Access::Search {
                    pattern: pattern.clone(),
                    unique: *unique,
                    n: given(*n).filter(|n| *n > 0),
                },
                *output,
            ),
        };
        let entries = self.history().await.query(&access);
        HistoryReply::new(
            entries
                .into_iter()
                .map(|e| {
                    let (s, l) = (e.session as usize, e.line as usize);
                    if output {
                        HistoryEntry::InputOutput(s, l, (e.input, e.output.unwrap_or_default()))
                    } else {
                        HistoryEntry::Input(s, l, e.input)
                    }
                })
                .collect(),
        )
    }

    async fn shutdown(self: &Arc<Self>, chan: Chan, req: &Request, restart: bool) {
        let managed = matches!(self.owner, Owner::Kernel { managed: true, .. });
        let mut status = ReplyStatus::Ok;
        let mut error = None;
        if restart && !managed {
            if let Err(e) = self.restart_in_place().await {
                status = ReplyStatus::Error;
                error = Some(Box::new(reply_error("RestartError", &e)));
            }
        }
        let reply = ShutdownReply {
            restart,
            status,
            error,
        };
        self.reply(chan, req, "shutdown_reply", &reply).await;
        // ipykernel also publishes the reply, so every client learns of the shutdown.
        self.publish(&req.header_raw, "shutdown_reply", &reply)
            .await;
        if !restart || managed {
            // The process ends (or a manager starts a fresh one): finish the idle status and
            // let the writers flush first.
            let s = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                s.stop(StopReason::Shutdown);
            });
        }
    }

    /// A fresh process for the session, keeping this server (and its clients) as they are.
    async fn restart_in_place(&self) -> Result<(), String> {
        match self.session_now() {
            Some(s) => s.restart().await.map_err(|e| e.to_string())?,
            None => match &self.owner {
                Owner::Kernel { kernel, spec, .. } => {
                    let r = kernel
                        .create_session(spec.clone())
                        .await
                        .map_err(|e| e.to_string());
                    self.slot_tx.send_replace(Some(r.clone()));
                    r?;
                }
                Owner::Attached => return Err("the session is gone".into()),
            },
        }
        if let Some(s) = self.session_now() {
            self.base.store(s.info().execution_count, Ordering::Relaxed);
        }
        let h = self.history().await;
        let _ = tokio::task::spawn_blocking(move || h.new_session()).await;
        Ok(())
    }
}

fn error_content(ename: &str, evalue: &str) -> Value {
    json!({"status": "error", "ename": ename, "evalue": evalue, "traceback": [format!("{ename}: {evalue}")]})
}

pub(crate) fn reply_error(ename: &str, evalue: &str) -> ReplyError {
    ReplyError {
        ename: ename.to_string(),
        evalue: evalue.to_string(),
        traceback: vec![format!("{ename}: {evalue}")],
    }
}

fn is_complete_reply(v: &Value) -> IsCompleteReply {
    let indent = v["indent"].as_str().unwrap_or_default().to_string();
    match v["status"].as_str() {
        Some("complete") => IsCompleteReply::complete(),
        Some("incomplete") => IsCompleteReply::new(IsCompleteReplyStatus::Incomplete, indent),
        Some("invalid") => IsCompleteReply::invalid(),
        _ => IsCompleteReply::unknown(),
    }
}

fn complete_reply(v: Value, cursor: usize) -> CompleteReply {
    let num = |k: &str| v[k].as_u64().map_or(cursor, |n| n as usize);
    CompleteReply {
        matches: v["matches"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        cursor_start: num("cursor_start"),
        cursor_end: num("cursor_end"),
        metadata: v["metadata"].as_object().cloned().unwrap_or_default(),
        status: ReplyStatus::Ok,
        error: None,
    }
}

fn inspect_reply(v: Value) -> InspectReply {
    InspectReply {
        found: v["found"].as_bool().unwrap_or(false),
        data: media(v["data"].as_object().cloned().unwrap_or_default()),
        metadata: v["metadata"].as_object().cloned().unwrap_or_default(),
        status: ReplyStatus::Ok,
        error: None,
    }
}

/// A MIME bundle as the crate's typed [`Media`]; entries it cannot type are kept as they are.
pub(crate) fn media(bundle: serde_json::Map<String, Value>) -> Media {
    use serde::Deserialize;
    let mut content = Vec::with_capacity(bundle.len());
    for (k, v) in bundle {
        let mut one = serde_json::Map::with_capacity(1);
        one.insert(k, v);
        let one = Value::Object(one);
        match Media::deserialize(&one) {
            Ok(m) => content.extend(m.content),
            Err(_) => {
                if let Value::Object(one) = one {
                    content.extend(one.into_iter().map(|(k, v)| {
                        tracing::debug!(mime = %k, "MIME entry kept untyped");
                        MediaType::Other((k, v))
                    }));
                }
            }
        }
    }
    Media::new(content)
}
