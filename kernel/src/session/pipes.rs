//! The process's byte streams served from the runtime: non-blocking descriptors polled by the
//! runtime's own reactor, so an execution wakes no thread of ours besides the runtime's.
//!
//! A launcher hands over descriptors where it has them ([`Source::Fd`], [`Sink::Fd`]: the local
//! PTY master, the FIFOs); a stream that is not a descriptor (a container's attach stream) gets a
//! thread of its own, as every stream once did. Either way the session sees the same channels.

use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;

use crate::frames::{parse_header, Frame, FrameError, Piece, SentinelScanner};
use crate::launcher::{Sink, Source};

use super::proc::EvtItem;

/// Bytes read per call from the PTY and stderr.
const READ_CHUNK: usize = 64 << 10;
/// What the event reader buffers beyond a payload it reads straight into place.
const EVT_BUFFER: usize = 256 << 10;
/// A frame header is `<kind> <sync> <len>`: a few dozen bytes at most.
const MAX_HEADER: usize = 128;

/// A descriptor in non-blocking mode, registered with the runtime's reactor.
pub(super) struct Pollable {
    fd: AsyncFd<OwnedFd>,
    /// A pipe: a short read means it is empty (not so sure of a terminal).
    pipe: bool,
}

impl Pollable {
    /// Sets `O_NONBLOCK` on the descriptor's open file (shared with its duplicates).
    pub(super) fn new(fd: OwnedFd, interest: Interest) -> io::Result<Self> {
        set_nonblock(&fd)?;
        let pipe = is_fifo(&fd);
        // SAFETY: an `OwnedFd` stays open, and the same descriptor, for as long as it is owned.
        let fd = unsafe { AsyncFd::register_with_interest(fd, interest)? };
        Ok(Self { fd, pipe })
    }

    /// Read what is there, waiting until something is; `Ok(0)` at end of stream.
    pub(super) async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: read(2) only ever writes initialised bytes into it.
        let buf = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
        self.read_raw(buf).await
    }

    /// Read into the spare capacity of `v` (at most `limit` bytes), extending it.
    async fn read_into(&self, v: &mut Vec<u8>, limit: usize) -> io::Result<usize> {
        v.reserve(limit);
        let spare = v.spare_capacity_mut();
        let want = limit.min(spare.len());
        let n = self.read_raw(&mut spare[..want]).await?;
        // SAFETY: read(2) initialised the first `n` bytes of the spare capacity.
        unsafe { v.set_len(v.len() + n) };
        Ok(n)
    }

    async fn read_raw(&self, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            let len = buf.len();
            match guard.try_io(|fd| {
                // SAFETY: `buf` is valid for writes of its length.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), len) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }) {
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Ok(n)) => {
                    // A short read emptied the pipe: wait for the next wake-up rather than
                    // spend a read on EAGAIN (the reactor keeps any event newer than `guard`).
                    if self.pipe && n > 0 && n < len {
                        guard.clear_ready();
                    }
                    return Ok(n);
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Write all of `bytes`, waiting whenever the pipe or terminal is full.
    pub(super) async fn write_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| {
                // SAFETY: `bytes` is valid for reads of its length.
                let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }) {
                Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(Ok(n)) => bytes = &bytes[n..],
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }
}

fn is_fifo(fd: &OwnedFd) -> bool {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat fills `st` when it returns 0.
    unsafe {
        libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) == 0
            && st.assume_init().st_mode & libc::S_IFMT == libc::S_IFIFO
    }
}

