//! The Jupyter wire format: multipart ZeroMQ messages, signed with HMAC-SHA256.
//!
//! ```text
//! [identities…, "<IDS|MSG>", signature, header, parent_header, metadata, content, buffers…]
//! ```
//!
//! Incoming requests keep their header as the exact bytes received, so every reply and iopub
//! message can echo it verbatim as its `parent_header` (extra header fields and a missing
//! `date` survive the round trip). Content is parsed into `jupyter-protocol`'s typed structs.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Timelike, Utc};
use jupyter_protocol::{Header, JupyterMessageContent};
use serde::Serialize;
use serde_json::Value;
use zeromq::ZmqMessage;

use crate::auth::Signer;

/// Separates routing identities from the message proper.
pub const DELIMITER: &[u8] = b"<IDS|MSG>";
/// The protocol version Spindle speaks.
pub const PROTOCOL_VERSION: &str = "5.3";
/// Largest message the shell, control and stdin sockets keep, in bytes (the native API's
/// default `--max-message`). A larger one is refused from its frame headers and its bytes are
/// read and discarded as they arrive, never kept; it is then dropped like any bad message (the
/// Jupyter protocol has no reply for a message that cannot be read), and logged. Requests from
/// Jupyter clients are far smaller; comm messages with buffers fit too.
pub const MAX_MESSAGE: usize = 64 << 20;

/// Why an incoming message was dropped.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("the message is {0} bytes; at most {MAX_MESSAGE} are accepted; it was read and discarded as it arrived, not kept")]
    TooLarge(u64),
    #[error("no <IDS|MSG> delimiter")]
    NoDelimiter,
    #[error("{0} frames after the delimiter; at least 5 are needed")]
    TooFewFrames(usize),
    #[error("bad signature")]
    BadSignature,
    #[error("header is not a JSON object with msg_id and msg_type: {0}")]
    BadHeader(String),
}

/// A verified request.
#[derive(Debug, Clone)]
pub struct Request {
    /// Routing identities, to address the reply.
    pub ids: Vec<Bytes>,
    /// The header exactly as received: the `parent_header` of everything it causes.
    pub header_raw: Bytes,
    pub msg_id: String,
    pub msg_type: String,
    /// The content, or why it could not be read as the type's struct.
    pub content: Result<JupyterMessageContent, String>,
    /// The metadata frame as received (comm messages carry a protocol version there).
    pub metadata: Bytes,
    /// Binary buffers after the content (comm messages of widgets), unsigned as in Jupyter.
    pub buffers: Vec<Bytes>,
}

/// A header read leniently: only `msg_id` and `msg_type` are required.
#[derive(serde::Deserialize)]
struct LooseHeader {
    msg_id: String,
    msg_type: String,
}

/// Split, verify and parse one multipart message.
pub fn parse(msg: ZmqMessage, signer: &Signer) -> Result<Request, WireError> {
    if let Some(size) = msg.oversized() {
        return Err(WireError::TooLarge(size));
    }
    let frames = msg.into_vec();
    let at = frames
        .iter()
        .position(|f| f.as_ref() == DELIMITER)
        .ok_or(WireError::NoDelimiter)?;
    let rest = &frames[at + 1..];
    if rest.len() < 5 {
        return Err(WireError::TooFewFrames(rest.len()));
    }
    let (sig, header, parent, metadata, content) =
        (&rest[0], &rest[1], &rest[2], &rest[3], &rest[4]);
    if !signer.verify(sig, &[header, parent, metadata, content]) {
        return Err(WireError::BadSignature);
    }
    // The typed header when the client sent a complete one; a lenient read otherwise (some
    // clients omit `date` or `username`).
    let (msg_id, msg_type) = match serde_json::from_slice::<Header>(header) {
        Ok(h) => (h.msg_id, h.msg_type),
        Err(_) => {
            let h: LooseHeader =
                serde_json::from_slice(header).map_err(|e| WireError::BadHeader(e.to_string()))?;
            (h.msg_id, h.msg_type)
        }
    };
    let content = match serde_json::from_slice::<Value>(content) {
        Ok(mut v) => {
            fill_defaults(&msg_type, &mut v);
            JupyterMessageContent::from_type_and_content(&msg_type, v).map_err(|e| e.to_string())
        }
        Err(e) => Err(format!("content is not JSON: {e}")),
    };
    Ok(Request {
        ids: frames[..at].to_vec(),
        header_raw: header.clone(),
        msg_id,
        msg_type,
        content,
        metadata: metadata.clone(),
        buffers: rest[5..].to_vec(),
    })
}

