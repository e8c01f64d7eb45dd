//! The chunk model.
//!
//! An execution answers with an ordered stream of chunks, in the spirit of Open Interpreter's
//! streaming messages:
//!
//! ```text
//! {"type":"status","format":"started",...}
//! {"type":"console","format":"stdout","start":true}
//! {"type":"console","format":"stdout","content":"a\n"}
//! {"type":"console","format":"stdout","end":true}
//! {"type":"image","format":"png","start":true}
//! {"type":"image","format":"png","content":{"data":"iVBOR…","bundle":{…},"width":640,…}}
//! {"type":"image","format":"png","end":true}
//! {"type":"status","format":"finished","content":{"outcome":"ok","exit_status":0,…}}
//! ```
//!
//! Invariants:
//! - every block of output opens with a `start` chunk, carries zero or more content chunks and
//!   closes with an `end` chunk; blocks never nest or interleave;
//! - a console block holds one stream (`stdout` or `stderr`); consecutive writes to the same
//!   stream extend the open block, a switch closes it;
//! - every rich output (result, image, html, …) is a block of exactly one content chunk, which
//!   keeps the whole MIME bundle next to the typed payload;
//! - `status` chunks stand alone (neither `start` nor `end`): one `started` first and one
//!   `finished` last in every execution;
//! - `seq` counts the chunks of one session from 0 without gaps, so a watcher can tell what it
//!   missed.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A MIME bundle: MIME type → payload (text, base64 for binary types, or JSON).
pub type MimeBundle = Map<String, Value>;

/// One piece of an execution's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Chunk {
    /// The session (UUID) that produced it: also the PUB topic its events go out under.
    pub session: String,
    /// The id of the request it answers; empty for output produced between executions.
    pub request: String,
    /// Position in the session's chunk sequence, from 0, without gaps.
    pub seq: u64,
    /// Opens a block: this chunk carries the block's `type` (and `format`) but no `content`;
    /// the content chunks follow.
    #[serde(default, skip_serializing_if = "is_false")]
    pub start: bool,
    /// Closes a block; this chunk has no `content` either.
    #[serde(default, skip_serializing_if = "is_false")]
    pub end: bool,
    /// What kind of chunk this is, with its content (absent on `start` and `end` chunks).
    #[serde(flatten)]
    pub body: Body,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The typed body of a chunk. `type` names the kind; `format` refines it where a kind has
/// several; `content` is absent on `start` and `end` chunks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Body {
    /// Text the program wrote to a stream (exactly as written, UTF-8: the terminal does not
    /// turn `\n` into `\r\n`), or (opt-in) the line being executed. A block of it may hold
    /// many content chunks; join them.
    Console {
        format: ConsoleFormat,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<String>,
        /// 1-based line of the executed code, for `active_line`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        line: Option<u32>,
    },
    /// The value of the last expression. Its `data` is the `text/plain`; the HTML, images and
    /// other representations are in its `bundle` (`display()` makes `html`, `image`, …
    /// chunks instead).
    Result {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<Rich>,
    },
    /// A raster image (base64 in `data`) or SVG (text in `data`).
    Image {
        format: ImageFormat,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<Rich>,
    },
    /// HTML text.
    Html {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<Rich>,
    },
    /// Markdown text.
    Markdown {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<Rich>,
    },
    /// LaTeX text.
    Latex {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<Rich>,
    },
    /// A JSON document.
    Json {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<Rich>,
    },
    /// A displayed object with nothing richer than `text/plain`.
    Text {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<Rich>,
    },
    /// A file the code produced: its path and MIME type.
    File {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<FileRef>,
    },
    /// An error: exception name, value and traceback.
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<ErrorContent>,
    },
    /// The code asks for a line of input (`input()`, `getpass()`); answer with an input reply.
    InputRequest {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<InputRequest>,
    },
    /// Clear the output shown so far for this request.
    ClearOutput {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<ClearOutput>,
    },
    /// A Jupyter comm message from the session (`comm_open`, `comm_msg`, `comm_close`), such
    /// as an ipywidgets model's state; see [`crate::comm`].
    Comm {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<crate::comm::CommMessage>,
    },
    /// Something the host says about the session, such as a restart after the process exited.
    Notice {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<String>,
    },
    /// Execution started or finished.
    Status {
        format: StatusFormat,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<StatusContent>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConsoleFormat {
    Stdout,
    Stderr,
    ActiveLine,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImageFormat {
    Png,
    Jpeg,
    Gif,
    Webp,
    Svg,
}

impl ImageFormat {
    /// The MIME type of this format.
    pub fn mime(self) -> &'static str {
        match self {
            ImageFormat::Png => "image/png",
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Gif => "image/gif",
            ImageFormat::Webp => "image/webp",
            ImageFormat::Svg => "image/svg+xml",
        }
    }

    /// The format for a MIME type, if it is an image type Spindle knows.
    pub fn from_mime(mime: &str) -> Option<Self> {
        Some(match mime {
            "image/png" => ImageFormat::Png,
            "image/jpeg" => ImageFormat::Jpeg,
            "image/gif" => ImageFormat::Gif,
            "image/webp" => ImageFormat::Webp,
            "image/svg+xml" => ImageFormat::Svg,
            _ => return None,
        })
    }
}

/// A rich output: the typed payload in `data`, and the whole MIME bundle beside it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct Rich {
    /// The payload of the chunk's own type: text for html/markdown/latex/text/svg, the
    /// `text/plain` for results (their HTML is in `bundle`), base64 for raster images, a JSON
    /// value for json.
    pub data: Value,
    /// Every representation the object offered, keyed by MIME type.
    pub bundle: MimeBundle,
    /// Per-MIME metadata (for example image sizes), as Jupyter carries it.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
    /// Display id, for outputs that can be updated later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_id: Option<String>,
    /// True when this output replaces an earlier one with the same display id.
    #[serde(default, skip_serializing_if = "is_false")]
    pub update: bool,
    /// Help text for a pager rather than the output area (IPython's `obj?`): Jupyter frontends
    /// get it as a `page` payload of the execute reply, as ipykernel sends it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub page: bool,
    /// Image width in pixels, read from the image bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Image height in pixels, read from the image bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// A downscaled PNG copy, when a maximum image size was asked for and the image exceeds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downscaled: Option<Downscaled>,
    /// The execution count, on results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_count: Option<u64>,
}

