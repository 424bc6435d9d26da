//! Runs the training step graph on ONNX Runtime with the model state kept in tensors ONNX Runtime owns.
//!
//! Parameters and Adam moments live in two sets of tensors, A and B, in the GPU's memory on CUDA. Two I/O
//! bindings are made once: one reads A and writes B, the other reads B and writes A; steps alternate between them,
//! so no state is copied between steps and no node can read a parameter that the same run has already overwritten
//! (which binding one tensor as both input and output would allow, depending on the order ONNX Runtime picks).
//! Only tensors created with `Tensor::new` are bound: binding borrowed tensors deadlocks in ort 2.0.0-rc.15.
//!
//! With data parallelism the step is split ([`StepProgram::Split`]): the gradient graph reads the parameters of
//! the current set and writes every gradient into one host buffer, which is summed across processes in place,
//! and the update graph reads that sum with the current set and writes the other set.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, Session};
use ort::value::Tensor;

use crate::collective::Collective;
use crate::model::{NEGATIVES, TARGET_WEIGHTS, TARGETS};
use crate::runtime::{Device, RuntimeError, session};
use crate::step::{
    DECAY, GRADIENT_NORM, GRADIENT_SUM, GRADIENTS, LOSS, STEP_SIZE, StepGraph, StepProgram,
    dropout_input, first_moment, second_moment, updated,
};

/// Parameters and optimiser moments by parameter name: everything a checkpoint holds besides counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelState {
    pub parameters: BTreeMap<String, Vec<f32>>,
    pub first_moments: BTreeMap<String, Vec<f32>>,
    pub second_moments: BTreeMap<String, Vec<f32>>,
}

/// Where a runner's steps spent their time, besides running the graphs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepTimings {
    /// Filling the input tensors on the host (the dropout masks drawn into them) and, on CUDA, binding them,
    /// which copies them to the device.
    pub preparing: Duration,
    /// Summing gradients across processes, waiting for the slowest included.
    pub exchanging: Duration,
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

impl Batch {
    /// Rows `first..first + count` of this batch of `len`-long rows: one process's shard. Rows past the end are
    /// padding, with weight 0. The negatives are shared by every row and kept whole.
    pub fn rows(&self, first: usize, count: usize, len: usize) -> Batch {
        fn cut<T: Copy + Default>(values: &[T], first: usize, count: usize, len: usize) -> Vec<T> {
            let mut out = vec![T::default(); count * len];
            let start = (first * len).min(values.len());
            let end = ((first + count) * len).min(values.len());
            out[..end - start].copy_from_slice(&values[start..end]);
            out
        }
        Batch {
            inputs: self
                .inputs
                .iter()
                .map(|(name, values)| (name.clone(), cut(values, first, count, len)))
                .collect(),
            targets: cut(&self.targets, first, count, len),
            weights: cut(&self.weights, first, count, len),
            negatives: self.negatives.clone(),
        }
    }
}

struct StateTensors {
    /// Parameters, first moments, second moments, each in graph parameter order.
    tensors: Vec<Tensor<f32>>,
}

/// The sessions of a step and their bindings, one per state set it reads.
#[expect(
    clippy::large_enum_variant,
    reason = "one per step runner, never moved in a loop"
)]
enum Sessions {
    Fused {
        session: Session,
        bindings: [IoBinding; 2],
    },
    Split {
        gradients: Session,
        update: Session,
        gradient_bindings: [IoBinding; 2],
        update_bindings: [IoBinding; 2],
        /// The gradient graph's output, then (summed in place) the update graph's input; host memory.
        flat: Tensor<f32>,
    },
}

