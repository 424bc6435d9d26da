//! A model version in service: its verified files, a fixed pool of ranker instances that have it loaded (each
//! under a memory limit), and its ranking for a user with no history (the fallback of last resort).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use edgerec_core::serving::{prior_request, warm_up_requests};
use edgerec_core::{
    Digest, ItemId, MODEL_FILE, Manifest, ModelName, RankRequest, Ranking, ScoredItem, Version,
};
use edgerec_registry_api::client::ClientError;
use edgerec_registry_api::keys::TrustedKeys;
use edgerec_registry_api::records::{PlanTag, VersionRecord};

use crate::host::{HostError, RankerEngine, RankerInstance};
use crate::pool::InstancePool;

/// Why a model version was not put into service. The version that was serving keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("the registry: {0}")]
    Registry(#[from] ClientError),
    #[error("{version}: {file} has sha256 {actual}, the registry's record says {expected}")]
    Digest {
        version: String,
        file: &'static str,
        expected: Box<Digest>,
        actual: Box<Digest>,
    },
    #[error("{0}: the record lists no {MODEL_FILE}")]
    NoModelFile(String),
    #[error(
        "{0}: the manifest's signature does not verify against the registry key this node trusts"
    )]
    Signature(String),
    #[error("{version}: the manifest does not parse: {message}")]
    Manifest { version: String, message: String },
    #[error("{version} does not load in the ranker: {source}")]
    Load { version: String, source: HostError },
    #[error("{version} failed its warm-up ({step}): {source}")]
    WarmUp {
        version: String,
        step: String,
        source: HostError,
    },
    #[error("cannot keep the verified bundle in {path}: {message}")]
    Io { path: String, message: String },
    #[error("the plan of `{surface}` cannot be served: {message}")]
    Plan { surface: String, message: String },
    /// A plan without the registry's valid signature: unsigned, altered on the way, or signed by another key.
    #[error(
        "the plan of `{surface}` (revision {revision}) is not what the registry signed: {message}"
    )]
    PlanSignature {
        surface: String,
        revision: u64,
        message: String,
    },
    /// A plan older than one whose signature already verified: a replay (a rollback is a new, higher revision).
    #[error(
        "the plan of `{surface}` at revision.revocations {tag} is older than {highest}, already verified here: \
         a replayed plan is never served"
    )]
    Replayed {
        surface: String,
        tag: PlanTag,
        highest: PlanTag,
    },
    /// A record or plan whose labels are not the signed manifest's: relabelled on the way, or by the registry.
    #[error("{version}: {named_by} names {named}, but {bound_by} names {bound}")]
    Relabelled {
        version: String,
        named_by: String,
        named: String,
        bound_by: String,
        bound: String,
    },
}

impl RolloutError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            RolloutError::Registry(_) => "registry",
            RolloutError::Digest { .. } | RolloutError::NoModelFile(_) => "digest",
            RolloutError::Signature(_) => "signature",
            RolloutError::Manifest { .. } => "manifest",
            RolloutError::Load { .. } => "load",
            RolloutError::WarmUp { .. } => "warm_up",
            RolloutError::Io { .. } => "io",
            RolloutError::Plan { .. } => "plan",
            RolloutError::Relabelled { .. } => "relabelled",
            RolloutError::PlanSignature { .. } => "plan_signature",
            RolloutError::Replayed { .. } => "replayed",
        }
    }

    /// Whether trying the same plan again can only fail the same way. Registry and disk errors, and loads or
    /// warm-ups that ran out of time on a busy node, are worth another try; so are answers that did not verify
    /// (a bad signature, a relabelled record, a replay): whoever altered one answer may not alter the next, and a
    /// refusal remembered by revision alone would keep the node from the registry's real plan of that revision.
    pub fn is_permanent(&self) -> bool {
        match self {
            RolloutError::Registry(_)
            | RolloutError::Io { .. }
            | RolloutError::PlanSignature { .. }
            | RolloutError::Replayed { .. }
            | RolloutError::Relabelled { .. } => false,
            RolloutError::Load { source, .. } | RolloutError::WarmUp { source, .. } => {
                !matches!(source, HostError::DeadlineExceeded(_))
            }
            _ => true,
        }
    }
}

/// A version's record and bytes, as fetched; nothing is trusted until [`ModelFiles::verify`].
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub record: VersionRecord,
    pub manifest: Arc<[u8]>,
    pub model: Arc<[u8]>,
}

impl ModelFiles {
    fn version(&self) -> String {
        format!("{}@{}", self.record.model, self.record.version)
    }

    /// Checks both files against the record's digests.
    pub fn check_digests(&self) -> Result<(), RolloutError> {
        let record = &self.record;
        let version = self.version();
        let expected_model = record
            .files
            .get(MODEL_FILE)
            .ok_or_else(|| RolloutError::NoModelFile(version.clone()))?;
        for (file, expected, bytes) in [
            ("manifest.json", &record.manifest_digest, &self.manifest),
            (MODEL_FILE, expected_model, &self.model),
        ] {
            let actual = Digest::of(bytes);
            if actual != *expected {
                return Err(RolloutError::Digest {
                    version,
                    file,
                    expected: Box::new(*expected),
                    actual: Box::new(actual),
                });
            }
        }
        Ok(())
    }

