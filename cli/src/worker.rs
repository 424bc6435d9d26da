//! `edgerec worker build`: a deployable CDN worker for one surface. The surface's plan and the bundles of its
//! serving variants are fetched from the registry and verified as an edge node verifies them; the worker
//! component (`edgerec-worker.wasm` from `scripts/build-wasm.sh`) then loads them once, here, and its memory image
//! with the loaded models becomes the deployable component (pre-initialised with wasmtime's wizer), so a platform
//! that instantiates it per request loads no model per request.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use edgerec_core::Surface;
use edgerec_core::embedded::{self, EmbeddedBundle, EmbeddedPlan, EmbeddedVariant};
use edgerec_node::config::RequestLimits;
use edgerec_node::follower::fetch_verified_deployment;
use edgerec_registry_api::keys::TrustedKeys;
use wasmtime::component::{Component, Instance, Linker, ResourceTable, WasmList};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};
use wasmtime_wizer::{ComponentInstanceState, Wizer};

use crate::paths;
use crate::registry::RegistryAddress;

/// The published limits of the platforms the worker targets: (platform, what is limited, bytes, compressed).
const PLATFORM_LIMITS: [(&str, &str, u64, bool); 3] = [
    (
        "Cloudflare Workers, free plan",
        "script, gzip",
        3 << 20,
        true,
    ),
    (
        "Cloudflare Workers, paid plan",
        "script, gzip",
        10 << 20,
        true,
    ),
    ("Fastly Compute", "package", 100 << 20, false),
];

#[derive(Subcommand, Debug)]
pub enum WorkerCommand {
    /// Build a deployable wasi:http worker for one surface, with its plan and bundles embedded and verified.
    Build(BuildArgs),
}

#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    #[command(flatten)]
    registry: RegistryAddress,
    /// The surface (plan name) the worker serves.
    #[arg(long)]
    surface: Surface,
    /// Folder to write the worker to (created; `edgerec-worker.wasm` and `deployment.json` are replaced).
    #[arg(long)]
    out: PathBuf,
    /// The registry's public key (hex), as nodes are given it: the plan and every bundle must verify against it
    /// or a key it rotated to.
    #[arg(long, env = "EDGEREC_REGISTRY_PUBLIC_KEY")]
    public_key: String,
    /// Where the worker forwards `POST /v1/events` (an edge node or collector, `http[s]://host[:port]`); without
    /// it the worker answers events with 404.
    #[arg(long)]
    events_to: Option<String>,
    /// The worker component to build from (default: the one scripts/build-wasm.sh built).
    #[arg(long)]
    worker: Option<PathBuf>,
}

pub fn run(command: WorkerCommand) -> Result<()> {
    match command {
        WorkerCommand::Build(args) => build(args),
    }
}

fn build(args: BuildArgs) -> Result<()> {
    let worker = args
        .worker
        .clone()
        .unwrap_or_else(|| paths::wasm_artifact("edgerec-worker.wasm"));
    let wasm = std::fs::read(&worker).with_context(|| {
        format!(
            "reading the worker component {} (build it with scripts/build-wasm.sh, or pass --worker)",
            worker.display()
        )
    })?;
    if let Some(target) = &args.events_to
        && !(target.starts_with("http://") || target.starts_with("https://"))
    {
        bail!("--events-to must be an http:// or https:// URL, not `{target}`");
    }
    let (plan, bundles) = verified_deployment(&args)?;
    let payload = embedded::encode(&plan, &bundles);
    eprintln!(
        "initialising the worker with plan revision {} of `{}` ({} serving variant(s), {} bytes of bundles)",
        plan.revision,
        plan.surface,
        bundles.len(),
        payload.len()
    );
    let built = initialise(&wasm, payload)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let component = args.out.join("edgerec-worker.wasm");
    write_atomically(&component, &built)?;
    write_atomically(
        &args.out.join("deployment.json"),
        &serde_json::to_vec_pretty(&plan)?,
    )?;
    println!("wrote {}", component.display());
    print_sizes(&built)?;
    Ok(())
}

/// The plan and bundles of `args.surface`, verified against the registry's key chain.
fn verified_deployment(args: &BuildArgs) -> Result<(EmbeddedPlan, Vec<EmbeddedBundle>)> {
    let client = args.registry.client();
    let document = client
        .signing_key()
        .context("reading the registry's key document")?;
    let keys = TrustedKeys::from_chain(&args.public_key, &document.rotations)
        .context("the registry's key chain does not follow from --public-key")?;
    let (plan, files) = fetch_verified_deployment(&client, &keys, &args.surface)
        .with_context(|| format!("fetching the verified deployment of `{}`", args.surface))?;
    let limits = RequestLimits::default();
    let variants = plan
        .variants
        .iter()
        .zip(&files)
        .map(|(variant, files)| EmbeddedVariant {
            name: variant.name.clone(),
            weight: variant.weight,
            model: variant.model.clone(),
            version: variant.version.clone(),
            revoked: files.is_none(),
        })
        .collect();
    let bundles: Vec<EmbeddedBundle> = files
        .into_iter()
        .flatten()
        .map(|files| EmbeddedBundle {
            manifest: files.manifest.to_vec(),
            model: files.model.to_vec(),
        })
        .collect();
    if bundles.is_empty() {
        bail!(
            "every variant of the plan of `{}` is revoked: there is nothing to serve",
            plan.surface
        );
    }
    let embedded = EmbeddedPlan {
        surface: plan.surface.clone(),
        revision: plan.revision,
        salt: plan.salt.clone(),
        variants,
        key_id: plan
            .signature
            .as_ref()
            .map(|s| s.key_id.clone())
            .unwrap_or_default(),
        events_to: args.events_to.clone(),
        limits: limits.recommend(),
        max_recommend_bytes: limits.max_recommend_bytes,
        max_events_bytes: limits.max_events_bytes,
    };
    Ok((embedded, bundles))
}

