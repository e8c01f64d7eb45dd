//! The native `chat` request: a whole task of the LLM loop ([`spindle_llm::Agent`]) in a
//! conversation whose sessions live in the host's kernel.
//!
//! - A conversation is created by its first `chat` and lives until the host stops. It has one
//!   session per language, started on first use and named `<conversation>-<language>`, so
//!   `list_sessions` shows it and it can be watched, attached and used like any other.
//! - Every item the loop makes goes, in order, to the requester (`item` replies, with `missed`
//!   counts for a client that reads too slowly, as for chunks) and to subscribers (`item` events
//!   under the conversation id and under each of its session ids as topic).
//! - Confirmation is a request/reply pair: the host sends the `confirm` (or `input`) item and
//!   waits for a `chat_reply` naming its call, for the host's confirm timeout at most (then the
//!   run counts as skipped, and a notice item says so). The waiting ends live in [`Pending`]: a
//!   oneshot channel per (conversation, call), opened by whichever comes first of the item
//!   leaving for the client and the loop starting to wait, so an answer can never arrive
//!   before its slot exists.
//! - `chat_cancel` is Ctrl-C: it cancels the chat's token, and the loop cuts the model's stream
//!   or interrupts the run.
//!
//! The API key comes from the host's environment or config file only, and is not sent to an
//! endpoint other than the host's own (a request may name another `base_url`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use dashmap::DashMap;
use futures::future::BoxFuture;
use futures::StreamExt;
use spindle_kernel::{ExecOptions, Session};
use spindle_llm::config::ConfigError;
use spindle_llm::{
    Agent, ChatConfig, Decision, Operator, Overrides, Provider, RunError, RunStream, Runner, Secret,
};
use spindle_protocol::conversation::{Item, ItemBody};
use spindle_protocol::native::{
    Chat, ChatDecision, ConversationInfo, CreateSession, ErrorCode, Event, Reply, ReplyBody,
};
use tokio::sync::{mpsc, oneshot, OwnedMutexGuard};
use tokio_util::sync::CancellationToken;

use crate::native::events::Events;
use crate::native::host::{Failure, Host, FINAL_PATIENCE};
use crate::native::wire::{Client, Sent, Wait};

/// Longest conversation id accepted (its sessions' names add `-language`).
const MAX_CONVERSATION_BYTES: usize = 200;
/// How long publishing an item waits for event budget before counting it as missed.
const EVENT_PATIENCE: Duration = Duration::from_millis(100);
/// Items the loop may have made that are not delivered yet: a few, as the run's own chunks are
/// already queued in its execution (a slow requester slows the run, within its patience).
const ITEM_QUEUE: usize = 16;

/// Every conversation of the host, and the answers they wait for.
pub struct Chats {
    convs: DashMap<String, Arc<Conversation>>,
    pending: Arc<Pending>,
    /// How long a `confirm` or `input` item waits for its `chat_reply`.
    patience: Duration,
}

struct Conversation {
    id: String,
    /// Held by the chat in flight: a second chat finds it locked and is refused.
    agent: Arc<tokio::sync::Mutex<Option<Agent>>>,
    /// The token of the chat in flight.
    running: Mutex<Option<CancellationToken>>,
    runner: Arc<HostRunner>,
    /// The `seq` of the next item.
    items: AtomicU64,
}

impl Conversation {
    /// Topics its items are published under: the conversation id, then its session ids.
    fn topics(&self) -> Vec<String> {
        let mut topics = vec![self.id.clone()];
        topics.extend(
            self.runner
                .sessions
                .lock()
                .expect("sessions")
                .iter()
                .map(|(_, id)| id.clone()),
        );
        topics
    }

    fn info(&self, host: &Host) -> ConversationInfo {
        let ids: Vec<String> = self.topics().into_iter().skip(1).collect();
        ConversationInfo {
            id: self.id.clone(),
            busy: self.running.lock().expect("running").is_some(),
            items: self.items.load(Ordering::SeqCst),
            sessions: ids.iter().filter_map(|id| host.session_info(id)).collect(),
        }
    }
}

