//! The EdgeRec edge node: serves `/v1/recommend` from the WASI ranker under wasmtime ([`RankerEngine`]), takes
//! `/v1/events` into the durable ingest, follows the registry's deployment plans ([`follower`]) and swaps models
//! atomically, reads features through a short-lived cache, and degrades instead of failing when a dependency does.
//! Every request that names a user proves it may ([`auth`]), and every client is held to its rate ([`rate`]).

pub mod auth;
pub mod catalogue;
pub mod config;
pub mod deployment;
pub mod features;
pub mod follower;
mod guard;
mod host;
pub mod http;
pub mod metrics;
pub mod model;
pub mod plan_health;
mod pool;
pub mod probe;
pub mod rate;
mod registry_keys;
pub mod service;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use edgerec_features::ingest::{Ingest, IngestError};
use edgerec_features::log::EventLog;
use edgerec_features::store::{FeatureStore, StoreError};
pub use host::{
    DEFAULT_CALL_DEADLINE, DEFAULT_LOAD_DEADLINE, HostError, Loaded, RankerEngine, RankerInstance,
};

use crate::auth::{AuthSetupError, Authenticator};
use crate::catalogue::CatalogueCache;
use crate::config::NodeConfig;
use crate::deployment::Deployments;
use crate::features::{Popularity, UserFeatureReader};
use crate::follower::Follower;
use crate::metrics::NodeMetrics;
use crate::rate::ClientLimits;
use crate::service::NodeState;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(
        "no ranker module given: set `ranker_wasm` (scripts/build-wasm.sh builds ranker-wasi.wasm)"
    )]
    NoRanker,
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("the feature store: {0}")]
    Store(#[from] StoreError),
    #[error("the ingest: {0}")]
    Ingest(#[from] IngestError),
    #[error("{0}")]
    Config(String),
    #[error("authentication: {0}")]
    Auth(#[from] AuthSetupError),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Writes one JSON log line to stderr.
pub(crate) fn log_line(target: &str, mut fields: serde_json::Value) {
    if let Some(map) = fields.as_object_mut() {
        map.insert("at_ms".into(), edgerec_features::now_ms().into());
        map.insert("target".into(), format!("edgerec_node::{target}").into());
    }
    eprintln!("{fields}");
}

/// Where a started node accepts connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listening {
    /// The public API.
    pub public: Vec<SocketAddr>,
    /// The operator's routes (empty when `admin_listen` is `null`).
    pub admin: Vec<SocketAddr>,
}

/// Runs a node on the feature store its configuration names (DynamoDB with an `aws` section, else the embedded
/// one) until SIGINT or SIGTERM. `on_listening` gets the bound addresses once the node accepts connections.
pub fn run(config: NodeConfig, on_listening: impl FnOnce(&Listening)) -> Result<(), NodeError> {
    let background = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("edgerec-node-bg")
        .enable_all()
        .build()?;
    match config.features.aws.clone() {
        Some(aws) => {
            let store = background.block_on(config.features.open_dynamodb(&aws))?;
            // The bucket is only needed when shipping, which retries: a failure here must not stop serving.
            if let Err(e) = background.block_on(config.features.event_log().ensure_created()) {
                log_line("shipper", serde_json::json!({ "warning": e.to_string() }));
            }
            run_with(config, Arc::new(store), background, on_listening)
        }
        None => {
            let store = config.features.open_embedded()?;
            run_with(config, Arc::new(store), background, on_listening)
        }
    }
}

/// Runs a node on `store`. `background` runs the ingest's applier, the log shipper and the popularity refresh;
/// user feature reads run on the HTTP workers' own runtimes (tokio I/O works across runtimes, and the shipper's
/// CPU-heavy Parquet encoding must not delay them).
pub fn run_with<S: FeatureStore>(
    config: NodeConfig,
    store: Arc<S>,
    background: tokio::runtime::Runtime,
    on_listening: impl FnOnce(&Listening),
) -> Result<(), NodeError> {
    config.check().map_err(NodeError::Config)?;
    config.check_security().map_err(NodeError::Config)?;
    let auth = authenticator(&config)?;
    let rate = ClientLimits::new(&config.rate_limits);
    let wasm = config.ranker_wasm.clone().ok_or(NodeError::NoRanker)?;
    // First, so that a node whose id another live node holds, or whose log is damaged, stops at once.
    let ingest = Arc::new(background.block_on(Ingest::open(
        &config.features.wal_dir(),
        config.features.ingest.clone(),
        store.clone(),
    ))?);
    let cache = config
        .module_cache
        .clone()
        .unwrap_or_else(|| PathBuf::from(&config.features.data_dir).join("modules"));
    let engine = Arc::new(RankerEngine::load(&wasm, &cache)?);
    let metrics = NodeMetrics::new();
    let deployments = Arc::new(Deployments::default());

    let plan_health = Arc::new(plan_health::PlanHealth::new(
        config.registry.max_plan_age_ms.map(Duration::from_millis),
    ));
    let (stop_follower, follower_stopped) = std::sync::mpsc::channel();
    let follower = {
        let follower = Follower::new(
            &config,
            engine,
            deployments.clone(),
            metrics.clone(),
            plan_health.clone(),
        );
        std::thread::Builder::new()
            .name("edgerec-follower".into())
            .spawn(move || follower.run(follower_stopped))?
    };

    let popularity = Arc::new(Popularity::default());
    let event_log = config.features.event_log();
    let refresh = background.spawn(refresh_popularity(
        popularity.clone(),
        store.clone(),
        deployments.clone(),
        Duration::from_millis(config.popularity_refresh_ms),
        config.features.features.popularity_half_life_ms,
    ));
    let shipper = background.spawn(ship_every(
        ingest.clone(),
        event_log.clone(),
        Duration::from_millis(config.ship_interval_ms),
    ));

    let state = actix_web::web::Data::new(NodeState {
        auth,
        rate,
        catalogue: CatalogueCache::new(Duration::from_millis(config.catalogue_refresh_ms)),
        node_id: config.features.ingest.node_id.clone(),
        surfaces: config.surfaces.clone(),
        limits: config.limits.clone(),
        access_log: config.access_log,
        deployments,
        features: UserFeatureReader::new(store, &config.feature_cache, &config.deadlines),
        popularity,
        ingest: ingest.clone(),
        metrics,
        boot_ms: edgerec_features::now_ms(),
        requests: AtomicU64::new(0),
        plan_health,
    });
    let folders = http::StaticFolders {
        web_demo: config.web_demo.clone(),
        browser_package: config.browser_package.clone(),
    };
    // Rate-limit tables keep only clients seen recently.
    let forget = background.spawn({
        let state = state.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                state.rate.forget_idle();
            }
        }
    });
    let served =
        actix_web::rt::System::new().block_on(serve(&config, state, folders, on_listening));
    forget.abort();

    // Stopped (or failed to start): stop following (without waiting for a roll-out in progress: it only writes
    // through temporary files), ship what was acknowledged, close the log.
    drop(stop_follower);
    drop(follower);
    refresh.abort();
    shipper.abort();
    ship_and_close(&background, ingest, &event_log);
    served
}

