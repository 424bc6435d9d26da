//! [`Collective`] over MPI (Open MPI from the system's packages): `mpirun -np N edgerec train ...`.

use ::mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use ::mpi::environment::Universe;
use ::mpi::topology::{Communicator, SimpleCommunicator};

use crate::collective::Collective;

/// The processes of an MPI job. MPI is finalised when this is dropped.
pub struct MpiProcesses {
    world: SimpleCommunicator,
    local_rank: usize,
    local_size: usize,
    /// This process's values during a sum (MPI reads them from one buffer and writes the sum to another), kept
    /// between steps rather than allocated for each.
    scratch: std::cell::RefCell<Vec<f32>>,
    // Dropped last: finalises MPI.
    _universe: Universe,
}

impl std::fmt::Debug for MpiProcesses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiProcesses")
            .field("rank", &self.world.rank())
            .field("size", &self.world.size())
            .finish_non_exhaustive()
    }
}

/// MPI could not be started.
#[derive(Debug, thiserror::Error)]
#[error("MPI is already initialised in this process")]
pub struct AlreadyInitialised;

impl MpiProcesses {
    /// Joins the job this process was launched into (see [`crate::collective::launched_by_mpi`]).
    pub fn join() -> Result<Self, AlreadyInitialised> {
        let universe = ::mpi::initialize().ok_or(AlreadyInitialised)?;
        let world = universe.world();
        let machine = world.split_shared(world.rank());
        let (local_rank, local_size) = (machine.rank() as usize, machine.size() as usize);
        say_why_when_stopped(world.rank(), world.size());
        abort_on_panic();
        Ok(Self {
            world,
            local_rank,
            local_size,
            scratch: Default::default(),
            _universe: universe,
        })
    }

    /// Ends every process of the job: what a process does when it cannot go on, so that the others, waiting for
    /// it in a collective call, are stopped by the launcher rather than hanging.
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}

impl Collective for MpiProcesses {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn local_size(&self) -> usize {
        self.local_size
    }

    fn local_rank(&self) -> usize {
        self.local_rank
    }

    fn sum_f32(&self, values: &mut [f32]) {
        let mut mine = self.scratch.borrow_mut();
        mine.clear();
        mine.extend_from_slice(values);
        self.world
            .all_reduce_into(&mine[..], values, SystemOperation::sum());
    }

    fn sum_f64(&self, values: &mut [f64]) {
        let mine = values.to_vec();
        self.world
            .all_reduce_into(&mine[..], values, SystemOperation::sum());
    }

    fn broadcast_f32(&self, values: &mut [f32]) {
        self.world.process_at_rank(0).broadcast_into(values);
    }

    fn barrier(&self) {
        self.world.barrier();
    }

    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) {
        let root = self.world.process_at_rank(0);
        let mut len = bytes.len() as u64;
        root.broadcast_into(&mut len);
        bytes.resize(len as usize, 0);
        root.broadcast_into(&mut bytes[..]);
    }
}

/// What a process writes when the launcher stops it, prepared before the handler is installed.
static STOPPED_MESSAGE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

/// When a process of the job dies, the launcher stops the others with SIGTERM while they wait for it in a
/// collective call; without a handler they would vanish without a word. The handler only writes the prepared
/// message and exits (both async-signal-safe).
fn say_why_when_stopped(rank: i32, size: i32) {
    let message = format!(
        "edgerec train, rank {rank} of {size}: stopped by the MPI launcher (another process of the job ended, or \
         the job was interrupted); the last complete checkpoint in rank 0's --out/checkpoints continues with \
         --resume\n"
    );
    if STOPPED_MESSAGE.set(message.into_bytes()).is_err() {
        return;
    }
    extern "C" fn on_terminate(_: libc::c_int) {
        if let Some(message) = STOPPED_MESSAGE.get() {
            // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer lives for the whole program.
            unsafe {
                libc::write(2, message.as_ptr().cast(), message.len());
                libc::_exit(143);
            }
        }
    }
    let handler: extern "C" fn(libc::c_int) = on_terminate;
    // SAFETY: installs a handler that only calls async-signal-safe functions.
    unsafe {
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

/// A panic unwinds into `MPI_Finalize`, which waits for every process, while the others wait for this one in a
/// collective call: the job would hang. After the usual panic message, the job is ended instead.
fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        // SAFETY: MPI is initialised (this hook is installed after `initialize`); MPI_Abort does not return.
        unsafe {
            ::mpi::ffi::MPI_Abort(::mpi::ffi::RSMPI_COMM_WORLD, 101);
        }
    }));
}
