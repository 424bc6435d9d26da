//! The wasmtime host of the ranker component (`wit/ranker.wit`): compile once, cache the machine code, one
//! instance per worker, a CPU deadline on every call and a memory limit on every instance.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use edgerec_core::{Digest, ErrorReport, ItemId, RankRequest, Ranking, ScoredItem};
use wasmtime::component::{Component, Linker, ResourceAny, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "edgerec:ranker/ranker",
    });
}

use bindings::exports::edgerec::ranker::ranking::{self as wit, ErrorKind};
use bindings::{Ranker, RankerPre};

/// The interface the component must export; its version is part of the name, so a component built for another
/// version of `wit/ranker.wit` is refused when the engine loads it.
const RANKING_INTERFACE: &str = "edgerec:ranker/ranking@0.1.0";

/// How often the engine's epoch advances; deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Default CPU deadline of one ranking call.
pub const DEFAULT_CALL_DEADLINE: Duration = Duration::from_millis(250);

/// Default deadline for loading (verifying, parsing and optimising) a bundle inside the component.
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
    #[error("the ranker component does not compile: {0}")]
    Compile(String),
    #[error("this is not the EdgeRec ranker component (it must export {RANKING_INTERFACE}): {0}")]
    NotTheRanker(String),
    #[error("the ranker component cannot be instantiated: {0}")]
    Instantiate(String),
    #[error("the ranker ran past its {0:?} deadline and was stopped")]
    DeadlineExceeded(Duration),
    #[error("the ranker trapped: {0}")]
    Trap(String),
    #[error("this instance trapped earlier and must be replaced")]
    Poisoned,
    #[error("no ranker instance was free within {0:?}")]
    Busy(Duration),
    #[error("no model is loaded in this instance")]
    NoModel,
    #[error("the ranker's answer is not what its interface promises: {0}")]
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

/// A successful load, as the component reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub name: String,
    pub version: String,
    pub items: usize,
}

/// What a store holds besides the instance: its WASI context (the component's standard library needs one; it
/// gets stderr for panic messages and nothing else) and its resource limits.
struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: MeasuredLimits,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The store's limits, counting the linear memory they let the instance grow to (a component's memory is not
/// exported, so this is where the host learns its size).
struct MeasuredLimits {
    limits: StoreLimits,
    memory_bytes: usize,
}

impl ResourceLimiter for MeasuredLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if allowed {
            self.memory_bytes += desired.saturating_sub(current);
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// The compiled ranker component and the engine that runs it; share one per process.
pub struct RankerEngine {
    engine: Engine,
    pre: RankerPre<HostState>,
    ticker: Arc<EpochTicker>,
}

impl std::fmt::Debug for RankerEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RankerEngine").finish_non_exhaustive()
    }
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
    /// Loads the ranker component from `wasm_path`. The machine code is cached in `cache_dir` (keyed by the
    /// component's sha256 and the engine's configuration), so only the first start compiles.
    pub fn load(wasm_path: &Path, cache_dir: &Path) -> Result<Self, HostError> {
        let engine = new_engine()?;
        let wasm = std::fs::read(wasm_path).map_err(|source| HostError::Io {
            path: wasm_path.into(),
            source,
        })?;
        let cached = cache_dir.join(cache_file_name(&engine, &wasm));
        // SAFETY: the file is one this host wrote with `Component::serialize` under a name keyed by the
        // component's digest and the engine's compatibility hash; wasmtime also checks its header before using it.
        let deserialized = cached
            .is_file()
            .then(|| unsafe { Component::deserialize_file(&engine, &cached) });
        let component = match deserialized {
            Some(Ok(component)) => component,
            // Missing, or unreadable (corrupt, from another wasmtime): compile and replace it.
            _ => compile_and_cache(&engine, &wasm, &cached)?,
        };
        Self::with_component(engine, component)
    }

    /// Compiles the ranker component from bytes, without a cache.
    pub fn from_wasm(wasm: &[u8]) -> Result<Self, HostError> {
        let engine = new_engine()?;
        let component =
            Component::new(&engine, wasm).map_err(|e| HostError::Compile(wasm_error(e)))?;
        Self::with_component(engine, component)
    }

    /// Links the component's WASI imports and checks, once, that it exports the ranking interface with the
    /// types this host was built for.
    fn with_component(engine: Engine, component: Component) -> Result<Self, HostError> {
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| HostError::Engine(wasm_error(e)))?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| HostError::Instantiate(wasm_error(e)))?;
        let pre = RankerPre::new(pre).map_err(|e| HostError::NotTheRanker(wasm_error(e)))?;
        let ticker = Arc::new(EpochTicker::start(engine.clone())?);
        Ok(Self {
            engine,
            pre,
            ticker,
        })
    }

    /// A fresh instance with its own memory, for one worker, without a memory limit (tools, tests).
    pub fn instantiate(&self) -> Result<RankerInstance, HostError> {
        self.instantiate_limited(None)
    }

    /// A fresh instance whose linear memory may not grow past `memory_bytes`: past it the component's
    /// allocations fail (it aborts, a trap), so a hostile or broken model cannot take the node's memory.
    pub fn instantiate_limited(
        &self,
        memory_bytes: Option<usize>,
    ) -> Result<RankerInstance, HostError> {
        let wasi = WasiCtx::builder().inherit_stderr().build();
        let mut limits = StoreLimitsBuilder::new();
        if let Some(bytes) = memory_bytes {
            limits = limits.memory_size(bytes);
        }
        let mut store = Store::new(
            &self.engine,
            HostState {
                wasi,
                table: ResourceTable::new(),
                limits: MeasuredLimits {
                    limits: limits.build(),
                    memory_bytes: 0,
                },
            },
        );
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(u64::MAX / 2);
        let ranker = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| HostError::Instantiate(wasm_error(e)))?;
        Ok(RankerInstance {
            store,
            ranker,
            model: None,
            poisoned: false,
            _ticker: self.ticker.clone(),
        })
    }
}

