//! Where the `edgerec` command keeps and finds things by default. The same rules as `scripts/env.sh`: everything
//! under `$EDGEREC_CACHE` (default `~/.cache/edgerec`), each folder overridable on its own.

use std::path::PathBuf;

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// `$EDGEREC_CACHE`, else `~/.cache/edgerec`.
fn cache_root() -> PathBuf {
    env_path("EDGEREC_CACHE").unwrap_or_else(|| {
        env_path("HOME")
            .unwrap_or_else(std::env::temp_dir)
            .join(".cache/edgerec")
    })
}

/// Precompiled Wasm modules.
pub fn module_cache_dir() -> PathBuf {
    cache_root().join("modules")
}

/// Fetched datasets.
pub fn data_dir() -> PathBuf {
    cache_root().join("data")
}

/// A file that `scripts/build-wasm.sh` built: under `$EDGEREC_WASM_DIR`, else `edgerec-wasm` in the cargo target
/// folder (`$CARGO_TARGET_DIR`, else the cache's `target`).
pub fn wasm_artifact(name: &str) -> PathBuf {
    let dir = env_path("EDGEREC_WASM_DIR").unwrap_or_else(|| {
        env_path("CARGO_TARGET_DIR")
            .unwrap_or_else(|| cache_root().join("target"))
            .join("edgerec-wasm")
    });
    dir.join(name)
}
