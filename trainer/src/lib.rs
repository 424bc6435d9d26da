//! EdgeRec's trainer. This first part reads interaction logs, makes the leave-last-out split every figure we quote
//! uses, and evaluates rankers on it (with two reference baselines); the ONNX Runtime training graphs build on it.

pub mod baseline;
pub mod data;
pub mod fetch;
pub mod graph;
pub mod model;
pub mod rng;
pub mod split;
