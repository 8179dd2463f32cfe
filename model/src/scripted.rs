//! A real HTTP server on loopback that replays scripted model replies, for tests and benches.
//!
//! It serves `POST …/chat/completions` and `POST …/completions` in the OpenAI-compatible format (and
//! `GET …/models`, listing what [`ScriptedServer::serve_model`] registered),
//! answers each request with the next scripted reply (per episode when the request names one in
//! its `user` field or an `x-episode-id` header), records every request it received, and counts
//! how many were in flight at once. It stops when dropped.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::types::{TokenLogprob, ToolCall, Usage};

/// Header a request may use to name its episode (the `user` body field works too).
pub const EPISODE_HEADER: &str = "x-episode-id";

/// A normal completion to send back; rendered in the chat or text-completion format to match the path.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScriptedCompletion {
    /// Assistant content, or the completion text.
    pub text: String,
    /// Sent as `reasoning_content` in chat replies.
    pub reasoning: Option<String>,
    /// Native tool calls (chat only).
    pub tool_calls: Vec<ToolCall>,
    /// Defaults to `tool_calls` when there are calls, else `stop`.
    pub finish_reason: Option<String>,
    /// Token counts to report.
    pub usage: Option<Usage>,
    /// Per-token log-probabilities, in the format of the path.
    pub logprobs: Option<Vec<TokenLogprob>>,
    /// Generated token ids (`token_ids` in the choice).
    pub token_ids: Option<Vec<u32>>,
    /// Prompt token ids (top level for chat, in the choice for completions, as vLLM does).
    pub prompt_token_ids: Option<Vec<u32>>,
}

/// One scripted answer.
#[derive(Debug, Clone, PartialEq)]
pub enum ScriptedReply {
    /// 200 with a well-formed completion.
    Completion(ScriptedCompletion),
    /// An error status with an optional `Retry-After` header value and a body.
    Status {
        /// The HTTP status code.
        status: u16,
        /// The `Retry-After` header, sent verbatim when set.
        retry_after: Option<String>,
        /// The response body.
        body: String,
    },
    /// 200 with this exact body, which need not be JSON (for malformed-body tests).
    Raw(String),
    /// 200 with this JSON body, sent as is (for unknown-field tolerance tests).
    Json(Value),
    /// Wait, then send the inner reply (longer than the client timeout = a timeout).
    Delayed {
        /// How long to wait before answering.
        delay: Duration,
        /// What to answer afterwards.
        reply: Box<ScriptedReply>,
    },
}

impl ScriptedReply {
    /// A plain text reply.
    pub fn text(text: impl Into<String>) -> Self {
        ScriptedReply::Completion(ScriptedCompletion {
            text: text.into(),
            ..ScriptedCompletion::default()
        })
    }

    /// A reply that makes native tool calls (`name`, `arguments JSON text`), with ids `call_<i>`.
    pub fn tool_calls(calls: &[(&str, &str)]) -> Self {
        ScriptedReply::Completion(ScriptedCompletion {
            tool_calls: calls
                .iter()
                .enumerate()
                .map(|(index, (name, arguments))| ToolCall {
                    id: format!("call_{index}"),
                    name: name.to_string(),
                    arguments: arguments.to_string(),
                })
                .collect(),
            ..ScriptedCompletion::default()
        })
    }

    /// An error status with a short JSON error body.
    pub fn status(status: u16) -> Self {
        ScriptedReply::Status {
            status,
            retry_after: None,
            body: json!({"error": {"message": format!("scripted status {status}")}}).to_string(),
        }
    }

    /// A 429 asking the client to wait `retry_after_secs` seconds.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        ScriptedReply::Status {
            status: 429,
            retry_after: Some(retry_after_secs.to_string()),
            body: json!({"error": {"message": "scripted rate limit"}}).to_string(),
        }
    }

    /// `reply`, sent after `delay`.
    pub fn delayed(delay: Duration, reply: ScriptedReply) -> Self {
        ScriptedReply::Delayed {
            delay,
            reply: Box::new(reply),
        }
    }
}

