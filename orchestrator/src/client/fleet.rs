//! A fleet-aware client: several `swe-env serve` nodes (addresses, or one DNS name resolving to many, as a
//! Kubernetes headless Service does) behind one object. CreateEpisode goes to the node with the most estimated free
//! capacity; every later call for an episode goes to the node its id names (`<node_id>.ep-…`); a node that
//! disappears fails its own episodes at once with [`FleetError::NodeUnavailable`] naming it.
//!
//! The placement rule (the Python client implements the same one):
//! - every `host:port` whose host is a name is resolved at every refresh to all its addresses; IP literals and
//!   `unix:` paths are taken as they are. Two addresses answering one `instance_id` are one node (the first is
//!   kept); two `instance_id`s claiming one `node_id` is [`FleetError::DuplicateNodeId`];
//! - GetCapacity reports are cached and refreshed (all nodes concurrently, each within `probe_timeout`) when older
//!   than `refresh`, at the next placement. Between reports the client keeps its own estimate: a placement on a
//!   node lowers its free count by 1, a CloseEpisode this client sent to it raises it by 1;
//! - CreateEpisode goes to the reachable, non-draining node with the largest estimated free count (ties: fewest
//!   episodes placed by this client, then address order). RESOURCE_EXHAUSTED → that node's estimate becomes 0 and
//!   the next best is tried; no node free → wait the largest `retry-after-ms` hint (or the backoff), refresh,
//!   again, until `create_deadline` ([`FleetError::Exhausted`]). UNAVAILABLE → the node is down until a refresh
//!   finds it answering again;
//! - a call for an episode on an unreachable node → one GetCapacity probe (`probe_timeout`); failing → the node is
//!   marked down and the call fails at once. Channels ping every 10 s (HTTP/2 keepalive, 5 s timeout), so a
//!   frozen node is noticed too.
//!
//! No lock is held across an await: the node table sits behind a `std::sync::Mutex` taken for short, synchronous
//! reads and writes; concurrent refreshes are made one by a `tokio::sync::Mutex` gate.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::server::proto;
use crate::server::proto::env_service_client::EnvServiceClient;

/// HTTP/2 keepalive of every channel: ping interval and the time a ping may go unanswered.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// First and longest wait when no node has a free slot and no node sent a `retry-after-ms` hint.
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What a [`Fleet`] connects to.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// `host:port` (a name is resolved to all its addresses at every refresh), `ip:port`, `[v6]:port`, or
    /// `unix:/path`; an `http://` prefix is accepted.
    pub addresses: Vec<String>,
    /// Bearer token sent with every call (`None`: no `authorization` header).
    pub token: Option<String>,
    /// Age after which the capacity reports are refreshed at the next placement.
    pub refresh: Duration,
    /// Deadline of one GetCapacity (refresh or probe), and the connect timeout of every channel.
    pub probe_timeout: Duration,
    /// How long a CreateEpisode may wait for a free slot anywhere.
    pub create_deadline: Duration,
}

impl FleetConfig {
    /// The defaults (refresh 1 s, probe 2 s, create deadline 120 s) for these addresses and token.
    pub fn new(addresses: Vec<String>, token: Option<String>) -> Self {
        Self {
            addresses,
            token,
            refresh: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(2),
            create_deadline: Duration::from_secs(120),
        }
    }
}

/// Why a fleet call failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The node owning the episode does not answer (UNAVAILABLE kind).
    #[error(
        "node {node} at {address} is unreachable; episode {episode_id} was on it and is lost (its trajectory stays \
        on that node)"
    )]
    NodeUnavailable {
        node: String,
        address: String,
        episode_id: String,
    },
    /// The episode id names a node this client does not know, even after a refresh (UNAVAILABLE kind).
    #[error("episode {episode_id} belongs to node {node}, which is not among this client's nodes ({known})")]
    UnknownNode {
        node: String,
        episode_id: String,
        /// The known nodes, `id at address`, comma-separated.
        known: String,
    },
    /// Two server processes claim one node id: a configuration error.
    #[error(
        "node id {node} is claimed by two different server processes, at {first} and {second}: give every server \
        its own --node-id"
    )]
    DuplicateNodeId {
        node: String,
        first: String,
        second: String,
    },
    /// No node answered GetCapacity (at connect, or when every node is down at a CreateEpisode).
    #[error("no node answered GetCapacity: {detail}")]
    NoNodes { detail: String },
    /// No node had a free slot before the create deadline (RESOURCE_EXHAUSTED kind).
    #[error("no node had a free episode slot within {deadline:?}: {detail}")]
    Exhausted { deadline: Duration, detail: String },
    /// An ordinary error status of the node the call went to.
    #[error("node {node}: {}: {}", status.code(), status.message())]
    Rpc {
        node: String,
        status: Box<tonic::Status>,
    },
    /// An address or the token cannot be used.
    #[error("{0}")]
    Config(String),
}

