//! The index's earlier form, one redb file (`dedupe.redb` beside the log's segments): its ids become one run and
//! the file is removed, so a node upgraded in place keeps refusing retries of events it took before.

use std::path::Path;

use redb::{ReadableTable as _, TableDefinition};

use super::DedupeError;
use super::run::{Run, RunMeta};

const IDS: TableDefinition<u128, i64> = TableDefinition::new("ids");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Imports `dedupe.redb` from the folder above `dir` if there is one.
pub fn import(dir: &Path) -> Result<(), DedupeError> {
    let Some(path) = dir.parent().map(|p| p.join("dedupe.redb")) else {
        return Ok(());
    };
    if !path.exists() {
        return Ok(());
    }
    let failed = |e: redb::Error| DedupeError {
        path: path.clone(),
        message: format!("importing the earlier index: {e}"),
        no_space: false,
    };
    {
        let db = redb::Database::open(&path).map_err(|e| failed(e.into()))?;
        let txn = db.begin_read().map_err(|e| failed(e.into()))?;
        let indexed_seq = match txn.open_table(META) {
            Ok(meta) => meta
                .get("indexed_seq")
                .map_err(|e| failed(e.into()))?
                .map_or(0, |v| v.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => 0,
            Err(e) => return Err(failed(e.into())),
        };
        match txn.open_table(IDS) {
            Ok(ids) => {
                let mut max_time_ms = i64::MIN;
                for entry in ids.iter().map_err(|e| failed(e.into()))? {
                    let (_, time) = entry.map_err(|e| failed(e.into()))?;
                    max_time_ms = max_time_ms.max(time.value());
                }
                let meta = RunMeta {
                    first_seq: 1,
                    last_seq: indexed_seq,
                    max_time_ms,
                };
                // redb iterates in key order: the keys go into the run as they come.
                let keys = ids.iter().map_err(|e| failed(e.into()))?.map(|entry| {
                    entry
                        .map(|(key, _)| key.value())
                        .map_err(|e| super::run::RunError::Damaged {
                            path: path.clone(),
                            reason: e.to_string(),
                        })
                });
                Run::write(dir, meta, keys)?;
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(failed(e.into())),
        }
    }
    std::fs::remove_file(&path).map_err(|e| super::io_error(&path, e))?;
    edgerec_storage::sync_parent(&path).map_err(|e| super::io_error(&path, e))
}
