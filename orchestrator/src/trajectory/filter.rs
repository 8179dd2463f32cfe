//! Export-time selection of trajectories: per-trajectory filters (finished, status, resolved, reward range, repo,
//! turns, tokens), dedup (identical conversations, near-identical final patches) and a per-task cap.
//!
//! Everything works on a [`Summary`], which comes from a trajectory ([`Summary::of`]) or, for harvest output, can
//! be filled from a manifest row without decoding the rollout. [`select`] decides for a whole input set (dedup and
//! the cap need all of it) through [`Candidates`], which an export over millions of rows fills one trajectory at a
//! time and which keeps only what dedup and the cap need; each exclusion has one [`Exclusion`] reason, counted in
//! [`ExclusionCounts`].
//!
//! Order of the decisions (a trajectory is counted under the first that excludes it): unfinished, empty, status,
//! resolved, reward, repo, turns, tokens, then — over the survivors, in the cap order (resolved first, then by
//! rollout id, else episode id) — dedup (the first of a duplicate set is kept) and the per-task cap.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde_json::{json, Value};

use super::digest::{hex, sha256_hex};
use super::reader::ReadTrajectory;
use super::record::{EpisodeStatus, StepRecord, StepTokens};

/// Which duplicates to drop (per task).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum Dedup {
    /// Keep duplicates.
    #[default]
    None,
    /// Drop identical trajectories: the same conversation content ([`conversation_hash`]).
    Trajectory,
    /// Drop trajectories whose final patch is near-identical to a kept one's ([`patch_hash`]).
    Patch,
    /// Both.
    Both,
}

/// Which reward `--min-reward` / `--max-reward` read from `episode_end.rewards` (booleans count 0 / 1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum RewardKey {
    /// `execution`: the resolved / unresolved reward (±1 by default).
    #[default]
    Execution,
    /// `shaped`: execution with similarity credit.
    Shaped,
    /// `similarity`: SWE-RL patch similarity to the reference.
    Similarity,
    /// `resolved` as 0 / 1.
    Resolved,
}

impl RewardKey {
    /// The key in `rewards`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Execution => "execution",
            Self::Shaped => "shaped",
            Self::Similarity => "similarity",
            Self::Resolved => "resolved",
        }
    }
}

/// Why a trajectory was left out of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Exclusion {
    /// No `episode_end` (without `--include-unfinished`).
    Unfinished,
    /// No step (without `--include-unfinished`).
    Empty,
    /// Status not among `--status`.
    Status,
    /// `--resolved` did not match.
    Resolved,
    /// Reward outside `--min-reward` / `--max-reward`, or no reward.
    Reward,
    /// Repository not among `--repo`.
    Repo,
    /// Turns outside `--min-turns` / `--max-turns`.
    Turns,
    /// Tokens outside `--min-tokens` / `--max-tokens`.
    Tokens,
    /// A duplicate of a kept trajectory (`--dedup`).
    Dedup,
    /// Over `--per-task-cap`.
    Cap,
}

impl Exclusion {
    /// Every reason, in decision order.
    pub const ALL: [Exclusion; 10] = [
        Self::Unfinished,
        Self::Empty,
        Self::Status,
        Self::Resolved,
        Self::Reward,
        Self::Repo,
        Self::Turns,
        Self::Tokens,
        Self::Dedup,
        Self::Cap,
    ];

    /// The reason's name in the summary line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unfinished => "unfinished",
            Self::Empty => "empty",
            Self::Status => "status",
            Self::Resolved => "resolved",
            Self::Reward => "reward",
            Self::Repo => "repo",
            Self::Turns => "turns",
            Self::Tokens => "tokens",
            Self::Dedup => "dedup",
            Self::Cap => "cap",
        }
    }
}

/// Exclusions counted per reason; displays as `unfinished 1, empty 0, …` (every reason, in decision order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExclusionCounts(BTreeMap<Exclusion, u64>);

impl ExclusionCounts {
    /// Counts one exclusion.
    pub fn add(&mut self, reason: Exclusion) {
        *self.0.entry(reason).or_default() += 1;
    }

    /// Exclusions for `reason`.
    pub fn get(&self, reason: Exclusion) -> u64 {
        self.0.get(&reason).copied().unwrap_or_default()
    }

    /// All exclusions.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

impl fmt::Display for ExclusionCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = Exclusion::ALL
            .iter()
            .map(|reason| format!("{} {}", reason.as_str(), self.get(*reason)))
            .collect();
        f.write_str(&parts.join(", "))
    }
}

