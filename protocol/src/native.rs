//! Messages of the native ZeroMQ API (`spindle serve`).
//!
//! Framing, chosen so that a pyzmq client stays a few lines long:
//!
//! ```text
//! client DEALER → host ROUTER   [signature, json]            a Request
//! host ROUTER → client DEALER   [signature, json]            a Reply (many, for an execute)
//!                               [signature, json, text]      a console chunk's Reply, when the
//!                                                            request asked for `text_frames`
//! host PUB → client SUB         [topic, signature, json]     an Event; topic = session id
//! ```
//!
//! `signature` is the lower-case hex HMAC-SHA256 of the JSON bytes, keyed with the `key` of the
//! [`ConnectionInfo`] file (its UTF-8 bytes, as Jupyter does). Every message in both directions
//! is signed; the host rejects a request whose signature does not verify.
//!
//! Requests carry an `id` chosen by the client; every reply to it echoes that id, so a client
//! can have many requests in flight. An execute answers with one `chunk` reply per
//! [`Chunk`](crate::Chunk), ending with the `status`/`finished` chunk. The same chunks are
//! published as `chunk` events to every subscriber of the session, whoever asked.
//!
//! A `chat` runs a whole task of the LLM loop in a conversation and answers with one `item`
//! reply per conversation [`Item`], the last one the `done` item. The same items are published
//! as `item` events under the conversation id as topic and under the id of each of the
//! conversation's sessions (one per language, named `<conversation>-<language>`, listed and
//! watched like any other session). ZeroMQ topics match by prefix: a subscriber of conversation
//! `c1` also receives `c10`'s events unless it checks that the topic frame is exactly `c1`.
//!
//! The JSON Schemas under `schemas/` are generated from these types ([`schemas`]).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::chunk::Chunk;
use crate::conversation::Item;
use crate::session::SessionInfo;

/// The signature scheme named in connection files.
pub const SIGNATURE_SCHEME: &str = "hmac-sha256";

/// Version of this message set, in connection files.
pub const PROTOCOL_VERSION: u32 = 1;

/// The connection file `spindle serve` writes (mode 0600): how to reach and sign for the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConnectionInfo {
    /// Always `tcp`.
    pub transport: String,
    /// The address the sockets are bound to.
    pub ip: String,
    /// The ROUTER socket: connect a DEALER here to send requests.
    pub router_port: u16,
    /// The PUB socket: connect a SUB here and subscribe to a session id for its events.
    pub pub_port: u16,
    /// Always `hmac-sha256`.
    pub signature_scheme: String,
    /// The signing key (hex text; its UTF-8 bytes key the HMAC).
    pub key: String,
    /// Largest request the host accepts, in bytes (its frames together). A larger request is
    /// refused from its frame headers: its bytes are read and discarded as they arrive, never
    /// held whole, then the client gets a `too_large` error reply without an `id` (the request
    /// was never parsed) and its connection stays up. The transport also counts 64 bytes per
    /// frame, so a message of very many small frames is refused the same way.
    pub max_message: u64,
    /// Bytes of recent chunks the host keeps per session for `replay` (`--replay-log`); the
    /// oldest go first. 0 when the host does not say.
    #[serde(default)]
    pub replay_log: u64,
    /// Version of the native protocol.
    pub protocol_version: u32,
    /// Process id of the host.
    pub pid: u32,
}

/// A request from a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Request {
    /// Chosen by the client (a string of at most 256 bytes); echoed in every reply to this
    /// request. A request whose `id` is missing, not a string or longer is refused with
    /// `bad_request`, and that reply's `id` is null.
    pub id: String,
    #[serde(flatten)]
    pub body: RequestBody,
}

