//! Builders of ONNX protos for the tests (`mod common;`): hand-made models, one node at a
//! time, as the importer's tests, the hostile-input tests and others need them.
#![allow(dead_code)]

use cnnc::onnx::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto, AttributeProto, GraphProto, ModelProto,
    NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use cnnc::onnx::Bytes;

pub enum A {
    I(i64),
    Is(Vec<i64>),
    F(f32),
    S(&'static str),
}

pub fn attr(name: &str, a: A) -> AttributeProto {
    let mut p = AttributeProto { name: Some(name.into()), ..Default::default() };
    match a {
        A::I(v) => (p.i, p.r#type) = (Some(v), Some(AttributeType::Int as i32)),
        A::Is(v) => (p.ints, p.r#type) = (v, Some(AttributeType::Ints as i32)),
        A::F(v) => (p.f, p.r#type) = (Some(v), Some(AttributeType::Float as i32)),
        A::S(v) => (p.s, p.r#type) = (Some(Bytes::from(v.as_bytes().to_vec())), Some(AttributeType::String as i32)),
    }
    p
}

pub fn node(name: &str, op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        name: Some(name.into()),
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

/// A float initializer with these dims (no data: planning reads shapes only).
pub fn init(name: &str, dims: &[i64]) -> TensorProto {
    TensorProto { name: Some(name.into()), dims: dims.to_vec(), data_type: Some(DataType::Float as i32), ..Default::default() }
}

/// A float initializer with its values.
pub fn float_init(name: &str, dims: &[i64], values: Vec<f32>) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(DataType::Float as i32),
        float_data: values,
        ..Default::default()
    }
}

/// A float scalar initializer.
pub fn scalar(name: &str, v: f32) -> TensorProto {
    float_init(name, &[], vec![v])
}

pub fn int64s(name: &str, v: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: vec![v.len() as i64],
        data_type: Some(DataType::Int64 as i32),
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

/// A graph input; `None` sizes are symbolic.
pub fn input(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    use tensor_shape_proto::{dimension::Value, Dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension { value: Some(d.map_or(Value::DimParam("N".into()), Value::DimValue)), ..Default::default() })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor { elem_type: Some(1), shape: Some(TensorShapeProto { dim }) })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn image_input(c: i64, h: i64, w: i64) -> ValueInfoProto {
    input("x", &[None, Some(c), Some(h), Some(w)])
}

/// A model of one graph at this opset of the default domain.
pub fn model_at(opset: i64, inputs: Vec<ValueInfoProto>, nodes: Vec<NodeProto>, inits: Vec<TensorProto>) -> ModelProto {
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(opset) }],
        graph: Some(GraphProto { name: Some("test".into()), node: nodes, initializer: inits, input: inputs, ..Default::default() }),
        ..Default::default()
    }
}
