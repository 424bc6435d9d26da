//! The DynamoDB backend: one table (`pk`, `sk` strings), one item per user (`pk = user#<id>`) and per item
//! (`pk = item#<id>`), `sk = features`, holding the record's JSON in `record` and a `version` number.
//!
//! Every update is a read-modify-write whose put is conditional on the version read, retried on conflict, so two
//! nodes updating one user at once both land (no lost update). Reads are `BatchGetItem`s of 100 keys, strongly
//! consistent.
//!
//! The lease on a node id is one item more (`pk = lease#<node>`, `sk = lease`) holding the lease's JSON in
//! `record`; a swap is one conditional put or delete on it, so DynamoDB itself decides which of two racing
//! swaps lands.

use std::collections::HashMap;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes};
use edgerec_aws::{AwsConfig, Clients, describe};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use edgerec_core::{ItemId, UserId};

use crate::item::ItemFeatures;
use crate::store::{
    FeatureSettings, FeatureStore, ItemRecord, Lease, Sequenced, StoreError, UserRecord, by_entity,
};
use crate::user::UserFeatures;

/// Keys per `BatchGetItem` (the service's limit).
const BATCH_GET: usize = 100;
/// Entities updated at once.
const CONCURRENT_UPDATES: usize = 32;
/// Attempts of one update that keeps losing the race for its item.
const CONFLICT_RETRIES: usize = 50;

#[derive(Debug, Clone)]
pub struct DynamoFeatureStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    settings: FeatureSettings,
}

type Item = HashMap<String, AttributeValue>;

fn user_key(id: &str) -> String {
    format!("user#{id}")
}

fn item_key(id: &str) -> String {
    format!("item#{id}")
}

fn key(pk: &str) -> Item {
    HashMap::from([
        ("pk".to_owned(), AttributeValue::S(pk.to_owned())),
        ("sk".to_owned(), AttributeValue::S("features".to_owned())),
    ])
}

/// The key of the lease on node id `node`: a pk of its own, so no user or item id can collide with it.
fn lease_key(node: &str) -> Item {
    HashMap::from([
        ("pk".to_owned(), AttributeValue::S(format!("lease#{node}"))),
        ("sk".to_owned(), AttributeValue::S("lease".to_owned())),
    ])
}

/// A stored record and the version it was read at (0: not stored yet).
fn decode<T: DeserializeOwned>(item: &Item) -> Result<(T, u64), StoreError> {
    let record = item
        .get("record")
        .and_then(|v| v.as_s().ok())
        .ok_or_else(|| StoreError::Corrupt("an item without a record".into()))?;
    let version = item
        .get("version")
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| StoreError::Corrupt("an item without a version".into()))?;
    let record = serde_json::from_str(record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok((record, version))
}

/// The answer to a conditional write: `true` when it landed, `false` when its condition failed (the item was not
/// what the caller expected), an error when DynamoDB could not be asked.
fn conditional<O, E, R>(
    sent: Result<O, SdkError<E, R>>,
    condition_failed: impl Fn(&E) -> bool,
) -> Result<bool, StoreError>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match sent {
        Ok(_) => Ok(true),
        Err(e) if e.as_service_error().is_some_and(&condition_failed) => Ok(false),
        Err(e) => Err(StoreError::Unavailable(describe("writing DynamoDB", e))),
    }
}

/// Runs `updates` with at most [`CONCURRENT_UPDATES`] in flight, stopping at the first error.
async fn bounded(
    updates: impl IntoIterator<Item = impl Future<Output = Result<(), StoreError>>>,
) -> Result<(), StoreError> {
    futures::stream::iter(updates)
        .buffer_unordered(CONCURRENT_UPDATES)
        .try_collect()
        .await
}

impl DynamoFeatureStore {
    pub fn connect(config: &AwsConfig, settings: FeatureSettings) -> Self {
        Self {
            client: Clients::connect(config).dynamodb,
            table: config.table.clone(),
            settings,
        }
    }

