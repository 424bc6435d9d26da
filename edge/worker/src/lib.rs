//! EdgeRec's CDN edge worker: a component of the `wasi:http/proxy` world that answers `POST /v1/recommend` like an
//! edge node, with one surface's deployment (plan and bundles) embedded by `edgerec worker build`. What it answers
//! is `edgerec_core::worker`; this crate is the `wasi:http` glue.

#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
mod http;