/// What a request asks for; `type` names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RequestBody {
    /// Start a session. Answered by a `session` reply.
    CreateSession(CreateSession),
    /// Answered by a `sessions` reply.
    ListSessions,
    /// Answered by a `session` reply.
    SessionInfo { session: String },
    /// Run code. Answered by `chunk` replies and nothing else (no acknowledgement comes
    /// first): the first one is `status`/`started`, the last one `status`/`finished`. An
    /// execute refused outright (unknown session, empty code, …) gets one `error` reply instead.
    Execute(Execute),
    /// Interrupt the running execution (SIGINT to the terminal's foreground). Answered by `ok`.
    Interrupt { session: String },
    /// Kill the process and start a fresh one. Answered by a `session` reply.
    Restart { session: String },
    /// Close the session for good. Answered by `ok`.
    Close { session: String },
    /// Answer the pending `input_request` chunk. Answered by `ok`.
    InputReply { session: String, value: String },
    /// Write raw text to the session's terminal (for `read`, prompts, …). Answered by `ok`.
    Stdin { session: String, data: String },
    /// Completions at a cursor position. Answered by a `complete` reply.
    Complete {
        session: String,
        code: String,
        /// In Unicode code points; the end of `code` when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor_pos: Option<usize>,
    },
    /// Documentation of the object at a cursor position. Answered by an `inspect` reply.
    Inspect {
        session: String,
        code: String,
        /// In Unicode code points; the end of `code` when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor_pos: Option<usize>,
        /// 0 or 1, as in Jupyter.
        #[serde(default)]
        detail_level: u8,
    },
    /// Whether `code` is a complete statement. Answered by an `is_complete` reply.
    IsComplete { session: String, code: String },
    /// Ask for a `welcome` event on the session's topic, to learn that a SUB socket subscribed
    /// to it is receiving (closes ZeroMQ's slow-joiner gap). Answered by a `session` reply.
    ///
    /// `session` may also name a conversation (the id of a `chat`, once one was sent): then the
    /// `welcome` event goes out under the conversation id as topic, carrying `conversation`
    /// instead of `session`, and the answer is a `conversation` reply. Session ids and names
    /// come first; a conversation cannot take a live session's id or name, nor the reverse.
    Watch { session: String },
    /// The session's chunks from `from_seq` on, to this client only (as replies, not events):
    /// for a client that reconnects after its connection broke, or that attaches late. The
    /// host keeps each session's recent chunks in a log bounded in bytes (`replay_log` in the
    /// connection file; the oldest go first). Answered by a `missed` reply first when chunks
    /// from `from_seq` on are no longer kept (its `count` says how many; the next chunk is the
    /// oldest kept), then `chunk` replies in `seq` order, byte for byte as they were first
    /// sent, then a `replayed` reply. With `follow` (the default), live chunks follow the kept
    /// ones until the running execution's `status`/`finished` chunk (at once when nothing
    /// runs). A client that reads too slowly gets `missed` replies where the log dropped
    /// chunks before they could be sent; `replayed.next_seq` is where to replay from next.
    Replay {
        /// Session id or name.
        session: String,
        /// The `seq` of the first chunk wanted (0: everything kept).
        #[serde(default)]
        from_seq: u64,
        #[serde(default = "yes")]
        follow: bool,
        /// Console text in a third frame, as [`Execute::text_frames`].
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        text_frames: bool,
    },
    /// A Jupyter connection file for this session, so Jupyter clients can attach to it.
    /// Answered by an `attach` reply.
    Attach { session: String },
    /// Write a file into the session's work directory (see [`UploadFile`]). Answered by a
    /// `file` reply without `data`.
    UploadFile(UploadFile),
    /// Read a file of the session's work directory. Answered by a `file` reply with `data`;
    /// `too_large` (before anything is read) when the file is larger than the host sends.
    DownloadFile {
        /// Session id or name.
        session: String,
        /// Relative to the session's work directory (see [`UploadFile::path`]).
        path: String,
    },
    /// List a directory of the session's work directory. Answered by a `files` reply.
    ListFiles {
        /// Session id or name.
        session: String,
        /// Relative to the session's work directory; the work directory itself when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
    },
    /// Stop the host: every session is closed. Answered by `ok` first.
    Shutdown,
    /// Send a message to a conversation with the language model, which runs code in the
    /// conversation's sessions until the task is done. Answered by `item` replies, the last one
    /// the `done` item; the same items are published as `item` events (see the module docs).
    /// Only one chat may be in flight per conversation (else `busy`).
    Chat(Chat),
    /// Answer the pending `confirm` item (with `decision`) or `input` item (with `input`) of
    /// `call`. Answered by `ok`; `no_pending_input` when nothing of that call waits for an
    /// answer, `unknown_conversation` for a conversation never chatted in.
    ChatReply {
        conversation: String,
        /// The `call` of the `confirm` or `input` item answered.
        call: String,
        /// For a `confirm` item: run the code, skip it (the model is told it was declined), or
        /// run `code` instead.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        decision: Option<ChatDecision>,
        /// The code to run instead, with `decision: edit`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
        /// For an `input` item: the line the program reads.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input: Option<String>,
    },
    /// Stop what the conversation's chat is doing, like Ctrl-C: the model's stream is cut, or
    /// the running code is interrupted; the chat then ends with a `done` item whose reason is
    /// `cancelled`. Answered by `ok` (also when nothing is in flight).
    ChatCancel { conversation: String },
}

