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

/// The serving graph for one user: inputs as `spec` describes them, output `[1, num_items]` scores. Only the last
/// position is computed in the last block, since only it is scored.
pub fn inference_graph(
    spec: &FeatureSpec,
    arch: &Architecture,
    params: &Parameters,
) -> Result<Vec<u8>, BuildError> {
    let shapes = parameter_shapes(spec, arch)?;
    let (l, d) = (spec.sequence.max_len as i64, arch.dim as i64);
    let mut g = GraphBuilder::new("edgerec-sasrec");
    let mut p = BTreeMap::new();
    for (name, _) in &shapes {
        p.insert(name.clone(), params.tensor(&mut g, name)?);
    }
    let w = |name: &str| p[name].clone();

    let ids = g.input(&spec.sequence.input, ElemType::I64, &[1, l]);
    let mut x = g.op("Gather", &[&w("E"), &ids], &[Attr::Int("axis", 0)]);
    x = g.op("Add", &[&x, &w("P")], &[]);
    for feature in &spec.item_features {
        let values = g.input(&feature.input, ElemType::I64, &[1, l]);
        let embedded = g.op(
            "Gather",
            &[&w(&format!("emb_{}", feature.name)), &values],
            &[Attr::Int("axis", 0)],
        );
        x = g.op("Add", &[&x, &embedded], &[]);
    }
    let zero = g.i64_constant(&[], vec![0]);
    let present = g.op("Greater", &[&ids, &zero], &[]);
    let mask = g.op("Cast", &[&present], &[Attr::Int("to", 1)]);
    let axis2 = g.i64_constant(&[1], vec![2]);
    let mask3 = g.op("Unsqueeze", &[&mask, &axis2], &[]); // [1, L, 1]
    x = g.op("Mul", &[&x, &mask3], &[]);
    let one = g.f32_scalar(1.0);
    let masked = g.f32_scalar(MASKED);
    let absent = g.op("Sub", &[&one, &mask], &[]);
    let key_penalty = g.op("Mul", &[&absent, &masked], &[]);
    let axis1 = g.i64_constant(&[1], vec![1]);
    let key_penalty = g.op("Unsqueeze", &[&key_penalty, &axis1], &[]); // [1, 1, L]
    let causal: Vec<f32> = (0..l)
        .flat_map(|q| (0..l).map(move |k| if k <= q { 0.0 } else { MASKED }))
        .collect();
    let causal = g.f32_tensor("causal_mask", &[l, l], causal);
    let scale = g.f32_scalar(1.0 / (arch.dim as f32).sqrt());
    let last = |g: &mut GraphBuilder, v: &Value| {
        let (start, end, axis) = (
            g.i64_constant(&[1], vec![l - 1]),
            g.i64_constant(&[1], vec![l]),
            g.i64_constant(&[1], vec![1]),
        );
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
        let last_block = block + 1 == arch.blocks;
        let a = layer_norm(&mut g, &x, b("ln1_s"), b("ln1_b"));
        let (a_q, x_q) = if last_block {
            (last(&mut g, &a), last(&mut g, &x))
        } else {
            (a.clone(), x.clone())
        };
        if last_block {
            mask_rows = last(&mut g, &mask3);
        }
        let q = linear(&mut g, &a_q, b("Wq"), b("bq"));
        let k = linear(&mut g, &a, b("Wk"), b("bk"));
        let v = linear(&mut g, &a, b("Wv"), b("bv"));
        let k_t = g.op("Transpose", &[&k], &[Attr::Ints("perm", vec![0, 2, 1])]);
        let mut logits = g.op("MatMul", &[&q, &k_t], &[]);
        logits = g.op("Mul", &[&logits, &scale], &[]);
        if !last_block {
            // The last position may attend to every earlier one: the causal mask only matters for the others.
            logits = g.op("Add", &[&logits, &causal], &[]);
        }
        logits = g.op("Add", &[&logits, &key_penalty], &[]);
        let attention = g.op("Softmax", &[&logits], &[Attr::Int("axis", -1)]);
        let mixed = g.op("MatMul", &[&attention, &v], &[]);
        let attended = linear(&mut g, &mixed, b("Wo"), b("bo"));
        let mut h = g.op("Add", &[&x_q, &attended], &[]);
        let z = layer_norm(&mut g, &h, b("ln2_s"), b("ln2_b"));
        let hidden = linear(&mut g, &z, b("W1"), b("b1"));
        let hidden = g.op("Relu", &[&hidden], &[]);
        let ffn = linear(&mut g, &hidden, b("W2"), b("b2"));
        h = g.op("Add", &[&h, &ffn], &[]);
        x = g.op("Mul", &[&h, &mask_rows], &[]);
    }
    let normalised = layer_norm(&mut g, &x, w("lnf_s"), w("lnf_b")); // [1, 1, d]
    let row = g.i64_constant(&[2], vec![1, d]);
    let mut user = g.op("Reshape", &[&normalised, &row], &[]);
    for feature in &spec.context {
        let value = g.input(&feature.input, ElemType::I64, &[1]);
        let embedded = g.op(
            "Gather",
            &[&w(&format!("emb_{}", feature.name)), &value],
            &[Attr::Int("axis", 0)],
        );
        user = g.op("Add", &[&user, &embedded], &[]);
    }
    let items_t = g.op("Transpose", &[&w("E")], &[Attr::Ints("perm", vec![1, 0])]);
    let scores = g.op("MatMul", &[&user, &items_t], &[]);
    g.output(&scores, &spec.output.name);
    Ok(g.to_bytes())
}
