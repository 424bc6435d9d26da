//! Runs the training step graph on ONNX Runtime with the model state kept in tensors ONNX Runtime owns.
//!
//! Parameters and Adam moments live in two sets of tensors, A and B, in the GPU's memory on CUDA. Two I/O
//! bindings are made once: one reads A and writes B, the other reads B and writes A; steps alternate between them,
//! so no state is copied between steps and no node can read a parameter that the same run has already overwritten
//! (which binding one tensor as both input and output would allow, depending on the order ONNX Runtime picks).
//! Only tensors created with `Tensor::new` are bound: binding borrowed tensors deadlocks in ort 2.0.0-rc.15.

use std::collections::BTreeMap;

use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, Session};
use ort::value::Tensor;

use crate::model::{NEGATIVES, TARGET_WEIGHTS, TARGETS};
use crate::runtime::{Device, RuntimeError, session};
use crate::step::{
    DECAY, GRADIENT_NORM, LOSS, STEP_SIZE, StepGraph, dropout_input, first_moment, second_moment,
    updated,
};

/// Parameters and optimiser moments by parameter name: everything a checkpoint holds besides counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelState {
    pub parameters: BTreeMap<String, Vec<f32>>,
    pub first_moments: BTreeMap<String, Vec<f32>>,
    pub second_moments: BTreeMap<String, Vec<f32>>,
}

/// One batch, laid out as the step graph reads it (`[batch, len]` row-major).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// Sequence ids, then each item feature's values, in feature-specification order, by input name.
    pub inputs: Vec<(String, Vec<i64>)>,
    pub targets: Vec<i64>,
    pub weights: Vec<f32>,
    /// Negative item indices, with sampled softmax.
    pub negatives: Vec<i64>,
}

struct StateTensors {
    /// Parameters, first moments, second moments, each in graph parameter order.
    tensors: Vec<Tensor<f32>>,
}

/// The training step on ONNX Runtime.
pub struct StepRunner {
    session: Session,
    names: Vec<String>,
    /// Graph input names of the state tensors, in [`StateTensors`] order.
    state_names: Vec<String>,
    state: [StateTensors; 2],
    bindings: [IoBinding; 2],
    /// Which state set holds the current values.
    current: usize,
    device: Device,
    inputs: Vec<(String, Tensor<i64>)>,
    targets: Tensor<i64>,
    weights: Tensor<f32>,
    negatives: Option<Tensor<i64>>,
    dropout: Vec<Tensor<f32>>,
    step_size: Tensor<f32>,
    decay: Tensor<f32>,
    loss: Tensor<f32>,
    gradient_norm: Tensor<f32>,
}

impl std::fmt::Debug for StepRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepRunner")
            .field("parameters", &self.names)
            .finish_non_exhaustive()
    }
}

fn ort_error(e: ort::Error) -> RuntimeError {
    RuntimeError::Run(e.to_string())
}

fn owned<T: ort::value::PrimitiveTensorElementType + Copy + std::fmt::Debug>(
    dims: &[i64],
    data: Option<&[T]>,
) -> Result<Tensor<T>, RuntimeError> {
    let mut tensor = Tensor::<T>::new(&Allocator::default(), dims.to_vec()).map_err(ort_error)?;
    if let Some(data) = data {
        fill(&mut tensor, data)?;
    }
    Ok(tensor)
}

fn fill<T: ort::value::PrimitiveTensorElementType + Copy + std::fmt::Debug>(
    tensor: &mut Tensor<T>,
    data: &[T],
) -> Result<(), RuntimeError> {
    let (_, target) = tensor.try_extract_tensor_mut::<T>().map_err(ort_error)?;
    if target.len() != data.len() {
        return Err(RuntimeError::Run(format!(
            "a tensor of {} values was given {} values",
            target.len(),
            data.len()
        )));
    }
    target.copy_from_slice(data);
    Ok(())
}

fn read(tensor: &Tensor<f32>) -> Result<Vec<f32>, RuntimeError> {
    let (_, data) = tensor.try_extract_tensor::<f32>().map_err(ort_error)?;
    Ok(data.to_vec())
}