impl Chats {
    pub fn new(patience: Duration) -> Self {
        Self {
            convs: DashMap::new(),
            pending: Arc::new(Pending::default()),
            patience,
        }
    }

    /// Whether a conversation has this id.
    pub fn contains(&self, id: &str) -> bool {
        self.convs.contains_key(id)
    }

    /// Answer a pending `confirm` or `input` item.
    pub fn reply(
        &self,
        conversation: &str,
        call: &str,
        decision: Option<ChatDecision>,
        code: Option<String>,
        input: Option<String>,
    ) -> Result<ReplyBody, Failure> {
        if !self.contains(conversation) {
            return Err(unknown(conversation));
        }
        self.pending
            .answer(conversation, call, decision, code, input)
            .map(|_| ReplyBody::Ok)
    }

    /// Cancel the conversation's chat in flight, if any.
    pub fn cancel(&self, conversation: &str) -> Result<ReplyBody, Failure> {
        let conv = self
            .convs
            .get(conversation)
            .map(|c| c.value().clone())
            .ok_or_else(|| unknown(conversation))?;
        if let Some(token) = conv.running.lock().expect("running").as_ref() {
            tracing::info!(conversation, "chat cancelled on request");
            token.cancel();
        }
        Ok(ReplyBody::Ok)
    }

    /// Stop every chat in flight; whatever waits for an answer gets none.
    pub fn shutdown(&self) {
        for c in self.convs.iter() {
            if let Some(token) = c.running.lock().expect("running").as_ref() {
                token.cancel();
            }
        }
        self.pending.slots.lock().expect("pending").clear();
    }
}

fn unknown(conversation: &str) -> Failure {
    (
        ErrorCode::UnknownConversation,
        format!("no conversation with id {conversation:?} (a chat request starts one)"),
    )
}

/// `watch` of a conversation: the welcome event under its topic, and the reply. `None` when no
/// conversation has this id.
pub async fn watch(host: &Arc<Host>, id: &str, token: String) -> Option<ReplyBody> {
    let conv = host.chats.convs.get(id).map(|c| c.value().clone())?;
    let info = conv.info(host);
    // Published before the reply, as for sessions.
    let ev = Event::Welcome {
        token,
        session: None,
        conversation: Some(info.clone()),
    };
    host.events
        .publish(&conv.id, &ev, Wait::Upto(Duration::from_secs(1)))
        .await;
    Some(ReplyBody::Conversation { conversation: info })
}

/// Handle a `chat` request. What decides whether it may start (its fields, the endpoint's
/// configuration, another chat in flight) is checked here, in request order; the loop runs in
/// its own task.
pub fn start(host: &Arc<Host>, client: Arc<Client>, id: String, c: Chat) {
    match prepare(host, &c) {
        Err(f) => Host::answer(client, id, Err(f)),
        Ok(run) => {
            tokio::spawn(run.go(host.clone(), client, id, c));
        }
    }
}

/// A chat that may start: its conversation, locked for it.
struct Ready {
    conv: Arc<Conversation>,
    agent: OwnedMutexGuard<Option<Agent>>,
    cancel: CancellationToken,
    config: ChatConfig,
}

