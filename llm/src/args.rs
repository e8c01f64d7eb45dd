//! Reading `execute` arguments while they stream: the `code` string is decoded from partial
//! JSON as it arrives, so code shows token by token before the call is complete. The complete
//! arguments are parsed with serde once the stream ends; this is only for display.

/// Incremental reader of one JSON string value (the one after `"key":`).
#[derive(Debug, Clone)]
pub struct StringField {
    key: &'static str,
    /// Where the value's text starts in the raw arguments, once found.
    start: Option<usize>,
    /// How far the raw text has been decoded.
    pos: usize,
    done: bool,
}

impl StringField {
    pub fn new(key: &'static str) -> Self {
        Self {
            key,
            start: None,
            pos: 0,
            done: false,
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Decode what `raw` (the whole arguments text so far) adds to the value; returns the new
    /// text.
    pub fn advance(&mut self, raw: &str) -> String {
        if self.done {
            return String::new();
        }
        if self.start.is_none() {
            self.start = find_value(raw, self.key);
            match self.start {
                Some(s) => self.pos = s,
                None => return String::new(),
            }
        }
        let bytes = raw.as_bytes();
        let mut out = String::new();
        let mut i = self.pos;
        while i < bytes.len() {
            match bytes[i] {
                b'"' => {
                    self.done = true;
                    i += 1;
                    break;
                }
                b'\\' => {
                    let Some(&e) = bytes.get(i + 1) else { break };
                    let simple = match e {
                        b'n' => Some('\n'),
                        b't' => Some('\t'),
                        b'r' => Some('\r'),
                        b'b' => Some('\u{8}'),
                        b'f' => Some('\u{c}'),
                        b'"' => Some('"'),
                        b'\\' => Some('\\'),
                        b'/' => Some('/'),
                        _ => None,
                    };
                    if let Some(c) = simple {
                        out.push(c);
                        i += 2;
                        continue;
                    }
                    if e != b'u' {
                        // Not JSON; show it as written.
                        out.push('\\');
                        i += 1;
                        continue;
                    }
                    let Some(hex) = raw.get(i + 2..i + 6) else {
                        break;
                    };
                    let Ok(cp) = u32::from_str_radix(hex, 16) else {
                        i += 6;
                        continue;
                    };
                    if (0xD800..0xDC00).contains(&cp) {
                        // A surrogate pair: wait for the low half.
                        let Some(low) = raw.get(i + 6..i + 12) else {
                            break;
                        };
                        let lo = low
                            .strip_prefix("\\u")
                            .and_then(|h| u32::from_str_radix(h, 16).ok());
                        match lo {
                            Some(lo) if (0xDC00..0xE000).contains(&lo) => {
                                let c = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                                out.push(char::from_u32(c).unwrap_or('\u{fffd}'));
                                i += 12;
                            }
                            _ => {
                                out.push('\u{fffd}');
                                i += 6;
                            }
                        }
                        continue;
                    }
                    out.push(char::from_u32(cp).unwrap_or('\u{fffd}'));
                    i += 6;
                }
                _ => {
                    // Copy up to the next quote or backslash (always on a char boundary).
                    let end = bytes[i..]
                        .iter()
                        .position(|b| *b == b'"' || *b == b'\\')
                        .map_or(bytes.len(), |p| i + p);
                    out.push_str(&raw[i..end]);
                    i = end;
                }
            }
        }
        self.pos = i;
        out
    }
}

/// Byte offset of the text of `"key": "` in `raw`, if it is there yet.
fn find_value(raw: &str, key: &str) -> Option<usize> {
    let pat = format!("\"{key}\"");
    let mut from = 0;
    while let Some(k) = raw[from..].find(&pat) {
        let mut i = from + k + pat.len();
        let b = raw.as_bytes();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < b.len() && b[i] == b':' {
            i += 1;
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < b.len() && b[i] == b'"' {
                return Some(i + 1);
            }
            return None;
        }
        from = from + k + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_decodes_piece_by_piece() {
        let full = r#"{"language": "python", "code": "print(\"hi\")\nx = '\u00e9\ud83d\ude00'\\"}"#;
        let mut f = StringField::new("code");
        let mut got = String::new();
        for end in 1..=full.len() {
            if full.is_char_boundary(end) {
                got.push_str(&f.advance(&full[..end]));
            }
        }
        assert!(f.is_done());
        assert_eq!(got, "print(\"hi\")\nx = 'é😀'\\");
        let mut l = StringField::new("language");
        assert_eq!(l.advance(full), "python");
        assert!(l.is_done());
    }
}
