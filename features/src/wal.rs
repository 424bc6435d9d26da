//! The write-ahead log: numbered records in segment files `<first sequence number, 20 digits>.wal`.
//!
//! A frame is `payload length (u32 LE) | crc32 of sequence number and payload (u32 LE) | sequence number (u64 LE)
//! | payload (JSON)`. Appends are written at the end of the newest (active) segment and made durable by
//! [`Wal::sync`], which the ingest calls once per group of batches. A crash can leave a torn frame at the end of
//! the active segment only; opening cuts it off (it was never acknowledged). Anything else that does not read back
//! is corruption and is reported, never skipped. The active segment is never removed, so its name carries the
//! sequence numbering across restarts even when every older segment has been shipped.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::event::{Event, ServedRequest};

const HEADER: usize = 16;
/// Largest payload: the writer refuses a bigger entry, and a frame claiming more is corrupt to the reader.
const MAX_PAYLOAD: usize = 16 << 20;

/// What the log holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WalEntry {
    Event(Event),
    Served(ServedRequest),
}

#[derive(Debug, Clone, PartialEq)]
pub struct WalRecord {
    pub seq: u64,
    pub entry: WalEntry,
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("write-ahead log segment {path} is corrupt at byte {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error(
        "the write-ahead log failed to write and could not undo the partial write; restart to recover: {0}"
    )]
    Poisoned(String),
    #[error(
        "an entry of {0} bytes is larger than the write-ahead log's limit of {MAX_PAYLOAD} bytes"
    )]
    TooLarge(usize),
}

fn io(path: &Path, source: std::io::Error) -> WalError {
    WalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A closed or active segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub first_seq: u64,
    pub path: PathBuf,
}

/// The segments in `dir`, oldest first.
pub fn segments(dir: &Path) -> Result<Vec<Segment>, WalError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let entry = entry.map_err(|e| io(dir, e))?;
        let name = entry.file_name();
        let Some(first_seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        found.push(Segment {
            first_seq,
            path: entry.path(),
        });
    }
    found.sort_by_key(|s| s.first_seq);
    Ok(found)
}

fn frame(seq: u64, entry: &WalEntry, out: &mut Vec<u8>) -> Result<(), WalError> {
    let payload = serde_json::to_vec(entry).expect("entries serialise");
    // A frame the reader would take for corruption is never written.
    if payload.len() > MAX_PAYLOAD {
        return Err(WalError::TooLarge(payload.len()));
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_le_bytes());
    crc.update(&payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(())
}

/// The records of one segment and the length of its valid prefix. With `torn_tail_ok`, an unreadable frame ends
/// the segment; otherwise it is corruption.
pub fn read_segment(path: &Path, torn_tail_ok: bool) -> Result<(Vec<WalRecord>, u64), WalError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| io(path, e))?;
    let mut records = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let problem = (|| {
            let header = bytes
                .get(at..at + HEADER)
                .ok_or("a frame header is cut short")?;
            let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
            let seq = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
            if len > MAX_PAYLOAD {
                return Err("a frame claims an impossible length");
            }
            let payload = bytes
                .get(at + HEADER..at + HEADER + len)
                .ok_or("a frame is cut short")?;
            let mut check = crc32fast::Hasher::new();
            check.update(&seq.to_le_bytes());
            check.update(payload);
            if check.finalize() != crc {
                return Err("a frame fails its checksum");
            }
            let entry: WalEntry =
                serde_json::from_slice(payload).map_err(|_| "a frame holds no valid entry")?;
            Ok((WalRecord { seq, entry }, HEADER + len))
        })();
        match problem {
            Ok((record, size)) => {
                if let Some(previous) = records.last().map(|r: &WalRecord| r.seq)
                    && record.seq != previous + 1
                {
                    return Err(WalError::Corrupt {
                        path: path.to_owned(),
                        offset: at as u64,
                        reason: format!("sequence number {} follows {previous}", record.seq),
                    });
                }
                records.push(record);
                at += size;
            }
            Err(_) if torn_tail_ok => break,
            Err(reason) => {
                return Err(WalError::Corrupt {
                    path: path.to_owned(),
                    offset: at as u64,
                    reason: reason.into(),
                });
            }
        }
    }
    Ok((records, at as u64))
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

