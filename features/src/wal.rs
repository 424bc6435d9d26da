//! The write-ahead log: numbered records in segment files `<first sequence number, 20 digits>.wal`.
//!
//! A segment starts with a header, `magic "EDGERWAL" | incarnation (u64 LE) | flags (u8) | 3 zero bytes | crc32 of
//! the 20 bytes before it (u32 LE)`, followed by frames, `payload length (u32 LE) | crc32 of sequence number and
//! payload (u32 LE) | sequence number (u64 LE) | payload (JSON)`.
//!
//! Every opening of the log starts a new segment under a new random *incarnation*. The store remembers what it
//! applied per node *and incarnation*, and event-log files are named by both, so a wiped log (numbering starts
//! again), a log restored from an older copy (numbering repeats) or two nodes cloned from one image can never
//! reuse a (node, incarnation, sequence number) that something downstream has already seen.
//!
//! Appends are written at the end of the newest (active) segment and made durable by [`Wal::sync`], which the
//! ingest calls once per group of batches. A crash can leave a torn frame at the end of the active segment only;
//! opening cuts it off (it was never acknowledged). A bad frame anywhere else, or a bad frame in the active
//! segment followed by frames that read back, is corruption: opening refuses it, naming the segment and offset,
//! and [`repair`] salvages every readable frame.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::event::{Event, ServedRequest};

const MAGIC: &[u8; 8] = b"EDGERWAL";
/// Bytes of a segment header.
pub const SEGMENT_HEADER: usize = 24;
/// Bytes of a frame header.
const HEADER: usize = 16;
/// Largest payload: the writer refuses a bigger entry, and a frame claiming more is corrupt to the reader.
pub const MAX_PAYLOAD: usize = 16 << 20;
/// Header flag: the segment was written by [`repair`], so its numbers may skip records that were dropped.
const FLAG_REPAIRED: u8 = 1;
/// Bytes read from a segment at a time.
const READ_CHUNK: usize = 256 << 10;

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

/// One opening of a write-ahead log: random, written into every segment it creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Incarnation(u64);

impl Incarnation {
    pub fn random() -> Self {
        use rand_core::RngCore;
        Self(rand_core::OsRng.next_u64())
    }
}

impl std::fmt::Display for Incarnation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for Incarnation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 16 {
            return Err(format!("`{s}` is not an incarnation (16 hex digits)"));
        }
        u64::from_str_radix(s, 16)
            .map(Self)
            .map_err(|_| format!("`{s}` is not an incarnation (16 hex digits)"))
    }
}

