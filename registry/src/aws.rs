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
//! | token | `tokens` | `<id>` |
//! | token secret hash (attribute `id`) | `token-secrets` | `<sha256>` |

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, Delete, KeySchemaElement,
    KeyType, Put, ScalarAttributeType, TransactWriteItem,
};
use aws_sdk_s3::primitives::ByteStream;
use edgerec_core::Digest;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::records::{AuditEntry, Plan, TokenRecord, VersionRecord, now_millis};
use crate::store::{AuditDraft, Store, StoreError};

/// Where the backend's services are and how to reach them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    pub region: String,
    /// A custom endpoint (DynamoDB Local, a test server); `None` for AWS itself.
    pub dynamodb_endpoint: Option<String>,
    pub s3_endpoint: Option<String>,
    pub table: String,
    pub bucket: String,
    /// Static credentials. Without them the standard `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` variables are
    /// read.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

/// Blobs in S3, metadata in DynamoDB.
#[derive(Debug, Clone)]
pub struct AwsStore {
    dynamodb: aws_sdk_dynamodb::Client,
    s3: aws_sdk_s3::Client,
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
    let detail = match &e {
        SdkError::ServiceError(service) => {
            let err = service.err();
            format!(
                "{}: {}",
                err.code().unwrap_or("error"),
                err.message().unwrap_or_default()
            )
        }
        other => aws_sdk_dynamodb::error::DisplayErrorContext(other).to_string(),
    };
    StoreError::Unavailable(format!("{what}: {detail}"))
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

fn built<T>(result: Result<T, aws_sdk_dynamodb::error::BuildError>) -> T {
    result.expect("every required field is set")
}

/// Attempts of a transaction whose only conflict was another writer taking the same audit sequence number.
const AUDIT_RETRIES: usize = 8;

impl AwsStore {
    /// Clients for `config`, failing fast (one attempt, short timeouts) so an unreachable service is reported at
    /// once rather than after minutes of retries.
    pub fn connect(config: &AwsConfig) -> Self {
        let timeouts = aws_sdk_dynamodb::config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(2))
            .operation_attempt_timeout(Duration::from_secs(30))
            .build();
        let credentials = match (&config.access_key_id, &config.secret_access_key) {
            (Some(id), Some(secret)) => Some(aws_sdk_dynamodb::config::Credentials::new(
                id,
                secret,
                None,
                None,
                "edgerec-config",
            )),
            _ => std::env::var("AWS_ACCESS_KEY_ID")
                .ok()
                .zip(std::env::var("AWS_SECRET_ACCESS_KEY").ok())
                .map(|(id, secret)| {
                    aws_sdk_dynamodb::config::Credentials::new(
                        id,
                        secret,
                        std::env::var("AWS_SESSION_TOKEN").ok(),
                        None,
                        "environment",
                    )
                }),
        };
        let mut dynamodb = aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .region(aws_sdk_dynamodb::config::Region::new(config.region.clone()))
            .retry_config(
                aws_sdk_dynamodb::config::retry::RetryConfig::standard().with_max_attempts(2),
            )
            .timeout_config(timeouts.clone());
        let mut s3 = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new(config.region.clone()))
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(2))
            .timeout_config(timeouts)
            .force_path_style(true)
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            );
        if let Some(endpoint) = &config.dynamodb_endpoint {
            dynamodb = dynamodb.endpoint_url(endpoint);
        }
        if let Some(endpoint) = &config.s3_endpoint {
            s3 = s3.endpoint_url(endpoint);
        }
        if let Some(credentials) = credentials {
            dynamodb = dynamodb.credentials_provider(credentials.clone());
            s3 = s3.credentials_provider(credentials);
        }
        Self {
            dynamodb: aws_sdk_dynamodb::Client::from_conf(dynamodb.build()),
            s3: aws_sdk_s3::Client::from_conf(s3.build()),
            table: config.table.clone(),
            bucket: config.bucket.clone(),
        }
    }

    /// Creates the table and the bucket if they do not exist.
    pub async fn ensure_created(&self) -> Result<(), StoreError> {
        let attribute = |name: &str| {
            built(
                AttributeDefinition::builder()
                    .attribute_name(name)
                    .attribute_type(ScalarAttributeType::S)
                    .build(),
            )
        };
        let key = |name: &str, kind: KeyType| {
            built(
                KeySchemaElement::builder()
                    .attribute_name(name)
                    .key_type(kind)
                    .build(),
            )
        };
        let created = self
            .dynamodb
            .create_table()
            .table_name(&self.table)
            .attribute_definitions(attribute("pk"))
            .attribute_definitions(attribute("sk"))
            .key_schema(key("pk", KeyType::Hash))
            .key_schema(key("sk", KeyType::Range))
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        match created {
            Ok(_) => {}
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_in_use_exception()) => {}
            Err(e) => return Err(sdk_error("creating the DynamoDB table", e)),
        }
        match self.s3.create_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error().is_some_and(|s| {
                    s.is_bucket_already_owned_by_you() || s.is_bucket_already_exists()
                }) =>
            {
                Ok(())
            }
            Err(e) => Err(sdk_error("creating the S3 bucket", e)),
        }
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
        TransactWriteItem::builder().put(built(put.build())).build()
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
                at: now_millis(),
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
                    .put(built(counter_put.build()))
                    .build(),
            );
            items.push(self.write(
                "audit",
                &format!("{sequence:020}"),
                ("record", encode(&entry)),
                None,
            ));
            let result = self
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
        self.s3
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
                        .delete(built(
                            Delete::builder()
                                .table_name(&self.table)
                                .key("pk", s("versions"))
                                .key("sk", s(version_key(model, version)))
                                .condition_expression("attribute_exists(pk)")
                                .build(),
                        ))
                        .build(),
                ];
                // No plan may have changed since it was checked for this version.
                for (surface, revision) in &checks {
                    items.push(
                        TransactWriteItem::builder()
                            .condition_check(built(
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
                    "{model} {version} or a plan changed meanwhile; try again"
                ))
            },
        )
        .await
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
                        .put(built(head.build()))
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