/// The log, open for appending.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    file: File,
    path: PathBuf,
    next_seq: u64,
    /// Valid bytes in the active segment; the next frame goes here.
    len: u64,
    segment_bytes: u64,
    poisoned: Option<String>,
}

impl Wal {
    /// Opens the log in `dir` (created if missing), cutting off a torn tail, and returns every record it holds
    /// for replay. A segment reaching `segment_bytes` is closed and a new one started.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<(Self, Vec<WalRecord>), WalError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let mut found = segments(dir)?;
        if found.is_empty() {
            let path = dir.join(format!("{:020}.wal", 1));
            File::create(&path).map_err(|e| io(&path, e))?;
            sync_dir(dir)?;
            found.push(Segment { first_seq: 1, path });
        }
        let mut records = Vec::new();
        let last = found.len() - 1;
        let mut len = 0;
        for (i, segment) in found.iter().enumerate() {
            let (mut read, valid) = read_segment(&segment.path, i == last)?;
            if let Some(first) = read.first()
                && first.seq != segment.first_seq
            {
                return Err(WalError::Corrupt {
                    path: segment.path.clone(),
                    offset: 0,
                    reason: format!("the first record is number {}", first.seq),
                });
            }
            if let (Some(previous), Some(first)) = (records.last(), read.first()) {
                let (previous, first): (&WalRecord, &WalRecord) = (previous, first);
                if first.seq != previous.seq + 1 {
                    return Err(WalError::Corrupt {
                        path: segment.path.clone(),
                        offset: 0,
                        reason: format!(
                            "records {} to {} are missing",
                            previous.seq + 1,
                            first.seq - 1
                        ),
                    });
                }
            }
            records.append(&mut read);
            len = valid;
        }
        let active = &found[last];
        let file = OpenOptions::new()
            .write(true)
            .open(&active.path)
            .map_err(|e| io(&active.path, e))?;
        // Cut off a torn tail so the next frame follows the last valid one.
        file.set_len(len).map_err(|e| io(&active.path, e))?;
        file.sync_all().map_err(|e| io(&active.path, e))?;
        let next_seq = records.last().map_or(active.first_seq, |r| r.seq + 1);
        Ok((
            Self {
                dir: dir.to_owned(),
                file,
                path: active.path.clone(),
                next_seq,
                len,
                segment_bytes,
                poisoned: None,
            },
            records,
        ))
    }

    /// Appends `entries` (not yet durable: see [`Wal::sync`]) and returns the first sequence number given.
    pub fn append(&mut self, entries: &[WalEntry]) -> Result<u64, WalError> {
        if let Some(reason) = &self.poisoned {
            return Err(WalError::Poisoned(reason.clone()));
        }
        if self.len >= self.segment_bytes {
            self.roll()?;
        }
        let first = self.next_seq;
        let mut bytes = Vec::with_capacity(entries.len() * 256);
        for (i, entry) in entries.iter().enumerate() {
            frame(first + i as u64, entry, &mut bytes)?;
        }
        if let Err(e) = self.file.write_all_at(&bytes, self.len) {
            // Take back whatever part was written, so the next append does not follow a torn frame.
            if let Err(undo) = self.file.set_len(self.len) {
                self.poisoned = Some(format!("{e}; then {undo}"));
            }
            return Err(io(&self.path, e));
        }
        self.len += bytes.len() as u64;
        self.next_seq += entries.len() as u64;
        Ok(first)
    }

    /// Makes every appended record durable.
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.file.sync_data().map_err(|e| io(&self.path, e))
    }

    /// Closes the active segment (durably) and starts a new one, unless the active one is empty.
    pub fn roll(&mut self) -> Result<(), WalError> {
        if self.len == 0 {
            return Ok(());
        }
        self.sync()?;
        let path = self.dir.join(format!("{:020}.wal", self.next_seq));
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        sync_dir(&self.dir)?;
        self.file = file;
        self.path = path;
        self.len = 0;
        Ok(())
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

/// Removes a closed segment whose records are safe elsewhere.
pub fn remove_segment(segment: &Segment) -> Result<(), WalError> {
    std::fs::remove_file(&segment.path).map_err(|e| io(&segment.path, e))?;
    if let Some(dir) = segment.path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;

    fn entry(i: usize) -> WalEntry {
        WalEntry::Event(Event {
            id: format!("e{i}"),
            user: "u".into(),
            item: format!("i{i}"),
            kind: EventKind::View,
            time_ms: i as i64,
            value: None,
            request_id: None,
        })
    }

    #[test]
    fn records_survive_reopening_and_rolling() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut wal, replay) = Wal::open(dir.path(), 300).expect("opens");
        assert!(replay.is_empty());
        for i in 0..10 {
            assert_eq!(wal.append(&[entry(i)]).expect("appends"), i as u64 + 1);
            wal.sync().expect("syncs");
        }
        assert!(
            segments(dir.path()).expect("lists").len() > 1,
            "rolled at 300 bytes"
        );
        drop(wal);
        let (wal, replay) = Wal::open(dir.path(), 300).expect("reopens");
        assert_eq!(replay.len(), 10);
        assert_eq!(
            replay.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (1..=10).collect::<Vec<_>>()
        );
        assert_eq!(replay[3].entry, entry(3));
        assert_eq!(wal.next_seq(), 11);
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_numbering_continues() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut wal, _) = Wal::open(dir.path(), 1 << 20).expect("opens");
        wal.append(&[entry(0), entry(1)]).expect("appends");
        wal.sync().expect("syncs");
        let path = segments(dir.path()).expect("lists")[0].path.clone();
        drop(wal);
        // Half of a third frame, as a crash mid-write leaves it.
        let mut third = Vec::new();
        frame(3, &entry(2), &mut third).expect("frames");
        let mut bytes = std::fs::read(&path).expect("reads");
        let whole = bytes.len() as u64;
        bytes.extend_from_slice(&third[..third.len() / 2]);
        std::fs::write(&path, &bytes).expect("writes");

        let (mut wal, replay) = Wal::open(dir.path(), 1 << 20).expect("reopens");
        assert_eq!(replay.len(), 2);
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), whole);
        assert_eq!(wal.append(&[entry(2)]).expect("appends"), 3);
        wal.sync().expect("syncs");
        drop(wal);
        assert_eq!(Wal::open(dir.path(), 1 << 20).expect("reopens").1.len(), 3);
    }

    #[test]
    fn an_entry_too_large_to_read_back_is_never_written() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut wal, _) = Wal::open(dir.path(), 1 << 30).expect("opens");
        wal.append(&[entry(0)]).expect("appends");
        let WalEntry::Event(mut huge) = entry(1) else {
            unreachable!("an event")
        };
        huge.item = "x".repeat(MAX_PAYLOAD);
        let e = wal
            .append(&[entry(2), WalEntry::Event(huge)])
            .expect_err("too large");
        assert!(matches!(e, WalError::TooLarge(_)), "{e}");
        // Nothing of the refused batch was written; numbering goes on from the last good record.
        assert_eq!(wal.append(&[entry(3)]).expect("appends"), 2);
        wal.sync().expect("syncs");
        drop(wal);
        assert_eq!(Wal::open(dir.path(), 1 << 30).expect("reopens").1.len(), 2);
    }

    #[test]
    fn damage_before_the_tail_is_reported_not_skipped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut wal, _) = Wal::open(dir.path(), 100).expect("opens");
        for i in 0..4 {
            wal.append(&[entry(i)]).expect("appends");
        }
        wal.sync().expect("syncs");
        drop(wal);
        let first = segments(dir.path()).expect("lists")[0].path.clone();
        let mut bytes = std::fs::read(&first).expect("reads");
        bytes[HEADER + 2] ^= 0xff;
        std::fs::write(&first, &bytes).expect("writes");
        let e = Wal::open(dir.path(), 100).expect_err("corrupt");
        assert!(e.to_string().contains("fails its checksum"), "{e}");
    }
}