/// Who may call: the configured credentials, or (only with `--insecure-no-auth`) anyone, said in the log.
fn authenticator(config: &NodeConfig) -> Result<Authenticator, NodeError> {
    match &config.auth {
        Some(auth) if !config.insecure_no_auth => {
            Ok(Authenticator::new(auth, &config.models_dir())?)
        }
        _ => {
            log_line(
                "auth",
                serde_json::json!({"warning": "--insecure-no-auth: no credential is checked; anyone who can reach this node can read and write any user's data"}),
            );
            Ok(Authenticator::insecure())
        }
    }
}

/// Re-reads item popularity every `every`; until a model is loaded there are no items to read, so it looks again
/// soon.
async fn refresh_popularity<S: FeatureStore>(
    popularity: Arc<Popularity>,
    store: Arc<S>,
    deployments: Arc<Deployments>,
    every: Duration,
    half_life_ms: i64,
) {
    loop {
        let wait = if deployments.all().is_empty() {
            every.min(Duration::from_secs(1))
        } else {
            every
        };
        tokio::time::sleep(wait).await;
        if let Err(e) = popularity
            .refresh(&*store, &deployments, half_life_ms)
            .await
        {
            log_line("popularity", serde_json::json!({ "error": e }));
        }
    }
}

/// Ships the write-ahead log to the event log every `every`.
async fn ship_every<S: FeatureStore>(ingest: Arc<Ingest<S>>, log: EventLog, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = ingest.ship(&log, true).await {
            log_line("shipper", serde_json::json!({ "error": e.to_string() }));
        }
    }
}