/// The name under which the store and the event log know the records of `node`'s log `incarnation`.
pub fn log_key(node: &str, incarnation: Incarnation) -> String {
    format!("{node}/{incarnation}")
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "write-ahead log {path}: the disk is full; events are refused until space is freed (nothing acknowledged was lost)"
    )]
    NoSpace { path: PathBuf },
    #[error(
        "write-ahead log segment {path} is corrupt at byte {offset}: {reason}; `edgerec events repair` salvages every readable record"
    )]
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
    if edgerec_storage::is_storage_full(&source) {
        WalError::NoSpace {
            path: path.to_owned(),
        }
    } else {
        WalError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> WalError {
    WalError::Corrupt {
        path: path.to_owned(),
        offset,
        reason: reason.into(),
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

fn segment_header(incarnation: Incarnation, flags: u8) -> [u8; SEGMENT_HEADER] {
    let mut header = [0u8; SEGMENT_HEADER];
    header[0..8].copy_from_slice(MAGIC);
    header[8..16].copy_from_slice(&incarnation.0.to_le_bytes());
    header[16] = flags;
    let crc = crc32fast::hash(&header[0..20]);
    header[20..24].copy_from_slice(&crc.to_le_bytes());
    header
}

fn frame(seq: u64, entry: &WalEntry, out: &mut Vec<u8>) -> Result<(), WalError> {
    let payload = serde_json::to_vec(entry).expect("entries serialise");
    // A frame the reader would take for corruption is never written.
    if payload.len() > MAX_PAYLOAD {
        return Err(WalError::TooLarge(payload.len()));
    }
    push_frame(seq, &payload, out);
    Ok(())
}

fn push_frame(seq: u64, payload: &[u8], out: &mut Vec<u8>) {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_le_bytes());
    crc.update(payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
}

/// A frame that does not read back, where it starts and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFrame {
    pub offset: u64,
    pub reason: String,
}

/// The frame at the start of `bytes` if it is whole and its checksum holds: its sequence number, payload and size.
fn parse_frame(bytes: &[u8]) -> Result<(u64, &[u8], usize), &'static str> {
    let header = bytes.get(..HEADER).ok_or("a frame header is cut short")?;
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let seq = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    if len > MAX_PAYLOAD {
        return Err("a frame claims an impossible length");
    }
    let payload = bytes
        .get(HEADER..HEADER + len)
        .ok_or("a frame is cut short")?;
    let mut check = crc32fast::Hasher::new();
    check.update(&seq.to_le_bytes());
    check.update(payload);
    if check.finalize() != crc {
        return Err("a frame fails its checksum");
    }
    Ok((seq, payload, HEADER + len))
}

/// Reads one segment's frames in order, a chunk of the file at a time (memory stays bounded by the largest
/// frame), with positional reads, so a reader following the active segment never sees bytes the writer took back.
#[derive(Debug)]
pub struct SegmentReader {
    path: PathBuf,
    file: File,
    incarnation: Incarnation,
    repaired: bool,
    first_seq: u64,
    /// The next frame starts here.
    offset: u64,
    /// The sequence number of the last record read.
    last_seq: Option<u64>,
    buffer: Vec<u8>,
    /// The file offset of `buffer[0]`.
    buffer_at: u64,
}

impl SegmentReader {
    /// Opens `segment` and checks its header.
    pub fn open(segment: &Segment) -> Result<Self, WalError> {
        let path = &segment.path;
        let file = File::open(path).map_err(|e| io(path, e))?;
        let mut header = [0u8; SEGMENT_HEADER];
        let read = read_at_most(&file, &mut header, 0).map_err(|e| io(path, e))?;
        if read < SEGMENT_HEADER {
            return Err(corrupt(path, 0, "the segment header is cut short"));
        }
        if &header[0..8] != MAGIC {
            return Err(corrupt(
                path,
                0,
                "the file does not start with a segment header",
            ));
        }
        let crc = u32::from_le_bytes(header[20..24].try_into().expect("4 bytes"));
        if crc32fast::hash(&header[0..20]) != crc {
            return Err(corrupt(path, 0, "the segment header fails its checksum"));
        }
        Ok(Self {
            path: path.clone(),
            file,
            incarnation: Incarnation(u64::from_le_bytes(
                header[8..16].try_into().expect("8 bytes"),
            )),
            repaired: header[16] & FLAG_REPAIRED != 0,
            first_seq: segment.first_seq,
            offset: SEGMENT_HEADER as u64,
            last_seq: None,
            buffer: Vec::new(),
            buffer_at: SEGMENT_HEADER as u64,
        })
    }

    /// Makes at least `n` bytes from the current offset available in the buffer, as far as the file has them.
    fn fill(&mut self, n: usize) -> std::io::Result<&[u8]> {
        let start = (self.offset - self.buffer_at) as usize;
        if self.buffer.len() - start < n {
            self.buffer.drain(..start);
            self.buffer_at = self.offset;
            let have = self.buffer.len();
            let want = n.max(READ_CHUNK);
            self.buffer.resize(want, 0);
            let read = read_at_most(
                &self.file,
                &mut self.buffer[have..],
                self.offset + have as u64,
            )?;
            self.buffer.truncate(have + read);
        }
        let start = (self.offset - self.buffer_at) as usize;
        Ok(&self.buffer[start..])
    }

    /// Forgets what was read ahead (the writer may take back bytes past what it made durable).
    pub fn forget_read_ahead(&mut self) {
        self.buffer.clear();
        self.buffer_at = self.offset;
    }

    /// The next record, `None` at the end of the file, or the frame that does not read back.
    pub fn next_record(&mut self) -> Result<Option<WalRecord>, ReadError> {
        let offset = self.offset;
        let bad = |reason: String| ReadError::Bad(BadFrame { offset, reason });
        let expected = match self.last_seq {
            Some(last) => last + 1,
            None => self.first_seq,
        };
        let repaired = self.repaired;
        let path = self.path.clone();
        let failed = |e: std::io::Error| ReadError::Io(io(&path, e));
        let len = {
            let bytes = self.fill(HEADER).map_err(failed)?;
            if bytes.is_empty() {
                return Ok(None);
            }
            match bytes.get(..4) {
                Some(len) => u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize,
                None => return Err(bad("a frame header is cut short".into())),
            }
        };
        let bytes = self.fill(HEADER + len.min(MAX_PAYLOAD)).map_err(failed)?;
        let (seq, payload, size) = parse_frame(bytes).map_err(|r| bad(r.into()))?;
        let in_order = if repaired {
            seq >= expected
        } else {
            seq == expected
        };
        if !in_order {
            return Err(bad(format!(
                "sequence number {seq} where {expected} was expected"
            )));
        }
        let entry: WalEntry = serde_json::from_slice(payload)
            .map_err(|_| bad("a frame holds no valid entry".into()))?;
        self.offset += size as u64;
        self.last_seq = Some(seq);
        Ok(Some(WalRecord { seq, entry }))
    }
}

/// Why a record could not be read: the file, or the frame.
#[derive(Debug)]
pub enum ReadError {
    Io(WalError),
    Bad(BadFrame),
}

fn read_at_most(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    let mut read = 0;
    while read < buf.len() {
        match file.read_at(&mut buf[read..], at + read as u64) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(read)
}

/// The offset of the first whole frame at or after `from` in `bytes` (a slice of a segment starting at file
/// offset `base`) whose sequence number lies after `after`. Cheap tests (length, a plausible number) come before
/// the checksum, so scanning a damaged stretch costs little.
fn next_good_frame(bytes: &[u8], base: u64, from: u64, after: u64) -> Option<u64> {
    let start = (from - base) as usize;
    for at in start..bytes.len().saturating_sub(HEADER - 1) {
        let header = &bytes[at..at + HEADER];
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
        let seq = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        let room = bytes.len() - at;
        if len > MAX_PAYLOAD || HEADER + len > room || seq <= after {
            continue;
        }
        // No frame is smaller than its header, so the frames skipped since the damage began (at `from - 1`)
        // cannot be more than fit in the bytes passed over.
        let passed = (at + 1 - start) as u64;
        if after != 0 && seq - after > passed / HEADER as u64 + 1 {
            continue;
        }
        if parse_frame(&bytes[at..]).is_ok() {
            return Some(base + at as u64);
        }
    }
    None
}

/// What one segment held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSummary {
    pub incarnation: Incarnation,
    pub repaired: bool,
    pub records: u64,
    pub last_seq: Option<u64>,
    /// Bytes up to the end of the last good frame.
    pub valid_len: u64,
}

/// Reads `segment` record by record, handing each to `visit`. A bad frame is corruption, except in the active
/// segment (`active`) when no readable frame follows it: then it is a torn tail and the segment ends there.
pub fn scan_segment<E: From<WalError>>(
    segment: &Segment,
    active: bool,
    mut visit: impl FnMut(Incarnation, &WalRecord) -> Result<(), E>,
) -> Result<SegmentSummary, E> {
    let mut reader = SegmentReader::open(segment)?;
    let mut records = 0;
    loop {
        match reader.next_record() {
            Ok(Some(record)) => {
                visit(reader.incarnation, &record)?;
                records += 1;
            }
            Ok(None) => break,
            Err(ReadError::Io(e)) => return Err(e.into()),
            Err(ReadError::Bad(bad)) => {
                let bytes = std::fs::read(&segment.path).map_err(|e| io(&segment.path, e))?;
                let after = reader
                    .last_seq
                    .unwrap_or(segment.first_seq.saturating_sub(1));
                let follows = next_good_frame(&bytes, 0, bad.offset + 1, after);
                if !active || follows.is_some() {
                    let reason = match follows {
                        Some(next) => format!(
                            "{} (readable records follow at byte {next}, so this is damage, not an interrupted write)",
                            bad.reason
                        ),
                        None => bad.reason,
                    };
                    return Err(corrupt(&segment.path, bad.offset, reason).into());
                }
                break;
            }
        }
    }
    Ok(SegmentSummary {
        incarnation: reader.incarnation,
        repaired: reader.repaired,
        records,
        last_seq: reader.last_seq,
        valid_len: reader.offset,
    })
}

/// Every record of a closed segment, and its incarnation (for shipping: a segment is at most a few MiB).
pub fn read_segment(segment: &Segment) -> Result<(Incarnation, Vec<WalRecord>), WalError> {
    let mut records = Vec::new();
    let summary = scan_segment(segment, false, |_, record| {
        records.push(record.clone());
        Ok::<_, WalError>(())
    })?;
    Ok((summary.incarnation, records))
}

/// Syncs the folder holding `path`, so a file created, renamed or removed there stays so after a crash.
fn sync_parent(path: &Path) -> Result<(), WalError> {
    edgerec_storage::sync_parent(path).map_err(|e| io(path, e))
}

/// Creates the segment `<first_seq>.wal` in `dir` with its header, whole or not at all (written under a temporary
/// name, synced, renamed, the folder synced).
fn create_segment(
    dir: &Path,
    first_seq: u64,
    incarnation: Incarnation,
    flags: u8,
    frames: &[u8],
) -> Result<(File, PathBuf), WalError> {
    let path = dir.join(format!("{first_seq:020}.wal"));
    let partial = dir.join(format!("{first_seq:020}.wal-partial"));
    let written = (|| {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&partial)?;
        file.write_all_at(&segment_header(incarnation, flags), 0)?;
        file.write_all_at(frames, SEGMENT_HEADER as u64)?;
        file.sync_all()?;
        std::fs::rename(&partial, &path)?;
        Ok(file)
    })();
    match written {
        Ok(file) => {
            sync_parent(&path)?;
            Ok((file, path))
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(io(&partial, e))
        }
    }
}