impl FleetError {
    /// The gRPC code this error corresponds to.
    pub fn code(&self) -> Code {
        match self {
            Self::NodeUnavailable { .. } | Self::UnknownNode { .. } | Self::NoNodes { .. } => {
                Code::Unavailable
            }
            Self::DuplicateNodeId { .. } => Code::FailedPrecondition,
            Self::Exhausted { .. } => Code::ResourceExhausted,
            Self::Rpc { status, .. } => status.code(),
            Self::Config(_) => Code::InvalidArgument,
        }
    }
}

/// Adds `authorization: Bearer …` to every call when a token is set.
#[derive(Clone)]
pub struct FleetAuth(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for FleetAuth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The tonic client of one node, with the bearer token.
pub type FleetClient = EnvServiceClient<InterceptedService<Channel, FleetAuth>>;

/// A successful CreateEpisode: the node it went to and its reply.
#[derive(Debug, Clone)]
pub struct Placed {
    pub node_id: String,
    pub address: String,
    pub response: proto::CreateEpisodeResponse,
}

/// One node as this client sees it.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub node_id: String,
    pub address: String,
    /// The last GetCapacity answer.
    pub report: proto::GetCapacityResponse,
    /// How old that answer is.
    pub report_age: Duration,
    /// Estimated free slots (the report, minus placements, plus closes since).
    pub estimate: i64,
    /// Episodes this client placed on the node.
    pub placed: u64,
    /// Unreachable at the last refresh or probe (skipped by placement).
    pub down: bool,
}

/// The episode's node: the text before the first `.` (`None` for ids of servers without node ids).
pub fn node_of_episode(episode_id: &str) -> Option<&str> {
    episode_id.split_once('.').map(|(node, _)| node)
}

/// What placement knows of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub free: i64,
    pub placed: u64,
    /// Reachable and not draining.
    pub eligible: bool,
}

/// The node a CreateEpisode goes to: among eligible nodes with a free slot, the most estimated free slots; ties go
/// to the fewest placed by this client, then to the earliest (address order). `None` when no node has a slot.
pub fn choose(candidates: &[Candidate]) -> Option<usize> {
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.eligible && c.free > 0)
        .min_by_key(|(i, c)| (std::cmp::Reverse(c.free), c.placed, *i))
        .map(|(i, _)| i)
}

/// One address's answer at a refresh.
#[derive(Debug, Clone)]
pub struct Answer {
    pub address: String,
    pub result: Result<proto::GetCapacityResponse, String>,
}

#[derive(Debug, Clone)]
struct Node {
    node_id: String,
    address: String,
    instance_id: String,
    report: proto::GetCapacityResponse,
    reported_at: Instant,
    estimate: i64,
    placed: u64,
    down: bool,
    /// When it was last found unreachable (a down node is probed again only after `refresh`).
    down_since: Option<Instant>,
}

impl Node {
    fn candidate(&self) -> Candidate {
        Candidate {
            free: self.estimate,
            placed: self.placed,
            eligible: !self.down && !self.report.draining,
        }
    }
}

