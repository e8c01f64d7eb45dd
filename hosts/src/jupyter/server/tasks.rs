//! The tasks that serve the sockets: iopub (and its welcomes), heartbeat, the shell reader and
//! its worker, control, stdin, and the watcher of output that other clients caused.

use super::*;

pub(super) async fn iopub_task(
    server: Arc<Server>,
    mut xpub: XPubSocket,
    mut rx: mpsc::Receiver<ZmqMessage>,
) {
    loop {
        tokio::select! {
            biased;
            sub = xpub.recv() => match sub {
                Ok(m) => {
                    let Some(frame) = m.get(0) else { continue };
                    // 1 + topic subscribes, 0 + topic unsubscribes.
                    if frame.first() == Some(&1) {
                        let topic = String::from_utf8_lossy(&frame[1..]).into_owned();
                        let welcome = server.wire.build(
                            vec![Bytes::copy_from_slice(&frame[1..])],
                            "iopub_welcome",
                            &wire::no_parent(),
                            &IoPubWelcome { subscription: topic },
                        );
                        if let Err(e) = xpub.send(welcome).await {
                            tracing::debug!(error = %e, "iopub_welcome not sent");
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "iopub receive");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            },
            msg = rx.recv() => match msg {
                Some(m) => {
                    if let Err(e) = xpub.send(m).await {
                        tracing::debug!(error = %e, "iopub send");
                    }
                }
                None => return,
            },
        }
    }
}

pub(super) async fn heartbeat_task(mut hb: RepSocket) {
    loop {
        match hb.recv().await {
            Ok(m) => {
                if let Err(e) = hb.send(m).await {
                    tracing::debug!(error = %e, "heartbeat send");
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "heartbeat receive");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// Receive and verify one message; bad ones are logged (never with the key) and dropped.
async fn recv_request(server: &Server, rx: &mut RouterRecvHalf, what: &str) -> Option<Request> {
    match rx.recv().await {
        Ok(m) => match wire::parse(m, &server.signer) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(channel = what, error = %e, "message dropped");
                None
            }
        },
        Err(e) => {
            tracing::debug!(channel = what, error = %e, "receive failed");
            tokio::time::sleep(Duration::from_millis(5)).await;
            None
        }
    }
}

pub(super) async fn shell_reader(
    server: Arc<Server>,
    mut rx: RouterRecvHalf,
    queue: mpsc::UnboundedSender<Request>,
) {
    loop {
        if let Some(req) = recv_request(&server, &mut rx, "shell").await {
            if queue.send(req).is_err() {
                return;
            }
        }
    }
}

pub(super) async fn shell_worker(server: Arc<Server>, mut queue: mpsc::UnboundedReceiver<Request>) {
    // Requests drained from the queue after a failed execution, with whether to abort them.
    let mut pending: VecDeque<(Request, bool)> = VecDeque::new();
    loop {
        let (req, abort) = match pending.pop_front() {
            Some(p) => p,
            None => match queue.recv().await {
                Some(r) => (r, false),
                None => return,
            },
        };
        let is_exec = matches!(req.content, Ok(JupyterMessageContent::ExecuteRequest(_)));
        if !is_exec {
            server.handle(Chan::Shell, req).await;
            continue;
        }
        let failed = crate::jupyter::execute::execute(&server, &req, abort).await;
        if failed {
            // stop_on_error: abort the executions already queued behind this one.
            while let Ok(r) = queue.try_recv() {
                pending.push_back((r, true));
            }
            for p in pending.iter_mut() {
                p.1 = true;
            }
        }
    }
}

pub(super) async fn control_task(server: Arc<Server>, mut rx: RouterRecvHalf) {
    loop {
        let Some(req) = recv_request(&server, &mut rx, "control").await else {
            continue;
        };
        if matches!(req.content, Ok(JupyterMessageContent::InterruptRequest(_))) {
            // Inline, so an interrupt is never stuck behind a slower control request.
            server.handle(Chan::Control, req).await;
        } else {
            let s = server.clone();
            tokio::spawn(async move { s.handle(Chan::Control, req).await });
        }
    }
}

pub(super) async fn stdin_task(server: Arc<Server>, mut rx: RouterRecvHalf) {
    loop {
        let Some(req) = recv_request(&server, &mut rx, "stdin").await else {
            continue;
        };
        match req.content {
            Ok(JupyterMessageContent::InputReply(r)) => {
                let Some(s) = server.session_now() else {
                    continue;
                };
                if let Err(e) = s.input_reply(&r.value) {
                    tracing::info!(error = %e, "input_reply not delivered");
                }
            }
            _ => tracing::debug!(msg_type = %req.msg_type, "unexpected stdin message ignored"),
        }
    }
}

/// Publish what the session produced that this server's own executions did not ask for.
pub(super) async fn watch_task(server: Arc<Server>) {
    use tokio::sync::broadcast::error::RecvError;
    let owned = matches!(server.owner, Owner::Kernel { .. });
    let mut slot_rx = server.slot_tx.subscribe();
    let mut busy_rx = server.own_busy.subscribe();
    loop {
        let session = {
            let got = slot_rx.wait_for(Option::is_some).await;
            match got {
                Ok(v) => match &*v {
                    Some(Ok(s)) => Some(s.clone()),
                    _ => None,
                },
                Err(_) => return,
            }
        };
        let Some(session) = session else {
            if slot_rx.changed().await.is_err() {
                return;
            }
            continue;
        };
        if owned && busy_rx.wait_for(|b| !*b).await.is_err() {
            return;
        }
        let mut rx = session.subscribe();
        slot_rx.borrow_and_update();
        busy_rx.borrow_and_update();
        let mut foreign: HashMap<String, crate::jupyter::execute::Mapper> = HashMap::new();
        loop {
            tokio::select! {
                r = rx.recv() => match r {
                    Ok(chunk) => server.on_watched(chunk, &mut foreign).await,
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "fell behind the session's output; chunks lost for watchers");
                    }
                    Err(RecvError::Closed) => break,
                },
                c = slot_rx.changed() => {
                    if c.is_err() { return; }
                    break;
                }
                c = busy_rx.changed(), if owned => {
                    if c.is_err() { return; }
                    if *busy_rx.borrow_and_update() {
                        break; // resubscribe once our execution is over
                    }
                }
            }
        }
    }
}

impl Server {
    async fn on_watched(
        &self,
        chunk: spindle_protocol::Chunk,
        foreign: &mut HashMap<String, crate::jupyter::execute::Mapper>,
    ) {
        use spindle_protocol::{Body, StatusFormat};
        if chunk.request.is_empty() {
            // Printed between executions: attribute it to the latest request.
            let parent = self.last_parent.lock().expect("parent").clone();
            let mut m = crate::jupyter::execute::Mapper::new(parent, false);
            m.on_chunk(self, chunk).await;
            return;
        }
        if self.is_ours(&chunk.request) {
            return;
        }
        let finished = chunk.is_finished();
        let id = chunk.request.clone();
        let m = foreign.entry(id.clone()).or_insert_with(|| {
            crate::jupyter::execute::Mapper::new(foreign_parent(self, &id), false)
        });
        if matches!(
            chunk.body,
            Body::Status {
                format: StatusFormat::Started,
                ..
            }
        ) {
            self.status(&m.parent, ExecutionState::Busy).await;
        }
        m.on_chunk(self, chunk).await;
        if finished {
            let parent = m.parent.clone();
            foreign.remove(&id);
            self.status(&parent, ExecutionState::Idle).await;
        }
    }
}

/// A parent header standing for an execution another client started.
fn foreign_parent(server: &Server, request: &str) -> Bytes {
    let h = json!({
        "msg_id": request,
        "msg_type": "execute_request",
        "session": format!("spindle-native-{}", server.wire.session()),
        "username": "spindle",
        "date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "version": wire::PROTOCOL_VERSION,
    });
    Bytes::from(serde_json::to_vec(&h).unwrap_or_else(|_| b"{}".to_vec()))
}
