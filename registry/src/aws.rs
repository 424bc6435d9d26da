//! The production backend: blobs in S3, everything else in one DynamoDB table. Each change commits with its audit
//! entry in one `TransactWriteItems`, whose conditions make versions immutable, plans change only from the
//! revision read, and audit sequence numbers unique.
//!
//! Table layout (`pk`, `sk` strings; `record` holds the JSON of the item):
//! | item | pk | sk |
//! | --- | --- | --- |
//! | version | `versions` | `<model>\0<version>` |
//! | plan head (attribute `revision`) | `plan-heads` | `<surface>` |
//! | plan revision | `plans` | `<surface>\0<revision, 20 digits>` |
//! | audit entry | `audit` | `<sequence, 20 digits>` |
//! | audit counter (attribute `n`) | `counters` | `audit` |
//! | revocation | `revocations` | `<model>\0<version>` |
//! | key rotation | `key-rotations` | `<sequence, 20 digits>` |
//! | token | `tokens` | `<id>` |
//! | token secret hash (attribute `id`) | `token-secrets` | `<sha256>` |

use std::collections::HashMap;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Delete, Put, TransactWriteItem};
use aws_sdk_s3::primitives::ByteStream;
use edgerec_core::Digest;
use edgerec_registry_api::keys::KeyRotation;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::store::{AuditDraft, Store, StoreError};
use edgerec_registry_api::records::{AuditEntry, Plan, Revocation, TokenRecord, VersionRecord};
use edgerec_storage::now_ms;

pub use edgerec_aws::AwsConfig;

/// Blobs in S3, metadata in DynamoDB.
#[derive(Debug, Clone)]
pub struct AwsStore {
    clients: edgerec_aws::Clients,
    table: String,
    bucket: String,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{what}: {e}"))
}

fn sdk_error<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    what: &str,
    e: SdkError<E, R>,
) -> StoreError {
    StoreError::Unavailable(edgerec_aws::describe(what, e))
}

fn encode<T: Serialize>(value: &T) -> AttributeValue {
    AttributeValue::S(serde_json::to_string(value).expect("records serialise"))
}

fn decode<T: DeserializeOwned>(item: &HashMap<String, AttributeValue>) -> Result<T, StoreError> {
    let json = item
        .get("record")
        .and_then(|v| v.as_s().ok())
        .ok_or_else(|| StoreError::Corrupt("an item without a record".into()))?;
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn number(item: &HashMap<String, AttributeValue>, name: &str) -> Result<u64, StoreError> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| StoreError::Corrupt(format!("an item without a numeric `{name}`")))
}

fn s(text: impl Into<String>) -> AttributeValue {
    AttributeValue::S(text.into())
}

fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn version_key(model: &str, version: &str) -> String {
    format!("{model}\0{version}")
}

fn plan_key(surface: &str, revision: u64) -> String {
    format!("{surface}\0{revision:020}")
}

/// Attempts of a transaction whose only conflict was another writer taking the same audit sequence number.
const AUDIT_RETRIES: usize = 8;

impl AwsStore {
    /// Clients for `config` (see [`edgerec_aws::Clients::connect`]).
    pub fn connect(config: &AwsConfig) -> Self {
        let clients = edgerec_aws::Clients::connect(config);
        Self {
            clients,
            table: config.table.clone(),
            bucket: config.bucket.clone(),
        }
    }

    /// Creates the table and the bucket if they do not exist.
    pub async fn ensure_created(&self) -> Result<(), StoreError> {
        edgerec_aws::ensure_table(&self.clients.dynamodb, &self.table)
            .await
            .map_err(StoreError::Unavailable)?;
        edgerec_aws::ensure_bucket(&self.clients.s3, &self.bucket)
            .await
            .map_err(StoreError::Unavailable)
    }

    fn blob_key(digest: &Digest) -> String {
        format!("blobs/sha256/{digest}")
    }