fn prepare(host: &Arc<Host>, c: &Chat) -> Result<Ready, Failure> {
    let bad = |why: String| (ErrorCode::BadRequest, why);
    if c.conversation.is_empty() || c.conversation.len() > MAX_CONVERSATION_BYTES {
        return Err(bad(format!(
            "a conversation id must be 1 to {MAX_CONVERSATION_BYTES} bytes"
        )));
    }
    if c.message.trim().is_empty() {
        return Err(bad("the message is empty".into()));
    }
    if let Some(t) = c.run_timeout.filter(|t| !(t.is_finite() && *t > 0.0)) {
        return Err(bad(format!(
            "run_timeout must be a positive number of seconds, not {t}"
        )));
    }
    if !host.chats.contains(&c.conversation) && host.session_info(&c.conversation).is_some() {
        return Err((
            ErrorCode::NameTaken,
            format!(
                "{:?} is the id or name of a session; choose another conversation id",
                c.conversation
            ),
        ));
    }
    let config = resolve_config(c)?;
    let conv = host
        .chats
        .convs
        .entry(c.conversation.clone())
        .or_insert_with(|| {
            Arc::new(Conversation {
                id: c.conversation.clone(),
                agent: Arc::new(tokio::sync::Mutex::new(None)),
                running: Mutex::new(None),
                runner: Arc::new(HostRunner {
                    host: Arc::downgrade(host),
                    conversation: c.conversation.clone(),
                    sessions: Mutex::new(Vec::new()),
                    languages: OnceLock::new(),
                }),
                items: AtomicU64::new(0),
            })
        })
        .value()
        .clone();
    let agent = conv.agent.clone().try_lock_owned().map_err(|_| {
        (
            ErrorCode::Busy,
            format!(
                "a chat of conversation {:?} is still in flight; wait for its done item, or send chat_cancel",
                c.conversation
            ),
        )
    })?;
    let cancel = CancellationToken::new();
    *conv.running.lock().expect("running") = Some(cancel.clone());
    Ok(Ready {
        conv,
        agent,
        cancel,
        config,
    })
}

/// The endpoint and loop settings for this request: the host's, with the request's choices.
fn resolve_config(c: &Chat) -> Result<ChatConfig, Failure> {
    let o = Overrides {
        base_url: c.base_url.clone(),
        model: c.model.clone(),
        vision: c.vision,
        stream: c.stream,
        auto_run: Some(c.auto_run),
        max_rounds: c.max_rounds,
        output_budget: c
            .output_budget
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        run_timeout: c.run_timeout,
        tools: c.tools,
        ..Overrides::default()
    };
    let mut config = ChatConfig::resolve(&o).map_err(|e| {
        let code = match e {
            ConfigError::BadUrl { .. } => ErrorCode::BadRequest,
            _ => ErrorCode::NotConfigured,
        };
        (code, e.to_string())
    })?;
    if c.base_url.is_some() {
        // The host's key is for the host's endpoint: a client naming another must not get it.
        let own = ChatConfig::resolve(&Overrides::default())
            .ok()
            .map(|h| h.endpoint.base_url);
        if own.as_deref() != Some(config.endpoint.base_url.as_str()) {
            config.endpoint.api_key = Secret::new(String::new());
        }
    }
    Ok(config)
}

/// Whether `p` talks to the endpoint `config` names, the same way.
fn same_provider(p: &Provider, config: &ChatConfig) -> bool {
    let (e, s) = (p.endpoint(), p.settings());
    let (ce, cs) = (&config.endpoint, &config.provider);
    e.base_url == ce.base_url
        && e.model == ce.model
        && e.api_key == ce.api_key
        && s.stream == cs.stream
        && s.idle_timeout == cs.idle_timeout
        && s.max_retries == cs.max_retries
        && s.backoff == cs.backoff
}

impl Ready {
    async fn go(mut self, host: Arc<Host>, client: Arc<Client>, id: String, c: Chat) {
        let conv = self.conv.clone();
        if let Err(why) = self.set_up_agent(&c) {
            *conv.running.lock().expect("running") = None;
            drop(self.agent);
            Host::answer(client, id, Err((ErrorCode::Failed, why)));
            return;
        }
        tracing::info!(conversation = %conv.id, auto_run = c.auto_run, "chat started");
        let (tx, rx) = mpsc::channel(ITEM_QUEUE);
        let (released_tx, released) = oneshot::channel();
        let delivery = tokio::spawn(deliver(
            rx,
            released,
            ToClient {
                client,
                id,
                conversation: conv.id.clone(),
                missed: 0,
                stalled: false,
                gone: false,
            },
            ToWatchers {
                events: host.events.clone(),
                missed: HashMap::new(),
                degraded: false,
            },
            conv.clone(),
            host.chats.pending.clone(),
        ));
        let op = ApiOperator {
            pending: host.chats.pending.clone(),
            conversation: conv.id.clone(),
            patience: host.chats.patience,
        };
        drop(host);
        let agent = self.agent.as_mut().expect("the agent was set up");
        let reason = agent.send(&c.message, &op, &tx, &self.cancel).await;
        drop(tx);
        // Free the conversation before its done item leaves, so a client that has it can send
        // the next message at once.
        *conv.running.lock().expect("running") = None;
        drop(self.agent);
        let _ = released_tx.send(());
        let _ = delivery.await;
        tracing::info!(conversation = %conv.id, ?reason, "chat done");
    }

