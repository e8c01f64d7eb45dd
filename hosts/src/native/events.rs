//! Events on the PUB socket: one relay task per session turns its chunks into signed `chunk`
//! events under the session id as topic, and says how much a subscriber missed instead of
//! letting buffers grow. Also [`replay`]: a session's log, from a `seq` on, as replies to one
//! client.
//!
//! Every buffer between a session and a subscriber counts bytes: the session's log (its
//! `--replay-log` budget; the relay is only a cursor into it, see
//! `spindle_kernel::session::Watcher`) and the event budget (ZeroMQ's PUB keeps a queue per
//! subscriber; the budget caps what all of them together can pin). So whatever subscribers do,
//! the host holds at most those budgets plus a chunk in flight per relay.
//!
//! Two things can make events go missing, and both become a `missed` event with the count
//! just before the next chunk published: the log dropping chunks before the relay read them,
//! and the event budget staying full because some subscriber stopped reading. In the second
//! case the relay skips to the newest chunk (everything it skipped counts as missed), so a
//! subscriber that comes back gets current chunks after at most the event budget of old ones.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use spindle_kernel::session::{Watched, Watcher};
use spindle_kernel::Session;
use spindle_protocol::native::{Event, Reply, ReplyBody};
use spindle_protocol::Chunk;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use zeromq::{PubSocket, Socket, SocketEvent, SocketSend, ZmqMessage};

use crate::auth::Signer;
use crate::native::wire::{Budget, ChunkMsg, Client, JsonSize, Sent, Wait};

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
    pub async fn publish<T: Serialize + JsonSize>(
        &self,
        topic: &str,
        event: &T,
        wait: Wait,
    ) -> bool {
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
    rx: Watcher,
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
    async fn run(mut self, mut rx: Watcher, mut stop: oneshot::Receiver<String>) {
        loop {
            tokio::select! {
                biased;
                reason = &mut stop => {
                    let reason = reason.unwrap_or_else(|_| "the session was closed".into());
                    // Whatever the session said while closing is already in its log.
                    while let Some(item) = rx.try_next() {
                        match item {
                            Watched::Chunk(chunk) => self.forward(&chunk, &mut rx).await,
                            Watched::Missed(n) => self.missed += n,
                        }
                    }
                    self.degraded = false;
                    self.flush_missed(Wait::Upto(Duration::from_secs(1))).await;
                    let closed = Event::Closed { session: self.session.clone(), reason };
                    self.events.publish(&self.session, &closed, Wait::Upto(Duration::from_secs(1))).await;
                    return;
                }
                item = rx.next() => match item {
                    Some(Watched::Chunk(chunk)) => self.forward(&chunk, &mut rx).await,
                    Some(Watched::Missed(n)) => {
                        tracing::debug!(session = %self.session, missed = n, "event relay fell behind the session's log");
                        self.missed += n;
                    }
                    None => return,
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

    /// Publish the `missed` count, if any. Only a published chunk ends the degraded state: a
    /// small `missed` event can fit where chunks do not.
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
            true
        } else {
            self.degraded = true;
            false
        }
    }

    /// The budget is full: this chunk and everything the log holds unread are missed; go on
    /// with the newest.
    fn give_up(&mut self, rx: &mut Watcher) {
        self.degraded = true;
        self.missed += 1 + rx.skip_to_end();
    }

    async fn forward(&mut self, chunk: &Chunk, rx: &mut Watcher) {
        if !self.events.anyone_listening() {
            // Nobody to tell, and nobody who will have missed it.
            self.missed = 0;
            rx.skip_to_end();
            return;
        }
        // A gap is reported before anything that follows it.
        if !self.flush_missed(self.wait()).await {
            return self.give_up(rx);
        }
        // Serialised from the log's chunk, not a copy of it.
        let ev = ChunkMsg {
            id: None,
            chunk: Cow::Borrowed(chunk),
        };
        let published = self.events.publish(&self.session, &ev, self.wait()).await;
        if published {
            self.degraded = false;
        } else {
            self.give_up(rx);
        }
    }
}

/// What a `replay` request asked for.
#[derive(Debug, Clone, Copy)]
pub struct ReplayHow {
    pub from_seq: u64,
    pub follow: bool,
    /// Console text in a third frame (`text_frames`).
    pub text_frames: bool,
}

/// Send `session`'s chunks from `from_seq` on to `client` as replies to request `id` (see
/// `RequestBody::Replay`). The replay waits for the client's budget as an execution's stream
/// does; while it waits, only the session's log holds the chunks, so a client that reads too
/// slowly gets a `missed` reply where the log dropped some, never a backlog in the host.
pub async fn replay(client: Arc<Client>, id: String, session: Session, how: ReplayHow) {
    let ReplayHow {
        from_seq,
        follow,
        text_frames,
    } = how;
    let sid = session.id().to_string();
    let mut rx = session.replay(from_seq);
    // Chunks up to here are the past; after them, live ones until the running execution ends.
    let past_end = session.log_stats().next_seq;
    let mut last_finished = false;
    let reply = |body| Reply {
        id: Some(id.clone()),
        body,
    };
    loop {
        let caught_up = rx.next_seq() >= past_end;
        let item = if !caught_up {
            match rx.next().await {
                Some(item) => item,
                None => break,
            }
        } else if !follow || last_finished {
            break;
        } else if !session_running(&session) {
            // Nothing runs: what the last execution said is in the log already (a session is
            // idle only after its finished chunk went out); send it, then stop.
            match rx.try_next() {
                Some(item) => item,
                None => break,
            }
        } else {
            // Live: wait for the next chunk, but notice a session that goes quiet or away.
            match tokio::time::timeout(PATIENCE * 10, rx.next()).await {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(_) => continue,
            }
        };
        let sent = match item {
            Watched::Chunk(chunk) => {
                last_finished = chunk.is_finished();
                client
                    .send_chunk(&id, &chunk, text_frames, Wait::Upto(client.patience))
                    .await
            }
            Watched::Missed(count) => {
                let body = ReplyBody::Missed {
                    session: sid.clone(),
                    count,
                };
                client.send(&reply(body), Wait::Upto(client.patience)).await
            }
        };
        match sent {
            Sent::Yes => {}
            Sent::Stalled => {
                // Counted as missed, like an execution's stream; the client can replay again.
                let n = 1 + rx.skip_to_end();
                let note = ReplyBody::Missed {
                    session: sid.clone(),
                    count: n,
                };
                if client.send(&reply(note), Wait::Upto(client.patience)).await != Sent::Yes {
                    return;
                }
            }
            Sent::Gone => return,
        }
    }
    let done = ReplyBody::Replayed {
        session: sid,
        next_seq: rx.next_seq(),
    };
    client.send(&reply(done), Wait::Upto(client.patience)).await;
}

/// Whether an execution (or a query) is running or queued.
fn session_running(session: &Session) -> bool {
    let info = session.info();
    info.state == spindle_protocol::SessionState::Busy || info.queued > 0
}
