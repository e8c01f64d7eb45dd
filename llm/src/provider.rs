//! The client of an OpenAI-compatible chat-completions endpoint (OpenAI, Ollama, vLLM, LM Studio,
//! OpenRouter, …), on `async-openai`.
//!
//! Real servers differ from OpenAI's published schema in ways the crate's strict types reject
//! (a tool call without `index`, an empty or unknown `finish_reason`, `usage: {}`, a mid-stream
//! `{"error": …}`), so requests and responses go through the crate's bring-your-own-types path
//! with the lenient structs below. HTTP goes through [`RetryService`], a tower service installed
//! with `Client::with_http_service`: it retries 429 (honouring `Retry-After`), 5xx and connect
//! errors with backoff, reports each retry, and turns every other failure into a typed
//! [`ProviderError`] naming the endpoint and the status, never the key.
//!
//! A turn comes back as a stream of [`Delta`]s whether the request streamed (SSE) or not; a
//! stream that goes quiet for longer than the idle timeout is an error, not a hang, and so is a
//! stream cut before its end.

use std::collections::BTreeMap;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::error::{OpenAIError, StreamError};
use async_openai::middleware::HttpRequestFactory;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// An API key. Its `Debug` and `Display` never show it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "Secret(none)"
        } else {
            "Secret(***)"
        })
    }
}

/// Where the model lives.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Base URL, such as `http://127.0.0.1:11434/v1` (no trailing slash).
    pub base_url: String,
    pub model: String,
    pub api_key: Secret,
}

/// How requests are made.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    /// Stream responses (SSE); otherwise one JSON response per turn.
    pub stream: bool,
    /// Longest silence while waiting for response headers or the next stream event.
    pub idle_timeout: Duration,
    /// Retries after the first attempt (429, 5xx, connect errors).
    pub max_retries: u32,
    /// First backoff; doubled each retry, capped at 8 s. `Retry-After` wins when sent.
    pub backoff: Duration,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        Self {
            stream: true,
            idle_timeout: Duration::from_secs(120),
            max_retries: 3,
            backoff: Duration::from_millis(500),
        }
    }
}

/// Why a request to the model failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    #[error("cannot reach {endpoint}: {detail}")]
    Connect { endpoint: String, detail: String },
    #[error("{endpoint} rejected the API key (401 Unauthorized): check SPINDLE_LLM_API_KEY or OPENAI_API_KEY{}", detail_suffix(.detail))]
    Unauthorized { endpoint: String, detail: String },
    #[error("model {model:?} not found at {endpoint} (404){}: check --model or SPINDLE_LLM_MODEL", detail_suffix(.detail))]
    ModelNotFound {
        endpoint: String,
        model: String,
        detail: String,
    },
    #[error("{endpoint} answered {status}{}", detail_suffix(.detail))]
    Status {
        endpoint: String,
        status: u16,
        detail: String,
    },
    #[error(
        "{endpoint} sent nothing for {secs} s (the idle timeout; raise it with --idle-timeout)"
    )]
    Idle { endpoint: String, secs: u64 },
    #[error("{endpoint} ended its stream before finishing the answer")]
    Cut { endpoint: String },
    #[error("{endpoint} reported an error in its stream: {detail}")]
    InStream { endpoint: String, detail: String },
    #[error("{endpoint} sent a response Spindle cannot read: {detail}")]
    Malformed { endpoint: String, detail: String },
}

fn detail_suffix(d: &str) -> String {
    if d.is_empty() {
        String::new()
    } else {
        format!(": {d}")
    }
}

