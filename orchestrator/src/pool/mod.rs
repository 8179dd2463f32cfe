//! Warm pools: containers made ready ahead for a task, so an episode starts from one in milliseconds instead of a
//! container start (hundreds of ms).
//!
//! A pooled container has had everything [`Episode::start`] does that depends only on the task and the
//! creation-time sandbox settings ([`Episode::prepare`]: created, started, shell attached, anti-leak set-up run,
//! pre-existing untracked files recorded, image id read). Containers are pooled per [`PoolKey`]: the image, the
//! sandbox settings that cannot change after creation (network, env, workdir, activation, output cap, TTL …), the
//! anti-leak mode and the repository + base commit. Limits Docker can update (memory, CPUs, processes) are not part
//! of the key: [`Episode::start_prepared`] applies the episode's own at take time.
//!
//! **Invariants:** a pooled container is handed out once — taking it removes it from the pool for good, and the
//! episode removes it at its end; pooled containers carry the labels of every container (so `swe-env gc` and a
//! restarted server's reconcile remove them after a crash), their `swe-env.episode` being an episode id reserved at
//! fill time, which the episode that takes the container adopts (so label lookups by episode id keep working);
//! the pool never holds more than `max_containers` (ready + being prepared), prepares at most
//! `max_concurrent_fills` at once, starts no fill while the host's available memory is under
//! `min_host_available_bytes`, tracks at most `max_keys` keys, prepares every container with the server's default
//! limits (a client's limits are applied at take time, never at fill time), and backs off a key whose fill failed
//! (2 s doubling to 60 s).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use swe_env_grading::dataset::Instance;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::episode::{Episode, EpisodeConfig, EpisodeError, PreparedSandbox};
use crate::task::image_for;
use swe_env_sandbox::{DockerEngine, SandboxError};

/// Longest backoff of a key whose fills keep failing.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How often the planner looks at the pools when nothing wakes it.
const PLAN_PERIOD: Duration = Duration::from_secs(1);
/// How long a taken container's shell may take to answer the liveness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Warm-pool settings (server config `pool:`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Most pooled containers (ready + being prepared) over every key; live episodes are not counted (they have
    /// `max_episodes`). 0 turns warm pools off (Prewarm is then UNIMPLEMENTED). Default 64.
    pub max_containers: usize,
    /// Most containers being prepared at once (fills do not take the CreateEpisode start slots). Default 2.
    pub max_concurrent_fills: usize,
    /// No fill starts while the host's `MemAvailable` (/proc/meminfo) is under this many bytes. Default 2 GiB.
    pub min_host_available_bytes: u64,
    /// A ready container older than this is removed (and replaced while its key is wanted), seconds; also how long
    /// a Prewarm's count is kept up. Default 900.
    pub max_idle_secs: u64,
    /// How long a CreateEpisode waits for a container of its key before it starts a cold one, ms: it waits when
    /// more are being prepared than CreateEpisodes wait for, or when it is one of the episodes an outstanding
    /// Prewarm count is for (its container may not be started yet: fills run `max_concurrent_fills` at a time).
    /// Default 5000.
    pub take_wait_ms: u64,
    /// Most pool keys tracked at once (each holds a task and its settings for up to `max_idle_secs`). When full, a
    /// new key replaces the least recently used one with nothing ready, being prepared or waited for; when there is
    /// none, Prewarm is RESOURCE_EXHAUSTED (and the automatic policy does not track the key). Default 256.
    pub max_keys: usize,
    /// Automatic policy: keep recently used keys warm.
    pub auto: AutoPolicy,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_containers: 64,
            max_concurrent_fills: 2,
            min_host_available_bytes: 2 << 30,
            max_idle_secs: 900,
            take_wait_ms: 5000,
            max_keys: 256,
            auto: AutoPolicy::default(),
        }
    }
}

/// Automatic warm-pool policy (server config `pool.auto:`): a key used by `min_uses` CreateEpisodes, each within
/// `keep_secs` of the previous one, is kept at `size` ready containers until `keep_secs` after its last use; at
/// most `max_keys` keys at once (the least recently used one is dropped first).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AutoPolicy {
    /// On or off. Default off: a server with it on keeps containers beyond its live episodes (operators and leak
    /// checks that count a server's containers see them) and its fills share the host's CPUs with cold starts;
    /// trainers that know their K call Prewarm. Turn it on for RL servers (repeated rollouts of a task get warm
    /// containers: see `tests/it/pool.rs`).
    pub enabled: bool,
    /// Ready containers per warm key. Default 2.
    pub size: usize,
    /// Uses (CreateEpisode of the key) before the key is kept warm: 2 by default, so a task used once (an
    /// evaluation sweep) costs no pooled container, while repeated rollouts of a task are kept warm from the second
    /// use on.
    pub min_uses: u32,
    /// A key stays warm this long after its last use, seconds. Default 120.
    pub keep_secs: u64,
    /// Most keys kept warm at once. Default 8.
    pub max_keys: usize,
}

