//! `GET /v1/catalogue/{surface}`: every item the surface's models know, most popular first, with what the
//! catalogue says of it, in pages. Built from the store at most once per surface per refresh interval (and when
//! the plan changes), however many pages load it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgerec_core::ItemId;
use edgerec_features::store::FeatureStore;
use serde::{Deserialize, Serialize};

use crate::deployment::Deployment;
use crate::service::{NodeState, ServiceError};

/// An item as the catalogue lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogueItem {
    pub id: ItemId,
    /// Absent until a catalogue refresh names the item.
    pub title: Option<String>,
    pub genres: Vec<String>,
    /// 1 for the most popular item; absent for items without interactions yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub popular_rank: Option<usize>,
}

/// One page of the catalogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CataloguePage {
    pub surface: String,
    /// Items in the whole catalogue.
    pub total: usize,
    pub offset: usize,
    pub items: Vec<CatalogueItem>,
    /// The `offset` of the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<usize>,
}

/// `?offset=&limit=`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    #[serde(default)]
    pub offset: usize,
    pub limit: Option<usize>,
}

/// Items in a page when the request names no `limit`.
pub const DEFAULT_PAGE: usize = 100;

/// Longest a catalogue read from the store may take (every item of every served model, in batches).
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// After a failed read, pages are answered from the last copy (or refused) for this long before the store is
/// asked again, so an outage is not a read per page load.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct CatalogueCache {
    refresh: Duration,
    // Held while the store is read (at most `READ_TIMEOUT`), so concurrent page loads wait for one read instead
    // of each making one.
    built: tokio::sync::Mutex<HashMap<String, Built>>,
}

#[derive(Debug)]
struct Built {
    revision: u64,
    /// The last copy read for this revision and when; `None` until a read succeeds.
    items: Option<(Instant, Arc<Vec<CatalogueItem>>)>,
    failed_at: Option<Instant>,
}

impl Built {
    fn empty(revision: u64) -> Self {
        Self {
            revision,
            items: None,
            failed_at: None,
        }
    }
}

impl CatalogueCache {
    pub fn new(refresh: Duration) -> Self {
        Self {
            refresh,
            built: tokio::sync::Mutex::default(),
        }
    }
}

impl<S: FeatureStore> NodeState<S> {
    pub async fn catalogue_page(
        &self,
        surface: &str,
        query: PageQuery,
    ) -> Result<CataloguePage, ServiceError> {
        let max = self.limits.max_catalogue_page;
        let limit = query.limit.unwrap_or(DEFAULT_PAGE.min(max));
        if limit == 0 || limit > max {
            return Err(ServiceError::BadRequest {
                kind: "invalid_limit".into(),
                message: format!("limit must be between 1 and {max}"),
            });
        }
        let items = self.catalogue_items(surface).await?;
        let end = query.offset.saturating_add(limit).min(items.len());
        let page = items.get(query.offset..end).unwrap_or_default().to_vec();
        Ok(CataloguePage {
            surface: surface.into(),
            total: items.len(),
            offset: query.offset,
            items: page,
            next_offset: (end < items.len()).then_some(end),
        })
    }

    async fn catalogue_items(
        &self,
        surface: &str,
    ) -> Result<Arc<Vec<CatalogueItem>>, ServiceError> {
        let deployment = self.deployment(surface)?;
        let revision = deployment.plan.revision;
        let mut built = self.catalogue.built.lock().await;
        let entry = built
            .entry(surface.into())
            .and_modify(|b| {
                if b.revision != revision {
                    *b = Built::empty(revision);
                }
            })
            .or_insert_with(|| Built::empty(revision));
        let copy = entry.items.as_ref().map(|(_, items)| items.clone());
        let fresh = entry
            .items
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < self.catalogue.refresh);
        let resting = entry
            .failed_at
            .is_some_and(|at| at.elapsed() < RETRY_AFTER_FAILURE);
        if fresh || resting {
            return copy.ok_or(ServiceError::FeatureStore);
        }
        self.metrics.catalogue_builds.inc();
        let read = tokio::time::timeout(READ_TIMEOUT, self.build_catalogue(&deployment)).await;
        let entry = built
            .get_mut(surface)
            .expect("the entry was inserted above, under the same lock");
        match read {
            Ok(Ok(items)) => {
                let items = Arc::new(items);
                entry.items = Some((Instant::now(), items.clone()));
                entry.failed_at = None;
                Ok(items)
            }
            // A store that does not answer: the last copy of the same plan is better than nothing, and the store
            // is left alone for a moment.
            failed => {
                if failed.is_err() {
                    crate::log_line(
                        "catalogue",
                        serde_json::json!({ "error": "the store read timed out" }),
                    );
                }
                entry.failed_at = Some(Instant::now());
                copy.ok_or(ServiceError::FeatureStore)
            }
        }
    }

    async fn build_catalogue(
        &self,
        deployment: &Deployment,
    ) -> Result<Vec<CatalogueItem>, ServiceError> {
        let mut ids: Vec<ItemId> = Vec::new();
        let mut seen = HashSet::new();
        let popular = self.popularity.ranked();
        for item in popular.iter() {
            let known = deployment
                .variants
                .iter()
                .any(|v| v.model.knows(&item.item));
            if known && seen.insert(item.item.as_str()) {
                ids.push(item.item.clone());
            }
        }
        let ranked = ids.len();
        for variant in &deployment.variants {
            for item in variant.model.items() {
                if seen.insert(item.as_str()) {
                    ids.push(item.clone());
                }
            }
        }
        let features = self.features.store().items(&ids).await.map_err(|e| {
            crate::log_line("catalogue", serde_json::json!({ "error": e.to_string() }));
            ServiceError::FeatureStore
        })?;
        Ok(ids
            .into_iter()
            .zip(features)
            .enumerate()
            .map(|(rank, (id, features))| {
                let metadata = features.and_then(|f| f.metadata);
                CatalogueItem {
                    id,
                    title: metadata.as_ref().map(|m| m.title.clone()),
                    genres: metadata.map(|m| m.genres).unwrap_or_default(),
                    popular_rank: (rank < ranked).then_some(rank + 1),
                }
            })
            .collect())
    }
}