impl ProviderError {
    /// The same error with every copy of `secret` replaced by `***` (keys shorter than 8
    /// characters are left alone: replacing them would garble the message).
    pub fn without(self, secret: &str) -> ProviderError {
        if secret.len() < 8 {
            return self;
        }
        let r = |s: String| {
            if s.contains(secret) {
                s.replace(secret, "***")
            } else {
                s
            }
        };
        use ProviderError::*;
        match self {
            Connect { endpoint, detail } => Connect {
                endpoint: r(endpoint),
                detail: r(detail),
            },
            Unauthorized { endpoint, detail } => Unauthorized {
                endpoint: r(endpoint),
                detail: r(detail),
            },
            ModelNotFound {
                endpoint,
                model,
                detail,
            } => ModelNotFound {
                endpoint: r(endpoint),
                model,
                detail: r(detail),
            },
            Status {
                endpoint,
                status,
                detail,
            } => Status {
                endpoint: r(endpoint),
                status,
                detail: r(detail),
            },
            Idle { endpoint, secs } => Idle {
                endpoint: r(endpoint),
                secs,
            },
            Cut { endpoint } => Cut {
                endpoint: r(endpoint),
            },
            InStream { endpoint, detail } => InStream {
                endpoint: r(endpoint),
                detail: r(detail),
            },
            Malformed { endpoint, detail } => Malformed {
                endpoint: r(endpoint),
                detail: r(detail),
            },
        }
    }

    /// True when the server refused the `tools` parameter (models without tool support on
    /// Ollama answer 400 "… does not support tools").
    pub fn rejects_tools(&self) -> bool {
        matches!(self, ProviderError::Status { status: 400, detail, .. }
            if detail.to_ascii_lowercase().contains("does not support tools"))
    }
}

/// A retry the provider is about to make, for the user to see.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryNotice {
    /// 1 for the first retry.
    pub attempt: u32,
    pub max: u32,
    pub delay: Duration,
    /// What went wrong, such as `429 Too Many Requests`.
    pub reason: String,
}

/// One piece of a model's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    Text(String),
    Reasoning(String),
    /// A piece of tool call number `index`: its id and name when first seen, then argument
    /// text to append.
    ToolCall {
        index: usize,
        id: Option<String>,
        name: Option<String>,
        arguments: String,
    },
    Usage {
        prompt_tokens: u64,
        completion_tokens: u64,
    },
    /// The choice ended (any reason the server gives, possibly empty).
    Finish(String),
}

pub type DeltaStream = Pin<Box<dyn Stream<Item = Result<Delta, ProviderError>> + Send>>;

/// A whole tool call, put together from its pieces.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The raw argument text (JSON when the model behaved).
    pub arguments: String,
}

/// Puts a turn's deltas together: tool-call pieces are kept in a map by index and joined, so
/// the answer is "run these tools" whatever `finish_reason` said.
#[derive(Debug, Default, Clone)]
pub struct TurnBuilder {
    pub text: String,
    pub reasoning: String,
    calls: BTreeMap<usize, ToolCall>,
    pub finish: Option<String>,
    pub usage: Option<(u64, u64)>,
}

impl TurnBuilder {
    pub fn push(&mut self, d: &Delta) {
        match d {
            Delta::Text(t) => self.text.push_str(t),
            Delta::Reasoning(t) => self.reasoning.push_str(t),
            Delta::ToolCall {
                index,
                id,
                name,
                arguments,
            } => {
                let call = self.calls.entry(*index).or_insert_with(|| ToolCall {
                    id: String::new(),
                    name: String::new(),
                    arguments: String::new(),
                });
                if let Some(id) = id.as_ref().filter(|s| !s.is_empty()) {
                    call.id = id.clone();
                }
                if let Some(n) = name.as_ref().filter(|s| !s.is_empty()) {
                    call.name = n.clone();
                }
                call.arguments.push_str(arguments);
            }
            Delta::Usage {
                prompt_tokens,
                completion_tokens,
            } => self.usage = Some((*prompt_tokens, *completion_tokens)),
            Delta::Finish(r) => self.finish = Some(r.clone()),
        }
    }

    /// The tool calls in index order; calls the server sent without an id get one.
    pub fn tool_calls(&self) -> Vec<ToolCall> {
        self.calls
            .iter()
            .map(|(i, c)| {
                let mut c = c.clone();
                if c.id.is_empty() {
                    c.id = format!("call_{i}");
                }
                c
            })
            .collect()
    }

    /// The current arguments text of call `index`.
    pub fn arguments(&self, index: usize) -> Option<&str> {
        self.calls.get(&index).map(|c| c.arguments.as_str())
    }
}

