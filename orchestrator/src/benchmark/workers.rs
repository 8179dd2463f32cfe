//! The worker loop of a run (the one in the codebase: `run-benchmark` runs instances, `harvest` runs rollouts):
//! a fixed number of workers pull jobs from one queue (nothing is spawned per job), each output goes to the
//! caller's channel as it finishes, and a panic inside one job becomes that job's `error` output (`error_kind`
//! `panic`) while the others go on.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::FutureExt;
use swe_env_grading::dataset::Instance;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use super::results::InstanceResult;

/// A unit of work of the worker loop.
pub trait Job: Send + 'static {
    /// What running the job produces.
    type Output: Send + 'static;
    /// What is kept of the job while it runs, to make its output if it panics.
    type Key: Send;
    /// The key of this job (taken before the job moves into its attempt).
    fn key(&self) -> Self::Key;
    /// The output of a job that panicked with `message`.
    fn panicked(key: Self::Key, message: &str) -> Self::Output;
    /// Records the job's wall time in its output.
    fn set_elapsed(output: &mut Self::Output, elapsed: std::time::Duration);
}

impl Job for Instance {
    type Output = InstanceResult;
    type Key = (String, String);

    fn key(&self) -> Self::Key {
        (self.instance_id.clone(), self.repo.clone())
    }

    fn panicked((instance_id, repo): Self::Key, message: &str) -> InstanceResult {
        error!(
            instance_id,
            panic = message,
            "an instance panicked; recorded as an error"
        );
        InstanceResult::error(
            &instance_id,
            &repo,
            "panic",
            format!(
                "swe-env panicked while running this instance ({message}): this is a bug, please \
                 report it with the log; --retry-errors runs the instance again"
            ),
        )
    }

    fn set_elapsed(output: &mut InstanceResult, elapsed: std::time::Duration) {
        output.total_ms = elapsed.as_millis() as u64;
    }
}

/// Runs `attempt` on every job of `todo` with `workers` workers (at least one; no more than `todo`'s size hint
/// allows) and sends each output, its wall time set, to `results`. `todo` is pulled one job at a time, under the
/// queue's lock, as workers free up: a lazy iterator is never materialised. Stops starting jobs, and drops the
/// ones in flight, when `cancel` is cancelled; returns whether it did (the run was interrupted).
pub async fn run_workers<T, J, F, Fut>(
    todo: T,
    workers: usize,
    cancel: CancellationToken,
    attempt: F,
    results: mpsc::UnboundedSender<J::Output>,
) -> bool
where
    T: IntoIterator<Item = J>,
    T::IntoIter: Send + 'static,
    J: Job,
    F: Fn(J) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = J::Output> + Send + 'static,
{
    let todo = todo.into_iter();
    let most = todo.size_hint().1.unwrap_or(usize::MAX);
    let n_workers = workers.max(1).min(most);
    let queue: Queue<J> = Arc::new(Mutex::new(Box::new(todo.fuse())));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n_workers {
        tasks.spawn(worker(
            queue.clone(),
            cancel.clone(),
            attempt.clone(),
            results.clone(),
        ));
    }
    drop(results);
    while let Some(joined) = tasks.join_next().await {
        // Only a bug in the loop itself gets here (an instance's panic is caught in `worker`).
        if let Err(error) = joined {
            warn!(%error, "a benchmark worker failed");
        }
    }
    // A worker stops early only once the token is cancelled, and a token stays cancelled.
    cancel.is_cancelled()
}

/// The jobs not started yet, shared by the workers.
type Queue<J> = Arc<Mutex<Box<dyn Iterator<Item = J> + Send>>>;

