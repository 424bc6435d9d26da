//! The sequence recommender's graph: a SASRec-style causal self-attention model written as ONNX by
//! [`GraphBuilder`], with parameters by name. This module emits the serving (inference) graph; the training graphs
//! are generated from the same parameters.

use std::collections::BTreeMap;

use edgerec_core::{ContextKind, ElemType, FeatureSpec, Padding};

use crate::graph::{Attr, GraphBuilder, Value};
use crate::rng::SplitMix;

/// Added to attention logits that must be ignored; finite, so an all-padding history still gives finite scores.
const MASKED: f32 = -1e9;
const LAYER_NORM_EPSILON: f32 = 1e-5;

/// The shape of the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Architecture {
    pub dim: usize,
    pub blocks: usize,
    pub ffn_dim: usize,
}

impl Default for Architecture {
    fn default() -> Self {
        Self {
            dim: 64,
            blocks: 2,
            ffn_dim: 128,
        }
    }
}

/// A specification or architecture this builder cannot express.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BuildError {
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error(
        "parameter `{name}` is missing or has {found} values where its shape {dims:?} needs {expected}"
    )]
    Parameter {
        name: String,
        dims: Vec<i64>,
        expected: usize,
        found: usize,
    },
}

/// Every trainable tensor by name, with its shape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parameters(pub BTreeMap<String, (Vec<i64>, Vec<f32>)>);

/// Names and shapes of all parameters of the model `spec` and `arch` describe, in a stable order.
pub fn parameter_shapes(
    spec: &FeatureSpec,
    arch: &Architecture,
) -> Result<Vec<(String, Vec<i64>)>, BuildError> {
    check_supported(spec, arch)?;
    let (n, l, d, f) = (
        spec.output.num_items as i64,
        spec.sequence.max_len as i64,
        arch.dim as i64,
        arch.ffn_dim as i64,
    );
    let mut shapes = vec![("E".to_string(), vec![n, d]), ("P".to_string(), vec![l, d])];
    for feature in &spec.item_features {
        shapes.push((
            format!("emb_{}", feature.name),
            vec![i64::from(feature.cardinality), d],
        ));
    }
    for feature in &spec.context {
        if let ContextKind::Categorical { cardinality } = feature.kind {
            shapes.push((
                format!("emb_{}", feature.name),
                vec![i64::from(cardinality), d],
            ));
        }
    }
    for block in 0..arch.blocks {
        let p = |s: &str| format!("b{block}_{s}");
        for (name, dims) in [
            ("ln1_s", vec![d]),
            ("ln1_b", vec![d]),
            ("Wq", vec![d, d]),
            ("bq", vec![d]),
            ("Wk", vec![d, d]),
            ("bk", vec![d]),
            ("Wv", vec![d, d]),
            ("bv", vec![d]),
            ("Wo", vec![d, d]),
            ("bo", vec![d]),
            ("ln2_s", vec![d]),
            ("ln2_b", vec![d]),
            ("W1", vec![d, f]),
            ("b1", vec![f]),
            ("W2", vec![f, d]),
            ("b2", vec![d]),
        ] {
            shapes.push((p(name), dims));
        }
    }
    shapes.push(("lnf_s".to_string(), vec![d]));
    shapes.push(("lnf_b".to_string(), vec![d]));
    Ok(shapes)
}

fn check_supported(spec: &FeatureSpec, arch: &Architecture) -> Result<(), BuildError> {
    if spec.sequence.padding != Padding::Left {
        return Err(BuildError::Unsupported(
            "the sequence model reads left-padded histories".into(),
        ));
    }
    if let Some(numeric) = spec.context.iter().find(|c| c.kind == ContextKind::Numeric) {
        return Err(BuildError::Unsupported(format!(
            "numeric context feature `{}`",
            numeric.name
        )));
    }
    if arch.dim == 0 || arch.blocks == 0 || arch.ffn_dim == 0 {
        return Err(BuildError::Unsupported(format!("architecture {arch:?}")));
    }
    Ok(())
}

