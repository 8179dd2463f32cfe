//! Prometheus metrics of `swe-env serve` (`--metrics-listen ADDR`): `GET /metrics` answers the OpenMetrics text
//! exposition of the server's counters, gauges and histograms (prometheus-client); any other path or method is 404.
//! No authentication: bind it to loopback or a private network. The endpoint stops with the server's drain.
//!
//! Every label set is bounded: tools, statuses, outcomes, gRPC codes and methods are closed sets (their children are
//! made once, up front, for the hot paths); the `task` label of the pool gauge takes the ids of the server's own task
//! list, and any other task (inline `task_json`) is reported as `other`.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `swe_env_episodes_live` | gauge | |
//! | `swe_env_episodes_created_total` | counter | |
//! | `swe_env_episodes_ended_total` | counter | `status` |
//! | `swe_env_container_starts_total` | counter | `source` (`pooled`, `fresh`) |
//! | `swe_env_container_start_duration_seconds` | histogram | `source` |
//! | `swe_env_step_duration_seconds` | histogram | `tool` (`bash`, `edit`, `create`, `submit`, `invalid`) |
//! | `swe_env_rpc_errors_total` | counter | `method`, `code` |
//! | `swe_env_gradings_total` | counter | `outcome` (`resolved`, `unresolved`, `error`) |
//! | `swe_env_grading_duration_seconds` | histogram | |
//! | `swe_env_model_calls_total` | counter | `outcome` (`ok`, `error`) |
//! | `swe_env_model_tokens_total` | counter | `kind` (`prompt`, `completion`) |
//! | `swe_env_pool_ready_containers` | gauge | `task` |
//! | `swe_env_pool_warming_containers` | gauge | |
//! | `swe_env_pool_fills_total` | counter | `outcome` (`ok`, `error`) |

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use swe_env_tools::ToolName;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::state::ServerState;
use crate::trajectory::EpisodeStatus;

/// Content type of the exposition (OpenMetrics text 1.0.0, which Prometheus scrapes natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Label value of pool containers of a task that is not in the server's task list (an inline `task_json`).
pub const OTHER_TASK: &str = "other";

/// One label.
type Label = [(&'static str, &'static str); 1];
/// Two labels.
type Labels2 = [(&'static str, &'static str); 2];
/// A family of histograms sharing one bucket layout.
type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

/// Where an episode's container came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartSource {
    /// Taken from a warm pool.
    Pooled,
    /// Started for the episode (cold).
    Fresh,
}

impl StartSource {
    fn index(self) -> usize {
        match self {
            Self::Pooled => 0,
            Self::Fresh => 1,
        }
    }
}

/// How a grading ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GradingOutcome {
    /// The patch resolves the task.
    Resolved,
    /// Graded, not resolved.
    Unresolved,
    /// The grading failed (ungradable task, engine error, cancelled).
    Error,
}

/// The label values of [`StartSource`], by index.
const SOURCES: [&str; 2] = ["pooled", "fresh"];
/// The label values of the `tool` label: the four tools, then `invalid` (a step whose action did not parse).
const TOOLS: [&str; 5] = ["bash", "edit", "create", "submit", "invalid"];
/// The label values of [`GradingOutcome`], by index.
const GRADING_OUTCOMES: [&str; 3] = ["resolved", "unresolved", "error"];