fn set_nonblock(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Read a PTY or stderr stream, split out its sentinels and send the pieces in order.
pub(super) fn spawn_pieces(
    name: &str,
    source: Source,
    nonce: String,
    tx: mpsc::Sender<Piece>,
) -> io::Result<()> {
    match source {
        Source::Fd(fd) => {
            let fd = Pollable::new(fd, Interest::READABLE)?;
            tokio::spawn(async move {
                let mut scanner = SentinelScanner::new(&nonce);
                let mut buf = vec![0u8; READ_CHUNK];
                loop {
                    let n = tokio::select! {
                        r = fd.read(&mut buf) => r,
                        _ = tx.closed() => return,
                    };
                    match n {
                        Ok(0) | Err(_) => break, // EIO: the terminal's last user is gone
                        Ok(n) => {
                            for piece in scanner.feed(&buf[..n]) {
                                if tx.send(piece).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
                let rest = scanner.take_held();
                if !rest.is_empty() {
                    let _ = tx.send(Piece::Data(rest)).await;
                }
            });
            Ok(())
        }
        Source::Reader(r) => spawn_piece_thread(name, r, nonce, tx),
    }
}

fn spawn_piece_thread(
    name: &str,
    mut r: Box<dyn Read + Send>,
    nonce: String,
    tx: mpsc::Sender<Piece>,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name(format!("spindle-{name}"))
        .spawn(move || {
            let mut scanner = SentinelScanner::new(&nonce);
            let mut buf = vec![0u8; READ_CHUNK];
            loop {
                match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        for piece in scanner.feed(&buf[..n]) {
                            if tx.blocking_send(piece).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            let rest = scanner.take_held();
            if !rest.is_empty() {
                let _ = tx.blocking_send(Piece::Data(rest));
            }
        })
        .map(|_| ())
}

/// Read event frames and send them; after a malformed header, drain the stream (so the child
/// never blocks on a full pipe) and stop.
pub(super) fn spawn_events(source: Source, tx: mpsc::Sender<EvtItem>) -> io::Result<()> {
    match source {
        Source::Fd(fd) => {
            let fd = Pollable::new(fd, Interest::READABLE)?;
            tokio::spawn(async move {
                let mut frames = Frames::new(fd);
                loop {
                    let item = tokio::select! {
                        f = frames.next_frame() => f,
                        _ = tx.closed() => return,
                    };
                    let Some(item) = evt_item(item) else { return };
                    let bad = matches!(item, EvtItem::Bad(_));
                    if tx.send(item).await.is_err() || bad {
                        break;
                    }
                }
                let mut sink = vec![0u8; READ_CHUNK];
                while matches!(frames.fd.read(&mut sink).await, Ok(n) if n > 0) {}
            });
            Ok(())
        }
        Source::Reader(r) => std::thread::Builder::new()
            .name("spindle-events".into())
            .spawn(move || {
                let mut r = crate::frames::FrameReader::new(r);
                while let Some(item) = evt_item(r.next_frame()) {
                    let bad = matches!(item, EvtItem::Bad(_));
                    if tx.blocking_send(item).is_err() || bad {
                        break;
                    }
                }
                let mut sink = [0u8; READ_CHUNK];
                let mut inner = r.into_inner();
                while matches!(inner.read(&mut sink), Ok(n) if n > 0) {}
            })
            .map(|_| ()),
    }
}

/// What a frame read gives the actor; `None` at the end of the stream (or a read error).
fn evt_item(read: io::Result<Option<Result<Frame, FrameError>>>) -> Option<EvtItem> {
    match read {
        Ok(Some(Ok(f))) => Some(EvtItem::Frame(f)),
        Ok(Some(Err(e))) => Some(EvtItem::Bad(e.to_string())),
        Ok(None) | Err(_) => None,
    }
}

/// Event frames from a non-blocking descriptor: headers through a small buffer, payloads read
/// straight into their own memory.
struct Frames {
    fd: Pollable,
    buf: Vec<u8>,
    start: usize,
}

impl Frames {
    fn new(fd: Pollable) -> Self {
        Self {
            fd,
            buf: Vec::with_capacity(EVT_BUFFER),
            start: 0,
        }
    }

    /// Read more into the buffer (after what is unread); `Ok(0)` at end of stream.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let room = EVT_BUFFER.saturating_sub(self.buf.len()).max(READ_CHUNK);
        self.fd.read_into(&mut self.buf, room).await
    }

    async fn next_frame(&mut self) -> io::Result<Option<Result<Frame, FrameError>>> {
        let header_end = loop {
            let unread = &self.buf[self.start..];
            if let Some(i) = unread.iter().position(|&b| b == b'\n') {
                break self.start + i;
            }
            if unread.len() > MAX_HEADER {
                return Ok(Some(Err(FrameError {
                    header: String::from_utf8_lossy(&unread[..64]).into_owned(),
                    reason: "header too long",
                })));
            }
            if self.fill().await? == 0 {
                return Ok(None); // the stream ended (inside a header, if anything was read)
            }
        };
        let parsed = parse_header(&self.buf[self.start..header_end]);
        self.start = header_end + 1;
        let (kind, sync, len) = match parsed {
            Ok(h) => h,
            Err(e) => return Ok(Some(Err(e))),
        };
        let buffered = (self.buf.len() - self.start).min(len);
        let mut payload = crate::buffers::take(len);
        payload.extend_from_slice(&self.buf[self.start..self.start + buffered]);
        self.start += buffered;
        while payload.len() < len {
            let want = len - payload.len();
            if self.fd.read_into(&mut payload, want).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(Some(Ok(Frame {
            kind,
            sync,
            payload,
        })))
    }
}

/// Write what arrives on `rx` to `sink`, in order, until either side is gone.
pub(super) fn spawn_writer(
    name: &str,
    sink: Sink,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
) -> io::Result<()> {
    match sink {
        Sink::Fd(fd) => {
            let fd = Pollable::new(fd, Interest::WRITABLE)?;
            tokio::spawn(async move {
                while let Some(bytes) = rx.recv().await {
                    if fd.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
            });
            Ok(())
        }
        Sink::Writer(mut w) => std::thread::Builder::new()
            .name(format!("spindle-{name}"))
            .spawn(move || {
                while let Some(bytes) = rx.blocking_recv() {
                    if w.write_all(&bytes).and_then(|_| w.flush()).is_err() {
                        break;
                    }
                }
            })
            .map(|_| ()),
    }
}

/// A sink opened for the request task: the runtime's, or a blocking writer on a thread.
pub(super) enum Opened {
    Fd(Pollable),
    Writer(mpsc::UnboundedSender<Vec<u8>>),
}

impl Opened {
    pub(super) fn open(sink: Sink) -> io::Result<Self> {
        match sink {
            Sink::Fd(fd) => Ok(Self::Fd(Pollable::new(fd, Interest::WRITABLE)?)),
            w @ Sink::Writer(_) => {
                let (tx, rx) = mpsc::unbounded_channel();
                spawn_writer("requests", w, rx)?;
                Ok(Self::Writer(tx))
            }
        }
    }

    pub(super) async fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Self::Fd(fd) => fd.write_all(bytes).await,
            Self::Writer(tx) => tx
                .send(bytes.to_vec())
                .map_err(|_| io::ErrorKind::BrokenPipe.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    fn pipe() -> (OwnedFd, std::fs::File) {
        let mut fds = [0; 2];
        // SAFETY: pipe(2) fills two new descriptors that we then own.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        unsafe {
            (
                OwnedFd::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        }
    }

    #[tokio::test]
    async fn frames_split_across_writes_arrive_whole_and_in_order() {
        let (r, mut w) = pipe();
        let mut frames = Frames::new(Pollable::new(r, Interest::READABLE).unwrap());
        let big = vec![b'x'; 3 << 20]; // larger than the buffer and the pipe
        let writer = std::thread::spawn(move || {
            w.write_all(b"m 1 2\n{}o 2 ").unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
            w.write_all(format!("{}\n", big.len()).as_bytes()).unwrap();
            for part in big.chunks(100_000) {
                w.write_all(part).unwrap();
            }
            w.write_all(b"e 3 0\n").unwrap();
        });
        let f = frames.next_frame().await.unwrap().unwrap().unwrap();
        assert_eq!(
            (f.kind, f.sync, f.payload.as_slice()),
            (b'm', 1, &b"{}"[..])
        );
        let f = frames.next_frame().await.unwrap().unwrap().unwrap();
        assert_eq!((f.kind, f.sync, f.payload.len()), (b'o', 2, 3 << 20));
        assert!(f.payload.iter().all(|&b| b == b'x'));
        let f = frames.next_frame().await.unwrap().unwrap().unwrap();
        assert_eq!((f.kind, f.sync, f.payload.len()), (b'e', 3, 0));
        writer.join().unwrap();
        assert!(
            frames.next_frame().await.unwrap().is_none(),
            "end of stream"
        );
    }

    #[tokio::test]
    async fn bad_headers_are_errors_and_a_cut_payload_is_unexpected_eof() {
        let (r, mut w) = pipe();
        let mut frames = Frames::new(Pollable::new(r, Interest::READABLE).unwrap());
        w.write_all(b"q 1 2\n").unwrap();
        let e = frames.next_frame().await.unwrap().unwrap().unwrap_err();
        assert_eq!(e.reason, "unknown kind");
        w.write_all(&[b'a'; 200]).unwrap();
        let e = frames.next_frame().await.unwrap().unwrap().unwrap_err();
        assert_eq!(e.reason, "header too long");

        let (r, mut w) = pipe();
        let mut frames = Frames::new(Pollable::new(r, Interest::READABLE).unwrap());
        w.write_all(b"o 1 10\nabc").unwrap();
        drop(w);
        let e = frames.next_frame().await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn pieces_keep_sentinels_in_place_and_end_with_the_stream() {
        let (r, mut w) = pipe();
        let (tx, mut rx) = mpsc::channel(8);
        spawn_pieces("test", Source::Fd(r), "abc".into(), tx).unwrap();
        w.write_all(b"one\x1b]5151;abc;7\x07two").unwrap();
        drop(w);
        let mut got = Vec::new();
        while let Some(p) = rx.recv().await {
            got.push(p);
        }
        let data: Vec<u8> = got
            .iter()
            .filter_map(|p| match p {
                Piece::Data(d) => Some(d.clone()),
                Piece::Sentinel(_) => None,
            })
            .flatten()
            .collect();
        assert_eq!(data, b"onetwo");
        let at = got
            .iter()
            .position(|p| *p == Piece::Sentinel(7))
            .expect("the sentinel");
        assert!(matches!(&got[at - 1], Piece::Data(d) if d.ends_with(b"one")));
    }
}
