//! Byte-level parsing of what a child sends: event frames (`<kind> <sync> <len>\n<payload>`) and
//! the sentinels (`ESC ] 5151 ; nonce ; n BEL`) it writes to the PTY and stderr. Pure code, no I/O.

/// One event frame from the child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub sync: u64,
    pub payload: Vec<u8>,
}

/// Largest payload a frame may carry; anything bigger is a protocol error.
pub const MAX_FRAME: usize = 64 << 20;

/// Why a frame header could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed event frame header {header:?}: {reason}")]
pub struct FrameError {
    pub header: String,
    pub reason: &'static str,
}

/// Parse a header line (without its `\n`) into (kind, sync, len).
pub fn parse_header(line: &[u8]) -> Result<(u8, u64, usize), FrameError> {
    let err = |reason| FrameError {
        header: String::from_utf8_lossy(&line[..line.len().min(64)]).into_owned(),
        reason,
    };
    let text = std::str::from_utf8(line).map_err(|_| err("not ASCII"))?;
    let mut parts = text.split(' ');
    let kind = parts.next().ok_or_else(|| err("empty"))?;
    let sync = parts.next().ok_or_else(|| err("missing sync"))?;
    let len = parts.next().ok_or_else(|| err("missing length"))?;
    if parts.next().is_some() || kind.len() != 1 {
        return Err(err("expected `<kind> <sync> <len>`"));
    }
    let kind = kind.as_bytes()[0];
    if !matches!(kind, b'o' | b'e' | b'm' | b'r') {
        return Err(err("unknown kind"));
    }
    let sync = sync.parse().map_err(|_| err("bad sync"))?;
    let len: usize = len.parse().map_err(|_| err("bad length"))?;
    if len > MAX_FRAME {
        return Err(err("frame too large"));
    }
    Ok((kind, sync, len))
}

/// Reads frames from a byte stream (blocking). Used by the event reader thread.
pub struct FrameReader<R> {
    inner: std::io::BufReader<R>,
}

impl<R: std::io::Read> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner: std::io::BufReader::with_capacity(256 << 10, inner),
        }
    }

    /// The underlying reader (bytes already buffered are discarded).
    pub fn into_inner(self) -> R {
        self.inner.into_inner()
    }

    /// The next frame; `Ok(None)` at end of stream.
    pub fn next_frame(&mut self) -> std::io::Result<Option<Result<Frame, FrameError>>> {
        use std::io::{BufRead, Read};
        let mut header = Vec::with_capacity(32);
        let n = self.inner.read_until(b'\n', &mut header)?;
        if n == 0 {
            return Ok(None);
        }
        if header.last() != Some(&b'\n') {
            return Ok(None); // stream ended inside a header
        }
        header.pop();
        let (kind, sync, len) = match parse_header(&header) {
            Ok(h) => h,
            Err(e) => return Ok(Some(Err(e))),
        };
        // Read straight into the payload's memory: no zeroing of up to 16 MiB first.
        let mut payload = Vec::with_capacity(len);
        (&mut self.inner)
            .take(len as u64)
            .read_to_end(&mut payload)?;
        if payload.len() < len {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(Some(Ok(Frame {
            kind,
            sync,
            payload,
        })))
    }
}

/// What a PTY or stderr reader yields after sentinels are taken out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Data(Vec<u8>),
    Sentinel(u64),
}

/// Finds sentinels in a byte stream that arrives in arbitrary pieces.
#[derive(Debug)]
pub struct SentinelScanner {
    prefix: Vec<u8>,
    held: Vec<u8>,
}

const OSC: &[u8] = b"\x1b]5151;";
const MAX_DIGITS: usize = 20;

impl SentinelScanner {
    pub fn new(nonce: &str) -> Self {
        let mut prefix = OSC.to_vec();
        prefix.extend_from_slice(nonce.as_bytes());
        prefix.push(b';');
        Self {
            prefix,
            held: Vec::new(),
        }
    }

    /// Feed bytes; returns data and sentinels in stream order. Bytes that may be the start of a
    /// sentinel are held until the next call decides.
    pub fn feed(&mut self, input: &[u8]) -> Vec<Piece> {
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(input);
        let mut out = Vec::new();
        let mut data_start = 0;
        let mut i = 0;
        while i < buf.len() {
            let Some(off) = memchr(0x1b, &buf[i..]) else {
                break;
            };
            let at = i + off;
            match self.match_at(&buf[at..]) {
                Match::Full(n, used) => {
                    if at > data_start {
                        out.push(Piece::Data(buf[data_start..at].to_vec()));
                    }
                    out.push(Piece::Sentinel(n));
                    i = at + used;
                    data_start = i;
                }
                Match::Partial => {
                    if at > data_start {
                        out.push(Piece::Data(buf[data_start..at].to_vec()));
                    }
                    self.held = buf[at..].to_vec();
                    return out;
                }
                Match::No => i = at + 1,
            }
        }
        if data_start < buf.len() {
            if data_start == 0 {
                out.push(Piece::Data(buf));
            } else {
                out.push(Piece::Data(buf[data_start..].to_vec()));
            }
        }
        out
    }

    /// Bytes held back as a possible sentinel start (released when the stream ends).
    pub fn take_held(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }

