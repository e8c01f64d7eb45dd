//! The output policy: what a model is told about one run. This is the one place that decides
//! it, for `spindle chat`, the native `chat` request and `spindle mcp`.
//!
//! - console text (stdout and stderr, in order) with the head and the tail kept within a byte
//!   budget, and a marker stating exactly how many bytes were dropped between them;
//! - errors with their traceback (ANSI colour removed);
//! - rich results as text: `text/plain`, or a Markdown table where the HTML has one;
//! - images: for vision models, a (downscaled) copy goes in a following user message as an
//!   `image_url` data URL and the text says so; otherwise a one-line description;
//! - how the run ended (timeout, interrupt, a dead process, waiting for input), and the bytes
//!   the kernel's own output cap dropped.
//!
//! Nothing is cut without saying so. The collector keeps at most the budget in memory, however
//! much a program prints.

use base64::Engine as _;
use spindle_protocol::{Body, Chunk, ConsoleFormat, Outcome, Rich, StatusFormat};

/// Settings of the policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Bytes of text the model sees per run (head and tail halves).
    pub budget: usize,
    /// Largest image side sent to a vision model; larger images are downscaled.
    pub image_max_dim: u32,
    /// At most this many images per run go to the model.
    pub max_images: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            budget: 8192,
            image_max_dim: 1024,
            max_images: 4,
        }
    }
}

/// An image for the model: a data URL, with its size.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelImage {
    pub mime: String,
    pub data_url: String,
    pub width: u32,
    pub height: u32,
}

/// What the model is told.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ToolOutput {
    pub text: String,
    pub images: Vec<ModelImage>,
    /// Bytes of text this policy dropped (the marker says the same).
    pub dropped: u64,
    /// How the run ended, when it did.
    pub outcome: Option<Outcome>,
}

/// The marker put where text was dropped.
pub fn marker(dropped: u64) -> String {
    format!("\n[… {dropped} bytes dropped …]\n")
}

/// Text kept as head and tail within a budget.
#[derive(Debug, Clone)]
pub struct HeadTail {
    head: String,
    tail: String,
    half: usize,
    dropped: u64,
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl HeadTail {
    pub fn new(budget: usize) -> Self {
        Self {
            head: String::new(),
            tail: String::new(),
            half: budget / 2,
            dropped: 0,
        }
    }

    pub fn push(&mut self, mut s: &str) {
        if self.tail.is_empty() && self.head.len() < self.half {
            let room = self.half - self.head.len();
            if s.len() <= room {
                self.head.push_str(s);
                return;
            }
            let cut = floor_boundary(s, room);
            self.head.push_str(&s[..cut]);
            s = &s[cut..];
        }
        self.tail.push_str(s);
        if self.tail.len() > self.half * 2 + 4096 {
            self.trim();
        }
    }

    fn trim(&mut self) {
        if self.tail.len() <= self.half {
            return;
        }
        let mut cut = self.tail.len() - self.half;
        while !self.tail.is_char_boundary(cut) {
            cut += 1;
        }
        self.dropped += cut as u64;
        self.tail.drain(..cut);
    }

    pub fn is_empty(&self) -> bool {
        self.head.is_empty() && self.tail.is_empty()
    }

    /// The kept text, with a marker where bytes were dropped, and the count.
    pub fn finish(mut self) -> (String, u64) {
        self.trim();
        let mut out = self.head;
        if self.dropped > 0 {
            out.push_str(&marker(self.dropped));
        }
        out.push_str(&self.tail);
        (out, self.dropped)
    }
}

/// Remove ANSI escape sequences (colour in tracebacks, cursor moves).
pub fn strip_ansi(s: &str) -> String {
    if !s.contains('\x1b') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        match it.peek() {
            Some('[') => {
                it.next();
                for c in it.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            Some(']') => {
                it.next();
                while let Some(c) = it.next() {
                    if c == '\x07' {
                        break;
                    }
                    if c == '\x1b' && it.peek() == Some(&'\\') {
                        it.next();
                        break;
                    }
                }
            }
            _ => {
                it.next();
            }
        }
    }
    out
}

fn bundle_text(r: &Rich, mime: &str) -> Option<String> {
    match r.bundle.get(mime)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(lines) => Some(
            lines
                .iter()
                .filter_map(|l| l.as_str())
                .collect::<Vec<_>>()
                .join(""),
        ),
        other => Some(other.to_string()),
    }
}

