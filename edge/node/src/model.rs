//! A model version in service: its verified files, a pool of ranker instances that have it loaded, and its
//! ranking for a user with no history (the fallback of last resort).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgerec_core::{Digest, MODEL_FILE, Manifest, RankRequest, Ranking, ScoredItem};
use edgerec_registry::client::ClientError;
use edgerec_registry::records::VersionRecord;
use edgerec_registry::signing::verify_manifest_signature;

use crate::host::{HostError, RankerEngine, RankerInstance};

/// Items kept from the empty-history ranking, for answers when nothing better is known.
const PRIOR_LEN: u32 = 1_000;

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
        }
    }

    /// Whether trying the same plan again can only fail the same way. Registry and disk errors, and loads or
    /// warm-ups that ran out of time on a busy node, are worth another try.
    pub fn is_permanent(&self) -> bool {
        match self {
            RolloutError::Registry(_) | RolloutError::Io { .. } => false,
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

    /// Checks the record's signature of the manifest digest against `public_key`. With [`Self::check_digests`],
    /// the files are what the registry signed.
    pub fn check_signature(&self, public_key: &str) -> Result<(), RolloutError> {
        let record = &self.record;
        verify_manifest_signature(public_key, &record.manifest_digest, &record.signature)
            .map_err(|_| RolloutError::Signature(self.version()))
    }
}

/// A verified model loaded in a pool of ranker instances.
pub struct LoadedModel {
    pub files: ModelFiles,
    engine: Arc<RankerEngine>,
    idle: Arc<Mutex<Vec<RankerInstance>>>,
    prior: Vec<ScoredItem>,
    items: Vec<String>,
    known: HashSet<String>,
    rank_deadline: Duration,
    load_deadline: Duration,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("model", &self.files.record.model)
            .field("version", &self.files.record.version)
            .finish_non_exhaustive()
    }
}

impl LoadedModel {
    /// Loads verified `files` into `instances` ranker instances and warms the model up: a ranking with no history
    /// and rankings whose histories cover every item of the vocabulary must all succeed with finite scores (the
    /// ranker refuses non-finite ones), so a model that fails on some input is caught here and not by a user.
    pub fn load(
        engine: Arc<RankerEngine>,
        files: ModelFiles,
        instances: usize,
        rank_deadline: Duration,
        load_deadline: Duration,
    ) -> Result<Self, RolloutError> {
        let version = format!("{}@{}", files.record.model, files.record.version);
        let manifest: Manifest =
            serde_json::from_slice(&files.manifest).map_err(|e| RolloutError::Manifest {
                version: version.clone(),
                message: e.to_string(),
            })?;
        let mut this = Self {
            files,
            engine,
            idle: Arc::default(),
            prior: Vec::new(),
            known: manifest.items.iter().cloned().collect(),
            items: manifest.items,
            rank_deadline,
            load_deadline,
        };
        let load_failed = |source| RolloutError::Load {
            version: version.clone(),
            source,
        };
        let mut first = this.new_instance().map_err(load_failed)?;
        let warm_up = |step: String, source| RolloutError::WarmUp {
            version: version.clone(),
            step,
            source,
        };
        let k = PRIOR_LEN.min(this.items.len() as u32).max(1);
        this.prior = first
            .rank(&RankRequest::new(Vec::new(), k), load_deadline)
            .map_err(|e| warm_up("no history".into(), e))?
            .items;
        let window = manifest.feature_spec.sequence.max_len.max(1);
        for (i, chunk) in this.items.chunks(window).enumerate() {
            first
                .rank(&RankRequest::new(chunk.to_vec(), 10), load_deadline)
                .map_err(|e| {
                    warm_up(
                        format!(
                            "history of items {}..{}",
                            i * window,
                            i * window + chunk.len()
                        ),
                        e,
                    )
                })?;
        }
        let mut pool = vec![first];
        for _ in 1..instances.max(1) {
            pool.push(this.new_instance().map_err(load_failed)?);
        }
        this.idle = Arc::new(Mutex::new(pool));
        Ok(this)
    }

    fn new_instance(&self) -> Result<RankerInstance, HostError> {
        build_instance(&self.engine, &self.files, self.load_deadline)
    }

    pub fn model(&self) -> &str {
        &self.files.record.model
    }

    pub fn version(&self) -> &str {
        &self.files.record.version
    }

    /// The model's item ids.
    pub fn items(&self) -> &[String] {
        &self.items
    }

    pub fn knows(&self, item: &str) -> bool {
        self.known.contains(item)
    }

    /// The model's ranking for a user with no history, best first.
    pub fn prior(&self) -> &[ScoredItem] {
        &self.prior
    }

    /// Ranks in an idle instance (a new one when all are busy) under the rank deadline. An instance that ran past
    /// its deadline or trapped is in an unknown state and is dropped; a replacement is built on a thread of its
    /// own, so the worker that hit the fault answers at once instead of loading a model.
    pub fn rank(&self, request: &RankRequest) -> Result<Ranking, HostError> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut instance = match idle {
            Some(instance) => instance,
            None => self.new_instance()?,
        };
        let result = instance.rank(request, self.rank_deadline);
        if instance.is_poisoned() {
            let (engine, files, idle) =
                (self.engine.clone(), self.files.clone(), self.idle.clone());
            let deadline = self.load_deadline;
            let spawned = std::thread::Builder::new()
                .name("edgerec-instance".into())
                .spawn(move || {
                    if let Ok(fresh) = build_instance(&engine, &files, deadline) {
                        idle.lock().unwrap_or_else(|e| e.into_inner()).push(fresh);
                    }
                });
            // Without the thread the pool simply builds one on demand.
            drop(spawned);
        } else {
            self.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(instance);
        }
        result
    }
}

fn build_instance(
    engine: &RankerEngine,
    files: &ModelFiles,
    deadline: Duration,
) -> Result<RankerInstance, HostError> {
    let mut instance = engine.instantiate()?;
    instance.load_bundle(&files.manifest, &files.model, deadline)?;
    Ok(instance)
}