    /// The conversation's agent, with this request's settings.
    fn set_up_agent(&mut self, c: &Chat) -> Result<(), String> {
        let runner: Arc<dyn Runner> = self.conv.runner.clone();
        let mut settings = self.config.loop_.clone();
        let provider = |config: &ChatConfig| {
            Provider::new(config.endpoint.clone(), config.provider.clone())
                .map_err(|e| format!("cannot reach the model: {e}"))
        };
        match self.agent.as_mut() {
            None => {
                let mut agent = Agent::new(provider(&self.config)?, runner, settings);
                agent.set_id(self.conv.id.clone());
                *self.agent = Some(agent);
            }
            Some(agent) => {
                // A model found not to take tools stays without them unless asked again.
                if c.tools.is_none() && !agent.settings.tools {
                    settings.tools = false;
                }
                if same_provider(agent.provider(), &self.config) {
                    agent.settings = settings;
                } else {
                    let saved = agent.save();
                    let mut fresh = Agent::new(provider(&self.config)?, runner, settings);
                    fresh.set_id(self.conv.id.clone());
                    fresh.load(saved)?;
                    *agent = fresh;
                }
            }
        }
        Ok(())
    }
}

/// Deliver the loop's items: to subscribers, then to the requester, in order.
async fn deliver(
    mut rx: mpsc::Receiver<Item>,
    released: oneshot::Receiver<()>,
    mut client: ToClient,
    mut watchers: ToWatchers,
    conv: Arc<Conversation>,
    pending: Arc<Pending>,
) {
    let mut released = Some(released);
    while let Some(item) = rx.recv().await {
        conv.items.store(item.seq + 1, Ordering::SeqCst);
        // An item that asks for an answer opens its slot before anyone can see it.
        let asks = match &item.body {
            ItemBody::Confirm { call, .. } => Some((call.clone(), Asks::Decision)),
            ItemBody::Input { call, .. } => Some((call.clone(), Asks::Input)),
            _ => None,
        };
        if let Some((call, kind)) = &asks {
            pending.open(&conv.id, call, *kind);
        }
        let done = matches!(item.body, ItemBody::Done { .. });
        if done {
            // Nothing of this chat waits for an answer any more.
            pending.forget_conversation(&conv.id);
            if let Some(r) = released.take() {
                let _ = r.await;
            }
        }
        // Worth waiting long for: the end, and what the client must answer.
        let important = done || asks.is_some();
        watchers.publish(&conv.topics(), &item, important).await;
        client.send(item, important).await;
    }
}

/// The requester's side of a chat: `item` replies, and `missed` when it reads too slowly.
struct ToClient {
    client: Arc<Client>,
    id: String,
    conversation: String,
    missed: u64,
    /// Its budget stayed full for its whole patience; cleared once it has caught up.
    stalled: bool,
    gone: bool,
}

