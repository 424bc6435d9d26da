//! `edgerec edge serve`: run an edge node.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use edgerec_node::config::NodeConfig;

use crate::paths;

#[derive(Subcommand, Debug)]
pub enum EdgeCommand {
    /// Serve /v1/recommend and /v1/events, following the registry's plans (Ctrl-C stops it cleanly).
    Serve(ServeArgs),
    /// Print the effective configuration (file, variables and flags applied) as JSON.
    PrintConfig(ServeArgs),
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// JSON configuration file (every field optional; see `edgerec edge print-config`); EDGEREC_NODE_LISTEN,
    /// EDGEREC_NODE_DATA_DIR, EDGEREC_NODE_ID and these flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on (port 0: any free port).
    #[arg(long)]
    listen: Option<String>,
    /// The registry to follow (default http://127.0.0.1:7070).
    #[arg(long, env = "EDGEREC_REGISTRY")]
    registry: Option<String>,
    /// A registry token with the `read` scope.
    #[arg(long, env = "EDGEREC_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The registry's public signing key (hex); default: asked of the registry once and pinned.
    #[arg(long)]
    public_key: Option<String>,
    /// Surface to serve; repeat for several (default: home).
    #[arg(long = "surface")]
    surfaces: Vec<String>,
    /// Folder for the embedded feature store, the write-ahead log, the event log and verified bundles.
    #[arg(long)]
    data: Option<PathBuf>,
    /// This node's name (in request ids and the event log; unique per node).
    #[arg(long)]
    node_id: Option<String>,
    /// HTTP workers (0: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Plan poll interval in milliseconds.
    #[arg(long)]
    poll_ms: Option<u64>,
    /// Serve this folder's static files at `/` (the web demo page: `web-demo/`).
    #[arg(long)]
    web_demo: Option<PathBuf>,
    /// The browser package served at `/pkg/` (default with --web-demo: the one scripts/build-wasm.sh built).
    #[arg(long)]
    browser_package: Option<PathBuf>,
    /// An origin whose pages may call this node from another site (repeat it; `*` for any).
    #[arg(long = "allow-origin")]
    allowed_origins: Vec<String>,
    /// The WASI ranker module (default: the one scripts/build-wasm.sh built).
    #[arg(long, env = "EDGEREC_WASI_RANKER")]
    wasm: Option<PathBuf>,
}

impl ServeArgs {
    fn config(self) -> Result<NodeConfig> {
        let mut config = NodeConfig::load(self.config.as_deref()).map_err(anyhow::Error::msg)?;
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(url) = self.registry {
            config.registry.url = url;
        }
        if let Some(token) = self.token {
            config.registry.token = Some(token);
        }
        if let Some(key) = self.public_key {
            config.registry.public_key = Some(key);
        }
        if !self.surfaces.is_empty() {
            config.surfaces = self.surfaces;
        }
        if let Some(data) = self.data {
            config.features.data_dir = data;
        }
        if let Some(node) = self.node_id {
            config.features.ingest.node_id = node;
        }
        if let Some(workers) = self.workers {
            config.workers = workers;
        }
        if let Some(poll) = self.poll_ms {
            config.registry.poll_interval_ms = poll.max(1);
        }
        if let Some(dir) = self.web_demo {
            config.web_demo = Some(dir);
        }
        if let Some(dir) = self.browser_package {
            config.browser_package = Some(dir);
        }
        if config.browser_package.is_none() && config.web_demo.is_some() {
            config.browser_package = Some(paths::wasm_artifact("browser"));
        }
        if !self.allowed_origins.is_empty() {
            config.allowed_origins = self.allowed_origins;
        }
        if let Some(wasm) = self.wasm {
            config.ranker_wasm = Some(wasm);
        }
        if config.ranker_wasm.is_none() {
            config.ranker_wasm = Some(paths::wasm_artifact("ranker-wasi.wasm"));
        }
        if config.module_cache.is_none() {
            config.module_cache = Some(paths::module_cache_dir());
        }
        Ok(config)
    }
}

pub fn run(command: EdgeCommand) -> Result<()> {
    match command {
        EdgeCommand::PrintConfig(args) => {
            println!("{}", serde_json::to_string_pretty(&args.config()?)?);
            Ok(())
        }
        EdgeCommand::Serve(args) => {
            let config = args.config()?;
            let wasm = config.ranker_wasm.clone().unwrap_or_default();
            anyhow::ensure!(
                wasm.is_file(),
                "no WASI ranker at {} (build it with scripts/build-wasm.sh, or pass --wasm)",
                wasm.display()
            );
            let surfaces = config.surfaces.join(", ");
            let registry = config.registry.url.clone();
            edgerec_node::run(config, |addresses| {
                for address in addresses {
                    println!("edge node listening on http://{address} (surfaces: {surfaces}; registry: {registry})");
                }
                let _ = std::io::stdout().flush();
            })
            .context("the edge node stopped with an error")
        }
    }
}