/// Token totals over an episode's model calls (steps and the final answer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenTotals {
    /// Sum of the calls' prompt tokens.
    pub prompt: u64,
    /// Sum of the calls' completion tokens.
    pub completion: u64,
}

impl TokenTotals {
    /// Prompt + completion.
    pub fn total(&self) -> u64 {
        self.prompt.saturating_add(self.completion)
    }

    /// As exported: `{"prompt", "completion", "total"}`.
    pub fn to_json(self) -> Value {
        json!({"prompt": self.prompt, "completion": self.completion, "total": self.total()})
    }

    /// The totals of `trajectory`.
    pub fn of(trajectory: &ReadTrajectory) -> TokenTotals {
        let mut totals = TokenTotals::default();
        for tokens in model_calls(trajectory) {
            totals.prompt = totals.prompt.saturating_add(tokens.prompt.unwrap_or(0));
            totals.completion = totals
                .completion
                .saturating_add(tokens.completion.unwrap_or(0));
        }
        totals
    }
}

/// The token records of the episode's calls in order: each step's, then the final answer's.
pub(crate) fn model_calls(trajectory: &ReadTrajectory) -> impl Iterator<Item = &StepTokens> {
    trajectory.steps.iter().map(|step| &step.tokens).chain(
        trajectory
            .end
            .as_ref()
            .and_then(|end| end.final_answer_tokens.as_ref()),
    )
}

/// What the filters look at for one trajectory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Episode id.
    pub episode_id: String,
    /// Task id.
    pub instance_id: String,
    /// The task's repository (`owner/name`), when the task row has one.
    pub repo: Option<String>,
    /// `episode_end.status` (snake_case); `None` when the episode has no end.
    pub status: Option<String>,
    /// Steps taken.
    pub n_turns: u32,
    /// `rewards`, when graded.
    pub rewards: Option<Value>,
    /// The grading verdict (`rewards.resolved`; false when not graded).
    pub resolved: bool,
    /// Token totals.
    pub tokens: TokenTotals,
    /// The harvest rollout id, when the trajectory comes from a harvest.
    pub rollout_id: Option<String>,
    /// [`conversation_hash`], when computed.
    pub trajectory_hash: Option<String>,
    /// [`patch_hash`] of the submission, when there is one.
    pub patch_hash: Option<String>,
}

impl Summary {
    /// The summary of `trajectory`, hashes included.
    pub fn of(trajectory: &ReadTrajectory) -> Summary {
        let start = trajectory.start.as_ref();
        let end = trajectory.end.as_ref();
        let rewards = end.and_then(|e| e.rewards.clone());
        Summary {
            episode_id: start.map(|s| s.episode_id.clone()).unwrap_or_default(),
            instance_id: start.map(|s| s.instance_id.clone()).unwrap_or_default(),
            repo: start.and_then(|s| s.task.get("repo")?.as_str().map(str::to_owned)),
            status: end.map(|e| e.status.as_str().to_owned()),
            n_turns: u32::try_from(trajectory.steps.len()).unwrap_or(u32::MAX),
            resolved: resolved_of(rewards.as_ref()).unwrap_or(false),
            rewards,
            tokens: TokenTotals::of(trajectory),
            rollout_id: None,
            trajectory_hash: Some(conversation_hash(trajectory)),
            patch_hash: end
                .and_then(|e| e.submission.as_deref())
                .and_then(patch_hash),
        }
    }

    /// The id the cap order sorts by: the rollout id, else the episode id.
    fn order_id(&self) -> &str {
        self.rollout_id.as_deref().unwrap_or(&self.episode_id)
    }
}

/// `rewards.resolved` as a boolean, when graded.
pub fn resolved_of(rewards: Option<&Value>) -> Option<bool> {
    rewards?.get("resolved")?.as_bool()
}

/// SHA-256 hex of the conversation content, the harvest manifest's `trajectory_hash` (the store computes the same
/// bytes from records; `tests/it/export.rs` holds the two equal): per step its raw action and its observation, then
/// the final answer, each length-prefixed (`A<len>:…`, `O<len>:…`, `F<len>:…`). Ids, times, tokens, separate
/// reasoning and the prompt are left out: two rollouts of a task that did and saw the same things hash the same.
pub fn conversation_hash(trajectory: &ReadTrajectory) -> String {
    conversation_hash_of(
        trajectory.steps.iter(),
        trajectory
            .end
            .as_ref()
            .and_then(|e| e.final_answer.as_deref()),
    )
}