impl Default for AutoPolicy {
    fn default() -> Self {
        Self {
            enabled: false,
            size: 2,
            min_uses: 2,
            keep_secs: 120,
            max_keys: 8,
        }
    }
}

impl PoolConfig {
    /// Inconsistent settings, as `(field, reason)`.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.max_containers == 0 {
            return Ok(());
        }
        if self.max_concurrent_fills == 0 {
            return Err((
                "pool.max_concurrent_fills",
                "must be at least 1 (or set `pool.max_containers: 0` to turn pools off)".to_owned(),
            ));
        }
        if self.max_keys == 0 {
            return Err((
                "pool.max_keys",
                "must be at least 1 (or set `pool.max_containers: 0` to turn pools off)".to_owned(),
            ));
        }
        if self.auto.enabled && self.auto.max_keys > self.max_keys {
            return Err((
                "pool.auto.max_keys",
                format!(
                    "{} is above `pool.max_keys` ({}); lower it or raise `pool.max_keys`",
                    self.auto.max_keys, self.max_keys
                ),
            ));
        }
        if self.max_idle_secs == 0 {
            return Err(("pool.max_idle_secs", "must be at least 1".to_owned()));
        }
        if self.auto.enabled {
            if self.auto.size == 0 || self.auto.size > self.max_containers {
                return Err((
                    "pool.auto.size",
                    format!(
                        "{} is not between 1 and `pool.max_containers` ({}); raise the budget or lower the size",
                        self.auto.size, self.max_containers
                    ),
                ));
            }
            if self.auto.keep_secs == 0 || self.auto.max_keys == 0 || self.auto.min_uses == 0 {
                return Err((
                    "pool.auto",
                    "`keep_secs`, `max_keys` and `min_uses` must be at least 1 (or set `enabled: false`)"
                        .to_owned(),
                ));
            }
        }
        Ok(())
    }
}

/// What identifies interchangeable pooled containers: a hash of the image, the creation-time sandbox settings,
/// the anti-leak mode and the repository + base commit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PoolKey(String);

impl PoolKey {
    /// The key of episodes of `instance` under `config`.
    pub fn of(instance: &Instance, config: &EpisodeConfig) -> Self {
        let image = image_for(instance, &config.image_template);
        let mut sandbox = Episode::sandbox_config_for(instance, config);
        // Applied at take time: not part of the key.
        sandbox.memory_bytes = 0;
        sandbox.nano_cpus = 0;
        sandbox.pids_limit = 0;
        let repo = Episode::submission_repo_for(instance, config)
            .map(|repo| (repo.repo_dir, repo.base_commit));
        let text = format!(
            "{image}\n{sandbox:?}\n{}\n{repo:?}",
            config.anti_leak.as_str()
        );
        let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        let hex: String = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Self(hex)
    }

    /// The hash, 16 hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for PoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a pool operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Pools are off (`pool.max_containers: 0`).
    #[error("warm pools are off on this server (server config `pool.max_containers` is 0)")]
    Disabled,
    /// The count cannot fit the pool's budget.
    #[error("count {count} is above the pool budget {max} (server config `pool.max_containers`)")]
    OverBudget {
        /// Asked.
        count: usize,
        /// The budget.
        max: usize,
    },
    /// The sandbox could not be prepared (image missing, engine down …).
    #[error("preparing a pooled container for key {key} failed: {source}")]
    Fill {
        /// The key.
        key: PoolKey,
        /// The failure.
        source: EpisodeError,
    },
    /// Preparing the key's containers failed (the pool backs off and retries in the background).
    #[error("preparing a pooled container for key {key} failed: {detail}")]
    FillFailed {
        /// The key.
        key: PoolKey,
        /// The last failure.
        detail: String,
    },
    /// The pool is draining (server shutdown).
    #[error("the pool is draining")]
    Draining,
    /// Every tracked key has containers ready, being prepared or waited for.
    #[error(
        "the server's warm pools already track {max} task keys, each with containers ready, being prepared or \
         waited for (server config `pool.max_keys`); retry once some are used or idle, or raise `pool.max_keys`"
    )]
    TooManyKeys {
        /// The cap.
        max: usize,
    },
}