/// The node table after a refresh: answers in address order, deduplicated by instance id (first address kept);
/// two instance ids claiming one node id is an error. Nodes of `previous` that no address answered for stay, marked
/// down (their episodes then fail naming them); placed counts carry over.
fn merge(previous: &[Node], answers: &[Answer], now: Instant) -> Result<Vec<Node>, FleetError> {
    let mut nodes: Vec<Node> = Vec::new();
    for answer in answers {
        let Ok(report) = &answer.result else {
            continue;
        };
        if let Some(seen) = nodes.iter().find(|n| n.node_id == report.node_id) {
            if seen.instance_id == report.instance_id {
                continue; // the same process at another address
            }
            return Err(FleetError::DuplicateNodeId {
                node: report.node_id.clone(),
                first: seen.address.clone(),
                second: answer.address.clone(),
            });
        }
        if nodes.iter().any(|n| n.instance_id == report.instance_id) {
            continue;
        }
        let placed = previous
            .iter()
            .find(|n| n.node_id == report.node_id)
            .map_or(0, |n| n.placed);
        nodes.push(Node {
            node_id: report.node_id.clone(),
            address: answer.address.clone(),
            instance_id: report.instance_id.clone(),
            report: report.clone(),
            reported_at: now,
            estimate: i64::from(report.free_episodes),
            placed,
            down: false,
            down_since: None,
        });
    }
    for old in previous {
        if !nodes.iter().any(|n| n.node_id == old.node_id) {
            nodes.push(Node {
                down: true,
                down_since: old.down_since.or(Some(now)),
                estimate: 0,
                ..old.clone()
            });
        }
    }
    Ok(nodes)
}

/// An address as configured, before resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// Taken as it is: `(address, url)`.
    Fixed(String, String),
    /// A host name to resolve at every refresh, and its port.
    Name(String, u16),
}

fn parse_target(address: &str) -> Result<Target, FleetError> {
    let bare = address
        .strip_prefix("http://")
        .unwrap_or(address)
        .trim_end_matches('/');
    if bare.starts_with("unix:") {
        return Ok(Target::Fixed(bare.to_owned(), bare.to_owned()));
    }
    if let Ok(socket) = bare.parse::<std::net::SocketAddr>() {
        return Ok(Target::Fixed(
            socket.to_string(),
            format!("http://{socket}"),
        ));
    }
    let bad = || {
        FleetError::Config(format!(
            "address {address:?} is not host:port, ip:port, [v6]:port or unix:/path"
        ))
    };
    let (host, port) = bare.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || host.contains(['/', '[', ']', ':']) {
        return Err(bad());
    }
    Ok(Target::Name(host.to_owned(), port))
}

struct State {
    nodes: Vec<Node>,
    /// Clients by address, reused across refreshes.
    clients: HashMap<String, FleetClient>,
    refreshed_at: Option<Instant>,
    /// Addresses (or names) that did not answer at the last refresh, with why.
    unreachable: Vec<String>,
}

struct Shared {
    config: FleetConfig,
    targets: Vec<Target>,
    auth: FleetAuth,
    state: Mutex<State>,
    refresh_gate: tokio::sync::Mutex<()>,
}

/// A fleet of `swe-env serve` nodes. Cheap to clone; clones share the node table.
#[derive(Clone)]
pub struct Fleet {
    shared: Arc<Shared>,
}

/// Where an episode's calls go.
struct Route {
    node: String,
    address: String,
    client: FleetClient,
}

impl Fleet {
    /// Resolves the addresses and asks every node for its capacity; at least one must answer.
    pub async fn connect(config: FleetConfig) -> Result<Self, FleetError> {
        if config.addresses.is_empty() {
            return Err(FleetError::Config("no node addresses given".into()));
        }
        let targets = config
            .addresses
            .iter()
            .map(|a| parse_target(a))
            .collect::<Result<Vec<_>, _>>()?;
        let auth = match &config.token {
            Some(token) => FleetAuth(Some(format!("Bearer {token}").parse().map_err(|_| {
                FleetError::Config("the token is not a valid header value".into())
            })?)),
            None => FleetAuth(None),
        };
        let fleet = Self {
            shared: Arc::new(Shared {
                config,
                targets,
                auth,
                state: Mutex::new(State {
                    nodes: Vec::new(),
                    clients: HashMap::new(),
                    refreshed_at: None,
                    unreachable: Vec::new(),
                }),
                refresh_gate: tokio::sync::Mutex::new(()),
            }),
        };
        fleet.refresh(true).await?;
        if fleet.lock().nodes.iter().all(|n| n.down) {
            return Err(FleetError::NoNodes {
                detail: fleet.lock().unreachable.join("; "),
            });
        }
        Ok(fleet)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: keep using it.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The nodes as this client sees them, in address order.
    pub fn nodes(&self) -> Vec<NodeView> {
        let now = Instant::now();
        self.lock()
            .nodes
            .iter()
            .map(|n| NodeView {
                node_id: n.node_id.clone(),
                address: n.address.clone(),
                report: n.report.clone(),
                report_age: now.saturating_duration_since(n.reported_at),
                estimate: n.estimate,
                placed: n.placed,
                down: n.down,
            })
            .collect()
    }

    /// The node the next CreateEpisode would go to, from the cached estimates alone (no I/O, no refresh).
    pub fn next_node(&self) -> Option<String> {
        let state = self.lock();
        let candidates: Vec<Candidate> = state.nodes.iter().map(Node::candidate).collect();
        choose(&candidates).and_then(|i| state.nodes.get(i).map(|n| n.node_id.clone()))
    }

    fn client_for_address(&self, address: &str, url: &str) -> Result<FleetClient, FleetError> {
        if let Some(client) = self.lock().clients.get(address) {
            return Ok(client.clone());
        }
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| FleetError::Config(format!("address {address}: {e}")))?
            .connect_timeout(self.shared.config.probe_timeout)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        let client =
            EnvServiceClient::with_interceptor(endpoint.connect_lazy(), self.shared.auth.clone());
        Ok(self
            .lock()
            .clients
            .entry(address.to_owned())
            .or_insert(client)
            .clone())
    }

