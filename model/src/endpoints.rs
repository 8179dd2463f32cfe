//! Several endpoints served round-robin, each with its own concurrency limit, skipping ones that just failed.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::wire::OptionalField;

/// One OpenAI-compatible base URL and its admission state.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// The base URL as configured, without a trailing slash (e.g. `http://host:8000/v1`).
    pub(crate) base_url: String,
    permits: Arc<Semaphore>,
    failed_at: Mutex<Option<Instant>>,
    /// The endpoint answered 400 naming `logprobs`: `auto` calls go without it from now on.
    rejects_logprobs: AtomicBool,
    /// The endpoint answered 400 naming `return_token_ids`.
    rejects_token_ids: AtomicBool,
}

impl Endpoint {
    fn rejected_flag(&self, field: OptionalField) -> &AtomicBool {
        match field {
            OptionalField::Logprobs => &self.rejects_logprobs,
            OptionalField::ReturnTokenIds => &self.rejects_token_ids,
        }
    }

    /// Whether this endpoint rejected `field` before (for the client's life).
    pub(crate) fn rejects(&self, field: OptionalField) -> bool {
        self.rejected_flag(field).load(Ordering::Relaxed)
    }

    /// Remembers that this endpoint rejects `field`; true the first time (so it is logged once).
    pub(crate) fn mark_rejects(&self, field: OptionalField) -> bool {
        !self.rejected_flag(field).swap(true, Ordering::Relaxed)
    }

    /// The full URL of an API path under this endpoint: the path goes after the base URL's path and before its
    /// query or fragment, which are kept (`http://h/v1?api_key=k` → `http://h/v1/chat/completions?api_key=k`).
    pub(crate) fn url(&self, path: &str) -> String {
        let (base, tail) = split_query(&self.base_url);
        format!("{}/{}{}", base.trim_end_matches('/'), path, tail)
    }

    fn cooling_down(&self, now: Instant, cooldown: Duration) -> bool {
        match self.failed_at.lock() {
            Ok(failed_at) => failed_at.is_some_and(|at| now.duration_since(at) < cooldown),
            Err(_) => false,
        }
    }
}

/// `url` cut before its query (`?…`) or fragment (`#…`), whichever comes first: (the rest, the query or fragment
/// with its leading `?` / `#`).
fn split_query(url: &str) -> (&str, &str) {
    match url.find(['?', '#']) {
        Some(index) => url.split_at(index),
        None => (url, ""),
    }
}

/// The endpoints of one client.
#[derive(Debug)]
pub(crate) struct EndpointPool {
    endpoints: Vec<Endpoint>,
    next: AtomicUsize,
    cooldown: Duration,
    /// Woken whenever a lease ends, so a caller waiting on several equally ranked endpoints takes the first that
    /// frees a permit (a caller with one usable endpoint queues on its semaphore instead, first come first served).
    released: Notify,
}

/// An endpoint chosen for one attempt, holding one of its concurrency permits.
#[derive(Debug)]
pub(crate) struct Lease<'a> {
    pub(crate) index: usize,
    pub(crate) endpoint: &'a Endpoint,
    released: &'a Notify,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        // Give the permit back first, then wake the waiters so they find it free.
        drop(self.permit.take());
        self.released.notify_waiters();
    }
}

