//! The EdgeRec ranker compiled to WebAssembly.
//!
//! - `wasm32-unknown-unknown`: a wasm-bindgen API for browsers (`Ranker.load`, `ranker.recommend`).
//! - `wasm32-wasip1` (and native, for tests): a small C ABI that a host such as the edge node drives with JSON
//!   messages in the module's memory; see [`abi`].
//!
//! Both are thin adapters over `edgerec-core`: the same feature encoding, model and ranking code.

#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
pub mod abi;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
mod browser;
