//! What data-parallel training needs from the processes it runs in: their number, this one's rank, sums across
//! all of them and rank 0's values sent to all. [`SingleProcess`] is the plain run; with the `mpi` feature,
//! [`crate::mpi::MpiProcesses`] is a job started by `mpirun`.
//!
//! The calls are collective: every process makes the same calls in the same order, or the job hangs. A failing
//! call ends the job (MPI's default error handler), so they return no errors.

/// The processes of one training job.
pub trait Collective {
    /// This process's rank, `0..size()`. Rank 0 logs, checkpoints and exports.
    fn rank(&self) -> usize;
    /// Processes in the job.
    fn size(&self) -> usize;
    /// Processes of the job on this machine (they share its cores).
    fn local_size(&self) -> usize;
    /// This process's number among those on its machine, `0..local_size()`: the GPU it trains on.
    fn local_rank(&self) -> usize;
    /// Replaces `values` on every process with their element-wise sum over all processes.
    fn sum_f32(&self, values: &mut [f32]);
    fn sum_f64(&self, values: &mut [f64]);
    /// Replaces `values` on every process with rank 0's; every process passes the same length.
    fn broadcast_f32(&self, values: &mut [f32]);
    /// Replaces `bytes` on every process with rank 0's, whatever their length elsewhere.
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>);
    /// Returns once every process has called it.
    fn barrier(&self);
}

/// A job of one process: sums and broadcasts leave values as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn local_size(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn sum_f32(&self, _: &mut [f32]) {}
    fn sum_f64(&self, _: &mut [f64]) {}
    fn broadcast_f32(&self, _: &mut [f32]) {}
    fn broadcast_bytes(&self, _: &mut Vec<u8>) {}
    fn barrier(&self) {}
}

/// Whether this process was started by an MPI launcher (`mpirun`, `srun`, an MPI operator's launcher), from
/// the variables launchers set. Without one, training runs as a single process and never initialises MPI.
pub fn launched_by_mpi() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE"]
        .iter()
        .any(|name| std::env::var_os(name).is_some())
}