    async fn get(
        &self,
        pk: &str,
        sk: &str,
    ) -> Result<Option<HashMap<String, AttributeValue>>, StoreError> {
        let out = self
            .clients
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("reading DynamoDB", e))?;
        Ok(out.item)
    }

    /// Every item of partition `pk` whose sort key starts with `prefix`, in sort-key order.
    async fn query(
        &self,
        pk: &str,
        prefix: &str,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, StoreError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let mut query = self
                .clients
                .dynamodb
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .expression_attribute_values(":pk", s(pk));
            query = if prefix.is_empty() {
                query.key_condition_expression("pk = :pk")
            } else {
                query
                    .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                    .expression_attribute_values(":prefix", s(prefix))
            };
            let page = query
                .send()
                .await
                .map_err(|e| sdk_error("querying DynamoDB", e))?;
            items.extend(page.items.unwrap_or_default());
            start = page.last_evaluated_key;
            if start.is_none() {
                return Ok(items);
            }
        }
    }

    /// A transaction write of the item `pk`/`sk` with one more attribute, under `condition`.
    fn write(
        &self,
        pk: &str,
        sk: &str,
        (name, value): (&str, AttributeValue),
        condition: Option<&str>,
    ) -> TransactWriteItem {
        let mut put = Put::builder()
            .table_name(&self.table)
            .item("pk", s(pk))
            .item("sk", s(sk))
            .item(name, value);
        if let Some(condition) = condition {
            put = put.condition_expression(condition);
        }
        TransactWriteItem::builder()
            .put(edgerec_aws::built(put.build()))
            .build()
    }

    /// Runs `writes` and the audit entry of `draft` in one transaction. `writes` is rebuilt on every attempt;
    /// a cancelled condition on one of them is a conflict, described by `conflict`.
    async fn transact(
        &self,
        draft: &AuditDraft,
        writes: impl Fn() -> Vec<TransactWriteItem>,
        conflict: impl Fn(usize) -> StoreError,
    ) -> Result<(), StoreError> {
        for _ in 0..AUDIT_RETRIES {
            let counter = self.get("counters", "audit").await?;
            let last = counter
                .as_ref()
                .map(|c| number(c, "n"))
                .transpose()?
                .unwrap_or(0);
            let sequence = last + 1;
            let entry = AuditEntry {
                sequence,
                at: now_ms(),
                actor: draft.actor.clone(),
                action: draft.action.to_string(),
                target: draft.target.clone(),
                reason: draft.reason.clone(),
                detail: draft.detail.clone(),
            };
            let mut items = writes();
            let own = items.len();
            let counter_condition = if last == 0 {
                "attribute_not_exists(pk)"
            } else {
                "n = :last"
            };
            let mut counter_put = Put::builder()
                .table_name(&self.table)
                .item("pk", s("counters"))
                .item("sk", s("audit"))
                .item("n", n(sequence))
                .condition_expression(counter_condition);
            if last > 0 {
                counter_put = counter_put.expression_attribute_values(":last", n(last));
            }
            items.push(
                TransactWriteItem::builder()
                    .put(edgerec_aws::built(counter_put.build()))
                    .build(),
            );
            items.push(self.write(
                "audit",
                &format!("{sequence:020}"),
                ("record", encode(&entry)),
                None,
            ));
            let result = self
                .clients
                .dynamodb
                .transact_write_items()
                .set_transact_items(Some(items))
                .send()
                .await;
            let error = match result {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) =
                error.as_service_error()
            {
                let failed: Vec<usize> = cancelled
                    .cancellation_reasons()
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.code() == Some("ConditionalCheckFailed"))
                    .map(|(i, _)| i)
                    .collect();
                if let Some(&index) = failed.iter().find(|&&i| i < own) {
                    return Err(conflict(index));
                }
                if !failed.is_empty()
                    || cancelled
                        .cancellation_reasons()
                        .iter()
                        .any(|r| r.code() == Some("TransactionConflict"))
                {
                    continue; // Another writer took this audit number: read the counter again.
                }
            }
            return Err(sdk_error("writing DynamoDB", error));
        }
        Err(StoreError::Unavailable(
            "too many concurrent writers: the audit sequence kept moving".into(),
        ))
    }
}

impl Store for AwsStore {
    async fn put_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<(), StoreError> {
        self.clients
            .s3
            .put_object()
            .bucket(&self.bucket)
            .key(Self::blob_key(digest))
            .body(ByteStream::from(bytes.to_vec()))
            .send()
            .await
            .map_err(|e| sdk_error("writing S3", e))?;
        Ok(())
    }

    async fn get_blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        match self
            .clients
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(Self::blob_key(digest))
            .send()
            .await
        {
            Ok(object) => {
                let bytes = object
                    .body
                    .collect()
                    .await
                    .map_err(|e| unavailable("reading S3", e))?;
                Ok(Some(bytes.into_bytes().to_vec()))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(sdk_error("reading S3", e)),
        }
    }

    async fn insert_version(
        &self,
        record: &VersionRecord,
        audit: AuditDraft,
    ) -> Result<(), StoreError> {
        let key = version_key(&record.model, &record.version);
        self.transact(
            &audit,
            || {
                vec![self.write(
                    "versions",
                    &key,
                    ("record", encode(record)),
                    Some("attribute_not_exists(pk)"),
                )]
            },
            |_| {
                StoreError::Conflict(format!(
                    "{} {} is already published; versions are immutable",
                    record.model, record.version
                ))
            },
        )
        .await
    }