/// What a Prewarm did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrewarmOutcome {
    /// Ready containers of the key when the call returned.
    pub ready: usize,
    /// Containers of the key being prepared then.
    pub warming: usize,
    /// How long the call waited.
    pub waited: Duration,
    /// Keys the pools track (every task), at most `pool.max_keys`.
    pub keys: usize,
}

/// The limits pooled containers are prepared with: the server's episode defaults, whoever asked for the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FillLimits {
    /// Memory (= memory + swap) limit, bytes; 0: none.
    pub memory_bytes: i64,
    /// CPU limit, 1e-9 CPUs; 0: none.
    pub nano_cpus: i64,
    /// Process limit; 0: none.
    pub pids_limit: i64,
}

/// A ready container.
struct Ready {
    taken: Taken,
    since: Instant,
}

/// A container taken from a pool, and the episode id it was labelled with at fill time (the episode's id).
pub struct Taken {
    /// The id the episode must use (the container's `swe-env.episode` label).
    pub episode_id: String,
    /// The container, ready.
    pub prepared: PreparedSandbox,
}

/// What a fill needs: a task and settings with this key.
struct KeySpec {
    instance: Instance,
    config: EpisodeConfig,
}

impl KeySpec {
    /// The spec of `instance` under `config`, with the pool's fill limits instead of the caller's.
    fn new(instance: &Instance, config: &EpisodeConfig, limits: FillLimits) -> Self {
        let mut config = config.clone();
        config.sandbox.memory_bytes = limits.memory_bytes;
        config.sandbox.nano_cpus = limits.nano_cpus;
        config.sandbox.pids_limit = limits.pids_limit;
        Self {
            instance: instance.clone(),
            config,
        }
    }

    /// Same task and settings (the key is the same; a changed spec means a new chance for a failing key).
    fn same_as(&self, other: &KeySpec) -> bool {
        self.instance == other.instance
            && format!("{:?}", self.config) == format!("{:?}", other.config)
    }
}

struct KeyState {
    spec: Arc<KeySpec>,
    ready: VecDeque<Ready>,
    filling: usize,
    /// CreateEpisodes waiting for a container being prepared.
    waiting: usize,
    /// Prewarm's count, lowered by each take, until `explicit_until`.
    explicit: usize,
    explicit_until: Instant,
    /// Uses within `keep_secs` of each other, and the last one.
    uses: u32,
    last_use: Instant,
    /// The last Prewarm or use (which key `max_keys` forgets first).
    touched: Instant,
    backoff_until: Option<Instant>,
    failures: u32,
    last_error: Option<String>,
    notify: Arc<Notify>,
}

impl KeyState {
    fn new(spec: Arc<KeySpec>, now: Instant) -> Self {
        Self {
            spec,
            ready: VecDeque::new(),
            filling: 0,
            waiting: 0,
            explicit: 0,
            explicit_until: now,
            uses: 0,
            last_use: now,
            touched: now,
            backoff_until: None,
            failures: 0,
            last_error: None,
            notify: Arc::new(Notify::new()),
        }
    }

    fn auto_warm(&self, auto: &AutoPolicy, now: Instant) -> bool {
        auto.enabled
            && self.uses >= auto.min_uses
            && now.duration_since(self.last_use) < Duration::from_secs(auto.keep_secs)
    }

    fn target(&self, auto: &AutoPolicy, now: Instant) -> usize {
        let explicit = if now < self.explicit_until {
            self.explicit
        } else {
            0
        };
        let auto_size = if self.auto_warm(auto, now) {
            auto.size
        } else {
            0
        };
        explicit.max(auto_size)
    }
}

#[derive(Default)]
struct Inner {
    keys: HashMap<PoolKey, KeyState>,
    /// Ready + being prepared, over every key.
    total: usize,
    filling: usize,
}

