//! An edge node's configuration: a JSON file, then `EDGEREC_NODE_*` variables over it. Every field has a default,
//! so an empty file (or none) runs a node on the embedded feature store that follows a registry on localhost.

use std::path::{Path, PathBuf};
use std::time::Duration;

use edgerec_core::Surface;
use edgerec_features::config::FeaturesConfig;
use serde::{Deserialize, Serialize};

use crate::auth::AuthConfig;
use crate::rate::RateLimitConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Address to listen on; port 0 picks a free port (the node prints the one it got).
    pub listen: String,
    /// Where the operator's routes (`/metrics`, `/v1/deployments`, and `/healthz`, `/readyz` again) are served;
    /// `null`: nowhere. Keep it off the internet (the default is loopback only).
    pub admin_listen: Option<String>,
    /// How visitors and server-to-server callers prove who they are. Required: a node without it refuses to
    /// start unless `insecure_no_auth` is set.
    pub auth: Option<AuthConfig>,
    /// Serve without checking any credential (anyone may read and write any user's data). Refused unless every
    /// listen address is a loopback one.
    pub insecure_no_auth: bool,
    pub rate_limits: RateLimitConfig,
    /// HTTP workers, each with its own ranker instance per model; 0 means one per core.
    pub workers: usize,
    /// The surfaces (plan names in the registry) this node serves.
    pub surfaces: Vec<Surface>,
    pub registry: FollowerConfig,
    /// The ranker component (`ranker-wasi.wasm` from `scripts/build-wasm.sh`).
    pub ranker_wasm: Option<PathBuf>,
    /// Where the compiled ranker is cached.
    pub module_cache: Option<PathBuf>,
    pub limits: RequestLimits,
    pub ranker: RankerConfig,
    pub deadlines: Deadlines,
    pub feature_cache: FeatureCacheConfig,
    /// How often the write-ahead log is closed and shipped to the event log.
    pub ship_interval_ms: u64,
    /// How often item popularity (the fallback ranking) is re-read from the feature store.
    pub popularity_refresh_ms: u64,
    /// How long `/v1/catalogue` answers from its copy before reading the store again (one read per surface per
    /// interval, however many pages load it).
    pub catalogue_refresh_ms: u64,
    /// A folder served as static files at `/` (the web demo).
    pub web_demo: Option<PathBuf>,
    /// The browser package (`edgerec.js`, its types and the browser ranker from `scripts/build-wasm.sh`), served
    /// at `/pkg/`.
    pub browser_package: Option<PathBuf>,
    /// Origins of other sites whose pages may call this node (`["*"]` for any). Pages the node serves itself need
    /// none.
    pub allowed_origins: Vec<String>,
    /// One JSON line per request on stderr (errors and lifecycle events are always logged).
    pub access_log: bool,
    /// Feature store, write-ahead log and event log (embedded under `features.data_dir` unless it has `aws`).
    /// The node also keeps its verified bundles and last deployments there, to serve after a restart while the
    /// registry is unreachable.
    pub features: FeaturesConfig,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            admin_listen: Some("127.0.0.1:8081".into()),
            auth: None,
            insecure_no_auth: false,
            rate_limits: RateLimitConfig::default(),
            workers: 0,
            surfaces: vec![Surface::parse("home").expect("a surface name")],
            registry: FollowerConfig::default(),
            ranker_wasm: None,
            module_cache: None,
            limits: RequestLimits::default(),
            ranker: RankerConfig::default(),
            deadlines: Deadlines::default(),
            feature_cache: FeatureCacheConfig::default(),
            ship_interval_ms: 60_000,
            popularity_refresh_ms: 60_000,
            catalogue_refresh_ms: 30_000,
            web_demo: None,
            browser_package: None,
            allowed_origins: Vec::new(),
            access_log: false,
            features: FeaturesConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FollowerConfig {
    pub url: String,
    /// A token with the `read` scope, if the registry requires one.
    pub token: Option<String>,
    /// The registry's ed25519 public key (hex, from `GET /v1/signing-key`): what every plan and bundle must be
    /// signed with. Required unless `trust_on_first_use`.
    pub public_key: Option<String>,
    /// Without `public_key`, ask the registry for its key once and pin the answer in the data folder. Whoever
    /// answers first (on a plain-HTTP link, anyone in the middle) then decides what this node trusts, so it must be
    /// asked for by name.
    pub trust_on_first_use: bool,
    /// How often each surface's plan is polled (a conditional GET, so an unchanged plan costs a 304).
    pub poll_interval_ms: u64,
    /// When set, a surface whose plan the registry has not confirmed for this long (no verified answer: the
    /// registry unreachable, or its answers refused) makes `/readyz` answer 503 and says so; serving goes on.
    pub max_plan_age_ms: Option<u64>,
}

