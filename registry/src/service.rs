//! The registry's rules, over any [`Store`]: what makes a version acceptable, what makes a plan valid, how changes
//! are made conditional and audited, and how tokens are issued and checked.

use std::collections::{BTreeMap, BTreeSet};

use edgerec_core::{
    Digest, IdError, MODEL_FILE, Manifest, ModelName, Surface, Version, load_tract_ranker,
};
use sha2::Digest as _;

use crate::signing::ManifestSigner;
use crate::store::{AuditDraft, Store, StoreError};
use edgerec_registry_api::keys::{KeyRotation, key_id};
use edgerec_registry_api::probe::ModelProbe;
use edgerec_registry_api::records::{
    IssuedToken, Plan, PlanRequest, PlanSignature, Revocation, RevokedVersion, Scope, TokenRecord,
    Variant, VersionRecord,
};
use edgerec_storage::now_ms;

/// Why a registry operation was refused. Each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegistryError {
    /// Malformed input: 400.
    #[error("{0}")]
    BadRequest(String),
    /// The uploaded bytes are not what their digest says: 400.
    #[error(
        "the upload's sha256 is {actual}, not the {claimed} it was sent as (truncated or corrupted upload?)"
    )]
    DigestMismatch { claimed: String, actual: String },
    /// A bundle or plan that is well-formed but unacceptable: 422.
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    NotFound(String),
    /// 409.
    #[error("{0}")]
    Conflict(String),
    /// A conditional update whose condition no longer holds: 412.
    #[error("{0}")]
    PreconditionFailed(String),
    /// An update of an existing plan sent without `If-Match`: 428.
    #[error("{0}")]
    PreconditionRequired(String),
    /// 413.
    #[error("the upload is {size} bytes; this registry accepts at most {limit}")]
    TooLarge { size: u64, limit: u64 },
    /// 401.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403.
    #[error("{0}")]
    Forbidden(String),
    /// 503.
    #[error("{0}")]
    Unavailable(String),
    /// The registry's disk is full: 507. Nothing was stored; the same request succeeds once space is freed.
    #[error("the registry's storage is full, nothing was stored; retry once space is freed ({0})")]
    InsufficientStorage(String),
    /// 500.
    #[error("{0}")]
    Internal(String),
}

impl RegistryError {
    /// A stable name for JSON error bodies.
    pub fn kind(&self) -> &'static str {
        match self {
            RegistryError::BadRequest(_) => "bad_request",
            RegistryError::DigestMismatch { .. } => "digest_mismatch",
            RegistryError::Unprocessable(_) => "invalid_bundle_or_plan",
            RegistryError::NotFound(_) => "not_found",
            RegistryError::Conflict(_) => "conflict",
            RegistryError::PreconditionFailed(_) => "precondition_failed",
            RegistryError::PreconditionRequired(_) => "precondition_required",
            RegistryError::TooLarge { .. } => "too_large",
            RegistryError::Unauthenticated(_) => "unauthenticated",
            RegistryError::Forbidden(_) => "forbidden",
            RegistryError::Unavailable(_) => "storage_unavailable",
            RegistryError::InsufficientStorage(_) => "insufficient_storage",
            RegistryError::Internal(_) => "internal",
        }
    }
}

impl From<StoreError> for RegistryError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => RegistryError::Conflict(m),
            StoreError::Referenced(m) => RegistryError::Conflict(m),
            StoreError::NotFound(m) => RegistryError::NotFound(m),
            StoreError::Unavailable(m) => RegistryError::Unavailable(m),
            StoreError::StorageFull(m) => RegistryError::InsufficientStorage(m),
            StoreError::Corrupt(m) => RegistryError::Internal(m),
        }
    }
}

/// Names of models, versions, surfaces, variants and tokens: core's one rule for names (1–128 of
/// `[A-Za-z0-9._-]`, not starting with a dot).
fn check_name(kind: &'static str, name: &str) -> Result<(), RegistryError> {
    edgerec_core::id::check_name(kind, name).map_err(bad_name)
}

fn bad_name(error: IdError) -> RegistryError {
    RegistryError::BadRequest(error.to_string())
}

/// A publish's outcome: the version, and whether this call created it (false: the identical manifest was already
/// published).
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub version: VersionRecord,
    pub created: bool,
}

/// The probe without bounds of its own: tract in this process (for tools and tests; `edgerec registry serve`
/// probes in the WASI ranker under wasmtime, with the limits of edge nodes).
#[derive(Debug, Default)]
pub struct InProcessProbe;