/// Fill in optional fields that the typed structs require, with the defaults the messaging
/// spec gives them, so that terse clients are served rather than refused.
fn fill_defaults(msg_type: &str, v: &mut Value) {
    let Some(obj) = v.as_object_mut() else { return };
    let mut set = |key: &str, val: Value| {
        if obj.get(key).is_none_or(Value::is_null) {
            obj.insert(key.to_string(), val);
        }
    };
    match msg_type {
        "execute_request" => {
            set("silent", Value::Bool(false));
            set("store_history", Value::Bool(true));
            set("user_expressions", Value::Object(Default::default()));
            set("allow_stdin", Value::Bool(true));
            set("stop_on_error", Value::Bool(true));
        }
        "complete_request" | "inspect_request" => {
            // Default cursor: the end of the code.
            let end = obj
                .get("code")
                .and_then(Value::as_str)
                .map_or(0, |c| c.chars().count());
            if obj.get("cursor_pos").is_none_or(Value::is_null) {
                obj.insert("cursor_pos".into(), Value::from(end));
            }
        }
        "history_request" => {
            set("output", Value::Bool(false));
            set("raw", Value::Bool(true));
            set("hist_access_type", Value::String("tail".into()));
            // -1 stands for "not given" (no limit, or the current session).
            set("n", Value::from(-1));
            set("start", Value::from(0));
            set("stop", Value::from(0));
            set("pattern", Value::String("*".into()));
            set("unique", Value::Bool(false));
        }
        "shutdown_request" => set("restart", Value::Bool(false)),
        _ => {}
    }
}

/// Builds signed outgoing messages for one kernel.
#[derive(Debug)]
pub struct Wire {
    signer: Signer,
    /// This kernel's session id (the `session` of every header it sends).
    session: String,
    /// `<session>_<pid>_`: every message id starts so (the pid read once, not per message).
    id_prefix: String,
    counter: AtomicU64,
}

/// An empty parent header, for messages no request caused.
pub fn no_parent() -> Bytes {
    Bytes::from_static(b"{}")
}

impl Wire {
    pub fn new(signer: Signer) -> Self {
        let session = uuid::Uuid::new_v4().to_string();
        Self {
            signer,
            id_prefix: format!("{session}_{}_", std::process::id()),
            session,
            counter: AtomicU64::new(0),
        }
    }

    pub fn session(&self) -> &str {
        &self.session
    }

    /// A fresh header. Message ids are this kernel's session id plus a counter: unique, and
    /// cheaper than a random UUID per message.
    pub fn header(&self, msg_type: &str) -> Header {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        Header {
            msg_id: format!("{}{n}", self.id_prefix),
            username: "spindle".to_string(),
            session: self.session.clone(),
            date: now_micros(),
            msg_type: msg_type.to_string(),
            version: PROTOCOL_VERSION.to_string(),
        }
    }

    /// A signed message: `prefix` frames (identities, or an iopub topic), then the message.
    pub fn build<C: Serialize + ?Sized>(
        &self,
        prefix: Vec<Bytes>,
        msg_type: &str,
        parent: &Bytes,
        content: &C,
    ) -> ZmqMessage {
        let content = serde_json::to_vec(content).unwrap_or_else(|e| {
            tracing::error!(error = %e, msg_type, "content does not serialise");
            b"{}".to_vec()
        });
        self.build_raw(prefix, msg_type, parent, Bytes::from(content))
    }

