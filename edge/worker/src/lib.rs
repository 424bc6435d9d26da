//! EdgeRec's CDN edge worker: a component of the `wasi:http/proxy` world that answers `POST /v1/recommend` like an
//! edge node, with one surface's deployment (plan and bundles) embedded by `edgerec worker build`.

#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
mod http;
pub mod worker;