/// The one core of [`conversation_hash`] and the harvest store's `trajectory_hash`: the steps' raw actions and
/// observations in order, then the final answer, each length-prefixed (`A<len>:…`, `O<len>:…`, `F<len>:…`).
pub fn conversation_hash_of<'a>(
    steps: impl Iterator<Item = &'a StepRecord>,
    final_answer: Option<&str>,
) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut part = |tag: &str, text: &str| {
        context.update(format!("{tag}{}:", text.len()).as_bytes());
        context.update(text.as_bytes());
    };
    for step in steps {
        part("A", &step.raw_action);
        part("O", &step.observation);
    }
    if let Some(answer) = final_answer {
        part("F", answer);
    }
    hex(context.finish().as_ref())
}

/// SHA-256 hex of [`swe_env_grading::patch_key::normalize`] of `submission` — the harvest manifest's
/// `patch_hash`; `None` when the submission normalises to nothing (empty, or whitespace / comments only).
pub fn patch_hash(submission: &str) -> Option<String> {
    let normalized = swe_env_grading::patch_key::normalize(submission);
    (!normalized.trim().is_empty()).then(|| sha256_hex(normalized.as_bytes()))
}

/// The export's selection settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filters {
    /// Keep trajectories without an `episode_end` or without steps.
    pub include_unfinished: bool,
    /// Keep only these statuses (empty: any).
    pub statuses: Vec<EpisodeStatus>,
    /// Keep only this grading verdict.
    pub resolved: Option<bool>,
    /// Which reward the range reads.
    pub reward_key: RewardKey,
    /// Lowest reward kept.
    pub min_reward: Option<f64>,
    /// Highest reward kept.
    pub max_reward: Option<f64>,
    /// Keep only these repositories (empty: any).
    pub repos: Vec<String>,
    /// Fewest turns kept.
    pub min_turns: Option<u32>,
    /// Most turns kept.
    pub max_turns: Option<u32>,
    /// Fewest total tokens kept.
    pub min_tokens: Option<u64>,
    /// Most total tokens kept.
    pub max_tokens: Option<u64>,
    /// Duplicates to drop.
    pub dedup: Dedup,
    /// At most this many trajectories per task.
    pub per_task_cap: Option<usize>,
}

impl Filters {
    /// Whether the decision needs the whole input set (dedup or a cap), not one trajectory at a time.
    pub fn needs_all(&self) -> bool {
        self.dedup != Dedup::None || self.per_task_cap.is_some()
    }

    /// Whether dedup needs the conversation hash.
    pub fn needs_trajectory_hash(&self) -> bool {
        matches!(self.dedup, Dedup::Trajectory | Dedup::Both)
    }

    /// The first per-trajectory filter that excludes `summary`, if any (dedup and the cap are [`select`]'s).
    pub fn check(&self, summary: &Summary) -> Option<Exclusion> {
        if !self.include_unfinished {
            if summary.status.is_none() {
                return Some(Exclusion::Unfinished);
            }
            if summary.n_turns == 0 {
                return Some(Exclusion::Empty);
            }
        }
        if !self.statuses.is_empty()
            && !self
                .statuses
                .iter()
                .any(|s| summary.status.as_deref() == Some(s.as_str()))
        {
            return Some(Exclusion::Status);
        }
        if self.resolved.is_some_and(|want| want != summary.resolved) {
            return Some(Exclusion::Resolved);
        }
        if self.min_reward.is_some() || self.max_reward.is_some() {
            let reward = summary
                .rewards
                .as_ref()
                .and_then(|r| r.get(self.reward_key.as_str()))
                .and_then(|v| v.as_f64().or_else(|| v.as_bool().map(f64::from)));
            let inside = reward.is_some_and(|r| {
                self.min_reward.is_none_or(|min| r >= min)
                    && self.max_reward.is_none_or(|max| r <= max)
            });
            if !inside {
                return Some(Exclusion::Reward);
            }
        }
        if !self.repos.is_empty()
            && !self
                .repos
                .iter()
                .any(|r| summary.repo.as_deref() == Some(r.as_str()))
        {
            return Some(Exclusion::Repo);
        }
        if !in_range(summary.n_turns, self.min_turns, self.max_turns) {
            return Some(Exclusion::Turns);
        }
        if !in_range(summary.tokens.total(), self.min_tokens, self.max_tokens) {
            return Some(Exclusion::Tokens);
        }
        None
    }
}