    /// Creates the table unless it exists.
    pub async fn ensure_created(&self) -> Result<(), StoreError> {
        edgerec_aws::ensure_table(&self.client, &self.table)
            .await
            .map_err(StoreError::Unavailable)
    }

    /// The stored items of `pks`, by pk.
    async fn batch_get(&self, pks: &[String]) -> Result<HashMap<String, Item>, StoreError> {
        let mut found = HashMap::new();
        for chunk in pks.chunks(BATCH_GET) {
            let mut unique: Vec<&String> = chunk.iter().collect();
            unique.sort();
            unique.dedup();
            let mut pending = Some(edgerec_aws::built(
                KeysAndAttributes::builder()
                    .set_keys(Some(unique.iter().map(|pk| key(pk)).collect()))
                    .consistent_read(true)
                    .build(),
            ));
            let mut attempt = 0;
            while let Some(keys) = pending.take() {
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, keys)
                    .send()
                    .await
                    .map_err(|e| StoreError::Unavailable(describe("reading DynamoDB", e)))?;
                for item in out
                    .responses
                    .unwrap_or_default()
                    .remove(&self.table)
                    .unwrap_or_default()
                {
                    if let Some(pk) = item.get("pk").and_then(|v| v.as_s().ok()) {
                        found.insert(pk.clone(), item);
                    }
                }
                pending = out
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(&self.table))
                    .filter(|k| !k.keys.is_empty());
                if pending.is_some() {
                    attempt += 1;
                    // Throttled keys come back unprocessed: back off before asking again.
                    tokio::time::sleep(std::time::Duration::from_millis(20 << attempt.min(6)))
                        .await;
                }
            }
        }
        Ok(found)
    }

    async fn get(&self, pk: &str) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(pk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| StoreError::Unavailable(describe("reading DynamoDB", e)))?;
        Ok(out.item)
    }

    /// Applies `change` to the record at `pk` (starting from `first`, the item as read in a batch), retrying on a
    /// concurrent change. `change` says whether it changed anything; nothing is written when it did not.
    async fn update<R: Serialize + DeserializeOwned + Default>(
        &self,
        pk: String,
        mut first: Option<Item>,
        change: impl Fn(&mut R) -> bool,
    ) -> Result<(), StoreError> {
        for _ in 0..CONFLICT_RETRIES {
            let item = match first.take() {
                Some(item) => Some(item),
                None => self.get(&pk).await?,
            };
            let (mut record, version) = match &item {
                Some(item) => decode::<R>(item)?,
                None => (R::default(), 0),
            };
            if !change(&mut record) {
                return Ok(());
            }
            let mut put = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(key(&pk)))
                .item(
                    "record",
                    AttributeValue::S(serde_json::to_string(&record).expect("records serialise")),
                )
                .item("version", AttributeValue::N((version + 1).to_string()));
            put = if version == 0 {
                put.condition_expression("attribute_not_exists(pk)")
            } else {
                put.condition_expression("version = :v")
                    .expression_attribute_values(":v", AttributeValue::N(version.to_string()))
            };
            match put.send().await {
                Ok(_) => return Ok(()),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
                {
                    // Someone else changed it since it was read: read again and redo the change.
                    first = None;
                }
                Err(e) => {
                    return Err(StoreError::Unavailable(describe("writing DynamoDB", e)));
                }
            }
        }
        Err(StoreError::Unavailable(format!(
            "`{pk}` kept changing under {CONFLICT_RETRIES} attempts to update it"
        )))
    }
}

impl FeatureStore for DynamoFeatureStore {
    async fn apply(&self, node: &str, events: &[Sequenced]) -> Result<(), StoreError> {
        let (users, items) = by_entity(events);
        let pks: Vec<String> = users
            .keys()
            .map(|u| user_key(u))
            .chain(items.keys().map(|i| item_key(i)))
            .collect();
        let mut read = self.batch_get(&pks).await?;
        let settings = self.settings;
        let mut updates = Vec::new();
        for (user, events) in &users {
            let pk = user_key(user);
            let first = read.remove(&pk);
            updates.push(futures::future::Either::Left(self.update(
                pk,
                first,
                move |r: &mut UserRecord| r.apply(node, events.iter().copied(), &settings),
            )));
        }
        for (item, events) in &items {
            let pk = item_key(item);
            let first = read.remove(&pk);
            updates.push(futures::future::Either::Right(self.update(
                pk,
                first,
                move |r: &mut ItemRecord| r.apply(node, events.iter().copied(), &settings),
            )));
        }
        bounded(updates).await
    }