/// What opening found in the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Opened {
    /// The first record still in the log (it may not have been applied yet).
    pub first_seq: Option<u64>,
    pub records: u64,
    /// Bytes of every segment, the new one included.
    pub bytes: u64,
}

/// The log, open for appending.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    incarnation: Incarnation,
    file: File,
    path: PathBuf,
    next_seq: u64,
    /// Valid bytes in the active segment; the next frame goes here.
    len: u64,
    segment_bytes: u64,
    poisoned: Option<String>,
}

impl Wal {
    /// Opens the log in `dir` (created if missing): reads every segment once, handing each record to `visit`
    /// (nothing is kept in memory), cuts off a torn tail, refuses damage, and starts a new segment under a new
    /// incarnation. A segment reaching `segment_bytes` is closed and a new one started.
    pub fn open<E: From<WalError>>(
        dir: &Path,
        segment_bytes: u64,
        mut visit: impl FnMut(Incarnation, &WalRecord) -> Result<(), E>,
    ) -> Result<(Self, Opened), E> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        remove_partials(dir)?;
        let found = segments(dir)?;
        let mut opened = Opened::default();
        let mut last_seq: Option<u64> = None;
        let mut next_seq = found.first().map_or(1, |s| s.first_seq);
        for (i, segment) in found.iter().enumerate() {
            let active = i + 1 == found.len();
            let summary = scan_segment(segment, active, |incarnation, record| {
                if opened.first_seq.is_none() {
                    opened.first_seq = Some(record.seq);
                }
                visit(incarnation, record)
            })?;
            if let Some(previous) = last_seq
                && segment.first_seq != previous + 1
                && !(summary.repaired && segment.first_seq > previous)
            {
                return Err(E::from(corrupt(
                    &segment.path,
                    0,
                    format!(
                        "the segment starts at record {} but the one before ends at {previous}",
                        segment.first_seq
                    ),
                )));
            }
            opened.records += summary.records;
            if let Some(last) = summary.last_seq {
                last_seq = Some(last);
                next_seq = last + 1;
            } else {
                next_seq = next_seq.max(segment.first_seq);
            }
            if active {
                let len = std::fs::metadata(&segment.path)
                    .map_err(|e| io(&segment.path, e))?
                    .len();
                if summary.records == 0 {
                    // An empty active segment of an earlier opening: the new one takes its place.
                    std::fs::remove_file(&segment.path).map_err(|e| io(&segment.path, e))?;
                    sync_parent(&segment.path)?;
                } else {
                    if len > summary.valid_len {
                        // A torn tail: never acknowledged.
                        let file = OpenOptions::new()
                            .write(true)
                            .open(&segment.path)
                            .map_err(|e| io(&segment.path, e))?;
                        file.set_len(summary.valid_len)
                            .and_then(|()| file.sync_all())
                            .map_err(|e| io(&segment.path, e))?;
                    }
                    opened.bytes += summary.valid_len;
                }
            } else {
                opened.bytes += summary.valid_len;
            }
        }
        let incarnation = Incarnation::random();
        let (file, path) = create_segment(dir, next_seq, incarnation, 0, &[])?;
        opened.bytes += SEGMENT_HEADER as u64;
        Ok((
            Self {
                dir: dir.to_owned(),
                incarnation,
                file,
                path,
                next_seq,
                len: SEGMENT_HEADER as u64,
                segment_bytes,
                poisoned: None,
            },
            opened,
        ))
    }

    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// Appends `entries` (not yet durable: see [`Wal::sync`]) and returns the first sequence number given and
    /// the bytes written.
    pub fn append(&mut self, entries: &[WalEntry]) -> Result<(u64, u64), WalError> {
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
        Ok((first, bytes.len() as u64))
    }

    /// Makes every appended record durable.
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.file.sync_data().map_err(|e| io(&self.path, e))
    }

    /// Closes the active segment (durably) and starts a new one, unless the active one is empty. The new segment
    /// is created whole before it replaces the active one, so a full disk leaves the log appending where it was.
    pub fn roll(&mut self) -> Result<u64, WalError> {
        if self.len == SEGMENT_HEADER as u64 {
            return Ok(0);
        }
        self.sync()?;
        let (file, path) = create_segment(&self.dir, self.next_seq, self.incarnation, 0, &[])?;
        self.file = file;
        self.path = path;
        self.len = SEGMENT_HEADER as u64;
        Ok(SEGMENT_HEADER as u64)
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

/// Removes segments a crash left half-created.
fn remove_partials(dir: &Path) -> Result<(), WalError> {
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let entry = entry.map_err(|e| io(dir, e))?;
        if entry
            .file_name()
            .to_string_lossy()
            .ends_with(".wal-partial")
        {
            std::fs::remove_file(entry.path()).map_err(|e| io(&entry.path(), e))?;
        }
    }
    Ok(())
}