impl ToClient {
    async fn send(&mut self, item: Item, important: bool) {
        if self.gone {
            return;
        }
        if self.stalled && self.client.recovered() {
            self.stalled = false;
        }
        let wait = if important {
            Wait::Upto(FINAL_PATIENCE.max(self.client.patience))
        } else if self.stalled {
            Wait::No
        } else {
            Wait::Upto(self.client.patience)
        };
        if self.missed > 0 {
            let note = Reply {
                id: Some(self.id.clone()),
                body: ReplyBody::Missed {
                    session: self.conversation.clone(),
                    count: self.missed,
                },
            };
            match self.client.send(&note, wait).await {
                Sent::Yes => self.missed = 0,
                Sent::Stalled => {
                    self.missed += 1;
                    return;
                }
                Sent::Gone => {
                    self.gone = true;
                    return;
                }
            }
        }
        let reply = Reply {
            id: Some(self.id.clone()),
            body: ReplyBody::Item { item },
        };
        match self.client.send(&reply, wait).await {
            Sent::Yes => {}
            Sent::Stalled => {
                if !self.stalled {
                    tracing::debug!(client = %self.client.tag(), "client stalled; dropping its items");
                }
                self.stalled = true;
                self.missed += 1;
            }
            Sent::Gone => {
                tracing::debug!(client = %self.client.tag(), "client gone; its chat runs on");
                self.gone = true;
            }
        }
    }
}

/// The subscribers' side: `item` events per topic, and `missed` events when the event budget
/// stays full.
struct ToWatchers {
    events: Events,
    /// Items not published since the last `missed` event, by topic.
    missed: HashMap<String, u64>,
    /// The budget was found full: do not wait for it again until a publish succeeds.
    degraded: bool,
}

impl ToWatchers {
    async fn publish(&mut self, topics: &[String], item: &Item, important: bool) {
        if !self.events.anyone_listening() {
            self.missed.clear();
            return;
        }
        let ev = Event::Item { item: item.clone() };
        for topic in topics {
            let wait = if important {
                Wait::Upto(Duration::from_secs(1))
            } else if self.degraded {
                Wait::No
            } else {
                Wait::Upto(EVENT_PATIENCE)
            };
            if let Some(count) = self.missed.get(topic).copied() {
                let note = Event::Missed {
                    session: topic.clone(),
                    count,
                };
                if self.events.publish(topic, &note, wait).await {
                    self.missed.remove(topic);
                } else {
                    self.degraded = true;
                    *self.missed.entry(topic.clone()).or_default() += 1;
                    continue;
                }
            }
            if self.events.publish(topic, &ev, wait).await {
                self.degraded = false;
            } else {
                self.degraded = true;
                *self.missed.entry(topic.clone()).or_default() += 1;
            }
        }
    }
}

/// What a pending item asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asks {
    Decision,
    Input,
}

enum Answer {
    Decision(Decision),
    Input(String),
}

/// One question's channel: the sending end for `chat_reply`, the receiving end for the loop.
struct Slot {
    asks: Asks,
    tx: Option<oneshot::Sender<Answer>>,
    rx: Option<oneshot::Receiver<Answer>>,
}

impl Slot {
    fn new(asks: Asks) -> Self {
        let (tx, rx) = oneshot::channel();
        Self {
            asks,
            tx: Some(tx),
            rx: Some(rx),
        }
    }
}

/// The questions waiting for a `chat_reply`, by (conversation, call).
#[derive(Default)]
struct Pending {
    slots: Mutex<HashMap<(String, String), Slot>>,
}

impl Pending {
    fn key(conversation: &str, call: &str) -> (String, String) {
        (conversation.to_string(), call.to_string())
    }

    /// Make sure a slot for this question exists.
    fn open(&self, conversation: &str, call: &str, asks: Asks) {
        let mut slots = self.slots.lock().expect("pending");
        let slot = slots
            .entry(Self::key(conversation, call))
            .or_insert_with(|| Slot::new(asks));
        if slot.asks != asks {
            *slot = Slot::new(asks);
        }
    }

