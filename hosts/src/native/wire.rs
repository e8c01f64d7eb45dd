//! The native API on the wire: checking incoming `[identity, signature, json]` messages, and
//! signing outgoing replies and events with bounded memory.
//!
//! Memory is bounded by *byte budgets* (tokio semaphores whose permits are bytes): each outgoing
//! message holds its permits inside the `Bytes` that ZeroMQ queues, so they come back only when
//! the socket has encoded the message for the wire (or dropped it). A client that stops reading
//! therefore pins at most its own budget, and the PUB side at most the event budget.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use spindle_protocol::native::{ErrorCode, Reply, ReplyBody, Request};
use spindle_protocol::{Body, Chunk};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use zeromq::{RouterSendHalf, SocketSend, ZmqMessage};

use crate::auth::Signer;

/// Longest request id accepted.
pub const MAX_ID_BYTES: usize = 256;

/// Largest subscription message a PUB or XPUB socket keeps (a topic is a session id); a larger
/// one is discarded as it arrives and subscribes to nothing.
pub const MAX_SUBSCRIPTION: usize = 64 << 10;

/// What a message may count at the transport beyond `max_message` before it is discarded as
/// it arrives: the transport also counts [`zeromq::FRAME_OVERHEAD`] bytes per frame, and a message
/// a little over the limit is better refused here, with its exact size.
const TRANSPORT_SLACK: u64 = 4096;

/// Socket options that bound incoming messages near `max_message` bytes: a larger message is
/// refused from its frame headers, its bytes read in pieces of at most 64 KiB and discarded,
/// never kept (see [`check`]).
pub fn socket_options(max_message: usize) -> zeromq::SocketOptions {
    let mut options = zeromq::SocketOptions::default();
    options.max_message_size((max_message as u64).saturating_add(TRANSPORT_SLACK));
    options
}

/// The zeromq crate queues up to 100 000 messages per peer; charging every message at least
/// budget / 50 000 bytes keeps its queues from filling (a full queue would block our sends).
const MAX_MESSAGES_IN_FLIGHT: usize = 50_000;

/// A request that passed every check.
#[derive(Debug)]
pub struct Checked {
    pub identity: Bytes,
    pub request: Request,
}

/// A request that failed a check: what to answer, if it can be addressed.
#[derive(Debug)]
pub struct Rejected {
    pub identity: Bytes,
    pub id: Option<String>,
    pub code: ErrorCode,
    pub reason: String,
}

/// Check one message from the ROUTER socket: size, frames, signature, JSON, shape. Nothing here
/// trusts the peer: every failure becomes a [`Rejected`], never a panic.
pub fn check(msg: ZmqMessage, signer: &Signer, max_message: usize) -> Result<Checked, Rejected> {
    let oversized = msg.oversized();
    let mut frames = msg.into_vec().into_iter();
    // The ROUTER socket puts the peer's identity first; it is always there.
    let identity = frames.next().unwrap_or_default();
    if let Some(size) = oversized {
        // The transport refused it from its frame headers and discarded it as it arrived.
        return Err(Rejected {
            identity,
            id: None,
            code: ErrorCode::TooLarge,
            reason: format!(
                "the message is {size} bytes; this host accepts at most {max_message} (--max-message); it was read and discarded as it arrived, not kept"
            ),
        });
    }
    let frames: Vec<Bytes> = frames.collect();
    let reject = |code, reason: String, id: Option<String>| Rejected {
        identity: identity.clone(),
        id,
        code,
        reason,
    };
    let size: usize = frames.iter().map(Bytes::len).sum();
    if size > max_message {
        return Err(reject(
            ErrorCode::TooLarge,
            format!("the message is {size} bytes; this host accepts at most {max_message} (--max-message)"),
            None,
        ));
    }
    if frames.len() != 2 {
        return Err(reject(
            ErrorCode::BadFrames,
            format!("expected 2 frames [signature, json], got {}", frames.len()),
            None,
        ));
    }
    let (signature, json) = (&frames[0], &frames[1]);
    if signature.is_empty() || !signer.verify(signature, &[json]) {
        return Err(reject(
            ErrorCode::BadSignature,
            if signature.is_empty() {
                "the signature frame is empty; sign the JSON frame with HMAC-SHA256 and the key of the connection file".into()
            } else {
                "the signature does not match the message (HMAC-SHA256 of the JSON frame, hex, keyed with the connection file's key)".into()
            },
            None,
        ));
    }
    let value: Value = serde_json::from_slice(json)
        .map_err(|e| reject(ErrorCode::BadJson, format!("invalid JSON: {e}"), None))?;
    let id = value.get("id").and_then(Value::as_str).map(str::to_string);
    if let Some(id) = &id {
        if id.len() > MAX_ID_BYTES {
            return Err(reject(
                ErrorCode::BadRequest,
                format!(
                    "the request id is {} bytes; at most {MAX_ID_BYTES} are allowed",
                    id.len()
                ),
                None,
            ));
        }
    }
    let request: Request = serde_json::from_value(value).map_err(|e| {
        reject(
            ErrorCode::BadRequest,
            format!("not a valid request: {e}"),
            id.clone(),
        )
    })?;
    Ok(Checked { identity, request })
}

