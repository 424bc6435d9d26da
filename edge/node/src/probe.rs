//! The registry's probe of a published model, run as an edge node runs it: the WASI ranker under wasmtime, in an
//! instance with the node's memory limit, under the load deadline. A hostile model from a `publish` token fails
//! here instead of exhausting the registry.

use std::time::Duration;

use edgerec_core::RankRequest;
use edgerec_registry_api::probe::ModelProbe;

use crate::host::RankerEngine;
use crate::model::default_memory_limit;

#[derive(Debug)]
pub struct WasiProbe {
    engine: RankerEngine,
    /// `None`: sized to the model, as on nodes.
    memory_bytes: Option<usize>,
    deadline: Duration,
}

impl WasiProbe {
    pub fn new(engine: RankerEngine, memory_bytes: Option<usize>, deadline: Duration) -> Self {
        Self {
            engine,
            memory_bytes,
            deadline,
        }
    }
}

impl ModelProbe for WasiProbe {
    fn probe(&self, manifest_json: &[u8], model: &[u8]) -> Result<(), String> {
        let limit = self
            .memory_bytes
            .unwrap_or_else(|| default_memory_limit(manifest_json.len() + model.len()));
        let bounds = format!(
            "(probed in the WASI ranker with {} MiB of memory and {:?})",
            limit >> 20,
            self.deadline
        );
        let mut instance = self
            .engine
            .instantiate_limited(Some(limit))
            .map_err(|e| format!("{e} {bounds}"))?;
        instance
            .load_bundle(manifest_json, model, self.deadline)
            .map_err(|e| format!("{e} {bounds}"))?;
        instance
            .rank(&RankRequest::new(Vec::new(), 10), self.deadline)
            .map_err(|e| format!("{e} {bounds}"))?;
        Ok(())
    }
}