/// What the worker's store holds while it initialises: WASI with the payload on stdin and stderr inherited (a
/// payload that does not load says why there), and wasi:http, which it links but does not call then.
struct InitState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: NoRequests,
    table: ResourceTable,
}

/// wasi:http hooks that send nothing: initialising reads stdin only (the crate's sending, and its TLS stack, are
/// left out of the build).
struct NoRequests;

// `ureq::http` is the `http` crate wasi:http's hooks are written with.
type SendFuture = Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>;

impl WasiHttpHooks for NoRequests {
    fn send_request(
        &mut self,
        _request: ureq::http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _body: SendFuture,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (ureq::http::Response<WasiBody>, SendFuture),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        Box::new(std::future::ready(Err(
            wasmtime_wasi_http::Error::HttpRequestDenied,
        )))
    }
}

impl WasiHttpView for InitState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl WasiView for InitState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Runs the worker's `wizer-initialize` with `payload` on stdin and returns the component with the resulting
/// memory image.
fn initialise(wasm: &[u8], payload: Vec<u8>) -> Result<Vec<u8>> {
    let mut wizer = Wizer::new();
    // wizer 48 removes the init function from the core module but not the component's use of it, which leaves an
    // invalid component; kept, the export is harmless (it only reads stdin, which wasi:http hosts leave empty).
    wizer.keep_init_func(true);
    let (context, instrumented) = wizer
        .instrument_component(wasm)
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .context("the worker is not a component wizer can initialise")?;
    let mut config = Config::new();
    config.wasm_component_model(true);
    let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let component = Component::new(&engine, &instrumented).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let mut linker = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker)
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let wasi = WasiCtx::builder()
        .stdin(MemoryInputPipe::new(payload))
        .inherit_stderr()
        .build();
    let mut store = Store::new(
        &engine,
        InitState {
            wasi,
            http: WasiHttpCtx::new(),
            hooks: NoRequests,
            table: ResourceTable::new(),
        },
    );
    let instance = linker
        .instantiate(&mut store, &component)
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .context("instantiating the worker")?;
    let init = instance
        .get_typed_func::<(), ()>(&mut store, wizer.get_init_func())
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .context("the worker exports no `wizer-initialize`")?;
    init.call(&mut store, ())
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .context("the worker could not load the deployment (its reason is above)")?;
    let mut initialised = Snapshotted {
        store: &mut store,
        instance,
    };
    let snapshot = wizer.snapshot_component(&context, &mut initialised);
    let built = tokio::runtime::Builder::new_current_thread()
        .build()?
        .block_on(snapshot)
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .context("snapshotting the initialised worker")?;
    // What is written must be a component every host accepts.
    Component::new(&engine, &built)
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .context("the initialised worker is not a valid component")?;
    Ok(built)
}

/// The initialised instance, read by wizer through the accessors its instrumentation exported.
struct Snapshotted<'a> {
    store: &'a mut Store<InitState>,
    instance: Instance,
}

impl Snapshotted<'_> {
    fn call<R: wasmtime::component::Lift + 'static, T>(
        &mut self,
        instance: &str,
        func: &str,
        then: impl FnOnce(&mut Store<InitState>, R) -> T,
    ) -> T {
        let (_, exported) = self
            .instance
            .get_export(&mut *self.store, None, instance)
            .expect("wizer's instrumentation exports its accessor instance");
        let (_, func) = self
            .instance
            .get_export(&mut *self.store, Some(&exported), func)
            .expect("wizer's instrumentation exports each accessor");
        let func = self
            .instance
            .get_typed_func::<(), (R,)>(&mut *self.store, func)
            .expect("wizer's accessors have the types it reads");
        let (value,) = func
            .call(&mut *self.store, ())
            .expect("an accessor only reads state");
        then(self.store, value)
    }
}

impl ComponentInstanceState for Snapshotted<'_> {
    async fn call_func_ret_list_u8(
        &mut self,
        instance: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) {
        self.call(instance, func, |store, list: WasmList<u8>| {
            contents(list.as_le_slice(&*store))
        })
    }

    async fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> i32 {
        self.call(instance, func, |_, value| value)
    }

    async fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> i64 {
        self.call(instance, func, |_, value| value)
    }

    async fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> u32 {
        self.call(instance, func, |_, value: f32| value.to_bits())
    }

    async fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> u64 {
        self.call(instance, func, |_, value: f64| value.to_bits())
    }
}

/// Written whole or not at all ([`edgerec_storage::write_durably`]): a worker half-written is never deployed.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    edgerec_storage::write_durably(path, bytes, edgerec_storage::Access::Shared)
        .with_context(|| format!("writing {}", path.display()))
}

fn print_sizes(component: &[u8]) -> Result<()> {
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gzip.write_all(component)?;
    let compressed = gzip.finish()?.len() as u64;
    let raw = component.len() as u64;
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    println!(
        "size: {:.2} MiB raw, {:.2} MiB gzip -9",
        mib(raw),
        mib(compressed)
    );
    for (platform, what, limit, compressed_limit) in PLATFORM_LIMITS {
        let size = if compressed_limit { compressed } else { raw };
        let verdict = if size <= limit { "fits" } else { "TOO LARGE" };
        println!(
            "  {platform:32} {what:14} limit {:6.1} MiB: {verdict} ({:.0}%)",
            mib(limit),
            100.0 * size as f64 / limit as f64
        );
    }
    println!("  Spin, wasmCloud, wasmtime serve   no size limit");
    Ok(())
}