/// JSON bytes that hold budget permits until ZeroMQ is done with them.
struct Charged {
    json: Vec<u8>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl AsRef<[u8]> for Charged {
    fn as_ref(&self) -> &[u8] {
        &self.json
    }
}

impl Drop for Charged {
    fn drop(&mut self) {
        // The socket is done with it: the next message is written into the same memory.
        spindle_kernel::buffers::recycle(std::mem::take(&mut self.json));
    }
}

/// A byte budget.
#[derive(Debug, Clone)]
pub struct Budget {
    sem: Arc<Semaphore>,
    total: usize,
    min_charge: usize,
}

/// How long to wait for budget.
#[derive(Debug, Clone, Copy)]
pub enum Wait {
    /// Give up at once.
    No,
    /// Give up after this long.
    Upto(Duration),
}

impl Budget {
    pub fn new(total: usize) -> Self {
        let total = total.clamp(1 << 16, u32::MAX as usize);
        Self {
            sem: Arc::new(Semaphore::new(total)),
            total,
            min_charge: (total / MAX_MESSAGES_IN_FLIGHT).max(64),
        }
    }

    /// Permits for a message of `len` bytes, or None when the budget stays exhausted.
    async fn charge(&self, len: usize, wait: Wait) -> Option<OwnedSemaphorePermit> {
        // A message larger than the whole budget waits for all of it.
        let n = len.max(self.min_charge).min(self.total) as u32;
        match wait {
            Wait::No => self.sem.clone().try_acquire_many_owned(n).ok(),
            Wait::Upto(d) => tokio::time::timeout(d, self.sem.clone().acquire_many_owned(n))
                .await
                .ok()
                .and_then(Result::ok),
        }
    }

    /// Serialise, sign and charge one message: `[signature, json]` frames.
    pub async fn frames<T: Serialize + JsonSize>(
        &self,
        signer: &Signer,
        msg: &T,
        wait: Wait,
    ) -> Option<[Bytes; 2]> {
        // Sized up front: a megabyte of output grown by doubling from nothing is copied twice
        // over and takes a dozen fresh allocations.
        let mut json = spindle_kernel::buffers::take(msg.json_size_hint());
        // Console text of some size is escaped sixteen bytes at a time, not by serde_json's
        // per-byte loop; the JSON is the same.
        let fast = msg
            .text_stub()
            .is_some_and(|(stub, text)| crate::json_text::to_vec_with_text(&mut json, &stub, text));
        let written = if fast {
            Ok(())
        } else {
            serde_json::to_writer(&mut json, msg)
        };
        let json = match written {
            Ok(()) => json,
            Err(e) => {
                tracing::error!(error = %e, "cannot serialise a message");
                spindle_kernel::buffers::recycle(json);
                return None;
            }
        };
        let permit = self.charge(json.len(), wait).await?;
        let signature = Bytes::from(signer.sign(&[&json]));
        let body = Bytes::from_owner(Charged {
            json,
            _permit: Some(permit),
        });
        Some([signature, body])
    }

