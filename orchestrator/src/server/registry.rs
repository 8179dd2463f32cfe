//! The episodes a server holds. Each episode sits in a slot with its own async mutex, so steps of one episode
//! run one at a time while different episodes run concurrently; a short summary beside the mutex answers
//! listings without waiting for a step in flight. Stored step replies make Step idempotent by request id.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::admission::EpisodePermit;
use super::proto;
use crate::episode::{Episode, ToolFormat};
use crate::trajectory::EpisodeStatus;

/// Total observation bytes of stored replies kept per live episode (oldest evicted first).
pub const REPLY_CACHE_BYTES: usize = 4 << 20;
/// Stored replies kept after an episode ended (for a client retrying its last step).
pub const REPLIES_KEPT_AFTER_END: usize = 8;

/// A live episode and what the server adds to it.
pub struct LiveEpisode {
    /// The episode.
    pub episode: Episode,
    /// Grade the submission when a submit succeeds.
    pub grade_on_submit: bool,
    /// Rewards and report of the last grading, recorded at the end.
    pub graded: Option<(Value, Value)>,
    /// The live-episode admission slot, freed when the episode ends.
    pub permit: EpisodePermit,
}

/// What the mutex of a slot guards.
pub struct SlotState {
    /// The episode while live; `None` once ended.
    pub live: Option<LiveEpisode>,
    /// Stored Step replies by request id.
    pub replies: ReplyCache,
}

/// Listing facts, readable without the slot's mutex.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// How it ended; `None` while live.
    pub status: Option<EpisodeStatus>,
    /// Steps taken.
    pub n_steps: u32,
    /// Last accepted submission.
    pub submission: Option<StoredSubmission>,
}

/// A submission as the registry keeps it: the patch, shared (listings and clones never copy it), with its size
/// and SHA-256 computed once.
#[derive(Debug, Clone)]
pub struct StoredSubmission {
    /// The patch.
    pub patch: Arc<str>,
    /// Lowercase hex SHA-256 of the patch.
    pub sha256: String,
}

impl StoredSubmission {
    /// Stores `patch` and computes its digest.
    pub fn new(patch: &str) -> Self {
        Self {
            patch: Arc::from(patch),
            sha256: sha256_hex(patch.as_bytes()),
        }
    }
}

/// Lowercase hex SHA-256 of `bytes` (the crate's one definition).
pub use crate::trajectory::digest::sha256_hex;

/// Bytes an ended episode's slot is charged for besides its submission and stored replies (ids, labels, summary).
const ENDED_SLOT_OVERHEAD_BYTES: usize = 1024;

/// One episode of the registry.
pub struct EpisodeSlot {
    /// Episode id.
    pub id: String,
    /// Creation order (newest is largest); the ListEpisodes page token.
    pub seq: u64,
    /// Task id.
    pub instance_id: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// Client labels.
    pub labels: BTreeMap<String, String>,
    /// Tool format.
    pub tool_format: ToolFormat,
    /// The trajectory file.
    pub trajectory_path: PathBuf,
    /// Guarded state; held for the whole of a step (by the step's own task: `lock_owned`).
    pub state: Arc<tokio::sync::Mutex<SlotState>>,
    summary: Mutex<Summary>,
    last_active_ms: AtomicU64,
    clock: Instant,
}

