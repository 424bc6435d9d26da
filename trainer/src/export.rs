//! Writing a trained model as a bundle: the serving graph from the same builder the training step used, with the
//! trained parameters, and a manifest with the feature specification, vocabulary, offline metrics and lineage.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use edgerec_core::{
    Bundle, Digest, FeatureSpec, FileEntry, MANIFEST_FORMAT_VERSION, MODEL_FILE, Manifest,
};

use crate::model::{BuildError, inference_graph};
use crate::train::Trained;

/// Why a bundle could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("the bundle does not verify: {0}")]
    Verify(String),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a bundle says about itself besides the model.
#[derive(Debug, Clone)]
pub struct BundleInfo {
    pub name: String,
    pub spec: FeatureSpec,
    pub version: String,
    pub items: Vec<String>,
    pub metrics: BTreeMap<String, f64>,
    pub lineage: BTreeMap<String, serde_json::Value>,
}

/// The serving graph of `trained`, serialised.
pub fn serving_model(trained: &Trained) -> Result<Vec<u8>, BuildError> {
    inference_graph(&trained.spec, &trained.architecture, &trained.parameters)
}

/// Writes `manifest.json` and `model.onnx` into `dir` (created if needed) and checks the result as a loader would.
pub fn write_bundle(dir: &Path, info: BundleInfo, model: &[u8]) -> Result<Manifest, ExportError> {
    let manifest = manifest_for(info, model);
    let json = serde_json::to_vec_pretty(&manifest).expect("manifests serialise");
    Bundle::verify(&json, &[(MODEL_FILE, model)])
        .map_err(|e| ExportError::Verify(e.to_string()))?;
    let io = |path: PathBuf| move |source| ExportError::Io { path, source };
    std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
    let model_path = dir.join(MODEL_FILE);
    std::fs::write(&model_path, model).map_err(io(model_path.clone()))?;
    let manifest_path = dir.join("manifest.json");
    std::fs::write(&manifest_path, json).map_err(io(manifest_path.clone()))?;
    Ok(manifest)
}

fn manifest_for(info: BundleInfo, model: &[u8]) -> Manifest {
    Manifest {
        format_version: MANIFEST_FORMAT_VERSION,
        name: info.name,
        version: info.version,
        feature_spec: info.spec,
        items: info.items,
        metrics: info.metrics,
        lineage: info.lineage,
        files: BTreeMap::from([(
            MODEL_FILE.to_string(),
            FileEntry {
                sha256: Digest::of(model),
                size: model.len() as u64,
            },
        )]),
    }
}