    /// Checks that the record names the model and version its manifest does: the signature covers the manifest,
    /// not the record, so a record relabelled on the way (a version served under another's name) would otherwise
    /// pass. Run after [`Self::check_digests`] and [`Self::check_signature`].
    pub fn check_binding(&self) -> Result<(), RolloutError> {
        let manifest: Manifest =
            serde_json::from_slice(&self.manifest).map_err(|e| RolloutError::Manifest {
                version: self.version(),
                message: e.to_string(),
            })?;
        let (record, signed) = (
            (self.record.model.as_str(), self.record.version.as_str()),
            (manifest.name.as_str(), manifest.version.as_str()),
        );
        if record != signed {
            return Err(RolloutError::Relabelled {
                version: self.version(),
                named_by: "the registry's record".into(),
                named: format!("{}@{}", record.0, record.1),
                bound_by: "the signed manifest".into(),
                bound: format!("{}@{}", signed.0, signed.1),
            });
        }
        Ok(())
    }

    /// Checks the record's signature of the manifest digest against `public_key`. With [`Self::check_digests`],
    /// the files are what the registry signed.
    pub fn check_signature(&self, keys: &TrustedKeys) -> Result<(), RolloutError> {
        let record = &self.record;
        keys.verify_manifest(
            &record.manifest_digest,
            &record.signature,
            edgerec_features::now_ms(),
        )
        .map_err(|_| RolloutError::Signature(self.version()))
    }
}

/// A verified model loaded in a fixed pool of ranker instances.
pub struct LoadedModel {
    pub files: ModelFiles,
    pool: Arc<InstancePool>,
    prior: Vec<ScoredItem>,
    items: Vec<ItemId>,
    known: HashSet<ItemId>,
    /// Recent items the model reads.
    max_len: usize,
    /// Bytes of its longest item id.
    longest_id: usize,
    /// What one instance may take, and what the first took after its warm-up.
    memory_limit: usize,
    memory_used: usize,
    rank_deadline: Duration,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("model", &self.files.record.model)
            .field("version", &self.files.record.version)
            .finish_non_exhaustive()
    }
}

/// How a model's instances are run (from [`crate::config::RankerConfig`] and the deadlines).
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub instances: usize,
    /// How long a ranking waits for a free instance.
    pub wait: Duration,
    /// Memory one instance may use; `None`: sized to the model ([`default_memory_limit`]).
    pub memory_bytes: Option<usize>,
    pub rank_deadline: Duration,
    pub load_deadline: Duration,
}

/// The memory limit of an instance when none is configured: room for the ranker itself and tract's working set
/// (64 MiB) plus 16 times the bundle, for the parsed graph, the optimised one and the tensors between.
pub fn default_memory_limit(bundle_bytes: usize) -> usize {
    (64 << 20) + 16 * bundle_bytes
}

impl LoadedModel {
    /// Loads verified `files` into a pool of ranker instances and warms the model up: a ranking with no history
    /// and rankings whose histories cover every item of the vocabulary must all succeed with finite scores (the
    /// ranker refuses non-finite ones), so a model that fails on some input is caught here and not by a user.
    /// Every instance runs under the memory limit, so a model that would take more fails here too.
    pub fn load(
        engine: Arc<RankerEngine>,
        files: ModelFiles,
        settings: &PoolSettings,
    ) -> Result<Self, RolloutError> {
        let version = format!("{}@{}", files.record.model, files.record.version);
        let manifest: Manifest =
            serde_json::from_slice(&files.manifest).map_err(|e| RolloutError::Manifest {
                version: version.clone(),
                message: e.to_string(),
            })?;
        let memory_limit = settings
            .memory_bytes
            .unwrap_or_else(|| default_memory_limit(files.manifest.len() + files.model.len()));
        let load_failed = |source| RolloutError::Load {
            version: version.clone(),
            source,
        };
        let build = {
            let (engine, files, deadline) = (engine.clone(), files.clone(), settings.load_deadline);
            move || build_instance(&engine, &files, deadline, memory_limit)
        };
        let mut first = build().map_err(load_failed)?;
        let warm_up = |step: String, source| RolloutError::WarmUp {
            version: version.clone(),
            step,
            source,
        };
        let items = ItemId::parse_all(manifest.items).map_err(|e| RolloutError::Manifest {
            version: version.clone(),
            message: format!("`items`: {e}"),
        })?;
        let prior = first
            .rank(&prior_request(items.len()), settings.load_deadline)
            .map_err(|e| warm_up("no history".into(), e))?
            .items;
        for (step, request) in warm_up_requests(&items, manifest.feature_spec.sequence.max_len) {
            first
                .rank(&request, settings.load_deadline)
                .map_err(|e| warm_up(step, e))?;
        }
        let memory_used = first.memory_bytes();
        let mut instances = vec![first];
        for _ in 1..settings.instances.max(1) {
            instances.push(build().map_err(load_failed)?);
        }
        Ok(Self {
            pool: InstancePool::new(instances, settings.wait, Box::new(build)),
            prior,
            known: items.iter().cloned().collect(),
            max_len: manifest.feature_spec.sequence.max_len,
            longest_id: items.iter().map(|item| item.len()).max().unwrap_or(0),
            items,
            memory_limit,
            memory_used,
            rank_deadline: settings.rank_deadline,
            files,
        })
    }

