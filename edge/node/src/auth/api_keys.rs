//! API keys of server-to-server callers (a site's backend importing its order history): they may name any user,
//! for their scopes. Only the sha256 of a key is stored; the key itself is shown once, by `edgerec edge key
//! create`. The node re-reads the file whenever it changes, so a revoked key is refused from the next request on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::watched::WatchedFile;
use super::{API_KEY_PREFIX, AuthError, AuthSetupError, Scope, random_hex, write_private};

/// The keys file in a node's folder (`NodeConfig::models_dir`).
pub fn default_path(node_dir: &Path) -> PathBuf {
    node_dir.join("api-keys.json")
}

/// One key as stored: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    pub scopes: Vec<Scope>,
    /// sha256 of the key, hex.
    pub sha256: String,
    pub created_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<i64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    keys: Vec<ApiKeyRecord>,
}

/// The keys in force, by hash.
#[derive(Debug, Default)]
struct ActiveKeys(HashMap<String, ApiKeyRecord>);

fn parse(path: &Path, bytes: &[u8]) -> Result<Arc<ActiveKeys>, AuthSetupError> {
    let file = parse_file(path, bytes)?;
    Ok(Arc::new(ActiveKeys(
        file.keys
            .into_iter()
            .filter(|k| k.revoked_ms.is_none())
            .map(|k| (k.sha256.clone(), k))
            .collect(),
    )))
}

fn parse_file(path: &Path, bytes: &[u8]) -> Result<KeysFile, AuthSetupError> {
    serde_json::from_slice(bytes).map_err(|e| AuthSetupError::Invalid {
        path: path.to_path_buf(),
        message: format!("not an API keys file: {e}"),
    })
}

fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The node's view of the keys file.
#[derive(Debug)]
pub struct ApiKeyFile {
    keys: WatchedFile<ActiveKeys>,
}

impl ApiKeyFile {
    /// A missing file is no key at all; one that does not parse is refused now.
    pub fn open(path: PathBuf) -> Result<Self, AuthSetupError> {
        Ok(Self {
            keys: WatchedFile::optional(path, parse, Arc::default())?,
        })
    }

    /// The key record `key` belongs to, if it is in force.
    pub fn find(&self, key: &str) -> Result<ApiKeyRecord, AuthError> {
        if key.len() > 256 {
            return Err(AuthError::Unauthenticated(
                "unknown or revoked API key".into(),
            ));
        }
        self.keys
            .current()
            .0
            .get(&hash(key))
            .cloned()
            .ok_or_else(|| AuthError::Unauthenticated("unknown or revoked API key".into()))
    }
}

fn read(path: &Path) -> Result<KeysFile, AuthSetupError> {
    match std::fs::read(path) {
        Ok(bytes) => parse_file(path, &bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KeysFile::default()),
        Err(source) => Err(AuthSetupError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Holds the keys file's lock (a file beside it) while a command reads, changes and rewrites it, so a `create`
/// and a `revoke` at the same time cannot lose one another's change.
fn locked<T>(
    path: &Path,
    change: impl FnOnce(&mut KeysFile) -> Result<T, AuthSetupError>,
) -> Result<T, AuthSetupError> {
    let lock_path = path.with_extension("lock");
    let failed = |source| AuthSetupError::Write {
        path: lock_path.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(failed)?;
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(failed)?;
    lock.lock().map_err(failed)?;
    let mut file = read(path)?;
    let answer = change(&mut file)?;
    write(path, &file)?;
    Ok(answer)
}

fn write(path: &Path, file: &KeysFile) -> Result<(), AuthSetupError> {
    let mut bytes = serde_json::to_vec_pretty(file).expect("key records serialize");
    bytes.push(b'\n');
    write_private(path, &bytes)
}

/// Adds a key named `name` with `scopes` to the file at `path`; returns its record and the key, which is not
/// stored and cannot be shown again.
pub fn create(
    path: &Path,
    name: &str,
    scopes: &[Scope],
) -> Result<(ApiKeyRecord, String), AuthSetupError> {
    if name.is_empty() || name.len() > 64 {
        return Err(AuthSetupError::Config(
            "a key name must be 1 to 64 bytes".into(),
        ));
    }
    if scopes.is_empty() {
        return Err(AuthSetupError::Config(
            "a key needs at least one scope (events, recommend)".into(),
        ));
    }
    let key = format!("{API_KEY_PREFIX}{}", random_hex(32));
    let mut scopes = scopes.to_vec();
    scopes.sort_by_key(|s| s.as_str());
    scopes.dedup();
    let record = ApiKeyRecord {
        id: format!("key-{}", random_hex(4)),
        name: name.into(),
        scopes,
        sha256: hash(&key),
        created_ms: edgerec_features::now_ms(),
        revoked_ms: None,
    };
    locked(path, |file| {
        file.keys.push(record.clone());
        Ok(())
    })?;
    Ok((record, key))
}

/// Every key in the file, revoked ones included.
pub fn list(path: &Path) -> Result<Vec<ApiKeyRecord>, AuthSetupError> {
    Ok(read(path)?.keys)
}

/// Marks key `id` revoked (kept in the file, for the record).
pub fn revoke(path: &Path, id: &str) -> Result<ApiKeyRecord, AuthSetupError> {
    locked(path, |file| {
        let record = file.keys.iter_mut().find(|k| k.id == id).ok_or_else(|| {
            AuthSetupError::Config(format!("no API key `{id}` in {}", path.display()))
        })?;
        if record.revoked_ms.is_none() {
            record.revoked_ms = Some(edgerec_features::now_ms());
        }
        Ok(record.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stored_hashed_found_and_revoked_at_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("node").join("api-keys.json");
        let file = ApiKeyFile::open(path.clone()).expect("no file yet is no key");
        assert!(file.find("edk_nothing").is_err());

        let (record, key) = create(&path, "importer", &[Scope::Events]).expect("creates");
        assert!(key.starts_with(API_KEY_PREFIX));
        let stored = std::fs::read_to_string(&path).expect("reads");
        assert!(!stored.contains(&key), "the key itself is never stored");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "readable by its owner only");
        }
        assert_eq!(file.find(&key).expect("found").id, record.id);
        assert!(file.find(&format!("{key}x")).is_err());

        revoke(&path, &record.id).expect("revokes");
        assert!(file.find(&key).is_err(), "refused from the next use on");
        let listed = list(&path).expect("lists");
        assert_eq!(listed.len(), 1);
        assert!(listed[0].revoked_ms.is_some());
        assert!(revoke(&path, "key-none").is_err());
        assert!(create(&path, "none", &[]).is_err());

        std::fs::write(&path, "{not json").expect("breaks it");
        assert!(
            ApiKeyFile::open(path).is_err(),
            "a broken file is refused at start"
        );
    }
}
