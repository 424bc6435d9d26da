//! One run of the id index: an immutable file of sorted id keys with the binary fuse filter of its keys, written
//! once (a flush of new ids, or a merge of older runs) and deleted whole when its newest event expires.
//!
//! Layout: a header (magic, version, key count, the log's sequence range whose ids it holds, its newest event
//! time), the keys (16 bytes each, little-endian, ascending) and a CRC-32 of everything before it. Opening reads
//! the file once to check it and builds the run's filter (about 9 bits per id, in memory) and a fence of every
//! 256th key. A look-up asks the filter and reads the file only when it says "maybe" (fewer than 0.4% of new
//! ids): one 4 KiB block found through the fence.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use xorf::{BinaryFuse8, Filter as _};

const MAGIC: &[u8; 8] = b"EDGERIDS";
const VERSION: u32 = 1;
/// Magic, version, count, first and last sequence number, newest event time.
const HEADER: u64 = 8 + 4 + 8 + 8 + 8 + 8;
const KEY: u64 = 16;
/// Keys per block read on a look-up (4 KiB).
const BLOCK_KEYS: u64 = 256;

/// The filter's key of an id key: its high half (keys are hashes, so any half is as good; the high one keeps the
/// order of sorted keys, so equal halves are neighbours).
fn filter_key(key: u128) -> u64 {
    (key >> 64) as u64
}

/// The part of a run kept in memory, gathered from its keys in ascending order as they are written or read.
#[derive(Default)]
struct Lookup {
    count: u64,
    fence: Vec<u128>,
    filter_keys: Vec<u64>,
}

impl Lookup {
    fn push(&mut self, key: u128) {
        if self.count.is_multiple_of(BLOCK_KEYS) {
            self.fence.push(key);
        }
        if self.filter_keys.last() != Some(&filter_key(key)) {
            self.filter_keys.push(filter_key(key));
        }
        self.count += 1;
    }

    fn into_run(self, meta: RunMeta, path: &Path, file: File) -> Result<Run, RunError> {
        let filter =
            BinaryFuse8::try_from(self.filter_keys.as_slice()).map_err(|e| RunError::Damaged {
                path: path.to_owned(),
                reason: format!("building its filter: {e}"),
            })?;
        Ok(Run {
            meta,
            path: path.to_owned(),
            file,
            count: self.count,
            filter,
            fence: self.fence,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
}

impl RunError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }

    pub fn is_no_space(&self) -> bool {
        matches!(self, Self::Io { source, .. } if edgerec_storage::is_storage_full(source))
    }
}

/// What a run holds besides its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunMeta {
    /// The log's records `first_seq..=last_seq` have their ids in this run (or had no event).
    pub first_seq: u64,
    pub last_seq: u64,
    /// The newest event time of any id in the run: the run expires whole once this is older than the maximum age.
    pub max_time_ms: i64,
}

impl RunMeta {
    pub fn file_name(&self) -> String {
        format!("{:020}-{:020}.ids", self.first_seq, self.last_seq)
    }

    /// Whether this run's records are all in `other`'s (a merge's output kept beside its inputs by a crash).
    pub fn within(&self, other: &RunMeta) -> bool {
        other.first_seq <= self.first_seq && self.last_seq <= other.last_seq && self != other
    }
}