impl Default for FollowerConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:7070".into(),
            token: None,
            public_key: None,
            trust_on_first_use: false,
            poll_interval_ms: 2_000,
            max_plan_age_ms: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestLimits {
    pub max_k: u32,
    /// Recent items a request may carry (the model reads only its last `max_len`).
    pub max_recent_items: usize,
    pub max_exclude: usize,
    /// Bytes of a `/v1/recommend` body.
    pub max_recommend_bytes: usize,
    /// Bytes of a `/v1/events` body.
    pub max_events_bytes: usize,
    /// Bytes one served-request record may add to the serving log, bounded before ranking from the request (its
    /// user, the history the model reads — at most the model's `max_len` known items —, its context and `k`
    /// answers of the model's longest id); a request over it is refused with 413.
    pub max_served_record_bytes: usize,
    /// Items in one page of `/v1/catalogue` (`?limit=`).
    pub max_catalogue_page: usize,
}

impl RequestLimits {
    /// The limits every server of `/v1/recommend` checks (`edgerec_core::serving`).
    pub fn recommend(&self) -> edgerec_core::serving::RecommendLimits {
        edgerec_core::serving::RecommendLimits {
            max_k: self.max_k,
            max_recent_items: self.max_recent_items,
            max_exclude: self.max_exclude,
        }
    }
}

impl Default for RequestLimits {
    fn default() -> Self {
        // Every server of `/v1/recommend` starts from the same limits.
        let recommend = edgerec_core::serving::RecommendLimits::default();
        Self {
            max_k: recommend.max_k,
            max_recent_items: recommend.max_recent_items,
            max_exclude: recommend.max_exclude,
            max_recommend_bytes: 256 << 10,
            max_events_bytes: 2 << 20,
            max_served_record_bytes: 128 << 10,
            max_catalogue_page: 1_000,
        }
    }
}

/// What each served model may cost: a fixed pool of ranker instances, each with a memory limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RankerConfig {
    /// Ranker instances per model (0: one per HTTP worker). Rankings beyond them wait.
    pub instances: usize,
    /// How long a ranking waits for a free instance before the request is answered by popularity (flagged
    /// `degraded.reason: "busy"`).
    pub wait_ms: u64,
    /// Linear memory one instance may use, in MiB. Default: sized to the model, 64 MiB plus 16 times the bundle.
    /// A model that needs more fails its load (the previous model keeps serving).
    pub instance_memory_mb: Option<u64>,
}

impl Default for RankerConfig {
    fn default() -> Self {
        Self {
            instances: 0,
            wait_ms: 50,
            instance_memory_mb: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Deadlines {
    /// Time one ranking may take (wall-clock, counted in 1 ms ticks) before it is stopped and the node answers by
    /// popularity instead.
    pub rank_ms: u64,
    /// Loading and warming up a model in one ranker instance.
    pub load_ms: u64,
    /// Reading a user's features; past it the request is ranked from its own recent items.
    pub features_ms: u64,
    /// After three failed feature reads in a row, the store is not asked again for this long (requests go
    /// straight to the fallback instead of each waiting for the deadline).
    pub features_retry_ms: u64,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            rank_ms: 50,
            load_ms: 30_000,
            features_ms: 50,
            features_retry_ms: 1_000,
        }
    }
}

impl Deadlines {
    pub fn rank(&self) -> Duration {
        Duration::from_millis(self.rank_ms)
    }