/// The replies to serve, in order: a shared queue, per-episode queues, and what to send when a queue runs dry.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct Script {
    shared: VecDeque<ScriptedReply>,
    by_episode: HashMap<String, VecDeque<ScriptedReply>>,
    /// Stateless replies by episode-id prefix: `(prefix, replies)`, the reply picked by the request's turn.
    by_prefix: Vec<(String, Vec<ScriptedReply>)>,
    fallback: Option<ScriptedReply>,
}

impl Script {
    /// A script whose replies are served in order to any request.
    pub fn new(replies: Vec<ScriptedReply>) -> Self {
        Script {
            shared: replies.into(),
            ..Script::default()
        }
    }

    /// Replies for requests naming episode `key`, served in order before falling back to the shared queue.
    pub fn with_episode(mut self, key: impl Into<String>, replies: Vec<ScriptedReply>) -> Self {
        self.by_episode.insert(key.into(), replies.into());
        self
    }

    /// STATELESS replies for every episode whose id starts with `prefix`: a request gets `replies[n]`, where `n` is
    /// the number of `assistant` messages in its `messages` (chat paths; on the completions path, which has no
    /// messages, `n` is how many requests of that exact episode id this server already answered). Past the end the
    /// fallback applies (or HTTP 410). Nothing is consumed, so an episode re-run from scratch (a new id with the same
    /// prefix, e.g. after a kill -9) gets the same replies. Several prefixes may be registered: the longest matching
    /// one wins, and an exact [`Script::with_episode`] key takes priority over every prefix.
    pub fn with_episode_turns(
        mut self,
        prefix: impl Into<String>,
        replies: Vec<ScriptedReply>,
    ) -> Self {
        let prefix = prefix.into();
        self.by_prefix.retain(|(known, _)| *known != prefix);
        self.by_prefix.push((prefix, replies));
        self
    }

    /// What to send forever once the relevant queues are empty (default: HTTP 410 "script exhausted").
    pub fn with_fallback(mut self, reply: ScriptedReply) -> Self {
        self.fallback = Some(reply);
        self
    }

    /// The stateless replies of the longest registered prefix of `episode`, unless an exact per-episode queue exists.
    fn turn_replies(&self, episode: Option<&str>) -> Option<&[ScriptedReply]> {
        let episode = episode?;
        if self.by_episode.contains_key(episode) {
            return None;
        }
        self.by_prefix
            .iter()
            .filter(|(prefix, _)| episode.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, replies)| replies.as_slice())
    }

    /// The reply for a request of `episode` at turn `turn` (see [`Script::with_episode_turns`]).
    fn reply_for(&mut self, episode: Option<&str>, turn: usize) -> ScriptedReply {
        if let Some(replies) = self.turn_replies(episode) {
            return match replies.get(turn) {
                Some(reply) => reply.clone(),
                None => self.fallback_reply(episode),
            };
        }
        self.next_reply(episode)
    }

    fn next_reply(&mut self, episode: Option<&str>) -> ScriptedReply {
        if let Some(queue) = episode.and_then(|key| self.by_episode.get_mut(key)) {
            if let Some(reply) = queue.pop_front() {
                return reply;
            }
        }
        if let Some(reply) = self.shared.pop_front() {
            return reply;
        }
        self.fallback_reply(episode)
    }

    fn fallback_reply(&self, episode: Option<&str>) -> ScriptedReply {
        match &self.fallback {
            Some(reply) => reply.clone(),
            None => ScriptedReply::Status {
                status: 410,
                retry_after: None,
                body: format!(
                    "scripted server: script exhausted (episode {})",
                    episode.unwrap_or("(none)")
                ),
            },
        }
    }

    fn remaining(&self) -> usize {
        self.shared.len() + self.by_episode.values().map(VecDeque::len).sum::<usize>()
    }
}

/// One request as the server received it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// The request path (e.g. `/v1/chat/completions`).
    pub path: String,
    /// Headers, names lowercase, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON (`Null` when it was not JSON).
    pub body: Value,
    /// The episode the request named, if any.
    pub episode: Option<String>,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_str())
    }
}

#[derive(Debug, Default)]
struct Counters {
    in_flight: usize,
    max_in_flight: usize,
}

