//! Events on the PUB socket: one relay task per session turns its chunk broadcast into signed
//! `chunk` events under the session id as topic, and says how much a subscriber missed instead
//! of letting buffers grow.
//!
//! Two things can make events go missing, and both become a `missed` event with the count:
//! the relay itself falling behind the session's broadcast (`RecvError::Lagged`), and the event
//! budget staying full because some subscriber stopped reading (ZeroMQ's PUB keeps a queue per
//! subscriber; the budget caps what all of them together can pin).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use spindle_protocol::native::Event;
use spindle_protocol::Chunk;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use zeromq::{PubSocket, Socket, SocketEvent, SocketSend, ZmqMessage};

use crate::auth::Signer;
use crate::native::wire::{Budget, Wait};

/// How long a relay waits for event budget before it starts counting chunks as missed.
const PATIENCE: Duration = Duration::from_millis(100);

/// The publishing side, shared by every relay.
#[derive(Debug, Clone)]
pub struct Events {
    tx: mpsc::Sender<ZmqMessage>,
    budget: Budget,
    signer: Signer,
    /// SUB connections; with none, relays skip the work of publishing.
    peers: Arc<AtomicUsize>,
}

impl Events {
    /// Start the task that owns the PUB socket.
    pub fn start(mut socket: PubSocket, budget: usize, signer: Signer) -> (Self, JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<ZmqMessage>(1024);
        let peers = Arc::new(AtomicUsize::new(0));
        let mut monitor = socket.monitor();
        let count = peers.clone();
        tokio::spawn(async move {
            // A set, not a counter: a peer can be reported gone twice.
            let mut connected = HashSet::new();
            while let Some(ev) = monitor.next().await {
                match ev {
                    SocketEvent::Accepted(_, peer) => {
                        connected.insert(peer);
                    }
                    SocketEvent::Disconnected(peer) => {
                        connected.remove(&peer);
                    }
                    _ => {}
                }
                count.store(connected.len(), Ordering::SeqCst);
            }
        });
        let task = tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                // PUB never waits for subscribers (it drops for a full one), so this is quick.
                if let Err(e) = socket.send(msg).await {
                    tracing::debug!(error = %e, "event not published");
                }
            }
        });
        (
            Self {
                tx,
                budget: Budget::new(budget),
                signer,
                peers,
            },
            task,
        )
    }

    /// Whether any SUB socket is connected at all.
    pub fn anyone_listening(&self) -> bool {
        self.peers.load(Ordering::SeqCst) > 0
    }

    /// Publish one event under `topic`; false when it could not be (budget full, or stopping).
    pub async fn publish(&self, topic: &str, event: &Event, wait: Wait) -> bool {
        let Some([sig, body]) = self.budget.frames(&self.signer, event, wait).await else {
            return false;
        };
        let topic = Bytes::copy_from_slice(topic.as_bytes());
        match ZmqMessage::try_from(vec![topic, sig, body]) {
            Ok(msg) => self.tx.send(msg).await.is_ok(),
            Err(_) => false,
        }
    }
}

/// Relays one session's chunks until told to stop (with the reason its session closed).
pub fn spawn_relay(
    events: Events,
    session: String,
    rx: broadcast::Receiver<Chunk>,
    stop: oneshot::Receiver<String>,
) -> JoinHandle<()> {
    tokio::spawn(
        Relay {
            events,
            session,
            missed: 0,
            degraded: false,
        }
        .run(rx, stop),
    )
}

struct Relay {
    events: Events,
    session: String,
    /// Chunks not published since the last `missed` event.
    missed: u64,
    /// The budget was found full: do not wait for it again until a publish succeeds, so a stuck
    /// subscriber costs the relay nothing but the count.
    degraded: bool,
}

impl Relay {
    async fn run(
        mut self,
        mut rx: broadcast::Receiver<Chunk>,
        mut stop: oneshot::Receiver<String>,
    ) {
        loop {
            tokio::select! {
                biased;
                reason = &mut stop => {
                    let reason = reason.unwrap_or_else(|_| "the session was closed".into());
                    // Whatever the session said while closing is already in the channel.
                    loop {
                        match rx.try_recv() {
                            Ok(chunk) => self.forward(chunk).await,
                            Err(broadcast::error::TryRecvError::Lagged(n)) => self.missed += n,
                            Err(_) => break,
                        }
                    }
                    self.degraded = false;
                    self.flush_missed(Wait::Upto(Duration::from_secs(1))).await;
                    let closed = Event::Closed { session: self.session.clone(), reason };
                    self.events.publish(&self.session, &closed, Wait::Upto(Duration::from_secs(1))).await;
                    return;
                }
                r = rx.recv() => match r {
                    Ok(chunk) => self.forward(chunk).await,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(session = %self.session, missed = n, "event relay lagged");
                        self.missed += n;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tokio::time::sleep(PATIENCE), if self.missed > 0 => {
                    // Report a gap even when the session has gone quiet.
                    self.flush_missed(Wait::No).await;
                }
            }
        }
    }

    fn wait(&self) -> Wait {
        if self.degraded {
            Wait::No
        } else {
            Wait::Upto(PATIENCE)
        }
    }

    async fn flush_missed(&mut self, wait: Wait) -> bool {
        if self.missed == 0 {
            return true;
        }
        let ev = Event::Missed {
            session: self.session.clone(),
            count: self.missed,
        };
        if self.events.publish(&self.session, &ev, wait).await {
            self.missed = 0;
            self.degraded = false;
            true
        } else {
            self.degraded = true;
            false
        }
    }

    async fn forward(&mut self, chunk: Chunk) {
        if !self.events.anyone_listening() {
            // Nobody to tell, and nobody who will have missed it.
            self.missed = 0;
            return;
        }
        // A gap is reported before anything that follows it.
        if !self.flush_missed(self.wait()).await {
            self.missed += 1;
            return;
        }
        let ev = Event::Chunk { chunk };
        if self.events.publish(&self.session, &ev, self.wait()).await {
            self.degraded = false;
        } else {
            self.degraded = true;
            self.missed += 1;
        }
    }
}