impl Inner {
    /// Room for one more key: when `max` keys are tracked, forgets the least recently used one with nothing ready,
    /// being prepared or waited for; false when there is none.
    fn make_room(&mut self, max: usize) -> bool {
        if self.keys.len() < max {
            return true;
        }
        let victim = self
            .keys
            .iter()
            .filter(|(_, k)| k.ready.is_empty() && k.filling == 0 && k.waiting == 0)
            .min_by_key(|(_, k)| k.touched)
            .map(|(key, _)| key.clone());
        match victim {
            Some(key) => {
                debug!(pool_key = %key, "forgetting the least recently used pool key (pool.max_keys)");
                self.keys.remove(&key);
                true
            }
            None => false,
        }
    }
}

/// A CreateEpisode waiting for a container of `key`: counted in the key's `waiting` until dropped.
struct WaiterGuard {
    pool: Arc<Pool>,
    key: PoolKey,
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        if let Some(entry) = self.pool.lock().keys.get_mut(&self.key) {
            entry.waiting = entry.waiting.saturating_sub(1);
        }
        self.pool.wake.notify_one();
    }
}

/// The Prewarm count a CreateEpisode took for itself: given back when the call is dropped (the client cancelled or
/// its deadline passed) before it got a container or gave up waiting, since the episode it was for never started.
struct CountBack {
    pool: Arc<Pool>,
    key: PoolKey,
    armed: bool,
}

impl Drop for CountBack {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(entry) = self.pool.lock().keys.get_mut(&self.key) {
            entry.explicit = entry.explicit.saturating_add(1);
        }
        self.pool.wake.notify_one();
    }
}

/// Makes the id of the episode a pooled container is reserved for (the server's node-scoped ids).
pub type NewEpisodeId = Arc<dyn Fn() -> String + Send + Sync>;

/// The warm pools of a server.
pub struct Pool {
    engine: DockerEngine,
    config: PoolConfig,
    inner: Mutex<Inner>,
    wake: Notify,
    stop: CancellationToken,
    planner: OnceLock<()>,
    new_episode_id: NewEpisodeId,
    fill_limits: FillLimits,
    /// Fills that made a ready container, and fills that failed (for metrics).
    fills_ok: AtomicU64,
    fills_failed: AtomicU64,
}

impl Pool {
    /// Pools over `engine`; `None` when `config.max_containers` is 0. Each pooled container is labelled with a
    /// fresh `new_episode_id()`, the id of the episode that will take it. The background filler starts with the
    /// first use.
    pub fn new(
        engine: DockerEngine,
        config: PoolConfig,
        new_episode_id: NewEpisodeId,
        fill_limits: FillLimits,
    ) -> Option<Arc<Self>> {
        (config.max_containers > 0).then(|| {
            Arc::new(Self {
                engine,
                config,
                inner: Mutex::new(Inner::default()),
                wake: Notify::new(),
                stop: CancellationToken::new(),
                planner: OnceLock::new(),
                new_episode_id,
                fill_limits,
                fills_ok: AtomicU64::new(0),
                fills_failed: AtomicU64::new(0),
            })
        })
    }

    /// The settings.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent counts (every update is a few field writes).
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn ensure_planner(self: &Arc<Self>) {
        self.planner.get_or_init(|| {
            tokio::spawn(self.clone().run_planner());
        });
    }