    pub fn load(&self) -> Duration {
        Duration::from_millis(self.load_ms)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeatureCacheConfig {
    /// How long a user's features are reused before the store is asked again.
    pub ttl_ms: u64,
    /// Users kept; past it, expired entries are dropped first, then the oldest.
    pub capacity: usize,
}

impl Default for FeatureCacheConfig {
    fn default() -> Self {
        Self {
            ttl_ms: 2_000,
            capacity: 100_000,
        }
    }
}

impl NodeConfig {
    /// The file at `path` (defaults where absent), then `EDGEREC_NODE_LISTEN`, `EDGEREC_NODE_DATA_DIR` and
    /// `EDGEREC_NODE_ID` over it; not yet checked ([`NodeConfig::check`], once flags are applied too).
    pub fn load(path: Option<&Path>) -> Result<Self, String> {
        let mut config: Self = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
            }
            None => Self::default(),
        };
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if let Some(listen) = var("EDGEREC_NODE_LISTEN") {
            config.listen = listen;
        }
        if let Some(dir) = var("EDGEREC_NODE_DATA_DIR") {
            config.features.data_dir = dir.into();
        }
        if let Some(id) = var("EDGEREC_NODE_ID") {
            config.features.ingest.node_id = id;
        }
        Ok(config)
    }

    /// Whether the configuration can run, once everything that sets it (file, environment, flags) has: the node
    /// refuses to start otherwise ([`crate::run_with`] checks it first).
    pub fn check(&self) -> Result<(), String> {
        // Request ids and log file names are made from it.
        edgerec_core::id::check_name("node id", &self.features.ingest.node_id)
            .map_err(|e| format!("`features.ingest.node_id`: {e}"))?;
        if self.surfaces.is_empty() {
            return Err("`surfaces` is empty: name at least one surface to serve".into());
        }
        if self.registry.public_key.is_none() && !self.registry.trust_on_first_use {
            return Err(
                "`registry.public_key` is not set: give the registry's signing key (`--public-key`, from its \
                 `GET /v1/signing-key`), or, to pin whatever key the registry answers first, \
                 `--trust-on-first-use`"
                    .into(),
            );
        }
        if let Some(max_age) = self.registry.max_plan_age_ms
            && max_age <= self.registry.poll_interval_ms
        {
            return Err(format!(
                "`registry.max_plan_age_ms` ({max_age}) must be longer than `registry.poll_interval_ms` ({}): \
                 every plan would be stale between two polls",
                self.registry.poll_interval_ms
            ));
        }
        for (name, value) in [
            ("registry.poll_interval_ms", self.registry.poll_interval_ms),
            ("deadlines.rank_ms", self.deadlines.rank_ms),
            ("deadlines.load_ms", self.deadlines.load_ms),
            ("deadlines.features_ms", self.deadlines.features_ms),
            ("ship_interval_ms", self.ship_interval_ms),
            ("popularity_refresh_ms", self.popularity_refresh_ms),
            ("catalogue_refresh_ms", self.catalogue_refresh_ms),
            (
                "limits.max_catalogue_page",
                self.limits.max_catalogue_page as u64,
            ),
        ] {
            if value == 0 {
                return Err(format!("`{name}` must be at least 1"));
            }
        }
        if self.limits.max_k == 0 {
            return Err("`limits.max_k` must be at least 1".into());
        }
        Ok(())
    }

    /// Refuses a node that would serve the internet without checking credentials: no `auth` section and no
    /// `insecure_no_auth`, or `insecure_no_auth` on an address beyond loopback.
    pub fn check_security(&self) -> Result<(), String> {
        if self.insecure_no_auth {
            let mut addresses = std::net::ToSocketAddrs::to_socket_addrs(self.listen.as_str())
                .map_err(|e| format!("cannot resolve `listen` {}: {e}", self.listen))?;
            if let Some(open) = addresses.find(|a| !a.ip().is_loopback()) {
                return Err(format!(
                    "--insecure-no-auth is refused on {open}: without authentication anyone can read and write \
                     any user's data, so it is allowed on loopback addresses only"
                ));
            }
            return Ok(());
        }
        match &self.auth {
            None => Err("the node needs an `auth` configuration: visitor token keys (`auth.visitor_tokens`, \
                 --visitor-secret-file, --jwks) and/or anonymous sessions (`auth.anonymous_sessions.enabled`, \
                 --anonymous-sessions); --insecure-no-auth runs without (loopback only)"
                .into()),
            Some(auth) if !auth.names_visitors() && self.web_demo.is_some() => Err(
                "the web demo needs visitor tokens or anonymous sessions (--anonymous-sessions)".into(),
            ),
            Some(_) => Ok(()),
        }
    }

