//! Running the registry: configuration from a file and the environment, and the HTTP server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use serde::{Deserialize, Serialize};

use crate::aws::{AwsConfig, AwsStore};
use crate::embedded::EmbeddedStore;
use crate::http::{Metrics, configure, json_config, observe};
use crate::service::Registry;
use crate::signing::ManifestSigner;
use crate::store::Store;

/// How a registry runs. Read from a JSON file, then overridden by `EDGEREC_REGISTRY_*` environment variables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Address to listen on (`EDGEREC_REGISTRY_LISTEN`); port 0 picks a free port.
    pub listen: String,
    /// Folder of the embedded backend: `registry.redb`, `blobs/`, and the signing key unless `signing_key` is set
    /// (`EDGEREC_REGISTRY_ROOT`).
    pub root: PathBuf,
    /// The ed25519 signing key file, created on first start (`EDGEREC_REGISTRY_SIGNING_KEY`).
    pub signing_key: Option<PathBuf>,
    /// Largest accepted upload in bytes, and most a bundle's files may add up to
    /// (`EDGEREC_REGISTRY_MAX_UPLOAD_BYTES`).
    pub max_upload_bytes: u64,
    /// How a published model is tried before it becomes a version.
    pub probe: ProbeConfig,
    /// HTTP worker threads (`EDGEREC_REGISTRY_WORKERS`; 0: one per core).
    pub workers: usize,
    /// The production backend (S3 for blobs, DynamoDB for the rest) instead of the embedded one under `root`.
    pub aws: Option<AwsConfig>,
    /// Origins of web pages that may call the API from a browser (`["*"]` for any): pages that load bundles
    /// straight from the registry with a `read` token.
    pub allowed_origins: Vec<String>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7070".into(),
            root: default_root(),
            signing_key: None,
            max_upload_bytes: 256 << 20,
            probe: ProbeConfig::default(),
            workers: 0,
            aws: None,
            allowed_origins: Vec::new(),
        }
    }
}

/// The probe of published models: the WASI ranker under wasmtime, with the limits edge nodes give a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeConfig {
    /// The WASI ranker module (default: the one `scripts/build-wasm.sh` built). Without one the model is probed
    /// with tract in the registry's process, without bounds (the registry says so at start).
    pub ranker_wasm: Option<PathBuf>,
    /// Linear memory the probe may use, MiB (default: sized to the model, as on edge nodes).
    pub instance_memory_mb: Option<u64>,
    /// Time loading and one ranking may take, milliseconds.
    pub deadline_ms: u64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            ranker_wasm: None,
            instance_memory_mb: None,
            deadline_ms: 30_000,
        }
    }
}

/// `~/.cache/edgerec/registry`, or `EDGEREC_CACHE/registry`.
fn default_root() -> PathBuf {
    std::env::var_os("EDGEREC_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/edgerec")))
        .unwrap_or_else(|| PathBuf::from(".edgerec"))
        .join("registry")
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{variable}=`{value}` is not {expected}")]
    Environment {
        variable: &'static str,
        value: String,
        expected: &'static str,
    },
}