    /// Every address to ask now: fixed ones as they are, names resolved; names that do not resolve are reported.
    async fn resolve(&self) -> (Vec<(String, String)>, Vec<String>) {
        let mut resolved = Vec::new();
        let mut failed = Vec::new();
        for target in &self.shared.targets {
            match target {
                Target::Fixed(address, url) => resolved.push((address.clone(), url.clone())),
                Target::Name(host, port) => {
                    match tokio::net::lookup_host((host.as_str(), *port)).await {
                        Ok(addrs) => {
                            let mut seen = HashSet::new();
                            for socket in addrs {
                                if seen.insert(socket) {
                                    resolved.push((socket.to_string(), format!("http://{socket}")));
                                }
                            }
                        }
                        Err(error) => {
                            failed.push(format!("{host}:{port} does not resolve: {error}"))
                        }
                    }
                }
            }
        }
        (resolved, failed)
    }

    async fn capacity(
        client: FleetClient,
        timeout: Duration,
    ) -> Result<proto::GetCapacityResponse, String> {
        let mut client = client;
        let mut request = tonic::Request::new(proto::GetCapacityRequest {});
        request.set_timeout(timeout);
        match tokio::time::timeout(timeout, client.get_capacity(request)).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(format!("{}: {}", status.code(), status.message())),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    /// Refreshes the capacity reports when older than `refresh` (or always with `force`, unless another task
    /// refreshed while this one waited for the gate).
    async fn refresh(&self, force: bool) -> Result<(), FleetError> {
        let asked_at = Instant::now();
        let _gate = self.shared.refresh_gate.lock().await;
        let refreshed_at = self.lock().refreshed_at;
        if let Some(at) = refreshed_at {
            let fresh = at.elapsed() < self.shared.config.refresh;
            if (!force && fresh) || (force && at >= asked_at) {
                return Ok(());
            }
        }
        let (resolved, mut unreachable) = self.resolve().await;
        let timeout = self.shared.config.probe_timeout;
        let mut tasks = tokio::task::JoinSet::new();
        for (index, (address, url)) in resolved.iter().enumerate() {
            let client = self.client_for_address(address, url)?;
            tasks.spawn(async move { (index, Self::capacity(client, timeout).await) });
        }
        let mut answers: Vec<Answer> = resolved
            .iter()
            .map(|(address, _)| Answer {
                address: address.clone(),
                result: Err("no answer".into()),
            })
            .collect();
        while let Some(joined) = tasks.join_next().await {
            if let Ok((index, result)) = joined {
                if let Some(answer) = answers.get_mut(index) {
                    answer.result = result;
                }
            }
        }
        for answer in &answers {
            if let Err(error) = &answer.result {
                tracing::debug!(address = %answer.address, %error, "node did not answer GetCapacity");
                unreachable.push(format!("{}: {error}", answer.address));
            }
        }
        let now = Instant::now();
        let mut state = self.lock();
        state.nodes = merge(&state.nodes, &answers, now)?;
        state.refreshed_at = Some(now);
        state.unreachable = unreachable;
        Ok(())
    }

    fn detail(&self) -> String {
        let state = self.lock();
        let mut parts: Vec<String> = state
            .nodes
            .iter()
            .map(|n| {
                format!(
                    "{} at {}: {}{} free of {}",
                    n.node_id,
                    n.address,
                    if n.down {
                        "down, "
                    } else if n.report.draining {
                        "draining, "
                    } else {
                        ""
                    },
                    n.estimate,
                    n.report.max_episodes
                )
            })
            .collect();
        parts.extend(state.unreachable.iter().cloned());
        parts.join("; ")
    }

    /// Takes a slot on the best node (estimate − 1, placed + 1), skipping `refused`.
    fn take_slot(&self, refused: &HashSet<String>) -> Option<Route> {
        let mut state = self.lock();
        let candidates: Vec<Candidate> = state
            .nodes
            .iter()
            .map(|n| {
                let candidate = n.candidate();
                Candidate {
                    eligible: candidate.eligible && !refused.contains(&n.node_id),
                    ..candidate
                }
            })
            .collect();
        let index = choose(&candidates)?;
        let address = state.nodes.get(index)?.address.clone();
        let client = state.clients.get(&address)?.clone();
        let node = state.nodes.get_mut(index)?;
        node.estimate -= 1;
        node.placed += 1;
        Some(Route {
            node: node.node_id.clone(),
            address,
            client,
        })
    }

    fn with_node(&self, node_id: &str, change: impl FnOnce(&mut Node)) {
        if let Some(node) = self.lock().nodes.iter_mut().find(|n| n.node_id == node_id) {
            change(node);
        }
    }

    fn mark_down(&self, node_id: &str) {
        self.with_node(node_id, |n| {
            n.down = true;
            n.estimate = 0;
            n.down_since = Some(Instant::now());
        });
    }

    /// CreateEpisode on the node with the most estimated free slots (see the module docs for the whole rule).
    pub async fn create_episode(
        &self,
        request: proto::CreateEpisodeRequest,
    ) -> Result<Placed, FleetError> {
        let deadline = Instant::now() + self.shared.config.create_deadline;
        let mut backoff = BACKOFF_START;
        let mut refused: HashSet<String> = HashSet::new();
        let mut hint: Option<Duration> = None;
        self.refresh(false).await?;
        loop {
            let Some(route) = self.take_slot(&refused) else {
                // Every node unreachable: confirm with a refresh, then fail at once rather than wait.
                if self.all_down() {
                    self.refresh(true).await?;
                    if self.all_down() {
                        return Err(FleetError::NoNodes {
                            detail: self.detail(),
                        });
                    }
                    refused.clear();
                    continue;
                }
                let now = Instant::now();
                if now >= deadline {
                    return Err(FleetError::Exhausted {
                        deadline: self.shared.config.create_deadline,
                        detail: self.detail(),
                    });
                }
                let wait = hint.take().unwrap_or(backoff).min(deadline - now);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                tracing::debug!(
                    wait_ms = wait.as_millis() as u64,
                    "no node has a free slot; waiting"
                );
                tokio::time::sleep(wait).await;
                refused.clear();
                self.refresh(true).await?;
                continue;
            };
            let mut client = route.client.clone();
            match client.create_episode(request.clone()).await {
                Ok(reply) => {
                    return Ok(Placed {
                        node_id: route.node,
                        address: route.address,
                        response: reply.into_inner(),
                    });
                }
                Err(status) => {
                    self.with_node(&route.node, |n| n.placed = n.placed.saturating_sub(1));
                    match status.code() {
                        Code::ResourceExhausted => {
                            let ms = status
                                .metadata()
                                .get(crate::server::RETRY_AFTER_MS)
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.parse::<u64>().ok());
                            if let Some(ms) = ms {
                                let wait = Duration::from_millis(ms);
                                hint = Some(hint.map_or(wait, |h| h.max(wait)));
                            }
                            self.with_node(&route.node, |n| n.estimate = 0);
                            refused.insert(route.node);
                        }
                        Code::Unavailable => {
                            tracing::info!(node = %route.node, address = %route.address, error = %status.message(),
                                "node unavailable for CreateEpisode; trying another");
                            self.mark_down(&route.node);
                            refused.insert(route.node);
                        }
                        // The connection broke mid-call: a dead node is skipped like an UNAVAILABLE one.
                        Code::Unknown | Code::Internal | Code::Cancelled
                            if !self.probe(&route).await =>
                        {
                            tracing::info!(node = %route.node, address = %route.address, error = %status.message(),
                                "node unreachable for CreateEpisode; trying another");
                            self.mark_down(&route.node);
                            refused.insert(route.node);
                        }
                        _ => {
                            self.with_node(&route.node, |n| n.estimate += 1);
                            return Err(FleetError::Rpc {
                                node: route.node,
                                status: Box::new(status),
                            });
                        }
                    }
                }
            }
        }
    }