    async fn get_version(
        &self,
        model: &str,
        version: &str,
    ) -> Result<Option<VersionRecord>, StoreError> {
        self.get("versions", &version_key(model, version))
            .await?
            .map(|item| decode(&item))
            .transpose()
    }

    async fn list_versions(&self, model: Option<&str>) -> Result<Vec<VersionRecord>, StoreError> {
        let prefix = model.map(|m| format!("{m}\0")).unwrap_or_default();
        let mut records: Vec<VersionRecord> = self
            .query("versions", &prefix)
            .await?
            .iter()
            .map(decode)
            .collect::<Result<_, _>>()?;
        records.sort_by(|a, b| (&a.model, a.published_at).cmp(&(&b.model, b.published_at)));
        Ok(records)
    }

    async fn delete_version(
        &self,
        model: &str,
        version: &str,
        revocation: Option<&Revocation>,
        audit: AuditDraft,
    ) -> Result<(), StoreError> {
        if self.get_version(model, version).await?.is_none() {
            return Err(StoreError::NotFound(format!("{model} {version}")));
        }
        let heads = self.query("plan-heads", "").await?;
        let mut checks = Vec::with_capacity(heads.len());
        for head in &heads {
            let plan: Plan = decode(head)?;
            if let Some(variant) = plan
                .variants
                .iter()
                .find(|v| v.model == model && v.version == version)
            {
                return Err(StoreError::Referenced(format!(
                    "{model} {version} serves variant `{}` of surface `{}`; deploy another version first",
                    variant.name, plan.surface
                )));
            }
            checks.push((plan.surface.clone(), plan.revision));
        }
        self.transact(
            &audit,
            || {
                let mut items = vec![
                    TransactWriteItem::builder()
                        .delete(edgerec_aws::built(
                            Delete::builder()
                                .table_name(&self.table)
                                .key("pk", s("versions"))
                                .key("sk", s(version_key(model, version)))
                                .condition_expression("attribute_exists(pk)")
                                .build(),
                        ))
                        .build(),
                ];
                if let Some(revocation) = revocation {
                    items.push(self.write(
                        "revocations",
                        &version_key(model, version),
                        ("record", encode(revocation)),
                        Some("attribute_not_exists(pk)"),
                    ));
                }
                // No plan may have changed since it was checked for this version.
                for (surface, revision) in &checks {
                    items.push(
                        TransactWriteItem::builder()
                            .condition_check(edgerec_aws::built(
                                ConditionCheck::builder()
                                    .table_name(&self.table)
                                    .key("pk", s("plan-heads"))
                                    .key("sk", s(surface.clone()))
                                    .condition_expression("revision = :r")
                                    .expression_attribute_values(":r", n(*revision))
                                    .build(),
                            ))
                            .build(),
                    );
                }
                items
            },
            |_| {
                StoreError::Conflict(format!(
                    "{model} {version}, its revocation or a plan changed meanwhile; try again"
                ))
            },
        )
        .await
    }

    async fn revoke_version(
        &self,
        revocation: &Revocation,
        audit: AuditDraft,
    ) -> Result<(), StoreError> {
        let key = version_key(&revocation.model, &revocation.version);
        let named = format!("{} {}", revocation.model, revocation.version);
        self.transact(
            &audit,
            || {
                vec![
                    TransactWriteItem::builder()
                        .condition_check(edgerec_aws::built(
                            ConditionCheck::builder()
                                .table_name(&self.table)
                                .key("pk", s("versions"))
                                .key("sk", s(key.clone()))
                                .condition_expression("attribute_exists(pk)")
                                .build(),
                        ))
                        .build(),
                    self.write(
                        "revocations",
                        &key,
                        ("record", encode(revocation)),
                        Some("attribute_not_exists(pk)"),
                    ),
                ]
            },
            |index| match index {
                0 => StoreError::NotFound(named.clone()),
                _ => StoreError::Conflict(format!("{named} is already revoked")),
            },
        )
        .await
    }

    async fn key_rotations(&self) -> Result<Vec<KeyRotation>, StoreError> {
        self.query("key-rotations", "")
            .await?
            .iter()
            .map(decode)
            .collect()
    }

