//! The REPL's transcript: every execution with its language, code and chunks. `%save` writes it
//! as JSON, `%load` reads it back (checked completely before anything runs, with the line and
//! column of the first problem), and `%jupyter` exports it as an nbformat 4 notebook with its
//! outputs.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Map, Value};
use spindle_protocol::conversation::{Item, ItemBody, Role};
use spindle_protocol::{Body, Chunk, ConsoleFormat, Rich};

impl Cell {
    /// How the cell ended when it was recorded, from its `finished` chunk.
    pub fn outcome(&self) -> Option<spindle_protocol::Outcome> {
        self.chunks.iter().rev().find_map(|c| match &c.body {
            Body::Status {
                content: Some(s), ..
            } if c.is_finished() => s.outcome,
            _ => None,
        })
    }
}

/// The `format` field of a saved transcript.
pub const FORMAT: &str = "spindle-transcript";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transcript {
    #[serde(deserialize_with = "format_name")]
    pub format: String,
    #[serde(deserialize_with = "version_one")]
    pub version: u32,
    pub cells: Vec<Cell>,
}

/// One execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cell {
    pub language: Language,
    #[serde(deserialize_with = "runnable_code")]
    pub code: String,
    /// The session's execution count for this cell, when it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_count: Option<u64>,
    #[serde(default)]
    pub chunks: Vec<Chunk>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Python,
    Bash,
    Node,
}

impl Language {
    pub fn name(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Bash => "bash",
            Language::Node => "node",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "python" => Language::Python,
            "bash" => Language::Bash,
            "node" => Language::Node,
            _ => return None,
        })
    }
}

fn format_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s != FORMAT {
        return Err(serde::de::Error::custom(format!(
            "format is {s:?}, expected {FORMAT:?}"
        )));
    }
    Ok(s)
}

fn version_one<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = u32::deserialize(d)?;
    if v != 1 {
        return Err(serde::de::Error::custom(format!(
            "version {v} is not supported (this Spindle reads version 1)"
        )));
    }
    Ok(v)
}

fn runnable_code<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Err(serde::de::Error::custom("a cell's code is empty"));
    }
    if s.contains('\0') {
        return Err(serde::de::Error::custom(
            "a cell's code contains a NUL byte",
        ));
    }
    Ok(s)
}

/// Why a transcript could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Malformed {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
}