    async fn users(&self, ids: &[UserId]) -> Result<Vec<UserFeatures>, StoreError> {
        let pks: Vec<String> = ids.iter().map(|id| user_key(id)).collect();
        let found = self.batch_get(&pks).await?;
        pks.iter()
            .map(|pk| match found.get(pk) {
                Some(item) => decode::<UserRecord>(item).map(|(r, _)| r.features),
                None => Ok(UserFeatures::default()),
            })
            .collect()
    }

    async fn items(&self, ids: &[ItemId]) -> Result<Vec<Option<ItemFeatures>>, StoreError> {
        let pks: Vec<String> = ids.iter().map(|id| item_key(id)).collect();
        let found = self.batch_get(&pks).await?;
        pks.iter()
            .map(|pk| {
                found
                    .get(pk)
                    .map(|item| decode::<ItemRecord>(item).map(|(r, _)| r.features))
                    .transpose()
            })
            .collect()
    }

    async fn put_items(&self, items: &[(ItemId, ItemFeatures)]) -> Result<(), StoreError> {
        let pks: Vec<String> = items.iter().map(|(id, _)| item_key(id)).collect();
        let mut read = self.batch_get(&pks).await?;
        let updates: Vec<_> = items
            .iter()
            .map(|(id, features)| {
                let pk = item_key(id);
                let first = read.remove(&pk);
                self.update(pk, first, move |r: &mut ItemRecord| {
                    r.features = features.clone();
                    true
                })
            })
            .collect();
        bounded(updates).await
    }

    async fn sync(&self) -> Result<(), StoreError> {
        // A DynamoDB write is durable when it is acknowledged.
        Ok(())
    }

    async fn lease(&self, node: &str) -> Result<Option<Lease>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(lease_key(node)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| StoreError::Unavailable(describe("reading DynamoDB", e)))?;
        let Some(item) = out.item else {
            return Ok(None);
        };
        let record = item
            .get("record")
            .and_then(|v| v.as_s().ok())
            .ok_or_else(|| StoreError::Corrupt("a lease without a record".into()))?;
        Lease::from_json(record.as_bytes()).map(Some)
    }

    async fn swap_lease(
        &self,
        node: &str,
        expected: Option<&Lease>,
        new: Option<&Lease>,
    ) -> Result<bool, StoreError> {
        // The condition compares the stored text with the expected lease's; both come from `Lease::to_json`, so
        // equal texts are equal leases. With nothing expected, the item must be absent.
        let (condition, old) = match expected {
            Some(lease) => ("#r = :old", Some(lease.to_json())),
            None => ("attribute_not_exists(pk)", None),
        };
        let names = old
            .is_some()
            .then(|| HashMap::from([("#r".to_owned(), "record".to_owned())]));
        let values = old.map(|old| HashMap::from([(":old".to_owned(), AttributeValue::S(old))]));
        match new {
            Some(lease) => {
                let mut item = lease_key(node);
                item.insert("record".to_owned(), AttributeValue::S(lease.to_json()));
                let sent = self
                    .client
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .condition_expression(condition)
                    .set_expression_attribute_names(names)
                    .set_expression_attribute_values(values)
                    .send()
                    .await;
                conditional(sent, PutItemError::is_conditional_check_failed_exception)
            }
            None => {
                let sent = self
                    .client
                    .delete_item()
                    .table_name(&self.table)
                    .set_key(Some(lease_key(node)))
                    .condition_expression(condition)
                    .set_expression_attribute_names(names)
                    .set_expression_attribute_values(values)
                    .send()
                    .await;
                conditional(sent, DeleteItemError::is_conditional_check_failed_exception)
            }
        }
    }
}
