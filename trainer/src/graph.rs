//! Building ONNX graphs in Rust: the model builder and the training-step graphs emit their nodes through
//! [`GraphBuilder`], which writes the ONNX protobuf (tract-onnx's generated types) that ONNX Runtime and tract load.
//!
//! Every value's element type and static shape is known as it is created: training graphs have a fixed batch
//! shape, and [`crate::autodiff`] needs the shapes to undo broadcasting.

use std::collections::HashMap;

use edgerec_core::ElemType;
use prost::Message;
use tract_onnx::pb;

/// The ONNX opset the graphs are written for: LayerNormalization and ScatterND with `reduction="add"` need 17.
pub const OPSET: i64 = 17;
const IR_VERSION: i64 = 8;

/// A named tensor in the graph under construction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Value(pub String);

/// A node attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Int(&'static str, i64),
    Ints(&'static str, Vec<i64>),
    Float(&'static str, f32),
    Str(&'static str, &'static str),
}

impl Attr {
    fn to_proto(&self) -> pb::AttributeProto {
        use pb::attribute_proto::AttributeType;
        let (name, mut proto) = match self {
            Attr::Int(name, i) => (
                name,
                pb::AttributeProto {
                    r#type: AttributeType::Int as i32,
                    i: *i,
                    ..Default::default()
                },
            ),
            Attr::Ints(name, ints) => (
                name,
                pb::AttributeProto {
                    r#type: AttributeType::Ints as i32,
                    ints: ints.clone(),
                    ..Default::default()
                },
            ),
            Attr::Float(name, f) => (
                name,
                pb::AttributeProto {
                    r#type: AttributeType::Float as i32,
                    f: *f,
                    ..Default::default()
                },
            ),
            Attr::Str(name, s) => (
                name,
                pb::AttributeProto {
                    r#type: AttributeType::String as i32,
                    s: s.as_bytes().to_vec(),
                    ..Default::default()
                },
            ),
        };
        proto.name = (*name).into();
        proto
    }
}

fn data_type(elem: ElemType) -> i32 {
    use pb::tensor_proto::DataType;
    match elem {
        ElemType::I64 => DataType::Int64 as i32,
        ElemType::F32 => DataType::Float as i32,
        ElemType::Other => DataType::Bool as i32,
    }
}

fn value_info(name: &str, elem: ElemType, dims: &[i64]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension};
    let shape = pb::TensorShapeProto {
        dim: dims
            .iter()
            .map(|&d| Dimension {
                value: Some(dimension::Value::DimValue(d)),
                ..Default::default()
            })
            .collect(),
    };
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: data_type(elem),
                shape: Some(shape),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One node as it was added: what differentiation reads back.
#[derive(Debug, Clone)]
pub struct Node {
    pub op_type: String,
    pub inputs: Vec<Value>,
    pub output: Value,
    pub attrs: Vec<Attr>,
}

impl Node {
    pub fn int(&self, name: &str) -> Option<i64> {
        self.attrs.iter().find_map(|a| match a {
            Attr::Int(n, i) if *n == name => Some(*i),
            _ => None,
        })
    }

    pub fn ints(&self, name: &str) -> Option<&[i64]> {
        self.attrs.iter().find_map(|a| match a {
            Attr::Ints(n, i) if *n == name => Some(i.as_slice()),
            _ => None,
        })
    }

    pub fn float(&self, name: &str) -> Option<f32> {
        self.attrs.iter().find_map(|a| match a {
            Attr::Float(n, f) if *n == name => Some(*f),
            _ => None,
        })
    }
}

/// The element type and static shape of a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorType {
    pub elem: ElemType,
    pub dims: Vec<i64>,
}

/// An ONNX graph under construction. Node outputs get unique generated names; inputs, parameters and outputs keep
/// the names they are given.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    name: String,
    nodes: Vec<Node>,
    initializers: Vec<pb::TensorProto>,
    inputs: Vec<pb::ValueInfoProto>,
    outputs: Vec<pb::ValueInfoProto>,
    types: HashMap<String, TensorType>,
    /// int64 constants (shapes, axes, slice bounds), which shape inference and differentiation read.
    constants: HashMap<String, Vec<i64>>,
    counter: usize,
}