impl Transcript {
    pub fn new() -> Self {
        Self {
            format: FORMAT.into(),
            version: 1,
            cells: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// Parse a saved transcript; every field is checked, so nothing runs from a bad file.
    pub fn parse(text: &str, path: &str) -> Result<Transcript, LoadError> {
        serde_json::from_str::<Transcript>(text).map_err(|e| {
            // serde_json appends " at line L column C" to its messages; we lead with them.
            let msg = e.to_string();
            let message = match msg.rfind(" at line ") {
                Some(i) => msg[..i].to_string(),
                None => msg,
            };
            LoadError::Malformed {
                path: path.to_string(),
                line: e.line(),
                column: e.column(),
                message,
            }
        })
    }

    pub fn load(path: &Path) -> Result<Transcript, LoadError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    /// The transcript as an nbformat 4.5 notebook: one code cell per execution, its language in
    /// the cell's metadata (`spindle.language`), its outputs as Jupyter stores them.
    pub fn to_notebook(&self) -> Value {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for c in &self.cells {
            *counts.entry(c.language.name()).or_default() += 1;
        }
        // The language of most cells; on a tie, the one used first.
        let mut main = "python";
        let mut best = 0;
        for c in &self.cells {
            let n = counts[c.language.name()];
            if n > best {
                best = n;
                main = c.language.name();
            }
        }
        let mut used: Vec<&str> = counts.keys().copied().collect();
        used.sort();
        let cells: Vec<Value> = self
            .cells
            .iter()
            .enumerate()
            .map(|(i, c)| code_cell(i, c.language.name(), &c.code, &c.chunks, c.execution_count))
            .collect();
        notebook(main, used, cells)
    }
}

fn code_cell(i: usize, lang: &str, code: &str, chunks: &[Chunk], count: Option<u64>) -> Value {
    json!({
        "id": format!("cell-{}", i + 1),
        "cell_type": "code",
        "execution_count": count,
        "metadata": {"spindle": {"language": lang}},
        "source": split_lines(code),
        "outputs": outputs(chunks, count),
    })
}

fn notebook(main: &str, used: Vec<&str>, cells: Vec<Value>) -> Value {
    json!({
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "language_info": {"name": language_info_name(main)},
            "spindle": {"languages": used},
        },
        "cells": cells,
    })
}

/// A conversation of the LLM loop as a notebook: the user's and the model's messages as
/// Markdown cells, each piece of code the model ran as a code cell with its outputs.
pub fn conversation_notebook(items: &[Item]) -> Value {
    struct CodeCell<'a> {
        lang: &'static str,
        code: String,
        chunks: Vec<&'a Chunk>,
        count: Option<u64>,
    }
    enum Piece<'a> {
        Markdown(String),
        Code(CodeCell<'a>),
    }
    let mut pieces: Vec<Piece> = Vec::new();
    // The piece of each call id.
    let mut by_call: HashMap<&str, usize> = HashMap::new();
    let mut used: Vec<&str> = Vec::new();
    for it in items {
        match (&it.role, &it.body) {
            (Role::User, ItemBody::Message { content: Some(t) }) => {
                pieces.push(Piece::Markdown(format!("**User:** {t}")));
            }
            (Role::Assistant, ItemBody::Message { content: Some(t) }) if !t.trim().is_empty() => {
                pieces.push(Piece::Markdown(t.clone()));
            }
            (
                Role::Assistant,
                ItemBody::Code {
                    format,
                    call,
                    content,
                },
            ) => {
                let lang = spindle_languages::canonical_name(format).unwrap_or("python");
                if !used.contains(&lang) {
                    used.push(lang);
                }
                let code = content.clone().unwrap_or_default();
                match by_call.get(call.as_str()) {
                    // An edited call replaces the code shown before.
                    Some(&i) => {
                        if let Piece::Code(c) = &mut pieces[i] {
                            c.code = code;
                        }
                    }
                    None => {
                        by_call.insert(call, pieces.len());
                        pieces.push(Piece::Code(CodeCell {
                            lang,
                            code,
                            chunks: Vec::new(),
                            count: None,
                        }));
                    }
                }
            }
            (_, ItemBody::Output { call, chunk }) => {
                if let Some(Piece::Code(c)) = by_call.get(call.as_str()).map(|&i| &mut pieces[i]) {
                    if let Body::Status {
                        content: Some(s), ..
                    } = &chunk.body
                    {
                        c.count = s.execution_count.or(c.count);
                    }
                    c.chunks.push(chunk);
                }
            }
            _ => {}
        }
    }
    let cells = pieces
        .into_iter()
        .enumerate()
        .map(|(i, p)| match p {
            Piece::Code(c) => {
                let chunks: Vec<Chunk> = c.chunks.into_iter().cloned().collect();
                code_cell(i, c.lang, &c.code, &chunks, c.count)
            }
            Piece::Markdown(text) => json!({
                "id": format!("cell-{}", i + 1),
                "cell_type": "markdown",
                "metadata": {},
                "source": split_lines(&text),
            }),
        })
        .collect();
    let main = used.first().copied().unwrap_or("python");
    used.sort();
    notebook(main, used, cells)
}

fn language_info_name(lang: &str) -> &str {
    match lang {
        "node" => "javascript",
        other => other,
    }
}

/// Jupyter stores multi-line text as a list of lines, each keeping its newline.
fn split_lines(s: &str) -> Vec<String> {
    s.split_inclusive('\n').map(str::to_string).collect()
}

/// nbformat wants every non-JSON MIME value to be text.
fn clean_bundle(bundle: &Map<String, Value>) -> Map<String, Value> {
    bundle
        .iter()
        .map(|(k, v)| {
            let is_json = k == "application/json" || k.ends_with("+json");
            let v = match v {
                _ if is_json => v.clone(),
                Value::String(s) => Value::String(s.clone()),
                other => Value::String(other.to_string()),
            };
            (k.clone(), v)
        })
        .collect()
}

fn rich_output(r: &Rich, result_count: Option<Option<u64>>) -> Value {
    let mut bundle = clean_bundle(&r.bundle);
    if bundle.is_empty() {
        bundle.insert(
            "text/plain".into(),
            Value::String(r.data.as_str().unwrap_or_default().to_string()),
        );
    }
    let metadata = Value::Object(r.metadata.clone());
    match result_count {
        Some(count) => json!({
            "output_type": "execute_result",
            "execution_count": count,
            "data": bundle,
            "metadata": metadata,
        }),
        None => json!({
            "output_type": "display_data",
            "data": bundle,
            "metadata": metadata,
        }),
    }
}

