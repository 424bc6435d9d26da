//! The tract scorer: what ranks in browsers and edge nodes.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::DimLike;
use tract_onnx::tract_core::internal::SimpleState;
use tract_onnx::tract_hir::infer::{Factoid, InferenceFact};

use crate::bundle::{Bundle, BundleError, MODEL_FILE};
use crate::rank::{ErrorReport, RankError, Ranker};
use crate::spec::{ElemType, FeatureSpec, ModelInputs, TensorData, TensorSignature};
use crate::{ModelError, ScoreError, Scorer};

/// A model loaded, checked against its feature specification and optimised by tract.
#[derive(Debug)]
pub struct TractScorer {
    state: SimpleState<TypedFact, Box<dyn TypedOp>>,
    input_names: Vec<String>,
    output_ix: usize,
}

impl TractScorer {
    /// Parses the ONNX graph, checks its inputs and output against `spec`, fixes the input shapes the spec
    /// defines and optimises the graph for them.
    pub fn load(spec: &FeatureSpec, onnx: &[u8]) -> Result<Self, ModelError> {
        let load_error = |e: TractError| ModelError::Load(format!("{e:#}"));
        let mut model = tract_onnx::onnx()
            .model_for_read(&mut &onnx[..])
            .map_err(load_error)?;

        let mut inputs = Vec::new();
        for outlet in model.input_outlets().map_err(load_error)?.to_vec() {
            let fact = model.outlet_fact(outlet).map_err(load_error)?;
            let shape = if fact.shape.is_open() {
                None
            } else {
                Some(
                    fact.shape
                        .dims()
                        .map(|d| d.concretize().and_then(|d| d.to_usize().ok()))
                        .collect(),
                )
            };
            inputs.push(TensorSignature {
                name: model.node(outlet.node).name.clone(),
                elem_type: fact.datum_type.concretize().map(elem_type),
                shape,
            });
        }
        // Output shapes are known only once the input shapes are fixed: check the inputs first.
        spec.check_inputs(&inputs)?;
        let expected = spec.input_signatures();
        for (ix, found) in inputs.iter().enumerate() {
            let Some(want) = expected.iter().find(|e| e.name == found.name) else {
                continue;
            };
            let dims: TVec<usize> = want.shape.iter().flatten().flatten().copied().collect();
            let datum = if want.elem_type == Some(ElemType::F32) {
                f32::datum_type()
            } else {
                i64::datum_type()
            };
            model
                .set_input_fact(ix, InferenceFact::dt_shape(datum, dims))
                .map_err(load_error)?;
        }
        let typed = model.into_typed().map_err(load_error)?;
        let mut outputs = Vec::new();
        for &outlet in typed.output_outlets().map_err(load_error)? {
            let fact = typed.outlet_fact(outlet).map_err(load_error)?;
            let name = typed
                .outlet_label(outlet)
                .unwrap_or(&typed.node(outlet.node).name)
                .to_string();
            outputs.push(TensorSignature {
                name,
                elem_type: Some(elem_type(fact.datum_type)),
                shape: Some(fact.shape.iter().map(|d| d.to_usize().ok()).collect()),
            });
        }
        spec.check_output(&outputs)?;
        let output_ix = outputs
            .iter()
            .position(|o| o.name == spec.output.name)
            .unwrap_or_default();

        let plan = typed
            .into_optimized()
            .map_err(load_error)?
            .into_runnable()
            .map_err(load_error)?;
        let state = SimpleState::new(&plan).map_err(load_error)?;
        Ok(Self {
            state,
            input_names: inputs.into_iter().map(|i| i.name).collect(),
            output_ix,
        })
    }
}

fn elem_type(datum: DatumType) -> ElemType {
    match datum {
        DatumType::I64 => ElemType::I64,
        DatumType::F32 => ElemType::F32,
        _ => ElemType::Other,
    }
}

impl Scorer for TractScorer {
    fn score(&mut self, inputs: &ModelInputs) -> Result<Vec<f32>, ScoreError> {
        let runtime = |e: TractError| ScoreError::Runtime(format!("{e:#}"));
        let mut values: TVec<TValue> = TVec::with_capacity(self.input_names.len());
        for name in &self.input_names {
            let input = inputs.iter().find(|i| &i.name == name).ok_or_else(|| {
                ScoreError::Runtime(format!("no value given for model input `{name}`"))
            })?;
            let tensor = match &input.data {
                TensorData::I64(data) => Tensor::from_shape(&input.shape, data),
                TensorData::F32(data) => Tensor::from_shape(&input.shape, data),
            }
            .map_err(runtime)?;
            values.push(tensor.into_tvalue());
        }
        let outputs = self.state.run(values).map_err(runtime)?;
        let scores = outputs
            .get(self.output_ix)
            .ok_or_else(|| ScoreError::Runtime("the model gave no output".into()))?
            .to_plain_array_view::<f32>()
            .map_err(runtime)?;
        Ok(scores.iter().copied().collect())
    }
}

/// Why a bundle could not become a serving ranker.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("the model failed its probe ranking: {0}")]
    Probe(RankError),
}

impl LoadError {
    /// A stable machine-readable name of the error, for JSON APIs.
    pub fn kind(&self) -> &'static str {
        match self {
            LoadError::Bundle(_) => "invalid_bundle",
            LoadError::Model(_) => "invalid_model",
            LoadError::Probe(_) => "probe_failed",
        }
    }
}

impl From<&LoadError> for ErrorReport {
    fn from(error: &LoadError) -> Self {
        ErrorReport::new(error.kind(), error)
    }
}

/// Verifies a bundle (manifest and `model.onnx`), loads its model with tract and probes it once, so that what
/// comes back is ready to serve.
pub fn load_tract_ranker(
    manifest_json: &[u8],
    model_onnx: &[u8],
) -> Result<Ranker<TractScorer>, LoadError> {
    let bundle = Bundle::verify(manifest_json, &[(MODEL_FILE, model_onnx)])?;
    let scorer = TractScorer::load(&bundle.manifest.feature_spec, bundle.model)?;
    let mut ranker = Ranker::new(&bundle, scorer);
    ranker.probe().map_err(LoadError::Probe)?;
    Ok(ranker)
}