/// Bucket bounds of step latency, seconds (a step is sub-millisecond to minutes, its command's timeout).
const STEP_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    120.0,
];
/// Bucket bounds of container start latency, seconds.
const START_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Bucket bounds of grading duration, seconds.
const GRADING_BUCKETS: [f64; 11] = [
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

fn step_histogram() -> Histogram {
    Histogram::new(STEP_BUCKETS)
}

fn start_histogram() -> Histogram {
    Histogram::new(START_BUCKETS)
}

/// The metrics a server records. Cheap to update: the children of closed label sets are made up front, so a step
/// costs one histogram observation (no allocation, no lock held across an await).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    episodes_live: Gauge,
    episodes_created: Counter,
    episodes_ended: Family<Label, Counter>,
    container_starts: [Counter; 2],
    container_start_seconds: [Histogram; 2],
    step_seconds: [Histogram; 5],
    rpc_errors: Family<Labels2, Counter>,
    gradings: [Counter; 3],
    grading_seconds: Histogram,
    model_calls_ok: Counter,
    model_calls_error: Counter,
    prompt_tokens: Counter,
    completion_tokens: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let episodes_live = Gauge::default();
        registry.register(
            "swe_env_episodes_live",
            "Episodes live now (started, not yet ended)",
            episodes_live.clone(),
        );
        let episodes_created = Counter::default();
        registry.register(
            "swe_env_episodes_created",
            "Episodes started (CreateEpisode and RunEpisode)",
            episodes_created.clone(),
        );
        let episodes_ended = Family::<Label, Counter>::default();
        registry.register(
            "swe_env_episodes_ended",
            "Episodes ended, by final status",
            episodes_ended.clone(),
        );
        let starts = Family::<Label, Counter>::default();
        registry.register(
            "swe_env_container_starts",
            "Episode containers started: taken from a warm pool (pooled) or started for the episode (fresh)",
            starts.clone(),
        );
        let start_seconds: HistogramFamily<Label> = Family::new_with_constructor(start_histogram);
        registry.register_with_unit(
            "swe_env_container_start_duration",
            "Time from admission to a running episode container, by source",
            Unit::Seconds,
            start_seconds.clone(),
        );
        let step_family: HistogramFamily<Label> = Family::new_with_constructor(step_histogram);
        registry.register_with_unit(
            "swe_env_step_duration",
            "Latency of gRPC Steps (the tool's run and its recording), by tool; `invalid` is an action that did \
             not parse",
            Unit::Seconds,
            step_family.clone(),
        );
        let rpc_errors = Family::<Labels2, Counter>::default();
        registry.register(
            "swe_env_rpc_errors",
            "gRPC calls answered with an error, by method and status code",
            rpc_errors.clone(),
        );
        let gradings = Family::<Label, Counter>::default();
        registry.register(
            "swe_env_gradings",
            "Gradings (Grade, grade on submit, RunEpisode grade), by outcome",
            gradings.clone(),
        );
        let grading_seconds = Histogram::new(GRADING_BUCKETS);
        registry.register_with_unit(
            "swe_env_grading_duration",
            "Duration of gradings",
            Unit::Seconds,
            grading_seconds.clone(),
        );
        let model_calls = Family::<Label, Counter>::default();
        registry.register(
            "swe_env_model_calls",
            "Model calls of RunEpisode: answered (ok), or failed after the client's retries (error)",
            model_calls.clone(),
        );
        let tokens = Family::<Label, Counter>::default();
        registry.register(
            "swe_env_model_tokens",
            "Tokens of RunEpisode model calls as the endpoint reported them, by kind",
            tokens.clone(),
        );
        let child = |family: &Family<Label, Counter>, name, value| {
            family.get_or_create_owned(&[(name, value)])
        };
        Self {
            registry,
            episodes_live,
            episodes_created,
            container_starts: SOURCES.map(|s| child(&starts, "source", s)),
            container_start_seconds: SOURCES
                .map(|s| start_seconds.get_or_create_owned(&[("source", s)])),
            step_seconds: TOOLS.map(|t| step_family.get_or_create_owned(&[("tool", t)])),
            episodes_ended,
            rpc_errors,
            gradings: GRADING_OUTCOMES.map(|o| child(&gradings, "outcome", o)),
            grading_seconds,
            model_calls_ok: child(&model_calls, "outcome", "ok"),
            model_calls_error: child(&model_calls, "outcome", "error"),
            prompt_tokens: child(&tokens, "kind", "prompt"),
            completion_tokens: child(&tokens, "kind", "completion"),
        }
    }

    /// An episode started (its container is running and it is registered).
    pub fn episode_started(&self, source: StartSource, start: Duration) {
        self.episodes_created.inc();
        self.episodes_live.inc();
        self.container_starts[source.index()].inc();
        self.container_start_seconds[source.index()].observe(start.as_secs_f64());
    }

    /// A live episode is being ended (no longer live, whatever happens while it is finished).
    pub fn episode_ending(&self) {
        self.episodes_live.dec();
    }

    /// An episode ended with `status` (after [`Self::episode_ending`]).
    pub fn episode_ended(&self, status: EpisodeStatus) {
        self.episodes_ended
            .get_or_create(&[("status", status.as_str())])
            .inc();
    }

    /// A recorded step of `tool` (`None`: the action did not parse) took `elapsed`.
    pub fn step(&self, tool: Option<&str>, elapsed: Duration) {
        let index = match tool.and_then(ToolName::from_name) {
            Some(ToolName::Bash) => 0,
            Some(ToolName::Edit) => 1,
            Some(ToolName::Create) => 2,
            Some(ToolName::Submit) => 3,
            None => 4,
        };
        self.step_seconds[index].observe(elapsed.as_secs_f64());
    }

    /// A call of `method` answered `code`.
    pub fn rpc_error(&self, method: &'static str, code: tonic::Code) {
        self.rpc_errors
            .get_or_create(&[("method", method), ("code", code_name(code))])
            .inc();
    }

    /// A grading ended.
    pub fn grading(&self, outcome: GradingOutcome, elapsed: Duration) {
        let index = match outcome {
            GradingOutcome::Resolved => 0,
            GradingOutcome::Unresolved => 1,
            GradingOutcome::Error => 2,
        };
        self.gradings[index].inc();
        self.grading_seconds.observe(elapsed.as_secs_f64());
    }

    /// A RunEpisode model call answered, with the tokens the endpoint reported.
    pub fn model_call(&self, prompt_tokens: Option<u64>, completion_tokens: Option<u64>) {
        self.model_calls_ok.inc();
        self.prompt_tokens.inc_by(prompt_tokens.unwrap_or(0));
        self.completion_tokens
            .inc_by(completion_tokens.unwrap_or(0));
    }

    /// A RunEpisode model call failed after the client's retries.
    pub fn model_call_failed(&self) {
        self.model_calls_error.inc();
    }

    /// The exposition: these metrics, then those read from `state` at scrape time (pools) when given, then
    /// `# EOF`.
    pub fn encode(&self, state: Option<&ServerState>) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode_registry(&mut text, &self.registry)?;
        if let Some(state) = state {
            let mut scraped = Registry::default();
            scraped.register_collector(Box::new(PoolCollector::of(state)));
            prometheus_client::encoding::text::encode_registry(&mut text, &scraped)?;
        }
        prometheus_client::encoding::text::encode_eof(&mut text)?;
        Ok(text)
    }
}

