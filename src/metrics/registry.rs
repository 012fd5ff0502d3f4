//! The registry of published worker slots, merged on demand into snapshots.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::record::{lock_slot, ServiceMetrics, Slot, WorkerMetrics};

/// The published slots of all workers, shared by the workers and the readers.
pub struct Registry {
    service_names: Vec<String>,
    slots: Mutex<Vec<Slot>>,
    publish_requests: Arc<AtomicU64>,
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
            slots: Mutex::new(Vec::new()),
            publish_requests: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn service_names(&self) -> &[String] {
        &self.service_names
    }

    /// Creates the metrics of one more worker thread, with its own published slot.
    pub fn register_worker(&self) -> WorkerMetrics {
        let count = self.service_names.len();
        let slot: Slot = Arc::new(Mutex::new(
            (0..count).map(|_| ServiceMetrics::default()).collect(),
        ));
        self.lock_slots().push(Arc::clone(&slot));
        WorkerMetrics::new(count, slot, Arc::clone(&self.publish_requests))
    }

    /// Asks every worker to publish soon; workers see it through
    /// [`WorkerMetrics::publish_requested`]. Returns at once.
    pub fn request_publish(&self) {
        self.publish_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Merges the values each worker last published. Each slot is locked only
    /// while it is cloned, so a worker waits at most for one clone.
    pub fn snapshot(&self) -> Snapshot {
        let slots: Vec<Slot> = self.lock_slots().clone();
        let mut services: Vec<ServiceMetrics> = (0..self.service_names.len())
            .map(|_| ServiceMetrics::default())
            .collect();

        for slot in &slots {
            let published = lock_slot(slot).clone();
            for (merged, worker) in services.iter_mut().zip(&published) {
                merged.merge(worker);
            }
        }

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

    /// Returns a human-readable summary of every histogram, for the log on
    /// SIGUSR1 and at shutdown. Workers should publish first at shutdown.
    pub fn summary(&self) -> String {
        self.snapshot().summary()
    }

    fn lock_slots(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        // The list is only ever pushed to, so a poisoned lock still holds a valid list.
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