impl EpisodeSlot {
    /// Marks activity now (Step start and end).
    pub fn touch(&self) {
        let ms = self.clock.elapsed().as_millis() as u64;
        self.last_active_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the last activity.
    pub fn idle(&self) -> Duration {
        let now = self.clock.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_active_ms.load(Ordering::Relaxed)))
    }

    /// The listing facts.
    pub fn summary(&self) -> Summary {
        self.summary
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Updates the listing facts.
    pub fn set_summary(&self, summary: Summary) {
        match self.summary.lock() {
            Ok(mut guard) => *guard = summary,
            Err(poisoned) => *poisoned.into_inner() = summary,
        }
    }

    /// The summary's submission for `patch` (the episode's current one): the stored one when unchanged, so the
    /// digest is computed once per new submission.
    pub fn stored_submission(&self, patch: Option<&str>) -> Option<StoredSubmission> {
        let patch = patch?;
        match self.summary().submission {
            Some(stored) if *stored.patch == *patch => Some(stored),
            _ => Some(StoredSubmission::new(patch)),
        }
    }

    /// Bytes the registry charges an ended episode: its submission, `reply_bytes` of stored replies, labels and a
    /// fixed overhead.
    fn retained_bytes(&self, reply_bytes: usize) -> usize {
        let labels: usize = self.labels.iter().map(|(k, v)| k.len() + v.len()).sum();
        let submission = self.summary().submission.map_or(0, |s| s.patch.len());
        ENDED_SLOT_OVERHEAD_BYTES + labels + submission + reply_bytes
    }

    /// The episode's public description.
    pub fn info(&self) -> proto::EpisodeInfo {
        let summary = self.summary();
        proto::EpisodeInfo {
            episode_id: self.id.clone(),
            instance_id: self.instance_id.clone(),
            live: summary.status.is_none(),
            status: summary
                .status
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            n_steps: summary.n_steps,
            submission_bytes: summary
                .submission
                .as_ref()
                .map_or(0, |s| s.patch.len() as u64),
            submission_sha256: summary.submission.map(|s| s.sha256).unwrap_or_default(),
            created_at: self.created_at.clone(),
            idle_ms: self.idle().as_millis() as u64,
            labels: self.labels.clone().into_iter().collect(),
            tool_format: super::convert::tool_format_to_proto(self.tool_format) as i32,
            // `submission` (deprecated) stays empty: listings carry the size and hash, not the patch.
            ..Default::default()
        }
    }
}

/// SHA-256 of what a Step asked for (action and model turn), stored with its reply: a retry must ask for the same.
pub type RequestDigest = [u8; 32];

/// The request id was used before for a different request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestMismatch;

/// A stored Step reply and the digest of the request it answered.
struct StoredReply {
    digest: RequestDigest,
    reply: proto::StepResponse,
}

/// Stored Step replies, bounded by total observation bytes.
#[derive(Default)]
pub struct ReplyCache {
    by_id: HashMap<String, StoredReply>,
    order: VecDeque<String>,
    bytes: usize,
    /// Request ids whose reply was evicted: the digest of their request and the step they ran. A retry of one must
    /// never run again (tens of bytes a step; an episode has at most its turn budget of steps).
    evicted: HashMap<String, (RequestDigest, u32)>,
    /// Bytes charged for `evicted` (each id plus a fixed overhead): an ended episode is charged for them too.
    evicted_bytes: usize,
}

/// Memory of one evicted request id besides its text: digest, step index, map entry.
const EVICTED_ID_OVERHEAD_BYTES: usize = 96;

/// What the cache knows of a request id.
#[derive(Debug, PartialEq)]
pub enum Lookup<'a> {
    /// Never seen: run the step.
    Unknown,
    /// Its reply, to replay.
    Stored(&'a proto::StepResponse),
    /// It ran as step `step_idx`, but its reply was evicted to bound memory.
    Evicted {
        /// The step it ran as.
        step_idx: u32,
    },
}

impl ReplyCache {
    /// The stored reply for `request_id`, whatever request it answered.
    pub fn get(&self, request_id: &str) -> Option<&proto::StepResponse> {
        self.by_id.get(request_id).map(|stored| &stored.reply)
    }