/// The gRPC name of a status code (`NOT_FOUND`).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The pool's state at scrape time: ready containers per task (tasks outside the server's task list as `other`),
/// containers being prepared, and fills.
#[derive(Debug)]
struct PoolCollector {
    ready: BTreeMap<String, usize>,
    warming: usize,
    fills_ok: u64,
    fills_failed: u64,
}

impl PoolCollector {
    fn of(state: &ServerState) -> Self {
        let mut collector = Self {
            ready: BTreeMap::new(),
            warming: 0,
            fills_ok: 0,
            fills_failed: 0,
        };
        if let Some(pool) = &state.pool {
            for (task, ready) in pool.ready_by_task() {
                let label = if state.tasks.get(&task).is_some() {
                    task
                } else {
                    OTHER_TASK.to_owned()
                };
                *collector.ready.entry(label).or_default() += ready;
            }
            collector.warming = pool.counts().1;
            (collector.fills_ok, collector.fills_failed) = pool.fill_counts();
        }
        collector
    }
}

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut ready = encoder.encode_descriptor(
            "swe_env_pool_ready_containers",
            "Warm containers ready to be taken, by task (tasks outside the server's task list as `other`)",
            None,
            MetricType::Gauge,
        )?;
        for (task, count) in &self.ready {
            let labels = [("task", task.as_str())];
            ready.encode_family(&labels)?.encode_gauge(count)?;
        }
        let warming = ConstGauge::new(self.warming as i64);
        warming.encode(encoder.encode_descriptor(
            "swe_env_pool_warming_containers",
            "Warm containers being prepared",
            None,
            warming.metric_type(),
        )?)?;
        let mut fills = encoder.encode_descriptor(
            "swe_env_pool_fills",
            "Warm-pool containers prepared (ok) or whose preparation failed (error)",
            None,
            MetricType::Counter,
        )?;
        for (outcome, count) in [("ok", self.fills_ok), ("error", self.fills_failed)] {
            let labels = [("outcome", outcome)];
            ConstCounter::new(count).encode(fills.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for metrics on {address}: {source}")]
pub struct MetricsBindError {
    /// The address.
    pub address: String,
    /// The OS error.
    pub source: std::io::Error,
}

/// What answers a scrape: the exposition, or `None` once the server is gone.
pub type Render = Arc<dyn Fn() -> Option<Result<String, std::fmt::Error>> + Send + Sync>;

/// The [`Render`] of a server: its metrics and its pools, read at scrape time.
pub fn render_state(state: Weak<ServerState>) -> Render {
    Arc::new(move || {
        state
            .upgrade()
            .map(|state| state.metrics.encode(Some(&state)))
    })
}

/// The running metrics endpoint.
pub struct MetricsServer {
    /// The bound address (with the real port when configured with port 0).
    pub addr: SocketAddr,
    handle: JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `address` and serves `GET /metrics` (answered by `render`) until `stop` is cancelled.
    pub async fn start(
        address: &str,
        render: Render,
        stop: CancellationToken,
    ) -> Result<Self, MetricsBindError> {
        let bind_error = |source| MetricsBindError {
            address: address.to_owned(),
            source,
        };
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let router = Router::new()
            .route("/metrics", get(scrape).fallback(not_found))
            .fallback(not_found)
            .with_state(render);
        let handle = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
            {
                warn!(%error, "the metrics endpoint stopped with an error");
            }
        });
        info!(%addr, "serving metrics (http, GET /metrics)");
        Ok(Self { addr, handle })
    }

    /// Waits (at most `timeout`) for the endpoint to stop after its token was cancelled.
    pub async fn stopped(self, timeout: Duration) {
        let abort = self.handle.abort_handle();
        if tokio::time::timeout(timeout, self.handle).await.is_err() {
            warn!("metrics connections still open after the drain; closing them");
            abort.abort();
        }
    }
}

