//! `edgerec edge serve`: run an edge node; `edgerec edge key`: its API keys.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use edgerec_node::auth::visitor::SharedSecret;
use edgerec_node::auth::{AuthConfig, Scope, api_keys};
use edgerec_node::config::NodeConfig;

use crate::paths;

#[derive(Subcommand, Debug)]
pub enum EdgeCommand {
    /// Serve /v1/recommend and /v1/events, following the registry's plans (Ctrl-C stops it cleanly).
    Serve(Box<ServeArgs>),
    /// Print the effective configuration (file, variables and flags applied) as JSON.
    PrintConfig(Box<ServeArgs>),
    /// API keys of server-to-server callers (they may name any user): stored hashed in the node's data folder,
    /// re-read by a running node at once.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Sign visitor tokens (HS256) as a site's backend would, for trying a node out: one per `--user`, a line each
    /// on stdout, in order.
    MintToken {
        /// The secret file the node's `--visitor-secret KID=FILE` names.
        #[arg(long)]
        secret_file: PathBuf,
        #[arg(long)]
        kid: String,
        /// The visitor (the token's `sub`); repeat for several.
        #[arg(long = "user", required = true)]
        users: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 600)]
        ttl_s: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Create a key. The key is printed once on stdout and never again (only its hash is stored).
    Create {
        /// What the key is for (shown by `list`).
        #[arg(long)]
        name: String,
        /// `events` and/or `recommend` (repeat); any user.
        #[arg(long = "scope", required = true, value_parser = parse_scope)]
        scopes: Vec<Scope>,
        #[command(flatten)]
        file: KeyFileArgs,
    },
    /// List keys (ids, names, scopes, when created and revoked; never the keys).
    List {
        #[command(flatten)]
        file: KeyFileArgs,
    },
    /// Revoke a key by id: a running node refuses it from its next request on.
    Revoke {
        id: String,
        #[command(flatten)]
        file: KeyFileArgs,
    },
}

#[derive(clap::Args, Debug)]
pub struct KeyFileArgs {
    /// The node's configuration file (its `auth.api_keys_file`, or its data folder).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The node's data folder (the keys are in node/api-keys.json there).
    #[arg(long)]
    data: Option<PathBuf>,
    /// The keys file itself.
    #[arg(long)]
    keys_file: Option<PathBuf>,
}

impl KeyFileArgs {
    fn path(self) -> Result<PathBuf> {
        if let Some(path) = self.keys_file {
            return Ok(path);
        }
        let mut config = NodeConfig::load(self.config.as_deref()).map_err(anyhow::Error::msg)?;
        if let Some(data) = self.data {
            config.features.data_dir = data;
        }
        let default = api_keys::default_path(&config.models_dir());
        Ok(config.auth.and_then(|a| a.api_keys_file).unwrap_or(default))
    }
}

fn parse_scope(name: &str) -> Result<Scope, String> {
    Scope::parse(name).ok_or_else(|| format!("`{name}` is not a scope (events, recommend)"))
}

