//! The registry follower: polls each surface's plan, fetches and verifies the bundles it names, loads and warms
//! them, and swaps the surface to the new deployment in one step. Any failure leaves the serving deployment in
//! place. Verified bundles and the last deployment are kept on disk, so a restarted node serves at once, even
//! while the registry is unreachable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use edgerec_core::ab;
use edgerec_core::{Digest, MODEL_FILE, Surface};
use edgerec_registry_api::client::{PlanRead, RegistryClient};
use edgerec_registry_api::keys::TrustedKeys;
use edgerec_registry_api::records::{Plan, PlanTag, Variant, VersionRecord};
use edgerec_registry_api::signature::{verify_manifest_signature, verify_plan_signature};
use serde::{Deserialize, Serialize};

use crate::config::NodeConfig;
use crate::deployment::{Deployment, Deployments, ServingVariant};
use crate::host::RankerEngine;
use crate::metrics::NodeMetrics;
use crate::model::{LoadedModel, ModelFiles, PoolSettings, RolloutError};
use crate::plan_health::PlanHealth;
use crate::registry_keys::RegistryKeys;

/// Longest a registry call may take (a bundle download included), so that a registry that stops answering cannot
/// hold the follower, or the node's shutdown, for long.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest pause before a failed roll-out that is worth retrying is tried again.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(300);

/// Checks that `plan` verifies against `key` and is not older than `highest`, the highest tag (revision, then
/// revocations) verified so far, which it then becomes.
fn check_signed(
    keys: &TrustedKeys,
    plan: &Plan,
    highest: &mut PlanTag,
) -> Result<(), RolloutError> {
    verify_plan_signature(keys, plan, edgerec_features::now_ms()).map_err(|e| {
        RolloutError::PlanSignature {
            surface: plan.surface.to_string(),
            revision: plan.revision,
            message: e.to_string(),
        }
    })?;
    if plan.tag() < *highest {
        return Err(RolloutError::Replayed {
            surface: plan.surface.to_string(),
            tag: plan.tag(),
            highest: *highest,
        });
    }
    *highest = plan.tag();
    Ok(())
}

/// A surface's plan and the files of its variants, fetched from the registry and verified as a node verifies them
/// before serving, for tools that package a deployment (`edgerec worker build`): the plan's signature by `keys`,
/// its weights, and for each variant its record (the one asked for, of the manifest the signature names, signed,
/// naming what its manifest names) and files (matching the record's digests). A variant the signed plan lists as
/// revoked is not fetched: its entry is `None`.
pub fn fetch_verified_deployment(
    client: &RegistryClient,
    keys: &TrustedKeys,
    surface: &Surface,
) -> Result<(Plan, Vec<Option<ModelFiles>>), RolloutError> {
    let plan = client
        .plan(surface.as_str())?
        .ok_or_else(|| RolloutError::Plan {
            surface: surface.to_string(),
            message: "the registry has no plan for it".into(),
        })?;
    check_signed(keys, &plan, &mut PlanTag::default())?;
    check_plan(&plan, std::slice::from_ref(surface))?;
    let signed_digests = plan
        .signature
        .as_ref()
        .map(|s| s.manifest_digests.clone())
        .unwrap_or_default();
    let mut files = Vec::with_capacity(plan.variants.len());
    for (variant, signed_digest) in plan.variants.iter().zip(signed_digests) {
        if plan.revocation_of(variant, &signed_digest).is_some() {
            files.push(None);
            continue;
        }
        let record = client.version(&variant.model, &variant.version)?;
        check_labels(&plan, variant, &record)?;
        check_signed_digest(&plan, variant, &record, &signed_digest)?;
        let model_digest = record.files.get(MODEL_FILE).ok_or_else(|| {
            RolloutError::NoModelFile(format!("{}@{}", record.model, record.version))
        })?;
        let variant_files = ModelFiles {
            manifest: client.blob(&record.manifest_digest)?.into(),
            model: client.blob(model_digest)?.into(),
            record,
        };
        variant_files.check_digests()?;
        variant_files.check_signature(keys)?;
        variant_files.check_binding()?;
        files.push(Some(variant_files));
    }
    Ok((plan, files))
}