async fn scrape(
    axum::extract::State(render): axum::extract::State<Render>,
) -> axum::response::Response {
    let Some(encoded) = render() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "the server is stopping\n").into_response();
    };
    match encoded {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(_) => {
            warn!("encoding the metrics failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding the metrics failed\n",
            )
                .into_response()
        }
    }
}

async fn not_found() -> (StatusCode, &'static str) {
    (
        StatusCode::NOT_FOUND,
        "not found; metrics are at GET /metrics\n",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_label_sets_are_precreated_and_counted() {
        let metrics = Metrics::new();
        metrics.step(Some("bash"), Duration::from_millis(3));
        metrics.step(Some("bash"), Duration::from_millis(4));
        metrics.step(Some("no-such-tool"), Duration::from_millis(1));
        metrics.step(None, Duration::from_millis(1));
        metrics.rpc_error("Step", tonic::Code::NotFound);
        metrics.episode_started(StartSource::Fresh, Duration::from_millis(300));
        metrics.episode_ending();
        metrics.episode_ended(EpisodeStatus::Closed);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry).unwrap();
        assert!(
            text.contains("swe_env_step_duration_seconds_count{tool=\"bash\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("swe_env_step_duration_seconds_count{tool=\"invalid\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("swe_env_step_duration_seconds_count{tool=\"edit\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("swe_env_rpc_errors_total{method=\"Step\",code=\"NOT_FOUND\"} 1"),
            "{text}"
        );
        assert!(text.contains("swe_env_episodes_live 0"), "{text}");
        assert!(
            text.contains("swe_env_episodes_ended_total{status=\"closed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("swe_env_container_starts_total{source=\"fresh\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("swe_env_step_duration_seconds_bucket{le=\"+Inf\",tool=\"bash\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("swe_env_step_duration_seconds_bucket{le=\"0.0025\",tool=\"bash\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("swe_env_step_duration_seconds_bucket{le=\"0.005\",tool=\"bash\"} 2"),
            "{text}"
        );
    }

    #[test]
    fn the_pool_collector_exposes_ready_by_task_warming_and_fills() {
        let collector = PoolCollector {
            ready: BTreeMap::from([("task-a".to_owned(), 2), (OTHER_TASK.to_owned(), 1)]),
            warming: 3,
            fills_ok: 5,
            fills_failed: 1,
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(collector));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "# TYPE swe_env_pool_ready_containers gauge\n",
            "swe_env_pool_ready_containers{task=\"task-a\"} 2\n",
            "swe_env_pool_ready_containers{task=\"other\"} 1\n",
            "swe_env_pool_warming_containers 3\n",
            "# TYPE swe_env_pool_fills counter\n",
            "swe_env_pool_fills_total{outcome=\"ok\"} 5\n",
            "swe_env_pool_fills_total{outcome=\"error\"} 1\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
    }

    /// `method path` over a real socket; the status code and the whole answer.
    async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.unwrap();
        let status = raw.split(' ').nth(1).unwrap().parse().unwrap();
        (status, raw)
    }

    #[tokio::test]
    async fn the_endpoint_serves_get_metrics_only_and_stops_with_its_token() {
        let metrics = std::sync::Arc::new(Metrics::new());
        metrics.grading(GradingOutcome::Resolved, Duration::from_secs(2));
        let source = metrics.clone();
        let render: Render = Arc::new(move || Some(source.encode(None)));
        let stop = CancellationToken::new();
        let server = MetricsServer::start("127.0.0.1:0", render, stop.clone())
            .await
            .unwrap();
        let addr = server.addr;
        assert_ne!(addr.port(), 0);

        let (status, raw) = http(addr, "GET", "/metrics").await;
        assert_eq!(status, 200, "{raw}");
        let lower = raw.to_ascii_lowercase();
        assert!(
            lower.contains(&format!("content-type: {CONTENT_TYPE}")),
            "{raw}"
        );
        assert!(
            raw.contains("swe_env_gradings_total{outcome=\"resolved\"} 1\n"),
            "{raw}"
        );
        assert!(
            raw.contains("swe_env_grading_duration_seconds_count 1\n"),
            "{raw}"
        );
        assert!(raw.ends_with("# EOF\n"), "{raw}");
        for (method, path) in [
            ("GET", "/"),
            ("GET", "/metricsx"),
            ("POST", "/metrics"),
            ("DELETE", "/metrics"),
        ] {
            let (status, raw) = http(addr, method, path).await;
            assert_eq!(status, 404, "{method} {path}: {raw}");
        }

        stop.cancel();
        server.stopped(Duration::from_secs(5)).await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());

        // A server that is gone answers 503, not a stale exposition.
        let gone: Render = Arc::new(|| None);
        let stop = CancellationToken::new();
        let server = MetricsServer::start("127.0.0.1:0", gone, stop.clone())
            .await
            .unwrap();
        assert_eq!(http(server.addr, "GET", "/metrics").await.0, 503);
        stop.cancel();
        server.stopped(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn a_busy_address_is_a_bind_error_naming_it() {
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = taken.local_addr().unwrap().to_string();
        let render: Render = Arc::new(|| None);
        let error = match MetricsServer::start(&address, render, CancellationToken::new()).await {
            Ok(_) => panic!("bound a busy address"),
            Err(error) => error,
        };
        assert!(error.to_string().contains(&address), "{error}");
    }
}