/// Removes a closed segment whose records are safe elsewhere.
pub fn remove_segment(segment: &Segment) -> Result<(), WalError> {
    std::fs::remove_file(&segment.path).map_err(|e| io(&segment.path, e))?;
    sync_parent(&segment.path)
}

/// Follows the log from a sequence number on, for the applier: it reads records from disk (bounded memory
/// however far behind the store is), never past what the writer has made durable.
#[derive(Debug)]
pub struct WalTail {
    dir: PathBuf,
    reader: Option<SegmentReader>,
}

/// A record and the incarnation that wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct TailRecord {
    pub incarnation: Incarnation,
    pub record: WalRecord,
}

impl WalTail {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            reader: None,
        }
    }

    /// Up to `max` records numbered from `next` to `durable`, in order, and the number to ask for next.
    pub fn read(
        &mut self,
        next: u64,
        durable: u64,
        max: usize,
    ) -> Result<(Vec<TailRecord>, u64), WalError> {
        let mut out = Vec::new();
        let mut next = next;
        while next <= durable && out.len() < max {
            let positioned = self
                .reader
                .as_ref()
                .is_some_and(|r| r.last_seq.map_or(r.first_seq, |s| s + 1) == next);
            if !positioned {
                self.reader = self.seek(next)?;
                if self.reader.is_none() {
                    // Nothing at or after `next`: those records were dropped by a repair.
                    return Ok((out, durable + 1));
                }
            }
            let reader = self.reader.as_mut().expect("positioned");
            match reader.next_record() {
                Ok(Some(record)) => {
                    next = record.seq + 1;
                    if record.seq <= durable {
                        out.push(TailRecord {
                            incarnation: reader.incarnation,
                            record,
                        });
                    }
                }
                Ok(None) => {
                    // The end of this segment: the following one starts at `next` or later. Without one, this
                    // is the active segment and it holds nothing more that is durable; the reader stays here.
                    let after = reader.first_seq;
                    match segments(&self.dir)?
                        .into_iter()
                        .find(|s| s.first_seq > after)
                    {
                        Some(segment) => {
                            next = next.max(segment.first_seq);
                            self.reader = Some(SegmentReader::open(&segment)?);
                        }
                        None => {
                            reader.forget_read_ahead();
                            return Ok((out, durable + 1));
                        }
                    }
                }
                Err(ReadError::Io(e)) => return Err(e),
                Err(ReadError::Bad(bad)) => {
                    return Err(corrupt(&reader.path, bad.offset, bad.reason));
                }
            }
        }
        if let Some(reader) = &mut self.reader {
            reader.forget_read_ahead();
        }
        Ok((out, next))
    }

    /// A reader positioned before the first record numbered `next` or more.
    fn seek(&self, next: u64) -> Result<Option<SegmentReader>, WalError> {
        let all = segments(&self.dir)?;
        let Some(segment) = all
            .iter()
            .rev()
            .find(|s| s.first_seq <= next)
            .or(all.first())
        else {
            return Ok(None);
        };
        let mut reader = SegmentReader::open(segment)?;
        // Skip what comes before `next`, then step back to the frame that follows.
        loop {
            let (offset, last) = (reader.offset, reader.last_seq);
            match reader.next_record() {
                Ok(Some(record)) if record.seq < next => {}
                Ok(Some(_)) => {
                    reader.offset = offset;
                    reader.last_seq = last;
                    reader.forget_read_ahead();
                    return Ok(Some(reader));
                }
                Ok(None) => return Ok(Some(reader)),
                Err(ReadError::Io(e)) => return Err(e),
                Err(ReadError::Bad(bad)) => {
                    return Err(corrupt(&reader.path, bad.offset, bad.reason));
                }
            }
        }
    }
}

mod repair;
pub use repair::{Dropped, RepairReport, RepairedSegment, repair};

#[cfg(test)]
mod tests;
