//! A blocking client of the registry's HTTP API, for the `edgerec` command, the trainer and edge nodes.

use std::path::Path;

use edgerec_core::{Digest, Manifest};
use serde::de::DeserializeOwned;

use crate::keys::KeyRotation;
use crate::records::{
    AuditEntry, IssuedToken, Plan, PlanRequest, Revocation, Scope, TokenRecord, VersionRecord,
};
use crate::signature::SigningKeyDocument;

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The registry answered with an error.
    #[error("the registry answered {status} ({kind}): {message}")]
    Api {
        status: u16,
        kind: String,
        message: String,
    },
    #[error("cannot reach the registry at {url}: {message}")]
    Transport { url: String, message: String },
    #[error("{path}: {message}")]
    Bundle { path: String, message: String },
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// What reading a plan with `If-None-Match` gives.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanRead {
    Unchanged,
    Changed(Box<Plan>),
}

/// The registry at `base_url`, with an optional bearer token.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    agent: ureq::Agent,
    base_url: String,
    token: Option<String>,
}

struct Reply {
    status: u16,
    body: Vec<u8>,
}

impl RegistryClient {
    pub fn new(base_url: &str, token: Option<&str>) -> Self {
        Self::with_timeout(base_url, token, std::time::Duration::from_secs(300))
    }