impl ModelProbe for InProcessProbe {
    fn probe(&self, manifest_json: &[u8], model: &[u8]) -> Result<(), String> {
        load_tract_ranker(manifest_json, model)
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// The registry: a store, a signing key, the upload limit (for one blob, and for a bundle's files together) and
/// the probe of published models.
#[derive(Debug)]
pub struct Registry<S> {
    pub store: S,
    pub signer: ManifestSigner,
    pub max_upload_bytes: u64,
    pub probe: std::sync::Arc<dyn ModelProbe>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut buffer);
    hex::encode(buffer)
}

impl<S: Store> Registry<S> {
    /// Stores an uploaded blob after checking its size and that it hashes to `claimed`.
    pub async fn upload_blob(&self, claimed: &str, bytes: &[u8]) -> Result<Digest, RegistryError> {
        let claimed_digest: Digest = claimed
            .strip_prefix("sha256:")
            .unwrap_or(claimed)
            .parse()
            .map_err(|e: edgerec_core::DigestParseError| {
                RegistryError::BadRequest(e.to_string())
            })?;
        if bytes.len() as u64 > self.max_upload_bytes {
            return Err(RegistryError::TooLarge {
                size: bytes.len() as u64,
                limit: self.max_upload_bytes,
            });
        }
        let actual = Digest::of(bytes);
        if actual != claimed_digest {
            return Err(RegistryError::DigestMismatch {
                claimed: claimed_digest.to_string(),
                actual: actual.to_string(),
            });
        }
        self.store.put_blob(&actual, bytes).await?;
        Ok(actual)
    }

    pub async fn blob(&self, digest: &str) -> Result<Vec<u8>, RegistryError> {
        let digest: Digest = digest
            .strip_prefix("sha256:")
            .unwrap_or(digest)
            .parse()
            .map_err(|e: edgerec_core::DigestParseError| {
                RegistryError::BadRequest(e.to_string())
            })?;
        self.store
            .get_blob(&digest)
            .await?
            .ok_or_else(|| RegistryError::NotFound(format!("no blob sha256:{digest}")))
    }

