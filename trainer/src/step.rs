//! The training step as one ONNX graph: forward pass and loss ([`crate::model`]), gradients
//! ([`crate::autodiff`]), global-norm clipping and AdamW. Parameters and optimiser moments are graph inputs and
//! their updated values graph outputs, so the runner can keep them in ONNX Runtime tensors between steps.

use std::collections::BTreeMap;

use edgerec_core::{ElemType, FeatureSpec};
use serde::{Deserialize, Serialize};

use crate::autodiff::gradients;
use crate::graph::{Attr, GraphBuilder, Value};
use crate::model::{Architecture, BuildError, dropout_sites, parameter_shapes, training_loss};

/// AdamW with decoupled weight decay and global gradient-norm clipping.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub epsilon: f32,
    /// Decoupled weight decay per unit of learning rate, applied to weight matrices (not to embeddings, biases
    /// or layer-norm parameters).
    pub weight_decay: f32,
    /// Gradients are rescaled so that their global L2 norm is at most this.
    pub clip_norm: f32,
}

impl Default for AdamW {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.98,
            epsilon: 1e-8,
            weight_decay: 0.01,
            clip_norm: 5.0,
        }
    }
}

impl AdamW {
    /// The step size of step `t` (1-based) at learning rate `lr`, with Adam's bias corrections folded in.
    pub fn step_size(&self, lr: f64, t: u64) -> f32 {
        let t = t as i32;
        let correction1 = 1.0 - f64::from(self.beta1).powi(t);
        let correction2 = 1.0 - f64::from(self.beta2).powi(t);
        (lr * correction2.sqrt() / correction1) as f32
    }
}

/// Names in the step graph.
pub fn first_moment(parameter: &str) -> String {
    format!("adam_m.{parameter}")
}
pub fn second_moment(parameter: &str) -> String {
    format!("adam_v.{parameter}")
}
pub fn updated(name: &str) -> String {
    format!("{name}.next")
}
pub fn dropout_input(site: usize) -> String {
    format!("dropout_{site}")
}
/// Scalar input: this step's bias-corrected step size.
pub const STEP_SIZE: &str = "step_size";
/// Scalar input: learning rate × weight decay.
pub const DECAY: &str = "decay";
/// Scalar outputs: the loss (of the fused step) and the gradient norm before clipping.
pub const LOSS: &str = "loss";
pub const GRADIENT_NORM: &str = "gradient_norm";

/// Gradient-graph output: every parameter's gradient flattened, in graph parameter order, then the loss. One
/// buffer, so data parallelism sums it across processes with a single all-reduce.
pub const GRADIENTS: &str = "gradients";
/// Update-graph input: [`GRADIENTS`] summed over every process's shard of the batch.
pub const GRADIENT_SUM: &str = "gradient_sum";

/// The ONNX graphs of a training step.
#[derive(Debug, Clone)]
pub enum StepProgram {
    /// Forward pass, gradients and update in one run (one process).
    Fused(Vec<u8>),
    /// Forward pass and gradients ([`GRADIENTS`]), then, once the gradients of every shard are summed, clipping
    /// and the update ([`GRADIENT_SUM`] in). Data parallelism runs this pair.
    Split { gradients: Vec<u8>, update: Vec<u8> },
}

/// A generated training step and what its runner needs to feed it.
#[derive(Debug, Clone)]
pub struct StepGraph {
    pub program: StepProgram,
    /// Rows of the batch inputs: the whole batch when fused, one process's shard when split.
    pub batch: usize,
    /// Parameters in graph order, with shapes.
    pub parameters: Vec<(String, Vec<i64>)>,
    /// Dropout inputs of the graph ([`dropout_input`], `[batch, len, dim]` each).
    pub dropout_sites: usize,
    /// Length of the [`crate::model::NEGATIVES`] input; 0 for full softmax, which has none.
    pub sampled_negatives: usize,
}

impl StepGraph {
    /// Values in [`GRADIENTS`]: every parameter element and the loss.
    pub fn gradient_len(&self) -> usize {
        parameter_count(&self.parameters) + 1
    }
}

fn parameter_count(shapes: &[(String, Vec<i64>)]) -> usize {
    shapes
        .iter()
        .map(|(_, dims)| dims.iter().product::<i64>() as usize)
        .sum()
}