    /// Sign and charge a `chunk` reply whose console text travels raw in a third frame
    /// (`text_frames`): `[signature, json, text]`, the signature over the JSON then the text.
    /// The text frame is the chunk's own text, shared with the session's log, not a copy.
    async fn frames_with_text(
        &self,
        signer: &Signer,
        stub: &ChunkMsg<'_>,
        text: SharedText,
        wait: Wait,
    ) -> Option<[Bytes; 3]> {
        let mut json = spindle_kernel::buffers::take(SMALL_MESSAGE + stub.json_size_hint());
        if let Err(e) = serde_json::to_writer(&mut json, stub) {
            tracing::error!(error = %e, "cannot serialise a message");
            spindle_kernel::buffers::recycle(json);
            return None;
        }
        let permit = self.charge(json.len() + text.as_ref().len(), wait).await?;
        let signature = Bytes::from(signer.sign(&[&json, text.as_ref()]));
        let body = Bytes::from_owner(Charged {
            json,
            _permit: Some(permit),
        });
        Some([signature, body, Bytes::from_owner(text)])
    }
}

/// A console chunk's text as a frame: the chunk, shared with the session's log, stays alive
/// until ZeroMQ is done with the frame. Only for chunks whose body is console text.
struct SharedText(Arc<Chunk>);

impl SharedText {
    fn new(chunk: &Arc<Chunk>) -> Option<Self> {
        matches!(
            chunk.body,
            Body::Console {
                content: Some(_),
                ..
            }
        )
        .then(|| Self(chunk.clone()))
    }
}

impl AsRef<[u8]> for SharedText {
    fn as_ref(&self) -> &[u8] {
        match &self.0.body {
            Body::Console {
                content: Some(text),
                ..
            } => text.as_bytes(),
            _ => &[],
        }
    }
}

/// A `chunk` message that borrows its chunk, so the chunk the session's log holds is sent
/// without being copied: with an `id`, the same JSON as
/// `Reply { id: Some(id), body: ReplyBody::Chunk { chunk } }`; without, as
/// `Event::Chunk { chunk }`. Every chunk the host sends goes through it.
pub struct ChunkMsg<'a> {
    pub id: Option<&'a str>,
    pub chunk: Cow<'a, Chunk>,
}

impl Serialize for ChunkMsg<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(2 + usize::from(self.id.is_some())))?;
        if let Some(id) = self.id {
            map.serialize_entry("id", id)?;
        }
        map.serialize_entry("type", "chunk")?;
        map.serialize_entry("chunk", &*self.chunk)?;
        map.end()
    }
}

impl JsonSize for ChunkMsg<'_> {
    fn json_size_hint(&self) -> usize {
        chunk_size_hint(&self.chunk)
    }

    fn text_stub(&self) -> Option<(Self, &str)> {
        let (chunk, text) = chunk_stub(&self.chunk)?;
        let stub = ChunkMsg {
            id: self.id,
            chunk: Cow::Owned(chunk),
        };
        Some((stub, text))
    }
}

/// `chunk` with its console text empty, for the JSON frame beside a text frame.
fn without_text(chunk: &Chunk) -> Chunk {
    let body = match &chunk.body {
        Body::Console { format, line, .. } => Body::Console {
            format: *format,
            content: Some(String::new()),
            line: *line,
        },
        other => other.clone(),
    };
    Chunk {
        session: chunk.session.clone(),
        request: chunk.request.clone(),
        seq: chunk.seq,
        start: chunk.start,
        end: chunk.end,
        body,
    }
}

/// About how many bytes a message takes as JSON, to size its buffer once.
pub trait JsonSize: Sized {
    fn json_size_hint(&self) -> usize;

    /// For a message that carries a console chunk with at least [`FAST_TEXT`] bytes of text:
    /// the same message with that text empty, and the text.
    fn text_stub(&self) -> Option<(Self, &str)> {
        None
    }
}

/// Console text from this size on is escaped by [`crate::json_text`]; below it, the envelope's
/// own serialisation would cost more than the escaping saves.
pub const FAST_TEXT: usize = 4096;

/// `chunk` without its console text, and the text, when there is at least [`FAST_TEXT`] of it.
fn chunk_stub(chunk: &Chunk) -> Option<(Chunk, &str)> {
    match &chunk.body {
        Body::Console {
            content: Some(text),
            ..
        } if text.len() >= FAST_TEXT => Some((without_text(chunk), text)),
        _ => None,
    }
}

/// The hint for a message that carries no chunk.
const SMALL_MESSAGE: usize = 256;

