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
    pub submission: Option<String>,
}

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
    /// Guarded state; held for the whole of a step.
    pub state: tokio::sync::Mutex<SlotState>,
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
            submission: summary.submission.unwrap_or_default(),
            created_at: self.created_at.clone(),
            idle_ms: self.idle().as_millis() as u64,
            labels: self.labels.clone().into_iter().collect(),
            tool_format: super::convert::tool_format_to_proto(self.tool_format) as i32,
        }
    }
}

/// Stored Step replies, bounded by total observation bytes.
#[derive(Default)]
pub struct ReplyCache {
    by_id: HashMap<String, proto::StepResponse>,
    order: VecDeque<String>,
    bytes: usize,
}

impl ReplyCache {
    /// The stored reply for `request_id`.
    pub fn get(&self, request_id: &str) -> Option<&proto::StepResponse> {
        self.by_id.get(request_id)
    }

    /// Stores a reply, evicting the oldest beyond the byte bound (the newest is always kept).
    pub fn insert(&mut self, request_id: String, reply: proto::StepResponse) {
        self.bytes += reply_bytes(&reply);
        if let Some(old) = self.by_id.insert(request_id.clone(), reply) {
            self.bytes = self.bytes.saturating_sub(reply_bytes(&old));
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
                self.bytes = self.bytes.saturating_sub(reply_bytes(&old));
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

/// All episodes of the server: live ones, and up to a bound of ended ones.
pub struct Registry {
    inner: Mutex<RegistryInner>,
    max_ended: usize,
    clock: Instant,
}

#[derive(Default)]
struct RegistryInner {
    slots: HashMap<String, Arc<EpisodeSlot>>,
    ended: VecDeque<String>,
    next_seq: u64,
}

impl Registry {
    /// An empty registry remembering at most `max_ended` ended episodes.
    pub fn new(max_ended: usize) -> Self {
        Self {
            inner: Mutex::new(RegistryInner::default()),
            max_ended,
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
        let mut inner = self.lock();
        inner.next_seq += 1;
        let slot = Arc::new(EpisodeSlot {
            id: new.id.clone(),
            seq: inner.next_seq,
            instance_id: new.instance_id,
            created_at: crate::trajectory::record::now_rfc3339(),
            labels: new.labels,
            tool_format: new.tool_format,
            trajectory_path,
            state: tokio::sync::Mutex::new(SlotState {
                live: Some(new.live),
                replies: ReplyCache::default(),
            }),
            summary: Mutex::new(Summary::default()),
            last_active_ms: AtomicU64::new(0),
            clock: self.clock,
        });
        slot.touch();
        inner.slots.insert(new.id, slot.clone());
        slot
    }

    /// The slot of `episode_id`.
    pub fn get(&self, episode_id: &str) -> Option<Arc<EpisodeSlot>> {
        self.lock().slots.get(episode_id).cloned()
    }

    /// Notes that an episode ended; forgets the oldest ended ones beyond the bound.
    pub fn mark_ended(&self, episode_id: &str) {
        let mut inner = self.lock();
        inner.ended.push_back(episode_id.to_owned());
        while inner.ended.len() > self.max_ended {
            if let Some(old) = inner.ended.pop_front() {
                inner.slots.remove(&old);
            }
        }
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

    #[test]
    fn reply_cache_is_bounded_and_keeps_the_newest() {
        let mut cache = ReplyCache::default();
        cache.insert("a".into(), reply(10));
        cache.insert("b".into(), reply(REPLY_CACHE_BYTES));
        assert!(cache.get("a").is_none(), "oldest evicted beyond the bound");
        assert!(cache.get("b").is_some(), "newest always kept");
        for i in 0..20 {
            cache.insert(format!("r{i}"), reply(1));
        }
        cache.keep_newest(REPLIES_KEPT_AFTER_END);
        assert_eq!(cache.len(), REPLIES_KEPT_AFTER_END);
        assert!(cache.get("r19").is_some() && cache.get("r11").is_none());
    }
}
