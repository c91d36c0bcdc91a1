//! Coalesces concurrent single-item calls into one call per batch.
//!
//! A sender handles many deliveries at once, and each wants a few small database statements.
//! Made one at a time, those statements (and their commits) are what limits throughput. A
//! [`Batcher`] queues the items that arrive while a batch is running and hands them to the next
//! run together: under load a batch grows to whatever arrived meanwhile (up to `max_batch`),
//! and, while another batch is running, to what arrives within a short `linger` more; with no
//! other batch running it starts at once, so it adds no latency when idle.
//!
//! The batch function must return one result per item, in order. It owns the failure policy:
//! the functions used here fall back to item-by-item calls when a whole batch fails, so one bad
//! item never fails its neighbours. This module never retries and never reorders.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::db::StoreError;

/// One kind of call that can be made for many items at once.
pub trait BatchOp: Send + Sync + 'static {
    type Item: Send + Sync + 'static;
    type Output: Send + 'static;
    /// The whole batch in one go: one result per item, in order. `Err` means nothing was done
    /// (the statement failed as a whole); the items are then tried one by one.
    fn many(
        &self,
        items: &[Self::Item],
    ) -> impl Future<Output = Result<Vec<Result<Self::Output, StoreError>>, StoreError>> + Send;
    /// One item alone.
    fn one(
        &self,
        item: &Self::Item,
    ) -> impl Future<Output = Result<Self::Output, StoreError>> + Send;
}

type Job<O> = (
    <O as BatchOp>::Item,
    oneshot::Sender<Result<<O as BatchOp>::Output, StoreError>>,
);

/// A handle for submitting items; cheap to clone. The batching task stops when every handle is
/// dropped, after finishing the batches it started.
pub struct Batcher<O: BatchOp> {
    tx: mpsc::UnboundedSender<Job<O>>,
}

impl<O: BatchOp> Clone for Batcher<O> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<O: BatchOp> Batcher<O> {
    /// Starts the batching task: at most `max_batch` items per batch, and at most `in_flight`
    /// batches running at once (more than one, so a batch waiting on a row lock does not stall
    /// every other delivery). While another batch is running, a new one waits up to `linger`
    /// for more items before it starts (under load, fewer and larger statements); with none
    /// running it starts at once.
    pub fn spawn(op: O, max_batch: usize, in_flight: usize, linger: Duration) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job<O>>();
        let op = Arc::new(op);
        let max_batch = max_batch.max(1);
        let in_flight = in_flight.max(1);
        let permits = Arc::new(Semaphore::new(in_flight));
        tokio::spawn(async move {
            loop {
                // Wait for a free slot first, so the items that arrive meanwhile join this batch.
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let Some(first) = rx.recv().await else {
                    return;
                };
                let mut jobs = vec![first];
                while jobs.len() < max_batch {
                    match rx.try_recv() {
                        Ok(job) => jobs.push(job),
                        Err(_) => break,
                    }
                }
                // This batch holds one permit: any fewer free than the rest means another runs.
                let busy = permits.available_permits() + 1 < in_flight;
                if busy && !linger.is_zero() {
                    let until = tokio::time::Instant::now() + linger;
                    while jobs.len() < max_batch {
                        match tokio::time::timeout_at(until, rx.recv()).await {
                            Ok(Some(job)) => jobs.push(job),
                            Ok(None) | Err(_) => break,
                        }
                    }
                }
                let op = op.clone();
                tokio::spawn(async move {
                    let (items, replies): (Vec<O::Item>, Vec<_>) = jobs.into_iter().unzip();
                    let n = items.len();
                    let mut results = run(&*op, &items).await.into_iter();
                    for reply in replies {
                        let result = results.next().unwrap_or_else(|| {
                            Err(StoreError::Corrupt(format!(
                                "a batch of {n} returned fewer results than items"
                            )))
                        });
                        // The caller may have gone away (shutdown); nothing to do then.
                        let _ = reply.send(result);
                    }
                    drop(permit);
                });
            }
        });
        Self { tx }
    }

    /// Submits one item and waits for its result.
    pub async fn call(&self, item: O::Item) -> Result<O::Output, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((item, reply))
            .map_err(|_| StoreError::Corrupt("the batching task has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Corrupt("the batching task dropped a call".into()))?
    }
}