// --- lenient wire types (bring-your-own-types) ---------------------------------------------------

#[derive(Debug, Default, Deserialize)]
struct StreamChunk {
    #[serde(default)]
    choices: Vec<StreamChoice>,
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct StreamChoice {
    #[serde(default)]
    delta: Option<DeltaWire>,
    /// Non-streaming responses carry `message` instead.
    #[serde(default)]
    message: Option<DeltaWire>,
    #[serde(default)]
    finish_reason: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct DeltaWire {
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallWire>>,
}

#[derive(Debug, Default, Deserialize)]
struct ToolCallWire {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionWire>,
}

#[derive(Debug, Default, Deserialize)]
struct FunctionWire {
    #[serde(default)]
    name: Option<String>,
    /// A string normally; Ollama has sent an object.
    #[serde(default)]
    arguments: Option<Value>,
}

/// Which index a tool-call piece without `index` belongs to: a new id opens a new call, no id
/// continues the last one.
#[derive(Debug, Default)]
struct IndexGuess {
    last: Option<usize>,
    last_id: Option<String>,
    next: usize,
}

impl IndexGuess {
    fn index(&mut self, explicit: Option<u64>, id: Option<&str>) -> usize {
        let i = match explicit {
            Some(i) => i as usize,
            None => match (self.last, id) {
                (Some(last), None) => last,
                (Some(last), Some(id)) if self.last_id.as_deref() == Some(id) => last,
                _ => self.next,
            },
        };
        self.last = Some(i);
        if let Some(id) = id {
            self.last_id = Some(id.to_string());
        }
        self.next = self.next.max(i + 1);
        i
    }
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        // Content given as parts: keep the text ones.
        Value::Array(parts) => {
            let t: String = parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect();
            (!t.is_empty()).then_some(t)
        }
        other => Some(other.to_string()),
    }
}

fn usage_of(v: &Value) -> Option<Delta> {
    let p = v.get("prompt_tokens").and_then(Value::as_u64);
    let c = v.get("completion_tokens").and_then(Value::as_u64);
    if p.is_none() && c.is_none() {
        return None;
    }
    Some(Delta::Usage {
        prompt_tokens: p.unwrap_or(0),
        completion_tokens: c.unwrap_or(0),
    })
}

/// The deltas in one parsed chunk (or a whole non-streamed response).
fn deltas_of(
    chunk: StreamChunk,
    guess: &mut IndexGuess,
    endpoint: &str,
) -> Result<Vec<Delta>, ProviderError> {
    if let Some(err) = chunk.error {
        let detail = err
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| err.to_string());
        return Err(ProviderError::InStream {
            endpoint: endpoint.to_string(),
            detail,
        });
    }
    let mut out = Vec::new();
    // Only the first choice is used (n = 1 is requested).
    if let Some(choice) = chunk.choices.into_iter().next() {
        if let Some(d) = choice.delta.or(choice.message) {
            for r in [d.reasoning_content, d.reasoning].into_iter().flatten() {
                if !r.is_empty() {
                    out.push(Delta::Reasoning(r));
                }
            }
            if let Some(t) = d.content.as_ref().and_then(text_of) {
                if !t.is_empty() {
                    out.push(Delta::Text(t));
                }
            }
            for tc in d.tool_calls.unwrap_or_default() {
                let index = guess.index(tc.index, tc.id.as_deref());
                let f = tc.function.unwrap_or_default();
                let arguments = match f.arguments {
                    Some(Value::String(s)) => s,
                    Some(Value::Null) | None => String::new(),
                    Some(other) => other.to_string(),
                };
                out.push(Delta::ToolCall {
                    index,
                    id: tc.id,
                    name: f.name,
                    arguments,
                });
            }
        }
        if let Some(r) = choice.finish_reason {
            match r {
                Value::Null => {}
                Value::String(s) => out.push(Delta::Finish(s)),
                other => out.push(Delta::Finish(other.to_string())),
            }
        }
    }
    if let Some(u) = chunk.usage.as_ref().and_then(usage_of) {
        out.push(u);
    }
    Ok(out)
}

