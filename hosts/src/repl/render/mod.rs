//! Turning chunks into terminal output as they stream: console text written as it comes (so
//! `\r` progress bars redraw in place), stderr in colour, images inline or as saved files,
//! HTML tables as text tables, tracebacks in colour, results with the richer types they carry
//! named. Colour only when the output is a terminal and `NO_COLOR` is not set.

pub mod html;
pub mod image;
pub mod markdown;

use std::io::{self, Write};
use std::path::PathBuf;

use serde_json::Value;
use spindle_protocol::{Body, Chunk, ConsoleFormat, ErrorContent, ImageFormat, Outcome, Rich};

pub use self::image::ImageMode;

const RESET: &str = "\x1b[0m";
const DIM: &str = "\x1b[2m";
const RED: &str = "\x1b[31m";
const BOLD_RED: &str = "\x1b[1;31m";
const YELLOW: &str = "\x1b[33m";
const GREEN: &str = "\x1b[32m";

const CYAN: &str = "\x1b[36m";

/// How streamed text is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Plain,
    Dim,
    /// Code the model wrote.
    Code,
}

/// Where the current output comes from, for the names of saved files.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub language: &'a str,
    pub count: u64,
}

/// Writes chunks to a terminal (or any writer).
pub struct Renderer {
    out: Box<dyn Write + Send>,
    pub color: bool,
    pub images: ImageMode,
    pub truecolor: bool,
    /// Print each chunk as JSON (long strings shortened) before rendering it.
    pub verbose: bool,
    /// Where images and HTML are saved; created on first use.
    out_dir: PathBuf,
    dir_made: bool,
    saved: u32,
    at_line_start: bool,
    /// Terminal (columns, rows), asked for each time (the window may be resized).
    size: Box<dyn Fn() -> (usize, usize) + Send>,
}

impl Renderer {
    pub fn new(
        out: Box<dyn Write + Send>,
        color: bool,
        images: ImageMode,
        truecolor: bool,
        out_dir: PathBuf,
        size: Box<dyn Fn() -> (usize, usize) + Send>,
    ) -> Self {
        Self {
            out,
            color,
            images,
            truecolor,
            verbose: false,
            out_dir,
            dir_made: false,
            saved: 0,
            at_line_start: true,
            size,
        }
    }

    fn style(&self, code: &'static str) -> &'static str {
        if self.color {
            code
        } else {
            ""
        }
    }

    fn reset(&self) -> &'static str {
        self.style(RESET)
    }

    /// Write text as is and remember whether the cursor is at the start of a line.
    fn raw(&mut self, text: &str) -> io::Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        self.out.write_all(text.as_bytes())?;
        self.at_line_start = text.ends_with('\n');
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Start a new line unless the cursor is at the start of one (before a prompt or a block).
    pub fn ensure_newline(&mut self) -> io::Result<()> {
        if !self.at_line_start {
            self.raw("\n")?;
        }
        Ok(())
    }

    /// The user typed a line (echoed by the terminal), so the cursor is at a line start.
    pub fn typed_line(&mut self) {
        self.at_line_start = true;
    }

    /// Something (the terminal's `^C` echo) was printed on the current line.
    pub fn mark_dirty(&mut self) {
        self.at_line_start = false;
    }

    /// Streamed text as it arrives (the model's words, its reasoning, its code), in a tone.
    pub fn stream(&mut self, text: &str, tone: Tone) -> io::Result<()> {
        let code = match tone {
            Tone::Plain => "",
            Tone::Dim => DIM,
            Tone::Code => CYAN,
        };
        let (c, r) = if code.is_empty() {
            ("", "")
        } else {
            (self.style(code), self.reset())
        };
        self.raw(&format!("{c}{text}{r}"))?;
        self.flush()
    }