    async fn add_key_rotation(
        &self,
        rotation: &KeyRotation,
        audit: AuditDraft,
    ) -> Result<(), StoreError> {
        let rotations = self.key_rotations().await?;
        if rotations
            .last()
            .is_some_and(|last| last.to_key != rotation.from_key)
        {
            return Err(StoreError::Conflict(
                "the key being retired is not the registry's current key".into(),
            ));
        }
        // The next sequence number, taken only if free: of two rotations from the same key, one lands.
        let sequence = format!("{:020}", rotations.len() + 1);
        self.transact(
            &audit,
            || {
                vec![self.write(
                    "key-rotations",
                    &sequence,
                    ("record", encode(rotation)),
                    Some("attribute_not_exists(pk)"),
                )]
            },
            |_| StoreError::Conflict("another key rotation landed first".into()),
        )
        .await
    }

    async fn revocations(&self, model: Option<&str>) -> Result<Vec<Revocation>, StoreError> {
        let prefix = model.map(|m| format!("{m}\0")).unwrap_or_default();
        self.query("revocations", &prefix)
            .await?
            .iter()
            .map(decode)
            .collect()
    }

    async fn get_plan(&self, surface: &str) -> Result<Option<Plan>, StoreError> {
        self.get("plan-heads", surface)
            .await?
            .map(|item| decode(&item))
            .transpose()
    }

    async fn plan_history(&self, surface: &str) -> Result<Vec<Plan>, StoreError> {
        self.query("plans", &format!("{surface}\0"))
            .await?
            .iter()
            .map(decode)
            .collect()
    }

    async fn list_plans(&self) -> Result<Vec<Plan>, StoreError> {
        self.query("plan-heads", "")
            .await?
            .iter()
            .map(decode)
            .collect()
    }

    async fn put_plan(&self, plan: &Plan, audit: AuditDraft) -> Result<(), StoreError> {
        self.transact(
            &audit,
            || {
                // The head carries the whole current plan, so reading it takes one request.
                let mut head = Put::builder()
                    .table_name(&self.table)
                    .item("pk", s("plan-heads"))
                    .item("sk", s(plan.surface.clone()))
                    .item("revision", n(plan.revision))
                    .item("record", encode(plan));
                head = if plan.revision == 1 {
                    head.condition_expression("attribute_not_exists(pk)")
                } else {
                    head.condition_expression("revision = :previous")
                        .expression_attribute_values(":previous", n(plan.revision - 1))
                };
                vec![
                    TransactWriteItem::builder()
                        .put(edgerec_aws::built(head.build()))
                        .build(),
                    self.write(
                        "plans",
                        &plan_key(&plan.surface, plan.revision),
                        ("record", encode(plan)),
                        Some("attribute_not_exists(pk)"),
                    ),
                ]
            },
            |_| {
                StoreError::Conflict(format!(
                    "the plan of `{}` is no longer at revision {}",
                    plan.surface,
                    plan.revision - 1
                ))
            },
        )
        .await
    }

    async fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let out = self
            .clients
            .dynamodb
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s("audit"))
            .scan_index_forward(false)
            .limit(i32::try_from(limit.max(1)).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|e| sdk_error("querying DynamoDB", e))?;
        out.items
            .unwrap_or_default()
            .iter()
            .take(limit)
            .map(decode)
            .collect()
    }

    async fn put_token(&self, token: &TokenRecord, audit: AuditDraft) -> Result<(), StoreError> {
        self.transact(
            &audit,
            || {
                vec![
                    self.write(
                        "tokens",
                        &token.id,
                        ("record", encode(token)),
                        Some("attribute_not_exists(pk)"),
                    ),
                    self.write(
                        "token-secrets",
                        &token.secret_sha256,
                        ("id", s(token.id.clone())),
                        Some("attribute_not_exists(pk)"),
                    ),
                ]
            },
            |_| StoreError::Conflict(format!("token {} exists", token.id)),
        )
        .await
    }

    async fn token_by_secret_hash(
        &self,
        secret_sha256: &str,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let Some(link) = self.get("token-secrets", secret_sha256).await? else {
            return Ok(None);
        };
        let id = link
            .get("id")
            .and_then(|v| v.as_s().ok())
            .ok_or_else(|| StoreError::Corrupt("a token link without an id".into()))?;
        self.get("tokens", id)
            .await?
            .map(|item| decode(&item))
            .transpose()
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.query("tokens", "").await?.iter().map(decode).collect()
    }

    async fn revoke_token(&self, id: &str, audit: AuditDraft) -> Result<(), StoreError> {
        let Some(item) = self.get("tokens", id).await? else {
            return Err(StoreError::NotFound(format!("token {id}")));
        };
        let mut record: TokenRecord = decode(&item)?;
        record.revoked = true;
        self.transact(
            &audit,
            || {
                vec![self.write(
                    "tokens",
                    id,
                    ("record", encode(&record)),
                    Some("attribute_exists(pk)"),
                )]
            },
            |_| StoreError::NotFound(format!("token {id}")),
        )
        .await
    }
}