/// The record of `variant` must be of the manifest the plan's signature names for it.
fn check_signed_digest(
    plan: &Plan,
    variant: &Variant,
    record: &VersionRecord,
    signed: &Digest,
) -> Result<(), RolloutError> {
    if record.manifest_digest == *signed {
        return Ok(());
    }
    Err(RolloutError::Relabelled {
        version: format!("{}@{}", variant.model, variant.version),
        named_by: format!("the signed plan of `{}`", plan.surface),
        named: format!("manifest {signed}"),
        bound_by: "the record".into(),
        bound: format!("manifest {}", record.manifest_digest),
    })
}

/// The record asked for `variant` must be the one it names: an answer for another version is a relabelling.
fn check_labels(
    plan: &Plan,
    variant: &Variant,
    record: &VersionRecord,
) -> Result<(), RolloutError> {
    if record.model == variant.model && record.version == variant.version {
        return Ok(());
    }
    Err(RolloutError::Relabelled {
        version: format!("{}@{}", variant.model, variant.version),
        named_by: format!("the plan of `{}`", plan.surface),
        named: format!("{}@{}", variant.model, variant.version),
        bound_by: "the record the registry answered".into(),
        bound: format!("{}@{}", record.model, record.version),
    })
}

/// Refuses a plan the node cannot serve as it is meant: another surface's, without variants, or with weights that
/// leave users unassigned (the registry validates the plans it signs; this holds whatever arrives).
fn check_plan(plan: &Plan, surfaces: &[Surface]) -> Result<(), RolloutError> {
    let refuse = |message: String| {
        Err(RolloutError::Plan {
            surface: plan.surface.to_string(),
            message,
        })
    };
    if !surfaces.contains(&plan.surface) {
        return refuse("this node does not serve that surface".into());
    }
    if plan.variants.is_empty() {
        return refuse("the plan has no variants".into());
    }
    // In u64: the weights arrive from the network, and u32 would overflow.
    let total: u64 = plan.variants.iter().map(|v| u64::from(v.weight)).sum();
    if total != u64::from(ab::BUCKETS) {
        return refuse(format!(
            "the variants' weights sum to {total}, not {}",
            ab::BUCKETS
        ));
    }
    Ok(())
}

/// What is kept of a surface's deployment across restarts.
#[derive(Debug, Serialize, Deserialize)]
struct SavedDeployment {
    plan: Plan,
    records: Vec<VersionRecord>,
}

/// Where the records come from during a roll-out.
enum Source<'a> {
    Registry,
    Saved(&'a [VersionRecord]),
}

pub struct Follower {
    client: RegistryClient,
    keys: RegistryKeys,
    surfaces: Vec<Surface>,
    dir: PathBuf,
    poll_interval: Duration,
    engine: Arc<RankerEngine>,
    deployments: Arc<Deployments>,
    metrics: NodeMetrics,
    pool: PoolSettings,
    /// The plan (revision and revocations) of each surface whose roll-out failed for good (a model that does not
    /// load): not retried until the plan changes again.
    refused: HashMap<String, PlanTag>,
    /// Plans whose roll-out failed in a way worth retrying (a load that ran out of time): the revision, the
    /// failures so far and when to try again (doubling from the poll interval, at most [`MAX_RETRY_WAIT`]).
    retry: HashMap<String, (PlanTag, u32, Instant)>,
    /// Surfaces whose registry error was already logged (logged again only after a success).
    unreachable: HashMap<String, String>,
    /// When each surface's plan was last confirmed with the registry.
    plan_health: Arc<PlanHealth>,
    /// The highest plan tag of each surface whose signature verified: a lower revision, or the same with fewer
    /// revocations, is a replay and refused (a rollback is a new, higher revision). After a restart it starts from
    /// the saved plan's.
    highest_revision: HashMap<String, PlanTag>,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("surfaces", &self.surfaces)
            .finish_non_exhaustive()
    }
}

