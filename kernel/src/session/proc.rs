//! The process and its streams: readers for the PTY, stderr and events, the writers for the
//! terminal and for requests (tasks on the runtime, see [`pipes`]), and a waiter thread.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::{pipes, Inner, DRAIN_LIMIT};
use crate::error::KernelError;
use crate::frames::{Frame, Piece, Utf8Decoder};
use crate::language::{LaunchContext, Outbound};
use crate::launcher::{make_run_dir, write_private, ExitInfo, LaunchRequest, ProcessControl};
use crate::options::{KernelConfig, SessionSpec};

pub(super) enum EvtItem {
    Frame(Frame),
    Bad(String),
}

pub(super) struct Proc {
    pub(super) control: Arc<dyn ProcessControl>,
    pub(super) pty_rx: mpsc::Receiver<Piece>,
    pub(super) err_rx: mpsc::Receiver<Piece>,
    pub(super) evt_rx: mpsc::Receiver<EvtItem>,
    pub(super) exit_rx: oneshot::Receiver<ExitInfo>,
    pub(super) pty_seen: u64,
    pub(super) err_seen: u64,
    /// The highest `sync` of the frames handled so far. A stream whose latest sentinel is newer
    /// is paused: what follows the sentinel was written after the frame it announces.
    pub(super) handled: u64,
    /// When a stream was paused behind a sentinel (to give up waiting after `HOLD_LIMIT`).
    pub(super) paused_at: Option<tokio::time::Instant>,
    pub(super) pty_open: bool,
    pub(super) err_open: bool,
    pub(super) evt_open: bool,
    pub(super) exited: Option<ExitInfo>,
    pub(super) drain_deadline: Option<tokio::time::Instant>,
    pub(super) held: Option<(Frame, tokio::time::Instant)>,
    pub(super) dec_pty: Utf8Decoder,
    pub(super) dec_err: Utf8Decoder,
    pub(super) dec_out: Utf8Decoder,
    pub(super) dec_errf: Utf8Decoder,
    pub(super) run_dir: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.control.kill_all();
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

impl Proc {
    pub(super) async fn start(
        inner: &Arc<Inner>,
        spec: &SessionSpec,
        config: &KernelConfig,
    ) -> Result<Proc, KernelError> {
        let language = inner.language.name().to_string();
        let run_dir = make_run_dir()?;
        let launch = match inner.language.launch(&LaunchContext {
            run_dir: run_dir.clone(),
            env: spec.env.clone(),
        }) {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&run_dir);
                return Err(e.into());
            }
        };
        let nonce = format!("{:016x}", rand::random::<u64>());
        let launcher = spec
            .launcher
            .clone()
            .unwrap_or_else(|| config.launcher.clone());
        let request = LaunchRequest {
            language: language.clone(),
            spec: launch,
            run_dir: run_dir.clone(),
            cwd: spec.cwd.clone(),
            env: spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            nonce: nonce.clone(),
            session_id: inner.id.clone(),
            pty_size: config.pty_size,
        };
        // A launcher may block (a container engine); keep it off the runtime's threads.
        let spawned = tokio::task::spawn_blocking(move || launcher.launch(request))
            .await
            .unwrap_or_else(|e| {
                Err(KernelError::StartFailed {
                    language: language.clone(),
                    detail: format!("the launcher panicked: {e}"),
                })
            });
        let spawned = match spawned {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&run_dir);
                return Err(e);
            }
        };
        let (pty_tx, pty_rx) = mpsc::channel(64);
        let (err_tx, err_rx) = mpsc::channel(64);
        // Event frames are up to 1 MiB each: a short queue bounds what a flood holds here.
        let (evt_tx, evt_rx) = mpsc::channel(4);
        let (exit_tx, exit_rx) = oneshot::channel();
        pipes::spawn_pieces("pty", spawned.pty_reader, nonce.clone(), pty_tx)?;
        pipes::spawn_pieces("stderr", spawned.err_reader, nonce, err_tx)?;
        pipes::spawn_events(spawned.evt_reader, evt_tx)?;
        let wait = spawned.wait;
        std::thread::Builder::new()
            .name("spindle-wait".into())
            .spawn(move || {
                let _ = exit_tx.send(wait());
            })?;
        // Writers: one for the terminal, one task for requests (files, FIFO, then any terminal
        // bytes, in that order).
        let (term_tx, term_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        pipes::spawn_writer("stdin", spawned.pty_writer, term_rx)?;
        let (req_tx, mut req_rx) = mpsc::unbounded_channel::<Outbound>();
        let open_requests = spawned.open_requests;
        let dir = run_dir.clone();
        let term_for_req = term_tx.clone();
        tokio::spawn(async move {
            let mut open = Some(open_requests);
            let mut fifo: Option<pipes::Opened> = None;
            while let Some(out) = req_rx.recv().await {
                for (name, bytes) in &out.files {
                    if let Err(e) = write_private(&dir.join(name), bytes) {
                        tracing::warn!(error = %e, file = name, "cannot write request file");
                    }
                }
                if !out.fifo.is_empty() {
                    if fifo.is_none() {
                        match open.take().map(|f| f().and_then(pipes::Opened::open)) {
                            Some(Ok(w)) => fifo = Some(w),
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "cannot open the request stream");
                                break;
                            }
                            None => break,
                        }
                    }
                    let w = fifo.as_ref().expect("opened above");
                    if w.write_all(&out.fifo).await.is_err() {
                        break;
                    }
                }
                if !out.pty.is_empty() && term_for_req.send(out.pty).is_err() {
                    break;
                }
            }
        });

        let mut proc = Proc {
            control: spawned.control,
            pty_rx,
            err_rx,
            evt_rx,
            exit_rx,
            pty_seen: 0,
            err_seen: 0,
            handled: 0,
            paused_at: None,
            pty_open: true,
            err_open: true,
            evt_open: true,
            exited: None,
            drain_deadline: None,
            held: None,
            dec_pty: Utf8Decoder::default(),
            dec_err: Utf8Decoder::default(),
            dec_out: Utf8Decoder::default(),
            dec_errf: Utf8Decoder::default(),
            run_dir,
        };
        let version = proc.await_ready(&language, config.start_timeout).await?;
        let mut s = inner.shared.lock().expect("session state");
        s.pid = proc.control.pid();
        s.control = Some(proc.control.clone());
        drop(term_tx);
        s.req_tx = Some(req_tx);
        s.input_pending = false;
        s.starts += 1;
        if version.is_some() {
            s.language_version = version;
        }
        Ok(proc)
    }

    /// Wait for `ready`; on failure, report what the child wrote to stderr.
    async fn await_ready(
        &mut self,
        language: &str,
        limit: Duration,
    ) -> Result<Option<String>, KernelError> {
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(deadline);
        let mut stderr = Vec::new();
        let mut exited: Option<ExitInfo> = None;
        let fail = |why: String, stderr: &[u8]| {
            let text = String::from_utf8_lossy(stderr);
            let text = text.trim();
            let tail: String = {
                let chars: Vec<char> = text.chars().collect();
                chars[chars.len().saturating_sub(2000)..].iter().collect()
            };
            KernelError::StartFailed {
                language: language.to_string(),
                detail: if tail.is_empty() {
                    why
                } else {
                    format!("{why}; it wrote:\n{tail}")
                },
            }
        };
        loop {
            tokio::select! {
                item = self.evt_rx.recv() => {
                  if let Some(EvtItem::Frame(f)) = &item {
                      // Frames before `ready` still release the streams behind their sentinels.
                      self.handled = self.handled.max(f.sync);
                  }
                  match item {
                    Some(EvtItem::Frame(f)) if f.kind == b'm' => {
                        if let Ok(v) = serde_json::from_slice::<Value>(&f.payload) {
                            if v["type"] == "ready" {
                                return Ok(v["language_version"].as_str().map(str::to_string));
                            }
                        }
                    }
                    Some(EvtItem::Frame(f)) if f.kind == b'e' => stderr.extend_from_slice(&f.payload),
                    Some(EvtItem::Frame(_)) => {}
                    Some(EvtItem::Bad(e)) => return Err(fail(format!("protocol error: {e}"), &stderr)),
                    None => {
                        // Events closed: the process is gone. Collect its last stderr.
                        while let Ok(Some(p)) = tokio::time::timeout(DRAIN_LIMIT, self.err_rx.recv()).await {
                            if let Piece::Data(d) = p { stderr.extend_from_slice(&d) }
                        }
                        let how = match exited.take() {
                            Some(e) => e.to_string(),
                            None => match tokio::time::timeout(DRAIN_LIMIT, &mut self.exit_rx).await {
                                Ok(Ok(e)) => e.to_string(),
                                _ => "ended".to_string(),
                            },
                        };
                        return Err(fail(format!("the process {how} before it was ready"), &stderr));
                    }
                  }
                },
                piece = self.err_rx.recv(), if self.err_open => match piece {
                    Some(Piece::Data(d)) => stderr.extend_from_slice(&d),
                    Some(Piece::Sentinel(_)) => {}
                    None => self.err_open = false,
                },
                piece = self.pty_rx.recv(), if self.pty_open => match piece {
                    Some(Piece::Data(d)) => tracing::trace!(bytes = d.len(), "terminal output before ready"),
                    Some(Piece::Sentinel(n)) => self.pty_seen = n,
                    None => self.pty_open = false,
                },
                e = &mut self.exit_rx, if exited.is_none() => {
                    exited = Some(e.unwrap_or_default());
                }
                _ = &mut deadline => {
                    self.control.kill_all();
                    return Err(fail(format!("no ready signal within {} s", limit.as_secs_f64()), &stderr));
                }
            }
        }
    }

    /// Whether `frame` may be handled now: its sentinels have come through (or cannot come).
    pub(super) fn synced(&self, sync: u64) -> bool {
        (!self.pty_open || self.pty_seen >= sync) && (!self.err_open || self.err_seen >= sync)
    }

    /// Whether the PTY (or stderr) may be read: not paused behind a sentinel whose frame is
    /// still to come. With the event stream gone no frame will come, so nothing pauses.
    pub(super) fn readable(&self, seen: u64) -> bool {
        seen <= self.handled || !self.evt_open
    }
}