/// One message to a conversation, and how the loop runs it. The endpoint and the API key come
/// from the host's environment and config file (`SPINDLE_LLM_*`, `[llm]` in
/// `~/.config/spindle/config.toml`, `OPENAI_*`); the API key never travels over the wire, and
/// is not sent to a `base_url` other than the one the host is configured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Chat {
    /// Chosen by the client (1 to 200 bytes). The first chat with a new id starts the
    /// conversation; later ones continue it (the model sees everything said before).
    pub conversation: String,
    /// What the user says.
    pub message: String,
    /// Run the model's code without asking. Required: with `false`, each run waits for a
    /// `chat_reply` to its `confirm` item (unanswered for the host's confirm timeout, 10
    /// minutes by default, it counts as skipped, and a `notice` item says so).
    pub auto_run: bool,
    /// The model's endpoint (OpenAI-compatible, such as `http://127.0.0.1:11434/v1`); the
    /// host's by default. The host's API key is only sent to the host's own endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// The model's name; the host's by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Model requests for this message before the loop stops (10 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rounds: Option<u32>,
    /// Bytes of each run's output the model sees (head and tail kept; 8192 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_budget: Option<u64>,
    /// Seconds each run may take (120 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_timeout: Option<f64>,
    /// Send images to the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vision: Option<bool>,
    /// Stream the model's answers (SSE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Offer the model the `execute` tool; `false` runs fenced code blocks instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<bool>,
}

/// The answer to a `confirm` item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChatDecision {
    Run,
    Skip,
    /// Run the request's `code` instead.
    Edit,
}

/// A conversation as the host sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConversationInfo {
    /// The id the client chose.
    pub id: String,
    /// Whether a chat is in flight.
    pub busy: bool,
    /// Items so far (the `seq` of the next one).
    pub items: u64,
    /// Its sessions, one per language used so far (named `<conversation>-<language>`).
    pub sessions: Vec<SessionInfo>,
}

/// Options of a new session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CreateSession {
    /// `python`, `bash` or `node` (aliases such as `py`, `sh`, `js` work too).
    pub language: String,
    /// A unique name, usable wherever a session id is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Working directory of the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Default execution timeout, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    /// Default console output cap per execution, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_cap: Option<u64>,
    /// Run the session in a sandbox (`{"kind": "docker", "memory": …}`); the host's by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<crate::SandboxRequest>,
}

/// A file to write into a session's work directory: its working directory for a session on
/// the host, `/work` for a sandboxed one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UploadFile {
    /// Session id or name.
    pub session: String,
    /// `/`-separated and relative to the work directory; its parent directory must exist.
    /// Absolute paths, `..` and any symlink on the way (or as the file itself) are refused
    /// (`forbidden`).
    pub path: String,
    /// The file's bytes, base64 (standard alphabet, padded). The request as a whole is bounded
    /// by the host's `max_message`.
    pub data: String,
    /// What to do when the file exists; `overwrite` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<UploadMode>,
}

/// How an upload treats an existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UploadMode {
    /// Fail with `file_exists` when the file exists.
    Create,
    /// Replace its contents.
    Overwrite,
}

/// What a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Dir,
    /// Shown, never followed.
    Symlink,
    /// A FIFO, socket or device.
    Other,
}

