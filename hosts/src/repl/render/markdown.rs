//! The model's Markdown, styled as it streams: `**bold**` and `# headings` in bold, `` `code` ``
//! and fenced code blocks in colour, `- items` with a bullet. The text is written as it comes,
//! token by token; only a marker that may still be completing (a lone `*`, the start of a line)
//! waits for the next piece. Without colour the text passes through unchanged.

const BOLD: &str = "\x1b[1m";
const CODE: &str = "\x1b[36m";
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

/// Styles one streamed message.
#[derive(Debug, Default)]
pub struct MdStream {
    color: bool,
    /// Text held back until it can be decided.
    pending: String,
    at_line_start: bool,
    bold: bool,
    code: bool,
    fence: bool,
    heading: bool,
    /// The style is to be set again before the next visible character (after a newline, so
    /// that a piece ending a line ends with the newline itself).
    restyle: bool,
}

impl MdStream {
    pub fn new(color: bool) -> Self {
        Self {
            color,
            at_line_start: true,
            ..Self::default()
        }
    }

    fn style(&self) -> String {
        let mut s = String::from(RESET);
        if self.fence || self.code {
            s.push_str(CODE);
        }
        if self.bold || self.heading {
            s.push_str(BOLD);
        }
        s
    }

    /// The styled text for `piece` (and whatever was held back before it).
    pub fn push(&mut self, piece: &str) -> String {
        if !self.color {
            return piece.to_string();
        }
        self.pending.push_str(piece);
        let mut out = String::new();
        loop {
            if self.pending.is_empty() {
                break;
            }
            if self.at_line_start {
                // A line's start decides fences, headings and bullets: wait for enough of it.
                let line_end = self.pending.find('\n');
                let head = &self.pending[..line_end.unwrap_or(self.pending.len())];
                let t = head.trim_start();
                let undecided = t.is_empty()
                    || t.len() < 3 && "```".starts_with(t)
                    || t.chars().all(|c| c == '#')
                    || t == "-"
                    || t == "*";
                if line_end.is_none() && undecided {
                    break;
                }
                if t.starts_with("```") {
                    let n = line_end.map_or(self.pending.len(), |i| i + 1);
                    let line: String = self.pending.drain(..n).collect();
                    if line_end.is_none() {
                        // The fence line is still arriving; show it when it ends.
                        self.pending.insert_str(0, &line);
                        break;
                    }
                    self.fence = !self.fence;
                    out.push_str(&format!(
                        "{RESET}{DIM}{}{}",
                        line.trim_end_matches('\n'),
                        RESET
                    ));
                    out.push('\n');
                    self.restyle = true;
                    continue;
                }
                self.at_line_start = false;
                if !self.fence {
                    let indent = head.len() - t.len();
                    if t.starts_with('#') {
                        let hashes = t.chars().take_while(|c| *c == '#').count();
                        let skip = indent + hashes + t[hashes..].starts_with(' ') as usize;
                        self.pending.drain(..skip);
                        self.heading = true;
                        self.restyle = false;
                        out.push_str(&self.style());
                        continue;
                    }
                    if t.starts_with("- ") || t.starts_with("* ") {
                        self.pending.replace_range(indent..indent + 2, "• ");
                    }
                }
            }
            let c = self.pending.chars().next().expect("not empty");
            if c == '\n' {
                self.pending.drain(..1);
                self.heading = false;
                self.code = false;
                self.bold = false;
                if !self.restyle {
                    out.push_str(RESET);
                }
                out.push('\n');
                self.at_line_start = true;
                self.restyle = true;
                continue;
            }
            if !self.fence && c == '`' {
                self.pending.drain(..1);
                self.code = !self.code;
                self.restyle = false;
                out.push_str(&self.style());
                continue;
            }
            if !self.fence && !self.code && c == '*' {
                if self.pending.len() < 2 {
                    break;
                }
                if self.pending.starts_with("**") {
                    self.pending.drain(..2);
                    self.bold = !self.bold;
                    self.restyle = false;
                    out.push_str(&self.style());
                    continue;
                }
            }
            self.pending.drain(..c.len_utf8());
            if self.restyle {
                self.restyle = false;
                let st = self.style();
                if st != RESET {
                    out.push_str(&st);
                }
            }
            out.push(c);
        }
        out
    }

    /// The end of the message: whatever was held back, and the style reset.
    pub fn finish(&mut self) -> String {
        if !self.color {
            return std::mem::take(&mut self.pending);
        }
        let mut out = std::mem::take(&mut self.pending);
        if self.bold || self.code || self.fence || self.heading {
            out.push_str(RESET);
        }
        *self = Self::new(self.color);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(pieces: &[&str]) -> String {
        let mut m = MdStream::new(true);
        let mut out: String = pieces.iter().map(|p| m.push(p)).collect();
        out.push_str(&m.finish());
        out
    }

    fn strip(s: &str) -> String {
        spindle_llm::policy::strip_ansi(s)
    }

    #[test]
    fn markers_become_styles_however_the_text_is_split() {
        let text = "# Title\nSome **bold** and `code`.\n- one\n```python\nx = 1 ** 2\n```\nend";
        let whole = all(&[text]);
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let refs: Vec<&str> = chars.iter().map(String::as_str).collect();
        let split = all(&refs);
        assert_eq!(strip(&whole), strip(&split));
        assert_eq!(
            strip(&whole),
            "Title\nSome bold and code.\n• one\n```python\nx = 1 ** 2\n```\nend"
        );
        assert!(whole.contains(&format!("{BOLD}bold")), "{whole:?}");
        assert!(whole.contains(&format!("{CODE}code")), "{whole:?}");
    }

    #[test]
    fn without_colour_the_text_is_unchanged() {
        let mut m = MdStream::new(false);
        assert_eq!(m.push("**a** `b`"), "**a** `b`");
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn a_piece_that_ends_a_line_ends_with_the_newline() {
        let mut m = MdStream::new(true);
        assert!(m.push("plain line\n").ends_with('\n'));
        assert!(m.push("**b** x\n").ends_with('\n'));
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn a_lone_star_is_text() {
        assert_eq!(strip(&all(&["2 * 3 = 6"])), "2 * 3 = 6");
    }
}