    /// Publishes the bundle whose `manifest.json` is `manifest_json` and whose files were uploaded as blobs. The
    /// manifest and every file are verified, the model is loaded with tract, checked against its feature
    /// specification and probed for finite scores before the version becomes visible. Publishing the identical
    /// manifest again returns the existing version.
    pub async fn publish(
        &self,
        model: &str,
        manifest_json: &[u8],
        actor: &str,
    ) -> Result<Published, RegistryError> {
        let model = ModelName::parse(model).map_err(bad_name)?;
        let manifest: Manifest = serde_json::from_slice(manifest_json).map_err(|e| {
            RegistryError::BadRequest(format!("manifest.json is not a valid manifest: {e}"))
        })?;
        if manifest.name != model {
            return Err(RegistryError::BadRequest(format!(
                "the manifest names model `{}`, but it was published as `{model}`",
                manifest.name
            )));
        }
        let version = Version::parse(manifest.version.as_str()).map_err(bad_name)?;
        let manifest_digest = Digest::of(manifest_json);
        if let Some(existing) = self.store.get_version(&model, &version).await? {
            return if existing.manifest_digest == manifest_digest {
                Ok(Published {
                    version: existing,
                    created: false,
                })
            } else {
                Err(RegistryError::Conflict(format!(
                    "{model} {} is already published with another manifest; versions are immutable",
                    manifest.version
                )))
            };
        }
        // The file list before any blob is read: safe names, each blob once, the total within the limit.
        manifest
            .check_files(manifest_json, self.max_upload_bytes)
            .map_err(|e| {
                RegistryError::Unprocessable(format!("the bundle does not verify: {e}"))
            })?;
        let mut files: Vec<(String, Vec<u8>)> = Vec::with_capacity(manifest.files.len());
        for (name, entry) in &manifest.files {
            let bytes = self.store.get_blob(&entry.sha256).await?.ok_or_else(|| {
                RegistryError::Unprocessable(format!(
                    "`{name}` (sha256:{}) has not been uploaded: PUT it to /v1/blobs/sha256:{} first",
                    entry.sha256, entry.sha256
                ))
            })?;
            // Each file is refused as soon as it is not what the manifest says, before the next is read.
            if bytes.len() as u64 != entry.size {
                return Err(RegistryError::Unprocessable(format!(
                    "the bundle does not verify: `{name}` is {} bytes but the manifest says {}",
                    bytes.len(),
                    entry.size
                )));
            }
            files.push((name.clone(), bytes));
        }
        let model_bytes = files
            .iter()
            .find(|(name, _)| name == MODEL_FILE)
            .map(|(_, bytes)| bytes.as_slice())
            .ok_or_else(|| {
                RegistryError::Unprocessable(format!("the manifest lists no `{MODEL_FILE}`"))
            })?;
        // Digests, sizes, vocabulary and specification; then the model itself, as an edge node would load it.
        let borrowed: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .collect();
        edgerec_core::Bundle::verify(manifest_json, &borrowed).map_err(|e| {
            RegistryError::Unprocessable(format!("the bundle does not verify: {e}"))
        })?;
        // On a blocking thread: the probe is CPU work, and the WASI ranker's host calls may block on a runtime.
        let probed = {
            let probe = self.probe.clone();
            let (manifest_json, model_bytes) = (manifest_json.to_vec(), model_bytes.to_vec());
            actix_web::rt::task::spawn_blocking(move || probe.probe(&manifest_json, &model_bytes))
                .await
        };
        probed
            .map_err(|e| RegistryError::Unprocessable(format!("the model probe failed: {e}")))?
            .map_err(|e| RegistryError::Unprocessable(format!("the model is not servable: {e}")))?;

        let record = VersionRecord {
            model: model.clone(),
            version,
            manifest_digest,
            files: manifest
                .files
                .iter()
                .map(|(name, entry)| (name.clone(), entry.sha256))
                .collect(),
            metrics: manifest.metrics.clone(),
            lineage: manifest.lineage.clone(),
            items: manifest.items.len(),
            published_by: actor.to_string(),
            published_at: now_ms(),
            signature: self.signer.sign(&manifest_digest),
        };
        // The manifest is stored as a blob too, so nodes fetch exactly the bytes that were signed.
        self.store.put_blob(&manifest_digest, manifest_json).await?;
        self.store
            .insert_version(
                &record,
                AuditDraft {
                    actor: actor.to_string(),
                    action: "version.publish",
                    target: format!("{model}/{}", manifest.version),
                    reason: String::new(),
                    detail: serde_json::json!({ "manifest_digest": manifest_digest.to_string() }),
                },
            )
            .await
            .map_err(|e| match e {
                // Lost a race with an identical publish: the earlier one stands.
                StoreError::Conflict(m) => RegistryError::Conflict(m),
                other => other.into(),
            })?;
        Ok(Published {
            version: record,
            created: true,
        })
    }

    /// The record of `model@version`, its manifest digest signed with the current key (a key rotation re-signs
    /// every version without rewriting it).
    pub async fn version(
        &self,
        model: &str,
        version: &str,
    ) -> Result<VersionRecord, RegistryError> {
        self.store
            .get_version(model, version)
            .await?
            .map(|record| self.signed_record(record))
            .ok_or_else(|| {
                RegistryError::NotFound(format!("no version {version} of model `{model}`"))
            })
    }

    /// `record` with its manifest digest signed by the current key, if its stored signature is this registry's
    /// (by any of its keys); else as stored, so that a record planted in the store without a key is refused by
    /// every verifier.
    pub fn signed_record(&self, mut record: VersionRecord) -> VersionRecord {
        if self.signer.made(&record.manifest_digest, &record.signature) {
            record.signature = self.signer.sign(&record.manifest_digest);
        }
        record
    }