impl Parameters {
    /// Seeded initialisation: embeddings and weights normal with standard deviation 0.1 ([`SplitMix`]),
    /// biases 0, layer-norm scales 1.
    pub fn init(spec: &FeatureSpec, arch: &Architecture, seed: u64) -> Result<Self, BuildError> {
        let mut rng = SplitMix::new(seed);
        let mut parameters = BTreeMap::new();
        for (name, dims) in parameter_shapes(spec, arch)? {
            let len = dims.iter().product::<i64>() as usize;
            let is_vector = dims.len() == 1;
            let data = if is_vector && name.ends_with("_s") {
                vec![1.0; len]
            } else if is_vector {
                vec![0.0; len]
            } else {
                (0..len).map(|_| (0.1 * rng.normal()) as f32).collect()
            };
            parameters.insert(name, (dims, data));
        }
        Ok(Self(parameters))
    }

    fn tensor(&self, g: &mut GraphBuilder, name: &str) -> Result<Value, BuildError> {
        let (dims, data) = self.0.get(name).ok_or_else(|| BuildError::Parameter {
            name: name.into(),
            dims: vec![],
            expected: 0,
            found: 0,
        })?;
        let expected = dims.iter().product::<i64>() as usize;
        if data.len() != expected {
            return Err(BuildError::Parameter {
                name: name.into(),
                dims: dims.clone(),
                expected,
                found: data.len(),
            });
        }
        Ok(g.f32_tensor(name, dims, data.clone()))
    }
}

/// How [`sequence_model`] is unrolled: the serving graph scores the last position of one user; the training graph
/// runs every position of a batch, with dropout.
#[derive(Debug, Clone)]
pub(crate) struct Unroll {
    pub batch: i64,
    /// Compute only the last position in the last block (serving: only it is scored).
    pub last_only: bool,
    /// Dropout masks (`0` or `1 / (1 - p)` per element, `[batch, len, dim]`), one per dropout site, fed at run time
    /// so that training is reproducible from the seed and the step number.
    pub dropout: Vec<Value>,
    /// Rows packed with several histories (training, [`POSITIONS`] and [`SEGMENTS`] inputs): each position attends
    /// only within its segment and takes its position embedding from [`POSITIONS`]. Otherwise one history a row,
    /// left-padded, as serving feeds it.
    pub packed: bool,
}

/// Number of dropout sites: after the embeddings and after each block's attention and feed-forward outputs.
pub fn dropout_sites(arch: &Architecture) -> usize {
    1 + 2 * arch.blocks
}