async fn worker<J, F, Fut>(
    queue: Queue<J>,
    cancel: CancellationToken,
    attempt: F,
    results: mpsc::UnboundedSender<J::Output>,
) where
    J: Job,
    F: Fn(J) -> Fut,
    Fut: Future<Output = J::Output>,
{
    loop {
        if cancel.is_cancelled() {
            return;
        }
        // The lock is held only to pull the next job; a poisoned queue (a panic inside the caller's iterator) is
        // still a queue, and fused: once it ended it stays ended.
        let next = queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .next();
        let Some(job) = next else {
            return;
        };
        let key = job.key();
        let started = Instant::now();
        let run = AssertUnwindSafe(attempt(job)).catch_unwind();
        let outcome = tokio::select! {
            outcome = run => outcome,
            _ = cancel.cancelled() => return,
        };
        let mut result = match outcome {
            Ok(result) => result,
            Err(payload) => J::panicked(key, crate::panic_message(payload.as_ref())),
        };
        J::set_elapsed(&mut result, started.elapsed());
        if results.send(result).is_err() {
            // Nobody listens any more (the run stops listening only once every worker ended): nothing to do.
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::benchmark::results::InstanceStatus;
    use swe_env_grading::dataset::instance_from_value;

    fn instance(id: &str) -> Instance {
        instance_from_value(
            serde_json::json!({"repo": "o/r", "instance_id": id, "base_commit": "abc",
            "test_patch": "x", "version": "1.0"}),
        )
        .unwrap()
    }

    async fn collect(mut rx: mpsc::UnboundedReceiver<InstanceResult>) -> Vec<InstanceResult> {
        let mut out = Vec::new();
        while let Some(r) = rx.recv().await {
            out.push(r);
        }
        out.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        out
    }

    #[tokio::test]
    async fn a_panicking_instance_becomes_an_error_result_and_the_others_still_run() {
        let todo: Vec<Instance> = (0..4).map(|i| instance(&format!("o__r-{i}"))).collect();
        let cancel = CancellationToken::new();
        let (tx, rx) = mpsc::unbounded_channel();
        let interrupted = run_workers(
            todo,
            2,
            cancel,
            |instance: Instance| async move {
                if instance.instance_id == "o__r-1" {
                    panic!("grading blew up on {}", instance.instance_id);
                }
                unresolved(&instance)
            },
            tx,
        )
        .await;
        assert!(!interrupted);
        let results = collect(rx).await;
        let ids: Vec<&str> = results.iter().map(|r| r.instance_id.as_str()).collect();
        assert_eq!(ids, ["o__r-0", "o__r-1", "o__r-2", "o__r-3"]);
        let panicked = &results[1];
        assert_eq!(panicked.status, InstanceStatus::Error);
        assert_eq!(panicked.error_kind.as_deref(), Some("panic"));
        assert_eq!(panicked.repo, "o/r");
        let message = panicked.error.as_deref().unwrap_or_default();
        assert!(message.contains("grading blew up on o__r-1"), "{message}");
        for other in [&results[0], &results[2], &results[3]] {
            assert_eq!(other.status, InstanceStatus::Unresolved);
        }
    }

    fn unresolved(instance: &Instance) -> InstanceResult {
        let mut result =
            InstanceResult::error(&instance.instance_id, &instance.repo, "x", String::new());
        result.status = InstanceStatus::Unresolved;
        result.error_kind = None;
        result.error = None;
        result
    }

    #[tokio::test]
    async fn a_fixed_number_of_workers_pull_the_instances() {
        let todo: Vec<Instance> = (0..8).map(|i| instance(&format!("o__r-{i}"))).collect();
        let cancel = CancellationToken::new();
        let (tx, rx) = mpsc::unbounded_channel();
        // Tasks alive on the runtime while an instance runs (the test body itself is not a task).
        let max_tasks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = max_tasks.clone();
        let interrupted = run_workers(
            todo,
            3,
            cancel,
            move |instance: Instance| {
                let seen = seen.clone();
                async move {
                    let alive = tokio::runtime::Handle::current()
                        .metrics()
                        .num_alive_tasks();
                    seen.fetch_max(alive, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    unresolved(&instance)
                }
            },
            tx,
        )
        .await;
        assert!(!interrupted);
        assert_eq!(collect(rx).await.len(), 8);
        assert_eq!(max_tasks.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    /// The queue is a lazy iterator pulled one job at a time as workers free up: an endless one works, and when
    /// the run stops only the jobs started (plus at most one per worker) were ever made.
    #[tokio::test]
    async fn an_endless_job_iterator_is_pulled_one_job_at_a_time() {
        let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = made.clone();
        let todo = (0..).map(move |i| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            instance(&format!("o__r-{i:03}"))
        });
        let cancel = CancellationToken::new();
        let cancel_tx = cancel.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let interrupted = run_workers(
            todo,
            2,
            cancel,
            move |instance: Instance| {
                let cancel_tx = cancel_tx.clone();
                async move {
                    if instance.instance_id == "o__r-010" {
                        cancel_tx.cancel();
                        std::future::pending::<()>().await;
                    }
                    tokio::task::yield_now().await;
                    unresolved(&instance)
                }
            },
            tx,
        )
        .await;
        assert!(interrupted);
        let done = collect(rx).await.len();
        let made = made.load(std::sync::atomic::Ordering::SeqCst);
        assert!((9..=11).contains(&done), "{done} finished");
        assert!(
            made <= 13,
            "{made} jobs made for {done} finished by 2 workers"
        );
    }

    #[tokio::test]
    async fn cancel_stops_starting_instances_and_drops_the_one_in_flight() {
        let todo: Vec<Instance> = (0..5).map(|i| instance(&format!("o__r-{i}"))).collect();
        let cancel = CancellationToken::new();
        let cancel_tx = cancel.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let started = Arc::new(Mutex::new(Vec::new()));
        let log = started.clone();
        let interrupted = run_workers(
            todo,
            1,
            cancel,
            move |instance: Instance| {
                let (cancel_tx, log) = (cancel_tx.clone(), log.clone());
                async move {
                    log.lock().unwrap().push(instance.instance_id.clone());
                    if instance.instance_id == "o__r-1" {
                        cancel_tx.cancel();
                        std::future::pending::<()>().await;
                    }
                    unresolved(&instance)
                }
            },
            tx,
        )
        .await;
        assert!(interrupted);
        let results = collect(rx).await;
        let ids: Vec<&str> = results.iter().map(|r| r.instance_id.as_str()).collect();
        assert_eq!(ids, ["o__r-0"]);
        assert_eq!(*started.lock().unwrap(), ["o__r-0", "o__r-1"]);
    }
}
