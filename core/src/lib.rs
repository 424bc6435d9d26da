//! EdgeRec's ranking core.
//!
//! Everything that decides what a user is shown lives here, with no I/O, so that the browser ranker, the WASI
//! ranker run by edge nodes, the native tools and the trainer all compute the same thing:
//! - [`FeatureSpec::encode`] is the one function that turns raw features into model input tensors;
//! - [`Bundle::verify`] checks a model bundle (manifest, digests, vocabulary, feature specification);
//! - [`Ranker`] scores the catalogue (or a candidate list) with any [`Scorer`], masks what must not be shown and
//!   returns the top-k.
//!
//! - [`ab::assign`] puts a user in a variant of a deployment plan, the same on every node and in every report.
//!
//! [`TractScorer`] is the scorer used at the edge and in browsers.

pub mod ab;
mod bundle;
mod digest;
pub mod embedded;
pub mod id;
mod metrics;
mod rank;
pub mod recent;
pub mod serving;
mod spec;
mod tract_scorer;
mod vocab;
pub mod worker;

pub use bundle::{
    Bundle, BundleError, FileEntry, MANIFEST_FORMAT_VERSION, MAX_BUNDLE_FILES, MODEL_FILE,
    Manifest, check_file_name,
};
pub use digest::{Digest, DigestParseError};
pub use id::{
    EventId, IdError, ItemId, MAX_ID_BYTES, MAX_NAME_BYTES, ModelName, RequestId, Surface, UserId,
    VariantName, Version,
};
pub use metrics::{MetricsAccumulator, RankingMetrics, target_rank};
pub use rank::{
    ErrorReport, MAX_CANDIDATES, MAX_EXCLUDE, MAX_HISTORY, RankError, RankRequest, Ranker, Ranking,
    ScoredItem,
};
pub use spec::{
    ContextFeatureSpec, ContextKind, ElemType, FEATURE_SPEC_VERSION, FeatureError, FeatureSpec,
    InputTensor, ItemFeatureSpec, ModelInputs, OutputSpec, Padding, SequenceSpec, SignatureError,
    SpecError, TensorData, TensorSignature,
};
pub use tract_scorer::{LoadError, TractScorer, load_tract_ranker};
pub use vocab::{ItemVocabulary, VocabError};

/// A model runtime that turns encoded inputs into one score per model index.
///
/// Implemented by [`TractScorer`] here and by the ONNX Runtime adapter, so that every runtime is driven by the
/// same feature encoding and the same ranking code.
pub trait Scorer {
    /// Runs the model once and returns its output scores (one per model index, padding included).
    fn score(&mut self, inputs: &ModelInputs) -> Result<Vec<f32>, ScoreError>;
}

/// A model that a runtime cannot load for its feature specification.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    #[error("the model cannot be loaded: {0}")]
    Load(String),
    #[error("the model does not match its feature specification: {0}")]
    Signature(#[from] SignatureError),
}

/// A failure inside a model runtime while scoring.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScoreError {
    #[error("the model runtime failed: {0}")]
    Runtime(String),
}