    /// The receiving end of this question's slot (opened if need be).
    fn wait(&self, conversation: &str, call: &str, asks: Asks) -> oneshot::Receiver<Answer> {
        let mut slots = self.slots.lock().expect("pending");
        let slot = slots
            .entry(Self::key(conversation, call))
            .or_insert_with(|| Slot::new(asks));
        if slot.asks != asks || slot.rx.is_none() {
            *slot = Slot::new(asks);
        }
        slot.rx.take().expect("a fresh slot")
    }

    fn answer(
        &self,
        conversation: &str,
        call: &str,
        decision: Option<ChatDecision>,
        code: Option<String>,
        input: Option<String>,
    ) -> Result<(), Failure> {
        let nothing = || {
            (
                ErrorCode::NoPendingInput,
                format!(
                    "nothing of call {call:?} in conversation {conversation:?} waits for an answer"
                ),
            )
        };
        let bad = |why: &str| (ErrorCode::BadRequest, why.to_string());
        let mut slots = self.slots.lock().expect("pending");
        let slot = slots
            .get_mut(&Self::key(conversation, call))
            .filter(|s| s.tx.is_some())
            .ok_or_else(nothing)?;
        let answer = match slot.asks {
            Asks::Decision => match (decision, code) {
                (Some(ChatDecision::Run), _) => Answer::Decision(Decision::Run),
                (Some(ChatDecision::Skip), _) => Answer::Decision(Decision::Skip),
                (Some(ChatDecision::Edit), Some(code)) if !code.trim().is_empty() => {
                    Answer::Decision(Decision::Edit(code))
                }
                (Some(ChatDecision::Edit), _) => {
                    return Err(bad("decision edit needs the code to run instead in `code`"))
                }
                (None, _) => {
                    return Err(bad(
                        "this call waits for a decision (run, skip or edit), not for input",
                    ))
                }
            },
            Asks::Input => match input {
                Some(line) => Answer::Input(line),
                None => {
                    return Err(bad(
                        "this call's program waits for a line of input: send it in `input`",
                    ))
                }
            },
        };
        let tx = slot.tx.take().ok_or_else(nothing)?;
        tx.send(answer).map_err(|_| nothing())
    }

    fn forget(&self, conversation: &str, call: &str) {
        self.slots
            .lock()
            .expect("pending")
            .remove(&Self::key(conversation, call));
    }

    fn forget_conversation(&self, conversation: &str) {
        self.slots
            .lock()
            .expect("pending")
            .retain(|(c, _), _| c != conversation);
    }
}

/// Removes a question's slot when its wait ends (answered, timed out, or cancelled).
struct Forget<'a> {
    pending: &'a Pending,
    conversation: &'a str,
    call: &'a str,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.pending.forget(self.conversation, self.call);
    }
}

/// The client in the loop: emits nothing (the loop sends the `confirm` and `input` items), and
/// waits for the `chat_reply` that answers them.
struct ApiOperator {
    pending: Arc<Pending>,
    conversation: String,
    patience: Duration,
}

impl ApiOperator {
    async fn ask(&self, call: &str, asks: Asks) -> Option<Result<Answer, ()>> {
        let rx = self.pending.wait(&self.conversation, call, asks);
        let _forget = Forget {
            pending: &self.pending,
            conversation: &self.conversation,
            call,
        };
        match tokio::time::timeout(self.patience, rx).await {
            Ok(Ok(a)) => Some(Ok(a)),
            // The host is stopping (or the chat ended).
            Ok(Err(_)) => Some(Err(())),
            Err(_) => None,
        }
    }

    fn patience_text(&self) -> String {
        let s = self.patience.as_secs_f64();
        if s >= 60.0 && s % 60.0 == 0.0 {
            format!("{} min", s / 60.0)
        } else {
            format!("{s} s")
        }
    }
}

