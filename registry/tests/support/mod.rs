//! What the registry's test files share: the golden bundle, a runtime for the stores' futures, and registries on
//! both backends.

use std::future::Future;
use std::path::{Path, PathBuf};

use edgerec_core::{MODEL_FILE, Manifest};
use edgerec_registry::aws::{AwsConfig, AwsStore};
use edgerec_registry::embedded::EmbeddedStore;
use edgerec_registry::service::Registry;
use edgerec_registry::signing::ManifestSigner;

/// Runs a store future (the S3 + DynamoDB backend needs a Tokio runtime; the embedded one runs anywhere).
pub fn run<T>(future: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

/// `manifest.json` and `model.onnx` of the golden bundle.
pub fn golden() -> (Vec<u8>, Vec<u8>) {
    let dir = golden_dir();
    (
        std::fs::read(dir.join("manifest.json")).expect("golden manifest"),
        std::fs::read(dir.join(MODEL_FILE)).expect("golden model"),
    )
}

pub fn golden_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo test"))
        .join("../testdata/golden/bundle")
}

/// The golden manifest re-labelled as `version`.
pub fn golden_as(version: &str) -> Vec<u8> {
    let mut manifest: Manifest = serde_json::from_slice(&golden().0).expect("parses");
    manifest.version = version.into();
    serde_json::to_vec_pretty(&manifest).expect("serialises")
}

fn signer(dir: &Path) -> ManifestSigner {
    ManifestSigner::load_or_create(&dir.join("signing.key")).expect("key")
}

/// A registry on the embedded backend in `dir`.
pub fn embedded_registry(dir: &Path, max_upload_bytes: u64) -> Registry<EmbeddedStore> {
    Registry {
        store: EmbeddedStore::open(dir).expect("opens"),
        signer: signer(dir),
        max_upload_bytes,
        probe: std::sync::Arc::new(edgerec_registry::service::InProcessProbe),
    }
}

/// A fresh table and bucket on the test servers `scripts/aws-local.sh start` runs (its variables say where).
pub fn aws_config(test: &str) -> AwsConfig {
    AwsConfig::for_test_servers(test).unwrap_or_else(|e| panic!("{e}"))
}

/// A registry on the S3 + DynamoDB backend of `config`, its table and bucket created.
pub fn aws_registry(config: &AwsConfig, dir: &Path, max_upload_bytes: u64) -> Registry<AwsStore> {
    let store = AwsStore::connect(config);
    run(store.ensure_created()).expect("creates the table and bucket");
    Registry {
        store,
        signer: signer(dir),
        max_upload_bytes,
        probe: std::sync::Arc::new(edgerec_registry::service::InProcessProbe),
    }
}
