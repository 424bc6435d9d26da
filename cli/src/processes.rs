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

    /// `rank R of N: ` in a job of several processes, nothing otherwise: what each message of a job starts with.
    pub fn label(&self) -> String {
        let c = self.collective();
        if c.size() > 1 {
            format!("rank {} of {}: ", c.rank(), c.size())
        } else {
            String::new()
        }
    }

    /// After `error` on this process, in a job of several: an error every process meets together is reported by
    /// each as usual; after any other, this process says so and ends the whole job, since the others would wait
    /// for it forever. A single process returns and the error is reported as usual.
    pub fn end_job_on(&self, error: &anyhow::Error) {
        #[cfg(feature = "mpi")]
        if let Self::Mpi(mpi) = self {
            let shared = error
                .downcast_ref::<edgerec_trainer::train::TrainError>()
                .is_some_and(|e| e.reached_by_every_process());
            if !shared {
                eprintln!("edgerec train, {}error: {error:#}", self.label());
                eprintln!(
                    "edgerec train, {}ending every process of the job; the last complete checkpoint (rank 0's \
                     --out/checkpoints) continues with --resume",
                    self.label()
                );
                mpi.abort(1);
            }
        }
        #[cfg(not(feature = "mpi"))]
        let _ = error;
    }
}