    /// Follows a rotation another replica made: at most every 10 s the store's chain is compared with this
    /// registry's key and, when it has moved on, the new key is taken from the key file the replicas share. Until
    /// the file holds it, the retired key (valid for its grace) keeps signing, and the registry logs why.
    pub async fn follow_rotations(&self) {
        if !self.signer.due(std::time::Duration::from_secs(10)) {
            return;
        }
        let followed = match self.store.key_rotations().await {
            Ok(rotations) => self.signer.adopt(rotations).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = followed {
            crate::log_line(
                "keys",
                serde_json::json!({ "error": format!("cannot follow the key rotations: {error}") }),
            );
        }
    }

    /// Retires the signing key: a new one signs from now on, and the old one stays valid for verification for
    /// `grace_ms`, as the rotation statement it signs says. The statement joins the store's chain (which every
    /// replica reads at start) before the new key is used.
    pub async fn rotate_key(
        &self,
        grace_ms: i64,
        actor: &str,
    ) -> Result<KeyRotation, RegistryError> {
        let prepared = self
            .signer
            .prepare(grace_ms, now_ms())
            .map_err(|e| RegistryError::Internal(e.to_string()))?;
        let rotation = prepared.rotation.clone();
        let audit = AuditDraft {
            actor: actor.to_string(),
            action: "key.rotate",
            target: key_id(&rotation.to_key).unwrap_or_default(),
            reason: String::new(),
            detail: serde_json::json!({
                "from": key_id(&rotation.from_key), "to": key_id(&rotation.to_key),
                "old_valid_until": rotation.old_valid_until,
            }),
        };
        if let Err(e) = self.store.add_key_rotation(&rotation, audit).await {
            self.signer.abandon(prepared);
            return Err(e.into());
        }
        self.signer
            .complete(prepared)
            .map_err(|e| RegistryError::Internal(e.to_string()))?;
        Ok(rotation)
    }

    /// Every revoked or deleted version of the models `plan` names, in the order the signed statement lists them.
    pub async fn revoked_for(&self, plan: &Plan) -> Result<Vec<RevokedVersion>, RegistryError> {
        let models: BTreeSet<&str> = plan.variants.iter().map(|v| v.model.as_str()).collect();
        let mut revoked = Vec::new();
        for model in models {
            for revocation in self.store.revocations(Some(model)).await? {
                revoked.push(revocation.listed());
            }
        }
        revoked.sort();
        Ok(revoked)
    }

    /// `plan` signed for those who follow it, with the revocations of its models.
    pub async fn signed(&self, plan: Plan) -> Result<Plan, RegistryError> {
        let revoked = self.revoked_for(&plan).await?;
        self.sign(plan, revoked).await
    }

    /// `plan` signed with `revoked` ([`Registry::revoked_for`]): each variant's manifest digest (from its version
    /// record; a version a current plan names cannot be deleted) and the registry's signature over the revision's
    /// statement.
    pub async fn sign(
        &self,
        mut plan: Plan,
        revoked: Vec<RevokedVersion>,
    ) -> Result<Plan, RegistryError> {
        let mut manifest_digests = Vec::with_capacity(plan.variants.len());
        for variant in &plan.variants {
            let record = self
                .store
                .get_version(&variant.model, &variant.version)
                .await?
                .ok_or_else(|| {
                    RegistryError::Conflict(format!(
                        "the plan of `{}` names {}@{}, which this registry no longer holds",
                        plan.surface, variant.model, variant.version
                    ))
                })?;
            manifest_digests.push(record.manifest_digest);
        }
        let served_at = now_ms();
        let (key_id, signature) =
            self.signer
                .sign_statement(&plan.statement(&manifest_digests, &revoked, served_at));
        plan.signature = Some(PlanSignature {
            manifest_digests,
            revoked,
            key_id,
            served_at,
            signature,
        });
        Ok(plan)
    }

    /// Whether `model@version` is on the revocation list.
    async fn revocation(
        &self,
        model: &str,
        version: &str,
    ) -> Result<Option<Revocation>, RegistryError> {
        Ok(self
            .store
            .revocations(Some(model))
            .await?
            .into_iter()
            .find(|r| r.version == version))
    }

    /// Puts a published version on the revocation list, for good: nodes and browsers stop serving it at their next
    /// poll (its plans' variants send their traffic to the other variants, or to popularity), and no plan may name
    /// it again. Returns the revocation and each current plan that still names it.
    pub async fn revoke_version(
        &self,
        model: &str,
        version: &str,
        actor: &str,
        reason: &str,
    ) -> Result<(Revocation, Vec<(Plan, Variant)>), RegistryError> {
        let record = self.version(model, version).await?;
        let revocation = Revocation {
            model: record.model.clone(),
            version: record.version.clone(),
            manifest_digest: record.manifest_digest,
            cause: "revoked".into(),
            revoked_by: actor.to_string(),
            revoked_at: now_ms(),
            reason: reason.to_string(),
        };
        self.store
            .revoke_version(
                &revocation,
                AuditDraft {
                    actor: actor.to_string(),
                    action: "version.revoke",
                    target: format!("{model}/{version}"),
                    reason: reason.to_string(),
                    detail: serde_json::json!({ "manifest_digest": record.manifest_digest.to_string() }),
                },
            )
            .await?;
        let mut named = Vec::new();
        for plan in self.store.list_plans().await? {
            for variant in plan.variants.clone() {
                if variant.model == model && variant.version == version {
                    named.push((plan.clone(), variant));
                }
            }
        }
        Ok((revocation, named))
    }

    /// Every revocation, by model then version.
    pub async fn revocations(&self) -> Result<Vec<Revocation>, RegistryError> {
        Ok(self.store.revocations(None).await?)
    }

    /// Removes a version no current plan names and puts it on the revocation list (unless it is there already).
    pub async fn delete_version(
        &self,
        model: &str,
        version: &str,
        actor: &str,
        reason: &str,
    ) -> Result<(), RegistryError> {
        let record = self.version(model, version).await?;
        let revocation = match self.revocation(model, version).await? {
            Some(_) => None,
            None => Some(Revocation {
                model: record.model.clone(),
                version: record.version.clone(),
                manifest_digest: record.manifest_digest,
                cause: "deleted".into(),
                revoked_by: actor.to_string(),
                revoked_at: now_ms(),
                reason: reason.to_string(),
            }),
        };
        self.store
            .delete_version(
                model,
                version,
                revocation.as_ref(),
                AuditDraft {
                    actor: actor.to_string(),
                    action: "version.delete",
                    target: format!("{model}/{version}"),
                    reason: reason.to_string(),
                    detail: serde_json::json!({ "manifest_digest": record.manifest_digest.to_string() }),
                },
            )
            .await
            .map_err(Into::into)
    }

    async fn check_variants(&self, variants: &[Variant]) -> Result<(), RegistryError> {
        if variants.is_empty() {
            return Err(RegistryError::Unprocessable(
                "a plan needs at least one variant".into(),
            ));
        }
        let mut names = BTreeSet::new();
        for variant in variants {
            if !names.insert(variant.name.as_str()) {
                return Err(RegistryError::Unprocessable(format!(
                    "variant `{}` appears twice",
                    variant.name
                )));
            }
            if self
                .store
                .get_version(&variant.model, &variant.version)
                .await?
                .is_none()
            {
                return Err(RegistryError::Unprocessable(format!(
                    "variant `{}` names {} {}, which is not published",
                    variant.name, variant.model, variant.version
                )));
            }
            if let Some(revoked) = self.revocation(&variant.model, &variant.version).await? {
                return Err(RegistryError::Unprocessable(format!(
                    "variant `{}` names {} {}, which was {} ({}); publish a new version",
                    variant.name, variant.model, variant.version, revoked.cause, revoked.reason
                )));
            }
        }
        let total: u64 = variants.iter().map(|v| u64::from(v.weight)).sum();
        if total != 100 {
            return Err(RegistryError::Unprocessable(format!(
                "variant weights sum to {total}%, not 100%"
            )));
        }
        Ok(())
    }

    /// Replaces the plan of `surface`. `if_match` is the revision the caller read (required once a plan exists).
    pub async fn deploy(
        &self,
        surface: &str,
        request: PlanRequest,
        if_match: Option<u64>,
        actor: &str,
    ) -> Result<Plan, RegistryError> {
        let surface = Surface::parse(surface).map_err(bad_name)?;
        self.check_variants(&request.variants).await?;
        let current = self.store.get_plan(&surface).await?;
        let revision = self.expect_revision(&surface, current.as_ref(), if_match)?;
        let plan = Plan {
            surface: surface.clone(),
            revision: revision + 1,
            variants: request.variants,
            salt: request
                .salt
                .or_else(|| current.as_ref().map(|p| p.salt.clone()))
                .unwrap_or_else(|| random_hex(8)),
            updated_by: actor.to_string(),
            updated_at: now_ms(),
            reason: request.reason,
            signature: None,
        };
        self.write_plan(&plan, "plan.update").await?;
        Ok(plan)
    }

    /// Restores the plan that preceded the current one of `surface`, as a new revision.
    pub async fn rollback(
        &self,
        surface: &str,
        reason: &str,
        if_match: Option<u64>,
        actor: &str,
    ) -> Result<Plan, RegistryError> {
        let history = self.store.plan_history(surface).await?;
        let Some(current) = history.last() else {
            return Err(RegistryError::NotFound(format!(
                "surface `{surface}` has no plan"
            )));
        };
        let revision = if_match.unwrap_or(current.revision);
        if revision != current.revision {
            return Err(self.stale(surface, current.revision, revision));
        }
        let Some(previous) = history.iter().rev().nth(1) else {
            return Err(RegistryError::Conflict(format!(
                "surface `{surface}` has only one plan revision: there is nothing to roll back to"
            )));
        };
        self.check_variants(&previous.variants).await?;
        let plan = Plan {
            revision: current.revision + 1,
            updated_by: actor.to_string(),
            updated_at: now_ms(),
            reason: reason.to_string(),
            signature: None,
            ..previous.clone()
        };
        self.write_plan(&plan, "plan.rollback").await?;
        Ok(plan)
    }

    fn stale(&self, surface: &str, current: u64, expected: u64) -> RegistryError {
        RegistryError::PreconditionFailed(format!(
            "the plan of `{surface}` is at revision {current}, not {expected}: read it again and retry"
        ))
    }

    fn expect_revision(
        &self,
        surface: &str,
        current: Option<&Plan>,
        if_match: Option<u64>,
    ) -> Result<u64, RegistryError> {
        let revision = current.map_or(0, |p| p.revision);
        match if_match {
            Some(expected) if expected != revision => Err(self.stale(surface, revision, expected)),
            Some(_) => Ok(revision),
            None if current.is_some() => Err(RegistryError::PreconditionRequired(format!(
                "surface `{surface}` has a plan: send If-Match with the revision you read (\"{revision}\")"
            ))),
            None => Ok(0),
        }
    }

    async fn write_plan(&self, plan: &Plan, action: &'static str) -> Result<(), RegistryError> {
        let audit = AuditDraft {
            actor: plan.updated_by.clone(),
            action,
            target: plan.surface.to_string(),
            reason: plan.reason.clone(),
            detail: serde_json::json!({ "revision": plan.revision, "variants": plan.variants, "salt": plan.salt }),
        };
        self.store.put_plan(plan, audit).await.map_err(|e| match e {
            StoreError::Conflict(m) => RegistryError::PreconditionFailed(format!(
                "{m}: another update landed first; read the plan again and retry"
            )),
            other => other.into(),
        })
    }

    /// Issues a token; the secret is returned once.
    pub async fn create_token(
        &self,
        name: &str,
        scopes: Vec<Scope>,
        actor: &str,
    ) -> Result<IssuedToken, RegistryError> {
        check_name("token name", name)?;
        if scopes.is_empty() {
            return Err(RegistryError::BadRequest(
                "a token needs at least one scope".into(),
            ));
        }
        let secret = format!("erk_{}", random_hex(24));
        let token = TokenRecord {
            id: format!("tok_{}", random_hex(6)),
            name: name.to_string(),
            scopes: scopes
                .into_iter()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            secret_sha256: sha256_hex(secret.as_bytes()),
            created_at: now_ms(),
            revoked: false,
        };
        let audit = AuditDraft {
            actor: actor.to_string(),
            action: "token.create",
            target: token.id.clone(),
            reason: String::new(),
            detail: serde_json::json!({ "name": token.name, "scopes": token.scopes }),
        };
        self.store.put_token(&token, audit).await?;
        Ok(IssuedToken { secret, token })
    }

    pub async fn revoke_token(&self, id: &str, actor: &str) -> Result<(), RegistryError> {
        let audit = AuditDraft {
            actor: actor.to_string(),
            action: "token.revoke",
            target: id.to_string(),
            reason: String::new(),
            detail: serde_json::Value::Null,
        };
        self.store.revoke_token(id, audit).await.map_err(Into::into)
    }

    /// The token a bearer secret belongs to, if it allows `scope`.
    pub async fn authorize(
        &self,
        secret: Option<&str>,
        scope: Scope,
    ) -> Result<TokenRecord, RegistryError> {
        let secret = secret.ok_or_else(|| {
            RegistryError::Unauthenticated("send `Authorization: Bearer <token>`".into())
        })?;
        let token = self
            .store
            .token_by_secret_hash(&sha256_hex(secret.as_bytes()))
            .await?
            .filter(|t| !t.revoked)
            .ok_or_else(|| RegistryError::Unauthenticated("unknown or revoked token".into()))?;
        if token.allows(scope) {
            Ok(token)
        } else {
            Err(RegistryError::Forbidden(format!(
                "token `{}` lacks the `{}` scope",
                token.name,
                scope.name()
            )))
        }
    }
}

/// Summary of a model's versions for listings.
pub fn group_by_model(records: Vec<VersionRecord>) -> BTreeMap<String, Vec<VersionRecord>> {
    let mut models: BTreeMap<String, Vec<VersionRecord>> = BTreeMap::new();
    for record in records {
        models
            .entry(record.model.to_string())
            .or_default()
            .push(record);
    }
    models
}
