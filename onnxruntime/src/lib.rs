//! ONNX Runtime behind EdgeRec's [`Scorer`] trait: the reference runtime of the conformance suite and the
//! runtime the trainer evaluates with.
//!
//! The ONNX Runtime library is loaded at run time (`ORT_DYLIB_PATH`, or an explicit path) rather than linked, so
//! the build never downloads anything; `scripts/setup.sh` installs it from the `onnxruntime` wheel.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use edgerec_core::{
    ElemType, FeatureSpec, ModelError, ModelInputs, ScoreError, Scorer, TensorData, TensorSignature,
};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};

/// Environment variable naming the ONNX Runtime shared library.
pub const DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// Why ONNX Runtime is not usable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library not configured: set {DYLIB_ENV} to libonnxruntime.so (scripts/setup.sh installs it)"
    )]
    NotConfigured,
    #[error("cannot load ONNX Runtime from {path}: {message}")]
    Load { path: PathBuf, message: String },
}

static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, RuntimeError>> = OnceLock::new();

/// Loads the ONNX Runtime library once per process, from `ORT_DYLIB_PATH`.
pub fn init() -> Result<(), RuntimeError> {
    let path = std::env::var_os(DYLIB_ENV)
        .map(PathBuf::from)
        .ok_or(RuntimeError::NotConfigured)?;
    init_from(&path)
}

/// Loads the ONNX Runtime library once per process from `path` (later calls reuse the first library).
pub fn init_from(path: &Path) -> Result<(), RuntimeError> {
    let result = ENVIRONMENT.get_or_init(|| {
        let load = |message: String| RuntimeError::Load {
            path: path.to_path_buf(),
            message,
        };
        ort::init_from(path)
            .map_err(|e| load(e.to_string()))?
            .with_name("edgerec")
            .build()
            .map_err(|e| load(e.to_string()))
    });
    result.as_ref().map(|_| ()).map_err(Clone::clone)
}

/// The process-wide ONNX Runtime environment, once [`init`] has succeeded.
pub fn environment() -> Result<&'static ort::environment::Environment, ModelError> {
    match ENVIRONMENT.get() {
        Some(Ok(env)) => Ok(env),
        Some(Err(e)) => Err(ModelError::Load(e.to_string())),
        None => Err(ModelError::Load(RuntimeError::NotConfigured.to_string())),
    }
}

/// A model in an ONNX Runtime session (CPU execution provider), checked against its feature specification.
#[derive(Debug)]
pub struct OrtScorer {
    session: Session,
    output: String,
}

impl OrtScorer {
    /// Creates a session for `onnx` with `threads` intra-op threads; [`init`] must have succeeded first.
    pub fn load(spec: &FeatureSpec, onnx: &[u8], threads: usize) -> Result<Self, ModelError> {
        let env = environment()?;
        let load = |e: ort::Error| ModelError::Load(e.to_string());
        let session = Session::builder(env)
            .map_err(load)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| ModelError::Load(e.to_string()))?
            .with_intra_threads(threads)
            .map_err(|e| ModelError::Load(e.to_string()))?
            .commit_from_memory(onnx)
            .map_err(load)?;
        let signature = |outlets: &[ort::value::Outlet]| -> Vec<TensorSignature> {
            outlets
                .iter()
                .map(|o| tensor_signature(o.name(), o.dtype()))
                .collect()
        };
        spec.check_signature(&signature(session.inputs()), &signature(session.outputs()))
            .map_err(ModelError::Signature)?;
        Ok(Self {
            session,
            output: spec.output.name.clone(),
        })
    }
}

fn tensor_signature(name: &str, dtype: &ValueType) -> TensorSignature {
    let elem_type = dtype.tensor_type().map(|t| match t {
        TensorElementType::Int64 => ElemType::I64,
        TensorElementType::Float32 => ElemType::F32,
        _ => ElemType::Other,
    });
    let shape = dtype
        .tensor_shape()
        .map(|dims| dims.iter().map(|&d| usize::try_from(d).ok()).collect());
    TensorSignature {
        name: name.to_string(),
        elem_type,
        shape,
    }
}

impl Scorer for OrtScorer {
    fn score(&mut self, inputs: &ModelInputs) -> Result<Vec<f32>, ScoreError> {
        let runtime = |e: ort::Error| ScoreError::Runtime(e.to_string());
        let mut values: Vec<(String, DynValue)> = Vec::with_capacity(inputs.len());
        for input in inputs {
            let shape: Vec<i64> = input.shape.iter().map(|&d| d as i64).collect();
            let value = match &input.data {
                TensorData::I64(data) => Tensor::from_array((shape, data.clone()))
                    .map_err(runtime)?
                    .into_dyn(),
                TensorData::F32(data) => Tensor::from_array((shape, data.clone()))
                    .map_err(runtime)?
                    .into_dyn(),
            };
            values.push((input.name.clone(), value));
        }
        let outputs = self.session.run(values).map_err(runtime)?;
        let scores = outputs
            .get(self.output.as_str())
            .ok_or_else(|| ScoreError::Runtime(format!("no output `{}`", self.output)))?;
        let (_, data) = scores.try_extract_tensor::<f32>().map_err(runtime)?;
        Ok(data.to_vec())
    }
}