    /// A dim informational line.
    pub fn info(&mut self, text: &str) -> io::Result<()> {
        self.ensure_newline()?;
        let (d, r) = (self.style(DIM), self.reset());
        for line in text.lines() {
            self.raw(&format!("{d}{line}{r}\n"))?;
        }
        self.flush()
    }

    /// Plain text (help, tables of sessions).
    pub fn plain(&mut self, text: &str) -> io::Result<()> {
        self.ensure_newline()?;
        let mut t = text.to_string();
        if !t.ends_with('\n') {
            t.push('\n');
        }
        self.raw(&t)?;
        self.flush()
    }

    /// A problem the user should read: first line in bold red, the rest as is.
    pub fn problem(&mut self, text: &str) -> io::Result<()> {
        self.ensure_newline()?;
        let (b, r) = (self.style(BOLD_RED), self.reset());
        let mut lines = text.lines();
        if let Some(first) = lines.next() {
            self.raw(&format!("{b}✗ {first}{r}\n"))?;
        }
        for line in lines {
            self.raw(&format!("  {line}\n"))?;
        }
        self.flush()
    }

    /// Render one chunk.
    pub fn chunk(&mut self, chunk: &Chunk, origin: Origin<'_>) -> io::Result<()> {
        if self.verbose {
            let line = abbreviated_json(chunk);
            self.ensure_newline()?;
            let (d, r) = (self.style(DIM), self.reset());
            self.raw(&format!("{d}{line}{r}\n"))?;
        }
        match &chunk.body {
            Body::Console {
                format,
                content: Some(text),
                ..
            } => self.console(*format, text)?,
            Body::Result { content: Some(r) } => self.result(r, origin)?,
            Body::Image {
                format,
                content: Some(r),
            } => self.image(*format, r, origin)?,
            Body::Html { content: Some(r) } => self.html(r, origin)?,
            Body::Markdown { content: Some(r) }
            | Body::Latex { content: Some(r) }
            | Body::Text { content: Some(r) } => {
                let text = r
                    .data
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| plain_of(r))
                    .unwrap_or_default();
                self.plain(&self.clean(&text))?;
            }
            Body::Json { content: Some(r) } => {
                let text = serde_json::to_string_pretty(&r.data).unwrap_or_default();
                self.plain(&text)?;
            }
            Body::File { content: Some(f) } => {
                let size = f
                    .size
                    .map(|s| format!(", {}", human_bytes(s)))
                    .unwrap_or_default();
                self.info(&format!("[file {} ({}{size})]", f.path, f.mime))?;
            }
            Body::Error { content: Some(e) } => self.error(e)?,
            Body::InputRequest { content: Some(req) } => {
                // The prompt stays on the line; the terminal echoes the answer.
                self.raw(&req.prompt)?;
                if req.prompt.is_empty() {
                    self.at_line_start = false;
                }
            }
            Body::Notice { content: Some(n) } => {
                self.ensure_newline()?;
                let (y, r) = (self.style(YELLOW), self.reset());
                self.raw(&format!("{y}spindle: {n}{r}\n"))?;
            }
            Body::Status {
                content: Some(s), ..
            } => {
                if let (Some(Outcome::Ok | Outcome::Error), Some(code)) = (s.outcome, s.exit_status)
                {
                    if code != 0 && origin.language == "bash" {
                        self.info(&format!("exit status {code}"))?;
                    }
                }
            }
            _ => {}
        }
        self.flush()
    }

    fn console(&mut self, format: ConsoleFormat, text: &str) -> io::Result<()> {
        match format {
            ConsoleFormat::Stdout => self.raw(&self.clean(text)),
            ConsoleFormat::Stderr => {
                let (c, r) = (self.style(RED), self.reset());
                // Colour each piece; keep the trailing newline outside so the colour does not
                // bleed into the next line's background.
                let text = self.clean(text);
                self.out.write_all(format!("{c}{text}{r}").as_bytes())?;
                self.at_line_start = text.ends_with('\n');
                Ok(())
            }
            ConsoleFormat::ActiveLine => Ok(()),
        }
    }

    /// Without colour, program output loses its escape sequences too.
    fn clean(&self, text: &str) -> String {
        if self.color {
            text.to_string()
        } else {
            strip_ansi(text)
        }
    }

    fn result(&mut self, r: &Rich, origin: Origin<'_>) -> io::Result<()> {
        self.ensure_newline()?;
        let text = plain_of(r).unwrap_or_default();
        let text = self.clean(&text);
        let (g, reset) = (self.style(GREEN), self.reset());
        if !text.is_empty() {
            self.raw(&format!("{g}{text}{reset}\n"))?;
        }
        let mut extra = Vec::new();
        for (mime, value) in &r.bundle {
            if mime == "text/plain" {
                continue;
            }
            let saved = self.save_mime(mime, value, origin);
            extra.push(
                match (saved, mime.starts_with("image/"), r.width, r.height) {
                    (Some(p), true, Some(w), Some(h)) => {
                        format!("{mime} {w}×{h} → {}", p.display())
                    }
                    (Some(p), _, _, _) => format!("{mime} → {}", p.display()),
                    (None, _, _, _) => mime.clone(),
                },
            );
        }
        if !extra.is_empty() {
            self.info(&format!("[also: {}]", extra.join("; ")))?;
        }
        Ok(())
    }

    fn image(&mut self, format: ImageFormat, r: &Rich, origin: Origin<'_>) -> io::Result<()> {
        self.ensure_newline()?;
        let mime = format.mime();
        let Some(data) = r.data.as_str() else {
            return self.info(&format!("[{mime}: no data]"));
        };
        let bytes = if format == ImageFormat::Svg {
            Some(data.as_bytes().to_vec())
        } else {
            image::decode_base64(data)
        };
        let Some(bytes) = bytes else {
            return self.info(&format!("[{mime}: the data is not valid base64]"));
        };
        let path = self.save(origin, ext_for(mime), &bytes);
        let decoded = if format == ImageFormat::Svg {
            None
        } else {
            ::image::load_from_memory(&bytes).ok()
        };
        let (w, h) = match (&decoded, r.width, r.height) {
            (_, Some(w), Some(h)) => (Some(w), Some(h)),
            (Some(img), _, _) => (Some(img.width()), Some(img.height())),
            _ => (None, None),
        };
        let (cols, rows) = (self.size)();
        let cols = cols.saturating_sub(1).max(10) as u32;
        // Leave room for the caption and the next prompt.
        let lines = rows.saturating_sub(3).clamp(8, 60) as u32;
        if let Some(img) = &decoded {
            let shown = match self.images {
                ImageMode::Kitty => image::as_png(&bytes, img)
                    .map(|png| image::kitty(&png, (img.width() > cols * 8).then_some(cols))),
                ImageMode::Iterm => Some(image::iterm(
                    &bytes,
                    (img.width() > cols * 8).then_some(cols),
                )),
                ImageMode::Sixel => Some(image::sixel(img, cols * 8, 1200)),
                ImageMode::Blocks => {
                    Some(image::blocks(img, cols, lines, self.color, self.truecolor))
                }
                ImageMode::Path => None,
            };
            if let Some(s) = shown {
                self.raw(&s)?;
            }
        }
        let size = match (w, h) {
            (Some(w), Some(h)) => format!(" {w}×{h}"),
            _ => String::new(),
        };
        let place = match &path {
            Some(p) => format!(", saved to {}", p.display()),
            None => String::new(),
        };
        self.info(&format!(
            "[{mime}{size}, {}{place}]",
            human_bytes(bytes.len() as u64)
        ))
    }

    fn html(&mut self, r: &Rich, origin: Origin<'_>) -> io::Result<()> {
        self.ensure_newline()?;
        let html_text = r.data.as_str().unwrap_or_default().to_string();
        let width = (self.size)().0.saturating_sub(1).max(20);
        let text = html::render(&html_text, width, self.color);
        if text.trim().is_empty() {
            if let Some(p) = plain_of(r) {
                self.plain(&p)?;
            }
        } else {
            self.raw(&text)?;
        }
        let path = self.save(origin, "html", html_text.as_bytes());
        match path {
            Some(p) => self.info(&format!("[text/html saved to {}]", p.display())),
            None => self.info("[text/html]"),
        }
    }

    fn error(&mut self, e: &ErrorContent) -> io::Result<()> {
        self.ensure_newline()?;
        let (red, bold, reset) = (self.style(RED), self.style(BOLD_RED), self.reset());
        let coloured = e.traceback.iter().any(|l| l.contains('\x1b'));
        let mut lines: Vec<String> = e
            .traceback
            .iter()
            .flat_map(|l| l.lines().map(str::to_string).collect::<Vec<_>>())
            .collect();
        let headline = format!("{}: {}", e.name, e.value);
        if lines.is_empty() {
            lines.push(headline.clone());
        }
        let last = lines.len() - 1;
        for (i, line) in lines.iter().enumerate() {
            let line = self.clean(line);
            if coloured {
                self.raw(&format!("{line}{reset}\n"))?;
            } else if i == last || strip_ansi(&line) == headline {
                self.raw(&format!("{bold}{line}{reset}\n"))?;
            } else {
                self.raw(&format!("{red}{line}{reset}\n"))?;
            }
        }
        Ok(())
    }

    fn save_mime(&mut self, mime: &str, value: &Value, origin: Origin<'_>) -> Option<PathBuf> {
        let bytes = if let Some(fmt) = ImageFormat::from_mime(mime) {
            if fmt == ImageFormat::Svg {
                value.as_str()?.as_bytes().to_vec()
            } else {
                image::decode_base64(value.as_str()?)?
            }
        } else if mime == "text/html" {
            value.as_str()?.as_bytes().to_vec()
        } else {
            return None;
        };
        self.save(origin, ext_for(mime), &bytes)
    }

    /// Save output under the REPL's output directory; `None` (after saying why, in the log)
    /// when that fails.
    fn save(&mut self, origin: Origin<'_>, ext: &str, bytes: &[u8]) -> Option<PathBuf> {
        if !self.dir_made {
            if let Err(e) = std::fs::create_dir_all(&self.out_dir) {
                tracing::warn!(error = %e, dir = %self.out_dir.display(), "cannot create the output directory");
                return None;
            }
            self.dir_made = true;
        }
        self.saved += 1;
        let name = format!("{}-{}-{}.{ext}", origin.language, origin.count, self.saved);
        let path = self.out_dir.join(name);
        match std::fs::write(&path, bytes) {
            Ok(()) => Some(path),
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "cannot save output");
                None
            }
        }
    }
}