/// The shared body of the serving and training graphs: embeddings, causal self-attention blocks and the final
/// layer norm; returns the user states `[batch, positions, dim]` (`positions` is 1 when `last_only`).
pub(crate) fn sequence_model(
    g: &mut GraphBuilder,
    spec: &FeatureSpec,
    arch: &Architecture,
    p: &BTreeMap<String, Value>,
    unroll: &Unroll,
) -> Value {
    let (batch, l) = (unroll.batch, spec.sequence.max_len as i64);
    let w = |name: &str| p[name].clone();
    let dropout = |g: &mut GraphBuilder, v: Value, site: usize| match unroll.dropout.get(site) {
        Some(mask) => g.op("Mul", &[&v, mask], &[]),
        None => v,
    };

    let ids = g.input(&spec.sequence.input, ElemType::I64, &[batch, l]);
    let mut x = g.op("Gather", &[&w("E"), &ids], &[Attr::Int("axis", 0)]);
    let positions = if unroll.packed {
        let positions = g.input(POSITIONS, ElemType::I64, &[batch, l]);
        g.op("Gather", &[&w("P"), &positions], &[Attr::Int("axis", 0)])
    } else {
        w("P")
    };
    x = g.op("Add", &[&x, &positions], &[]);
    for feature in &spec.item_features {
        let values = g.input(&feature.input, ElemType::I64, &[batch, l]);
        let embedded = g.op(
            "Gather",
            &[&w(&format!("emb_{}", feature.name)), &values],
            &[Attr::Int("axis", 0)],
        );
        x = g.op("Add", &[&x, &embedded], &[]);
    }
    x = dropout(g, x, 0);
    let zero = g.i64_constant(&[], vec![0]);
    let present = g.op("Greater", &[&ids, &zero], &[]);
    let mask = g.op("Cast", &[&present], &[Attr::Int("to", 1)]);
    let axis2 = g.i64s(&[2]);
    let mask3 = g.op("Unsqueeze", &[&mask, &axis2], &[]); // [B, L, 1]
    x = g.op("Mul", &[&x, &mask3], &[]);
    let one = g.f32_scalar(1.0);
    let masked = g.f32_scalar(MASKED);
    let axis1 = g.i64s(&[1]);
    let key_penalty = if unroll.packed {
        // A query attends to the keys of its own segment: padding (segment 0) is no real query's.
        let segments = g.input(SEGMENTS, ElemType::I64, &[batch, l]);
        let queries = g.op("Unsqueeze", &[&segments, &axis2], &[]); // [B, L, 1]
        let keys = g.op("Unsqueeze", &[&segments, &axis1], &[]); // [B, 1, L]
        let same = g.op("Equal", &[&queries, &keys], &[]);
        let same = g.op("Cast", &[&same], &[Attr::Int("to", 1)]);
        let other = g.op("Sub", &[&one, &same], &[]);
        g.op("Mul", &[&other, &masked], &[]) // [B, L, L]
    } else {
        let absent = g.op("Sub", &[&one, &mask], &[]);
        let key_penalty = g.op("Mul", &[&absent, &masked], &[]);
        g.op("Unsqueeze", &[&key_penalty, &axis1], &[]) // [B, 1, L]
    };
    let causal: Vec<f32> = (0..l)
        .flat_map(|q| (0..l).map(move |k| if k <= q { 0.0 } else { MASKED }))
        .collect();
    let causal = g.f32_tensor("causal_mask", &[l, l], causal);
    let scale = g.f32_scalar(1.0 / (arch.dim as f32).sqrt());
    let last = |g: &mut GraphBuilder, v: &Value| {
        let (start, end, axis) = (g.i64s(&[l - 1]), g.i64s(&[l]), g.i64s(&[1]));
        g.op("Slice", &[v, &start, &end, &axis], &[])
    };
    let layer_norm = |g: &mut GraphBuilder, v: &Value, s: Value, b: Value| {
        g.op(
            "LayerNormalization",
            &[v, &s, &b],
            &[
                Attr::Int("axis", -1),
                Attr::Float("epsilon", LAYER_NORM_EPSILON),
            ],
        )
    };
    let linear = |g: &mut GraphBuilder, v: &Value, weight: Value, bias: Value| {
        let product = g.op("MatMul", &[v, &weight], &[]);
        g.op("Add", &[&product, &bias], &[])
    };

    let mut mask_rows = mask3.clone();
    for block in 0..arch.blocks {
        let b = |s: &str| w(&format!("b{block}_{s}"));
        let shortened = unroll.last_only && block + 1 == arch.blocks;
        let a = layer_norm(g, &x, b("ln1_s"), b("ln1_b"));
        let (a_q, x_q) = if shortened {
            mask_rows = last(g, &mask3);
            (last(g, &a), last(g, &x))
        } else {
            (a.clone(), x.clone())
        };
        let q = linear(g, &a_q, b("Wq"), b("bq"));
        let k = linear(g, &a, b("Wk"), b("bk"));
        let v = linear(g, &a, b("Wv"), b("bv"));
        let k_t = g.op("Transpose", &[&k], &[Attr::Ints("perm", vec![0, 2, 1])]);
        let mut logits = g.op("MatMul", &[&q, &k_t], &[]);
        logits = g.op("Mul", &[&logits, &scale], &[]);
        if !shortened {
            // The last position may attend to every earlier one: the causal mask only matters for the others.
            logits = g.op("Add", &[&logits, &causal], &[]);
        }
        logits = g.op("Add", &[&logits, &key_penalty], &[]);
        let attention = g.op("Softmax", &[&logits], &[Attr::Int("axis", -1)]);
        let mixed = g.op("MatMul", &[&attention, &v], &[]);
        let attended = linear(g, &mixed, b("Wo"), b("bo"));
        let attended = dropout(g, attended, 1 + 2 * block);
        let mut h = g.op("Add", &[&x_q, &attended], &[]);
        let z = layer_norm(g, &h, b("ln2_s"), b("ln2_b"));
        let hidden = linear(g, &z, b("W1"), b("b1"));
        let hidden = g.op("Relu", &[&hidden], &[]);
        let ffn = linear(g, &hidden, b("W2"), b("b2"));
        let ffn = dropout(g, ffn, 2 + 2 * block);
        h = g.op("Add", &[&h, &ffn], &[]);
        x = g.op("Mul", &[&h, &mask_rows], &[]);
    }
    layer_norm(g, &x, w("lnf_s"), w("lnf_b"))
}

