//! The wasmtime host of the WASI ranker: compile once, cache the machine code, one instance per worker, a CPU
//! deadline on every call and a memory limit on every instance.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use edgerec_core::{Digest, ErrorReport, RankRequest, Ranking};
use serde::Deserialize;
use wasmtime::{
    Config, Engine, Instance, Linker, Memory, Module, Store, StoreLimits, StoreLimitsBuilder, Trap,
    TypedFunc,
};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;

/// The ranker ABI version this host speaks (`edgerec_abi_version` in the module).
const ABI_VERSION: u32 = 1;

/// How often the engine's epoch advances; deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Default CPU deadline of one ranking call.
pub const DEFAULT_CALL_DEADLINE: Duration = Duration::from_millis(250);

/// Default deadline for loading (verifying, parsing and optimising) a bundle inside the module.
pub const DEFAULT_LOAD_DEADLINE: Duration = Duration::from_secs(30);

/// What the host could not do.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set up wasmtime: {0}")]
    Engine(String),
    #[error("the ranker module does not compile: {0}")]
    Compile(String),
    #[error("the ranker module cannot be instantiated: {0}")]
    Instantiate(String),
    #[error("the ranker module does not export `{0}` (is it the EdgeRec WASI ranker?)")]
    MissingExport(&'static str),
    #[error("the ranker module speaks ABI version {found}, this host speaks {expected}")]
    AbiVersion { found: u32, expected: u32 },
    #[error("the ranker ran past its {0:?} deadline and was stopped")]
    DeadlineExceeded(Duration),
    #[error("the ranker trapped: {0}")]
    Trap(String),
    #[error("the ranker could not allocate {0} bytes for the input")]
    OutOfMemory(usize),
    #[error("the input is {0} bytes, more than the 4 GiB a wasm32 module can address")]
    InputTooLarge(usize),
    #[error("this instance trapped earlier and must be replaced")]
    Poisoned,
    #[error("no ranker instance was free within {0:?}")]
    Busy(Duration),
    #[error("the ranker's answer is not what the ABI promises: {0}")]
    BadAnswer(String),
    #[error("the ranker refused the call: {0}")]
    Guest(ErrorReport),
}

impl HostError {
    /// Whether the instance is unusable after this error and must be replaced.
    pub fn poisons_instance(&self) -> bool {
        matches!(
            self,
            HostError::DeadlineExceeded(_) | HostError::Trap(_) | HostError::Poisoned
        )
    }
}

fn wasm_error(e: wasmtime::Error) -> String {
    format!("{e:#}")
}

/// A successful load, as the module reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Loaded {
    pub name: String,
    pub version: String,
    pub items: usize,
}

/// What a store holds besides the instance: its WASI context and its resource limits.
struct HostState {
    wasi: WasiP1Ctx,
    limits: StoreLimits,
}

/// The compiled ranker module and the engine that runs it; share one per process.
#[derive(Debug)]
pub struct RankerEngine {
    engine: Engine,
    module: Module,
    linker: Arc<Linker<HostState>>,
    ticker: Arc<EpochTicker>,
}