impl RegistryConfig {
    /// The file's settings (defaults where it is silent or absent), then the environment's.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut config = match file {
            Some(path) => {
                let error = |message: String| ConfigError::File {
                    path: path.to_path_buf(),
                    message,
                };
                let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
                serde_json::from_str(&text).map_err(|e| error(e.to_string()))?
            }
            None => Self::default(),
        };
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if let Some(listen) = var("EDGEREC_REGISTRY_LISTEN") {
            config.listen = listen;
        }
        if let Some(root) = var("EDGEREC_REGISTRY_ROOT") {
            config.root = root.into();
        }
        if let Some(key) = var("EDGEREC_REGISTRY_SIGNING_KEY") {
            config.signing_key = Some(key.into());
        }
        let number = |variable: &'static str, value: String| {
            value.parse::<u64>().map_err(|_| ConfigError::Environment {
                variable,
                value,
                expected: "a whole number",
            })
        };
        if let Some(value) = var("EDGEREC_REGISTRY_MAX_UPLOAD_BYTES") {
            config.max_upload_bytes = number("EDGEREC_REGISTRY_MAX_UPLOAD_BYTES", value)?;
        }
        if let Some(value) = var("EDGEREC_REGISTRY_WORKERS") {
            config.workers = number("EDGEREC_REGISTRY_WORKERS", value)? as usize;
        }
        Ok(config)
    }

    pub fn signing_key_path(&self) -> PathBuf {
        self.signing_key
            .clone()
            .unwrap_or_else(|| self.root.join("signing.key"))
    }

    /// The signing key, and the rotations that led to it. Created on first start only, and only for the embedded
    /// backend: a registry that has published versions (or rotated keys) and finds no key refuses to make a new
    /// one, since every edge node trusts the one that signed them; replicas of the S3 + DynamoDB backend share one
    /// key file, which must exist (`edgerec registry key create`). A key that is not the end of the store's
    /// rotations is refused too.
    fn signer<S: Store>(
        &self,
        store: &S,
        runtime: &actix_web::rt::Runtime,
        shared: bool,
    ) -> Result<ManifestSigner, Box<dyn std::error::Error + Send + Sync>> {
        let path = self.signing_key_path();
        let rotations = runtime.block_on(store.key_rotations())?;
        let signer = if path.exists() {
            ManifestSigner::load(&path)?
        } else if shared {
            return Err(format!(
                "no signing key at {}: every replica of an S3 + DynamoDB registry signs with one shared key file \
                 (signing_key); create it once with `edgerec registry key create --out FILE` and give it to each",
                path.display()
            )
            .into());
        } else {
            let published = runtime.block_on(store.list_versions(None))?;
            if !published.is_empty() || !rotations.is_empty() {
                return Err(format!(
                    "no signing key at {}, but this registry has {} published versions and {} key rotations \
                     signed with one: restore the key (edge nodes trust it), or point signing_key at it; a new key \
                     is not created",
                    path.display(),
                    published.len(),
                    rotations.len()
                )
                .into());
            }
            ManifestSigner::create(&path)?
        };
        signer.adopt(rotations)?;
        Ok(signer)
    }

    /// Connects to the S3 + DynamoDB backend of `aws`, creating the table and bucket if needed, with the signing
    /// key.
    pub fn open_aws(
        &self,
        aws: &AwsConfig,
    ) -> Result<Registry<AwsStore>, Box<dyn std::error::Error + Send + Sync>> {
        let store = AwsStore::connect(aws);
        let runtime = actix_web::rt::Runtime::new()?;
        runtime.block_on(store.ensure_created())?;
        let signer = self.signer(&store, &runtime, true)?;
        Ok(Registry {
            store,
            signer,
            max_upload_bytes: self.max_upload_bytes,
            probe: std::sync::Arc::new(crate::service::InProcessProbe),
        })
    }

    /// Opens the embedded backend and the signing key.
    pub fn open_embedded(
        &self,
    ) -> Result<Registry<EmbeddedStore>, Box<dyn std::error::Error + Send + Sync>> {
        let store = EmbeddedStore::open(&self.root)?;
        let signer = self.signer(&store, &actix_web::rt::Runtime::new()?, false)?;
        Ok(Registry {
            store,
            signer,
            max_upload_bytes: self.max_upload_bytes,
            probe: std::sync::Arc::new(crate::service::InProcessProbe),
        })
    }
}

fn http_server<S: Store + Send + Sync + 'static>(
    registry: web::Data<Registry<S>>,
    listen: &str,
    workers: usize,
    allowed_origins: &[String],
) -> std::io::Result<(Vec<SocketAddr>, actix_web::dev::Server)> {
    let metrics = web::Data::new(Metrics::default());
    let allowed_origins = allowed_origins.to_vec();
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(registry.clone())
            .app_data(metrics.clone())
            .app_data(json_config())
            .wrap(crate::http::cors(&allowed_origins))
            .wrap(from_fn(observe))
            .configure(configure::<S>)
    })
    .shutdown_timeout(5);
    if workers > 0 {
        server = server.workers(workers);
    }
    let server = server.bind(listen)?;
    let addresses = server.addrs();
    Ok((addresses, server.run()))
}

