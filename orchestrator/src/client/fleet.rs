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
//!   again, until `create_deadline` ([`FleetError::Exhausted`]). UNAVAILABLE (or a broken connection) → one
//!   GetCapacity probe of that node: answering (e.g. draining) → its report is taken and the next node tried;
//!   failing → the node is down;
//! - a node is down only after a failed GetCapacity (of any code: unreachable, too slow, or e.g. UNAUTHENTICATED
//!   with another token), with that failure as its reason ([`NodeView::down_reason`]; a `tracing` warning when a
//!   node goes down and when it answers again). A refresh asks a down node again at most every 5 s and waits for
//!   it at most 250 ms (up nodes get `probe_timeout`), so one frozen node does not slow every placement;
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
/// A down node is asked again by a refresh at most this often...
const DOWN_REPROBE: Duration = Duration::from_secs(5);
/// ...and a refresh waits at most this long for its answer (capped by `probe_timeout`).
const DOWN_PROBE_TIMEOUT: Duration = Duration::from_millis(250);

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
        "node {node} at {address} is unreachable; episode {episode_id} is lost unless the node comes back (its \
        trajectory stays on that node; a retried Step with the same request id runs at most once)"
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
    /// The episode id is empty or not an episode id (INVALID_ARGUMENT kind).
    #[error("{episode_id:?} is not an episode id ({why})")]
    InvalidEpisodeId { episode_id: String, why: String },
    /// The id names no node (a server without node ids made it) and this client has several nodes (UNAVAILABLE
    /// kind).
    #[error(
        "episode {episode_id} names no node (a server older than fleet support made it): this client has several \
        nodes ({known}); use a single-address client for it"
    )]
    NoNodeInId {
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
    /// No node answered GetCapacity (at connect, or when every node is down at a CreateEpisode); the detail names
    /// each node's reason.
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
            Self::NodeUnavailable { .. }
            | Self::UnknownNode { .. }
            | Self::NoNodeInId { .. }
            | Self::NoNodes { .. } => Code::Unavailable,
            Self::InvalidEpisodeId { .. } => Code::InvalidArgument,
            Self::DuplicateNodeId { .. } => Code::FailedPrecondition,
            Self::Exhausted { .. } => Code::ResourceExhausted,
            Self::Rpc { status, .. } => status.code(),
            Self::Config(_) => Code::InvalidArgument,
        }
    }
}

/// Adds `authorization: Bearer …` to every call when a token is set (every wire client of `client/` uses it).
#[derive(Clone)]
pub struct FleetAuth(pub(crate) Option<MetadataValue<Ascii>>);

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

/// One node as this client sees it; an address that never answered GetCapacity is listed too, with an empty
/// `node_id`, a default `report`, `down` and its `down_reason`.
#[derive(Debug, Clone)]
pub struct NodeView {
    /// Empty for an address that never answered.
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
    /// Its last GetCapacity failed (skipped by placement).
    pub down: bool,
    /// Why it is down: that GetCapacity's failure (`None` when up).
    pub down_reason: Option<String>,
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
    /// Why it is down (the failed GetCapacity), `None` when up.
    reason: Option<String>,
    /// When its GetCapacity last failed (a refresh asks a down node again only after [`DOWN_REPROBE`]).
    failed_at: Option<Instant>,
}

/// An address (or a name that does not resolve) that never answered GetCapacity: no node id known.
#[derive(Debug, Clone)]
struct Unanswered {
    address: String,
    reason: String,
    failed_at: Instant,
}

/// A node's change of state at a refresh or probe, logged once (`tracing::warn!`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Transition {
    Down {
        node: String,
        address: String,
        reason: String,
    },
    Up {
        node: String,
        address: String,
    },
}