/// Adds the context embeddings to user states `[batch, positions, dim]`; context inputs are `[batch, positions]`.
fn add_context(
    g: &mut GraphBuilder,
    spec: &FeatureSpec,
    p: &BTreeMap<String, Value>,
    user: Value,
    input_dims: &[i64],
) -> Value {
    let mut user = user;
    for feature in &spec.context {
        let value = g.input(&feature.input, ElemType::I64, input_dims);
        let embedded = g.op(
            "Gather",
            &[&p[&format!("emb_{}", feature.name)], &value],
            &[Attr::Int("axis", 0)],
        );
        user = g.op("Add", &[&user, &embedded], &[]);
    }
    user
}

/// The serving graph for one user: inputs as `spec` describes them, output `[1, num_items]` scores. Only the last
/// position is computed in the last block, since only it is scored.
pub fn inference_graph(
    spec: &FeatureSpec,
    arch: &Architecture,
    params: &Parameters,
) -> Result<Vec<u8>, BuildError> {
    let mut g = GraphBuilder::new("edgerec-sasrec");
    let scores = serving_scores(&mut g, spec, arch, params)?;
    g.output(&scores, &spec.output.name);
    Ok(g.to_bytes())
}

/// The model's `[1, num_items]` scores in `g`, from the inputs `spec` describes.
pub(crate) fn serving_scores(
    g: &mut GraphBuilder,
    spec: &FeatureSpec,
    arch: &Architecture,
    params: &Parameters,
) -> Result<Value, BuildError> {
    let shapes = parameter_shapes(spec, arch)?;
    let d = arch.dim as i64;
    let mut p = BTreeMap::new();
    for (name, _) in &shapes {
        p.insert(name.clone(), params.tensor(g, name)?);
    }
    let unroll = Unroll {
        batch: 1,
        last_only: true,
        dropout: vec![],
        packed: false,
    };
    let states = sequence_model(g, spec, arch, &p, &unroll); // [1, 1, d]
    let row = g.i64s(&[1, d]);
    let user = g.op("Reshape", &[&states, &row], &[]);
    let user = add_context(g, spec, &p, user, &[1]);
    let items_t = g.op("Transpose", &[&p["E"]], &[Attr::Ints("perm", vec![1, 0])]);
    Ok(g.op("MatMul", &[&user, &items_t], &[]))
}

