//! ONNX Runtime sessions for the graphs the trainer generates, on the CPU or through the CUDA execution provider.

use std::collections::HashMap;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor;

/// Where the training graphs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Cpu,
    Cuda,
}

impl std::str::FromStr for Device {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda),
            other => Err(format!("unknown device `{other}` (cpu or cuda)")),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        })
    }
}

/// Why a graph could not be run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    Unavailable(String),
    #[error(
        "the CUDA execution provider is not usable: {0} (it needs ORT_DYLIB_PATH to name the libonnxruntime.so of the \
         onnxruntime-gpu wheel, with CUDA 13 and cuDNN 9 on the library path)"
    )]
    Cuda(String),
    #[error("ONNX Runtime refused the graph: {0}")]
    Session(String),
    #[error("ONNX Runtime failed to run the graph: {0}")]
    Run(String),
}

/// A session for `onnx` on `device` (GPU number `gpu` of those the process sees, with CUDA) with `threads`
/// intra-op threads. The ONNX Runtime library is loaded on first use from `ORT_DYLIB_PATH`.
pub fn session(
    onnx: &[u8],
    device: Device,
    gpu: usize,
    threads: usize,
) -> Result<Session, RuntimeError> {
    edgerec_onnxruntime::init().map_err(|e| RuntimeError::Unavailable(e.to_string()))?;
    let env =
        edgerec_onnxruntime::environment().map_err(|e| RuntimeError::Unavailable(e.to_string()))?;
    let refused = |e: ort::Error| RuntimeError::Session(e.to_string());
    let mut builder = Session::builder(env)
        .map_err(refused)?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| RuntimeError::Session(e.to_string()))?
        .with_intra_threads(threads)
        .map_err(|e| RuntimeError::Session(e.to_string()))?;
    if device == Device::Cuda {
        builder = builder
            .with_execution_providers([ort::ep::CUDA::default()
                .with_device_id(gpu as i32)
                .build()
                .error_on_failure()])
            .map_err(|e| RuntimeError::Cuda(e.to_string()))?;
    }
    builder.commit_from_memory(onnx).map_err(refused)
}

/// GPUs this process may use: the entries of `CUDA_VISIBLE_DEVICES` when set, else those the NVIDIA driver lists,
/// at least 1. Processes of a job share them out by their number on the machine ([`gpu_of`]).
pub fn visible_gpus() -> usize {
    let listed = match std::env::var("CUDA_VISIBLE_DEVICES") {
        Ok(list) => list.split(',').filter(|d| !d.trim().is_empty()).count(),
        Err(_) => std::fs::read_dir("/proc/driver/nvidia/gpus").map_or(0, |d| d.count()),
    };
    listed.max(1)
}

/// The GPU of the `local_rank`-th process on a machine with `gpus` GPUs: one each, or shared in turn when there
/// are more processes than GPUs.
pub fn gpu_of(local_rank: usize, gpus: usize) -> usize {
    local_rank % gpus.max(1)
}

/// A tensor to feed by name.
#[derive(Debug, Clone, PartialEq)]
pub enum Feed {
    F32(Vec<i64>, Vec<f32>),
    I64(Vec<i64>, Vec<i64>),
}

/// Runs `session` once on `feeds` and returns every float output by name (small graphs: tests, evaluation).
pub fn run_once(
    session: &mut Session,
    feeds: &[(&str, Feed)],
) -> Result<HashMap<String, Vec<f32>>, RuntimeError> {
    let failed = |e: ort::Error| RuntimeError::Run(e.to_string());
    let mut values = Vec::with_capacity(feeds.len());
    for (name, feed) in feeds {
        let value = match feed {
            Feed::F32(dims, data) => Tensor::from_array((dims.clone(), data.clone()))
                .map_err(failed)?
                .into_dyn(),
            Feed::I64(dims, data) => Tensor::from_array((dims.clone(), data.clone()))
                .map_err(failed)?
                .into_dyn(),
        };
        values.push((name.to_string(), value));
    }
    let outputs = session.run(values).map_err(failed)?;
    let mut result = HashMap::new();
    for (name, value) in outputs.iter() {
        let (_, data) = value.try_extract_tensor::<f32>().map_err(failed)?;
        result.insert(name.to_string(), data.to_vec());
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::GraphBuilder;
    use edgerec_core::ElemType;

    fn tiny_graph() -> Vec<u8> {
        let mut g = GraphBuilder::new("tiny");
        let x = g.input("x", ElemType::F32, &[2]);
        let y = g.op("Relu", &[&x], &[]);
        g.output(&y, "y");
        g.to_bytes()
    }

    #[test]
    fn runs_on_the_cpu() {
        let mut session = session(&tiny_graph(), Device::Cpu, 0, 1).expect("CPU session");
        let out = run_once(&mut session, &[("x", Feed::F32(vec![2], vec![-1.0, 2.0]))])
            .expect("test step succeeds");
        assert_eq!(out["y"], vec![0.0, 2.0]);
    }

    /// The CPU library of the test set-up has no CUDA provider: asking for it must fail with a message that says
    /// what to install, never fall back silently.
    #[test]
    fn cuda_without_a_gpu_library_is_a_clear_error() {
        let error = session(&tiny_graph(), Device::Cuda, 0, 1).expect_err("must be refused");
        assert!(matches!(error, RuntimeError::Cuda(_)), "{error:?}");
        assert!(error.to_string().contains("onnxruntime-gpu"), "{error}");
    }

    #[test]
    fn processes_share_the_gpus_out_in_turn() {
        assert_eq!(
            (0..5).map(|r| gpu_of(r, 2)).collect::<Vec<_>>(),
            [0, 1, 0, 1, 0]
        );
        assert_eq!(gpu_of(3, 8), 3);
        assert_eq!(gpu_of(1, 0), 0);
    }

    #[test]
    fn devices_parse_and_print() {
        assert_eq!("cuda".parse::<Device>(), Ok(Device::Cuda));
        assert_eq!(Device::Cpu.to_string(), "cpu");
        assert!(
            "tpu"
                .parse::<Device>()
                .expect_err("must be refused")
                .contains("cpu or cuda")
        );
    }
}