    fn match_at(&self, s: &[u8]) -> Match {
        let p = &self.prefix;
        let common = s.len().min(p.len());
        if s[..common] != p[..common] {
            return Match::No;
        }
        if s.len() < p.len() {
            return Match::Partial;
        }
        let rest = &s[p.len()..];
        let mut n: u64 = 0;
        for (k, &b) in rest.iter().enumerate() {
            match b {
                b'0'..=b'9' if k < MAX_DIGITS => {
                    n = n.saturating_mul(10).saturating_add((b - b'0') as u64)
                }
                0x07 if k > 0 => return Match::Full(n, p.len() + k + 1),
                _ => return Match::No,
            }
        }
        if rest.len() >= MAX_DIGITS {
            Match::No
        } else {
            Match::Partial
        }
    }
}

enum Match {
    Full(u64, usize),
    Partial,
    No,
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

/// Reassembles UTF-8 that arrives split across reads; invalid bytes become U+FFFD and never stop
/// the stream.
#[derive(Debug, Default)]
pub struct Utf8Decoder {
    pending: Vec<u8>,
}

impl Utf8Decoder {
    /// Like [`Utf8Decoder::decode`], taking the bytes: valid UTF-8 with nothing held over from
    /// the last read (the usual case) becomes the string without a copy.
    pub fn decode_owned(&mut self, input: Vec<u8>) -> String {
        if self.pending.is_empty() {
            match String::from_utf8(input) {
                Ok(s) => s,
                Err(e) => self.decode(e.as_bytes()),
            }
        } else {
            self.decode(&input)
        }
    }

    pub fn decode(&mut self, input: &[u8]) -> String {
        let owned;
        let bytes: &[u8] = if self.pending.is_empty() {
            input
        } else {
            let mut v = std::mem::take(&mut self.pending);
            v.extend_from_slice(input);
            owned = v;
            &owned
        };
        let mut out = String::with_capacity(bytes.len());
        let mut rest = bytes;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    // SAFETY-free: `good` was just validated.
                    out.push_str(std::str::from_utf8(good).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            out.push('\u{FFFD}');
                            rest = &bad[n..];
                        }
                        None => {
                            // An incomplete sequence at the end: keep it for the next read.
                            self.pending = bad.to_vec();
                            break;
                        }
                    }
                }
            }
        }
        out
    }

    /// Whatever is still pending when the stream ends, as replacement characters.
    pub fn finish(&mut self) -> String {
        if self.pending.is_empty() {
            String::new()
        } else {
            self.pending.clear();
            "\u{FFFD}".to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_parses_and_rejects() {
        assert_eq!(parse_header(b"o 3 10").unwrap(), (b'o', 3, 10));
        assert!(parse_header(b"x 0 1").is_err());
        assert!(parse_header(b"o 0").is_err());
        assert!(parse_header(b"o a 1").is_err());
        assert!(parse_header(b"o 0 999999999999").is_err());
    }

    #[test]
    fn frames_read_back_to_back() {
        let data = b"o 0 3\nabcm 2 2\n{}".to_vec();
        let mut r = FrameReader::new(&data[..]);
        let f1 = r.next_frame().unwrap().unwrap().unwrap();
        assert_eq!((f1.kind, f1.sync, f1.payload), (b'o', 0, b"abc".to_vec()));
        let f2 = r.next_frame().unwrap().unwrap().unwrap();
        assert_eq!((f2.kind, f2.sync), (b'm', 2));
        assert!(r.next_frame().unwrap().is_none());
    }

    #[test]
    fn sentinel_found_across_splits() {
        let stream = b"hello\x1b]5151;ab12;42\x07world\x1b[31mred";
        for split in 0..stream.len() {
            let mut s = SentinelScanner::new("ab12");
            let mut pieces = s.feed(&stream[..split]);
            pieces.extend(s.feed(&stream[split..]));
            let mut data = Vec::new();
            let mut sentinels = Vec::new();
            for p in pieces {
                match p {
                    Piece::Data(d) => data.extend(d),
                    Piece::Sentinel(n) => {
                        sentinels.push((n, data.len()));
                    }
                }
            }
            data.extend(s.take_held());
            assert_eq!(data, b"helloworld\x1b[31mred", "split {split}");
            assert_eq!(sentinels, vec![(42, 5)], "split {split}");
        }
    }

    #[test]
    fn foreign_nonce_is_data() {
        let mut s = SentinelScanner::new("aaaa");
        let p = s.feed(b"x\x1b]5151;bbbb;1\x07y");
        assert_eq!(p, vec![Piece::Data(b"x\x1b]5151;bbbb;1\x07y".to_vec())]);
    }

    #[test]
    fn utf8_split_is_reassembled_and_garbage_replaced() {
        let text = "héllo 🎉 中文".as_bytes();
        for split in 0..text.len() {
            let mut d = Utf8Decoder::default();
            let mut out = d.decode(&text[..split]);
            out.push_str(&d.decode(&text[split..]));
            assert_eq!(out, "héllo 🎉 中文");
        }
        let mut d = Utf8Decoder::default();
        assert_eq!(d.decode(b"a\xff\xfeb"), "a\u{FFFD}\u{FFFD}b");
    }
}
