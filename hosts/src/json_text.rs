//! JSON string escaping for the one large payload the edges send often: console text.
//!
//! serde_json escapes a string one byte at a time; output that runs to megabytes is escaped
//! here sixteen bytes at a time instead (SSE2; eight, SWAR, without it), with a result
//! byte-for-byte equal to serde_json's. The Jupyter edge writes `stream` contents with it, the
//! native edge the text of console chunks (see [`to_vec_with_text`]).

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
    let mut start = 0; // first byte not yet copied
    loop {
        let i = next_special(s, start);
        if i == s.len() {
            break;
        }
        out.put_slice(&s[start..i]);
        match s[i] {
            b'"' => out.put_slice(b"\\\""),
            b'\\' => out.put_slice(b"\\\\"),
            b'\n' => out.put_slice(b"\\n"),
            b'\r' => out.put_slice(b"\\r"),
            b'\t' => out.put_slice(b"\\t"),
            0x08 => out.put_slice(b"\\b"),
            0x0c => out.put_slice(b"\\f"),
            c => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.put_slice(b"\\u00");
                out.put_slice(&[HEX[(c >> 4) as usize], HEX[(c & 0xf) as usize]]);
            }
        }
        start = i + 1;
    }
    out.put_slice(&s[start..]);
}

/// Whether JSON needs `c` escaped: a control character, a quote or a backslash.
fn is_special(c: u8) -> bool {
    c < 0x20 || c == b'"' || c == b'\\'
}

/// The index of the first byte at or after `i` that needs escaping, or `s.len()`: sixteen bytes
/// at a time with SSE2 (part of every x86-64), thirty-two per loop.
#[cfg(target_arch = "x86_64")]
fn next_special(s: &[u8], mut i: usize) -> usize {
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is in x86-64's baseline, so these intrinsics are always available; every
    // load is unaligned-safe (`loadu`) and reads 16 bytes from `i` with `i + 16 <= s.len()`.
    unsafe {
        let ctl = _mm_set1_epi8(0x1f);
        let quote = _mm_set1_epi8(b'"' as i8);
        let backslash = _mm_set1_epi8(b'\\' as i8);
        let mask = |at: usize| -> u32 {
            let v = _mm_loadu_si128(s.as_ptr().add(at).cast::<__m128i>());
            // v <= 0x1f, unsigned, is min(v, 0x1f) == v.
            let low = _mm_cmpeq_epi8(_mm_min_epu8(v, ctl), v);
            let q = _mm_cmpeq_epi8(v, quote);
            let b = _mm_cmpeq_epi8(v, backslash);
            _mm_movemask_epi8(_mm_or_si128(low, _mm_or_si128(q, b))) as u32
        };
        while i + 32 <= s.len() {
            let m = mask(i) | (mask(i + 16) << 16);
            if m != 0 {
                return i + m.trailing_zeros() as usize;
            }
            i += 32;
        }
        if i + 16 <= s.len() {
            let m = mask(i);
            if m != 0 {
                return i + m.trailing_zeros() as usize;
            }
            i += 16;
        }
    }
    s[i..]
        .iter()
        .position(|&c| is_special(c))
        .map_or(s.len(), |p| i + p)
}

#[cfg(not(target_arch = "x86_64"))]
use self::next_special_swar as next_special;

/// The index of the first byte at or after `i` that needs escaping, or `s.len()`: eight bytes
/// at a time (SWAR), where there is no SSE2 (and in the tests, so that it cannot rot).
#[cfg(any(test, not(target_arch = "x86_64")))]
fn next_special_swar(s: &[u8], mut i: usize) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    // High bit set in bytes of `w` (little-endian) that are below 0x20, a quote or a
    // backslash. Borrows can flag a byte above a flagged one, never below it, so the lowest
    // flag is always right.
    fn special(w: u64) -> u64 {
        let ctl = w.wrapping_sub(LO * 0x20) & !w & HI;
        let q = w ^ (LO * b'"' as u64);
        let q = q.wrapping_sub(LO) & !q & HI;
        let b = w ^ (LO * b'\\' as u64);
        let b = b.wrapping_sub(LO) & !b & HI;
        ctl | q | b
    }
    while i + 8 <= s.len() {
        let w = u64::from_le_bytes(s[i..i + 8].try_into().expect("8 bytes"));
        let m = special(w);
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    s[i..]
        .iter()
        .position(|&c| is_special(c))
        .map_or(s.len(), |p| i + p)
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
        // Every offset of the wide loops (32 and 16 bytes) and their tails, next to bytes
        // with the high bit set (which a signed compare would take for control characters).
        for c in ['\n', '"', '\\', '\u{1f}', '\u{0}', '\u{7f}', 'é', '\u{9f}'] {
            for pad in 0..70 {
                samples.push(format!(
                    "{}{c}{}",
                    "ü".repeat(pad / 2) + &"a".repeat(pad % 2),
                    "z".repeat(70 - pad)
                ));
            }
        }
        samples
    }

    #[test]
    fn next_special_finds_exactly_the_bytes_to_escape() {
        for len in [0usize, 1, 15, 16, 17, 31, 32, 33, 47, 64, 100] {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut s = vec![b'a'; len];
                    s[at] = b;
                    let want = if is_special(b) { at } else { len };
                    for find in [next_special, next_special_swar] {
                        assert_eq!(find(&s, 0), want, "len {len}, byte {b:#x} at {at}");
                        if at > 0 {
                            assert_eq!(find(&s, at), want);
                            assert_eq!(find(&s, at - 1), want);
                        }
                        assert_eq!(find(&s, at + 1), len);
                    }
                }
            }
        }
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
