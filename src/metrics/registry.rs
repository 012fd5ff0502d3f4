//! The registry: collects what workers publish, keeps the running totals, and
//! merges them into snapshots on demand.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime};

use super::record::{lock_slot, new_slot, ServiceMetrics, Slot, WorkerMetrics};

/// The workers' slots and running totals, shared by the workers and the readers.
pub struct Registry {
    service_names: Vec<String>,
    workers: Mutex<Vec<WorkerTotals>>,
    publish_requests: Arc<AtomicU64>,
}

/// One worker's slot and everything collected from it so far.
struct WorkerTotals {
    slot: Slot,
    /// Running totals per service.
    totals: Vec<ServiceMetrics>,
    /// Zeroed values swapped into the slot in place of collected ones.
    spare: Vec<ServiceMetrics>,
}

/// Merged values of all workers at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Each service's name and values, in configuration order.
    pub services: Vec<(String, ServiceMetrics)>,
    /// The sum over all services.
    pub total: ServiceMetrics,
    pub taken_at: SystemTime,
}

impl Registry {
    /// Creates a registry for the services of the configuration, in order; the
    /// workers' `service` arguments index this list.
    pub fn new(service_names: Vec<String>) -> Registry {
        Registry {
            service_names,
            workers: Mutex::new(Vec::new()),
            publish_requests: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn service_names(&self) -> &[String] {
        &self.service_names
    }

    /// Creates the metrics of one more worker thread, with its own slot.
    pub fn register_worker(&self) -> WorkerMetrics {
        let count = self.service_names.len();
        let slot = new_slot(count);
        self.lock_workers().push(WorkerTotals {
            slot: Arc::clone(&slot),
            totals: (0..count).map(|_| ServiceMetrics::default()).collect(),
            spare: (0..count).map(|_| ServiceMetrics::default()).collect(),
        });
        WorkerMetrics::new(count, slot, Arc::clone(&self.publish_requests))
    }

    /// Asks every worker to publish soon; workers see it through
    /// [`WorkerMetrics::publish_requested`]. Returns at once.
    pub fn request_publish(&self) {
        self.publish_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Moves the values that workers published into the running totals. Each
    /// slot is locked only to swap the published values with zeroed ones; the
    /// adding and zeroing happen after the lock is released.
    pub fn collect(&self) {
        let mut workers = self.lock_workers();
        Self::collect_locked(&mut workers);
    }

    fn collect_locked(workers: &mut [WorkerTotals]) {
        for worker in workers {
            let mut collected = Vec::new();
            {
                let mut slot = lock_slot(&worker.slot);
                for index in 0..slot.full.len() {
                    if slot.full[index] {
                        std::mem::swap(&mut slot.deltas[index], &mut worker.spare[index]);
                        slot.full[index] = false;
                        collected.push(index);
                    }
                }
            }

            for index in collected {
                worker.totals[index].merge(&worker.spare[index]);
                worker.spare[index].clear();
            }
        }
    }

    /// Collects, then returns the totals of all workers, per service and summed.
    /// Values a worker has not published yet are not included.
    pub fn snapshot(&self) -> Snapshot {
        let mut workers = self.lock_workers();
        Self::collect_locked(&mut workers);

        let mut services: Vec<ServiceMetrics> = (0..self.service_names.len())
            .map(|_| ServiceMetrics::default())
            .collect();
        for worker in workers.iter() {
            for (merged, totals) in services.iter_mut().zip(&worker.totals) {
                merged.merge(totals);
            }
        }
        drop(workers);

        let mut total = ServiceMetrics::default();
        for service in &services {
            total.merge(service);
        }

        Snapshot {
            services: self.service_names.iter().cloned().zip(services).collect(),
            total,
            taken_at: SystemTime::now(),
        }
    }

    /// Collects, then moves the running totals of all workers out, per service
    /// in configuration order, and leaves zeros in their place. A worker process
    /// sends these deltas to the metrics process.
    pub fn drain(&self) -> Vec<ServiceMetrics> {
        let mut workers = self.lock_workers();
        Self::collect_locked(&mut workers);

        let mut drained: Vec<ServiceMetrics> = (0..self.service_names.len())
            .map(|_| ServiceMetrics::default())
            .collect();
        for worker in workers.iter_mut() {
            for (merged, totals) in drained.iter_mut().zip(&mut worker.totals) {
                if !totals.is_empty() {
                    merged.merge(totals);
                    totals.clear();
                }
            }
        }
        drained
    }

    /// Returns a human-readable summary of every histogram, for the log on
    /// SIGUSR1 and at shutdown. At shutdown, workers should publish first.
    pub fn summary(&self) -> String {
        self.snapshot().summary()
    }

    /// Writes [`Registry::summary`] to the log, one notice line per line.
    pub fn log_summary(&self) {
        for line in self.summary().lines() {
            crate::notice!("stats: {line}");
        }
    }

    fn lock_workers(&self) -> MutexGuard<'_, Vec<WorkerTotals>> {
        // Updates under this lock are whole merges and swaps, so a panic while it
        // was held leaves usable data.
        self.workers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A thread that calls [`Registry::collect`] at a fixed interval, so workers
/// find their slot collected and publish with a swap. Dropping it stops the
/// thread.
pub struct Collector {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Collector {
    /// Starts the thread; `interval` should match the workers' publish interval.
    pub fn start(registry: Arc<Registry>, interval: Duration) -> io::Result<Collector> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name("metrics-collect".to_owned())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    registry.collect();
                }
            })?;
        Ok(Collector {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn slot_full(registry: &Registry, worker: usize, service: usize) -> bool {
        let workers = registry.lock_workers();
        let slot = lock_slot(&workers[worker].slot);
        slot.full[service]
    }

    #[test]
    fn collect_empties_slot() {
        let registry = Registry::new(vec!["web".to_owned(), "api".to_owned()]);
        let mut worker = registry.register_worker();
        worker.accepted(1);
        worker.publish();
        assert!(slot_full(&registry, 0, 1));
        assert!(!slot_full(&registry, 0, 0));

        registry.collect();
        assert!(!slot_full(&registry, 0, 1));
        assert_eq!(registry.snapshot().services[1].1.accepted, 1);
    }

    #[test]
    fn publish_into_uncollected_slot_adds() {
        let registry = Registry::new(vec!["web".to_owned()]);
        let mut worker = registry.register_worker();
        worker.accepted(0);
        worker.publish();
        worker.accepted(0);
        worker.accepted(0);
        worker.publish();
        assert_eq!(registry.snapshot().total.accepted, 3);

        worker.accepted(0);
        worker.publish();
        assert_eq!(registry.snapshot().total.accepted, 4);
    }

    #[test]
    fn collector_collects_published_values() {
        let registry = Arc::new(Registry::new(vec!["web".to_owned()]));
        let mut worker = registry.register_worker();
        let collector = Collector::start(Arc::clone(&registry), Duration::from_millis(1)).unwrap();
        worker.accepted(0);
        worker.publish();

        // Readiness wait for the collector thread; the deadline only keeps a
        // broken collector from hanging the test.
        let deadline = Instant::now() + Duration::from_secs(30);
        while slot_full(&registry, 0, 0) {
            assert!(
                Instant::now() < deadline,
                "collector never collected the slot"
            );
            thread::yield_now();
        }
        collector.stop();
        assert_eq!(registry.snapshot().total.accepted, 1);
    }
}
