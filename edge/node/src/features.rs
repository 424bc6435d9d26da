//! Features as the node reads them: users' recent items through a short-lived cache with a deadline and a pause
//! after failures, and item popularity for answers that cannot come from the model.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use edgerec_core::{ItemId, ScoredItem, UserId};
use edgerec_features::store::FeatureStore;

use crate::config::{Deadlines, FeatureCacheConfig};
use crate::deployment::Deployments;

/// Why a user's features could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FeatureReadError {
    #[error("the feature store failed: {0}")]
    Store(String),
    #[error("the feature store did not answer within {0:?}")]
    Timeout(Duration),
    #[error(
        "the feature store failed several times in a row; not asked again until it has had time to recover"
    )]
    Paused,
}

/// Where a user's recent items came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureSource {
    Cache,
    Store,
}

/// Recent items by user, with when they were read.
type CachedUsers = HashMap<UserId, (Instant, Arc<[ItemId]>)>;

pub struct UserFeatureReader<S> {
    store: Arc<S>,
    ttl: Duration,
    capacity: usize,
    timeout: Duration,
    retry_after: Duration,
    cache: Mutex<CachedUsers>,
    consecutive_failures: AtomicU32,
    paused_until: Mutex<Option<Instant>>,
}

/// Failed reads in a row after which the store is left alone for `features_retry_ms`: one slow read is noise, a
/// run of them is an outage that would otherwise cost every request the full deadline.
const FAILURES_BEFORE_PAUSE: u32 = 3;

