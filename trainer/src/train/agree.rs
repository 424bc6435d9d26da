//! Data parallelism's agreement: every process of a job must be started alike (settings, data, build and step
//! graphs), and rank 0's progress and state are the ones every process continues from.

use std::collections::BTreeMap;

use super::checkpoint::{CheckpointMeta, flatten, overwrite, unflatten};
use super::{TrainConfig, TrainError};
use crate::collective::Collective;
use crate::split::{Fnv1a, Split};
use crate::step::{StepGraph, StepProgram};
use crate::stepper::ModelState;

/// Whether every process was started with the same settings and data as rank 0, by the same version; every
/// process learns which ranks differ, and each says how it differs.
pub(super) fn agree(
    processes: &dyn Collective,
    split: &Split,
    config: &TrainConfig,
    resume: bool,
) -> Result<(), TrainError> {
    agree_on(
        processes,
        &serde_json::json!({
            "edgerec": env!("CARGO_PKG_VERSION"),
            // Threads are each process's own business: they change how ONNX Runtime rounds within a step, not
            // what is computed, and rank 0's state replaces every process's after each epoch.
            "config": TrainConfig { threads: 0, replicas: 0, ..config.clone() },
            "resume": resume,
            "data": format!("{:016x}", split.fingerprint()),
        }),
    )
}

/// Whether every process built the same step graphs, byte for byte: two builds of one version that differ in
/// the model code would otherwise exchange gradients of different layouts.
pub(super) fn agree_on_graph(
    processes: &dyn Collective,
    graph: &StepGraph,
) -> Result<(), TrainError> {
    let mut digest = Fnv1a::default();
    match &graph.program {
        StepProgram::Fused(onnx) => digest.write(onnx),
        StepProgram::Split { gradients, update } => {
            digest.write(gradients);
            digest.write(update);
        }
    }
    agree_on(
        processes,
        &serde_json::json!({
            "step graphs": format!("{:016x}", digest.0),
            "parameters": graph.parameters,
        }),
    )
}

/// Compares `description` with rank 0's on every process.
fn agree_on(processes: &dyn Collective, description: &serde_json::Value) -> Result<(), TrainError> {
    let size = processes.size();
    // Both sides compared as parsed from text, so that numbers read as written (0.3, not 0.30000001192092896).
    let text = serde_json::to_vec(description).map_err(|e| shared_error(&e))?;
    let mine: serde_json::Value = serde_json::from_slice(&text).map_err(|e| shared_error(&e))?;
    let mut bytes = text;
    processes.broadcast_bytes(&mut bytes);
    let rank_0: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| shared_error(&e))?;
    let mut differences = Vec::new();
    json_differences("", &rank_0, &mine, &mut differences);
    let mut flags = vec![0.0; size];
    if !differences.is_empty() {
        flags[processes.rank()] = 1.0;
    }
    processes.sum_f64(&mut flags);
    let ranks: Vec<String> = (0..size)
        .filter(|&r| flags[r] > 0.0)
        .map(|r| r.to_string())
        .collect();
    if ranks.is_empty() {
        return Ok(());
    }
    Err(TrainError::Disagreement {
        ranks: ranks.join(", "),
        here: if differences.is_empty() {
            "their messages say how".into()
        } else {
            format!("rank {}: {}", processes.rank(), differences.join(", "))
        },
    })
}

/// `path: theirs on rank 0, mine here` for every leaf where `mine` differs from `rank_0`.
fn json_differences(
    path: &str,
    rank_0: &serde_json::Value,
    mine: &serde_json::Value,
    out: &mut Vec<String>,
) {
    match (rank_0, mine) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let null = serde_json::Value::Null;
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                json_differences(
                    &child,
                    a.get(key).unwrap_or(&null),
                    b.get(key).unwrap_or(&null),
                    out,
                );
            }
        }
        (a, b) if a != b => out.push(format!("{path} is {b} here but {a} on rank 0")),
        _ => {}
    }
}

pub(super) fn shared_error(e: &serde_json::Error) -> TrainError {
    TrainError::Exchange(e.to_string())
}

/// Gives every process rank 0's progress, state and best parameters (from its checkpoint, when resuming).
pub(super) fn share_from_rank_0(
    processes: &dyn Collective,
    meta: &mut CheckpointMeta,
    state: &mut ModelState,
    best: &mut BTreeMap<String, Vec<f32>>,
) -> Result<(), TrainError> {
    let mut bytes = serde_json::to_vec(&*meta).map_err(|e| shared_error(&e))?;
    processes.broadcast_bytes(&mut bytes);
    *meta = serde_json::from_slice(&bytes).map_err(|e| shared_error(&e))?;
    let mut values = flatten(state);
    values.extend(best.values().flatten());
    processes.broadcast_f32(&mut values);
    let rest = unflatten(state, &values);
    overwrite(best, rest);
    Ok(())
}