/// One entry of a `files` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FileEntry {
    pub name: String,
    pub kind: FileKind,
    /// Bytes (for a symlink, the length of its target).
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
}

/// Code to run, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Execute {
    /// Session id or name.
    pub session: String,
    pub code: String,
    /// Seconds before the execution is interrupted (then killed); the session's by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    /// Console output cap in bytes (head and tail kept); the session's by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_cap: Option<u64>,
    /// Also give images a downscaled copy at most this many pixels a side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_max_dim: Option<u32>,
    /// Jupyter's `silent`: no result, not counted.
    #[serde(default)]
    pub silent: bool,
    /// Jupyter's `store_history`: count this execution.
    #[serde(default = "yes")]
    pub store_history: bool,
    /// Whether `input()` may ask for input (else it fails at once).
    #[serde(default = "yes")]
    pub allow_stdin: bool,
    /// Report the line being executed (`console`/`active_line` chunks).
    #[serde(default)]
    pub active_lines: bool,
    /// Expressions to evaluate after the code, by name; results come in the finished chunk.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub user_expressions: Map<String, Value>,
    /// Send console text as raw UTF-8 in a third frame, `[signature, json, text]`, instead of
    /// inside the JSON (see [`TEXT_FRAMES`]): no escaping on the host, no JSON parsing of
    /// megabytes in the client. Only this request's `chunk` replies change.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub text_frames: bool,
}

/// How a reply carries console text in a frame of its own, when the request asked for
/// `text_frames`.
///
/// A `chunk` reply whose chunk is `console` with content comes as three frames,
/// `[signature, json, text]`: the JSON's `content` is the empty string and the third frame is
/// the content, UTF-8. The signature is the HMAC-SHA256 of the JSON frame followed by the text
/// frame (one HMAC fed both, as Jupyter signs its parts). Every other reply keeps two frames,
/// so a client tells them apart by the number of frames.
pub const TEXT_FRAMES: &str = "text_frames";

fn yes() -> bool {
    true
}

/// A reply to a request (or one of many, for an execute).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Reply {
    /// The id of the request answered; null when the host could not take an id from the
    /// request: bad frames, a bad signature, invalid JSON, a request over `max_message`, or an
    /// `id` that is missing, not a string, or over 256 bytes.
    pub id: Option<String>,
    #[serde(flatten)]
    pub body: ReplyBody,
}

/// What a reply carries; `type` names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ReplyBody {
    /// One session (create_session, session_info, restart, watch of a session).
    Session {
        session: SessionInfo,
        /// True when create_session took a pre-started session from the warm pool.
        #[serde(default)]
        warm: bool,
    },
    /// Every live session (list_sessions).
    Sessions {
        sessions: Vec<SessionInfo>,
    },
    /// One chunk of an execution's output.
    Chunk {
        chunk: Chunk,
    },
    /// The client read too slowly and `count` chunks of this execution (or items of this chat)
    /// were dropped for it (they were still published to subscribers). For a chat, `session`
    /// is the conversation id. In a `replay`: `count` chunks the session's log no longer kept
    /// (the oldest go first); the next chunk sent follows the gap.
    Missed {
        session: String,
        count: u64,
    },
    /// The end of a `replay`: every chunk before `next_seq` was sent (or counted in a
    /// `missed` reply); replay from `next_seq` to go on.
    Replayed {
        session: String,
        next_seq: u64,
    },
    /// One item of a chat's conversation; the last one of a chat is its `done` item.
    Item {
        item: Item,
    },
    /// A conversation (watch of a conversation).
    Conversation {
        conversation: ConversationInfo,
    },
    /// Done (interrupt, close, input_reply, stdin, shutdown).
    Ok,
    /// A file of a session's work directory (upload_file, download_file).
    File {
        /// The path, relative to the work directory, as normalized by the host.
        path: String,
        /// Bytes.
        size: u64,
        /// The contents, base64 (download_file only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<String>,
    },
    /// A directory of a session's work directory (list_files).
    Files {
        /// The directory, relative to the work directory (`.` for itself).
        path: String,
        /// Where the work directory is, as the session's code sees it (`/work` in a sandbox).
        root: String,
        /// Sorted by name.
        entries: Vec<FileEntry>,
        /// Entries left out (a listing holds at most 10000).
        #[serde(default)]
        truncated: u64,
    },
    Complete(CompleteReply),
    Inspect(InspectReply),
    IsComplete(IsCompleteReply),
    /// A Jupyter connection file for the session.
    Attach {
        /// Where the connection file was written (mode 0600).
        connection_file: String,
        /// Its contents.
        connection: Map<String, Value>,
    },
    /// The request failed; nothing changed.
    Error {
        code: ErrorCode,
        reason: String,
    },
}

