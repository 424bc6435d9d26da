//! EdgeRec's trainer: reads interaction logs, makes the leave-last-out split every figure we quote uses, evaluates
//! rankers on it, and trains the sequence model through ONNX graphs it generates and differentiates itself.

pub mod adapt;
pub mod autodiff;
pub mod baseline;
pub mod blend;
pub mod bundle_eval;
pub mod collective;
pub mod data;
pub mod export;
pub mod fetch;
pub mod graph;
pub mod log_data;
pub mod model;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod pipeline;
pub mod replicas;
pub mod report;
pub mod rng;
pub mod runtime;
pub mod schedule;
pub mod split;
pub mod step;
pub mod stepper;
pub mod train;