    /// Like [`Wire::build`], with content already serialised.
    pub fn build_raw(
        &self,
        mut frames: Vec<Bytes>,
        msg_type: &str,
        parent: &Bytes,
        content: Bytes,
    ) -> ZmqMessage {
        let header = serde_json::to_vec(&self.header(msg_type)).expect("a header serialises");
        let metadata: &[u8] = b"{}";
        let sig = self.signer.sign(&[&header, parent, metadata, &content]);
        frames.reserve(6);
        frames.push(Bytes::from_static(DELIMITER));
        frames.push(Bytes::from(sig));
        frames.push(Bytes::from(header));
        frames.push(parent.clone());
        frames.push(Bytes::from_static(metadata));
        frames.push(content);
        ZmqMessage::try_from(frames).expect("frames are never empty")
    }

    /// A signed message with its own metadata frame and binary buffers after the content (a
    /// comm message: buffers are not signed, as in Jupyter).
    pub fn build_with_buffers(
        &self,
        mut frames: Vec<Bytes>,
        msg_type: &str,
        parent: &Bytes,
        metadata: Bytes,
        content: Bytes,
        buffers: Vec<Bytes>,
    ) -> ZmqMessage {
        let header = serde_json::to_vec(&self.header(msg_type)).expect("a header serialises");
        let sig = self.signer.sign(&[&header, parent, &metadata, &content]);
        frames.reserve(6 + buffers.len());
        frames.push(Bytes::from_static(DELIMITER));
        frames.push(Bytes::from(sig));
        frames.push(Bytes::from(header));
        frames.push(parent.clone());
        frames.push(metadata);
        frames.push(content);
        frames.extend(buffers);
        ZmqMessage::try_from(frames).expect("frames are never empty")
    }

    /// The iopub topic for a message type (clients subscribe to everything; the topic is
    /// informative, as in ipykernel).
    pub fn topic(&self, msg_type: &str) -> Bytes {
        Bytes::from(format!("kernel.{}.{msg_type}", self.session))
    }
}

/// The content of a `stream` message as JSON. Output is the one large payload a kernel sends
/// often, so its text is escaped sixteen bytes at a time instead of through serde's per-byte
/// loop; the result is byte-for-byte what `serde_json::to_vec` gives. It is written into
/// `out`'s memory: once the message that held the previous result is sent and dropped, the
/// same megabyte serves again, instead of a fresh mapping whose every page faults in.
pub fn stream_json(name: jupyter_protocol::Stdio, text: &str, out: &mut BytesMut) -> Bytes {
    let name = match name {
        jupyter_protocol::Stdio::Stdout => "stdout",
        jupyter_protocol::Stdio::Stderr => "stderr",
    };
    let text = text.as_bytes();
    out.clear();
    out.reserve(text.len() + text.len() / 16 + 40);
    out.extend_from_slice(b"{\"name\":\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\",\"text\":\"");
    crate::json_text::escape_into(out, text);
    out.extend_from_slice(b"\"}");
    out.split().freeze()
}