/// Runs the whole batch; if it fails as a whole, each item alone, so each gets its own error
/// (and a single bad item does not fail the rest).
async fn run<O: BatchOp>(op: &O, items: &[O::Item]) -> Vec<Result<O::Output, StoreError>> {
    if items.len() > 1 {
        match op.many(items).await {
            Ok(results) => return results,
            Err(e) => {
                tracing::warn!(error = %e, items = items.len(), "batch failed; handling its items one by one")
            }
        }
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        out.push(op.one(item).await);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Doubles numbers; 13 fails alone, and a batch holding 7 fails as a whole.
    #[derive(Default)]
    struct Double {
        sizes: Arc<Mutex<Vec<usize>>>,
    }

    impl BatchOp for Double {
        type Item = u32;
        type Output = u32;
        async fn many(&self, items: &[u32]) -> Result<Vec<Result<u32, StoreError>>, StoreError> {
            self.sizes.lock().unwrap().push(items.len());
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            if items.contains(&7) {
                return Err(StoreError::Corrupt("seven".into()));
            }
            let mut out = Vec::new();
            for i in items {
                out.push(self.one(i).await);
            }
            Ok(out)
        }
        async fn one(&self, &i: &u32) -> Result<u32, StoreError> {
            if i == 13 {
                Err(StoreError::Corrupt("thirteen".into()))
            } else {
                Ok(i * 2)
            }
        }
    }

    #[tokio::test]
    async fn concurrent_calls_share_batches_and_get_their_own_results() {
        let op = Double::default();
        let sizes = op.sizes.clone();
        let b = Batcher::spawn(op, 8, 1, Duration::ZERO);
        let calls: Vec<_> = (0..20u32)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move { (i, b.call(i).await) })
            })
            .collect();
        for c in calls {
            let (i, r) = c.await.unwrap();
            match r {
                // 7's batch failed as a whole; its neighbours were answered one by one.
                Ok(v) => assert_eq!(v, i * 2),
                Err(_) => assert_eq!(i, 13),
            }
        }
        let sizes = sizes.lock().unwrap().clone();
        assert!(sizes.iter().all(|&n| n <= 8), "{sizes:?}");
        assert!(sizes.len() < 20, "calls were not coalesced: {sizes:?}");
    }

    /// Records each batch's size; each batch takes `ms` milliseconds.
    struct Slow {
        ms: u64,
        sizes: Arc<Mutex<Vec<usize>>>,
    }

    impl BatchOp for Slow {
        type Item = u32;
        type Output = u32;
        async fn many(&self, items: &[u32]) -> Result<Vec<Result<u32, StoreError>>, StoreError> {
            self.sizes.lock().unwrap().push(items.len());
            tokio::time::sleep(Duration::from_millis(self.ms)).await;
            Ok(items.iter().map(|&i| Ok(i)).collect())
        }
        async fn one(&self, &i: &u32) -> Result<u32, StoreError> {
            self.sizes.lock().unwrap().push(1);
            tokio::time::sleep(Duration::from_millis(self.ms)).await;
            Ok(i)
        }
    }

    #[tokio::test]
    async fn a_batch_lingers_only_while_another_runs_and_stops_lingering_when_full() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let op = Slow {
            ms: 300,
            sizes: sizes.clone(),
        };
        // A linger far longer than the test: any wait on it would show in the elapsed time.
        let b = Batcher::spawn(op, 3, 2, Duration::from_secs(20));
        let started = std::time::Instant::now();
        // Idle: the first item starts at once.
        let first = tokio::spawn({
            let b = b.clone();
            async move { b.call(1).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Busy: the next batch waits for more until it holds `max_batch` items.
        let rest: Vec<_> = (2..=4u32)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move { b.call(i).await })
            })
            .collect();
        assert_eq!(first.await.unwrap().unwrap(), 1);
        for (i, r) in (2..=4u32).zip(rest) {
            assert_eq!(r.await.unwrap().unwrap(), i);
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(*sizes.lock().unwrap(), vec![1, 3]);
    }
}
