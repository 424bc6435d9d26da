//! Reverse-mode differentiation of graphs written with [`GraphBuilder`]: the gradient nodes are appended to the
//! same graph, so one ONNX model computes the loss and every gradient in a single run.
//!
//! Each operator the models use has a rule below; every rule is checked against central finite differences
//! through ONNX Runtime (`tests` at the end of this file).

use std::collections::{HashMap, HashSet};

use edgerec_core::ElemType;

use crate::graph::{Attr, GraphBuilder, Node, Value, broadcast, normalise_axis, slice_bounds};

/// Operators through which no gradient flows (their outputs are indices, masks or shapes).
const NOT_DIFFERENTIABLE: &[&str] = &["Cast", "Greater", "Less", "Equal", "ConstantOfShape"];

/// Appends to `g` the gradient of the scalar `loss` with respect to each of `wrt` (inputs or initialisers), and
/// returns them in the same order. A value the loss does not depend on gets a zero gradient.
///
/// Panics if the loss depends on `wrt` through an operator without a gradient rule: graphs are written by this
/// crate, so that is a bug, caught by the tests that build every model.
pub fn gradients(g: &mut GraphBuilder, loss: &Value, wrt: &[Value]) -> Vec<Value> {
    assert!(
        g.dims(loss).iter().product::<i64>() == 1,
        "the loss must be a scalar, not {:?}",
        g.dims(loss)
    );
    let forward: Vec<Node> = g.nodes().to_vec();

    // Values that depend on a differentiated value.
    let mut requires: HashSet<String> = wrt.iter().map(|v| v.0.clone()).collect();
    for node in &forward {
        if !NOT_DIFFERENTIABLE.contains(&node.op_type.as_str())
            && g.tensor_type(&node.output).elem == ElemType::F32
            && node.inputs.iter().any(|v| requires.contains(&v.0))
        {
            requires.insert(node.output.0.clone());
        }
    }

    let mut adjoints: HashMap<String, Value> = HashMap::new();
    let loss_dims = g.dims(loss).to_vec();
    let seed = g.f32_tensor(&format!("{}_seed", loss.0), &loss_dims, vec![1.0]);
    adjoints.insert(loss.0.clone(), seed);
    for node in forward.iter().rev() {
        let Some(dy) = adjoints.get(&node.output.0).cloned() else {
            continue;
        };
        for (index, input) in node.inputs.iter().enumerate() {
            if !requires.contains(&input.0) {
                continue;
            }
            let contribution = input_gradient(g, node, index, &dy);
            let total = match adjoints.remove(&input.0) {
                Some(previous) => g.op("Add", &[&previous, &contribution], &[]),
                None => contribution,
            };
            adjoints.insert(input.0.clone(), total);
        }
    }
    wrt.iter()
        .map(|v| match adjoints.get(&v.0) {
            Some(gradient) => gradient.clone(),
            None => {
                let dims = g.dims(v).to_vec();
                let shape = g.i64s(&dims);
                g.op("ConstantOfShape", &[&shape], &[])
            }
        })
        .collect()
}

/// Sums `dy` over the axes that broadcasting added or stretched, giving a tensor of shape `dims`.
fn unbroadcast(g: &mut GraphBuilder, dy: &Value, dims: &[i64]) -> Value {
    let from = g.dims(dy).to_vec();
    if from == dims {
        return dy.clone();
    }
    debug_assert_eq!(broadcast(&from, dims).as_deref(), Some(from.as_slice()));
    let offset = from.len() - dims.len();
    let axes: Vec<i64> = (0..from.len())
        .filter(|&i| i < offset || (dims[i - offset] == 1 && from[i] != 1))
        .map(|i| i as i64)
        .collect();
    let summed = if axes.is_empty() {
        dy.clone()
    } else {
        let axes = g.i64s(&axes);
        g.op("ReduceSum", &[dy, &axes], &[Attr::Int("keepdims", 1)])
    };
    reshape(g, &summed, dims)
}

fn reshape(g: &mut GraphBuilder, x: &Value, dims: &[i64]) -> Value {
    if g.dims(x) == dims {
        return x.clone();
    }
    let shape = g.i64s(dims);
    g.op("Reshape", &[x, &shape], &[])
}