fn in_range<T: PartialOrd + Copy>(value: T, min: Option<T>, max: Option<T>) -> bool {
    min.is_none_or(|min| value >= min) && max.is_none_or(|max| value <= max)
}

/// The decision for every summary (same order): `None` = exported, else why not.
pub fn select(filters: &Filters, summaries: &[Summary]) -> Vec<Option<Exclusion>> {
    let mut decisions: Vec<Option<Exclusion>> =
        summaries.iter().map(|s| filters.check(s)).collect();
    if !filters.needs_all() {
        return decisions;
    }
    let mut candidates = Candidates::new(filters);
    for (index, summary) in summaries.iter().enumerate() {
        if decisions[index].is_none() {
            candidates.push(index as u64, summary);
        }
    }
    for (index, decision) in candidates.select() {
        decisions[index as usize] = decision;
    }
    decisions
}

/// What dedup and the per-task cap need of one trajectory that passed the per-trajectory filters, kept small (no
/// rewards, no repo, no status; hashes as 32 bytes; the task as a number): ~150 bytes.
#[derive(Debug)]
struct Candidate {
    /// Where it is in the input order.
    position: u64,
    task: u32,
    resolved: bool,
    /// The rollout id, else the episode id.
    order_id: Box<str>,
    /// The episode id when it is not `order_id` (the tie-break of equal rollout ids).
    episode_id: Option<Box<str>>,
    trajectory_hash: Option<[u8; 32]>,
    patch_hash: Option<[u8; 32]>,
}

impl Candidate {
    fn key(&self) -> (bool, &str, &str) {
        (
            !self.resolved,
            &self.order_id,
            self.episode_id.as_deref().unwrap_or(&self.order_id),
        )
    }
}

/// A hash as 32 bytes: the hex SHA-256 the summaries carry parsed, any other text (a hand-edited manifest) hashed,
/// so equal texts stay equal and different ones different.
fn hash_key(text: &str) -> [u8; 32] {
    let mut key = [0u8; 32];
    let parsed = text.len() == 64
        && key.iter_mut().enumerate().all(|(index, byte)| {
            u8::from_str_radix(&text[index * 2..index * 2 + 2], 16)
                .map(|value| *byte = value)
                .is_ok()
        });
    if !parsed {
        key.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref());
    }
    key
}

/// Dedup and the per-task cap over a stream of trajectories: [`Candidates::push`] the ones that passed
/// [`Filters::check`], one at a time, then [`Candidates::select`]. Holds a small [`Candidate`] per pushed
/// trajectory and one entry per task, never a summary, so an export over millions of harvest rows keeps only what
/// these two decisions need.
#[derive(Debug)]
pub struct Candidates {
    dedup: Dedup,
    per_task_cap: Option<usize>,
    tasks: HashMap<Box<str>, u32>,
    items: Vec<Candidate>,
}

impl Candidates {
    /// An empty set deciding by `filters`' dedup and cap.
    pub fn new(filters: &Filters) -> Candidates {
        Candidates {
            dedup: filters.dedup,
            per_task_cap: filters.per_task_cap,
            tasks: HashMap::new(),
            items: Vec::new(),
        }
    }

    /// Adds a trajectory that passed the per-trajectory filters, at `position` in the input order.
    pub fn push(&mut self, position: u64, summary: &Summary) {
        let next = u32::try_from(self.tasks.len()).unwrap_or(u32::MAX);
        let task = match self.tasks.get(summary.instance_id.as_str()) {
            Some(&task) => task,
            None => {
                self.tasks.insert(summary.instance_id.as_str().into(), next);
                next
            }
        };
        let order_id = summary.order_id();
        let by_trajectory = matches!(self.dedup, Dedup::Trajectory | Dedup::Both);
        let by_patch = matches!(self.dedup, Dedup::Patch | Dedup::Both);
        self.items.push(Candidate {
            position,
            task,
            resolved: summary.resolved,
            order_id: order_id.into(),
            episode_id: (summary.episode_id != order_id)
                .then(|| summary.episode_id.as_str().into()),
            trajectory_hash: summary
                .trajectory_hash
                .as_deref()
                .filter(|_| by_trajectory)
                .map(hash_key),
            patch_hash: summary
                .patch_hash
                .as_deref()
                .filter(|_| by_patch)
                .map(hash_key),
        });
    }