impl Transition {
    fn log(&self) {
        match self {
            Self::Down {
                node,
                address,
                reason,
            } => {
                tracing::warn!(node = %node, address = %address, reason = %reason,
                    "fleet node is down (its GetCapacity failed); placement skips it");
            }
            Self::Up { node, address } => {
                tracing::warn!(node = %node, address = %address, "fleet node answers again");
            }
        }
    }
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

/// What a refresh makes of the answers.
#[derive(Debug)]
struct Merged {
    nodes: Vec<Node>,
    unanswered: Vec<Unanswered>,
    transitions: Vec<Transition>,
}

/// The node table after a refresh: answers in address order, deduplicated by instance id (first address kept);
/// two instance ids claiming one node id is an error. Nodes of `previous` no address answered for stay, marked
/// down: with the failure of their address as the reason, or as they were when their address was `skipped` (a
/// down node between re-probes); placed counts carry over. Failed addresses of no known node are `unanswered`
/// (kept while `skipped`).
fn merge(
    previous: &[Node],
    previous_unanswered: &[Unanswered],
    answers: &[Answer],
    skipped: &[String],
    now: Instant,
) -> Result<Merged, FleetError> {
    let mut nodes: Vec<Node> = Vec::new();
    let mut transitions = Vec::new();
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
        let old = previous.iter().find(|n| n.node_id == report.node_id);
        let was_down = old.map_or_else(
            || {
                previous_unanswered
                    .iter()
                    .any(|u| u.address == answer.address)
            },
            |n| n.down,
        );
        if was_down {
            transitions.push(Transition::Up {
                node: report.node_id.clone(),
                address: answer.address.clone(),
            });
        }
        nodes.push(Node {
            node_id: report.node_id.clone(),
            address: answer.address.clone(),
            instance_id: report.instance_id.clone(),
            report: report.clone(),
            reported_at: now,
            estimate: i64::from(report.free_episodes),
            placed: old.map_or(0, |n| n.placed),
            down: false,
            reason: None,
            failed_at: None,
        });
    }
    let failure = |address: &str| {
        answers
            .iter()
            .find(|a| a.address == address)
            .map(|a| a.result.as_ref().err().cloned())
    };
    for old in previous {
        if nodes.iter().any(|n| n.node_id == old.node_id) {
            continue;
        }
        let (reason, failed_at) = match failure(&old.address) {
            // Its address failed now.
            Some(Some(error)) => (error, now),
            // Its address answered for another process (a restarted node has a new instance id and is the new
            // entry; this one is gone).
            Some(None) => ("another process answers at its address".to_owned(), now),
            // Not asked: a down node between re-probes keeps its reason; otherwise it is no longer resolved.
            None => match (&old.reason, old.failed_at) {
                (Some(reason), Some(at)) if old.down && skipped.contains(&old.address) => {
                    (reason.clone(), at)
                }
                _ => (
                    "its address is no longer among the resolved addresses".to_owned(),
                    now,
                ),
            },
        };
        if !old.down {
            transitions.push(Transition::Down {
                node: old.node_id.clone(),
                address: old.address.clone(),
                reason: reason.clone(),
            });
        }
        nodes.push(Node {
            down: true,
            reason: Some(reason),
            failed_at: Some(failed_at),
            estimate: 0,
            ..old.clone()
        });
    }
    let mut unanswered: Vec<Unanswered> = Vec::new();
    for answer in answers {
        let Err(error) = &answer.result else {
            continue;
        };
        if nodes.iter().any(|n| n.address == answer.address) {
            continue;
        }
        if !previous_unanswered
            .iter()
            .any(|u| u.address == answer.address)
        {
            transitions.push(Transition::Down {
                node: String::new(),
                address: answer.address.clone(),
                reason: error.clone(),
            });
        }
        unanswered.push(Unanswered {
            address: answer.address.clone(),
            reason: error.clone(),
            failed_at: now,
        });
    }
    for old in previous_unanswered {
        if skipped.contains(&old.address) && !nodes.iter().any(|n| n.address == old.address) {
            unanswered.push(old.clone());
        }
    }
    Ok(Merged {
        nodes,
        unanswered,
        transitions,
    })
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
    /// Addresses (or names that do not resolve) that never answered, with why.
    unanswered: Vec<Unanswered>,
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
                    unanswered: Vec::new(),
                }),
                refresh_gate: tokio::sync::Mutex::new(()),
            }),
        };
        fleet.refresh(true).await?;
        if fleet.all_down() {
            return Err(FleetError::NoNodes {
                detail: fleet.detail(),
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

    /// The nodes as this client sees them (answering ones in address order, then those gone down, then the
    /// addresses that never answered, with an empty node id).
    pub fn nodes(&self) -> Vec<NodeView> {
        let now = Instant::now();
        let state = self.lock();
        let known = state.nodes.iter().map(|n| NodeView {
            node_id: n.node_id.clone(),
            address: n.address.clone(),
            report: n.report.clone(),
            report_age: now.saturating_duration_since(n.reported_at),
            estimate: n.estimate,
            placed: n.placed,
            down: n.down,
            down_reason: n.reason.clone(),
        });
        let unanswered = state.unanswered.iter().map(|u| NodeView {
            node_id: String::new(),
            address: u.address.clone(),
            report: proto::GetCapacityResponse::default(),
            report_age: now.saturating_duration_since(u.failed_at),
            estimate: 0,
            placed: 0,
            down: true,
            down_reason: Some(u.reason.clone()),
        });
        known.chain(unanswered).collect()
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

    /// Every address to ask now (`(address, url)`): fixed ones as they are, names resolved; names that do not
    /// resolve are reported as `(host:port, why)`.
    async fn resolve(&self) -> (Vec<(String, String)>, Vec<(String, String)>) {
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
                        Err(error) => failed.push((
                            format!("{host}:{port}"),
                            format!("does not resolve: {error}"),
                        )),
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
            // tonic's own deadline (the `grpc-timeout` set above) may fire first: CANCELLED "Timeout expired".
            Ok(Err(status))
                if status.code() == Code::DeadlineExceeded
                    || (status.code() == Code::Cancelled
                        && status.message().contains("Timeout expired")) =>
            {
                Err(format!("no answer within {timeout:?}"))
            }
            Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
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
        let (resolved, failed) = self.resolve().await;
        // Down nodes (and addresses that never answered): asked again only every DOWN_REPROBE, briefly.
        let now = Instant::now();
        let plan: Vec<Option<Duration>> = {
            let state = self.lock();
            resolved
                .iter()
                .map(|(address, _)| {
                    let failed_at = state
                        .nodes
                        .iter()
                        .find(|n| n.down && n.address == *address)
                        .and_then(|n| n.failed_at)
                        .or_else(|| {
                            state
                                .unanswered
                                .iter()
                                .find(|u| u.address == *address)
                                .map(|u| u.failed_at)
                        });
                    match failed_at {
                        None => Some(self.shared.config.probe_timeout),
                        Some(at) if now.saturating_duration_since(at) < DOWN_REPROBE => None,
                        Some(_) => Some(DOWN_PROBE_TIMEOUT.min(self.shared.config.probe_timeout)),
                    }
                })
                .collect()
        };
        let mut tasks = tokio::task::JoinSet::new();
        let mut skipped = Vec::new();
        for (index, ((address, url), timeout)) in resolved.iter().zip(&plan).enumerate() {
            let Some(timeout) = *timeout else {
                skipped.push(address.clone());
                continue;
            };
            let client = self.client_for_address(address, url)?;
            tasks.spawn(async move { (index, Self::capacity(client, timeout).await) });
        }
        let mut answers: Vec<Option<Answer>> = resolved
            .iter()
            .zip(&plan)
            .map(|((address, _), timeout)| {
                timeout.map(|_| Answer {
                    address: address.clone(),
                    result: Err("no answer".into()),
                })
            })
            .collect();
        while let Some(joined) = tasks.join_next().await {
            if let Ok((index, result)) = joined {
                if let Some(Some(answer)) = answers.get_mut(index) {
                    answer.result = result;
                }
            }
        }
        let mut answers: Vec<Answer> = answers.into_iter().flatten().collect();
        answers.extend(failed.into_iter().map(|(address, error)| Answer {
            address,
            result: Err(error),
        }));
        let now = Instant::now();
        let transitions = {
            let mut state = self.lock();
            let merged = merge(&state.nodes, &state.unanswered, &answers, &skipped, now)?;
            state.nodes = merged.nodes;
            state.unanswered = merged.unanswered;
            state.refreshed_at = Some(now);
            merged.transitions
        };
        for transition in &transitions {
            transition.log();
        }
        Ok(())
    }

    fn detail(&self) -> String {
        let state = self.lock();
        let mut parts: Vec<String> = state
            .nodes
            .iter()
            .map(|n| match &n.reason {
                Some(reason) if n.down => {
                    format!("{} at {}: down ({reason})", n.node_id, n.address)
                }
                _ => format!(
                    "{} at {}: {}{} free of {}",
                    n.node_id,
                    n.address,
                    if n.report.draining { "draining, " } else { "" },
                    n.estimate,
                    n.report.max_episodes
                ),
            })
            .collect();
        parts.extend(
            state
                .unanswered
                .iter()
                .map(|u| format!("{}: down ({})", u.address, u.reason)),
        );
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

    /// Marks the node down after a failed GetCapacity (`reason`), warning when it was up.
    fn mark_down(&self, node_id: &str, reason: &str) {
        let mut transition = None;
        self.with_node(node_id, |n| {
            if !n.down {
                transition = Some(Transition::Down {
                    node: n.node_id.clone(),
                    address: n.address.clone(),
                    reason: reason.to_owned(),
                });
            }
            n.down = true;
            n.estimate = 0;
            n.reason = Some(reason.to_owned());
            n.failed_at = Some(Instant::now());
        });
        if let Some(transition) = transition {
            transition.log();
        }
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
                        // Refused (e.g. draining) or the connection broke: a probe tells a node that answers
                        // (its report is taken: draining, free count) from a dead one (down).
                        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled => {
                            let answered = self.probe(&route).await.is_ok();
                            tracing::info!(node = %route.node, address = %route.address, code = ?status.code(),
                                error = %status.message(), answered, "CreateEpisode failed on this node");
                            if status.code() != Code::Unavailable && answered {
                                // An ordinary error of a node that works.
                                return Err(FleetError::Rpc {
                                    node: route.node,
                                    status: Box::new(status),
                                });
                            }
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
        let invalid = |why: &str| FleetError::InvalidEpisodeId {
            episode_id: episode_id.to_owned(),
            why: why.to_owned(),
        };
        let node_id = match node_of_episode(episode_id) {
            Some("") => return Err(invalid("no node id before its first '.'")),
            Some(id) => Some(id),
            None if episode_id.is_empty() => return Err(invalid("empty")),
            // An id of a server without node ids.
            None if episode_id.starts_with("ep-") => None,
            None => {
                return Err(invalid(
                    "not <node>.ep-<hex>, nor ep-<hex> of an older server",
                ))
            }
        };
        let find = |state: &State| -> Option<Route> {
            let node = match node_id {
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
        if let Some(route) = find(&state) {
            return Ok(route);
        }
        let known = state
            .nodes
            .iter()
            .map(|n| format!("{} at {}", n.node_id, n.address))
            .collect::<Vec<_>>()
            .join(", ");
        Err(match node_id {
            Some(node) => FleetError::UnknownNode {
                node: node.to_owned(),
                episode_id: episode_id.to_owned(),
                known,
            },
            None => FleetError::NoNodeInId {
                episode_id: episode_id.to_owned(),
                known,
            },
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

    /// One GetCapacity to `route`'s node (`probe_timeout`): its report is taken (the node is up again), or the
    /// failure marks the node down and is returned.
    async fn probe(&self, route: &Route) -> Result<proto::GetCapacityResponse, String> {
        let timeout = self.shared.config.probe_timeout;
        let result = match Self::capacity(route.client.clone(), timeout).await {
            Ok(report) if report.node_id != route.node => Err(format!(
                "node {} answers at this address instead",
                report.node_id
            )),
            other => other,
        };
        match &result {
            Ok(report) => {
                let mut transition = None;
                self.with_node(&route.node, |n| {
                    if n.down {
                        transition = Some(Transition::Up {
                            node: n.node_id.clone(),
                            address: n.address.clone(),
                        });
                    }
                    n.down = false;
                    n.reason = None;
                    n.failed_at = None;
                    n.estimate = i64::from(report.free_episodes);
                    n.report = report.clone();
                    n.reported_at = Instant::now();
                });
                if let Some(transition) = transition {
                    transition.log();
                }
            }
            Err(reason) => self.mark_down(&route.node, reason),
        }
        result
    }

    /// Runs `call` against the node owning `episode_id`. A down node (its GetCapacity failed within the last
    /// `refresh`) fails at once, an older down node is probed first; a transport failure gets one probe and,
    /// failing it, the node is down and the call fails. Nothing but a failed GetCapacity makes a node down.
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
                .and_then(|n| n.failed_at.filter(|_| n.down))
                .is_some_and(|at| at.elapsed() < self.shared.config.refresh)
        };
        if recently_down || (self.is_down(&route.node) && self.probe(&route).await.is_err()) {
            return Err(lost(&route));
        }
        match call(route.client.clone()).await {
            Ok(reply) => Ok((route.node, reply.into_inner())),
            Err(status) => {
                let transport = matches!(
                    status.code(),
                    Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
                );
                if transport && self.probe(&route).await.is_err() {
                    tracing::info!(node = %route.node, address = %route.address, episode_id,
                        error = %status.message(), "call failed and its node does not answer");
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
        let merged = merge(&[], &[], &answers, &[], now).unwrap();
        let seen: Vec<_> = merged
            .nodes
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
        // The address that did not answer is listed with its reason, and warned about once.
        assert_eq!(merged.unanswered.len(), 1);
        assert_eq!(
            (
                merged.unanswered[0].address.as_str(),
                merged.unanswered[0].reason.as_str()
            ),
            ("127.0.0.1:7002", "refused")
        );
        assert_eq!(
            merged.transitions,
            [Transition::Down {
                node: String::new(),
                address: "127.0.0.1:7002".into(),
                reason: "refused".into()
            }]
        );
        let again = merge(&merged.nodes, &merged.unanswered, &answers, &[], now).unwrap();
        assert!(again.transitions.is_empty(), "{:?}", again.transitions);
        assert_eq!(again.unanswered.len(), 1);
    }

    #[test]
    fn two_instances_claiming_one_node_id_is_an_error_naming_both() {
        let answers = [
            ok("10.0.0.1:7000", report("n1", "a:1:5", 4)),
            ok("10.0.0.2:7000", report("n1", "b:1:5", 4)),
        ];
        match merge(&[], &[], &answers, &[], Instant::now()) {
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

    fn failed(address: &str, why: &str) -> Answer {
        Answer {
            address: address.into(),
            result: Err(why.into()),
        }
    }

    #[test]
    fn a_vanished_node_stays_known_and_down_with_its_reason_and_placed_count() {
        let now = Instant::now();
        let mut first = merge(
            &[],
            &[],
            &[
                ok("127.0.0.1:1", report("n1", "a", 3)),
                ok("127.0.0.1:2", report("n2", "b", 3)),
            ],
            &[],
            now,
        )
        .unwrap()
        .nodes;
        first[0].placed = 5;
        let second = merge(
            &first,
            &[],
            &[
                failed("127.0.0.1:1", "Unauthenticated: bad token"),
                ok("127.0.0.1:2", report("n2", "b", 1)),
            ],
            &[],
            now,
        )
        .unwrap();
        let n1 = second.nodes.iter().find(|n| n.node_id == "n1").unwrap();
        assert!(n1.down && n1.estimate == 0 && n1.placed == 5);
        assert_eq!(n1.address, "127.0.0.1:1");
        assert_eq!(n1.reason.as_deref(), Some("Unauthenticated: bad token"));
        assert!(second.unanswered.is_empty(), "a known node's address");
        assert_eq!(
            second.transitions,
            [Transition::Down {
                node: "n1".into(),
                address: "127.0.0.1:1".into(),
                reason: "Unauthenticated: bad token".into()
            }]
        );
        let n2 = second.nodes.iter().find(|n| n.node_id == "n2").unwrap();
        assert!(!n2.down && n2.estimate == 1 && n2.reason.is_none());
        // Not asked again (between re-probes): still down with the same reason and time, no new warning.
        let later = now + Duration::from_secs(1);
        let skipped = merge(
            &second.nodes,
            &[],
            &[ok("127.0.0.1:2", report("n2", "b", 1))],
            &["127.0.0.1:1".to_owned()],
            later,
        )
        .unwrap();
        let n1 = skipped.nodes.iter().find(|n| n.node_id == "n1").unwrap();
        assert!(n1.down && n1.failed_at == Some(now));
        assert_eq!(n1.reason.as_deref(), Some("Unauthenticated: bad token"));
        assert!(skipped.transitions.is_empty());
        // It answers again: up, placed count kept, one "answers again".
        let third = merge(
            &skipped.nodes,
            &[],
            &[
                ok("127.0.0.1:1", report("n1", "a", 2)),
                ok("127.0.0.1:2", report("n2", "b", 1)),
            ],
            &[],
            later,
        )
        .unwrap();
        let n1 = &third.nodes[0];
        assert!(!n1.down && n1.placed == 5 && n1.estimate == 2 && n1.reason.is_none());
        assert_eq!(
            third.transitions,
            [Transition::Up {
                node: "n1".into(),
                address: "127.0.0.1:1".into()
            }]
        );
    }

    #[test]
    fn an_address_that_never_answered_is_kept_while_skipped_and_comes_up_as_a_node() {
        let now = Instant::now();
        let first = merge(
            &[],
            &[],
            &[failed("127.0.0.1:9", "no answer within 2s")],
            &[],
            now,
        )
        .unwrap();
        assert!(first.nodes.is_empty());
        assert_eq!(first.unanswered.len(), 1);
        let kept = merge(
            &[],
            &first.unanswered,
            &[],
            &["127.0.0.1:9".to_owned()],
            now,
        )
        .unwrap();
        assert_eq!(kept.unanswered.len(), 1);
        assert!(kept.transitions.is_empty());
        // No longer resolved and not skipped: forgotten.
        let gone = merge(&[], &first.unanswered, &[], &[], now).unwrap();
        assert!(gone.unanswered.is_empty());
        let up = merge(
            &[],
            &first.unanswered,
            &[ok("127.0.0.1:9", report("n9", "i", 1))],
            &[],
            now,
        )
        .unwrap();
        assert!(up.unanswered.is_empty());
        assert_eq!(
            up.transitions,
            [Transition::Up {
                node: "n9".into(),
                address: "127.0.0.1:9".into()
            }]
        );
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