impl Follower {
    pub fn new(
        config: &NodeConfig,
        engine: Arc<RankerEngine>,
        deployments: Arc<Deployments>,
        metrics: NodeMetrics,
        plan_health: Arc<PlanHealth>,
    ) -> Self {
        Self {
            client: RegistryClient::with_timeout(
                &config.registry.url,
                config.registry.token.as_deref(),
                REGISTRY_TIMEOUT,
            ),
            keys: RegistryKeys::new(
                config.registry.public_key.clone(),
                config.models_dir(),
                deployments.clone(),
            ),
            surfaces: config.surfaces.clone(),
            dir: config.models_dir(),
            poll_interval: Duration::from_millis(config.registry.poll_interval_ms),
            engine,
            deployments,
            metrics,
            pool: config.pool_settings(),
            refused: HashMap::new(),
            highest_revision: HashMap::new(),
            plan_health,
            retry: HashMap::new(),
            unreachable: HashMap::new(),
        }
    }

    /// Restores the saved deployments, then polls until `stop` is signalled or dropped.
    pub fn run(mut self, stop: Receiver<()>) {
        self.restore();
        loop {
            for surface in self.surfaces.clone() {
                self.poll(&surface);
            }
            match stop.recv_timeout(self.poll_interval) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return,
            }
        }
    }

    fn restore(&mut self) {
        for surface in self.surfaces.clone() {
            let path = self.saved_path(&surface);
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let saved: SavedDeployment = match serde_json::from_slice(&bytes) {
                Ok(saved) => saved,
                Err(e) => {
                    crate::log_line(
                        "follower",
                        serde_json::json!({"surface": surface, "error": format!("ignoring {}: {e}", path.display())}),
                    );
                    continue;
                }
            };
            let Some(keys) = self.keys.trusted(&self.client) else {
                return;
            };
            match self.roll_out(&keys, &saved.plan, Source::Saved(&saved.records)) {
                Ok(()) => crate::log_line(
                    "follower",
                    serde_json::json!({"surface": surface, "restored_revision": saved.plan.revision}),
                ),
                Err(e) => {
                    self.failed(&surface, saved.plan.tag(), &e);
                    // What this node saved is refused, not the registry's plan: the same revision from the
                    // registry (signed, where an older node saved it unsigned) is still taken, at once.
                    self.refused.remove(surface.as_str());
                    self.retry.remove(surface.as_str());
                }
            }
        }
    }

    fn poll(&mut self, surface: &str) {
        if self.keys.trusted(&self.client).is_none() {
            return;
        }
        let serving = self.deployments.get(surface);
        // Conditional while the plan in service is fresh; once due, a freshly signed answer (a 304 is unsigned, so
        // it confirms nothing).
        let known_etag = match &serving {
            Some(d) if !self.plan_health.needs_refresh(surface, Instant::now()) => d.plan.etag(),
            _ => String::new(),
        };
        let serving_revision = serving.as_ref().map_or(0, |d| d.plan.revision);
        let Some(plan) = self.read_plan(surface, &known_etag, serving_revision) else {
            return;
        };
        if self.refused.get(surface) == Some(&plan.tag()) {
            return;
        }
        if let Some(&(tag, _, at)) = self.retry.get(surface)
            && tag == plan.tag()
            && Instant::now() < at
        {
            return;
        }
        if plan.surface != surface {
            let error = RolloutError::Plan {
                surface: surface.to_string(),
                message: format!("the registry answered with the plan of `{}`", plan.surface),
            };
            self.failed(surface, plan.tag(), &error);
            return;
        }
        // A plan signed by a key this node does not accept yet: the registry's rotations are read again first.
        let signed_by = plan.signature.as_ref().map(|s| s.key_id.clone());
        if let Some(id) = signed_by {
            self.keys
                .accepts(&self.client, &id, edgerec_features::now_ms());
        }
        let Some(keys) = self.keys.trusted(&self.client) else {
            return;
        };
        // The plan in service, signed again: only its freshness is news.
        let outcome = if serving.is_some_and(|d| d.plan.etag() == plan.etag()) {
            self.check_signed(&keys, &plan)
        } else {
            self.roll_out(&keys, &plan, Source::Registry)
        };
        match outcome {
            Ok(()) => {
                self.retry.remove(surface);
                let served_at = plan.signature.as_ref().map_or(0, |s| s.served_at);
                self.plan_health
                    .confirm(surface, served_at, edgerec_features::now_ms());
            }
            Err(e) => self.failed(surface, plan.tag(), &e),
        }
    }

    /// The registry's plan of `surface` unless it is still `known_etag` (or there is none, or the registry cannot
    /// be reached: logged once per distinct error and counted).
    fn read_plan(
        &mut self,
        surface: &str,
        known_etag: &str,
        serving_revision: u64,
    ) -> Option<Plan> {
        match self.client.plan_if_changed(surface, known_etag) {
            Ok(PlanRead::Changed(plan)) => {
                self.unreachable.remove(surface);
                Some(*plan)
            }
            Ok(PlanRead::Unchanged) => {
                self.unreachable.remove(surface);
                None
            }
            Err(e) if e.status() == Some(404) => {
                self.unreachable.remove(surface);
                None
            }
            Err(e) => {
                let message = e.to_string();
                if self.unreachable.get(surface) != Some(&message) {
                    crate::log_line(
                        "follower",
                        serde_json::json!({"surface": surface, "error": message, "serving_revision": serving_revision}),
                    );
                    self.unreachable.insert(surface.to_string(), message);
                }
                self.metrics.errors.with_label_values(&["registry"]).inc();
                None
            }
        }
    }

    fn failed(&mut self, surface: &str, tag: PlanTag, error: &RolloutError) {
        if matches!(error, RolloutError::PlanSignature { .. }) {
            self.plan_health
                .untrusted(surface, tag.revision, error.to_string());
        }
        self.metrics
            .rollout_failures
            .with_label_values(&[surface, error.reason()])
            .inc();
        let serving = self.deployments.get(surface).map(|d| d.plan.revision);
        crate::log_line(
            "follower",
            serde_json::json!({
                "surface": surface,
                "refused_revision": tag.revision,
                "refused_revocations": tag.revocations,
                "reason": error.reason(),
                "error": error.to_string(),
                "serving_revision": serving,
            }),
        );
        if error.is_permanent() {
            self.refused.insert(surface.to_string(), tag);
        } else {
            let failures = match self.retry.get(surface) {
                Some(&(t, failures, _)) if t == tag => failures + 1,
                _ => 1,
            };
            let wait = self
                .poll_interval
                .saturating_mul(1 << failures.min(16))
                .min(MAX_RETRY_WAIT);
            self.retry
                .insert(surface.to_string(), (tag, failures, Instant::now() + wait));
        }
    }

    /// Checks that `plan` is what the registry signed and no older than a revision already verified here.
    fn check_signed(&mut self, keys: &TrustedKeys, plan: &Plan) -> Result<(), RolloutError> {
        let highest = self
            .highest_revision
            .entry(plan.surface.to_string())
            .or_default();
        check_signed(keys, plan, highest)
    }

    fn roll_out(
        &mut self,
        keys: &TrustedKeys,
        plan: &Plan,
        source: Source,
    ) -> Result<(), RolloutError> {
        let started = Instant::now();
        self.check_signed(keys, plan)?;
        check_plan(plan, &self.surfaces)?;
        let mut variants = Vec::with_capacity(plan.variants.len());
        let mut revoked = Vec::new();
        let mut records = Vec::with_capacity(plan.variants.len());
        // Verified above: one signed manifest digest a variant.
        let signed_digests = plan
            .signature
            .as_ref()
            .map(|s| s.manifest_digests.clone())
            .unwrap_or_default();
        for (variant, signed_digest) in plan.variants.iter().zip(signed_digests) {
            // Listed as revoked by the plan's own signature: nothing of it is fetched, loaded or served.
            if plan.revocation_of(variant, &signed_digest).is_some() {
                revoked.push(variant.clone());
                continue;
            }
            let model = self.model_for(keys, plan, variant, signed_digest, &source)?;
            records.push(model.files.record.clone());
            variants.push(ServingVariant {
                name: variant.name.clone(),
                weight: variant.weight,
                model,
            });
        }
        let deployment = Deployment {
            plan: plan.clone(),
            variants,
            revoked,
            since_ms: edgerec_features::now_ms(),
        };
        let status = deployment.describe();
        let previous = self.deployments.install(deployment);
        self.metrics
            .swaps
            .with_label_values(&[plan.surface.as_str()])
            .inc();
        self.metrics
            .plan_revision
            .with_label_values(&[plan.surface.as_str()])
            .set(plan.revision as i64);
        self.metrics
            .revoked_variants
            .with_label_values(&[plan.surface.as_str()])
            .set(status.revoked.len() as i64);
        self.refused.remove(plan.surface.as_str());
        crate::log_line(
            "follower",
            serde_json::json!({
                "surface": plan.surface,
                "serving_revision": plan.revision,
                "previous_revision": previous.map(|p| p.plan.revision),
                "variants": status.variants,
                "revoked_variants": status.revoked,
                "rollout_ms": started.elapsed().as_millis() as u64,
            }),
        );
        // Serving goes on if this fails; only a restart without the registry would miss it.
        if let Err(e) = self.save(&SavedDeployment {
            plan: plan.clone(),
            records,
        }) {
            crate::log_line("follower", serde_json::json!({"warning": e.to_string()}));
        }
        Ok(())
    }

    /// The loaded model of `variant`, whose manifest the plan signed as `signed_digest`: the one another surface
    /// already serves, else its record (the registry's, or the one saved at the last roll-out) checked against the
    /// plan and its files against the record, loaded, warmed and kept on disk.
    fn model_for(
        &self,
        keys: &TrustedKeys,
        plan: &Plan,
        variant: &Variant,
        signed_digest: Digest,
        source: &Source,
    ) -> Result<Arc<LoadedModel>, RolloutError> {
        // Reused as it is while its record is signed by the current key: after a key rotation the record is read
        // again (re-signed by the registry), so what this node relays to browsers verifies after the old key's
        // grace.
        let current = &keys.current().public_key;
        let loaded = self
            .deployments
            .loaded(&variant.model, &variant.version)
            .filter(|model| {
                let record = &model.files.record;
                record.manifest_digest == signed_digest
                    && verify_manifest_signature(current, &signed_digest, &record.signature).is_ok()
            });
        if let Some(model) = loaded {
            return Ok(model);
        }
        let record = match source {
            Source::Registry => {
                let record = self.client.version(&variant.model, &variant.version)?;
                check_labels(plan, variant, &record)?;
                record
            }
            Source::Saved(saved) => saved
                .iter()
                .find(|r| r.model == variant.model && r.version == variant.version)
                .cloned()
                .ok_or_else(|| RolloutError::Io {
                    path: self.saved_path(&plan.surface).display().to_string(),
                    message: format!("no saved record of {}@{}", variant.model, variant.version),
                })?,
        };
        check_signed_digest(plan, variant, &record, &signed_digest)?;
        let files = self.files(record, matches!(source, Source::Registry))?;
        files.check_signature(keys)?;
        files.check_binding()?;
        let loaded = LoadedModel::load(self.engine.clone(), files, &self.pool)?;
        let (limit, used) = loaded.memory();
        crate::log_line(
            "follower",
            serde_json::json!({
                "loaded": format!("{}@{}", variant.model, variant.version),
                "instance_memory_bytes": used,
                "instance_memory_limit_bytes": limit,
            }),
        );
        if let Err(e) = self.keep(&loaded.files) {
            crate::log_line("follower", serde_json::json!({"warning": e.to_string()}));
        }
        Ok(Arc::new(loaded))
    }

    /// The files of `record`, checked against its digests: this node's copies when they still match, else the
    /// registry's (a damaged copy is removed, so the fresh download replaces it).
    fn files(&self, record: VersionRecord, online: bool) -> Result<ModelFiles, RolloutError> {
        let dir = self.bundle_dir(&record);
        let local = std::fs::read(dir.join("manifest.json"))
            .and_then(|m| Ok((m, std::fs::read(dir.join(MODEL_FILE))?)))
            .map_err(|e| e.to_string())
            .and_then(|(manifest, model)| {
                let files = ModelFiles {
                    record: record.clone(),
                    manifest: manifest.into(),
                    model: model.into(),
                };
                files.check_digests().map(|()| files).map_err(|e| {
                    let _ = std::fs::remove_dir_all(&dir);
                    format!("{e}; the local copy was removed")
                })
            });
        match local {
            Ok(files) => Ok(files),
            Err(_) if online => {
                let model_digest = record.files.get(MODEL_FILE).ok_or_else(|| {
                    RolloutError::NoModelFile(format!("{}@{}", record.model, record.version))
                })?;
                let files = ModelFiles {
                    manifest: self.client.blob(&record.manifest_digest)?.into(),
                    model: self.client.blob(model_digest)?.into(),
                    record,
                };
                files.check_digests()?;
                Ok(files)
            }
            Err(message) => Err(RolloutError::Io {
                path: dir.display().to_string(),
                message,
            }),
        }
    }

    fn bundle_dir(&self, record: &VersionRecord) -> PathBuf {
        self.dir
            .join("models")
            .join(record.manifest_digest.to_string())
    }

    fn saved_path(&self, surface: &str) -> PathBuf {
        self.dir.join("deployments").join(format!("{surface}.json"))
    }

    /// Keeps verified files, written to a temporary folder first so that a crash never leaves a partial bundle.
    fn keep(&self, files: &ModelFiles) -> Result<(), RolloutError> {
        let dir = self.bundle_dir(&files.record);
        if dir.join(MODEL_FILE).is_file() {
            return Ok(());
        }
        let partial = dir.with_extension(format!("partial-{}", std::process::id()));
        let io = |path: &Path, e: std::io::Error| RolloutError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(&partial).map_err(|e| io(&partial, e))?;
        for (name, bytes) in [
            ("manifest.json", &files.manifest[..]),
            (MODEL_FILE, &files.model[..]),
        ] {
            std::fs::write(partial.join(name), bytes).map_err(|e| io(&partial, e))?;
        }
        std::fs::rename(&partial, &dir).map_err(|e| io(&dir, e))
    }

    fn save(&self, saved: &SavedDeployment) -> Result<(), RolloutError> {
        let path = self.saved_path(&saved.plan.surface);
        let io = |e: std::io::Error| RolloutError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let partial = path.with_extension("json.partial");
        let bytes = serde_json::to_vec_pretty(saved).expect("records serialise");
        std::fs::write(&partial, bytes).map_err(io)?;
        std::fs::rename(&partial, &path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey};
    use edgerec_core::{Digest, ModelName, Surface, VariantName, Version};
    use edgerec_registry_api::records::{
        Plan, PlanSignature, PlanTag, RevokedVersion, Variant, VersionRecord,
    };

    use super::{TrustedKeys, check_labels, check_signed};
    use crate::model::RolloutError;

    fn record(model: &str, version: &str) -> VersionRecord {
        crate::model::tests::golden_files(model, version).record
    }

    #[test]
    fn a_record_answered_for_another_version_is_refused() {
        let variant = Variant {
            name: VariantName::parse("control").expect("a variant"),
            model: ModelName::parse("m").expect("a name"),
            version: Version::parse("2").expect("a version"),
            weight: 100,
        };
        let plan = Plan {
            surface: Surface::parse("home").expect("a surface"),
            revision: 3,
            variants: vec![variant.clone()],
            salt: "s".into(),
            updated_by: "test".into(),
            updated_at: 0,
            reason: String::new(),
            signature: None,
        };
        check_labels(&plan, &variant, &record("m", "2")).expect("the record asked for");
        for (model, version) in [("m", "1"), ("n", "2")] {
            let refused = check_labels(&plan, &variant, &record(model, version))
                .expect_err("another version");
            assert!(
                matches!(refused, RolloutError::Relabelled { .. }),
                "{refused}"
            );
            assert_eq!(
                refused.to_string(),
                format!(
                    "m@2: the plan of `home` names m@2, but the record the registry answered names \
                     {model}@{version}"
                )
            );
        }
    }

    fn signed_plan(revision: u64, key: &SigningKey) -> Plan {
        signed_plan_revoking(revision, &[], key)
    }

    fn signed_plan_revoking(revision: u64, revoked: &[&str], key: &SigningKey) -> Plan {
        let mut plan = Plan {
            surface: Surface::parse("home").expect("a surface"),
            revision,
            variants: vec![Variant {
                name: VariantName::parse("control").expect("a variant"),
                model: ModelName::parse("m").expect("a name"),
                version: Version::parse("1").expect("a version"),
                weight: 100,
            }],
            salt: "s".into(),
            updated_by: "test".into(),
            updated_at: 0,
            reason: String::new(),
            signature: None,
        };
        let manifest_digests = vec![Digest::of(b"manifest")];
        let revoked: Vec<RevokedVersion> = revoked
            .iter()
            .map(|version| RevokedVersion {
                model: ModelName::parse("m").expect("a name"),
                version: Version::parse(*version).expect("a version"),
                manifest_digest: Digest::of(version.as_bytes()),
            })
            .collect();
        let statement = plan.statement(&manifest_digests, &revoked, 0);
        plan.signature = Some(PlanSignature {
            manifest_digests,
            revoked,
            key_id: String::new(),
            served_at: 0,
            signature: hex::encode(key.sign(statement.as_bytes()).to_bytes()),
        });
        plan
    }

    #[test]
    fn only_signed_plans_no_older_than_the_last_verified_pass() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let public =
            TrustedKeys::single(&hex::encode(key.verifying_key().to_bytes())).expect("a key");
        let tag = |revision, revocations| PlanTag {
            revision,
            revocations,
        };
        let mut highest = PlanTag::default();
        check_signed(&public, &signed_plan(5, &key), &mut highest).expect("signed");
        assert_eq!(highest, tag(5, 0));
        // The same revision again (a restart restores it) passes; an older one is a replay.
        check_signed(&public, &signed_plan(5, &key), &mut highest).expect("the same revision");
        let replayed = check_signed(&public, &signed_plan(4, &key), &mut highest)
            .expect_err("an older revision");
        assert!(
            matches!(replayed, RolloutError::Replayed { tag: PlanTag { revision: 4, .. }, highest, .. }
                if highest == tag(5, 0)),
            "{replayed}"
        );
        assert_eq!(replayed.reason(), "replayed");
        assert!(
            !replayed.is_permanent(),
            "retried: the next answer may be the real plan"
        );
        // Unsigned, altered, or signed by another key: refused, and the highest revision stays.
        let mut unsigned = signed_plan(6, &key);
        unsigned.signature = None;
        let mut altered = signed_plan(6, &key);
        altered.variants[0].weight = 50;
        let foreign = signed_plan(6, &SigningKey::from_bytes(&[4; 32]));
        for (plan, says) in [
            (unsigned, "carries no signature"),
            (altered, "does not verify"),
            (foreign, "does not verify"),
        ] {
            let refused = check_signed(&public, &plan, &mut highest).expect_err("refused");
            assert_eq!(refused.reason(), "plan_signature");
            assert!(refused.to_string().contains(says), "{refused}");
        }
        assert_eq!(highest, tag(5, 0));
        // A revocation comes at the same revision; the same revision with fewer revocations is then a replay.
        check_signed(
            &public,
            &signed_plan_revoking(5, &["0.9"], &key),
            &mut highest,
        )
        .expect("a revocation");
        assert_eq!(highest, tag(5, 1));
        let unrevoked = check_signed(&public, &signed_plan(5, &key), &mut highest)
            .expect_err("the answer from before the revocation");
        assert_eq!(unrevoked.reason(), "replayed");
        // A higher revision may list fewer (it names other models).
        check_signed(&public, &signed_plan(6, &key), &mut highest).expect("a new revision");
        assert_eq!(highest, tag(6, 0));
    }
}
