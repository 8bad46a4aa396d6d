//! One concurrency limit with a bounded FIFO queue.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError},
    time::Instant,
};

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shed {
    QueueFull,
    WaitedTooLong,
}

/// Slots plus a queue bound. The semaphore is fair: a freed slot goes to the longest waiter,
/// and a newcomer cannot take it while others wait.
#[derive(Debug)]
pub(crate) struct Gate {
    slots: Arc<Semaphore>,
    max_concurrency: usize,
    max_queue: usize,
    queued: AtomicUsize,
}

/// Keeps the queue count exact when a waiting request is cancelled.
struct QueuePlace<'a>(&'a AtomicUsize);

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(crate) enum TryEnter {
    In(OwnedSemaphorePermit),
    MustWait,
    Shed(Shed),
}

impl Gate {
    pub(crate) fn new(max_concurrency: usize, max_queue: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max_concurrency)),
            max_concurrency,
            max_queue,
            queued: AtomicUsize::new(0),
        }
    }

    /// Without waiting: a slot, or whether the caller may queue.
    pub(crate) fn try_enter(&self) -> TryEnter {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => TryEnter::In(permit),
            Err(TryAcquireError::NoPermits) if self.max_queue > 0 => TryEnter::MustWait,
            Err(_) => TryEnter::Shed(Shed::QueueFull),
        }
    }

    /// Queues for a slot until `deadline`, if the queue has room.
    pub(crate) async fn enter(&self, deadline: Instant) -> Result<OwnedSemaphorePermit, Shed> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        // Take a place only while one is free, so refused arrivals never crowd out others.
        let max = self.max_queue;
        if self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Err(Shed::QueueFull);
        }
        let _place = QueuePlace(&self.queued);
        match tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; treat it like a full queue anyway.
            Ok(Err(_)) => Err(Shed::QueueFull),
            Err(_) => Err(Shed::WaitedTooLong),
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.max_concurrency - self.slots.available_permits()
    }

    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}
