//! JSON string escaping for the one large payload the edges send often: console text.
//!
//! serde_json escapes a string one byte at a time; output that runs to megabytes is escaped
//! here eight bytes at a time instead, with a result byte-for-byte equal to serde_json's. The
//! Jupyter edge writes `stream` contents with it, the native edge the text of console chunks
//! (see [`to_vec_with_text`]).

use bytes::BufMut;
use serde::Serialize;

/// Where [`to_vec_with_text`] puts the text: the one empty `content` string of the stub. The
/// sequence cannot occur inside a JSON string (there every `"` follows a backslash), so it
/// only ever matches a key `content` whose value is the empty string.
const SLOT: &[u8] = br#""content":"""#;

/// Append the JSON of `stub` to `out`, with `text` as the value of its `content` (which the
/// stub has empty): what `serde_json::to_writer` gives for the message that holds `text`, with
/// the text escaped by [`escape_into`]. False, with nothing appended, when the stub has no
/// empty `content` or does not serialise.
pub fn to_vec_with_text<T: Serialize + ?Sized>(out: &mut Vec<u8>, stub: &T, text: &str) -> bool {
    let Ok(envelope) = serde_json::to_vec(stub) else {
        return false;
    };
    let Some(at) = envelope.windows(SLOT.len()).rposition(|w| w == SLOT) else {
        return false;
    };
    let open = at + SLOT.len() - 1; // just after the value's opening quote
    out.reserve(envelope.len() + text.len() + text.len() / 16);
    out.extend_from_slice(&envelope[..open]);
    escape_into(out, text.as_bytes());
    out.extend_from_slice(&envelope[open..]);
    true
}

/// Append `s` (UTF-8) as the inside of a JSON string: `"`, `\\` and control characters escaped
/// as serde_json does, everything else (including non-ASCII) copied.
pub fn escape_into<B: BufMut + ?Sized>(out: &mut B, s: &[u8]) {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    // High bit set in bytes of `w` (little-endian) that are below 0x20, a quote or a
    // backslash (SWAR). Borrows can flag a byte above a flagged one, never below it, so the
    // lowest flag is always right.
    fn special(w: u64) -> u64 {
        let ctl = w.wrapping_sub(LO * 0x20) & !w & HI;
        let q = w ^ (LO * b'"' as u64);
        let q = q.wrapping_sub(LO) & !q & HI;
        let b = w ^ (LO * b'\\' as u64);
        let b = b.wrapping_sub(LO) & !b & HI;
        ctl | q | b
    }
    let mut start = 0; // first byte not yet copied
    let mut i = 0;
    while i < s.len() {
        if i + 8 <= s.len() {
            let w = u64::from_le_bytes(s[i..i + 8].try_into().expect("8 bytes"));
            let m = special(w);
            if m == 0 {
                i += 8;
                continue;
            }
            i += (m.trailing_zeros() / 8) as usize;
        }
        let c = s[i];
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            c if c < 0x20 => {
                out.put_slice(&s[start..i]);
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.put_slice(b"\\u00");
                out.put_slice(&[HEX[(c >> 4) as usize], HEX[(c & 0xf) as usize]]);
                i += 1;
                start = i;
                continue;
            }
            _ => {
                i += 1;
                continue;
            }
        };
        out.put_slice(&s[start..i]);
        out.put_slice(esc);
        i += 1;
        start = i;
    }
    out.put_slice(&s[start..]);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Texts that exercise every escape at every offset within a word.
    pub(crate) fn samples() -> Vec<String> {
        let mut samples: Vec<String> = vec![
            String::new(),
            "plain ascii text that is longer than eight bytes\n".repeat(3),
            "quote \" backslash \\ tab \t cr \r bell \u{7} nul \u{0} esc \u{1b}[0m".into(),
            "é ü 漢字 🎉 mixed with \"quotes\" and \u{1f}".into(),
            "\u{7f}\u{80}\u{ff}".into(),
            r#""content":"" inside the text"#.into(),
        ];
        for b in 0u8..0x80 {
            for pad in 0..9 {
                samples.push(format!("{}{}{}", "a".repeat(pad), b as char, "z".repeat(9)));
            }
        }
        samples
    }

    #[test]
    fn escaping_matches_serde_json() {
        for text in samples() {
            let mut out = Vec::new();
            out.push(b'"');
            escape_into(&mut out, text.as_bytes());
            out.push(b'"');
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(&text).unwrap()
            );
        }
    }

    #[test]
    fn the_text_goes_into_the_empty_content_only() {
        #[derive(Serialize)]
        struct Msg<'a> {
            id: &'a str,
            content: &'a str,
            after: &'a str,
        }
        for text in samples() {
            // Ids that look like the slot, escaped, must not be taken for it.
            let id = r#"x" "content":"" \"#;
            let whole = Msg {
                id,
                content: &text,
                after: r#""content":"""#,
            };
            let stub = Msg {
                id,
                content: "",
                after: whole.after,
            };
            let mut out = b"prefix".to_vec();
            assert!(to_vec_with_text(&mut out, &stub, &text));
            assert_eq!(&out[..6], b"prefix");
            assert_eq!(out[6..], serde_json::to_vec(&whole).unwrap()[..]);
        }
    }

    #[test]
    fn a_stub_without_an_empty_content_appends_nothing() {
        let mut out = Vec::new();
        assert!(!to_vec_with_text(
            &mut out,
            &serde_json::json!({"content": "x"}),
            "text"
        ));
        assert!(!to_vec_with_text(
            &mut out,
            &serde_json::json!({"other": ""}),
            "text"
        ));
        assert!(out.is_empty());
    }
}
