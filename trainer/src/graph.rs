//! Building ONNX graphs in Rust: the model builder and the training-step graphs emit their nodes through
//! [`GraphBuilder`], which writes the ONNX protobuf (tract-onnx's generated types) that ONNX Runtime and tract load.

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
        ElemType::F32 | ElemType::Other => DataType::Float as i32,
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

/// An ONNX graph under construction. Node outputs get unique generated names; inputs, parameters and outputs keep
/// the names they are given.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    name: String,
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    inputs: Vec<pb::ValueInfoProto>,
    outputs: Vec<pb::ValueInfoProto>,
    counter: usize,
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

    /// A graph input fed at run time.
    pub fn input(&mut self, name: &str, elem: ElemType, dims: &[i64]) -> Value {
        self.inputs.push(value_info(name, elem, dims));
        Value(name.into())
    }

    /// A float32 tensor stored in the graph (a parameter or a constant).
    pub fn f32_tensor(&mut self, name: &str, dims: &[i64], data: Vec<f32>) -> Value {
        debug_assert_eq!(
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
        Value(name.into())
    }

    /// An int64 constant (shapes, axes, indices), under a generated name.
    pub fn i64_constant(&mut self, dims: &[i64], data: Vec<i64>) -> Value {
        let name = self.fresh("const");
        self.initializers.push(pb::TensorProto {
            name: name.clone(),
            dims: dims.to_vec(),
            data_type: data_type(ElemType::I64),
            int64_data: data,
            ..Default::default()
        });
        Value(name)
    }

    /// A float32 scalar constant, under a generated name.
    pub fn f32_scalar(&mut self, value: f32) -> Value {
        let name = self.fresh("scalar");
        self.f32_tensor(&name, &[], vec![value])
    }

    /// Adds a node with one output and returns it.
    pub fn op(&mut self, op_type: &str, inputs: &[&Value], attrs: &[Attr]) -> Value {
        let output = self.fresh(&op_type.to_ascii_lowercase());
        self.nodes.push(pb::NodeProto {
            input: inputs.iter().map(|v| v.0.clone()).collect(),
            output: vec![output.clone()],
            name: format!("{output}_node"),
            op_type: op_type.into(),
            attribute: attrs.iter().map(Attr::to_proto).collect(),
            ..Default::default()
        });
        Value(output)
    }

    /// Declares `value` a graph output named `name`.
    pub fn output(&mut self, value: &Value, name: &str, elem: ElemType, dims: &[i64]) {
        self.nodes.push(pb::NodeProto {
            input: vec![value.0.clone()],
            output: vec![name.into()],
            name: format!("{name}_output"),
            op_type: "Identity".into(),
            ..Default::default()
        });
        self.outputs.push(value_info(name, elem, dims));
    }

    /// The ONNX model, serialised.
    pub fn to_bytes(&self) -> Vec<u8> {
        let model = pb::ModelProto {
            ir_version: IR_VERSION,
            producer_name: "edgerec".into(),
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            graph: Some(pb::GraphProto {
                name: self.name.clone(),
                node: self.nodes.clone(),
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
        g.output(&flat, "scores", ElemType::F32, &[1, 3]);
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