/// Completion matches for `code[cursor_start..cursor_end]` (code points).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CompleteReply {
    #[serde(default)]
    pub matches: Vec<String>,
    #[serde(default)]
    pub cursor_start: usize,
    #[serde(default)]
    pub cursor_end: usize,
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

/// What is known about the object at the cursor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InspectReply {
    #[serde(default)]
    pub found: bool,
    /// A MIME bundle (`text/plain` at least when found).
    #[serde(default)]
    pub data: Map<String, Value>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

/// Whether code is ready to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct IsCompleteReply {
    pub status: IsCompleteStatus,
    /// Suggested indentation for the next line, when incomplete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indent: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum IsCompleteStatus {
    Complete,
    Incomplete,
    Invalid,
    Unknown,
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not two frames `[signature, json]`.
    BadFrames,
    /// The signature is missing or does not match.
    BadSignature,
    /// Larger than the host's `max_message` (discarded as it arrived, unparsed, so the reply
    /// has no `id`); for a download, a file whose reply would be.
    TooLarge,
    /// Not valid JSON.
    BadJson,
    /// Valid JSON that is not a request this host knows (wrong shape, field or value).
    BadRequest,
    /// No session with that id or name.
    UnknownSession,
    /// The session was closed.
    SessionClosed,
    /// An input reply, but the session asked for no input.
    NoPendingInput,
    /// A session name already in use.
    NameTaken,
    /// The language is unknown, or cannot do what was asked.
    Unsupported,
    /// The interpreter failed to start.
    StartFailed,
    /// The host is shutting down.
    ShuttingDown,
    /// Anything else that went wrong in the session.
    Failed,
    /// A chat, but the host knows no model endpoint (the reason says what to set where the
    /// host runs: `SPINDLE_LLM_BASE_URL`, `SPINDLE_LLM_MODEL`, `SPINDLE_LLM_API_KEY`, or the
    /// config file).
    NotConfigured,
    /// A chat, but another chat of the same conversation is still in flight.
    Busy,
    /// No conversation with that id (no chat was ever sent to it).
    UnknownConversation,
    /// A file request whose path would leave the session's work directory: an absolute path,
    /// `..`, or a symlink on the way (symlinks are never followed, wherever they point).
    Forbidden,
    /// A file request for a file or directory that does not exist.
    NotFound,
    /// An upload in `create` mode, but the file exists.
    FileExists,
}

/// An event published on the PUB socket, under the session's id (its UUID, never its name,
/// although requests accept names) as topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Answer to a `watch` request: from here on this subscriber receives the session's (or
    /// the conversation's) events. Exactly one of `session` and `conversation` is present.
    Welcome {
        /// The id of the `watch` request that asked for it.
        token: String,
        /// The session watched.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<SessionInfo>,
        /// The conversation watched (published under the conversation id as topic).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conversation: Option<ConversationInfo>,
    },
    /// One chunk of the session, from any client's execution or from between executions.
    Chunk { chunk: Chunk },
    /// One item of a conversation, from a `chat` (under the conversation id and under each of
    /// the conversation's session ids as topic).
    Item { item: Item },
    /// `count` chunks of the session (or items, under a conversation's topic) were not
    /// published because the host's event buffer was full (a subscriber fell behind); `seq`
    /// numbers show where. `session` is the topic: a session id or a conversation id. It comes
    /// just before the next chunk published, so the chunks received and the counts add up to
    /// every `seq`; after a gap the host goes on with current chunks, not a backlog (a
    /// subscriber that stalled receives at most the event buffer of old ones). `replay`
    /// fetches missed chunks the session's log still keeps.
    Missed { session: String, count: u64 },
    /// The session was closed (on request, or because the host stopped).
    Closed { session: String, reason: String },
}

