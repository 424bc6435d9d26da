//! The contract between the registry and whatever checks that a published model can be served: the registry calls
//! it on every publish; edge nodes provide the implementation with their own runtime and limits.

/// Loads a published model as edge nodes would and ranks once, within bounds of its own: the registry must not
/// be exhausted by a hostile model from a `publish` token.
pub trait ModelProbe: Send + Sync + std::fmt::Debug {
    /// `Err` with the reason the model cannot be served.
    fn probe(&self, manifest_json: &[u8], model: &[u8]) -> Result<(), String>;
}