/// Now, in UTC, to the microsecond: Jupyter's clients parse dates with Python, which keeps
/// microseconds.
fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    let micros = now.nanosecond() / 1000 * 1000;
    now.with_nanosecond(micros).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(signer: &Signer, ids: &[&[u8]], header: &[u8], content: &[u8]) -> ZmqMessage {
        let parent: &[u8] = b"{}";
        let meta: &[u8] = b"{}";
        let sig = signer.sign(&[header, parent, meta, content]);
        let mut frames: Vec<Bytes> = ids.iter().map(|i| Bytes::copy_from_slice(i)).collect();
        frames.push(Bytes::from_static(DELIMITER));
        frames.push(Bytes::from(sig));
        frames.push(Bytes::copy_from_slice(header));
        frames.push(Bytes::copy_from_slice(parent));
        frames.push(Bytes::copy_from_slice(meta));
        frames.push(Bytes::copy_from_slice(content));
        ZmqMessage::try_from(frames).unwrap()
    }

    #[test]
    fn parses_a_request_without_date_and_keeps_the_raw_header() {
        let s = Signer::new(b"k");
        let header = br#"{"msg_id":"m1","msg_type":"execute_request","session":"c","username":"u","version":"5.3","extra":1}"#;
        let req = parse(signed(&s, &[b"id1"], header, br#"{"code":"1"}"#), &s).unwrap();
        assert_eq!(req.msg_id, "m1");
        assert_eq!(req.ids, vec![Bytes::from_static(b"id1")]);
        assert_eq!(req.header_raw.as_ref(), header);
        match req.content.unwrap() {
            JupyterMessageContent::ExecuteRequest(r) => {
                assert_eq!(r.code, "1");
                assert!(r.store_history && !r.silent && r.stop_on_error);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rejects_bad_signatures_and_short_messages() {
        let s = Signer::new(b"k");
        let other = Signer::new(b"not-k");
        let header = br#"{"msg_id":"m","msg_type":"kernel_info_request"}"#;
        assert!(matches!(
            parse(signed(&other, &[], header, b"{}"), &s),
            Err(WireError::BadSignature)
        ));
        let short = ZmqMessage::try_from(vec![
            Bytes::from_static(DELIMITER),
            Bytes::from_static(b"x"),
        ])
        .unwrap();
        assert!(matches!(parse(short, &s), Err(WireError::TooFewFrames(1))));
        let none = ZmqMessage::from("hello");
        assert!(matches!(parse(none, &s), Err(WireError::NoDelimiter)));
    }

    #[test]
    fn unparsable_content_is_reported_not_fatal() {
        let s = Signer::new(b"k");
        let header = br#"{"msg_id":"m","msg_type":"execute_request"}"#;
        let req = parse(signed(&s, &[], header, br#"{"code":5}"#), &s).unwrap();
        assert!(req.content.is_err());
    }

    #[test]
    fn stream_json_matches_serde() {
        use jupyter_protocol::{Stdio, StreamContent};
        for text in crate::json_text::tests::samples() {
            for name in [Stdio::Stdout, Stdio::Stderr] {
                let c = StreamContent {
                    name,
                    text: text.clone(),
                };
                assert_eq!(
                    String::from_utf8(
                        stream_json(c.name.clone(), &c.text, &mut BytesMut::new()).to_vec()
                    )
                    .unwrap(),
                    serde_json::to_string(&c).unwrap()
                );
            }
        }
    }

    #[test]
    fn built_messages_verify_and_have_unique_ids() {
        let s = Signer::new(b"k");
        let w = Wire::new(s.clone());
        let parent = Bytes::from_static(br#"{"msg_id":"p"}"#);
        let a = w.build(
            vec![],
            "status",
            &parent,
            &serde_json::json!({"execution_state":"busy"}),
        );
        let b = w.build(
            vec![],
            "status",
            &parent,
            &serde_json::json!({"execution_state":"idle"}),
        );
        let fa = a.into_vec();
        let fb = b.into_vec();
        assert!(s.verify(&fa[1], &[&fa[2], &fa[3], &fa[4], &fa[5]]));
        assert_eq!(fa[3], parent);
        let ha: Value = serde_json::from_slice(&fa[2]).unwrap();
        let hb: Value = serde_json::from_slice(&fb[2]).unwrap();
        assert_ne!(ha["msg_id"], hb["msg_id"]);
        let date = ha["date"].as_str().unwrap();
        assert!(date.ends_with('Z') || date.contains('+'), "{date}");
        assert_eq!(ha["version"], "5.3");
    }
}
