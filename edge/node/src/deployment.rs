//! What each surface serves right now: a plan revision, its variants and their loaded models. A new deployment
//! replaces the old one in one pointer swap, so a request sees either the old plan or the new one, never a mix.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use edgerec_core::{Digest, ModelName, Surface, VariantName, Version, ab};
use edgerec_registry_api::records::{Plan, Variant, VersionRecord};
use edgerec_registry_api::signature::SigningKeyDocument;
use serde::Serialize;

use crate::model::LoadedModel;

#[derive(Debug)]
pub struct ServingVariant {
    pub name: VariantName,
    pub weight: u32,
    pub model: Arc<LoadedModel>,
}

#[derive(Debug)]
pub struct Deployment {
    /// The registry's plan this deployment carries out (browsers fetch it to pick the same variant).
    pub plan: Plan,
    /// The plan's variants that serve, in plan order.
    pub variants: Vec<ServingVariant>,
    /// The plan's variants whose version the plan's signature lists as revoked: they serve nothing, and their
    /// users go to the other variants (or to popularity when none is left).
    pub revoked: Vec<Variant>,
    /// When this node started serving it, milliseconds since the Unix epoch.
    pub since_ms: i64,
}

/// Which variant answers a user.
#[derive(Debug, Clone, Copy)]
pub enum Assigned<'a> {
    /// The plan's own variant for the user.
    Own(&'a ServingVariant),
    /// Another variant, as the user's own is revoked.
    Reassigned {
        serving: &'a ServingVariant,
        revoked: &'a Variant,
    },
    /// Every variant of the plan is revoked: the user's own, which serves nothing.
    NoneServing(&'a Variant),
}

impl Deployment {
    /// The variant of `user_key` (the user id, or the request id for anonymous requests): the same on every node
    /// that serves this plan (and in the browser package), as the buckets depend only on the plan's salt, the key
    /// and which variants are revoked.
    pub fn variant_for(&self, user_key: &str) -> Assigned<'_> {
        let weights: Vec<u32> = self.plan.variants.iter().map(|v| v.weight).collect();
        let serving_variant =
            |variant: &Variant| self.variants.iter().find(|s| s.name == variant.name);
        let serving: Vec<bool> = self
            .plan
            .variants
            .iter()
            .map(|v| serving_variant(v).is_some())
            .collect();
        // The follower installs only plans whose weights cover every bucket.
        let assignment = ab::assign_serving(&self.plan.salt, user_key, &weights, &serving)
            .unwrap_or(ab::Assignment {
                own: 0,
                serving: serving.iter().position(|&s| s),
            });
        let own = &self.plan.variants[assignment.own];
        let by_index = |index: usize| serving_variant(&self.plan.variants[index]);
        match assignment.serving.and_then(by_index) {
            Some(variant) if assignment.serving == Some(assignment.own) => Assigned::Own(variant),
            Some(variant) => Assigned::Reassigned {
                serving: variant,
                revoked: own,
            },
            None => Assigned::NoneServing(own),
        }
    }

    pub fn describe(&self) -> DeploymentStatus {
        DeploymentStatus {
            surface: self.plan.surface.clone(),
            revision: self.plan.revision,
            salt: self.plan.salt.clone(),
            since_ms: self.since_ms,
            variants: self
                .variants
                .iter()
                .map(|v| VariantStatus {
                    name: v.name.clone(),
                    weight: v.weight,
                    model: v.model.model().clone(),
                    version: v.model.version().clone(),
                    manifest_digest: v.model.files.record.manifest_digest,
                })
                .collect(),
            revoked: self.revoked.clone(),
        }
    }
}

/// A deployment as `GET /v1/deployments` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct DeploymentStatus {
    pub surface: Surface,
    pub revision: u64,
    pub salt: String,
    pub since_ms: i64,
    pub variants: Vec<VariantStatus>,
    /// The plan's variants that serve nothing, their version being revoked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked: Vec<Variant>,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct VariantStatus {
    pub name: VariantName,
    pub weight: u32,
    pub model: ModelName,
    pub version: Version,
    pub manifest_digest: Digest,
}

/// The current deployment of every surface.
#[derive(Debug, Default)]
pub struct Deployments {
    current: RwLock<HashMap<String, Arc<Deployment>>>,
    /// The registry key every served model was verified against, once the follower has settled on one, with the
    /// rotations that lead to it.
    signing_key: RwLock<Option<SigningKeyDocument>>,
}

impl Deployments {
    pub fn get(&self, surface: &str) -> Option<Arc<Deployment>> {
        self.read().get(surface).cloned()
    }

    /// Puts `deployment` into service for its surface and returns the one it replaces.
    pub fn install(&self, deployment: Deployment) -> Option<Arc<Deployment>> {
        self.current
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(deployment.plan.surface.to_string(), Arc::new(deployment))
    }

    pub fn all(&self) -> Vec<Arc<Deployment>> {
        let mut all: Vec<_> = self.read().values().cloned().collect();
        all.sort_by(|a, b| a.plan.surface.cmp(&b.plan.surface));
        all
    }

    /// A loaded model of `model@version`, if any surface serves it (so a plan change reuses it as it is).
    pub fn loaded(&self, model: &str, version: &str) -> Option<Arc<LoadedModel>> {
        self.read().values().find_map(|deployment| {
            deployment
                .variants
                .iter()
                .find(|v| v.model.model() == model && v.model.version() == version)
                .map(|v| v.model.clone())
        })
    }

    /// The version record of `model@version`, if any surface serves it.
    pub fn record(&self, model: &str, version: &str) -> Option<VersionRecord> {
        self.loaded(model, version).map(|m| m.files.record.clone())
    }

    /// The bytes of a bundle file a served model holds, by digest.
    pub fn blob(&self, digest: &Digest) -> Option<Arc<[u8]>> {
        self.read().values().find_map(|deployment| {
            deployment.variants.iter().find_map(|v| {
                let files = &v.model.files;
                if files.record.manifest_digest == *digest {
                    Some(files.manifest.clone())
                } else if files.record.files.get(edgerec_core::MODEL_FILE) == Some(digest) {
                    Some(files.model.clone())
                } else {
                    None
                }
            })
        })
    }

    pub fn set_signing_key(&self, document: SigningKeyDocument) {
        *self.signing_key.write().unwrap_or_else(|e| e.into_inner()) = Some(document);
    }

    /// The registry's key document as this node follows it: its current key and the rotations to it.
    pub fn signing_key(&self) -> Option<SigningKeyDocument> {
        self.signing_key
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Deployment>>> {
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }
}