/// How a [`ScriptedServer`] treats requests beyond its script.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScriptedOptions {
    /// Top-level request body fields this server refuses, like a strict OpenAI-compatible server: a request carrying
    /// any of them gets HTTP 400 `{"error":{"message":"Unrecognized request argument supplied: <field>",
    /// "type":"invalid_request_error"}}` (it is recorded, and consumes no scripted reply).
    pub reject_fields: Vec<String>,
}

#[derive(Debug)]
struct State {
    script: Mutex<Script>,
    options: ScriptedOptions,
    /// Requests answered so far per exact episode id (the turn of a completions-path request).
    answered: Mutex<HashMap<String, usize>>,
    requests: Mutex<Vec<RecordedRequest>>,
    counters: Mutex<Counters>,
    /// The `GET …/models` listing: model id and the `max_model_len` reported for it.
    models: Mutex<Vec<(String, Option<u64>)>>,
    /// The `Authorization` header of each `GET …/models` request answered (kept apart from
    /// [`ScriptedServer::requests`], which are completions).
    model_list_requests: Mutex<Vec<Option<String>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Counts a request in flight until dropped (also when the client hangs up mid-delay).
struct InFlight<'a>(&'a State);

impl<'a> InFlight<'a> {
    fn enter(state: &'a State) -> Self {
        let mut counters = lock(&state.counters);
        counters.in_flight += 1;
        counters.max_in_flight = counters.max_in_flight.max(counters.in_flight);
        InFlight(state)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        lock(&self.0.counters).in_flight -= 1;
    }
}

/// A running scripted server; it stops (closing every connection) when dropped.
#[derive(Debug)]
#[must_use = "the server stops when dropped"]
pub struct ScriptedServer {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl ScriptedServer {
    /// Binds `127.0.0.1:0` and starts serving `script` on the current tokio runtime, accepting every field.
    pub async fn start(script: Script) -> std::io::Result<Self> {
        Self::start_with(script, ScriptedOptions::default()).await
    }

