//! The EdgeRec ranker compiled to WebAssembly.
//!
//! - `wasm32-unknown-unknown`: a wasm-bindgen API for browsers (`Ranker.load`, `ranker.recommend`).
//! - `wasm32-wasip2` (and native, for tests): a component exporting `wit/ranker.wit`'s `edgerec:ranker/ranking`
//!   interface, which edge nodes host through wasmtime's component model; see [`component`].
//!
//! Both are thin adapters over `edgerec-core`: the same feature encoding, model and ranking code.

#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
mod browser;
#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
pub mod component;