/// Where the model state lives: the GPU's memory for CUDA (so steps bind it in place and copy none of it), host
/// memory for the CPU (`None`).
fn state_allocator(session: &Session, device: Device) -> Result<Option<Allocator>, RuntimeError> {
    match device {
        Device::Cpu => Ok(None),
        Device::Cuda => {
            let info = MemoryInfo::new(
                AllocationDevice::CUDA,
                0,
                AllocatorType::Device,
                MemoryType::Default,
            )
            .map_err(ort_error)?;
            Allocator::new(session, info).map(Some).map_err(ort_error)
        }
    }
}

/// A state tensor of `dims` holding `data` (zeros when absent), on `device` when given, else in host memory.
fn state_tensor(
    device: Option<&Allocator>,
    dims: &[i64],
    data: Option<&[f32]>,
) -> Result<Tensor<f32>, RuntimeError> {
    let host = owned(dims, data)?;
    let Some(allocator) = device else {
        return Ok(host);
    };
    let mut on_device = Tensor::<f32>::new(allocator, dims.to_vec()).map_err(ort_error)?;
    host.copy_into(&mut on_device).map_err(ort_error)?;
    Ok(on_device)
}

impl StepRunner {
    /// A session for `graph` on `device`, starting from `state`; `inputs` names the sequence and item-feature
    /// inputs with their shape (`[batch, len]`).
    pub fn new(
        graph: &StepGraph,
        inputs: &[String],
        len: usize,
        dim: usize,
        state: &ModelState,
        device: Device,
        threads: usize,
    ) -> Result<Self, RuntimeError> {
        let session = session(&graph.onnx, device, threads)?;
        let names: Vec<String> = graph.parameters.iter().map(|(n, _)| n.clone()).collect();
        let mut state_names = names.clone();
        state_names.extend(names.iter().map(|n| first_moment(n)));
        state_names.extend(names.iter().map(|n| second_moment(n)));
        let dims_of = |i: usize| graph.parameters[i % names.len()].1.clone();
        let missing = |what: &str, name: &str| {
            RuntimeError::Run(format!("the starting state has no {what} for `{name}`"))
        };
        let allocator = state_allocator(&session, device)?;
        let mut sets = Vec::with_capacity(2);
        for set in 0..2 {
            let mut tensors = Vec::with_capacity(state_names.len());
            for i in 0..state_names.len() {
                let data = if set == 1 {
                    None
                } else {
                    let name = &names[i % names.len()];
                    let (what, map) = match i / names.len() {
                        0 => ("parameter", &state.parameters),
                        1 => ("first moment", &state.first_moments),
                        _ => ("second moment", &state.second_moments),
                    };
                    Some(map.get(name).ok_or_else(|| missing(what, name))?.as_slice())
                };
                tensors.push(state_tensor(allocator.as_ref(), &dims_of(i), data)?);
            }
            sets.push(StateTensors { tensors });
        }
        let [state_a, state_b]: [StateTensors; 2] = sets.try_into().ok().expect("two sets");
        let batch_dims = [graph.batch as i64, len as i64];
        let mut runner_inputs = Vec::with_capacity(inputs.len());
        for name in inputs {
            runner_inputs.push((name.clone(), owned::<i64>(&batch_dims, None)?));
        }
        let dropout = (0..graph.dropout_sites)
            .map(|_| owned::<f32>(&[graph.batch as i64, len as i64, dim as i64], None))
            .collect::<Result<Vec<_>, _>>()?;
        let bindings = [
            session.create_binding().map_err(ort_error)?,
            session.create_binding().map_err(ort_error)?,
        ];
        let mut runner = Self {
            session,
            names,
            state_names,
            state: [state_a, state_b],
            bindings,
            current: 0,
            device,
            inputs: runner_inputs,
            targets: owned::<i64>(&batch_dims, None)?,
            weights: owned::<f32>(&batch_dims, None)?,
            negatives: match graph.sampled_negatives {
                0 => None,
                k => Some(owned::<i64>(&[k as i64], None)?),
            },
            dropout,
            step_size: owned::<f32>(&[], Some(&[0.0]))?,
            decay: owned::<f32>(&[], Some(&[0.0]))?,
            loss: owned::<f32>(&[], None)?,
            gradient_norm: owned::<f32>(&[], None)?,
        };
        runner.bind()?;
        Ok(runner)
    }