    /// Takes a ready container for an episode of `instance` under `config` (and counts the use for the automatic
    /// policy). When none is ready but more of this key are being prepared than CreateEpisodes already wait for, or
    /// this episode is one an outstanding Prewarm count is for, waits (at most `pool.take_wait_ms`) for one (a
    /// waiter counts on top of the key's target, so its fill starts as soon as the budgets allow; a cancelled
    /// CreateEpisode stops counting); `None` means: start a cold one. The container is the caller's
    /// from now on, for an episode with the returned id; it is never handed out again.
    pub async fn take(
        self: &Arc<Self>,
        instance: &Instance,
        config: &EpisodeConfig,
    ) -> Option<Taken> {
        if self.stop.is_cancelled() {
            return None;
        }
        self.ensure_planner();
        let key = PoolKey::of(instance, config);
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.config.take_wait_ms);
        let mut first = true;
        // Registered as a waiter of the key: unregistered when dropped (also when the CreateEpisode is cancelled).
        let mut waiter: Option<WaiterGuard> = None;
        // Disarmed on every return: only a dropped (cancelled) call gives its Prewarm count back.
        let mut count_back: Option<CountBack> = None;
        let disarm = |count_back: &mut Option<CountBack>| {
            if let Some(count_back) = count_back.as_mut() {
                count_back.armed = false;
            }
        };
        loop {
            let mut stale = Vec::new();
            let notified;
            let taken = {
                let mut guard = self.lock();
                let inner = &mut *guard;
                let now = Instant::now();
                let auto = &self.config.auto;
                let max_idle = Duration::from_secs(self.config.max_idle_secs);
                // Without the automatic policy only prewarmed keys are tracked: an unknown key has nothing ready
                // and nothing being prepared (and an evaluation sweep over thousands of tasks stores nothing).
                if !inner.keys.contains_key(&key)
                    && (!auto.enabled || !first || !inner.make_room(self.config.max_keys))
                {
                    disarm(&mut count_back);
                    return None;
                }
                let fill_limits = self.fill_limits;
                let entry = inner.keys.entry(key.clone()).or_insert_with(|| {
                    KeyState::new(Arc::new(KeySpec::new(instance, config, fill_limits)), now)
                });
                // One of the episodes an outstanding Prewarm count is for: waits for its container even when its
                // fill has not started yet (fills start `max_concurrent_fills` at a time).
                let mut covered = false;
                if first {
                    first = false;
                    if now.duration_since(entry.last_use) >= Duration::from_secs(auto.keep_secs) {
                        entry.uses = 0;
                    }
                    entry.uses = entry.uses.saturating_add(1);
                    entry.last_use = now;
                    entry.touched = now;
                    // Each episode of the key, warm or cold, is one of the episodes a Prewarm was for.
                    covered = now < entry.explicit_until && entry.explicit > 0;
                    entry.explicit = entry.explicit.saturating_sub(1);
                    if covered {
                        count_back = Some(CountBack {
                            pool: self.clone(),
                            key: key.clone(),
                            armed: true,
                        });
                    }
                }
                let mut taken = None;
                while let Some(ready) = entry.ready.pop_front() {
                    if now.duration_since(ready.since) >= max_idle {
                        stale.push(ready.taken.prepared);
                        continue;
                    }
                    taken = Some(ready.taken);
                    break;
                }
                let backed_off = entry.backoff_until.is_some_and(|until| now < until);
                let waits = taken.is_none()
                    && tokio::time::Instant::now() < deadline
                    && match waiter {
                        // Keeps waiting while a fill runs or can start for it.
                        Some(_) => entry.filling > 0 || !backed_off,
                        None => entry.filling > entry.waiting || (covered && !backed_off),
                    };
                if waits && waiter.is_none() {
                    entry.waiting += 1;
                    waiter = Some(WaiterGuard {
                        pool: self.clone(),
                        key: key.clone(),
                    });
                }
                // Created under the lock: it receives every `notify_waiters` from here on.
                notified = waits.then(|| entry.notify.clone().notified_owned());
                let n_gone = stale.len() + usize::from(taken.is_some());
                inner.total -= n_gone;
                taken
            };
            if taken.is_some() {
                drop(waiter.take());
            }
            self.enforce_auto_keys();
            self.wake.notify_one();
            self.remove_in_background(stale);
            if let Some(taken) = taken {
                // A container that died while pooled (engine restart, OOM) is not handed out.
                let sandbox = &taken.prepared.sandbox;
                match tokio::time::timeout(PROBE_TIMEOUT, sandbox.run_command(":", PROBE_TIMEOUT))
                    .await
                {
                    Ok(Ok(out)) if out.exit_code == Some(0) => {
                        info!(pool_key = %key, container = %sandbox.id(), episode_id = %taken.episode_id, "episode takes a pooled container");
                        disarm(&mut count_back);
                        return Some(taken);
                    }
                    outcome => {
                        warn!(pool_key = %key, container = %sandbox.id(), ?outcome, "a pooled container no longer answers; removing it");
                        self.remove_in_background(vec![taken.prepared]);
                        continue;
                    }
                }
            }
            let Some(notified) = notified else {
                disarm(&mut count_back);
                return None;
            };
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    /// Keeps `count` containers of the key of (`instance`, `config`) ready (Prewarm): the count is kept up for
    /// `max_idle_secs`, lowered by each CreateEpisode of the key (warm or cold). With `wait`, returns once `count` are ready (or `wait` elapsed, or the
    /// key's fills fail: then the fill error).
    pub async fn prewarm(
        self: &Arc<Self>,
        instance: &Instance,
        config: &EpisodeConfig,
        count: usize,
        wait: Option<Duration>,
    ) -> Result<(PoolKey, PrewarmOutcome), PoolError> {
        if self.stop.is_cancelled() {
            return Err(PoolError::Draining);
        }
        if count > self.config.max_containers {
            return Err(PoolError::OverBudget {
                count,
                max: self.config.max_containers,
            });
        }
        let key = PoolKey::of(instance, config);
        // Fail fast on a missing image instead of backing off in the background.
        let image = image_for(instance, &config.image_template);
        let missing = |source: EpisodeError| PoolError::Fill {
            key: key.clone(),
            source,
        };
        match self.engine.image_info(&image).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(missing(EpisodeError::Sandbox(
                    SandboxError::ImageNotFound { image },
                )))
            }
            Err(error) => return Err(missing(error.into())),
        }
        self.ensure_planner();
        let started = Instant::now();
        {
            let mut inner = self.lock();
            let now = Instant::now();
            if !inner.keys.contains_key(&key) && !inner.make_room(self.config.max_keys) {
                return Err(PoolError::TooManyKeys {
                    max: self.config.max_keys,
                });
            }
            let spec = Arc::new(KeySpec::new(instance, config, self.fill_limits));
            let entry = inner
                .keys
                .entry(key.clone())
                .or_insert_with(|| KeyState::new(spec.clone(), now));
            // A failing key is retried at once only when its task or settings changed (a repeated Prewarm of the
            // same spec waits out the back-off).
            if !entry.spec.same_as(&spec) {
                entry.spec = spec;
                entry.last_error = None;
                entry.backoff_until = None;
            }
            entry.explicit = count;
            entry.explicit_until = now + Duration::from_secs(self.config.max_idle_secs);
            entry.touched = now;
        }
        // Planned now, not by the background planner: CreateEpisodes right after this call see the fills started
        // and wait for them instead of starting cold containers.
        self.plan();
        let deadline = wait.map(|wait| tokio::time::Instant::now() + wait);
        loop {
            let (ready, warming, failed, notified, keys) = {
                let inner = self.lock();
                let keys = inner.keys.len();
                match inner.keys.get(&key) {
                    Some(entry) => (
                        entry.ready.len(),
                        entry.filling,
                        entry.last_error.clone(),
                        entry.notify.clone().notified_owned(),
                        keys,
                    ),
                    None => (0, 0, None, Arc::new(Notify::new()).notified_owned(), keys),
                }
            };
            let outcome = PrewarmOutcome {
                ready,
                warming,
                waited: started.elapsed(),
                keys,
            };
            let Some(deadline) = deadline else {
                return Ok((key, outcome));
            };
            if ready >= count || tokio::time::Instant::now() >= deadline {
                return Ok((key, outcome));
            }
            if let Some(detail) = failed {
                if warming == 0 {
                    return Err(PoolError::FillFailed { key, detail });
                }
            }
            tokio::select! {
                _ = tokio::time::timeout_at(deadline, notified) => {}
                _ = self.stop.cancelled() => return Err(PoolError::Draining),
            }
        }
    }

    /// Ready containers per task (instance id) over the tracked keys, keys of a task summed; a tracked key with
    /// nothing ready counts 0 (for metrics).
    pub fn ready_by_task(&self) -> Vec<(String, usize)> {
        let inner = self.lock();
        let mut by_task: HashMap<&str, usize> = HashMap::with_capacity(inner.keys.len());
        for entry in inner.keys.values() {
            *by_task.entry(&entry.spec.instance.instance_id).or_default() += entry.ready.len();
        }
        by_task
            .into_iter()
            .map(|(task, ready)| (task.to_owned(), ready))
            .collect()
    }

    /// Fills that made a ready container, and fills that failed, since the start (for metrics).
    pub fn fill_counts(&self) -> (u64, u64) {
        (
            self.fills_ok.load(Ordering::Relaxed),
            self.fills_failed.load(Ordering::Relaxed),
        )
    }

    /// Ready and being-prepared containers over every key.
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.lock();
        let ready = inner.keys.values().map(|k| k.ready.len()).sum();
        (ready, inner.filling)
    }

    /// Stops filling and removes every pooled container (server shutdown); returns how many were removed.
    pub async fn drain(&self) -> usize {
        self.stop.cancel();
        let ready: Vec<PreparedSandbox> = {
            let mut inner = self.lock();
            let mut all = Vec::new();
            for entry in inner.keys.values_mut() {
                all.extend(entry.ready.drain(..).map(|r| r.taken.prepared));
                entry.notify.notify_waiters();
            }
            inner.total -= all.len();
            all
        };
        let removals = ready.iter().map(|p| p.sandbox.remove());
        let removed = futures_util::future::join_all(removals)
            .await
            .into_iter()
            .filter(Result::is_ok)
            .count();
        // Fills in flight stop at their next step and remove what they made.
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.lock().filling > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        info!(removed, "warm pool drained");
        removed
    }

    fn remove_in_background(&self, containers: Vec<PreparedSandbox>) {
        if containers.is_empty() {
            return;
        }
        tokio::spawn(async move {
            for prepared in containers {
                if let Err(error) = prepared.sandbox.remove().await {
                    warn!(container = %prepared.sandbox.id(), %error, "removing a pooled container failed; the reconcile or `swe-env gc` removes it");
                }
            }
        });
    }

    /// At most `auto.max_keys` keys warm by the automatic policy: the least recently used lose their warmth.
    fn enforce_auto_keys(&self) {
        let auto = &self.config.auto;
        let now = Instant::now();
        let mut inner = self.lock();
        let mut warm: Vec<(Instant, PoolKey)> = inner
            .keys
            .iter()
            .filter(|(_, k)| k.auto_warm(auto, now))
            .map(|(key, k)| (k.last_use, key.clone()))
            .collect();
        if warm.len() <= auto.max_keys {
            return;
        }
        warm.sort();
        let excess = warm.len() - auto.max_keys;
        for (_, key) in warm.into_iter().take(excess) {
            if let Some(entry) = inner.keys.get_mut(&key) {
                entry.uses = 0;
            }
        }
    }

    async fn run_planner(self: Arc<Self>) {
        loop {
            self.plan();
            tokio::select! {
                _ = tokio::time::sleep(PLAN_PERIOD) => {}
                _ = self.wake.notified() => {}
                _ = self.stop.cancelled() => return,
            }
        }
    }

    /// One planning pass: removes containers beyond their key's target or past `max_idle_secs`, forgets idle keys,
    /// and starts the fills the budgets allow.
    fn plan(self: &Arc<Self>) {
        let memory_ok = host_available_bytes()
            .is_none_or(|available| available >= self.config.min_host_available_bytes);
        let now = Instant::now();
        let auto = &self.config.auto;
        let max_idle = Duration::from_secs(self.config.max_idle_secs);
        let keep = Duration::from_secs(auto.keep_secs).max(max_idle);
        let mut discard = Vec::new();
        let mut fills = Vec::new();
        {
            let mut guard = self.lock();
            let inner = &mut *guard;
            for entry in inner.keys.values_mut() {
                // CreateEpisodes waiting for a container of the key are about to take one.
                let target = entry.target(auto, now) + entry.waiting;
                while entry
                    .ready
                    .front()
                    .is_some_and(|r| now.duration_since(r.since) >= max_idle)
                    || entry.ready.len() > target
                {
                    if let Some(ready) = entry.ready.pop_front() {
                        discard.push(ready.taken.prepared);
                    }
                }
            }
            inner.total -= discard.len();
            inner.keys.retain(|_, k| {
                !(k.ready.is_empty()
                    && k.filling == 0
                    && k.waiting == 0
                    && now.duration_since(k.last_use) >= keep
                    && now >= k.explicit_until)
            });
            // Keys most recently used first.
            let mut order: Vec<(Instant, PoolKey)> = inner
                .keys
                .iter()
                .map(|(key, k)| (k.last_use.max(k.explicit_until), key.clone()))
                .collect();
            order.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
            for (_, key) in order {
                let Some(entry) = inner.keys.get_mut(&key) else {
                    continue;
                };
                if entry.backoff_until.is_some_and(|until| now < until) {
                    continue;
                }
                // CreateEpisodes waiting for the key's containers count on top of its target (each lowered the
                // Prewarm count it waits for).
                let target = entry.target(auto, now) + entry.waiting;
                while entry.ready.len() + entry.filling < target
                    && inner.total < self.config.max_containers
                    && inner.filling < self.config.max_concurrent_fills
                    && memory_ok
                {
                    entry.filling += 1;
                    inner.filling += 1;
                    inner.total += 1;
                    fills.push((key.clone(), entry.spec.clone()));
                }
            }
        }
        if !memory_ok {
            debug!(
                min_host_available_bytes = self.config.min_host_available_bytes,
                "host memory low; not filling warm pools"
            );
        }
        self.remove_in_background(discard);
        for (key, spec) in fills {
            tokio::spawn(self.clone().fill(key, spec));
        }
    }

    async fn fill(self: Arc<Self>, key: PoolKey, spec: Arc<KeySpec>) {
        // The id of the episode that will take the container, its label from the start.
        let label = (self.new_episode_id)();
        let started = Instant::now();
        let result = tokio::select! {
            result = Episode::prepare(&self.engine, &label, &spec.instance, &spec.config) => Some(result),
            _ = self.stop.cancelled() => None,
        };
        let mut leftover = None;
        {
            let mut guard = self.lock();
            let inner = &mut *guard;
            inner.filling -= 1;
            let stopped = self.stop.is_cancelled();
            let entry = inner.keys.get_mut(&key);
            match (result, entry) {
                (Some(Ok(prepared)), Some(entry)) if !stopped => {
                    debug!(pool_key = %key, container = %prepared.sandbox.id(), episode_id = %label, fill_ms = started.elapsed().as_millis() as u64, "pooled container ready");
                    self.fills_ok.fetch_add(1, Ordering::Relaxed);
                    entry.filling -= 1;
                    entry.failures = 0;
                    entry.last_error = None;
                    entry.ready.push_back(Ready {
                        taken: Taken {
                            episode_id: label,
                            prepared,
                        },
                        since: Instant::now(),
                    });
                    entry.notify.notify_waiters();
                }
                (result, entry) => {
                    inner.total -= 1;
                    if let Some(entry) = entry {
                        entry.filling -= 1;
                        if let Some(Err(error)) = &result {
                            self.fills_failed.fetch_add(1, Ordering::Relaxed);
                            entry.failures = entry.failures.saturating_add(1);
                            let backoff =
                                Duration::from_secs(1u64 << entry.failures.min(6)).min(MAX_BACKOFF);
                            entry.backoff_until = Some(Instant::now() + backoff);
                            entry.last_error = Some(error.to_string());
                            warn!(pool_key = %key, image = %image_for(&spec.instance, &spec.config.image_template), %error, backoff_secs = backoff.as_secs(), "preparing a pooled container failed; backing off");
                        }
                        entry.notify.notify_waiters();
                    }
                    if let Some(Ok(prepared)) = result {
                        leftover = Some(prepared);
                    }
                }
            }
        }
        if let Some(prepared) = leftover {
            let _ = prepared.sandbox.remove().await;
        }
        self.wake.notify_one();
    }
}