    /// The stored reply for `request_id` if it answered a request with `digest`; [`DigestMismatch`] if it answered
    /// another request.
    pub fn lookup(
        &self,
        request_id: &str,
        digest: &RequestDigest,
    ) -> Result<Lookup<'_>, DigestMismatch> {
        match (self.by_id.get(request_id), self.evicted.get(request_id)) {
            (Some(stored), _) if stored.digest == *digest => Ok(Lookup::Stored(&stored.reply)),
            (Some(_), _) => Err(DigestMismatch),
            (None, Some((seen, step_idx))) if seen == digest => Ok(Lookup::Evicted {
                step_idx: *step_idx,
            }),
            (None, Some(_)) => Err(DigestMismatch),
            (None, None) => Ok(Lookup::Unknown),
        }
    }

    /// Stores a reply and the digest of its request, evicting the oldest beyond the byte bound (the newest is
    /// always kept).
    pub fn insert(
        &mut self,
        request_id: String,
        digest: RequestDigest,
        reply: proto::StepResponse,
    ) {
        self.bytes += reply_bytes(&reply);
        if let Some(old) = self
            .by_id
            .insert(request_id.clone(), StoredReply { digest, reply })
        {
            self.bytes = self.bytes.saturating_sub(reply_bytes(&old.reply));
        } else {
            self.order.push_back(request_id);
        }
        while self.bytes > REPLY_CACHE_BYTES && self.order.len() > 1 {
            self.evict_oldest();
        }
    }

    /// Keeps only the `n` newest replies.
    pub fn keep_newest(&mut self, n: usize) {
        while self.order.len() > n {
            self.evict_oldest();
        }
    }

    /// Bytes charged for the stored replies (observation text plus a fixed overhead each).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes the cache holds for the retention bound of an ended episode: stored replies and evicted ids.
    pub fn retained_bytes(&self) -> usize {
        self.bytes + self.evicted_bytes
    }

    /// Number of stored replies.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Nothing stored.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn evict_oldest(&mut self) {
        if let Some(id) = self.order.pop_front() {
            if let Some(old) = self.by_id.remove(&id) {
                self.bytes = self.bytes.saturating_sub(reply_bytes(&old.reply));
                self.evicted_bytes += id.len() + EVICTED_ID_OVERHEAD_BYTES;
                self.evicted.insert(id, (old.digest, old.reply.step_idx));
            }
        }
    }
}

fn reply_bytes(reply: &proto::StepResponse) -> usize {
    reply.observation.as_ref().map_or(0, |o| o.text.len()) + 64
}

/// What a new slot is made of.
pub struct NewSlot {
    /// Episode id.
    pub id: String,
    /// Task id.
    pub instance_id: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Tool format.
    pub tool_format: ToolFormat,
    /// The live episode.
    pub live: LiveEpisode,
}

/// All episodes of the server: live ones, and ended ones up to a count and a byte budget (oldest forgotten first).
pub struct Registry {
    inner: Mutex<RegistryInner>,
    max_ended: usize,
    max_ended_bytes: usize,
    clock: Instant,
}

#[derive(Default)]
struct RegistryInner {
    slots: HashMap<String, Arc<EpisodeSlot>>,
    /// Ended episodes, oldest first, with the bytes each is charged.
    ended: VecDeque<(String, usize)>,
    /// Sum of the charged bytes of `ended`.
    ended_bytes: usize,
    next_seq: u64,
}