impl Operator for ApiOperator {
    fn confirm<'a>(
        &'a self,
        call: &'a str,
        _language: &'a str,
        _code: &'a str,
    ) -> BoxFuture<'a, Decision> {
        Box::pin(async move {
            match self.ask(call, Asks::Decision).await {
                Some(Ok(Answer::Decision(d))) => d,
                Some(_) => Decision::Skip,
                None => Decision::Unanswered(format!(
                    "no chat_reply for call {call} within {}, so its code was skipped",
                    self.patience_text()
                )),
            }
        })
    }

    fn input<'a>(
        &'a self,
        call: &'a str,
        _prompt: &'a str,
        _password: bool,
    ) -> BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            match self.ask(call, Asks::Input).await {
                Some(Ok(Answer::Input(line))) => Some(line),
                _ => None,
            }
        })
    }
}

/// The conversation's sessions in the host's kernel: `<conversation>-<language>`, started on
/// first use like any session the host serves.
struct HostRunner {
    host: Weak<Host>,
    conversation: String,
    /// (language, session id) of each session used so far.
    sessions: Mutex<Vec<(&'static str, String)>>,
    languages: OnceLock<Vec<&'static str>>,
}

impl HostRunner {
    fn host(&self) -> Result<Arc<Host>, RunError> {
        self.host
            .upgrade()
            .ok_or_else(|| RunError("the host is shutting down".into()))
    }

    fn name(&self, language: &str) -> String {
        format!("{}-{language}", self.conversation)
    }

    fn session(&self, language: &str) -> Result<Session, RunError> {
        self.host()?
            .session(&self.name(language))
            .map_err(|(_, why)| RunError(why))
    }

    /// The conversation's session of `language`, started (as by a `create_session` with its
    /// name) when there is none.
    async fn session_or_start(&self, language: &'static str) -> Result<Session, RunError> {
        let host = self.host()?;
        let name = self.name(language);
        let fail = |(_, why): Failure| RunError(why);
        if let Ok(s) = host.session(&name) {
            let has = s.language().name();
            if has != language {
                return Err(RunError(format!(
                    "the session named {name:?} runs {has}, not {language}"
                )));
            }
            return Ok(s);
        }
        let c = CreateSession {
            language: language.to_string(),
            name: Some(name),
            cwd: None,
            env: BTreeMap::new(),
            timeout: None,
            output_cap: None,
            sandbox: None,
        };
        match host.clone().create(c).await.map_err(fail)? {
            ReplyBody::Session { session, .. } => host.session(&session.id).map_err(fail),
            _ => Err(RunError("the session could not be started".into())),
        }
    }

    fn note(&self, language: &'static str, id: &str) {
        let mut sessions = self.sessions.lock().expect("sessions");
        match sessions.iter_mut().find(|(l, _)| *l == language) {
            Some(s) => s.1 = id.to_string(),
            None => sessions.push((language, id.to_string())),
        }
    }
}

impl Runner for HostRunner {
    fn languages(&self) -> Vec<&'static str> {
        self.languages
            .get_or_init(|| match self.host.upgrade() {
                Some(host) => spindle_languages::NAMES
                    .into_iter()
                    .filter(|l| host.interpreters.resolve(l).is_ok())
                    .collect(),
                None => Vec::new(),
            })
            .clone()
    }

    fn execute(
        &self,
        language: &'static str,
        code: String,
        opts: ExecOptions,
    ) -> BoxFuture<'_, Result<RunStream, RunError>> {
        Box::pin(async move {
            let session = self.session_or_start(language).await?;
            self.note(language, session.id());
            let exec = session
                .execute(&code, opts)
                .map_err(|e| RunError(e.to_string()))?;
            let stream: RunStream = Box::pin(exec.map(Ok));
            Ok(stream)
        })
    }

    fn interrupt(&self, language: &'static str) -> BoxFuture<'_, Result<(), RunError>> {
        Box::pin(async move {
            self.session(language)?
                .interrupt()
                .map_err(|e| RunError(e.to_string()))
        })
    }

    fn input_reply(
        &self,
        language: &'static str,
        value: String,
    ) -> BoxFuture<'_, Result<(), RunError>> {
        Box::pin(async move {
            self.session(language)?
                .input_reply(&value)
                .map_err(|e| RunError(e.to_string()))
        })
    }
}