/// A cell's chunks as Jupyter outputs: consecutive writes to one stream merged; displays,
/// results and errors as their own outputs; `clear_output` and display updates applied.
pub fn outputs(chunks: &[Chunk], count: Option<u64>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut by_display: HashMap<String, usize> = HashMap::new();
    let mut clear_pending = false;
    let push = |out: &mut Vec<Value>, v: Value, clear_pending: &mut bool| {
        if *clear_pending {
            out.clear();
            *clear_pending = false;
        }
        out.push(v);
    };
    for c in chunks {
        match &c.body {
            Body::Console {
                format,
                content: Some(text),
                ..
            } => {
                let name = match format {
                    ConsoleFormat::Stdout => "stdout",
                    ConsoleFormat::Stderr => "stderr",
                    ConsoleFormat::ActiveLine => continue,
                };
                if !clear_pending {
                    if let Some(last) = out.last_mut() {
                        if last["output_type"] == "stream" && last["name"] == name {
                            let joined = format!(
                                "{}{text}",
                                last["text"]
                                    .as_array()
                                    .map(|a| a
                                        .iter()
                                        .filter_map(|v| v.as_str())
                                        .collect::<String>())
                                    .unwrap_or_default()
                            );
                            last["text"] = json!(split_lines(&joined));
                            continue;
                        }
                    }
                }
                push(
                    &mut out,
                    json!({"output_type": "stream", "name": name, "text": split_lines(text)}),
                    &mut clear_pending,
                );
            }
            Body::Result { content: Some(r) } => {
                let count = r.execution_count.or(count);
                push(&mut out, rich_output(r, Some(count)), &mut clear_pending);
            }
            Body::Image {
                content: Some(r), ..
            }
            | Body::Html { content: Some(r) }
            | Body::Markdown { content: Some(r) }
            | Body::Latex { content: Some(r) }
            | Body::Json { content: Some(r) }
            | Body::Text { content: Some(r) } => {
                let v = rich_output(r, None);
                if r.update {
                    if let Some(&i) = r.display_id.as_ref().and_then(|id| by_display.get(id)) {
                        if i < out.len() {
                            out[i] = v;
                            continue;
                        }
                    }
                }
                push(&mut out, v, &mut clear_pending);
                if let Some(id) = &r.display_id {
                    by_display.insert(id.clone(), out.len() - 1);
                }
            }
            Body::File { content: Some(f) } => {
                let text = format!("file: {} ({})", f.path, f.mime);
                push(
                    &mut out,
                    json!({"output_type": "display_data", "data": {"text/plain": text}, "metadata": {}}),
                    &mut clear_pending,
                );
            }
            Body::Error { content: Some(e) } => {
                let traceback = if e.traceback.is_empty() {
                    vec![format!("{}: {}", e.name, e.value)]
                } else {
                    e.traceback.clone()
                };
                push(
                    &mut out,
                    json!({"output_type": "error", "ename": e.name, "evalue": e.value, "traceback": traceback}),
                    &mut clear_pending,
                );
            }
            Body::Notice { content: Some(n) } => push(
                &mut out,
                json!({"output_type": "stream", "name": "stderr", "text": split_lines(&format!("spindle: {n}\n"))}),
                &mut clear_pending,
            ),
            Body::ClearOutput { content: Some(c) } => {
                if c.wait {
                    clear_pending = true;
                } else {
                    out.clear();
                    by_display.clear();
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use spindle_protocol::{ErrorContent, ImageFormat, MimeBundle, StatusContent, StatusFormat};

    fn chunk(body: Body) -> Chunk {
        Chunk::new("s", "r", 0, body)
    }

    fn console(f: ConsoleFormat, t: &str) -> Chunk {
        chunk(Body::Console {
            format: f,
            content: Some(t.into()),
            line: None,
        })
    }

    fn sample() -> Transcript {
        let mut bundle = MimeBundle::new();
        bundle.insert("image/png".into(), json!("iVBORw0KGgo="));
        bundle.insert("text/plain".into(), json!("<Figure>"));
        let mut t = Transcript::new();
        t.cells.push(Cell {
            language: Language::Python,
            code: "print(1)\nprint(2)".into(),
            execution_count: Some(1),
            chunks: vec![
                console(ConsoleFormat::Stdout, "1\n"),
                console(ConsoleFormat::Stdout, "2\n"),
                console(ConsoleFormat::Stderr, "warn\n"),
                chunk(Body::Image {
                    format: ImageFormat::Png,
                    content: Some(Rich {
                        data: json!("iVBORw0KGgo="),
                        bundle,
                        ..Rich::default()
                    }),
                }),
                chunk(Body::Error {
                    content: Some(ErrorContent {
                        name: "ValueError".into(),
                        value: "boom".into(),
                        traceback: vec![],
                    }),
                }),
                chunk(Body::Status {
                    format: StatusFormat::Finished,
                    content: Some(StatusContent::default()),
                }),
            ],
        });
        t.cells.push(Cell {
            language: Language::Bash,
            code: "ls".into(),
            execution_count: Some(1),
            chunks: vec![],
        });
        t
    }

    #[test]
    fn round_trip() {
        let t = sample();
        let back = Transcript::parse(&t.to_json(), "t.json").unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn malformed_says_where() {
        let bad = "{\n  \"format\": \"spindle-transcript\",\n  \"version\": 1,\n  \"cells\": [\n    {\"language\": \"python\", \"code\": \"x\",}\n  ]\n}\n";
        match Transcript::parse(bad, "t.json") {
            Err(LoadError::Malformed { line, column, .. }) => {
                assert_eq!(line, 5);
                assert!(column > 30, "{column}");
            }
            other => panic!("{other:?}"),
        }
        let wrong_lang = "{\"format\":\"spindle-transcript\",\"version\":1,\"cells\":[\n{\"language\":\"ruby\",\"code\":\"x\"}]}";
        let e = Transcript::parse(wrong_lang, "t.json")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("t.json:2:"), "{e}");
        assert!(e.contains("ruby"), "{e}");
        let empty = "{\"format\":\"spindle-transcript\",\"version\":1,\"cells\":[{\"language\":\"bash\",\"code\":\"  \"}]}";
        let e = Transcript::parse(empty, "t.json").unwrap_err().to_string();
        assert!(e.contains("code is empty"), "{e}");
        let other = "{\"format\":\"notebook\",\"version\":1,\"cells\":[]}";
        assert!(Transcript::parse(other, "t.json").is_err());
        assert!(Transcript::parse("", "t.json").is_err());
    }

    #[test]
    fn notebook_outputs() {
        let nb = sample().to_notebook();
        assert_eq!(nb["nbformat"], 4);
        let cells = nb["cells"].as_array().unwrap();
        assert_eq!(cells.len(), 2);
        assert_eq!(cells[0]["metadata"]["spindle"]["language"], "python");
        assert_eq!(cells[1]["metadata"]["spindle"]["language"], "bash");
        assert_eq!(cells[0]["source"], json!(["print(1)\n", "print(2)"]));
        let outs = cells[0]["outputs"].as_array().unwrap();
        assert_eq!(outs.len(), 4, "{outs:?}");
        assert_eq!(
            outs[0],
            json!({"output_type":"stream","name":"stdout","text":["1\n","2\n"]})
        );
        assert_eq!(outs[1]["name"], "stderr");
        assert_eq!(outs[2]["output_type"], "display_data");
        assert_eq!(outs[2]["data"]["image/png"], "iVBORw0KGgo=");
        assert_eq!(outs[3]["output_type"], "error");
        assert_eq!(outs[3]["traceback"], json!(["ValueError: boom"]));
        assert_eq!(nb["metadata"]["language_info"]["name"], "python");
    }

    #[test]
    fn clear_and_update() {
        let disp = |text: &str, update: bool| {
            let mut b = MimeBundle::new();
            b.insert("text/plain".into(), json!(text));
            chunk(Body::Text {
                content: Some(Rich {
                    data: json!(text),
                    bundle: b,
                    display_id: Some("d".into()),
                    update,
                    ..Rich::default()
                }),
            })
        };
        let chunks = vec![
            console(ConsoleFormat::Stdout, "gone\n"),
            chunk(Body::ClearOutput {
                content: Some(spindle_protocol::ClearOutput { wait: false }),
            }),
            disp("v1", false),
            console(ConsoleFormat::Stdout, "kept\n"),
            disp("v2", true),
        ];
        let outs = outputs(&chunks, Some(1));
        assert_eq!(outs.len(), 2, "{outs:?}");
        assert_eq!(outs[0]["data"]["text/plain"], "v2");
        assert_eq!(outs[1]["text"], json!(["kept\n"]));
    }
}
