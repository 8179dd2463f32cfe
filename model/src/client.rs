//! The OpenAI-compatible client: one `call` for all three request modes, with retries,
//! round-robin over endpoints and a per-endpoint concurrency limit.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use backon::Retryable;
use bytes::Bytes;

use crate::endpoints::EndpointPool;
use crate::error::{snippet, status_hint, ModelError};
use crate::retry::{is_retryable_status, parse_retry_after, RetryConfig};
use crate::types::{Completion, ModelRequest};
use crate::url::redact_url;
use crate::wire::{parse_reply, request_body, sampling_of, ApiKind, OptionalField, ParsedReply};

/// How many characters of a response body an error message quotes.
const BODY_SNIPPET_CHARS: usize = 500;

/// Where and how to reach the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    /// Base URLs, each ending in `/v1` (e.g. `http://host:8000/v1`); used round-robin.
    pub endpoints: Vec<String>,
    /// The served model name sent as `model`.
    pub model: String,
    /// Name of the environment variable holding the API key, sent as `Authorization: Bearer`
    /// (default none: no header).
    pub api_key_env: Option<String>,
    /// Time allowed for one attempt, from sending to the end of the body (default 600 s).
    pub request_timeout: Duration,
    /// Most requests in flight per endpoint (default 64); more wait for a permit.
    pub max_in_flight_per_endpoint: usize,
    /// Per-endpoint limits, index-aligned with `endpoints`, overriding `max_in_flight_per_endpoint` (default
    /// empty; an endpoint with no entry gets `max_in_flight_per_endpoint`). A call takes the first endpoint in
    /// round-robin order with a free permit.
    pub endpoint_max_in_flight: Vec<usize>,
    /// How long an endpoint that just failed is tried only after the others (default 5 s).
    pub endpoint_cooldown: Duration,
    /// How failures are retried.
    pub retry: RetryConfig,
    /// Largest response body read, in bytes (default [`DEFAULT_MAX_RESPONSE_BYTES`], 32 MiB); reading stops there
    /// and the call fails with [`ModelError::ResponseTooLarge`].
    pub max_response_bytes: usize,
}

/// Default [`ClientConfig::max_response_bytes`]: 32 MiB (a long completion with top logprobs is a few MiB).
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 32 << 20;

impl ClientConfig {
    /// A config for one endpoint and model with every other field at its default.
    pub fn new(endpoint: impl Into<String>, model: impl Into<String>) -> Self {
        ClientConfig {
            endpoints: vec![endpoint.into()],
            model: model.into(),
            api_key_env: None,
            request_timeout: Duration::from_secs(600),
            max_in_flight_per_endpoint: 64,
            endpoint_max_in_flight: Vec::new(),
            endpoint_cooldown: Duration::from_secs(5),
            retry: RetryConfig::default(),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }
}

/// A shareable model client (`Arc` it across episodes; all methods take `&self`).
#[derive(Debug)]
pub struct ModelClient {
    http: reqwest::Client,
    config: ClientConfig,
    pool: EndpointPool,
    api_key: Option<String>,
    in_flight: Mutex<BTreeMap<u64, (String, Instant)>>,
    next_call: AtomicU64,
}

/// A [`ModelClient::call`] that has not returned yet, for "waiting for the model" displays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallInFlight {
    /// The endpoint of the current attempt (redacted; before the first attempt, the first endpoint).
    pub endpoint: String,
    /// Time since the call started: waiting for a concurrency slot, retries and backoff included.
    pub elapsed: Duration,
}

/// Removes a call from [`ModelClient::calls_in_flight`] when it returns or is dropped.
struct InFlightGuard<'a> {
    client: &'a ModelClient,
    id: u64,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut calls) = self.client.in_flight.lock() {
            calls.remove(&self.id);
        }
    }
}

/// Why one attempt failed, before the retry policy decides what to do.
#[derive(Debug)]
enum AttemptFailure {
    Transport(String),
    Timeout,
    Status {
        status: u16,
        body: Bytes,
        retry_after: Option<Duration>,
    },
    Malformed {
        detail: String,
        body: Bytes,
    },
    TooLarge {
        limit: usize,
    },
}