/// The thread that advances the engine's epoch, which is what makes deadlines fire. Shared by the engine and every
/// instance, so an instance keeps its deadlines even after the engine that made it is dropped.
#[derive(Debug)]
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Result<Self, HostError> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("edgerec-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| HostError::Engine(format!("cannot start the epoch thread: {e}")))?
        };
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl RankerEngine {
    /// Loads the WASI ranker from `wasm_path`. The machine code is cached in `cache_dir` (keyed by the module's
    /// sha256 and the engine's configuration), so only the first start compiles.
    pub fn load(wasm_path: &Path, cache_dir: &Path) -> Result<Self, HostError> {
        let engine = new_engine()?;
        let wasm = std::fs::read(wasm_path).map_err(|source| HostError::Io {
            path: wasm_path.into(),
            source,
        })?;
        let cached = cache_dir.join(cache_file_name(&engine, &wasm));
        // SAFETY: the file is one this host wrote with `Module::serialize` under a name keyed by the module's
        // digest and the engine's compatibility hash; wasmtime also checks its header before using it.
        let deserialized = cached
            .is_file()
            .then(|| unsafe { Module::deserialize_file(&engine, &cached) });
        let module = match deserialized {
            Some(Ok(module)) => module,
            // Missing, or unreadable (corrupt, from another wasmtime): compile and replace it.
            _ => compile_and_cache(&engine, &wasm, &cached)?,
        };
        Self::with_module(engine, module)
    }

    /// Compiles the WASI ranker from bytes, without a cache.
    pub fn from_wasm(wasm: &[u8]) -> Result<Self, HostError> {
        let engine = new_engine()?;
        let module = Module::new(&engine, wasm).map_err(|e| HostError::Compile(wasm_error(e)))?;
        Self::with_module(engine, module)
    }

    fn with_module(engine: Engine, module: Module) -> Result<Self, HostError> {
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |state: &mut HostState| &mut state.wasi)
            .map_err(|e| HostError::Engine(wasm_error(e)))?;
        let ticker = Arc::new(EpochTicker::start(engine.clone())?);
        Ok(Self {
            engine,
            module,
            linker: Arc::new(linker),
            ticker,
        })
    }

    /// A fresh instance with its own memory, for one worker, without a memory limit (tools, tests).
    pub fn instantiate(&self) -> Result<RankerInstance, HostError> {
        self.instantiate_limited(None)
    }

    /// A fresh instance whose linear memory may not grow past `memory_bytes`: past it the module's allocations
    /// fail (it aborts, a trap), so a hostile or broken model cannot take the node's memory.
    pub fn instantiate_limited(
        &self,
        memory_bytes: Option<usize>,
    ) -> Result<RankerInstance, HostError> {
        let wasi = WasiCtxBuilder::new().inherit_stderr().build_p1();
        let mut limits = StoreLimitsBuilder::new().instances(1).memories(1);
        if let Some(bytes) = memory_bytes {
            limits = limits.memory_size(bytes);
        }
        let mut store = Store::new(
            &self.engine,
            HostState {
                wasi,
                limits: limits.build(),
            },
        );
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(u64::MAX / 2);
        let instance = self
            .linker
            .instantiate(&mut store, &self.module)
            .map_err(|e| HostError::Instantiate(wasm_error(e)))?;
        let mut ranker = RankerInstance::bind(store, instance, self.ticker.clone())?;
        let found = ranker
            .abi_version
            .call(&mut ranker.store, ())
            .map_err(|e| HostError::Trap(wasm_error(e)))?;
        if found != ABI_VERSION {
            return Err(HostError::AbiVersion {
                found,
                expected: ABI_VERSION,
            });
        }
        Ok(ranker)
    }
}

fn new_engine() -> Result<Engine, HostError> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.wasm_simd(true);
    Engine::new(&config).map_err(|e| HostError::Engine(wasm_error(e)))
}

fn cache_file_name(engine: &Engine, wasm: &[u8]) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!(
        "ranker-{}-{:016x}.cwasm",
        &Digest::of(wasm).to_string()[..16],
        hasher.finish()
    )
}

fn compile_and_cache(engine: &Engine, wasm: &[u8], cached: &Path) -> Result<Module, HostError> {
    let module = Module::new(engine, wasm).map_err(|e| HostError::Compile(wasm_error(e)))?;
    let bytes = module
        .serialize()
        .map_err(|e| HostError::Compile(wasm_error(e)))?;
    // The cache only saves time: failing to write it must not stop the node.
    if let Some(dir) = cached.parent()
        && std::fs::create_dir_all(dir).is_ok()
    {
        let partial = cached.with_extension(format!("partial-{}", std::process::id()));
        if std::fs::write(&partial, &bytes).is_ok() && std::fs::rename(&partial, cached).is_err() {
            let _ = std::fs::remove_file(&partial);
        }
    }
    Ok(module)
}

/// One instance of the ranker: its own memory and loaded model. Not shared between threads.
pub struct RankerInstance {
    store: Store<HostState>,
    memory: Memory,
    abi_version: TypedFunc<(), u32>,
    alloc: TypedFunc<u32, u32>,
    free: TypedFunc<(u32, u32), ()>,
    load: TypedFunc<(u32, u32, u32, u32), u32>,
    rank: TypedFunc<(u32, u32), u32>,
    result_ptr: TypedFunc<(), u32>,
    result_len: TypedFunc<(), u32>,
    poisoned: bool,
    _ticker: Arc<EpochTicker>,
}

