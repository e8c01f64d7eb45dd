//! The conversation of the LLM loop (`spindle chat`, the native `chat` request, `spindle mcp`),
//! as a stream of items in the LMC shape Open Interpreter made popular:
//!
//! ```text
//! {"conversation":"c1","seq":0,"role":"user","type":"message","content":"plot x squared"}
//! {"conversation":"c1","seq":1,"role":"assistant","type":"message","start":true}
//! {"conversation":"c1","seq":2,"role":"assistant","type":"message","content":"Sure"}
//! {"conversation":"c1","seq":3,"role":"assistant","type":"message","end":true}
//! {"conversation":"c1","seq":4,"role":"assistant","type":"code","format":"python","call":"call_1","start":true}
//! {"conversation":"c1","seq":5,"role":"assistant","type":"code","format":"python","call":"call_1","content":"import matplotlib"}
//! {"conversation":"c1","seq":6,"role":"assistant","type":"code","format":"python","call":"call_1","end":true}
//! {"conversation":"c1","seq":7,"role":"computer","type":"output","call":"call_1","chunk":{…the execution's own chunk…}}
//! {"conversation":"c1","seq":9,"role":"computer","type":"tool_result","call":"call_1","content":"[image/png 640×480 …]","images":1}
//! {"conversation":"c1","seq":12,"role":"computer","type":"done","reason":"stop","rounds":1,"usage":{…}}
//! ```
//!
//! Invariants:
//! - streamed items (assistant `message`, `reasoning` and `code`) open with a `start` item,
//!   carry content pieces (concatenate them) and close with an `end` item;
//! - computer `output` items carry the execution's chunks unchanged (see [`crate::chunk`]);
//! - every `code` item is followed, in order, by exactly one of: `output` items and a
//!   `tool_result`; a `declined` item and a `tool_result`; or a `tool_result` saying why it did
//!   not run;
//! - each message the user sends ends with exactly one `done` item;
//! - `seq` numbers a conversation's items from 0 without gaps.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::chunk::Chunk;

/// One item of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Item {
    /// The conversation it belongs to.
    pub conversation: String,
    /// Position in the conversation's item stream, from 0, without gaps.
    pub seq: u64,
    /// Who speaks.
    pub role: Role,
    /// Opens a streamed item.
    #[serde(default, skip_serializing_if = "is_false")]
    pub start: bool,
    /// Closes a streamed item.
    #[serde(default, skip_serializing_if = "is_false")]
    pub end: bool,
    #[serde(flatten)]
    pub body: ItemBody,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The person (or client) driving the conversation.
    User,
    /// The language model.
    Assistant,
    /// Spindle: code runs, their output, and what the loop says about itself.
    Computer,
}

/// What an item is; `type` names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ItemBody {
    /// Text: what the user sent (whole), or the model's words (streamed).
    Message {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<String>,
    },
    /// The model's reasoning text (`reasoning_content`), streamed like a message.
    Reasoning {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<String>,
    },
    /// Code the model wants to run, streamed as it is written. `format` is the language.
    Code {
        format: String,
        /// The tool call id (`call_…`), or `fence-N` for a fenced code block.
        call: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<String>,
    },
    /// The host asks whether to run a piece of code (confirm mode). Over the native API the
    /// client answers with a `chat_reply` request naming the same `call`.
    Confirm {
        call: String,
        language: String,
        code: String,
    },
    /// A running program waits for a line of input (confirm mode): the host asks for it. Over
    /// the native API the client answers with a `chat_reply` carrying `input`.
    Input {
        call: String,
        prompt: String,
        #[serde(default)]
        password: bool,
    },
    /// The user declined to run the code of `call`.
    Declined { call: String },
    /// One chunk of the execution that runs the code of `call`, unchanged.
    Output { call: String, chunk: Chunk },
    /// What the model was told about the run of `call` (the output policy's text) and how
    /// many images went with it.
    ToolResult {
        call: String,
        content: String,
        #[serde(default)]
        images: u32,
    },
    /// Something the loop says: a retry, a limit reached, an error from the endpoint, a
    /// cancelled stream.
    Notice {
        format: NoticeFormat,
        content: String,
    },
    /// The user's message has been dealt with; the conversation waits for the next one.
    Done {
        reason: DoneReason,
        /// Model requests made for this message.
        rounds: u32,
        /// Token counts for the whole conversation so far, when the server reports them.
        usage: Usage,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NoticeFormat {
    Info,
    /// A request to the model failed and is tried again.
    Retry,
    /// A request to the model failed for good; the conversation is still usable.
    Error,
    /// The tool-round limit was reached.
    Limit,
    /// The user stopped the model's stream or a run.
    Cancelled,
}

/// Why a message's processing ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DoneReason {
    /// The model answered without asking to run more code.
    Stop,
    /// The maximum number of tool rounds was reached.
    Limit,
    /// The user cancelled (Ctrl-C, or a `chat_cancel`).
    Cancelled,
    /// The endpoint failed (see the `notice` before it).
    Error,
}

/// Token counts, as reported by the server (zero when it reports none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Model requests whose response carried usage.
    pub reported: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }

    pub fn add(&mut self, other: Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.reported += other.reported;
    }
}

/// A saved conversation (`%save_message`, `%load_message`): the items, coalesced (one item per
/// message, code or output chunk), and the messages as the model saw them, so a loaded
/// conversation continues exactly where it stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SavedConversation {
    /// Always `spindle-conversation`.
    pub format: String,
    pub version: u32,
    pub items: Vec<Item>,
    /// OpenAI chat messages (without the system prompt).
    pub messages: Vec<serde_json::Value>,
    #[serde(default)]
    pub usage: Usage,
}

/// The `format` of a [`SavedConversation`].
pub const SAVED_FORMAT: &str = "spindle-conversation";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn item_wire_shape() {
        let item = Item {
            conversation: "c".into(),
            seq: 3,
            role: Role::Assistant,
            start: true,
            end: false,
            body: ItemBody::Code {
                format: "python".into(),
                call: "call_1".into(),
                content: None,
            },
        };
        let v = serde_json::to_value(&item).unwrap();
        assert_eq!(
            v,
            json!({"conversation":"c","seq":3,"role":"assistant","start":true,
                   "type":"code","format":"python","call":"call_1"})
        );
        let back: Item = serde_json::from_value(v).unwrap();
        assert_eq!(back, item);
    }
}