#[derive(Debug)]
struct AttemptError {
    endpoint: String,
    failure: AttemptFailure,
}

impl AttemptFailure {
    /// A one-line description for logs (status and a body snippet, never the whole body).
    fn describe(&self) -> String {
        match self {
            AttemptFailure::Transport(detail) => format!("transport error: {detail}"),
            AttemptFailure::Timeout => "timed out".to_string(),
            AttemptFailure::Status { status, body, .. } => {
                format!("HTTP {status}: {}", snippet(body, 200))
            }
            AttemptFailure::Malformed { detail, .. } => format!("malformed body: {detail}"),
            AttemptFailure::TooLarge { limit } => format!("response body over {limit} bytes"),
        }
    }
}

impl AttemptFailure {
    /// Whether the endpoint is at fault (transport, timeout, a retryable status): the call is retried and the
    /// endpoint marked failed. A malformed or oversized answer is the model's, not retried.
    fn retryable(&self) -> bool {
        match self {
            AttemptFailure::Transport(_) | AttemptFailure::Timeout => true,
            AttemptFailure::Status { status, .. } => is_retryable_status(*status),
            AttemptFailure::Malformed { .. } | AttemptFailure::TooLarge { .. } => false,
        }
    }
}

impl AttemptError {
    fn retryable(&self) -> bool {
        self.failure.retryable()
    }
}

struct AttemptOk {
    endpoint: String,
    reply: ParsedReply,
    latency: Duration,
    /// The sampling fields of the body that got this reply.
    sampling: serde_json::Value,
}

/// The fields a 400 body rejects that `auto` settings may drop: those `request` asks for in `auto` mode, that were
/// in the body just sent (not in `omitted`), and that the body's error message names as a whole word. Only the
/// parsed message is read ([`error_message`]), never the rest of the body: a server that quotes the request (an
/// agent's output included) must not be able to switch a field off.
fn rejected_fields(
    request: &ModelRequest,
    omitted: &[OptionalField],
    body: &[u8],
) -> Vec<OptionalField> {
    let Some(message) = error_message(body) else {
        return Vec::new();
    };
    let message = message.to_ascii_lowercase();
    OptionalField::ALL
        .into_iter()
        .filter(|field| {
            !omitted.contains(field)
                && field.droppable(request)
                && words_naming(*field)
                    .iter()
                    .any(|word| names_word(&message, word))
        })
        .collect()
}

/// The words an error message may use for `field`: its name, and `top_logprobs` for logprobs (sent with it on
/// the chat path).
fn words_naming(field: OptionalField) -> &'static [&'static str] {
    match field {
        OptionalField::Logprobs => &["logprobs", "top_logprobs"],
        OptionalField::ReturnTokenIds => &["return_token_ids"],
    }
}

/// The error message of an error body: `error.message`, else a top-level `message` or `detail`, when a string.
fn error_message(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let found = [
        value.get("error").and_then(|error| error.get("message")),
        value.get("message"),
        value.get("detail"),
    ]
    .into_iter()
    .flatten()
    .find_map(|found| found.as_str().map(str::to_owned));
    found
}