/// Serves the public API (and the admin API where configured) until the node is stopped.
async fn serve<S: FeatureStore>(
    config: &NodeConfig,
    state: actix_web::web::Data<NodeState<S>>,
    folders: http::StaticFolders,
    on_listening: impl FnOnce(&Listening),
) -> Result<(), NodeError> {
    let allowed_origins = config.allowed_origins.clone();
    let listen_failed = |address: &str| {
        let address = address.to_string();
        move |source| NodeError::Listen { address, source }
    };
    let public = actix_web::HttpServer::new({
        let state = state.clone();
        move || {
            let (state, folders) = (state.clone(), folders.clone());
            let allowed_origins = allowed_origins.clone();
            actix_web::App::new()
                .configure(move |c| http::configure(c, state, folders, &allowed_origins))
        }
    })
    .workers(config.worker_count())
    .shutdown_timeout(5)
    .bind(&config.listen)
    .map_err(listen_failed(&config.listen))?;
    let admin = match &config.admin_listen {
        Some(address) => Some(
            actix_web::HttpServer::new({
                let state = state.clone();
                move || {
                    let state = state.clone();
                    actix_web::App::new().configure(move |c| http::configure_admin(c, state))
                }
            })
            .workers(1)
            .shutdown_timeout(1)
            .bind(address)
            .map_err(listen_failed(address))?,
        ),
        None => None,
    };
    on_listening(&Listening {
        public: public.addrs(),
        admin: admin.as_ref().map(|a| a.addrs()).unwrap_or_default(),
    });
    match admin {
        Some(admin) => tokio::try_join!(public.run(), admin.run()).map(|_| ()),
        None => public.run().await,
    }
    .map_err(NodeError::from)
}

/// Ships what was acknowledged and closes the log. With the store down nothing can be applied, so nothing can be
/// shipped: it gives up quickly, and the write-ahead log keeps every acknowledged record for the next start.
fn ship_and_close<S: FeatureStore>(
    background: &tokio::runtime::Runtime,
    ingest: Arc<Ingest<S>>,
    event_log: &EventLog,
) {
    let shipped = background.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), ingest.ship(event_log, true)).await
    });
    match shipped {
        Ok(Ok(_)) => match Arc::try_unwrap(ingest) {
            Ok(ingest) => {
                if let Err(e) = background.block_on(ingest.close()) {
                    log_line("shipper", serde_json::json!({ "error": e.to_string() }));
                }
            }
            // Everything acknowledged is shipped; the writer stops when the last handle goes.
            Err(_) => log_line(
                "shipper",
                serde_json::json!({"warning": "the ingest is still shared at shutdown; not closed explicitly"}),
            ),
        },
        failed => log_line(
            "shipper",
            serde_json::json!({
                "warning": "not everything was shipped at shutdown; the write-ahead log keeps it for the next start",
                "error": match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out waiting for the feature store".into(),
                },
            }),
        ),
    }
}
