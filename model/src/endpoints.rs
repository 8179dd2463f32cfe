//! Several endpoints served round-robin, each with its own concurrency limit, skipping ones that just failed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One OpenAI-compatible base URL and its admission state.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// The base URL as configured, without a trailing slash (e.g. `http://host:8000/v1`).
    pub(crate) base_url: String,
    permits: Arc<Semaphore>,
    failed_at: Mutex<Option<Instant>>,
}

impl Endpoint {
    /// The full URL of an API path under this endpoint.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base_url, path)
    }

    fn cooling_down(&self, now: Instant, cooldown: Duration) -> bool {
        match self.failed_at.lock() {
            Ok(failed_at) => failed_at.is_some_and(|at| now.duration_since(at) < cooldown),
            Err(_) => false,
        }
    }
}

/// The endpoints of one client.
#[derive(Debug)]
pub(crate) struct EndpointPool {
    endpoints: Vec<Endpoint>,
    next: AtomicUsize,
    cooldown: Duration,
}

/// An endpoint chosen for one attempt, holding one of its concurrency permits.
#[derive(Debug)]
pub(crate) struct Lease<'a> {
    pub(crate) index: usize,
    pub(crate) endpoint: &'a Endpoint,
    _permit: OwnedSemaphorePermit,
}

impl EndpointPool {
    /// A pool over `base_urls`, each admitting at most `max_in_flight` requests at once.
    pub(crate) fn new(base_urls: &[String], max_in_flight: usize, cooldown: Duration) -> Self {
        let endpoints = base_urls
            .iter()
            .map(|url| Endpoint {
                base_url: url.trim_end_matches('/').to_string(),
                permits: Arc::new(Semaphore::new(max_in_flight)),
                failed_at: Mutex::new(None),
            })
            .collect();
        EndpointPool {
            endpoints,
            next: AtomicUsize::new(0),
            cooldown,
        }
    }

    /// Marks an endpoint as just failed, so the next picks avoid it for the cooldown.
    pub(crate) fn mark_failed(&self, index: usize) {
        if let Some(endpoint) = self.endpoints.get(index) {
            if let Ok(mut failed_at) = endpoint.failed_at.lock() {
                *failed_at = Some(Instant::now());
            }
        }
    }

    /// Marks an endpoint as healthy again.
    pub(crate) fn mark_ok(&self, index: usize) {
        if let Some(endpoint) = self.endpoints.get(index) {
            if let Ok(mut failed_at) = endpoint.failed_at.lock() {
                *failed_at = None;
            }
        }
    }

    /// The endpoints in the order to try them now: round-robin, healthy ones first, `avoid` (the
    /// one that failed this call's previous attempt) last.
    fn candidates(&self, avoid: Option<usize>) -> Vec<usize> {
        let count = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut order: Vec<usize> = (0..count).map(|offset| (start + offset) % count).collect();
        order.sort_by_key(|&index| {
            let avoided = Some(index) == avoid;
            let cooling = self.endpoints[index].cooling_down(now, self.cooldown);
            (avoided, cooling)
        });
        order
    }

    /// Picks an endpoint and waits for one of its permits, preferring one that has a permit free.
    pub(crate) async fn lease(&self, avoid: Option<usize>) -> Option<Lease<'_>> {
        let order = self.candidates(avoid);
        let first = *order.first()?;
        let usable = order
            .iter()
            .copied()
            .take_while(|&index| index == first || self.rank_equal(index, first, avoid));
        for index in usable {
            let endpoint = &self.endpoints[index];
            if let Ok(permit) = Arc::clone(&endpoint.permits).try_acquire_owned() {
                return Some(Lease {
                    index,
                    endpoint,
                    _permit: permit,
                });
            }
        }
        let endpoint = &self.endpoints[first];
        let permit = Arc::clone(&endpoint.permits).acquire_owned().await.ok()?;
        Some(Lease {
            index: first,
            endpoint,
            _permit: permit,
        })
    }

    fn rank_equal(&self, index: usize, first: usize, avoid: Option<usize>) -> bool {
        let now = Instant::now();
        let rank = |i: usize| {
            (
                Some(i) == avoid,
                self.endpoints[i].cooling_down(now, self.cooldown),
            )
        };
        rank(index) == rank(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> EndpointPool {
        let urls: Vec<String> = (0..n).map(|i| format!("http://e{i}/v1/")).collect();
        EndpointPool::new(&urls, 1, Duration::from_secs(60))
    }

    #[tokio::test]
    async fn round_robin_skips_failed_and_avoided() {
        let pool = pool(3);
        assert_eq!(
            pool.endpoints[0].url("completions"),
            "http://e0/v1/completions"
        );
        let picks: Vec<usize> = [
            pool.lease(None).await.unwrap().index,
            pool.lease(None).await.unwrap().index,
            pool.lease(None).await.unwrap().index,
        ]
        .to_vec();
        assert_eq!(picks, vec![0, 1, 2]);
        pool.mark_failed(1);
        for _ in 0..6 {
            assert_ne!(pool.lease(None).await.unwrap().index, 1);
        }
        for _ in 0..6 {
            assert_ne!(pool.lease(Some(0)).await.unwrap().index, 0);
        }
        pool.mark_ok(1);
        let seen: Vec<usize> = futures_indices(&pool, 3).await;
        assert!(seen.contains(&1));
    }

    async fn futures_indices(pool: &EndpointPool, n: usize) -> Vec<usize> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(pool.lease(None).await.unwrap().index);
        }
        out
    }

    #[tokio::test]
    async fn busy_endpoint_is_passed_over_for_a_free_one() {
        let pool = pool(2);
        let held = pool.lease(None).await.unwrap();
        assert_eq!(held.index, 0);
        // Round-robin would pick 0 again after two more picks; it is busy, so 1 is chosen.
        let _ = pool.lease(None).await.unwrap();
        let other = pool.lease(None).await.unwrap();
        assert_eq!(other.index, 1);
    }

    #[tokio::test]
    async fn all_failed_still_yields_an_endpoint() {
        let pool = pool(2);
        pool.mark_failed(0);
        pool.mark_failed(1);
        assert!(pool.lease(Some(0)).await.is_some());
    }
}