fn new_engine() -> Result<Engine, HostError> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.wasm_simd(true);
    config.wasm_component_model(true);
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

fn compile_and_cache(engine: &Engine, wasm: &[u8], cached: &Path) -> Result<Component, HostError> {
    let component = Component::new(engine, wasm).map_err(|e| HostError::Compile(wasm_error(e)))?;
    let bytes = component
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
    Ok(component)
}

/// One instance of the ranker: its own memory and at most one loaded model. Not shared between threads.
pub struct RankerInstance {
    store: Store<HostState>,
    ranker: Ranker,
    /// The component's `model` resource now serving, and what it reported when it loaded.
    model: Option<(ResourceAny, Loaded)>,
    poisoned: bool,
    _ticker: Arc<EpochTicker>,
}

impl std::fmt::Debug for RankerInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RankerInstance")
            .field("model", &self.model.as_ref().map(|(_, loaded)| loaded))
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl RankerInstance {
    /// Verifies and loads a bundle inside the component. On any error the previously loaded model stays in
    /// place; on success it is dropped (its memory goes back to the component's allocator).
    pub fn load_bundle(
        &mut self,
        manifest: &[u8],
        model: &[u8],
        deadline: Duration,
    ) -> Result<Loaded, HostError> {
        let bundle = wit::Bundle {
            manifest: manifest.to_vec(),
            model: model.to_vec(),
        };
        let (resource, loaded) = self.call(deadline, |this| {
            let api = this.ranker.edgerec_ranker_ranking().model();
            let resource = match api.call_load(&mut this.store, &bundle)? {
                Ok(resource) => resource,
                Err(refused) => return Ok(Err(refused)),
            };
            let info = api.call_info(&mut this.store, resource)?;
            Ok(Ok((resource, info)))
        })?;
        let loaded = Loaded {
            name: loaded.name,
            version: loaded.version,
            items: loaded.items as usize,
        };
        if let Some((previous, _)) = self.model.replace((resource, loaded.clone())) {
            self.call(deadline, |this| {
                previous.resource_drop(&mut this.store)?;
                Ok(Ok(()))
            })?;
        }
        Ok(loaded)
    }

    /// Ranks one request within `deadline` of CPU time.
    pub fn rank(
        &mut self,
        request: &RankRequest,
        deadline: Duration,
    ) -> Result<Ranking, HostError> {
        if self.poisoned {
            return Err(HostError::Poisoned);
        }
        let (resource, _) = self.model.as_ref().ok_or(HostError::NoModel)?;
        let resource = *resource;
        let request = wit_request(request);
        let ranked = self.call(deadline, |this| {
            this.ranker.edgerec_ranker_ranking().model().call_rank(
                &mut this.store,
                resource,
                &request,
            )
        })?;
        core_ranking(ranked)
    }

    /// What the model now serving reported when it loaded.
    pub fn loaded(&self) -> Option<&Loaded> {
        self.model.as_ref().map(|(_, loaded)| loaded)
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Bytes of linear memory the instance has grown to.
    pub fn memory_bytes(&self) -> usize {
        self.store.data().limits.memory_bytes
    }

    /// Runs `entry` under the deadline and returns its answer (or the component's typed refusal). A trap or a
    /// deadline leaves the component in an unknown state, so the instance is poisoned.
    fn call<T>(
        &mut self,
        deadline: Duration,
        entry: impl FnOnce(&mut Self) -> wasmtime::Result<Result<T, wit::Error>>,
    ) -> Result<T, HostError> {
        if self.poisoned {
            return Err(HostError::Poisoned);
        }
        let ticks = deadline.as_micros().div_ceil(EPOCH_TICK.as_micros()).max(1) as u64 + 1;
        self.store.set_epoch_deadline(ticks);
        let result = match entry(self) {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(refused)) => Err(HostError::Guest(error_report(refused))),
            Err(e) => Err(match e.downcast_ref::<Trap>() {
                Some(Trap::Interrupt) => HostError::DeadlineExceeded(deadline),
                _ => HostError::Trap(wasm_error(e)),
            }),
        };
        if let Err(e) = &result
            && e.poisons_instance()
        {
            self.poisoned = true;
        }
        result
    }
}