/// Whether `text` holds `word` as a whole word: not inside a longer identifier (letters, digits, `_`).
fn names_word(text: &str, word: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(word).any(|(start, _)| {
        let before = text[..start].chars().next_back();
        let after = text[start + word.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

impl ModelClient {
    /// Builds a client; fails when the config cannot work or the API-key variable is unset.
    pub fn new(config: ClientConfig) -> Result<Self, ModelError> {
        if config.endpoints.is_empty() {
            return Err(ModelError::InvalidConfig("no endpoints given".into()));
        }
        for endpoint in &config.endpoints {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(ModelError::InvalidConfig(format!(
                    "endpoint {} is not an http:// or https:// URL",
                    redact_url(endpoint)
                )));
            }
        }
        if config.max_in_flight_per_endpoint == 0 {
            return Err(ModelError::InvalidConfig(
                "max_in_flight_per_endpoint is 0, so no request could ever be sent".into(),
            ));
        }
        if let Some(index) = config
            .endpoint_max_in_flight
            .iter()
            .position(|&limit| limit == 0)
        {
            return Err(ModelError::InvalidConfig(format!(
                "endpoint_max_in_flight[{index}] (endpoint {}) is 0, so no request could ever be sent to it; \
                 use at least 1 or remove the endpoint",
                config
                    .endpoints
                    .get(index)
                    .map_or_else(|| "(none)".to_owned(), |url| redact_url(url))
            )));
        }
        if config.endpoint_max_in_flight.len() > config.endpoints.len() {
            return Err(ModelError::InvalidConfig(format!(
                "endpoint_max_in_flight has {} limits for {} endpoints; give one limit per endpoint",
                config.endpoint_max_in_flight.len(),
                config.endpoints.len()
            )));
        }
        if config.retry.max_attempts == 0 {
            return Err(ModelError::InvalidConfig(
                "retry.max_attempts is 0; use 1 to disable retries".into(),
            ));
        }
        let api_key = match &config.api_key_env {
            None => None,
            Some(name) => match std::env::var(name) {
                Ok(key) if !key.is_empty() => Some(key),
                _ => return Err(ModelError::MissingApiKey { name: name.clone() }),
            },
        };
        // The only crypto stack we ship is ring; installing it twice is harmless (the error is ignored).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder().build().map_err(|error| {
            ModelError::InvalidConfig(format!("cannot build HTTP client: {error}"))
        })?;
        let pool = EndpointPool::new(
            &config.endpoints,
            &config.endpoint_max_in_flight,
            config.max_in_flight_per_endpoint,
            config.endpoint_cooldown,
        );
        Ok(ModelClient {
            http,
            config,
            pool,
            api_key,
            in_flight: Mutex::new(BTreeMap::new()),
            next_call: AtomicU64::new(0),
        })
    }

    /// The calls of this client that have not returned yet, oldest first.
    pub fn calls_in_flight(&self) -> Vec<CallInFlight> {
        let Ok(calls) = self.in_flight.lock() else {
            return Vec::new();
        };
        calls
            .values()
            .map(|(endpoint, started)| CallInFlight {
                endpoint: endpoint.clone(),
                elapsed: started.elapsed(),
            })
            .collect()
    }

    fn enter_call(&self) -> InFlightGuard<'_> {
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        let endpoint = self
            .config
            .endpoints
            .first()
            .map(|url| redact_url(url))
            .unwrap_or_default();
        if let Ok(mut calls) = self.in_flight.lock() {
            calls.insert(id, (endpoint, Instant::now()));
        }
        InFlightGuard { client: self, id }
    }

    fn note_attempt_endpoint(&self, call: u64, endpoint: &str) {
        if let Ok(mut calls) = self.in_flight.lock() {
            if let Some(entry) = calls.get_mut(&call) {
                entry.0 = endpoint.to_owned();
            }
        }
    }

    /// The config this client was built with.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The context window the server reports for the configured model: `GET {first endpoint}/models` (API key
    /// and request timeout as for calls, no retries), the entry whose `id` is [`ClientConfig::model`], its
    /// `max_model_len` (vLLM), else `context_length` or `context_window`. `None` when the server lists no such
    /// model or gives no length.
    pub async fn served_context_window(&self) -> Result<Option<u64>, ModelError> {
        let Some(base) = self.config.endpoints.first() else {
            return Err(ModelError::InvalidConfig("no endpoints given".into()));
        };
        let endpoint = redact_url(base);
        let split = base.find(['?', '#']).unwrap_or(base.len());
        let url = format!(
            "{}/models{}",
            base[..split].trim_end_matches('/'),
            &base[split..]
        );
        let mut builder = self.http.get(url).timeout(self.config.request_timeout);
        if let Some(key) = &self.api_key {
            builder = builder.bearer_auth(key);
        }
        let failed = |failure: AttemptFailure| {
            self.final_error(
                AttemptError {
                    endpoint: endpoint.clone(),
                    failure,
                },
                1,
            )
        };
        let response = builder
            .send()
            .await
            .map_err(|error| failed(transport_failure(error)))?;
        let status = response.status().as_u16();
        let body = read_body_at_most(response, self.config.max_response_bytes)
            .await
            .map_err(failed)?;
        if !(200..300).contains(&status) {
            return Err(failed(AttemptFailure::Status {
                status,
                body,
                retry_after: None,
            }));
        }
        let listing: serde_json::Value = serde_json::from_slice(&body).map_err(|error| {
            failed(AttemptFailure::Malformed {
                detail: format!("the model list is not JSON: {error}"),
                body: body.clone(),
            })
        })?;
        Ok(context_window_of(&listing, &self.config.model))
    }

    /// Sends one request (chat with native tools, chat with text-format calls, or a raw completion),
    /// retrying 429 / 5xx / transport errors / timeouts with jittered backoff.
    ///
    /// Dropping the returned future cancels the call and frees its concurrency permit. Time spent
    /// waiting for a permit does not count against the request timeout.
    ///
    /// Fields asked for in `auto` mode (`logprobs`, `return_token_ids`) are dropped for an endpoint that answered
    /// HTTP 400 whose error message names them: the attempt is re-sent at once without them (no retry spent) and,
    /// once that re-send succeeded, the endpoint remembers it for the client's life. [`Completion::sampling`] is what the answering request carried.
    pub async fn call(&self, request: &ModelRequest) -> Result<Completion, ModelError> {
        if let Some(extra) = &request.sampling.extra_body {
            if !extra.is_object() {
                return Err(ModelError::InvalidRequest(format!(
                    "extra_body must be a JSON object, got {extra}"
                )));
            }
        }
        let kind = ApiKind::of(&request.input);
        let guard = self.enter_call();
        let call_id = guard.id;
        let started = Instant::now();
        let attempts = AtomicU32::new(0);
        let last_failed: Mutex<Option<usize>> = Mutex::new(None);
        let retry = &self.config.retry;

        let outcome = (|| async {
            attempts.fetch_add(1, Ordering::Relaxed);
            let avoid = last_failed.lock().ok().and_then(|guard| *guard);
            let result = self
                .attempt(kind, request, avoid, &last_failed, call_id)
                .await;
            result
        })
        .retry(retry.backoff())
        .when(AttemptError::retryable)
        .adjust(|error: &AttemptError, delay| {
            let server_delay = match &error.failure {
                AttemptFailure::Status { retry_after, .. } => *retry_after,
                _ => None,
            };
            // `None` means the schedule is exhausted; keep it so, whatever the server asked.
            delay.map(|backoff| match server_delay {
                Some(wait) => wait.min(retry.max_retry_after),
                None => backoff,
            })
        })
        .notify(|error: &AttemptError, delay| {
            tracing::warn!(
                endpoint = %error.endpoint,
                failure = %error.failure.describe(),
                delay_ms = delay.as_millis() as u64,
                "model call failed; retrying"
            );
        })
        .await;

        let attempts = attempts.load(Ordering::Relaxed);
        match outcome {
            Ok(ok) => Ok(Completion {
                text: ok.reply.text,
                reasoning: ok.reply.reasoning,
                tool_calls: ok.reply.tool_calls,
                finish_reason: ok.reply.finish_reason,
                usage: ok.reply.usage,
                logprobs: ok.reply.logprobs,
                token_ids: ok.reply.token_ids,
                prompt_token_ids: ok.reply.prompt_token_ids,
                extra: ok.reply.extra,
                endpoint: ok.endpoint,
                latency: ok.latency,
                total_duration: started.elapsed(),
                attempts,
                sampling: ok.sampling,
            }),
            Err(error) => Err(self.final_error(error, attempts)),
        }
    }

    fn final_error(&self, error: AttemptError, attempts: u32) -> ModelError {
        let endpoint = error.endpoint;
        match error.failure {
            AttemptFailure::Transport(detail) => ModelError::Unreachable {
                endpoint,
                attempts,
                detail,
            },
            AttemptFailure::Timeout => ModelError::TimedOut {
                endpoint,
                attempts,
                timeout: self.config.request_timeout,
            },
            AttemptFailure::Status { status, body, .. } => ModelError::HttpStatus {
                endpoint,
                status,
                attempts,
                body_snippet: snippet(&body, BODY_SNIPPET_CHARS),
                hint: status_hint(status),
            },
            AttemptFailure::Malformed { detail, body } => ModelError::MalformedResponse {
                endpoint,
                detail,
                body_snippet: snippet(&body, BODY_SNIPPET_CHARS),
            },
            AttemptFailure::TooLarge { limit } => ModelError::ResponseTooLarge { endpoint, limit },
        }
    }

    async fn attempt(
        &self,
        kind: ApiKind,
        request: &ModelRequest,
        avoid: Option<usize>,
        last_failed: &Mutex<Option<usize>>,
        call_id: u64,
    ) -> Result<AttemptOk, AttemptError> {
        let Some(lease) = self.pool.lease(avoid).await else {
            return Err(AttemptError {
                endpoint: String::from("(none)"),
                failure: AttemptFailure::Transport("no endpoint could be leased".into()),
            });
        };
        // Reported (completion, errors, logs) without credentials; the request goes to the real URL.
        let endpoint = redact_url(&lease.endpoint.base_url);
        self.note_attempt_endpoint(call_id, &endpoint);
        let url = lease.endpoint.url(kind.path());
        // Fields this attempt re-sends without after a 400 named them; the endpoint is marked only once a re-send
        // without them succeeded.
        let mut dropped: Vec<OptionalField> = Vec::new();
        loop {
            let omit: Vec<OptionalField> = OptionalField::ALL
                .into_iter()
                .filter(|&field| {
                    field.droppable(request)
                        && (lease.endpoint.rejects(field) || dropped.contains(&field))
                })
                .collect();
            let body = request_body(&self.config.model, request, &omit);
            let sampling = sampling_of(&body);
            let sent = Instant::now();
            let result = self.send(&url, Bytes::from(body.to_string()), kind).await;
            let latency = sent.elapsed();
            match result {
                Ok(reply) => {
                    self.pool.mark_ok(lease.index);
                    for &field in &dropped {
                        if lease.endpoint.mark_rejects(field) {
                            tracing::info!(
                                endpoint = %endpoint,
                                field = field.name(),
                                "endpoint rejects a field asked for by default; calls to it go without it"
                            );
                        }
                    }
                    return Ok(AttemptOk {
                        endpoint,
                        reply,
                        latency,
                        sampling,
                    });
                }
                Err(failure) => {
                    let rejected = match &failure {
                        AttemptFailure::Status {
                            status: 400, body, ..
                        } => rejected_fields(request, &omit, body),
                        _ => Vec::new(),
                    };
                    if !rejected.is_empty() {
                        // The endpoint may not take a field we only asked for by default: re-send at once
                        // without it. Each pass drops at least one more field, so this ends.
                        tracing::info!(
                            endpoint = %endpoint,
                            fields = ?rejected.iter().map(|field| field.name()).collect::<Vec<_>>(),
                            detail = %failure.describe(),
                            "endpoint refused a field asked for by default; re-sending without it"
                        );
                        dropped.extend(rejected);
                        continue;
                    }
                    if failure.retryable() {
                        self.pool.mark_failed(lease.index);
                        if let Ok(mut guard) = last_failed.lock() {
                            *guard = Some(lease.index);
                        }
                    }
                    return Err(AttemptError { endpoint, failure });
                }
            }
        }
    }

    async fn send(
        &self,
        url: &str,
        body: Bytes,
        kind: ApiKind,
    ) -> Result<ParsedReply, AttemptFailure> {
        let mut builder = self
            .http
            .post(url)
            .timeout(self.config.request_timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(key) = &self.api_key {
            builder = builder.bearer_auth(key);
        }
        let response = builder.send().await.map_err(transport_failure)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, SystemTime::now()));
        let body = read_body_at_most(response, self.config.max_response_bytes).await?;
        if !(200..300).contains(&status) {
            return Err(AttemptFailure::Status {
                status,
                body,
                retry_after,
            });
        }
        parse_reply(kind, &body).map_err(|detail| AttemptFailure::Malformed { detail, body })
    }
}

