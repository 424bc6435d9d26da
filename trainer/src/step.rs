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
/// Scalar outputs.
pub const LOSS: &str = "loss";
pub const GRADIENT_NORM: &str = "gradient_norm";

/// A generated training step and what its runner needs to feed it.
#[derive(Debug, Clone)]
pub struct StepGraph {
    pub onnx: Vec<u8>,
    pub batch: usize,
    /// Parameters in graph order, with shapes.
    pub parameters: Vec<(String, Vec<i64>)>,
    /// Dropout inputs of the graph ([`dropout_input`], `[batch, len, dim]` each).
    pub dropout_sites: usize,
    /// Length of the [`crate::model::NEGATIVES`] input; 0 for full softmax, which has none.
    pub sampled_negatives: usize,
}

/// The training step for batches of `batch` sequences. `dropout` only decides whether dropout inputs exist; the
/// runner draws the masks (and the negatives, with `sampled_negatives` > 0).
pub fn step_graph(
    spec: &FeatureSpec,
    arch: &Architecture,
    batch: usize,
    dropout: bool,
    sampled_negatives: usize,
    optimiser: &AdamW,
) -> Result<StepGraph, BuildError> {
    let shapes = parameter_shapes(spec, arch)?;
    let (b, l, d) = (batch as i64, spec.sequence.max_len as i64, arch.dim as i64);
    let mut g = GraphBuilder::new("edgerec-sasrec-train-step");
    let mut p = BTreeMap::new();
    let mut params = Vec::with_capacity(shapes.len());
    for (name, dims) in &shapes {
        let value = g.input(name, ElemType::F32, dims);
        p.insert(name.clone(), value.clone());
        params.push(value);
    }
    let sites = if dropout { dropout_sites(arch) } else { 0 };
    let masks = (0..sites)
        .map(|site| g.input(&dropout_input(site), ElemType::F32, &[b, l, d]))
        .collect();
    let loss = training_loss(&mut g, spec, arch, &p, b, masks, sampled_negatives);
    let grads = gradients(&mut g, &loss, &params);

    // Global-norm clipping: scale = clip / max(norm, clip), 1 whenever the norm is within bounds.
    let mut squared_norm: Option<Value> = None;
    for grad in &grads {
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
    for ((name, dims), (param, grad)) in shapes.iter().zip(params.iter().zip(&grads)) {
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
    g.output(&loss, LOSS);
    g.output(&norm, GRADIENT_NORM);
    Ok(StepGraph {
        onnx: g.to_bytes(),
        batch,
        parameters: shapes,
        dropout_sites: sites,
        sampled_negatives,
    })
}

/// Weight decay applies to the attention and feed-forward matrices only.
fn decays(name: &str, dims: &[i64]) -> bool {
    dims.len() == 2 && name.starts_with('b') && name.contains("_W")
}