impl EndpointPool {
    /// A pool over `base_urls`; endpoint `i` admits at most `limits[i]` requests at once (`default_limit` when
    /// `limits` is shorter). A limit of 0 is taken as 1.
    pub(crate) fn new(
        base_urls: &[String],
        limits: &[usize],
        default_limit: usize,
        cooldown: Duration,
    ) -> Self {
        let endpoints = base_urls
            .iter()
            .enumerate()
            .map(|(index, url)| {
                let max_in_flight = limits.get(index).copied().unwrap_or(default_limit).max(1);
                Endpoint {
                    base_url: url.trim_end_matches('/').to_string(),
                    permits: Arc::new(Semaphore::new(max_in_flight)),
                    failed_at: Mutex::new(None),
                    rejects_logprobs: AtomicBool::new(false),
                    rejects_token_ids: AtomicBool::new(false),
                }
            })
            .collect();
        EndpointPool {
            endpoints,
            next: AtomicUsize::new(0),
            cooldown,
            released: Notify::new(),
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

    /// Picks an endpoint and waits for one of its permits, preferring one that has a permit free: among the
    /// best-ranked endpoints (not avoided, not cooling down) in round-robin order, the first with a free permit;
    /// when all are busy, the first of them to free one. With a single usable endpoint, callers queue for its
    /// permits in arrival order.
    pub(crate) async fn lease(&self, avoid: Option<usize>) -> Option<Lease<'_>> {
        let order = self.candidates(avoid);
        let first = *order.first()?;
        let usable: Vec<usize> = order
            .iter()
            .copied()
            .take_while(|&index| index == first || self.rank_equal(index, first, avoid))
            .collect();
        if let [index] = usable[..] {
            // One endpoint to wait for (the common case): queue on its semaphore, which hands permits out in
            // arrival order and wakes only the waiter it serves.
            let endpoint = &self.endpoints[index];
            let permit = Arc::clone(&endpoint.permits).acquire_owned().await.ok()?;
            return Some(Lease {
                index,
                endpoint,
                released: &self.released,
                permit: Some(permit),
            });
        }
        loop {
            // Several equally ranked endpoints: take the first that frees a permit. Register for the wake-up
            // before looking, so a permit freed in between is not missed.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            for &index in &usable {
                let endpoint = &self.endpoints[index];
                if let Ok(permit) = Arc::clone(&endpoint.permits).try_acquire_owned() {
                    return Some(Lease {
                        index,
                        endpoint,
                        released: &self.released,
                        permit: Some(permit),
                    });
                }
            }
            released.await;
        }
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
        EndpointPool::new(&urls, &[], 1, Duration::from_secs(60))
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

    #[test]
    fn the_api_path_goes_before_the_query_and_fragment() {
        let url = |base: &str| {
            EndpointPool::new(&[base.to_string()], &[], 1, Duration::from_secs(60)).endpoints[0]
                .url("chat/completions")
        };
        assert_eq!(
            url("http://h/v1?api_key=k"),
            "http://h/v1/chat/completions?api_key=k"
        );
        assert_eq!(
            url("http://h/v1/?api_key=k&x=a/b"),
            "http://h/v1/chat/completions?api_key=k&x=a/b"
        );
        assert_eq!(url("http://h/v1#frag"), "http://h/v1/chat/completions#frag");
        assert_eq!(
            url("http://h:8/v1?k=1#f"),
            "http://h:8/v1/chat/completions?k=1#f"
        );
        assert_eq!(url("http://h/v1/"), "http://h/v1/chat/completions");
    }

    #[tokio::test]
    async fn a_base_url_with_a_query_reaches_the_api_path() {
        use crate::scripted::{Script, ScriptedReply, ScriptedServer};
        use crate::{ChatMessage, ClientConfig, ModelClient, ModelRequest};

        let server = ScriptedServer::start(Script::new(vec![ScriptedReply::text("ok")]))
            .await
            .unwrap();
        let config = ClientConfig::new(format!("{}?api_key=k", server.base_url()), "m");
        let client = ModelClient::new(config).unwrap();
        let completion = client
            .call(&ModelRequest::chat(vec![ChatMessage::user("p")], vec![]))
            .await
            .unwrap();
        assert_eq!(completion.text, "ok");
        let paths: Vec<String> = server.requests().into_iter().map(|r| r.path).collect();
        assert_eq!(paths, ["/v1/chat/completions"]);
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
    async fn per_endpoint_limits_hold_under_load_and_free_permits_are_preferred() {
        use crate::scripted::{Script, ScriptedReply, ScriptedServer};
        use crate::{ClientConfig, ModelClient, ModelRequest};

        let slow = || ScriptedReply::delayed(Duration::from_millis(150), ScriptedReply::text("ok"));
        let small = ScriptedServer::start(Script::default().with_fallback(slow()))
            .await
            .unwrap();
        let large = ScriptedServer::start(Script::default().with_fallback(slow()))
            .await
            .unwrap();
        let mut config = ClientConfig::new(small.base_url(), "m");
        config.endpoints.push(large.base_url());
        config.endpoint_max_in_flight = vec![1, 3];
        config.max_in_flight_per_endpoint = 64;
        let client = Arc::new(ModelClient::new(config).unwrap());
        let mut tasks = tokio::task::JoinSet::new();
        for index in 0..8 {
            let client = Arc::clone(&client);
            tasks.spawn(async move {
                client
                    .call(&ModelRequest::prompt(format!("p{index}")))
                    .await
                    .map(|completion| completion.text)
            });
        }
        while let Some(result) = tasks.join_next().await {
            assert_eq!(result.unwrap().unwrap(), "ok");
        }
        assert_eq!(small.request_count() + large.request_count(), 8);
        assert_eq!(small.max_in_flight(), 1, "limit 1 holds");
        assert_eq!(large.max_in_flight(), 3, "limit 3 holds and is used");
        assert!(
            large.request_count() > small.request_count(),
            "the endpoint with more free permits takes more calls: small {} large {}",
            small.request_count(),
            large.request_count()
        );
    }

    #[test]
    fn a_zero_or_surplus_endpoint_limit_is_a_config_error() {
        use crate::{ClientConfig, ModelClient, ModelError};
        let mut config = ClientConfig::new("http://127.0.0.1:9/v1", "m");
        config.endpoint_max_in_flight = vec![0];
        let error = ModelClient::new(config.clone()).unwrap_err();
        assert!(
            matches!(&error, ModelError::InvalidConfig(text) if text.contains("endpoint_max_in_flight[0]")),
            "{error}"
        );
        config.endpoint_max_in_flight = vec![1, 2];
        assert!(ModelClient::new(config).is_err());
    }

    /// With one endpoint, waiters are served in arrival order: a permit freed while someone waits goes to that
    /// waiter, not to a caller arriving just after the release.
    #[tokio::test]
    async fn one_endpoint_serves_waiters_first_come_first_served() {
        let pool = Arc::new(pool(1));
        let held = pool.lease(None).await.unwrap();
        let (order_tx, mut order_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut waiters = tokio::task::JoinSet::new();
        for waiter in 0..4 {
            let pool = Arc::clone(&pool);
            let order_tx = order_tx.clone();
            waiters.spawn(async move {
                let lease = pool.lease(None).await.unwrap();
                order_tx.send(waiter).unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(lease);
            });
            // Let this waiter queue before the next one arrives.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(held);
        // A caller arriving right after the release queues behind the four waiting ones.
        let late = pool.lease(None).await.unwrap();
        order_tx.send(4).unwrap();
        drop(late);
        while let Some(result) = waiters.join_next().await {
            result.unwrap();
        }
        drop(order_tx);
        let mut order = Vec::new();
        while let Some(waiter) = order_rx.recv().await {
            order.push(waiter);
        }
        assert_eq!(
            order,
            [0, 1, 2, 3, 4],
            "served in arrival order, before the late caller"
        );
    }

    #[tokio::test]
    async fn all_failed_still_yields_an_endpoint() {
        let pool = pool(2);
        pool.mark_failed(0);
        pool.mark_failed(1);
        assert!(pool.lease(Some(0)).await.is_some());
    }
}