/// The loss of a batch of `batch` sequences and its gradients, appended to `g`: parameter inputs (in `shapes`
/// order), gradients, loss and the number of dropout inputs.
fn forward_and_gradients(
    g: &mut GraphBuilder,
    spec: &FeatureSpec,
    arch: &Architecture,
    shapes: &[(String, Vec<i64>)],
    batch: usize,
    dropout: bool,
    sampled_negatives: usize,
) -> (Vec<Value>, Vec<Value>, Value, usize) {
    let (b, l, d) = (batch as i64, spec.sequence.max_len as i64, arch.dim as i64);
    let mut p = BTreeMap::new();
    let mut params = Vec::with_capacity(shapes.len());
    for (name, dims) in shapes {
        let value = g.input(name, ElemType::F32, dims);
        p.insert(name.clone(), value.clone());
        params.push(value);
    }
    let sites = if dropout { dropout_sites(arch) } else { 0 };
    let masks = (0..sites)
        .map(|site| g.input(&dropout_input(site), ElemType::F32, &[b, l, d]))
        .collect();
    let loss = training_loss(g, spec, arch, &p, b, masks, sampled_negatives);
    let grads = gradients(g, &loss, &params);
    (params, grads, loss, sites)
}

/// The training step for batches of `rows` sequences. `dropout` only decides whether dropout inputs exist; the
/// runner draws the masks (and the negatives, with `sampled_negatives` > 0).
///
/// Unsplit, it is one graph. Split, for data parallelism, it is a gradient graph over one process's shard of
/// `rows` sequences and an update graph, with the shards' [`GRADIENTS`] summed between the two: the loss weights
/// of a shard are those of the whole batch, so the sum is the gradient of the whole batch's loss, and the update
/// is the unsplit step's.
pub fn step_graph(
    spec: &FeatureSpec,
    arch: &Architecture,
    rows: usize,
    dropout: bool,
    sampled_negatives: usize,
    optimiser: &AdamW,
    split: bool,
) -> Result<StepGraph, BuildError> {
    let shapes = parameter_shapes(spec, arch)?;
    let name = if split {
        "edgerec-sasrec-train-gradients"
    } else {
        "edgerec-sasrec-train-step"
    };
    let mut g = GraphBuilder::new(name);
    let (params, grads, loss, sites) = forward_and_gradients(
        &mut g,
        spec,
        arch,
        &shapes,
        rows,
        dropout,
        sampled_negatives,
    );
    let program = if split {
        StepProgram::Split {
            gradients: flat_gradients(g, &grads, &loss),
            update: update_graph(&shapes, optimiser),
        }
    } else {
        adamw_update(&mut g, &shapes, &params, &grads, optimiser);
        g.output(&loss, LOSS);
        StepProgram::Fused(g.to_bytes())
    };
    Ok(StepGraph {
        program,
        batch: rows,
        parameters: shapes,
        dropout_sites: sites,
        sampled_negatives,
    })
}

/// Ends the gradient graph `g`: every gradient flattened, then the loss, as its one output [`GRADIENTS`].
fn flat_gradients(mut g: GraphBuilder, grads: &[Value], loss: &Value) -> Vec<u8> {
    let flat = g.i64s(&[-1]);
    let mut pieces: Vec<Value> = grads
        .iter()
        .map(|grad| g.op("Reshape", &[grad, &flat], &[]))
        .collect();
    let one = g.i64s(&[1]);
    pieces.push(g.op("Reshape", &[loss, &one], &[]));
    let all = g.op(
        "Concat",
        &pieces.iter().collect::<Vec<_>>(),
        &[Attr::Int("axis", 0)],
    );
    g.output(&all, GRADIENTS);
    g.to_bytes()
}