// --- HTTP: retries and typed failures --------------------------------------------------------

/// A failure below async-openai, carried through it boxed and recovered by downcasting.
#[derive(Debug, thiserror::Error)]
enum HttpFailure {
    #[error("{0}")]
    Connect(String),
    #[error("no response headers within {0} s")]
    Idle(u64),
    #[error("status {status}")]
    Status { status: u16, body: String },
}

type Reporter = Arc<Mutex<Option<mpsc::UnboundedSender<RetryNotice>>>>;

/// The tower service under async-openai's client: reqwest, with retries.
#[derive(Clone)]
struct RetryService {
    http: reqwest::Client,
    settings: ProviderSettings,
    report: Reporter,
}

/// How much longer than the idle timeout the HTTP client's own read timeout is.
const READ_TIMEOUT_MARGIN: Duration = Duration::from_millis(500);

/// Longest error body kept for a message.
const ERROR_BODY_LIMIT: usize = 2000;

fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    let secs: f64 = v.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(120.0)))
}

fn reason_phrase(status: reqwest::StatusCode) -> String {
    match status.canonical_reason() {
        Some(r) => format!("{} {r}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

async fn read_body(resp: reqwest::Response) -> String {
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Ok(Some(Ok(b))) = tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
        body.extend_from_slice(&b);
        if body.len() > ERROR_BODY_LIMIT * 4 {
            break;
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

impl RetryService {
    fn notify(&self, n: RetryNotice) {
        tracing::info!(attempt = n.attempt, delay_ms = n.delay.as_millis() as u64, reason = %n.reason, "retrying the model request");
        if let Some(tx) = self.report.lock().expect("reporter").as_ref() {
            let _ = tx.send(n);
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let d = self.settings.backoff.saturating_mul(1 << attempt.min(16));
        d.min(Duration::from_secs(8))
    }

    async fn run(self, factory: HttpRequestFactory) -> Result<reqwest::Response, OpenAIError> {
        let max = self.settings.max_retries;
        let idle = self.settings.idle_timeout;
        let mut attempt = 0u32;
        loop {
            let request = factory.build().await?;
            let (reason, wait, failure) =
                match tokio::time::timeout(idle, self.http.execute(request)).await {
                    Err(_) => (
                        format!("no response within {} s", idle.as_secs()),
                        None,
                        HttpFailure::Idle(idle.as_secs()),
                    ),
                    Ok(Err(e)) => {
                        let detail = describe_reqwest(&e);
                        if !(e.is_connect() || e.is_timeout() || e.is_request()) {
                            return Err(OpenAIError::Boxed(Box::new(HttpFailure::Connect(detail))));
                        }
                        (detail.clone(), None, HttpFailure::Connect(detail))
                    }
                    Ok(Ok(resp)) if resp.status().is_success() => return Ok(resp),
                    Ok(Ok(resp)) => {
                        let status = resp.status();
                        let wait = retry_after(resp.headers());
                        let body = read_body(resp).await;
                        let failure = HttpFailure::Status {
                            status: status.as_u16(),
                            body,
                        };
                        if !(status.as_u16() == 429 || status.is_server_error()) {
                            return Err(OpenAIError::Boxed(Box::new(failure)));
                        }
                        (reason_phrase(status), wait, failure)
                    }
                };
            if attempt >= max {
                return Err(OpenAIError::Boxed(Box::new(failure)));
            }
            let delay = wait.unwrap_or_else(|| self.backoff(attempt));
            attempt += 1;
            self.notify(RetryNotice {
                attempt,
                max,
                delay,
                reason,
            });
            tokio::time::sleep(delay).await;
        }
    }
}

/// A reqwest error without its source chain noise (and never a header).
fn describe_reqwest(e: &reqwest::Error) -> String {
    let mut s = if e.is_connect() {
        "connection failed".to_string()
    } else if e.is_timeout() {
        "timed out".to_string()
    } else {
        e.to_string()
    };
    let mut src = std::error::Error::source(e);
    let mut last = String::new();
    while let Some(inner) = src {
        last = inner.to_string();
        src = inner.source();
    }
    if !last.is_empty() && !s.contains(&last) {
        s.push_str(": ");
        s.push_str(&last);
    }
    s
}

impl tower::Service<HttpRequestFactory> for RetryService {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<reqwest::Response, OpenAIError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, factory: HttpRequestFactory) -> Self::Future {
        Box::pin(self.clone().run(factory))
    }
}

/// Install one process-wide rustls crypto provider (ring), once. Safe to call often.
pub fn install_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A client of one endpoint.
#[derive(Clone)]
pub struct Provider {
    client: async_openai::Client<OpenAIConfig>,
    endpoint: Endpoint,
    settings: ProviderSettings,
    report: Reporter,
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider")
            .field("endpoint", &self.endpoint)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Provider {
    pub fn new(endpoint: Endpoint, settings: ProviderSettings) -> Result<Self, ProviderError> {
        install_crypto();
        let base = endpoint.base_url.trim_end_matches('/').to_string();
        let endpoint = Endpoint {
            base_url: base.clone(),
            ..endpoint
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // The idle timeout for the body of a non-streamed answer, which async-openai reads
            // without one. A little longer than the idle timeout, so that the timers of the
            // retry service (headers) and of the stream (events) fire first where they apply.
            .read_timeout(settings.idle_timeout + READ_TIMEOUT_MARGIN)
            .build()
            .map_err(|e| ProviderError::Connect {
                endpoint: base.clone(),
                detail: describe_reqwest(&e),
            })?;
        let report: Reporter = Arc::new(Mutex::new(None));
        let service = RetryService {
            http: http.clone(),
            settings: settings.clone(),
            report: report.clone(),
        };
        let config = OpenAIConfig::new()
            .with_api_base(base)
            .with_api_key(endpoint.api_key.expose().to_string());
        // One reqwest client for building and sending requests: each one loads the system's
        // certificates when it is made.
        let client = async_openai::Client::build(http, config).with_http_service(service);
        Ok(Self {
            client,
            endpoint,
            settings,
            report,
        })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn settings(&self) -> &ProviderSettings {
        &self.settings
    }

    /// Where retry notices go (the loop turns them into `notice` items).
    pub fn on_retry(&self, tx: Option<mpsc::UnboundedSender<RetryNotice>>) {
        *self.report.lock().expect("reporter") = tx;
    }

    fn url(&self) -> String {
        format!("{}/chat/completions", self.endpoint.base_url)
    }

    fn map_error(&self, e: OpenAIError) -> ProviderError {
        self.redact(self.map_error_raw(e))
    }

    /// `e` without the API key in it: servers echo it back in error messages.
    fn redact(&self, e: ProviderError) -> ProviderError {
        e.without(self.endpoint.api_key.expose())
    }

    fn map_error_raw(&self, e: OpenAIError) -> ProviderError {
        let endpoint = self.url();
        match e {
            OpenAIError::Boxed(b) => match b.downcast::<HttpFailure>() {
                Ok(f) => match *f {
                    HttpFailure::Connect(detail) => ProviderError::Connect { endpoint, detail },
                    HttpFailure::Idle(secs) => ProviderError::Idle { endpoint, secs },
                    HttpFailure::Status { status, body } => {
                        let detail = error_detail(&body);
                        match status {
                            401 => ProviderError::Unauthorized { endpoint, detail },
                            404 => ProviderError::ModelNotFound {
                                endpoint,
                                model: self.endpoint.model.clone(),
                                detail,
                            },
                            _ => ProviderError::Status {
                                endpoint,
                                status,
                                detail,
                            },
                        }
                    }
                },
                Err(other) => ProviderError::Connect {
                    endpoint,
                    detail: other.to_string(),
                },
            },
            // The body of a non-streamed answer stopped coming (the client's read timeout) or
            // broke off after the headers: the server was reached.
            OpenAIError::Reqwest(e) if e.is_timeout() => ProviderError::Idle {
                endpoint,
                secs: self.settings.idle_timeout.as_secs(),
            },
            OpenAIError::Reqwest(e) if e.is_body() || e.is_decode() => {
                ProviderError::Cut { endpoint }
            }
            OpenAIError::Reqwest(e) => ProviderError::Connect {
                endpoint,
                detail: describe_reqwest(&e),
            },
            OpenAIError::JSONDeserialize(e, content) => ProviderError::Malformed {
                endpoint,
                detail: format!("{e} in {}", clip(&content, 200)),
            },
            // The connection broke in the middle of the stream: the answer was cut.
            OpenAIError::StreamError(e) => match *e {
                StreamError::EventStream(t) if t.starts_with("Transport error") => {
                    ProviderError::Cut { endpoint }
                }
                other => ProviderError::Malformed {
                    endpoint,
                    detail: format!("the event stream is broken: {other}"),
                },
            },
            OpenAIError::ApiError(e) => ProviderError::Status {
                endpoint,
                status: e.status_code.as_u16(),
                detail: e.api_error.message,
            },
            other => ProviderError::Malformed {
                endpoint,
                detail: other.to_string(),
            },
        }
    }

    /// The request body for `messages` (and `tools`, when given).
    pub fn body(&self, messages: &[Value], tools: Option<&Value>) -> Value {
        let mut body = json!({
            "model": self.endpoint.model,
            "messages": messages,
            "stream": self.settings.stream,
        });
        if self.settings.stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        if let Some(t) = tools {
            body["tools"] = t.clone();
        }
        body
    }

    /// Ask the model; its answer comes as deltas.
    pub async fn turn(
        &self,
        messages: &[Value],
        tools: Option<&Value>,
    ) -> Result<DeltaStream, ProviderError> {
        let body = self.body(messages, tools);
        let endpoint = self.url();
        if !self.settings.stream {
            let resp: StreamChunk = self
                .client
                .chat()
                .create_byot(body)
                .await
                .map_err(|e| self.map_error(e))?;
            let mut guess = IndexGuess::default();
            let deltas = deltas_of(resp, &mut guess, &endpoint).map_err(|e| self.redact(e))?;
            return Ok(Box::pin(futures::stream::iter(deltas.into_iter().map(Ok))));
        }
        let raw = self
            .client
            .chat()
            .create_stream_byot::<Value, StreamChunk>(body)
            .await
            .map_err(|e| self.map_error(e))?;
        let this = self.clone();
        let idle = self.settings.idle_timeout;
        let state = (
            raw,
            IndexGuess::default(),
            Vec::<Delta>::new(),
            false,
            false,
        );
        let s = futures::stream::unfold(
            state,
            move |(mut raw, mut guess, mut pending, mut finished, done)| {
                let this = this.clone();
                let endpoint = endpoint.clone();
                async move {
                    if done {
                        return None;
                    }
                    loop {
                        if !pending.is_empty() {
                            let d = pending.remove(0);
                            return Some((Ok(d), (raw, guess, pending, finished, false)));
                        }
                        match tokio::time::timeout(idle, raw.next()).await {
                            Err(_) => {
                                let e = ProviderError::Idle {
                                    endpoint,
                                    secs: idle.as_secs(),
                                };
                                return Some((Err(e), (raw, guess, pending, finished, true)));
                            }
                            Ok(None) => {
                                if finished {
                                    return None;
                                }
                                let e = ProviderError::Cut { endpoint };
                                return Some((Err(e), (raw, guess, pending, finished, true)));
                            }
                            Ok(Some(Err(e))) => {
                                let e = this.map_error(e);
                                return Some((Err(e), (raw, guess, pending, finished, true)));
                            }
                            Ok(Some(Ok(chunk))) => {
                                // The usage chunk (usage, no choices) comes after the last
                                // choice: the answer is complete even when the server never
                                // gave a finish reason.
                                let last = chunk.choices.is_empty() && chunk.usage.is_some();
                                match deltas_of(chunk, &mut guess, &endpoint) {
                                    Ok(ds) => {
                                        finished |= last
                                            || ds.iter().any(|d| matches!(d, Delta::Finish(_)));
                                        pending = ds;
                                    }
                                    Err(e) => {
                                        let e = this.redact(e);
                                        let state = (raw, guess, pending, finished, true);
                                        return Some((Err(e), state));
                                    }
                                }
                            }
                        }
                    }
                }
            },
        );
        Ok(Box::pin(s))
    }
}

/// The message of an error body: OpenAI's `{"error": {"message": …}}`, Ollama's
/// `{"error": "…"}`, or the text itself, shortened.
fn error_detail(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        let e = v.get("error").unwrap_or(&v);
        if let Some(m) = e.get("message").and_then(Value::as_str) {
            return clip(m, ERROR_BODY_LIMIT);
        }
        if let Some(m) = e.as_str() {
            return clip(m, ERROR_BODY_LIMIT);
        }
        if let Some(m) = v.get("detail").and_then(Value::as_str) {
            return clip(m, ERROR_BODY_LIMIT);
        }
    }
    clip(body.trim(), ERROR_BODY_LIMIT)
}

fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> StreamChunk {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let e = Endpoint {
            base_url: "http://x".into(),
            model: "m".into(),
            api_key: Secret::new("sk-very-secret"),
        };
        assert!(!format!("{e:?}").contains("sk-very"));
    }

    #[test]
    fn tool_calls_accumulate_by_index_and_without_index() {
        let mut guess = IndexGuess::default();
        let mut t = TurnBuilder::default();
        for v in [
            json!({"choices":[{"delta":{"tool_calls":[{"index":0,"id":"a","function":{"name":"execute","arguments":""}}]}}]}),
            json!({"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"lang"}}]}}]}),
            json!({"choices":[{"delta":{"tool_calls":[{"index":1,"id":"b","function":{"name":"execute","arguments":"{}"}}]}}]}),
            json!({"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"uage\":1}"}}]}}]}),
            json!({"choices":[{"delta":{},"finish_reason":""}],"usage":{}}),
        ] {
            for d in deltas_of(parse(v), &mut guess, "e").unwrap() {
                t.push(&d);
            }
        }
        let calls = t.tool_calls();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].arguments, "{\"language\":1}");
        assert_eq!(calls[1].id, "b");
        assert_eq!(t.finish.as_deref(), Some(""));
        assert_eq!(t.usage, None);

        // No index at all (some servers): a new id opens a call, no id continues it.
        let mut guess = IndexGuess::default();
        let mut t = TurnBuilder::default();
        for v in [
            json!({"choices":[{"delta":{"tool_calls":[{"id":"x","function":{"name":"execute","arguments":"{\"a\""}}]}}]}),
            json!({"choices":[{"delta":{"tool_calls":[{"function":{"arguments":":1}"}}]}}]}),
            json!({"choices":[{"delta":{"tool_calls":[{"id":"y","function":{"name":"execute","arguments":{"b":2}}}]}}]}),
        ] {
            for d in deltas_of(parse(v), &mut guess, "e").unwrap() {
                t.push(&d);
            }
        }
        let calls = t.tool_calls();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].arguments, "{\"a\":1}");
        assert_eq!(calls[1].arguments, "{\"b\":2}");
    }

    #[test]
    fn error_chunks_and_reasoning() {
        let mut g = IndexGuess::default();
        let e = deltas_of(
            parse(json!({"error":{"message":"overloaded"}})),
            &mut g,
            "E",
        )
        .unwrap_err();
        assert!(e.to_string().contains("overloaded"), "{e}");
        let ds = deltas_of(
            parse(json!({"choices":[{"delta":{"reasoning_content":"hm","content":"hi"},"finish_reason":"weird"}]})),
            &mut g,
            "E",
        )
        .unwrap();
        assert_eq!(
            ds,
            vec![
                Delta::Reasoning("hm".into()),
                Delta::Text("hi".into()),
                Delta::Finish("weird".into())
            ]
        );
    }

    #[test]
    fn error_details_are_read_from_every_shape() {
        assert_eq!(
            error_detail(r#"{"error":{"message":"bad key"}}"#),
            "bad key"
        );
        assert_eq!(
            error_detail(r#"{"error":"model 'x' not found"}"#),
            "model 'x' not found"
        );
        assert_eq!(error_detail("upstream exploded\n"), "upstream exploded");
    }
}
