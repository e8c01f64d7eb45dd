//! Comms: the Jupyter comm protocol between a frontend and the code in the session (what
//! ipywidgets runs on).
//!
//! | from | message | what happens |
//! |---|---|---|
//! | frontend (shell) | `comm_open`, `comm_msg`, `comm_close` | served in order with executions, as ipykernel does (one waits for a running cell): handed to the session ([`Session::comm`]), whose code runs the registered handler; what the handler prints, displays or sends goes to iopub with the comm message as parent (an Output widget captures by that msg_id) |
//! | frontend (shell) | `comm_info_request` | the session's open comms, filtered by `target_name` |
//! | session | a `comm` chunk | `comm_open` / `comm_msg` / `comm_close` on iopub, metadata and binary buffers (base64 across the child protocol) as their own frames |
//!
//! A language without comms (bash) has none open; a `comm_open` to it is answered with
//! `comm_close`, as ipykernel answers a target nobody registered. In a language with comms the
//! child does that itself, and a message for an unknown comm id is logged there and ignored.
//!
//! [`Session::comm`]: spindle_kernel::Session::comm

use std::collections::HashMap;

use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt;
use jupyter_protocol::{CommId, CommInfo, CommInfoReply, JupyterMessageContent, ReplyStatus};
use serde_json::{Map, Value};
use spindle_kernel::{ExecOptions, Query};
use spindle_protocol::{CommKind, CommMessage};

use super::server::{reply_error, Server};
use super::wire::Request;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The comm message a request carries, if it is one.
fn message_of(req: &Request) -> Option<CommMessage> {
    let metadata = serde_json::from_slice::<Map<String, Value>>(&req.metadata).unwrap_or_default();
    let buffers = req.buffers.iter().map(|b| B64.encode(b)).collect();
    let (msg_type, comm_id, target_name, target_module, data) = match req.content.as_ref().ok()? {
        JupyterMessageContent::CommOpen(c) => (
            CommKind::CommOpen,
            c.comm_id.0.clone(),
            Some(c.target_name.clone()),
            c.target_module.clone(),
            c.data.clone(),
        ),
        JupyterMessageContent::CommMsg(c) => (
            CommKind::CommMsg,
            c.comm_id.0.clone(),
            None,
            None,
            c.data.clone(),
        ),
        JupyterMessageContent::CommClose(c) => (
            CommKind::CommClose,
            c.comm_id.0.clone(),
            None,
            None,
            c.data.clone(),
        ),
        _ => return None,
    };
    Some(CommMessage {
        msg_type,
        comm_id,
        target_name,
        target_module,
        data,
        metadata,
        buffers,
    })
}

/// Serve a `comm_open`, `comm_msg` or `comm_close` from a frontend (inside its busy/idle).
pub(crate) async fn deliver(server: &Server, req: &Request) {
    let Some(message) = message_of(req) else {
        return;
    };
    let parent = &req.header_raw;
    let session = match server.session().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(msg_type = %req.msg_type, error = %e, "comm message not delivered: no session");
            refuse(server, parent, &message).await;
            return;
        }
    };
    if !session.language().supports_comms() {
        refuse(server, parent, &message).await;
        return;
    }
    let id = uuid::Uuid::new_v4().to_string();
    server.mark_ours(&id);
    let opts = ExecOptions {
        id: Some(id),
        store_history: false,
        allow_stdin: false,
        parent: serde_json::from_slice(parent).ok(),
        ..ExecOptions::default()
    };
    server.set_own_busy(true);
    match session.comm(message, opts) {
        Ok(mut exec) => {
            let mut m = super::execute::Mapper::new(parent.clone(), false);
            while let Some(chunk) = exec.next().await {
                if m.on_chunk(server, chunk).await.is_some() {
                    // A handler cannot ask for input (allow_stdin is off); unblock it anyway.
                    let _ = session.input_reply("");
                }
            }
        }
        Err(e) => {
            tracing::warn!(msg_type = %req.msg_type, error = %e, "comm message not delivered")
        }
    }
    server.set_own_busy(false);
}

/// Nobody in the session can take this message: a `comm_open` is answered with `comm_close`
/// (what ipykernel does for a target nobody registered); anything else is logged and ignored.
async fn refuse(server: &Server, parent: &Bytes, message: &CommMessage) {
    match message.msg_type {
        CommKind::CommOpen => {
            tracing::info!(
                target = message.target_name.as_deref().unwrap_or_default(),
                comm = %message.comm_id,
                "no such comm target in this session; closing the comm"
            );
            let close = CommMessage {
                msg_type: CommKind::CommClose,
                comm_id: message.comm_id.clone(),
                target_name: None,
                target_module: None,
                data: Map::new(),
                metadata: Map::new(),
                buffers: vec![],
            };
            publish(server, parent, close).await;
        }
        kind => tracing::warn!(
            msg_type = kind.msg_type(),
            comm = %message.comm_id,
            "no such comm in this session; message ignored"
        ),
    }
}

/// `comm_info_request`: the open comms (those with `target_name`, or all).
pub(crate) async fn info(server: &Server, target_name: Option<String>) -> CommInfoReply {
    let session = match server.session().await {
        Ok(s) => s,
        Err(e) => return info_error(&e),
    };
    if !session.language().supports_comms() {
        return CommInfoReply::default();
    }
    match session.query(Query::CommInfo { target_name }).await {
        Ok(v) => {
            let comms: HashMap<CommId, CommInfo> = v["comms"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(id, c)| {
                            let target = c["target_name"].as_str().unwrap_or_default();
                            (
                                CommId(id.clone()),
                                CommInfo {
                                    target_name: target.to_string(),
                                },
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            CommInfoReply {
                comms,
                ..CommInfoReply::default()
            }
        }
        Err(e) => info_error(&e.to_string()),
    }
}

fn info_error(why: &str) -> CommInfoReply {
    CommInfoReply {
        status: ReplyStatus::Error,
        comms: HashMap::new(),
        error: Some(Box::new(reply_error("CommInfoError", why))),
    }
}

/// A comm message from the session, on iopub under `parent`.
pub(crate) async fn publish(server: &Server, parent: &Bytes, m: CommMessage) {
    let kind = m.msg_type.msg_type();
    let content = serde_json::to_vec(&m.jupyter_content()).unwrap_or_else(|_| b"{}".to_vec());
    let metadata = serde_json::to_vec(&m.metadata).unwrap_or_else(|_| b"{}".to_vec());
    // A buffer that does not decode stays in its place (empty), so buffer paths still match.
    let buffers = m
        .buffers
        .iter()
        .map(|b| match B64.decode(b) {
            Ok(v) => Bytes::from(v),
            Err(e) => {
                tracing::warn!(error = %e, comm = %m.comm_id, "a comm buffer is not base64; sent empty");
                Bytes::new()
            }
        })
        .collect();
    let msg = server.wire.build_with_buffers(
        vec![server.wire.topic(kind)],
        kind,
        parent,
        Bytes::from(metadata),
        Bytes::from(content),
        buffers,
    );
    server.publish_built(msg).await;
}