impl std::fmt::Debug for RankerInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RankerInstance")
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl RankerInstance {
    fn bind(
        mut store: Store<HostState>,
        instance: Instance,
        ticker: Arc<EpochTicker>,
    ) -> Result<Self, HostError> {
        macro_rules! func {
            ($name:literal) => {
                instance
                    .get_typed_func(&mut store, $name)
                    .map_err(|_| HostError::MissingExport($name))?
            };
        }
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or(HostError::MissingExport("memory"))?;
        Ok(Self {
            abi_version: func!("edgerec_abi_version"),
            alloc: func!("edgerec_alloc"),
            free: func!("edgerec_free"),
            load: func!("edgerec_load"),
            rank: func!("edgerec_rank"),
            result_ptr: func!("edgerec_result_ptr"),
            result_len: func!("edgerec_result_len"),
            memory,
            store,
            poisoned: false,
            _ticker: ticker,
        })
    }

    /// Verifies and loads a bundle inside the module. On any error the previously loaded model stays in place.
    pub fn load_bundle(
        &mut self,
        manifest: &[u8],
        model: &[u8],
        deadline: Duration,
    ) -> Result<Loaded, HostError> {
        let answer = self.call(deadline, &[manifest, model], |this, args| {
            this.load.call(
                &mut this.store,
                (args[0].0, args[0].1, args[1].0, args[1].1),
            )
        })?;
        serde_json::from_slice(&answer).map_err(|e| HostError::BadAnswer(e.to_string()))
    }

    /// Ranks one request within `deadline` of CPU time.
    pub fn rank(
        &mut self,
        request: &RankRequest,
        deadline: Duration,
    ) -> Result<Ranking, HostError> {
        let json = serde_json::to_vec(request).map_err(|e| HostError::BadAnswer(e.to_string()))?;
        let answer = self.rank_json(&json, deadline)?;
        serde_json::from_slice(&answer).map_err(|e| HostError::BadAnswer(e.to_string()))
    }

    /// Ranks one JSON request and returns the module's JSON answer untouched.
    pub fn rank_json(&mut self, request: &[u8], deadline: Duration) -> Result<Vec<u8>, HostError> {
        self.call(deadline, &[request], |this, args| {
            this.rank.call(&mut this.store, (args[0].0, args[0].1))
        })
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Bytes of linear memory the instance has grown to.
    pub fn memory_bytes(&self) -> usize {
        self.memory.data_size(&self.store)
    }

    /// Copies each input into a buffer allocated in the module, recording every buffer it allocated (so the
    /// caller frees them even when a later copy fails).
    fn copy_in(
        &mut self,
        inputs: &[&[u8]],
        buffers: &mut Vec<(u32, u32)>,
        trap: &impl Fn(wasmtime::Error) -> HostError,
    ) -> Result<(), HostError> {
        for bytes in inputs {
            let len =
                u32::try_from(bytes.len()).map_err(|_| HostError::InputTooLarge(bytes.len()))?;
            if len == 0 {
                buffers.push((0, 0));
                continue;
            }
            let ptr = self.alloc.call(&mut self.store, len).map_err(trap)?;
            if ptr == 0 {
                return Err(HostError::OutOfMemory(bytes.len()));
            }
            buffers.push((ptr, len));
            self.memory
                .write(&mut self.store, ptr as usize, bytes)
                .map_err(|e| HostError::BadAnswer(format!("buffer outside memory: {e}")))?;
        }
        Ok(())
    }

    /// Copies `inputs` into the module, runs `entry` under the deadline and returns the answer (or the module's
    /// error report). A trap or a deadline leaves the module in an unknown state, so the instance is poisoned.
    fn call(
        &mut self,
        deadline: Duration,
        inputs: &[&[u8]],
        entry: impl FnOnce(&mut Self, &[(u32, u32)]) -> wasmtime::Result<u32>,
    ) -> Result<Vec<u8>, HostError> {
        if self.poisoned {
            return Err(HostError::Poisoned);
        }
        let result = self.call_inner(deadline, inputs, entry);
        if let Err(e) = &result
            && e.poisons_instance()
        {
            self.poisoned = true;
        }
        result
    }

    fn call_inner(
        &mut self,
        deadline: Duration,
        inputs: &[&[u8]],
        entry: impl FnOnce(&mut Self, &[(u32, u32)]) -> wasmtime::Result<u32>,
    ) -> Result<Vec<u8>, HostError> {
        let ticks = deadline.as_micros().div_ceil(EPOCH_TICK.as_micros()).max(1) as u64 + 1;
        self.store.set_epoch_deadline(ticks);
        let trap = |e: wasmtime::Error| match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => HostError::DeadlineExceeded(deadline),
            _ => HostError::Trap(wasm_error(e)),
        };

        let mut buffers = Vec::with_capacity(inputs.len());
        let copied = self.copy_in(inputs, &mut buffers, &trap);
        let status = match copied {
            Ok(()) => entry(self, &buffers).map_err(trap),
            Err(e) => Err(e),
        };
        // After a trap the module's allocator may be mid-update: leave it alone, the instance is poisoned.
        if !status.as_ref().is_err_and(HostError::poisons_instance) {
            for &(ptr, len) in &buffers {
                self.free.call(&mut self.store, (ptr, len)).map_err(trap)?;
            }
        }
        let status = status?;
        let ptr = self.result_ptr.call(&mut self.store, ()).map_err(trap)? as usize;
        let len = self.result_len.call(&mut self.store, ()).map_err(trap)? as usize;
        let answer = self
            .memory
            .data(&self.store)
            .get(ptr..ptr.saturating_add(len))
            .ok_or_else(|| HostError::BadAnswer("answer outside memory".into()))?
            .to_vec();
        match status {
            0 => Ok(answer),
            1 => Err(HostError::Guest(
                serde_json::from_slice(&answer).map_err(|e| HostError::BadAnswer(e.to_string()))?,
            )),
            other => Err(HostError::BadAnswer(format!("unknown status {other}"))),
        }
    }
}
