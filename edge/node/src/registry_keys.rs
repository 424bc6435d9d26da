//! The registry keys a node verifies with: the key it was configured with (or pinned on first use), and the keys
//! the registry's signed rotations chain to from it, each retired key until its grace ends. The chain is read from
//! the registry's `/v1/signing-key` at start and again whenever a plan names a key this node does not accept.

use std::path::PathBuf;
use std::sync::Arc;

use edgerec_registry_api::client::RegistryClient;
use edgerec_registry_api::keys::TrustedKeys;
use edgerec_registry_api::signature::SigningKeyDocument;

use crate::deployment::Deployments;

/// Where the key comes from, and what has been learnt of the chain so far.
#[derive(Debug)]
pub struct RegistryKeys {
    configured: Option<String>,
    /// The data folder, where a key trusted on first use is pinned.
    dir: PathBuf,
    /// The configured or pinned key, once known.
    root: Option<String>,
    trusted: Option<TrustedKeys>,
    /// The last error reading or following the registry's keys, already logged.
    error: Option<String>,
    deployments: Arc<Deployments>,
}

impl RegistryKeys {
    pub fn new(configured: Option<String>, dir: PathBuf, deployments: Arc<Deployments>) -> Self {
        Self {
            configured,
            dir,
            root: None,
            trusted: None,
            error: None,
            deployments,
        }
    }

    /// The keys signatures are checked against: the configured key, else the pinned one, else the registry's,
    /// asked once and pinned; with the rotations the registry signed from it. `None` while no key is known.
    pub fn trusted(&mut self, client: &RegistryClient) -> Option<TrustedKeys> {
        if self.trusted.is_none() {
            self.refresh(client);
        }
        self.trusted.clone()
    }

    /// Whether a signature by key `id` is accepted at `now_ms`; if not, the registry's chain is read again first
    /// (a rotation this node has not seen yet).
    pub fn accepts(&mut self, client: &RegistryClient, id: &str, now_ms: i64) -> bool {
        let known = |keys: &Option<TrustedKeys>| {
            keys.as_ref()
                .is_some_and(|keys| keys.valid(id, now_ms).is_some())
        };
        if !known(&self.trusted) {
            self.refresh(client);
        }
        known(&self.trusted)
    }

    /// Reads the registry's key document and follows its rotations from the root key. A chain that does not
    /// verify is logged and ignored: the keys already trusted stay.
    fn refresh(&mut self, client: &RegistryClient) {
        // The registry's document, else (unreachable) the one kept from the last time: its rotations are checked
        // from the root key all the same, so a file altered on disk adds no key.
        let kept = self.dir.join("registry-keys.json");
        let fetched = client.signing_key();
        let from_registry = fetched.is_ok();
        let document = fetched.or_else(|error| {
            std::fs::read(&kept)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<SigningKeyDocument>(&bytes).ok())
                .ok_or(error)
        });
        if self.root.is_none() {
            self.root = self.configured.clone().or_else(|| self.pinned(&document));
        }
        let Some(root) = self.root.clone() else {
            return;
        };
        let chained = match &document {
            Ok(document) => {
                TrustedKeys::from_chain(&root, &document.rotations).map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        let trusted = match chained {
            Ok(trusted) => trusted,
            Err(error) => {
                self.log_once(format!(
                    "cannot follow the registry's key rotations from key {root}; verifying with the keys known: \
                     {error}"
                ));
                match (&self.trusted, TrustedKeys::single(&root)) {
                    (Some(_), _) => return,
                    (None, Ok(single)) => single,
                    (None, Err(e)) => {
                        self.log_once(format!("the configured registry key is not a key: {e}"));
                        return;
                    }
                }
            }
        };
        // A document that leaves out a rotation already verified (a man in the middle bringing back a retired
        // key) is not taken.
        if let Some(known) = &self.trusted
            && !trusted.extends(known)
        {
            self.log_once(format!(
                "the registry's key document leaves out rotations this node verified (from key {root}); keeping \
                 the keys known"
            ));
            return;
        }
        if self.trusted.as_ref() != Some(&trusted) {
            let current = trusted.current();
            crate::log_line(
                "follower",
                serde_json::json!({ "registry_key": current.id, "keys_trusted": trusted.all().len() }),
            );
        }
        // Kept whole or not at all, and only when it came from the registry (the kept one is already on disk).
        if let Ok(document) = &document
            && from_registry
        {
            let written = std::fs::create_dir_all(&self.dir).and_then(|()| {
                edgerec_storage::write_durably(
                    &kept,
                    &serde_json::to_vec(document).expect("a key document"),
                    edgerec_storage::Access::Shared,
                )
            });
            if let Err(e) = written {
                self.log_once(format!("cannot keep the registry's key document: {e}"));
            }
        }
        let rotations = document.map(|d| d.rotations).unwrap_or_default();
        self.deployments
            .set_signing_key(SigningKeyDocument::ed25519(
                trusted.current().public_key.clone(),
                rotations,
            ));
        self.trusted = Some(trusted);
    }

    /// The key pinned on first use, or the registry's, pinned now (trust on first use).
    fn pinned(
        &mut self,
        document: &Result<SigningKeyDocument, edgerec_registry_api::client::ClientError>,
    ) -> Option<String> {
        let pinned = self.dir.join("registry-key.hex");
        if let Ok(key) = std::fs::read_to_string(&pinned) {
            return Some(key.trim().to_string());
        }
        let key = match document {
            Ok(document) if !document.public_key.is_empty() => document.public_key.clone(),
            Ok(_) => {
                self.log_once("the registry returned an empty key".into());
                return None;
            }
            Err(e) => {
                self.log_once(format!(
                    "cannot get the registry's signing key, so no model can be verified yet: {e}"
                ));
                return None;
            }
        };
        let written =
            std::fs::create_dir_all(&self.dir).and_then(|()| std::fs::write(&pinned, &key));
        crate::log_line(
            "follower",
            serde_json::json!({
                "pinned_registry_key": key,
                "path": pinned.display().to_string(),
                "warning": "trusting the registry's key on first use; set registry.public_key to pin it explicitly",
                "error": written.err().map(|e| e.to_string()),
            }),
        );
        Some(key)
    }

    /// Logged once per distinct error, like the plan polls.
    fn log_once(&mut self, error: String) {
        if self.error.as_ref() != Some(&error) {
            crate::log_line("follower", serde_json::json!({ "error": error }));
            self.error = Some(error);
        }
    }
}