pub struct Run {
    pub meta: RunMeta,
    pub path: PathBuf,
    file: File,
    count: u64,
    filter: BinaryFuse8,
    /// Every `BLOCK_KEYS`-th key, from the first.
    fence: Vec<u128>,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("path", &self.path)
            .field("meta", &self.meta)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl Run {
    /// Writes the run of `keys` (ascending; equal neighbours are written once) into `dir`, durably: under a
    /// temporary name, synced, renamed, the folder synced. Returns `None` for no keys (nothing to remember).
    pub fn write(
        dir: &Path,
        meta: RunMeta,
        keys: impl Iterator<Item = Result<u128, RunError>>,
    ) -> Result<Option<Run>, RunError> {
        let path = dir.join(meta.file_name());
        let partial = dir.join(format!(".{}.partial", meta.file_name()));
        let written = write_file(&partial, meta, keys);
        let (file, lookup) = match written {
            Ok(Some(written)) => written,
            Ok(None) => {
                let _ = std::fs::remove_file(&partial);
                return Ok(None);
            }
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
        };
        std::fs::rename(&partial, &path).map_err(|e| RunError::io(&path, e))?;
        edgerec_storage::sync_parent(&path).map_err(|e| RunError::io(&path, e))?;
        // Built from the keys as they were written: the file is not read back.
        lookup.into_run(meta, &path, file).map(Some)
    }

    /// Opens a run, checking its checksum and reading its filter and fence into memory.
    pub fn open(path: &Path) -> Result<Run, RunError> {
        let io = |e| RunError::io(path, e);
        let damaged = |reason: &str| RunError::Damaged {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut reader = BufReader::with_capacity(1 << 16, &file);
        let mut crc = crc32fast::Hasher::new();
        let mut header = [0u8; HEADER as usize];
        reader
            .read_exact(&mut header)
            .map_err(|_| damaged("shorter than its header"))?;
        crc.update(&header);
        if &header[..8] != MAGIC {
            return Err(damaged("not a run of ids (bad magic number)"));
        }
        let field = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
        let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(damaged(&format!("unknown version {version}")));
        }
        let count = field(12);
        let meta = RunMeta {
            first_seq: field(20),
            last_seq: field(28),
            max_time_ms: field(36) as i64,
        };
        if len.checked_sub(HEADER + 4) != count.checked_mul(KEY) {
            return Err(damaged("its length does not match its count of keys"));
        }
        let mut lookup = Lookup::default();
        let mut key = [0u8; KEY as usize];
        for _ in 0..count {
            reader.read_exact(&mut key).map_err(io)?;
            crc.update(&key);
            lookup.push(u128::from_le_bytes(key));
        }
        let mut stored_crc = [0u8; 4];
        reader.read_exact(&mut stored_crc).map_err(io)?;
        if crc.finalize() != u32::from_le_bytes(stored_crc) {
            return Err(damaged("checksum mismatch"));
        }
        drop(reader);
        lookup.into_run(meta, path, file)
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether the run holds `key`.
    pub fn contains(&self, key: u128) -> Result<bool, RunError> {
        if !self.filter.contains(&filter_key(key)) {
            return Ok(false);
        }
        let block = self.fence.partition_point(|first| *first <= key);
        let Some(block) = block.checked_sub(1) else {
            return Ok(false);
        };
        let start = block as u64 * BLOCK_KEYS;
        let n = BLOCK_KEYS.min(self.count - start) as usize;
        let mut bytes = vec![0u8; n * KEY as usize];
        self.file
            .read_exact_at(&mut bytes, HEADER + start * KEY)
            .map_err(|e| RunError::io(&self.path, e))?;
        let keys: Vec<u128> = bytes
            .chunks_exact(KEY as usize)
            .map(|k| u128::from_le_bytes(k.try_into().expect("16 bytes")))
            .collect();
        Ok(keys.binary_search(&key).is_ok())
    }

    /// The run's keys in ascending order, read from its file.
    pub fn keys(&self) -> impl Iterator<Item = Result<u128, RunError>> + '_ {
        let mut reader = BufReader::with_capacity(1 << 16, &self.file);
        let mut at = 0u64;
        let mut positioned = false;
        std::iter::from_fn(move || {
            if at == self.count {
                return None;
            }
            if !positioned {
                positioned = true;
                if let Err(e) = std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(HEADER)) {
                    return Some(Err(RunError::io(&self.path, e)));
                }
            }
            let mut key = [0u8; KEY as usize];
            at += 1;
            Some(
                reader
                    .read_exact(&mut key)
                    .map(|()| u128::from_le_bytes(key))
                    .map_err(|e| RunError::io(&self.path, e)),
            )
        })
    }
}

/// Writes the file (open for reading too) and gathers its look-up; `None` when `keys` was empty.
fn write_file(
    path: &Path,
    meta: RunMeta,
    keys: impl Iterator<Item = Result<u128, RunError>>,
) -> Result<Option<(File, Lookup)>, RunError> {
    let io = |e| RunError::io(path, e);
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io)?;
    let mut out = BufWriter::with_capacity(1 << 16, &file);
    // The count is not known yet: the header is written again once the keys are.
    let mut header = [0u8; HEADER as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&VERSION.to_le_bytes());
    header[20..28].copy_from_slice(&meta.first_seq.to_le_bytes());
    header[28..36].copy_from_slice(&meta.last_seq.to_le_bytes());
    header[36..44].copy_from_slice(&meta.max_time_ms.to_le_bytes());
    out.write_all(&header).map_err(io)?;
    let mut body_crc = crc32fast::Hasher::new();
    let mut previous: Option<u128> = None;
    let mut lookup = Lookup::default();
    for key in keys {
        let key = key?;
        if previous.is_some_and(|p| p >= key) {
            if previous == Some(key) {
                continue;
            }
            return Err(RunError::Damaged {
                path: path.to_owned(),
                reason: "keys out of order".into(),
            });
        }
        previous = Some(key);
        let bytes = key.to_le_bytes();
        out.write_all(&bytes).map_err(io)?;
        body_crc.update(&bytes);
        lookup.push(key);
    }
    if lookup.count == 0 {
        return Ok(None);
    }
    header[12..20].copy_from_slice(&lookup.count.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header);
    crc.combine(&body_crc);
    out.write_all(&crc.finalize().to_le_bytes()).map_err(io)?;
    let written = out.into_inner().map_err(|e| io(e.into_error()))?;
    written.write_all_at(&header, 0).map_err(io)?;
    written.sync_all().map_err(io)?;
    Ok(Some((file, lookup)))
}