    fn bind(&mut self) -> Result<(), RuntimeError> {
        for from in 0..2 {
            self.bind_batch(from)?;
            let to = 1 - from;
            let binding = &mut self.bindings[from];
            for (name, tensor) in self.state_names.iter().zip(&self.state[from].tensors) {
                binding.bind_input(name, tensor).map_err(ort_error)?;
            }
            for (name, tensor) in self.state_names.iter().zip(&mut self.state[to].tensors) {
                binding
                    .bind_output(updated(name), tensor)
                    .map_err(ort_error)?;
            }
            binding
                .bind_output(LOSS, &mut self.loss)
                .map_err(ort_error)?;
            binding
                .bind_output(GRADIENT_NORM, &mut self.gradient_norm)
                .map_err(ort_error)?;
        }
        Ok(())
    }

    /// Binds the batch tensors (host memory) as inputs of binding `from`. ONNX Runtime copies a host input that a
    /// device needs when it is bound, not when the step runs, so on CUDA every step binds them again; the state
    /// already lives on the device and stays bound.
    fn bind_batch(&mut self, from: usize) -> Result<(), RuntimeError> {
        let binding = &mut self.bindings[from];
        for (name, tensor) in &self.inputs {
            binding.bind_input(name, tensor).map_err(ort_error)?;
        }
        binding
            .bind_input(TARGETS, &self.targets)
            .map_err(ort_error)?;
        binding
            .bind_input(TARGET_WEIGHTS, &self.weights)
            .map_err(ort_error)?;
        if let Some(negatives) = &self.negatives {
            binding
                .bind_input(NEGATIVES, negatives)
                .map_err(ort_error)?;
        }
        for (site, mask) in self.dropout.iter().enumerate() {
            binding
                .bind_input(dropout_input(site), mask)
                .map_err(ort_error)?;
        }
        binding
            .bind_input(STEP_SIZE, &self.step_size)
            .map_err(ort_error)?;
        binding.bind_input(DECAY, &self.decay).map_err(ort_error)?;
        Ok(())
    }

    /// One optimiser step on `batch`; `fill_dropout(site, mask)` writes each dropout mask straight into its input
    /// tensor. Returns the loss and the gradient norm (before clipping).
    pub fn step(
        &mut self,
        batch: &Batch,
        mut fill_dropout: impl FnMut(usize, &mut [f32]),
        step_size: f32,
        decay: f32,
    ) -> Result<(f32, f32), RuntimeError> {
        for ((name, tensor), (given_name, data)) in self.inputs.iter_mut().zip(&batch.inputs) {
            debug_assert_eq!(name, given_name);
            fill(tensor, data)?;
        }
        fill(&mut self.targets, &batch.targets)?;
        fill(&mut self.weights, &batch.weights)?;
        if let Some(negatives) = &mut self.negatives {
            fill(negatives, &batch.negatives)?;
        }
        for (site, tensor) in self.dropout.iter_mut().enumerate() {
            let (_, mask) = tensor.try_extract_tensor_mut::<f32>().map_err(ort_error)?;
            fill_dropout(site, mask);
        }
        fill(&mut self.step_size, &[step_size])?;
        fill(&mut self.decay, &[decay])?;
        if self.device == Device::Cuda {
            self.bind_batch(self.current)?;
        }
        self.session
            .run_binding(&self.bindings[self.current])
            .map_err(ort_error)?;
        self.current = 1 - self.current;
        let loss = read(&self.loss)?[0];
        let norm = read(&self.gradient_norm)?[0];
        Ok((loss, norm))
    }

    /// The current parameters and moments.
    pub fn state(&self) -> Result<ModelState, RuntimeError> {
        let mut state = ModelState::default();
        let n = self.names.len();
        for (i, tensor) in self.state[self.current].tensors.iter().enumerate() {
            let name = self.names[i % n].clone();
            let map = match i / n {
                0 => &mut state.parameters,
                1 => &mut state.first_moments,
                _ => &mut state.second_moments,
            };
            let values = match self.device {
                Device::Cpu => read(tensor)?,
                Device::Cuda => {
                    let mut host = owned::<f32>(tensor.shape(), None)?;
                    tensor.copy_into(&mut host).map_err(ort_error)?;
                    read(&host)?
                }
            };
            map.insert(name, values);
        }
        Ok(state)
    }
}