/// Serves as `config` says (listen address, workers, allowed origins) until SIGINT or SIGTERM; `on_bound` learns
/// the bound addresses first.
pub fn serve<S: Store + Send + Sync + 'static>(
    registry: Registry<S>,
    config: &RegistryConfig,
    on_bound: impl FnOnce(&[SocketAddr]),
) -> std::io::Result<()> {
    actix_web::rt::System::new().block_on(async move {
        let (addresses, server) = http_server(
            web::Data::new(registry),
            &config.listen,
            config.workers,
            &config.allowed_origins,
        )?;
        on_bound(&addresses);
        server.await
    })
}

/// A registry serving on a background thread (tests, embedding).
#[derive(Debug)]
pub struct RunningServer {
    pub address: SocketAddr,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    /// The registry, held so that the last copy, and with it the store, is dropped by [`RunningServer::stop`].
    registry: Option<std::sync::Arc<dyn std::any::Any + Send + Sync>>,
}

impl RunningServer {
    /// Starts `registry` on `listen` (port 0 for a free port) on its own thread.
    pub fn start<S: Store + Send + Sync + 'static>(
        registry: Registry<S>,
        listen: &str,
    ) -> std::io::Result<Self> {
        let (sender, receiver) = std::sync::mpsc::channel();
        let listen = listen.to_string();
        let registry = web::Data::new(registry);
        let held: std::sync::Arc<Registry<S>> = registry.clone().into_inner();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                match http_server(registry, &listen, 2, &[]) {
                    Ok((addresses, server)) => {
                        let _ = sender.send(Ok((addresses, server.handle())));
                        server.await
                    }
                    Err(e) => {
                        let message = e.to_string();
                        let _ = sender.send(Err(e));
                        Err(std::io::Error::other(message))
                    }
                }
            })
        });
        let (addresses, handle) = receiver
            .recv()
            .map_err(|_| std::io::Error::other("the registry thread ended before binding"))??;
        Ok(Self {
            address: addresses[0],
            handle,
            thread: Some(thread),
            registry: Some(held),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Stops the server and waits for it, and for its workers to let go of the registry: the store (the embedded
    /// database's lock on its file) is free when this returns.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(thread) = self.thread.take() {
            actix_web::rt::System::new().block_on(self.handle.stop(true));
            let _ = thread.join();
            // The worker threads drop their copies just after the server has stopped; the last one is dropped here,
            // so the store's own drop has finished too.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while self
                .registry
                .as_ref()
                .is_some_and(|r| std::sync::Arc::strong_count(r) > 1)
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            self.registry = None;
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_files_set_fields_and_refuse_unknown_ones() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let path = dir.path().join("registry.json");
        std::fs::write(
            &path,
            r#"{"listen": "127.0.0.1:9999", "max_upload_bytes": 1024}"#,
        )
        .expect("writes");
        let config = RegistryConfig::load(Some(&path)).expect("loads");
        assert_eq!(
            (config.listen.as_str(), config.max_upload_bytes),
            ("127.0.0.1:9999", 1024)
        );
        assert_eq!(config.workers, RegistryConfig::default().workers);
        std::fs::write(&path, r#"{"listen_on": "x"}"#).expect("writes");
        let error = RegistryConfig::load(Some(&path))
            .expect_err("refused")
            .to_string();
        assert!(error.contains("listen_on"), "{error}");
        let error =
            RegistryConfig::load(Some(&dir.path().join("missing.json"))).expect_err("refused");
        assert!(error.to_string().contains("missing.json"), "{error}");
    }
}