/// Swaps the last two axes.
fn transpose_last(g: &mut GraphBuilder, x: &Value) -> Value {
    let rank = g.dims(x).len() as i64;
    let mut perm: Vec<i64> = (0..rank).collect();
    perm.swap(rank as usize - 1, rank as usize - 2);
    g.op("Transpose", &[x], &[Attr::Ints("perm", perm)])
}

fn reduce_sum_keep(g: &mut GraphBuilder, x: &Value, axis: i64) -> Value {
    let axes = g.i64s(&[axis]);
    g.op("ReduceSum", &[x, &axes], &[Attr::Int("keepdims", 1)])
}

fn zeros(g: &mut GraphBuilder, dims: &[i64]) -> Value {
    let shape = g.i64s(dims);
    g.op("ConstantOfShape", &[&shape], &[])
}

/// The contribution of `node`'s output adjoint `dy` to the adjoint of its input number `index`. One match arm per
/// differentiable operator (each checked against finite differences): long, but a table of independent rules.
fn input_gradient(g: &mut GraphBuilder, node: &Node, index: usize, dy: &Value) -> Value {
    let x = |i: usize| node.inputs[i].clone();
    let y = node.output.clone();
    let dims = g.dims(&x(index)).to_vec();
    match (node.op_type.as_str(), index) {
        ("Identity", 0) => dy.clone(),
        ("Add", _) => unbroadcast(g, dy, &dims),
        ("Sub", 0) => unbroadcast(g, dy, &dims),
        ("Sub", 1) => {
            let negated = g.op("Neg", &[dy], &[]);
            unbroadcast(g, &negated, &dims)
        }
        ("Mul", _) => {
            let product = g.op("Mul", &[dy, &x(1 - index)], &[]);
            unbroadcast(g, &product, &dims)
        }
        ("Div", 0) => {
            let quotient = g.op("Div", &[dy, &x(1)], &[]);
            unbroadcast(g, &quotient, &dims)
        }
        ("Div", 1) => {
            // d(a/b)/db = -(a/b)/b
            let scaled = g.op("Mul", &[dy, &y], &[]);
            let quotient = g.op("Div", &[&scaled, &x(1)], &[]);
            let negated = g.op("Neg", &[&quotient], &[]);
            unbroadcast(g, &negated, &dims)
        }
        ("Neg", 0) => g.op("Neg", &[dy], &[]),
        ("Exp", 0) => g.op("Mul", &[dy, &y], &[]),
        ("Log", 0) => g.op("Div", &[dy, &x(0)], &[]),
        ("Sqrt", 0) => {
            let two = g.f32_scalar(2.0);
            let twice = g.op("Mul", &[&y, &two], &[]);
            g.op("Div", &[dy, &twice], &[])
        }
        ("Relu", 0) => {
            let zero = g.f32_scalar(0.0);
            let active = g.op("Greater", &[&y, &zero], &[]);
            let active = g.op("Cast", &[&active], &[Attr::Int("to", 1)]);
            g.op("Mul", &[dy, &active], &[])
        }
        ("MatMul", 0) => {
            let b_t = transpose_last(g, &x(1));
            let product = g.op("MatMul", &[dy, &b_t], &[]);
            unbroadcast(g, &product, &dims)
        }
        ("MatMul", 1) => {
            let a_dims = g.dims(&x(0)).to_vec();
            if dims.len() == 2 && a_dims.len() > 2 {
                // A weight shared by every row of a batch: fold the batch into the rows, one large product.
                let (k, n) = (dims[0], dims[1]);
                let a = reshape(g, &x(0), &[-1, k]);
                let dy = reshape(g, dy, &[-1, n]);
                let a_t = transpose_last(g, &a);
                g.op("MatMul", &[&a_t, &dy], &[])
            } else {
                let a_t = transpose_last(g, &x(0));
                let product = g.op("MatMul", &[&a_t, dy], &[]);
                unbroadcast(g, &product, &dims)
            }
        }
        ("Transpose", 0) => {
            let perm = node.ints("perm").expect("Transpose has perm");
            let mut inverse = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inverse[p as usize] = i as i64;
            }
            g.op("Transpose", &[dy], &[Attr::Ints("perm", inverse)])
        }
        ("Softmax", 0) => {
            let axis = node.int("axis").unwrap_or(-1);
            let weighted = g.op("Mul", &[dy, &y], &[]);
            let total = reduce_sum_keep(g, &weighted, axis);
            let centred = g.op("Sub", &[dy, &total], &[]);
            g.op("Mul", &[&y, &centred], &[])
        }
        ("LogSoftmax", 0) => {
            let axis = node.int("axis").unwrap_or(-1);
            let probabilities = g.op("Exp", &[&y], &[]);
            let total = reduce_sum_keep(g, dy, axis);
            let spread = g.op("Mul", &[&probabilities, &total], &[]);
            g.op("Sub", &[dy, &spread], &[])
        }
        ("LayerNormalization", _) => layer_norm_gradient(g, node, index, dy),
        ("Gather", 0) => {
            assert_eq!(
                node.int("axis").unwrap_or(0),
                0,
                "Gather is differentiated on axis 0 only"
            );
            let table = zeros(g, &dims);
            let last = g.i64s(&[-1]);
            let indices = g.op("Unsqueeze", &[&x(1), &last], &[]);
            g.op(
                "ScatterND",
                &[&table, &indices, dy],
                &[Attr::Str("reduction", "add")],
            )
        }
        ("GatherElements", 0) => {
            let table = zeros(g, &dims);
            g.op(
                "ScatterElements",
                &[&table, &x(1), dy],
                &[
                    Attr::Int("axis", node.int("axis").unwrap_or(0)),
                    Attr::Str("reduction", "add"),
                ],
            )
        }
        ("Slice", 0) => {
            let (starts, ends) = (
                g.constant(&x(1)).expect("constant starts").to_vec(),
                g.constant(&x(2)).expect("constant ends").to_vec(),
            );
            let axes = g.constant(&x(3)).expect("constant axes").to_vec();
            let rank = dims.len();
            let mut pads = vec![0i64; 2 * rank];
            for ((start, end), axis) in starts.into_iter().zip(ends).zip(axes) {
                let axis = normalise_axis(axis, rank);
                let (begin, end) = slice_bounds(dims[axis], start, end);
                pads[axis] = begin;
                pads[axis + rank] = dims[axis] - end;
            }
            let pads = g.i64s(&pads);
            g.op("Pad", &[dy, &pads], &[])
        }
        ("Reshape" | "Unsqueeze" | "Squeeze", 0) => reshape(g, dy, &dims),
        ("ReduceSum", 0) => {
            let keep = node.int("keepdims").unwrap_or(1) == 1;
            let kept = if keep {
                dy.clone()
            } else {
                let axes: Vec<usize> = match node.inputs.get(1) {
                    Some(axes) => g
                        .constant(axes)
                        .expect("constant axes")
                        .iter()
                        .map(|&a| normalise_axis(a, dims.len()))
                        .collect(),
                    None => (0..dims.len()).collect(),
                };
                let kept_dims: Vec<i64> = (0..dims.len())
                    .map(|i| if axes.contains(&i) { 1 } else { dims[i] })
                    .collect();
                reshape(g, dy, &kept_dims)
            };
            let shape = g.i64s(&dims);
            g.op("Expand", &[&kept, &shape], &[])
        }
        ("Expand", 0) => unbroadcast(g, dy, &dims),
        ("Concat", _) => {
            let axis = normalise_axis(node.int("axis").expect("Concat has axis"), dims.len());
            let offset: i64 = node.inputs[..index].iter().map(|v| g.dims(v)[axis]).sum();
            let (start, end, axes) = (
                g.i64s(&[offset]),
                g.i64s(&[offset + dims[axis]]),
                g.i64s(&[axis as i64]),
            );
            g.op("Slice", &[dy, &start, &end, &axes], &[])
        }
        (op, index) => panic!("no gradient rule for input {index} of {op}"),
    }
}