/// numpy-style broadcasting of two shapes.
pub fn broadcast(a: &[i64], b: &[i64]) -> Option<Vec<i64>> {
    let rank = a.len().max(b.len());
    let at = |s: &[i64], i: usize| {
        let offset = rank - s.len();
        if i < offset { 1 } else { s[i - offset] }
    };
    (0..rank)
        .map(|i| match (at(a, i), at(b, i)) {
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

/// The half-open range `[begin, end)` a Slice with `start` and `end` takes from an axis of `size` (steps of 1;
/// negative indices count from the end; out-of-range ones are clamped, as ONNX specifies).
pub fn slice_bounds(size: i64, start: i64, end: i64) -> (i64, i64) {
    let clamp = |i: i64| {
        if i < 0 {
            (i + size).max(0)
        } else {
            i.min(size)
        }
    };
    let begin = clamp(start);
    (begin, clamp(end).max(begin))
}

pub fn normalise_axis(axis: i64, rank: usize) -> usize {
    let rank = rank as i64;
    let axis = if axis < 0 { axis + rank } else { axis };
    assert!(
        (0..rank).contains(&axis),
        "axis {axis} out of range for rank {rank}"
    );
    axis as usize
}

impl GraphBuilder {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            ..Default::default()
        }
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    /// The element type and shape of `value`.
    pub fn tensor_type(&self, value: &Value) -> &TensorType {
        self.types
            .get(&value.0)
            .unwrap_or_else(|| panic!("`{}` is not a value of this graph", value.0))
    }

    pub fn dims(&self, value: &Value) -> &[i64] {
        &self.tensor_type(value).dims
    }

    /// The values of an int64 constant.
    pub fn constant(&self, value: &Value) -> Option<&[i64]> {
        self.constants.get(&value.0).map(Vec::as_slice)
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// A graph input fed at run time.
    pub fn input(&mut self, name: &str, elem: ElemType, dims: &[i64]) -> Value {
        self.inputs.push(value_info(name, elem, dims));
        self.define(name, elem, dims.to_vec())
    }

    fn define(&mut self, name: &str, elem: ElemType, dims: Vec<i64>) -> Value {
        let previous = self.types.insert(name.into(), TensorType { elem, dims });
        assert!(previous.is_none(), "`{name}` is defined twice");
        Value(name.into())
    }

    /// A float32 tensor stored in the graph (a parameter or a constant).
    pub fn f32_tensor(&mut self, name: &str, dims: &[i64], data: Vec<f32>) -> Value {
        assert_eq!(
            dims.iter().product::<i64>() as usize,
            data.len(),
            "{name}: data does not fill its shape"
        );
        self.initializers.push(pb::TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: data_type(ElemType::F32),
            float_data: data,
            ..Default::default()
        });
        self.define(name, ElemType::F32, dims.to_vec())
    }

    /// An int64 constant (shapes, axes, indices), under a generated name.
    pub fn i64_constant(&mut self, dims: &[i64], data: Vec<i64>) -> Value {
        let name = self.fresh("const");
        self.initializers.push(pb::TensorProto {
            name: name.clone(),
            dims: dims.to_vec(),
            data_type: data_type(ElemType::I64),
            int64_data: data.clone(),
            ..Default::default()
        });
        self.constants.insert(name.clone(), data);
        self.define(&name, ElemType::I64, dims.to_vec())
    }

    /// A one-dimensional int64 constant.
    pub fn i64s(&mut self, data: &[i64]) -> Value {
        self.i64_constant(&[data.len() as i64], data.to_vec())
    }

    /// A float32 scalar constant, under a generated name.
    pub fn f32_scalar(&mut self, value: f32) -> Value {
        let name = self.fresh("scalar");
        self.f32_tensor(&name, &[], vec![value])
    }

    /// Adds a node with one output and returns it. Panics where the inputs' shapes do not fit the operator: the
    /// graphs are written by this crate, so that is a bug in the caller.
    pub fn op(&mut self, op_type: &str, inputs: &[&Value], attrs: &[Attr]) -> Value {
        let node_output = self.fresh(&op_type.to_ascii_lowercase());
        let node = Node {
            op_type: op_type.into(),
            inputs: inputs.iter().map(|&v| v.clone()).collect(),
            output: Value(node_output.clone()),
            attrs: attrs.to_vec(),
        };
        let TensorType { elem, dims } = self.infer(&node);
        self.nodes.push(node);
        self.define(&node_output, elem, dims)
    }

    /// Declares `value` a graph output named `name`.
    pub fn output(&mut self, value: &Value, name: &str) {
        let TensorType { elem, dims } = self.tensor_type(value).clone();
        self.nodes.push(Node {
            op_type: "Identity".into(),
            inputs: vec![value.clone()],
            output: Value(name.into()),
            attrs: vec![],
        });
        self.outputs.push(value_info(name, elem, &dims));
        self.define(name, elem, dims);
    }

    /// The output type of `node` from its inputs' types. One match arm per operator the builder emits: long,
    /// but each arm is the shape rule of one operator, read against the ONNX specification one at a time.
    fn infer(&self, node: &Node) -> TensorType {
        let input = |i: usize| self.tensor_type(&node.inputs[i]);
        let constant = |i: usize| {
            self.constant(&node.inputs[i])
                .unwrap_or_else(|| panic!("{}: input {i} must be an int64 constant", node.op_type))
        };
        let same = |i: usize| input(i).clone();
        let float = |dims: Vec<i64>| TensorType {
            elem: ElemType::F32,
            dims,
        };
        let broadcast_all = || {
            node.inputs.iter().fold(Vec::new(), |acc, v| {
                broadcast(&acc, self.dims(v)).unwrap_or_else(|| {
                    panic!(
                        "{}: shapes {acc:?} and {:?} do not broadcast",
                        node.op_type,
                        self.dims(v)
                    )
                })
            })
        };
        match node.op_type.as_str() {
            "Identity" | "Relu" | "Neg" | "Exp" | "Log" | "Sqrt" | "Reciprocal" | "Softmax"
            | "LogSoftmax" | "LayerNormalization" | "ScatterND" | "ScatterElements" => same(0),
            "Add" | "Sub" | "Mul" | "Div" | "Max" | "Min" | "Pow" => TensorType {
                elem: input(0).elem,
                dims: broadcast_all(),
            },
            "Greater" | "Less" | "Equal" => TensorType {
                elem: ElemType::Other,
                dims: broadcast_all(),
            },
            "Where" => TensorType {
                elem: input(1).elem,
                dims: broadcast_all(),
            },
            "Cast" => TensorType {
                elem: match node.int("to") {
                    Some(1) => ElemType::F32,
                    Some(7) => ElemType::I64,
                    _ => ElemType::Other,
                },
                dims: input(0).dims.clone(),
            },
            "MatMul" => {
                let (a, b) = (&input(0).dims, &input(1).dims);
                assert!(a.len() >= 2 && b.len() >= 2, "MatMul of {a:?} and {b:?}");
                let (m, k, k2, n) = (
                    a[a.len() - 2],
                    a[a.len() - 1],
                    b[b.len() - 2],
                    b[b.len() - 1],
                );
                assert_eq!(k, k2, "MatMul of {a:?} and {b:?}");
                let mut dims = broadcast(&a[..a.len() - 2], &b[..b.len() - 2])
                    .unwrap_or_else(|| panic!("MatMul batch dimensions of {a:?} and {b:?}"));
                dims.extend([m, n]);
                float(dims)
            }
            "Transpose" => {
                let dims = &input(0).dims;
                let perm = node.ints("perm").expect("Transpose needs perm");
                float(perm.iter().map(|&p| dims[p as usize]).collect())
            }
            "Gather" => {
                let (data, indices) = (&input(0).dims, &input(1).dims);
                let axis = normalise_axis(node.int("axis").unwrap_or(0), data.len());
                let mut dims = data[..axis].to_vec();
                dims.extend(indices);
                dims.extend(&data[axis + 1..]);
                TensorType {
                    elem: input(0).elem,
                    dims,
                }
            }
            "GatherElements" => TensorType {
                elem: input(0).elem,
                dims: input(1).dims.clone(),
            },
            "Slice" => {
                let mut dims = input(0).dims.clone();
                let (starts, ends, axes) = (constant(1), constant(2), constant(3));
                for ((&start, &end), &axis) in starts.iter().zip(ends).zip(axes) {
                    let axis = normalise_axis(axis, dims.len());
                    let (begin, end) = slice_bounds(dims[axis], start, end);
                    dims[axis] = end - begin;
                }
                same_elem(input(0), dims)
            }
            "Reshape" => {
                let from = &input(0).dims;
                let total: i64 = from.iter().product();
                let mut dims: Vec<i64> = constant(1)
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| if d == 0 { from[i] } else { d })
                    .collect();
                if let Some(unknown) = dims.iter().position(|&d| d == -1) {
                    let known: i64 = dims.iter().filter(|&&d| d != -1).product();
                    dims[unknown] = total / known;
                }
                assert_eq!(
                    dims.iter().product::<i64>(),
                    total,
                    "Reshape {from:?} to {dims:?}"
                );
                same_elem(input(0), dims)
            }
            "Unsqueeze" => {
                let from = &input(0).dims;
                let axes = constant(1);
                let rank = from.len() + axes.len();
                let axes: Vec<usize> = axes.iter().map(|&a| normalise_axis(a, rank)).collect();
                let mut rest = from.iter();
                let dims = (0..rank)
                    .map(|i| {
                        if axes.contains(&i) {
                            1
                        } else {
                            *rest.next().expect("one input axis per output axis")
                        }
                    })
                    .collect();
                same_elem(input(0), dims)
            }
            "ReduceSum" => {
                let from = &input(0).dims;
                let keep = node.int("keepdims").unwrap_or(1) == 1;
                let axes: Vec<usize> = if node.inputs.len() > 1 {
                    constant(1)
                        .iter()
                        .map(|&a| normalise_axis(a, from.len()))
                        .collect()
                } else {
                    (0..from.len()).collect()
                };
                let dims = from
                    .iter()
                    .enumerate()
                    .filter_map(|(i, &d)| match (axes.contains(&i), keep) {
                        (false, _) => Some(d),
                        (true, true) => Some(1),
                        (true, false) => None,
                    })
                    .collect();
                same_elem(input(0), dims)
            }
            "Expand" => same_elem(
                input(0),
                broadcast(&input(0).dims, constant(1)).expect("Expand to an incompatible shape"),
            ),
            "ConstantOfShape" => float(constant(0).to_vec()),
            "Concat" => {
                let mut dims = input(0).dims.clone();
                let axis = normalise_axis(node.int("axis").expect("Concat needs axis"), dims.len());
                dims[axis] = node.inputs.iter().map(|v| self.dims(v)[axis]).sum();
                same_elem(input(0), dims)
            }
            "Pad" => {
                let pads = constant(1);
                let dims = &input(0).dims;
                let rank = dims.len();
                same_elem(
                    input(0),
                    (0..rank)
                        .map(|i| dims[i] + pads[i] + pads[i + rank])
                        .collect(),
                )
            }
            other => panic!("the graph builder has no shape rule for {other}"),
        }
    }

    /// The ONNX model, serialised.
    pub fn to_bytes(&self) -> Vec<u8> {
        let nodes = self
            .nodes
            .iter()
            .map(|node| pb::NodeProto {
                input: node.inputs.iter().map(|v| v.0.clone()).collect(),
                output: vec![node.output.0.clone()],
                name: format!("{}_node", node.output.0),
                op_type: node.op_type.clone(),
                attribute: node.attrs.iter().map(Attr::to_proto).collect(),
                ..Default::default()
            })
            .collect();
        let model = pb::ModelProto {
            ir_version: IR_VERSION,
            producer_name: "edgerec".into(),
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            graph: Some(pb::GraphProto {
                name: self.name.clone(),
                node: nodes,
                initializer: self.initializers.clone(),
                input: self.inputs.clone(),
                output: self.outputs.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        model.encode_to_vec()
    }
}

fn same_elem(input: &TensorType, dims: Vec<i64>) -> TensorType {
    TensorType {
        elem: input.elem,
        dims,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::prelude::*;

    /// scores = Gather(E, ids) · w + b, written by the builder and run by tract, against a hand computation.
    #[test]
    fn tract_runs_a_built_graph() -> TractResult<()> {
        let mut g = GraphBuilder::new("tiny");
        let ids = g.input("ids", ElemType::I64, &[1, 3]);
        let table = g.f32_tensor("E", &[4, 2], vec![0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let w = g.f32_tensor("w", &[2, 1], vec![0.5, -1.0]);
        let b = g.f32_scalar(0.25);
        let rows = g.op("Gather", &[&table, &ids], &[Attr::Int("axis", 0)]);
        let projected = g.op("MatMul", &[&rows, &w], &[]);
        let shifted = g.op("Add", &[&projected, &b], &[]);
        let shape = g.i64_constant(&[2], vec![1, 3]);
        let flat = g.op("Reshape", &[&shifted, &shape], &[]);
        assert_eq!(g.dims(&flat), &[1, 3]);
        g.output(&flat, "scores");
        let bytes = g.to_bytes();

        let model = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])?
            .into_optimized()?
            .into_runnable()?;
        let out = model.run(tvec!(
            Tensor::from_shape(&[1, 3], &[3i64, 1, 0])?.into_tvalue()
        ))?;
        let scores: Vec<f32> = out[0]
            .to_plain_array_view::<f32>()?
            .iter()
            .copied()
            .collect();
        // Row 3 = (5, 6): 2.5 - 6 + 0.25; row 1 = (1, 2): 0.5 - 2 + 0.25; row 0 = 0.25.
        assert_eq!(scores, vec![-3.25, -1.25, 0.25]);
        Ok(())
    }
}