impl Registry {
    /// An empty registry remembering at most `max_ended` ended episodes holding at most `max_ended_bytes` bytes
    /// together (submissions, stored replies, labels; see [`Registry::mark_ended`]).
    pub fn new(max_ended: usize, max_ended_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(RegistryInner::default()),
            max_ended,
            max_ended_bytes,
            clock: Instant::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RegistryInner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a live episode.
    pub fn insert(&self, new: NewSlot) -> Arc<EpisodeSlot> {
        let trajectory_path = new.live.episode.trajectory_path();
        self.insert_slot(
            new.id,
            new.instance_id,
            new.labels,
            new.tool_format,
            trajectory_path,
            Some(new.live),
        )
    }

    fn insert_slot(
        &self,
        id: String,
        instance_id: String,
        labels: BTreeMap<String, String>,
        tool_format: ToolFormat,
        trajectory_path: PathBuf,
        live: Option<LiveEpisode>,
    ) -> Arc<EpisodeSlot> {
        let mut inner = self.lock();
        inner.next_seq += 1;
        let slot = Arc::new(EpisodeSlot {
            id: id.clone(),
            seq: inner.next_seq,
            instance_id,
            created_at: crate::trajectory::record::now_rfc3339(),
            labels,
            tool_format,
            trajectory_path,
            state: Arc::new(tokio::sync::Mutex::new(SlotState {
                live,
                replies: ReplyCache::default(),
            })),
            summary: Mutex::new(Summary::default()),
            last_active_ms: AtomicU64::new(0),
            clock: self.clock,
        });
        slot.touch();
        inner.slots.insert(id, slot.clone());
        slot
    }

    /// The slot of `episode_id`.
    pub fn get(&self, episode_id: &str) -> Option<Arc<EpisodeSlot>> {
        self.lock().slots.get(episode_id).cloned()
    }

    /// Notes that an episode ended, charging it for its submission, `reply_bytes` of stored replies and its labels;
    /// forgets the oldest ended ones beyond the count or the byte budget (an episode over the whole budget on its
    /// own is forgotten at once; its trajectory stays on disk for GetTrajectory / GetSubmission).
    pub fn mark_ended(&self, episode_id: &str, reply_bytes: usize) {
        let charged = self
            .get(episode_id)
            .map_or(ENDED_SLOT_OVERHEAD_BYTES, |slot| {
                slot.retained_bytes(reply_bytes)
            });
        let mut inner = self.lock();
        // Once: an ending that panicked after charging is charged again by `end_after_panic`.
        if inner.ended.iter().any(|(id, _)| id == episode_id) {
            return;
        }
        inner.ended.push_back((episode_id.to_owned(), charged));
        inner.ended_bytes += charged;
        while inner.ended.len() > self.max_ended || inner.ended_bytes > self.max_ended_bytes {
            let Some((old, bytes)) = inner.ended.pop_front() else {
                break;
            };
            inner.ended_bytes -= bytes;
            inner.slots.remove(&old);
            tracing::debug!(episode_id = %old, bytes, "forgetting an ended episode (retention bound)");
        }
    }

    /// Ended episodes remembered and the bytes they are charged.
    pub fn ended_usage(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.ended.len(), inner.ended_bytes)
    }

