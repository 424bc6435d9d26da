//! The processes `edgerec train` runs as: one, or the ranks of a job an MPI launcher started (`mpirun -np N`).

use anyhow::Result;
use edgerec_trainer::collective::{Collective, SingleProcess, launched_by_mpi};

pub enum Processes {
    Single(SingleProcess),
    #[cfg(feature = "mpi")]
    Mpi(edgerec_trainer::mpi::MpiProcesses),
}

impl Processes {
    /// The MPI job this process was launched into, or a single process without a launcher (MPI is then never
    /// initialised).
    pub fn join() -> Result<Self> {
        if !launched_by_mpi() {
            return Ok(Self::Single(SingleProcess));
        }
        #[cfg(feature = "mpi")]
        {
            Ok(Self::Mpi(edgerec_trainer::mpi::MpiProcesses::join()?))
        }
        #[cfg(not(feature = "mpi"))]
        {
            anyhow::bail!(
                "started by an MPI launcher, but this edgerec was built without MPI (the `mpi` feature): \
                 rebuild with it, or run without mpirun"
            )
        }
    }

    pub fn collective(&self) -> &dyn Collective {
        match self {
            Self::Single(single) => single,
            #[cfg(feature = "mpi")]
            Self::Mpi(mpi) => mpi,
        }
    }

    /// After `error` on this process of a job: says so, and for an error the other processes do not meet at the
    /// same point, ends the whole job, since they would wait for this one forever.
    pub fn end_job_on(&self, error: &anyhow::Error) {
        let c = self.collective();
        let label = format!("edgerec train, rank {} of {}", c.rank(), c.size());
        eprintln!("{label}: error: {error:#}");
        #[cfg(feature = "mpi")]
        if let Self::Mpi(mpi) = self {
            let shared = error
                .downcast_ref::<edgerec_trainer::pipeline::PipelineError>()
                .is_some_and(|e| e.reached_by_every_process());
            if !shared {
                eprintln!(
                    "{label}: ending every process of the job; the last complete checkpoint (rank 0's \
                     --out/checkpoints) continues with --resume"
                );
                mpi.abort(1);
            }
        }
    }
}
