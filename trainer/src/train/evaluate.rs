//! Validation and test figures: every evaluated user's target ranked by the serving graph on ONNX Runtime, the
//! users shared out between the processes of a job.

use std::collections::BTreeMap;

use edgerec_core::{FeatureSpec, MetricsAccumulator, RankingMetrics, Scorer};
use edgerec_onnxruntime::OrtScorer;

use super::TrainError;
use crate::collective::Collective;
use crate::model::{Architecture, Parameters, inference_graph};
use crate::runtime::RuntimeError;
use crate::split::{Split, Stage};

pub(super) fn parameters_with_shapes(
    spec: &FeatureSpec,
    arch: &Architecture,
    values: BTreeMap<String, Vec<f32>>,
) -> Result<Parameters, TrainError> {
    let mut values = values;
    let mut parameters = Parameters::default();
    for (name, dims) in crate::model::parameter_shapes(spec, arch)? {
        let data = values.remove(&name).unwrap_or_default();
        parameters.0.insert(name, (dims, data));
    }
    Ok(parameters)
}

/// Ranks every evaluated user's target at `stage` with the serving graph built from `values`, on ONNX Runtime,
/// the users shared out between `processes` (each evaluates its share; the sums are added up).
pub fn evaluate(
    processes: &dyn Collective,
    split: &Split,
    spec: &FeatureSpec,
    arch: &Architecture,
    values: &BTreeMap<String, Vec<f32>>,
    stage: Stage,
    threads: usize,
) -> Result<RankingMetrics, TrainError> {
    let parameters = parameters_with_shapes(spec, arch, values.clone())?;
    let onnx = inference_graph(spec, arch, &parameters)?;
    let mut sums = evaluate_model_shard(
        split,
        spec,
        &onnx,
        stage,
        threads,
        processes.rank(),
        processes.size(),
    )?
    .sums();
    processes.sum_f64(&mut sums);
    Ok(MetricsAccumulator::from_sums(sums).finish())
}

/// Ranks every evaluated user's target at `stage` with the serving model `onnx`, on ONNX Runtime.
pub fn evaluate_model(
    split: &Split,
    spec: &FeatureSpec,
    onnx: &[u8],
    stage: Stage,
    threads: usize,
) -> Result<RankingMetrics, TrainError> {
    Ok(evaluate_model_shard(split, spec, onnx, stage, threads, 0, 1)?.finish())
}

/// [`evaluate_model`] over shard `shard` of `shards` of the users, unaveraged.
fn evaluate_model_shard(
    split: &Split,
    spec: &FeatureSpec,
    onnx: &[u8],
    stage: Stage,
    threads: usize,
    shard: usize,
    shards: usize,
) -> Result<MetricsAccumulator, TrainError> {
    edgerec_onnxruntime::init().map_err(|e| RuntimeError::Unavailable(e.to_string()))?;
    let mut scorer =
        OrtScorer::load(spec, onnx, threads).map_err(|e| RuntimeError::Session(e.to_string()))?;
    let mut failure = None;
    let metrics = split.evaluate_shard(stage, shard, shards, |history| {
        let scored = spec
            .encode(history, &BTreeMap::new())
            .map_err(|e| e.to_string())
            .and_then(|inputs| scorer.score(&inputs).map_err(|e| e.to_string()));
        match scored {
            Ok(scores) => scores,
            Err(message) => {
                failure.get_or_insert(message);
                vec![0.0; spec.output.num_items]
            }
        }
    });
    match failure {
        Some(message) => Err(RuntimeError::Run(message).into()),
        None => Ok(metrics),
    }
}