/// The training loss of a batch on graph `g`: every position predicts the item that follows it, with
/// cross-entropy weighted by `target_weights` (`0` at padding, `1 / targets in the batch` elsewhere). With
/// `sampled_negatives` = 0 the softmax runs over the whole catalogue; otherwise over the target and that many
/// negatives drawn uniformly for the batch (input [`NEGATIVES`]), a negative equal to the target being masked.
/// Parameters are the values `p`; context inputs are `[batch, len]` (the context of each target).
pub(crate) fn training_loss(
    g: &mut GraphBuilder,
    spec: &FeatureSpec,
    arch: &Architecture,
    p: &BTreeMap<String, Value>,
    batch: i64,
    dropout: Vec<Value>,
    sampled_negatives: usize,
) -> Value {
    let (l, d) = (spec.sequence.max_len as i64, arch.dim as i64);
    let unroll = Unroll {
        batch,
        last_only: false,
        dropout,
        packed: true,
    };
    let states = sequence_model(g, spec, arch, p, &unroll); // [B, L, d]
    let states = add_context(g, spec, p, states, &[batch, l]);
    let rows = g.i64s(&[batch * l, d]);
    let users = g.op("Reshape", &[&states, &rows], &[]);
    let targets = g.input(TARGETS, ElemType::I64, &[batch, l]);
    let weights = g.input(TARGET_WEIGHTS, ElemType::F32, &[batch, l]);
    let column = g.i64s(&[batch * l, 1]);
    let targets = g.op("Reshape", &[&targets, &column], &[]);
    let weights = g.op("Reshape", &[&weights, &column], &[]);
    let picked = if sampled_negatives == 0 {
        let items_t = g.op("Transpose", &[&p["E"]], &[Attr::Ints("perm", vec![1, 0])]);
        let logits = g.op("MatMul", &[&users, &items_t], &[]); // [B·L, N]
        let log_probabilities = g.op("LogSoftmax", &[&logits], &[Attr::Int("axis", -1)]);
        g.op(
            "GatherElements",
            &[&log_probabilities, &targets],
            &[Attr::Int("axis", 1)],
        )
    } else {
        let k = sampled_negatives as i64;
        let negatives = g.input(NEGATIVES, ElemType::I64, &[k]);
        let flat = g.i64s(&[batch * l]);
        let target_ids = g.op("Reshape", &[&targets, &flat], &[]);
        let positive = g.op("Gather", &[&p["E"], &target_ids], &[Attr::Int("axis", 0)]);
        let product = g.op("Mul", &[&users, &positive], &[]);
        let axis1 = g.i64s(&[1]);
        let positive_logit = g.op(
            "ReduceSum",
            &[&product, &axis1],
            &[Attr::Int("keepdims", 1)],
        );
        let sampled = g.op("Gather", &[&p["E"], &negatives], &[Attr::Int("axis", 0)]); // [K, d]
        let sampled_t = g.op("Transpose", &[&sampled], &[Attr::Ints("perm", vec![1, 0])]);
        let negative_logits = g.op("MatMul", &[&users, &sampled_t], &[]); // [B·L, K]
        let hit = g.op("Equal", &[&targets, &negatives], &[]);
        let hit = g.op("Cast", &[&hit], &[Attr::Int("to", 1)]);
        let masked = g.f32_scalar(MASKED);
        let penalty = g.op("Mul", &[&hit, &masked], &[]);
        let negative_logits = g.op("Add", &[&negative_logits, &penalty], &[]);
        let logits = g.op(
            "Concat",
            &[&positive_logit, &negative_logits],
            &[Attr::Int("axis", 1)],
        );
        let log_probabilities = g.op("LogSoftmax", &[&logits], &[Attr::Int("axis", -1)]);
        let (start, end) = (g.i64s(&[0]), g.i64s(&[1]));
        g.op("Slice", &[&log_probabilities, &start, &end, &axis1], &[])
    };
    let weighted = g.op("Mul", &[&picked, &weights], &[]);
    let total = g.op("ReduceSum", &[&weighted], &[Attr::Int("keepdims", 0)]);
    g.op("Neg", &[&total], &[])
}