fn wit_request(request: &RankRequest) -> wit::RankRequest {
    let strings = |ids: &[ItemId]| ids.iter().map(|id| id.as_str().to_owned()).collect();
    wit::RankRequest {
        recent_items: strings(&request.recent_items),
        k: request.k,
        exclude: strings(&request.exclude),
        candidates: request.candidates.as_deref().map(strings),
        context: request
            .context
            .iter()
            .map(|(name, &value)| wit::ContextValue {
                name: name.clone(),
                value,
            })
            .collect(),
        exclude_seen: request.exclude_seen,
    }
}

/// The component's answer as the core type; its ids are checked like any other input.
fn core_ranking(ranked: wit::Ranked) -> Result<Ranking, HostError> {
    let id = |text: String| ItemId::parse(text).map_err(|e| HostError::BadAnswer(e.to_string()));
    Ok(Ranking {
        items: ranked
            .items
            .into_iter()
            .map(|scored| {
                Ok(ScoredItem {
                    item: id(scored.item)?,
                    score: scored.score,
                })
            })
            .collect::<Result<_, HostError>>()?,
        unknown_items: ranked
            .unknown_items
            .into_iter()
            .map(id)
            .collect::<Result<_, _>>()?,
    })
}

/// A refusal with the kind every EdgeRec JSON API uses for it.
fn error_report(error: wit::Error) -> ErrorReport {
    let kind = match error.kind {
        ErrorKind::InvalidBundle => "invalid_bundle",
        ErrorKind::InvalidModel => "invalid_model",
        ErrorKind::ProbeFailed => "probe_failed",
        ErrorKind::InvalidRequest => "invalid_request",
        ErrorKind::InvalidK => "invalid_k",
        ErrorKind::RequestTooLarge => "request_too_large",
        ErrorKind::UnknownCandidate => "unknown_candidate",
        ErrorKind::InvalidFeatures => "invalid_features",
        ErrorKind::RuntimeError => "runtime_error",
        ErrorKind::ModelOutputMismatch => "model_output_mismatch",
        ErrorKind::NonFiniteScore => "non_finite_score",
    };
    ErrorReport::new(kind, error.message)
}

#[cfg(test)]
mod tests {
    use edgerec_core::{BundleError, ItemId, LoadError, ModelError, RankError, ScoreError};

    use super::{ErrorKind, error_report, wit};

    /// Each kind the component reports becomes the kind core gives the same error, so a refusal reads the same
    /// from every runtime.
    #[test]
    fn component_error_kinds_are_cores() {
        let rank = |error: RankError| error.kind();
        let load = |error: LoadError| error.kind();
        for (kind, expected) in [
            (
                ErrorKind::InvalidBundle,
                load(LoadError::Bundle(BundleError::ManifestJson(String::new()))),
            ),
            (
                ErrorKind::InvalidModel,
                load(LoadError::Model(ModelError::Load(String::new()))),
            ),
            (
                ErrorKind::ProbeFailed,
                load(LoadError::Probe(RankError::ZeroK)),
            ),
            (ErrorKind::InvalidK, rank(RankError::ZeroK)),
            (
                ErrorKind::RequestTooLarge,
                rank(RankError::TooLarge {
                    field: "exclude",
                    len: 2,
                    max: 1,
                }),
            ),
            (
                ErrorKind::UnknownCandidate,
                rank(RankError::UnknownCandidate(ItemId::parse("x").expect("id"))),
            ),
            (
                ErrorKind::RuntimeError,
                rank(RankError::Score(ScoreError::Runtime(String::new()))),
            ),
            (
                ErrorKind::ModelOutputMismatch,
                rank(RankError::OutputLength {
                    expected: 1,
                    actual: 2,
                }),
            ),
            (
                ErrorKind::NonFiniteScore,
                rank(RankError::NonFiniteScore {
                    index: 0,
                    score: f32::NAN,
                }),
            ),
        ] {
            let report = error_report(wit::Error {
                kind,
                message: String::new(),
            });
            assert_eq!(report.kind, expected, "{kind:?}");
        }
        // The request's own faults: a feature value out of range, an id that is not one.
        assert_eq!(
            error_report(wit::Error {
                kind: ErrorKind::InvalidFeatures,
                message: String::new()
            })
            .kind,
            RankError::REQUEST_KINDS[3]
        );
        assert_eq!(
            error_report(wit::Error {
                kind: ErrorKind::InvalidRequest,
                message: String::new()
            })
            .kind,
            "invalid_request"
        );
    }
}