/// The context length of `model` in an OpenAI-style model list (`{"data": [{"id": …, "max_model_len": …}]}`).
fn context_window_of(listing: &serde_json::Value, model: &str) -> Option<u64> {
    let entry = listing
        .get("data")?
        .as_array()?
        .iter()
        .find(|entry| entry.get("id").and_then(serde_json::Value::as_str) == Some(model))?;
    ["max_model_len", "context_length", "context_window"]
        .iter()
        .find_map(|key| entry.get(*key).and_then(serde_json::Value::as_u64))
}

/// Reads a response body chunk by chunk, failing as soon as it passes `limit` bytes: at most `limit` bytes are ever
/// held, whatever the server sends (with or without a Content-Length).
async fn read_body_at_most(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Bytes, AttemptFailure> {
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(transport_failure)? {
        if body.len() + chunk.len() > limit {
            return Err(AttemptFailure::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn transport_failure(error: reqwest::Error) -> AttemptFailure {
    if error.is_timeout() {
        return AttemptFailure::Timeout;
    }
    // The endpoint is reported beside the detail, redacted; reqwest's own message would repeat the full URL.
    let error = error.without_url();
    let mut detail = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    AttemptFailure::Transport(detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_window_is_read_from_the_model_list() {
        let listing = serde_json::json!({"object": "list", "data": [
            {"id": "other", "max_model_len": 4096},
            {"id": "served", "max_model_len": 8192, "context_length": 1},
            {"id": "router", "context_length": 32768},
            {"id": "bare"}
        ]});
        assert_eq!(context_window_of(&listing, "served"), Some(8192));
        assert_eq!(context_window_of(&listing, "router"), Some(32768));
        assert_eq!(context_window_of(&listing, "bare"), None);
        assert_eq!(context_window_of(&listing, "missing"), None);
        assert_eq!(context_window_of(&serde_json::json!({}), "served"), None);
    }

    #[test]
    fn config_errors_are_named() {
        let mut config = ClientConfig::new("ftp://x", "m");
        assert!(
            matches!(ModelClient::new(config.clone()), Err(ModelError::InvalidConfig(text)) if text.contains("ftp://x"))
        );
        config.endpoints = vec![];
        assert!(ModelClient::new(config.clone()).is_err());
        let mut config = ClientConfig::new("http://127.0.0.1:9/v1", "m");
        config.api_key_env = Some("SWE_ENV_MODEL_TEST_SURELY_UNSET".into());
        let error = ModelClient::new(config).unwrap_err();
        assert!(error
            .to_string()
            .contains("SWE_ENV_MODEL_TEST_SURELY_UNSET"));
    }

    #[test]
    fn a_field_is_named_only_as_a_whole_word_of_the_error_message() {
        assert!(names_word(
            "unrecognized argument: return_token_ids",
            "return_token_ids"
        ));
        assert!(names_word("'logprobs' is not supported", "logprobs"));
        assert!(names_word("top_logprobs.", "top_logprobs"));
        assert!(!names_word("no_logprobs_here", "logprobs"));
        assert!(!names_word("top_logprobs", "logprobs"));
        assert!(!names_word("return_token_ids2", "return_token_ids"));
        let message = |body: &str| error_message(body.as_bytes());
        assert_eq!(
            message(r#"{"error":{"message":"bad logprobs"},"input":"x"}"#).as_deref(),
            Some("bad logprobs")
        );
        assert_eq!(message(r#"{"message":"m"}"#).as_deref(), Some("m"));
        assert_eq!(message(r#"{"detail":"d"}"#).as_deref(), Some("d"));
        assert_eq!(message(r#"{"detail":[{"msg":"logprobs"}]}"#), None);
        assert_eq!(message("logprobs is not JSON"), None);
    }

    fn one_attempt(endpoint: String) -> ClientConfig {
        let mut config = ClientConfig::new(endpoint, "m");
        config.retry.max_attempts = 1;
        config.request_timeout = Duration::from_secs(10);
        config
    }

    /// A credential in the endpoint URL is used for the request (reqwest sends user-info as basic auth) but
    /// never reported: not in the completion's endpoint, not in an error.
    #[tokio::test]
    async fn credentials_in_the_endpoint_url_are_used_but_not_reported() {
        use crate::scripted::{Script, ScriptedReply, ScriptedServer};
        let server = ScriptedServer::start(Script::new(vec![ScriptedReply::text("ok")]))
            .await
            .unwrap();
        let plain = server.base_url();
        let secret = plain.replacen("http://", "http://user:s3cret@", 1);
        let client = ModelClient::new(one_attempt(secret)).unwrap();
        let completion = client
            .call(&crate::ModelRequest::prompt("x"))
            .await
            .unwrap();
        assert_eq!(completion.endpoint, plain);
        // base64("user:s3cret")
        assert_eq!(
            server.requests()[0].header("authorization"),
            Some("Basic dXNlcjpzM2NyZXQ=")
        );

        // Nothing listens on port 9 of the loopback: a transport error, reported without the secrets.
        let client = ModelClient::new(one_attempt(
            "http://user:s3cret@127.0.0.1:9/v1?api_key=k3y".into(),
        ))
        .unwrap();
        let error = client
            .call(&crate::ModelRequest::prompt("x"))
            .await
            .unwrap_err();
        let text = format!("{error} {error:?}");
        assert!(text.contains("127.0.0.1:9/v1"), "{text}");
        assert!(!text.contains("s3cret") && !text.contains("k3y"), "{text}");
    }

    /// `served_context_window` asks the real (scripted) server's `/v1/models` with the API key and picks the
    /// configured model's entry; no entry or no length is `None`; a server without the route is an error.
    #[tokio::test]
    async fn served_context_window_reads_the_servers_model_list() {
        use crate::scripted::{Script, ScriptedServer};
        let server = ScriptedServer::start(Script::default()).await.unwrap();
        let key_var = "SWE_ENV_MODEL_TEST_CONTEXT_WINDOW_KEY";
        std::env::set_var(key_var, "k-123");
        let mut config = ClientConfig::new(server.base_url(), "served");
        config.api_key_env = Some(key_var.into());
        let client = ModelClient::new(config).unwrap();
        assert_eq!(client.served_context_window().await.unwrap(), None);
        server.serve_model("other", Some(4096));
        server.serve_model("served", Some(8192));
        assert_eq!(client.served_context_window().await.unwrap(), Some(8192));
        assert_eq!(
            server.model_list_requests(),
            [
                Some("Bearer k-123".to_owned()),
                Some("Bearer k-123".to_owned())
            ]
        );
        assert_eq!(
            server.request_count(),
            0,
            "a model list is not a completion"
        );

        let missing = ModelClient::new(one_attempt("http://127.0.0.1:9/v1".into())).unwrap();
        let error = missing.served_context_window().await.unwrap_err();
        assert!(matches!(error, ModelError::Unreachable { .. }), "{error}");
    }

    /// A call shows in `calls_in_flight` with its endpoint while the server is still answering, and not after.
    #[tokio::test]
    async fn a_slow_call_is_listed_in_flight_until_it_returns() {
        use crate::scripted::{Script, ScriptedReply, ScriptedServer};
        let server = ScriptedServer::start(Script::new(vec![ScriptedReply::Delayed {
            delay: Duration::from_millis(800),
            reply: Box::new(ScriptedReply::text("ok")),
        }]))
        .await
        .unwrap();
        let client = ModelClient::new(one_attempt(server.base_url())).unwrap();
        assert!(client.calls_in_flight().is_empty());
        let request = crate::ModelRequest::prompt("x");
        let call = client.call(&request);
        let watch = async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            client.calls_in_flight()
        };
        let (completion, during) = tokio::join!(call, watch);
        assert_eq!(completion.unwrap().text, "ok");
        assert_eq!(during.len(), 1, "{during:?}");
        assert_eq!(during[0].endpoint, server.base_url());
        assert!(
            during[0].elapsed >= Duration::from_millis(300),
            "{during:?}"
        );
        assert!(client.calls_in_flight().is_empty());
    }
}