/// The host's `MemAvailable` from /proc/meminfo, bytes; `None` when unreadable (then memory does not gate fills).
pub fn host_available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_ignore_updatable_limits_and_differ_by_creation_settings() {
        let instance: Instance = serde_json::from_value(serde_json::json!({
            "instance_id": "a__b-1", "repo": "a/b", "base_commit": "abc", "problem_statement": "p",
            "version": "1", "image": "img:1", "patch": "p", "test_patch": "t",
            "FAIL_TO_PASS": "[]", "PASS_TO_PASS": "[]"
        }))
        .unwrap();
        let config = EpisodeConfig::default();
        let mut limits = config.clone();
        limits.sandbox.memory_bytes = 1 << 30;
        limits.sandbox.pids_limit = 7;
        limits.max_turns = 3;
        assert_eq!(
            PoolKey::of(&instance, &config),
            PoolKey::of(&instance, &limits)
        );
        let mut network = config.clone();
        network.sandbox.network_mode = "bridge".into();
        assert_ne!(
            PoolKey::of(&instance, &config),
            PoolKey::of(&instance, &network)
        );
        let mut other = instance.clone();
        other.base_commit = "def".into();
        assert_ne!(
            PoolKey::of(&instance, &config),
            PoolKey::of(&other, &config)
        );
        assert_eq!(PoolKey::of(&instance, &config).as_str().len(), 16);
    }

    #[test]
    fn inconsistent_configs_are_refused() {
        assert!(PoolConfig::default().check().is_ok());
        let over = PoolConfig {
            max_containers: 1,
            auto: AutoPolicy {
                enabled: true,
                ..AutoPolicy::default()
            },
            ..PoolConfig::default()
        };
        assert_eq!(over.check().unwrap_err().0, "pool.auto.size");
        let off = PoolConfig {
            max_containers: 0,
            max_concurrent_fills: 0,
            ..PoolConfig::default()
        };
        assert!(off.check().is_ok());
        assert!(host_available_bytes().is_some());
    }
}
