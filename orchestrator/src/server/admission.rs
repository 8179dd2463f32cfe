//! Admission limits: how many episodes may be live, and how many containers may be starting at once. A full
//! server answers RESOURCE_EXHAUSTED with a retry hint instead of queueing without bound.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ServiceError;

/// Retry hint when every live-episode slot is taken (episodes end on their own time scale).
pub const EPISODES_FULL_RETRY_AFTER: Duration = Duration::from_millis(1000);
/// Retry hint when container starts are saturated (a start takes a fraction of a second to seconds).
pub const STARTS_FULL_RETRY_AFTER: Duration = Duration::from_millis(250);

/// The two limits.
#[derive(Clone)]
pub struct Admission {
    episodes: Arc<Semaphore>,
    starts: Arc<Semaphore>,
    max_episodes: usize,
    start_queue: Duration,
}

/// Held by a live episode; dropping it frees the slot.
#[must_use = "the slot is freed when the permit is dropped"]
pub struct EpisodePermit(#[allow(dead_code)] OwnedSemaphorePermit);

/// Held while a container starts.
#[must_use = "the start slot is freed when the permit is dropped"]
pub struct StartPermit(#[allow(dead_code)] OwnedSemaphorePermit);

impl Admission {
    /// Limits of `max_episodes` live episodes and `max_starts` concurrent starts; a start waits at most
    /// `start_queue` for a slot.
    pub fn new(max_episodes: usize, max_starts: usize, start_queue: Duration) -> Self {
        Self {
            episodes: Arc::new(Semaphore::new(max_episodes)),
            starts: Arc::new(Semaphore::new(max_starts)),
            max_episodes,
            start_queue,
        }
    }

    /// A live-episode slot, or RESOURCE_EXHAUSTED at once when all are taken.
    pub fn episode(&self) -> Result<EpisodePermit, ServiceError> {
        self.episodes
            .clone()
            .try_acquire_owned()
            .map(EpisodePermit)
            .map_err(|_| ServiceError::Exhausted {
                what: format!(
                    "the server holds its maximum of {} live episodes",
                    self.max_episodes
                ),
                retry_after: EPISODES_FULL_RETRY_AFTER,
            })
    }

    /// A start slot, waiting up to the start queue time, else RESOURCE_EXHAUSTED.
    pub async fn start(&self) -> Result<StartPermit, ServiceError> {
        let exhausted = || ServiceError::Exhausted {
            what: "too many containers are starting".to_owned(),
            retry_after: STARTS_FULL_RETRY_AFTER,
        };
        match tokio::time::timeout(self.start_queue, self.starts.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(StartPermit(permit)),
            Ok(Err(_closed)) => Err(ServiceError::ShuttingDown),
            Err(_elapsed) => Err(exhausted()),
        }
    }

    /// Live episodes now.
    pub fn live_episodes(&self) -> usize {
        self.max_episodes - self.episodes.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limits_answer_exhausted_and_free_on_drop() {
        let admission = Admission::new(1, 1, Duration::from_millis(20));
        let first = admission.episode().unwrap();
        assert!(matches!(
            admission.episode(),
            Err(ServiceError::Exhausted { .. })
        ));
        assert_eq!(admission.live_episodes(), 1);
        drop(first);
        let _again = admission.episode().unwrap();

        let start = admission.start().await.unwrap();
        assert!(matches!(
            admission.start().await,
            Err(ServiceError::Exhausted { .. })
        ));
        drop(start);
        let _start = admission.start().await.unwrap();
    }
}