fn ext_for(mime: &str) -> &'static str {
    match mime {
        "image/png" => "png",
        "image/jpeg" => "jpg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        "image/svg+xml" => "svg",
        "text/html" => "html",
        _ => "bin",
    }
}

fn plain_of(r: &Rich) -> Option<String> {
    r.bundle
        .get("text/plain")
        .and_then(|v| v.as_str())
        .map(str::to_string)
}

pub fn human_bytes(n: u64) -> String {
    match n {
        n if n < 1 << 10 => format!("{n} B"),
        n if n < 1 << 20 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0)),
    }
}

/// Remove terminal escape sequences (CSI and OSC).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('[') => {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            Some(']') => {
                chars.next();
                while let Some(c) = chars.next() {
                    if c == '\x07' {
                        break;
                    }
                    if c == '\x1b' && chars.peek() == Some(&'\\') {
                        chars.next();
                        break;
                    }
                }
            }
            Some(_) => {
                chars.next();
            }
            None => {}
        }
    }
    out
}

/// A chunk as one JSON line with long strings (base64 images) shortened.
pub fn abbreviated_json(chunk: &Chunk) -> String {
    fn shorten(v: &mut Value) {
        match v {
            Value::String(s) if s.chars().count() > 160 => {
                let head: String = s.chars().take(60).collect();
                *s = format!("{head}…({} bytes)", s.len());
            }
            Value::Array(a) => a.iter_mut().for_each(shorten),
            Value::Object(o) => o.values_mut().for_each(shorten),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(chunk).unwrap_or(Value::Null);
    shorten(&mut v);
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use spindle_protocol::{MimeBundle, StatusContent, StatusFormat};
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Buf {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn renderer(color: bool, mode: ImageMode) -> (Renderer, Buf, tempfile::TempDir) {
        let buf = Buf::default();
        let dir = tempfile::tempdir().unwrap();
        let r = Renderer::new(
            Box::new(buf.clone()),
            color,
            mode,
            true,
            dir.path().join("out"),
            Box::new(|| (80, 40)),
        );
        (r, buf, dir)
    }

    fn chunk(body: Body) -> Chunk {
        Chunk::new("s", "r", 0, body)
    }

    const ORIGIN: Origin<'static> = Origin {
        language: "python",
        count: 3,
    };

    fn png(w: u32, h: u32) -> String {
        let img = ::image::RgbaImage::from_pixel(w, h, ::image::Rgba([10, 200, 30, 255]));
        let mut out = std::io::Cursor::new(Vec::new());
        ::image::DynamicImage::ImageRgba8(img)
            .write_to(&mut out, ::image::ImageFormat::Png)
            .unwrap();
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(out.into_inner())
    }

    #[test]
    fn stderr_is_coloured_only_with_colour() {
        let (mut r, buf, _d) = renderer(true, ImageMode::Path);
        let c = chunk(Body::Console {
            format: ConsoleFormat::Stderr,
            content: Some("oops\n".into()),
            line: None,
        });
        r.chunk(&c, ORIGIN).unwrap();
        assert_eq!(buf.text(), "\x1b[31moops\n\x1b[0m");
        let (mut r, buf, _d) = renderer(false, ImageMode::Path);
        r.chunk(&c, ORIGIN).unwrap();
        assert_eq!(buf.text(), "oops\n");
    }

    #[test]
    fn progress_bar_passes_carriage_returns_and_newline_before_prompt() {
        let (mut r, buf, _d) = renderer(false, ImageMode::Path);
        for t in ["10%\r", "50%\r", "100%"] {
            r.chunk(
                &chunk(Body::Console {
                    format: ConsoleFormat::Stdout,
                    content: Some(t.into()),
                    line: None,
                }),
                ORIGIN,
            )
            .unwrap();
        }
        r.ensure_newline().unwrap();
        assert_eq!(buf.text(), "10%\r50%\r100%\n");
    }

    #[test]
    fn image_in_path_mode_is_saved_with_size() {
        let (mut r, buf, dir) = renderer(false, ImageMode::Path);
        let mut bundle = MimeBundle::new();
        bundle.insert("image/png".into(), json!(png(30, 20)));
        let rich = Rich {
            data: json!(png(30, 20)),
            bundle,
            width: Some(30),
            height: Some(20),
            ..Rich::default()
        };
        r.chunk(
            &chunk(Body::Image {
                format: ImageFormat::Png,
                content: Some(rich),
            }),
            ORIGIN,
        )
        .unwrap();
        let text = buf.text();
        let saved = dir.path().join("out").join("python-3-1.png");
        assert!(text.contains("[image/png 30×20"), "{text}");
        assert!(text.contains(&saved.display().to_string()), "{text}");
        assert!(saved.exists());
    }

    #[test]
    fn image_as_blocks() {
        let (mut r, buf, _d) = renderer(true, ImageMode::Blocks);
        let rich = Rich {
            data: json!(png(40, 10)),
            ..Rich::default()
        };
        r.chunk(
            &chunk(Body::Image {
                format: ImageFormat::Png,
                content: Some(rich),
            }),
            ORIGIN,
        )
        .unwrap();
        let text = buf.text();
        assert_eq!(text.matches('▀').count(), 40 * 5, "{text}");
        assert!(text.contains("40×10"));
    }

    #[test]
    fn result_names_richer_types() {
        let (mut r, buf, _d) = renderer(false, ImageMode::Path);
        let mut bundle = MimeBundle::new();
        bundle.insert("text/plain".into(), json!("   a\n0  1"));
        bundle.insert(
            "text/html".into(),
            json!("<table><tr><td>1</td></tr></table>"),
        );
        bundle.insert("application/vnd.custom".into(), json!({}));
        r.chunk(
            &chunk(Body::Result {
                content: Some(Rich {
                    data: json!("   a\n0  1"),
                    bundle,
                    ..Rich::default()
                }),
            }),
            ORIGIN,
        )
        .unwrap();
        let text = buf.text();
        assert!(text.starts_with("   a\n0  1\n"), "{text}");
        assert!(
            text.contains("[also: application/vnd.custom; text/html → "),
            "{text}"
        );
    }

    #[test]
    fn html_table_rendered_and_saved() {
        let (mut r, buf, _d) = renderer(false, ImageMode::Path);
        let html =
            "<table><thead><tr><th>x</th></tr></thead><tbody><tr><td>42</td></tr></tbody></table>";
        r.chunk(
            &chunk(Body::Html {
                content: Some(Rich {
                    data: json!(html),
                    ..Rich::default()
                }),
            }),
            ORIGIN,
        )
        .unwrap();
        let text = buf.text();
        assert!(text.starts_with(" x\n──\n42\n"), "{text:?}");
        assert!(text.contains("[text/html saved to "), "{text}");
    }

    #[test]
    fn traceback_plain_and_coloured() {
        let e = ErrorContent {
            name: "ValueError".into(),
            value: "boom".into(),
            traceback: vec![
                "Traceback (most recent call last):".into(),
                "ValueError: boom".into(),
            ],
        };
        let (mut r, buf, _d) = renderer(true, ImageMode::Path);
        r.chunk(
            &chunk(Body::Error {
                content: Some(e.clone()),
            }),
            ORIGIN,
        )
        .unwrap();
        let text = buf.text();
        assert!(text.contains("\x1b[31mTraceback"), "{text:?}");
        assert!(text.contains("\x1b[1;31mValueError: boom"), "{text:?}");
        let (mut r, buf, _d) = renderer(false, ImageMode::Path);
        r.chunk(&chunk(Body::Error { content: Some(e) }), ORIGIN)
            .unwrap();
        assert_eq!(
            buf.text(),
            "Traceback (most recent call last):\nValueError: boom\n"
        );
    }

    #[test]
    fn bash_exit_status_is_shown() {
        let (mut r, buf, _d) = renderer(false, ImageMode::Path);
        let c = chunk(Body::Status {
            format: StatusFormat::Finished,
            content: Some(StatusContent {
                outcome: Some(Outcome::Error),
                exit_status: Some(2),
                ..StatusContent::default()
            }),
        });
        r.chunk(
            &c,
            Origin {
                language: "bash",
                count: 1,
            },
        )
        .unwrap();
        assert_eq!(buf.text(), "exit status 2\n");
    }

    #[test]
    fn strip_and_abbreviate() {
        assert_eq!(strip_ansi("\x1b[1;31mred\x1b[0m \x1b]0;t\x07x"), "red x");
        let c = chunk(Body::Console {
            format: ConsoleFormat::Stdout,
            content: Some("x".repeat(500)),
            line: None,
        });
        let j = abbreviated_json(&c);
        assert!(j.contains("…(500 bytes)"), "{j}");
        assert!(j.len() < 300);
    }
}