    /// The owning node of `episode_id`: its node id names it; an unknown node gets one refresh.
    async fn route(&self, episode_id: &str) -> Result<Route, FleetError> {
        let find = |state: &State| -> Option<Route> {
            let node = match node_of_episode(episode_id) {
                Some(id) => state.nodes.iter().find(|n| n.node_id == id)?,
                // Ids of servers without node ids: only a one-node fleet can own them.
                None if state.nodes.len() == 1 => state.nodes.first()?,
                None => return None,
            };
            Some(Route {
                node: node.node_id.clone(),
                address: node.address.clone(),
                client: state.clients.get(&node.address)?.clone(),
            })
        };
        if let Some(route) = find(&self.lock()) {
            return Ok(route);
        }
        self.refresh(true).await?;
        let state = self.lock();
        find(&state).ok_or_else(|| FleetError::UnknownNode {
            node: node_of_episode(episode_id)
                .unwrap_or("(none: the id names no node)")
                .to_owned(),
            episode_id: episode_id.to_owned(),
            known: state
                .nodes
                .iter()
                .map(|n| format!("{} at {}", n.node_id, n.address))
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// The tonic client of the node owning `episode_id` (with the token), for calls this type does not wrap.
    pub async fn client_for_episode(&self, episode_id: &str) -> Result<FleetClient, FleetError> {
        Ok(self.route(episode_id).await?.client)
    }

    /// The tonic client of a node by its id (`None` for a node this client does not know).
    pub fn client_for_node(&self, node_id: &str) -> Option<FleetClient> {
        let state = self.lock();
        let node = state.nodes.iter().find(|n| n.node_id == node_id)?;
        state.clients.get(&node.address).cloned()
    }

    /// One GetCapacity to `route`'s node: `true` when it answered (then it is up again).
    async fn probe(&self, route: &Route) -> bool {
        let timeout = self.shared.config.probe_timeout;
        match Self::capacity(route.client.clone(), timeout).await {
            Ok(report) if report.node_id == route.node => {
                self.with_node(&route.node, |n| {
                    n.down = false;
                    n.down_since = None;
                    n.estimate = i64::from(report.free_episodes);
                    n.report = report;
                    n.reported_at = Instant::now();
                });
                true
            }
            Ok(report) => {
                tracing::warn!(node = %route.node, address = %route.address, answered = %report.node_id,
                    "another node answers at this address");
                false
            }
            Err(error) => {
                tracing::info!(node = %route.node, address = %route.address, %error, "node probe failed");
                false
            }
        }
    }

    /// Runs `call` against the node owning `episode_id`. A down node (found unreachable within the last `refresh`)
    /// fails at once; a transport failure gets one probe and, failing it, marks the node down.
    async fn on_owner<R, F, Fut>(
        &self,
        episode_id: &str,
        call: F,
    ) -> Result<(String, R), FleetError>
    where
        F: FnOnce(FleetClient) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let route = self.route(episode_id).await?;
        let lost = |route: &Route| FleetError::NodeUnavailable {
            node: route.node.clone(),
            address: route.address.clone(),
            episode_id: episode_id.to_owned(),
        };
        let recently_down = {
            let state = self.lock();
            state
                .nodes
                .iter()
                .find(|n| n.node_id == route.node)
                .and_then(|n| n.down_since.filter(|_| n.down))
                .is_some_and(|since| since.elapsed() < self.shared.config.refresh)
        };
        if recently_down || (self.is_down(&route.node) && !self.probe(&route).await) {
            return Err(lost(&route));
        }
        match call(route.client.clone()).await {
            Ok(reply) => Ok((route.node, reply.into_inner())),
            Err(status) => {
                let transport = matches!(
                    status.code(),
                    Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
                );
                if transport && !self.probe(&route).await {
                    tracing::warn!(node = %route.node, address = %route.address, episode_id,
                        error = %status.message(), "node unreachable; its episodes are lost");
                    self.mark_down(&route.node);
                    return Err(lost(&route));
                }
                Err(FleetError::Rpc {
                    node: route.node,
                    status: Box::new(status),
                })
            }
        }
    }

    fn all_down(&self) -> bool {
        self.lock().nodes.iter().all(|n| n.down)
    }

    fn is_down(&self, node_id: &str) -> bool {
        self.lock()
            .nodes
            .iter()
            .any(|n| n.node_id == node_id && n.down)
    }

    /// Step on the episode's node.
    pub async fn step(
        &self,
        request: proto::StepRequest,
    ) -> Result<proto::StepResponse, FleetError> {
        let id = request.episode_id.clone();
        Ok(self
            .on_owner(&id, |mut c| async move { c.step(request).await })
            .await?
            .1)
    }

    /// CloseEpisode on the episode's node; on success the node's estimate gains the slot back.
    pub async fn close_episode(
        &self,
        request: proto::CloseEpisodeRequest,
    ) -> Result<proto::CloseEpisodeResponse, FleetError> {
        let id = request.episode_id.clone();
        let (node, reply) = self
            .on_owner(&id, |mut c| async move { c.close_episode(request).await })
            .await?;
        self.with_node(&node, |n| n.estimate += 1);
        Ok(reply)
    }

    /// GetTrajectory on the episode's node (the record stream; an error mid-stream is the stream's).
    pub async fn get_trajectory(
        &self,
        request: proto::GetTrajectoryRequest,
    ) -> Result<tonic::codec::Streaming<proto::TrajectoryRecord>, FleetError> {
        let id = request.episode_id.clone();
        Ok(self
            .on_owner(&id, |mut c| async move { c.get_trajectory(request).await })
            .await?
            .1)
    }

    /// GetSubmission on the episode's node.
    pub async fn get_submission(
        &self,
        request: proto::GetSubmissionRequest,
    ) -> Result<proto::GetSubmissionResponse, FleetError> {
        let id = request.episode_id.clone();
        Ok(self
            .on_owner(&id, |mut c| async move { c.get_submission(request).await })
            .await?
            .1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(free: i64, placed: u64) -> Candidate {
        Candidate {
            free,
            placed,
            eligible: true,
        }
    }

    #[test]
    fn node_of_an_episode_id_is_the_text_before_the_first_dot() {
        assert_eq!(node_of_episode("n1.ep-0123"), Some("n1"));
        assert_eq!(node_of_episode("pod-7.ep-ab.c"), Some("pod-7"));
        assert_eq!(node_of_episode("ep-0123"), None);
        assert_eq!(node_of_episode(".ep-x"), Some(""));
    }

    #[test]
    fn most_free_wins_then_fewest_placed_then_address_order() {
        assert_eq!(choose(&[c(3, 0), c(7, 9), c(5, 0)]), Some(1));
        assert_eq!(choose(&[c(5, 2), c(5, 1), c(5, 1)]), Some(1));
        assert_eq!(choose(&[c(5, 1), c(5, 1)]), Some(0));
        // Not round robin: the larger node keeps winning until its free count comes down.
        let mut nodes = vec![c(100, 0), c(100, 0), c(200, 0)];
        let mut got = [0u32; 3];
        for _ in 0..300 {
            let i = choose(&nodes).unwrap();
            nodes[i].free -= 1;
            nodes[i].placed += 1;
            got[i] += 1;
        }
        assert_eq!(got, [67, 67, 166]);
    }

    #[test]
    fn full_down_and_draining_nodes_are_skipped() {
        let down = Candidate {
            eligible: false,
            ..c(50, 0)
        };
        assert_eq!(choose(&[c(0, 0), down, c(1, 5)]), Some(2));
        assert_eq!(choose(&[c(0, 0), down, c(-2, 0)]), None);
        assert_eq!(choose(&[]), None);
    }

    fn report(node: &str, instance: &str, free: u32) -> proto::GetCapacityResponse {
        proto::GetCapacityResponse {
            node_id: node.into(),
            instance_id: instance.into(),
            max_episodes: 10,
            free_episodes: free,
            ..Default::default()
        }
    }

    fn ok(address: &str, r: proto::GetCapacityResponse) -> Answer {
        Answer {
            address: address.into(),
            result: Ok(r),
        }
    }

    #[test]
    fn one_instance_at_two_addresses_is_one_node_the_first_kept() {
        let now = Instant::now();
        let answers = [
            ok("127.0.0.1:7000", report("n1", "h:1:5", 4)),
            ok("[::1]:7000", report("n1", "h:1:5", 4)),
            ok("127.0.0.1:7001", report("n2", "h:2:5", 9)),
            Answer {
                address: "127.0.0.1:7002".into(),
                result: Err("refused".into()),
            },
        ];
        let nodes = merge(&[], &answers, now).unwrap();
        let seen: Vec<_> = nodes
            .iter()
            .map(|n| (n.node_id.as_str(), n.address.as_str(), n.estimate, n.down))
            .collect();
        assert_eq!(
            seen,
            [
                ("n1", "127.0.0.1:7000", 4, false),
                ("n2", "127.0.0.1:7001", 9, false)
            ]
        );
    }

    #[test]
    fn two_instances_claiming_one_node_id_is_an_error_naming_both() {
        let answers = [
            ok("10.0.0.1:7000", report("n1", "a:1:5", 4)),
            ok("10.0.0.2:7000", report("n1", "b:1:5", 4)),
        ];
        match merge(&[], &answers, Instant::now()) {
            Err(FleetError::DuplicateNodeId {
                node,
                first,
                second,
            }) => {
                assert_eq!(
                    (node.as_str(), first.as_str(), second.as_str()),
                    ("n1", "10.0.0.1:7000", "10.0.0.2:7000")
                );
            }
            other => panic!("expected DuplicateNodeId, got {other:?}"),
        }
    }

    #[test]
    fn a_vanished_node_stays_known_and_down_with_its_placed_count() {
        let now = Instant::now();
        let first = merge(
            &[],
            &[
                ok("127.0.0.1:1", report("n1", "a", 3)),
                ok("127.0.0.1:2", report("n2", "b", 3)),
            ],
            now,
        )
        .unwrap();
        let mut first = first;
        first[0].placed = 5;
        let second = merge(&first, &[ok("127.0.0.1:2", report("n2", "b", 1))], now).unwrap();
        let n1 = second.iter().find(|n| n.node_id == "n1").unwrap();
        assert!(n1.down && n1.estimate == 0 && n1.placed == 5);
        assert_eq!(n1.address, "127.0.0.1:1");
        let n2 = second.iter().find(|n| n.node_id == "n2").unwrap();
        assert!(!n2.down && n2.estimate == 1);
        // It answers again: up, placed count kept.
        let third = merge(
            &second,
            &[
                ok("127.0.0.1:1", report("n1", "a", 2)),
                ok("127.0.0.1:2", report("n2", "b", 1)),
            ],
            now,
        )
        .unwrap();
        assert!(!third[0].down && third[0].placed == 5 && third[0].estimate == 2);
    }

    #[test]
    fn addresses_are_parsed_into_fixed_targets_and_names() {
        let fixed = |a: &str, u: &str| Target::Fixed(a.into(), u.into());
        assert_eq!(
            parse_target("127.0.0.1:5000").unwrap(),
            fixed("127.0.0.1:5000", "http://127.0.0.1:5000")
        );
        assert_eq!(
            parse_target("http://[::1]:5000/").unwrap(),
            fixed("[::1]:5000", "http://[::1]:5000")
        );
        assert_eq!(
            parse_target("unix:/run/swe.sock").unwrap(),
            fixed("unix:/run/swe.sock", "unix:/run/swe.sock")
        );
        assert_eq!(
            parse_target("swe-env.ns.svc:50051").unwrap(),
            Target::Name("swe-env.ns.svc".into(), 50051)
        );
        assert!(parse_target("no-port").is_err());
        assert!(parse_target("host:99999").is_err());
        assert!(parse_target("::1:5000").is_err());
    }
}