/// A chunk as JSON: its text (escaped: a newline takes two bytes) and the envelope. Rich
/// bodies are mostly base64 and JSON already.
pub fn chunk_size_hint(chunk: &Chunk) -> usize {
    const ENVELOPE: usize = 512;
    let body = match &chunk.body {
        Body::Console {
            content: Some(t), ..
        } => t.len() + t.len() / 16,
        Body::Image {
            content: Some(r), ..
        }
        | Body::Html { content: Some(r) }
        | Body::Result { content: Some(r) } => {
            let text = |v: &serde_json::Value| v.as_str().map_or(64, str::len);
            text(&r.data) + r.bundle.values().map(text).sum::<usize>()
        }
        _ => 0,
    };
    ENVELOPE + chunk.request.len() + body
}

/// Messages that carry a chunk go as [`ChunkMsg`]; these others are small.
impl JsonSize for Reply {
    fn json_size_hint(&self) -> usize {
        SMALL_MESSAGE
    }
}

impl JsonSize for spindle_protocol::native::Event {
    fn json_size_hint(&self) -> usize {
        SMALL_MESSAGE
    }
}

/// What became of a message sent to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Yes,
    /// Its budget stayed full: the client reads too slowly.
    Stalled,
    /// The client is not connected any more.
    Gone,
}

/// One client (a DEALER identity) and its reply budget.
pub struct Client {
    pub identity: Bytes,
    router: RouterSendHalf,
    budget: Budget,
    signer: Signer,
    /// How long a reply may wait for budget before this client counts as stalled.
    pub patience: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("tag", &self.tag()).finish()
    }
}

impl Client {
    pub fn new(
        identity: Bytes,
        router: RouterSendHalf,
        budget: usize,
        signer: Signer,
        patience: Duration,
    ) -> Self {
        Self {
            identity,
            router,
            budget: Budget::new(budget),
            signer,
            patience,
        }
    }

    /// A short printable tag for logs (never the key, never message contents).
    pub fn tag(&self) -> String {
        hex::encode(&self.identity[..self.identity.len().min(8)])
    }

    /// Nothing of this client's is waiting in ZeroMQ's queues.
    pub fn idle(&self) -> bool {
        self.budget.sem.available_permits() == self.budget.total
    }

    /// At least half of the budget is free again: a stalled client has caught up.
    pub fn recovered(&self) -> bool {
        self.budget.sem.available_permits() >= self.budget.total / 2
    }

    pub async fn send(&self, reply: &Reply, wait: Wait) -> Sent {
        let Some([sig, body]) = self.budget.frames(&self.signer, reply, wait).await else {
            return Sent::Stalled;
        };
        self.deliver(vec![self.identity.clone(), sig, body]).await
    }

    /// Send one `chunk` reply to request `id`, its console text in a third frame when the
    /// request asked for `text_frames`. The chunk is the one the session's log holds: it is
    /// serialised from there, and a text frame is its own text, never a copy.
    pub async fn send_chunk(
        &self,
        id: &str,
        chunk: &Arc<Chunk>,
        text_frames: bool,
        wait: Wait,
    ) -> Sent {
        let text = if text_frames {
            SharedText::new(chunk)
        } else {
            None
        };
        let frames = match text {
            None => {
                let reply = ChunkMsg {
                    id: Some(id),
                    chunk: Cow::Borrowed(chunk),
                };
                self.budget
                    .frames(&self.signer, &reply, wait)
                    .await
                    .map(|[sig, body]| vec![self.identity.clone(), sig, body])
            }
            Some(text) => {
                let stub = ChunkMsg {
                    id: Some(id),
                    chunk: Cow::Owned(without_text(chunk)),
                };
                self.budget
                    .frames_with_text(&self.signer, &stub, text, wait)
                    .await
                    .map(|[sig, body, text]| vec![self.identity.clone(), sig, body, text])
            }
        };
        match frames {
            Some(frames) => self.deliver(frames).await,
            None => Sent::Stalled,
        }
    }

    async fn deliver(&self, frames: Vec<Bytes>) -> Sent {
        let msg = match ZmqMessage::try_from(frames) {
            Ok(m) => m,
            Err(_) => return Sent::Gone,
        };
        match self.router.clone().send(msg).await {
            Ok(()) => Sent::Yes,
            Err(e) => {
                tracing::debug!(client = %self.tag(), error = %e, "reply not delivered");
                Sent::Gone
            }
        }
    }