impl<S> std::fmt::Debug for UserFeatureReader<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserFeatureReader")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl<S: FeatureStore> UserFeatureReader<S> {
    pub fn new(store: Arc<S>, cache: &FeatureCacheConfig, deadlines: &Deadlines) -> Self {
        Self {
            store,
            ttl: Duration::from_millis(cache.ttl_ms),
            capacity: cache.capacity.max(1),
            timeout: Duration::from_millis(deadlines.features_ms),
            retry_after: Duration::from_millis(deadlines.features_retry_ms),
            cache: Mutex::new(HashMap::new()),
            consecutive_failures: AtomicU32::new(0),
            paused_until: Mutex::new(None),
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// The user's recent items, oldest first.
    pub async fn recent_items(
        &self,
        user: &UserId,
    ) -> Result<(Arc<[ItemId]>, FeatureSource), FeatureReadError> {
        let now = Instant::now();
        if let Some((at, items)) = self.lock_cache().get(user)
            && now.duration_since(*at) < self.ttl
        {
            return Ok((items.clone(), FeatureSource::Cache));
        }
        if let Some(until) = *self.lock_pause()
            && now < until
        {
            return Err(FeatureReadError::Paused);
        }
        // Read on the caller's runtime: the background runtime also ships the log, whose Parquet encoding would
        // hold a read up past its deadline.
        let id = [user.clone()];
        let result = match tokio::time::timeout(self.timeout, self.store.users(&id)).await {
            Err(_) => Err(FeatureReadError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(FeatureReadError::Store(e.to_string())),
            Ok(Ok(mut users)) => Ok(users.pop().map(|u| u.history()).unwrap_or_default()),
        };
        match result {
            Ok(history) => {
                self.consecutive_failures.store(0, Ordering::Relaxed);
                let items: Arc<[ItemId]> = history.into();
                self.remember(user, items.clone());
                Ok((items, FeatureSource::Store))
            }
            Err(e) => {
                if self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
                    >= FAILURES_BEFORE_PAUSE
                {
                    *self.lock_pause() = Some(Instant::now() + self.retry_after);
                }
                Err(e)
            }
        }
    }

    fn remember(&self, user: &UserId, items: Arc<[ItemId]>) {
        let mut cache = self.lock_cache();
        if cache.len() >= self.capacity {
            let now = Instant::now();
            cache.retain(|_, (at, _)| now.duration_since(*at) < self.ttl);
            if cache.len() >= self.capacity {
                // All fresh: drop the oldest half rather than one at a time.
                let mut ages: Vec<Instant> = cache.values().map(|(at, _)| *at).collect();
                ages.sort_unstable();
                let cut = ages[ages.len() / 2];
                cache.retain(|_, (at, _)| *at > cut);
            }
        }
        cache.insert(user.clone(), (Instant::now(), items));
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, CachedUsers> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_pause(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.paused_until.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Items by popularity, best first, over the items the served models know.
#[derive(Debug, Default)]
pub struct Popularity {
    ranked: RwLock<Arc<Vec<ScoredItem>>>,
}

impl Popularity {
    pub fn ranked(&self) -> Arc<Vec<ScoredItem>> {
        self.ranked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Re-reads the popularity of every item a served model knows. On failure the previous figures stay.
    pub async fn refresh<S: FeatureStore>(
        &self,
        store: &S,
        deployments: &Deployments,
        half_life_ms: i64,
    ) -> Result<(), String> {
        let mut ids: Vec<ItemId> = Vec::new();
        let mut seen = HashSet::new();
        for deployment in deployments.all() {
            for variant in &deployment.variants {
                for item in variant.model.items() {
                    if seen.insert(item.clone()) {
                        ids.push(item.clone());
                    }
                }
            }
        }
        if ids.is_empty() {
            return Ok(());
        }
        let now = edgerec_features::now_ms();
        let features = store.items(&ids).await.map_err(|e| e.to_string())?;
        let mut ranked: Vec<ScoredItem> = ids
            .into_iter()
            .zip(features)
            .filter_map(|(item, features)| {
                let score = features?.popularity.at(now, half_life_ms);
                (score > 0.0).then_some(ScoredItem {
                    item,
                    score: score as f32,
                })
            })
            .collect();
        // Stable: equal figures keep catalogue order.
        ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
        *self.ranked.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ranked);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU8;

    use edgerec_features::embedded::EmbeddedFeatureStore;
    use edgerec_features::event::{Event, EventKind};
    use edgerec_features::item::ItemFeatures;
    use edgerec_features::store::{FeatureSettings, Lease, Sequenced, StoreError};
    use edgerec_features::user::UserFeatures;

    use super::*;

    const UP: u8 = 0;
    const FAILING: u8 = 1;
    const HANGING: u8 = 2;

    /// The embedded store behind a switch that makes user reads fail or hang, as an unreachable store would.
    struct Switched {
        inner: EmbeddedFeatureStore,
        mode: AtomicU8,
        reads: AtomicU32,
    }

    impl FeatureStore for Switched {
        async fn apply(&self, node: &str, events: &[Sequenced]) -> Result<(), StoreError> {
            self.inner.apply(node, events).await
        }

        async fn users(&self, ids: &[UserId]) -> Result<Vec<UserFeatures>, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            match self.mode.load(Ordering::SeqCst) {
                FAILING => Err(StoreError::Unavailable("switched off".into())),
                HANGING => std::future::pending().await,
                _ => self.inner.users(ids).await,
            }
        }

        async fn items(&self, ids: &[ItemId]) -> Result<Vec<Option<ItemFeatures>>, StoreError> {
            self.inner.items(ids).await
        }

        async fn put_items(&self, items: &[(ItemId, ItemFeatures)]) -> Result<(), StoreError> {
            self.inner.put_items(items).await
        }

        async fn sync(&self) -> Result<(), StoreError> {
            self.inner.sync().await
        }

        // The switch covers user reads only: leases pass through, as updates and item reads do.
        async fn lease(&self, node: &str) -> Result<Option<Lease>, StoreError> {
            self.inner.lease(node).await
        }

        async fn swap_lease(
            &self,
            node: &str,
            expected: Option<&Lease>,
            new: Option<&Lease>,
        ) -> Result<bool, StoreError> {
            self.inner.swap_lease(node, expected, new).await
        }
    }

    fn switched(dir: &std::path::Path, mode: u8) -> Arc<Switched> {
        Arc::new(Switched {
            inner: EmbeddedFeatureStore::open(&dir.join("f.redb"), FeatureSettings::default())
                .expect("opens"),
            mode: AtomicU8::new(mode),
            reads: AtomicU32::new(0),
        })
    }

    fn uid(id: &str) -> UserId {
        UserId::parse(id).expect("a user id")
    }

    fn view(seq: u64, user: &str, item: &str) -> Sequenced {
        Sequenced {
            seq,
            event: Event::from_good_ids(
                &format!("e{seq}"),
                user,
                item,
                EventKind::View,
                1_000 + seq as i64,
            ),
        }
    }

    #[tokio::test]
    async fn cache_serves_within_its_ttl_and_repeated_failures_pause_the_store() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = switched(dir.path(), UP);
        store
            .apply("n", &[view(1, "u1", "a"), view(2, "u1", "b")])
            .await
            .expect("applies");
        let reader = UserFeatureReader::new(
            store.clone(),
            &FeatureCacheConfig {
                ttl_ms: 60_000,
                capacity: 10,
            },
            &Deadlines {
                features_ms: 50,
                features_retry_ms: 60_000,
                ..Deadlines::default()
            },
        );

        let (items, source) = reader.recent_items(&uid("u1")).await.expect("reads");
        assert_eq!(
            (&items[..], source),
            (
                &ItemId::parse_all(["a", "b"]).expect("item ids")[..],
                FeatureSource::Store
            )
        );
        // Within the TTL the store is not asked again, even while it is down.
        store.mode.store(FAILING, Ordering::SeqCst);
        let (_, source) = reader.recent_items(&uid("u1")).await.expect("cached");
        assert_eq!(source, FeatureSource::Cache);
        assert_eq!(store.reads.load(Ordering::SeqCst), 1);

        // Unknown users go to the store: two failures are reported as such, a hang as a timeout...
        for user in ["u2", "u3"] {
            assert!(matches!(
                reader.recent_items(&uid(user)).await,
                Err(FeatureReadError::Store(_))
            ));
        }
        store.mode.store(HANGING, Ordering::SeqCst);
        assert_eq!(
            reader.recent_items(&uid("u4")).await,
            Err(FeatureReadError::Timeout(Duration::from_millis(50)))
        );
        // ...and after the third failure in a row the store is left alone.
        let reads = store.reads.load(Ordering::SeqCst);
        assert_eq!(
            reader.recent_items(&uid("u5")).await,
            Err(FeatureReadError::Paused)
        );
        assert_eq!(store.reads.load(Ordering::SeqCst), reads);
    }

    #[tokio::test]
    async fn the_store_is_asked_again_once_the_pause_ends() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = switched(dir.path(), FAILING);
        let reader = UserFeatureReader::new(
            store.clone(),
            &FeatureCacheConfig::default(),
            &Deadlines {
                features_retry_ms: 100,
                ..Deadlines::default()
            },
        );
        for user in ["a", "b", "c"] {
            assert!(matches!(
                reader.recent_items(&uid(user)).await,
                Err(FeatureReadError::Store(_))
            ));
        }
        assert_eq!(
            reader.recent_items(&uid("d")).await,
            Err(FeatureReadError::Paused)
        );
        store.mode.store(UP, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(150)).await;
        let (_, source) = reader
            .recent_items(&uid("d"))
            .await
            .expect("the store is back");
        assert_eq!(source, FeatureSource::Store);
    }

    #[tokio::test]
    async fn one_failure_between_successes_does_not_pause() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = switched(dir.path(), UP);
        let reader = UserFeatureReader::new(
            store.clone(),
            &FeatureCacheConfig::default(),
            &Deadlines::default(),
        );
        for round in 0..5 {
            store.mode.store(FAILING, Ordering::SeqCst);
            assert!(
                reader
                    .recent_items(&uid(&format!("f{round}")))
                    .await
                    .is_err()
            );
            store.mode.store(UP, Ordering::SeqCst);
            let (items, _) = reader
                .recent_items(&uid(&format!("ok{round}")))
                .await
                .expect("a new user reads fine");
            assert!(items.is_empty());
        }
    }
}
