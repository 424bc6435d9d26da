//! What crosses EdgeRec's registry API, for every side of it: the records the registry serves
//! ([`records::VersionRecord`], [`records::Plan`], ...), a blocking [`client::RegistryClient`], the check of a
//! manifest's signature and the signing-key document ([`signature`]), and the contract of the model probe
//! ([`probe::ModelProbe`]). Edge nodes and tools depend on this crate, not on the registry server (its HTTP
//! framework, stores and AWS backend).

pub mod client;
pub mod keys;
pub mod probe;
pub mod records;
pub mod signature;