    /// How every model's instances are run.
    pub fn pool_settings(&self) -> crate::model::PoolSettings {
        crate::model::PoolSettings {
            instances: if self.ranker.instances > 0 {
                self.ranker.instances
            } else {
                self.worker_count()
            },
            wait: Duration::from_millis(self.ranker.wait_ms),
            memory_bytes: self
                .ranker
                .instance_memory_mb
                .map(|mb| usize::try_from(mb << 20).unwrap_or(usize::MAX)),
            rank_deadline: self.deadlines.rank(),
            load_deadline: self.deadlines.load(),
        }
    }

    /// Worker threads (and ranker instances per model).
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        }
    }

    /// Verified bundles, the pinned registry key and the last deployment of each surface.
    pub fn models_dir(&self) -> PathBuf {
        self.features.data_dir.join("node")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_bad_values_are_refused() {
        let empty: NodeConfig = serde_json::from_str("{}").expect("an empty file is all defaults");
        assert_eq!(empty, NodeConfig::default());
        // The one thing a node is never given by default: whom to trust.
        let keyless = empty.check().expect_err("no registry key");
        assert!(
            keyless.contains("registry.public_key") && keyless.contains("--trust-on-first-use"),
            "{keyless}"
        );
        let trusting = NodeConfig {
            registry: FollowerConfig {
                trust_on_first_use: true,
                ..FollowerConfig::default()
            },
            ..NodeConfig::default()
        };
        assert_eq!(trusting.check(), Ok(()));
        let keyed = NodeConfig {
            registry: FollowerConfig {
                public_key: Some("ab".repeat(32)),
                ..FollowerConfig::default()
            },
            ..NodeConfig::default()
        };
        assert_eq!(keyed.check(), Ok(()));

        let unknown = serde_json::from_str::<NodeConfig>(r#"{"listn": "x"}"#);
        assert!(
            unknown
                .expect_err("typo refused")
                .to_string()
                .contains("listn")
        );

        let mut config = NodeConfig {
            surfaces: Vec::new(),
            ..keyed
        };
        assert!(config.check().expect_err("no surface").contains("surfaces"));
        config.surfaces = vec![Surface::parse("home").expect("a surface name")];
        config.deadlines.rank_ms = 0;
        assert!(
            config
                .check()
                .expect_err("zero deadline")
                .contains("rank_ms")
        );
        config.deadlines.rank_ms = 100;
        // Request ids and log file names are made from the node id; surfaces are names by the registry's rule.
        config.features.ingest.node_id = "edge/../a".into();
        let refused = config.check().expect_err("a node id that is not a name");
        assert!(
            refused.contains("node_id") && refused.contains("edge/../a"),
            "{refused}"
        );
        config.features.ingest.node_id = "edge-a".into();
        assert_eq!(config.check(), Ok(()));
        config.registry.max_plan_age_ms = Some(config.registry.poll_interval_ms);
        let refused = config.check().expect_err("a maximum age within one poll");
        assert!(refused.contains("max_plan_age_ms"), "{refused}");
        config.registry.max_plan_age_ms = Some(3 * config.registry.poll_interval_ms);
        assert_eq!(config.check(), Ok(()));
        let bad_surface = serde_json::from_str::<NodeConfig>(r#"{"surfaces": ["home page"]}"#)
            .expect_err("a surface that is not a name");
        assert!(
            bad_surface.to_string().contains("surface `home page`"),
            "{bad_surface}"
        );
    }
}
