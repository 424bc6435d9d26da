//! A file the node re-reads when it changes (API keys, a JWKS document), so revocations and rotations take effect
//! without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::AuthSetupError;

type Parse<T> = fn(&Path, &[u8]) -> Result<Arc<T>, AuthSetupError>;

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let metadata = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&metadata);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp {
        modified: metadata.modified().ok(),
        len: metadata.len(),
        inode,
    })
}

pub struct WatchedFile<T> {
    path: PathBuf,
    parse: Parse<T>,
    /// How often the file's metadata is looked at (zero: on every use).
    every: Duration,
    /// A missing file reads as this (an empty key set), or is an error at start when `None`.
    when_missing: Option<Arc<T>>,
    state: Mutex<State<T>>,
}

struct State<T> {
    value: Arc<T>,
    stamp: Option<Stamp>,
    checked: Option<Instant>,
}

impl<T> std::fmt::Debug for WatchedFile<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchedFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl<T> WatchedFile<T> {
    /// A file that must exist and parse now; re-read at most once a second.
    pub fn open(path: PathBuf, parse: Parse<T>) -> Result<Self, AuthSetupError> {
        Self::with(path, parse, Duration::from_secs(1), None)
    }

    /// A file that may be absent (then `when_missing`), looked at on every use.
    pub fn optional(
        path: PathBuf,
        parse: Parse<T>,
        when_missing: Arc<T>,
    ) -> Result<Self, AuthSetupError> {
        Self::with(path, parse, Duration::ZERO, Some(when_missing))
    }

    fn with(
        path: PathBuf,
        parse: Parse<T>,
        every: Duration,
        when_missing: Option<Arc<T>>,
    ) -> Result<Self, AuthSetupError> {
        let stamp = stamp(&path);
        let value = match (&stamp, &when_missing) {
            (None, Some(empty)) => empty.clone(),
            _ => read(&path, parse)?,
        };
        Ok(Self {
            path,
            parse,
            every,
            when_missing,
            state: Mutex::new(State {
                value,
                stamp,
                checked: Some(Instant::now()),
            }),
        })
    }

    /// The file's current contents. A change that does not parse keeps the previous contents and is logged: the
    /// CLI replaces these files atomically, so that only happens to a hand edit in progress.
    pub fn current(&self) -> Arc<T> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let due = state.checked.is_none_or(|at| at.elapsed() >= self.every);
        if due {
            state.checked = Some(Instant::now());
            let now = stamp(&self.path);
            if now != state.stamp {
                let value = match (&now, &self.when_missing) {
                    (None, Some(empty)) => Ok(empty.clone()),
                    _ => read(&self.path, self.parse),
                };
                // The stamp moves on either way: a file that does not parse is logged once, not read again on
                // every use until it changes.
                state.stamp = now;
                match value {
                    Ok(value) => state.value = value,
                    Err(e) => crate::log_line(
                        "auth",
                        serde_json::json!({ "error": e.to_string(), "kept": "the previous contents" }),
                    ),
                }
            }
        }
        state.value.clone()
    }

    /// Looks at the file on the next use whatever the interval (tests).
    #[cfg(test)]
    pub fn force_recheck(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).checked = None;
    }
}

fn read<T>(path: &Path, parse: Parse<T>) -> Result<Arc<T>, AuthSetupError> {
    let bytes = std::fs::read(path).map_err(|source| AuthSetupError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &bytes)
}