    /// A client whose every call (upload or download included) gives up after `timeout`.
    pub fn with_timeout(base_url: &str, token: Option<&str>, timeout: std::time::Duration) -> Self {
        Self {
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(timeout))
                .build()
                .into(),
            base_url: base_url.trim_end_matches('/').to_string(),
            token: token.map(str::to_string),
        }
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        headers: &[(&str, String)],
    ) -> Result<Reply, ClientError> {
        let url = format!("{}{path}", self.base_url);
        let mut request = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let bytes = match body {
            Some((content_type, bytes)) => {
                request = request.header("Content-Type", content_type);
                bytes
            }
            None => Vec::new(),
        };
        let transport = |message: String| ClientError::Transport {
            url: url.clone(),
            message,
        };
        let request = request.body(bytes).map_err(|e| transport(e.to_string()))?;
        let mut response = self
            .agent
            .run(request)
            .map_err(|e| transport(e.to_string()))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .map_err(|e| transport(e.to_string()))?;
        if status >= 400 {
            let error: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            return Err(ClientError::Api {
                status,
                kind: error["error"]["kind"]
                    .as_str()
                    .unwrap_or("unknown")
                    .to_string(),
                message: error["error"]["message"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(500).collect()),
            });
        }
        Ok(Reply { status, body })
    }

    fn json<T: DeserializeOwned>(&self, reply: Reply) -> Result<T, ClientError> {
        serde_json::from_slice(&reply.body).map_err(|e| ClientError::Transport {
            url: self.base_url.clone(),
            message: format!("unexpected answer: {e}"),
        })
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let reply = self.call("GET", path, None, &[])?;
        self.json(reply)
    }

    fn send_json<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &impl serde::Serialize,
        headers: &[(&str, String)],
    ) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(body).expect("requests serialise");
        let reply = self.call(method, path, Some(("application/json", bytes)), headers)?;
        self.json(reply)
    }

    /// Uploads `bytes` under their sha256.
    pub fn upload_blob(&self, bytes: &[u8]) -> Result<Digest, ClientError> {
        let digest = Digest::of(bytes);
        self.call(
            "PUT",
            &format!("/v1/blobs/sha256:{digest}"),
            Some(("application/octet-stream", bytes.to_vec())),
            &[],
        )?;
        Ok(digest)
    }

    pub fn blob(&self, digest: &Digest) -> Result<Vec<u8>, ClientError> {
        Ok(self
            .call("GET", &format!("/v1/blobs/sha256:{digest}"), None, &[])?
            .body)
    }

    /// Uploads every file of the bundle folder `dir`, then publishes its manifest. Returns the version and whether
    /// it was new (false: the identical manifest was already published).
    pub fn publish_bundle(&self, dir: &Path) -> Result<(VersionRecord, bool), ClientError> {
        let bundle_error = |path: &Path, message: String| ClientError::Bundle {
            path: path.display().to_string(),
            message,
        };
        let manifest_path = dir.join("manifest.json");
        let manifest_json = std::fs::read(&manifest_path)
            .map_err(|e| bundle_error(&manifest_path, e.to_string()))?;
        let manifest: Manifest = serde_json::from_slice(&manifest_json)
            .map_err(|e| bundle_error(&manifest_path, format!("not a bundle manifest: {e}")))?;
        // A name is a file in this folder, never a path out of it.
        for name in manifest.files.keys() {
            edgerec_core::check_file_name(name)
                .map_err(|e| bundle_error(&manifest_path, e.to_string()))?;
        }
        for name in manifest.files.keys() {
            let path = dir.join(name);
            let bytes = std::fs::read(&path).map_err(|e| bundle_error(&path, e.to_string()))?;
            self.upload_blob(&bytes)?;
        }
        let reply = self.call(
            "POST",
            &format!("/v1/models/{}/versions", manifest.name),
            Some(("application/json", manifest_json)),
            &[],
        )?;
        let created = reply.status == 201;
        Ok((self.json(reply)?, created))
    }

    pub fn models(&self) -> Result<serde_json::Value, ClientError> {
        self.get("/v1/models")
    }

    pub fn versions(&self, model: &str) -> Result<Vec<VersionRecord>, ClientError> {
        self.get(&format!("/v1/models/{model}/versions"))
    }

    pub fn version(&self, model: &str, version: &str) -> Result<VersionRecord, ClientError> {
        self.get(&format!("/v1/models/{model}/versions/{version}"))
    }

    pub fn plan(&self, surface: &str) -> Result<Option<Plan>, ClientError> {
        match self.get(&format!("/v1/plans/{surface}")) {
            Ok(plan) => Ok(Some(plan)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads a plan unless it is still the one whose `ETag` is `known` ([`Plan::etag`]; 304 from the registry):
    /// the same revision, the same number of revocations, signed by the same key.
    pub fn plan_if_changed(&self, surface: &str, known: &str) -> Result<PlanRead, ClientError> {
        let reply = self.call(
            "GET",
            &format!("/v1/plans/{surface}"),
            None,
            &[("If-None-Match", format!("\"{known}\""))],
        )?;
        if reply.status == 304 {
            return Ok(PlanRead::Unchanged);
        }
        Ok(PlanRead::Changed(Box::new(self.json(reply)?)))
    }

    /// Replaces a plan, conditional on the revision the caller read (`None`: there was no plan).
    pub fn deploy(
        &self,
        surface: &str,
        request: &PlanRequest,
        if_match: Option<u64>,
    ) -> Result<Plan, ClientError> {
        let headers: Vec<(&str, String)> = if_match
            .map(|r| ("If-Match", format!("\"{r}\"")))
            .into_iter()
            .collect();
        self.send_json("PUT", &format!("/v1/plans/{surface}"), request, &headers)
    }

    pub fn rollback(&self, surface: &str, reason: &str) -> Result<Plan, ClientError> {
        self.send_json(
            "POST",
            &format!("/v1/plans/{surface}/rollback"),
            &serde_json::json!({ "reason": reason }),
            &[],
        )
    }

    /// Puts a version on the registry's revocation list (deploy scope); the answer names the plans that still
    /// name it.
    pub fn revoke(
        &self,
        model: &str,
        version: &str,
        reason: &str,
    ) -> Result<serde_json::Value, ClientError> {
        self.send_json(
            "POST",
            &format!("/v1/models/{model}/versions/{version}/revoke"),
            &serde_json::json!({ "reason": reason }),
            &[],
        )
    }

    /// Deletes a version no plan names (admin scope); it goes on the revocation list.
    pub fn delete_version(
        &self,
        model: &str,
        version: &str,
        reason: &str,
    ) -> Result<(), ClientError> {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("reason", reason)
            .finish();
        self.call(
            "DELETE",
            &format!("/v1/models/{model}/versions/{version}?{query}"),
            None,
            &[],
        )?;
        Ok(())
    }

    pub fn revocations(&self) -> Result<Vec<Revocation>, ClientError> {
        self.get("/v1/revocations")
    }

    pub fn history(&self, surface: &str) -> Result<Vec<Plan>, ClientError> {
        self.get(&format!("/v1/plans/{surface}/history"))
    }

    pub fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, ClientError> {
        self.get(&format!("/v1/audit?limit={limit}"))
    }

    pub fn signing_key(&self) -> Result<SigningKeyDocument, ClientError> {
        self.get("/v1/signing-key")
    }

    /// Rotates the registry to a new signing key (admin scope); the retired key stays valid `grace_hours`.
    pub fn rotate_key(&self, grace_hours: u32) -> Result<KeyRotation, ClientError> {
        self.send_json(
            "POST",
            "/v1/signing-key/rotate",
            &serde_json::json!({ "grace_hours": grace_hours }),
            &[],
        )
    }

    pub fn create_token(&self, name: &str, scopes: &[Scope]) -> Result<IssuedToken, ClientError> {
        self.send_json(
            "POST",
            "/v1/tokens",
            &serde_json::json!({ "name": name, "scopes": scopes }),
            &[],
        )
    }

    pub fn tokens(&self) -> Result<Vec<TokenRecord>, ClientError> {
        self.get("/v1/tokens")
    }

    pub fn revoke_token(&self, id: &str) -> Result<(), ClientError> {
        self.call("DELETE", &format!("/v1/tokens/{id}"), None, &[])?;
        Ok(())
    }
}