    /// Every slot, newest first.
    pub fn snapshot(&self) -> Vec<Arc<EpisodeSlot>> {
        let mut slots: Vec<_> = self.lock().slots.values().cloned().collect();
        slots.sort_by_key(|slot| std::cmp::Reverse(slot.seq));
        slots
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(text_len: usize) -> proto::StepResponse {
        proto::StepResponse {
            observation: Some(proto::Observation {
                text: "x".repeat(text_len),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// An ended episode of `id` with a submission of `patch_bytes` bytes, marked ended with `reply_bytes`.
    fn end_one(registry: &Registry, id: &str, patch_bytes: usize, reply_bytes: usize) {
        let slot = registry.insert_slot(
            id.to_owned(),
            "task".to_owned(),
            BTreeMap::new(),
            ToolFormat::Text,
            PathBuf::from(format!("/nonexistent/{id}.jsonl")),
            None,
        );
        let patch = "p".repeat(patch_bytes);
        slot.set_summary(Summary {
            status: Some(EpisodeStatus::Submitted),
            n_steps: 1,
            submission: slot.stored_submission(Some(&patch)),
        });
        registry.mark_ended(id, reply_bytes);
    }

    #[test]
    fn ended_episodes_are_bounded_in_bytes_oldest_forgotten_first() {
        let per_episode = 3000 + ENDED_SLOT_OVERHEAD_BYTES;
        let registry = Registry::new(100, 2 * per_episode + 500);
        end_one(&registry, "a", 3000, 0);
        end_one(&registry, "b", 3000, 0);
        assert_eq!(registry.ended_usage(), (2, 2 * per_episode));
        end_one(&registry, "c", 3000, 0);
        assert!(registry.get("a").is_none(), "the oldest is forgotten");
        assert!(registry.get("b").is_some() && registry.get("c").is_some());
        assert_eq!(registry.ended_usage(), (2, 2 * per_episode));

        // Stored replies count too: a big reply store pushes out two older episodes.
        end_one(&registry, "d", 0, 3000 + per_episode);
        assert!(registry.get("b").is_none() && registry.get("c").is_none());
        assert!(registry.get("d").is_some());
        assert_eq!(
            registry.ended_usage(),
            (1, 3000 + per_episode + ENDED_SLOT_OVERHEAD_BYTES)
        );

        // One episode over the whole budget is not kept at all; the count bound still applies on its own.
        end_one(&registry, "huge", 3 * per_episode, 0);
        assert!(registry.get("huge").is_none() && registry.get("d").is_none());
        assert_eq!(registry.ended_usage(), (0, 0));
        let by_count = Registry::new(2, usize::MAX);
        for id in ["x", "y", "z"] {
            end_one(&by_count, id, 10, 0);
        }
        assert!(by_count.get("x").is_none() && by_count.get("z").is_some());
        assert_eq!(by_count.ended_usage().0, 2);
    }

    #[test]
    fn info_carries_the_submission_size_and_hash_not_the_patch() {
        let registry = Registry::new(10, usize::MAX);
        end_one(&registry, "e", 0, 0);
        let slot = registry.get("e").unwrap();
        slot.set_summary(Summary {
            status: Some(EpisodeStatus::Submitted),
            n_steps: 1,
            submission: slot.stored_submission(Some("abc")),
        });
        let info = slot.info();
        assert_eq!(info.submission_bytes, 3);
        assert_eq!(
            info.submission_sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        #[allow(deprecated)]
        let patch_field = info.submission;
        assert_eq!(patch_field, "", "the deprecated patch field stays empty");
        let same = slot.stored_submission(Some("abc")).unwrap();
        assert!(Arc::ptr_eq(
            &same.patch,
            &slot.summary().submission.unwrap().patch
        ));
    }

    #[test]
    fn reply_cache_is_bounded_and_keeps_the_newest() {
        let mut cache = ReplyCache::default();
        cache.insert("a".into(), [0; 32], reply(10));
        cache.insert("b".into(), [0; 32], reply(REPLY_CACHE_BYTES));
        assert!(cache.get("a").is_none(), "oldest evicted beyond the bound");
        assert!(cache.get("b").is_some(), "newest always kept");
        for i in 0..20 {
            cache.insert(format!("r{i}"), [0; 32], reply(1));
        }
        cache.keep_newest(REPLIES_KEPT_AFTER_END);
        assert_eq!(cache.len(), REPLIES_KEPT_AFTER_END);
        assert!(cache.get("r19").is_some() && cache.get("r11").is_none());
        // An evicted request is remembered as run: a retry must not run it again.
        let mut ran = reply(1);
        ran.step_idx = 7;
        let mut cache = ReplyCache::default();
        cache.insert("old".into(), [5; 32], ran);
        cache.insert("big".into(), [0; 32], reply(REPLY_CACHE_BYTES));
        assert_eq!(
            cache.lookup("old", &[5; 32]),
            Ok(Lookup::Evicted { step_idx: 7 })
        );
        assert_eq!(cache.lookup("old", &[6; 32]), Err(DigestMismatch));
    }

    /// A client choosing long request ids cannot make an ended episode hold memory it is not charged for: the ids
    /// of evicted replies count too.
    #[test]
    fn evicted_request_ids_are_charged_to_the_episode() {
        let mut cache = ReplyCache::default();
        for i in 0..1000 {
            cache.insert(format!("{i:0128}"), [0; 32], reply(10));
        }
        cache.keep_newest(1);
        assert_eq!(cache.len(), 1);
        assert!(
            cache.retained_bytes() >= 999 * 128,
            "{} bytes charged for 999 evicted 128-byte ids",
            cache.retained_bytes()
        );
    }

    #[test]
    fn a_stored_reply_answers_only_the_request_it_was_for() {
        let mut cache = ReplyCache::default();
        assert_eq!(cache.lookup("r", &[1; 32]), Ok(Lookup::Unknown));
        cache.insert("r".into(), [1; 32], reply(3));
        assert_eq!(cache.lookup("r", &[1; 32]), Ok(Lookup::Stored(&reply(3))));
        assert_eq!(cache.lookup("r", &[2; 32]), Err(DigestMismatch));
    }
}