    /// How many trajectories were pushed.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether none was pushed.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The decision for every pushed trajectory, by position (ascending): `None` = exported, else `Dedup` or `Cap`.
    /// In the cap order (resolved first, then by rollout id, else episode id), the first of a duplicate set is kept
    /// and a task's trajectories past the cap are left out.
    pub fn select(mut self) -> Vec<(u64, Option<Exclusion>)> {
        self.items.sort_by(|a, b| a.key().cmp(&b.key()));
        let mut seen: HashSet<(u32, bool, [u8; 32])> = HashSet::new();
        let mut per_task = vec![0usize; self.tasks.len()];
        drop(self.tasks);
        let mut decisions: Vec<(u64, Option<Exclusion>)> = Vec::with_capacity(self.items.len());
        for item in &self.items {
            let keys = [
                item.trajectory_hash.map(|hash| (item.task, true, hash)),
                item.patch_hash.map(|hash| (item.task, false, hash)),
            ];
            if keys.iter().flatten().any(|key| seen.contains(key)) {
                decisions.push((item.position, Some(Exclusion::Dedup)));
                continue;
            }
            let kept = &mut per_task[item.task as usize];
            if self.per_task_cap.is_some_and(|cap| *kept >= cap) {
                decisions.push((item.position, Some(Exclusion::Cap)));
                continue;
            }
            *kept += 1;
            seen.extend(keys.into_iter().flatten());
            decisions.push((item.position, None));
        }
        drop(self.items);
        decisions.sort_unstable_by_key(|(position, _)| *position);
        decisions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(id: &str, task: &str, resolved: bool) -> Summary {
        Summary {
            episode_id: id.into(),
            instance_id: task.into(),
            repo: Some("o/r".into()),
            status: Some("submitted".into()),
            n_turns: 3,
            rewards: Some(
                json!({"resolved": resolved, "execution": if resolved { 1.0 } else { -1.0 }}),
            ),
            resolved,
            tokens: TokenTotals {
                prompt: 100,
                completion: 10,
            },
            rollout_id: None,
            trajectory_hash: Some(format!("t-{id}")),
            patch_hash: Some(format!("p-{id}")),
        }
    }

    #[test]
    fn per_trajectory_filters_name_the_first_reason() {
        let filters = Filters::default();
        let mut unfinished = summary("a", "t", true);
        unfinished.status = None;
        unfinished.n_turns = 0;
        assert_eq!(filters.check(&unfinished), Some(Exclusion::Unfinished));
        let mut empty = summary("a", "t", true);
        empty.n_turns = 0;
        assert_eq!(filters.check(&empty), Some(Exclusion::Empty));
        let including = Filters {
            include_unfinished: true,
            ..Filters::default()
        };
        assert_eq!(including.check(&unfinished), None);

        let s = summary("a", "t", false);
        let f = |filters: Filters| filters.check(&s);
        assert_eq!(
            f(Filters {
                statuses: vec![EpisodeStatus::MaxTurns],
                ..Filters::default()
            }),
            Some(Exclusion::Status)
        );
        assert_eq!(
            f(Filters {
                statuses: vec![EpisodeStatus::MaxTurns, EpisodeStatus::Submitted],
                ..Filters::default()
            }),
            None
        );
        assert_eq!(
            f(Filters {
                resolved: Some(true),
                ..Filters::default()
            }),
            Some(Exclusion::Resolved)
        );
        assert_eq!(
            f(Filters {
                min_reward: Some(0.0),
                ..Filters::default()
            }),
            Some(Exclusion::Reward)
        );
        assert_eq!(
            f(Filters {
                max_reward: Some(-1.0),
                ..Filters::default()
            }),
            None
        );
        assert_eq!(
            f(Filters {
                reward_key: RewardKey::Resolved,
                max_reward: Some(0.0),
                ..Filters::default()
            }),
            None,
            "resolved=false reads as 0"
        );
        assert_eq!(
            f(Filters {
                repos: vec!["x/y".into()],
                ..Filters::default()
            }),
            Some(Exclusion::Repo)
        );
        assert_eq!(
            f(Filters {
                min_turns: Some(4),
                ..Filters::default()
            }),
            Some(Exclusion::Turns)
        );
        assert_eq!(
            f(Filters {
                max_turns: Some(3),
                min_tokens: Some(111),
                ..Filters::default()
            }),
            Some(Exclusion::Tokens)
        );
        assert_eq!(
            f(Filters {
                max_tokens: Some(110),
                ..Filters::default()
            }),
            None
        );
        // Not graded: no reward, excluded by any reward bound.
        let mut ungraded = summary("a", "t", false);
        ungraded.rewards = None;
        assert_eq!(
            Filters {
                max_reward: Some(10.0),
                ..Filters::default()
            }
            .check(&ungraded),
            Some(Exclusion::Reward)
        );
    }

    #[test]
    fn dedup_keeps_the_first_in_cap_order_per_task() {
        let mut a = summary("a", "t1", false);
        let mut b = summary("b", "t1", true);
        let mut c = summary("c", "t1", false);
        let d = summary("d", "t2", false);
        // a and b: the same conversation; b and c: the same patch; d: another task with a's hashes.
        b.trajectory_hash = a.trajectory_hash.clone();
        c.patch_hash = b.patch_hash.clone();
        let mut d2 = d.clone();
        d2.trajectory_hash = a.trajectory_hash.clone();
        d2.patch_hash = b.patch_hash.clone();
        a.rollout_id = None;
        let all = vec![a.clone(), b.clone(), c.clone(), d2];
        let run = |dedup| {
            select(
                &Filters {
                    dedup,
                    ..Filters::default()
                },
                &all,
            )
        };
        assert_eq!(run(Dedup::None), vec![None; 4]);
        // b is resolved, so it comes first and is the one kept.
        assert_eq!(
            run(Dedup::Trajectory),
            vec![Some(Exclusion::Dedup), None, None, None]
        );
        assert_eq!(
            run(Dedup::Patch),
            vec![None, None, Some(Exclusion::Dedup), None]
        );
        assert_eq!(
            run(Dedup::Both),
            vec![Some(Exclusion::Dedup), None, Some(Exclusion::Dedup), None]
        );
        // No patch is no key: two patch-less trajectories are not duplicates.
        c.patch_hash = None;
        let mut e = summary("e", "t1", false);
        e.patch_hash = None;
        assert_eq!(
            select(
                &Filters {
                    dedup: Dedup::Patch,
                    ..Filters::default()
                },
                &[c, e]
            ),
            vec![None, None]
        );
    }

    #[test]
    fn the_cap_keeps_resolved_first_then_by_rollout_id() {
        let mut rows: Vec<Summary> = ["r3", "r1", "r2", "r0"]
            .iter()
            .map(|id| {
                let mut s = summary(&format!("ep-{id}"), "t", false);
                s.rollout_id = Some((*id).into());
                s
            })
            .collect();
        rows[2].resolved = true; // r2
        rows.push(summary("ep-x", "other", false));
        let filters = Filters {
            per_task_cap: Some(2),
            ..Filters::default()
        };
        let decisions = select(&filters, &rows);
        // Kept for task t: r2 (resolved), then r0 (lowest id); the other task is under its cap.
        assert_eq!(
            decisions,
            vec![Some(Exclusion::Cap), Some(Exclusion::Cap), None, None, None]
        );
        // Filtered-out trajectories do not take cap slots.
        rows[2].status = None;
        let decisions = select(&filters, &rows);
        assert_eq!(
            decisions,
            vec![
                Some(Exclusion::Cap),
                None,
                Some(Exclusion::Unfinished),
                None,
                None
            ]
        );
        let mut counts = ExclusionCounts::default();
        decisions.iter().flatten().for_each(|r| counts.add(*r));
        assert_eq!(
            counts.to_string(),
            "unfinished 1, empty 0, status 0, resolved 0, reward 0, repo 0, turns 0, tokens 0, dedup 0, cap 1"
        );
    }

    #[test]
    fn patch_hash_ignores_formatting_and_empty_patches() {
        let a = "--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a=1\n+a = 2  # fix\n";
        let b = "--- a/x.py\n+++ b/x.py\n@@ -7 +7 @@\n-a  =  1\n+a=2\n";
        assert_eq!(patch_hash(a), patch_hash(b));
        assert_ne!(patch_hash(a), patch_hash(&a.replace('2', "3")));
        assert_eq!(patch_hash("  \n"), None);
        assert_eq!(patch_hash(a).unwrap().len(), 64);
    }
}