    /// Send an error reply.
    pub async fn error(&self, id: Option<String>, code: ErrorCode, reason: String) -> Sent {
        let reply = Reply {
            id,
            body: ReplyBody::Error { code, reason },
        };
        self.send(&reply, Wait::Upto(self.patience)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spindle_protocol::native::Event;
    use spindle_protocol::ConsoleFormat;

    fn console(text: &str, line: Option<u32>) -> Chunk {
        let mut chunk = Chunk::new(
            "s\"1",
            "r\\2",
            7,
            Body::Console {
                format: ConsoleFormat::Stderr,
                content: Some(text.to_string()),
                line,
            },
        );
        chunk.end = line.is_some();
        chunk
    }

    /// Console chunks large enough for the fast escaping are sent exactly as serde_json would
    /// write them, signed over those bytes.
    #[tokio::test]
    async fn big_console_chunks_are_the_json_serde_writes() {
        let signer = Signer::new(b"k");
        let budget = Budget::new(64 << 20);
        let tail = "quote \" backslash \\ tab \t nul \u{0} é 漢字 🎉 \"content\":\"\"\n";
        for text in [
            "x".repeat(FAST_TEXT - 1),
            "x".repeat(FAST_TEXT),
            format!("{}{tail}", "y\n".repeat(FAST_TEXT)),
            tail.repeat(1000),
        ] {
            for line in [None, Some(3)] {
                let chunk = console(&text, line);
                let reply = Reply {
                    id: Some("id \"content\":\"\"".into()),
                    body: ReplyBody::Chunk {
                        chunk: chunk.clone(),
                    },
                };
                let [sig, body] = budget.frames(&signer, &reply, Wait::No).await.unwrap();
                assert_eq!(body[..], serde_json::to_vec(&reply).unwrap()[..]);
                assert!(signer.verify(&sig, &[&body]));
                // The borrowed reply an execution's stream sends is the same JSON.
                let shared = Arc::new(chunk.clone());
                let borrowed = ChunkMsg {
                    id: Some("id \"content\":\"\""),
                    chunk: Cow::Borrowed(&shared),
                };
                let [sig, body] = budget.frames(&signer, &borrowed, Wait::No).await.unwrap();
                assert_eq!(body[..], serde_json::to_vec(&reply).unwrap()[..]);
                assert!(signer.verify(&sig, &[&body]));
                let event = Event::Chunk { chunk };
                let [_, body] = budget.frames(&signer, &event, Wait::No).await.unwrap();
                assert_eq!(body[..], serde_json::to_vec(&event).unwrap()[..]);
                let borrowed = ChunkMsg {
                    id: None,
                    chunk: Cow::Borrowed(&shared),
                };
                let [_, body] = budget.frames(&signer, &borrowed, Wait::No).await.unwrap();
                assert_eq!(body[..], serde_json::to_vec(&event).unwrap()[..]);
            }
        }
    }

    /// With `text_frames`, the text frame is the chunk's own text (the same memory, not a
    /// copy), the JSON is the chunk with `content: ""`, and the signature covers both.
    #[tokio::test]
    async fn a_text_frame_is_the_chunks_own_text_signed_with_the_json() {
        let signer = Signer::new(b"k");
        let budget = Budget::new(64 << 20);
        let shared = Arc::new(console("a \"line\"\n", None));
        let text = SharedText::new(&shared).expect("console text");
        let stub = ChunkMsg {
            id: Some("r1"),
            chunk: Cow::Owned(without_text(&shared)),
        };
        let [sig, json, frame] = budget
            .frames_with_text(&signer, &stub, text, Wait::No)
            .await
            .unwrap();
        let Body::Console {
            content: Some(original),
            ..
        } = &shared.body
        else {
            unreachable!()
        };
        assert_eq!(
            frame.as_ptr(),
            original.as_ptr(),
            "the frame shares the chunk's text"
        );
        assert_eq!(&frame[..], b"a \"line\"\n");
        assert!(signer.verify(&sig, &[&json, &frame]));
        assert!(!signer.verify(&sig, &[&json]));
        let expected = Reply {
            id: Some("r1".into()),
            body: ReplyBody::Chunk {
                chunk: console("", None),
            },
        };
        assert_eq!(json[..], serde_json::to_vec(&expected).unwrap()[..]);
        // Only console text travels in a frame.
        let status = Arc::new(Chunk::new("s", "r", 1, Body::Notice { content: None }));
        assert!(SharedText::new(&status).is_none());
    }
}