    pub fn model(&self) -> &ModelName {
        &self.files.record.model
    }

    pub fn version(&self) -> &Version {
        &self.files.record.version
    }

    /// The model's item ids.
    pub fn items(&self) -> &[ItemId] {
        &self.items
    }

    pub fn knows(&self, item: &str) -> bool {
        self.known.contains(item)
    }

    /// How many recent items the model reads (the last ones).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Bytes of the model's longest item id.
    pub fn longest_id(&self) -> usize {
        self.longest_id
    }

    /// The memory limit of each instance, and what the first one used after its warm-up (bytes).
    pub fn memory(&self) -> (usize, usize) {
        (self.memory_limit, self.memory_used)
    }

    /// The model's ranking for a user with no history, best first.
    pub fn prior(&self) -> &[ScoredItem] {
        &self.prior
    }

    /// Ranks in a free instance of the pool under the rank deadline; `HostError::Busy` when none was free in
    /// time. An instance that ran past its deadline or trapped is in an unknown state: the pool replaces it.
    pub fn rank(&self, request: &RankRequest) -> Result<Ranking, HostError> {
        self.rank_timed(request).0
    }

    /// [`Self::rank`], with the time spent in the instance (not waiting for one), when one was free.
    pub fn rank_timed(
        &self,
        request: &RankRequest,
    ) -> (Result<Ranking, HostError>, Option<Duration>) {
        let mut took = None;
        let ranked = self.pool.with_instance(|instance| {
            let started = std::time::Instant::now();
            let ranked = instance.rank(request, self.rank_deadline);
            took = Some(started.elapsed());
            ranked
        });
        (ranked, took)
    }
}

fn build_instance(
    engine: &RankerEngine,
    files: &ModelFiles,
    deadline: Duration,
    memory_limit: usize,
) -> Result<RankerInstance, HostError> {
    let mut instance = engine.instantiate_limited(Some(memory_limit))?;
    instance.load_bundle(&files.manifest, &files.model, deadline)?;
    Ok(instance)
}

#[cfg(test)]
pub(crate) mod tests {
    use edgerec_core::{Digest, MODEL_FILE, ModelName, Version};
    use edgerec_registry_api::records::VersionRecord;

    use super::{ModelFiles, RolloutError};

    /// The golden bundle's files under a record naming `model@version`, with digests that match.
    pub(crate) fn golden_files(model: &str, version: &str) -> ModelFiles {
        let (manifest, bytes) = edgerec_conformance::golden_bundle();
        ModelFiles {
            record: VersionRecord {
                model: ModelName::parse(model).expect("a name"),
                version: Version::parse(version).expect("a version"),
                manifest_digest: Digest::of(&manifest),
                files: [(MODEL_FILE.to_string(), Digest::of(&bytes))].into(),
                metrics: Default::default(),
                lineage: Default::default(),
                items: 0,
                published_by: "test".into(),
                published_at: 0,
                signature: String::new(),
            },
            manifest: manifest.into(),
            model: bytes.into(),
        }
    }

    #[test]
    fn a_record_is_bound_to_the_model_and_version_its_manifest_names() {
        let files = golden_files("golden-sasrec", "1.0.0");
        files.check_digests().expect("the digests match");
        files
            .check_binding()
            .expect("the record names what the manifest does");
        // The same signed bytes under another version's or model's name: the digests and the signature of the
        // manifest still match, the labels do not.
        for (model, version) in [("golden-sasrec", "2.0.0"), ("other-model", "1.0.0")] {
            let relabelled = golden_files(model, version);
            relabelled
                .check_digests()
                .expect("the bytes are the signed ones");
            let refused = relabelled.check_binding().expect_err("relabelled");
            assert!(
                matches!(&refused, RolloutError::Relabelled { .. }),
                "{refused}"
            );
            assert_eq!(refused.reason(), "relabelled");
            assert!(
                !refused.is_permanent(),
                "retried: the next answer may be true"
            );
            assert_eq!(
                refused.to_string(),
                format!(
                    "{model}@{version}: the registry's record names {model}@{version}, but the signed manifest \
                     names golden-sasrec@1.0.0"
                )
            );
        }
    }
}