/// Training graph input with sampled softmax: the negative item indices of the batch (`[negatives]`).
pub const NEGATIVES: &str = "negatives";
/// Training graph input: the serving position of each item of a packed row (`[batch, len]`, `0..len`).
pub const POSITIONS: &str = "positions";
/// Training graph input: which history of a packed row each position belongs to (`[batch, len]`, 1 for the
/// first, 0 at padding).
pub const SEGMENTS: &str = "segments";
/// Training graph input: the next item at each position (`[batch, len]`, 0 where there is none).
pub const TARGETS: &str = "targets";
/// Training graph input: each target's weight in the loss (`[batch, len]`).
pub const TARGET_WEIGHTS: &str = "target_weights";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Device, Feed, run_once, session};
    use edgerec_core::{OutputSpec, SequenceSpec};

    fn spec() -> FeatureSpec {
        FeatureSpec {
            version: edgerec_core::FEATURE_SPEC_VERSION,
            sequence: SequenceSpec {
                input: "item_ids".into(),
                max_len: 6,
                padding: Padding::Left,
            },
            item_features: vec![],
            context: vec![],
            output: OutputSpec {
                name: "scores".into(),
                num_items: 13,
            },
        }
    }

    /// The training graph's loss on one row, to compare with what serving scores.
    struct TrainedForward {
        session: ort::session::Session,
    }

    impl TrainedForward {
        fn new(spec: &FeatureSpec, arch: &Architecture, params: &Parameters) -> Self {
            let mut g = GraphBuilder::new("training-forward");
            let mut p = BTreeMap::new();
            for (name, _) in parameter_shapes(spec, arch).expect("shapes") {
                p.insert(name.clone(), params.tensor(&mut g, &name).expect("tensor"));
            }
            let loss = training_loss(&mut g, spec, arch, &p, 1, vec![], 0);
            g.output(&loss, "loss");
            let session = session(&g.to_bytes(), Device::Cpu, 0, 1).expect("training session");
            Self { session }
        }

        /// The loss of a row given as its items, positions, segments and targets.
        fn loss(&mut self, row: [&[i64]; 4], weights: Vec<f32>) -> f32 {
            let [history, positions, segments, targets] = row.map(<[i64]>::to_vec);
            let dims = vec![1, history.len() as i64];
            run_once(
                &mut self.session,
                &[
                    ("item_ids", Feed::I64(dims.clone(), history)),
                    (POSITIONS, Feed::I64(dims.clone(), positions)),
                    (SEGMENTS, Feed::I64(dims.clone(), segments)),
                    (TARGETS, Feed::I64(dims.clone(), targets)),
                    (TARGET_WEIGHTS, Feed::F32(dims, weights)),
                ],
            )
            .expect("training forward")["loss"][0]
        }
    }

    /// A small model's serving session and its training forward pass, from the same parameters.
    fn small_model_sessions() -> (ort::session::Session, TrainedForward) {
        let (spec, arch) = (
            spec(),
            Architecture {
                dim: 8,
                blocks: 2,
                ffn_dim: 16,
            },
        );
        let params = Parameters::init(&spec, &arch, 11).expect("initialises");
        let onnx = inference_graph(&spec, &arch, &params).expect("builds");
        let served = session(&onnx, Device::Cpu, 0, 1).expect("serving session");
        (served, TrainedForward::new(&spec, &arch, &params))
    }

    /// Minus the log-softmax of the served scores of `history` (left-padded to 6) at `target`.
    fn served_loss(served: &mut ort::session::Session, history: &[i64], target: i64) -> f32 {
        let padded: Vec<i64> = std::iter::repeat_n(0, 6 - history.len())
            .chain(history.iter().copied())
            .collect();
        let scores = &run_once(served, &[("item_ids", Feed::I64(vec![1, 6], padded))])
            .expect("serves")["scores"];
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let log_sum = max + scores.iter().map(|s| (s - max).exp()).sum::<f32>().ln();
        log_sum - scores[target as usize]
    }

    /// The served graph (last position only in the last block) computes what training optimises: the training
    /// loss of a single target at the last position is minus the log-softmax of the served scores there.
    #[test]
    fn served_scores_are_the_trained_forward_pass() {
        let (mut served, mut trained) = small_model_sessions();
        for (history, target) in [
            (vec![0, 0, 3, 7, 1, 12], 5i64),
            (vec![0, 0, 0, 0, 0, 4], 4),
            (vec![2, 9, 3, 7, 1, 5], 12),
        ] {
            let present: Vec<i64> = history.iter().map(|&h| i64::from(h > 0)).collect();
            let start = history.iter().position(|&h| h > 0).expect("an item");
            let expected = served_loss(&mut served, &history[start..], target);
            let positions: Vec<i64> = (0..6).collect();
            let mut targets = vec![0i64; 6];
            targets[5] = target;
            let mut weights = vec![0f32; 6];
            weights[5] = 1.0;
            let loss = trained.loss([&history, &positions, &present, &targets], weights);
            assert!(
                (loss - expected).abs() < 1e-4,
                "training loss {loss}, served {expected}"
            );
        }
    }

    /// Two histories packed in one row train what each would alone: neither attends to the other, and each item
    /// has the position serving gives it.
    #[test]
    fn a_packed_row_trains_each_history_as_served() {
        let (mut served, mut trained) = small_model_sessions();
        let first = served_loss(&mut served, &[3, 7], 5);
        let second = served_loss(&mut served, &[2, 9, 4, 1], 12);
        let row = [3, 7, 2, 9, 4, 1];
        let positions = [4, 5, 2, 3, 4, 5];
        let segments = [1, 1, 2, 2, 2, 2];
        let targets = [0, 5, 0, 0, 0, 12];
        let both = trained.loss(
            [&row, &positions, &segments, &targets],
            vec![0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        );
        assert!(
            (both - (first + second)).abs() < 1e-4,
            "packed {both}, alone {first} + {second}"
        );
        // Attending across segments would change the second history's loss.
        let unsegmented = trained.loss(
            [&row, &positions, &[1; 6], &targets],
            vec![0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
        );
        assert!(
            (unsegmented - second).abs() > 1e-3,
            "{unsegmented} vs {second}"
        );
    }
}