    /// Like [`ScriptedServer::start`], with `options` (e.g. fields to reject with HTTP 400).
    pub async fn start_with(script: Script, options: ScriptedOptions) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            script: Mutex::new(script),
            options,
            answered: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            counters: Mutex::new(Counters::default()),
            models: Mutex::new(Vec::new()),
            model_list_requests: Mutex::new(Vec::new()),
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&state)));
        Ok(ScriptedServer { addr, state, task })
    }

    /// The base URL to give a client, `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.requests).clone()
    }

    /// How many requests arrived so far.
    pub fn request_count(&self) -> usize {
        lock(&self.state.requests).len()
    }

    /// The most requests that were being handled at the same moment.
    pub fn max_in_flight(&self) -> usize {
        lock(&self.state.counters).max_in_flight
    }

    /// Lists model `id` in `GET …/v1/models` (as vLLM does, with `max_model_len` when given). By default the list is
    /// empty, so no context window is reported.
    pub fn serve_model(&self, id: impl Into<String>, max_model_len: Option<u64>) {
        lock(&self.state.models).push((id.into(), max_model_len));
    }

    /// The `Authorization` header of each `GET …/models` request that arrived, in order (these requests are not
    /// in [`ScriptedServer::requests`]).
    pub fn model_list_requests(&self) -> Vec<Option<String>> {
        lock(&self.state.model_list_requests).clone()
    }

    /// Scripted replies not yet served (shared and per-episode queues).
    pub fn remaining(&self) -> usize {
        lock(&self.state.script).remaining()
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection task.
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = Arc::clone(&state);
                connections.spawn(async move {
                    let service = service_fn(move |request| handle(Arc::clone(&state), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

fn respond(status: u16, retry_after: Option<&str>, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    if let Some(value) =
        retry_after.and_then(|value| hyper::header::HeaderValue::from_str(value).ok())
    {
        headers.insert(hyper::header::RETRY_AFTER, value);
    }
    response
}

async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let _in_flight = InFlight::enter(&state);
    let path = request.uri().path().to_string();
    if request.method() == hyper::Method::GET && path.ends_with("/models") {
        let authorization = request
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
        lock(&state.model_list_requests).push(authorization);
        return Ok(respond(200, None, model_list(&state).to_string()));
    }
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let bytes = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => return Ok(respond(400, None, format!("cannot read body: {error}"))),
    };
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let episode = headers
        .iter()
        .find(|(name, _)| name == EPISODE_HEADER)
        .map(|(_, value)| value.clone())
        .or_else(|| body.get("user").and_then(Value::as_str).map(str::to_string));
    let chat = path.ends_with("/chat/completions");
    if !chat && !path.ends_with("/completions") {
        return Ok(respond(
            404,
            None,
            format!("scripted server: no route {path}"),
        ));
    }
    let rejected = body.as_object().and_then(|fields| {
        state
            .options
            .reject_fields
            .iter()
            .find(|field| fields.contains_key(field.as_str()))
            .cloned()
    });
    let turn = match body.get("messages").and_then(Value::as_array) {
        Some(messages) => messages
            .iter()
            .filter(|message| message.get("role").and_then(Value::as_str) == Some("assistant"))
            .count(),
        None => episode
            .as_ref()
            .and_then(|key| lock(&state.answered).get(key).copied())
            .unwrap_or(0),
    };
    lock(&state.requests).push(RecordedRequest {
        path,
        headers,
        body,
        episode: episode.clone(),
    });
    if let Some(field) = rejected {
        let body = json!({"error": {
            "message": format!("Unrecognized request argument supplied: {field}"),
            "type": "invalid_request_error",
        }});
        return Ok(respond(400, None, body.to_string()));
    }
    if let Some(key) = &episode {
        *lock(&state.answered).entry(key.clone()).or_insert(0) += 1;
    }
    let mut reply = lock(&state.script).reply_for(episode.as_deref(), turn);
    loop {
        match reply {
            ScriptedReply::Delayed {
                delay,
                reply: inner,
            } => {
                tokio::time::sleep(delay).await;
                reply = *inner;
            }
            ScriptedReply::Completion(completion) => {
                let body = if chat {
                    chat_body(&completion)
                } else {
                    completion_body(&completion)
                };
                return Ok(respond(200, None, body.to_string()));
            }
            ScriptedReply::Status {
                status,
                retry_after,
                body,
            } => {
                return Ok(respond(status, retry_after.as_deref(), body));
            }
            ScriptedReply::Raw(body) => return Ok(respond(200, None, body)),
            ScriptedReply::Json(body) => return Ok(respond(200, None, body.to_string())),
        }
    }
}

/// The OpenAI-style model list, shaped like vLLM's.
fn model_list(state: &State) -> Value {
    let data: Vec<Value> = lock(&state.models)
        .iter()
        .map(|(id, max_model_len)| {
            let mut entry = json!({"id": id, "object": "model", "owned_by": "scripted"});
            if let Some(length) = max_model_len {
                entry["max_model_len"] = json!(length);
            }
            entry
        })
        .collect();
    json!({"object": "list", "data": data})
}

fn usage_json(usage: Option<Usage>) -> Value {
    match usage {
        Some(usage) => json!({
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        }),
        None => json!({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}),
    }
}

fn finish_reason(completion: &ScriptedCompletion) -> String {
    completion.finish_reason.clone().unwrap_or_else(|| {
        if completion.tool_calls.is_empty() {
            "stop"
        } else {
            "tool_calls"
        }
        .to_string()
    })
}

fn chat_body(completion: &ScriptedCompletion) -> Value {
    let mut message = Map::new();
    message.insert("role".into(), json!("assistant"));
    message.insert(
        "content".into(),
        if completion.text.is_empty() && !completion.tool_calls.is_empty() {
            Value::Null
        } else {
            json!(completion.text)
        },
    );
    if let Some(reasoning) = &completion.reasoning {
        message.insert("reasoning_content".into(), json!(reasoning));
    }
    let calls: Vec<Value> = completion
        .tool_calls
        .iter()
        .map(|call| json!({"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}))
        .collect();
    message.insert("tool_calls".into(), Value::Array(calls));
    let mut choice = Map::new();
    choice.insert("index".into(), json!(0));
    choice.insert("message".into(), Value::Object(message));
    choice.insert("finish_reason".into(), json!(finish_reason(completion)));
    choice.insert("stop_reason".into(), Value::Null);
    if let Some(tokens) = &completion.logprobs {
        let content: Vec<Value> = tokens
            .iter()
            .map(|token| {
                let tops: Vec<Value> = token
                    .top_logprobs
                    .iter()
                    .map(|top| json!({"token": top.token, "logprob": top.logprob, "bytes": top.token.as_bytes()}))
                    .collect();
                json!({"token": token.token, "logprob": token.logprob, "bytes": token.token.as_bytes(), "top_logprobs": tops})
            })
            .collect();
        choice.insert("logprobs".into(), json!({"content": content}));
    } else {
        choice.insert("logprobs".into(), Value::Null);
    }
    if let Some(ids) = &completion.token_ids {
        choice.insert("token_ids".into(), json!(ids));
    }
    let mut body = Map::new();
    body.insert("id".into(), json!("chatcmpl-scripted"));
    body.insert("object".into(), json!("chat.completion"));
    body.insert("created".into(), json!(0));
    body.insert("model".into(), json!("scripted"));
    body.insert("choices".into(), json!([Value::Object(choice)]));
    body.insert("usage".into(), usage_json(completion.usage));
    body.insert("prompt_logprobs".into(), Value::Null);
    if let Some(ids) = &completion.prompt_token_ids {
        body.insert("prompt_token_ids".into(), json!(ids));
    }
    Value::Object(body)
}

fn completion_body(completion: &ScriptedCompletion) -> Value {
    let mut choice = Map::new();
    choice.insert("index".into(), json!(0));
    choice.insert("text".into(), json!(completion.text));
    choice.insert("finish_reason".into(), json!(finish_reason(completion)));
    choice.insert("stop_reason".into(), Value::Null);
    if let Some(tokens) = &completion.logprobs {
        let mut offset = 0usize;
        let mut offsets = Vec::new();
        for token in tokens {
            offsets.push(offset);
            offset += token.token.len();
        }
        let tops: Vec<Value> = tokens
            .iter()
            .map(|token| {
                let map: Map<String, Value> = token
                    .top_logprobs
                    .iter()
                    .map(|top| (top.token.clone(), json!(top.logprob)))
                    .collect();
                Value::Object(map)
            })
            .collect();
        choice.insert(
            "logprobs".into(),
            json!({
                "tokens": tokens.iter().map(|token| token.token.clone()).collect::<Vec<_>>(),
                "token_logprobs": tokens.iter().map(|token| token.logprob).collect::<Vec<_>>(),
                "top_logprobs": tops,
                "text_offset": offsets,
            }),
        );
    } else {
        choice.insert("logprobs".into(), Value::Null);
    }
    if let Some(ids) = &completion.token_ids {
        choice.insert("token_ids".into(), json!(ids));
    }
    if let Some(ids) = &completion.prompt_token_ids {
        choice.insert("prompt_token_ids".into(), json!(ids));
    }
    json!({
        "id": "cmpl-scripted",
        "object": "text_completion",
        "created": 0,
        "model": "scripted",
        "choices": [Value::Object(choice)],
        "usage": usage_json(completion.usage),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_episode_queue_then_shared_then_fallback() {
        let mut script = Script::new(vec![ScriptedReply::text("shared")])
            .with_episode("a", vec![ScriptedReply::text("a1")])
            .with_fallback(ScriptedReply::text("again"));
        assert_eq!(script.remaining(), 2);
        assert_eq!(script.next_reply(Some("a")), ScriptedReply::text("a1"));
        assert_eq!(script.next_reply(Some("a")), ScriptedReply::text("shared"));
        assert_eq!(script.next_reply(None), ScriptedReply::text("again"));
        let mut empty = Script::default();
        assert!(matches!(
            empty.next_reply(None),
            ScriptedReply::Status { status: 410, .. }
        ));
    }

    #[test]
    fn episode_turns_are_stateless_and_longest_prefix_wins() {
        let mut script = Script::default()
            .with_episode_turns(
                "inst.s0.",
                vec![ScriptedReply::text("t0"), ScriptedReply::text("t1")],
            )
            .with_episode_turns("inst.s0.ab", vec![ScriptedReply::text("long")])
            .with_episode_turns("inst.", vec![ScriptedReply::text("short")])
            .with_episode("inst.s0.exact", vec![ScriptedReply::text("queued")])
            .with_fallback(ScriptedReply::text("fallback"));
        // The same turn gives the same reply every time, for any id under the prefix.
        for _ in 0..2 {
            assert_eq!(
                script.reply_for(Some("inst.s0.1234"), 0),
                ScriptedReply::text("t0")
            );
            assert_eq!(
                script.reply_for(Some("inst.s0.ffff"), 1),
                ScriptedReply::text("t1")
            );
        }
        assert_eq!(
            script.reply_for(Some("inst.s0.1234"), 2),
            ScriptedReply::text("fallback")
        );
        assert_eq!(
            script.reply_for(Some("inst.s0.abcd"), 0),
            ScriptedReply::text("long")
        );
        assert_eq!(
            script.reply_for(Some("inst.s1.0000"), 0),
            ScriptedReply::text("short")
        );
        // An exact per-episode key wins over every prefix; it is a queue (consumed), then the fallback.
        assert_eq!(
            script.reply_for(Some("inst.s0.exact"), 0),
            ScriptedReply::text("queued")
        );
        assert_eq!(
            script.reply_for(Some("inst.s0.exact"), 0),
            ScriptedReply::text("fallback")
        );
        assert_eq!(script.reply_for(None, 0), ScriptedReply::text("fallback"));
        let mut bare = Script::default().with_episode_turns("p", vec![]);
        assert!(matches!(
            bare.reply_for(Some("p1"), 0),
            ScriptedReply::Status { status: 410, .. }
        ));
    }

    fn chat_request(episode: &str, assistants: usize, extra: Value) -> Value {
        let mut messages = vec![json!({"role": "user", "content": "task"})];
        for index in 0..assistants {
            messages.push(json!({"role": "assistant", "content": format!("a{index}")}));
            messages.push(json!({"role": "user", "content": "obs"}));
        }
        let mut body = json!({"model": "m", "user": episode, "messages": messages});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        body
    }

    #[tokio::test]
    async fn server_answers_turns_by_assistant_count_and_rejects_fields() {
        let script = Script::default().with_episode_turns(
            "i.s0.",
            vec![ScriptedReply::text("zero"), ScriptedReply::text("one")],
        );
        let server = ScriptedServer::start_with(
            script,
            ScriptedOptions {
                reject_fields: vec!["return_token_ids".into()],
            },
        )
        .await
        .unwrap();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::new();
        let url = format!("{}/chat/completions", server.base_url());
        let post = |body: Value| {
            let http = http.clone();
            let url = url.clone();
            async move {
                let response = http
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let bytes = response.bytes().await.unwrap();
                (
                    status,
                    serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                )
            }
        };
        let (status, body) = post(chat_request("i.s0.aaaa", 1, json!({}))).await;
        assert_eq!(status, 200);
        assert_eq!(body["choices"][0]["message"]["content"], "one");
        // A re-run (new suffix) at turn 0 gets turn 0's reply again.
        let (_, body) = post(chat_request("i.s0.bbbb", 0, json!({}))).await;
        assert_eq!(body["choices"][0]["message"]["content"], "zero");
        let (status, body) = post(chat_request(
            "i.s0.bbbb",
            0,
            json!({"return_token_ids": true}),
        ))
        .await;
        assert_eq!(status, 400);
        assert_eq!(
            body["error"]["message"],
            "Unrecognized request argument supplied: return_token_ids"
        );
        assert_eq!(body["error"]["type"], "invalid_request_error");
        let (status, _) = post(chat_request("i.s0.bbbb", 2, json!({}))).await;
        assert_eq!(status, 410);
        assert_eq!(server.request_count(), 4);
        // The plain server accepts the field.
        let plain = ScriptedServer::start(Script::new(vec![ScriptedReply::text("ok")]))
            .await
            .unwrap();
        let response = http
            .post(format!("{}/chat/completions", plain.base_url()))
            .body(chat_request("x", 0, json!({"return_token_ids": true})).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
    }

    #[test]
    fn chat_body_shape() {
        let ScriptedReply::Completion(completion) =
            ScriptedReply::tool_calls(&[("bash", "{\"command\":\"ls\"}")])
        else {
            unreachable!()
        };
        let body = chat_body(&completion);
        assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(body["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(
            body["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
            "bash"
        );
    }
}
