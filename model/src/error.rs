//! The errors a model call can end with, each saying what to do about it.

use std::time::Duration;

use crate::retry::is_retryable_status;

/// Why a model call failed; infrastructure failures only (a bad model answer is data, not an error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// No endpoint could be connected to, even after retrying.
    #[error(
        "model endpoint unreachable after {attempts} attempts (last tried {endpoint}): {detail}; \
         check that the server is running and that the base URL (ending in /v1) is right"
    )]
    Unreachable {
        /// The endpoint tried last.
        endpoint: String,
        /// How many attempts were made in total.
        attempts: u32,
        /// The transport error of the last attempt.
        detail: String,
    },
    /// Every attempt ran past the per-request timeout.
    #[error(
        "model request to {endpoint} timed out after {attempts} attempts of {}s each; \
         raise the request timeout, lower max_tokens or add endpoints",
        timeout.as_secs_f64()
    )]
    TimedOut {
        /// The endpoint tried last.
        endpoint: String,
        /// How many attempts were made in total.
        attempts: u32,
        /// The per-request timeout in force.
        timeout: Duration,
    },
    /// The server answered with a non-success HTTP status (a non-retryable one, or a retryable one too often).
    #[error("model endpoint {endpoint} answered HTTP {status} after {attempts} attempts: {body_snippet}; {hint}")]
    HttpStatus {
        /// The endpoint that answered.
        endpoint: String,
        /// The HTTP status code.
        status: u16,
        /// How many attempts were made in total.
        attempts: u32,
        /// The start of the response body.
        body_snippet: String,
        /// What to check for this status.
        hint: &'static str,
    },
    /// The server answered 200 with a body that is not an OpenAI-compatible completion.
    #[error(
        "malformed response body from {endpoint}: {detail}; body starts: {body_snippet}; \
         check that the endpoint serves the OpenAI-compatible API"
    )]
    MalformedResponse {
        /// The endpoint that answered.
        endpoint: String,
        /// What was wrong with it.
        detail: String,
        /// The start of the response body.
        body_snippet: String,
    },
    /// The response body passed the client's size limit; reading stopped there.
    #[error(
        "model response body over {limit} bytes from {endpoint}; reading stopped there. Lower max_tokens or the \
         logprobs asked for, or raise the client's max_response_bytes"
    )]
    ResponseTooLarge {
        /// The endpoint that answered.
        endpoint: String,
        /// The limit in force (`ClientConfig::max_response_bytes`).
        limit: usize,
    },
    /// The configured API-key environment variable is not set.
    #[error("api key environment variable {name} is not set; export it or drop api_key_env from the config")]
    MissingApiKey {
        /// The variable's name.
        name: String,
    },
    /// The client configuration cannot work (no endpoints, a zero limit, a bad URL).
    #[error("invalid model client config: {0}")]
    InvalidConfig(String),
    /// The request cannot be sent as built (e.g. `extra_body` is not a JSON object); nothing was sent.
    #[error("invalid model request: {0}")]
    InvalidRequest(String),
}

impl ModelError {
    /// The HTTP status, when the failure was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ModelError::HttpStatus { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the endpoint refused this request (a 4xx other than 408 Request Timeout and the retryable 429, or an
    /// answer that is not a usable completion) rather than being unreachable, timing out or overloaded: sending
    /// the same request again would fail the same way.
    pub fn is_request_rejected(&self) -> bool {
        match self {
            ModelError::HttpStatus { status, .. } => {
                (400..500).contains(status) && *status != 408 && !is_retryable_status(*status)
            }
            ModelError::MalformedResponse { .. } | ModelError::ResponseTooLarge { .. } => true,
            _ => false,
        }
    }

    /// How many attempts were made before giving up (0 when none could start).
    pub fn attempts(&self) -> u32 {
        match self {
            ModelError::Unreachable { attempts, .. }
            | ModelError::TimedOut { attempts, .. }
            | ModelError::HttpStatus { attempts, .. } => *attempts,
            ModelError::MalformedResponse { .. } | ModelError::ResponseTooLarge { .. } => 1,
            ModelError::MissingApiKey { .. }
            | ModelError::InvalidConfig(_)
            | ModelError::InvalidRequest(_) => 0,
        }
    }
}

/// What to check for a given failing HTTP status.
pub(crate) fn status_hint(status: u16) -> &'static str {
    match status {
        400 => "the server rejected the request: check the model name, the context length and the sampling fields",
        401 | 403 => "check the API key (api_key_env) and its permissions",
        404 => "check that the base URL ends in /v1 and that the model name is served there",
        413 => "the request is too large for the server: shorten the prompt",
        422 => "the server could not use a request field: check extra_body and the sampling fields",
        429 => "the server is rate limiting: lower the concurrency limit or add endpoints",
        500..=599 => "the server failed: check its logs",
        _ => "check the endpoint and the request",
    }
}

/// The first `max_chars` characters of a body, for error messages.
pub(crate) fn snippet(body: &[u8], max_chars: usize) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text.chars().take(max_chars).collect();
    if text.chars().count() > max_chars {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippet_truncates_on_char_boundary() {
        assert_eq!(snippet("héllo".as_bytes(), 2), "hé…");
        assert_eq!(snippet(b"ok", 10), "ok");
    }

    #[test]
    fn messages_are_lowercase_and_name_the_endpoint() {
        let err = ModelError::HttpStatus {
            endpoint: "http://127.0.0.1:1/v1".into(),
            status: 400,
            attempts: 1,
            body_snippet: "bad".into(),
            hint: status_hint(400),
        };
        let text = err.to_string();
        assert!(text.starts_with("model endpoint http://127.0.0.1:1/v1 answered HTTP 400"));
        assert!(!text.ends_with('.'));
        assert_eq!(err.status(), Some(400));
    }

    #[test]
    fn a_refused_request_is_told_from_an_overloaded_or_down_endpoint() {
        let error = |status: u16| ModelError::HttpStatus {
            endpoint: "http://127.0.0.1:1/v1".into(),
            status,
            attempts: 1,
            body_snippet: String::new(),
            hint: status_hint(status),
        };
        for refused in [400, 401, 404, 413, 422] {
            assert!(error(refused).is_request_rejected(), "{refused}");
        }
        for transient in [408, 429, 500, 503] {
            assert!(!error(transient).is_request_rejected(), "{transient}");
        }
        let malformed = ModelError::MalformedResponse {
            endpoint: "e".into(),
            detail: "d".into(),
            body_snippet: String::new(),
        };
        assert!(malformed.is_request_rejected());
        let down = ModelError::Unreachable {
            endpoint: "e".into(),
            attempts: 3,
            detail: "refused".into(),
        };
        assert!(!down.is_request_rejected());
    }
}