fn parse_secret(text: &str) -> Result<SharedSecret, String> {
    let (kid, file) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}`: expected KID=FILE"))?;
    Ok(SharedSecret {
        kid: kid.into(),
        secret_file: file.into(),
    })
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
    /// Address of the operator's routes, /metrics and /v1/deployments (default 127.0.0.1:8081; `none`: off).
    #[arg(long)]
    admin_listen: Option<String>,
    /// Accept visitor tokens signed with the HS256 secret in FILE under `kid` KID (repeat for rotation).
    #[arg(long = "visitor-secret", value_name = "KID=FILE", value_parser = parse_secret)]
    visitor_secrets: Vec<SharedSecret>,
    /// Accept visitor tokens signed by the EdDSA or ES256 keys of this JWKS file.
    #[arg(long)]
    jwks: Option<PathBuf>,
    /// Issue anonymous visitor tokens at POST /v1/session.
    #[arg(long)]
    anonymous_sessions: bool,
    /// Check no credential at all: anyone may read and write any user's data. Loopback addresses only.
    #[arg(long)]
    insecure_no_auth: bool,
    /// The registry to follow (default http://127.0.0.1:7070).
    #[arg(long, env = "EDGEREC_REGISTRY")]
    registry: Option<String>,
    /// A registry token with the `read` scope.
    #[arg(long, env = "EDGEREC_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The registry's public signing key (hex, from its `GET /v1/signing-key`): what every plan and bundle must be
    /// signed with. Required unless --trust-on-first-use.
    #[arg(long)]
    public_key: Option<String>,
    /// Without --public-key: ask the registry for its key once and pin the answer (whoever answers first decides
    /// what this node trusts).
    #[arg(long)]
    trust_on_first_use: bool,
    /// Surface to serve; repeat for several (default: home).
    #[arg(long = "surface")]
    surfaces: Vec<edgerec_core::Surface>,
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
    /// The ranker component (default: the one scripts/build-wasm.sh built).
    #[arg(long, env = "EDGEREC_WASI_RANKER")]
    wasm: Option<PathBuf>,
}

impl ServeArgs {
    fn config(self) -> Result<NodeConfig> {
        let mut config = NodeConfig::load(self.config.as_deref()).map_err(anyhow::Error::msg)?;
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(admin) = self.admin_listen {
            config.admin_listen = (admin != "none").then_some(admin);
        }
        if !self.visitor_secrets.is_empty() || self.jwks.is_some() || self.anonymous_sessions {
            let auth = config.auth.get_or_insert_with(AuthConfig::default);
            auth.visitor_tokens.hs256.extend(self.visitor_secrets);
            if let Some(jwks) = self.jwks {
                auth.visitor_tokens.jwks_file = Some(jwks);
            }
            if self.anonymous_sessions {
                auth.anonymous_sessions.enabled = true;
            }
        }
        if self.insecure_no_auth {
            config.insecure_no_auth = true;
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
        if self.trust_on_first_use {
            config.registry.trust_on_first_use = true;
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
        // Checked once the flags are in: a flag may set what the file left out, or set it wrong.
        config.check().map_err(anyhow::Error::msg)?;
        Ok(config)
    }
}

pub fn run(command: EdgeCommand) -> Result<()> {
    match command {
        EdgeCommand::PrintConfig(args) => {
            println!("{}", serde_json::to_string_pretty(&args.config()?)?);
            Ok(())
        }
        EdgeCommand::Key(command) => key(command),
        EdgeCommand::MintToken {
            secret_file,
            kid,
            users,
            ttl_s,
        } => {
            let minter = VisitorMinter::open(&secret_file, &kid)?;
            let mut out = std::io::stdout().lock();
            for user in users {
                writeln!(out, "{}", minter.mint(&user, ttl_s)?)?;
            }
            Ok(())
        }
        EdgeCommand::Serve(args) => {
            let config = args.config()?;
            config.check_security().map_err(anyhow::Error::msg)?;
            if config.insecure_no_auth {
                eprintln!(
                    "WARNING: --insecure-no-auth: this node checks no credential; anyone who can reach {} can read \
                     and write any user's data",
                    config.listen
                );
            }
            let wasm = config.ranker_wasm.clone().unwrap_or_default();
            anyhow::ensure!(
                wasm.is_file(),
                "no WASI ranker at {} (build it with scripts/build-wasm.sh, or pass --wasm)",
                wasm.display()
            );
            let surfaces = config.surfaces.join(", ");
            let registry = config.registry.url.clone();
            edgerec_node::run(config, |listening| {
                let mut text = String::new();
                for address in &listening.public {
                    text += &format!("edge node listening on http://{address} (surfaces: {surfaces}; registry: {registry})\n");
                }
                for address in &listening.admin {
                    text += &format!("edge node admin (metrics, deployments) on http://{address}\n");
                }
                // One write, and no panic if whoever started the node stopped reading.
                let mut stdout = std::io::stdout();
                let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
            })
            .context("the edge node stopped with an error")
        }
    }
}

fn key(command: KeyCommand) -> Result<()> {
    match command {
        KeyCommand::Create { name, scopes, file } => {
            let path = file.path()?;
            let (record, key) = api_keys::create(&path, &name, &scopes)?;
            eprintln!(
                "created API key {} ({}; scopes {}) in {}; it is printed once, below, and cannot be shown again",
                record.id,
                record.name,
                scope_list(&record.scopes),
                path.display()
            );
            println!("{key}");
        }
        KeyCommand::List { file } => {
            let path = file.path()?;
            let keys = api_keys::list(&path)?;
            if keys.is_empty() {
                eprintln!("no API keys in {}", path.display());
            }
            for key in keys {
                println!(
                    "{}  {:<24}  {:<18}  created {}{}",
                    key.id,
                    key.name,
                    scope_list(&key.scopes),
                    key.created_ms,
                    key.revoked_ms
                        .map_or(String::new(), |at| format!("  REVOKED {at}"))
                );
            }
        }
        KeyCommand::Revoke { id, file } => {
            let path = file.path()?;
            let record = api_keys::revoke(&path, &id)?;
            eprintln!(
                "revoked API key {} ({}): running nodes refuse it from their next request on",
                record.id, record.name
            );
        }
    }
    Ok(())
}

fn scope_list(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Signs visitor tokens (HS256) as a site's backend does: for the demo's replayed visitors and `mint-token`.
pub struct VisitorMinter {
    kid: String,
    secret_file: PathBuf,
    key: jsonwebtoken::EncodingKey,
}

impl VisitorMinter {
    /// A minter over the secret in `path`, created (random, readable by its owner only) if absent.
    pub fn create(path: &std::path::Path, kid: &str) -> Result<Self> {
        edgerec_node::auth::create_secret_file(path)?;
        Self::open(path, kid)
    }

    pub fn open(path: &std::path::Path, kid: &str) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the secret {}", path.display()))?;
        let key = jsonwebtoken::EncodingKey::from_secret(text.trim().as_bytes())
            .with_context(|| format!("the secret in {} is empty", path.display()))?;
        Ok(Self {
            kid: kid.into(),
            secret_file: path.into(),
            key,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn secret_file(&self) -> &std::path::Path {
        &self.secret_file
    }

    /// A token for `user`, valid `ttl_s` seconds from now.
    pub fn mint(&self, user: &str, ttl_s: u64) -> Result<String> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = edgerec_node::auth::visitor::VisitorClaims {
            sub: user.into(),
            iat: now,
            exp: now + ttl_s,
            scope: None,
            iss: None,
        };
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, &claims, &self.key)?)
    }
}
