//! The EdgeRec edge node.
//!
//! For now: the wasmtime host that runs the WASI ranker ([`RankerEngine`], [`RankerInstance`]). The HTTP service,
//! registry follower and feature cache build on it.

mod host;

pub use host::{
    DEFAULT_CALL_DEADLINE, DEFAULT_LOAD_DEADLINE, HostError, Loaded, RankerEngine, RankerInstance,
};