/// Every top-level message's JSON Schema, by file name under `schemas/`.
pub fn schemas() -> Vec<(&'static str, Value)> {
    fn one<T: JsonSchema>() -> Value {
        schemars::schema_for!(T).to_value()
    }
    vec![
        ("request.json", one::<Request>()),
        ("reply.json", one::<Reply>()),
        ("event.json", one::<Event>()),
        ("chunk.json", one::<Chunk>()),
        ("connection.json", one::<ConnectionInfo>()),
        ("item.json", one::<crate::conversation::Item>()),
        (
            "conversation.json",
            one::<crate::conversation::SavedConversation>(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_wire_shape() {
        let r: Request = serde_json::from_value(json!({
            "id": "1", "type": "execute", "session": "s", "code": "1+1"
        }))
        .unwrap();
        match &r.body {
            RequestBody::Execute(e) => {
                assert_eq!(e.code, "1+1");
                assert!(e.store_history && e.allow_stdin && !e.silent);
            }
            other => panic!("unexpected {other:?}"),
        }
        let r: Request =
            serde_json::from_value(json!({"id": "2", "type": "list_sessions"})).unwrap();
        assert_eq!(r.body, RequestBody::ListSessions);
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"id": "2", "type": "list_sessions"})
        );
    }

    #[test]
    fn wrong_shapes_are_errors() {
        for bad in [
            json!({"id": "1", "type": "nope"}),
            json!({"id": "1", "type": "execute", "session": "s"}),
            json!({"type": "list_sessions"}),
            json!({"id": 5, "type": "list_sessions"}),
            json!([1, 2]),
        ] {
            assert!(
                serde_json::from_value::<Request>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn chat_needs_auto_run() {
        let ok: Request = serde_json::from_value(json!({
            "id": "1", "type": "chat", "conversation": "c", "message": "hi", "auto_run": false,
            "model": "m"
        }))
        .unwrap();
        match &ok.body {
            RequestBody::Chat(c) => {
                assert!(!c.auto_run);
                assert_eq!(c.model.as_deref(), Some("m"));
                assert_eq!(c.base_url, None);
            }
            other => panic!("unexpected {other:?}"),
        }
        let missing = json!({"id": "1", "type": "chat", "conversation": "c", "message": "hi"});
        assert!(serde_json::from_value::<Request>(missing).is_err());
        let r: Request = serde_json::from_value(json!({
            "id": "2", "type": "chat_reply", "conversation": "c", "call": "call_1",
            "decision": "edit", "code": "print(1)"
        }))
        .unwrap();
        assert_eq!(
            r.body,
            RequestBody::ChatReply {
                conversation: "c".into(),
                call: "call_1".into(),
                decision: Some(ChatDecision::Edit),
                code: Some("print(1)".into()),
                input: None,
            }
        );
    }

    #[test]
    fn welcome_carries_a_session_or_a_conversation() {
        let ev = Event::Welcome {
            token: "t".into(),
            session: None,
            conversation: Some(ConversationInfo {
                id: "c".into(),
                busy: false,
                items: 3,
                sessions: Vec::new(),
            }),
        };
        assert_eq!(
            serde_json::to_value(&ev).unwrap(),
            json!({"type": "welcome", "token": "t",
                   "conversation": {"id": "c", "busy": false, "items": 3, "sessions": []}})
        );
    }

    #[test]
    fn reply_wire_shape() {
        let r = Reply {
            id: Some("7".into()),
            body: ReplyBody::Error {
                code: ErrorCode::UnknownSession,
                reason: "no".into(),
            },
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"id": "7", "type": "error", "code": "unknown_session", "reason": "no"})
        );
        let ok = Reply {
            id: None,
            body: ReplyBody::Ok,
        };
        assert_eq!(
            serde_json::to_value(&ok).unwrap(),
            json!({"id": null, "type": "ok"})
        );
    }

    #[test]
    fn every_schema_is_an_object() {
        for (name, schema) in schemas() {
            assert!(schema.is_object(), "{name}");
        }
    }
}