/// The training step on ONNX Runtime.
pub struct StepRunner {
    sessions: Sessions,
    names: Vec<String>,
    /// Graph input names of the state tensors, in [`StateTensors`] order.
    state_names: Vec<String>,
    state: [StateTensors; 2],
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
    timings: StepTimings,
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
fn state_allocator(
    session: &Session,
    device: Device,
    gpu: usize,
) -> Result<Option<Allocator>, RuntimeError> {
    match device {
        Device::Cpu => Ok(None),
        Device::Cuda => {
            let info = MemoryInfo::new(
                AllocationDevice::CUDA,
                gpu as i32,
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
    /// A session for `graph` on `device` (GPU number `gpu` of those the process sees, with CUDA), starting from
    /// `state`; `inputs` names the sequence and item-feature inputs with their shape (`[batch, len]`).
    #[expect(clippy::too_many_arguments, reason = "each is one setting of the run")]
    pub fn new(
        graph: &StepGraph,
        inputs: &[String],
        len: usize,
        dim: usize,
        state: &ModelState,
        device: Device,
        gpu: usize,
        threads: usize,
    ) -> Result<Self, RuntimeError> {
        let (sessions, allocator) = match &graph.program {
            StepProgram::Fused(onnx) => {
                let session = session(onnx, device, gpu, threads)?;
                let allocator = state_allocator(&session, device, gpu)?;
                let bindings = [
                    session.create_binding().map_err(ort_error)?,
                    session.create_binding().map_err(ort_error)?,
                ];
                (Sessions::Fused { session, bindings }, allocator)
            }
            StepProgram::Split { gradients, update } => {
                let gradients = session(gradients, device, gpu, threads)?;
                let update = session(update, device, gpu, threads)?;
                let allocator = state_allocator(&update, device, gpu)?;
                let gradient_bindings = [
                    gradients.create_binding().map_err(ort_error)?,
                    gradients.create_binding().map_err(ort_error)?,
                ];
                let update_bindings = [
                    update.create_binding().map_err(ort_error)?,
                    update.create_binding().map_err(ort_error)?,
                ];
                let flat = owned::<f32>(&[graph.gradient_len() as i64], None)?;
                let sessions = Sessions::Split {
                    gradients,
                    update,
                    gradient_bindings,
                    update_bindings,
                    flat,
                };
                (sessions, allocator)
            }
        };
        let names: Vec<String> = graph.parameters.iter().map(|(n, _)| n.clone()).collect();
        let mut state_names = names.clone();
        state_names.extend(names.iter().map(|n| first_moment(n)));
        state_names.extend(names.iter().map(|n| second_moment(n)));
        let dims_of = |i: usize| graph.parameters[i % names.len()].1.clone();
        let missing = |what: &str, name: &str| {
            RuntimeError::Run(format!("the starting state has no {what} for `{name}`"))
        };
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
        let mut runner = Self {
            sessions,
            names,
            state_names,
            state: [state_a, state_b],
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
            timings: StepTimings::default(),
        };
        runner.bind()?;
        Ok(runner)
    }

    fn bind(&mut self) -> Result<(), RuntimeError> {
        let n = self.names.len();
        for from in 0..2 {
            self.bind_batch(from)?;
            let [set_a, set_b] = &mut self.state;
            let (current, next) = if from == 0 {
                (&*set_a, set_b)
            } else {
                (&*set_b, set_a)
            };
            let updating = match &mut self.sessions {
                Sessions::Fused { bindings, .. } => {
                    bindings[from]
                        .bind_output(LOSS, &mut self.loss)
                        .map_err(ort_error)?;
                    &mut bindings[from]
                }
                Sessions::Split {
                    gradient_bindings,
                    update_bindings,
                    flat,
                    ..
                } => {
                    let gradients = &mut gradient_bindings[from];
                    for (name, tensor) in self.names.iter().zip(&current.tensors[..n]) {
                        gradients.bind_input(name, tensor).map_err(ort_error)?;
                    }
                    gradients
                        .bind_output(GRADIENTS, &mut *flat)
                        .map_err(ort_error)?;
                    update_bindings[from]
                        .bind_input(GRADIENT_SUM, flat)
                        .map_err(ort_error)?;
                    &mut update_bindings[from]
                }
            };
            for (name, tensor) in self.state_names.iter().zip(&current.tensors) {
                updating.bind_input(name, tensor).map_err(ort_error)?;
            }
            for (name, tensor) in self.state_names.iter().zip(&mut next.tensors) {
                updating
                    .bind_output(updated(name), tensor)
                    .map_err(ort_error)?;
            }
            updating
                .bind_output(GRADIENT_NORM, &mut self.gradient_norm)
                .map_err(ort_error)?;
        }
        Ok(())
    }

    /// Binds the batch tensors (host memory) as inputs of the bindings that read state set `from`. ONNX Runtime
    /// copies a host input that a device needs when it is bound, not when the step runs, so on CUDA every step
    /// binds them again; the state already lives on the device and stays bound.
    fn bind_batch(&mut self, from: usize) -> Result<(), RuntimeError> {
        let (binding, scalars) = match &mut self.sessions {
            Sessions::Fused { bindings, .. } => (&mut bindings[from], None),
            Sessions::Split {
                gradient_bindings,
                update_bindings,
                ..
            } => (
                &mut gradient_bindings[from],
                Some(&mut update_bindings[from]),
            ),
        };
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
        // The optimiser's scalars go to the graph that updates.
        let update = scalars.unwrap_or(binding);
        update
            .bind_input(STEP_SIZE, &self.step_size)
            .map_err(ort_error)?;
        update.bind_input(DECAY, &self.decay).map_err(ort_error)?;
        Ok(())
    }

    /// One optimiser step on `batch`; `fill_dropout(site, mask)` writes each dropout mask straight into its input
    /// tensor. With a split step, the gradients are summed across `processes` between the two graphs. Returns the
    /// loss (of the whole batch, every process's shard) and the gradient norm (before clipping).
    pub fn step(
        &mut self,
        batch: &Batch,
        mut fill_dropout: impl FnMut(usize, &mut [f32]),
        step_size: f32,
        decay: f32,
        processes: &dyn Collective,
    ) -> Result<(f32, f32), RuntimeError> {
        let started = Instant::now();
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
        let from = self.current;
        if self.device == Device::Cuda {
            self.bind_batch(from)?;
        }
        self.timings.preparing += started.elapsed();
        let loss = match &mut self.sessions {
            Sessions::Fused { session, bindings } => {
                session.run_binding(&bindings[from]).map_err(ort_error)?;
                read(&self.loss)?[0]
            }
            Sessions::Split {
                gradients,
                update,
                gradient_bindings,
                update_bindings,
                flat,
            } => {
                gradients
                    .run_binding(&gradient_bindings[from])
                    .map_err(ort_error)?;
                let (_, values) = flat.try_extract_tensor_mut::<f32>().map_err(ort_error)?;
                let started = Instant::now();
                processes.sum_f32(values);
                self.timings.exchanging += started.elapsed();
                let loss = values[values.len() - 1];
                if self.device == Device::Cuda {
                    update_bindings[from]
                        .bind_input(GRADIENT_SUM, flat)
                        .map_err(ort_error)?;
                }
                update
                    .run_binding(&update_bindings[from])
                    .map_err(ort_error)?;
                loss
            }
        };
        self.current = 1 - from;
        let norm = read(&self.gradient_norm)?[0];
        Ok((loss, norm))
    }

    /// Where the steps' time went since the last call.
    pub fn take_timings(&mut self) -> StepTimings {
        std::mem::take(&mut self.timings)
    }

    /// Replaces the current parameters and moments with `state` (which must hold every one of them), as when
    /// every process takes rank 0's state.
    pub fn set_state(&mut self, state: &ModelState) -> Result<(), RuntimeError> {
        let n = self.names.len();
        for (i, tensor) in self.state[self.current].tensors.iter_mut().enumerate() {
            let name = &self.names[i % n];
            let (what, map) = match i / n {
                0 => ("parameter", &state.parameters),
                1 => ("first moment", &state.first_moments),
                _ => ("second moment", &state.second_moments),
            };
            let values = map.get(name).ok_or_else(|| {
                RuntimeError::Run(format!("the state given has no {what} for `{name}`"))
            })?;
            match self.device {
                Device::Cpu => fill(tensor, values)?,
                Device::Cuda => {
                    let host = owned(tensor.shape(), Some(values))?;
                    host.copy_into(tensor).map_err(ort_error)?;
                }
            }
        }
        Ok(())
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