fn plain(r: &Rich) -> String {
    bundle_text(r, "text/plain")
        .or_else(|| r.data.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Text for a rich output: a Markdown table where the HTML has one, else `text/plain`.
fn rich_text(r: &Rich) -> String {
    if let Some(html) = bundle_text(r, "text/html") {
        if html.to_ascii_lowercase().contains("<table") {
            return crate::html::markdown(&html);
        }
    }
    let p = plain(r);
    if !p.is_empty() {
        return p;
    }
    if let Some(html) = bundle_text(r, "text/html") {
        return crate::html::render(&html, 200, false);
    }
    r.data
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| r.data.to_string())
}

/// Gathers one run's chunks into what the model is told.
#[derive(Debug)]
pub struct Collector {
    policy: Policy,
    vision: bool,
    text: HeadTail,
    images: Vec<ModelImage>,
    images_seen: usize,
    outcome: Option<Outcome>,
    cap_dropped: u64,
    duration_ms: Option<f64>,
    exit_status: Option<i32>,
    waiting: Option<String>,
    line_open: bool,
}

impl Collector {
    pub fn new(policy: &Policy, vision: bool) -> Self {
        Self {
            policy: policy.clone(),
            vision,
            text: HeadTail::new(policy.budget),
            images: Vec::new(),
            images_seen: 0,
            outcome: None,
            cap_dropped: 0,
            duration_ms: None,
            exit_status: None,
            waiting: None,
            line_open: false,
        }
    }

    fn put(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        self.text.push(s);
        self.line_open = !s.ends_with('\n');
    }

    /// Start a separate piece of text on its own line.
    fn put_line(&mut self, s: &str) {
        if self.line_open {
            self.put("\n");
        }
        self.put(s);
        if !s.ends_with('\n') {
            self.put("\n");
        }
    }

    fn image(&mut self, format: spindle_protocol::ImageFormat, r: &Rich) {
        self.images_seen += 1;
        let n = self.images_seen;
        let (w, h) = (r.width.unwrap_or(0), r.height.unwrap_or(0));
        let mime = format.mime();
        if !self.vision {
            self.put_line(&format!(
                "[image {n}: {mime} {w}×{h} shown to the user; this model is configured without vision, so it is not attached]"
            ));
            return;
        }
        if self.images.len() >= self.policy.max_images {
            self.put_line(&format!(
                "[image {n}: {mime} {w}×{h} shown to the user; not attached (at most {} images per run)]",
                self.policy.max_images
            ));
            return;
        }
        let (data, mime, dw, dh) = match (&r.downscaled, format) {
            (Some(d), _) => (d.data.clone(), "image/png", d.width, d.height),
            (None, spindle_protocol::ImageFormat::Svg) => {
                // Vision APIs take raster images only.
                self.put_line(&format!(
                    "[image {n}: SVG shown to the user; not attached (models take raster images)]"
                ));
                return;
            }
            (None, _) => match r.data.as_str() {
                Some(d) => (d.to_string(), mime, w, h),
                None => return,
            },
        };
        let mut note = format!("[image {n}: {} {w}×{h}", format.mime());
        if (dw, dh) != (w, h) {
            note.push_str(&format!(", attached downscaled to {dw}×{dh}"));
        } else {
            note.push_str(", attached");
        }
        note.push_str(" in the next message]");
        self.put_line(&note);
        self.images.push(ModelImage {
            mime: mime.to_string(),
            data_url: format!("data:{mime};base64,{data}"),
            width: dw,
            height: dh,
        });
    }

    /// Take one chunk of the run.
    pub fn push(&mut self, chunk: &Chunk) {
        match &chunk.body {
            Body::Console {
                format: ConsoleFormat::Stdout | ConsoleFormat::Stderr,
                content: Some(t),
                ..
            } => {
                let t = strip_ansi(t);
                self.put(&t);
            }
            Body::Console { .. } => {}
            Body::Result { content: Some(r) } => {
                let t = rich_text(r);
                self.put_line(&t);
            }
            Body::Image {
                format,
                content: Some(r),
            } => self.image(*format, r),
            Body::Html { content: Some(r) }
            | Body::Markdown { content: Some(r) }
            | Body::Latex { content: Some(r) }
            | Body::Json { content: Some(r) }
            | Body::Text { content: Some(r) } => {
                let t = rich_text(r);
                self.put_line(&t);
            }
            Body::File { content: Some(f) } => {
                self.put_line(&format!("[file {} ({})]", f.path, f.mime));
            }
            Body::Error { content: Some(e) } => {
                let tb: Vec<String> = e.traceback.iter().map(|l| strip_ansi(l)).collect();
                let mut t = tb.join("\n");
                let last = format!("{}: {}", e.name, e.value);
                if !t.contains(&last) {
                    if !t.is_empty() {
                        t.push('\n');
                    }
                    t.push_str(&last);
                }
                self.put_line(&t);
            }
            Body::InputRequest { content: Some(r) } => {
                self.waiting = Some(r.prompt.clone());
            }
            Body::Notice { content: Some(n) } => self.put_line(&format!("[{n}]")),
            Body::Status {
                format: StatusFormat::Finished,
                content: Some(s),
            } => {
                self.outcome = s.outcome;
                self.cap_dropped = s.bytes_dropped;
                self.duration_ms = s.duration_ms;
                self.exit_status = s.exit_status;
            }
            _ => {}
        }
    }

    /// The prompt of an input request seen so far, if any.
    pub fn waiting_for(&self) -> Option<&str> {
        self.waiting.as_deref()
    }

    /// Clear a pending input request (it was answered).
    pub fn answered(&mut self) {
        self.waiting = None;
    }

    /// What the model is told. `note` is added last (for example "the user interrupted").
    pub fn finish(mut self, note: Option<&str>) -> ToolOutput {
        if self.cap_dropped > 0 {
            self.put_line(&format!(
                "[the output cap dropped {} bytes in the middle of this output]",
                self.cap_dropped
            ));
        }
        let ending = match self.outcome {
            Some(Outcome::Timeout) => Some(format!(
                "[timed out after {:.1} s: the run was interrupted (the session restarts if it did not stop); output so far is above]",
                self.duration_ms.unwrap_or(0.0) / 1000.0
            )),
            Some(Outcome::Interrupted) => Some("[interrupted]".to_string()),
            Some(Outcome::Died) => {
                Some("[the process died; the session was restarted and its state is lost]".into())
            }
            Some(Outcome::Aborted) => Some("[not run: the session was busy or closed]".into()),
            Some(Outcome::Error) => match self.exit_status {
                Some(s) if s != 0 && s != 1 => Some(format!("[exit status {s}]")),
                _ => None,
            },
            _ => None,
        };
        if let Some(p) = self.waiting.take() {
            self.put_line(&format!("waiting for input: {p}"));
        }
        if let Some(e) = ending {
            self.put_line(&e);
        }
        if let Some(n) = note {
            self.put_line(n);
        }
        let empty = self.text.is_empty();
        let (mut text, dropped) = self.text.finish();
        if empty {
            text = "(no output)".to_string();
        }
        ToolOutput {
            text: text.trim_end_matches('\n').to_string(),
            images: self.images,
            dropped,
            outcome: self.outcome,
        }
    }
}

/// Decode a data URL's payload (for tests and exports).
pub fn data_url_bytes(url: &str) -> Option<Vec<u8>> {
    let (_, b64) = url.split_once(";base64,")?;
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use spindle_protocol::{ErrorContent, StatusContent};

    fn console(t: &str) -> Chunk {
        Chunk::new(
            "s",
            "r",
            0,
            Body::Console {
                format: ConsoleFormat::Stdout,
                content: Some(t.into()),
                line: None,
            },
        )
    }

    #[test]
    fn head_and_tail_are_kept_with_an_exact_count() {
        let mut c = Collector::new(
            &Policy {
                budget: 100,
                ..Policy::default()
            },
            false,
        );
        let body: String = (0..1000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        for piece in body.as_bytes().chunks(7) {
            c.push(&console(std::str::from_utf8(piece).unwrap()));
        }
        let out = c.finish(None);
        assert_eq!(out.dropped, 900);
        assert!(out.text.starts_with(&body[..50]), "{}", out.text);
        assert!(out.text.ends_with(&body[950..]), "{}", out.text);
        assert!(out.text.contains("[… 900 bytes dropped …]"));
    }

    #[test]
    fn multibyte_text_is_cut_at_char_boundaries() {
        let mut h = HeadTail::new(11);
        h.push(&"é".repeat(100));
        let (t, dropped) = h.finish();
        assert_eq!(t.len() as u64 + dropped - marker(dropped).len() as u64, 200);
    }

    #[test]
    fn errors_timeouts_and_input() {
        let mut c = Collector::new(&Policy::default(), false);
        c.push(&console("partial\n"));
        c.push(&Chunk::new(
            "s",
            "r",
            1,
            Body::Error {
                content: Some(ErrorContent {
                    name: "ZeroDivisionError".into(),
                    value: "division by zero".into(),
                    traceback: vec!["\x1b[31mTraceback (most recent call last):\x1b[0m".into()],
                }),
            },
        ));
        c.push(&Chunk::new(
            "s",
            "r",
            2,
            Body::InputRequest {
                content: Some(spindle_protocol::InputRequest {
                    prompt: "name? ".into(),
                    password: false,
                }),
            },
        ));
        c.push(&Chunk::new(
            "s",
            "r",
            3,
            Body::Status {
                format: StatusFormat::Finished,
                content: Some(StatusContent {
                    outcome: Some(Outcome::Timeout),
                    duration_ms: Some(2000.0),
                    ..StatusContent::default()
                }),
            },
        ));
        let out = c.finish(None);
        assert!(
            out.text.contains(
                "partial\nTraceback (most recent call last):\nZeroDivisionError: division by zero"
            ),
            "{}",
            out.text
        );
        assert!(
            out.text.contains("waiting for input: name? "),
            "{}",
            out.text
        );
        assert!(out.text.contains("timed out after 2.0 s"), "{}", out.text);
        assert!(!out.text.contains('\x1b'));
    }
}
