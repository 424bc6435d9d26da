//! Files that are either whole or absent after a crash, redb databases created the same way, the encoding of the
//! records kept in them and the clock their timestamps come from: what the registry, the feature store, the
//! ingest and the edge node keep on disk goes through here.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::Database;

/// Who may read a file written by [`write_durably`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The default permissions (a blob, a bundle file).
    Shared,
    /// Its owner only, from the first byte (a key, a secret): mode 0600 on Unix.
    OwnerOnly,
}

/// A name beside `path` no other writer in this or another process uses at the same time.
fn aside(path: &Path, what: &str) -> std::path::PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.{what}-{}-{n}", std::process::id()))
}

/// Syncs the folder holding `path`, so a rename into it survives a crash.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

/// Whether `error` says the disk is full (ENOSPC) or the owner's quota is spent (EDQUOT): nothing is wrong with the
/// data or the program, and the same write succeeds once space is freed.
pub fn is_storage_full(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// Writes `bytes` to `path` so that after a crash the file is either the old one, absent, or exactly `bytes`:
/// written under a temporary name, synced, renamed into place, and the folder synced. When writing fails (a full
/// disk: [`is_storage_full`]) the temporary file is removed, so neither a partial file nor its space stays behind.
pub fn write_durably(path: &Path, bytes: &[u8], access: Access) -> std::io::Result<()> {
    let temporary = aside(path, "partial");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if access == Access::OwnerOnly {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options.open(&temporary).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    let placed = written.and_then(|()| std::fs::rename(&temporary, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&temporary);
        return Err(e);
    }
    sync_parent(path)
}

/// Like [`write_durably`], but never replaces a file already at `path` (whoever wrote first wins; `Ok(false)`
/// when one was there): for secrets several processes may create at once.
pub fn create_durably(path: &Path, bytes: &[u8], access: Access) -> std::io::Result<bool> {
    if path.exists() {
        return Ok(false);
    }
    let temporary = aside(path, "new");
    write_durably(&temporary, bytes, access)?;
    // A link fails when the name exists, unlike a rename.
    let linked = std::fs::hard_link(&temporary, path);
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => sync_parent(path).map(|()| true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Opens the redb file at `path`, creating a missing one under a temporary name first: redb writes a new file's
/// magic number last, so a process killed while redb initialises the file would leave one that every later open
/// refuses ("invalid data").
pub fn create_database(path: &Path) -> Result<Database, redb::DatabaseError> {
    create_database_with(path, redb::Builder::new())
}

/// [`create_database`] with the settings of `builder` (for example a bounded page cache).
pub fn create_database_with(
    path: &Path,
    builder: redb::Builder,
) -> Result<Database, redb::DatabaseError> {
    if !path.exists() {
        let partial = path.with_extension("redb-partial");
        let _ = std::fs::remove_file(&partial);
        drop(builder.create(&partial)?);
        std::fs::rename(&partial, path)?;
        sync_parent(path)?;
    }
    builder.create(path)
}

/// Milliseconds since the Unix epoch, now: the one clock every record and log timestamp is read from.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A record as the embedded stores keep it: JSON, so a database stays readable by hand and across versions
/// that add fields.
pub fn encode<T: serde::Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec(record).expect("records serialise")
}

/// A record [`encode`] wrote; an error says what is wrong with bytes that are not one.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_writes_replace_whole_files_and_leave_nothing_aside() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("key");
        write_durably(&path, b"one", Access::OwnerOnly).expect("writes");
        write_durably(&path, b"two", Access::OwnerOnly).expect("replaces");
        assert_eq!(std::fs::read(&path).expect("reads"), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o077, 0, "owner only");
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("lists").count(),
            1,
            "nothing left aside"
        );
    }

    #[test]
    fn a_failed_write_leaves_nothing_aside() {
        let dir = tempfile::tempdir().expect("temp dir");
        // A folder that is not empty cannot be renamed over: the write fails after the temporary file is written.
        let path = dir.path().join("blob");
        std::fs::create_dir(&path).expect("creates");
        std::fs::write(path.join("inside"), b"x").expect("writes");
        write_durably(&path, b"bytes", Access::Shared).expect_err("refused");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("lists")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["blob"], "nothing left aside");
    }

    #[test]
    fn full_disks_and_spent_quotas_are_told_apart_from_other_failures() {
        use std::io::{Error, ErrorKind};
        assert!(is_storage_full(&Error::from(ErrorKind::StorageFull)));
        assert!(is_storage_full(&Error::from(ErrorKind::QuotaExceeded)));
        assert!(!is_storage_full(&Error::from(ErrorKind::PermissionDenied)));
        #[cfg(target_os = "linux")]
        {
            // ENOSPC and EDQUOT as the OS reports them.
            assert!(is_storage_full(&Error::from_raw_os_error(28)));
            assert!(is_storage_full(&Error::from_raw_os_error(122)));
            assert!(!is_storage_full(&Error::from_raw_os_error(5)));
        }
    }

    #[test]
    fn a_created_file_is_never_replaced() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("secret");
        assert!(create_durably(&path, b"first", Access::OwnerOnly).expect("creates"));
        assert!(!create_durably(&path, b"second", Access::OwnerOnly).expect("keeps"));
        assert_eq!(std::fs::read(&path).expect("reads"), b"first");
        assert_eq!(std::fs::read_dir(dir.path()).expect("lists").count(), 1);
    }

    #[test]
    fn a_database_left_half_created_is_replaced() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("db.redb");
        // What a process killed during the first create leaves: a partial file, never the real name.
        std::fs::write(path.with_extension("redb-partial"), b"garbage").expect("writes");
        drop(create_database(&path).expect("creates"));
        drop(create_database(&path).expect("reopens"));
        assert!(!path.with_extension("redb-partial").exists());
    }
}