/// The update graph of a split step: [`GRADIENT_SUM`] cut back into each parameter's gradient, then clipping and
/// AdamW.
fn update_graph(shapes: &[(String, Vec<i64>)], optimiser: &AdamW) -> Vec<u8> {
    let mut g = GraphBuilder::new("edgerec-sasrec-train-update");
    let params: Vec<Value> = shapes
        .iter()
        .map(|(name, dims)| g.input(name, ElemType::F32, dims))
        .collect();
    let total = parameter_count(shapes) as i64;
    let sum = g.input(GRADIENT_SUM, ElemType::F32, &[total + 1]);
    let axis = g.i64s(&[0]);
    let mut offset = 0;
    let mut grads = Vec::with_capacity(shapes.len());
    for (_, dims) in shapes {
        let size: i64 = dims.iter().product();
        let (start, end) = (g.i64s(&[offset]), g.i64s(&[offset + size]));
        let piece = g.op("Slice", &[&sum, &start, &end, &axis], &[]);
        let shape = g.i64s(dims);
        grads.push(g.op("Reshape", &[&piece, &shape], &[]));
        offset += size;
    }
    adamw_update(&mut g, shapes, &params, &grads, optimiser);
    g.to_bytes()
}

/// Appends global-norm clipping and AdamW to `g`: moment inputs, updated parameter and moment outputs, the
/// [`STEP_SIZE`] and [`DECAY`] inputs and the [`GRADIENT_NORM`] output.
fn adamw_update(
    g: &mut GraphBuilder,
    shapes: &[(String, Vec<i64>)],
    params: &[Value],
    grads: &[Value],
    optimiser: &AdamW,
) {
    // Global-norm clipping: scale = clip / max(norm, clip), 1 whenever the norm is within bounds.
    let mut squared_norm: Option<Value> = None;
    for grad in grads {
        let square = g.op("Mul", &[grad, grad], &[]);
        let total = g.op("ReduceSum", &[&square], &[Attr::Int("keepdims", 0)]);
        squared_norm = Some(match squared_norm {
            Some(sum) => g.op("Add", &[&sum, &total], &[]),
            None => total,
        });
    }
    let norm = g.op("Sqrt", &[&squared_norm.expect("parameters")], &[]);
    let clip = g.f32_scalar(optimiser.clip_norm);
    let bounded = g.op("Max", &[&norm, &clip], &[]);
    let scale = g.op("Div", &[&clip, &bounded], &[]);

    let step_size = g.input(STEP_SIZE, ElemType::F32, &[]);
    let decay = g.input(DECAY, ElemType::F32, &[]);
    let (beta1, one_minus_beta1) = (
        g.f32_scalar(optimiser.beta1),
        g.f32_scalar(1.0 - optimiser.beta1),
    );
    let (beta2, one_minus_beta2) = (
        g.f32_scalar(optimiser.beta2),
        g.f32_scalar(1.0 - optimiser.beta2),
    );
    let epsilon = g.f32_scalar(optimiser.epsilon);
    for ((name, dims), (param, grad)) in shapes.iter().zip(params.iter().zip(grads)) {
        let grad = g.op("Mul", &[grad, &scale], &[]);
        let m = g.input(&first_moment(name), ElemType::F32, dims);
        let v = g.input(&second_moment(name), ElemType::F32, dims);
        let kept = g.op("Mul", &[&m, &beta1], &[]);
        let added = g.op("Mul", &[&grad, &one_minus_beta1], &[]);
        let m_next = g.op("Add", &[&kept, &added], &[]);
        let squared = g.op("Mul", &[&grad, &grad], &[]);
        let kept = g.op("Mul", &[&v, &beta2], &[]);
        let added = g.op("Mul", &[&squared, &one_minus_beta2], &[]);
        let v_next = g.op("Add", &[&kept, &added], &[]);
        let root = g.op("Sqrt", &[&v_next], &[]);
        let denominator = g.op("Add", &[&root, &epsilon], &[]);
        let direction = g.op("Div", &[&m_next, &denominator], &[]);
        let change = g.op("Mul", &[&direction, &step_size], &[]);
        let mut param_next = g.op("Sub", &[param, &change], &[]);
        if decays(name, dims) {
            let shrink = g.op("Mul", &[param, &decay], &[]);
            param_next = g.op("Sub", &[&param_next, &shrink], &[]);
        }
        g.output(&param_next, &updated(name));
        g.output(&m_next, &updated(&first_moment(name)));
        g.output(&v_next, &updated(&second_moment(name)));
    }
    g.output(&norm, GRADIENT_NORM);
}

/// Weight decay applies to the attention and feed-forward matrices only.
fn decays(name: &str, dims: &[i64]) -> bool {
    dims.len() == 2 && name.starts_with('b') && name.contains("_W")
}