/// A downscaled copy of an image (always PNG), for vision-model consumers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Downscaled {
    /// Base64 PNG.
    pub data: String,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FileRef {
    pub path: String,
    pub mime: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorContent {
    /// Exception or error class name, such as `ValueError`.
    pub name: String,
    /// The message.
    pub value: String,
    /// Traceback lines (may carry ANSI colour).
    #[serde(default)]
    pub traceback: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InputRequest {
    pub prompt: String,
    /// True for `getpass()`: the answer should not be echoed.
    #[serde(default)]
    pub password: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ClearOutput {
    /// Wait for the next output before clearing.
    #[serde(default)]
    pub wait: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StatusFormat {
    Started,
    Finished,
}

/// How an execution ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Ran to the end without an error.
    Ok,
    /// Raised an error or exited with a non-zero status.
    Error,
    /// Stopped by an interrupt.
    Interrupted,
    /// Exceeded its timeout.
    Timeout,
    /// The process died or exited; the session was restarted.
    Died,
    /// Never ran: an earlier execution in the queue failed or the session closed.
    Aborted,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct StatusContent {
    /// Set on `finished`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// The exit status: bash's `$?`, 0 or 1 for Python and Node, the process's status if it
    /// exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i32>,
    /// Wall time from start to finish, in milliseconds (on `finished`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    /// Bytes of console output dropped by the output cap (on `finished`).
    #[serde(default)]
    pub bytes_dropped: u64,
    /// The session's execution count after this execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_count: Option<u64>,
    /// Results of the user expressions asked for, by name (each a MIME bundle or an error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_expressions: Option<Map<String, Value>>,
}

impl Chunk {
    /// A chunk that is neither a block's `start` nor its `end`.
    pub fn new(session: &str, request: &str, seq: u64, body: Body) -> Chunk {
        Chunk {
            session: session.to_string(),
            request: request.to_string(),
            seq,
            start: false,
            end: false,
            body,
        }
    }

    /// True for the `status`/`finished` chunk that ends every execution.
    pub fn is_finished(&self) -> bool {
        matches!(
            self.body,
            Body::Status {
                format: StatusFormat::Finished,
                ..
            }
        )
    }

    /// The type name as it appears on the wire (`console`, `image`, …).
    pub fn type_name(&self) -> &'static str {
        self.body.type_name()
    }
}

impl Body {
    /// A console content body.
    pub fn console(format: ConsoleFormat, text: String) -> Body {
        Body::Console {
            format,
            content: Some(text),
            line: None,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Body::Console { .. } => "console",
            Body::Result { .. } => "result",
            Body::Image { .. } => "image",
            Body::Html { .. } => "html",
            Body::Markdown { .. } => "markdown",
            Body::Latex { .. } => "latex",
            Body::Json { .. } => "json",
            Body::Text { .. } => "text",
            Body::File { .. } => "file",
            Body::Error { .. } => "error",
            Body::InputRequest { .. } => "input_request",
            Body::ClearOutput { .. } => "clear_output",
            Body::Comm { .. } => "comm",
            Body::Notice { .. } => "notice",
            Body::Status { .. } => "status",
        }
    }

    /// The same kind of body with its content removed: what a `start` or `end` chunk carries.
    pub fn marker(&self) -> Body {
        match self {
            Body::Console { format, .. } => Body::Console {
                format: *format,
                content: None,
                line: None,
            },
            Body::Result { .. } => Body::Result { content: None },
            Body::Image { format, .. } => Body::Image {
                format: *format,
                content: None,
            },
            Body::Html { .. } => Body::Html { content: None },
            Body::Markdown { .. } => Body::Markdown { content: None },
            Body::Latex { .. } => Body::Latex { content: None },
            Body::Json { .. } => Body::Json { content: None },
            Body::Text { .. } => Body::Text { content: None },
            Body::File { .. } => Body::File { content: None },
            Body::Error { .. } => Body::Error { content: None },
            Body::InputRequest { .. } => Body::InputRequest { content: None },
            Body::ClearOutput { .. } => Body::ClearOutput { content: None },
            Body::Comm { .. } => Body::Comm { content: None },
            Body::Notice { .. } => Body::Notice { content: None },
            Body::Status { format, .. } => Body::Status {
                format: *format,
                content: None,
            },
        }
    }
}

/// Pick the chunk body for a display or result bundle: the richest representation Spindle has a
/// type for, in the order image, html, markdown, latex, json, text. The whole bundle is kept.
pub fn body_for_bundle(mut rich: Rich, is_result: bool) -> Body {
    let bundle = &rich.bundle;
    if is_result {
        rich.data = bundle
            .get("text/plain")
            .cloned()
            .unwrap_or(Value::String(String::new()));
        return Body::Result {
            content: Some(rich),
        };
    }
    for mime in [
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/svg+xml",
    ] {
        if let Some(v) = bundle.get(mime) {
            rich.data = v.clone();
            return Body::Image {
                format: ImageFormat::from_mime(mime).expect("listed above"),
                content: Some(rich),
            };
        }
    }
    let pick = |m: &str| bundle.get(m).cloned();
    if let Some(v) = pick("text/html") {
        rich.data = v;
        return Body::Html {
            content: Some(rich),
        };
    }
    if let Some(v) = pick("text/markdown") {
        rich.data = v;
        return Body::Markdown {
            content: Some(rich),
        };
    }
    if let Some(v) = pick("text/latex") {
        rich.data = v;
        return Body::Latex {
            content: Some(rich),
        };
    }
    if let Some(v) = pick("application/json") {
        rich.data = v;
        return Body::Json {
            content: Some(rich),
        };
    }
    rich.data = pick("text/plain").unwrap_or(Value::String(String::new()));
    Body::Text {
        content: Some(rich),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chunk(body: Body) -> Chunk {
        Chunk {
            session: "s".into(),
            request: "r".into(),
            seq: 7,
            start: false,
            end: false,
            body,
        }
    }

    #[test]
    fn console_chunk_wire_shape() {
        let c = chunk(Body::Console {
            format: ConsoleFormat::Stdout,
            content: Some("hi\n".into()),
            line: None,
        });
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(
            v,
            json!({"session":"s","request":"r","seq":7,"type":"console","format":"stdout","content":"hi\n"})
        );
        let back: Chunk = serde_json::from_value(v).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn start_marker_has_no_content() {
        let mut c = chunk(
            Body::Image {
                format: ImageFormat::Png,
                content: Some(Rich::default()),
            }
            .marker(),
        );
        c.start = true;
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["start"], json!(true));
        assert!(v.get("content").is_none());
        assert_eq!(v["format"], json!("png"));
    }

    #[test]
    fn bundle_picks_richest_and_keeps_everything() {
        let mut bundle = MimeBundle::new();
        bundle.insert("text/plain".into(), json!("<Figure>"));
        bundle.insert("text/html".into(), json!("<b>x</b>"));
        bundle.insert("image/png".into(), json!("iVBOR"));
        let body = body_for_bundle(
            Rich {
                bundle: bundle.clone(),
                ..Rich::default()
            },
            false,
        );
        match body {
            Body::Image {
                format: ImageFormat::Png,
                content: Some(r),
            } => {
                assert_eq!(r.data, json!("iVBOR"));
                assert_eq!(r.bundle, bundle);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn result_uses_plain_text_as_data() {
        let mut bundle = MimeBundle::new();
        bundle.insert("text/plain".into(), json!("6"));
        let body = body_for_bundle(
            Rich {
                bundle,
                ..Rich::default()
            },
            true,
        );
        assert_eq!(body.type_name(), "result");
    }
}