/// LayerNormalization over the last axis, `y = (x - mean) / sqrt(var + eps) * scale + bias`; the statistics are
/// recomputed rather than taken from the forward node, which keeps the forward graph the one that is served.
fn layer_norm_gradient(g: &mut GraphBuilder, node: &Node, index: usize, dy: &Value) -> Value {
    let (x, scale) = (node.inputs[0].clone(), node.inputs[1].clone());
    let dims = g.dims(&node.inputs[index]).to_vec();
    let x_dims = g.dims(&x).to_vec();
    let axis = node.int("axis").unwrap_or(-1);
    assert!(
        axis == -1 || axis == x_dims.len() as i64 - 1,
        "LayerNormalization is differentiated over the last axis only"
    );
    let epsilon = node.float("epsilon").unwrap_or(1e-5);
    let width = *x_dims.last().expect("LayerNormalization of a scalar");
    let inverse_width = g.f32_scalar(1.0 / width as f32);
    let mean_last = |g: &mut GraphBuilder, v: &Value| {
        let total = reduce_sum_keep(g, v, -1);
        g.op("Mul", &[&total, &inverse_width], &[])
    };
    let mean = mean_last(g, &x);
    let centred = g.op("Sub", &[&x, &mean], &[]);
    let squared = g.op("Mul", &[&centred, &centred], &[]);
    let variance = mean_last(g, &squared);
    let epsilon = g.f32_scalar(epsilon);
    let shifted = g.op("Add", &[&variance, &epsilon], &[]);
    let deviation = g.op("Sqrt", &[&shifted], &[]);
    let inverse = g.op("Reciprocal", &[&deviation], &[]);
    let normalised = g.op("Mul", &[&centred, &inverse], &[]);
    match index {
        0 => {
            let d_normalised = g.op("Mul", &[dy, &scale], &[]);
            let mean_d = mean_last(g, &d_normalised);
            let product = g.op("Mul", &[&d_normalised, &normalised], &[]);
            let mean_product = mean_last(g, &product);
            let correction = g.op("Mul", &[&normalised, &mean_product], &[]);
            let centred_d = g.op("Sub", &[&d_normalised, &mean_d], &[]);
            let corrected = g.op("Sub", &[&centred_d, &correction], &[]);
            g.op("Mul", &[&corrected, &inverse], &[])
        }
        1 => {
            let product = g.op("Mul", &[dy, &normalised], &[]);
            unbroadcast(g, &product, &dims)
        }
        _ => unbroadcast(g, dy, &dims),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix;
    use crate::runtime::{Device, Feed, run_once, session};

    /// A differentiated input: its shape, and whether it must stay positive (logs, square roots, divisors).
    struct Input {
        dims: Vec<i64>,
        positive: bool,
    }

    fn input(dims: &[i64]) -> Input {
        Input {
            dims: dims.to_vec(),
            positive: false,
        }
    }

    fn positive(dims: &[i64]) -> Input {
        Input {
            dims: dims.to_vec(),
            positive: true,
        }
    }

    /// Builds `build(inputs)`, takes the loss `sum(y * r)` for a fixed random `r`, and compares the gradient graph
    /// with central finite differences of the loss, element by element.
    fn check_gradients(inputs: &[Input], build: impl Fn(&mut GraphBuilder, &[Value]) -> Value) {
        let mut rng = SplitMix::new(7);
        let mut g = GraphBuilder::new("gradient-check");
        let values: Vec<Value> = inputs
            .iter()
            .enumerate()
            .map(|(i, input)| g.input(&format!("x{i}"), ElemType::F32, &input.dims))
            .collect();
        let y = build(&mut g, &values);
        let y_dims = g.dims(&y).to_vec();
        let weights = (0..y_dims.iter().product::<i64>())
            .map(|_| rng.uniform() as f32 * 2.0 - 1.0)
            .collect();
        let r = g.f32_tensor("r", &y_dims, weights);
        let weighted = g.op("Mul", &[&y, &r], &[]);
        let loss = g.op("ReduceSum", &[&weighted], &[Attr::Int("keepdims", 0)]);
        let grads = gradients(&mut g, &loss, &values);
        g.output(&loss, "loss");
        for (i, grad) in grads.iter().enumerate() {
            g.output(grad, &format!("grad{i}"));
        }
        let mut session = session(&g.to_bytes(), Device::Cpu, 0, 1).expect("ONNX Runtime session");

        let mut data: Vec<Vec<f32>> = inputs
            .iter()
            .map(|input| {
                (0..input.dims.iter().product::<i64>())
                    .map(|_| {
                        let u = rng.uniform() as f32;
                        if input.positive {
                            0.5 + u
                        } else {
                            // Away from zero, where Relu has its kink.
                            (0.1 + 0.9 * u) * if rng.below(2) == 0 { -1.0 } else { 1.0 }
                        }
                    })
                    .collect()
            })
            .collect();
        let mut run = |data: &[Vec<f32>]| {
            let names: Vec<String> = (0..inputs.len()).map(|i| format!("x{i}")).collect();
            let feeds: Vec<(&str, Feed)> = names
                .iter()
                .zip(inputs.iter().zip(data))
                .map(|(name, (input, values))| {
                    (name.as_str(), Feed::F32(input.dims.clone(), values.clone()))
                })
                .collect();
            run_once(&mut session, &feeds).expect("run")
        };
        let analytic = run(&data);
        let epsilon = 1e-2;
        for i in 0..inputs.len() {
            let gradient = &analytic[&format!("grad{i}")];
            assert_eq!(gradient.len(), data[i].len());
            for j in 0..data[i].len() {
                let original = data[i][j];
                data[i][j] = original + epsilon;
                let up = run(&data)["loss"][0];
                data[i][j] = original - epsilon;
                let down = run(&data)["loss"][0];
                data[i][j] = original;
                let numeric = (up - down) / (2.0 * epsilon);
                let tolerance = 2e-3 + 1e-2 * numeric.abs();
                assert!(
                    (gradient[j] - numeric).abs() <= tolerance,
                    "input {i} element {j}: gradient {} but finite difference {numeric}",
                    gradient[j]
                );
            }
        }
    }

    #[test]
    fn add_sub_mul_div_with_broadcasting() {
        check_gradients(&[input(&[2, 3]), input(&[3])], |g, x| {
            g.op("Add", &[&x[0], &x[1]], &[])
        });
        check_gradients(&[input(&[2, 1, 3]), input(&[2, 3])], |g, x| {
            g.op("Sub", &[&x[0], &x[1]], &[])
        });
        check_gradients(&[input(&[2, 3, 4]), input(&[1, 4])], |g, x| {
            g.op("Mul", &[&x[0], &x[1]], &[])
        });
        check_gradients(&[input(&[2, 3]), positive(&[3])], |g, x| {
            g.op("Div", &[&x[0], &x[1]], &[])
        });
    }

    #[test]
    fn unary_operators() {
        check_gradients(&[input(&[2, 5])], |g, x| g.op("Relu", &[&x[0]], &[]));
        check_gradients(&[input(&[2, 5])], |g, x| g.op("Neg", &[&x[0]], &[]));
        check_gradients(&[input(&[2, 5])], |g, x| g.op("Exp", &[&x[0]], &[]));
        check_gradients(&[positive(&[2, 5])], |g, x| g.op("Log", &[&x[0]], &[]));
        check_gradients(&[positive(&[2, 5])], |g, x| g.op("Sqrt", &[&x[0]], &[]));
        check_gradients(&[input(&[2, 5])], |g, x| g.op("Identity", &[&x[0]], &[]));
    }

    #[test]
    fn matmul_shared_weight_and_batched() {
        check_gradients(&[input(&[2, 3, 4]), input(&[4, 5])], |g, x| {
            g.op("MatMul", &[&x[0], &x[1]], &[])
        });
        check_gradients(&[input(&[2, 3, 4]), input(&[2, 4, 3])], |g, x| {
            g.op("MatMul", &[&x[0], &x[1]], &[])
        });
        check_gradients(&[input(&[3, 4]), input(&[4, 2])], |g, x| {
            g.op("MatMul", &[&x[0], &x[1]], &[])
        });
    }

    #[test]
    fn transpose_softmax_log_softmax() {
        check_gradients(&[input(&[2, 3, 4])], |g, x| {
            g.op("Transpose", &[&x[0]], &[Attr::Ints("perm", vec![2, 0, 1])])
        });
        check_gradients(&[input(&[2, 3, 4])], |g, x| {
            g.op("Softmax", &[&x[0]], &[Attr::Int("axis", -1)])
        });
        check_gradients(&[input(&[3, 5])], |g, x| {
            g.op("LogSoftmax", &[&x[0]], &[Attr::Int("axis", -1)])
        });
    }

    #[test]
    fn layer_normalization() {
        check_gradients(&[input(&[2, 3, 4]), input(&[4]), input(&[4])], |g, x| {
            g.op(
                "LayerNormalization",
                &[&x[0], &x[1], &x[2]],
                &[Attr::Int("axis", -1), Attr::Float("epsilon", 1e-5)],
            )
        });
    }

    #[test]
    fn gather_rows_with_repeated_indices() {
        check_gradients(&[input(&[5, 3])], |g, x| {
            let ids = g.i64_constant(&[2, 3], vec![4, 1, 4, 0, 4, 2]);
            g.op("Gather", &[&x[0], &ids], &[Attr::Int("axis", 0)])
        });
    }

    #[test]
    fn gather_elements() {
        check_gradients(&[input(&[3, 4])], |g, x| {
            let ids = g.i64_constant(&[3, 2], vec![3, 3, 0, 1, 2, 2]);
            g.op("GatherElements", &[&x[0], &ids], &[Attr::Int("axis", -1)])
        });
    }

    #[test]
    fn shape_operators() {
        check_gradients(&[input(&[2, 5, 3])], |g, x| {
            let (start, end, axis) = (g.i64s(&[3]), g.i64s(&[5]), g.i64s(&[1]));
            g.op("Slice", &[&x[0], &start, &end, &axis], &[])
        });
        check_gradients(&[input(&[2, 3, 4])], |g, x| {
            let shape = g.i64s(&[6, 4]);
            g.op("Reshape", &[&x[0], &shape], &[])
        });
        check_gradients(&[input(&[2, 3])], |g, x| {
            let axes = g.i64s(&[1]);
            g.op("Unsqueeze", &[&x[0], &axes], &[])
        });
        check_gradients(&[input(&[2, 1, 3])], |g, x| {
            let shape = g.i64s(&[2, 4, 3]);
            g.op("Expand", &[&x[0], &shape], &[])
        });
    }

    #[test]
    fn concat() {
        check_gradients(&[input(&[2, 1]), input(&[2, 3])], |g, x| {
            g.op("Concat", &[&x[0], &x[1]], &[Attr::Int("axis", 1)])
        });
    }

    #[test]
    fn reduce_sum() {
        check_gradients(&[input(&[2, 3, 4])], |g, x| {
            let axes = g.i64s(&[1]);
            g.op("ReduceSum", &[&x[0], &axes], &[Attr::Int("keepdims", 0)])
        });
        check_gradients(&[input(&[2, 3, 4])], |g, x| {
            let axes = g.i64s(&[-1]);
            g.op("ReduceSum", &[&x[0], &axes], &[Attr::Int("keepdims", 1)])
        });
    }

    /// A value used several times (attention over its own rows): contributions must add up.
    #[test]
    fn self_attention_accumulates_over_uses() {
        check_gradients(&[input(&[2, 3, 4])], |g, x| {
            let t = g.op("Transpose", &[&x[0]], &[Attr::Ints("perm", vec![0, 2, 1])]);
            let logits = g.op("MatMul", &[&x[0], &t], &[]);
            let weights = g.op("Softmax", &[&logits], &[Attr::Int("axis", -1)]);
            g.op("MatMul", &[&weights, &x[0]], &[])
        });
    }

    #[test]
    fn unused_input_has_zero_gradient() {
        let mut g = GraphBuilder::new("unused");
        let used = g.input("used", ElemType::F32, &[2]);
        let unused = g.input("unused", ElemType::F32, &[3]);
        let loss = g.op("ReduceSum", &[&used], &[Attr::Int("keepdims", 0)]);
        let grads = gradients(&mut g, &loss, &[used, unused]);
        assert_eq!(g.dims(&grads[1]), &[3]);
        assert_eq!(
            g.nodes().last().expect("test step succeeds").op_type,
            "ConstantOfShape"
        );
    }
}
