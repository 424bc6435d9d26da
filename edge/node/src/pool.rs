//! A model's fixed pool of ranker instances: a ranking waits a bounded time for a free instance (then the caller
//! answers by popularity), and an instance that trapped or ran past its deadline is replaced by the pool's one
//! rebuilder thread, with back-off while building fails, never by a thread per failure.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::host::{HostError, RankerInstance};

/// First and longest pause between failed rebuilds.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

type Build = Box<dyn Fn() -> Result<RankerInstance, HostError> + Send + 'static>;

pub struct InstancePool {
    idle: Mutex<Vec<RankerInstance>>,
    freed: Condvar,
    wait: Duration,
    rebuild: Mutex<Sender<()>>,
}

impl std::fmt::Debug for InstancePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstancePool")
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

impl InstancePool {
    /// A pool of `instances` (its fixed size) whose broken instances are replaced with `build`.
    pub fn new(instances: Vec<RankerInstance>, wait: Duration, build: Build) -> Arc<Self> {
        let (sender, requests) = mpsc::channel();
        let pool = Arc::new(Self {
            idle: Mutex::new(instances),
            freed: Condvar::new(),
            wait,
            rebuild: Mutex::new(sender),
        });
        let weak = Arc::downgrade(&pool);
        let spawned = std::thread::Builder::new()
            .name("edgerec-rebuild".into())
            .spawn(move || rebuild_loop(&weak, &requests, &build));
        if let Err(e) = spawned {
            crate::log_line(
                "pool",
                serde_json::json!({"error": format!("cannot start the rebuilder: {e}; broken instances will not be replaced")}),
            );
        }
        pool
    }

    /// Runs `rank` on a free instance, waiting at most the pool's wait for one.
    pub fn with_instance<T>(
        &self,
        rank: impl FnOnce(&mut RankerInstance) -> Result<T, HostError>,
    ) -> Result<T, HostError> {
        let mut lease = Lease {
            pool: self,
            instance: Some(self.take()?),
        };
        rank(lease.instance.as_mut().expect("leased until dropped"))
    }

    fn take(&self) -> Result<RankerInstance, HostError> {
        let deadline = Instant::now() + self.wait;
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(instance) = idle.pop() {
                return Ok(instance);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(HostError::Busy(self.wait));
            }
            idle = self
                .freed
                .wait_timeout(idle, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn put(&self, instance: RankerInstance) {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(instance);
        self.freed.notify_one();
    }

    fn lock_rebuild(&self) -> std::sync::MutexGuard<'_, Sender<()>> {
        self.rebuild.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An instance out of the pool. Dropped, it goes back, or, when it is poisoned or the ranking panicked (its state
/// is unknown), a replacement is asked for: the pool never shrinks.
struct Lease<'a> {
    pool: &'a InstancePool,
    instance: Option<RankerInstance>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        match self.instance.take() {
            Some(instance) if !instance.is_poisoned() && !std::thread::panicking() => {
                self.pool.put(instance)
            }
            // The rebuilder is gone only while the pool is being dropped.
            _ => drop(self.pool.lock_rebuild().send(())),
        }
    }
}

/// Replaces one instance per request, retrying with doubling pauses while building fails; ends with the pool.
fn rebuild_loop(pool: &Weak<InstancePool>, requests: &Receiver<()>, build: &Build) {
    while requests.recv().is_ok() {
        let mut backoff = FIRST_BACKOFF;
        loop {
            if pool.strong_count() == 0 {
                return;
            }
            match build() {
                Ok(instance) => {
                    if let Some(pool) = pool.upgrade() {
                        pool.put(instance);
                    }
                    break;
                }
                Err(e) => {
                    crate::log_line(
                        "pool",
                        serde_json::json!({"error": format!("cannot rebuild a ranker instance: {e}"), "retry_in_ms": backoff.as_millis() as u64}),
                    );
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}
